//! Reports: a run's state rendered as GitHub shows it — the check run's
//! status, conclusion, output and buttons, and the sticky comment.
//!
//! The engine fills a [`RunReport`] (a plain view, no database types) and
//! this module turns it into the bodies of [`crate::github`]. Rendering is
//! pure and deterministic, so every shape is pinned by snapshot tests.
//!
//! **User-controlled text is data, never markup.** Step outputs come from
//! agents that read issue text; titles come from users. Everything such text
//! could do to the page is defused here:
//!
//! * one-line values (step ids, agents, workflow names) go in code spans with
//!   backticks and pipes neutralised, so they cannot break a table, mention
//!   someone (`@user`) or inject links and HTML; in HTML `<summary>` tags
//!   they are HTML-escaped;
//! * outputs go in fenced code blocks whose fence is longer than any run of
//!   backticks inside, so they cannot close the block, and a line of output
//!   that begins with `/` is indented by one space: a bot matching line-
//!   anchored commands (Prow's `^/lgtm`, ours) can never read a command in
//!   taskmaster's own comment — the comment-loop failure of other bots;
//! * commands echoed in replies are quoted with `> ` ([`quote`]).
//!
//! Size limits are kept by budget rather than by cutting the finished text:
//! each step's output gets a fair share of the field (short outputs whole,
//! long ones share the rest) and keeps its **end** — where errors are — with
//! a note saying how much was left out, so the Markdown around it stays
//! intact. [`crate::github::CheckOutput::new`] still cuts at 65,535 bytes as
//! a last guard.

use std::fmt::Write as _;

use chrono::{DateTime, Utc};

use crate::command::Command;
use crate::github::checks::{MAX_COMMENT_CHARS, MAX_OUTPUT_BYTES};
use crate::github::{
    CheckAction, CheckConclusion, CheckOutput, CheckRunUpdate, CheckStatus, GitHubError,
    NewCheckRun,
};

/// The hidden first line of the sticky comment; the comment is found again
/// by a body that starts with it ([`crate::github::upsert_sticky_comment`]).
pub const STICKY_MARKER: &str = "<!-- taskmaster:sticky -->";

/// `identifier` of the "Approve run" button (→ `/approve`).
pub const ACTION_APPROVE: &str = "approve";
/// `identifier` of the "Retry failed" button (→ `/retry`).
pub const ACTION_RETRY_FAILED: &str = "retry";
/// `identifier` of the "Re-run" button (→ `/run <workflow>`).
pub const ACTION_RERUN: &str = "rerun";

/// What the run is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subject {
    /// A pull request: check run on `head_sha` and the sticky comment.
    PullRequest,
    /// An issue: the sticky comment only (issues have no commits).
    Issue,
}

/// Where a run stands. A finished run carries its outcome, so an impossible
/// pair (running *and* failed) cannot be built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunState {
    /// Created, no step started yet.
    Queued,
    /// At least one step started.
    Running,
    /// Paused by `/pause`: no new steps start.
    Paused,
    /// Waits for a maintainer's `/approve` (e.g. an untrusted author).
    WaitingForApproval,
    /// Finished.
    Completed(RunOutcome),
}

/// How a finished run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunOutcome {
    Succeeded,
    Failed,
    Cancelled,
    TimedOut,
    /// Nothing to do (every step skipped by its condition).
    Skipped,
}

/// Where a step stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepState {
    Pending,
    Running,
    Succeeded,
    Failed,
    Cancelled,
    TimedOut,
    Skipped,
}

impl StepState {
    fn label(self) -> &'static str {
        match self {
            StepState::Pending => "⏳ pending",
            StepState::Running => "🔄 running",
            StepState::Succeeded => "✅ succeeded",
            StepState::Failed => "❌ failed",
            StepState::Cancelled => "🚫 cancelled",
            StepState::TimedOut => "⌛ timed out",
            StepState::Skipped => "⏭️ skipped",
        }
    }
}

