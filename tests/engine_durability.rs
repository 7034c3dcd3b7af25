//! Durability: fencing on an expired lease, the reaper, start-up recovery,
//! runs created in the transaction that finishes their delivery, and a real
//! process killed with SIGKILL mid-run.

mod engine_support;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use taskmaster::store::RunId;

use engine_support::*;
use taskmaster::dispatch::{DeliveryHandler, Dispatcher};
use taskmaster::engine::intake::RoutingHandler;
use taskmaster::engine::{AgentMap, Engine, WorkflowPlanner};
use taskmaster::store::prelude::*;
use taskmaster::store::{
    AttemptRecord, ClaimLimits, DeliveryResult, DeliveryState, EncodedPayload, InsertOutcome,
    NewDelivery, RunState, SqliteStore, StepNext, StepState, Store, now_ms,
};

const MS: fn(u64) -> Duration = Duration::from_millis;

const ONE: &str = r#"
name: one
on: { pull_request: {} }
steps:
  work: { agent: worker, prompt: "x" }
"#;

async fn fresh_store() -> (tempfile::TempDir, Arc<SqliteStore>) {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(
        SqliteStore::open(dir.path().join("t.db").to_str().unwrap())
            .await
            .unwrap(),
    );
    store.migrate().await.unwrap();
    (dir, store)
}

fn success(output: &str) -> StepNext {
    StepNext::Finish {
        state: StepState::Succeeded,
        output: Some(output.into()),
        error: None,
    }
}

fn attempt_ok() -> AttemptRecord {
    AttemptRecord {
        outcome: taskmaster::store::AttemptEnd::parse("succeeded").unwrap(),
        ..AttemptRecord::default()
    }
}

#[tokio::test]
async fn only_the_current_lease_token_can_record_a_result() {
    let (_dir, store) = fresh_store().await;
    let set = workflows(&[ONE], &["worker"]);
    let planner = WorkflowPlanner::new(set.clone());
    // An engine that is not running: used to create and settle the run.
    let engine = Engine::new(store.clone(), set, Arc::new(AgentMap::new()), fast_config());
    let run = engine
        .start_run("one", "pull_request", &pr_payload(), "fence-1")
        .await
        .unwrap()
        .run_id;
    let limits = |lease_ms: u64| ClaimLimits {
        max: 10,
        per_agent: HashMap::new(),
        lease: Duration::from_millis(lease_ms),
        refused_agents: Default::default(),
    };

    // Worker A claims with a short lease and starts an attempt, then stalls.
    let a = store.claim_steps("worker-a", &limits(50)).await.unwrap();
    assert_eq!(a.len(), 1);
    let lease_a = a[0].lease.clone();
    assert_eq!(a[0].attempt, Some(1), "the claim starts attempt 1");
    // While A's lease holds, nobody else can claim the step.
    assert!(
        store
            .claim_steps("worker-b", &limits(5000))
            .await
            .unwrap()
            .is_empty()
    );
    tokio::time::sleep(MS(80)).await;
    // The reaper returns the expired lease; worker B claims the step anew.
    assert_eq!(
        store.reap_leases(Some(now_ms())).await.unwrap(),
        vec![(run, "work".to_owned())]
    );
    let b = store.claim_steps("worker-b", &limits(5000)).await.unwrap();
    let lease_b = b[0].lease.clone();
    assert_ne!(lease_a.token, lease_b.token);
    assert_eq!(b[0].attempt, Some(2));

    // Both race to record: A's stale token is refused, B's is accepted.
    let (ok, from_a, from_b) = (attempt_ok(), success("from A"), success("from B"));
    let (ra, rb) = tokio::join!(
        store.finish_step(
            &lease_a,
            Some(&ok),
            &from_a,
            ("step_succeeded", "A"),
            &planner
        ),
        store.finish_step(
            &lease_b,
            Some(&ok),
            &from_b,
            ("step_succeeded", "B"),
            &planner
        ),
    );
    assert!(
        ra.unwrap().is_none(),
        "the stale lease's result must be refused"
    );
    assert!(rb.unwrap().is_some());
    // A late renewal by A learns it lost the lease.
    assert_eq!(
        store
            .renew_lease(&lease_a, Duration::from_millis(1000))
            .await
            .unwrap(),
        None
    );
    // And A cannot record afterwards either (B's token is gone too).
    assert!(
        store
            .finish_step(
                &lease_a,
                None,
                &success("late A"),
                ("step_succeeded", "late"),
                &planner
            )
            .await
            .unwrap()
            .is_none()
    );

    let snap = store.run(run).await.unwrap().unwrap();
    assert_eq!(snap.step("work").unwrap().output.as_deref(), Some("from B"));
    assert_eq!(snap.run.state, RunState::Succeeded);
    let attempts = store.attempts(run).await.unwrap();
    let outcomes: Vec<_> = attempts
        .iter()
        .map(|a| a.outcome.map(|o| o.as_str()))
        .collect();
    assert_eq!(outcomes, [Some("lost"), Some("succeeded")]);
    let events = store.run_events(run).await.unwrap();
    assert_eq!(
        events.iter().filter(|e| e.kind == "step_succeeded").count(),
        1
    );
    assert_eq!(
        events.iter().filter(|e| e.kind == "run_finished").count(),
        1
    );
}

