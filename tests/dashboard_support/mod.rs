//! A whole service on loopback for the dashboard's tests: a real SQLite
//! file, the real engine with the built-in `command` agent, the API and the
//! dashboard, and one API token per role.
//!
//! The `gated` workflow's first step waits until the test creates a file
//! (`Dash::open_gate`), so a test decides when a step changes state.

#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use secrecy::ExposeSecret;
use serde_json::{Value, json};
use taskmaster::agent::{AgentRegistry, AgentsConfig};
use taskmaster::api::{self, ApiState, auth};
use taskmaster::dashboard::{self, DashboardSettings, DashboardState, SessionKey};
use taskmaster::engine::intake::RoutingHandler;
use taskmaster::engine::{Engine, EngineConfig};
use taskmaster::server::{self, RunningServer, ServerConfig};
use taskmaster::store::prelude::*;
use taskmaster::store::{self, ActorKind, Role};
use taskmaster::webhook::WebhookSecrets;
use taskmaster::workflow::WorkflowSet;
use tokio_util::sync::CancellationToken;

/// A title no page may show as markup.
pub const EVIL_TITLE: &str = "<script>alert(1)</script> & \"quotes\"";

const REVIEW: &str = r#"
name: review
on: { pull_request: { actions: [opened] } }
steps:
  check: { agent: command, with: { run: ["sh", "-c", "echo checked {{ pr.number }}"] } }
  report: { agent: command, needs: check, with: { run: ["sh", "-c", "echo '<b>bold</b> reported'; printf '%s\\n' '```json' '{\"verdict\":\"neutral\",\"summary\":\"Looked <i>twice</i>.\",\"findings\":[{\"path\":\"src/a b.rs\",\"start_line\":2,\"end_line\":3,\"severity\":\"warning\",\"title\":\"<i>odd</i>\",\"message\":\"Look here.\"}]}' '```'"] } }
"#;

const BROKEN: &str = r#"
name: broken
on: { issues: { actions: [opened] } }
steps:
  fail: { agent: command, with: { run: ["sh", "-c", "echo 'no luck' >&2; exit 3"] } }
  after: { agent: command, needs: fail, with: { run: ["sh", "-c", "echo after"] } }
"#;

fn gated(gate: &std::path::Path) -> String {
    format!(
        r#"
name: gated
on: {{ issues: {{ actions: [opened] }} }}
steps:
  build: {{ agent: command, with: {{ run: ["sh", "-c", "while [ ! -f {gate} ]; do sleep 0.05; done; echo built"] }} }}
  test: {{ agent: command, needs: build, with: {{ run: ["sh", "-c", "echo tested"] }} }}
  lint: {{ agent: command, needs: build, with: {{ run: ["sh", "-c", "echo linted"] }} }}
  ship: {{ agent: command, needs: [test, lint], with: {{ run: ["sh", "-c", "echo shipped"] }} }}
"#,
        gate = gate.display()
    )
}

pub struct Dash {
    pub base: String,
    /// Follows no redirects: tests look at them.
    pub client: reqwest::Client,
    pub store: Arc<dyn RunStore>,
    pub tokens: HashMap<Role, String>,
    gate: std::path::PathBuf,
    running: Option<RunningServer>,
    stop: CancellationToken,
    streams: CancellationToken,
    _dir: tempfile::TempDir,
}

/// A page as fetched.
pub struct Page {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: String,
}

impl Page {
    /// Where a redirect points.
    pub fn location(&self) -> &str {
        self.headers
            .get("location")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

/// The value of `name="csrf"` in a page.
pub fn csrf_of(html: &str) -> String {
    let at = html
        .find("name=\"csrf\" value=\"")
        .unwrap_or_else(|| panic!("no CSRF field in {html}"));
    let rest = &html[at + "name=\"csrf\" value=\"".len()..];
    rest[..rest.find('"').unwrap()].to_owned()
}

/// The value of `Set-Cookie: name=...`.
pub fn set_cookie(headers: &reqwest::header::HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with(&format!("{name}=")))
        .map(|v| v.to_owned())
}

impl Dash {
    pub async fn start(public: bool) -> Dash {
        let dir = tempfile::tempdir().unwrap();
        let wf_dir = dir.path().join("workflows");
        std::fs::create_dir(&wf_dir).unwrap();
        let gate = dir.path().join("go");
        std::fs::write(wf_dir.join("review.yml"), REVIEW).unwrap();
        std::fs::write(wf_dir.join("gated.yml"), gated(&gate)).unwrap();
        std::fs::write(wf_dir.join("broken.yml"), BROKEN).unwrap();
        let lookup = |_: &str| None;
        let config = AgentsConfig::load(None, &lookup).unwrap();
        let registry = AgentRegistry::new(&config, &lookup).unwrap();
        let names: Vec<String> = registry.names().map(str::to_owned).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let workflows = Arc::new(WorkflowSet::load_dir(&wf_dir, &names).unwrap());
        let db = dir.path().join("dash.db");
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
                // A budget no test spends: the spend page has one to show.
                budgets: taskmaster::budget::Budgets {
                    global_month: taskmaster::budget::Limits {
                        usd: Some(250.0),
                        ..Default::default()
                    },
                    ..Default::default()
                },
                ..EngineConfig::default()
            },
        );
        let stop = CancellationToken::new();
        tokio::spawn(engine.clone().run(stop.clone()));
        let api_state = ApiState::new(engine.clone(), false);
        let dash_state = DashboardState::new(
            api_state.clone(),
            DashboardSettings {
                public,
                key: SessionKey::from_secret("a test session key, long enough"),
                setup_pending: false,
            },
        );
        let streams = dash_state.streams_token();
        let dash = dashboard::router(dash_state);
        let running = server::start_with(
            ServerConfig {
                addr: "127.0.0.1:0".parse().unwrap(),
                secrets: WebhookSecrets::parse("test-webhook-secret").unwrap(),
                store: store.clone(),
                handler: Arc::new(RoutingHandler::new(
                    store.clone(),
                    workflows,
                    Some(engine.clone()),
                )),
                limits: Default::default(),
            },
            api::service(api_state).merge(dash),
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
        Dash {
            base: format!("http://{}", running.local_addr),
            client: taskmaster::agent::http_client_builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            store,
            tokens,
            gate,
            running: Some(running),
            stop,
            streams,
            _dir: dir,
        }
    }

