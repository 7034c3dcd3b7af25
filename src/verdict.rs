//! Verdicts: what a validation step found, in one schema for every agent.
//!
//! A validation step (`validation: code_review | tests | security_audit |
//! other`) ends with a **verdict report** — `verdict` (`pass`, `fail`,
//! `neutral`), a markdown `summary`, and `findings` on lines of the
//! checked-out commit — that decides the run's check run instead of "the
//! agent answered". The schema is `schemas/verdict.schema.json`
//! ([`SCHEMA`]); agents are asked for it by [`instructions`] (taskmaster's
//! text, not each workflow's), and their answer is read by [`parse`]: the
//! **last** fenced ```` ```json ```` block of the output (or the whole output
//! when it is bare JSON, as Claude Code's `structured_output` is), checked
//! against the schema's bounds with unknown fields refused.
//!
//! An answer that does not parse is *malformed*: the step gets one repair
//! turn quoting the error, then fails as `malformed` — never as the code's
//! verdict. Source: `WORKSPACES.md` ("Verdicts and findings"), after
//! pr-agent's YAML-against-a-schema and Claude Code's `--json-schema`.

use serde::{Deserialize, Serialize};

/// The verdict report's JSON Schema (draft 2020-12).
pub const SCHEMA: &str = include_str!("../schemas/verdict.schema.json");

/// [`SCHEMA`] on one line (for a command-line argument), without `$schema`
/// and `$id`: the agents' validators (Claude Code's `--json-schema` reads
/// draft-07 by default) refuse a 2020-12 meta-schema they do not bundle,
/// and the keywords used here mean the same in both drafts.
pub fn schema_compact() -> String {
    serde_json::from_str::<serde_json::Value>(SCHEMA)
        .map(|mut v| {
            if let Some(o) = v.as_object_mut() {
                o.remove("$schema");
                o.remove("$id");
            }
            v.to_string()
        })
        .unwrap_or_else(|_| SCHEMA.to_owned())
}

/// Findings kept at most (the schema's `maxItems`).
pub const MAX_FINDINGS: usize = 200;
/// Characters of `summary` at most.
pub const MAX_SUMMARY_CHARS: usize = 8000;
/// Bytes of an answer looked at for a block at most (the tail is kept).
pub const MAX_ANSWER_BYTES: usize = 512 * 1024;

/// The verdict itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Nothing stands in the way.
    Pass,
    /// The change must not go in as it is.
    Fail,
    /// Worth a look, not blocking.
    Neutral,
}

impl Verdict {
    /// `pass`, `fail` or `neutral`.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::Fail => "fail",
            Verdict::Neutral => "neutral",
        }
    }
}

/// How serious a finding is; maps to a check-run annotation level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Notice,
    Warning,
    Failure,
}

/// The check run's conclusion when a verdict is `fail` and every step
/// succeeded (`verdicts.fail` in a workflow).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailConclusion {
    /// `failure` (the default): a red check, which branch protection can require.
    #[default]
    Failure,
    /// `neutral`: advice only; the check does not block merging.
    Neutral,
    /// `action_required`: a maintainer should look (the check run's Details
    /// page says what).
    ActionRequired,
}

impl FailConclusion {
    /// The conclusion sent to GitHub.
    pub fn conclusion(self) -> crate::github::CheckConclusion {
        use crate::github::CheckConclusion as C;
        match self {
            FailConclusion::Failure => C::Failure,
            FailConclusion::Neutral => C::Neutral,
            FailConclusion::ActionRequired => C::ActionRequired,
        }
    }
}

/// How a workflow's verdicts show on GitHub: `verdicts:` in the workflow
/// file, changed per repository by `verdicts:` in its
/// `.github/taskmaster.yml` (for every workflow, or under
/// `workflows.<name>`). A run keeps the rules it was created with (in its
/// context, [`VerdictRules::CONTEXT_KEY`]).
///
/// ```yaml
/// verdicts:
///   fail: neutral            # failure (default) | neutral | action_required
///   review_comments: true    # findings on the PR's changed lines as a review (default true)
///   min_severity: warning    # least severity posted as review comments (default notice)
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VerdictRules {
    /// The check run's conclusion for a `fail` verdict.
    pub fail: FailConclusion,
    /// Whether findings on lines of the pull request's diff hunks are also
    /// posted as one pull-request review (all are annotations either way).
    pub review_comments: bool,
    /// The least severity posted as a review comment.
    pub min_severity: Severity,
}

