//! Harvest: what a step changed in its run's workspace, computed with a
//! trusted git directory, and the policy a change must pass before anything
//! of it reaches GitHub.
//!
//! The agent had the workspace — its `.git` included — to itself, so nothing
//! in it is trusted: its hooks, its config (`core.fsmonitor`), its index,
//! its commits. The change is computed by taskmaster's own git directory,
//! `workspaces/<run>.harvest.git`, which no sandbox ever sees: a bare
//! repository borrowing the mirror's objects, whose index starts as the one
//! taskmaster's checkout wrote (`<run>.index`), then
//!
//! ```text
//! git --git-dir=<trusted> --work-tree=<workspace> add -A
//! git … reset -q <checkout sha> -- <STEERING_PATHS>
//! git … diff --cached --no-renames <checkout sha>
//! ```
//!
//! So the change is the work tree's *state* against the commit the run
//! checked out, whatever the agent committed (Aider commits on its own) or
//! staged; files that steer agents ([`super::STEERING_PATHS`]) never appear
//! in it, and git runs with hooks, fsmonitor and system/global config off
//! ([`super::git`]). Ignored files (`.gitignore`) are left out, as a `git
//! add -A` would. Source: `WORKSPACES.md` ("Bringing changes back").

use std::collections::BTreeMap;
use std::path::{Component, Path};

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use super::{HunkHeader, STEERING_PATHS, WorkspaceError, Workspaces, path_str};
use crate::redact::Redactor;

/// Limits on one change, and on what of its diff is kept for display.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChangeLimits {
    /// Files changed at most (`TASKMASTER_MAX_CHANGE_FILES`).
    pub max_files: usize,
    /// Bytes of new file contents at most (`TASKMASTER_MAX_CHANGE_BYTES`).
    pub max_bytes: u64,
    /// Bytes of the unified diff kept with the run (the rest is cut with a
    /// note; the commit itself is made from the blobs, not from this text).
    pub diff_limit: usize,
}

impl Default for ChangeLimits {
    fn default() -> Self {
        Self {
            max_files: 300,
            max_bytes: 10 * 1024 * 1024,
            diff_limit: 512 * 1024,
        }
    }
}

/// How a file changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileStatus {
    Added,
    Modified,
    Deleted,
    /// A file became a symlink or the reverse.
    TypeChanged,
}

/// One changed path of a [`Change`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangedFile {
    /// Path from the repository root.
    pub path: String,
    pub status: FileStatus,
    /// Git mode before (`100644`, `100755`, `120000`, `160000`); `None` when added.
    pub old_mode: Option<String>,
    /// Git mode after; `None` when deleted.
    pub new_mode: Option<String>,
    /// The new blob's SHA; `None` when deleted.
    pub sha: Option<String>,
    /// Size of the new content, bytes (0 when deleted).
    pub size: u64,
    /// Lines added (0 for binary files).
    pub additions: u64,
    /// Lines removed (0 for binary files).
    pub deletions: u64,
    /// Git saw binary content.
    pub binary: bool,
}

/// What a step changed in its run's workspace, against the commit the run
/// checked out. Stored with the run; the commit is made from it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    /// The commit the change is on (the run's checkout).
    pub base_sha: String,
    /// The changed paths, sorted.
    pub files: Vec<ChangedFile>,
    /// Lines added over all files.
    pub additions: u64,
    /// Lines removed over all files.
    pub deletions: u64,
    /// The unified diff (text; binary files as one line), cut at
    /// [`ChangeLimits::diff_limit`].
    pub diff: String,
    /// Whether [`Change::diff`] was cut.
    pub diff_truncated: bool,
    /// The tree of [`Change::base_sha`] (the new tree is made on it).
    #[serde(default)]
    pub base_tree: String,
    /// For a pull request's checkout: the change as review suggestions on
    /// lines inside the pull request's diff hunks (the only lines GitHub
    /// takes review comments on).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub suggestions: Vec<Suggestion>,
    /// For a pull request's checkout: parts of the change that fall outside
    /// the pull request's hunks (sent only as the patch).
    #[serde(default)]
    pub outside_hunks: u64,
    /// Pull requests the agent opened itself (Codegen): linked instead of
    /// opening another.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub linked_pull_requests: Vec<String>,
    /// The step whose output is the pull request's text (`pull_request: true`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pull_request_step: Option<String>,
    /// New contents by blob SHA, base64: what the commit is made of, so a
    /// change can be sent from any replica after its workspace is gone.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub blobs: BTreeMap<String, String>,
}

