//! `GET /api/spend`: what agents cost, per UTC day, repository and
//! installation, with the budgets of `budgets:` and what is left of them
//! (see [`crate::budget`]).

use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::ApiState;
use super::auth::{Authorized, CanRead};
use super::error::{ApiResult, Params, Problem};
use crate::budget::{Budgets, Scope, day_number, month_start_day};
use crate::store::SpendRow;

/// `?days=`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct SpendQuery {
    /// Days back from today (UTC), today included: 1–366, default 31.
    #[param(minimum = 1, maximum = 366)]
    pub days: Option<i64>,
}

/// What agents cost, and the budgets.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SpendView {
    /// The first day listed (days since 1970-01-01, UTC).
    pub since_day: i64,
    /// Per day, repository and installation, newest day first.
    pub rows: Vec<SpendRow>,
    /// US dollars over the rows.
    pub total_usd: f64,
    /// Every configured budget of a period, with what its scope spent in
    /// the current period and what is left.
    pub budgets: Vec<BudgetView>,
}

/// One budget of a period, for one repository or installation (or all).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BudgetView {
    /// `repository_day`, `repository_month`, `installation_month` or `global_month`.
    pub scope: String,
    /// The repository or installation it is about (`""`: everything).
    pub key: String,
    /// US dollars allowed in the period; absent: no dollar limit.
    pub limit_usd: Option<f64>,
    pub spent_usd: f64,
    /// Share of the dollar limit spent (0–1, more when over).
    pub used: Option<f64>,
    pub limit_attempts: Option<u64>,
    pub attempts: i64,
    pub limit_agent_minutes: Option<f64>,
    pub agent_minutes: f64,
}

/// The budgets of periods and what each scope spent, from the rows of the
/// current month (`rows` must reach back to its first day): one entry per
/// repository or installation that spent anything, and one for everything.
pub fn budget_views(budgets: &Budgets, rows: &[SpendRow], now: i64) -> Vec<BudgetView> {
    let mut out = Vec::new();
    for scope in budgets.scopes().filter(|s| *s != Scope::Run) {
        let since = scope.since_day(now).expect("a period");
        let limits = budgets.limits(scope);
        let key_of = |r: &SpendRow| match scope {
            Scope::RepositoryDay | Scope::RepositoryMonth => r.repository.clone(),
            Scope::InstallationMonth => r.installation_id.to_string(),
            _ => String::new(),
        };
        let mut by_key: std::collections::BTreeMap<String, (f64, i64, i64)> = Default::default();
        if scope == Scope::GlobalMonth {
            by_key.insert(String::new(), (0.0, 0, 0));
        }
        for r in rows.iter().filter(|r| r.day >= since) {
            let e = by_key.entry(key_of(r)).or_default();
            e.0 += r.usd;
            e.1 += r.attempts;
            e.2 += r.agent_ms;
        }
        for (key, (usd, attempts, ms)) in by_key {
            out.push(BudgetView {
                scope: scope.key().to_owned(),
                key,
                limit_usd: limits.usd,
                spent_usd: usd,
                used: limits.usd.filter(|l| *l > 0.0).map(|l| usd / l),
                limit_attempts: limits.attempts,
                attempts,
                limit_agent_minutes: limits.agent_minutes,
                agent_minutes: ms as f64 / 60_000.0,
            });
        }
    }
    out
}

/// What agents cost and what is left of the budgets.
#[utoipa::path(get, operation_id = "get_spend", path = "/api/spend", tag = "spend",
    params(SpendQuery),
    responses(
        (status = 200, description = "Spend per day, repository and installation; budgets", body = SpendView),
        (status = 400, description = "`days` out of range", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
pub async fn get(
    State(state): State<ApiState>,
    _: Authorized<CanRead>,
    Params(q): Params<SpendQuery>,
) -> ApiResult<Json<SpendView>> {
    let days = q.days.unwrap_or(31);
    if !(1..=366).contains(&days) {
        return Err(Problem::bad_request(format!(
            "`days` must be 1 to 366, not {days}"
        )));
    }
    let now = state.engine.now();
    let today = day_number(now);
    let since_day = today - (days - 1);
    let month = month_start_day(now);
    let rows = state.store.spend_rows(since_day.min(month)).await?;
    let budgets = budget_views(state.engine.budgets(), &rows, now);
    let rows: Vec<SpendRow> = rows.into_iter().filter(|r| r.day >= since_day).collect();
    Ok(Json(SpendView {
        since_day,
        // `+ 0.0`: an empty sum is -0.0.
        total_usd: rows.iter().map(|r| r.usd).sum::<f64>() + 0.0,
        rows,
        budgets,
    }))
}
