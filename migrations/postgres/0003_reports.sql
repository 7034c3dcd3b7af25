-- The report outbox: what each run last showed on GitHub, so that the outbox
-- worker can tell which runs changed since (their "fingerprint" differs) and
-- carry on after a restart without creating a second check run or comment.
-- Times are Unix epoch milliseconds. Mirrors migrations/sqlite/0003.

-- One row per reported run, created on its first report attempt.
CREATE TABLE run_reports (
    run_id               BIGINT PRIMARY KEY REFERENCES runs (id) ON DELETE CASCADE,
    check_run_id         BIGINT,             -- GitHub's id, once created (PR runs)
    reported_fingerprint TEXT,               -- the run's fingerprint GitHub last accepted
    reported_state       TEXT,               -- runs.state at that report
    reported_at          BIGINT,             -- when GitHub accepted it
    gave_up_fingerprint  TEXT,               -- a permanent error for this fingerprint: not retried
    attempts             BIGINT NOT NULL DEFAULT 0, -- failed sends since the last success
    next_attempt_at      BIGINT NOT NULL DEFAULT 0, -- transient failure backoff
    last_error           TEXT
);

-- One sticky comment per pull request or issue, shared by all its runs.
CREATE TABLE sticky_comments (
    repository     TEXT   NOT NULL,
    subject_number BIGINT NOT NULL,
    comment_id     BIGINT NOT NULL,
    PRIMARY KEY (repository, subject_number)
);

-- The runs of one pull request or issue, for the sticky comment they share.
CREATE INDEX runs_subject ON runs (repository, subject_number, id);
-- report_candidates joins runs to their delivery by GUID.
CREATE INDEX runs_delivery ON runs (delivery_id);
