//! Failures: retries with growing backoff and a limit, permanent errors not
//! retried, fallback agents (after retries, and when a circuit is open),
//! Retry-After honoured, step timeouts — each decision on the timeline.

mod engine_support;

use std::time::Duration;
use taskmaster::store::RunId;

use engine_support::*;
use taskmaster::agent::{ErrorClass, FailureKind};
use taskmaster::engine::{AgentMap, BreakerConfig, BreakerState};
use taskmaster::store::prelude::*;
use taskmaster::store::{RunState, StepState};

const MS: fn(u64) -> Duration = Duration::from_millis;

fn one_step(agent: &str, fallback: &str, retry: &str, extra: &str) -> String {
    format!(
        "name: one\non: {{ pull_request: {{}} }}\nsteps:\n  work:\n    agent: {agent}\n    prompt: \"x\"\n    fallback: [{fallback}]\n    retry: {retry}\n{extra}"
    )
}

#[tokio::test]
async fn transient_failures_are_retried_with_growing_backoff_up_to_the_limit() {
    let flaky = Scripted::new(
        "flaky",
        Act::Fail(MS(1), ErrorClass::Transient, FailureKind::Unreachable),
    );
    let set = workflows(
        &[&one_step(
            "flaky",
            "",
            "{ max_attempts: 4, backoff: fixed, initial_delay: 40ms, max_delay: 1s }",
            "",
        )],
        &["flaky"],
    );
    let t = TestEngine::start(
        set,
        AgentMap::new().with_limits(flaky.clone(), None, no_breaker()),
        fast_config(),
    )
    .await;
    let run = t.start_run("one").await;
    let snap = t.wait_run(run, Duration::from_secs(10)).await;
    assert_eq!(snap.run.state, RunState::Failed);
    let work = snap.step("work").unwrap();
    assert_eq!(work.state, StepState::Failed);
    assert_eq!(work.attempts, 4, "the retry limit");
    let seen = flaky.attempts_of("work");
    assert_eq!(seen.len(), 4);
    for pair in seen.windows(2) {
        let gap = pair[1].started - pair[0].ended;
        assert!(
            gap >= MS(40),
            "fixed backoff of 40ms between attempts, saw {gap:?}"
        );
    }
    let retries = t.decisions(run, "work", "retry").await;
    assert_eq!(retries.len(), 3, "{retries:?}");
    assert!(retries[0].contains("retry 1 of 3"), "{retries:?}");
    let give_up = t.decisions(run, "work", "give_up").await;
    assert!(
        give_up[0].contains("retries on `flaky` exhausted (4 of 4 attempts)"),
        "{give_up:?}"
    );
    let attempts = t.store.attempts(RunId(run)).await.unwrap();
    assert_eq!(attempts.len(), 4);
    assert!(
        attempts
            .iter()
            .all(|a| a.outcome.map(|o| o.as_str()) == Some("failed")
                && a.error_class == Some(taskmaster::agent::ErrorClass::Transient))
    );
    t.stop().await;
}

#[tokio::test]
async fn exponential_backoff_grows_and_honours_retry_after() {
    // Exponential with full jitter: each delay is at most the doubling
    // ceiling; Retry-After (300ms) is a floor far above the 10ms ceiling.
    let limited = Scripted::new("limited", Act::Ok(MS(1), "ok"))
        .script("work", vec![Act::RetryAfter(MS(300)), Act::Ok(MS(1), "ok")]);
    let set = workflows(
        &[&one_step(
            "limited",
            "",
            "{ max_attempts: 3, backoff: exponential, initial_delay: 10ms, max_delay: 20ms }",
            "",
        )],
        &["limited"],
    );
    let t = TestEngine::start(
        set,
        AgentMap::new().with_limits(limited.clone(), None, no_breaker()),
        fast_config(),
    )
    .await;
    let run = t.start_run("one").await;
    let snap = t.wait_run(run, Duration::from_secs(10)).await;
    assert_eq!(snap.run.state, RunState::Succeeded);
    let seen = limited.attempts_of("work");
    assert_eq!(seen.len(), 2);
    assert!(
        seen[1].started - seen[0].ended >= MS(300),
        "Retry-After honoured"
    );
    let retries = t.decisions(run, "work", "retry").await;
    assert!(retries[0].contains("Retry-After"), "{retries:?}");
    t.stop().await;
}

