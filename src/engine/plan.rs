//! What follows from a run's state: `needs`, `if:` and `continue_on_error`
//! as in GitHub Actions, and the run's conclusion.
//!
//! The planner is a pure function of a [`RunSnapshot`] and the workflow
//! definition. The store calls it inside the write transaction that changed
//! the run (see [`crate::store::runs`]), so its decisions are always made on
//! the latest state: two needs of one step finishing at once cannot both
//! conclude "not all my needs are done yet".
//!
//! The rules, in GitHub Actions' words:
//! * a step waits until every step it `needs` has ended;
//! * its `if:` is then evaluated; without a status function (`success()`,
//!   `failure()`, `always()`, `cancelled()`) it is `success() && (…)`;
//! * `success()` is false when a step it depends on, directly or not, failed
//!   (a failure of a `continue_on_error` step does not count), and a step
//!   whose need was skipped is skipped too unless its `if:` uses a status
//!   function other than `success()`;
//! * when the run is being cancelled, every step that has not started is
//!   cancelled, except those whose `if:` calls `always()` or `cancelled()`:
//!   they still wait for their needs and run (cleanup, reporting), and
//!   cancelling does not abort them once started;
//! * when the run timed out, every step that has not started is cancelled
//!   (the time limit is hard, `always()` or not);
//! * the run ends when every step has: `cancelled` / `timed_out` when asked,
//!   `failed` when a step failed without `continue_on_error`, else `succeeded`.

use std::collections::HashMap;
use std::sync::Arc;

use crate::store::{
    DesiredState, Plan, Planner, RunSnapshot, RunState, StepChange, StepRecord, StepState,
};
use crate::workflow::expr::{Expr, Function};
use crate::workflow::{JsonContext, Workflow, WorkflowSet};

/// The engine's [`Planner`]: reads conditions from the loaded workflows.
#[derive(Debug, Clone)]
pub struct WorkflowPlanner {
    workflows: Arc<WorkflowSet>,
}

impl WorkflowPlanner {
    /// A planner over `workflows`.
    pub fn new(workflows: Arc<WorkflowSet>) -> Self {
        Self { workflows }
    }
}

impl Planner for WorkflowPlanner {
    fn plan(&self, snapshot: &RunSnapshot, _now: i64) -> Plan {
        plan_run(snapshot, self.workflows.get(&snapshot.run.workflow))
    }
}

/// Plans `snapshot` against `workflow` (`None`: the definition is no longer
/// loaded, and steps that have not started fail with that reason).
pub fn plan_run(snapshot: &RunSnapshot, workflow: Option<&Workflow>) -> Plan {
    let run = &snapshot.run;
    let mut plan = Plan::default();
    if run.state.is_terminal() {
        return plan;
    }
    let stopping = run.desired_state.is_stopping();
    // States as decided so far, so one pass settles a whole chain of skips.
    let mut state: HashMap<&str, StepState> = snapshot
        .steps
        .iter()
        .map(|s| (s.step.as_str(), s.state))
        .collect();
    let by_id: HashMap<&str, &StepRecord> = snapshot
        .steps
        .iter()
        .map(|s| (s.step.as_str(), s))
        .collect();
    // Ancestors whose failure counts, computed in topological order.
    let mut failed_upstream: HashMap<&str, bool> = HashMap::new();

    for s in &snapshot.steps {
        let current = state[s.step.as_str()];
        let decision = match current {
            // A run still waiting for approval never started: nothing of it
            // runs when it stops, not even `always()` clean-up.
            StepState::Pending | StepState::Ready
                if stopping
                    && (run.waiting_approval || !survives_stop(s, workflow, run.desired_state)) =>
            {
                Some((
                    StepState::Cancelled,
                    match run.desired_state {
                        DesiredState::TimedOut => {
                            "the run timed out before the step started".into()
                        }
                        _ => format!(
                            "the run was cancelled before the step started{}",
                            run.conclusion
                                .as_deref()
                                .map(|c| format!(" ({c})"))
                                .unwrap_or_default()
                        ),
                    },
                ))
            }
            StepState::Pending => {
                decide_pending(s, workflow, &state, &by_id, &failed_upstream, run)
            }
            _ => None,
        };
        let after = if let Some((to, reason)) = decision {
            plan.steps.push(StepChange {
                step: s.step.clone(),
                to,
                reason,
            });
            to
        } else {
            current
        };
        state.insert(s.step.as_str(), after);
        let upstream = s.needs.iter().any(|n| {
            failed_upstream.get(n.as_str()).copied().unwrap_or(false)
                || by_id
                    .get(n.as_str())
                    .is_some_and(|d| state[n.as_str()].is_failure() && !d.continue_on_error)
        });
        failed_upstream.insert(s.step.as_str(), upstream);
    }

    if snapshot
        .steps
        .iter()
        .all(|s| state[s.step.as_str()].is_terminal())
    {
        let failed: Vec<&str> = snapshot
            .steps
            .iter()
            .filter(|s| {
                let st = state[s.step.as_str()];
                st.is_failure() && !s.continue_on_error
            })
            .map(|s| s.step.as_str())
            .collect();
        plan.outcome = Some(match run.desired_state {
            DesiredState::Cancelled => (
                RunState::Cancelled,
                run.conclusion
                    .clone()
                    .unwrap_or_else(|| "cancelled on request".into()),
            ),
            DesiredState::TimedOut => (
                RunState::TimedOut,
                "the workflow's time limit passed".into(),
            ),
            _ if !failed.is_empty() => (
                RunState::Failed,
                format!("step(s) failed: {}", failed.join(", ")),
            ),
            _ => (
                RunState::Succeeded,
                format!("all {} steps ended well", snapshot.steps.len()),
            ),
        });
    }
    plan
}

