-- Runs for untrusted work (a fork's pull request, an author without write
-- access) wait for a maintainer's `/approve` before any step is claimed.
-- The API shows such a run as `waiting_approval`; in this table it is
-- `state = 'queued'` with `waiting_approval` true (the scheduler skips it).
-- Mirrors migrations/sqlite/0006.
ALTER TABLE runs ADD COLUMN waiting_approval BOOLEAN NOT NULL DEFAULT FALSE;
ALTER TABLE runs ADD COLUMN approved_by TEXT;   -- login of who approved it
CREATE INDEX runs_head_sha ON runs (repository, head_sha);
