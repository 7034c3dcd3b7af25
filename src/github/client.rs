//! [`GitHubClient`]: the production [`GitHub`] implementation, on octocrab.
//!
//! octocrab provides the transport (hyper + rustls with the ring provider,
//! one connection pool shared by every client cloned from the first). The
//! App JWT and the installation tokens are this module's, in
//! [`super::tokens`]: each is minted once and reused while it is good (a JWT
//! for five minutes, an installation token until a minute before its
//! `expires_at`; GitHub's tokens live one hour and cannot be extended,
//! <https://docs.github.com/en/apps/creating-github-apps/authenticating-with-a-github-app/authenticating-as-a-github-app-installation>),
//! so a token never expires in the middle of a long run. A request answered
//! 401 with an installation token is sent once more with a fresh token
//! (GitHub may revoke a token early, or a clock may be off).
//!
//! Everything else — which answers to retry, how long to wait, pacing of
//! content-creating requests — is [`super::ratelimit`]'s, in one loop
//! (`GitHubClient::send`), with octocrab's own `retry` feature disabled.
//!
//! One known edge: a create (comment, check run) answered 5xx is retried, as
//! GitHub advises, but a 502 from GitHub's edge can hide a create that
//! landed. A transport error on a create is *not* retried for that reason
//! (the outbox tries again later, and [`super::upsert_sticky_comment`] /
//! [`super::upsert_check_run`] find what landed); for 5xx the rare duplicate
//! is accepted and the next upsert edits the first one found.
//!
//! Requests are built with path-only URIs (`/repos/…`): octocrab joins them
//! onto the configured base URL (keeping a GitHub Enterprise `/api/v3`
//! prefix) and attaches the `Authorization` header only to such requests, so
//! credentials never follow an absolute URL elsewhere. For the same reason
//! pagination is done with `page`/`cursor` parameters, not by following the
//! absolute URLs of the `Link` header.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use http::{HeaderMap, HeaderValue, Method};
use octocrab::Octocrab;
use serde::Deserialize;
use serde_json::{Value, json};

use super::checks::{MAX_COMMENT_CHARS, truncate_chars};
use super::ratelimit::{Answer, Pacer, ResetGate, RetryPolicy, Verdict, classify};
use super::tokens::{AppJwt, Minted, TokenAnswer, TokenSlot};
use super::{
    CheckRunId, CheckRunUpdate, CommentId, DeliveryPage, GitHub, GitHubError, GitHubSettings,
    HookDelivery, InstallationId, NewCheckRun, NewPullRequest, NewReview, Permission,
    PullRequestHead, PullRequestRef, Reaction, RepoName, TreeEntry, WriteAccess,
};

/// How long to wait for a connection and for an answer's bytes.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Comments and check runs are listed 100 a page (GitHub's maximum); at most
/// this many pages are read looking for ours (10,000 items).
const MAX_LIST_PAGES: u32 = 100;
/// The REST API version this client was written against.
const API_VERSION: &str = "2022-11-28";

/// Whom a request authenticates as.
#[derive(Debug, Clone)]
enum As {
    /// The App itself (JWT): `/app/*` endpoints.
    App,
    /// An installation (installation token): repository endpoints.
    Installation(InstallationId),
    /// A token narrowed to one repository ([`WriteAccess`]); paced and
    /// limited as its installation.
    Scoped(InstallationId, Octocrab),
}

/// One request to send through the retry loop.
struct Request<'a> {
    method: Method,
    path: String,
    body: Option<Value>,
    auth: As,
    /// Counts toward the 80-a-minute content-creation limit: paced.
    creates_content: bool,
    /// The object may have been announced by a webhook moments ago: a 404 is
    /// retried briefly.
    retry_not_found: bool,
    accept: Option<&'a str>,
}

impl Request<'_> {
    fn new(method: Method, path: String, auth: As) -> Self {
        Self {
            method,
            path,
            body: None,
            auth,
            creates_content: false,
            retry_not_found: false,
            accept: None,
        }
    }
}

/// A 2xx answer.
struct Reply {
    headers: HeaderMap,
    body: String,
}

/// One installation's token, pacer and primary-limit gate (rate limits are
/// counted per installation token).
struct Installation {
    token: TokenSlot,
    pacer: Pacer,
    gate: ResetGate,
}

/// A narrowed token's key: installation, `owner/name`, with `workflows`.
type ScopedKey = (InstallationId, String, bool);

/// How long a narrowed token is reused (GitHub's live an hour).
const SCOPED_TOKEN_REUSE: Duration = Duration::from_secs(45 * 60);

/// The GitHub API client taskmaster uses in production. Cheap to share
/// (`Arc<GitHubClient>`); all state is behind locks.
pub struct GitHubClient {
    /// Clients with narrowed tokens, per (installation, repository,
    /// workflows), with when the token was minted.
    scoped: Mutex<HashMap<ScopedKey, (Octocrab, std::time::Instant)>>,
    /// The transport, with no credentials; every authenticated client is
    /// cloned from it (sharing its connections) with a bearer token.
    base: Octocrab,
    /// The App's JWT, signed once per [`super::tokens::JWT_REUSE`].
    app_jwt: AppJwt,
    installations: Mutex<HashMap<InstallationId, Arc<Installation>>>,
    /// Pacing for App-level requests (none create content today).
    app_pacer: Pacer,
    app_gate: ResetGate,
    policy: RetryPolicy,
    bot_login: Option<String>,
    app_id: u64,
}

