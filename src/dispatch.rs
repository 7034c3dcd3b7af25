//! The dispatcher: takes queued deliveries out of the inbox and hands each to
//! a [`DeliveryHandler`].
//!
//! Intake only stores; this task does the work, so a slow handler can never
//! make GitHub's 10-second webhook deadline. A delivery is *claimed* (state
//! `processing`, under a lease owned by this dispatcher) before it is handled
//! and *finished* afterwards (`done`, `ignored`, `failed`, or back to `queued`
//! with a backoff for a transient failure), and the finish is fenced by the
//! owner so a dispatcher that lost its lease cannot overwrite another's result.
//!
//! Wake-ups come from the inbox writer after each commit (an in-process
//! `Notify`) and, with several replicas on PostgreSQL, from the other
//! replicas' commits (`LISTEN/NOTIFY`, see [`Store::remote_wakeups`]), with a
//! slow poll as the fallback, so a hint lost in a race only costs one poll
//! interval. Replicas claim with `FOR UPDATE SKIP LOCKED`, so they never
//! handle the same delivery at once.
//!
//! At start-up, [`Store::recover_deliveries`] takes back what a crash left
//! `processing` (on a shared database, only claims whose lease expired); on
//! graceful shutdown the dispatcher releases what it claimed
//! but did not finish.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::store::{Delivery, DeliveryResult, Store, StoreError, WakeTopic, now_ms};

/// Deliveries claimed per round.
const CLAIM_BATCH: usize = 64;
/// Lease on a claimed delivery; a dispatcher that dies is replaced after this.
const LEASE: Duration = Duration::from_secs(120);
/// Poll interval when no wake-up arrives.
const POLL: Duration = Duration::from_secs(1);
/// A transient failure is retried this many times (claims) before `failed`.
pub const MAX_ATTEMPTS: i64 = 5;

/// What a handler decided about one delivery.
#[derive(Debug, Clone, PartialEq)]
pub enum Handled {
    /// Acted on.
    Done,
    /// Start these runs. The dispatcher creates them in the same transaction
    /// that marks the delivery `done`, so a crash can never leave a delivery
    /// handled without its runs, or runs without a handled delivery.
    Start(Vec<crate::store::NewRun>),
    /// Nothing to do; the reason is stored with the delivery.
    Ignored(String),
}

/// A handler failure.
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// Worth another try later (database busy, a dependency down).
    #[error("transient: {0}")]
    Transient(String),
    /// Will fail the same way every time (a payload we cannot understand).
    #[error("permanent: {0}")]
    Permanent(String),
}

impl From<StoreError> for HandlerError {
    fn from(e: StoreError) -> Self {
        HandlerError::Transient(e.to_string())
    }
}

/// What the dispatcher calls for each delivery. Routing and commands fill it;
/// a handler must be idempotent per delivery id, because a crash between its
/// effects and the finish makes the delivery run again.
#[async_trait]
pub trait DeliveryHandler: Send + Sync + 'static {
    /// Decides what to do with one delivery.
    async fn handle(&self, delivery: &Delivery) -> Result<Handled, HandlerError>;

    /// Called after a batch of results (and the runs they start) committed;
    /// a hint to wake whoever acts on them (the engine's scheduler).
    async fn committed(&self) {}
}

/// A handler that accepts every delivery and does nothing with it, for a
/// service with no workflows configured yet (and for intake tests).
pub struct AcceptAll;

#[async_trait]
impl DeliveryHandler for AcceptAll {
    async fn handle(&self, delivery: &Delivery) -> Result<Handled, HandlerError> {
        tracing::info!(delivery = %delivery.delivery_id, event = %delivery.event,
            action = delivery.action.as_deref().unwrap_or(""), "delivery accepted");
        Ok(Handled::Done)
    }
}

/// The dispatcher task's configuration and collaborators.
pub struct Dispatcher {
    store: Arc<dyn Store>,
    handler: Arc<dyn DeliveryHandler>,
    wake: Arc<Notify>,
    owner: String,
}