/// One step of a run, as shown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepReport {
    /// The step's id in the workflow.
    pub id: String,
    /// The agent that ran (or will run) it.
    pub agent: String,
    pub state: StepState,
    /// Attempts made so far (0 before the first).
    pub attempts: u32,
    /// Wall time of the latest attempt, in milliseconds.
    pub duration_ms: Option<u64>,
    /// The step's output, **already redacted** ([`crate::redact`]); any size.
    pub output: Option<String>,
    /// What its attempts cost, in millionths of a US dollar (reported or
    /// estimated); 0 when nothing reported a cost. The table shows a Cost
    /// column when any step has one.
    pub cost_micro_usd: u64,
}

/// Everything a run shows on GitHub. The engine fills it from its tables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunReport {
    /// The run's id: the check run's `external_id`.
    pub run_id: String,
    /// The workflow's name: the check run is `taskmaster / <workflow>`.
    pub workflow: String,
    /// `owner/name`; `None` for a run without one (nothing to report to).
    pub repository: Option<crate::github::RepoName>,
    /// The pull request or issue number.
    pub number: u64,
    pub subject: Subject,
    /// The commit the run is about (pull requests).
    pub head_sha: Option<String>,
    pub state: RunState,
    pub steps: Vec<StepReport>,
    /// The run's page (`PUBLIC_URL` + its path), the check run's Details link.
    pub details_url: Option<String>,
    pub started_at: Option<DateTime<Utc>>,
    pub completed_at: Option<DateTime<Utc>>,
    /// A sentence for people about why the run is where it is (e.g. "waiting
    /// for a maintainer: the author is not a collaborator"). Plain text; it
    /// is escaped.
    pub reason: Option<String>,
    /// Where the run's change went, or why it did not (see
    /// [`crate::publish::describe`]); `None` for runs that change nothing.
    pub change: Option<ChangeReport>,
    /// Findings of the run's verdict reports, with the step that made each.
    pub findings: Vec<(String, crate::verdict::Finding)>,
    /// Send the findings as check-run annotations with this report (GitHub
    /// appends annotations on every update, so they go once: with the
    /// first report of the finished run).
    pub annotate: bool,
    /// The run's verdict rules (the workflow's `verdicts:` as the
    /// repository had them when the run was made).
    pub verdict_rules: crate::verdict::VerdictRules,
    /// The run succeeded step by step but a verdict is `fail`: the check
    /// run's conclusion is then `verdict_rules.fail`, not `failure`.
    pub failed_by_verdict: bool,
    /// Some step ended with a verdict report (so an earlier run's review
    /// of findings is looked for, to be superseded).
    pub has_verdicts: bool,
    /// The API token that started the run (`POST /api/workflows/execute`),
    /// said in the check run's title: a check a person did not cause says so.
    pub started_by_api: Option<String>,
    /// A budget stopped the run (`budgets:`, see [`crate::budget`]): which,
    /// what was spent and how to raise it. The check run is then `neutral`
    /// ("stopped, not broken"), whatever the steps' states.
    pub stopped_by_budget: Option<String>,
    /// What an unfinished run is expected to take, in a sentence
    /// ([`crate::engine::forecast::expected`]); shown under the step table.
    pub expected: Option<String>,
    /// What the run's attempts cost so far, in millionths of a US dollar
    /// (reported or estimated, see [`crate::budget`]); 0 when nothing
    /// reported a cost.
    pub cost_micro_usd: u64,
}

/// A finding's annotation level.
fn annotation_level(s: crate::verdict::Severity) -> crate::github::AnnotationLevel {
    use crate::github::AnnotationLevel as L;
    use crate::verdict::Severity as S;
    match s {
        S::Failure => L::Failure,
        S::Warning => L::Warning,
        S::Notice => L::Notice,
    }
}

/// Findings listed in the summary at most (all are annotations).
const MAX_LISTED_FINDINGS: usize = 50;

