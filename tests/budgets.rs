//! Spend limits (`budgets:`) through a running engine: a run stops at the
//! attempt that would start over its budget; a repository's daily budget
//! stops its next run but not another repository's; the month's spend
//! resets at the month boundary (the engine's clock injected); an AgentAPI
//! agent's cost is estimated from its wall time and marked so; a stopped
//! run's check run is `neutral` and says which budget and how to raise it.

mod engine_support;
mod support;

use std::sync::Arc;
use std::time::Duration;
use taskmaster::store::RunId;

use engine_support::{Act, Scripted, TestEngine, fast_config, pr_payload, workflows};
use support::agentapi::{Behavior, StandIn};
use taskmaster::agent::agentapi::{AgentApiAgent, AgentApiSettings};
use taskmaster::budget::{Budgets, Limits, Price};
use taskmaster::engine::{AgentMap, EngineConfig};
use taskmaster::github::CheckConclusion;
use taskmaster::store::prelude::*;
use taskmaster::store::{RunState, StepState, now_ms};

const FOUR: &str = r#"
name: four
on: { pull_request: {} }
steps:
  a: { agent: worker, prompt: "a" }
  b: { agent: worker, needs: a, prompt: "b" }
  c: { agent: worker, needs: b, prompt: "c" }
  d: { agent: worker, needs: c, prompt: "d" }
"#;

const ONE: &str = r#"
name: one
on: { pull_request: {} }
steps:
  work: { agent: worker, prompt: "x" }
"#;

fn usd(limit: f64) -> Limits {
    Limits {
        usd: Some(limit),
        ..Limits::default()
    }
}

fn config(budgets: Budgets) -> EngineConfig {
    EngineConfig {
        budgets,
        ..fast_config()
    }
}

/// The PR fixture, about `repository` instead.
fn payload_of(repository: &str) -> Vec<u8> {
    let mut v: serde_json::Value = serde_json::from_slice(&pr_payload()).unwrap();
    v["repository"]["full_name"] = repository.into();
    v["repository"]["name"] = repository.split('/').nth(1).unwrap().into();
    serde_json::to_vec(&v).unwrap()
}

