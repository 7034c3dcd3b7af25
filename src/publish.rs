//! Bringing the work back: a run's change becomes a commit, a branch and a
//! pull request — or, on a fork's pull request, a review of suggestions.
//!
//! The engine harvests a change when a step with `changes: true` ends
//! ([`crate::workspace::harvest`]) and stores it with the run, refused or
//! not. Once the run has **succeeded**, the outbox's leader sends it
//! ([`Publisher::pass`]), one run at a time:
//!
//! * **issue runs** (and anything that is not a pull request): blobs, a tree
//!   on the checkout's tree, a commit on the checkout's SHA, a new branch
//!   `taskmaster/<workflow>-<number>-<run>`, then a **draft** pull request
//!   against the default branch (a normal one when GitHub answers that
//!   drafts are not supported), and a comment on the issue linking it;
//! * **same-repository pull requests**: the commit goes onto the PR's head
//!   branch with `force: false`. When the head moved since the run checked
//!   it out (or GitHub refuses the update as not a fast forward), or the
//!   head is the default or a protected branch, a new branch and a pull
//!   request against the PR's head branch instead;
//! * **fork pull requests: never a push.** A `COMMENT` review whose inline
//!   comments carry ```` ```suggestion ```` blocks on lines inside the PR's
//!   hunks; the full patch is in the run's check run.
//!
//! **Exactly once.** Every write is idempotent or looked up before it is
//! made, and progress is saved after each one
//! ([`crate::store::ChangeStore::save_publication`]): blobs are
//! content-addressed (sending one twice makes the same SHA), the tree and
//! commit are stored before the branch is made, the branch name is
//! deterministic and a branch already pointing at the stored commit is
//! taken as made, the pull request is looked up by its head branch before
//! one is opened, the review and the issue comment are found again by a
//! hidden marker. A crash anywhere resumes at the first write not recorded;
//! at worst one unreferenced commit object is left on GitHub, never a
//! second branch, commit on a branch, or pull request.
//!
//! Every write uses a token narrowed to the repository with `contents` and
//! `pull_requests` write (plus `workflows` only when the change edits
//! `.github/workflows/`, which the workflow must have allowed).

use crate::store::RunId;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use crate::event::Event;
use crate::github::{
    GitHub, GitHubError, InstallationId, NewPullRequest, NewReview, RepoName, ReviewComment,
    TreeEntry, WriteAccess, git_data, upsert_sticky_comment,
};
use crate::store::{
    ChangeState, Publication, PublishTarget, RunChange, RunSnapshot, RunStore, StoreError, now_ms,
};
use crate::workspace::{Change, WORKFLOWS_DIR};

/// Runs sent per pass at most.
const BATCH: i64 = 20;

/// Why sending failed.
enum Failure {
    /// Try again later (network, 5xx, rate limits, store).
    Transient(String),
    /// Trying again will not help; said on the run.
    Permanent(String),
}

impl From<GitHubError> for Failure {
    fn from(e: GitHubError) -> Self {
        if e.is_transient() {
            Failure::Transient(e.to_string())
        } else {
            Failure::Permanent(e.to_string())
        }
    }
}

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Self {
        Failure::Transient(format!("store: {e}"))
    }
}

/// Sends succeeded runs' changes to GitHub; see the module docs.
#[derive(Clone)]
pub struct Publisher {
    store: Arc<dyn RunStore>,
    github: Arc<dyn GitHub>,
    public_url: Option<String>,
    retry_base: Duration,
    retry_max: Duration,
}

/// What a run is about, read from its event.
struct Subject {
    repo: RepoName,
    installation: InstallationId,
    number: u64,
    /// The event is about a pull request (a PR event or a comment on one).
    pull_request: bool,
    default_branch: String,
    /// Who asked: the login and id for the `Co-authored-by:` trailer.
    asked_by: Option<(String, i64)>,
    /// The issue's (or PR's) title.
    title: String,
}

