//! `taskmaster serve` reporting to GitHub end to end: a signed
//! `pull_request.opened` goes through intake, routing and the engine, and the
//! outbox shows the run on a wiremock GitHub — one check run, created once and
//! completed by PATCH, and one sticky comment, created once and then edited.
//! Without App credentials (dry run) nothing is sent at all.

mod harness;

use std::time::{Duration, Instant};

use harness::{ChildService, SECRET, fixture, post, sign};
use serde_json::{Value, json};
use wiremock::matchers::{method, path, path_regex};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

const PRIVATE_KEY: &str = include_str!("fixtures/github/app-key.pem");
const REPO: &str = "/repos/Codertocat/Hello-World";

/// The fixture with an `installation` (GitHub sends one to Apps).
fn opened_payload() -> Vec<u8> {
    let mut v: Value = serde_json::from_slice(&fixture("pull_request.opened.json")).unwrap();
    v["installation"] = json!({ "id": 42, "node_id": "MDIz" });
    serde_json::to_vec(&v).unwrap()
}

/// A workflow of `steps` sequential steps, each an `echo`.
fn workflows_dir(dir: &std::path::Path, steps: usize) -> std::path::PathBuf {
    let workflows = dir.join("workflows");
    std::fs::create_dir(&workflows).unwrap();
    let mut yml =
        String::from("name: review\non: { pull_request: { actions: [opened] } }\nsteps:\n");
    for i in 0..steps {
        let needs = if i == 0 {
            String::new()
        } else {
            format!(", needs: s{}", i - 1)
        };
        yml.push_str(&format!(
            "  s{i}: {{ agent: command{needs}, with: {{ run: [\"sh\", \"-c\", \"echo step {i} done\"] }} }}\n"
        ));
    }
    std::fs::write(workflows.join("review.yml"), yml).unwrap();
    workflows
}

async fn github() -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/app/installations/42/access_tokens"))
        .respond_with(ResponseTemplate::new(201).set_body_json(json!({
            "token": "ghs_outbox",
            "expires_at": (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339(),
            "permissions": { "checks": "write", "issues": "write", "pull_requests": "write" },
            "repository_selection": "all",
        })))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path_regex(
            r"^/repos/Codertocat/Hello-World/commits/[0-9a-f]+/check-runs$",
        ))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(json!({"total_count": 0, "check_runs": []})),
        )
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path(format!("{REPO}/check-runs")))
        .respond_with(ResponseTemplate::new(201).set_body_json(json!({"id": 555})))
        .mount(&server)
        .await;
    Mock::given(method("PATCH"))
        .and(path(format!("{REPO}/check-runs/555")))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"id": 555})))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path(format!("{REPO}/issues/2/comments")))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!([])))
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path(format!("{REPO}/issues/2/comments")))
        .respond_with(ResponseTemplate::new(201).set_body_json(json!({"id": 777})))
        .mount(&server)
        .await;
    Mock::given(method("PATCH"))
        .and(path(format!("{REPO}/issues/comments/777")))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"id": 777})))
        .mount(&server)
        .await;
    server
}

async fn requests(server: &MockServer, m: &str, p: &str) -> Vec<Request> {
    server
        .received_requests()
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.method.as_str() == m && r.url.path() == p)
        .collect()
}

fn body(r: &Request) -> Value {
    serde_json::from_slice(&r.body).unwrap()
}

async fn deliver(service: &ChildService, delivery: &str) {
    let body = opened_payload();
    let client = taskmaster::agent::http_client_builder().build().unwrap();
    let (status, _) = post(
        &client,
        &service.webhook_url(),
        Some("pull_request"),
        Some(delivery),
        &body,
        Some(&sign(SECRET, &body)),
    )
    .await;
    assert!(status.is_success(), "{status}");
}

