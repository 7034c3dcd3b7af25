//! Webhook intake against a real server on loopback and a real SQLite file:
//! signatures, headers, storage of every fixture event, deduplication, body
//! limits and health.

mod harness;

use std::sync::Arc;

use harness::{SECRET, TestService, all_fixtures, fixture, sign};
use reqwest::StatusCode;
use serde_json::Value;
use taskmaster::dispatch::AcceptAll;
use taskmaster::store::DeliveryState;

fn delivery_id(n: usize) -> String {
    format!("00000000-0000-4000-8000-{n:012}")
}

#[tokio::test]
async fn github_documented_test_vector_passes_the_signature_check() {
    // GitHub's documented vector: the signature is right, so the request gets
    // past authentication and is refused only because the body is no JSON object.
    let service = TestService::start_with("It's a Secret to Everybody", Arc::new(AcceptAll)).await;
    let signature = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
    let (status, receipt) = service
        .post(
            Some("ping"),
            Some("vector-1"),
            b"Hello, World!",
            Some(signature),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(receipt.error.as_deref(), Some("body is not a JSON object"));

    let (status, _) = service
        .post(
            Some("ping"),
            Some("vector-2"),
            b"Hello, World?",
            Some(signature),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(service.stored_count().await, 0);
}

#[tokio::test]
async fn every_fixture_is_stored_with_its_metadata() {
    let service = TestService::start().await;
    let fixtures = all_fixtures();
    assert!(
        fixtures.len() >= 100,
        "expected the octokit examples, found {}",
        fixtures.len()
    );
    for (i, (name, event, body)) in fixtures.iter().enumerate() {
        let id = delivery_id(i);
        let (status, receipt) = service.deliver(event, &id, body).await;
        let (want_status, want_label) = match event.as_str() {
            "ping" => (StatusCode::OK, "done"),
            _ => (StatusCode::ACCEPTED, "queued"),
        };
        assert_eq!(status, want_status, "{name}");
        assert_eq!(receipt.status, want_label, "{name}");
        assert_eq!(receipt.delivery.as_deref(), Some(id.as_str()), "{name}");

        let stored = service.store.delivery(&id).await.unwrap().expect(name);
        let payload: Value = serde_json::from_slice(body).unwrap();
        assert_eq!(stored.event, *event, "{name}");
        assert_eq!(
            stored.action.as_deref(),
            payload["action"].as_str(),
            "{name}"
        );
        assert_eq!(
            stored.installation_id,
            payload["installation"]["id"]
                .as_i64()
                .map(taskmaster::ids::InstallationId),
            "{name}"
        );
        assert_eq!(
            stored.repository.as_deref(),
            payload["repository"]["full_name"].as_str(),
            "{name}"
        );
        assert_eq!(stored.sender_id, payload["sender"]["id"].as_i64(), "{name}");
        assert_eq!(
            stored.sender_login.as_deref(),
            payload["sender"]["login"].as_str(),
            "{name}"
        );
        assert_eq!(
            &stored.payload[..],
            &body[..],
            "{name}: payload stored byte for byte"
        );
    }
    assert_eq!(service.stored_count().await, fixtures.len() as i64);

    // Spot-check a few values against the files, so a parser that returned
    // nothing everywhere could not pass the comparisons above.
    let pr_index = fixtures
        .iter()
        .position(|(n, ..)| n == "pull_request.opened.json");
    let pr = service
        .store
        .delivery(&delivery_id(pr_index.unwrap()))
        .await;
    let pr = pr.unwrap().unwrap();
    assert_eq!(pr.action.as_deref(), Some("opened"));
    assert_eq!(pr.repository.as_deref(), Some("Codertocat/Hello-World"));
    assert!(pr.sender_login.is_some() && pr.installation_id.is_none());
}

#[tokio::test]
async fn unsigned_wrongly_signed_and_tampered_fixtures_are_refused() {
    let service = TestService::start().await;
    for (i, (name, event, body)) in all_fixtures().iter().enumerate() {
        let id = delivery_id(i);
        let (status, receipt) = service.post(Some(event), Some(&id), body, None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{name} unsigned");
        assert_eq!(
            receipt.error.as_deref(),
            Some("missing X-Hub-Signature-256 header")
        );

        let wrong = sign("not-the-secret", body);
        let (status, _) = service
            .post(Some(event), Some(&id), body, Some(&wrong))
            .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{name} wrong secret");

        let right = sign(SECRET, body);
        let mut flipped = body.clone();
        let middle = flipped.len() / 2;
        flipped[middle] ^= 0x01;
        let (status, receipt) = service
            .post(Some(event), Some(&id), &flipped, Some(&right))
            .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{name} flipped byte");
        assert!(receipt.error.unwrap().contains("does not match"));
    }
    assert_eq!(service.stored_count().await, 0, "nothing refused is stored");
}

#[tokio::test]
async fn malformed_signature_headers_are_refused_with_a_reason() {
    let service = TestService::start().await;
    let body = fixture("ping.json");
    for bad in ["sha1=abc", "sha256=xyz", "", "sha256="] {
        let (status, receipt) = service
            .post(Some("ping"), Some("m-1"), &body, Some(bad))
            .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{bad:?}");
        assert!(
            receipt
                .error
                .unwrap()
                .starts_with("malformed X-Hub-Signature-256")
        );
    }
}

#[tokio::test]
async fn either_of_two_secrets_is_accepted() {
    let service = TestService::start_with("old-secret,new-secret", Arc::new(AcceptAll)).await;
    let body = fixture("issues.opened.json");
    for (n, secret) in ["old-secret", "new-secret"].iter().enumerate() {
        let signature = sign(secret, &body);
        let (status, receipt) = service
            .post(
                Some("issues"),
                Some(&delivery_id(n)),
                &body,
                Some(&signature),
            )
            .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{secret}");
        assert_eq!(receipt.status, "queued");
    }
    let signature = sign("retired-secret", &body);
    let (status, _) = service
        .post(
            Some("issues"),
            Some(&delivery_id(9)),
            &body,
            Some(&signature),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(service.stored_count().await, 2);
}

#[tokio::test]
async fn missing_headers_and_non_object_bodies_are_bad_requests() {
    let service = TestService::start().await;
    let body = fixture("issues.opened.json");
    let signature = sign(SECRET, &body);
    let (status, receipt) = service
        .post(Some("issues"), None, &body, Some(&signature))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        receipt.error.as_deref(),
        Some("missing x-github-delivery header")
    );
    let (status, receipt) = service
        .post(None, Some("d-1"), &body, Some(&signature))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        receipt.error.as_deref(),
        Some("missing x-github-event header")
    );

    for not_object in [
        &b"[1,2,3]"[..],
        b"\"text\"",
        b"42",
        b"{\"action\": ",
        b"",
        b"  null",
    ] {
        let signature = sign(SECRET, not_object);
        let (status, receipt) = service
            .post(Some("issues"), Some("d-2"), not_object, Some(&signature))
            .await;
        assert_eq!(
            status,
            StatusCode::BAD_REQUEST,
            "{:?}",
            String::from_utf8_lossy(not_object)
        );
        assert!(receipt.error.is_some());
    }
    assert_eq!(service.stored_count().await, 0);
}

#[tokio::test]
async fn a_repeated_delivery_is_stored_once() {
    let service = TestService::start().await;
    let body = fixture("pull_request.opened.json");
    let (status, receipt) = service.deliver("pull_request", "dup-1", &body).await;
    assert_eq!(
        (status, receipt.status.as_str()),
        (StatusCode::ACCEPTED, "queued")
    );
    let (status, receipt) = service.deliver("pull_request", "dup-1", &body).await;
    assert_eq!(
        (status, receipt.status.as_str()),
        (StatusCode::OK, "duplicate")
    );
    assert_eq!(service.stored_count().await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_posts_of_one_delivery_store_one_row() {
    let service = Arc::new(TestService::start().await);
    let body = Arc::new(fixture("pull_request.opened.json"));
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let (service, body) = (service.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            service
                .deliver("pull_request", "same-delivery", &body)
                .await
        }));
    }
    let mut accepted = 0;
    let mut duplicates = 0;
    for task in tasks {
        match task.await.unwrap() {
            (StatusCode::ACCEPTED, r) if r.status == "queued" => accepted += 1,
            (StatusCode::OK, r) if r.status == "duplicate" => duplicates += 1,
            other => panic!("unexpected answer {other:?}"),
        }
    }
    assert_eq!((accepted, duplicates), (1, 49));
    assert_eq!(service.stored_count().await, 1);
}

#[tokio::test]
async fn bodies_over_25_mib_are_413_and_20_mb_is_accepted() {
    let service = TestService::start().await;

    let limit = 25 * 1024 * 1024;
    let too_big = vec![b' '; limit + 1];
    let signature = sign(SECRET, &too_big);
    let response = service
        .client
        .post(service.webhook_url())
        .header("x-github-event", "push")
        .header("x-github-delivery", "big-1")
        .header("x-hub-signature-256", signature)
        .body(too_big)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);

    let mut twenty_mb = br#"{"action":"opened","padding":""#.to_vec();
    twenty_mb.resize(20_000_000 - 2, b'x');
    twenty_mb.extend_from_slice(b"\"}");
    assert_eq!(twenty_mb.len(), 20_000_000);
    let (status, receipt) = service.deliver("pull_request", "big-2", &twenty_mb).await;
    assert_eq!(
        (status, receipt.status.as_str()),
        (StatusCode::ACCEPTED, "queued")
    );
    let stored = service.store.delivery("big-2").await.unwrap().unwrap();
    assert_eq!(stored.payload.len(), 20_000_000);
    assert_eq!(service.stored_count().await, 1);
}

