-- Each scope's open reservations as counters on its limits row, moved under
-- the row lock by admission (+), settlement and the expiry sweep (-): the
-- admission transaction reads two columns instead of summing a table that
-- churns thousands of rows a second (whose dead tuples would slow every
-- read until a vacuum).
ALTER TABLE limits
    ADD COLUMN reserved      numeric NOT NULL DEFAULT 0,
    ADD COLUMN open_requests int8    NOT NULL DEFAULT 0;

UPDATE limits l SET
    reserved = coalesce((SELECT sum(estimate) FROM limit_reservations r
        WHERE CASE l.scope_kind WHEN 'key' THEN r.api_key_id ELSE r.tenant_id END = l.scope_id), 0),
    open_requests = (SELECT count(*) FROM limit_reservations r
        WHERE CASE l.scope_kind WHEN 'key' THEN r.api_key_id ELSE r.tenant_id END = l.scope_id);

CREATE INDEX limit_reservations_expires_idx ON limit_reservations (expires_at);
