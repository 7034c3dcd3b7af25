//! The `codegen` adapter against a wiremock stand-in of the Codegen API
//! (`specs/codegen-openapi3.json`).

use std::time::Duration;

use serde_json::json;
use taskmaster::agent::codegen::{CodegenAgent, CodegenSettings};
use taskmaster::agent::{
    Agent, AttemptOutcome, AttemptRequest, ErrorClass, FailureKind, IdempotencyKey,
};
use wiremock::matchers::{body_partial_json, header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

const RUN: &str = "/v1/organizations/42/agent/run";
const TOKEN: &str = "cg-test-token-123456";

fn agent(server: &MockServer, tweak: impl FnOnce(&mut CodegenSettings)) -> CodegenAgent {
    let mut s = CodegenSettings::new("codegen");
    s.endpoint = server.uri();
    s.token = Some(TOKEN.to_string().into());
    s.org_id = Some(42);
    s.poll_initial = Duration::from_millis(20);
    s.poll_max = Duration::from_millis(50);
    s.rate_limit_wait = Duration::from_millis(100);
    tweak(&mut s);
    CodegenAgent::new(s).unwrap()
}

fn request(timeout: Duration) -> AttemptRequest {
    AttemptRequest::new(
        IdempotencyKey {
            run: "run-9".into(),
            step: "implement".into(),
            attempt: 1,
        },
        "Implement issue #5",
        timeout,
    )
}

fn run(status: &str) -> serde_json::Value {
    json!({
        "id": 1001,
        "organization_id": 42,
        "status": status,
        "created_at": "2025-06-01T12:00:00Z",
        "web_url": "https://codegen.com/agent/trace/1001",
        "result": null,
        "summary": null,
        "source_type": "API",
        "github_pull_requests": null,
        "metadata": null
    })
}

#[track_caller]
fn assert_failed(outcome: &AttemptOutcome, class: ErrorClass, kind: FailureKind) {
    let f = outcome
        .failure
        .as_ref()
        .unwrap_or_else(|| panic!("expected {kind:?}, got success: {}", outcome.output.text));
    assert_eq!((f.class, f.kind), (class, kind), "{}", f.message);
}

#[tokio::test]
async fn create_then_poll_through_pending_running_complete() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(RUN))
        .and(header("authorization", format!("Bearer {TOKEN}").as_str()))
        .and(body_partial_json(json!({
            "prompt": "Implement issue #5",
            "metadata": {"taskmaster_attempt": "run-9:implement:1"},
            "repo_id": 7
        })))
        .respond_with(ResponseTemplate::new(200).set_body_json(run("PENDING")))
        .expect(1)
        .mount(&server)
        .await;
    for status in ["PENDING", "running", "ACTIVE"] {
        Mock::given(method("GET"))
            .and(path(format!("{RUN}/1001")))
            .respond_with(ResponseTemplate::new(200).set_body_json(run(status)))
            .up_to_n_times(1)
            .mount(&server)
            .await;
    }
    let mut done = run("COMPLETE");
    done["result"] = json!("Implemented the feature.");
    done["github_pull_requests"] = json!([{
        "id": 555, "title": "Add agents", "url": "https://github.com/o/r/pull/12",
        "created_at": "2025-06-01T12:10:00Z", "head_branch_name": "codegen/agents"
    }]);
    Mock::given(method("GET"))
        .and(path(format!("{RUN}/1001")))
        .respond_with(ResponseTemplate::new(200).set_body_json(done))
        .mount(&server)
        .await;

    let outcome = agent(&server, |s| s.repo_id = Some(7))
        .run(request(Duration::from_secs(10)))
        .await;
    assert!(outcome.succeeded(), "{outcome:?}");
    let text = &outcome.output.text;
    assert!(text.starts_with("Implemented the feature."), "{text}");
    assert!(
        text.contains("- Add agents: https://github.com/o/r/pull/12"),
        "{text}"
    );
    assert_eq!(
        outcome.web_url.as_deref(),
        Some("https://codegen.com/agent/trace/1001")
    );
    // The pull requests Codegen opened, for taskmaster to link (not open again).
    assert_eq!(outcome.pull_requests, ["https://github.com/o/r/pull/12"]);
    let gets = server
        .received_requests()
        .await
        .unwrap()
        .iter()
        .filter(|r| r.method.as_str() == "GET")
        .count();
    assert_eq!(gets, 4, "polled PENDING, running, ACTIVE, COMPLETE");
}

#[tokio::test]
async fn a_429_on_create_is_waited_out_and_retried() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(RUN))
        .respond_with(
            ResponseTemplate::new(429)
                .insert_header("retry-after", "1")
                .set_body_json(json!({"message": "Rate limit exceeded. Please try again later.", "status_code": 429})),
        )
        .up_to_n_times(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path(RUN))
        .respond_with(ResponseTemplate::new(200).set_body_json(run("completed")))
        .expect(1)
        .mount(&server)
        .await;
    let started = std::time::Instant::now();
    let outcome = agent(&server, |_| {})
        .run(request(Duration::from_secs(10)))
        .await;
    assert!(outcome.succeeded(), "{outcome:?}");
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "honoured Retry-After"
    );
}

