//! `GET /api/metrics`: Prometheus text exposition (format 0.0.4).
//!
//! The answer is the process's recorded series (see [`crate::instrument`])
//! followed by levels read from the database and the engine at scrape time:
//!
//! | series | type | labels |
//! | --- | --- | --- |
//! | `taskmaster_inbox_depth` | gauge | `state` (`queued`, `processing`) |
//! | `taskmaster_inbox_oldest_queued_seconds` | gauge | — |
//! | `taskmaster_deliveries_stored` | gauge | `event`, `state` |
//! | `taskmaster_runs` | gauge | `workflow`, `state` |
//! | `taskmaster_run_duration_seconds_sum` / `_count` | gauge | `workflow` (finished runs) |
//! | `taskmaster_steps_active` | gauge | `workflow`, `state` (steps of active runs) |
//! | `taskmaster_outbox_depth` | gauge | `kind` (`effects`, `reports`) |
//! | `taskmaster_agent_circuit_state` | gauge | `agent`, `state` (1 for the current state) |
//! | `taskmaster_agent_in_flight` | gauge | `agent` |
//!
//! Public, or behind a token of any role when `TASKMASTER_METRICS_PUBLIC`
//! is false (Prometheus sends one with `authorization: { credentials_file }`).

use std::fmt::Write as _;

use axum::extract::State;
use axum::http::header;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};

use super::ApiState;
use super::auth::{Permission, allows, authenticate};
use super::error::{ApiResult, Problem};
use crate::engine::BreakerState;
use crate::store::now_ms;

/// The media type of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The Prometheus metrics of this service.
#[utoipa::path(get, operation_id = "get_metrics", path = "/api/metrics", tag = "service",
    responses(
        (status = 200, description = "Prometheus text format 0.0.4", body = String, content_type = "text/plain"),
        (status = 401, description = "No valid token (when metrics are not public)", body = Problem, content_type = "application/problem+json"),
    ),
    security((), ("bearer" = [])))]
