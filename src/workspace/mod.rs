//! Workspaces: every run works on a checkout of the exact commit it is about.
//!
//! Layout under the data directory (`TASKMASTER_DATA_DIR`, never the
//! service's working directory):
//!
//! ```text
//! mirrors/<repository id>.git     one bare mirror per repository (renames keep it)
//! mirrors/<repository id>.lock    its lock file (flock)
//! workspaces/<run id>/            the run's checkout (what agents and commands see)
//! workspaces/<run id>.json        what taskmaster knows of it (outside the checkout)
//! workspaces/.tmp-<run id>-<rand> a checkout being made; renamed when complete
//! ```
//!
//! **Mirrors.** Fetches go into the repository's mirror with a token
//! narrowed to that one repository and `contents: read` ([`TokenSource`]),
//! passed to git only through its environment ([`git`]). The URL is built
//! from the configured remote base and the verified payload's full name:
//! no URL from a payload is ever fetched. One fetch at a time per mirror:
//! an in-process mutex, plus an `flock` on `<id>.lock` for other processes
//! on this host sharing the data directory (a `taskmaster run` beside
//! `serve`). That per-host lock is enough for replicas on PostgreSQL because
//! the data directory is per host: each replica keeps its own mirrors.
//!
//! **Workspaces.** `git clone --shared --no-checkout` from the mirror, then
//! `checkout --detach <sha>`: near instant and near zero disk, since objects
//! are borrowed through `objects/info/alternates`. Git's docs warn that a
//! source which prunes can break such a clone, so the run's SHA is pinned in
//! the mirror (`refs/taskmaster/runs/<run id>`) while the workspace lives,
//! and the mirror never runs `gc` on its own (`gc.auto=0`). A checkout is
//! made under a temporary name and renamed into place only when complete,
//! so a crash mid-clone never leaves a half workspace that a later step
//! would reuse; the start-up sweep removes the leftovers.
//!
//! **Untrusted configuration.** On a pull request's head, the files that
//! steer agents ([`STEERING_PATHS`]) are put back as they are on the base
//! before any agent starts: the CLIs trust their working directory (hooks,
//! MCP servers, environment files), so a PR must not be able to steer the
//! agent that reviews it (claude-code-action's `restore-config.ts` does the
//! same).
//!
//! What a workspace holds and why is in `WORKSPACES.md` of the shared docs.

pub mod git;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use secrecy::SecretString;
use serde::{Deserialize, Serialize};

pub use git::Git;

/// Files and folders that steer agents, restored from the base branch on a
/// pull request's head before any agent starts. One list, used everywhere
/// (the harvest of changes leaves them out too).
pub const STEERING_PATHS: &[&str] = &[
    "CLAUDE.md",
    "CLAUDE.local.md",
    ".claude",
    ".claude.json",
    ".mcp.json",
    "AGENTS.md",
    ".aider.conf.yml",
    ".goosehints",
    ".env",
    ".gitmodules",
    ".husky",
    ".ripgreprc",
];

/// Why a workspace could not be made.
#[derive(Debug, thiserror::Error)]
pub enum WorkspaceError {
    /// A git command failed.
    #[error("git {command} failed: {message}")]
    Git {
        /// The subcommand (`fetch`, `clone`, …).
        command: String,
        /// git's error text, scrubbed of any token.
        message: String,
        /// Whether trying again later may help (network, server load).
        transient: bool,
    },
    /// The commit cannot be checked out (gone, never pushed, the PR moved).
    #[error("{0}")]
    Unreachable(String),
    /// A disk limit: too little free space, or a checkout over the cap.
    #[error("{message}")]
    Disk {
        /// What was measured, and the setting that bounds it.
        message: String,
        /// Free space may come back; a checkout over the cap will not shrink.
        transient: bool,
    },
    /// No token could be had for the repository.
    #[error("cannot get a token to read {repository}: {message}")]
    Token {
        /// `owner/name`.
        repository: String,
        /// Why.
        message: String,
        /// Whether trying again later may help.
        transient: bool,
    },
    /// The run's event gives nothing to check out, or names it badly.
    #[error("{0}")]
    Invalid(String),
    /// A file-system error under the data directory.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

impl WorkspaceError {
    /// Whether trying again later may help.
    pub fn is_transient(&self) -> bool {
        match self {
            WorkspaceError::Git { transient, .. }
            | WorkspaceError::Disk { transient, .. }
            | WorkspaceError::Token { transient, .. } => *transient,
            WorkspaceError::Io { .. } => true,
            WorkspaceError::Unreachable(_) | WorkspaceError::Invalid(_) => false,
        }
    }

    fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let what = what.into();
        move |source| WorkspaceError::Io { what, source }
    }
}

/// Where the read token for a repository comes from: the GitHub App (an
/// installation token narrowed to that repository and `contents: read`),
/// or nothing in dry run (public repositories only).
#[async_trait]
pub trait TokenSource: Send + Sync {
    /// A token that can read `full_name` through `installation`; `None` to
    /// fetch without one.
    ///
    /// # Errors
    /// [`WorkspaceError::Token`] when GitHub refuses or cannot be reached.
    async fn read_token(
        &self,
        installation: Option<i64>,
        full_name: &str,
    ) -> Result<Option<SecretString>, WorkspaceError>;
}

/// Fetch without a token (dry run, tests of public repositories).
#[derive(Debug, Default)]
pub struct Anonymous;

#[async_trait]
impl TokenSource for Anonymous {
    async fn read_token(
        &self,
        _installation: Option<i64>,
        _full_name: &str,
    ) -> Result<Option<SecretString>, WorkspaceError> {
        Ok(None)
    }
}

