//! The rows both backends read, one mapping per record: each row type
//! decodes from SQLite and PostgreSQL through `sqlx::FromRow` (the column
//! names and kinds are the same on both; `tests/schemas.rs` checks that),
//! and converts to its record once, here, with the same checks of stored
//! names (a state the code does not know is [`StoreError::Corrupt`]).
//! The SQLite store reads through rusqlite: each row type implements
//! [`FromSqliteRow`], by column name ([`sqlite_row!`]) or, for the rows the
//! engine and inbox read thousands of times a second, by position.

use crate::ids::InstallationId;
use crate::store::RunId;
use bytes::Bytes;

use super::api::{
    ApiToken, Role, TaskRecord, TaskSource, TaskState, ValidationKind, ValidationRecord, Verdict,
};
use super::changes::{ChangeState, RunChange};
use super::deliveries::DeliverySummary;
use super::runs::{DesiredState, Run, RunState, StepRecord, StepState};
use super::{
    ActorKind, AuditEntry, Delivery, DeliveryState, Effect, EffectKind, EffectState,
    EncodedPayload, PayloadEncoding, StoreError,
};

/// A row as SQLite returns it through rusqlite: the one mapping of each
/// record on that backend (PostgreSQL's is `sqlx::FromRow`).
pub(in crate::store) trait FromSqliteRow: Sized {
    /// Decodes `row`. Errors: a column is missing or of another type.
    fn from_sqlite_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Self>;
}

/// Implements [`FromSqliteRow`] for a row struct by column name: every
/// field is read from the column of the same name (the struct literal
/// makes the compiler check that no field is left out).
macro_rules! sqlite_row {
    ($row:ident { $($field:ident),+ $(,)? }) => {
        impl FromSqliteRow for $row {
            fn from_sqlite_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Self> {
                Ok($row { $($field: row.get(stringify!($field))?),+ })
            }
        }
    };
}
pub(in crate::store) use sqlite_row;

/// Tuples of decodable columns decode by position.
macro_rules! tuple_row {
    ($($t:ident $i:tt),+) => {
        impl<$($t: rusqlite::types::FromSql),+> FromSqliteRow for ($($t,)+) {
            fn from_sqlite_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Self> {
                Ok(($(row.get::<_, $t>($i)?,)+))
            }
        }
    };
}
tuple_row!(A 0);
tuple_row!(A 0, B 1);
tuple_row!(A 0, B 1, C 2);
tuple_row!(A 0, B 1, C 2, D 3);
tuple_row!(A 0, B 1, C 2, D 3, E 4);
tuple_row!(A 0, B 1, C 2, D 3, E 4, F 5);
tuple_row!(A 0, B 1, C 2, D 3, E 4, F 5, G 6);

#[derive(sqlx::FromRow)]
pub(in crate::store) struct DeliveryRow {
    id: i64,
    delivery_id: String,
    event: String,
    action: Option<String>,
    hook_id: Option<i64>,
    installation_id: Option<InstallationId>,
    repository: Option<String>,
    sender_id: Option<i64>,
    sender_login: Option<String>,
    encoding: String,
    size: i64,
    payload: Vec<u8>,
    received_at: i64,
    state: String,
    attempts: i64,
    error: Option<String>,
}

/// Maps a row of `select_deliveries!()` read through rusqlite.
impl FromSqliteRow for DeliveryRow {
    fn from_sqlite_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Self> {
        Ok(DeliveryRow {
            id: row.get(0)?,
            delivery_id: row.get(1)?,
            event: row.get(2)?,
            action: row.get(3)?,
            hook_id: row.get(4)?,
            installation_id: row.get(5)?,
            repository: row.get(6)?,
            sender_id: row.get(7)?,
            sender_login: row.get(8)?,
            encoding: row.get(9)?,
            size: row.get(10)?,
            payload: row.get(11)?,
            received_at: row.get(12)?,
            state: row.get(13)?,
            attempts: row.get(14)?,
            error: row.get(15)?,
        })
    }
}

impl TryFrom<DeliveryRow> for Delivery {
    type Error = StoreError;

