//! The store's behaviour, the same on both backends: every test body here
//! runs once on SQLite (`sqlite::…`) and once on PostgreSQL (`postgres::…`).
//! See `tests/backends/mod.rs` for how the PostgreSQL database is found.

mod backends;
mod engine_support;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use taskmaster::store::RunId;

use backends::Backend;
use bytes::Bytes;
use engine_support::{fast_config, pr_payload, workflows};
use taskmaster::engine::{AgentMap, Engine, WorkflowPlanner};
use taskmaster::store::prelude::*;
use taskmaster::store::{
    AttemptRecord, ClaimLimits, ControlOutcome, DeliveryResult, DeliveryState, DesiredState,
    EncodedPayload, InsertOutcome, Lease, NewDelivery, NewRun, NewStep, ReportOutcome, RunState,
    StepFinish, StepNext, StepState, now_ms,
};

const MS: fn(u64) -> Duration = Duration::from_millis;

const TWO: &str = r#"
name: two
on: { pull_request: {} }
steps:
  a: { agent: worker, prompt: "x" }
  b: { agent: worker, needs: a, prompt: "y" }
"#;

const ONE: &str = r#"
name: one
on: { pull_request: {} }
steps:
  work: { agent: worker, prompt: "x" }
"#;

fn delivery(id: &str, body: &[u8], state: DeliveryState) -> NewDelivery {
    NewDelivery {
        delivery_id: id.into(),
        event: "pull_request".into(),
        action: Some("opened".into()),
        hook_id: Some(1),
        installation_id: Some(taskmaster::ids::InstallationId(42)),
        repository: Some("octo/repo".into()),
        sender_id: Some(7),
        sender_login: Some("octocat".into()),
        payload: EncodedPayload::encode(Bytes::copy_from_slice(body)),
        received_at: now_ms(),
        state,
    }
}

fn limits(max: usize, lease_ms: u64) -> ClaimLimits {
    ClaimLimits {
        max,
        per_agent: HashMap::new(),
        lease: Duration::from_millis(lease_ms),
        refused_agents: HashSet::new(),
    }
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

fn new_run(delivery: &str, workflow: &str, steps: &[(&str, &[&str])]) -> NewRun {
    NewRun {
        workflow: workflow.into(),
        delivery_id: delivery.into(),
        event: "pull_request".into(),
        repository: Some("octo/repo".parse().unwrap()),
        subject_number: Some(7),
        head_sha: None,
        classification: None,
        reason: "test".into(),
        context: serde_json::json!({}),
        priority: taskmaster::classify::Priority::Medium,
        concurrency_group: None,
        cancel_in_progress: false,
        max_parallel: None,
        timeout: None,
        needs_approval: None,
        steps: steps
            .iter()
            .map(|(step, needs)| NewStep {
                step: (*step).into(),
                needs: needs.iter().map(|s| s.to_string()).collect(),
                agent: "worker".into(),
                continue_on_error: false,
                rank_ms: 1000,
                runs_when_cancelled: *step == "cleanup",
            })
            .collect(),
    }
}

/// An engine that is not running: creates and settles runs for a test.
fn idle_engine(store: &Arc<dyn RunStore>, sources: &[&str]) -> (Engine, WorkflowPlanner) {
    let set = workflows(sources, &["worker"]);
    let planner = WorkflowPlanner::new(set.clone());
    let engine = Engine::new(store.clone(), set, Arc::new(AgentMap::new()), fast_config());
    (engine, planner)
}

/// `stage_deliveries` answers as `insert_deliveries` does (duplicates
/// within the batch and against stored rows), and its wait resolves; the
/// rows are readable whole once it has.
async fn staged_deliveries_answer_like_inserted_ones_once_durable(b: Backend) {
    let store = &b.store;
    store
        .insert_deliveries(&[delivery("s-old", b"{}", DeliveryState::Queued)])
        .await
        .unwrap();
    let big = pr_payload();
    let (outcomes, durable) = store
        .stage_deliveries(&[
            delivery("s-1", &big, DeliveryState::Queued),
            delivery("s-old", b"{}", DeliveryState::Queued),
            delivery("s-1", b"{}", DeliveryState::Queued),
            delivery("s-2", b"{}", DeliveryState::Ignored),
        ])
        .await
        .unwrap();
    assert_eq!(
        outcomes,
        [
            InsertOutcome::Stored,
            InsertOutcome::Duplicate,
            InsertOutcome::Duplicate,
            InsertOutcome::Stored
        ]
    );
    durable.await.unwrap();
    let d1 = store.delivery("s-1").await.unwrap().unwrap();
    assert_eq!(d1.payload, Bytes::from(big));
    assert_eq!(d1.state, DeliveryState::Queued);
    let d2 = store.delivery("s-2").await.unwrap().unwrap();
    assert_eq!(d2.state, DeliveryState::Ignored);

    // Batches staged back to back before any wait, as the inbox does.
    let mut waits = Vec::new();
    for i in 0..20 {
        let (outcomes, durable) = store
            .stage_deliveries(&[delivery(&format!("s-b{i}"), b"{}", DeliveryState::Queued)])
            .await
            .unwrap();
        assert_eq!(outcomes, [InsertOutcome::Stored]);
        waits.push(durable);
    }
    for wait in waits {
        wait.await.unwrap();
    }
    let claimed = store
        .claim_deliveries("stager", 100, Duration::from_secs(30))
        .await
        .unwrap();
    let ids: HashSet<String> = claimed.into_iter().map(|d| d.delivery_id).collect();
    assert_eq!(
        ids.len(),
        22,
        "s-old, s-1 and the 20 staged one by one: {ids:?}"
    );
}

async fn deliveries_are_stored_once_and_read_back_byte_for_byte(b: Backend) {
    let store = &b.store;
    let big = pr_payload();
    let batch = vec![
        delivery("d-1", &big, DeliveryState::Queued),
        delivery("d-2", b"{}", DeliveryState::Ignored),
        delivery("d-1", b"{\"again\":1}", DeliveryState::Queued),
    ];
    let outcomes = store.insert_deliveries(&batch).await.unwrap();
    assert_eq!(
        outcomes,
        [
            InsertOutcome::Stored,
            InsertOutcome::Stored,
            InsertOutcome::Duplicate
        ]
    );
    // A later batch: the stored one is a duplicate, the new one stored.
    let outcomes = store
        .insert_deliveries(&[
            delivery("d-2", b"{}", DeliveryState::Queued),
            delivery("d-3", b"{}", DeliveryState::Queued),
        ])
        .await
        .unwrap();
    assert_eq!(outcomes, [InsertOutcome::Duplicate, InsertOutcome::Stored]);
    assert!(store.insert_deliveries(&[]).await.unwrap().is_empty());

    let d1 = store.delivery("d-1").await.unwrap().unwrap();
    assert_eq!(
        d1.payload,
        Bytes::from(big),
        "the payload decodes byte for byte"
    );
    assert_eq!(d1.state, DeliveryState::Queued);
    assert_eq!(
        d1.installation_id,
        Some(taskmaster::ids::InstallationId(42))
    );
    assert_eq!(d1.sender_login.as_deref(), Some("octocat"));
    assert_eq!(d1.attempts, 0);
    let d2 = store.delivery("d-2").await.unwrap().unwrap();
    assert_eq!(d2.state, DeliveryState::Ignored);
    assert_eq!(d2.payload, Bytes::from_static(b"{}"));
    assert!(d1.id < d2.id, "ids follow arrival order");
    assert!(store.delivery("nope").await.unwrap().is_none());
    let depth = store.inbox_depth().await.unwrap();
    assert_eq!((depth.queued, depth.processing), (2, 0));
    // The dispatcher's lag: when the oldest queued delivery came in.
    assert_eq!(depth.oldest_queued_at, Some(d1.received_at));
    store.ping().await.unwrap();
    store.migrate().await.unwrap(); // idempotent
}

async fn deliveries_are_claimed_in_order_and_finished_only_by_their_owner(b: Backend) {
    let store = &b.store;
    let batch: Vec<_> = (0..5)
        .map(|i| delivery(&format!("c-{i}"), b"{}", DeliveryState::Queued))
        .collect();
    store.insert_deliveries(&batch).await.unwrap();

    let first = store.claim_deliveries("one", 3, MS(60_000)).await.unwrap();
    let ids: Vec<_> = first.iter().map(|d| d.delivery_id.as_str()).collect();
    assert_eq!(
        ids,
        ["c-0", "c-1", "c-2"],
        "oldest first, at most the limit"
    );
    assert!(
        first
            .iter()
            .all(|d| d.state == DeliveryState::Processing && d.attempts == 1)
    );
    let second = store.claim_deliveries("two", 10, MS(60_000)).await.unwrap();
    let ids: Vec<_> = second.iter().map(|d| d.delivery_id.as_str()).collect();
    assert_eq!(ids, ["c-3", "c-4"], "claimed rows are not handed out again");
    assert!(
        store
            .claim_deliveries("three", 10, MS(60_000))
            .await
            .unwrap()
            .is_empty()
    );
    let depth = store.inbox_depth().await.unwrap();
    assert_eq!((depth.queued, depth.processing), (0, 5));
    assert_eq!(depth.oldest_queued_at, None, "nothing queued, no lag");

    // Fencing: "two" cannot finish "one"'s deliveries.
    let stolen = store
        .finish_deliveries("two", &[(first[0].id, DeliveryResult::Done)])
        .await
        .unwrap();
    assert_eq!(stolen, 0);
    let retry_at = now_ms() + 60_000;
    let changed = store
        .finish_deliveries(
            "one",
            &[
                (first[0].id, DeliveryResult::Done),
                (first[1].id, DeliveryResult::Ignored("not for us".into())),
                (
                    first[2].id,
                    DeliveryResult::Retry {
                        error: "busy".into(),
                        retry_at,
                    },
                ),
            ],
        )
        .await
        .unwrap();
    assert_eq!(changed, 3);
    assert_eq!(store.finish_deliveries("one", &[]).await.unwrap(), 0);
    let c0 = store.delivery("c-0").await.unwrap().unwrap();
    assert_eq!(c0.state, DeliveryState::Done);
    let c1 = store.delivery("c-1").await.unwrap().unwrap();
    assert_eq!(
        (c1.state, c1.error.as_deref()),
        (DeliveryState::Ignored, Some("not for us"))
    );
    let c2 = store.delivery("c-2").await.unwrap().unwrap();
    assert_eq!(
        (c2.state, c2.error.as_deref()),
        (DeliveryState::Queued, Some("busy"))
    );
    // Backing off: not claimable before retry_at.
    assert!(
        store
            .claim_deliveries("one", 10, MS(60_000))
            .await
            .unwrap()
            .is_empty()
    );

    store
        .finish_deliveries(
            "two",
            &[(second[0].id, DeliveryResult::Failed("bad".into()))],
        )
        .await
        .unwrap();
    assert_eq!(
        store.delivery("c-3").await.unwrap().unwrap().state,
        DeliveryState::Failed
    );
    // Graceful shutdown: "two" releases what it still holds.
    assert_eq!(store.release_deliveries("two").await.unwrap(), 1);
    let c4 = store.delivery("c-4").await.unwrap().unwrap();
    assert_eq!((c4.state, c4.attempts), (DeliveryState::Queued, 0));
    let again = store.claim_deliveries("one", 10, MS(60_000)).await.unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].delivery_id, "c-4");
}

