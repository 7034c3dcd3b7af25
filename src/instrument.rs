//! The Prometheus series taskmaster records as things happen, and the one
//! recorder they go to.
//!
//! Two kinds of series reach `GET /api/metrics`:
//!
//! * **Events counted in this process** (this module): deliveries received,
//!   intake latency, step attempts and their durations, dispatch latency,
//!   the engine's decisions (retry, fallback, give up), agent errors, GitHub
//!   API answers and the rate limit left. They go through the `metrics`
//!   facade to one process-wide `metrics-exporter-prometheus` recorder,
//!   installed by [`handle`] on first use; before that, and in a process that
//!   never serves the API, recording is a no-op. Counters start at zero with
//!   each process, as Prometheus expects (`rate()` handles restarts).
//! * **Levels read from the database at scrape time** (`api::metrics`):
//!   inbox depth, runs by state, outbox depth, circuit state. Read fresh on
//!   every scrape, they are true after a restart and never drift.
//!
//! Label values are bounded: workflow, step and agent names come from the
//! loaded configuration, event names only from signed deliveries, GitHub
//! statuses are numbers. Nothing taken from an unauthenticated request
//! becomes a label.

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Deliveries answered, by `event` and `outcome` (`queued`, `ignored`,
/// `done`, `duplicate`, `rejected`, `unavailable`). Counter.
pub const DELIVERIES: &str = "taskmaster_deliveries_received_total";
/// Time from a webhook request's arrival to its answer (stored durably), by
/// `outcome`. Histogram, seconds.
pub const INTAKE_SECONDS: &str = "taskmaster_intake_duration_seconds";
/// Step attempts that ended, by `workflow`, `step`, `agent` and `outcome`
/// (`succeeded`, `failed`, `timed_out`, `cancelled`). Counter.
pub const ATTEMPTS: &str = "taskmaster_step_attempts_total";
/// How long attempts took, by `workflow`, `step` and `agent` (per agent:
/// the agent's latency). Histogram, seconds.
pub const ATTEMPT_SECONDS: &str = "taskmaster_step_attempt_duration_seconds";
/// Time from a step becoming due (`ready` and past its backoff) to a worker
/// claiming it, by `workflow`. Histogram, seconds.
pub const DISPATCH_SECONDS: &str = "taskmaster_step_dispatch_latency_seconds";
/// The engine's step decisions, by `decision` (`retry`, `fallback`,
/// `give_up`, `step_succeeded`, `step_cancelled`, `released`, …). Counter.
pub const DECISIONS: &str = "taskmaster_step_decisions_total";
/// Failed attempts by `agent`, `class` (`transient`, `permanent`) and `kind`.
/// Counter.
pub const AGENT_ERRORS: &str = "taskmaster_agent_errors_total";
/// Verdicts of validation steps by `workflow`, `step` and `verdict`
/// (`pass`, `fail`, `warn` — a `neutral` report is stored as `warn`). Counter.
pub const VERDICTS: &str = "taskmaster_verdicts_total";
/// GitHub API answers by HTTP `status`. Counter.
pub const GITHUB_REQUESTS: &str = "taskmaster_github_requests_total";
/// `x-ratelimit-remaining` of the latest GitHub answer that carried it. Gauge.
pub const GITHUB_RATE_REMAINING: &str = "taskmaster_github_rate_limit_remaining";

/// Connections closed to make room for newer ones, by `reason`
/// (`connection`: every slot was taken; `body_bytes`: the request-body
/// budget was spent). Counter.
pub const CONNECTIONS_CLOSED_FOR_ROOM: &str = "taskmaster_connections_closed_for_room_total";

/// Time to make a run's workspace (fetch into the mirror, check out).
/// Histogram, seconds.
pub const WORKSPACE_SECONDS: &str = "taskmaster_workspace_create_duration_seconds";

/// Histogram buckets, seconds: 5 ms to 1 h.
const BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
    1800.0, 3600.0,
];

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// The process-wide recorder, installed on first call. `None` when another
/// `metrics` recorder was installed first (an embedding program's): then
/// only the scrape-time series are served.
pub fn handle() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), BUCKETS)
                .expect("the bucket list is not empty");
            match builder.install_recorder() {
                Ok(handle) => Some(handle),
                Err(e) => {
                    tracing::warn!(error = %e, "another metrics recorder is installed; \
                        /api/metrics serves the database-derived series only");
                    None
                }
            }
        })
        .as_ref()
}

