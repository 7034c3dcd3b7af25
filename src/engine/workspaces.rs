//! The engine's side of workspaces: a step's workspace made (or found)
//! before its attempt, its turn on the workspace, and the janitor that
//! clears workspaces when runs end.

use crate::store::RunId;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use super::{Engine, Transition};
use crate::store::RunState;

/// A step's hold on its run's workspace (see [`crate::workflow::Step::changes`]).
#[allow(dead_code)] // held for its drop
pub(super) enum WorkspaceTurn {
    Read(tokio::sync::OwnedRwLockReadGuard<()>),
    Write(tokio::sync::OwnedRwLockWriteGuard<()>),
}

/// The run's workspace, made if this is the first step to need it (and
/// then recorded on the run's timeline); `None` when the engine has no
/// workspaces configured.
pub(super) async fn prepare(
    engine: &Engine,
    step: &str,
    run_id: i64,
    delivery_id: &str,
) -> Result<Option<crate::workspace::Workspace>, crate::workspace::WorkspaceError> {
    use crate::workspace::{CheckoutRequest, WorkspaceError};
    let Some(workspaces) = engine.inner.config.workspaces.clone() else {
        return Ok(None);
    };
    if let Some(ws) = workspaces.existing(run_id) {
        return Ok(Some(ws));
    }
    let request = if workspaces.settings().checkout {
        let run = engine
            .inner
            .store
            .run(RunId(run_id))
            .await
            .map_err(|e| WorkspaceError::Invalid(format!("cannot read the run: {e}")))?
            .ok_or_else(|| WorkspaceError::Invalid("the run is gone".into()))?
            .run;
        super::prompt::event(engine, delivery_id)
            .await
            .and_then(|event| CheckoutRequest::for_run(&run, &event))
    } else {
        None
    };
    let Some(request) = request else {
        return workspaces.scratch(run_id).map(Some);
    };
    let ws = workspaces.ensure(&request).await?;
    if !ws.duration.is_zero() {
        let mut detail = format!(
            "checked out {} of {} in {} ms ({:.1} MB; fetched {})",
            ws.sha,
            ws.full_name,
            ws.duration.as_millis(),
            ws.size_bytes as f64 / 1e6,
            ws.fetched
        );
        if !ws.restored.is_empty() {
            detail.push_str(&format!(
                "; restored from the base branch (they steer agents): {}",
                ws.restored.join(", ")
            ));
        }
        crate::instrument::workspace_created(ws.duration);
        if let Err(e) = engine
            .inner
            .store
            .record_checkout(RunId(run_id), step, &ws.sha, &detail)
            .await
        {
            tracing::warn!(run_id = %run_id, error = %e, "could not record the run's checkout");
        }
    }
    Ok(Some(ws))
}

/// Waits for the step's turn on its run's workspace: alone when it may
/// change files (`changes: true`), beside other readers otherwise. The wait
/// ends early when the attempt is stopped (the agent then sees the
/// cancellation at once); the attempt's deadline counts from the turn.
pub(super) async fn turn(
    engine: &Engine,
    workspace: Option<&crate::workspace::Workspace>,
    changes: bool,
    cancel: &CancellationToken,
) -> Option<WorkspaceTurn> {
    let (ws, all) = (workspace?, engine.inner.config.workspaces.as_ref()?);
    let lock = all.step_lock(ws.run_id);
    let turn = async {
        if changes {
            WorkspaceTurn::Write(lock.write_owned().await)
        } else {
            WorkspaceTurn::Read(lock.read_owned().await)
        }
    };
    tokio::select! {
        turn = turn => Some(turn),
        _ = cancel.cancelled() => None,
    }
}

