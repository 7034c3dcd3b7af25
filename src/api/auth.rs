//! Bearer API tokens and roles.
//!
//! A token is `tm_` followed by 64 hex digits (32 bytes from the operating
//! system's CSPRNG). It is shown once, when created (`taskmaster token
//! create` or `POST /api/tokens`), and stored as its SHA-256 only; a request
//! is authenticated by hashing the presented token and looking the hash up.
//! With 256 bits of entropy a fast hash suffices: there is no dictionary to
//! try. Revoked tokens are refused at once (every request reads the store).
//!
//! Roles, from most to least powerful (see [`Permission`]):
//!
//! | role | may |
//! | --- | --- |
//! | `admin` | everything, including tokens and the audit log |
//! | `developer` | read; tasks and validations; execute and control workflows |
//! | `operator` | read; execute workflows; pause, resume, cancel and retry runs |
//! | `viewer` | read |
//!
//! Without a valid token the answer is 401; with a token whose role lacks
//! the permission, 403. The check is an extractor ([`Authorized`]) that runs
//! before the body is read, so a refused caller learns nothing about what a
//! valid body would have done.

use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::Mutex;

use axum::extract::FromRequestParts;
use axum::http::StatusCode;
use axum::http::request::Parts;
use sha2::{Digest, Sha256};

use super::ApiState;
use super::error::Problem;
use crate::store::{ActorKind, Admin, ApiToken, AuditEntry, NewApiToken, Role, StoreError, now_ms};

/// What a request may need.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Permission {
    /// Read runs, tasks, validations, agents, metrics.
    Read,
    /// Start workflows (`POST /api/workflows/execute`).
    Execute,
    /// Pause, resume, cancel and retry runs.
    Control,
    /// Create and change tasks.
    Tasks,
    /// Record validations.
    Validations,
    /// Manage tokens; read the audit log.
    Admin,
}

impl Permission {
    /// Every permission.
    pub const ALL: &'static [Permission] = &[
        Permission::Read,
        Permission::Execute,
        Permission::Control,
        Permission::Tasks,
        Permission::Validations,
        Permission::Admin,
    ];

    /// The roles that have this permission, most powerful first.
    pub fn roles(self) -> Vec<Role> {
        Role::ALL
            .iter()
            .copied()
            .filter(|r| allows(*r, self))
            .collect()
    }
}

/// Whether `role` has `permission` (the table in the module docs).
pub fn allows(role: Role, permission: Permission) -> bool {
    use Permission::*;
    match role {
        Role::Admin => true,
        Role::Developer => matches!(permission, Read | Execute | Control | Tasks | Validations),
        Role::Operator => matches!(permission, Read | Execute | Control),
        Role::Viewer => matches!(permission, Read),
    }
}

/// Length of the stored, displayable prefix of a token (`tm_` and 8 hex digits).
const PREFIX_LEN: usize = 11;

/// A freshly generated token: the secret (show it once) and what to store.
pub struct GeneratedToken {
    /// The token to hand to the caller. Never stored, never logged.
    pub secret: secrecy::SecretString,
    /// Hex SHA-256 of `secret`.
    pub hash: String,
    /// The first characters of `secret`.
    pub prefix: String,
}

/// Generates a token from the operating system's CSPRNG.
///
/// Errors: the OS random source failed (practically never; then no token).
pub fn generate_token() -> Result<GeneratedToken, getrandom::Error> {
    let mut bytes = [0u8; 32];
    getrandom::getrandom(&mut bytes)?;
    let secret = format!("tm_{}", hex::encode(bytes));
    Ok(GeneratedToken {
        hash: hash_token(&secret),
        prefix: secret[..PREFIX_LEN].to_owned(),
        secret: secret.into(),
    })
}