impl Default for VerdictRules {
    fn default() -> Self {
        Self {
            fail: FailConclusion::Failure,
            review_comments: true,
            min_severity: Severity::Notice,
        }
    }
}

impl VerdictRules {
    /// The key of a run's context holding its rules.
    pub const CONTEXT_KEY: &str = "verdict_rules";

    /// The rules a run was created with (the defaults for runs made before
    /// rules were kept, or when the stored value does not read).
    pub fn of_run(context: &serde_json::Value) -> Self {
        context
            .get(Self::CONTEXT_KEY)
            .and_then(|v| serde_json::from_value(v.clone()).ok())
            .unwrap_or_default()
    }
}

/// One finding on lines `start_line..=end_line` of `path`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Finding {
    pub path: String,
    pub start_line: u64,
    pub end_line: u64,
    pub severity: Severity,
    pub title: String,
    pub message: String,
    /// Replacement text for those lines.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suggestion: Option<String>,
}

/// A validation step's report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerdictReport {
    pub verdict: Verdict,
    pub summary: String,
    pub findings: Vec<Finding>,
}

/// A finished step's verdict for conditions (`steps.<id>.verdict`): the
/// verdict its answer ends with when it has one, else `pass` when it
/// succeeded and `fail` when it failed (a test command's exit status);
/// `None` (null) while it has not ended, or was skipped or cancelled.
pub fn step_verdict(outcome: &str, output: Option<&str>) -> Option<&'static str> {
    if let Some(report) = output.and_then(|o| parse(o).ok()) {
        return Some(report.verdict.as_str());
    }
    match outcome {
        "success" => Some("pass"),
        "failure" => Some("fail"),
        _ => None,
    }
}

/// Checks `report`'s findings against the checkout at `root` (the commit
/// the step saw): findings on paths that are not files there are dropped
/// (GitHub refuses annotations on them) and said so in the summary; lines
/// past a file's end are clamped to it. Returns whether anything changed.
pub fn fit_to_tree(report: &mut VerdictReport, root: &std::path::Path) -> bool {
    let mut dropped: Vec<String> = Vec::new();
    let mut changed = false;
    report.findings.retain_mut(|f| {
        let file = root.join(&f.path);
        let inside = file
            .canonicalize()
            .ok()
            .zip(root.canonicalize().ok())
            .is_some_and(|(f, r)| f.starts_with(r));
        if !inside || !file.is_file() {
            if !dropped.contains(&f.path) {
                dropped.push(f.path.clone());
            }
            return false;
        }
        // Clamp to the file's lines (files over 10 MB are left as they are).
        if let Ok(meta) = std::fs::metadata(&file)
            && meta.len() <= 10 * 1024 * 1024
            && let Ok(bytes) = std::fs::read(&file)
        {
            let lines = (bytes.iter().filter(|b| **b == b'\n').count()
                + usize::from(!bytes.is_empty() && !bytes.ends_with(b"\n")))
            .max(1) as u64;
            if f.end_line > lines {
                f.end_line = lines;
                f.start_line = f.start_line.min(lines);
                changed = true;
            }
        }
        true
    });
    if !dropped.is_empty() {
        let names: Vec<String> = dropped.iter().map(|p| format!("`{p}`")).collect();
        report.summary.push_str(&format!(
            "\n\n(Findings on paths not in the checked-out commit were dropped: {}.)",
            names.join(", ")
        ));
        changed = true;
    }
    changed
}

/// Report files read per step at most, and bytes per file.
const MAX_REPORT_FILES: usize = 50;
const MAX_REPORT_BYTES: u64 = 20 * 1024 * 1024;

