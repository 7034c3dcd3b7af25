//! The executor: one claimed step, one attempt, one fenced result.
//!
//! For a claimed step (its attempt already recorded by the claim) the
//! executor asks the agent's circuit breaker, renders the prompt, runs the agent under
//! the step's timeout while the engine's heartbeat renews the lease every
//! third of its TTL, and decides what follows:
//!
//! * success → the step `succeeded`;
//! * a transient failure (timeout, unreachable, busy, rate-limited) with
//!   attempts left on this agent → `retry` after exponential backoff with
//!   full jitter (at least the agent's `Retry-After`);
//! * a permanent failure (bad input, 4xx, the agent reported an error), or
//!   retries exhausted → `fallback` to the next agent in `fallback:`;
//! * nothing left → `give_up`: the step `failed` (or `timed_out`).
//!
//! Each decision is written with its reason to the run's timeline, in the
//! same transaction as the result. The engine's heartbeat also carries the run's
//! desired state back: when the run is cancelled or timed out, the attempt's
//! cancellation token fires and the agent stops cooperatively. When a renewal
//! finds the lease gone (the step was reaped and handed to another worker),
//! the attempt is abandoned: its result would be refused by the fence anyway.
//!
//! A cancel that lands between the claim and the attempt's registration in
//! the engine's table of running attempts cannot fire its token directly; the
//! reaper (every `reap_interval`) and the heartbeat (every third of the
//! lease) both carry the run's desired state, so such an attempt is stopped
//! within the shorter of the two.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::breaker::{Admission, BreakerState};
use super::outcome::{attempt_record, decide, finish};
use super::prompt::{event, render};
use super::{Engine, RunningAttempt, StopReason, Transition, backoff};
use crate::agent::{
    AttemptOutcome, AttemptRequest, ErrorClass, Failure, FailureKind, IdempotencyKey, Output, Usage,
};
use crate::store::{AttemptEnd, AttemptRecord, ClaimedStep, StepNext, StepState, now_ms};

