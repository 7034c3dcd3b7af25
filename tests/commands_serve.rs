//! Comment commands end to end: the real `taskmaster serve` binary, signed
//! `issue_comment` webhooks, and a wiremock GitHub that answers the
//! permission API and records replies and reactions.
//!
//! - a collaborator's `/retry` runs the failed step again and the check run
//!   follows it to success; 👀 then 👍 on the comment, no reply needed;
//! - a read-only user's `/retry` is refused with a reply that quotes the
//!   command, 👎, and nothing runs;
//! - a bot's comment and an edited comment do nothing at all;
//! - a fork's pull request runs nothing until a maintainer's `/approve`;
//! - every command is in the audit log.

mod harness;

/// The repository of the fixtures' payloads.
fn hello_world() -> taskmaster::github::RepoName {
    taskmaster::github::RepoName::parse("Codertocat/Hello-World").unwrap()
}

use std::path::Path;
use std::time::{Duration, Instant};

use harness::{ChildService, SECRET, fixture, post, sign};
use serde_json::{Value, json};
use taskmaster::store::prelude::*;
use taskmaster::store::{SqliteStore, Store};
use wiremock::matchers::{method, path, path_regex};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

const PRIVATE_KEY: &str = include_str!("fixtures/github/app-key.pem");
const REPO: &str = "/repos/Codertocat/Hello-World";

/// A wiremock GitHub: tokens, check runs, comments, reactions, the
/// permission API (`maintainer` may write, `reader` may read) and no
/// `.github/taskmaster.yml`.
async fn github() -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/app/installations/42/access_tokens"))
        .respond_with(ResponseTemplate::new(201).set_body_json(json!({
            "token": "ghs_commands",
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
        .and(path_regex(
            r"^/repos/Codertocat/Hello-World/check-runs/\d+$",
        ))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"id": 555})))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path_regex(
            r"^/repos/Codertocat/Hello-World/issues/\d+/comments$",
        ))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!([])))
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path_regex(
            r"^/repos/Codertocat/Hello-World/issues/\d+/comments$",
        ))
        .respond_with(ResponseTemplate::new(201).set_body_json(json!({"id": 777})))
        .mount(&server)
        .await;
    Mock::given(method("PATCH"))
        .and(path_regex(
            r"^/repos/Codertocat/Hello-World/issues/comments/\d+$",
        ))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"id": 777})))
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path_regex(
            r"^/repos/Codertocat/Hello-World/issues/comments/\d+/reactions$",
        ))
        .respond_with(ResponseTemplate::new(201).set_body_json(json!({"id": 1, "content": "eyes"})))
        .mount(&server)
        .await;
    for (user, permission) in [("maintainer", "write"), ("reader", "read")] {
        Mock::given(method("GET"))
            .and(path(format!("{REPO}/collaborators/{user}/permission")))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({
                "permission": permission,
                "role_name": permission,
                "user": { "login": user, "id": 1 },
            })))
            .mount(&server)
            .await;
    }
    Mock::given(method("GET"))
        .and(path(format!("{REPO}/contents/.github/taskmaster.yml")))
        .respond_with(ResponseTemplate::new(404).set_body_json(json!({"message": "Not Found"})))
        .mount(&server)
        .await;
    server
}

/// `review`: `check` fails until the file `gate` exists, then `after` runs.
fn workflows_dir(dir: &Path, gate: &Path) -> std::path::PathBuf {
    let workflows = dir.join("workflows");
    std::fs::create_dir(&workflows).unwrap();
    let yml = format!(
        "name: review\non: {{ pull_request: {{ actions: [opened] }} }}\nsteps:\n  \
         check: {{ agent: command, with: {{ run: [\"test\", \"-f\", \"{}\"] }} }}\n  \
         after: {{ agent: command, needs: check, with: {{ run: [\"echo\", \"after\"] }} }}\n",
        gate.display()
    );
    std::fs::write(workflows.join("review.yml"), yml).unwrap();
    workflows
}

