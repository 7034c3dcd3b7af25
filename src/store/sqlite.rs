//! SQLite implementation of [`Store`] and every other store role (`sqlite/`:
//! `engine`, `control`, `reports`, `records`, `queries`, `changes`): the
//! default, one file on one machine.
//!
//! Durability settings: WAL journal, `synchronous=FULL` (every commit is
//! fsynced, so what a commit promised survives power loss, not just a
//! crash), a busy timeout, foreign keys on. The inbox's batches are the one
//! exception in how, not in what: they commit with `synchronous=NORMAL` and
//! are answered only after a log syncer thread has fdatasynced the `-wal`
//! file, which lets the writer commit the next batch while the disk works
//! (`walsync`). A background checkpointer copies the log into the database
//! file a few milliseconds behind the writer, so that commits do not stop
//! to do it.
//!
//! All writes go through a **single writer connection**, which the store
//! takes out of its pool once and keeps ([`RawWriter`]): SQLite allows one
//! writer at a time anyway, and funnelling writes through one connection
//! turns lock contention (`SQLITE_BUSY`, retries) into an orderly queue.
//! Readers use their own pool, which WAL lets run beside the writer. Write
//! transactions start with `BEGIN IMMEDIATE` so that even another process
//! (say `taskmaster migrate`) cannot make a read transaction fail on upgrade.
//!
//! The hot batches — storing deliveries, claiming them, finishing them — run
//! on the writer connection's own SQLite handle through rusqlite
//! (`with_raw_writer`): sqlx sends every statement to its worker thread and
//! waits for the answer, and under a webhook flood those hand-offs, not
//! SQLite, set the pace (`benches/README.md`).
//!
//! This store assumes **one taskmaster process per database file**: start-up
//! recovery returns every `processing` delivery to the queue. Several replicas
//! need the PostgreSQL store.

use std::collections::HashMap;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

use super::policy;
use super::rows::{AuditRow, DeliveryRow, EffectRow, RunRow, StepRow, corrupt};
use super::{
    AuditEntry, Effect, EffectOutcome, EffectState, InstallationState, NewEffect, RepoConfigRecord,
};
use super::{
    Delivery, DeliveryResult, DeliveryState, Durable, InboxDepth, InsertOutcome, NewDelivery,
    Store, StoreError, now_ms,
};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// How long a writer waits for SQLite's lock held by another process.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// The SQLite store. Cheap to clone (pools are reference counted).
#[derive(Clone, Debug)]
pub struct SqliteStore {
    writer: SqlitePool,
    tools: SqlitePool,
    reader: SqlitePool,
    raw: std::sync::Arc<RawWriter>,
    /// Syncs the `-wal` file for the inbox's batches (`stage_deliveries`);
    /// `None` for an in-memory database.
    wal: Option<std::sync::Arc<walsync::WalSync>>,
    /// Copies the log into the database file off the writer's path; `None`
    /// for an in-memory database.
    checkpointer: Option<std::sync::Arc<walsync::Checkpointer>>,
    /// Read-only rusqlite connections for the dispatcher's per-delivery
    /// lookups; `None` for an in-memory database.
    raw_reader: Option<std::sync::Arc<RawReader>>,
    /// This process's claim on the database file (see [`ProcessLock`]).
    process_lock: Option<std::sync::Arc<ProcessLock>>,
}

/// An exclusive lock on `<database>.lock` (`flock`, released when the
/// process ends however it ends), holding the holder's pid for messages.
#[derive(Debug)]
pub struct ProcessLock {
    _file: std::fs::File,
}

impl ProcessLock {
    /// Locks the database of `url` (a path, `sqlite:path` or
    /// `sqlite://path`) for this process; in-memory databases need none.
    ///
    /// # Errors
    /// [`StoreError::InUse`] when another process holds it, with what to do.
    pub fn acquire(url: &str) -> Result<Option<Self>, StoreError> {
        use std::io::{Read, Seek, Write};
        let path = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
            .unwrap_or(url);
        let path = path.split('?').next().unwrap_or(path);
        if path.is_empty() || path == ":memory:" || url.contains("mode=memory") {
            return Ok(None);
        }
        let lock_path = format!("{path}.lock");
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .map_err(|e| {
                StoreError::InUse(format!("cannot open the lock file {lock_path}: {e}"))
            })?;
        match file.try_lock() {
            Ok(()) => {
                let _ = file.set_len(0);
                let _ = file.rewind();
                let _ = write!(file, "{}", std::process::id());
                Ok(Some(Self { _file: file }))
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut pid = String::new();
                let _ = file.read_to_string(&mut pid);
                Err(StoreError::InUse(format!(
                    "the SQLite database {path} is in use by another taskmaster process \
                     (pid {}): one process per SQLite file. Stop it first, or give this \
                     one another DATABASE_URL (`taskmaster run` cannot share a live \
                     service's database); several replicas need PostgreSQL",
                    if pid.trim().is_empty() {
                        "unknown"
                    } else {
                        pid.trim()
                    }
                )))
            }
            Err(std::fs::TryLockError::Error(e)) => {
                Err(StoreError::InUse(format!("cannot lock {lock_path}: {e}")))
            }
        }
    }
}

