//! [`Spend`] on PostgreSQL.

use super::*;
use crate::budget::Spent;
use crate::ids::InstallationId;
use crate::store::spend::{AgentSpend, Spend, SpendRow};

#[async_trait]
impl Spend for PgStore {
    async fn spent(
        &self,
        since_day: i64,
        repository: Option<&str>,
        installation_id: Option<InstallationId>,
    ) -> Result<Spent, StoreError> {
        let (usd, attempts, agent_ms): (f64, i64, i64) = sqlx::query_as(
            "SELECT COALESCE(SUM(usd), 0.0)::DOUBLE PRECISION, COALESCE(SUM(attempts), 0)::BIGINT, \
             COALESCE(SUM(agent_ms), 0)::BIGINT FROM spend WHERE day >= $1 \
             AND ($2::TEXT IS NULL OR repository = $2) AND ($3::BIGINT IS NULL OR installation_id = $3)",
        )
        .bind(since_day)
        .bind(repository)
        .bind(installation_id)
        .fetch_one(&self.pool)
        .await?;
        Ok(Spent {
            usd,
            attempts,
            agent_ms,
        })
    }

    async fn spend_rows(&self, since_day: i64) -> Result<Vec<SpendRow>, StoreError> {
        Ok(sqlx::query_as::<_, SpendRow>(
            "SELECT day, repository, installation_id, usd, attempts, agent_ms FROM spend \
             WHERE day >= $1 ORDER BY day DESC, repository, installation_id",
        )
        .bind(since_day)
        .fetch_all(&self.pool)
        .await?)
    }

    async fn spend_by_workflow_agent(&self, since: i64) -> Result<Vec<AgentSpend>, StoreError> {
        Ok(sqlx::query_as::<_, AgentSpend>(
            "SELECT workflow, agent, COALESCE(SUM(cost_usd), 0.0)::DOUBLE PRECISION AS usd, \
             COUNT(*)::BIGINT AS attempts, \
             COALESCE(SUM(CASE WHEN cost_estimated THEN 1 ELSE 0 END), 0)::BIGINT AS estimated, \
             COALESCE(SUM(duration_ms), 0)::BIGINT AS agent_ms FROM attempts \
             WHERE started_at >= $1 AND finished_at IS NOT NULL \
             GROUP BY workflow, agent ORDER BY usd DESC, workflow, agent",
        )
        .bind(since)
        .fetch_all(&self.pool)
        .await?)
    }
}
