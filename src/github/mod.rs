//! The GitHub-facing layer: App authentication, a rate-limit-aware API
//! client, the shapes of the bodies GitHub accepts, and webhook redelivery.
//!
//! Everything taskmaster *does* on GitHub goes through the small [`GitHub`]
//! trait below. The engine and the outbox see only that trait, so their tests
//! run against a fake, and the one production implementation
//! ([`GitHubClient`]) can concentrate on what GitHub demands:
//!
//! * **authentication** ([`auth`]): an App JWT for `/app/*` endpoints and one
//!   cached installation token per installation, refreshed before it expires
//!   and once more when GitHub answers 401;
//! * **rate limits** ([`ratelimit`]): `retry-after`, `x-ratelimit-reset`,
//!   secondary limits, 5xx and the brief 404 after a webhook, in exactly one
//!   retry loop, and content-creating requests paced per installation;
//! * **limits on bodies** ([`checks`]): check-run output fields are cut to
//!   65,535 bytes, comments to 65,536 characters, annotations sent 50 at a
//!   time, action buttons checked against their length limits;
//! * **idempotence** ([`upsert_check_run`], [`upsert_sticky_comment`]): one
//!   check run per run (found again by `external_id`), one sticky comment per
//!   PR or issue (found again by its hidden marker), even across restarts;
//! * **redelivery** ([`redelivery`]) of webhooks missed while down, and
//!   **re-runs** from GitHub's UI ([`rerun`]).
//!
//! [`RecordingGitHub`] is the in-memory implementation for tests and dry run.
//!
//! Rendering a run into those bodies is [`crate::report`]'s job; deciding
//! *when* to send them is the outbox's.

pub mod auth;
pub mod checks;
pub mod client;
pub mod error;
pub mod fake;
pub mod git_data;
pub mod ratelimit;
pub mod redelivery;
pub mod rerun;
pub mod tokens;

use std::fmt;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Deserialize;

pub use auth::{AppCredentials, GitHubSettings};
pub use checks::{
    Annotation, AnnotationLevel, CheckAction, CheckConclusion, CheckOutput, CheckRunUpdate,
    CheckStatus, NewCheckRun,
};
pub use client::GitHubClient;
pub use error::GitHubError;
pub use fake::{Effect, RecordingGitHub};
pub use git_data::{
    NewPullRequest, NewReview, PullRequestHead, PullRequestRef, ReviewComment, TreeEntry,
    WriteAccess,
};
pub use ratelimit::RetryPolicy;

pub use crate::ids::InstallationId;

/// The id of a check run (`check_run.id`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(transparent)]
pub struct CheckRunId(pub u64);

/// The id of an issue or pull-request conversation comment (`comment.id`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(transparent)]
pub struct CommentId(pub u64);

/// A repository as `owner/name`, the form every REST path uses.
///
/// Both halves are checked to be non-empty and free of `/`, `?`, `#` and
/// whitespace, so a name taken from a payload can be put into a request path
/// without escaping.
///
/// It is kept as its `owner/name` text, so it binds to SQL and reads as a
/// `&str` ([`RepoName::as_str`], `Deref`) without a copy; it orders by
/// owner, then name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RepoName {
    /// `owner/name`.
    full: String,
    /// Where the `/` is in `full`.
    slash: usize,
}

impl RepoName {
    /// Builds a name from its two halves.
    ///
    /// # Errors
    /// [`GitHubError::InvalidInput`] when either half is empty or contains a
    /// character that cannot appear in a GitHub owner or repository name.
    pub fn new(owner: &str, name: &str) -> Result<Self, GitHubError> {
        let ok = |s: &str| {
            !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        };
        if ok(owner) && ok(name) {
            Ok(Self {
                full: format!("{owner}/{name}"),
                slash: owner.len(),
            })
        } else {
            Err(GitHubError::InvalidInput(format!(
                "`{owner}/{name}` is not a repository name"
            )))
        }
    }

