//! `taskmaster serve` with App credentials asks GitHub, at start-up, to
//! redeliver the failed webhook deliveries its inbox does not have — and
//! leaves alone those it has.

mod harness;

use std::time::{Duration, Instant};

use chrono::Utc;
use harness::ChildService;
use serde_json::{Value, json};
use taskmaster::store::{self, DeliveryState, EncodedPayload, NewDelivery};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

const PRIVATE_KEY: &str = include_str!("fixtures/github/app-key.pem");

fn attempt(id: u64, guid: &str, status_code: u16) -> Value {
    json!({
        "id": id,
        "guid": guid,
        "delivered_at": (Utc::now() - chrono::Duration::minutes(5)).to_rfc3339(),
        "redelivery": false,
        "duration": 0.1,
        "status": "Invalid HTTP Response: 503",
        "status_code": status_code,
        "event": "pull_request",
        "action": "opened",
        "installation_id": 42,
        "repository_id": 1
    })
}

#[tokio::test]
async fn failed_deliveries_missing_from_the_inbox_are_redelivered_at_start_up() {
    let github = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/app/hook/deliveries"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!([
            attempt(11, "missed-while-down", 503),
            attempt(12, "already-in-inbox", 503),
        ])))
        .mount(&github)
        .await;
    for id in [11, 12] {
        Mock::given(method("POST"))
            .and(path(format!("/app/hook/deliveries/{id}/attempts")))
            .respond_with(ResponseTemplate::new(202).set_body_json(json!({})))
            .mount(&github)
            .await;
    }

    // The inbox already holds one of the two failed deliveries.
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("taskmaster.db");
    {
        let store = store::connect(&format!("sqlite://{}", db.display()))
            .await
            .unwrap();
        store
            .insert_deliveries(&[NewDelivery {
                delivery_id: "already-in-inbox".into(),
                event: "star".into(),
                action: None,
                hook_id: None,
                installation_id: None,
                repository: None,
                sender_id: None,
                sender_login: None,
                payload: EncodedPayload::encode(bytes::Bytes::from_static(b"{}")),
                received_at: store::now_ms(),
                state: DeliveryState::Ignored,
            }])
            .await
            .unwrap();
    }

    let _service = ChildService::start(
        &db,
        &[
            ("GITHUB_APP_ID", "12345"),
            ("GITHUB_PRIVATE_KEY", PRIVATE_KEY),
            ("GITHUB_API_URL", &github.uri()),
        ],
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let posted = loop {
        let posted: Vec<String> = github
            .received_requests()
            .await
            .unwrap()
            .iter()
            .filter(|r| r.method.as_str() == "POST")
            .map(|r| r.url.path().to_string())
            .collect();
        if !posted.is_empty() || Instant::now() > deadline {
            break posted;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // Give a wrong second request a moment to show up before judging.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let all_posts: Vec<String> = github
        .received_requests()
        .await
        .unwrap()
        .iter()
        .filter(|r| r.method.as_str() == "POST")
        .map(|r| r.url.path().to_string())
        .collect();
    assert_eq!(
        posted.first().map(String::as_str),
        Some("/app/hook/deliveries/11/attempts")
    );
    assert_eq!(
        all_posts,
        ["/app/hook/deliveries/11/attempts"],
        "only the missing one"
    );
}
