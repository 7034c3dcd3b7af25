//! The inbox writer: group commit for webhook deliveries.
//!
//! A delivery must be durable before GitHub gets its 2xx, and durability means
//! an fsync. One transaction and one fsync per request caps intake at the
//! disk's fsync rate, so requests hand their delivery to a single writer task
//! instead. The writer takes whatever has queued up while the previous commit
//! was in flight, inserts the whole batch in one transaction, commits (one
//! fsync), and only then answers each waiting request. Under light load a batch
//! is one delivery and the latency is one commit; under heavy load batches grow
//! and the fsync cost is shared — the way databases' own group commit works.
//!
//! The commit and the disk's sync are pipelined where the store can
//! ([`Store::stage_deliveries`]; SQLite syncs its log on a thread of its
//! own): the writer commits a batch, hands its answers to a task that waits
//! for the sync, and takes the next batch while the disk works. Nobody is
//! answered — not even "duplicate" — before the sync covering their batch.
//!
//! If a batch fails as a whole (say the disk is full), each delivery of it is
//! tried again in a transaction of its own so that one cannot sink the others;
//! a delivery whose insert still fails gets the error and its request answers
//! 503, which GitHub records as a failed delivery to be redelivered.

use std::sync::Arc;

use tokio::sync::{Notify, mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::store::{DeliveryState, InsertOutcome, NewDelivery, Store, StoreError};

/// The most deliveries committed in one transaction.
pub const MAX_BATCH: usize = 512;

/// How many times the writer yields to request tasks before committing.
const LINGER_YIELDS: usize = 2;

/// How many deliveries may wait for the writer before submitters wait too.
const QUEUE_CAPACITY: usize = 8192;

struct Pending {
    delivery: NewDelivery,
    reply: oneshot::Sender<Result<InsertOutcome, Arc<StoreError>>>,
}

/// Handle for submitting deliveries to the writer task. Cheap to clone; the
/// writer stops once every handle is dropped and the queue is drained.
#[derive(Clone)]
pub struct Inbox {
    tx: mpsc::Sender<Pending>,
}

/// Why a submission did not complete.
#[derive(Debug, thiserror::Error)]
pub enum InboxError {
    #[error("the inbox writer has stopped")]
    Closed,
    #[error(transparent)]
    Store(#[from] Arc<StoreError>),
}

impl Inbox {
    /// Starts the writer task. `wake` is notified after each commit that stored
    /// a `queued` delivery, so the dispatcher need not poll.
    pub fn start(store: Arc<dyn Store>, wake: Arc<Notify>) -> (Inbox, JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
        let writer = tokio::spawn(run_writer(store, rx, wake));
        (Inbox { tx }, writer)
    }

    /// Stores one delivery and returns once it is committed (`Stored`) or found
    /// to be a repeat (`Duplicate`).
    ///
    /// Errors: [`InboxError::Store`] when the database refused the write,
    /// [`InboxError::Closed`] during shutdown.
    pub async fn submit(&self, delivery: NewDelivery) -> Result<InsertOutcome, InboxError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Pending { delivery, reply })
            .await
            .map_err(|_| InboxError::Closed)?;
        Ok(answer.await.map_err(|_| InboxError::Closed)??)
    }
}

