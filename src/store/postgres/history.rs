//! [`Histories`] on PostgreSQL: the shared SQL with `$n` placeholders, in
//! one repeatable-read transaction.

use super::*;
use crate::insights::History;
use crate::store::history::{
    ACTIVE_STEPS_BY_AGENT, AttemptTuple, HISTORY_ATTEMPTS, HISTORY_RUNS, Histories,
    RECENT_OUTCOMES, RunTuple, STEP_DURATIONS, attempt_fact, run_bounds, run_fact,
};
use crate::store::postgres_sql;

#[async_trait]
impl Histories for PgStore {
    async fn history(&self, since: i64, limit: i64) -> Result<History, StoreError> {
        static RUNS: std::sync::LazyLock<String> =
            std::sync::LazyLock::new(|| postgres_sql(HISTORY_RUNS));
        static ATTEMPTS: std::sync::LazyLock<String> =
            std::sync::LazyLock::new(|| postgres_sql(HISTORY_ATTEMPTS));
        let mut tx = self.pool.begin().await?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .execute(&mut *tx)
            .await?;
        let runs: Vec<RunTuple> = sqlx::query_as(sqlx::AssertSqlSafe(RUNS.as_str()))
            .bind(since)
            .bind(limit)
            .fetch_all(&mut *tx)
            .await?;
        let runs = runs
            .into_iter()
            .map(run_fact)
            .collect::<Result<Vec<_>, _>>()?;
        let attempts: Vec<AttemptTuple> = match run_bounds(&runs) {
            None => Vec::new(),
            Some((oldest, newest)) => {
                sqlx::query_as(sqlx::AssertSqlSafe(ATTEMPTS.as_str()))
                    .bind(oldest)
                    .bind(newest)
                    .bind(since)
                    .fetch_all(&mut *tx)
                    .await?
            }
        };
        tx.commit().await?;
        Ok(History {
            since,
            runs,
            attempts: attempts
                .into_iter()
                .map(attempt_fact)
                .collect::<Result<_, _>>()?,
        })
    }

    async fn step_durations(
        &self,
        workflow: &str,
        limit: i64,
    ) -> Result<Vec<(String, Option<String>, i64)>, StoreError> {
        static SQL: std::sync::LazyLock<String> =
            std::sync::LazyLock::new(|| postgres_sql(STEP_DURATIONS));
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(SQL.as_str()))
            .bind(workflow)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?)
    }

    async fn recent_outcomes(
        &self,
        workflow: &str,
        step: &str,
        limit: i64,
    ) -> Result<Vec<(String, i64, i64)>, StoreError> {
        static SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
            postgres_sql(&RECENT_OUTCOMES).replace(
                "SUM(CASE WHEN outcome = 'succeeded' THEN 1 ELSE 0 END)",
                "SUM(CASE WHEN outcome = 'succeeded' THEN 1 ELSE 0 END)::BIGINT",
            )
        });
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(SQL.as_str()))
            .bind(workflow)
            .bind(step)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?)
    }

    async fn active_steps_by_agent(&self) -> Result<Vec<(String, i64)>, StoreError> {
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(
            ACTIVE_STEPS_BY_AGENT.replace("SUM(n)", "SUM(n)::BIGINT"),
        ))
        .fetch_all(&self.pool)
        .await?)
    }
}
