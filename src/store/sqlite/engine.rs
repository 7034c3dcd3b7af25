//! The engine's role ([`Runs`]): creating, planning, claiming and finishing runs' steps.

use super::*;

#[async_trait]
impl Runs for SqliteStore {
    async fn create_runs(&self, runs: &[NewRun]) -> Result<Vec<CreatedRun>, StoreError> {
        let now = now_ms();
        self.with_raw_writer(|conn| {
            let tx = conn.unchecked_transaction()?;
            let created = raw::create_runs(&tx, runs, now)?;
            tx.commit()?;
            Ok(created)
        })
        .await
    }

    async fn unplanned_runs(&self) -> Result<Vec<i64>, StoreError> {
        let rows: Vec<(i64,)> = sqlx::query_as(
            "SELECT r.id FROM runs r WHERE r.state = 'queued' \
             AND NOT EXISTS (SELECT 1 FROM steps s WHERE s.run_id = r.id AND s.state != 'pending') \
             ORDER BY r.id",
        )
        .fetch_all(&self.reader)
        .await?;
        Ok(rows.into_iter().map(|(id,)| id).collect())
    }

    async fn settle_run(
        &self,
        run_id: i64,
        planner: &dyn Planner,
    ) -> Result<Option<Plan>, StoreError> {
        let now = now_ms();
        self.with_raw_writer(|conn| {
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
        self.with_raw_writer(|conn| {
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
        let row: Option<(String,)> = sqlx::query_as(
            "UPDATE steps SET lease_expires_at = ?1 \
             WHERE id = ?2 AND lease_token = ?3 AND state = 'running' \
             RETURNING (SELECT desired_state FROM runs WHERE runs.id = steps.run_id)",
        )
        .bind(now_ms() + ttl.as_millis() as i64)
        .bind(lease.step_row)
        .bind(&lease.token)
        .fetch_optional(&mut *self.writer().await?)
        .await?;
        row.map(|(d,)| {
            DesiredState::parse(&d)
                .ok_or_else(|| corrupt("runs", format!("unknown desired state `{d}`")))
        })
        .transpose()
    }

    async fn renew_leases(
        &self,
        owner: &str,
        tokens: &[String],
        ttl: Duration,
    ) -> Result<Vec<(i64, String, DesiredState)>, StoreError> {
        if tokens.is_empty() {
            return Ok(Vec::new());
        }
        let tokens = serde_json::to_string(tokens).expect("strings serialize");
        let rows: Vec<(i64, String, String)> = sqlx::query_as(
            "UPDATE steps SET lease_expires_at = ?1 \
             WHERE state = 'running' AND lease_owner = ?2 \
               AND lease_token IN (SELECT value FROM json_each(?3)) \
             RETURNING id, lease_token, \
                 (SELECT desired_state FROM runs WHERE runs.id = steps.run_id)",
        )
        .bind(now_ms() + ttl.as_millis() as i64)
        .bind(owner)
        .bind(tokens)
        .fetch_all(&mut *self.writer().await?)
        .await?;
        rows.into_iter()
            .map(|(id, token, d)| {
                let desired = DesiredState::parse(&d)
                    .ok_or_else(|| corrupt("runs", format!("unknown desired state `{d}`")))?;
                Ok((id, token, desired))
            })
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
        self.with_raw_writer(|conn| {
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

    async fn reap_leases(&self, before: Option<i64>) -> Result<Vec<(i64, String)>, StoreError> {
        let now = now_ms();
        let mut writer = self.writer().await?;
        let mut tx = writer.begin_with("BEGIN IMMEDIATE").await?;
        let rows: Vec<(i64, i64, String)> = sqlx::query_as(
            "UPDATE steps SET state = 'ready', run_at = ?1, lease_owner = NULL, \
             lease_token = NULL, lease_expires_at = NULL \
             WHERE state = 'running' AND (?2 IS NULL OR lease_expires_at < ?2) \
             RETURNING id, run_id, step",
        )
        .bind(now)
        .bind(before)
        .fetch_all(&mut *tx)
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for (step_row, run_id, step) in rows {
            sqlx::query(
                "UPDATE attempts SET outcome = 'lost', finished_at = ?1, \
                 error = 'the lease expired before a result came back' \
                 WHERE step_row = ?2 AND outcome IS NULL",
            )
            .bind(now)
            .bind(step_row)
            .execute(&mut *tx)
            .await?;
            let why = if before.is_some() {
                "the lease expired (its worker stopped renewing it); the step is ready again"
            } else {
                "start-up recovery: the previous process stopped while the step ran; \
                 the step is ready again"
            };
            insert_event(&mut tx, run_id, Some(&step), now, "lease_expired", why).await?;
            out.push((run_id, step));
        }
        tx.commit().await?;
        Ok(out)
    }

    async fn expire_runs(&self, now: i64) -> Result<Vec<i64>, StoreError> {
        let mut writer = self.writer().await?;
        let mut tx = writer.begin_with("BEGIN IMMEDIATE").await?;
        let rows: Vec<(i64,)> = sqlx::query_as(
            "UPDATE runs SET desired_state = 'timed_out', \
             conclusion = 'the workflow''s time limit passed' \
             WHERE state IN ('queued', 'running', 'paused') AND deadline_at IS NOT NULL \
               AND deadline_at < ?1 AND desired_state IN ('running', 'paused') RETURNING id",
        )
        .bind(now)
        .fetch_all(&mut *tx)
        .await?;
        for (id,) in &rows {
            insert_event(
                &mut tx,
                *id,
                None,
                now,
                "run_timed_out",
                "the workflow's time limit passed; running attempts are aborted",
            )
            .await?;
        }
        tx.commit().await?;
        Ok(rows.into_iter().map(|(id,)| id).collect())
    }

    async fn stopping_runs(&self) -> Result<Vec<i64>, StoreError> {
        let rows: Vec<(i64,)> = sqlx::query_as(
            "SELECT id FROM runs WHERE state IN ('queued', 'running', 'paused') \
             AND desired_state IN ('cancelled', 'timed_out') ORDER BY id",
        )
        .fetch_all(&self.reader)
        .await?;
        Ok(rows.into_iter().map(|(id,)| id).collect())
    }

    async fn active_runs(&self) -> Result<Vec<i64>, StoreError> {
        let rows: Vec<(i64,)> = sqlx::query_as(
            "SELECT id FROM runs WHERE state IN ('queued', 'running', 'paused') ORDER BY id",
        )
        .fetch_all(&self.reader)
        .await?;
        Ok(rows.into_iter().map(|(id,)| id).collect())
    }

    async fn run(&self, run_id: i64) -> Result<Option<RunSnapshot>, StoreError> {
        let mut conn = self.reader.acquire().await?;
        load_snapshot(&mut conn, run_id).await
    }

    async fn step_estimates(&self, workflow: &str) -> Result<HashMap<String, i64>, StoreError> {
        let rows: Vec<(String, f64)> = sqlx::query_as(
            "SELECT step, AVG(duration_ms) FROM ( \
                 SELECT step, duration_ms FROM attempts \
                 WHERE workflow = ?1 AND outcome = 'succeeded' AND duration_ms IS NOT NULL \
                 ORDER BY id DESC LIMIT 500) GROUP BY step",
        )
        .bind(workflow)
        .fetch_all(&self.reader)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(step, ms)| (step, ms.round() as i64))
            .collect())
    }

    async fn record_checkout(
        &self,
        run_id: i64,
        step: &str,
        sha: &str,
        detail: &str,
    ) -> Result<(), StoreError> {
        let mut writer = self.writer().await?;
        let mut tx = writer.begin_with("BEGIN IMMEDIATE").await?;
        sqlx::query("UPDATE runs SET checkout_sha = COALESCE(checkout_sha, ?2) WHERE id = ?1")
            .bind(run_id)
            .bind(sha.to_owned())
            .execute(&mut *tx)
            .await?;
        insert_event(&mut tx, run_id, Some(step), now_ms(), "workspace", detail).await?;
        tx.commit().await?;
        Ok(())
    }
}
