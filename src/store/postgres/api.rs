//! PostgreSQL queries of the operator API (see [`crate::store::api`]):
//! tokens, run lists, tasks, validations, and the aggregates read at a
//! metrics scrape. They mirror `sqlite/api.rs` query for query.

use crate::ids::InstallationId;

use sqlx::postgres::PgPool;
use sqlx::{Postgres, QueryBuilder};

use super::RunRow;
// One token row type for both backends (the columns are the same).
use crate::store::api::{
    AgentAttemptStats, ApiToken, NewApiToken, NewTask, NewValidation, RunFilter, StoreCounts,
    TaskFilter, TaskRecord, TaskUpdate, ValidationFilter, ValidationRecord,
};
use crate::store::rows::{
    TASK_COLUMNS, TOKEN_COLUMNS, TaskRow, TokenRow, VALIDATION_COLUMNS, ValidationRow,
};
use crate::store::{Run, StoreError};

pub(super) async fn create_api_token(
    pool: &PgPool,
    t: &NewApiToken,
) -> Result<Option<ApiToken>, StoreError> {
    let row: Option<TokenRow> = sqlx::query_as(
        "INSERT INTO api_tokens (name, role, token_hash, prefix, created_by, created_at, \
         expires_at, repositories) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
         ON CONFLICT (name) DO NOTHING \
         RETURNING id, name, role, prefix, created_by, created_at, last_used_at, revoked_at, \
         expires_at, repositories",
    )
    .bind(&t.name)
    .bind(t.role.as_str())
    .bind(&t.token_hash)
    .bind(&t.prefix)
    .bind(&t.created_by)
    .bind(t.created_at)
    .bind(t.expires_at)
    .bind(
        t.repositories
            .as_ref()
            .map(|r| serde_json::to_string(r).unwrap_or_default()),
    )
    .fetch_optional(pool)
    .await?;
    row.map(ApiToken::try_from).transpose()
}

pub(super) async fn api_token_by_hash(
    pool: &PgPool,
    hash: &str,
) -> Result<Option<ApiToken>, StoreError> {
    let mut q = QueryBuilder::<Postgres>::new(format!("SELECT {TOKEN_COLUMNS} FROM api_tokens "));
    q.push("WHERE token_hash = ").push_bind(hash);
    let row: Option<TokenRow> = q.build_query_as().fetch_optional(pool).await?;
    row.map(ApiToken::try_from).transpose()
}

pub(super) async fn api_tokens(pool: &PgPool) -> Result<Vec<ApiToken>, StoreError> {
    let mut q = QueryBuilder::<Postgres>::new(format!(
        "SELECT {TOKEN_COLUMNS} FROM api_tokens ORDER BY id"
    ));
    let rows: Vec<TokenRow> = q.build_query_as().fetch_all(pool).await?;
    rows.into_iter().map(ApiToken::try_from).collect()
}

pub(super) async fn revoke_api_token(
    pool: &PgPool,
    name: &str,
    at: i64,
) -> Result<Option<ApiToken>, StoreError> {
    let row: Option<TokenRow> = sqlx::query_as(
        "UPDATE api_tokens SET revoked_at = COALESCE(revoked_at, $2) WHERE name = $1 \
         RETURNING id, name, role, prefix, created_by, created_at, last_used_at, revoked_at, \
         expires_at, repositories",
    )
    .bind(name)
    .bind(at)
    .fetch_optional(pool)
    .await?;
    row.map(ApiToken::try_from).transpose()
}

pub(super) async fn touch_api_token(pool: &PgPool, id: i64, at: i64) -> Result<(), StoreError> {
    sqlx::query("UPDATE api_tokens SET last_used_at = $2 WHERE id = $1")
        .bind(id)
        .bind(at)
        .execute(pool)
        .await?;
    Ok(())
}

pub(super) async fn list_runs(pool: &PgPool, f: &RunFilter) -> Result<Vec<Run>, StoreError> {
    let mut q = QueryBuilder::<Postgres>::new(concat!(select_runs!(), "WHERE id < "));
    q.push_bind(f.before_id.unwrap_or(i64::MAX));
    if let Some(repo) = &f.repository {
        q.push(" AND repository = ").push_bind(repo.clone());
    }
    if let Some(wf) = &f.workflow {
        q.push(" AND workflow = ").push_bind(wf.clone());
    }
    if let Some(state) = f.state {
        q.push(" AND state = ").push_bind(state.as_str());
    }
    if let Some(from) = f.created_from {
        q.push(" AND created_at >= ").push_bind(from);
    }
    if let Some(before) = f.created_before {
        q.push(" AND created_at < ").push_bind(before);
    }
    q.push(" ORDER BY id DESC LIMIT ").push_bind(f.limit);
    let rows: Vec<RunRow> = q.build_query_as().fetch_all(pool).await?;
    rows.into_iter().map(Run::try_from).collect()
}

