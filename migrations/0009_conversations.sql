-- Conversations created through the gateway: who may use each one, and the
-- upstream that holds it (proxy::conversations). An id not here is unknown
-- to every tenant.
CREATE TABLE conversation_owners (
    conversation_id text PRIMARY KEY,
    tenant_id       text NOT NULL,
    upstream        text,
    created_at      timestamptz NOT NULL DEFAULT now()
);
