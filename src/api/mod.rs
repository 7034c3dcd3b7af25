//! The operator API: JSON over HTTP under `/api/`, described by an OpenAPI
//! 3.1 document generated from this code (`GET /api/openapi.json`).
//!
//! * [`workflows`] — start runs, list and read them, pause, resume, cancel, retry;
//! * [`tasks`] — classified units of work; [`validations`] — verdicts with evidence;
//! * [`agents`] — each agent's health, circuit and track record;
//! * [`metrics`] — Prometheus; `GET /api/health` — liveness and inbox depth; `GET /api/ready` — readiness;
//! * [`tokens`] — API tokens and the audit log (admin).
//!
//! Every endpoint but `/api/health`, `/api/ready`, `/api/openapi.json` (and `/api/metrics`
//! when public) needs a bearer token whose role allows it ([`auth`]); every
//! call that changes something is written to the audit log with the token's
//! name. Errors are `application/problem+json` ([`error`]). Lists are pages
//! of at most 200, newest first, continued with `cursor`.
//!
//! The routes and the OpenAPI document come from one list ([`routes`]), so
//! a route cannot ship undocumented.

pub mod agents;
pub mod auth;
pub mod error;
pub mod insights;
pub mod metrics;
pub mod spend;
pub mod tasks;
pub mod tokens;
pub mod validations;
pub mod workflows;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::engine::Engine;
use crate::store::{AuditEntry, InboxDepth, RunStore, Store, now_ms};
use auth::{Caller, UsageClock};
use error::Problem;

/// How long the health check waits for the database.
const HEALTH_DEADLINE: Duration = Duration::from_secs(2);

/// The body of `GET /api/health`.
#[derive(Debug, Serialize, serde::Deserialize, PartialEq, Eq, ToSchema)]
pub struct Health {
    /// `ok` or `unavailable`.
    pub status: String,
    /// The crate version.
    pub version: String,
    /// `ok`, or the database error.
    pub database: String,
    /// Deliveries waiting for or in the dispatcher; absent when the database is down.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inbox: Option<InboxDepthBody>,
}

/// Inbox depth as reported by the health check.
#[derive(Debug, Serialize, serde::Deserialize, PartialEq, Eq, ToSchema)]
pub struct InboxDepthBody {
    pub queued: i64,
    pub processing: i64,
    /// Age of the oldest queued delivery in milliseconds (the dispatcher's
    /// lag); 0 when nothing is queued.
    #[serde(default)]
    pub oldest_queued_ms: i64,
}

impl From<InboxDepth> for InboxDepthBody {
    fn from(d: InboxDepth) -> Self {
        InboxDepthBody {
            queued: d.queued,
            processing: d.processing,
            oldest_queued_ms: d.oldest_queued_at.map_or(0, |at| (now_ms() - at).max(0)),
        }
    }
}

/// The health check alone, for a service without the engine (intake tests).
/// [`service`] serves it too, with the rest of the API.
pub fn router(store: Arc<dyn Store>) -> Router {
    Router::new()
        .route("/api/health", get(health))
        .with_state(store)
}

/// What the API's handlers share.
#[derive(Clone)]
pub struct ApiState {
    /// The store (the engine's).
    pub store: Arc<dyn RunStore>,
    /// The engine: runs are started and controlled through it.
    pub engine: Engine,
    /// When false, `GET /api/metrics` needs a token (any role).
    pub metrics_public: bool,
    /// GitHub, to check what callers say about pull requests (their head
    /// commit); `None` or dry run: not checked (nothing is sent to GitHub
    /// then either).
    pub github: Option<Arc<dyn crate::github::GitHub>>,
    usage: Arc<UsageClock>,
}

impl ApiState {
    /// The API's state over `engine` (and its store).
    pub fn new(engine: Engine, metrics_public: bool) -> Self {
        ApiState {
            store: engine.store().clone(),
            engine,
            metrics_public,
            github: None,
            usage: Arc::new(UsageClock::default()),
        }
    }

