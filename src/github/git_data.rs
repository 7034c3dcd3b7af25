//! The shapes of the writes that bring an agent's change back to GitHub:
//! Git Data objects (blobs, trees, commits, refs), pull requests and
//! pull-request reviews.
//!
//! Commits are made through the Git Data API, not by pushing: no credential
//! touches a disk, the commit is signed by GitHub (Verified) because no
//! author or committer is given, and a ref update with `force: false` is
//! refused (422) when someone pushed meanwhile.
//!
//! Sources:
//! <https://docs.github.com/en/rest/git/blobs>,
//! <https://docs.github.com/en/rest/git/trees#create-a-tree>,
//! <https://docs.github.com/en/rest/git/commits#create-a-commit>,
//! <https://docs.github.com/en/rest/git/refs>,
//! <https://docs.github.com/en/rest/pulls/pulls#create-a-pull-request>,
//! <https://docs.github.com/en/rest/pulls/reviews#create-a-review-for-a-pull-request>.

use serde::{Deserialize, Serialize};

use super::InstallationId;

/// Whom a Git Data or pull-request write is made as: an installation token
/// narrowed to the one repository with `contents: write` and
/// `pull_requests: write`, plus `workflows: write` only when the workflow
/// allows workflow changes (and the installation was granted it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct WriteAccess {
    /// The installation whose token is narrowed.
    pub installation: InstallationId,
    /// Ask for `workflows: write` too.
    pub workflows: bool,
}

impl WriteAccess {
    /// The permissions to ask GitHub for, as `(name, level)` pairs.
    pub fn permissions(&self) -> Vec<(&'static str, &'static str)> {
        let mut p = vec![("contents", "write"), ("pull_requests", "write")];
        if self.workflows {
            p.push(("workflows", "write"));
        }
        p
    }
}

/// One entry of a tree to create on a base tree.
///
/// `sha: None` deletes `path` from the base tree (GitHub's `"sha": null`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TreeEntry {
    /// Path from the repository root, `/`-separated.
    pub path: String,
    /// `100644` file, `100755` executable, `120000` symlink.
    pub mode: String,
    /// The blob's SHA, or `None` to delete the path.
    pub sha: Option<String>,
}

/// A pull request as taskmaster needs to know it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PullRequestRef {
    /// Its number.
    pub number: u64,
    /// The page a person opens.
    pub html_url: String,
    /// `open` or `closed`.
    #[serde(default)]
    pub state: String,
    /// Whether it is a draft.
    #[serde(default)]
    pub draft: bool,
}

/// A pull request's head and base, as `GET /repos/{o}/{r}/pulls/{n}` tells.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullRequestHead {
    /// Its number and page.
    pub pull: PullRequestRef,
    /// The head branch's name.
    pub head_ref: String,
    /// The head commit.
    pub head_sha: String,
    /// `owner/name` of the head's repository; `None` when it was deleted.
    pub head_repo: Option<String>,
    /// The base branch's name.
    pub base_ref: String,
}

/// A pull request to open.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NewPullRequest {
    /// One line.
    pub title: String,
    /// Markdown.
    pub body: String,
    /// The branch with the change (same repository).
    pub head: String,
    /// The branch it should merge into.
    pub base: String,
    /// Open as a draft.
    pub draft: bool,
}

/// One inline comment of a review, on line `line` (and from `start_line`
/// for several lines) of the pull request's new side.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReviewComment {
    /// File path.
    pub path: String,
    /// Last line (new side, 1-based).
    pub line: u64,
    /// First line when the comment spans several.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub start_line: Option<u64>,
    /// Markdown; a ```` ```suggestion ```` block replaces the lines.
    pub body: String,
}

/// A review to submit. taskmaster only ever sends `COMMENT` reviews: never
/// `APPROVE` (an App's approval could count toward required reviews).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NewReview {
    /// The head commit the comments refer to.
    pub commit_id: String,
    /// The review's summary.
    pub body: String,
    /// Inline comments.
    pub comments: Vec<ReviewComment>,
}

/// The bot identity commits are attributed to when GitHub needs one in a
/// trailer: `Co-authored-by: name <email>` for a GitHub user, with GitHub's
/// no-reply address (`<id>+<login>@users.noreply.github.com`).
pub fn co_author_trailer(login: &str, user_id: Option<u64>) -> String {
    let email = match user_id {
        Some(id) => format!("{id}+{login}@users.noreply.github.com"),
        None => format!("{login}@users.noreply.github.com"),
    };
    format!("Co-authored-by: {login} <{email}>")
}

/// Whether `message` (a 422's `message`) says the ref update was not a fast
/// forward (someone pushed meanwhile).
pub fn is_not_fast_forward(message: &str) -> bool {
    message.to_ascii_lowercase().contains("fast forward")
}

/// Whether `message` (a 422's `message`) says drafts are not supported.
pub fn drafts_unsupported(message: &str) -> bool {
    message
        .to_ascii_lowercase()
        .contains("draft pull requests are not supported")
}