/// Lines `start_line..=line` (new side of a pull request) replaced by
/// `replacement` (empty: the lines are deleted).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Suggestion {
    pub path: String,
    pub start_line: u64,
    pub line: u64,
    pub replacement: String,
}

impl Change {
    /// True when nothing changed.
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// The decoded content of blob `sha`.
    pub fn blob(&self, sha: &str) -> Option<Vec<u8>> {
        self.blobs
            .get(sha)
            .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
    }

    /// A copy without the blobs (for views).
    pub fn without_blobs(&self) -> Change {
        Change {
            blobs: BTreeMap::new(),
            ..self.clone()
        }
    }
}

/// What a workflow allows a change to do.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ChangePolicy {
    /// The workflow sets `allow_workflow_changes: true` (the App must also
    /// hold the `workflows` permission; that is checked when the commit is
    /// made).
    pub allow_workflow_changes: bool,
}

/// The folder GitHub Actions reads workflows from.
pub const WORKFLOWS_DIR: &str = ".github/workflows/";

/// Checks `change` against `policy`, `limits` and the secret patterns of
/// `redactor`. `Err` is the reason, written for the person who must act on
/// it (what was found, where, and how to allow it when it can be allowed).
pub fn check_policy(
    change: &Change,
    policy: ChangePolicy,
    limits: ChangeLimits,
    redactor: &Redactor,
) -> Result<(), String> {
    if change.files.len() > limits.max_files {
        return Err(format!(
            "the change touches {} files, more than the limit of {} \
             (TASKMASTER_MAX_CHANGE_FILES)",
            change.files.len(),
            limits.max_files
        ));
    }
    let bytes: u64 = change.files.iter().map(|f| f.size).sum();
    if bytes > limits.max_bytes {
        return Err(format!(
            "the change writes {bytes} bytes of file contents, more than the limit of {} \
             (TASKMASTER_MAX_CHANGE_BYTES)",
            limits.max_bytes
        ));
    }
    for f in &change.files {
        if !policy.allow_workflow_changes && f.path.starts_with(WORKFLOWS_DIR) {
            return Err(format!(
                "the change edits `{}`, a GitHub Actions workflow: set \
                 `allow_workflow_changes: true` on the workflow and grant the App the \
                 `workflows` permission to allow that",
                f.path
            ));
        }
        if f.old_mode.as_deref() == Some("160000") || f.new_mode.as_deref() == Some("160000") {
            return Err(format!(
                "the change moves the submodule (or nested repository) `{}`: submodule \
                 pointers are never changed by taskmaster",
                f.path
            ));
        }
        if f.new_mode.as_deref() == Some("120000") {
            let target = f
                .sha
                .as_deref()
                .and_then(|sha| change.blob(sha))
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default();
            if !link_stays_inside(&f.path, &target) {
                return Err(format!(
                    "`{}` is a symlink to `{target}`, outside the repository",
                    f.path
                ));
            }
        }
    }
    // Every added line, in the full diff (not the cut one kept for display).
    let mut current = String::new();
    let mut line_no: u64 = 0;
    for line in full_diff_lines(change) {
        if let Some(path) = line.strip_prefix("+++ b/") {
            current = path.to_owned();
            continue;
        }
        if line.starts_with("@@ ") {
            line_no = HunkHeader::parse(&line).map_or(1, |h| h.new_start);
            continue;
        }
        if line.starts_with("+++") || line.starts_with("---") {
            continue;
        }
        if let Some(added) = line.strip_prefix('+') {
            if let Some(kind) = redactor.secret_kind(added) {
                return Err(format!(
                    "line {line_no} of `{current}` adds what looks like a secret ({kind}); \
                     secrets never leave through a commit: remove it from the change"
                ));
            }
            line_no += 1;
        } else if !line.starts_with('-') && !line.starts_with('\\') {
            line_no += 1;
        }
    }
    Ok(())
}