/// Read-only rusqlite connections of the store's own, used inline on the
/// caller's thread for point lookups that run once per delivery: through
/// sqlx's reader pool each is a round trip to a worker thread and back
/// (measured: the dispatcher alone drained 3,000 – 3,400 deliveries/s with
/// its lookups through sqlx, 4,600 – 5,000/s with the installation and task
/// lookups here, and 7,800 – 9,300/s once the repository configuration's
/// came here too; `benches/README.md`). A lookup here takes microseconds
/// and never waits for the writer (WAL readers do not), so blocking the
/// runtime thread for it is cheaper than the two thread wake-ups.
pub(super) struct RawReader {
    path: std::path::PathBuf,
    idle: std::sync::Mutex<Vec<rusqlite::Connection>>,
}

impl std::fmt::Debug for RawReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawReader")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl RawReader {
    /// The most idle connections kept.
    const KEEP: usize = 4;

    /// Runs `read` on an idle connection (opening one if none is idle) and
    /// puts it back.
    ///
    /// Errors: the database cannot be opened, or whatever `read` returns.
    fn read<R>(
        &self,
        read: impl FnOnce(&rusqlite::Connection) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        let idle = self
            .idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .pop();
        let conn = match idle {
            Some(conn) => conn,
            None => {
                let conn = rusqlite::Connection::open_with_flags(
                    &self.path,
                    rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY
                        | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
                )?;
                conn.busy_timeout(BUSY_TIMEOUT)?;
                conn.set_prepared_statement_cache_capacity(16);
                conn
            }
        };
        let result = read(&conn);
        let mut idle = self
            .idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if idle.len() < Self::KEEP {
            idle.push(conn);
        }
        result
    }
}

/// The writer connection, checked out of its pool once and kept, and the
/// rusqlite view of its handle.
///
/// **Why kept.** Returning a connection to a sqlx pool spawns a task that
/// pings it through sqlx's worker thread before the next `acquire` can have
/// it; under a webhook flood that round trip (p50 ~0.36 ms) cost nearly as
/// much as the transaction it followed (`benches/README.md`). So every write
/// — sqlx statements through [`SqliteStore::writer`] and rusqlite batches
/// through [`SqliteStore::with_raw_writer`] — takes this one connection
/// through an async mutex instead, in the order asked.
///
/// **Why a view.** The rusqlite view keeps its prepared statements from one
/// batch to the next: preparing the claim's and the results' dozen
/// statements again in every transaction cost about as much as the
/// transaction's fsync.
///
/// Safety rules, because the statements live on a handle sqlx owns:
/// * the connection is never returned to the pool while the store lives, so
///   the handle outlives the statements;
/// * the view is used only while sqlx's worker thread is kept off the handle
///   (`lock_handle`), and finalized (dropped) the same way, on a thread of
///   its own when the store is dropped, before the connection is closed;
/// * a view whose handle is not the held connection's (which cannot happen
///   while the connection is held; checked anyway) is leaked, never dropped.
pub(super) struct RawWriter {
    held: tokio::sync::Mutex<Option<Held>>,
    /// Where every writer but the inbox queues before it may queue for
    /// `held`: so at most one of them waits at `held` at a time, and an
    /// inbox batch (a webhook waiting for its answer) waits behind at most
    /// one other transaction, however many the dispatcher, engine and
    /// outbox have asked for (`Priority`).
    others: tokio::sync::Mutex<()>,
}

/// Who is asking for the writer ([`SqliteStore::with_raw_writer_as`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Priority {
    /// The inbox's batches: queue at the writer directly.
    Intake,
    /// Everything else: one at a time behind the inbox.
    Other,
}

struct Held {
    /// sqlx's worker thread kept off the handle from one rusqlite batch to
    /// the next (`lock_handle` costs two thread wake-ups each way); given
    /// back before any sqlx statement ([`SqliteStore::writer`]). It borrows
    /// `conn`, which is boxed so that it does not move: never touch `conn`
    /// while this is `Some`, and drop this first.
    locked: Option<sqlx::sqlite::LockedSqliteHandle<'static>>,
    view: Option<RawView>,
    conn: Box<sqlx::pool::PoolConnection<sqlx::Sqlite>>,
}

impl Held {
    /// Gives the handle back to sqlx's worker thread, if it was kept.
    fn unlock(&mut self) {
        self.locked = None;
    }
}

struct RawView {
    handle: usize,
    conn: rusqlite::Connection,
}

impl std::fmt::Debug for RawWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawWriter").finish_non_exhaustive()
    }
}

