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
//! * right after taskmaster's own checkout, before any agent ran, it saved
//!   the index and a **manifest** of the tree: for every file and symlink,
//!   its inode, size, type and change time to the nanosecond (`ctime`, which
//!   no process can set: any write, rename, chmod or link changes it). It
//!   waits one clock tick after recording, so anything done later carries a
//!   later `ctime`;
//! * before reuse, every path whose stat data no longer matches the manifest
//!   is deleted, and so is every path the manifest does not list (a symlink
//!   swapped in for a directory, a planted file): a missing file is written
//!   anew by the checkout. git's own index comparison is not enough
//!   on its own: it keeps times to the second, and a file rewritten in the
//!   same second as the checkout, with its size and modification time put
//!   back, looks unchanged to it;
//! * `git reset --hard <sha>` with the saved index then rewrites what
//!   differs from the new commit;
//! * everything the manifest does not list goes too (build output, planted
//!   files, nested repositories, directories that hold none of its paths),
//!   so the tree holds the old commit's files, untouched, and nothing else.
//!
//! Any failure along the way discards the tree and clones afresh. At most
//! [`PARKED_PER_REPOSITORY`] trees are kept per repository, under
//! `pool/<repository id>/`; the sweeper removes them with their mirror.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::{Workspace, WorkspaceError, Workspaces};

/// Parked work trees kept per repository.
pub const PARKED_PER_REPOSITORY: usize = 2;

/// A parked tree taken for reuse, with its saved index and manifest.
pub(super) struct Parked {
    pub index: PathBuf,
    pub manifest: PathBuf,
}

impl Parked {
    /// Deletes the saved index and manifest (the tree has moved on).
    pub(super) fn discard(&self) {
        let _ = std::fs::remove_file(&self.index);
        let _ = std::fs::remove_file(&self.manifest);
    }
}

/// One manifest line's stat data: inode, size, change time (s, ns), symlink.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    ino: u64,
    size: u64,
    ctime: i64,
    ctime_ns: i64,
    symlink: bool,
}

impl Stamp {
    fn of(meta: &std::fs::Metadata) -> Self {
        Stamp {
            ino: meta.ino(),
            size: meta.size(),
            ctime: meta.ctime(),
            ctime_ns: meta.ctime_nsec(),
            symlink: meta.file_type().is_symlink(),
        }
    }
}

/// Every file and symlink under `root` (`.git` left out), by relative path,
/// without following symlinks.
fn walk(root: &Path) -> std::io::Result<Vec<(PathBuf, std::fs::Metadata)>> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        for entry in std::fs::read_dir(root.join(&rel))? {
            let entry = entry?;
            let name = rel.join(entry.file_name());
            if rel.as_os_str().is_empty() && entry.file_name() == ".git" {
                continue;
            }
            let meta = entry.path().symlink_metadata()?;
            if meta.is_dir() {
                stack.push(name);
            } else {
                out.push((name, meta));
            }
        }
    }
    Ok(out)
}

/// A tree kept from a parked one: the commit it was a checkout of, and the
/// manifest entries of the files left untouched.
pub(super) struct Recycled {
    /// The parked tree's commit.
    pub old_sha: String,
    /// Entries that survived the scrub, still true.
    kept: Vec<(String, Stamp)>,
}

fn invalid(what: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned())
}

fn utf8(path: PathBuf) -> std::io::Result<String> {
    path.into_os_string()
        .into_string()
        .map_err(|_| invalid("a path that is not UTF-8"))
}

/// Writes a manifest (`commit <sha>`, then one line per entry), syncs it,
/// and waits a clock tick so later changes carry later change times.
fn write_manifest<'a>(
    to: &Path,
    sha: &str,
    entries: impl IntoIterator<Item = (&'a str, Stamp)>,
) -> std::io::Result<()> {
    use std::io::Write;
    let mut out = std::io::BufWriter::new(std::fs::File::create(to)?);
    writeln!(out, "commit {sha}")?;
    for (path, s) in entries {
        writeln!(
            out,
            "{} {} {} {} {} {path}",
            s.ino, s.size, s.ctime, s.ctime_ns, s.symlink as u8
        )?;
    }
    out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    std::thread::sleep(std::time::Duration::from_millis(10));
    Ok(())
}

