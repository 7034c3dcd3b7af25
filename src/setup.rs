//! Registering the GitHub App from the browser (GitHub's manifest flow),
//! while the service has no App credentials.
//!
//! 1. `serve` without App credentials prints a one-time set-up link,
//!    `{PUBLIC_URL}/setup?token=…` (the token is also written to
//!    `{data dir}/setup-token`, mode 0600): only whoever reads the service's
//!    output or data directory may register the App it will trust.
//! 2. `GET /setup` asks for the App's name, its owner (the personal account
//!    or an organization) and whether it is public. `POST /setup` answers a
//!    form that posts the manifest ([`crate::tools::app_manifest`]) to
//!    GitHub with a fresh single-use `state` (one hour).
//! 3. GitHub redirects the browser to `GET /setup/callback?code=…&state=…`.
//!    The state must be one this process handed out and not yet used; the
//!    code is exchanged on the server (`POST /app-manifests/{code}/conversions`)
//!    and the App's id, slug, webhook secret, OAuth client id and secret and
//!    private key are written to `{data dir}/github-app.env` and
//!    `github-app.pem` (mode 0600). [`Setup::registered`] then fires and
//!    `serve` starts again in the same process with those credentials
//!    (no restart): the next webhook is verified with the new secret.
//! 4. Once credentials exist, every set-up route refuses (409).
//!
//! A callback without `state` is the command-line flow
//! (`taskmaster app-manifest`): its page shows the command that exchanges
//! the code, and nothing is exchanged by the service.
//!
//! Source: <https://docs.github.com/en/apps/sharing-github-apps/registering-a-github-app-from-a-manifest>

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Form, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use maud::{DOCTYPE, Markup, html};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::tools::{ManifestFeatures, app_manifest};

/// How long a `state` handed to GitHub stays usable (GitHub's code, too,
/// expires after an hour).
pub const STATE_LIFETIME: Duration = Duration::from_secs(3600);

/// The file, in the data directory, the registered App's settings go to.
pub const APP_ENV_FILE: &str = "github-app.env";
/// The file, in the data directory, the registered App's private key goes to.
pub const APP_KEY_FILE: &str = "github-app.pem";
/// The file, in the data directory, holding the one-time set-up token.
pub const SETUP_TOKEN_FILE: &str = "setup-token";
/// The cookie that carries the set-up token after the first visit.
const TOKEN_COOKIE: &str = "tm_setup";

/// Where the set-up talks to and what it registers.
#[derive(Debug, Clone)]
pub struct SetupConfig {
    /// GitHub's REST API (`GITHUB_API_URL`), for the code exchange.
    pub api_url: String,
    /// GitHub's web site (`GITHUB_WEB_URL`, default `https://github.com`),
    /// where the manifest is posted.
    pub web_url: String,
    /// This service's public base URL: the webhook and redirect URLs.
    pub public_url: String,
    /// Where the credentials are written.
    pub data_dir: PathBuf,
    /// What the service will use the App for (its permissions).
    pub features: ManifestFeatures,
}

/// The set-up's state: its token, the states handed out, and whether an
/// App got registered. Cheap to clone.
#[derive(Clone)]
pub struct Setup {
    inner: Arc<Inner>,
}

struct Inner {
    config: SetupConfig,
    /// `config.public_url`, or the address the service bound when
    /// `PUBLIC_URL` is unset (see [`Setup::set_public_url`]).
    public_url: Mutex<String>,
    token: String,
    states: Mutex<HashMap<String, Instant>>,
    registered: CancellationToken,
    done: Mutex<Option<crate::tools::ManifestConversion>>,
    client: reqwest::Client,
}

