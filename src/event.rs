//! Typed events: the meaning of a stored delivery.
//!
//! The inbox keeps each delivery's raw bytes exactly as GitHub signed them;
//! this module turns `(X-GitHub-Event, payload)` into an [`Event`] that the
//! router, the command parser and the engine can match on without touching
//! JSON. Only the fields taskmaster uses are read (serde skips the rest), so a
//! payload that grows new fields keeps parsing, and a payload that lacks a
//! field we *need* fails with an error naming the event and the field instead
//! of panicking later.
//!
//! Payload shapes: <https://docs.github.com/en/webhooks/webhook-events-and-payloads>.

use serde::{Deserialize, Serialize};

use crate::github::RepoName;
use crate::ids::InstallationId;

/// A webhook delivery that could not be understood as its event type.
///
/// Permanent: the same bytes fail the same way every time, so the dispatcher
/// should mark the delivery failed rather than retry it.
#[derive(Debug, thiserror::Error)]
#[error(
    "could not read the `{event}` payload: {source}; the delivery is kept in the inbox for inspection"
)]
pub struct EventError {
    /// The `X-GitHub-Event` name.
    pub event: String,
    /// serde_json's description, with the line and column in the payload.
    #[source]
    pub source: serde_json::Error,
}

/// A GitHub account: a user, an organization or a bot (an App acting as itself).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    /// The login, e.g. `octocat` or `dependabot[bot]`. Logins change: key users by [`Actor::id`].
    pub login: String,
    /// The numeric account id (stable).
    pub id: i64,
    /// `User`, `Bot` or `Organization`.
    #[serde(rename = "type", default)]
    pub kind: String,
}

impl Actor {
    /// True for App and bot accounts (`type: Bot`, or a login ending in `[bot]`).
    pub fn is_bot(&self) -> bool {
        self.kind.eq_ignore_ascii_case("bot") || self.login.ends_with("[bot]")
    }
}

/// A label on an issue or pull request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Label {
    /// The label's name as shown on GitHub (case preserved).
    pub name: String,
}

/// The repository a delivery is about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Repository {
    /// The numeric repository id (stable across renames and transfers; keys
    /// the repository's mirror). `0` when a payload leaves it out.
    #[serde(default)]
    pub id: i64,
    /// `owner/name`, checked when the payload is parsed.
    pub full_name: RepoName,
    /// The default branch (e.g. `main`), when sent.
    #[serde(default)]
    pub default_branch: Option<String>,
    /// True when the repository is a fork of another.
    #[serde(default)]
    pub fork: bool,
}

/// The installation a delivery came through (absent on some account-level events).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstallationRef {
    /// The installation id, used to mint installation tokens.
    pub id: InstallationId,
}

/// Fields every event of interest carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// Who caused the event.
    pub sender: Option<Actor>,
    /// The repository, for repository events.
    #[serde(default)]
    pub repository: Option<Repository>,
    /// The installation, for App deliveries.
    #[serde(default)]
    pub installation: Option<InstallationRef>,
}

/// One end of a pull request (`base` or `head`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BranchRef {
    /// The branch name, e.g. `main` or `hotfix/login`.
    #[serde(rename = "ref")]
    pub branch: String,
    /// The commit SHA (40 hex characters).
    pub sha: String,
    /// The repository holding the branch; `None` when a fork was deleted.
    #[serde(default)]
    pub repo: Option<Repository>,
}

/// The pull request inside a `pull_request` event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PullRequest {
    /// The PR number in its repository.
    pub number: u64,
    /// Title: untrusted user text.
    #[serde(default)]
    pub title: String,
    /// Body (markdown): untrusted user text; GitHub sends `null` for an empty body.
    #[serde(default)]
    pub body: Option<String>,
    /// True while the PR is a draft.
    #[serde(default)]
    pub draft: bool,
    /// `open` or `closed`.
    #[serde(default)]
    pub state: String,
    /// Labels currently on the PR.
    #[serde(default)]
    pub labels: Vec<Label>,
    /// The branch the PR merges into.
    pub base: BranchRef,
    /// The branch with the changes.
    pub head: BranchRef,
    /// The PR's author.
    pub user: Actor,
    /// `OWNER`, `MEMBER`, `COLLABORATOR`, `CONTRIBUTOR`, `FIRST_TIME_CONTRIBUTOR`, `NONE`, …
    /// A cheap pre-filter only: private org members show as `CONTRIBUTOR`.
    #[serde(default)]
    pub author_association: String,
}

