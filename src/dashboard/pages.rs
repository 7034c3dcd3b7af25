//! The list pages (runs, agents, deliveries, tasks), the login, and the
//! POST handlers behind the dashboard's buttons.
//!
//! Buttons are plain HTML forms answered with `303 See Other` back to the
//! page, so they work without script and a reload never re-sends them.

use axum::Form;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{AppendHeaders, IntoResponse, Redirect, Response};
use maud::html;
use serde::Deserialize;

use super::DashboardState;
use super::layout::{self, Nav, badge, duration, time};
use super::session::{
    self, LOGIN_COOKIE, Operator, SESSION_COOKIE, SESSION_TTL_MS, Viewer, set_cookie,
};
use crate::api::auth::{Caller, hash_token};
use crate::api::workflows::{self, Control};
use crate::store::{DeliveryFilter, DeliveryState, RunFilter, RunState, TaskFilter, now_ms};

/// Rows per page of every list.
const PAGE: i64 = 50;

/// An error page with `status` and a sentence saying what to do.
pub fn error_page(status: StatusCode, message: &str) -> Response {
    let title = status.canonical_reason().unwrap_or("Error");
    layout::respond(
        status,
        layout::page(
            title,
            None,
            Nav::None,
            html! {
                h1 { (status.as_u16()) " " (title) }
                p.flash.error { (message) }
                p { a href="/runs" { "Back to the runs" } }
            },
        ),
    )
}

fn internal(e: impl std::fmt::Display) -> Response {
    tracing::error!(error = %e, "dashboard request failed");
    error_page(
        StatusCode::INTERNAL_SERVER_ERROR,
        "The database could not be read; the service log has the details.",
    )
}

/// Percent-encodes `s` for a query value.
pub fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// An empty form field is no filter.
fn given(v: &Option<String>) -> Option<&str> {
    v.as_deref().map(str::trim).filter(|s| !s.is_empty())
}

/// The first instant of a `YYYY-MM-DD` day (UTC), epoch ms.
fn day_start(day: &str) -> Option<i64> {
    let d = chrono::NaiveDate::parse_from_str(day, "%Y-%m-%d").ok()?;
    Some(d.and_hms_opt(0, 0, 0)?.and_utc().timestamp_millis())
}

/// `GET /`: the runs.
/// `GET /`: the runs, or the set-up page while no GitHub App is configured.
pub async fn home(State(state): State<DashboardState>) -> Redirect {
    if state.settings.setup_pending {
        Redirect::to("/setup")
    } else {
        Redirect::to("/runs")
    }
}

/// `GET /runs` query.
#[derive(Debug, Default, Deserialize)]
pub struct RunsQuery {
    repository: Option<String>,
    workflow: Option<String>,
    state: Option<String>,
    /// Created on or after this day (`YYYY-MM-DD`, UTC).
    from: Option<String>,
    /// Created on or before this day (`YYYY-MM-DD`, UTC).
    to: Option<String>,
    /// The last run id of the previous page.
    cursor: Option<String>,
    /// `1`: the live part alone.
    fragment: Option<String>,
}

const RUN_STATES: &[&str] = &[
    "queued",
    "running",
    "paused",
    "succeeded",
    "failed",
    "cancelled",
    "timed_out",
];

