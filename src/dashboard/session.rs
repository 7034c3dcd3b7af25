//! Who is looking: dashboard sessions, logins and CSRF tokens.
//!
//! A person logs in by pasting an API token (`taskmaster token create`) into
//! the login form. The token itself is never kept: the session cookie holds
//! the token's SHA-256 (what the store already keys tokens by), an expiry,
//! and an HMAC-SHA256 over both under the service's session key. Every
//! request verifies the MAC (in constant time) and then looks the token up,
//! so a revoked token ends its sessions at once and a role change applies on
//! the next click. The cookie is `HttpOnly` (no script reads it), `Secure`
//! and `SameSite=Strict` (no other site's page sends it).
//!
//! CSRF: every form carries a token derived from the session cookie
//! (`HMAC(key, "csrf." + cookie)`), checked on each POST, so a page that
//! cannot read our cookie cannot forge a form. The login form, which has no
//! session yet, is tied the same way to a short-lived random cookie
//! (`tm_login`). POSTs whose `Origin` names another host are refused as well.
//!
//! Read access is public when `TASKMASTER_DASHBOARD_PUBLIC=true`; controls
//! always need a session whose token has the `Control` permission
//! (operator, developer or admin).

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::DashboardState;
use crate::api::auth::{Caller, Permission, allows};
use crate::store::now_ms;

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "tm_session";
/// The login form's CSRF cookie.
pub const LOGIN_COOKIE: &str = "tm_login";
/// How long a session lasts, ms (12 hours).
pub const SESSION_TTL_MS: i64 = 12 * 3600 * 1000;

type HmacSha256 = Hmac<Sha256>;

/// The key sessions and CSRF tokens are signed with.
#[derive(Clone)]
pub struct SessionKey([u8; 32]);

impl std::fmt::Debug for SessionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionKey(..)")
    }
}

impl SessionKey {
    /// A key from configured text (any length: it is hashed to 32 bytes).
    pub fn from_secret(secret: &str) -> Self {
        use sha2::Digest;
        SessionKey(Sha256::digest(secret.as_bytes()).into())
    }

    /// A random key: sessions end when the process does.
    pub fn random() -> Self {
        let mut key = [0u8; 32];
        getrandom::getrandom(&mut key).expect("the OS random source works");
        SessionKey(key)
    }

    fn mac(&self, parts: &[&str]) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.0).expect("HMAC takes any key length");
        for (i, p) in parts.iter().enumerate() {
            if i > 0 {
                mac.update(b".");
            }
            mac.update(p.as_bytes());
        }
        mac
    }

    fn sign(&self, parts: &[&str]) -> String {
        hex::encode(self.mac(parts).finalize().into_bytes())
    }

    fn verify(&self, parts: &[&str], signature_hex: &str) -> bool {
        match hex::decode(signature_hex) {
            Ok(sig) => self.mac(parts).verify_slice(&sig).is_ok(),
            Err(_) => false,
        }
    }

    /// The cookie value of a session for the token with `token_hash`, ending
    /// at `expires_ms` (epoch ms).
    pub fn session_value(&self, token_hash: &str, expires_ms: i64) -> String {
        let exp = expires_ms.to_string();
        let sig = self.sign(&["session", token_hash, &exp]);
        format!("{token_hash}.{exp}.{sig}")
    }

    /// When a session cookie value expires (epoch ms), if it reads.
    pub fn session_expiry(value: &str) -> Option<i64> {
        value.split('.').nth(1)?.parse().ok()
    }

    /// The token hash of a valid, unexpired session cookie value.
    pub fn open_session(&self, value: &str, now: i64) -> Option<String> {
        let mut it = value.split('.');
        let (hash, exp, sig) = (it.next()?, it.next()?, it.next()?);
        if it.next().is_some() {
            return None;
        }
        if !self.verify(&["session", hash, exp], sig) {
            return None;
        }
        (exp.parse::<i64>().ok()? > now).then(|| hash.to_owned())
    }

    /// The CSRF token of forms shown to the session with cookie `session`.
    pub fn csrf_for(&self, session: &str) -> String {
        self.sign(&["csrf", session])
    }

    /// Checks a form's CSRF token against the session cookie.
    pub fn check_csrf(&self, session: &str, token: &str) -> bool {
        self.verify(&["csrf", session], token)
    }

    /// The login form's CSRF token for the `tm_login` cookie's nonce.
    pub fn login_csrf(&self, nonce: &str) -> String {
        self.sign(&["login", nonce])
    }

    /// Checks the login form's CSRF token.
    pub fn check_login_csrf(&self, nonce: &str, token: &str) -> bool {
        !nonce.is_empty() && self.verify(&["login", nonce], token)
    }
}

