//! Rate limits and retries against a fake GitHub: each limited answer is
//! waited out (scaled 1000× down) and the request lands, with exactly one
//! retry loop — counted by the requests GitHub received.

mod github_world;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use github_world::*;
use serde_json::json;
use taskmaster::github::{GitHub, GitHubClient, GitHubError, RetryPolicy};
use wiremock::matchers::{method, path};
use wiremock::{Mock, ResponseTemplate};

const COMMENTS: &str = "/repos/octo/widgets/issues/7/comments";

/// GitHub answers `first` `times` times, then creates the comment.
async fn comment_after(w: &World, first: ResponseTemplate, times: u64) {
    Mock::given(method("POST"))
        .and(path(COMMENTS))
        .respond_with(first)
        .up_to_n_times(times)
        .mount(&w.server)
        .await;
    Mock::given(method("POST"))
        .and(path(COMMENTS))
        .respond_with(ResponseTemplate::new(201).set_body_json(json!({"id": 5})))
        .mount(&w.server)
        .await;
}

async fn post(w: &World) -> Result<u64, GitHubError> {
    w.client
        .create_comment(INSTALLATION, &repo(), 7, "report")
        .await
        .map(|c| c.0)
}

#[tokio::test]
async fn secondary_limit_with_retry_after_is_waited_out() {
    let w = world().await;
    comment_after(
        &w,
        ResponseTemplate::new(403)
            .insert_header("retry-after", "30")
            .set_body_json(json!({"message": "You have exceeded a secondary rate limit"})),
        1,
    )
    .await;
    let start = Instant::now();
    assert_eq!(post(&w).await.unwrap(), 5);
    // 30 s scaled by 0.001.
    assert!(start.elapsed() >= Duration::from_millis(30));
    assert_eq!(w.requests("POST", COMMENTS).await.len(), 2);
}

#[tokio::test]
async fn secondary_limit_without_headers_backs_off_at_least_a_minute() {
    let w = world().await;
    comment_after(
        &w,
        ResponseTemplate::new(403)
            .set_body_json(json!({"message": "You have exceeded a secondary rate limit."})),
        2,
    )
    .await;
    let start = Instant::now();
    assert_eq!(post(&w).await.unwrap(), 5);
    // 60 s then 120 s, scaled.
    assert!(start.elapsed() >= Duration::from_millis(180));
    assert_eq!(w.requests("POST", COMMENTS).await.len(), 3);
}

#[tokio::test]
async fn too_many_requests_is_retried() {
    let w = world().await;
    comment_after(
        &w,
        ResponseTemplate::new(429).insert_header("retry-after", "1"),
        2,
    )
    .await;
    assert_eq!(post(&w).await.unwrap(), 5);
    assert_eq!(w.requests("POST", COMMENTS).await.len(), 3);
}

#[tokio::test]
async fn exhausted_primary_limit_waits_for_reset() {
    let w = world().await;
    let reset = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 20;
    comment_after(
        &w,
        ResponseTemplate::new(403)
            .insert_header("x-ratelimit-remaining", "0")
            .insert_header("x-ratelimit-reset", reset.to_string().as_str())
            .set_body_json(json!({"message": "API rate limit exceeded"})),
        1,
    )
    .await;
    let start = Instant::now();
    assert_eq!(post(&w).await.unwrap(), 5);
    assert!(start.elapsed() >= Duration::from_millis(19));
    assert_eq!(w.requests("POST", COMMENTS).await.len(), 2);
}

#[tokio::test]
async fn a_reset_beyond_max_wait_is_handed_back_to_the_caller() {
    let w = world().await;
    let reset = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3000;
    comment_after(
        &w,
        ResponseTemplate::new(403)
            .insert_header("x-ratelimit-remaining", "0")
            .insert_header("x-ratelimit-reset", reset.to_string().as_str()),
        1,
    )
    .await;
    let err = post(&w).await.unwrap_err();
    assert!(
        matches!(err, GitHubError::RateLimited { wait, .. } if wait >= Duration::from_secs(2990))
    );
    assert!(err.is_transient());
    assert_eq!(w.requests("POST", COMMENTS).await.len(), 1);
}

#[tokio::test]
async fn bad_gateway_is_retried_with_backoff() {
    let w = world().await;
    comment_after(&w, ResponseTemplate::new(502), 2).await;
    assert_eq!(post(&w).await.unwrap(), 5);
    assert_eq!(w.requests("POST", COMMENTS).await.len(), 3);
}