    /// Lets the `gated` workflow's `build` step finish.
    pub fn open_gate(&self) {
        std::fs::write(&self.gate, "go").unwrap();
    }

    /// GET `path` with an optional session cookie.
    pub async fn get(&self, path: &str, cookie: Option<&str>) -> Page {
        let mut req = self.client.get(format!("{}{path}", self.base));
        if let Some(c) = cookie {
            req = req.header("cookie", c);
        }
        let resp = req.send().await.unwrap();
        Page {
            status: resp.status(),
            headers: resp.headers().clone(),
            body: resp.text().await.unwrap(),
        }
    }

    /// POST a form to `path`.
    pub async fn post(&self, path: &str, cookie: Option<&str>, form: &[(&str, &str)]) -> Page {
        let mut req = self
            .client
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(
                form.iter()
                    .map(|(k, v)| format!("{k}={}", dashboard::pages::url_encode(v)))
                    .collect::<Vec<_>>()
                    .join("&"),
            );
        if let Some(c) = cookie {
            req = req.header("cookie", c);
        }
        let resp = req.send().await.unwrap();
        Page {
            status: resp.status(),
            headers: resp.headers().clone(),
            body: resp.text().await.unwrap(),
        }
    }

    /// Logs in through the form with `role`'s token; returns the `Cookie`
    /// header value of the session.
    pub async fn login(&self, role: Role) -> String {
        let form = self.get("/login", None).await;
        assert_eq!(form.status, StatusCode::OK);
        let login_cookie = set_cookie(&form.headers, "tm_login").expect("a login cookie");
        let login_cookie = login_cookie.split(';').next().unwrap().to_owned();
        let csrf = csrf_of(&form.body);
        let done = self
            .post(
                "/login",
                Some(&login_cookie),
                &[
                    ("token", &self.tokens[&role]),
                    ("csrf", &csrf),
                    ("next", "/runs"),
                ],
            )
            .await;
        assert_eq!(done.status, StatusCode::SEE_OTHER, "{}", done.body);
        let session = set_cookie(&done.headers, "tm_session").expect("a session cookie");
        session.split(';').next().unwrap().to_owned()
    }

    /// Starts a run through the API as the operator.
    pub async fn execute(&self, workflow: &str, number: u64) -> i64 {
        let body = if workflow != "review" {
            json!({"workflow": workflow, "repository": "octo/repo", "issue_number": number,
                   "context": {"title": EVIL_TITLE}})
        } else {
            json!({"workflow": workflow, "repository": "octo/repo", "pr_number": number,
                   "context": {"title": EVIL_TITLE, "head_sha": "a".repeat(40)}})
        };
        let resp = self
            .client
            .post(format!("{}/api/workflows/execute", self.base))
            .bearer_auth(&self.tokens[&Role::Operator])
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::CREATED);
        let run: Value = resp.json().await.unwrap();
        run["id"].as_i64().unwrap()
    }

    /// Waits until run `id`'s step `step` is in `state` (or the run is, when `step` is None).
    pub async fn wait_for(&self, id: i64, step: Option<&str>, state: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let snap = self
                .store
                .run(taskmaster::store::RunId(id))
                .await
                .unwrap()
                .unwrap();
            let now = match step {
                Some(s) => snap.step(s).unwrap().state.as_str(),
                None => snap.run.state.as_str(),
            };
            if now == state {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "run {id} step {step:?} is {now}, not {state}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Stops like `serve` does: live streams end first, then the server.
    pub async fn stop(mut self) {
        self.streams.cancel();
        self.stop.cancel();
        self.running.take().unwrap().stop().await.unwrap();
    }
}
