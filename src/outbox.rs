//! The report outbox: how a run shows up on GitHub, durably.
//!
//! The engine changes runs in the database; this worker makes GitHub follow.
//! It **reconciles instead of replaying events**: for every run whose report
//! may be stale ([`Reports::report_candidates`]) it computes a cheap
//! *fingerprint* of the run as it stands (run state, each step's state and
//! attempts) and, when it differs from the fingerprint GitHub last accepted
//! (stored in `run_reports`), renders the run ([`crate::report`]) and sends
//!
//! * the check run (runs on a pull request with a head SHA):
//!   [`upsert_check_run`] — `queued` while no step started, `in_progress`
//!   once one did, `completed` with the conclusion at the end;
//! * the sticky comment of the pull request or issue, shared by every run of
//!   that subject: [`upsert_sticky_comment`] (issue runs report only here).
//!
//! Why reconciliation: the engine's broadcast ([`crate::engine::Engine::subscribe`])
//! is in-process and lossy (a lagging receiver skips messages; a crash loses
//! everything in flight). Here it is only a **hint** that wakes the worker
//! early; a poll is the fallback, and what is sent is always derived from the
//! database. A transition missed, a crash between two sends, a restart while
//! GitHub was down: the next pass sends the run as it is *now*.
//!
//! The races this guards:
//!
//! * **Restart between creating a check run (or comment) and storing its id.**
//!   The id is stored right after GitHub answers; if the process dies before,
//!   [`upsert_check_run`] finds the check run by its `external_id` (the run
//!   id) and [`upsert_sticky_comment`] finds the comment by its hidden marker,
//!   so a second one is never created.
//! * **Update storms.** A run of many short steps changes state many times a
//!   second. Updates of one run are **coalesced**: at most one every
//!   [`OutboxConfig::min_interval`]; changes in between are folded into the
//!   next send. A finished run is sent at once — the final state is never
//!   held back or dropped.
//! * **GitHub failures.** A transient error ([`GitHubError::is_transient`]:
//!   5xx, rate limits, timeouts — after the client's own single retry loop)
//!   schedules the run again with exponential backoff (`next_attempt_at`),
//!   until GitHub accepts it. A permanent error (422, 403 without a limit) is
//!   recorded in `last_error`, logged, and not sent again for the same
//!   fingerprint; a later change of the run is tried afresh. Nothing loops hot.
//!
//! One worker per database: SQLite means one process, and one worker sends
//! runs one after another, so two sends for one subject never race to create
//! its sticky comment.

use crate::store::RunId;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::engine::Transition;
use crate::github::{
    CheckRunId, CommentId, GitHub, GitHubError, InstallationId, Reaction, RepoName,
    upsert_check_run, upsert_sticky_comment,
};
use crate::report::{
    ChangeReport, RunOutcome, RunReport, RunState as ReportRunState, STICKY_MARKER, StepReport,
    StepState as ReportStepState, Subject, render_sticky_comment,
};
use crate::store::{
    Effect, EffectKind, EffectOutcome, ReportCandidate, ReportOutcome, RunChange, RunSnapshot,
    RunState, RunStore, StepState, StoreError, now_ms,
};

/// Runs shown in one sticky comment at most (the newest of the subject).
const RUNS_PER_COMMENT: i64 = 10;

/// Outbox timings and the Details link.
#[derive(Debug, Clone)]
pub struct OutboxConfig {
    /// How often to look for stale reports when no hint arrives.
    pub poll: Duration,
    /// At most one update of a run per this interval (coalescing); a
    /// finished run is sent at once.
    pub min_interval: Duration,
    /// First backoff after a transient GitHub error; doubled per failure.
    pub retry_base: Duration,
    /// Longest backoff.
    pub retry_max: Duration,
    /// `PUBLIC_URL`: a run's Details link is `{public_url}/runs/{id}`; no
    /// link when `None`.
    pub public_url: Option<String>,
    /// Runs looked at per pass at most.
    pub batch: i64,
}

impl Default for OutboxConfig {
    fn default() -> Self {
        Self {
            poll: Duration::from_secs(2),
            min_interval: Duration::from_secs(3),
            retry_base: Duration::from_secs(2),
            retry_max: Duration::from_secs(5 * 60),
            public_url: None,
            batch: 1000,
        }
    }
}

