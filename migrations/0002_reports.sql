-- Usage reports (CONTRACT §6) at tens of millions of ledger rows.
--
-- Reports read rollups: sums of the ledger per UTC hour and per UTC day by
-- (tenant, key, model, service tier, status, currency), and per UTC day by
-- (model, service tier, status, currency) for fleet-wide reports. What a
-- rollup covers only in part (the edges of an unaligned range, 1m buckets,
-- group_by=end_user) is summed from the ledger rows themselves.
--
-- Exactness: statement-level triggers with transition tables keep every
-- rollup equal to the sum of its ledger rows, in the same transaction as the
-- change, whoever makes it: the batching writer's INSERT, a spool replay,
-- COPY, /admin/reprice's UPDATE, a manual fix. No caller has to remember to
-- maintain them. Rollup rows are upserted in key order, one table after the
-- other, so concurrent writers lock them in the same order.
--
-- UNIQUE NULLS NOT DISTINCT (PostgreSQL 15+): a null model or tier is one
-- group, as GROUP BY treats it.

-- Writers that started before this migration must not slip rows past the
-- backfill at the end.
LOCK TABLE usage_ledger IN SHARE ROW EXCLUSIVE MODE;

-- Fleet-wide range scans: admin records newest first, report edges.
CREATE INDEX usage_ledger_started_idx ON usage_ledger (started_at DESC, id DESC);

CREATE TABLE usage_rollup_hourly (
    bucket             timestamptz NOT NULL,
    tenant_id          text NOT NULL,
    api_key_id         text NOT NULL,
    model              text,
    service_tier       text,
    status             text NOT NULL,
    currency           text NOT NULL,
    requests           bigint NOT NULL,
    input_tokens       bigint NOT NULL,
    cached_tokens      bigint NOT NULL,
    output_tokens      bigint NOT NULL,
    reasoning_tokens   bigint NOT NULL,
    -- the sum of the priced rows' costs; unpriced rows only count below
    cost               numeric NOT NULL,
    unpriced_requests  bigint NOT NULL,
    CONSTRAINT usage_rollup_hourly_key UNIQUE NULLS NOT DISTINCT
        (bucket, tenant_id, api_key_id, model, service_tier, status, currency)
);
CREATE INDEX usage_rollup_hourly_tenant_idx ON usage_rollup_hourly (tenant_id, bucket);

CREATE TABLE usage_rollup_daily (
    bucket             timestamptz NOT NULL,
    tenant_id          text NOT NULL,
    api_key_id         text NOT NULL,
    model              text,
    service_tier       text,
    status             text NOT NULL,
    currency           text NOT NULL,
    requests           bigint NOT NULL,
    input_tokens       bigint NOT NULL,
    cached_tokens      bigint NOT NULL,
    output_tokens      bigint NOT NULL,
    reasoning_tokens   bigint NOT NULL,
    cost               numeric NOT NULL,
    unpriced_requests  bigint NOT NULL,
    CONSTRAINT usage_rollup_daily_key UNIQUE NULLS NOT DISTINCT
        (bucket, tenant_id, api_key_id, model, service_tier, status, currency)
);
CREATE INDEX usage_rollup_daily_tenant_idx ON usage_rollup_daily (tenant_id, bucket);

-- Without tenant and key: a month of the whole fleet is a few thousand rows.
CREATE TABLE usage_rollup_daily_fleet (
    bucket             timestamptz NOT NULL,
    model              text,
    service_tier       text,
    status             text NOT NULL,
    currency           text NOT NULL,
    requests           bigint NOT NULL,
    input_tokens       bigint NOT NULL,
    cached_tokens      bigint NOT NULL,
    output_tokens      bigint NOT NULL,
    reasoning_tokens   bigint NOT NULL,
    cost               numeric NOT NULL,
    unpriced_requests  bigint NOT NULL,
    CONSTRAINT usage_rollup_daily_fleet_key UNIQUE NULLS NOT DISTINCT
        (bucket, model, service_tier, status, currency)
);

