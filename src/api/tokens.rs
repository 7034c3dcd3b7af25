//! `/api/tokens` and `/api/audit`: what only an admin token may do —
//! create, list and revoke API tokens (the same operations as `taskmaster
//! token …`), and read the audit log.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::ApiState;
use super::auth::{Authorized, CanAdmin, CreateTokenError, create_token_scoped, revoke_token};
use super::error::{ApiResult, Body, Id, Params, Problem};
use crate::store::{ApiToken, AuditEntry, Role};

/// A token, without its secret.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TokenView {
    pub name: String,
    /// `admin`, `developer`, `operator` or `viewer`.
    pub role: String,
    /// The token's first characters, to recognise it.
    pub prefix: String,
    /// `cli` or the admin token that created it.
    pub created_by: String,
    /// Epoch milliseconds.
    pub created_at: i64,
    /// Epoch milliseconds (updated at most once a minute).
    pub last_used_at: Option<i64>,
    /// Epoch milliseconds; a revoked token is refused.
    pub revoked_at: Option<i64>,
    /// Epoch milliseconds from which the token is refused; absent: never.
    pub expires_at: Option<i64>,
    /// The repositories it may act on; absent: every one.
    pub repositories: Option<Vec<String>>,
}

impl From<ApiToken> for TokenView {
    fn from(t: ApiToken) -> Self {
        TokenView {
            name: t.name,
            role: t.role.as_str().into(),
            prefix: t.prefix,
            created_by: t.created_by,
            created_at: t.created_at,
            last_used_at: t.last_used_at,
            revoked_at: t.revoked_at,
            expires_at: t.expires_at,
            repositories: t.repositories,
        }
    }
}

/// `POST /api/tokens`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTokenRequest {
    /// `admin`, `developer`, `operator` or `viewer`.
    pub role: String,
    /// 1-64 letters, digits, `.`, `_`, `-`; generated when absent.
    pub name: Option<String>,
    /// Days until the token is refused (1-3650); without it, never.
    #[schema(minimum = 1, maximum = 3650)]
    #[serde(default, deserialize_with = "super::whole::opt_i64")]
    pub expires_in_days: Option<i64>,
    /// The repositories (`owner/name`) the token may act on; without it,
    /// every one. Not for admin tokens. A scoped token works with the API
    /// only (not the dashboard), and its list requests name a repository.
    pub repositories: Option<Vec<String>>,
}

/// A new token: the only time its secret is shown.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CreatedToken {
    /// The bearer token. Store it now: it cannot be shown again.
    pub token: String,
    #[serde(flatten)]
    pub info: TokenView,
}

/// One audit log entry.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AuditView {
    pub id: i64,
    /// Epoch milliseconds.
    pub at: i64,
    /// `github_user`, `api_token` or `system`.
    pub actor_kind: String,
    /// A GitHub login, a token name, or a component.
    pub actor: String,
    /// E.g. `run.cancel`, `token.create`.
    pub action: String,
    /// E.g. `run:42`.
    pub target: Option<String>,
    /// `ok`, `refused`, `error` or `noop`.
    pub outcome: String,
    #[schema(value_type = Option<Object>)]
    pub detail: Option<serde_json::Value>,
}

impl From<AuditEntry> for AuditView {
    fn from(e: AuditEntry) -> Self {
        AuditView {
            id: e.id,
            at: e.at,
            actor_kind: e.actor_kind.as_str().into(),
            actor: e.actor,
            action: e.action,
            target: e.target,
            outcome: e.outcome,
            detail: e.detail,
        }
    }
}

/// A page of the audit log, newest first.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AuditPage {
    pub items: Vec<AuditView>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// Paging of `GET /api/audit`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    /// Page size, 1-200 (default 50).
    pub limit: Option<i64>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// List API tokens (never their secrets).
#[utoipa::path(get, operation_id = "list_tokens", path = "/api/tokens", tag = "admin",
    responses(
        (status = 200, description = "Every token, oldest first", body = Vec<TokenView>),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an admin token", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
pub async fn list(
    State(state): State<ApiState>,
    _: Authorized<CanAdmin>,
) -> ApiResult<Json<Vec<TokenView>>> {
    let tokens = state.store.api_tokens().await?;
    Ok(Json(tokens.into_iter().map(TokenView::from).collect()))
}

/// Create an API token; its secret is in this answer only.
#[utoipa::path(post, operation_id = "create_token", path = "/api/tokens", tag = "admin", request_body = CreateTokenRequest,
    responses(
        (status = 201, description = "The token, with its secret", body = CreatedToken),
        (status = 400, description = "Invalid role or name", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an admin token", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The name is taken", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
pub async fn create(
    State(state): State<ApiState>,
    Authorized(caller, _): Authorized<CanAdmin>,
    Body(req): Body<CreateTokenRequest>,
) -> ApiResult<Response> {
    let role: Role = req
        .role
        .parse()
        .map_err(|e: String| Problem::bad_request(format!("`role`: {e}")))?;
    let expires_at = match req.expires_in_days {
        None => None,
        Some(days @ 1..=3650) => Some(crate::store::now_ms() + days * 86_400_000),
        Some(days) => {
            return Err(Problem::bad_request(format!(
                "`expires_in_days` is 1 to 3650, not {days}"
            )));
        }
    };
    match create_token_scoped(
        &*state.store,
        role,
        req.name.as_deref(),
        caller.actor(),
        expires_at,
        req.repositories.clone(),
    )
    .await
    {
        Ok((generated, stored)) => Ok((
            StatusCode::CREATED,
            Json(CreatedToken {
                token: generated.secret.expose_secret().to_owned(),
                info: stored.into(),
            }),
        )
            .into_response()),
        Err(CreateTokenError::BadName(e)) => Err(Problem::bad_request(e)),
        Err(e @ CreateTokenError::NameTaken(_)) => Err(Problem::conflict(e.to_string())),
        Err(e) => Err(Problem::internal(e)),
    }
}

/// Revoke an API token by name (idempotent). It is refused from now on.
#[utoipa::path(delete, operation_id = "revoke_token", path = "/api/tokens/{name}", tag = "admin",
    params(("name" = String, Path, description = "The token's name")),
    responses(
        (status = 200, description = "The token, revoked", body = TokenView),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an admin token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such token", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
pub async fn revoke(
    State(state): State<ApiState>,
    Authorized(caller, _): Authorized<CanAdmin>,
    Id(name): Id<String>,
) -> ApiResult<Json<TokenView>> {
    let revoked = revoke_token(&*state.store, &name, caller.actor()).await?;
    let token = revoked.ok_or_else(|| Problem::not_found(format!("no token named `{name}`")))?;
    Ok(Json(token.into()))
}

/// Read the audit log, newest first.
#[utoipa::path(get, operation_id = "list_audit_entries", path = "/api/audit", tag = "admin", params(AuditQuery),
    responses(
        (status = 200, description = "A page of audit entries", body = AuditPage),
        (status = 400, description = "Invalid paging", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an admin token", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
pub async fn audit_log(
    State(state): State<ApiState>,
    _: Authorized<CanAdmin>,
    Params(q): Params<AuditQuery>,
) -> ApiResult<Json<AuditPage>> {
    let page = super::Cursor::parse(q.limit, q.cursor.as_deref())?;
    let rows = state
        .store
        .audit_entries(page.before_id, page.limit + 1)
        .await?;
    let (items, next_cursor) = page.split(rows, |e| e.id);
    Ok(Json(AuditPage {
        items: items.into_iter().map(AuditView::from).collect(),
        next_cursor,
    }))
}
