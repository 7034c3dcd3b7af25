//! SQLite queries of the operator API (see [`crate::store::api`]): tokens,
//! run lists, tasks, validations, and the aggregates read at a metrics scrape.
//!
//! Each function runs on the connection it is given: the writer for
//! writes, a reader for the rest (the callers in `records.rs` and
//! `queries.rs` choose).

use crate::ids::InstallationId;

use rusqlite::{Connection, OptionalExtension as _, params};

use super::sql::{Query, Sql};

use crate::store::api::{
    AgentAttemptStats, ApiToken, NewApiToken, NewTask, NewValidation, RunFilter, StoreCounts,
    TaskFilter, TaskRecord, TaskUpdate, ValidationFilter, ValidationRecord,
};
use crate::store::rows::{
    FromSqliteRow, RunRow, TASK_COLUMNS, TOKEN_COLUMNS, TaskRow, TokenRow, VALIDATION_COLUMNS,
    ValidationRow,
};
use crate::store::{Run, StoreError};

pub(super) fn create_api_token(
    conn: &Connection,
    t: &NewApiToken,
) -> Result<Option<ApiToken>, StoreError> {
    let repositories = t
        .repositories
        .as_ref()
        .map(|r| serde_json::to_string(r).unwrap_or_default());
    let row: Option<TokenRow> = conn.opt(
        &format!(
            "INSERT INTO api_tokens (name, role, token_hash, prefix, created_by, created_at, \
             expires_at, repositories) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) \
             ON CONFLICT (name) DO NOTHING RETURNING {TOKEN_COLUMNS}"
        ),
        params![
            t.name,
            t.role.as_str(),
            t.token_hash,
            t.prefix,
            t.created_by,
            t.created_at,
            t.expires_at,
            repositories
        ],
    )?;
    row.map(ApiToken::try_from).transpose()
}

pub(super) fn api_token_by_hash(
    conn: &Connection,
    hash: &str,
) -> Result<Option<ApiToken>, StoreError> {
    let row: Option<TokenRow> = conn.opt(
        &format!("SELECT {TOKEN_COLUMNS} FROM api_tokens WHERE token_hash = ?1"),
        [hash],
    )?;
    row.map(ApiToken::try_from).transpose()
}

pub(super) fn api_tokens(conn: &Connection) -> Result<Vec<ApiToken>, StoreError> {
    let rows: Vec<TokenRow> = conn.all(
        &format!("SELECT {TOKEN_COLUMNS} FROM api_tokens ORDER BY id"),
        [],
    )?;
    rows.into_iter().map(ApiToken::try_from).collect()
}

pub(super) fn revoke_api_token(
    conn: &Connection,
    name: &str,
    at: i64,
) -> Result<Option<ApiToken>, StoreError> {
    let row: Option<TokenRow> = conn.opt(
        &format!(
            "UPDATE api_tokens SET revoked_at = COALESCE(revoked_at, ?2) WHERE name = ?1 \
             RETURNING {TOKEN_COLUMNS}"
        ),
        params![name, at],
    )?;
    row.map(ApiToken::try_from).transpose()
}

pub(super) fn list_runs(conn: &Connection, f: &RunFilter) -> Result<Vec<Run>, StoreError> {
    let mut q = Query::new(concat!(select_runs!(), "WHERE id < "));
    q.bind(f.before_id.unwrap_or(i64::MAX));
    if let Some(repo) = &f.repository {
        q.push(" AND repository = ").bind(repo.clone());
    }
    if let Some(wf) = &f.workflow {
        q.push(" AND workflow = ").bind(wf.clone());
    }
    if let Some(state) = f.state {
        q.push(" AND state = ").bind(state.as_str().to_owned());
    }
    if let Some(from) = f.created_from {
        q.push(" AND created_at >= ").bind(from);
    }
    if let Some(before) = f.created_before {
        q.push(" AND created_at < ").bind(before);
    }
    q.push(" ORDER BY id DESC LIMIT ").bind(f.limit);
    let rows: Vec<RunRow> = q.all(conn)?;
    rows.into_iter().map(Run::try_from).collect()
}

/// Inserts a task (on the writer); the stored record.
pub(super) fn create_task(conn: &Connection, t: &NewTask) -> Result<TaskRecord, StoreError> {
    let row = conn
        .prepare_cached(&format!(
            "INSERT INTO tasks (source, repository, subject_number, title, body, \
             classification, created_by, created_at, updated_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?8) RETURNING {TASK_COLUMNS}"
        ))?
        .query_row(
            rusqlite::params![
                t.source.as_str(),
                t.repository,
                t.subject_number,
                t.title,
                t.body,
                t.classification.to_string(),
                t.created_by,
                t.created_at,
            ],
            TaskRow::from_sqlite_row,
        )?;
    row.try_into()
}