/// The lines of the change's diff for the secret scan: the kept diff, plus
/// every text blob's lines when the kept diff was cut (so the cut never
/// hides a secret).
fn full_diff_lines(change: &Change) -> Vec<String> {
    let mut lines: Vec<String> = change.diff.lines().map(str::to_owned).collect();
    if change.diff_truncated {
        for f in &change.files {
            let Some(content) = f.sha.as_deref().and_then(|s| change.blob(s)) else {
                continue;
            };
            lines.push(format!("+++ b/{}", f.path));
            lines.push("@@ -0,0 +1 @@".into());
            for l in String::from_utf8_lossy(&content).lines() {
                lines.push(format!("+{l}"));
            }
        }
    }
    lines
}

/// Whether a symlink at `path` pointing to `target` resolves inside the
/// repository (relative, and never climbing above the root).
fn link_stays_inside(path: &str, target: &str) -> bool {
    if target.is_empty() || Path::new(target).is_absolute() {
        return false;
    }
    let mut depth: i64 = path.matches('/').count() as i64;
    for c in Path::new(target).components() {
        match c {
            Component::Normal(_) => depth += 1,
            Component::ParentDir => {
                depth -= 1;
                if depth < 0 {
                    return false;
                }
            }
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) => return false,
        }
    }
    true
}

impl Workspaces {
    fn harvest_dir(&self, run_id: i64) -> std::path::PathBuf {
        self.workspaces_dir().join(format!("{run_id}.harvest.git"))
    }

    /// What the run's workspace holds now against the commit it checked
    /// out, computed with a trusted git directory (module docs). `None` when
    /// the run has no checkout (a scratch directory, or checkouts off).
    ///
    /// Files over [`ChangeLimits`] are still listed (so the refusal can say
    /// how far over), but their contents are not read.
    ///
    /// # Errors
    /// [`WorkspaceError::Git`] when git fails; [`WorkspaceError::Io`] for
    /// the trusted directory.
    pub async fn harvest(
        &self,
        run_id: i64,
        limits: ChangeLimits,
    ) -> Result<Option<Change>, WorkspaceError> {
        let Some(ws) = self.existing(run_id) else {
            return Ok(None);
        };
        if ws.repo_id <= 0 || ws.sha.is_empty() {
            return Ok(None);
        }
        let trusted = self.harvest_dir(run_id);
        let _ = tokio::fs::remove_dir_all(&trusted).await;
        let result = self.harvest_in(&trusted, &ws, limits).await;
        let _ = tokio::fs::remove_dir_all(&trusted).await;
        result.map(Some)
    }