    fn try_from(row: DeliveryRow) -> Result<Self, StoreError> {
        let state = DeliveryState::parse(&row.state).ok_or_else(|| StoreError::Corrupt {
            table: "deliveries",
            detail: format!("unknown state `{}`", row.state),
        })?;
        let encoding =
            PayloadEncoding::parse(&row.encoding).ok_or_else(|| StoreError::Corrupt {
                table: "delivery_payloads",
                detail: format!("unknown encoding `{}`", row.encoding),
            })?;
        let payload = EncodedPayload {
            encoding,
            raw_len: usize::try_from(row.size).unwrap_or(0),
            bytes: Bytes::from(row.payload),
        }
        .decode()?;
        Ok(Delivery {
            id: row.id,
            delivery_id: row.delivery_id,
            event: row.event,
            action: row.action,
            hook_id: row.hook_id,
            installation_id: row.installation_id,
            repository: row.repository,
            sender_id: row.sender_id,
            sender_login: row.sender_login,
            payload,
            received_at: row.received_at,
            state,
            attempts: row.attempts,
            error: row.error,
        })
    }
}

#[derive(sqlx::FromRow)]
pub(in crate::store) struct RunRow {
    id: i64,
    workflow: String,
    delivery_id: String,
    event: String,
    repository: Option<String>,
    subject_number: Option<i64>,
    head_sha: Option<String>,
    classification: Option<String>,
    reason: String,
    context: String,
    priority: i64,
    concurrency_group: Option<String>,
    state: String,
    desired_state: String,
    max_parallel: Option<i64>,
    deadline_at: Option<i64>,
    cost_usd: f64,
    conclusion: Option<String>,
    created_at: i64,
    started_at: Option<i64>,
    finished_at: Option<i64>,
    waiting_approval: bool,
    approved_by: Option<String>,
    checkout_sha: Option<String>,
    stopped_by_budget: Option<String>,
}

pub(in crate::store) fn corrupt(table: &'static str, detail: String) -> StoreError {
    StoreError::Corrupt { table, detail }
}

impl TryFrom<RunRow> for Run {
    type Error = StoreError;
    fn try_from(r: RunRow) -> Result<Self, StoreError> {
        Ok(Run {
            state: RunState::parse(&r.state)
                .ok_or_else(|| corrupt("runs", format!("unknown state `{}`", r.state)))?,
            desired_state: DesiredState::parse(&r.desired_state).ok_or_else(|| {
                corrupt(
                    "runs",
                    format!("unknown desired state `{}`", r.desired_state),
                )
            })?,
            context: serde_json::from_str(&r.context)
                .map_err(|e| corrupt("runs", format!("context is not JSON: {e}")))?,
            id: RunId(r.id),
            workflow: r.workflow,
            delivery_id: r.delivery_id,
            event: r.event,
            repository: r
                .repository
                .map(|text| repo_name("runs", &text))
                .transpose()?,
            subject_number: r.subject_number,
            head_sha: r.head_sha,
            classification: r.classification,
            reason: r.reason,
            priority: crate::classify::Priority::from_rank(r.priority)
                .ok_or_else(|| corrupt("runs", format!("unknown priority {}", r.priority)))?,
            concurrency_group: r.concurrency_group,
            max_parallel: r.max_parallel,
            deadline_at: r.deadline_at,
            cost_usd: r.cost_usd,
            conclusion: r.conclusion,
            created_at: r.created_at,
            started_at: r.started_at,
            finished_at: r.finished_at,
            waiting_approval: r.waiting_approval,
            approved_by: r.approved_by,
            checkout_sha: r.checkout_sha,
            stopped_by_budget: r.stopped_by_budget,
        })
    }
}

#[derive(sqlx::FromRow)]
pub(in crate::store) struct StepRow {
    id: i64,
    run_id: i64,
    step: String,
    position: i64,
    needs: String,
    continue_on_error: bool,
    state: String,
    agent: String,
    agent_index: i64,
    attempts: i64,
    agent_attempts: i64,
    run_at: i64,
    priority: i64,
    lease_owner: Option<String>,
    lease_expires_at: Option<i64>,
    output: Option<String>,
    error: Option<String>,
    started_at: Option<i64>,
    finished_at: Option<i64>,
    cost_usd: f64,
}

impl TryFrom<StepRow> for StepRecord {
    type Error = StoreError;
    fn try_from(r: StepRow) -> Result<Self, StoreError> {
        Ok(StepRecord {
            state: StepState::parse(&r.state)
                .ok_or_else(|| corrupt("steps", format!("unknown state `{}`", r.state)))?,
            needs: serde_json::from_str(&r.needs)
                .map_err(|e| corrupt("steps", format!("needs is not a JSON list: {e}")))?,
            id: crate::store::StepId(r.id),
            run_id: RunId(r.run_id),
            step: r.step,
            position: r.position,
            continue_on_error: r.continue_on_error,
            agent: r.agent,
            agent_index: r.agent_index,
            attempts: r.attempts,
            agent_attempts: r.agent_attempts,
            run_at: r.run_at,
            priority: r.priority,
            lease_owner: r.lease_owner,
            lease_expires_at: r.lease_expires_at,
            output: r.output,
            error: r.error,
            started_at: r.started_at,
            finished_at: r.finished_at,
            cost_usd: r.cost_usd,
        })
    }
}