/// Hex SHA-256 of a presented token.
pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Checks a token name: 1–64 characters of letters, digits, `.`, `_`, `-`.
pub fn check_token_name(name: &str) -> Result<(), String> {
    if name.is_empty()
        || name.len() > 64
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err(format!(
            "the token name `{name}` is not valid: use 1-64 letters, digits, `.`, `_` or `-`"
        ));
    }
    Ok(())
}

/// Why a token could not be created.
#[derive(Debug, thiserror::Error)]
pub enum CreateTokenError {
    /// The name breaks the rule of [`check_token_name`].
    #[error("{0}")]
    BadName(String),
    /// A token of this name exists (names are never reused).
    #[error(
        "a token named `{0}` exists already (names are never reused, even after revocation); pick another name"
    )]
    NameTaken(String),
    /// The OS random source failed.
    #[error("cannot generate a token: {0}")]
    Random(String),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Creates a token of `role` called `name` (a generated name when `None`),
/// records it in the audit log as done by `actor`, and returns the secret
/// (to show once) with the stored record.
pub async fn create_token(
    store: &dyn Admin,
    role: Role,
    name: Option<&str>,
    actor: (ActorKind, &str),
) -> Result<(GeneratedToken, ApiToken), CreateTokenError> {
    create_token_expiring(store, role, name, actor, None).await
}

/// [`create_token`] for a token refused from `expires_at` (epoch ms) on.
///
/// # Errors
/// As [`create_token`].
pub async fn create_token_expiring(
    store: &dyn Admin,
    role: Role,
    name: Option<&str>,
    actor: (ActorKind, &str),
    expires_at: Option<i64>,
) -> Result<(GeneratedToken, ApiToken), CreateTokenError> {
    create_token_scoped(store, role, name, actor, expires_at, None).await
}

/// [`create_token_expiring`] for a token that may act on `repositories`
/// only (`owner/name` each; `None`: every repository). Admin tokens are
/// never scoped.
///
/// # Errors
/// As [`create_token`]; [`CreateTokenError::BadName`] for a malformed
/// repository or a scoped admin token.
pub async fn create_token_scoped(
    store: &dyn Admin,
    role: Role,
    name: Option<&str>,
    actor: (ActorKind, &str),
    expires_at: Option<i64>,
    repositories: Option<Vec<String>>,
) -> Result<(GeneratedToken, ApiToken), CreateTokenError> {
    if let Some(repos) = &repositories {
        if role == Role::Admin {
            return Err(CreateTokenError::BadName(
                "an admin token manages everything and cannot be scoped to repositories".into(),
            ));
        }
        if repos.is_empty() {
            return Err(CreateTokenError::BadName(
                "`repositories` names at least one `owner/name`".into(),
            ));
        }
        for r in repos {
            super::workflows::check_repository(r)
                .map_err(|p| CreateTokenError::BadName(p.detail))?;
        }
    }
    let generated = generate_token().map_err(|e| CreateTokenError::Random(e.to_string()))?;
    let name = match name {
        Some(n) => n.to_owned(),
        None => format!("{}-{}", role.as_str(), &generated.prefix[3..]),
    };
    check_token_name(&name).map_err(CreateTokenError::BadName)?;
    let now = now_ms();
    let stored = store
        .create_api_token(&NewApiToken {
            name: name.clone(),
            role,
            token_hash: generated.hash.clone(),
            prefix: generated.prefix.clone(),
            created_by: actor.1.to_owned(),
            created_at: now,
            expires_at,
            repositories: repositories.clone(),
        })
        .await?
        .ok_or_else(|| CreateTokenError::NameTaken(name.clone()))?;
    store
        .append_audit(&AuditEntry {
            id: 0,
            at: now,
            actor_kind: actor.0,
            actor: actor.1.to_owned(),
            action: "token.create".into(),
            target: Some(format!("token:{name}")),
            outcome: "ok".into(),
            detail: Some(serde_json::json!({
                "role": role.as_str(), "expires_at": expires_at, "repositories": repositories,
            })),
        })
        .await?;
    Ok((generated, stored))
}

