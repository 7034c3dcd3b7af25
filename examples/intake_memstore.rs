//! Diagnostic: the full intake path (HTTP, signature, envelope parse, zstd,
//! inbox writer) over a store that keeps nothing and answers at once. The gap
//! between this and `benches/intake.sh`'s SQLite figure is the database's share.
//!
//! With `DATABASE_URL` set, the same server over the real store instead, with
//! no dispatcher: durable intake alone, so that the storm benchmark can split
//! what storage costs from what turning deliveries into runs costs.
//!
//! With `JOURNAL=path` as well, the design issue #23 asked to measure: an
//! **append-only intake journal** in front of the database. A batch is
//! answered once it is appended to the journal and the journal is synced
//! (one `fdatasync` per group of batches, on a thread of its own); a mover
//! then commits the batches into the database, whose own sync no longer holds
//! up an answer. It is an experiment, not a design the service uses: it
//! knows duplicates only from memory, never truncates the journal and does
//! not replay it at start-up. Those would only add cost, so its figures are
//! an upper bound for the design.
//!
//! Usage: `GITHUB_WEBHOOK_SECRET=… PORT=3997 [DATABASE_URL=sqlite://… [JOURNAL=path]] cargo run --release --example intake_memstore`

use std::collections::HashSet;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use taskmaster::dispatch::AcceptAll;
use taskmaster::server::{self, ServerConfig};
use taskmaster::store::{
    Delivery, DeliveryResult, Durable, InboxDepth, InsertOutcome, NewDelivery, Store, StoreError,
};
use taskmaster::webhook::WebhookSecrets;

struct NullStore;

#[async_trait]
impl Store for NullStore {
    async fn migrate(&self) -> Result<(), StoreError> {
        Ok(())
    }
    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }
    async fn insert_deliveries(&self, b: &[NewDelivery]) -> Result<Vec<InsertOutcome>, StoreError> {
        Ok(vec![InsertOutcome::Stored; b.len()])
    }
    async fn claim_deliveries(
        &self,
        _: &str,
        _: usize,
        _: Duration,
    ) -> Result<Vec<Delivery>, StoreError> {
        Ok(Vec::new())
    }
    async fn finish_deliveries(
        &self,
        _: &str,
        _: &[(i64, DeliveryResult)],
    ) -> Result<u64, StoreError> {
        Ok(0)
    }
    async fn recover_deliveries(&self) -> Result<u64, StoreError> {
        Ok(0)
    }
    async fn release_deliveries(&self, _: &str) -> Result<u64, StoreError> {
        Ok(0)
    }
    async fn delivery(&self, _: &str) -> Result<Option<Delivery>, StoreError> {
        Ok(None)
    }
    async fn inbox_depth(&self) -> Result<InboxDepth, StoreError> {
        Ok(InboxDepth::default())
    }
}

/// A group of batches for the journal's thread: their encoded records, and
/// who waits for the sync.
struct Append {
    bytes: Vec<u8>,
    batch: Vec<NewDelivery>,
    synced: tokio::sync::oneshot::Sender<Result<(), String>>,
}

/// The journal in front of `inner` (see the module's docs).
struct JournalStore {
    inner: Arc<dyn Store>,
    appends: std::sync::mpsc::Sender<Append>,
    /// Delivery ids answered so far (the experiment's duplicate check).
    seen: Mutex<HashSet<String>>,
}

impl JournalStore {
    fn open(inner: Arc<dyn Store>, path: &str) -> JournalStore {
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .expect("open the journal");
        let (appends, queue) = std::sync::mpsc::channel::<Append>();
        let (moves, mut moving) = tokio::sync::mpsc::unbounded_channel::<Vec<NewDelivery>>();
        // The journal's thread: append what is queued, sync once, answer,
        // hand the batches to the mover.
        std::thread::Builder::new()
            .name("intake-journal".into())
            .spawn(move || {
                while let Ok(first) = queue.recv() {
                    let mut group = vec![first];
                    group.extend(queue.try_iter());
                    let written = group
                        .iter()
                        .try_for_each(|a| file.write_all(&a.bytes))
                        .and_then(|()| file.sync_data())
                        .map_err(|e| e.to_string());
                    let mut moved = Vec::new();
                    for a in group {
                        moved.extend(a.batch);
                        let _ = a.synced.send(written.clone());
                    }
                    if written.is_ok() && moves.send(moved).is_err() {
                        return;
                    }
                }
            })
            .expect("start the journal's thread");
        // The mover: batches into the database, as large as it finds them.
        // The database's own sync is not waited for (the journal holds them).
        // `JOURNAL_SKIP_MOVE=1` drops them instead: what the journal alone
        // costs, the bound of any design that takes the database's insert
        // off these cores (nothing reaches the database then).
        let mover = inner.clone();
        let skip = std::env::var("JOURNAL_SKIP_MOVE").is_ok_and(|v| v == "1");
        tokio::spawn(async move {
            while let Some(mut batch) = moving.recv().await {
                if skip {
                    continue;
                }
                while batch.len() < 512 {
                    match moving.try_recv() {
                        Ok(more) => batch.extend(more),
                        Err(_) => break,
                    }
                }
                if let Err(e) = mover.stage_deliveries(&batch).await {
                    eprintln!("journal mover: {e}");
                }
            }
        });
        JournalStore {
            inner,
            appends,
            seen: Mutex::new(HashSet::new()),
        }
    }
}