#[tokio::test]
async fn ping_is_answered_200_and_recorded_and_unknown_events_are_ignored() {
    let service = TestService::start().await;
    let (status, receipt) = service
        .deliver("ping", "ping-1", &fixture("ping.json"))
        .await;
    assert_eq!((status, receipt.status.as_str()), (StatusCode::OK, "done"));
    let stored = service.store.delivery("ping-1").await.unwrap().unwrap();
    assert_eq!(stored.state, DeliveryState::Done);

    let (status, receipt) = service
        .deliver("star", "star-1", br#"{"action":"created"}"#)
        .await;
    assert_eq!(
        (status, receipt.status.as_str()),
        (StatusCode::ACCEPTED, "ignored")
    );
    let stored = service.store.delivery("star-1").await.unwrap().unwrap();
    assert_eq!(stored.state, DeliveryState::Ignored);
    assert_eq!(stored.action.as_deref(), Some("created"));
}

#[tokio::test]
async fn health_reports_version_database_and_inbox_depth() {
    let service = TestService::start().await;
    let response = service
        .client
        .get(format!("{}/api/health", service.base_url))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let health: Value = response.json().await.unwrap();
    assert_eq!(health["status"], "ok");
    assert_eq!(health["database"], "ok");
    assert_eq!(health["version"], env!("CARGO_PKG_VERSION"));
    assert!(health["inbox"]["queued"].is_i64());
    assert!(health["inbox"]["processing"].is_i64());
    assert!(
        health["inbox"]["oldest_queued_ms"].is_i64(),
        "the dispatcher's lag"
    );
}

/// A store whose database is gone: every call fails.
struct UnreachableStore;

#[async_trait::async_trait]
impl taskmaster::store::Store for UnreachableStore {
    async fn migrate(&self) -> Result<(), taskmaster::store::StoreError> {
        Err(sqlx::Error::PoolTimedOut.into())
    }
    async fn ping(&self) -> Result<(), taskmaster::store::StoreError> {
        Err(sqlx::Error::PoolTimedOut.into())
    }
    async fn insert_deliveries(
        &self,
        _: &[taskmaster::store::NewDelivery],
    ) -> Result<Vec<taskmaster::store::InsertOutcome>, taskmaster::store::StoreError> {
        Err(sqlx::Error::PoolTimedOut.into())
    }
    async fn claim_deliveries(
        &self,
        _: &str,
        _: usize,
        _: std::time::Duration,
    ) -> Result<Vec<taskmaster::store::Delivery>, taskmaster::store::StoreError> {
        Err(sqlx::Error::PoolTimedOut.into())
    }
    async fn finish_deliveries(
        &self,
        _: &str,
        _: &[(i64, taskmaster::store::DeliveryResult)],
    ) -> Result<u64, taskmaster::store::StoreError> {
        Err(sqlx::Error::PoolTimedOut.into())
    }
    async fn recover_deliveries(&self) -> Result<u64, taskmaster::store::StoreError> {
        Ok(0)
    }
    async fn release_deliveries(&self, _: &str) -> Result<u64, taskmaster::store::StoreError> {
        Ok(0)
    }
    async fn delivery(
        &self,
        _: &str,
    ) -> Result<Option<taskmaster::store::Delivery>, taskmaster::store::StoreError> {
        Err(sqlx::Error::PoolTimedOut.into())
    }
    async fn inbox_depth(
        &self,
    ) -> Result<taskmaster::store::InboxDepth, taskmaster::store::StoreError> {
        Err(sqlx::Error::PoolTimedOut.into())
    }
}

#[tokio::test]
async fn health_is_503_and_intake_is_503_when_the_database_is_unreachable() {
    let store: Arc<dyn taskmaster::store::Store> = Arc::new(UnreachableStore);
    let running = taskmaster::server::start(taskmaster::server::ServerConfig {
        addr: "127.0.0.1:0".parse().unwrap(),
        secrets: taskmaster::webhook::WebhookSecrets::parse(SECRET).unwrap(),
        store,
        handler: Arc::new(AcceptAll),
        limits: Default::default(),
    })
    .await
    .unwrap();
    let base = format!("http://{}", running.local_addr);
    let client = taskmaster::agent::http_client_builder().build().unwrap();

    let response = client
        .get(format!("{base}/api/health"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let health: Value = response.json().await.unwrap();
    assert_eq!(health["status"], "unavailable");
    assert!(
        health["database"]
            .as_str()
            .unwrap()
            .contains("database error"),
        "{health}"
    );
    assert!(health.get("inbox").is_none());

    // A delivery that cannot be stored is not acknowledged: GitHub records a
    // failure, and the delivery can be redelivered.
    let body = fixture("issues.opened.json");
    let (status, receipt) = harness::post(
        &client,
        &format!("{base}/api/github/webhooks"),
        Some("issues"),
        Some("lost-1"),
        &body,
        Some(&sign(SECRET, &body)),
    )
    .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(receipt.error.unwrap().contains("redeliver"));
    running.stop().await.unwrap();
}

/// A server with `limits` on a fresh SQLite file in a temporary directory
/// (kept with it), accepting every delivery.
async fn serve_with_limits(
    limits: taskmaster::server::IntakeLimits,
) -> (tempfile::TempDir, taskmaster::server::RunningServer) {
    let dir = tempfile::tempdir().unwrap();
    let store =
        taskmaster::store::connect(&format!("sqlite://{}", dir.path().join("t.db").display()))
            .await
            .unwrap();
    let running = taskmaster::server::start(taskmaster::server::ServerConfig {
        addr: "127.0.0.1:0".parse().unwrap(),
        secrets: taskmaster::webhook::WebhookSecrets::parse(SECRET).unwrap(),
        store,
        handler: Arc::new(AcceptAll),
        limits,
    })
    .await
    .unwrap();
    (dir, running)
}

/// Slow and flooding clients cannot hold intake: more trickling connections
/// than the connection cap, and trickling bodies holding more than the body
/// budget, while a real delivery is answered at once; the oldest slow
/// readers are closed to make room, a connection whose headers do not
/// arrive in time is closed, a body that does not arrive in time is
/// answered 408.
#[tokio::test]
async fn slow_clients_are_cut_off_and_real_deliveries_are_answered() {
    use std::time::{Duration, Instant};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (_dir, running) = serve_with_limits(taskmaster::server::IntakeLimits {
        header_timeout: Duration::from_secs(2),
        body_timeout: Duration::from_secs(4),
        max_connections: 200,
        max_webhooks_in_flight: 20,
        max_body_bytes: 1_000_000,
    })
    .await;
    let addr = running.local_addr;
    let post = |delivery: &'static str| {
        let body = fixture("issues.opened.json");
        let client = taskmaster::agent::http_client_builder().build().unwrap();
        async move {
            let started = Instant::now();
            let response = client
                .post(format!("http://{addr}/api/github/webhooks"))
                .header("X-GitHub-Event", "issues")
                .header("X-GitHub-Delivery", delivery)
                .header("X-Hub-Signature-256", sign(SECRET, &body))
                .header("Content-Type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap();
            (response.status(), started.elapsed())
        }
    };
    // 150 connections trickling headers, then 40 trickling bodies of which
    // 30 KB each arrived (1.2 MB: more than the budget), then 100 more
    // trickling headers (290 in all: more than the connection cap).
    let mut slow_headers = Vec::new();
    for _ in 0..150 {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"POST /api/github/webhooks HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        slow_headers.push(s);
    }
    let body_head = "POST /api/github/webhooks HTTP/1.1\r\nHost: x\r\nX-GitHub-Event: ping\r\n\
                     X-GitHub-Delivery: slow\r\nContent-Type: application/json\r\n\
                     Content-Length: 100000\r\n\r\n{";
    let mut slow_bodies = Vec::new();
    for _ in 0..40 {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(body_head.as_bytes()).await.unwrap();
        s.write_all(&[b' '; 30_000]).await.unwrap();
        slow_bodies.push(s);
    }
    for _ in 0..100 {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"POST /api/github/webhooks HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        slow_headers.push(s);
    }
    // A real delivery is answered at once, though every slot is taken.
    let (status, took) = post("real-1").await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert!(took < Duration::from_secs(2), "{took:?}");

    // The oldest slow readers were closed to make room (EOF, no answer).
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(1), slow_headers[0].read(&mut buf))
        .await
        .expect("the oldest reader was closed")
        .unwrap_or(0);
    assert_eq!(n, 0, "{}", String::from_utf8_lossy(&buf[..n]));

    // The newest slow headers: closed by the server at their timeout.
    let started = Instant::now();
    for s in slow_headers.iter_mut().rev().take(10) {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("closed in time")
            .unwrap_or(0);
        let text = String::from_utf8_lossy(&buf[..n]);
        assert!(n == 0 || text.starts_with("HTTP/1.1 408"), "{text}");
    }
    assert!(started.elapsed() < Duration::from_secs(5));
    // Slow bodies: the newest are answered 408 once their time is up (the
    // oldest may have been closed for room).
    for s in slow_bodies.iter_mut().rev().take(5) {
        let n = tokio::time::timeout(Duration::from_secs(6), s.read(&mut buf))
            .await
            .expect("answered in time")
            .unwrap_or(0);
        let text = String::from_utf8_lossy(&buf[..n]);
        assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    }
    let (status, _) = post("real-2").await;
    assert_eq!(status, StatusCode::ACCEPTED);
    running.stop().await.unwrap();
}

/// Webhook requests beyond the in-flight cap are answered 503 at once, once
/// their bodies are read (a slow sender never holds a place).
#[tokio::test]
async fn webhook_requests_beyond_the_in_flight_cap_are_answered_503() {
    let (dir, running) = serve_with_limits(taskmaster::server::IntakeLimits {
        max_webhooks_in_flight: 0,
        ..Default::default()
    })
    .await;
    let body = fixture("issues.opened.json");
    let client = taskmaster::agent::http_client_builder().build().unwrap();
    let response = client
        .post(format!("http://{}/api/github/webhooks", running.local_addr))
        .header("X-GitHub-Event", "issues")
        .header("X-GitHub-Delivery", "over-1")
        .header("X-Hub-Signature-256", sign(SECRET, &body))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(response.headers()["retry-after"], "5");
    running.stop().await.unwrap();
    assert_eq!(harness::count_rows(&dir.path().join("t.db")).await, 0);
}