/// A run's change in its report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeReport {
    /// One sentence, plain text (escaped when rendered).
    pub text: String,
    /// The pull request proposing it, linked after the sentence.
    pub url: Option<String>,
    /// The change's patch, shown in the check run's text when the change
    /// could not be pushed (fork suggestions, dry run).
    pub patch: Option<String>,
    /// The files changed: path, lines added, lines removed.
    pub files: Vec<(String, u64, u64)>,
}

/// Files listed in a report at most (the rest are counted).
const MAX_LISTED_FILES: usize = 30;

impl ChangeReport {
    fn markdown(&self) -> String {
        let mut out = format!("**Change:** {}", escape_text(&self.text));
        if let Some(url) = &self.url {
            let _ = write!(out, " [Open the pull request]({})", escape_url(url));
        }
        if !self.files.is_empty() {
            out.push_str("\n\n<details>\n<summary>Files changed</summary>\n\n");
            out.push_str("| File | + | − |\n| --- | ---: | ---: |\n");
            for (path, added, removed) in self.files.iter().take(MAX_LISTED_FILES) {
                // `code_span` escapes `|`, which tables split cells on.
                let _ = writeln!(out, "| {} | {added} | {removed} |", code_span(path));
            }
            if self.files.len() > MAX_LISTED_FILES {
                let _ = writeln!(out, "\n… and {} more.", self.files.len() - MAX_LISTED_FILES);
            }
            out.push_str("\n</details>");
        }
        out
    }
}

/// The check run's name for a workflow: `taskmaster / <workflow>`.
pub fn check_run_name(workflow: &str) -> String {
    format!("taskmaster / {workflow}")
}

impl RunReport {
    /// The check run's `status` and `conclusion` for this run:
    ///
    /// | run | status | conclusion |
    /// | --- | --- | --- |
    /// | queued | `queued` | — |
    /// | running, paused | `in_progress` | — |
    /// | waiting for approval | `completed` | `action_required` |
    /// | succeeded | `completed` | `success` |
    /// | failed | `completed` | `failure` |
    /// | failed by a `fail` verdict only | `completed` | the workflow's `verdicts.fail` (`failure`, `neutral` or `action_required`) |
    /// | cancelled | `completed` | `cancelled` |
    /// | timed out | `completed` | `timed_out` |
    /// | skipped | `completed` | `neutral` |
    /// | stopped by a budget | `completed` | `neutral` |
    ///
    /// Skipped work is `neutral`, not `skipped`: GitHub hides `skipped`
    /// checks in places, and the run did happen.
    ///
    /// Source: <https://docs.github.com/en/rest/checks/runs#create-a-check-run>
    pub fn check_status(&self) -> (CheckStatus, Option<CheckConclusion>) {
        use CheckConclusion as C;
        if let RunState::Completed(outcome) = self.state
            && outcome != RunOutcome::Succeeded
            && self.stopped_by_budget.is_some()
        {
            return (CheckStatus::Completed, Some(C::Neutral));
        }
        match self.state {
            RunState::Queued => (CheckStatus::Queued, None),
            RunState::Running | RunState::Paused => (CheckStatus::InProgress, None),
            RunState::WaitingForApproval => (CheckStatus::Completed, Some(C::ActionRequired)),
            RunState::Completed(outcome) => (
                CheckStatus::Completed,
                Some(match outcome {
                    RunOutcome::Succeeded => C::Success,
                    RunOutcome::Failed if self.failed_by_verdict => {
                        self.verdict_rules.fail.conclusion()
                    }
                    RunOutcome::Failed => C::Failure,
                    RunOutcome::Cancelled => C::Cancelled,
                    RunOutcome::TimedOut => C::TimedOut,
                    RunOutcome::Skipped => C::Neutral,
                }),
            ),
        }
    }

