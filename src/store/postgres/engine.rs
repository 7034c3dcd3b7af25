//! The engine's role ([`Runs`]): creating, planning, claiming and finishing runs' steps.

use super::*;
use crate::store::RunId;

#[async_trait]
impl Runs for PgStore {
    async fn create_runs(&self, runs: &[NewRun]) -> Result<Vec<CreatedRun>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let created = create_runs_in(&mut tx, runs, now_ms()).await?;
        if created.iter().any(|c| c.created) {
            notify(&mut tx, CHANNEL_STEPS).await?;
        }
        tx.commit().await?;
        Ok(created)
    }

    async fn unplanned_runs(&self) -> Result<Vec<RunId>, StoreError> {
        let rows: Vec<(i64,)> = sqlx::query_as(
            "SELECT r.id FROM runs r WHERE r.state = 'queued' \
             AND NOT EXISTS (SELECT 1 FROM steps s WHERE s.run_id = r.id AND s.state <> 'pending') \
             ORDER BY r.id",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(|(id,)| id).map(RunId).collect())
    }

    async fn settle_run(
        &self,
        run_id: RunId,
        planner: &dyn Planner,
    ) -> Result<Option<Plan>, StoreError> {
        let run_id = run_id.0;
        let mut tx = self.pool.begin().await?;
        lock_runs(&mut tx, &[run_id]).await?;
        let plan = settle_in(&mut tx, run_id, planner, now_ms()).await?;
        tx.commit().await?;
        Ok(plan)
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
        let lease_now = self.lease_now().await?;
        let mut tx = self.pool.begin().await?;
        if !limits.per_agent.is_empty() {
            // An agent's concurrency is database-wide (an AgentAPI server
            // serves one conversation, whichever replica asks): claims that
            // count running steps per agent take turns, so two replicas
            // cannot both fill the last slot. Held until this commit.
            sqlx::query("SELECT pg_advisory_xact_lock(hashtext(current_schema()), $1)")
                .bind(LOCK_AGENT_CLAIMS)
                .execute(&mut *tx)
                .await?;
        }
        // Candidates in service order, each with its run, locked without
        // waiting: rows another claimer (or a finisher, holding the run)
        // has locked are skipped, so no step is handed out twice and
        // `max_parallel` is counted under the run's lock.
        let rows: Vec<(i64, i64, String, Option<i64>, String, String)> = sqlx::query_as(
            "SELECT s.id, s.run_id, s.agent, r.max_parallel, r.workflow, r.delivery_id \
             FROM steps s JOIN runs r ON r.id = s.run_id \
             WHERE s.state = 'ready' AND s.run_at <= $1 \
               AND (r.desired_state = 'running' \
                    OR (r.desired_state = 'cancelled' AND s.runs_when_cancelled)) \
               AND r.state IN ('queued', 'running') \
               AND NOT r.waiting_approval \
               AND (r.concurrency_group IS NULL OR NOT EXISTS ( \
                    SELECT 1 FROM runs o WHERE o.concurrency_group = r.concurrency_group \
                      AND o.id < r.id AND o.state IN ('queued', 'running', 'paused') \
                      AND NOT o.waiting_approval)) \
             ORDER BY r.priority DESC, r.id, s.priority DESC, s.id LIMIT $2 \
             FOR NO KEY UPDATE OF s, r SKIP LOCKED",
        )
        .bind(now)
        .bind((limits.max * 4 + 64) as i64)
        .fetch_all(&mut *tx)
        .await?;
        let candidates: Vec<policy::ClaimCandidate> = rows
            .into_iter()
            .map(
                |(step_row, run_id, agent, max_parallel, workflow, delivery_id)| {
                    policy::ClaimCandidate {
                        step_row,
                        run_id,
                        agent,
                        max_parallel,
                        workflow,
                        delivery_id,
                    }
                },
            )
            .collect();
        if candidates.is_empty() {
            tx.commit().await?;
            return Ok(Vec::new());
        }
        // Per-agent limits count every replica's running steps.
        let mut per_agent: HashMap<String, i64> = HashMap::new();
        if !limits.per_agent.is_empty() {
            let rows: Vec<(String, i64)> = sqlx::query_as(
                "SELECT agent, COUNT(*) FROM steps WHERE state = 'running' GROUP BY agent",
            )
            .fetch_all(&mut *tx)
            .await?;
            per_agent.extend(rows);
        }
        // Running steps of the runs with a `max_parallel` (locked above), in
        // one query.
        let runs = policy::Admission::runs_to_count(&candidates);
        let per_run: HashMap<i64, i64> = if runs.is_empty() {
            HashMap::new()
        } else {
            sqlx::query_as::<_, (i64, i64)>(
                "SELECT run_id, COUNT(*) FROM steps WHERE state = 'running' \
                 AND run_id = ANY($1) GROUP BY run_id",
            )
            .bind(&runs)
            .fetch_all(&mut *tx)
            .await?
            .into_iter()
            .collect()
        };
        let mut admission = policy::Admission::new(limits, per_agent, per_run);
        let mut claimed = Vec::new();
        for candidate in candidates {
            if admission.full() {
                break;
            }
            if !admission.admits(&candidate) {
                continue;
            }
            let token = uuid::Uuid::new_v4().simple().to_string();
            let refused = limits.refused_agents.contains(&candidate.agent);
            // Claim, and count the attempt unless the agent is refused, in
            // one statement.
            let row: Option<StepRow> = sqlx::query_as(concat!(
                "UPDATE steps SET state = 'running', lease_owner = $1, lease_token = $2, \
                 lease_expires_at = $3, started_at = COALESCE(started_at, $4), \
                 attempts = attempts + $6, agent_attempts = agent_attempts + $6 \
                 WHERE id = $5 AND state = 'ready' RETURNING ",
                step_columns!()
            ))
            .bind(owner)
            .bind(&token)
            .bind(lease_now + limits.lease.as_millis() as i64)
            .bind(now)
            .bind(candidate.step_row)
            .bind(if refused { 0i64 } else { 1 })
            .fetch_optional(&mut *tx)
            .await?;
            let Some(row) = row else { continue };
            admission.claimed(&candidate);
            let policy::ClaimCandidate {
                step_row,
                run_id,
                agent,
                workflow,
                delivery_id,
                ..
            } = candidate;
            let started = sqlx::query(
                "UPDATE runs SET state = 'running', started_at = COALESCE(started_at, $1) \
                 WHERE id = $2 AND state = 'queued'",
            )
            .bind(now)
            .bind(run_id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if started == 1 {
                insert_event(
                    &mut tx,
                    run_id,
                    None,
                    now,
                    "run_started",
                    "first step claimed",
                )
                .await?;
            }
            let step: StepRecord = row.try_into()?;
            let attempt = if refused {
                None
            } else {
                let number = step.attempts;
                sqlx::query(
                    "INSERT INTO attempts (step_row, run_id, workflow, step, number, agent, \
                     lease_token, started_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                )
                .bind(step_row)
                .bind(run_id)
                .bind(&workflow)
                .bind(&step.step)
                .bind(number)
                .bind(&agent)
                .bind(&token)
                .bind(now)
                .execute(&mut *tx)
                .await?;
                insert_event(
                    &mut tx,
                    run_id,
                    Some(&step.step),
                    now,
                    "attempt_started",
                    &format!("attempt {number} on agent `{agent}`"),
                )
                .await?;
                Some(number)
            };
            claimed.push(ClaimedStep {
                step,
                workflow,
                delivery_id,
                lease: Lease {
                    step_row: crate::store::StepId(step_row),
                    owner: owner.to_owned(),
                    token,
                },
                attempt,
                run_started: started == 1,
            });
        }
        tx.commit().await?;
        Ok(claimed)
    }

    async fn renew_lease(
        &self,
        lease: &Lease,
        ttl: Duration,
    ) -> Result<Option<DesiredState>, StoreError> {
        let row: Option<(String,)> = sqlx::query_as(
            "UPDATE steps SET lease_expires_at = $1 FROM runs \
             WHERE steps.id = $2 AND steps.lease_token = $3 AND steps.state = 'running' \
               AND runs.id = steps.run_id \
             RETURNING runs.desired_state",
        )
        .bind(self.lease_now().await? + ttl.as_millis() as i64)
        .bind(lease.step_row)
        .bind(&lease.token)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|(d,)| parse_desired(&d)).transpose()
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
        // Step rows are locked in id order, as everywhere else.
        let rows: Vec<(i64, String, String)> = sqlx::query_as(
            "WITH held AS ( \
                 SELECT id FROM steps WHERE state = 'running' AND lease_owner = $2 \
                   AND lease_token = ANY($3) ORDER BY id FOR NO KEY UPDATE \
             ) \
             UPDATE steps SET lease_expires_at = $1 FROM held, runs \
             WHERE steps.id = held.id AND runs.id = steps.run_id \
             RETURNING steps.id, steps.lease_token, runs.desired_state",
        )
        .bind(self.lease_now().await? + ttl.as_millis() as i64)
        .bind(owner)
        .bind(tokens)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|(id, token, d)| Ok((crate::store::StepId(id), token, parse_desired(&d)?)))
            .collect()
    }

    async fn finish_steps(
        &self,
        batch: &[StepFinish],
        planner: &dyn Planner,
    ) -> Result<Vec<Option<Plan>>, StoreError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let now = now_ms();
        let step_rows: Vec<i64> = batch.iter().map(|f| f.lease.step_row.0).collect();
        let mut tx = self.pool.begin().await?;
        // The lock order: the runs (by id), then the steps (by id).
        let runs: Vec<(i64,)> =
            sqlx::query_as("SELECT DISTINCT run_id FROM steps WHERE id = ANY($1) ORDER BY run_id")
                .bind(&step_rows)
                .fetch_all(&mut *tx)
                .await?;
        let runs: Vec<i64> = runs.into_iter().map(|(id,)| id).collect();
        lock_runs(&mut tx, &runs).await?;
        sqlx::query("SELECT id FROM steps WHERE id = ANY($1) ORDER BY id FOR NO KEY UPDATE")
            .bind(&step_rows)
            .fetch_all(&mut *tx)
            .await?;
        let mut out = Vec::with_capacity(batch.len());
        for f in batch {
            out.push(finish_in(&mut tx, f, planner, now).await?);
        }
        tx.commit().await?;
        Ok(out)
    }

    async fn reap_leases(&self, before: Option<i64>) -> Result<Vec<(RunId, String)>, StoreError> {
        let now = now_ms();
        // Shared by several replicas: `None` (start-up recovery) must not
        // take back the live leases of the others, only expired ones. Lease
        // times are the database's: the caller's `before` is moved onto it.
        let lease_now = self.lease_now().await?;
        let before = before.map_or(lease_now, |b| self.to_db_time(b));
        let mut tx = self.pool.begin().await?;
        if !try_xact_lock(&mut tx, LOCK_REAPER).await? {
            // Another replica is reaping right now.
            tx.commit().await?;
            return Ok(Vec::new());
        }
        let runs: Vec<(i64,)> = sqlx::query_as(
            "SELECT DISTINCT run_id FROM steps \
             WHERE state = 'running' AND lease_expires_at < $1 ORDER BY run_id",
        )
        .bind(before)
        .fetch_all(&mut *tx)
        .await?;
        if runs.is_empty() {
            tx.commit().await?;
            return Ok(Vec::new());
        }
        let runs: Vec<i64> = runs.into_iter().map(|(id,)| id).collect();
        lock_runs(&mut tx, &runs).await?;
        let rows: Vec<(i64, i64, String)> = sqlx::query_as(
            "WITH expired AS ( \
                 SELECT id FROM steps WHERE state = 'running' AND lease_expires_at < $2 \
                   AND run_id = ANY($3) ORDER BY id FOR NO KEY UPDATE \
             ) \
             UPDATE steps SET state = 'ready', run_at = $1, lease_owner = NULL, \
                 lease_token = NULL, lease_expires_at = NULL \
             FROM expired WHERE steps.id = expired.id \
             RETURNING steps.id, steps.run_id, steps.step",
        )
        .bind(now)
        .bind(before)
        .bind(&runs)
        .fetch_all(&mut *tx)
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for (step_row, run_id, step) in rows {
            sqlx::query(
                "UPDATE attempts SET outcome = 'lost', finished_at = $1, \
                 error = 'the lease expired before a result came back' \
                 WHERE step_row = $2 AND outcome IS NULL",
            )
            .bind(now)
            .bind(step_row)
            .execute(&mut *tx)
            .await?;
            insert_event(
                &mut tx,
                run_id,
                Some(&step),
                now,
                "lease_expired",
                "the lease expired (its worker stopped renewing it); the step is ready again",
            )
            .await?;
            out.push((run_id, step));
        }
        if !out.is_empty() {
            notify(&mut tx, CHANNEL_STEPS).await?;
        }
        tx.commit().await?;
        Ok(out.into_iter().map(|(r, s)| (RunId(r), s)).collect())
    }

    async fn expire_runs(&self, now: i64) -> Result<Vec<RunId>, StoreError> {
        let mut tx = self.pool.begin().await?;
        if !try_xact_lock(&mut tx, LOCK_DEADLINES).await? {
            tx.commit().await?;
            return Ok(Vec::new());
        }
        let rows: Vec<(i64,)> = sqlx::query_as(
            "WITH due AS ( \
                 SELECT id FROM runs WHERE state IN ('queued', 'running', 'paused') \
                   AND deadline_at IS NOT NULL AND deadline_at < $1 \
                   AND desired_state IN ('running', 'paused') \
                 ORDER BY id FOR NO KEY UPDATE \
             ) \
             UPDATE runs SET desired_state = 'timed_out', \
                 conclusion = 'the workflow''s time limit passed' \
             FROM due WHERE runs.id = due.id RETURNING runs.id",
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
        let mut ids: Vec<i64> = rows.into_iter().map(|(id,)| id).collect();
        ids.sort_unstable();
        Ok(ids.into_iter().map(RunId).collect())
    }

    async fn stopping_runs(&self) -> Result<Vec<RunId>, StoreError> {
        let rows: Vec<(i64,)> = sqlx::query_as(
            "SELECT id FROM runs WHERE state IN ('queued', 'running', 'paused') \
             AND desired_state IN ('cancelled', 'timed_out') ORDER BY id",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(|(id,)| id).map(RunId).collect())
    }

    async fn active_runs(&self) -> Result<Vec<RunId>, StoreError> {
        let rows: Vec<(i64,)> = sqlx::query_as(
            "SELECT id FROM runs WHERE state IN ('queued', 'running', 'paused') ORDER BY id",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(|(id,)| id).map(RunId).collect())
    }

    async fn run(&self, run_id: RunId) -> Result<Option<RunSnapshot>, StoreError> {
        let run_id = run_id.0;
        // One snapshot of the run and its steps (REPEATABLE READ, read only).
        let mut tx = self
            .pool
            .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .await?;
        let snapshot = load_snapshot(&mut tx, run_id).await?;
        tx.commit().await?;
        Ok(snapshot)
    }

    async fn record_checkout(
        &self,
        run_id: RunId,
        step: &str,
        sha: &str,
        detail: &str,
    ) -> Result<(), StoreError> {
        let run_id = run_id.0;
        let mut tx = self.pool.begin().await?;
        sqlx::query("UPDATE runs SET checkout_sha = COALESCE(checkout_sha, $2) WHERE id = $1")
            .bind(run_id)
            .bind(sha)
            .execute(&mut *tx)
            .await?;
        insert_event(&mut tx, run_id, Some(step), now_ms(), "workspace", detail).await?;
        tx.commit().await?;
        Ok(())
    }
}