impl PullRequest {
    /// True when the head branch lives in another repository than the base (a fork PR).
    ///
    /// Fork PRs must never run agents with secrets (GITHUB.md, item 11).
    pub fn is_fork(&self) -> bool {
        match (&self.head.repo, &self.base.repo) {
            (Some(head), Some(base)) => head.full_name != base.full_name,
            // A deleted fork: treat as a fork, the safe side.
            (None, _) => true,
            (Some(head), None) => head.fork,
        }
    }

    /// The full name of the head repository, when it still exists.
    pub fn head_repo_full_name(&self) -> Option<&RepoName> {
        self.head.repo.as_ref().map(|r| &r.full_name)
    }
}

/// A `pull_request` event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PullRequestEvent {
    /// `opened`, `synchronize`, `labeled`, `ready_for_review`, …
    pub action: String,
    /// The pull request as it is after the action.
    pub pull_request: PullRequest,
    /// For `labeled` / `unlabeled`: the label added or removed.
    #[serde(default)]
    pub label: Option<Label>,
    /// Sender, repository, installation.
    #[serde(flatten)]
    pub envelope: Envelope,
}

/// The issue inside an `issues` or `issue_comment` event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Issue {
    /// The issue (or PR) number.
    pub number: u64,
    /// Title: untrusted user text.
    #[serde(default)]
    pub title: String,
    /// Body: untrusted user text; `null` when empty.
    #[serde(default)]
    pub body: Option<String>,
    /// Labels currently on the issue.
    #[serde(default)]
    pub labels: Vec<Label>,
    /// `open` or `closed`.
    #[serde(default)]
    pub state: String,
    /// The author.
    pub user: Actor,
    /// See [`PullRequest::author_association`].
    #[serde(default)]
    pub author_association: String,
    /// Present (with links) when this "issue" is a pull request.
    #[serde(default)]
    pub pull_request: Option<serde_json::Value>,
}

impl Issue {
    /// True when the issue is the conversation of a pull request.
    pub fn is_pull_request(&self) -> bool {
        self.pull_request.is_some()
    }
}

/// An `issues` event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssuesEvent {
    /// `opened`, `labeled`, `edited`, `closed`, …
    pub action: String,
    /// The issue as it is after the action.
    pub issue: Issue,
    /// For `labeled` / `unlabeled`: the label added or removed.
    #[serde(default)]
    pub label: Option<Label>,
    /// Sender, repository, installation.
    #[serde(flatten)]
    pub envelope: Envelope,
}

/// A comment on an issue or pull-request conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Comment {
    /// The comment id (for reactions and edits).
    pub id: i64,
    /// Markdown body: untrusted user text.
    #[serde(default)]
    pub body: String,
    /// The comment's author.
    pub user: Actor,
    /// See [`PullRequest::author_association`].
    #[serde(default)]
    pub author_association: String,
    /// When it was written (RFC 3339, GitHub's clock).
    #[serde(default)]
    pub created_at: Option<String>,
}

/// An `issue_comment` event (PR conversation comments are issue comments).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssueCommentEvent {
    /// `created`, `edited` or `deleted`. Only `created` may act on commands.
    pub action: String,
    /// The issue or PR commented on.
    pub issue: Issue,
    /// The comment.
    pub comment: Comment,
    /// Sender, repository, installation.
    #[serde(flatten)]
    pub envelope: Envelope,
}

/// The App that owns a check suite or run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppRef {
    /// The GitHub App id.
    pub id: i64,
}

/// A pull request referenced from a check run or suite (`[]` on fork PRs: map by head SHA).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PullRequestRef {
    /// The PR number.
    pub number: u64,
}

