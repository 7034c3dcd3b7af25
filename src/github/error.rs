//! Errors from talking to GitHub, split by what the caller should do next.
//!
//! The outbox needs one answer from an error: *try again later* or *give up
//! and say so*. [`GitHubError::is_transient`] gives it. Operators need a
//! second: *is my configuration wrong?* — [`GitHubError::Config`] is the only
//! variant that means "fix the settings", and its message says which one.
//! None of the messages contain a token, a JWT or the private key.

use std::time::Duration;

/// An error from the GitHub layer.
#[derive(Debug, thiserror::Error)]
pub enum GitHubError {
    /// The App settings are missing or unusable (bad App id, unreadable or
    /// invalid private key, bad API URL). Fix the environment and restart.
    #[error("GitHub App configuration: {0}")]
    Config(String),

    /// A value given to the GitHub layer cannot be sent (a bad repository
    /// name, an action button over GitHub's length limits, …): a bug in the
    /// caller, not a GitHub problem.
    #[error("invalid request to GitHub: {0}")]
    InvalidInput(String),

    /// GitHub answered with an error status that retrying will not fix
    /// (or retries were used up). `message` is GitHub's own `message` field.
    #[error("GitHub answered {status} to {method} {path}: {message}")]
    Api {
        status: u16,
        method: String,
        path: String,
        message: String,
    },

    /// GitHub asked us to wait longer than the retry policy allows one
    /// request to wait ([`crate::github::RetryPolicy::max_wait`]). The caller
    /// should try again after `wait` (scaled by the policy's time scale).
    #[error("GitHub rate limit: try {method} {path} again in {wait:?}")]
    RateLimited {
        method: String,
        path: String,
        wait: Duration,
    },

    /// The request never got an HTTP answer (connection, TLS, timeout).
    #[error("could not reach GitHub for {method} {path}: {message}")]
    Transport {
        method: String,
        path: String,
        message: String,
    },

    /// GitHub answered 2xx with a body we could not read.
    #[error("unexpected answer from GitHub to {method} {path}: {message}")]
    Decode {
        method: String,
        path: String,
        message: String,
    },
}

impl GitHubError {
    /// Whether the same effect may succeed if tried again later: transport
    /// failures, rate limits, 5xx and 401 (a token GitHub did not yet know).
    /// 4xx answers such as 422 (invalid body) or 403 (missing permission) are
    /// final.
    pub fn is_transient(&self) -> bool {
        match self {
            GitHubError::Transport { .. } | GitHubError::RateLimited { .. } => true,
            GitHubError::Api { status, .. } => *status >= 500 || *status == 401 || *status == 429,
            GitHubError::Config(_) | GitHubError::InvalidInput(_) | GitHubError::Decode { .. } => {
                false
            }
        }
    }

    /// Whether GitHub answered 404 (after the brief retry for fresh objects).
    pub fn is_not_found(&self) -> bool {
        matches!(self, GitHubError::Api { status: 404, .. })
    }

    /// The HTTP status GitHub answered, when it answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            GitHubError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }
}
