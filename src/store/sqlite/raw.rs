//! The engine's hot transactions — creating runs, claiming steps, recording
//! results and settling runs — run on the writer inside the caller's
//! transaction (`SqliteStore::write`). A claim or a result is 6–15
//! statements, each prepared once per connection (the statement cache).
//! The PostgreSQL store keeps its own.

use crate::store::RunId;
use std::collections::HashMap;

use rusqlite::{Connection, OptionalExtension, params};

use crate::store::StoreError;
use crate::store::policy::{Admission, ClaimCandidate};
use crate::store::rows::{FromSqliteRow, RunRow, StepRow};
use crate::store::runs::{
    ClaimLimits, ClaimedStep, CreatedRun, Lease, NewRun, Plan, Planner, RunSnapshot, StepFinish,
    StepNext, StepRecord, StepState,
};

/// Appends one timeline event.
pub(super) fn insert_event(
    conn: &Connection,
    run_id: i64,
    step: Option<&str>,
    at: i64,
    kind: &str,
    detail: &str,
) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO run_events (run_id, step, at, kind, detail) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![run_id, step, at, kind, detail])?;
    Ok(())
}

/// The run and its steps, in position order.
pub(super) fn load_snapshot(
    conn: &Connection,
    run_id: i64,
) -> Result<Option<RunSnapshot>, StoreError> {
    let run = conn
        .prepare_cached(concat!(select_runs!(), "WHERE id = ?1"))?
        .query_row([run_id], RunRow::from_sqlite_row)
        .optional()?;
    let Some(run) = run else { return Ok(None) };
    let steps: Vec<StepRow> = conn
        .prepare_cached(concat!(
            "SELECT ",
            step_columns!(),
            " FROM steps WHERE run_id = ?1 ORDER BY position"
        ))?
        .query_map([run_id], StepRow::from_sqlite_row)?
        .collect::<Result<_, _>>()?;
    Ok(Some(RunSnapshot {
        run: run.try_into()?,
        steps: steps
            .into_iter()
            .map(StepRecord::try_from)
            .collect::<Result<_, _>>()?,
    }))
}

/// Reads the run, asks the planner, and applies its plan (guarded by the
/// states the plan was made from). Runs inside the caller's transaction.
pub(super) fn settle(
    conn: &Connection,
    run_id: i64,
    planner: &dyn Planner,
    now: i64,
) -> Result<Option<Plan>, StoreError> {
    let Some(snapshot) = load_snapshot(conn, run_id)? else {
        return Ok(None);
    };
    let plan = planner.plan(&snapshot, now);
    for change in &plan.steps {
        let (finished, error) = if change.to.is_terminal() {
            (Some(now), Some(change.reason.as_str()))
        } else {
            (None, None)
        };
        conn.prepare_cached(
            "UPDATE steps SET state = ?1, run_at = ?2, finished_at = ?3, error = ?4 \
             WHERE run_id = ?5 AND step = ?6 AND state IN ('pending', 'ready')",
        )?
        .execute(params![
            change.to.as_str(),
            now,
            finished,
            error,
            run_id,
            change.step
        ])?;
        let kind = match change.to {
            StepState::Ready => "step_ready",
            StepState::Skipped => "step_skipped",
            StepState::Cancelled => "step_cancelled",
            _ => "step_failed",
        };
        insert_event(conn, run_id, Some(&change.step), now, kind, &change.reason)?;
    }
    if let Some((state, reason)) = &plan.outcome {
        let changed = conn
            .prepare_cached(
                "UPDATE runs SET state = ?1, conclusion = ?2, finished_at = ?3 \
                 WHERE id = ?4 AND state IN ('queued', 'running', 'paused')",
            )?
            .execute(params![state.as_str(), reason, now, run_id])?;
        if changed == 1 {
            insert_event(
                conn,
                run_id,
                None,
                now,
                "run_finished",
                &format!("{state}: {reason}"),
            )?;
        }
    }
    Ok(Some(plan))
}