    /// The buttons for this run (GitHub shows them once the check run is
    /// completed): "Approve run" while waiting for approval; "Retry failed"
    /// after a failure or time-out; "Re-run" on every finished run.
    pub fn check_actions(&self) -> Vec<CheckAction> {
        let approve = || {
            CheckAction::new(
                "Approve run",
                "Let this run start its steps",
                ACTION_APPROVE,
            )
        };
        let retry = || {
            CheckAction::new(
                "Retry failed",
                "Retry the failed and timed-out steps",
                ACTION_RETRY_FAILED,
            )
        };
        let rerun = || CheckAction::new("Re-run", "Run this workflow again", ACTION_RERUN);
        let actions = match self.state {
            RunState::WaitingForApproval => vec![approve()],
            RunState::Completed(RunOutcome::Failed | RunOutcome::TimedOut) => {
                vec![retry(), rerun()]
            }
            RunState::Completed(_) => vec![rerun()],
            _ => vec![],
        };
        actions
            .into_iter()
            .map(|a| a.expect("taskmaster's own buttons are within GitHub's limits"))
            .collect()
    }

    /// The check run's fields for this run: status, conclusion, times,
    /// `external_id` (the run id), `details_url`, output and buttons.
    pub fn check_run_update(&self) -> CheckRunUpdate {
        let (status, conclusion) = self.check_status();
        let mut update = CheckRunUpdate::default();
        update.details_url = self.details_url.clone();
        update.external_id = Some(self.run_id.clone());
        update.status = Some(status);
        update.started_at = self.started_at;
        update.conclusion = conclusion;
        update.completed_at = conclusion.and(self.completed_at);
        let mut output = render_check_output(self);
        if self.annotate && !self.findings.is_empty() {
            output = output.with_annotations(
                self.findings
                    .iter()
                    .map(|(step, f)| {
                        let mut a = crate::github::Annotation::new(
                            f.path.clone(),
                            f.start_line.min(u32::MAX as u64) as u32,
                            f.end_line.min(u32::MAX as u64) as u32,
                            annotation_level(f.severity),
                            &f.message,
                        );
                        a.title = Some(format!("{step}: {}", f.title));
                        a
                    })
                    .collect(),
            );
        }
        update.output = Some(output);
        update
            .set_actions(self.check_actions())
            .expect("at most three buttons");
        update
    }

    /// The body creating this run's check run.
    ///
    /// # Errors
    /// [`GitHubError::InvalidInput`] when the run has no `head_sha` (issue
    /// runs have no check run).
    pub fn new_check_run(&self) -> Result<NewCheckRun, GitHubError> {
        let head_sha = self.head_sha.clone().ok_or_else(|| {
            GitHubError::InvalidInput(format!(
                "run {} has no head SHA for a check run",
                self.run_id
            ))
        })?;
        Ok(NewCheckRun {
            name: check_run_name(&self.workflow),
            head_sha,
            fields: self.check_run_update(),
        })
    }

    fn headline(&self) -> String {
        if matches!(self.state, RunState::Completed(o) if o != RunOutcome::Succeeded)
            && self.stopped_by_budget.is_some()
        {
            return "Stopped: a budget is spent".to_owned();
        }
        let total = self.steps.len();
        let count = |s: StepState| self.steps.iter().filter(|x| x.state == s).count();
        let done = count(StepState::Succeeded);
        match self.state {
            RunState::Queued => "Queued".to_owned(),
            RunState::Running => format!("Running: {done} of {total} steps done"),
            RunState::Paused => format!("Paused: {done} of {total} steps done"),
            RunState::WaitingForApproval => "Waiting for a maintainer to approve".to_owned(),
            RunState::Completed(RunOutcome::Succeeded) => {
                format!("Succeeded: {done} of {total} steps")
            }
            RunState::Completed(RunOutcome::Failed) => {
                let failed = count(StepState::Failed) + count(StepState::TimedOut);
                if self.failed_by_verdict || failed == 0 {
                    // Every step ran; a verdict said no.
                    match self.verdict_rules.fail {
                        crate::verdict::FailConclusion::Failure => "Failed: a verdict is fail",
                        crate::verdict::FailConclusion::Neutral => {
                            "Needs a look: a verdict is fail (reported as neutral)"
                        }
                        crate::verdict::FailConclusion::ActionRequired => {
                            "Action required: a verdict is fail"
                        }
                    }
                    .to_owned()
                } else {
                    format!("Failed: {failed} of {total} steps failed")
                }
            }
            RunState::Completed(RunOutcome::Cancelled) => "Cancelled".to_owned(),
            RunState::Completed(RunOutcome::TimedOut) => "Timed out".to_owned(),
            RunState::Completed(RunOutcome::Skipped) => "Skipped: nothing to do".to_owned(),
        }
    }

