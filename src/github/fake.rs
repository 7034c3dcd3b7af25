//! [`RecordingGitHub`]: an in-memory [`GitHub`] that records every effect.
//!
//! Two users: tests of the engine and outbox, which need a GitHub that
//! remembers what was sent (and can fail on demand) without HTTP; and **dry
//! run** — with no App credentials taskmaster still runs every workflow and
//! records the effects it would have sent instead of sending them
//! ([`RecordingGitHub::dry_run`] logs each one).
//!
//! It behaves like GitHub where the outbox depends on it: ids are assigned on
//! creation, a comment or check run created here is found again by
//! [`GitHub::find_comment_by_marker`] / [`GitHub::find_check_run`], and
//! editing an unknown id is a 404. Annotations are recorded in one body, not
//! split into batches of 50 (that is [`super::GitHubClient`]'s job).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use async_trait::async_trait;
use serde_json::Value;

use super::{
    CheckRunId, CheckRunUpdate, CommentId, DeliveryPage, GitHub, GitHubError, HookDelivery,
    InstallationId, NewCheckRun, Permission, Reaction, RepoName,
};

/// How many effects a dry-run recorder keeps (the oldest are dropped).
pub const DRY_RUN_KEPT_EFFECTS: usize = 10_000;

/// One effect taskmaster performed (or, in dry run, would have performed).
/// Bodies are the JSON GitHub would have received.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    CreateCheckRun {
        repo: String,
        id: CheckRunId,
        body: Value,
    },
    UpdateCheckRun {
        repo: String,
        id: CheckRunId,
        body: Value,
    },
    CreateComment {
        repo: String,
        number: u64,
        id: CommentId,
        body: String,
    },
    UpdateComment {
        repo: String,
        id: CommentId,
        body: String,
    },
    AddReaction {
        repo: String,
        comment: CommentId,
        content: &'static str,
    },
    Redeliver {
        delivery_id: u64,
    },
}

#[derive(Debug)]
struct FakeComment {
    id: CommentId,
    repo: String,
    number: u64,
    body: String,
}

#[derive(Debug)]
struct FakeCheckRun {
    id: CheckRunId,
    repo: String,
    head_sha: String,
    name: String,
    external_id: Option<String>,
}

#[derive(Debug, Default)]
struct State {
    effects: Vec<Effect>,
    next_id: u64,
    comments: Vec<FakeComment>,
    check_runs: Vec<FakeCheckRun>,
    permissions: HashMap<String, Permission>,
    files: HashMap<(String, String), String>,
    deliveries: Vec<HookDelivery>,
    failures: VecDeque<GitHubError>,
}

/// An in-memory GitHub; see the module docs.
#[derive(Debug, Default)]
pub struct RecordingGitHub {
    state: Mutex<State>,
    dry_run: bool,
}

impl RecordingGitHub {
    /// A fake for tests: records quietly.
    pub fn new() -> Self {
        Self::default()
    }

    /// A recorder for dry run: logs every effect it records at `info`.
    pub fn dry_run() -> Self {
        Self {
            dry_run: true,
            ..Self::default()
        }
    }

    /// Every effect so far, in order.
    pub fn effects(&self) -> Vec<Effect> {
        self.lock().effects.clone()
    }

    /// The current bodies of the comments on `repo` `number`, oldest first.
    pub fn comments(&self, repo: &RepoName, number: u64) -> Vec<String> {
        let repo = repo.to_string();
        self.lock()
            .comments
            .iter()
            .filter(|c| c.repo == repo && c.number == number)
            .map(|c| c.body.clone())
            .collect()
    }

    /// How many check runs exist on `repo`.
    pub fn check_run_count(&self, repo: &RepoName) -> usize {
        let repo = repo.to_string();
        self.lock()
            .check_runs
            .iter()
            .filter(|c| c.repo == repo)
            .count()
    }

    /// Sets what [`GitHub::collaborator_permission`] answers for `username`
    /// (default [`Permission::None`]).
    pub fn set_permission(&self, username: &str, permission: Permission) {
        self.lock()
            .permissions
            .insert(username.to_ascii_lowercase(), permission);
    }

    /// Sets a file [`GitHub::file_contents`] will return.
    pub fn set_file(&self, repo: &RepoName, path: &str, text: &str) {
        self.lock()
            .files
            .insert((repo.to_string(), path.to_owned()), text.to_owned());
    }

    /// Sets the deliveries [`GitHub::list_hook_deliveries`] lists (one page).
    pub fn set_deliveries(&self, deliveries: Vec<HookDelivery>) {
        self.lock().deliveries = deliveries;
    }

    /// Makes the next call (of any method) fail with `error`; queued errors
    /// are returned one per call, in order.
    pub fn fail_next(&self, error: GitHubError) {
        self.lock().failures.push_back(error);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("fake GitHub lock")
    }

    fn start(&self) -> Result<std::sync::MutexGuard<'_, State>, GitHubError> {
        let mut state = self.lock();
        match state.failures.pop_front() {
            Some(e) => Err(e),
            None => Ok(state),
        }
    }

    fn record(&self, state: &mut State, effect: Effect) {
        if self.dry_run {
            tracing::info!(?effect, "dry run: GitHub effect recorded, not sent");
            // A long-running dry run keeps only the latest effects in memory.
            if state.effects.len() >= DRY_RUN_KEPT_EFFECTS {
                state.effects.remove(0);
            }
        }
        state.effects.push(effect);
    }
}

fn not_found(method: &str, path: String) -> GitHubError {
    GitHubError::Api {
        status: 404,
        method: method.into(),
        path,
        message: "Not Found".into(),
    }
}

