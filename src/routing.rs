//! Routing: from a typed event to the workflows to start, with the reason.
//!
//! [`route`] is a pure function of the event and the workflow set: no
//! database, no clock, no network. That keeps the decision explainable and
//! testable against real payloads, and lets the dispatcher store the reason
//! with each run ("why did this start?") in the same transaction that creates
//! it.
//!
//! Safety defaults (each can be lifted per trigger, and each skip says how):
//! - draft pull requests do not start workflows (`drafts: true` to allow);
//! - bot senders do not start workflows (`bots: true`), which stops comment
//!   and push loops between bots (GITHUB.md, item 4);
//! - pull requests from forks, and from authors who are not the repository's
//!   owner, members or collaborators, start their runs *waiting for
//!   approval*: no step reaches an agent until a maintainer comments
//!   `/approve` or presses "Approve run" (Prow's `/ok-to-test`, GitHub's
//!   "approve and run"); `forks: true` lifts this for a trigger, so untrusted
//!   code never runs next to secrets unasked (item 11);
//! - `/run` comments act only when `created` (an edit must not re-run) and
//!   only from the repository's owner, members and collaborators (a cheap
//!   pre-filter; the command issue adds the permission API check).
//!
//! - issues by authors who are not the repository's owner, members or
//!   collaborators start their runs waiting for approval too (any GitHub
//!   user can open an issue); `untrusted: true` on the trigger lifts this.
//!
//! Task-type workflows (`on.task`) start when an *explicit* signal selects
//! their type: a label (`hotfix`, `bug`, …), a head branch (`hotfix/*`), or a
//! conventional-commit title prefix (`fix:`, `feat:`, `refactor:`). From an
//! author who is not an owner, member or collaborator only a label counts
//! (labels need triage rights; a title or branch is the author's choice). Keyword
//! guesses classify the task but never start a workflow on their own. They
//! start on issues unless `events` says otherwise, and a workflow that
//! changes files (`changes: true`) starts on a pull request only from a
//! label: a PR's title informs the review's classification, it never starts
//! code generation on someone's pull request.

use serde::Serialize;

use crate::classify::{Classification, TaskInput, classify, task_type_for_label};
use crate::event::{Actor, Event, Issue, PullRequest};
use crate::workflow::{Workflow, WorkflowSet};

/// What routing decided about one workflow for one event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RouteDecision {
    /// The workflow's name.
    pub workflow: String,
    /// True: start a run. False: the trigger matched but a safety default held it back.
    pub start: bool,
    /// Why, in a sentence for humans (stored with the run, shown in reports).
    pub reason: String,
    /// The task classification of the PR or issue, stored with the run and
    /// given to prompt templates as `task`.
    pub classification: Option<Classification>,
    /// `Some(why)`: the run starts waiting for a maintainer's `/approve`
    /// (untrusted work). Only with `start`.
    pub approval: Option<String>,
}

/// The line prefix that starts a workflow from a comment.
pub const RUN_COMMAND: &str = "/run";

/// `author_association` values allowed to use `/run` (a pre-filter only).
const TRUSTED_ASSOCIATIONS: &[&str] = &["OWNER", "MEMBER", "COLLABORATOR"];

/// PR actions on which task-type workflows start.
const TASK_PR_ACTIONS: &[&str] = &["opened", "reopened", "ready_for_review", "labeled"];
/// Issue actions on which task-type workflows start.
const TASK_ISSUE_ACTIONS: &[&str] = &["opened", "reopened", "labeled"];

