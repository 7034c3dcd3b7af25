//! `/api/workflows`: start runs, list and read them, and control them
//! (pause, resume, cancel, retry).
//!
//! A run started here is made exactly as a webhook delivery makes one: a
//! synthetic event (`pull_request` or `issues`, action `opened`) is stored as
//! a delivery with the unique id `api:<uuid>` (state `done`), and
//! [`new_run`] builds the run from it — same context, classification,
//! concurrency group and critical-path ranks — which the store creates and
//! the engine settles and picks up. If the repository has sent deliveries
//! before, the run carries that installation, so its check run and sticky
//! comment are reported on GitHub like any other run.
//!
//! Control operations go through the [`Engine`](crate::engine::Engine), so
//! running attempts are stopped and the scheduler woken exactly as for a
//! comment command. Each is idempotent: asking twice answers 200 with
//! `changed: false`. Every call that changes something, or tries to, is
//! written to the audit log with the token's name.

use crate::ids::InstallationId;
use crate::store::RunId;
use std::collections::BTreeMap;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::auth::{Authorized, Caller, CanControl, CanExecute, CanRead};
use super::error::{ApiResult, Body, Id, Params, Problem};
use super::{ApiState, Cursor, audit};
use crate::engine::intake::new_run;
use crate::event::Event;
use crate::routing::route;
use crate::store::Role;
use crate::store::{
    AttemptRow, ControlOutcome, DeliveryState, EncodedPayload, NewDelivery, Run, RunEvent,
    RunFilter, RunState, StepRecord, now_ms,
};

/// `POST /api/workflows/execute`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExecuteRequest {
    /// The workflow's name (see `taskmaster validate`).
    pub workflow: String,
    /// `owner/name`.
    pub repository: String,
    /// The pull request to run on (give this or `issue_number`).
    #[schema(minimum = 1, maximum = 9223372036854775807_i64)]
    #[serde(default, deserialize_with = "super::whole::opt_u64")]
    pub pr_number: Option<u64>,
    /// The issue to run on (give this or `pr_number`).
    #[schema(minimum = 1, maximum = 9223372036854775807_i64)]
    #[serde(default, deserialize_with = "super::whole::opt_u64")]
    pub issue_number: Option<u64>,
    /// What the run's prompts and conditions see of the subject.
    pub context: Option<ExecuteContext>,
}

/// The subject as the run sees it; everything is optional.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExecuteContext {
    /// The PR's or issue's title.
    pub title: Option<String>,
    /// Its description (markdown).
    pub body: Option<String>,
    /// Its labels (they also steer the task classification).
    #[serde(default)]
    pub labels: Vec<String>,
    /// For PRs: the head branch (default `taskmaster-api`).
    pub head_branch: Option<String>,
    /// For PRs: the head commit, 40 hex digits. The PR's check run is
    /// created on it: give the real one for the run to be reported on GitHub.
    pub head_sha: Option<String>,
    /// For PRs: the base branch (default `main`).
    pub base_branch: Option<String>,
    /// Values of the workflow's declared `inputs` (others are refused).
    #[serde(default)]
    pub inputs: BTreeMap<String, String>,
}

/// A run, without its steps.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RunView {
    pub id: i64,
    pub workflow: String,
    /// The delivery that started it (`api:<uuid>` for runs started here).
    pub delivery_id: String,
    pub event: String,
    pub repository: Option<String>,
    /// The PR or issue number.
    pub subject_number: Option<i64>,
    pub head_sha: Option<String>,
    /// The commit the run's workspace checked out, once it has one (a PR's
    /// head, or the default branch's head for an issue run).
    pub checkout_sha: Option<String>,
    /// `queued`, `running`, `paused`, `succeeded`, `failed`, `cancelled`, `timed_out`.
    pub state: String,
    /// What was asked: `running`, `paused`, `cancelled`, `timed_out`.
    pub desired_state: String,
    /// Why it started.
    pub reason: String,
    /// Why it ended as it did.
    pub conclusion: Option<String>,
    /// 0 (low) to 3 (critical).
    pub priority: i64,
    pub concurrency_group: Option<String>,
    /// The task classification (`classify::Classification`), when routing made one.
    #[schema(value_type = Option<Object>)]
    pub classification: Option<serde_json::Value>,
    /// US dollars its attempts cost: reported by agents, or estimated from
    /// their `price:` (each attempt says which).
    pub cost_usd: f64,
    /// Why a budget stopped it (which budget, what was spent, how to raise
    /// it); absent otherwise.
    pub stopped_by_budget: Option<String>,
    /// Epoch milliseconds.
    pub created_at: i64,
    /// Epoch milliseconds.
    pub started_at: Option<i64>,
    /// Epoch milliseconds.
    pub finished_at: Option<i64>,
}

