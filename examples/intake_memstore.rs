//! Diagnostic: the full intake path (HTTP, signature, envelope parse, zstd,
//! inbox writer) over a store that keeps nothing and answers at once. The gap
//! between this and `benches/intake.sh`'s SQLite figure is the database's share.
//!
//! With `DATABASE_URL` set, the same server over the real store instead, with
//! no dispatcher: durable intake alone, so that the storm benchmark can split
//! what storage costs from what turning deliveries into runs costs.
//!
//! Usage: `GITHUB_WEBHOOK_SECRET=… PORT=3997 [DATABASE_URL=sqlite://…] cargo run --release --example intake_memstore`

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use taskmaster::dispatch::AcceptAll;
use taskmaster::server::{self, ServerConfig};
use taskmaster::store::{
    Delivery, DeliveryResult, InboxDepth, InsertOutcome, NewDelivery, Store, StoreError,
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
            store
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