/// Revokes the token called `name`, recording it in the audit log as done by
/// `actor`. `None`: no such token.
pub async fn revoke_token(
    store: &dyn Admin,
    name: &str,
    actor: (ActorKind, &str),
) -> Result<Option<ApiToken>, StoreError> {
    let now = now_ms();
    let revoked = store.revoke_api_token(name, now).await?;
    store
        .append_audit(&AuditEntry {
            id: 0,
            at: now,
            actor_kind: actor.0,
            actor: actor.1.to_owned(),
            action: "token.revoke".into(),
            target: Some(format!("token:{name}")),
            outcome: match &revoked {
                None => "error",
                Some(t) if t.revoked_at != Some(now) => "noop",
                Some(_) => "ok",
            }
            .into(),
            detail: None,
        })
        .await?;
    Ok(revoked)
}

/// The authenticated caller of a request.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The token's name (the actor in the audit log).
    pub name: String,
    /// The token's role.
    pub role: Role,
    /// The repositories (`owner/name`) the token may act on; `None`: all.
    pub repositories: Option<Vec<String>>,
}

impl Caller {
    /// Whether the token may act on `repository` (`None`: a record with no
    /// repository, which only unscoped tokens see).
    pub fn may_act_on(&self, repository: Option<&str>) -> bool {
        match (&self.repositories, repository) {
            (None, _) => true,
            (Some(allowed), Some(r)) => allowed.iter().any(|a| a.eq_ignore_ascii_case(r)),
            (Some(_), None) => false,
        }
    }

    /// For list endpoints: a scoped token names one of its repositories.
    ///
    /// # Errors
    /// 400 when a scoped token gives none; 403 when it is not one of its own.
    pub fn repository_filter(&self, asked: Option<&str>) -> Result<(), super::error::Problem> {
        match (&self.repositories, asked) {
            (None, _) => Ok(()),
            (Some(_), None) => Err(super::error::Problem::bad_request(
                "this token is scoped to repositories: give `repository`",
            )),
            (Some(_), Some(r)) if self.may_act_on(Some(r)) => Ok(()),
            (Some(_), Some(r)) => Err(super::error::Problem::forbidden(format!(
                "this token may not act on `{r}`"
            ))),
        }
    }

    /// The audit log's actor for this caller.
    pub fn actor(&self) -> (ActorKind, &str) {
        (ActorKind::ApiToken, &self.name)
    }
}

/// Remembers when each token's `last_used_at` was last written, so a busy
/// token costs one write a minute, not one per request.
#[derive(Debug, Default)]
pub struct UsageClock {
    written: Mutex<HashMap<i64, i64>>,
}

/// `last_used_at` is written at most this often per token, ms.
const USAGE_WRITE_INTERVAL_MS: i64 = 60_000;

impl UsageClock {
    fn due(&self, token_id: i64, now: i64) -> bool {
        let mut map = self.written.lock().expect("usage clock lock");
        match map.get(&token_id) {
            Some(at) if now - at < USAGE_WRITE_INTERVAL_MS => false,
            _ => {
                map.insert(token_id, now);
                true
            }
        }
    }
}

/// Authenticates the request's bearer token. Errors: 401 without a valid,
/// unrevoked token; 500 when the store fails.
pub async fn authenticate(parts: &Parts, state: &ApiState) -> Result<Caller, Problem> {
    let unauthorized = |detail: &str| Problem::new(StatusCode::UNAUTHORIZED, detail);
    let Some(value) = parts.headers.get(axum::http::header::AUTHORIZATION) else {
        return Err(unauthorized(
            "this endpoint needs an API token: send `Authorization: Bearer <token>` \
             (create one with `taskmaster token create --role viewer`)",
        ));
    };
    let token = value
        .to_str()
        .ok()
        .and_then(|v| {
            let (scheme, token) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        })
        .filter(|t| !t.is_empty())
        .ok_or_else(|| unauthorized("the Authorization header must be `Bearer <token>`"))?;
    let stored = state
        .store
        .api_token_by_hash(&hash_token(token))
        .await
        .map_err(Problem::internal)?;
    let Some(stored) = stored else {
        return Err(unauthorized("the API token is not valid"));
    };
    if stored.revoked_at.is_some() {
        return Err(unauthorized("the API token was revoked"));
    }
    let now = now_ms();
    if stored.expires_at.is_some_and(|at| at <= now) {
        return Err(unauthorized("the API token expired"));
    }
    if state.usage.due(stored.id, now)
        && let Err(e) = state.store.touch_api_token(stored.id, now).await
    {
        tracing::warn!(error = %e, token = %stored.name, "could not record the token's use");
    }
    Ok(Caller {
        name: stored.name,
        role: stored.role,
        repositories: stored.repositories,
    })
}

