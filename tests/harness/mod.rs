//! Test harness for intake: a real taskmaster service on an ephemeral loopback
//! port, over a real SQLite file in a temporary directory, driven with real
//! HTTP. Also helpers to run the real binary as a child process.
#![allow(dead_code)] // each test crate uses a different part of the harness

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use taskmaster::dispatch::{AcceptAll, DeliveryHandler};
use taskmaster::server::{self, RunningServer, ServerConfig};
use taskmaster::store::{self, Store};
use taskmaster::webhook::{Receipt, WebhookSecrets};

pub use taskmaster::webhook::sign;

/// The webhook secret the harness signs with unless told otherwise.
pub const SECRET: &str = "test-webhook-secret";

/// A service running in this process.
pub struct TestService {
    pub base_url: String,
    pub store: Arc<dyn Store>,
    pub db_path: PathBuf,
    pub client: reqwest::Client,
    running: Option<RunningServer>,
    _dir: tempfile::TempDir,
}

impl TestService {
    /// Starts with [`SECRET`] and a handler that accepts everything.
    pub async fn start() -> Self {
        Self::start_with(SECRET, Arc::new(AcceptAll)).await
    }

    /// Starts with `secrets` (comma-separated) and `handler`.
    pub async fn start_with(secrets: &str, handler: Arc<dyn DeliveryHandler>) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let db_path = dir.path().join("taskmaster.db");
        Self::start_on(dir, db_path, secrets, handler).await
    }

    /// Starts over an existing directory and database file.
    pub async fn start_on(
        dir: tempfile::TempDir,
        db_path: PathBuf,
        secrets: &str,
        handler: Arc<dyn DeliveryHandler>,
    ) -> Self {
        let store = store::connect(&format!("sqlite://{}", db_path.display()))
            .await
            .expect("open store");
        let running = server::start(ServerConfig {
            addr: "127.0.0.1:0".parse().unwrap(),
            secrets: WebhookSecrets::parse(secrets).unwrap(),
            store: store.clone(),
            handler,
            limits: Default::default(),
        })
        .await
        .expect("start server");
        TestService {
            base_url: format!("http://{}", running.local_addr),
            store,
            db_path,
            client: taskmaster::agent::http_client_builder().build().unwrap(),
            running: Some(running),
            _dir: dir,
        }
    }

    /// The webhook URL.
    pub fn webhook_url(&self) -> String {
        format!("{}/api/github/webhooks", self.base_url)
    }

    /// Posts `body` as delivery `delivery` of `event`, signed with [`SECRET`].
    pub async fn deliver(&self, event: &str, delivery: &str, body: &[u8]) -> (StatusCode, Receipt) {
        let signature = sign(SECRET, body);
        self.post(Some(event), Some(delivery), body, Some(&signature))
            .await
    }

    /// Posts with full control over the headers (`None` leaves one out).
    pub async fn post(
        &self,
        event: Option<&str>,
        delivery: Option<&str>,
        body: &[u8],
        signature: Option<&str>,
    ) -> (StatusCode, Receipt) {
        post(
            &self.client,
            &self.webhook_url(),
            event,
            delivery,
            body,
            signature,
        )
        .await
    }

    /// Number of rows in the inbox.
    pub async fn stored_count(&self) -> i64 {
        count_rows(&self.db_path).await
    }

    /// Stops gracefully and returns the temp dir (to restart on the same file).
    pub async fn stop(mut self) -> (tempfile::TempDir, PathBuf) {
        self.running
            .take()
            .unwrap()
            .stop()
            .await
            .expect("clean stop");
        (self._dir, self.db_path)
    }
}

/// Posts one webhook request.
pub async fn post(
    client: &reqwest::Client,
    url: &str,
    event: Option<&str>,
    delivery: Option<&str>,
    body: &[u8],
    signature: Option<&str>,
) -> (StatusCode, Receipt) {
    let mut request = client
        .post(url)
        .header("content-type", "application/json")
        .header("user-agent", "GitHub-Hookshot/test")
        .body(body.to_vec());
    if let Some(event) = event {
        request = request.header("x-github-event", event);
    }
    if let Some(delivery) = delivery {
        request = request.header("x-github-delivery", delivery);
    }
    if let Some(signature) = signature {
        request = request.header("x-hub-signature-256", signature);
    }
    let response = request.send().await.expect("request sent");
    let status = response.status();
    let text = response.text().await.expect("response body");
    let receipt = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("answer is not a receipt ({e}): {status} {text}"));
    (status, receipt)
}

/// Counts inbox rows through a fresh connection of its own.
pub async fn count_rows(db_path: &Path) -> i64 {
    rusqlite::Connection::open(db_path)
        .expect("open db")
        .query_row("SELECT COUNT(*) FROM deliveries", [], |r| r.get(0))
        .expect("count")
}

