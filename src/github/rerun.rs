//! Re-runs asked for from GitHub's UI, read from `check_run` and
//! `check_suite` events.
//!
//! Three events mean "do it again", and each must be matched to *our* work:
//!
//! * `check_run.rerequested` — someone clicked **Re-run** on one of our
//!   check runs: its `external_id` names the run;
//! * `check_suite.rerequested` — **Re-run all / failed checks**: every run
//!   of ours on that `head_sha`. On fork pull requests `pull_requests` is
//!   `[]`, so the commit, not a PR number, is the key;
//! * `check_run.requested_action` — one of our buttons: its `identifier`
//!   maps to the command it stands for ([`crate::report::command_for_action`]),
//!   handled like that command in a comment (with the same permission check
//!   on the sender).
//!
//! Events about other apps' checks are ignored (`check_run.app.id` /
//! `check_suite.app.id` is not ours), and so is a check run whose name is not
//! `taskmaster / <workflow>` or that carries no `external_id`.
//!
//! Source: <https://docs.github.com/en/webhooks/webhook-events-and-payloads#check_run>,
//! <https://docs.github.com/en/webhooks/webhook-events-and-payloads#check_suite>

use super::RepoName;
use crate::command::Command;
use crate::event::Event;
use crate::report::command_for_action;

/// What a re-run event asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RerunRequest {
    /// Retry the run whose id is `run_id` (the check run's `external_id`).
    RetryRun {
        repository: RepoName,
        run_id: String,
        head_sha: String,
    },
    /// Re-run this app's runs for `head_sha`; `pull_requests` may be empty
    /// (fork PRs).
    RerunCommit {
        repository: RepoName,
        head_sha: String,
        pull_requests: Vec<u64>,
    },
    /// A button on run `run_id` of `workflow`: handle `command` as if the
    /// sender had commented it.
    Action {
        repository: RepoName,
        run_id: String,
        workflow: String,
        command: Command,
    },
}

/// Reads a re-run request out of `event`, or `None` when the event is not
/// one, is about another app's checks, or names no run of ours.
/// `app_id` is this App's id.
pub fn rerun_request(event: &Event, app_id: i64) -> Option<RerunRequest> {
    match event {
        Event::CheckRun(e) => {
            if e.app_id() != Some(app_id) {
                return None;
            }
            let run_id = e.check_run.external_id.clone().filter(|s| !s.is_empty())?;
            let repository = e.envelope.repository.as_ref()?.full_name.clone();
            match e.action.as_str() {
                "rerequested" => Some(RerunRequest::RetryRun {
                    repository,
                    run_id,
                    head_sha: e.check_run.head_sha.clone(),
                }),
                "requested_action" => {
                    let workflow = e.check_run.name.strip_prefix("taskmaster / ")?.to_owned();
                    let identifier = &e.requested_action.as_ref()?.identifier;
                    let command = command_for_action(identifier, &workflow)?;
                    Some(RerunRequest::Action {
                        repository,
                        run_id,
                        workflow,
                        command,
                    })
                }
                _ => None,
            }
        }
        Event::CheckSuite(e) if e.action == "rerequested" => {
            if e.check_suite.app.as_ref().map(|a| a.id) != Some(app_id) {
                return None;
            }
            Some(RerunRequest::RerunCommit {
                repository: e.envelope.repository.as_ref()?.full_name.clone(),
                head_sha: e.check_suite.head_sha.clone(),
                pull_requests: e
                    .check_suite
                    .pull_requests
                    .iter()
                    .map(|p| p.number)
                    .collect(),
            })
        }
        _ => None,
    }
}