async fn expired_delivery_leases_are_taken_over_and_recovered(b: Backend) {
    let store = &b.store;
    store
        .insert_deliveries(&[
            delivery("e-1", b"{}", DeliveryState::Queued),
            delivery("e-2", b"{}", DeliveryState::Queued),
        ])
        .await
        .unwrap();
    let short = store.claim_deliveries("dead", 1, MS(30)).await.unwrap();
    assert_eq!(short[0].delivery_id, "e-1");
    let live = store
        .claim_deliveries("alive", 1, MS(60_000))
        .await
        .unwrap();
    assert_eq!(live[0].delivery_id, "e-2");
    tokio::time::sleep(MS(60)).await;
    // An expired lease is claimable by another dispatcher...
    let taken = store
        .claim_deliveries("heir", 10, MS(60_000))
        .await
        .unwrap();
    assert_eq!(taken.len(), 1);
    assert_eq!(
        (taken[0].delivery_id.as_str(), taken[0].attempts),
        ("e-1", 2)
    );
    // ...and the dead owner's late finish is refused.
    assert_eq!(
        store
            .finish_deliveries("dead", &[(short[0].id, DeliveryResult::Done)])
            .await
            .unwrap(),
        0
    );
    // Start-up recovery: a single-process store takes back every claim (its
    // owner died with the previous process); a shared store leaves live
    // leases alone, because their owners are other running replicas.
    let recovered = store.recover_deliveries().await.unwrap();
    let e2 = store.delivery("e-2").await.unwrap().unwrap();
    if b.shared() {
        assert_eq!(recovered, 0);
        assert_eq!(e2.state, DeliveryState::Processing);
    } else {
        assert_eq!(recovered, 2);
        assert_eq!(e2.state, DeliveryState::Queued);
    }
}

async fn a_started_delivery_creates_its_runs_in_the_same_transaction_once(b: Backend) {
    let store = &b.store;
    store
        .insert_deliveries(&[delivery("s-1", b"{}", DeliveryState::Queued)])
        .await
        .unwrap();
    let claimed = store.claim_deliveries("one", 1, MS(30)).await.unwrap();
    let runs = vec![new_run("s-1", "two", &[("a", &[]), ("b", &["a"])])];
    tokio::time::sleep(MS(60)).await;
    let heir = store.claim_deliveries("heir", 1, MS(60_000)).await.unwrap();
    // The dispatcher that lost its lease creates nothing.
    assert_eq!(
        store
            .finish_deliveries(
                "one",
                &[(claimed[0].id, DeliveryResult::Started(runs.clone()))]
            )
            .await
            .unwrap(),
        0
    );
    assert!(store.runs_for_delivery("s-1").await.unwrap().is_empty());
    assert_eq!(
        store
            .finish_deliveries(
                "heir",
                &[(heir[0].id, DeliveryResult::Started(runs.clone()))]
            )
            .await
            .unwrap(),
        1
    );
    let created = store.runs_for_delivery("s-1").await.unwrap();
    assert_eq!(created.len(), 1);
    assert_eq!(created[0].state, RunState::Queued);
    assert_eq!(store.unplanned_runs().await.unwrap(), vec![created[0].id]);
    // Creating the same (delivery, workflow) again creates nothing.
    let again = store.create_runs(&runs).await.unwrap();
    assert_eq!(again.len(), 1);
    assert!(!again[0].created);
    assert_eq!(again[0].run_id, created[0].id);
    let snap = store.run(created[0].id).await.unwrap().unwrap();
    let steps: Vec<_> = snap
        .steps
        .iter()
        .map(|s| (s.step.as_str(), s.state))
        .collect();
    assert_eq!(
        steps,
        [("a", StepState::Pending), ("b", StepState::Pending)]
    );
    assert_eq!(snap.steps[1].needs, ["a"]);
    assert_eq!(
        store.delivery("s-1").await.unwrap().unwrap().state,
        DeliveryState::Done
    );
}

