-- The commit a run's workspace checked out (a PR's head, or the default
-- branch's head when an issue run first needed its workspace): recorded once,
-- so a workspace made again after a restart is of the same commit.
ALTER TABLE runs ADD COLUMN checkout_sha TEXT;