impl std::fmt::Debug for GitHubClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GitHubClient")
            .field("policy", &self.policy)
            .field("bot_login", &self.bot_login)
            .finish_non_exhaustive()
    }
}

impl GitHubClient {
    /// Builds a client for the App in `settings`.
    ///
    /// # Errors
    /// [`GitHubError::Config`] when `settings` has no credentials (dry run
    /// needs no client) or the API URL cannot be used.
    pub fn new(settings: &GitHubSettings, policy: RetryPolicy) -> Result<Self, GitHubError> {
        let credentials = settings.credentials.as_ref().ok_or_else(|| {
            GitHubError::Config(
                "GITHUB_APP_ID and a private key are needed to talk to GitHub".into(),
            )
        })?;
        // rustls picks its provider once per process; make it ring, as the
        // agents' HTTP client does, before octocrab builds its connector.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let base = Octocrab::builder()
            .base_uri(settings.api_url.as_str())
            .map_err(|e| GitHubError::Config(format!("GITHUB_API_URL: {e}")))?
            .add_header(
                http::header::HeaderName::from_static("x-github-api-version"),
                API_VERSION.into(),
            )
            .set_connect_timeout(Some(CONNECT_TIMEOUT))
            .set_read_timeout(Some(READ_TIMEOUT))
            .build()
            .map_err(|e| GitHubError::Config(format!("cannot build the GitHub client: {e}")))?;
        Ok(Self {
            scoped: Mutex::new(HashMap::new()),
            base,
            app_jwt: AppJwt::new(credentials.clone()),
            installations: Mutex::new(HashMap::new()),
            app_pacer: Pacer::new(),
            app_gate: ResetGate::default(),
            policy,
            bot_login: settings.bot_login.clone(),
            app_id: credentials.app_id,
        })
    }

    /// Also counts comments and reviews by this login (the App's bot,
    /// `<slug>[bot]`) as the App's own, besides those GitHub marks
    /// `performed_via_github_app` with the App's id. Without either, nothing
    /// is ours: never another bot's.
    pub fn with_bot_login(mut self, login: impl Into<String>) -> Self {
        self.bot_login = Some(login.into());
        self
    }

    /// Whether a comment or review was written by this App: GitHub says so
    /// (`performed_via_github_app.id` is the App's id), or its author is the
    /// App's bot login. Any other account — another App's bot included — is
    /// not us, whatever the text says.
    fn is_ours(&self, user: Option<&ListedUser>, via_app: Option<&IdOnly>) -> bool {
        via_app.is_some_and(|a| a.id == self.app_id)
            || matches!((user, &self.bot_login), (Some(u), Some(login)) if u.login.eq_ignore_ascii_case(login))
    }

    /// The retry policy in use.
    pub fn policy(&self) -> &RetryPolicy {
        &self.policy
    }

    /// Forgets an installation's client and token (after `installation.deleted`
    /// or `suspend`).
    pub fn forget_installation(&self, installation: InstallationId) {
        self.installations
            .lock()
            .expect("installation map lock")
            .remove(&installation);
    }

    /// A client whose token is narrowed to `repo` and `access`'s
    /// permissions, minted on first use and reused for
    /// [`SCOPED_TOKEN_REUSE`].
    async fn scoped(&self, access: WriteAccess, repo: &RepoName) -> Result<As, GitHubError> {
        let key = (access.installation, repo.to_string(), access.workflows);
        if let Some((crab, minted)) = self.scoped.lock().expect("scoped lock").get(&key)
            && minted.elapsed() < SCOPED_TOKEN_REUSE
        {
            return Ok(As::Scoped(access.installation, crab.clone()));
        }
        let token = self
            .repository_token(access.installation, repo, &access.permissions())
            .await?;
        let crab = self
            .base
            .user_access_token(token)
            .map_err(|e| GitHubError::Config(format!("narrowed token client: {e}")))?;
        self.scoped
            .lock()
            .expect("scoped lock")
            .insert(key, (crab.clone(), std::time::Instant::now()));
        Ok(As::Scoped(access.installation, crab))
    }

    fn installation(&self, id: InstallationId) -> Arc<Installation> {
        self.installations
            .lock()
            .expect("installation map lock")
            .entry(id)
            .or_insert_with(|| {
                Arc::new(Installation {
                    token: TokenSlot::default(),
                    pacer: Pacer::new(),
                    gate: ResetGate::default(),
                })
            })
            .clone()
    }

    /// A client sending installation `id`'s token: the cached one while it
    /// is good, else one minted now (single-flight: concurrent callers wait
    /// for the same mint).
    async fn installation_client(
        &self,
        id: InstallationId,
        inst: &Installation,
    ) -> Result<Octocrab, GitHubError> {
        let mut slot = inst.token.0.lock().await;
        if let Some(minted) = &*slot
            && minted.good_at(SystemTime::now())
        {
            return Ok(minted.crab.clone());
        }
        let answer = Box::pin(self.mint_token(id, json!({}))).await?;
        let expires_at = answer.expires();
        let crab = self
            .base
            .user_access_token(secrecy::SecretString::from(answer.token))
            .map_err(|e| GitHubError::Config(format!("installation {id} client: {e}")))?;
        *slot = Some(Minted {
            crab: crab.clone(),
            expires_at,
        });
        Ok(crab)
    }

