-- The engine's durable state: runs of workflows, their steps (the DAG nodes,
-- which double as the work queue), every attempt of a step against an agent,
-- and a timeline of every decision. Times are Unix epoch milliseconds.

-- One execution of a workflow for one subject. (delivery_id, workflow) is
-- unique: reprocessing a delivery can never start a second run.
CREATE TABLE runs (
    id                INTEGER PRIMARY KEY,
    workflow          TEXT    NOT NULL,
    delivery_id       TEXT    NOT NULL,          -- X-GitHub-Delivery that started it
    event             TEXT    NOT NULL,          -- X-GitHub-Event of that delivery
    repository        TEXT,                      -- owner/name
    subject_number    INTEGER,                   -- PR or issue number
    head_sha          TEXT,                      -- PR head commit, for PR runs
    classification    TEXT,                      -- JSON (classify::Classification)
    reason            TEXT    NOT NULL,          -- why routing started it
    context           TEXT    NOT NULL,          -- JSON: what `if:` conditions read
    priority          INTEGER NOT NULL,          -- 0 low .. 3 critical
    concurrency_group TEXT,
    state             TEXT    NOT NULL DEFAULT 'queued'
        CHECK (state IN ('queued', 'running', 'paused', 'succeeded', 'failed', 'cancelled', 'timed_out')),
    desired_state     TEXT    NOT NULL DEFAULT 'running'
        CHECK (desired_state IN ('running', 'paused', 'cancelled', 'timed_out')),
    max_parallel      INTEGER,                   -- steps of this run at once (NULL: no limit)
    deadline_at       INTEGER,                   -- run timeout (NULL: none)
    budget_usd        REAL,
    cost_usd          REAL    NOT NULL DEFAULT 0,
    conclusion        TEXT,                      -- why it ended as it did
    created_at        INTEGER NOT NULL,
    started_at        INTEGER,
    finished_at       INTEGER,
    UNIQUE (delivery_id, workflow)
);

CREATE INDEX runs_active ON runs (id) WHERE state IN ('queued', 'running', 'paused');
CREATE INDEX runs_group ON runs (concurrency_group, id)
    WHERE concurrency_group IS NOT NULL AND state IN ('queued', 'running', 'paused');

-- One node of a run's DAG, and its place in the queue. A `running` step holds
-- a lease (owner, random token, expiry); its result is accepted only with the
-- current token (fencing).
CREATE TABLE steps (
    id               INTEGER PRIMARY KEY,
    run_id           INTEGER NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    step             TEXT    NOT NULL,           -- the step id in the workflow
    position         INTEGER NOT NULL,           -- topological order in the workflow
    needs            TEXT    NOT NULL,           -- JSON array of step ids
    continue_on_error INTEGER NOT NULL DEFAULT 0,
    state            TEXT    NOT NULL DEFAULT 'pending'
        CHECK (state IN ('pending', 'ready', 'running', 'succeeded', 'failed', 'skipped', 'cancelled', 'timed_out')),
    agent            TEXT    NOT NULL,           -- the agent the next attempt goes to
    primary_agent    TEXT    NOT NULL,           -- the step's own agent (a retry starts there again)
    agent_index      INTEGER NOT NULL DEFAULT 0, -- 0: the step's agent; n: its n-th fallback
    attempts         INTEGER NOT NULL DEFAULT 0, -- attempts started, on every agent
    agent_attempts   INTEGER NOT NULL DEFAULT 0, -- attempts started on the current agent
    run_at           INTEGER NOT NULL,           -- not claimed before (retry backoff)
    priority         INTEGER NOT NULL,           -- critical-path rank, ms (higher first)
    lease_owner      TEXT,
    lease_token      TEXT,
    lease_expires_at INTEGER,
    output           TEXT,
    error            TEXT,
    started_at       INTEGER,
    finished_at      INTEGER,
    UNIQUE (run_id, step)
);

CREATE INDEX steps_ready ON steps (run_at) WHERE state = 'ready';
CREATE INDEX steps_running ON steps (lease_expires_at) WHERE state = 'running';
CREATE INDEX steps_run ON steps (run_id, position);

-- One try of one step against one agent. `outcome` is NULL while it runs;
-- `lost` when its lease expired before a result came back.
CREATE TABLE attempts (
    id             INTEGER PRIMARY KEY,
    step_row       INTEGER NOT NULL REFERENCES steps (id) ON DELETE CASCADE,
    run_id         INTEGER NOT NULL,
    workflow       TEXT    NOT NULL,
    step           TEXT    NOT NULL,
    number         INTEGER NOT NULL,             -- 1-based, over every agent
    agent          TEXT    NOT NULL,
    lease_token    TEXT    NOT NULL,
    started_at     INTEGER NOT NULL,
    finished_at    INTEGER,
    outcome        TEXT
        CHECK (outcome IS NULL OR outcome IN ('succeeded', 'failed', 'timed_out', 'cancelled', 'lost')),
    error_class    TEXT,                         -- transient | permanent
    error_kind     TEXT,
    error          TEXT,
    output_excerpt TEXT,
    duration_ms    INTEGER,
    cost_usd       REAL,
    UNIQUE (step_row, number)
);

CREATE INDEX attempts_estimate ON attempts (workflow, step, finished_at)
    WHERE outcome = 'succeeded';

-- The run timeline: every transition and every decision, with its reason.
CREATE TABLE run_events (
    id      INTEGER PRIMARY KEY,
    run_id  INTEGER NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    step    TEXT,
    at      INTEGER NOT NULL,
    kind    TEXT    NOT NULL,
    detail  TEXT    NOT NULL
);

CREATE INDEX run_events_run ON run_events (run_id, id);