/// Decides which workflows `event` starts. Returns one decision per workflow
/// whose trigger matched (started or held back), sorted by workflow name.
/// Disabled workflows and events no trigger listens to give no decision.
pub fn route(event: &Event, workflows: &WorkflowSet) -> Vec<RouteDecision> {
    let mut out: Vec<RouteDecision> = Vec::new();
    match event {
        Event::PullRequest(e) => {
            let pr = &e.pull_request;
            let labels: Vec<String> = pr.labels.iter().map(|l| l.name.clone()).collect();
            let task = classify(&TaskInput {
                title: &pr.title,
                body: pr.body.as_deref().unwrap_or(""),
                labels: &labels,
                branch: Some(&pr.head.branch),
            });
            let sender = e.envelope.sender.as_ref();
            let added = e.label.as_ref().map(|l| l.name.as_str());
            for wf in workflows.iter().filter(|w| w.enabled) {
                route_pull_request(wf, &e.action, pr, sender, added, &task, &mut out);
            }
        }
        Event::Issues(e) => {
            let issue = &e.issue;
            let task = classify_issue(issue);
            let sender = e.envelope.sender.as_ref();
            let added = e.label.as_ref().map(|l| l.name.as_str());
            for wf in workflows.iter().filter(|w| w.enabled) {
                route_issue(wf, &e.action, issue, sender, added, &task, &mut out);
            }
        }
        Event::IssueComment(e) => {
            let Some(command) = run_command(&e.comment.body) else {
                return out;
            };
            let task = classify_issue(&e.issue);
            for wf in workflows.iter().filter(|w| w.enabled) {
                let Some(t) = &wf.triggers.issue_comment else {
                    continue;
                };
                if t.command != command {
                    continue;
                }
                let on_pr = e.issue.is_pull_request();
                let user = &e.comment.user;
                let what = if on_pr { "pull request" } else { "issue" };
                let decision = if e.action != "created" {
                    held(
                        wf,
                        format!(
                            "`/run {command}` was {}: only new comments run commands",
                            e.action
                        ),
                    )
                } else if user.is_bot() {
                    held(
                        wf,
                        format!(
                            "`/run {command}` comes from bot `{}`: bots cannot run commands",
                            user.login
                        ),
                    )
                } else if !TRUSTED_ASSOCIATIONS.contains(&e.comment.author_association.as_str()) {
                    held(
                        wf,
                        format!(
                            "`/run {command}` comes from @{} ({}): only owners, members and collaborators may start workflows",
                            user.login,
                            e.comment.author_association.to_lowercase()
                        ),
                    )
                } else if (on_pr && !t.pull_requests) || (!on_pr && !t.issues) {
                    held(
                        wf,
                        format!("`/run {command}` is not accepted on a {what} by this workflow"),
                    )
                } else {
                    started(
                        wf,
                        format!(
                            "@{} commented `/run {command}` on {what} #{}",
                            user.login, e.issue.number
                        ),
                    )
                };
                push(&mut out, decision, Some(&task));
            }
        }
        _ => {}
    }
    out.sort_by(|a, b| a.workflow.cmp(&b.workflow));
    out
}

fn classify_issue(issue: &Issue) -> Classification {
    let labels: Vec<String> = issue.labels.iter().map(|l| l.name.clone()).collect();
    classify(&TaskInput {
        title: &issue.title,
        body: issue.body.as_deref().unwrap_or(""),
        labels: &labels,
        branch: None,
    })
}

/// The workflow name in the first `/run <name>` line of a comment, if any.
///
/// A simple stand-in: a line counts when, after leading spaces, it starts
/// with `/run ` outside fenced code blocks and `>` quotes. The comment-command
/// issue replaces this with the full markdown-aware command parser.
pub fn run_command(body: &str) -> Option<String> {
    let mut in_fence = false;
    for line in body.lines() {
        let t = line.trim_start();
        if t.starts_with("```") || t.starts_with("~~~") {
            in_fence = !in_fence;
            continue;
        }
        if in_fence || line.starts_with("    ") || line.starts_with('\t') {
            continue;
        }
        if let Some(rest) = t.strip_prefix(RUN_COMMAND)
            && rest.starts_with([' ', '\t'])
            && let Some(name) = rest.split_whitespace().next()
        {
            return Some(name.to_owned());
        }
    }
    None
}

