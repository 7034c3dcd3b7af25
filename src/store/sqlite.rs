//! SQLite implementation of [`Store`] and every other store role (`sqlite/`:
//! `engine`, `control`, `reports`, `records`, `queries`, `changes`): the
//! default, one file on one machine.
//!
//! **One driver.** Every statement runs through rusqlite, on connections the
//! store opens and owns: one writer, a few read-only readers. sqlx (which the
//! PostgreSQL store uses) is not involved; its migration files are embedded
//! with `sqlx::migrate!` only so that a database migrated by an earlier
//! version (which ran them through sqlx) continues from the same bookkeeping
//! table. Why rusqlite: through sqlx's SQLite driver every statement is a
//! hand-off to a worker thread and back, and under a webhook flood those
//! hand-offs, not SQLite, set the pace (`benches/README.md`, "One SQLite
//! driver").
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
//! All writes go through a **single writer connection** ([`Writer`]):
//! SQLite allows one writer at a time anyway, and funnelling writes through
//! one connection turns lock contention (`SQLITE_BUSY`, retries) into an
//! orderly queue, in which the inbox goes first ([`Priority`]). Readers use
//! their own connections, which WAL lets run beside the writer. Write
//! transactions start with `BEGIN IMMEDIATE` so that even another process
//! (say `taskmaster migrate`) cannot make a read transaction fail on upgrade.
//!
//! This store assumes **one taskmaster process per database file**: start-up
//! recovery returns every `processing` delivery to the queue. Several replicas
//! need the PostgreSQL store.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::params;

use super::policy;
use super::rows::{AuditRow, DeliveryRow, EffectRow, FromSqliteRow, RunRow, corrupt};
use super::{
    AuditEntry, Effect, EffectOutcome, EffectState, InstallationState, NewEffect, RepoConfigRecord,
};
use super::{
    Delivery, DeliveryResult, DeliveryState, Durable, InboxDepth, InsertOutcome, NewDelivery,
    Store, StoreError, now_ms,
};
use sql::Sql;

/// The migrations, embedded (see the module's documentation for why
/// through sqlx's macro); applied by [`migrate`].
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// This build's SQLite migrations.
pub(super) fn migrator() -> &'static sqlx::migrate::Migrator {
    &MIGRATOR
}

/// The file a SQLite URL names; `None` for an in-memory database.
pub(super) fn file_of(url: &str) -> Option<PathBuf> {
    match Location::of(url) {
        Location::File(path) => Some(path),
        Location::Memory => None,
    }
}

/// How long a writer waits for SQLite's lock held by another process.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// The SQLite store. Cheap to clone (connections are shared).
#[derive(Clone, Debug)]
pub struct SqliteStore {
    writer: Arc<Writer>,
    /// Read-only connections; `None` for an in-memory database, which other
    /// connections cannot open (reads go through the writer then).
    reader: Option<Arc<Reader>>,
    /// The database file; `None` in memory.
    path: Option<PathBuf>,
    /// Syncs the `-wal` file for the inbox's batches (`stage_deliveries`);
    /// `None` for an in-memory database.
    wal: Option<Arc<walsync::WalSync>>,
    /// Copies the log into the database file off the writer's path; `None`
    /// for an in-memory database.
    checkpointer: Option<Arc<walsync::Checkpointer>>,
    /// This process's claim on the database file (see [`ProcessLock`]).
    process_lock: Option<Arc<ProcessLock>>,
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

/// Read-only connections, used on the caller's thread: a lookup takes
/// microseconds and never waits for the writer (WAL readers do not), so
/// blocking the runtime thread for it is cheaper than handing it to another
/// thread (measured through sqlx, which does: the dispatcher drained 3,000 –
/// 3,400 deliveries/s with its lookups there, 7,800 – 9,300/s with them
/// here; `benches/README.md`). Longer reads (lists, aggregates) go through
/// [`SqliteStore::scan`], which lets the runtime move its other tasks away
/// first.
pub(super) struct Reader {
    path: PathBuf,
    idle: std::sync::Mutex<Vec<rusqlite::Connection>>,
}

impl std::fmt::Debug for Reader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reader")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl Reader {
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
                conn.set_prepared_statement_cache_capacity(32);
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

/// The one writer connection, and the queues in front of it.
///
/// The connection keeps its prepared statements from one transaction to the
/// next (rusqlite's statement cache): preparing the claim's and the
/// results' dozen statements again in every transaction cost about as much
/// as the transaction's fsync.
pub(super) struct Writer {
    conn: tokio::sync::Mutex<rusqlite::Connection>,
    /// Where every writer but the inbox queues before it may queue for
    /// `conn`: so at most one of them waits at `conn` at a time, and an
    /// inbox batch (a webhook waiting for its answer) waits behind at most
    /// one other transaction, however many the dispatcher, engine and
    /// outbox have asked for (`Priority`).
    others: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer").finish_non_exhaustive()
    }
}

