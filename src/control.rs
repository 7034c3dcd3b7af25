//! The App's delivery handler: everything a delivery can ask of taskmaster
//! besides starting workflows from routing.
//!
//! * `installation` / `installation_repositories`: the installation's state
//!   and repositories are recorded; deliveries of a suspended or deleted
//!   installation are ignored.
//! * `issue_comment.created`: comment commands ([`crate::command`]), each
//!   authorized, acted on, answered and audited (see below).
//! * `check_run.rerequested`, `check_suite.rerequested`,
//!   `check_run.requested_action`: GitHub's Re-run links and our buttons
//!   ([`crate::github::rerun`]), authorized like the matching command.
//! * `push` to the default branch touching `.github/taskmaster.yml`: the
//!   cached repository configuration is dropped.
//! * everything else: routing ([`RoutingHandler`]), minus the workflows the
//!   repository's configuration turns off.
//!
//! ## Commands
//! A command acts only from a *new* comment (`created`; an edit or deletion
//! never acts) by a person (never a bot, never this App). Authorization:
//! `author_association` is only a cheap pre-filter (someone who is not an
//! owner, member or collaborator cannot hold triage or more); the decision
//! comes from GitHub's collaborator-permission API, cached per repository
//! and user id for a short TTL, against the level the command needs (write
//! by default; `commands:` in `.github/taskmaster.yml` changes it).
//!
//! Feedback: 👀 on the comment as soon as a command is accepted, then 👍
//! when every command did what it was asked (or there was nothing to do) or
//! 👎 when one was refused or failed. A reply is posted only when there is
//! something to say (a refusal, an error, nothing to do, `/status`,
//! `/help`), and every reply starts by quoting the command with `> `, so it
//! can never be read as a command itself. Replies and reactions are GitHub
//! effects queued in the store under the delivery id, so handling a
//! delivery twice posts nothing twice. Every command and button press goes
//! to the audit log with who, what, where, when and the outcome.
//!
//! Without App credentials (dry run) there is no permission API: the
//! comment's `author_association` decides (owner → admin, member or
//! collaborator → write, anyone else → read), and that is logged.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::sync::Notify;

use crate::classify::{TaskInput, classify};
use crate::command::{Command, CommandError, CommandKind, parse_comment, quote};
use crate::dispatch::{DeliveryHandler, Handled, HandlerError};
use crate::engine::Engine;
use crate::engine::intake::{RoutingHandler, new_run};
use crate::event::{Actor, Event, IssueCommentEvent};
use crate::github::rerun::{RerunRequest, rerun_request};
use crate::github::{GitHub, InstallationId, Permission, RepoName};
use crate::repo_config::{self, Loaded, RepoConfigs};
use crate::routing::route;
use crate::store::{
    ActorKind, AuditEntry, ControlOutcome, Delivery, EffectKind, InstallationState, NewEffect,
    NewRun, NewTask, Run, RunState, RunStore, TaskFilter, TaskSource, TaskUpdate, now_ms,
};

/// `author_association` values that may hold triage access or more.
const MAY_HOLD_ACCESS: &[&str] = &["OWNER", "MEMBER", "COLLABORATOR"];

/// Runs listed by `/status` at most.
const STATUS_RUNS: i64 = 10;

/// Who this App is, to recognise its own comments, checks and mentions.
#[derive(Debug, Clone)]
pub struct AppIdentity {
    /// The App id (`check_run.app.id` of our checks); `None` in dry run.
    pub app_id: Option<i64>,
    /// The App's slug: `@<slug> retry` addresses it, `<slug>[bot]` is its account.
    pub slug: String,
}

/// Users' permissions per repository, remembered for a short time.
pub struct PermissionCache {
    ttl: Duration,
    entries: Mutex<HashMap<(String, i64), (Permission, Instant)>>,
}

impl PermissionCache {
    /// A cache whose entries are trusted for `ttl`.
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            entries: Mutex::new(HashMap::new()),
        }
    }

    fn get(&self, repository: &str, user_id: i64) -> Option<Permission> {
        let entries = self.entries.lock().expect("permission cache lock");
        entries
            .get(&(repository.to_owned(), user_id))
            .filter(|(_, at)| at.elapsed() < self.ttl)
            .map(|(p, _)| *p)
    }

    fn put(&self, repository: &str, user_id: i64, permission: Permission) {
        let mut entries = self.entries.lock().expect("permission cache lock");
        if entries.len() > 10_000 {
            entries.retain(|_, (_, at)| at.elapsed() < self.ttl);
        }
        entries.insert(
            (repository.to_owned(), user_id),
            (permission, Instant::now()),
        );
    }
}

/// The dispatcher's handler in production; see the module docs.
pub struct AppHandler {
    store: Arc<dyn RunStore>,
    github: Arc<dyn GitHub>,
    engine: Engine,
    routing: RoutingHandler,
    configs: RepoConfigs,
    permissions: PermissionCache,
    identity: AppIdentity,
    effects_wake: Option<Arc<Notify>>,
}

