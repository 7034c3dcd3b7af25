//! The durable orchestration engine: runs of workflows as DAGs of steps,
//! executed against agents, surviving crashes.
//!
//! Every decision goes through the database ([`RunStore`]), so the process can
//! die at any instant and the next one carries on:
//!
//! * **Scheduler** ([`Engine::run`]): claims `ready` steps by run priority and
//!   critical-path rank under a lease (owner, random token, expiry), within a
//!   global in-flight limit, each agent's concurrency and each run's
//!   `max_parallel`. Work beyond the limits stays `ready` and waits its turn;
//!   nothing is rejected. Wake-ups come from finished steps, new runs and
//!   control operations (an in-process `Notify`), from other replicas
//!   sharing the database ([`RunStore`]'s remote wake-ups: PostgreSQL
//!   `NOTIFY`), with a poll as a fallback.
//! * **Executor** ([`executor`]): one attempt at a time per step, under the
//!   step's timeout, while the engine's heartbeat renews the leases of all
//!   its running steps every third of the TTL (one transaction per beat). The result is recorded **fenced**: accepted only while the lease
//!   token is still the step's, so a worker that stalled past its lease (and
//!   whose step was handed to another) cannot overwrite the newer attempt.
//! * **Reaper**: returns expired leases to `ready`, stops runs past their
//!   time limit, and settles runs asked to cancel (for example by a newer
//!   push in their concurrency group).
//! * **Start-up recovery**: a single-process store takes back every `running`
//!   step at once (its worker died with the previous process) and settles
//!   every active run; a store shared by replicas (PostgreSQL) takes back
//!   only expired leases, since the others' steps are still running.
//!
//! Guarantees (see `DESIGN.md`): each step runs at least once (an attempt
//! that was running during a crash runs again); its result is recorded
//! exactly once (fencing); a run's outcome is recorded once per round (a
//! `retry` opens a new round). Every autonomous decision — retry, fall back,
//! give up, skip — is written to the run's timeline with its reason, and run
//! and step transitions are published on an in-process broadcast channel
//! ([`Engine::subscribe`]) for reports and metrics.

mod adaptive;
pub mod agents;
pub mod backoff;
pub mod breaker;
pub mod budgets;
pub mod executor;
pub mod forecast;
pub mod intake;
mod outcome;
pub mod plan;
mod prompt;
mod verdicts;
mod workspaces;

use crate::store::RunId;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::{Notify, broadcast, mpsc, oneshot};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::insights::predict::{AgentQueue, Predictor};
pub use agents::{AgentMap, AgentSource};
pub use breaker::{BreakerConfig, BreakerState, Breakers};
pub use intake::{LoopBreaker, RoutingHandler};
pub use plan::WorkflowPlanner;

use crate::store::{
    ClaimLimits, ClaimedStep, ControlOutcome, Plan, RunState, RunStore, StepFinish, StepState,
    StoreError, now_ms,
};

/// Step results committed together at most (group commit).
const RESULT_BATCH: usize = 128;

/// Parsed events kept for rendering prompts (deliveries never change): the
/// steps of a run after the first do not read and parse the payload again.
const EVENT_CACHE: usize = 256;

/// The last [`EVENT_CACHE`] deliveries' parsed events, by delivery id; the
/// oldest entry goes first.
#[derive(Default)]
pub(crate) struct EventCache {
    events: HashMap<String, Arc<crate::event::Event>>,
    order: std::collections::VecDeque<String>,
}

impl EventCache {
    pub(crate) fn get(&self, delivery_id: &str) -> Option<Arc<crate::event::Event>> {
        self.events.get(delivery_id).cloned()
    }

    pub(crate) fn insert(&mut self, delivery_id: &str, event: Arc<crate::event::Event>) {
        if self.events.insert(delivery_id.to_owned(), event).is_none() {
            self.order.push_back(delivery_id.to_owned());
            while self.order.len() > EVENT_CACHE {
                if let Some(oldest) = self.order.pop_front() {
                    self.events.remove(&oldest);
                }
            }
        }
    }
}