#[tokio::test]
async fn a_permanent_error_is_not_retried_and_goes_to_the_fallback() {
    let primary = Scripted::new(
        "primary",
        Act::Fail(MS(1), ErrorClass::Permanent, FailureKind::Config),
    );
    let backup = Scripted::new("backup", Act::Ok(MS(1), "from backup"));
    let set = workflows(
        &[&one_step(
            "primary",
            "backup",
            "{ max_attempts: 5, initial_delay: 10ms }",
            "",
        )],
        &["primary", "backup"],
    );
    let agents = AgentMap::new()
        .with_limits(primary.clone(), None, no_breaker())
        .with_limits(backup.clone(), None, no_breaker());
    let t = TestEngine::start(set, agents, fast_config()).await;
    let run = t.start_run("one").await;
    let snap = t.wait_run(run, Duration::from_secs(10)).await;
    assert_eq!(snap.run.state, RunState::Succeeded);
    assert_eq!(
        primary.attempts_of("work").len(),
        1,
        "a permanent error is not retried"
    );
    assert_eq!(backup.attempts_of("work").len(), 1);
    assert!(
        snap.step("work")
            .unwrap()
            .output
            .as_ref()
            .unwrap()
            .contains("from backup")
    );
    let fallback = t.decisions(run, "work", "fallback").await;
    assert!(
        fallback[0].contains("a permanent error is not retried on `primary`"),
        "{fallback:?}"
    );
    assert!(fallback[0].contains("moving to fallback `backup`"));
    t.stop().await;
}

#[tokio::test]
async fn fallback_comes_after_the_retries_are_exhausted() {
    let primary = Scripted::new(
        "primary",
        Act::Fail(MS(1), ErrorClass::Transient, FailureKind::Busy),
    );
    let backup = Scripted::new("backup", Act::Ok(MS(1), "ok"));
    let set = workflows(
        &[&one_step(
            "primary",
            "backup",
            "{ max_attempts: 3, backoff: fixed, initial_delay: 5ms }",
            "",
        )],
        &["primary", "backup"],
    );
    let agents = AgentMap::new()
        .with_limits(primary.clone(), None, no_breaker())
        .with_limits(backup.clone(), None, no_breaker());
    let t = TestEngine::start(set, agents, fast_config()).await;
    let run = t.start_run("one").await;
    let snap = t.wait_run(run, Duration::from_secs(10)).await;
    assert_eq!(snap.run.state, RunState::Succeeded);
    assert_eq!(primary.attempts_of("work").len(), 3);
    assert_eq!(backup.attempts_of("work").len(), 1);
    let attempts = t.store.attempts(RunId(run)).await.unwrap();
    let agents: Vec<&str> = attempts.iter().map(|a| a.agent.as_str()).collect();
    assert_eq!(agents, ["primary", "primary", "primary", "backup"]);
    t.stop().await;
}

#[tokio::test]
async fn an_open_circuit_sends_steps_straight_to_the_fallback() {
    let down = Scripted::new(
        "down",
        Act::Fail(MS(1), ErrorClass::Transient, FailureKind::Unreachable),
    );
    let backup = Scripted::new("backup", Act::Ok(MS(1), "ok"));
    let set = workflows(
        &[&one_step(
            "down",
            "backup",
            "{ max_attempts: 2, backoff: fixed, initial_delay: 5ms }",
            "",
        )],
        &["down", "backup"],
    );
    let breaker = BreakerConfig {
        failure_threshold: 2,
        cooldown: Duration::from_secs(60),
    };
    let agents = AgentMap::new()
        .with_limits(down.clone(), None, breaker)
        .with_limits(backup.clone(), None, no_breaker());
    let t = TestEngine::start(set, agents, fast_config()).await;
    // The first run fails twice on `down`: the circuit opens.
    let first = t.start_run("one").await;
    assert_eq!(
        t.wait_run(first, Duration::from_secs(10)).await.run.state,
        RunState::Succeeded
    );
    assert_eq!(down.attempts_of("work").len(), 2);
    assert!(
        t.engine
            .breaker_states()
            .contains(&("down".to_owned(), BreakerState::Open))
    );
    // The next run does not try `down` at all.
    let second = t.start_run("one").await;
    assert_eq!(
        t.wait_run(second, Duration::from_secs(10)).await.run.state,
        RunState::Succeeded
    );
    assert_eq!(
        down.attempts_of("work").len(),
        2,
        "no attempt against an open circuit"
    );
    assert_eq!(backup.attempts_of("work").len(), 2);
    let fallback = t.decisions(second, "work", "fallback").await;
    assert!(
        fallback[0].contains("circuit of agent `down` is open"),
        "{fallback:?}"
    );
    t.stop().await;
}