#[tokio::test]
async fn the_reaper_and_start_up_recovery_hand_abandoned_steps_to_a_new_attempt() {
    let (dir, store) = fresh_store().await;
    let set = workflows(&[ONE], &["worker"]);
    let idle = Engine::new(
        store.clone(),
        set.clone(),
        Arc::new(AgentMap::new()),
        fast_config(),
    );
    let run = idle
        .start_run("one", "pull_request", &pr_payload(), "reap-1")
        .await
        .unwrap()
        .run_id;
    idle.pause(run).await.unwrap();
    // A live engine starts (its start-up recovery finds nothing running)...
    let agent = Scripted::new("worker", Act::Ok(MS(5), "ok"));
    let t = TestEngine::start_on(
        dir,
        store.clone(),
        set.clone(),
        AgentMap::new().with(agent.clone()),
        fast_config(),
    );
    tokio::time::sleep(MS(50)).await;
    // ...while a worker elsewhere holds the step under a lease, then vanishes.
    store
        .connection()
        .unwrap()
        .execute(
            "UPDATE steps SET state = 'running', lease_owner = 'ghost', \
             lease_token = 'ghost-token', lease_expires_at = ?1 WHERE run_id = ?2",
            [now_ms() + 150, run.0],
        )
        .unwrap();
    t.engine.resume(run).await.unwrap();
    tokio::time::sleep(MS(100)).await;
    assert!(
        agent.attempts_of("work").is_empty(),
        "the lease is still held"
    );
    // The live engine's reaper takes the step back once the lease expires.
    let snap = t.wait_run(run.0, Duration::from_secs(5)).await;
    assert_eq!(snap.run.state, RunState::Succeeded);
    let events = t.decisions(run.0, "work", "lease_expired").await;
    assert!(
        events[0].contains("its worker stopped renewing it"),
        "{events:?}"
    );
    let (dir, store) = t.stop().await;

    // Start-up recovery does not wait for the lease: the previous process is gone.
    let run2 = idle
        .start_run("one", "pull_request", &pr_payload(), "reap-2")
        .await
        .unwrap()
        .run_id;
    let ghost = store
        .claim_steps(
            "dead-process",
            &ClaimLimits {
                max: 1,
                per_agent: HashMap::new(),
                lease: Duration::from_secs(3_600),
                refused_agents: Default::default(),
            },
        )
        .await
        .unwrap();
    assert_eq!(ghost[0].attempt, Some(1));
    let t = TestEngine::start_on(
        dir,
        store,
        set,
        AgentMap::new().with(agent.clone()),
        fast_config(),
    );
    let started = Instant::now();
    let snap = t.wait_run(run2.0, Duration::from_secs(5)).await;
    assert_eq!(snap.run.state, RunState::Succeeded);
    assert!(started.elapsed() < Duration::from_secs(2));
    let attempts = t.store.attempts(run2).await.unwrap();
    assert_eq!(attempts[0].outcome.map(|o| o.as_str()), Some("lost"));
    assert_eq!(attempts[1].outcome.map(|o| o.as_str()), Some("succeeded"));
    t.stop().await;
}