async fn only_the_current_lease_token_records_a_result(b: Backend) {
    let store = &b.store;
    let (engine, planner) = idle_engine(store, &[ONE]);
    let run = engine
        .start_run("one", "pull_request", &pr_payload(), "fence-1")
        .await
        .unwrap()
        .run_id;
    assert!(store.unplanned_runs().await.unwrap().is_empty());
    let a = store
        .claim_steps("worker-a", &limits(10, 50))
        .await
        .unwrap();
    assert_eq!(a.len(), 1);
    assert_eq!(a[0].attempt, Some(1));
    assert!(a[0].run_started);
    let lease_a = a[0].lease.clone();
    assert!(
        store
            .claim_steps("worker-b", &limits(10, 5000))
            .await
            .unwrap()
            .is_empty()
    );
    tokio::time::sleep(MS(80)).await;
    assert_eq!(
        store.reap_leases(Some(now_ms())).await.unwrap(),
        vec![(run, "work".to_owned())]
    );
    let b2 = store
        .claim_steps("worker-b", &limits(10, 5000))
        .await
        .unwrap();
    let lease_b = b2[0].lease.clone();
    assert_ne!(lease_a.token, lease_b.token);
    assert_eq!(b2[0].attempt, Some(2));
    assert!(!b2[0].run_started);

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
    assert!(ra.unwrap().is_none(), "the stale lease's result is refused");
    let plan = rb.unwrap().unwrap();
    assert_eq!(plan.outcome.map(|(s, _)| s), Some(RunState::Succeeded));
    assert_eq!(store.renew_lease(&lease_a, MS(1000)).await.unwrap(), None);
    assert_eq!(store.renew_lease(&lease_b, MS(1000)).await.unwrap(), None);

    let snap = store.run(run).await.unwrap().unwrap();
    assert_eq!(snap.run.state, RunState::Succeeded);
    assert_eq!(snap.step("work").unwrap().output.as_deref(), Some("from B"));
    let outcomes: Vec<_> = store
        .attempts(run)
        .await
        .unwrap()
        .into_iter()
        .map(|a| a.outcome)
        .collect();
    assert_eq!(
        outcomes,
        [
            Some(taskmaster::store::AttemptEnd::Lost),
            Some(taskmaster::store::AttemptEnd::Succeeded)
        ]
    );
    let events = store.run_events(run).await.unwrap();
    assert_eq!(
        events.iter().filter(|e| e.kind == "step_succeeded").count(),
        1
    );
    assert_eq!(
        events.iter().filter(|e| e.kind == "run_finished").count(),
        1
    );
    assert_eq!(
        events.iter().filter(|e| e.kind == "lease_expired").count(),
        1
    );
    assert!(store.active_runs().await.unwrap().is_empty());
    // The succeeded attempt is history a prediction draws on; the lost one is not.
    let durations = store.step_durations("one", 100).await.unwrap();
    assert_eq!(durations.len(), 1, "{durations:?}");
    assert_eq!(durations[0].0, "work");
}

async fn heartbeats_renew_only_leases_held_with_their_token(b: Backend) {
    let store = &b.store;
    let (engine, planner) = idle_engine(store, &[TWO]);
    let mut runs = Vec::new();
    for i in 0..3 {
        runs.push(
            engine
                .start_run("two", "pull_request", &pr_payload(), &format!("hb-{i}"))
                .await
                .unwrap()
                .run_id,
        );
    }
    let claimed = store
        .claim_steps("engine-1", &limits(10, 200))
        .await
        .unwrap();
    assert_eq!(claimed.len(), 3, "step a of each run");
    let tokens: Vec<String> = claimed[..2].iter().map(|c| c.lease.token.clone()).collect();
    // Renewed: the two whose tokens are given; not the third, nor another owner's.
    let renewed = store
        .renew_leases("engine-1", &tokens, MS(60_000))
        .await
        .unwrap();
    let mut renewed_rows: Vec<taskmaster::store::StepId> = renewed.iter().map(|r| r.0).collect();
    renewed_rows.sort();
    let mut expect: Vec<taskmaster::store::StepId> =
        claimed[..2].iter().map(|c| c.lease.step_row).collect();
    expect.sort();
    assert_eq!(renewed_rows, expect);
    assert!(
        renewed
            .iter()
            .all(|r| r.2 == taskmaster::store::DesiredState::Running)
    );
    assert!(
        store
            .renew_leases("engine-2", &tokens, MS(60_000))
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        store
            .renew_leases("engine-1", &[], MS(60_000))
            .await
            .unwrap()
            .is_empty()
    );
    tokio::time::sleep(MS(300)).await;
    // Only the unrenewed lease expired.
    let reaped = store.reap_leases(Some(now_ms())).await.unwrap();
    assert_eq!(reaped, vec![(claimed[2].step.run_id, "a".to_owned())]);
    // A batch of results commits together; each is fenced on its own.
    let finishes: Vec<_> = claimed
        .iter()
        .map(|c| taskmaster::store::StepFinish {
            lease: c.lease.clone(),
            attempt: Some(attempt_ok()),
            next: success("done"),
            kind: "step_succeeded".into(),
            detail: "ok".into(),
        })
        .collect();
    let plans = store.finish_steps(&finishes, &planner).await.unwrap();
    assert!(plans[0].is_some() && plans[1].is_some());
    assert!(plans[2].is_none(), "the reaped step's result is refused");
    let plan = plans[0].as_ref().unwrap();
    assert_eq!(plan.steps.len(), 1);
    assert_eq!(
        (plan.steps[0].step.as_str(), plan.steps[0].to),
        ("b", StepState::Ready)
    );
    // Start-up recovery: a single-process store takes back every running
    // step; a shared one only expired leases.
    let live = store
        .claim_steps("engine-1", &limits(10, 60_000))
        .await
        .unwrap();
    assert_eq!(live.len(), 3);
    let recovered = store.reap_leases(None).await.unwrap();
    assert_eq!(recovered.len(), if b.shared() { 0 } else { 3 });
    assert_eq!(store.active_runs().await.unwrap(), runs);
}

async fn claims_respect_max_parallel_priority_and_concurrency_groups(b: Backend) {
    let store = &b.store;
    let mut wide = new_run("p-1", "wide", &[("x", &[]), ("y", &[]), ("z", &[])]);
    wide.max_parallel = Some(2);
    let mut urgent = new_run("p-2", "urgent", &[("u", &[])]);
    urgent.priority = taskmaster::classify::Priority::Critical;
    let mut g1 = new_run("p-3", "grouped", &[("g", &[])]);
    g1.concurrency_group = Some("pr-7".into());
    let mut g2 = new_run("p-4", "grouped", &[("g", &[])]);
    g2.concurrency_group = Some("pr-7".into());
    let created = store.create_runs(&[wide, urgent, g1, g2]).await.unwrap();
    assert!(created.iter().all(|c| c.created && c.superseded.is_empty()));
    // Make every step ready (no planner needed: these are roots).
    let all_ready = ReadyAll;
    for c in &created {
        store.settle_run(c.run_id, &all_ready).await.unwrap();
    }
    let claimed = store.claim_steps("w", &limits(100, 60_000)).await.unwrap();
    let names: Vec<_> = claimed.iter().map(|c| c.step.step.as_str()).collect();
    assert_eq!(names[0], "u", "the critical run first: {names:?}");
    assert_eq!(
        claimed.iter().filter(|c| c.workflow == "wide").count(),
        2,
        "max_parallel"
    );
    let grouped: Vec<_> = claimed.iter().filter(|c| c.workflow == "grouped").collect();
    assert_eq!(grouped.len(), 1, "the newer run of the group waits");
    assert_eq!(grouped[0].step.run_id, created[2].run_id);
    // Per-agent limit: nothing more for `worker` while 4 run.
    let mut per_agent = limits(100, 60_000);
    per_agent.per_agent.insert("worker".into(), 4);
    assert!(store.claim_steps("w", &per_agent).await.unwrap().is_empty());
    // A refused agent: claimed without an attempt.
    let mut g3 = new_run("p-5", "solo", &[("s", &[])]);
    g3.priority = taskmaster::classify::Priority::High;
    let c = store.create_runs(&[g3]).await.unwrap();
    store.settle_run(c[0].run_id, &all_ready).await.unwrap();
    let mut refused = limits(1, 60_000);
    refused.refused_agents.insert("worker".into());
    let r = store.claim_steps("w", &refused).await.unwrap();
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].attempt, None);
    assert_eq!(r[0].step.attempts, 0);
    assert!(store.attempts(c[0].run_id).await.unwrap().is_empty());
    assert!(
        store
            .claim_steps("w", &limits(0, 60_000))
            .await
            .unwrap()
            .is_empty()
    );
}

/// A planner that makes every pending root step ready and never ends a run.
struct ReadyAll;

