-- The ledger by calendar month (UTC), for years of rows (CONTRACT §5a).
--
-- usage_ledger becomes a table partitioned by range on started_at (the
-- row's time): one partition per month (usage_ledger_YYYY_MM, created ahead
-- by the ledger.months job through ledger_create_month below) and a DEFAULT
-- partition that catches a row no month covers, so no row is ever refused
-- for its time.
--
-- Uniqueness: a unique index on a partitioned table must hold the partition
-- key, so the writer's key is (request_id, started_at). A request's row is
-- built once with both; a spool replay or a retried batch carries the same
-- pair and is still stored once (ON CONFLICT (request_id, started_at)).
--
-- Upgrading a ledger that already holds rows is online: the existing table
-- is not rewritten. It is renamed usage_ledger_legacy and attached as the
-- partition for everything before `bound` (the first month boundary after
-- the upgrade). Before this migration runs, `tollgate` prepares that table
-- without blocking writers (ledger::months::prepare_upgrade: a CHECK on
-- started_at < bound added NOT VALID then validated, the two new unique
-- indexes built CONCURRENTLY and turned into constraints), so the swap
-- below only changes the catalog: the ATTACH finds a validated CHECK that
-- implies the partition bound (no scan) and equivalent indexes (no build).
-- Without that preparation (a fresh or small database) the same statements
-- build and check what is missing under the lock.
--
-- Rollups, spend sums and the reconciliation rollup keep their statement
-- triggers with transition tables, now on the partitioned parent (PostgreSQL
-- 15 runs them for every statement addressed to it, whatever partition the
-- rows land in). Moving rows between partitions (the default partition into
-- a new month) and detaching or dropping an archived month address the
-- partitions themselves, so the rollups, kept forever, never see them.

CREATE TABLE ledger_archives (
    month        date PRIMARY KEY CHECK (extract(day FROM month) = 1),
    -- 'archived': written and verified, partition dropped; 'restored': the
    -- partition was re-created from the archive and attached again.
    state        text NOT NULL CHECK (state IN ('archived', 'restored')),
    location     text NOT NULL,
    manifest     jsonb NOT NULL,
    archived_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    restored_at  timestamptz
);

-- Creates the partition for the month starting on first_day (UTC), moving
-- into it the rows of that month that waited in the default partition.
-- Returns the rows moved; 0 when the partition existed; NULL when another
-- partition (usage_ledger_legacy) already covers the month.
CREATE FUNCTION ledger_create_month(first_day date) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    part  text := 'usage_ledger_' || to_char(first_day, 'YYYY_MM');
    low   timestamptz := first_day::timestamp AT TIME ZONE 'UTC';
    high  timestamptz := (first_day + interval '1 month')::timestamp AT TIME ZONE 'UTC';
    moved bigint;