fn started(wf: &Workflow, reason: String) -> RouteDecision {
    RouteDecision {
        workflow: wf.name.clone(),
        start: true,
        reason,
        classification: None,
        approval: None,
    }
}

/// A start that waits for a maintainer's `/approve`.
/// Why a run of `wf` about `event`'s pull request or issue must wait for
/// a maintainer's `/approve` (a fork's pull request, or an author who is not
/// an owner, member or collaborator), as routing would gate it; `None` when
/// it need not (trusted work, or the workflow's trigger lifts the gate with
/// `forks: true` / `untrusted: true`). For runs started by hand (`/run`,
/// Re-run), whose own command level may be lower than `/approve`'s.
pub fn approval_needed(event: &Event, wf: &Workflow) -> Option<String> {
    let issue_gate = |issue: &Issue| {
        let lifted = wf.triggers.issues.as_ref().is_some_and(|t| t.untrusted);
        (!lifted && !TRUSTED_AUTHORS.contains(&issue.author_association.as_str())).then(|| {
            format!(
                "#{} is by @{}, not an owner, member or collaborator: the run waits until a \
                 maintainer comments `/approve`",
                issue.number, issue.user.login
            )
        })
    };
    match event {
        Event::PullRequest(e) => {
            let forks = wf.triggers.pull_request.as_ref().is_some_and(|t| t.forks);
            match pr_safety(&e.pull_request, None, true, forks, true) {
                Safety::Approve(why) => Some(why),
                _ => None,
            }
        }
        Event::Issues(e) => issue_gate(&e.issue),
        Event::IssueComment(e) if e.issue.is_pull_request() => {
            let forks = wf.triggers.pull_request.as_ref().is_some_and(|t| t.forks);
            (!forks).then(|| issue_gate(&e.issue)).flatten()
        }
        Event::IssueComment(e) => issue_gate(&e.issue),
        _ => None,
    }
}

fn needs_approval(wf: &Workflow, reason: String, why: String) -> RouteDecision {
    RouteDecision {
        approval: Some(why),
        ..started(wf, reason)
    }
}

fn held(wf: &Workflow, reason: String) -> RouteDecision {
    RouteDecision {
        workflow: wf.name.clone(),
        start: false,
        reason,
        classification: None,
        approval: None,
    }
}

/// Adds a decision; a workflow matched twice keeps one decision (a start wins,
/// and the reasons of the same kind are joined).
fn push(out: &mut Vec<RouteDecision>, mut d: RouteDecision, task: Option<&Classification>) {
    d.classification = task.cloned();
    if let Some(existing) = out.iter_mut().find(|x| x.workflow == d.workflow) {
        if d.start && !existing.start {
            *existing = d;
        } else if d.start == existing.start {
            existing.reason = format!("{}; {}", existing.reason, d.reason);
        }
    } else {
        out.push(d);
    }
}

/// What the safety defaults say about a PR.
enum Safety {
    /// Start.
    Start,
    /// Do not start, for this reason.
    Hold(String),
    /// Start, but wait for a maintainer's `/approve`, for this reason.
    Approve(String),
}

/// `author_association` values trusted to run agents on their PRs unasked.
const TRUSTED_AUTHORS: &[&str] = &["OWNER", "MEMBER", "COLLABORATOR"];

/// The safety defaults shared by PR and task triggers.
fn pr_safety(
    pr: &PullRequest,
    sender: Option<&Actor>,
    drafts: bool,
    forks: bool,
    bots: bool,
) -> Safety {
    if let Some(s) = sender
        && s.is_bot()
        && !bots
    {
        return Safety::Hold(format!(
            "sender `{}` is a bot; set `bots: true` on the trigger to start for bots",
            s.login
        ));
    }
    if pr.draft && !drafts {
        return Safety::Hold(format!(
            "pull request #{} is a draft; it starts when marked ready for review (or set `drafts: true`)",
            pr.number
        ));
    }
    if forks {
        return Safety::Start;
    }
    if pr.is_fork() {
        return Safety::Approve(format!(
            "pull request #{} comes from the fork `{}`: its run waits until a maintainer comments `/approve` (or set `forks: true`)",
            pr.number,
            pr.head_repo_full_name()
                .map_or_else(|| "(deleted)".to_owned(), ToString::to_string)
        ));
    }
    if !TRUSTED_AUTHORS.contains(&pr.author_association.as_str()) {
        return Safety::Approve(format!(
            "pull request #{} is by @{} ({}), not an owner, member or collaborator: its run waits until a maintainer comments `/approve`",
            pr.number,
            pr.user.login,
            pr.author_association.to_lowercase()
        ));
    }
    Safety::Start
}