fn new_delivery(id: &str) -> NewDelivery {
    NewDelivery {
        delivery_id: id.into(),
        event: "pull_request".into(),
        action: Some("opened".into()),
        hook_id: None,
        installation_id: None,
        repository: None,
        sender_id: None,
        sender_login: None,
        payload: EncodedPayload::encode(pr_payload().into()),
        received_at: now_ms(),
        state: DeliveryState::Queued,
    }
}

async fn queue_delivery(store: &SqliteStore, id: &str) {
    store.insert_deliveries(&[new_delivery(id)]).await.unwrap();
}

#[tokio::test]
async fn the_dispatcher_creates_runs_with_the_delivery_and_never_twice() {
    let (dir, store) = fresh_store().await;
    let set = workflows(
        &[r#"
name: review
on: { pull_request: { actions: [opened] } }
steps:
  look: { agent: worker, prompt: "review {{ pr.number }}" }
"#],
        &["worker"],
    );
    let agent = Scripted::new("worker", Act::Ok(MS(5), "ok"));
    let t = TestEngine::start_on(
        dir,
        store.clone(),
        set.clone(),
        AgentMap::new().with(agent.clone()),
        fast_config(),
    );
    let handler: Arc<dyn DeliveryHandler> = Arc::new(RoutingHandler::new(
        store.clone(),
        set.clone(),
        Some(t.engine.clone()),
    ));
    let wake = Arc::new(tokio::sync::Notify::new());
    let stop = tokio_util::sync::CancellationToken::new();
    let dispatcher = tokio::spawn(
        Dispatcher::new(store.clone(), handler.clone(), wake.clone()).run(stop.clone()),
    );

    queue_delivery(&store, "d-1").await;
    wake.notify_one();
    let deadline = Instant::now() + Duration::from_secs(5);
    let runs = loop {
        let runs = store.runs_for_delivery("d-1").await.unwrap();
        if !runs.is_empty() {
            break runs;
        }
        assert!(Instant::now() < deadline, "no run created");
        tokio::time::sleep(MS(10)).await;
    };
    assert_eq!(runs.len(), 1);
    assert_eq!(
        store.delivery("d-1").await.unwrap().unwrap().state,
        DeliveryState::Done
    );
    assert!(runs[0].reason.contains("opened"), "{}", runs[0].reason);
    assert!(runs[0].classification.is_some());
    let snap = t.wait_run((runs[0].id).0, Duration::from_secs(5)).await;
    assert_eq!(snap.run.state, RunState::Succeeded);

    // Reprocessing the same delivery (a crash after the handler, a replay)
    // finds the run already there.
    store
        .connection()
        .unwrap()
        .execute(
            "UPDATE deliveries SET state = 'queued' WHERE delivery_id = 'd-1'",
            [],
        )
        .unwrap();
    wake.notify_one();
    let deadline = Instant::now() + Duration::from_secs(5);
    while store.delivery("d-1").await.unwrap().unwrap().state != DeliveryState::Done {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(MS(10)).await;
    }
    assert_eq!(store.runs_for_delivery("d-1").await.unwrap().len(), 1);
    stop.cancel();
    dispatcher.await.unwrap();

    // A dispatcher that lost its lease creates nothing: the runs commit with
    // the delivery's finish or not at all.
    queue_delivery(&store, "d-2").await;
    let claimed = store
        .claim_deliveries("owner-a", 1, MS(60_000))
        .await
        .unwrap();
    let d = store.delivery("d-2").await.unwrap().unwrap();
    let Ok(taskmaster::dispatch::Handled::Start(new_runs)) = handler.handle(&d).await else {
        panic!("expected runs")
    };
    let changed = store
        .finish_deliveries(
            "owner-b",
            &[(claimed[0].id, DeliveryResult::Started(new_runs.clone()))],
        )
        .await
        .unwrap();
    assert_eq!(changed, 0);
    assert!(store.runs_for_delivery("d-2").await.unwrap().is_empty());
    store
        .finish_deliveries(
            "owner-a",
            &[(claimed[0].id, DeliveryResult::Started(new_runs))],
        )
        .await
        .unwrap();
    assert_eq!(store.runs_for_delivery("d-2").await.unwrap().len(), 1);
    t.stop().await;
}

#[cfg(unix)]
#[tokio::test]
async fn a_process_killed_mid_run_finishes_every_run_on_restart_without_double_results() {
    use std::process::{Command, Stdio};

    let dir = tempfile::tempdir().unwrap();
    let wf_dir = dir.path().join("workflows");
    std::fs::create_dir(&wf_dir).unwrap();
    std::fs::write(
        wf_dir.join("crash.yml"),
        r#"
name: crash
on: { pull_request: {} }
steps:
  a: { agent: command, with: { run: ["sh", "-c", "sleep 0.4; echo a"] } }
  b: { agent: command, with: { run: ["sh", "-c", "sleep 0.4; echo b"] } }
  c: { agent: command, needs: [a, b], with: { run: ["sh", "-c", "sleep 0.2; echo c"] } }
  d: { agent: command, needs: c, with: { run: ["sh", "-c", "echo d"] } }
"#,
    )
    .unwrap();
    let payload = dir.path().join("event.json");
    std::fs::write(&payload, pr_payload()).unwrap();
    let db = dir.path().join("crash.db");
    let (db2, data_dir) = (db.clone(), dir.path().join("data"));
    let (payload_c, wf_dir_c) = (payload.clone(), wf_dir.clone());
    let start = |runs: &[&str]| {
        runs.iter()
            .map(|delivery| {
                Command::new(env!("CARGO_BIN_EXE_taskmaster"))
                    .args(["run", "crash", "--event"])
                    .arg(&payload)
                    .args(["--delivery", delivery, "--workflows"])
                    .arg(&wf_dir)
                    .arg("--database-url")
                    .arg(format!("sqlite://{}", db.display()))
                    .args(["--log", "error"])
                    .arg("--data-dir")
                    .arg(dir.path().join("data"))
                    .args(["--workspaces", "off"])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .unwrap()
            })
            .collect::<Vec<_>>()
    };

    // First life: start the run, kill the process while steps are running.
    let mut child = start(&["crash-run-1"]).remove(0);
    let store = {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            assert!(Instant::now() < deadline, "the run never got going");
            tokio::time::sleep(MS(20)).await;
            if !db.exists() {
                continue;
            }
            let Ok(store) = SqliteStore::open(db.to_str().unwrap()).await else {
                continue;
            };
            let Ok(n) = store.connection().and_then(|c| {
                Ok(c.query_row(
                    "SELECT COUNT(*) FROM attempts WHERE outcome IS NULL",
                    [],
                    |r| r.get::<_, i64>(0),
                )?)
            }) else {
                continue;
            };
            if n > 0 {
                break store;
            }
        }
    };
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let run_id = store.runs_for_delivery("crash-run-1").await.unwrap()[0].id;
    let before = store.run(run_id).await.unwrap().unwrap();
    assert!(!before.run.state.is_terminal(), "killed mid-run");
    drop(store);

    // Second life: the same command carries the run on to the end.
    let output = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_taskmaster"))
            .args(["run", "crash", "--event"])
            .arg(&payload_c)
            .args(["--delivery", "crash-run-1", "--workflows"])
            .arg(&wf_dir_c)
            .arg("--database-url")
            .arg(format!("sqlite://{}", db2.display()))
            .args(["--log", "warn"])
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--workspaces", "off"])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        output.status.success(),
        "the restarted run must succeed: {}\n{}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );

    let store = SqliteStore::open(db.to_str().unwrap()).await.unwrap();
    let snap = store.run(run_id).await.unwrap().unwrap();
    assert_eq!(snap.run.state, RunState::Succeeded);
    assert_eq!(
        store.runs_for_delivery("crash-run-1").await.unwrap().len(),
        1
    );
    let attempts = store.attempts(run_id).await.unwrap();
    let events = store.run_events(run_id).await.unwrap();
    for step in ["a", "b", "c", "d"] {
        let ok = attempts
            .iter()
            .filter(|a| a.step == step && a.outcome.map(|o| o.as_str()) == Some("succeeded"))
            .count();
        assert_eq!(ok, 1, "step {step}: exactly one recorded result");
        let recorded = events
            .iter()
            .filter(|e| e.step.as_deref() == Some(step) && e.kind == "step_succeeded")
            .count();
        assert_eq!(recorded, 1, "step {step}: one result on the timeline");
    }
    assert!(
        attempts
            .iter()
            .any(|a| a.outcome.map(|o| o.as_str()) == Some("lost")),
        "the killed attempt is recorded as lost: {attempts:?}"
    );
    assert!(
        attempts.iter().all(|a| a.outcome.is_some()),
        "no attempt left open"
    );
    assert_eq!(
        events.iter().filter(|e| e.kind == "run_finished").count(),
        1
    );
}

