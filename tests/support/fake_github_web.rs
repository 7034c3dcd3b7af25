//! github.com's side of the fake: registering an App from a manifest and
//! signing a user in through an App's OAuth client (the user-to-server
//! flow with PKCE), plus the REST calls a user token makes (`/user`,
//! `/user/orgs`, `/user/teams`).
//!
//! Like the rest of the fake it checks request shapes: a manifest missing a
//! field GitHub requires, an unknown client, a redirect URI the App does not
//! list, a code used twice or a PKCE verifier that does not match are
//! refused as GitHub refuses them.
//!
//! Sources: <https://docs.github.com/en/apps/sharing-github-apps/registering-a-github-app-from-a-manifest>,
//! <https://docs.github.com/en/apps/creating-github-apps/authenticating-with-a-github-app/generating-a-user-access-token-for-a-github-app>

use std::collections::HashMap;

use base64::Engine as _;
use serde_json::{Value, json};
use sha2::Digest as _;

use super::{Reply, Req, msg, not_found, reply};

/// The private key every registered App gets (a real RSA key, so the
/// service can sign JWTs with it).
const APP_KEY: &str = include_str!("../fixtures/github/app-key.pem");

/// An App registered from a manifest.
#[derive(Debug, Clone)]
pub struct RegisteredApp {
    pub id: u64,
    pub slug: String,
    /// The account it was registered for: `None` for the personal account,
    /// else the organization.
    pub organization: Option<String>,
    /// The manifest as posted.
    pub manifest: Value,
    pub webhook_secret: String,
    pub client_id: String,
    pub client_secret: String,
    /// The `state` the form carried.
    pub state: Option<String>,
}

/// A person who signs in, with what GitHub says about them.
#[derive(Debug, Clone, Default)]
pub struct OAuthUser {
    pub login: String,
    pub id: u64,
    /// Organizations they are a member of.
    pub orgs: Vec<String>,
    /// Teams, as `org/team-slug`.
    pub teams: Vec<String>,
}

#[derive(Debug, Clone)]
struct Client {
    secret: String,
    callbacks: Vec<String>,
}

#[derive(Debug, Clone)]
struct Grant {
    client_id: String,
    redirect_uri: String,
    challenge: String,
    user: OAuthUser,
}

/// The web side's state.
#[derive(Debug, Default)]
pub struct Web {
    pub apps: Vec<RegisteredApp>,
    /// Manifest codes not yet exchanged → index in `apps`.
    codes: HashMap<String, usize>,
    clients: HashMap<String, Client>,
    grants: HashMap<String, Grant>,
    user_tokens: HashMap<String, OAuthUser>,
    /// Who `GET /login/oauth/authorize` signs in.
    pub user: Option<OAuthUser>,
    counter: u64,
}

impl Web {
    /// The ids of registered Apps (their JWTs are accepted).
    pub fn app_ids(&self) -> Vec<u64> {
        self.apps.iter().map(|a| a.id).collect()
    }

    pub fn add_client(&mut self, id: &str, secret: &str, callback: &str) {
        self.clients.insert(
            id.to_owned(),
            Client {
                secret: secret.to_owned(),
                callbacks: vec![callback.to_owned()],
            },
        );
    }

    fn next(&mut self, prefix: &str) -> String {
        self.counter += 1;
        format!(
            "{prefix}{:08x}{}",
            self.counter * 2_654_435_761 % 0xffff_ffff,
            self.counter
        )
    }
}

/// Answers the web routes; `None` for anything else.
pub fn route(web: &mut Web, base: &str, req: &Req) -> Option<Reply> {
    let segs: Vec<&str> = req.segments.iter().map(String::as_str).collect();
    let answer = match (req.method.as_str(), segs.as_slice()) {
        ("POST", ["settings", "apps", "new"]) => register(web, base, req, None),
        ("POST", ["organizations", org, "settings", "apps", "new"]) => {
            register(web, base, req, Some((*org).to_owned()))
        }
        ("POST", ["app-manifests", code, "conversions"]) => convert(web, base, code),
        ("GET", ["login", "oauth", "authorize"]) => authorize(web, req),
        ("POST", ["login", "oauth", "access_token"]) => access_token(web, req),
        ("GET", ["user"]) => user_call(
            web,
            req,
            |u| json!({ "login": u.login, "id": u.id, "type": "User", "name": u.login }),
        ),
        ("GET", ["user", "orgs"]) => user_call(web, req, |u| {
            Value::Array(u.orgs.iter().map(|o| json!({ "login": o })).collect())
        }),
        ("GET", ["user", "teams"]) => user_call(web, req, |u| {
            Value::Array(
                u.teams
                    .iter()
                    .filter_map(|t| t.split_once('/'))
                    .map(|(org, slug)| json!({ "slug": slug, "name": slug, "organization": { "login": org } }))
                    .collect(),
            )
        }),
        _ => return None,
    };
    Some(answer)
}