/// Who is asking for the writer ([`SqliteStore::write_as`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Priority {
    /// The inbox's batches: queue at the writer directly.
    Intake,
    /// Everything else: one at a time behind the inbox.
    Other,
}

/// Where a database lives, from the URL forms the store accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Location {
    Memory,
    File(PathBuf),
}

impl Location {
    /// `sqlite://path`, `sqlite:path` or a bare path (a query string such as
    /// `?mode=rwc` is ignored: the file is always created when missing);
    /// `:memory:` and `mode=memory` are an in-memory database.
    fn of(url: &str) -> Location {
        let path = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
            .unwrap_or(url);
        let path = path.split('?').next().unwrap_or(path);
        if path.is_empty() || path == ":memory:" || url.contains("mode=memory") {
            Location::Memory
        } else {
            Location::File(PathBuf::from(path))
        }
    }
}

/// Opens the writer connection with the store's settings (see the module's
/// documentation). `auto_vacuum` comes first: it takes effect on a new file
/// only, before its first table (an older file is converted by `taskmaster
/// prune`), and before `journal_mode`, whose change marks even an empty
/// file as begun.
fn open_writer(location: &Location) -> Result<rusqlite::Connection, StoreError> {
    let mut conn = match location {
        Location::Memory => rusqlite::Connection::open_in_memory()?,
        Location::File(path) => rusqlite::Connection::open_with_flags(
            path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE
                | rusqlite::OpenFlags::SQLITE_OPEN_CREATE
                | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?,
    };
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.execute_batch("PRAGMA auto_vacuum = INCREMENTAL")?;
    if matches!(location, Location::File(_)) {
        let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::Durability(format!(
                "the database refused the WAL journal (it is in `{mode}` mode)"
            )));
        }
    }
    conn.execute_batch("PRAGMA foreign_keys = ON; PRAGMA synchronous = FULL;")?;
    conn.set_transaction_behavior(rusqlite::TransactionBehavior::Immediate);
    conn.set_prepared_statement_cache_capacity(128);
    Ok(conn)
}