    /// Parses `owner/name` (a payload's `repository.full_name`).
    ///
    /// # Errors
    /// [`GitHubError::InvalidInput`] when there is not exactly one `/` or a
    /// half is invalid (see [`RepoName::new`]).
    pub fn parse(full_name: &str) -> Result<Self, GitHubError> {
        match full_name.split_once('/') {
            Some((owner, name)) => Self::new(owner, name),
            None => Err(GitHubError::InvalidInput(format!(
                "`{full_name}` is not `owner/name`"
            ))),
        }
    }

    /// The owner (user or organisation) login.
    pub fn owner(&self) -> &str {
        &self.full[..self.slash]
    }

    /// The repository name without its owner.
    pub fn name(&self) -> &str {
        &self.full[self.slash + 1..]
    }

    /// `owner/name`.
    pub fn as_str(&self) -> &str {
        &self.full
    }
}

impl std::ops::Deref for RepoName {
    type Target = str;
    fn deref(&self) -> &str {
        &self.full
    }
}

/// Its `owner/name` text, without a copy.
impl From<RepoName> for String {
    fn from(repo: RepoName) -> String {
        repo.full
    }
}

impl Ord for RepoName {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.owner(), self.name()).cmp(&(other.owner(), other.name()))
    }
}

impl PartialOrd for RepoName {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for RepoName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.full)
    }
}

/// Binds as its `owner/name` text (SQLite).
impl rusqlite::ToSql for RepoName {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        Ok(rusqlite::types::ToSqlOutput::Borrowed(
            rusqlite::types::ValueRef::Text(self.full.as_bytes()),
        ))
    }
}

/// Binds as its `owner/name` text (PostgreSQL `TEXT`).
impl sqlx::Type<sqlx::Postgres> for RepoName {
    fn type_info() -> sqlx::postgres::PgTypeInfo {
        <str as sqlx::Type<sqlx::Postgres>>::type_info()
    }

    fn compatible(ty: &sqlx::postgres::PgTypeInfo) -> bool {
        <str as sqlx::Type<sqlx::Postgres>>::compatible(ty)
    }
}

impl<'q> sqlx::Encode<'q, sqlx::Postgres> for RepoName {
    fn encode_by_ref(
        &self,
        buf: &mut sqlx::postgres::PgArgumentBuffer,
    ) -> Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
        <&str as sqlx::Encode<'q, sqlx::Postgres>>::encode_by_ref(&self.full.as_str(), buf)
    }
}

impl std::str::FromStr for RepoName {
    type Err = GitHubError;
    fn from_str(s: &str) -> Result<Self, GitHubError> {
        Self::parse(s)
    }
}

impl PartialEq<str> for RepoName {
    /// Whether `full_name` is this repository's `owner/name`.
    fn eq(&self, full_name: &str) -> bool {
        self.full == full_name
    }
}

impl PartialEq<&str> for RepoName {
    fn eq(&self, full_name: &&str) -> bool {
        self == *full_name
    }
}

/// As its `owner/name` text, the form of a payload's `repository.full_name`.
impl serde::Serialize for RepoName {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// From `owner/name` text, checked as [`RepoName::parse`] checks it: a
/// payload whose `repository.full_name` is not a repository name does not
/// parse.
impl<'de> Deserialize<'de> for RepoName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = std::borrow::Cow::<'de, str>::deserialize(d)?;
        Self::parse(&text).map_err(|_| {
            serde::de::Error::custom(format!("`{text}` is not a repository name (`owner/name`)"))
        })
    }
}

/// A reaction on a comment.
///
/// Source: <https://docs.github.com/en/rest/reactions/reactions#create-reaction-for-an-issue-comment>
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reaction {
    PlusOne,
    MinusOne,
    Laugh,
    Confused,
    Heart,
    Hooray,
    Rocket,
    Eyes,
}

impl Reaction {
    /// The `content` value GitHub expects.
    pub fn as_str(self) -> &'static str {
        match self {
            Reaction::PlusOne => "+1",
            Reaction::MinusOne => "-1",
            Reaction::Laugh => "laugh",
            Reaction::Confused => "confused",
            Reaction::Heart => "heart",
            Reaction::Hooray => "hooray",
            Reaction::Rocket => "rocket",
            Reaction::Eyes => "eyes",
        }
    }
}

