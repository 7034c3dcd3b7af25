//! `taskmaster serve` end to end: a signed webhook goes through intake, the
//! dispatcher and routing into a run, which the engine runs to the end with
//! the built-in `command` agent.

mod harness;

use std::time::{Duration, Instant};

use harness::{ChildService, SECRET, fixture, post, sign};
use taskmaster::store::prelude::*;
use taskmaster::store::{RunState, SqliteStore};

#[tokio::test]
async fn a_webhook_starts_a_run_that_the_service_runs_to_the_end() {
    let dir = tempfile::tempdir().unwrap();
    let workflows = dir.path().join("workflows");
    std::fs::create_dir(&workflows).unwrap();
    std::fs::write(
        workflows.join("review.yml"),
        r#"
name: review
on: { pull_request: { actions: [opened] } }
steps:
  check: { agent: command, with: { run: ["sh", "-c", "echo checked {{ pr.number }}"] } }
  report: { agent: command, needs: check, with: { run: ["sh", "-c", "echo reported"] } }
"#,
    )
    .unwrap();
    let db = dir.path().join("serve.db");
    let mut service = ChildService::start(
        &db,
        &[("TASKMASTER_WORKFLOWS", workflows.to_str().unwrap())],
    );
    let body = fixture("pull_request.opened.json");
    let client = taskmaster::agent::http_client_builder().build().unwrap();
    let (status, _) = post(
        &client,
        &service.webhook_url(),
        Some("pull_request"),
        Some("serve-e2e-1"),
        &body,
        Some(&sign(SECRET, &body)),
    )
    .await;
    assert!(status.is_success(), "{status}");

    let store = SqliteStore::open(db.to_str().unwrap()).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let run = loop {
        let runs = store.runs_for_delivery("serve-e2e-1").await.unwrap();
        if let Some(run) = runs.first()
            && run.state.is_terminal()
        {
            break run.clone();
        }
        assert!(Instant::now() < deadline, "no finished run: {runs:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(run.workflow, "review");
    assert_eq!(run.state, RunState::Succeeded, "{:?}", run.conclusion);
    let snap = store.run(run.id).await.unwrap().unwrap();
    assert!(
        snap.step("check")
            .unwrap()
            .output
            .as_deref()
            .unwrap()
            .contains("checked 2")
    );
    service.signal(libc::SIGTERM);
    assert!(service.wait_exit(Duration::from_secs(15)).success());
}