/// The verdict of a step that wrote JUnit XML reports matching `glob`
/// (relative to the workspace `root`): every failed or errored test case is
/// a `failure` finding on the line its failure points at — the last
/// `path:line:` of its message or trace naming a file of the workspace
/// (pytest, cargo, Go and Node print those), else the test case's
/// `file`/`line` attributes; the verdict is `fail` when `exit_ok` is false
/// or any test failed. Read with `quick-junit`.
pub fn from_junit(root: &std::path::Path, glob: &str, exit_ok: bool) -> VerdictReport {
    let files = report_files(root, glob);
    let location = regex::Regex::new(r"([A-Za-z0-9_./-]+\.[A-Za-z0-9]+):(\d+)").expect("compiles");
    let (mut tests, mut failed, mut unplaced, mut unreadable) =
        (0usize, 0usize, 0usize, Vec::new());
    let mut findings = Vec::new();
    for file in &files {
        let rel = file
            .strip_prefix(root)
            .unwrap_or(file)
            .display()
            .to_string();
        let text = match std::fs::metadata(file) {
            Ok(m) if m.len() <= MAX_REPORT_BYTES => std::fs::read_to_string(file).ok(),
            _ => None,
        };
        let Some(report) = text.and_then(|t| quick_junit::Report::deserialize_from_str(&t).ok())
        else {
            unreadable.push(rel);
            continue;
        };
        for case in report.test_suites.iter().flat_map(|s| s.test_cases.iter()) {
            tests += 1;
            let quick_junit::TestCaseStatus::NonSuccess {
                message,
                description,
                ..
            } = &case.status
            else {
                continue;
            };
            failed += 1;
            let text = format!(
                "{}\n{}",
                message.as_ref().map(|m| m.as_str()).unwrap_or(""),
                description.as_ref().map(|d| d.as_str()).unwrap_or("")
            );
            let in_tree = |p: &str| {
                !p.starts_with('/') && !p.split('/').any(|s| s == "..") && root.join(p).is_file()
            };
            let from_trace = location
                .captures_iter(&text)
                .filter_map(|c| Some((c.get(1)?.as_str().to_owned(), c[2].parse::<u64>().ok()?)))
                .filter(|(p, l)| *l > 0 && in_tree(p))
                .last();
            let attr = |k: &str| case.extra.get(k).map(|v| v.as_str().to_owned());
            let from_attrs = attr("file").filter(|p| in_tree(p)).map(|p| {
                (
                    p,
                    attr("line")
                        .and_then(|l| l.parse::<u64>().ok())
                        .unwrap_or(1)
                        .max(1),
                )
            });
            let Some((path, line)) = from_trace.or(from_attrs) else {
                unplaced += 1;
                continue;
            };
            if findings.len() >= MAX_FINDINGS {
                continue;
            }
            let name = match &case.classname {
                Some(c) => format!("{}.{}", c.as_str(), case.name.as_str()),
                None => case.name.as_str().to_owned(),
            };
            let message: String = text.trim().chars().take(3900).collect();
            findings.push(Finding {
                path,
                start_line: line,
                end_line: line,
                severity: Severity::Failure,
                title: format!("test {name} failed").chars().take(200).collect(),
                message: if message.is_empty() {
                    "failed".into()
                } else {
                    message
                },
                suggestion: None,
            });
        }
    }
    let mut summary = if files.is_empty() {
        format!("No test report matched `{glob}`.")
    } else {
        format!(
            "{tests} test{} in {} report{}, {failed} failed.",
            if tests == 1 { "" } else { "s" },
            files.len(),
            if files.len() == 1 { "" } else { "s" }
        )
    };
    if unplaced > 0 {
        summary.push_str(&format!(
            " {unplaced} failure{} named no line of the workspace.",
            if unplaced == 1 { "" } else { "s" }
        ));
    }
    report_verdict(
        summary,
        "JUnit XML",
        &unreadable,
        exit_ok,
        failed > 0,
        findings,
    )
}

/// The end of a report read from files: what could not be read, a
/// non-zero exit, and the verdict (`fail` on either or on `failed`).
fn report_verdict(
    mut summary: String,
    format: &str,
    unreadable: &[String],
    exit_ok: bool,
    failed: bool,
    findings: Vec<Finding>,
) -> VerdictReport {
    if !unreadable.is_empty() {
        summary.push_str(&format!(" Not {format}: {}.", unreadable.join(", ")));
    }
    if !exit_ok {
        summary.push_str(" The command exited non-zero.");
    }
    VerdictReport {
        verdict: if exit_ok && !failed {
            Verdict::Pass
        } else {
            Verdict::Fail
        },
        summary,
        findings,
    }
}

