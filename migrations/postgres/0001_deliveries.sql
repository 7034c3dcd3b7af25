-- The inbox: one row per webhook delivery, keyed by GitHub's X-GitHub-Delivery GUID.
-- A row is committed before the webhook is answered, so an answered delivery is never lost.
-- Times are Unix epoch milliseconds (BIGINT). Mirrors migrations/sqlite/0001.
CREATE TABLE deliveries (
    id               BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, -- arrival order
    delivery_id      TEXT    NOT NULL UNIQUE,      -- X-GitHub-Delivery (the dedupe key)
    event            TEXT    NOT NULL,             -- X-GitHub-Event
    action           TEXT,                         -- payload.action, when present
    hook_id          BIGINT,                       -- X-GitHub-Hook-ID, when present
    installation_id  BIGINT,                       -- payload.installation.id
    repository       TEXT,                         -- payload.repository.full_name
    sender_id        BIGINT,                       -- payload.sender.id
    sender_login     TEXT,                         -- payload.sender.login
    received_at      BIGINT  NOT NULL,
    state            TEXT    NOT NULL
        CHECK (state IN ('queued', 'processing', 'done', 'ignored', 'failed')),
    attempts         BIGINT  NOT NULL DEFAULT 0,   -- times a dispatcher claimed it
    available_at     BIGINT  NOT NULL,             -- not claimed before this time (retry backoff)
    claimed_by       TEXT,                         -- dispatcher that holds the lease
    lease_expires_at BIGINT,
    finished_at      BIGINT,
    error            TEXT
);

-- Payloads live apart from the state they describe: written once, never
-- changed, so claims and finishes do not rewrite (or re-TOAST) them.
CREATE TABLE delivery_payloads (
    id       BIGINT  PRIMARY KEY REFERENCES deliveries (id) ON DELETE CASCADE,
    encoding TEXT    NOT NULL CHECK (encoding IN ('identity', 'zstd')),
    size     BIGINT  NOT NULL,                      -- bytes of the raw body
    payload  BYTEA   NOT NULL                       -- the verified body, byte for byte once decoded
);
-- Already compressed (or tiny): no second compression by TOAST.
ALTER TABLE delivery_payloads ALTER COLUMN payload SET STORAGE EXTERNAL;

-- The dispatchers' work list stays small however large the history grows.
CREATE INDEX deliveries_pending ON deliveries (id)
    WHERE state IN ('queued', 'processing');
