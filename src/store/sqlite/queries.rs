//! [`Tasks`] and [`Queries`]: the operator's records and views.

use super::*;
use crate::store::RepoName;
use crate::store::RunId;

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
        self.read(|conn| api::task(conn, id)).await
    }

    async fn tasks(
        &self,
        filter: &crate::store::TaskFilter,
    ) -> Result<Vec<crate::store::TaskRecord>, StoreError> {
        self.read(|conn| api::tasks(conn, filter)).await
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
        self.write(|conn| api::create_validation(conn, validation))
            .await
    }

    async fn validation(
        &self,
        id: i64,
    ) -> Result<Option<crate::store::ValidationRecord>, StoreError> {
        self.read(|conn| api::validation(conn, id)).await
    }

    async fn validations(
        &self,
        filter: &crate::store::ValidationFilter,
    ) -> Result<Vec<crate::store::ValidationRecord>, StoreError> {
        self.scan(|conn| api::validations(conn, filter)).await
    }
}

#[async_trait]
impl Queries for SqliteStore {
    async fn runs_for_delivery(&self, delivery_id: &str) -> Result<Vec<Run>, StoreError> {
        let rows: Vec<RunRow> = self
            .scan(|conn| {
                conn.all(
                    concat!(select_runs!(), "WHERE delivery_id = ?1 ORDER BY id"),
                    [delivery_id],
                )
            })
            .await?;
        rows.into_iter().map(Run::try_from).collect()
    }

    async fn run_events(&self, run_id: RunId) -> Result<Vec<RunEvent>, StoreError> {
        let run_id = run_id.0;
        let rows: Vec<(i64, Option<String>, i64, String, String)> = self
            .scan(|conn| {
                conn.all(
                    "SELECT run_id, step, at, kind, detail FROM run_events \
                     WHERE run_id = ?1 ORDER BY id",
                    [run_id],
                )
            })
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
        self.scan(|conn| {
            Ok(conn
                .prepare_cached(
                    "SELECT run_id, step, number, agent, lease_token, started_at, finished_at, \
                     outcome, error_class, error, duration_ms, cost_usd, cost_estimated \
                     FROM attempts WHERE run_id = ?1 ORDER BY id",
                )?
                .query_map([run_id], |r| {
                    Ok(AttemptRow {
                        run_id: r.get(0)?,
                        step: r.get(1)?,
                        number: r.get(2)?,
                        agent: r.get(3)?,
                        lease_token: r.get(4)?,
                        started_at: r.get(5)?,
                        finished_at: r.get(6)?,
                        outcome: r.get(7)?,
                        error_class: r.get(8)?,
                        error: r.get(9)?,
                        duration_ms: r.get(10)?,
                        cost_usd: r.get(11)?,
                        cost_estimated: r.get(12)?,
                    })
                })?
                .collect::<Result<_, _>>()?)
        })
        .await
    }

    async fn subject_runs_since(
        &self,
        repository: &RepoName,
        number: i64,
        since: i64,
    ) -> Result<i64, StoreError> {
        let repository = repository.clone();
        // The dispatcher asks for every delivery that starts runs: on the
        // reader, like its other point lookups.
        let n = self
            .read_row(
                "SELECT COUNT(*) FROM runs WHERE repository = ?1 AND subject_number = ?2 \
                 AND created_at >= ?3",
                (repository, number, since),
                |r| r.get::<_, i64>(0),
            )
            .await?;
        Ok(n.unwrap_or(0))
    }

    async fn list_runs(&self, filter: &crate::store::RunFilter) -> Result<Vec<Run>, StoreError> {
        self.scan(|conn| api::list_runs(conn, filter)).await
    }

    async fn store_counts(&self) -> Result<crate::store::StoreCounts, StoreError> {
        self.scan(api::store_counts).await
    }

    async fn agent_attempt_stats(
        &self,
        since: i64,
    ) -> Result<Vec<crate::store::AgentAttemptStats>, StoreError> {
        self.scan(|conn| api::agent_attempt_stats(conn, since))
            .await
    }

    async fn list_deliveries(
        &self,
        filter: &crate::store::DeliveryFilter,
    ) -> Result<Vec<crate::store::DeliverySummary>, StoreError> {
        self.scan(|conn| deliveries::list_deliveries(conn, filter))
            .await
    }

    async fn requeue_delivery(
        &self,
        delivery_id: &str,
        now: i64,
    ) -> Result<Option<DeliveryState>, StoreError> {
        self.write(|conn| deliveries::requeue_delivery(conn, delivery_id, now))
            .await
    }
}
