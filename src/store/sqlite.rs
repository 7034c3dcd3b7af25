//! SQLite implementation of [`Store`]: the default, one file on one machine.
//!
//! Durability settings: WAL journal, `synchronous=FULL` (every commit is
//! fsynced, so an answered delivery survives power loss, not just a crash), a
//! busy timeout, foreign keys on.
//!
//! Two pools share the file. All writes go through a **single writer
//! connection**: SQLite allows one writer at a time anyway, and funnelling writes
//! through one connection turns lock contention (`SQLITE_BUSY`, retries) into an
//! orderly queue in front of the pool. Readers use their own connections, which
//! WAL lets run beside the writer. Write transactions start with
//! `BEGIN IMMEDIATE` so that even another process (say `taskmaster migrate`)
//! cannot make a read transaction fail on upgrade.
//!
//! This store assumes **one taskmaster process per database file**: start-up
//! recovery returns every `processing` delivery to the queue. Several replicas
//! need the PostgreSQL store.

use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use sqlx::QueryBuilder;
use sqlx::sqlite::{
    Sqlite, SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteSynchronous,
};

use super::{
    Delivery, DeliveryResult, DeliveryState, EncodedPayload, InboxDepth, InsertOutcome,
    NewDelivery, PayloadEncoding, Store, StoreError, now_ms,
};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// Rows per multi-row INSERT: 11 bound values each, far below SQLite's limit
/// of 32,766 variables per statement.
const INSERT_CHUNK: usize = 512;

/// How long a writer waits for SQLite's lock held by another process.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// The SQLite store. Cheap to clone (pools are reference counted).
#[derive(Clone, Debug)]
pub struct SqliteStore {
    writer: SqlitePool,
    reader: SqlitePool,
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
        let options = SqliteConnectOptions::from_str(&url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(BUSY_TIMEOUT)
            .foreign_keys(true);
        // No ping before each acquire: the writer connection is ours alone and
        // a dead one fails its next statement anyway; the ping would cost a
        // round trip to sqlx's worker thread on every transaction.
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .test_before_acquire(false)
            .connect_with(options.clone())
            .await?;
        let reader = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_lazy_with(options.read_only(true));
        Ok(SqliteStore { writer, reader })
    }

    /// The writer pool, for tests and tools that need raw SQL.
    pub fn writer_pool(&self) -> &SqlitePool {
        &self.writer
    }
}

#[derive(sqlx::FromRow)]
struct DeliveryRow {
    id: i64,
    delivery_id: String,
    event: String,
    action: Option<String>,
    hook_id: Option<i64>,
    installation_id: Option<i64>,
    repository: Option<String>,
    sender_id: Option<i64>,
    sender_login: Option<String>,
    encoding: String,
    size: i64,
    payload: Vec<u8>,
    received_at: i64,
    state: String,
    attempts: i64,
    error: Option<String>,
}

impl TryFrom<DeliveryRow> for Delivery {
    type Error = StoreError;

    fn try_from(row: DeliveryRow) -> Result<Self, StoreError> {
        let state = DeliveryState::parse(&row.state).ok_or_else(|| StoreError::Corrupt {
            table: "deliveries",
            detail: format!("unknown state `{}`", row.state),
        })?;
        let encoding =
            PayloadEncoding::parse(&row.encoding).ok_or_else(|| StoreError::Corrupt {
                table: "delivery_payloads",
                detail: format!("unknown encoding `{}`", row.encoding),
            })?;
        let payload = EncodedPayload {
            encoding,
            raw_len: usize::try_from(row.size).unwrap_or(0),
            bytes: Bytes::from(row.payload),
        }
        .decode()?;
        Ok(Delivery {
            id: row.id,
            delivery_id: row.delivery_id,
            event: row.event,
            action: row.action,
            hook_id: row.hook_id,
            installation_id: row.installation_id,
            repository: row.repository,
            sender_id: row.sender_id,
            sender_login: row.sender_login,
            payload,
            received_at: row.received_at,
            state,
            attempts: row.attempts,
            error: row.error,
        })
    }
}

/// Selects [`DeliveryRow`]s: the delivery joined with its payload. A literal,
/// so queries stay `&'static str` (sqlx 0.9 refuses dynamic SQL strings).
macro_rules! select_deliveries {
    () => {
        "SELECT d.id, d.delivery_id, d.event, d.action, d.hook_id, d.installation_id, \
         d.repository, d.sender_id, d.sender_login, p.encoding, p.size, p.payload, d.received_at, d.state, \
         d.attempts, d.error \
         FROM deliveries d JOIN delivery_payloads p ON p.id = d.id "
    };
}