/// The outbox worker; see the module docs.
#[derive(Clone)]
pub struct Outbox {
    publisher: crate::publish::Publisher,
    store: Arc<dyn RunStore>,
    github: Arc<dyn GitHub>,
    config: OutboxConfig,
    wake: Arc<tokio::sync::Notify>,
}

/// How often a pass under way looks for new runs to give a check run.
const NEW_RUN_POLL: Duration = Duration::from_millis(100);

/// Most new runs given a check run per look during a pass.
const NEW_RUN_BATCH: i64 = 200;

/// Why one run's report did not land.
#[derive(Debug, thiserror::Error)]
enum SendError {
    #[error(transparent)]
    GitHub(GitHubError),
    #[error(transparent)]
    Store(StoreError),
}

impl From<GitHubError> for SendError {
    fn from(e: GitHubError) -> Self {
        SendError::GitHub(e)
    }
}

impl From<StoreError> for SendError {
    fn from(e: StoreError) -> Self {
        SendError::Store(e)
    }
}

impl Outbox {
    /// A worker sending the reports of `store`'s runs to `github`.
    pub fn new(store: Arc<dyn RunStore>, github: Arc<dyn GitHub>, config: OutboxConfig) -> Self {
        Self {
            publisher: crate::publish::Publisher::new(
                store.clone(),
                github.clone(),
                config.public_url.clone(),
                config.retry_base,
                config.retry_max,
            ),
            store,
            github,
            config,
            wake: Arc::new(tokio::sync::Notify::new()),
        }
    }

    /// A handle that makes the worker run a pass now (new command replies
    /// or reactions were queued).
    pub fn waker(&self) -> Arc<tokio::sync::Notify> {
        self.wake.clone()
    }

