-- The GitHub App's own state: installations and their repositories (from the
-- `installation` and `installation_repositories` webhooks), the cached
-- per-repository configuration `.github/taskmaster.yml`, GitHub effects that
-- are not run reports (command replies and reactions) as a durable outbox,
-- and the audit log of every action taken on someone's behalf.
-- Times are Unix epoch milliseconds. Mirrors migrations/sqlite/0004.

-- One row per installation of the App. A suspended or deleted installation's
-- events are ignored.
CREATE TABLE installations (
    id            BIGINT  PRIMARY KEY,       -- GitHub's installation id
    account_login TEXT,
    state         TEXT    NOT NULL DEFAULT 'active'
        CHECK (state IN ('active', 'suspended', 'deleted')),
    updated_at    BIGINT  NOT NULL
);

-- The repositories an installation can see (`repository_selection: selected`).
CREATE TABLE installation_repositories (
    installation_id BIGINT NOT NULL,
    repository      TEXT   NOT NULL,        -- owner/name
    PRIMARY KEY (installation_id, repository)
);

-- `.github/taskmaster.yml` of each repository's default branch, as last fetched.
CREATE TABLE repo_configs (
    repository TEXT    PRIMARY KEY,          -- owner/name
    body       TEXT,                         -- the file (NULL: no file)
    error      TEXT,                         -- why the file was rejected (NULL: valid or absent)
    fetched_at BIGINT  NOT NULL
);

-- GitHub effects besides run reports: replies to commands and reactions.
-- (source, seq) is unique, so handling a delivery twice adds nothing.
CREATE TABLE github_effects (
    id              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    source          TEXT    NOT NULL,        -- e.g. the delivery id that caused it
    seq             BIGINT  NOT NULL,        -- order within the source
    installation_id BIGINT,
    repository      TEXT    NOT NULL,
    kind            TEXT    NOT NULL,        -- 'comment' | 'reaction'
    target          BIGINT  NOT NULL,        -- issue number (comment) or comment id (reaction)
    body            TEXT    NOT NULL,        -- comment markdown or reaction content
    state           TEXT    NOT NULL DEFAULT 'pending'
        CHECK (state IN ('pending', 'sent', 'dry_run', 'failed')),
    attempts        BIGINT  NOT NULL DEFAULT 0,
    next_attempt_at BIGINT  NOT NULL DEFAULT 0,
    last_error      TEXT,
    created_at      BIGINT  NOT NULL,
    sent_at         BIGINT,
    UNIQUE (source, seq)
);
CREATE INDEX github_effects_pending ON github_effects (next_attempt_at) WHERE state = 'pending';

-- Every action taken on someone's behalf (a comment command, a button, an
-- API call) and every refusal, with who asked and what came of it.
CREATE TABLE audit_log (
    id         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at         BIGINT  NOT NULL,
    actor_kind TEXT    NOT NULL,             -- 'github_user' | 'api_token' | 'system'
    actor      TEXT    NOT NULL,             -- login, token name, or component
    action     TEXT    NOT NULL,             -- e.g. 'command.retry', 'run.cancel'
    target     TEXT,                         -- e.g. 'run:42', 'owner/repo#7'
    outcome    TEXT    NOT NULL,             -- 'ok' | 'refused' | 'error' | 'noop'
    detail     TEXT                          -- JSON with the particulars
);
CREATE INDEX audit_log_at ON audit_log (at);
