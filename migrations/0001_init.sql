-- Tenants and their client keys. A key is stored only as the SHA-256 of the
-- whole secret; the public id (also embedded in the key) is the lookup handle.
CREATE TABLE tenants (
    id          text PRIMARY KEY CHECK (id ~ '^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$'),
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE api_keys (
    id          text PRIMARY KEY,
    tenant_id   text NOT NULL REFERENCES tenants (id),
    name        text NOT NULL DEFAULT '',
    key_hash    bytea NOT NULL CHECK (octet_length(key_hash) = 32),
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);
CREATE INDEX api_keys_tenant_idx ON api_keys (tenant_id);

-- Price versions. Rows are only ever inserted: a change is a new version with
-- its own effective_from; a retirement is a version with retired = true.
-- Per-token USD rates, exact: NUMERIC(24,16) holds 1e-16 resolution.
CREATE TABLE model_prices (
    id                               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    model                            text NOT NULL CHECK (model <> ''),
    effective_from                   timestamptz NOT NULL,
    retired                          boolean NOT NULL DEFAULT false,
    input_cost_per_token             numeric(24, 16),
    cache_read_input_token_cost      numeric(24, 16),
    output_cost_per_token            numeric(24, 16),
    output_cost_per_reasoning_token  numeric(24, 16),
    -- every other rate field (_flex, _priority, _above_{N}k_tokens), name -> decimal string
    variant_rates                    jsonb NOT NULL DEFAULT '{}'::jsonb,
    currency                         text NOT NULL DEFAULT 'usd',
    created_at                       timestamptz NOT NULL DEFAULT clock_timestamp(),
    created_by                       text NOT NULL,
    CHECK (retired OR (input_cost_per_token IS NOT NULL AND output_cost_per_token IS NOT NULL))
);
CREATE INDEX model_prices_model_idx ON model_prices (model, effective_from DESC, id DESC);

-- The usage ledger: exactly one row per authenticated request, keyed by
-- request_id (the idempotency key of every write and replay).
CREATE TABLE usage_ledger (
    id                   bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    request_id           text NOT NULL UNIQUE,
    response_id          text,
    tenant_id            text NOT NULL,
    api_key_id           text NOT NULL,
    endpoint             text NOT NULL,
    model                text,
    upstream             text,
    upstream_model       text,
    stream               boolean NOT NULL,
    status               text NOT NULL CHECK (status IN ('completed', 'incomplete', 'failed', 'cancelled', 'upstream_error', 'rejected', 'interrupted')),
    usage_source         text NOT NULL CHECK (usage_source IN ('reported', 'recovered', 'missing')),
    input_tokens         bigint NOT NULL DEFAULT 0 CHECK (input_tokens >= 0),
    cached_tokens        bigint NOT NULL DEFAULT 0 CHECK (cached_tokens >= 0),
    output_tokens        bigint NOT NULL DEFAULT 0 CHECK (output_tokens >= 0),
    reasoning_tokens     bigint NOT NULL DEFAULT 0 CHECK (reasoning_tokens >= 0),
    total_tokens         bigint NOT NULL DEFAULT 0 CHECK (total_tokens >= 0),
    service_tier         text,
    price_id             bigint REFERENCES model_prices (id),
    cost                 numeric(28, 16),
    unpriced_reason      text,
    currency             text NOT NULL DEFAULT 'usd',
    http_status          integer,
    error_code           text,
    attempts             integer NOT NULL DEFAULT 1,
    fallback_from        text,
    end_user             text,
    client_disconnected  boolean NOT NULL DEFAULT false,
    mcp_calls            integer NOT NULL DEFAULT 0,
    started_at           timestamptz NOT NULL,
    first_byte_at        timestamptz,
    finished_at          timestamptz NOT NULL,
    recorded_at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX usage_ledger_tenant_started_idx ON usage_ledger (tenant_id, started_at DESC, id DESC);
CREATE INDEX usage_ledger_key_started_idx ON usage_ledger (api_key_id, started_at DESC, id DESC);
CREATE INDEX usage_ledger_model_started_idx ON usage_ledger (model, started_at DESC);