/// A user's permission on a repository, as
/// `GET /repos/{owner}/{repo}/collaborators/{username}/permission` reports it.
///
/// Ordered from least to most, so `perm >= Permission::Write` reads naturally.
///
/// Source: <https://docs.github.com/en/rest/collaborators/collaborators#get-repository-permissions-for-a-user>
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Permission {
    None,
    Read,
    Triage,
    Write,
    Maintain,
    Admin,
}

impl Permission {
    /// Parses GitHub's `permission` (or `role_name`) value; anything unknown
    /// is [`Permission::None`], the safe reading.
    pub fn parse(value: &str) -> Self {
        match value {
            "admin" => Permission::Admin,
            "maintain" => Permission::Maintain,
            "write" | "push" => Permission::Write,
            "triage" => Permission::Triage,
            "read" | "pull" => Permission::Read,
            _ => Permission::None,
        }
    }
}

/// One attempt to deliver a webhook, as `GET /app/hook/deliveries` lists it.
///
/// A redelivered webhook shows up as another item with the same `guid`
/// (and `redelivery: true`).
///
/// Source: <https://docs.github.com/en/rest/apps/webhooks#list-deliveries-for-an-app-webhook>
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct HookDelivery {
    /// The id of this attempt; the one to pass to a redelivery request.
    pub id: u64,
    /// The `X-GitHub-Delivery` value: the same for every attempt of one delivery.
    pub guid: String,
    /// When GitHub sent this attempt.
    pub delivered_at: DateTime<Utc>,
    /// Whether this attempt was itself a redelivery.
    #[serde(default)]
    pub redelivery: bool,
    /// The HTTP status code our endpoint answered (0 or absent when it never answered).
    #[serde(default)]
    pub status_code: u16,
    /// GitHub's summary of the outcome (`OK`, `Invalid HTTP Response: 503`, …).
    #[serde(default)]
    pub status: String,
    /// The `X-GitHub-Event` value.
    #[serde(default)]
    pub event: String,
    /// The payload's `action`, when it has one.
    #[serde(default)]
    pub action: Option<String>,
}

impl HookDelivery {
    /// Whether our endpoint accepted this attempt (answered 2xx).
    pub fn succeeded(&self) -> bool {
        (200..300).contains(&self.status_code)
    }
}

/// One page of [`HookDelivery`] items, newest first, with the cursor of the
/// next (older) page when there is one.
#[derive(Debug, Clone, Default)]
pub struct DeliveryPage {
    pub deliveries: Vec<HookDelivery>,
    /// The `cursor` query value for the next page, from the `Link` header.
    pub next_cursor: Option<String>,
}

/// The effects taskmaster performs on GitHub.
///
/// Every method is one logical effect; implementations do their own
/// authentication, rate limiting and retries, so callers (the outbox) must
/// not retry an `Err` immediately: an error is final for this attempt, and
/// [`GitHubError::is_transient`] says whether to try again later.
#[async_trait]
pub trait GitHub: Send + Sync {
    /// Creates a check run and returns its id. Annotations beyond 50 are sent
    /// in follow-up updates (GitHub appends them).
    ///
    /// Source: <https://docs.github.com/en/rest/checks/runs#create-a-check-run>
    async fn create_check_run(
        &self,
        installation: InstallationId,
        repo: &RepoName,
        check_run: &NewCheckRun,
    ) -> Result<CheckRunId, GitHubError>;

    /// Finds this app's check run named `name` on commit `head_sha` whose
    /// `external_id` is `external_id` (the run id), reading every page. This
    /// is how a restart between creating a check run and recording its id
    /// avoids creating a second one.
    ///
    /// Source: <https://docs.github.com/en/rest/checks/runs#list-check-runs-for-a-git-reference>
    async fn find_check_run(
        &self,
        installation: InstallationId,
        repo: &RepoName,
        head_sha: &str,
        name: &str,
        external_id: &str,
    ) -> Result<Option<CheckRunId>, GitHubError>;

