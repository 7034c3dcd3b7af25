-- Spend limits (`budgets:` in the service configuration).
--
-- An attempt's cost is recorded as the agent reported it or, failing that,
-- estimated from the agent's `price:` (tokens or minutes): `cost_estimated`
-- says which.
ALTER TABLE attempts ADD COLUMN cost_estimated BOOLEAN NOT NULL DEFAULT FALSE;

-- What a step's attempts cost, US dollars (the check run's table shows it).
ALTER TABLE steps ADD COLUMN cost_usd DOUBLE PRECISION NOT NULL DEFAULT 0;

-- Why a budget stopped the run (the check run says so, as `neutral`).
ALTER TABLE runs ADD COLUMN stopped_by_budget TEXT;

-- Spend per UTC day, repository and installation, added to in the same
-- transaction that records an attempt's end: budgets per repository, per
-- installation and overall read at most 31 rows a scope instead of a
-- month of attempts. `repository` is '' and `installation_id` 0 when the
-- run has none.
CREATE TABLE spend (
    day             BIGINT  NOT NULL,   -- days since 1970-01-01 (UTC)
    repository      TEXT    NOT NULL,
    installation_id BIGINT  NOT NULL,
    usd             DOUBLE PRECISION NOT NULL,
    attempts        BIGINT  NOT NULL,
    agent_ms        BIGINT  NOT NULL,
    PRIMARY KEY (day, repository, installation_id)
);
CREATE INDEX spend_repository ON spend (repository, day);
CREATE INDEX spend_installation ON spend (installation_id, day);
