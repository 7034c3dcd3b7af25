-- An API token may be scoped to repositories: a JSON array of `owner/name`
-- (NULL: every repository).
ALTER TABLE api_tokens ADD COLUMN repositories TEXT;
