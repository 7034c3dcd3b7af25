//! Open connections and the request bytes they hold, and who gives way when
//! either runs out.
//!
//! A slow client's weapon is time: it opens connections and sends its
//! headers or body a byte at a time, holding a connection slot (and the
//! bytes it has sent) until a timeout ends it. Caps alone turn that into a
//! denial of service: once the slots or the body budget are full, GitHub's
//! next delivery waits or is refused.
//!
//! So when a new connection finds every slot taken, or a request body finds
//! the byte budget spent, the **oldest connection still reading its request**
//! (headers or body not yet complete, or idle between requests) is closed to
//! make room. A connection whose request has been read in full (it is being
//! handled, or its response is being sent) is never closed for room. GitHub
//! sends a delivery in one burst, so its connection is the newest reader and
//! the last to go; to push it out an attacker must open connections or send
//! body bytes faster than GitHub finishes one request — a bandwidth flood,
//! which is the network's to stop, not the application's.
//!
//! Memory stays bounded: at most `max_connections` connections (each a
//! few KB of buffers) and at most `max_body_bytes` of request bodies being
//! read at once.

use std::collections::{BTreeSet, HashMap};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper::body::{Body, Frame, SizeHint};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

/// How long a request waits for body bytes to come free after closing older
/// readers to make room (they release theirs as their tasks end, within
/// milliseconds); after that the request is refused with 503.
const BUDGET_WAIT: Duration = Duration::from_secs(2);

/// The open connections of one server and its request-body byte budget.
pub(crate) struct Connections {
    table: Mutex<Table>,
    next_id: AtomicU64,
    /// One permit per open connection.
    open: Arc<Semaphore>,
    /// One permit per byte of request body held by a request being read or
    /// handled.
    body_bytes: Arc<Semaphore>,
    max_body_bytes: usize,
    /// Signalled whenever body bytes come back. Waiters retry rather than
    /// queue: a semaphore's fair queue would put a real delivery behind
    /// every slow body already waiting.
    bytes_freed: tokio::sync::Notify,
}

/// The slots, and the readers among them ordered oldest first, so that
/// finding whom to close costs O(log n) however many connections are open.
#[derive(Default)]
struct Table {
    slots: HashMap<u64, Slot>,
    /// Connections reading, by `(since, id)`.
    readers: BTreeSet<(Instant, u64)>,
    /// The readers whose request holds body bytes, by `(since, id)`.
    holders: BTreeSet<(Instant, u64)>,
}

impl Table {
    /// Applies `f` to a slot and keeps the reader sets in step.
    fn update(&mut self, id: u64, f: impl FnOnce(&mut Slot)) {
        let Some(slot) = self.slots.get_mut(&id) else {
            return;
        };
        let key = (slot.since, id);
        self.readers.remove(&key);
        self.holders.remove(&key);
        f(slot);
        let key = (slot.since, id);
        if !slot.busy && !slot.close.is_cancelled() {
            self.readers.insert(key);
            if slot.held_bytes > 0 {
                self.holders.insert(key);
            }
        }
    }

    /// Closes the oldest connection in `set` (not `except`); returns the
    /// body bytes it held, `None` if there was none to close.
    fn close_oldest(&mut self, holders_only: bool, except: Option<u64>) -> Option<usize> {
        let set = if holders_only {
            &self.holders
        } else {
            &self.readers
        };
        let (_, id) = *set.iter().find(|(_, id)| Some(*id) != except)?;
        let mut held = 0;
        self.update(id, |slot| {
            slot.close.cancel();
            held = slot.held_bytes;
        });
        Some(held)
    }
}

struct Slot {
    /// When the connection started reading its current (or next) request:
    /// when it was accepted, or when its last response was sent.
    since: Instant,
    /// The current request was read in full and is being handled or answered.
    busy: bool,
    /// Body bytes its current request holds from the budget.
    held_bytes: usize,
    close: CancellationToken,
}

/// The request body could not get bytes from the budget in time: too many
/// bodies are being read at once. Answered 503 (GitHub's redelivery, or
/// taskmaster's redelivery pass, brings the delivery back).
#[derive(Debug, thiserror::Error)]
#[error("too many request bodies are being read at once")]
pub struct BodyBudgetExhausted;

impl Connections {
    /// A table for at most `max_connections` open connections and
    /// `max_body_bytes` bytes of request bodies in memory at once.
    pub(crate) fn new(max_connections: usize, max_body_bytes: usize) -> Arc<Self> {
        Arc::new(Self {
            table: Mutex::new(Table::default()),
            next_id: AtomicU64::new(1),
            open: Arc::new(Semaphore::new(max_connections.max(1))),
            body_bytes: Arc::new(Semaphore::new(max_body_bytes.max(1))),
            max_body_bytes: max_body_bytes.max(1),
            bytes_freed: tokio::sync::Notify::new(),
        })
    }