    fn icon(&self) -> &'static str {
        if matches!(self.state, RunState::Completed(o) if o != RunOutcome::Succeeded)
            && self.stopped_by_budget.is_some()
        {
            return "💸";
        }
        match self.state {
            RunState::Queued => "⏳",
            RunState::Running => "🔄",
            RunState::Paused => "⏸️",
            RunState::WaitingForApproval => "✋",
            RunState::Completed(RunOutcome::Succeeded) => "✅",
            RunState::Completed(RunOutcome::Failed)
                if self.failed_by_verdict
                    && self.verdict_rules.fail != crate::verdict::FailConclusion::Failure =>
            {
                "⚠️"
            }
            RunState::Completed(RunOutcome::Failed) => "❌",
            RunState::Completed(RunOutcome::Cancelled) => "🚫",
            RunState::Completed(RunOutcome::TimedOut) => "⌛",
            RunState::Completed(RunOutcome::Skipped) => "⏭️",
        }
    }
}

/// Maps a check-run button back to the command it stands for
/// (`check_run.requested_action` → the same handling as a comment command).
/// `None` for an identifier taskmaster never sent.
pub fn command_for_action(identifier: &str, workflow: &str) -> Option<Command> {
    match identifier {
        ACTION_APPROVE => Some(Command::Approve { sha: None }),
        ACTION_RETRY_FAILED => Some(Command::Retry { step: None }),
        ACTION_RERUN => Some(Command::Run {
            workflow: workflow.to_owned(),
        }),
        _ => None,
    }
}

/// The check run's output: title (the headline), summary (state, reason and
/// the step table) and text (each step's output in its own section), within
/// 65,535 bytes each.
pub fn render_check_output(run: &RunReport) -> CheckOutput {
    let mut summary = String::new();
    let _ = writeln!(
        summary,
        "{} **{}**",
        run.icon(),
        escape_text(&run.headline())
    );
    if let Some(reason) = &run.reason {
        let _ = writeln!(summary, "\n{}", escape_text(reason));
    }
    if let Some(change) = &run.change {
        let _ = writeln!(summary, "\n{}", change.markdown());
    }
    if !run.findings.is_empty() {
        summary.push_str(&findings_markdown(&run.findings));
    }
    summary.push('\n');
    summary.push_str(&step_table(&run.steps));
    if let Some(expected) = &run.expected {
        let _ = writeln!(summary, "\n⏱️ {}", escape_text(expected));
    }
    if run.cost_micro_usd > 0 {
        let _ = writeln!(
            summary,
            "\nCost so far: ${:.2}",
            run.cost_micro_usd as f64 / 1e6
        );
    }

    let with_output: Vec<&StepReport> = run
        .steps
        .iter()
        .filter(|s| s.output.as_deref().is_some_and(|o| !o.trim().is_empty()))
        .collect();
    let patch = run.change.as_ref().and_then(|c| c.patch.as_deref());
    let patch_budget = patch.map_or(0, |p| p.len().min(MAX_OUTPUT_BYTES / 3));
    let text = if with_output.is_empty() && patch.is_none() {
        None
    } else {
        // Room for headings and fences: 200 bytes a step, plus slack.
        let overhead = 512 + 200 * with_output.len() + patch_budget;
        let budgets = fair_budgets(
            &with_output
                .iter()
                .map(|s| s.output.as_deref().unwrap_or("").len())
                .collect::<Vec<_>>(),
            MAX_OUTPUT_BYTES.saturating_sub(overhead),
        );
        let mut text = String::new();
        for (step, budget) in with_output.iter().zip(budgets) {
            let _ = writeln!(
                text,
                "### {} · {}\n",
                code_span(&step.id),
                step.state.label()
            );
            text.push_str(&fenced(&keep_tail_bytes(
                step.output.as_deref().unwrap_or(""),
                budget,
            )));
            text.push('\n');
        }
        if let Some(patch) = patch {
            let mut cut = patch_budget.min(patch.len());
            while !patch.is_char_boundary(cut) {
                cut -= 1;
            }
            text.push_str("### The change's patch\n\n");
            text.push_str(&fenced(&patch[..cut]));
            text.push('\n');
        }
        Some(text)
    };
    CheckOutput::new(
        format!(
            "{} — {}{}",
            run.workflow.replace(['\n', '\r'], " "),
            run.headline(),
            run.started_by_api
                .as_deref()
                .map(|t| format!(
                    " (started through the API by token `{}`)",
                    t.replace(['\n', '\r', '`'], " ")
                ))
                .unwrap_or_default()
        ),
        &summary,
        text.as_deref(),
    )
}

