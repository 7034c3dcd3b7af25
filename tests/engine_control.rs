//! Control: pause, resume, cancel and retry (each idempotent, also while
//! steps run), run time limits, and concurrency groups.

mod engine_support;

use std::time::{Duration, Instant};
use taskmaster::store::RunId;

use engine_support::*;
use taskmaster::agent::{ErrorClass, FailureKind};
use taskmaster::engine::AgentMap;
use taskmaster::store::prelude::*;
use taskmaster::store::{ControlOutcome, RunState, StepState, Store};

const MS: fn(u64) -> Duration = Duration::from_millis;

const CHAIN: &str = r#"
name: chain
on: { pull_request: {} }
steps:
  first: { agent: worker, prompt: "x" }
  second: { agent: worker, needs: first, prompt: "x" }
"#;

fn running(step: &'static str) -> impl Fn(&taskmaster::store::RunSnapshot) -> bool {
    move |s| s.step(step).unwrap().state == StepState::Running
}

#[tokio::test]
async fn pause_lets_running_steps_finish_and_starts_nothing_new_until_resume() {
    let agent = Scripted::new("worker", Act::Ok(MS(200), "ok"));
    let t = TestEngine::start(
        workflows(&[CHAIN], &["worker"]),
        AgentMap::new().with(agent.clone()),
        fast_config(),
    )
    .await;
    let run = t.start_run("chain").await;
    t.wait_until(
        run,
        Duration::from_secs(5),
        "first running",
        running("first"),
    )
    .await;
    assert_eq!(
        t.engine.pause(RunId(run)).await.unwrap(),
        ControlOutcome::Changed
    );
    assert_eq!(
        t.engine.pause(RunId(run)).await.unwrap(),
        ControlOutcome::Unchanged
    );
    // The running step finishes; the next one does not start.
    let snap = t
        .wait_until(run, Duration::from_secs(5), "first done", |s| {
            s.step("first").unwrap().state == StepState::Succeeded
        })
        .await;
    assert_eq!(snap.run.state, RunState::Paused);
    tokio::time::sleep(MS(300)).await;
    assert!(
        agent.attempts_of("second").is_empty(),
        "nothing starts while paused"
    );
    let snap = t.store.run(RunId(run)).await.unwrap().unwrap();
    assert_eq!(snap.run.state, RunState::Paused);
    assert_eq!(snap.step("second").unwrap().state, StepState::Ready);

    let resumed_at = Instant::now();
    assert_eq!(
        t.engine.resume(RunId(run)).await.unwrap(),
        ControlOutcome::Changed
    );
    assert_eq!(
        t.engine.resume(RunId(run)).await.unwrap(),
        ControlOutcome::Unchanged
    );
    let snap = t.wait_run(run, Duration::from_secs(5)).await;
    assert_eq!(snap.run.state, RunState::Succeeded);
    assert!(agent.attempts_of("second")[0].started >= resumed_at);
    assert_eq!(
        agent.attempts_of("first").len(),
        1,
        "resume carries on, it does not restart"
    );
    assert_eq!(
        t.engine.pause(RunId(run)).await.unwrap(),
        ControlOutcome::Unchanged,
        "an ended run"
    );
    assert_eq!(
        t.engine.pause(RunId(9999)).await.unwrap(),
        ControlOutcome::NotFound
    );
    t.stop().await;
}

