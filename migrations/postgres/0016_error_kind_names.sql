-- Attempts' error kinds by the names insights reads (`idle_timeout`,
-- `rate_limited`, `resource_limit`): earlier builds stored the three
-- two-word kinds run together, so insights never counted idle timeouts as
-- timeouts nor rate limits as transient. Data only; the schema is unchanged.
UPDATE attempts SET error_kind = 'idle_timeout' WHERE error_kind = 'idletimeout';
UPDATE attempts SET error_kind = 'rate_limited' WHERE error_kind = 'ratelimited';
UPDATE attempts SET error_kind = 'resource_limit' WHERE error_kind = 'resourcelimit';