/// Settings of an [`AppHandler`].
pub struct AppHandlerConfig {
    pub identity: AppIdentity,
    /// How long a fetched `.github/taskmaster.yml` is used, ms.
    pub repo_config_ttl_ms: i64,
    /// How long a user's permission is trusted.
    pub permission_ttl: Duration,
    /// Woken when replies or reactions are queued (the outbox's waker).
    pub effects_wake: Option<Arc<Notify>>,
}

/// Where a command came from and where its answers go.
struct Invocation<'a> {
    delivery: &'a Delivery,
    installation: Option<i64>,
    repository: String,
    /// The PR or issue to reply on.
    number: Option<u64>,
    /// The comment to react to (comments only).
    comment_id: Option<i64>,
    actor: &'a Actor,
    /// The comment's `author_association` (`None` for buttons).
    association: Option<&'a str>,
    /// The run a button was pressed on.
    run_id: Option<i64>,
    /// What audit calls it: `command` or `button`.
    via: &'static str,
}

/// How one command ended.
enum Outcome {
    /// Done; reply only when `Some`.
    Done(Option<String>),
    /// Nothing to do; say why.
    Noop(String),
    /// Refused (permission) or impossible (no such run or workflow); say why.
    Refused(String),
    /// Runs to create with the delivery.
    Start(Vec<NewRun>),
}

/// Queued effects of one delivery, numbered in order.
struct Effects<'a> {
    inv: &'a Invocation<'a>,
    source: String,
    list: Vec<NewEffect>,
    next_seq: i64,
}

impl<'a> Effects<'a> {
    /// Effects keyed by the delivery (and, for a button, its run: one
    /// `check_suite` delivery acts on several runs).
    fn new(inv: &'a Invocation<'a>) -> Self {
        let source = match (inv.via, inv.run_id) {
            ("button", Some(run)) => format!("{}#{run}", inv.delivery.delivery_id),
            _ => inv.delivery.delivery_id.clone(),
        };
        Self {
            inv,
            source,
            list: Vec::new(),
            next_seq: 0,
        }
    }

    fn push(&mut self, kind: EffectKind, target: i64, body: String) {
        self.list.push(NewEffect {
            source: self.source.clone(),
            seq: self.next_seq,
            installation_id: self.inv.installation,
            repository: self.inv.repository.clone(),
            kind,
            target,
            body,
        });
        self.next_seq += 1;
    }

    fn react(&mut self, content: &str) {
        if let Some(id) = self.inv.comment_id {
            self.push(EffectKind::Reaction, id, content.to_owned());
        }
    }

    fn reply(&mut self, command_text: &str, message: &str) {
        if let Some(number) = self.inv.number {
            let body = format!(
                "{}\n\n@{} {message}",
                quote(command_text.trim()),
                self.inv.actor.login
            );
            self.push(EffectKind::Comment, number as i64, body);
        }
    }
}

impl AppHandler {
    /// A handler acting through `engine` (control operations, new runs) and
    /// `github` (permissions, configuration files).
    pub fn new(
        store: Arc<dyn RunStore>,
        github: Arc<dyn GitHub>,
        engine: Engine,
        config: AppHandlerConfig,
    ) -> Self {
        let workflows = engine.workflows().clone();
        Self {
            routing: RoutingHandler::new(store.clone(), workflows.clone(), Some(engine.clone())),
            configs: RepoConfigs::new(
                store.clone(),
                github.clone(),
                workflows,
                engine.agent_names(),
                config.repo_config_ttl_ms,
            ),
            permissions: PermissionCache::new(config.permission_ttl),
            identity: config.identity,
            effects_wake: config.effects_wake,
            store,
            github,
            engine,
        }
    }

    async fn installation_event(&self, event: &Event) -> Result<Option<Handled>, HandlerError> {
        match event {
            Event::Installation(e) => {
                let state = match e.action.as_str() {
                    "deleted" => InstallationState::Deleted,
                    "suspend" => InstallationState::Suspended,
                    _ => InstallationState::Active,
                };
                let login = e.installation.account.as_ref().map(|a| a.login.as_str());
                self.store
                    .set_installation(e.installation.id, login, state)
                    .await?;
                if e.action == "created" && !e.repositories.is_empty() {
                    let added: Vec<String> =
                        e.repositories.iter().map(|r| r.full_name.clone()).collect();
                    self.store
                        .update_installation_repositories(e.installation.id, &added, &[])
                        .await?;
                }
                tracing::info!(installation = e.installation.id, action = %e.action,
                    state = state.as_str(), "installation recorded");
                Ok(Some(Handled::Done))
            }
            Event::InstallationRepositories(e) => {
                let added: Vec<String> = e
                    .repositories_added
                    .iter()
                    .map(|r| r.full_name.clone())
                    .collect();
                let removed: Vec<String> = e
                    .repositories_removed
                    .iter()
                    .map(|r| r.full_name.clone())
                    .collect();
                self.store
                    .update_installation_repositories(e.installation.id, &added, &removed)
                    .await?;
                Ok(Some(Handled::Done))
            }
            _ => Ok(None),
        }
    }

