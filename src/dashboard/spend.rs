//! `GET /spend`: what agents cost, by repository, workflow and agent, per
//! day and month (UTC), and what is left of the budgets (see
//! [`crate::budget`]). The same figures as `GET /api/spend`.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use maud::{Markup, html};

use super::DashboardState;
use super::layout::{self, Nav};
use super::pages::error_page;
use super::session::Viewer;
use crate::budget::{day_number, month_start_day};

/// Days shown in the per-day table.
const DAYS: i64 = 31;

fn usd(v: f64) -> String {
    format!("${v:.2}")
}

/// `YYYY-MM-DD` of a day number.
fn date(day: i64) -> String {
    chrono::DateTime::<chrono::Utc>::from_timestamp(day * 86_400, 0)
        .map(|d| d.format("%Y-%m-%d").to_string())
        .unwrap_or_default()
}

/// A meter of `used` (0–1, more when over) with its text.
fn meter(used: f64) -> Markup {
    let shown = used.clamp(0.0, 1.0);
    html! {
        meter min="0" max="1" low="0.8" high="0.95" optimum="0" value=(format!("{shown:.3}")) {}
        " " (format!("{:.0} %", used * 100.0))
    }
}

/// `GET /spend`.
pub async fn page(State(state): State<DashboardState>, Viewer(session): Viewer) -> Response {
    let api = &state.api;
    let now = api.engine.now();
    let today = day_number(now);
    let month = month_start_day(now);
    let since = (today - (DAYS - 1)).min(month);
    let rows = match api.store.spend_rows(since).await {
        Ok(r) => r,
        Err(e) => return error_page(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    };
    let by_agent = match api.store.spend_by_workflow_agent(month * 86_400_000).await {
        Ok(r) => r,
        Err(e) => return error_page(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    };
    let budgets = crate::api::spend::budget_views(api.engine.budgets(), &rows, now);
    let mut per_day: BTreeMap<i64, (f64, i64)> = BTreeMap::new();
    let mut per_repo: BTreeMap<&str, (f64, f64, i64)> = BTreeMap::new();
    for r in &rows {
        if r.day > today - DAYS {
            let d = per_day.entry(r.day).or_default();
            d.0 += r.usd;
            d.1 += r.attempts;
        }
        let e = per_repo.entry(r.repository.as_str()).or_default();
        if r.day == today {
            e.0 += r.usd;
        }
        if r.day >= month {
            e.1 += r.usd;
            e.2 += r.attempts;
        }
    }
    let month_total: f64 = rows.iter().filter(|r| r.day >= month).map(|r| r.usd).sum();
    let content = html! {
        h1 { "Spend" }
        p { "This month (UTC, from " (date(month)) "): " strong { (usd(month_total)) } ". Costs are "
            "what agents reported, or estimates from their " code { "price:" } "." }
        h2 { "Budgets" }
        @if budgets.is_empty() {
            p.meta { "No budgets are set (" code { "budgets:" } " in the service configuration)." }
        } @else {
            div.table-wrap { table #budgets {
                caption.sr-only { "Budgets of periods and what was spent" }
                thead { tr { th scope="col" { "Budget" } th scope="col" { "For" } th scope="col" { "Spent" }
                    th scope="col" { "Limit" } th scope="col" { "Used" } th scope="col" { "Attempts" } } }
                tbody { @for b in &budgets {
                    tr data-scope=(b.scope) {
                        td { code { (b.scope) } }
                        td { @if b.key.is_empty() { "everything" } @else { (b.key) } }
                        td { (usd(b.spent_usd)) }
                        td { @match b.limit_usd { Some(l) => (usd(l)), None => "—" } }
                        td { @match b.used { Some(u) => (meter(u)), None => "—" } }
                        td { (b.attempts) @if let Some(l) = b.limit_attempts { " of " (l) } }
                    }
                } }
            } }
        }
        h2 { "By repository" }
        div.table-wrap { table #by-repository {
            caption.sr-only { "Spend by repository, today and this month" }
            thead { tr { th scope="col" { "Repository" } th scope="col" { "Today" }
                th scope="col" { "This month" } th scope="col" { "Attempts this month" } } }
            tbody { @for (repo, (day, month, attempts)) in &per_repo {
                tr { td { @if repo.is_empty() { "(none)" } @else { (repo) } }
                    td { (usd(*day)) } td { (usd(*month)) } td { (attempts) } }
            } }
        } }
        h2 { "By workflow and agent, this month" }
        div.table-wrap { table #by-agent {
            caption.sr-only { "Spend by workflow and agent this month" }
            thead { tr { th scope="col" { "Workflow" } th scope="col" { "Agent" } th scope="col" { "Cost" }
                th scope="col" { "Attempts" } th scope="col" { "Estimated" } th scope="col" { "Agent time" } } }
            tbody { @for a in &by_agent {
                tr { td { (a.workflow) } td { (a.agent) } td { (usd(a.usd)) } td { (a.attempts) }
                    td { (a.estimated) " of " (a.attempts) } td { (layout::duration(a.agent_ms)) } }
            } }
        } }
        h2 { "By day" }
        div.table-wrap { table #by-day {
            caption.sr-only { "Spend per day, the last 31 days" }
            thead { tr { th scope="col" { "Day (UTC)" } th scope="col" { "Cost" } th scope="col" { "Attempts" } } }
            tbody { @for (day, (cost, attempts)) in per_day.iter().rev() {
                tr { td { (date(*day)) } td { (usd(*cost)) } td { (attempts) } }
            } }
        } }
    };
    layout::respond(
        StatusCode::OK,
        layout::page("Spend", session.as_ref(), Nav::Spend, content),
    )
}