#[derive(sqlx::FromRow)]
pub(in crate::store) struct EffectRow {
    id: i64,
    source: String,
    seq: i64,
    installation_id: Option<InstallationId>,
    repository: String,
    kind: String,
    target: i64,
    body: String,
    state: String,
    attempts: i64,
    last_error: Option<String>,
    created_at: i64,
}

sqlite_row!(EffectRow {
    id,
    source,
    seq,
    installation_id,
    repository,
    kind,
    target,
    body,
    state,
    attempts,
    last_error,
    created_at
});

impl TryFrom<EffectRow> for Effect {
    type Error = StoreError;

    fn try_from(row: EffectRow) -> Result<Self, StoreError> {
        let corrupt = |detail: String| StoreError::Corrupt {
            table: "github_effects",
            detail,
        };
        Ok(Effect {
            id: row.id,
            kind: EffectKind::parse(&row.kind)
                .ok_or_else(|| corrupt(format!("unknown kind `{}`", row.kind)))?,
            state: EffectState::parse(&row.state)
                .ok_or_else(|| corrupt(format!("unknown state `{}`", row.state)))?,
            source: row.source,
            seq: row.seq,
            installation_id: row.installation_id,
            repository: repo_name("github_effects", &row.repository)?,
            target: row.target,
            body: row.body,
            attempts: row.attempts,
            last_error: row.last_error,
            created_at: row.created_at,
        })
    }
}

#[derive(sqlx::FromRow)]
pub(in crate::store) struct AuditRow {
    id: i64,
    at: i64,
    actor_kind: String,
    actor: String,
    action: String,
    target: Option<String>,
    outcome: String,
    detail: Option<String>,
}

sqlite_row!(AuditRow {
    id,
    at,
    actor_kind,
    actor,
    action,
    target,
    outcome,
    detail
});

impl TryFrom<AuditRow> for AuditEntry {
    type Error = StoreError;

    fn try_from(row: AuditRow) -> Result<Self, StoreError> {
        let corrupt = |detail: String| StoreError::Corrupt {
            table: "audit_log",
            detail,
        };
        Ok(AuditEntry {
            id: row.id,
            at: row.at,
            actor_kind: ActorKind::parse(&row.actor_kind)
                .ok_or_else(|| corrupt(format!("unknown actor kind `{}`", row.actor_kind)))?,
            actor: row.actor,
            action: row.action,
            target: row.target,
            outcome: row.outcome,
            detail: row
                .detail
                .map(|d| serde_json::from_str(&d))
                .transpose()
                .map_err(|e| corrupt(format!("detail is not JSON: {e}")))?,
        })
    }
}

/// The token columns both backends read (PostgreSQL reuses this row type).
pub(in crate::store) const TOKEN_COLUMNS: &str = "id, name, role, prefix, created_by, created_at, last_used_at, revoked_at, expires_at, repositories";

#[derive(sqlx::FromRow)]
pub(in crate::store) struct TokenRow {
    id: i64,
    name: String,
    role: String,
    prefix: String,
    created_by: String,
    created_at: i64,
    last_used_at: Option<i64>,
    revoked_at: Option<i64>,
    expires_at: Option<i64>,
    repositories: Option<String>,
}

sqlite_row!(TokenRow {
    id,
    name,
    role,
    prefix,
    created_by,
    created_at,
    last_used_at,
    revoked_at,
    expires_at,
    repositories
});

impl TryFrom<TokenRow> for ApiToken {
    type Error = StoreError;
    fn try_from(r: TokenRow) -> Result<Self, StoreError> {
        Ok(ApiToken {
            role: Role::parse(&r.role)
                .ok_or_else(|| corrupt("api_tokens", format!("unknown role `{}`", r.role)))?,
            id: r.id,
            name: r.name,
            prefix: r.prefix,
            created_by: r.created_by,
            created_at: r.created_at,
            last_used_at: r.last_used_at,
            revoked_at: r.revoked_at,
            expires_at: r.expires_at,
            repositories: match r.repositories {
                None => None,
                Some(text) => {
                    Some(serde_json::from_str(&text).map_err(|e| {
                        corrupt("api_tokens", format!("repositories `{text}`: {e}"))
                    })?)
                }
            },
        })
    }
}

#[derive(sqlx::FromRow)]
pub(in crate::store) struct ChangeRow {
    pub run_id: i64,
    pub step: String,
    pub change: String,
    pub state: String,
    pub refused: Option<String>,
    pub publication: String,
    pub attempts: i64,
    pub next_attempt_at: i64,
    pub last_error: Option<String>,
    pub updated_at: i64,
}

