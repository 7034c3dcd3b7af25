//! From a delivery to runs: the routing [`DeliveryHandler`] and the one place
//! that turns a workflow and an event into a [`NewRun`].
//!
//! The handler is pure apart from reading duration estimates: it parses the
//! event, asks [`route`] which workflows start, and returns the runs to
//! create. The dispatcher commits them **in the same transaction** that
//! marks the delivery `done` ([`DeliveryResult::Started`]), and the store
//! keys runs by (delivery, workflow), so a delivery handled twice — after a
//! crash between the handler and the commit, or a redelivery — never makes
//! a second run.
//!
//! [`DeliveryResult::Started`]: crate::store::DeliveryResult::Started

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use super::Engine;
use super::forecast::Forecast;
use super::plan::critical_path_ranks;
use crate::classify::Classification;
use crate::dispatch::{DeliveryHandler, Handled, HandlerError};
use crate::event::Event;
use crate::routing::route;
use crate::store::{
    CreatedRun, Delivery, DeliveryState, EncodedPayload, NewDelivery, NewRun, NewStep, RunStore,
    StoreError, now_ms,
};
use crate::workflow::{PromptContext, Workflow, WorkflowSet};

/// Builds the run of `workflow` for `event`, delivered as `delivery_id`.
///
/// `forecast` gives each step's expected duration (from past attempts),
/// which orders the scheduler's critical path, and the run's predicted
/// time, kept in its context ([`Prediction::CONTEXT_KEY`]).
///
/// [`Prediction::CONTEXT_KEY`]: crate::insights::predict::Prediction::CONTEXT_KEY
#[allow(clippy::too_many_arguments)] // each is a distinct input; a struct would only rename them
pub fn new_run(
    set: &WorkflowSet,
    workflow: &Workflow,
    event: &Event,
    delivery_id: &str,
    reason: &str,
    classification: Option<Classification>,
    needs_approval: Option<String>,
    forecast: &Forecast,
) -> NewRun {
    let mut ctx = PromptContext::from_event(event, &workflow.name, classification.clone());
    ctx.inputs = workflow.input_values(&BTreeMap::new());
    let concurrency_group = match set.render_concurrency_group(&workflow.name, &ctx) {
        Some(Ok(group)) => Some(group),
        Some(Err(e)) => {
            tracing::warn!(workflow = %workflow.name, error = %e,
                "the concurrency group cannot be rendered; the run has no group");
            None
        }
        None => None,
    };
    let repository = (!ctx.repository.is_empty()).then_some(ctx.repository.as_str());
    let mut context = serde_json::to_value(&ctx).unwrap_or_default();
    if let Some(map) = context.as_object_mut() {
        map.insert(
            crate::insights::predict::Prediction::CONTEXT_KEY.into(),
            serde_json::to_value(forecast.predict(repository, workflow)).unwrap_or_default(),
        );
        map.remove("steps");
        // The run keeps the rules it was made under (a repository's
        // `.github/taskmaster.yml` may have changed them); reports read them.
        map.insert(
            crate::verdict::VerdictRules::CONTEXT_KEY.into(),
            serde_json::to_value(workflow.verdicts).unwrap_or_default(),
        );
        // And the repository's own budgets, when it set some: the engine
        // checks them (tightening the service's) before each attempt.
        if !workflow.budgets.is_empty() {
            map.insert(
                crate::budget::Budgets::CONTEXT_KEY.into(),
                serde_json::to_value(workflow.budgets).unwrap_or_default(),
            );
        }
    }
    let estimates = forecast.rank_estimates(repository, workflow);
    let ranks = critical_path_ranks(workflow, |id| estimates.get(id).copied().unwrap_or(0));
    let (number, head_sha) = match (&ctx.pr, &ctx.issue) {
        (Some(pr), _) => (Some(pr.number as i64), Some(pr.head_sha.clone())),
        (None, Some(issue)) => (Some(issue.number as i64), None),
        _ => (None, None),
    };
    NewRun {
        workflow: workflow.name.clone(),
        delivery_id: delivery_id.to_owned(),
        event: event.name().to_owned(),
        repository: event.repository().map(|r| r.full_name.clone()),
        subject_number: number,
        head_sha,
        classification: classification.and_then(|c| serde_json::to_string(&c).ok()),
        reason: reason.to_owned(),
        context,
        priority: workflow.priority,
        concurrency_group,
        cancel_in_progress: workflow
            .concurrency
            .as_ref()
            .is_some_and(|c| c.cancel_in_progress),
        max_parallel: workflow.max_parallel,
        timeout: workflow.timeout,
        needs_approval,
        steps: workflow
            .steps
            .iter()
            .map(|s| NewStep {
                step: s.id.clone(),
                needs: s.needs.clone(),
                agent: s.agent.clone(),
                continue_on_error: s.continue_on_error,
                rank_ms: ranks.get(&s.id).copied().unwrap_or(0),
                runs_when_cancelled: crate::engine::plan::runs_when_cancelled(s.condition.expr()),
            })
            .collect(),
    }
}

