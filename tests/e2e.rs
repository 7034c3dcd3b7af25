//! The main job end to end, on real input: the real `taskmaster` binary on a
//! fresh SQLite file, a wiremock GitHub (bodies checked), the AgentAPI
//! stand-in as Claude Code, the shipped `pr_processing` and `issue_triage`
//! workflows (with the project's test command pointed at a file the test
//! controls), and GitHub's own example payloads:
//!
//! - a bad signature → 401 and nothing stored; the same delivery twice → one run;
//! - `pull_request.opened` → `pr_processing`: one check run, queued →
//!   in_progress → completed with the summary table; the sticky comment is
//!   created once and then edited;
//! - `issues.opened` with a bug label → `issue_triage`, reported in a comment;
//! - a read-only user's `/retry` → refused with a reply; a bot's → nothing;
//!   a collaborator's `/retry` → the failed step runs again and the check run
//!   follows to success;
//! - SIGKILL mid-step and a restart → the run completes and GitHub sees one
//!   check run for it.

mod harness;
mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use taskmaster::store::RunId;

use harness::{ChildService, SECRET, fixture, post, sign};
use serde_json::{Value, json};
use support::agentapi::{Behavior, StandIn};
use taskmaster::store::prelude::*;
use taskmaster::store::{SqliteStore, Store};
use wiremock::matchers::{body_partial_json, method, path, path_regex};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

const PRIVATE_KEY: &str = include_str!("fixtures/github/app-key.pem");
const REPO: &str = "/repos/Codertocat/Hello-World";
const SHA2: &str = "ec26c3e57ca3a959ca5aad62de7213c562f8c821";
const SHA3: &str = "3333333333333333333333333333333333333333";

async fn github() -> MockServer {
    let server = MockServer::start().await;
    let ok = |status: u16, body: Value| ResponseTemplate::new(status).set_body_json(body);
    Mock::given(method("POST"))
        .and(path("/app/installations/42/access_tokens"))
        .respond_with(ok(
            201,
            json!({
                "token": "ghs_e2e",
                "expires_at": (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339(),
                "permissions": { "checks": "write", "issues": "write", "pull_requests": "write" },
                "repository_selection": "all",
            }),
        ))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path_regex(
            r"^/repos/Codertocat/Hello-World/commits/[0-9a-f]+/check-runs$",
        ))
        .respond_with(ok(200, json!({"total_count": 0, "check_runs": []})))
        .mount(&server)
        .await;
    for (sha, id) in [(SHA2, 555), (SHA3, 556)] {
        Mock::given(method("POST"))
            .and(path(format!("{REPO}/check-runs")))
            .and(body_partial_json(json!({ "head_sha": sha })))
            .respond_with(ok(201, json!({ "id": id })))
            .mount(&server)
            .await;
    }
    Mock::given(method("PATCH"))
        .and(path_regex(
            r"^/repos/Codertocat/Hello-World/check-runs/\d+$",
        ))
        .respond_with(ok(200, json!({ "id": 555 })))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path_regex(
            r"^/repos/Codertocat/Hello-World/issues/\d+/comments$",
        ))
        .respond_with(ok(200, json!([])))
        .mount(&server)
        .await;
    for (number, id) in [(1, 771), (2, 772), (3, 773)] {
        Mock::given(method("POST"))
            .and(path(format!("{REPO}/issues/{number}/comments")))
            .respond_with(ok(201, json!({ "id": id })))
            .mount(&server)
            .await;
    }
    Mock::given(method("PATCH"))
        .and(path_regex(
            r"^/repos/Codertocat/Hello-World/issues/comments/\d+$",
        ))
        .respond_with(ok(200, json!({ "id": 772 })))
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path_regex(
            r"^/repos/Codertocat/Hello-World/issues/comments/\d+/reactions$",
        ))
        .respond_with(ok(201, json!({ "id": 1, "content": "eyes" })))
        .mount(&server)
        .await;
    for (user, permission) in [("maintainer", "write"), ("reader", "read")] {
        Mock::given(method("GET"))
            .and(path(format!("{REPO}/collaborators/{user}/permission")))
            .respond_with(ok(
                200,
                json!({ "permission": permission, "role_name": permission }),
            ))
            .mount(&server)
            .await;
    }
    server
}

/// Serves `text` as the repository's `.github/taskmaster.yml` (raw media type).
async fn serve_repo_config(server: &MockServer, text: String) {
    Mock::given(method("GET"))
        .and(path(format!("{REPO}/contents/.github/taskmaster.yml")))
        .respond_with(ResponseTemplate::new(200).set_body_string(text))
        .mount(server)
        .await;
}