    /// Updates a check run; annotations beyond 50 are sent in further updates.
    ///
    /// Source: <https://docs.github.com/en/rest/checks/runs#update-a-check-run>
    async fn update_check_run(
        &self,
        installation: InstallationId,
        repo: &RepoName,
        id: CheckRunId,
        update: &CheckRunUpdate,
    ) -> Result<(), GitHubError>;

    /// Posts a comment on an issue or pull request. `body` longer than
    /// 65,536 characters is truncated with a note.
    ///
    /// Source: <https://docs.github.com/en/rest/issues/comments#create-an-issue-comment>
    async fn create_comment(
        &self,
        installation: InstallationId,
        repo: &RepoName,
        number: u64,
        body: &str,
    ) -> Result<CommentId, GitHubError>;

    /// Replaces a comment's body (truncated like [`GitHub::create_comment`]).
    ///
    /// Source: <https://docs.github.com/en/rest/issues/comments#update-an-issue-comment>
    async fn update_comment(
        &self,
        installation: InstallationId,
        repo: &RepoName,
        id: CommentId,
        body: &str,
    ) -> Result<(), GitHubError>;

    /// Finds this app's comment on issue or PR `number` whose body starts
    /// with `marker` (a hidden HTML comment), reading every page of comments.
    ///
    /// Source: <https://docs.github.com/en/rest/issues/comments#list-issue-comments>
    async fn find_comment_by_marker(
        &self,
        installation: InstallationId,
        repo: &RepoName,
        number: u64,
        marker: &str,
    ) -> Result<Option<CommentId>, GitHubError>;

    /// Adds a reaction to a conversation comment (GitHub answers 200 when it
    /// already exists, so this is idempotent).
    ///
    /// Source: <https://docs.github.com/en/rest/reactions/reactions#create-reaction-for-an-issue-comment>
    async fn add_reaction(
        &self,
        installation: InstallationId,
        repo: &RepoName,
        comment: CommentId,
        reaction: Reaction,
    ) -> Result<(), GitHubError>;

    /// A user's permission on the repository (`none` for non-collaborators).
    ///
    /// Source: <https://docs.github.com/en/rest/collaborators/collaborators#get-repository-permissions-for-a-user>
    async fn collaborator_permission(
        &self,
        installation: InstallationId,
        repo: &RepoName,
        username: &str,
    ) -> Result<Permission, GitHubError>;

    /// The text of a file on the default branch (or `git_ref`), `None` when it
    /// does not exist. Used for `.github/taskmaster.yml`.
    ///
    /// Source: <https://docs.github.com/en/rest/repos/contents#get-repository-content>
    async fn file_contents(
        &self,
        installation: InstallationId,
        repo: &RepoName,
        path: &str,
        git_ref: Option<&str>,
    ) -> Result<Option<String>, GitHubError>;

    /// One page of the App's webhook deliveries, newest first (App JWT).
    /// `cursor` is `None` for the first page.
    ///
    /// Source: <https://docs.github.com/en/rest/apps/webhooks#list-deliveries-for-an-app-webhook>
    async fn list_hook_deliveries(&self, cursor: Option<&str>)
    -> Result<DeliveryPage, GitHubError>;

    /// Asks GitHub to send delivery attempt `delivery_id` again (App JWT).
    ///
    /// Source: <https://docs.github.com/en/rest/apps/webhooks#redeliver-a-delivery-for-an-app-webhook>
    async fn redeliver(&self, delivery_id: u64) -> Result<(), GitHubError>;

    /// An installation token narrowed to one repository and `permissions`
    /// (pairs such as `("contents", "read")`), for git to fetch or push
    /// with. It lives one hour; callers ask for a fresh one per use.
    ///
    /// Source: <https://docs.github.com/en/rest/apps/apps#create-an-installation-access-token-for-an-app>
    ///
    /// # Errors
    /// As any request; [`GitHubError::InvalidInput`] from implementations
    /// that cannot mint tokens (the dry-run recorder).
    async fn repository_token(
        &self,
        installation: InstallationId,
        repo: &RepoName,
        permissions: &[(&str, &str)],
    ) -> Result<secrecy::SecretString, GitHubError> {
        let _ = (installation, repo, permissions);
        Err(GitHubError::InvalidInput(
            "this GitHub client cannot mint installation tokens".into(),
        ))
    }

