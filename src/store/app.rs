//! The GitHub App's own records: installations, the cached per-repository
//! configuration, the outbox of GitHub effects that are not run reports
//! (command replies and reactions), and the audit log.
//!
//! Times are Unix epoch milliseconds.

use crate::ids::InstallationId;
use serde::Serialize;

/// The state of an installation of the App, from the `installation` webhook.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum InstallationState {
    /// Created or unsuspended: its events are handled.
    Active,
    /// Suspended by the account: its events are ignored.
    Suspended,
    /// Uninstalled: its events are ignored.
    Deleted,
}

impl InstallationState {
    /// The state's name as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            InstallationState::Active => "active",
            InstallationState::Suspended => "suspended",
            InstallationState::Deleted => "deleted",
        }
    }

    /// Parses a stored name; `None` for anything else.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "active" => InstallationState::Active,
            "suspended" => InstallationState::Suspended,
            "deleted" => InstallationState::Deleted,
            _ => return None,
        })
    }
}

/// `.github/taskmaster.yml` of a repository as last fetched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoConfigRecord {
    /// The file's text; `None` when the repository has no such file.
    pub body: Option<String>,
    /// Why the file was rejected (file, line and column); `None` when valid or absent.
    pub error: Option<String>,
    /// When it was fetched, epoch ms (the cache's age).
    pub fetched_at: i64,
}

/// The kind of a queued GitHub effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EffectKind {
    /// A new issue comment; `target` is the issue or PR number, `body` markdown.
    Comment,
    /// A reaction to an issue comment; `target` is the comment id, `body` the
    /// reaction's content (`eyes`, `+1`, `-1`, …).
    Reaction,
}

impl EffectKind {
    /// The kind's name as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            EffectKind::Comment => "comment",
            EffectKind::Reaction => "reaction",
        }
    }

    /// Parses a stored name; `None` for anything else.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "comment" => EffectKind::Comment,
            "reaction" => EffectKind::Reaction,
            _ => return None,
        })
    }
}

/// A GitHub effect to send, keyed by `(source, seq)`: enqueuing the same key
/// twice (a redelivered command) adds nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEffect {
    /// What caused it, e.g. the delivery id of the comment with the command.
    pub source: String,
    /// Its order within `source`.
    pub seq: i64,
    /// The installation whose token sends it (`None` in dry run without one).
    pub installation_id: Option<InstallationId>,
    /// `owner/name`.
    pub repository: crate::github::RepoName,
    pub kind: EffectKind,
    /// Issue/PR number for a comment, comment id for a reaction.
    pub target: i64,
    /// Comment markdown, or reaction content.
    pub body: String,
}

/// The state of a queued GitHub effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EffectState {
    /// Not sent yet (or to be retried at `next_attempt_at`).
    Pending,
    /// GitHub accepted it.
    Sent,
    /// Recorded instead of sent: the service runs without App credentials.
    DryRun,
    /// GitHub refused it for good.
    Failed,
}

impl EffectState {
    /// The state's name as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            EffectState::Pending => "pending",
            EffectState::Sent => "sent",
            EffectState::DryRun => "dry_run",
            EffectState::Failed => "failed",
        }
    }

    /// Parses a stored name; `None` for anything else.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending" => EffectState::Pending,
            "sent" => EffectState::Sent,
            "dry_run" => EffectState::DryRun,
            "failed" => EffectState::Failed,
            _ => return None,
        })
    }
}

/// A GitHub effect as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Effect {
    pub id: i64,
    pub source: String,
    pub seq: i64,
    pub installation_id: Option<InstallationId>,
    pub repository: crate::github::RepoName,
    pub kind: EffectKind,
    pub target: i64,
    pub body: String,
    pub state: EffectState,
    /// Failed sends so far.
    pub attempts: i64,
    pub last_error: Option<String>,
    pub created_at: i64,
}

/// How one attempt to send an effect ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EffectOutcome {
    /// GitHub accepted it.
    Sent,
    /// Recorded, not sent (dry run).
    DryRun,
    /// Try again at `retry_at` (epoch ms).
    Retry { error: String, retry_at: i64 },
    /// Given up.
    Failed(String),
}

/// Who acted, for the audit log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ActorKind {
    /// A GitHub user (comment command, check-run button).
    GithubUser,
    /// A bearer API token (operator API).
    ApiToken,
    /// taskmaster itself.
    System,
}

impl ActorKind {
    /// The kind's name as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            ActorKind::GithubUser => "github_user",
            ActorKind::ApiToken => "api_token",
            ActorKind::System => "system",
        }
    }

    /// Parses a stored name; `None` for anything else.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "github_user" => ActorKind::GithubUser,
            "api_token" => ActorKind::ApiToken,
            "system" => ActorKind::System,
            _ => return None,
        })
    }
}

/// One entry of the audit log: who asked for what, on what, and how it ended.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AuditEntry {
    /// Row id (0 before it is stored).
    pub id: i64,
    /// When, epoch ms.
    pub at: i64,
    pub actor_kind: ActorKind,
    /// A GitHub login, an API token's name, or a component name.
    pub actor: String,
    /// Dotted name, e.g. `command.retry`, `run.cancel`, `token.create`.
    pub action: String,
    /// What it was about, e.g. `run:42` or `octo/repo#7`.
    pub target: Option<String>,
    /// `ok`, `refused`, `error` or `noop`.
    pub outcome: String,
    /// Particulars as JSON (never a secret).
    pub detail: Option<serde_json::Value>,
}
