-- Background responses (background: true) are recorded when created, as
-- 'queued' with no usage yet, and settled exactly once when they finish
-- (UPDATE … WHERE status = 'queued').
ALTER TABLE usage_ledger DROP CONSTRAINT usage_ledger_status_check;
ALTER TABLE usage_ledger ADD CONSTRAINT usage_ledger_status_check CHECK (status IN
    ('completed', 'incomplete', 'failed', 'cancelled', 'upstream_error', 'rejected', 'interrupted', 'queued'));
CREATE INDEX usage_ledger_queued_idx ON usage_ledger (started_at) WHERE status = 'queued';
