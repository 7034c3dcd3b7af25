//! A PR storm through the real binary: 1,000 signed `pull_request.opened`
//! deliveries, each a different pull request (number, head commit, title)
//! across 50 repositories (each its own installation), sent 16 at a time. Afterwards every delivery is
//! stored once, every one has exactly one run, every run finished, and GitHub
//! saw exactly one check run created per head commit, completed.

mod harness;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use harness::{ChildService, SECRET, fixture, post, sign};
use serde_json::{Value, json};
use wiremock::matchers::{method, path_regex};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

const PRIVATE_KEY: &str = include_str!("fixtures/github/app-key.pem");
const DELIVERIES: usize = 1_000;
const REPOSITORIES: usize = 50;

/// The `i`-th pull request: repository `storm/r{i % 50}`, number `i + 1`,
/// head `{i:040x}`.
fn payload(template: &Value, i: usize) -> Vec<u8> {
    let mut v = template.clone();
    let repo = format!("r{}", i % REPOSITORIES);
    let full = format!("storm/{repo}");
    let sha = format!("{:040x}", i + 1);
    // One installation per repository: GitHub allows an installation 80
    // content-creating requests a minute (taskmaster paces them), so 1,000
    // runs of one installation would take 25 minutes to report.
    v["installation"] = json!({ "id": 1000 + i % REPOSITORIES });
    v["number"] = json!(i + 1);
    v["repository"]["name"] = json!(repo);
    v["repository"]["full_name"] = json!(full);
    v["repository"]["owner"]["login"] = json!("storm");
    let pr = &mut v["pull_request"];
    pr["number"] = json!(i + 1);
    pr["title"] = json!(format!("Change number {i}"));
    pr["head"]["sha"] = json!(sha);
    pr["head"]["ref"] = json!(format!("change-{i}"));
    for side in ["head", "base"] {
        pr[side]["repo"]["full_name"] = json!(full);
        pr[side]["repo"]["name"] = json!(repo);
        pr[side]["repo"]["owner"]["login"] = json!("storm");
    }
    serde_json::to_vec(&v).unwrap()
}

async fn github() -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path_regex(r"^/app/installations/[0-9]+/access_tokens$"))
        .respond_with(ResponseTemplate::new(201).set_body_json(json!({
            "token": "ghs_storm",
            "expires_at": (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339(),
            "permissions": { "checks": "write", "issues": "write", "pull_requests": "write" },
            "repository_selection": "all",
        })))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path_regex(
            r"^/repos/storm/r[0-9]+/commits/[0-9a-f]+/check-runs$",
        ))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(json!({"total_count": 0, "check_runs": []})),
        )
        .mount(&server)
        .await;
    // A check run's id is its pull request's number (one per head).
    Mock::given(method("POST"))
        .and(path_regex(r"^/repos/storm/r[0-9]+/check-runs$"))
        .respond_with(|r: &Request| {
            let id = head_index(body(r)["head_sha"].as_str().unwrap_or("0")) + 1;
            ResponseTemplate::new(201).set_body_json(json!({ "id": id }))
        })
        .mount(&server)
        .await;
    Mock::given(method("PATCH"))
        .and(path_regex(r"^/repos/storm/r[0-9]+/check-runs/[0-9]+$"))
        .respond_with(|r: &Request| {
            let id: u64 = r.url.path().rsplit('/').next().unwrap().parse().unwrap();
            ResponseTemplate::new(200).set_body_json(json!({ "id": id }))
        })
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path_regex(r"^/repos/storm/r[0-9]+/issues/[0-9]+/comments$"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!([])))
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path_regex(r"^/repos/storm/r[0-9]+/issues/[0-9]+/comments$"))
        .respond_with(ResponseTemplate::new(201).set_body_json(json!({"id": 777})))
        .mount(&server)
        .await;
    Mock::given(method("PATCH"))
        .and(path_regex(r"^/repos/storm/r[0-9]+/issues/comments/777$"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"id": 777})))
        .mount(&server)
        .await;
    server
}

fn body(r: &Request) -> Value {
    serde_json::from_slice(&r.body).unwrap()
}

/// The storm index of head commit `sha` (see [`payload`]).
fn head_index(sha: &str) -> usize {
    usize::from_str_radix(sha, 16)
        .unwrap_or(1)
        .saturating_sub(1)
}