fn decide_pending(
    s: &StepRecord,
    workflow: Option<&Workflow>,
    state: &HashMap<&str, StepState>,
    by_id: &HashMap<&str, &StepRecord>,
    failed_upstream: &HashMap<&str, bool>,
    run: &crate::store::Run,
) -> Option<(StepState, String)> {
    if !s
        .needs
        .iter()
        .all(|n| state.get(n.as_str()).is_none_or(|st| st.is_terminal()))
    {
        return None;
    }
    let Some(def) = workflow.and_then(|w| w.step(&s.step)) else {
        return Some((
            StepState::Failed,
            format!(
                "workflow `{}` (or its step `{}`) is no longer loaded; the step cannot run",
                run.workflow, s.step
            ),
        ));
    };
    let dependency_failed = s.needs.iter().any(|n| {
        failed_upstream.get(n.as_str()).copied().unwrap_or(false)
            || by_id
                .get(n.as_str())
                .is_some_and(|d| state[n.as_str()].is_failure() && !d.continue_on_error)
    });
    let overrides = overrides_skip(def.condition.expr());
    if !overrides
        && let Some(skipped) = s
            .needs
            .iter()
            .find(|n| state.get(n.as_str()) == Some(&StepState::Skipped))
        && !dependency_failed
    {
        return Some((
            StepState::Skipped,
            format!("needed step `{skipped}` was skipped"),
        ));
    }
    // Verdicts are read from step outputs only for a condition that asks.
    let reads_verdicts = def.condition.paths().iter().any(|(p, _)| {
        p.first().is_some_and(|s| s == "steps") && p.get(2).is_some_and(|f| f == "verdict")
    });
    let ctx = condition_context(run, by_id, state, dependency_failed, reads_verdicts);
    if def.condition.evaluate(&ctx) {
        let why = if s.needs.is_empty() {
            format!("a first step; if: `{}` is true", def.condition.source())
        } else {
            format!(
                "needs ended ({}); if: `{}` is true",
                s.needs.join(", "),
                def.condition.source()
            )
        };
        Some((StepState::Ready, why))
    } else if dependency_failed && !overrides {
        let failed: Vec<&str> = s
            .needs
            .iter()
            .filter(|n| state[n.as_str()].is_failure() || failed_upstream[n.as_str()])
            .map(String::as_str)
            .collect();
        Some((
            StepState::Skipped,
            format!(
                "a step it needs failed ({}); its if: `{}` does not ask for failure() or always()",
                failed.join(", "),
                def.condition.source()
            ),
        ))
    } else {
        Some((
            StepState::Skipped,
            format!("if: `{}` is false", def.condition.source()),
        ))
    }
}

