-- Leaner ledger indexes (measured in BENCHMARKS "Ledger at scale").
--
-- Three of the ledger's indexes cost more than their work needs:
-- - usage_ledger_started_idx (started_at DESC, id DESC): rows arrive in
--   time order, so in a DESC index every insert lands at the left edge of
--   a leaf and every split is 50/50: half-empty pages, ~56 bytes a row.
--   Ascending, inserts land at the right edge, whose splits leave the page
--   full: ~31 bytes. `ORDER BY started_at DESC, id DESC` reads it
--   backwards just as fast.
-- - usage_ledger_model_started_idx (model, started_at DESC): only the
--   records filter by model reads it; a model-only index deduplicates to
--   ~6 bytes a row (from ~60-80), finds a rare model's rows as well, and a
--   common model's newest rows come from the time index.
-- - usage_ledger_response_id_idx: a B-tree over response ids (`resp_` and
--   48 random hex digits at OpenAI: ~100 bytes a row, random inserts) read
--   only by equality (`WHERE response_id = $1`); a hash index stores a
--   4-byte hash per row (~38 bytes).
--
-- Over a ledger that holds rows, `tollgate` first builds the new indexes on
-- every partition CONCURRENTLY (ledger::indexes::prepare_lean, before this
-- migration runs); CREATE INDEX on the partitioned parent then attaches
-- those instead of building, so this migration only changes the catalog.
-- On a fresh or empty ledger it builds them here (nothing to read).

CREATE INDEX usage_ledger_time_idx ON usage_ledger (started_at, id);
CREATE INDEX usage_ledger_model_idx ON usage_ledger (model);
CREATE INDEX usage_ledger_response_idx ON usage_ledger USING hash (response_id);

DROP INDEX usage_ledger_started_idx;
DROP INDEX usage_ledger_model_started_idx;
DROP INDEX usage_ledger_response_id_idx;

-- Closed months whose indexes were rebuilt full (ledger::indexes::compact):
-- indexes filled by inserts in time order keep pages half full where many
-- tenants or keys append at once; a month that can no longer grow is
-- rebuilt once, CONCURRENTLY, by the ledger.months job.
CREATE TABLE ledger_compactions (
    partition     text PRIMARY KEY,
    bytes_before  bigint NOT NULL,
    bytes_after   bigint NOT NULL,
    seconds       double precision NOT NULL,
    compacted_at  timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- The legacy partition of an upgraded ledger is archived month by month
-- once its last month is past retention: each month's archive is written
-- and verified ('pending': its rows still in the table and served), then
-- the whole table is re-checked, detached and dropped, and its months
-- become 'archived' together (ledger::archive).
ALTER TABLE ledger_archives DROP CONSTRAINT ledger_archives_state_check,
    ADD CONSTRAINT ledger_archives_state_check
        CHECK (state IN ('archived', 'restored', 'pending'));
