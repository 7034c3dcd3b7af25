//! The database behind taskmaster, as one small trait.
//!
//! Every arrow after intake goes through the database (see `DESIGN.md`), so the
//! `Store` trait is where durability is decided. The trait speaks in the field's
//! words (delivery, claim, lease); SQL dialects stay inside the implementations:
//! `sqlite.rs` today, `postgres.rs` when several replicas share one database.
//!
//! Times crossing this interface are Unix epoch **milliseconds** (`i64`).

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;

pub mod sqlite;

pub use sqlite::SqliteStore;

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
    pub installation_id: Option<i64>,
    /// `owner/name`.
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
                let raw = zstd::bulk::decompress(&self.bytes, self.raw_len).map_err(|e| {
                    StoreError::Corrupt {
                        table: "delivery_payloads",
                        detail: format!("zstd payload does not decode: {e}"),
                    }
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
    pub installation_id: Option<i64>,
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
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliveryResult {
    /// Handled; state `done`.
    Done,
    /// Nothing to do for it; state `ignored`, with the reason in `error`.
    Ignored(String),
    /// Try again at `retry_at` (epoch ms); state back to `queued`.
    Retry { error: String, retry_at: i64 },
    /// Given up; state `failed`.
    Failed(String),
}

/// Counts of deliveries still to be handled.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct InboxDepth {
    pub queued: i64,
    pub processing: i64,
}

/// Errors from the database. The message says what failed; the source is kept.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("unsupported database URL `{url}`: {hint}")]
    UnsupportedUrl { url: String, hint: &'static str },
    #[error("corrupt row in `{table}`: {detail}")]
    Corrupt { table: &'static str, detail: String },
}

/// The persistence interface. Implementations must be safe to share across tasks.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Applies the embedded migrations (idempotent).
    async fn migrate(&self) -> Result<(), StoreError>;

    /// Cheap liveness check of the database connection.
    async fn ping(&self) -> Result<(), StoreError>;

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

    /// One delivery by its `X-GitHub-Delivery` id.
    async fn delivery(&self, delivery_id: &str) -> Result<Option<Delivery>, StoreError>;

    /// How many deliveries are queued and in processing.
    async fn inbox_depth(&self) -> Result<InboxDepth, StoreError>;
}

/// Opens the store named by `database_url` and applies migrations.
///
/// `sqlite://path`, `sqlite:path` or a bare path select SQLite (the file is
/// created if absent). Errors: [`StoreError::UnsupportedUrl`] for other schemes.
pub async fn connect(database_url: &str) -> Result<Arc<dyn Store>, StoreError> {
    if database_url.starts_with("postgres://") || database_url.starts_with("postgresql://") {
        return Err(StoreError::UnsupportedUrl {
            url: redact_url(database_url),
            hint: "this build supports SQLite only (PostgreSQL support is planned); \
                   use DATABASE_URL=sqlite://taskmaster.db",
        });
    }
    let store = SqliteStore::open(database_url).await?;
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

/// The current time as Unix epoch milliseconds.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
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