    /// Runs passes until `shutdown` fires: after each hint on `hints` (the
    /// engine's transitions; `None` to rely on the poll alone), after
    /// [`OutboxConfig::poll`], or when a coalesced update falls due. A last
    /// pass (bounded to a few seconds) runs at shutdown so that final states
    /// reached just before are still sent.
    pub async fn run(
        self,
        mut hints: Option<broadcast::Receiver<Transition>>,
        shutdown: CancellationToken,
    ) {
        // With replicas on one database, one outbox sends at a time (or two
        // would create the same check run twice): this one sends only while
        // it holds the `outbox` job, kept from pass to pass and released when
        // it stops (or dies: its connection closes).
        let mut leader: Option<crate::store::ExclusiveGuard> = None;
        loop {
            // Still ours? A session that died lost the lock, and another
            // replica may be sending now: step down, then try again.
            if let Some(guard) = leader.as_mut()
                && !guard.still_held().await
            {
                tracing::warn!("outbox: the outbox lock was lost; stepping down");
                leader = None;
            }
            if leader.is_none() {
                match self.store.try_exclusive("outbox").await {
                    Ok(guard) => leader = guard,
                    Err(e) => tracing::warn!(error = %e, "outbox: cannot take the outbox lock"),
                }
            }
            let pass = if leader.is_some() {
                self.pass().await
            } else {
                Ok(None)
            };
            let wait = match pass {
                Ok(Some(due)) => due.min(self.config.poll),
                Ok(None) => self.config.poll,
                Err(e) => {
                    tracing::warn!(error = %e, "outbox pass failed; trying again");
                    self.config.poll
                }
            };
            let hint = async {
                match hints.as_mut() {
                    Some(rx) => match rx.recv().await {
                        Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => true,
                        Err(broadcast::error::RecvError::Closed) => false,
                    },
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(wait) => {}
                open = hint => if !open { hints = None },
            }
        }
        if leader.is_some()
            && tokio::time::timeout(Duration::from_secs(5), self.pass())
                .await
                .is_err()
        {
            tracing::warn!("outbox: last pass at shutdown did not finish in time");
        }
    }

    /// One reconciliation pass: sends every stale report that is due,
    /// installations side by side, and within one installation a new run's
    /// first report (its check run) ahead of updates.
    /// Returns how long until the earliest coalesced update falls due, if any.
    ///
    /// # Errors
    /// The store failed to list candidates; a failure on one run is logged
    /// and leaves the others unaffected.
    pub async fn pass(&self) -> Result<Option<Duration>, StoreError> {
        self.send_due_effects().await?;
        // Changes of succeeded runs go out before reports, so a run's final
        // report can already link its pull request.
        self.publisher.pass().await?;
        let now = now_ms();
        let candidates = self.store.report_candidates(now, self.config.batch).await?;
        let mut next_due: Option<i64> = None;
        let interval = self.config.min_interval.as_millis() as i64;
        let mut by_installation: std::collections::BTreeMap<InstallationId, Vec<_>> =
            Default::default();
        // Runs after the pass's last candidate are not part of it.
        let mut after = candidates
            .iter()
            .map(|c| c.run_id)
            .max()
            .unwrap_or(RunId(0));
        for candidate in candidates {
            let Some(snapshot) = self.store.run(candidate.run_id).await? else {
                continue;
            };
            let change = self.store.run_change(candidate.run_id).await?;
            let mut fingerprint = fingerprint(&snapshot);
            if let Some(c) = &change {
                fingerprint.push_str(&format!(
                    "|change:{}:{}",
                    c.state.as_str(),
                    c.publication.pull_request.as_ref().map_or(0, |p| p.number)
                ));
            }
            if candidate.reported_fingerprint.as_deref() == Some(fingerprint.as_str())
                || candidate.gave_up_fingerprint.as_deref() == Some(fingerprint.as_str())
            {
                continue;
            }
            if !snapshot.run.state.is_terminal()
                && let Some(at) = candidate.reported_at
                && now < at + interval
            {
                let due = at + interval - now;
                next_due = Some(next_due.map_or(due, |d| d.min(due)));
                continue;
            }
            by_installation
                .entry(candidate.installation_id)
                .or_default()
                .push((candidate, snapshot, change, fingerprint));
        }
        // Installations side by side (GitHub paces each on its own), each in
        // turn: first the check runs of runs that have none yet (a new run
        // shows on its pull request before anything else of the installation
        // is sent: GitHub allows it 80 content-creating requests a minute,
        // and a sticky comment is one too), then the reports, runs never
        // reported before updates of runs already shown.
        //
        // While they go out (a sticky comment waits out its installation's
        // pacing), runs that appear meanwhile get their check runs at once
        // rather than after the whole pass (`create_new_check_runs`).
        let busy: HashSet<InstallationId> = by_installation.keys().copied().collect();
        let (done, mut finished) = tokio::sync::watch::channel(false);
        let sends =
            futures_util::future::join_all(by_installation.into_values().map(|mut reports| {
                reports.sort_by_key(|(candidate, ..)| candidate.reported_at.is_some());
                async move {
                    // Phase 1: what failed here is recorded as a report's failure
                    // would be, and the run waits for a later pass.
                    let mut ahead = Vec::with_capacity(reports.len());
                    for (candidate, snapshot, _, fingerprint) in reports.iter_mut() {
                        if candidate.check_run_id.is_some() {
                            ahead.push(Ok(false));
                            continue;
                        }
                        let created = self.create_check_run(candidate, snapshot).await;
                        if let Err(e) = &created {
                            self.record_failure(candidate, fingerprint.clone(), e).await;
                        }
                        ahead.push(created);
                    }
                    for ((candidate, snapshot, change, fingerprint), ahead) in
                        reports.into_iter().zip(ahead)
                    {
                        let Ok(fresh) = ahead else { continue };
                        self.send(
                            &candidate,
                            &snapshot,
                            change.as_ref(),
                            fingerprint,
                            now,
                            fresh,
                        )
                        .await;
                    }
                }
            }));
        let sends = async {
            sends.await;
            done.send_replace(true);
        };
        let newcomers = async {
            loop {
                tokio::select! {
                    _ = finished.changed() => break,
                    _ = tokio::time::sleep(NEW_RUN_POLL) => {}
                }
                if let Err(e) = self.create_new_check_runs(&mut after, &busy).await {
                    tracing::warn!(error = %e, "outbox: cannot look for new runs during a pass");
                }
            }
        };
        futures_util::future::join(sends, newcomers).await;
        Ok(next_due.map(|ms| Duration::from_millis(ms.max(1) as u64)))
    }

    /// Creates the check runs of runs after `after` (past the pass under
    /// way's candidates) never reported, side by side, and moves `after`
    /// past what it looked at; a failure is recorded as a
    /// report's would be. Their full reports follow in the next pass. Runs
    /// of installations the pass is sending for (`busy`) wait for the next
    /// pass: they would only queue behind that installation's pacing, ahead
    /// of the reports already waiting there.
    async fn create_new_check_runs(
        &self,
        after: &mut RunId,
        busy: &HashSet<InstallationId>,
    ) -> Result<(), StoreError> {
        let candidates = self.store.unreported_runs(*after, NEW_RUN_BATCH).await?;
        if let Some(last) = candidates.last() {
            *after = last.run_id;
        }
        let mut new = Vec::new();
        for candidate in candidates {
            if busy.contains(&candidate.installation_id) {
                continue;
            }
            if let Some(snapshot) = self.store.run(candidate.run_id).await? {
                new.push((candidate, snapshot));
            }
        }
        futures_util::future::join_all(new.into_iter().map(
            |(mut candidate, snapshot)| async move {
                if let Err(e) = self.create_check_run(&mut candidate, &snapshot).await {
                    self.record_failure(&candidate, fingerprint(&snapshot), &e)
                        .await;
                }
            },
        ))
        .await;
        Ok(())
    }

    /// Sends one run's report and records how it went; `observed_at` is a
    /// time before `snapshot` was read (see [`ReportOutcome::Reported`]);
    /// `fresh`: its check run was just created from this snapshot (phase 1
    /// of [`Self::pass`]), so it is not updated with the same content.
    async fn send(
        &self,
        candidate: &ReportCandidate,
        snapshot: &RunSnapshot,
        change: Option<&RunChange>,
        fingerprint: String,
        observed_at: i64,
        fresh: bool,
    ) {
        let run_id = candidate.run_id;
        match self.send_effects(candidate, snapshot, change, fresh).await {
            Ok(()) => {
                tracing::debug!(run_id = %run_id, state = %snapshot.run.state, "report sent");
                let outcome = ReportOutcome::Reported {
                    fingerprint,
                    state: snapshot.run.state.as_str().to_owned(),
                    observed_at,
                };
                if let Err(e) = self.store.record_report(run_id, &outcome).await {
                    tracing::warn!(run_id = %run_id, error = %e, "outbox: cannot record the report outcome");
                }
            }
            Err(e) => self.record_failure(candidate, fingerprint, &e).await,
        }
    }

    /// Records why a run's report did not land: a transient GitHub error is
    /// retried after a backoff, a permanent one is not retried for this
    /// `fingerprint`, a store error is left for the next pass.
    async fn record_failure(
        &self,
        candidate: &ReportCandidate,
        fingerprint: String,
        e: &SendError,
    ) {
        let run_id = candidate.run_id;
        let outcome = match e {
            SendError::Store(e) => {
                tracing::warn!(run_id = %run_id, error = %e, "outbox: store error; the next pass retries");
                return;
            }
            SendError::GitHub(e) if e.is_transient() => {
                let backoff = self.backoff(candidate.attempts);
                tracing::warn!(run_id = %run_id, error = %e, retry_in_ms = backoff.as_millis() as u64,
                    "GitHub did not accept the report; retrying later");
                ReportOutcome::Retry {
                    error: e.to_string(),
                    next_attempt_at: now_ms() + backoff.as_millis() as i64,
                }
            }
            SendError::GitHub(e) => {
                tracing::error!(run_id = %run_id, error = %e,
                    "GitHub refused the report; not sent again until the run changes");
                ReportOutcome::GaveUp {
                    fingerprint,
                    error: e.to_string(),
                }
            }
        };
        if let Err(e) = self.store.record_report(run_id, &outcome).await {
            tracing::warn!(run_id = %run_id, error = %e, "outbox: cannot record the report outcome");
        }
    }

    /// Sends the queued command replies and reactions that are due, in the
    /// order they were queued. Without App credentials they are recorded as
    /// `dry_run` (and logged by the dry-run recorder) instead.
    ///
    /// Installations take turns ([`Effects::due_effects`]) and are served
    /// side by side, each in its own order: one installation's backlog (a
    /// flood of replies, paced by GitHub's content limits) never holds up
    /// another's replies, or the reports after them.
    async fn send_due_effects(&self) -> Result<(), StoreError> {
        let due = self.store.due_effects(now_ms(), self.config.batch).await?;
        let mut by_installation: Vec<(Option<InstallationId>, Vec<Effect>)> = Vec::new();
        for effect in due {
            match by_installation
                .iter_mut()
                .find(|(i, _)| *i == effect.installation_id)
            {
                Some((_, list)) => list.push(effect),
                None => by_installation.push((effect.installation_id, vec![effect])),
            }
        }
        let sent = futures_util::future::join_all(
            by_installation
                .into_iter()
                .map(|(_, effects)| self.send_effects_in_order(effects)),
        )
        .await;
        sent.into_iter().collect()
    }

    /// Sends one installation's due effects, oldest first.
    async fn send_effects_in_order(&self, due: Vec<Effect>) -> Result<(), StoreError> {
        for effect in due {
            let outcome = match self.send_effect(&effect).await {
                Ok(()) if self.github.is_dry_run() => EffectOutcome::DryRun,
                Ok(()) => EffectOutcome::Sent,
                Err(e) if e.is_transient() => {
                    let backoff = self.backoff(effect.attempts);
                    tracing::warn!(effect = effect.id, error = %e, retry_in_ms = backoff.as_millis() as u64,
                        "GitHub did not accept a reply or reaction; retrying later");
                    EffectOutcome::Retry {
                        error: e.to_string(),
                        retry_at: now_ms() + backoff.as_millis() as i64,
                    }
                }
                Err(e) => {
                    tracing::error!(effect = effect.id, error = %e,
                        "GitHub refused a reply or reaction; giving up on it");
                    EffectOutcome::Failed(e.to_string())
                }
            };
            self.store.finish_effect(effect.id, &outcome).await?;
        }
        Ok(())
    }

    async fn send_effect(&self, effect: &Effect) -> Result<(), GitHubError> {
        let repo = &effect.repository;
        let installation = effect.installation_id.unwrap_or(InstallationId(0));
        match effect.kind {
            EffectKind::Comment => self
                .github
                .create_comment(installation, repo, effect.target as u64, &effect.body)
                .await
                .map(|_| ()),
            EffectKind::Reaction => {
                let reaction = match effect.body.as_str() {
                    "+1" => Reaction::PlusOne,
                    "-1" => Reaction::MinusOne,
                    "confused" => Reaction::Confused,
                    "rocket" => Reaction::Rocket,
                    _ => Reaction::Eyes,
                };
                self.github
                    .add_reaction(
                        installation,
                        repo,
                        CommentId(effect.target as u64),
                        reaction,
                    )
                    .await
            }
        }
    }

    fn backoff(&self, failures: i64) -> Duration {
        let factor = 1u32 << failures.clamp(0, 16) as u32;
        self.config
            .retry_base
            .saturating_mul(factor)
            .min(self.config.retry_max)
    }

    /// Creates the check run of a pull request's run that has none yet and
    /// records its id in the store and in `candidate` (the full report then
    /// updates it); `Ok(false)` for a run that needs none (not a pull
    /// request's).
    async fn create_check_run(
        &self,
        candidate: &mut ReportCandidate,
        snapshot: &RunSnapshot,
    ) -> Result<bool, SendError> {
        let report = build_report(snapshot, self.config.public_url.as_deref());
        if report.subject != Subject::PullRequest || report.head_sha.is_none() {
            return Ok(false);
        }
        let repo = report_repository(&report)?;
        let installation = candidate.installation_id;
        let new = report.new_check_run()?;
        let id = upsert_check_run(self.github.as_ref(), installation, repo, None, &new).await?;
        self.store
            .record_check_run(candidate.run_id, id.0 as i64)
            .await?;
        candidate.check_run_id = Some(id.0 as i64);
        Ok(true)
    }

    async fn send_effects(
        &self,
        candidate: &ReportCandidate,
        snapshot: &RunSnapshot,
        change: Option<&RunChange>,
        fresh: bool,
    ) -> Result<(), SendError> {
        let mut report = build_report(snapshot, self.config.public_url.as_deref());
        report.change = change.and_then(change_report);
        // Annotations are appended by GitHub on every update: send them with
        // the first report of the finished run only.
        let reported_terminal = candidate
            .reported_fingerprint
            .as_deref()
            .and_then(|f| f.split(['|', '+']).next())
            .and_then(RunState::parse)
            .is_some_and(|s| s.is_terminal());
        report.annotate = snapshot.run.state.is_terminal() && !reported_terminal;
        let repo = report_repository(&report)?;
        let installation = candidate.installation_id;
        // A check run created from this very snapshot is up to date unless
        // the report carries more (annotations, a published change).
        let up_to_date = fresh && !report.annotate && report.change.is_none();
        if report.subject == Subject::PullRequest && report.head_sha.is_some() && !up_to_date {
            let new = report.new_check_run()?;
            let known = candidate.check_run_id.map(|id| CheckRunId(id as u64));
            let id =
                upsert_check_run(self.github.as_ref(), installation, repo, known, &new).await?;
            if known != Some(id) {
                self.store
                    .record_check_run(candidate.run_id, id.0 as i64)
                    .await?;
            }
            // Findings on lines inside the PR's hunks also go out as one
            // review, once, with the first report of the finished run (and
            // the workflow's earlier reviews are superseded). A failure
            // here is logged, never holds the report back.
            if report.annotate
                && report.verdict_rules.review_comments
                && (report.has_verdicts || !report.findings.is_empty())
                && let Err(e) = self.review_findings(installation, repo, &report).await
            {
                tracing::warn!(run_id = %candidate.run_id, error = %e,
                    "could not post the findings as a review; they are on the check run");
            }
        }
        let number = report.number as i64;
        let mut reports = Vec::new();
        for id in self
            .store
            .subject_runs(repo, number, RUNS_PER_COMMENT)
            .await?
            .into_iter()
            .rev()
        {
            if id == candidate.run_id {
                reports.push(report.clone());
            } else if let Some(other) = self.store.run(id).await? {
                let mut r = build_report(&other, self.config.public_url.as_deref());
                r.change = self
                    .store
                    .run_change(id)
                    .await?
                    .as_ref()
                    .and_then(change_report);
                reports.push(r);
            }
        }
        let body = render_sticky_comment(&reports);
        let known = self
            .store
            .sticky_comment(repo, number)
            .await?
            .map(|id| CommentId(id as u64));
        let id = upsert_sticky_comment(
            self.github.as_ref(),
            installation,
            repo,
            report.number,
            known,
            STICKY_MARKER,
            &body,
        )
        .await?;
        if known != Some(id) {
            self.store
                .set_sticky_comment(repo, number, id.0 as i64)
                .await?;
        }
        Ok(())
    }
}

impl Outbox {
    /// One `COMMENT` review (never `APPROVE`) of the findings that sit on
    /// lines of the pull request's diff hunks and are at least the run's
    /// `verdicts.min_severity`, with ```` ```suggestion ```` blocks where a
    /// finding has one; found again by its marker, so it is posted once per
    /// run. Reviews of the same workflow's earlier runs on this pull request
    /// are superseded: their inline comments deleted and their text replaced
    /// by a pointer to this run (a new push replaces findings, never piles
    /// them up; GitHub cannot delete a submitted review).
    async fn review_findings(
        &self,
        installation: InstallationId,
        repo: &RepoName,
        report: &RunReport,
    ) -> Result<(), GitHubError> {
        use crate::github::{NewReview, WriteAccess};
        let access = WriteAccess {
            installation,
            workflows: false,
        };
        let run_id: u64 = report.run_id.parse().unwrap_or(0);
        let prefix = format!("<!-- taskmaster:findings workflow={} run=", report.workflow);
        let marker = format!("{prefix}{run_id} -->");
        let ours = self
            .github
            .our_reviews(access, repo, report.number, &prefix)
            .await?;
        let posted = ours.iter().any(|(_, body)| body.starts_with(&marker));
        if !posted {
            let comments = self.review_comments(access, repo, report).await?;
            if !comments.is_empty() {
                let head = report.head_sha.clone().unwrap_or_default();
                let body = format!(
                    "{marker}\ntaskmaster's `{}` run found {} issue{} on lines of this pull \
                     request ({} finding{} in all; every one is an annotation on the check run).",
                    report.workflow,
                    comments.len(),
                    if comments.len() == 1 { "" } else { "s" },
                    report.findings.len(),
                    if report.findings.len() == 1 { "" } else { "s" },
                );
                self.github
                    .create_review(
                        access,
                        repo,
                        report.number,
                        &NewReview {
                            commit_id: head,
                            body,
                            comments,
                        },
                    )
                    .await?;
            }
        }
        // Earlier runs' reviews: replaced by this one.
        for (id, body) in &ours {
            let earlier = body
                .strip_prefix(&prefix)
                .and_then(|rest| rest.split_once(" -->"))
                .and_then(|(n, _)| n.parse::<u64>().ok())
                .is_some_and(|n| n < run_id);
            if !earlier {
                continue;
            }
            for comment in self
                .github
                .review_comment_ids(access, repo, report.number, *id)
                .await?
            {
                self.github
                    .delete_review_comment(access, repo, comment)
                    .await?;
            }
            let sha: String = report
                .head_sha
                .as_deref()
                .unwrap_or("")
                .chars()
                .take(12)
                .collect();
            let text = format!(
                "<!-- taskmaster:superseded workflow={} -->\n_Superseded: taskmaster's `{}` \
                 run {} on {} replaces these findings (see its check run)._",
                report.workflow,
                report.workflow,
                run_id,
                crate::report::code_span(&sha),
            );
            self.github
                .update_review(access, repo, report.number, *id, &text)
                .await?;
        }
        Ok(())
    }