/// Records the manifest of `root`, a checkout of `sha`, into `to` (see the
/// module docs): a walk of the whole tree.
pub(super) fn record_manifest(root: &Path, to: &Path, sha: &str) -> std::io::Result<()> {
    let mut entries = Vec::new();
    for (path, meta) in walk(root)? {
        entries.push((utf8(path)?, Stamp::of(&meta)));
    }
    write_manifest(to, sha, entries.iter().map(|(p, s)| (p.as_str(), *s)))
}

/// Records the manifest of a reused tree without walking all of it: the
/// entries `recycled` kept, less the `changed` paths (and everything under
/// them), plus those paths as they are now. A path missed here costs only
/// speed: at the next reuse its entry does not match, and it is rewritten.
pub(super) fn update_manifest(
    root: &Path,
    to: &Path,
    sha: &str,
    recycled: Recycled,
    changed: &[String],
) -> std::io::Result<()> {
    let touched = |p: &str| {
        changed.iter().any(|c| {
            p == c || (p.starts_with(c.as_str()) && p.as_bytes().get(c.len()) == Some(&b'/'))
        })
    };
    let mut entries: HashMap<String, Stamp> = recycled
        .kept
        .into_iter()
        .filter(|(p, _)| !touched(p))
        .collect();
    for path in changed {
        let full = root.join(path);
        let Ok(meta) = full.symlink_metadata() else {
            continue;
        };
        if meta.is_dir() {
            for (sub, meta) in walk(&full)? {
                entries.insert(utf8(Path::new(path).join(sub))?, Stamp::of(&meta));
            }
        } else {
            entries.insert(path.clone(), Stamp::of(&meta));
        }
    }
    write_manifest(to, sha, entries.iter().map(|(p, s)| (p.as_str(), *s)))
}