#[async_trait]
impl Store for SqliteStore {
    async fn migrate(&self) -> Result<(), StoreError> {
        MIGRATOR.run(&self.writer).await?;
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
        // Two multi-row statements per chunk instead of two statements per
        // row: every statement is a round trip to sqlx's SQLite worker thread,
        // and under load those round trips, not SQLite, set the pace.
        let mut outcomes = vec![InsertOutcome::Duplicate; batch.len()];
        // A delivery id repeated within the batch: only its first occurrence
        // is inserted; the rest are duplicates of it.
        let mut seen = HashSet::with_capacity(batch.len());
        let unique: Vec<usize> = (0..batch.len())
            .filter(|&i| seen.insert(batch[i].delivery_id.as_str()))
            .collect();
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
        for chunk in unique.chunks(INSERT_CHUNK) {
            let mut insert = QueryBuilder::<Sqlite>::new(
                "INSERT INTO deliveries (delivery_id, event, action, hook_id, installation_id, \
                 repository, sender_id, sender_login, received_at, state, available_at) ",
            );
            insert.push_values(chunk, |mut row, &i| {
                let d = &batch[i];
                row.push_bind(d.delivery_id.as_str())
                    .push_bind(d.event.as_str())
                    .push_bind(d.action.as_deref())
                    .push_bind(d.hook_id)
                    .push_bind(d.installation_id)
                    .push_bind(d.repository.as_deref())
                    .push_bind(d.sender_id)
                    .push_bind(d.sender_login.as_deref())
                    .push_bind(d.received_at)
                    .push_bind(d.state.as_str())
                    .push_bind(d.received_at);
            });
            insert.push(" ON CONFLICT (delivery_id) DO NOTHING RETURNING id, delivery_id");
            let inserted: Vec<(i64, String)> = insert.build_query_as().fetch_all(&mut *tx).await?;
            if inserted.is_empty() {
                continue;
            }
            let ids: HashMap<&str, i64> =
                inserted.iter().map(|(id, d)| (d.as_str(), *id)).collect();
            let mut payloads = QueryBuilder::<Sqlite>::new(
                "INSERT INTO delivery_payloads (id, encoding, size, payload) ",
            );
            let stored: Vec<(usize, i64)> = chunk
                .iter()
                .filter_map(|&i| ids.get(batch[i].delivery_id.as_str()).map(|&id| (i, id)))
                .collect();
            payloads.push_values(&stored, |mut row, &(i, id)| {
                let p = &batch[i].payload;
                row.push_bind(id)
                    .push_bind(p.encoding.as_str())
                    .push_bind(p.raw_len as i64)
                    .push_bind(&p.bytes[..]);
            });
            payloads.build().execute(&mut *tx).await?;
            for (i, _) in stored {
                outcomes[i] = InsertOutcome::Stored;
            }
        }
        tx.commit().await?;
        Ok(outcomes)
    }

    async fn claim_deliveries(
        &self,
        owner: &str,
        limit: usize,
        lease: Duration,
    ) -> Result<Vec<Delivery>, StoreError> {
        let now = now_ms();
        let expires = now + lease.as_millis() as i64;
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
        let ids: Vec<(i64,)> = sqlx::query_as(
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
        )
        .bind(owner)
        .bind(expires)
        .bind(now)
        .bind(limit as i64)
        .fetch_all(&mut *tx)
        .await?;
        if ids.is_empty() {
            tx.commit().await?;
            return Ok(Vec::new());
        }
        let id_list = serde_json::to_string(&ids.iter().map(|(id,)| id).collect::<Vec<_>>())
            .expect("integers serialize");
        let rows: Vec<DeliveryRow> = sqlx::query_as(concat!(
            select_deliveries!(),
            "WHERE d.id IN (SELECT value FROM json_each(?1)) ORDER BY d.id"
        ))
        .bind(id_list)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
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
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
        let mut changed = 0;
        for (id, result) in results {
            let (state, error, available_at, finished_at) = match result {
                DeliveryResult::Done => ("done", None, now, Some(now)),
                DeliveryResult::Ignored(why) => ("ignored", Some(why.as_str()), now, Some(now)),
                DeliveryResult::Retry { error, retry_at } => {
                    ("queued", Some(error.as_str()), *retry_at, None)
                }
                DeliveryResult::Failed(error) => ("failed", Some(error.as_str()), now, Some(now)),
            };
            changed += sqlx::query(
                "UPDATE deliveries SET state = ?1, error = ?2, available_at = ?3, \
                 finished_at = ?4, claimed_by = NULL, lease_expires_at = NULL \
                 WHERE id = ?5 AND state = 'processing' AND claimed_by = ?6",
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
        }
        tx.commit().await?;
        Ok(changed)
    }

    async fn recover_deliveries(&self) -> Result<u64, StoreError> {
        let result = sqlx::query(
            "UPDATE deliveries SET state = 'queued', claimed_by = NULL, lease_expires_at = NULL \
             WHERE state = 'processing'",
        )
        .execute(&self.writer)
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
        .execute(&self.writer)
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
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT state, COUNT(*) FROM deliveries \
             WHERE state IN ('queued', 'processing') GROUP BY state",
        )
        .fetch_all(&self.reader)
        .await?;
        let mut depth = InboxDepth::default();
        for (state, n) in rows {
            match state.as_str() {
                "queued" => depth.queued = n,
                _ => depth.processing = n,
            }
        }
        Ok(depth)
    }
}