/// Read tokens from the GitHub App: `POST /app/installations/{id}/access_tokens`
/// narrowed to one repository and `contents: read`
/// ([`crate::github::GitHub::repository_token`]). Without an installation
/// (or in dry run) the fetch goes without a token.
pub struct GitHubTokens(pub Arc<dyn crate::github::GitHub>);

#[async_trait]
impl TokenSource for GitHubTokens {
    async fn read_token(
        &self,
        installation: Option<i64>,
        full_name: &str,
    ) -> Result<Option<SecretString>, WorkspaceError> {
        let Some(installation) = installation else {
            return Ok(None);
        };
        if self.0.is_dry_run() {
            return Ok(None);
        }
        let repo = crate::github::RepoName::parse(full_name)
            .map_err(|e| WorkspaceError::Invalid(format!("repository name `{full_name}`: {e}")))?;
        self.0
            .repository_token(
                crate::github::InstallationId(installation as u64),
                &repo,
                &[("contents", "read")],
            )
            .await
            .map(Some)
            .map_err(|e| WorkspaceError::Token {
                repository: full_name.to_owned(),
                transient: e.is_transient(),
                message: e.to_string(),
            })
    }
}

/// Workspace settings (flags and environment variables in [`crate::config`]).
#[derive(Debug, Clone)]
pub struct WorkspaceSettings {
    /// `TASKMASTER_DATA_DIR`: mirrors and workspaces live under it.
    pub data_dir: PathBuf,
    /// `GITHUB_GIT_URL`: the remote base, `https://github.com` (or a GitHub
    /// Enterprise host); repositories are `{base}/{owner}/{name}.git`.
    pub git_url: String,
    /// The git binary.
    pub git_binary: PathBuf,
    /// Keep a failed run's workspace this long, for debugging (0: remove at once).
    pub keep_failed: Duration,
    /// Refuse to clone when the data directory's file system has less free
    /// space than this, in bytes.
    pub min_free_bytes: u64,
    /// A checkout larger than this many bytes (work tree, without `.git`)
    /// fails its step.
    pub max_workspace_bytes: u64,
    /// Mirrors no run has used for this long are removed by the sweeper.
    pub mirror_ttl: Duration,
    /// `pr.diff` is cut at this many bytes, with a note saying what was cut.
    pub diff_limit_bytes: usize,
    /// False (`TASKMASTER_WORKSPACES=off`): runs get an empty directory
    /// instead of a checkout.
    pub checkout: bool,
}

impl WorkspaceSettings {
    /// Defaults under `data_dir`: `https://github.com`, `git` from `PATH`,
    /// failed workspaces removed at once, 1 GiB free space floor, 2 GiB per
    /// workspace, mirrors pruned after 14 days unused, diffs cut at 100 KB.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            git_url: "https://github.com".into(),
            git_binary: "git".into(),
            keep_failed: Duration::ZERO,
            min_free_bytes: 1 << 30,
            max_workspace_bytes: 2 << 30,
            mirror_ttl: Duration::from_secs(14 * 24 * 3600),
            diff_limit_bytes: 100_000,
            checkout: true,
        }
    }
}

/// What a run checks out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A pull request: its head, fetched as `refs/pull/{number}/head` (which
    /// works for forks), and its base branch (for the diff and for restoring
    /// steering files).
    PullRequest {
        /// The PR number.
        number: u64,
        /// The head commit the event named; `None` (a comment on the PR)
        /// takes the head as fetched.
        head_sha: Option<String>,
        /// The base branch.
        base_branch: String,
        /// The base commit the event named, when it did.
        base_sha: Option<String>,
    },
    /// A branch's head (an issue run: the default branch when the run
    /// first needed its workspace).
    Branch {
        /// The branch name.
        name: String,
    },
}

/// One run's request for its workspace.
#[derive(Debug, Clone)]
pub struct CheckoutRequest {
    /// The run.
    pub run_id: i64,
    /// The repository's numeric id (keys the mirror).
    pub repo_id: i64,
    /// `owner/name`, from the verified payload.
    pub full_name: String,
    /// The installation, for the read token.
    pub installation: Option<i64>,
    /// What to check out.
    pub target: Target,
    /// The SHA recorded on the run by an earlier checkout (a restart): the
    /// workspace is made at this commit again, whatever the branch says now.
    pub pinned_sha: Option<String>,
}

impl CheckoutRequest {
    /// What run `run` (started by `event`) checks out: a pull request's head
    /// for pull-request events, comments on a PR and re-runs of a PR's check;
    /// the default branch's head for everything else about a repository.
    /// `None` when the event names no repository (the run gets an empty
    /// directory).
    pub fn for_run(run: &crate::store::Run, event: &crate::event::Event) -> Option<Self> {
        use crate::event::Event;
        let repo = event.repository()?;
        let default_branch = repo
            .default_branch
            .clone()
            .unwrap_or_else(|| "main".to_owned());
        let pr_number =
            |numbers: &[crate::event::PullRequestRef]| numbers.first().map(|p| p.number);
        let target = match event {
            Event::PullRequest(e) => {
                let pr = &e.pull_request;
                Target::PullRequest {
                    number: pr.number,
                    head_sha: Some(run.head_sha.clone().unwrap_or_else(|| pr.head.sha.clone())),
                    base_branch: pr.base.branch.clone(),
                    base_sha: Some(pr.base.sha.clone()),
                }
            }
            // A comment on a PR: its head as fetched (the payload has no SHA),
            // against the default branch (the payload does not name the base).
            Event::IssueComment(e) if e.issue.is_pull_request() => Target::PullRequest {
                number: e.issue.number,
                head_sha: run.head_sha.clone(),
                base_branch: default_branch,
                base_sha: None,
            },
            Event::CheckRun(e) => match pr_number(&e.check_run.pull_requests) {
                Some(number) => Target::PullRequest {
                    number,
                    head_sha: Some(e.check_run.head_sha.clone()),
                    base_branch: default_branch,
                    base_sha: None,
                },
                None => Target::Branch {
                    name: default_branch,
                },
            },
            Event::CheckSuite(e) => match pr_number(&e.check_suite.pull_requests) {
                Some(number) => Target::PullRequest {
                    number,
                    head_sha: Some(e.check_suite.head_sha.clone()),
                    base_branch: default_branch,
                    base_sha: None,
                },
                None => Target::Branch {
                    name: e.check_suite.head_branch.clone().unwrap_or(default_branch),
                },
            },
            _ => Target::Branch {
                name: default_branch,
            },
        };
        Some(CheckoutRequest {
            run_id: run.id,
            repo_id: repo.id,
            full_name: repo.full_name.clone(),
            installation: event.installation_id(),
            pinned_sha: run.checkout_sha.clone().or_else(|| match target {
                // A re-run of a branch's check: that commit, not the branch's tip.
                Target::Branch { .. } => run.head_sha.clone(),
                Target::PullRequest { .. } => None,
            }),
            target,
        })
    }
}

