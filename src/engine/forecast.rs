//! What a new run is expected to take, as it is created: its steps'
//! history ([`Predictor`]) and the queues in front of their agents. The
//! prediction goes into the run's context ([`Prediction::CONTEXT_KEY`]) for
//! the check run, the run page and the API; the same estimates order the
//! scheduler's critical path.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Engine;
use crate::insights::predict::{AgentQueue, Basis, DagStep, Prediction, Predictor, dag_of};
use crate::store::{RunStore, StoreError};
use crate::workflow::Workflow;

/// Newest succeeded attempts of a workflow a forecast reads.
pub const SAMPLES: i64 = 1_000;

/// How long the engine reuses its count of the queues (a storm creates
/// many runs a second; one count serves them all).
pub const QUEUES_TTL: Duration = Duration::from_secs(1);

/// How long the engine reuses a workflow's step history: reading 1,000
/// attempts for each run a storm creates cost the dispatcher 15 % of its
/// throughput (benches/README.md), and a prediction a few seconds stale is
/// as good.
pub const HISTORY_TTL: Duration = Duration::from_secs(10);

/// A workflow's step history and the agents' queues, for the runs one
/// delivery creates.
#[derive(Debug, Clone, Default)]
pub struct Forecast {
    predictor: Arc<Predictor>,
    queues: HashMap<String, AgentQueue>,
    default_estimate: Duration,
}

impl Forecast {
    /// Reads `workflow`'s history; `queues` from [`Engine::agent_queues`]
    /// (empty: none assumed); steps without history rank by
    /// `default_estimate`.
    ///
    /// Errors: the store's.
    pub async fn read(
        store: &dyn RunStore,
        workflow: &str,
        queues: HashMap<String, AgentQueue>,
        default_estimate: Duration,
    ) -> Result<Self, StoreError> {
        Ok(Forecast {
            predictor: Arc::new(Predictor::new(
                &store.step_durations(workflow, SAMPLES).await?,
            )),
            queues,
            default_estimate,
        })
    }

    /// [`Forecast::read`] without queues and with the default estimate of
    /// an [`EngineConfig`](super::EngineConfig): for runs started by hand.
    ///
    /// Errors: the store's.
    pub async fn unqueued(store: &dyn RunStore, workflow: &str) -> Result<Self, StoreError> {
        Self::read(
            store,
            workflow,
            HashMap::new(),
            super::EngineConfig::default().default_estimate,
        )
        .await
    }

    /// Each step's expected duration (ms) for the scheduler's ranks: its
    /// p50 when history backs it, else the default estimate.
    pub fn rank_estimates(
        &self,
        repository: Option<&str>,
        workflow: &Workflow,
    ) -> HashMap<String, i64> {
        dag_of(workflow)
            .iter()
            .map(|s| {
                let e = self.predictor.step(repository, s);
                let ms = match e.basis {
                    Basis::Repository | Basis::AllRepositories => e.p50_ms,
                    Basis::Timeout | Basis::Default => self.default_estimate.as_millis() as i64,
                };
                (s.id.clone(), ms)
            })
            .collect()
    }

    /// The prediction for a new run of `workflow` in `repository`.
    pub fn predict(&self, repository: Option<&str>, workflow: &Workflow) -> Prediction {
        self.predictor
            .predict(repository, &dag_of(workflow), &self.queues)
    }
}

/// A run's steps as a DAG, from its snapshot (for what is left of it).
pub fn dag_of_snapshot(snapshot: &crate::store::RunSnapshot) -> Vec<DagStep> {
    snapshot
        .steps
        .iter()
        .map(|s| DagStep {
            id: s.step.clone(),
            needs: s.needs.clone(),
            agent: s.agent.clone(),
            timeout_ms: None,
        })
        .collect()
}

/// A sentence on what a run still needs, from the prediction made at its
/// creation and where its steps stand: `None` for a finished run or one
/// without a prediction. Worked out as of its latest step change, not the
/// clock, so the same snapshot always reads the same (a check run is not
/// updated just because time passed).
pub fn expected(snapshot: &crate::store::RunSnapshot) -> Option<String> {
    use crate::insights::predict::{StepProgress, minutes};
    let run = &snapshot.run;
    if run.state.is_terminal() {
        return None;
    }
    let p = Prediction::of_context(&run.context)?;
    let Some(started) = run.started_at else {
        return Some(format!(
            "Expected to take {}, from {}.",
            p.describe(),
            p.basis.describe()
        ));
    };
    let as_of = snapshot
        .steps
        .iter()
        .flat_map(|s| [s.started_at, s.finished_at])
        .flatten()
        .max()
        .unwrap_or(started);
    let progress: Vec<StepProgress> = snapshot
        .steps
        .iter()
        .map(|s| StepProgress {
            step: s.step.clone(),
            started_at: s.started_at,
            finished: s.state.is_terminal(),
        })
        .collect();
    let (p50, p90) = p.remaining(&dag_of_snapshot(snapshot), &progress, as_of);
    Some(format!(
        "Expected to need about {} more, 90 % within {}, from {}.",
        minutes(p50),
        minutes(p90),
        p.basis.describe()
    ))
}

impl Engine {
    /// The forecast for new runs of `workflow`: its step history (read at
    /// most once per `EngineConfig::history_ttl`) and the agents' queues
    /// ([`Engine::agent_queues`]).
    ///
    /// Errors: the store's.
    pub async fn forecast(&self, workflow: &str) -> Result<Forecast, StoreError> {
        let cached = self
            .inner
            .history_cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(workflow)
            .filter(|(at, _)| at.elapsed() < self.inner.config.history_ttl)
            .map(|(_, p)| p.clone());
        let predictor = match cached {
            Some(p) => p,
            None => {
                let p = Arc::new(Predictor::new(
                    &self.inner.store.step_durations(workflow, SAMPLES).await?,
                ));
                self.inner
                    .history_cache
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .insert(workflow.to_owned(), (Instant::now(), p.clone()));
                p
            }
        };
        Ok(Forecast {
            predictor,
            queues: self.agent_queues().await?,
            default_estimate: self.inner.config.default_estimate,
        })
    }

    /// Steps ready or running per agent, and each agent's `concurrency:`
    /// (0 when unlimited), counted at most once per [`QUEUES_TTL`].
    ///
    /// Errors: the store's.
    pub async fn agent_queues(&self) -> Result<HashMap<String, AgentQueue>, StoreError> {
        {
            let cached = self
                .inner
                .queues_cache
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some((at, queues)) = &*cached
                && at.elapsed() < QUEUES_TTL
            {
                return Ok(queues.clone());
            }
        }
        let queues: HashMap<String, AgentQueue> = self
            .inner
            .store
            .active_steps_by_agent()
            .await?
            .into_iter()
            .map(|(agent, ahead)| {
                let concurrency = self.inner.agents.concurrency(&agent).unwrap_or(0) as usize;
                (
                    agent,
                    AgentQueue {
                        ahead: ahead.max(0) as usize,
                        concurrency,
                    },
                )
            })
            .collect();
        *self
            .inner
            .queues_cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) =
            Some((Instant::now(), queues.clone()));
        Ok(queues)
    }
}