/// Exclusive use of the writer connection, for sqlx statements: derefs to
/// the connection (`.execute(&mut *w)`, `w.begin_with(..)`).
pub(super) struct WriterGuard<'a> {
    held: tokio::sync::MutexGuard<'a, Option<Held>>,
    /// This writer's place behind the inbox (see [`RawWriter`]).
    _others: tokio::sync::MutexGuard<'a, ()>,
}

impl std::ops::Deref for WriterGuard<'_> {
    type Target = SqliteConnection;
    fn deref(&self) -> &SqliteConnection {
        let held = self.held.as_ref().expect("held while guarded");
        debug_assert!(held.locked.is_none(), "unlocked by `writer`");
        &held.conn
    }
}

impl std::ops::DerefMut for WriterGuard<'_> {
    fn deref_mut(&mut self) -> &mut SqliteConnection {
        let held = self.held.as_mut().expect("held while guarded");
        debug_assert!(held.locked.is_none(), "unlocked by `writer`");
        &mut held.conn
    }
}

impl Drop for RawWriter {
    /// Finalizes the kept statements and closes the connection, on a thread
    /// of its own: both need sqlx's worker thread, which drop cannot await,
    /// and `sqlite3_close` refuses while statements are open.
    fn drop(&mut self) {
        let Some(Held { locked, view, conn }) = self.held.get_mut().take() else {
            return;
        };
        // Still keeping sqlx's worker off the handle: finalize right here.
        let view = match locked {
            Some(locked) => {
                drop(view);
                drop(locked);
                None
            }
            None => view,
        };
        let spawned = std::thread::Builder::new()
            .name("sqlite-writer-close".into())
            .spawn(move || {
                let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                    .enable_time()
                    .build()
                else {
                    std::mem::forget(view);
                    std::mem::forget(conn);
                    return;
                };
                rt.block_on(async move {
                    let mut conn = conn;
                    let finalized = match view {
                        None => true,
                        Some(view) => match conn.lock_handle().await {
                            Ok(locked) => {
                                drop(view);
                                drop(locked);
                                true
                            }
                            Err(e) => {
                                tracing::warn!(error = %e,
                                "could not finalize the writer's kept statements");
                                std::mem::forget(view);
                                false
                            }
                        },
                    };
                    if finalized {
                        let _ = conn.close().await;
                    } else {
                        std::mem::forget(conn);
                    }
                });
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "could not close the SQLite writer connection");
        }
    }
}

impl SqliteStore {
    /// Opens (creating if absent) the database at `url`: `sqlite://path`,
    /// `sqlite:path`, or a bare file path. Does not migrate; see [`Store::migrate`].
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        let url = if url.starts_with("sqlite:") {
            url.to_string()
        } else {
            format!("sqlite://{url}")
        };
        let base = SqliteConnectOptions::from_str(&url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(BUSY_TIMEOUT)
            .foreign_keys(true);
        // Freed pages go back to the file system after pruning
        // (`retention`). Takes effect on a new file only (an older one is
        // converted by `taskmaster prune`), and only from a connection that
        // may write: read-only ones refuse the pragma.
        let options = base
            .clone()
            .auto_vacuum(sqlx::sqlite::SqliteAutoVacuum::Incremental);
        let db_file = options.get_filename().to_path_buf();
        // The store takes this pool's one connection at its first write and
        // keeps it (`RawWriter`): every write of the service goes through it.
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .max_lifetime(None)
            .idle_timeout(None)
            .test_before_acquire(false)
            .connect_with(options.clone())
            .await?;
        // For `writer_pool()` (tests and tools): a connection of its own,
        // opened when first used, which waits at SQLite's lock like another
        // process would.
        let tools = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_lazy_with(options.clone());
        let reader = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_lazy_with(base.read_only(true));
        let raw = std::sync::Arc::new(RawWriter {
            held: tokio::sync::Mutex::new(None),
            others: tokio::sync::Mutex::new(()),
        });
        let in_memory = url.contains(":memory:") || url.contains("mode=memory");
        let (wal, checkpointer, raw_reader) = if in_memory {
            (None, None, None)
        } else {
            // The file exists now (the pool opened it): SQLite names its log
            // after the database's path with `-wal` appended.
            let db = std::fs::canonicalize(&db_file).map_err(|e| {
                StoreError::Durability(format!("cannot resolve the database path: {e}"))
            })?;
            let mut wal = db.clone().into_os_string();
            wal.push("-wal");
            let syncer = walsync::WalSync::start(wal.into())
                .map_err(|e| StoreError::Durability(format!("cannot start the log syncer: {e}")))?;
            let checkpointer = walsync::Checkpointer::start(&db)?;
            let raw_reader = RawReader {
                path: db,
                idle: std::sync::Mutex::new(Vec::new()),
            };
            (
                Some(std::sync::Arc::new(syncer)),
                Some(std::sync::Arc::new(checkpointer)),
                Some(std::sync::Arc::new(raw_reader)),
            )
        };
        Ok(SqliteStore {
            writer,
            tools,
            reader,
            raw,
            wal,
            checkpointer,
            raw_reader,
            process_lock: None,
        })
    }

