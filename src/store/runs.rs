//! The engine's records: runs, steps, attempts and the run timeline.
//!
//! These are the words the [`Store`](super::Store) trait speaks for the
//! engine. The rules they carry:
//!
//! * A **step row is also a queue entry**: `ready` steps are claimed under a
//!   lease (owner, random token, expiry) and a step's result is accepted only
//!   while the token still matches ([`Lease`]). A worker that stalled past
//!   its lease and comes back late finds its token gone and its result
//!   refused, so a step's result is recorded exactly once.
//! * A run's **decisions are made inside the write transaction** that
//!   changes it: the store reads a [`RunSnapshot`] under the writer lock and
//!   asks a [`Planner`] what follows (which pending steps become ready or are
//!   skipped, whether the run is over). Two steps of one run that finish at
//!   the same moment therefore cannot both miss the dependent they release
//!   together: the second transaction sees the first one's result.
//!
//! Times are Unix epoch milliseconds.

use serde::{Deserialize, Serialize};

/// A state or outcome stored as its name: `as_str`/`parse`, serde and the
/// OpenAPI schema by the same names, and rusqlite's `FromSql` (another
/// name is an error naming `$what`, so the row is reported corrupt).
macro_rules! state_enum {
    ($(#[$m:meta])* $name:ident ($what:literal) { $($(#[$vm:meta])* $variant:ident = $text:literal),* $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
        #[serde(rename_all = "snake_case")]
        pub enum $name { $($(#[$vm])* $variant),* }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),*];

            /// The name as stored and shown.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),* }
            }

            /// Parses a stored name; `None` for anything else.
            pub fn parse(s: &str) -> Option<Self> {
                match s { $($text => Some($name::$variant),)* _ => None }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        /// Reads the stored name (SQLite); other text is an error.
        impl rusqlite::types::FromSql for $name {
            fn column_result(
                value: rusqlite::types::ValueRef<'_>,
            ) -> rusqlite::types::FromSqlResult<Self> {
                crate::store::stored_name(value, $what, $name::parse)
            }
        }
    };
}

state_enum! {
    /// Where a run stands. `queued → running → succeeded | failed | cancelled
    /// | timed_out`, with `paused` in between while a person asked for it.
    RunState ("run state") {
        /// Created; no step started yet.
        Queued = "queued",
        /// Steps are being worked on.
        Running = "running",
        /// No new step starts; running ones finish.
        Paused = "paused",
        /// Every step succeeded, was skipped, or failed with `continue_on_error`.
        Succeeded = "succeeded",
        /// A step failed (without `continue_on_error`).
        Failed = "failed",
        /// Cancelled by a person, a command or a newer run in its concurrency group.
        Cancelled = "cancelled",
        /// The workflow's `timeout` passed.
        TimedOut = "timed_out",
    }
}

impl RunState {
    /// True for the four end states.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            RunState::Succeeded | RunState::Failed | RunState::Cancelled | RunState::TimedOut
        )
    }
}

state_enum! {
    /// How an attempt ended (`attempts.outcome`; `NULL` while it runs).
    AttemptEnd ("attempt outcome") {
        /// The agent did the work.
        Succeeded = "succeeded",
        /// The agent failed, or the attempt could not start.
        Failed = "failed",
        /// Its time limit or idle limit passed.
        TimedOut = "timed_out",
        /// The run was cancelled or timed out meanwhile.
        Cancelled = "cancelled",
        /// Its lease ran out without a result (the worker died).
        Lost = "lost",
    }
}

/// An attempt record nobody filled in failed.
impl Default for AttemptEnd {
    fn default() -> Self {
        AttemptEnd::Failed
    }
}

state_enum! {
    /// What was asked of a run (by control operations and timeouts); the
    /// engine moves the run's [`RunState`] toward it.
    DesiredState ("desired state") {
        /// Carry on.
        Running = "running",
        /// Start no new step.
        Paused = "paused",
        /// Abort running attempts, cancel the rest.
        Cancelled = "cancelled",
        /// As cancelled, because the run's time limit passed.
        TimedOut = "timed_out",
    }
}

impl DesiredState {
    /// True when the run is being stopped (cancelled or timed out).
    pub fn is_stopping(self) -> bool {
        matches!(self, DesiredState::Cancelled | DesiredState::TimedOut)
    }
}

state_enum! {
    /// Where a step stands. `pending` until its needs finish, then `ready`
    /// (or `skipped` when its `if:` is false), `running` under a lease, and
    /// one of the five end states.
    StepState ("step state") {
        /// Waiting for its needs.
        Pending = "pending",
        /// Waiting for a worker (and for `run_at`).
        Ready = "ready",
        /// An attempt holds the lease.
        Running = "running",
        /// Done.
        Succeeded = "succeeded",
        /// Every agent and retry failed.
        Failed = "failed",
        /// Its condition was false, or a need failed.
        Skipped = "skipped",
        /// The run was cancelled before or while it ran.
        Cancelled = "cancelled",
        /// Its last attempt ran out of time.
        TimedOut = "timed_out",
    }
}

impl StepState {
    /// True for the five end states.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            StepState::Succeeded
                | StepState::Failed
                | StepState::Skipped
                | StepState::Cancelled
                | StepState::TimedOut
        )
    }

    /// True when the step ended badly (failed, timed out, cancelled).
    pub fn is_failure(self) -> bool {
        matches!(
            self,
            StepState::Failed | StepState::Cancelled | StepState::TimedOut
        )
    }

    /// The GitHub-Actions word for the outcome, as `if:` conditions read it
    /// (`steps.<id>.outcome`): `success`, `failure`, `skipped`, `cancelled`;
    /// empty while not finished.
    pub fn outcome(self) -> &'static str {
        match self {
            StepState::Succeeded => "success",
            StepState::Failed | StepState::TimedOut => "failure",
            StepState::Skipped => "skipped",
            StepState::Cancelled => "cancelled",
            _ => "",
        }
    }
}