#[tokio::test]
async fn cancel_aborts_running_attempts_and_cancels_the_rest() {
    let agent = Scripted::new("worker", Act::Hang);
    let t = TestEngine::start(
        workflows(&[CHAIN], &["worker"]),
        AgentMap::new().with(agent.clone()),
        fast_config(),
    )
    .await;
    let run = t.start_run("chain").await;
    t.wait_until(
        run,
        Duration::from_secs(5),
        "first running",
        running("first"),
    )
    .await;
    let asked = Instant::now();
    assert_eq!(
        t.engine
            .cancel(RunId(run), "cancelled by @octocat")
            .await
            .unwrap(),
        ControlOutcome::Changed
    );
    assert_eq!(
        t.engine.cancel(RunId(run), "again").await.unwrap(),
        ControlOutcome::Unchanged
    );
    let snap = t.wait_run(run, Duration::from_secs(5)).await;
    assert!(
        asked.elapsed() < Duration::from_secs(1),
        "cooperative cancel is prompt"
    );
    assert_eq!(snap.run.state, RunState::Cancelled);
    assert_eq!(
        snap.run.conclusion.as_deref(),
        Some("cancelled by @octocat")
    );
    assert_eq!(snap.step("first").unwrap().state, StepState::Cancelled);
    assert_eq!(snap.step("second").unwrap().state, StepState::Cancelled);
    let seen = agent.attempts_of("first");
    assert_eq!(seen.len(), 1);
    assert!(seen[0].cancelled, "the attempt's cancellation token fired");
    assert!(agent.attempts_of("second").is_empty());
    let attempts = t.store.attempts(RunId(run)).await.unwrap();
    assert_eq!(attempts[0].outcome.map(|o| o.as_str()), Some("cancelled"));
    assert_eq!(
        t.engine.cancel(RunId(run), "late").await.unwrap(),
        ControlOutcome::Unchanged
    );
    t.stop().await;
}

const CLEANUP: &str = r#"
name: cleanup
on: { pull_request: {} }
steps:
  work: { agent: worker, prompt: "x" }
  after: { agent: worker, needs: work, prompt: "x" }
  cleanup: { agent: worker, needs: work, if: "always()", prompt: "x" }
  notify: { agent: worker, needs: work, if: "cancelled()", prompt: "x" }
"#;

/// GitHub Actions' rule: cancelling a run cancels what has not started,
/// except steps whose `if:` calls always() or cancelled(), which still run
/// once their needs have ended; cancelling again does not abort them.
#[tokio::test]
async fn cancel_still_runs_always_and_cancelled_steps_to_the_end() {
    let agent = Scripted::new("worker", Act::Hang)
        .script("cleanup", vec![Act::Ok(MS(300), "cleaned")])
        .script("notify", vec![Act::Ok(MS(10), "told")]);
    let t = TestEngine::start(
        workflows(&[CLEANUP], &["worker"]),
        AgentMap::new().with(agent.clone()),
        fast_config(),
    )
    .await;
    let run = t.start_run("cleanup").await;
    t.wait_until(run, Duration::from_secs(5), "work running", running("work"))
        .await;
    assert_eq!(
        t.engine
            .cancel(RunId(run), "cancelled by @octocat")
            .await
            .unwrap(),
        ControlOutcome::Changed
    );
    // The cleanup step starts after `work` stopped; a second cancel while
    // it runs does not abort it.
    t.wait_until(
        run,
        Duration::from_secs(5),
        "cleanup running",
        running("cleanup"),
    )
    .await;
    assert_eq!(
        t.engine.cancel(RunId(run), "again").await.unwrap(),
        ControlOutcome::Unchanged
    );
    t.engine.reap_once().await.unwrap();
    let snap = t.wait_run(run, Duration::from_secs(5)).await;
    assert_eq!(snap.run.state, RunState::Cancelled);
    assert_eq!(snap.step("work").unwrap().state, StepState::Cancelled);
    assert_eq!(snap.step("after").unwrap().state, StepState::Cancelled);
    assert_eq!(snap.step("cleanup").unwrap().state, StepState::Succeeded);
    let output = snap
        .step("cleanup")
        .unwrap()
        .output
        .clone()
        .unwrap_or_default();
    assert!(output.starts_with("cleaned"), "{output}");
    assert_eq!(snap.step("notify").unwrap().state, StepState::Succeeded);
    assert!(agent.attempts_of("after").is_empty());
    let cleanup = agent.attempts_of("cleanup");
    assert_eq!(cleanup.len(), 1);
    assert!(
        !cleanup[0].cancelled,
        "cancel does not abort a cleanup step"
    );
    t.stop().await;
}