impl Setup {
    /// A set-up with a fresh random token, written to
    /// `{data_dir}/setup-token` (mode 0600).
    ///
    /// # Errors
    /// The token file cannot be written, or no HTTP client can be built.
    pub fn new(config: SetupConfig) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&config.data_dir)?;
        let token = random_hex(16);
        crate::tools::write_private(&config.data_dir.join(SETUP_TOKEN_FILE), &token)?;
        Ok(Setup {
            inner: Arc::new(Inner {
                token,
                states: Mutex::new(HashMap::new()),
                registered: CancellationToken::new(),
                done: Mutex::new(None),
                client: crate::agent::http_client_builder().build()?,
                public_url: Mutex::new(config.public_url.clone()),
                config,
            }),
        })
    }

    /// The link to print: `{public}/setup?token=…`.
    pub fn link(&self) -> String {
        format!(
            "{}/setup?token={}",
            self.public_url().trim_end_matches('/'),
            self.inner.token
        )
    }

    /// The service's public base URL as the manifest will name it.
    pub fn public_url(&self) -> String {
        self.inner.public_url.lock().expect("url lock").clone()
    }

    /// Replaces the public base URL (the address the service bound, when
    /// `PUBLIC_URL` is unset and the port was picked at start).
    pub fn set_public_url(&self, url: &str) {
        *self.inner.public_url.lock().expect("url lock") = url.to_owned();
    }

    /// Fires once an App's credentials are stored.
    pub fn registered(&self) -> CancellationToken {
        self.inner.registered.clone()
    }

    /// A state for one registration, usable once within [`STATE_LIFETIME`].
    fn new_state(&self) -> String {
        let state = random_hex(16);
        let mut states = self.inner.states.lock().expect("states lock");
        states.retain(|_, at| at.elapsed() < STATE_LIFETIME);
        states.insert(state.clone(), Instant::now());
        state
    }

    /// Takes `state` (it cannot be used again): true when this process
    /// handed it out less than [`STATE_LIFETIME`] ago.
    fn take_state(&self, state: &str) -> bool {
        self.inner
            .states
            .lock()
            .expect("states lock")
            .remove(state)
            .is_some_and(|at| at.elapsed() < STATE_LIFETIME)
    }

    fn authorized(&self, headers: &HeaderMap, query_token: Option<&str>) -> bool {
        let given =
            query_token.or_else(|| crate::dashboard::session::cookie(headers, TOKEN_COOKIE));
        given.is_some_and(|t| constant_time_eq(t.as_bytes(), self.inner.token.as_bytes()))
    }

    fn is_done(&self) -> bool {
        self.inner.registered.is_cancelled()
    }
}

/// The set-up routes: `GET/POST /setup` and `GET /setup/callback`.
pub fn router(setup: Setup) -> Router {
    Router::new()
        .route("/setup", get(form).post(start))
        .route("/setup/callback", get(callback))
        .with_state(setup)
}

/// The command-line flow's callback page alone, for a service that has
/// credentials (`taskmaster app-manifest` registers without the service).
pub fn cli_callback_router() -> Router {
    Router::new()
        .route(
            "/setup",
            get(|| async { already_registered() }).post(|| async { already_registered() }),
        )
        .route(
            "/setup/callback",
            get(|Query(q): Query<CallbackQuery>| async move {
                match (q.code, q.state) {
                    (Some(code), None) if valid_code(&code) => cli_page(&code),
                    _ => refused(
                        StatusCode::CONFLICT,
                        "This service already has a GitHub App: registering another is refused. \
                     To replace it, stop the service, remove github-app.env and github-app.pem \
                     from its data directory (or unset GITHUB_APP_ID), and start it again.",
                    ),
                }
            }),
        )
}

#[derive(Deserialize)]
struct FormQuery {
    token: Option<String>,
}

