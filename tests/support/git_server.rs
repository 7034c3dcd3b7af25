//! A real git server for tests: `git http-backend` (smart HTTP) behind a
//! small CGI adapter on loopback, serving bare repositories under a temporary
//! root as `/{owner}/{name}.git`.
//!
//! Like GitHub it requires an installation token as HTTP Basic
//! `x-access-token:<token>` (when one is set), serves `refs/pull/N/head` for
//! pull requests (forks included: the commit is on no branch), and lets
//! clients fetch any reachable commit by SHA. Every request is recorded
//! (path, query, whether it was authorized, bytes answered) so tests can
//! prove a second fetch moved less than the first.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use tokio::io::AsyncWriteExt;

/// One request the server answered.
#[derive(Debug, Clone)]
pub struct GitRequest {
    pub method: String,
    pub path: String,
    pub query: String,
    pub authorized: bool,
    pub status: u16,
    pub response_bytes: usize,
}

struct Inner {
    root: PathBuf,
    token: Mutex<Option<String>>,
    requests: Mutex<Vec<GitRequest>>,
    /// Held before answering each `git-upload-pack` POST (a slow server).
    pack_delay: Mutex<std::time::Duration>,
    /// `git-upload-pack` POSTs received so far (counted on arrival).
    packs_started: std::sync::atomic::AtomicUsize,
}

