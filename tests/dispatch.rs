//! The dispatcher: queued deliveries are handed to the handler once, transient
//! failures are retried, and a crash's leftovers are taken back at start-up.

mod harness;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use harness::{SECRET, TestService, fixture};
use reqwest::StatusCode;
use taskmaster::dispatch::{DeliveryHandler, Handled, HandlerError};
use taskmaster::store::{self, Delivery, DeliveryState, EncodedPayload, NewDelivery, Store};

/// Records every delivery it is given; fails the first `fail_first` calls
/// transiently, and ignores `star` events.
#[derive(Default)]
struct Recorder {
    seen: Mutex<Vec<String>>,
    fail_first: Mutex<usize>,
}

#[async_trait]
impl DeliveryHandler for Recorder {
    async fn handle(&self, delivery: &Delivery) -> Result<Handled, HandlerError> {
        self.seen.lock().unwrap().push(delivery.delivery_id.clone());
        let mut fail = self.fail_first.lock().unwrap();
        if *fail > 0 {
            *fail -= 1;
            return Err(HandlerError::Transient("database is busy".into()));
        }
        if delivery.action.as_deref() == Some("deleted") {
            return Ok(Handled::Ignored("deletions need no work".into()));
        }
        Ok(Handled::Done)
    }
}

async fn wait_for_state(store: &Arc<dyn Store>, id: &str, state: DeliveryState) -> Delivery {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let d = store.delivery(id).await.unwrap().expect("stored");
        if d.state == state {
            return d;
        }
        assert!(
            Instant::now() < deadline,
            "{id} stuck in {} (wanted {state})",
            d.state
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn queued_deliveries_are_handled_once_each() {
    let recorder = Arc::new(Recorder::default());
    let service = TestService::start_with(SECRET, recorder.clone()).await;
    let body = fixture("issues.opened.json");
    for n in 0..20 {
        let (status, _) = service.deliver("issues", &format!("d-{n}"), &body).await;
        assert_eq!(status, StatusCode::ACCEPTED);
    }
    // A repeat of an answered delivery is not handed on again.
    service.deliver("issues", "d-3", &body).await;
    let deleted = fixture("issues.deleted.json");
    service.deliver("issues", "d-deleted", &deleted).await;

    for n in 0..20 {
        wait_for_state(&service.store, &format!("d-{n}"), DeliveryState::Done).await;
    }
    let ignored = wait_for_state(&service.store, "d-deleted", DeliveryState::Ignored).await;
    assert_eq!(ignored.error.as_deref(), Some("deletions need no work"));

    let mut seen = recorder.seen.lock().unwrap().clone();
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 21, "every delivery handled");
    assert_eq!(recorder.seen.lock().unwrap().len(), 21, "and none twice");

    // Events taskmaster does not act on never reach the handler.
    service
        .deliver("star", "star-1", br#"{"action":"created"}"#)
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !recorder
            .seen
            .lock()
            .unwrap()
            .contains(&"star-1".to_string())
    );
}

#[tokio::test]
async fn a_transient_failure_is_retried_with_backoff() {
    let recorder = Arc::new(Recorder {
        fail_first: Mutex::new(1),
        ..Default::default()
    });
    let service = TestService::start_with(SECRET, recorder.clone()).await;
    let started = Instant::now();
    service
        .deliver("issues", "flaky-1", &fixture("issues.opened.json"))
        .await;
    let done = wait_for_state(&service.store, "flaky-1", DeliveryState::Done).await;
    assert_eq!(done.attempts, 2, "claimed twice");
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "waited for the 1 s backoff"
    );
    assert_eq!(recorder.seen.lock().unwrap().len(), 2);
}

#[tokio::test]
async fn deliveries_left_processing_by_a_crash_are_recovered_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let db_path = dir.path().join("taskmaster.db");
    {
        // A previous process stored and claimed a delivery, then died.
        let store = store::connect(&format!("sqlite://{}", db_path.display()))
            .await
            .unwrap();
        let body = fixture("issues.opened.json");
        store
            .insert_deliveries(&[NewDelivery {
                delivery_id: "orphan-1".into(),
                event: "issues".into(),
                action: Some("opened".into()),
                hook_id: None,
                installation_id: None,
                repository: Some("Codertocat/Hello-World".into()),
                sender_id: Some(1),
                sender_login: Some("Codertocat".into()),
                payload: EncodedPayload::encode(body.into()),
                received_at: store::now_ms(),
                state: DeliveryState::Queued,
            }])
            .await
            .unwrap();
        let claimed = store
            .claim_deliveries("dead-dispatcher", 10, Duration::from_secs(3600))
            .await
            .unwrap();
        assert_eq!(claimed.len(), 1);
        let d = store.delivery("orphan-1").await.unwrap().unwrap();
        assert_eq!(d.state, DeliveryState::Processing);
    }
    let recorder = Arc::new(Recorder::default());
    let service = TestService::start_on(dir, db_path, SECRET, recorder.clone()).await;
    wait_for_state(&service.store, "orphan-1", DeliveryState::Done).await;
    assert_eq!(*recorder.seen.lock().unwrap(), vec!["orphan-1".to_string()]);
}

