//! Parked work trees: a finished run's checkout, reused for the next run of
//! the same repository.
//!
//! Checking out a large repository is mostly creating files: 50,000 files
//! take 20 s or more on a slow disk, whatever git does. A work tree left by
//! an earlier run of the same repository differs from the new commit in a
//! handful of files, so making it a checkout of the new commit rewrites only
//! those. The tree was in an agent's hands, so nothing of it is trusted:
//!
//! * its `.git` is thrown away when it is parked, and a new one comes from
//!   the mirror (`clone --shared --no-checkout`) when it is reused: a
//!   repository configuration, hooks or an index written by an agent never
//!   reach a host git;
//! * the index git compares against is the copy taskmaster saved right
//!   after its own checkout, before any agent ran (`<run>.index`);
//! * `git reset --hard <sha>` then rewrites every tracked file that differs
//!   from that index **by content**: the restored index is dated at the
//!   epoch, so git holds every entry "racily clean" and hashes the file
//!   instead of trusting its stat data. Stat data alone can be forged within
//!   git's one-second resolution: a step that rewrites a file in the same
//!   second as the checkout, keeping its size and restoring its modification
//!   time, leaves size, mtime, inode and (second-granularity) ctime as the
//!   index has them. Files replaced by symlinks are replaced back (git never
//!   writes through a symlinked leading directory);
//! * `git clean -ffdx` removes everything untracked or ignored (build
//!   output, planted files, nested repositories).
//!
//! Any failure along the way discards the tree and clones afresh. At most
//! [`PARKED_PER_REPOSITORY`] trees are kept per repository, under
//! `pool/<repository id>/`; the sweeper removes them with their mirror.

use std::path::{Path, PathBuf};

use super::{Workspace, WorkspaceError, Workspaces, path_str};

/// Parked work trees kept per repository.
pub const PARKED_PER_REPOSITORY: usize = 2;

impl Workspaces {
    pub(super) fn pool_dir(&self, repo_id: i64) -> PathBuf {
        self.settings
            .data_dir
            .join("pool")
            .join(repo_id.to_string())
    }

    /// The trusted index saved for run `run_id` (a copy of its checkout's
    /// index made before any agent ran).
    pub(super) fn index_path(&self, run_id: i64) -> PathBuf {
        self.workspaces_dir().join(format!("{run_id}.index"))
    }

    /// Parks `ws`'s work tree (without its `.git`) for the next run of its
    /// repository; false when the pool is full or the tree cannot be moved
    /// (the caller removes it then).
    pub(super) async fn park(&self, ws: &Workspace) -> bool {
        let index = self.index_path(ws.run_id);
        if ws.repo_id <= 0 || !index.is_file() {
            return false;
        }
        let pool = self.pool_dir(ws.repo_id);
        if std::fs::create_dir_all(&pool).is_err() {
            return false;
        }
        let parked = std::fs::read_dir(&pool)
            .map(|d| d.flatten().filter(|e| e.path().is_dir()).count())
            .unwrap_or(usize::MAX);
        if parked >= PARKED_PER_REPOSITORY {
            return false;
        }
        if remove_any(&ws.path.join(".git")).is_err() {
            return false;
        }
        let dest = pool.join(ws.run_id.to_string());
        if std::fs::rename(&index, dest.with_extension("index")).is_err() {
            return false;
        }
        if std::fs::rename(&ws.path, &dest).is_err() {
            let _ = std::fs::remove_file(dest.with_extension("index"));
            return false;
        }
        true
    }

    /// Moves a parked tree of `repo_id` to `dest`; returns its trusted index.
    pub(super) fn take_parked(&self, repo_id: i64, dest: &Path) -> Option<PathBuf> {
        let pool = self.pool_dir(repo_id);
        for entry in std::fs::read_dir(&pool).ok()?.flatten() {
            let tree = entry.path();
            let index = tree.with_extension("index");
            if !tree.is_dir() || !index.is_file() {
                continue;
            }
            if std::fs::rename(&tree, dest).is_ok() {
                return Some(index);
            }
        }
        None
    }

    /// Makes the parked tree now at `dir` a clean checkout of `sha` (see
    /// the module docs).
    pub(super) async fn recycle(
        &self,
        mirror: &Path,
        dir: &Path,
        index: &Path,
        sha: &str,
    ) -> Result<(), WorkspaceError> {
        let io = |what: &str| {
            let what = what.to_owned();
            move |source| WorkspaceError::Io { what, source }
        };
        remove_any(&dir.join(".git")).map_err(io("remove a parked tree's .git"))?;
        let fresh = dir.with_extension(format!("git-{}", uuid::Uuid::new_v4().simple()));
        let cloned = self
            .git
            .run(
                None,
                &[
                    "clone",
                    "--shared",
                    "--no-checkout",
                    "--quiet",
                    path_str(mirror)?,
                    path_str(&fresh)?,
                ],
                None,
            )
            .await;
        let moved = cloned.and_then(|_| {
            std::fs::rename(fresh.join(".git"), dir.join(".git"))
                .map_err(io("move the new .git into the parked tree"))
        });
        let _ = std::fs::remove_dir_all(&fresh);
        moved?;
        let restored = dir.join(".git").join("index");
        std::fs::copy(index, &restored).map_err(io("restore the index"))?;
        // Dated at the epoch, the index is older than every file it lists,
        // so git treats each entry as "racily clean" and compares contents,
        // not just stat data (see the module docs).
        std::fs::File::options()
            .write(true)
            .open(&restored)
            .and_then(|f| f.set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(1)))
            .map_err(io("date the restored index"))?;
        self.git
            .run(Some(dir), &["reset", "--quiet", "--hard", sha], None)
            .await?;
        self.git
            .run(Some(dir), &["clean", "--quiet", "-ffdx"], None)
            .await?;
        Ok(())
    }
}

/// Removes `path` whatever it is (a directory, a file, a symlink: never
/// followed); absent is fine.
fn remove_any(path: &Path) -> std::io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}