/// A run to create, with its steps.
#[derive(Debug, Clone, PartialEq)]
pub struct NewRun {
    /// The workflow's name.
    pub workflow: String,
    /// The `X-GitHub-Delivery` that started it (`local:…` for `taskmaster run`).
    pub delivery_id: String,
    /// The event name (`pull_request`).
    pub event: String,
    /// `owner/name`.
    pub repository: Option<crate::github::RepoName>,
    /// The PR or issue number.
    pub subject_number: Option<i64>,
    /// The PR head commit.
    pub head_sha: Option<String>,
    /// The classification, as JSON.
    pub classification: Option<String>,
    /// Why routing started it.
    pub reason: String,
    /// JSON object the steps' `if:` conditions read (event, pr, issue, task, inputs),
    /// and the run's `verdict_rules` ([`crate::verdict::VerdictRules`]) that reports read.
    pub context: serde_json::Value,
    /// Runs of higher priority are served first (stored as its
    /// [`rank`](crate::classify::Priority::rank)).
    pub priority: crate::classify::Priority,
    /// The rendered concurrency group, when the workflow has one.
    pub concurrency_group: Option<String>,
    /// A new run in the group cancels the older active ones.
    pub cancel_in_progress: bool,
    /// Steps of this run at once.
    pub max_parallel: Option<u32>,
    /// The run's time limit (its deadline is the creation time plus this).
    pub timeout: Option<std::time::Duration>,
    /// Wait for a maintainer's `/approve` before any step starts (untrusted
    /// work: a fork's PR, an author without write access); the reason goes
    /// to the timeline.
    pub needs_approval: Option<String>,
    /// Steps in topological order.
    pub steps: Vec<NewStep>,
}

/// A step to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewStep {
    /// The step id.
    pub step: String,
    /// Step ids that must finish first.
    pub needs: Vec<String>,
    /// The first agent to try.
    pub agent: String,
    /// A failure of this step does not fail the run.
    pub continue_on_error: bool,
    /// Critical-path rank, ms: the step's estimated duration plus the largest
    /// rank among its dependents. Higher is claimed first.
    pub rank_ms: i64,
    /// Its `if:` calls `always()` or `cancelled()`: it still runs when the
    /// run is cancelled (GitHub Actions' rule), and cancelling does not abort
    /// it. A time-out still stops it.
    pub runs_when_cancelled: bool,
}

/// What creating one run did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreatedRun {
    /// The run id.
    pub run_id: super::RunId,
    /// The workflow.
    pub workflow: String,
    /// False when the run already existed for this delivery (reprocessing).
    pub created: bool,
    /// Older runs of the same concurrency group this one asked to cancel.
    pub superseded: Vec<super::RunId>,
}