#[tokio::test]
async fn a_graceful_shutdown_releases_running_steps_and_the_next_start_runs_them() {
    let (dir, store) = fresh_store().await;
    let set = workflows(&[ONE], &["worker"]);
    let slow = Scripted::new("worker", Act::Ok(Duration::from_secs(30), "slow"));
    let t = TestEngine::start_on(
        dir,
        store,
        set.clone(),
        AgentMap::new().with(slow.clone()),
        fast_config(),
    );
    let run = t.start_run("one").await;
    t.wait_until(run, Duration::from_secs(5), "work running", |s| {
        s.step("work").unwrap().state == StepState::Running
    })
    .await;
    let (dir, store) = t.stop().await;
    let snap = store.run(RunId(run)).await.unwrap().unwrap();
    assert_eq!(
        snap.step("work").unwrap().state,
        StepState::Ready,
        "released, not lost"
    );
    assert!(
        slow.attempts_of("work")[0].cancelled,
        "the attempt was stopped"
    );
    let released = store.run_events(RunId(run)).await.unwrap();
    assert!(released.iter().any(|e| e.kind == "released"));

    let fast = Scripted::new("worker", Act::Ok(MS(5), "fast"));
    let t = TestEngine::start_on(
        dir,
        store,
        set,
        AgentMap::new().with(fast.clone()),
        fast_config(),
    );
    let snap = t.wait_run(run, Duration::from_secs(5)).await;
    assert_eq!(snap.run.state, RunState::Succeeded);
    let attempts = t.store.attempts(RunId(run)).await.unwrap();
    let outcomes: Vec<_> = attempts
        .iter()
        .map(|a| a.outcome.map(|o| o.as_str()))
        .collect();
    assert_eq!(outcomes, [Some("cancelled"), Some("succeeded")]);
    t.stop().await;
}