/// The running server.
pub struct GitServer {
    pub base_url: String,
    inner: Arc<Inner>,
    _dir: tempfile::TempDir,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for GitServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Runs git synchronously in `dir` (test set-up), panicking with its stderr on failure.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = std::process::Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_AUTHOR_NAME", "Test")
        .env("GIT_AUTHOR_EMAIL", "test@example.com")
        .env("GIT_COMMITTER_NAME", "Test")
        .env("GIT_COMMITTER_EMAIL", "test@example.com")
        .output()
        .expect("git runs");
    assert!(
        out.status.success(),
        "git {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// A repository being built: a work tree whose commits are pushed into the
/// server's bare repository.
pub struct RepoBuilder {
    pub work: PathBuf,
    pub bare: PathBuf,
}

impl RepoBuilder {
    /// Writes `files` (path, content), commits them on the current HEAD with
    /// `message`, and returns the new commit's SHA.
    pub fn commit(&self, files: &[(&str, &str)], message: &str) -> String {
        for (path, content) in files {
            let full = self.work.join(path);
            std::fs::create_dir_all(full.parent().unwrap()).unwrap();
            std::fs::write(&full, content).unwrap();
        }
        git(&self.work, &["add", "-A"]);
        git(
            &self.work,
            &["commit", "-q", "--allow-empty", "-m", message],
        );
        git(&self.work, &["rev-parse", "HEAD"])
    }

    /// Sets `refname` in the server's repository to `sha` (pushing the objects).
    pub fn push(&self, sha: &str, refname: &str) {
        git(
            &self.work,
            &[
                "push",
                "-q",
                "--force",
                self.bare.to_str().unwrap(),
                &format!("{sha}:{refname}"),
            ],
        );
    }

    /// Moves the work tree to `sha` (to build a branch from there).
    pub fn checkout(&self, sha: &str) {
        git(&self.work, &["checkout", "-q", "--detach", sha]);
    }
}

impl GitServer {
    /// Starts a server with no repositories; with `token`, every request
    /// must carry it as Basic `x-access-token:<token>`.
    pub async fn start(token: Option<&str>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("repos");
        std::fs::create_dir_all(&root).unwrap();
        let inner = Arc::new(Inner {
            root,
            token: Mutex::new(token.map(str::to_owned)),
            requests: Mutex::new(Vec::new()),
            pack_delay: Mutex::new(std::time::Duration::ZERO),
            packs_started: std::sync::atomic::AtomicUsize::new(0),
        });
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        GitServer {
            base_url: format!("http://{addr}"),
            inner,
            _dir: dir,
            task,
        }
    }

    /// Creates `owner/name` (bare, default branch `main`) and returns a
    /// builder whose work tree pushes into it.
    pub fn create_repo(&self, full_name: &str) -> RepoBuilder {
        let bare = self.inner.root.join(format!("{full_name}.git"));
        std::fs::create_dir_all(&bare).unwrap();
        git(&bare, &["init", "-q", "--bare", "--initial-branch=main"]);
        // Like GitHub: any reachable commit may be fetched by SHA.
        git(
            &bare,
            &["config", "uploadpack.allowReachableSHA1InWant", "true"],
        );
        git(&bare, &["config", "uploadpack.allowAnySHA1InWant", "true"]);
        let work = self
            .inner
            .root
            .parent()
            .unwrap()
            .join("work")
            .join(full_name);
        std::fs::create_dir_all(&work).unwrap();
        git(&work, &["init", "-q", "--initial-branch=main"]);
        RepoBuilder { work, bare }
    }

    /// The directory holding the bare repositories (`{root}/{owner}/{name}.git`).
    pub fn root(&self) -> std::path::PathBuf {
        self.inner.root.clone()
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<GitRequest> {
        self.inner.requests.lock().unwrap().clone()
    }

    /// Holds every later `git-upload-pack` answer back by `delay`.
    pub fn set_pack_delay(&self, delay: std::time::Duration) {
        *self.inner.pack_delay.lock().unwrap() = delay;
    }

    /// How many `git-upload-pack` POSTs have arrived (counted on arrival,
    /// before any delay).
    pub fn packs_started(&self) -> usize {
        self.inner
            .packs_started
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Forgets the recorded requests.
    pub fn clear_requests(&self) {
        self.inner.requests.lock().unwrap().clear();
    }
}

async fn handle(
    State(inner): State<Arc<Inner>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_owned();
    let query = uri.query().unwrap_or("").to_owned();
    let expected = inner.token.lock().unwrap().clone();
    let authorized = match &expected {
        None => true,
        Some(token) => headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Basic ")
                    .or_else(|| v.strip_prefix("basic "))
            })
            .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
            .is_some_and(|d| d == format!("x-access-token:{token}").as_bytes()),
    };
    let record = |status: u16, bytes: usize| {
        inner.requests.lock().unwrap().push(GitRequest {
            method: method.to_string(),
            path: path.clone(),
            query: query.clone(),
            authorized,
            status,
            response_bytes: bytes,
        });
    };
    if !authorized {
        record(401, 0);
        return (
            StatusCode::UNAUTHORIZED,
            [("www-authenticate", "Basic realm=\"GitHub\"")],
            "Authentication required",
        )
            .into_response();
    }
    if method == Method::POST && path.ends_with("git-upload-pack") {
        inner
            .packs_started
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let delay = *inner.pack_delay.lock().unwrap();
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
    }
    let mut cmd = tokio::process::Command::new("git");
    cmd.arg("http-backend")
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_PROJECT_ROOT", &inner.root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("REQUEST_METHOD", method.as_str())
        .env("PATH_INFO", &path)
        .env("QUERY_STRING", &query)
        .env("CONTENT_LENGTH", body.len().to_string())
        .env("REMOTE_ADDR", "127.0.0.1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(ct) = headers.get("content-type").and_then(|v| v.to_str().ok()) {
        cmd.env("CONTENT_TYPE", ct);
    }
    if let Some(enc) = headers
        .get("content-encoding")
        .and_then(|v| v.to_str().ok())
    {
        cmd.env("HTTP_CONTENT_ENCODING", enc);
    }
    if let Some(proto) = headers.get("git-protocol").and_then(|v| v.to_str().ok()) {
        cmd.env("GIT_PROTOCOL", proto);
        cmd.env("HTTP_GIT_PROTOCOL", proto);
    }
    let mut child = cmd.spawn().expect("git http-backend starts");
    let mut stdin = child.stdin.take().unwrap();
    let writer = tokio::spawn(async move {
        let _ = stdin.write_all(&body).await;
    });
    let out = child.wait_with_output().await.expect("http-backend ends");
    let _ = writer.await;
    // CGI: headers, a blank line, the body.
    let raw = out.stdout;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| (p, 4))
        .or_else(|| raw.windows(2).position(|w| w == b"\n\n").map(|p| (p, 2)));
    let Some((at, sep)) = split else {
        record(500, 0);
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
            .into_response();
    };
    let head = String::from_utf8_lossy(&raw[..at]).into_owned();
    let body = raw[at + sep..].to_vec();
    let mut status = StatusCode::OK;
    let mut builder = Response::builder();
    for line in head.lines() {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("status") {
            let code = value
                .split(' ')
                .next()
                .and_then(|c| c.parse().ok())
                .unwrap_or(500);
            status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        } else {
            builder = builder.header(name, value);
        }
    }
    record(status.as_u16(), body.len());
    builder
        .status(status)
        .body(axum::body::Body::from(body))
        .unwrap()
}
