//! A run's change and its way back to GitHub, as stored.
//!
//! One row per run (`run_changes`): the latest harvest of its workspace
//! (every harvest is against the commit the run checked out, so the last
//! one holds all of the run's changes), whether the policy refused it, and
//! the progress of its publication — tree, commit, branch, pull request,
//! review, comment — saved after each GitHub write, so a restart resumes
//! where the last one stopped instead of writing again (see
//! [`crate::publish`]).

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::StoreError;
use crate::github::PullRequestRef;
use crate::workspace::Change;

/// Where a run's change stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeState {
    /// Harvested and allowed; sent once the run succeeds.
    Pending,
    /// On GitHub (a commit and pull request, or a review of suggestions).
    Published,
    /// The policy refused it; nothing was sent.
    Refused,
    /// The workspace held no change.
    Empty,
    /// Sending failed for good (the reason is in `last_error`).
    Failed,
    /// Dry run: recorded, never sent.
    DryRun,
}

impl ChangeState {
    /// The name as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeState::Pending => "pending",
            ChangeState::Published => "published",
            ChangeState::Refused => "refused",
            ChangeState::Empty => "empty",
            ChangeState::Failed => "failed",
            ChangeState::DryRun => "dry_run",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending" => ChangeState::Pending,
            "published" => ChangeState::Published,
            "refused" => ChangeState::Refused,
            "empty" => ChangeState::Empty,
            "failed" => ChangeState::Failed,
            "dry_run" => ChangeState::DryRun,
            _ => return None,
        })
    }
}

/// How the change reaches GitHub.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PublishTarget {
    /// A new branch and a (draft) pull request against the default branch
    /// (issue runs).
    NewPullRequest,
    /// A commit on a same-repository pull request's head branch.
    HeadBranch,
    /// The head moved: a new branch and a pull request against the PR's
    /// head branch.
    PullRequestOnHead,
    /// A fork's pull request: a review with suggestions, never a push.
    Suggestions,
    /// Codegen opened the pull request itself: linked, not opened again.
    Linked,
}

/// Progress and result of sending a change, saved after each write.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Publication {
    /// Chosen once, on the first attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<PublishTarget>,
    /// The tree made on the base commit's tree.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tree: Option<String>,
    /// The commit of that tree.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    /// The branch the commit is on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub branch: Option<String>,
    /// Set once the branch points at the commit.
    #[serde(default)]
    pub branch_done: bool,
    /// The pull request proposing it (or the one the commit went onto).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pull_request: Option<PullRequestRef>,
    /// Pull requests another agent opened (Codegen).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub linked: Vec<String>,
    /// The review with suggestions (fork pull requests).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub review_id: Option<u64>,
    /// Suggestions placed inline, and files whose changes are only in the
    /// check run's patch.
    #[serde(default)]
    pub suggestions: u64,
    /// The comment on the issue linking the pull request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment_id: Option<u64>,
    /// A note for the reader (why a new branch, dry run, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// Dry run: the pull request that would have been opened.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub would_open: Option<serde_json::Value>,
}

/// A run's change as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunChange {
    pub run_id: super::RunId,
    /// The step whose end harvested it.
    pub step: String,
    pub change: Change,
    pub state: ChangeState,
    /// Why the policy refused it.
    pub refused: Option<String>,
    pub publication: Publication,
    /// Failed sends so far.
    pub attempts: i64,
    /// Not sent again before this, epoch ms.
    pub next_attempt_at: i64,
    pub last_error: Option<String>,
    /// Epoch ms.
    pub updated_at: i64,
}

/// Storage of runs' changes; part of [`super::RunStore`].
#[async_trait]
pub trait ChangeStore: Send + Sync {
    /// Stores the harvest of `step` as the run's change (replacing an
    /// earlier one that was not sent yet), `refused` when the policy said
    /// no, and adds a `changes` event to the run's timeline.
    async fn record_change(
        &self,
        run_id: super::RunId,
        step: &str,
        change: &Change,
        refused: Option<&str>,
    ) -> Result<(), StoreError>;

    /// The run's change, if a step harvested one.
    async fn run_change(&self, run_id: super::RunId) -> Result<Option<RunChange>, StoreError>;

    /// Runs whose change waits to be sent: `pending`, due at `now`, and the
    /// run finished `succeeded`; oldest first, at most `limit`.
    async fn changes_to_publish(
        &self,
        now: i64,
        limit: i64,
    ) -> Result<Vec<super::RunId>, StoreError>;

    /// Saves progress (after each GitHub write).
    async fn save_publication(
        &self,
        run_id: super::RunId,
        publication: &Publication,
    ) -> Result<(), StoreError>;

    /// Ends the publication in `state` (`Published`, `Failed`, `DryRun`),
    /// with `detail` on the run's timeline.
    async fn finish_publication(
        &self,
        run_id: super::RunId,
        state: ChangeState,
        publication: &Publication,
        error: Option<&str>,
        detail: &str,
    ) -> Result<(), StoreError>;

    /// A transient failure: try again at `next_attempt_at`.
    async fn retry_publication(
        &self,
        run_id: super::RunId,
        error: &str,
        next_attempt_at: i64,
    ) -> Result<(), StoreError>;
}

/// The summary line a harvest adds to the run's timeline.
pub fn change_event_detail(change: &Change, refused: Option<&str>) -> String {
    if let Some(why) = refused {
        return format!("change refused: {why}");
    }
    if change.is_empty() {
        return "no changes".into();
    }
    format!(
        "{} file{} changed (+{} −{})",
        change.files.len(),
        if change.files.len() == 1 { "" } else { "s" },
        change.additions,
        change.deletions
    )
}

/// The state a fresh harvest is stored in.
pub fn initial_state(change: &Change, refused: Option<&str>) -> ChangeState {
    if refused.is_some() {
        ChangeState::Refused
    } else if change.is_empty() && change.linked_pull_requests.is_empty() {
        ChangeState::Empty
    } else {
        ChangeState::Pending
    }
}