/// `GET /runs`: runs, newest first, filtered, a page at a time.
pub async fn runs(
    State(state): State<DashboardState>,
    Viewer(session): Viewer,
    Query(q): Query<RunsQuery>,
) -> Response {
    let run_state = match given(&q.state) {
        None => None,
        Some(s) => match RunState::parse(s) {
            Some(s) => Some(s),
            None => {
                return error_page(
                    StatusCode::BAD_REQUEST,
                    &format!("`{s}` is not a run state."),
                );
            }
        },
    };
    let mut days = [None, None];
    for (i, (name, v)) in [("from", &q.from), ("to", &q.to)].into_iter().enumerate() {
        if let Some(v) = given(v) {
            match day_start(v) {
                Some(ms) => days[i] = Some(ms),
                None => {
                    return error_page(
                        StatusCode::BAD_REQUEST,
                        &format!("`{name}` must be a day as YYYY-MM-DD, not `{v}`."),
                    );
                }
            }
        }
    }
    let before_id = given(&q.cursor).and_then(|c| c.parse::<i64>().ok());
    let filter = RunFilter {
        repository: given(&q.repository).map(str::to_owned),
        workflow: given(&q.workflow).map(str::to_owned),
        state: run_state,
        before_id,
        created_from: days[0],
        // Up to the end of the `to` day.
        created_before: days[1].map(|d| d + 24 * 3600 * 1000),
        limit: PAGE + 1,
    };
    let mut rows = match state.api.store.list_runs(&filter).await {
        Ok(r) => r,
        Err(e) => return internal(e),
    };
    let next = if rows.len() as i64 > PAGE {
        rows.truncate(PAGE as usize);
        rows.last().map(|r| r.id)
    } else {
        None
    };
    let mut query = String::new();
    for (k, v) in [
        ("repository", given(&q.repository)),
        ("workflow", given(&q.workflow)),
        ("state", given(&q.state)),
        ("from", given(&q.from)),
        ("to", given(&q.to)),
    ] {
        if let Some(v) = v {
            query.push_str(&format!("{k}={}&", url_encode(v)));
        }
    }
    let now = now_ms();
    let table = html! {
        @if rows.is_empty() {
            p #no-runs { "No runs match." }
        } @else {
            div.table-wrap {
                table #runs {
                    caption.sr-only { "Runs, newest first" }
                    thead { tr {
                        th scope="col" { "Run" } th scope="col" { "Workflow" }
                        th scope="col" { "Subject" } th scope="col" { "State" }
                        th scope="col" .hide-narrow { "Created" } th scope="col" .hide-narrow { "Took" }
                    } }
                    tbody {
                        @for r in &rows {
                            tr data-run=(r.id) data-state=(r.state.as_str()) {
                                td { a href={ "/runs/" (r.id) } { "#" (r.id) } }
                                td { (r.workflow) }
                                td {
                                    @if let Some(repo) = &r.repository { (repo) }
                                    @if let Some(n) = r.subject_number { " #" (n) }
                                    @if let Some(t) = r.context.pointer("/pr/title").or_else(|| r.context.pointer("/issue/title")).and_then(|v| v.as_str()) {
                                        br; span.meta { (t) }
                                    }
                                }
                                td { (badge(if r.waiting_approval { "waiting_approval" } else { r.state.as_str() })) }
                                td.hide-narrow { (time(r.created_at)) }
                                td.hide-narrow {
                                    @if let Some(s) = r.started_at { (duration(r.finished_at.unwrap_or(now) - s)) }
                                }
                            }
                        }
                    }
                }
            }
        }
        nav.pager aria-label="Pages" {
            @if before_id.is_some() { a href={ "/runs?" (query) } { "Newest" } }
            @if let Some(n) = next { a href={ "/runs?" (query) "cursor=" (n) } rel="next" { "Older runs" } }
        }
    };
    if q.fragment.as_deref() == Some("1") {
        return layout::respond(StatusCode::OK, table);
    }
    let workflows: Vec<String> = state
        .api
        .engine
        .workflows()
        .iter()
        .map(|w| w.name.clone())
        .collect();
    let selected = |a: Option<&str>, b: &str| a == Some(b);
    let content = html! {
        h1 { "Runs" }
        form.filters method="get" action="/runs" role="search" {
            label { "Repository" input type="text" name="repository" placeholder="owner/name" value=[given(&q.repository)]; }
            label { "Workflow"
                select name="workflow" {
                    option value="" { "any" }
                    @for w in &workflows { option value=(w) selected[selected(given(&q.workflow), w)] { (w) } }
                }
            }
            label { "State"
                select name="state" {
                    option value="" { "any" }
                    @for s in RUN_STATES { option value=(s) selected[selected(given(&q.state), s)] { (s.replace('_', " ")) } }
                }
            }
            label { "From" input type="date" name="from" value=[given(&q.from)]; }
            label { "To" input type="date" name="to" value=[given(&q.to)]; }
            button type="submit" { "Filter" }
        }
        div #live data-live data-events="/runs/events" data-fragment={ "/runs?" (query) (before_id.map(|b| format!("cursor={b}&")).unwrap_or_default()) "fragment=1" } {
            (table)
        }
    };
    layout::respond(
        StatusCode::OK,
        layout::page("Runs", session.as_ref(), Nav::Runs, content),
    )
}