impl taskmaster::store::Planner for ReadyAll {
    fn plan(
        &self,
        snapshot: &taskmaster::store::RunSnapshot,
        _now: i64,
    ) -> taskmaster::store::Plan {
        taskmaster::store::Plan {
            steps: snapshot
                .steps
                .iter()
                .filter(|s| s.state == StepState::Pending && s.needs.is_empty())
                .map(|s| taskmaster::store::StepChange {
                    step: s.step.clone(),
                    to: StepState::Ready,
                    reason: "ready".into(),
                })
                .collect(),
            outcome: None,
        }
    }
}

async fn control_operations_pause_resume_cancel_retry_and_deadlines(b: Backend) {
    let store = &b.store;
    let (engine, planner) = idle_engine(store, &[TWO]);
    let run = engine
        .start_run("two", "pull_request", &pr_payload(), "ctl-1")
        .await
        .unwrap()
        .run_id;
    assert_eq!(store.pause_run(run).await.unwrap(), ControlOutcome::Changed);
    assert_eq!(
        store.pause_run(run).await.unwrap(),
        ControlOutcome::Unchanged
    );
    assert_eq!(
        store.pause_run(RunId(9999)).await.unwrap(),
        ControlOutcome::NotFound
    );
    assert!(
        store
            .claim_steps("w", &limits(10, 60_000))
            .await
            .unwrap()
            .is_empty(),
        "paused"
    );
    assert_eq!(
        store.resume_run(run).await.unwrap(),
        ControlOutcome::Changed
    );
    assert_eq!(
        store.resume_run(run).await.unwrap(),
        ControlOutcome::Unchanged
    );
    let claimed = store.claim_steps("w", &limits(10, 60_000)).await.unwrap();
    assert_eq!(claimed.len(), 1);
    // Fail step a: b is cancelled by the planner and the run fails.
    let failed = StepNext::Finish {
        state: StepState::Failed,
        output: None,
        error: Some("boom".into()),
    };
    store
        .finish_step(
            &claimed[0].lease,
            None,
            &failed,
            ("step_failed", "boom"),
            &planner,
        )
        .await
        .unwrap()
        .unwrap();
    let snap = store.run(run).await.unwrap().unwrap();
    assert_eq!(snap.run.state, RunState::Failed);
    // Retry: a and its dependent b back to pending, the run active again.
    assert_eq!(
        store.retry_run(run, None).await.unwrap(),
        ControlOutcome::Changed
    );
    let snap = store.run(run).await.unwrap().unwrap();
    assert_eq!(snap.run.state, RunState::Running);
    assert!(snap.steps.iter().all(|s| s.state == StepState::Pending));
    assert_eq!(
        store.retry_run(run, None).await.unwrap(),
        ControlOutcome::Unchanged
    );
    assert_eq!(
        store.retry_run(run, Some("nope")).await.unwrap(),
        ControlOutcome::NotFound
    );
    assert_eq!(
        store.retry_run(RunId(9999), None).await.unwrap(),
        ControlOutcome::NotFound
    );
    // Cancel: asked, then listed as stopping until settled.
    assert_eq!(
        store.cancel_run(run, "no longer needed").await.unwrap(),
        ControlOutcome::Changed
    );
    assert_eq!(
        store.cancel_run(run, "again").await.unwrap(),
        ControlOutcome::Unchanged
    );
    assert_eq!(store.stopping_runs().await.unwrap(), vec![run]);
    store.settle_run(run, &planner).await.unwrap();
    assert_eq!(
        store.run(run).await.unwrap().unwrap().run.state,
        RunState::Cancelled
    );
    assert!(store.stopping_runs().await.unwrap().is_empty());
    // Deadlines: a run past its time limit is asked to stop, once.
    let mut timed = new_run("ctl-2", "two", &[("a", &[]), ("b", &["a"])]);
    timed.timeout = Some(std::time::Duration::from_millis(1));
    let t = store.create_runs(&[timed]).await.unwrap()[0].run_id;
    tokio::time::sleep(MS(10)).await;
    assert_eq!(store.expire_runs(now_ms()).await.unwrap(), vec![t]);
    assert!(store.expire_runs(now_ms()).await.unwrap().is_empty());
    assert_eq!(store.stopping_runs().await.unwrap(), vec![t]);
    // Concurrency groups with cancel_in_progress supersede older runs.
    let mut old = new_run("ctl-3", "two", &[("a", &[])]);
    old.concurrency_group = Some("g".into());
    let old_id = store.create_runs(&[old]).await.unwrap()[0].run_id;
    let mut newer = new_run("ctl-4", "two", &[("a", &[])]);
    newer.concurrency_group = Some("g".into());
    newer.cancel_in_progress = true;
    let created = store.create_runs(&[newer]).await.unwrap();
    assert_eq!(created[0].superseded, vec![old_id]);
    let kinds: Vec<_> = store
        .run_events(old_id)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.kind)
        .collect();
    assert!(kinds.contains(&"cancel_requested".to_string()), "{kinds:?}");
}

/// A cancelled run's ready steps are not claimed, except those whose `if:`
/// calls always() or cancelled() (`runs_when_cancelled`), which still run.
async fn a_cancelled_run_still_hands_out_only_its_cleanup_steps(b: Backend) {
    let store = &b.store;
    let run = store
        .create_runs(&[new_run("cc-1", "two", &[("work", &[]), ("cleanup", &[])])])
        .await
        .unwrap()[0]
        .run_id;
    store.settle_run(run, &ReadyAll).await.unwrap();
    let snap = store.run(run).await.unwrap().unwrap();
    assert!(snap.steps.iter().all(|s| s.state == StepState::Ready));
    assert_eq!(
        store.cancel_run(run, "not needed").await.unwrap(),
        ControlOutcome::Changed
    );
    let claimed = store.claim_steps("w", &limits(10, 60_000)).await.unwrap();
    let names: Vec<_> = claimed.iter().map(|c| c.step.step.as_str()).collect();
    assert_eq!(names, ["cleanup"]);
    assert!(
        store
            .claim_steps("w", &limits(10, 60_000))
            .await
            .unwrap()
            .is_empty()
    );
}

async fn reports_and_sticky_comments_are_recorded(b: Backend) {
    let store = &b.store;
    store
        .insert_deliveries(&[delivery("r-1", b"{}", DeliveryState::Done)])
        .await
        .unwrap();
    let run = store
        .create_runs(&[new_run("r-1", "one", &[("work", &[])])])
        .await
        .unwrap()[0]
        .run_id;
    let now = now_ms();
    let c = store.report_candidates(now, 10).await.unwrap();
    assert_eq!(c.len(), 1);
    assert_eq!(
        (c[0].run_id, c[0].installation_id, c[0].check_run_id),
        (run, taskmaster::ids::InstallationId(42), None)
    );
    // Never touched by the outbox: found by the cheap look, after an id.
    let new: Vec<(RunId, taskmaster::ids::InstallationId)> = store
        .unreported_runs(RunId(0), 10)
        .await
        .unwrap()
        .iter()
        .map(|c| (c.run_id, c.installation_id))
        .collect();
    assert_eq!(new, vec![(run, taskmaster::ids::InstallationId(42))]);
    assert!(store.unreported_runs(run, 10).await.unwrap().is_empty());
    store.record_check_run(run, 555).await.unwrap();
    assert!(
        store
            .unreported_runs(RunId(0), 10)
            .await
            .unwrap()
            .is_empty(),
        "a check run made: no longer new"
    );
    store
        .record_report(
            run,
            &ReportOutcome::Retry {
                error: "502".into(),
                next_attempt_at: now + 60_000,
            },
        )
        .await
        .unwrap();
    assert!(
        store.report_candidates(now, 10).await.unwrap().is_empty(),
        "backing off"
    );
    let c = store.report_candidates(now + 61_000, 10).await.unwrap();
    assert_eq!((c[0].check_run_id, c[0].attempts), (Some(555), 1));
    store
        .record_report(
            run,
            &ReportOutcome::Reported {
                fingerprint: "f1".into(),
                state: "queued".into(),
                observed_at: now,
            },
        )
        .await
        .unwrap();
    // Reported and unchanged since: not a candidate, however long it stays
    // active (a storm of queued runs must not fill the window).
    assert!(
        store.report_candidates(now, 10).await.unwrap().is_empty(),
        "an unchanged run is not a candidate"
    );
    // A step started since the report's snapshot makes it one again.
    store.settle_run(run, &ReadyAll).await.unwrap();
    let claimed = store.claim_steps("w", &limits(10, 60_000)).await.unwrap();
    assert_eq!(claimed.len(), 1);
    let c = store.report_candidates(now, 10).await.unwrap();
    assert_eq!(c.len(), 1, "changed since the report");
    assert_eq!(c[0].reported_fingerprint.as_deref(), Some("f1"));
    assert_eq!(c[0].attempts, 0);
    store
        .record_report(
            run,
            &ReportOutcome::GaveUp {
                fingerprint: "f2".into(),
                error: "422".into(),
            },
        )
        .await
        .unwrap();
    let c = store.report_candidates(now, 10).await.unwrap();
    assert_eq!(c[0].gave_up_fingerprint.as_deref(), Some("f2"));
    // Sticky comments: one per subject, replaced.
    assert_eq!(
        store
            .sticky_comment(&backends::repo("octo/repo"), 7)
            .await
            .unwrap(),
        None
    );
    store
        .set_sticky_comment(&backends::repo("octo/repo"), 7, 1)
        .await
        .unwrap();
    store
        .set_sticky_comment(&backends::repo("octo/repo"), 7, 2)
        .await
        .unwrap();
    assert_eq!(
        store
            .sticky_comment(&backends::repo("octo/repo"), 7)
            .await
            .unwrap(),
        Some(2)
    );
    let second = store
        .create_runs(&[new_run("r-1", "two", &[("a", &[])])])
        .await
        .unwrap()[0]
        .run_id;
    // A run never reported goes ahead of older ones with updates due.
    let order: Vec<RunId> = store
        .report_candidates(now, 10)
        .await
        .unwrap()
        .iter()
        .map(|c| c.run_id)
        .collect();
    assert_eq!(order, vec![second, run], "the new run's first report first");
    assert_eq!(
        store
            .subject_runs(&backends::repo("octo/repo"), 7, 10)
            .await
            .unwrap(),
        vec![second, run]
    );
    assert_eq!(
        store
            .subject_runs(&backends::repo("octo/repo"), 7, 1)
            .await
            .unwrap(),
        vec![second]
    );
}

