//! `adaptive_agents: true`: before a step's first attempt, whether its
//! recent history says to start on its first fallback instead
//! ([`crate::insights::decide`]).

use super::Engine;
use crate::insights::decide;
use crate::store::StepRecord;
use crate::workflow::Workflow;

/// The fallback to start `step` on, and why; `None` to run as written
/// (the workflow is not adaptive, this is not the step's first attempt on
/// its own agent, it has no fallback, or the history does not say so). A
/// store error is logged and runs the step as written.
pub(crate) async fn fallback_first(
    engine: &Engine,
    workflow: &Workflow,
    step: &StepRecord,
    fallback: Option<&str>,
) -> Option<(String, String)> {
    let fallback = fallback?;
    if !workflow.adaptive_agents || step.agent_index != 0 || step.attempts > 1 {
        return None;
    }
    let recent = match engine
        .inner
        .store
        .recent_outcomes(&workflow.name, &step.step, decide::RECENT_ATTEMPTS)
        .await
    {
        Ok(recent) => recent,
        Err(e) => {
            tracing::warn!(run = %step.run_id, step = %step.step, error = %e,
                "cannot read the step's history; running its agents in order");
            return None;
        }
    };
    let why = decide::prefer_fallback(&step.agent, fallback, &recent)?;
    Some((fallback.to_owned(), why))
}
