-- The engine's durable state: runs of workflows, their steps (the DAG nodes,
-- which double as the work queue), every attempt of a step against an agent,
-- and a timeline of every decision. Times are Unix epoch milliseconds.
-- Mirrors migrations/sqlite/0002.

-- One execution of a workflow for one subject. (delivery_id, workflow) is
-- unique: reprocessing a delivery can never start a second run.
CREATE TABLE runs (
    id                BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    workflow          TEXT    NOT NULL,
    delivery_id       TEXT    NOT NULL,          -- X-GitHub-Delivery that started it
    event             TEXT    NOT NULL,          -- X-GitHub-Event of that delivery
    repository        TEXT,                      -- owner/name
    subject_number    BIGINT,                    -- PR or issue number
    head_sha          TEXT,                      -- PR head commit, for PR runs
    classification    TEXT,                      -- JSON (classify::Classification)
    reason            TEXT    NOT NULL,          -- why routing started it
    context           TEXT    NOT NULL,          -- JSON: what `if:` conditions read
    priority          BIGINT  NOT NULL,          -- 0 low .. 3 critical
    concurrency_group TEXT,
    state             TEXT    NOT NULL DEFAULT 'queued'
        CHECK (state IN ('queued', 'running', 'paused', 'succeeded', 'failed', 'cancelled', 'timed_out')),
    desired_state     TEXT    NOT NULL DEFAULT 'running'
        CHECK (desired_state IN ('running', 'paused', 'cancelled', 'timed_out')),
    max_parallel      BIGINT,                    -- steps of this run at once (NULL: no limit)
    deadline_at       BIGINT,                    -- run timeout (NULL: none)
    budget_usd        DOUBLE PRECISION,
    cost_usd          DOUBLE PRECISION NOT NULL DEFAULT 0,
    conclusion        TEXT,                      -- why it ended as it did
    created_at        BIGINT  NOT NULL,
    started_at        BIGINT,
    finished_at       BIGINT,
    UNIQUE (delivery_id, workflow)
);

CREATE INDEX runs_active ON runs (id) WHERE state IN ('queued', 'running', 'paused');
CREATE INDEX runs_group ON runs (concurrency_group, id)
    WHERE concurrency_group IS NOT NULL AND state IN ('queued', 'running', 'paused');

-- One node of a run's DAG, and its place in the queue. A `running` step holds
-- a lease (owner, random token, expiry); its result is accepted only with the
-- current token (fencing).
CREATE TABLE steps (
    id               BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run_id           BIGINT  NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    step             TEXT    NOT NULL,           -- the step id in the workflow
    position         BIGINT  NOT NULL,           -- topological order in the workflow
    needs            TEXT    NOT NULL,           -- JSON array of step ids
    continue_on_error BOOLEAN NOT NULL DEFAULT FALSE,
    state            TEXT    NOT NULL DEFAULT 'pending'
        CHECK (state IN ('pending', 'ready', 'running', 'succeeded', 'failed', 'skipped', 'cancelled', 'timed_out')),
    agent            TEXT    NOT NULL,           -- the agent the next attempt goes to
    primary_agent    TEXT    NOT NULL,           -- the step's own agent (a retry starts there again)
    agent_index      BIGINT  NOT NULL DEFAULT 0, -- 0: the step's agent; n: its n-th fallback
    attempts         BIGINT  NOT NULL DEFAULT 0, -- attempts started, on every agent
    agent_attempts   BIGINT  NOT NULL DEFAULT 0, -- attempts started on the current agent
    run_at           BIGINT  NOT NULL,           -- not claimed before (retry backoff)
    priority         BIGINT  NOT NULL,           -- critical-path rank, ms (higher first)
    lease_owner      TEXT,
    lease_token      TEXT,
    lease_expires_at BIGINT,
    output           TEXT,
    error            TEXT,
    started_at       BIGINT,
    finished_at      BIGINT,
    UNIQUE (run_id, step)
);

CREATE INDEX steps_ready ON steps (run_at) WHERE state = 'ready';
CREATE INDEX steps_running ON steps (lease_expires_at) WHERE state = 'running';
CREATE INDEX steps_run ON steps (run_id, position);

-- One try of one step against one agent. `outcome` is NULL while it runs;
-- `lost` when its lease expired before a result came back.
CREATE TABLE attempts (
    id             BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    step_row       BIGINT  NOT NULL REFERENCES steps (id) ON DELETE CASCADE,
    run_id         BIGINT  NOT NULL,
    workflow       TEXT    NOT NULL,
    step           TEXT    NOT NULL,
    number         BIGINT  NOT NULL,             -- 1-based, over every agent
    agent          TEXT    NOT NULL,
    lease_token    TEXT    NOT NULL,
    started_at     BIGINT  NOT NULL,
    finished_at    BIGINT,
    outcome        TEXT
        CHECK (outcome IS NULL OR outcome IN ('succeeded', 'failed', 'timed_out', 'cancelled', 'lost')),
    error_class    TEXT,                         -- transient | permanent
    error_kind     TEXT,
    error          TEXT,
    output_excerpt TEXT,
    duration_ms    BIGINT,
    cost_usd       DOUBLE PRECISION,
    UNIQUE (step_row, number)
);

CREATE INDEX attempts_estimate ON attempts (workflow, step, finished_at)
    WHERE outcome = 'succeeded';
-- PostgreSQL does not index foreign keys by itself: a run's attempts by run.
CREATE INDEX attempts_run ON attempts (run_id, id);

-- The run timeline: every transition and every decision, with its reason.
CREATE TABLE run_events (
    id      BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run_id  BIGINT  NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    step    TEXT,
    at      BIGINT  NOT NULL,
    kind    TEXT    NOT NULL,
    detail  TEXT    NOT NULL
);

CREATE INDEX run_events_run ON run_events (run_id, id);