/// A fixture payload from `tests/fixtures/webhooks/`.
pub fn fixture(name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/webhooks")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("fixture {}: {e}", path.display()))
}

/// Every fixture as (file name, event name, payload).
pub fn all_fixtures() -> Vec<(String, String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/webhooks");
    let mut all: Vec<_> = std::fs::read_dir(&dir)
        .expect("fixtures dir")
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".json"))
        .map(|name| {
            let event = name.split('.').next().unwrap().to_string();
            let body = fixture(&name);
            (name, event, body)
        })
        .collect();
    all.sort();
    all
}

/// The real `taskmaster` binary running as a child process.
pub struct ChildService {
    pub child: Child,
    pub base_url: String,
    /// Every line the service wrote to stdout (its JSON logs), so far.
    pub logs: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    /// The service's data directory (mirrors, workspaces).
    pub data_dir: tempfile::TempDir,
}

impl ChildService {
    /// The service's log so far, one line per entry (for failure messages).
    pub fn logs_text(&self) -> String {
        self.logs.lock().unwrap().join("\n")
    }

    /// Starts `taskmaster serve` on an ephemeral port over `db_path`, with JSON
    /// logs, and waits for its "listening" line.
    pub fn start(db_path: &Path, extra_env: &[(&str, &str)]) -> Self {
        Self::start_url(&format!("sqlite://{}", db_path.display()), extra_env)
    }

    /// Starts `taskmaster serve` on an ephemeral port over the database at
    /// `database_url` (SQLite or PostgreSQL), as [`ChildService::start`].
    ///
    /// Its data directory is a fresh temporary one, and runs get an empty
    /// directory each instead of a checkout (`TASKMASTER_WORKSPACES=off`:
    /// these tests have no git server; `tests/workspaces.rs` has one), unless
    /// `extra_env` says otherwise.
    pub fn start_url(database_url: &str, extra_env: &[(&str, &str)]) -> Self {
        Self::start_with_secret(database_url, extra_env, Some(SECRET))
    }

    /// As [`ChildService::start_url`], with `secret` as
    /// `GITHUB_WEBHOOK_SECRET`, or none (a service waiting for its App to
    /// be registered).
    pub fn start_with_secret(
        database_url: &str,
        extra_env: &[(&str, &str)],
        secret: Option<&str>,
    ) -> Self {
        let data_dir = tempfile::tempdir().expect("data dir");
        let mut command = Command::new(env!("CARGO_BIN_EXE_taskmaster"));
        command
            .arg("serve")
            .env_clear()
            .env("TASKMASTER_DATA_DIR", data_dir.path())
            .env("TASKMASTER_WORKSPACES", "off")
            // These tests send hundreds of deliveries about the one fixture
            // pull request (load, replicas, crashes); the loop breaker that
            // would hold them back has its own test (`tests/loop_breaker.rs`).
            .env("TASKMASTER_MAX_RUNS_PER_SUBJECT_PER_HOUR", "0")
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOST", "127.0.0.1")
            .env("PORT", "0")
            .env("DATABASE_URL", database_url)
            .env("LOG_FORMAT", "json")
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if let Some(secret) = secret {
            command.env("GITHUB_WEBHOOK_SECRET", secret);
        }
        for (k, v) in extra_env {
            command.env(k, v);
        }
        let mut child = command.spawn().expect("spawn taskmaster");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let logs = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let kept = logs.clone();
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                kept.lock().unwrap().push(line.clone());
                if !sent
                    && let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
                    && v["message"] == "listening"
                {
                    let _ = tx.send(v["address"].as_str().unwrap_or_default().to_string());
                    sent = true;
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        let address = loop {
            if let Ok(address) = rx.recv_timeout(Duration::from_millis(100)) {
                break address;
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("taskmaster exited before listening: {status}");
            }
            if Instant::now() >= deadline {
                // Not left running after the test fails.
                let _ = child.kill();
                let _ = child.wait();
                panic!("taskmaster did not start listening in 30 s");
            }
        };
        ChildService {
            child,
            base_url: format!("http://{address}"),
            logs,
            data_dir,
        }
    }

    pub fn webhook_url(&self) -> String {
        format!("{}/api/github/webhooks", self.base_url)
    }

    /// Sends `signal` (e.g. `libc::SIGTERM`) to the process.
    pub fn signal(&self, signal: i32) {
        let rc = unsafe { libc::kill(self.child.id() as i32, signal) };
        assert_eq!(rc, 0, "kill failed");
    }

    /// Waits up to `timeout` for the process to exit; panics otherwise.
    pub fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "taskmaster did not exit in {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for ChildService {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