/// A step result waiting for the results writer.
pub(crate) struct ResultJob {
    pub finish: StepFinish,
    pub done: oneshot::Sender<Result<Recorded, String>>,
}

/// What the results writer answers for one result.
pub(crate) struct Recorded {
    /// What the result changed (`None`: refused, the lease is gone).
    pub plan: Option<Plan>,
    /// A claim ran after the result was committed and was not cut short by
    /// the in-flight limit: whatever the result made ready is already
    /// claimed, so the scheduler need not run a round for it.
    pub handed_off: bool,
}
use crate::workflow::WorkflowSet;

/// Engine limits and timings.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Steps in flight at once, over every run and agent.
    pub max_in_flight: usize,
    /// Lease TTL of a running step; the heartbeat renews it every third.
    pub lease: Duration,
    /// Scheduler poll when no wake-up arrives (also bounds how late a retry
    /// whose backoff ended is picked up).
    pub poll: Duration,
    /// How often the reaper looks for expired leases and run deadlines.
    pub reap_interval: Duration,
    /// Attempt time limit for steps without `timeout:`.
    pub default_step_timeout: Duration,
    /// How long past an attempt's deadline the engine waits for the agent
    /// before giving up on it (agents are meant to stop by the deadline).
    pub timeout_grace: Duration,
    /// Estimated step duration before any attempt was recorded (for the
    /// critical-path rank).
    pub default_estimate: Duration,
    /// How long a workflow's step history, read for new runs' predictions
    /// and ranks, is reused ([`forecast::HISTORY_TTL`] by default).
    pub history_ttl: Duration,
    /// On shutdown, how long to wait for running attempts to wind down.
    pub shutdown_grace: Duration,
    /// Where runs' workspaces come from. `None`: steps get no working
    /// directory from the engine (the agent's configured one, else the
    /// process's), as library users and some tests want; `serve` and `run`
    /// always set it.
    pub workspaces: Option<Arc<crate::workspace::Workspaces>>,
    /// Spend limits checked before each attempt (see [`crate::budget`]);
    /// the default sets none.
    pub budgets: crate::budget::Budgets,
    /// The clock budgets' days and months are counted by (epoch ms);
    /// [`crate::store::now_ms`] but in tests.
    pub clock: fn() -> i64,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            max_in_flight: 64,
            lease: Duration::from_secs(30),
            poll: Duration::from_millis(500),
            reap_interval: Duration::from_secs(5),
            default_step_timeout: Duration::from_secs(30 * 60),
            timeout_grace: Duration::from_secs(5),
            default_estimate: Duration::from_secs(60),
            history_ttl: forecast::HISTORY_TTL,
            shutdown_grace: Duration::from_secs(10),
            workspaces: None,
            budgets: crate::budget::Budgets::default(),
            clock: crate::store::now_ms,
        }
    }
}

/// A run or step transition, published to observers.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Transition {
    /// A run changed state.
    Run {
        /// The run.
        run_id: RunId,
        /// Its new state.
        state: RunState,
        /// Why.
        reason: String,
    },
    /// A step changed state.
    Step {
        /// The run.
        run_id: RunId,
        /// The step id.
        step: String,
        /// Its new state.
        state: StepState,
        /// The agent of the attempt, for `running`.
        agent: Option<String>,
        /// The attempt number, for `running`.
        attempt: Option<i64>,
        /// Why.
        reason: String,
    },
}

/// Why a running attempt's cancellation token fired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StopReason {
    /// The run was cancelled.
    Cancelled,
    /// The run's time limit passed.
    TimedOut,
    /// The lease was lost: another worker owns the step now.
    LeaseLost,
    /// The engine is shutting down.
    Shutdown,
}

/// A running attempt, as the engine tracks it in memory.
#[derive(Debug)]
pub(crate) struct RunningAttempt {
    pub run_id: i64,
    pub step_row: i64,
    /// The lease token the attempt runs under.
    pub token: String,
    /// When it was registered (a heartbeat that started earlier may not
    /// have seen its claim yet).
    pub registered: std::time::Instant,
    pub cancel: CancellationToken,
    pub reason: Mutex<Option<StopReason>>,
    /// The step's `if:` calls `always()` or `cancelled()`: cancelling its
    /// run does not abort it (a time-out, a lost lease or shutdown does).
    pub runs_when_cancelled: bool,
}

