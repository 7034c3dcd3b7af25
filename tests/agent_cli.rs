//! The `cli` adapter against fake agent CLIs (`tests/fake-cli/`) that print
//! what the real ones print in headless mode.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::json;
use taskmaster::agent::cli::{CliAgent, CliFlavor, CliSettings};
use taskmaster::agent::{
    Agent, AttemptOutcome, AttemptRequest, ErrorClass, FailureKind, IdempotencyKey,
};

fn fake(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fake-cli")
        .join(name)
}

fn host_env(name: &str) -> Option<String> {
    match name {
        "PATH" => Some("/usr/local/bin:/usr/bin:/bin".into()),
        "HOME" => Some("/nonexistent".into()),
        "ANTHROPIC_API_KEY" => Some("sk-ant-api03-test-key".into()),
        "GITHUB_TOKEN" => Some("ghs_0123456789abcdefghijABCDEFGHIJ0123".into()),
        "GH_TOKEN" => Some("gho_0123456789abcdefghijABCDEFGHIJ0123".into()),
        "GITHUB_PRIVATE_KEY" => Some("-----BEGIN RSA PRIVATE KEY-----".into()),
        "GITHUB_WEBHOOK_SECRET" => Some("hook-secret".into()),
        _ => None,
    }
}

fn agent(flavor: CliFlavor, tweak: impl FnOnce(&mut CliSettings)) -> CliAgent {
    let mut s = CliSettings::new(format!("{flavor:?}").to_lowercase(), flavor);
    s.binary = fake(flavor.default_binary());
    s.kill_grace = Duration::from_millis(200);
    // Even when allowed by mistake, these never pass.
    s.env_allow = vec![
        "GITHUB_TOKEN".into(),
        "GH_TOKEN".into(),
        "GITHUB_PRIVATE_KEY".into(),
    ];
    tweak(&mut s);
    CliAgent::new(s).with_env_lookup(host_env)
}

fn request(prompt: &str, dir: &Path, timeout: Duration) -> AttemptRequest {
    let mut req = AttemptRequest::new(
        IdempotencyKey {
            run: "run-7".into(),
            step: "fix".into(),
            attempt: 2,
        },
        prompt,
        timeout,
    );
    req.workdir = Some(dir.to_path_buf());
    req
}

fn argv(dir: &Path, name: &str) -> Vec<String> {
    std::fs::read_to_string(dir.join(format!("{name}-argv.txt")))
        .unwrap()
        .lines()
        .map(String::from)
        .collect()
}

#[track_caller]
fn assert_failed(outcome: &AttemptOutcome, class: ErrorClass, kind: FailureKind) {
    let f = outcome
        .failure
        .as_ref()
        .unwrap_or_else(|| panic!("expected {kind:?}, got success: {}", outcome.output.text));
    assert_eq!((f.class, f.kind), (class, kind), "{}", f.message);
}

#[tokio::test]
async fn claude_json_result_cost_and_turns() {
    let dir = tempfile::tempdir().unwrap();
    let mut req = request("Review PR #12", dir.path(), Duration::from_secs(10));
    req.with = json!({"max_turns": 5, "allowed_tools": ["Read", "Grep"], "permission_mode": "acceptEdits"})
        .as_object()
        .unwrap()
        .clone();
    let outcome = agent(CliFlavor::Claude, |s| s.model = Some("sonnet".into()))
        .run(req)
        .await;
    assert!(outcome.succeeded(), "{outcome:?}");
    assert_eq!(outcome.output.text, "Reviewed: Review PR #12");
    assert_eq!(outcome.usage.cost_usd, Some(0.0421));
    assert_eq!(outcome.usage.turns, Some(4));
    assert_eq!(outcome.usage.input_tokens, Some(1234));
    assert_eq!(outcome.usage.output_tokens, Some(567));
    assert_eq!(
        argv(dir.path(), "claude"),
        [
            "-p",
            "Review PR #12",
            "--output-format",
            "json",
            "--max-turns",
            "5",
            "--model",
            "sonnet",
            "--allowedTools",
            "Read",
            "Grep",
            "--permission-mode",
            "acceptEdits"
        ]
    );
}