    /// The permission of `actor` on `repository`, from the cache or GitHub.
    async fn permission(&self, inv: &Invocation<'_>) -> Result<Permission, HandlerError> {
        if self.github.is_dry_run() {
            let p = match inv.association.unwrap_or("NONE") {
                "OWNER" => Permission::Admin,
                "MEMBER" | "COLLABORATOR" => Permission::Write,
                _ => Permission::Read,
            };
            tracing::warn!(user = %inv.actor.login, permission = ?p,
                "DRY RUN: no permission API without App credentials; author_association decides");
            return Ok(p);
        }
        if let Some(p) = self.permissions.get(&inv.repository, inv.actor.id) {
            return Ok(p);
        }
        let installation = inv
            .installation
            .ok_or_else(|| HandlerError::Permanent("the delivery names no installation".into()))?;
        let repo =
            RepoName::parse(&inv.repository).map_err(|e| HandlerError::Permanent(e.to_string()))?;
        let p = self
            .github
            .collaborator_permission(InstallationId(installation as u64), &repo, &inv.actor.login)
            .await
            .map_err(|e| {
                if e.is_transient() {
                    HandlerError::Transient(format!("permission check: {e}"))
                } else {
                    HandlerError::Permanent(format!("permission check: {e}"))
                }
            })?;
        self.permissions.put(&inv.repository, inv.actor.id, p);
        Ok(p)
    }

    /// Whether `inv.actor` may use `kind` here; `Err(reason)` when not.
    async fn authorize(
        &self,
        inv: &Invocation<'_>,
        kind: CommandKind,
        config: &Loaded,
    ) -> Result<Result<(), String>, HandlerError> {
        let needed = config.config.permission_for(kind);
        if needed <= Permission::Read {
            return Ok(Ok(()));
        }
        if let Some(association) = inv.association
            && !MAY_HOLD_ACCESS.contains(&association)
            && !self.github.is_dry_run()
        {
            return Ok(Err(format!(
                "`/{}` needs {} access to this repository, and you are not one of its owners, members or collaborators.",
                kind.name(),
                level_name(needed)
            )));
        }
        let has = match self.permission(inv).await {
            Ok(p) => p,
            Err(HandlerError::Permanent(e)) => {
                tracing::error!(user = %inv.actor.login, error = %e, "cannot check a user's permission");
                return Ok(Err(
                    "taskmaster could not check your permission on this repository, so it did nothing."
                        .into(),
                ));
            }
            Err(e) => return Err(e),
        };
        if has >= needed {
            Ok(Ok(()))
        } else {
            Ok(Err(format!(
                "`/{}` needs {} access to this repository; you have {}.",
                kind.name(),
                level_name(needed),
                level_name(has)
            )))
        }
    }

    async fn audit(&self, inv: &Invocation<'_>, action: String, target: String, outcome: &str) {
        let entry = AuditEntry {
            id: 0,
            at: now_ms(),
            actor_kind: ActorKind::GithubUser,
            actor: inv.actor.login.clone(),
            action,
            target: Some(target),
            outcome: outcome.to_owned(),
            detail: Some(serde_json::json!({
                "user_id": inv.actor.id,
                "delivery": inv.delivery.delivery_id,
                "comment_id": inv.comment_id,
                "run_id": inv.run_id,
                "via": inv.via,
            })),
        };
        if let Err(e) = self.store.append_audit(&entry).await {
            tracing::error!(error = %e, "cannot write the audit log");
        }
    }

    async fn commit_effects(&self, effects: Effects<'_>) -> Result<(), HandlerError> {
        self.queue_effects(&effects.list).await
    }

    /// Queues GitHub effects and wakes the outbox to send them.
    async fn queue_effects(&self, effects: &[NewEffect]) -> Result<(), HandlerError> {
        if effects.is_empty() {
            return Ok(());
        }
        self.store.enqueue_effects(effects).await?;
        if let Some(wake) = &self.effects_wake {
            wake.notify_one();
        }
        Ok(())
    }

