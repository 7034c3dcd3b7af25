//! A stateful fake of GitHub's REST API (version 2022-11-28) for integration
//! tests, on loopback, that answers like GitHub and **checks request shapes**:
//! missing or mistyped fields, bad enum values, unknown objects, lines outside
//! the diff and missing permissions are refused with GitHub's status and
//! message, so a client that passes here sends what GitHub accepts.
//!
//! Its Git Data is real git: blobs, trees, commits and refs live in the bare
//! repositories the test git server ([`super::git_server`]) serves, at
//! `{root}/{owner}/{name}.git`, so what is created through the API is what a
//! `git clone` sees. Everything else (pull requests, reviews, issue comments,
//! reactions, check runs, tokens, permissions) is in memory.
//!
//! Auth works like an App's: `POST /app/installations/{id}/access_tokens`
//! (with any JWT) issues `ghs_…` tokens, optionally narrowed to repositories
//! and permissions within the installation's grant; every `/repos/…` request
//! needs one, and writes need the matching permission. Every request is
//! recorded ([`FakeGitHub::requests`]); ones no route knows are answered 404
//! and listed in [`FakeGitHub::unhandled`].
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, Uri};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde_json::{Value, json};
use tokio::task::JoinHandle;

#[path = "fake_github_web.rs"]
mod web;
pub use web::{OAuthUser, RegisteredApp};

/// The API version the fake speaks (a client sending another is refused).
pub const API_VERSION: &str = "2022-11-28";
/// The App's id (check runs carry it as `app.id`).
pub const APP_ID: u64 = 12345;
/// The App's bot: the author of everything the App creates.
pub const BOT_LOGIN: &str = "taskmaster-test[bot]";
/// The bot's commit e-mail.
pub const BOT_EMAIL: &str = "123+taskmaster-test[bot]@users.noreply.github.com";
/// Most characters in a comment, review or pull-request body.
pub const MAX_BODY_CHARS: usize = 65_536;

const ZERO_SHA: &str = "0000000000000000000000000000000000000000";
const TREE_MODES: [&str; 5] = ["100644", "100755", "040000", "160000", "120000"];
const CONCLUSIONS: [&str; 7] = [
    "action_required",
    "cancelled",
    "failure",
    "neutral",
    "success",
    "skipped",
    "timed_out",
];
const REACTIONS: [&str; 8] = [
    "+1", "-1", "laugh", "confused", "heart", "hooray", "rocket", "eyes",
];

/// Permission name → level (`read`, `write`, `admin`).
pub type Permissions = BTreeMap<String, String>;

/// One request the fake answered.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    /// The path as sent (still percent-encoded).
    pub path: String,
    /// The raw query string ("" when none).
    pub query: String,
    /// The JSON body (`Value::Null` when none).
    pub body: Value,
    pub status: u16,
    /// The permissions of the token used; `None` when the token had the
    /// installation's whole grant (or there was no valid token).
    pub permissions: Option<Permissions>,
    /// When the fake answered it.
    pub at: std::time::Instant,
}

/// The running fake. Stops when dropped.
pub struct FakeGitHub {
    /// Base URL without a trailing slash (`GITHUB_API_URL`).
    pub url: String,
    inner: Arc<Inner>,
    task: JoinHandle<()>,
}

impl Drop for FakeGitHub {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Inner {
    url: String,
    root: PathBuf,
    world: Mutex<World>,
    holds: Mutex<Vec<Arc<HoldState>>>,
    /// Added before every answer, in microseconds ([`FakeGitHub::set_latency`]).
    latency_us: std::sync::atomic::AtomicU64,
}

struct HoldState {
    method: String,
    path_suffix: String,
    arrived: tokio::sync::watch::Sender<bool>,
    release: tokio::sync::watch::Sender<bool>,
}

/// A request held back at its arrival (see [`FakeGitHub::hold`]).
pub struct Hold(Arc<HoldState>);

impl Hold {
    /// Waits until the held request has arrived.
    pub async fn arrived(&self) {
        let mut rx = self.0.arrived.subscribe();
        let _ = rx.wait_for(|a| *a).await;
    }

