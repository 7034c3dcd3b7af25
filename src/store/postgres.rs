//! PostgreSQL implementation of [`Store`] and every other store role
//! (`postgres/`: `engine`, `control`, `reports`, `records`, `queries`,
//! `changes`): several taskmaster replicas sharing one database.
//!
//! Selected by `DATABASE_URL=postgres://…` (or `postgresql://…`); the schema
//! is `migrations/postgres`, which mirrors `migrations/sqlite` number for
//! number. Tables land in the connection's `search_path` (by default
//! `public`; `?options=-c%20search_path%3Dname` in the URL picks another).
//!
//! How replicas share the work without stepping on each other:
//!
//! * **Claims** (deliveries and steps) select with `FOR UPDATE SKIP LOCKED`:
//!   concurrent claimers never wait for each other and never get the same
//!   row. A claimed step's run row is locked with it, so `max_parallel` and
//!   the concurrency-group check hold across replicas.
//! * **Lock order.** Every transaction that changes a run locks its run row
//!   first (`FOR NO KEY UPDATE`, so foreign-key checks of inserted events and
//!   attempts are not blocked), runs in id order, then step rows in id order.
//!   Claims never wait (they skip). With one order there are no deadlocks.
//! * **Fencing** is the same as SQLite's: a result is recorded only with the
//!   step's current lease token, checked under the step's row lock.
//! * **Start-up recovery** never takes back live work: a replica starting
//!   must not steal the steps and deliveries other replicas are running, so
//!   `recover_deliveries` and `reap_leases(None)` only take back *expired*
//!   leases here. A replica that died is replaced once its leases expire.
//! * **Agent concurrency** is database-wide: claims under per-agent limits
//!   take a transaction-level advisory lock, so they take turns counting.
//! * **Once-at-a-time work** (the lease reaper and deadline checks) takes a
//!   transaction-level advisory lock (`pg_try_advisory_xact_lock`); a replica
//!   that does not get it skips the round. Longer jobs (the redelivery scan,
//!   the report outbox) use [`Store::try_exclusive`], a session-level
//!   advisory lock held on a dedicated connection.
//! * **Wake-ups**: transactions that make work available `NOTIFY`
//!   (`taskmaster_deliveries`, `taskmaster_steps`); each store `LISTEN`s on
//!   one connection of its own and hands hints to
//!   [`Store::remote_wakeups`]. Polling stays the fallback.
//! * **Group commit**: a batch of deliveries is inserted by one statement
//!   (`INSERT … SELECT FROM UNNEST(…) ON CONFLICT DO NOTHING`), one
//!   transaction and one WAL flush per batch; step results commit in
//!   batches as on SQLite.
//!
//! Advisory-lock keys and nothing else are scoped by `current_schema()`, so
//! databases holding several taskmaster schemas (tests) do not contend.

use crate::store::RunId;
use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use sqlx::PgConnection;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions};
use tokio::sync::broadcast;

use super::policy;
use super::rows::{AuditRow, DeliveryRow, EffectRow, RunRow, StepRow, corrupt};
use super::runs::{
    AttemptRow, ClaimLimits, ClaimedStep, ControlOutcome, CreatedRun, DesiredState, Lease, NewRun,
    Plan, Planner, Run, RunEvent, RunSnapshot, StepFinish, StepNext, StepRecord, StepState,
};
use super::{
    Admin, AppRecords, Effects, Queries, ReportCandidate, ReportOutcome, Reports, RunControl, Runs,
    Tasks,
};
use super::{
    AuditEntry, Delivery, DeliveryResult, Effect, EffectOutcome, EffectState, ExclusiveGuard,
    InboxDepth, InsertOutcome, InstallationState, NewDelivery, NewEffect, PoolSettings,
    RepoConfigRecord, Store, StoreError, WakeTopic, now_ms,
};

/// This build's PostgreSQL migrations. Applied migrations it does not know
/// are accepted (`ignore_missing`): during a rolling upgrade a replica of
/// the previous version starts on a schema the new one already expanded
/// (migrations only expand within a release: `migrations/README.md`).
static MIGRATOR: std::sync::LazyLock<sqlx::migrate::Migrator> = std::sync::LazyLock::new(|| {
    let mut migrator = sqlx::migrate!("./migrations/postgres");
    migrator.set_ignore_missing(true);
    migrator
});

/// This build's PostgreSQL migrations.
pub(super) fn migrator() -> &'static sqlx::migrate::Migrator {
    &MIGRATOR
}

/// `NOTIFY` channel: deliveries were queued.
const CHANNEL_DELIVERIES: &str = "taskmaster_deliveries";
/// `NOTIFY` channel: steps became ready (or runs need planning).
const CHANNEL_STEPS: &str = "taskmaster_steps";

/// Advisory-lock class of the lease reaper (second key; the first is the schema).
const LOCK_REAPER: i32 = 1;
/// Advisory-lock class of the run-deadline check.
const LOCK_DEADLINES: i32 = 2;
/// Advisory-lock class of claims under per-agent limits.
const LOCK_AGENT_CLAIMS: i32 = 3;

