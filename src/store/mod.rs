//! The database behind taskmaster, as traits by role.
//!
//! Every arrow after intake goes through the database (see `DESIGN.md`), so
//! the store is where durability is decided. Its interface is split by who
//! uses it, each trait small enough that a test's fake is a few lines:
//!
//! | trait | used by | what |
//! |---|---|---|
//! | [`Store`] | the inbox, the dispatcher | deliveries, wake-ups, exclusive jobs |
//! | [`Runs`] | the engine | create, plan, claim, lease and finish steps |
//! | [`RunControl`] | commands, API, dashboard | pause, resume, cancel, retry, approve |
//! | [`Reports`] | the outbox | which runs' check runs and comments are stale |
//! | [`Effects`] | the outbox, handlers | queued comments, labels, reactions |
//! | [`ChangeStore`] | the publisher | changes brought back from workspaces |
//! | [`AppRecords`] | handlers, repository configuration | installations, cached configuration |
//! | [`Admin`] | the API's auth | audit log, API tokens, ended sessions |
//! | [`Tasks`] | the API | tasks and validations |
//! | [`Queries`] | the API, dashboard, `/metrics` | lists, timelines, counts |
//! | [`Retention`] | the pruner, `taskmaster prune` | what is past retention, database size |
//! | [`Spend`] | the engine's budgets, `/api/spend` | what agents cost per day, repository, installation |
//! | [`Histories`] | insights, predictions | runs and attempts of a window, step durations |
//!
//! [`RunStore`] is all of them at once (what `serve` opens). The decisions
//! both backends must make alike are pure functions in [`policy`]; the rows
//! both read, and their one mapping each, are in `rows`. The SQL stays in
//! the backends, each split by the same roles: `sqlite.rs` + `sqlite/` (one
//! process, one file) and `postgres.rs` + `postgres/` (several replicas
//! sharing one database).
//!
//! Instants crossing this interface are Unix epoch **milliseconds** (`i64`);
//! lengths of time are [`Duration`]s. Ids and names are typed from the
//! webhook to the database ([`RunId`], [`StepId`], [`InstallationId`],
//! [`RepoName`]).

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;

pub mod api;
pub mod app;
pub mod changes;
pub mod deliveries;
pub mod history;
pub mod policy;
pub mod postgres;
pub mod reports;
pub mod retention;
mod rows;
pub mod runs;
pub mod spend;
pub mod sqlite;
pub mod status;

pub use crate::github::RepoName;
pub use crate::ids::{InstallationId, RunId, StepId};
pub use api::{
    AgentAttemptStats, ApiToken, NewApiToken, NewTask, NewValidation, Role, RunFilter, StoreCounts,
    TaskFilter, TaskRecord, TaskSource, TaskState, TaskUpdate, ValidationFilter, ValidationKind,
    ValidationRecord, Verdict,
};
pub use app::{
    ActorKind, AuditEntry, Effect, EffectKind, EffectOutcome, EffectState, InstallationState,
    NewEffect, RepoConfigRecord,
};
pub use changes::{ChangeState, ChangeStore, Publication, PublishTarget, RunChange};
pub use deliveries::{DeliveryFilter, DeliverySummary};
pub use history::Histories;
pub use postgres::PgStore;
pub use reports::{ReportCandidate, ReportOutcome};
pub use retention::{Cutoffs, DatabaseSize, PruneCounts, Retention, RetentionSettings};
pub use runs::{
    AttemptEnd, AttemptRecord, AttemptRow, ClaimLimits, ClaimedStep, ControlOutcome, CreatedRun,
    DesiredState, Lease, NewRun, NewStep, Plan, Planner, Run, RunEvent, RunSnapshot, RunState,
    StepChange, StepFinish, StepNext, StepRecord, StepState,
};
pub use spend::{AgentSpend, Spend, SpendRow};
pub use sqlite::SqliteStore;
pub use status::{MigrationStatus, migration_status};

/// The lifecycle of a delivery in the inbox.
///
/// `queued → processing → done | failed`; `ignored` is set at intake for events
/// taskmaster does not act on. A transient handler failure puts a delivery back
/// to `queued` with a later `available_at`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeliveryState {
    Queued,
    Processing,
    Done,
    Ignored,
    Failed,
}

impl DeliveryState {
    /// The state's name as stored in the database and shown in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryState::Queued => "queued",
            DeliveryState::Processing => "processing",
            DeliveryState::Done => "done",
            DeliveryState::Ignored => "ignored",
            DeliveryState::Failed => "failed",
        }
    }

    /// Parses a stored state name; `None` for anything else.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "queued" => DeliveryState::Queued,
            "processing" => DeliveryState::Processing,
            "done" => DeliveryState::Done,
            "ignored" => DeliveryState::Ignored,
            "failed" => DeliveryState::Failed,
            _ => return None,
        })
    }
}

impl std::fmt::Display for DeliveryState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A verified delivery on its way into the inbox.
#[derive(Debug, Clone)]
pub struct NewDelivery {
    /// `X-GitHub-Delivery`: a GUID, the same on a redelivery.
    pub delivery_id: String,
    /// `X-GitHub-Event`, e.g. `pull_request`.
    pub event: String,
    /// The payload's `action`, e.g. `opened`, when it has one.
    pub action: Option<String>,
    /// `X-GitHub-Hook-ID`, when sent.
    pub hook_id: Option<i64>,
    pub installation_id: Option<InstallationId>,
    /// `owner/name` as the payload's envelope carried it, unchecked: a
    /// delivery is kept whatever its payload says (the parsed event's
    /// name is a checked [`RepoName`], and runs and effects carry that).
    pub repository: Option<String>,
    pub sender_id: Option<i64>,
    pub sender_login: Option<String>,
    /// The request body exactly as signed, encoded for storage (see
    /// [`EncodedPayload::encode`]; encode on the request's task, not the writer's).
    pub payload: EncodedPayload,
    /// Epoch milliseconds.
    pub received_at: i64,
    /// `Queued` for events the dispatcher acts on; `Ignored` or `Done` otherwise.
    pub state: DeliveryState,
}