    /// Checks pull requests' head commits with `github`.
    pub fn with_github(mut self, github: Arc<dyn crate::github::GitHub>) -> Self {
        self.github = Some(github);
        self
    }
}

/// The whole API with its state: merge it into the service's router.
/// Unknown paths and methods answer 404 / 405 as problems.
pub fn service(state: ApiState) -> Router {
    let (router, _) = routes().split_for_parts();
    router
        .with_state(state)
        .fallback(error::no_route)
        .method_not_allowed_fallback(error::no_method)
}

/// Every route with its OpenAPI description.
pub fn routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(health_check))
        .routes(routes!(ready_check))
        .routes(routes!(openapi_json))
        .routes(routes!(metrics::scrape))
        .routes(routes!(workflows::execute))
        .routes(routes!(workflows::list))
        .routes(routes!(workflows::get, workflows::cancel))
        .routes(routes!(workflows::pause))
        .routes(routes!(workflows::resume))
        .routes(routes!(workflows::retry))
        .routes(routes!(tasks::list, tasks::create))
        .routes(routes!(tasks::update))
        .routes(routes!(tasks::workflow))
        .routes(routes!(validations::list, validations::create))
        .routes(routes!(validations::get))
        .routes(routes!(agents::list))
        .routes(routes!(spend::get))
        .routes(routes!(insights::get))
        .routes(routes!(tokens::list, tokens::create))
        .routes(routes!(tokens::revoke))
        .routes(routes!(tokens::audit_log))
}

/// Whole numbers in request bodies as JSON Schema reads `integer`: `334`
/// and `334.0` alike (a number with no fraction), nothing else.
pub(crate) mod whole {
    use serde::{Deserialize, Deserializer, de::Error};

    /// An optional signed whole number.
    pub fn opt_i64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
        let Some(n) = Option::<serde_json::Number>::deserialize(d)? else {
            return Ok(None);
        };
        if let Some(i) = n.as_i64() {
            return Ok(Some(i));
        }
        match n.as_f64() {
            Some(f) if f.fract() == 0.0 && f >= i64::MIN as f64 && f < i64::MAX as f64 => {
                Ok(Some(f as i64))
            }
            _ => Err(D::Error::custom(format!(
                "{n} is not a whole number in range"
            ))),
        }
    }

    /// An optional unsigned whole number.
    pub fn opt_u64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
        let Some(n) = Option::<serde_json::Number>::deserialize(d)? else {
            return Ok(None);
        };
        if let Some(u) = n.as_u64() {
            return Ok(Some(u));
        }
        match n.as_f64() {
            Some(f) if f.fract() == 0.0 && f >= 0.0 && f < u64::MAX as f64 => Ok(Some(f as u64)),
            _ => Err(D::Error::custom(format!(
                "{n} is not a whole number in range"
            ))),
        }
    }
}

/// A pull request's or issue's number as stored: 1 to `i64::MAX`.
///
/// # Errors
/// 400 for 0 or a number past `i64::MAX` (it would wrap to a negative one).
pub(crate) fn subject_number(n: u64) -> Result<i64, Problem> {
    i64::try_from(n)
        .ok()
        .filter(|n| *n >= 1)
        .ok_or_else(|| Problem::bad_request(format!("numbers are 1 to {}, not {n}", i64::MAX)))
}

/// The OpenAPI 3.1 document of the API, as served: the routes' document
/// with the verdict report's JSON Schema (`schemas/verdict.schema.json`,
/// [`crate::verdict::SCHEMA`]) as `components.schemas.VerdictReport`
/// (OpenAPI 3.1 schemas are JSON Schema 2020-12, so it goes in as it is,
/// without `$schema` and `$id`).
pub fn openapi() -> serde_json::Value {
    let mut doc = serde_json::to_value(routes().split_for_parts().1).unwrap_or_default();
    let mut verdict: serde_json::Value =
        serde_json::from_str(crate::verdict::SCHEMA).unwrap_or_default();
    if let Some(v) = verdict.as_object_mut() {
        v.remove("$schema");
        v.remove("$id");
    }
    if let Some(schemas) = doc
        .pointer_mut("/components/schemas")
        .and_then(|s| s.as_object_mut())
    {
        schemas.insert("VerdictReport".into(), verdict);
    }
    contract(&mut doc);
    doc
}