#[tokio::test]
async fn the_heartbeat_keeps_long_attempts_leased_and_stops_one_that_lost_its_lease() {
    let set = workflows(&[ONE], &["worker"]);
    let agent = Scripted::new("worker", Act::Ok(MS(5), "ok")).script(
        "work",
        vec![Act::Ok(MS(3000), "first"), Act::Ok(MS(1800), "second")],
    );
    let mut config = fast_config();
    // Renewed every 200 ms; the reaper looks every 50 ms. Long enough that a
    // loaded CI machine's scheduling hiccups do not expire a healthy lease.
    config.lease = MS(600);
    let t = TestEngine::start(set, AgentMap::new().with(agent.clone()), config).await;
    let run = t.start_run("one").await;
    t.wait_until(run, Duration::from_secs(5), "work running", |s| {
        s.step("work").unwrap().state == StepState::Running
    })
    .await;
    // Another worker takes the step over (as after a reap and a new claim).
    tokio::time::sleep(MS(800)).await;
    t.store
        .connection()
        .unwrap()
        .execute(
            "UPDATE steps SET lease_token = 'taken-over', lease_expires_at = ?1 \
             WHERE run_id = ?2 AND step = 'work'",
            [now_ms() - 1, run],
        )
        .unwrap();
    let snap = t.wait_run(run, Duration::from_secs(10)).await;
    assert_eq!(snap.run.state, RunState::Succeeded);
    let seen = agent.attempts_of("work");
    assert_eq!(seen.len(), 2);
    assert!(
        seen[0].cancelled,
        "the attempt that lost its lease was stopped"
    );
    assert!(!seen[1].cancelled);
    // The second attempt outlived its 600 ms lease three times over: renewed.
    assert_eq!(
        snap.step("work")
            .unwrap()
            .output
            .as_deref()
            .map(|o| o.starts_with("second")),
        Some(true)
    );
    let expired = t.decisions(run, "work", "lease_expired").await;
    assert_eq!(
        expired.len(),
        1,
        "only the taken-over lease expired: {expired:?}"
    );
    let attempts = t.store.attempts(RunId(run)).await.unwrap();
    let outcomes: Vec<_> = attempts
        .iter()
        .map(|a| a.outcome.map(|o| o.as_str()))
        .collect();
    assert_eq!(outcomes, [Some("lost"), Some("succeeded")]);
    t.stop().await;
}