/// How a stored payload is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayloadEncoding {
    /// Stored as received.
    Identity,
    /// Zstandard, level 1.
    Zstd,
}

impl PayloadEncoding {
    /// The encoding's stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            PayloadEncoding::Identity => "identity",
            PayloadEncoding::Zstd => "zstd",
        }
    }

    /// Parses a stored name; `None` for anything else.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "identity" => Some(PayloadEncoding::Identity),
            "zstd" => Some(PayloadEncoding::Zstd),
            _ => None,
        }
    }
}

/// A webhook body prepared for storage.
///
/// GitHub's JSON payloads are large (a `pull_request` event is ~22 KB) and
/// repetitive (dozens of URLs on the same host): zstd level 1 shrinks them
/// about tenfold in tens of microseconds. Stored small, a delivery fits in one
/// or two database pages instead of six, which is what lets one SQLite writer
/// keep up with intake. Compression runs on the request's own task, so it
/// spreads over every core instead of queueing in front of the writer.
#[derive(Debug, Clone)]
pub struct EncodedPayload {
    pub encoding: PayloadEncoding,
    /// Length of the raw body in bytes.
    pub raw_len: usize,
    /// The stored bytes.
    pub bytes: Bytes,
}

/// Bodies smaller than this (bytes) are stored as they are.
const COMPRESS_MIN_BYTES: usize = 512;

thread_local! {
    static COMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Compressor<'static>>> =
        const { std::cell::RefCell::new(None) };
    // Creating a decompression context per payload showed in the
    // dispatcher's profile (`ZSTD_createDCtx`, ~2 % of its time).
    static DECOMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { std::cell::RefCell::new(None) };
}

impl EncodedPayload {
    /// Compresses `raw` with zstd (level 1) when it is at least 512 bytes and
    /// compression makes it smaller; otherwise keeps it as it is.
    pub fn encode(raw: Bytes) -> Self {
        if raw.len() >= COMPRESS_MIN_BYTES {
            let compressed = COMPRESSOR.with(|cell| {
                let mut slot = cell.borrow_mut();
                if slot.is_none() {
                    *slot = zstd::bulk::Compressor::new(1).ok();
                }
                slot.as_mut().and_then(|c| c.compress(&raw).ok())
            });
            if let Some(compressed) = compressed
                && compressed.len() < raw.len()
            {
                return EncodedPayload {
                    encoding: PayloadEncoding::Zstd,
                    raw_len: raw.len(),
                    bytes: Bytes::from(compressed),
                };
            }
        }
        Self::identity(raw)
    }

    /// Keeps `raw` as it is.
    pub fn identity(raw: Bytes) -> Self {
        EncodedPayload {
            encoding: PayloadEncoding::Identity,
            raw_len: raw.len(),
            bytes: raw,
        }
    }

    /// Returns the raw body. Errors: [`StoreError::Corrupt`] when the stored
    /// bytes do not decode to `raw_len` bytes.
    pub fn decode(&self) -> Result<Bytes, StoreError> {
        match self.encoding {
            PayloadEncoding::Identity => Ok(self.bytes.clone()),
            PayloadEncoding::Zstd => {
                let raw = DECOMPRESSOR
                    .with(|cell| {
                        let mut slot = cell.borrow_mut();
                        if slot.is_none() {
                            *slot = Some(zstd::bulk::Decompressor::new()?);
                        }
                        slot.as_mut()
                            .expect("set above")
                            .decompress(&self.bytes, self.raw_len)
                    })
                    .map_err(|e| StoreError::Corrupt {
                        table: "delivery_payloads",
                        detail: format!("zstd payload does not decode: {e}"),
                    })?;
                if raw.len() != self.raw_len {
                    return Err(StoreError::Corrupt {
                        table: "delivery_payloads",
                        detail: format!(
                            "payload is {} bytes, expected {}",
                            raw.len(),
                            self.raw_len
                        ),
                    });
                }
                Ok(Bytes::from(raw))
            }
        }
    }
}

/// What happened to one delivery of a batch insert.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InsertOutcome {
    /// The row is new and committed.
    Stored,
    /// A row with this delivery id already existed; nothing changed.
    Duplicate,
}

/// A delivery as stored, with its processing state.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// Arrival order (database row id).
    pub id: i64,
    pub delivery_id: String,
    pub event: String,
    pub action: Option<String>,
    pub hook_id: Option<i64>,
    pub installation_id: Option<InstallationId>,
    /// As received, unchecked (see [`NewDelivery::repository`]).
    pub repository: Option<String>,
    pub sender_id: Option<i64>,
    pub sender_login: Option<String>,
    pub payload: Bytes,
    pub received_at: i64,
    pub state: DeliveryState,
    /// How many times a dispatcher claimed it.
    pub attempts: i64,
    pub error: Option<String>,
}

/// How a claimed delivery ended, reported back by the dispatcher.
#[derive(Debug, Clone, PartialEq)]
pub enum DeliveryResult {
    /// Handled; state `done`.
    Done,
    /// Handled by starting these runs: state `done`, and the runs and their
    /// steps are created **in the same transaction** (a run already stored for
    /// the same delivery and workflow is left as it is). A store without run
    /// tables fails the whole batch.
    Started(Vec<NewRun>),
    /// Nothing to do for it; state `ignored`, with the reason in `error`.
    Ignored(String),
    /// Try again at `retry_at` (epoch ms); state back to `queued`.
    Retry { error: String, retry_at: i64 },
    /// Given up; state `failed`.
    Failed(String),
}

/// A wait for a committed batch to become durable (see
/// [`Store::stage_deliveries`]).
pub type Durable =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), StoreError>> + Send>>;

/// The wait of a batch that was durable when its commit returned.
pub fn already_durable() -> Durable {
    Box::pin(std::future::ready(Ok(())))
}

/// Counts of deliveries still to be handled.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct InboxDepth {
    pub queued: i64,
    pub processing: i64,
    /// When the oldest queued delivery was received (ms since the epoch);
    /// `None` when nothing is queued. Its age is the dispatcher's lag.
    pub oldest_queued_at: Option<i64>,
}