impl Publisher {
    /// A publisher writing through `github`; `public_url` makes the run
    /// links (`<PUBLIC_URL>/runs/<id>`); transient failures back off from
    /// `retry_base`, doubling, up to `retry_max`.
    pub fn new(
        store: Arc<dyn RunStore>,
        github: Arc<dyn GitHub>,
        public_url: Option<String>,
        retry_base: Duration,
        retry_max: Duration,
    ) -> Self {
        Self {
            store,
            github,
            public_url: public_url.map(|u| u.trim_end_matches('/').to_owned()),
            retry_base,
            retry_max,
        }
    }

    /// Sends every change that is due. Returns how many runs were looked at.
    ///
    /// # Errors
    /// The store could not list them; a failure of one run is recorded on
    /// it and leaves the others alone.
    pub async fn pass(&self) -> Result<usize, StoreError> {
        let due = self.store.changes_to_publish(now_ms(), BATCH).await?;
        for run_id in &due {
            self.publish_run(run_id.0).await;
        }
        Ok(due.len())
    }

    async fn publish_run(&self, run_id: i64) {
        let loaded = async {
            let rc = self.store.run_change(RunId(run_id)).await?;
            let snap = self.store.run(RunId(run_id)).await?;
            Ok::<_, StoreError>(rc.zip(snap))
        }
        .await;
        let (rc, snap) = match loaded {
            Ok(Some(pair)) => pair,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(run_id = %run_id, error = %e, "publish: cannot read the run");
                return;
            }
        };
        if rc.state != ChangeState::Pending {
            return;
        }
        let mut publication = rc.publication.clone();
        // A `fail` verdict (a review, tests) gates the change: it is kept
        // with the run, not proposed.
        let verdicts = crate::verdict::run_verdicts(&snap.steps);
        if !verdicts.failed.is_empty() {
            let why = format!("not proposed: {}", verdicts.failed.join("; "));
            if let Err(e) = self
                .store
                .finish_publication(
                    RunId(run_id),
                    ChangeState::Failed,
                    &publication,
                    Some(&why),
                    &why,
                )
                .await
            {
                tracing::warn!(run_id = %run_id, error = %e, "publish: cannot record the outcome");
            }
            return;
        }
        let result = match self.subject(&snap).await {
            Ok(subject) if self.github.is_dry_run() => {
                self.dry_run(&snap, &rc, &subject, &mut publication)
            }
            Ok(subject) => self.send(&snap, &rc, &subject, &mut publication).await,
            Err(f) => Err(f),
        };
        let stored = match result {
            Ok(detail) => {
                let state = if self.github.is_dry_run() {
                    ChangeState::DryRun
                } else {
                    ChangeState::Published
                };
                tracing::info!(run_id = %run_id, %detail, "change sent");
                self.store
                    .finish_publication(RunId(run_id), state, &publication, None, &detail)
                    .await
            }
            Err(Failure::Transient(e)) => {
                let wait = self.backoff(rc.attempts);
                tracing::warn!(run_id = %run_id, error = %e, retry_in_ms = wait.as_millis() as u64,
                    "the change could not be sent yet; retrying later");
                if let Err(err) = self
                    .store
                    .save_publication(RunId(run_id), &publication)
                    .await
                {
                    tracing::warn!(run_id = %run_id, error = %err, "publish: cannot save progress");
                }
                self.store
                    .retry_publication(RunId(run_id), &e, now_ms() + wait.as_millis() as i64)
                    .await
            }
            Err(Failure::Permanent(e)) => {
                tracing::error!(run_id = %run_id, error = %e, "the change cannot be sent");
                self.store
                    .finish_publication(
                        RunId(run_id),
                        ChangeState::Failed,
                        &publication,
                        Some(&e),
                        &format!("the change could not be sent to GitHub: {e}"),
                    )
                    .await
            }
        };
        if let Err(e) = stored {
            tracing::warn!(run_id = %run_id, error = %e, "publish: cannot record the outcome");
        }
    }

    fn backoff(&self, failures: i64) -> Duration {
        let factor = 1u32 << failures.clamp(0, 16) as u32;
        self.retry_base.saturating_mul(factor).min(self.retry_max)
    }

    async fn subject(&self, snap: &RunSnapshot) -> Result<Subject, Failure> {
        let run = &snap.run;
        let delivery = self
            .store
            .delivery(&run.delivery_id)
            .await?
            .ok_or_else(|| Failure::Permanent("the run's delivery is gone".into()))?;
        let event = Event::parse(&delivery.event, &delivery.payload)
            .map_err(|e| Failure::Permanent(format!("the run's event cannot be read: {e}")))?;
        let repository = event
            .repository()
            .ok_or_else(|| Failure::Permanent("the run's event names no repository".into()))?;
        let repo = repository.full_name.clone();
        let installation = event.installation_id().ok_or_else(|| {
            Failure::Permanent(
                "the run's event names no installation: nothing to write with".into(),
            )
        })?;
        let (pull_request, title) = match &event {
            Event::PullRequest(e) => (true, e.pull_request.title.clone()),
            Event::IssueComment(e) => (e.issue.is_pull_request(), e.issue.title.clone()),
            Event::Issues(e) => (false, e.issue.title.clone()),
            _ => (run.head_sha.is_some(), String::new()),
        };
        let asked_by = match &event {
            Event::IssueComment(e) => Some((e.comment.user.login.clone(), e.comment.user.id)),
            Event::Issues(e) => Some((e.issue.user.login.clone(), e.issue.user.id)),
            _ => event.sender().map(|s| (s.login.clone(), s.id)),
        }
        .filter(|(login, _)| !login.ends_with("[bot]"));
        Ok(Subject {
            repo,
            installation,
            number: run.subject_number.unwrap_or(0).max(0) as u64,
            pull_request,
            default_branch: repository
                .default_branch
                .clone()
                .unwrap_or_else(|| "main".into()),
            asked_by,
            title,
        })
    }

    /// The run's page, for trailers and bodies.
    fn run_link(&self, run_id: i64) -> String {
        match &self.public_url {
            Some(url) => format!("{url}/runs/{run_id}"),
            None => format!("run {run_id}"),
        }
    }

    /// The pull request's title and body: the `pull_request: true` step's
    /// output (first line the title), else the changing step's output.
    fn texts(&self, snap: &RunSnapshot, rc: &RunChange, subject: &Subject) -> (String, String) {
        let output = |id: &str| {
            snap.step(id)
                .and_then(|s| s.output.clone())
                .unwrap_or_default()
        };
        let default_title = if subject.pull_request {
            format!("{}: changes for #{}", snap.run.workflow, subject.number)
        } else if subject.title.is_empty() {
            format!("{}: changes from run {}", snap.run.workflow, snap.run.id)
        } else {
            subject.title.clone()
        };
        let (title, summary) = match rc.change.pull_request_step.as_deref() {
            Some(step) => split_title(&output(step)).unwrap_or((default_title, String::new())),
            None => (default_title, output(&rc.step)),
        };
        (title, summary)
    }

    fn pull_request_body(
        &self,
        snap: &RunSnapshot,
        rc: &RunChange,
        subject: &Subject,
        summary: &str,
    ) -> String {
        let change = &rc.change;
        let mut body = String::new();
        if !summary.trim().is_empty() {
            body.push_str(summary.trim());
            body.push_str("\n\n");
        }
        if !subject.pull_request && subject.number > 0 {
            body.push_str(&format!("Closes #{}\n\n", subject.number));
        }
        body.push_str(&format!(
            "---\nProposed by taskmaster's `{}` workflow ([run {}]({})): {} file{} changed (+{} −{}).\n\n",
            snap.run.workflow,
            snap.run.id,
            self.run_link(snap.run.id.0),
            change.files.len(),
            if change.files.len() == 1 { "" } else { "s" },
            change.additions,
            change.deletions
        ));
        body.push_str(
            "> [!WARNING]\n> This code was written by an AI agent. CI on this branch runs with \
             this repository's secrets: review the change before approving workflow runs or \
             marking the pull request ready.\n",
        );
        body
    }

    fn commit_message(&self, snap: &RunSnapshot, subject: &Subject, title: &str) -> String {
        let mut msg = format!("{}\n\n", one_line(title, 72));
        msg.push_str(&format!(
            "Made by the `{}` workflow of taskmaster.\n\n",
            snap.run.workflow
        ));
        msg.push_str(&format!(
            "Taskmaster-Run: {}\n",
            self.run_link(snap.run.id.0)
        ));
        if let Some((login, id)) = &subject.asked_by {
            msg.push_str(&git_data::co_author_trailer(
                login,
                (*id > 0).then_some(*id as u64),
            ));
            msg.push('\n');
        }
        msg
    }

    fn branch_name(&self, snap: &RunSnapshot, subject: &Subject) -> String {
        let workflow: String = snap
            .run
            .workflow
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c.to_ascii_lowercase()
                } else {
                    '-'
                }
            })
            .collect();
        format!(
            "taskmaster/{}-{}-{}",
            workflow.trim_matches('-'),
            subject.number,
            snap.run.id
        )
    }

    /// Dry run: what would have been sent, recorded instead.
    fn dry_run(
        &self,
        snap: &RunSnapshot,
        rc: &RunChange,
        subject: &Subject,
        p: &mut Publication,
    ) -> Result<String, Failure> {
        let (title, summary) = self.texts(snap, rc, subject);
        let branch = self.branch_name(snap, subject);
        let would = json!({
            "branch": branch,
            "base": if subject.pull_request { "(the pull request's head)".to_owned() } else { subject.default_branch.clone() },
            "title": title,
            "body": self.pull_request_body(snap, rc, subject, &summary),
            "commit_message": self.commit_message(snap, subject, &title),
            "files": rc.change.files.iter().map(|f| f.path.clone()).collect::<Vec<_>>(),
        });
        tracing::warn!(run_id = %snap.run.id, would_open = %would,
            "DRY RUN: not committing or opening a pull request");
        p.would_open = Some(would);
        p.note = Some("dry run: nothing was sent to GitHub".into());
        Ok(format!(
            "dry run: would commit {} file(s) on `{branch}` and open a pull request",
            rc.change.files.len()
        ))
    }

    async fn send(
        &self,
        snap: &RunSnapshot,
        rc: &RunChange,
        subject: &Subject,
        p: &mut Publication,
    ) -> Result<String, Failure> {
        let change = &rc.change;
        let access = WriteAccess {
            installation: subject.installation,
            workflows: change
                .files
                .iter()
                .any(|f| f.path.starts_with(WORKFLOWS_DIR)),
        };
        let repo = &subject.repo;
        let run_id = snap.run.id;
        // A workflow file needs the App's `workflows` permission: without
        // it, say so before writing anything.
        if access.workflows
            && let Err(e) = self
                .github
                .repository_token(subject.installation, repo, &access.permissions())
                .await
        {
            if e.status() == Some(422) {
                return Err(Failure::Permanent(format!(
                    "the change edits .github/workflows/, which needs the App's `workflows` \
                     permission, and the installation has not granted it ({e}): add \
                     \"Workflows: read and write\" in the App's permissions, accept it on the \
                     installation, then `/retry`"
                )));
            }
            return Err(e.into());
        }
        // The agent opened its own pull requests (Codegen): link them, and
        // open none.
        if !change.linked_pull_requests.is_empty() {
            return self.link(snap, rc, subject, p).await;
        }
        // Where it goes, decided once.
        let mut head = None;
        if p.target.is_none() {
            let target = if subject.pull_request {
                let pr = self
                    .github
                    .pull_request(access, repo, subject.number)
                    .await?;
                let target = if pr.head_repo.as_deref() != Some(&repo.to_string()) {
                    PublishTarget::Suggestions
                } else if pr.head_ref == subject.default_branch
                    || self
                        .github
                        .branch_protected(access, repo, &pr.head_ref)
                        .await?
                {
                    p.note = Some(format!(
                        "`{}` is the default or a protected branch: proposed in a new pull request against it",
                        pr.head_ref
                    ));
                    PublishTarget::PullRequestOnHead
                } else if pr.head_sha != change.base_sha {
                    p.note = Some(format!(
                        "`{}` moved since the run checked out {}: proposed in a new pull request against it",
                        pr.head_ref,
                        short(&change.base_sha)
                    ));
                    PublishTarget::PullRequestOnHead
                } else {
                    PublishTarget::HeadBranch
                };
                head = Some(pr);
                target
            } else {
                PublishTarget::NewPullRequest
            };
            p.target = Some(target);
            if let Some(pr) = &head {
                p.pull_request = Some(pr.pull.clone());
                if target == PublishTarget::HeadBranch {
                    p.branch = Some(pr.head_ref.clone());
                }
            }
            self.store.save_publication(run_id, p).await?;
        }
        let target = p.target.expect("set above");
        if target == PublishTarget::Suggestions {
            return self.suggest(snap, rc, subject, access, p).await;
        }
        let (title, summary) = self.texts(snap, rc, subject);

        // The tree and the commit.
        if p.commit.is_none() {
            if p.tree.is_none() {
                let mut entries = Vec::with_capacity(change.files.len());
                for f in &change.files {
                    let sha = match (&f.sha, &f.new_mode) {
                        (Some(sha), Some(_)) => {
                            let content = change.blob(sha).ok_or_else(|| {
                                Failure::Permanent(format!(
                                    "the contents of `{}` were not kept (over the change limits?)",
                                    f.path
                                ))
                            })?;
                            let made = self.github.create_blob(access, repo, &content).await?;
                            if made != *sha {
                                return Err(Failure::Permanent(format!(
                                    "GitHub stored `{}` as blob {made}, not {sha}",
                                    f.path
                                )));
                            }
                            Some(made)
                        }
                        _ => None,
                    };
                    entries.push(TreeEntry {
                        path: f.path.clone(),
                        mode: f
                            .new_mode
                            .clone()
                            .or_else(|| f.old_mode.clone())
                            .unwrap_or_else(|| "100644".into()),
                        sha,
                    });
                }
                let base_tree = if change.base_tree.is_empty() {
                    self.github
                        .commit_tree(access, repo, &change.base_sha)
                        .await?
                } else {
                    change.base_tree.clone()
                };
                let tree = self
                    .github
                    .create_tree(access, repo, &base_tree, &entries)
                    .await?;
                p.tree = Some(tree);
                self.store.save_publication(run_id, p).await?;
            }
            let message = self.commit_message(snap, subject, &title);
            let commit = self
                .github
                .create_commit(
                    access,
                    repo,
                    &message,
                    p.tree.as_deref().expect("set above"),
                    std::slice::from_ref(&change.base_sha),
                )
                .await?;
            p.commit = Some(commit);
            self.store.save_publication(run_id, p).await?;
        }
        let commit = p.commit.clone().expect("set above");

        // The branch.
        if !p.branch_done {
            if p.target == Some(PublishTarget::HeadBranch) {
                let branch = p.branch.clone().expect("the head branch");
                match self
                    .github
                    .update_branch(access, repo, &branch, &commit)
                    .await
                {
                    Ok(()) => {}
                    Err(e) if e.status() == Some(422) => {
                        // Done before a crash, or the branch moved meanwhile.
                        let now = self.github.branch_sha(access, repo, &branch).await?;
                        if now.as_deref() != Some(commit.as_str()) {
                            p.target = Some(PublishTarget::PullRequestOnHead);
                            p.note = Some(format!(
                                "`{branch}` moved while the change was sent: proposed in a new \
                                 pull request against it"
                            ));
                            p.branch = None;
                        }
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            if p.target != Some(PublishTarget::HeadBranch) {
                let branch = self.branch_name(snap, subject);
                if !crate::workspace::git::valid_branch(&branch) {
                    return Err(Failure::Permanent(format!(
                        "`{branch}` is not a valid branch name"
                    )));
                }
                match self.github.branch_sha(access, repo, &branch).await? {
                    Some(sha) if sha == commit => {}
                    Some(sha) => {
                        return Err(Failure::Permanent(format!(
                            "branch `{branch}` already exists at {} (not this run's commit {}): \
                             delete it or rerun",
                            short(&sha),
                            short(&commit)
                        )));
                    }
                    None => match self
                        .github
                        .create_branch(access, repo, &branch, &commit)
                        .await
                    {
                        Ok(()) => {}
                        Err(e) if e.status() == Some(422) => {
                            let now = self.github.branch_sha(access, repo, &branch).await?;
                            if now.as_deref() != Some(commit.as_str()) {
                                return Err(e.into());
                            }
                        }
                        Err(e) => return Err(e.into()),
                    },
                }
                p.branch = Some(branch);
            }
            p.branch_done = true;
            self.store.save_publication(run_id, p).await?;
        }
        let branch = p.branch.clone().expect("set above");

        // The pull request.
        let target = p.target.expect("set");
        if target == PublishTarget::HeadBranch {
            return Ok(format!(
                "committed {} onto `{branch}` of pull request #{}",
                short(&commit),
                subject.number
            ));
        }
        let base = match target {
            PublishTarget::PullRequestOnHead => match &head {
                Some(h) => h.head_ref.clone(),
                None => {
                    self.github
                        .pull_request(access, repo, subject.number)
                        .await?
                        .head_ref
                }
            },
            _ => subject.default_branch.clone(),
        };
        let opened_here = p.pull_request.as_ref().is_some_and(|pr| {
            target != PublishTarget::PullRequestOnHead || pr.number != subject.number
        });
        if !opened_here {
            let found = self.github.find_pull_request(access, repo, &branch).await?;
            let pr = match found {
                Some(pr) => pr,
                None => {
                    let mut new = NewPullRequest {
                        title: one_line(&title, 200),
                        body: self.pull_request_body(snap, rc, subject, &summary),
                        head: branch.clone(),
                        base: base.clone(),
                        draft: true,
                    };
                    match self.github.create_pull_request(access, repo, &new).await {
                        Ok(pr) => pr,
                        Err(GitHubError::Api {
                            status: 422,
                            message,
                            ..
                        }) if git_data::drafts_unsupported(&message) => {
                            new.draft = false;
                            self.github.create_pull_request(access, repo, &new).await?
                        }
                        Err(e) => return Err(e.into()),
                    }
                }
            };
            p.pull_request = Some(pr);
            self.store.save_publication(run_id, p).await?;
        }
        let pr = p.pull_request.clone().expect("set above");

        // A comment where the request came from, linking the pull request.
        if subject.number > 0 {
            let marker = format!("<!-- taskmaster:pull-request run={run_id} -->");
            let body = format!(
                "{marker}\nThe `{}` workflow proposes its change in {} pull request #{}: {}\n\n\
                 {} file{} changed (+{} −{}); [run {run_id}]({}).",
                snap.run.workflow,
                if pr.draft { "draft" } else { "the" },
                pr.number,
                pr.html_url,
                change.files.len(),
                if change.files.len() == 1 { "" } else { "s" },
                change.additions,
                change.deletions,
                self.run_link(run_id.0),
            );
            self.comment_once(subject, &marker, &body, p).await?;
            self.store.save_publication(run_id, p).await?;
        }
        Ok(format!(
            "opened {}pull request #{} from `{branch}` into `{base}` with commit {}",
            if pr.draft { "draft " } else { "" },
            pr.number,
            short(&commit)
        ))
    }

    /// The comment on the issue or PR the run was asked on, found again by
    /// `marker` (its first line) so it exists once; its id is kept in `p`.
    async fn comment_once(
        &self,
        subject: &Subject,
        marker: &str,
        body: &str,
        p: &mut Publication,
    ) -> Result<(), GitHubError> {
        let id = upsert_sticky_comment(
            self.github.as_ref(),
            subject.installation,
            &subject.repo,
            subject.number,
            p.comment_id.map(crate::github::CommentId),
            marker,
            body,
        )
        .await?;
        p.comment_id = Some(id.0);
        Ok(())
    }

    /// The agent's own pull requests, linked from a comment where the run
    /// was asked for.
    async fn link(
        &self,
        snap: &RunSnapshot,
        rc: &RunChange,
        subject: &Subject,
        p: &mut Publication,
    ) -> Result<String, Failure> {
        let run_id = snap.run.id;
        p.target = Some(PublishTarget::Linked);
        p.linked = rc.change.linked_pull_requests.clone();
        if subject.number > 0 {
            let marker = format!("<!-- taskmaster:pull-request run={run_id} -->");
            let mut body = format!(
                "{marker}\nThe `{}` workflow's agent opened its pull request{} itself \
                 ([run {run_id}]({})):\n",
                snap.run.workflow,
                if p.linked.len() == 1 { "" } else { "s" },
                self.run_link(run_id.0),
            );
            for url in &p.linked {
                body.push_str(&format!("- {url}\n"));
            }
            self.comment_once(subject, &marker, &body, p).await?;
        }
        Ok(format!(
            "linked the pull request(s) the agent opened: {}",
            p.linked.join(", ")
        ))
    }

    /// A fork's pull request: one `COMMENT` review with suggestion blocks.
    async fn suggest(
        &self,
        snap: &RunSnapshot,
        rc: &RunChange,
        subject: &Subject,
        access: WriteAccess,
        p: &mut Publication,
    ) -> Result<String, Failure> {
        let change = &rc.change;
        let run_id = snap.run.id;
        let marker = format!("<!-- taskmaster:suggestions run={run_id} -->");
        if p.review_id.is_none() {
            let found = self
                .github
                .find_review(access, &subject.repo, subject.number, &marker)
                .await?;
            let id = match found {
                Some(id) => id,
                None => {
                    let comments: Vec<ReviewComment> = change
                        .suggestions
                        .iter()
                        .map(|s| ReviewComment {
                            path: s.path.clone(),
                            line: s.line,
                            start_line: (s.start_line < s.line).then_some(s.start_line),
                            body: format!("```suggestion\n{}```", s.replacement),
                        })
                        .collect();
                    let mut body = format!(
                        "{marker}\nThe `{}` workflow suggests changes ([run {run_id}]({})). \
                         This pull request comes from a fork, so taskmaster does not push to it",
                        snap.run.workflow,
                        self.run_link(run_id.0),
                    );
                    if change.outside_hunks > 0 {
                        body.push_str(&format!(
                            "; {} part{} of the change fall{} outside this pull request's diff \
                             and {} only in the check run's patch",
                            change.outside_hunks,
                            if change.outside_hunks == 1 { "" } else { "s" },
                            if change.outside_hunks == 1 { "s" } else { "" },
                            if change.outside_hunks == 1 {
                                "is"
                            } else {
                                "are"
                            },
                        ));
                    }
                    body.push('.');
                    let head = snap.run.head_sha.clone().unwrap_or(change.base_sha.clone());
                    self.github
                        .create_review(
                            access,
                            &subject.repo,
                            subject.number,
                            &NewReview {
                                commit_id: head,
                                body,
                                comments,
                            },
                        )
                        .await?
                }
            };
            p.review_id = Some(id);
            p.suggestions = change.suggestions.len() as u64;
            self.store.save_publication(run_id, p).await?;
        }
        Ok(format!(
            "suggested the change on fork pull request #{} in a review ({} inline suggestion{}, {} outside the diff)",
            subject.number,
            change.suggestions.len(),
            if change.suggestions.len() == 1 {
                ""
            } else {
                "s"
            },
            change.outside_hunks
        ))
    }
}

/// The first non-empty line of `text` as a title (markdown heading marks
/// and a `Title:` label removed), and the rest as the body.
fn split_title(text: &str) -> Option<(String, String)> {
    let text = text.trim();
    let mut lines = text.lines();
    let first = lines.by_ref().find(|l| !l.trim().is_empty())?;
    let mut title = first.trim().trim_start_matches('#').trim();
    for label in ["Title:", "title:", "**Title:**"] {
        if let Some(rest) = title.strip_prefix(label) {
            title = rest.trim();
        }
    }
    let title = title.trim_matches('*').trim().to_owned();
    if title.is_empty() {
        return None;
    }
    let body: Vec<&str> = lines.collect();
    Some((title, body.join("\n").trim().to_owned()))
}

fn one_line(text: &str, max: usize) -> String {
    let line = text.lines().next().unwrap_or("").trim();
    match line.char_indices().nth(max) {
        Some((end, _)) => format!("{}…", &line[..end]),
        None => line.to_owned(),
    }
}

fn short(sha: &str) -> &str {
    &sha[..sha.len().min(12)]
}

/// Whether a run's change was opened as a pull request (for reports).
pub fn pull_request_of(change: &RunChange) -> Option<&crate::github::PullRequestRef> {
    change.publication.pull_request.as_ref()
}

/// The change of a run, rendered for a report (check run text, sticky
/// comment): where it went, or why it did not; `None` without a change.
pub fn describe(change: &RunChange) -> Option<String> {
    let c: &Change = &change.change;
    let files = format!(
        "{} file{} (+{} −{})",
        c.files.len(),
        if c.files.len() == 1 { "" } else { "s" },
        c.additions,
        c.deletions
    );
    let p = &change.publication;
    Some(match change.state {
        ChangeState::Empty => "No changes.".into(),
        ChangeState::Refused => format!(
            "Change refused, nothing was sent: {}",
            change.refused.as_deref().unwrap_or("")
        ),
        ChangeState::Pending => format!("Change of {files} waits for the run to succeed."),
        ChangeState::Failed => format!(
            "Change of {files} could not be sent: {}",
            change.last_error.as_deref().unwrap_or("")
        ),
        ChangeState::DryRun => format!("Dry run: a change of {files} was recorded, not sent."),
        ChangeState::Published => match (p.target, &p.pull_request) {
            (Some(PublishTarget::Suggestions), _) => format!(
                "Change of {files} suggested in a review ({} inline suggestion{}).",
                p.suggestions,
                if p.suggestions == 1 { "" } else { "s" }
            ),
            (Some(PublishTarget::HeadBranch), _) => format!(
                "Committed {files} onto {} ({}).",
                p.branch.as_deref().unwrap_or(""),
                short(p.commit.as_deref().unwrap_or(""))
            ),
            (_, Some(pr)) => format!(
                "Proposed {files} in {}pull request #{} from {}.",
                if pr.draft { "draft " } else { "" },
                pr.number,
                p.branch.as_deref().unwrap_or("")
            ),
            (Some(PublishTarget::Linked), _) => format!(
                "The agent opened its own pull request(s): {}.",
                p.linked.join(", ")
            ),
            _ => format!("Sent {files}."),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn titles_come_from_the_first_line() {
        assert_eq!(
            split_title("# Fix the parser\n\nIt was wrong.\n"),
            Some(("Fix the parser".into(), "It was wrong.".into()))
        );
        assert_eq!(
            split_title("**Title:** Add X\nBody").map(|t| t.0),
            Some("Add X".into())
        );
        assert_eq!(split_title("  \n "), None);
        assert_eq!(one_line("abc\ndef", 2), "ab…");
    }
}