async fn run_writer(store: Arc<dyn Store>, mut rx: mpsc::Receiver<Pending>, wake: Arc<Notify>) {
    let mut batch: Vec<Pending> = Vec::with_capacity(MAX_BATCH);
    let mut rows: Vec<NewDelivery> = Vec::with_capacity(MAX_BATCH);
    loop {
        if rx.recv_many(&mut batch, MAX_BATCH).await == 0 {
            break; // every Inbox handle dropped and the queue is empty
        }
        // Let request tasks that are already running (verifying, compressing)
        // join this batch: a commit costs about the same for one delivery as
        // for dozens, so a slightly fuller batch is nearly free throughput.
        for _ in 0..LINGER_YIELDS {
            tokio::task::yield_now().await;
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(pending) => batch.push(pending),
                    Err(_) => break,
                }
            }
        }
        // Move the deliveries out (no copies on the hot path); the replies
        // stay in the same order, and go to whoever answers the batch.
        rows.clear();
        let mut replies = Vec::with_capacity(batch.len());
        for pending in batch.drain(..) {
            rows.push(pending.delivery);
            replies.push(pending.reply);
        }
        let started = std::time::Instant::now();
        let staged = store.stage_deliveries(&rows).await;
        tracing::debug!(
            batch = rows.len(),
            commit_us = started.elapsed().as_micros() as u64,
            "inbox batch committed"
        );
        match staged {
            Ok((outcomes, durable)) => {
                // Answer once the disk has the batch, without holding up
                // the next one: the writer goes back to the queue now.
                let queued_any = rows.iter().zip(&outcomes).any(|(delivery, outcome)| {
                    *outcome == InsertOutcome::Stored && delivery.state == DeliveryState::Queued
                });
                let wake = wake.clone();
                tokio::spawn(async move {
                    match durable.await {
                        Ok(()) => {
                            for (reply, outcome) in replies.into_iter().zip(outcomes) {
                                let _ = reply.send(Ok(outcome));
                            }
                            if queued_any {
                                wake.notify_one();
                            }
                        }
                        Err(e) => {
                            tracing::error!(error = %e,
                                "an inbox batch could not be made durable; answering 503");
                            let e = Arc::new(e);
                            for reply in replies {
                                let _ = reply.send(Err(e.clone()));
                            }
                        }
                    }
                });
            }
            Err(batch_error) => {
                tracing::warn!(error = %batch_error, size = rows.len(),
                    "inbox batch failed; retrying its deliveries one by one");
                let mut queued_any = false;
                for (delivery, reply) in rows.iter().zip(replies) {
                    let result = store
                        .insert_deliveries(std::slice::from_ref(delivery))
                        .await
                        .map(|mut o| o.pop().unwrap_or(InsertOutcome::Duplicate))
                        .map_err(Arc::new);
                    if let Err(error) = &result {
                        tracing::error!(delivery = %delivery.delivery_id, %error,
                            "delivery could not be stored; answering 503");
                    }
                    queued_any |= matches!(result, Ok(InsertOutcome::Stored))
                        && delivery.state == DeliveryState::Queued;
                    let _ = reply.send(result);
                }
                if queued_any {
                    wake.notify_one();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::sync::Mutex;
    use std::time::Duration;

    use async_trait::async_trait;
    use tokio::sync::watch;

    use super::*;
    use crate::store::{
        Delivery, DeliveryResult, Durable, EncodedPayload, InboxDepth, StoreError, now_ms,
    };

    /// A store whose batches are durable only when the test says so:
    /// `gate` is `None` while the disk "syncs", then `Some(ok)`.
    struct GatedStore {
        seen: Mutex<HashSet<String>>,
        gate: watch::Sender<Option<bool>>,
    }

    #[async_trait]
    impl Store for GatedStore {
        async fn migrate(&self) -> Result<(), StoreError> {
            Ok(())
        }
        async fn ping(&self) -> Result<(), StoreError> {
            Ok(())
        }
        async fn insert_deliveries(
            &self,
            _: &[NewDelivery],
        ) -> Result<Vec<InsertOutcome>, StoreError> {
            unreachable!("the inbox stages its batches")
        }
        async fn stage_deliveries(
            &self,
            batch: &[NewDelivery],
        ) -> Result<(Vec<InsertOutcome>, Durable), StoreError> {
            let mut seen = self.seen.lock().unwrap();
            let outcomes = batch
                .iter()
                .map(|d| match seen.insert(d.delivery_id.clone()) {
                    true => InsertOutcome::Stored,
                    false => InsertOutcome::Duplicate,
                })
                .collect();
            let mut gate = self.gate.subscribe();
            let durable: Durable = Box::pin(async move {
                let ok = *gate.wait_for(Option::is_some).await.unwrap();
                match ok {
                    Some(true) => Ok(()),
                    _ => Err(StoreError::Durability("the test's disk failed".into())),
                }
            });
            Ok((outcomes, durable))
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

    fn delivery(id: &str) -> NewDelivery {
        NewDelivery {
            delivery_id: id.into(),
            event: "issues".into(),
            action: Some("opened".into()),
            hook_id: None,
            installation_id: None,
            repository: None,
            sender_id: None,
            sender_login: None,
            payload: EncodedPayload::identity(bytes::Bytes::from_static(b"{}")),
            received_at: now_ms(),
            state: DeliveryState::Queued,
        }
    }

    #[tokio::test]
    async fn no_answer_not_even_duplicate_before_the_batch_is_durable() {
        let (gate, _) = watch::channel(None);
        let store = Arc::new(GatedStore {
            seen: Mutex::new(HashSet::new()),
            gate,
        });
        let (inbox, _writer) = Inbox::start(store.clone(), Arc::new(Notify::new()));
        let first = tokio::spawn({
            let inbox = inbox.clone();
            async move { inbox.submit(delivery("a")).await }
        });
        let again = tokio::spawn({
            let inbox = inbox.clone();
            async move { inbox.submit(delivery("a")).await }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            !first.is_finished() && !again.is_finished(),
            "answered before the disk synced"
        );
        store.gate.send_replace(Some(true));
        assert_eq!(first.await.unwrap().unwrap(), InsertOutcome::Stored);
        assert_eq!(again.await.unwrap().unwrap(), InsertOutcome::Duplicate);

        // A batch that cannot be made durable is an error for each request
        // (503), not an answer.
        store.gate.send_replace(None);
        let lost = tokio::spawn({
            let inbox = inbox.clone();
            async move { inbox.submit(delivery("b")).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!lost.is_finished());
        store.gate.send_replace(Some(false));
        match lost.await.unwrap() {
            Err(InboxError::Store(e)) => {
                assert!(matches!(*e, StoreError::Durability(_)), "{e}")
            }
            other => panic!("expected a durability error, got {other:?}"),
        }
    }
}
