//! The engine's side of spend limits (see [`crate::budget`]): before an
//! attempt starts, what its run, repository, installation and the service
//! have spent, checked against `budgets:`.

use crate::budget::{Budgets, Exhausted, Headroom, Scope, Spent};
use crate::ids::InstallationId;
use crate::store::RunId;
use crate::store::{ControlOutcome, RunSnapshot, RunStore, StoreError};

/// The run's and its subject's spend in each scope `budgets` limits, at
/// `now` (epoch ms): the run's from its attempts (the one about to start
/// counts as an attempt), the others from the `spend` table since the
/// period's first day. `repository` and `installation_id` are the run's;
/// without one, its scopes spent nothing.
///
/// # Errors
/// The store's.
pub async fn spent(
    store: &dyn RunStore,
    budgets: &Budgets,
    run_id: i64,
    repository: Option<&str>,
    installation_id: Option<InstallationId>,
    now: i64,
) -> Result<Vec<(Scope, Spent)>, StoreError> {
    let mut out = Vec::new();
    for scope in budgets.scopes() {
        let spent = match scope {
            Scope::Run => {
                let attempts = store.attempts(RunId(run_id)).await?;
                Spent {
                    usd: attempts.iter().filter_map(|a| a.cost_usd).sum(),
                    attempts: attempts.len() as i64,
                    agent_ms: attempts.iter().filter_map(|a| a.duration_ms).sum(),
                }
            }
            Scope::RepositoryDay | Scope::RepositoryMonth => match repository {
                Some(repo) => {
                    let since = scope.since_day(now).expect("a period");
                    store.spent(since, Some(repo), None).await?
                }
                None => Spent::default(),
            },
            Scope::InstallationMonth => match installation_id {
                Some(id) => {
                    let since = scope.since_day(now).expect("a period");
                    store.spent(since, None, Some(id)).await?
                }
                None => Spent::default(),
            },
            Scope::GlobalMonth => {
                let since = scope.since_day(now).expect("a period");
                store.spent(since, None, None).await?
            }
        };
        out.push((scope, spent));
    }
    Ok(out)
}

/// Whether an attempt of run `run_id` may start at `now`: `Ok` with what
/// is left, or the budget that is spent. No budget configured: `Ok` at once,
/// without reading anything.
///
/// # Errors
/// The store's (the caller decides; the engine lets the attempt start and
/// logs it, so a database hiccup does not stop every run).
pub async fn check(
    store: &dyn RunStore,
    budgets: &Budgets,
    run_id: i64,
    repository: Option<&str>,
    installation_id: Option<InstallationId>,
    now: i64,
) -> Result<Result<Headroom, Exhausted>, StoreError> {
    if budgets.is_empty() {
        return Ok(Ok(Headroom::default()));
    }
    let spent = spent(store, budgets, run_id, repository, installation_id, now).await?;
    Ok(budgets.check(&spent))
}

/// The budgets a run's attempts are held to: the service's `budgets`,
/// tightened by the repository's own ones the run was created with (its
/// context). Without the run (it could not be read): the service's.
pub(super) fn of_run(service: &Budgets, run: Option<&RunSnapshot>) -> Budgets {
    match run {
        Some(s) => service.tighter(&Budgets::of_run(&s.run.context)),
        None => *service,
    }
}

/// Stops run `run_id` because `exhausted` is spent (its running attempts
/// are cancelled through the run's desired state), counting it once: when
/// the run was not already stopping. A store error is logged; the caller
/// goes on (a refused step still fails on its own).
pub(super) async fn stop_run(engine: &super::Engine, run_id: i64, exhausted: &Exhausted) {
    match engine
        .inner
        .store
        .stop_over_budget(RunId(run_id), &exhausted.message)
        .await
    {
        Ok(ControlOutcome::Changed) => {
            crate::instrument::budget_exhausted(exhausted.scope.key());
            engine.wake();
        }
        Ok(_) => {}
        Err(e) => {
            tracing::warn!(run_id = %run_id, error = %e, "cannot stop the run over its budget")
        }
    }
}