    /// Lets the held request (and later ones) through: GitHub then does
    /// what it asked, whether or not its sender is still there to read the
    /// answer.
    pub fn release(&self) {
        self.0.release.send_replace(true);
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, World> {
        self.world.lock().unwrap_or_else(|e| e.into_inner())
    }
}

struct Token {
    /// `None`: the installation's whole grant.
    permissions: Option<Permissions>,
    /// `None`: every repository.
    repositories: Option<Vec<String>>,
}

/// Everything in memory.
struct World {
    grant: Permissions,
    tokens: HashMap<String, Token>,
    issued: Vec<(Option<Permissions>, Option<Vec<String>>)>,
    requests: Vec<Recorded>,
    unhandled: Vec<Recorded>,
    repos: HashMap<String, RepoState>,
    user_permissions: HashMap<String, String>,
    next_id: u64,
    /// The App's webhook URL (`GET /app/hook/config`).
    hook_url: String,
    /// github.com's side: App registration from a manifest, OAuth sign-in.
    web: web::Web,
    /// What `GET /app/hook/deliveries` lists, newest first.
    hook_deliveries: Vec<Value>,
}

impl World {
    fn new() -> Self {
        let grant = [
            ("checks", "write"),
            ("issues", "write"),
            ("pull_requests", "write"),
            ("contents", "write"),
            ("metadata", "read"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        World {
            grant,
            tokens: HashMap::new(),
            issued: Vec::new(),
            requests: Vec::new(),
            unhandled: Vec::new(),
            repos: HashMap::new(),
            user_permissions: HashMap::new(),
            hook_url: String::new(),
            web: web::Web::default(),
            hook_deliveries: Vec::new(),
            next_id: 1000,
        }
    }

    fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    fn repo(&mut self, full: &str) -> &mut RepoState {
        self.repos
            .entry(full.to_owned())
            .or_insert_with(RepoState::new)
    }
}

#[derive(Debug, Clone)]
struct Pull {
    number: u64,
    id: u64,
    title: String,
    body: Option<String>,
    draft: bool,
    state: String,
    head_ref: String,
    head_sha: String,
    base_ref: String,
    base_sha: String,
    head_repo: String,
    maintainer_can_modify: bool,
    user: Value,
}

/// One repository's in-memory state.
struct RepoState {
    next_number: u64,
    /// Every issue and pull-request number in use.
    numbers: BTreeSet<u64>,
    pulls: BTreeMap<u64, Pull>,
    /// (pull number, review with its `comments` and `event`).
    reviews: Vec<(u64, Value)>,
    /// (issue number, comment).
    comments: Vec<(u64, Value)>,
    /// (comment id, reaction).
    reactions: Vec<(u64, Value)>,
    check_runs: Vec<Value>,
    drafts_supported: bool,
    protected: BTreeSet<String>,
}

impl RepoState {
    fn new() -> Self {
        RepoState {
            next_number: 100,
            numbers: BTreeSet::new(),
            pulls: BTreeMap::new(),
            reviews: Vec::new(),
            comments: Vec::new(),
            reactions: Vec::new(),
            check_runs: Vec::new(),
            drafts_supported: true,
            protected: BTreeSet::new(),
        }
    }

    fn take_number(&mut self) -> u64 {
        while self.numbers.contains(&self.next_number) {
            self.next_number += 1;
        }
        let n = self.next_number;
        self.numbers.insert(n);
        self.next_number += 1;
        n
    }
}

// ---------------------------------------------------------------------------
// The test-facing API
// ---------------------------------------------------------------------------

impl FakeGitHub {
    /// Starts the fake on `127.0.0.1:0`; Git Data uses the bare repositories
    /// under `repos_root` (`{repos_root}/{owner}/{name}.git`).
    pub async fn start(repos_root: PathBuf) -> FakeGitHub {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let url = format!("http://{addr}");
        let inner = Arc::new(Inner {
            url: url.clone(),
            root: repos_root,
            world: Mutex::new(World::new()),
            holds: Mutex::new(Vec::new()),
            latency_us: std::sync::atomic::AtomicU64::new(0),
        });
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(inner.clone());
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        FakeGitHub { url, inner, task }
    }

    /// Answers every request `latency` late (GitHub's own is ~50 ms); the
    /// wait is concurrent, outside the fake's lock. Default zero.
    pub fn set_latency(&self, latency: std::time::Duration) {
        self.inner.latency_us.store(
            latency.as_micros() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    /// Holds the next request of `method` whose path ends with
    /// `path_suffix` at its arrival until [`Hold::release`]: a kill point
    /// (the test aborts the sender while the request is held, then releases
    /// it, so GitHub has done it but nobody read the answer).
    pub fn hold(&self, method: &str, path_suffix: &str) -> Hold {
        let state = Arc::new(HoldState {
            method: method.to_owned(),
            path_suffix: path_suffix.to_owned(),
            arrived: tokio::sync::watch::channel(false).0,
            release: tokio::sync::watch::channel(false).0,
        });
        self.inner.holds.lock().unwrap().push(state.clone());
        Hold(state)
    }

    fn bare(&self, repo: &str) -> PathBuf {
        self.inner.root.join(format!("{repo}.git"))
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<Recorded> {
        self.inner.lock().requests.clone()
    }

    /// The requests after the first `n`, in arrival order (a poller's
    /// cheap way to see what is new).
    pub fn requests_since(&self, n: usize) -> Vec<Recorded> {
        self.inner
            .lock()
            .requests
            .get(n..)
            .unwrap_or_default()
            .to_vec()
    }

    /// Every non-GET request except token requests (whatever its answer).
    pub fn writes(&self) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| r.method != "GET" && !r.path.ends_with("/access_tokens"))
            .collect()
    }

    /// Requests no route knew (answered 404).
    pub fn unhandled(&self) -> Vec<Recorded> {
        self.inner.lock().unhandled.clone()
    }

    /// Forgets the recorded requests.
    pub fn clear_requests(&self) {
        let mut w = self.inner.lock();
        w.requests.clear();
        w.unhandled.clear();
    }

    /// Every token issued: (permissions asked for, `None` = whole grant;
    /// repositories, `None` = all).
    pub fn tokens_issued(&self) -> Vec<(Option<Permissions>, Option<Vec<String>>)> {
        self.inner.lock().issued.clone()
    }

    /// The secret values of every token handed out (to prove none leaks).
    pub fn token_values(&self) -> Vec<String> {
        self.inner.lock().tokens.keys().cloned().collect()
    }

    /// Grants the installation `permission` at `level`.
    pub fn grant(&self, permission: &str, level: &str) {
        self.inner
            .lock()
            .grant
            .insert(permission.to_owned(), level.to_owned());
    }

    /// Takes `permission` away from the installation.
    pub fn revoke(&self, permission: &str) {
        self.inner.lock().grant.remove(permission);
    }

    /// `user`'s permission on every repository (default `read`).
    pub fn set_permission(&self, user: &str, permission: &str) {
        self.inner
            .lock()
            .user_permissions
            .insert(user.to_owned(), permission.to_owned());
    }

    /// The App's webhook URL, as `GET /app/hook/config` reports it.
    pub fn set_hook_url(&self, url: &str) {
        self.inner.lock().hook_url = url.to_owned();
    }

    /// What `GET /app/hook/deliveries` answers, newest first: each
    /// `(event, status_code)` becomes a delivery as GitHub lists it
    /// (`status_code` 0: GitHub could not connect).
    pub fn set_hook_deliveries(&self, deliveries: &[(&str, u16)]) {
        self.inner.lock().hook_deliveries = deliveries
            .iter()
            .enumerate()
            .map(|(i, (event, code))| {
                json!({
                    "id": 9000 + i, "guid": format!("guid-{i}"),
                    "delivered_at": "2026-12-07T10:00:00Z", "redelivery": false, "duration": 0.05,
                    "status": match code { 0 => "failed to connect to host", 200..=299 => "OK", _ => "Invalid HTTP Response" },
                    "status_code": code, "event": event, "action": null,
                    "installation_id": 1, "repository_id": null
                })
            })
            .collect();
    }

    /// The Apps registered from manifests (`POST /settings/apps/new`).
    pub fn registered_apps(&self) -> Vec<RegisteredApp> {
        self.inner.lock().web.apps.clone()
    }

    /// Adds an OAuth App client (as GitHub App registration makes one):
    /// sign-in through `client_id` may redirect to `callback`.
    pub fn add_oauth_client(&self, client_id: &str, client_secret: &str, callback: &str) {
        self.inner
            .lock()
            .web
            .add_client(client_id, client_secret, callback);
    }

    /// Whom `GET /login/oauth/authorize` signs in next (as if that person
    /// had clicked "Authorize"), with their organizations and teams.
    pub fn sign_in_as(&self, user: OAuthUser) {
        self.inner.lock().web.user = Some(user);
    }

    /// Whether `repo` (`owner/name`) accepts draft pull requests (default yes).
    pub fn set_drafts_supported(&self, repo: &str, supported: bool) {
        self.inner.lock().repo(repo).drafts_supported = supported;
    }

    /// Protects `branch` of `repo`: ref updates to it are refused.
    pub fn protect_branch(&self, repo: &str, branch: &str) {
        self.inner
            .lock()
            .repo(repo)
            .protected
            .insert(branch.to_owned());
    }

    /// Seeds an open pull request. A fork PR has a `head_repo_full_name`
    /// other than `repo`.
    #[allow(clippy::too_many_arguments)]
    pub fn add_pull_request(
        &self,
        repo: &str,
        number: u64,
        head_ref: &str,
        head_sha: &str,
        base_ref: &str,
        base_sha: &str,
        head_repo_full_name: &str,
    ) {
        let mut w = self.inner.lock();
        let id = w.id();
        let owner = head_repo_full_name.split('/').next().unwrap_or("octocat");
        let pull = Pull {
            number,
            id,
            title: format!("Pull request #{number}"),
            body: None,
            draft: false,
            state: "open".into(),
            head_ref: head_ref.into(),
            head_sha: head_sha.into(),
            base_ref: base_ref.into(),
            base_sha: base_sha.into(),
            head_repo: head_repo_full_name.into(),
            maintainer_can_modify: false,
            user: json!({ "login": owner, "id": 1, "type": "User" }),
        };
        let st = w.repo(repo);
        st.numbers.insert(number);
        st.pulls.insert(number, pull);
    }

    /// Reserves issue `number` in `repo` (comments on it are then accepted).
    pub fn add_issue(&self, repo: &str, number: u64) {
        self.inner.lock().repo(repo).numbers.insert(number);
    }

    /// Seeds a comment by `login` on issue or PR `number`; returns its id.
    pub fn add_comment(&self, repo: &str, number: u64, login: &str, body: &str) -> u64 {
        let mut w = self.inner.lock();
        let id = w.id();
        let kind = if login.ends_with("[bot]") {
            "Bot"
        } else {
            "User"
        };
        let url = self.inner.url.clone();
        let st = w.repo(repo);
        st.numbers.insert(number);
        let comment = comment_json(
            &url,
            repo,
            number,
            id,
            body,
            json!({ "login": login, "type": kind }),
        );
        st.comments.push((number, comment));
        id
    }

    /// Every pull request of `repo` (GitHub's JSON), by number.
    pub fn pulls(&self, repo: &str) -> Vec<Value> {
        let mut w = self.inner.lock();
        let url = self.inner.url.clone();
        w.repo(repo)
            .pulls
            .values()
            .map(|p| pull_json(&url, repo, p))
            .collect()
    }

    /// The reviews of pull request `number`, each with its `comments` and `event`.
    pub fn reviews(&self, repo: &str, number: u64) -> Vec<Value> {
        let mut w = self.inner.lock();
        w.repo(repo)
            .reviews
            .iter()
            .filter(|(n, _)| *n == number)
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// The comments on issue or PR `number`, oldest first.
    pub fn comments(&self, repo: &str, number: u64) -> Vec<Value> {
        let mut w = self.inner.lock();
        w.repo(repo)
            .comments
            .iter()
            .filter(|(n, _)| *n == number)
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// The reactions on comment `comment_id`.
    pub fn reactions(&self, repo: &str, comment_id: u64) -> Vec<Value> {
        let mut w = self.inner.lock();
        w.repo(repo)
            .reactions
            .iter()
            .filter(|(c, _)| *c == comment_id)
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// Every check run of `repo` (with accumulated `annotations`), oldest first.
    pub fn check_runs(&self, repo: &str) -> Vec<Value> {
        self.inner.lock().repo(repo).check_runs.clone()
    }

    /// Where `branch` points in the bare repository.
    pub fn branch_sha(&self, repo: &str, branch: &str) -> Option<String> {
        resolve_ref(&self.bare(repo), &format!("refs/heads/{branch}"))
    }

    /// A commit of the bare repository as `{"sha", "message", "tree",
    /// "parents": [sha…], "author": {"name","email","date"}, "committer"}`
    /// (plain SHA strings), or `Value::Null` when there is none.
    pub fn commit_info(&self, repo: &str, sha: &str) -> Value {
        match read_commit(&self.bare(repo), sha) {
            Some(c) => json!({
                "sha": c.sha,
                "message": c.message,
                "tree": c.tree,
                "parents": c.parents,
                "author": c.author.json(),
                "committer": c.committer.json(),
            }),
            None => Value::Null,
        }
    }

    /// The file at `path` in `git_ref` of the bare repository.
    pub fn file_at(&self, repo: &str, git_ref: &str, path: &str) -> Option<String> {
        if git_ref.starts_with('-') {
            return None;
        }
        git_bytes(
            &self.bare(repo),
            &["show", &format!("{git_ref}:{path}")],
            None,
            &[],
        )
        .ok()
        .map(|b| String::from_utf8_lossy(&b).into_owned())
    }
}

// ---------------------------------------------------------------------------
// git
// ---------------------------------------------------------------------------

/// Runs git in `dir` with `stdin` and extra `envs`; its stdout, or an error
/// with its stderr.
fn git_bytes(
    dir: &Path,
    args: &[&str],
    stdin: Option<&[u8]>,
    envs: &[(&str, &str)],
) -> Result<Vec<u8>, String> {
    let mut cmd = Command::new("git");
    cmd.args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env_remove("GIT_DIR")
        .env_remove("GIT_WORK_TREE")
        .env_remove("GIT_INDEX_FILE")
        .env("GIT_AUTHOR_NAME", BOT_LOGIN)
        .env("GIT_AUTHOR_EMAIL", BOT_EMAIL)
        .env("GIT_COMMITTER_NAME", BOT_LOGIN)
        .env("GIT_COMMITTER_EMAIL", BOT_EMAIL)
        .envs(envs.iter().copied())
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| format!("git {args:?}: {e}"))?;
    let writer = match (stdin, child.stdin.take()) {
        (Some(data), Some(mut pipe)) => {
            let data = data.to_vec();
            Some(std::thread::spawn(move || {
                let _ = pipe.write_all(&data);
            }))
        }
        _ => None,
    };
    let out = child
        .wait_with_output()
        .map_err(|e| format!("git {args:?}: {e}"))?;
    if let Some(w) = writer {
        let _ = w.join();
    }
    if out.status.success() {
        Ok(out.stdout)
    } else {
        Err(format!(
            "git {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// [`git_bytes`] as trimmed text: the non-panicking twin of `git_server::git`.
pub fn try_git(
    dir: &Path,
    args: &[&str],
    stdin: Option<&[u8]>,
    envs: &[(&str, &str)],
) -> Result<String, String> {
    git_bytes(dir, args, stdin, envs).map(|b| String::from_utf8_lossy(&b).trim().to_owned())
}

fn is_sha(s: &str) -> bool {
    s.len() == 40 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

fn object_type(bare: &Path, sha: &str) -> Option<String> {
    if sha.starts_with('-') {
        return None;
    }
    try_git(bare, &["cat-file", "-t", sha], None, &[]).ok()
}

fn valid_ref(bare: &Path, name: &str) -> bool {
    !name.starts_with('-') && try_git(bare, &["check-ref-format", name], None, &[]).is_ok()
}

/// The SHA `full_ref` (e.g. `refs/heads/main`) points to, exactly that ref.
fn resolve_ref(bare: &Path, full_ref: &str) -> Option<String> {
    if !bare.is_dir() || !valid_ref(bare, full_ref) {
        return None;
    }
    try_git(
        bare,
        &["show-ref", "--verify", "--hash", full_ref],
        None,
        &[],
    )
    .ok()
    .filter(|s| is_sha(s))
}

fn is_ancestor(bare: &Path, old: &str, new: &str) -> bool {
    try_git(bare, &["merge-base", "--is-ancestor", old, new], None, &[]).is_ok()
}

#[derive(Debug, Clone)]
struct Person {
    name: String,
    email: String,
    date: Option<String>,
}

impl Person {
    fn bot() -> Self {
        Person {
            name: BOT_LOGIN.into(),
            email: BOT_EMAIL.into(),
            date: None,
        }
    }

    fn json(&self) -> Value {
        json!({ "name": self.name, "email": self.email, "date": self.date })
    }
}

struct CommitInfo {
    sha: String,
    tree: String,
    parents: Vec<String>,
    author: Person,
    committer: Person,
    message: String,
}

/// Parses `git cat-file commit` of `rev` (any commit-ish).
fn read_commit(bare: &Path, rev: &str) -> Option<CommitInfo> {
    if rev.starts_with('-') || !bare.is_dir() {
        return None;
    }
    let sha = try_git(
        bare,
        &[
            "rev-parse",
            "--verify",
            "--quiet",
            &format!("{rev}^{{commit}}"),
        ],
        None,
        &[],
    )
    .ok()?;
    let raw = git_bytes(bare, &["cat-file", "commit", &sha], None, &[]).ok()?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, message) = text.split_once("\n\n").unwrap_or((text.as_str(), ""));
    let (mut tree, mut parents, mut author, mut committer) =
        (String::new(), Vec::new(), None, None);
    for line in head.lines() {
        if let Some(v) = line.strip_prefix("tree ") {
            tree = v.to_owned();
        } else if let Some(v) = line.strip_prefix("parent ") {
            parents.push(v.to_owned());
        } else if let Some(v) = line.strip_prefix("author ") {
            author = parse_ident(v);
        } else if let Some(v) = line.strip_prefix("committer ") {
            committer = parse_ident(v);
        }
    }
    Some(CommitInfo {
        sha,
        tree,
        parents,
        author: author?,
        committer: committer?,
        message: message.trim_end_matches('\n').to_owned(),
    })
}

/// `Name <email> 1700000000 +0000`.
fn parse_ident(s: &str) -> Option<Person> {
    let lt = s.find('<')?;
    let gt = lt + s[lt..].find('>')?;
    let secs: i64 = s[gt + 1..].split_whitespace().next()?.parse().ok()?;
    let date = chrono::DateTime::<chrono::Utc>::from_timestamp(secs, 0)
        .map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
    Some(Person {
        name: s[..lt].trim().to_owned(),
        email: s[lt + 1..gt].to_owned(),
        date,
    })
}

/// One `@@ -a,b +c,d @@` header: (start, count) on each side.
struct Hunk {
    left: (u64, u64),
    right: (u64, u64),
}

fn diff_hunks(bare: &Path, base: &str, head: &str, path: &str) -> Vec<Hunk> {
    if base.starts_with('-') || head.starts_with('-') {
        return Vec::new();
    }
    let diff = try_git(
        bare,
        &[
            "diff",
            "--no-ext-diff",
            "--no-color",
            "-U3",
            base,
            head,
            "--",
            path,
        ],
        None,
        &[("GIT_LITERAL_PATHSPECS", "1")],
    )
    .unwrap_or_default();
    let range = |s: &str| -> Option<(u64, u64)> {
        match s.split_once(',') {
            Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
            None => Some((s.parse().ok()?, 1)),
        }
    };
    diff.lines()
        .filter_map(|line| {
            let rest = line.strip_prefix("@@ -")?;
            let mut parts = rest.split(' ');
            let left = range(parts.next()?)?;
            let right = range(parts.next()?.strip_prefix('+')?)?;
            Some(Hunk { left, right })
        })
        .collect()
}

/// The hunk holding `line` on `side` (`LEFT` or `RIGHT`).
fn hunk_index(hunks: &[Hunk], side: &str, line: u64) -> Option<usize> {
    hunks.iter().position(|h| {
        let (start, count) = if side == "LEFT" { h.left } else { h.right };
        count > 0 && line >= start && line < start + count
    })
}

// ---------------------------------------------------------------------------
// Requests and replies
// ---------------------------------------------------------------------------

struct Req {
    method: Method,
    path: String,
    raw_query: String,
    query: Vec<(String, String)>,
    segments: Vec<String>,
    auth: Option<String>,
    accept: Option<String>,
    api_version: Option<String>,
    body: Value,
    bad_json: bool,
}

impl Req {
    fn parse(method: Method, uri: &Uri, headers: &HeaderMap, body: &[u8]) -> Req {
        let header = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let raw_query = uri.query().unwrap_or("").to_owned();
        let query = raw_query
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| {
                let (k, v) = p.split_once('=').unwrap_or((p, ""));
                (percent_decode(k, true), percent_decode(v, true))
            })
            .collect();
        let segments = uri
            .path()
            .trim_start_matches('/')
            .split('/')
            .map(|s| percent_decode(s, false))
            .collect();
        let (body, bad_json) = if body.iter().all(u8::is_ascii_whitespace) {
            (Value::Null, false)
        } else {
            match serde_json::from_slice(body) {
                Ok(v) => (v, false),
                Err(_) => (
                    Value::String(String::from_utf8_lossy(body).into_owned()),
                    true,
                ),
            }
        };
        Req {
            method,
            path: uri.path().to_owned(),
            raw_query,
            query,
            segments,
            auth: header("authorization"),
            accept: header("accept"),
            api_version: header("x-github-api-version"),
            body,
            bad_json,
        }
    }

    fn query(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn query_u64(&self, name: &str) -> Option<u64> {
        self.query(name).and_then(|v| v.parse().ok())
    }
}

/// Percent-encodes everything but unreserved characters (RFC 3986).
fn percent_encode(s: &str) -> String {
    taskmaster::dashboard::signin::percent_encode(s)
}

fn percent_decode(s: &str, plus_is_space: bool) -> String {
    let bytes = s.as_bytes();
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h * 16 + l);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' if plus_is_space => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

enum Payload {
    Json(Value),
    Raw(Vec<u8>),
}

struct Reply {
    status: u16,
    payload: Payload,
    link: Option<String>,
    /// A redirect's target (`Location`), for the web pages' 302s.
    location: Option<String>,
}

type Res = Result<Reply, Reply>;

impl IntoResponse for Reply {
    fn into_response(self) -> Response {
        let (content_type, bytes) = match self.payload {
            Payload::Json(v) => (
                "application/json; charset=utf-8",
                serde_json::to_vec(&v).unwrap_or_default(),
            ),
            Payload::Raw(b) => ("application/vnd.github.raw+json", b),
        };
        let reset = (chrono::Utc::now().timestamp() + 3600).to_string();
        let mut builder = Response::builder()
            .status(self.status)
            .header("content-type", content_type)
            .header("x-github-api-version-selected", API_VERSION)
            .header("x-ratelimit-limit", "5000")
            .header("x-ratelimit-remaining", "4999")
            .header("x-ratelimit-reset", reset);
        if let Some(link) = self.link {
            builder = builder.header("link", link);
        }
        if let Some(location) = self.location {
            builder = builder.header("location", location);
        }
        builder
            .body(axum::body::Body::from(bytes))
            .unwrap_or_else(|e| {
                (axum::http::StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response()
            })
    }
}

fn reply(status: u16, body: Value) -> Reply {
    Reply {
        status,
        payload: Payload::Json(body),
        link: None,
        location: None,
    }
}

fn msg(status: u16, message: &str) -> Reply {
    reply(
        status,
        json!({ "message": message, "documentation_url": "https://docs.github.com/rest", "status": status.to_string() }),
    )
}

fn not_found() -> Reply {
    msg(404, "Not Found")
}

fn internal(e: String) -> Reply {
    msg(500, &format!("fake GitHub: {e}"))
}

fn validation(errors: Value) -> Reply {
    reply(
        422,
        json!({ "message": "Validation Failed", "errors": errors }),
    )
}

fn unprocessable(error: &str) -> Reply {
    reply(
        422,
        json!({ "message": "Unprocessable Entity", "errors": [error] }),
    )
}

fn missing(key: &str) -> Reply {
    msg(
        422,
        &format!("Invalid request.\n\n\"{key}\" wasn't supplied."),
    )
}

fn invalid_type(key: &str, value: &Value, kind: &str) -> Reply {
    msg(
        422,
        &format!("Invalid request.\n\nFor 'properties/{key}', {value} is not {kind}."),
    )
}

fn opt_str<'a>(body: &'a Value, key: &str) -> Result<Option<&'a str>, Reply> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.as_str())),
        Some(other) => Err(invalid_type(key, other, "a string")),
    }
}

fn req_str<'a>(body: &'a Value, key: &str) -> Result<&'a str, Reply> {
    opt_str(body, key)?.ok_or_else(|| missing(key))
}

fn opt_bool(body: &Value, key: &str) -> Result<Option<bool>, Reply> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(other) => Err(invalid_type(key, other, "a boolean")),
    }
}

fn opt_u64(body: &Value, key: &str) -> Result<Option<u64>, Reply> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .map(Some)
            .ok_or_else(|| invalid_type(key, v, "an integer")),
    }
}

fn too_long(text: &str) -> bool {
    text.chars().count() > MAX_BODY_CHARS
}

fn number(s: &str) -> Result<u64, Reply> {
    s.parse().map_err(|_| not_found())
}

fn level(l: Option<&str>) -> u8 {
    match l {
        Some("read") => 1,
        Some("write") => 2,
        Some("admin") => 3,
        _ => 0,
    }
}

/// Write access through any of `keys`, else GitHub's 403.
fn need(perms: &Permissions, keys: &[&str]) -> Result<(), Reply> {
    if keys
        .iter()
        .any(|k| level(perms.get(*k).map(String::as_str)) >= 2)
    {
        Ok(())
    } else {
        Err(msg(403, "Resource not accessible by integration"))
    }
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn bot_user() -> Value {
    json!({ "login": BOT_LOGIN, "id": 123, "type": "Bot" })
}

/// Slices `items` by `per_page` (default 30, at most 100) and `page`, with a
/// `Link: <…>; rel="next"` when more follow.
fn paginate(req: &Req, api: &str, items: Vec<Value>) -> Reply {
    let per_page = req.query_u64("per_page").unwrap_or(30).clamp(1, 100) as usize;
    let page = req.query_u64("page").unwrap_or(1).max(1) as usize;
    let start = (page - 1).saturating_mul(per_page);
    let slice: Vec<Value> = items.iter().skip(start).take(per_page).cloned().collect();
    let link = (start.saturating_add(per_page) < items.len()).then(|| {
        let mut params: Vec<String> = req
            .raw_query
            .split('&')
            .filter(|p| !p.is_empty() && !p.starts_with("page=") && !p.starts_with("per_page="))
            .map(str::to_owned)
            .collect();
        params.push(format!("per_page={per_page}"));
        params.push(format!("page={}", page + 1));
        format!("<{api}{}?{}>; rel=\"next\"", req.path, params.join("&"))
    });
    Reply {
        status: 200,
        payload: Payload::Json(Value::Array(slice)),
        link,
        location: None,
    }
}

// ---------------------------------------------------------------------------
// Routing
// ---------------------------------------------------------------------------

#[derive(Default)]
struct Ctx {
    permissions: Option<Permissions>,
    unhandled: bool,
}

/// The repository a `/repos/{owner}/{name}/…` request is about, with the
/// permissions its token carries.
struct RepoCtx {
    owner: String,
    name: String,
    full: String,
    bare: PathBuf,
    perms: Permissions,
    base_url: String,
}

impl RepoCtx {
    fn api(&self, tail: &str) -> String {
        format!("{}/repos/{}/{tail}", self.base_url, self.full)
    }

    /// 404 unless the bare repository exists.
    fn exists(&self) -> Result<(), Reply> {
        if self.bare.is_dir() {
            Ok(())
        } else {
            Err(not_found())
        }
    }
}

async fn handle(
    State(inner): State<Arc<Inner>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let held = {
        let mut holds = inner.holds.lock().unwrap();
        let at = holds.iter().position(|h| {
            h.method == method.as_str() && uri.path().ends_with(h.path_suffix.as_str())
        });
        at.map(|i| holds.remove(i))
    };
    if let Some(h) = held {
        h.arrived.send_replace(true);
        let mut rx = h.release.subscribe();
        let _ = rx.wait_for(|r| *r).await;
    }
    let latency = inner.latency_us.load(std::sync::atomic::Ordering::Relaxed);
    if latency > 0 {
        tokio::time::sleep(std::time::Duration::from_micros(latency)).await;
    }
    let req = Req::parse(method, &uri, &headers, &body);
    // git runs synchronously: off the async workers.
    tokio::task::spawn_blocking(move || dispatch(&inner, req))
        .await
        .unwrap_or_else(|e| msg(500, &format!("the fake GitHub failed: {e}")))
        .into_response()
}

/// Answers `req` and records it. One request at a time (the world's lock is
/// held throughout), which keeps ref updates and numbering simple.
fn dispatch(inner: &Inner, req: Req) -> Reply {
    let mut ctx = Ctx::default();
    let mut w = inner.lock();
    let answer = if let Some(answer) = web::route(&mut w.web, &inner.url, &req) {
        answer
    } else if req.bad_json {
        msg(400, "Problems parsing JSON")
    } else {
        route(inner, &mut w, &req, &mut ctx)
    };
    let rec = Recorded {
        method: req.method.to_string(),
        path: req.path.clone(),
        query: req.raw_query.clone(),
        body: req.body.clone(),
        status: answer.status,
        permissions: ctx.permissions.clone(),
        at: std::time::Instant::now(),
    };
    if ctx.unhandled {
        w.unhandled.push(rec.clone());
    }
    w.requests.push(rec);
    answer
}

fn route(inner: &Inner, w: &mut World, req: &Req, ctx: &mut Ctx) -> Reply {
    if let Some(v) = &req.api_version
        && v != API_VERSION
    {
        return msg(400, &format!("API version {v} is not supported."));
    }
    let segs: Vec<&str> = req.segments.iter().map(String::as_str).collect();
    if let ("POST", ["app", "installations", _, "access_tokens"]) =
        (req.method.as_str(), segs.as_slice())
    {
        return access_token(w, req).unwrap_or_else(|e| e);
    }
    // The App's webhook deliveries (the redelivery sweep at start-up):
    // none missed.
    if let ("GET", ["app", "hook", "deliveries"]) = (req.method.as_str(), segs.as_slice()) {
        if req
            .auth
            .as_deref()
            .is_none_or(|a| !a.starts_with("Bearer "))
        {
            return msg(401, "A JSON web token could not be decoded");
        }
        return reply(200, Value::Array(w.hook_deliveries.clone()));
    }
    // The App itself, and its webhook's configuration: the JWT must be the
    // App's (its `iss` is [`APP_ID`]; the signature is not checked).
    if let ("GET", ["app"] | ["app", "hook", "config"]) = (req.method.as_str(), segs.as_slice()) {
        if let Err(e) = app_jwt_issuer(req, &w.web.app_ids()) {
            return e;
        }
        return if segs.len() == 1 {
            reply(
                200,
                json!({ "id": APP_ID, "slug": "taskmaster-test", "name": "taskmaster test",
                        "installations_count": 1, "owner": { "login": "octo" } }),
            )
        } else {
            reply(
                200,
                json!({ "url": w.hook_url, "content_type": "json", "insecure_ssl": "0",
                        "secret": "********" }),
            )
        };
    }
    let ["repos", owner, name, rest @ ..] = segs.as_slice() else {
        ctx.unhandled = true;
        return not_found();
    };
    let bad = |s: &str| s.is_empty() || s == "." || s == "..";
    if bad(owner) || bad(name) {
        ctx.unhandled = true;
        return not_found();
    }
    let token = req.auth.as_deref().and_then(|a| {
        let (scheme, rest) = a.trim().split_once(' ')?;
        (scheme.eq_ignore_ascii_case("token") || scheme.eq_ignore_ascii_case("bearer"))
            .then(|| rest.trim())
    });
    let Some(tok) = token.and_then(|t| w.tokens.get(t)) else {
        return msg(401, "Bad credentials");
    };
    ctx.permissions = tok.permissions.clone();
    if let Some(repos) = &tok.repositories
        && !repos.iter().any(|r| r == name)
    {
        return not_found();
    }
    let perms = tok.permissions.clone().unwrap_or_else(|| w.grant.clone());
    let r = RepoCtx {
        owner: (*owner).to_owned(),
        name: (*name).to_owned(),
        full: format!("{owner}/{name}"),
        bare: inner.root.join(owner).join(format!("{name}.git")),
        perms,
        base_url: inner.url.clone(),
    };
    repo_route(w, &r, req, rest, ctx).unwrap_or_else(|e| e)
}

fn repo_route(w: &mut World, r: &RepoCtx, req: &Req, rest: &[&str], ctx: &mut Ctx) -> Res {
    let b = &req.body;
    match (req.method.as_str(), rest) {
        ("POST", ["git", "blobs"]) => create_blob(r, b),
        ("POST", ["git", "trees"]) => create_tree(r, b),
        ("POST", ["git", "commits"]) => create_commit(r, b),
        ("GET", ["git", "commits", sha]) => get_commit(r, sha),
        ("GET", ["git", "ref", path @ ..]) if !path.is_empty() => get_ref(r, &path.join("/")),
        ("POST", ["git", "refs"]) => create_ref(r, b),
        ("PATCH", ["git", "refs", path @ ..]) if !path.is_empty() => {
            update_ref(w, r, &path.join("/"), b)
        }
        ("GET", ["branches", path @ ..]) if !path.is_empty() => get_branch(w, r, &path.join("/")),
        ("GET", ["pulls"]) => list_pulls(w, r, req),
        ("POST", ["pulls"]) => create_pull(w, r, b),
        ("GET", ["pulls", n]) => {
            let n = number(n)?;
            let p = w
                .repo(&r.full)
                .pulls
                .get(&n)
                .cloned()
                .ok_or_else(not_found)?;
            Ok(reply(200, pull_json(&r.base_url, &r.full, &p)))
        }
        ("GET", ["pulls", n, "reviews"]) => list_reviews(w, r, req, number(n)?),
        ("GET", ["pulls", n, "files"]) => list_pull_files(w, r, number(n)?),
        ("POST", ["pulls", n, "reviews"]) => create_review(w, r, number(n)?, b),
        ("PUT", ["pulls", n, "reviews", id]) => update_review(w, r, number(n)?, number(id)?, b),
        ("GET", ["pulls", n, "reviews", id, "comments"]) => {
            list_review_comments(w, r, req, number(n)?, number(id)?)
        }
        ("DELETE", ["pulls", "comments", id]) => delete_review_comment(w, r, number(id)?),
        ("GET", ["issues", "comments", id]) => {
            let id = number(id)?;
            Ok(reply(200, find_comment(w, r, id)?.clone()))
        }
        ("PATCH", ["issues", "comments", id]) => update_comment(w, r, number(id)?, b),
        ("POST", ["issues", "comments", id, "reactions"]) => add_reaction(w, r, number(id)?, b),
        ("GET", ["issues", n, "comments"]) => list_comments(w, r, req, number(n)?),
        ("POST", ["issues", n, "comments"]) => create_comment(w, r, number(n)?, b),
        ("POST", ["check-runs"]) => create_check_run(w, r, b),
        ("PATCH", ["check-runs", id]) => update_check_run(w, r, number(id)?, b),
        ("GET", ["check-runs", id]) => {
            let id = number(id)?;
            let run = w
                .repo(&r.full)
                .check_runs
                .iter()
                .find(|c| c["id"] == json!(id))
                .cloned();
            run.map(|c| reply(200, c)).ok_or_else(not_found)
        }
        ("GET", ["commits", git_ref @ .., "check-runs"]) if !git_ref.is_empty() => {
            list_check_runs(w, r, req, &git_ref.join("/"))
        }
        ("GET", ["collaborators", user, "permission"]) => {
            let p = w
                .user_permissions
                .get(*user)
                .cloned()
                .unwrap_or_else(|| "read".into());
            // As GitHub answers: `permission` is the legacy level (maintain
            // reads as write, triage as read); `role_name` is the role.
            let legacy = match p.as_str() {
                "maintain" => "write",
                "triage" => "read",
                other => other,
            };
            Ok(reply(
                200,
                json!({ "permission": legacy, "role_name": p, "user": { "login": user, "type": "User" } }),
            ))
        }
        ("GET", ["contents", path @ ..]) if !path.is_empty() => {
            get_contents(r, req, &path.join("/"))
        }
        _ => {
            ctx.unhandled = true;
            Err(not_found())
        }
    }
}

// ---------------------------------------------------------------------------
// Auth
// ---------------------------------------------------------------------------

/// Checks an App JWT's issuer, as GitHub does before anything else.
fn app_jwt_issuer(req: &Req, registered: &[u64]) -> Result<(), Reply> {
    let undecodable = || msg(401, "A JSON web token could not be decoded");
    let jwt = req
        .auth
        .as_deref()
        .and_then(|a| a.strip_prefix("Bearer "))
        .ok_or_else(undecodable)?;
    let claims = jwt.split('.').nth(1).ok_or_else(undecodable)?;
    let claims: Value = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(claims)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or_else(undecodable)?;
    let iss = match &claims["iss"] {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        _ => return Err(undecodable()),
    };
    if iss != APP_ID.to_string() && !registered.iter().any(|id| iss == id.to_string()) {
        return Err(msg(401, "Integration not found"));
    }
    Ok(())
}

fn access_token(w: &mut World, req: &Req) -> Res {
    let jwt = req
        .auth
        .as_deref()
        .and_then(|a| {
            a.strip_prefix("Bearer ")
                .or_else(|| a.strip_prefix("bearer "))
        })
        .map(str::trim)
        .unwrap_or("");
    if jwt.is_empty() {
        return Err(msg(401, "A JSON web token could not be decoded"));
    }
    let body = &req.body;
    let repositories = match body.get("repositories") {
        None | Some(Value::Null) => None,
        Some(Value::Array(items)) => Some(
            items
                .iter()
                .map(|v| {
                    v.as_str()
                        .map(str::to_owned)
                        .ok_or_else(|| invalid_type("repositories", v, "a string"))
                })
                .collect::<Result<Vec<String>, Reply>>()?,
        ),
        Some(other) => return Err(invalid_type("repositories", other, "an array")),
    };
    let requested = match body.get("permissions") {
        None | Some(Value::Null) => None,
        Some(Value::Object(map)) => {
            let mut p = Permissions::new();
            for (k, v) in map {
                let Some(l) = v.as_str() else {
                    return Err(invalid_type("permissions", v, "a string"));
                };
                p.insert(k.clone(), l.to_owned());
            }
            Some(p)
        }
        Some(other) => return Err(invalid_type("permissions", other, "an object")),
    };
    if let Some(asked) = &requested {
        for (k, l) in asked {
            let granted = level(w.grant.get(k).map(String::as_str));
            let wanted = level(Some(l.as_str()));
            if wanted == 0 || wanted > granted {
                return Err(msg(
                    422,
                    "The permissions requested are not granted to this installation.",
                ));
            }
        }
    }
    let token = format!("ghs_{}", uuid::Uuid::new_v4().simple());
    let shown = requested.clone().unwrap_or_else(|| w.grant.clone());
    w.tokens.insert(
        token.clone(),
        Token {
            permissions: requested.clone(),
            repositories: repositories.clone(),
        },
    );
    let selection = if repositories.is_some() {
        "selected"
    } else {
        "all"
    };
    w.issued.push((requested, repositories));
    let expires = (chrono::Utc::now() + chrono::Duration::hours(1))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    Ok(reply(
        201,
        json!({
            "token": token,
            "expires_at": expires,
            "permissions": shown,
            "repository_selection": selection,
        }),
    ))
}

// ---------------------------------------------------------------------------
// Git Data (real git)
// ---------------------------------------------------------------------------

fn create_blob(r: &RepoCtx, body: &Value) -> Res {
    r.exists()?;
    need(&r.perms, &["contents"])?;
    let content = req_str(body, "content")?;
    let bytes = match opt_str(body, "encoding")?.unwrap_or("utf-8") {
        "utf-8" | "utf8" => content.as_bytes().to_vec(),
        "base64" => {
            let clean: String = content.chars().filter(|c| !c.is_whitespace()).collect();
            base64::engine::general_purpose::STANDARD
                .decode(clean)
                .map_err(|_| msg(422, "content is not valid Base64"))?
        }
        other => {
            return Err(msg(
                422,
                &format!(
                    "Invalid request.\n\nencoding `{other}` is not supported (utf-8 or base64)."
                ),
            ));
        }
    };
    let sha = try_git(
        &r.bare,
        &["hash-object", "-w", "--stdin"],
        Some(bytes.as_slice()),
        &[],
    )
    .map_err(internal)?;
    Ok(reply(
        201,
        json!({ "sha": sha, "url": r.api(&format!("git/blobs/{sha}")) }),
    ))
}

enum TreeAction {
    Delete,
    Sha(String),
    Content(String),
}

struct TreeEdit {
    path: String,
    mode: String,
    kind: String,
    action: TreeAction,
}

fn valid_tree_path(p: &str) -> bool {
    !p.is_empty()
        && !p.contains('\0')
        && p.split('/').all(|s| !s.is_empty() && s != "." && s != "..")
}

fn parse_tree_entry(r: &RepoCtx, e: &Value) -> Result<TreeEdit, Reply> {
    if !e.is_object() {
        return Err(invalid_type("tree", e, "an object"));
    }
    let path = req_str(e, "path")?;
    if !valid_tree_path(path) {
        return Err(msg(
            422,
            &format!("tree.path `{path}` contains a malformed path component"),
        ));
    }
    let mode = req_str(e, "mode")?;
    if !TREE_MODES.contains(&mode) {
        return Err(msg(422, &format!("tree.mode `{mode}` is not a valid mode")));
    }
    let expected = match mode {
        "040000" => "tree",
        "160000" => "commit",
        _ => "blob",
    };
    let kind = opt_str(e, "type")?.unwrap_or(expected);
    if !["blob", "tree", "commit"].contains(&kind) {
        return Err(msg(
            422,
            &format!("tree.type `{kind}` is not blob, tree or commit"),
        ));
    }
    if kind != expected {
        return Err(msg(
            422,
            &format!("tree.type `{kind}` does not match tree.mode `{mode}`"),
        ));
    }
    let either = "Must supply either tree.sha or tree.content. Request will be rejected if both are present.";
    let action = match (e.get("sha"), opt_str(e, "content")?) {
        (Some(_), Some(_)) | (None, None) => return Err(msg(422, either)),
        (Some(Value::Null), None) => TreeAction::Delete,
        (Some(Value::String(s)), None) => {
            let known = if kind == "commit" {
                is_sha(s)
            } else {
                is_sha(s) && object_type(&r.bare, s).as_deref() == Some(kind)
            };
            if !known {
                return Err(msg(422, "GitRPC::BadObjectState"));
            }
            TreeAction::Sha(s.clone())
        }
        (Some(other), None) => return Err(invalid_type("sha", other, "a string")),
        (None, Some(c)) => {
            if kind != "blob" {
                return Err(msg(422, "tree.content can only be given for a blob"));
            }
            TreeAction::Content(c.to_owned())
        }
    };
    Ok(TreeEdit {
        path: path.to_owned(),
        mode: mode.to_owned(),
        kind: kind.to_owned(),
        action,
    })
}

/// Builds the tree in a temporary index (`GIT_INDEX_FILE`), fed through
/// `update-index --index-info`, which works in a bare repository.
fn create_tree(r: &RepoCtx, body: &Value) -> Res {
    r.exists()?;
    need(&r.perms, &["contents"])?;
    let base = opt_str(body, "base_tree")?;
    let entries = match body.get("tree") {
        Some(Value::Array(a)) => a,
        None | Some(Value::Null) => return Err(missing("tree")),
        Some(other) => return Err(invalid_type("tree", other, "an array")),
    };
    if let Some(b) = base
        && !(is_sha(b) && object_type(&r.bare, b).as_deref() == Some("tree"))
    {
        return Err(msg(422, "GitRPC::BadObjectState"));
    }
    let edits = entries
        .iter()
        .map(|e| parse_tree_entry(r, e))
        .collect::<Result<Vec<_>, _>>()?;

    let tmp = tempfile::tempdir().map_err(|e| internal(e.to_string()))?;
    let index = tmp.path().join("index").to_string_lossy().into_owned();
    let env = [
        ("GIT_INDEX_FILE", index.as_str()),
        ("GIT_LITERAL_PATHSPECS", "1"),
    ];
    // Untrimmed output: `-z` listings must keep every byte of a path.
    let git = |args: &[&str], stdin: Option<&[u8]>| -> Result<String, Reply> {
        git_bytes(&r.bare, args, stdin, &env)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .map_err(internal)
    };
    match base {
        Some(b) => git(&["read-tree", b], None)?,
        None => git(&["read-tree", "--empty"], None)?,
    };
    for e in &edits {
        let mut lines = String::new();
        // A deleted path or a replaced directory: drop what is there first.
        if matches!(e.action, TreeAction::Delete) || e.kind == "tree" {
            let listed = git(&["ls-files", "-z", "--", e.path.as_str()], None)?;
            for p in listed.split('\0').filter(|p| !p.is_empty()) {
                lines.push_str(&format!("0 {ZERO_SHA}\t{p}\0"));
            }
        }
        match &e.action {
            TreeAction::Delete => {}
            TreeAction::Content(c) => {
                let sha = git(&["hash-object", "-w", "--stdin"], Some(c.as_bytes()))?;
                lines.push_str(&format!("{} {}\t{}\0", e.mode, sha.trim(), e.path));
            }
            TreeAction::Sha(sha) if e.kind == "tree" => {
                let listed = git(&["ls-tree", "-r", "-z", sha.as_str()], None)?;
                for item in listed.split('\0').filter(|l| !l.is_empty()) {
                    let Some((meta, sub)) = item.split_once('\t') else {
                        continue;
                    };
                    let meta: Vec<&str> = meta.split(' ').collect();
                    if let [m, _, s] = meta.as_slice() {
                        lines.push_str(&format!("{m} {s}\t{}/{sub}\0", e.path));
                    }
                }
            }
            TreeAction::Sha(sha) => lines.push_str(&format!("{} {sha}\t{}\0", e.mode, e.path)),
        }
        if !lines.is_empty() {
            git(
                &["update-index", "--add", "--replace", "-z", "--index-info"],
                Some(lines.as_bytes()),
            )?;
        }
    }
    let sha = git(&["write-tree"], None)?.trim().to_owned();
    let listed = git(&["ls-tree", "-z", sha.as_str()], None)?;
    let tree: Vec<Value> = listed
        .split('\0')
        .filter_map(|item| {
            let (meta, path) = item.split_once('\t')?;
            let meta: Vec<&str> = meta.split(' ').collect();
            let [mode, kind, s] = meta.as_slice() else {
                return None;
            };
            let url = r.api(&format!("git/{kind}s/{s}"));
            Some(json!({ "path": path, "mode": mode, "type": kind, "sha": s, "url": url }))
        })
        .collect();
    Ok(reply(
        201,
        json!({ "sha": sha, "url": r.api(&format!("git/trees/{sha}")), "truncated": false, "tree": tree }),
    ))
}

fn person(body: &Value, key: &str) -> Result<Option<Person>, Reply> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v @ Value::Object(_)) => Ok(Some(Person {
            name: req_str(v, "name")?.to_owned(),
            email: req_str(v, "email")?.to_owned(),
            date: opt_str(v, "date")?.map(str::to_owned),
        })),
        Some(other) => Err(invalid_type(key, other, "an object")),
    }
}

fn commit_json(r: &RepoCtx, c: &CommitInfo) -> Value {
    let parents: Vec<Value> = c
        .parents
        .iter()
        .map(|p| {
            json!({
                "sha": p,
                "url": r.api(&format!("git/commits/{p}")),
                "html_url": format!("https://github.com/{}/commit/{p}", r.full),
            })
        })
        .collect();
    let verified = c.committer.email == BOT_EMAIL && c.author.email == BOT_EMAIL;
    json!({
        "sha": c.sha,
        "node_id": format!("C_{}", &c.sha[..12.min(c.sha.len())]),
        "url": r.api(&format!("git/commits/{}", c.sha)),
        "html_url": format!("https://github.com/{}/commit/{}", r.full, c.sha),
        "message": c.message,
        "tree": { "sha": c.tree, "url": r.api(&format!("git/trees/{}", c.tree)) },
        "parents": parents,
        "author": c.author.json(),
        "committer": c.committer.json(),
        "verification": {
            "verified": verified,
            "reason": if verified { "valid" } else { "unsigned" },
            "signature": null,
            "payload": null,
        },
    })
}

fn create_commit(r: &RepoCtx, body: &Value) -> Res {
    r.exists()?;
    need(&r.perms, &["contents"])?;
    let message = req_str(body, "message")?;
    let tree = req_str(body, "tree")?;
    let parents = match body.get("parents") {
        Some(Value::Array(a)) => a,
        None | Some(Value::Null) => return Err(missing("parents")),
        Some(other) => return Err(invalid_type("parents", other, "an array")),
    };
    if !(is_sha(tree) && object_type(&r.bare, tree).as_deref() == Some("tree")) {
        return Err(msg(422, "Tree SHA does not exist"));
    }
    let mut parent_shas = Vec::new();
    for p in parents {
        let Some(s) = p.as_str() else {
            return Err(invalid_type("parents", p, "a string"));
        };
        if !(is_sha(s) && object_type(&r.bare, s).as_deref() == Some("commit")) {
            return Err(msg(
                422,
                "Parent SHA does not exist or is not a commit object",
            ));
        }
        parent_shas.push(s.to_owned());
    }
    let author = person(body, "author")?;
    let committer = person(body, "committer")?;
    let verified = author.is_none() && committer.is_none();
    // Like GitHub: the committer defaults to the author, both to the App's bot.
    let a = author.clone().unwrap_or_else(Person::bot);
    let c = committer.or(author).unwrap_or_else(Person::bot);
    let mut env: Vec<(&str, &str)> = vec![
        ("GIT_AUTHOR_NAME", a.name.as_str()),
        ("GIT_AUTHOR_EMAIL", a.email.as_str()),
        ("GIT_COMMITTER_NAME", c.name.as_str()),
        ("GIT_COMMITTER_EMAIL", c.email.as_str()),
    ];
    if let Some(d) = &a.date {
        env.push(("GIT_AUTHOR_DATE", d.as_str()));
    }
    if let Some(d) = &c.date {
        env.push(("GIT_COMMITTER_DATE", d.as_str()));
    }
    let mut args = vec!["commit-tree", tree];
    for p in &parent_shas {
        args.push("-p");
        args.push(p.as_str());
    }
    args.extend(["-F", "-"]);
    let sha = try_git(&r.bare, &args, Some(message.as_bytes()), &env).map_err(|e| msg(422, &e))?;
    let info =
        read_commit(&r.bare, &sha).ok_or_else(|| internal(format!("commit {sha} unreadable")))?;
    let mut v = commit_json(r, &info);
    v["message"] = json!(message);
    v["verification"] = json!({
        "verified": verified,
        "reason": if verified { "valid" } else { "unsigned" },
        "signature": null,
        "payload": null,
    });
    Ok(reply(201, v))
}

fn get_commit(r: &RepoCtx, sha: &str) -> Res {
    r.exists()?;
    if !sha.bytes().all(|b| b.is_ascii_hexdigit()) || sha.len() < 4 {
        return Err(not_found());
    }
    let info = read_commit(&r.bare, sha).ok_or_else(not_found)?;
    Ok(reply(200, commit_json(r, &info)))
}

fn ref_json(r: &RepoCtx, full_ref: &str, sha: &str) -> Value {
    let kind = object_type(&r.bare, sha).unwrap_or_else(|| "commit".into());
    let tail = full_ref.strip_prefix("refs/").unwrap_or(full_ref);
    json!({
        "ref": full_ref,
        "node_id": format!("REF_{tail}"),
        "url": r.api(&format!("git/refs/{tail}")),
        "object": { "sha": sha, "type": kind, "url": r.api(&format!("git/{kind}s/{sha}")) },
    })
}

fn get_ref(r: &RepoCtx, refname: &str) -> Res {
    r.exists()?;
    let full = format!("refs/{refname}");
    let sha = resolve_ref(&r.bare, &full).ok_or_else(not_found)?;
    Ok(reply(200, ref_json(r, &full, &sha)))
}

/// GitHub refuses an App without `workflows: write` any ref change that
/// touches `.github/workflows/` (compared with `old`, or for a new ref the
/// commit's first parent; a root commit's whole tree).
fn workflow_check(r: &RepoCtx, old: Option<&str>, new: &str) -> Result<(), Reply> {
    if level(r.perms.get("workflows").map(String::as_str)) >= 2 {
        return Ok(());
    }
    let changed = match old {
        Some(old) => try_git(
            &r.bare,
            &[
                "diff",
                "--name-only",
                "--no-renames",
                old,
                new,
                "--",
                ".github/workflows",
            ],
            None,
            &[],
        ),
        None => try_git(
            &r.bare,
            &[
                "ls-tree",
                "-r",
                "--name-only",
                new,
                "--",
                ".github/workflows",
            ],
            None,
            &[],
        ),
    }
    .map_err(internal)?;
    match changed.lines().find(|l| !l.is_empty()) {
        Some(path) => Err(msg(
            422,
            &format!(
                "refusing to allow a GitHub App to create or update workflow `{path}` without `workflows` permission"
            ),
        )),
        None => Ok(()),
    }
}

fn create_ref(r: &RepoCtx, body: &Value) -> Res {
    r.exists()?;
    need(&r.perms, &["contents"])?;
    let refname = req_str(body, "ref")?;
    let sha = req_str(body, "sha")?;
    if !refname.starts_with("refs/") || refname.matches('/').count() < 2 {
        return Err(msg(
            422,
            "Reference name must start with 'refs/' and have at least two slashes.",
        ));
    }
    if !valid_ref(&r.bare, refname) {
        return Err(msg(422, &format!("{refname} is not a valid ref name.")));
    }
    let commit = if is_sha(sha) {
        read_commit(&r.bare, sha)
    } else {
        None
    };
    let Some(commit) = commit.filter(|c| c.sha == sha) else {
        return Err(msg(422, "Object does not exist"));
    };
    if resolve_ref(&r.bare, refname).is_some() {
        return Err(msg(422, "Reference already exists"));
    }
    workflow_check(r, commit.parents.first().map(String::as_str), sha)?;
    try_git(&r.bare, &["update-ref", refname, sha, ""], None, &[])
        .map_err(|_| msg(422, "Reference already exists"))?;
    Ok(reply(201, ref_json(r, refname, sha)))
}

fn update_ref(w: &mut World, r: &RepoCtx, refname: &str, body: &Value) -> Res {
    r.exists()?;
    need(&r.perms, &["contents"])?;
    let sha = req_str(body, "sha")?;
    let force = opt_bool(body, "force")?.unwrap_or(false);
    let full = format!("refs/{refname}");
    let Some(current) = resolve_ref(&r.bare, &full) else {
        return Err(msg(422, "Reference does not exist"));
    };
    if !(is_sha(sha) && object_type(&r.bare, sha).as_deref() == Some("commit")) {
        return Err(msg(422, "Object does not exist"));
    }
    let branch = refname.strip_prefix("heads/");
    if let Some(b) = branch
        && w.repo(&r.full).protected.contains(b)
    {
        return Err(msg(
            422,
            &format!("Protected branch update failed for {full}."),
        ));
    }
    if !force && !is_ancestor(&r.bare, &current, sha) {
        return Err(msg(422, "Update is not a fast forward"));
    }
    workflow_check(r, Some(&current), sha)?;
    try_git(&r.bare, &["update-ref", &full, sha, &current], None, &[])
        .map_err(|e| msg(422, &format!("Reference cannot be updated: {e}")))?;
    // Like GitHub: open PRs from this branch now have the new head.
    if let Some(b) = branch {
        for p in w.repo(&r.full).pulls.values_mut() {
            if p.state == "open" && p.head_ref == b && p.head_repo == r.full {
                p.head_sha = sha.to_owned();
            }
        }
    }
    Ok(reply(200, ref_json(r, &full, sha)))
}

fn get_branch(w: &mut World, r: &RepoCtx, branch: &str) -> Res {
    r.exists()?;
    let sha = resolve_ref(&r.bare, &format!("refs/heads/{branch}")).ok_or_else(not_found)?;
    let protected = w.repo(&r.full).protected.contains(branch);
    Ok(reply(
        200,
        json!({
            "name": branch,
            "commit": { "sha": sha, "url": r.api(&format!("commits/{sha}")) },
            "protected": protected,
        }),
    ))
}

fn get_contents(r: &RepoCtx, req: &Req, path: &str) -> Res {
    r.exists()?;
    let rev = req.query("ref").unwrap_or("HEAD");
    if rev.starts_with('-') {
        return Err(not_found());
    }
    let sha = try_git(
        &r.bare,
        &["rev-parse", "--verify", "--quiet", &format!("{rev}:{path}")],
        None,
        &[],
    )
    .ok()
    .filter(|s| is_sha(s))
    .ok_or_else(not_found)?;
    if object_type(&r.bare, &sha).as_deref() != Some("blob") {
        return Err(not_found());
    }
    let bytes = git_bytes(&r.bare, &["cat-file", "blob", &sha], None, &[]).map_err(internal)?;
    if req.accept.as_deref().is_some_and(|a| a.contains("raw")) {
        return Ok(Reply {
            status: 200,
            payload: Payload::Raw(bytes),
            link: None,
            location: None,
        });
    }
    // GitHub wraps the Base64 at 60 columns.
    let encoded = base64::engine::general_purpose::STANDARD.encode(&bytes);
    let wrapped: Vec<String> = encoded
        .as_bytes()
        .chunks(60)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect();
    let name = path.rsplit('/').next().unwrap_or(path);
    let content = wrapped.join("\n") + "\n";
    Ok(reply(
        200,
        json!({
            "type": "file",
            "encoding": "base64",
            "size": bytes.len(),
            "name": name,
            "path": path,
            "sha": sha,
            "content": content,
            "url": r.api(&format!("contents/{path}")),
        }),
    ))
}

// ---------------------------------------------------------------------------
// Pull requests and reviews
// ---------------------------------------------------------------------------

fn pull_json(api: &str, full: &str, p: &Pull) -> Value {
    let head_owner = p.head_repo.split('/').next().unwrap_or("");
    let owner = full.split('/').next().unwrap_or("");
    json!({
        "id": p.id,
        "node_id": format!("PR_{}", p.id),
        "number": p.number,
        "url": format!("{api}/repos/{full}/pulls/{}", p.number),
        "html_url": format!("https://github.com/{full}/pull/{}", p.number),
        "state": p.state,
        "draft": p.draft,
        "locked": false,
        "merged": false,
        "title": p.title,
        "body": p.body,
        "maintainer_can_modify": p.maintainer_can_modify,
        "head": {
            "ref": p.head_ref,
            "sha": p.head_sha,
            "label": format!("{head_owner}:{}", p.head_ref),
            "user": { "login": head_owner },
            "repo": { "full_name": p.head_repo, "owner": { "login": head_owner } },
        },
        "base": {
            "ref": p.base_ref,
            "sha": p.base_sha,
            "label": format!("{owner}:{}", p.base_ref),
            "user": { "login": owner },
            "repo": { "full_name": full, "owner": { "login": owner } },
        },
        "user": p.user,
    })
}

fn list_pulls(w: &mut World, r: &RepoCtx, req: &Req) -> Res {
    let state = req.query("state").unwrap_or("open");
    if !matches!(state, "open" | "closed" | "all") {
        return Err(validation(
            json!([{ "resource": "PullRequest", "field": "state", "code": "invalid" }]),
        ));
    }
    let head = req.query("head");
    let base = req.query("base");
    // Newest first, as GitHub sorts by default.
    let found: Vec<Value> = w
        .repo(&r.full)
        .pulls
        .values()
        .rev()
        .filter(|p| state == "all" || p.state == state)
        .filter(|p| base.is_none_or(|b| p.base_ref == b))
        .filter(|p| {
            head.is_none_or(|h| {
                let owner = p.head_repo.split('/').next().unwrap_or("");
                match h.split_once(':') {
                    Some((o, b)) => o == owner && p.head_ref == b,
                    None => p.head_ref == h,
                }
            })
        })
        .map(|p| pull_json(&r.base_url, &r.full, p))
        .collect();
    Ok(paginate(req, &r.base_url, found))
}

fn create_pull(w: &mut World, r: &RepoCtx, body: &Value) -> Res {
    r.exists()?;
    need(&r.perms, &["pull_requests"])?;
    let title = req_str(body, "title")?;
    let head = req_str(body, "head")?;
    let base = req_str(body, "base")?;
    let text = opt_str(body, "body")?;
    let draft = opt_bool(body, "draft")?.unwrap_or(false);
    let can_modify = opt_bool(body, "maintainer_can_modify")?.unwrap_or(false);
    let invalid = |field: &str| {
        validation(json!([{ "resource": "PullRequest", "field": field, "code": "invalid" }]))
    };
    let head_branch = match head.split_once(':') {
        Some((owner, b)) if owner == r.owner => b,
        Some(_) => return Err(invalid("head")),
        None => head,
    };
    let head_sha = resolve_ref(&r.bare, &format!("refs/heads/{head_branch}"))
        .ok_or_else(|| invalid("head"))?;
    let base_sha =
        resolve_ref(&r.bare, &format!("refs/heads/{base}")).ok_or_else(|| invalid("base"))?;
    let custom = |message: String| {
        validation(json!([{ "resource": "PullRequest", "code": "custom", "message": message }]))
    };
    if head_branch == base || is_ancestor(&r.bare, &head_sha, &base_sha) {
        return Err(custom(format!(
            "No commits between {base} and {head_branch}"
        )));
    }
    if text.is_some_and(too_long) {
        return Err(custom(
            "body is too long (maximum is 65536 characters)".into(),
        ));
    }
    let id = w.id();
    let st = w.repo(&r.full);
    if st.pulls.values().any(|p| {
        p.state == "open"
            && p.head_ref == head_branch
            && p.base_ref == base
            && p.head_repo == r.full
    }) {
        return Err(custom(format!(
            "A pull request already exists for {}:{head_branch}.",
            r.owner
        )));
    }
    if draft && !st.drafts_supported {
        return Err(msg(
            422,
            "Draft pull requests are not supported in this repository.",
        ));
    }
    let number = st.take_number();
    let pull = Pull {
        number,
        id,
        title: title.to_owned(),
        body: text.map(str::to_owned),
        draft,
        state: "open".into(),
        head_ref: head_branch.to_owned(),
        head_sha,
        base_ref: base.to_owned(),
        base_sha,
        head_repo: r.full.clone(),
        maintainer_can_modify: can_modify,
        user: bot_user(),
    };
    let v = pull_json(&r.base_url, &r.full, &pull);
    st.pulls.insert(number, pull);
    Ok(reply(201, v))
}

/// A review as the API shows it (without the fake's `comments` and `event`).
fn review_api_json(v: &Value) -> Value {
    let mut v = v.clone();
    if let Some(o) = v.as_object_mut() {
        o.remove("comments");
        o.remove("event");
    }
    v
}

/// `PUT /repos/{o}/{r}/pulls/{n}/reviews/{id}`: a new `body` (required);
/// the review's state and comments stay.
fn update_review(w: &mut World, r: &RepoCtx, n: u64, id: u64, b: &Value) -> Res {
    let body = b
        .get("body")
        .and_then(Value::as_str)
        .ok_or_else(|| unprocessable("`body` is required"))?
        .to_owned();
    let review = w
        .repo(&r.full)
        .reviews
        .iter_mut()
        .find(|(num, v)| *num == n && v["id"] == json!(id))
        .map(|(_, v)| v)
        .ok_or_else(not_found)?;
    review["body"] = json!(body);
    Ok(reply(200, review_api_json(review)))
}

/// `GET /repos/{o}/{r}/pulls/{n}/reviews/{id}/comments`.
fn list_review_comments(w: &mut World, r: &RepoCtx, req: &Req, n: u64, id: u64) -> Res {
    let comments = w
        .repo(&r.full)
        .reviews
        .iter()
        .find(|(num, v)| *num == n && v["id"] == json!(id))
        .map(|(_, v)| v["comments"].as_array().cloned().unwrap_or_default())
        .ok_or_else(not_found)?;
    let listed = comments
        .into_iter()
        .map(|mut c| {
            c["pull_request_review_id"] = json!(id);
            c
        })
        .collect();
    Ok(paginate(req, &r.base_url, listed))
}

/// `DELETE /repos/{o}/{r}/pulls/comments/{id}`: 204, or 404 when no
/// review holds it.
fn delete_review_comment(w: &mut World, r: &RepoCtx, id: u64) -> Res {
    for (_, review) in w.repo(&r.full).reviews.iter_mut() {
        if let Some(list) = review["comments"].as_array_mut()
            && let Some(pos) = list.iter().position(|c| c["id"] == json!(id))
        {
            list.remove(pos);
            return Ok(Reply {
                status: 204,
                payload: Payload::Raw(Vec::new()),
                link: None,
                location: None,
            });
        }
    }
    Err(not_found())
}

fn list_reviews(w: &mut World, r: &RepoCtx, req: &Req, n: u64) -> Res {
    let st = w.repo(&r.full);
    if !st.pulls.contains_key(&n) {
        return Err(not_found());
    }
    let found: Vec<Value> = st
        .reviews
        .iter()
        .filter(|(num, _)| *num == n)
        .map(|(_, v)| review_api_json(v))
        .collect();
    Ok(paginate(req, &r.base_url, found))
}

/// `GET /repos/{o}/{r}/pulls/{n}/files`: each file of the PR's three-dot
/// diff with its unified `patch` (one page; enough for tests).
fn list_pull_files(w: &mut World, r: &RepoCtx, n: u64) -> Res {
    let pull = w
        .repo(&r.full)
        .pulls
        .get(&n)
        .cloned()
        .ok_or_else(not_found)?;
    let base = try_git(
        &r.bare,
        &["merge-base", &pull.base_sha, &pull.head_sha],
        None,
        &[],
    )
    .ok()
    .filter(|s| is_sha(s))
    .unwrap_or_else(|| pull.base_sha.clone());
    let names = try_git(
        &r.bare,
        &["diff", "--name-only", "--no-renames", &base, &pull.head_sha],
        None,
        &[],
    )
    .map_err(internal)?;
    let mut files = Vec::new();
    for name in names.lines().filter(|l| !l.is_empty()) {
        let diff = try_git(
            &r.bare,
            &[
                "diff",
                "--no-color",
                "-U3",
                "--no-renames",
                &base,
                &pull.head_sha,
                "--",
                name,
            ],
            None,
            &[],
        )
        .map_err(internal)?;
        // GitHub's `patch` starts at the first hunk header.
        let patch = diff
            .find("@@")
            .map(|at| diff[at..].to_owned())
            .unwrap_or_default();
        files.push(json!({ "filename": name, "status": "modified", "patch": patch }));
    }
    Ok(reply(200, Value::Array(files)))
}

fn create_review(w: &mut World, r: &RepoCtx, n: u64, body: &Value) -> Res {
    need(&r.perms, &["pull_requests"])?;
    let pull = w
        .repo(&r.full)
        .pulls
        .get(&n)
        .cloned()
        .ok_or_else(not_found)?;
    let text = opt_str(body, "body")?.unwrap_or("");
    let event = opt_str(body, "event")?;
    let state = match event {
        None => "PENDING",
        Some("COMMENT") => "COMMENTED",
        Some("APPROVE") => "APPROVED",
        Some("REQUEST_CHANGES") => "CHANGES_REQUESTED",
        Some(other) => return Err(unprocessable(&format!("Unknown review event `{other}`"))),
    };
    let comments: Vec<Value> = match body.get("comments") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) => a.clone(),
        Some(other) => return Err(invalid_type("comments", other, "an array")),
    };
    if matches!(event, Some("COMMENT" | "REQUEST_CHANGES"))
        && text.trim().is_empty()
        && comments.is_empty()
    {
        return Err(unprocessable(
            "Body is required when using REQUEST_CHANGES or COMMENT events",
        ));
    }
    if too_long(text) {
        return Err(unprocessable(
            "Body is too long (maximum is 65536 characters)",
        ));
    }
    let commit = match opt_str(body, "commit_id")? {
        Some(c) => {
            if !(is_sha(c) && read_commit(&r.bare, c).is_some()) {
                return Err(unprocessable("Commit could not be resolved"));
            }
            c.to_owned()
        }
        None => pull.head_sha.clone(),
    };
    // The PR's diff is against the merge base (GitHub's three-dot diff).
    let base = try_git(&r.bare, &["merge-base", &pull.base_sha, &commit], None, &[])
        .ok()
        .filter(|s| is_sha(s))
        .unwrap_or_else(|| pull.base_sha.clone());
    let mut hunks: HashMap<String, Vec<Hunk>> = HashMap::new();
    let mut stored = Vec::new();
    for c in &comments {
        let path = req_str(c, "path")?;
        let comment_body = req_str(c, "body")?;
        if too_long(comment_body) {
            return Err(unprocessable(
                "Body is too long (maximum is 65536 characters)",
            ));
        }
        let line = opt_u64(c, "line")?;
        let start_line = opt_u64(c, "start_line")?;
        let position = opt_u64(c, "position")?;
        let side = opt_str(c, "side")?.unwrap_or("RIGHT");
        let start_side = opt_str(c, "start_side")?.unwrap_or(side);
        for s in [side, start_side] {
            if s != "LEFT" && s != "RIGHT" {
                return Err(unprocessable(&format!("side `{s}` is not LEFT or RIGHT")));
            }
        }
        let resolved = match (line, position) {
            (Some(line), _) => {
                let h = hunks
                    .entry(path.to_owned())
                    .or_insert_with(|| diff_hunks(&r.bare, &base, &commit, path));
                match (hunk_index(h, side, line), start_line) {
                    (None, _) => false,
                    (Some(_), None) => true,
                    (Some(end), Some(start)) => {
                        start < line && hunk_index(h, start_side, start) == Some(end)
                    }
                }
            }
            // The deprecated diff position: taken as given.
            (None, Some(_)) => true,
            (None, None) => opt_str(c, "subject_type")? == Some("file"),
        };
        if !resolved {
            return Err(unprocessable("Line could not be resolved"));
        }
        let mut saved = c.clone();
        saved["id"] = json!(w.id());
        stored.push(saved);
    }
    let id = w.id();
    let review = json!({
        "id": id,
        "node_id": format!("PRR_{id}"),
        "user": bot_user(),
        "body": text,
        "state": state,
        "commit_id": commit,
        "html_url": format!("https://github.com/{}/pull/{n}#pullrequestreview-{id}", r.full),
        "pull_request_url": r.api(&format!("pulls/{n}")),
        "submitted_at": now(),
        "event": event,
        "comments": stored,
    });
    w.repo(&r.full).reviews.push((n, review.clone()));
    Ok(reply(200, review_api_json(&review)))
}

