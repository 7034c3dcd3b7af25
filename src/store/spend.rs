//! What agents cost, per UTC day, repository and installation: the `spend`
//! table the budgets of [`crate::budget`] read, added to in the transaction
//! that records an attempt's end (both backends run [`ADD_SPEND`]).

use crate::ids::InstallationId;
use async_trait::async_trait;
use serde::Serialize;

use super::StoreError;
use super::rows::{FromSqliteRow, sqlite_row};
use crate::budget::Spent;

/// Adds an ended attempt to its day's row: `?1` the day number, `?2`
/// dollars, `?3` milliseconds, `?4` the run (its repository, and its
/// delivery's installation). SQLite's upsert after `INSERT … SELECT` needs
/// the `WHERE` the select has.
pub(in crate::store) const ADD_SPEND: &str = "INSERT INTO spend \
     (day, repository, installation_id, usd, attempts, agent_ms) \
     SELECT ?1, COALESCE(r.repository, ''), COALESCE(d.installation_id, 0), ?2, 1, ?3 \
     FROM runs r LEFT JOIN deliveries d ON d.delivery_id = r.delivery_id WHERE r.id = ?4 \
     ON CONFLICT (day, repository, installation_id) DO UPDATE SET \
     usd = spend.usd + excluded.usd, attempts = spend.attempts + 1, \
     agent_ms = spend.agent_ms + excluded.agent_ms";

/// [`ADD_SPEND`] with PostgreSQL's placeholders.
pub(in crate::store) const ADD_SPEND_PG: &str = "INSERT INTO spend \
     (day, repository, installation_id, usd, attempts, agent_ms) \
     SELECT $1, COALESCE(r.repository, ''), COALESCE(d.installation_id, 0), $2, 1, $3 \
     FROM runs r LEFT JOIN deliveries d ON d.delivery_id = r.delivery_id WHERE r.id = $4 \
     ON CONFLICT (day, repository, installation_id) DO UPDATE SET \
     usd = spend.usd + excluded.usd, attempts = spend.attempts + 1, \
     agent_ms = spend.agent_ms + excluded.agent_ms";

/// One row of the `spend` table.
#[derive(
    Debug, Clone, PartialEq, Serialize, serde::Deserialize, utoipa::ToSchema, sqlx::FromRow,
)]
pub struct SpendRow {
    /// Days since 1970-01-01 (UTC).
    pub day: i64,
    /// `owner/name`; empty for runs without one.
    pub repository: String,
    /// 0 for runs without one.
    #[schema(value_type = i64)]
    pub installation_id: InstallationId,
    /// US dollars, reported and estimated.
    pub usd: f64,
    /// Attempts that ended.
    pub attempts: i64,
    /// Milliseconds agents spent on them.
    pub agent_ms: i64,
}

sqlite_row!(SpendRow {
    day,
    repository,
    installation_id,
    usd,
    attempts,
    agent_ms
});

/// What one workflow's attempts on one agent cost.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct AgentSpend {
    pub workflow: String,
    pub agent: String,
    /// US dollars, reported and estimated.
    pub usd: f64,
    /// Attempts that ended.
    pub attempts: i64,
    /// Of those, attempts whose cost is an estimate.
    pub estimated: i64,
    /// Milliseconds they took.
    pub agent_ms: i64,
}

sqlite_row!(AgentSpend {
    workflow,
    agent,
    usd,
    attempts,
    estimated,
    agent_ms
});

/// The store's side of budgets.
#[async_trait]
pub trait Spend: Send + Sync + 'static {
    /// Spend from day `since_day` (inclusive) on, of `repository` and of
    /// `installation_id` when given (both: their rows only; neither: all).
    async fn spent(
        &self,
        since_day: i64,
        repository: Option<&str>,
        installation_id: Option<InstallationId>,
    ) -> Result<Spent, StoreError>;

    /// Every row from day `since_day` on, newest day first, then by
    /// repository.
    async fn spend_rows(&self, since_day: i64) -> Result<Vec<SpendRow>, StoreError>;

    /// Attempts that started at or after `since` (epoch ms) and ended, by
    /// workflow and agent, costliest first (the dashboard's spend page; it
    /// reads the attempts themselves, so it is for people, not hot paths).
    async fn spend_by_workflow_agent(&self, since: i64) -> Result<Vec<AgentSpend>, StoreError>;
}
