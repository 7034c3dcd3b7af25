//! The operator API's records: API tokens, tasks, validations, and the
//! read-only aggregates behind `/api/agents` and `/api/metrics`.
//!
//! API tokens are stored **hashed** (SHA-256 of the whole token): a copy of the
//! database does not hand out access. A token carries high entropy (see
//! `api::auth`), so a fast hash is enough; there is nothing to brute-force.
//! Lists are paginated by id (`before_id`, newest first): a page stays
//! correct while new rows arrive, unlike an offset.
//!
//! Times are Unix epoch milliseconds.

use serde::Serialize;

use super::RunState;

macro_rules! name_enum {
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $variant:ident = $text:literal),* $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, serde::Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum $name { $($(#[$vm])* $variant),* }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),*];

            /// The name as stored and shown.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),* }
            }

            /// Parses a stored name; `None` for anything else.
            pub fn parse(s: &str) -> Option<Self> {
                match s { $($text => Some($name::$variant),)* _ => None }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl std::str::FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                Self::parse(s).ok_or_else(|| {
                    let names: Vec<&str> = Self::ALL.iter().map(|v| v.as_str()).collect();
                    format!("`{s}` is not one of {}", names.join(", "))
                })
            }
        }
    };
}

name_enum! {
    /// What an API token may do. Each role includes the ones below it in
    /// this list except where noted (see `api::auth::Permission`).
    Role {
        /// Everything, including managing tokens and reading the audit log.
        Admin = "admin",
        /// Tasks, validations and workflows (execute and control).
        Developer = "developer",
        /// Execute workflows and pause, resume, cancel or retry runs.
        Operator = "operator",
        /// Read only.
        Viewer = "viewer",
    }
}

name_enum! {
    /// Where a task came from.
    TaskSource {
        /// Text given to `POST /api/tasks`.
        Api = "api",
        /// A GitHub issue.
        Issue = "issue",
        /// A GitHub pull request.
        PullRequest = "pull_request",
    }
}

name_enum! {
    /// Where a task stands.
    TaskState {
        /// Not started.
        Open = "open",
        /// Someone (or a run) works on it.
        InProgress = "in_progress",
        /// Finished.
        Done = "done",
        /// Not to be done.
        Dismissed = "dismissed",
    }
}

name_enum! {
    /// What a validation checked.
    ValidationKind {
        /// A review of the code.
        CodeReview = "code_review",
        /// A test run.
        Tests = "tests",
        /// A security audit.
        SecurityAudit = "security_audit",
        /// Anything else.
        Other = "other",
    }
}

name_enum! {
    /// A validation's verdict.
    Verdict {
        /// Passed.
        Pass = "pass",
        /// Failed: the change should not go in as it is.
        Fail = "fail",
        /// Passed with findings worth a look.
        Warn = "warn",
    }
}

/// An API token to store (its hash, never the token).
#[derive(Debug, Clone)]
pub struct NewApiToken {
    /// Unique name, the actor in the audit log.
    pub name: String,
    pub role: Role,
    /// Hex SHA-256 of the whole token.
    pub token_hash: String,
    /// The token's first characters (`tm_ab12…`), to recognise it in lists.
    pub prefix: String,
    /// `cli` or the creating admin token's name.
    pub created_by: String,
    /// Epoch ms.
    pub created_at: i64,
    /// Epoch ms from which the token is refused; `None`: never.
    pub expires_at: Option<i64>,
    /// The repositories (`owner/name`) the token may act on; `None`: all.
    pub repositories: Option<Vec<String>>,
}

/// A stored API token (without its hash).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ApiToken {
    pub id: i64,
    pub name: String,
    pub role: Role,
    pub prefix: String,
    pub created_by: String,
    /// Epoch ms.
    pub created_at: i64,
    /// Epoch ms, updated at most once a minute.
    pub last_used_at: Option<i64>,
    /// Epoch ms; a revoked token is refused.
    pub revoked_at: Option<i64>,
    /// Epoch ms from which the token is refused; `None`: never.
    pub expires_at: Option<i64>,
    /// The repositories (`owner/name`) the token may act on; `None`: all.
    pub repositories: Option<Vec<String>>,
}