/// A stored run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Run {
    /// Run id.
    pub id: super::RunId,
    /// Workflow name.
    pub workflow: String,
    /// The triggering delivery.
    pub delivery_id: String,
    /// Event name.
    pub event: String,
    /// `owner/name`.
    pub repository: Option<crate::github::RepoName>,
    /// PR or issue number.
    pub subject_number: Option<i64>,
    /// PR head commit.
    pub head_sha: Option<String>,
    /// Classification JSON.
    pub classification: Option<String>,
    /// Why it started.
    pub reason: String,
    /// What conditions read.
    pub context: serde_json::Value,
    /// Its workflow's priority when it was created.
    pub priority: crate::classify::Priority,
    /// Concurrency group.
    pub concurrency_group: Option<String>,
    /// Current state.
    pub state: RunState,
    /// What was asked.
    pub desired_state: DesiredState,
    /// Steps at once.
    pub max_parallel: Option<i64>,
    /// Time limit as an instant, epoch ms.
    pub deadline_at: Option<i64>,
    /// Cost so far, US dollars, where agents report it.
    pub cost_usd: f64,
    /// Why it ended as it did.
    pub conclusion: Option<String>,
    /// Epoch ms.
    pub created_at: i64,
    /// Epoch ms of the first claim.
    pub started_at: Option<i64>,
    /// Waits for `/approve` (shown as `waiting_approval`); no step is claimed.
    pub waiting_approval: bool,
    /// Who approved it, when it waited.
    pub approved_by: Option<String>,
    /// The commit the run's workspace checked out, once it has one.
    pub checkout_sha: Option<String>,
    /// Why a budget stopped the run (see [`crate::budget`]): which budget,
    /// what was spent, how to raise it. The check run is then `neutral`.
    pub stopped_by_budget: Option<String>,
    /// Epoch ms of the outcome.
    pub finished_at: Option<i64>,
}

/// A stored step.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StepRecord {
    /// Row id (unique over all runs).
    pub id: super::StepId,
    /// The run.
    pub run_id: super::RunId,
    /// The step id in its workflow.
    pub step: String,
    /// Topological position.
    pub position: i64,
    /// Needs.
    pub needs: Vec<String>,
    /// `continue_on_error`.
    pub continue_on_error: bool,
    /// State.
    pub state: StepState,
    /// Agent of the next (or current) attempt.
    pub agent: String,
    /// 0: the step's own agent; n: its n-th fallback.
    pub agent_index: i64,
    /// Attempts started on every agent.
    pub attempts: i64,
    /// Attempts started on the current agent.
    pub agent_attempts: i64,
    /// Not claimed before, epoch ms.
    pub run_at: i64,
    /// Critical-path rank, ms.
    pub priority: i64,
    /// Lease holder.
    pub lease_owner: Option<String>,
    /// Lease expiry, epoch ms.
    pub lease_expires_at: Option<i64>,
    /// Output of the successful (or last) attempt.
    pub output: Option<String>,
    /// Why it failed or was skipped.
    pub error: Option<String>,
    /// Epoch ms of the first attempt.
    pub started_at: Option<i64>,
    /// Epoch ms of its end state.
    pub finished_at: Option<i64>,
    /// What its attempts cost so far, US dollars (reported or estimated).
    pub cost_usd: f64,
}

/// A run with its steps (in topological order), read in one transaction.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunSnapshot {
    /// The run.
    pub run: Run,
    /// Its steps, by position.
    pub steps: Vec<StepRecord>,
}

impl RunSnapshot {
    /// The step with this id.
    pub fn step(&self, id: &str) -> Option<&StepRecord> {
        self.steps.iter().find(|s| s.step == id)
    }
}

/// One change a [`Planner`] decided.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StepChange {
    /// The step id.
    pub step: String,
    /// Its new state (only `pending` steps are changed; `ready`, `skipped`,
    /// `cancelled` or `failed`).
    pub to: StepState,
    /// Why, for the timeline.
    pub reason: String,
}

/// What follows from a run's current state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Plan {
    /// Pending steps that become ready, skipped, cancelled or failed.
    pub steps: Vec<StepChange>,
    /// The run's outcome when every step has ended, with the reason.
    pub outcome: Option<(RunState, String)>,
}

impl Plan {
    /// True when nothing changes.
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty() && self.outcome.is_none()
    }
}

/// Decides what follows from a run's state. Called by the store inside the
/// write transaction, so it must be quick and must not block.
pub trait Planner: Send + Sync {
    /// The changes for `snapshot` at `now` (epoch ms). A run in an end state
    /// must get an empty plan.
    fn plan(&self, snapshot: &RunSnapshot, now: i64) -> Plan;
}

/// Limits applied while claiming ready steps.
#[derive(Debug, Clone, Default)]
pub struct ClaimLimits {
    /// Steps to claim at most (the free slots of the global in-flight limit).
    pub max: usize,
    /// Running steps allowed per agent; an agent not listed has no limit.
    pub per_agent: std::collections::HashMap<String, u32>,
    /// How long each claimed step's lease lasts before it must be renewed.
    pub lease: std::time::Duration,
    /// Agents whose circuit is open: their steps are claimed without
    /// starting an attempt, so the executor can send them to a fallback.
    pub refused_agents: std::collections::HashSet<String>,
}

/// A running step's lease: the proof a worker must show to record a result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The step row.
    pub step_row: super::StepId,
    /// Who holds it (the engine instance).
    pub owner: String,
    /// Random per claim; the fencing token.
    pub token: String,
}