impl Dispatcher {
    /// `wake` is the notifier the inbox writer signals after each commit.
    pub fn new(
        store: Arc<dyn Store>,
        handler: Arc<dyn DeliveryHandler>,
        wake: Arc<Notify>,
    ) -> Self {
        let owner = format!("dispatcher-{}", uuid::Uuid::new_v4());
        Dispatcher {
            store,
            handler,
            wake,
            owner,
        }
    }

    /// Runs until `cancel` fires, then releases unfinished claims and returns.
    pub async fn run(self, cancel: CancellationToken) {
        // Deliveries another replica stored (PostgreSQL `NOTIFY`).
        let mut remote = self.store.remote_wakeups(WakeTopic::Deliveries);
        loop {
            if cancel.is_cancelled() {
                break;
            }
            match self.round(&cancel).await {
                Ok(0) => {
                    let hint = async {
                        match remote.as_mut() {
                            Some(rx) => !matches!(
                                rx.recv().await,
                                Err(tokio::sync::broadcast::error::RecvError::Closed)
                            ),
                            None => std::future::pending().await,
                        }
                    };
                    tokio::select! {
                        _ = self.wake.notified() => {}
                        open = hint => if !open { remote = None },
                        _ = tokio::time::sleep(POLL) => {}
                        _ = cancel.cancelled() => break,
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::error!(error = %e, "dispatcher round failed; retrying shortly");
                    tokio::select! {
                        _ = tokio::time::sleep(POLL) => {}
                        _ = cancel.cancelled() => break,
                    }
                }
            }
        }
        match self.store.release_deliveries(&self.owner).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(released = n, "released unfinished deliveries"),
            Err(e) => tracing::warn!(error = %e, "could not release claimed deliveries"),
        }
    }

    /// Claims one batch and handles it; returns how many were claimed.
    async fn round(&self, cancel: &CancellationToken) -> Result<usize, StoreError> {
        let claimed = self
            .store
            .claim_deliveries(&self.owner, CLAIM_BATCH, LEASE)
            .await?;
        let count = claimed.len();
        let mut results = Vec::with_capacity(count);
        for delivery in &claimed {
            if cancel.is_cancelled() {
                break; // the rest are released on the way out
            }
            let result = match self.handler.handle(delivery).await {
                Ok(Handled::Done) => DeliveryResult::Done,
                Ok(Handled::Start(runs)) => DeliveryResult::Started(runs),
                Ok(Handled::Ignored(why)) => DeliveryResult::Ignored(why),
                Err(HandlerError::Transient(e)) if delivery.attempts < MAX_ATTEMPTS => {
                    let retry_at = now_ms() + backoff_ms(delivery.attempts);
                    tracing::warn!(delivery = %delivery.delivery_id, error = %e,
                        attempt = delivery.attempts, "delivery will be retried");
                    DeliveryResult::Retry { error: e, retry_at }
                }
                Err(e) => {
                    tracing::error!(delivery = %delivery.delivery_id, error = %e,
                        "delivery failed");
                    DeliveryResult::Failed(e.to_string())
                }
            };
            results.push((delivery.id, result));
            // Handling a delivery is mostly CPU (decompress, parse, route)
            // and may not await anything: let the webhook requests queued on
            // this thread run between deliveries, or a round of 64 would hold
            // them for milliseconds.
            tokio::task::yield_now().await;
        }
        self.store.finish_deliveries(&self.owner, &results).await?;
        if !results.is_empty() {
            self.handler.committed().await;
        }
        Ok(count)
    }
}

/// Backoff before retry `attempt` (1-based): 1 s, 2 s, 4 s, … capped at 60 s.
fn backoff_ms(attempt: i64) -> i64 {
    let exp = attempt.clamp(1, 7) - 1;
    (1000i64 << exp).min(60_000)
}

#[cfg(test)]
mod tests {
    use super::backoff_ms;

    #[test]
    fn backoff_doubles_and_caps() {
        assert_eq!(backoff_ms(1), 1000);
        assert_eq!(backoff_ms(2), 2000);
        assert_eq!(backoff_ms(3), 4000);
        assert_eq!(backoff_ms(7), 60_000);
        assert_eq!(backoff_ms(50), 60_000);
    }
}
