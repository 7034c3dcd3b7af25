//! The engine's role ([`Runs`]): creating, planning, claiming and finishing runs' steps.

use super::*;
use crate::store::RunId;

/// `desired_state` as stored, or [`StoreError::Corrupt`].
fn desired(d: &str) -> Result<DesiredState, StoreError> {
    DesiredState::parse(d).ok_or_else(|| corrupt("runs", format!("unknown desired state `{d}`")))
}

#[async_trait]
impl Runs for SqliteStore {
    async fn create_runs(&self, runs: &[NewRun]) -> Result<Vec<CreatedRun>, StoreError> {
        let now = now_ms();
        self.write(|conn| {
            let tx = conn.unchecked_transaction()?;
            let created = raw::create_runs(&tx, runs, now)?;
            tx.commit()?;
            Ok(created)
        })
        .await
    }

    async fn unplanned_runs(&self) -> Result<Vec<RunId>, StoreError> {
        let rows: Vec<(i64,)> = self
            .scan(|conn| {
                conn.all(
                    "SELECT r.id FROM runs r WHERE r.state = 'queued' \
                     AND NOT EXISTS (SELECT 1 FROM steps s \
                                     WHERE s.run_id = r.id AND s.state != 'pending') \
                     ORDER BY r.id",
                    [],
                )
            })
            .await?;
        Ok(rows.into_iter().map(|(id,)| id).map(RunId).collect())
    }

    async fn settle_run(
        &self,
        run_id: RunId,
        planner: &dyn Planner,
    ) -> Result<Option<Plan>, StoreError> {
        let run_id = run_id.0;
        let now = now_ms();
        self.write(|conn| {
            let tx = conn.unchecked_transaction()?;
            let plan = raw::settle(&tx, run_id, planner, now)?;
            tx.commit()?;
            Ok(plan)
        })
        .await
    }

    async fn claim_steps(
        &self,
        owner: &str,
        limits: &ClaimLimits,
    ) -> Result<Vec<ClaimedStep>, StoreError> {
        if limits.max == 0 {
            return Ok(Vec::new());
        }
        let now = now_ms();
        self.write(|conn| {
            let tx = conn.unchecked_transaction()?;
            let claimed = raw::claim_steps(&tx, owner, limits, now)?;
            tx.commit()?;
            Ok(claimed)
        })
        .await
    }

    async fn renew_lease(
        &self,
        lease: &Lease,
        ttl: Duration,
    ) -> Result<Option<DesiredState>, StoreError> {
        let expires = now_ms() + ttl.as_millis() as i64;
        let row: Option<(String,)> = self
            .write(|conn| {
                conn.opt(
                    "UPDATE steps SET lease_expires_at = ?1 \
                     WHERE id = ?2 AND lease_token = ?3 AND state = 'running' \
                     RETURNING (SELECT desired_state FROM runs WHERE runs.id = steps.run_id)",
                    params![expires, lease.step_row, lease.token],
                )
            })
            .await?;
        row.map(|(d,)| desired(&d)).transpose()
    }

    async fn renew_leases(
        &self,
        owner: &str,
        tokens: &[String],
        ttl: Duration,
    ) -> Result<Vec<(crate::store::StepId, String, DesiredState)>, StoreError> {
        if tokens.is_empty() {
            return Ok(Vec::new());
        }
        let tokens = serde_json::to_string(tokens).expect("strings serialize");
        let expires = now_ms() + ttl.as_millis() as i64;
        let rows: Vec<(i64, String, String)> = self
            .write(|conn| {
                conn.all(
                    "UPDATE steps SET lease_expires_at = ?1 \
                     WHERE state = 'running' AND lease_owner = ?2 \
                       AND lease_token IN (SELECT value FROM json_each(?3)) \
                     RETURNING id, lease_token, \
                         (SELECT desired_state FROM runs WHERE runs.id = steps.run_id)",
                    params![expires, owner, tokens],
                )
            })
            .await?;
        rows.into_iter()
            .map(|(id, token, d)| Ok((crate::store::StepId(id), token, desired(&d)?)))
            .collect()
    }

    async fn finish_steps(
        &self,
        batch: &[StepFinish],
        planner: &dyn Planner,
    ) -> Result<Vec<Option<Plan>>, StoreError> {
        // No slot to claim: the results alone, in one transaction.
        let (plans, _) = self
            .finish_and_claim(batch, planner, "", &ClaimLimits::default())
            .await?;
        Ok(plans)
    }