fn pr_opened(fork: bool) -> Vec<u8> {
    let mut v: Value = serde_json::from_slice(&fixture("pull_request.opened.json")).unwrap();
    v["installation"] = json!({ "id": 42 });
    if fork {
        v["pull_request"]["head"]["repo"]["full_name"] = "mallory/Hello-World".into();
        v["pull_request"]["author_association"] = "CONTRIBUTOR".into();
    }
    serde_json::to_vec(&v).unwrap()
}

/// A comment on PR #2 by `login` (`association`), `action` created or edited.
fn comment(
    body: &str,
    login: &str,
    kind: &str,
    association: &str,
    action: &str,
    id: i64,
) -> Vec<u8> {
    let mut v: Value = serde_json::from_slice(&fixture("issue_comment.created.json")).unwrap();
    v["action"] = action.into();
    v["installation"] = json!({ "id": 42 });
    v["issue"]["number"] = 2.into();
    v["issue"]["pull_request"] =
        json!({ "url": "https://api.github.com/repos/Codertocat/Hello-World/pulls/2" });
    let user = json!({ "login": login, "id": 9000 + id, "type": kind });
    v["comment"]["id"] = id.into();
    // Written now, as GitHub stamps it (`/approve` approves what was seen then).
    v["comment"]["created_at"] = chrono::Utc::now().to_rfc3339().into();
    v["comment"]["body"] = body.into();
    v["comment"]["user"] = user.clone();
    v["comment"]["author_association"] = association.into();
    v["sender"] = user;
    serde_json::to_vec(&v).unwrap()
}

async fn deliver(service: &ChildService, event: &str, delivery: &str, body: &[u8]) {
    let client = taskmaster::agent::http_client_builder().build().unwrap();
    let (status, _) = post(
        &client,
        &service.webhook_url(),
        Some(event),
        Some(delivery),
        body,
        Some(&sign(SECRET, body)),
    )
    .await;
    assert!(status.is_success(), "{status}");
}

