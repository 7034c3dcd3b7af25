//! `/api/validations`: verdicts of validation steps — code review, tests,
//! security audit — with their evidence, recorded by agents' tooling, CI or
//! people (`POST`), and read back per run.

use crate::store::RunId;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::auth::{Authorized, CanRead, CanWriteValidations};
use super::error::{ApiResult, Body, Id, Params, Problem};
use super::{ApiState, Cursor, audit};
use crate::store::{
    NewValidation, ValidationFilter, ValidationKind, ValidationRecord, Verdict, now_ms,
};

/// Longest summary accepted, bytes.
const MAX_SUMMARY: usize = 16 * 1024;
/// Largest evidence accepted, bytes of JSON.
const MAX_EVIDENCE: usize = 256 * 1024;

/// `POST /api/validations`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateValidation {
    /// The run validated, if any.
    #[serde(default, deserialize_with = "super::whole::opt_i64")]
    pub run_id: Option<i64>,
    /// The step of that run that made the verdict.
    pub step: Option<String>,
    /// `code_review`, `tests`, `security_audit` or `other`.
    pub kind: String,
    /// `pass`, `fail` or `warn`.
    pub verdict: String,
    /// One paragraph for people.
    pub summary: String,
    /// What the verdict rests on: findings, failing tests, links.
    #[serde(default)]
    #[schema(value_type = Vec<Object>)]
    pub evidence: Vec<serde_json::Value>,
}

/// A stored validation.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ValidationView {
    pub id: i64,
    pub run_id: Option<i64>,
    pub step: Option<String>,
    pub kind: String,
    pub verdict: String,
    pub summary: String,
    #[schema(value_type = Vec<Object>)]
    pub evidence: serde_json::Value,
    /// The step's verdict report, when it ended with one
    /// (`schemas/verdict.schema.json`): `verdict` (`pass`, `fail`,
    /// `neutral`; `verdict` above stores `neutral` as `warn`), `summary`,
    /// and `findings` on lines of the checked-out commit.
    #[schema(schema_with = verdict_report_ref)]
    pub report: Option<crate::verdict::VerdictReport>,
    /// The token that recorded it.
    pub created_by: String,
    /// Epoch milliseconds.
    pub created_at: i64,
}

/// `#/components/schemas/VerdictReport` (added by [`super::openapi`]).
fn verdict_report_ref() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
    utoipa::openapi::Ref::from_schema_name("VerdictReport").into()
}

impl From<ValidationRecord> for ValidationView {
    fn from(v: ValidationRecord) -> Self {
        // The engine keeps a step's verdict report as the evidence item
        // `{"source": "verdict", "verdict", "summary", "findings"}`.
        let report = v
            .evidence
            .as_array()
            .and_then(|items| items.iter().find(|e| e["source"] == "verdict"))
            .and_then(|e| {
                let mut e = e.clone();
                e.as_object_mut()?.remove("source");
                serde_json::from_value(e).ok()
            });
        ValidationView {
            report,
            id: v.id,
            run_id: v.run_id,
            step: v.step,
            kind: v.kind.as_str().into(),
            verdict: v.verdict.as_str().into(),
            summary: v.summary,
            evidence: v.evidence,
            created_by: v.created_by,
            created_at: v.created_at,
        }
    }
}

/// A page of validations, newest first.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ValidationPage {
    pub items: Vec<ValidationView>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// Filters of `GET /api/validations`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ValidationQuery {
    /// Only validations of this run.
    pub run_id: Option<i64>,
    /// Only of this kind.
    pub kind: Option<String>,
    /// Only with this verdict.
    pub verdict: Option<String>,
    /// Page size, 1-200 (default 50).
    pub limit: Option<i64>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

fn parse<T: std::str::FromStr<Err = String>>(field: &str, v: &str) -> Result<T, Problem> {
    v.parse()
        .map_err(|e: String| Problem::bad_request(format!("`{field}`: {e}")))
}

