//! PostgreSQL queries of runs' changes (see [`crate::store::changes`]);
//! the row type is SQLite's (`sqlite::changes::ChangeRow`).

use crate::store::RunId;
use async_trait::async_trait;

use super::{PgStore, insert_event};
use crate::store::changes::{
    ChangeState, ChangeStore, Publication, RunChange, change_event_detail, initial_state,
};
use crate::store::rows::ChangeRow;
use crate::store::sqlite::changes::json;
use crate::store::{StoreError, now_ms};
use crate::workspace::Change;

#[async_trait]
impl ChangeStore for PgStore {
    async fn record_change(
        &self,
        run_id: RunId,
        step: &str,
        change: &Change,
        refused: Option<&str>,
    ) -> Result<(), StoreError> {
        let run_id = run_id.0;
        let now = now_ms();
        let state = initial_state(change, refused);
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO run_changes (run_id, step, change, files, state, refused, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) \
             ON CONFLICT (run_id) DO UPDATE SET step = excluded.step, change = excluded.change, \
               files = excluded.files, state = excluded.state, refused = excluded.refused, \
               attempts = 0, next_attempt_at = 0, last_error = NULL, \
               updated_at = excluded.updated_at \
             WHERE run_changes.state NOT IN ('published', 'dry_run')",
        )
        .bind(run_id)
        .bind(step)
        .bind(json(change))
        .bind(change.files.len() as i64)
        .bind(state.as_str())
        .bind(refused)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        insert_event(
            &mut tx,
            run_id,
            Some(step),
            now,
            "changes",
            &change_event_detail(change, refused),
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn run_change(&self, run_id: RunId) -> Result<Option<RunChange>, StoreError> {
        let run_id = run_id.0;
        let row: Option<ChangeRow> = sqlx::query_as(
            "SELECT run_id, step, change, state, refused, publication, attempts, \
             next_attempt_at, last_error, updated_at FROM run_changes WHERE run_id = $1",
        )
        .bind(run_id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(RunChange::try_from).transpose()
    }

    async fn changes_to_publish(&self, now: i64, limit: i64) -> Result<Vec<RunId>, StoreError> {
        let rows: Vec<(i64,)> = sqlx::query_as(
            "SELECT c.run_id FROM run_changes c JOIN runs r ON r.id = c.run_id \
             WHERE c.state = 'pending' AND c.next_attempt_at <= $1 AND r.state = 'succeeded' \
             ORDER BY c.run_id LIMIT $2",
        )
        .bind(now)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(|(id,)| id).map(RunId).collect())
    }

    async fn save_publication(
        &self,
        run_id: RunId,
        publication: &Publication,
    ) -> Result<(), StoreError> {
        let run_id = run_id.0;
        sqlx::query("UPDATE run_changes SET publication = $2, updated_at = $3 WHERE run_id = $1")
            .bind(run_id)
            .bind(json(publication))
            .bind(now_ms())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn finish_publication(
        &self,
        run_id: RunId,
        state: ChangeState,
        publication: &Publication,
        error: Option<&str>,
        detail: &str,
    ) -> Result<(), StoreError> {
        let run_id = run_id.0;
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "UPDATE run_changes SET state = $2, publication = $3, last_error = $4, \
             updated_at = $5 WHERE run_id = $1",
        )
        .bind(run_id)
        .bind(state.as_str())
        .bind(json(publication))
        .bind(error)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        insert_event(&mut tx, run_id, None, now, "published", detail).await?;
        // The run's report shows where its change went: send it again.
        sqlx::query("UPDATE run_reports SET reported_state = NULL WHERE run_id = $1")
            .bind(run_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn retry_publication(
        &self,
        run_id: RunId,
        error: &str,
        next_attempt_at: i64,
    ) -> Result<(), StoreError> {
        let run_id = run_id.0;
        sqlx::query(
            "UPDATE run_changes SET attempts = attempts + 1, last_error = $2, \
             next_attempt_at = $3, updated_at = $4 WHERE run_id = $1",
        )
        .bind(run_id)
        .bind(error)
        .bind(next_attempt_at)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}
