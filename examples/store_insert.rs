//! Micro-benchmark: raw batch inserts into the SQLite inbox (no HTTP).
use std::time::Instant;
use taskmaster::store::{self, DeliveryState, NewDelivery};

#[tokio::main]
async fn main() {
    let dir = tempfile::tempdir().unwrap();
    let store = store::connect(&format!("sqlite://{}/x.db", dir.path().display()))
        .await
        .unwrap();
    let body = bytes::Bytes::from(
        std::fs::read("tests/fixtures/webhooks/pull_request.opened.json").unwrap(),
    );
    for batch_size in [1usize, 8, 16, 64] {
        let mut n = 0;
        let start = Instant::now();
        while start.elapsed().as_secs_f64() < 3.0 {
            let batch: Vec<_> = (0..batch_size)
                .map(|i| NewDelivery {
                    delivery_id: format!("{batch_size}-{n}-{i}"),
                    event: "pull_request".into(),
                    action: Some("opened".into()),
                    hook_id: None,
                    installation_id: Some(taskmaster::ids::InstallationId(1)),
                    repository: Some("a/b".into()),
                    sender_id: Some(1),
                    sender_login: Some("x".into()),
                    payload: store::EncodedPayload::encode(body.clone()),
                    received_at: 0,
                    state: DeliveryState::Queued,
                })
                .collect();
            store.insert_deliveries(&batch).await.unwrap();
            n += 1;
        }
        let secs = start.elapsed().as_secs_f64();
        println!(
            "batch {batch_size}: {:.0} rows/s, {:.2} ms per commit",
            (n * batch_size) as f64 / secs,
            secs * 1000.0 / n as f64
        );
    }
}