    /// Keeps the task of an issue or pull request (`GET /api/tasks`): its
    /// title, body and classification, created on the first event about it
    /// and updated by later ones (`opened`, `reopened`, `edited`, `labeled`,
    /// `unlabeled`, `synchronize`) that change its title, body or
    /// classification; `updated_at` is when one last did.
    async fn record_task(&self, event: &Event) -> Result<(), HandlerError> {
        const ACTIONS: &[&str] = &[
            "opened",
            "reopened",
            "edited",
            "labeled",
            "unlabeled",
            "synchronize",
        ];
        let (source, repository, number, title, body, labels, branch) = match event {
            Event::Issues(e)
                if ACTIONS.contains(&e.action.as_str()) && !e.issue.is_pull_request() =>
            {
                (
                    TaskSource::Issue,
                    e.envelope.repository.as_ref(),
                    e.issue.number,
                    &e.issue.title,
                    e.issue.body.as_deref().unwrap_or(""),
                    &e.issue.labels,
                    None,
                )
            }
            Event::PullRequest(e) if ACTIONS.contains(&e.action.as_str()) => (
                TaskSource::PullRequest,
                e.envelope.repository.as_ref(),
                e.pull_request.number,
                &e.pull_request.title,
                e.pull_request.body.as_deref().unwrap_or(""),
                &e.pull_request.labels,
                Some(e.pull_request.head.branch.as_str()),
            ),
            _ => return Ok(()),
        };
        let Some(repository) = repository.map(|r| r.full_name.clone()) else {
            return Ok(());
        };
        let labels: Vec<String> = labels.iter().map(|l| l.name.clone()).collect();
        let classification = classify(&TaskInput {
            title,
            body,
            labels: &labels,
            branch,
        });
        let classification = serde_json::to_value(&classification).unwrap_or_default();
        let now = now_ms();
        let existing = self
            .store
            .tasks(&TaskFilter {
                repository: Some(repository.clone()),
                subject_number: Some(number as i64),
                limit: 1,
                ..TaskFilter::default()
            })
            .await?;
        match existing.first() {
            // Most events about a subject (`synchronize` on every push,
            // `labeled` with a label that does not change the class) leave
            // its task as it is: no write, so the dispatcher does not hold
            // the database's one writer for nothing.
            Some(task)
                if task.title == *title
                    && task.body == body
                    && task.classification == classification => {}
            Some(task) => {
                self.store
                    .update_task(
                        task.id,
                        &TaskUpdate {
                            title: Some(title.clone()),
                            body: Some(body.to_owned()),
                            classification: Some(classification),
                            updated_at: now,
                            ..TaskUpdate::default()
                        },
                    )
                    .await?;
            }
            None => {
                self.store
                    .create_task(&NewTask {
                        source,
                        repository: Some(repository),
                        subject_number: Some(number as i64),
                        title: title.clone(),
                        body: body.to_owned(),
                        classification,
                        created_by: "github".into(),
                        created_at: now,
                    })
                    .await?;
            }
        }
        Ok(())
    }

    async fn comment(
        &self,
        delivery: &Delivery,
        event: &Event,
        e: &IssueCommentEvent,
    ) -> Result<Handled, HandlerError> {
        let user = &e.comment.user;
        if e.action != "created" {
            return Ok(Handled::Ignored(format!(
                "comment {}: only new comments run commands",
                e.action
            )));
        }
        let own = format!("{}[bot]", self.identity.slug);
        if user.is_bot() || user.login.eq_ignore_ascii_case(&own) {
            return Ok(Handled::Ignored(format!(
                "comment by bot `{}`: bots cannot run commands",
                user.login
            )));
        }
        let lines = parse_comment(&e.comment.body, &self.identity.slug);
        if lines.is_empty() {
            return Ok(Handled::Ignored("no command in the comment".into()));
        }
        let Some(repository) = e.envelope.repository.as_ref().map(|r| r.full_name.clone()) else {
            return Ok(Handled::Ignored("comment without a repository".into()));
        };
        let inv = Invocation {
            delivery,
            installation: e.envelope.installation.map(|i| i.id),
            repository,
            number: Some(e.issue.number),
            comment_id: Some(e.comment.id),
            actor: user,
            association: Some(&e.comment.author_association),
            run_id: None,
            via: "command",
        };
        let config = self.configs.get(inv.installation, &inv.repository).await;
        let mut effects = Effects::new(&inv);
        let mut acknowledged = false;
        let mut all_ok = true;
        let mut runs = Vec::new();
        for line in &lines {
            let command = match &line.parsed {
                Ok(c) => c.clone(),
                Err(err) => {
                    all_ok = false;
                    let mut message = format!("{err}.");
                    if matches!(err, CommandError::Unknown { .. }) {
                        message.push_str("\n\n");
                        message.push_str(&help_for(&self.identity.slug, &config));
                    }
                    effects.reply(&line.text, &message);
                    self.audit(&inv, "command.invalid".into(), subject(&inv), "refused")
                        .await;
                    continue;
                }
            };
            let kind = command.kind();
            if let Err(why) = self.authorize(&inv, kind, &config).await? {
                all_ok = false;
                tracing::info!(user = %user.login, command = %command, "command refused: {why}");
                effects.reply(&line.text, &why);
                self.audit(
                    &inv,
                    format!("command.{}", kind.name()),
                    subject(&inv),
                    "refused",
                )
                .await;
                continue;
            }
            if !acknowledged {
                // 👀 at once: sent before the commands act.
                let mut eyes = Effects::new(&inv);
                eyes.react("eyes");
                self.commit_effects(eyes).await?;
                effects.next_seq = 1;
                acknowledged = true;
            }
            let outcome = self.execute(&inv, event, &command, &config).await?;
            let (result, reply) = match outcome {
                Outcome::Done(reply) => ("ok", reply),
                Outcome::Noop(reply) => ("noop", Some(reply)),
                Outcome::Refused(reply) => {
                    all_ok = false;
                    ("refused", Some(reply))
                }
                Outcome::Start(mut new) => {
                    runs.append(&mut new);
                    ("ok", None)
                }
            };
            tracing::info!(user = %user.login, command = %command, outcome = result, "command handled");
            if let Some(reply) = reply {
                effects.reply(&line.text, &reply);
            }
            self.audit(
                &inv,
                format!("command.{}", kind.name()),
                subject(&inv),
                result,
            )
            .await;
        }
        if acknowledged || !all_ok {
            effects.react(if all_ok { "+1" } else { "-1" });
        }
        self.commit_effects(effects).await?;
        Ok(if runs.is_empty() {
            Handled::Done
        } else {
            Handled::Start(runs)
        })
    }

