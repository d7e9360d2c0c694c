-- What the client sent that the ledger row should say (issue 13):
-- the offered tools the gateway left out ("web_search,code_interpreter"),
-- and the client's own x-client-request-id (at most 512 visible ASCII
-- characters; an invalid one is not recorded).
ALTER TABLE usage_ledger ADD COLUMN dropped_tools TEXT;
ALTER TABLE usage_ledger ADD COLUMN client_request_id TEXT
    CHECK (client_request_id IS NULL OR length(client_request_id) <= 512);