/// The files under `root` (not in `.git`) matching `glob`, sorted, at most
/// [`MAX_REPORT_FILES`].
fn report_files(root: &std::path::Path, glob: &str) -> Vec<std::path::PathBuf> {
    let matcher = globset::Glob::new(glob).map(|g| g.compile_matcher()).ok();
    let mut files = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let path = e.path();
            let Ok(kind) = e.file_type() else { continue };
            if kind.is_dir() && e.file_name() != ".git" {
                stack.push(path);
            } else if kind.is_file()
                && let Ok(rel) = path.strip_prefix(root)
                && matcher.as_ref().is_some_and(|m| m.is_match(rel))
                && files.len() < MAX_REPORT_FILES
            {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// The verdict of a step that wrote SARIF 2.1.0 logs matching `glob` (a
/// linter or scanner: `clippy-sarif`, `semgrep --sarif`, `eslint -f
/// @microsoft/eslint-formatter-sarif`): each result with a location in the
/// workspace is a finding (`error` → failure, `warning` → warning, `note`
/// and `none` → notice); the verdict is `fail` when `exit_ok` is false or
/// any result is an error. Read with serde against the schema's fields.
/// Source: <https://docs.oasis-open.org/sarif/sarif/v2.1.0/sarif-v2.1.0.html>.
pub fn from_sarif(root: &std::path::Path, glob: &str, exit_ok: bool) -> VerdictReport {
    #[derive(Deserialize)]
    struct Log {
        #[serde(default)]
        runs: Vec<Run>,
    }
    #[derive(Deserialize)]
    struct Run {
        #[serde(default)]
        results: Vec<SarifResult>,
    }
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct SarifResult {
        #[serde(default)]
        rule_id: Option<String>,
        #[serde(default)]
        level: Option<String>,
        #[serde(default)]
        message: Message,
        #[serde(default)]
        locations: Vec<Location>,
    }
    #[derive(Deserialize, Default)]
    struct Message {
        #[serde(default)]
        text: Option<String>,
    }
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Location {
        #[serde(default)]
        physical_location: Option<Physical>,
    }
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Physical {
        #[serde(default)]
        artifact_location: Option<Artifact>,
        #[serde(default)]
        region: Option<Region>,
    }
    #[derive(Deserialize)]
    struct Artifact {
        #[serde(default)]
        uri: Option<String>,
    }
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Region {
        #[serde(default)]
        start_line: Option<u64>,
        #[serde(default)]
        end_line: Option<u64>,
    }
    let files = report_files(root, glob);
    let (mut results, mut errors, mut unplaced, mut unreadable) =
        (0usize, 0usize, 0usize, Vec::new());
    let mut findings = Vec::new();
    for file in &files {
        let rel = file
            .strip_prefix(root)
            .unwrap_or(file)
            .display()
            .to_string();
        let log: Option<Log> = match std::fs::metadata(file) {
            Ok(m) if m.len() <= MAX_REPORT_BYTES => std::fs::read(file)
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok()),
            _ => None,
        };
        let Some(log) = log else {
            unreadable.push(rel);
            continue;
        };
        for r in log.runs.into_iter().flat_map(|run| run.results) {
            results += 1;
            let level = r.level.as_deref().unwrap_or("warning");
            let severity = match level {
                "error" => Severity::Failure,
                "warning" => Severity::Warning,
                _ => Severity::Notice,
            };
            if severity == Severity::Failure {
                errors += 1;
            }
            let place = r.locations.iter().find_map(|l| {
                let p = l.physical_location.as_ref()?;
                let uri = p.artifact_location.as_ref()?.uri.as_deref()?;
                let path = uri.strip_prefix("file://").unwrap_or(uri);
                let path = path
                    .strip_prefix(&format!("{}/", root.display()))
                    .unwrap_or(path)
                    .trim_start_matches("./")
                    .to_owned();
                let start = p
                    .region
                    .as_ref()
                    .and_then(|r| r.start_line)
                    .unwrap_or(1)
                    .max(1);
                let end = p
                    .region
                    .as_ref()
                    .and_then(|r| r.end_line)
                    .unwrap_or(start)
                    .max(start);
                let inside = !path.starts_with('/')
                    && !path.split('/').any(|s| s == "..")
                    && root.join(&path).is_file();
                inside.then_some((path, start, end))
            });
            let Some((path, start, end)) = place else {
                unplaced += 1;
                continue;
            };
            if findings.len() >= MAX_FINDINGS {
                continue;
            }
            let message: String = r
                .message
                .text
                .unwrap_or_else(|| "(no message)".into())
                .chars()
                .take(3900)
                .collect();
            findings.push(Finding {
                path,
                start_line: start,
                end_line: end,
                severity,
                title: r
                    .rule_id
                    .unwrap_or_else(|| level.to_owned())
                    .chars()
                    .take(200)
                    .collect(),
                message: if message.trim().is_empty() {
                    "(no message)".into()
                } else {
                    message
                },
                suggestion: None,
            });
        }
    }
    let mut summary = if files.is_empty() {
        format!("No SARIF log matched `{glob}`.")
    } else {
        format!(
            "{results} result{} in {} log{}, {errors} error{}.",
            if results == 1 { "" } else { "s" },
            files.len(),
            if files.len() == 1 { "" } else { "s" },
            if errors == 1 { "" } else { "s" }
        )
    };
    if unplaced > 0 {
        summary.push_str(&format!(" {unplaced} named no file of the workspace."));
    }
    report_verdict(summary, "SARIF", &unreadable, exit_ok, errors > 0, findings)
}

/// The new-side line ranges (inclusive) of the hunks of one file's patch
/// (`@@ -a,b +c,d @@` headers), where review comments may go.
pub fn hunk_ranges(patch: &str) -> Vec<(u64, u64)> {
    patch
        .lines()
        .filter_map(crate::workspace::HunkHeader::parse)
        .filter_map(|h| h.new_range())
        .collect()
}

/// What the verdict reports of a run's succeeded steps say.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunVerdicts {
    /// Every finding, with the step that made it.
    pub findings: Vec<(String, Finding)>,
    /// One sentence per `fail` verdict: which step, and its summary's first line.
    pub failed: Vec<String>,
    /// How many steps ended with a verdict report.
    pub reports: usize,
}