    /// Mints an installation token with the App JWT: `body` `{}` for the
    /// installation's whole grant, or narrowed by `repositories` and
    /// `permissions`. The token is registered with the redactor.
    ///
    /// Source: <https://docs.github.com/en/rest/apps/apps#create-an-installation-access-token-for-an-app>
    async fn mint_token(
        &self,
        installation: InstallationId,
        body: Value,
    ) -> Result<TokenAnswer, GitHubError> {
        let mut req = Request::new(
            Method::POST,
            format!("/app/installations/{}/access_tokens", installation.0),
            As::App,
        );
        req.body = Some(body);
        let path = req.path.clone();
        let reply = self.send(req).await?;
        TokenAnswer::read(&reply.body, path)
    }

    /// Sends `req`, retrying as [`super::ratelimit::classify`] decides, and
    /// returns the 2xx answer.
    async fn send(&self, req: Request<'_>) -> Result<Reply, GitHubError> {
        let inst = match &req.auth {
            As::App => None,
            As::Installation(id) | As::Scoped(id, _) => Some(self.installation(*id)),
        };
        let (pacer, gate) = match &inst {
            Some(inst) => (&inst.pacer, &inst.gate),
            None => (&self.app_pacer, &self.app_gate),
        };
        let method = req.method.as_str().to_owned();
        let mut attempt = 0;
        // A 401 with an installation token is tried once more with a new one.
        let mut token_renewed = false;
        loop {
            attempt += 1;
            // A limit that ran out on an earlier answer: wait for its reset
            // (checked once per attempt; the answer re-arms or opens it).
            if let Some(wait) = gate.wait_at(SystemTime::now()) {
                if wait > self.policy.max_wait {
                    return Err(GitHubError::RateLimited {
                        method,
                        path: req.path,
                        wait,
                    });
                }
                tracing::warn!(%method, path = %req.path, ?wait, "GitHub rate limit used up; waiting for its reset");
                self.policy.sleep(wait).await;
            }
            if req.creates_content {
                pacer
                    .acquire(self.policy.scale(self.policy.content_interval))
                    .await;
            }
            // Per attempt: a token may have been renewed since the last one.
            let crab = match (&req.auth, &inst) {
                (As::Installation(id), Some(inst)) => self.installation_client(*id, inst).await?,
                (As::Scoped(_, scoped), _) => scoped.clone(),
                _ => self.app_jwt.client(&self.base)?,
            };
            let sent = match req.method {
                Method::GET => {
                    let headers = req.accept.map(|accept| {
                        let mut h = HeaderMap::new();
                        if let Ok(v) = HeaderValue::from_str(accept) {
                            h.insert(http::header::ACCEPT, v);
                        }
                        h
                    });
                    crab._get_with_headers(req.path.as_str(), headers).await
                }
                Method::POST => crab._post(req.path.as_str(), req.body.as_ref()).await,
                Method::PATCH => crab._patch(req.path.as_str(), req.body.as_ref()).await,
                Method::PUT => crab._put(req.path.as_str(), req.body.as_ref()).await,
                Method::DELETE => crab._delete(req.path.as_str(), req.body.as_ref()).await,
                _ => {
                    return Err(GitHubError::InvalidInput(format!(
                        "method {method} is not used"
                    )));
                }
            };
            let response = match sent {
                Ok(response) => response,
                Err(e) => {
                    // An answer that does not decode (say, an installation
                    // token reply octocrab cannot read) fails the same way
                    // every time: not a transport failure, not retried.
                    if matches!(
                        e,
                        octocrab::Error::Json { .. } | octocrab::Error::Serde { .. }
                    ) {
                        return Err(GitHubError::Decode {
                            method: method.clone(),
                            path: req.path.clone(),
                            message: e.to_string(),
                        });
                    }
                    let transport = GitHubError::Transport {
                        method: method.clone(),
                        path: req.path.clone(),
                        message: e.to_string(),
                    };
                    // A create that failed in flight may have landed: do not
                    // send it twice. Reads and edits are safe to repeat.
                    if req.creates_content || attempt >= self.policy.max_attempts {
                        return Err(transport);
                    }
                    let wait = self.policy.server_error_base * (1 << (attempt - 1).min(10));
                    tracing::warn!(%method, path = %req.path, attempt, ?wait, error = %transport, "GitHub unreachable; retrying");
                    self.policy.sleep(wait).await;
                    continue;
                }
            };
            let status = response.status();
            let headers = response.headers().clone();
            gate.observe(&headers);
            crate::instrument::github_answer(
                status.as_u16(),
                headers
                    .get("x-ratelimit-remaining")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse().ok()),
            );
            let body = crab
                .body_to_string(response)
                .await
                .map_err(|e| GitHubError::Transport {
                    method: method.clone(),
                    path: req.path.clone(),
                    message: format!("reading the answer: {e}"),
                })?;
            if status.is_success() {
                return Ok(Reply { headers, body });
            }
            if status == http::StatusCode::UNAUTHORIZED
                && !token_renewed
                && let (As::Installation(_), Some(inst)) = (&req.auth, &inst)
            {
                token_renewed = true;
                *inst.token.0.lock().await = None;
                tracing::warn!(%method, path = %req.path, "GitHub refused the installation token; minting a new one and trying once more");
                continue;
            }
            let message = serde_json::from_str::<Value>(&body)
                .ok()
                .and_then(|v| v.get("message").and_then(Value::as_str).map(str::to_owned))
                .unwrap_or_default();
            let verdict = classify(
                &self.policy,
                Answer {
                    status,
                    headers: &headers,
                    message: &message,
                },
                attempt,
                req.retry_not_found,
                SystemTime::now(),
            );
            match verdict {
                Verdict::Done => {
                    return Err(GitHubError::Api {
                        status: status.as_u16(),
                        method,
                        path: req.path,
                        message,
                    });
                }
                Verdict::RetryAfter(wait) if wait > self.policy.max_wait => {
                    return Err(GitHubError::RateLimited {
                        method,
                        path: req.path,
                        wait,
                    });
                }
                Verdict::RetryAfter(wait) => {
                    tracing::warn!(%method, path = %req.path, status = status.as_u16(), attempt, ?wait, "GitHub asked to wait; retrying");
                    self.policy.sleep(wait).await;
                }
            }
        }
    }

    async fn send_json<T: for<'de> Deserialize<'de>>(
        &self,
        req: Request<'_>,
    ) -> Result<T, GitHubError> {
        let method = req.method.as_str().to_owned();
        let path = req.path.clone();
        let reply = self.send(req).await?;
        serde_json::from_str(&reply.body).map_err(|e| GitHubError::Decode {
            method,
            path,
            message: e.to_string(),
        })
    }

    async fn patch_check_run(
        &self,
        installation: InstallationId,
        repo: &RepoName,
        id: CheckRunId,
        update: &CheckRunUpdate,
    ) -> Result<(), GitHubError> {
        let mut req = Request::new(
            Method::PATCH,
            format!("/repos/{repo}/check-runs/{}", id.0),
            As::Installation(installation),
        );
        req.body = Some(to_value(update)?);
        req.retry_not_found = true;
        self.send(req).await.map(drop)
    }
}

