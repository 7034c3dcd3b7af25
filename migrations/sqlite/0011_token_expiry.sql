-- An API token may carry an expiry: refused from then on (epoch ms; NULL: never).
ALTER TABLE api_tokens ADD COLUMN expires_at INTEGER;
