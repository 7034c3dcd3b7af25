//! The `agentapi` adapter against a stand-in AgentAPI server on loopback
//! (`tests/support/agentapi.rs`, following `specs/agentapi-openapi.json`).

mod support;

use std::time::Duration;

use support::agentapi::{Behavior, StandIn, refused_url};
use taskmaster::agent::agentapi::{AgentApiAgent, AgentApiSettings};
use taskmaster::agent::{
    Agent, AttemptOutcome, AttemptRequest, ErrorClass, FailureKind, IdempotencyKey,
};

fn agent(url: &str, tweak: impl FnOnce(&mut AgentApiSettings)) -> AgentApiAgent {
    let mut s = AgentApiSettings::new("claude-code", url);
    s.poll_interval = Duration::from_millis(50);
    s.startup_timeout = Duration::from_secs(5);
    s.idle_timeout = Duration::from_secs(5);
    tweak(&mut s);
    AgentApiAgent::new(s).unwrap()
}

fn request(prompt: &str, timeout: Duration) -> AttemptRequest {
    AttemptRequest::new(
        IdempotencyKey {
            run: "run-1".into(),
            step: "review".into(),
            attempt: 1,
        },
        prompt,
        timeout,
    )
}

#[track_caller]
fn assert_failed(outcome: &AttemptOutcome, class: ErrorClass, kind: FailureKind) {
    let f = outcome
        .failure
        .as_ref()
        .unwrap_or_else(|| panic!("expected {kind:?}, got success: {}", outcome.output.text));
    assert_eq!((f.class, f.kind), (class, kind), "{}", f.message);
}

#[tokio::test]
async fn one_turn_waits_for_stable_and_returns_the_last_agent_message() {
    let server = StandIn::start(Behavior {
        startup: Duration::from_millis(300),
        ..Behavior::default()
    })
    .await;
    let outcome = agent(&server.url(), |_| {})
        .run(request("Review this PR", Duration::from_secs(10)))
        .await;
    assert!(outcome.succeeded(), "{outcome:?}");
    assert_eq!(outcome.output.text, "Done: Review this PR");
    assert!(outcome.duration >= Duration::from_millis(300));
    server.recorded(|r| {
        assert_eq!(r.user_posts, 1, "the prompt was sent once, after start-up");
        assert!(r.event_connections >= 1, "followed /events");
        assert!(r.raws.is_empty(), "no interrupt on success");
        assert_eq!(r.messages[0].content, support::agentapi::BANNER);
    });
}

#[tokio::test]
async fn the_answer_is_not_the_banner_when_the_reply_is_missing() {
    // Message 0 (the banner) is an agent message too: it must never be taken
    // for the answer of a turn.
    let server = StandIn::start(Behavior::default()).await;
    let outcome = agent(&server.url(), |_| {})
        .run(request("hi", Duration::from_secs(10)))
        .await;
    assert!(
        !outcome.output.text.contains("Welcome"),
        "{}",
        outcome.output.text
    );
}

#[tokio::test]
async fn a_busy_agents_500_is_transient() {
    let server = StandIn::start(Behavior {
        busy_on_post: true,
        ..Behavior::default()
    })
    .await;
    let outcome = agent(&server.url(), |_| {})
        .run(request("hi", Duration::from_secs(10)))
        .await;
    assert_failed(&outcome, ErrorClass::Transient, FailureKind::Busy);
    assert!(
        outcome
            .failure
            .unwrap()
            .message
            .contains("waiting for user input")
    );
}

#[tokio::test]
async fn an_agent_that_never_becomes_stable_hits_the_wall_clock_timeout_and_is_interrupted() {
    let server = StandIn::start(Behavior {
        never_stable: true,
        work: Duration::from_millis(100),
        ..Behavior::default()
    })
    .await;
    let started = std::time::Instant::now();
    let outcome = agent(&server.url(), |_| {})
        .run(request("loop forever", Duration::from_millis(800)))
        .await;
    assert_failed(&outcome, ErrorClass::Transient, FailureKind::Timeout);
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    // The partial answer is kept, and the agent got the interrupt keystroke.
    assert!(
        outcome.output.text.contains("Working"),
        "{}",
        outcome.output.text
    );
    server.recorded(|r| assert_eq!(r.raws, ["\u{1b}"]));
}

#[tokio::test]
async fn a_silent_agent_hits_the_idle_timeout() {
    let server = StandIn::start(Behavior {
        never_stable: true,
        silent: true,
        work: Duration::from_millis(50),
        ..Behavior::default()
    })
    .await;
    let outcome = agent(&server.url(), |s| {
        s.idle_timeout = Duration::from_millis(400)
    })
    .run(request("hi", Duration::from_secs(10)))
    .await;
    assert_failed(&outcome, ErrorClass::Transient, FailureKind::IdleTimeout);
    assert!(outcome.duration < Duration::from_secs(3));
    server.recorded(|r| assert_eq!(r.raws.len(), 1));
}