    /// A slot for a connection just accepted. When none is free, the oldest
    /// reading connection is closed and its slot awaited; when every
    /// connection is busy, this waits for one to end. `None` when `stop`
    /// fires first.
    pub(crate) async fn admit(
        self: &Arc<Self>,
        stop: &CancellationToken,
    ) -> Option<(ConnectionHandle, OwnedSemaphorePermit, CancellationToken)> {
        let permit = match self.open.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                if self.lock().close_oldest(false, None).is_some() {
                    crate::instrument::connection_closed_for_room("connection");
                }
                tokio::select! {
                    p = self.open.clone().acquire_owned() => p.ok()?,
                    _ = stop.cancelled() => return None,
                }
            }
        };
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let close = CancellationToken::new();
        let since = Instant::now();
        let mut table = self.lock();
        table.slots.insert(
            id,
            Slot {
                since,
                busy: false,
                held_bytes: 0,
                close: close.clone(),
            },
        );
        table.readers.insert((since, id));
        drop(table);
        Some((
            ConnectionHandle {
                id,
                table: self.clone(),
            },
            permit,
            close,
        ))
    }

    /// Closes the oldest readers holding body bytes (not `except`) until at
    /// least `needed` bytes will come back; returns how many were closed.
    fn close_for_bytes(&self, except: u64, needed: usize) -> usize {
        let mut table = self.lock();
        let (mut freed, mut closed) = (0, 0);
        while freed < needed {
            let Some(held) = table.close_oldest(true, Some(except)) else {
                break;
            };
            freed += held;
            closed += 1;
        }
        closed
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().expect("connection table")
    }

    fn update(&self, id: u64, f: impl FnOnce(&mut Slot)) {
        self.lock().update(id, f);
    }

    /// Open connections (for tests and metrics).
    #[cfg(test)]
    fn open_count(&self) -> usize {
        self.lock().slots.len()
    }
}

/// One connection's entry in [`Connections`]; requests carry a clone as an
/// extension. Dropping the last clone does not remove the entry: the
/// connection's task does, with [`ConnectionHandle::closed`].
#[derive(Clone)]
pub struct ConnectionHandle {
    id: u64,
    table: Arc<Connections>,
}

impl std::fmt::Debug for ConnectionHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionHandle")
            .field("id", &self.id)
            .finish()
    }
}

impl ConnectionHandle {
    /// The connection ended: its entry goes.
    pub(crate) fn closed(&self) {
        let mut table = self.table.lock();
        if let Some(slot) = table.slots.remove(&self.id) {
            table.readers.remove(&(slot.since, self.id));
            table.holders.remove(&(slot.since, self.id));
        }
    }

    /// The current request was read in full: never closed for room now.
    pub(crate) fn busy(&self) {
        self.table.update(self.id, |s| s.busy = true);
    }

    /// The response was sent: the connection reads again (its next request,
    /// or nothing), counted from now.
    pub(crate) fn idle(&self) {
        self.table.update(self.id, |s| {
            s.busy = false;
            s.since = Instant::now();
        });
    }

    /// Takes `bytes` of request body from the budget, closing the oldest
    /// readers that hold body bytes when it is spent. The bytes come back
    /// when the returned charge is dropped.
    ///
    /// Errors: [`BodyBudgetExhausted`] when the bytes did not come free
    /// within 2 s, or the request alone wants more than the whole budget.
    pub async fn charge(&self, bytes: usize) -> Result<BodyCharge, BodyBudgetExhausted> {
        let table = &self.table;
        if bytes > table.max_body_bytes {
            return Err(BodyBudgetExhausted);
        }
        let n = u32::try_from(bytes).map_err(|_| BodyBudgetExhausted)?;
        let deadline = tokio::time::Instant::now() + BUDGET_WAIT;
        let mut closed_any = false;
        let permit = loop {
            let freed = table.bytes_freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if let Ok(permit) = table.body_bytes.clone().try_acquire_many_owned(n) {
                break permit;
            }
            let short = bytes.saturating_sub(table.body_bytes.available_permits());
            if table.close_for_bytes(self.id, short) > 0 && !closed_any {
                closed_any = true;
                crate::instrument::connection_closed_for_room("body_bytes");
            }
            if tokio::time::timeout_at(deadline, freed).await.is_err() {
                return Err(BodyBudgetExhausted);
            }
        };
        table.update(self.id, |s| s.held_bytes += bytes);
        Ok(BodyCharge {
            permit: Some(permit),
            bytes,
            handle: self.clone(),
        })
    }
}

/// Body bytes taken from the budget; given back when dropped.
pub struct BodyCharge {
    permit: Option<OwnedSemaphorePermit>,
    bytes: usize,
    handle: ConnectionHandle,
}