#[tokio::test]
async fn a_step_that_runs_past_its_timeout_is_timed_out() {
    let slow = Scripted::new("slow", Act::Hang);
    let stubborn = Scripted::new("stubborn", Act::Stubborn(Duration::from_secs(30)));
    let set = workflows(
        &[
            &one_step(
                "slow",
                "",
                "{ max_attempts: 2, backoff: fixed, initial_delay: 5ms }",
                "    timeout: 150ms\n",
            ),
            &one_step(
                "stubborn",
                "",
                "{ max_attempts: 1 }",
                "    timeout: 100ms\n",
            )
            .replace("name: one", "name: two"),
        ],
        &["slow", "stubborn"],
    );
    let agents = AgentMap::new()
        .with_limits(slow.clone(), None, no_breaker())
        .with_limits(stubborn.clone(), None, no_breaker());
    let t = TestEngine::start(set, agents, fast_config()).await;
    let run = t.start_run("one").await;
    let started = std::time::Instant::now();
    let snap = t.wait_run(run, Duration::from_secs(10)).await;
    assert_eq!(snap.step("work").unwrap().state, StepState::TimedOut);
    assert_eq!(snap.run.state, RunState::Failed);
    assert_eq!(
        slow.attempts_of("work").len(),
        2,
        "a timeout is transient: retried"
    );
    assert!(started.elapsed() >= MS(300));
    let attempts = t.store.attempts(RunId(run)).await.unwrap();
    assert!(
        attempts
            .iter()
            .all(|a| a.outcome.map(|o| o.as_str()) == Some("timed_out"))
    );

    // An agent that ignores its deadline is abandoned after the grace period.
    let run = t.start_run("two").await;
    let started = std::time::Instant::now();
    let snap = t.wait_run(run, Duration::from_secs(5)).await;
    assert_eq!(snap.step("work").unwrap().state, StepState::TimedOut);
    assert!(started.elapsed() < Duration::from_secs(3));
    t.stop().await;
}

#[tokio::test]
async fn an_agents_wall_clock_budget_caps_its_attempts_then_falls_back() {
    // `slow` never answers; its budget is 300 ms per step, all attempts
    // together, far below the step's 10 s timeout.
    let slow = Scripted::new("slow", Act::Hang);
    let worker = Scripted::new("worker", Act::Ok(MS(1), "done"));
    let set = workflows(
        &[&one_step(
            "slow",
            "worker",
            "{ max_attempts: 3, backoff: fixed, initial_delay: 10ms, max_delay: 1s }",
            "",
        )],
        &["slow", "worker"],
    );
    let t = TestEngine::start(
        set,
        AgentMap::new()
            .with_limits(slow.clone(), None, no_breaker())
            .with_limits(worker.clone(), None, no_breaker())
            .with_max_wall("slow", MS(300)),
        fast_config(),
    )
    .await;
    let started = std::time::Instant::now();
    let run = t.start_run("one").await;
    let snap = t.wait_run(run, Duration::from_secs(10)).await;
    assert_eq!(snap.run.state, RunState::Succeeded);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the budget, not the 10 s timeout, ended the slow attempts"
    );
    assert_eq!(
        slow.attempts_of("work").len(),
        1,
        "the budget was spent by one attempt"
    );
    assert_eq!(worker.attempts_of("work").len(), 1);
    let fallback = t.decisions(run, "work", "fallback").await;
    assert!(
        fallback
            .iter()
            .any(|d| d.contains("wall-clock budget on `slow`")),
        "{fallback:?}"
    );
}