/// Many claimers at once (several pools on PostgreSQL: replicas) never get
/// the same step or the same delivery.
async fn concurrent_claimers_never_share_a_step_or_a_delivery(b: Backend) {
    const RUNS: usize = 150;
    const CLAIMERS: usize = 12;
    let store = &b.store;
    let mut replicas = vec![store.clone()];
    for _ in 0..3 {
        replicas.push(b.reopen().await);
    }
    let (_engine, planner) = idle_engine(store, &[ONE]);
    let planner = Arc::new(planner);
    let runs: Vec<_> = (0..RUNS)
        .map(|i| new_run(&format!("x-{i}"), "one", &[("work", &[])]))
        .collect();
    store.create_runs(&runs).await.unwrap();
    for id in store.unplanned_runs().await.unwrap() {
        store.settle_run(id, planner.as_ref()).await.unwrap();
    }
    let deliveries: Vec<_> = (0..RUNS)
        .map(|i| delivery(&format!("y-{i}"), b"{}", DeliveryState::Queued))
        .collect();
    store.insert_deliveries(&deliveries).await.unwrap();

    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..CLAIMERS {
        let store = replicas[n % replicas.len()].clone();
        let planner = planner.clone();
        tasks.spawn(async move {
            let owner = format!("claimer-{n}");
            let (mut steps, mut deliveries) = (Vec::new(), Vec::new());
            let mut idle = 0;
            while idle < 3 {
                let max = 1 + (n % 4);
                let claimed = store
                    .claim_steps(&owner, &limits(max, 60_000))
                    .await
                    .unwrap();
                let got = store
                    .claim_deliveries(&owner, max, MS(60_000))
                    .await
                    .unwrap();
                if claimed.is_empty() && got.is_empty() {
                    idle += 1;
                    tokio::time::sleep(MS(5)).await;
                    continue;
                }
                idle = 0;
                for c in claimed {
                    let recorded = store
                        .finish_step(
                            &c.lease,
                            Some(&attempt_ok()),
                            &success(&owner),
                            ("step_succeeded", &owner),
                            planner.as_ref(),
                        )
                        .await
                        .unwrap();
                    assert!(recorded.is_some(), "a fresh lease is always accepted");
                    steps.push(c.lease.step_row);
                }
                let results: Vec<_> = got.iter().map(|d| (d.id, DeliveryResult::Done)).collect();
                assert_eq!(
                    store.finish_deliveries(&owner, &results).await.unwrap(),
                    results.len() as u64
                );
                deliveries.extend(got.into_iter().map(|d| d.id));
            }
            (steps, deliveries)
        });
    }
    let (mut all_steps, mut all_deliveries) = (Vec::new(), Vec::new());
    let mut busy_claimers = 0;
    while let Some(done) = tasks.join_next().await {
        let (steps, deliveries) = done.unwrap();
        busy_claimers += usize::from(!steps.is_empty());
        all_steps.extend(steps);
        all_deliveries.extend(deliveries);
    }
    let unique: HashSet<_> = all_steps.iter().collect();
    assert_eq!(
        unique.len(),
        all_steps.len(),
        "a step was handed to two claimers"
    );
    assert_eq!(all_steps.len(), RUNS);
    let unique: HashSet<_> = all_deliveries.iter().collect();
    assert_eq!(
        unique.len(),
        all_deliveries.len(),
        "a delivery was handed out twice"
    );
    assert_eq!(all_deliveries.len(), RUNS);
    assert!(busy_claimers > 1, "the work spread over several claimers");
    assert!(
        store.active_runs().await.unwrap().is_empty(),
        "every run finished"
    );
    for run in store.runs_for_delivery("x-0").await.unwrap() {
        let attempts = store.attempts(run.id).await.unwrap();
        assert_eq!(attempts.len(), 1);
    }
}

async fn exclusive_jobs_are_held_by_one_store_at_a_time(b: Backend) {
    let first = b.store.try_exclusive("redelivery").await.unwrap();
    assert!(first.is_some());
    let other = b.reopen().await;
    let second = other.try_exclusive("redelivery").await.unwrap();
    if b.shared() {
        assert!(second.is_none(), "another replica holds the job");
        assert!(
            other.try_exclusive("outbox").await.unwrap().is_some(),
            "jobs are independent"
        );
        drop(first);
        // Released when the guard's connection closes.
        let mut got = None;
        for _ in 0..100 {
            got = other.try_exclusive("redelivery").await.unwrap();
            if got.is_some() {
                break;
            }
            tokio::time::sleep(MS(20)).await;
        }
        assert!(got.is_some(), "the job is free again once released");
        // A holder whose session dies (terminated, failed over) learns it
        // has lost the job before its next unit of work.
        let mut held = got.unwrap();
        assert!(held.still_held().await);
        let admin = sqlx::PgPool::connect(&b.url).await.unwrap();
        // Only the session holding this schema's `redelivery` job (other
        // tests share the server: their locks, migrations included, stay).
        sqlx::query(
            "SELECT pg_terminate_backend(pid) FROM pg_locks \
             WHERE locktype = 'advisory' AND granted AND pid <> pg_backend_pid() \
               AND objsubid = 2 AND classid = hashtext(current_schema())::oid \
               AND objid = hashtext('redelivery')::oid",
        )
        .execute(&admin)
        .await
        .unwrap();
        assert!(!held.still_held().await, "the lock died with its session");
        let mut taken = None;
        for _ in 0..100 {
            taken = b.store.try_exclusive("redelivery").await.unwrap();
            if taken.is_some() {
                break;
            }
            tokio::time::sleep(MS(20)).await;
        }
        assert!(taken.is_some(), "another replica takes it over");
        drop(held);
        // Wake-up hints cross stores: queued deliveries and ready steps.
        let mut hints = other
            .remote_wakeups(taskmaster::store::WakeTopic::Deliveries)
            .unwrap();
        let mut steps = other
            .remote_wakeups(taskmaster::store::WakeTopic::Steps)
            .unwrap();
        tokio::time::sleep(MS(300)).await; // the listener connects
        b.store
            .insert_deliveries(&[delivery("w-1", b"{}", DeliveryState::Queued)])
            .await
            .unwrap();
        tokio::time::timeout(MS(5000), hints.recv())
            .await
            .expect("a hint")
            .unwrap();
        b.store
            .create_runs(&[new_run("w-1", "one", &[("work", &[])])])
            .await
            .unwrap();
        tokio::time::timeout(MS(5000), steps.recv())
            .await
            .expect("a hint")
            .unwrap();
    } else {
        // One process per SQLite file: nobody else to exclude.
        assert!(second.is_some());
        assert!(
            other
                .remote_wakeups(taskmaster::store::WakeTopic::Steps)
                .is_none()
        );
    }
}

