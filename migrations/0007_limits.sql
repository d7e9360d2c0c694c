-- Spend control (CONTRACT §8). One row per limited scope; admission locks
-- the rows of the request's tenant and key (in that fixed order) so that
-- every replica on this database admits as one would.
CREATE TABLE limits (
    scope_kind           text NOT NULL CHECK (scope_kind IN ('tenant', 'key')),
    scope_id             text NOT NULL,
    budget_amount        numeric(28, 16) CHECK (budget_amount >= 0),
    budget_period        text CHECK (budget_period IN ('day', 'week', 'month', 'total')),
    budget_mode          text CHECK (budget_mode IN ('hard', 'soft')),
    requests_per_minute  bigint CHECK (requests_per_minute >= 0),
    tokens_per_minute    bigint CHECK (tokens_per_minute >= 0),
    concurrent_requests  bigint CHECK (concurrent_requests >= 0),
    -- Token buckets, refilled continuously from clock_timestamp() of this
    -- database, so every replica agrees on the clock.
    rpm_level            numeric NOT NULL DEFAULT 0,
    tpm_level            numeric NOT NULL DEFAULT 0,
    bucket_at            timestamptz,
    updated_at           timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (scope_kind, scope_id),
    CHECK ((budget_amount IS NULL) = (budget_period IS NULL) AND (budget_amount IS NULL) = (budget_mode IS NULL))
);

-- Open requests of limited scopes: the estimate held against budgets, the
-- tokens held against tokens_per_minute, one slot of concurrent_requests.
-- Deleted by the ledger writer once the request's row is stored; expires_at
-- frees what a dead replica held.
CREATE TABLE limit_reservations (
    request_id   text PRIMARY KEY,
    tenant_id    text NOT NULL,
    api_key_id   text NOT NULL,
    estimate     numeric(28, 16) NOT NULL,
    tokens       bigint NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    expires_at   timestamptz NOT NULL
);
CREATE INDEX limit_reservations_tenant_idx ON limit_reservations (tenant_id, expires_at);
CREATE INDEX limit_reservations_key_idx ON limit_reservations (api_key_id, expires_at);

-- Where a request's actual cost exceeded its estimate: the excess, never hidden.
CREATE TABLE limit_overruns (
    request_id   text PRIMARY KEY,
    tenant_id    text NOT NULL,
    api_key_id   text NOT NULL,
    estimate     numeric(28, 16) NOT NULL,
    actual       numeric(28, 16) NOT NULL,
    overrun      numeric(28, 16) NOT NULL,
    started_at   timestamptz NOT NULL
);
CREATE INDEX limit_overruns_tenant_idx ON limit_overruns (tenant_id, started_at);
CREATE INDEX limit_overruns_key_idx ON limit_overruns (api_key_id, started_at);