/// What the handlers enforce, written into the document so it describes
/// the server exactly (a schema-driven fuzzer checks one against the
/// other): every operation with parameters or a body may answer 400, one
/// with a body 415; path ids are 64-bit; page sizes are 1-200; names of
/// states, kinds, verdicts and roles are their enums; repositories are
/// `owner/name`; texts that must say something are not blank.
fn contract(doc: &mut serde_json::Value) {
    use serde_json::json;
    let problem = |what: &str| {
        json!({ "description": what,
                "content": { "application/problem+json": {
                    "schema": { "$ref": "#/components/schemas/Problem" } } } })
    };
    let names = |all: Vec<&str>| json!(all);
    let run_states = names(
        crate::store::RunState::ALL
            .iter()
            .map(|s| s.as_str())
            .collect(),
    );
    let task_states = names(
        crate::store::TaskState::ALL
            .iter()
            .map(|s| s.as_str())
            .collect(),
    );
    let kinds = names(
        crate::store::ValidationKind::ALL
            .iter()
            .map(|s| s.as_str())
            .collect(),
    );
    let verdicts = names(
        crate::store::Verdict::ALL
            .iter()
            .map(|s| s.as_str())
            .collect(),
    );
    let roles = names(crate::store::Role::ALL.iter().map(|s| s.as_str()).collect());
    let repository = json!("^[A-Za-z0-9_.-]{1,100}/[A-Za-z0-9_.-]{1,100}$");
    if let Some(paths) = doc.get_mut("paths").and_then(|p| p.as_object_mut()) {
        for (path, item) in paths.iter_mut() {
            let Some(item) = item.as_object_mut() else {
                continue;
            };
            for (_, op) in item.iter_mut() {
                let has_body = op.get("requestBody").is_some();
                let mut has_params = false;
                if let Some(params) = op.get_mut("parameters").and_then(|p| p.as_array_mut()) {
                    for param in params.iter_mut() {
                        has_params = true;
                        let name = param["name"].as_str().unwrap_or("").to_owned();
                        let place = param["in"].as_str().unwrap_or("").to_owned();
                        let schema = &mut param["schema"];
                        match (place.as_str(), name.as_str()) {
                            ("path", "id") => {
                                schema["minimum"] = json!(i64::MIN);
                                schema["maximum"] = json!(i64::MAX);
                            }
                            ("query", "limit") => {
                                schema["minimum"] = json!(1);
                                schema["maximum"] = json!(200);
                            }
                            ("query", "number" | "run_id") => {
                                schema["minimum"] = json!(i64::MIN);
                                schema["maximum"] = json!(i64::MAX);
                            }
                            ("query", "cursor") => {
                                schema["pattern"] = json!("^([1-9][0-9]{0,17})?$");
                            }
                            ("query", "state") if path.starts_with("/api/tasks") => {
                                schema["enum"] = task_states.clone();
                            }
                            ("query", "state") => schema["enum"] = run_states.clone(),
                            ("query", "kind") => schema["enum"] = kinds.clone(),
                            ("query", "verdict") => schema["enum"] = verdicts.clone(),
                            _ => {}
                        }
                    }
                }
                let Some(responses) = op.get_mut("responses").and_then(|r| r.as_object_mut())
                else {
                    continue;
                };
                // Any token may lack the role or the repository.
                if responses.contains_key("401") {
                    responses.entry("403").or_insert_with(|| {
                        problem("The token's role or repositories do not allow this")
                    });
                }
                if has_params || has_body {
                    responses
                        .entry("400")
                        .or_insert_with(|| problem("A parameter or the body is invalid"));
                }
                if has_body {
                    responses.entry("415").or_insert_with(|| {
                        problem("The body is not JSON (`Content-Type: application/json`)")
                    });
                }
            }
        }
    }
    if let Some(schemas) = doc
        .pointer_mut("/components/schemas")
        .and_then(|s| s.as_object_mut())
    {
        let mut set = |schema: &str, field: &str, key: &str, value: serde_json::Value| {
            if let Some(prop) = schemas
                .get_mut(schema)
                .and_then(|s| s.get_mut("properties"))
                .and_then(|p| p.get_mut(field))
            {
                prop[key] = value;
            }
        };
        let said = json!(format!("[^{BLANK_CLASS}]"));
        set("CreateTask", "text", "pattern", said.clone());
        set("CreateTask", "repository", "pattern", repository.clone());
        set("UpdateTask", "text", "pattern", said.clone());
        set("UpdateTask", "state", "enum", task_states.clone());
        set("CreateTokenRequest", "role", "enum", roles);
        set(
            "CreateTokenRequest",
            "name",
            "pattern",
            json!("^[A-Za-z0-9._-]{1,64}$"),
        );
        set("CreateValidation", "kind", "enum", kinds);
        set("CreateValidation", "verdict", "enum", verdicts);
        set("CreateValidation", "summary", "pattern", said);
        set(
            "ExecuteRequest",
            "repository",
            "pattern",
            repository.clone(),
        );
        set("ExecuteRequest", "workflow", "minLength", json!(1));
        if let Some(repos) = schemas
            .get_mut("CreateTokenRequest")
            .and_then(|s| s.get_mut("properties"))
            .and_then(|p| p.get_mut("repositories"))
        {
            *repos = json!({ "type": ["array", "null"], "minItems": 1,
                             "items": { "type": "string", "pattern": repository.clone() } });
        }
        if let Some(t) = schemas
            .get_mut("CreateTokenRequest")
            .and_then(|s| s.as_object_mut())
        {
            // Admin tokens are never scoped.
            t.insert(
                "not".into(),
                json!({ "properties": { "role": { "const": "admin" },
                                        "repositories": { "type": "array" } },
                        "required": ["role", "repositories"] }),
            );
        }
        // Rules across fields: a task names at most one of its numbers, and
        // a number needs a repository; a run names exactly one.
        let number = |field: &str| json!({ "properties": { field: { "type": "integer" } }, "required": [field] });
        if let Some(task) = schemas
            .get_mut("CreateTask")
            .and_then(|s| s.as_object_mut())
        {
            task.insert(
                "not".into(),
                json!({ "properties": { "issue_number": { "type": "integer" },
                                        "pr_number": { "type": "integer" } },
                        "required": ["issue_number", "pr_number"] }),
            );
            let needs_repo = json!({ "properties": { "repository": { "type": "string" } },
                                     "required": ["repository"] });
            task.insert(
                "allOf".into(),
                json!([
                    { "if": number("issue_number"), "then": needs_repo },
                    { "if": number("pr_number"), "then": needs_repo },
                ]),
            );
        }
        if let Some(v) = schemas
            .get_mut("CreateValidation")
            .and_then(|s| s.as_object_mut())
        {
            // A step names a step of a run: it needs `run_id`.
            v.insert(
                "if".into(),
                json!({ "properties": { "step": { "type": "string" } }, "required": ["step"] }),
            );
            v.insert("then".into(), number("run_id"));
        }
        if let Some(exec) = schemas
            .get_mut("ExecuteRequest")
            .and_then(|s| s.as_object_mut())
        {
            exec.insert(
                "oneOf".into(),
                json!([number("pr_number"), number("issue_number")]),
            );
        }
        // A validation's report is absent (`null`) when its step gave none.
        if let Some(report) = schemas
            .get_mut("ValidationView")
            .and_then(|s| s.get_mut("properties"))
            .and_then(|p| p.get_mut("report"))
        {
            *report = json!({ "oneOf": [
                { "$ref": "#/components/schemas/VerdictReport" }, { "type": "null" } ] });
        }
    }
}

