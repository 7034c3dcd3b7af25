//! Group sync and background checkpoints of SQLite's write-ahead log,
//! outside the writer's lock.
//!
//! With `synchronous=FULL` every commit fsyncs the `-wal` file while it holds
//! the database's one write lock, so the next batch cannot even begin until
//! the disk has answered. The inbox's batches instead commit with
//! `synchronous=NORMAL` (SQLite writes the frames but does not sync them;
//! <https://www.sqlite.org/pragma.html#pragma_synchronous>: in WAL mode this
//! never corrupts the database, it can only lose the latest commits on power
//! loss) and then wait here: one thread fdatasyncs the `-wal` file for every
//! commit made before the sync started, while the writer goes on to the next
//! batch. A commit is answered only once a sync that began after it returned,
//! so an answered delivery is exactly as durable as under `FULL`: all of the
//! WAL's frames up to its commit frame are on disk, and SQLite's recovery
//! replays every valid commit in the log.
//!
//! Why the file can be synced from outside SQLite: WAL frames are written
//! with `write()` during the commit (not through a memory map), and `fsync`
//! on Linux flushes a file's dirty pages whichever descriptor wrote them.
//! The `-wal` file keeps its inode while any connection is open (SQLite
//! deletes it only when the last one closes); the store holds its writer
//! connection for its whole life, and the syncer still checks the inode
//! before each sync and reopens the file if it changed.
//!
//! What other connections see before the sync: an unsynced commit is
//! visible at once, so the dispatcher may claim (itself unsynced) a delivery
//! whose batch is still being synced. Nothing leaves the process on the
//! strength of such a commit. Handling a delivery only reads from GitHub
//! (permissions, the repository's configuration) and writes to the database;
//! what does act outside — the engine starting an agent, the outbox posting
//! to GitHub — acts on rows written by `FULL` commits (step claims, effects),
//! and SQLite syncs a `FULL` commit's frames, and so every frame before them
//! in the log, before it makes the commit visible. If the power goes before
//! the sync, the delivery and all that was derived from it vanish together,
//! and GitHub, never answered, records a failed delivery to redeliver.
//!
//! A failed sync poisons the syncer: dirty pages may have been dropped, so
//! no later sync can vouch for earlier commits (the "fsyncgate" lesson,
//! and why PostgreSQL stops on a failed fsync). Every wait then fails with
//! [`StoreError::Durability`] until the process restarts.

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, PoisonError};

use tokio::sync::watch;

use crate::store::{Durable, StoreError};

/// The syncer of one database's `-wal` file. Dropping it stops its thread
/// after the syncs already asked for.
pub(in crate::store) struct WalSync {
    shared: Arc<Shared>,
}

struct Shared {
    path: PathBuf,
    state: Mutex<State>,
    asked: Condvar,
    done: watch::Sender<Synced>,
}

#[derive(Default)]
struct State {
    /// The last ticket handed out.
    requested: u64,
    closed: bool,
    /// Why the syncer is poisoned, once it is.
    error: Option<String>,
}

#[derive(Clone, Copy, Default)]
struct Synced {
    /// Every ticket up to this one is durable.
    upto: u64,
    /// A sync failed; tickets above `upto` never will be.
    failed: bool,
    /// Syncs done, for tests and diagnostics.
    syncs: u64,
}

impl std::fmt::Debug for WalSync {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WalSync")
            .field("path", &self.shared.path)
            .finish_non_exhaustive()
    }
}

impl WalSync {
    /// Starts the syncer thread for the write-ahead log at `path` (the
    /// database file's path with `-wal` appended; the file need not exist
    /// until the first sync).
    ///
    /// Errors: the thread cannot be spawned.
    pub(in crate::store) fn start(path: PathBuf) -> std::io::Result<Self> {
        let (done, _) = watch::channel(Synced::default());
        let shared = Arc::new(Shared {
            path,
            state: Mutex::new(State::default()),
            asked: Condvar::new(),
            done,
        });
        let worker = shared.clone();
        std::thread::Builder::new()
            .name("sqlite-wal-sync".into())
            .spawn(move || worker.run())?;
        Ok(WalSync { shared })
    }

