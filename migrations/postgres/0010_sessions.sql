-- Dashboard sessions ended by "Log out" before their cookie expires: the
-- cookie's signature, refused from then on (until it would have expired).
CREATE TABLE ended_sessions (
    signature   TEXT    PRIMARY KEY,
    expires_at  BIGINT  NOT NULL                  -- epoch ms; the row may go after this
);
