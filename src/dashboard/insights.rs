//! `GET /insights`: what the history of runs says — per workflow,
//! repository, step and agent — with trend charts, advice and how far the
//! predicted run times can be trusted. The same figures as
//! `GET /api/insights` ([`crate::insights::report`]).

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use maud::{Markup, html};
use serde::Deserialize;

use super::DashboardState;
use super::layout::{self, Nav};
use super::pages::error_page;
use super::session::Viewer;
use crate::insights::{Durations, Report, RunGroup, chart, report};

/// `?days=&workflow=&repository=` (empty means all).
#[derive(Debug, Default, Deserialize)]
pub struct InsightsQuery {
    days: Option<i64>,
    workflow: Option<String>,
    repository: Option<String>,
}

fn share(v: Option<f64>) -> String {
    v.map(|v| format!("{:.0} %", v * 100.0))
        .unwrap_or_else(|| "—".into())
}

fn ms(v: Option<i64>) -> String {
    v.map(layout::duration).unwrap_or_else(|| "—".into())
}

fn p50_p90(d: &Durations) -> Markup {
    html! { (ms(d.p50_ms)) " / " (ms(d.p90_ms)) }
}

/// `YYYY-MM-DD` of a day number.
fn date(day: i64) -> String {
    chrono::DateTime::<chrono::Utc>::from_timestamp(day * 86_400, 0)
        .map(|d| d.format("%Y-%m-%d").to_string())
        .unwrap_or_default()
}

fn groups(id: &str, caption: &str, first: &str, rows: &[RunGroup]) -> Markup {
    html! {
        div.table-wrap { table id=(id) {
            caption.sr-only { (caption) }
            thead { tr {
                th scope="col" { (first) } th scope="col" { "Runs" } th scope="col" { "Success" }
                th scope="col" { "Superseded" } th scope="col" { "Duration p50 / p90" }
                th scope="col" { "Queue p50" } th scope="col" { "Work p50" } th scope="col" { "Cost" }
            } }
            tbody { @for g in rows {
                tr {
                    td { @if g.name.is_empty() { "(none)" } @else { (g.name) } }
                    td { (g.runs) } td { (share(g.success_rate)) } td { (g.superseded) }
                    td { (p50_p90(&g.duration)) } td { (ms(g.queue.p50_ms)) }
                    td { (ms(g.work.p50_ms)) } td { (format!("${:.2}", g.cost_usd)) }
                }
            } }
        } }
    }
}

