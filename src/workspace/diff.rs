//! `pr.diff` and `pr.files`: a pull request's change as prompts see it.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

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

/// `pr.files` from `--name-status -z` and `--numstat -z` output.
pub(super) fn parse_files(status: &[u8], numstat: &[u8]) -> Vec<FileChange> {
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

/// The ranges of a unified diff's hunk header, `@@ -a,b +c,d @@ …` (a
/// missing count means 1). The one parser of hunk headers: line numbering
/// of `pr.diff`, the harvest's suggestions and secret scan, and review
/// comments placed inside a pull request's hunks all use it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HunkHeader {
    pub old_start: u64,
    pub old_count: u64,
    pub new_start: u64,
    pub new_count: u64,
}

impl HunkHeader {
    /// Parses a line starting with `@@ `; `None` for anything else.
    pub fn parse(line: &str) -> Option<Self> {
        let rest = line.strip_prefix("@@ ")?;
        let side = |sign: char| -> Option<(u64, u64)> {
            let part = rest.split_whitespace().find(|p| p.starts_with(sign))?;
            let mut it = part[1..].split(',');
            let start = it.next()?.parse().ok()?;
            let count = it.next().map_or(Some(1), |c| c.parse().ok())?;
            Some((start, count))
        };
        let (old_start, old_count) = side('-')?;
        let (new_start, new_count) = side('+')?;
        Some(Self {
            old_start,
            old_count,
            new_start,
            new_count,
        })
    }

    /// The new side's lines, inclusive; `None` when the hunk only removes.
    pub fn new_range(&self) -> Option<(u64, u64)> {
        (self.new_count > 0).then(|| (self.new_start, self.new_start + self.new_count - 1))
    }
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
            new_line = HunkHeader::parse(line).map_or(0, |h| h.new_start);
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