/// Errors from the database. The message says what failed; the source is kept.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// An error from a batch run on the SQLite writer's own handle.
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A SQLite migration's SQL failed (its transaction rolled back).
    #[error("database migration {version} ({description}) failed: {error}")]
    MigrationStep {
        version: i64,
        description: String,
        error: rusqlite::Error,
    },
    #[error("unsupported database URL `{url}`: {hint}")]
    UnsupportedUrl { url: String, hint: &'static str },
    /// Another process holds this SQLite database ([`connect_runs_with`]).
    #[error("{0}")]
    InUse(String),
    #[error("corrupt row in `{table}`: {detail}")]
    Corrupt { table: &'static str, detail: String },
    /// The database's write-ahead log could not be synced to disk, so what
    /// was committed since its last sync may not survive a power loss. The
    /// store refuses to promise durability from then on (as PostgreSQL
    /// stops on a failed fsync): restart the process.
    #[error("the database's write-ahead log could not be synced to disk: {0}")]
    Durability(String),
    /// What was asked for was deleted by retention (see [`retention`]):
    /// `what` says what, and how to keep it longer.
    #[error("{what} was deleted by retention; {hint}")]
    Pruned { what: String, hint: &'static str },
}

/// Effects of one installation in one [`Effects::due_effects`] batch at most.
pub const EFFECT_TURNS: i64 = 20;

/// The persistence interface. Implementations must be safe to share across tasks.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Applies the embedded migrations (idempotent).
    async fn migrate(&self) -> Result<(), StoreError>;

    /// Cheap liveness check of the database connection.
    async fn ping(&self) -> Result<(), StoreError>;

    /// As [`Store::insert_deliveries`], but may return once the batch is
    /// committed and visible, before it is durable: the returned [`Durable`]
    /// resolves when it is (or fails when it cannot be made so). Answer no
    /// one about the batch — not even "duplicate" — before it resolves.
    ///
    /// This lets a caller commit the next batch while the disk syncs this
    /// one (the inbox writer does). SQLite overrides it (see
    /// `SqliteStore`'s write-ahead-log syncer); the default is
    /// `insert_deliveries` with an already resolved wait.
    ///
    /// Errors: as `insert_deliveries`; the wait fails with
    /// [`StoreError::Durability`].
    async fn stage_deliveries(
        &self,
        batch: &[NewDelivery],
    ) -> Result<(Vec<InsertOutcome>, Durable), StoreError> {
        Ok((self.insert_deliveries(batch).await?, already_durable()))
    }

    /// Inserts a batch of deliveries in **one transaction** (group commit) and
    /// returns one outcome per input, in order. A delivery id that is already
    /// stored, or repeated earlier in the same batch, is `Duplicate`. When this
    /// returns `Ok`, every `Stored` row is durable.
    async fn insert_deliveries(
        &self,
        batch: &[NewDelivery],
    ) -> Result<Vec<InsertOutcome>, StoreError>;

    /// Claims up to `limit` deliveries that are `queued` and available (or whose
    /// lease expired), oldest first: state → `processing`, lease held by `owner`
    /// until `now + lease`.
    async fn claim_deliveries(
        &self,
        owner: &str,
        limit: usize,
        lease: Duration,
    ) -> Result<Vec<Delivery>, StoreError>;

    /// Records how claimed deliveries ended, in one transaction. A row is only
    /// changed while `owner` still holds its lease (fencing); returns how many
    /// rows were changed.
    async fn finish_deliveries(
        &self,
        owner: &str,
        results: &[(i64, DeliveryResult)],
    ) -> Result<u64, StoreError>;

    /// Start-up recovery: returns deliveries a previous process left in
    /// `processing` to `queued`. Returns how many.
    async fn recover_deliveries(&self) -> Result<u64, StoreError>;

    /// Returns `owner`'s claimed deliveries to `queued` (graceful shutdown).
    async fn release_deliveries(&self, owner: &str) -> Result<u64, StoreError>;

    /// Extends the leases of the deliveries `owner` is handling to
    /// `now + lease` (the dispatcher renews while a slow handler works, so
    /// no other replica takes them over). Returns how many. The default
    /// renews nothing (stores with one process need not).
    async fn renew_delivery_leases(&self, owner: &str, lease: Duration) -> Result<u64, StoreError> {
        let _ = (owner, lease);
        Ok(0)
    }

    /// One delivery by its `X-GitHub-Delivery` id.
    async fn delivery(&self, delivery_id: &str) -> Result<Option<Delivery>, StoreError>;

    /// How many deliveries are queued and in processing.
    async fn inbox_depth(&self) -> Result<InboxDepth, StoreError>;

    /// Wake-up hints from **other processes** sharing this database (on
    /// PostgreSQL, `LISTEN/NOTIFY`): a value arrives on the receiver when
    /// another replica committed work of `topic` (and also, spuriously,
    /// after a reconnection, when hints may have been missed). Hints are
    /// only hints: whoever waits on them must still poll. `None` for a store
    /// only one process uses (SQLite), whose wake-ups stay in-process.
    fn remote_wakeups(&self, topic: WakeTopic) -> Option<tokio::sync::broadcast::Receiver<()>> {
        let _ = topic;
        None
    }

    /// Asks to be the one process doing `job` (e.g. `"redelivery"`) while
    /// the returned guard lives; `None` when another process holds it. On
    /// PostgreSQL this is a session-level advisory lock on a connection the
    /// guard keeps (released when the guard drops, or when the process
    /// dies and its connection closes); a single-process store always says
    /// yes. Errors: the database is unreachable.
    async fn try_exclusive(&self, job: &str) -> Result<Option<ExclusiveGuard>, StoreError> {
        let _ = job;
        Ok(Some(ExclusiveGuard::local()))
    }
}

/// What a [`Store::remote_wakeups`] hint is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WakeTopic {
    /// New deliveries were queued: dispatchers should claim.
    Deliveries,
    /// Steps became ready (or runs were created, resumed, retried, or leases
    /// reaped): schedulers should plan and claim.
    Steps,
}