    /// One transaction: the results, then (in a savepoint, so a failed claim
    /// keeps the results) the claim.
    async fn finish_and_claim(
        &self,
        batch: &[StepFinish],
        planner: &dyn Planner,
        owner: &str,
        limits: &ClaimLimits,
    ) -> Result<(Vec<Option<Plan>>, Option<Vec<ClaimedStep>>), StoreError> {
        let now = now_ms();
        self.write(|conn| {
            let mut tx = conn.unchecked_transaction()?;
            let mut plans = Vec::with_capacity(batch.len());
            for f in batch {
                plans.push(raw::finish(&tx, f, planner, now)?);
            }
            let mut claimed = None;
            if limits.max > 0 {
                let sp = tx.savepoint()?;
                match raw::claim_steps(&sp, owner, limits, now) {
                    Ok(c) => {
                        sp.commit()?;
                        claimed = Some(c);
                    }
                    Err(e) => {
                        drop(sp);
                        tracing::warn!(error = %e, "claim after recording results failed; the scheduler will claim");
                    }
                }
            }
            tx.commit()?;
            Ok((plans, claimed))
        })
        .await
    }

    async fn reap_leases(&self, before: Option<i64>) -> Result<Vec<(RunId, String)>, StoreError> {
        let now = now_ms();
        self.write(|conn| {
            let tx = conn.unchecked_transaction()?;
            let rows: Vec<(i64, i64, String)> = tx.all(
                "UPDATE steps SET state = 'ready', run_at = ?1, lease_owner = NULL, \
                 lease_token = NULL, lease_expires_at = NULL \
                 WHERE state = 'running' AND (?2 IS NULL OR lease_expires_at < ?2) \
                 RETURNING id, run_id, step",
                params![now, before],
            )?;
            let why = if before.is_some() {
                "the lease expired (its worker stopped renewing it); the step is ready again"
            } else {
                "start-up recovery: the previous process stopped while the step ran; \
                 the step is ready again"
            };
            let mut out = Vec::with_capacity(rows.len());
            for (step_row, run_id, step) in rows {
                tx.exec(
                    "UPDATE attempts SET outcome = 'lost', finished_at = ?1, \
                     error = 'the lease expired before a result came back' \
                     WHERE step_row = ?2 AND outcome IS NULL",
                    params![now, step_row],
                )?;
                raw::insert_event(&tx, run_id, Some(&step), now, "lease_expired", why)?;
                out.push((run_id, step));
            }
            tx.commit()?;
            Ok(out.into_iter().map(|(r, s)| (RunId(r), s)).collect())
        })
        .await
    }

    async fn expire_runs(&self, now: i64) -> Result<Vec<RunId>, StoreError> {
        self.write(|conn| {
            let tx = conn.unchecked_transaction()?;
            let rows: Vec<(i64,)> = tx.all(
                "UPDATE runs SET desired_state = 'timed_out', \
                 conclusion = 'the workflow''s time limit passed' \
                 WHERE state IN ('queued', 'running', 'paused') AND deadline_at IS NOT NULL \
                   AND deadline_at < ?1 AND desired_state IN ('running', 'paused') RETURNING id",
                [now],
            )?;
            for (id,) in &rows {
                raw::insert_event(
                    &tx,
                    *id,
                    None,
                    now,
                    "run_timed_out",
                    "the workflow's time limit passed; running attempts are aborted",
                )?;
            }
            tx.commit()?;
            Ok(rows.into_iter().map(|(id,)| id).map(RunId).collect())
        })
        .await
    }

    async fn stopping_runs(&self) -> Result<Vec<RunId>, StoreError> {
        let rows: Vec<(i64,)> = self
            .scan(|conn| {
                conn.all(
                    "SELECT id FROM runs WHERE state IN ('queued', 'running', 'paused') \
                     AND desired_state IN ('cancelled', 'timed_out') ORDER BY id",
                    [],
                )
            })
            .await?;
        Ok(rows.into_iter().map(|(id,)| id).map(RunId).collect())
    }

    async fn active_runs(&self) -> Result<Vec<RunId>, StoreError> {
        let rows: Vec<(i64,)> = self
            .scan(|conn| {
                conn.all(
                    "SELECT id FROM runs WHERE state IN ('queued', 'running', 'paused') \
                     ORDER BY id",
                    [],
                )
            })
            .await?;
        Ok(rows.into_iter().map(|(id,)| id).map(RunId).collect())
    }

    async fn run(&self, run_id: RunId) -> Result<Option<RunSnapshot>, StoreError> {
        let run_id = run_id.0;
        self.read(|conn| raw::load_snapshot(conn, run_id)).await
    }

    async fn record_checkout(
        &self,
        run_id: RunId,
        step: &str,
        sha: &str,
        detail: &str,
    ) -> Result<(), StoreError> {
        let run_id = run_id.0;
        let now = now_ms();
        self.write(|conn| {
            let tx = conn.unchecked_transaction()?;
            tx.exec(
                "UPDATE runs SET checkout_sha = COALESCE(checkout_sha, ?2) WHERE id = ?1",
                params![run_id, sha],
            )?;
            raw::insert_event(&tx, run_id, Some(step), now, "workspace", detail)?;
            tx.commit()?;
            Ok(())
        })
        .await
    }
}