#[tokio::test]
async fn a_finish_without_the_lease_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = store::connect(&format!("sqlite://{}", dir.path().join("t.db").display()))
        .await
        .unwrap();
    store
        .insert_deliveries(&[NewDelivery {
            delivery_id: "fenced".into(),
            event: "issues".into(),
            action: None,
            hook_id: None,
            installation_id: None,
            repository: None,
            sender_id: None,
            sender_login: None,
            payload: EncodedPayload::encode(bytes::Bytes::from_static(b"{}")),
            received_at: store::now_ms(),
            state: DeliveryState::Queued,
        }])
        .await
        .unwrap();
    let claimed = store
        .claim_deliveries("owner-a", 10, Duration::from_secs(60))
        .await
        .unwrap();
    let id = claimed[0].id;
    let changed = store
        .finish_deliveries("owner-b", &[(id, store::DeliveryResult::Done)])
        .await
        .unwrap();
    assert_eq!(changed, 0, "another owner cannot finish it");
    assert_eq!(
        store.delivery("fenced").await.unwrap().unwrap().state,
        DeliveryState::Processing
    );
    let changed = store
        .finish_deliveries("owner-a", &[(id, store::DeliveryResult::Done)])
        .await
        .unwrap();
    assert_eq!(changed, 1);
    assert_eq!(
        store.delivery("fenced").await.unwrap().unwrap().state,
        DeliveryState::Done
    );
    // Done deliveries are not claimed again.
    assert!(
        store
            .claim_deliveries("owner-a", 10, Duration::from_secs(60))
            .await
            .unwrap()
            .is_empty()
    );
}

/// Holds installation 1's deliveries until released; records the order.
struct Gate {
    open: tokio::sync::Notify,
    seen: Mutex<Vec<String>>,
}

#[async_trait]
impl DeliveryHandler for Gate {
    async fn handle(&self, delivery: &Delivery) -> Result<Handled, HandlerError> {
        self.seen.lock().unwrap().push(delivery.delivery_id.clone());
        if delivery.installation_id == Some(taskmaster::ids::InstallationId(1)) {
            self.open.notified().await;
        }
        Ok(Handled::Done)
    }
}

fn queued(id: &str, installation: i64) -> NewDelivery {
    NewDelivery {
        delivery_id: id.into(),
        event: "issues".into(),
        action: Some("opened".into()),
        hook_id: None,
        installation_id: Some(taskmaster::ids::InstallationId(installation)),
        repository: Some("o/r".into()),
        sender_id: None,
        sender_login: None,
        payload: EncodedPayload::encode(bytes::Bytes::from_static(b"{}")),
        received_at: 0,
        state: DeliveryState::Queued,
    }
}

/// One installation's slow delivery never holds up another's; while it is
/// handled its lease is renewed, so a second dispatcher on the same
/// database never takes it over.
#[tokio::test]
async fn installations_are_handled_side_by_side_and_leases_are_renewed() {
    use taskmaster::dispatch::Dispatcher;
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("d.db").display());
    let store: Arc<dyn Store> = store::connect(&url).await.unwrap();
    store
        .insert_deliveries(&[queued("slow-1", 1), queued("fast-2", 2)])
        .await
        .unwrap();
    let gate = Arc::new(Gate {
        open: tokio::sync::Notify::new(),
        seen: Mutex::new(Vec::new()),
    });
    let cancel = tokio_util::sync::CancellationToken::new();
    let lease = Duration::from_millis(300);
    let first = Dispatcher::new(
        store.clone(),
        gate.clone(),
        Arc::new(tokio::sync::Notify::new()),
    )
    .with_timings(lease, Duration::from_secs(30));
    let a = tokio::spawn(first.run(cancel.clone()));
    // Installation 2 is done while installation 1 is still being handled.
    let done = wait_for_state(&store, "fast-2", DeliveryState::Done).await;
    assert_eq!(done.state, DeliveryState::Done);
    assert_eq!(
        store.delivery("slow-1").await.unwrap().unwrap().state,
        DeliveryState::Processing
    );
    // A second dispatcher polls beside it for several leases' time.
    let other = Arc::new(Recorder::default());
    let second = Dispatcher::new(
        store.clone(),
        other.clone(),
        Arc::new(tokio::sync::Notify::new()),
    )
    .with_timings(lease, Duration::from_secs(30));
    let b = tokio::spawn(second.run(cancel.clone()));
    tokio::time::sleep(Duration::from_millis(2500)).await;
    gate.open.notify_one();
    wait_for_state(&store, "slow-1", DeliveryState::Done).await;
    cancel.cancel();
    a.await.unwrap();
    b.await.unwrap();
    assert!(
        other.seen.lock().unwrap().is_empty(),
        "the renewed lease kept the delivery: {:?}",
        other.seen.lock().unwrap()
    );
    let slow = store.delivery("slow-1").await.unwrap().unwrap();
    assert_eq!(slow.attempts, 1, "handled once");
}