pub(super) async fn create_task(pool: &PgPool, t: &NewTask) -> Result<TaskRecord, StoreError> {
    let mut q = QueryBuilder::<Postgres>::new(
        "INSERT INTO tasks (source, repository, subject_number, title, body, classification, \
         created_by, created_at, updated_at) VALUES (",
    );
    let mut v = q.separated(", ");
    v.push_bind(t.source.as_str())
        .push_bind(t.repository.clone())
        .push_bind(t.subject_number)
        .push_bind(t.title.clone())
        .push_bind(t.body.clone())
        .push_bind(t.classification.to_string())
        .push_bind(t.created_by.clone())
        .push_bind(t.created_at)
        .push_bind(t.created_at);
    q.push(format!(") RETURNING {TASK_COLUMNS}"));
    let row: TaskRow = q.build_query_as().fetch_one(pool).await?;
    row.try_into()
}

pub(super) async fn task(pool: &PgPool, id: i64) -> Result<Option<TaskRecord>, StoreError> {
    let mut q =
        QueryBuilder::<Postgres>::new(format!("SELECT {TASK_COLUMNS} FROM tasks WHERE id = "));
    q.push_bind(id);
    let row: Option<TaskRow> = q.build_query_as().fetch_optional(pool).await?;
    row.map(TaskRecord::try_from).transpose()
}

pub(super) async fn tasks(pool: &PgPool, f: &TaskFilter) -> Result<Vec<TaskRecord>, StoreError> {
    let mut q =
        QueryBuilder::<Postgres>::new(format!("SELECT {TASK_COLUMNS} FROM tasks WHERE id < "));
    q.push_bind(f.before_id.unwrap_or(i64::MAX));
    if let Some(repo) = &f.repository {
        q.push(" AND repository = ").push_bind(repo.clone());
    }
    if let Some(state) = f.state {
        q.push(" AND state = ").push_bind(state.as_str());
    }
    if let Some(number) = f.subject_number {
        q.push(" AND subject_number = ").push_bind(number);
    }
    q.push(" ORDER BY id DESC LIMIT ").push_bind(f.limit);
    let rows: Vec<TaskRow> = q.build_query_as().fetch_all(pool).await?;
    rows.into_iter().map(TaskRecord::try_from).collect()
}

pub(super) async fn update_task(
    pool: &PgPool,
    id: i64,
    u: &TaskUpdate,
) -> Result<Option<TaskRecord>, StoreError> {
    let mut q = QueryBuilder::<Postgres>::new("UPDATE tasks SET updated_at = ");
    q.push_bind(u.updated_at);
    if let Some(title) = &u.title {
        q.push(", title = ").push_bind(title.clone());
    }
    if let Some(body) = &u.body {
        q.push(", body = ").push_bind(body.clone());
    }
    if let Some(c) = &u.classification {
        q.push(", classification = ").push_bind(c.to_string());
    }
    if let Some(state) = u.state {
        q.push(", state = ").push_bind(state.as_str());
    }
    if let Some(run_id) = u.run_id {
        q.push(", run_id = ").push_bind(run_id);
    }
    q.push(" WHERE id = ").push_bind(id);
    q.push(format!(" RETURNING {TASK_COLUMNS}"));
    let row: Option<TaskRow> = q.build_query_as().fetch_optional(pool).await?;
    row.map(TaskRecord::try_from).transpose()
}

pub(super) async fn create_validation(
    pool: &PgPool,
    v: &NewValidation,
) -> Result<ValidationRecord, StoreError> {
    let mut q = QueryBuilder::<Postgres>::new(
        "INSERT INTO validations (run_id, step, kind, verdict, summary, evidence, created_by, \
         created_at) VALUES (",
    );
    let mut s = q.separated(", ");
    s.push_bind(v.run_id)
        .push_bind(v.step.clone())
        .push_bind(v.kind.as_str())
        .push_bind(v.verdict.as_str())
        .push_bind(v.summary.clone())
        .push_bind(v.evidence.to_string())
        .push_bind(v.created_by.clone())
        .push_bind(v.created_at);
    q.push(format!(") RETURNING {VALIDATION_COLUMNS}"));
    let row: ValidationRow = q.build_query_as().fetch_one(pool).await?;
    row.try_into()
}