    async fn harvest_in(
        &self,
        trusted: &Path,
        ws: &super::Workspace,
        limits: ChangeLimits,
    ) -> Result<Change, WorkspaceError> {
        self.git
            .run(None, &["init", "-q", "--bare", path_str(trusted)?], None)
            .await?;
        let alternates = trusted.join("objects").join("info").join("alternates");
        std::fs::write(
            &alternates,
            format!("{}\n", ws.mirror.join("objects").display()),
        )
        .map_err(WorkspaceError::io(
            "write the trusted git directory's alternates",
        ))?;
        let git_dir = format!("--git-dir={}", path_str(trusted)?);
        let work_tree = format!("--work-tree={}", path_str(&ws.path)?);
        let base = ws.sha.as_str();
        let g = |args: &[&str]| {
            let mut all = vec![git_dir.as_str(), work_tree.as_str()];
            all.extend_from_slice(args);
            all.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>()
        };
        // The checkout's own index (stat data of the files taskmaster
        // wrote) spares hashing every unchanged file; without it, the tree.
        let saved = self.index_path(ws.run_id);
        if saved.exists() {
            let copy = trusted.join("index");
            std::fs::copy(&saved, &copy)
                .map_err(WorkspaceError::io("copy the checkout's index"))?;
            // The copy keeps the original's time, so git's racy-entry check
            // (an entry as new as its index is compared by content) works as
            // it would have on the original. Entries are trusted only when
            // size, mtime *and* ctime match; no tool can set a file's ctime
            // back, so an edit is never mistaken for the checked-out file.
            if let Ok(at) = std::fs::metadata(&saved).and_then(|m| m.modified()) {
                let _ = std::fs::File::options()
                    .write(true)
                    .open(&copy)
                    .and_then(|f| f.set_modified(at));
            }
        } else {
            self.run_args(&ws.path, &g(&["read-tree", base])).await?;
        }
        self.run_args(&ws.path, &g(&["add", "-A"])).await?;
        let mut reset = g(&["reset", "-q", base, "--"]);
        reset.extend(STEERING_PATHS.iter().map(|p| (*p).to_owned()));
        self.run_args(&ws.path, &reset).await?;

        let raw = self
            .run_args(
                &ws.path,
                &g(&[
                    "diff",
                    "--cached",
                    "--no-renames",
                    "--raw",
                    "-z",
                    "--no-abbrev",
                    base,
                ]),
            )
            .await?;
        let numstat = self
            .run_args(
                &ws.path,
                &g(&["diff", "--cached", "--no-renames", "--numstat", "-z", base]),
            )
            .await?;
        let mut files = parse_raw(&raw)?;
        let counts = parse_numstat(&numstat);
        for f in &mut files {
            if let Some((add, del, binary)) = counts.get(&f.path) {
                f.additions = *add;
                f.deletions = *del;
                f.binary = *binary;
            }
        }
        // Sizes of the new blobs, then their contents when within limits.
        let new_shas: Vec<String> = files.iter().filter_map(|f| f.sha.clone()).collect();
        let mut blobs = BTreeMap::new();
        if !new_shas.is_empty() {
            let input = new_shas.join("\n") + "\n";
            let out = self
                .git
                .run_with_input(
                    Some(&ws.path),
                    &[
                        git_dir.as_str(),
                        "cat-file",
                        "--batch-check=%(objectname) %(objectsize)",
                    ],
                    None,
                    Some(input.into_bytes()),
                )
                .await?;
            let sizes: BTreeMap<String, u64> = String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter_map(|l| {
                    let (sha, size) = l.split_once(' ')?;
                    Some((sha.to_owned(), size.parse().ok()?))
                })
                .collect();
            for f in &mut files {
                if let Some(sha) = &f.sha {
                    f.size = sizes.get(sha).copied().unwrap_or(0);
                }
            }
            let total: u64 = files.iter().map(|f| f.size).sum();
            if files.len() <= limits.max_files && total <= limits.max_bytes {
                let out = self
                    .git
                    .run_with_input(
                        Some(&ws.path),
                        &[git_dir.as_str(), "cat-file", "--batch"],
                        None,
                        Some((new_shas.join("\n") + "\n").into_bytes()),
                    )
                    .await?;
                blobs = parse_batch(&out.stdout);
            }
        }
        let diff_out = self
            .run_args(
                &ws.path,
                &g(&["diff", "--cached", "--no-renames", "--no-color", base]),
            )
            .await?;
        let diff_text = String::from_utf8_lossy(&diff_out);
        let (diff, diff_truncated) = if diff_text.len() > limits.diff_limit {
            let mut cut = limits.diff_limit;
            while !diff_text.is_char_boundary(cut) {
                cut -= 1;
            }
            (diff_text[..cut].to_owned(), true)
        } else {
            (diff_text.into_owned(), false)
        };
        let base_tree = self
            .git
            .text(
                Some(&ws.path),
                &[git_dir.as_str(), "rev-parse", &format!("{base}^{{tree}}")],
            )
            .await?;
        let (suggestions, outside_hunks) = match ws.base_sha.as_deref() {
            Some(pr_base) if !files.is_empty() => {
                self.suggestions(&ws.path, &git_dir, &work_tree, pr_base, base)
                    .await?
            }
            _ => (Vec::new(), 0),
        };
        Ok(Change {
            base_tree,
            suggestions,
            outside_hunks,
            pull_request_step: None,
            linked_pull_requests: Vec::new(),
            base_sha: base.to_owned(),
            additions: files.iter().map(|f| f.additions).sum(),
            deletions: files.iter().map(|f| f.deletions).sum(),
            files,
            diff,
            diff_truncated,
            blobs,
        })
    }

