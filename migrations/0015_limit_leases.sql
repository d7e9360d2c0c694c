-- Leased admission (CONTRACT §8): each replica holds a slice of every
-- limited scope it serves — of the budget, of the rate buckets and of the
-- concurrency — and admits from it in memory. One row per (scope, replica).
--
-- The invariants, kept under the scope's `limits` row lock by every
-- transaction that moves a slice (src/limits/store.rs):
--   hard budget:  spent of the period + sum(budget) <= amount
--   concurrency:  sum(slots) <= concurrent_requests
--   rates:        every request or token a replica admits was taken from
--                 the bucket (rpm_level / tpm_level) before, as `requests`
--                 / `tokens` of its slice; what it gives back is added back.
-- A slice lapses at `expires_at` (its replica renews it every second while
-- it lives): a dead replica's slice then frees its budget and slots, and
-- the rate tokens it held are simply gone (the buckets refill).
CREATE TABLE limit_leases (
    scope_kind      text NOT NULL,
    scope_id        text NOT NULL,
    -- host:pid:nonce of the replica (one process may run several gateways).
    holder          text NOT NULL,
    -- What the replica may have committed beyond the ledger's spend: the
    -- estimates of its open requests plus what it may still admit.
    budget          numeric NOT NULL DEFAULT 0 CHECK (budget >= 0),
    -- Concurrency slots it holds (its open requests plus spare ones).
    slots           bigint NOT NULL DEFAULT 0 CHECK (slots >= 0),
    -- Bucket tokens taken and not yet used, as last reported.
    requests        numeric NOT NULL DEFAULT 0,
    tokens          numeric NOT NULL DEFAULT 0,
    -- As last reported: the estimates of its open requests (the status's
    -- `reserved`) and how many there are.
    committed       numeric NOT NULL DEFAULT 0,
    open_requests   bigint NOT NULL DEFAULT 0,
    renewed_at      timestamptz NOT NULL DEFAULT clock_timestamp(),
    expires_at      timestamptz NOT NULL,
    PRIMARY KEY (scope_kind, scope_id, holder),
    FOREIGN KEY (scope_kind, scope_id) REFERENCES limits (scope_kind, scope_id) ON DELETE CASCADE
);
CREATE INDEX limit_leases_expires_idx ON limit_leases (expires_at);

-- When a replica last found the scope short while others held spare slices:
-- every replica then hands back what it does not use and admits from exact
-- grants until this is a few seconds old (near exhaustion).
ALTER TABLE limits ADD COLUMN recall_at timestamptz;

-- Per-request reservations are replaced by the slices: admission no longer
-- writes a row per request. A fleet is upgraded as a whole (an old replica
-- left running fails closed: its admission statements no longer exist).
DROP TABLE limit_reservations;
ALTER TABLE limits DROP COLUMN reserved, DROP COLUMN open_requests;
