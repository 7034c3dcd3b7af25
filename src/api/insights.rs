//! `GET /api/insights`: analytics of a window of runs per workflow,
//! repository, step and agent, advice with its evidence, and how far the
//! predicted run times can be trusted (see [`crate::insights`]).

use axum::Json;
use axum::extract::State;
use serde::Deserialize;
use utoipa::IntoParams;

use super::ApiState;
use super::auth::{Authorized, CanRead};
use super::error::{ApiResult, Params, Problem};
use crate::insights::{Report, report};

/// `?days=&workflow=&repository=`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct InsightsQuery {
    /// Days back from now: 1–90, default 30.
    #[param(minimum = 1, maximum = 90)]
    pub days: Option<i64>,
    /// Only this workflow's runs.
    pub workflow: Option<String>,
    /// Only this repository's runs (`owner/name`).
    pub repository: Option<String>,
}

impl InsightsQuery {
    /// The window in days, checked.
    ///
    /// Errors: out of range (400).
    pub fn days(&self) -> Result<i64, Problem> {
        let days = self.days.unwrap_or(30);
        if (1..=90).contains(&days) {
            Ok(days)
        } else {
            Err(Problem::bad_request(format!(
                "`days` must be 1 to 90, not {days}"
            )))
        }
    }
}

/// Analytics, advice and prediction accuracy over a window of runs.
#[utoipa::path(get, operation_id = "get_insights", path = "/api/insights", tag = "insights",
    params(InsightsQuery),
    responses(
        (status = 200, description = "Analytics, advice and prediction accuracy", body = Report),
        (status = 400, description = "`days` out of range", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
pub async fn get(
    State(state): State<ApiState>,
    _: Authorized<CanRead>,
    Params(q): Params<InsightsQuery>,
) -> ApiResult<Json<Report>> {
    let days = q.days()?;
    Ok(Json(
        report(
            &*state.store,
            state.engine.workflows(),
            state.engine.now(),
            days,
            q.workflow.as_deref(),
            q.repository.as_deref(),
        )
        .await?,
    ))
}