fn route_pull_request(
    wf: &Workflow,
    action: &str,
    pr: &PullRequest,
    sender: Option<&Actor>,
    added_label: Option<&str>,
    task: &Classification,
    out: &mut Vec<RouteDecision>,
) {
    let labels = || pr.labels.iter().map(|l| l.name.as_str());
    if let Some(t) = &wf.triggers.pull_request
        && t.actions.iter().any(|a| a == action)
    {
        let filters_match = t.base_matches(&pr.base.branch)
            && t.head_matches(&pr.head.branch)
            && t.labels.matches(labels())
            && t.title_matches(&pr.title);
        // Safety holds are reported only for workflows whose filters matched,
        // so a decision list never mentions workflows that were never in play.
        let safety = if filters_match {
            pr_safety(pr, sender, t.drafts, t.forks, t.bots)
        } else {
            Safety::Start
        };
        if !filters_match {
        } else if let Safety::Hold(why) = safety {
            push(out, held(wf, why), Some(task));
        } else {
            let mut why = format!(
                "pull_request.{action} on #{} ({} -> {}) matches `on.pull_request`",
                pr.number, pr.head.branch, pr.base.branch
            );
            if !t.head_branches.is_empty() {
                why.push_str(&format!(
                    "; head branch matches {}",
                    t.head_branches.join(", ")
                ));
            }
            if !t.branches.is_empty() {
                why.push_str(&format!("; base branch matches {}", t.branches.join(", ")));
            }
            if !t.labels.is_empty() {
                why.push_str("; labels match");
            }
            if !t.titles.is_empty() {
                why.push_str("; title matches");
            }
            let decision = match safety {
                Safety::Approve(wait) => needs_approval(wf, why, wait),
                _ => started(wf, why),
            };
            push(out, decision, Some(task));
        }
    }
    if let Some(t) = &wf.triggers.task
        && t.events.iter().any(|e| e == "pull_request")
        && TASK_PR_ACTIONS.contains(&action)
        && explicit_from(task, TRUSTED_AUTHORS.contains(&pr.author_association.as_str()))
        // A workflow that writes code starts on someone's pull request only
        // when a maintainer labels it, never from its title or branch name.
        && (!wf.changes_files() || task.task_type_signal == crate::classify::Signal::Label)
        && t.types.contains(&task.task_type)
        && label_event_is_a_signal(action, added_label)
    {
        let why = task_reason("pull request", pr.number, action, task);
        match pr_safety(pr, sender, t.drafts, t.forks, t.bots) {
            Safety::Hold(hold) => push(out, held(wf, hold), Some(task)),
            Safety::Approve(wait) => push(out, needs_approval(wf, why, wait), Some(task)),
            Safety::Start => push(out, started(wf, why), Some(task)),
        }
    }
}

