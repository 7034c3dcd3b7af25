//! What follows an attempt: retry, fall back or give up ([`decide`]), and
//! the fenced record of that decision with its timeline event ([`finish`]).
//! The executor ([`super::executor`]) calls both once its attempt ended.

use std::time::Duration;

use super::{Engine, Recorded, ResultJob, Transition, backoff};
use crate::agent::{ErrorClass, Failure, FailureKind};
use crate::store::{AttemptRecord, RunId, StepFinish, StepNext, StepState, now_ms};
use crate::workflow::Step;

/// Retry, fall back or give up after `failure` on `agent`.
pub(super) fn decide(
    engine: &Engine,
    def: &Step,
    step: &crate::store::StepRecord,
    agent: &str,
    next_agent: Option<String>,
    failure: &Failure,
    retry_after: Option<Duration>,
) -> (StepNext, &'static str, String) {
    // `agent_attempts` counts the attempt that just failed (started with the claim).
    let tried = step.agent_attempts.max(1) as u32;
    let mut max = def.retry.max_attempts.max(1);
    if let Some(budget) = engine.inner.agents.max_attempts(agent) {
        max = max.min(budget.max(1));
    }
    let class = match failure.class {
        ErrorClass::Transient => "transient",
        ErrorClass::Permanent => "permanent",
    };
    let what = format!(
        "attempt on `{agent}` failed ({class} {:?}: {})",
        failure.kind, failure.message
    );
    if failure.class == ErrorClass::Transient && tried < max {
        let delay = backoff::retry_delay(&def.retry, tried + 1, retry_after);
        return (
            StepNext::Retry {
                run_at: now_ms() + delay.as_millis() as i64,
            },
            "retry",
            format!(
                "{what}; retry {} of {} on `{agent}` in {} ms{}",
                tried,
                max - 1,
                delay.as_millis(),
                if retry_after.is_some() {
                    " (honouring the agent's Retry-After)"
                } else {
                    ""
                }
            ),
        );
    }
    let why_stop = if failure.class == ErrorClass::Permanent {
        format!("a permanent error is not retried on `{agent}`")
    } else {
        format!("retries on `{agent}` exhausted ({tried} of {max} attempts)")
    };
    if let Some(fallback) = next_agent {
        return (
            StepNext::Fallback {
                agent: fallback.clone(),
                agent_index: step.agent_index + 1,
                run_at: now_ms(),
            },
            "fallback",
            format!("{what}; {why_stop}; moving to fallback `{fallback}`"),
        );
    }
    let state = if matches!(
        failure.kind,
        FailureKind::Timeout | FailureKind::IdleTimeout
    ) {
        StepState::TimedOut
    } else {
        StepState::Failed
    };
    (
        StepNext::Finish {
            state,
            output: None,
            error: Some(failure.message.clone()),
        },
        "give_up",
        format!("{what}; {why_stop}; no fallback remains"),
    )
}

/// Records the result (fenced) and publishes what changed. Returns whether
/// it was accepted, and whether the results writer claimed after it (see
/// [`Recorded::handed_off`]): then no wake-up is needed for what it made
/// ready.
pub(super) async fn finish(
    engine: &Engine,
    lease: &crate::store::Lease,
    attempt: Option<&AttemptRecord>,
    next: StepNext,
    event: (&str, &str),
    step: &str,
    run_id: RunId,
) -> (bool, bool) {
    let state = match &next {
        StepNext::Finish { state, .. } => *state,
        _ => StepState::Ready,
    };
    crate::instrument::step_decision(event.0);
    let (done, result) = tokio::sync::oneshot::channel();
    let job = ResultJob {
        finish: StepFinish {
            lease: lease.clone(),
            attempt: attempt.cloned(),
            next,
            kind: event.0.to_owned(),
            detail: event.1.to_owned(),
        },
        done,
    };
    let outcome = match engine.inner.results.send(job) {
        Ok(()) => result
            .await
            .unwrap_or_else(|_| Err("the results writer stopped".into())),
        Err(_) => Err("the results writer stopped".into()),
    };
    match outcome {
        Ok(Recorded {
            plan: Some(plan),
            handed_off,
        }) => {
            engine.publish(Transition::Step {
                run_id,
                step: step.to_owned(),
                state,
                agent: None,
                attempt: None,
                reason: event.1.to_owned(),
            });
            let ready = engine.publish_changes(run_id, &plan) || state == StepState::Ready;
            if ready && !handed_off {
                engine.wake();
            }
            (true, handed_off)
        }
        Ok(Recorded {
            plan: None,
            handed_off,
        }) => {
            tracing::warn!(
                run_id = %run_id,
                step,
                "result refused: the lease is no longer held (fenced)"
            );
            (false, handed_off)
        }
        Err(e) => {
            // The lease runs out and the reaper hands the step to another attempt.
            tracing::error!(run_id = %run_id, step, error = %e, "could not record the step's result");
            (false, false)
        }
    }
}