/// Proof of holding a [`Store::try_exclusive`] job; dropping it releases the job.
pub struct ExclusiveGuard {
    _held: Option<Box<dyn HeldJob>>,
}

/// What keeps a shared job held (PostgreSQL: the session holding its
/// advisory lock), and can tell whether it still is.
#[async_trait]
pub trait HeldJob: Send {
    /// Whether the job is still held: a session that died (a dropped
    /// connection, `pg_terminate_backend`, a failover) has lost it, and
    /// another replica may hold it now.
    async fn still_held(&mut self) -> bool;
}

impl ExclusiveGuard {
    /// A guard with nothing to release (single-process stores).
    pub fn local() -> Self {
        ExclusiveGuard { _held: None }
    }

    /// A guard that releases the job when `held` is dropped.
    pub fn holding(held: Box<dyn HeldJob>) -> Self {
        ExclusiveGuard { _held: Some(held) }
    }

    /// Whether the job is still this process's: checked before each unit
    /// of work it guards (an outbox pass), so a holder whose session died
    /// steps down instead of working beside the new holder. Always true for
    /// single-process stores.
    pub async fn still_held(&mut self) -> bool {
        match self._held.as_mut() {
            Some(held) => held.still_held().await,
            None => true,
        }
    }
}

impl std::fmt::Debug for ExclusiveGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExclusiveGuard")
            .field("shared", &self._held.is_some())
            .finish()
    }
}

/// The engine's operations on runs, steps, attempts and leases.
///
/// Every operation that changes a run takes the writer lock for its whole
/// transaction (SQLite: `BEGIN IMMEDIATE`; PostgreSQL: `SELECT … FOR UPDATE`
/// on the run), and the ones taking a [`Planner`] decide what follows while
/// holding it; see [`runs`].
#[async_trait]
pub trait Runs: Send + Sync + 'static {
    /// Creates runs and their steps (all `pending`) in one transaction. A run
    /// whose (delivery, workflow) exists already is not created again
    /// (`created: false`). A run with `cancel_in_progress` asks every older
    /// active run of its concurrency group to cancel.
    async fn create_runs(&self, runs: &[NewRun]) -> Result<Vec<CreatedRun>, StoreError>;

    /// Runs that are `queued` with every step still `pending`: created but not
    /// yet planned (the dispatcher creates runs without a planner).
    async fn unplanned_runs(&self) -> Result<Vec<RunId>, StoreError>;

    /// Applies `planner`'s decisions to the run; returns what changed
    /// (`None`: no such run).
    async fn settle_run(
        &self,
        run_id: RunId,
        planner: &dyn Planner,
    ) -> Result<Option<Plan>, StoreError>;

    /// Claims `ready` steps whose `run_at` has passed, of runs that are meant
    /// to run, in service order — run priority, then the older run first
    /// (runs of one priority finish in the order they came, not all started
    /// before any finishes), then critical-path rank within a run — within `limits` and
    /// each run's `max_parallel`; an older active run of the same concurrency
    /// group holds newer ones back. Each claimed step is `running` under a
    /// fresh lease owned by `owner`, and — unless its agent is in
    /// `limits.refused_agents` — its next attempt is started (recorded with
    /// its number) in the same transaction: one commit per batch instead of
    /// one per step.
    async fn claim_steps(
        &self,
        owner: &str,
        limits: &ClaimLimits,
    ) -> Result<Vec<ClaimedStep>, StoreError>;

    /// Extends the lease to `now + ttl`; returns the run's desired state,
    /// or `None` when the lease is no longer held (the step was reaped or
    /// reclaimed): the holder must stop and its result will be refused.
    async fn renew_lease(
        &self,
        lease: &Lease,
        ttl: Duration,
    ) -> Result<Option<DesiredState>, StoreError>;

    /// The heartbeat of a whole engine: extends the leases `owner` holds
    /// **with one of `tokens`** (the lease tokens of its running attempts) to
    /// `now + ttl` in one transaction, and returns each renewed step
    /// with its lease token and its run's desired state. A step that is not
    /// returned has lost its lease. Fencing by token matters: a lease whose
    /// token no running attempt holds must be left to expire and be reaped,
    /// or its step would stay `running` forever.
    async fn renew_leases(
        &self,
        owner: &str,
        tokens: &[String],
        ttl: Duration,
    ) -> Result<Vec<(StepId, String, DesiredState)>, StoreError>;

    /// Records how an attempt ended (when one was made), moves the step on as
    /// `next` says, writes the timeline event `(kind, detail)`, and settles
    /// the run with `planner` — all in one transaction, **fenced**: when the
    /// lease token is no longer the step's, nothing is written and `None` is
    /// returned.
    async fn finish_step(
        &self,
        lease: &Lease,
        attempt: Option<&AttemptRecord>,
        next: &StepNext,
        event: (&str, &str),
        planner: &dyn Planner,
    ) -> Result<Option<Plan>, StoreError> {
        let finish = StepFinish {
            lease: lease.clone(),
            attempt: attempt.cloned(),
            next: next.clone(),
            kind: event.0.to_owned(),
            detail: event.1.to_owned(),
        };
        Ok(self.finish_steps(&[finish], planner).await?.pop().flatten())
    }

    /// [`Runs::finish_step`] for a batch, in **one transaction** (group
    /// commit: one fsync for many results). Each result is fenced on its own:
    /// a refused one is `None` and changes nothing; the others are recorded.
    async fn finish_steps(
        &self,
        batch: &[StepFinish],
        planner: &dyn Planner,
    ) -> Result<Vec<Option<Plan>>, StoreError>;

    /// [`Runs::finish_steps`], then [`Runs::claim_steps`] for `owner`
    /// within `limits`: the steps those results made ready are claimed (and
    /// their attempts started) at once, without waiting for a scheduler
    /// round — the engine's **direct hand-off**. Returns the plans (as
    /// `finish_steps`) and the claimed steps (as `claim_steps`), or `None`
    /// when no claim ran (`limits.max` is 0, or the claim failed).
    ///
    /// A store that can do both in one transaction does (SQLite: one commit,
    /// so one fsync per hop instead of two). The default runs the two
    /// transactions in turn. Either way a failed claim never loses the
    /// results: they are committed and returned with `None` (the scheduler's
    /// next round claims). Errors: the results could not be recorded
    /// (nothing is committed).
    async fn finish_and_claim(
        &self,
        batch: &[StepFinish],
        planner: &dyn Planner,
        owner: &str,
        limits: &ClaimLimits,
    ) -> Result<(Vec<Option<Plan>>, Option<Vec<ClaimedStep>>), StoreError> {
        let plans = self.finish_steps(batch, planner).await?;
        if limits.max == 0 {
            return Ok((plans, None));
        }
        let claimed = match self.claim_steps(owner, limits).await {
            Ok(claimed) => Some(claimed),
            Err(e) => {
                tracing::warn!(error = %e, "claim after recording results failed; the scheduler will claim");
                None
            }
        };
        Ok((plans, claimed))
    }

    /// Returns `running` steps whose lease expired before `before` (all of
    /// them when `None`: start-up recovery of a single-process store) to
    /// `ready`; their unfinished attempts become `lost`. Returns
    /// `(run id, step id)` of each.
    async fn reap_leases(&self, before: Option<i64>) -> Result<Vec<(RunId, String)>, StoreError>;

    /// Asks active runs whose deadline passed before `now` to stop
    /// (desired `timed_out`); returns their ids.
    async fn expire_runs(&self, now: i64) -> Result<Vec<RunId>, StoreError>;

    /// Active runs asked to stop (cancelled or timed out): the reaper
    /// aborts their attempts and settles them.
    async fn stopping_runs(&self) -> Result<Vec<RunId>, StoreError>;

    /// Ids of runs not in an end state.
    async fn active_runs(&self) -> Result<Vec<RunId>, StoreError>;

    /// A run and its steps.
    async fn run(&self, run_id: RunId) -> Result<Option<RunSnapshot>, StoreError>;

    /// Records that run `run_id`'s workspace checked out `sha` (kept when the
    /// run already has one: the first checkout's commit is the run's) and
    /// adds a `workspace` event with `detail` to its timeline, for `step`.
    async fn record_checkout(
        &self,
        run_id: RunId,
        step: &str,
        sha: &str,
        detail: &str,
    ) -> Result<(), StoreError>;
}