// ---------------------------------------------------------------------------
// Issue comments and reactions
// ---------------------------------------------------------------------------

fn comment_json(api: &str, full: &str, number: u64, id: u64, body: &str, user: Value) -> Value {
    let now = now();
    json!({
        "id": id,
        "node_id": format!("IC_{id}"),
        "url": format!("{api}/repos/{full}/issues/comments/{id}"),
        "html_url": format!("https://github.com/{full}/issues/{number}#issuecomment-{id}"),
        "issue_url": format!("{api}/repos/{full}/issues/{number}"),
        "body": body,
        "user": user,
        "created_at": now,
        "updated_at": now,
        "author_association": "NONE",
    })
}

fn comment_too_long() -> Reply {
    validation(json!([{
        "resource": "IssueComment",
        "code": "custom",
        "field": "body",
        "message": "body is too long (maximum is 65536 characters)",
    }]))
}

fn create_comment(w: &mut World, r: &RepoCtx, n: u64, body: &Value) -> Res {
    need(&r.perms, &["issues", "pull_requests"])?;
    let text = req_str(body, "body")?;
    if too_long(text) {
        return Err(comment_too_long());
    }
    let id = w.id();
    let st = w.repo(&r.full);
    if !st.numbers.contains(&n) {
        return Err(not_found());
    }
    let mut comment = comment_json(&r.base_url, &r.full, n, id, text, bot_user());
    // As GitHub marks what an App's installation token wrote.
    comment["performed_via_github_app"] =
        json!({ "id": APP_ID, "slug": "taskmaster-test", "name": "taskmaster-test" });
    st.comments.push((n, comment.clone()));
    Ok(reply(201, comment))
}