impl SqliteStore {
    /// Opens (creating if absent) the database at `url`: `sqlite://path`,
    /// `sqlite:path`, or a bare file path; `sqlite::memory:` for a database
    /// that lives as long as the store. Does not migrate; see
    /// [`Store::migrate`].
    ///
    /// Errors: the file cannot be opened or created, or refuses the WAL
    /// journal; the log syncer or checkpointer cannot start.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        let location = Location::of(url);
        let conn = tokio::task::spawn_blocking({
            let location = location.clone();
            move || open_writer(&location)
        })
        .await
        .map_err(|e| StoreError::Durability(format!("opening the database panicked: {e}")))??;
        let writer = Arc::new(Writer {
            conn: tokio::sync::Mutex::new(conn),
            others: tokio::sync::Mutex::new(()),
        });
        let Location::File(file) = location else {
            return Ok(SqliteStore {
                writer,
                reader: None,
                path: None,
                wal: None,
                checkpointer: None,
                process_lock: None,
            });
        };
        // The file exists now (the writer created it): SQLite names its log
        // after the database's path with `-wal` appended.
        let db = std::fs::canonicalize(&file).map_err(|e| {
            StoreError::Durability(format!("cannot resolve the database path: {e}"))
        })?;
        let mut wal = db.clone().into_os_string();
        wal.push("-wal");
        let syncer = walsync::WalSync::start(wal.into())
            .map_err(|e| StoreError::Durability(format!("cannot start the log syncer: {e}")))?;
        let checkpointer = walsync::Checkpointer::start(&db)?;
        Ok(SqliteStore {
            writer,
            reader: Some(Arc::new(Reader {
                path: db.clone(),
                idle: std::sync::Mutex::new(Vec::new()),
            })),
            path: Some(db),
            wal: Some(Arc::new(syncer)),
            checkpointer: Some(Arc::new(checkpointer)),
            process_lock: None,
        })
    }

    /// Keeps `lock` (from [`ProcessLock::acquire`]) for the store's lifetime.
    pub fn hold(&mut self, lock: Option<ProcessLock>) {
        self.process_lock = lock.map(Arc::new);
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
        self.write(|conn| {
            let tx = conn.unchecked_transaction()?;
            let changed = tx.exec(update, [run_id])?;
            let outcome = control_outcome(&tx, changed, run_id, now, event, message)?;
            tx.commit()?;
            Ok(outcome)
        })
        .await
    }

    /// Runs `work` on the writer connection, after the writes asked before
    /// it (see [`Writer`]).
    ///
    /// `work` runs on this task's runtime thread, blocking it for the
    /// transaction (typically under a millisecond, fsync included): there is
    /// one writer, so at most one runtime thread is ever blocked here. On a
    /// multi-threaded runtime the thread first hands its other tasks
    /// (webhooks being answered) to another (`block_in_place`). `work` must
    /// leave no transaction open: use
    /// [`rusqlite::Connection::unchecked_transaction`], which the connection
    /// is set to begin `IMMEDIATE`, and whose drop rolls back.
    ///
    /// Errors: whatever `work` returns.
    async fn write<R>(
        &self,
        work: impl FnOnce(&rusqlite::Connection) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        self.write_as(Priority::Other, work).await
    }

    /// [`Self::write`] for a caller of the given [`Priority`].
    async fn write_as<R>(
        &self,
        priority: Priority,
        work: impl FnOnce(&rusqlite::Connection) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        let asked = std::time::Instant::now();
        let _others = match priority {
            Priority::Intake => None,
            Priority::Other => Some(self.writer.others.lock().await),
        };
        let conn = self.writer.conn.lock().await;
        let acquired = asked.elapsed();
        let result = blocking(|| work(&conn));
        drop(conn);
        if let Some(checkpointer) = &self.checkpointer {
            checkpointer.poke();
        }
        tracing::trace!(
            acquire_us = acquired.as_micros() as u64,
            work_us = (asked.elapsed() - acquired).as_micros() as u64,
            "writer transaction"
        );
        result
    }

    /// Runs `work` on the writer committing unsynced, then waits for the
    /// log syncer to sync the log past it (see `walsync`), so the result is
    /// as durable as a `FULL` commit's when this returns but the writer is
    /// not held through the fsync: concurrent writers (the inbox's batches
    /// above all) share one sync instead of queueing behind one each.
    /// Without a syncer (in-memory databases) it is a plain
    /// [`Self::write`]. Only for writes that nothing outside the process
    /// acts on before the caller has the answer: other connections see the
    /// commit before it is synced.
    ///
    /// Errors: `work`'s, or [`StoreError::Durability`].
    async fn write_grouped<R>(
        &self,
        work: impl FnOnce(&rusqlite::Connection) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        let Some(wal) = &self.wal else {
            return self.write(work).await;
        };
        let result = self.write(|conn| unsynced(conn, work)).await?;
        wal.durable().await?;
        Ok(result)
    }

    /// Runs `read` on a reader connection ([`Reader`]) on this thread: for
    /// point lookups. In memory, on the writer (no other connection can see
    /// the database).
    ///
    /// Errors: whatever opening a connection or `read` returns.
    async fn read<R>(
        &self,
        read: impl FnOnce(&rusqlite::Connection) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        match &self.reader {
            Some(reader) => reader.read(read),
            None => self.write(read).await,
        }
    }

    /// [`Self::read`] for reads that may take a while (lists, aggregates,
    /// anything whose size grows with the data): on a multi-threaded
    /// runtime the thread hands its other tasks away first.
    ///
    /// Errors: as [`Self::read`].
    async fn scan<R>(
        &self,
        read: impl FnOnce(&rusqlite::Connection) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        match &self.reader {
            Some(reader) => blocking(|| reader.read(read)),
            None => self.write(read).await,
        }
    }

    /// The one row `sql` returns for `params`, decoded by `map`, or `None`,
    /// read through [`Self::read`]: for the point lookups the dispatcher
    /// makes for every delivery.
    ///
    /// Errors: as `read`; more than one row is not an error (the first
    /// is taken).
    async fn read_row<T>(
        &self,
        sql: &str,
        params: impl rusqlite::Params,
        map: impl FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
    ) -> Result<Option<T>, StoreError> {
        self.read(|conn| {
            use rusqlite::OptionalExtension as _;
            Ok(conn
                .prepare_cached(sql)?
                .query_row(params, map)
                .optional()?)
        })
        .await
    }

    /// A new read-write connection to the database file, for tests and
    /// tools that need raw SQL: it is not the store's writer, so its writes
    /// wait at SQLite's lock like another process's would.
    ///
    /// Errors: an in-memory database (no other connection can open it), or
    /// the file cannot be opened.
    pub fn connection(&self) -> Result<rusqlite::Connection, StoreError> {
        let Some(path) = &self.path else {
            return Err(StoreError::UnsupportedUrl {
                url: ":memory:".into(),
                hint: "an in-memory database has no other connections",
            });
        };
        let conn = rusqlite::Connection::open(path)?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        conn.execute_batch("PRAGMA foreign_keys = ON")?;
        Ok(conn)
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
        self.write(|conn| Ok(conn.query_row("PRAGMA synchronous", [], |r| r.get(0))?))
            .await
    }
}