    /// Asks for a sync covering everything written to the log so far, and
    /// returns the wait for it. Call it after the commit returned.
    pub(in crate::store) fn durable(&self) -> Durable {
        let ticket = {
            let mut state = self.shared.lock();
            state.requested += 1;
            state.requested
        };
        self.shared.asked.notify_one();
        let mut done = self.shared.done.subscribe();
        let shared = self.shared.clone();
        Box::pin(async move {
            let waited = done
                .wait_for(|s| s.upto >= ticket || s.failed)
                .await
                .map(|synced| *synced);
            // If the thread ended, its last word stands.
            let synced = waited.unwrap_or_else(|_| *done.borrow());
            if synced.upto >= ticket {
                return Ok(());
            }
            let why = shared.lock().error.clone();
            Err(StoreError::Durability(
                why.unwrap_or_else(|| "the log syncer stopped".into()),
            ))
        })
    }

    /// How many syncs the thread has done.
    pub(in crate::store) fn syncs(&self) -> u64 {
        self.shared.done.borrow().syncs
    }
}

impl Drop for WalSync {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.asked.notify_one();
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn run(&self) {
        let mut file: Option<(std::fs::File, (u64, u64))> = None;
        let mut upto = 0;
        loop {
            let target = {
                let mut state = self.lock();
                while state.requested == upto && !state.closed {
                    state = self
                        .asked
                        .wait(state)
                        .unwrap_or_else(PoisonError::into_inner);
                }
                if state.requested == upto {
                    return; // closed, nothing left to sync
                }
                state.requested
            };
            let started = std::time::Instant::now();
            let synced = self.sync(&mut file);
            tracing::trace!(
                sync_us = started.elapsed().as_micros() as u64,
                commits = target - upto,
                "write-ahead log synced"
            );
            match synced {
                Ok(()) => {
                    upto = target;
                    self.done.send_modify(|s| {
                        s.upto = target;
                        s.syncs += 1;
                    });
                }
                Err(e) => {
                    let why = format!("{}: {e}", self.path.display());
                    tracing::error!(error = %why,
                        "syncing the write-ahead log failed; deliveries will be refused until a restart");
                    self.lock().error = Some(why);
                    self.done.send_modify(|s| s.failed = true);
                    return;
                }
            }
        }
    }

    /// One `fdatasync` of the log, reopening it if the path now names
    /// another file than the one held.
    fn sync(&self, file: &mut Option<(std::fs::File, (u64, u64))>) -> std::io::Result<()> {
        let on_disk = std::fs::metadata(&self.path)?;
        let id = (on_disk.dev(), on_disk.ino());
        if file.as_ref().map(|(_, held)| *held) != Some(id) {
            let opened = std::fs::File::open(&self.path)?;
            let meta = opened.metadata()?;
            *file = Some((opened, (meta.dev(), meta.ino())));
        }
        file.as_ref().expect("opened above").0.sync_data()
    }
}

/// Checkpoints the write-ahead log on a connection and thread of its own,
/// a few milliseconds behind the writer, so that the writer's commits do
/// not stop to copy a thousand pages into the database file.
///
/// SQLite's auto-checkpoint runs inside the commit that takes the log past
/// 1,000 pages: that commit, and every request waiting on it, stalls for
/// the copy and two fsyncs (the tens-of-milliseconds tails of intake and
/// the engine). It still runs — it is what starts the log over, because it
/// runs while no one can append — but by then this thread has copied all
/// but the last few milliseconds of frames, so it is short.
///
/// `PASSIVE` never waits for the writer or readers: it copies what it can.
/// Passes are at least [`MIN_INTERVAL`] apart: each costs two fsyncs (the
/// log, then the database file) and copies again every page written since
/// the last one (measured: back-to-back passes cost intake a sixth of its
/// throughput; `benches/README.md`).
pub(in crate::store) struct Checkpointer {
    shared: Arc<CpShared>,
}

/// The least time between two checkpoint passes.
const MIN_INTERVAL: std::time::Duration = std::time::Duration::from_millis(5);