/// One changed file of a pull request (`pr.files`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileChange {
    /// Path in the head commit (the new path of a rename).
    pub path: String,
    /// `added`, `modified`, `removed`, `renamed`, `copied` or `changed`.
    pub status: String,
    /// Lines added (0 for binary files).
    pub additions: u64,
    /// Lines removed (0 for binary files).
    pub deletions: u64,
}

/// A run's workspace, ready for its steps.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Workspace {
    /// The run.
    pub run_id: i64,
    /// The repository's id.
    pub repo_id: i64,
    /// `owner/name`.
    pub full_name: String,
    /// The checkout (the agents' working directory).
    pub path: PathBuf,
    /// The commit checked out.
    pub sha: String,
    /// The base commit, for pull requests.
    pub base_sha: Option<String>,
    /// The mirror whose objects the checkout borrows (bound read-only in
    /// sandboxes so git works inside).
    pub mirror: PathBuf,
    /// Steering files put back as they are on the base.
    pub restored: Vec<String>,
    /// The PR's unified diff (base…head) with line numbers, cut at the limit.
    pub diff: String,
    /// The PR's changed files.
    pub files: Vec<FileChange>,
    /// Size of the work tree, bytes (without `.git`).
    pub size_bytes: u64,
    /// What was fetched, for the timeline.
    pub fetched: String,
    /// How long making it took, ms, when this call made it; 0 when it
    /// already existed.
    #[serde(default)]
    pub duration_ms: u64,
}

/// Mirrors and workspaces under one data directory. Cheap to share.
pub struct Workspaces {
    settings: WorkspaceSettings,
    git: Git,
    tokens: Arc<dyn TokenSource>,
    /// One mutex per mirror (repository id).
    mirror_locks: Mutex<HashMap<i64, Arc<tokio::sync::Mutex<()>>>>,
    /// One mutex per run while its workspace is being made.
    run_locks: Mutex<HashMap<i64, Arc<tokio::sync::Mutex<()>>>>,
    /// Per run: steps that may change files take it for writing, others for
    /// reading, so two writers never run at once.
    step_locks: Mutex<HashMap<i64, Arc<tokio::sync::RwLock<()>>>>,
}