/// Records one result, fenced on its lease token, then settles the run.
/// `None` when the token is no longer the step's (the result is dropped).
pub(super) fn finish(
    conn: &Connection,
    f: &StepFinish,
    planner: &dyn Planner,
    now: i64,
) -> Result<Option<Plan>, StoreError> {
    let lease = &f.lease;
    // The fence: only the current lease token may move the step on.
    let fenced: Option<(i64, String, i64)> = conn
        .prepare_cached(
            "SELECT run_id, step, attempts FROM steps \
             WHERE id = ?1 AND lease_token = ?2 AND state = 'running'",
        )?
        .query_row(params![lease.step_row, lease.token], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .optional()?;
    let Some((run_id, step, number)) = fenced else {
        return Ok(None);
    };
    if let Some(a) = &f.attempt {
        conn.prepare_cached(
            "UPDATE attempts SET finished_at = ?1, outcome = ?2, error_class = ?3, \
             error_kind = ?4, error = ?5, output_excerpt = ?6, duration_ms = ?7, cost_usd = ?8, \
             cost_estimated = ?12 \
             WHERE step_row = ?9 AND number = ?10 AND lease_token = ?11 AND outcome IS NULL",
        )?
        .execute(params![
            now,
            a.outcome.as_str(),
            a.error_class.map(crate::agent::ErrorClass::as_str),
            a.error_kind,
            a.error,
            a.output_excerpt,
            a.duration_ms,
            a.cost_usd,
            lease.step_row,
            number,
            lease.token,
            a.cost_estimated
        ])?;
        if let Some(cost) = a.cost_usd {
            conn.prepare_cached("UPDATE runs SET cost_usd = cost_usd + ?1 WHERE id = ?2")?
                .execute(params![cost, run_id])?;
            conn.prepare_cached("UPDATE steps SET cost_usd = cost_usd + ?1 WHERE id = ?2")?
                .execute(params![cost, lease.step_row])?;
        }
        if a.ran {
            conn.prepare_cached(crate::store::spend::ADD_SPEND)?
                .execute(params![
                    crate::budget::day_number(now),
                    a.cost_usd.unwrap_or(0.0),
                    a.duration_ms,
                    run_id
                ])?;
        }
    }
    match &f.next {
        StepNext::Finish {
            state,
            output,
            error,
        } => {
            conn.prepare_cached(
                "UPDATE steps SET state = ?1, output = ?2, error = ?3, finished_at = ?4, \
                 lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL WHERE id = ?5",
            )?
            .execute(params![state.as_str(), output, error, now, lease.step_row])?;
        }
        StepNext::Retry { run_at } => {
            conn.prepare_cached(
                "UPDATE steps SET state = 'ready', run_at = ?1, \
                 lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL WHERE id = ?2",
            )?
            .execute(params![run_at, lease.step_row])?;
        }
        StepNext::Fallback {
            agent,
            agent_index,
            run_at,
        } => {
            conn.prepare_cached(
                "UPDATE steps SET state = 'ready', run_at = ?1, agent = ?2, agent_index = ?3, \
                 agent_attempts = 0, \
                 lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL WHERE id = ?4",
            )?
            .execute(params![run_at, agent, agent_index, lease.step_row])?;
        }
    }
    insert_event(conn, run_id, Some(&step), now, &f.kind, &f.detail)?;
    let plan = settle(conn, run_id, planner, now)?;
    Ok(Some(plan.unwrap_or_default()))
}

/// Claims ready steps in service order within `limits`, starting an attempt
/// for each (see `Runs::claim_steps`).
pub(super) fn claim_steps(
    conn: &Connection,
    owner: &str,
    limits: &ClaimLimits,
    now: i64,
) -> Result<Vec<ClaimedStep>, StoreError> {
    // Candidates in service order; more than `max` so that steps held back
    // by an agent's or a run's limit do not starve the others.
    let candidates: Vec<ClaimCandidate> = conn
        .prepare_cached(
            "SELECT s.id, s.run_id, s.agent, r.max_parallel, r.workflow, r.delivery_id \
             FROM steps s JOIN runs r ON r.id = s.run_id \
             WHERE s.state = 'ready' AND s.run_at <= ?1 \
               AND (r.desired_state = 'running' \
                    OR (r.desired_state = 'cancelled' AND s.runs_when_cancelled = 1)) \
               AND r.state IN ('queued', 'running') \
               AND r.waiting_approval = 0 \
               AND (r.concurrency_group IS NULL OR NOT EXISTS ( \
                    SELECT 1 FROM runs o WHERE o.concurrency_group = r.concurrency_group \
                      AND o.id < r.id AND o.state IN ('queued', 'running', 'paused') \
                      AND o.waiting_approval = 0)) \
             ORDER BY r.priority DESC, r.id, s.priority DESC, s.id LIMIT ?2",
        )?
        .query_map(params![now, (limits.max * 4 + 64) as i64], |r| {
            Ok(ClaimCandidate {
                step_row: r.get(0)?,
                run_id: r.get(1)?,
                agent: r.get(2)?,
                max_parallel: r.get(3)?,
                workflow: r.get(4)?,
                delivery_id: r.get(5)?,
            })
        })?
        .collect::<Result<_, _>>()?;
    if candidates.is_empty() {
        return Ok(Vec::new());
    }
    let mut per_agent: HashMap<String, i64> = HashMap::new();
    if !limits.per_agent.is_empty() {
        let mut stmt = conn.prepare_cached(
            "SELECT agent, COUNT(*) FROM steps WHERE state = 'running' GROUP BY agent",
        )?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
        for row in rows {
            let (agent, n) = row?;
            per_agent.insert(agent, n);
        }
    }
    // Running steps of the runs with a `max_parallel`, in one query.
    let mut per_run: HashMap<i64, i64> = HashMap::new();
    let runs = Admission::runs_to_count(&candidates);
    if !runs.is_empty() {
        let runs = serde_json::to_string(&runs).expect("numbers serialize");
        let mut stmt = conn.prepare_cached(
            "SELECT run_id, COUNT(*) FROM steps WHERE state = 'running' \
             AND run_id IN (SELECT value FROM json_each(?1)) GROUP BY run_id",
        )?;
        let rows = stmt.query_map([runs], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)))?;
        for row in rows {
            let (run, n) = row?;
            per_run.insert(run, n);
        }
    }
    let mut admission = Admission::new(limits, per_agent, per_run);
    let mut claimed = Vec::new();
    for candidate in candidates {
        if admission.full() {
            break;
        }
        if !admission.admits(&candidate) {
            continue;
        }
        let token = uuid::Uuid::new_v4().simple().to_string();
        let row: Option<StepRow> = conn
            .prepare_cached(concat!(
                "UPDATE steps SET state = 'running', lease_owner = ?1, lease_token = ?2, \
                 lease_expires_at = ?3, started_at = COALESCE(started_at, ?4) \
                 WHERE id = ?5 AND state = 'ready' RETURNING ",
                step_columns!()
            ))?
            .query_row(
                params![
                    owner,
                    token,
                    now + limits.lease.as_millis() as i64,
                    now,
                    candidate.step_row
                ],
                StepRow::from_sqlite_row,
            )
            .optional()?;
        let Some(row) = row else { continue };
        admission.claimed(&candidate);
        let ClaimCandidate {
            step_row,
            run_id,
            agent,
            workflow,
            delivery_id,
            ..
        } = candidate;
        let started = conn
            .prepare_cached(
                "UPDATE runs SET state = 'running', started_at = COALESCE(started_at, ?1) \
                 WHERE id = ?2 AND state = 'queued'",
            )?
            .execute(params![now, run_id])?;
        if started == 1 {
            insert_event(conn, run_id, None, now, "run_started", "first step claimed")?;
        }
        let mut step: StepRecord = row.try_into()?;
        let attempt = if limits.refused_agents.contains(&agent) {
            None
        } else {
            let (number, agent_attempts): (i64, i64) = conn
                .prepare_cached(
                    "UPDATE steps SET attempts = attempts + 1, \
                     agent_attempts = agent_attempts + 1 \
                     WHERE id = ?1 RETURNING attempts, agent_attempts",
                )?
                .query_row([step_row], |r| Ok((r.get(0)?, r.get(1)?)))?;
            step.attempts = number;
            step.agent_attempts = agent_attempts;
            conn.prepare_cached(
                "INSERT INTO attempts (step_row, run_id, workflow, step, number, agent, \
                 lease_token, started_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )?
            .execute(params![
                step_row, run_id, workflow, step.step, number, agent, token, now
            ])?;
            insert_event(
                conn,
                run_id,
                Some(&step.step),
                now,
                "attempt_started",
                &format!("attempt {number} on agent `{agent}`"),
            )?;
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
    Ok(claimed)
}

/// Creates `runs` with their steps and timeline events (see
/// `Runs::create_runs`): a run already made for its delivery and
/// workflow is returned with `created: false` and nothing is written for it;
/// a new run with `cancel_in_progress` asks the older active runs of its
/// concurrency group to cancel. Runs inside the caller's transaction.
pub(super) fn create_runs(
    conn: &Connection,
    runs: &[NewRun],
    now: i64,
) -> Result<Vec<CreatedRun>, StoreError> {
    let mut out = Vec::with_capacity(runs.len());
    for r in runs {
        let inserted: Option<i64> = conn
            .prepare_cached(
                "INSERT INTO runs (workflow, delivery_id, event, repository, subject_number, \
                 head_sha, classification, reason, context, priority, concurrency_group, \
                 max_parallel, deadline_at, created_at, waiting_approval) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15) \
                 ON CONFLICT (delivery_id, workflow) DO NOTHING RETURNING id",
            )?
            .query_row(
                params![
                    r.workflow,
                    r.delivery_id,
                    r.event,
                    r.repository,
                    r.subject_number,
                    r.head_sha,
                    r.classification,
                    r.reason,
                    r.context.to_string(),
                    r.priority.rank(),
                    r.concurrency_group,
                    r.max_parallel.map(i64::from),
                    r.timeout.map(|t| now + t.as_millis() as i64),
                    now,
                    r.needs_approval.is_some(),
                ],
                |row| row.get(0),
            )
            .optional()?;
        let Some(run_id) = inserted else {
            let run_id: i64 = conn
                .prepare_cached("SELECT id FROM runs WHERE delivery_id = ?1 AND workflow = ?2")?
                .query_row(params![r.delivery_id, r.workflow], |row| row.get(0))?;
            out.push(CreatedRun {
                run_id: RunId(run_id),
                workflow: r.workflow.clone(),
                created: false,
                superseded: Vec::new(),
            });
            continue;
        };
        {
            let mut insert = conn.prepare_cached(
                "INSERT INTO steps (run_id, step, position, needs, continue_on_error, agent, \
                 primary_agent, run_at, priority, runs_when_cancelled) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6, ?7, ?8, ?9)",
            )?;
            for (position, s) in r.steps.iter().enumerate() {
                insert.execute(params![
                    run_id,
                    s.step,
                    position as i64,
                    serde_json::to_string(&s.needs).expect("strings serialize"),
                    s.continue_on_error,
                    s.agent,
                    now,
                    s.rank_ms,
                    s.runs_when_cancelled,
                ])?;
            }
        }
        insert_event(conn, run_id, None, now, "run_created", &r.reason)?;
        if let Some(why) = &r.needs_approval {
            insert_event(conn, run_id, None, now, "approval_required", why)?;
        }
        let mut superseded = Vec::new();
        if let (Some(group), true) = (&r.concurrency_group, r.cancel_in_progress) {
            let conclusion = format!(
                "superseded by run {run_id} in concurrency group `{group}`{}",
                r.head_sha
                    .as_deref()
                    .map(|s| format!(" (head {s})"))
                    .unwrap_or_default()
            );
            let older: Vec<i64> = conn
                .prepare_cached(
                    "UPDATE runs SET desired_state = 'cancelled', conclusion = ?1 \
                     WHERE concurrency_group = ?2 AND id < ?3 \
                       AND state IN ('queued', 'running', 'paused') \
                       AND desired_state IN ('running', 'paused') RETURNING id",
                )?
                .query_map(params![conclusion, group, run_id], |row| row.get(0))?
                .collect::<Result<_, _>>()?;
            for old in older {
                insert_event(
                    conn,
                    old,
                    None,
                    now,
                    "cancel_requested",
                    &format!("a newer run ({run_id}) of concurrency group `{group}` started"),
                )?;
                superseded.push(RunId(old));
            }
        }
        out.push(CreatedRun {
            run_id: RunId(run_id),
            workflow: r.workflow.clone(),
            created: true,
            superseded,
        });
    }
    Ok(out)
}