-- Adds signed hourly deltas to all three rollups. Each statement sorts its
-- rows by the conflict key (lock order); zero deltas were filtered out by
-- the caller.
CREATE FUNCTION usage_rollup_apply(delta usage_rollup_hourly[]) RETURNS void
LANGUAGE sql AS $$
    INSERT INTO usage_rollup_hourly AS r
    SELECT * FROM unnest(delta) AS d
    ORDER BY d.bucket, d.tenant_id, d.api_key_id, d.model, d.service_tier, d.status, d.currency
    ON CONFLICT ON CONSTRAINT usage_rollup_hourly_key DO UPDATE SET
        requests = r.requests + EXCLUDED.requests,
        input_tokens = r.input_tokens + EXCLUDED.input_tokens,
        cached_tokens = r.cached_tokens + EXCLUDED.cached_tokens,
        output_tokens = r.output_tokens + EXCLUDED.output_tokens,
        reasoning_tokens = r.reasoning_tokens + EXCLUDED.reasoning_tokens,
        cost = r.cost + EXCLUDED.cost,
        unpriced_requests = r.unpriced_requests + EXCLUDED.unpriced_requests;

    INSERT INTO usage_rollup_daily AS r
    SELECT date_bin('1 day', d.bucket, timestamptz '1970-01-01 00:00:00+00'),
           d.tenant_id, d.api_key_id, d.model, d.service_tier, d.status, d.currency,
           sum(d.requests), sum(d.input_tokens), sum(d.cached_tokens), sum(d.output_tokens),
           sum(d.reasoning_tokens), sum(d.cost), sum(d.unpriced_requests)
    FROM unnest(delta) AS d
    GROUP BY 1, 2, 3, 4, 5, 6, 7
    ORDER BY 1, 2, 3, 4, 5, 6, 7
    ON CONFLICT ON CONSTRAINT usage_rollup_daily_key DO UPDATE SET
        requests = r.requests + EXCLUDED.requests,
        input_tokens = r.input_tokens + EXCLUDED.input_tokens,
        cached_tokens = r.cached_tokens + EXCLUDED.cached_tokens,
        output_tokens = r.output_tokens + EXCLUDED.output_tokens,
        reasoning_tokens = r.reasoning_tokens + EXCLUDED.reasoning_tokens,
        cost = r.cost + EXCLUDED.cost,
        unpriced_requests = r.unpriced_requests + EXCLUDED.unpriced_requests;

    INSERT INTO usage_rollup_daily_fleet AS r
    SELECT date_bin('1 day', d.bucket, timestamptz '1970-01-01 00:00:00+00'),
           d.model, d.service_tier, d.status, d.currency,
           sum(d.requests), sum(d.input_tokens), sum(d.cached_tokens), sum(d.output_tokens),
           sum(d.reasoning_tokens), sum(d.cost), sum(d.unpriced_requests)
    FROM unnest(delta) AS d
    GROUP BY 1, 2, 3, 4, 5
    ORDER BY 1, 2, 3, 4, 5
    ON CONFLICT ON CONSTRAINT usage_rollup_daily_fleet_key DO UPDATE SET
        requests = r.requests + EXCLUDED.requests,
        input_tokens = r.input_tokens + EXCLUDED.input_tokens,
        cached_tokens = r.cached_tokens + EXCLUDED.cached_tokens,
        output_tokens = r.output_tokens + EXCLUDED.output_tokens,
        reasoning_tokens = r.reasoning_tokens + EXCLUDED.reasoning_tokens,
        cost = r.cost + EXCLUDED.cost,
        unpriced_requests = r.unpriced_requests + EXCLUDED.unpriced_requests;
$$;

-- The triggers sum the changed rows per hour and pass the signed sums on:
-- + for rows that now exist, - for rows that no longer do.
CREATE FUNCTION usage_rollup_on_insert() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM usage_rollup_apply(ARRAY(
        SELECT ROW(d.*)::usage_rollup_hourly FROM (
            SELECT date_bin('1 hour', started_at, timestamptz '1970-01-01 00:00:00+00'),
                   tenant_id, api_key_id, model, service_tier, status, currency,
                   count(*), sum(input_tokens)::bigint, sum(cached_tokens)::bigint,
                   sum(output_tokens)::bigint, sum(reasoning_tokens)::bigint,
                   coalesce(sum(cost), 0), count(*) FILTER (WHERE cost IS NULL)
            FROM new_rows
            GROUP BY 1, 2, 3, 4, 5, 6, 7) AS d));
    RETURN NULL;
END $$;

CREATE FUNCTION usage_rollup_on_delete() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM usage_rollup_apply(ARRAY(
        SELECT ROW(d.*)::usage_rollup_hourly FROM (
            SELECT date_bin('1 hour', started_at, timestamptz '1970-01-01 00:00:00+00'),
                   tenant_id, api_key_id, model, service_tier, status, currency,
                   -count(*), -sum(input_tokens)::bigint, -sum(cached_tokens)::bigint,
                   -sum(output_tokens)::bigint, -sum(reasoning_tokens)::bigint,
                   -coalesce(sum(cost), 0), -count(*) FILTER (WHERE cost IS NULL)
            FROM old_rows
            GROUP BY 1, 2, 3, 4, 5, 6, 7) AS d));
    RETURN NULL;
