//! Insights on both backends: the history the store hands back, the
//! prediction a new run keeps from its creation (falling back without
//! history, drawing on it once there is some, pushed back by a queue), and
//! the report computed from it — analytics, advice with its numbers, and
//! the predictions' accuracy.

mod backends;
mod engine_support;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use taskmaster::store::RunId;

use backends::Backend;
use engine_support::{fast_config, pr_payload, workflows};
use taskmaster::engine::{AgentMap, Engine, WorkflowPlanner};
use taskmaster::insights::predict::{Basis, Prediction};
use taskmaster::store::prelude::*;
use taskmaster::store::{AttemptEnd, AttemptRecord, ClaimLimits, RunState, StepNext, StepState};

/// `test` needs `lint` but never reads it; both run on `worker`.
const CHECKS: &str = r#"
name: checks
on: { pull_request: {} }
steps:
  lint:
    agent: worker
    prompt: "lint"
    timeout: 10m
  test:
    agent: worker
    needs: [lint]
    prompt: "test"
    timeout: 10m
"#;

fn limits() -> ClaimLimits {
    ClaimLimits {
        max: 10,
        per_agent: HashMap::new(),
        lease: std::time::Duration::from_secs(60),
        refused_agents: HashSet::new(),
    }
}

fn payload(number: i64) -> Vec<u8> {
    let mut v: serde_json::Value = serde_json::from_slice(&pr_payload()).unwrap();
    v["number"] = number.into();
    v["pull_request"]["number"] = number.into();
    v["pull_request"]["head"]["sha"] = format!("{number:040x}").into();
    serde_json::to_vec(&v).unwrap()
}

fn ended(outcome: &str, ms: i64) -> AttemptRecord {
    AttemptRecord {
        outcome: taskmaster::store::AttemptEnd::parse(outcome).unwrap(),
        duration_ms: ms,
        error: (outcome != "succeeded").then(|| format!("exit status 1 after {ms} ms")),
        error_kind: (outcome != "succeeded").then(|| "agent".into()),
        cost_usd: Some(0.1),
        ran: true,
        ..AttemptRecord::default()
    }
}

struct Fixture {
    store: Arc<dyn RunStore>,
    engine: Engine,
    planner: WorkflowPlanner,
}

impl Fixture {
    fn new(b: &Backend) -> Self {
        let set = workflows(&[CHECKS], &["worker"]);
        Fixture {
            store: b.store.clone(),
            planner: WorkflowPlanner::new(set.clone()),
            engine: Engine::new(
                b.store.clone(),
                set,
                Arc::new(AgentMap::new()),
                // Every run's prediction from the history as it stands.
                taskmaster::engine::EngineConfig {
                    history_ttl: std::time::Duration::ZERO,
                    ..fast_config()
                },
            ),
        }
    }

    /// Runs the claimed step `step` through `acts` (each an attempt's
    /// outcome and duration; all but the last are retried).
    async fn step(&self, step: &str, acts: &[(&str, i64)]) {
        for (i, (outcome, ms)) in acts.iter().enumerate() {
            let claimed = self.store.claim_steps("w", &limits()).await.unwrap();
            let c = claimed
                .iter()
                .find(|c| c.step.step == step)
                .unwrap_or_else(|| panic!("{step} not claimable: {claimed:?}"));
            let next = if i + 1 < acts.len() {
                StepNext::Retry { run_at: 0 }
            } else if *outcome == "succeeded" {
                StepNext::Finish {
                    state: StepState::Succeeded,
                    output: Some("ok".into()),
                    error: None,
                }
            } else {
                StepNext::Finish {
                    state: StepState::Failed,
                    output: None,
                    error: Some("failed".into()),
                }
            };
            self.store
                .finish_step(
                    &c.lease,
                    Some(&ended(outcome, *ms)),
                    &next,
                    ("step", ""),
                    &self.planner,
                )
                .await
                .unwrap();
        }
    }

    /// One run of `checks`: lint as `lint`, then test as `test`.
    async fn run(&self, number: i64, lint: &[(&str, i64)], test: &[(&str, i64)]) -> RunId {
        let id = self
            .engine
            .start_run(
                "checks",
                "pull_request",
                &payload(number),
                &format!("d-{number}"),
            )
            .await
            .unwrap()
            .run_id;
        self.step("lint", lint).await;
        self.step("test", test).await;
        id
    }

    async fn prediction(&self, run: RunId) -> Prediction {
        let snap = self.store.run(run).await.unwrap().unwrap();
        Prediction::of_context(&snap.run.context).expect("a prediction in the run's context")
    }
}