/// A time limit is hard: an always() step that has not started is
/// cancelled with the rest.
#[tokio::test]
async fn a_timed_out_run_does_not_start_its_always_steps() {
    let limited = CLEANUP.replace("steps:", "timeout: 300ms\nsteps:");
    let agent = Scripted::new("worker", Act::Hang);
    let t = TestEngine::start(
        workflows(&[&limited], &["worker"]),
        AgentMap::new().with(agent.clone()),
        fast_config(),
    )
    .await;
    let run = t.start_run("cleanup").await;
    let snap = t.wait_run(run, Duration::from_secs(10)).await;
    assert_eq!(snap.run.state, RunState::TimedOut);
    assert_eq!(snap.step("cleanup").unwrap().state, StepState::Cancelled);
    assert!(agent.attempts_of("cleanup").is_empty());
    t.stop().await;
}

#[tokio::test]
async fn retry_reruns_failed_steps_and_their_dependents_and_is_idempotent() {
    let agent = Scripted::new("worker", Act::Ok(MS(5), "ok")).script(
        "first",
        vec![Act::Fail(MS(1), ErrorClass::Permanent, FailureKind::Agent)],
    );
    let t = TestEngine::start(
        workflows(&[CHAIN], &["worker"]),
        AgentMap::new().with(agent.clone()),
        fast_config(),
    )
    .await;
    let run = t.start_run("chain").await;
    let snap = t.wait_run(run, Duration::from_secs(5)).await;
    assert_eq!(snap.run.state, RunState::Failed);
    assert_eq!(snap.step("second").unwrap().state, StepState::Skipped);

    t.engine.pause(RunId(run)).await.unwrap(); // an ended run cannot be paused
    assert_eq!(
        t.engine.retry(RunId(run), None).await.unwrap(),
        ControlOutcome::Changed
    );
    let again = t.engine.retry(RunId(run), None).await.unwrap();
    assert_eq!(
        again,
        ControlOutcome::Unchanged,
        "a second retry finds nothing failed"
    );
    let snap = t.wait_run(run, Duration::from_secs(5)).await;
    assert_eq!(snap.run.state, RunState::Succeeded);
    assert_eq!(agent.attempts_of("first").len(), 2);
    assert_eq!(agent.attempts_of("second").len(), 1);

    // One named step (and its dependents) on an ended run.
    assert_eq!(
        t.engine.retry(RunId(run), Some("second")).await.unwrap(),
        ControlOutcome::Changed
    );
    let snap = t.wait_run(run, Duration::from_secs(5)).await;
    assert_eq!(snap.run.state, RunState::Succeeded);
    assert_eq!(
        agent.attempts_of("first").len(),
        2,
        "only the named step reran"
    );
    assert_eq!(agent.attempts_of("second").len(), 2);
    assert_eq!(
        t.engine.retry(RunId(run), Some("nope")).await.unwrap(),
        ControlOutcome::NotFound
    );
    let attempts = t.store.attempts(RunId(run)).await.unwrap();
    let numbers: Vec<i64> = attempts
        .iter()
        .filter(|a| a.step == "first")
        .map(|a| a.number)
        .collect();
    assert_eq!(
        numbers,
        [1, 2],
        "attempt numbers keep counting across retries"
    );
    t.stop().await;
}