impl std::fmt::Debug for Workspaces {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Workspaces")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Workspaces {
    /// Workspaces under `settings.data_dir`, fetching with tokens from `tokens`.
    ///
    /// # Errors
    /// [`WorkspaceError::Io`] when the folders cannot be created.
    pub fn new(
        settings: WorkspaceSettings,
        tokens: Arc<dyn TokenSource>,
    ) -> Result<Self, WorkspaceError> {
        for dir in ["mirrors", "workspaces"] {
            let path = settings.data_dir.join(dir);
            std::fs::create_dir_all(&path)
                .map_err(WorkspaceError::io(format!("create {}", path.display())))?;
        }
        // The data directory holds mirrors of private code: owner only.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(
                &settings.data_dir,
                std::fs::Permissions::from_mode(0o700),
            );
        }
        Ok(Self {
            git: Git::new(&settings.git_binary, &settings.git_url),
            settings,
            tokens,
            mirror_locks: Mutex::new(HashMap::new()),
            run_locks: Mutex::new(HashMap::new()),
            step_locks: Mutex::new(HashMap::new()),
        })
    }

    /// The settings.
    pub fn settings(&self) -> &WorkspaceSettings {
        &self.settings
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.settings.data_dir
    }

    fn workspaces_dir(&self) -> PathBuf {
        self.settings.data_dir.join("workspaces")
    }

    fn mirror_path(&self, repo_id: i64) -> PathBuf {
        self.settings
            .data_dir
            .join("mirrors")
            .join(format!("{repo_id}.git"))
    }

    /// Where run `run_id`'s checkout is (whether or not it exists).
    pub fn workspace_path(&self, run_id: i64) -> PathBuf {
        self.workspaces_dir().join(run_id.to_string())
    }

    fn meta_path(&self, run_id: i64) -> PathBuf {
        self.workspaces_dir().join(format!("{run_id}.json"))
    }

    fn ended_path(&self, run_id: i64) -> PathBuf {
        self.workspaces_dir().join(format!("{run_id}.ended"))
    }

    /// The run's lock for steps: hold it for writing while a step that may
    /// change files runs, for reading otherwise.
    pub fn step_lock(&self, run_id: i64) -> Arc<tokio::sync::RwLock<()>> {
        self.step_locks
            .lock()
            .expect("step locks")
            .entry(run_id)
            .or_default()
            .clone()
    }

    /// The run's workspace when it has been made (read from its record).
    pub fn existing(&self, run_id: i64) -> Option<Workspace> {
        let text = std::fs::read(self.meta_path(run_id)).ok()?;
        let mut ws: Workspace = serde_json::from_slice(&text).ok()?;
        // Made before: not by this call.
        ws.duration_ms = 0;
        ws.path.is_dir().then_some(ws)
    }

    /// An empty directory for run `run_id` (a run about no repository, or
    /// workspaces turned off), made once.
    ///
    /// # Errors
    /// [`WorkspaceError::Io`] when it cannot be created.
    pub fn scratch(&self, run_id: i64) -> Result<Workspace, WorkspaceError> {
        if let Some(ws) = self.existing(run_id) {
            return Ok(ws);
        }
        let path = self.workspace_path(run_id);
        std::fs::create_dir_all(&path)
            .map_err(WorkspaceError::io(format!("create {}", path.display())))?;
        let ws = Workspace {
            run_id,
            repo_id: 0,
            full_name: String::new(),
            path,
            sha: String::new(),
            base_sha: None,
            mirror: PathBuf::new(),
            restored: Vec::new(),
            diff: String::new(),
            files: Vec::new(),
            size_bytes: 0,
            fetched: String::new(),
            duration_ms: 0,
        };
        let meta = serde_json::to_vec(&ws).expect("a workspace serializes");
        write_file(&self.meta_path(run_id), &meta)?;
        Ok(ws)
    }

    /// The run's workspace: the existing one, or a new checkout of its
    /// commit. Concurrent calls for one run make it once. The returned
    /// workspace's `duration_ms` is 0 when it already existed.
    ///
    /// # Errors
    /// See [`WorkspaceError`]; [`WorkspaceError::is_transient`] tells whether
    /// the step should try again later.
    pub async fn ensure(&self, req: &CheckoutRequest) -> Result<Workspace, WorkspaceError> {
        if let Some(ws) = self.existing(req.run_id) {
            return Ok(ws);
        }
        let lock = self
            .run_locks
            .lock()
            .expect("run locks")
            .entry(req.run_id)
            .or_default()
            .clone();
        let _held = lock.lock().await;
        if let Some(ws) = self.existing(req.run_id) {
            return Ok(ws);
        }
        let started = Instant::now();
        let mut ws = self.create(req).await?;
        ws.duration_ms = started.elapsed().as_millis() as u64;
        let meta = serde_json::to_vec(&ws).expect("a workspace serializes");
        write_file(&self.meta_path(req.run_id), &meta)?;
        Ok(ws)
    }

    async fn create(&self, req: &CheckoutRequest) -> Result<Workspace, WorkspaceError> {
        if req.repo_id <= 0 {
            return Err(WorkspaceError::Invalid(format!(
                "the event gives no repository id for {}: nothing to check out",
                req.full_name
            )));
        }
        let repo = crate::github::RepoName::parse(&req.full_name).map_err(|e| {
            WorkspaceError::Invalid(format!("repository name `{}`: {e}", req.full_name))
        })?;
        self.check_free_space()?;
        let mirror = self.mirror_path(req.repo_id);
        let url = format!(
            "{}/{}/{}.git",
            self.settings.git_url.trim_end_matches('/'),
            repo.owner(),
            repo.name()
        );
        // Fetch and pin under the mirror's lock.
        let (sha, base_sha, fetched) = {
            let _guard = self.lock_mirror(req.repo_id).await?;
            self.init_mirror(&mirror).await?;
            let token = self
                .tokens
                .read_token(req.installation, &req.full_name)
                .await?;
            let (sha, base_sha, fetched) = self
                .fetch(
                    &mirror,
                    &url,
                    &req.target,
                    req.pinned_sha.as_deref(),
                    token.as_ref(),
                )
                .await?;
            self.git
                .run(
                    None,
                    &[
                        "--git-dir",
                        path_str(&mirror)?,
                        "update-ref",
                        &format!("refs/taskmaster/runs/{}", req.run_id),
                        &sha,
                    ],
                    None,
                )
                .await?;
            touch(&mirror.join("taskmaster-last-used"));
            (sha, base_sha, fetched)
        };
        // Check out under a temporary name; rename when complete.
        let tmp = self.workspaces_dir().join(format!(
            ".tmp-{}-{}",
            req.run_id,
            uuid::Uuid::new_v4().simple()
        ));
        let result = self
            .checkout(&mirror, &tmp, &sha, base_sha.as_deref(), &req.target)
            .await;
        let (restored, size_bytes) = match result {
            Ok(r) => r,
            Err(e) => {
                let _ = tokio::fs::remove_dir_all(&tmp).await;
                return Err(e);
            }
        };
        let (diff, files) = match (&req.target, &base_sha) {
            (Target::PullRequest { .. }, Some(base)) => self.diff(&mirror, base, &sha).await?,
            _ => (String::new(), Vec::new()),
        };
        let path = self.workspace_path(req.run_id);
        if path.exists() {
            // A checkout renamed into place by a process that died before
            // writing its record: complete but unrecorded; replace it.
            let _ = tokio::fs::remove_dir_all(&path).await;
        }
        tokio::fs::rename(&tmp, &path)
            .await
            .map_err(WorkspaceError::io(format!(
                "move the checkout to {}",
                path.display()
            )))?;
        Ok(Workspace {
            run_id: req.run_id,
            repo_id: req.repo_id,
            full_name: req.full_name.clone(),
            path,
            sha,
            base_sha,
            mirror,
            restored,
            diff,
            files,
            size_bytes,
            fetched,
            duration_ms: 0,
        })
    }

    /// Takes mirror `repo_id`'s locks: the in-process mutex, then the
    /// `flock` on its lock file (released when the guard drops).
    async fn lock_mirror(&self, repo_id: i64) -> Result<MirrorGuard, WorkspaceError> {
        let local = self
            .mirror_locks
            .lock()
            .expect("mirror locks")
            .entry(repo_id)
            .or_default()
            .clone();
        let held = local.lock_owned().await;
        let path = self
            .settings
            .data_dir
            .join("mirrors")
            .join(format!("{repo_id}.lock"));
        let file = tokio::task::spawn_blocking(move || -> std::io::Result<std::fs::File> {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)?;
            use std::os::fd::AsRawFd;
            // SAFETY: flock on an open descriptor we own; blocks until held.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(file)
        })
        .await
        .expect("the lock task does not panic")
        .map_err(WorkspaceError::io("lock the mirror"))?;
        Ok(MirrorGuard {
            _file: file,
            _held: held,
        })
    }

    async fn init_mirror(&self, mirror: &Path) -> Result<(), WorkspaceError> {
        if mirror.join("HEAD").is_file() {
            return Ok(());
        }
        let _ = tokio::fs::remove_dir_all(mirror).await;
        self.git
            .run(
                None,
                &["init", "--bare", "--quiet", path_str(mirror)?],
                None,
            )
            .await?;
        // Never prune on our own: workspaces borrow these objects.
        for (key, value) in [("gc.auto", "0"), ("maintenance.auto", "false")] {
            self.git
                .run(
                    None,
                    &["--git-dir", path_str(mirror)?, "config", key, value],
                    None,
                )
                .await?;
        }
        Ok(())
    }

    /// Fetches what `target` needs into the mirror; returns the SHA to check
    /// out, the base SHA (pull requests) and a line for the timeline.
    async fn fetch(
        &self,
        mirror: &Path,
        url: &str,
        target: &Target,
        pinned: Option<&str>,
        token: Option<&SecretString>,
    ) -> Result<(String, Option<String>, String), WorkspaceError> {
        let git_dir = path_str(mirror)?;
        let fetch = |refspecs: Vec<String>| async move {
            let mut args: Vec<&str> = vec![
                "--git-dir",
                git_dir,
                "fetch",
                "--quiet",
                "--no-tags",
                "--no-write-fetch-head",
                "--no-recurse-submodules",
                url,
            ];
            args.extend(refspecs.iter().map(String::as_str));
            self.git.run(None, &args, token).await.map(|_| ())
        };
        match target {
            Target::PullRequest {
                number,
                head_sha,
                base_branch,
                base_sha,
            } => {
                if !git::valid_branch(base_branch) {
                    return Err(WorkspaceError::Invalid(format!(
                        "the base branch name `{base_branch}` is not a valid git branch name"
                    )));
                }
                let pull_ref = format!("refs/taskmaster/pull/{number}");
                fetch(vec![
                    format!("+refs/pull/{number}/head:{pull_ref}"),
                    format!("+refs/heads/{base_branch}:refs/heads/{base_branch}"),
                ])
                .await
                .map_err(|e| match e {
                    WorkspaceError::Git {
                        message,
                        transient: false,
                        ..
                    } => WorkspaceError::Unreachable(format!(
                        "cannot fetch pull request #{number} of {url}: {message}"
                    )),
                    other => other,
                })?;
                let tip = self.resolve(mirror, &pull_ref).await?;
                let wanted = pinned
                    .or(head_sha.as_deref())
                    .map(str::to_owned)
                    .unwrap_or_else(|| tip.clone());
                if !git::valid_sha(&wanted) {
                    return Err(WorkspaceError::Invalid(format!(
                        "`{wanted}` is not a commit SHA"
                    )));
                }
                let mut fetched = format!("refs/pull/{number}/head at {}", short(&tip));
                if !self.has_commit(mirror, &wanted).await {
                    // GitHub serves any reachable commit by SHA.
                    let _ = fetch(vec![wanted.clone()]).await;
                    if !self.has_commit(mirror, &wanted).await {
                        return Err(WorkspaceError::Unreachable(format!(
                            "commit {wanted} of pull request #{number} is no longer reachable \
                             (the PR's head is now {tip}: it was force-pushed); a new push \
                             starts a new run"
                        )));
                    }
                }
                if wanted != tip {
                    fetched.push_str(&format!(
                        "; the PR has moved since this run started, checking out {}",
                        short(&wanted)
                    ));
                }
                let base_tip = self
                    .resolve(mirror, &format!("refs/heads/{base_branch}"))
                    .await?;
                let base = match base_sha {
                    Some(b) if git::valid_sha(b) && self.has_commit(mirror, b).await => b.clone(),
                    _ => base_tip,
                };
                Ok((wanted, Some(base), fetched))
            }
            Target::Branch { name } => {
                if !git::valid_branch(name) {
                    return Err(WorkspaceError::Invalid(format!(
                        "the branch name `{name}` is not a valid git branch name"
                    )));
                }
                let local = format!("refs/heads/{name}");
                fetch(vec![format!("+{local}:{local}")])
                    .await
                    .map_err(|e| match e {
                        WorkspaceError::Git {
                            message,
                            transient: false,
                            ..
                        } => WorkspaceError::Unreachable(format!(
                            "cannot fetch branch `{name}` of {url}: {message}"
                        )),
                        other => other,
                    })?;
                let tip = self.resolve(mirror, &local).await?;
                let wanted = pinned.map(str::to_owned).unwrap_or_else(|| tip.clone());
                if !self.has_commit(mirror, &wanted).await {
                    return Err(WorkspaceError::Unreachable(format!(
                        "commit {wanted}, which this run started on, is no longer on `{name}`"
                    )));
                }
                Ok((wanted, None, format!("{name} at {}", short(&tip))))
            }
        }
    }

    async fn resolve(&self, mirror: &Path, name: &str) -> Result<String, WorkspaceError> {
        self.git
            .text(
                None,
                &[
                    "--git-dir",
                    path_str(mirror)?,
                    "rev-parse",
                    "--verify",
                    "--quiet",
                    &format!("{name}^{{commit}}"),
                ],
            )
            .await
    }

    async fn has_commit(&self, mirror: &Path, sha: &str) -> bool {
        let Ok(dir) = path_str(mirror) else {
            return false;
        };
        self.git
            .run(
                None,
                &[
                    "--git-dir",
                    dir,
                    "cat-file",
                    "-e",
                    &format!("{sha}^{{commit}}"),
                ],
                None,
            )
            .await
            .is_ok()
    }

    /// Clones `sha` into `dir`, restores steering files on PR heads, checks
    /// the size; returns the restored paths and the size in bytes.
    async fn checkout(
        &self,
        mirror: &Path,
        dir: &Path,
        sha: &str,
        base: Option<&str>,
        target: &Target,
    ) -> Result<(Vec<String>, u64), WorkspaceError> {
        self.git
            .run(
                None,
                &[
                    "clone",
                    "--shared",
                    "--no-checkout",
                    "--quiet",
                    path_str(mirror)?,
                    path_str(dir)?,
                ],
                None,
            )
            .await?;
        self.git
            .run(Some(dir), &["checkout", "--quiet", "--detach", sha], None)
            .await?;
        let mut restored = Vec::new();
        if let (Target::PullRequest { .. }, Some(base)) = (target, base) {
            for path in STEERING_PATHS {
                if self.restore_from_base(dir, base, sha, path).await? {
                    restored.push((*path).to_owned());
                }
            }
        }
        let root = dir.to_owned();
        let size = tokio::task::spawn_blocking(move || tree_size(&root))
            .await
            .expect("the size walk does not panic");
        if size > self.settings.max_workspace_bytes {
            return Err(WorkspaceError::Disk {
                message: format!(
                    "the checkout is {} MB, over the cap of {} MB per workspace \
                     (TASKMASTER_MAX_WORKSPACE_MB)",
                    size / 1_000_000,
                    self.settings.max_workspace_bytes / 1_000_000
                ),
                transient: false,
            });
        }
        Ok((restored, size))
    }

    /// Puts `path` back as it is at `base` when the head's differs; true
    /// when it did.
    async fn restore_from_base(
        &self,
        dir: &Path,
        base: &str,
        head: &str,
        path: &str,
    ) -> Result<bool, WorkspaceError> {
        let object = |rev: String| async move {
            self.git
                .text(Some(dir), &["rev-parse", "--verify", "--quiet", &rev])
                .await
                .ok()
                .filter(|s| !s.is_empty())
        };
        let at_head = object(format!("{head}:{path}")).await;
        let at_base = object(format!("{base}:{path}")).await;
        if at_head == at_base {
            return Ok(false);
        }
        let full = dir.join(path);
        match std::fs::symlink_metadata(&full) {
            Ok(m) if m.is_dir() => std::fs::remove_dir_all(&full),
            Ok(_) => std::fs::remove_file(&full),
            Err(_) => Ok(()),
        }
        .map_err(WorkspaceError::io(format!("remove the PR's {path}")))?;
        if at_base.is_some() {
            self.git
                .run(
                    Some(dir),
                    &[
                        "restore",
                        &format!("--source={base}"),
                        "--worktree",
                        "--",
                        path,
                    ],
                    None,
                )
                .await?;
        }
        Ok(true)
    }

    /// The diff `base…head` (what the PR changes since it left its base) with
    /// new-file line numbers, cut at the limit, and the changed files.
    async fn diff(
        &self,
        mirror: &Path,
        base: &str,
        head: &str,
    ) -> Result<(String, Vec<FileChange>), WorkspaceError> {
        let git_dir = path_str(mirror)?;
        let range = format!("{base}...{head}");
        let common = [
            "--git-dir",
            git_dir,
            "-c",
            "diff.renames=true",
            "diff",
            "--no-color",
            "--no-ext-diff",
            "--no-textconv",
        ];
        let run = |extra: &'static [&'static str]| {
            let mut args: Vec<&str> = common.to_vec();
            args.extend_from_slice(extra);
            args.push(&range);
            async move { self.git.run(None, &args, None).await }
        };
        let numstat = run(&["--numstat", "-z"]).await?;
        let status = run(&["--name-status", "-z"]).await?;
        let patch = run(&["--unified=3"]).await?;
        let files = parse_files(&status.stdout, &numstat.stdout);
        let diff = number_diff(
            &String::from_utf8_lossy(&patch.stdout),
            self.settings.diff_limit_bytes,
        );
        Ok((diff, files))
    }

    fn check_free_space(&self) -> Result<(), WorkspaceError> {
        let Some(free) = free_bytes(&self.settings.data_dir) else {
            return Ok(());
        };
        if free < self.settings.min_free_bytes {
            return Err(WorkspaceError::Disk {
                message: format!(
                    "only {} MB free under {}, below the floor of {} MB \
                     (TASKMASTER_MIN_FREE_DISK_MB): free some space or lower the floor",
                    free / 1_000_000,
                    self.settings.data_dir.display(),
                    self.settings.min_free_bytes / 1_000_000
                ),
                transient: true,
            });
        }
        Ok(())
    }

    /// The run ended: removes its workspace (or, when it `failed` and
    /// failed workspaces are kept, marks it for the sweeper), and unpins its
    /// commit in the mirror.
    pub async fn finish(&self, run_id: i64, failed: bool) {
        self.step_locks.lock().expect("step locks").remove(&run_id);
        self.run_locks.lock().expect("run locks").remove(&run_id);
        if failed && !self.settings.keep_failed.is_zero() && self.existing(run_id).is_some() {
            touch(&self.ended_path(run_id));
            return;
        }
        self.remove(run_id).await;
    }

    /// Removes run `run_id`'s workspace, record and pin (whatever exists).
    pub async fn remove(&self, run_id: i64) {
        let meta = self.existing(run_id);
        let _ = tokio::fs::remove_dir_all(self.workspace_path(run_id)).await;
        if let Some(ws) = meta
            && ws.repo_id > 0
            && let Ok(guard) = self.lock_mirror(ws.repo_id).await
        {
            if let Ok(dir) = path_str(&ws.mirror) {
                let _ = self
                    .git
                    .run(
                        None,
                        &[
                            "--git-dir",
                            dir,
                            "update-ref",
                            "-d",
                            &format!("refs/taskmaster/runs/{run_id}"),
                        ],
                        None,
                    )
                    .await;
            }
            drop(guard);
        }
        let _ = tokio::fs::remove_file(self.meta_path(run_id)).await;
        let _ = tokio::fs::remove_file(self.ended_path(run_id)).await;
    }

    /// Removes what no run needs any more: half-made checkouts, workspaces
    /// of runs not in `active` (a failed run's kept until `keep_failed` has
    /// passed since it ended), and mirrors unused for `mirror_ttl` that pin
    /// nothing. Returns how many workspaces and mirrors were removed.
    pub async fn sweep(&self, active: &std::collections::HashSet<i64>) -> (usize, usize) {
        let mut workspaces = 0;
        let root = self.workspaces_dir();
        let Ok(entries) = std::fs::read_dir(&root) else {
            return (0, 0);
        };
        let now = SystemTime::now();
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(".tmp-") {
                let _ = tokio::fs::remove_dir_all(entry.path()).await;
                workspaces += 1;
                continue;
            }
            let Ok(run_id) = name.parse::<i64>() else {
                continue;
            };
            if active.contains(&run_id) {
                continue;
            }
            let kept = std::fs::metadata(self.ended_path(run_id))
                .and_then(|m| m.modified())
                .ok()
                .and_then(|at| now.duration_since(at).ok())
                .is_some_and(|age| age < self.settings.keep_failed);
            if !kept {
                self.remove(run_id).await;
                workspaces += 1;
            }
        }
        let mut mirrors = 0;
        if let Ok(entries) = std::fs::read_dir(self.settings.data_dir.join("mirrors")) {
            for entry in entries.flatten() {
                let path = entry.path();
                let Some(id) = path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .and_then(|n| n.strip_suffix(".git"))
                    .and_then(|n| n.parse::<i64>().ok())
                else {
                    continue;
                };
                let unused = std::fs::metadata(path.join("taskmaster-last-used"))
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|at| now.duration_since(at).ok())
                    .is_none_or(|age| age >= self.settings.mirror_ttl);
                let pins = path.join("refs/taskmaster/runs");
                let pinned = std::fs::read_dir(&pins).is_ok_and(|mut d| d.next().is_some());
                if unused && !pinned {
                    let Ok(_guard) = self.lock_mirror(id).await else {
                        continue;
                    };
                    if tokio::fs::remove_dir_all(&path).await.is_ok() {
                        mirrors += 1;
                    }
                }
            }
        }
        (workspaces, mirrors)
    }
}

