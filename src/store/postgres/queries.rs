//! [`Tasks`] and [`Queries`]: the operator's records and views.

use super::*;
use crate::store::RepoName;
use crate::store::RunId;

#[async_trait]
impl Tasks for PgStore {
    async fn create_task(
        &self,
        task: &crate::store::NewTask,
    ) -> Result<crate::store::TaskRecord, StoreError> {
        api::create_task(&self.pool, task).await
    }

    async fn task(&self, id: i64) -> Result<Option<crate::store::TaskRecord>, StoreError> {
        api::task(&self.pool, id).await
    }

    async fn tasks(
        &self,
        filter: &crate::store::TaskFilter,
    ) -> Result<Vec<crate::store::TaskRecord>, StoreError> {
        api::tasks(&self.pool, filter).await
    }

    async fn update_task(
        &self,
        id: i64,
        update: &crate::store::TaskUpdate,
    ) -> Result<Option<crate::store::TaskRecord>, StoreError> {
        api::update_task(&self.pool, id, update).await
    }

    async fn create_validation(
        &self,
        validation: &crate::store::NewValidation,
    ) -> Result<crate::store::ValidationRecord, StoreError> {
        api::create_validation(&self.pool, validation).await
    }

    async fn validation(
        &self,
        id: i64,
    ) -> Result<Option<crate::store::ValidationRecord>, StoreError> {
        api::validation(&self.pool, id).await
    }

    async fn validations(
        &self,
        filter: &crate::store::ValidationFilter,
    ) -> Result<Vec<crate::store::ValidationRecord>, StoreError> {
        api::validations(&self.pool, filter).await
    }
}

#[async_trait]
impl Queries for PgStore {
    async fn runs_for_delivery(&self, delivery_id: &str) -> Result<Vec<Run>, StoreError> {
        let rows: Vec<RunRow> = sqlx::query_as(concat!(
            select_runs!(),
            "WHERE delivery_id = $1 ORDER BY id"
        ))
        .bind(delivery_id)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(Run::try_from).collect()
    }

    async fn run_events(&self, run_id: RunId) -> Result<Vec<RunEvent>, StoreError> {
        let run_id = run_id.0;
        let rows: Vec<(i64, Option<String>, i64, String, String)> = sqlx::query_as(
            "SELECT run_id, step, at, kind, detail FROM run_events WHERE run_id = $1 ORDER BY id",
        )
        .bind(run_id)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(run_id, step, at, kind, detail)| RunEvent {
                run_id: RunId(run_id),
                step,
                at,
                kind,
                detail,
            })
            .collect())
    }

    async fn attempts(&self, run_id: RunId) -> Result<Vec<AttemptRow>, StoreError> {
        let run_id = run_id.0;
        #[allow(clippy::type_complexity)]
        let rows: Vec<(
            i64,
            String,
            i64,
            String,
            String,
            i64,
            Option<i64>,
            Option<String>,
            Option<String>,
            Option<String>,
            Option<i64>,
            Option<f64>,
            bool,
        )> = sqlx::query_as(
            "SELECT run_id, step, number, agent, lease_token, started_at, finished_at, outcome, \
             error_class, error, duration_ms, cost_usd, cost_estimated FROM attempts \
             WHERE run_id = $1 ORDER BY id",
        )
        .bind(run_id)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|r| {
                use crate::store::rows::parse_named;
                let outcome = parse_named(
                    "attempts",
                    "attempt outcome",
                    r.7.as_deref(),
                    crate::store::AttemptEnd::parse,
                )?;
                let error_class = parse_named(
                    "attempts",
                    "error class",
                    r.8.as_deref(),
                    crate::agent::ErrorClass::parse,
                )?;
                Ok(AttemptRow {
                    run_id: RunId(r.0),
                    step: r.1,
                    number: r.2,
                    agent: r.3,
                    lease_token: r.4,
                    started_at: r.5,
                    finished_at: r.6,
                    outcome,
                    error_class,
                    error: r.9,
                    duration_ms: r.10,
                    cost_usd: r.11,
                    cost_estimated: r.12,
                })
            })
            .collect()
    }

    async fn subject_runs_since(
        &self,
        repository: &RepoName,
        number: i64,
        since: i64,
    ) -> Result<i64, StoreError> {
        let (n,): (i64,) = sqlx::query_as(
            "SELECT COUNT(*) FROM runs WHERE repository = $1 AND subject_number = $2 \
             AND created_at >= $3",
        )
        .bind(repository)
        .bind(number)
        .bind(since)
        .fetch_one(&self.pool)
        .await?;
        Ok(n)
    }

    async fn list_runs(&self, filter: &crate::store::RunFilter) -> Result<Vec<Run>, StoreError> {
        api::list_runs(&self.pool, filter).await
    }

    async fn store_counts(&self) -> Result<crate::store::StoreCounts, StoreError> {
        api::store_counts(&self.pool).await
    }

    async fn agent_attempt_stats(
        &self,
        since: i64,
    ) -> Result<Vec<crate::store::AgentAttemptStats>, StoreError> {
        api::agent_attempt_stats(&self.pool, since).await
    }

    async fn list_deliveries(
        &self,
        filter: &crate::store::DeliveryFilter,
    ) -> Result<Vec<crate::store::DeliverySummary>, StoreError> {
        deliveries::list_deliveries(&self.pool, filter).await
    }

    async fn requeue_delivery(
        &self,
        delivery_id: &str,
        now: i64,
    ) -> Result<Option<crate::store::DeliveryState>, StoreError> {
        deliveries::requeue_delivery(&self.pool, delivery_id, now).await
    }
}
