//! [`Spend`] on SQLite: reads of the `spend` table on the readers.

use super::*;
use crate::budget::Spent;
use crate::ids::InstallationId;
use crate::store::spend::{AgentSpend, Spend, SpendRow};

#[async_trait]
impl Spend for SqliteStore {
    async fn spent(
        &self,
        since_day: i64,
        repository: Option<&str>,
        installation_id: Option<InstallationId>,
    ) -> Result<Spent, StoreError> {
        let (usd, attempts, agent_ms): (f64, i64, i64) = self
            .read(|conn| {
                conn.one(
                    "SELECT COALESCE(SUM(usd), 0.0), COALESCE(SUM(attempts), 0), \
                     COALESCE(SUM(agent_ms), 0) FROM spend WHERE day >= ?1 \
                     AND (?2 IS NULL OR repository = ?2) \
                     AND (?3 IS NULL OR installation_id = ?3)",
                    params![since_day, repository, installation_id],
                )
            })
            .await?;
        Ok(Spent {
            usd,
            attempts,
            agent_ms,
        })
    }

    async fn spend_rows(&self, since_day: i64) -> Result<Vec<SpendRow>, StoreError> {
        self.scan(|conn| {
            conn.all(
                "SELECT day, repository, installation_id, usd, attempts, agent_ms FROM spend \
                 WHERE day >= ?1 ORDER BY day DESC, repository, installation_id",
                [since_day],
            )
        })
        .await
    }

    async fn spend_by_workflow_agent(&self, since: i64) -> Result<Vec<AgentSpend>, StoreError> {
        self.scan(|conn| {
            conn.all(
                "SELECT workflow, agent, COALESCE(SUM(cost_usd), 0.0) AS usd, \
             COUNT(*) AS attempts, \
             COALESCE(SUM(CASE WHEN cost_estimated THEN 1 ELSE 0 END), 0) AS estimated, \
             COALESCE(SUM(duration_ms), 0) AS agent_ms FROM attempts \
             WHERE started_at >= ?1 AND finished_at IS NOT NULL \
             GROUP BY workflow, agent ORDER BY usd DESC, workflow, agent",
                [since],
            )
        })
        .await
    }
}