/// Open descriptors of this process on `path` (the database file).
fn open_descriptors(path: &std::path::Path) -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|fds| {
            fds.filter_map(Result::ok)
                .filter(|fd| std::fs::read_link(fd.path()).is_ok_and(|target| target == path))
                .count()
        })
        .unwrap_or(0)
}

/// Waits until every connection to `path` is closed; false after 10 s.
async fn all_closed(path: &std::path::Path) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if open_descriptors(path) == 0 {
            return true;
        }
        tokio::time::sleep(MS(20)).await;
    }
    false
}

/// The store keeps prepared statements on its connections across
/// transactions; SQLite refuses to close a connection with statements
/// open, so dropping the store must finalize them first and close every
/// connection: the writer, the readers, the log syncer's and the
/// checkpointer's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_sqlite_store_closes_its_connections_after_keeping_statements() {
    {
        let (dir, store) = fresh_store().await;
        let db = std::fs::canonicalize(dir.path().join("t.db")).unwrap();
        queue_delivery(&store, "kept-1").await;
        queue_delivery(&store, "kept-2").await;
        let claimed = store
            .claim_deliveries("test", 10, Duration::from_secs(30))
            .await
            .unwrap();
        assert_eq!(claimed.len(), 2, "the writer's batches work");
        assert!(
            store.delivery("kept-1").await.unwrap().is_some(),
            "a reader works"
        );
        let limits = ClaimLimits {
            max: 4,
            per_agent: HashMap::new(),
            lease: Duration::from_secs(30),
            refused_agents: Default::default(),
        };
        assert!(store.claim_steps("test", &limits).await.unwrap().is_empty());
        assert!(open_descriptors(&db) > 0);
        drop(store);
        assert!(
            all_closed(&db).await,
            "a connection to the database stayed open"
        );
    }
}

