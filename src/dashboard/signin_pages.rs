//! The sign-in with GitHub routes: `GET /auth/github` sends the browser to
//! GitHub with a fresh `state` and PKCE challenge (both kept in a signed,
//! ten-minute, HttpOnly cookie scoped to `/auth/github`); `GET
//! /auth/github/callback` checks the state against that cookie, exchanges
//! the code with the verifier, maps the person's login, organizations and
//! teams to a role ([`super::signin::github_role`]) and starts a session,
//! or says why not. See [`super::signin`] for the configuration.

use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use maud::html;
use serde::Deserialize;

use super::DashboardState;
use super::layout::{self, Nav};
use super::pages::{error_page, safe_next};
use super::session::{self, SESSION_COOKIE, set_cookie};
use super::signin::{GitHubIdentity, github_role, pkce_pair};
use crate::api::auth::{Caller, hash_token};
use crate::setup::constant_time_eq;
use crate::store::{NewApiToken, now_ms};

/// The cookie holding the flow's state, verifier and next page.
const FLOW_COOKIE: &str = "tm_oauth";
/// How long a sign-in may take at GitHub.
const FLOW_TTL_MS: i64 = 10 * 60 * 1000;

#[derive(Debug, Default, Deserialize)]
pub struct StartQuery {
    next: Option<String>,
}

/// `GET /auth/github`: to GitHub's authorize page.
pub async fn start(State(state): State<DashboardState>, Query(q): Query<StartQuery>) -> Response {
    let Some(github) = state.sign_in.github.as_ref() else {
        return error_page(
            StatusCode::NOT_FOUND,
            "Sign-in with GitHub is not set up on this service (sign_in.github in its configuration, and the App's client id and secret).",
        );
    };
    let mut flow_state = [0u8; 16];
    getrandom::getrandom(&mut flow_state).expect("the OS random source works");
    let flow_state = hex::encode(flow_state);
    let (verifier, challenge) = pkce_pair();
    let next = hex::encode(safe_next(q.next.as_deref()));
    let value = state.key.session_value(
        &format!("{flow_state}:{verifier}:{next}"),
        now_ms() + FLOW_TTL_MS,
    );
    let mut response =
        Redirect::to(&github.oauth.authorize_url(&flow_state, &challenge)).into_response();
    // Lax, not Strict: GitHub's redirect back is a cross-site navigation.
    let cookie = format!(
        "{FLOW_COOKIE}={value}; Path=/auth/github; Max-Age={}; HttpOnly; Secure; SameSite=Lax",
        FLOW_TTL_MS / 1000
    );
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        response.headers_mut().append(header::SET_COOKIE, v);
    }
    response
}

#[derive(Debug, Default, Deserialize)]
pub struct CallbackQuery {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
}

