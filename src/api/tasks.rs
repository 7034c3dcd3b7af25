//! `/api/tasks`: classified units of work.
//!
//! `POST /api/tasks {text}` runs the same classifier routing uses for issues
//! and pull requests ([`crate::classify`]) on free text: its first line is
//! the title, the rest the body, so a conventional-commit prefix
//! (`fix: …`), priority words and acceptance-criteria checklists are read as
//! they would be on GitHub. With `repository` and `issue_number` or
//! `pr_number`, the task stands for that issue or PR. A task can be linked
//! to the run working on it (`PUT {run_id}`), which
//! `GET /api/tasks/{id}/workflow` then shows.

use crate::store::RunId;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::auth::{Authorized, CanRead, CanWriteTasks};
use super::error::{ApiResult, Body, Id, Params, Problem};
use super::workflows::RunDetail;
use super::{ApiState, Cursor, audit};
use crate::classify::{TaskInput, classify};
use crate::store::{NewTask, TaskFilter, TaskRecord, TaskSource, TaskState, TaskUpdate, now_ms};

/// Longest task text accepted, bytes.
const MAX_TEXT: usize = 64 * 1024;

/// `POST /api/tasks`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTask {
    /// What is to be done, in plain words (markdown); the first line is the title.
    pub text: String,
    /// `owner/name` the task is about.
    pub repository: Option<String>,
    /// The issue it stands for.
    #[schema(minimum = 1, maximum = 9223372036854775807_i64)]
    #[serde(default, deserialize_with = "super::whole::opt_u64")]
    pub issue_number: Option<u64>,
    /// The pull request it stands for.
    #[schema(minimum = 1, maximum = 9223372036854775807_i64)]
    #[serde(default, deserialize_with = "super::whole::opt_u64")]
    pub pr_number: Option<u64>,
    /// Labels, as on GitHub (they steer the classification).
    #[serde(default)]
    pub labels: Vec<String>,
}

/// `PUT /api/tasks/{id}`: every field optional.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateTask {
    /// New text; the task is classified again.
    pub text: Option<String>,
    /// `open`, `in_progress`, `done` or `dismissed`.
    pub state: Option<String>,
    /// The run working on it; `null` unlinks.
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<i64>)]
    pub run_id: Option<Option<i64>>,
}

fn double_option<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<i64>>, D::Error> {
    Ok(Some(super::whole::opt_i64(d)?))
}

/// A task.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TaskView {
    pub id: i64,
    /// `api`, `issue` or `pull_request`.
    pub source: String,
    pub repository: Option<String>,
    /// Issue or PR number.
    pub subject_number: Option<i64>,
    pub title: String,
    pub body: String,
    /// The classifier's result: task type, priority, complexity, acceptance
    /// criteria, risks, and the evidence for each.
    #[schema(value_type = Object)]
    pub classification: serde_json::Value,
    /// `open`, `in_progress`, `done` or `dismissed`.
    pub state: String,
    pub run_id: Option<i64>,
    /// The token that created it.
    pub created_by: String,
    /// Epoch milliseconds.
    pub created_at: i64,
    /// Epoch milliseconds.
    pub updated_at: i64,
}

impl From<TaskRecord> for TaskView {
    fn from(t: TaskRecord) -> Self {
        TaskView {
            id: t.id,
            source: t.source.as_str().into(),
            repository: t.repository,
            subject_number: t.subject_number,
            title: t.title,
            body: t.body,
            classification: t.classification,
            state: t.state.as_str().into(),
            run_id: t.run_id,
            created_by: t.created_by,
            created_at: t.created_at,
            updated_at: t.updated_at,
        }
    }
}

/// A page of tasks, newest first.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TaskPage {
    pub items: Vec<TaskView>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// Filters of `GET /api/tasks`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct TaskQuery {
    /// Only tasks of this repository.
    pub repository: Option<String>,
    /// Only tasks in this state.
    pub state: Option<String>,
    /// Only the task of this issue or pull request number.
    pub number: Option<i64>,
    /// Page size, 1-200 (default 50).
    pub limit: Option<i64>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