/// The findings grouped by file, for the check run's summary.
fn findings_markdown(findings: &[(String, crate::verdict::Finding)]) -> String {
    let mut by_file: std::collections::BTreeMap<&str, Vec<&(String, crate::verdict::Finding)>> =
        std::collections::BTreeMap::new();
    for f in findings {
        by_file.entry(f.1.path.as_str()).or_default().push(f);
    }
    let mut out = format!("\n**Findings:** {}\n", findings.len());
    let mut listed = 0;
    for (path, items) in by_file {
        if listed >= MAX_LISTED_FINDINGS {
            break;
        }
        let _ = writeln!(out, "\n{}", code_span(path));
        for (step, f) in items {
            if listed >= MAX_LISTED_FINDINGS {
                break;
            }
            listed += 1;
            let level = match f.severity {
                crate::verdict::Severity::Failure => "failure",
                crate::verdict::Severity::Warning => "warning",
                crate::verdict::Severity::Notice => "notice",
            };
            let _ = writeln!(
                out,
                "- line {}{} · {level} · {}: {}",
                f.start_line,
                if f.end_line > f.start_line {
                    format!("–{}", f.end_line)
                } else {
                    String::new()
                },
                code_span(step),
                escape_text(&f.title)
            );
        }
    }
    if findings.len() > listed {
        let _ = writeln!(
            out,
            "\n… and {} more (as annotations).",
            findings.len() - listed
        );
    }
    out
}

/// The sticky comment for one PR or issue, showing each run given (the
/// latest run of each workflow, say). Starts with [`STICKY_MARKER`]; at most
/// 65,536 characters.
pub fn render_sticky_comment(runs: &[RunReport]) -> String {
    let mut out = String::new();
    out.push_str(STICKY_MARKER);
    out.push_str("\n## taskmaster\n");
    if runs.is_empty() {
        out.push_str("\nNo runs yet.\n");
        return out;
    }
    let outputs: Vec<usize> = runs
        .iter()
        .flat_map(|r| r.steps.iter())
        .map(|s| s.output.as_deref().map_or(0, |o| o.chars().count()))
        .collect();
    let step_count = outputs.len().max(1);
    let overhead = 1_024 * runs.len() + 400 * step_count;
    let mut budgets =
        fair_budgets(&outputs, MAX_COMMENT_CHARS.saturating_sub(overhead)).into_iter();

    for run in runs {
        let _ = writeln!(
            out,
            "\n### {} {} — {}\n",
            run.icon(),
            code_span(&run.workflow),
            escape_text(&run.headline())
        );
        let mut facts = vec![format!("run {}", code_span(&run.run_id))];
        if let Some(sha) = &run.head_sha {
            facts.push(format!(
                "commit {}",
                code_span(&sha.chars().take(7).collect::<String>())
            ));
        }
        if let Some(url) = &run.details_url {
            facts.push(format!("[details]({})", escape_url(url)));
        }
        let _ = writeln!(out, "{}\n", facts.join(" · "));
        if let Some(reason) = &run.reason {
            let _ = writeln!(out, "{}\n", escape_text(reason));
        }
        if let Some(change) = &run.change {
            let _ = writeln!(out, "{}\n", change.markdown());
        }
        if matches!(run.state, RunState::WaitingForApproval) {
            out.push_str("A maintainer can start it with:\n\n> /approve\n\n");
        }
        out.push_str(&step_table(&run.steps));
        for step in &run.steps {
            let budget = budgets.next().unwrap_or(0);
            let Some(output) = step.output.as_deref().filter(|o| !o.trim().is_empty()) else {
                continue;
            };
            let _ = write!(
                out,
                "\n<details>\n<summary>Step <code>{}</code> · {} · {}</summary>\n\n{}\n</details>\n",
                escape_html(&step.id),
                step.state.label(),
                attempts_and_duration(step),
                fenced(&keep_tail_chars(output, budget))
            );
        }
    }
    crate::github::checks::truncate_chars(&out, MAX_COMMENT_CHARS)
}