END $$;

-- An UPDATE (a reprice pricing rows, a fix of a row) moves sums from the
-- old image's group to the new one's; rows whose summed fields did not
-- change cancel out and touch nothing.
CREATE FUNCTION usage_rollup_on_update() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM usage_rollup_apply(ARRAY(
        SELECT ROW(d.*)::usage_rollup_hourly FROM (
            SELECT bucket, tenant_id, api_key_id, model, service_tier, status, currency,
                   sum(requests)::bigint, sum(input_tokens)::bigint, sum(cached_tokens)::bigint,
                   sum(output_tokens)::bigint, sum(reasoning_tokens)::bigint,
                   coalesce(sum(cost), 0), sum(unpriced_requests)::bigint
            FROM (
                SELECT date_bin('1 hour', started_at, timestamptz '1970-01-01 00:00:00+00') AS bucket,
                       tenant_id, api_key_id, model, service_tier, status, currency,
                       1 AS requests, input_tokens, cached_tokens, output_tokens, reasoning_tokens,
                       cost, (cost IS NULL)::int AS unpriced_requests
                FROM new_rows
                UNION ALL
                SELECT date_bin('1 hour', started_at, timestamptz '1970-01-01 00:00:00+00'),
                       tenant_id, api_key_id, model, service_tier, status, currency,
                       -1, -input_tokens, -cached_tokens, -output_tokens, -reasoning_tokens,
                       -cost, -(cost IS NULL)::int
                FROM old_rows
            ) AS change
            GROUP BY 1, 2, 3, 4, 5, 6, 7
            HAVING sum(requests) <> 0 OR sum(input_tokens) <> 0 OR sum(cached_tokens) <> 0
                OR sum(output_tokens) <> 0 OR sum(reasoning_tokens) <> 0
                OR coalesce(sum(cost), 0) <> 0 OR sum(unpriced_requests) <> 0) AS d));
    RETURN NULL;
END $$;

CREATE FUNCTION usage_rollup_on_truncate() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    TRUNCATE usage_rollup_hourly, usage_rollup_daily, usage_rollup_daily_fleet;
    RETURN NULL;
END $$;

CREATE TRIGGER usage_rollup_insert AFTER INSERT ON usage_ledger
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION usage_rollup_on_insert();
CREATE TRIGGER usage_rollup_update AFTER UPDATE ON usage_ledger
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION usage_rollup_on_update();
CREATE TRIGGER usage_rollup_delete AFTER DELETE ON usage_ledger
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION usage_rollup_on_delete();
CREATE TRIGGER usage_rollup_truncate AFTER TRUNCATE ON usage_ledger
    FOR EACH STATEMENT EXECUTE FUNCTION usage_rollup_on_truncate();

-- Rows written before this migration.
INSERT INTO usage_rollup_hourly
SELECT date_bin('1 hour', started_at, timestamptz '1970-01-01 00:00:00+00'),
       tenant_id, api_key_id, model, service_tier, status, currency,
       count(*), sum(input_tokens), sum(cached_tokens), sum(output_tokens),
       sum(reasoning_tokens), coalesce(sum(cost), 0), count(*) FILTER (WHERE cost IS NULL)
FROM usage_ledger
GROUP BY 1, 2, 3, 4, 5, 6, 7;
INSERT INTO usage_rollup_daily
SELECT date_bin('1 day', bucket, timestamptz '1970-01-01 00:00:00+00'),
       tenant_id, api_key_id, model, service_tier, status, currency,
       sum(requests), sum(input_tokens), sum(cached_tokens), sum(output_tokens),
       sum(reasoning_tokens), sum(cost), sum(unpriced_requests)
FROM usage_rollup_hourly
GROUP BY 1, 2, 3, 4, 5, 6, 7;
INSERT INTO usage_rollup_daily_fleet
SELECT bucket, model, service_tier, status, currency,
       sum(requests), sum(input_tokens), sum(cached_tokens), sum(output_tokens),
       sum(reasoning_tokens), sum(cost), sum(unpriced_requests)
FROM usage_rollup_daily
GROUP BY 1, 2, 3, 4, 5;