/// Reads the verdict reports of `steps` that ended: findings of succeeded
/// and failed steps (a failing test command's failed tests), and a `fail`
/// verdict of a succeeded step (a failed step already fails the run).
pub fn run_verdicts(steps: &[crate::store::StepRecord]) -> RunVerdicts {
    use crate::store::StepState;
    let mut out = RunVerdicts::default();
    for s in steps
        .iter()
        .filter(|s| matches!(s.state, StepState::Succeeded | StepState::Failed))
    {
        let Some(report) = s.output.as_deref().and_then(|o| parse(o).ok()) else {
            continue;
        };
        out.reports += 1;
        if report.verdict == Verdict::Fail && s.state == StepState::Succeeded {
            let first: String = report
                .summary
                .lines()
                .map(str::trim)
                .find(|l| !l.is_empty())
                .unwrap_or("")
                .chars()
                .take(200)
                .collect();
            out.failed
                .push(format!("the verdict of `{}` is fail: {first}", s.step));
        }
        out.findings
            .extend(report.findings.into_iter().map(|f| (s.step.clone(), f)));
    }
    out
}

/// The text appended to a validation step's prompt: what to end the answer
/// with, and the schema.
pub fn instructions() -> String {
    format!(
        "\n\n---\nEnd your answer with exactly one fenced ```json block holding your verdict, \
         valid against this JSON Schema (no other fields; `fail` when the change must not go in \
         as it is, `pass` when nothing stands in the way, `neutral` otherwise; findings name \
         lines of the files as they are in your working tree):\n```json\n{}\n```\n",
        SCHEMA.trim()
    )
}

/// The text of a repair turn after `error`.
pub fn repair_prompt(error: &str) -> String {
    format!(
        "Your last answer's verdict block could not be read: {error}\nAnswer again with only \
         the fenced ```json block, valid against the schema given before."
    )
}