/// The form fields of a `application/x-www-form-urlencoded` body.
fn form(req: &Req) -> HashMap<String, String> {
    let raw = match &req.body {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        // A JSON body: its string fields.
        Value::Object(map) => {
            return map
                .iter()
                .filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_owned())))
                .collect();
        }
        other => other.to_string(),
    };
    raw.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (
                super::percent_decode(k, true),
                super::percent_decode(v, true),
            )
        })
        .collect()
}

fn query<'a>(req: &'a Req, key: &str) -> Option<&'a str> {
    req.query
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

fn redirect(to: String) -> Reply {
    let mut r = reply(302, Value::Null);
    r.location = Some(to);
    r
}

/// `POST /settings/apps/new?state=…` (or an organization's): the browser
/// posts the manifest; GitHub creates the App (here, at once, as if the
/// person clicked "Create GitHub App") and redirects to `redirect_url`
/// with a one-hour code and the state.
fn register(web: &mut Web, base: &str, req: &Req, organization: Option<String>) -> Reply {
    let fields = form(req);
    let Some(text) = fields.get("manifest") else {
        return msg(422, "The manifest form field is missing");
    };
    let Ok(manifest) = serde_json::from_str::<Value>(text) else {
        return msg(422, "The manifest is not JSON");
    };
    let url_field = |v: &Value| {
        v.as_str()
            .is_some_and(|s| s.starts_with("http://") || s.starts_with("https://"))
    };
    let name = manifest["name"].as_str().unwrap_or_default();
    let mut errors = Vec::new();
    if name.is_empty() || name.chars().count() > 34 {
        errors.push("name must have 1 to 34 characters");
    }
    if !url_field(&manifest["url"]) {
        errors.push("url is required");
    }
    if !url_field(&manifest["hook_attributes"]["url"]) {
        errors.push("hook_attributes.url is required");
    }
    if !url_field(&manifest["redirect_url"]) {
        errors.push("redirect_url is required");
    }
    match manifest["default_permissions"].as_object() {
        Some(p)
            if p.values()
                .all(|v| matches!(v.as_str(), Some("read" | "write"))) => {}
        _ => errors.push("default_permissions must map permissions to read or write"),
    }
    if manifest["default_events"]
        .as_array()
        .is_none_or(|e| e.iter().any(|v| !v.is_string()))
    {
        errors.push("default_events must be a list of event names");
    }
    if let Some(callbacks) = manifest.get("callback_urls")
        && callbacks
            .as_array()
            .is_none_or(|c| c.is_empty() || c.len() > 10 || !c.iter().all(url_field))
    {
        errors.push("callback_urls must list 1 to 10 URLs");
    }
    if !errors.is_empty() {
        return reply(
            422,
            json!({ "message": "Invalid manifest", "errors": errors }),
        );
    }
    let id = 5000 + web.apps.len() as u64 + 1;
    let slug: String = name
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let client_id = format!("Iv23li{}", web.next(""));
    let client_secret = web.next("secret");
    let callbacks: Vec<String> = manifest["callback_urls"]
        .as_array()
        .map(|c| {
            c.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    web.clients.insert(
        client_id.clone(),
        Client {
            secret: client_secret.clone(),
            callbacks,
        },
    );
    let state = query(req, "state").map(str::to_owned);
    let app = RegisteredApp {
        id,
        slug,
        organization,
        webhook_secret: web.next("whsec"),
        client_id,
        client_secret,
        state: state.clone(),
        manifest: manifest.clone(),
    };
    let code = web.next("code");
    web.codes.insert(code.clone(), web.apps.len());
    web.apps.push(app);
    let _ = base;
    let mut to = format!(
        "{}?code={code}",
        manifest["redirect_url"].as_str().unwrap_or_default()
    );
    if let Some(state) = state {
        to.push_str(&format!("&state={state}"));
    }
    redirect(to)
}

/// `POST /app-manifests/{code}/conversions`: the App's credentials, once.
fn convert(web: &mut Web, base: &str, code: &str) -> Reply {
    let Some(index) = web.codes.remove(code) else {
        return not_found();
    };
    let app = &web.apps[index];
    reply(
        201,
        json!({
            "id": app.id,
            "slug": app.slug,
            "name": app.manifest["name"],
            "owner": { "login": app.organization.clone().unwrap_or_else(|| "octo".into()) },
            "html_url": format!("{base}/apps/{}", app.slug),
            "pem": APP_KEY,
            "webhook_secret": app.webhook_secret,
            "client_id": app.client_id,
            "client_secret": app.client_secret,
            "permissions": app.manifest["default_permissions"],
            "events": app.manifest["default_events"],
        }),
    )
}

/// `GET /login/oauth/authorize`: checks the client, the redirect URI and
/// PKCE's challenge, then (as if the person clicked "Authorize") redirects
/// back with a code and the state.
fn authorize(web: &mut Web, req: &Req) -> Reply {
    let Some(client_id) = query(req, "client_id") else {
        return msg(404, "Not Found (no client_id)");
    };
    let Some(client) = web.clients.get(client_id) else {
        return msg(404, "Not Found (unknown client_id)");
    };
    let redirect_uri = query(req, "redirect_uri")
        .map(str::to_owned)
        .or_else(|| client.callbacks.first().cloned())
        .unwrap_or_default();
    if !client.callbacks.contains(&redirect_uri) {
        return msg(
            400,
            "The redirect_uri MUST match the registered callback URL for this application.",
        );
    }
    let challenge = query(req, "code_challenge").unwrap_or_default().to_owned();
    if !challenge.is_empty() && query(req, "code_challenge_method") != Some("S256") {
        return msg(400, "code_challenge_method must be S256");
    }
    let Some(user) = web.user.clone() else {
        return msg(401, "Nobody is signed in to the fake GitHub (sign_in_as)");
    };
    let code = web.next("oauthcode");
    web.grants.insert(
        code.clone(),
        Grant {
            client_id: client_id.to_owned(),
            redirect_uri: redirect_uri.clone(),
            challenge,
            user,
        },
    );
    let mut to = format!("{redirect_uri}?code={code}");
    if let Some(state) = query(req, "state") {
        to.push_str(&format!("&state={}", super::percent_encode(state)));
    }
    redirect(to)
}

/// `POST /login/oauth/access_token`: exchanges a code for a user token.
/// Like GitHub, failures answer 200 with an `error` field.
fn access_token(web: &mut Web, req: &Req) -> Reply {
    let f = form(req);
    let get = |k: &str| f.get(k).cloned().unwrap_or_default();
    let fail = |error: &str, description: &str| {
        reply(
            200,
            json!({ "error": error, "error_description": description }),
        )
    };
    let Some(client) = web.clients.get(&get("client_id")).cloned() else {
        return fail(
            "incorrect_client_credentials",
            "The client_id and/or client_secret passed are incorrect.",
        );
    };
    if client.secret != get("client_secret") {
        return fail(
            "incorrect_client_credentials",
            "The client_id and/or client_secret passed are incorrect.",
        );
    }
    let Some(grant) = web.grants.remove(&get("code")) else {
        return fail(
            "bad_verification_code",
            "The code passed is incorrect or expired.",
        );
    };
    if grant.client_id != get("client_id") {
        return fail(
            "bad_verification_code",
            "The code passed is incorrect or expired.",
        );
    }
    if let Some(uri) = f.get("redirect_uri")
        && *uri != grant.redirect_uri
    {
        return fail(
            "redirect_uri_mismatch",
            "The redirect_uri MUST match the registered callback URL for this application.",
        );
    }
    if !grant.challenge.is_empty() {
        let verifier = get("code_verifier");
        let digest = sha2::Sha256::digest(verifier.as_bytes());
        let expected = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest);
        if verifier.is_empty() || expected != grant.challenge {
            return fail(
                "bad_verification_code",
                "The code_verifier does not match the code_challenge.",
            );
        }
    }
    let token = web.next("ghu_");
    web.user_tokens.insert(token.clone(), grant.user);
    reply(
        200,
        json!({ "access_token": token, "token_type": "bearer", "scope": "", "expires_in": 28800 }),
    )
}

fn user_call(web: &Web, req: &Req, answer: impl Fn(&OAuthUser) -> Value) -> Reply {
    let token = req
        .auth
        .as_deref()
        .and_then(|a| a.split_once(' ').map(|(_, t)| t.trim()));
    match token.and_then(|t| web.user_tokens.get(t)) {
        Some(user) => reply(200, answer(user)),
        None => msg(401, "Bad credentials"),
    }
}