pub(super) async fn validation(
    pool: &PgPool,
    id: i64,
) -> Result<Option<ValidationRecord>, StoreError> {
    let mut q = QueryBuilder::<Postgres>::new(format!(
        "SELECT {VALIDATION_COLUMNS} FROM validations WHERE id = "
    ));
    q.push_bind(id);
    let row: Option<ValidationRow> = q.build_query_as().fetch_optional(pool).await?;
    row.map(ValidationRecord::try_from).transpose()
}

pub(super) async fn validations(
    pool: &PgPool,
    f: &ValidationFilter,
) -> Result<Vec<ValidationRecord>, StoreError> {
    let mut q = QueryBuilder::<Postgres>::new(format!(
        "SELECT {VALIDATION_COLUMNS} FROM validations WHERE id < "
    ));
    q.push_bind(f.before_id.unwrap_or(i64::MAX));
    if let Some(run_id) = f.run_id {
        q.push(" AND run_id = ").push_bind(run_id);
    }
    if let Some(kind) = f.kind {
        q.push(" AND kind = ").push_bind(kind.as_str());
    }
    if let Some(verdict) = f.verdict {
        q.push(" AND verdict = ").push_bind(verdict.as_str());
    }
    q.push(" ORDER BY id DESC LIMIT ").push_bind(f.limit);
    let rows: Vec<ValidationRow> = q.build_query_as().fetch_all(pool).await?;
    rows.into_iter().map(ValidationRecord::try_from).collect()
}

pub(super) async fn store_counts(pool: &PgPool) -> Result<StoreCounts, StoreError> {
    // One snapshot for every count.
    let mut tx = pool
        .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .await?;
    let deliveries: Vec<(String, String, i64)> =
        sqlx::query_as("SELECT event, state, COUNT(*) FROM deliveries GROUP BY event, state")
            .fetch_all(&mut *tx)
            .await?;
    let runs: Vec<(String, String, i64)> =
        sqlx::query_as("SELECT workflow, state, COUNT(*) FROM runs GROUP BY workflow, state")
            .fetch_all(&mut *tx)
            .await?;
    let steps: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT r.workflow, s.state, COUNT(*) FROM steps s JOIN runs r ON r.id = s.run_id \
         WHERE r.state IN ('queued', 'running', 'paused') GROUP BY r.workflow, s.state",
    )
    .fetch_all(&mut *tx)
    .await?;
    let (effects_pending,): (i64,) =
        sqlx::query_as("SELECT COUNT(*) FROM github_effects WHERE state = 'pending'")
            .fetch_one(&mut *tx)
            .await?;
    let (reports_pending,): (i64,) = sqlx::query_as(
        "SELECT COUNT(*) FROM runs r JOIN deliveries d ON d.delivery_id = r.delivery_id \
         LEFT JOIN run_reports rr ON rr.run_id = r.id \
         WHERE d.installation_id IS NOT NULL AND r.repository IS NOT NULL \
         AND r.subject_number IS NOT NULL \
         AND (rr.run_id IS NULL OR rr.reported_state IS NULL OR rr.reported_state <> r.state) \
         AND (rr.gave_up_fingerprint IS NULL)",
    )
    .fetch_one(&mut *tx)
    .await?;
    let finished_runs: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT workflow, COUNT(*), COALESCE(SUM(finished_at - created_at), 0)::int8 FROM runs \
         WHERE finished_at IS NOT NULL GROUP BY workflow",
    )
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(StoreCounts {
        finished_runs,
        deliveries,
        runs,
        steps,
        effects_pending,
        reports_pending,
    })
}

pub(super) async fn agent_attempt_stats(
    pool: &PgPool,
    since: i64,
) -> Result<Vec<AgentAttemptStats>, StoreError> {
    let in_flight: Vec<(String, i64)> =
        sqlx::query_as("SELECT agent, COUNT(*) FROM attempts WHERE outcome IS NULL GROUP BY agent")
            .fetch_all(pool)
            .await?;
    let finished: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT agent, outcome, COALESCE(duration_ms, finished_at - started_at, 0) \
         FROM attempts WHERE outcome IS NOT NULL AND finished_at >= $1 \
         ORDER BY agent, 3",
    )
    .bind(since)
    .fetch_all(pool)
    .await?;
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

pub(super) async fn installation_for_repository(
    pool: &PgPool,
    repository: &str,
) -> Result<Option<InstallationId>, StoreError> {
    let row: Option<(InstallationId,)> = sqlx::query_as(
        "SELECT installation_id FROM deliveries \
         WHERE repository = $1 AND installation_id IS NOT NULL ORDER BY id DESC LIMIT 1",
    )
    .bind(repository)
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|r| r.0))
}
