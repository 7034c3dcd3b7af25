//! The real `taskmaster` binary as a child process: durability across SIGKILL,
//! graceful shutdown on SIGTERM, refusing to start with an App but no
//! webhook secret, `migrate`.

mod harness;

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use harness::{ChildService, SECRET, count_rows, fixture, post, sign};
use reqwest::StatusCode;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn answered_deliveries_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let db_path = dir.path().join("taskmaster.db");
    let service = ChildService::start(&db_path, &[]);
    let url = Arc::new(service.webhook_url());
    let body = Arc::new(fixture("pull_request.opened.json"));
    let signature = Arc::new(sign(SECRET, &body));
    let client = taskmaster::agent::http_client_builder().build().unwrap();

    // 200 deliveries on 16 connections; the process is killed the moment the
    // last answer arrives, with no chance to flush or shut down.
    let mut tasks = Vec::new();
    for n in 0..200 {
        let (client, url, body, signature) =
            (client.clone(), url.clone(), body.clone(), signature.clone());
        tasks.push(tokio::spawn(async move {
            let id = format!("kill-{n}");
            let (status, _) = post(
                &client,
                &url,
                Some("pull_request"),
                Some(&id),
                &body,
                Some(&signature),
            )
            .await;
            (id, status)
        }));
    }
    let mut answered = Vec::new();
    for task in tasks {
        let (id, status) = task.await.unwrap();
        assert_eq!(status, StatusCode::ACCEPTED);
        answered.push(id);
    }
    let mut service = service;
    service.signal(libc::SIGKILL);
    let status = service.wait_exit(Duration::from_secs(10));
    assert!(!status.success(), "killed, not exited: {status}");

    // Every answered delivery is in the file.
    let conn = rusqlite::Connection::open(&db_path).unwrap();
    for id in &answered {
        let found: i64 = conn
            .query_row(
                "SELECT COUNT(*) FROM deliveries WHERE delivery_id = ?1",
                [id],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(found, 1, "{id} was answered 202 but is not stored");
    }
    assert_eq!(count_rows(&db_path).await, 200);
}

#[tokio::test]
async fn sigterm_shuts_down_gracefully_with_exit_code_0() {
    let dir = tempfile::tempdir().unwrap();
    let db_path = dir.path().join("taskmaster.db");
    let mut service = ChildService::start(&db_path, &[]);
    let body = fixture("issues.opened.json");
    let client = taskmaster::agent::http_client_builder().build().unwrap();
    let (status, _) = post(
        &client,
        &service.webhook_url(),
        Some("issues"),
        Some("term-1"),
        &body,
        Some(&sign(SECRET, &body)),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    service.signal(libc::SIGTERM);
    let status = service.wait_exit(Duration::from_secs(15));
    assert_eq!(status.code(), Some(0), "graceful exit");
    assert_eq!(count_rows(&db_path).await, 1);
}

/// An App configured without its webhook secret cannot verify anything.
/// (Without an App at all, `serve` offers the set-up page: `tests/setup.rs`.)
#[test]
fn serve_with_an_app_but_no_secret_refuses_to_start_and_says_how() {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_taskmaster"))
        .arg("serve")
        .env_clear()
        .env("GITHUB_APP_ID", "12345")
        .env(
            "GITHUB_PRIVATE_KEY_PATH",
            concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/fixtures/github/app-key.pem"
            ),
        )
        .env(
            "DATABASE_URL",
            format!("sqlite://{}", dir.path().join("t.db").display()),
        )
        .env("PORT", "0")
        .env("TASKMASTER_DATA_DIR", dir.path().join("data"))
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("GITHUB_WEBHOOK_SECRET"), "{stderr}");
}

#[test]
fn migrate_creates_the_database_and_is_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("fresh.db");
    for _ in 0..2 {
        let output = Command::new(env!("CARGO_BIN_EXE_taskmaster"))
            .arg("migrate")
            .env_clear()
            .env("DATABASE_URL", format!("sqlite://{}", db.display()))
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(String::from_utf8_lossy(&output.stdout).contains("is up to date"));
    }
    assert!(db.exists());
}

#[test]
fn help_does_not_print_secret_values() {
    let output = Command::new(env!("CARGO_BIN_EXE_taskmaster"))
        .arg("--help")
        .env("GITHUB_WEBHOOK_SECRET", "very-secret-value")
        .env("DATABASE_URL", "sqlite://secret-path.db")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&output.stdout);
    assert!(help.contains("GITHUB_WEBHOOK_SECRET"), "{help}");
    assert!(!help.contains("very-secret-value"), "{help}");
}

