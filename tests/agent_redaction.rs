//! Planted secrets of every shape never reach stored output, failure
//! messages or logs, whichever adapter they come through.

mod support;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use support::agentapi::{Behavior, StandIn};
use taskmaster::agent::agentapi::{AgentApiAgent, AgentApiSettings};
use taskmaster::agent::command::{CommandAgent, CommandSettings};
use taskmaster::agent::{Agent, AttemptOutcome, AttemptRequest, IdempotencyKey, OutputPolicy};
use taskmaster::redact::Redactor;

const CONFIGURED: &str = "my-configured-api-key-42";

fn planted() -> Vec<String> {
    let body = "A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8";
    let mut secrets: Vec<String> = ["ghs_", "ghp_", "gho_", "ghu_", "ghr_"]
        .iter()
        .map(|p| format!("{p}{body}"))
        .collect();
    secrets.push(
        "github_pat_11ABCDEFG0abcdefghijkl_mnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789abcd"
            .into(),
    );
    secrets.push("MIIEowIBAAKCAQEAplantedkeymaterial".into());
    secrets.push("bearer-credential-xyz".into());
    secrets.push("authz-header-value-123".into());
    secrets.push(CONFIGURED.into());
    secrets
}

fn leaky_text() -> String {
    let s = planted();
    format!(
        "tokens: {} {} {} {} {} {}\n-----BEGIN RSA PRIVATE KEY-----\n{}\n-----END RSA PRIVATE KEY-----\ncurl -H 'x: y' Bearer {}\n> Authorization: token {}\nkey={}\n",
        s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7], s[8], s[9]
    )
}

fn policy() -> OutputPolicy {
    OutputPolicy {
        redactor: Arc::new(Redactor::new([CONFIGURED])),
        limit: 64 * 1024,
    }
}

#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn key() -> IdempotencyKey {
    IdempotencyKey {
        run: "r".into(),
        step: "s".into(),
        attempt: 1,
    }
}

#[track_caller]
fn assert_clean(what: &str, outcome: &AttemptOutcome) {
    let stored = format!(
        "{}\n{}",
        outcome.output.text,
        outcome
            .failure
            .as_ref()
            .map(|f| f.message.as_str())
            .unwrap_or("")
    );
    for secret in planted() {
        assert!(
            !stored.contains(&secret),
            "{what}: `{secret}` leaked into:\n{stored}"
        );
    }
    assert!(
        stored.contains("[REDACTED:"),
        "{what}: nothing was redacted:\n{stored}"
    );
}

#[tokio::test]
async fn no_planted_secret_reaches_output_or_logs() {
    let logs = Logs::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("leak.txt"), leaky_text()).unwrap();

    // command: secrets on stdout and stderr, and a failing exit.
    let mut settings = CommandSettings::new("tests");
    settings.output = policy();
    let mut req = AttemptRequest::new(key(), "", Duration::from_secs(10));
    req.workdir = Some(dir.path().to_path_buf());
    req.with = json!({"command": ["sh", "-c", "cat leak.txt; cat leak.txt >&2; exit 1"]})
        .as_object()
        .unwrap()
        .clone();
    let outcome = CommandAgent::new(settings).run(req).await;
    assert!(!outcome.succeeded());
    assert_clean("command", &outcome);

    // agentapi: secrets in the agent's answer and in the prompt.
    let server = StandIn::start(Behavior {
        answer: format!("{}\n{{prompt}}", leaky_text()),
        ..Behavior::default()
    })
    .await;
    let mut settings = AgentApiSettings::new("claude-code", server.url());
    settings.output = policy();
    settings.poll_interval = Duration::from_millis(50);
    let outcome = AgentApiAgent::new(settings)
        .unwrap()
        .run(AttemptRequest::new(
            key(),
            leaky_text(),
            Duration::from_secs(10),
        ))
        .await;
    assert!(outcome.succeeded(), "{outcome:?}");
    assert_clean("agentapi", &outcome);
    server.recorded(|r| {
        let sent: String = r
            .messages
            .iter()
            .filter(|m| m.role == "user")
            .map(|m| m.content.clone())
            .collect();
        assert!(sent.contains("[REDACTED:"), "{sent}");
        for secret in planted() {
            assert!(
                !sent.contains(&secret),
                "the prompt carried `{secret}` to the agent:\n{sent}"
            );
        }
    });

    let logs = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    for secret in planted() {
        assert!(
            !logs.contains(&secret),
            "`{secret}` leaked into the logs:\n{logs}"
        );
    }
}
