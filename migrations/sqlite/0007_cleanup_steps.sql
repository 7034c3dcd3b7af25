-- Steps whose `if:` calls always() or cancelled() still run when their run
-- is cancelled (as in GitHub Actions): the scheduler may claim them while the
-- run's desired state is `cancelled`, and cancelling does not abort them.
ALTER TABLE steps ADD COLUMN runs_when_cancelled INTEGER NOT NULL DEFAULT 0;