fn list_comments(w: &mut World, r: &RepoCtx, req: &Req, n: u64) -> Res {
    let st = w.repo(&r.full);
    if !st.numbers.contains(&n) {
        return Err(not_found());
    }
    let found: Vec<Value> = st
        .comments
        .iter()
        .filter(|(num, _)| *num == n)
        .map(|(_, v)| v.clone())
        .collect();
    Ok(paginate(req, &r.base_url, found))
}

fn find_comment<'a>(w: &'a mut World, r: &RepoCtx, id: u64) -> Result<&'a mut Value, Reply> {
    w.repo(&r.full)
        .comments
        .iter_mut()
        .map(|(_, v)| v)
        .find(|v| v["id"] == json!(id))
        .ok_or_else(not_found)
}

fn update_comment(w: &mut World, r: &RepoCtx, id: u64, body: &Value) -> Res {
    need(&r.perms, &["issues", "pull_requests"])?;
    let text = req_str(body, "body")?;
    if too_long(text) {
        return Err(comment_too_long());
    }
    let comment = find_comment(w, r, id)?;
    comment["body"] = json!(text);
    comment["updated_at"] = json!(now());
    Ok(reply(200, comment.clone()))
}

fn add_reaction(w: &mut World, r: &RepoCtx, comment_id: u64, body: &Value) -> Res {
    need(&r.perms, &["issues", "pull_requests"])?;
    let content = req_str(body, "content")?;
    if !REACTIONS.contains(&content) {
        return Err(validation(
            json!([{ "resource": "Reaction", "field": "content", "code": "invalid" }]),
        ));
    }
    find_comment(w, r, comment_id)?;
    let id = w.id();
    let st = w.repo(&r.full);
    // The same reaction twice: GitHub answers 200 with the first.
    if let Some((_, existing)) = st
        .reactions
        .iter()
        .find(|(c, v)| *c == comment_id && v["content"] == content)
    {
        return Ok(reply(200, existing.clone()));
    }
    let reaction = json!({ "id": id, "node_id": format!("REA_{id}"), "content": content, "user": bot_user(), "created_at": now() });
    st.reactions.push((comment_id, reaction.clone()));
    Ok(reply(201, reaction))
}

