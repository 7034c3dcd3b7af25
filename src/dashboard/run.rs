//! `/runs/{id}`: one run — the check run's Details link.
//!
//! * the DAG as SVG: one box per step in columns by depth (a step stands one
//!   column right of its deepest need), its border the step's state, its
//!   left band the agent's colour;
//! * attempts on a time axis (Gantt): one row per step, one bar per attempt,
//!   coloured by outcome and labelled with the agent, so retries (several
//!   bars) and fallbacks (another agent's name) show at a glance;
//! * each step's output, redacted again on the way out, in `<details>`;
//! * the timeline, the engine's decisions (retry, fallback, give up, skip…)
//!   highlighted with their reasons;
//! * the controls the session may use.
//!
//! Everything below the heading is the *live part* (`/runs/{id}/live`),
//! which the page's script fetches again whenever the run's SSE stream
//! (`/runs/{id}/events`) reports a transition.

use crate::store::RunId;
use std::collections::HashMap;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use maud::{Markup, html};

use super::DashboardState;
use super::layout::{self, Nav, agent_colour, badge, duration, time};
use super::pages::error_page;
use super::session::{Session, Viewer};
use crate::redact::Redactor;
use crate::store::{AttemptRow, RunEvent, RunSnapshot, RunState, StepRecord, now_ms};

/// Output shown per step at most, bytes (the rest is cut, with a note).
const MAX_OUTPUT: usize = 64 * 1024;

/// Timeline kinds that are the engine's own decisions.
const DECISIONS: &[&str] = &[
    "retry",
    "fallback",
    "give_up",
    "wait_for_circuit",
    "step_skipped",
    "step_failed",
    "lease_expired",
    "released",
    "run_timed_out",
];

struct RunData {
    snap: RunSnapshot,
    attempts: Vec<AttemptRow>,
    events: Vec<RunEvent>,
    change: Option<crate::store::RunChange>,
}

async fn load(state: &DashboardState, id: &str) -> Result<RunData, Response> {
    let id: i64 = id
        .parse()
        .map_err(|_| error_page(StatusCode::NOT_FOUND, "No such run."))?;
    let store = &state.api.store;
    let internal = |e: crate::store::StoreError| {
        tracing::error!(error = %e, "dashboard: cannot read a run");
        error_page(
            StatusCode::INTERNAL_SERVER_ERROR,
            "The database could not be read; the service log has the details.",
        )
    };
    let snap = store
        .run(RunId(id))
        .await
        .map_err(internal)?
        .ok_or_else(|| error_page(StatusCode::NOT_FOUND, &format!("There is no run {id}.")))?;
    let attempts = store.attempts(RunId(id)).await.map_err(internal)?;
    let events = store.run_events(RunId(id)).await.map_err(internal)?;
    let change = store.run_change(RunId(id)).await.map_err(internal)?;
    Ok(RunData {
        snap,
        attempts,
        events,
        change,
    })
}

/// `GET /runs/{id}`.
pub async fn page(
    State(state): State<DashboardState>,
    Viewer(session): Viewer,
    Path(id): Path<String>,
) -> Response {
    let data = match load(&state, &id).await {
        Ok(d) => d,
        Err(r) => return r,
    };
    let run = &data.snap.run;
    let title = format!("Run {} · {}", run.id, run.workflow);
    let content = html! {
        h1 { "Run " (run.id) " · " (run.workflow) }
        div #live data-live
            data-events={ "/runs/" (run.id) "/events" }
            data-fragment={ "/runs/" (run.id) "/live" } {
            (live_part(&data, session.as_ref()))
        }
    };
    layout::respond(
        StatusCode::OK,
        layout::page(&title, session.as_ref(), Nav::Runs, content),
    )
}

/// `GET /runs/{id}/live`: the live part alone.
pub async fn fragment(
    State(state): State<DashboardState>,
    Viewer(session): Viewer,
    Path(id): Path<String>,
) -> Response {
    match load(&state, &id).await {
        Ok(data) => layout::respond(StatusCode::OK, live_part(&data, session.as_ref())),
        Err(r) => r,
    }
}

fn context_str<'a>(ctx: &'a serde_json::Value, path: &[&str]) -> Option<&'a str> {
    let mut v = ctx;
    for p in path {
        v = v.get(p)?;
    }
    v.as_str()
}