impl BodyCharge {
    /// Adds another charge to this one.
    pub fn merge(&mut self, mut other: BodyCharge) {
        if let (Some(mine), Some(theirs)) = (self.permit.as_mut(), other.permit.take()) {
            mine.merge(theirs);
        }
        self.bytes += other.bytes;
        other.bytes = 0;
    }
}

impl Drop for BodyCharge {
    fn drop(&mut self) {
        if let Some(permit) = self.permit.take() {
            drop(permit);
            self.handle.table.bytes_freed.notify_waiters();
        }
        let bytes = self.bytes;
        if bytes > 0 {
            self.handle.table.update(self.handle.id, |s| {
                s.held_bytes = s.held_bytes.saturating_sub(bytes)
            });
        }
    }
}

/// A request body that marks its connection busy once it has been read to
/// its end.
pub(crate) struct TrackedBody<B> {
    inner: B,
    handle: Option<ConnectionHandle>,
}

impl<B: Body + Unpin> TrackedBody<B> {
    pub(crate) fn new(inner: B, handle: ConnectionHandle) -> Self {
        let mut body = Self {
            inner,
            handle: Some(handle),
        };
        if body.inner.is_end_stream() {
            body.finished();
        }
        body
    }

    fn finished(&mut self) {
        if let Some(handle) = self.handle.take() {
            handle.busy();
        }
    }
}

impl<B: Body + Unpin> Body for TrackedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => self.finished(),
            Poll::Ready(Some(Ok(_))) if self.inner.is_end_stream() => self.finished(),
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A response body that marks its connection idle (reading again) once
/// hyper is done with it.
pub(crate) struct AnsweredBody<B> {
    inner: B,
    handle: ConnectionHandle,
}

impl<B> AnsweredBody<B> {
    pub(crate) fn new(inner: B, handle: ConnectionHandle) -> Self {
        Self { inner, handle }
    }
}

impl<B> Drop for AnsweredBody<B> {
    fn drop(&mut self) {
        self.handle.idle();
    }
}

impl<B: Body + Unpin> Body for AnsweredBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_full_table_closes_its_oldest_reader_never_a_busy_one() {
        let table = Connections::new(3, 1000);
        let stop = CancellationToken::new();
        let (busy, _p1, busy_close) = table.admit(&stop).await.unwrap();
        busy.busy();
        tokio::time::sleep(Duration::from_millis(2)).await;
        let (old, p2, old_close) = table.admit(&stop).await.unwrap();
        tokio::time::sleep(Duration::from_millis(2)).await;
        let (_new, _p3, new_close) = table.admit(&stop).await.unwrap();
        assert_eq!(table.open_count(), 3);
        // The fourth closes the oldest reader (not the older busy one) and
        // gets its slot once that connection ends.
        let admitted = tokio::spawn({
            let table = table.clone();
            async move { table.admit(&CancellationToken::new()).await.map(|a| a.0.id) }
        });
        old_close.cancelled().await;
        assert!(!busy_close.is_cancelled());
        assert!(!new_close.is_cancelled());
        old.closed();
        drop(p2);
        assert!(admitted.await.unwrap().is_some());
    }

    #[tokio::test]
    async fn a_spent_budget_closes_the_oldest_body_holder_and_is_given_back() {
        let table = Connections::new(10, 100);
        let stop = CancellationToken::new();
        let (slow, _p1, slow_close) = table.admit(&stop).await.unwrap();
        let held = slow.charge(80).await.unwrap();
        tokio::time::sleep(Duration::from_millis(2)).await;
        let (real, _p2, real_close) = table.admit(&stop).await.unwrap();
        let waiting = tokio::spawn(async move { real.charge(50).await.map(|c| c.bytes) });
        slow_close.cancelled().await;
        drop(held);
        assert_eq!(waiting.await.unwrap().unwrap(), 50);
        assert!(!real_close.is_cancelled());
        // More than the whole budget is refused at once.
        let (other, _p3, _) = table.admit(&stop).await.unwrap();
        assert!(other.charge(101).await.is_err());
    }

    #[tokio::test]
    async fn charges_are_counted_per_connection_and_merged() {
        let table = Connections::new(10, 100);
        let (handle, _p, _) = table.admit(&CancellationToken::new()).await.unwrap();
        let mut charge = handle.charge(10).await.unwrap();
        charge.merge(handle.charge(20).await.unwrap());
        assert_eq!(table.lock().slots[&handle.id].held_bytes, 30);
        assert_eq!(table.body_bytes.available_permits(), 70);
        drop(charge);
        assert_eq!(table.lock().slots[&handle.id].held_bytes, 0);
        assert_eq!(table.body_bytes.available_permits(), 100);
    }
}
