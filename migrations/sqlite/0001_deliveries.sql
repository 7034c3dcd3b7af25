-- The inbox: one row per webhook delivery, keyed by GitHub's X-GitHub-Delivery GUID.
-- A row is committed before the webhook is answered, so an answered delivery is never lost.
-- Times are Unix epoch milliseconds (INTEGER).
CREATE TABLE deliveries (
    id               INTEGER PRIMARY KEY,          -- arrival order
    delivery_id      TEXT    NOT NULL UNIQUE,      -- X-GitHub-Delivery (the dedupe key)
    event            TEXT    NOT NULL,             -- X-GitHub-Event
    action           TEXT,                         -- payload.action, when present
    hook_id          INTEGER,                      -- X-GitHub-Hook-ID, when present
    installation_id  INTEGER,                      -- payload.installation.id
    repository       TEXT,                         -- payload.repository.full_name
    sender_id        INTEGER,                      -- payload.sender.id
    sender_login     TEXT,                         -- payload.sender.login
    received_at      INTEGER NOT NULL,
    state            TEXT    NOT NULL
        CHECK (state IN ('queued', 'processing', 'done', 'ignored', 'failed')),
    attempts         INTEGER NOT NULL DEFAULT 0,   -- times the dispatcher claimed it
    available_at     INTEGER NOT NULL,             -- not claimed before this time (retry backoff)
    claimed_by       TEXT,                         -- dispatcher that holds the lease
    lease_expires_at INTEGER,
    finished_at      INTEGER,
    error            TEXT
);

-- Payloads live apart from the state they describe: a payload is written once
-- and never changes, while a delivery's state changes several times. SQLite
-- rewrites a whole row on UPDATE, so a 22 KB payload in the same row would be
-- rewritten on every claim and finish.
CREATE TABLE delivery_payloads (
    id       INTEGER PRIMARY KEY REFERENCES deliveries (id) ON DELETE CASCADE,
    encoding TEXT    NOT NULL CHECK (encoding IN ('identity', 'zstd')),
    size     INTEGER NOT NULL,                      -- bytes of the raw body
    payload  BLOB    NOT NULL                       -- the verified body, byte for byte once decoded
);

-- The dispatcher's work list stays small however large the history grows
-- (claims must name the states so the planner can use this partial index).
CREATE INDEX deliveries_pending ON deliveries (id)
    WHERE state IN ('queued', 'processing');