// ---------------------------------------------------------------------------
// Check runs
// ---------------------------------------------------------------------------

/// Checks the optional fields of a check-run create or update.
fn validate_check_fields(body: &Value) -> Result<(), Reply> {
    for key in ["external_id", "details_url", "started_at", "completed_at"] {
        opt_str(body, key)?;
    }
    if let Some(s) = opt_str(body, "status")?
        && !["queued", "in_progress", "completed"].contains(&s)
    {
        return Err(validation(
            json!([{ "resource": "CheckRun", "field": "status", "code": "invalid" }]),
        ));
    }
    if let Some(c) = opt_str(body, "conclusion")?
        && !CONCLUSIONS.contains(&c)
    {
        return Err(validation(
            json!([{ "resource": "CheckRun", "field": "conclusion", "code": "invalid" }]),
        ));
    }
    match body.get("output") {
        None | Some(Value::Null) => {}
        Some(o @ Value::Object(_)) => {
            req_str(o, "title")?;
            let summary = req_str(o, "summary")?;
            let text = opt_str(o, "text")?.unwrap_or("");
            for s in [summary, text] {
                if s.len() > 65_535 {
                    return Err(msg(
                        422,
                        &format!(
                            "Invalid request.\n\nOnly 65535 characters are allowed; {} were supplied.",
                            s.len()
                        ),
                    ));
                }
            }
            match o.get("annotations") {
                None | Some(Value::Null) => {}
                Some(Value::Array(list)) => {
                    if list.len() > 50 {
                        return Err(msg(
                            422,
                            "Invalid request.\n\nNo more than 50 annotations are allowed per request.",
                        ));
                    }
                    for a in list {
                        req_str(a, "path")?;
                        req_str(a, "message")?;
                        opt_u64(a, "start_line")?.ok_or_else(|| missing("start_line"))?;
                        opt_u64(a, "end_line")?.ok_or_else(|| missing("end_line"))?;
                        let level = req_str(a, "annotation_level")?;
                        if !["notice", "warning", "failure"].contains(&level) {
                            return Err(validation(
                                json!([{ "resource": "CheckRun", "field": "annotation_level", "code": "invalid" }]),
                            ));
                        }
                    }
                }
                Some(other) => return Err(invalid_type("annotations", other, "an array")),
            }
        }
        Some(other) => return Err(invalid_type("output", other, "an object")),
    }
    match body.get("actions") {
        None | Some(Value::Null) => {}
        Some(Value::Array(list)) => {
            if list.len() > 3 {
                return Err(msg(
                    422,
                    "Invalid request.\n\nNo more than 3 actions are allowed.",
                ));
            }
            for a in list {
                for (key, max) in [("label", 20), ("description", 40), ("identifier", 20)] {
                    if req_str(a, key)?.chars().count() > max {
                        return Err(msg(
                            422,
                            &format!(
                                "Invalid request.\n\nactions.{key} is too long (maximum is {max})."
                            ),
                        ));
                    }
                }
            }
        }
        Some(other) => return Err(invalid_type("actions", other, "an array")),
    }
    Ok(())
}