/// The variables a condition reads: the run's context plus `steps.<id>`.
fn condition_context(
    run: &crate::store::Run,
    by_id: &HashMap<&str, &StepRecord>,
    state: &HashMap<&str, StepState>,
    dependency_failed: bool,
    reads_verdicts: bool,
) -> JsonContext {
    let mut vars = match &run.context {
        serde_json::Value::Object(m) => m.clone(),
        _ => serde_json::Map::new(),
    };
    let mut steps = serde_json::Map::new();
    for (id, st) in state {
        let rec = by_id[id];
        let outcome = st.outcome();
        let conclusion = if rec.continue_on_error && st.is_failure() {
            "success"
        } else {
            outcome
        };
        steps.insert(
            (*id).to_owned(),
            serde_json::json!({
                "outcome": outcome,
                "conclusion": conclusion,
                "output": rec.output.clone().unwrap_or_default(),
                "verdict": if reads_verdicts {
                    crate::verdict::step_verdict(outcome, rec.output.as_deref())
                } else {
                    None
                },
            }),
        );
    }
    vars.insert("steps".into(), serde_json::Value::Object(steps));
    JsonContext {
        vars: serde_json::Value::Object(vars),
        dependency_failed,
        cancelled: run.desired_state.is_stopping(),
    }
}

/// True when a step that has not started keeps its chance to run although
/// its run is stopping: the run was cancelled (not timed out) and the step's
/// `if:` calls `always()` or `cancelled()`.
fn survives_stop(s: &StepRecord, workflow: Option<&Workflow>, desired: DesiredState) -> bool {
    desired == DesiredState::Cancelled
        && workflow
            .and_then(|w| w.step(&s.step))
            .is_some_and(|def| runs_when_cancelled(def.condition.expr()))
}

/// True when the expression calls `always()` or `cancelled()` anywhere: a
/// step with such an `if:` runs (and keeps running) when its run is
/// cancelled, as in GitHub Actions.
pub fn runs_when_cancelled(e: &Expr) -> bool {
    calls(e, &|f| matches!(f, Function::Always | Function::Cancelled))
}

/// True when the expression calls `failure()`, `always()` or `cancelled()`:
/// the status functions that let a step run after a need failed or was
/// skipped (`success()`, explicit or implied, does not).
fn overrides_skip(e: &Expr) -> bool {
    calls(e, &|f| {
        matches!(
            f,
            Function::Failure | Function::Always | Function::Cancelled
        )
    })
}

/// True when the expression calls, anywhere, a function `wanted` accepts.
fn calls(e: &Expr, wanted: &dyn Fn(&Function) -> bool) -> bool {
    match e {
        Expr::Literal(_) | Expr::Path { .. } => false,
        Expr::Not(a) => calls(a, wanted),
        Expr::And(a, b) | Expr::Or(a, b) | Expr::Compare(_, a, b) => {
            calls(a, wanted) || calls(b, wanted)
        }
        Expr::Call(f, args) => wanted(f) || args.iter().any(|a| calls(a, wanted)),
    }
}

/// The critical-path rank (ms) of every step of `workflow`: its estimated
/// duration plus the largest rank among its dependents. Steps on the longest
/// remaining path rank highest, so the scheduler starts them first.
/// `estimate` gives a step's expected duration in ms.
pub fn critical_path_ranks(
    workflow: &Workflow,
    estimate: impl Fn(&str) -> i64,
) -> HashMap<String, i64> {
    let mut rank: HashMap<String, i64> = HashMap::new();
    // Reverse topological order: dependents first.
    for s in workflow.steps.iter().rev() {
        let below = workflow
            .dependents(&s.id)
            .filter_map(|d| rank.get(&d.id).copied())
            .max()
            .unwrap_or(0);
        rank.insert(s.id.clone(), estimate(&s.id).max(1) + below);
    }
    rank
}