    /// Stores `content` as a blob and returns its SHA (sent base64-encoded).
    ///
    /// Source: <https://docs.github.com/en/rest/git/blobs#create-a-blob>
    async fn create_blob(
        &self,
        access: WriteAccess,
        repo: &RepoName,
        content: &[u8],
    ) -> Result<String, GitHubError> {
        let _ = (access, repo, content);
        Err(unsupported("create blobs"))
    }

    /// Creates a tree from `base_tree` with `entries` changed (an entry
    /// without a SHA deletes its path) and returns its SHA.
    ///
    /// Source: <https://docs.github.com/en/rest/git/trees#create-a-tree>
    async fn create_tree(
        &self,
        access: WriteAccess,
        repo: &RepoName,
        base_tree: &str,
        entries: &[TreeEntry],
    ) -> Result<String, GitHubError> {
        let _ = (access, repo, base_tree, entries);
        Err(unsupported("create trees"))
    }

    /// Creates a commit of `tree` on `parents`, authored by the App's bot
    /// (no author or committer is sent, so GitHub signs it), and returns
    /// its SHA.
    ///
    /// Source: <https://docs.github.com/en/rest/git/commits#create-a-commit>
    async fn create_commit(
        &self,
        access: WriteAccess,
        repo: &RepoName,
        message: &str,
        tree: &str,
        parents: &[String],
    ) -> Result<String, GitHubError> {
        let _ = (access, repo, message, tree, parents);
        Err(unsupported("create commits"))
    }

    /// The tree SHA of commit `sha`.
    ///
    /// Source: <https://docs.github.com/en/rest/git/commits#get-a-commit-object>
    async fn commit_tree(
        &self,
        access: WriteAccess,
        repo: &RepoName,
        sha: &str,
    ) -> Result<String, GitHubError> {
        let _ = (access, repo, sha);
        Err(unsupported("read commits"))
    }

    /// The commit branch `branch` points at, `None` when there is no such
    /// branch.
    ///
    /// Source: <https://docs.github.com/en/rest/git/refs#get-a-reference>
    async fn branch_sha(
        &self,
        access: WriteAccess,
        repo: &RepoName,
        branch: &str,
    ) -> Result<Option<String>, GitHubError> {
        let _ = (access, repo, branch);
        Err(unsupported("read refs"))
    }

    /// Creates branch `branch` at `sha`.
    ///
    /// # Errors
    /// GitHub's 422 when it exists.
    ///
    /// Source: <https://docs.github.com/en/rest/git/refs#create-a-reference>
    async fn create_branch(
        &self,
        access: WriteAccess,
        repo: &RepoName,
        branch: &str,
        sha: &str,
    ) -> Result<(), GitHubError> {
        let _ = (access, repo, branch, sha);
        Err(unsupported("create refs"))
    }

    /// Moves branch `branch` to `sha` with `force: false`.
    ///
    /// # Errors
    /// GitHub's 422 "Update is not a fast forward" when the branch moved
    /// meanwhile ([`git_data::is_not_fast_forward`]), or for a protected
    /// branch.
    ///
    /// Source: <https://docs.github.com/en/rest/git/refs#update-a-reference>
    async fn update_branch(
        &self,
        access: WriteAccess,
        repo: &RepoName,
        branch: &str,
        sha: &str,
    ) -> Result<(), GitHubError> {
        let _ = (access, repo, branch, sha);
        Err(unsupported("update refs"))
    }

    /// Whether branch `branch` is protected (`false` when it does not exist).
    ///
    /// Source: <https://docs.github.com/en/rest/branches/branches#get-a-branch>
    async fn branch_protected(
        &self,
        access: WriteAccess,
        repo: &RepoName,
        branch: &str,
    ) -> Result<bool, GitHubError> {
        let _ = (access, repo, branch);
        Err(unsupported("read branches"))
    }

