//! [`Retention`] on SQLite: batches on the writer, bounds and counts on a
//! reader, and `PRAGMA incremental_vacuum` to
//! give the freed pages back (databases are created with `auto_vacuum =
//! INCREMENTAL`; an older file is converted by `taskmaster prune`).

use super::*;
use crate::store::retention::{
    Cutoffs, DatabaseSize, PruneBounds, PruneCounts, Retention,
    sql::{self, Statement, Values},
};

fn execute(conn: &rusqlite::Connection, s: &Statement, v: &Values) -> Result<usize, StoreError> {
    let values = s.values(v);
    Ok(conn
        .prepare_cached(&s.sql)?
        .execute(rusqlite::params_from_iter(values))?)
}

fn query_i64(
    conn: &rusqlite::Connection,
    s: &Statement,
    v: &Values,
) -> Result<Option<i64>, StoreError> {
    use rusqlite::OptionalExtension as _;
    let values = s.values(v);
    Ok(conn
        .prepare_cached(&s.sql)?
        .query_row(rusqlite::params_from_iter(values), |r| r.get(0))
        .optional()?)
}

#[async_trait]
impl Retention for SqliteStore {
    async fn prune_batch(
        &self,
        cutoffs: &Cutoffs,
        bounds: &PruneBounds,
        limit: i64,
    ) -> Result<PruneCounts, StoreError> {
        let (cutoffs, bounds) = (*cutoffs, bounds.clone());
        let now = now_ms();
        // Committed unsynced, then synced by the log syncer: the writer is
        // not held through the fsync (intake's batches share it).
        self.write_grouped(move |conn| {
            let tx = conn.unchecked_transaction()?;
            let mut counts = PruneCounts::default();
            for kind in sql::kinds() {
                let Some(cutoff) = (kind.cutoff)(&cutoffs) else {
                    continue;
                };
                let v = Values {
                    cutoff,
                    limit,
                    now,
                    bound: bounds.of(kind.name),
                };
                let mut n = 0;
                for s in &kind.prune {
                    n = execute(&tx, s, &v)?;
                }
                sql::set(&mut counts, kind.name, n as u64);
            }
            tx.commit()?;
            Ok(counts)
        })
        .await
    }

    async fn prune_bounds(&self, cutoffs: &Cutoffs) -> Result<PruneBounds, StoreError> {
        let cutoffs = *cutoffs;
        self.read(move |conn| {
            let mut bounds = PruneBounds::default();
            for kind in sql::kinds() {
                let (Some(cutoff), Some(bound)) = ((kind.cutoff)(&cutoffs), &kind.bound) else {
                    continue;
                };
                let v = Values {
                    cutoff,
                    limit: 0,
                    now: 0,
                    bound: 0,
                };
                let id = query_i64(conn, bound, &v)?.unwrap_or(i64::MAX);
                bounds.0.insert(kind.name, id);
            }
            Ok(bounds)
        })
        .await
    }

    async fn prunable(&self, cutoffs: &Cutoffs) -> Result<PruneCounts, StoreError> {
        let bounds = self.prune_bounds(cutoffs).await?;
        let cutoffs = *cutoffs;
        self.read(move |conn| {
            let mut counts = PruneCounts::default();
            for kind in sql::kinds() {
                let Some(cutoff) = (kind.cutoff)(&cutoffs) else {
                    continue;
                };
                let v = Values {
                    cutoff,
                    limit: 0,
                    now: 0,
                    bound: bounds.of(kind.name),
                };
                let n = query_i64(conn, &kind.count, &v)?.unwrap_or(0);
                sql::set(&mut counts, kind.name, n as u64);
            }
            Ok(counts)
        })
        .await
    }

    async fn reclaim_space(&self, max_pages: i64) -> Result<u64, StoreError> {
        self.write(move |conn| {
            let mode: i64 = conn.query_row("PRAGMA auto_vacuum", [], |r| r.get(0))?;
            if mode != 2 {
                return Ok(0);
            }
            let page_size: i64 = conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
            let free = |conn: &rusqlite::Connection| -> Result<i64, StoreError> {
                Ok(conn.query_row("PRAGMA freelist_count", [], |r| r.get(0))?)
            };
            let before = free(conn)?;
            if before == 0 {
                return Ok(0);
            }
            // `incremental_vacuum` answers one row per page it frees: step
            // through them all, or it stops after the first.
            let mut stmt =
                conn.prepare(&format!("PRAGMA incremental_vacuum({})", max_pages.max(1)))?;
            let mut rows = stmt.query([])?;
            while rows.next()?.is_some() {}
            let after = free(conn)?;
            Ok(((before - after).max(0) * page_size) as u64)
        })
        .await
    }

    async fn database_size(&self) -> Result<DatabaseSize, StoreError> {
        self.read(|conn| {
            let pragma = |name: &str| -> Result<i64, StoreError> {
                Ok(conn.query_row(&format!("PRAGMA {name}"), [], |r| r.get(0))?)
            };
            let page = pragma("page_size")?;
            Ok(DatabaseSize {
                bytes: (pragma("page_count")? * page) as u64,
                free_bytes: (pragma("freelist_count")? * page) as u64,
            })
        })
        .await
    }

    async fn enable_reclaiming(&self) -> Result<bool, StoreError> {
        self.write(|conn| {
            let mode: i64 = conn.query_row("PRAGMA auto_vacuum", [], |r| r.get(0))?;
            if mode == 2 {
                return Ok(false);
            }
            conn.execute_batch("PRAGMA auto_vacuum = INCREMENTAL; VACUUM;")?;
            Ok(true)
        })
        .await
    }
}