/// The inbox's batches commit without syncing and wait for the log syncer;
/// the writer goes back to `synchronous=FULL` for everything else, and the
/// staged rows are in the file for the next process.
#[tokio::test]
async fn staged_inbox_batches_are_synced_by_the_log_syncer_and_full_comes_back() {
    let (dir, store) = fresh_store().await;
    assert_eq!(store.writer_synchronous().await.unwrap(), 2, "FULL");
    let before = store.wal_syncs().expect("a file database has a log syncer");
    let mut waits = Vec::new();
    for i in 0..40 {
        let (outcomes, durable) = store
            .stage_deliveries(&[new_delivery(&format!("staged-{i}"))])
            .await
            .unwrap();
        assert_eq!(outcomes, [InsertOutcome::Stored]);
        waits.push(durable);
    }
    for wait in waits {
        wait.await.unwrap();
    }
    let syncs = store.wal_syncs().unwrap() - before;
    assert!((1..=40).contains(&syncs), "{syncs} syncs for 40 batches");
    assert_eq!(
        store.writer_synchronous().await.unwrap(),
        2,
        "the writer is back to FULL after staging"
    );
    drop(store);
    let reopened = SqliteStore::open(dir.path().join("t.db").to_str().unwrap())
        .await
        .unwrap();
    for i in [0, 39] {
        assert!(
            reopened
                .delivery(&format!("staged-{i}"))
                .await
                .unwrap()
                .is_some()
        );
    }
}

/// The dispatcher's claims commit without an fsync of their own (a claim
/// lost with the power changes nothing: start-up re-queues `processing`
/// deliveries), the writer is back to `FULL` after each, and the claim is
/// made durable by the `FULL` commit of the delivery's result: a reopened
/// store has the delivery `done` after one attempt.
#[tokio::test]
async fn claims_commit_unsynced_and_the_result_makes_them_durable() {
    let (dir, store) = fresh_store().await;
    queue_delivery(&store, "claimed-1").await;
    let claimed = store
        .claim_deliveries("owner", 8, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].attempts, 1);
    assert_eq!(
        store.writer_synchronous().await.unwrap(),
        2,
        "the writer is back to FULL after a claim"
    );
    assert_eq!(
        store
            .finish_deliveries("owner", &[(claimed[0].id, DeliveryResult::Done)])
            .await
            .unwrap(),
        1
    );
    drop(store);
    let reopened = SqliteStore::open(dir.path().join("t.db").to_str().unwrap())
        .await
        .unwrap();
    let stored = reopened.delivery("claimed-1").await.unwrap().unwrap();
    assert_eq!(stored.state, DeliveryState::Done);
    assert_eq!(stored.attempts, 1);
}

/// The background checkpointer copies the log into the database file a few
/// milliseconds behind the writer. 100 deliveries are ~150 pages of log,
/// short of the 1,000 at which the writer would checkpoint itself: the
/// database file alone (copied without its `-wal`) has them only if the
/// background checkpointer copied them.
#[tokio::test]
async fn the_background_checkpointer_copies_the_log_into_the_database_file() {
    let (dir, store) = fresh_store().await;
    for batch in 0..25 {
        let deliveries: Vec<NewDelivery> = (0..4)
            .map(|i| new_delivery(&format!("cp-{batch}-{i}")))
            .collect();
        let (_, durable) = store.stage_deliveries(&deliveries).await.unwrap();
        durable.await.unwrap();
    }
    let copy = dir.path().join("copy.db");
    let deadline = Instant::now() + Duration::from_secs(10);
    let rows = loop {
        std::fs::copy(dir.path().join("t.db"), &copy).unwrap();
        // The copy alone, without its log: what the checkpointer copied.
        let rows: rusqlite::Result<i64> = rusqlite::Connection::open_with_flags(
            format!("file:{}?immutable=1", copy.display()),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_URI,
        )
        .and_then(|c| c.query_row("SELECT COUNT(*) FROM deliveries", [], |r| r.get(0)));
        match rows {
            Ok(100) => break 100,
            _ if Instant::now() > deadline => break rows.unwrap_or(-1),
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    };
    assert_eq!(
        rows,
        100,
        "the database file has every delivery after {} checkpoint passes",
        store.checkpoint_passes().unwrap()
    );
}