/// The shipped workflows, unchanged: the repository's `.github/taskmaster.yml`
/// ([`repo_config`]) sets how it is tested.
fn workflows(dir: &Path) -> PathBuf {
    let out = dir.join("workflows");
    std::fs::create_dir(&out).unwrap();
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("workflows");
    for name in ["pr_processing.yml", "issue_triage.yml"] {
        std::fs::copy(shipped.join(name), out.join(name)).unwrap();
    }
    out
}

/// The repository's `.github/taskmaster.yml`: its tests are `test -f <gate>`
/// (the shipped `run_tests` step reads `inputs.test_command`).
fn repo_config(gate: &Path) -> String {
    format!(
        "workflows:\n  pr_processing:\n    inputs: {{ test_command: \"test -f {}\" }}\n",
        gate.display()
    )
}

fn with_installation(name: &str, edit: impl FnOnce(&mut Value)) -> Vec<u8> {
    let mut v: Value = serde_json::from_slice(&fixture(name)).unwrap();
    v["installation"] = json!({ "id": 42 });
    edit(&mut v);
    serde_json::to_vec(&v).unwrap()
}

fn comment(body: &str, login: &str, kind: &str, id: i64) -> Vec<u8> {
    with_installation("issue_comment.created.json", |v| {
        v["issue"]["number"] = 2.into();
        v["issue"]["pull_request"] =
            json!({ "url": "https://api.github.com/repos/Codertocat/Hello-World/pulls/2" });
        let user = json!({ "login": login, "id": 8000 + id, "type": kind });
        v["comment"]["id"] = id.into();
        v["comment"]["body"] = body.into();
        v["comment"]["user"] = user.clone();
        v["comment"]["author_association"] = "COLLABORATOR".into();
        v["sender"] = user;
    })
}

async fn deliver(service: &ChildService, event: &str, id: &str, body: &[u8]) -> u16 {
    let client = taskmaster::agent::http_client_builder().build().unwrap();
    let (status, _) = post(
        &client,
        &service.webhook_url(),
        Some(event),
        Some(id),
        body,
        Some(&sign(SECRET, body)),
    )
    .await;
    status.as_u16()
}

async fn requests(server: &MockServer, m: &str, re: &str) -> Vec<Request> {
    let re = regex::Regex::new(re).unwrap();
    server
        .received_requests()
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.method.as_str() == m && re.is_match(r.url.path()))
        .collect()
}

fn body(r: &Request) -> Value {
    serde_json::from_slice(&r.body).unwrap()
}