/// The characters JSON Schema's `\s` means (ECMA-262 white space and line
/// terminators): text made only of these is blank, here and in the
/// published patterns alike.
pub(crate) const BLANK_CLASS: &str =
    "\\t\\n\\v\\f\\r \\u00a0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000\\ufeff";

/// Whether `text` is blank: only the characters of [`BLANK_CLASS`].
pub(crate) fn blank(text: &str) -> bool {
    text.chars().all(|c| {
        matches!(
            c,
            '\t' | '\n' | '\u{b}' | '\u{c}' | '\r' | ' ' | '\u{a0}' | '\u{1680}' | '\u{2000}'
                ..='\u{200a}'
                    | '\u{2028}'
                    | '\u{2029}'
                    | '\u{202f}'
                    | '\u{205f}'
                    | '\u{3000}'
                    | '\u{feff}'
        )
    })
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "taskmaster operator API",
        description = "Start and steer workflow runs, manage tasks and validations, watch agents. \
Authenticate with `Authorization: Bearer <token>` (`taskmaster token create --role <role>`). \
Errors are RFC 9457 problems (`application/problem+json`). Times are epoch milliseconds."
    ),
    modifiers(&BearerScheme),
    components(schemas(Problem)),
    tags(
        (name = "workflows", description = "Runs of workflows"),
        (name = "tasks", description = "Classified units of work"),
        (name = "validations", description = "Verdicts of code review, tests and security audits"),
        (name = "agents", description = "The agents runs use"),
        (name = "spend", description = "What agents cost, and the budgets"),
        (name = "insights", description = "Analytics, advice and predicted run times"),
        (name = "service", description = "Health, metrics and this description"),
        (name = "admin", description = "API tokens and the audit log (admin role)"),
    )
)]
struct ApiDoc;

