//! Checkouts: a run's work tree made from the mirror.

use std::path::Path;

use super::diff::{number_diff, parse_files};
use super::{FileChange, STEERING_PATHS, Target, WorkspaceError, Workspaces, path_str, tree_size};

impl Workspaces {
    /// Makes `dir` a checkout of `sha`: from a parked work tree of the same
    /// repository when there is one ([`Workspaces::recycle`]), else a new
    /// clone; then restores steering files on PR heads and checks the size.
    /// Returns the restored paths, the size in bytes, and whether a parked
    /// tree was used.
    pub(super) async fn checkout(
        &self,
        repo_id: i64,
        mirror: &Path,
        dir: &Path,
        sha: &str,
        base: Option<&str>,
        target: &Target,
    ) -> Result<(Vec<String>, u64, bool), WorkspaceError> {
        let mut recycled = false;
        if let Some(index) = self.take_parked(repo_id, dir) {
            match self.recycle(mirror, dir, &index, sha).await {
                Ok(()) => recycled = true,
                Err(e) => {
                    tracing::debug!(error = %e, "a parked work tree could not be reused; cloning");
                    let _ = tokio::fs::remove_dir_all(dir).await;
                }
            }
            let _ = std::fs::remove_file(&index);
        }
        if !recycled {
            self.clone_into(mirror, dir, sha).await?;
        }
        let (restored, size) = self.prepare(dir, sha, base, target).await?;
        Ok((restored, size, recycled))
    }

    /// `git clone --shared --no-checkout` from the mirror, then a (parallel)
    /// checkout of `sha`.
    async fn clone_into(&self, mirror: &Path, dir: &Path, sha: &str) -> Result<(), WorkspaceError> {
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
        Ok(())
    }

    /// Restores steering files on PR heads and checks the size cap.
    async fn prepare(
        &self,
        dir: &Path,
        sha: &str,
        base: Option<&str>,
        target: &Target,
    ) -> Result<(Vec<String>, u64), WorkspaceError> {
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
    pub(super) async fn restore_from_base(
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
    pub(super) async fn diff(
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
}