    /// The button's run, else the ids of the subject's newest `limit` runs
    /// (newest first).
    async fn run_ids(&self, inv: &Invocation<'_>, limit: i64) -> Result<Vec<i64>, HandlerError> {
        Ok(match (inv.run_id, inv.number) {
            (Some(id), _) => vec![id],
            (None, Some(n)) => {
                self.store
                    .subject_runs(&inv.repository, n as i64, limit)
                    .await?
            }
            (None, None) => Vec::new(),
        })
    }

    /// The runs a command acts on: the button's run, else those of the
    /// subject's newest `limit` runs that `keep` selects.
    async fn target_runs(
        &self,
        inv: &Invocation<'_>,
        limit: i64,
        keep: impl Fn(&Run) -> bool,
    ) -> Result<Vec<Run>, HandlerError> {
        let ids = self.run_ids(inv, limit).await?;
        let mut out = Vec::new();
        for id in ids {
            if let Some(snap) = self.store.run(id).await?
                && snap.run.repository.as_deref() == Some(inv.repository.as_str())
                && keep(&snap.run)
            {
                out.push(snap.run);
            }
        }
        Ok(out)
    }

    async fn execute(
        &self,
        inv: &Invocation<'_>,
        event: &Event,
        command: &Command,
        config: &Loaded,
    ) -> Result<Outcome, HandlerError> {
        let active = |r: &Run| !r.state.is_terminal();
        Ok(match command {
            Command::Help => Outcome::Done(Some(help_for(&self.identity.slug, config))),
            Command::Status => Outcome::Done(Some(self.status(inv).await?)),
            Command::Retry { step } => {
                let Some(run) = self.target_runs(inv, 1, |_| true).await?.into_iter().next() else {
                    return Ok(Outcome::Refused("there is no run here to retry.".into()));
                };
                match self.engine.retry(run.id, step.as_deref()).await? {
                    ControlOutcome::Changed => Outcome::Done(None),
                    ControlOutcome::Unchanged => Outcome::Noop(format!(
                        "nothing to retry in run {} (`{}`): no step failed, was cancelled or timed out, or it is still running.",
                        run.id, run.workflow
                    )),
                    ControlOutcome::NotFound => Outcome::Refused(match step {
                        Some(s) => {
                            format!("run {} (`{}`) has no step `{s}`.", run.id, run.workflow)
                        }
                        None => format!("run {} no longer exists.", run.id),
                    }),
                }
            }
            Command::Cancel | Command::Pause | Command::Resume | Command::Approve => {
                let runs = self.target_runs(inv, 50, active).await?;
                let mut changed = Vec::new();
                for run in &runs {
                    let outcome = match command {
                        Command::Cancel => {
                            self.engine
                                .cancel(run.id, &format!("cancelled by @{}", inv.actor.login))
                                .await?
                        }
                        Command::Pause => self.engine.pause(run.id).await?,
                        Command::Resume => self.engine.resume(run.id).await?,
                        _ => self.engine.approve(run.id, &inv.actor.login).await?,
                    };
                    if outcome == ControlOutcome::Changed {
                        changed.push(run.id);
                    }
                }
                if changed.is_empty() {
                    let what = match command {
                        Command::Cancel => "no active run to cancel",
                        Command::Pause => "no running run to pause",
                        Command::Resume => "no paused run to resume",
                        _ => "no run waits for approval",
                    };
                    Outcome::Noop(format!("{what} here."))
                } else {
                    Outcome::Done(None)
                }
            }
            Command::Run { workflow } => self.run_workflow(inv, event, workflow, config).await?,
            Command::Fix { .. } => self.fix(inv, event, config).await?,
        })
    }