/// `GET /setup`: the registration form (the token in the query or cookie).
async fn form(
    State(setup): State<Setup>,
    Query(q): Query<FormQuery>,
    headers: HeaderMap,
) -> Response {
    if setup.is_done() {
        return already_registered();
    }
    if !setup.authorized(&headers, q.token.as_deref()) {
        return refused(
            StatusCode::UNAUTHORIZED,
            "Open the set-up link taskmaster printed when it started (it carries a one-time token; \
             the token is also in the data directory's setup-token file).",
        );
    }
    let public = setup.public_url();
    let body = html! {
        h1 { "Register a GitHub App for taskmaster" }
        p { "GitHub will send this service's webhooks to " code { (public.trim_end_matches('/')) "/api/github/webhooks" } ". "
            "If GitHub cannot reach that address, set " code { "PUBLIC_URL" } " first (see the README's “Reaching the service”)." }
        form method="post" action="/setup" {
            p { label for="name" { "App name (unique on GitHub)" } br;
                input id="name" name="name" required maxlength="34" value="taskmaster"; }
            fieldset {
                legend { "Owner" }
                p { label { input type="radio" name="owner" value="user" checked; " My personal account" } }
                p { label { input type="radio" name="owner" value="organization"; " An organization: " }
                    input name="organization" aria-label="Organization" pattern="[A-Za-z0-9-]{1,39}" placeholder="acme"; }
            }
            p { label { input type="checkbox" name="public" value="true"; " Public (other accounts may install it)" } }
            button type="submit" { "Continue to GitHub" }
        }
    };
    let mut response = page(StatusCode::OK, "Register a GitHub App", body, None);
    if let Some(token) = q.token
        && let Ok(value) = HeaderValue::from_str(&format!(
            "{TOKEN_COOKIE}={token}; Path=/setup; HttpOnly; SameSite=Lax; Max-Age=3600"
        ))
    {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

#[derive(Deserialize)]
struct StartForm {
    name: String,
    owner: String,
    #[serde(default)]
    organization: String,
    #[serde(default)]
    public: Option<String>,
}

/// `POST /setup`: the manifest form that goes to GitHub, with a new state.
async fn start(
    State(setup): State<Setup>,
    headers: HeaderMap,
    Form(f): Form<StartForm>,
) -> Response {
    if setup.is_done() {
        return already_registered();
    }
    if !crate::dashboard::session::same_origin(&headers) || !setup.authorized(&headers, None) {
        return refused(
            StatusCode::FORBIDDEN,
            "Open the set-up link taskmaster printed when it started, then send the form from that page.",
        );
    }
    let name = f.name.trim();
    if name.is_empty() || name.chars().count() > 34 {
        return refused(
            StatusCode::BAD_REQUEST,
            "The App's name must have 1 to 34 characters (GitHub's limit).",
        );
    }
    let web = setup.inner.config.web_url.trim_end_matches('/');
    let target = match f.owner.as_str() {
        "user" => format!("{web}/settings/apps/new"),
        "organization" => {
            let org = f.organization.trim();
            let ok = !org.is_empty()
                && org.len() <= 39
                && org.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
            if !ok {
                return refused(
                    StatusCode::BAD_REQUEST,
                    "Name the organization by its login (letters, digits and hyphens).",
                );
            }
            format!("{web}/organizations/{org}/settings/apps/new")
        }
        _ => return refused(StatusCode::BAD_REQUEST, "Choose the App's owner."),
    };
    let features = ManifestFeatures {
        public: f.public.as_deref() == Some("true"),
        ..setup.inner.config.features
    };
    let manifest = app_manifest(name, &setup.public_url(), &features);
    let state = setup.new_state();
    let action = format!("{target}?state={state}");
    let body = html! {
        h1 { "Register “" (name) "” on GitHub" }
        p { "GitHub shows the App's settings next; choose " strong { "Create GitHub App" } " there. "
            "It then sends you back here, and taskmaster stores the App's credentials." }
        form #manifest method="post" action=(action) {
            input type="hidden" name="manifest" value=(manifest.to_string());
            button type="submit" { "Create the App on GitHub" }
        }
        details { summary { "The manifest" } pre { code { (serde_json::to_string_pretty(&manifest).unwrap_or_default()) } } }
    };
    page(StatusCode::OK, "Register on GitHub", body, Some(web))
}

#[derive(Deserialize)]
struct CallbackQuery {
    code: Option<String>,
    state: Option<String>,
}

/// `GET /setup/callback`: exchanges the code, stores the credentials and
/// fires [`Setup::registered`].
async fn callback(State(setup): State<Setup>, Query(q): Query<CallbackQuery>) -> Response {
    let code = q.code.filter(|c| valid_code(c));
    let Some(code) = code else {
        return refused(
            StatusCode::BAD_REQUEST,
            "GitHub sends ?code=…&state=… here after an App is registered; this request has no usable code.",
        );
    };
    let Some(state) = q.state else {
        return cli_page(&code);
    };
    if setup.is_done() {
        return already_registered();
    }
    if !setup.take_state(&state) {
        tracing::warn!("set-up callback with an unknown, used or expired state refused");
        return refused(
            StatusCode::FORBIDDEN,
            "This registration's state is unknown, already used or expired: start again from the set-up link.",
        );
    }
    let config = &setup.inner.config;
    let app = match exchange_code(&setup.inner.client, &config.api_url, &code).await {
        Ok(app) => app,
        Err(e) => {
            tracing::warn!(error = %e, "the manifest code exchange failed");
            return refused(StatusCode::BAD_GATEWAY, &format!("{e:#}"));
        }
    };
    if let Err(e) = store_credentials(&config.data_dir, &app) {
        tracing::error!(error = %e, "cannot store the App's credentials");
        return refused(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!(
                "GitHub registered the App, but its credentials could not be written to {}: {e}. \
                 Its private key cannot be downloaded again: generate a new one in the App's settings.",
                config.data_dir.display()
            ),
        );
    }
    tracing::info!(app_id = app.id, slug = %app.slug, "GitHub App registered; starting with its credentials");
    let install = format!(
        "{}/installations/new",
        app.html_url
            .clone()
            .unwrap_or_else(|| format!(
                "{}/apps/{}",
                config.web_url.trim_end_matches('/'),
                app.slug
            ))
            .trim_end_matches('/')
    );
    let body = html! {
        h1 { "“" (app.slug) "” is registered" }
        p { "taskmaster stored the App's id, private key and webhook secret in its data directory "
            "and is now using them: no restart needed." }
        p { a href=(install) { "Install the App on your repositories" } }
    };
    *setup.inner.done.lock().expect("done lock") = Some(app);
    let _ = std::fs::remove_file(config.data_dir.join(SETUP_TOKEN_FILE));
    setup.inner.registered.cancel();
    page(StatusCode::OK, "App registered", body, None)
}

/// `POST {api}/app-manifests/{code}/conversions` (no authentication): the
/// App GitHub created from a manifest, with its credentials.
///
/// # Errors
/// GitHub cannot be reached, or refuses the code (codes expire after an
/// hour and work once).
pub async fn exchange_code(
    client: &reqwest::Client,
    api_url: &str,
    code: &str,
) -> anyhow::Result<crate::tools::ManifestConversion> {
    let url = format!(
        "{}/app-manifests/{code}/conversions",
        api_url.trim_end_matches('/')
    );
    let response = client
        .post(&url)
        .header("accept", "application/vnd.github+json")
        .header("user-agent", "taskmaster")
        .header("x-github-api-version", "2022-11-28")
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("cannot reach GitHub for the code exchange: {e}"))?;
    let status = response.status();
    anyhow::ensure!(
        status.is_success(),
        "GitHub answered {status} to the code exchange (codes expire after an hour and work once)"
    );
    Ok(response.json().await?)
}

