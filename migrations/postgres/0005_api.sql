-- The operator API's own records: bearer API tokens (stored hashed), tasks
-- (classified units of work, from text given to the API or from issues and
-- pull requests), and validations (verdicts of code review, tests and
-- security audits with their evidence). Times are Unix epoch milliseconds.
-- Mirrors migrations/sqlite/0005.

-- One row per API token. Only the SHA-256 of the token is kept: the token
-- itself is shown once, when created, and cannot be recovered.
CREATE TABLE api_tokens (
    id           BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name         TEXT    NOT NULL UNIQUE,       -- shown in the audit log as the actor
    role         TEXT    NOT NULL
        CHECK (role IN ('admin', 'developer', 'operator', 'viewer')),
    token_hash   TEXT    NOT NULL UNIQUE,       -- hex SHA-256 of the whole token
    prefix       TEXT    NOT NULL,              -- the token's first characters, to recognise it
    created_at   BIGINT  NOT NULL,
    created_by   TEXT    NOT NULL,              -- `cli` or the admin token's name
    last_used_at BIGINT,
    revoked_at   BIGINT
);

-- Classified units of work.
CREATE TABLE tasks (
    id             BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    source         TEXT    NOT NULL
        CHECK (source IN ('api', 'issue', 'pull_request')),
    repository     TEXT,                        -- owner/name
    subject_number BIGINT,                      -- issue or PR number
    title          TEXT    NOT NULL,
    body           TEXT    NOT NULL,
    classification TEXT    NOT NULL,            -- JSON (classify::Classification)
    state          TEXT    NOT NULL DEFAULT 'open'
        CHECK (state IN ('open', 'in_progress', 'done', 'dismissed')),
    run_id         BIGINT REFERENCES runs (id) ON DELETE SET NULL,
    created_by     TEXT    NOT NULL,
    created_at     BIGINT  NOT NULL,
    updated_at     BIGINT  NOT NULL
);
CREATE INDEX tasks_repository ON tasks (repository, id);

-- Verdicts of validation steps, with their evidence.
CREATE TABLE validations (
    id         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run_id     BIGINT REFERENCES runs (id) ON DELETE SET NULL,
    step       TEXT,
    kind       TEXT    NOT NULL
        CHECK (kind IN ('code_review', 'tests', 'security_audit', 'other')),
    verdict    TEXT    NOT NULL
        CHECK (verdict IN ('pass', 'fail', 'warn')),
    summary    TEXT    NOT NULL,
    evidence   TEXT    NOT NULL,                -- JSON array
    created_by TEXT    NOT NULL,
    created_at BIGINT  NOT NULL
);
CREATE INDEX validations_run ON validations (run_id, id);