/// What maintainers ask of a run (`/pause`, `/resume`, `/cancel`, `/retry`,
/// `/approve`, the API and the dashboard's buttons). Which steps a retry
/// resets is [`policy::retry_plan`]'s decision.
#[async_trait]
pub trait RunControl: Send + Sync + 'static {
    /// Pause: no new step of the run starts; running ones finish.
    async fn pause_run(&self, run_id: RunId) -> Result<ControlOutcome, StoreError>;

    /// Resume a paused run where it stood.
    async fn resume_run(&self, run_id: RunId) -> Result<ControlOutcome, StoreError>;

    /// Ask a run to cancel (`reason` goes to the timeline); the engine aborts
    /// its running attempts and the planner cancels the rest.
    async fn cancel_run(&self, run_id: RunId, reason: &str) -> Result<ControlOutcome, StoreError>;

    /// Retry: `step` and the steps that depend on it (transitively), or, with
    /// `None`, every failed, cancelled or timed-out step and their dependents,
    /// go back to `pending` with fresh attempt counts; the run is active
    /// again. Running steps are left alone.
    async fn retry_run(
        &self,
        run_id: RunId,
        step: Option<&str>,
    ) -> Result<ControlOutcome, StoreError>;

    /// Stops a run because a budget is spent (see [`crate::budget`]): as
    /// [`RunControl::cancel_run`] with `message` as the reason, and the run
    /// remembers it (`Run::stopped_by_budget`) so its check run says so, as
    /// `neutral`. `Unchanged` when the run was already stopping or ended.
    async fn stop_over_budget(
        &self,
        run_id: RunId,
        message: &str,
    ) -> Result<ControlOutcome, StoreError>;

    /// Lets a run that waits for approval start its steps; `by` is the
    /// approver's login (timeline). Its time limit restarts from now.
    /// `Unchanged` when it was not waiting (already approved, or finished).
    async fn approve_run(&self, run_id: RunId, by: &str) -> Result<ControlOutcome, StoreError>;
}

/// What the outbox needs to report runs on GitHub: which runs' check runs
/// and sticky comments may be stale, and what was sent (see [`reports`]).
#[async_trait]
pub trait Reports: Send + Sync + 'static {
    /// Runs whose GitHub report may be stale (see [`reports`]): runs with a
    /// repository, a subject number and an installation (from their
    /// delivery) that were never reported, whose state is not the one
    /// reported, or that are active with a step started or finished since
    /// the report's `observed_at` (or last reported over a minute before
    /// `now`: a safety net for changes no step time shows, such as a retried
    /// attempt's start, and for replicas' clocks apart); and whose retry backoff
    /// (`next_attempt_at`) has passed at `now` (ms). The caller compares
    /// fingerprints to decide. At most `limit`: runs never reported first
    /// (a new run's check run goes out ahead of updates), then oldest first.
    /// Runs that are active but unchanged are not candidates, so a storm of
    /// queued runs does not fill the window and starve new ones.
    async fn report_candidates(
        &self,
        now: i64,
        limit: i64,
    ) -> Result<Vec<ReportCandidate>, StoreError>;

    /// Stores the check run GitHub created (or found) for a run.
    /// Runs after `after_run_id` (any state) with a repository, a subject
    /// number and an installation that the outbox has never touched (no
    /// report, no check run, no failure recorded), oldest first, at most
    /// `limit`: the cheap look a pass under way takes for runs created
    /// since it began, to give them a check run. A range of the primary
    /// key. The candidates' report fields are empty.
    async fn unreported_runs(
        &self,
        after_run_id: RunId,
        limit: i64,
    ) -> Result<Vec<ReportCandidate>, StoreError>;

    async fn record_check_run(&self, run_id: RunId, check_run_id: i64) -> Result<(), StoreError>;

    /// Records how a report attempt of a run ended.
    async fn record_report(&self, run_id: RunId, outcome: &ReportOutcome)
    -> Result<(), StoreError>;

    /// The sticky comment of pull request or issue `number` of `repository`.
    async fn sticky_comment(
        &self,
        repository: &RepoName,
        number: i64,
    ) -> Result<Option<i64>, StoreError>;

    /// Stores (or replaces) the sticky comment of a pull request or issue.
    async fn set_sticky_comment(
        &self,
        repository: &RepoName,
        number: i64,
        comment_id: i64,
    ) -> Result<(), StoreError>;

    /// The ids of the runs about pull request or issue `number` of
    /// `repository`, newest first, at most `limit`.
    async fn subject_runs(
        &self,
        repository: &RepoName,
        number: i64,
        limit: i64,
    ) -> Result<Vec<RunId>, StoreError>;

    /// The ids of the runs on commit `head_sha` of `repository`, oldest first
    /// (`check_suite.rerequested`, which fork PRs send without PR numbers).
    async fn runs_for_commit(
        &self,
        repository: &RepoName,
        head_sha: &str,
    ) -> Result<Vec<RunId>, StoreError>;
}