impl From<Run> for RunView {
    fn from(r: Run) -> Self {
        RunView {
            id: r.id.0,
            workflow: r.workflow,
            delivery_id: r.delivery_id,
            event: r.event,
            repository: r.repository.map(String::from),
            subject_number: r.subject_number,
            head_sha: r.head_sha,
            checkout_sha: r.checkout_sha,
            state: r.state.as_str().into(),
            desired_state: r.desired_state.as_str().into(),
            reason: r.reason,
            conclusion: r.conclusion,
            priority: r.priority.rank(),
            concurrency_group: r.concurrency_group,
            classification: r.classification.and_then(|c| serde_json::from_str(&c).ok()),
            cost_usd: r.cost_usd,
            stopped_by_budget: r.stopped_by_budget,
            created_at: r.created_at,
            started_at: r.started_at,
            finished_at: r.finished_at,
        }
    }
}

/// One step of a run.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct StepView {
    /// The step id in its workflow.
    pub step: String,
    /// `pending`, `ready`, `running`, `succeeded`, `failed`, `skipped`, `cancelled`, `timed_out`.
    pub state: String,
    pub needs: Vec<String>,
    /// The agent of the next (or current) attempt.
    pub agent: String,
    /// Attempts started, over every agent.
    pub attempts: i64,
    pub continue_on_error: bool,
    /// What the agent produced (redacted).
    pub output: Option<String>,
    /// Why it failed or was skipped.
    pub error: Option<String>,
    /// US dollars its attempts cost (reported or estimated; each attempt
    /// says which).
    pub cost_usd: f64,
    /// Epoch milliseconds.
    pub started_at: Option<i64>,
    /// Epoch milliseconds.
    pub finished_at: Option<i64>,
}

impl From<StepRecord> for StepView {
    fn from(s: StepRecord) -> Self {
        StepView {
            step: s.step,
            state: s.state.as_str().into(),
            needs: s.needs,
            agent: s.agent,
            attempts: s.attempts,
            continue_on_error: s.continue_on_error,
            output: s.output,
            error: s.error,
            cost_usd: s.cost_usd,
            started_at: s.started_at,
            finished_at: s.finished_at,
        }
    }
}

/// One attempt of a step against an agent.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AttemptView {
    pub step: String,
    /// 1-based over every agent.
    pub number: i64,
    pub agent: String,
    /// `succeeded`, `failed`, `timed_out`, `cancelled`, `lost`; absent while running.
    pub outcome: Option<String>,
    /// `transient` or `permanent`, for failures.
    pub error_class: Option<String>,
    pub error: Option<String>,
    /// Milliseconds.
    pub duration_ms: Option<i64>,
    /// US dollars; absent when neither reported nor priced.
    pub cost_usd: Option<f64>,
    /// `cost_usd` is an estimate from the agent's `price:`.
    pub cost_estimated: bool,
    /// Epoch milliseconds.
    pub started_at: i64,
    /// Epoch milliseconds.
    pub finished_at: Option<i64>,
}

impl From<AttemptRow> for AttemptView {
    fn from(a: AttemptRow) -> Self {
        AttemptView {
            step: a.step,
            number: a.number,
            agent: a.agent,
            outcome: a.outcome.map(|o| o.as_str().to_owned()),
            error_class: a.error_class.map(|c| c.as_str().to_owned()),
            error: a.error,
            duration_ms: a.duration_ms,
            cost_usd: a.cost_usd,
            cost_estimated: a.cost_estimated,
            started_at: a.started_at,
            finished_at: a.finished_at,
        }
    }
}

