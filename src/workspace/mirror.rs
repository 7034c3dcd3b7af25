//! Mirrors: one bare repository per repository id, fetched under a lock.

use std::path::Path;

use secrecy::SecretString;

use super::{MirrorGuard, Target, WorkspaceError, Workspaces, git, path_str, short};

impl Workspaces {
    /// Takes mirror `repo_id`'s locks: the in-process mutex, then the
    /// `flock` on its lock file (released when the guard drops).
    pub(super) async fn lock_mirror(&self, repo_id: i64) -> Result<MirrorGuard, WorkspaceError> {
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

    pub(super) async fn init_mirror(&self, mirror: &Path) -> Result<(), WorkspaceError> {
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
    pub(super) async fn fetch(
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
                .map_err(|e| unreachable(e, &format!("pull request #{number} of {url}")))?;
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
                    .map_err(|e| unreachable(e, &format!("branch `{name}` of {url}")))?;
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

    pub(super) async fn resolve(
        &self,
        mirror: &Path,
        name: &str,
    ) -> Result<String, WorkspaceError> {
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

    pub(super) async fn has_commit(&self, mirror: &Path, sha: &str) -> bool {
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
}

/// A permanent fetch failure of `what` as [`WorkspaceError::Unreachable`]
/// (the repository or ref is gone, or the token may not read it); other
/// errors as they are.
fn unreachable(e: WorkspaceError, what: &str) -> WorkspaceError {
    match e {
        WorkspaceError::Git {
            message,
            transient: false,
            ..
        } => WorkspaceError::Unreachable(format!("cannot fetch {what}: {message}")),
        other => other,
    }
}
