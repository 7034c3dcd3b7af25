//! The comment-command grammar, as a table: what fires and what must never
//! fire (code, quotes, HTML comments, list items, …).

use proptest::prelude::*;
use taskmaster::command::{parse_comment, quote};

const SLUG: &str = "taskmaster";

/// Each found command as `/name args`, or `error: <message>`.
fn found(body: &str) -> Vec<String> {
    parse_comment(body, SLUG)
        .into_iter()
        .map(|c| match c.parsed {
            Ok(command) => command.to_string(),
            Err(e) => format!("error: {e}"),
        })
        .collect()
}

#[test]
fn parser_table() {
    let long_step = "s".repeat(101);
    let long_step_error = format!(
        "error: `{}` is not a valid step id: use letters, digits, `-`, `_` and `.` (at most 100)",
        "s".repeat(50)
    );
    let long_line = format!("/retry {}", "x ".repeat(150));
    let cases: Vec<(&str, String, Vec<&str>)> = vec![
        // Each command, plain.
        ("retry", "/retry".into(), vec!["/retry"]),
        (
            "retry step",
            "/retry run_tests".into(),
            vec!["/retry run_tests"],
        ),
        ("cancel", "/cancel".into(), vec!["/cancel"]),
        ("pause", "/pause".into(), vec!["/pause"]),
        ("resume", "/resume".into(), vec!["/resume"]),
        ("status", "/status".into(), vec!["/status"]),
        (
            "run",
            "/run pr_processing".into(),
            vec!["/run pr_processing"],
        ),
        ("approve", "/approve".into(), vec!["/approve"]),
        ("help", "/help".into(), vec!["/help"]),
        // Case.
        ("upper case", "/RETRY".into(), vec!["/retry"]),
        (
            "mixed case",
            "/ReTry Run_Tests".into(),
            vec!["/retry Run_Tests"],
        ),
        ("upper run", "/RUN feature".into(), vec!["/run feature"]),
        // Whitespace and line endings.
        ("leading spaces", "   /status".into(), vec!["/status"]),
        ("leading tab is indented code", "\t/status".into(), vec![]),
        (
            "three spaces is not code",
            "   /status".into(),
            vec!["/status"],
        ),
        ("trailing spaces", "/pause   ".into(), vec!["/pause"]),
        (
            "crlf",
            "/retry\r\n/status\r\n".into(),
            vec!["/retry", "/status"],
        ),
        (
            "spaces between",
            "/retry    lint".into(),
            vec!["/retry lint"],
        ),
        // Slug forms.
        ("slug slash", "@taskmaster /retry".into(), vec!["/retry"]),
        (
            "slug word",
            "@taskmaster retry lint".into(),
            vec!["/retry lint"],
        ),
        ("slug case", "@TaskMaster STATUS".into(), vec!["/status"]),
        (
            "slug unknown word",
            "@taskmaster deploy".into(),
            vec!["error: `deploy` is not a command taskmaster knows"],
        ),
        (
            "slug unknown slash",
            "@taskmaster /frobnicate".into(),
            vec!["error: `frobnicate` is not a command taskmaster knows"],
        ),
        (
            "slug alone",
            "@taskmaster".into(),
            vec!["error: `` is not a command taskmaster knows"],
        ),
        ("other slug", "@dependabot rebase".into(), vec![]),
        (
            "slug prefix of another",
            "@taskmasterbot retry".into(),
            vec![],
        ),
        ("slug mid line", "thanks @taskmaster retry".into(), vec![]),
        // Unknown commands without the slug are someone else's.
        ("unknown", "/lgtm".into(), vec![]),
        ("prow retest", "/retest".into(), vec![]),
        ("path", "/usr/bin/env is missing".into(), vec![]),
        ("lone slash", "/".into(), vec![]),
        // Not at the start of the line.
        ("mid sentence", "please /retry".into(), vec![]),
        ("after text", "done. /cancel".into(), vec![]),
        // Code.
        ("fenced", "```\n/retry\n```".into(), vec![]),
        ("fenced tilde", "~~~sh\n/cancel\n~~~".into(), vec![]),
        (
            "fenced with lang",
            "```bash\n/run pr_processing\n```\n".into(),
            vec![],
        ),
        ("indented code", "text\n\n    /retry\n".into(), vec![]),
        ("inline code", "`/retry`".into(), vec![]),
        ("inline code then text", "`x` /retry".into(), vec![]),
        ("unclosed fence", "```\n/retry".into(), vec![]),
        (
            "command after fence",
            "```\n/cancel\n```\n/retry".into(),
            vec!["/retry"],
        ),
        // Quotes.
        ("quote", "> /retry".into(), vec![]),
        ("nested quote", "> > /retry".into(), vec![]),
        (
            "quote lazy continuation",
            "> context\n/retry".into(),
            vec![],
        ),
        (
            "after a quote",
            "> you said\n\n/retry".into(),
            vec!["/retry"],
        ),
        ("quote of slug form", "> @taskmaster retry".into(), vec![]),
        // HTML.
        ("html comment", "<!-- /retry -->".into(), vec![]),
        (
            "multi-line html comment",
            "<!--\n/retry\n/cancel\n-->".into(),
            vec![],
        ),
        (
            "pr template",
            "## Description\n<!-- Type /run feature to start -->\n\nFixes #1".into(),
            vec![],
        ),
        ("html block", "<details>\n/retry\n</details>".into(), vec![]),
        (
            "trailing html comment",
            "/retry <!-- because flaky -->".into(),
            vec!["/retry"],
        ),
        ("inline html before", "<b>/retry</b>".into(), vec![]),
        // Markdown structures.
        ("list item", "- /retry".into(), vec![]),
        ("numbered list", "1. /retry".into(), vec![]),
        ("task list", "- [ ] /retry".into(), vec![]),
        ("table", "| cmd |\n| --- |\n| /retry |".into(), vec![]),
        ("heading", "# /retry".into(), vec![]),
        ("link", "[/retry](https://example.com)".into(), vec![]),
        ("emphasis", "*/retry*".into(), vec![]),
        (
            "in paragraph second line",
            "CI flaked again.\n/retry".into(),
            vec!["/retry"],
        ),
        // Several commands.
        ("two", "/pause\n/status".into(), vec!["/pause", "/status"]),
        (
            "three with prose",
            "ok\n/retry lint\nand\n/status\nthanks".into(),
            vec!["/retry lint", "/status"],
        ),
        (
            "mixed valid and invalid",
            "/run\n/retry".into(),
            vec![
                "error: `/run` needs a workflow name, e.g. `/run pr_processing`",
                "/retry",
            ],
        ),
        // Arguments.
        (
            "cancel with args",
            "/cancel now please".into(),
            vec!["error: `/cancel` takes no arguments"],
        ),
        (
            "retry two steps",
            "/retry a b".into(),
            vec!["error: `/retry` takes one step id, got several"],
        ),
        (
            "run two",
            "/run a b".into(),
            vec!["error: `/run` takes one workflow name, got several"],
        ),
        (
            "bad step",
            "/retry ../etc".into(),
            vec![
                "error: `../etc` is not a valid step id: use letters, digits, `-`, `_` and `.` (at most 100)",
            ],
        ),
        (
            "long step",
            format!("/retry {long_step}"),
            vec![long_step_error.as_str()],
        ),
        (
            "long line",
            long_line,
            vec!["error: the arguments are longer than 200 bytes"],
        ),
        // Non-ASCII.
        (
            "non-ascii prose",
            "Пожалуйста, повторите\n/retry".into(),
            vec!["/retry"],
        ),
        (
            "non-ascii arg",
            "/run 機能".into(),
            vec![
                "error: `機能` is not a valid workflow name: use letters, digits, `-`, `_` and `.` (at most 100)",
            ],
        ),
        ("emoji", "🚀 /retry".into(), vec![]),
        ("fullwidth slash", "／retry".into(), vec![]),
        // Empty.
        ("empty", "".into(), vec![]),
        ("blank lines", "\n\n  \n".into(), vec![]),
    ];
    assert!(cases.len() >= 60, "{} cases", cases.len());
    let mut failures = Vec::new();
    for (name, body, expected) in &cases {
        let got = found(body);
        if got != *expected {
            failures.push(format!(
                "{name}: {body:?}\n   expected {expected:?}\n   got      {got:?}"
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn line_numbers_and_text_are_reported_for_quoting() {
    let found = parse_comment("hello\r\n\r\n  /retry lint <!-- flaky -->\n", SLUG);
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].line, 3);
    assert_eq!(found[0].text, "/retry lint");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Whatever the input: no panic, every command found sits at the start of
    /// a line of its own, and quoting the whole comment silences it.
    #[test]
    fn never_panics_and_commands_start_their_line(
        parts in proptest::collection::vec(prop_oneof![
            Just("/retry".to_string()), Just("/run x".to_string()), Just("@taskmaster status".to_string()),
            Just("```".to_string()), Just("> ".to_string()), Just("<!--".to_string()), Just("-->".to_string()),
            Just("`".to_string()), Just("\n".to_string()), Just("\r\n".to_string()), Just("    ".to_string()),
            Just("- ".to_string()), Just("| ".to_string()), Just("<b>".to_string()), Just("é".to_string()),
            "[ -~]{0,12}",
        ], 0..40)
    ) {
        let body: String = parts.concat();
        let found = parse_comment(&body, SLUG);
        let lines: Vec<&str> = body.split('\n').collect();
        for command in &found {
            let line = lines[command.line - 1].trim_end_matches('\r').trim_start_matches([' ', '\t']);
            prop_assert!(line.starts_with(&command.text), "{:?} not at the start of {:?}", command.text, line);
            prop_assert!(command.text.starts_with('/') || command.text.to_lowercase().starts_with("@taskmaster"));
        }
        prop_assert!(parse_comment(&quote(&body), SLUG).is_empty(), "quoted: {:?}", quote(&body));
    }
}