fn to_value<T: serde::Serialize>(value: &T) -> Result<Value, GitHubError> {
    serde_json::to_value(value).map_err(|e| GitHubError::InvalidInput(e.to_string()))
}

/// Fills `completed_at` when a conclusion is sent without one (GitHub
/// requires it then).
fn with_completed_at(update: &CheckRunUpdate) -> CheckRunUpdate {
    let mut update = update.clone();
    if update.conclusion.is_some() && update.completed_at.is_none() {
        update.completed_at = Some(chrono::Utc::now());
    }
    update
}

/// The URL of the `rel="next"` entry of a `Link` header.
///
/// Source: <https://docs.github.com/en/rest/using-the-rest-api/using-pagination-in-the-rest-api>
pub fn next_link(headers: &HeaderMap) -> Option<String> {
    let link = headers.get(http::header::LINK)?.to_str().ok()?;
    link.split(',').find_map(|part| {
        let (url, params) = part.split_once(';')?;
        params
            .split(';')
            .any(|p| p.trim() == "rel=\"next\"")
            .then(|| {
                url.trim()
                    .trim_start_matches('<')
                    .trim_end_matches('>')
                    .to_owned()
            })
    })
}

/// The raw (still percent-encoded) value of query parameter `name` in `url`.
pub fn query_param(url: &str, name: &str) -> Option<String> {
    let query = url.split_once('?')?.1;
    let query = query.split('#').next().unwrap_or(query);
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == name).then(|| v.to_owned())
    })
}

