//! [`Reports`] and [`Effects`]: what the outbox reads and records.

use super::*;
use crate::store::{InstallationId, RepoName, RunId};

#[async_trait]
impl Reports for PgStore {
    async fn report_candidates(
        &self,
        now: i64,
        limit: i64,
    ) -> Result<Vec<ReportCandidate>, StoreError> {
        #[allow(clippy::type_complexity)]
        let rows: Vec<(
            i64,
            i64,
            Option<i64>,
            Option<String>,
            Option<String>,
            Option<i64>,
            Option<i64>,
        )> = sqlx::query_as(
            "SELECT r.id, d.installation_id, rr.check_run_id, rr.reported_fingerprint, \
             rr.gave_up_fingerprint, rr.reported_at, rr.attempts \
             FROM runs r JOIN deliveries d ON d.delivery_id = r.delivery_id \
             LEFT JOIN run_reports rr ON rr.run_id = r.id \
             WHERE d.installation_id IS NOT NULL AND r.repository IS NOT NULL \
             AND r.subject_number IS NOT NULL \
             AND (rr.run_id IS NULL OR rr.reported_state IS NULL \
                  OR rr.reported_state <> r.state \
                  OR (r.state IN ('queued', 'running', 'paused') \
                      AND (rr.reported_at < $1 - 60000 OR EXISTS ( \
                      SELECT 1 FROM steps s WHERE s.run_id = r.id \
                      AND (s.started_at >= rr.reported_at OR s.finished_at >= rr.reported_at))))) \
             AND COALESCE(rr.next_attempt_at, 0) <= $1 \
             ORDER BY (rr.reported_state IS NULL) DESC, r.id LIMIT $2",
        )
        .bind(now)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| ReportCandidate {
                run_id: RunId(r.0),
                installation_id: InstallationId(r.1),
                check_run_id: r.2,
                reported_fingerprint: r.3,
                gave_up_fingerprint: r.4,
                reported_at: r.5,
                attempts: r.6.unwrap_or(0),
            })
            .collect())
    }

    async fn unreported_runs(
        &self,
        after_run_id: RunId,
        limit: i64,
    ) -> Result<Vec<ReportCandidate>, StoreError> {
        let after_run_id = after_run_id.0;
        let rows: Vec<(i64, i64)> = sqlx::query_as(
            "SELECT r.id, d.installation_id \
             FROM runs r JOIN deliveries d ON d.delivery_id = r.delivery_id \
             WHERE r.id > $1 \
             AND d.installation_id IS NOT NULL AND r.repository IS NOT NULL \
             AND r.subject_number IS NOT NULL \
             AND NOT EXISTS (SELECT 1 FROM run_reports rr WHERE rr.run_id = r.id) \
             ORDER BY r.id LIMIT $2",
        )
        .bind(after_run_id)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(run_id, installation_id)| {
                ReportCandidate::unreported(RunId(run_id), InstallationId(installation_id))
            })
            .collect())
    }

    async fn record_check_run(&self, run_id: RunId, check_run_id: i64) -> Result<(), StoreError> {
        let run_id = run_id.0;
        sqlx::query(
            "INSERT INTO run_reports (run_id, check_run_id) VALUES ($1, $2) \
             ON CONFLICT (run_id) DO UPDATE SET check_run_id = EXCLUDED.check_run_id",
        )
        .bind(run_id)
        .bind(check_run_id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn record_report(
        &self,
        run_id: RunId,
        outcome: &ReportOutcome,
    ) -> Result<(), StoreError> {
        let run_id = run_id.0;
        let query = match outcome {
            ReportOutcome::Reported {
                fingerprint,
                state,
                observed_at,
            } => sqlx::query(
                "INSERT INTO run_reports (run_id, reported_fingerprint, reported_state, \
                 reported_at, attempts, next_attempt_at, last_error) \
                 VALUES ($1, $2, $3, $4, 0, 0, NULL) \
                 ON CONFLICT (run_id) DO UPDATE SET \
                 reported_fingerprint = EXCLUDED.reported_fingerprint, \
                 reported_state = EXCLUDED.reported_state, reported_at = EXCLUDED.reported_at, \
                 attempts = 0, next_attempt_at = 0, last_error = NULL",
            )
            .bind(run_id)
            .bind(fingerprint.clone())
            .bind(state.clone())
            .bind(*observed_at),
            ReportOutcome::Retry {
                error,
                next_attempt_at,
            } => sqlx::query(
                "INSERT INTO run_reports (run_id, attempts, next_attempt_at, last_error) \
                 VALUES ($1, 1, $2, $3) \
                 ON CONFLICT (run_id) DO UPDATE SET attempts = run_reports.attempts + 1, \
                 next_attempt_at = EXCLUDED.next_attempt_at, last_error = EXCLUDED.last_error",
            )
            .bind(run_id)
            .bind(*next_attempt_at)
            .bind(error.clone()),
            ReportOutcome::GaveUp { fingerprint, error } => sqlx::query(
                "INSERT INTO run_reports (run_id, gave_up_fingerprint, attempts, last_error) \
                 VALUES ($1, $2, 1, $3) \
                 ON CONFLICT (run_id) DO UPDATE SET \
                 gave_up_fingerprint = EXCLUDED.gave_up_fingerprint, \
                 attempts = run_reports.attempts + 1, next_attempt_at = 0, \
                 last_error = EXCLUDED.last_error",
            )
            .bind(run_id)
            .bind(fingerprint.clone())
            .bind(error.clone()),
        };
        query.execute(&self.pool).await?;
        Ok(())
    }

    async fn sticky_comment(
        &self,
        repository: &RepoName,
        number: i64,
    ) -> Result<Option<i64>, StoreError> {
        let row: Option<(i64,)> = sqlx::query_as(
            "SELECT comment_id FROM sticky_comments WHERE repository = $1 AND subject_number = $2",
        )
        .bind(repository)
        .bind(number)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| r.0))
    }

    async fn set_sticky_comment(
        &self,
        repository: &RepoName,
        number: i64,
        comment_id: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO sticky_comments (repository, subject_number, comment_id) \
             VALUES ($1, $2, $3) ON CONFLICT (repository, subject_number) \
             DO UPDATE SET comment_id = EXCLUDED.comment_id",
        )
        .bind(repository)
        .bind(number)
        .bind(comment_id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn subject_runs(
        &self,
        repository: &RepoName,
        number: i64,
        limit: i64,
    ) -> Result<Vec<RunId>, StoreError> {
        let rows: Vec<(i64,)> = sqlx::query_as(
            "SELECT id FROM runs WHERE repository = $1 AND subject_number = $2 \
             ORDER BY id DESC LIMIT $3",
        )
        .bind(repository)
        .bind(number)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(|r| r.0).map(RunId).collect())
    }

    async fn runs_for_commit(
        &self,
        repository: &RepoName,
        head_sha: &str,
    ) -> Result<Vec<RunId>, StoreError> {
        let rows: Vec<(i64,)> = sqlx::query_as(
            "SELECT id FROM runs WHERE repository = $1 AND head_sha = $2 ORDER BY id",
        )
        .bind(repository)
        .bind(head_sha.to_owned())
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(|r| r.0).map(RunId).collect())
    }
}