async fn approval_gates_claims_and_runs_are_found_by_commit(b: Backend) {
    let store = &b.store;
    let mut gated = new_run("ap-1", "one", &[("work", &[])]);
    gated.needs_approval = Some("a fork's pull request".into());
    gated.head_sha = Some("abc123".into());
    gated.timeout = Some(std::time::Duration::from_secs(60));
    let run = store.create_runs(&[gated]).await.unwrap()[0].run_id;
    store.settle_run(run, &ReadyAll).await.unwrap();
    let snap = store.run(run).await.unwrap().unwrap();
    assert!(snap.run.waiting_approval);
    assert!(
        store
            .claim_steps("w", &limits(10, 60_000))
            .await
            .unwrap()
            .is_empty(),
        "gated"
    );
    tokio::time::sleep(MS(20)).await;
    assert_eq!(
        store.approve_run(run, "maintainer").await.unwrap(),
        ControlOutcome::Changed
    );
    assert_eq!(
        store.approve_run(run, "again").await.unwrap(),
        ControlOutcome::Unchanged
    );
    assert_eq!(
        store.approve_run(RunId(9999), "x").await.unwrap(),
        ControlOutcome::NotFound
    );
    let approved = store.run(run).await.unwrap().unwrap().run;
    assert!(!approved.waiting_approval);
    assert_eq!(approved.approved_by.as_deref(), Some("maintainer"));
    assert!(
        approved.deadline_at.unwrap() > snap.run.deadline_at.unwrap(),
        "the time limit restarts at approval"
    );
    assert_eq!(
        store
            .claim_steps("w", &limits(10, 60_000))
            .await
            .unwrap()
            .len(),
        1
    );
    let kinds: Vec<_> = store
        .run_events(run)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.kind)
        .collect();
    assert!(kinds.contains(&"approval_required".into()) && kinds.contains(&"run_approved".into()));
    assert_eq!(
        store
            .runs_for_commit(&backends::repo("octo/repo"), "abc123")
            .await
            .unwrap(),
        vec![run]
    );
    assert!(
        store
            .runs_for_commit(&backends::repo("octo/repo"), "other")
            .await
            .unwrap()
            .is_empty()
    );
}