/// The queue of GitHub effects (comments, labels, reactions) handlers and
/// steps ask for, sent by the outbox with retries (see [`app`]).
#[async_trait]
pub trait Effects: Send + Sync + 'static {
    /// Queues GitHub effects; an effect whose `(source, seq)` is already
    /// queued is left alone. Returns how many were new.
    async fn enqueue_effects(&self, effects: &[NewEffect]) -> Result<u64, StoreError>;

    /// Pending effects due at `now` (epoch ms), at most `limit`, taking
    /// turns between installations: each installation's oldest first, at
    /// most [`EFFECT_TURNS`] of one installation, ordered by turn then age
    /// (so one installation's backlog never fills a batch).
    async fn due_effects(&self, now: i64, limit: i64) -> Result<Vec<Effect>, StoreError>;

    /// Records how an attempt to send effect `id` ended.
    async fn finish_effect(&self, id: i64, outcome: &EffectOutcome) -> Result<(), StoreError>;

    /// The effects caused by `source`, in order (for tests, the API and dry runs).
    async fn effects_for(&self, source: &str) -> Result<Vec<Effect>, StoreError>;
}

/// The GitHub App's own records: installations, their repositories, and
/// the cached `.github/taskmaster.yml` of each repository (see [`app`]).
#[async_trait]
pub trait AppRecords: Send + Sync + 'static {
    /// Records an installation's state (`installation` webhook: created,
    /// suspend, unsuspend, deleted). `account_login` is kept when `None`.
    async fn set_installation(
        &self,
        installation_id: InstallationId,
        account_login: Option<&str>,
        state: InstallationState,
    ) -> Result<(), StoreError>;

    /// An installation's recorded state; `None` when no event about it was seen.
    async fn installation_state(
        &self,
        installation_id: InstallationId,
    ) -> Result<Option<InstallationState>, StoreError>;

    /// Adds and removes repositories (`owner/name`) of an installation
    /// (`installation_repositories` webhook, or `installation.created`).
    async fn update_installation_repositories(
        &self,
        installation_id: InstallationId,
        added: &[RepoName],
        removed: &[RepoName],
    ) -> Result<(), StoreError>;

    /// The repositories recorded for an installation, sorted.
    async fn installation_repositories(
        &self,
        installation_id: InstallationId,
    ) -> Result<Vec<RepoName>, StoreError>;

    /// The cached `.github/taskmaster.yml` of `repository`, if fetched before.
    async fn repo_config(
        &self,
        repository: &RepoName,
    ) -> Result<Option<RepoConfigRecord>, StoreError>;

    /// Stores a fetched `.github/taskmaster.yml` (replacing the cached one).
    async fn set_repo_config(
        &self,
        repository: &RepoName,
        record: &RepoConfigRecord,
    ) -> Result<(), StoreError>;

    /// Drops the cached configuration of `repository` (a push touched it).
    async fn forget_repo_config(&self, repository: &RepoName) -> Result<(), StoreError>;

    /// The installation that last delivered an event about `repository`
    /// (`owner/name`), if any: runs started through the API report there.
    async fn installation_for_repository(
        &self,
        repository: &RepoName,
    ) -> Result<Option<InstallationId>, StoreError>;
}

/// Who may do what, and what they did: the audit log, API tokens and
/// ended dashboard sessions (see [`api`]).
#[async_trait]
pub trait Admin: Send + Sync + 'static {
    /// Appends an entry to the audit log; returns its id. `entry.id` is ignored.
    async fn append_audit(&self, entry: &AuditEntry) -> Result<i64, StoreError>;

    /// Audit entries, newest first, with ids below `before_id` when given, at
    /// most `limit`.
    async fn audit_entries(
        &self,
        before_id: Option<i64>,
        limit: i64,
    ) -> Result<Vec<AuditEntry>, StoreError>;

    /// Stores an API token; `None` when a token of that name exists already
    /// (revoked or not: names are never reused, so the audit log stays clear).
    async fn create_api_token(&self, token: &NewApiToken) -> Result<Option<ApiToken>, StoreError>;

    /// The token whose SHA-256 is `token_hash` (revoked ones too).
    async fn api_token_by_hash(&self, token_hash: &str) -> Result<Option<ApiToken>, StoreError>;

    /// Every API token, oldest first.
    async fn api_tokens(&self) -> Result<Vec<ApiToken>, StoreError>;

    /// Revokes the token called `name` at `at` (epoch ms); a token revoked
    /// before keeps its first revocation time. `None`: no such token.
    async fn revoke_api_token(&self, name: &str, at: i64) -> Result<Option<ApiToken>, StoreError>;

    /// Records that token `id` was used at `at` (epoch ms).
    async fn touch_api_token(&self, id: i64, at: i64) -> Result<(), StoreError>;

    /// Ends the dashboard session whose cookie carries `signature` (it would
    /// expire at `expires_at`, epoch ms): [`Admin::session_ended`] says so
    /// from now on, on every replica. Rows of sessions that expired anyway
    /// are dropped on the way.
    async fn end_session(&self, signature: &str, expires_at: i64) -> Result<(), StoreError>;

    /// Whether the session with this cookie signature was ended.
    async fn session_ended(&self, signature: &str) -> Result<bool, StoreError>;
}