    /// The review comments of `report`'s findings: those on lines inside
    /// the pull request's hunks, at least the run's least severity.
    async fn review_comments(
        &self,
        access: crate::github::WriteAccess,
        repo: &RepoName,
        report: &RunReport,
    ) -> Result<Vec<crate::github::ReviewComment>, GitHubError> {
        let wanted: Vec<_> = report
            .findings
            .iter()
            .filter(|(_, f)| f.severity >= report.verdict_rules.min_severity)
            .collect();
        if wanted.is_empty() {
            return Ok(Vec::new());
        }
        let files: std::collections::HashMap<String, Vec<(u64, u64)>> = self
            .github
            .pull_request_files(access, repo, report.number)
            .await?
            .into_iter()
            .map(|(path, patch)| (path, crate::verdict::hunk_ranges(&patch)))
            .collect();
        let mut comments = Vec::new();
        for (step, f) in wanted {
            let inside = files.get(&f.path).is_some_and(|ranges| {
                ranges
                    .iter()
                    .any(|(a, b)| *a <= f.start_line && f.end_line <= *b)
            });
            if !inside {
                continue;
            }
            let level = match f.severity {
                crate::verdict::Severity::Failure => "failure",
                crate::verdict::Severity::Warning => "warning",
                crate::verdict::Severity::Notice => "notice",
            };
            let mut body = format!(
                "**{}** ({step}, {level}): {}",
                f.title.replace(['\n', '\r'], " "),
                f.message
            );
            if let Some(s) = &f.suggestion {
                let s = if s.ends_with('\n') {
                    s.clone()
                } else {
                    format!("{s}\n")
                };
                body.push_str(&format!("\n\n```suggestion\n{s}```"));
            }
            comments.push(crate::github::ReviewComment {
                path: f.path.clone(),
                line: f.end_line,
                start_line: (f.start_line < f.end_line).then_some(f.start_line),
                body,
            });
        }
        Ok(comments)
    }
}

/// The repository a report goes to.
///
/// # Errors
/// [`GitHubError::InvalidInput`] for a run without a repository.
fn report_repository(report: &RunReport) -> Result<&RepoName, GitHubError> {
    report.repository.as_ref().ok_or_else(|| {
        GitHubError::InvalidInput(format!(
            "run {} has no repository to report to",
            report.run_id
        ))
    })
}

/// A run's change as its report shows it.
pub fn change_report(change: &RunChange) -> Option<ChangeReport> {
    use crate::store::{ChangeState, PublishTarget};
    let text = crate::publish::describe(change)?;
    let patch_wanted = change.state == ChangeState::DryRun
        || change.publication.target == Some(PublishTarget::Suggestions);
    Some(ChangeReport {
        text,
        url: crate::publish::pull_request_of(change)
            .filter(|_| change.state == ChangeState::Published)
            .filter(|_| change.publication.target != Some(PublishTarget::HeadBranch))
            .map(|p| p.html_url.clone()),
        patch: patch_wanted
            .then(|| change.change.diff.clone())
            .filter(|d| !d.is_empty()),
        files: change
            .change
            .files
            .iter()
            .map(|f| (f.path.clone(), f.additions, f.deletions))
            .collect(),
    })
}

/// What a run's report depends on: the run's state and each step's state and
/// attempts (a step's output is set in the same transaction as its end state).
/// Two snapshots with the same fingerprint render the same report, except for
/// durations.
pub fn fingerprint(snapshot: &RunSnapshot) -> String {
    let mut out = snapshot.run.state.as_str().to_owned();
    if snapshot.run.waiting_approval {
        out.push_str("+waiting_approval");
    }
    for step in &snapshot.steps {
        out.push_str(&format!(
            "|{}:{}:{}",
            step.step,
            step.state.as_str(),
            step.attempts
        ));
    }
    out
}

/// The [`RunReport`] of a run as stored. `public_url` gives the Details link
/// `{public_url}/runs/{id}`. Step outputs are taken as stored: the engine
/// redacts them before it records them.
pub fn build_report(snapshot: &RunSnapshot, public_url: Option<&str>) -> RunReport {
    let run = &snapshot.run;
    let steps: Vec<StepReport> = snapshot
        .steps
        .iter()
        .map(|s| StepReport {
            id: s.step.clone(),
            agent: s.agent.clone(),
            state: match s.state {
                StepState::Pending | StepState::Ready => ReportStepState::Pending,
                StepState::Running => ReportStepState::Running,
                StepState::Succeeded => ReportStepState::Succeeded,
                StepState::Failed => ReportStepState::Failed,
                StepState::Skipped => ReportStepState::Skipped,
                StepState::Cancelled => ReportStepState::Cancelled,
                StepState::TimedOut => ReportStepState::TimedOut,
            },
            attempts: s.attempts.max(0) as u32,
            duration_ms: match (s.started_at, s.finished_at) {
                (Some(a), Some(b)) if b >= a => Some((b - a) as u64),
                _ => None,
            },
            output: s.output.clone().or_else(|| s.error.clone()),
            cost_micro_usd: (s.cost_usd.max(0.0) * 1e6).round() as u64,
        })
        .collect();
    let all_skipped =
        !steps.is_empty() && steps.iter().all(|s| s.state == ReportStepState::Skipped);
    // What the steps' verdict reports say (`crate::verdict`): a `fail`
    // verdict fails the run's check run although every step succeeded.
    let crate::verdict::RunVerdicts {
        findings,
        failed: failed_verdicts,
        reports: verdict_reports,
    } = crate::verdict::run_verdicts(&snapshot.steps);
    let state = match run.state {
        RunState::Queued if run.waiting_approval => ReportRunState::WaitingForApproval,
        RunState::Queued => ReportRunState::Queued,
        RunState::Running => ReportRunState::Running,
        RunState::Paused => ReportRunState::Paused,
        RunState::Succeeded if !failed_verdicts.is_empty() => {
            ReportRunState::Completed(RunOutcome::Failed)
        }
        RunState::Succeeded if all_skipped => ReportRunState::Completed(RunOutcome::Skipped),
        RunState::Succeeded => ReportRunState::Completed(RunOutcome::Succeeded),
        RunState::Failed => ReportRunState::Completed(RunOutcome::Failed),
        RunState::Cancelled => ReportRunState::Completed(RunOutcome::Cancelled),
        RunState::TimedOut => ReportRunState::Completed(RunOutcome::TimedOut),
    };
    let subject = if run.head_sha.is_some() || run.event.starts_with("pull_request") {
        Subject::PullRequest
    } else {
        Subject::Issue
    };
    let time = |ms: Option<i64>| ms.and_then(DateTime::<Utc>::from_timestamp_millis);
    RunReport {
        run_id: run.id.to_string(),
        workflow: run.workflow.clone(),
        repository: run.repository.clone(),
        number: run.subject_number.unwrap_or(0).max(0) as u64,
        subject,
        head_sha: run.head_sha.clone(),
        state,
        steps,
        details_url: public_url.map(|u| format!("{}/runs/{}", u.trim_end_matches('/'), run.id)),
        started_at: time(run.started_at),
        completed_at: time(run.finished_at),
        reason: if run.state.is_terminal() && run.state != RunState::Succeeded {
            run.conclusion.clone()
        } else if !failed_verdicts.is_empty() {
            Some(failed_verdicts.join("; "))
        } else {
            None
        },
        change: None,
        findings,
        annotate: false,
        verdict_rules: crate::verdict::VerdictRules::of_run(&run.context),
        failed_by_verdict: run.state == RunState::Succeeded && !failed_verdicts.is_empty(),
        has_verdicts: verdict_reports > 0,
        stopped_by_budget: run.stopped_by_budget.clone(),
        expected: crate::engine::forecast::expected(snapshot),
        cost_micro_usd: (run.cost_usd.max(0.0) * 1e6).round() as u64,
        started_by_api: run
            .delivery_id
            .starts_with("api:")
            .then(|| run.reason.split('`').nth(1).unwrap_or("unknown").to_owned()),
    }
}