/// The task `id`, if any.
pub(super) fn task(conn: &Connection, id: i64) -> Result<Option<TaskRecord>, StoreError> {
    let row = conn
        .prepare_cached(&format!("SELECT {TASK_COLUMNS} FROM tasks WHERE id = ?1"))?
        .query_row([id], TaskRow::from_sqlite_row)
        .optional()?;
    row.map(TaskRecord::try_from).transpose()
}

/// Tasks matching `f`, newest first (the dispatcher looks up the task of
/// every issue and pull-request event).
pub(super) fn tasks(conn: &Connection, f: &TaskFilter) -> Result<Vec<TaskRecord>, StoreError> {
    let mut sql = format!("SELECT {TASK_COLUMNS} FROM tasks WHERE id < ?1");
    let mut params: Vec<rusqlite::types::Value> = vec![f.before_id.unwrap_or(i64::MAX).into()];
    if let Some(repo) = &f.repository {
        params.push(repo.clone().into());
        sql.push_str(&format!(" AND repository = ?{}", params.len()));
    }
    if let Some(state) = f.state {
        params.push(state.as_str().to_owned().into());
        sql.push_str(&format!(" AND state = ?{}", params.len()));
    }
    if let Some(number) = f.subject_number {
        params.push(number.into());
        sql.push_str(&format!(" AND subject_number = ?{}", params.len()));
    }
    params.push(f.limit.into());
    sql.push_str(&format!(" ORDER BY id DESC LIMIT ?{}", params.len()));
    let mut statement = conn.prepare_cached(&sql)?;
    let rows = statement
        .query_map(rusqlite::params_from_iter(params), TaskRow::from_sqlite_row)?
        .collect::<Result<Vec<_>, _>>()?;
    rows.into_iter().map(TaskRecord::try_from).collect()
}

/// Applies `u` to task `id` (on the writer); the updated
/// record, or `None` when there is no such task.
pub(super) fn update_task(
    conn: &Connection,
    id: i64,
    u: &TaskUpdate,
) -> Result<Option<TaskRecord>, StoreError> {
    let mut sql = String::from("UPDATE tasks SET updated_at = ?1");
    let mut params: Vec<rusqlite::types::Value> = vec![u.updated_at.into()];
    let mut set = |column: &str, value: rusqlite::types::Value| {
        params.push(value);
        sql.push_str(&format!(", {column} = ?{}", params.len()));
    };
    if let Some(title) = &u.title {
        set("title", title.clone().into());
    }
    if let Some(body) = &u.body {
        set("body", body.clone().into());
    }
    if let Some(c) = &u.classification {
        set("classification", c.to_string().into());
    }
    if let Some(state) = u.state {
        set("state", state.as_str().to_owned().into());
    }
    if let Some(run_id) = u.run_id {
        set("run_id", run_id.into());
    }
    params.push(id.into());
    sql.push_str(&format!(
        " WHERE id = ?{} RETURNING {TASK_COLUMNS}",
        params.len()
    ));
    let row = conn
        .prepare_cached(&sql)?
        .query_row(rusqlite::params_from_iter(params), TaskRow::from_sqlite_row)
        .optional()?;
    row.map(TaskRecord::try_from).transpose()
}

pub(super) fn create_validation(
    conn: &Connection,
    v: &NewValidation,
) -> Result<ValidationRecord, StoreError> {
    let row: ValidationRow = conn.one(
        &format!(
            "INSERT INTO validations (run_id, step, kind, verdict, summary, evidence, \
             created_by, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) \
             RETURNING {VALIDATION_COLUMNS}"
        ),
        params![
            v.run_id,
            v.step,
            v.kind.as_str(),
            v.verdict.as_str(),
            v.summary,
            v.evidence.to_string(),
            v.created_by,
            v.created_at
        ],
    )?;
    row.try_into()
}

pub(super) fn validation(
    conn: &Connection,
    id: i64,
) -> Result<Option<ValidationRecord>, StoreError> {
    let row: Option<ValidationRow> = conn.opt(
        &format!("SELECT {VALIDATION_COLUMNS} FROM validations WHERE id = ?1"),
        [id],
    )?;
    row.map(ValidationRecord::try_from).transpose()
}

