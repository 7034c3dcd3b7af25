//! Agent configuration: defaults, the file, environment overrides, strict
//! validation with file/line/column, and the registry.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use taskmaster::agent::config::CircuitBreakerConfig;
use taskmaster::agent::{AgentKind, AgentRegistry, AgentsConfig, AttemptRequest, IdempotencyKey};

fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
    let map: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    move |name: &str| map.get(name).cloned()
}

#[test]
fn defaults_name_the_conventional_agents() {
    let config = AgentsConfig::defaults(&env(&[])).unwrap();
    let names: Vec<&str> = config.agents.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        ["aider", "claude-code", "codegen", "command", "goose"]
    );
    assert_eq!(config.agents["claude-code"].kind, AgentKind::Agentapi);
    assert_eq!(config.agents["claude-code"].concurrency, 1);
    assert_eq!(config.agents["codegen"].kind, AgentKind::Codegen);
    assert_eq!(config.agents["command"].kind, AgentKind::Command);
    assert_eq!(config.output_limit, 1024 * 1024);
    assert_eq!(
        config.agents["goose"].circuit_breaker,
        CircuitBreakerConfig::default()
    );
}

#[test]
fn the_example_file_is_valid() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("taskmaster.example.yml");
    let config = AgentsConfig::load(Some(&path), &env(&[])).unwrap();
    assert_eq!(config.agents["claude-cli"].kind, AgentKind::Cli);
    assert_eq!(config.agents["tests"].concurrency, 2);
    assert_eq!(
        config.agents["codegen"].circuit_breaker.failure_threshold,
        3
    );
    assert_eq!(config.agents["claude-cli"].budget.max_cost_usd, Some(5.0));
    assert_eq!(config.redact_env, ["SENTRY_DSN"]);
    assert_eq!(config.budgets.run.usd, Some(10.0));
    assert_eq!(config.budgets.global_month.usd, Some(2000.0));
    assert_eq!(
        config.agents["claude-managed"]
            .price
            .and_then(|p| p.per_minute),
        Some(0.20)
    );
    assert_eq!(
        registry_budgets(&config),
        config.budgets,
        "the registry hands the engine the file's budgets"
    );
    assert_eq!(
        config.agents["claude-managed"].public_endpoint().as_deref(),
        Some("managed: one AgentAPI server per run on 127.0.0.1")
    );
    let registry = AgentRegistry::new(&config, &env(&[])).unwrap();
    assert_eq!(
        registry.get("claude-managed").unwrap().kind(),
        AgentKind::Agentapi
    );
}

fn registry_budgets(config: &AgentsConfig) -> taskmaster::budget::Budgets {
    AgentRegistry::new(config, &env(&[])).unwrap().budgets()
}