async fn requests(server: &MockServer, m: &str, path_re: &str) -> Vec<Request> {
    let re = regex::Regex::new(path_re).unwrap();
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

/// Reactions posted on comment `id`, in order.
async fn reactions(server: &MockServer, id: i64) -> Vec<String> {
    requests(
        server,
        "POST",
        &format!("^{REPO}/issues/comments/{id}/reactions$"),
    )
    .await
    .iter()
    .map(|r| body(r)["content"].as_str().unwrap().to_owned())
    .collect()
}

/// Comment bodies posted that start by quoting a command (the replies).
async fn replies(server: &MockServer) -> Vec<String> {
    requests(server, "POST", r"/issues/\d+/comments$")
        .await
        .iter()
        .map(|r| body(r)["body"].as_str().unwrap().to_owned())
        .filter(|b| b.starts_with("> "))
        .collect()
}

async fn wait_for<F, Fut>(what: &str, service: &ChildService, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(30);
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

async fn open_store(db: &Path) -> SqliteStore {
    SqliteStore::open(db.to_str().unwrap()).await.unwrap()
}

/// The state and step states of the newest run.
async fn newest_run(store: &SqliteStore) -> Option<(String, Vec<(String, String)>, bool)> {
    let ids = store.subject_runs(&hello_world(), 2, 1).await.unwrap();
    let snap = store.run(*ids.first()?).await.unwrap()?;
    Some((
        snap.run.state.to_string(),
        snap.steps
            .iter()
            .map(|s| (s.step.clone(), s.state.as_str().to_owned()))
            .collect(),
        snap.run.waiting_approval,
    ))
}

fn start(dir: &Path, server: &MockServer, gate: &Path) -> (ChildService, std::path::PathBuf) {
    let workflows = workflows_dir(dir, gate);
    let db = dir.join("commands.db");
    let service = ChildService::start(
        &db,
        &[
            ("TASKMASTER_WORKFLOWS", workflows.to_str().unwrap()),
            ("GITHUB_APP_ID", "12345"),
            ("GITHUB_PRIVATE_KEY", PRIVATE_KEY),
            ("GITHUB_API_URL", &server.uri()),
            ("GITHUB_APP_SLUG", "taskmaster"),
            ("TASKMASTER_REPORT_INTERVAL_MS", "100"),
            ("TASKMASTER_OUTBOX_POLL_MS", "50"),
        ],
    );
    (service, db)
}

#[tokio::test]
async fn retry_from_a_collaborator_acts_and_from_a_reader_is_refused() {
    let server = github().await;
    let dir = tempfile::tempdir().unwrap();
    let gate = dir.path().join("gate");
    let (service, db) = start(dir.path(), &server, &gate);
    let store = open_store(&db).await;

    deliver(&service, "pull_request", "cmd-pr-1", &pr_opened(false)).await;
    wait_for("the run to fail", &service, || async {
        newest_run(&store).await.is_some_and(|r| r.0 == "failed")
    })
    .await;

    // A read-only user asks: refused with a quoting reply, 👀 never, 👎.
    deliver(
        &service,
        "issue_comment",
        "cmd-reader-1",
        &comment("/retry", "reader", "User", "COLLABORATOR", "created", 501),
    )
    .await;
    wait_for("the refusal", &service, || async {
        !replies(&server).await.is_empty() && !reactions(&server, 501).await.is_empty()
    })
    .await;
    let refusal = replies(&server).await.remove(0);
    assert!(refusal.starts_with("> /retry\n\n@reader "), "{refusal}");
    assert!(
        refusal.contains("needs write access") && refusal.contains("you have read"),
        "{refusal}"
    );
    assert_eq!(reactions(&server, 501).await, ["-1"]);
    assert_eq!(newest_run(&store).await.unwrap().0, "failed", "nothing ran");

    // A bot's and an edited comment's commands do nothing at all.
    deliver(
        &service,
        "issue_comment",
        "cmd-bot-1",
        &comment("/retry", "helper[bot]", "Bot", "NONE", "created", 502),
    )
    .await;
    deliver(
        &service,
        "issue_comment",
        "cmd-edit-1",
        &comment(
            "/retry",
            "maintainer",
            "User",
            "COLLABORATOR",
            "edited",
            503,
        ),
    )
    .await;

    // The collaborator's /retry, with the step now able to pass.
    std::fs::write(&gate, "").unwrap();
    deliver(
        &service,
        "issue_comment",
        "cmd-maint-1",
        &comment(
            "Thanks!\n\n/retry\n\n> /cancel (quoted: not a command)",
            "maintainer",
            "User",
            "COLLABORATOR",
            "created",
            504,
        ),
    )
    .await;
    wait_for("the retried run to succeed", &service, || async {
        newest_run(&store).await.is_some_and(|r| r.0 == "succeeded")
    })
    .await;
    wait_for("the 👍", &service, || async {
        reactions(&server, 504).await.len() == 2
    })
    .await;
    assert_eq!(reactions(&server, 504).await, ["eyes", "+1"]);
    // The same delivery again (GitHub's redelivery) adds nothing.
    deliver(
        &service,
        "issue_comment",
        "cmd-maint-1",
        &comment(
            "/retry",
            "maintainer",
            "User",
            "COLLABORATOR",
            "created",
            504,
        ),
    )
    .await;

    // The check run followed the retry to success.
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
    tokio::time::sleep(Duration::from_millis(500)).await;

    assert!(reactions(&server, 502).await.is_empty(), "a bot's comment");
    assert!(
        reactions(&server, 503).await.is_empty(),
        "an edited comment"
    );
    assert_eq!(
        reactions(&server, 504).await,
        ["eyes", "+1"],
        "no second answer"
    );
    assert_eq!(
        replies(&server).await.len(),
        1,
        "only the refusal needed a reply"
    );
    // The permission API was asked once per user (then cached); never for bots.
    let asked = requests(&server, "GET", r"/collaborators/[^/]+/permission$").await;
    let mut users: Vec<&str> = asked
        .iter()
        .map(|r| r.url.path().split('/').nth(5).unwrap())
        .collect();
    users.sort_unstable();
    assert_eq!(users, ["maintainer", "reader"]);

    let audit = store.audit_entries(None, 10).await.unwrap();
    let seen: Vec<(String, String, String)> = audit
        .iter()
        .rev()
        .map(|e| (e.actor.clone(), e.action.clone(), e.outcome.clone()))
        .collect();
    assert_eq!(
        seen,
        [
            ("reader".into(), "command.retry".into(), "refused".into()),
            ("maintainer".into(), "command.retry".into(), "ok".into()),
        ]
    );
    assert_eq!(audit[0].target.as_deref(), Some("Codertocat/Hello-World#2"));
    let bot = store.delivery("cmd-bot-1").await.unwrap().unwrap();
    assert!(
        bot.error
            .as_deref()
            .unwrap_or("")
            .contains("bots cannot run commands"),
        "{:?}",
        bot.error
    );
}

#[tokio::test]
async fn a_fork_pull_request_runs_nothing_until_approved() {
    let server = github().await;
    let dir = tempfile::tempdir().unwrap();
    let gate = dir.path().join("gate");
    std::fs::write(&gate, "").unwrap();
    let (service, db) = start(dir.path(), &server, &gate);
    let store = open_store(&db).await;

    deliver(&service, "pull_request", "fork-pr-1", &pr_opened(true)).await;
    wait_for("the check run to ask for approval", &service, || async {
        requests(&server, "PATCH", r"/check-runs/555$")
            .await
            .iter()
            .chain(requests(&server, "POST", r"/check-runs$").await.iter())
            .any(|r| body(r)["conclusion"] == "action_required")
    })
    .await;
    let run = newest_run(&store).await.unwrap();
    assert!(run.2, "the run waits for approval");
    assert_eq!(run.0, "queued");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let ids = store.subject_runs(&hello_world(), 2, 1).await.unwrap();
    assert!(
        store.attempts(ids[0]).await.unwrap().is_empty(),
        "nothing reached an agent before approval"
    );
    // The check run offers the "Approve run" button.
    let all: Vec<Value> = requests(&server, "POST", r"/check-runs$")
        .await
        .iter()
        .chain(requests(&server, "PATCH", r"/check-runs/555$").await.iter())
        .map(body)
        .collect();
    assert!(
        all.iter().any(|b| b["actions"]
            .as_array()
            .is_some_and(|a| a.iter().any(|x| x["identifier"] == "approve"))),
        "{all:#?}"
    );

    // The fork's author cannot approve their own run.
    deliver(
        &service,
        "issue_comment",
        "fork-self-1",
        &comment("/approve", "mallory", "User", "CONTRIBUTOR", "created", 601),
    )
    .await;
    wait_for("the refusal", &service, || async {
        reactions(&server, 601).await == ["-1"]
    })
    .await;
    assert!(newest_run(&store).await.unwrap().2, "still waiting");

    deliver(
        &service,
        "issue_comment",
        "fork-approve-1",
        &comment("/approve", "maintainer", "User", "MEMBER", "created", 602),
    )
    .await;
    wait_for("the approved run to succeed", &service, || async {
        newest_run(&store)
            .await
            .is_some_and(|r| r.0 == "succeeded" && !r.2)
    })
    .await;
    wait_for("the 👍", &service, || async {
        reactions(&server, 602).await == ["eyes", "+1"]
    })
    .await;
    let events = store.run_events(ids[0]).await.unwrap();
    assert!(
        events
            .iter()
            .any(|e| e.kind == "run_approved" && e.detail.contains("@maintainer")),
        "{events:#?}"
    );
}

/// A `check_run` or `check_suite` event of ours from a fixture, about
/// `Codertocat/Hello-World` and sent by `login`.
fn check_event(name: &str, login: &str, edit: impl FnOnce(&mut Value)) -> Vec<u8> {
    let mut v: Value = serde_json::from_slice(&fixture(&format!("{name}.json"))).unwrap();
    let pr: Value = serde_json::from_slice(&pr_opened(false)).unwrap();
    v["repository"] = pr["repository"].clone();
    v["installation"] = json!({ "id": 42 });
    let id = if login == "reader" { 7001 } else { 7002 };
    v["sender"] = json!({ "login": login, "id": id, "type": "User" });
    edit(&mut v);
    serde_json::to_vec(&v).unwrap()
}

#[tokio::test]
async fn re_runs_and_buttons_from_github_act_on_our_runs() {
    const SHA: &str = "ec26c3e57ca3a959ca5aad62de7213c562f8c821";
    let server = github().await;
    let dir = tempfile::tempdir().unwrap();
    let gate = dir.path().join("gate");
    let (service, db) = start(dir.path(), &server, &gate);
    let store = open_store(&db).await;

    deliver(&service, "pull_request", "rr-pr-1", &pr_opened(false)).await;
    wait_for("the run to fail", &service, || async {
        newest_run(&store).await.is_some_and(|r| r.0 == "failed")
    })
    .await;
    let first = store.subject_runs(&hello_world(), 2, 1).await.unwrap()[0];

    // A reader presses "Retry failed": refused, with a reply on the PR.
    let button = check_event("check_run.requested_action", "reader", |v| {
        v["check_run"]["app"]["id"] = 12345.into();
        v["check_run"]["external_id"] = first.to_string().into();
        v["check_run"]["name"] = "taskmaster / review".into();
        v["check_run"]["head_sha"] = SHA.into();
        v["requested_action"] = json!({ "identifier": "retry" });
    });
    deliver(&service, "check_run", "rr-button-1", &button).await;
    wait_for("the refusal", &service, || async {
        !replies(&server).await.is_empty()
    })
    .await;
    let refusal = replies(&server).await.remove(0);
    assert!(
        refusal.starts_with("> /retry (from the check run)"),
        "{refusal}"
    );
    assert!(refusal.contains("needs write access"), "{refusal}");
    assert_eq!(newest_run(&store).await.unwrap().0, "failed");

    // A maintainer clicks Re-run on the check run: the failed step runs again.
    std::fs::write(&gate, "").unwrap();
    let rerun = check_event("check_run.rerequested", "maintainer", |v| {
        v["check_run"]["app"]["id"] = 12345.into();
        v["check_run"]["external_id"] = first.to_string().into();
        v["check_run"]["name"] = "taskmaster / review".into();
        v["check_run"]["head_sha"] = SHA.into();
    });
    deliver(&service, "check_run", "rr-rerun-1", &rerun).await;
    wait_for("the retried run to succeed", &service, || async {
        newest_run(&store).await.is_some_and(|r| r.0 == "succeeded")
    })
    .await;
    assert_eq!(
        store.subject_runs(&hello_world(), 2, 10).await.unwrap(),
        [first],
        "a retry, not a new run"
    );

    // "Re-run all checks" on a fork PR's suite (no pull_requests): the
    // commit finds the run; it has nothing to retry, so it runs afresh.
    let suite = check_event("check_suite.rerequested", "maintainer", |v| {
        v["check_suite"]["app"]["id"] = 12345.into();
        v["check_suite"]["head_sha"] = SHA.into();
        v["check_suite"]["pull_requests"] = json!([]);
    });
    deliver(&service, "check_suite", "rr-suite-1", &suite).await;
    wait_for("a fresh run to succeed", &service, || async {
        let ids = store.subject_runs(&hello_world(), 2, 10).await.unwrap();
        ids.len() == 2 && newest_run(&store).await.is_some_and(|r| r.0 == "succeeded")
    })
    .await;

    // Another app's check run is not ours: nothing happens.
    let foreign = check_event("check_run.rerequested", "maintainer", |v| {
        v["check_run"]["external_id"] = first.to_string().into();
    });
    deliver(&service, "check_run", "rr-foreign-1", &foreign).await;
    wait_for("the foreign re-run to be ignored", &service, || async {
        store
            .delivery("rr-foreign-1")
            .await
            .unwrap()
            .is_some_and(|d| {
                d.error
                    .as_deref()
                    .is_some_and(|e| e.contains("not about a run of ours"))
            })
    })
    .await;

    let audit: Vec<(String, String, String)> = store
        .audit_entries(None, 10)
        .await
        .unwrap()
        .iter()
        .rev()
        .map(|e| (e.actor.clone(), e.action.clone(), e.outcome.clone()))
        .collect();
    assert_eq!(
        audit,
        [
            (
                "reader".into(),
                "check_run.requested_action".into(),
                "refused".into()
            ),
            (
                "maintainer".into(),
                "check_run.rerequested".into(),
                "ok".into()
            ),
            (
                "maintainer".into(),
                "check_suite.rerequested".into(),
                "ok".into()
            ),
        ]
    );
}