/// A store whose `finish_deliveries` queues on the same writer lock the
/// handler below takes, as the SQLite store's writers queue on one lock.
struct SharedWriter {
    inner: Arc<dyn Store>,
    writer: Arc<tokio::sync::Mutex<()>>,
}

#[async_trait]
impl Store for SharedWriter {
    async fn migrate(&self) -> Result<(), store::StoreError> {
        self.inner.migrate().await
    }
    async fn ping(&self) -> Result<(), store::StoreError> {
        self.inner.ping().await
    }
    async fn insert_deliveries(
        &self,
        batch: &[NewDelivery],
    ) -> Result<Vec<store::InsertOutcome>, store::StoreError> {
        self.inner.insert_deliveries(batch).await
    }
    async fn claim_deliveries(
        &self,
        owner: &str,
        limit: usize,
        lease: Duration,
    ) -> Result<Vec<Delivery>, store::StoreError> {
        self.inner.claim_deliveries(owner, limit, lease).await
    }
    async fn finish_deliveries(
        &self,
        owner: &str,
        results: &[(i64, store::DeliveryResult)],
    ) -> Result<u64, store::StoreError> {
        let _writer = self.writer.lock().await;
        self.inner.finish_deliveries(owner, results).await
    }
    async fn recover_deliveries(&self) -> Result<u64, store::StoreError> {
        self.inner.recover_deliveries().await
    }
    async fn release_deliveries(&self, owner: &str) -> Result<u64, store::StoreError> {
        self.inner.release_deliveries(owner).await
    }
    async fn delivery(&self, id: &str) -> Result<Option<Delivery>, store::StoreError> {
        self.inner.delivery(id).await
    }
    async fn inbox_depth(&self) -> Result<store::InboxDepth, store::StoreError> {
        self.inner.inbox_depth().await
    }
}

/// Installation 1's handler writes: it holds the writer lock across an
/// await that outlasts the dispatcher's 500 ms coalescing window.
struct WritingHandler {
    writer: Arc<tokio::sync::Mutex<()>>,
}

#[async_trait]
impl DeliveryHandler for WritingHandler {
    async fn handle(&self, delivery: &Delivery) -> Result<Handled, HandlerError> {
        if delivery.installation_id == Some(taskmaster::ids::InstallationId(1)) {
            let _writer = self.writer.lock().await;
            tokio::time::sleep(Duration::from_millis(800)).await;
        }
        Ok(Handled::Done)
    }
}

/// The dispatcher records a batch's finished deliveries while another
/// installation's handler is still at work. When handlers were futures
/// the dispatcher's loop polled, that record waited for the writer lock a
/// handler held, and the handler, no longer polled, never let it go: the
/// dispatcher (and everything else that writes) stopped for good, which
/// the PR storm found at 500 deliveries/s. Handlers now run as tasks.
#[tokio::test]
async fn recording_while_a_handler_holds_the_writer_does_not_deadlock() {
    use taskmaster::dispatch::Dispatcher;
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("d.db").display());
    let writer = Arc::new(tokio::sync::Mutex::new(()));
    let store: Arc<dyn Store> = Arc::new(SharedWriter {
        inner: store::connect(&url).await.unwrap(),
        writer: writer.clone(),
    });
    store
        .insert_deliveries(&[queued("writes-1", 1), queued("quick-2", 2)])
        .await
        .unwrap();
    let cancel = tokio_util::sync::CancellationToken::new();
    let dispatcher = Dispatcher::new(
        store.clone(),
        Arc::new(WritingHandler { writer }),
        Arc::new(tokio::sync::Notify::new()),
    )
    .with_timings(Duration::from_secs(30), Duration::from_secs(30));
    let running = tokio::spawn(dispatcher.run(cancel.clone()));
    // `wait_for_state` gives up after 10 s; both finish in about 0.8 s.
    wait_for_state(&store, "quick-2", DeliveryState::Done).await;
    wait_for_state(&store, "writes-1", DeliveryState::Done).await;
    cancel.cancel();
    running.await.unwrap();
}