struct MirrorGuard {
    _file: std::fs::File,
    _held: tokio::sync::OwnedMutexGuard<()>,
}

fn path_str(path: &Path) -> Result<&str, WorkspaceError> {
    path.to_str().ok_or_else(|| {
        WorkspaceError::Invalid(format!(
            "the path {} is not UTF-8: choose a data directory with a plain name",
            path.display()
        ))
    })
}

fn short(sha: &str) -> &str {
    &sha[..sha.len().min(12)]
}

fn touch(path: &Path) {
    let _ = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .and_then(|f| f.set_modified(SystemTime::now()));
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<(), WorkspaceError> {
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, bytes)
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(WorkspaceError::io(format!("write {}", path.display())))
}

/// Bytes of regular files under `root`, `.git` left out; symlinks are not
/// followed.
fn tree_size(root: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            if dir == root && entry.file_name() == ".git" {
                continue;
            }
            let Ok(meta) = entry.path().symlink_metadata() else {
                continue;
            };
            if meta.is_dir() {
                stack.push(entry.path());
            } else if meta.is_file() {
                total += meta.len();
            }
        }
    }
    total
}

/// Free bytes for an unprivileged user on `path`'s file system.
fn free_bytes(path: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid C string and a zeroed statvfs to fill.
    if unsafe { libc::statvfs(c.as_ptr(), &mut stat) } != 0 {
        return None;
    }
    Some(stat.f_bavail as u64 * stat.f_frsize as u64)
}