    /// Keeps `lock` (from [`ProcessLock::acquire`]) for the store's lifetime.
    pub fn hold(&mut self, lock: Option<ProcessLock>) {
        self.process_lock = lock.map(std::sync::Arc::new);
    }

    /// One idempotent control transition of a run: `update` (binding the run
    /// id as `?1`) changes the run when it is in the state the transition
    /// starts from; the change and its timeline event commit together.
    /// `Unchanged` when the run exists in another state, `NotFound` otherwise.
    async fn control_transition(
        &self,
        run_id: i64,
        update: &'static str,
        event: &'static str,
        message: &'static str,
    ) -> Result<ControlOutcome, StoreError> {
        let now = now_ms();
        let mut writer = self.writer().await?;
        let mut tx = writer.begin_with("BEGIN IMMEDIATE").await?;
        let changed = sqlx::query(update)
            .bind(run_id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        let outcome = control_outcome(&mut tx, changed, run_id, now, event, message).await?;
        tx.commit().await?;
        Ok(outcome)
    }

    /// Runs `work` on the writer connection's own SQLite handle, through
    /// rusqlite, holding the writer for the duration.
    ///
    /// Every sqlx statement is a round trip to sqlx's worker thread; a batch of
    /// statements run here costs none while the handle's lock is kept from
    /// the previous batch, and one when a sqlx statement took it back. `work` runs
    /// inline on this task's runtime thread, blocking it for the transaction
    /// (typically under a millisecond, fsync included): there is one writer
    /// connection, so at most one runtime thread is ever blocked here, and
    /// the others steal its queued tasks meanwhile. `block_in_place` was
    /// measured slower (`benches/ENGINE.md`): handing the thread's core to
    /// another thread on every transaction cost more wake-ups than the
    /// transaction itself. `work` must leave no transaction open: use
    /// [`rusqlite::Connection::unchecked_transaction`], which the connection
    /// is set to begin `IMMEDIATE`, and whose drop rolls back.
    ///
    /// Errors: the pool's or the lock's errors, and whatever `work` returns.
    async fn with_raw_writer<R>(
        &self,
        work: impl FnOnce(&rusqlite::Connection) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        self.with_raw_writer_as(Priority::Other, work).await
    }

    /// [`Self::with_raw_writer`] for a caller of the given [`Priority`].
    async fn with_raw_writer_as<R>(
        &self,
        priority: Priority,
        work: impl FnOnce(&rusqlite::Connection) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        let asked = std::time::Instant::now();
        let _others = match priority {
            Priority::Intake => None,
            Priority::Other => Some(self.raw.others.lock().await),
        };
        let mut guard = self.held().await?;
        let acquired = asked.elapsed();
        let Held { locked, view, conn } = guard.as_mut().expect("held");
        if locked.is_none() {
            let handle = conn.lock_handle().await?;
            // SAFETY: the handle borrows the boxed connection, which stays at
            // its address and is not touched while `locked` is `Some` (see
            // `Held`); `locked` is dropped before it (`Held::unlock`, and
            // `RawWriter`'s drop).
            *locked = Some(unsafe {
                std::mem::transmute::<
                    sqlx::sqlite::LockedSqliteHandle<'_>,
                    sqlx::sqlite::LockedSqliteHandle<'static>,
                >(handle)
            });
        }
        let raw = locked.as_mut().expect("set above").as_raw_handle();
        let locked_at = std::time::Instant::now();
        let handle = raw.as_ptr() as usize;
        if view.as_ref().map(|v| v.handle) != Some(handle) {
            if let Some(stale) = view.take() {
                // See `RawWriter`: never finalize on a handle that is not ours.
                tracing::warn!(
                    "the SQLite writer connection was replaced; its kept statements are leaked"
                );
                std::mem::forget(stale);
            }
            // SAFETY: `locked` keeps sqlx's worker thread off this handle
            // while `work` runs (it is given back only by `writer`, which
            // waits for this batch, or on drop); a connection made
            // `from_handle` never closes the handle it borrows, and
            // `RawWriter` finalizes its statements only while it holds the
            // handle's lock, before the connection is closed.
            let mut conn = unsafe { rusqlite::Connection::from_handle(raw.as_ptr()) }?;
            conn.set_transaction_behavior(rusqlite::TransactionBehavior::Immediate);
            conn.set_prepared_statement_cache_capacity(128);
            *view = Some(RawView { handle, conn });
        }
        // The batch is synchronous SQLite work: on a multi-threaded runtime
        // the worker hands its other tasks (webhooks being answered) to
        // another thread while it runs.
        let conn = &view.as_ref().expect("set above").conn;
        let result = match tokio::runtime::Handle::current().runtime_flavor() {
            tokio::runtime::RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(|| work(conn))
            }
            _ => work(conn),
        };
        drop(guard);
        if let Some(checkpointer) = &self.checkpointer {
            checkpointer.poke();
        }
        tracing::trace!(
            acquire_us = acquired.as_micros() as u64,
            lock_us = (locked_at - asked - acquired).as_micros() as u64,
            work_us = locked_at.elapsed().as_micros() as u64,
            "raw writer batch"
        );
        result
    }

