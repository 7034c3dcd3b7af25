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

mod checkout;
mod diff;
pub mod git;
pub mod harvest;
mod mirror;
pub mod pool;
mod request;
mod tokens;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};

pub use diff::{FileChange, HunkHeader, number_diff};
pub use git::Git;
pub use harvest::{
    Change, ChangeLimits, ChangePolicy, ChangedFile, FileStatus, Suggestion, WORKFLOWS_DIR,
    check_policy,
};
pub use request::{CheckoutRequest, Target};
pub use tokens::{Anonymous, GitHubTokens, TokenSource};

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
    /// Caps on a run's change (`TASKMASTER_MAX_CHANGE_FILES`,
    /// `TASKMASTER_MAX_CHANGE_BYTES`).
    pub change_limits: ChangeLimits,
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
            change_limits: ChangeLimits::default(),
            checkout: true,
        }
    }
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
    /// How long making it took, when this call made it; zero when it
    /// already existed. Not kept in the workspace's record (a record read
    /// back is always "already existed"; older records' `duration_ms` is
    /// ignored).
    #[serde(skip)]
    pub duration: std::time::Duration,
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

    pub(super) fn workspaces_dir(&self) -> PathBuf {
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
        let ws: Workspace = serde_json::from_slice(&text).ok()?;
        // Made before: not by this call (`duration` is not in the record).
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
            duration: Default::default(),
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
        ws.duration = started.elapsed();
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
        let phase = Instant::now();
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
        tracing::debug!(
            run_id = %req.run_id,
            ms = phase.elapsed().as_millis() as u64,
            "workspace: fetched and pinned"
        );
        let phase = Instant::now();
        // Check out under a temporary name; rename when complete.
        let tmp = self.workspaces_dir().join(format!(
            ".tmp-{}-{}",
            req.run_id,
            uuid::Uuid::new_v4().simple()
        ));
        let result = self
            .checkout(
                req.repo_id,
                &mirror,
                &tmp,
                &sha,
                base_sha.as_deref(),
                &req.target,
            )
            .await;
        let (restored, size_bytes, recycled) = match result {
            Ok(r) => r,
            Err(e) => {
                let _ = tokio::fs::remove_dir_all(&tmp).await;
                return Err(e);
            }
        };
        tracing::debug!(
            run_id = %req.run_id,
            ms = phase.elapsed().as_millis() as u64,
            "workspace: checked out"
        );
        let phase = Instant::now();
        let (diff, files) = match (&req.target, &base_sha) {
            (Target::PullRequest { .. }, Some(base)) => self.diff(&mirror, base, &sha).await?,
            _ => (String::new(), Vec::new()),
        };
        tracing::debug!(
            run_id = %req.run_id,
            ms = phase.elapsed().as_millis() as u64,
            "workspace: diffed"
        );
        let path = self.workspace_path(req.run_id);
        if path.exists() {
            // A checkout renamed into place by a process that died before
            // writing its record: complete but unrecorded; replace it.
            let _ = tokio::fs::remove_dir_all(&path).await;
        }
        // The index and the manifest as taskmaster's own checkout left the
        // tree, before any agent ran: what a later reuse of this tree is
        // checked against (`pool`).
        std::fs::copy(tmp.join(".git").join("index"), self.index_path(req.run_id))
            .map_err(WorkspaceError::io("save the checkout's index"))?;
        let reused = recycled.is_some();
        let changed = match &recycled {
            // What the reset rewrote, the scrub removed (now rewritten) and
            // the steering restore replaced: only those need a new look.
            Some(r) => {
                let mut changed = self.changed_paths(&mirror, &r.old_sha, &sha).await?;
                changed.extend(restored.iter().cloned());
                changed
            }
            None => Vec::new(),
        };
        let (root, manifest, at) = (tmp.clone(), self.manifest_path(req.run_id), sha.clone());
        tokio::task::spawn_blocking(move || match recycled {
            Some(r) => pool::update_manifest(&root, &manifest, &at, r, &changed),
            None => pool::record_manifest(&root, &manifest, &at),
        })
        .await
        .expect("the manifest walk does not panic")
        .map_err(WorkspaceError::io("record the checkout's manifest"))?;
        tokio::fs::rename(&tmp, &path)
            .await
            .map_err(WorkspaceError::io(format!(
                "move the checkout to {}",
                path.display()
            )))?;
        let fetched = if reused {
            format!("{fetched}; reused a parked work tree of the repository")
        } else {
            fetched
        };
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
            duration: Default::default(),
        })
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
        let existing = self.existing(run_id);
        if failed && !self.settings.keep_failed.is_zero() && existing.is_some() {
            touch(&self.ended_path(run_id));
            return;
        }
        if let Some(ws) = existing {
            self.park(&ws).await;
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
        let _ = tokio::fs::remove_file(self.index_path(run_id)).await;
        let _ = tokio::fs::remove_file(self.manifest_path(run_id)).await;
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
        // A run's entries: `<id>/` and `<id>.json`, `.index`, `.manifest`,
        // `.ended`; each run is looked at once, whichever entry comes first.
        let mut seen = std::collections::HashSet::new();
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(".tmp-") {
                let _ = tokio::fs::remove_dir_all(entry.path()).await;
                workspaces += 1;
                continue;
            }
            if name.ends_with(".tmp") {
                // A record half written when the process died.
                let _ = tokio::fs::remove_file(entry.path()).await;
                continue;
            }
            let Ok(run_id) = name.split('.').next().unwrap_or_default().parse::<i64>() else {
                continue;
            };
            if active.contains(&run_id) || !seen.insert(run_id) {
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
                let prunable = || {
                    let unused = std::fs::metadata(path.join("taskmaster-last-used"))
                        .and_then(|m| m.modified())
                        .ok()
                        .and_then(|at| now.duration_since(at).ok())
                        .is_none_or(|age| age >= self.settings.mirror_ttl);
                    let pins = path.join("refs/taskmaster/runs");
                    let pinned = std::fs::read_dir(&pins).is_ok_and(|mut d| d.next().is_some());
                    unused && !pinned
                };
                if prunable() {
                    let Ok(_guard) = self.lock_mirror(id).await else {
                        continue;
                    };
                    // Looked at again under the lock: a run may have
                    // fetched into it and pinned its commit while this
                    // waited (seen as a flaky test: the sweep at start-up
                    // removed the mirror a first run had just made).
                    if !prunable() {
                        continue;
                    }
                    if tokio::fs::remove_dir_all(&path).await.is_ok() {
                        let _ = tokio::fs::remove_dir_all(self.pool_dir(id)).await;
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

/// Writes `bytes` to `path` atomically (a temporary file of its own, then a
/// rename), so two steps of a run writing the same record at once both
/// succeed and a reader sees one whole record or the other.
fn write_file(path: &Path, bytes: &[u8]) -> Result<(), WorkspaceError> {
    let tmp = path.with_extension(format!("json.{}.tmp", uuid::Uuid::new_v4().simple()));
    std::fs::write(&tmp, bytes)
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(WorkspaceError::io(format!("write {}", path.display())))
}

/// Free bytes for an unprivileged user on `path`'s file system; `None`
/// when it cannot be read.
pub fn free_bytes(path: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid C string and a zeroed statvfs to fill.
    if unsafe { libc::statvfs(c.as_ptr(), &mut stat) } != 0 {
        return None;
    }
    Some(stat.f_bavail as u64 * stat.f_frsize as u64)
}