#[tokio::test]
async fn a_pull_request_run_shows_as_one_check_run_and_one_sticky_comment() {
    const STEPS: usize = 8;
    let server = github().await;
    let dir = tempfile::tempdir().unwrap();
    let workflows = workflows_dir(dir.path(), STEPS);
    let db = dir.path().join("serve.db");
    let mut service = ChildService::start(
        &db,
        &[
            ("TASKMASTER_WORKFLOWS", workflows.to_str().unwrap()),
            ("GITHUB_APP_ID", "12345"),
            ("GITHUB_PRIVATE_KEY", PRIVATE_KEY),
            ("GITHUB_API_URL", &server.uri()),
            ("PUBLIC_URL", "https://tm.example.com/"),
            ("TASKMASTER_REPORT_INTERVAL_MS", "300"),
            ("TASKMASTER_OUTBOX_POLL_MS", "50"),
        ],
    );
    deliver(&service, "outbox-e2e-1").await;

    let check_run = format!("{REPO}/check-runs/555");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let patches = requests(&server, "PATCH", &check_run).await;
        if patches
            .last()
            .is_some_and(|r| body(r)["status"] == "completed")
        {
            break;
        }
        if Instant::now() >= deadline {
            let seen: Vec<String> = server
                .received_requests()
                .await
                .unwrap_or_default()
                .iter()
                .map(|r| format!("{} {}", r.method, r.url))
                .collect();
            panic!(
                "the check run never completed\nGitHub saw: {seen:#?}\nservice log:\n{}",
                service.logs_text()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Let any straggling update land before counting.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let creates = requests(&server, "POST", &format!("{REPO}/check-runs")).await;
    assert_eq!(creates.len(), 1, "one check run per run");
    let created = body(&creates[0]);
    assert!(
        created["status"] == "queued" || created["status"] == "in_progress",
        "{created}"
    );
    assert_eq!(created["name"], "taskmaster / review");
    assert_eq!(
        created["head_sha"],
        "ec26c3e57ca3a959ca5aad62de7213c562f8c821"
    );
    assert!(
        created["details_url"]
            .as_str()
            .unwrap()
            .starts_with("https://tm.example.com/runs/"),
        "{created}"
    );

    let patches = requests(&server, "PATCH", &check_run).await;
    let last = body(patches.last().unwrap());
    assert_eq!(last["status"], "completed");
    assert_eq!(last["conclusion"], "success");
    let summary = last["output"]["summary"].as_str().unwrap();
    assert!(
        summary.contains("| `s0`") && summary.contains("| `s7`"),
        "{summary}"
    );
    // Coalescing: 2 transitions per step plus the run's own, far fewer PATCHes.
    let transitions = 2 * STEPS + 2;
    assert!(
        patches.len() * 2 < transitions,
        "{} PATCHes for {transitions} transitions",
        patches.len()
    );

    let comment_posts = requests(&server, "POST", &format!("{REPO}/issues/2/comments")).await;
    assert_eq!(comment_posts.len(), 1, "the sticky comment is created once");
    let comment_patches = requests(&server, "PATCH", &format!("{REPO}/issues/comments/777")).await;
    assert!(!comment_patches.is_empty(), "then edited");
    let final_comment = body(comment_patches.last().unwrap());
    assert!(
        final_comment["body"]
            .as_str()
            .unwrap()
            .contains("step 7 done"),
        "{final_comment}"
    );

    // A restart: the finished run is not reported again, and a second run of
    // the same PR reuses the comment.
    service.signal(libc::SIGTERM);
    assert!(service.wait_exit(Duration::from_secs(15)).success());
    // Reports only: the start-up redelivery pass also asks GitHub for its
    // list of webhook deliveries, which is not a report being re-sent.
    let reports = |requests: Vec<Request>| {
        requests
            .into_iter()
            .filter(|r| !r.url.path().starts_with("/app/hook/deliveries"))
            .count()
    };
    let before = reports(server.received_requests().await.unwrap());
    let mut service = ChildService::start(
        &db,
        &[
            ("TASKMASTER_WORKFLOWS", workflows.to_str().unwrap()),
            ("GITHUB_APP_ID", "12345"),
            ("GITHUB_PRIVATE_KEY", PRIVATE_KEY),
            ("GITHUB_API_URL", &server.uri()),
            ("TASKMASTER_OUTBOX_POLL_MS", "50"),
        ],
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        reports(server.received_requests().await.unwrap()),
        before,
        "nothing to send again after a restart"
    );
    service.signal(libc::SIGTERM);
    assert!(service.wait_exit(Duration::from_secs(15)).success());
}

#[tokio::test]
async fn without_credentials_effects_are_recorded_and_logged_never_sent() {
    let server = MockServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let workflows = workflows_dir(dir.path(), 2);
    let db = dir.path().join("dry.db");
    let mut service = ChildService::start(
        &db,
        &[
            ("TASKMASTER_WORKFLOWS", workflows.to_str().unwrap()),
            ("GITHUB_API_URL", &server.uri()),
            ("TASKMASTER_REPORT_INTERVAL_MS", "0"),
            ("TASKMASTER_OUTBOX_POLL_MS", "50"),
        ],
    );
    deliver(&service, "outbox-dry-1").await;
    let logs = service.logs.clone();
    let completed = || {
        logs.lock().unwrap().iter().any(|l| {
            l.contains("dry run: GitHub effect recorded")
                && l.contains("UpdateCheckRun")
                && l.contains("completed")
        })
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !completed() {
        assert!(
            Instant::now() < deadline,
            "no completed check run recorded: {:#?}",
            logs.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    service.signal(libc::SIGTERM);
    assert!(service.wait_exit(Duration::from_secs(15)).success());
    let lines = logs.lock().unwrap().clone();
    assert!(lines.iter().any(|l| l.contains("DRY RUN")), "{lines:#?}");
    assert!(lines.iter().any(|l| l.contains("CreateComment")));
    assert!(
        server.received_requests().await.unwrap().is_empty(),
        "dry run sends nothing"
    );
}