impl RunningAttempt {
    pub(crate) fn stop(&self, why: StopReason) {
        if why == StopReason::Cancelled && self.runs_when_cancelled {
            return;
        }
        self.reason.lock().expect("stop lock").get_or_insert(why);
        self.cancel.cancel();
    }
}

/// Whether an engine takes work (see [`Engine::readiness`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readiness {
    /// Start-up recovery has not finished (or failed).
    Starting,
    /// The scheduler runs.
    Ready,
    /// Shutdown began: attempts are being released.
    Stopping,
}

pub(crate) struct Inner {
    pub store: Arc<dyn RunStore>,
    pub workflows: Arc<WorkflowSet>,
    pub agents: Arc<dyn AgentSource>,
    pub planner: WorkflowPlanner,
    pub config: EngineConfig,
    pub breakers: Breakers,
    pub wake: Notify,
    pub events: broadcast::Sender<Transition>,
    pub owner: String,
    /// Running attempts by lease token (unique per claim: a step reclaimed
    /// while a stale attempt still runs has two entries).
    pub running: Mutex<HashMap<String, Arc<RunningAttempt>>>,
    /// Attempts started or reserved for a claim in progress (see
    /// `Engine::reserve`); at most `max_in_flight` apart from attempts whose
    /// results are being recorded.
    pub in_flight: AtomicUsize,
    /// A scheduler round found no free slot: whoever gives reserved slots
    /// back must wake it, or it would wait for the poll.
    pub round_refused: AtomicBool,
    pub shutting_down: AtomicBool,
    /// Start-up recovery finished and the scheduler runs (`GET /api/ready`).
    pub ready: AtomicBool,
    pub results: mpsc::UnboundedSender<ResultJob>,
    pub results_rx: Mutex<Option<mpsc::UnboundedReceiver<ResultJob>>>,
    /// Steps the results writer claimed (direct hand-off), already counted
    /// in `in_flight`, for the scheduler loop to start.
    pub handoff: mpsc::UnboundedSender<Vec<ClaimedStep>>,
    pub handoff_rx: Mutex<Option<mpsc::UnboundedReceiver<Vec<ClaimedStep>>>>,
    pub events_cache: Mutex<EventCache>,
    /// [`Engine::agent_queues`]'s last count, and when it was taken.
    pub queues_cache: Mutex<Option<(std::time::Instant, HashMap<String, AgentQueue>)>>,
    /// [`Engine::forecast`]'s step histories by workflow, and when each
    /// was read.
    pub history_cache: Mutex<HashMap<String, (std::time::Instant, Arc<Predictor>)>>,
}

/// The engine. Cheap to clone; every clone drives the same engine.
#[derive(Clone)]
pub struct Engine {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("owner", &self.inner.owner)
            .finish_non_exhaustive()
    }
}