/// A control form's fields.
#[derive(Debug, Deserialize)]
pub struct ControlForm {
    #[serde(default)]
    csrf: String,
    /// For `retry`: one step.
    step: Option<String>,
}

/// `POST /runs/{id}/{pause|resume|cancel|retry}`.
pub async fn control_run(
    state: &DashboardState,
    caller: &Caller,
    id: &str,
    op: &str,
    step: Option<&str>,
) -> Response {
    let op = match op {
        "pause" => Control::Pause,
        "resume" => Control::Resume,
        "cancel" => Control::Cancel,
        "retry" => Control::Retry,
        _ => return error_page(StatusCode::NOT_FOUND, "No such control."),
    };
    let Ok(id) = id.parse::<i64>() else {
        return error_page(StatusCode::NOT_FOUND, "No such run.");
    };
    match workflows::control(&state.api, caller, id, op, step).await {
        Ok(_) => Redirect::to(&format!("/runs/{id}")).into_response(),
        Err(p) => error_page(
            StatusCode::from_u16(p.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            &p.detail,
        ),
    }
}

/// `POST /runs/{id}/{op}`: a control button (operator role, CSRF token).
pub async fn control(
    State(state): State<DashboardState>,
    operator: Operator,
    Path((id, op)): Path<(String, String)>,
    Form(form): Form<ControlForm>,
) -> Response {
    if let Some(r) = operator.refuse_csrf(&state, &form.csrf) {
        return r;
    }
    let step = given(&form.step);
    control_run(&state, &operator.0.caller, &id, &op, step).await
}

/// `GET /agents`.
pub async fn agents(State(state): State<DashboardState>, Viewer(session): Viewer) -> Response {
    let agents = match crate::api::agents::agent_views(&state.api).await {
        Ok(a) => a,
        Err(p) => return error_page(StatusCode::INTERNAL_SERVER_ERROR, &p.detail),
    };
    let content = html! {
        h1 { "Agents" }
        div.table-wrap {
            table #agents {
                caption.sr-only { "Agents with health, circuit state and the last 24 hours" }
                thead { tr {
                    th scope="col" { "Agent" } th scope="col" { "Health" } th scope="col" { "Circuit" }
                    th scope="col" { "In flight" } th scope="col" { "Success (24 h)" }
                    th scope="col" { "Latency p50 / p90 / p99" }
                } }
                tbody {
                    @for a in &agents {
                        tr data-agent=(a.name) {
                            td { strong { (a.name) } br; span.meta { (a.kind) @if let Some(e) = &a.endpoint { " · " (e) } } }
                            td {
                                (badge(if a.health.reachable { "ok" } else { "down" }))
                                br; span.meta { (a.health.detail) " (" (a.health.latency_ms) " ms)" }
                            }
                            td { (badge(&a.circuit)) }
                            td { (a.in_flight) }
                            td {
                                @match a.success_rate {
                                    Some(r) => { (format!("{:.0} %", r * 100.0)) " of " (a.attempts_24h) },
                                    None => "no attempts",
                                }
                            }
                            td {
                                @for (i, p) in [a.latency_ms.p50, a.latency_ms.p90, a.latency_ms.p99].iter().enumerate() {
                                    @if i > 0 { " / " }
                                    @match p { Some(ms) => (duration(*ms)), None => "—" }
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    layout::respond(
        StatusCode::OK,
        layout::page("Agents", session.as_ref(), Nav::Agents, content),
    )
}

/// `GET /deliveries` query.
#[derive(Debug, Default, Deserialize)]
pub struct DeliveriesQuery {
    state: Option<String>,
    cursor: Option<String>,
    /// The delivery just put back in the queue, for the message.
    requeued: Option<String>,
}

/// `GET /deliveries`: the inbox, newest first.
pub async fn deliveries(
    State(state): State<DashboardState>,
    Viewer(session): Viewer,
    Query(q): Query<DeliveriesQuery>,
) -> Response {
    let filter_state = match given(&q.state) {
        None => None,
        Some(s) => match DeliveryState::parse(s) {
            Some(s) => Some(s),
            None => {
                return error_page(
                    StatusCode::BAD_REQUEST,
                    &format!("`{s}` is not a delivery state."),
                );
            }
        },
    };
    let before_id = given(&q.cursor).and_then(|c| c.parse::<i64>().ok());
    let mut rows = match state
        .api
        .store
        .list_deliveries(&DeliveryFilter {
            state: filter_state,
            before_id,
            limit: PAGE + 1,
        })
        .await
    {
        Ok(r) => r,
        Err(e) => return internal(e),
    };
    let next = if rows.len() as i64 > PAGE {
        rows.truncate(PAGE as usize);
        rows.last().map(|r| r.id)
    } else {
        None
    };
    let can = session.as_ref().filter(|s| s.can_control());
    let state_q = given(&q.state)
        .map(|s| format!("state={}&", url_encode(s)))
        .unwrap_or_default();
    let content = html! {
        h1 { "Deliveries" }
        @if let Some(id) = given(&q.requeued) {
            p.flash role="status" { "Delivery " code { (id) } " is queued again; the dispatcher handles it within a second." }
        }
        form.filters method="get" action="/deliveries" {
            label { "State"
                select name="state" {
                    option value="" { "any" }
                    @for s in ["queued", "processing", "done", "ignored", "failed"] {
                        option value=(s) selected[given(&q.state) == Some(s)] { (s) }
                    }
                }
            }
            button type="submit" { "Filter" }
        }
        p.meta { "Redeliver puts a failed or ignored delivery back in the local queue: it is handled again from its stored payload (runs and GitHub effects are keyed by delivery, so nothing is done twice). Deliveries GitHub could not send at all are asked for again automatically (with App credentials)." }
        div.table-wrap {
            table #deliveries {
                caption.sr-only { "Webhook deliveries, newest first" }
                thead { tr {
                    th scope="col" { "Received" } th scope="col" { "Event" } th scope="col" .hide-narrow { "Repository" }
                    th scope="col" { "State" } th scope="col" { "Error" } th scope="col" { span.sr-only { "Actions" } }
                } }
                tbody {
                    @for d in &rows {
                        tr data-delivery=(d.delivery_id) data-state=(d.state.as_str()) {
                            td { (time(d.received_at)) br; code.meta { (d.delivery_id) } }
                            td { (d.event) @if let Some(a) = &d.action { "." (a) } }
                            td.hide-narrow { (d.repository.as_deref().unwrap_or("")) @if let Some(s) = &d.sender_login { br; span.meta { "by " (s) } } }
                            td { (badge(d.state.as_str())) @if d.attempts > 1 { " " span.meta { (d.attempts) " tries" } } }
                            td { (d.error.as_deref().unwrap_or("")) }
                            td {
                                @if let Some(s) = can {
                                    @if matches!(d.state, DeliveryState::Failed | DeliveryState::Ignored) {
                                        form method="post" action={ "/deliveries/" (url_encode(&d.delivery_id)) "/redeliver" } {
                                            input type="hidden" name="csrf" value=(s.csrf);
                                            button type="submit" aria-label={ "Redeliver " (d.delivery_id) } { "Redeliver" }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        nav.pager aria-label="Pages" {
            @if before_id.is_some() { a href={ "/deliveries?" (state_q) } { "Newest" } }
            @if let Some(n) = next { a href={ "/deliveries?" (state_q) "cursor=" (n) } rel="next" { "Older deliveries" } }
        }
    };
    layout::respond(
        StatusCode::OK,
        layout::page("Deliveries", session.as_ref(), Nav::Deliveries, content),
    )
}

/// The CSRF field of a form.
#[derive(Debug, Deserialize)]
pub struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

/// `POST /deliveries/{id}/redeliver`: queue a failed or ignored delivery again.
pub async fn redeliver(
    State(state): State<DashboardState>,
    operator: Operator,
    Path(id): Path<String>,
    Form(form): Form<CsrfForm>,
) -> Response {
    if let Some(r) = operator.refuse_csrf(&state, &form.csrf) {
        return r;
    }
    let result = state.api.store.requeue_delivery(&id, now_ms()).await;
    let (outcome, answer) = match &result {
        Ok(Some(DeliveryState::Failed | DeliveryState::Ignored)) => ("ok", Ok(())),
        Ok(Some(s)) => (
            "refused",
            Err(error_page(
                StatusCode::CONFLICT,
                &format!(
                    "Delivery {id} is {s}: only failed or ignored deliveries are redelivered."
                ),
            )),
        ),
        Ok(None) => (
            "refused",
            Err(error_page(
                StatusCode::NOT_FOUND,
                &format!("There is no delivery {id}."),
            )),
        ),
        Err(e @ crate::store::StoreError::Pruned { .. }) => (
            "refused",
            Err(error_page(
                StatusCode::GONE,
                &format!("Delivery {id} cannot be redelivered: {e}."),
            )),
        ),
        Err(e) => ("error", Err(internal(e))),
    };
    if let Err(p) = crate::api::audit(
        &state.api,
        &operator.0.caller,
        "delivery.redeliver",
        Some(format!("delivery:{id}")),
        outcome,
        Some(serde_json::json!({ "via": "dashboard" })),
    )
    .await
    {
        return error_page(StatusCode::INTERNAL_SERVER_ERROR, &p.detail);
    }
    match answer {
        Ok(()) => {
            Redirect::to(&format!("/deliveries?requeued={}", url_encode(&id))).into_response()
        }
        Err(r) => r,
    }
}

/// `GET /tasks` query.
#[derive(Debug, Default, Deserialize)]
pub struct TasksQuery {
    cursor: Option<String>,
}

/// `GET /tasks`: classified tasks with their evidence.
pub async fn tasks(
    State(state): State<DashboardState>,
    Viewer(session): Viewer,
    Query(q): Query<TasksQuery>,
) -> Response {
    let before_id = given(&q.cursor).and_then(|c| c.parse::<i64>().ok());
    let mut rows = match state
        .api
        .store
        .tasks(&TaskFilter {
            before_id,
            limit: PAGE + 1,
            ..TaskFilter::default()
        })
        .await
    {
        Ok(r) => r,
        Err(e) => return internal(e),
    };
    let next = if rows.len() as i64 > PAGE {
        rows.truncate(PAGE as usize);
        rows.last().map(|r| r.id)
    } else {
        None
    };
    let field = |c: &serde_json::Value, k: &str| -> String {
        match c.get(k) {
            Some(serde_json::Value::String(s)) => s.replace('_', " "),
            Some(v) if !v.is_null() => v.to_string(),
            _ => "—".into(),
        }
    };
    let content = html! {
        h1 { "Tasks" }
        @if rows.is_empty() { p { "No tasks yet. Create them with " code { "POST /api/tasks" } "." } }
        @for t in &rows {
            @let c = &t.classification;
            article.task data-task=(t.id) {
                h2 { "Task " (t.id) ": " (t.title) }
                dl.meta {
                    dt { "State" } dd { (badge(t.state.as_str())) }
                    dt { "Type" } dd { (field(c, "task_type")) }
                    dt { "Priority" } dd { (field(c, "priority")) }
                    dt { "Complexity" } dd { (field(c, "complexity")) }
                    @if let Some(repo) = &t.repository { dt { "Repository" } dd { (repo) @if let Some(n) = t.subject_number { " #" (n) } } }
                    @if let Some(r) = t.run_id { dt { "Run" } dd { a href={ "/runs/" (r) } { "#" (r) } } }
                    dt { "Created" } dd { (time(t.created_at)) " by " (t.created_by) }
                }
                @if let Some(ev) = c.get("evidence").and_then(|e| e.as_array()).filter(|e| !e.is_empty()) {
                    details id={ "evidence-" (t.id) } {
                        summary { "Evidence (" (ev.len()) ")" }
                        ul {
                            @for e in ev {
                                li {
                                    strong { (e.get("field").and_then(|v| v.as_str()).unwrap_or("")) } ": "
                                    (e.get("reason").and_then(|v| v.as_str()).unwrap_or(""))
                                }
                            }
                        }
                    }
                }
            }
        }
        nav.pager aria-label="Pages" {
            @if before_id.is_some() { a href="/tasks" { "Newest" } }
            @if let Some(n) = next { a href={ "/tasks?cursor=" (n) } rel="next" { "Older tasks" } }
        }
    };
    layout::respond(
        StatusCode::OK,
        layout::page("Tasks", session.as_ref(), Nav::Tasks, content),
    )
}

/// `GET /login` query.
#[derive(Debug, Default, Deserialize)]
pub struct LoginQuery {
    next: Option<String>,
}

/// Only same-site paths are followed after login (no open redirect): a
/// path-only relative reference (RFC 3986 `path-absolute`, with a query)
/// of visible ASCII — starting with one `/`, never `//` or `/\\`, and no
/// control characters or spaces anywhere (browsers drop tabs and newlines
/// from URLs, so `/\t/evil.example` would become `//evil.example`).
/// Anything else goes to `/runs`.
pub fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(n)
            if n.starts_with('/')
                && !n.starts_with("//")
                && n.bytes().all(|b| b.is_ascii_graphic() && b != b'\\') =>
        {
            n.to_owned()
        }
        _ => "/runs".into(),
    }
}

fn login_page(
    state: &DashboardState,
    status: StatusCode,
    next: &str,
    error: Option<&str>,
) -> Response {
    let mut nonce = [0u8; 16];
    if getrandom::getrandom(&mut nonce).is_err() {
        return error_page(
            StatusCode::INTERNAL_SERVER_ERROR,
            "No randomness for a login form.",
        );
    }
    let nonce = hex::encode(nonce);
    let content = html! {
        h1 { "Log in" }
        @if let Some(e) = error { p.flash.error role="alert" { (e) } }
        @if state.sign_in.github.is_some() {
            p { a.button #github-sign-in href={ "/auth/github?next=" (super::signin::percent_encode(next)) } { "Sign in with GitHub" } }
            p.meta { "Or with an API token:" }
        }
        form.login method="post" action="/login" {
            input type="hidden" name="csrf" value=(state.key.login_csrf(&nonce));
            input type="hidden" name="next" value=(next);
            label for="token" { "API token" }
            input #token type="password" name="token" autocomplete="off" required placeholder="tm_…";
            p.meta { "Create one on the server with " code { "taskmaster token create --role operator" } ". It is not stored in your browser: the session cookie only refers to it, for 12 hours." }
            button type="submit" #login-submit { "Log in" }
        }
    };
    let mut r = layout::respond(status, layout::page("Log in", None, Nav::None, content));
    if let Ok(v) = set_cookie(LOGIN_COOKIE, &nonce, 600).parse() {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
    r
}

/// `GET /login`: the login form.
pub async fn login_form(
    State(state): State<DashboardState>,
    Query(q): Query<LoginQuery>,
) -> Response {
    login_page(&state, StatusCode::OK, &safe_next(q.next.as_deref()), None)
}

/// `POST /login` fields.
#[derive(Debug, Deserialize)]
pub struct LoginForm {
    #[serde(default)]
    token: String,
    #[serde(default)]
    csrf: String,
    next: Option<String>,
}

/// `POST /login`: checks the token and starts a session.
pub async fn login(
    State(state): State<DashboardState>,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Response {
    let next = safe_next(form.next.as_deref());
    let nonce = session::cookie(&headers, LOGIN_COOKIE).unwrap_or("");
    if !session::same_origin(&headers) || !state.key.check_login_csrf(nonce, &form.csrf) {
        return login_page(
            &state,
            StatusCode::FORBIDDEN,
            &next,
            Some("The login form expired or came from another site; try again."),
        );
    }
    let hash = hash_token(form.token.trim());
    let token = match state.api.store.api_token_by_hash(&hash).await {
        Ok(t) => t,
        Err(e) => return internal(e),
    };
    let Some(token) =
        token.filter(|t| t.revoked_at.is_none() && t.expires_at.is_none_or(|at| at > now_ms()))
    else {
        return login_page(
            &state,
            StatusCode::UNAUTHORIZED,
            &next,
            Some("That token is not valid (or was revoked, or expired)."),
        );
    };
    // The dashboard shows every repository's runs: a token scoped to some
    // repositories works with the API only.
    if token.repositories.is_some() {
        return login_page(
            &state,
            StatusCode::FORBIDDEN,
            &next,
            Some("That token is scoped to repositories; it works with the API, not the dashboard."),
        );
    }
    let caller = Caller {
        name: token.name.clone(),
        role: token.role,
        repositories: None,
    };
    if let Err(p) = crate::api::audit(
        &state.api,
        &caller,
        "dashboard.login",
        Some(format!("token:{}", token.name)),
        "ok",
        None,
    )
    .await
    {
        return error_page(StatusCode::INTERNAL_SERVER_ERROR, &p.detail);
    }
    let value = state.key.session_value(&hash, now_ms() + SESSION_TTL_MS);
    (
        AppendHeaders([
            (
                header::SET_COOKIE,
                set_cookie(SESSION_COOKIE, &value, SESSION_TTL_MS / 1000),
            ),
            (header::SET_COOKIE, set_cookie(LOGIN_COOKIE, "", 0)),
        ]),
        Redirect::to(&next),
    )
        .into_response()
}

/// `POST /logout`: ends the session (CSRF-checked, so no page can log you out).
pub async fn logout(
    State(state): State<DashboardState>,
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> Response {
    let value = session::cookie(&headers, SESSION_COOKIE).unwrap_or("");
    if !session::same_origin(&headers) || !state.key.check_csrf(value, &form.csrf) {
        return error_page(
            StatusCode::FORBIDDEN,
            "The form's CSRF token is missing or stale: reload the page and try again.",
        );
    }
    // Ended on the server too: the cookie, replayed, opens nothing.
    if let Some(expires) = session::SessionKey::session_expiry(value)
        && let Err(e) = state
            .api
            .store
            .end_session(session::session_signature(value), expires)
            .await
    {
        return error_page(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("Log out failed: {e}"),
        );
    }
    (
        AppendHeaders([(header::SET_COOKIE, set_cookie(SESSION_COOKIE, "", 0))]),
        Redirect::to("/login"),
    )
        .into_response()
}
