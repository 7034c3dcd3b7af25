//! What a run checks out, derived from its record and its event.

use crate::ids::InstallationId;

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
    pub installation: Option<InstallationId>,
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
    /// `None` when the event names no repository, or not its id (runs
    /// started over the API): the run gets an empty directory.
    pub fn for_run(run: &crate::store::Run, event: &crate::event::Event) -> Option<Self> {
        use crate::event::Event;
        // Without the repository's id there is no mirror to key: runs
        // started over the API name a repository by its name only.
        let repo = event.repository().filter(|r| r.id > 0)?;
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
            run_id: run.id.0,
            repo_id: repo.id,
            full_name: repo.full_name.to_string(),
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
