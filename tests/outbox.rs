//! The report outbox against a real database and the in-memory GitHub:
//! restarts, lost ids, coalescing, transient and permanent failures.
//!
//! Run states are moved with plain SQL so that each test controls exactly
//! what the outbox sees between two passes.

use std::sync::Arc;
use std::time::Duration;

use taskmaster::github::{Effect, GitHubError, RecordingGitHub, RepoName};
use taskmaster::outbox::{Outbox, OutboxConfig};
use taskmaster::store::prelude::*;
use taskmaster::store::{NewRun, NewStep, SqliteStore, Store};

struct Fixture {
    _dir: tempfile::TempDir,
    store: SqliteStore,
    github: Arc<RecordingGitHub>,
}

fn repo() -> RepoName {
    RepoName::parse("octo/widgets").unwrap()
}

fn config(min_interval_ms: u64) -> OutboxConfig {
    OutboxConfig {
        poll: Duration::from_millis(20),
        min_interval: Duration::from_millis(min_interval_ms),
        retry_base: Duration::from_millis(50),
        retry_max: Duration::from_millis(200),
        public_url: Some("https://tm.example.com".into()),
        batch: 100,
    }
}

impl Fixture {
    async fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path().join("o.db").to_str().unwrap())
            .await
            .unwrap();
        store.migrate().await.unwrap();
        Self {
            _dir: dir,
            store,
            github: Arc::new(RecordingGitHub::new()),
        }
    }

    fn outbox(&self, min_interval_ms: u64) -> Outbox {
        Outbox::new(
            Arc::new(self.store.clone()),
            self.github.clone(),
            config(min_interval_ms),
        )
    }

    /// A pull-request run of two steps, started by a delivery of installation 42.
    async fn pr_run(&self, delivery: &str, number: i64) -> i64 {
        self.db()
            .execute(
                "INSERT INTO deliveries (delivery_id, event, installation_id, repository, \
                 received_at, state, available_at) \
                 VALUES (?1, 'pull_request', 42, 'octo/widgets', 0, 'done', 0)",
                [delivery],
            )
            .unwrap();
        let step = |id: &str| NewStep {
            step: id.into(),
            needs: vec![],
            agent: "command".into(),
            continue_on_error: false,
            rank_ms: 0,
            runs_when_cancelled: false,
        };
        let created = self
            .store
            .create_runs(&[NewRun {
                workflow: "review".into(),
                delivery_id: delivery.into(),
                event: "pull_request".into(),
                repository: Some("octo/widgets".parse().unwrap()),
                subject_number: Some(number),
                head_sha: Some("abc123def456".into()),
                classification: None,
                reason: "test".into(),
                context: serde_json::json!({}),
                priority: taskmaster::classify::Priority::Medium,
                concurrency_group: None,
                cancel_in_progress: false,
                max_parallel: None,
                timeout: None,
                needs_approval: None,
                steps: vec![step("check"), step("report")],
            }])
            .await
            .unwrap();
        (created[0].run_id).0
    }

    /// A connection of its own to the store's database, for raw SQL.
    fn db(&self) -> rusqlite::Connection {
        self.store.connection().unwrap()
    }

    async fn sql(&self, sql: &'static str, run_id: i64) {
        self.db().execute(sql, [run_id]).unwrap();
    }

    async fn start_step(&self, run_id: i64, step_attempts: i64) {
        // A step (re)started now, as the engine would stamp it: the outbox
        // looks again at runs with a step started since their last report.
        self.db()
            .execute(
                "UPDATE steps SET state = 'running', attempts = ?2, started_at = ?3 \
                 WHERE run_id = ?1 AND step = 'check'",
                [run_id, step_attempts, taskmaster::store::now_ms()],
            )
            .unwrap();
        self.sql(
            "UPDATE runs SET state = 'running', started_at = 1 WHERE id = ?1",
            run_id,
        )
        .await;
    }

    async fn finish(&self, run_id: i64) {
        self.sql(
            "UPDATE steps SET state = 'succeeded', attempts = 1, output = 'all good', \
             started_at = 1, finished_at = 5 WHERE run_id = ?1",
            run_id,
        )
        .await;
        self.sql(
            "UPDATE runs SET state = 'succeeded', finished_at = 10 WHERE id = ?1",
            run_id,
        )
        .await;
    }

    fn check_creates(&self) -> Vec<serde_json::Value> {
        self.github
            .effects()
            .into_iter()
            .filter_map(|e| match e {
                Effect::CreateCheckRun { body, .. } => Some(body),
                _ => None,
            })
            .collect()
    }

    fn check_updates(&self) -> Vec<serde_json::Value> {
        self.github
            .effects()
            .into_iter()
            .filter_map(|e| match e {
                Effect::UpdateCheckRun { body, .. } => Some(body),
                _ => None,
            })
            .collect()
    }

    fn comment_creates(&self) -> usize {
        self.github
            .effects()
            .iter()
            .filter(|e| matches!(e, Effect::CreateComment { .. }))
            .count()
    }
}