/// Quotes text for a reply: every line prefixed with `> `, so a command in
/// it (`/retry`) is shown but can never fire again.
pub fn quote(text: &str) -> String {
    text.lines()
        .map(|l| format!("> {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn step_table(steps: &[StepReport]) -> String {
    if steps.is_empty() {
        return "_No steps._\n".to_owned();
    }
    let costs = steps.iter().any(|s| s.cost_micro_usd > 0);
    let mut t = String::from(if costs {
        "| Step | Agent | State | Attempts | Duration | Cost |\n| --- | --- | --- | ---: | ---: | ---: |\n"
    } else {
        "| Step | Agent | State | Attempts | Duration |\n| --- | --- | --- | ---: | ---: |\n"
    });
    for s in steps {
        let _ = write!(
            t,
            "| {} | {} | {} | {} | {} |",
            code_span(&s.id),
            code_span(&s.agent),
            s.state.label(),
            s.attempts,
            s.duration_ms
                .map_or_else(|| "—".to_owned(), format_duration)
        );
        if costs {
            let _ = write!(t, " ${:.2} |", s.cost_micro_usd as f64 / 1e6);
        }
        t.push('\n');
    }
    t
}

fn attempts_and_duration(step: &StepReport) -> String {
    let attempts = match step.attempts {
        1 => "1 attempt".to_owned(),
        n => format!("{n} attempts"),
    };
    match step.duration_ms {
        Some(ms) => format!("{attempts}, {}", format_duration(ms)),
        None => attempts,
    }
}

/// `850 ms`, `12.3 s`, `4 min 05 s`, `1 h 02 min`.
pub fn format_duration(ms: u64) -> String {
    match ms {
        0..1_000 => format!("{ms} ms"),
        1_000..60_000 => format!("{:.1} s", ms as f64 / 1000.0),
        60_000..3_600_000 => format!("{} min {:02} s", ms / 60_000, (ms / 1000) % 60),
        _ => format!("{} h {:02} min", ms / 3_600_000, (ms / 60_000) % 60),
    }
}

/// A code span holding one line of untrusted text: line breaks become
/// spaces, backticks become `'`, and `|` is escaped (GitHub splits table
/// cells on it even inside code).
pub(crate) fn code_span(text: &str) -> String {
    let clean: String = text
        .chars()
        .map(|c| match c {
            '\n' | '\r' | '\t' => ' ',
            '`' => '\'',
            c => c,
        })
        .collect();
    let clean = clean.trim();
    if clean.is_empty() {
        return "`-`".to_owned();
    }
    format!("`{}`", clean.replace('|', "\\|"))
}

/// One line of untrusted prose: Markdown punctuation backslash-escaped (no
/// links, emphasis, HTML or mentions), line breaks folded, and never a `/`
/// at the start.
fn escape_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\n' | '\r' => out.push(' '),
            '\\' | '`' | '*' | '_' | '[' | ']' | '<' | '>' | '|' | '#' | '!' | '~' | '@' | '&' => {
                out.push('\\');
                out.push(c);
            }
            c => out.push(c),
        }
    }
    let trimmed = out.trim();
    if trimmed.starts_with('/') {
        format!("\\{trimmed}")
    } else {
        trimmed.to_owned()
    }
}

