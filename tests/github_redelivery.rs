//! Redelivery after downtime, against a fake GitHub: failed deliveries
//! missing from the inbox are redelivered once each; stored ones, successful
//! ones and ones older than the window are not.

mod github_world;

use std::collections::HashSet;

use chrono::{Duration, Utc};
use github_world::*;
use serde_json::{Value, json};
use taskmaster::github::redelivery::redeliver_missing;
use wiremock::matchers::{method, path, query_param, query_param_is_missing};
use wiremock::{Mock, ResponseTemplate};

fn delivery(id: u64, guid: &str, status_code: u16, minutes_ago: i64, redelivery: bool) -> Value {
    json!({
        "id": id,
        "guid": guid,
        "delivered_at": (Utc::now() - Duration::minutes(minutes_ago)).to_rfc3339(),
        "redelivery": redelivery,
        "duration": 0.1,
        "status": if status_code == 200 { "OK" } else { "Invalid HTTP Response: 503" },
        "status_code": status_code,
        "event": "pull_request",
        "action": "opened",
        "installation_id": 42,
        "repository_id": 1
    })
}

#[tokio::test]
async fn failed_deliveries_missing_from_the_inbox_are_redelivered() {
    let w = bare_world().await;
    let p = "/app/hook/deliveries";
    // Page 1 (newest first). `g-retried` has two failed attempts: one redelivery.
    let page1 = json!([
        delivery(10, "g-ok", 200, 1, false),
        delivery(9, "g-retried", 503, 2, true),
        delivery(8, "g-stored", 0, 3, false),
        delivery(7, "g-retried", 503, 4, false),
    ]);
    // Page 2: a failure fixed by a later successful redelivery, one missing
    // failure, then attempts older than `since` (listing stops there).
    let page2 = json!([
        delivery(6, "g-fixed", 200, 5, true),
        delivery(5, "g-fixed", 502, 6, false),
        delivery(4, "g-missing", 500, 7, false),
        delivery(3, "g-too-old", 500, 600, false),
        delivery(2, "g-older", 500, 700, false),
    ]);
    let link = format!(
        "<{}{p}?per_page=100&cursor=v1_abc>; rel=\"next\"",
        w.server.uri()
    );
    Mock::given(method("GET"))
        .and(path(p))
        .and(query_param_is_missing("cursor"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(page1)
                .insert_header("link", link.as_str()),
        )
        .mount(&w.server)
        .await;
    Mock::given(method("GET"))
        .and(path(p))
        .and(query_param("cursor", "v1_abc"))
        .respond_with(ResponseTemplate::new(200).set_body_json(page2))
        .mount(&w.server)
        .await;
    for id in [9, 4, 8, 7, 5, 3] {
        Mock::given(method("POST"))
            .and(path(format!("{p}/{id}/attempts")))
            .respond_with(ResponseTemplate::new(202).set_body_json(json!({})))
            .mount(&w.server)
            .await;
    }

    let stored: HashSet<&str> = ["g-stored", "g-ok"].into();
    let now = Utc::now();
    let report = redeliver_missing(&w.client, now - Duration::hours(2), now, |guid| {
        let known = stored.contains(guid.as_str());
        async move { known }
    })
    .await
    .unwrap();

    assert_eq!(report.redelivered, ["g-retried", "g-missing"]);
    assert!(report.failed.is_empty());
    let posted: Vec<String> = w
        .server
        .received_requests()
        .await
        .unwrap()
        .iter()
        .filter(|r| r.method.as_str() == "POST")
        .map(|r| r.url.path().to_owned())
        .collect();
    assert_eq!(
        posted,
        [
            "/app/hook/deliveries/9/attempts",
            "/app/hook/deliveries/4/attempts"
        ],
        "the newest failed attempt of each missing GUID, nothing else"
    );
    // App endpoints are called with the App JWT, not an installation token.
    assert!(w.requests("POST", TOKEN_PATH).await.is_empty());
    for r in w.requests("GET", p).await {
        assert_eq!(bearer(&r).matches('.').count(), 2, "a JWT");
    }
}

#[tokio::test]
async fn the_window_is_clamped_to_three_days() {
    let w = bare_world().await;
    let p = "/app/hook/deliveries";
    Mock::given(method("GET"))
        .and(path(p))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!([
            delivery(2, "g-two-days", 500, 2 * 24 * 60, false),
            delivery(1, "g-four-days", 500, 4 * 24 * 60, false),
        ])))
        .mount(&w.server)
        .await;
    Mock::given(method("POST"))
        .and(path(format!("{p}/2/attempts")))
        .respond_with(ResponseTemplate::new(202))
        .mount(&w.server)
        .await;
    let now = Utc::now();
    let report = redeliver_missing(&w.client, now - Duration::days(30), now, |_| async {
        false
    })
    .await
    .unwrap();
    assert_eq!(report.redelivered, ["g-two-days"]);
    assert_eq!(report.listed, 1);
}

#[tokio::test]
async fn a_failed_redelivery_request_does_not_stop_the_pass() {
    let w = bare_world().await;
    let p = "/app/hook/deliveries";
    Mock::given(method("GET"))
        .and(path(p))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!([
            delivery(2, "g-a", 500, 1, false),
            delivery(1, "g-b", 500, 2, false),
        ])))
        .mount(&w.server)
        .await;
    Mock::given(method("POST"))
        .and(path(format!("{p}/2/attempts")))
        .respond_with(
            ResponseTemplate::new(422).set_body_json(json!({"message": "Validation Failed"})),
        )
        .mount(&w.server)
        .await;
    Mock::given(method("POST"))
        .and(path(format!("{p}/1/attempts")))
        .respond_with(ResponseTemplate::new(202))
        .mount(&w.server)
        .await;
    let now = Utc::now();
    let report = redeliver_missing(&w.client, now - Duration::hours(1), now, |_| async {
        false
    })
    .await
    .unwrap();
    assert_eq!(report.redelivered, ["g-b"]);
    assert_eq!(report.failed.len(), 1);
    assert_eq!(report.failed[0].0, "g-a");
}
