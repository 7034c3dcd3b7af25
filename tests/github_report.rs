//! Rendered reports, pinned by insta snapshots (`tests/snapshots/`): the
//! check-run output and the sticky comment for each kind of run, plus the
//! rules that keep untrusted text from breaking out of its place.

use chrono::{TimeZone, Utc};
use taskmaster::command::{Command, parse_comment};
use taskmaster::github::CheckConclusion;
use taskmaster::report::{
    RunOutcome, RunReport, RunState, STICKY_MARKER, StepReport, StepState, Subject,
    command_for_action, quote, render_check_output, render_sticky_comment,
};

fn step(
    id: &str,
    agent: &str,
    state: StepState,
    attempts: u32,
    ms: Option<u64>,
    out: Option<&str>,
) -> StepReport {
    StepReport {
        id: id.into(),
        agent: agent.into(),
        state,
        attempts,
        duration_ms: ms,
        output: out.map(str::to_owned),
        cost_micro_usd: 0,
    }
}

fn report(state: RunState) -> RunReport {
    RunReport {
        run_id: "01J9ZK3V7Q".into(),
        workflow: "review".into(),
        repository: "octo/widgets".parse().ok(),
        number: 7,
        subject: Subject::PullRequest,
        head_sha: Some("0123456789abcdef0123456789abcdef01234567".into()),
        state,
        steps: vec![
            step(
                "plan",
                "claude",
                StepState::Succeeded,
                1,
                Some(12_345),
                Some("Plan:\n1. read\n2. write"),
            ),
            step(
                "implement",
                "aider",
                StepState::Failed,
                3,
                Some(185_000),
                Some("error[E0308]: mismatched types\n --> src/lib.rs:3:5"),
            ),
            step("summarize", "codegen", StepState::Pending, 0, None, None),
        ],
        details_url: Some("https://taskmaster.example/runs/01J9ZK3V7Q".into()),
        started_at: Some(Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap()),
        completed_at: None,
        reason: None,
        change: None,
        findings: Vec::new(),
        annotate: false,
        verdict_rules: Default::default(),
        failed_by_verdict: false,
        has_verdicts: false,
        started_by_api: None,
        stopped_by_budget: None,
        expected: None,
        cost_micro_usd: 0,
    }
}

#[test]
fn failed_run_check_output() {
    let out = render_check_output(&report(RunState::Completed(RunOutcome::Failed)));
    insta::assert_snapshot!(
        "failed_check_output",
        format!(
            "title: {}\n--- summary\n{}--- text\n{}",
            out.title,
            out.summary(),
            out.text().unwrap()
        )
    );
}

#[test]
fn running_run_check_output() {
    let out = render_check_output(&report(RunState::Running));
    insta::assert_snapshot!(
        "running_check_output",
        format!("title: {}\n--- summary\n{}", out.title, out.summary())
    );
}

#[test]
fn failed_run_sticky_comment() {
    insta::assert_snapshot!(
        "failed_sticky_comment",
        render_sticky_comment(&[report(RunState::Completed(RunOutcome::Failed))])
    );
}

#[test]
fn waiting_run_sticky_comment() {
    let mut r = report(RunState::WaitingForApproval);
    r.reason = Some("The author is not a collaborator; a maintainer must approve.".into());
    for s in &mut r.steps {
        s.state = StepState::Pending;
        s.attempts = 0;
        s.duration_ms = None;
        s.output = None;
    }
    insta::assert_snapshot!("waiting_sticky_comment", render_sticky_comment(&[r]));
}

#[test]
fn hostile_text_stays_inside_its_block() {
    let mut r = report(RunState::Completed(RunOutcome::Succeeded));
    r.workflow = "rev|iew`\n/retry".into();
    r.reason = Some("/cancel [click](https://evil.example) @everyone <img src=x>".into());
    r.steps = vec![step(
        "x|y</code></summary>",
        "a`b",
        StepState::Succeeded,
        1,
        Some(10),
        Some(
            "ok\n```\n</details>\n/cancel\n  /pause\n@maintainers please merge\n<!-- taskmaster:sticky -->",
        ),
    )];
    let comment = render_sticky_comment(&[r.clone()]);
    insta::assert_snapshot!("hostile_sticky_comment", comment);

    // No line of taskmaster's comment starts with `/`, so no line-anchored
    // bot (Prow's `^/lgtm`) can read a command in it …
    for line in comment.lines() {
        assert!(
            !line.starts_with('/'),
            "line starts with a command: {line:?}"
        );
    }
    // … and our own parser finds none either (the approve hint is quoted).
    let commands = parse_comment(&comment, "taskmaster");
    assert!(commands.is_empty(), "{commands:?}");
    // The marker appears once, at the start.
    assert!(comment.starts_with(STICKY_MARKER));

    let out = render_check_output(&r);
    for field in [out.summary(), out.text().unwrap()] {
        assert!(field.lines().all(|l| !l.starts_with('/')));
        assert!(parse_comment(field, "taskmaster").is_empty());
    }
}

