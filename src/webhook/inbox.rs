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
    let mut replies = Vec::with_capacity(MAX_BATCH);
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
        // stay in the same order.
        rows.clear();
        replies.clear();
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
                let waiting = std::mem::replace(&mut replies, Vec::with_capacity(MAX_BATCH));
                let wake = wake.clone();
                tokio::spawn(async move {
                    match durable.await {
                        Ok(()) => {
                            for (reply, outcome) in waiting.into_iter().zip(outcomes) {
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
                            for reply in waiting {
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
                for (delivery, reply) in rows.iter().zip(replies.drain(..)) {
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