/// The dispatcher's handler in production: routes each delivery to the
/// workflows it starts and hands back the runs to create.
pub struct RoutingHandler {
    store: Arc<dyn RunStore>,
    workflows: Arc<WorkflowSet>,
    engine: Option<Engine>,
    default_estimate: Duration,
    loop_breaker: LoopBreaker,
}

/// What stops bots (taskmaster among them) from starting runs in a loop,
/// beyond routing's refusal of bot senders (which a trigger's `bots: true`
/// lifts): an event the App's own account caused never starts a run, and a
/// pull request or issue gets at most so many runs an hour.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoopBreaker {
    /// The App's own account (`<slug>[bot]`): its pushes, comments and
    /// labels start nothing, whatever the trigger says.
    pub own_login: Option<String>,
    /// Runs per pull request or issue in any hour at most (`0`: no limit;
    /// `--max-runs-per-subject-per-hour`).
    pub max_runs_per_subject_per_hour: u32,
}

const HOUR_MS: i64 = 60 * 60 * 1000;

impl LoopBreaker {
    /// Why `runs` (from `event`) must not start, or `None`. Reads the
    /// subject's runs of the last hour when limited.
    async fn refuse(
        &self,
        event: &Event,
        runs: &[NewRun],
        store: &dyn RunStore,
    ) -> Result<Option<String>, HandlerError> {
        if let (Some(own), Some(sender)) = (&self.own_login, event.sender())
            && sender.login.eq_ignore_ascii_case(own)
        {
            return Ok(Some(format!(
                "loop breaker: taskmaster's own account `{}` caused this event; its own pushes, \
                 comments and labels never start runs",
                sender.login
            )));
        }
        let max = i64::from(self.max_runs_per_subject_per_hour);
        let Some(first) = runs.first() else {
            return Ok(None);
        };
        let (Some(repository), Some(number)) = (&first.repository, first.subject_number) else {
            return Ok(None);
        };
        if max == 0 {
            return Ok(None);
        }
        let recent = store
            .subject_runs_since(repository, number, now_ms() - HOUR_MS)
            .await?;
        if recent + runs.len() as i64 > max {
            return Ok(Some(format!(
                "loop breaker: {repository}#{number} had {recent} runs in the last hour, and at \
                 most {max} may start in an hour (--max-runs-per-subject-per-hour); events on it \
                 start nothing until older runs age out"
            )));
        }
        Ok(None)
    }
}

impl RoutingHandler {
    /// A handler that wakes `engine` (when given) after runs are committed.
    pub fn new(
        store: Arc<dyn RunStore>,
        workflows: Arc<WorkflowSet>,
        engine: Option<Engine>,
    ) -> Self {
        Self {
            store,
            workflows,
            engine,
            default_estimate: super::EngineConfig::default().default_estimate,
            loop_breaker: LoopBreaker::default(),
        }
    }

    /// The same handler with `breaker` stopping bot loops.
    pub fn with_loop_breaker(mut self, breaker: LoopBreaker) -> Self {
        self.loop_breaker = breaker;
        self
    }
}

impl RoutingHandler {
    /// The workflows this handler routes to when given no other set.
    pub fn workflows(&self) -> &WorkflowSet {
        &self.workflows
    }

    /// Routes `delivery` against `set` (the loaded workflows, or a
    /// repository's overridden copy of them).
    ///
    /// # Errors
    /// A payload that does not parse (permanent), or the store.
    pub async fn route_with(
        &self,
        delivery: &Delivery,
        set: &WorkflowSet,
    ) -> Result<Handled, HandlerError> {
        let event = Event::parse(&delivery.event, &delivery.payload)
            .map_err(|e| HandlerError::Permanent(format!("the payload does not parse: {e}")))?;
        self.route_parsed(delivery, &event, set).await
    }