/// Makes `root` hold nothing but what `manifest` lists, unchanged: deletes
/// every file or symlink whose stat data differs or that it does not list,
/// and every directory that holds none of its paths. Returns the manifest's
/// commit, the entries kept, and how many entries went.
fn scrub(root: &Path, manifest: &Path) -> std::io::Result<(Recycled, usize)> {
    let text = std::fs::read_to_string(manifest)?;
    let mut lines = text.lines();
    let old_sha = lines
        .next()
        .and_then(|l| l.strip_prefix("commit "))
        .filter(|sha| super::git::valid_sha(sha))
        .ok_or_else(|| invalid("a manifest without its commit"))?
        .to_owned();
    let mut recorded: HashMap<&str, Stamp> = HashMap::new();
    let mut dirs: std::collections::HashSet<&str> = std::collections::HashSet::new();
    for line in lines {
        let mut f = line.splitn(6, ' ');
        let mut num = || f.next().and_then(|v| v.parse::<i64>().ok());
        let (Some(ino), Some(size), Some(ctime), Some(ctime_ns), Some(symlink)) =
            (num(), num(), num(), num(), num())
        else {
            return Err(invalid("a bad manifest line"));
        };
        let path = f.next().unwrap_or_default();
        let mut at = path;
        while let Some((parent, _)) = at.rsplit_once('/') {
            dirs.insert(parent);
            at = parent;
        }
        recorded.insert(
            path,
            Stamp {
                ino: ino as u64,
                size: size as u64,
                ctime,
                ctime_ns,
                symlink: symlink == 1,
            },
        );
    }
    let mut removed = 0;
    let mut kept = Vec::with_capacity(recorded.len());
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        for entry in std::fs::read_dir(root.join(&rel))? {
            let entry = entry?;
            if rel.as_os_str().is_empty() && entry.file_name() == ".git" {
                continue;
            }
            let name = rel.join(entry.file_name());
            let key = name.to_str().unwrap_or("\0");
            let meta = entry.path().symlink_metadata()?;
            let keep = if meta.is_dir() {
                dirs.contains(key)
            } else {
                let stamp = Stamp::of(&meta);
                let same = recorded.get(key).is_some_and(|s| *s == stamp);
                if same {
                    kept.push((key.to_owned(), stamp));
                }
                same
            };
            if !keep {
                remove_any(&entry.path())?;
                removed += 1;
            } else if meta.is_dir() {
                stack.push(name);
            }
        }
    }
    Ok((Recycled { old_sha, kept }, removed))
}

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
        let manifest = self.manifest_path(ws.run_id);
        if ws.repo_id <= 0 || !index.is_file() || !manifest.is_file() {
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
        if std::fs::rename(&index, dest.with_extension("index")).is_err()
            || std::fs::rename(&manifest, dest.with_extension("manifest")).is_err()
        {
            let _ = std::fs::remove_file(dest.with_extension("index"));
            return false;
        }
        if std::fs::rename(&ws.path, &dest).is_err() {
            let _ = std::fs::remove_file(dest.with_extension("index"));
            let _ = std::fs::remove_file(dest.with_extension("manifest"));
            return false;
        }
        true
    }

    /// The manifest recorded for run `run_id` (see the module docs).
    pub(super) fn manifest_path(&self, run_id: i64) -> PathBuf {
        self.workspaces_dir().join(format!("{run_id}.manifest"))
    }

    /// Moves a parked tree of `repo_id` to `dest`; returns its saved index
    /// and manifest.
    pub(super) fn take_parked(&self, repo_id: i64, dest: &Path) -> Option<Parked> {
        let pool = self.pool_dir(repo_id);
        for entry in std::fs::read_dir(&pool).ok()?.flatten() {
            let tree = entry.path();
            let parked = Parked {
                index: tree.with_extension("index"),
                manifest: tree.with_extension("manifest"),
            };
            if !tree.is_dir() || !parked.index.is_file() || !parked.manifest.is_file() {
                continue;
            }
            if std::fs::rename(&tree, dest).is_ok() {
                return Some(parked);
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
        parked: &Parked,
        sha: &str,
    ) -> Result<Recycled, WorkspaceError> {
        let io = |what: &str| {
            let what = what.to_owned();
            move |source| WorkspaceError::Io { what, source }
        };
        remove_any(&dir.join(".git")).map_err(io("remove a parked tree's .git"))?;
        let (root, manifest) = (dir.to_owned(), parked.manifest.clone());
        let (recycled, scrubbed) = tokio::task::spawn_blocking(move || scrub(&root, &manifest))
            .await
            .expect("the scrub does not panic")
            .map_err(io("compare the parked tree with its manifest"))?;
        tracing::debug!(scrubbed, "parked tree: changed paths removed");
        let fresh = dir.with_extension(format!("git-{}", uuid::Uuid::new_v4().simple()));
        let cloned = self.clone_shared(mirror, &fresh).await;
        let moved = cloned.and_then(|_| {
            std::fs::rename(fresh.join(".git"), dir.join(".git"))
                .map_err(io("move the new .git into the parked tree"))
        });
        let _ = std::fs::remove_dir_all(&fresh);
        moved?;
        std::fs::copy(&parked.index, dir.join(".git").join("index"))
            .map_err(io("restore the index"))?;
        self.git
            .run(Some(dir), &["reset", "--quiet", "--hard", sha], None)
            .await?;
        Ok(recycled)
    }
}

/// Removes `path` whatever it is (a directory, a file, a symlink: never
/// followed); absent is fine.
pub(super) fn remove_any(path: &Path) -> std::io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}