async fn history_predictions_and_the_report(b: Backend) {
    let f = Fixture::new(&b);
    // No history yet: the timeouts (10 min each, lint then test).
    let first = f
        .run(1, &[("succeeded", 40_000)], &[("succeeded", 100_000)])
        .await;
    let p = f.prediction(first).await;
    assert_eq!(p.basis, Basis::Timeout);
    assert_eq!((p.p50_ms, p.p90_ms), (600_000, 1_200_000));
    assert_eq!(p.critical_path, ["lint", "test"]);

    // Eleven more runs: test fails, then passes on a retry in three of them.
    for n in 2..=12 {
        let test: &[(&str, i64)] = if n % 4 == 0 {
            &[("failed", 5_000), ("succeeded", 100_000 + n * 1_000)]
        } else {
            &[("succeeded", 100_000 + n * 1_000)]
        };
        f.run(n, &[("succeeded", 40_000 + n * 1_000)], test).await;
    }
    // With history: this repository's own, lint's p50 + test's p50.
    let id = f
        .engine
        .start_run("checks", "pull_request", &payload(99), "d-99")
        .await
        .unwrap()
        .run_id;
    let p = f.prediction(id).await;
    assert_eq!(p.basis, Basis::Repository, "{p:?}");
    let lint = &p.steps[0];
    let test = &p.steps[1];
    assert_eq!((lint.samples, test.samples), (12, 12));
    assert_eq!(lint.p50_ms, 46_000);
    assert_eq!(test.p50_ms, 106_000);
    assert_eq!(p.p50_ms, 152_000);
    assert_eq!(
        p.queue_ms, 0,
        "the test engine's agents have no concurrency limit"
    );
    // The unfinished run's lint is ready: one step on `worker`.
    let queues = f.store.active_steps_by_agent().await.unwrap();
    assert_eq!(queues, [("worker".to_string(), 1)]);
    // Its check run says what it is expected to take; once lint has run,
    // what is left (test's estimate alone).
    let snap = f.store.run(id).await.unwrap().unwrap();
    let report = taskmaster::outbox::build_report(&snap, None);
    let summary = taskmaster::report::render_check_output(&report)
        .summary()
        .to_owned();
    assert!(
        summary.contains("⏱️ Expected to take about 3 min, 90 % within"),
        "{summary}"
    );
    assert!(
        summary.contains("from this repository's history"),
        "{summary}"
    );
    f.step("lint", &[("succeeded", 46_000)]).await;
    let snap = f.store.run(id).await.unwrap().unwrap();
    let expected = taskmaster::engine::forecast::expected(&snap).unwrap();
    assert!(
        expected.starts_with("Expected to need about 2 min more"),
        "test's p50 is 106 s: {expected}"
    );
    f.step("test", &[("succeeded", 100_000)]).await;
    let snap = f.store.run(id).await.unwrap().unwrap();
    assert_eq!(
        taskmaster::engine::forecast::expected(&snap),
        None,
        "finished"
    );

    // What the store hands back.
    let history = f.store.history(0, 1_000).await.unwrap();
    assert_eq!(history.runs.len(), 13);
    assert_eq!(history.runs[0].id, id.0, "newest first");
    assert_eq!(history.attempts.len(), 13 * 2 + 3);
    assert!(history.attempts.iter().all(|a| a.primary_agent == "worker"));
    let durations = f.store.step_durations("checks", 5).await.unwrap();
    assert_eq!(durations.len(), 5);
    assert_eq!(durations[0].0, "test", "newest first");
    assert_eq!(durations[0].2, 100_000);

    // The report.
    let set = f.engine.workflows().clone();
    let report =
        taskmaster::insights::report(&*f.store, &set, taskmaster::store::now_ms(), 30, None, None)
            .await
            .unwrap();
    let a = &report.analytics;
    let checks = &a.workflows[0];
    assert_eq!(
        (checks.name.as_str(), checks.runs, checks.succeeded),
        ("checks", 13, 13)
    );
    let test = a.steps.iter().find(|s| s.step == "test").unwrap();
    assert_eq!((test.runs, test.attempts, test.flaky_runs), (13, 16, 3));
    assert_eq!(test.success_rate, Some(1.0));
    assert!((test.cost_usd - 1.6).abs() < 1e-9, "{test:?}");
    let error = &a.errors[0];
    assert_eq!(
        (error.pattern.as_str(), error.count),
        ("exit status # after # ms", 3)
    );
    // Advice: test waits for lint (p50 46 s) whose output it never reads.
    let needless = report
        .advice
        .iter()
        .find(|a| a.rule == "needless_need")
        .unwrap_or_else(|| panic!("{:#?}", report.advice));
    assert_eq!(needless.subject, "checks/test");
    assert_eq!(
        needless.change,
        "in workflow `checks`, step `test`: `needs: []`"
    );
    assert!(
        needless
            .evidence
            .iter()
            .any(|e| e.name == "p50 of lint" && e.value == "46 s"),
        "{needless:?}"
    );
    let flaky = report
        .advice
        .iter()
        .find(|a| a.rule == "flaky_step")
        .unwrap();
    assert!(flaky.finding.contains("3 of 13 runs"), "{}", flaky.finding);
    // Accuracy: every succeeded run predicted from the others.
    let accuracy = &report.accuracy[0];
    assert_eq!((accuracy.workflow.as_str(), accuracy.runs), ("checks", 13));
    assert!(accuracy.median_error.is_some() && accuracy.p90_coverage.is_some());
    // Filters.
    let other = taskmaster::insights::report(
        &*f.store,
        &set,
        taskmaster::store::now_ms(),
        30,
        None,
        Some("octo/nothing-here"),
    )
    .await
    .unwrap();
    assert!(other.analytics.workflows.is_empty() && other.advice.is_empty());

    // States and outcomes come back as enums (the schema's CHECK
    // constraints keep any other name out of both databases).
    assert!(
        history.runs[1..]
            .iter()
            .all(|r| r.state == RunState::Succeeded)
    );
    let failed = history
        .attempts
        .iter()
        .filter(|a| a.outcome == Some(AttemptEnd::Failed))
        .count();
    assert_eq!(failed, 3);
}

both_backends!(history_predictions_and_the_report);