/// The last fenced ```` ```json ```` block of `text` (a fence of three or
/// more backticks, the info string `json`, closed by a fence at least as
/// long), or the whole text when it is itself a JSON object. Looks at the
/// last [`MAX_ANSWER_BYTES`] only; linear in that.
pub fn last_json_block(text: &str) -> Option<&str> {
    let mut start = text.len().saturating_sub(MAX_ANSWER_BYTES);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    let text = &text[start..];
    let trimmed = text.trim();
    if trimmed.starts_with('{') && trimmed.ends_with('}') {
        return Some(trimmed);
    }
    let mut found = None;
    let mut open: Option<(usize, usize)> = None; // (fence length, body start)
    let mut at = 0;
    for line in text.split_inclusive('\n') {
        let line_start = at;
        at += line.len();
        let content = line.trim_end_matches(['\n', '\r']);
        let stripped = content.trim_start();
        let ticks = stripped.chars().take_while(|c| *c == '`').count();
        match open {
            None if ticks >= 3 => {
                let info = stripped[ticks..].trim();
                if info.eq_ignore_ascii_case("json") {
                    open = Some((ticks, at));
                } else if !info.contains('`') {
                    // Another language's block: skip to its end.
                    open = Some((ticks, usize::MAX));
                }
            }
            Some((len, body)) if ticks >= len && stripped[ticks..].trim().is_empty() => {
                if body != usize::MAX {
                    found = Some(&text[body..line_start]);
                }
                open = None;
            }
            _ => {}
        }
    }
    found
}

/// Reads a verdict report from an agent's answer (see the module docs).
///
/// # Errors
/// A sentence saying what is wrong (no block, JSON error with line and
/// column, unknown field, a bound exceeded), for the repair turn.
pub fn parse(text: &str) -> Result<VerdictReport, String> {
    let block = last_json_block(text)
        .ok_or_else(|| "the answer has no fenced ```json block with the verdict".to_owned())?;
    let report: VerdictReport =
        serde_json::from_str(block).map_err(|e| format!("the verdict block is not valid: {e}"))?;
    validate(&report)?;
    Ok(report)
}