    /// The pull request (open or closed) whose head is `branch` of this
    /// repository, if any: looked up before creating one, so a retry never
    /// opens two.
    ///
    /// Source: <https://docs.github.com/en/rest/pulls/pulls#list-pull-requests>
    async fn find_pull_request(
        &self,
        access: WriteAccess,
        repo: &RepoName,
        branch: &str,
    ) -> Result<Option<PullRequestRef>, GitHubError> {
        let _ = (access, repo, branch);
        Err(unsupported("list pull requests"))
    }

    /// A pull request's head and base as they are now.
    ///
    /// Source: <https://docs.github.com/en/rest/pulls/pulls#get-a-pull-request>
    async fn pull_request(
        &self,
        access: WriteAccess,
        repo: &RepoName,
        number: u64,
    ) -> Result<PullRequestHead, GitHubError> {
        let _ = (access, repo, number);
        Err(unsupported("read pull requests"))
    }

    /// The files of pull request `number` with their unified `patch`
    /// (hunks only, as GitHub sends it; absent for binary or huge files),
    /// as `(path, patch)`, reading every page (GitHub lists at most 3,000).
    ///
    /// Source: <https://docs.github.com/en/rest/pulls/pulls#list-pull-requests-files>
    async fn pull_request_files(
        &self,
        access: WriteAccess,
        repo: &RepoName,
        number: u64,
    ) -> Result<Vec<(String, String)>, GitHubError> {
        let _ = (access, repo, number);
        Err(unsupported("list pull request files"))
    }

    /// Opens a pull request.
    ///
    /// # Errors
    /// GitHub's 422 "Draft pull requests are not supported in this
    /// repository" ([`git_data::drafts_unsupported`]) on plans without
    /// drafts; the caller retries without `draft`.
    ///
    /// Source: <https://docs.github.com/en/rest/pulls/pulls#create-a-pull-request>
    async fn create_pull_request(
        &self,
        access: WriteAccess,
        repo: &RepoName,
        pull: &NewPullRequest,
    ) -> Result<PullRequestRef, GitHubError> {
        let _ = (access, repo, pull);
        Err(unsupported("open pull requests"))
    }

    /// This App's reviews on pull request `number` whose body starts with
    /// `marker`, oldest first, as `(id, body)`. Reviews by anyone else are
    /// left out, whatever their text.
    ///
    /// Source: <https://docs.github.com/en/rest/pulls/reviews#list-reviews-for-a-pull-request>
    async fn our_reviews(
        &self,
        access: WriteAccess,
        repo: &RepoName,
        number: u64,
        marker: &str,
    ) -> Result<Vec<(u64, String)>, GitHubError> {
        let _ = (access, repo, number, marker);
        Err(unsupported("list reviews"))
    }

    /// The id of this App's review on pull request `number` whose body
    /// starts with `marker`, if any (so a retry never submits two).
    async fn find_review(
        &self,
        access: WriteAccess,
        repo: &RepoName,
        number: u64,
        marker: &str,
    ) -> Result<Option<u64>, GitHubError> {
        Ok(self
            .our_reviews(access, repo, number, marker)
            .await?
            .first()
            .map(|(id, _)| *id))
    }

    /// The ids of review `review`'s inline comments.
    ///
    /// Source: <https://docs.github.com/en/rest/pulls/reviews#list-comments-for-a-pull-request-review>
    async fn review_comment_ids(
        &self,
        access: WriteAccess,
        repo: &RepoName,
        number: u64,
        review: u64,
    ) -> Result<Vec<u64>, GitHubError> {
        let _ = (access, repo, number, review);
        Err(unsupported("list review comments"))
    }

    /// Deletes one inline review comment; one already gone (404) is done.
    ///
    /// Source: <https://docs.github.com/en/rest/pulls/comments#delete-a-review-comment-for-a-pull-request>
    async fn delete_review_comment(
        &self,
        access: WriteAccess,
        repo: &RepoName,
        comment: u64,
    ) -> Result<(), GitHubError> {
        let _ = (access, repo, comment);
        Err(unsupported("delete review comments"))
    }