    /// `/fix [instructions]`: a run of the repository's fix workflow (the
    /// one whose `on.issue_comment.command` is `fix`, else the one named
    /// `fix`) on this PR or issue, started from this comment, so its prompts
    /// read the comment as the request (`comment.body`, untrusted data).
    /// Keyed by this delivery. Its change comes back as
    /// [`crate::publish`] says: a commit on a same-repository PR, a review
    /// of suggestions on a fork's, a draft pull request for an issue.
    async fn fix(
        &self,
        inv: &Invocation<'_>,
        event: &Event,
        config: &Loaded,
    ) -> Result<Outcome, HandlerError> {
        let overridden = config.config.apply(self.engine.workflows());
        let workflows = overridden.as_ref().unwrap_or(self.engine.workflows());
        let wf = workflows
            .iter()
            .find(|w| {
                w.triggers
                    .issue_comment
                    .as_ref()
                    .is_some_and(|t| t.command == "fix")
            })
            .or_else(|| workflows.get("fix"))
            .filter(|w| config.config.workflow_enabled(&w.name, w.enabled));
        let Some(wf) = wf else {
            return Ok(Outcome::Refused(
                "this repository has no fix workflow turned on: taskmaster ships \
                 `workflows/fix.yml` (a workflow with `on: { issue_comment: { command: fix } }` \
                 and a step with `changes: true`)."
                    .into(),
            ));
        };
        if !wf.changes_files() {
            return Ok(Outcome::Refused(format!(
                "the fix workflow `{}` changes no files: give its coding step `changes: true`.",
                wf.name
            )));
        }
        let estimates = self.store.step_estimates(&wf.name).await?;
        let classification = route(event, workflows)
            .into_iter()
            .find_map(|d| d.classification);
        let run = new_run(
            workflows,
            wf,
            event,
            &inv.delivery.delivery_id,
            &format!("@{} asked for a fix (`/fix`)", inv.actor.login),
            classification,
            None,
            &estimates,
            crate::engine::EngineConfig::default().default_estimate_ms,
        );
        Ok(Outcome::Start(vec![run]))
    }

    /// `/run <workflow>` (and the Re-run button): a new run of `workflow`
    /// on this PR or issue, from the newest pull-request event of the
    /// subject when there is one (so a PR run gets its head commit and check
    /// run), else from this event. Keyed by this delivery.
    async fn run_workflow(
        &self,
        inv: &Invocation<'_>,
        event: &Event,
        name: &str,
        config: &Loaded,
    ) -> Result<Outcome, HandlerError> {
        let overridden = config.config.apply(self.engine.workflows());
        let workflows = overridden.as_ref().unwrap_or(self.engine.workflows());
        let wf = workflows.get(name).or_else(|| {
            workflows.iter().find(|w| {
                w.triggers
                    .issue_comment
                    .as_ref()
                    .is_some_and(|t| t.command == name)
            })
        });
        let Some(wf) = wf else {
            let known: Vec<&str> = workflows
                .iter()
                .filter(|w| config.config.workflow_enabled(&w.name, w.enabled))
                .map(|w| w.name.as_str())
                .collect();
            return Ok(Outcome::Refused(format!(
                "there is no workflow `{name}`; the workflows here are: {}.",
                if known.is_empty() {
                    "(none)".to_owned()
                } else {
                    known.join(", ")
                }
            )));
        };
        if !config.config.workflow_enabled(&wf.name, wf.enabled) {
            return Ok(Outcome::Refused(format!(
                "the workflow `{}` is turned off for this repository.",
                wf.name
            )));
        }
        // The subject's newest run from a pull_request event gives the PR context.
        let mut source: Option<Event> = None;
        for id in self.run_ids(inv, 20).await? {
            let Some(snap) = self.store.run(id).await? else {
                continue;
            };
            if snap.run.event != "pull_request" && inv.run_id.is_none() {
                continue;
            }
            if let Some(d) = self.store.delivery(&snap.run.delivery_id).await?
                && let Ok(ev) = Event::parse(&d.event, &d.payload)
            {
                source = Some(ev);
                break;
            }
        }
        let event = source.as_ref().unwrap_or(event);
        let estimates = self.store.step_estimates(&wf.name).await?;
        let classification = route(event, workflows)
            .into_iter()
            .find_map(|d| d.classification);
        let run = new_run(
            workflows,
            wf,
            event,
            &inv.delivery.delivery_id,
            &format!("@{} asked for it (`/run {}`)", inv.actor.login, wf.name),
            classification,
            None,
            &estimates,
            crate::engine::EngineConfig::default().default_estimate_ms,
        );
        Ok(Outcome::Start(vec![run]))
    }