/// Runs `work`, on a multi-threaded runtime after handing this thread's
/// other tasks to another thread (`block_in_place`): SQLite work is
/// synchronous, and a webhook waiting on this thread should not wait for it.
fn blocking<R>(work: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(work),
        _ => work(),
    }
}

/// Applies the embedded migrations not yet applied, each in its own
/// transaction, keeping the bookkeeping sqlx's migrator kept (the
/// `_sqlx_migrations` table: version, description, success, checksum,
/// execution time in nanoseconds) so that databases migrated by earlier
/// versions, through sqlx, continue where they stood.
///
/// Errors: a migration failed part-way before (`Dirty`), an applied
/// migration's file changed (`VersionMismatch`) or is gone
/// (`VersionMissing`), or a migration's SQL fails
/// ([`StoreError::MigrationStep`], naming it).
fn migrate(conn: &rusqlite::Connection) -> Result<(), StoreError> {
    use sqlx::migrate::MigrateError;
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS _sqlx_migrations ( \
             version BIGINT PRIMARY KEY, \
             description TEXT NOT NULL, \
             installed_on TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP, \
             success BOOLEAN NOT NULL, \
             checksum BLOB NOT NULL, \
             execution_time BIGINT NOT NULL)",
    )?;
    if let Some((version,)) = conn.opt::<(i64,)>(
        "SELECT version FROM _sqlx_migrations WHERE success = false ORDER BY version LIMIT 1",
        [],
    )? {
        return Err(MigrateError::Dirty(version).into());
    }
    let applied: HashMap<i64, Vec<u8>> = conn
        .all::<(i64, Vec<u8>)>(
            "SELECT version, checksum FROM _sqlx_migrations ORDER BY version",
            [],
        )?
        .into_iter()
        .collect();
    let known: std::collections::HashSet<i64> = MIGRATOR.iter().map(|m| m.version).collect();
    if let Some(missing) = applied.keys().find(|v| !known.contains(v)) {
        return Err(MigrateError::VersionMissing(*missing).into());
    }
    for m in MIGRATOR.iter() {
        if m.migration_type.is_down_migration() {
            continue;
        }
        if let Some(checksum) = applied.get(&m.version) {
            if checksum[..] != m.checksum[..] {
                return Err(MigrateError::VersionMismatch(m.version).into());
            }
            continue;
        }
        let started = std::time::Instant::now();
        let step = |e: rusqlite::Error| StoreError::MigrationStep {
            version: m.version,
            description: m.description.to_string(),
            error: e,
        };
        let tx = conn.unchecked_transaction().map_err(step)?;
        tx.execute_batch(m.sql.as_str()).map_err(step)?;
        tx.execute(
            "INSERT INTO _sqlx_migrations (version, description, success, checksum, \
             execution_time) VALUES (?1, ?2, TRUE, ?3, ?4)",
            params![
                m.version,
                &*m.description,
                &m.checksum[..],
                started.elapsed().as_nanos() as i64
            ],
        )
        .map_err(step)?;
        tx.commit().map_err(step)?;
    }
    Ok(())
}

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