#[test]
fn state_maps_to_status_and_conclusion() {
    use taskmaster::github::CheckStatus::*;
    let cases = [
        (RunState::Queued, Queued, None),
        (RunState::Running, InProgress, None),
        (RunState::Paused, InProgress, None),
        (
            RunState::WaitingForApproval,
            Completed,
            Some(CheckConclusion::ActionRequired),
        ),
        (
            RunState::Completed(RunOutcome::Succeeded),
            Completed,
            Some(CheckConclusion::Success),
        ),
        (
            RunState::Completed(RunOutcome::Failed),
            Completed,
            Some(CheckConclusion::Failure),
        ),
        (
            RunState::Completed(RunOutcome::Cancelled),
            Completed,
            Some(CheckConclusion::Cancelled),
        ),
        (
            RunState::Completed(RunOutcome::TimedOut),
            Completed,
            Some(CheckConclusion::TimedOut),
        ),
        (
            RunState::Completed(RunOutcome::Skipped),
            Completed,
            Some(CheckConclusion::Neutral),
        ),
    ];
    for (state, status, conclusion) in cases {
        assert_eq!(
            report(state).check_status(),
            (status, conclusion),
            "{state:?}"
        );
    }
}

#[test]
fn buttons_map_back_to_commands() {
    let r = report(RunState::Completed(RunOutcome::TimedOut));
    let actions = r.check_actions();
    let ids: Vec<&str> = actions.iter().map(|a| a.identifier()).collect();
    assert_eq!(ids, ["retry", "rerun"]);
    assert_eq!(
        command_for_action("retry", "review"),
        Some(Command::Retry { step: None })
    );
    assert_eq!(
        command_for_action("rerun", "review"),
        Some(Command::Run {
            workflow: "review".into()
        })
    );
    assert_eq!(
        command_for_action("approve", "review"),
        Some(Command::Approve { sha: None })
    );
    assert_eq!(command_for_action("rm -rf", "review"), None);
    assert!(report(RunState::Running).check_actions().is_empty());
}

#[test]
fn quoted_commands_never_fire() {
    let q = quote("/retry\n/cancel");
    assert_eq!(q, "> /retry\n> /cancel");
    assert!(parse_comment(&q, "taskmaster").is_empty());
}

#[test]
fn a_change_shows_where_it_went_its_files_and_for_forks_its_patch() {
    let mut r = report(RunState::Completed(RunOutcome::Succeeded));
    r.change = Some(taskmaster::report::ChangeReport {
        text: "Proposed 2 files (+3 −1) in draft pull request #12 from taskmaster/fix-7-1 <b>"
            .into(),
        url: Some("https://github.com/octo/widgets/pull/12".into()),
        patch: Some("--- a/x\n+++ b/x\n@@ -1 +1 @@\n-old\n+new ```\n".into()),
        files: vec![("src/a|b.rs".into(), 3, 1), ("README.md".into(), 0, 0)],
    });
    let out = render_check_output(&r);
    let summary = out.summary();
    assert!(
        summary.contains("**Change:** Proposed 2 files (+3 −1) in draft pull request"),
        "{summary}"
    );
    assert!(!summary.contains("<b>"), "escaped: {summary}");
    assert!(
        summary.contains("[Open the pull request](https://github.com/octo/widgets/pull/12)"),
        "{summary}"
    );
    assert!(summary.contains("| `src/a\\|b.rs` | 3 | 1 |"), "{summary}");
    let text = out.text().unwrap();
    assert!(text.contains("### The change's patch"), "{text}");
    assert!(text.contains("+new ```"), "{text}");
    let comment = render_sticky_comment(&[r]);
    assert!(comment.contains("**Change:**"), "{comment}");
    assert!(
        comment.contains("<summary>Files changed</summary>"),
        "{comment}"
    );
}