/// The GitHub page of the run's PR or issue, with its title.
fn subject(snap: &RunSnapshot) -> Option<(String, String)> {
    let run = &snap.run;
    let repo = run.repository.as_deref()?;
    let n = run.subject_number?;
    let ok = repo.split_once('/').is_some_and(|(o, r)| {
        let part = |s: &str| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        };
        part(o) && part(r)
    });
    if !ok {
        return None;
    }
    let is_pr = run.context.get("pr").is_some_and(|v| !v.is_null());
    let (kind, label) = if is_pr {
        ("pull", "PR")
    } else {
        ("issues", "Issue")
    };
    let title = context_str(&run.context, &["pr", "title"])
        .or_else(|| context_str(&run.context, &["issue", "title"]))
        .unwrap_or("");
    let text = if title.is_empty() {
        format!("{repo} {label} #{n}")
    } else {
        format!("{repo} {label} #{n}: {title}")
    };
    Some((format!("https://github.com/{repo}/{kind}/{n}"), text))
}

fn live_part(data: &RunData, session: Option<&Session>) -> Markup {
    let run = &data.snap.run;
    let shown_state = if run.waiting_approval {
        "waiting_approval"
    } else {
        run.state.as_str()
    };
    html! {
        p { "State: " span #run-state data-state=(shown_state) { (badge(shown_state)) } }
        @if let Some((url, text)) = subject(&data.snap) {
            p { a #subject href=(url) rel="noopener noreferrer" { (text) } }
        }
        dl.meta {
            @if let Some(repo) = &run.repository { dt { "Repository" } dd { (repo) } }
            dt { "Event" } dd { (run.event) }
            dt { "Created" } dd { (time(run.created_at)) }
            @if let Some(t) = run.started_at { dt { "Started" } dd { (time(t)) } }
            @if let Some(t) = run.finished_at {
                dt { "Finished" } dd { (time(t)) }
                dt { "Took" } dd { (duration(t - run.started_at.unwrap_or(run.created_at))) }
            }
            @if run.cost_usd > 0.0 { dt { "Cost" } dd { "$" (format!("{:.2}", run.cost_usd)) } }
            @if let Some(p) = crate::insights::predict::Prediction::of_context(&run.context) {
                dt { "Predicted" } dd #predicted title=(p.basis.describe()) { (p.describe()) }
            }
        }
        @if let Some(expected) = crate::engine::forecast::expected(&data.snap) {
            p.meta #expected { (expected) }
        }
        p.meta { "Why: " (run.reason) }
        @if let Some(c) = &run.conclusion { p.meta { "Conclusion: " (c) } }
        (controls(run.id.0, run.state, session))
        h2 #graph-heading { "Steps" }
        (legend(&data.snap.steps))
        div.graph { (dag(&data.snap.steps)) }
        div.table-wrap {
            table #steps aria-labelledby="graph-heading" {
                thead { tr { th { "Step" } th { "State" } th { "Agent" } th { "Attempts" } th { "Cost" } th.hide-narrow { "Needs" } } }
                tbody {
                    @for s in &data.snap.steps {
                        tr data-step=(s.step) data-state=(s.state.as_str()) {
                            td { (s.step) } td { (badge(s.state.as_str())) } td { (s.agent) }
                            td { (s.attempts) } td.cost { (step_cost(&data.attempts, &s.step)) }
                            td.hide-narrow { (s.needs.join(", ")) }
                        }
                    }
                }
            }
        }
        h2 { "Attempts" }
        @if data.attempts.is_empty() {
            p.meta { "No attempt has started yet." }
        } @else {
            div.graph { (gantt(data)) }
        }
        @if let Some(change) = &data.change {
            h2 #changes-heading { "Changes" }
            (changes(change))
        }
        @let verdicts = verdict_reports(&data.snap.steps);
        @if !verdicts.is_empty() {
            h2 #findings-heading { "Verdicts and findings" }
            (findings(run, &verdicts))
        }
        h2 { "Outputs" }
        (outputs(run.id.0, &data.snap.steps, session.filter(|s| s.can_control())))
        h2 { "Timeline" }
        (timeline(&data.events))
    }
}

fn controls(id: i64, state: RunState, session: Option<&Session>) -> Markup {
    let Some(s) = session.filter(|s| s.can_control()) else {
        return html! {
            @if session.is_none() {
                p.meta { a href={ "/login?next=/runs/" (id) } { "Log in" } " as an operator to pause, resume, cancel or retry this run." }
            }
        };
    };
    let mut ops: Vec<(&str, &str, bool)> = Vec::new();
    match state {
        RunState::Queued | RunState::Running => ops.push(("pause", "Pause", false)),
        RunState::Paused => ops.push(("resume", "Resume", false)),
        _ => {}
    }
    if state.is_terminal() {
        ops.push(("retry", "Retry", false));
    } else {
        ops.push(("cancel", "Cancel", true));
    }
    html! {
        div.controls role="group" aria-label="Run controls" {
            @for (op, label, danger) in ops {
                form method="post" action={ "/runs/" (id) "/" (op) } {
                    input type="hidden" name="csrf" value=(s.csrf);
                    @if danger { button.danger type="submit" #{ "btn-" (op) } { (label) } }
                    @else { button type="submit" #{ "btn-" (op) } { (label) } }
                }
            }
        }
    }
}

fn legend(steps: &[StepRecord]) -> Markup {
    let mut agents: Vec<&str> = steps.iter().map(|s| s.agent.as_str()).collect();
    agents.sort();
    agents.dedup();
    html! {
        p.legend {
            "Border: the step's state. Left band: its agent — "
            @for a in agents {
                span { span class={ "swatch sw" (agent_colour(a)) } aria-hidden="true" {} (a) }
            }
        }
    }
}

const NODE_W: i64 = 190;
const NODE_H: i64 = 52;
const COL_GAP: i64 = 60;
const ROW_GAP: i64 = 20;
const PAD: i64 = 12;

fn cut(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_owned()
    } else {
        let mut t: String = s.chars().take(n.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}

/// The DAG: columns by depth, rows in topological order within a column.
fn dag(steps: &[StepRecord]) -> Markup {
    let mut depth: HashMap<&str, i64> = HashMap::new();
    for s in steps {
        let d = s
            .needs
            .iter()
            .filter_map(|n| depth.get(n.as_str()))
            .max()
            .map_or(0, |d| d + 1);
        depth.insert(&s.step, d);
    }
    let mut rows: HashMap<i64, i64> = HashMap::new();
    let mut pos: HashMap<&str, (i64, i64)> = HashMap::new();
    for s in steps {
        let col = depth[s.step.as_str()];
        let row = rows.entry(col).or_insert(0);
        pos.insert(
            &s.step,
            (
                PAD + col * (NODE_W + COL_GAP),
                PAD + *row * (NODE_H + ROW_GAP),
            ),
        );
        *row += 1;
    }
    let width =
        PAD * 2 + (depth.values().max().copied().unwrap_or(0) + 1) * (NODE_W + COL_GAP) - COL_GAP;
    let height = PAD * 2 + rows.values().max().copied().unwrap_or(1) * (NODE_H + ROW_GAP) - ROW_GAP;
    let summary: Vec<String> = steps
        .iter()
        .map(|s| format!("{} {}", s.step, s.state.as_str()))
        .collect();
    html! {
        svg #dag xmlns="http://www.w3.org/2000/svg" role="img" width=(width) height=(height)
            viewBox={ "0 0 " (width) " " (height) }
            aria-label={ "Step graph: " (summary.join(", ")) } {
            @for s in steps {
                @for n in &s.needs {
                    @if let (Some((x1, y1)), Some((x2, y2))) = (pos.get(n.as_str()), pos.get(s.step.as_str())) {
                        @let (sx, sy, ex, ey) = (x1 + NODE_W, y1 + NODE_H / 2, *x2, y2 + NODE_H / 2);
                        path.edge d={ "M" (sx) " " (sy) " C" (sx + COL_GAP / 2) " " (sy) " " (ex - COL_GAP / 2) " " (ey) " " (ex) " " (ey) } {}
                    }
                }
            }
            @for s in steps {
                @let (x, y) = pos[s.step.as_str()];
                g class={ "node s-" (s.state.as_str()) } data-step=(s.step) data-state=(s.state.as_str()) data-agent=(s.agent) {
                    title { (s.step) ": " (s.state.as_str()) " on " (s.agent) " (" (s.attempts) " attempts)" }
                    rect.box x=(x) y=(y) width=(NODE_W) height=(NODE_H) rx="6" {}
                    rect class={ "band a" (agent_colour(&s.agent)) } x=(x + 2) y=(y + 2) width="8" height=(NODE_H - 4) rx="3" {}
                    text x=(x + 18) y=(y + 21) { (cut(&s.step, 22)) }
                    text.small x=(x + 18) y=(y + 40) { (s.state.as_str().replace('_', " ")) " · " (cut(&s.agent, 16)) }
                }
            }
        }
    }
}

const LABEL_W: i64 = 150;
const CHART_W: i64 = 760;
const BAR_H: i64 = 20;

/// What a step's attempts cost: `$0.12`, `≈ $0.12` when any of it is an
/// estimate (the agent reported no cost; see [`crate::budget`]), `—` when
/// nothing reported or priced a cost.
fn step_cost(attempts: &[AttemptRow], step: &str) -> String {
    let mine: Vec<&AttemptRow> = attempts.iter().filter(|a| a.step == step).collect();
    if mine.iter().all(|a| a.cost_usd.is_none()) {
        return "—".into();
    }
    let usd: f64 = mine.iter().filter_map(|a| a.cost_usd).sum();
    let estimated = mine
        .iter()
        .any(|a| a.cost_estimated && a.cost_usd.is_some());
    format!("{}${usd:.2}", if estimated { "≈ " } else { "" })
}

/// Attempts on a time axis: one row per step, one bar per attempt.
fn gantt(data: &RunData) -> Markup {
    let now = now_ms();
    let t0 = data
        .attempts
        .iter()
        .map(|a| a.started_at)
        .min()
        .unwrap_or(now);
    let t1 = data
        .attempts
        .iter()
        .map(|a| a.finished_at.unwrap_or(now))
        .max()
        .unwrap_or(now)
        .max(t0 + 1);
    let span = (t1 - t0) as f64;
    let order: Vec<&str> = data
        .snap
        .steps
        .iter()
        .map(|s| s.step.as_str())
        .filter(|s| data.attempts.iter().any(|a| a.step == *s))
        .collect();
    let height = (order.len() as i64) * (BAR_H + 10) + 36;
    let width = LABEL_W + CHART_W + 120;
    let x_of = |t: i64| LABEL_W + (((t - t0) as f64 / span) * CHART_W as f64) as i64;
    html! {
        svg #gantt xmlns="http://www.w3.org/2000/svg" role="img" width=(width) height=(height)
            viewBox={ "0 0 " (width) " " (height) }
            aria-label={ (data.attempts.len()) " attempts over " (duration(t1 - t0)) } {
            line.axis x1=(LABEL_W) y1=(height - 22) x2=(LABEL_W + CHART_W) y2=(height - 22) {}
            text.small x=(LABEL_W) y=(height - 6) { "0" }
            text.small x=(LABEL_W + CHART_W - 60) y=(height - 6) { "+" (duration(t1 - t0)) }
            @for (i, step) in order.iter().enumerate() {
                @let y = 6 + (i as i64) * (BAR_H + 10);
                text x="4" y=(y + 15) { (cut(step, 20)) }
                @for a in data.attempts.iter().filter(|a| a.step == *step) {
                    @let outcome = a.outcome.map_or("running", |o| o.as_str());
                    @let x = x_of(a.started_at);
                    @let w = (x_of(a.finished_at.unwrap_or(now)) - x).max(3);
                    g.attempt data-step=(a.step) data-number=(a.number) data-agent=(a.agent) data-outcome=(outcome) {
                        title {
                            (a.step) " attempt " (a.number) " on " (a.agent) ": " (outcome)
                            @if let Some(d) = a.duration_ms { " after " (duration(d)) }
                            @if let Some(c) = a.cost_usd {
                                ", " @if a.cost_estimated { "about " } "$" (format!("{c:.4}"))
                            }
                            @if let Some(e) = &a.error { " — " (cut(e, 200)) }
                        }
                        rect class={ "bar o-" (outcome) } x=(x) y=(y) width=(w) height=(BAR_H) rx="3" {}
                        text.small x=(x + w + 4) y=(y + 15) { "#" (a.number) " " (cut(&a.agent, 14)) }
                    }
                }
            }
        }
    }
}

/// Each step's output and error, with a button to retry a step that
/// failed, was cancelled or timed out (with its dependents).
fn outputs(run_id: i64, steps: &[StepRecord], operator: Option<&Session>) -> Markup {
    let redactor = Redactor::default();
    html! {
        @for s in steps {
            details id={ "out-" (s.step) } {
                summary { (s.step) " — " (s.state.as_str().replace('_', " "))
                    @if s.output.is_none() && s.error.is_none() { " (no output)" } }
                @if let Some(op) = operator {
                    @if matches!(s.state.as_str(), "failed" | "cancelled" | "timed_out") {
                        form method="post" action={ "/runs/" (run_id) "/retry" } {
                            input type="hidden" name="csrf" value=(op.csrf);
                            input type="hidden" name="step" value=(s.step);
                            button type="submit" { "Retry " (s.step) " and what needs it" }
                        }
                    }
                }
                @if let Some(e) = &s.error {
                    p { strong { "Error: " } (redactor.redact(e)) }
                }
                @if let Some(o) = &s.output {
                    @let o = redactor.redact(o);
                    @if o.len() > MAX_OUTPUT {
                        pre { (o[..o.floor_char_boundary(MAX_OUTPUT)]) }
                        p.meta { "… cut at 64 KB of " (o.len()) " bytes." }
                    } @else {
                        pre { (o) }
                    }
                }
            }
        }
    }
}

/// The verdict reports of the run's succeeded steps, by step.
fn verdict_reports(steps: &[StepRecord]) -> Vec<(String, crate::verdict::VerdictReport)> {
    steps
        .iter()
        .filter(|s| {
            matches!(
                s.state,
                crate::store::StepState::Succeeded | crate::store::StepState::Failed
            )
        })
        .filter_map(|s| {
            let report = crate::verdict::parse(s.output.as_deref()?).ok()?;
            Some((s.step.clone(), report))
        })
        .collect()
}

/// Each verdict and its findings, linked to the lines on GitHub (at the
/// commit the run checked out) when the run names its repository.
fn findings(
    run: &crate::store::Run,
    verdicts: &[(String, crate::verdict::VerdictReport)],
) -> Markup {
    let redactor = Redactor::default();
    let sha = run.checkout_sha.as_deref().or(run.head_sha.as_deref());
    let link = |f: &crate::verdict::Finding| -> Option<String> {
        let repo = run.repository.as_ref()?;
        let sha = sha.filter(|s| s.len() == 40 && s.chars().all(|c| c.is_ascii_hexdigit()))?;
        let path: String = f
            .path
            .split('/')
            .map(|seg| {
                seg.bytes()
                    .map(|b| {
                        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                            (b as char).to_string()
                        } else {
                            format!("%{b:02X}")
                        }
                    })
                    .collect::<String>()
            })
            .collect::<Vec<_>>()
            .join("/");
        Some(format!(
            "https://github.com/{repo}/blob/{sha}/{path}#L{}-L{}",
            f.start_line, f.end_line
        ))
    };
    html! {
        div #findings {
            @for (step, report) in verdicts {
                h3 data-step=(step) data-verdict=(report.verdict.as_str()) {
                    (step) " — " (badge(report.verdict.as_str()))
                }
                p { (redactor.redact(&report.summary)) }
                @if !report.findings.is_empty() {
                    ul {
                        @for f in &report.findings {
                            li data-severity=(serde_json::to_value(f.severity).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()) {
                                @match link(f) {
                                    Some(url) => a href=(url) rel="noopener noreferrer" {
                                        code { (f.path) ":" (f.start_line) }
                                    },
                                    None => code { (f.path) ":" (f.start_line) },
                                }
                                " " strong { (redactor.redact(&f.title)) } " — " (redactor.redact(&f.message))
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The run's change: where it went (or why not), the files, and the diff.
fn changes(change: &crate::store::RunChange) -> Markup {
    let redactor = Redactor::default();
    let c = &change.change;
    let p = &change.publication;
    html! {
        div #changes data-state=(change.state.as_str()) {
            @if let Some(text) = crate::publish::describe(change) {
                p { (redactor.redact(&text)) }
            }
            @if let Some(pr) = &p.pull_request {
                p { a #change-pr href=(pr.html_url) rel="noopener noreferrer" {
                    "Pull request #" (pr.number) @if pr.draft { " (draft)" } } }
            }
            @if let Some(note) = &p.note { p.meta { (note) } }
            @if !c.files.is_empty() {
                div.table-wrap {
                    table aria-labelledby="changes-heading" {
                        thead { tr { th { "File" } th { "Change" } th { "+" } th { "−" } } }
                        tbody {
                            @for f in &c.files {
                                tr {
                                    td { code { (f.path) } }
                                    td { (serde_json::to_value(f.status).ok().and_then(|v| v.as_str().map(|s| s.replace('_', " "))).unwrap_or_default())
                                         @if f.new_mode.as_deref() == Some("120000") { " (symlink)" } }
                                    td { @if f.binary { "binary" } @else { (f.additions) } }
                                    td { @if f.binary { "" } @else { (f.deletions) } }
                                }
                            }
                        }
                    }
                }
                details {
                    summary { "Diff" @if c.diff_truncated { " (cut)" } }
                    pre { (redactor.redact(&c.diff)) }
                }
            }
        }
    }
}

fn timeline(events: &[RunEvent]) -> Markup {
    html! {
        ol.timeline #timeline {
            @for e in events {
                @let decision = DECISIONS.contains(&e.kind.as_str());
                li class=[decision.then_some("decision")] data-kind=(e.kind) {
                    (time(e.at)) " "
                    span.kind { (e.kind.replace('_', " ")) }
                    @if let Some(s) = &e.step { " · " (s) }
                    @if !e.detail.is_empty() { " — " (e.detail) }
                }
            }
        }
    }
}
