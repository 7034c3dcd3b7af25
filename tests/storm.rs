//! A PR storm through the real binary: 1,000 signed `pull_request.opened`
//! deliveries, each a different pull request (number, head commit, title)
//! across 50 repositories (each its own installation), sent 16 at a time,
//! reported to the shared stateful fake GitHub. Afterwards every delivery is
//! stored once, every one has exactly one run, every run finished, GitHub
//! holds exactly one check run per head commit, completed, and refused no
//! write.

mod harness;
mod support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use harness::{ChildService, SECRET, fixture, post, sign};
use serde_json::{Value, json};
use support::fake_github::FakeGitHub;

const PRIVATE_KEY: &str = include_str!("fixtures/github/app-key.pem");
const DELIVERIES: usize = 1_000;
const REPOSITORIES: usize = 50;

/// The `i`-th pull request's payload: repository `storm/r{i % 50}`, number
/// `i + 1`, head `{i + 1:040x}` (see [`subject`]).
fn payload(template: &Value, i: usize) -> Vec<u8> {
    let mut v = template.clone();
    let (full, sha) = subject(i);
    let repo = full["storm/".len()..].to_owned();
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

/// The `i`-th pull request's repository and head commit.
fn subject(i: usize) -> (String, String) {
    (
        format!("storm/r{}", i % REPOSITORIES),
        format!("{:040x}", i + 1),
    )
}

/// The shared stateful fake GitHub (no bare repositories under its root:
/// check runs are accepted for any head), knowing the first `count` pull
/// requests.
async fn github_with_pull_requests(dir: &std::path::Path, count: usize) -> FakeGitHub {
    let fake = FakeGitHub::start(dir.join("git")).await;
    for i in 0..count {
        let (repo, head) = subject(i);
        fake.add_pull_request(
            &repo,
            i as u64 + 1,
            &format!("change-{i}"),
            &head,
            "master",
            "f95f852bd8fca8fcc58a9a2d6c842781e32a215e",
            &repo,
        );
    }
    fake
}

/// The real binary on the database `db` under `dir`, reporting to `fake`,
/// with a one-step workflow for `pull_request.opened`, plus `env`.
fn service(
    dir: &std::path::Path,
    db: &std::path::Path,
    fake: &FakeGitHub,
    env: &[(&str, &str)],
) -> ChildService {
    let workflows = dir.join("workflows");
    std::fs::create_dir(&workflows).unwrap();
    std::fs::write(
        workflows.join("review.yml"),
        "name: review\non: { pull_request: { actions: [opened] } }\nsteps:\n  \
         check: { agent: command, with: { run: [\"true\"] } }\n",
    )
    .unwrap();
    let mut all = vec![
        ("TASKMASTER_WORKFLOWS", workflows.to_str().unwrap()),
        ("GITHUB_APP_ID", "12345"),
        ("GITHUB_PRIVATE_KEY", PRIVATE_KEY),
        ("GITHUB_API_URL", fake.url.as_str()),
        ("TASKMASTER_OUTBOX_POLL_MS", "50"),
    ];
    all.extend_from_slice(env);
    ChildService::start(db, &all)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_of_distinct_pull_requests_gets_one_run_and_one_check_run_each() {
    let dir = tempfile::tempdir().unwrap();
    let fake = github_with_pull_requests(dir.path(), DELIVERIES).await;
    let db = dir.path().join("storm.db");
    let service = service(
        dir.path(),
        &db,
        &fake,
        &[("TASKMASTER_REPORT_INTERVAL_MS", "300")],
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

    // Wait until every run finished and GitHub shows its check run
    // completed.
    let completed = || {
        (0..REPOSITORIES)
            .flat_map(|r| fake.check_runs(&format!("storm/r{r}")))
            .filter(|c| c["status"] == "completed")
            .count()
    };
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        let done = completed();
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
    // Exactly one check run per head commit, in its own repository.
    for r in 0..REPOSITORIES {
        let repo = format!("storm/r{r}");
        let mut heads: HashMap<String, usize> = HashMap::new();
        for c in fake.check_runs(&repo) {
            *heads
                .entry(c["head_sha"].as_str().unwrap().to_owned())
                .or_insert(0) += 1;
        }
        let expected: Vec<String> = (0..DELIVERIES)
            .filter(|i| i % REPOSITORIES == r)
            .map(|i| subject(i).1)
            .collect();
        assert_eq!(
            heads.len(),
            expected.len(),
            "{repo}: a check run for every head"
        );
        for head in &expected {
            assert_eq!(
                heads.get(head),
                Some(&1),
                "{repo}: one check run for {head}"
            );
        }
    }
    // Every write one GitHub accepts (a missing `.github/taskmaster.yml`
    // is a 404 read, as on GitHub).
    let refused: Vec<_> = fake
        .writes()
        .into_iter()
        .filter(|r| r.status >= 400)
        .collect();
    assert!(refused.is_empty(), "GitHub refused: {refused:#?}");
    assert!(fake.unhandled().is_empty(), "{:#?}", fake.unhandled());
    // The 50 installations' tokens never reach the service's log.
    let tokens = fake.token_values();
    assert!(!tokens.is_empty());
    let log = service.logs_text();
    for token in &tokens {
        assert!(!log.contains(token.as_str()), "a token in the log");
    }
}

async fn finished_runs(db: &std::path::Path) -> i64 {
    rusqlite::Connection::open(db)
        .unwrap()
        .query_row(
            "SELECT COUNT(*) FROM runs WHERE state = 'succeeded'",
            [],
            |r| r.get(0),
        )
        .unwrap()
}

async fn runs_per_delivery(db: &std::path::Path) -> HashMap<String, i64> {
    let conn = rusqlite::Connection::open(db).unwrap();
    let mut statement = conn
        .prepare("SELECT delivery_id, COUNT(*) FROM runs GROUP BY delivery_id")
        .unwrap();
    statement
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_run_gets_its_check_run_while_the_outbox_waits_on_another_installation() {
    // The outbox's pass is held up by one installation (its sticky comment
    // waits at GitHub); a run of another installation that arrives
    // meanwhile is shown at once, not after the pass.
    let dir = tempfile::tempdir().unwrap();
    let fake = github_with_pull_requests(dir.path(), 2).await;
    let comment = fake.hold("POST", "/comments");
    let service = service(dir.path(), &dir.path().join("held.db"), &fake, &[]);
    let template: Value = serde_json::from_slice(&fixture("pull_request.opened.json")).unwrap();
    let client = taskmaster::agent::http_client_builder().build().unwrap();
    let deliver = |i: usize| {
        let body = payload(&template, i);
        let (client, url) = (client.clone(), service.webhook_url());
        async move {
            let (status, _) = post(
                &client,
                &url,
                Some("pull_request"),
                Some(&format!("held-{i}")),
                &body,
                Some(&sign(SECRET, &body)),
            )
            .await;
            assert!(status.is_success(), "{status}");
        }
    };
    deliver(0).await;
    tokio::time::timeout(Duration::from_secs(30), comment.arrived())
        .await
        .expect("the first run's sticky comment reaches GitHub");
    deliver(1).await;
    let (second, _) = subject(1);
    let deadline = Instant::now() + Duration::from_secs(20);
    while fake.check_runs(&second).is_empty() {
        assert!(
            Instant::now() < deadline,
            "no check run for the second run while the first installation's comment is held\n{}",
            service.logs_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    comment.release();
    // Both runs then get their sticky comment, and no second check run.
    let deadline = Instant::now() + Duration::from_secs(30);
    while (0..2).any(|i| fake.comments(&subject(i).0, i as u64 + 1).is_empty()) {
        assert!(Instant::now() < deadline, "{}", service.logs_text());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for i in 0..2 {
        assert_eq!(fake.check_runs(&subject(i).0).len(), 1);
    }
}