fn escape_html(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace(['\n', '\r'], " ")
}

/// A URL for a Markdown link target: only http(s), and characters that
/// would end the link encoded.
fn escape_url(url: &str) -> String {
    if !(url.starts_with("https://") || url.starts_with("http://")) {
        return "#".to_owned();
    }
    url.replace(' ', "%20")
        .replace('(', "%28")
        .replace(')', "%29")
}

/// Untrusted output in a fenced block that it cannot close, with lines
/// starting with `/` indented by one space.
fn fenced(output: &str) -> String {
    let longest_ticks = output.split(|c| c != '`').map(str::len).max().unwrap_or(0);
    let fence = "`".repeat((longest_ticks + 1).max(3));
    let mut body = String::with_capacity(output.len() + 16);
    for line in output.lines() {
        if line.starts_with('/') {
            body.push(' ');
        }
        body.push_str(line);
        body.push('\n');
    }
    format!("{fence}text\n{body}{fence}\n")
}

/// Shares `total` among items of the given sizes: items that fit in an even
/// share keep their size, the rest split what is left evenly.
fn fair_budgets(sizes: &[usize], total: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..sizes.len()).collect();
    order.sort_by_key(|&i| sizes[i]);
    let mut budgets = vec![0; sizes.len()];
    let mut remaining = total;
    for (k, &i) in order.iter().enumerate() {
        let share = remaining / (sizes.len() - k);
        budgets[i] = sizes[i].min(share);
        remaining -= budgets[i];
    }
    budgets
}

fn omitted_note(n: usize, unit: &str) -> String {
    format!("[… {n} {unit} of earlier output left out to fit GitHub's limit]\n")
}

/// The last `budget` bytes of `text` (on a character boundary), with a note
/// in front when something was cut.
fn keep_tail_bytes(text: &str, budget: usize) -> String {
    if text.len() <= budget {
        return text.to_owned();
    }
    let note = omitted_note(text.len(), "bytes");
    let mut start = text.len() - budget.saturating_sub(note.len());
    while !text.is_char_boundary(start) {
        start += 1;
    }
    format!("{}{}", omitted_note(start, "bytes"), &text[start..])
}

/// The last `budget` characters of `text`, with a note in front when cut.
fn keep_tail_chars(text: &str, budget: usize) -> String {
    let total = text.chars().count();
    if total <= budget {
        return text.to_owned();
    }
    let keep = budget.saturating_sub(omitted_note(total, "characters").chars().count());
    let skip = total - keep;
    let tail: String = text.chars().skip(skip).collect();
    format!("{}{tail}", omitted_note(skip, "characters"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fences_cannot_be_closed_from_inside() {
        let out = fenced("a\n````\n/retry\nb");
        assert!(out.starts_with("`````text\n"));
        assert!(out.contains("\n /retry\n"));
    }

    #[test]
    fn fair_budgets_give_small_items_their_size() {
        assert_eq!(fair_budgets(&[10, 1000, 1000], 610), vec![10, 300, 300]);
        assert_eq!(fair_budgets(&[], 10), Vec::<usize>::new());
    }

    #[test]
    fn prose_cannot_start_a_command_or_link() {
        assert_eq!(escape_text("/retry now"), "\\/retry now");
        assert_eq!(escape_text("[x](y) @you"), "\\[x\\](y) \\@you");
    }

    #[test]
    fn tail_keeps_the_end() {
        let t = keep_tail_bytes(&"x".repeat(1000), 200);
        assert!(t.len() <= 200 && t.ends_with('x') && t.starts_with("[…"));
    }
}