sqlite_row!(ChangeRow {
    run_id,
    step,
    change,
    state,
    refused,
    publication,
    attempts,
    next_attempt_at,
    last_error,
    updated_at
});

impl TryFrom<ChangeRow> for RunChange {
    type Error = StoreError;
    fn try_from(r: ChangeRow) -> Result<Self, StoreError> {
        Ok(RunChange {
            change: serde_json::from_str(&r.change)
                .map_err(|e| corrupt("run_changes", format!("change: {e}")))?,
            state: ChangeState::parse(&r.state)
                .ok_or_else(|| corrupt("run_changes", format!("unknown state `{}`", r.state)))?,
            publication: serde_json::from_str(&r.publication)
                .map_err(|e| corrupt("run_changes", format!("publication: {e}")))?,
            run_id: RunId(r.run_id),
            step: r.step,
            refused: r.refused,
            attempts: r.attempts,
            next_attempt_at: r.next_attempt_at,
            last_error: r.last_error,
            updated_at: r.updated_at,
        })
    }
}

/// A row of the deliveries page (both stores read it).
#[derive(sqlx::FromRow)]
pub(in crate::store) struct SummaryRow {
    id: i64,
    delivery_id: String,
    event: String,
    action: Option<String>,
    repository: Option<String>,
    sender_login: Option<String>,
    received_at: i64,
    state: String,
    attempts: i64,
    error: Option<String>,
}

sqlite_row!(SummaryRow {
    id,
    delivery_id,
    event,
    action,
    repository,
    sender_login,
    received_at,
    state,
    attempts,
    error
});

impl TryFrom<SummaryRow> for DeliverySummary {
    type Error = StoreError;

    fn try_from(r: SummaryRow) -> Result<Self, StoreError> {
        Ok(DeliverySummary {
            state: DeliveryState::parse(&r.state)
                .ok_or_else(|| corrupt("deliveries", format!("unknown state `{}`", r.state)))?,
            id: r.id,
            delivery_id: r.delivery_id,
            event: r.event,
            action: r.action,
            repository: r.repository,
            sender_login: r.sender_login,
            received_at: r.received_at,
            attempts: r.attempts,
            error: r.error,
        })
    }
}

/// Maps a row of `select_runs!()` read through rusqlite.
impl FromSqliteRow for RunRow {
    fn from_sqlite_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Self> {
        Ok(RunRow {
            id: row.get(0)?,
            workflow: row.get(1)?,
            delivery_id: row.get(2)?,
            event: row.get(3)?,
            repository: row.get(4)?,
            subject_number: row.get(5)?,
            head_sha: row.get(6)?,
            classification: row.get(7)?,
            reason: row.get(8)?,
            context: row.get(9)?,
            priority: row.get(10)?,
            concurrency_group: row.get(11)?,
            state: row.get(12)?,
            desired_state: row.get(13)?,
            max_parallel: row.get(14)?,
            deadline_at: row.get(15)?,
            cost_usd: row.get(16)?,
            conclusion: row.get(17)?,
            created_at: row.get(18)?,
            started_at: row.get(19)?,
            finished_at: row.get(20)?,
            waiting_approval: row.get(21)?,
            approved_by: row.get(22)?,
            checkout_sha: row.get(23)?,
            stopped_by_budget: row.get(24)?,
        })
    }
}

/// Maps a row of `step_columns!()` read through rusqlite.
impl FromSqliteRow for StepRow {
    fn from_sqlite_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Self> {
        Ok(StepRow {
            id: row.get(0)?,
            run_id: row.get(1)?,
            step: row.get(2)?,
            position: row.get(3)?,
            needs: row.get(4)?,
            continue_on_error: row.get(5)?,
            state: row.get(6)?,
            agent: row.get(7)?,
            agent_index: row.get(8)?,
            attempts: row.get(9)?,
            agent_attempts: row.get(10)?,
            run_at: row.get(11)?,
            priority: row.get(12)?,
            lease_owner: row.get(13)?,
            lease_expires_at: row.get(14)?,
            output: row.get(15)?,
            error: row.get(16)?,
            started_at: row.get(17)?,
            finished_at: row.get(18)?,
            cost_usd: row.get(19)?,
        })
    }
}

pub(in crate::store) const TASK_COLUMNS: &str = "id, source, repository, subject_number, title, body, \
     classification, state, run_id, created_by, created_at, updated_at";