fn route_issue(
    wf: &Workflow,
    action: &str,
    issue: &Issue,
    sender: Option<&Actor>,
    added_label: Option<&str>,
    task: &Classification,
    out: &mut Vec<RouteDecision>,
) {
    let bot = sender.filter(|s| s.is_bot());
    let trusted = TRUSTED_AUTHORS.contains(&issue.author_association.as_str());
    let wait = |untrusted_ok: bool| {
        (!trusted && !untrusted_ok).then(|| {
            format!(
                "issue #{} is by @{} ({}), not an owner, member or collaborator: its run waits \
                 until a maintainer comments `/approve` (or set `untrusted: true` on the trigger)",
                issue.number,
                issue.user.login,
                if issue.author_association.is_empty() {
                    "none".to_owned()
                } else {
                    issue.author_association.to_lowercase()
                }
            )
        })
    };
    if let Some(t) = &wf.triggers.issues
        && t.actions.iter().any(|a| a == action)
    {
        let filters_match = t
            .labels
            .matches(issue.labels.iter().map(|l| l.name.as_str()))
            && t.title_matches(&issue.title);
        if !filters_match {
        } else if let Some(b) = bot.filter(|_| !t.bots) {
            push(
                out,
                held(
                    wf,
                    format!(
                        "sender `{}` is a bot; set `bots: true` on the trigger to start for bots",
                        b.login
                    ),
                ),
                Some(task),
            );
        } else {
            let mut why = format!("issues.{action} on #{} matches `on.issues`", issue.number);
            if let (Some(l), "labeled") = (added_label, action) {
                why.push_str(&format!(" (label `{l}` added)"));
            }
            let decision = match wait(t.untrusted) {
                Some(w) => needs_approval(wf, why, w),
                None => started(wf, why),
            };
            push(out, decision, Some(task));
        }
    }
    if let Some(t) = &wf.triggers.task
        && t.events.iter().any(|e| e == "issues")
        && TASK_ISSUE_ACTIONS.contains(&action)
        && !issue.is_pull_request()
        && explicit_from(task, trusted)
        && t.types.contains(&task.task_type)
        && label_event_is_a_signal(action, added_label)
    {
        if let Some(b) = bot.filter(|_| !t.bots) {
            push(
                out,
                held(
                    wf,
                    format!(
                        "sender `{}` is a bot; set `bots: true` on the trigger to start for bots",
                        b.login
                    ),
                ),
                Some(task),
            );
        } else {
            let why = task_reason("issue", issue.number, action, task);
            let decision = match wait(t.untrusted) {
                Some(w) => needs_approval(wf, why, w),
                None => started(wf, why),
            };
            push(out, decision, Some(task));
        }
    }
}

/// Whether `task`'s type was chosen explicitly by someone who may choose
/// it: any explicit signal from a trusted author; only a label (added by
/// someone with triage rights) otherwise.
fn explicit_from(task: &Classification, trusted: bool) -> bool {
    if trusted {
        task.task_type_signal.is_explicit()
    } else {
        task.task_type_signal == crate::classify::Signal::Label
    }
}

/// A `labeled` event starts a task workflow only when the added label is itself
/// a task-type label: adding `documentation` to a `bug` must not start it again.
fn label_event_is_a_signal(action: &str, added: Option<&str>) -> bool {
    action != "labeled" || added.and_then(task_type_for_label).is_some()
}

fn task_reason(what: &str, number: u64, action: &str, task: &Classification) -> String {
    let evidence = task
        .evidence
        .iter()
        .find(|e| e.field == "task_type")
        .map_or(String::new(), |e| e.reason.clone());
    format!(
        "{what} #{number} ({action}) is a {} task: {evidence}",
        task.task_type
    )
}

#[cfg(test)]
mod tests {
    use super::run_command;

    #[test]
    fn run_command_is_line_anchored_and_ignores_code_and_quotes() {
        assert_eq!(run_command("/run review"), Some("review".into()));
        assert_eq!(
            run_command("please\n  /run triage now"),
            Some("triage".into())
        );
        assert_eq!(run_command("> /run review"), None);
        assert_eq!(run_command("```\n/run review\n```"), None);
        assert_eq!(run_command("    /run review"), None, "indented code block");
        assert_eq!(run_command("I will /run review later"), None);
        assert_eq!(run_command("/running review"), None);
        assert_eq!(run_command("/run"), None);
    }
}