/// A step claimed for work.
#[derive(Debug, Clone)]
pub struct ClaimedStep {
    /// The step as it stands after the claim (`running`).
    pub step: StepRecord,
    /// Its run's workflow.
    pub workflow: String,
    /// Its run's triggering delivery.
    pub delivery_id: String,
    /// The lease.
    pub lease: Lease,
    /// The attempt started with the claim (its number, 1-based over every
    /// agent); `None` when the step's agent was in `refused_agents`.
    pub attempt: Option<i64>,
    /// True when this claim moved the run from `queued` to `running`.
    pub run_started: bool,
}

/// How an attempt ended, for the `attempts` table.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AttemptRecord {
    /// How it ended.
    pub outcome: AttemptEnd,
    /// Whether retrying can help, for failures.
    pub error_class: Option<crate::agent::ErrorClass>,
    /// The failure kind (`timeout`, `busy`, …).
    pub error_kind: Option<String>,
    /// The failure message.
    pub error: Option<String>,
    /// The first few KB of the output.
    pub output_excerpt: Option<String>,
    /// How long it took, ms.
    pub duration_ms: i64,
    /// Cost in US dollars: reported by the agent, or estimated from its
    /// `price:` (see [`crate::budget`]).
    pub cost_usd: Option<f64>,
    /// `cost_usd` is an estimate, not the agent's own figure.
    pub cost_estimated: bool,
    /// The agent was asked (false for an attempt the claim started but the
    /// engine refused: an open circuit, a spent budget, no workspace). Only
    /// attempts that ran count as spend.
    pub ran: bool,
}

/// What happens to a step after an attempt (or after a decision not to make one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepNext {
    /// The step ended (`succeeded`, `failed`, `timed_out` or `cancelled`).
    Finish {
        /// The end state.
        state: StepState,
        /// What the agent produced.
        output: Option<String>,
        /// Why it failed.
        error: Option<String>,
    },
    /// Try again on the same agent at `run_at` (epoch ms).
    Retry {
        /// Not before, epoch ms.
        run_at: i64,
    },
    /// Move to another agent (a fallback): the next attempt goes to `agent`.
    Fallback {
        /// The agent.
        agent: String,
        /// Its index in `[agent, fallback…]`.
        agent_index: i64,
        /// Not before, epoch ms.
        run_at: i64,
    },
}

/// One step result to record, for [`Runs::finish_steps`](super::Runs::finish_steps).
#[derive(Debug, Clone)]
pub struct StepFinish {
    /// The lease the result was produced under (the fence).
    pub lease: Lease,
    /// How the attempt ended, when one was made.
    pub attempt: Option<AttemptRecord>,
    /// What happens to the step.
    pub next: StepNext,
    /// Timeline event kind (`retry`, `fallback`, `give_up`, `step_succeeded`, …).
    pub kind: String,
    /// Its reason.
    pub detail: String,
}

/// One entry of a run's timeline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RunEvent {
    /// The run.
    pub run_id: super::RunId,
    /// The step, for step events.
    pub step: Option<String>,
    /// Epoch ms.
    pub at: i64,
    /// What happened. Run: `run_created`, `run_started`, `run_paused`,
    /// `run_resumed`, `cancel_requested`, `run_timed_out`, `retry_requested`,
    /// `run_finished`, `approval_required`, `run_approved`. Step: `step_ready`, `step_skipped`, `step_cancelled`,
    /// `step_failed` (planner), `attempt_started`, `step_succeeded`, and the
    /// executor's decisions `retry`, `fallback`, `give_up`,
    /// `wait_for_circuit`, `released` (shutdown), plus the reaper's
    /// `lease_expired`.
    pub kind: String,
    /// The reason, for people.
    pub detail: String,
}

/// A stored attempt.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AttemptRow {
    /// The run.
    pub run_id: super::RunId,
    /// The step id.
    pub step: String,
    /// 1-based over every agent.
    pub number: i64,
    /// The agent.
    pub agent: String,
    /// The lease token it ran under.
    pub lease_token: String,
    /// Epoch ms.
    pub started_at: i64,
    /// Epoch ms.
    pub finished_at: Option<i64>,
    /// How it ended; `None` while it runs.
    pub outcome: Option<AttemptEnd>,
    /// Whether retrying could have helped, for failures.
    pub error_class: Option<crate::agent::ErrorClass>,
    /// Failure message.
    pub error: Option<String>,
    /// ms.
    pub duration_ms: Option<i64>,
    /// US dollars, reported or estimated.
    pub cost_usd: Option<f64>,
    /// `cost_usd` is an estimate from the agent's `price:`.
    pub cost_estimated: bool,
}

/// What a control operation changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlOutcome {
    /// The run changed as asked.
    Changed,
    /// The run already was as asked (control operations are idempotent).
    Unchanged,
    /// No such run (or no such step for a retry of one step).
    NotFound,
}