pub async fn scrape(State(state): State<ApiState>, parts: Parts) -> ApiResult<Response> {
    if !state.metrics_public {
        let caller = authenticate(&parts, &state).await?;
        debug_assert!(allows(caller.role, Permission::Read));
    }
    let mut text = String::new();
    if let Some(handle) = crate::instrument::handle() {
        handle.run_upkeep();
        text.push_str(&handle.render());
    }
    append_levels(&state, &mut text).await?;
    Ok(([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response())
}

/// Escapes a label value (backslash, double quote, newline).
fn esc(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn family(out: &mut String, name: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} gauge");
}

async fn append_levels(state: &ApiState, out: &mut String) -> Result<(), Problem> {
    let store = &state.store;
    let depth = store.inbox_depth().await?;
    let counts = store.store_counts().await?;
    let stats = store.agent_attempt_stats(now_ms()).await?;

    family(
        out,
        "taskmaster_inbox_depth",
        "Deliveries waiting for or in the dispatcher.",
    );
    let _ = writeln!(
        out,
        "taskmaster_inbox_depth{{state=\"queued\"}} {}",
        depth.queued
    );
    let _ = writeln!(
        out,
        "taskmaster_inbox_depth{{state=\"processing\"}} {}",
        depth.processing
    );
    family(
        out,
        "taskmaster_inbox_oldest_queued_seconds",
        "Age of the oldest queued delivery (the dispatcher's lag); 0 when none is queued.",
    );
    let _ = writeln!(
        out,
        "taskmaster_inbox_oldest_queued_seconds {:.3}",
        depth
            .oldest_queued_at
            .map_or(0.0, |at| (now_ms() - at).max(0) as f64 / 1000.0)
    );

    let budgets = state.engine.budgets();
    if !budgets.is_empty() {
        let now = state.engine.now();
        let rows = store
            .spend_rows(crate::budget::month_start_day(now))
            .await?;
        let views = super::spend::budget_views(budgets, &rows, now);
        family(
            out,
            "taskmaster_budget_used_ratio",
            "Share of a period budget's dollars spent (budgets:), by scope and repository or installation.",
        );
        for v in views.iter().filter(|v| v.used.is_some()) {
            let _ = writeln!(
                out,
                "taskmaster_budget_used_ratio{{scope=\"{}\",key=\"{}\"}} {:.6}",
                v.scope,
                esc(&v.key),
                v.used.unwrap_or(0.0)
            );
        }
        family(
            out,
            "taskmaster_budget_remaining_usd",
            "Dollars left of a period budget (budgets:), by scope and repository or installation.",
        );
        for v in &views {
            if let Some(limit) = v.limit_usd {
                let _ = writeln!(
                    out,
                    "taskmaster_budget_remaining_usd{{scope=\"{}\",key=\"{}\"}} {:.6}",
                    v.scope,
                    esc(&v.key),
                    limit - v.spent_usd
                );
            }
        }
    }

    let size = store.database_size().await?;
    family(
        out,
        "taskmaster_database_bytes",
        "Bytes the database takes on disk; `free` of them in pages a vacuum can give back.",
    );
    let _ = writeln!(
        out,
        "taskmaster_database_bytes{{kind=\"total\"}} {}",
        size.bytes
    );
    let _ = writeln!(
        out,
        "taskmaster_database_bytes{{kind=\"free\"}} {}",
        size.free_bytes
    );

    family(
        out,
        "taskmaster_deliveries_stored",
        "Deliveries in the inbox by event and state.",
    );
    for (event, st, n) in &counts.deliveries {
        let _ = writeln!(
            out,
            "taskmaster_deliveries_stored{{event=\"{}\",state=\"{}\"}} {n}",
            esc(event),
            esc(st)
        );
    }

    family(out, "taskmaster_runs", "Runs by workflow and state.");
    for (wf, st, n) in &counts.runs {
        let _ = writeln!(
            out,
            "taskmaster_runs{{workflow=\"{}\",state=\"{}\"}} {n}",
            esc(wf),
            esc(st)
        );
    }

    family(
        out,
        "taskmaster_run_duration_seconds_sum",
        "Summed time from creation to outcome of finished runs, by workflow.",
    );
    for (wf, _, ms) in &counts.finished_runs {
        let _ = writeln!(
            out,
            "taskmaster_run_duration_seconds_sum{{workflow=\"{}\"}} {}",
            esc(wf),
            *ms as f64 / 1000.0
        );
    }
    family(
        out,
        "taskmaster_run_duration_seconds_count",
        "Finished runs, by workflow.",
    );
    for (wf, n, _) in &counts.finished_runs {
        let _ = writeln!(
            out,
            "taskmaster_run_duration_seconds_count{{workflow=\"{}\"}} {n}",
            esc(wf)
        );
    }

    family(
        out,
        "taskmaster_steps_active",
        "Steps of active runs by workflow and state (ready steps are the engine's queue).",
    );
    for (wf, st, n) in &counts.steps {
        let _ = writeln!(
            out,
            "taskmaster_steps_active{{workflow=\"{}\",state=\"{}\"}} {n}",
            esc(wf),
            esc(st)
        );
    }

    family(
        out,
        "taskmaster_outbox_depth",
        "GitHub effects waiting to be sent (effects) and runs whose state GitHub was not shown yet (reports).",
    );
    let _ = writeln!(
        out,
        "taskmaster_outbox_depth{{kind=\"effects\"}} {}",
        counts.effects_pending
    );
    let _ = writeln!(
        out,
        "taskmaster_outbox_depth{{kind=\"reports\"}} {}",
        counts.reports_pending
    );

    let agents = state.engine.inner.agents.names();
    family(
        out,
        "taskmaster_agent_circuit_state",
        "Circuit breaker of each agent: 1 for its current state.",
    );
    for name in &agents {
        let current = state.engine.inner.breakers.state(name);
        for (label, st) in [
            ("closed", BreakerState::Closed),
            ("half_open", BreakerState::HalfOpen),
            ("open", BreakerState::Open),
        ] {
            let _ = writeln!(
                out,
                "taskmaster_agent_circuit_state{{agent=\"{}\",state=\"{label}\"}} {}",
                esc(name),
                u8::from(current == st)
            );
        }
    }
    family(
        out,
        "taskmaster_agent_in_flight",
        "Attempts started and not finished, by agent.",
    );
    for name in &agents {
        let n = stats
            .iter()
            .find(|s| &s.agent == name)
            .map(|s| s.in_flight)
            .unwrap_or(0);
        let _ = writeln!(
            out,
            "taskmaster_agent_in_flight{{agent=\"{}\"}} {n}",
            esc(name)
        );
    }
    Ok(())
}
