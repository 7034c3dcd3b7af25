//! Scheduling: parallel where `needs` allow, dependents wait, `if:` and
//! `continue_on_error` as in GitHub Actions, limits, critical-path order.

mod engine_support;

use std::time::{Duration, Instant};
use taskmaster::store::RunId;

use engine_support::*;
use taskmaster::agent::{ErrorClass, FailureKind};
use taskmaster::engine::{AgentMap, Transition};
use taskmaster::store::prelude::*;
use taskmaster::store::{RunState, StepState};

const MS: fn(u64) -> Duration = Duration::from_millis;

#[tokio::test]
async fn independent_steps_overlap_and_dependents_wait_for_all_needs() {
    let agent = Scripted::new("worker", Act::Ok(MS(250), "done"));
    let set = workflows(
        &[r#"
name: fan
on: { pull_request: {} }
steps:
  lint: { agent: worker, prompt: "lint {{ pr.number }}" }
  test: { agent: worker, prompt: "test" }
  report: { agent: worker, needs: [lint, test], prompt: "report {{ steps.lint.output }}" }
"#],
        &["worker"],
    );
    let t = TestEngine::start(set, AgentMap::new().with(agent.clone()), fast_config()).await;
    let rx = t.engine.subscribe();
    let run = t.start_run("fan").await;
    let snap = t.wait_run(run, Duration::from_secs(10)).await;
    assert_eq!(
        snap.run.state,
        RunState::Succeeded,
        "{:?}",
        snap.run.conclusion
    );

    let lint = &agent.attempts_of("lint")[0];
    let test = &agent.attempts_of("test")[0];
    let report = &agent.attempts_of("report")[0];
    assert!(
        lint.started < test.ended && test.started < lint.ended,
        "independent steps must run at the same time"
    );
    assert!(report.started >= lint.ended && report.started >= test.ended);
    // The report's prompt saw the lint step's output.
    let out = snap.step("report").unwrap().output.clone().unwrap();
    assert!(out.contains("done (lint 2)"), "{out}");

    // Observers saw the run end and every step succeed.
    let seen = collect_transitions(rx, run, Duration::from_secs(2)).await;
    assert!(seen.iter().any(|t| matches!(t, Transition::Run { run_id, state: RunState::Succeeded, .. } if *run_id == RunId(run))));
    assert!(seen.iter().any(
        |t| matches!(t, Transition::Run { run_id, state: RunState::Running, .. } if *run_id == RunId(run))
    ));
    assert!(
        snap.run.classification.is_some(),
        "the run carries its classification"
    );
    for step in ["lint", "test", "report"] {
        assert!(
            seen.iter().any(|t| matches!(t, Transition::Step { step: s, state: StepState::Succeeded, .. } if s == step)),
            "no success published for {step}: {seen:?}"
        );
    }
    t.stop().await;
}

#[tokio::test]
async fn failure_skips_dependents_unless_their_if_asks_for_failure_or_always() {
    let agent = Scripted::new("worker", Act::Ok(MS(5), "ok")).script(
        "build",
        vec![Act::Fail(MS(5), ErrorClass::Permanent, FailureKind::Agent)],
    );
    let set = workflows(
        &[r#"
name: gha
on: { pull_request: {} }
steps:
  build: { agent: worker, prompt: "build" }
  deploy: { agent: worker, needs: build, prompt: "deploy" }
  after_deploy: { agent: worker, needs: deploy, prompt: "x", if: "always()" }
  notify: { agent: worker, needs: deploy, prompt: "x" }
  triage: { agent: worker, needs: build, prompt: "why", if: "failure()" }
  cleanup: { agent: worker, needs: build, prompt: "clean", if: "always()" }
  skipped_by_if: { agent: worker, prompt: "x", if: "task.type == 'nonsense'" }
  after_skip: { agent: worker, needs: skipped_by_if, prompt: "x" }
"#],
        &["worker"],
    );
    let t = TestEngine::start(set, AgentMap::new().with(agent.clone()), fast_config()).await;
    let run = t.start_run("gha").await;
    let snap = t.wait_run(run, Duration::from_secs(10)).await;
    let state = |s: &str| snap.step(s).unwrap().state;
    assert_eq!(state("build"), StepState::Failed);
    assert_eq!(state("deploy"), StepState::Skipped);
    assert_eq!(state("notify"), StepState::Skipped);
    assert_eq!(state("after_deploy"), StepState::Succeeded);
    assert_eq!(state("triage"), StepState::Succeeded);
    assert_eq!(state("cleanup"), StepState::Succeeded);
    assert_eq!(state("skipped_by_if"), StepState::Skipped);
    assert_eq!(state("after_skip"), StepState::Skipped);
    assert_eq!(snap.run.state, RunState::Failed);
    assert!(snap.run.conclusion.unwrap().contains("build"));
    let why = t.decisions(run, "deploy", "step_skipped").await;
    assert!(why[0].contains("failed (build)"), "{why:?}");
    assert!(agent.attempts_of("deploy").is_empty());
    t.stop().await;
}

#[tokio::test]
async fn continue_on_error_keeps_the_run_and_its_dependents_going() {
    let agent = Scripted::new("worker", Act::Ok(MS(5), "ok")).script(
        "optional",
        vec![Act::Fail(MS(5), ErrorClass::Permanent, FailureKind::Agent)],
    );
    let set = workflows(
        &[r#"
name: optional
on: { pull_request: {} }
steps:
  optional: { agent: worker, prompt: "x", continue_on_error: true }
  next: { agent: worker, needs: optional, prompt: "saw {{ steps.optional.outcome }}" }
"#],
        &["worker"],
    );
    let t = TestEngine::start(set, AgentMap::new().with(agent.clone()), fast_config()).await;
    let run = t.start_run("optional").await;
    let snap = t.wait_run(run, Duration::from_secs(10)).await;
    assert_eq!(snap.step("optional").unwrap().state, StepState::Failed);
    assert_eq!(snap.step("next").unwrap().state, StepState::Succeeded);
    assert!(
        snap.step("next")
            .unwrap()
            .output
            .as_ref()
            .unwrap()
            .contains("saw failure")
    );
    assert_eq!(snap.run.state, RunState::Succeeded);
    t.stop().await;
}

/// The largest number of attempts that overlapped in time.
fn max_overlap(seen: &[Seen]) -> usize {
    seen.iter()
        .map(|a| {
            seen.iter()
                .filter(|b| b.started <= a.started && a.started < b.ended)
                .count()
        })
        .max()
        .unwrap_or(0)
}

#[tokio::test]
async fn max_parallel_agent_concurrency_and_the_global_limit_hold_work_back_in_order() {
    let wide = |name: &str, agent: &str, max_parallel: &str| {
        format!(
            "name: {name}\non: {{ pull_request: {{}} }}\n{max_parallel}\nsteps:\n{}",
            (0..6)
                .map(|i| format!("  s{i}: {{ agent: {agent}, prompt: \"x\" }}\n"))
                .collect::<String>()
        )
    };
    let per_run = Scripted::new("per_run", Act::Ok(MS(60), "ok"));
    let single = Scripted::new("single", Act::Ok(MS(60), "ok"));
    let free = Scripted::new("free", Act::Ok(MS(60), "ok"));
    let set = workflows(
        &[
            &wide("limited", "per_run", "max_parallel: 2"),
            &wide("one_agent", "single", ""),
            &wide("global", "free", ""),
        ],
        &["per_run", "single", "free"],
    );
    let agents = AgentMap::new()
        .with_limits(per_run.clone(), None, no_breaker())
        .with_limits(single.clone(), Some(1), no_breaker())
        .with_limits(free.clone(), None, no_breaker());
    let mut config = fast_config();
    config.max_in_flight = 3;
    let t = TestEngine::start(set, agents, config).await;
    let a = t.start_run("limited").await;
    let snap = t.wait_run(a, Duration::from_secs(10)).await;
    assert_eq!(snap.run.state, RunState::Succeeded);
    assert_eq!(
        max_overlap(&per_run.seen.lock().unwrap()),
        2,
        "max_parallel: 2"
    );

    let b = t.start_run("one_agent").await;
    t.wait_run(b, Duration::from_secs(10)).await;
    assert_eq!(
        max_overlap(&single.seen.lock().unwrap()),
        1,
        "agent concurrency 1"
    );

    let c = t.start_run("global").await;
    t.wait_run(c, Duration::from_secs(10)).await;
    assert_eq!(
        max_overlap(&free.seen.lock().unwrap()),
        3,
        "global in-flight limit 3"
    );
    t.stop().await;
}

/// With the poll out of the way (a minute), steps held back by a limit must
/// still start as soon as a slot frees: the results writer claims after
/// each result (direct hand-off), and a claim cut short by the in-flight
/// limit leaves the wake-up to the attempt that ends.
#[tokio::test]
async fn steps_held_back_by_a_limit_start_when_a_slot_frees_without_waiting_for_the_poll() {
    let free = Scripted::new("free", Act::Ok(MS(5), "ok"));
    let single = Scripted::new("single", Act::Ok(MS(5), "ok"));
    let fan = |name: &str, agent: &str| {
        format!(
            "name: {name}\non: {{ pull_request: {{}} }}\nsteps:\n  root: {{ agent: {agent}, prompt: x }}\n\
             {}",
            (1..=4)
                .map(|i| format!("  f{i}: {{ agent: {agent}, needs: root, prompt: x }}\n"))
                .collect::<String>()
                + &format!("  last: {{ agent: {agent}, needs: [f1, f2, f3, f4], prompt: x }}\n")
        )
    };
    let start = |max_in_flight: usize| {
        let set = workflows(
            &[&fan("global", "free"), &fan("per_agent", "single")],
            &["free", "single"],
        );
        let agents = AgentMap::new()
            .with_limits(free.clone(), None, no_breaker())
            .with_limits(single.clone(), Some(1), no_breaker());
        let mut config = fast_config();
        config.poll = Duration::from_secs(60);
        config.reap_interval = Duration::from_secs(60);
        config.max_in_flight = max_in_flight;
        TestEngine::start(set, agents, config)
    };
    let t = start(1).await;
    let started = std::time::Instant::now();
    let a = t.start_run("global").await;
    assert_eq!(
        t.wait_run(a, Duration::from_secs(5)).await.run.state,
        RunState::Succeeded
    );
    assert_eq!(free.seen.lock().unwrap().len(), 6);
    assert_eq!(max_overlap(&free.seen.lock().unwrap()), 1);
    t.stop().await;

    let t = start(fast_config().max_in_flight).await;
    let b = t.start_run("per_agent").await;
    assert_eq!(
        t.wait_run(b, Duration::from_secs(5)).await.run.state,
        RunState::Succeeded
    );
    assert_eq!(single.seen.lock().unwrap().len(), 6);
    assert_eq!(max_overlap(&single.seen.lock().unwrap()), 1);
    assert!(started.elapsed() < Duration::from_secs(10));
    t.stop().await;
}

/// Runs arriving while every slot is busy (and while the results writer
/// holds the free slots for its own claim) must still start promptly: a
/// scheduler round refused a slot is woken by whoever frees one, never left
/// to the poll (a minute here). The exact interleaving that needs the
/// refused-round flag is narrow; this test checks the property over many
/// interleavings and did not hit that one in 5 runs without the flag.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_arriving_while_every_slot_is_busy_start_without_waiting_for_the_poll() {
    let agent = Scripted::new("worker", Act::Ok(MS(3), "ok"));
    let set = workflows(
        &[
            "name: chain\non: { pull_request: {} }\nsteps:\n  a: { agent: worker, prompt: x }\n  \
           b: { agent: worker, needs: a, prompt: x }\n",
        ],
        &["worker"],
    );
    let mut config = fast_config();
    config.poll = Duration::from_secs(60);
    config.reap_interval = Duration::from_secs(60);
    config.max_in_flight = 2;
    let t = TestEngine::start(set, AgentMap::new().with(agent.clone()), config).await;
    let mut runs = Vec::new();
    for _ in 0..30 {
        runs.push(t.start_run("chain").await);
        tokio::time::sleep(MS(2)).await;
    }
    for run in runs {
        assert_eq!(
            t.wait_run(run, Duration::from_secs(10)).await.run.state,
            RunState::Succeeded
        );
    }
    assert_eq!(agent.seen.lock().unwrap().len(), 60);
    assert!(max_overlap(&agent.seen.lock().unwrap()) <= 2);
    t.stop().await;
}

#[tokio::test]
async fn the_longest_remaining_path_is_started_first() {
    let agent = Scripted::new("worker", Act::Ok(MS(20), "ok"));
    let set = workflows(
        &[r#"
name: paths
on: { pull_request: {} }
steps:
  a_short: { agent: worker, prompt: "x" }
  b_short: { agent: worker, prompt: "x" }
  z_long1: { agent: worker, prompt: "x" }
  z_long2: { agent: worker, needs: z_long1, prompt: "x" }
  z_long3: { agent: worker, needs: z_long2, prompt: "x" }
"#],
        &["worker"],
    );
    let mut config = fast_config();
    config.max_in_flight = 1;
    let t = TestEngine::start(set, AgentMap::new().with(agent.clone()), config).await;
    let run = t.start_run("paths").await;
    t.wait_run(run, Duration::from_secs(10)).await;
    let order: Vec<String> = agent
        .seen
        .lock()
        .unwrap()
        .iter()
        .map(|s| s.step.clone())
        .collect();
    assert_eq!(order[0], "z_long1", "critical path first: {order:?}");
    let snap = t.store.run(RunId(run)).await.unwrap().unwrap();
    assert!(snap.step("z_long1").unwrap().priority > snap.step("a_short").unwrap().priority);
    t.stop().await;
}

#[tokio::test]
async fn an_older_run_is_served_before_a_newer_one_of_the_same_priority() {
    // Two runs of a three-step chain, one step at a time. The newer run's
    // first step has the longer remaining path, but the older run came
    // first: it finishes before the newer one starts (a storm of new runs
    // must not hold every started run back).
    let agent = Scripted::new("worker", Act::Ok(MS(20), "ok"));
    let set = workflows(
        &[r#"
name: chain
on: { pull_request: {} }
steps:
  one: { agent: worker, prompt: "x" }
  two: { agent: worker, needs: one, prompt: "x" }
  three: { agent: worker, needs: two, prompt: "x" }
"#],
        &["worker"],
    );
    let mut config = fast_config();
    config.max_in_flight = 1;
    let t = TestEngine::start(set, AgentMap::new().with(agent.clone()), config).await;
    let older = t.start_run("chain").await;
    let newer = t.start_run("chain").await;
    t.wait_run(older, Duration::from_secs(10)).await;
    t.wait_run(newer, Duration::from_secs(10)).await;
    let order: Vec<String> = agent
        .seen
        .lock()
        .unwrap()
        .iter()
        .map(|s| s.key.rsplit_once(':').unwrap().0.to_owned())
        .collect();
    let expected: Vec<String> = [older, newer]
        .iter()
        .flat_map(|run| ["one", "two", "three"].map(|step| format!("{run}:{step}")))
        .collect();
    assert_eq!(order, expected);
    t.stop().await;
}

#[tokio::test]
async fn validation_steps_store_their_verdicts_with_evidence() {
    use taskmaster::store::{ValidationFilter, ValidationKind, Verdict};
    let agent = Scripted::new(
        "worker",
        Act::Ok(Duration::from_millis(1), "All 12 tests passed\nok"),
    )
    .script(
        "audit",
        vec![Act::Fail(
            Duration::from_millis(1),
            ErrorClass::Permanent,
            FailureKind::Agent,
        )],
    );
    let set = workflows(
        &["name: v\non: { pull_request: {} }\nsteps:\n  \
           tests: { agent: worker, prompt: x, validation: tests }\n  \
           audit: { agent: worker, prompt: y, validation: security_audit, continue_on_error: true }\n  \
           plain: { agent: worker, prompt: z }\n"],
        &["worker"],
    );
    let t = TestEngine::start(set, AgentMap::new().with(agent), fast_config()).await;
    let run = t.start_run("v").await;
    t.wait_run(run, Duration::from_secs(10)).await;
    // A verdict is stored just after its step's result commits, so the last
    // step's may land a moment after the run is seen finished: wait for both
    // (and a little longer, so that a third, wrong one would be seen too).
    let filter = ValidationFilter {
        limit: 10,
        ..ValidationFilter::default()
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while t.store.validations(&filter).await.unwrap().len() < 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut found = t.store.validations(&filter).await.unwrap();
    found.sort_by_key(|v| v.step.clone());
    assert_eq!(found.len(), 2, "only the validation steps: {found:#?}");
    assert_eq!(found[0].step.as_deref(), Some("audit"));
    assert_eq!(found[0].kind, ValidationKind::SecurityAudit);
    assert_eq!(found[0].verdict, Verdict::Fail);
    assert_eq!(found[1].step.as_deref(), Some("tests"));
    assert_eq!(found[1].kind, ValidationKind::Tests);
    assert_eq!(found[1].verdict, Verdict::Pass);
    assert_eq!(found[1].summary, "All 12 tests passed");
    assert_eq!(found[1].run_id, Some(run));
    assert!(
        found[1].evidence[0]["excerpt"]
            .as_str()
            .unwrap()
            .contains("All 12 tests passed")
    );
}