/// The schema's bounds, beyond what serde checks.
fn validate(r: &VerdictReport) -> Result<(), String> {
    if r.summary.chars().count() > MAX_SUMMARY_CHARS {
        return Err(format!(
            "`summary` is longer than {MAX_SUMMARY_CHARS} characters"
        ));
    }
    if r.findings.len() > MAX_FINDINGS {
        return Err(format!(
            "{} findings, more than {MAX_FINDINGS}",
            r.findings.len()
        ));
    }
    for (i, f) in r.findings.iter().enumerate() {
        let bad = |what: &str| Err(format!("finding {i} (`{}`): {what}", f.title));
        if f.path.is_empty()
            || f.path.len() > 400
            || f.path.starts_with('/')
            || f.path.split('/').any(|s| s == ".." || s.is_empty())
        {
            return bad("`path` must be a relative file path inside the repository");
        }
        if f.start_line == 0 || f.end_line == 0 || f.start_line > f.end_line {
            return bad("`start_line` and `end_line` must be at least 1, start before end");
        }
        if f.title.trim().is_empty() || f.title.chars().count() > 200 {
            return bad("`title` must have 1 to 200 characters");
        }
        if f.message.trim().is_empty() || f.message.chars().count() > 4000 {
            return bad("`message` must have 1 to 4000 characters");
        }
        if f.suggestion
            .as_ref()
            .is_some_and(|s| s.chars().count() > 8000)
        {
            return bad("`suggestion` is longer than 8000 characters");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"{"verdict":"fail","summary":"One bug.","findings":[{"path":"src/a.rs","start_line":3,"end_line":4,"severity":"failure","title":"Off by one","message":"The loop ends one early."}]}"#;

    #[test]
    fn the_schema_is_json_and_names_every_field() {
        let v: serde_json::Value = serde_json::from_str(SCHEMA).unwrap();
        let props = &v["properties"]["findings"]["items"]["properties"];
        for field in [
            "path",
            "start_line",
            "end_line",
            "severity",
            "title",
            "message",
            "suggestion",
        ] {
            assert!(props.get(field).is_some(), "{field}");
        }
    }

    #[test]
    fn the_last_json_block_wins_and_other_blocks_are_skipped() {
        let text = format!(
            "Looks fine.\n```json\n{{\"old\": 1}}\n```\n```rust\n```json\nnot this\n```\nVerdict:\n```json\n{GOOD}\n```\n"
        );
        let r = parse(&text).unwrap();
        assert_eq!(r.verdict, Verdict::Fail);
        assert_eq!(r.findings[0].start_line, 3);
        // Bare JSON (Claude Code's structured_output) is taken whole.
        assert_eq!(parse(GOOD).unwrap().verdict, Verdict::Fail);
        // A longer fence may hold backticks.
        let long = format!("````json\n{GOOD}\n````");
        assert!(parse(&long).is_ok());
    }

    #[test]
    fn findings_are_fitted_to_the_checkout() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("src")).unwrap();
        std::fs::write(dir.path().join("src/a.rs"), "one\ntwo\nthree").unwrap();
        let mut r = parse(GOOD).unwrap();
        r.findings[0].end_line = 40;
        let mut gone = r.findings[0].clone();
        gone.path = "src/gone.rs".into();
        r.findings.push(gone);
        assert!(fit_to_tree(&mut r, dir.path()));
        assert_eq!(r.findings.len(), 1);
        assert_eq!((r.findings[0].start_line, r.findings[0].end_line), (3, 3));
        assert!(r.summary.contains("`src/gone.rs`"), "{}", r.summary);
        // Nothing to fit: unchanged.
        let mut out = r.clone();
        assert!(!fit_to_tree(&mut out, dir.path()));
        assert_eq!(out, r);
    }

    #[test]
    fn sarif_results_become_findings_and_errors_fail() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("src")).unwrap();
        std::fs::write(dir.path().join("src/main.rs"), "fn main() {}\n").unwrap();
        // The shape clippy-sarif and semgrep write (SARIF 2.1.0).
        let log = serde_json::json!({
            "version": "2.1.0",
            "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
            "runs": [{
                "tool": {"driver": {"name": "clippy", "rules": []}},
                "results": [
                    {"ruleId": "clippy::needless_return", "level": "warning",
                     "message": {"text": "unneeded `return` statement"},
                     "locations": [{"physicalLocation": {
                         "artifactLocation": {"uri": "src/main.rs"},
                         "region": {"startLine": 1, "startColumn": 13, "endLine": 1}}}]},
                    {"ruleId": "E1", "level": "error",
                     "message": {"text": "elsewhere"},
                     "locations": [{"physicalLocation": {
                         "artifactLocation": {"uri": "/usr/lib/x.rs"},
                         "region": {"startLine": 3}}}]}
                ]
            }]
        });
        std::fs::write(dir.path().join("lint.sarif"), log.to_string()).unwrap();
        std::fs::write(dir.path().join("bad.sarif"), "not json").unwrap();
        let r = from_sarif(dir.path(), "*.sarif", true);
        assert_eq!(r.verdict, Verdict::Fail, "an error-level result");
        assert_eq!(r.findings.len(), 1, "{r:#?}");
        assert_eq!(r.findings[0].path, "src/main.rs");
        assert_eq!(r.findings[0].severity, Severity::Warning);
        assert_eq!(r.findings[0].title, "clippy::needless_return");
        assert!(
            r.summary.contains("2 results in 2 logs, 1 error."),
            "{}",
            r.summary
        );
        assert!(r.summary.contains("Not SARIF: bad.sarif."), "{}", r.summary);
        assert!(r.summary.contains("1 named no file"), "{}", r.summary);
    }

    #[test]
    fn malformed_answers_say_what_is_wrong() {
        assert!(parse("no block").unwrap_err().contains("no fenced"));
        let e = parse("```json\n{\"verdict\":\"maybe\",\"summary\":\"\",\"findings\":[]}\n```")
            .unwrap_err();
        assert!(e.contains("unknown variant `maybe`"), "{e}");
        let e = parse(
            "```json\n{\"verdict\":\"pass\",\"summary\":\"\",\"findings\":[],\"extra\":1}\n```",
        )
        .unwrap_err();
        assert!(e.contains("unknown field `extra`"), "{e}");
        let e = parse(&GOOD.replace("\"start_line\":3", "\"start_line\":9")).unwrap_err();
        assert!(e.contains("start before end"), "{e}");
        let e = parse(&GOOD.replace("src/a.rs", "../etc/passwd")).unwrap_err();
        assert!(e.contains("relative file path"), "{e}");
    }
}