/// A row of `tasks` as stored. SQLite reads tasks through
/// [`FromSqliteRow`]; PostgreSQL through `sqlx::FromRow`.
#[derive(sqlx::FromRow)]
pub(in crate::store) struct TaskRow {
    id: i64,
    source: String,
    repository: Option<String>,
    subject_number: Option<i64>,
    title: String,
    body: String,
    classification: String,
    state: String,
    run_id: Option<i64>,
    created_by: String,
    created_at: i64,
    updated_at: i64,
}

/// Maps a row selected with [`TASK_COLUMNS`].
impl FromSqliteRow for TaskRow {
    fn from_sqlite_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Self> {
        Ok(TaskRow {
            id: row.get(0)?,
            source: row.get(1)?,
            repository: row.get(2)?,
            subject_number: row.get(3)?,
            title: row.get(4)?,
            body: row.get(5)?,
            classification: row.get(6)?,
            state: row.get(7)?,
            run_id: row.get(8)?,
            created_by: row.get(9)?,
            created_at: row.get(10)?,
            updated_at: row.get(11)?,
        })
    }
}

impl TryFrom<TaskRow> for TaskRecord {
    type Error = StoreError;
    fn try_from(r: TaskRow) -> Result<Self, StoreError> {
        Ok(TaskRecord {
            source: TaskSource::parse(&r.source)
                .ok_or_else(|| corrupt("tasks", format!("unknown source `{}`", r.source)))?,
            state: TaskState::parse(&r.state)
                .ok_or_else(|| corrupt("tasks", format!("unknown state `{}`", r.state)))?,
            classification: serde_json::from_str(&r.classification)
                .map_err(|e| corrupt("tasks", format!("classification is not JSON: {e}")))?,
            id: r.id,
            repository: r.repository,
            subject_number: r.subject_number,
            title: r.title,
            body: r.body,
            run_id: r.run_id,
            created_by: r.created_by,
            created_at: r.created_at,
            updated_at: r.updated_at,
        })
    }
}

pub(in crate::store) const VALIDATION_COLUMNS: &str =
    "id, run_id, step, kind, verdict, summary, evidence, created_by, created_at";

#[derive(sqlx::FromRow)]
pub(in crate::store) struct ValidationRow {
    id: i64,
    run_id: Option<i64>,
    step: Option<String>,
    kind: String,
    verdict: String,
    summary: String,
    evidence: String,
    created_by: String,
    created_at: i64,
}

sqlite_row!(ValidationRow {
    id,
    run_id,
    step,
    kind,
    verdict,
    summary,
    evidence,
    created_by,
    created_at
});

impl TryFrom<ValidationRow> for ValidationRecord {
    type Error = StoreError;
    fn try_from(r: ValidationRow) -> Result<Self, StoreError> {
        Ok(ValidationRecord {
            kind: ValidationKind::parse(&r.kind)
                .ok_or_else(|| corrupt("validations", format!("unknown kind `{}`", r.kind)))?,
            verdict: Verdict::parse(&r.verdict).ok_or_else(|| {
                corrupt("validations", format!("unknown verdict `{}`", r.verdict))
            })?,
            evidence: serde_json::from_str(&r.evidence)
                .map_err(|e| corrupt("validations", format!("evidence is not JSON: {e}")))?,
            id: r.id,
            run_id: r.run_id,
            step: r.step,
            summary: r.summary,
            created_by: r.created_by,
            created_at: r.created_at,
        })
    }
}

/// A nullable column of `table` holding `what`'s stored name, read back as
/// the enum `parse` gives; a name it does not know is a [`StoreError::Corrupt`]
/// row (what rusqlite's `FromSql` impls do for SQLite).
pub(in crate::store) fn parse_named<T>(
    table: &'static str,
    what: &str,
    text: Option<&str>,
    parse: impl Fn(&str) -> Option<T>,
) -> Result<Option<T>, StoreError> {
    text.map(|t| parse(t).ok_or_else(|| corrupt(table, format!("unknown {what} `{t}`"))))
        .transpose()
}

/// A repository name read back from `table`'s `repository` column; a value
/// that is not `owner/name` is a [`StoreError::Corrupt`] row.
pub(crate) fn repo_name(table: &'static str, text: &str) -> Result<super::RepoName, StoreError> {
    super::RepoName::parse(text).map_err(|e| corrupt(table, e.to_string()))
}

/// [`repo_name`] of each row.
pub(crate) fn repo_names(
    table: &'static str,
    rows: impl IntoIterator<Item = String>,
) -> Result<Vec<super::RepoName>, StoreError> {
    rows.into_iter()
        .map(|text| repo_name(table, &text))
        .collect()
}