struct BearerScheme;

impl Modify for BearerScheme {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("An API token: `tm_` and 64 hex digits"))
                    .build(),
            ),
        );
    }
}

/// This API's OpenAPI 3.1 description.
#[utoipa::path(get, operation_id = "get_openapi", path = "/api/openapi.json", tag = "service",
    responses((status = 200, description = "The OpenAPI 3.1 document", body = Object)),
    security(()))]
async fn openapi_json() -> Response {
    static SPEC: OnceLock<String> = OnceLock::new();
    let body = SPEC.get_or_init(|| serde_json::to_string_pretty(&openapi()).unwrap_or_default());
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body.clone(),
    )
        .into_response()
}

/// Liveness: version, database status and inbox depth (no token needed).
#[utoipa::path(get, operation_id = "get_health", path = "/api/health", tag = "service",
    responses(
        (status = 200, description = "Up", body = Health),
        (status = 503, description = "The database is unreachable", body = Health),
    ),
    security(()))]
async fn health_check(State(state): State<ApiState>) -> Response {
    let store: Arc<dyn Store> = state.store.clone();
    health(State(store)).await
}

/// The body of `GET /api/ready`.
#[derive(Debug, Serialize, serde::Deserialize, PartialEq, Eq, ToSchema)]
pub struct Ready {
    /// `ready`, `starting` (start-up recovery runs), `stopping` (shutdown
    /// began) or `unavailable` (the database cannot be reached).
    pub status: String,
    /// Why it is not ready; absent when ready.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Readiness: 200 once the engine finished start-up recovery and the
/// database answers; 503 before, while shutting down, or when the database
/// is unreachable. The schema is migrated before the service listens, so a
/// replica whose migrations run refuses connections. A load balancer or
/// Kubernetes' `readinessProbe` sends traffic only to ready replicas;
/// liveness stays on `/api/health`.
#[utoipa::path(get, operation_id = "get_ready", path = "/api/ready", tag = "service",
    responses(
        (status = 200, description = "Taking work", body = Ready),
        (status = 503, description = "Starting, stopping, or the database is unreachable", body = Ready),
    ),
    security(()))]