/// Writes `app`'s credentials to `{dir}/github-app.env` and
/// `{dir}/github-app.pem`, both mode 0600; returns their paths.
///
/// # Errors
/// A file cannot be written.
pub fn store_credentials(
    dir: &Path,
    app: &crate::tools::ManifestConversion,
) -> std::io::Result<(PathBuf, PathBuf)> {
    std::fs::create_dir_all(dir)?;
    let pem = dir.join(APP_KEY_FILE);
    let env = dir.join(APP_ENV_FILE);
    crate::tools::write_private(&pem, &app.pem)?;
    crate::tools::write_private(&env, &app.env_text(&pem))?;
    Ok((env, pem))
}

/// The settings stored by a registration (`KEY=value` lines of
/// `github-app.env`), or empty when there is none.
///
/// # Errors
/// The file exists but cannot be read.
pub fn stored_settings(dir: &Path) -> std::io::Result<HashMap<String, String>> {
    let path = dir.join(APP_ENV_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(HashMap::new()),
        Err(e) => return Err(e),
    };
    Ok(text
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect())
}

/// The App credentials the service runs with: the environment's, or else
/// the ones a registration stored in the data directory.
pub struct ResolvedApp {
    /// Webhook secrets: the registered App's first, then the environment's
    /// (`GITHUB_WEBHOOK_SECRET`); `None` when neither exists.
    pub secrets: Option<crate::webhook::WebhookSecrets>,
    /// The GitHub client's settings (no credentials: dry run).
    pub github: crate::github::GitHubSettings,
    /// The App's slug: `--app-slug` when given, else the registered App's.
    pub slug: String,
    /// The OAuth client id and secret (dashboard sign-in), when known.
    pub oauth_client: Option<(String, secrecy::SecretString)>,
    /// Whether the App was registered from the browser (stored settings).
    pub from_registration: bool,
}