    async fn status(&self, inv: &Invocation<'_>) -> Result<String, HandlerError> {
        let Some(number) = inv.number else {
            return Ok("no pull request or issue here.".into());
        };
        let ids = self
            .store
            .subject_runs(&inv.repository, number as i64, STATUS_RUNS)
            .await?;
        if ids.is_empty() {
            return Ok("taskmaster has no runs here yet.".into());
        }
        let mut out = String::from(
            "here are the runs of taskmaster on this conversation, newest first:\n\n\
             | run | workflow | state | steps |\n| --- | --- | --- | --- |\n",
        );
        for id in ids {
            let Some(snap) = self.store.run(id).await? else {
                continue;
            };
            let state = if snap.run.waiting_approval && snap.run.state == RunState::Queued {
                "waiting_approval".to_owned()
            } else {
                snap.run.state.to_string()
            };
            let steps: Vec<String> = snap
                .steps
                .iter()
                .map(|s| format!("`{}` {}", s.step, s.state.as_str()))
                .collect();
            out.push_str(&format!(
                "| {} | `{}` | {} | {} |\n",
                snap.run.id,
                snap.run.workflow,
                state,
                steps.join(", ")
            ));
        }
        Ok(out)
    }

    /// `check_run.rerequested`, `check_suite.rerequested` and our buttons.
    async fn rerun(
        &self,
        delivery: &Delivery,
        event: &Event,
        request: RerunRequest,
    ) -> Result<Handled, HandlerError> {
        let Some(actor) = event.sender() else {
            return Ok(Handled::Ignored("re-run request without a sender".into()));
        };
        if actor.is_bot() {
            return Ok(Handled::Ignored(format!(
                "re-run requested by bot `{}`",
                actor.login
            )));
        }
        let installation = match event {
            Event::CheckRun(e) => e.envelope.installation.map(|i| i.id),
            Event::CheckSuite(e) => e.envelope.installation.map(|i| i.id),
            _ => None,
        };
        let (repository, run_ids, command, action) = match &request {
            RerunRequest::RetryRun {
                repository, run_id, ..
            } => (
                repository.clone(),
                run_id.parse::<i64>().ok().into_iter().collect::<Vec<_>>(),
                Command::Retry { step: None },
                "check_run.rerequested",
            ),
            RerunRequest::RerunCommit {
                repository,
                head_sha,
                ..
            } => {
                // The newest run of each workflow on that commit.
                let ids = self.store.runs_for_commit(repository, head_sha).await?;
                let mut newest: HashMap<String, i64> = HashMap::new();
                for id in ids {
                    if let Some(snap) = self.store.run(id).await? {
                        newest.insert(snap.run.workflow.clone(), id);
                    }
                }
                let mut ids: Vec<i64> = newest.into_values().collect();
                ids.sort_unstable();
                (
                    repository.clone(),
                    ids,
                    Command::Retry { step: None },
                    "check_suite.rerequested",
                )
            }
            RerunRequest::Action {
                repository,
                run_id,
                command,
                ..
            } => (
                repository.clone(),
                run_id.parse::<i64>().ok().into_iter().collect(),
                command.clone(),
                "check_run.requested_action",
            ),
        };
        if run_ids.is_empty() {
            return Ok(Handled::Ignored(format!("{action}: no run of ours")));
        }
        let config = self.configs.get(installation, &repository).await;
        let mut runs = Vec::new();
        for run_id in run_ids {
            let Some(snap) = self.store.run(run_id).await? else {
                continue;
            };
            if snap.run.repository.as_deref() != Some(repository.as_str()) {
                continue;
            }
            let inv = Invocation {
                delivery,
                installation,
                repository: repository.clone(),
                number: snap.run.subject_number.map(|n| n as u64),
                comment_id: None,
                actor,
                association: None,
                run_id: Some(run_id),
                via: "button",
            };
            let kind = command.kind();
            let mut effects = Effects::new(&inv);
            if let Err(why) = self.authorize(&inv, kind, &config).await? {
                effects.reply(&format!("{command} (from the check run)"), &why);
                self.commit_effects(effects).await?;
                self.audit(&inv, action.into(), format!("run:{run_id}"), "refused")
                    .await;
                continue;
            }
            let mut outcome = self.execute(&inv, event, &command, &config).await?;
            // Re-run of a run with nothing to retry: run it again afresh.
            if action != "check_run.requested_action"
                && matches!(outcome, Outcome::Noop(_))
                && snap.run.state.is_terminal()
            {
                outcome = self
                    .run_workflow(&inv, event, &snap.run.workflow, &config)
                    .await?;
            }
            let result = match outcome {
                Outcome::Done(Some(reply)) | Outcome::Noop(reply) => {
                    effects.reply(&format!("{command} (from the check run)"), &reply);
                    "ok"
                }
                Outcome::Done(None) => "ok",
                Outcome::Refused(reply) => {
                    effects.reply(&format!("{command} (from the check run)"), &reply);
                    "refused"
                }
                Outcome::Start(mut new) => {
                    // Several runs from one delivery need distinct keys.
                    for r in &mut new {
                        r.delivery_id = format!("{}#{}", delivery.delivery_id, run_id);
                    }
                    runs.append(&mut new);
                    "ok"
                }
            };
            self.commit_effects(effects).await?;
            self.audit(&inv, action.into(), format!("run:{run_id}"), result)
                .await;
        }
        Ok(if runs.is_empty() {
            Handled::Done
        } else {
            Handled::Start(runs)
        })
    }
}