/// Tasks and validations: work and checks the operator API records beside
/// runs (see [`api`]).
#[async_trait]
pub trait Tasks: Send + Sync + 'static {
    /// Stores a task.
    async fn create_task(&self, task: &NewTask) -> Result<TaskRecord, StoreError>;

    /// One task.
    async fn task(&self, id: i64) -> Result<Option<TaskRecord>, StoreError>;

    /// Tasks matching `filter`, newest first.
    async fn tasks(&self, filter: &TaskFilter) -> Result<Vec<TaskRecord>, StoreError>;

    /// Changes a task; `None`: no such task. A `run_id` must name a stored run.
    async fn update_task(
        &self,
        id: i64,
        update: &TaskUpdate,
    ) -> Result<Option<TaskRecord>, StoreError>;

    /// Stores a validation. A `run_id` must name a stored run.
    async fn create_validation(
        &self,
        validation: &NewValidation,
    ) -> Result<ValidationRecord, StoreError>;

    /// One validation.
    async fn validation(&self, id: i64) -> Result<Option<ValidationRecord>, StoreError>;

    /// Validations matching `filter`, newest first.
    async fn validations(
        &self,
        filter: &ValidationFilter,
    ) -> Result<Vec<ValidationRecord>, StoreError>;
}

/// Read-mostly views for the operator: the API, the dashboard and
/// `/metrics` (run lists, timelines, attempts, deliveries, counts).
#[async_trait]
pub trait Queries: Send + Sync + 'static {
    /// Runs started by one delivery.
    async fn runs_for_delivery(&self, delivery_id: &str) -> Result<Vec<Run>, StoreError>;

    /// A run's timeline, oldest first.
    async fn run_events(&self, run_id: RunId) -> Result<Vec<RunEvent>, StoreError>;

    /// A run's attempts, in start order.
    async fn attempts(&self, run_id: RunId) -> Result<Vec<AttemptRow>, StoreError>;

    /// Runs matching `filter`, newest first.
    async fn list_runs(&self, filter: &RunFilter) -> Result<Vec<Run>, StoreError>;

    /// How many runs about pull request or issue `number` of `repository`
    /// were created at or after `since` (epoch ms): the dispatcher's loop
    /// breaker.
    async fn subject_runs_since(
        &self,
        repository: &RepoName,
        number: i64,
        since: i64,
    ) -> Result<i64, StoreError>;

    /// Row counts for the metrics scrape.
    async fn store_counts(&self) -> Result<StoreCounts, StoreError>;

    /// Per agent: attempts in flight, and attempts finished since `since`
    /// (epoch ms) with their durations.
    async fn agent_attempt_stats(&self, since: i64) -> Result<Vec<AgentAttemptStats>, StoreError>;

    /// Deliveries matching `filter`, newest first, without their payloads
    /// (the dashboard's deliveries page).
    async fn list_deliveries(
        &self,
        filter: &DeliveryFilter,
    ) -> Result<Vec<DeliverySummary>, StoreError>;

    /// Puts a `failed` or `ignored` delivery back in the queue (available at
    /// `now`, epoch ms) so the dispatcher handles it again; a delivery in
    /// another state is left as it is. Returns the state it had, `None` when
    /// no delivery has this id. Errors: [`StoreError::Pruned`] when its
    /// payload is gone (past retention). Safe to repeat: runs are keyed by (delivery,
    /// workflow) and effects by delivery, so handling it again duplicates
    /// nothing that was done.
    async fn requeue_delivery(
        &self,
        delivery_id: &str,
        now: i64,
    ) -> Result<Option<DeliveryState>, StoreError>;
}

/// Every role of a database behind a whole service: what `serve` opens and
/// hands to the engine, the outbox, the API and the dashboard. A part that
/// needs one role takes that trait instead (a fake of it for a test is a
/// few lines). Implemented for every type that implements all of them.
pub trait RunStore:
    Store
    + ChangeStore
    + Runs
    + RunControl
    + Reports
    + Effects
    + AppRecords
    + Admin
    + Tasks
    + Queries
    + Retention
    + Spend
    + Histories
{
}

impl<T> RunStore for T where
    T: Store
        + ChangeStore
        + Runs
        + RunControl
        + Reports
        + Effects
        + AppRecords
        + Admin
        + Tasks
        + Queries
        + Retention
        + Spend
        + Histories
{
}

/// `sql`, written once with SQLite's numbered placeholders (`?1`), with
/// PostgreSQL's (`$1`) for the SQL both backends share. Placeholders only:
/// a `?` not followed by digits (in a string literal, say) stays.
pub(in crate::store) fn postgres_sql(sql: &str) -> String {
    static PLACEHOLDER: std::sync::LazyLock<regex::Regex> =
        std::sync::LazyLock::new(|| regex::Regex::new(r"\?(\d+)").expect("a valid pattern"));
    PLACEHOLDER.replace_all(sql, "$$$1").into_owned()
}

/// Every store trait, to bring their methods into scope at once:
/// `use taskmaster::store::prelude::*;`.
pub mod prelude {
    pub use super::{
        Admin, AppRecords, ChangeStore, Effects, Histories, Queries, Reports, Retention,
        RunControl, RunStore, Runs, Spend, Store, Tasks,
    };
}

