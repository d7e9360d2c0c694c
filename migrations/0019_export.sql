-- Billing export (src/export, CONTRACT §13).
--
-- export_outbox: one entry per ledger row to look at (inserted, or its cost
-- or status changed), filled by the statement triggers below in the very
-- transaction that wrote the row. `txid` is that transaction's id: the
-- exporter reads entries in (txid, seq) order and only those whose txid is
-- below the oldest transaction still running (pg_snapshot_xmin), so an
-- entry can never become visible behind a cursor that already passed it.
-- Nothing references usage_ledger by key (its key is (id, started_at) once
-- partitioned); entries carry request_id and started_at.
CREATE TABLE export_outbox (
    seq         bigint GENERATED ALWAYS AS IDENTITY,
    txid        bigint NOT NULL DEFAULT (pg_current_xact_id()::text::bigint),
    request_id  text NOT NULL,
    ledger_id   bigint NOT NULL,
    started_at  timestamptz NOT NULL,
    -- A replay for one sink; NULL: every sink.
    only_sink   text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (txid, seq)
);

-- One row per configured sink: its cursor in the outbox. Registered at
-- start-up by a gateway that has the sink configured.
CREATE TABLE export_sinks (
    sink         text PRIMARY KEY CHECK (sink IN ('openmeter', 'lago', 'stripe', 'webhook')),
    cursor_txid  bigint NOT NULL DEFAULT 0,
    cursor_seq   bigint NOT NULL DEFAULT 0,
    created_at   timestamptz NOT NULL DEFAULT now(),
    advanced_at  timestamptz
);

-- What each sink was given of each ledger row, and the rows that wait or
-- were refused (listed in GET /admin/exports, never silently dropped).
CREATE TABLE export_items (
    sink        text NOT NULL,
    request_id  text NOT NULL,
    ledger_id   bigint NOT NULL,
    tenant_id   text NOT NULL,
    started_at  timestamptz NOT NULL,
    state       text NOT NULL CHECK (state IN ('sent', 'unpriced', 'waiting_for_mapping',
                    'refused', 'outside_window', 'changed_after_export')),
    reason      text,
    -- The cost the sink was given (state sent / changed_after_export).
    cost        numeric(28, 16),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (sink, request_id)
);
CREATE INDEX export_items_waiting_idx ON export_items (sink, tenant_id, ledger_id)
    WHERE state = 'waiting_for_mapping';
CREATE INDEX export_items_listed_idx ON export_items (sink, state) WHERE state <> 'sent';

-- A tenant's ids in the billing systems (PUT /admin/tenants/{tenant}).
CREATE TABLE tenant_billing (
    tenant_id                      text PRIMARY KEY
        CHECK (tenant_id ~ '^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$'),
    openmeter_subject              text CHECK (char_length(openmeter_subject) BETWEEN 1 AND 256),
    lago_external_subscription_id  text CHECK (char_length(lago_external_subscription_id) BETWEEN 1 AND 256),
    stripe_customer_id             text CHECK (char_length(stripe_customer_id) BETWEEN 1 AND 256),
    updated_at                     timestamptz NOT NULL DEFAULT now()
);

-- Nothing is queued while no sink was ever configured (the outbox would
-- grow with no reader).
CREATE FUNCTION export_outbox_on_insert() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM export_sinks) THEN
        RETURN NULL;
    END IF;
    INSERT INTO export_outbox (request_id, ledger_id, started_at)
    SELECT request_id, id, started_at FROM new_rows ORDER BY id;
    RETURN NULL;
END $$;

-- A row whose cost or status changed (a background response settled, an
-- unpriced row repriced) is looked at again.
CREATE FUNCTION export_outbox_on_update() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM export_sinks) THEN
        RETURN NULL;
    END IF;
    INSERT INTO export_outbox (request_id, ledger_id, started_at)
    SELECT n.request_id, n.id, n.started_at
    FROM new_rows n JOIN old_rows o ON o.request_id = n.request_id
    WHERE n.cost IS DISTINCT FROM o.cost OR n.status IS DISTINCT FROM o.status
    ORDER BY n.id;
    RETURN NULL;
END $$;

CREATE TRIGGER export_outbox_insert AFTER INSERT ON usage_ledger
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION export_outbox_on_insert();
CREATE TRIGGER export_outbox_update AFTER UPDATE ON usage_ledger
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION export_outbox_on_update();