async fn start(t: &TestEngine, workflow: &str, repository: &str) -> i64 {
    let delivery = format!("test-{}", uuid::Uuid::new_v4());
    (t.engine
        .start_run(workflow, "pull_request", &payload_of(repository), &delivery)
        .await
        .unwrap()
        .run_id)
        .0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_stops_at_the_attempt_that_would_start_over_its_budget() {
    // Each step costs $2; the run may spend $5: a, b and c start ($0, $2,
    // $4 spent before them), d would start with $6 spent.
    let worker = Scripted::new(
        "worker",
        Act::OkCosting(Duration::from_millis(10), "done", 2.0),
    );
    let budgets = Budgets {
        run: usd(5.0),
        ..Budgets::default()
    };
    let t = TestEngine::start(
        workflows(&[FOUR], &["worker"]),
        AgentMap::new().with(worker.clone()),
        config(budgets),
    )
    .await;
    let run_id = t.start_run("four").await;
    let snap = t.wait_run(run_id, Duration::from_secs(20)).await;
    assert_eq!(worker.attempts_of("d").len(), 0, "d never started");
    assert_eq!(worker.seen.lock().unwrap().len(), 3);
    assert!((snap.run.cost_usd - 6.0).abs() < 1e-9);
    // c's cost spent the budget: the run stopped as c ended, so d was
    // cancelled, or refused if the hand-off had claimed it already.
    let d = snap.steps.iter().find(|s| s.step == "d").unwrap();
    assert!(
        matches!(d.state, StepState::Cancelled | StepState::Failed),
        "{d:?}"
    );
    let why = snap
        .run
        .stopped_by_budget
        .clone()
        .expect("stopped by a budget");
    assert!(
        why.contains("This run's budget of $5.00 is spent: $6.00 so far"),
        "{why}"
    );
    assert!(why.contains("`budgets.run`"), "{why}");
    // The check run: neutral, saying which budget and how to raise it.
    let report = taskmaster::outbox::build_report(&snap, None);
    let (_, conclusion) = report.check_status();
    assert_eq!(conclusion, Some(CheckConclusion::Neutral));
    let output = report.check_run_update().output.unwrap();
    assert!(output.title.contains("budget"), "{}", output.title);
    assert!(
        output.summary().contains("budgets.run"),
        "{}",
        output.summary()
    );
    assert!(
        output
            .summary()
            .contains("| Step | Agent | State | Attempts | Duration | Cost |"),
        "{}",
        output.summary()
    );
    assert!(
        output.summary().contains("| $2.00 |"),
        "{}",
        output.summary()
    );
    let c = snap.steps.iter().find(|s| s.step == "c").unwrap();
    assert!((c.cost_usd - 2.0).abs() < 1e-9, "{c:?}");
    assert!(
        output.summary().contains("Cost so far: $6.00"),
        "{}",
        output.summary()
    );
    let events = t.events(run_id).await;
    assert!(
        events.iter().any(|e| e.kind == "budget_exhausted"),
        "{events:?}"
    );
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repository_daily_budget_stops_its_next_run_not_another_repositorys() {
    let worker = Scripted::new(
        "worker",
        Act::OkCosting(Duration::from_millis(10), "done", 4.0),
    );
    let budgets = Budgets {
        repository_day: usd(3.0),
        ..Budgets::default()
    };
    let t = TestEngine::start(
        workflows(&[ONE], &["worker"]),
        AgentMap::new().with(worker.clone()),
        config(budgets),
    )
    .await;
    let first = start(&t, "one", "octo/spender").await;
    let first = t.wait_run(first, Duration::from_secs(20)).await;
    assert_eq!(first.run.state, RunState::Succeeded, "$0 spent before it");
    let second = start(&t, "one", "octo/spender").await;
    let second = t.wait_run(second, Duration::from_secs(20)).await;
    assert_ne!(second.run.state, RunState::Succeeded);
    let why = second.run.stopped_by_budget.clone().unwrap();
    assert!(
        why.contains("The repository's budget for today (UTC) of $3.00 is spent: $4.00 so far"),
        "{why}"
    );
    let other = start(&t, "one", "octo/thrifty").await;
    let other = t.wait_run(other, Duration::from_secs(20)).await;
    assert_eq!(other.run.state, RunState::Succeeded);
    assert_eq!(worker.seen.lock().unwrap().len(), 2);
    // What the store counts for the day, by repository.
    let today = taskmaster::budget::day_number(now_ms());
    let spender = t
        .store
        .spent(today, Some("octo/spender"), None)
        .await
        .unwrap();
    assert!((spender.usd - 4.0).abs() < 1e-9);
    assert_eq!(spender.attempts, 1);
    let all = t.store.spent(today, None, None).await.unwrap();
    assert!((all.usd - 8.0).abs() < 1e-9);
    t.stop().await;
}

/// 40 days on: past the end of this month whatever today is.
fn forty_days_on() -> i64 {
    now_ms() + 40 * 24 * 60 * 60 * 1000
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_monthly_budget_resets_at_the_month_boundary() {
    let worker = Scripted::new(
        "worker",
        Act::OkCosting(Duration::from_millis(10), "done", 4.0),
    );
    let budgets = Budgets {
        repository_month: usd(3.0),
        ..Budgets::default()
    };
    let set = workflows(&[ONE], &["worker"]);
    let t = TestEngine::start(
        set.clone(),
        AgentMap::new().with(worker.clone()),
        config(budgets),
    )
    .await;
    let first = start(&t, "one", "octo/spender").await;
    t.wait_run(first, Duration::from_secs(20)).await;
    let second = start(&t, "one", "octo/spender").await;
    let second = t.wait_run(second, Duration::from_secs(20)).await;
    assert!(
        second.run.stopped_by_budget.is_some(),
        "this month is spent"
    );
    // The same database, with the engine's clock in a later month.
    let (dir, store) = t.stop().await;
    let later = TestEngine::start_on(
        dir,
        store,
        set,
        AgentMap::new().with(worker.clone()),
        EngineConfig {
            clock: forty_days_on,
            ..config(budgets)
        },
    );
    let third = start(&later, "one", "octo/spender").await;
    let third = later.wait_run(third, Duration::from_secs(20)).await;
    assert_eq!(third.run.state, RunState::Succeeded, "{:?}", third.run);
    later.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agentapi_agents_cost_is_estimated_from_its_wall_time() {
    let stand_in = StandIn::start(Behavior {
        work: Duration::from_millis(600),
        ..Behavior::default()
    })
    .await;
    let mut s = AgentApiSettings::new("worker", stand_in.url());
    s.poll_interval = Duration::from_millis(50);
    let agent = Arc::new(AgentApiAgent::new(s).unwrap());
    // $6 a minute: a tenth of a dollar a second.
    let price = Price {
        per_minute: Some(6.0),
        ..Price::default()
    };
    let t = TestEngine::start(
        workflows(&[ONE], &["worker"]),
        AgentMap::new().with(agent).with_price("worker", price),
        fast_config(),
    )
    .await;
    let run_id = t.start_run("one").await;
    let snap = t.wait_run(run_id, Duration::from_secs(20)).await;
    assert_eq!(snap.run.state, RunState::Succeeded);
    let attempts = t.store.attempts(RunId(run_id)).await.unwrap();
    assert_eq!(attempts.len(), 1);
    let a = &attempts[0];
    assert!(a.cost_estimated, "AgentAPI reports no cost: estimated");
    let expected = a.duration_ms.unwrap() as f64 / 1000.0 * 0.1;
    let cost = a.cost_usd.unwrap();
    // The record keeps whole milliseconds; the estimate used the exact time.
    assert!((cost - expected).abs() < 1e-3, "{cost} vs {expected}");
    assert!(
        cost >= 0.06,
        "at least the 600 ms the stand-in worked: {cost}"
    );
    assert!((snap.run.cost_usd - cost).abs() < 1e-9);
    t.stop().await;
}

/// A repository's `.github/taskmaster.yml` budgets travel with its runs and
/// tighten the service's: here the service allows $100 a run, the
/// repository $3.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repositorys_tighter_budget_stops_its_run() {
    let worker = Scripted::new(
        "worker",
        Act::OkCosting(Duration::from_millis(10), "done", 2.0),
    );
    let service = Budgets {
        run: usd(100.0),
        ..Budgets::default()
    };
    // The set a repository's configuration makes (`RepoConfig::apply`).
    let set = workflows(&[FOUR], &["worker"]);
    let mut four = set.get("four").unwrap().clone();
    four.budgets = Budgets {
        run: usd(3.0),
        ..Budgets::default()
    };
    let set = Arc::new(set.with_replaced(vec![four]));
    let t = TestEngine::start(set, AgentMap::new().with(worker.clone()), config(service)).await;
    let run_id = t.start_run("four").await;
    let snap = t.wait_run(run_id, Duration::from_secs(20)).await;
    // a ($0 before it) and b ($2) ran; b's cost spent the $3.
    assert_eq!(worker.seen.lock().unwrap().len(), 2);
    let why = snap.run.stopped_by_budget.clone().unwrap();
    assert!(
        why.contains("This run's budget of $3.00 is spent: $4.00 so far"),
        "{why}"
    );
    assert!(why.contains(".github/taskmaster.yml"), "{why}");
    t.stop().await;
}

const PARALLEL: &str = r#"
name: parallel
on: { pull_request: {} }
steps:
  fast: { agent: worker, prompt: "fast" }
  slow: { agent: worker, prompt: "slow" }
"#;

/// A running attempt is stopped when its run's budget is spent by another
/// attempt of the run ending meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attempt_still_running_is_stopped_when_its_runs_budget_is_spent() {
    let worker = Scripted::new("worker", Act::Hang).script(
        "fast",
        vec![Act::OkCosting(Duration::from_millis(100), "done", 10.0)],
    );
    let budgets = Budgets {
        run: usd(5.0),
        ..Budgets::default()
    };
    let t = TestEngine::start(
        workflows(&[PARALLEL], &["worker"]),
        AgentMap::new().with(worker.clone()),
        config(budgets),
    )
    .await;
    let run_id = t.start_run("parallel").await;
    let snap = t.wait_run(run_id, Duration::from_secs(20)).await;
    let slow = worker.attempts_of("slow");
    assert_eq!(slow.len(), 1, "{slow:?}");
    assert!(slow[0].cancelled, "the hanging attempt was cancelled");
    let why = snap.run.stopped_by_budget.clone().unwrap();
    assert!(
        why.contains("This run's budget of $5.00 is spent: $10.00 so far"),
        "{why}"
    );
    let step = snap.steps.iter().find(|s| s.step == "slow").unwrap();
    assert_eq!(step.state, StepState::Cancelled, "{step:?}");
    t.stop().await;
}