/// `pr.files` from `--name-status -z` and `--numstat -z` output.
fn parse_files(status: &[u8], numstat: &[u8]) -> Vec<FileChange> {
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    // --numstat -z: "add\tdel\tpath\0", or for renames "add\tdel\t\0old\0new\0".
    let mut counts: HashMap<String, (u64, u64)> = HashMap::new();
    let mut parts = numstat.split(|b| *b == 0);
    while let Some(head) = parts.next() {
        if head.is_empty() {
            continue;
        }
        let head = text(head);
        let mut fields = head.splitn(3, '\t');
        let add = fields.next().and_then(|v| v.parse().ok()).unwrap_or(0);
        let del = fields.next().and_then(|v| v.parse().ok()).unwrap_or(0);
        let path = match fields.next() {
            Some(p) if !p.is_empty() => p.to_owned(),
            _ => {
                let _old = parts.next();
                parts.next().map(text).unwrap_or_default()
            }
        };
        counts.insert(path, (add, del));
    }
    // --name-status -z: "M\0path\0", renames and copies "R100\0old\0new\0".
    let mut files = Vec::new();
    let mut parts = status.split(|b| *b == 0);
    while let Some(code) = parts.next() {
        if code.is_empty() {
            continue;
        }
        let code = text(code);
        let kind = code.chars().next().unwrap_or('M');
        if matches!(kind, 'R' | 'C') {
            let _old = parts.next();
        }
        let Some(path) = parts.next().map(text) else {
            break;
        };
        let status = match kind {
            'A' => "added",
            'D' => "removed",
            'R' => "renamed",
            'C' => "copied",
            'M' => "modified",
            _ => "changed",
        };
        let (additions, deletions) = counts.get(&path).copied().unwrap_or((0, 0));
        files.push(FileChange {
            path,
            status: status.into(),
            additions,
            deletions,
        });
    }
    files
}