#[tokio::test]
async fn a_run_is_created_queued_then_completed_with_one_check_run_and_one_comment() {
    let f = Fixture::new().await;
    let run = f.pr_run("d-1", 7).await;
    let outbox = f.outbox(0);
    outbox.pass().await.unwrap();
    let creates = f.check_creates();
    assert_eq!(creates.len(), 1);
    assert_eq!(creates[0]["status"], "queued");
    assert_eq!(creates[0]["name"], "taskmaster / review");
    assert_eq!(creates[0]["head_sha"], "abc123def456");
    assert_eq!(creates[0]["external_id"], run.to_string());
    assert_eq!(
        creates[0]["details_url"],
        format!("https://tm.example.com/runs/{run}")
    );

    // Nothing changed: nothing is sent.
    let before = f.github.effects().len();
    outbox.pass().await.unwrap();
    assert_eq!(f.github.effects().len(), before);

    f.start_step(run, 1).await;
    outbox.pass().await.unwrap();
    assert_eq!(f.check_updates().last().unwrap()["status"], "in_progress");

    f.finish(run).await;
    outbox.pass().await.unwrap();
    let last = f.check_updates().last().unwrap().clone();
    assert_eq!(last["status"], "completed");
    assert_eq!(last["conclusion"], "success");
    assert!(
        last["output"]["summary"]
            .as_str()
            .unwrap()
            .contains("| `check`"),
        "{last}"
    );
    assert_eq!(f.check_creates().len(), 1);
    assert_eq!(f.comment_creates(), 1);
    let comments = f.github.comments(&repo(), 7);
    assert_eq!(comments.len(), 1);
    assert!(comments[0].contains("all good"), "{}", comments[0]);

    // A finished, reported run is no longer a candidate.
    let before = f.github.effects().len();
    outbox.pass().await.unwrap();
    assert_eq!(f.github.effects().len(), before);
}

#[tokio::test]
async fn a_restart_finds_the_check_run_and_comment_again_even_when_their_ids_were_lost() {
    let f = Fixture::new().await;
    let run = f.pr_run("d-1", 7).await;
    f.outbox(0).pass().await.unwrap();
    assert_eq!(f.check_creates().len(), 1);

    // Restart with the ids stored: a new worker updates, never creates.
    f.start_step(run, 1).await;
    f.outbox(0).pass().await.unwrap();
    assert_eq!(f.check_creates().len(), 1);
    assert_eq!(f.comment_creates(), 1);

    // A crash between GitHub's answer and storing the ids: the check run is
    // found by its external id, the comment by its marker.
    f.sql("DELETE FROM run_reports WHERE run_id = ?1", run)
        .await;
    f.db().execute("DELETE FROM sticky_comments", []).unwrap();
    f.finish(run).await;
    f.outbox(0).pass().await.unwrap();
    assert_eq!(f.check_creates().len(), 1, "{:#?}", f.github.effects());
    assert_eq!(f.comment_creates(), 1);
    assert_eq!(f.github.check_run_count(&repo()), 1);
    assert_eq!(f.check_updates().last().unwrap()["conclusion"], "success");
}

#[tokio::test]
async fn runs_of_one_pull_request_share_one_sticky_comment() {
    let f = Fixture::new().await;
    let first = f.pr_run("d-1", 7).await;
    let second = f.pr_run("d-2", 7).await;
    f.outbox(0).pass().await.unwrap();
    assert_eq!(f.check_creates().len(), 2);
    assert_eq!(f.comment_creates(), 1);
    let comments = f.github.comments(&repo(), 7);
    assert_eq!(comments.len(), 1);
    assert!(
        comments[0].contains(&format!("run `{first}`")),
        "{}",
        comments[0]
    );
    assert!(comments[0].contains(&format!("run `{second}`")));
}

