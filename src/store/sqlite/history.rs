//! [`Histories`] on SQLite: one read transaction on a reader.

use super::*;
use crate::insights::{AttemptFact, History, RunFact};
use crate::store::history::{
    ACTIVE_STEPS_BY_AGENT, HISTORY_ATTEMPTS, HISTORY_RUNS, Histories, RECENT_OUTCOMES,
    STEP_DURATIONS, run_bounds,
};

#[async_trait]
impl Histories for SqliteStore {
    async fn history(&self, since: i64, limit: i64) -> Result<History, StoreError> {
        self.scan(|conn| {
            // One snapshot: the attempts belong to the runs read.
            let tx = conn.unchecked_transaction()?;
            let runs: Vec<RunFact> = tx
                .prepare_cached(HISTORY_RUNS)?
                .query_map([since, limit], |r| {
                    Ok(RunFact {
                        id: r.get(0)?,
                        workflow: r.get(1)?,
                        repository: r.get(2)?,
                        state: r.get(3)?,
                        conclusion: r.get(4)?,
                        created_at: r.get(5)?,
                        started_at: r.get(6)?,
                        finished_at: r.get(7)?,
                        cost_usd: r.get(8)?,
                    })
                })?
                .collect::<Result<_, _>>()?;
            let attempts: Vec<AttemptFact> = match run_bounds(&runs) {
                None => Vec::new(),
                Some((oldest, newest)) => tx
                    .prepare_cached(HISTORY_ATTEMPTS)?
                    .query_map([oldest, newest, since], |r| {
                        Ok(AttemptFact {
                            run_id: r.get(0)?,
                            workflow: r.get(1)?,
                            step: r.get(2)?,
                            number: r.get(3)?,
                            agent: r.get(4)?,
                            primary_agent: r.get(5)?,
                            started_at: r.get(6)?,
                            finished_at: r.get(7)?,
                            outcome: r.get(8)?,
                            error_kind: r.get(9)?,
                            error: r.get(10)?,
                            duration_ms: r.get(11)?,
                            cost_usd: r.get(12)?,
                        })
                    })?
                    .collect::<Result<_, _>>()?,
            };
            tx.commit()?;
            Ok(History {
                since,
                runs,
                attempts,
            })
        })
        .await
    }

    async fn step_durations(
        &self,
        workflow: &str,
        limit: i64,
    ) -> Result<Vec<(String, Option<String>, i64)>, StoreError> {
        self.read(|conn| conn.all(STEP_DURATIONS, params![workflow, limit]))
            .await
    }

    async fn recent_outcomes(
        &self,
        workflow: &str,
        step: &str,
        limit: i64,
    ) -> Result<Vec<(String, i64, i64)>, StoreError> {
        self.read(|conn| conn.all(&RECENT_OUTCOMES, params![workflow, step, limit]))
            .await
    }

    async fn active_steps_by_agent(&self) -> Result<Vec<(String, i64)>, StoreError> {
        self.read(|conn| conn.all(ACTIVE_STEPS_BY_AGENT, [])).await
    }
}