/// A validation step: the engine passes the verdict schema as `json_schema`,
/// the CLI gets `--json-schema`, and Claude Code's `structured_output`
/// becomes the answer's last fenced json block, which the verdict reader takes.
#[tokio::test]
async fn claude_structured_output_is_the_verdict() {
    let dir = tempfile::tempdir().unwrap();
    let mut req = request("VERDICT please", dir.path(), Duration::from_secs(10));
    req.with.insert(
        "json_schema".into(),
        json!(taskmaster::verdict::schema_compact()),
    );
    let outcome = agent(CliFlavor::Claude, |_| {}).run(req).await;
    assert!(outcome.succeeded(), "{outcome:?}");
    let args = argv(dir.path(), "claude");
    let at = args.iter().position(|a| a == "--json-schema").unwrap();
    let schema: serde_json::Value = serde_json::from_str(&args[at + 1]).unwrap();
    assert_eq!(
        schema["required"],
        json!(["verdict", "summary", "findings"])
    );
    assert!(
        outcome.output.text.starts_with("Reviewed.\n\n```json\n"),
        "{}",
        outcome.output.text
    );
    let report = taskmaster::verdict::parse(&outcome.output.text).unwrap();
    assert_eq!(report.verdict, taskmaster::verdict::Verdict::Fail);
    assert_eq!(report.findings[0].start_line, 3);
}

#[tokio::test]
async fn claude_is_error_true_is_a_failure_with_its_cost() {
    let dir = tempfile::tempdir().unwrap();
    let outcome = agent(CliFlavor::Claude, |_| {})
        .run(request("FAIL please", dir.path(), Duration::from_secs(10)))
        .await;
    assert_failed(&outcome, ErrorClass::Permanent, FailureKind::Agent);
    let message = &outcome.failure.as_ref().unwrap().message;
    assert!(
        message.contains("401") && message.contains("Claude Code reported an error"),
        "{message}"
    );
    assert_eq!(
        outcome.usage.cost_usd,
        Some(0.0421),
        "cost is counted even on failure"
    );
}

#[tokio::test]
async fn claude_max_turns_is_permanent() {
    let dir = tempfile::tempdir().unwrap();
    let outcome = agent(CliFlavor::Claude, |_| {})
        .run(request("TURNS", dir.path(), Duration::from_secs(10)))
        .await;
    assert_failed(&outcome, ErrorClass::Permanent, FailureKind::Agent);
    assert!(outcome.failure.unwrap().message.contains("error_max_turns"));
}

#[tokio::test]
async fn claude_without_json_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let outcome = agent(CliFlavor::Claude, |_| {})
        .run(request("GARBLE", dir.path(), Duration::from_secs(10)))
        .await;
    assert_failed(&outcome, ErrorClass::Permanent, FailureKind::Agent);
    let message = outcome.failure.unwrap().message;
    assert!(
        message.contains("without its JSON result") && message.contains("unknown option"),
        "{message}"
    );
}

#[tokio::test]
async fn a_long_prompt_goes_through_stdin() {
    let dir = tempfile::tempdir().unwrap();
    let prompt = format!("Review {}", "x".repeat(200 * 1024));
    let outcome = agent(CliFlavor::Claude, |_| {})
        .run(request(&prompt, dir.path(), Duration::from_secs(10)))
        .await;
    assert!(outcome.succeeded(), "{:?}", outcome.failure);
    assert!(outcome.output.text.starts_with("Reviewed: Review xxx"));
    assert_eq!(argv(dir.path(), "claude")[..2], ["-p", "--output-format"]);
}

#[tokio::test]
async fn the_cli_environment_has_no_github_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let outcome = agent(CliFlavor::Claude, |_| {})
        .run(request("ENV", dir.path(), Duration::from_secs(10)))
        .await;
    assert!(outcome.succeeded(), "{outcome:?}");
    let mut names: Vec<&str> = outcome.output.text.split_whitespace().collect();
    names.retain(|n| *n != "PWD" && *n != "SHLVL" && *n != "_" && *n != "OLDPWD");
    assert_eq!(
        names,
        ["ANTHROPIC_API_KEY", "HOME", "PATH", "TASKMASTER_ATTEMPT"],
        "{}",
        outcome.output.text
    );
}

#[tokio::test]
async fn a_hung_cli_is_killed_at_the_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let started = std::time::Instant::now();
    let outcome = agent(CliFlavor::Claude, |_| {})
        .run(request("SLEEP", dir.path(), Duration::from_millis(500)))
        .await;
    assert_failed(&outcome, ErrorClass::Transient, FailureKind::Timeout);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn aider_exit_code_output_and_cost_line() {
    let dir = tempfile::tempdir().unwrap();
    let mut req = request("Add a null check", dir.path(), Duration::from_secs(10));
    req.with = json!({"files": ["src/lib.rs"]})
        .as_object()
        .unwrap()
        .clone();
    let outcome = agent(CliFlavor::Aider, |s| s.model = Some("sonnet".into()))
        .run(req)
        .await;
    assert!(outcome.succeeded(), "{outcome:?}");
    assert!(outcome.output.text.contains("Applied edit to src/lib.rs"));
    assert_eq!(outcome.usage.cost_usd, Some(0.0081));
    assert_eq!(outcome.usage.input_tokens, Some(2100));
    assert_eq!(
        argv(dir.path(), "aider"),
        [
            "--message",
            "Add a null check",
            "--yes-always",
            "--no-auto-commits",
            "--no-pretty",
            "--no-stream",
            "--no-check-update",
            "--model",
            "sonnet",
            "src/lib.rs"
        ]
    );
}