/// A check run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckRun {
    /// The check run id.
    pub id: i64,
    /// The check run's name.
    #[serde(default)]
    pub name: String,
    /// The commit the run is attached to.
    pub head_sha: String,
    /// What we set as `external_id` (taskmaster puts the run id there).
    #[serde(default)]
    pub external_id: Option<String>,
    /// PRs in this repository with `head_sha` as head.
    #[serde(default)]
    pub pull_requests: Vec<PullRequestRef>,
    /// The App that created the run.
    #[serde(default)]
    pub app: Option<AppRef>,
}

/// A button press on one of our check runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestedAction {
    /// The `identifier` we gave the button (≤ 20 characters).
    pub identifier: String,
}

/// A `check_run` event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckRunEvent {
    /// `created`, `completed`, `rerequested`, `requested_action`.
    pub action: String,
    /// The check run.
    pub check_run: CheckRun,
    /// For `requested_action`: which button.
    #[serde(default)]
    pub requested_action: Option<RequestedAction>,
    /// Sender, repository, installation.
    #[serde(flatten)]
    pub envelope: Envelope,
}

impl CheckRunEvent {
    /// The App id that owns the check run, when sent.
    pub fn app_id(&self) -> Option<i64> {
        self.check_run.app.as_ref().map(|a| a.id)
    }
}

/// A check suite.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckSuite {
    /// The suite id.
    pub id: i64,
    /// The commit.
    pub head_sha: String,
    /// The branch, when known.
    #[serde(default)]
    pub head_branch: Option<String>,
    /// PRs with this head; `[]` on fork PRs.
    #[serde(default)]
    pub pull_requests: Vec<PullRequestRef>,
    /// The App the suite belongs to.
    #[serde(default)]
    pub app: Option<AppRef>,
}

/// A `check_suite` event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckSuiteEvent {
    /// `requested`, `rerequested`, `completed`.
    pub action: String,
    /// The suite.
    pub check_suite: CheckSuite,
    /// Sender, repository, installation.
    #[serde(flatten)]
    pub envelope: Envelope,
}

/// The installation object in installation events.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Installation {
    /// The installation id.
    pub id: InstallationId,
    /// The App id.
    #[serde(default)]
    pub app_id: Option<i64>,
    /// The account the App is installed on.
    #[serde(default)]
    pub account: Option<Actor>,
}

/// A repository listed in an installation event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepositoryRef {
    /// `owner/name`, checked when the payload is parsed.
    pub full_name: RepoName,
}

/// An `installation` event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstallationEvent {
    /// `created`, `deleted`, `suspend`, `unsuspend`, `new_permissions_accepted`.
    pub action: String,
    /// The installation.
    pub installation: Installation,
    /// For `created`: the repositories granted.
    #[serde(default)]
    pub repositories: Vec<RepositoryRef>,
    /// Who acted.
    pub sender: Option<Actor>,
}

/// An `installation_repositories` event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstallationRepositoriesEvent {
    /// `added` or `removed`.
    pub action: String,
    /// The installation.
    pub installation: Installation,
    /// Repositories added to the installation.
    #[serde(default)]
    pub repositories_added: Vec<RepositoryRef>,
    /// Repositories removed from it.
    #[serde(default)]
    pub repositories_removed: Vec<RepositoryRef>,
    /// Who acted.
    pub sender: Option<Actor>,
}

/// The files one pushed commit touched (paths relative to the repository root).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushCommit {
    #[serde(default)]
    pub added: Vec<String>,
    #[serde(default)]
    pub modified: Vec<String>,
    #[serde(default)]
    pub removed: Vec<String>,
}

/// A `push` event: read only to notice changes of `.github/taskmaster.yml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushEvent {
    /// The full ref pushed, e.g. `refs/heads/main`.
    #[serde(rename = "ref")]
    pub git_ref: String,
    /// The pushed commits (GitHub lists at most 2,048; `[]` for a deleted ref).
    #[serde(default)]
    pub commits: Vec<PushCommit>,
    /// Sender, repository, installation.
    #[serde(flatten)]
    pub envelope: Envelope,
}

