//! [`RunControl`]: pause, resume, cancel, retry and approve.

use super::*;
use crate::store::RunId;

#[async_trait]
impl RunControl for SqliteStore {
    async fn pause_run(&self, run_id: RunId) -> Result<ControlOutcome, StoreError> {
        let run_id = run_id.0;
        self.control_transition(
            run_id,
            "UPDATE runs SET desired_state = 'paused', state = 'paused' \
             WHERE id = ?1 AND desired_state = 'running' AND state IN ('queued', 'running')",
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
             WHERE id = ?1 AND desired_state = 'paused' AND state = 'paused'",
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
        self.write(|conn| {
            let tx = conn.unchecked_transaction()?;
            let Some(snapshot) = raw::load_snapshot(&tx, run_id)? else {
                return Ok(ControlOutcome::NotFound);
            };
            let chosen = match policy::retry_plan(&snapshot.steps, step) {
                policy::RetryPlan::NotFound => return Ok(ControlOutcome::NotFound),
                policy::RetryPlan::Unchanged => return Ok(ControlOutcome::Unchanged),
                policy::RetryPlan::Reset(chosen) => chosen,
            };
            let mut names: Vec<&str> = Vec::new();
            for s in chosen {
                tx.exec(
                    "UPDATE steps SET state = 'pending', agent = primary_agent, agent_index = 0, \
                     agent_attempts = 0, run_at = ?1, output = NULL, error = NULL, \
                     finished_at = NULL \
                     WHERE id = ?2 AND state NOT IN ('running', 'pending')",
                    params![now, s.id],
                )?;
                names.push(&s.step);
            }
            if names.is_empty() {
                return Ok(ControlOutcome::Unchanged);
            }
            tx.exec(
                "UPDATE runs SET \
                   state = CASE WHEN state = 'paused' THEN 'paused' \
                                WHEN waiting_approval = 1 THEN 'queued' ELSE 'running' END, \
                   desired_state = CASE WHEN state = 'paused' THEN 'paused' ELSE 'running' END, \
                   conclusion = NULL, finished_at = NULL WHERE id = ?1",
                [run_id],
            )?;
            raw::insert_event(
                &tx,
                run_id,
                None,
                now,
                "retry_requested",
                &format!("steps reset to pending: {}", names.join(", ")),
            )?;
            tx.commit()?;
            Ok(ControlOutcome::Changed)
        })
        .await
    }

    async fn approve_run(&self, run_id: RunId, by: &str) -> Result<ControlOutcome, StoreError> {
        let run_id = run_id.0;
        let now = now_ms();
        self.write(|conn| {
            let tx = conn.unchecked_transaction()?;
            // The run's time limit counts from its approval, not its creation.
            let changed = tx.exec(
                "UPDATE runs SET waiting_approval = 0, approved_by = ?2, \
                   deadline_at = CASE WHEN deadline_at IS NULL THEN NULL \
                                      ELSE deadline_at + (?3 - created_at) END \
                 WHERE id = ?1 AND waiting_approval = 1 AND state = 'queued'",
                params![run_id, by, now],
            )?;
            let outcome = control_outcome(
                &tx,
                changed,
                run_id,
                now,
                "run_approved",
                &format!("approved by @{by}: its steps may start"),
            )?;
            tx.commit()?;
            Ok(outcome)
        })
        .await
    }
}

impl SqliteStore {
    /// Asks a run to cancel with `reason`; `by_budget`: a budget stopped it
    /// (kept as `stopped_by_budget`, and the timeline says so).
    async fn cancel(
        &self,
        run_id: i64,
        reason: &str,
        by_budget: bool,
    ) -> Result<ControlOutcome, StoreError> {
        let now = now_ms();
        let event = if by_budget {
            "budget_exhausted"
        } else {
            "cancel_requested"
        };
        self.write(|conn| {
            let tx = conn.unchecked_transaction()?;
            let changed = tx.exec(
                "UPDATE runs SET desired_state = 'cancelled', conclusion = ?2, \
                 stopped_by_budget = CASE WHEN ?3 THEN ?2 ELSE stopped_by_budget END \
                 WHERE id = ?1 AND state IN ('queued', 'running', 'paused') \
                   AND desired_state IN ('running', 'paused')",
                params![run_id, reason, by_budget],
            )?;
            let outcome = control_outcome(&tx, changed, run_id, now, event, reason)?;
            tx.commit()?;
            Ok(outcome)
        })
        .await
    }
}
