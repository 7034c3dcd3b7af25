-- A run's change (the latest harvest of its workspace) and the progress of
-- sending it to GitHub, saved after each write so a restart resumes.
CREATE TABLE run_changes (
    run_id          BIGINT PRIMARY KEY REFERENCES runs (id) ON DELETE CASCADE,
    step            TEXT    NOT NULL,             -- the step whose end harvested it
    change          TEXT    NOT NULL,             -- JSON: files, diff, blobs
    files           BIGINT  NOT NULL,
    state           TEXT    NOT NULL,             -- pending|published|refused|empty|failed|dry_run
    refused         TEXT,                         -- why the policy refused it
    publication     TEXT    NOT NULL DEFAULT '{}',-- JSON: tree, commit, branch, PR, review
    attempts        BIGINT  NOT NULL DEFAULT 0,
    next_attempt_at BIGINT  NOT NULL DEFAULT 0,
    last_error      TEXT,
    updated_at      BIGINT  NOT NULL
);
CREATE INDEX run_changes_pending ON run_changes (next_attempt_at) WHERE state = 'pending';