pub(super) fn validations(
    conn: &Connection,
    f: &ValidationFilter,
) -> Result<Vec<ValidationRecord>, StoreError> {
    let mut q = Query::new(format!(
        "SELECT {VALIDATION_COLUMNS} FROM validations WHERE id < "
    ));
    q.bind(f.before_id.unwrap_or(i64::MAX));
    if let Some(run_id) = f.run_id {
        q.push(" AND run_id = ").bind(run_id);
    }
    if let Some(kind) = f.kind {
        q.push(" AND kind = ").bind(kind.as_str().to_owned());
    }
    if let Some(verdict) = f.verdict {
        q.push(" AND verdict = ").bind(verdict.as_str().to_owned());
    }
    q.push(" ORDER BY id DESC LIMIT ").bind(f.limit);
    let rows: Vec<ValidationRow> = q.all(conn)?;
    rows.into_iter().map(ValidationRecord::try_from).collect()
}

/// The aggregates a metrics scrape reads, in one read transaction (so they
/// agree with each other).
pub(super) fn store_counts(conn: &Connection) -> Result<StoreCounts, StoreError> {
    let tx = conn.unchecked_transaction()?;
    let deliveries: Vec<(String, String, i64)> = tx.all(
        "SELECT event, state, COUNT(*) FROM deliveries GROUP BY event, state",
        [],
    )?;
    let runs: Vec<(String, String, i64)> = tx.all(
        "SELECT workflow, state, COUNT(*) FROM runs GROUP BY workflow, state",
        [],
    )?;
    let steps: Vec<(String, String, i64)> = tx.all(
        "SELECT r.workflow, s.state, COUNT(*) FROM steps s JOIN runs r ON r.id = s.run_id \
         WHERE r.state IN ('queued', 'running', 'paused') GROUP BY r.workflow, s.state",
        [],
    )?;
    let (effects_pending,): (i64,) = tx.one(
        "SELECT COUNT(*) FROM github_effects WHERE state = 'pending'",
        [],
    )?;
    let (reports_pending,): (i64,) = tx.one(
        "SELECT COUNT(*) FROM runs r JOIN deliveries d ON d.delivery_id = r.delivery_id \
         LEFT JOIN run_reports rr ON rr.run_id = r.id \
         WHERE d.installation_id IS NOT NULL AND r.repository IS NOT NULL \
         AND r.subject_number IS NOT NULL \
         AND (rr.run_id IS NULL OR rr.reported_state IS NULL OR rr.reported_state <> r.state) \
         AND (rr.gave_up_fingerprint IS NULL)",
        [],
    )?;
    let finished_runs: Vec<(String, i64, i64)> = tx.all(
        "SELECT workflow, COUNT(*), COALESCE(SUM(finished_at - created_at), 0) FROM runs \
         WHERE finished_at IS NOT NULL GROUP BY workflow",
        [],
    )?;
    tx.commit()?;
    Ok(StoreCounts {
        finished_runs,
        deliveries,
        runs,
        steps,
        effects_pending,
        reports_pending,
    })
}

pub(super) fn agent_attempt_stats(
    conn: &Connection,
    since: i64,
) -> Result<Vec<AgentAttemptStats>, StoreError> {
    let in_flight: Vec<(String, i64)> = conn.all(
        "SELECT agent, COUNT(*) FROM attempts WHERE outcome IS NULL GROUP BY agent",
        [],
    )?;
    let finished: Vec<(String, String, i64)> = conn.all(
        "SELECT agent, outcome, COALESCE(duration_ms, finished_at - started_at, 0) \
         FROM attempts WHERE outcome IS NOT NULL AND finished_at >= ?1 \
         ORDER BY agent, 3",
        [since],
    )?;
    let mut out: std::collections::BTreeMap<String, AgentAttemptStats> = Default::default();
    for (agent, n) in in_flight {
        out.entry(agent.clone())
            .or_insert_with(|| AgentAttemptStats {
                agent,
                ..Default::default()
            })
            .in_flight = n;
    }
    for (agent, outcome, ms) in finished {
        let s = out
            .entry(agent.clone())
            .or_insert_with(|| AgentAttemptStats {
                agent,
                ..Default::default()
            });
        s.finished += 1;
        if outcome == "succeeded" {
            s.succeeded += 1;
        }
        s.durations_ms.push(ms);
    }
    Ok(out.into_values().collect())
}

pub(super) fn installation_for_repository(
    conn: &Connection,
    repository: &str,
) -> Result<Option<InstallationId>, StoreError> {
    let row: Option<(InstallationId,)> = conn.opt(
        "SELECT installation_id FROM deliveries \
         WHERE repository = ?1 AND installation_id IS NOT NULL ORDER BY id DESC LIMIT 1",
        [repository],
    )?;
    Ok(row.map(|r| r.0))
}