    /// Runs `work` on the writer's raw handle committing unsynced, then
    /// waits for the log syncer to sync the log past it (see `walsync`), so
    /// the result is as durable as a `FULL` commit's when this returns but
    /// the writer is not held through the fsync: concurrent writers (the
    /// inbox's batches above all) share one sync instead of queueing behind
    /// one each. Without a syncer (in-memory databases) it is a plain
    /// [`Self::with_raw_writer`]. Only for writes that nothing outside the
    /// process acts on before the caller has the answer: other connections
    /// see the commit before it is synced.
    ///
    /// Errors: `work`'s, the writer's, or [`StoreError::Durability`].
    async fn write_grouped<R>(
        &self,
        work: impl FnOnce(&rusqlite::Connection) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        let Some(wal) = &self.wal else {
            return self.with_raw_writer(work).await;
        };
        let result = self.with_raw_writer(|conn| unsynced(conn, work)).await?;
        wal.durable().await?;
        Ok(result)
    }

    /// Runs `read` on a connection of the raw reader ([`RawReader`]), or,
    /// for an in-memory database (which other connections cannot open), on
    /// the writer's own handle.
    ///
    /// Errors: whatever opening a connection or `read` returns.
    async fn raw_read<R>(
        &self,
        read: impl FnOnce(&rusqlite::Connection) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        match &self.raw_reader {
            Some(reader) => reader.read(read),
            None => self.with_raw_writer(read).await,
        }
    }

    /// The one row `sql` returns for `params`, mapped by `map`, or `None`,
    /// read through [`Self::raw_read`]: for the point lookups the dispatcher
    /// makes for every delivery.
    ///
    /// Errors: as `raw_read`; more than one row is not an error (the first
    /// is taken).
    async fn raw_read_row<T>(
        &self,
        sql: &str,
        params: impl rusqlite::Params,
        map: impl FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
    ) -> Result<Option<T>, StoreError> {
        self.raw_read(|conn| {
            use rusqlite::OptionalExtension as _;
            Ok(conn
                .prepare_cached(sql)?
                .query_row(params, map)
                .optional()?)
        })
        .await
    }

    /// The writer connection, for sqlx statements: waits for the writes
    /// asked before this one (see [`RawWriter`]), takes the connection out of
    /// its pool at the first call and keeps it.
    ///
    /// Errors: the pool cannot open the connection.
    pub(super) async fn writer(&self) -> Result<WriterGuard<'_>, StoreError> {
        let others = self.raw.others.lock().await;
        let mut held = self.held().await?;
        held.as_mut().expect("held").unlock();
        Ok(WriterGuard {
            held,
            _others: others,
        })
    }

    /// The writer connection, waiting for the writes asked before; taken
    /// out of its pool at the first call and kept.
    async fn held(&self) -> Result<tokio::sync::MutexGuard<'_, Option<Held>>, StoreError> {
        let mut held = self.raw.held.lock().await;
        if held.is_none() {
            let conn = Box::new(self.writer.acquire().await?);
            *held = Some(Held {
                locked: None,
                view: None,
                conn,
            });
        }
        Ok(held)
    }

    /// A read-write pool for tests and tools that need raw SQL. The store
    /// keeps its own writer connection (see [`RawWriter`]); a statement here
    /// runs on another one and waits at SQLite's lock like another process
    /// would.
    pub fn writer_pool(&self) -> &SqlitePool {
        &self.tools
    }

    /// How many times the log syncer has synced the `-wal` file for staged
    /// inbox batches (see [`Store::stage_deliveries`]); `None` for an
    /// in-memory database, which has no log to sync.
    pub fn wal_syncs(&self) -> Option<u64> {
        self.wal.as_ref().map(|wal| wal.syncs())
    }

    /// How many passes the background checkpointer has run (see
    /// `walsync::Checkpointer`); `None` for an in-memory database.
    pub fn checkpoint_passes(&self) -> Option<u64> {
        self.checkpointer.as_ref().map(|c| c.passes())
    }

    /// The `synchronous` setting of the store's own writer connection (2 is
    /// `FULL`), which every transaction but a staged inbox batch commits
    /// with. For tests.
    pub async fn writer_synchronous(&self) -> Result<i64, StoreError> {
        let (level,): (i64,) = sqlx::query_as("PRAGMA synchronous")
            .fetch_one(&mut *self.writer().await?)
            .await?;
        Ok(level)
    }
}