/// `GET /insights`.
pub async fn page(
    State(state): State<DashboardState>,
    Viewer(session): Viewer,
    Query(q): Query<InsightsQuery>,
) -> Response {
    let api = &state.api;
    let days = q.days.unwrap_or(30).clamp(1, 90);
    let workflow = q.workflow.as_deref().filter(|w| !w.is_empty());
    let repository = q.repository.as_deref().filter(|r| !r.is_empty());
    let r = match report(
        &*api.store,
        api.engine.workflows(),
        api.engine.now(),
        days,
        workflow,
        repository,
    )
    .await
    {
        Ok(r) => r,
        Err(e) => return error_page(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    };
    layout::respond(
        StatusCode::OK,
        layout::page(
            "Insights",
            session.as_ref(),
            Nav::Insights,
            content(&r, &q, days),
        ),
    )
}

fn content(r: &Report, q: &InsightsQuery, days: i64) -> Markup {
    let a = &r.analytics;
    let labels: Vec<String> = a.days.iter().map(|d| date(d.day)).collect();
    let runs: Vec<f64> = a.days.iter().map(|d| d.runs as f64).collect();
    let success: Vec<f64> = a
        .days
        .iter()
        .map(|d| {
            if d.runs == 0 {
                0.0
            } else {
                d.succeeded as f64 / d.runs as f64
            }
        })
        .collect();
    let p50: Vec<f64> = a
        .days
        .iter()
        .map(|d| d.p50_ms.unwrap_or(0) as f64)
        .collect();
    let cost: Vec<f64> = a.days.iter().map(|d| d.cost_usd).collect();
    html! {
        h1 { "Insights" }
        form.filters method="get" action="/insights" {
            label { "Days " input type="number" name="days" min="1" max="90" value=(days); }
            label { "Workflow " input type="text" name="workflow" value=(q.workflow.clone().unwrap_or_default()); }
            label { "Repository " input type="text" name="repository" placeholder="owner/name"
                value=(q.repository.clone().unwrap_or_default()); }
            button type="submit" { "Show" }
        }
        p.meta { "The last " (days) " days: " (a.workflows.iter().map(|w| w.runs).sum::<usize>()) " runs"
            @if r.truncated { " (only the newest " (crate::insights::MAX_RUNS) " were read)" } "." }
        @if a.days.is_empty() {
            p { "No runs in this window yet: insights appear as runs finish." }
        } @else {
            section.charts aria-label="Trends" {
                figure { (chart::bars("Runs per day", &labels, &runs, |v| format!("{v:.0} runs")))
                    figcaption { "Runs per day" } }
                figure { (chart::line("Success rate per day", &labels, &success))
                    figcaption { "Success rate per day" } }
                figure { (chart::bars("p50 duration per day", &labels, &p50, |v| layout::duration(v as i64)))
                    figcaption { "p50 duration per day" } }
                figure { (chart::bars("Cost per day", &labels, &cost, |v| format!("${v:.2}")))
                    figcaption { "Cost per day" } }
            }
        }
        h2 { "Advice" }
        @if r.advice.is_empty() {
            p.meta { "Nothing to advise: no rule found enough evidence in this window." }
        } @else {
            ul #advice { @for advice in &r.advice {
                li data-rule=(advice.rule) {
                    strong { (advice.subject) } ": " (advice.finding) "."
                    br; "Change: " code { (advice.change) }
                    details { summary { "Evidence" }
                        dl { @for e in &advice.evidence { dt { (e.name) } dd { (e.value) } } } }
                }
            } }
        }
        h2 { "Workflows" }
        (groups("workflows", "Runs by workflow", "Workflow", &a.workflows))
        h2 { "Predictions" }
        p.meta { "Each run's expected time comes from its steps' history over its DAG; here, how "
            "the newest succeeded runs would have been predicted from the others." }
        div.table-wrap { table #accuracy {
            caption.sr-only { "Accuracy of predicted run times" }
            thead { tr { th scope="col" { "Workflow" } th scope="col" { "Runs checked" }
                th scope="col" { "Median error" } th scope="col" { "Within the p90" } } }
            tbody { @for acc in &r.accuracy {
                tr { td { (acc.workflow) } td { (acc.runs) } td { (share(acc.median_error)) }
                    td { (share(acc.p90_coverage)) } }
            } }
        } }
        h2 { "Steps" }
        div.table-wrap { table #steps {
            caption.sr-only { "Steps by workflow" }
            thead { tr {
                th scope="col" { "Step" } th scope="col" { "Runs" } th scope="col" { "Success" }
                th scope="col" { "p50 / p90" } th scope="col" { "Retried" } th scope="col" { "Fell back" }
                th scope="col" { "Rescued by" } th scope="col" { "Timeouts" } th scope="col" { "Flaky runs" }
                th scope="col" { "Cost" }
            } }
            tbody { @for s in &a.steps {
                tr {
                    td { (s.workflow) "/" (s.step) } td { (s.runs) } td { (share(s.success_rate)) }
                    td { (p50_p90(&s.duration)) } td { (share(s.retry_rate)) } td { (share(s.fallback_rate)) }
                    td { @for (agent, n) in &s.rescued_by { (agent) " ×" (n) " " } }
                    td { (s.timeouts) } td { (s.flaky_runs) } td { (format!("${:.2}", s.cost_usd)) }
                }
            } }
        } }
        h2 { "Agents" }
        div.table-wrap { table #agents {
            caption.sr-only { "Attempts by agent" }
            thead { tr { th scope="col" { "Agent" } th scope="col" { "Attempts" } th scope="col" { "Success" }
                th scope="col" { "p50 / p90" } th scope="col" { "Timeouts" } th scope="col" { "Unavailable" }
                th scope="col" { "Cost" } } }
            tbody { @for g in &a.agents {
                tr { td { (g.agent) } td { (g.attempts) } td { (share(g.success_rate)) }
                    td { (p50_p90(&g.duration)) } td { (g.timeouts) } td { (g.unavailable) }
                    td { (format!("${:.2}", g.cost_usd)) } }
            } }
        } }
        h2 { "Repositories" }
        (groups("repositories", "Runs by repository", "Repository", &a.repositories))
        h2 { "Errors that recur" }
        @if a.errors.is_empty() {
            p.meta { "No failure message recurred in this window." }
        } @else {
            div.table-wrap { table #errors {
                caption.sr-only { "Failure messages that recur, grouped" }
                thead { tr { th scope="col" { "Message" } th scope="col" { "Times" }
                    th scope="col" { "Steps" } th scope="col" { "Agents" } } }
                tbody { @for e in &a.errors {
                    tr { td { code { (e.pattern) } } td { (e.count) }
                        td { (e.steps.iter().cloned().collect::<Vec<_>>().join(", ")) }
                        td { (e.agents.iter().cloned().collect::<Vec<_>>().join(", ")) } }
                } }
            } }
        }
    }
}