async fn ready_check(State(state): State<ApiState>) -> Response {
    use crate::engine::Readiness;
    let not_ready = |status: &str, reason: String| {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(Ready {
                status: status.into(),
                reason: Some(reason),
            }),
        )
            .into_response()
    };
    match state.engine.readiness() {
        Readiness::Starting => {
            return not_ready(
                "starting",
                "start-up recovery has not finished (steps held by a stopped process are being released)".into(),
            );
        }
        Readiness::Stopping => {
            return not_ready("stopping", "the service is shutting down".into());
        }
        Readiness::Ready => {}
    }
    match tokio::time::timeout(HEALTH_DEADLINE, state.store.ping()).await {
        Ok(Ok(())) => (
            StatusCode::OK,
            Json(Ready {
                status: "ready".into(),
                reason: None,
            }),
        )
            .into_response(),
        Ok(Err(e)) => not_ready("unavailable", format!("database: {e}")),
        Err(_) => not_ready("unavailable", "database timed out".into()),
    }
}

/// A page request: `limit` (1-200, default 50) and `cursor` (the previous
/// page's `next_cursor`: the last id it held).
pub(crate) struct Cursor {
    limit: i64,
    before_id: Option<i64>,
}

/// Page size when none is asked for.
const DEFAULT_PAGE: i64 = 50;
/// Largest page.
const MAX_PAGE: i64 = 200;

impl Cursor {
    pub(crate) fn parse(limit: Option<i64>, cursor: Option<&str>) -> Result<Self, Problem> {
        let limit = limit.unwrap_or(DEFAULT_PAGE);
        if !(1..=MAX_PAGE).contains(&limit) {
            return Err(Problem::bad_request(format!(
                "`limit` must be between 1 and {MAX_PAGE}, not {limit}"
            )));
        }
        let before_id = cursor
            .filter(|c| !c.is_empty())
            .map(|c| {
                c.parse::<i64>().ok().filter(|n| *n > 0).ok_or_else(|| {
                    Problem::bad_request(format!(
                        "`cursor` `{c}` is not one this API handed out (use `next_cursor`)"
                    ))
                })
            })
            .transpose()?;
        Ok(Cursor { limit, before_id })
    }

    /// Cuts `rows` (fetched with `limit + 1`) to the page and tells whether
    /// another follows.
    pub(crate) fn split<T>(
        &self,
        mut rows: Vec<T>,
        id: impl Fn(&T) -> i64,
    ) -> (Vec<T>, Option<String>) {
        if rows.len() as i64 > self.limit {
            rows.truncate(self.limit as usize);
            let next = rows.last().map(|r| id(r).to_string());
            (rows, next)
        } else {
            (rows, None)
        }
    }
}

/// Writes one audit entry for an API call by `caller`.
pub(crate) async fn audit(
    state: &ApiState,
    caller: &Caller,
    action: &str,
    target: Option<String>,
    outcome: &str,
    detail: Option<serde_json::Value>,
) -> Result<(), Problem> {
    let (actor_kind, actor) = caller.actor();
    state
        .store
        .append_audit(&AuditEntry {
            id: 0,
            at: now_ms(),
            actor_kind,
            actor: actor.to_owned(),
            action: action.to_owned(),
            target,
            outcome: outcome.to_owned(),
            detail,
        })
        .await?;
    Ok(())
}

/// `GET /api/health`: 200 with version, database status and inbox depth; 503
/// when the database cannot be reached within 2 s.
async fn health(State(store): State<Arc<dyn Store>>) -> Response {
    let probe = async {
        store.ping().await?;
        store.inbox_depth().await
    };
    let (code, database, inbox) = match tokio::time::timeout(HEALTH_DEADLINE, probe).await {
        Ok(Ok(depth)) => (StatusCode::OK, "ok".to_string(), Some(depth.into())),
        Ok(Err(e)) => (StatusCode::SERVICE_UNAVAILABLE, e.to_string(), None),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "database timed out".to_string(),
            None,
        ),
    };
    let body = Health {
        status: if code == StatusCode::OK {
            "ok"
        } else {
            "unavailable"
        }
        .into(),
        version: env!("CARGO_PKG_VERSION").into(),
        database,
        inbox,
    };
    (code, Json(body)).into_response()
}
