//! What follows an attempt: retry, fall back or give up ([`decide`]), and
//! the fenced record of that decision with its timeline event ([`finish`]).
//! The executor ([`super::executor`]) calls both once its attempt ended.

use std::time::Duration;

use super::{Engine, Recorded, ResultJob, Transition, backoff};
use crate::agent::{AttemptOutcome, ErrorClass, Failure, FailureKind};
use crate::store::{AttemptEnd, AttemptRecord, RunId, StepFinish, StepNext, StepState, now_ms};

/// Characters of output kept in the attempts table.
const EXCERPT_CHARS: usize = 2000;

/// The attempts table's record of an attempt that reached its agent: how it
/// ended (a timeout or idle timeout `timed_out`, a cancellation
/// `cancelled`, any other failure `failed`), its class and kind (`malformed`
/// for a verdict that did not parse after its repair turn), the first
/// [`EXCERPT_CHARS`] characters of its output, and its cost at `price`.
/// The caller overrides the outcome when the attempt was stopped from
/// outside.
pub(super) fn attempt_record(
    outcome: &AttemptOutcome,
    malformed: bool,
    price: Option<&crate::budget::Price>,
) -> AttemptRecord {
    let mut record = AttemptRecord {
        outcome: AttemptEnd::Succeeded,
        output_excerpt: Some(excerpt(&outcome.output.text)),
        duration_ms: outcome.duration.as_millis() as i64,
        ran: true,
        ..AttemptRecord::default()
    };
    (record.cost_usd, record.cost_estimated) =
        crate::budget::attempt_cost(&outcome.usage, outcome.duration, price);
    if let Some(f) = &outcome.failure {
        record.outcome = match f.kind {
            FailureKind::Timeout | FailureKind::IdleTimeout => AttemptEnd::TimedOut,
            FailureKind::Cancelled => AttemptEnd::Cancelled,
            _ => AttemptEnd::Failed,
        };
        record.error_class = Some(f.class);
        // A verdict that did not parse after its repair turn: its own kind
        // (counted apart in metrics), never the code's verdict.
        record.error_kind = Some(if malformed {
            "malformed".to_owned()
        } else {
            f.kind.as_str().to_owned()
        });
        record.error = Some(f.message.clone());
    }
    record
}

/// `text` cut to [`EXCERPT_CHARS`] characters, with `…` when cut.
fn excerpt(text: &str) -> String {
    match text.char_indices().nth(EXCERPT_CHARS) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_owned(),
    }
}
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
    let class = failure.class.as_str();
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::{Output, Usage};

    fn ended(failure: Option<(FailureKind, ErrorClass)>, text: &str) -> AttemptOutcome {
        AttemptOutcome {
            failure: failure.map(|(kind, class)| Failure {
                class,
                kind,
                message: "it broke".into(),
            }),
            output: Output {
                text: text.into(),
                ..Output::default()
            },
            duration: Duration::from_millis(1_500),
            usage: Usage::default(),
            retry_after: None,
            web_url: None,
            pull_requests: Vec::new(),
        }
    }

    #[test]
    fn an_attempts_record_says_how_it_ended_in_the_stored_words() {
        let ok = attempt_record(&ended(None, "fine"), false, None);
        assert_eq!(ok.outcome, AttemptEnd::Succeeded);
        assert_eq!((ok.duration_ms, ok.ran), (1_500, true));
        assert_eq!(ok.output_excerpt.as_deref(), Some("fine"));
        assert_eq!(
            (ok.error_class, ok.error_kind, ok.error),
            (None, None, None)
        );

        for (kind, end, name) in [
            (FailureKind::Timeout, AttemptEnd::TimedOut, "timeout"),
            (
                FailureKind::IdleTimeout,
                AttemptEnd::TimedOut,
                "idle_timeout",
            ),
            (FailureKind::Cancelled, AttemptEnd::Cancelled, "cancelled"),
            (FailureKind::Unreachable, AttemptEnd::Failed, "unreachable"),
        ] {
            let r = attempt_record(&ended(Some((kind, ErrorClass::Transient)), ""), false, None);
            assert_eq!(r.outcome, end, "{kind:?}");
            assert_eq!(r.error_kind.as_deref(), Some(name));
            assert_eq!(r.error_class, Some(ErrorClass::Transient));
            assert_eq!(r.error.as_deref(), Some("it broke"));
        }
        let malformed = attempt_record(
            &ended(Some((FailureKind::Agent, ErrorClass::Permanent)), ""),
            true,
            None,
        );
        assert_eq!(malformed.outcome, AttemptEnd::Failed);
        assert_eq!(malformed.error_kind.as_deref(), Some("malformed"));
    }

    #[test]
    fn a_failure_kind_is_stored_by_its_json_name() {
        for kind in FailureKind::ALL {
            assert_eq!(
                serde_json::to_value(kind).unwrap(),
                serde_json::json!(kind.as_str())
            );
        }
        let r = attempt_record(
            &ended(Some((FailureKind::RateLimited, ErrorClass::Transient)), ""),
            false,
            None,
        );
        assert_eq!(r.error_kind.as_deref(), Some("rate_limited"));
    }

    #[test]
    fn an_output_excerpt_is_cut_at_a_character_boundary() {
        let long = "é".repeat(EXCERPT_CHARS + 5);
        let cut = excerpt(&long);
        assert_eq!(cut.chars().count(), EXCERPT_CHARS + 1);
        assert!(cut.ends_with('…'));
        assert_eq!(excerpt("short"), "short");
    }
}
