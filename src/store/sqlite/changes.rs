//! SQLite queries of runs' changes (see [`crate::store::changes`]). The
//! row type and its conversion are shared with the PostgreSQL store.

use crate::store::RunId;
use async_trait::async_trait;
use rusqlite::params;

use super::{SqliteStore, raw, sql::Sql};
use crate::store::changes::{
    ChangeState, ChangeStore, Publication, RunChange, change_event_detail, initial_state,
};
use crate::store::rows::ChangeRow;
use crate::store::{StoreError, now_ms};
use crate::workspace::Change;

/// `value` as stored JSON text.
pub(crate) fn json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("a change serializes")
}

#[async_trait]
impl ChangeStore for SqliteStore {
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
        self.write(|conn| {
            let tx = conn.unchecked_transaction()?;
            tx.exec(
                "INSERT INTO run_changes (run_id, step, change, files, state, refused, \
                 updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) \
                 ON CONFLICT (run_id) DO UPDATE SET step = excluded.step, \
                   change = excluded.change, files = excluded.files, state = excluded.state, \
                   refused = excluded.refused, attempts = 0, next_attempt_at = 0, \
                   last_error = NULL, updated_at = excluded.updated_at \
                 WHERE run_changes.state NOT IN ('published', 'dry_run')",
                params![
                    run_id,
                    step,
                    json(change),
                    change.files.len() as i64,
                    state.as_str(),
                    refused,
                    now
                ],
            )?;
            raw::insert_event(
                &tx,
                run_id,
                Some(step),
                now,
                "changes",
                &change_event_detail(change, refused),
            )?;
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn run_change(&self, run_id: RunId) -> Result<Option<RunChange>, StoreError> {
        let run_id = run_id.0;
        let row: Option<ChangeRow> = self
            .read(|conn| {
                conn.opt(
                    "SELECT run_id, step, change, state, refused, publication, attempts, \
                     next_attempt_at, last_error, updated_at FROM run_changes WHERE run_id = ?1",
                    [run_id],
                )
            })
            .await?;
        row.map(RunChange::try_from).transpose()
    }

    async fn changes_to_publish(&self, now: i64, limit: i64) -> Result<Vec<RunId>, StoreError> {
        let rows: Vec<(i64,)> = self
            .scan(|conn| {
                conn.all(
                    "SELECT c.run_id FROM run_changes c JOIN runs r ON r.id = c.run_id \
                     WHERE c.state = 'pending' AND c.next_attempt_at <= ?1 \
                       AND r.state = 'succeeded' \
                     ORDER BY c.run_id LIMIT ?2",
                    [now, limit],
                )
            })
            .await?;
        Ok(rows.into_iter().map(|(id,)| id).map(RunId).collect())
    }

    async fn save_publication(
        &self,
        run_id: RunId,
        publication: &Publication,
    ) -> Result<(), StoreError> {
        let run_id = run_id.0;
        let now = now_ms();
        self.write(|conn| {
            conn.exec(
                "UPDATE run_changes SET publication = ?2, updated_at = ?3 WHERE run_id = ?1",
                params![run_id, json(publication), now],
            )
        })
        .await
        .map(drop)
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
        self.write(|conn| {
            let tx = conn.unchecked_transaction()?;
            tx.exec(
                "UPDATE run_changes SET state = ?2, publication = ?3, last_error = ?4, \
                 updated_at = ?5 WHERE run_id = ?1",
                params![run_id, state.as_str(), json(publication), error, now],
            )?;
            raw::insert_event(&tx, run_id, None, now, "published", detail)?;
            // The run's report shows where its change went: send it again.
            tx.exec(
                "UPDATE run_reports SET reported_state = NULL WHERE run_id = ?1",
                [run_id],
            )?;
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn retry_publication(
        &self,
        run_id: RunId,
        error: &str,
        next_attempt_at: i64,
    ) -> Result<(), StoreError> {
        let run_id = run_id.0;
        let now = now_ms();
        self.write(|conn| {
            conn.exec(
                "UPDATE run_changes SET attempts = attempts + 1, last_error = ?2, \
                 next_attempt_at = ?3, updated_at = ?4 WHERE run_id = ?1",
                params![run_id, error, next_attempt_at, now],
            )
        })
        .await
        .map(drop)
    }
}