    /// The change as suggestions on a pull request whose base is `pr_base`
    /// and whose head is `head` (the checkout): each `-U0` hunk of the
    /// change becomes one suggestion when all its lines lie inside one hunk
    /// of the pull request's diff (`pr_base...head`); the rest is counted.
    async fn suggestions(
        &self,
        dir: &Path,
        git_dir: &str,
        work_tree: &str,
        pr_base: &str,
        head: &str,
    ) -> Result<(Vec<Suggestion>, u64), WorkspaceError> {
        let pr = self
            .git
            .run(
                Some(dir),
                &[
                    git_dir,
                    "diff",
                    "-U3",
                    "--no-renames",
                    "--no-color",
                    &format!("{pr_base}...{head}"),
                ],
                None,
            )
            .await?;
        let pr_hunks = new_side_ranges(&String::from_utf8_lossy(&pr.stdout));
        let own = self
            .git
            .run(
                Some(dir),
                &[
                    git_dir,
                    work_tree,
                    "diff",
                    "--cached",
                    "-U0",
                    "--no-renames",
                    "--no-color",
                    head,
                ],
                None,
            )
            .await?;
        let mut out = Vec::new();
        let mut outside = 0;
        let mut heads: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for hunk in zero_context_hunks(&String::from_utf8_lossy(&own.stdout)) {
            let (start, end, mut lines) = if hunk.old_count > 0 {
                (
                    hunk.old_start,
                    hunk.old_start + hunk.old_count - 1,
                    hunk.added.clone(),
                )
            } else {
                // A pure insertion after line `old_start` (0: at the top):
                // suggest on a neighbouring line, repeating it.
                if !heads.contains_key(&hunk.path) {
                    let text = self
                        .git
                        .run(
                            Some(dir),
                            &[git_dir, "show", &format!("{head}:{}", hunk.path)],
                            None,
                        )
                        .await
                        .map(|o| {
                            String::from_utf8_lossy(&o.stdout)
                                .lines()
                                .map(str::to_owned)
                                .collect()
                        })
                        .unwrap_or_default();
                    heads.insert(hunk.path.clone(), text);
                }
                let old = &heads[&hunk.path];
                if hunk.old_start == 0 {
                    let Some(first) = old.first() else {
                        outside += 1;
                        continue;
                    };
                    let mut l = hunk.added.clone();
                    l.push(first.clone());
                    (1, 1, l)
                } else {
                    let at = hunk.old_start;
                    let Some(line) = old.get(at as usize - 1) else {
                        outside += 1;
                        continue;
                    };
                    let mut l = vec![line.clone()];
                    l.extend(hunk.added.iter().cloned());
                    (at, at, l)
                }
            };
            let inside = pr_hunks
                .get(&hunk.path)
                .is_some_and(|ranges| ranges.iter().any(|(a, b)| *a <= start && end <= *b));
            if !inside || hunk.binary {
                outside += 1;
                continue;
            }
            let mut replacement = lines.join("\n");
            if !lines.is_empty() {
                replacement.push('\n');
            }
            lines.clear();
            out.push(Suggestion {
                path: hunk.path.clone(),
                start_line: start,
                line: end,
                replacement,
            });
        }
        Ok((out, outside))
    }

    async fn run_args(&self, dir: &Path, args: &[String]) -> Result<Vec<u8>, WorkspaceError> {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        Ok(self.git.run(Some(dir), &refs, None).await?.stdout)
    }
}

/// New-side line ranges (inclusive) of each file's hunks in a unified diff.
fn new_side_ranges(diff: &str) -> BTreeMap<String, Vec<(u64, u64)>> {
    let mut map: BTreeMap<String, Vec<(u64, u64)>> = BTreeMap::new();
    let mut current = None;
    for line in diff.lines() {
        if let Some(path) = line.strip_prefix("+++ b/") {
            current = Some(path.to_owned());
        } else if line.starts_with("+++ ") {
            current = None;
        } else if let (Some(range), Some(path)) = (
            HunkHeader::parse(line).and_then(|h| h.new_range()),
            &current,
        ) {
            map.entry(path.clone()).or_default().push(range);
        }
    }
    map
}

/// One hunk of a `-U0` diff.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ZeroHunk {
    path: String,
    old_start: u64,
    old_count: u64,
    added: Vec<String>,
    binary: bool,
}

/// The hunks of a `git diff -U0` (modified text files only: added and
/// deleted files have no lines on the pull request's side to suggest on).
fn zero_context_hunks(diff: &str) -> Vec<ZeroHunk> {
    let mut out: Vec<ZeroHunk> = Vec::new();
    let mut path: Option<String> = None;
    let mut from_dev_null = false;
    for line in diff.lines() {
        if line.starts_with("diff --git ") {
            path = None;
            from_dev_null = false;
        } else if line == "--- /dev/null" {
            from_dev_null = true;
        } else if let Some(p) = line.strip_prefix("+++ b/") {
            path = (!from_dev_null).then(|| p.to_owned());
        } else if line.starts_with("+++ ") {
            path = None;
        } else if line.starts_with("Binary files ") {
            continue;
        } else if let Some(h) = HunkHeader::parse(line) {
            let Some(p) = &path else { continue };
            out.push(ZeroHunk {
                path: p.clone(),
                old_start: h.old_start,
                old_count: h.old_count,
                added: Vec::new(),
                binary: false,
            });
        } else if let (Some(added), Some(last)) = (line.strip_prefix('+'), out.last_mut())
            && path.as_deref() == Some(last.path.as_str())
        {
            last.added.push(added.to_owned());
        }
    }
    out
}

