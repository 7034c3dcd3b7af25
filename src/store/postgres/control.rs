//! [`RunControl`]: pause, resume, cancel, retry and approve.

use super::*;
use crate::store::RunId;

#[async_trait]
impl RunControl for PgStore {
    async fn pause_run(&self, run_id: RunId) -> Result<ControlOutcome, StoreError> {
        let run_id = run_id.0;
        self.control_transition(
            run_id,
            "UPDATE runs SET desired_state = 'paused', state = 'paused' \
             WHERE id = $1 AND desired_state = 'running' AND state IN ('queued', 'running')",
            "run_paused",
            "paused: no new step starts; running ones finish",
        )
        .await
    }

    async fn resume_run(&self, run_id: RunId) -> Result<ControlOutcome, StoreError> {
        let run_id = run_id.0;
        self.control_transition(
            run_id,
            "UPDATE runs SET desired_state = 'running', \
             state = CASE WHEN started_at IS NULL THEN 'queued' ELSE 'running' END \
             WHERE id = $1 AND desired_state = 'paused' AND state = 'paused'",
            "run_resumed",
            "resumed where it stood",
        )
        .await
    }

    async fn cancel_run(&self, run_id: RunId, reason: &str) -> Result<ControlOutcome, StoreError> {
        let run_id = run_id.0;
        self.cancel(run_id, reason, false).await
    }

    async fn stop_over_budget(
        &self,
        run_id: RunId,
        reason: &str,
    ) -> Result<ControlOutcome, StoreError> {
        let run_id = run_id.0;
        self.cancel(run_id, reason, true).await
    }

    async fn retry_run(
        &self,
        run_id: RunId,
        step: Option<&str>,
    ) -> Result<ControlOutcome, StoreError> {
        let run_id = run_id.0;
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        lock_runs(&mut tx, &[run_id]).await?;
        let Some(snapshot) = load_snapshot(&mut tx, run_id).await? else {
            return Ok(ControlOutcome::NotFound);
        };
        let chosen = match policy::retry_plan(&snapshot.steps, step) {
            policy::RetryPlan::NotFound => return Ok(ControlOutcome::NotFound),
            policy::RetryPlan::Unchanged => {
                tx.commit().await?;
                return Ok(ControlOutcome::Unchanged);
            }
            policy::RetryPlan::Reset(chosen) => chosen,
        };
        let mut names: Vec<&str> = Vec::new();
        for s in chosen {
            sqlx::query(
                "UPDATE steps SET state = 'pending', agent = primary_agent, agent_index = 0, \
                 agent_attempts = 0, run_at = $1, output = NULL, error = NULL, finished_at = NULL \
                 WHERE id = $2 AND state NOT IN ('running', 'pending')",
            )
            .bind(now)
            .bind(s.id)
            .execute(&mut *tx)
            .await?;
            names.push(&s.step);
        }
        if names.is_empty() {
            tx.commit().await?;
            return Ok(ControlOutcome::Unchanged);
        }
        sqlx::query(
            "UPDATE runs SET \
               state = CASE WHEN state = 'paused' THEN 'paused' \
                            WHEN waiting_approval THEN 'queued' ELSE 'running' END, \
               desired_state = CASE WHEN state = 'paused' THEN 'paused' ELSE 'running' END, \
               conclusion = NULL, finished_at = NULL WHERE id = $1",
        )
        .bind(run_id)
        .execute(&mut *tx)
        .await?;
        insert_event(
            &mut tx,
            run_id,
            None,
            now,
            "retry_requested",
            &format!("steps reset to pending: {}", names.join(", ")),
        )
        .await?;
        notify(&mut tx, CHANNEL_STEPS).await?;
        tx.commit().await?;
        Ok(ControlOutcome::Changed)
    }

    async fn approve_run(&self, run_id: RunId, by: &str) -> Result<ControlOutcome, StoreError> {
        let run_id = run_id.0;
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        // The run's time limit counts from its approval, not its creation.
        let changed = sqlx::query(
            "UPDATE runs SET waiting_approval = FALSE, approved_by = $2, \
               deadline_at = CASE WHEN deadline_at IS NULL THEN NULL \
                                  ELSE deadline_at + ($3 - created_at) END \
             WHERE id = $1 AND waiting_approval AND state = 'queued'",
        )
        .bind(run_id)
        .bind(by.to_owned())
        .bind(now)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        let outcome = control_outcome(
            &mut tx,
            changed,
            run_id,
            now,
            "run_approved",
            &format!("approved by @{by}: its steps may start"),
        )
        .await?;
        if outcome == ControlOutcome::Changed {
            notify(&mut tx, CHANNEL_STEPS).await?;
        }
        tx.commit().await?;
        Ok(outcome)
    }
}

impl PgStore {
    /// Asks a run to cancel with `reason`; `by_budget`: a budget stopped it
    /// (kept as `stopped_by_budget`, and the timeline says so).
    async fn cancel(
        &self,
        run_id: i64,
        reason: &str,
        by_budget: bool,
    ) -> Result<ControlOutcome, StoreError> {
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        let changed = sqlx::query(
            "UPDATE runs SET desired_state = 'cancelled', conclusion = $2, \
             stopped_by_budget = CASE WHEN $3 THEN $2 ELSE stopped_by_budget END \
             WHERE id = $1 AND state IN ('queued', 'running', 'paused') \
               AND desired_state IN ('running', 'paused')",
        )
        .bind(run_id)
        .bind(reason)
        .bind(by_budget)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        let event = if by_budget {
            "budget_exhausted"
        } else {
            "cancel_requested"
        };
        let outcome = control_outcome(&mut tx, changed, run_id, now, event, reason).await?;
        tx.commit().await?;
        Ok(outcome)
    }
}