#[tokio::test]
async fn new_runs_get_their_check_runs_before_any_comment_of_their_installation() {
    // GitHub paces an installation's content-creating requests (80 a
    // minute): a new run's check run must not wait behind other runs'
    // sticky comments.
    let f = Fixture::new().await;
    f.pr_run("d-1", 7).await;
    f.pr_run("d-2", 8).await;
    f.pr_run("d-3", 9).await;
    f.outbox(0).pass().await.unwrap();
    let kinds: Vec<&str> = f
        .github
        .effects()
        .iter()
        .filter_map(|e| match e {
            Effect::CreateCheckRun { .. } => Some("check run"),
            Effect::UpdateCheckRun { .. } => Some("check run update"),
            Effect::CreateComment { .. } => Some("comment"),
            _ => None,
        })
        .collect();
    // Each check run once, created from the snapshot the report then
    // needs: no update with the same content.
    assert_eq!(
        kinds,
        [
            "check run",
            "check run",
            "check run",
            "comment",
            "comment",
            "comment"
        ]
    );
}

#[tokio::test]
async fn updates_of_a_run_are_coalesced_but_the_final_state_is_sent_at_once() {
    let f = Fixture::new().await;
    let run = f.pr_run("d-1", 7).await;
    let outbox = f.outbox(60_000);
    outbox.pass().await.unwrap();
    assert_eq!(f.check_creates().len(), 1);
    // Twenty transitions within the interval: none is sent…
    for attempt in 1..=20 {
        f.start_step(run, attempt).await;
        let due = outbox.pass().await.unwrap();
        assert!(
            due.is_some(),
            "a held-back update reports when it falls due"
        );
    }
    assert!(f.check_updates().is_empty(), "{:#?}", f.check_updates());
    // …and the end is sent immediately, once.
    f.finish(run).await;
    outbox.pass().await.unwrap();
    outbox.pass().await.unwrap();
    let updates = f.check_updates();
    assert_eq!(updates.len(), 1, "{updates:#?}");
    assert_eq!(updates[0]["conclusion"], "success");
}

#[tokio::test]
async fn a_transient_failure_is_retried_after_a_backoff_until_github_accepts() {
    let f = Fixture::new().await;
    let run = f.pr_run("d-1", 7).await;
    let outbox = f.outbox(0);
    let bad_gateway = || GitHubError::Api {
        status: 502,
        method: "POST".into(),
        path: "/repos/octo/widgets/check-runs".into(),
        message: "Bad Gateway".into(),
    };
    f.github.fail_next(bad_gateway());
    outbox.pass().await.unwrap();
    assert!(f.check_creates().is_empty());
    let (attempts, error): (i64, Option<String>) = f
        .db()
        .query_row(
            "SELECT attempts, last_error FROM run_reports WHERE run_id = ?1",
            [run],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(attempts, 1);
    assert!(error.unwrap().contains("502"));

    // Within the backoff: not tried again (no hot loop).
    outbox.pass().await.unwrap();
    assert!(f.check_creates().is_empty());
    assert_eq!(f.github.effects().len(), 0);

    tokio::time::sleep(Duration::from_millis(80)).await;
    outbox.pass().await.unwrap();
    assert_eq!(f.check_creates().len(), 1);
    assert_eq!(f.comment_creates(), 1);
    let (attempts, error): (i64, Option<String>) = f
        .db()
        .query_row(
            "SELECT attempts, last_error FROM run_reports WHERE run_id = ?1",
            [run],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!((attempts, error), (0, None));
}

#[tokio::test]
async fn a_permanent_failure_is_recorded_and_not_retried_until_the_run_changes() {
    let f = Fixture::new().await;
    let run = f.pr_run("d-1", 7).await;
    let outbox = f.outbox(0);
    f.github.fail_next(GitHubError::Api {
        status: 422,
        method: "POST".into(),
        path: "/repos/octo/widgets/check-runs".into(),
        message: "Invalid request".into(),
    });
    outbox.pass().await.unwrap();
    tokio::time::sleep(Duration::from_millis(80)).await;
    outbox.pass().await.unwrap();
    assert!(f.github.effects().is_empty(), "{:#?}", f.github.effects());
    let error: Option<String> = f
        .db()
        .query_row(
            "SELECT last_error FROM run_reports WHERE run_id = ?1",
            [run],
            |r| r.get(0),
        )
        .unwrap();
    assert!(error.unwrap().contains("422"));

    f.finish(run).await;
    outbox.pass().await.unwrap();
    assert_eq!(f.check_creates().len(), 1);
}

#[tokio::test]
async fn the_worker_wakes_on_its_poll_and_sends_at_shutdown() {
    let f = Fixture::new().await;
    let run = f.pr_run("d-1", 7).await;
    let stop = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(f.outbox(0).run(None, stop.clone()));
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while f.check_creates().is_empty() {
        assert!(std::time::Instant::now() < deadline, "nothing sent");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    f.finish(run).await;
    stop.cancel();
    task.await.unwrap();
    assert_eq!(
        f.check_updates().last().unwrap()["conclusion"],
        "success",
        "the last pass at shutdown sends the final state"
    );
}