BEGIN
    IF extract(day FROM first_day) <> 1 THEN
        RAISE EXCEPTION 'ledger_create_month: % is not the first day of a month', first_day;
    END IF;
    IF to_regclass(part) IS NOT NULL THEN
        RETURN 0;
    END IF;
    -- Parent before default partition: the order writers lock them in.
    LOCK TABLE usage_ledger IN SHARE UPDATE EXCLUSIVE MODE;
    LOCK TABLE usage_ledger_default IN ACCESS EXCLUSIVE MODE;
    -- Another session may have created it while this one waited.
    IF to_regclass(part) IS NOT NULL THEN
        RETURN 0;
    END IF;
    BEGIN
        EXECUTE format('CREATE TABLE %I (LIKE usage_ledger INCLUDING DEFAULTS INCLUDING CONSTRAINTS)', part);
        EXECUTE format('INSERT INTO %I SELECT * FROM usage_ledger_default
                        WHERE started_at >= %L AND started_at < %L', part, low, high);
        GET DIAGNOSTICS moved = ROW_COUNT;
        EXECUTE format('DELETE FROM usage_ledger_default WHERE started_at >= %L AND started_at < %L',
                       low, high);
        EXECUTE format('ALTER TABLE usage_ledger ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)',
                       part, low, high);
    EXCEPTION WHEN invalid_object_definition THEN
        -- "partition would overlap": usage_ledger_legacy holds this month.
        RETURN NULL;
    END;
    RETURN moved;
END $$;

DO $$
DECLARE
    bound      timestamptz;
    bound_name text;
    has_rows   boolean;
    next_id    bigint;
    idx        record;
    first_live date;
    m          date;
BEGIN
    LOCK TABLE usage_ledger IN ACCESS EXCLUSIVE MODE;
    has_rows := EXISTS (SELECT 1 FROM usage_ledger);

    IF has_rows THEN
        -- The bound the online preparation chose, else the next month.
        SELECT conname INTO bound_name FROM pg_constraint
        WHERE conrelid = 'usage_ledger'::regclass AND convalidated
          AND conname ~ '^usage_ledger_upgrade_bound_[0-9]{6}$';
        IF bound_name IS NULL THEN
            bound := (date_trunc('month', now() AT TIME ZONE 'UTC') + interval '1 month')
                     AT TIME ZONE 'UTC';
            bound_name := 'usage_ledger_upgrade_bound_' || to_char(bound AT TIME ZONE 'UTC', 'YYYYMM');
            EXECUTE format('ALTER TABLE usage_ledger ADD CONSTRAINT %I CHECK (started_at < %L)',
                           bound_name, bound);
        ELSE
            bound := to_date(right(bound_name, 6), 'YYYYMM')::timestamp AT TIME ZONE 'UTC';
        END IF;
        -- The partitioned table's keys, on the old table (prepared
        -- concurrently when the upgrade was prepared).
        IF NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conrelid = 'usage_ledger'::regclass
                       AND conname = 'usage_ledger_request_started_key') THEN
            ALTER TABLE usage_ledger
                ADD CONSTRAINT usage_ledger_request_started_key UNIQUE (request_id, started_at);
        END IF;
        IF NOT EXISTS (SELECT 1 FROM pg_index WHERE indrelid = 'usage_ledger'::regclass
                       AND indisprimary AND indnatts = 2) THEN
            ALTER TABLE usage_ledger DROP CONSTRAINT usage_ledger_pkey,
                ADD CONSTRAINT usage_ledger_pkey PRIMARY KEY (id, started_at);
        END IF;
    END IF;

    next_id := coalesce((SELECT max(id) FROM usage_ledger), 0) + 1;

    ALTER TABLE usage_ledger RENAME TO usage_ledger_legacy;
    FOR idx IN SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
               WHERE i.indrelid = 'usage_ledger_legacy'::regclass LOOP
        EXECUTE format('ALTER INDEX %I RENAME TO %I', idx.relname,
                       'usage_ledger_legacy' || substr(idx.relname, 13));
    END LOOP;
    ALTER TABLE usage_ledger_legacy ALTER COLUMN id DROP IDENTITY;
    DROP TRIGGER usage_rollup_insert ON usage_ledger_legacy;
    DROP TRIGGER usage_rollup_update ON usage_ledger_legacy;
    DROP TRIGGER usage_rollup_delete ON usage_ledger_legacy;
    DROP TRIGGER usage_rollup_truncate ON usage_ledger_legacy;
    DROP TRIGGER limit_spend_insert ON usage_ledger_legacy;
    DROP TRIGGER limit_spend_update ON usage_ledger_legacy;
    DROP TRIGGER limit_spend_delete ON usage_ledger_legacy;
    DROP TRIGGER ledger_upstream_daily_insert ON usage_ledger_legacy;
    DROP TRIGGER ledger_upstream_daily_update ON usage_ledger_legacy;
    DROP TRIGGER ledger_upstream_daily_delete ON usage_ledger_legacy;
    DROP TRIGGER ledger_upstream_daily_truncate ON usage_ledger_legacy;

    -- Same columns in the same order, NOT NULLs, defaults and CHECKs.
    CREATE TABLE usage_ledger (LIKE usage_ledger_legacy INCLUDING DEFAULTS INCLUDING CONSTRAINTS)
        PARTITION BY RANGE (started_at);
    IF bound_name IS NOT NULL THEN
        EXECUTE format('ALTER TABLE usage_ledger DROP CONSTRAINT %I', bound_name);
    END IF;
    EXECUTE format('ALTER TABLE usage_ledger ALTER COLUMN id ADD GENERATED ALWAYS AS IDENTITY (START WITH %s)',
                   next_id);
    ALTER TABLE usage_ledger ADD CONSTRAINT usage_ledger_pkey PRIMARY KEY (id, started_at);
    ALTER TABLE usage_ledger
        ADD CONSTRAINT usage_ledger_request_started_key UNIQUE (request_id, started_at);
    ALTER TABLE usage_ledger ADD CONSTRAINT usage_ledger_price_id_fkey
        FOREIGN KEY (price_id) REFERENCES model_prices (id);
    CREATE INDEX usage_ledger_tenant_started_idx ON usage_ledger (tenant_id, started_at DESC, id DESC);
    CREATE INDEX usage_ledger_key_started_idx ON usage_ledger (api_key_id, started_at DESC, id DESC);
    CREATE INDEX usage_ledger_model_started_idx ON usage_ledger (model, started_at DESC);
    CREATE INDEX usage_ledger_started_idx ON usage_ledger (started_at DESC, id DESC);
    CREATE INDEX usage_ledger_unpriced_idx ON usage_ledger (started_at, id) WHERE cost IS NULL;
    CREATE INDEX usage_ledger_response_id_idx ON usage_ledger (response_id)
        WHERE response_id IS NOT NULL;
    CREATE INDEX usage_ledger_queued_idx ON usage_ledger (started_at) WHERE status = 'queued';

    IF has_rows THEN
        EXECUTE format('ALTER TABLE usage_ledger ATTACH PARTITION usage_ledger_legacy
                        FOR VALUES FROM (MINVALUE) TO (%L)', bound);
        first_live := (bound AT TIME ZONE 'UTC')::date;
    ELSE
        DROP TABLE usage_ledger_legacy;
        first_live := date_trunc('month', now() AT TIME ZONE 'UTC')::date;
    END IF;
    CREATE TABLE usage_ledger_default PARTITION OF usage_ledger DEFAULT;

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
    CREATE TRIGGER limit_spend_insert AFTER INSERT ON usage_ledger
        REFERENCING NEW TABLE AS new_rows
        FOR EACH STATEMENT EXECUTE FUNCTION limit_spend_apply();
    CREATE TRIGGER limit_spend_update AFTER UPDATE ON usage_ledger
        REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
        FOR EACH STATEMENT EXECUTE FUNCTION limit_spend_apply();
    CREATE TRIGGER limit_spend_delete AFTER DELETE ON usage_ledger
        REFERENCING OLD TABLE AS old_rows
        FOR EACH STATEMENT EXECUTE FUNCTION limit_spend_apply();
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

    -- This month (unless the legacy partition holds it) and three ahead.
    m := first_live;
    WHILE m <= (date_trunc('month', now() AT TIME ZONE 'UTC') + interval '3 months')::date LOOP
        PERFORM ledger_create_month(m);
        m := (m + interval '1 month')::date;
    END LOOP;
END $$;
