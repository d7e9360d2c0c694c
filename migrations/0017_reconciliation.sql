-- Reconciliation with the provider (CONTRACT §12, src/reconcile).
--
-- 1. What the provider says: the organization Usage API's completions
--    results (daily and hourly buckets) and the Costs API's daily results,
--    one row per bucket and group. A re-fetch upserts a row only when a value
--    differs (a revision) and deletes the groups a re-fetched bucket no
--    longer has, so fetching the same answer twice changes nothing.
-- 2. When it said it: per UTC day and source, the time of the last complete
--    fetch; a day is final only once every source was fetched after the day
--    closed plus the configured delay ("no data yet" is never zero).
-- 3. What the ledger says, per UTC day, upstream, model and served tier:
--    a rollup of the rows that reached the provider, kept equal to the
--    ledger by statement-level triggers (as migration 0002's), so the
--    comparison never reads raw (possibly archived) ledger rows.
-- 4. Drift alerts through the budget alerts' outbox.

CREATE TABLE provider_usage (
    bucket_width        text NOT NULL CHECK (bucket_width IN ('1d', '1h')),
    bucket_start        timestamptz NOT NULL,
    -- The group's fields as the provider named them (null: not grouped or
    -- the provider's own null).
    model               text,
    api_key_id          text,
    project_id          text,
    service_tier        text,
    batch               boolean,
    num_model_requests  bigint NOT NULL,
    input_tokens        bigint NOT NULL,
    input_cached_tokens bigint NOT NULL,
    output_tokens       bigint NOT NULL,
    first_seen_at       timestamptz NOT NULL DEFAULT clock_timestamp(),
    -- The last time a fetch changed the row's numbers, and how often.
    changed_at          timestamptz NOT NULL DEFAULT clock_timestamp(),
    revisions           integer NOT NULL DEFAULT 0,
    CONSTRAINT provider_usage_key UNIQUE NULLS NOT DISTINCT
        (bucket_width, bucket_start, model, api_key_id, project_id, service_tier, batch)
);

CREATE TABLE provider_costs (
    bucket_start  timestamptz NOT NULL,
    line_item     text,
    project_id    text,
    currency      text NOT NULL,
    -- The provider's amount exactly as its JSON number was written.
    amount        numeric NOT NULL,
    first_seen_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    changed_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
    revisions     integer NOT NULL DEFAULT 0,
    CONSTRAINT provider_costs_key UNIQUE NULLS NOT DISTINCT
        (bucket_start, line_item, project_id, currency)
);

-- A day's source is recorded here once a fetch has paged through it, with
-- the time its first page was asked for and, for usage, the day's totals
-- then (a closed day's hourly totals must equal its daily ones).
CREATE TABLE provider_fetches (
    day           date NOT NULL,
    source        text NOT NULL CHECK (source IN ('usage_1d', 'usage_1h', 'costs')),
    fetched_at    timestamptz NOT NULL,
    requests      numeric NOT NULL DEFAULT 0,
    input_tokens  numeric NOT NULL DEFAULT 0,
    cached_tokens numeric NOT NULL DEFAULT 0,
    output_tokens numeric NOT NULL DEFAULT 0,
    PRIMARY KEY (day, source)
);

-- Tollgate's upstream keys as the provider knows them, when discovered
-- through the Projects API (configured ones live in the config file).
CREATE TABLE provider_keys (
    upstream      text PRIMARY KEY,
    api_key_id    text NOT NULL,
    project_id    text,
    discovered_at timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- The ledger side. Rows count when they reached the provider: an upstream
-- was chosen, the endpoint is a model call (create or compact), and the
-- status is neither a refusal by Tollgate nor an HTTP error answer.
LOCK TABLE usage_ledger IN SHARE ROW EXCLUSIVE MODE;

CREATE TABLE ledger_upstream_daily (
    day               date NOT NULL,
    upstream          text NOT NULL,
    model             text,
    service_tier      text,
    currency          text NOT NULL,
    requests          bigint NOT NULL,
    input_tokens      bigint NOT NULL,
    cached_tokens     bigint NOT NULL,
    output_tokens     bigint NOT NULL,
    -- the priced rows' cost; unpriced rows are counted below
    cost              numeric NOT NULL,
    unpriced_requests bigint NOT NULL,
    CONSTRAINT ledger_upstream_daily_key UNIQUE NULLS NOT DISTINCT
        (day, upstream, model, service_tier, currency)
);

CREATE FUNCTION ledger_upstream_daily_counts(status text, endpoint text, upstream text)
RETURNS boolean LANGUAGE sql IMMUTABLE AS $$
    SELECT upstream IS NOT NULL
       AND endpoint IN ('responses.create', 'responses.compact')
       AND status NOT IN ('rejected', 'upstream_error')
$$;

-- Adds signed sums to the rollup, one upsert in key order so concurrent
-- writers lock its rows alike.
CREATE FUNCTION ledger_upstream_daily_add(delta ledger_upstream_daily[]) RETURNS void
LANGUAGE sql AS $$
    INSERT INTO ledger_upstream_daily AS r
    SELECT * FROM unnest(delta) AS d
    ORDER BY d.day, d.upstream, d.model, d.service_tier, d.currency
    ON CONFLICT ON CONSTRAINT ledger_upstream_daily_key DO UPDATE SET
        requests = r.requests + EXCLUDED.requests,
        input_tokens = r.input_tokens + EXCLUDED.input_tokens,
        cached_tokens = r.cached_tokens + EXCLUDED.cached_tokens,
        output_tokens = r.output_tokens + EXCLUDED.output_tokens,
        cost = r.cost + EXCLUDED.cost,
        unpriced_requests = r.unpriced_requests + EXCLUDED.unpriced_requests;
$$;

-- The triggers sum the changed rows per group and pass the signed sums on:
-- + for rows that now exist, - for rows that no longer do.
CREATE FUNCTION ledger_upstream_daily_on_insert() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM ledger_upstream_daily_add(ARRAY(
        SELECT ROW(d.*)::ledger_upstream_daily FROM (
            SELECT (started_at AT TIME ZONE 'UTC')::date, upstream, model, service_tier, currency,
                   count(*), sum(input_tokens)::bigint, sum(cached_tokens)::bigint,
                   sum(output_tokens)::bigint, coalesce(sum(cost), 0),
                   count(*) FILTER (WHERE cost IS NULL)
            FROM new_rows
            WHERE ledger_upstream_daily_counts(status, endpoint, upstream)
            GROUP BY 1, 2, 3, 4, 5) AS d));
    RETURN NULL;
END $$;

CREATE FUNCTION ledger_upstream_daily_on_delete() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM ledger_upstream_daily_add(ARRAY(
        SELECT ROW(d.*)::ledger_upstream_daily FROM (
            SELECT (started_at AT TIME ZONE 'UTC')::date, upstream, model, service_tier, currency,
                   -count(*), -sum(input_tokens)::bigint, -sum(cached_tokens)::bigint,
                   -sum(output_tokens)::bigint, -coalesce(sum(cost), 0),
                   -count(*) FILTER (WHERE cost IS NULL)
            FROM old_rows
            WHERE ledger_upstream_daily_counts(status, endpoint, upstream)
            GROUP BY 1, 2, 3, 4, 5) AS d));
    RETURN NULL;
END $$;

-- An UPDATE (a reprice, a background settlement, a fix) moves sums from the
-- old image's group to the new one's; what did not change cancels out.
CREATE FUNCTION ledger_upstream_daily_on_update() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM ledger_upstream_daily_add(ARRAY(
        SELECT ROW(d.*)::ledger_upstream_daily FROM (
            SELECT day, upstream, model, service_tier, currency,
                   sum(requests)::bigint, sum(input_tokens)::bigint, sum(cached_tokens)::bigint,
                   sum(output_tokens)::bigint, sum(cost), sum(unpriced_requests)::bigint
            FROM (
                SELECT (started_at AT TIME ZONE 'UTC')::date AS day, upstream, model, service_tier,
                       currency, 1 AS requests, input_tokens, cached_tokens, output_tokens,
                       coalesce(cost, 0) AS cost, (cost IS NULL)::int AS unpriced_requests
                FROM new_rows
                WHERE ledger_upstream_daily_counts(status, endpoint, upstream)
                UNION ALL
                SELECT (started_at AT TIME ZONE 'UTC')::date, upstream, model, service_tier,
                       currency, -1, -input_tokens, -cached_tokens, -output_tokens,
                       -coalesce(cost, 0), -(cost IS NULL)::int
                FROM old_rows
                WHERE ledger_upstream_daily_counts(status, endpoint, upstream)
            ) AS change
            GROUP BY 1, 2, 3, 4, 5
            HAVING sum(requests) <> 0 OR sum(input_tokens) <> 0 OR sum(cached_tokens) <> 0
                OR sum(output_tokens) <> 0 OR sum(cost) <> 0 OR sum(unpriced_requests) <> 0) AS d));
    RETURN NULL;
END $$;

CREATE FUNCTION ledger_upstream_daily_on_truncate() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    TRUNCATE ledger_upstream_daily;
    RETURN NULL;
END $$;

CREATE TRIGGER ledger_upstream_daily_insert AFTER INSERT ON usage_ledger
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_upstream_daily_on_insert();
CREATE TRIGGER ledger_upstream_daily_update AFTER UPDATE ON usage_ledger
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_upstream_daily_on_update();
CREATE TRIGGER ledger_upstream_daily_delete AFTER DELETE ON usage_ledger
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_upstream_daily_on_delete();
CREATE TRIGGER ledger_upstream_daily_truncate AFTER TRUNCATE ON usage_ledger
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_upstream_daily_on_truncate();

-- Rows written before this migration.
INSERT INTO ledger_upstream_daily
SELECT (started_at AT TIME ZONE 'UTC')::date, upstream, model, service_tier, currency,
       count(*), sum(input_tokens), sum(cached_tokens), sum(output_tokens),
       coalesce(sum(cost), 0), count(*) FILTER (WHERE cost IS NULL)
FROM usage_ledger
WHERE ledger_upstream_daily_counts(status, endpoint, upstream)
GROUP BY 1, 2, 3, 4, 5;

-- Drift alerts share the outbox with budget alerts: one event type column,
-- the budget fields required only of budget events, and a drift event's
-- subject (its day and line) unique among drift events, which is what makes
-- a drifting line one event however often it is seen.
ALTER TABLE alert_events
    ADD COLUMN event_type text NOT NULL DEFAULT 'tollgate.budget.threshold_crossed'
        CHECK (event_type IN ('tollgate.budget.threshold_crossed', 'tollgate.reconciliation.drift')),
    ADD COLUMN subject text,
    ADD COLUMN data jsonb,
    ALTER COLUMN scope_kind DROP NOT NULL,
    ALTER COLUMN scope_id DROP NOT NULL,
    ALTER COLUMN tenant_id DROP NOT NULL,
    ALTER COLUMN period DROP NOT NULL,
    ALTER COLUMN period_start DROP NOT NULL,
    ALTER COLUMN threshold DROP NOT NULL,
    ALTER COLUMN amount DROP NOT NULL,
    ALTER COLUMN spent DROP NOT NULL,
    ADD CONSTRAINT alert_events_budget_whole CHECK (
        event_type <> 'tollgate.budget.threshold_crossed' OR (
            scope_kind IS NOT NULL AND scope_id IS NOT NULL AND tenant_id IS NOT NULL
            AND period IS NOT NULL AND period_start IS NOT NULL AND threshold IS NOT NULL
            AND amount IS NOT NULL AND spent IS NOT NULL)),
    ADD CONSTRAINT alert_events_drift_whole CHECK (
        event_type <> 'tollgate.reconciliation.drift' OR (subject IS NOT NULL AND data IS NOT NULL));
CREATE UNIQUE INDEX alert_events_drift_once ON alert_events (subject)
    WHERE event_type = 'tollgate.reconciliation.drift';