#[tokio::test]
async fn retry_of_a_failed_step_while_others_still_run() {
    let agent = Scripted::new("worker", Act::Ok(MS(5), "ok"))
        .script("slow", vec![Act::Ok(MS(600), "slow")])
        .script(
            "flaky",
            vec![Act::Fail(MS(1), ErrorClass::Permanent, FailureKind::Agent)],
        );
    let set = workflows(
        &[r#"
name: side
on: { pull_request: {} }
steps:
  slow: { agent: worker, prompt: "x" }
  flaky: { agent: worker, prompt: "x", continue_on_error: true }
"#],
        &["worker"],
    );
    let t = TestEngine::start(set, AgentMap::new().with(agent.clone()), fast_config()).await;
    let run = t.start_run("side").await;
    t.wait_until(
        run,
        Duration::from_secs(5),
        "flaky failed while slow runs",
        |s| {
            s.step("flaky").unwrap().state == StepState::Failed
                && s.step("slow").unwrap().state == StepState::Running
        },
    )
    .await;
    assert_eq!(
        t.engine.retry(RunId(run), Some("flaky")).await.unwrap(),
        ControlOutcome::Changed
    );
    assert_eq!(
        t.engine.retry(RunId(run), Some("slow")).await.unwrap(),
        ControlOutcome::Unchanged,
        "a running step is left alone"
    );
    let snap = t.wait_run(run, Duration::from_secs(5)).await;
    assert_eq!(snap.run.state, RunState::Succeeded);
    assert_eq!(snap.step("flaky").unwrap().state, StepState::Succeeded);
    assert_eq!(agent.attempts_of("slow").len(), 1);
    t.stop().await;
}

#[tokio::test]
async fn a_run_past_its_time_limit_is_timed_out() {
    let agent = Scripted::new("worker", Act::Hang);
    let set = workflows(
        &[&CHAIN.replace("steps:", "timeout: 200ms\nsteps:")],
        &["worker"],
    );
    let t = TestEngine::start(set, AgentMap::new().with(agent.clone()), fast_config()).await;
    let run = t.start_run("chain").await;
    let snap = t.wait_run(run, Duration::from_secs(5)).await;
    assert_eq!(snap.run.state, RunState::TimedOut);
    assert_eq!(snap.step("first").unwrap().state, StepState::TimedOut);
    assert_eq!(snap.step("second").unwrap().state, StepState::Cancelled);
    assert!(agent.attempts_of("first")[0].cancelled);
    t.stop().await;
}

#[tokio::test]
async fn a_newer_run_in_the_concurrency_group_cancels_the_older_one() {
    let agent = Scripted::new("worker", Act::Ok(MS(5), "ok")).script("first", vec![Act::Hang]);
    let set = workflows(
        &[&CHAIN.replace(
            "steps:",
            "concurrency: { group: \"pr-{{ repository }}-{{ pr.number }}\", cancel_in_progress: true }\nsteps:",
        )],
        &["worker"],
    );
    let t = TestEngine::start(set, AgentMap::new().with(agent.clone()), fast_config()).await;
    let old = t.start_run("chain").await;
    t.wait_until(
        old,
        Duration::from_secs(5),
        "old run's first step running",
        running("first"),
    )
    .await;
    let new = t.start_run("chain").await;
    let old_snap = t.wait_run(old, Duration::from_secs(5)).await;
    assert_eq!(old_snap.run.state, RunState::Cancelled);
    assert!(
        old_snap
            .run
            .conclusion
            .unwrap()
            .contains(&format!("superseded by run {new}"))
    );
    let new_snap = t.wait_run(new, Duration::from_secs(5)).await;
    assert_eq!(new_snap.run.state, RunState::Succeeded);
    // The newer run started only after the older one ended.
    assert!(new_snap.run.started_at.unwrap() >= old_snap.run.finished_at.unwrap());
    t.stop().await;
}

const GATED: &str = r#"
name: gated
on: { pull_request: {} }
concurrency: { group: "the-pr" }
steps:
  work: { agent: worker, prompt: "x" }
  cleanup: { agent: worker, needs: work, if: "always()", prompt: "x" }
"#;

/// A run of `gated`, waiting for approval when `waiting`.
async fn gated_run(t: &TestEngine, waiting: bool) -> i64 {
    use taskmaster::store::{DeliveryState, EncodedPayload, NewDelivery};
    let delivery = format!("gated-{}", uuid::Uuid::new_v4());
    let payload = pr_payload();
    t.store
        .insert_deliveries(&[NewDelivery {
            delivery_id: delivery.clone(),
            event: "pull_request".into(),
            action: Some("opened".into()),
            hook_id: None,
            installation_id: None,
            repository: None,
            sender_id: None,
            sender_login: None,
            payload: EncodedPayload::encode(bytes::Bytes::copy_from_slice(&payload)),
            received_at: 0,
            state: DeliveryState::Done,
        }])
        .await
        .unwrap();
    let event = taskmaster::event::Event::parse("pull_request", &payload).unwrap();
    let set = t.engine.workflows();
    let run = taskmaster::engine::intake::new_run(
        set,
        set.get("gated").unwrap(),
        &event,
        &delivery,
        "test",
        None,
        waiting.then(|| "a stranger's pull request".to_owned()),
        &taskmaster::engine::forecast::Forecast::default(),
    );
    let id = t.store.create_runs(&[run]).await.unwrap()[0].run_id;
    t.engine.settle(id).await.unwrap();
    t.engine.wake();
    id.0
}

/// A run waiting for approval never blocks its concurrency group, and
/// cancelling it ends it at once (its `always()` clean-up included: it
/// never started); retried, it waits again, and approved, it runs.
#[tokio::test]
async fn waiting_runs_end_at_once_when_cancelled_and_never_block_their_group() {
    let agent = Scripted::new("worker", Act::Ok(MS(1), "ok"));
    let t = TestEngine::start(
        workflows(&[GATED], &["worker"]),
        AgentMap::new().with(agent.clone()),
        fast_config(),
    )
    .await;
    let waiting = gated_run(&t, true).await;
    let later = gated_run(&t, false).await;
    let snap = t.wait_run(later, Duration::from_secs(10)).await;
    assert_eq!(
        snap.run.state,
        RunState::Succeeded,
        "not blocked by the waiting run"
    );
    assert_eq!(
        t.engine.cancel(RunId(waiting), "superseded").await.unwrap(),
        ControlOutcome::Changed
    );
    let snap = t.wait_run(waiting, Duration::from_secs(5)).await;
    assert_eq!(snap.run.state, RunState::Cancelled);
    assert_eq!(snap.step("cleanup").unwrap().state, StepState::Cancelled);
    assert_eq!(agent.attempts_of("work").len(), 1, "only the later run's");
    assert_eq!(
        agent.attempts_of("cleanup").len(),
        1,
        "only the later run's"
    );
    // Retried, it waits for approval again; approved, it runs.
    assert_eq!(
        t.engine.retry(RunId(waiting), None).await.unwrap(),
        ControlOutcome::Changed
    );
    let snap = t.store.run(RunId(waiting)).await.unwrap().unwrap();
    assert!(snap.run.waiting_approval, "{:?}", snap.run);
    assert_eq!(
        t.engine
            .approve(RunId(waiting), "maintainer")
            .await
            .unwrap(),
        ControlOutcome::Changed
    );
    let snap = t.wait_run(waiting, Duration::from_secs(10)).await;
    assert_eq!(snap.run.state, RunState::Succeeded, "{:?}", snap.steps);
    t.stop().await;
}

const TITLED: &str = r#"
name: titled
on: { pull_request: {} }
steps:
  say: { agent: worker, prompt: "Review {{ pr.title }} at {{ pr.head_sha }}" }
"#;

/// A run renders its prompts from what was stored with it, not from its
/// delivery: a Re-run's delivery is `<check_run delivery>#<run>`, a
/// `/run`'s is a comment, and neither carries the pull request.
#[tokio::test]
async fn prompts_render_from_the_runs_stored_context() {
    let agent = Scripted::new("worker", Act::Ok(MS(1), "ok"));
    let t = TestEngine::start(
        workflows(&[TITLED], &["worker"]),
        AgentMap::new().with(agent.clone()),
        fast_config(),
    )
    .await;
    let payload = pr_payload();
    let event = taskmaster::event::Event::parse("pull_request", &payload).unwrap();
    let taskmaster::event::Event::PullRequest(pr) = &event else {
        panic!("not a pull request")
    };
    let set = t.engine.workflows();
    let run = taskmaster::engine::intake::new_run(
        set,
        set.get("titled").unwrap(),
        &event,
        "no-such-delivery#7",
        "re-run",
        None,
        None,
        &taskmaster::engine::forecast::Forecast::default(),
    );
    let id = t.store.create_runs(&[run]).await.unwrap()[0].run_id;
    t.engine.settle(id).await.unwrap();
    t.engine.wake();
    let snap = t.wait_run(id.0, Duration::from_secs(10)).await;
    let output = snap.step("say").unwrap().output.clone().unwrap_or_default();
    assert!(
        output.contains(&pr.pull_request.title) && output.contains(&pr.pull_request.head.sha),
        "{output}"
    );
    t.stop().await;
}
