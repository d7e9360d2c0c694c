-- Budget threshold alerts (CONTRACT §8).
--
-- A scope's alerts live on its `limits` row: thresholds are fractions of
-- the budget amount, so there are none without a budget.
ALTER TABLE limits
    ADD COLUMN alert_thresholds  numeric(8, 6)[],
    ADD COLUMN alert_webhook_url text CHECK (char_length(alert_webhook_url) <= 2048),
    ADD CONSTRAINT limits_alerts_whole
        CHECK ((alert_thresholds IS NULL) = (alert_webhook_url IS NULL)),
    ADD CONSTRAINT limits_alerts_need_a_budget
        CHECK (alert_thresholds IS NULL OR budget_amount IS NOT NULL);

-- The outbox: one row per (scope, period, threshold) ever crossed. The
-- unique key is what makes a crossing one event however many replicas see
-- it (`INSERT ... ON CONFLICT DO NOTHING`); `id` is the CloudEvents id,
-- the same on every delivery attempt. Rows are never deleted by Tollgate.
CREATE TABLE alert_events (
    id               text PRIMARY KEY,
    scope_kind       text NOT NULL CHECK (scope_kind IN ('tenant', 'key')),
    scope_id         text NOT NULL,
    tenant_id        text NOT NULL,
    api_key_id       text,
    period           text NOT NULL CHECK (period IN ('day', 'week', 'month', 'total')),
    -- The start of the budget period (1970-01-01 for `total`).
    period_start     timestamptz NOT NULL,
    threshold        numeric(8, 6) NOT NULL CHECK (threshold > 0 AND threshold <= 10),
    -- The budget amount and the period's spend when the crossing was seen.
    amount           numeric(28, 16) NOT NULL,
    spent            numeric NOT NULL,
    -- Where it was first meant to go; delivery uses the scope's current
    -- webhook_url while the scope still has alerts.
    webhook_url      text NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT clock_timestamp(),
    attempts         integer NOT NULL DEFAULT 0,
    -- When a replica may (re)try it; a claim moves it past the attempt's
    -- timeout, so an attempt in progress is not taken by another replica.
    next_attempt_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    delivered_at     timestamptz,
    last_error       text,
    UNIQUE (scope_kind, scope_id, period_start, threshold)
);
CREATE INDEX alert_events_due_idx ON alert_events (next_attempt_at) WHERE delivered_at IS NULL;
CREATE INDEX alert_events_created_idx ON alert_events (created_at DESC, id DESC);
CREATE INDEX alert_events_tenant_idx ON alert_events (tenant_id, created_at DESC, id DESC);