/// A session cookie's signature: what an ended session is recorded by.
pub fn session_signature(value: &str) -> &str {
    value.rsplit('.').next().unwrap_or(value)
}

/// A logged-in person.
#[derive(Debug, Clone)]
pub struct Session {
    /// The token they logged in with.
    pub caller: Caller,
    /// The CSRF token for the forms shown to them.
    pub csrf: String,
    /// The raw cookie value (the CSRF check binds to it).
    cookie: String,
}

impl Session {
    /// Whether the session may pause, resume, cancel, retry and redeliver.
    pub fn can_control(&self) -> bool {
        allows(self.caller.role, Permission::Control)
    }
}

/// The value of cookie `name` in the request, if sent.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// A `Set-Cookie` value: HttpOnly, Secure, SameSite=Strict, Path=/.
pub fn set_cookie(name: &str, value: &str, max_age_s: i64) -> String {
    format!("{name}={value}; Path=/; Max-Age={max_age_s}; HttpOnly; Secure; SameSite=Strict")
}

/// The session of the request, when its cookie is valid and its token is
/// not revoked. Errors: the store failed (logged; treated as no session).
pub async fn session(parts: &Parts, state: &DashboardState) -> Option<Session> {
    let Some(value) = cookie(&parts.headers, SESSION_COOKIE) else {
        return access_session(parts, state).await;
    };
    let hash = state.key.open_session(value, now_ms())?;
    // Logged out on the server: the cookie no longer opens a session,
    // even replayed.
    match state
        .api
        .store
        .session_ended(session_signature(value))
        .await
    {
        Ok(false) => {}
        Ok(true) => return None,
        Err(e) => {
            tracing::error!(error = %e, "cannot read the ended sessions");
            return None;
        }
    }
    let token = match state.api.store.api_token_by_hash(&hash).await {
        Ok(t) => t?,
        Err(e) => {
            tracing::error!(error = %e, "cannot read the session's token");
            return None;
        }
    };
    if token.revoked_at.is_some()
        || token.expires_at.is_some_and(|at| at <= now_ms())
        || token.repositories.is_some()
    {
        return None;
    }
    Some(Session {
        caller: Caller {
            name: token.name,
            role: token.role,
            repositories: None,
        },
        csrf: state.key.csrf_for(value),
        cookie: value.to_owned(),
    })
}

/// The header Cloudflare Access adds to every request it lets through.
pub const ACCESS_HEADER: &str = "cf-access-jwt-assertion";

/// A session from Cloudflare Access's signed header, when the service
/// trusts it (`sign_in.cloudflare_access`) and it verifies; the caller is
/// `access:{email}` with the role the rules grant. The CSRF token binds to
/// the header's value.
async fn access_session(parts: &Parts, state: &DashboardState) -> Option<Session> {
    let verifier = state.sign_in.access.as_ref()?;
    let jwt = parts.headers.get(ACCESS_HEADER)?.to_str().ok()?;
    match verifier.verify(jwt).await {
        Ok(who) => Some(Session {
            caller: Caller {
                name: format!("access:{}", who.email),
                role: who.role,
                repositories: None,
            },
            csrf: state.key.csrf_for(jwt),
            cookie: jwt.to_owned(),
        }),
        Err(why) => {
            tracing::warn!(%why, "Cloudflare Access token refused");
            None
        }
    }
}

