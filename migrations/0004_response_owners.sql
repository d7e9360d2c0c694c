-- Follow-ups (previous_response_id, retrieve, delete, cancel, input_items)
-- look up which tenant and upstream created a response id.
CREATE INDEX usage_ledger_response_id_idx ON usage_ledger (response_id) WHERE response_id IS NOT NULL;