/// Percent-encodes everything but RFC 3986 unreserved characters (and `/`
/// when `keep_slash`).
fn encode(value: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric()
            || matches!(b, b'-' | b'_' | b'.' | b'~')
            || (keep_slash && b == b'/')
        {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[derive(Deserialize)]
struct ShaOnly {
    sha: String,
}

#[derive(Deserialize)]
struct IdOnly {
    id: u64,
}

#[derive(Deserialize)]
struct ListedComment {
    id: u64,
    #[serde(default)]
    body: Option<String>,
    #[serde(default)]
    user: Option<ListedUser>,
    #[serde(default)]
    performed_via_github_app: Option<IdOnly>,
}

#[derive(Deserialize)]
struct ListedUser {
    login: String,
}

#[async_trait]
impl GitHub for GitHubClient {
    async fn create_check_run(
        &self,
        installation: InstallationId,
        repo: &RepoName,
        check_run: &NewCheckRun,
    ) -> Result<CheckRunId, GitHubError> {
        let fields = with_completed_at(&check_run.fields);
        let mut batches = fields.annotation_batches().into_iter();
        let first = NewCheckRun {
            name: check_run.name.clone(),
            head_sha: check_run.head_sha.clone(),
            fields: batches.next().unwrap_or_default(),
        };
        let mut req = Request::new(
            Method::POST,
            format!("/repos/{repo}/check-runs"),
            As::Installation(installation),
        );
        req.body = Some(to_value(&first)?);
        req.creates_content = true;
        req.retry_not_found = true;
        let created: IdOnly = self.send_json(req).await?;
        let id = CheckRunId(created.id);
        for batch in batches {
            self.patch_check_run(installation, repo, id, &batch).await?;
        }
        Ok(id)
    }

    async fn find_check_run(
        &self,
        installation: InstallationId,
        repo: &RepoName,
        head_sha: &str,
        name: &str,
        external_id: &str,
    ) -> Result<Option<CheckRunId>, GitHubError> {
        #[derive(Deserialize)]
        struct Listed {
            id: u64,
            #[serde(default)]
            external_id: Option<String>,
        }
        #[derive(Deserialize)]
        struct Page {
            check_runs: Vec<Listed>,
        }
        if !head_sha.chars().all(|c| c.is_ascii_hexdigit()) || head_sha.is_empty() {
            return Err(GitHubError::InvalidInput(format!(
                "`{head_sha}` is not a commit SHA"
            )));
        }
        for page in 1..=MAX_LIST_PAGES {
            let mut req = Request::new(
                Method::GET,
                format!(
                    "/repos/{repo}/commits/{head_sha}/check-runs?check_name={}&filter=all&app_id={}&per_page=100&page={page}",
                    encode(name, false),
                    self.app_id
                ),
                As::Installation(installation),
            );
            req.retry_not_found = true;
            let path = req.path.clone();
            let reply = self.send(req).await?;
            let listed: Page =
                serde_json::from_str(&reply.body).map_err(|e| GitHubError::Decode {
                    method: "GET".into(),
                    path,
                    message: e.to_string(),
                })?;
            if let Some(found) = listed
                .check_runs
                .iter()
                .find(|c| c.external_id.as_deref() == Some(external_id))
            {
                return Ok(Some(CheckRunId(found.id)));
            }
            if listed.check_runs.is_empty() || next_link(&reply.headers).is_none() {
                break;
            }
        }
        Ok(None)
    }

    async fn update_check_run(
        &self,
        installation: InstallationId,
        repo: &RepoName,
        id: CheckRunId,
        update: &CheckRunUpdate,
    ) -> Result<(), GitHubError> {
        for batch in with_completed_at(update).annotation_batches() {
            self.patch_check_run(installation, repo, id, &batch).await?;
        }
        Ok(())
    }

    async fn create_comment(
        &self,
        installation: InstallationId,
        repo: &RepoName,
        number: u64,
        body: &str,
    ) -> Result<CommentId, GitHubError> {
        let mut req = Request::new(
            Method::POST,
            format!("/repos/{repo}/issues/{number}/comments"),
            As::Installation(installation),
        );
        req.body = Some(json!({ "body": truncate_chars(body, MAX_COMMENT_CHARS) }));
        req.creates_content = true;
        req.retry_not_found = true;
        let created: IdOnly = self.send_json(req).await?;
        Ok(CommentId(created.id))
    }

    async fn update_comment(
        &self,
        installation: InstallationId,
        repo: &RepoName,
        id: CommentId,
        body: &str,
    ) -> Result<(), GitHubError> {
        let mut req = Request::new(
            Method::PATCH,
            format!("/repos/{repo}/issues/comments/{}", id.0),
            As::Installation(installation),
        );
        req.body = Some(json!({ "body": truncate_chars(body, MAX_COMMENT_CHARS) }));
        self.send(req).await.map(drop)
    }

    async fn find_comment_by_marker(
        &self,
        installation: InstallationId,
        repo: &RepoName,
        number: u64,
        marker: &str,
    ) -> Result<Option<CommentId>, GitHubError> {
        for page in 1..=MAX_LIST_PAGES {
            let mut req = Request::new(
                Method::GET,
                format!("/repos/{repo}/issues/{number}/comments?per_page=100&page={page}"),
                As::Installation(installation),
            );
            req.retry_not_found = true;
            let path = req.path.clone();
            let reply = self.send(req).await?;
            let comments: Vec<ListedComment> =
                serde_json::from_str(&reply.body).map_err(|e| GitHubError::Decode {
                    method: "GET".into(),
                    path,
                    message: e.to_string(),
                })?;
            let ours = comments.iter().find(|c| {
                let by_us = self.is_ours(c.user.as_ref(), c.performed_via_github_app.as_ref());
                by_us && c.body.as_deref().is_some_and(|b| b.starts_with(marker))
            });
            if let Some(c) = ours {
                return Ok(Some(CommentId(c.id)));
            }
            if comments.is_empty() || next_link(&reply.headers).is_none() {
                break;
            }
        }
        Ok(None)
    }

    async fn add_reaction(
        &self,
        installation: InstallationId,
        repo: &RepoName,
        comment: CommentId,
        reaction: Reaction,
    ) -> Result<(), GitHubError> {
        let mut req = Request::new(
            Method::POST,
            format!("/repos/{repo}/issues/comments/{}/reactions", comment.0),
            As::Installation(installation),
        );
        req.body = Some(json!({ "content": reaction.as_str() }));
        req.creates_content = true;
        req.retry_not_found = true;
        self.send(req).await.map(drop)
    }

    async fn collaborator_permission(
        &self,
        installation: InstallationId,
        repo: &RepoName,
        username: &str,
    ) -> Result<Permission, GitHubError> {
        #[derive(Deserialize)]
        struct Answer {
            permission: String,
            #[serde(default)]
            role_name: Option<String>,
        }
        let req = Request::new(
            Method::GET,
            format!(
                "/repos/{repo}/collaborators/{}/permission",
                encode(username, false)
            ),
            As::Installation(installation),
        );
        match self.send_json::<Answer>(req).await {
            // `permission` folds maintain into write and triage into read;
            // `role_name` keeps them. A custom role's name reads as none:
            // then its base, `permission`, applies.
            Ok(a) => Ok(a
                .role_name
                .as_deref()
                .map(Permission::parse)
                .filter(|p| *p != Permission::None)
                .unwrap_or_else(|| Permission::parse(&a.permission))),
            // No such user: no permission.
            Err(e) if e.is_not_found() => Ok(Permission::None),
            Err(e) => Err(e),
        }
    }

    async fn file_contents(
        &self,
        installation: InstallationId,
        repo: &RepoName,
        path: &str,
        git_ref: Option<&str>,
    ) -> Result<Option<String>, GitHubError> {
        if path.split('/').any(|seg| seg.is_empty() || seg == "..") {
            return Err(GitHubError::InvalidInput(format!(
                "`{path}` is not a file path in a repository"
            )));
        }
        let mut uri = format!("/repos/{repo}/contents/{}", encode(path, true));
        if let Some(r) = git_ref {
            uri.push_str(&format!("?ref={}", encode(r, false)));
        }
        let mut req = Request::new(Method::GET, uri, As::Installation(installation));
        // The raw media type answers with the file itself, not base64 JSON.
        req.accept = Some("application/vnd.github.raw+json");
        match self.send(req).await {
            Ok(reply) => Ok(Some(reply.body)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn list_hook_deliveries(
        &self,
        cursor: Option<&str>,
    ) -> Result<DeliveryPage, GitHubError> {
        let mut path = "/app/hook/deliveries?per_page=100".to_owned();
        if let Some(c) = cursor {
            // The cursor comes from GitHub's own Link URL, already encoded;
            // anything that could end the parameter is refused.
            if c.contains(['&', '#', ' ']) {
                return Err(GitHubError::InvalidInput(format!(
                    "bad delivery cursor `{c}`"
                )));
            }
            path.push_str("&cursor=");
            path.push_str(c);
        }
        let req = Request::new(Method::GET, path.clone(), As::App);
        let reply = self.send(req).await?;
        let deliveries: Vec<HookDelivery> =
            serde_json::from_str(&reply.body).map_err(|e| GitHubError::Decode {
                method: "GET".into(),
                path,
                message: e.to_string(),
            })?;
        let next_cursor = next_link(&reply.headers).and_then(|url| query_param(&url, "cursor"));
        Ok(DeliveryPage {
            deliveries,
            next_cursor,
        })
    }

    async fn repository_token(
        &self,
        installation: InstallationId,
        repo: &RepoName,
        permissions: &[(&str, &str)],
    ) -> Result<secrecy::SecretString, GitHubError> {
        let permissions: serde_json::Map<String, Value> = permissions
            .iter()
            .map(|(k, v)| ((*k).to_owned(), Value::String((*v).to_owned())))
            .collect();
        let body = json!({
            "repositories": [repo.name()],
            "permissions": permissions,
        });
        let answer = self.mint_token(installation, body).await?;
        Ok(secrecy::SecretString::from(answer.token))
    }

    async fn create_blob(
        &self,
        access: WriteAccess,
        repo: &RepoName,
        content: &[u8],
    ) -> Result<String, GitHubError> {
        use base64::Engine as _;
        let mut req = Request::new(
            Method::POST,
            format!("/repos/{repo}/git/blobs"),
            self.scoped(access, repo).await?,
        );
        req.body = Some(json!({
            "content": base64::engine::general_purpose::STANDARD.encode(content),
            "encoding": "base64",
        }));
        let created: ShaOnly = self.send_json(req).await?;
        Ok(created.sha)
    }

    async fn create_tree(
        &self,
        access: WriteAccess,
        repo: &RepoName,
        base_tree: &str,
        entries: &[TreeEntry],
    ) -> Result<String, GitHubError> {
        let tree: Vec<Value> = entries
            .iter()
            .map(|e| {
                json!({
                    "path": e.path,
                    "mode": e.mode,
                    "type": "blob",
                    "sha": e.sha,
                })
            })
            .collect();
        let mut req = Request::new(
            Method::POST,
            format!("/repos/{repo}/git/trees"),
            self.scoped(access, repo).await?,
        );
        req.body = Some(json!({ "base_tree": base_tree, "tree": tree }));
        let created: ShaOnly = self.send_json(req).await?;
        Ok(created.sha)
    }

    async fn create_commit(
        &self,
        access: WriteAccess,
        repo: &RepoName,
        message: &str,
        tree: &str,
        parents: &[String],
    ) -> Result<String, GitHubError> {
        let mut req = Request::new(
            Method::POST,
            format!("/repos/{repo}/git/commits"),
            self.scoped(access, repo).await?,
        );
        // No author or committer: GitHub attributes the commit to the App's
        // bot and signs it.
        req.body = Some(json!({ "message": message, "tree": tree, "parents": parents }));
        let created: ShaOnly = self.send_json(req).await?;
        Ok(created.sha)
    }

    async fn commit_tree(
        &self,
        access: WriteAccess,
        repo: &RepoName,
        sha: &str,
    ) -> Result<String, GitHubError> {
        #[derive(Deserialize)]
        struct Commit {
            tree: ShaOnly,
        }
        let req = Request::new(
            Method::GET,
            format!("/repos/{repo}/git/commits/{}", encode(sha, false)),
            self.scoped(access, repo).await?,
        );
        let commit: Commit = self.send_json(req).await?;
        Ok(commit.tree.sha)
    }

    async fn branch_sha(
        &self,
        access: WriteAccess,
        repo: &RepoName,
        branch: &str,
    ) -> Result<Option<String>, GitHubError> {
        #[derive(Deserialize)]
        struct Ref {
            object: ShaOnly,
        }
        let req = Request::new(
            Method::GET,
            format!("/repos/{repo}/git/ref/heads/{}", encode(branch, true)),
            self.scoped(access, repo).await?,
        );
        match self.send_json::<Ref>(req).await {
            Ok(r) => Ok(Some(r.object.sha)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn create_branch(
        &self,
        access: WriteAccess,
        repo: &RepoName,
        branch: &str,
        sha: &str,
    ) -> Result<(), GitHubError> {
        let mut req = Request::new(
            Method::POST,
            format!("/repos/{repo}/git/refs"),
            self.scoped(access, repo).await?,
        );
        req.body = Some(json!({ "ref": format!("refs/heads/{branch}"), "sha": sha }));
        self.send(req).await.map(drop)
    }

    async fn update_branch(
        &self,
        access: WriteAccess,
        repo: &RepoName,
        branch: &str,
        sha: &str,
    ) -> Result<(), GitHubError> {
        let mut req = Request::new(
            Method::PATCH,
            format!("/repos/{repo}/git/refs/heads/{}", encode(branch, true)),
            self.scoped(access, repo).await?,
        );
        req.body = Some(json!({ "sha": sha, "force": false }));
        self.send(req).await.map(drop)
    }

    async fn branch_protected(
        &self,
        access: WriteAccess,
        repo: &RepoName,
        branch: &str,
    ) -> Result<bool, GitHubError> {
        #[derive(Deserialize)]
        struct Branch {
            #[serde(default)]
            protected: bool,
        }
        let req = Request::new(
            Method::GET,
            format!("/repos/{repo}/branches/{}", encode(branch, true)),
            self.scoped(access, repo).await?,
        );
        match self.send_json::<Branch>(req).await {
            Ok(b) => Ok(b.protected),
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(e),
        }
    }

    async fn find_pull_request(
        &self,
        access: WriteAccess,
        repo: &RepoName,
        branch: &str,
    ) -> Result<Option<PullRequestRef>, GitHubError> {
        let req = Request::new(
            Method::GET,
            format!(
                "/repos/{repo}/pulls?state=all&per_page=100&head={}",
                encode(&format!("{}:{branch}", repo.owner()), false)
            ),
            self.scoped(access, repo).await?,
        );
        let found: Vec<PullRequestRef> = self.send_json(req).await?;
        // The newest first: an open one, else the last closed.
        Ok(found
            .iter()
            .find(|p| p.state == "open")
            .or(found.first())
            .cloned())
    }

    async fn pull_request(
        &self,
        access: WriteAccess,
        repo: &RepoName,
        number: u64,
    ) -> Result<PullRequestHead, GitHubError> {
        #[derive(Deserialize)]
        struct Side {
            #[serde(rename = "ref")]
            branch: String,
            sha: String,
            #[serde(default)]
            repo: Option<Repo>,
        }
        #[derive(Deserialize)]
        struct Repo {
            full_name: String,
        }
        #[derive(Deserialize)]
        struct Pull {
            #[serde(flatten)]
            pull: PullRequestRef,
            head: Side,
            base: Side,
        }
        let req = Request::new(
            Method::GET,
            format!("/repos/{repo}/pulls/{number}"),
            self.scoped(access, repo).await?,
        );
        let p: Pull = self.send_json(req).await?;
        Ok(PullRequestHead {
            pull: p.pull,
            head_ref: p.head.branch,
            head_sha: p.head.sha,
            head_repo: p.head.repo.map(|r| r.full_name),
            base_ref: p.base.branch,
        })
    }

    async fn pull_request_files(
        &self,
        access: WriteAccess,
        repo: &RepoName,
        number: u64,
    ) -> Result<Vec<(String, String)>, GitHubError> {
        #[derive(Deserialize)]
        struct File {
            filename: String,
            #[serde(default)]
            patch: Option<String>,
        }
        let scoped = self.scoped(access, repo).await?;
        let mut out = Vec::new();
        for page in 1..=30u32 {
            let req = Request::new(
                Method::GET,
                format!("/repos/{repo}/pulls/{number}/files?per_page=100&page={page}"),
                scoped.clone(),
            );
            let files: Vec<File> = self.send_json(req).await?;
            let n = files.len();
            out.extend(
                files
                    .into_iter()
                    .map(|f| (f.filename, f.patch.unwrap_or_default())),
            );
            if n < 100 {
                break;
            }
        }
        Ok(out)
    }

    async fn create_pull_request(
        &self,
        access: WriteAccess,
        repo: &RepoName,
        pull: &NewPullRequest,
    ) -> Result<PullRequestRef, GitHubError> {
        let mut req = Request::new(
            Method::POST,
            format!("/repos/{repo}/pulls"),
            self.scoped(access, repo).await?,
        );
        req.body = Some(json!({
            "title": pull.title,
            "body": truncate_chars(&pull.body, MAX_COMMENT_CHARS),
            "head": pull.head,
            "base": pull.base,
            "draft": pull.draft,
            "maintainer_can_modify": true,
        }));
        req.creates_content = true;
        self.send_json(req).await
    }

    async fn our_reviews(
        &self,
        access: WriteAccess,
        repo: &RepoName,
        number: u64,
        marker: &str,
    ) -> Result<Vec<(u64, String)>, GitHubError> {
        #[derive(Deserialize)]
        struct Listed {
            id: u64,
            #[serde(default)]
            body: Option<String>,
            #[serde(default)]
            user: Option<ListedUser>,
            #[serde(default)]
            performed_via_github_app: Option<IdOnly>,
        }
        let scoped = self.scoped(access, repo).await?;
        let mut found = Vec::new();
        for page in 1..=MAX_LIST_PAGES {
            let req = Request::new(
                Method::GET,
                format!("/repos/{repo}/pulls/{number}/reviews?per_page=100&page={page}"),
                scoped.clone(),
            );
            let listed: Vec<Listed> = self.send_json(req).await?;
            for r in &listed {
                // Only this App's reviews: anyone can write a marker.
                let by_us = self.is_ours(r.user.as_ref(), r.performed_via_github_app.as_ref());
                if let Some(body) = r.body.as_deref().filter(|b| by_us && b.starts_with(marker)) {
                    found.push((r.id, body.to_owned()));
                }
            }
            if listed.len() < 100 {
                break;
            }
        }
        Ok(found)
    }

    async fn review_comment_ids(
        &self,
        access: WriteAccess,
        repo: &RepoName,
        number: u64,
        review: u64,
    ) -> Result<Vec<u64>, GitHubError> {
        let scoped = self.scoped(access, repo).await?;
        let mut ids = Vec::new();
        for page in 1..=MAX_LIST_PAGES {
            let req = Request::new(
                Method::GET,
                format!(
                    "/repos/{repo}/pulls/{number}/reviews/{review}/comments?per_page=100&page={page}"
                ),
                scoped.clone(),
            );
            let listed: Vec<IdOnly> = self.send_json(req).await?;
            ids.extend(listed.iter().map(|c| c.id));
            if listed.len() < 100 {
                break;
            }
        }
        Ok(ids)
    }

    async fn delete_review_comment(
        &self,
        access: WriteAccess,
        repo: &RepoName,
        comment: u64,
    ) -> Result<(), GitHubError> {
        let req = Request::new(
            Method::DELETE,
            format!("/repos/{repo}/pulls/comments/{comment}"),
            self.scoped(access, repo).await?,
        );
        match self.send(req).await {
            Ok(_) => Ok(()),
            // Already gone (a retry after a lost answer): done.
            Err(GitHubError::Api { status: 404, .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn update_review(
        &self,
        access: WriteAccess,
        repo: &RepoName,
        number: u64,
        review: u64,
        body: &str,
    ) -> Result<(), GitHubError> {
        let mut req = Request::new(
            Method::PUT,
            format!("/repos/{repo}/pulls/{number}/reviews/{review}"),
            self.scoped(access, repo).await?,
        );
        req.body = Some(json!({ "body": truncate_chars(body, MAX_COMMENT_CHARS) }));
        self.send(req).await.map(drop)
    }

    async fn create_review(
        &self,
        access: WriteAccess,
        repo: &RepoName,
        number: u64,
        review: &NewReview,
    ) -> Result<u64, GitHubError> {
        let comments: Vec<Value> = review
            .comments
            .iter()
            .map(|c| {
                let mut v = json!({
                    "path": c.path,
                    "line": c.line,
                    "side": "RIGHT",
                    "body": c.body,
                });
                if let Some(start) = c.start_line.filter(|s| *s < c.line) {
                    v["start_line"] = json!(start);
                    v["start_side"] = json!("RIGHT");
                }
                v
            })
            .collect();
        let mut req = Request::new(
            Method::POST,
            format!("/repos/{repo}/pulls/{number}/reviews"),
            self.scoped(access, repo).await?,
        );
        req.body = Some(json!({
            "commit_id": review.commit_id,
            "body": truncate_chars(&review.body, MAX_COMMENT_CHARS),
            // Never APPROVE: an App's approval could count toward required reviews.
            "event": "COMMENT",
            "comments": comments,
        }));
        req.creates_content = true;
        let created: IdOnly = self.send_json(req).await?;
        Ok(created.id)
    }

    async fn redeliver(&self, delivery_id: u64) -> Result<(), GitHubError> {
        let req = Request::new(
            Method::POST,
            format!("/app/hook/deliveries/{delivery_id}/attempts"),
            As::App,
        );
        self.send(req).await.map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_header_next() {
        let mut h = HeaderMap::new();
        h.insert(
            http::header::LINK,
            HeaderValue::from_static(
                "<https://api.github.com/app/hook/deliveries?per_page=100&cursor=v1_123>; rel=\"next\", <https://api.github.com/x?page=1>; rel=\"first\"",
            ),
        );
        let next = next_link(&h).unwrap();
        assert_eq!(query_param(&next, "cursor").as_deref(), Some("v1_123"));
        assert_eq!(encode("a b/c", true), "a%20b/c");
    }
}