    /// As [`RoutingHandler::route_with`], for a delivery whose payload the
    /// caller has parsed already (`event`): a 22 KB payload costs tens of
    /// microseconds to parse.
    ///
    /// # Errors
    /// The store.
    pub async fn route_parsed(
        &self,
        delivery: &Delivery,
        event: &Event,
        set: &WorkflowSet,
    ) -> Result<Handled, HandlerError> {
        let decisions = route(event, set);
        let mut runs = Vec::new();
        let mut held = Vec::new();
        for d in decisions {
            if !d.start {
                held.push(format!("{}: {}", d.workflow, d.reason));
                continue;
            }
            let Some(wf) = set.get(&d.workflow) else {
                continue;
            };
            let forecast = match &self.engine {
                Some(engine) => engine.forecast(&wf.name).await?,
                None => {
                    Forecast::read(
                        &*self.store,
                        &wf.name,
                        HashMap::new(),
                        self.default_estimate,
                    )
                    .await?
                }
            };
            runs.push(new_run(
                set,
                wf,
                event,
                &delivery.delivery_id,
                &d.reason,
                d.classification,
                d.approval,
                &forecast,
            ));
        }
        if !runs.is_empty()
            && let Some(why) = self
                .loop_breaker
                .refuse(event, &runs, self.store.as_ref())
                .await?
        {
            crate::instrument::loop_broken();
            tracing::warn!(delivery = %delivery.delivery_id, %why, "runs not started");
            return Ok(Handled::Ignored(why));
        }
        if runs.is_empty() {
            let why = if held.is_empty() {
                format!("no workflow starts on {}", event.qualified_name())
            } else {
                format!("held back: {}", held.join("; "))
            };
            return Ok(Handled::Ignored(why));
        }
        tracing::info!(delivery = %delivery.delivery_id, runs = runs.len(), "starting runs");
        Ok(Handled::Start(runs))
    }
}

#[async_trait]
impl DeliveryHandler for RoutingHandler {
    async fn handle(&self, delivery: &Delivery) -> Result<Handled, HandlerError> {
        self.route_with(delivery, &self.workflows).await
    }

    async fn committed(&self) {
        if let Some(engine) = &self.engine {
            engine.wake();
        }
    }
}

impl Engine {
    /// Starts `workflow` on an event given directly (not through the inbox):
    /// `taskmaster run`, tests and benchmarks. The payload is stored as a
    /// delivery (state `done`) under `delivery_id`, so prompts render from it
    /// and the run is keyed by it: starting again with the same id returns
    /// the existing run (`created: false`).
    ///
    /// Errors: the workflow is unknown, the payload does not parse, or the
    /// store fails.
    pub async fn start_run(
        &self,
        workflow: &str,
        event_name: &str,
        payload: &[u8],
        delivery_id: &str,
    ) -> Result<CreatedRun, StartError> {
        let wf = self
            .inner
            .workflows
            .get(workflow)
            .ok_or_else(|| StartError::UnknownWorkflow(workflow.to_owned()))?;
        let event =
            Event::parse(event_name, payload).map_err(|e| StartError::Payload(e.to_string()))?;
        let store = &self.inner.store;
        store
            .insert_deliveries(&[NewDelivery {
                delivery_id: delivery_id.to_owned(),
                event: event_name.to_owned(),
                action: event.action().map(str::to_owned),
                hook_id: None,
                installation_id: event.installation_id(),
                repository: event.repository().map(|r| r.full_name.to_string()),
                sender_id: event.sender().map(|s| s.id),
                sender_login: event.sender().map(|s| s.login.clone()),
                payload: EncodedPayload::encode(bytes::Bytes::copy_from_slice(payload)),
                received_at: now_ms(),
                state: DeliveryState::Done,
            }])
            .await?;
        let forecast = self.forecast(workflow).await?;
        // The same classification routing would have stored with the run.
        let classification = route(&event, &self.inner.workflows)
            .into_iter()
            .find_map(|d| d.classification);
        let run = new_run(
            &self.inner.workflows,
            wf,
            &event,
            delivery_id,
            "started directly (taskmaster run)",
            classification,
            None,
            &forecast,
        );
        let created = store
            .create_runs(&[run])
            .await?
            .pop()
            .expect("one run in, one out");
        for old in &created.superseded {
            self.settle(*old).await?;
        }
        self.settle(created.run_id).await?;
        self.wake();
        Ok(created)
    }
}

/// Why [`Engine::start_run`] could not start a run.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// No loaded workflow has this name.
    #[error("no workflow named `{0}` is loaded (see `taskmaster validate`)")]
    UnknownWorkflow(String),
    /// The payload is not a valid event of the given name.
    #[error("the event payload does not parse: {0}")]
    Payload(String),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}
