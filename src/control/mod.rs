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

mod commands;
mod installations;
mod permissions;
mod reruns;
mod tasks;

use commands::{Effects, Invocation, Outcome};
pub use permissions::PermissionCache;
use permissions::level_name;

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

/// Reply comments allowed per user per conversation (PR or issue) within
/// [`REPLY_WINDOW`]; more are not posted (the reaction still says how the
/// commands went).
pub const REPLIES_PER_USER: usize = 5;
/// Reply comments allowed per conversation, whoever asks, within the window.
pub const REPLIES_PER_CONVERSATION: usize = 20;
/// The reply rate limit's window.
pub const REPLY_WINDOW: Duration = Duration::from_secs(10 * 60);

/// A sliding-window limit on reply comments, per user and conversation and
/// per conversation, so one person (or many) cannot make the App flood a
/// thread or the outbox. Kept per process.
#[derive(Default)]
pub struct ReplyLimiter {
    /// Per `(repository, number)`: who was answered, when.
    sent: Mutex<HashMap<Conversation, Vec<(i64, Instant)>>>,
}

/// A pull request or issue: `(repository, number)`.
type Conversation = (RepoName, u64);

impl ReplyLimiter {
    /// Whether one more reply by `user` on `repository#number` may go out
    /// now (and counts it when so).
    pub fn allow(&self, repository: &RepoName, number: Option<u64>, user: i64) -> bool {
        let mut sent = self.sent.lock().expect("reply limiter lock");
        if sent.len() > 10_000 {
            sent.retain(|_, v| v.iter().any(|(_, at)| at.elapsed() < REPLY_WINDOW));
        }
        let list = sent
            .entry((repository.clone(), number.unwrap_or(0)))
            .or_default();
        list.retain(|(_, at)| at.elapsed() < REPLY_WINDOW);
        let by_user = list.iter().filter(|(u, _)| *u == user).count();
        if by_user >= REPLIES_PER_USER || list.len() >= REPLIES_PER_CONVERSATION {
            return false;
        }
        list.push((user, Instant::now()));
        true
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
    replies: ReplyLimiter,
    identity: AppIdentity,
    effects_wake: Option<Arc<Notify>>,
}

/// Settings of an [`AppHandler`].
pub struct AppHandlerConfig {
    pub identity: AppIdentity,
    /// How long a fetched `.github/taskmaster.yml` is used.
    pub repo_config_ttl: Duration,
    /// How long a user's permission is trusted.
    pub permission_ttl: Duration,
    /// Woken when replies or reactions are queued (the outbox's waker).
    pub effects_wake: Option<Arc<Notify>>,
    /// Runs per pull request or issue in any hour at most (0: no limit);
    /// the App's own account (from `identity`) never starts runs either
    /// (see [`crate::engine::LoopBreaker`]).
    pub max_runs_per_subject_per_hour: u32,
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
            routing: RoutingHandler::new(store.clone(), workflows.clone(), Some(engine.clone()))
                .with_loop_breaker(crate::engine::LoopBreaker {
                    own_login: Some(format!("{}[bot]", config.identity.slug)),
                    max_runs_per_subject_per_hour: config.max_runs_per_subject_per_hour,
                }),
            configs: RepoConfigs::new(
                store.clone(),
                github.clone(),
                workflows,
                engine.agent_names(),
                config.repo_config_ttl,
            ),
            permissions: PermissionCache::new(config.permission_ttl),
            replies: ReplyLimiter::default(),
            identity: config.identity,
            effects_wake: config.effects_wake,
            store,
            github,
            engine,
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

    /// Queues a delivery's effects; its one reply only while the user is
    /// within the reply rate limit for this conversation ([`ReplyLimiter`]).
    async fn commit_effects(&self, effects: Effects<'_>) -> Result<(), HandlerError> {
        let inv = effects.inv;
        let may_reply = effects.replies.is_empty()
            || self
                .replies
                .allow(&inv.repository, inv.number, inv.actor.id);
        if !may_reply {
            tracing::warn!(user = %inv.actor.login, repository = %inv.repository,
                number = ?inv.number, "reply rate limit reached; the answer is not posted");
        }
        self.queue_effects(&effects.finish(may_reply)).await
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
        let approved_by_label = self.approve_by_label(delivery, &event, &config).await?;
        let overridden = config.config.apply(self.engine.workflows());
        let set = overridden.as_ref().unwrap_or(self.routing.workflows());
        let handled = self.routing.route_parsed(delivery, &event, set).await?;
        let Handled::Start(mut runs) = handled else {
            return Ok(handled);
        };
        if approved_by_label {
            for run in &mut runs {
                run.needs_approval = None;
            }
        }
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