/// One entry of a run's timeline.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TimelineEntry {
    /// The step, for step events.
    pub step: Option<String>,
    /// Epoch milliseconds.
    pub at: i64,
    /// `run_created`, `step_ready`, `attempt_started`, `retry`, `fallback`, …
    pub kind: String,
    /// The reason, for people.
    pub detail: String,
}

impl From<RunEvent> for TimelineEntry {
    fn from(e: RunEvent) -> Self {
        TimelineEntry {
            step: e.step,
            at: e.at,
            kind: e.kind,
            detail: e.detail,
        }
    }
}

/// A run with its steps, attempts and timeline.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RunDetail {
    pub run: RunView,
    /// In topological order.
    pub steps: Vec<StepView>,
    /// In start order.
    pub attempts: Vec<AttemptView>,
    /// Oldest first.
    pub timeline: Vec<TimelineEntry>,
    /// What the run changed in its checkout and where that went; absent
    /// when no step with `changes: true` has ended yet.
    pub changes: Option<ChangesView>,
    /// What was predicted when the run was created: its expected time
    /// (p50, p90, of which queue), each step's estimate and what it rests
    /// on (`crate::insights::predict`); absent for runs created before
    /// predictions.
    pub prediction: Option<crate::insights::predict::Prediction>,
    /// For an unfinished run, what it still needs, in a sentence (as its
    /// check run says).
    pub expected: Option<String>,
}

/// A run's change: the latest harvest of its workspace and its way to GitHub.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ChangesView {
    /// `pending` (sent once the run succeeds), `published`, `refused`,
    /// `empty`, `failed` or `dry_run`.
    pub state: String,
    /// The step whose end harvested it.
    pub step: String,
    /// The commit it is on (the run's checkout).
    pub base_sha: String,
    pub files: Vec<ChangedFileView>,
    pub additions: u64,
    pub deletions: u64,
    /// The unified diff, cut at 512 KB (`diff_truncated`).
    pub diff: String,
    pub diff_truncated: bool,
    /// Why the policy refused it (nothing was sent).
    pub refused: Option<String>,
    /// Why sending it failed, or the last transient error.
    pub error: Option<String>,
    /// `new_pull_request`, `head_branch`, `pull_request_on_head`,
    /// `suggestions` or `linked`, once decided.
    pub target: Option<String>,
    /// The branch the commit is on.
    pub branch: Option<String>,
    /// The commit made on GitHub.
    pub commit: Option<String>,
    /// The pull request proposing it (or the one it was committed onto).
    pub pull_request: Option<PullRequestView>,
    /// Inline suggestions sent (fork pull requests).
    pub suggestions: u64,
    /// A note (why a new branch, dry run, …).
    pub note: Option<String>,
    /// Dry run: the pull request that would have been opened.
    #[schema(value_type = Option<Object>)]
    pub would_open: Option<serde_json::Value>,
}

/// One changed path.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ChangedFileView {
    pub path: String,
    /// `added`, `modified`, `deleted` or `type_changed`.
    pub status: String,
    /// Git modes (`100644`, `100755`, `120000`), absent for an added or deleted side.
    pub old_mode: Option<String>,
    pub new_mode: Option<String>,
    pub additions: u64,
    pub deletions: u64,
    /// Bytes of the new content.
    pub size: u64,
    pub binary: bool,
}

/// A pull request.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PullRequestView {
    pub number: u64,
    pub url: String,
    pub draft: bool,
}

impl From<crate::store::RunChange> for ChangesView {
    fn from(c: crate::store::RunChange) -> Self {
        let p = c.publication;
        ChangesView {
            state: c.state.as_str().into(),
            step: c.step,
            base_sha: c.change.base_sha.clone(),
            files: c
                .change
                .files
                .iter()
                .map(|f| ChangedFileView {
                    path: f.path.clone(),
                    status: serde_json::to_value(f.status)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_owned))
                        .unwrap_or_default(),
                    old_mode: f.old_mode.clone(),
                    new_mode: f.new_mode.clone(),
                    additions: f.additions,
                    deletions: f.deletions,
                    size: f.size,
                    binary: f.binary,
                })
                .collect(),
            additions: c.change.additions,
            deletions: c.change.deletions,
            diff: c.change.diff,
            diff_truncated: c.change.diff_truncated,
            refused: c.refused,
            error: c.last_error,
            target: p.target.and_then(|t| {
                serde_json::to_value(t)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
            }),
            branch: p.branch,
            commit: p.commit,
            pull_request: p.pull_request.map(|pr| PullRequestView {
                number: pr.number,
                url: pr.html_url,
                draft: pr.draft,
            }),
            suggestions: p.suggestions,
            note: p.note,
            would_open: p.would_open,
        }
    }
}