#[async_trait]
impl Effects for PgStore {
    async fn enqueue_effects(&self, effects: &[NewEffect]) -> Result<u64, StoreError> {
        if effects.is_empty() {
            return Ok(0);
        }
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        let mut added = 0;
        for effect in effects {
            added += sqlx::query(
                "INSERT INTO github_effects (source, seq, installation_id, repository, kind, \
                 target, body, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
                 ON CONFLICT (source, seq) DO NOTHING",
            )
            .bind(effect.source.clone())
            .bind(effect.seq)
            .bind(effect.installation_id)
            .bind(effect.repository.clone())
            .bind(effect.kind.as_str())
            .bind(effect.target)
            .bind(effect.body.clone())
            .bind(now)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        }
        tx.commit().await?;
        Ok(added)
    }

    async fn due_effects(&self, now: i64, limit: i64) -> Result<Vec<Effect>, StoreError> {
        let rows: Vec<EffectRow> = sqlx::query_as(
            "SELECT id, source, seq, installation_id, repository, kind, target, body, state, \
             attempts, last_error, created_at FROM ( \
               SELECT *, ROW_NUMBER() OVER ( \
                 PARTITION BY COALESCE(installation_id, 0) ORDER BY id) AS turn \
               FROM github_effects WHERE state = 'pending' AND next_attempt_at <= $1) e \
             WHERE turn <= $3 ORDER BY turn, id LIMIT $2",
        )
        .bind(now)
        .bind(limit)
        .bind(crate::store::EFFECT_TURNS)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(Effect::try_from).collect()
    }

    async fn finish_effect(&self, id: i64, outcome: &EffectOutcome) -> Result<(), StoreError> {
        let now = now_ms();
        let query = match outcome {
            EffectOutcome::Sent | EffectOutcome::DryRun => sqlx::query(
                "UPDATE github_effects SET state = $2, sent_at = $3, last_error = NULL \
                 WHERE id = $1",
            )
            .bind(id)
            .bind(if *outcome == EffectOutcome::Sent {
                EffectState::Sent.as_str()
            } else {
                EffectState::DryRun.as_str()
            })
            .bind(now),
            EffectOutcome::Retry { error, retry_at } => sqlx::query(
                "UPDATE github_effects SET attempts = attempts + 1, last_error = $2, \
                 next_attempt_at = $3 WHERE id = $1",
            )
            .bind(id)
            .bind(error.clone())
            .bind(*retry_at),
            EffectOutcome::Failed(error) => sqlx::query(
                "UPDATE github_effects SET state = 'failed', attempts = attempts + 1, \
                 last_error = $2 WHERE id = $1",
            )
            .bind(id)
            .bind(error.clone()),
        };
        query.execute(&self.pool).await?;
        Ok(())
    }

    async fn effects_for(&self, source: &str) -> Result<Vec<Effect>, StoreError> {
        let rows: Vec<EffectRow> = sqlx::query_as(
            "SELECT id, source, seq, installation_id, repository, kind, target, body, state, \
             attempts, last_error, created_at FROM github_effects WHERE source = $1 ORDER BY seq",
        )
        .bind(source.to_owned())
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(Effect::try_from).collect()
    }
}