#[tokio::test]
async fn an_agents_cost_budget_stops_its_retries_then_falls_back() {
    // Each attempt on `pricey` fails transiently and costs $2; its budget is
    // $3 per step: two attempts spend it, the third goes to the fallback.
    let pricey = Scripted::new("pricey", Act::FailCosting(MS(1), 2.0));
    let worker = Scripted::new("worker", Act::Ok(MS(1), "done"));
    let set = workflows(
        &[&one_step(
            "pricey",
            "worker",
            "{ max_attempts: 5, backoff: fixed, initial_delay: 10ms, max_delay: 1s }",
            "",
        )],
        &["pricey", "worker"],
    );
    let t = TestEngine::start(
        set,
        AgentMap::new()
            .with_limits(pricey.clone(), None, no_breaker())
            .with_limits(worker.clone(), None, no_breaker())
            .with_max_cost("pricey", 3.0),
        fast_config(),
    )
    .await;
    let run = t.start_run("one").await;
    let snap = t.wait_run(run, Duration::from_secs(10)).await;
    assert_eq!(snap.run.state, RunState::Succeeded);
    assert_eq!(
        pricey.attempts_of("work").len(),
        2,
        "the budget, not max_attempts: 5"
    );
    assert_eq!(worker.attempts_of("work").len(), 1);
    let fallback = t.decisions(run, "work", "fallback").await;
    assert!(
        fallback
            .iter()
            .any(|d| d.contains("cost budget on `pricey` ($3.00) is spent: $4.00 so far")),
        "{fallback:?}"
    );
    assert!(
        (snap.run.cost_usd - 4.0).abs() < 1e-9,
        "{}",
        snap.run.cost_usd
    );
}

/// `adaptive_agents: true`: once a step's agent has failed most of its
/// recent attempts at it and its fallback has done better, the step starts
/// on the fallback without asking the agent, and the timeline says why
/// with the numbers; a workflow without the switch keeps its order.
#[tokio::test]
async fn an_adaptive_workflow_starts_a_failing_agents_step_on_its_fallback() {
    let primary = Scripted::new(
        "primary",
        Act::Fail(MS(1), ErrorClass::Permanent, FailureKind::Agent),
    );
    let backup = Scripted::new("backup", Act::Ok(MS(1), "from backup"));
    let adaptive = |on: bool| {
        let source = one_step("primary", "backup", "{ max_attempts: 1 }", "")
            + if on { "adaptive_agents: true\n" } else { "" };
        workflows(&[&source], &["primary", "backup"])
    };
    let set = adaptive(true);
    let agents = AgentMap::new()
        .with_limits(primary.clone(), None, no_breaker())
        .with_limits(backup.clone(), None, no_breaker());
    let t = TestEngine::start(set, agents, fast_config()).await;
    // Too little history at first: the agents run in order, ten times.
    for _ in 0..10 {
        let run = t.start_run("one").await;
        let snap = t.wait_run(run, Duration::from_secs(10)).await;
        assert_eq!(snap.run.state, RunState::Succeeded);
        assert!(
            t.decisions(run, "work", "fallback_by_history")
                .await
                .is_empty()
        );
    }
    assert_eq!(primary.attempts_of("work").len(), 10);
    // Now `primary` has failed 10 of 10 and `backup` passed 10 of 10.
    let run = t.start_run("one").await;
    let snap = t.wait_run(run, Duration::from_secs(10)).await;
    assert_eq!(snap.run.state, RunState::Succeeded);
    assert_eq!(primary.attempts_of("work").len(), 10, "not asked");
    assert_eq!(backup.attempts_of("work").len(), 11);
    let why = t.decisions(run, "work", "fallback_by_history").await;
    assert_eq!(
        why,
        [
            "agent `primary` succeeded in 0 of its last 10 attempts at this step and `backup` in \
          10 of 10: starting on `backup` (adaptive_agents)"
        ]
    );
    // The skipped attempt counts for nothing: the next decision reads the
    // same 10 attempts of `primary`.
    let run = t.start_run("one").await;
    t.wait_run(run, Duration::from_secs(10)).await;
    let why = t.decisions(run, "work", "fallback_by_history").await;
    assert!(why[0].contains("0 of its last 10 attempts"), "{why:?}");
    // The same history, the switch off: the order stands.
    let (dir, store) = t.stop().await;
    let agents = AgentMap::new()
        .with_limits(primary.clone(), None, no_breaker())
        .with_limits(backup.clone(), None, no_breaker());
    let t = TestEngine::start_on(dir, store.clone(), adaptive(false), agents, fast_config());
    let run = t.start_run("one").await;
    t.wait_run(run, Duration::from_secs(10)).await;
    assert_eq!(primary.attempts_of("work").len(), 11, "asked first");
    assert!(
        t.decisions(run, "work", "fallback_by_history")
            .await
            .is_empty()
    );
    t.stop().await;
}