impl Engine {
    /// An engine over `store`, running `workflows` with `agents`. Start it with
    /// [`Engine::run`].
    pub fn new(
        store: Arc<dyn RunStore>,
        workflows: Arc<WorkflowSet>,
        agents: Arc<dyn AgentSource>,
        config: EngineConfig,
    ) -> Self {
        let (events, _) = broadcast::channel(4096);
        let (results, results_rx) = mpsc::unbounded_channel();
        let (handoff, handoff_rx) = mpsc::unbounded_channel();
        Engine {
            inner: Arc::new(Inner {
                planner: WorkflowPlanner::new(workflows.clone()),
                store,
                workflows,
                agents,
                config,
                breakers: Breakers::default(),
                wake: Notify::new(),
                events,
                owner: format!("engine-{}", uuid::Uuid::new_v4().simple()),
                running: Mutex::new(HashMap::new()),
                in_flight: AtomicUsize::new(0),
                round_refused: AtomicBool::new(false),
                shutting_down: AtomicBool::new(false),
                ready: AtomicBool::new(false),
                results,
                results_rx: Mutex::new(Some(results_rx)),
                handoff,
                handoff_rx: Mutex::new(Some(handoff_rx)),
                events_cache: Mutex::new(EventCache::default()),
                queues_cache: Mutex::new(None),
                history_cache: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn RunStore> {
        &self.inner.store
    }

    /// The spend limits it enforces (`budgets:`).
    pub fn budgets(&self) -> &crate::budget::Budgets {
        &self.inner.config.budgets
    }

    /// Its clock (epoch ms), the one budgets count days and months by.
    pub fn now(&self) -> i64 {
        (self.inner.config.clock)()
    }

    /// The workflows.
    pub fn workflows(&self) -> &Arc<WorkflowSet> {
        &self.inner.workflows
    }

    /// Run and step transitions from now on. A slow receiver that falls more
    /// than 4,096 transitions behind sees `Lagged` and misses some; the
    /// timeline in the store is complete.
    pub fn subscribe(&self) -> broadcast::Receiver<Transition> {
        self.inner.events.subscribe()
    }

    /// Wakes the scheduler (new runs, a finished step, a control operation).
    pub fn wake(&self) {
        self.inner.wake.notify_one();
    }

    /// The names of the agents steps may use, sorted.
    pub fn agent_names(&self) -> Vec<String> {
        let mut names = self.inner.agents.names();
        names.sort();
        names
    }

    /// Each agent's circuit-breaker state (agents never used are closed).
    pub fn breaker_states(&self) -> Vec<(String, BreakerState)> {
        self.inner.breakers.snapshot()
    }

    /// Whether the engine schedules steps: [`Readiness::Starting`] until
    /// start-up recovery is done (or when it failed), [`Readiness::Stopping`]
    /// once shutdown began. `GET /api/ready` answers 503 unless `Ready`.
    pub fn readiness(&self) -> Readiness {
        if self.inner.shutting_down.load(Ordering::SeqCst) {
            Readiness::Stopping
        } else if self.inner.ready.load(Ordering::SeqCst) {
            Readiness::Ready
        } else {
            Readiness::Starting
        }
    }

    /// The lease owner name of this engine.
    pub fn owner(&self) -> &str {
        &self.inner.owner
    }

    /// Runs the engine until `shutdown` fires: start-up recovery, then the
    /// scheduler and the reaper. On shutdown, running attempts are aborted
    /// and their steps released to run again (after up to `shutdown_grace`).
    ///
    /// Errors: start-up recovery failed (the database is unreachable).
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), StoreError> {
        if let Err(e) = self.recover().await {
            tracing::error!(error = %e, "engine start-up recovery failed; the engine is not running");
            return Err(e);
        }
        self.inner.ready.store(true, Ordering::SeqCst);
        let reaper = tokio::spawn(self.clone().reaper(shutdown.clone()));
        let janitor = self
            .inner
            .config
            .workspaces
            .clone()
            .map(|ws| tokio::spawn(self.clone().workspace_janitor(ws)));
        let results_rx = self
            .inner
            .results_rx
            .lock()
            .expect("results lock")
            .take()
            .expect("Engine::run is called once per engine");
        let mut handoff = self
            .inner
            .handoff_rx
            .lock()
            .expect("handoff lock")
            .take()
            .expect("Engine::run is called once per engine");
        let writer = tokio::spawn(self.clone().results_writer(results_rx));
        let heartbeat = tokio::spawn(self.clone().heartbeat());
        // Other replicas sharing the database announce ready steps and new
        // runs (PostgreSQL `NOTIFY`): wake the scheduler early for them.
        let remote = self
            .inner
            .store
            .remote_wakeups(crate::store::WakeTopic::Steps)
            .map(|mut hints| {
                let engine = self.clone();
                tokio::spawn(async move {
                    while let Ok(()) | Err(broadcast::error::RecvError::Lagged(_)) =
                        hints.recv().await
                    {
                        engine.wake();
                    }
                })
            });
        let mut tasks: JoinSet<()> = JoinSet::new();
        loop {
            if shutdown.is_cancelled() {
                break;
            }
            while tasks.try_join_next().is_some() {}
            match self.schedule_round(&mut tasks).await {
                Ok(true) => continue,
                Ok(false) => {}
                Err(e) => tracing::error!(error = %e, "scheduler round failed; retrying"),
            }
            // Steps handed off by the results writer start here, without a
            // round of their own; a wake-up or the poll runs the next round
            // (the poll's deadline does not move with each hand-off).
            let poll = tokio::time::sleep(self.inner.config.poll);
            tokio::pin!(poll);
            loop {
                tokio::select! {
                    Some(claimed) = handoff.recv() => {
                        for step in claimed {
                            self.start(&mut tasks, step);
                        }
                        continue;
                    }
                    _ = self.inner.wake.notified() => {}
                    _ = &mut poll => {}
                    _ = shutdown.cancelled() => {}
                }
                break;
            }
        }
        self.inner.shutting_down.store(true, Ordering::SeqCst);
        self.inner.ready.store(false, Ordering::SeqCst);
        // Steps claimed just before the shutdown: their attempts see it and
        // release them.
        while let Ok(claimed) = handoff.try_recv() {
            for step in claimed {
                self.start(&mut tasks, step);
            }
        }
        for attempt in self.inner.running.lock().expect("running lock").values() {
            attempt.stop(StopReason::Shutdown);
        }
        let grace = self.inner.config.shutdown_grace;
        let _ =
            tokio::time::timeout(grace, async { while tasks.join_next().await.is_some() {} }).await;
        reaper.abort();
        heartbeat.abort();
        if let Some(janitor) = janitor {
            janitor.abort();
            // What ended while the janitor was winding down (a `taskmaster
            // run` stops right after its run ends): one last bounded sweep.
            if let Some(workspaces) = &self.inner.config.workspaces
                && let Ok(active) = self.inner.store.active_runs().await
            {
                let active = active.into_iter().map(|r| r.0).collect();
                let _ =
                    tokio::time::timeout(Duration::from_secs(5), workspaces.sweep(&active)).await;
            }
        }
        if let Some(remote) = remote {
            remote.abort();
        }
        writer.abort();
        Ok(())
    }

    /// Renews every lease this engine holds, every third of the lease TTL, in
    /// one transaction (one write per beat however many steps run, instead
    /// of one per step). What comes back is carried to the running attempts:
    /// a run asked to stop fires their cancellation tokens; a step whose
    /// lease is gone (reaped and handed on) is abandoned.
    async fn heartbeat(self) {
        let ttl = self.inner.config.lease;
        loop {
            tokio::time::sleep(ttl / 3).await;
            let beat = std::time::Instant::now();
            let tokens: Vec<String> = {
                let running = self.inner.running.lock().expect("running lock");
                running.values().map(|a| a.token.clone()).collect()
            };
            let renewed = match self
                .inner
                .store
                .renew_leases(&self.inner.owner, &tokens, ttl)
                .await
            {
                Ok(rows) => rows,
                Err(e) => {
                    tracing::warn!(error = %e, "lease renewal failed; will retry");
                    continue;
                }
            };
            let held: HashMap<crate::store::StepId, (String, crate::store::DesiredState)> = renewed
                .into_iter()
                .map(|(id, token, desired)| (id, (token, desired)))
                .collect();
            let running = self.inner.running.lock().expect("running lock");
            for attempt in running.values() {
                match held.get(&crate::store::StepId(attempt.step_row)) {
                    Some((token, desired)) if *token == attempt.token => match desired {
                        crate::store::DesiredState::Cancelled => {
                            attempt.stop(StopReason::Cancelled)
                        }
                        crate::store::DesiredState::TimedOut => attempt.stop(StopReason::TimedOut),
                        _ => {}
                    },
                    _ if attempt.registered > beat => {}
                    _ => attempt.stop(StopReason::LeaseLost),
                }
            }
        }
    }

    /// Commits step results in batches: everything that arrived while the
    /// previous batch was committing goes into the next transaction. Under
    /// load this turns one fsync per result into one per batch; alone, a
    /// result is committed at once. Each result stays fenced on its own.
    async fn results_writer(self, mut rx: mpsc::UnboundedReceiver<ResultJob>) {
        while let Some(first) = rx.recv().await {
            let mut jobs = vec![first];
            while jobs.len() < RESULT_BATCH {
                match rx.try_recv() {
                    Ok(job) => jobs.push(job),
                    Err(_) => break,
                }
            }
            let (finishes, senders): (Vec<StepFinish>, Vec<_>) =
                jobs.into_iter().map(|j| (j.finish, j.done)).unzip();
            // Direct hand-off: the transaction that records the results also
            // claims what they made ready. The attempts whose results these
            // are have ended, so their slots count as free.
            let free = if self.inner.shutting_down.load(Ordering::SeqCst) {
                0
            } else {
                self.reserve(finishes.len())
            };
            let limits = self.claim_limits(free);
            let recorded = self
                .inner
                .store
                .finish_and_claim(&finishes, &self.inner.planner, &self.inner.owner, &limits)
                .await;
            let claimed_n = match &recorded {
                Ok((_, Some(claimed))) => claimed.len(),
                _ => 0,
            };
            self.release(free - claimed_n);
            match recorded {
                Ok((plans, claimed)) => {
                    let handed_off = claimed.as_ref().is_some_and(|c| c.len() < free);
                    if let Some(claimed) = claimed.filter(|c| !c.is_empty())
                        && let Err(mpsc::error::SendError(lost)) = self.inner.handoff.send(claimed)
                    {
                        // The scheduler loop is gone (shutdown): the leases
                        // run out and the steps run again.
                        self.inner.in_flight.fetch_sub(lost.len(), Ordering::SeqCst);
                    }
                    for (done, plan) in senders.into_iter().zip(plans) {
                        let _ = done.send(Ok(Recorded { plan, handed_off }));
                    }
                }
                Err(e) => {
                    let e = e.to_string();
                    for done in senders {
                        let _ = done.send(Err(e.clone()));
                    }
                }
            }
        }
    }

    /// Start-up recovery: running steps of a previous process go back to
    /// `ready`; every active run is settled.
    async fn recover(&self) -> Result<(), StoreError> {
        let reclaimed = self.inner.store.reap_leases(None).await?;
        if !reclaimed.is_empty() {
            tracing::info!(
                steps = reclaimed.len(),
                "start-up recovery: steps left running by a previous process are ready again"
            );
        }
        for (run_id, step) in reclaimed {
            self.publish(Transition::Step {
                run_id,
                step,
                state: StepState::Ready,
                agent: None,
                attempt: None,
                reason: "start-up recovery".into(),
            });
        }
        for run_id in self.inner.store.active_runs().await? {
            self.settle(run_id).await?;
        }
        Ok(())
    }

    /// Claims and starts what the limits allow. Returns true when it filled
    /// every free slot (there may be more to claim at once).
    async fn schedule_round(&self, tasks: &mut JoinSet<()>) -> Result<bool, StoreError> {
        for run_id in self.inner.store.unplanned_runs().await? {
            self.settle(run_id).await?;
        }
        let free = self.reserve(0);
        if free == 0 {
            self.inner.round_refused.store(true, Ordering::SeqCst);
            // The slots may have come back between the reservation and the
            // flag: look once more.
            if self.reserve_would_succeed() {
                self.wake();
            }
            return Ok(false);
        }
        let limits = self.claim_limits(free);
        let claimed = self
            .inner
            .store
            .claim_steps(&self.inner.owner, &limits)
            .await;
        let n = claimed.as_ref().map_or(0, Vec::len);
        self.release(free - n);
        let claimed = claimed?;
        for step in claimed {
            self.start(tasks, step);
        }
        Ok(n > 0 && n == free)
    }

    /// Reserves every free slot of the in-flight limit for a claim about to
    /// run, counting `ending` attempts (whose results are being recorded) as
    /// gone; returns how many were reserved. Two claimers (the scheduler and
    /// the results writer) may claim at once: reserving first keeps their
    /// sum within the limit. The claimer gives back what it did not use.
    fn reserve(&self, ending: usize) -> usize {
        let max = self.inner.config.max_in_flight;
        let mut current = self.inner.in_flight.load(Ordering::SeqCst);
        loop {
            let free = max.saturating_sub(current.saturating_sub(ending));
            if free == 0 {
                return 0;
            }
            match self.inner.in_flight.compare_exchange(
                current,
                current + free,
                Ordering::SeqCst,
                Ordering::SeqCst,
            ) {
                Ok(_) => return free,
                Err(now) => current = now,
            }
        }
    }

    /// Gives back `unused` reserved slots, waking a scheduler round that
    /// found none meanwhile.
    fn release(&self, unused: usize) {
        if unused == 0 {
            return;
        }
        self.inner.in_flight.fetch_sub(unused, Ordering::SeqCst);
        if self.inner.round_refused.swap(false, Ordering::SeqCst) {
            self.wake();
        }
    }

    /// Whether a reservation would find a free slot now.
    fn reserve_would_succeed(&self) -> bool {
        self.inner.in_flight.load(Ordering::SeqCst) < self.inner.config.max_in_flight
    }

    /// The claim limits of this moment, with `free` slots.
    fn claim_limits(&self, free: usize) -> ClaimLimits {
        let mut per_agent = HashMap::new();
        for name in self.inner.agents.names() {
            if let Some(limit) = self.inner.agents.concurrency(&name) {
                per_agent.insert(name, limit);
            }
        }
        ClaimLimits {
            max: free,
            per_agent,
            lease: self.inner.config.lease,
            refused_agents: self.inner.breakers.refusing(),
        }
    }

    /// Starts a claimed step's attempt (already counted in `in_flight`).
    /// When it ends, its slot is free: the scheduler runs a round unless the
    /// results writer already claimed after the step's result and no round
    /// was refused a slot meanwhile.
    fn start(&self, tasks: &mut JoinSet<()>, step: ClaimedStep) {
        let engine = self.clone();
        tasks.spawn(async move {
            let handed_off = executor::execute(&engine, step).await;
            engine.inner.in_flight.fetch_sub(1, Ordering::SeqCst);
            if !handed_off || engine.inner.round_refused.swap(false, Ordering::SeqCst) {
                engine.wake();
            }
        });
    }

    async fn reaper(self, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(self.inner.config.reap_interval) => {}
                _ = shutdown.cancelled() => return,
            }
            if let Err(e) = self.reap_once().await {
                tracing::error!(error = %e, "reaper round failed; retrying");
            }
        }
    }

    /// One reaper round: expired leases back to `ready`, runs past their
    /// deadline stopped, runs asked to stop settled.
    pub async fn reap_once(&self) -> Result<(), StoreError> {
        let now = now_ms();
        let reaped = self.inner.store.reap_leases(Some(now)).await?;
        for (run_id, step) in &reaped {
            tracing::warn!(run_id = %run_id, step = %step, "lease expired; the step is ready again");
        }
        for run_id in self.inner.store.expire_runs(now).await? {
            self.stop_attempts(run_id.0, StopReason::TimedOut);
            self.settle(run_id).await?;
        }
        for run_id in self.inner.store.stopping_runs().await? {
            self.stop_attempts(run_id.0, StopReason::Cancelled);
            self.settle(run_id).await?;
        }
        if !reaped.is_empty() {
            self.wake();
        }
        Ok(())
    }

    /// Settles one run (applies the planner) and publishes what changed.
    pub async fn settle(&self, run_id: RunId) -> Result<(), StoreError> {
        if let Some(plan) = self
            .inner
            .store
            .settle_run(run_id, &self.inner.planner)
            .await?
        {
            self.publish_plan(run_id, &plan);
        }
        Ok(())
    }

    pub(crate) fn publish(&self, t: Transition) {
        let _ = self.inner.events.send(t);
    }

    pub(crate) fn publish_plan(&self, run_id: RunId, plan: &Plan) {
        if self.publish_changes(run_id, plan) {
            self.wake();
        }
    }

    /// Publishes a plan's transitions; true when a step became ready.
    pub(crate) fn publish_changes(&self, run_id: RunId, plan: &Plan) -> bool {
        let mut ready = false;
        for c in &plan.steps {
            ready |= c.to == StepState::Ready;
            self.publish(Transition::Step {
                run_id,
                step: c.step.clone(),
                state: c.to,
                agent: None,
                attempt: None,
                reason: c.reason.clone(),
            });
        }
        if let Some((state, reason)) = &plan.outcome {
            self.publish(Transition::Run {
                run_id,
                state: *state,
                reason: reason.clone(),
            });
        }
        ready
    }

    fn stop_attempts(&self, run_id: i64, why: StopReason) {
        for attempt in self.inner.running.lock().expect("running lock").values() {
            if attempt.run_id == run_id {
                attempt.stop(why);
            }
        }
    }

    // ----- control -------------------------------------------------------

    /// Pause: no new step of the run starts; running ones finish. Idempotent.
    pub async fn pause(&self, run_id: RunId) -> Result<ControlOutcome, StoreError> {
        let outcome = self.inner.store.pause_run(run_id).await?;
        if outcome == ControlOutcome::Changed {
            self.publish(Transition::Run {
                run_id,
                state: RunState::Paused,
                reason: "paused on request".into(),
            });
        }
        Ok(outcome)
    }

    /// Resume a paused run where it stood. Idempotent.
    pub async fn resume(&self, run_id: RunId) -> Result<ControlOutcome, StoreError> {
        let outcome = self.inner.store.resume_run(run_id).await?;
        if outcome == ControlOutcome::Changed {
            self.publish(Transition::Run {
                run_id,
                state: RunState::Running,
                reason: "resumed on request".into(),
            });
            self.settle(run_id).await?;
            self.wake();
        }
        Ok(outcome)
    }

    /// Cancel: running attempts are aborted through their cancellation
    /// token, steps not started are cancelled, and the run ends `cancelled`
    /// once its running steps have stopped. Idempotent.
    pub async fn cancel(&self, run_id: RunId, reason: &str) -> Result<ControlOutcome, StoreError> {
        let outcome = self.inner.store.cancel_run(run_id, reason).await?;
        if outcome == ControlOutcome::Changed {
            self.stop_attempts(run_id.0, StopReason::Cancelled);
            self.settle(run_id).await?;
        }
        Ok(outcome)
    }

    /// Retry `step` and its dependents, or with `None` every failed,
    /// cancelled or timed-out step and their dependents. Idempotent: a step
    /// already pending again is left as it is.
    pub async fn retry(
        &self,
        run_id: RunId,
        step: Option<&str>,
    ) -> Result<ControlOutcome, StoreError> {
        let outcome = self.inner.store.retry_run(run_id, step).await?;
        if outcome == ControlOutcome::Changed {
            self.publish(Transition::Run {
                run_id,
                state: RunState::Running,
                reason: format!("retry of {}", step.unwrap_or("failed steps")),
            });
            self.settle(run_id).await?;
            self.wake();
        }
        Ok(outcome)
    }

    /// Approve a run that waits for a maintainer (untrusted work): its steps
    /// may start now. `by` is the approver's login. Idempotent.
    pub async fn approve(&self, run_id: RunId, by: &str) -> Result<ControlOutcome, StoreError> {
        let outcome = self.inner.store.approve_run(run_id, by).await?;
        if outcome == ControlOutcome::Changed {
            self.publish(Transition::Run {
                run_id,
                state: RunState::Queued,
                reason: format!("approved by @{by}"),
            });
            self.settle(run_id).await?;
            self.wake();
        }
        Ok(outcome)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_event_cache_keeps_the_latest_deliveries_and_drops_the_oldest() {
        let mut cache = EventCache::default();
        let event = Arc::new(crate::event::Event::Ping);
        for i in 0..EVENT_CACHE + 10 {
            cache.insert(&format!("d-{i}"), event.clone());
        }
        // Inserting a kept id again does not count twice.
        cache.insert(&format!("d-{}", EVENT_CACHE + 9), event.clone());
        assert_eq!(cache.events.len(), EVENT_CACHE);
        assert_eq!(cache.order.len(), EVENT_CACHE);
        assert!(cache.get("d-0").is_none());
        assert!(cache.get("d-9").is_none());
        assert!(cache.get("d-10").is_some());
        assert!(cache.get(&format!("d-{}", EVENT_CACHE + 9)).is_some());
    }
}