/// The storm indices whose check run GitHub has seen completed: created
/// completed, or completed by a PATCH to its id.
fn completed(requests: &[Request]) -> std::collections::HashSet<usize> {
    let mut done = std::collections::HashSet::new();
    for r in requests {
        let path = r.url.path();
        match r.method.as_str() {
            "POST" if path.ends_with("/check-runs") && body(r)["status"] == "completed" => {
                done.insert(head_index(body(r)["head_sha"].as_str().unwrap()));
            }
            "PATCH" if path.contains("/check-runs/") && body(r)["status"] == "completed" => {
                let id: usize = path.rsplit('/').next().unwrap().parse().unwrap();
                done.insert(id - 1);
            }
            _ => {}
        }
    }
    done
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_of_distinct_pull_requests_gets_one_run_and_one_check_run_each() {
    let server = github().await;
    let dir = tempfile::tempdir().unwrap();
    let workflows = dir.path().join("workflows");
    std::fs::create_dir(&workflows).unwrap();
    std::fs::write(
        workflows.join("review.yml"),
        "name: review\non: { pull_request: { actions: [opened] } }\nsteps:\n  \
         check: { agent: command, with: { run: [\"true\"] } }\n",
    )
    .unwrap();
    let db = dir.path().join("storm.db");
    let service = ChildService::start(
        &db,
        &[
            ("TASKMASTER_WORKFLOWS", workflows.to_str().unwrap()),
            ("GITHUB_APP_ID", "12345"),
            ("GITHUB_PRIVATE_KEY", PRIVATE_KEY),
            ("GITHUB_API_URL", &server.uri()),
            ("TASKMASTER_REPORT_INTERVAL_MS", "300"),
            ("TASKMASTER_OUTBOX_POLL_MS", "50"),
        ],
    );
    let template: Value = serde_json::from_slice(&fixture("pull_request.opened.json")).unwrap();
    let client = taskmaster::agent::http_client_builder().build().unwrap();
    let url = service.webhook_url();
    let statuses: Vec<(usize, reqwest::StatusCode)> = futures_util::stream::iter(0..DELIVERIES)
        .map(|i| {
            let body = payload(&template, i);
            let (client, url) = (client.clone(), url.clone());
            async move {
                let delivery = format!("storm-{i}");
                let (status, _) = post(
                    &client,
                    &url,
                    Some("pull_request"),
                    Some(&delivery),
                    &body,
                    Some(&sign(SECRET, &body)),
                )
                .await;
                (i, status)
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    let refused: Vec<_> = statuses.iter().filter(|(_, s)| !s.is_success()).collect();
    assert!(refused.is_empty(), "refused: {refused:?}");

    // Wait until every run finished and GitHub has seen its check run
    // completed.
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        let requests = server.received_requests().await.unwrap();
        let done = completed(&requests).len();
        let finished = finished_runs(&db).await;
        if finished == DELIVERIES as i64 && done == DELIVERIES {
            break;
        }
        if Instant::now() >= deadline {
            panic!(
                "after 240 s: {finished} of {DELIVERIES} runs finished, {done} check runs \
                 completed\nservice log:\n{}",
                service.logs_text()
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // Every delivery stored once, with exactly one run each.
    let per_delivery = runs_per_delivery(&db).await;
    assert_eq!(per_delivery.len(), DELIVERIES, "deliveries with a run");
    assert!(
        per_delivery.values().all(|&n| n == 1),
        "a delivery with more than one run: {:?}",
        per_delivery
            .iter()
            .filter(|(_, n)| **n != 1)
            .collect::<Vec<_>>()
    );
    assert_eq!(harness::count_rows(&db).await, DELIVERIES as i64);
    // Exactly one check run created per head commit, in its repository.
    let requests = server.received_requests().await.unwrap();
    let mut created: HashMap<String, usize> = HashMap::new();
    for r in requests
        .iter()
        .filter(|r| r.method.as_str() == "POST" && r.url.path().ends_with("/check-runs"))
    {
        let sha = body(r)["head_sha"].as_str().unwrap().to_owned();
        let i = head_index(&sha);
        assert_eq!(
            r.url.path(),
            format!("/repos/storm/r{}/check-runs", i % REPOSITORIES),
            "the check run is created in its own repository"
        );
        *created.entry(sha).or_insert(0) += 1;
    }
    assert_eq!(created.len(), DELIVERIES, "a check run for every head");
    assert!(
        created.values().all(|&n| n == 1),
        "a head with more than one check run"
    );
}

async fn finished_runs(db: &std::path::Path) -> i64 {
    use sqlx::Connection;
    let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM runs WHERE state = 'succeeded'")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    n
}

async fn runs_per_delivery(db: &std::path::Path) -> HashMap<String, i64> {
    use sqlx::Connection;
    let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    sqlx::query_as::<_, (String, i64)>(
        "SELECT delivery_id, COUNT(*) FROM runs GROUP BY delivery_id",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap()
    .into_iter()
    .collect()
}