/// A run's workspace was made in `took`.
pub fn workspace_created(took: Duration) {
    metrics::histogram!(WORKSPACE_SECONDS).record(took.as_secs_f64());
}

/// The server closed its oldest slow reader(s) to make room (`reason`:
/// `connection` or `body_bytes`).
pub fn connection_closed_for_room(reason: &'static str) {
    metrics::counter!(CONNECTIONS_CLOSED_FOR_ROOM, "reason" => reason).increment(1);
}

/// A webhook delivery was answered (signature valid).
pub fn delivery(event: &str, outcome: &'static str, elapsed: Duration) {
    metrics::counter!(DELIVERIES, "event" => event.to_owned(), "outcome" => outcome).increment(1);
    metrics::histogram!(INTAKE_SECONDS, "outcome" => outcome).record(elapsed.as_secs_f64());
}

/// A webhook request was rejected before its event could be trusted (bad
/// signature, bad headers or body). The event is not a label: it is unsigned.
pub fn delivery_rejected(elapsed: Duration) {
    metrics::counter!(DELIVERIES, "event" => "", "outcome" => "rejected").increment(1);
    metrics::histogram!(INTAKE_SECONDS, "outcome" => "rejected").record(elapsed.as_secs_f64());
}

/// A step was claimed `waited` after it became due.
pub fn step_claimed(workflow: &str, waited: Duration) {
    metrics::histogram!(DISPATCH_SECONDS, "workflow" => workflow.to_owned())
        .record(waited.as_secs_f64());
}

/// An attempt ended.
pub fn attempt_finished(
    workflow: &str,
    step: &str,
    agent: &str,
    outcome: &str,
    duration_ms: i64,
    error: Option<(&str, &str)>,
) {
    metrics::counter!(ATTEMPTS, "workflow" => workflow.to_owned(), "step" => step.to_owned(),
        "agent" => agent.to_owned(), "outcome" => outcome.to_owned())
    .increment(1);
    metrics::histogram!(ATTEMPT_SECONDS, "workflow" => workflow.to_owned(),
        "step" => step.to_owned(), "agent" => agent.to_owned())
    .record(duration_ms.max(0) as f64 / 1000.0);
    if let Some((class, kind)) = error {
        metrics::counter!(AGENT_ERRORS, "agent" => agent.to_owned(), "class" => class.to_owned(),
            "kind" => kind.to_owned())
        .increment(1);
    }
}

/// An attempt cost `usd` (reported or estimated; see [`crate::budget`]):
/// `taskmaster_agent_cost_usd_total{agent,repository,workflow}`, a float
/// that only grows (exported as a gauge: the `metrics` crate's counters
/// count whole numbers).
pub fn attempt_cost(agent: &str, repository: &str, workflow: &str, usd: f64) {
    if usd > 0.0 {
        metrics::gauge!("taskmaster_agent_cost_usd_total", "agent" => agent.to_owned(),
            "repository" => repository.to_owned(), "workflow" => workflow.to_owned())
        .increment(usd);
    }
}

/// `adaptive_agents` started a step on its fallback `to` instead of its
/// failing agent `from`.
pub fn adaptive_fallback(from: &str, to: &str) {
    metrics::counter!("taskmaster_adaptive_fallback_total",
        "agent" => from.to_owned(), "fallback" => to.to_owned())
    .increment(1);
}

/// The loop breaker refused a delivery's runs.
pub fn loop_broken() {
    metrics::counter!("taskmaster_loop_breaker_total").increment(1);
}

/// A budget stopped a run (`scope`: its key under `budgets:`).
pub fn budget_exhausted(scope: &str) {
    metrics::counter!("taskmaster_budget_exhausted_total", "scope" => scope.to_owned())
        .increment(1);
}

/// A validation step's verdict was stored.
pub fn verdict(workflow: &str, step: &str, verdict: &str) {
    metrics::counter!(VERDICTS, "workflow" => workflow.to_owned(), "step" => step.to_owned(),
        "verdict" => verdict.to_owned())
    .increment(1);
}

/// The engine decided what follows a step (the timeline event kind).
pub fn step_decision(decision: &str) {
    metrics::counter!(DECISIONS, "decision" => decision.to_owned()).increment(1);
}

/// GitHub answered with `status`; `remaining` is its `x-ratelimit-remaining`.
pub fn github_answer(status: u16, remaining: Option<u64>) {
    metrics::counter!(GITHUB_REQUESTS, "status" => status.to_string()).increment(1);
    if let Some(r) = remaining {
        metrics::gauge!(GITHUB_RATE_REMAINING).set(r as f64);
    }
}