/// A page of runs, newest first.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RunPage {
    pub items: Vec<RunView>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// Filters of `GET /api/workflows`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct RunQuery {
    /// Only runs of this repository (`owner/name`).
    pub repository: Option<String>,
    /// Only runs of this workflow.
    pub workflow: Option<String>,
    /// Only runs in this state.
    pub state: Option<String>,
    /// Page size, 1-200 (default 50).
    pub limit: Option<i64>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// `POST /api/workflows/{id}/retry`.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RetryRequest {
    /// Retry this step and its dependents; without it, every failed,
    /// cancelled or timed-out step and their dependents.
    pub step: Option<String>,
}

/// What a control operation did.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ControlResult {
    /// False when the run already was as asked (operations are idempotent).
    pub changed: bool,
    /// The run as it stands now.
    pub run: RunView,
}

/// Start a workflow on a pull request or an issue.
///
/// Answers 201 with the new run (queued; the engine picks it up at once).
#[utoipa::path(post, operation_id = "execute_workflow", path = "/api/workflows/execute", tag = "workflows",
    request_body = ExecuteRequest,
    responses(
        (status = 201, description = "The run was created", body = RunView),
        (status = 400, description = "Invalid request", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The role may not execute workflows, or set an input that reaches a command (admin only)", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such workflow, or GitHub has no such pull request", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The workflow is disabled, or `context.head_sha` is not the pull request's head", body = Problem, content_type = "application/problem+json"),
        (status = 502, description = "GitHub could not be asked about the pull request", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
pub async fn execute(
    State(state): State<ApiState>,
    Authorized(caller, _): Authorized<CanExecute>,
    Body(req): Body<ExecuteRequest>,
) -> ApiResult<Response> {
    let result = start(&state, &caller, &req).await;
    let (outcome, target, detail) = match &result {
        Ok(run) => ("ok", Some(format!("run:{}", run.id)), None),
        Err(p) => ("refused", None, Some(p.detail.clone())),
    };
    audit(
        &state,
        &caller,
        "run.execute",
        target,
        outcome,
        Some(serde_json::json!({
            "workflow": req.workflow, "repository": req.repository,
            "pr_number": req.pr_number, "issue_number": req.issue_number, "error": detail,
        })),
    )
    .await?;
    let run = result?;
    Ok((StatusCode::CREATED, Json(run)).into_response())
}

pub(crate) fn check_repository(repo: &str) -> Result<(), Problem> {
    let ok = repo.split_once('/').is_some_and(|(owner, name)| {
        let part = |s: &str| {
            !s.is_empty()
                && s.len() <= 100
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        };
        part(owner) && part(name)
    });
    if ok {
        Ok(())
    } else {
        Err(Problem::bad_request(format!(
            "`repository` must be `owner/name`, not `{repo}`"
        )))
    }
}

async fn start(state: &ApiState, caller: &Caller, req: &ExecuteRequest) -> ApiResult<RunView> {
    let workflows = state.engine.workflows();
    let Some(wf) = workflows.get(&req.workflow) else {
        let names: Vec<&str> = workflows.iter().map(|w| w.name.as_str()).collect();
        return Err(Problem::not_found(format!(
            "no workflow named `{}` is loaded; the workflows are: {}",
            req.workflow,
            names.join(", ")
        )));
    };
    if !wf.enabled {
        return Err(Problem::conflict(format!(
            "the workflow `{}` is disabled (`enabled: false` in {})",
            wf.name,
            wf.file.display()
        )));
    }
    check_repository(&req.repository)?;
    if !caller.may_act_on(Some(&req.repository)) {
        return Err(Problem::forbidden(format!(
            "this token may not act on `{}`",
            req.repository
        )));
    }
    for n in [req.pr_number, req.issue_number].into_iter().flatten() {
        super::subject_number(n)?;
    }
    let default_ctx = ExecuteContext::default();
    let ctx = req.context.as_ref().unwrap_or(&default_ctx);
    for name in ctx.inputs.keys() {
        if !wf.inputs.iter().any(|i| &i.name == name) {
            return Err(Problem::bad_request(format!(
                "the workflow `{}` has no input `{name}`",
                wf.name
            )));
        }
    }
    if let Some(sha) = &ctx.head_sha
        && !(sha.len() == 40 && sha.bytes().all(|b| b.is_ascii_hexdigit()))
    {
        return Err(Problem::bad_request(
            "`context.head_sha` must be 40 hex digits",
        ));
    }
    // An input that reaches a command step's program or arguments runs as
    // a command on the service's machine: an admin's decision.
    if caller.role != Role::Admin
        && let Some(name) = ctx.inputs.keys().find(|n| wf.input_reaches_a_command(n))
    {
        return Err(Problem::forbidden(format!(
            "the input `{name}` reaches a command step's program or arguments: only an admin \
             token may set it"
        )));
    }
    let repo = crate::github::RepoName::parse(&req.repository)
        .map_err(|e| Problem::bad_request(format!("`repository`: {e}")))?;
    let installation = state.store.installation_for_repository(&repo).await?;
    // A pull request's check run is created on its head commit: the caller
    // cannot pick another one (a green check on a commit nobody reviewed).
    let checked: Option<ExecuteContext> = match (req.pr_number, &state.github, installation) {
        (Some(n), Some(github), Some(inst)) if !github.is_dry_run() => {
            let access = crate::github::WriteAccess {
                installation: inst,
                workflows: false,
            };
            let head = github.pull_request(access, &repo, n).await.map_err(|e| {
                if e.is_not_found() {
                    Problem::not_found(format!("{} has no pull request #{n}", req.repository))
                } else {
                    Problem::new(
                        StatusCode::BAD_GATEWAY,
                        format!("GitHub could not be asked for pull request #{n}: {e}"),
                    )
                }
            })?;
            if let Some(sha) = &ctx.head_sha
                && !sha.eq_ignore_ascii_case(&head.head_sha)
            {
                return Err(Problem::conflict(format!(
                    "`context.head_sha` is not the head of pull request #{n} (it is {}): \
                     runs are reported on the pull request's head",
                    head.head_sha
                )));
            }
            Some(ExecuteContext {
                head_sha: Some(head.head_sha.clone()),
                head_branch: ctx.head_branch.clone().or(Some(head.head_ref.clone())),
                base_branch: ctx.base_branch.clone().or(Some(head.base_ref.clone())),
                title: ctx.title.clone(),
                body: ctx.body.clone(),
                labels: ctx.labels.clone(),
                inputs: ctx.inputs.clone(),
            })
        }
        _ => None,
    };
    let ctx = checked.as_ref().unwrap_or(ctx);
    let (event_name, payload) = match (req.pr_number, req.issue_number) {
        (Some(n), None) if n > 0 => (
            "pull_request",
            pr_payload(req, ctx, n, caller, installation),
        ),
        (None, Some(n)) if n > 0 => ("issues", issue_payload(req, ctx, n, caller, installation)),
        (Some(_), Some(_)) => {
            return Err(Problem::bad_request(
                "give either `pr_number` or `issue_number`, not both",
            ));
        }
        (None, None) => {
            return Err(Problem::bad_request(
                "give `pr_number` or `issue_number`: the run needs a subject",
            ));
        }
        _ => return Err(Problem::bad_request("numbers start at 1")),
    };
    let bytes = serde_json::to_vec(&payload).map_err(Problem::internal)?;
    let event = Event::parse(event_name, &bytes).map_err(Problem::internal)?;
    let delivery_id = format!("api:{}", uuid::Uuid::new_v4());
    state
        .store
        .insert_deliveries(&[NewDelivery {
            delivery_id: delivery_id.clone(),
            event: event_name.into(),
            action: Some("opened".into()),
            hook_id: None,
            installation_id: installation,
            repository: Some(req.repository.clone()),
            sender_id: None,
            sender_login: Some(format!("api:{}", caller.name)),
            payload: EncodedPayload::encode(bytes.into()),
            received_at: now_ms(),
            state: DeliveryState::Done,
        }])
        .await?;
    let forecast = state.engine.forecast(&wf.name).await?;
    let classification = route(&event, workflows)
        .into_iter()
        .find_map(|d| d.classification);
    let mut run = new_run(
        workflows,
        wf,
        &event,
        &delivery_id,
        &format!("started through the API by `{}`", caller.name),
        classification,
        // An operator with a token is trusted: no `/approve` is awaited.
        None,
        &forecast,
    );
    if let Some(map) = run.context.as_object_mut() {
        map.insert(
            "inputs".into(),
            serde_json::to_value(wf.input_values(&ctx.inputs)).unwrap_or_default(),
        );
    }
    let created = state
        .store
        .create_runs(&[run])
        .await?
        .pop()
        .ok_or_else(|| Problem::internal("the store created no run"))?;
    for old in &created.superseded {
        state.engine.settle(*old).await?;
    }
    state.engine.settle(created.run_id).await?;
    state.engine.wake();
    let snap = state
        .store
        .run(created.run_id)
        .await?
        .ok_or_else(|| Problem::internal("the new run vanished"))?;
    Ok(snap.run.into())
}

fn sender(caller: &Caller) -> serde_json::Value {
    serde_json::json!({ "login": format!("api:{}", caller.name), "id": 0, "type": "Bot" })
}

fn repo_json(full_name: &str) -> serde_json::Value {
    serde_json::json!({ "full_name": full_name, "fork": false })
}

fn labels(ctx: &ExecuteContext) -> serde_json::Value {
    ctx.labels
        .iter()
        .map(|l| serde_json::json!({ "name": l }))
        .collect()
}

fn installation_json(installation: Option<InstallationId>) -> serde_json::Value {
    installation
        .map(|id| serde_json::json!({ "id": id }))
        .unwrap_or(serde_json::Value::Null)
}

fn pr_payload(
    req: &ExecuteRequest,
    ctx: &ExecuteContext,
    number: u64,
    caller: &Caller,
    installation: Option<InstallationId>,
) -> serde_json::Value {
    let sha = ctx.head_sha.clone().unwrap_or_else(|| "0".repeat(40));
    serde_json::json!({
        "action": "opened",
        "pull_request": {
            "number": number,
            "title": ctx.title.clone().unwrap_or_default(),
            "body": ctx.body,
            "draft": false,
            "state": "open",
            "labels": labels(ctx),
            "base": { "ref": ctx.base_branch.as_deref().unwrap_or("main"), "sha": "0".repeat(40),
                      "repo": repo_json(&req.repository) },
            "head": { "ref": ctx.head_branch.as_deref().unwrap_or("taskmaster-api"), "sha": sha,
                      "repo": repo_json(&req.repository) },
            "user": sender(caller),
            "author_association": "MEMBER",
        },
        "repository": repo_json(&req.repository),
        "sender": sender(caller),
        "installation": installation_json(installation),
    })
}

fn issue_payload(
    req: &ExecuteRequest,
    ctx: &ExecuteContext,
    number: u64,
    caller: &Caller,
    installation: Option<InstallationId>,
) -> serde_json::Value {
    serde_json::json!({
        "action": "opened",
        "issue": {
            "number": number,
            "title": ctx.title.clone().unwrap_or_default(),
            "body": ctx.body,
            "state": "open",
            "labels": labels(ctx),
            "user": sender(caller),
            "author_association": "MEMBER",
        },
        "repository": repo_json(&req.repository),
        "sender": sender(caller),
        "installation": installation_json(installation),
    })
}

/// List runs, newest first, with filters.
#[utoipa::path(get, operation_id = "list_runs", path = "/api/workflows", tag = "workflows", params(RunQuery),
    responses(
        (status = 200, description = "A page of runs", body = RunPage),
        (status = 400, description = "Invalid filter", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
pub async fn list(
    State(state): State<ApiState>,
    Authorized(caller, _): Authorized<CanRead>,
    Params(q): Params<RunQuery>,
) -> ApiResult<Json<RunPage>> {
    caller.repository_filter(q.repository.as_deref())?;
    let page = Cursor::parse(q.limit, q.cursor.as_deref())?;
    let run_state = q
        .state
        .as_deref()
        .map(|s| {
            RunState::parse(s).ok_or_else(|| {
                Problem::bad_request(format!(
                    "`state` must be one of queued, running, paused, succeeded, failed, \
                     cancelled, timed_out, not `{s}`"
                ))
            })
        })
        .transpose()?;
    let runs = state
        .store
        .list_runs(&RunFilter {
            repository: q.repository,
            workflow: q.workflow,
            state: run_state,
            before_id: page.before_id,
            limit: page.limit + 1,
            ..RunFilter::default()
        })
        .await?;
    let (items, next_cursor) = page.split(runs, |r| r.id.0);
    Ok(Json(RunPage {
        items: items.into_iter().map(RunView::from).collect(),
        next_cursor,
    }))
}

/// One run with its steps, attempts and timeline.
#[utoipa::path(get, operation_id = "get_run", path = "/api/workflows/{id}", tag = "workflows",
    params(("id" = i64, Path, description = "The run id")),
    responses(
        (status = 200, description = "The run", body = RunDetail),
        (status = 400, description = "The id is not a number", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such run", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
pub async fn get(
    State(state): State<ApiState>,
    Authorized(caller, _): Authorized<CanRead>,
    Id(id): Id<i64>,
) -> ApiResult<Json<RunDetail>> {
    visible_run(&state, &caller, id).await?;
    Ok(Json(run_detail(&state, id).await?))
}

/// 404 unless run `id` exists and `caller` may act on its repository (a
/// scoped token learns nothing of other repositories' runs).
pub(crate) async fn visible_run(state: &ApiState, caller: &Caller, id: i64) -> ApiResult<()> {
    match state.store.run(RunId(id)).await? {
        Some(snap) if caller.may_act_on(snap.run.repository.as_deref()) => Ok(()),
        _ => Err(Problem::not_found(format!("no run {id}"))),
    }
}

pub(super) async fn run_detail(state: &ApiState, id: i64) -> ApiResult<RunDetail> {
    let snap = state
        .store
        .run(RunId(id))
        .await?
        .ok_or_else(|| Problem::not_found(format!("no run {id}")))?;
    let attempts = state.store.attempts(RunId(id)).await?;
    let timeline = state.store.run_events(RunId(id)).await?;
    let changes = state
        .store
        .run_change(RunId(id))
        .await?
        .map(ChangesView::from);
    let prediction = crate::insights::predict::Prediction::of_context(&snap.run.context);
    let expected = crate::engine::forecast::expected(&snap);
    Ok(RunDetail {
        changes,
        prediction,
        expected,
        run: snap.run.into(),
        steps: snap.steps.into_iter().map(StepView::from).collect(),
        attempts: attempts.into_iter().map(AttemptView::from).collect(),
        timeline: timeline.into_iter().map(TimelineEntry::from).collect(),
    })
}

/// The operations of the control endpoints.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Control {
    Pause,
    Resume,
    Cancel,
    Retry,
}

/// Runs `op` on run `id` through the engine and writes the audit entry
/// (shared with the dashboard's buttons).
pub(crate) async fn control(
    state: &ApiState,
    caller: &Caller,
    id: i64,
    op: Control,
    step: Option<&str>,
) -> ApiResult<Json<ControlResult>> {
    visible_run(state, caller, id).await?;
    let engine = &state.engine;
    let result = match op {
        Control::Pause => engine.pause(RunId(id)).await,
        Control::Resume => engine.resume(RunId(id)).await,
        Control::Cancel => {
            engine
                .cancel(
                    RunId(id),
                    &format!("cancelled through the API by `{}`", caller.name),
                )
                .await
        }
        Control::Retry => engine.retry(RunId(id), step).await,
    };
    let action = match op {
        Control::Pause => "run.pause",
        Control::Resume => "run.resume",
        Control::Cancel => "run.cancel",
        Control::Retry => "run.retry",
    };
    let (outcome, answer) = match result {
        Ok(ControlOutcome::Changed) => ("ok", Ok(true)),
        Ok(ControlOutcome::Unchanged) => ("noop", Ok(false)),
        Ok(ControlOutcome::NotFound) => (
            "refused",
            Err(match step {
                Some(s) => Problem::not_found(format!("no run {id}, or it has no step `{s}`")),
                None => Problem::not_found(format!("no run {id}")),
            }),
        ),
        Err(e) => ("error", Err(Problem::internal(e))),
    };
    audit(
        state,
        caller,
        action,
        Some(format!("run:{id}")),
        outcome,
        step.map(|s| serde_json::json!({ "step": s })),
    )
    .await?;
    let changed = answer?;
    let run = state
        .store
        .run(RunId(id))
        .await?
        .ok_or_else(|| Problem::not_found(format!("no run {id}")))?;
    Ok(Json(ControlResult {
        changed,
        run: run.run.into(),
    }))
}

/// Pause a run: no new step starts; running ones finish. Idempotent.
#[utoipa::path(put, operation_id = "pause_run", path = "/api/workflows/{id}/pause", tag = "workflows",
    params(("id" = i64, Path, description = "The run id")),
    responses(
        (status = 200, description = "Paused (or already paused, or finished: `changed` says)", body = ControlResult),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The role may not control runs", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such run", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
pub async fn pause(
    State(state): State<ApiState>,
    Authorized(caller, _): Authorized<CanControl>,
    Id(id): Id<i64>,
) -> ApiResult<Json<ControlResult>> {
    control(&state, &caller, id, Control::Pause, None).await
}

/// Resume a paused run where it stood. Idempotent.
#[utoipa::path(put, operation_id = "resume_run", path = "/api/workflows/{id}/resume", tag = "workflows",
    params(("id" = i64, Path, description = "The run id")),
    responses(
        (status = 200, description = "Resumed (or was not paused: `changed` says)", body = ControlResult),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The role may not control runs", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such run", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
pub async fn resume(
    State(state): State<ApiState>,
    Authorized(caller, _): Authorized<CanControl>,
    Id(id): Id<i64>,
) -> ApiResult<Json<ControlResult>> {
    control(&state, &caller, id, Control::Resume, None).await
}

/// Cancel a run: running attempts stop cooperatively, the rest is cancelled. Idempotent.
#[utoipa::path(delete, operation_id = "cancel_run", path = "/api/workflows/{id}", tag = "workflows",
    params(("id" = i64, Path, description = "The run id")),
    responses(
        (status = 200, description = "Cancelling (or already over: `changed` says)", body = ControlResult),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The role may not control runs", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such run", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
pub async fn cancel(
    State(state): State<ApiState>,
    Authorized(caller, _): Authorized<CanControl>,
    Id(id): Id<i64>,
) -> ApiResult<Json<ControlResult>> {
    control(&state, &caller, id, Control::Cancel, None).await
}

/// Retry failed, cancelled and timed-out steps (or one step) and their dependents.
///
/// The body is optional: `{}` or none retries every failed step.
#[utoipa::path(post, operation_id = "retry_run", path = "/api/workflows/{id}/retry", tag = "workflows",
    params(("id" = i64, Path, description = "The run id")),
    request_body(content = Option<RetryRequest>, description = "Which step to retry (optional)"),
    responses(
        (status = 200, description = "Retrying (or nothing to retry: `changed` says)", body = ControlResult),
        (status = 400, description = "Invalid body", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The role may not control runs", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such run or step", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
pub async fn retry(
    State(state): State<ApiState>,
    Authorized(caller, _): Authorized<CanControl>,
    Id(id): Id<i64>,
    body: axum::body::Bytes,
) -> ApiResult<Json<ControlResult>> {
    let req: RetryRequest = if body.iter().all(u8::is_ascii_whitespace) {
        RetryRequest::default()
    } else {
        // `null` is no request: retry what failed.
        serde_json::from_slice::<Option<RetryRequest>>(&body)
            .map_err(|e| {
                Problem::bad_request(format!("the body is not a valid retry request: {e}"))
            })?
            .unwrap_or_default()
    };
    control(&state, &caller, id, Control::Retry, req.step.as_deref()).await
}