/// One delivery as a journal record: each field length-prefixed.
fn encode(d: &NewDelivery, out: &mut Vec<u8>) {
    let mut field = |bytes: &[u8]| {
        out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
        out.extend_from_slice(bytes);
    };
    field(d.delivery_id.as_bytes());
    field(d.event.as_bytes());
    field(d.action.as_deref().unwrap_or("").as_bytes());
    field(&d.hook_id.unwrap_or(0).to_le_bytes());
    field(&d.installation_id.map_or(0, |i| i.0).to_le_bytes());
    field(d.repository.as_deref().unwrap_or("").as_bytes());
    field(&d.sender_id.unwrap_or(0).to_le_bytes());
    field(d.sender_login.as_deref().unwrap_or("").as_bytes());
    field(d.payload.encoding.as_str().as_bytes());
    field(&(d.payload.raw_len as u64).to_le_bytes());
    field(&d.payload.bytes);
    field(&d.received_at.to_le_bytes());
    field(d.state.as_str().as_bytes());
}

#[async_trait]
impl Store for JournalStore {
    async fn migrate(&self) -> Result<(), StoreError> {
        self.inner.migrate().await
    }
    async fn ping(&self) -> Result<(), StoreError> {
        self.inner.ping().await
    }
    async fn stage_deliveries(
        &self,
        batch: &[NewDelivery],
    ) -> Result<(Vec<InsertOutcome>, Durable), StoreError> {
        let mut outcomes = Vec::with_capacity(batch.len());
        let mut kept = Vec::with_capacity(batch.len());
        {
            let mut seen = self.seen.lock().unwrap();
            for d in batch {
                if seen.insert(d.delivery_id.clone()) {
                    outcomes.push(InsertOutcome::Stored);
                    kept.push(d.clone());
                } else {
                    outcomes.push(InsertOutcome::Duplicate);
                }
            }
        }
        let mut bytes = Vec::new();
        for d in &kept {
            encode(d, &mut bytes);
        }
        let (synced, wait) = tokio::sync::oneshot::channel();
        self.appends
            .send(Append {
                bytes,
                batch: kept,
                synced,
            })
            .map_err(|_| StoreError::Durability("the journal's thread stopped".into()))?;
        let durable: Durable = Box::pin(async move {
            match wait.await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(StoreError::Durability(e)),
                Err(_) => Err(StoreError::Durability(
                    "the journal's thread stopped".into(),
                )),
            }
        });
        Ok((outcomes, durable))
    }
    async fn insert_deliveries(&self, b: &[NewDelivery]) -> Result<Vec<InsertOutcome>, StoreError> {
        let (outcomes, durable) = self.stage_deliveries(b).await?;
        durable.await?;
        Ok(outcomes)
    }
    async fn claim_deliveries(
        &self,
        owner: &str,
        limit: usize,
        lease: Duration,
    ) -> Result<Vec<Delivery>, StoreError> {
        self.inner.claim_deliveries(owner, limit, lease).await
    }
    async fn finish_deliveries(
        &self,
        owner: &str,
        results: &[(i64, DeliveryResult)],
    ) -> Result<u64, StoreError> {
        self.inner.finish_deliveries(owner, results).await
    }
    async fn recover_deliveries(&self) -> Result<u64, StoreError> {
        self.inner.recover_deliveries().await
    }
    async fn release_deliveries(&self, owner: &str) -> Result<u64, StoreError> {
        self.inner.release_deliveries(owner).await
    }
    async fn delivery(&self, id: &str) -> Result<Option<Delivery>, StoreError> {
        self.inner.delivery(id).await
    }
    async fn inbox_depth(&self) -> Result<InboxDepth, StoreError> {
        self.inner.inbox_depth().await
    }
}

#[tokio::main]
async fn main() {
    let secret = std::env::var("GITHUB_WEBHOOK_SECRET").expect("set GITHUB_WEBHOOK_SECRET");
    let port: u16 = std::env::var("PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(3997);
    let store: Arc<dyn Store> = match std::env::var("DATABASE_URL") {
        Ok(url) => {
            let store = taskmaster::store::connect(&url).await.unwrap();
            store.migrate().await.unwrap();
            match std::env::var("JOURNAL") {
                Ok(path) => Arc::new(JournalStore::open(store, &path)),
                Err(_) => store,
            }
        }
        Err(_) => Arc::new(NullStore),
    };
    let running = server::start(ServerConfig {
        addr: ([127, 0, 0, 1], port).into(),
        secrets: WebhookSecrets::parse(&secret).unwrap(),
        store,
        handler: Arc::new(AcceptAll),
        limits: Default::default(),
    })
    .await
    .unwrap();
    running.wait().await.unwrap();
}