impl ResolvedApp {
    /// No App credentials at all: the service offers [`router`]'s set-up.
    pub fn needs_registration(&self) -> bool {
        self.github.credentials.is_none()
    }
}

/// Resolves the App credentials from `lookup` (the environment) and the
/// settings a registration stored under `data_dir`. The environment's App
/// id and key, when set, win entirely (the stored ones are ignored); the
/// webhook secrets of both are accepted. `slug` is `--app-slug`'s value,
/// replaced by the stored slug when it is the default `taskmaster`.
///
/// # Errors
/// The stored file cannot be read, or the credentials are invalid (see
/// [`crate::github::GitHubSettings::from_lookup`]).
pub fn resolve_app(
    lookup: impl Fn(&str) -> Option<String>,
    env_secrets: Option<&crate::webhook::WebhookSecrets>,
    slug: &str,
    data_dir: &Path,
) -> anyhow::Result<ResolvedApp> {
    let set = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());
    let env_has_app = set("GITHUB_APP_ID").is_some()
        || set("GITHUB_PRIVATE_KEY").is_some()
        || set("GITHUB_PRIVATE_KEY_PATH").is_some();
    let stored = if env_has_app {
        HashMap::new()
    } else {
        stored_settings(data_dir)?
    };
    let from_registration = stored.contains_key("GITHUB_APP_ID");
    let github = crate::github::GitHubSettings::from_lookup(|name| {
        set(name).or_else(|| stored.get(name).cloned())
    })
    .map_err(|e| {
        let origin = if from_registration {
            format!(" (stored in {})", data_dir.join(APP_ENV_FILE).display())
        } else {
            String::new()
        };
        anyhow::anyhow!("the GitHub App settings{origin} are invalid: {e}")
    })?;
    let mut secrets: Vec<secrecy::SecretString> = stored
        .get("GITHUB_WEBHOOK_SECRET")
        .filter(|s| !s.is_empty())
        .map(|s| secrecy::SecretString::from(s.clone()))
        .into_iter()
        .collect();
    if let Some(env) = env_secrets {
        secrets.extend(
            env.values()
                .map(|v| secrecy::SecretString::from(v.to_owned())),
        );
    }
    let secrets = if secrets.is_empty() {
        None
    } else {
        Some(crate::webhook::WebhookSecrets::new(secrets).map_err(|e| anyhow::anyhow!(e))?)
    };
    let slug = match stored.get("GITHUB_APP_SLUG") {
        Some(stored_slug) if slug == "taskmaster" && !stored_slug.is_empty() => stored_slug.clone(),
        _ => slug.to_owned(),
    };
    let client_id = set("GITHUB_CLIENT_ID").or_else(|| stored.get("GITHUB_CLIENT_ID").cloned());
    let client_secret =
        set("GITHUB_CLIENT_SECRET").or_else(|| stored.get("GITHUB_CLIENT_SECRET").cloned());
    let oauth_client = client_id
        .zip(client_secret)
        .map(|(id, secret)| (id, secrecy::SecretString::from(secret)));
    Ok(ResolvedApp {
        secrets,
        github,
        slug,
        oauth_client,
        from_registration,
    })
}