impl PushEvent {
    /// True when the push is to the repository's default branch and one of
    /// its commits added, changed or removed `path`. With more than 2,048
    /// commits GitHub truncates the list, so a push of that many counts as
    /// touching it.
    pub fn touches_default_branch_file(&self, path: &str) -> bool {
        let Some(default) = self
            .envelope
            .repository
            .as_ref()
            .and_then(|r| r.default_branch.as_deref())
        else {
            return false;
        };
        if self.git_ref != format!("refs/heads/{default}") {
            return false;
        }
        self.commits.len() >= 2048
            || self.commits.iter().any(|c| {
                c.added
                    .iter()
                    .chain(&c.modified)
                    .chain(&c.removed)
                    .any(|p| p == path)
            })
    }
}

/// The typed meaning of one delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// `pull_request`.
    PullRequest(Box<PullRequestEvent>),
    /// `issues`.
    Issues(Box<IssuesEvent>),
    /// `issue_comment`.
    IssueComment(Box<IssueCommentEvent>),
    /// `check_run`.
    CheckRun(Box<CheckRunEvent>),
    /// `check_suite`.
    CheckSuite(Box<CheckSuiteEvent>),
    /// `installation`.
    Installation(Box<InstallationEvent>),
    /// `installation_repositories`.
    InstallationRepositories(Box<InstallationRepositoriesEvent>),
    /// `push`.
    Push(Box<PushEvent>),
    /// `ping`: sent when the hook is created.
    Ping,
    /// Any other event: kept by name, never acted on.
    Other {
        /// The `X-GitHub-Event` name.
        name: String,
        /// The payload's `action`, when it has one.
        action: Option<String>,
    },
}

impl Event {
    /// Parses a delivery: `event` is the `X-GitHub-Event` header, `payload` the raw body.
    ///
    /// Unknown event names become [`Event::Other`] (never an error).
    ///
    /// # Errors
    /// [`EventError`] when the payload is not JSON or lacks a field the typed
    /// event needs; the message carries serde's line and column.
    pub fn parse(event: &str, payload: &[u8]) -> Result<Event, EventError> {
        fn de<T: serde::de::DeserializeOwned>(
            event: &str,
            payload: &[u8],
        ) -> Result<T, EventError> {
            serde_json::from_slice(payload).map_err(|source| EventError {
                event: event.to_owned(),
                source,
            })
        }
        Ok(match event {
            "pull_request" => Event::PullRequest(Box::new(de(event, payload)?)),
            "issues" => Event::Issues(Box::new(de(event, payload)?)),
            "issue_comment" => Event::IssueComment(Box::new(de(event, payload)?)),
            "check_run" => Event::CheckRun(Box::new(de(event, payload)?)),
            "check_suite" => Event::CheckSuite(Box::new(de(event, payload)?)),
            "installation" => Event::Installation(Box::new(de(event, payload)?)),
            "installation_repositories" => {
                Event::InstallationRepositories(Box::new(de(event, payload)?))
            }
            "push" => Event::Push(Box::new(de(event, payload)?)),
            "ping" => Event::Ping,
            other => {
                #[derive(Deserialize)]
                struct ActionOnly {
                    action: Option<String>,
                }
                let action = serde_json::from_slice::<ActionOnly>(payload)
                    .ok()
                    .and_then(|a| a.action);
                Event::Other {
                    name: other.to_owned(),
                    action,
                }
            }
        })
    }

    /// The event name (`X-GitHub-Event`), e.g. `pull_request`.
    pub fn name(&self) -> &str {
        match self {
            Event::PullRequest(_) => "pull_request",
            Event::Issues(_) => "issues",
            Event::IssueComment(_) => "issue_comment",
            Event::CheckRun(_) => "check_run",
            Event::CheckSuite(_) => "check_suite",
            Event::Installation(_) => "installation",
            Event::InstallationRepositories(_) => "installation_repositories",
            Event::Push(_) => "push",
            Event::Ping => "ping",
            Event::Other { name, .. } => name,
        }
    }