    /// Replaces the body of submitted review `review` (its state stays).
    ///
    /// Source: <https://docs.github.com/en/rest/pulls/reviews#update-a-review-for-a-pull-request>
    async fn update_review(
        &self,
        access: WriteAccess,
        repo: &RepoName,
        number: u64,
        review: u64,
        body: &str,
    ) -> Result<(), GitHubError> {
        let _ = (access, repo, number, review, body);
        Err(unsupported("update reviews"))
    }

    /// Submits a `COMMENT` review with inline comments; returns its id.
    ///
    /// Source: <https://docs.github.com/en/rest/pulls/reviews#create-a-review-for-a-pull-request>
    async fn create_review(
        &self,
        access: WriteAccess,
        repo: &RepoName,
        number: u64,
        review: &NewReview,
    ) -> Result<u64, GitHubError> {
        let _ = (access, repo, number, review);
        Err(unsupported("submit reviews"))
    }

    /// True when effects are only recorded, not sent (no App credentials).
    fn is_dry_run(&self) -> bool {
        false
    }
}

fn unsupported(what: &str) -> GitHubError {
    GitHubError::InvalidInput(format!("this GitHub client cannot {what}"))
}

/// Creates or edits the sticky comment on issue or PR `number`.
///
/// The comment is looked for in this order, so a restart between creating and
/// recording it never leaves two: the id the caller stored (`known`), then a
/// comment of ours that starts with `marker`; only when neither exists is a
/// new comment created. `body` must start with `marker` (the renderer in
/// [`crate::report`] puts it on the first line) or the comment could not be
/// found again.
///
/// Returns the comment's id, for the caller to store.
///
/// # Errors
/// [`GitHubError::InvalidInput`] when `body` does not start with `marker`;
/// otherwise whatever the [`GitHub`] calls return. A stored id whose comment
/// was deleted (404) is not an error: the marker search takes over.
pub async fn upsert_sticky_comment(
    github: &dyn GitHub,
    installation: InstallationId,
    repo: &RepoName,
    number: u64,
    known: Option<CommentId>,
    marker: &str,
    body: &str,
) -> Result<CommentId, GitHubError> {
    if !body.starts_with(marker) {
        return Err(GitHubError::InvalidInput(
            "a sticky comment body must start with its marker".into(),
        ));
    }
    if let Some(id) = known {
        match github.update_comment(installation, repo, id, body).await {
            Ok(()) => return Ok(id),
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(e),
        }
    }
    if let Some(id) = github
        .find_comment_by_marker(installation, repo, number, marker)
        .await?
    {
        github.update_comment(installation, repo, id, body).await?;
        return Ok(id);
    }
    github
        .create_comment(installation, repo, number, body)
        .await
}

/// Creates or updates the check run of one run, so that it exists once.
///
/// Looked for in this order: the id the caller stored (`known`); a check run
/// of this app on `check_run.head_sha` with the same name and `external_id`
/// (the run id) — which covers a restart between creating the check run and
/// recording its id; only then is a new one created. A found check run gets
/// `check_run.fields` as an update. Returns the id, for the caller to store.
///
/// # Errors
/// [`GitHubError::InvalidInput`] when `check_run.fields.external_id` is
/// missing (it is what makes the effect idempotent); otherwise whatever the
/// [`GitHub`] calls return. A stored id that GitHub no longer knows (404) is
/// not an error: the search takes over.
///
/// Source: <https://docs.github.com/en/rest/checks/runs>
pub async fn upsert_check_run(
    github: &dyn GitHub,
    installation: InstallationId,
    repo: &RepoName,
    known: Option<CheckRunId>,
    check_run: &NewCheckRun,
) -> Result<CheckRunId, GitHubError> {
    let Some(external_id) = check_run.fields.external_id.as_deref() else {
        return Err(GitHubError::InvalidInput(
            "a check run needs an external_id (the run id) to be found again".into(),
        ));
    };
    if let Some(id) = known {
        match github
            .update_check_run(installation, repo, id, &check_run.fields)
            .await
        {
            Ok(()) => return Ok(id),
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(e),
        }
    }
    if let Some(id) = github
        .find_check_run(
            installation,
            repo,
            &check_run.head_sha,
            &check_run.name,
            external_id,
        )
        .await?
    {
        github
            .update_check_run(installation, repo, id, &check_run.fields)
            .await?;
        return Ok(id);
    }
    github.create_check_run(installation, repo, check_run).await
}