/// Runs one attempt of a claimed step and records what follows. Returns
/// true when the results writer claimed after the result (direct hand-off),
/// so the scheduler need not run a round for the freed slot.
pub(crate) async fn execute(engine: &Engine, claimed: ClaimedStep) -> bool {
    let inner = &engine.inner;
    let ClaimedStep {
        step,
        workflow,
        delivery_id,
        lease,
        attempt,
        run_started,
    } = claimed;
    let waited = u64::try_from(now_ms() - step.run_at).unwrap_or(0);
    crate::instrument::step_claimed(&workflow, Duration::from_millis(waited));
    if run_started {
        engine.publish(Transition::Run {
            run_id: step.run_id,
            state: crate::store::RunState::Running,
            reason: "first step claimed".into(),
        });
    }
    // An attempt started with the claim but never handed to the agent is
    // recorded as such.
    let not_run = |class: ErrorClass, kind: &str, why: &str| {
        attempt.map(|_| AttemptRecord {
            outcome: AttemptEnd::Failed,
            error_class: Some(class),
            error_kind: Some(kind.into()),
            error: Some(why.to_owned()),
            ..AttemptRecord::default()
        })
    };
    let run_id = step.run_id;
    engine.publish(Transition::Step {
        run_id,
        step: step.step.clone(),
        state: StepState::Running,
        agent: Some(step.agent.clone()),
        attempt,
        reason: "claimed".into(),
    });

    let wf = inner.workflows.get_arc(&workflow);
    let Some(def) = wf.as_deref().and_then(|w| w.step(&step.step)).cloned() else {
        let why = format!(
            "workflow `{workflow}` (or its step `{}`) is no longer loaded",
            step.step
        );
        return finish(
            engine,
            &lease,
            not_run(ErrorClass::Permanent, "config", &why).as_ref(),
            StepNext::Finish {
                state: StepState::Failed,
                output: None,
                error: Some(why.clone()),
            },
            ("give_up", &why),
            &step.step,
            run_id,
        )
        .await
        .1;
    };
    let wf = wf.expect("checked above");
    let chain: Vec<&str> = std::iter::once(def.agent.as_str())
        .chain(def.fallback.iter().map(String::as_str))
        .collect();
    let agent_name = step.agent.clone();
    let index = step.agent_index as usize;
    let next_agent = chain.get(index + 1).map(|s| (*s).to_owned());

    // `adaptive_agents`: a step whose agent has been failing it starts on
    // its first fallback, without an attempt on the agent.
    if attempt.is_some()
        && let Some((fallback, why)) =
            super::adaptive::fallback_first(engine, &wf, &step, next_agent.as_deref()).await
    {
        crate::instrument::adaptive_fallback(&agent_name, &fallback);
        let record = not_run(ErrorClass::Transient, "history", &why);
        let next = StepNext::Fallback {
            agent: fallback,
            agent_index: index as i64 + 1,
            run_at: now_ms(),
        };
        return finish(
            engine,
            &lease,
            record.as_ref(),
            next,
            ("fallback_by_history", &why),
            &step.step,
            run_id,
        )
        .await
        .1;
    }

    // An open circuit sends the step to its fallback without an attempt.
    // The scheduler claimed it without one when the circuit was already
    // open; a circuit that opened since (or a half-open one whose single
    // trial is taken) refuses the attempt started with the claim.
    let refused = match attempt {
        None => Some(inner.breakers.retry_in(&agent_name)),
        Some(_) => match inner
            .breakers
            .admit(&agent_name, inner.agents.breaker(&agent_name))
        {
            Admission::Refuse(wait) => Some(wait),
            Admission::Allow | Admission::Trial => None,
        },
    };
    if let Some(wait) = refused {
        let (next, event, why) = match &next_agent {
            Some(fallback) => (
                StepNext::Fallback {
                    agent: fallback.clone(),
                    agent_index: index as i64 + 1,
                    run_at: now_ms(),
                },
                "fallback",
                format!(
                    "the circuit of agent `{agent_name}` is open; moving to fallback `{fallback}`"
                ),
            ),
            None => (
                StepNext::Retry {
                    run_at: now_ms() + wait.as_millis() as i64,
                },
                "wait_for_circuit",
                format!(
                    "the circuit of agent `{agent_name}` is open and no fallback remains; \
                     trying again in {} ms",
                    wait.as_millis()
                ),
            ),
        };
        let record = not_run(ErrorClass::Transient, "circuit_open", &why);
        return finish(
            engine,
            &lease,
            record.as_ref(),
            next,
            (event, &why),
            &step.step,
            run_id,
        )
        .await
        .1;
    }
    let number = attempt.expect("claimed with an attempt when the circuit admits one");

    let Some(agent) = inner.agents.agent(&agent_name) else {
        let failure = Failure {
            class: ErrorClass::Permanent,
            kind: FailureKind::Config,
            message: format!("agent `{agent_name}` is not configured"),
        };
        let (next, event, why) =
            decide(engine, &def, &step, &agent_name, next_agent, &failure, None);
        let record = not_run(ErrorClass::Permanent, "config", &failure.message);
        return finish(
            engine,
            &lease,
            record.as_ref(),
            next,
            (event, &why),
            &step.step,
            run_id,
        )
        .await
        .1;
    };

    // Spend limits (`budgets:`): an attempt that would start over a budget
    // does not start, and the run stops, saying which budget; one that
    // starts runs no longer than the time-based budgets leave. The run is
    // read once for this attempt: its context carries the repository's own
    // budgets, and the prompt renders from it below.
    let snapshot = match inner.store.run(run_id).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(run_id = %run_id, error = %e, "cannot read the run before its attempt");
            None
        }
    };
    let price = inner.agents.price(&agent_name);
    let subject = event(engine, &delivery_id).await;
    let repository = snapshot
        .as_ref()
        .and_then(|s| s.run.repository.clone())
        .or_else(|| {
            subject
                .as_deref()
                .and_then(|e| e.repository().map(|r| r.full_name.clone()))
        });
    let installation = subject.as_deref().and_then(|e| e.installation_id());
    let budgets = super::budgets::of_run(&inner.config.budgets, snapshot.as_ref());
    let mut budget_time = None;
    match super::budgets::check(
        inner.store.as_ref(),
        &budgets,
        run_id.0,
        repository.as_deref(),
        installation,
        (inner.config.clock)(),
    )
    .await
    {
        Ok(Ok(headroom)) => budget_time = headroom.time_left(price.as_ref()),
        Ok(Err(exhausted)) => {
            super::budgets::stop_run(engine, run_id.0, &exhausted).await;
            let why = exhausted.message;
            let record = not_run(ErrorClass::Permanent, "budget", &why);
            return finish(
                engine,
                &lease,
                record.as_ref(),
                StepNext::Finish {
                    state: StepState::Failed,
                    output: None,
                    error: Some(why.clone()),
                },
                ("budget_exhausted", &why),
                &step.step,
                run_id,
            )
            .await
            .1;
        }
        Err(e) => {
            tracing::warn!(run_id = %run_id, error = %e, "cannot read what was spent; the attempt starts unchecked");
        }
    }

    // From here on the attempt is in the engine's table of running
    // attempts, so the heartbeat renews its lease while the workspace is
    // made (a clone can outlast a lease) and a cancel reaches it; every
    // return below takes it out again (`Unregister`).
    let cancel = CancellationToken::new();
    let running = Arc::new(RunningAttempt {
        run_id: run_id.0,
        step_row: lease.step_row.0,
        token: lease.token.clone(),
        registered: std::time::Instant::now(),
        cancel: cancel.clone(),
        reason: std::sync::Mutex::new(None),
        runs_when_cancelled: crate::engine::plan::runs_when_cancelled(def.condition.expr()),
    });
    inner
        .running
        .lock()
        .expect("running lock")
        .insert(lease.token.clone(), running.clone());
    if inner
        .shutting_down
        .load(std::sync::atomic::Ordering::SeqCst)
    {
        running.stop(StopReason::Shutdown);
    }
    let _unregister = Unregister {
        engine,
        token: lease.token.clone(),
    };
    // The run's workspace: made by the first step that needs it, shared by
    // the rest. A transient failure (network, disk) retries the step; a
    // permanent one (the commit is gone) fails it: another agent would not
    // fare better, so no fallback.
    let workspace =
        match super::workspaces::prepare(engine, &step.step, run_id.0, &delivery_id).await {
            Ok(ws) => ws,
            Err(e) => {
                let transient = e.is_transient();
                let tried = step.agent_attempts.max(1) as u32;
                let max = def.retry.max_attempts.max(1);
                let message = format!("the run's workspace could not be made: {e}");
                let (next, event, why) = if transient && tried < max {
                    let delay = backoff::retry_delay(&def.retry, tried + 1, None);
                    (
                        StepNext::Retry {
                            run_at: now_ms() + delay.as_millis() as i64,
                        },
                        "retry",
                        format!(
                            "{message}; retry {tried} of {} in {} ms",
                            max - 1,
                            delay.as_millis()
                        ),
                    )
                } else {
                    (
                        StepNext::Finish {
                            state: StepState::Failed,
                            output: None,
                            error: Some(message.clone()),
                        },
                        "give_up",
                        message.clone(),
                    )
                };
                let class = if transient {
                    ErrorClass::Transient
                } else {
                    ErrorClass::Permanent
                };
                let record = not_run(class, "workspace", &message);
                return finish(
                    engine,
                    &lease,
                    record.as_ref(),
                    next,
                    (event, &why),
                    &step.step,
                    run_id,
                )
                .await
                .1;
            }
        };

    let (prompt, with) = match render(
        engine,
        &wf,
        &def,
        run_id.0,
        &delivery_id,
        workspace.as_ref(),
        snapshot,
    )
    .await
    {
        Ok(r) => r,
        Err(message) => {
            let why = format!("the step's prompt or inputs cannot be rendered: {message}");
            let record = AttemptRecord {
                outcome: AttemptEnd::Failed,
                error_class: Some(ErrorClass::Permanent),
                error_kind: Some("config".into()),
                error: Some(why.clone()),
                ..AttemptRecord::default()
            };
            return finish(
                engine,
                &lease,
                Some(&record),
                StepNext::Finish {
                    state: StepState::Failed,
                    output: None,
                    error: Some(why.clone()),
                },
                ("give_up", &why),
                &step.step,
                run_id,
            )
            .await
            .1;
        }
    };

    let mut timeout = def.timeout.unwrap_or(inner.config.default_step_timeout);
    // The agent's budgets for this step, all its attempts on that agent
    // together: the wall-clock time and the cost earlier attempts used are
    // spent; this attempt gets at most the time that is left.
    let wall = inner.agents.max_wall(&agent_name);
    let cost = inner.agents.max_cost_usd(&agent_name);
    if wall.is_some() || cost.is_some() {
        let (used_ms, used_usd) = match inner.store.attempts(run_id).await {
            Ok(rows) => rows
                .iter()
                .filter(|a| a.step == step.step && a.agent == agent_name)
                .fold((0i64, 0f64), |(ms, usd), a| {
                    (
                        ms + a.duration_ms.unwrap_or(0),
                        usd + a.cost_usd.unwrap_or(0.0),
                    )
                }),
            Err(e) => {
                tracing::warn!(run_id = %run_id, error = %e, "cannot read attempts for the agent's budget");
                (0, 0.0)
            }
        };
        let left_ms = wall.map(|w| w.as_millis() as i64 - used_ms);
        let spent = match (left_ms, cost) {
            (Some(left), _) if left <= 0 => Some(format!(
                "the step's wall-clock budget on `{agent_name}` ({} s) is spent",
                wall.unwrap_or_default().as_secs()
            )),
            (_, Some(max)) if used_usd >= max => Some(format!(
                "the step's cost budget on `{agent_name}` (${max:.2}) is spent: ${used_usd:.2} so far"
            )),
            _ => None,
        };
        if let Some(message) = spent {
            let failure = Failure {
                class: ErrorClass::Permanent,
                kind: FailureKind::ResourceLimit,
                message,
            };
            let (next, event, why) =
                decide(engine, &def, &step, &agent_name, next_agent, &failure, None);
            let record = not_run(ErrorClass::Permanent, "budget", &failure.message);
            return finish(
                engine,
                &lease,
                record.as_ref(),
                next,
                (event, &why),
                &step.step,
                run_id,
            )
            .await
            .1;
        }
        if let Some(left) = left_ms {
            timeout = timeout.min(Duration::from_millis(left as u64));
        }
    }
    if let Some(left) = budget_time {
        timeout = timeout.min(left.max(Duration::from_secs(1)));
    }
    // A validation step on an AI agent ends its answer with a verdict
    // report (`crate::verdict`): taskmaster asks for it, not each workflow.
    let asks_verdict = def.validation.is_some() && agent.kind() != crate::agent::AgentKind::Command;
    let prompt = if asks_verdict {
        format!("{prompt}{}", crate::verdict::instructions())
    } else {
        prompt
    };
    // A CLI that can validate against a schema (Claude Code's
    // `--json-schema`) gets it too; the others ignore the key.
    let mut with = with;
    if asks_verdict && agent.kind() == crate::agent::AgentKind::Cli {
        with.insert(
            "json_schema".into(),
            serde_json::Value::String(crate::verdict::schema_compact()),
        );
    }
    // Steps that may change files hold the run's workspace alone.
    let _workspace_turn =
        super::workspaces::turn(engine, workspace.as_ref(), def.changes, &cancel).await;
    let request = AttemptRequest {
        key: IdempotencyKey {
            run: run_id.to_string(),
            step: step.step.clone(),
            attempt: number as u32,
        },
        prompt,
        with,
        workdir: workspace.as_ref().map(|ws| ws.path.clone()),
        read_only: workspace
            .as_ref()
            .filter(|ws| !ws.mirror.as_os_str().is_empty())
            .map(|ws| vec![ws.mirror.clone()])
            .unwrap_or_default(),
        untrusted_checkout: workspace.as_ref().is_some_and(|ws| ws.base_sha.is_some()),
        repository: event(engine, &delivery_id)
            .await
            .and_then(|e| e.repository().map(|r| r.full_name.to_string())),
        deadline: Instant::now() + timeout,
        cancel: cancel.clone(),
    };

    let started = Instant::now();
    let grace = inner.config.timeout_grace;
    let repair_base = asks_verdict.then(|| request.clone());
    let outcome = tokio::select! {
        outcome = agent.run(request) => outcome,
        _ = tokio::time::sleep(timeout + grace) => AttemptOutcome {
            failure: Some(Failure {
                class: ErrorClass::Transient,
                kind: FailureKind::Timeout,
                message: format!(
                    "the agent did not return within the step's timeout of {} ms",
                    timeout.as_millis()
                ),
            }),
            output: Output::default(),
            duration: started.elapsed(),
            usage: Usage::default(),
            retry_after: None,
            web_url: None,
            pull_requests: Vec::new(),
        },
    };
    inner
        .running
        .lock()
        .expect("running lock")
        .remove(&lease.token);
    let stop = *running.reason.lock().expect("stop lock");
    let mut outcome = outcome;
    let mut malformed = false;
    if stop.is_none() {
        malformed = super::verdicts::settle(
            agent.as_ref(),
            &def,
            workspace.as_ref(),
            repair_base,
            grace,
            &mut outcome,
        )
        .await;
    }
    if stop.is_some() {
        // Stopped from outside: the outcome says nothing about the agent.
        inner.breakers.abandon(&agent_name);
    }

    // A step that may change files: its change is harvested now, while it
    // still holds the workspace alone. A refusal fails the step for good
    // (another attempt would start from the refused tree); a harvest that
    // could not be read is retried like a transient failure.
    let mut refusal = None;
    if stop.is_none()
        && outcome.failure.is_none()
        && def.changes
        && let Some(ws) = workspace.as_ref()
    {
        let opened = outcome.pull_requests.clone();
        match super::workspaces::harvest(engine, &wf, &step.step, run_id.0, ws, opened).await {
            Some(f) if f.class == ErrorClass::Permanent => refusal = Some(f.message),
            Some(f) => outcome.failure = Some(f),
            None => {}
        }
    }

    let mut record = attempt_record(&outcome, malformed, price.as_ref());
    if let Some(usd) = record.cost_usd {
        crate::instrument::attempt_cost(
            &agent_name,
            repository.as_deref().unwrap_or(""),
            &workflow,
            usd,
        );
    }

    let (next, event, why) = match (stop, &outcome.failure) {
        (Some(StopReason::LeaseLost), _) => {
            tracing::warn!(run_id = %run_id, step = %step.step, attempt = number,
                "the lease was lost while the attempt ran; its result is dropped");
            return false;
        }
        (Some(StopReason::Shutdown), _) => {
            record.outcome = AttemptEnd::Cancelled;
            (
                StepNext::Retry { run_at: now_ms() },
                "released",
                format!("attempt {number} was stopped by a shutdown; the step will run again"),
            )
        }
        (Some(why @ (StopReason::Cancelled | StopReason::TimedOut)), _) => {
            record.outcome = AttemptEnd::Cancelled;
            let (state, text) = if why == StopReason::TimedOut {
                (StepState::TimedOut, "the run's time limit passed")
            } else {
                (StepState::Cancelled, "the run was cancelled")
            };
            (
                StepNext::Finish {
                    state,
                    output: Some(outcome.output.text.clone()),
                    error: Some(format!("{text} while attempt {number} ran")),
                },
                "step_cancelled",
                format!("{text}; attempt {number} on `{agent_name}` was aborted"),
            )
        }
        (None, None) if refusal.is_some() => {
            inner.breakers.record(&agent_name, false);
            let why = refusal.unwrap_or_default();
            record.outcome = AttemptEnd::Failed;
            record.error = Some(why.clone());
            (
                StepNext::Finish {
                    state: StepState::Failed,
                    output: Some(outcome.output.text.clone()),
                    error: Some(why.clone()),
                },
                "change_refused",
                why,
            )
        }
        (None, None) => {
            inner.breakers.record(&agent_name, false);
            (
                StepNext::Finish {
                    state: StepState::Succeeded,
                    output: Some(outcome.output.text.clone()),
                    error: None,
                },
                "step_succeeded",
                format!(
                    "attempt {number} on `{agent_name}` succeeded in {} ms",
                    outcome.duration.as_millis()
                ),
            )
        }
        (None, Some(failure)) => {
            let opened = inner
                .breakers
                .record(&agent_name, failure.class == ErrorClass::Transient);
            let (next, event, mut why) = decide(
                engine,
                &def,
                &step,
                &agent_name,
                next_agent,
                failure,
                outcome.retry_after,
            );
            if opened == Some(BreakerState::Open) {
                why.push_str(&format!("; the circuit of `{agent_name}` opened"));
            }
            let next = match next {
                StepNext::Finish { state, error, .. } => StepNext::Finish {
                    state,
                    output: Some(outcome.output.text.clone()),
                    error,
                },
                other => other,
            };
            (next, event, why)
        }
    };
    crate::instrument::attempt_finished(
        &workflow,
        &step.step,
        &agent_name,
        record.outcome.as_str(),
        record.duration_ms,
        record
            .error_class
            .map(ErrorClass::as_str)
            .zip(record.error_kind.as_deref()),
    );
    // A validation step's verdict, stored once its result is accepted.
    let verdict = match (def.validation, &next) {
        (
            Some(kind),
            StepNext::Finish {
                state: state @ (StepState::Succeeded | StepState::Failed),
                output,
                error,
            },
        ) => Some((kind, *state, output.clone(), error.clone(), malformed)),
        _ => None,
    };
    let (accepted, handed_off) = finish(
        engine,
        &lease,
        Some(&record),
        next,
        (event, &why),
        &step.step,
        run_id,
    )
    .await;
    // What this attempt cost may have spent a budget: the run stops now, so
    // its attempts still running are cancelled instead of spending on (the
    // next attempt's check would only refuse new ones).
    if accepted && !budgets.is_empty() {
        let spent_now = super::budgets::check(
            inner.store.as_ref(),
            &budgets,
            run_id.0,
            repository.as_deref(),
            installation,
            (inner.config.clock)(),
        )
        .await;
        if let Ok(Err(exhausted)) = spent_now {
            super::budgets::stop_run(engine, run_id.0, &exhausted).await;
        }
    }
    if accepted && let Some((kind, state, output, error, malformed)) = verdict {
        if malformed {
            // No verdict to store: the answer never said one.
            crate::instrument::verdict(&workflow, &step.step, "malformed");
        } else {
            super::verdicts::record_validation(
                engine,
                &workflow,
                run_id.0,
                &step.step,
                &agent_name,
                kind,
                state,
                output,
                error,
            )
            .await;
        }
    }
    handed_off
}

/// Takes an attempt out of the engine's table of running attempts when it
/// goes out of scope, whichever way `execute` returns.
struct Unregister<'a> {
    engine: &'a Engine,
    token: String,
}

impl Drop for Unregister<'_> {
    fn drop(&mut self) {
        self.engine
            .inner
            .running
            .lock()
            .expect("running lock")
            .remove(&self.token);
    }
}