    /// The payload's `action`, e.g. `opened`; `None` for events without one.
    pub fn action(&self) -> Option<&str> {
        match self {
            Event::PullRequest(e) => Some(&e.action),
            Event::Issues(e) => Some(&e.action),
            Event::IssueComment(e) => Some(&e.action),
            Event::CheckRun(e) => Some(&e.action),
            Event::CheckSuite(e) => Some(&e.action),
            Event::Installation(e) => Some(&e.action),
            Event::InstallationRepositories(e) => Some(&e.action),
            Event::Push(_) | Event::Ping => None,
            Event::Other { action, .. } => action.as_deref(),
        }
    }

    /// Who caused the event, when the payload says.
    pub fn sender(&self) -> Option<&Actor> {
        match self {
            Event::PullRequest(e) => e.envelope.sender.as_ref(),
            Event::Issues(e) => e.envelope.sender.as_ref(),
            Event::IssueComment(e) => e.envelope.sender.as_ref(),
            Event::CheckRun(e) => e.envelope.sender.as_ref(),
            Event::CheckSuite(e) => e.envelope.sender.as_ref(),
            Event::Installation(e) => e.sender.as_ref(),
            Event::InstallationRepositories(e) => e.sender.as_ref(),
            Event::Push(e) => e.envelope.sender.as_ref(),
            Event::Ping | Event::Other { .. } => None,
        }
    }

    /// The repository the event is about, for repository events.
    pub fn repository(&self) -> Option<&Repository> {
        match self {
            Event::PullRequest(e) => e.envelope.repository.as_ref(),
            Event::Issues(e) => e.envelope.repository.as_ref(),
            Event::IssueComment(e) => e.envelope.repository.as_ref(),
            Event::CheckRun(e) => e.envelope.repository.as_ref(),
            Event::CheckSuite(e) => e.envelope.repository.as_ref(),
            Event::Push(e) => e.envelope.repository.as_ref(),
            _ => None,
        }
    }

    /// The installation the delivery came through, when the payload says.
    pub fn installation_id(&self) -> Option<InstallationId> {
        let envelope = match self {
            Event::PullRequest(e) => &e.envelope,
            Event::Issues(e) => &e.envelope,
            Event::IssueComment(e) => &e.envelope,
            Event::CheckRun(e) => &e.envelope,
            Event::CheckSuite(e) => &e.envelope,
            Event::Push(e) => &e.envelope,
            Event::Installation(e) => return Some(e.installation.id),
            Event::InstallationRepositories(e) => return Some(e.installation.id),
            Event::Ping | Event::Other { .. } => return None,
        };
        envelope.installation.map(|i| i.id)
    }

    /// `name.action` (e.g. `pull_request.opened`), or just the name.
    pub fn qualified_name(&self) -> String {
        match self.action() {
            Some(a) => format!("{}.{a}", self.name()),
            None => self.name().to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_events_are_other_not_errors() {
        let e = Event::parse("gollum", br#"{"ref":"refs/heads/main"}"#).unwrap();
        assert_eq!(
            e,
            Event::Other {
                name: "gollum".into(),
                action: None
            }
        );
        let e = Event::parse("star", br#"{"action":"created"}"#).unwrap();
        assert_eq!(e.qualified_name(), "star.created");
    }

    #[test]
    fn missing_fields_are_clear_errors() {
        let err = Event::parse("pull_request", br#"{"action":"opened"}"#).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("`pull_request` payload"), "{text}");
        assert!(text.contains("missing field `pull_request`"), "{text}");
        let err = Event::parse("issues", b"not json").unwrap_err();
        assert!(err.to_string().contains("line 1"), "{err}");
    }

    #[test]
    fn bots_are_recognised_by_type_or_login() {
        let bot = Actor {
            login: "renovate[bot]".into(),
            id: 1,
            kind: "User".into(),
        };
        assert!(bot.is_bot());
        let app = Actor {
            login: "x".into(),
            id: 2,
            kind: "Bot".into(),
        };
        assert!(app.is_bot());
        let user = Actor {
            login: "octocat".into(),
            id: 3,
            kind: "User".into(),
        };
        assert!(!user.is_bot());
    }
}