/// Which runs to list, newest first.
#[derive(Debug, Clone, Default)]
pub struct RunFilter {
    /// `owner/name`.
    pub repository: Option<String>,
    pub workflow: Option<String>,
    pub state: Option<RunState>,
    /// Only runs with a smaller id (the previous page's last id).
    pub before_id: Option<i64>,
    /// Only runs created at or after this instant, epoch ms.
    pub created_from: Option<i64>,
    /// Only runs created before this instant, epoch ms.
    pub created_before: Option<i64>,
    /// At most this many.
    pub limit: i64,
}

/// A task to store.
#[derive(Debug, Clone)]
pub struct NewTask {
    pub source: TaskSource,
    pub repository: Option<String>,
    /// Issue or PR number.
    pub subject_number: Option<i64>,
    pub title: String,
    pub body: String,
    /// The classification (`classify::Classification`) as JSON.
    pub classification: serde_json::Value,
    /// Token name or `system`.
    pub created_by: String,
    /// Epoch ms.
    pub created_at: i64,
}

/// A stored task.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TaskRecord {
    pub id: i64,
    pub source: TaskSource,
    pub repository: Option<String>,
    pub subject_number: Option<i64>,
    pub title: String,
    pub body: String,
    pub classification: serde_json::Value,
    pub state: TaskState,
    /// The run working on it, when linked.
    pub run_id: Option<i64>,
    pub created_by: String,
    pub created_at: i64,
    pub updated_at: i64,
}

/// Changes to a task; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct TaskUpdate {
    pub title: Option<String>,
    pub body: Option<String>,
    pub classification: Option<serde_json::Value>,
    pub state: Option<TaskState>,
    /// `Some(None)` unlinks the run.
    pub run_id: Option<Option<i64>>,
    /// Epoch ms.
    pub updated_at: i64,
}

/// Which tasks to list, newest first.
#[derive(Debug, Clone, Default)]
pub struct TaskFilter {
    pub repository: Option<String>,
    /// Only the task of this issue or PR number.
    pub subject_number: Option<i64>,
    pub state: Option<TaskState>,
    pub before_id: Option<i64>,
    pub limit: i64,
}

/// A validation verdict to store.
#[derive(Debug, Clone)]
pub struct NewValidation {
    pub run_id: Option<i64>,
    pub step: Option<String>,
    pub kind: ValidationKind,
    pub verdict: Verdict,
    pub summary: String,
    /// JSON array of evidence items.
    pub evidence: serde_json::Value,
    pub created_by: String,
    /// Epoch ms.
    pub created_at: i64,
}

/// A stored validation.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ValidationRecord {
    pub id: i64,
    pub run_id: Option<i64>,
    pub step: Option<String>,
    pub kind: ValidationKind,
    pub verdict: Verdict,
    pub summary: String,
    pub evidence: serde_json::Value,
    pub created_by: String,
    pub created_at: i64,
}

/// Which validations to list, newest first.
#[derive(Debug, Clone, Default)]
pub struct ValidationFilter {
    pub run_id: Option<i64>,
    pub kind: Option<ValidationKind>,
    pub verdict: Option<Verdict>,
    pub before_id: Option<i64>,
    pub limit: i64,
}

/// Row counts for the metrics scrape, read in one pass at scrape time (so
/// they are true after a restart, unlike in-process counters).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoreCounts {
    /// Stored deliveries by (event, state).
    pub deliveries: Vec<(String, String, i64)>,
    /// Runs by (workflow, state).
    pub runs: Vec<(String, String, i64)>,
    /// Steps of active runs by (workflow, state).
    pub steps: Vec<(String, String, i64)>,
    /// GitHub effects (command replies, reactions) waiting to be sent.
    pub effects_pending: i64,
    /// Runs whose current state GitHub has not been shown yet.
    pub reports_pending: i64,
    /// Finished runs by workflow: (workflow, how many, their summed
    /// duration from creation to outcome in ms).
    pub finished_runs: Vec<(String, i64, i64)>,
}

/// Attempts of one agent since some instant.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AgentAttemptStats {
    pub agent: String,
    /// Attempts started and not finished (over all time).
    pub in_flight: i64,
    /// Attempts finished in the window.
    pub finished: i64,
    /// Of those, how many succeeded.
    pub succeeded: i64,
    /// Durations of the finished attempts, ms, ascending.
    pub durations_ms: Vec<i64>,
}