/// A permission as a type, for [`Authorized`].
pub trait Need: Send + Sync + 'static {
    /// The permission.
    const PERMISSION: Permission;
}

macro_rules! need {
    ($($(#[$m:meta])* $name:ident => $perm:ident),* $(,)?) => {$(
        $(#[$m])*
        #[derive(Debug)]
        pub struct $name;
        impl Need for $name {
            const PERMISSION: Permission = Permission::$perm;
        }
    )*};
}

need! {
    /// Needs [`Permission::Read`].
    CanRead => Read,
    /// Needs [`Permission::Execute`].
    CanExecute => Execute,
    /// Needs [`Permission::Control`].
    CanControl => Control,
    /// Needs [`Permission::Tasks`].
    CanWriteTasks => Tasks,
    /// Needs [`Permission::Validations`].
    CanWriteValidations => Validations,
    /// Needs [`Permission::Admin`].
    CanAdmin => Admin,
}

/// An extractor: the caller, authenticated and holding `N`'s permission.
/// Rejects with 401 (no valid token) or 403 (the role lacks it).
pub struct Authorized<N: Need>(pub Caller, pub PhantomData<N>);

impl<N: Need> FromRequestParts<ApiState> for Authorized<N> {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Self, Problem> {
        let caller = authenticate(parts, state).await?;
        if !allows(caller.role, N::PERMISSION) {
            let roles: Vec<&str> = N::PERMISSION.roles().iter().map(|r| r.as_str()).collect();
            return Err(Problem::new(
                StatusCode::FORBIDDEN,
                format!(
                    "the token `{}` has the role `{}`; this needs one of: {}",
                    caller.name,
                    caller.role,
                    roles.join(", ")
                ),
            ));
        }
        Ok(Authorized(caller, PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_prefixed_and_hashed() {
        let a = generate_token().unwrap();
        let b = generate_token().unwrap();
        use secrecy::ExposeSecret;
        assert_ne!(a.secret.expose_secret(), b.secret.expose_secret());
        assert!(a.secret.expose_secret().starts_with("tm_"));
        assert_eq!(a.secret.expose_secret().len(), 67);
        assert_eq!(a.hash, hash_token(a.secret.expose_secret()));
        assert!(a.secret.expose_secret().starts_with(&a.prefix));
        assert!(!format!("{:?}", a.secret).contains(&a.prefix[3..]));
    }

    #[test]
    fn roles_nest_as_documented() {
        for p in Permission::ALL {
            assert!(allows(Role::Admin, *p));
        }
        assert!(!allows(Role::Viewer, Permission::Execute));
        assert!(allows(Role::Operator, Permission::Control));
        assert!(!allows(Role::Operator, Permission::Tasks));
        assert!(allows(Role::Developer, Permission::Tasks));
        assert!(!allows(Role::Developer, Permission::Admin));
    }

    #[test]
    fn token_names_are_checked() {
        assert!(check_token_name("ci-bot.prod_1").is_ok());
        assert!(check_token_name("").is_err());
        assert!(check_token_name("has space").is_err());
        assert!(check_token_name(&"x".repeat(65)).is_err());
    }
}