/// A misspelt budget key is an error with its place, not a silent no-limit.
#[test]
fn budgets_and_prices_refuse_unknown_keys_with_their_place() {
    let err = AgentsConfig::parse("budgets:\n  run: { dollars: 5 }\n", None, &env(&[]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("dollars") && err.contains("line 2"), "{err}");
    let text = "agents:\n  a:\n    kind: command\n    price: { per_hour: 1 }\n";
    let err = AgentsConfig::parse(text, None, &env(&[]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("per_hour"), "{err}");
}

#[test]
fn spawn_and_endpoint_exclude_each_other() {
    let text = "agents:\n  a:\n    kind: agentapi\n    endpoint: http://x\n    spawn: [agentapi, server]\n";
    let config = AgentsConfig::parse(text, None, &env(&[])).unwrap();
    let err = AgentRegistry::new(&config, &env(&[]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("not both"), "{err}");
    let text = "agents:\n  c:\n    kind: codegen\n    spawn: [x]\n";
    let err = AgentsConfig::parse(text, None, &env(&[]))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("`spawn` does not apply to kind `codegen`"),
        "{err}"
    );
}

#[test]
fn unknown_keys_are_errors_with_file_line_and_column() {
    let text = "agents:\n  claude-code:\n    kind: agentapi\n    endpiont: http://x\n";
    let err = AgentsConfig::parse(text, Some(Path::new("taskmaster.yml")), &env(&[])).unwrap_err();
    let shown = err.to_string();
    assert!(shown.starts_with("taskmaster.yml:4:"), "{shown}");
    assert!(shown.contains("endpiont"), "{shown}");
    assert_eq!(err.line, Some(4));
}

#[test]
fn keys_of_another_kind_are_errors_at_the_agent() {
    let text = "agents:\n  ok:\n    kind: command\n  bad:\n    kind: agentapi\n    binary: /usr/bin/claude\n";
    let err = AgentsConfig::parse(text, Some(Path::new("t.yml")), &env(&[])).unwrap_err();
    let shown = err.to_string();
    assert!(
        shown.contains("agent `bad`")
            && shown.contains("`binary` does not apply to kind `agentapi`"),
        "{shown}"
    );
    assert!(matches!(err.line, Some(5 | 6)), "{shown}");
}

#[test]
fn invalid_values_are_errors() {
    for (text, expected) in [
        ("agents:\n  x:\n    kind: robot\n", "robot"),
        ("agents:\n  x:\n    kind: cli\n", "missing `cli`"),
        (
            "agents:\n  x:\n    kind: command\n    concurrency: 0\n",
            "at least 1",
        ),
        (
            "agents:\n  x:\n    kind: agentapi\n    endpoint: localhost:3284\n",
            "http://",
        ),
        ("agents:\n  x:\n    kind: command\n    policy: lax\n", "lax"),
        (
            "agents:\n  x:\n    kind: command\n    env_allow: [GITHUB_TOKEN]\n",
            "never given to agents",
        ),
        (
            "agents:\n  x:\n    kind: cli\n    cli: claude\n    env: {GH_TOKEN: x}\n",
            "never given to agents",
        ),
        ("agents: [1, 2\n", ""),
    ] {
        let err = AgentsConfig::parse(text, Some(Path::new("t.yml")), &env(&[])).unwrap_err();
        assert!(err.to_string().contains(expected), "{text}: {err}");
        assert!(err.line.is_some(), "{text}: {err}");
    }
}

#[test]
fn environment_variables_override_the_file() {
    let text = "agents:\n  claude-code:\n    kind: agentapi\n    endpoint: http://file:1\n  codegen:\n    kind: codegen\n    org_id: 1\n";
    let lookup = env(&[
        ("CLAUDE_CODE_ENDPOINT", "http://127.0.0.1:9999"),
        ("AIDER_ENDPOINT", "http://127.0.0.1:9998"),
        ("CODEGEN_ORG_ID", "77"),
        ("CODEGEN_ENDPOINT", "http://127.0.0.1:9997"),
    ]);
    let config = AgentsConfig::parse(text, None, &lookup).unwrap();
    let shown = format!("{:?}", config.agents["claude-code"]);
    assert!(shown.contains("http://127.0.0.1:9999"), "{shown}");
    assert!(format!("{:?}", config.agents["aider"]).contains("http://127.0.0.1:9998"));
    let codegen = format!("{:?}", config.agents["codegen"]);
    assert!(
        codegen.contains("org_id: Some(77)") && codegen.contains("9997"),
        "{codegen}"
    );

    let err = AgentsConfig::defaults(&env(&[("CODEGEN_ORG_ID", "acme")])).unwrap_err();
    assert!(err.to_string().contains("CODEGEN_ORG_ID"), "{err}");
}

/// Each rotated webhook secret alone, the database password, the session
/// key and secrets given as flags are redacted; the session key is never
/// an agent's, whatever `env_allow` says.
#[test]
fn the_services_own_secrets_are_redacted_one_by_one() {
    let lookup = env(&[
        ("GITHUB_WEBHOOK_SECRET", "old-hook-secret, new-hook-secret"),
        (
            "DATABASE_URL",
            "postgres://tm:db-pass-9f3@db.internal:5432/tm",
        ),
        ("TASKMASTER_SESSION_KEY", "session-key-0123456789abcdef"),
    ]);
    let config = AgentsConfig::parse("", None, &lookup).unwrap();
    let registry =
        AgentRegistry::with_secrets(&config, &lookup, &["flag-hook-secret".into()]).unwrap();
    let redacted = registry.redactor().redact(
        "new-hook-secret old-hook-secret db-pass-9f3 session-key-0123456789abcdef flag-hook-secret",
    );
    assert_eq!(redacted, ["[REDACTED:secret]"; 5].join(" "));
    assert!(taskmaster::agent::env::is_denied("TASKMASTER_SESSION_KEY"));
}

#[tokio::test]
async fn the_registry_builds_agents_by_name_and_redacts_configured_secrets() {
    let lookup = env(&[
        ("CODEGEN_API_TOKEN", "cg-secret-token-value"),
        ("GITHUB_WEBHOOK_SECRET", "webhook-secret-value"),
        ("SENTRY_DSN", "https://abc@sentry.example/1"),
        ("PATH", "/usr/bin:/bin"),
    ]);
    let config = AgentsConfig::parse("redact_env: [SENTRY_DSN]\n", None, &lookup).unwrap();
    let registry = AgentRegistry::new(&config, &lookup).unwrap();
    let names: Vec<&str> = registry.names().collect();
    assert_eq!(
        names,
        ["aider", "claude-code", "codegen", "command", "goose"]
    );
    let agent = registry.get("command").unwrap();
    assert_eq!(agent.kind(), AgentKind::Command);
    assert_eq!(agent.name(), "command");
    assert!(registry.get("nope").is_none());
    assert_eq!(registry.config("aider").unwrap().concurrency, 1);

    let redactor = registry.redactor();
    let text = redactor
        .redact("a cg-secret-token-value b webhook-secret-value c https://abc@sentry.example/1");
    assert_eq!(
        text,
        "a [REDACTED:secret] b [REDACTED:secret] c [REDACTED:secret]"
    );

    // The command agent built by the registry redacts its output with it.
    let mut req = AttemptRequest::new(
        IdempotencyKey {
            run: "r".into(),
            step: "s".into(),
            attempt: 1,
        },
        "",
        Duration::from_secs(10),
    );
    req.with = serde_json::json!({"command": ["echo", "webhook-secret-value"]})
        .as_object()
        .unwrap()
        .clone();
    let outcome = agent.run(req).await;
    assert!(outcome.succeeded(), "{outcome:?}");
    assert_eq!(outcome.output.text, "[REDACTED:secret]\n");
}