async fn wait_for<F, Fut>(what: &str, service: &ChildService, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(60);
    while !check().await {
        if Instant::now() >= deadline {
            panic!(
                "timed out waiting for {what}\nservice log:\n{}",
                service.logs_text()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// (state, steps) of the newest run of `workflow` on subject `number`.
async fn run_of(store: &SqliteStore, number: i64, workflow: &str) -> Option<(i64, String)> {
    for id in store
        .subject_runs(
            &taskmaster::github::RepoName::parse("Codertocat/Hello-World").unwrap(),
            number,
            10,
        )
        .await
        .unwrap()
    {
        let snap = store.run(id).await.unwrap()?;
        if snap.run.workflow == workflow {
            return Some((id.0, snap.run.state.to_string()));
        }
    }
    None
}

fn start(dir: &Path, db: &Path, server: &MockServer, agent: &StandIn) -> ChildService {
    let workflows = workflows_dir_once(dir);
    ChildService::start(
        db,
        &[
            ("TASKMASTER_WORKFLOWS", workflows.to_str().unwrap()),
            ("GITHUB_APP_ID", "12345"),
            ("GITHUB_PRIVATE_KEY", PRIVATE_KEY),
            ("GITHUB_API_URL", &server.uri()),
            ("CLAUDE_CODE_ENDPOINT", &agent.url()),
            ("PUBLIC_URL", "https://tm.example.com"),
            ("TASKMASTER_REPORT_INTERVAL_MS", "100"),
            ("TASKMASTER_OUTBOX_POLL_MS", "50"),
            ("TASKMASTER_LEASE_MS", "1500"),
        ],
    )
}

fn workflows_dir_once(dir: &Path) -> PathBuf {
    let out = dir.join("workflows");
    if out.exists() { out } else { workflows(dir) }
}

#[tokio::test]
async fn the_main_job_end_to_end() {
    let server = github().await;
    // Turns of 250 ms: long enough that the report interval (100 ms) shows
    // every state of the check run.
    let agent = StandIn::start(Behavior {
        work: Duration::from_millis(250),
        updates: 1,
        answer: "Reviewed: nothing to report".into(),
        ..Behavior::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let gate = dir.path().join("tests-pass");
    serve_repo_config(&server, repo_config(&gate)).await;
    let db = dir.path().join("e2e.db");
    let mut service = start(dir.path(), &db, &server, &agent);
    let store = SqliteStore::open(db.to_str().unwrap()).await.unwrap();

    // A bad signature: 401, nothing stored.
    let pr = with_installation("pull_request.opened.json", |_| {});
    let client = taskmaster::agent::http_client_builder().build().unwrap();
    let (status, _) = post(
        &client,
        &service.webhook_url(),
        Some("pull_request"),
        Some("e2e-forged"),
        &pr,
        Some(&sign("wrong-secret", &pr)),
    )
    .await;
    assert_eq!(status.as_u16(), 401);
    assert!(store.delivery("e2e-forged").await.unwrap().is_none());

    // The PR, delivered twice (a redelivery): one run.
    assert_eq!(
        deliver(&service, "pull_request", "e2e-pr-2", &pr).await,
        202
    );
    assert_eq!(
        deliver(&service, "pull_request", "e2e-pr-2", &pr).await,
        200
    );
    wait_for("pr_processing to fail on its tests", &service, || async {
        run_of(&store, 2, "pr_processing")
            .await
            .is_some_and(|r| r.1 == "failed")
    })
    .await;
    assert_eq!(
        store.runs_for_delivery("e2e-pr-2").await.unwrap().len(),
        1,
        "one run for a delivery received twice"
    );

    // The issue with a bug label: issue_triage, reported in a comment.
    let issue = with_installation("issues.opened.json", |_| {});
    assert_eq!(
        deliver(&service, "issues", "e2e-issue-1", &issue).await,
        202
    );
    wait_for("issue_triage to succeed", &service, || async {
        run_of(&store, 1, "issue_triage")
            .await
            .is_some_and(|r| r.1 == "succeeded")
    })
    .await;
    wait_for(
        "the issue's comment to show the result",
        &service,
        || async {
            let bodies: Vec<String> = requests(&server, "POST", r"/issues/1/comments$")
                .await
                .iter()
                .chain(
                    requests(&server, "PATCH", r"/issues/comments/771$")
                        .await
                        .iter(),
                )
                .map(|r| body(r)["body"].as_str().unwrap_or("").to_owned())
                .collect();
            bodies
                .last()
                .is_some_and(|b| b.contains("issue_triage") && b.contains("succeeded"))
        },
    )
    .await;
    assert!(
        requests(&server, "POST", r"/check-runs$")
            .await
            .iter()
            .all(|r| body(r)["name"] != "taskmaster / issue_triage"),
        "an issue has no commit: no check run"
    );

    // A reader's /retry is refused; a bot's does nothing.
    assert_eq!(
        deliver(
            &service,
            "issue_comment",
            "e2e-c-reader",
            &comment("/retry", "reader", "User", 1)
        )
        .await,
        202
    );
    assert_eq!(
        deliver(
            &service,
            "issue_comment",
            "e2e-c-bot",
            &comment("/retry", "ci[bot]", "Bot", 2)
        )
        .await,
        202
    );
    wait_for("the refusal", &service, || async {
        requests(&server, "POST", r"/issues/2/comments$")
            .await
            .iter()
            .any(|r| {
                body(r)["body"]
                    .as_str()
                    .unwrap_or("")
                    .starts_with("> /retry\n\n@reader")
            })
    })
    .await;

    // The collaborator's /retry, with the tests now passing.
    std::fs::write(&gate, "").unwrap();
    assert_eq!(
        deliver(
            &service,
            "issue_comment",
            "e2e-c-maint",
            &comment("/retry", "maintainer", "User", 3)
        )
        .await,
        202
    );
    wait_for("the retried run to succeed", &service, || async {
        run_of(&store, 2, "pr_processing")
            .await
            .is_some_and(|r| r.1 == "succeeded")
    })
    .await;
    wait_for(
        "the check run to complete with success",
        &service,
        || async {
            requests(&server, "PATCH", r"/check-runs/555$")
                .await
                .last()
                .is_some_and(|r| body(r)["conclusion"] == "success")
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    // The PR's check run: created once, then (queued →) in_progress → completed.
    let created: Vec<Value> = requests(&server, "POST", r"/check-runs$")
        .await
        .iter()
        .map(body)
        .filter(|b| b["head_sha"] == SHA2)
        .collect();
    assert_eq!(created.len(), 1, "one check run for the PR");
    assert_eq!(created[0]["name"], "taskmaster / pr_processing");
    let (run_id, _) = run_of(&store, 2, "pr_processing").await.unwrap();
    assert_eq!(created[0]["external_id"], run_id.to_string());
    assert_eq!(
        created[0]["details_url"],
        format!("https://tm.example.com/runs/{run_id}")
    );
    let mut statuses: Vec<String> = vec![created[0]["status"].as_str().unwrap().to_owned()];
    let patches = requests(&server, "PATCH", r"/check-runs/555$").await;
    statuses.extend(
        patches
            .iter()
            .map(|r| body(r)["status"].as_str().unwrap_or("").to_owned()),
    );
    statuses.dedup();
    // Created `queued`, or straight `in_progress` when the first step had
    // already started by the reporter's first pass; never backwards.
    let order = |s: &String| {
        ["queued", "in_progress", "completed"]
            .iter()
            .position(|o| o == s)
    };
    let ranks: Vec<Option<usize>> = statuses.iter().map(order).collect();
    assert!(
        ranks.iter().all(Option::is_some) && ranks.windows(2).all(|w| w[0] < w[1]),
        "statuses out of order: {statuses:?}"
    );
    assert!(statuses.contains(&"in_progress".to_owned()), "{statuses:?}");
    assert_eq!(
        statuses.last().map(String::as_str),
        Some("completed"),
        "{statuses:?}"
    );
    let last = body(patches.last().unwrap());
    let summary = last["output"]["summary"].as_str().unwrap();
    for step in [
        "analyze_pr",
        "generate_tasks",
        "validate_code",
        "run_tests",
        "security_audit",
    ] {
        assert!(
            summary.contains(&format!("`{step}`")),
            "{step} missing from {summary}"
        );
    }
    assert!(last["output"]["summary"].as_str().unwrap().len() <= 65_535);
    // …and one sticky comment, created once and then edited.
    let sticky: Vec<Request> = requests(&server, "POST", r"/issues/2/comments$")
        .await
        .into_iter()
        .filter(|r| {
            body(r)["body"]
                .as_str()
                .unwrap_or("")
                .starts_with("<!-- taskmaster:sticky -->")
        })
        .collect();
    assert_eq!(sticky.len(), 1, "one sticky comment");
    assert!(
        !requests(&server, "PATCH", r"/issues/comments/772$")
            .await
            .is_empty()
    );
    // The bot's comment was never answered.
    assert!(
        requests(&server, "POST", r"/issues/comments/2/reactions$")
            .await
            .is_empty()
    );

    // SIGKILL mid-step, then a restart on the same database.
    agent.set_behavior(|b| b.work = Duration::from_secs(3));
    let pr3 = with_installation("pull_request.opened.json", |v| {
        v["number"] = 3.into();
        v["pull_request"]["number"] = 3.into();
        v["pull_request"]["head"]["sha"] = SHA3.into();
    });
    assert_eq!(
        deliver(&service, "pull_request", "e2e-pr-3", &pr3).await,
        202
    );
    wait_for(
        "a step of the new run to be mid-attempt, reported",
        &service,
        || async {
            let Some((id, _)) = run_of(&store, 3, "pr_processing").await else {
                return false;
            };
            let running = store
                .run(RunId(id))
                .await
                .unwrap()
                .is_some_and(|s| s.steps.iter().any(|s| s.state.as_str() == "running"));
            running
                && !requests(&server, "PATCH", r"/check-runs/556$")
                    .await
                    .is_empty()
        },
    )
    .await;
    service.signal(libc::SIGKILL);
    service.wait_exit(Duration::from_secs(10));
    agent.set_behavior(|b| b.work = Duration::from_millis(30));
    let service = start(dir.path(), &db, &server, &agent);
    wait_for(
        "the interrupted run to finish after the restart",
        &service,
        || async {
            run_of(&store, 3, "pr_processing")
                .await
                .is_some_and(|r| r.1 == "succeeded")
        },
    )
    .await;
    wait_for("its check run to complete", &service, || async {
        requests(&server, "PATCH", r"/check-runs/556$")
            .await
            .last()
            .is_some_and(|r| body(r)["conclusion"] == "success")
    })
    .await;
    let created3 = requests(&server, "POST", r"/check-runs$")
        .await
        .iter()
        .filter(|r| body(r)["head_sha"] == SHA3)
        .count();
    assert_eq!(created3, 1, "GitHub sees one check run across the crash");
    let (id3, _) = run_of(&store, 3, "pr_processing").await.unwrap();
    let events = store.run_events(RunId(id3)).await.unwrap();
    assert!(
        events.iter().any(|e| e.kind == "lease_expired"),
        "the killed attempt's lease was reaped: {events:#?}"
    );
}
