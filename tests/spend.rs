//! What agents cost, recorded the same on both backends: an ended attempt
//! adds its cost, its time and one attempt to its day's row of its
//! repository and installation, in the transaction that records it; an
//! attempt the engine refused before asking the agent adds nothing.

mod backends;
mod engine_support;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use backends::Backend;
use engine_support::{fast_config, pr_payload, workflows};
use taskmaster::budget::day_number;
use taskmaster::engine::{AgentMap, Engine, WorkflowPlanner};
use taskmaster::store::prelude::*;
use taskmaster::store::{AttemptRecord, ClaimLimits, StepNext, StepState, now_ms};

const ONE: &str = r#"
name: one
on: { pull_request: {} }
steps:
  work: { agent: worker, prompt: "x" }
"#;

fn payload(repository: &str, installation: i64) -> Vec<u8> {
    let mut v: serde_json::Value = serde_json::from_slice(&pr_payload()).unwrap();
    v["repository"]["full_name"] = repository.into();
    v["installation"] = serde_json::json!({ "id": installation });
    serde_json::to_vec(&v).unwrap()
}

fn limits() -> ClaimLimits {
    ClaimLimits {
        max: 10,
        per_agent: HashMap::new(),
        lease: std::time::Duration::from_secs(60),
        refused_agents: HashSet::new(),
    }
}

/// Starts a run of `one` and records its one attempt with `record`.
async fn run_costing(
    store: &Arc<dyn RunStore>,
    engine: &Engine,
    planner: &WorkflowPlanner,
    delivery: &str,
    repository: &str,
    installation: i64,
    record: AttemptRecord,
) {
    engine
        .start_run(
            "one",
            "pull_request",
            &payload(repository, installation),
            delivery,
        )
        .await
        .unwrap();
    let claimed = store.claim_steps("w", &limits()).await.unwrap();
    assert_eq!(claimed.len(), 1);
    let done = StepNext::Finish {
        state: StepState::Succeeded,
        output: Some("ok".into()),
        error: None,
    };
    let plan = store
        .finish_step(
            &claimed[0].lease,
            Some(&record),
            &done,
            ("step_succeeded", ""),
            planner,
        )
        .await
        .unwrap();
    assert!(plan.is_some());
}

async fn ended_attempts_add_to_their_days_spend(b: Backend) {
    let store = &b.store;
    let set = workflows(&[ONE], &["worker"]);
    let planner = WorkflowPlanner::new(set.clone());
    let engine = Engine::new(store.clone(), set, Arc::new(AgentMap::new()), fast_config());
    let ran = |usd: f64, ms: i64, estimated: bool| AttemptRecord {
        outcome: taskmaster::store::AttemptEnd::parse("succeeded").unwrap(),
        duration_ms: ms,
        cost_usd: Some(usd),
        cost_estimated: estimated,
        ran: true,
        ..AttemptRecord::default()
    };
    run_costing(
        store,
        &engine,
        &planner,
        "d1",
        "octo/a",
        7,
        ran(1.25, 60_000, false),
    )
    .await;
    run_costing(
        store,
        &engine,
        &planner,
        "d2",
        "octo/a",
        7,
        ran(0.5, 30_000, true),
    )
    .await;
    run_costing(
        store,
        &engine,
        &planner,
        "d3",
        "octo/b",
        8,
        ran(2.0, 1_000, false),
    )
    .await;
    // Refused before the agent was asked: not spend.
    let refused = AttemptRecord {
        outcome: taskmaster::store::AttemptEnd::parse("failed").unwrap(),
        error_kind: Some("budget".into()),
        ..AttemptRecord::default()
    };
    run_costing(store, &engine, &planner, "d4", "octo/a", 7, refused).await;

    let today = day_number(now_ms());
    let a = store.spent(today, Some("octo/a"), None).await.unwrap();
    assert!((a.usd - 1.75).abs() < 1e-9, "{a:?}");
    assert_eq!((a.attempts, a.agent_ms), (2, 90_000));
    let eight = store
        .spent(today, None, Some(taskmaster::ids::InstallationId(8)))
        .await
        .unwrap();
    assert!(
        (eight.usd - 2.0).abs() < 1e-9 && eight.attempts == 1,
        "{eight:?}"
    );
    let all = store.spent(today, None, None).await.unwrap();
    assert!(
        (all.usd - 3.75).abs() < 1e-9 && all.attempts == 3,
        "{all:?}"
    );
    // Nothing from tomorrow on.
    let none = store.spent(today + 1, None, None).await.unwrap();
    assert_eq!((none.usd, none.attempts), (0.0, 0));
    let rows = store.spend_rows(today).await.unwrap();
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert_eq!(
        (rows[0].repository.as_str(), rows[0].installation_id),
        ("octo/a", taskmaster::ids::InstallationId(7))
    );
    // By workflow and agent (the dashboard's view): every ended attempt,
    // the refused one too, which cost nothing.
    let by_agent = store.spend_by_workflow_agent(0).await.unwrap();
    assert_eq!(by_agent.len(), 1, "{by_agent:?}");
    let one = &by_agent[0];
    assert_eq!(
        (one.workflow.as_str(), one.agent.as_str()),
        ("one", "worker")
    );
    assert!((one.usd - 3.75).abs() < 1e-9, "{one:?}");
    assert_eq!((one.attempts, one.estimated, one.agent_ms), (4, 1, 91_000));
    // The loop breaker's count of a subject's recent runs.
    let number = serde_json::from_slice::<serde_json::Value>(&pr_payload()).unwrap()["number"]
        .as_i64()
        .unwrap();
    let hour_ago = now_ms() - 3_600_000;
    assert_eq!(
        store
            .subject_runs_since(
                &taskmaster::github::RepoName::parse("octo/a").unwrap(),
                number,
                hour_ago
            )
            .await
            .unwrap(),
        3
    );
    assert_eq!(
        store
            .subject_runs_since(
                &taskmaster::github::RepoName::parse("octo/a").unwrap(),
                number,
                now_ms() + 1
            )
            .await
            .unwrap(),
        0
    );
    // The attempts say which costs were estimated.
    let runs = store.runs_for_delivery("d2").await.unwrap();
    let attempts = store.attempts(runs[0].id).await.unwrap();
    assert!(attempts[0].cost_estimated);
    assert!((runs[0].cost_usd - 0.5).abs() < 1e-9);
}

both_backends!(ended_attempts_add_to_their_days_spend);