/// The [`GitHub`] to use for `settings`: a [`GitHubClient`] with App
/// credentials, or — without them — a dry-run [`RecordingGitHub`] that
/// records and logs every effect instead of sending it. Dry run is announced
/// with a warning here, once, at start-up.
///
/// # Errors
/// As [`GitHubClient::new`].
pub fn connect(
    settings: &GitHubSettings,
    policy: RetryPolicy,
) -> Result<std::sync::Arc<dyn GitHub>, GitHubError> {
    if settings.credentials.is_none() {
        tracing::warn!(
            "DRY RUN: no GitHub App credentials (GITHUB_APP_ID with GITHUB_PRIVATE_KEY or \
             GITHUB_PRIVATE_KEY_PATH); workflows run, but check runs, comments and reactions \
             are only recorded and logged, never sent to GitHub"
        );
        return Ok(std::sync::Arc::new(RecordingGitHub::dry_run()));
    }
    Ok(std::sync::Arc::new(GitHubClient::new(settings, policy)?))
}

#[cfg(test)]
mod tests {
    use super::RepoName;

    #[test]
    fn a_repository_name_is_its_text_in_json_and_checked_when_read() {
        let name: RepoName = serde_json::from_str("\"octo-org/hello.world\"").unwrap();
        assert_eq!(name.owner(), "octo-org");
        assert_eq!(name.name(), "hello.world");
        assert_eq!(
            serde_json::to_string(&name).unwrap(),
            "\"octo-org/hello.world\""
        );
        assert!(name == "octo-org/hello.world");
        assert!(name != "octo-org/hello");
        for bad in [
            "\"octo\"",
            "\"a/b/c\"",
            "\"a/../b\"",
            "\"/b\"",
            "\"a b/c\"",
            "7",
        ] {
            assert!(serde_json::from_str::<RepoName>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_repository_name_reads_as_its_text_and_orders_by_owner_then_name() {
        let name = RepoName::new("octo", "widgets").unwrap();
        assert_eq!(name.as_str(), "octo/widgets");
        assert_eq!(&*name, "octo/widgets");
        assert_eq!((name.owner(), name.name()), ("octo", "widgets"));
        assert_eq!(String::from(name.clone()), "octo/widgets");
        // `-` sorts before `/` as text; as names, `a` is before `a-b`.
        let mut names: Vec<RepoName> = ["a-b/x", "a/y", "a/x", "b/a"]
            .iter()
            .map(|n| n.parse().unwrap())
            .collect();
        names.sort();
        let names: Vec<&str> = names.iter().map(|n| n.as_str()).collect();
        assert_eq!(names, ["a/x", "a/y", "a-b/x", "b/a"]);
    }

    #[test]
    fn an_event_whose_repository_is_not_a_name_does_not_parse() {
        let payload = |full_name: &str| {
            serde_json::to_vec(&serde_json::json!({
                "action": "opened",
                "number": 1,
                "pull_request": {"number": 1, "title": "t", "user": {"login": "u", "id": 1},
                    "head": {"sha": "abc", "ref": "f"}, "base": {"sha": "def", "ref": "main"}},
                "repository": {"id": 1, "full_name": full_name},
                "sender": {"login": "u", "id": 1},
            }))
            .unwrap()
        };
        let event = crate::event::Event::parse("pull_request", &payload("octo/widgets")).unwrap();
        assert!(event.repository().unwrap().full_name == "octo/widgets");
        let err = crate::event::Event::parse("pull_request", &payload("octo/../etc")).unwrap_err();
        assert!(err.to_string().contains("not a repository name"), "{err}");
    }
}
