-- The row boundary (issue 11): usage the upstream reported that cannot be
-- true is kept as `invalid` (cost null, `unpriced_reason: usage_invalid`)
-- with what was reported in `anomaly`; values the boundary had to change
-- (NUL bytes, over-long text) say so in `anomaly` too.
ALTER TABLE usage_ledger DROP CONSTRAINT usage_ledger_usage_source_check;
ALTER TABLE usage_ledger ADD CONSTRAINT usage_ledger_usage_source_check
    CHECK (usage_source IN ('reported', 'recovered', 'missing', 'invalid'));
ALTER TABLE usage_ledger ADD COLUMN anomaly text;

-- Rows the database refused even so: isolated by bisecting their batch, kept
-- here with the database's reason and the row as JSON text (TEXT, not
-- JSONB: JSONB refuses the \u0000 escapes such a row may carry). Nothing is
-- dropped; an operator can inspect, fix and re-insert them.
CREATE TABLE ledger_quarantine (
    id             bigserial PRIMARY KEY,
    request_id     text NOT NULL UNIQUE,
    sqlstate       text,
    reason         text NOT NULL,
    raw_row        text NOT NULL,
    quarantined_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX ledger_quarantine_at_idx ON ledger_quarantine (quarantined_at DESC, id DESC);