#[tokio::test]
async fn aider_rate_limit_is_transient() {
    let dir = tempfile::tempdir().unwrap();
    let outcome = agent(CliFlavor::Aider, |_| {})
        .run(request("FAIL", dir.path(), Duration::from_secs(10)))
        .await;
    assert_failed(&outcome, ErrorClass::Transient, FailureKind::Agent);
    assert!(outcome.output.text.contains("RateLimitError"));
}

#[tokio::test]
async fn goose_runs_headless_in_auto_mode() {
    let dir = tempfile::tempdir().unwrap();
    let outcome = agent(CliFlavor::Goose, |s| s.max_turns = Some(20))
        .run(request(
            "Fix the tests",
            dir.path(),
            Duration::from_secs(10),
        ))
        .await;
    assert!(outcome.succeeded(), "{outcome:?}");
    assert!(
        outcome.output.text.contains("GOOSE_MODE=auto"),
        "{}",
        outcome.output.text
    );
    assert_eq!(
        argv(dir.path(), "goose"),
        [
            "run",
            "-t",
            "Fix the tests",
            "--no-session",
            "--max-turns",
            "20"
        ]
    );
}

#[tokio::test]
async fn goose_validates_through_a_recipe_with_the_verdict_schema() {
    let dir = tempfile::tempdir().unwrap();
    let mut req = request(
        "Review {{ not a template }} {% raw %}",
        dir.path(),
        Duration::from_secs(10),
    );
    req.with.insert(
        "json_schema".into(),
        json!(taskmaster::verdict::schema_compact()),
    );
    let outcome = agent(CliFlavor::Goose, |_| {}).run(req).await;
    assert!(outcome.succeeded(), "{outcome:?}");
    let argv = argv(dir.path(), "goose");
    assert_eq!(argv[0], "run");
    assert_eq!(argv[1], "--recipe");
    assert_eq!(argv[3], "--params");
    assert!(argv[4].starts_with("task="), "{argv:?}");
    assert_eq!(argv[5], "--no-session");
    // The recipe: the prompt comes from a file parameter (never rendered
    // as a template), the verdict schema is its response schema.
    let recipe: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("goose-recipe.json")).unwrap())
            .unwrap();
    assert_eq!(recipe["prompt"], "{{ task }}");
    assert_eq!(recipe["parameters"][0]["input_type"], "file");
    assert_eq!(
        recipe["response"]["json_schema"]["required"],
        json!(["verdict", "summary", "findings"])
    );
    assert!(recipe["response"]["json_schema"].get("$schema").is_none());
    assert_eq!(
        std::fs::read_to_string(dir.path().join("goose-task.txt")).unwrap(),
        "Review {{ not a template }} {% raw %}"
    );
    // The final output line is the verdict report the engine reads.
    let report = taskmaster::verdict::parse(&outcome.output.text).unwrap();
    assert_eq!(report.verdict, taskmaster::verdict::Verdict::Fail);
    assert_eq!(report.findings[0].start_line, 2);
    // Both temporary files are gone.
    for a in [&argv[2], &argv[4]["task=".len()..].to_owned()] {
        assert!(!Path::new(a).exists(), "{a} was left behind");
    }
}

#[tokio::test]
async fn codex_exec() {
    let dir = tempfile::tempdir().unwrap();
    let outcome = agent(CliFlavor::Codex, |_| {})
        .run(request(
            "Rename foo to bar",
            dir.path(),
            Duration::from_secs(10),
        ))
        .await;
    assert!(outcome.succeeded(), "{outcome:?}");
    assert!(outcome.output.text.contains("Renamed the function."));
    assert_eq!(argv(dir.path(), "codex"), ["exec", "Rename foo to bar"]);
}

#[tokio::test]
async fn a_missing_binary_is_a_permanent_config_failure() {
    let dir = tempfile::tempdir().unwrap();
    let a = agent(CliFlavor::Claude, |s| {
        s.binary = "/nonexistent/claude".into()
    });
    let outcome = a
        .run(request("hi", dir.path(), Duration::from_secs(10)))
        .await;
    assert_failed(&outcome, ErrorClass::Permanent, FailureKind::Config);
    assert!(!a.health().await.reachable);
    assert!(agent(CliFlavor::Claude, |_| {}).health().await.reachable);
}