/// The PostgreSQL store. Cheap to clone (the pool and the listener are shared).
#[derive(Clone)]
pub struct PgStore {
    pool: PgPool,
    options: PgConnectOptions,
    wakeups: Arc<OnceLock<Wakeups>>,
    clock: Arc<DbClock>,
}

/// Leases are timed on the database's clock, not each replica's: a replica
/// whose clock runs ahead would otherwise take over live leases, and one
/// that runs behind would hold its own past their time. The offset between
/// this process's clock and the database's is measured (at most every
/// [`CLOCK_CHECK_MS`], half the round trip taken off) and added to local
/// times in every lease decision.
#[derive(Debug, Default)]
struct DbClock {
    /// Added to this process's clock (tests: a clock that runs wrong).
    skew_ms: std::sync::atomic::AtomicI64,
    /// Database minus local, ms.
    offset_ms: std::sync::atomic::AtomicI64,
    /// Local time of the last measurement (0: never).
    checked_at_ms: std::sync::atomic::AtomicI64,
}

/// How often the database's clock is read again, ms.
const CLOCK_CHECK_MS: i64 = 10_000;

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("pool_size", &self.pool.size())
            .finish_non_exhaustive()
    }
}

/// The listener task and the channels it feeds; the task stops when the
/// last clone of the store is dropped.
struct Wakeups {
    deliveries: broadcast::Sender<()>,
    steps: broadcast::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Wakeups {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl PgStore {
    /// Connects to `url` (`postgres://user:password@host:port/database`, with
    /// any libpq-style query parameters sqlx understands) with a pool sized by
    /// `settings`. Does not migrate; see [`Store::migrate`]. Errors: the URL
    /// does not parse, or the first connection fails.
    pub async fn open(url: &str, settings: &PoolSettings) -> Result<Self, StoreError> {
        let options = PgConnectOptions::from_str(url)?.application_name("taskmaster");
        Self::open_with(options, settings).await
    }

    /// As [`PgStore::open`], with connect options built by the caller (for
    /// example with a `search_path` of its own).
    pub async fn open_with(
        options: PgConnectOptions,
        settings: &PoolSettings,
    ) -> Result<Self, StoreError> {
        let pool = PgPoolOptions::new()
            .max_connections(settings.max_connections.max(2))
            .min_connections(settings.min_connections)
            .acquire_timeout(settings.acquire_timeout)
            .connect_with(options.clone())
            .await?;
        Ok(PgStore {
            pool,
            options,
            wakeups: Arc::new(OnceLock::new()),
            clock: Arc::new(DbClock::default()),
        })
    }

    /// Makes this store's process clock run `skew_ms` off (tests of the
    /// database-clock leases).
    #[doc(hidden)]
    pub fn with_clock_skew(self, skew_ms: i64) -> Self {
        self.clock
            .skew_ms
            .store(skew_ms, std::sync::atomic::Ordering::Relaxed);
        self
    }

    fn local_now(&self) -> i64 {
        now_ms()
            + self
                .clock
                .skew_ms
                .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Now on the database's clock, for lease decisions (see [`DbClock`]).
    async fn lease_now(&self) -> Result<i64, StoreError> {
        use std::sync::atomic::Ordering::Relaxed;
        let before = self.local_now();
        let checked = self.clock.checked_at_ms.load(Relaxed);
        if checked == 0 || before - checked > CLOCK_CHECK_MS || before < checked {
            let (db,): (i64,) =
                sqlx::query_as("SELECT (extract(epoch from clock_timestamp()) * 1000)::bigint")
                    .fetch_one(&self.pool)
                    .await?;
            let after = self.local_now();
            self.clock
                .offset_ms
                .store(db - (before + after) / 2, Relaxed);
            self.clock.checked_at_ms.store(after, Relaxed);
        }
        Ok(self.local_now() + self.clock.offset_ms.load(Relaxed))
    }

    /// A time of this process's clock on the database's.
    fn to_db_time(&self, local: i64) -> i64 {
        use std::sync::atomic::Ordering::Relaxed;
        local + self.clock.skew_ms.load(Relaxed) + self.clock.offset_ms.load(Relaxed)
    }

    /// The pool, for tests and tools that need raw SQL.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Starts the `LISTEN` task on first use. It holds one connection of its
    /// own (outside the pool's limit) and reconnects by itself; after a
    /// reconnection it sends a hint on both topics, since hints may have
    /// been missed meanwhile.
    fn wakeups(&self) -> &Wakeups {
        self.wakeups.get_or_init(|| {
            let (deliveries, _) = broadcast::channel(16);
            let (steps, _) = broadcast::channel(16);
            let options = self.options.clone();
            let (d, s) = (deliveries.clone(), steps.clone());
            let task = tokio::spawn(async move {
                loop {
                    match listen(&options, &d, &s).await {
                        Ok(()) => return,
                        Err(e) => {
                            tracing::warn!(error = %e, "LISTEN connection failed; retrying");
                            let _ = d.send(());
                            let _ = s.send(());
                            tokio::time::sleep(Duration::from_secs(1)).await;
                        }
                    }
                }
            });
            Wakeups {
                deliveries,
                steps,
                task,
            }
        })
    }

    /// One idempotent control transition of a run (see the SQLite store).
    async fn control_transition(
        &self,
        run_id: i64,
        update: &'static str,
        event: &'static str,
        message: &'static str,
    ) -> Result<ControlOutcome, StoreError> {
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        let changed = sqlx::query(update)
            .bind(run_id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        let outcome = control_outcome(&mut tx, changed, run_id, now, event, message).await?;
        if outcome == ControlOutcome::Changed {
            notify(&mut tx, CHANNEL_STEPS).await?;
        }
        tx.commit().await?;
        Ok(outcome)
    }
}

/// Listens until every receiver is gone (`Ok`) or the connection fails.
async fn listen(
    options: &PgConnectOptions,
    deliveries: &broadcast::Sender<()>,
    steps: &broadcast::Sender<()>,
) -> Result<(), sqlx::Error> {
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .min_connections(0)
        .connect_lazy_with(options.clone());
    let mut listener = PgListener::connect_with(&pool).await?;
    listener.ignore_pool_close_event(true);
    listener
        .listen_all([CHANNEL_DELIVERIES, CHANNEL_STEPS])
        .await?;
    loop {
        match listener.try_recv().await? {
            Some(n) => {
                let sender = if n.channel() == CHANNEL_DELIVERIES {
                    deliveries
                } else {
                    steps
                };
                let _ = sender.send(());
            }
            None => {
                // Reconnected: hints sent meanwhile are lost; wake everyone.
                let _ = deliveries.send(());
                let _ = steps.send(());
            }
        }
    }
}

/// Queues a `NOTIFY` on `channel`, delivered when the transaction commits
/// (several in one transaction collapse into one).
async fn notify(conn: &mut PgConnection, channel: &'static str) -> Result<(), StoreError> {
    sqlx::query("SELECT pg_notify($1, '')")
        .bind(channel)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Takes the transaction-level advisory lock of `class` in this schema,
/// without waiting; false when another transaction holds it.
async fn try_xact_lock(conn: &mut PgConnection, class: i32) -> Result<bool, StoreError> {
    let (got,): (bool,) =
        sqlx::query_as("SELECT pg_try_advisory_xact_lock(hashtext(current_schema()), $1)")
            .bind(class)
            .fetch_one(&mut *conn)
            .await?;
    Ok(got)
}

/// Locks the runs `ids` in id order (the first step of the lock order).
async fn lock_runs(conn: &mut PgConnection, ids: &[i64]) -> Result<(), StoreError> {
    if ids.is_empty() {
        return Ok(());
    }
    sqlx::query("SELECT id FROM runs WHERE id = ANY($1) ORDER BY id FOR NO KEY UPDATE")
        .bind(ids)
        .fetch_all(&mut *conn)
        .await?;
    Ok(())
}

/// Selects [`DeliveryRow`]s from a row source `d` joined with its payload.
macro_rules! delivery_columns {
    () => {
        "d.id, d.delivery_id, d.event, d.action, d.hook_id, d.installation_id, \
         d.repository, d.sender_id, d.sender_login, p.encoding, p.size, p.payload, \
         d.received_at, d.state, d.attempts, d.error"
    };
}

#[async_trait]
impl Store for PgStore {
    async fn migrate(&self) -> Result<(), StoreError> {
        MIGRATOR.run(&self.pool).await?;
        let newest_known = MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0);
        let newer: Vec<i64> = sqlx::query_scalar(
            "SELECT version FROM _sqlx_migrations WHERE version > $1 ORDER BY version",
        )
        .bind(newest_known)
        .fetch_all(&self.pool)
        .await?;
        if !newer.is_empty() {
            tracing::warn!(
                versions = ?newer,
                "the database schema is newer than this build (a newer version migrated it): \
                 running on it, as a replica of the previous version does during a rolling upgrade"
            );
        }
        Ok(())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn insert_deliveries(
        &self,
        batch: &[NewDelivery],
    ) -> Result<Vec<InsertOutcome>, StoreError> {
        let mut outcomes = vec![InsertOutcome::Duplicate; batch.len()];
        let mut seen = HashSet::with_capacity(batch.len());
        let unique: Vec<&NewDelivery> = batch
            .iter()
            .filter(|d| seen.insert(d.delivery_id.as_str()))
            .collect();
        if unique.is_empty() {
            return Ok(outcomes);
        }
        // One statement for the whole batch: one round trip, one
        // transaction, one WAL flush (group commit).
        let inserted: Vec<(String, String)> = sqlx::query_as(
            "WITH input AS ( \
                 SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::int8[], \
                     $5::int8[], $6::text[], $7::int8[], $8::text[], $9::int8[], $10::text[], \
                     $11::text[], $12::int8[], $13::bytea[]) WITH ORDINALITY \
                 AS t(delivery_id, event, action, hook_id, installation_id, repository, \
                      sender_id, sender_login, received_at, state, encoding, size, payload, ord) \
             ), ins AS ( \
                 INSERT INTO deliveries (delivery_id, event, action, hook_id, installation_id, \
                     repository, sender_id, sender_login, received_at, state, available_at) \
                 SELECT delivery_id, event, action, hook_id, installation_id, repository, \
                     sender_id, sender_login, received_at, state, received_at \
                 FROM input ORDER BY ord \
                 ON CONFLICT (delivery_id) DO NOTHING \
                 RETURNING id, delivery_id, state \
             ), pay AS ( \
                 INSERT INTO delivery_payloads (id, encoding, size, payload) \
                 SELECT ins.id, input.encoding, input.size, input.payload \
                 FROM ins JOIN input ON input.delivery_id = ins.delivery_id \
             ) \
             SELECT delivery_id, state FROM ins",
        )
        .bind(
            unique
                .iter()
                .map(|d| d.delivery_id.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(unique.iter().map(|d| d.event.as_str()).collect::<Vec<_>>())
        .bind(
            unique
                .iter()
                .map(|d| d.action.as_deref())
                .collect::<Vec<_>>(),
        )
        .bind(unique.iter().map(|d| d.hook_id).collect::<Vec<_>>())
        .bind(unique.iter().map(|d| d.installation_id).collect::<Vec<_>>())
        .bind(
            unique
                .iter()
                .map(|d| d.repository.as_deref())
                .collect::<Vec<_>>(),
        )
        .bind(unique.iter().map(|d| d.sender_id).collect::<Vec<_>>())
        .bind(
            unique
                .iter()
                .map(|d| d.sender_login.as_deref())
                .collect::<Vec<_>>(),
        )
        .bind(unique.iter().map(|d| d.received_at).collect::<Vec<_>>())
        .bind(unique.iter().map(|d| d.state.as_str()).collect::<Vec<_>>())
        .bind(
            unique
                .iter()
                .map(|d| d.payload.encoding.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(
            unique
                .iter()
                .map(|d| d.payload.raw_len as i64)
                .collect::<Vec<_>>(),
        )
        .bind(
            unique
                .iter()
                .map(|d| &d.payload.bytes[..])
                .collect::<Vec<_>>(),
        )
        .fetch_all(&self.pool)
        .await?;
        let stored: HashSet<&str> = inserted.iter().map(|(d, _)| d.as_str()).collect();
        let mut first = HashSet::with_capacity(batch.len());
        for (i, d) in batch.iter().enumerate() {
            if first.insert(d.delivery_id.as_str()) && stored.contains(d.delivery_id.as_str()) {
                outcomes[i] = InsertOutcome::Stored;
            }
        }
        if inserted.iter().any(|(_, state)| state == "queued") {
            // After the commit: a hint for the other replicas' dispatchers.
            sqlx::query("SELECT pg_notify($1, '')")
                .bind(CHANNEL_DELIVERIES)
                .execute(&self.pool)
                .await?;
        }
        Ok(outcomes)
    }

    async fn claim_deliveries(
        &self,
        owner: &str,
        limit: usize,
        lease: Duration,
    ) -> Result<Vec<Delivery>, StoreError> {
        let now = self.lease_now().await?;
        let expires = now + lease.as_millis() as i64;
        let rows: Vec<DeliveryRow> = sqlx::query_as(concat!(
            "WITH picked AS ( \
                 SELECT id FROM deliveries \
                 WHERE state IN ('queued', 'processing') \
                   AND ((state = 'queued' AND available_at <= $3) \
                     OR (state = 'processing' AND lease_expires_at < $3)) \
                 ORDER BY id LIMIT $4 FOR UPDATE SKIP LOCKED \
             ), d AS ( \
                 UPDATE deliveries SET state = 'processing', claimed_by = $1, \
                     lease_expires_at = $2, attempts = deliveries.attempts + 1 \
                 FROM picked WHERE deliveries.id = picked.id \
                 RETURNING deliveries.* \
             ) SELECT ",
            delivery_columns!(),
            " FROM d JOIN delivery_payloads p ON p.id = d.id ORDER BY d.id"
        ))
        .bind(owner)
        .bind(expires)
        .bind(now)
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(Delivery::try_from).collect()
    }

    async fn finish_deliveries(
        &self,
        owner: &str,
        results: &[(i64, DeliveryResult)],
    ) -> Result<u64, StoreError> {
        if results.is_empty() {
            return Ok(0);
        }
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        let mut changed = 0;
        let mut created = false;
        for (id, result) in results {
            let (state, error, available_at, finished_at) = match result {
                DeliveryResult::Done | DeliveryResult::Started(_) => ("done", None, now, Some(now)),
                DeliveryResult::Ignored(why) => ("ignored", Some(why.as_str()), now, Some(now)),
                DeliveryResult::Retry { error, retry_at } => {
                    ("queued", Some(error.as_str()), *retry_at, None)
                }
                DeliveryResult::Failed(error) => ("failed", Some(error.as_str()), now, Some(now)),
            };
            let finished = sqlx::query(
                "UPDATE deliveries SET state = $1, error = $2, available_at = $3, \
                 finished_at = $4, claimed_by = NULL, lease_expires_at = NULL \
                 WHERE id = $5 AND state = 'processing' AND claimed_by = $6",
            )
            .bind(state)
            .bind(error)
            .bind(available_at)
            .bind(finished_at)
            .bind(id)
            .bind(owner)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if let (1, DeliveryResult::Started(runs)) = (finished, result) {
                created |= create_runs_in(&mut tx, runs, now)
                    .await?
                    .iter()
                    .any(|r| r.created);
            }
            changed += finished;
        }
        if created {
            notify(&mut tx, CHANNEL_STEPS).await?;
        }
        tx.commit().await?;
        Ok(changed)
    }

    async fn recover_deliveries(&self) -> Result<u64, StoreError> {
        // Shared by several replicas: only expired leases are taken back
        // (live ones belong to a running replica).
        let result = sqlx::query(
            "UPDATE deliveries SET state = 'queued', claimed_by = NULL, lease_expires_at = NULL \
             WHERE state = 'processing' AND lease_expires_at < $1",
        )
        .bind(self.lease_now().await?)
        .execute(&self.pool)
        .await?;
        Ok(result.rows_affected())
    }

    async fn release_deliveries(&self, owner: &str) -> Result<u64, StoreError> {
        let result = sqlx::query(
            "UPDATE deliveries SET state = 'queued', claimed_by = NULL, lease_expires_at = NULL, \
             attempts = GREATEST(attempts - 1, 0) \
             WHERE state = 'processing' AND claimed_by = $1",
        )
        .bind(owner)
        .execute(&self.pool)
        .await?;
        if result.rows_affected() > 0 {
            sqlx::query("SELECT pg_notify($1, '')")
                .bind(CHANNEL_DELIVERIES)
                .execute(&self.pool)
                .await?;
        }
        Ok(result.rows_affected())
    }

    async fn renew_delivery_leases(&self, owner: &str, lease: Duration) -> Result<u64, StoreError> {
        let result = sqlx::query(
            "UPDATE deliveries SET lease_expires_at = $2 \
             WHERE state = 'processing' AND claimed_by = $1",
        )
        .bind(owner)
        .bind(self.lease_now().await? + lease.as_millis() as i64)
        .execute(&self.pool)
        .await?;
        Ok(result.rows_affected())
    }

    async fn delivery(&self, delivery_id: &str) -> Result<Option<Delivery>, StoreError> {
        let row: Option<DeliveryRow> = sqlx::query_as(concat!(
            "SELECT ",
            delivery_columns!(),
            " FROM deliveries d JOIN delivery_payloads p ON p.id = d.id WHERE d.delivery_id = $1"
        ))
        .bind(delivery_id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(Delivery::try_from).transpose()
    }

    async fn inbox_depth(&self) -> Result<InboxDepth, StoreError> {
        let rows: Vec<(String, i64, Option<i64>)> = sqlx::query_as(
            "SELECT state, COUNT(*), MIN(received_at) FROM deliveries \
             WHERE state IN ('queued', 'processing') GROUP BY state",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut depth = InboxDepth::default();
        for (state, n, oldest) in rows {
            match state.as_str() {
                "queued" => {
                    depth.queued = n;
                    depth.oldest_queued_at = oldest;
                }
                _ => depth.processing = n,
            }
        }
        Ok(depth)
    }

    fn remote_wakeups(&self, topic: WakeTopic) -> Option<broadcast::Receiver<()>> {
        let w = self.wakeups();
        Some(match topic {
            WakeTopic::Deliveries => w.deliveries.subscribe(),
            WakeTopic::Steps => w.steps.subscribe(),
        })
    }

    async fn try_exclusive(&self, job: &str) -> Result<Option<ExclusiveGuard>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        let (got,): (bool,) =
            sqlx::query_as("SELECT pg_try_advisory_lock(hashtext(current_schema()), hashtext($1))")
                .bind(job.to_owned())
                .fetch_one(&mut *conn)
                .await?;
        if !got {
            return Ok(None);
        }
        // Dropping the guard closes this connection instead of returning it
        // to the pool: the session ends and PostgreSQL releases the lock.
        conn.close_on_drop();
        Ok(Some(ExclusiveGuard::holding(Box::new(AdvisoryLock {
            conn,
            job: job.to_owned(),
        }))))
    }
}

/// A session-level advisory lock and the session (connection) holding it.
struct AdvisoryLock {
    conn: sqlx::pool::PoolConnection<sqlx::Postgres>,
    job: String,
}

#[async_trait]
impl super::HeldJob for AdvisoryLock {
    /// Asks PostgreSQL, on the holding session, whether that session holds
    /// the lock (`pg_locks`); an error or no answer within 5 s means the
    /// session is gone, and so is the lock.
    async fn still_held(&mut self) -> bool {
        let check = sqlx::query_as::<_, (bool,)>(
            "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted \
               AND pid = pg_backend_pid() AND objsubid = 2 \
               AND classid = hashtext(current_schema())::oid AND objid = hashtext($1)::oid)",
        )
        .bind(self.job.clone())
        .fetch_one(&mut *self.conn);
        matches!(
            tokio::time::timeout(Duration::from_secs(5), check).await,
            Ok(Ok((true,)))
        )
    }
}

// ---------------------------------------------------------------------------
// Runs, steps, attempts and the timeline.
// ---------------------------------------------------------------------------

macro_rules! select_runs {
    () => {
        "SELECT id, workflow, delivery_id, event, repository, subject_number, head_sha, \
         classification, reason, context, priority, concurrency_group, state, desired_state, \
         max_parallel, deadline_at, cost_usd, conclusion, created_at, started_at, finished_at, \
         waiting_approval, approved_by, checkout_sha, stopped_by_budget FROM runs "
    };
}

macro_rules! step_columns {
    () => {
        "id, run_id, step, position, needs, continue_on_error, state, agent, agent_index, \
         attempts, agent_attempts, run_at, priority, lease_owner, lease_expires_at, output, \
         error, started_at, finished_at, cost_usd"
    };
}

async fn insert_event(
    conn: &mut PgConnection,
    run_id: i64,
    step: Option<&str>,
    at: i64,
    kind: &str,
    detail: &str,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO run_events (run_id, step, at, kind, detail) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(run_id)
    .bind(step)
    .bind(at)
    .bind(kind)
    .bind(detail)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

async fn load_snapshot(
    conn: &mut PgConnection,
    run_id: i64,
) -> Result<Option<RunSnapshot>, StoreError> {
    let run: Option<RunRow> = sqlx::query_as(concat!(select_runs!(), "WHERE id = $1"))
        .bind(run_id)
        .fetch_optional(&mut *conn)
        .await?;
    let Some(run) = run else { return Ok(None) };
    let steps: Vec<StepRow> = sqlx::query_as(concat!(
        "SELECT ",
        step_columns!(),
        " FROM steps WHERE run_id = $1 ORDER BY position"
    ))
    .bind(run_id)
    .fetch_all(&mut *conn)
    .await?;
    Ok(Some(RunSnapshot {
        run: run.try_into()?,
        steps: steps
            .into_iter()
            .map(StepRecord::try_from)
            .collect::<Result<_, _>>()?,
    }))
}

/// Reads the run, asks the planner, and applies its plan. The caller holds
/// the run's lock. Returns the plan and whether a step became ready.
async fn settle_in(
    conn: &mut PgConnection,
    run_id: i64,
    planner: &dyn Planner,
    now: i64,
) -> Result<Option<Plan>, StoreError> {
    let Some(snapshot) = load_snapshot(conn, run_id).await? else {
        return Ok(None);
    };
    let plan = planner.plan(&snapshot, now);
    for change in &plan.steps {
        let (finished, error) = if change.to.is_terminal() {
            (Some(now), Some(change.reason.as_str()))
        } else {
            (None, None)
        };
        sqlx::query(
            "UPDATE steps SET state = $1, run_at = $2, finished_at = $3, error = $4 \
             WHERE run_id = $5 AND step = $6 AND state IN ('pending', 'ready')",
        )
        .bind(change.to.as_str())
        .bind(now)
        .bind(finished)
        .bind(error)
        .bind(run_id)
        .bind(&change.step)
        .execute(&mut *conn)
        .await?;
        let kind = match change.to {
            StepState::Ready => "step_ready",
            StepState::Skipped => "step_skipped",
            StepState::Cancelled => "step_cancelled",
            _ => "step_failed",
        };
        insert_event(conn, run_id, Some(&change.step), now, kind, &change.reason).await?;
    }
    if let Some((state, reason)) = &plan.outcome {
        let changed = sqlx::query(
            "UPDATE runs SET state = $1, conclusion = $2, finished_at = $3 \
             WHERE id = $4 AND state IN ('queued', 'running', 'paused')",
        )
        .bind(state.as_str())
        .bind(reason)
        .bind(now)
        .bind(run_id)
        .execute(&mut *conn)
        .await?
        .rows_affected();
        if changed == 1 {
            insert_event(
                conn,
                run_id,
                None,
                now,
                "run_finished",
                &format!("{state}: {reason}"),
            )
            .await?;
        }
    }
    if plan.steps.iter().any(|c| c.to == StepState::Ready) {
        notify(conn, CHANNEL_STEPS).await?;
    }
    Ok(Some(plan))
}

async fn create_runs_in(
    conn: &mut PgConnection,
    runs: &[NewRun],
    now: i64,
) -> Result<Vec<CreatedRun>, StoreError> {
    let mut out = Vec::with_capacity(runs.len());
    for r in runs {
        let inserted: Option<(i64,)> = sqlx::query_as(
            "INSERT INTO runs (workflow, delivery_id, event, repository, subject_number, head_sha, \
             classification, reason, context, priority, concurrency_group, max_parallel, \
             deadline_at, created_at, waiting_approval) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15) \
             ON CONFLICT (delivery_id, workflow) DO NOTHING RETURNING id",
        )
        .bind(&r.workflow)
        .bind(&r.delivery_id)
        .bind(&r.event)
        .bind(&r.repository)
        .bind(r.subject_number)
        .bind(&r.head_sha)
        .bind(&r.classification)
        .bind(&r.reason)
        .bind(r.context.to_string())
        .bind(r.priority.rank())
        .bind(&r.concurrency_group)
        .bind(r.max_parallel.map(i64::from))
        .bind(r.timeout.map(|t| now + t.as_millis() as i64))
        .bind(now)
        .bind(r.needs_approval.is_some())
        .fetch_optional(&mut *conn)
        .await?;
        let Some((run_id,)) = inserted else {
            let (run_id,): (i64,) =
                sqlx::query_as("SELECT id FROM runs WHERE delivery_id = $1 AND workflow = $2")
                    .bind(&r.delivery_id)
                    .bind(&r.workflow)
                    .fetch_one(&mut *conn)
                    .await?;
            out.push(CreatedRun {
                run_id: RunId(run_id),
                workflow: r.workflow.clone(),
                created: false,
                superseded: Vec::new(),
            });
            continue;
        };
        if !r.steps.is_empty() {
            sqlx::query(
                "INSERT INTO steps (run_id, step, position, needs, continue_on_error, agent, \
                 primary_agent, run_at, priority, runs_when_cancelled) \
                 SELECT $1, step, position - 1, needs, continue_on_error, agent, agent, $2, rank, \
                     runs_when_cancelled \
                 FROM UNNEST($3::text[], $4::text[], $5::bool[], $6::text[], $7::int8[], \
                     $8::bool[]) \
                     WITH ORDINALITY AS t(step, needs, continue_on_error, agent, rank, \
                         runs_when_cancelled, position)",
            )
            .bind(run_id)
            .bind(now)
            .bind(r.steps.iter().map(|s| s.step.as_str()).collect::<Vec<_>>())
            .bind(
                r.steps
                    .iter()
                    .map(|s| serde_json::to_string(&s.needs).expect("strings serialize"))
                    .collect::<Vec<_>>(),
            )
            .bind(
                r.steps
                    .iter()
                    .map(|s| s.continue_on_error)
                    .collect::<Vec<_>>(),
            )
            .bind(r.steps.iter().map(|s| s.agent.as_str()).collect::<Vec<_>>())
            .bind(r.steps.iter().map(|s| s.rank_ms).collect::<Vec<_>>())
            .bind(
                r.steps
                    .iter()
                    .map(|s| s.runs_when_cancelled)
                    .collect::<Vec<_>>(),
            )
            .execute(&mut *conn)
            .await?;
        }
        insert_event(conn, run_id, None, now, "run_created", &r.reason).await?;
        if let Some(why) = &r.needs_approval {
            insert_event(conn, run_id, None, now, "approval_required", why).await?;
        }
        let mut superseded = Vec::new();
        if let (Some(group), true) = (&r.concurrency_group, r.cancel_in_progress) {
            // Lock the older runs in id order before changing them.
            let older: Vec<(i64,)> = sqlx::query_as(
                "SELECT id FROM runs WHERE concurrency_group = $1 AND id < $2 \
                   AND state IN ('queued', 'running', 'paused') \
                   AND desired_state IN ('running', 'paused') \
                 ORDER BY id FOR NO KEY UPDATE",
            )
            .bind(group)
            .bind(run_id)
            .fetch_all(&mut *conn)
            .await?;
            let older: Vec<i64> = older.into_iter().map(|(id,)| id).collect();
            if !older.is_empty() {
                sqlx::query(
                    "UPDATE runs SET desired_state = 'cancelled', conclusion = $1 \
                     WHERE id = ANY($2)",
                )
                .bind(format!(
                    "superseded by run {run_id} in concurrency group `{group}`{}",
                    r.head_sha
                        .as_deref()
                        .map(|s| format!(" (head {s})"))
                        .unwrap_or_default()
                ))
                .bind(&older)
                .execute(&mut *conn)
                .await?;
            }
            for old in older {
                insert_event(
                    conn,
                    old,
                    None,
                    now,
                    "cancel_requested",
                    &format!("a newer run ({run_id}) of concurrency group `{group}` started"),
                )
                .await?;
                superseded.push(RunId(old));
            }
        }
        out.push(CreatedRun {
            run_id: RunId(run_id),
            workflow: r.workflow.clone(),
            created: true,
            superseded,
        });
    }
    Ok(out)
}

/// See the SQLite store: `Changed` (event written), `Unchanged`, `NotFound`.
async fn control_outcome(
    tx: &mut PgConnection,
    changed: u64,
    run_id: i64,
    now: i64,
    event: &str,
    message: &str,
) -> Result<ControlOutcome, StoreError> {
    Ok(if changed == 1 {
        insert_event(tx, run_id, None, now, event, message).await?;
        ControlOutcome::Changed
    } else {
        let row: Option<(i64,)> = sqlx::query_as("SELECT id FROM runs WHERE id = $1")
            .bind(run_id)
            .fetch_optional(&mut *tx)
            .await?;
        if row.is_some() {
            ControlOutcome::Unchanged
        } else {
            ControlOutcome::NotFound
        }
    })
}

/// Records one result inside the caller's transaction, which holds the
/// locks of the step's run and of the step; `None` when fenced out.
async fn finish_in(
    tx: &mut PgConnection,
    f: &StepFinish,
    planner: &dyn Planner,
    now: i64,
) -> Result<Option<Plan>, StoreError> {
    let (lease, attempt, next) = (&f.lease, f.attempt.as_ref(), &f.next);
    let fenced: Option<(i64, String, i64)> = sqlx::query_as(
        "SELECT run_id, step, attempts FROM steps \
         WHERE id = $1 AND lease_token = $2 AND state = 'running'",
    )
    .bind(lease.step_row)
    .bind(&lease.token)
    .fetch_optional(&mut *tx)
    .await?;
    let Some((run_id, step, number)) = fenced else {
        return Ok(None);
    };
    if let Some(a) = attempt {
        sqlx::query(
            "UPDATE attempts SET finished_at = $1, outcome = $2, error_class = $3, \
             error_kind = $4, error = $5, output_excerpt = $6, duration_ms = $7, cost_usd = $8, \
             cost_estimated = $12 \
             WHERE step_row = $9 AND number = $10 AND lease_token = $11 AND outcome IS NULL",
        )
        .bind(now)
        .bind(a.outcome.as_str())
        .bind(a.error_class.map(crate::agent::ErrorClass::as_str))
        .bind(&a.error_kind)
        .bind(&a.error)
        .bind(&a.output_excerpt)
        .bind(a.duration_ms)
        .bind(a.cost_usd)
        .bind(lease.step_row)
        .bind(number)
        .bind(&lease.token)
        .bind(a.cost_estimated)
        .execute(&mut *tx)
        .await?;
        if let Some(cost) = a.cost_usd {
            sqlx::query("UPDATE runs SET cost_usd = cost_usd + $1 WHERE id = $2")
                .bind(cost)
                .bind(run_id)
                .execute(&mut *tx)
                .await?;
            sqlx::query("UPDATE steps SET cost_usd = cost_usd + $1 WHERE id = $2")
                .bind(cost)
                .bind(lease.step_row)
                .execute(&mut *tx)
                .await?;
        }
        if a.ran {
            sqlx::query(crate::store::spend::ADD_SPEND_PG)
                .bind(crate::budget::day_number(now))
                .bind(a.cost_usd.unwrap_or(0.0))
                .bind(a.duration_ms)
                .bind(run_id)
                .execute(&mut *tx)
                .await?;
        }
    }
    match next {
        StepNext::Finish {
            state,
            output,
            error,
        } => {
            sqlx::query(
                "UPDATE steps SET state = $1, output = $2, error = $3, finished_at = $4, \
                 lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL WHERE id = $5",
            )
            .bind(state.as_str())
            .bind(output)
            .bind(error)
            .bind(now)
            .bind(lease.step_row)
            .execute(&mut *tx)
            .await?;
        }
        StepNext::Retry { run_at } => {
            sqlx::query(
                "UPDATE steps SET state = 'ready', run_at = $1, \
                 lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL WHERE id = $2",
            )
            .bind(run_at)
            .bind(lease.step_row)
            .execute(&mut *tx)
            .await?;
            notify(tx, CHANNEL_STEPS).await?;
        }
        StepNext::Fallback {
            agent,
            agent_index,
            run_at,
        } => {
            sqlx::query(
                "UPDATE steps SET state = 'ready', run_at = $1, agent = $2, agent_index = $3, \
                 agent_attempts = 0, \
                 lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL WHERE id = $4",
            )
            .bind(run_at)
            .bind(agent)
            .bind(agent_index)
            .bind(lease.step_row)
            .execute(&mut *tx)
            .await?;
            notify(tx, CHANNEL_STEPS).await?;
        }
    }
    insert_event(tx, run_id, Some(&step), now, &f.kind, &f.detail).await?;
    let plan = settle_in(tx, run_id, planner, now).await?;
    Ok(Some(plan.unwrap_or_default()))
}

fn parse_desired(d: &str) -> Result<DesiredState, StoreError> {
    DesiredState::parse(d).ok_or_else(|| corrupt("runs", format!("unknown desired state `{d}`")))
}

// The operator API's and the dashboard's queries live in their own files.
mod api;
mod changes;
mod control;
mod deliveries;
mod engine;
mod history;
mod queries;
mod records;
mod reports;
mod retention;
mod spend;