struct CpShared {
    state: Mutex<CpState>,
    poked: Condvar,
    passes: std::sync::atomic::AtomicU64,
}

#[derive(Default)]
struct CpState {
    dirty: bool,
    closed: bool,
}

impl std::fmt::Debug for Checkpointer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checkpointer").finish_non_exhaustive()
    }
}

impl Checkpointer {
    /// Opens a connection to the database at `db` and starts the thread.
    ///
    /// Errors: the database cannot be opened, or the thread spawned.
    pub(in crate::store) fn start(db: &std::path::Path) -> Result<Self, StoreError> {
        let conn = rusqlite::Connection::open_with_flags(
            db,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        let shared = Arc::new(CpShared {
            state: Mutex::new(CpState::default()),
            poked: Condvar::new(),
            passes: Default::default(),
        });
        let worker = shared.clone();
        std::thread::Builder::new()
            .name("sqlite-checkpoint".into())
            .spawn(move || worker.run(conn))
            .map_err(|e| StoreError::Durability(format!("cannot start the checkpointer: {e}")))?;
        Ok(Checkpointer { shared })
    }

    /// Says that the writer committed: there may be frames to copy.
    pub(in crate::store) fn poke(&self) {
        let mut state = self
            .shared
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if !state.dirty {
            state.dirty = true;
            drop(state);
            self.shared.poked.notify_one();
        }
    }

    /// Checkpoint passes run, for tests and diagnostics.
    pub(in crate::store) fn passes(&self) -> u64 {
        self.shared
            .passes
            .load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.shared
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .closed = true;
        self.shared.poked.notify_one();
    }
}

impl CpShared {
    fn run(&self, conn: rusqlite::Connection) {
        // sqlx statements on the writer (control operations, rare) do not
        // poke; what they write is copied within this.
        const IDLE: std::time::Duration = std::time::Duration::from_millis(200);
        loop {
            {
                let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
                if !state.dirty && !state.closed {
                    state = self
                        .poked
                        .wait_timeout(state, IDLE)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0;
                }
                if state.closed {
                    return;
                }
                state.dirty = false;
            }
            let started = std::time::Instant::now();
            let pass = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| {
                Ok((row.get::<_, i64>(1)?, row.get::<_, i64>(2)?))
            });
            tracing::trace!(
                pass_us = started.elapsed().as_micros() as u64,
                log_frames = pass.as_ref().map(|p| p.0).unwrap_or(-1),
                copied_frames = pass.as_ref().map(|p| p.1).unwrap_or(-1),
                "checkpoint pass"
            );
            self.passes
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            match pass {
                Ok(_) => std::thread::sleep(MIN_INTERVAL),
                Err(e) => {
                    tracing::warn!(error = %e, "background checkpoint failed; the writer's own takes over");
                    std::thread::sleep(IDLE);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn waits_resolve_after_a_sync_that_started_after_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db-wal");
        std::fs::write(&path, b"frames").unwrap();
        let wal = WalSync::start(path).unwrap();
        let waits: Vec<_> = (0..20).map(|_| wal.durable()).collect();
        for wait in waits {
            wait.await.unwrap();
        }
        let syncs = wal.syncs();
        assert!(
            (1..=20).contains(&syncs),
            "20 waits took {syncs} syncs: one per wait at most, and at least one"
        );
        wal.durable().await.unwrap();
        assert!(wal.syncs() > syncs, "a later wait needs a later sync");
    }

    #[tokio::test]
    async fn a_failed_sync_fails_every_wait_from_then_on() {
        let dir = tempfile::tempdir().unwrap();
        let wal = WalSync::start(dir.path().join("missing-wal")).unwrap();
        for _ in 0..2 {
            match wal.durable().await {
                Err(StoreError::Durability(why)) => {
                    assert!(why.contains("missing-wal"), "names the file: {why}")
                }
                other => panic!("expected a durability error, got {other:?}"),
            }
        }
        // Creating the file later does not unpoison it: an earlier commit's
        // pages may be gone.
        std::fs::write(dir.path().join("missing-wal"), b"x").unwrap();
        assert!(matches!(
            wal.durable().await,
            Err(StoreError::Durability(_))
        ));
    }
}
