//! Comment commands: parsed, authorized, acted on, answered and audited
//! (see the module docs of [`super`]).

use super::*;
use crate::engine::forecast::Forecast;
use crate::store::RunId;

/// Where a command came from and where its answers go.
pub(super) struct Invocation<'a> {
    pub(super) delivery: &'a Delivery,
    pub(super) installation: Option<InstallationId>,
    pub(super) repository: RepoName,
    /// The PR or issue to reply on.
    pub(super) number: Option<u64>,
    /// The comment to react to (comments only).
    pub(super) comment_id: Option<i64>,
    pub(super) actor: &'a Actor,
    /// The comment's `author_association` (`None` for buttons).
    pub(super) association: Option<&'a str>,
    /// The run a button was pressed on.
    pub(super) run_id: Option<i64>,
    /// What audit calls it: `command` or `button`.
    pub(super) via: &'static str,
    /// When the comment was written (epoch ms, GitHub's clock); `None` for
    /// buttons.
    pub(super) written_at: Option<i64>,
}

/// How one command ended.
pub(super) enum Outcome {
    /// Done; reply only when `Some`.
    Done(Option<String>),
    /// Nothing to do; say why.
    Noop(String),
    /// Refused (permission) or impossible (no such run or workflow); say why.
    Refused(String),
    /// Runs to create with the delivery.
    Start(Vec<NewRun>),
}

/// Commands read from one comment at most; the lines after them are
/// answered once, together.
pub const MAX_COMMANDS_PER_COMMENT: usize = 10;

/// Queued effects of one delivery, numbered in order. Every answer to one
/// comment (or button press) goes out as **one** reply comment.
pub(super) struct Effects<'a> {
    pub(super) inv: &'a Invocation<'a>,
    pub(super) source: String,
    pub(super) list: Vec<NewEffect>,
    pub(super) next_seq: i64,
    /// Answers gathered for the one reply.
    pub(super) replies: Vec<String>,
}

impl<'a> Effects<'a> {
    /// Effects keyed by the delivery (and, for a button, its run: one
    /// `check_suite` delivery acts on several runs).
    pub(super) fn new(inv: &'a Invocation<'a>) -> Self {
        let source = match (inv.via, inv.run_id) {
            ("button", Some(run)) => format!("{}#{run}", inv.delivery.delivery_id),
            _ => inv.delivery.delivery_id.clone(),
        };
        Self {
            inv,
            source,
            list: Vec::new(),
            next_seq: 0,
            replies: Vec::new(),
        }
    }