#[tokio::test]
async fn a_429_beyond_the_deadline_is_transient_with_the_hint() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(RUN))
        .respond_with(ResponseTemplate::new(429).insert_header("retry-after", "30"))
        .mount(&server)
        .await;
    let outcome = agent(&server, |_| {})
        .run(request(Duration::from_secs(2)))
        .await;
    assert_failed(&outcome, ErrorClass::Transient, FailureKind::RateLimited);
    assert_eq!(outcome.retry_after, Some(Duration::from_secs(30)));
    assert!(outcome.duration < Duration::from_secs(1));
}

#[tokio::test]
async fn a_402_plan_limit_is_permanent() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(RUN))
        .respond_with(ResponseTemplate::new(402).set_body_json(json!({
            "message": "Alloted agent runs for the current billing plan have been reached. Please upgrade your plan to continue.",
            "status_code": 402
        })))
        .expect(1)
        .mount(&server)
        .await;
    let outcome = agent(&server, |_| {})
        .run(request(Duration::from_secs(5)))
        .await;
    assert_failed(&outcome, ErrorClass::Permanent, FailureKind::Config);
    assert!(outcome.failure.unwrap().message.contains("billing plan"));
}

#[tokio::test]
async fn a_failed_run_is_a_permanent_agent_failure() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(RUN))
        .respond_with(ResponseTemplate::new(200).set_body_json(run("RUNNING")))
        .mount(&server)
        .await;
    let mut failed = run("ERROR");
    failed["summary"] = json!("Could not clone the repository");
    Mock::given(method("GET"))
        .and(path(format!("{RUN}/1001")))
        .respond_with(ResponseTemplate::new(200).set_body_json(failed))
        .mount(&server)
        .await;
    let outcome = agent(&server, |_| {})
        .run(request(Duration::from_secs(5)))
        .await;
    assert_failed(&outcome, ErrorClass::Permanent, FailureKind::Agent);
    assert!(outcome.output.text.contains("Could not clone"));
}

#[tokio::test]
async fn a_run_that_never_finishes_times_out_with_its_link() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(RUN))
        .respond_with(ResponseTemplate::new(200).set_body_json(run("PENDING")))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path(format!("{RUN}/1001")))
        .respond_with(ResponseTemplate::new(200).set_body_json(run("RUNNING")))
        .mount(&server)
        .await;
    let started = std::time::Instant::now();
    let outcome = agent(&server, |_| {})
        .run(request(Duration::from_millis(500)))
        .await;
    assert_failed(&outcome, ErrorClass::Transient, FailureKind::Timeout);
    assert!(started.elapsed() < Duration::from_secs(2));
    let message = outcome.failure.unwrap().message;
    assert!(
        message.contains("https://codegen.com/agent/trace/1001"),
        "{message}"
    );
}

#[tokio::test]
async fn a_slow_api_hits_the_request_timeout() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(RUN))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(run("PENDING"))
                .set_delay(Duration::from_secs(5)),
        )
        .mount(&server)
        .await;
    let outcome = agent(&server, |s| s.request_timeout = Duration::from_millis(200))
        .run(request(Duration::from_secs(10)))
        .await;
    assert_failed(&outcome, ErrorClass::Transient, FailureKind::Timeout);
}

#[tokio::test]
async fn missing_token_or_org_is_a_config_error() {
    let server = MockServer::start().await;
    let outcome = agent(&server, |s| s.token = None)
        .run(request(Duration::from_secs(5)))
        .await;
    assert_failed(&outcome, ErrorClass::Permanent, FailureKind::Config);
    assert!(
        outcome
            .failure
            .unwrap()
            .message
            .contains("CODEGEN_API_TOKEN")
    );
    let outcome = agent(&server, |s| s.org_id = None)
        .run(request(Duration::from_secs(5)))
        .await;
    assert!(outcome.failure.unwrap().message.contains("CODEGEN_ORG_ID"));
    assert!(server.received_requests().await.unwrap().is_empty());
}

#[tokio::test]
async fn each_repository_gets_its_own_codegen_repo_id() {
    let server = MockServer::start().await;
    for (repo_id, id) in [(11, 2001), (22, 2002)] {
        Mock::given(method("POST"))
            .and(path(RUN))
            .and(body_partial_json(json!({ "repo_id": repo_id })))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({
                "id": id, "organization_id": 42, "status": "COMPLETE",
                "result": format!("done in {repo_id}"), "web_url": null
            })))
            .expect(1)
            .mount(&server)
            .await;
    }
    let agent = agent(&server, |s| {
        s.repos.insert("acme/alpha".into(), 11);
        s.repos.insert("Acme/Beta".into(), 22);
    });
    for (repository, answer) in [("acme/alpha", "done in 11"), ("acme/beta", "done in 22")] {
        let mut req = request(Duration::from_secs(10));
        req.repository = Some(repository.into());
        let outcome = agent.run(req).await;
        assert!(outcome.succeeded(), "{outcome:?}");
        assert!(
            outcome.output.text.contains(answer),
            "{}",
            outcome.output.text
        );
    }
    // A repository the map does not name, with no default: refused before any request.
    let mut req = request(Duration::from_secs(10));
    req.repository = Some("acme/gamma".into());
    let outcome = agent.run(req).await;
    assert_failed(&outcome, ErrorClass::Permanent, FailureKind::Config);
    let message = &outcome.failure.as_ref().unwrap().message;
    assert!(
        message.contains("acme/gamma") && message.contains("repos:"),
        "{message}"
    );
}