#[test]
fn validate_checks_agent_names_against_the_configured_agents() {
    let dir = tempfile::tempdir().unwrap();
    let workflows = dir.path().join("workflows");
    std::fs::create_dir(&workflows).unwrap();
    std::fs::write(
        workflows.join("lint.yml"),
        "name: lint\non:\n  pull_request:\n    actions: [opened]\nsteps:\n  lint:\n    agent: my-linter\n    with:\n      run: [make, lint]\n",
    )
    .unwrap();
    let config = dir.path().join("taskmaster.yml");
    std::fs::write(&config, "agents:\n  my-linter:\n    kind: command\n").unwrap();
    let validate = |with_config: bool| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_taskmaster"));
        command.env_clear().arg("validate").arg(&workflows);
        if with_config {
            command.env("TASKMASTER_CONFIG", &config);
        }
        command.output().unwrap()
    };
    let without = validate(false);
    assert!(!without.status.success());
    let stderr = String::from_utf8_lossy(&without.stderr);
    assert!(stderr.contains("lint.yml:7:"), "{stderr}");
    assert!(stderr.contains("my-linter"), "{stderr}");
    let with = validate(true);
    assert!(
        with.status.success(),
        "{}",
        String::from_utf8_lossy(&with.stderr)
    );
}

#[test]
fn validate_checks_with_keys_against_the_agents_kinds() {
    let dir = tempfile::tempdir().unwrap();
    let workflows = dir.path().join("workflows");
    std::fs::create_dir(&workflows).unwrap();
    std::fs::write(
        workflows.join("review.yml"),
        "name: review\non:\n  pull_request:\n    actions: [opened]\nsteps:\n  review:\n    agent: claude-code\n    prompt: Review it.\n    with:\n      model: opus\n",
    )
    .unwrap();
    let config = dir.path().join("taskmaster.yml");
    std::fs::write(
        &config,
        "agents:\n  claude-code:\n    kind: cli\n    cli: claude\n",
    )
    .unwrap();
    let validate = |with_config: bool| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_taskmaster"));
        command.env_clear().arg("validate").arg(&workflows);
        if with_config {
            command.env("TASKMASTER_CONFIG", &config);
        }
        command.output().unwrap()
    };
    // The built-in `claude-code` is an AgentAPI agent: it reads no `with:` keys.
    let builtin = validate(false);
    assert!(!builtin.status.success());
    let stderr = String::from_utf8_lossy(&builtin.stderr);
    assert!(
        stderr.contains("review.yml:10:7: unknown key `with.model` for step `review`; agent `claude-code` (agentapi) reads no `with:` keys"),
        "{stderr}"
    );
    // Configured as the Claude Code CLI, the same step is valid.
    let cli = validate(true);
    assert!(
        cli.status.success(),
        "{}",
        String::from_utf8_lossy(&cli.stderr)
    );
}

/// One process per SQLite file: `taskmaster run` against a live service's
/// database refuses with a clear message instead of taking over its steps;
/// once the service is gone (even by SIGKILL), the file is free again.
#[tokio::test]
async fn a_second_process_on_a_live_sqlite_database_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let db_path = dir.path().join("taskmaster.db");
    let mut service = ChildService::start(&db_path, &[]);
    let payload = dir.path().join("issue.json");
    std::fs::write(&payload, fixture("issues.opened.json")).unwrap();
    let run = || {
        Command::new(env!("CARGO_BIN_EXE_taskmaster"))
            .args(["run", "issue_triage", "--event-name", "issues", "--event"])
            .arg(&payload)
            .arg("--database-url")
            .arg(format!("sqlite://{}", db_path.display()))
            .args(["--workspaces", "off", "--log", "error"])
            .env_remove("GITHUB_APP_ID")
            .env_remove("GITHUB_PRIVATE_KEY")
            .env_remove("GITHUB_PRIVATE_KEY_PATH")
            .output()
            .unwrap()
    };
    let out = run();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "is in use by another taskmaster process (pid {})",
            service.child.id()
        )),
        "{stderr}"
    );
    service.child.kill().unwrap();
    service.child.wait().unwrap();
    // The lock died with the process: the database opens again (this run
    // may then fail for want of an agent; it must not be refused).
    let out = run();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("is in use"), "{stderr}");
}
