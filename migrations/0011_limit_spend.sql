-- Spend per scope (tenant, key) and UTC day, kept by the database itself
-- from every statement that changes usage_ledger (the writer's inserts,
-- reconciliation, reprices), in the same transaction. Every budget period
-- starts at a UTC midnight, so a period's spend is a sum over at most a
-- month of day rows instead of over the period's ledger rows, and it equals
-- the ledger's sum by construction.
CREATE TABLE limit_spend (
    scope_kind text    NOT NULL,
    scope_id   text    NOT NULL,
    day        date    NOT NULL,
    spent      numeric NOT NULL,
    PRIMARY KEY (scope_kind, scope_id, day)
);

INSERT INTO limit_spend (scope_kind, scope_id, day, spent)
SELECT kind, id, day, sum(cost)
FROM (
    SELECT 'tenant' AS kind, tenant_id AS id, (started_at AT TIME ZONE 'UTC')::date AS day, cost
    FROM usage_ledger WHERE cost IS NOT NULL
    UNION ALL
    SELECT 'key', api_key_id, (started_at AT TIME ZONE 'UTC')::date, cost
    FROM usage_ledger WHERE cost IS NOT NULL
) AS d
GROUP BY kind, id, day;

-- Adds the signed cost changes of one statement (transition tables
-- `new_rows` and `old_rows`), one upsert per scope and day, in key order so
-- concurrent writers never deadlock.
CREATE FUNCTION limit_spend_apply() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO limit_spend (scope_kind, scope_id, day, spent)
        SELECT kind, id, day, sum(delta) FROM (
            SELECT 'tenant' AS kind, tenant_id AS id, (started_at AT TIME ZONE 'UTC')::date AS day, cost AS delta
            FROM new_rows WHERE cost IS NOT NULL
            UNION ALL
            SELECT 'key', api_key_id, (started_at AT TIME ZONE 'UTC')::date, cost
            FROM new_rows WHERE cost IS NOT NULL
        ) AS d
        GROUP BY kind, id, day
        ORDER BY kind, id, day
        ON CONFLICT (scope_kind, scope_id, day)
            DO UPDATE SET spent = limit_spend.spent + EXCLUDED.spent;
    ELSIF TG_OP = 'UPDATE' THEN
        INSERT INTO limit_spend (scope_kind, scope_id, day, spent)
        SELECT kind, id, day, sum(delta) FROM (
            SELECT 'tenant' AS kind, tenant_id AS id, (started_at AT TIME ZONE 'UTC')::date AS day, cost AS delta
            FROM new_rows WHERE cost IS NOT NULL
            UNION ALL
            SELECT 'key', api_key_id, (started_at AT TIME ZONE 'UTC')::date, cost
            FROM new_rows WHERE cost IS NOT NULL
            UNION ALL
            SELECT 'tenant', tenant_id, (started_at AT TIME ZONE 'UTC')::date, -cost
            FROM old_rows WHERE cost IS NOT NULL
            UNION ALL
            SELECT 'key', api_key_id, (started_at AT TIME ZONE 'UTC')::date, -cost
            FROM old_rows WHERE cost IS NOT NULL
        ) AS d
        GROUP BY kind, id, day
        HAVING sum(delta) <> 0
        ORDER BY kind, id, day
        ON CONFLICT (scope_kind, scope_id, day)
            DO UPDATE SET spent = limit_spend.spent + EXCLUDED.spent;
    ELSE
        INSERT INTO limit_spend (scope_kind, scope_id, day, spent)
        SELECT kind, id, day, sum(delta) FROM (
            SELECT 'tenant' AS kind, tenant_id AS id, (started_at AT TIME ZONE 'UTC')::date AS day, -cost AS delta
            FROM old_rows WHERE cost IS NOT NULL
            UNION ALL
            SELECT 'key', api_key_id, (started_at AT TIME ZONE 'UTC')::date, -cost
            FROM old_rows WHERE cost IS NOT NULL
        ) AS d
        GROUP BY kind, id, day
        ORDER BY kind, id, day
        ON CONFLICT (scope_kind, scope_id, day)
            DO UPDATE SET spent = limit_spend.spent + EXCLUDED.spent;
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER limit_spend_insert AFTER INSERT ON usage_ledger
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION limit_spend_apply();
CREATE TRIGGER limit_spend_update AFTER UPDATE ON usage_ledger
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION limit_spend_apply();
CREATE TRIGGER limit_spend_delete AFTER DELETE ON usage_ledger
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION limit_spend_apply();