/// List validations, newest first.
#[utoipa::path(get, operation_id = "list_validations", path = "/api/validations", tag = "validations", params(ValidationQuery),
    responses(
        (status = 200, description = "A page of validations", body = ValidationPage),
        (status = 400, description = "Invalid filter", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
pub async fn list(
    State(state): State<ApiState>,
    Authorized(caller, _): Authorized<CanRead>,
    Params(q): Params<ValidationQuery>,
) -> ApiResult<Json<ValidationPage>> {
    // A scoped token lists the validations of one of its runs.
    if caller.repositories.is_some() {
        let Some(run_id) = q.run_id else {
            return Err(Problem::bad_request(
                "this token is scoped to repositories: give `run_id`",
            ));
        };
        super::workflows::visible_run(&state, &caller, run_id).await?;
    }
    let page = Cursor::parse(q.limit, q.cursor.as_deref())?;
    let filter = ValidationFilter {
        run_id: q.run_id,
        kind: q
            .kind
            .as_deref()
            .map(|k| parse::<ValidationKind>("kind", k))
            .transpose()?,
        verdict: q
            .verdict
            .as_deref()
            .map(|v| parse::<Verdict>("verdict", v))
            .transpose()?,
        before_id: page.before_id,
        limit: page.limit + 1,
    };
    let rows = state.store.validations(&filter).await?;
    let (items, next_cursor) = page.split(rows, |v| v.id);
    Ok(Json(ValidationPage {
        items: items.into_iter().map(ValidationView::from).collect(),
        next_cursor,
    }))
}

/// Record a validation verdict with its evidence.
#[utoipa::path(post, operation_id = "create_validation", path = "/api/validations", tag = "validations",
    request_body = CreateValidation,
    responses(
        (status = 201, description = "The validation", body = ValidationView),
        (status = 400, description = "Invalid request", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The role may not record validations", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such run", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
pub async fn create(
    State(state): State<ApiState>,
    Authorized(caller, _): Authorized<CanWriteValidations>,
    Body(req): Body<CreateValidation>,
) -> ApiResult<Response> {
    let kind: ValidationKind = parse("kind", &req.kind)?;
    let verdict: Verdict = parse("verdict", &req.verdict)?;
    if super::blank(&req.summary) {
        return Err(Problem::bad_request("`summary` must not be empty"));
    }
    if req.summary.len() > MAX_SUMMARY {
        return Err(Problem::bad_request(format!(
            "`summary` is longer than {MAX_SUMMARY} bytes"
        )));
    }
    if req.evidence.iter().any(|e| !e.is_object()) {
        return Err(Problem::bad_request(
            "each item of `evidence` must be a JSON object",
        ));
    }
    let evidence = serde_json::Value::Array(req.evidence.clone());
    if evidence.to_string().len() > MAX_EVIDENCE {
        return Err(Problem::bad_request(format!(
            "`evidence` is larger than {MAX_EVIDENCE} bytes of JSON"
        )));
    }
    if req.run_id.is_none() && caller.repositories.is_some() {
        return Err(Problem::forbidden(
            "this token is scoped to repositories: give `run_id`",
        ));
    }
    if let Some(run_id) = req.run_id {
        let Some(run) = state
            .store
            .run(RunId(run_id))
            .await?
            .filter(|r| caller.may_act_on(r.run.repository.as_deref()))
        else {
            return Err(Problem::not_found(format!("no run {run_id}")));
        };
        if let Some(step) = &req.step
            && run.step(step).is_none()
        {
            return Err(Problem::bad_request(format!(
                "run {run_id} has no step `{step}`"
            )));
        }
    } else if req.step.is_some() {
        return Err(Problem::bad_request("`step` needs `run_id`"));
    }
    let stored = state
        .store
        .create_validation(&NewValidation {
            run_id: req.run_id,
            step: req.step.clone(),
            kind,
            verdict,
            summary: req.summary.trim().to_owned(),
            evidence,
            created_by: caller.name.clone(),
            created_at: now_ms(),
        })
        .await?;
    audit(
        &state,
        &caller,
        "validation.create",
        Some(format!("validation:{}", stored.id)),
        "ok",
        Some(serde_json::json!({ "run_id": req.run_id, "kind": kind, "verdict": verdict })),
    )
    .await?;
    Ok((StatusCode::CREATED, Json(ValidationView::from(stored))).into_response())
}

/// One validation.
#[utoipa::path(get, operation_id = "get_validation", path = "/api/validations/{id}", tag = "validations",
    params(("id" = i64, Path, description = "The validation id")),
    responses(
        (status = 200, description = "The validation", body = ValidationView),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such validation", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
pub async fn get(
    State(state): State<ApiState>,
    Authorized(caller, _): Authorized<CanRead>,
    Id(id): Id<i64>,
) -> ApiResult<Json<ValidationView>> {
    let v = state
        .store
        .validation(id)
        .await?
        .ok_or_else(|| Problem::not_found(format!("no validation {id}")))?;
    if caller.repositories.is_some() {
        match v.run_id {
            Some(run_id) => super::workflows::visible_run(&state, &caller, run_id)
                .await
                .map_err(|_| Problem::not_found(format!("no validation {id}")))?,
            None => return Err(Problem::not_found(format!("no validation {id}"))),
        }
    }
    Ok(Json(v.into()))
}
