//! Bots cannot ping-pong through taskmaster: two stand-in bots answering
//! each other (a push on the pull request for every run the other caused,
//! and a `/run` comment on each other's comments) get at most N runs on the
//! pull request in an hour, then nothing starts, saying why; taskmaster's
//! own account never starts a run, whatever the trigger allows.

mod backends;
mod engine_support;

use bytes::Bytes;
use engine_support::workflows;
use taskmaster::dispatch::{DeliveryHandler, Handled};
use taskmaster::engine::{LoopBreaker, RoutingHandler};
use taskmaster::store::{Delivery, DeliveryState, now_ms};

/// Starts on pushes to pull requests, bots included (`bots: true` lifts
/// routing's own refusal of bot senders), and on `/run review`.
const REVIEW: &str = r#"
name: review
on:
  pull_request: { bots: true }
  issue_comment: { command: review }
steps:
  check: { agent: worker, prompt: "x" }
"#;

const N: u32 = 5;

fn fixture(name: &str) -> serde_json::Value {
    let path = format!(
        "{}/tests/fixtures/webhooks/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

fn delivery(id: usize, event: &str, mut payload: serde_json::Value, sender: &str) -> Delivery {
    payload["sender"]["login"] = sender.into();
    payload["sender"]["type"] = "Bot".into();
    Delivery {
        id: id as i64,
        delivery_id: format!("loop-{id}"),
        event: event.into(),
        action: payload["action"].as_str().map(str::to_owned),
        hook_id: None,
        installation_id: None,
        repository: payload["repository"]["full_name"]
            .as_str()
            .map(str::to_owned),
        sender_id: None,
        sender_login: Some(sender.into()),
        payload: Bytes::from(serde_json::to_vec(&payload).unwrap()),
        received_at: now_ms(),
        state: DeliveryState::Processing,
        attempts: 1,
        error: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_bots_answering_each_other_get_at_most_n_runs_an_hour() {
    let b = backends::sqlite().await;
    let store = b.store.clone();
    let handler = RoutingHandler::new(store.clone(), workflows(&[REVIEW], &["worker"]), None)
        .with_loop_breaker(LoopBreaker {
            own_login: Some("taskmaster[bot]".into()),
            max_runs_per_subject_per_hour: N,
        });
    let push = fixture("pull_request.synchronize.json");
    let comment = fixture("issue_comment.created.json");
    let bots = ["ping-bot[bot]", "pong-bot[bot]"];
    let mut started = 0;
    let mut refusals = Vec::new();
    for turn in 0..(2 * N as usize) {
        let bot = bots[turn % 2];
        // The other bot's run made it push again…
        match handler
            .handle(&delivery(2 * turn, "pull_request", push.clone(), bot))
            .await
            .unwrap()
        {
            Handled::Start(runs) => {
                store.create_runs(&runs).await.unwrap();
                started += runs.len();
            }
            Handled::Ignored(why) => refusals.push(why),
            other => panic!("unexpected {other:?}"),
        }
        // …and comment `/run review` on the other's comment.
        let mut c = comment.clone();
        c["comment"]["body"] = "/run review".into();
        c["comment"]["user"]["login"] = bot.into();
        c["comment"]["user"]["type"] = "Bot".into();
        match handler
            .handle(&delivery(2 * turn + 1, "issue_comment", c, bot))
            .await
            .unwrap()
        {
            Handled::Ignored(why) => assert!(why.contains("bots cannot run commands"), "{why}"),
            other => panic!("a bot's command started something: {other:?}"),
        }
    }
    assert_eq!(started, N as usize, "{refusals:?}");
    assert_eq!(refusals.len(), N as usize);
    let number = push["number"].as_i64().unwrap();
    let repo = push["repository"]["full_name"].as_str().unwrap();
    for why in &refusals {
        assert!(
            why.contains(&format!(
                "loop breaker: {repo}#{number} had {N} runs in the last hour"
            )) && why.contains("--max-runs-per-subject-per-hour"),
            "{why}"
        );
    }
    assert_eq!(
        store
            .subject_runs_since(&repo.parse().unwrap(), number, now_ms() - 3_600_000)
            .await
            .unwrap(),
        i64::from(N)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn taskmasters_own_account_never_starts_a_run() {
    let b = backends::sqlite().await;
    let handler = RoutingHandler::new(b.store.clone(), workflows(&[REVIEW], &["worker"]), None)
        .with_loop_breaker(LoopBreaker {
            own_login: Some("taskmaster[bot]".into()),
            max_runs_per_subject_per_hour: 0,
        });
    let push = fixture("pull_request.synchronize.json");
    match handler
        .handle(&delivery(
            1,
            "pull_request",
            push.clone(),
            "Taskmaster[bot]",
        ))
        .await
        .unwrap()
    {
        Handled::Ignored(why) => assert!(
            why.contains("taskmaster's own account `Taskmaster[bot]` caused this event"),
            "{why}"
        ),
        other => panic!("its own push started something: {other:?}"),
    }
    // Another bot, with the trigger's `bots: true`, does start one.
    assert!(matches!(
        handler
            .handle(&delivery(2, "pull_request", push, "other[bot]"))
            .await
            .unwrap(),
        Handled::Start(_)
    ));
}
