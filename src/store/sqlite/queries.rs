//! [`Tasks`] and [`Queries`]: the operator's records and views.

use super::*;

#[async_trait]
impl Tasks for SqliteStore {
    async fn create_task(
        &self,
        task: &crate::store::NewTask,
    ) -> Result<crate::store::TaskRecord, StoreError> {
        // Every new pull request or issue records one (the dispatcher), so
        // the commit is grouped (see `write_grouped`).
        self.write_grouped(|conn| api::create_task(conn, task))
            .await
    }

    async fn task(&self, id: i64) -> Result<Option<crate::store::TaskRecord>, StoreError> {
        self.raw_read(|conn| api::task(conn, id)).await
    }

    async fn tasks(
        &self,
        filter: &crate::store::TaskFilter,
    ) -> Result<Vec<crate::store::TaskRecord>, StoreError> {
        self.raw_read(|conn| api::tasks(conn, filter)).await
    }

    async fn update_task(
        &self,
        id: i64,
        update: &crate::store::TaskUpdate,
    ) -> Result<Option<crate::store::TaskRecord>, StoreError> {
        self.write_grouped(|conn| api::update_task(conn, id, update))
            .await
    }

    async fn create_validation(
        &self,
        validation: &crate::store::NewValidation,
    ) -> Result<crate::store::ValidationRecord, StoreError> {
        api::create_validation(&mut *self.writer().await?, validation).await
    }

    async fn validation(
        &self,
        id: i64,
    ) -> Result<Option<crate::store::ValidationRecord>, StoreError> {
        api::validation(&self.reader, id).await
    }

    async fn validations(
        &self,
        filter: &crate::store::ValidationFilter,
    ) -> Result<Vec<crate::store::ValidationRecord>, StoreError> {
        api::validations(&self.reader, filter).await
    }
}

#[async_trait]
impl Queries for SqliteStore {
    async fn runs_for_delivery(&self, delivery_id: &str) -> Result<Vec<Run>, StoreError> {
        let rows: Vec<RunRow> = sqlx::query_as(concat!(
            select_runs!(),
            "WHERE delivery_id = ?1 ORDER BY id"
        ))
        .bind(delivery_id)
        .fetch_all(&self.reader)
        .await?;
        rows.into_iter().map(Run::try_from).collect()
    }

    async fn run_events(&self, run_id: i64) -> Result<Vec<RunEvent>, StoreError> {
        let rows: Vec<(i64, Option<String>, i64, String, String)> = sqlx::query_as(
            "SELECT run_id, step, at, kind, detail FROM run_events WHERE run_id = ?1 ORDER BY id",
        )
        .bind(run_id)
        .fetch_all(&self.reader)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(run_id, step, at, kind, detail)| RunEvent {
                run_id,
                step,
                at,
                kind,
                detail,
            })
            .collect())
    }

    async fn attempts(&self, run_id: i64) -> Result<Vec<AttemptRow>, StoreError> {
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
             WHERE run_id = ?1 ORDER BY id",
        )
        .bind(run_id)
        .fetch_all(&self.reader)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| AttemptRow {
                run_id: r.0,
                step: r.1,
                number: r.2,
                agent: r.3,
                lease_token: r.4,
                started_at: r.5,
                finished_at: r.6,
                outcome: r.7,
                error_class: r.8,
                error: r.9,
                duration_ms: r.10,
                cost_usd: r.11,
                cost_estimated: r.12,
            })
            .collect())
    }

    async fn subject_runs_since(
        &self,
        repository: &str,
        number: i64,
        since: i64,
    ) -> Result<i64, StoreError> {
        // The dispatcher asks for every delivery that starts runs: on the
        // raw reader, like its other point lookups.
        let n = self
            .raw_read_row(
                "SELECT COUNT(*) FROM runs WHERE repository = ?1 AND subject_number = ?2 \
                 AND created_at >= ?3",
                (repository.to_owned(), number, since),
                |r| r.get::<_, i64>(0),
            )
            .await?;
        Ok(n.unwrap_or(0))
    }

    async fn list_runs(&self, filter: &crate::store::RunFilter) -> Result<Vec<Run>, StoreError> {
        api::list_runs(&self.reader, filter).await
    }

    async fn store_counts(&self) -> Result<crate::store::StoreCounts, StoreError> {
        api::store_counts(&self.reader).await
    }

    async fn agent_attempt_stats(
        &self,
        since: i64,
    ) -> Result<Vec<crate::store::AgentAttemptStats>, StoreError> {
        api::agent_attempt_stats(&self.reader, since).await
    }

    async fn list_deliveries(
        &self,
        filter: &crate::store::DeliveryFilter,
    ) -> Result<Vec<crate::store::DeliverySummary>, StoreError> {
        deliveries::list_deliveries(&self.reader, filter).await
    }

    async fn requeue_delivery(
        &self,
        delivery_id: &str,
        now: i64,
    ) -> Result<Option<DeliveryState>, StoreError> {
        deliveries::requeue_delivery(&mut *self.writer().await?, delivery_id, now).await
    }
}