/// Selects [`DeliveryRow`]s: the delivery joined with its payload.
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
        self.write(migrate).await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.read(|conn| conn.one::<(i64,)>("SELECT 1", []))
            .await
            .map(drop)
    }

    async fn insert_deliveries(
        &self,
        batch: &[NewDelivery],
    ) -> Result<Vec<InsertOutcome>, StoreError> {
        self.write_as(Priority::Intake, |conn| insert_delivery_batch(conn, batch))
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
            .write_as(Priority::Intake, |conn| {
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
        // One transaction; the payloads are decompressed after the writer is released.
        //
        // Committed unsynced (see `unsynced`): a claim lost with the power
        // changes nothing, since start-up puts every `processing` delivery
        // back in the queue anyway, and the delivery's `finish_deliveries`
        // commits with `FULL`, which syncs the log up to and including the
        // claim. So no round holds the writer through an fsync for its claim.
        let rows = self
            .write(|conn| {
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
                        .query_map([id_list], DeliveryRow::from_sqlite_row)?
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
            self.write(work).await
        } else {
            self.write_grouped(work).await
        }
    }

    async fn recover_deliveries(&self) -> Result<u64, StoreError> {
        self.write(|conn| {
            conn.exec(
                "UPDATE deliveries SET state = 'queued', claimed_by = NULL, \
                 lease_expires_at = NULL WHERE state = 'processing'",
                [],
            )
        })
        .await
    }

    async fn release_deliveries(&self, owner: &str) -> Result<u64, StoreError> {
        self.write(|conn| {
            conn.exec(
                "UPDATE deliveries SET state = 'queued', claimed_by = NULL, \
                 lease_expires_at = NULL, attempts = MAX(attempts - 1, 0) \
                 WHERE state = 'processing' AND claimed_by = ?1",
                [owner],
            )
        })
        .await
    }

    async fn renew_delivery_leases(&self, owner: &str, lease: Duration) -> Result<u64, StoreError> {
        let expires = now_ms() + lease.as_millis() as i64;
        self.write(|conn| {
            conn.exec(
                "UPDATE deliveries SET lease_expires_at = ?2 \
                 WHERE state = 'processing' AND claimed_by = ?1",
                params![owner, expires],
            )
        })
        .await
    }

    async fn delivery(&self, delivery_id: &str) -> Result<Option<Delivery>, StoreError> {
        let row: Option<DeliveryRow> = self
            .read(|conn| {
                conn.opt(
                    concat!(select_deliveries!(), "WHERE d.delivery_id = ?1"),
                    [delivery_id],
                )
            })
            .await?;
        row.map(Delivery::try_from).transpose()
    }

    async fn inbox_depth(&self) -> Result<InboxDepth, StoreError> {
        let rows: Vec<(String, i64, Option<i64>)> = self
            .scan(|conn| {
                conn.all(
                    "SELECT state, COUNT(*), MIN(received_at) FROM deliveries \
                     WHERE state IN ('queued', 'processing') GROUP BY state",
                    [],
                )
            })
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
// ---------------------------------------------------------------------------
// Runs, steps, attempts and the timeline (the engine's `RunStore`).
// ---------------------------------------------------------------------------

use super::runs::{
    AttemptRow, ClaimLimits, ClaimedStep, ControlOutcome, CreatedRun, DesiredState, Lease, NewRun,
    Plan, Planner, Run, RunEvent, RunSnapshot, StepFinish,
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

/// The outcome of a control UPDATE that changed `changed` rows, inside the
/// caller's transaction: `Changed` (with its timeline event written),
/// `Unchanged` when the run exists in another state, `NotFound` otherwise.
fn control_outcome(
    tx: &rusqlite::Connection,
    changed: u64,
    run_id: i64,
    now: i64,
    event: &str,
    message: &str,
) -> Result<ControlOutcome, StoreError> {
    Ok(if changed == 1 {
        raw::insert_event(tx, run_id, None, now, event, message)?;
        ControlOutcome::Changed
    } else if tx
        .opt::<(i64,)>("SELECT id FROM runs WHERE id = ?1", [run_id])?
        .is_some()
    {
        ControlOutcome::Unchanged
    } else {
        ControlOutcome::NotFound
    })
}

// The operator API's queries live in their own file.
pub(super) mod api;
pub(super) mod changes;
mod control;
pub(super) mod deliveries;
mod engine;
mod history;
mod queries;
mod raw;
mod records;
mod reports;
mod retention;
mod spend;
mod sql;
mod walsync;

#[cfg(test)]
mod tests {
    use super::*;

    fn fresh() -> rusqlite::Connection {
        open_writer(&Location::Memory).unwrap()
    }

    fn versions(conn: &rusqlite::Connection) -> Vec<i64> {
        conn.all::<(i64,)>("SELECT version FROM _sqlx_migrations ORDER BY version", [])
            .unwrap()
            .into_iter()
            .map(|(v,)| v)
            .collect()
    }

    #[test]
    fn migrations_apply_once_with_the_bookkeeping_sqlx_kept() {
        let conn = fresh();
        migrate(&conn).unwrap();
        let all: Vec<i64> = MIGRATOR.iter().map(|m| m.version).collect();
        assert_eq!(versions(&conn), all);
        // The checksums are sqlx's (SHA-384 of the file), as an earlier
        // version, migrating through sqlx, wrote them.
        let (checksum,): (Vec<u8>,) = conn
            .one(
                "SELECT checksum FROM _sqlx_migrations WHERE version = 1",
                [],
            )
            .unwrap();
        assert_eq!(checksum.len(), 48);
        assert_eq!(&checksum[..], &MIGRATOR.iter().next().unwrap().checksum[..]);
        // Again: nothing to do.
        migrate(&conn).unwrap();
        assert_eq!(versions(&conn), all);
    }

    #[test]
    fn a_database_part_way_continues_from_where_it_stood() {
        let conn = fresh();
        migrate(&conn).unwrap();
        // As if the last migrations had not been written yet: drop what
        // they made by starting over with only the first three applied.
        let conn2 = fresh();
        conn2
            .execute_batch(
                "CREATE TABLE _sqlx_migrations (version BIGINT PRIMARY KEY, \
                 description TEXT NOT NULL, installed_on TIMESTAMP NOT NULL \
                 DEFAULT CURRENT_TIMESTAMP, success BOOLEAN NOT NULL, \
                 checksum BLOB NOT NULL, execution_time BIGINT NOT NULL)",
            )
            .unwrap();
        for m in MIGRATOR.iter().take(3) {
            conn2.execute_batch(m.sql.as_str()).unwrap();
            conn2
                .execute(
                    "INSERT INTO _sqlx_migrations (version, description, success, checksum, \
                     execution_time) VALUES (?1, ?2, TRUE, ?3, -1)",
                    params![m.version, &*m.description, &m.checksum[..]],
                )
                .unwrap();
        }
        migrate(&conn2).unwrap();
        assert_eq!(versions(&conn2), versions(&conn));
    }

    #[test]
    fn a_changed_a_missing_or_a_dirty_migration_is_refused() {
        let conn = fresh();
        migrate(&conn).unwrap();
        conn.execute(
            "UPDATE _sqlx_migrations SET checksum = x'00' WHERE version = 2",
            [],
        )
        .unwrap();
        let e = migrate(&conn).unwrap_err().to_string();
        assert!(e.contains("2") && e.contains("modified"), "{e}");

        let conn = fresh();
        migrate(&conn).unwrap();
        conn.execute(
            "INSERT INTO _sqlx_migrations (version, description, success, checksum, \
             execution_time) VALUES (999999, 'from the future', TRUE, x'00', 0)",
            [],
        )
        .unwrap();
        let e = migrate(&conn).unwrap_err().to_string();
        assert!(e.contains("999999"), "{e}");

        let conn = fresh();
        migrate(&conn).unwrap();
        conn.execute(
            "UPDATE _sqlx_migrations SET success = false WHERE version = 3",
            [],
        )
        .unwrap();
        let e = migrate(&conn).unwrap_err().to_string();
        assert!(e.contains("3") && e.contains("partially applied"), "{e}");
    }

    #[test]
    fn a_failing_migration_names_itself_and_leaves_nothing_half_done() {
        let conn = fresh();
        // A table in the way of the first migration's.
        let first = MIGRATOR.iter().next().unwrap();
        conn.execute_batch("CREATE TABLE deliveries (x INTEGER)")
            .unwrap();
        let e = migrate(&conn).unwrap_err();
        assert!(
            matches!(&e, StoreError::MigrationStep { version, .. } if *version == first.version),
            "{e}"
        );
        assert!(e.to_string().contains(&*first.description), "{e}");
        assert!(versions(&conn).is_empty(), "rolled back");
    }

    #[test]
    fn urls_name_a_file_or_memory() {
        for (url, want) in [
            (
                "sqlite://taskmaster.db",
                Location::File("taskmaster.db".into()),
            ),
            ("sqlite:data/t.db", Location::File("data/t.db".into())),
            ("/var/lib/t.db", Location::File("/var/lib/t.db".into())),
            ("sqlite://t.db?mode=rwc", Location::File("t.db".into())),
            ("sqlite::memory:", Location::Memory),
            ("sqlite://x?mode=memory", Location::Memory),
        ] {
            assert_eq!(Location::of(url), want, "{url}");
        }
    }
}
