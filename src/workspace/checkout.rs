//! Checkouts: a run's work tree made from the mirror.

use std::path::Path;

use super::diff::{number_diff, parse_files};
use super::pool::remove_any;
use super::{FileChange, STEERING_PATHS, Target, WorkspaceError, Workspaces, path_str};

impl Workspaces {
    /// Makes `dir` a checkout of `sha`: checks the size cap first (from the
    /// mirror, before writing anything), then takes a parked work tree of
    /// the same repository when there is one ([`Workspaces::recycle`]), else
    /// clones; then restores steering files on PR heads.
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
    ) -> Result<(Vec<String>, u64, Option<super::pool::Recycled>), WorkspaceError> {
        let size = self.check_size(mirror, sha).await?;
        let mut recycled = None;
        if let Some(parked) = self.take_parked(repo_id, dir) {
            match self.recycle(mirror, dir, &parked, sha).await {
                Ok(kept) => recycled = Some(kept),
                Err(e) => {
                    tracing::debug!(error = %e, "a parked work tree could not be reused; cloning");
                    let _ = tokio::fs::remove_dir_all(dir).await;
                }
            }
            parked.discard();
        }
        if recycled.is_none() {
            self.clone_into(mirror, dir, sha).await?;
        }
        let restored = self.prepare(mirror, dir, sha, base, target).await?;
        Ok((restored, size, recycled))
    }

    /// `git clone --shared --no-checkout` of `mirror` into `dest` (a new
    /// directory): a `.git` that borrows the mirror's objects, no files.
    pub(super) async fn clone_shared(
        &self,
        mirror: &Path,
        dest: &Path,
    ) -> Result<(), WorkspaceError> {
        self.git
            .run(
                None,
                &[
                    "clone",
                    "--shared",
                    "--no-checkout",
                    "--quiet",
                    path_str(mirror)?,
                    path_str(dest)?,
                ],
                None,
            )
            .await
            .map(drop)
    }

    /// `git clone --shared --no-checkout` from the mirror, then a (parallel)
    /// checkout of `sha`.
    async fn clone_into(&self, mirror: &Path, dir: &Path, sha: &str) -> Result<(), WorkspaceError> {
        self.clone_shared(mirror, dir).await?;
        self.git
            .run(Some(dir), &["checkout", "--quiet", "--detach", sha], None)
            .await?;
        Ok(())
    }

    /// The paths that differ between commits `from` and `to` (both sides of
    /// renames), read from the mirror.
    pub(super) async fn changed_paths(
        &self,
        mirror: &Path,
        from: &str,
        to: &str,
    ) -> Result<Vec<String>, WorkspaceError> {
        let out = self
            .git
            .run(
                None,
                &[
                    "--git-dir",
                    path_str(mirror)?,
                    "diff",
                    "--name-only",
                    "--no-renames",
                    "-z",
                    from,
                    to,
                ],
                None,
            )
            .await?;
        Ok(out
            .stdout
            .split(|b| *b == 0)
            .filter(|p| !p.is_empty())
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .collect())
    }

    /// Restores steering files on PR heads (see [`STEERING_PATHS`]):
    /// compares the head's and the base's entries for them (two `ls-tree`
    /// calls), removes the head's where they differ and puts the base's
    /// back (one `restore`). Returns the paths it changed.
    async fn prepare(
        &self,
        mirror: &Path,
        dir: &Path,
        sha: &str,
        base: Option<&str>,
        target: &Target,
    ) -> Result<Vec<String>, WorkspaceError> {
        let (Target::PullRequest { .. }, Some(base)) = (target, base) else {
            return Ok(Vec::new());
        };
        let at_head = self.entries(mirror, sha, STEERING_PATHS).await?;
        let at_base = self.entries(mirror, base, STEERING_PATHS).await?;
        let mut restored = Vec::new();
        let mut from_base = Vec::new();
        for path in STEERING_PATHS {
            let (h, b) = (at_head.get(*path), at_base.get(*path));
            if h == b {
                continue;
            }
            remove_any(&dir.join(path))
                .map_err(WorkspaceError::io(format!("remove the PR's {path}")))?;
            if b.is_some() {
                from_base.push(*path);
            }
            restored.push((*path).to_owned());
        }
        if !from_base.is_empty() {
            let source = format!("--source={base}");
            let mut args = vec!["restore", source.as_str(), "--worktree", "--"];
            args.extend(from_base);
            self.git.run(Some(dir), &args, None).await?;
        }
        Ok(restored)
    }

    /// The top-level entries `paths` of commit `rev` (mode and object id by
    /// path), read from the mirror.
    async fn entries(
        &self,
        mirror: &Path,
        rev: &str,
        paths: &[&str],
    ) -> Result<std::collections::HashMap<String, String>, WorkspaceError> {
        let mut args = vec!["--git-dir", path_str(mirror)?, "ls-tree", "-z", rev, "--"];
        args.extend_from_slice(paths);
        let out = self.git.run(None, &args, None).await?;
        Ok(out
            .stdout
            .split(|b| *b == 0)
            .filter_map(|entry| {
                let entry = String::from_utf8_lossy(entry);
                let (meta, path) = entry.split_once('\t')?;
                let mut meta = meta.split(' ');
                let mode = meta.next()?;
                let _kind = meta.next()?;
                let oid = meta.next()?;
                Some((path.to_owned(), format!("{mode} {oid}")))
            })
            .collect())
    }

    /// Bytes of the files of commit `sha` (`ls-tree -r -l`), read from the
    /// mirror before anything is written; an error when over the cap.
    async fn check_size(&self, mirror: &Path, sha: &str) -> Result<u64, WorkspaceError> {
        let out = self
            .git
            .run(
                None,
                &[
                    "--git-dir",
                    path_str(mirror)?,
                    "ls-tree",
                    "-r",
                    "-l",
                    "-z",
                    sha,
                ],
                None,
            )
            .await?;
        let size: u64 = out
            .stdout
            .split(|b| *b == 0)
            .filter_map(|entry| {
                let entry = String::from_utf8_lossy(entry);
                let (meta, _path) = entry.split_once('\t')?;
                meta.split_whitespace().nth(3)?.parse::<u64>().ok()
            })
            .sum();
        if size > self.settings.max_workspace_bytes {
            return Err(WorkspaceError::Disk {
                message: format!(
                    "the commit's files are {} MB, over the cap of {} MB per workspace \
                     (TASKMASTER_MAX_WORKSPACE_MB)",
                    size / 1_000_000,
                    self.settings.max_workspace_bytes / 1_000_000
                ),
                transient: false,
            });
        }
        Ok(size)
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