/// Sets the given fields on `run`; annotations accumulate in `annotations`.
fn merge_check_fields(run: &mut Value, body: &Value) {
    let Some(fields) = body.as_object() else {
        return;
    };
    for (k, v) in fields {
        if k == "output" {
            let mut out = v.clone();
            let added = out
                .as_object_mut()
                .and_then(|o| o.remove("annotations"))
                .and_then(|a| a.as_array().cloned())
                .unwrap_or_default();
            if let Some(list) = run["annotations"].as_array_mut() {
                list.extend(added);
            }
            out["annotations_count"] = json!(run["annotations"].as_array().map_or(0, Vec::len));
            run["output"] = out;
        } else {
            run[k.as_str()] = v.clone();
        }
    }
    if !run["conclusion"].is_null() {
        run["status"] = json!("completed");
        if run["completed_at"].is_null() {
            run["completed_at"] = json!(now());
        }
    }
}

fn create_check_run(w: &mut World, r: &RepoCtx, body: &Value) -> Res {
    need(&r.perms, &["checks"])?;
    let name = req_str(body, "name")?;
    let head_sha = req_str(body, "head_sha")?;
    validate_check_fields(body)?;
    if r.bare.is_dir()
        && !(is_sha(head_sha) && object_type(&r.bare, head_sha).as_deref() == Some("commit"))
    {
        return Err(msg(422, &format!("No commit found for SHA: {head_sha}")));
    }
    let id = w.id();
    let mut run = json!({
        "id": id,
        "node_id": format!("CR_{id}"),
        "name": name,
        "head_sha": head_sha,
        "external_id": null,
        "status": "queued",
        "conclusion": null,
        "details_url": null,
        "started_at": now(),
        "completed_at": null,
        "output": { "title": null, "summary": null, "text": null, "annotations_count": 0 },
        "annotations": [],
        "actions": [],
        "app": { "id": APP_ID, "slug": "taskmaster-test" },
        "url": r.api(&format!("check-runs/{id}")),
        "html_url": format!("https://github.com/{}/runs/{id}", r.full),
        "pull_requests": [],
    });
    merge_check_fields(&mut run, body);
    if run["status"] == "completed" && run["conclusion"].is_null() {
        return Err(missing("conclusion"));
    }
    w.repo(&r.full).check_runs.push(run.clone());
    Ok(reply(201, run))
}