#[async_trait]
impl DeliveryHandler for AppHandler {
    async fn handle(&self, delivery: &Delivery) -> Result<Handled, HandlerError> {
        let event = Event::parse(&delivery.event, &delivery.payload)
            .map_err(|e| HandlerError::Permanent(format!("the payload does not parse: {e}")))?;
        if let Some(handled) = self.installation_event(&event).await? {
            return Ok(handled);
        }
        if let Some(installation) = delivery.installation_id
            && let Some(state @ (InstallationState::Suspended | InstallationState::Deleted)) =
                self.store.installation_state(installation).await?
        {
            return Ok(Handled::Ignored(format!(
                "installation {installation} is {}",
                state.as_str()
            )));
        }
        match &event {
            Event::IssueComment(e) => return self.comment(delivery, &event, e).await,
            Event::Push(e) => {
                if let Some(repo) = &e.envelope.repository
                    && e.touches_default_branch_file(repo_config::PATH)
                {
                    self.configs.forget(&repo.full_name).await;
                    return Ok(Handled::Ignored(format!(
                        "{} changed on the default branch: its cached copy was dropped",
                        repo_config::PATH
                    )));
                }
                return Ok(Handled::Ignored("push: nothing to do".into()));
            }
            Event::CheckRun(_) | Event::CheckSuite(_) => {
                let Some(app_id) = self.identity.app_id else {
                    return Ok(Handled::Ignored(
                        "re-runs need the App id (dry run has none)".into(),
                    ));
                };
                return match rerun_request(&event, app_id) {
                    Some(request) => self.rerun(delivery, &event, request).await,
                    None => Ok(Handled::Ignored(format!(
                        "{} is not about a run of ours",
                        event.qualified_name()
                    ))),
                };
            }
            _ => {}
        }
        self.record_task(&event).await?;
        let Some(repository) = event.repository().map(|r| r.full_name.clone()) else {
            return self
                .routing
                .route_parsed(delivery, &event, self.routing.workflows())
                .await;
        };
        let config = self
            .configs
            .get(delivery.installation_id, &repository)
            .await;
        let overridden = config.config.apply(self.engine.workflows());
        let set = overridden.as_ref().unwrap_or(self.routing.workflows());
        let handled = self.routing.route_parsed(delivery, &event, set).await?;
        let Handled::Start(runs) = handled else {
            return Ok(handled);
        };
        if let (Some(error), Some(number)) = (&config.error, runs[0].subject_number) {
            // Reported once per distinct broken file (keyed by its text).
            self.queue_effects(&[NewEffect {
                source: format!("config:{repository}:{error}"),
                seq: 0,
                installation_id: delivery.installation_id,
                repository: repository.clone(),
                kind: EffectKind::Comment,
                target: number,
                body: format!(
                    "taskmaster could not use this repository's configuration and applies its defaults:\n\n```\n{error}\n```"
                ),
            }])
            .await?;
        }
        let workflows = self.engine.workflows();
        let (kept, dropped): (Vec<NewRun>, Vec<NewRun>) = runs.into_iter().partition(|r| {
            workflows
                .get(&r.workflow)
                .is_none_or(|w| config.config.workflow_enabled(&w.name, w.enabled))
        });
        if kept.is_empty() {
            let names: Vec<&str> = dropped.iter().map(|r| r.workflow.as_str()).collect();
            return Ok(Handled::Ignored(format!(
                "turned off by {}: {}",
                repo_config::PATH,
                names.join(", ")
            )));
        }
        Ok(Handled::Start(kept))
    }

    async fn committed(&self) {
        self.engine.wake();
    }
}

fn subject(inv: &Invocation<'_>) -> String {
    match inv.number {
        Some(n) => format!("{}#{n}", inv.repository),
        None => inv.repository.clone(),
    }
}

fn level_name(p: Permission) -> &'static str {
    match p {
        Permission::None => "no",
        Permission::Read => "read",
        Permission::Triage => "triage",
        Permission::Write => "write",
        Permission::Maintain => "maintain",
        Permission::Admin => "admin",
    }
}

/// `/help` with this repository's permission levels.
fn help_for(slug: &str, config: &Loaded) -> String {
    crate::command::help_markdown_with(slug, |kind| level_name(config.config.permission_for(kind)))
}