/// `GET /auth/github/callback`: checks the state, exchanges the code and
/// starts a session with the role the rules grant.
pub async fn callback(
    State(state): State<DashboardState>,
    headers: HeaderMap,
    Query(q): Query<CallbackQuery>,
) -> Response {
    let Some(github) = state.sign_in.github.as_ref() else {
        return error_page(
            StatusCode::NOT_FOUND,
            "Sign-in with GitHub is not set up on this service.",
        );
    };
    if let Some(error) = q.error {
        return refused(
            StatusCode::FORBIDDEN,
            &format!(
                "GitHub did not sign you in: {error}{}",
                q.error_description
                    .map(|d| format!(" ({d})"))
                    .unwrap_or_default()
            ),
        );
    }
    let flow =
        session::cookie(&headers, FLOW_COOKIE).and_then(|v| state.key.open_session(v, now_ms()));
    let Some(flow) = flow else {
        return refused(
            StatusCode::FORBIDDEN,
            "This sign-in was not started here, or took more than ten minutes: start again.",
        );
    };
    let mut parts = flow.splitn(3, ':');
    let (expected, verifier, next) = (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
    );
    let given = q.state.unwrap_or_default();
    if expected.is_empty() || !constant_time_eq(expected.as_bytes(), given.as_bytes()) {
        tracing::warn!("a sign-in callback with a state that is not this browser's was refused");
        return refused(
            StatusCode::FORBIDDEN,
            "The sign-in's state does not match the one this browser started with: start again.",
        );
    }
    let Some(code) = q.code.filter(|c| !c.is_empty() && c.len() <= 200) else {
        return refused(StatusCode::BAD_REQUEST, "GitHub sent no code.");
    };
    let next = hex::decode(next)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .map_or_else(|| "/runs".to_owned(), |n| safe_next(Some(&n)));
    let who: GitHubIdentity = match github.oauth.identify(&code, verifier).await {
        Ok(who) => who,
        Err(e) => {
            tracing::warn!(error = %e, "GitHub sign-in failed");
            return refused(StatusCode::BAD_GATEWAY, &format!("{e:#}"));
        }
    };
    let Some(role) = github_role(&github.config.roles, &who) else {
        tracing::info!(login = %who.login, "GitHub sign-in refused: no rule matches");
        return refused(
            StatusCode::FORBIDDEN,
            &format!(
                "Your GitHub account {} is in none of the organizations or teams this service lets in. \
                 Ask its operator to add you (sign_in.github.roles in its configuration).",
                who.login
            ),
        );
    };
    // The session is an API token of that role, never shown, that expires
    // with it: logging out, revoking and the audit log work as for any.
    let hours = i64::from(github.config.session_hours);
    let now = now_ms();
    let expires = now + hours * 3600 * 1000;
    let mut secret = [0u8; 32];
    getrandom::getrandom(&mut secret).expect("the OS random source works");
    let token = format!("tm_{}", hex::encode(secret));
    let hash = hash_token(&token);
    let mut suffix = [0u8; 3];
    getrandom::getrandom(&mut suffix).expect("the OS random source works");
    let name = format!("github.{}.{}", who.login, hex::encode(suffix));
    let created = state
        .api
        .store
        .create_api_token(&NewApiToken {
            name: name.clone(),
            role,
            token_hash: hash.clone(),
            prefix: "github".into(),
            created_by: "github-sign-in".into(),
            created_at: now,
            expires_at: Some(expires),
            repositories: None,
        })
        .await;
    match created {
        Ok(Some(_)) => {}
        Ok(None) => {
            return refused(
                StatusCode::CONFLICT,
                "A session of that name exists; sign in again.",
            );
        }
        Err(e) => {
            return error_page(
                StatusCode::INTERNAL_SERVER_ERROR,
                &format!("Sign-in failed: {e}"),
            );
        }
    }
    let caller = Caller {
        name: name.clone(),
        role,
        repositories: None,
    };
    if let Err(p) = crate::api::audit(
        &state.api,
        &caller,
        "dashboard.login",
        Some(format!("github:{}", who.login)),
        "ok",
        Some(serde_json::json!({ "via": "github", "role": role.as_str() })),
    )
    .await
    {
        return error_page(StatusCode::INTERNAL_SERVER_ERROR, &p.detail);
    }
    tracing::info!(login = %who.login, role = role.as_str(), "signed in with GitHub");
    let value = state.key.session_value(&hash, expires);
    // A page that moves on by itself: the session cookie is SameSite=Strict,
    // and a navigation that began at GitHub would not carry it.
    let content = html! {
        h1 { "Signed in" }
        p { "Signed in as " strong { (who.login) } " (" (role.as_str()) "). "
            a #continue href=(next) { "Continue" } }
    };
    let mut response = layout::respond(
        StatusCode::OK,
        layout::page(
            "Signed in",
            None,
            Nav::None,
            html! {
                meta http-equiv="refresh" content={ "0;url=" (next) };
                (content)
            },
        ),
    );
    let h = response.headers_mut();
    for cookie in [
        set_cookie(SESSION_COOKIE, &value, hours * 3600),
        format!("{FLOW_COOKIE}=; Path=/auth/github; Max-Age=0; HttpOnly; Secure; SameSite=Lax"),
    ] {
        if let Ok(v) = HeaderValue::from_str(&cookie) {
            h.append(header::SET_COOKIE, v);
        }
    }
    response
}

fn refused(status: StatusCode, why: &str) -> Response {
    layout::respond(
        status,
        layout::page(
            "Sign-in refused",
            None,
            Nav::None,
            html! {
                h1 { "Sign-in refused" }
                p.flash.error role="alert" { (why) }
                p { a href="/login" { "Back to the login page" } }
            },
        ),
    )
}
