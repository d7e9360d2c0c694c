-- Reprice (POST /admin/reprice) walks the unpriced rows of a time range in
-- (started_at, id) order. Unpriced rows are a small share of the ledger, so a
-- partial index keeps that walk cheap without weighing on every insert.
CREATE INDEX usage_ledger_unpriced_idx ON usage_ledger (started_at, id) WHERE cost IS NULL;