/// An extractor: someone allowed to read the dashboard — anyone when it is
/// public, else a logged-in session. Others are sent to the login page.
pub struct Viewer(pub Option<Session>);

impl FromRequestParts<DashboardState> for Viewer {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &DashboardState,
    ) -> Result<Self, Response> {
        let s = session(parts, state).await;
        if s.is_none() && !state.settings.public {
            let next = parts
                .uri
                .path_and_query()
                .map(|p| p.as_str())
                .unwrap_or("/runs");
            let to = format!("/login?next={}", super::pages::url_encode(next));
            return Err(Redirect::to(&to).into_response());
        }
        Ok(Viewer(s))
    }
}

/// An extractor for POSTs that change something: a session with the
/// `Control` permission, from a page of this host. The CSRF token is checked
/// by [`Operator::refuse_csrf`] once the form is read.
pub struct Operator(pub Session);

impl FromRequestParts<DashboardState> for Operator {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &DashboardState,
    ) -> Result<Self, Response> {
        if !same_origin(&parts.headers) {
            return Err(super::pages::error_page(
                StatusCode::FORBIDDEN,
                "This form was sent from another site.",
            ));
        }
        let Some(s) = session(parts, state).await else {
            return Err(super::pages::error_page(
                StatusCode::UNAUTHORIZED,
                "Log in with an API token of the operator role to do this.",
            ));
        };
        if !s.can_control() {
            return Err(super::pages::error_page(
                StatusCode::FORBIDDEN,
                &format!(
                    "The token `{}` has the role `{}`; this needs operator, developer or admin.",
                    s.caller.name, s.caller.role
                ),
            ));
        }
        Ok(Operator(s))
    }
}

impl Operator {
    /// Checks the form's CSRF token: `None` when it is right, else the 403
    /// page to answer with.
    pub fn refuse_csrf(&self, state: &DashboardState, token: &str) -> Option<Response> {
        (!state.key.check_csrf(&self.0.cookie, token)).then(|| {
            super::pages::error_page(
                StatusCode::FORBIDDEN,
                "The form's CSRF token is missing or stale: reload the page and try again.",
            )
        })
    }
}

/// False when the request's `Origin` names a host other than its `Host`.
/// Requests without `Origin` pass (the CSRF token still guards them).
pub fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return true;
    };
    let Some(host) = headers.get(header::HOST).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    origin
        .split_once("://")
        .is_some_and(|(_, authority)| authority.eq_ignore_ascii_case(host))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_are_signed_and_expire() {
        let key = SessionKey::from_secret("k");
        let v = key.session_value("abcd", 2_000);
        assert_eq!(key.open_session(&v, 1_000).as_deref(), Some("abcd"));
        assert_eq!(key.open_session(&v, 2_000), None);
        assert_eq!(key.open_session(&v.replace("abcd", "abce"), 1_000), None);
        assert_eq!(
            SessionKey::from_secret("other").open_session(&v, 1_000),
            None
        );
        let csrf = key.csrf_for(&v);
        assert!(key.check_csrf(&v, &csrf));
        assert!(!key.check_csrf(&key.session_value("abcd", 3_000), &csrf));
        assert!(!key.check_login_csrf("", &key.login_csrf("")));
    }

    #[test]
    fn origin_must_match_host() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, "127.0.0.1:3000".parse().unwrap());
        assert!(same_origin(&h));
        h.insert(header::ORIGIN, "http://127.0.0.1:3000".parse().unwrap());
        assert!(same_origin(&h));
        h.insert(header::ORIGIN, "https://evil.example".parse().unwrap());
        assert!(!same_origin(&h));
    }
}