/// Selects [`DeliveryRow`]s: the delivery joined with its payload. A literal,
/// so queries stay `&'static str` (sqlx 0.9 refuses dynamic SQL strings).
/// A finished delivery's new `(state, error, available_at, finished_at)`.
fn finish_columns(
    result: &DeliveryResult,
    now: i64,
) -> (&'static str, Option<&str>, i64, Option<i64>) {
    match result {
        DeliveryResult::Done | DeliveryResult::Started(_) => ("done", None, now, Some(now)),
        DeliveryResult::Ignored(why) => ("ignored", Some(why.as_str()), now, Some(now)),
        DeliveryResult::Retry { error, retry_at } => {
            ("queued", Some(error.as_str()), *retry_at, None)
        }
        DeliveryResult::Failed(error) => ("failed", Some(error.as_str()), now, Some(now)),
    }
}

macro_rules! select_deliveries {
    () => {
        "SELECT d.id, d.delivery_id, d.event, d.action, d.hook_id, d.installation_id, \
         d.repository, d.sender_id, d.sender_login, p.encoding, p.size, p.payload, d.received_at, d.state, \
         d.attempts, d.error \
         FROM deliveries d JOIN delivery_payloads p ON p.id = d.id "
    };
}

/// Runs `work` on the writer's handle with `PRAGMA synchronous = NORMAL`:
/// its commits are written to the log but not synced. `FULL` comes back
/// before this returns, whatever `work` did, so no other transaction
/// commits unsynced. Callers wait for [`walsync::WalSync`] before anything
/// depends on the commit (the inbox), or say why nothing needs to
/// (`claim_deliveries`).
///
/// Errors: `work`'s, else a failure to set the pragma (which only sets a
/// flag on the connection; preparing it could fail only for want of memory).
fn unsynced<R>(
    conn: &rusqlite::Connection,
    work: impl FnOnce(&rusqlite::Connection) -> Result<R, StoreError>,
) -> Result<R, StoreError> {
    conn.prepare_cached("PRAGMA synchronous = NORMAL")?
        .raw_execute()?;
    let result = work(conn);
    let restored = conn
        .prepare_cached("PRAGMA synchronous = FULL")
        .and_then(|mut s| s.raw_execute());
    let result = result?;
    restored?;
    Ok(result)
}

/// Inserts a batch of deliveries in one transaction on the writer's own
/// handle (see [`Store::insert_deliveries`]); one outcome per input.
fn insert_delivery_batch(
    conn: &rusqlite::Connection,
    batch: &[NewDelivery],
) -> Result<Vec<InsertOutcome>, StoreError> {
    let mut outcomes = vec![InsertOutcome::Duplicate; batch.len()];
    let tx = conn.unchecked_transaction()?;
    {
        let mut insert = tx.prepare_cached(
            "INSERT INTO deliveries (delivery_id, event, action, hook_id, \
             installation_id, repository, sender_id, sender_login, received_at, state, \
             available_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?9) \
             ON CONFLICT (delivery_id) DO NOTHING RETURNING id",
        )?;
        let mut payload = tx.prepare_cached(
            "INSERT INTO delivery_payloads (id, encoding, size, payload) \
             VALUES (?1, ?2, ?3, ?4)",
        )?;
        for (d, outcome) in batch.iter().zip(outcomes.iter_mut()) {
            // A delivery id repeated within the batch conflicts with
            // its own first occurrence and so is a duplicate too.
            let id: Option<i64> = {
                let mut rows = insert.query(rusqlite::params![
                    d.delivery_id,
                    d.event,
                    d.action,
                    d.hook_id,
                    d.installation_id,
                    d.repository,
                    d.sender_id,
                    d.sender_login,
                    d.received_at,
                    d.state.as_str(),
                ])?;
                match rows.next()? {
                    Some(row) => Some(row.get(0)?),
                    None => None,
                }
            };
            if let Some(id) = id {
                let p = &d.payload;
                payload.execute(rusqlite::params![
                    id,
                    p.encoding.as_str(),
                    p.raw_len as i64,
                    &p.bytes[..],
                ])?;
                *outcome = InsertOutcome::Stored;
            }
        }
    }
    tx.commit()?;
    Ok(outcomes)
}