#[tokio::test]
async fn an_agent_still_starting_past_the_startup_timeout_is_transient() {
    let server = StandIn::start(Behavior {
        startup: Duration::from_secs(30),
        ..Behavior::default()
    })
    .await;
    let outcome = agent(&server.url(), |s| {
        s.startup_timeout = Duration::from_millis(300)
    })
    .run(request("hi", Duration::from_secs(10)))
    .await;
    assert_failed(&outcome, ErrorClass::Transient, FailureKind::Busy);
    server.recorded(|r| assert_eq!(r.user_posts, 0, "never sent while not stable"));
}

#[tokio::test]
async fn a_dropped_event_stream_is_reconnected() {
    let server = StandIn::start(Behavior {
        drop_streams: 2,
        work: Duration::from_millis(600),
        ..Behavior::default()
    })
    .await;
    let outcome = agent(&server.url(), |_| {})
        .run(request("hi", Duration::from_secs(10)))
        .await;
    assert!(outcome.succeeded(), "{outcome:?}");
    assert_eq!(outcome.output.text, "Done: hi");
    server.recorded(|r| assert!(r.event_connections >= 3, "{}", r.event_connections));
}

#[tokio::test]
async fn without_events_it_polls_status() {
    let server = StandIn::start(Behavior {
        no_events: true,
        ..Behavior::default()
    })
    .await;
    let outcome = agent(&server.url(), |_| {})
        .run(request("hi", Duration::from_secs(10)))
        .await;
    assert!(outcome.succeeded(), "{outcome:?}");
    assert_eq!(outcome.output.text, "Done: hi");
}

#[tokio::test]
async fn connection_refused_is_transient_unreachable() {
    let url = refused_url().await;
    let a = agent(&url, |_| {});
    let outcome = a.run(request("hi", Duration::from_secs(5))).await;
    assert_failed(&outcome, ErrorClass::Transient, FailureKind::Unreachable);
    let message = outcome.failure.unwrap().message;
    assert!(
        message.contains(&url) && message.contains("agentapi server"),
        "{message}"
    );
    let health = a.health().await;
    assert!(!health.reachable);
}

#[tokio::test]
async fn cancel_sends_the_raw_interrupt_and_stops_waiting() {
    let server = StandIn::start(Behavior {
        never_stable: true,
        ..Behavior::default()
    })
    .await;
    let a = agent(&server.url(), |s| s.interrupt = "\u{3}".into());
    let req = request("hi", Duration::from_secs(30));
    let cancel = req.cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(400)).await;
        cancel.cancel();
    });
    let outcome = a.run(req).await;
    assert_failed(&outcome, ErrorClass::Permanent, FailureKind::Cancelled);
    assert!(outcome.duration < Duration::from_secs(3));
    server.recorded(|r| assert_eq!(r.raws, ["\u{3}"]));
}

#[tokio::test]
async fn turns_on_one_server_queue_instead_of_colliding() {
    let server = StandIn::start(Behavior::default()).await;
    let a = std::sync::Arc::new(agent(&server.url(), |_| {}));
    let (one, two) = tokio::join!(
        a.run(request("one", Duration::from_secs(10))),
        a.run(request("two", Duration::from_secs(10)))
    );
    assert!(one.succeeded() && two.succeeded(), "{one:?} {two:?}");
    assert_eq!(one.output.text, "Done: one");
    assert_eq!(two.output.text, "Done: two");
}

#[tokio::test]
async fn health_reports_status_and_latency() {
    let server = StandIn::start(Behavior::default()).await;
    let health = agent(&server.url(), |_| {}).health().await;
    assert!(health.reachable);
    assert!(
        health.detail.contains("stable") && health.detail.contains("claude"),
        "{}",
        health.detail
    );
    assert!(health.latency < Duration::from_secs(2));
}

#[tokio::test]
async fn prompts_and_answers_are_redacted() {
    let token = "ghs_16C7e42F292c6912E7710c838347Ae178B4a";
    let server = StandIn::start(Behavior {
        answer: format!("I found {token} and echo: {{prompt}}"),
        ..Behavior::default()
    })
    .await;
    let outcome = agent(&server.url(), |_| {})
        .run(request(&format!("use {token}"), Duration::from_secs(10)))
        .await;
    assert!(outcome.succeeded(), "{outcome:?}");
    assert!(
        !outcome.output.text.contains(token),
        "{}",
        outcome.output.text
    );
    server.recorded(|r| {
        assert!(
            r.messages
                .iter()
                .all(|m| m.role != "user" || !m.content.contains(token)),
            "the prompt reached the agent with the token"
        );
    });
}