fn split_text(text: &str) -> Result<(String, String), Problem> {
    if super::blank(text) {
        return Err(Problem::bad_request("`text` must not be empty"));
    }
    let text = text.trim();
    if text.len() > MAX_TEXT {
        return Err(Problem::bad_request(format!(
            "`text` is {} bytes; at most {MAX_TEXT} are accepted",
            text.len()
        )));
    }
    let (title, body) = text.split_once('\n').unwrap_or((text, ""));
    Ok((title.trim().to_owned(), body.trim().to_owned()))
}

fn parse_state(s: &str) -> Result<TaskState, Problem> {
    TaskState::parse(s).ok_or_else(|| {
        Problem::bad_request(format!(
            "`state` must be one of open, in_progress, done, dismissed, not `{s}`"
        ))
    })
}

/// List tasks, newest first.
#[utoipa::path(get, operation_id = "list_tasks", path = "/api/tasks", tag = "tasks", params(TaskQuery),
    responses(
        (status = 200, description = "A page of tasks", body = TaskPage),
        (status = 400, description = "Invalid filter", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
pub async fn list(
    State(state): State<ApiState>,
    Authorized(caller, _): Authorized<CanRead>,
    Params(q): Params<TaskQuery>,
) -> ApiResult<Json<TaskPage>> {
    caller.repository_filter(q.repository.as_deref())?;
    let page = Cursor::parse(q.limit, q.cursor.as_deref())?;
    let task_state = q.state.as_deref().map(parse_state).transpose()?;
    let tasks = state
        .store
        .tasks(&TaskFilter {
            repository: q.repository,
            subject_number: q.number,
            state: task_state,
            before_id: page.before_id,
            limit: page.limit + 1,
        })
        .await?;
    let (items, next_cursor) = page.split(tasks, |t| t.id);
    Ok(Json(TaskPage {
        items: items.into_iter().map(TaskView::from).collect(),
        next_cursor,
    }))
}

/// Create a task from natural-language text, classified as an issue would be.
#[utoipa::path(post, operation_id = "create_task", path = "/api/tasks", tag = "tasks", request_body = CreateTask,
    responses(
        (status = 201, description = "The task, classified", body = TaskView),
        (status = 400, description = "Invalid request", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The role may not create tasks", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
pub async fn create(
    State(state): State<ApiState>,
    Authorized(caller, _): Authorized<CanWriteTasks>,
    Body(req): Body<CreateTask>,
) -> ApiResult<Response> {
    let (title, body) = split_text(&req.text)?;
    if let Some(repo) = &req.repository {
        super::workflows::check_repository(repo)?;
    }
    if !caller.may_act_on(req.repository.as_deref()) {
        return Err(Problem::forbidden(match &req.repository {
            Some(r) => format!("this token may not act on `{r}`"),
            None => "this token is scoped to repositories: give `repository`".to_owned(),
        }));
    }
    let (source, number) = match (req.issue_number, req.pr_number) {
        (Some(_), Some(_)) => {
            return Err(Problem::bad_request(
                "give `issue_number` or `pr_number`, not both",
            ));
        }
        (Some(n), None) => (TaskSource::Issue, Some(super::subject_number(n)?)),
        (None, Some(n)) => (TaskSource::PullRequest, Some(super::subject_number(n)?)),
        (None, None) => (TaskSource::Api, None),
    };
    if number.is_some() && req.repository.is_none() {
        return Err(Problem::bad_request(
            "an issue or PR number needs `repository`",
        ));
    }
    let classification = classify(&TaskInput {
        title: &title,
        body: &body,
        labels: &req.labels,
        branch: None,
    });
    let now = now_ms();
    let task = state
        .store
        .create_task(&NewTask {
            source,
            repository: req.repository.clone(),
            subject_number: number,
            title,
            body,
            classification: serde_json::to_value(&classification).map_err(Problem::internal)?,
            created_by: caller.name.clone(),
            created_at: now,
        })
        .await?;
    audit(
        &state,
        &caller,
        "task.create",
        Some(format!("task:{}", task.id)),
        "ok",
        Some(serde_json::json!({ "task_type": classification.task_type })),
    )
    .await?;
    Ok((StatusCode::CREATED, Json(TaskView::from(task))).into_response())
}

/// Change a task: its text (classified again), its state, its run.
#[utoipa::path(put, operation_id = "update_task", path = "/api/tasks/{id}", tag = "tasks",
    params(("id" = i64, Path, description = "The task id")),
    request_body = UpdateTask,
    responses(
        (status = 200, description = "The task as changed", body = TaskView),
        (status = 400, description = "Invalid request", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The role may not change tasks", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such task, or no such run to link", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
pub async fn update(
    State(state): State<ApiState>,
    Authorized(caller, _): Authorized<CanWriteTasks>,
    Id(id): Id<i64>,
    Body(req): Body<UpdateTask>,
) -> ApiResult<Json<TaskView>> {
    visible_task(&state, &caller, id).await?;
    let mut update = TaskUpdate {
        updated_at: now_ms(),
        ..TaskUpdate::default()
    };
    if let Some(text) = &req.text {
        let (title, body) = split_text(text)?;
        let c = classify(&TaskInput {
            title: &title,
            body: &body,
            labels: &[],
            branch: None,
        });
        update.classification = Some(serde_json::to_value(&c).map_err(Problem::internal)?);
        update.title = Some(title);
        update.body = Some(body);
    }
    update.state = req.state.as_deref().map(parse_state).transpose()?;
    if let Some(Some(run_id)) = req.run_id
        && super::workflows::visible_run(&state, &caller, run_id)
            .await
            .is_err()
    {
        return Err(Problem::not_found(format!("no run {run_id} to link")));
    }
    update.run_id = req.run_id;
    let task = state.store.update_task(id, &update).await?;
    audit(
        &state,
        &caller,
        "task.update",
        Some(format!("task:{id}")),
        if task.is_some() { "ok" } else { "refused" },
        Some(serde_json::json!({ "state": req.state, "run_id": req.run_id, "text": req.text.is_some() })),
    )
    .await?;
    let task = task.ok_or_else(|| Problem::not_found(format!("no task {id}")))?;
    Ok(Json(task.into()))
}

/// The run linked to a task (or, for a task from GitHub without a linked
/// run, the newest run on its issue or PR), with its steps, attempts and
/// timeline.
#[utoipa::path(get, operation_id = "get_task_run", path = "/api/tasks/{id}/workflow", tag = "tasks",
    params(("id" = i64, Path, description = "The task id")),
    responses(
        (status = 200, description = "The task's run", body = RunDetail),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such task, or no run linked", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
pub async fn workflow(
    State(state): State<ApiState>,
    Authorized(caller, _): Authorized<CanRead>,
    Id(id): Id<i64>,
) -> ApiResult<Json<RunDetail>> {
    visible_task(&state, &caller, id).await?;
    let task = state
        .store
        .task(id)
        .await?
        .ok_or_else(|| Problem::not_found(format!("no task {id}")))?;
    // A linked run, else (tasks from GitHub) the newest run on its issue or PR.
    let run_id = match (task.run_id, &task.repository, task.subject_number) {
        (Some(run_id), _, _) => Some(RunId(run_id)),
        (None, Some(repository), Some(number)) => {
            match crate::github::RepoName::parse(repository) {
                Ok(repository) => state
                    .store
                    .subject_runs(&repository, number, 1)
                    .await?
                    .first()
                    .copied(),
                Err(_) => None,
            }
        }
        _ => None,
    };
    let run_id = run_id.ok_or_else(|| {
        Problem::not_found(format!(
            "task {id} has no run; link one with PUT /api/tasks/{id} {{\"run_id\": …}}"
        ))
    })?;
    super::workflows::visible_run(&state, &caller, run_id.0).await?;
    Ok(Json(super::workflows::run_detail(&state, run_id.0).await?))
}

/// 404 unless task `id` exists and `caller` may act on its repository.
async fn visible_task(state: &ApiState, caller: &super::auth::Caller, id: i64) -> ApiResult<()> {
    match state.store.task(id).await? {
        Some(t) if caller.may_act_on(t.repository.as_deref()) => Ok(()),
        _ => Err(Problem::not_found(format!("no task {id}"))),
    }
}