fn valid_code(code: &str) -> bool {
    !code.is_empty() && code.len() <= 100 && code.chars().all(|c| c.is_ascii_alphanumeric())
}

fn cli_page(code: &str) -> Response {
    page(
        StatusCode::OK,
        "taskmaster set-up",
        html! {
            h1 { "Your GitHub App is registered" }
            p { "On the machine that runs taskmaster, within the hour, run:" }
            pre { code { "taskmaster app-manifest --code " (code) } }
            p { "It stores the App's id, private key and webhook secret in " code { "github-app.env" }
                " and " code { "github-app.pem" } ". Then install the App on your repositories." }
        },
        None,
    )
}

fn already_registered() -> Response {
    refused(
        StatusCode::CONFLICT,
        "This service already has a GitHub App: registering another is refused.",
    )
}

fn refused(status: StatusCode, why: &str) -> Response {
    page(
        status,
        "taskmaster set-up",
        html! { h1 { "Set-up" } p { (why) } },
        None,
    )
}

/// An HTML page with strict headers; `form_to` adds GitHub's site to the
/// places forms may post to.
fn page(status: StatusCode, title: &str, body: Markup, form_to: Option<&str>) -> Response {
    let markup = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · taskmaster" }
                link rel="stylesheet" href="/static/dashboard.css";
                link rel="icon" href="data:,";
            }
            body { main { (body) } }
        }
    };
    let csp = format!(
        "default-src 'self'; script-src 'none'; style-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'{}",
        form_to.map(|w| format!(" {w}")).unwrap_or_default()
    );
    let mut response = (status, axum::response::Html(markup.into_string())).into_response();
    let h = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&csp) {
        h.insert(header::CONTENT_SECURITY_POLICY, v);
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

/// `GET /` while the set-up is pending: to the form.
pub async fn home_redirect() -> Redirect {
    Redirect::to("/setup")
}

fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    getrandom::getrandom(&mut buf).expect("the OS random source works");
    hex::encode(buf)
}

/// Whether `a` and `b` are equal, in time that depends only on their
/// lengths (for tokens and states).
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup(dir: &Path) -> Setup {
        Setup::new(SetupConfig {
            api_url: "http://127.0.0.1:9".into(),
            web_url: "https://github.com".into(),
            public_url: "https://tm.example.com".into(),
            data_dir: dir.to_path_buf(),
            features: ManifestFeatures::default(),
        })
        .unwrap()
    }

    #[test]
    fn states_work_once() {
        let dir = tempfile::tempdir().unwrap();
        let s = setup(dir.path());
        let state = s.new_state();
        assert!(!s.take_state("forged"));
        assert!(s.take_state(&state));
        assert!(!s.take_state(&state), "a state works once");
    }

    #[test]
    fn the_token_file_is_private_and_the_link_carries_it() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let s = setup(dir.path());
        let file = dir.path().join(SETUP_TOKEN_FILE);
        let token = std::fs::read_to_string(&file).unwrap();
        assert_eq!(
            std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(
            s.link(),
            format!("https://tm.example.com/setup?token={token}")
        );
        assert_eq!(token.len(), 32);
    }

    #[test]
    fn stored_settings_read_key_value_lines() {
        let dir = tempfile::tempdir().unwrap();
        assert!(stored_settings(dir.path()).unwrap().is_empty());
        std::fs::write(
            dir.path().join(APP_ENV_FILE),
            "# comment\nGITHUB_APP_ID=42\nGITHUB_APP_SLUG=tm\n",
        )
        .unwrap();
        let s = stored_settings(dir.path()).unwrap();
        assert_eq!(s["GITHUB_APP_ID"], "42");
        assert_eq!(s["GITHUB_APP_SLUG"], "tm");
        assert_eq!(s.len(), 2);
    }
}