#[async_trait]
impl Store for SqliteStore {
    async fn migrate(&self) -> Result<(), StoreError> {
        // On a connection of its own: the store's writer connection may be
        // kept already (see `RawWriter`); SQLite's lock orders the two.
        MIGRATOR.run(&self.tools).await?;
        Ok(())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.reader).await?;
        Ok(())
    }

    async fn insert_deliveries(
        &self,
        batch: &[NewDelivery],
    ) -> Result<Vec<InsertOutcome>, StoreError> {
        // The whole batch runs on the writer's raw handle (`with_raw_writer`):
        // no hand-off to sqlx's worker thread per statement (BEGIN, the
        // INSERTs, COMMIT), which under load set the pace.
        self.with_raw_writer_as(Priority::Intake, |conn| insert_delivery_batch(conn, batch))
            .await
    }

    async fn stage_deliveries(
        &self,
        batch: &[NewDelivery],
    ) -> Result<(Vec<InsertOutcome>, Durable), StoreError> {
        let Some(wal) = &self.wal else {
            return Ok((
                self.insert_deliveries(batch).await?,
                super::already_durable(),
            ));
        };
        // Committed unsynced (`unsynced`), so the writer is free for the
        // next batch at once; `WalSync` syncs the log for this commit and
        // the ones beside it (see `walsync`) before anyone is answered.
        let outcomes = self
            .with_raw_writer_as(Priority::Intake, |conn| {
                unsynced(conn, |conn| insert_delivery_batch(conn, batch))
            })
            .await?;
        Ok((outcomes, wal.durable()))
    }

    async fn claim_deliveries(
        &self,
        owner: &str,
        limit: usize,
        lease: Duration,
    ) -> Result<Vec<Delivery>, StoreError> {
        let now = now_ms();
        let expires = now + lease.as_millis() as i64;
        // One batch on the writer's own handle (see `with_raw_writer`); the
        // payloads are decompressed after the writer is released.
        //
        // Committed unsynced (see `unsynced`): a claim lost with the power
        // changes nothing, since start-up puts every `processing` delivery
        // back in the queue anyway, and the delivery's `finish_deliveries`
        // commits with `FULL`, which syncs the log up to and including the
        // claim. So no round holds the writer through an fsync for its claim.
        let rows = self
            .with_raw_writer(|conn| {
                unsynced(conn, |conn| {
                    let tx = conn.unchecked_transaction()?;
                    let ids: Vec<i64> = tx
                        .prepare_cached(
                            "UPDATE deliveries \
                         SET state = 'processing', claimed_by = ?1, lease_expires_at = ?2, \
                             attempts = attempts + 1 \
                         WHERE id IN ( \
                             SELECT id FROM deliveries \
                             WHERE state IN ('queued', 'processing') \
                               AND ((state = 'queued' AND available_at <= ?3) \
                                 OR (state = 'processing' AND lease_expires_at < ?3)) \
                             ORDER BY id LIMIT ?4) \
                         RETURNING id",
                        )?
                        .query_map(
                            rusqlite::params![owner, expires, now, limit as i64],
                            |row| row.get(0),
                        )?
                        .collect::<Result<_, _>>()?;
                    if ids.is_empty() {
                        tx.commit()?;
                        return Ok(Vec::new());
                    }
                    let id_list = serde_json::to_string(&ids).expect("integers serialize");
                    let rows: Vec<DeliveryRow> = tx
                        .prepare_cached(concat!(
                            select_deliveries!(),
                            "WHERE d.id IN (SELECT value FROM json_each(?1)) ORDER BY d.id"
                        ))?
                        .query_map([id_list], DeliveryRow::from_rusqlite)?
                        .collect::<Result<_, _>>()?;
                    tx.commit()?;
                    Ok(rows)
                })
            })
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
        // One transaction on the writer's handle. A `Started` delivery's
        // runs commit with its `done`, or not at all; a dispatcher that lost
        // its lease creates nothing.
        let work = |conn: &rusqlite::Connection| {
            let tx = conn.unchecked_transaction()?;
            let mut changed = 0;
            for (id, result) in results {
                let (state, error, available_at, finished_at) = finish_columns(result, now);
                let finished = tx
                    .prepare_cached(
                        "UPDATE deliveries SET state = ?1, error = ?2, available_at = ?3, \
                         finished_at = ?4, claimed_by = NULL, lease_expires_at = NULL \
                         WHERE id = ?5 AND state = 'processing' AND claimed_by = ?6",
                    )?
                    .execute(rusqlite::params![
                        state,
                        error,
                        available_at,
                        finished_at,
                        id,
                        owner
                    ])?;
                if let (1, DeliveryResult::Started(runs)) = (finished, result) {
                    raw::create_runs(&tx, runs, now)?;
                }
                changed += finished as u64;
            }
            tx.commit()?;
            Ok(changed)
        };
        // A round that starts runs commits with `FULL`: a run is visible to
        // the outbox, which reports it to GitHub, only once it is on disk.
        // A round that starts nothing is grouped (`write_grouped`).
        if results
            .iter()
            .any(|(_, r)| matches!(r, DeliveryResult::Started(_)))
        {
            self.with_raw_writer(work).await
        } else {
            self.write_grouped(work).await
        }
    }

    async fn recover_deliveries(&self) -> Result<u64, StoreError> {
        let result = sqlx::query(
            "UPDATE deliveries SET state = 'queued', claimed_by = NULL, lease_expires_at = NULL \
             WHERE state = 'processing'",
        )
        .execute(&mut *self.writer().await?)
        .await?;
        Ok(result.rows_affected())
    }

    async fn release_deliveries(&self, owner: &str) -> Result<u64, StoreError> {
        let result = sqlx::query(
            "UPDATE deliveries SET state = 'queued', claimed_by = NULL, lease_expires_at = NULL, \
             attempts = MAX(attempts - 1, 0) \
             WHERE state = 'processing' AND claimed_by = ?1",
        )
        .bind(owner)
        .execute(&mut *self.writer().await?)
        .await?;
        Ok(result.rows_affected())
    }

    async fn renew_delivery_leases(&self, owner: &str, lease: Duration) -> Result<u64, StoreError> {
        let result = sqlx::query(
            "UPDATE deliveries SET lease_expires_at = ?2 \
             WHERE state = 'processing' AND claimed_by = ?1",
        )
        .bind(owner)
        .bind(now_ms() + lease.as_millis() as i64)
        .execute(&mut *self.writer().await?)
        .await?;
        Ok(result.rows_affected())
    }

    async fn delivery(&self, delivery_id: &str) -> Result<Option<Delivery>, StoreError> {
        let row: Option<DeliveryRow> =
            sqlx::query_as(concat!(select_deliveries!(), "WHERE d.delivery_id = ?1"))
                .bind(delivery_id)
                .fetch_optional(&self.reader)
                .await?;
        row.map(Delivery::try_from).transpose()
    }

    async fn inbox_depth(&self) -> Result<InboxDepth, StoreError> {
        let rows: Vec<(String, i64, Option<i64>)> = sqlx::query_as(
            "SELECT state, COUNT(*), MIN(received_at) FROM deliveries \
             WHERE state IN ('queued', 'processing') GROUP BY state",
        )
        .fetch_all(&self.reader)
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
}