/// Leases are timed on the database's clock: a replica whose clock runs
/// ten minutes ahead does not take over another's live lease (PostgreSQL;
/// SQLite has one process).
async fn leases_follow_the_databases_clock_not_a_replicas(b: Backend) {
    if !b.shared() {
        return;
    }
    let honest = &b.store;
    let ahead: Arc<dyn RunStore> = Arc::new(
        taskmaster::store::postgres::PgStore::open(
            &b.url,
            &taskmaster::store::PoolSettings::default(),
        )
        .await
        .unwrap()
        .with_clock_skew(10 * 60 * 1000),
    );
    honest
        .insert_deliveries(&[delivery("clock-1", b"{}", DeliveryState::Queued)])
        .await
        .unwrap();
    let mine = honest
        .claim_deliveries("honest", 10, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(mine.len(), 1);
    let stolen = ahead
        .claim_deliveries("ahead", 10, Duration::from_secs(60))
        .await
        .unwrap();
    assert!(stolen.is_empty(), "a live lease was taken: {stolen:?}");
    // Steps alike: its reaper leaves the honest replica's live lease.
    let run = honest
        .create_runs(&[new_run("clock-1", "one", &[("work", &[])])])
        .await
        .unwrap()[0]
        .run_id;
    honest.settle_run(run, &ReadyAll).await.unwrap();
    assert_eq!(
        honest
            .claim_steps("honest", &limits(10, 60_000))
            .await
            .unwrap()
            .len(),
        1
    );
    assert!(ahead.reap_leases(None).await.unwrap().is_empty());
    assert!(
        ahead
            .reap_leases(Some(taskmaster::store::now_ms()))
            .await
            .unwrap()
            .is_empty()
    );
}

/// A waiting run cancelled, then retried, waits for approval again (it was
/// left `running` yet gated: never approvable, never claimed).
async fn a_retried_waiting_run_waits_for_approval_again(b: Backend) {
    let store = &b.store;
    let (_engine, planner) = idle_engine(store, &[TWO]);
    let mut gated = new_run("ap-retry", "two", &[("a", &[]), ("b", &["a"])]);
    gated.needs_approval = Some("a stranger's pull request".into());
    let run = store.create_runs(&[gated]).await.unwrap()[0].run_id;
    store.settle_run(run, &planner).await.unwrap();
    assert_eq!(
        store.cancel_run(run, "superseded").await.unwrap(),
        ControlOutcome::Changed
    );
    store.settle_run(run, &planner).await.unwrap();
    let snap = store.run(run).await.unwrap().unwrap();
    assert_eq!(snap.run.state, RunState::Cancelled, "ended at once");
    assert_eq!(
        store.retry_run(run, None).await.unwrap(),
        ControlOutcome::Changed
    );
    store.settle_run(run, &planner).await.unwrap();
    let snap = store.run(run).await.unwrap().unwrap();
    assert_eq!(snap.run.state, RunState::Queued);
    assert!(snap.run.waiting_approval);
    assert_eq!(
        store.approve_run(run, "maintainer").await.unwrap(),
        ControlOutcome::Changed
    );
    assert_eq!(
        store
            .claim_steps("w", &limits(10, 60_000))
            .await
            .unwrap()
            .len(),
        1
    );
}

async fn operator_api_records_tokens_tasks_validations_and_counts(b: Backend) {
    // Dashboard sessions ended on the server stay ended, on every replica.
    assert!(!b.store.session_ended("sig-1").await.unwrap());
    b.store.end_session("sig-1", i64::MAX).await.unwrap();
    b.store.end_session("sig-1", i64::MAX).await.unwrap();
    assert!(b.store.session_ended("sig-1").await.unwrap());
    assert!(b.reopen().await.session_ended("sig-1").await.unwrap());
    use taskmaster::store::{
        NewApiToken, NewTask, NewValidation, Role, RunFilter, TaskFilter, TaskSource, TaskState,
        TaskUpdate, ValidationFilter, ValidationKind, Verdict,
    };
    let store = &b.store;
    let token = NewApiToken {
        name: "ci".into(),
        role: Role::Operator,
        token_hash: "h1".into(),
        prefix: "tm_ab".into(),
        created_by: "cli".into(),
        created_at: 10,
        expires_at: Some(86_400_010),
        repositories: Some(vec!["octo/repo".into()]),
    };
    let created = store.create_api_token(&token).await.unwrap().unwrap();
    assert_eq!(created.expires_at, Some(86_400_010), "the expiry is kept");
    assert_eq!(created.repositories, Some(vec!["octo/repo".to_owned()]));
    assert_eq!(
        (created.name.as_str(), created.role),
        ("ci", Role::Operator)
    );
    assert!(
        store.create_api_token(&token).await.unwrap().is_none(),
        "names are unique"
    );
    assert_eq!(
        store.api_token_by_hash("h1").await.unwrap().unwrap().id,
        created.id
    );
    assert!(store.api_token_by_hash("nope").await.unwrap().is_none());
    store.touch_api_token(created.id, 20).await.unwrap();
    let revoked = store.revoke_api_token("ci", 30).await.unwrap().unwrap();
    assert_eq!(
        (revoked.last_used_at, revoked.revoked_at),
        (Some(20), Some(30))
    );
    let again = store.revoke_api_token("ci", 40).await.unwrap().unwrap();
    assert_eq!(
        again.revoked_at,
        Some(30),
        "the first revocation time is kept"
    );
    assert!(store.revoke_api_token("nope", 1).await.unwrap().is_none());
    assert_eq!(store.api_tokens().await.unwrap().len(), 1);

    store
        .insert_deliveries(&[delivery("api-1", b"{}", DeliveryState::Done)])
        .await
        .unwrap();
    let r1 = store
        .create_runs(&[new_run("api-1", "one", &[("work", &[])])])
        .await
        .unwrap()[0]
        .run_id;
    let r2 = store
        .create_runs(&[new_run("api-1", "two", &[("a", &[])])])
        .await
        .unwrap()[0]
        .run_id;
    let all = store
        .list_runs(&RunFilter {
            limit: 10,
            ..RunFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(all.iter().map(|r| r.id).collect::<Vec<_>>(), vec![r2, r1]);
    let filtered = store
        .list_runs(&RunFilter {
            workflow: Some("one".into()),
            state: Some(RunState::Queued),
            limit: 10,
            ..RunFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(filtered.len(), 1);
    let page = store
        .list_runs(&RunFilter {
            before_id: Some(r2.0),
            limit: 10,
            ..RunFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(page[0].id, r1);
    assert_eq!(
        store
            .installation_for_repository(&backends::repo("octo/repo"))
            .await
            .unwrap(),
        Some(taskmaster::ids::InstallationId(42))
    );
    assert_eq!(
        store
            .installation_for_repository(&backends::repo("x/y"))
            .await
            .unwrap(),
        None
    );

    let task = store
        .create_task(&NewTask {
            source: TaskSource::Api,
            repository: Some("octo/repo".into()),
            subject_number: None,
            title: "Fix it".into(),
            body: "please".into(),
            classification: serde_json::json!({"kind": "bug"}),
            created_by: "ci".into(),
            created_at: 5,
        })
        .await
        .unwrap();
    assert_eq!(task.state, TaskState::Open);
    let updated = store
        .update_task(
            task.id,
            &TaskUpdate {
                title: None,
                body: Some("now".into()),
                classification: None,
                state: Some(TaskState::InProgress),
                run_id: Some(Some(r1.0)),
                updated_at: 6,
            },
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (updated.body.as_str(), updated.state, updated.run_id),
        ("now", TaskState::InProgress, Some(r1.0))
    );
    assert_eq!(store.task(task.id).await.unwrap().unwrap().updated_at, 6);
    assert!(store.task(task.id + 100).await.unwrap().is_none());
    let listed = store
        .tasks(&TaskFilter {
            state: Some(TaskState::InProgress),
            limit: 5,
            ..TaskFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(listed.len(), 1);
    assert!(
        store
            .update_task(
                task.id,
                &TaskUpdate {
                    title: None,
                    body: None,
                    classification: None,
                    state: None,
                    run_id: Some(Some(9999)),
                    updated_at: 7,
                }
            )
            .await
            .is_err(),
        "a task's run must exist"
    );

    let v = store
        .create_validation(&NewValidation {
            run_id: Some(r1.0),
            step: Some("work".into()),
            kind: ValidationKind::Tests,
            verdict: Verdict::Fail,
            summary: "2 failures".into(),
            evidence: serde_json::json!(["log"]),
            created_by: "engine".into(),
            created_at: 8,
        })
        .await
        .unwrap();
    assert_eq!(
        store.validation(v.id).await.unwrap().unwrap().evidence,
        serde_json::json!(["log"])
    );
    let found = store
        .validations(&ValidationFilter {
            run_id: Some(r1.0),
            kind: Some(ValidationKind::Tests),
            verdict: Some(Verdict::Fail),
            before_id: None,
            limit: 5,
        })
        .await
        .unwrap();
    assert_eq!(found.len(), 1);

    let counts = store.store_counts().await.unwrap();
    assert!(
        counts.runs.contains(&("one".into(), "queued".into(), 1)),
        "{counts:?}"
    );
    assert!(
        counts
            .deliveries
            .contains(&("pull_request".into(), "done".into(), 1))
    );
    store.settle_run(r1, &ReadyAll).await.unwrap();
    store.claim_steps("w", &limits(10, 60_000)).await.unwrap();
    let stats = store.agent_attempt_stats(0).await.unwrap();
    assert_eq!(stats.len(), 1);
    assert_eq!((stats[0].agent.as_str(), stats[0].in_flight), ("worker", 1));
}

async fn the_dashboard_lists_deliveries_requeues_them_and_filters_runs_by_day(b: Backend) {
    let store = &b.store;
    store
        .insert_deliveries(&[
            delivery("dq-1", b"{}", DeliveryState::Ignored),
            delivery("dq-2", b"{}", DeliveryState::Done),
            delivery("dq-3", b"{}", DeliveryState::Ignored),
        ])
        .await
        .unwrap();
    let filter = |state, before_id, limit| taskmaster::store::DeliveryFilter {
        state,
        before_id,
        limit,
    };
    let all = store.list_deliveries(&filter(None, None, 2)).await.unwrap();
    assert_eq!(
        all.iter()
            .map(|d| d.delivery_id.as_str())
            .collect::<Vec<_>>(),
        ["dq-3", "dq-2"],
        "newest first, a page of 2"
    );
    let next = store
        .list_deliveries(&filter(None, Some(all[1].id), 10))
        .await
        .unwrap();
    assert_eq!(next.len(), 1);
    assert_eq!(next[0].delivery_id, "dq-1");
    let ignored = store
        .list_deliveries(&filter(Some(DeliveryState::Ignored), None, 10))
        .await
        .unwrap();
    assert_eq!(ignored.len(), 2);

    // An ignored delivery goes back to the queue; a done one does not.
    assert_eq!(
        store.requeue_delivery("dq-1", now_ms()).await.unwrap(),
        Some(DeliveryState::Ignored)
    );
    assert_eq!(
        store.requeue_delivery("dq-2", now_ms()).await.unwrap(),
        Some(DeliveryState::Done)
    );
    assert_eq!(
        store.requeue_delivery("nope", now_ms()).await.unwrap(),
        None
    );
    assert_eq!(
        store.delivery("dq-1").await.unwrap().unwrap().state,
        DeliveryState::Queued
    );
    assert_eq!(
        store.delivery("dq-2").await.unwrap().unwrap().state,
        DeliveryState::Done
    );

    // Runs filtered by creation time.
    store
        .insert_deliveries(&[delivery("dq-run", b"{}", DeliveryState::Done)])
        .await
        .unwrap();
    store
        .create_runs(&[new_run("dq-run", "one", &[("work", &[])])])
        .await
        .unwrap();
    let runs = |from, before| taskmaster::store::RunFilter {
        created_from: from,
        created_before: before,
        limit: 10,
        ..taskmaster::store::RunFilter::default()
    };
    let now = now_ms();
    assert_eq!(
        store
            .list_runs(&runs(Some(now - 60_000), None))
            .await
            .unwrap()
            .len(),
        1
    );
    assert!(
        store
            .list_runs(&runs(Some(now + 60_000), None))
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        store
            .list_runs(&runs(None, Some(now - 60_000)))
            .await
            .unwrap()
            .is_empty()
    );
}

async fn a_recorded_result_hands_what_it_made_ready_to_the_same_claim(b: Backend) {
    let store = &b.store;
    let (engine, planner) = idle_engine(store, &[TWO]);
    let run = engine
        .start_run("two", "pull_request", &pr_payload(), "handoff-1")
        .await
        .unwrap()
        .run_id;
    let first = store.claim_steps("w", &limits(10, 60_000)).await.unwrap();
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].step.step, "a");
    let finish = |lease: &Lease, detail: &str| StepFinish {
        lease: lease.clone(),
        attempt: Some(attempt_ok()),
        next: success("done"),
        kind: "step_succeeded".into(),
        detail: detail.into(),
    };

    // A stale token: refused, and the claim after it finds nothing ready.
    let stale = Lease {
        token: "not-the-token".into(),
        ..first[0].lease.clone()
    };
    let (plans, claimed) = store
        .finish_and_claim(
            &[finish(&stale, "stale")],
            &planner,
            "w",
            &limits(10, 60_000),
        )
        .await
        .unwrap();
    assert!(plans[0].is_none(), "the stale result is refused");
    assert_eq!(claimed.map(|c| c.len()), Some(0));

    // No free slot: the result is recorded, no claim runs, `b` waits ready.
    let (plans, claimed) = store
        .finish_and_claim(
            &[finish(&first[0].lease, "a done")],
            &planner,
            "w",
            &limits(0, 60_000),
        )
        .await
        .unwrap();
    let plan = plans[0].as_ref().expect("accepted");
    assert!(
        plan.steps
            .iter()
            .any(|c| c.step == "b" && c.to == StepState::Ready),
        "{plan:?}"
    );
    assert!(claimed.is_none());
    let snap = store.run(run).await.unwrap().unwrap();
    assert_eq!(snap.step("a").unwrap().state, StepState::Succeeded);
    assert_eq!(snap.step("b").unwrap().state, StepState::Ready);

    // Retry `a` so its result makes `b` ready again, this time with room:
    // the same call claims `b` and starts its attempt.
    assert_eq!(
        store.retry_run(run, Some("a")).await.unwrap(),
        ControlOutcome::Changed
    );
    store.settle_run(run, &planner).await.unwrap();
    let again = store.claim_steps("w", &limits(10, 60_000)).await.unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].step.step, "a");
    let (plans, claimed) = store
        .finish_and_claim(
            &[finish(&again[0].lease, "a done again")],
            &planner,
            "w",
            &limits(10, 60_000),
        )
        .await
        .unwrap();
    assert!(plans[0].is_some());
    let claimed = claimed.expect("a claim ran");
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].step.step, "b");
    assert_eq!(claimed[0].attempt, Some(1));
    let snap = store.run(run).await.unwrap().unwrap();
    assert_eq!(snap.step("b").unwrap().state, StepState::Running);
    assert_eq!(
        store
            .renew_lease(&claimed[0].lease, MS(60_000))
            .await
            .unwrap(),
        Some(DesiredState::Running),
        "the hand-off holds a real lease"
    );
}

async fn changes_wait_for_success_keep_progress_and_resend_reports(b: Backend) {
    use taskmaster::store::{ChangeState, Publication, PublishTarget};
    let store = &b.store;
    let (engine, planner) = idle_engine(store, &[ONE]);
    // A payload with its installation: the run is reported.
    let mut payload: serde_json::Value = serde_json::from_slice(&pr_payload()).unwrap();
    payload["installation"] = serde_json::json!({ "id": 42 });
    let payload = serde_json::to_vec(&payload).unwrap();
    let run = engine
        .start_run("one", "pull_request", &payload, "change-1")
        .await
        .unwrap()
        .run_id;
    assert!(store.run_change(run).await.unwrap().is_none());
    let change = taskmaster::workspace::Change {
        base_sha: "a".repeat(40),
        files: vec![taskmaster::workspace::ChangedFile {
            path: "a.txt".into(),
            status: taskmaster::workspace::FileStatus::Added,
            old_mode: None,
            new_mode: Some("100644".into()),
            sha: Some("b".repeat(40)),
            size: 3,
            additions: 1,
            deletions: 0,
            binary: false,
        }],
        additions: 1,
        blobs: [("b".repeat(40), "YWJj".to_owned())].into_iter().collect(),
        ..Default::default()
    };
    store
        .record_change(run, "work", &change, None)
        .await
        .unwrap();
    let stored = store.run_change(run).await.unwrap().unwrap();
    assert_eq!(stored.state, ChangeState::Pending);
    assert_eq!(stored.change, change, "blobs and all, byte for byte");
    // Not sent while the run is not done.
    assert!(
        store
            .changes_to_publish(now_ms(), 10)
            .await
            .unwrap()
            .is_empty()
    );
    let claimed = store
        .claim_steps("worker", &limits(10, 5000))
        .await
        .unwrap();
    store
        .finish_step(
            &claimed[0].lease,
            Some(&attempt_ok()),
            &success("done"),
            ("step_succeeded", "ok"),
            &planner,
        )
        .await
        .unwrap();
    assert_eq!(store.changes_to_publish(now_ms(), 10).await.unwrap(), [run]);
    // Progress is kept; a transient failure backs off.
    let mut p = Publication {
        target: Some(PublishTarget::NewPullRequest),
        tree: Some("c".repeat(40)),
        ..Default::default()
    };
    store.save_publication(run, &p).await.unwrap();
    store
        .retry_publication(run, "502", now_ms() + 60_000)
        .await
        .unwrap();
    assert!(
        store
            .changes_to_publish(now_ms(), 10)
            .await
            .unwrap()
            .is_empty()
    );
    let stored = store.run_change(run).await.unwrap().unwrap();
    assert_eq!(
        (stored.attempts, stored.publication.clone()),
        (1, p.clone())
    );
    // Published: not offered again, the report is due again, the timeline says so.
    store
        .record_report(
            run,
            &taskmaster::store::ReportOutcome::Reported {
                fingerprint: "f".into(),
                state: "succeeded".into(),
                observed_at: now_ms(),
            },
        )
        .await
        .unwrap();
    assert!(
        store
            .report_candidates(now_ms(), 10)
            .await
            .unwrap()
            .is_empty()
    );
    p.commit = Some("d".repeat(40));
    store
        .finish_publication(run, ChangeState::Published, &p, None, "opened #9")
        .await
        .unwrap();
    assert!(
        store
            .changes_to_publish(now_ms() + 120_000, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        store.report_candidates(now_ms(), 10).await.unwrap().len(),
        1
    );
    let events = store.run_events(run).await.unwrap();
    assert!(
        events
            .iter()
            .any(|e| e.kind == "changes" && e.detail == "1 file changed (+1 −0)")
    );
    assert!(
        events
            .iter()
            .any(|e| e.kind == "published" && e.detail == "opened #9")
    );
    // A later harvest never replaces a published change.
    store
        .record_change(run, "work", &taskmaster::workspace::Change::default(), None)
        .await
        .unwrap();
    let stored = store.run_change(run).await.unwrap().unwrap();
    assert_eq!(stored.state, ChangeState::Published);
    assert_eq!(stored.publication.commit, p.commit);
    // A refused change says why.
    let run2 = engine
        .start_run("one", "pull_request", &pr_payload(), "change-2")
        .await
        .unwrap()
        .run_id;
    store
        .record_change(run2, "work", &change, Some("a secret"))
        .await
        .unwrap();
    let refused = store.run_change(run2).await.unwrap().unwrap();
    assert_eq!(
        (refused.state, refused.refused.as_deref()),
        (ChangeState::Refused, Some("a secret"))
    );
}

both_backends!(
    changes_wait_for_success_keep_progress_and_resend_reports,
    staged_deliveries_answer_like_inserted_ones_once_durable,
    a_recorded_result_hands_what_it_made_ready_to_the_same_claim,
    a_cancelled_run_still_hands_out_only_its_cleanup_steps,
    the_dashboard_lists_deliveries_requeues_them_and_filters_runs_by_day,
    approval_gates_claims_and_runs_are_found_by_commit,
    a_retried_waiting_run_waits_for_approval_again,
    leases_follow_the_databases_clock_not_a_replicas,
    operator_api_records_tokens_tasks_validations_and_counts,
    deliveries_are_stored_once_and_read_back_byte_for_byte,
    deliveries_are_claimed_in_order_and_finished_only_by_their_owner,
    expired_delivery_leases_are_taken_over_and_recovered,
    a_started_delivery_creates_its_runs_in_the_same_transaction_once,
    only_the_current_lease_token_records_a_result,
    heartbeats_renew_only_leases_held_with_their_token,
    claims_respect_max_parallel_priority_and_concurrency_groups,
    control_operations_pause_resume_cancel_retry_and_deadlines,
    reports_and_sticky_comments_are_recorded,
    concurrent_claimers_never_share_a_step_or_a_delivery,
    exclusive_jobs_are_held_by_one_store_at_a_time,
);
