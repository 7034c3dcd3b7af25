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

use crate::store::{
    Delivery, DeliveryResult, InstallationId, Store, StoreError, WakeTopic, now_ms,
};

/// Deliveries claimed per round.
const CLAIM_BATCH: usize = 64;
/// Lease on a claimed delivery; a dispatcher that dies is replaced after
/// this (one that lives renews it every third of it while it handles).
const LEASE: Duration = Duration::from_secs(120);
/// A batch handled within this is recorded in one transaction.
const COALESCE: Duration = Duration::from_millis(500);
/// One delivery's handling at most (its GitHub calls included: a handler
/// never waits minutes for a rate limit's reset); then it is retried later.
pub const HANDLE_DEADLINE: Duration = Duration::from_secs(60);
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
    lease: Duration,
    deadline: Duration,
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
            lease: LEASE,
            deadline: HANDLE_DEADLINE,
        }
    }

    /// With another delivery lease and handling deadline (tests).
    pub fn with_timings(mut self, lease: Duration, deadline: Duration) -> Self {
        self.lease = lease;
        self.deadline = deadline;
        self
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
    ///
    /// Installations are handled side by side, each installation's
    /// deliveries in order (so one installation's slow GitHub never holds up
    /// another's); the batch's leases are renewed while it is handled.
    ///
    /// Each installation's deliveries are handled on a task of their own,
    /// not as futures this loop polls: the loop awaits store writes (the
    /// coalesced record, the lease renewal), and a handler future left
    /// unpolled meanwhile could hold the store's writer queue (a handler
    /// writes too: the task record, the repository configuration), which
    /// deadlocked the dispatcher, the engine and the outbox while intake
    /// went on (found by the PR storm at 500 deliveries/s, one installation
    /// per pull request).
    async fn round(&self, cancel: &CancellationToken) -> Result<usize, StoreError> {
        let claimed = self
            .store
            .claim_deliveries(&self.owner, CLAIM_BATCH, self.lease)
            .await?;
        let count = claimed.len();
        let mut groups: Vec<(Option<InstallationId>, Vec<Delivery>)> = Vec::new();
        for d in claimed {
            match groups.iter_mut().find(|(i, _)| *i == d.installation_id) {
                Some((_, list)) => list.push(d),
                None => groups.push((d.installation_id, vec![d])),
            }
        }
        // Installations side by side; the batch is recorded in one
        // transaction when it is handled within `COALESCE` (the usual
        // case: one fsync on SQLite), else what is done is recorded then
        // and each slower installation's when it ends.
        let mut handling = tokio::task::JoinSet::new();
        for (_, deliveries) in groups {
            handling.spawn(handle_in_order(
                self.handler.clone(),
                self.deadline,
                deliveries,
                cancel.clone(),
            ));
        }
        let coalesce = tokio::time::sleep(COALESCE);
        tokio::pin!(coalesce);
        let mut coalescing = true;
        let mut done: Vec<(i64, DeliveryResult)> = Vec::new();
        let mut renew =
            tokio::time::interval_at(tokio::time::Instant::now() + self.lease / 3, self.lease / 3);
        loop {
            tokio::select! {
                next = handling.join_next() => match next {
                    Some(Ok(results)) => {
                        done.extend(results);
                        if !coalescing {
                            self.record(&mut done).await?;
                        }
                    }
                    // A handler panicked: its deliveries stay claimed until
                    // their lease runs out, then are handled again.
                    Some(Err(e)) => {
                        tracing::error!(error = %e, "a delivery handler failed");
                    }
                    None => break,
                },
                _ = &mut coalesce, if coalescing => {
                    coalescing = false;
                    self.record(&mut done).await?;
                }
                _ = renew.tick() => {
                    if let Err(e) = self.store.renew_delivery_leases(&self.owner, self.lease).await {
                        tracing::warn!(error = %e, "could not renew the deliveries' leases");
                    }
                }
            }
        }
        self.record(&mut done).await?;
        Ok(count)
    }

    /// Records how `done` deliveries ended (and empties it).
    async fn record(&self, done: &mut Vec<(i64, DeliveryResult)>) -> Result<(), StoreError> {
        if done.is_empty() {
            return Ok(());
        }
        let results = std::mem::take(done);
        self.store.finish_deliveries(&self.owner, &results).await?;
        self.handler.committed().await;
        Ok(())
    }
}

/// Handles one installation's deliveries, oldest first, each within
/// `deadline`; stops early when `cancel` fires (the rest are released on
/// the way out).
async fn handle_in_order(
    handler: Arc<dyn DeliveryHandler>,
    deadline: Duration,
    deliveries: Vec<Delivery>,
    cancel: CancellationToken,
) -> Vec<(i64, DeliveryResult)> {
    let mut results = Vec::with_capacity(deliveries.len());
    for delivery in &deliveries {
        if cancel.is_cancelled() {
            break;
        }
        let handled = match tokio::time::timeout(deadline, handler.handle(delivery)).await {
            Ok(handled) => handled,
            Err(_) => Err(HandlerError::Transient(format!(
                "handling took longer than {} s",
                deadline.as_secs_f64()
            ))),
        };
        let result = match handled {
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
    results
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