// ---------------------------------------------------------------------------
// Runs, steps, attempts and the timeline (the engine's `RunStore`).
// ---------------------------------------------------------------------------

use sqlx::Connection as _;
use sqlx::SqliteConnection;

use super::runs::{
    AttemptRow, ClaimLimits, ClaimedStep, ControlOutcome, CreatedRun, DesiredState, Lease, NewRun,
    Plan, Planner, Run, RunEvent, RunSnapshot, StepFinish, StepRecord,
};
use super::{
    Admin, AppRecords, Effects, Queries, ReportCandidate, ReportOutcome, Reports, RunControl, Runs,
    Tasks,
};

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
    conn: &mut SqliteConnection,
    run_id: i64,
    step: Option<&str>,
    at: i64,
    kind: &str,
    detail: &str,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO run_events (run_id, step, at, kind, detail) VALUES (?1, ?2, ?3, ?4, ?5)",
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
    conn: &mut SqliteConnection,
    run_id: i64,
) -> Result<Option<RunSnapshot>, StoreError> {
    let run: Option<RunRow> = sqlx::query_as(concat!(select_runs!(), "WHERE id = ?1"))
        .bind(run_id)
        .fetch_optional(&mut *conn)
        .await?;
    let Some(run) = run else { return Ok(None) };
    let steps: Vec<StepRow> = sqlx::query_as(concat!(
        "SELECT ",
        step_columns!(),
        " FROM steps WHERE run_id = ?1 ORDER BY position"
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

/// The outcome of a control UPDATE that changed `changed` rows, inside the
/// caller's transaction: `Changed` (with its timeline event written),
/// `Unchanged` when the run exists in another state, `NotFound` otherwise.
async fn control_outcome(
    tx: &mut SqliteConnection,
    changed: u64,
    run_id: i64,
    now: i64,
    event: &str,
    message: &str,
) -> Result<ControlOutcome, StoreError> {
    Ok(if changed == 1 {
        insert_event(tx, run_id, None, now, event, message).await?;
        ControlOutcome::Changed
    } else if run_exists(tx, run_id).await? {
        ControlOutcome::Unchanged
    } else {
        ControlOutcome::NotFound
    })
}

async fn run_exists(conn: &mut SqliteConnection, run_id: i64) -> Result<bool, StoreError> {
    let row: Option<(i64,)> = sqlx::query_as("SELECT id FROM runs WHERE id = ?1")
        .bind(run_id)
        .fetch_optional(&mut *conn)
        .await?;
    Ok(row.is_some())
}

/// Records one result inside the caller's transaction; `None` when fenced out
/// (nothing written).
// The operator API's queries live in their own file.
pub(super) mod api;
pub(super) mod changes;
mod control;
pub(super) mod deliveries;
mod engine;
mod queries;
mod raw;
mod records;
mod reports;
mod retention;
mod spend;
mod walsync;