/// Parses `git diff --raw -z --no-abbrev`:
/// `:<old mode> <new mode> <old sha> <new sha> <status>\0<path>\0`.
fn parse_raw(raw: &[u8]) -> Result<Vec<ChangedFile>, WorkspaceError> {
    let mut files = Vec::new();
    let mut parts = raw.split(|b| *b == 0);
    while let Some(head) = parts.next() {
        if head.is_empty() {
            continue;
        }
        let head = String::from_utf8_lossy(head);
        let Some(path) = parts.next() else { break };
        let path = String::from_utf8(path.to_vec()).map_err(|_| {
            WorkspaceError::Invalid("the change names a path that is not UTF-8".into())
        })?;
        let fields: Vec<&str> = head.trim_start_matches(':').split(' ').collect();
        if fields.len() < 5 {
            continue;
        }
        let zero = |m: &str| m.chars().all(|c| c == '0');
        let (old_mode, new_mode) = (fields[0], fields[1]);
        let status = match fields[4].chars().next() {
            Some('A') => FileStatus::Added,
            Some('D') => FileStatus::Deleted,
            Some('T') => FileStatus::TypeChanged,
            _ => FileStatus::Modified,
        };
        files.push(ChangedFile {
            path,
            status,
            old_mode: (!zero(old_mode)).then(|| old_mode.to_owned()),
            new_mode: (!zero(new_mode)).then(|| new_mode.to_owned()),
            sha: (!zero(new_mode)).then(|| fields[3].to_owned()),
            size: 0,
            additions: 0,
            deletions: 0,
            binary: false,
        });
    }
    files.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(files)
}

/// Parses `git diff --numstat -z`: `<added>\t<deleted>\t<path>\0`
/// (`-\t-` for binary files).
fn parse_numstat(out: &[u8]) -> BTreeMap<String, (u64, u64, bool)> {
    let mut map = BTreeMap::new();
    for rec in out.split(|b| *b == 0) {
        let rec = String::from_utf8_lossy(rec);
        let mut it = rec.splitn(3, '\t');
        let (Some(a), Some(d), Some(path)) = (it.next(), it.next(), it.next()) else {
            continue;
        };
        let binary = a == "-";
        map.insert(
            path.to_owned(),
            (a.parse().unwrap_or(0), d.parse().unwrap_or(0), binary),
        );
    }
    map
}