/// A unified diff with each line's number in the new file in front (removed
/// lines get none), so an agent can cite real lines; cut at `limit` bytes at
/// a file boundary where possible, with a note naming the files left out.
pub fn number_diff(patch: &str, limit: usize) -> String {
    let mut out = String::new();
    let mut new_line: u64 = 0;
    let mut files: Vec<(String, usize)> = Vec::new(); // (path, offset in out)
    for line in patch.lines() {
        if let Some(rest) = line.strip_prefix("diff --git ") {
            let path = rest
                .rsplit_once(" b/")
                .map(|(_, p)| p.to_owned())
                .unwrap_or_else(|| rest.to_owned());
            files.push((path, out.len()));
            out.push_str(line);
            out.push('\n');
            continue;
        }
        if line.starts_with("@@") {
            // @@ -a,b +c,d @@
            new_line = line
                .split(' ')
                .find_map(|p| p.strip_prefix('+'))
                .and_then(|p| p.split(',').next())
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            out.push_str(line);
            out.push('\n');
            continue;
        }
        match line.as_bytes().first() {
            Some(b'+') if !line.starts_with("+++") => {
                out.push_str(&format!("{new_line:>6} {line}\n"));
                new_line += 1;
            }
            Some(b' ') => {
                out.push_str(&format!("{new_line:>6} {line}\n"));
                new_line += 1;
            }
            Some(b'-') if !line.starts_with("---") => {
                out.push_str(&format!("{:>6} {line}\n", ""));
            }
            _ => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    if out.len() <= limit {
        return out;
    }
    // Cut at the last file boundary under the limit (or mid-file when the
    // first file alone is over it).
    let cut_file = files
        .iter()
        .rposition(|(_, at)| *at <= limit && *at > 0)
        .unwrap_or(0);
    let mut end = if cut_file > 0 {
        files[cut_file].1
    } else {
        limit
    };
    while !out.is_char_boundary(end) {
        end -= 1;
    }
    let left_out: Vec<&str> = files
        .iter()
        .filter(|(_, at)| *at >= end)
        .map(|(p, _)| p.as_str())
        .collect();
    let total = out.len();
    out.truncate(end);
    out.push_str(&format!(
        "\n[diff cut at {end} of {total} bytes (limit {limit}, TASKMASTER_DIFF_LIMIT_BYTES); \
         {} file(s) not shown{}{}]\n",
        left_out.len(),
        if left_out.is_empty() { "" } else { ": " },
        left_out.join(", ")
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diff_lines_carry_new_file_numbers() {
        let patch = "diff --git a/x.rs b/x.rs\n--- a/x.rs\n+++ b/x.rs\n@@ -10,3 +10,3 @@ fn f\n a\n-b\n+c\n d\n";
        let out = number_diff(patch, 10_000);
        assert!(out.contains("    10  a\n"), "{out}");
        assert!(out.contains("       -b\n"), "{out}");
        assert!(out.contains("    11 +c\n"), "{out}");
        assert!(out.contains("    12  d\n"), "{out}");
        assert!(out.contains("+++ b/x.rs\n"), "{out}");
    }

    #[test]
    fn a_long_diff_is_cut_at_a_file_boundary_with_a_note() {
        let file = |name: &str| {
            format!(
                "diff --git a/{name} b/{name}\n--- a/{name}\n+++ b/{name}\n@@ -1,1 +1,1 @@\n-{}\n+{}\n",
                "o".repeat(50),
                "n".repeat(50)
            )
        };
        let patch = format!("{}{}{}", file("a.txt"), file("b.txt"), file("c.txt"));
        let out = number_diff(&patch, 300);
        assert!(out.contains("a.txt"));
        assert!(out.contains("2 file(s) not shown: b.txt, c.txt"), "{out}");
        assert!(!out.contains("+++ b/c.txt"));
    }

    #[test]
    fn changed_files_are_read_from_git_output() {
        let status = b"M\0src/a.rs\0A\0new.txt\0R090\0old.rs\0moved.rs\0D\0gone.md\0";
        let numstat =
            b"3\t1\tsrc/a.rs\x005\t0\tnew.txt\x001\t1\t\0old.rs\0moved.rs\0-\t-\tgone.md\0";
        let files = parse_files(status, numstat);
        assert_eq!(
            files,
            vec![
                FileChange {
                    path: "src/a.rs".into(),
                    status: "modified".into(),
                    additions: 3,
                    deletions: 1
                },
                FileChange {
                    path: "new.txt".into(),
                    status: "added".into(),
                    additions: 5,
                    deletions: 0
                },
                FileChange {
                    path: "moved.rs".into(),
                    status: "renamed".into(),
                    additions: 1,
                    deletions: 1
                },
                FileChange {
                    path: "gone.md".into(),
                    status: "removed".into(),
                    additions: 0,
                    deletions: 0
                },
            ]
        );
    }
}