/// Harvests the change a step left in its run's workspace and stores it
/// with the run (`record_change`). `None` when all is well (or there is no
/// checkout); a permanent [`Failure`] when the policy refused the change
/// (its message says why and how to allow it); a transient one when the
/// change could not be read or stored.
///
/// [`Failure`]: crate::agent::Failure
pub(super) async fn harvest(
    engine: &Engine,
    workflow: &crate::workflow::Workflow,
    step: &str,
    run_id: i64,
    ws: &crate::workspace::Workspace,
    opened_by_agent: Vec<String>,
) -> Option<crate::agent::Failure> {
    use crate::agent::{ErrorClass, Failure, FailureKind};
    use crate::workspace::{ChangePolicy, check_policy};
    let all = engine.inner.config.workspaces.as_ref()?;
    if ws.repo_id <= 0 {
        return None;
    }
    let limits = all.settings().change_limits;
    let transient = |message: String| Failure {
        class: ErrorClass::Transient,
        kind: FailureKind::Agent,
        message,
    };
    let mut change = match all.harvest(run_id, limits).await {
        Ok(Some(change)) => change,
        Ok(None) => return None,
        Err(e) => {
            return Some(Failure {
                class: if e.is_transient() {
                    ErrorClass::Transient
                } else {
                    ErrorClass::Permanent
                },
                kind: FailureKind::Agent,
                message: format!("the change could not be read from the workspace: {e}"),
            });
        }
    };
    change.pull_request_step = workflow.pull_request_step().map(|s| s.id.clone());
    change.linked_pull_requests = opened_by_agent;
    let policy = ChangePolicy {
        allow_workflow_changes: workflow.allow_workflow_changes,
    };
    let refused = check_policy(&change, policy, limits, &crate::redact::Redactor::default()).err();
    if let Err(e) = engine
        .inner
        .store
        .record_change(RunId(run_id), step, &change, refused.as_deref())
        .await
    {
        return Some(transient(format!("the change could not be stored: {e}")));
    }
    tracing::info!(
        run_id = %run_id,
        step,
        files = change.files.len(),
        refused = refused.is_some(),
        "harvested the step's change"
    );
    refused.map(|why| Failure {
        class: ErrorClass::Permanent,
        kind: FailureKind::Config,
        message: format!("the change was refused: {why}"),
    })
}

impl Engine {
    /// Removes workspaces when their runs end (a failed run's is kept for
    /// `TASKMASTER_KEEP_FAILED_WORKSPACES`), and sweeps at start-up and every
    /// ten minutes for what a crash or a missed transition left behind:
    /// half-made checkouts, workspaces of ended runs, unused mirrors.
    pub(super) async fn workspace_janitor(self, workspaces: Arc<crate::workspace::Workspaces>) {
        let mut transitions = self.subscribe();
        let sweep = |engine: Engine, workspaces: Arc<crate::workspace::Workspaces>| async move {
            // A store shared by replicas: only this host's workspaces are
            // here, and a run active anywhere keeps its own.
            match engine.inner.store.active_runs().await {
                Ok(active) => {
                    let active: std::collections::HashSet<i64> =
                        active.into_iter().map(|r| r.0).collect();
                    let (w, m) = workspaces.sweep(&active).await;
                    if w + m > 0 {
                        tracing::info!(
                            workspaces = w,
                            mirrors = m,
                            "workspace sweep removed what no run needs"
                        );
                    }
                }
                Err(e) => tracing::warn!(error = %e, "workspace sweep: cannot list active runs"),
            }
        };
        sweep(self.clone(), workspaces.clone()).await;
        let mut every = tokio::time::interval(Duration::from_secs(600));
        every.tick().await;
        loop {
            tokio::select! {
                t = transitions.recv() => match t {
                    Ok(Transition::Run { run_id, state, .. }) if state.is_terminal() => {
                        // Agents let go of what they keep for the run (a
                        // managed AgentAPI server) before its workspace goes.
                        let run = run_id.to_string();
                        for name in self.inner.agents.names() {
                            if let Some(agent) = self.inner.agents.agent(&name) {
                                agent.release(&run).await;
                            }
                        }
                        workspaces.finish(run_id.0, state != RunState::Succeeded).await;
                    }
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                _ = every.tick() => sweep(self.clone(), workspaces.clone()).await,
            }
        }
    }
}