fn update_check_run(w: &mut World, r: &RepoCtx, id: u64, body: &Value) -> Res {
    need(&r.perms, &["checks"])?;
    validate_check_fields(body)?;
    let st = w.repo(&r.full);
    let run = st
        .check_runs
        .iter_mut()
        .find(|c| c["id"] == json!(id))
        .ok_or_else(not_found)?;
    let mut updated = run.clone();
    merge_check_fields(&mut updated, body);
    if updated["status"] == "completed" && updated["conclusion"].is_null() {
        return Err(missing("conclusion"));
    }
    *run = updated.clone();
    Ok(reply(200, updated))
}

fn list_check_runs(w: &mut World, r: &RepoCtx, req: &Req, git_ref: &str) -> Res {
    let sha = if is_sha(git_ref) {
        git_ref.to_owned()
    } else {
        read_commit(&r.bare, git_ref)
            .map(|c| c.sha)
            .ok_or_else(|| msg(422, &format!("No commit found for SHA: {git_ref}")))?
    };
    let name = req.query("check_name");
    let app_ok = req.query_u64("app_id").is_none_or(|a| a == APP_ID);
    let all = req.query("filter") == Some("all");
    let mut seen = BTreeSet::new();
    // Newest first; `filter=latest` (the default) keeps the newest per name.
    let found: Vec<Value> = w
        .repo(&r.full)
        .check_runs
        .iter()
        .rev()
        .filter(|c| app_ok && c["head_sha"] == sha.as_str())
        .filter(|c| name.is_none_or(|n| c["name"] == n))
        .filter(|c| all || seen.insert(c["name"].as_str().unwrap_or("").to_owned()))
        .cloned()
        .collect();
    let total = found.len();
    let page = paginate(req, &r.base_url, found);
    let Payload::Json(runs) = page.payload else {
        unreachable!("paginate answers JSON")
    };
    Ok(Reply {
        status: 200,
        payload: Payload::Json(json!({ "total_count": total, "check_runs": runs })),
        link: page.link,
        location: None,
    })
}