/// Connection pool settings of the PostgreSQL store (SQLite ignores them:
/// it always has one writer connection and four readers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolSettings {
    /// Most connections one process opens (`TASKMASTER_PG_MAX_CONNECTIONS`,
    /// default 10; at least 2). Each replica opens up to this many plus one
    /// for `LISTEN`; an exclusive job it holds (the outbox, a redelivery
    /// scan) keeps one of the pool's connections. Size PostgreSQL's
    /// `max_connections` for every replica together.
    pub max_connections: u32,
    /// Connections kept open while idle (`TASKMASTER_PG_MIN_CONNECTIONS`,
    /// default 1).
    pub min_connections: u32,
    /// How long a query waits for a free connection before failing
    /// (`TASKMASTER_PG_ACQUIRE_TIMEOUT_MS`, default 10,000 ms).
    pub acquire_timeout: Duration,
}

impl Default for PoolSettings {
    fn default() -> Self {
        PoolSettings {
            max_connections: 10,
            min_connections: 1,
            acquire_timeout: Duration::from_secs(10),
        }
    }
}

/// True when `database_url` names a PostgreSQL database
/// (`postgres://…` or `postgresql://…`).
pub fn is_postgres_url(database_url: &str) -> bool {
    database_url.starts_with("postgres://") || database_url.starts_with("postgresql://")
}

/// Opens the store named by `database_url` and applies migrations.
///
/// `postgres://…` or `postgresql://…` select PostgreSQL (with the default
/// [`PoolSettings`]); `sqlite://path`, `sqlite:path` or a bare path select
/// SQLite (the file is created if absent). Errors: the database cannot be
/// reached or migrated.
pub async fn connect(database_url: &str) -> Result<Arc<dyn Store>, StoreError> {
    Ok(connect_runs(database_url).await? as Arc<dyn Store>)
}

/// As [`connect`], with the engine's operations ([`RunStore`]).
pub async fn connect_runs(database_url: &str) -> Result<Arc<dyn RunStore>, StoreError> {
    connect_runs_with(database_url, &PoolSettings::default()).await
}

/// As [`connect_runs`], with PostgreSQL pool settings.
///
/// A SQLite database is used by one process at a time: this takes an
/// exclusive lock on `<file>.lock` for the store's lifetime and fails with
/// [`StoreError::InUse`] (naming the holder's pid) when another process
/// holds it. Several replicas need PostgreSQL.
pub async fn connect_runs_with(
    database_url: &str,
    pool: &PoolSettings,
) -> Result<Arc<dyn RunStore>, StoreError> {
    if is_postgres_url(database_url) {
        let store = PgStore::open(database_url, pool).await?;
        store.migrate().await?;
        return Ok(Arc::new(store));
    }
    // One process per SQLite file: a second service, or `taskmaster run`
    // against a live database, would take over the running steps.
    let lock = sqlite::ProcessLock::acquire(database_url)?;
    let mut store = SqliteStore::open(database_url).await?;
    store.hold(lock);
    store.migrate().await?;
    Ok(Arc::new(store))
}

/// Removes a password from a URL so it can be shown in errors and logs.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let userinfo = &url[scheme_end + 3..at];
            match userinfo.find(':') {
                Some(colon) => format!(
                    "{}{}:***{}",
                    &url[..scheme_end + 3],
                    &userinfo[..colon],
                    &url[at..]
                ),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

/// Reads a column holding an enum's stored name (SQLite), through the
/// enum's `parse`; other text is an error naming `what` and the text
/// ("unknown attempt outcome" and the name), so the row reads as corrupt. What the state enums'
/// `FromSql` impls and [`crate::agent::ErrorClass`]'s share.
pub(crate) fn stored_name<T>(
    value: rusqlite::types::ValueRef<'_>,
    what: &str,
    parse: impl Fn(&str) -> Option<T>,
) -> rusqlite::types::FromSqlResult<T> {
    let text = value.as_str()?;
    parse(text).ok_or_else(|| {
        rusqlite::types::FromSqlError::Other(format!("unknown {what} `{text}`").into())
    })
}

/// The current time as Unix epoch milliseconds.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn shared_sql_gets_postgres_placeholders() {
        assert_eq!(
            super::postgres_sql("WHERE a >= ?1 AND b = ?12 AND c = '?'"),
            "WHERE a >= $1 AND b = $12 AND c = '?'"
        );
    }

    use super::*;

    #[test]
    fn redact_url_hides_password_only() {
        assert_eq!(
            redact_url("postgres://bot:s3cret@db:5432/tm"),
            "postgres://bot:***@db:5432/tm"
        );
        assert_eq!(
            redact_url("sqlite://taskmaster.db"),
            "sqlite://taskmaster.db"
        );
        assert_eq!(redact_url("postgres://bot@db/tm"), "postgres://bot@db/tm");
    }

    #[test]
    fn payloads_round_trip_and_large_ones_shrink() {
        let big = Bytes::from(
            std::fs::read(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/fixtures/webhooks/pull_request.opened.json"
            ))
            .unwrap(),
        );
        let encoded = EncodedPayload::encode(big.clone());
        assert_eq!(encoded.encoding, PayloadEncoding::Zstd);
        assert!(
            encoded.bytes.len() * 4 < big.len(),
            "{} bytes",
            encoded.bytes.len()
        );
        assert_eq!(encoded.decode().unwrap(), big);

        let small = Bytes::from_static(b"{}");
        let encoded = EncodedPayload::encode(small.clone());
        assert_eq!(encoded.encoding, PayloadEncoding::Identity);
        assert_eq!(encoded.decode().unwrap(), small);

        let corrupt = EncodedPayload {
            encoding: PayloadEncoding::Zstd,
            raw_len: 10,
            bytes: Bytes::from_static(b"not zstd"),
        };
        assert!(matches!(corrupt.decode(), Err(StoreError::Corrupt { .. })));
    }

    #[test]
    fn state_names_round_trip() {
        for s in [
            DeliveryState::Queued,
            DeliveryState::Processing,
            DeliveryState::Done,
            DeliveryState::Ignored,
            DeliveryState::Failed,
        ] {
            assert_eq!(DeliveryState::parse(s.as_str()), Some(s));
        }
        assert_eq!(DeliveryState::parse("nope"), None);
    }
}