/// Parses `git cat-file --batch`: `<sha> <type> <size>\n<content>\n` per object.
fn parse_batch(out: &[u8]) -> BTreeMap<String, String> {
    let mut blobs = BTreeMap::new();
    let mut at = 0;
    while at < out.len() {
        let Some(nl) = out[at..].iter().position(|b| *b == b'\n') else {
            break;
        };
        let header = String::from_utf8_lossy(&out[at..at + nl]).into_owned();
        at += nl + 1;
        let fields: Vec<&str> = header.split(' ').collect();
        if fields.len() != 3 {
            continue;
        }
        let Ok(size) = fields[2].parse::<usize>() else {
            continue;
        };
        let end = (at + size).min(out.len());
        blobs.insert(
            fields[0].to_owned(),
            base64::engine::general_purpose::STANDARD.encode(&out[at..end]),
        );
        at = end + 1;
    }
    blobs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_context_hunks_and_ranges() {
        let d = "diff --git a/a.rs b/a.rs\n--- a/a.rs\n+++ b/a.rs\n@@ -2 +2 @@ x\n-old\n+new\n@@ -5,0 +6,2 @@\n+x\n+y\ndiff --git a/n.rs b/n.rs\n--- /dev/null\n+++ b/n.rs\n@@ -0,0 +1 @@\n+z\n";
        let h = zero_context_hunks(d);
        assert_eq!(h.len(), 2);
        assert_eq!((h[0].old_start, h[0].old_count), (2, 1));
        assert_eq!(h[0].added, vec!["new"]);
        assert_eq!((h[1].old_start, h[1].old_count), (5, 0));
        assert_eq!(h[1].added, vec!["x", "y"]);
        let r = new_side_ranges("+++ b/a.rs\n@@ -1,3 +1,4 @@\n@@ -10 +11,0 @@\n");
        assert_eq!(r["a.rs"], vec![(1, 4)]);
    }

    #[test]
    fn symlinks_must_stay_inside() {
        assert!(link_stays_inside("a/b", "c"));
        assert!(link_stays_inside("a/b", "../c"));
        assert!(!link_stays_inside("a/b", "../../c"));
        assert!(!link_stays_inside("b", "/etc/passwd"));
        assert!(!link_stays_inside("b", "../x"));
        assert!(link_stays_inside("a/b", "./c/../d"));
    }

    #[test]
    fn raw_and_numstat_parse() {
        let raw = b":100644 100644 aaaa bbbb M\0src/a.rs\0:000000 120000 0000 cccc A\0link\0:100644 000000 dddd 0000 D\0gone\0";
        let files = parse_raw(raw).unwrap();
        assert_eq!(files.len(), 3);
        assert_eq!(files[0].path, "gone");
        assert_eq!(files[0].status, FileStatus::Deleted);
        assert_eq!(files[0].sha, None);
        assert_eq!(files[1].new_mode.as_deref(), Some("120000"));
        assert_eq!(files[2].sha.as_deref(), Some("bbbb"));
        let n = parse_numstat(b"3\t1\tsrc/a.rs\0-\t-\timg.png\0");
        assert_eq!(n["src/a.rs"], (3, 1, false));
        assert!(n["img.png"].2);
    }

    #[test]
    fn batch_parses_binary_contents() {
        let out = b"abc blob 3\n\x00\x01\n\ndef blob 0\n\n";
        let blobs = parse_batch(out);
        assert_eq!(
            base64::engine::general_purpose::STANDARD
                .decode(&blobs["abc"])
                .unwrap(),
            b"\x00\x01\n"
        );
        assert_eq!(blobs["def"], "");
    }

    #[test]
    fn policy_names_the_problem() {
        let file = |path: &str, mode: &str| ChangedFile {
            path: path.into(),
            status: FileStatus::Added,
            old_mode: None,
            new_mode: Some(mode.into()),
            sha: Some("s".into()),
            size: 4,
            additions: 1,
            deletions: 0,
            binary: false,
        };
        let r = Redactor::default();
        let limits = ChangeLimits::default();
        let mut c = Change {
            files: vec![file(".github/workflows/ci.yml", "100644")],
            ..Default::default()
        };
        let why = check_policy(&c, ChangePolicy::default(), limits, &r).unwrap_err();
        assert!(why.contains("allow_workflow_changes"), "{why}");
        assert!(
            check_policy(
                &c,
                ChangePolicy {
                    allow_workflow_changes: true
                },
                limits,
                &r
            )
            .is_ok()
        );
        c.files = vec![file("passwd", "120000")];
        c.blobs.insert(
            "s".into(),
            base64::engine::general_purpose::STANDARD.encode("/etc/passwd"),
        );
        let why = check_policy(&c, ChangePolicy::default(), limits, &r).unwrap_err();
        assert!(why.contains("/etc/passwd"), "{why}");
        c.files = vec![file("vendor/x", "160000")];
        assert!(
            check_policy(&c, ChangePolicy::default(), limits, &r)
                .unwrap_err()
                .contains("submodule")
        );
        c.files = vec![file("src/a.rs", "100644")];
        c.diff = "--- a/src/a.rs\n+++ b/src/a.rs\n@@ -1,2 +1,3 @@\n one\n+let t = \"ghs_abcdefghijklmnopqrstuvwxyz0123456789\";\n two\n".into();
        let why = check_policy(&c, ChangePolicy::default(), limits, &r).unwrap_err();
        assert!(why.contains("line 2 of `src/a.rs`"), "{why}");
        assert!(why.contains("github-token"), "{why}");
        let tight = ChangeLimits {
            max_files: 0,
            ..limits
        };
        assert!(
            check_policy(&c, ChangePolicy::default(), tight, &r)
                .unwrap_err()
                .contains("TASKMASTER_MAX_CHANGE_FILES")
        );
    }
}