fn json<T: serde::Serialize>(value: &T) -> Value {
    serde_json::to_value(value).unwrap_or(Value::Null)
}

#[async_trait]
impl GitHub for RecordingGitHub {
    fn is_dry_run(&self) -> bool {
        self.dry_run
    }

    async fn create_check_run(
        &self,
        _installation: InstallationId,
        repo: &RepoName,
        check_run: &NewCheckRun,
    ) -> Result<CheckRunId, GitHubError> {
        let mut state = self.start()?;
        state.next_id += 1;
        let id = CheckRunId(state.next_id);
        state.check_runs.push(FakeCheckRun {
            id,
            repo: repo.to_string(),
            head_sha: check_run.head_sha.clone(),
            name: check_run.name.clone(),
            external_id: check_run.fields.external_id.clone(),
        });
        let effect = Effect::CreateCheckRun {
            repo: repo.to_string(),
            id,
            body: json(check_run),
        };
        self.record(&mut state, effect);
        Ok(id)
    }

    async fn find_check_run(
        &self,
        _installation: InstallationId,
        repo: &RepoName,
        head_sha: &str,
        name: &str,
        external_id: &str,
    ) -> Result<Option<CheckRunId>, GitHubError> {
        let state = self.start()?;
        let repo = repo.to_string();
        Ok(state
            .check_runs
            .iter()
            .find(|c| {
                c.repo == repo
                    && c.head_sha == head_sha
                    && c.name == name
                    && c.external_id.as_deref() == Some(external_id)
            })
            .map(|c| c.id))
    }

    async fn update_check_run(
        &self,
        _installation: InstallationId,
        repo: &RepoName,
        id: CheckRunId,
        update: &CheckRunUpdate,
    ) -> Result<(), GitHubError> {
        let mut state = self.start()?;
        if !state.check_runs.iter().any(|c| c.id == id) {
            return Err(not_found(
                "PATCH",
                format!("/repos/{repo}/check-runs/{}", id.0),
            ));
        }
        let effect = Effect::UpdateCheckRun {
            repo: repo.to_string(),
            id,
            body: json(update),
        };
        self.record(&mut state, effect);
        Ok(())
    }

    async fn create_comment(
        &self,
        _installation: InstallationId,
        repo: &RepoName,
        number: u64,
        body: &str,
    ) -> Result<CommentId, GitHubError> {
        let mut state = self.start()?;
        state.next_id += 1;
        let id = CommentId(state.next_id);
        state.comments.push(FakeComment {
            id,
            repo: repo.to_string(),
            number,
            body: body.to_owned(),
        });
        let effect = Effect::CreateComment {
            repo: repo.to_string(),
            number,
            id,
            body: body.to_owned(),
        };
        self.record(&mut state, effect);
        Ok(id)
    }

    async fn update_comment(
        &self,
        _installation: InstallationId,
        repo: &RepoName,
        id: CommentId,
        body: &str,
    ) -> Result<(), GitHubError> {
        let mut state = self.start()?;
        let Some(comment) = state.comments.iter_mut().find(|c| c.id == id) else {
            return Err(not_found(
                "PATCH",
                format!("/repos/{repo}/issues/comments/{}", id.0),
            ));
        };
        comment.body = body.to_owned();
        let effect = Effect::UpdateComment {
            repo: repo.to_string(),
            id,
            body: body.to_owned(),
        };
        self.record(&mut state, effect);
        Ok(())
    }

    async fn find_comment_by_marker(
        &self,
        _installation: InstallationId,
        repo: &RepoName,
        number: u64,
        marker: &str,
    ) -> Result<Option<CommentId>, GitHubError> {
        let state = self.start()?;
        let repo = repo.to_string();
        Ok(state
            .comments
            .iter()
            .find(|c| c.repo == repo && c.number == number && c.body.starts_with(marker))
            .map(|c| c.id))
    }

    async fn add_reaction(
        &self,
        _installation: InstallationId,
        repo: &RepoName,
        comment: CommentId,
        reaction: Reaction,
    ) -> Result<(), GitHubError> {
        let mut state = self.start()?;
        let effect = Effect::AddReaction {
            repo: repo.to_string(),
            comment,
            content: reaction.as_str(),
        };
        self.record(&mut state, effect);
        Ok(())
    }

    async fn collaborator_permission(
        &self,
        _installation: InstallationId,
        _repo: &RepoName,
        username: &str,
    ) -> Result<Permission, GitHubError> {
        let state = self.start()?;
        Ok(state
            .permissions
            .get(&username.to_ascii_lowercase())
            .copied()
            .unwrap_or(Permission::None))
    }

    async fn file_contents(
        &self,
        _installation: InstallationId,
        repo: &RepoName,
        path: &str,
        _git_ref: Option<&str>,
    ) -> Result<Option<String>, GitHubError> {
        let state = self.start()?;
        Ok(state
            .files
            .get(&(repo.to_string(), path.to_owned()))
            .cloned())
    }

    async fn list_hook_deliveries(
        &self,
        _cursor: Option<&str>,
    ) -> Result<DeliveryPage, GitHubError> {
        let state = self.start()?;
        Ok(DeliveryPage {
            deliveries: state.deliveries.clone(),
            next_cursor: None,
        })
    }

    async fn redeliver(&self, delivery_id: u64) -> Result<(), GitHubError> {
        let mut state = self.start()?;
        self.record(&mut state, Effect::Redeliver { delivery_id });
        Ok(())
    }
}