#[tokio::test]
async fn retries_stop_at_max_attempts_no_nested_loop() {
    let w = world().await;
    Mock::given(method("POST"))
        .and(path(COMMENTS))
        .respond_with(ResponseTemplate::new(502))
        .mount(&w.server)
        .await;
    let err = post(&w).await.unwrap_err();
    assert_eq!(err.status(), Some(502));
    assert!(err.is_transient());
    // Exactly max_attempts requests: octocrab does not retry on its own, so
    // 5 attempts are 5 requests, not 5 × N.
    assert_eq!(
        w.requests("POST", COMMENTS).await.len(),
        RetryPolicy::default().max_attempts as usize
    );
}

#[tokio::test]
async fn permission_403_is_final() {
    let w = world().await;
    Mock::given(method("POST"))
        .and(path(COMMENTS))
        .respond_with(
            ResponseTemplate::new(403)
                .set_body_json(json!({"message": "Resource not accessible by integration"})),
        )
        .mount(&w.server)
        .await;
    let err = post(&w).await.unwrap_err();
    assert_eq!(err.status(), Some(403));
    assert!(!err.is_transient());
    assert!(err.to_string().contains("Resource not accessible"));
    assert_eq!(w.requests("POST", COMMENTS).await.len(), 1);
}

#[tokio::test]
async fn a_fresh_object_404_is_retried_briefly() {
    let w = world().await;
    comment_after(
        &w,
        ResponseTemplate::new(404).set_body_json(json!({"message": "Not Found"})),
        1,
    )
    .await;
    assert_eq!(post(&w).await.unwrap(), 5);
    assert_eq!(w.requests("POST", COMMENTS).await.len(), 2);
}

#[tokio::test]
async fn a_missing_file_is_not_retried() {
    let w = world().await;
    let p = "/repos/octo/widgets/contents/.github/taskmaster.yml";
    Mock::given(method("GET"))
        .and(path(p))
        .respond_with(ResponseTemplate::new(404).set_body_json(json!({"message": "Not Found"})))
        .mount(&w.server)
        .await;
    let got = w
        .client
        .file_contents(INSTALLATION, &repo(), ".github/taskmaster.yml", None)
        .await
        .unwrap();
    assert_eq!(got, None);
    assert_eq!(w.requests("GET", p).await.len(), 1);
}

#[tokio::test]
async fn content_creating_requests_are_paced_per_installation() {
    let server = wiremock::MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(TOKEN_PATH))
        .respond_with(token_response("ghs_token_one", chrono::Duration::hours(1)))
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path(COMMENTS))
        .respond_with(ResponseTemplate::new(201).set_body_json(json!({"id": 5})))
        .mount(&server)
        .await;
    // 750 ms between creations, scaled 1/10: 75 ms.
    let client = GitHubClient::new(&settings(&server.uri()), RetryPolicy::scaled(0.1)).unwrap();
    let start = Instant::now();
    for _ in 0..4 {
        client
            .create_comment(INSTALLATION, &repo(), 7, "x")
            .await
            .unwrap();
    }
    assert!(
        start.elapsed() >= Duration::from_millis(225),
        "4 creations need 3 intervals, took {:?}",
        start.elapsed()
    );
}

#[tokio::test]
async fn a_used_up_limit_on_a_success_holds_the_next_request() {
    let w = world().await;
    let p = "/repos/octo/widgets/collaborators/alice/permission";
    let reset = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3000;
    Mock::given(method("GET"))
        .and(path(p))
        .respond_with(
            ResponseTemplate::new(200)
                .insert_header("x-ratelimit-remaining", "0")
                .insert_header("x-ratelimit-reset", reset.to_string().as_str())
                .set_body_json(json!({"permission": "admin"})),
        )
        .mount(&w.server)
        .await;
    w.client
        .collaborator_permission(INSTALLATION, &repo(), "alice")
        .await
        .unwrap();
    // The limit is gone for 50 minutes: the next request is not even sent.
    let err = w
        .client
        .collaborator_permission(INSTALLATION, &repo(), "alice")
        .await
        .unwrap_err();
    assert!(matches!(err, GitHubError::RateLimited { .. }), "{err}");
    assert_eq!(w.requests("GET", p).await.len(), 1);
}