    pub(super) fn push(&mut self, kind: EffectKind, target: i64, body: String) {
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

    pub(super) fn react(&mut self, content: &str) {
        if let Some(id) = self.inv.comment_id {
            self.push(EffectKind::Reaction, id, content.to_owned());
        }
    }

    /// An answer to `command_text`, quoted first so it can never read as a
    /// command itself; sent with the others by [`Effects::finish`].
    pub(super) fn reply(&mut self, command_text: &str, message: &str) {
        self.replies.push(format!(
            "{}\n\n@{} {message}",
            quote(command_text.trim()),
            self.inv.actor.login
        ));
    }

    /// The effects to queue: the reactions, then one comment holding every
    /// answer (when there is one and `may_reply`).
    pub(super) fn finish(mut self, may_reply: bool) -> Vec<NewEffect> {
        let start = self.list.first().map_or(self.next_seq, |e| e.seq);
        let replies = std::mem::take(&mut self.replies);
        if let (Some(number), false, true) = (self.inv.number, replies.is_empty(), may_reply) {
            self.push(EffectKind::Comment, number as i64, replies.join("\n\n"));
            // The reply goes before the closing reaction.
            if let Some(reply) = self.list.pop() {
                let at = self
                    .list
                    .iter()
                    .position(|e| e.kind == EffectKind::Reaction)
                    .unwrap_or(self.list.len());
                self.list.insert(at, reply);
            }
        }
        for (i, e) in self.list.iter_mut().enumerate() {
            e.seq = start + i as i64;
        }
        self.list
    }
}

impl AppHandler {
    pub(super) async fn comment(
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
        let mut lines = parse_comment(&e.comment.body, &self.identity.slug);
        if lines.is_empty() {
            return Ok(Handled::Ignored("no command in the comment".into()));
        }
        // A flood of command lines acts on the first few only.
        let extra = lines.split_off(lines.len().min(MAX_COMMANDS_PER_COMMENT));
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
            written_at: e
                .comment
                .created_at
                .as_deref()
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                .map(|t| t.timestamp_millis()),
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
        if !extra.is_empty() {
            all_ok = false;
            effects.reply(
                &extra[0].text,
                &format!(
                    "taskmaster reads at most {MAX_COMMANDS_PER_COMMENT} commands in one comment; \
                     this line and {} more after the first {MAX_COMMANDS_PER_COMMENT} were not read.",
                    extra.len() - 1
                ),
            );
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
    pub(super) async fn run_ids(
        &self,
        inv: &Invocation<'_>,
        limit: i64,
    ) -> Result<Vec<RunId>, HandlerError> {
        Ok(match (inv.run_id, inv.number) {
            (Some(id), _) => vec![RunId(id)],
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
    pub(super) async fn target_runs(
        &self,
        inv: &Invocation<'_>,
        limit: i64,
        keep: impl Fn(&Run) -> bool,
    ) -> Result<Vec<Run>, HandlerError> {
        let ids = self.run_ids(inv, limit).await?;
        let mut out = Vec::new();
        for id in ids {
            if let Some(snap) = self.store.run(id).await?
                && snap
                    .run
                    .repository
                    .as_ref()
                    .is_some_and(|r| inv.repository == *r)
                && keep(&snap.run)
            {
                out.push(snap.run);
            }
        }
        Ok(out)
    }

    pub(super) async fn execute(
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
            Command::Approve { sha } => self.approve(inv, sha.as_deref()).await?,
            Command::Cancel | Command::Pause | Command::Resume => {
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
                        _ => self.engine.resume(run.id).await?,
                    };
                    if outcome == ControlOutcome::Changed {
                        changed.push(run.id);
                    }
                }
                if changed.is_empty() {
                    let what = match command {
                        Command::Cancel => "no active run to cancel",
                        Command::Pause => "no running run to pause",
                        _ => "no paused run to resume",
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
    pub(super) async fn fix(
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
        // Gated as a `/run` is: judged on the pull request itself when the
        // subject has one (a fork's head), else on the issue.
        let source = self.subject_event(inv).await?;
        let needs_approval = self
            .approval_for_hand_started(inv, source.as_ref().unwrap_or(event), wf, config, "/fix")
            .await?;
        let forecast = Forecast::unqueued(&*self.store, &wf.name).await?;
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
            needs_approval,
            &forecast,
        );
        Ok(Outcome::Start(vec![run]))
    }

    /// The event of the subject's newest run from a `pull_request` event
    /// (any run, for a button naming its run), so a run started by hand
    /// gets the PR's head commit and is judged on the PR itself; `None`
    /// when the subject has none.
    async fn subject_event(&self, inv: &Invocation<'_>) -> Result<Option<Event>, HandlerError> {
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
                return Ok(Some(ev));
            }
        }
        Ok(None)
    }

    /// Why a run of `wf` about `event`, started by hand with `command`
    /// (`/run`, `/fix`, a Re-run button), must wait for `/approve`: the gate
    /// routing would apply ([`crate::routing::approval_needed`]), unless the
    /// asker may approve it themselves (the command's own level may be
    /// lower than `/approve`'s). `None`: it starts at once.
    ///
    /// Errors: GitHub could not tell the asker's permission for a
    /// transient reason (retried); a permanent failure counts as none.
    async fn approval_for_hand_started(
        &self,
        inv: &Invocation<'_>,
        event: &Event,
        wf: &crate::workflow::Workflow,
        config: &Loaded,
        command: &str,
    ) -> Result<Option<String>, HandlerError> {
        let Some(why) = crate::routing::approval_needed(event, wf) else {
            return Ok(None);
        };
        let needed = config.config.permission_for(CommandKind::Approve);
        let has = match self.permission(inv).await {
            Ok(p) => p,
            Err(HandlerError::Permanent(_)) => Permission::None,
            Err(e) => return Err(e),
        };
        Ok((has < needed).then(|| {
            format!(
                "{why} (@{} started it with `{command}` and cannot approve it)",
                inv.actor.login
            )
        }))
    }

    /// `/run <workflow>` (and the Re-run button): a new run of `workflow`
    /// on this PR or issue, from the newest pull-request event of the
    /// subject when there is one (so a PR run gets its head commit and check
    /// run), else from this event. Keyed by this delivery.
    pub(super) async fn run_workflow(
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
        let source = self.subject_event(inv).await?;
        let event = source.as_ref().unwrap_or(event);
        let needs_approval = self
            .approval_for_hand_started(inv, event, wf, config, "/run")
            .await?;
        let forecast = Forecast::unqueued(&*self.store, &wf.name).await?;
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
            needs_approval,
            &forecast,
        );
        Ok(Outcome::Start(vec![run]))
    }

    /// `/approve [sha]`: approves what the approver saw — the waiting runs
    /// on commit `sha` when given, else those that were created before the
    /// comment was written (a push just before the comment is not approved
    /// by it; the reply says how to approve it). A button approves its run.
    pub(super) async fn approve(
        &self,
        inv: &Invocation<'_>,
        sha: Option<&str>,
    ) -> Result<Outcome, HandlerError> {
        let runs = self
            .target_runs(inv, 50, |r| !r.state.is_terminal() && r.waiting_approval)
            .await?;
        let mut approved = Vec::new();
        let mut later = Vec::new();
        for run in &runs {
            let head = run.head_sha.as_deref().unwrap_or("").to_ascii_lowercase();
            let seen = match (sha, inv.written_at) {
                (Some(prefix), _) => head.starts_with(prefix),
                (None, Some(at)) => run.created_at <= at,
                (None, None) => true,
            };
            if !seen {
                if sha.is_none() {
                    later.push(run);
                }
                continue;
            }
            if self.engine.approve(run.id, &inv.actor.login).await? == ControlOutcome::Changed {
                approved.push(run.id);
            }
        }
        let note: Vec<String> = later
            .iter()
            .map(|r| {
                let short: String = r
                    .head_sha
                    .as_deref()
                    .unwrap_or("")
                    .chars()
                    .take(12)
                    .collect();
                format!(
                    "run {} (`{}`{}) started after your comment was written, so it was not \
                     approved: check it, then comment `/approve {short}`.",
                    r.id,
                    r.workflow,
                    if short.is_empty() {
                        String::new()
                    } else {
                        format!(" on {short}")
                    }
                )
            })
            .collect();
        Ok(match (approved.is_empty(), note.is_empty()) {
            (false, true) => Outcome::Done(None),
            (false, false) => Outcome::Done(Some(note.join("\n"))),
            (true, false) => Outcome::Noop(note.join("\n")),
            (true, true) => Outcome::Noop(match sha {
                Some(s) => format!("no run on commit `{s}` waits for approval here."),
                None => "no run waits for approval here.".into(),
            }),
        })
    }

    /// A pull request or issue labeled with the repository's
    /// `approve_label` by someone who may `/approve`: its waiting runs are
    /// approved (those made before the label), and `true` says the runs
    /// this event starts need no approval either. Anyone else's label
    /// approves nothing (audited as refused).
    pub(super) async fn approve_by_label(
        &self,
        delivery: &Delivery,
        event: &Event,
        config: &Loaded,
    ) -> Result<bool, HandlerError> {
        let Some(wanted) = config.config.approve_label.as_deref() else {
            return Ok(false);
        };
        let (action, label, number, envelope) = match event {
            Event::PullRequest(e) => (
                e.action.as_str(),
                e.label.as_ref(),
                e.pull_request.number,
                &e.envelope,
            ),
            Event::Issues(e) => (
                e.action.as_str(),
                e.label.as_ref(),
                e.issue.number,
                &e.envelope,
            ),
            _ => return Ok(false),
        };
        if action != "labeled" || !label.is_some_and(|l| l.name.eq_ignore_ascii_case(wanted)) {
            return Ok(false);
        }
        let (Some(sender), Some(repo)) = (envelope.sender.as_ref(), envelope.repository.as_ref())
        else {
            return Ok(false);
        };
        if sender.is_bot() {
            return Ok(false);
        }
        let inv = Invocation {
            delivery,
            installation: delivery.installation_id,
            repository: repo.full_name.clone(),
            number: Some(number),
            comment_id: None,
            actor: sender,
            association: None,
            run_id: None,
            via: "label",
            written_at: Some(delivery.received_at),
        };
        if let Err(why) = self.authorize(&inv, CommandKind::Approve, config).await? {
            tracing::info!(user = %sender.login, "the approve label approves nothing: {why}");
            self.audit(&inv, "label.approve".into(), subject(&inv), "refused")
                .await;
            return Ok(false);
        }
        let outcome = self.approve(&inv, None).await?;
        let result = if matches!(outcome, Outcome::Done(_)) {
            "ok"
        } else {
            "noop"
        };
        self.audit(&inv, "label.approve".into(), subject(&inv), result)
            .await;
        Ok(true)
    }

    pub(super) async fn status(&self, inv: &Invocation<'_>) -> Result<String, HandlerError> {
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
}

pub(super) fn subject(inv: &Invocation<'_>) -> String {
    match inv.number {
        Some(n) => format!("{}#{n}", inv.repository),
        None => inv.repository.to_string(),
    }
}

/// `/help` with this repository's permission levels.
pub(super) fn help_for(slug: &str, config: &Loaded) -> String {
    crate::command::help_markdown_with(slug, |kind| level_name(config.config.permission_for(kind)))
}
