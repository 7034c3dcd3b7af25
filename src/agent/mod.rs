//! Agents: the [`Agent`] trait and one adapter per file.
//!
//! A step's work is done by an *agent*: a coding agent reached over
//! [AgentAPI](agentapi) (Claude Code, Aider, Goose behind `coder/agentapi`),
//! a local agent [CLI](cli) in headless mode, the hosted [Codegen](codegen)
//! API, or a plain [command]. The engine does not care which: it hands an
//! [`AttemptRequest`] to [`Agent::run`] and records the [`AttemptOutcome`].
//!
//! The contract every adapter keeps, so the engine can stay simple:
//!
//! * `run` never panics and never returns early without an outcome: every
//!   failure is an [`AttemptOutcome`] with a [`Failure`] whose
//!   [`ErrorClass`] tells the engine whether retrying can help.
//! * `run` returns by the request's `deadline` (plus a few hundred
//!   milliseconds to stop the agent) and soon after its `cancel` token fires.
//!   On cancel the adapter stops the agent where the protocol allows it
//!   (interrupt keystroke, process-group kill).
//! * Output is redacted ([`crate::redact`]) and capped ([`output`]) before it
//!   is returned, so the engine may store, log and post it as is.
//! * Agents never receive GitHub write credentials: process environments are
//!   an allow-list ([`env`]) and prompts are redacted before they are sent.
//!
//! Agents are built by name from the service configuration
//! ([`config::AgentsConfig`]) through an [`AgentRegistry`].

pub mod agentapi;
pub mod cli;
pub mod codegen;
pub mod command;
pub mod config;
pub mod env;
pub mod managed;
pub mod output;
pub(crate) mod process;
pub(crate) mod sandbox;

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub use config::{AgentKind, AgentRegistry, AgentsConfig, ConfigError};
pub use output::Output;

/// Identifies one attempt: `run:step:attempt`. Adapters pass it on where the
/// agent's protocol has room for it (Codegen run `metadata`, the
/// `TASKMASTER_ATTEMPT` variable of a command), so that a duplicate started
/// after a crash can be recognised.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IdempotencyKey {
    /// The run id.
    pub run: String,
    /// The step id within the run's workflow.
    pub step: String,
    /// The attempt number, from 1.
    pub attempt: u32,
}

impl fmt::Display for IdempotencyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.run, self.step, self.attempt)
    }
}

/// One try of one step against one agent.
#[derive(Debug, Clone)]
pub struct AttemptRequest {
    /// `run:step:attempt`.
    pub key: IdempotencyKey,
    /// The rendered prompt (workflow template with untrusted text quoted as
    /// data). Ignored by the `command` agent. Redacted again before sending.
    pub prompt: String,
    /// The step's `with:` inputs, as JSON. Each adapter documents the keys it
    /// reads (e.g. `command` reads `command`, `shell`, `policy`, `env`);
    /// unknown keys are ignored.
    pub with: serde_json::Map<String, serde_json::Value>,
    /// Working directory (a checkout), for local agents. `None`: the agent's
    /// configured directory, else taskmaster's current directory.
    pub workdir: Option<PathBuf>,
    /// Paths a sandbox must show read-only besides the system directories:
    /// the mirror whose objects a workspace borrows, so git works inside.
    pub read_only: Vec<PathBuf>,
    /// The working directory holds code nobody trusted yet (a pull
    /// request's head): `command` steps run at least under their agent's
    /// `untrusted_policy` (default `hardened`).
    pub untrusted_checkout: bool,
    /// The run's repository (`owner/name`), when it is about one: agents
    /// that address repositories by their own ids map it (Codegen `repos:`).
    pub repository: Option<String>,
    /// When the attempt must be over (wall clock). Adapters also apply their
    /// own configured timeout, whichever comes first.
    pub deadline: Instant,
    /// Fires when the run or step is cancelled.
    pub cancel: CancellationToken,
}

impl AttemptRequest {
    /// A request with empty inputs, no working directory and a fresh token:
    /// the usual start for tests and for `taskmaster run`.
    pub fn new(key: IdempotencyKey, prompt: impl Into<String>, timeout: Duration) -> Self {
        Self {
            key,
            prompt: prompt.into(),
            with: serde_json::Map::new(),
            workdir: None,
            read_only: Vec::new(),
            untrusted_checkout: false,
            repository: None,
            deadline: Instant::now() + timeout,
            cancel: CancellationToken::new(),
        }
    }
}

/// Whether retrying a failed attempt can help.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorClass {
    /// Try again later (agent busy, unreachable, rate-limited, timed out).
    Transient,
    /// Retrying the same request will fail the same way (bad configuration,
    /// plan limit, the agent reported an error, cancelled).
    Permanent,
}

impl ErrorClass {
    /// The stored name (`attempts.error_class`): `transient` or `permanent`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::Transient => "transient",
            ErrorClass::Permanent => "permanent",
        }
    }

    /// The class of a stored name; `None` for any other text.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "transient" => Some(ErrorClass::Transient),
            "permanent" => Some(ErrorClass::Permanent),
            _ => None,
        }
    }
}

/// Reads `attempts.error_class` (SQLite); other text is an error.
impl rusqlite::types::FromSql for ErrorClass {
    fn column_result(value: rusqlite::types::ValueRef<'_>) -> rusqlite::types::FromSqlResult<Self> {
        crate::store::stored_name(value, "error class", ErrorClass::parse)
    }
}

/// What went wrong, more precisely than [`ErrorClass`]; for messages,
/// metrics and the circuit breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// The agent did the work and reported failure (`is_error`, non-zero
    /// exit code, Codegen status `failed`).
    Agent,
    /// The wall-clock deadline or configured timeout passed.
    Timeout,
    /// The agent showed no activity for the configured idle timeout.
    IdleTimeout,
    /// The attempt's cancellation token fired.
    Cancelled,
    /// The agent could not be reached (connection refused, DNS, TLS).
    Unreachable,
    /// The agent is busy with other work (AgentAPI 500 "can only be sent
    /// when the agent is waiting for user input").
    Busy,
    /// The agent's API asked us to slow down (HTTP 429).
    RateLimited,
    /// The agent answered something the protocol does not allow.
    Protocol,
    /// A resource limit stopped the process (CPU, memory, processes).
    ResourceLimit,
    /// The request or the agent's configuration is wrong (bad `with:`
    /// inputs, missing token, 401/403/402/422).
    Config,
}

impl FailureKind {
    /// Every kind, in declaration order.
    pub const ALL: [FailureKind; 10] = [
        FailureKind::Agent,
        FailureKind::Timeout,
        FailureKind::IdleTimeout,
        FailureKind::Cancelled,
        FailureKind::Unreachable,
        FailureKind::Busy,
        FailureKind::RateLimited,
        FailureKind::Protocol,
        FailureKind::ResourceLimit,
        FailureKind::Config,
    ];

    /// The name stored in `attempts.error_kind` and shown in JSON
    /// (`idle_timeout`, `rate_limited`, …), as insights reads it back.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::Agent => "agent",
            FailureKind::Timeout => "timeout",
            FailureKind::IdleTimeout => "idle_timeout",
            FailureKind::Cancelled => "cancelled",
            FailureKind::Unreachable => "unreachable",
            FailureKind::Busy => "busy",
            FailureKind::RateLimited => "rate_limited",
            FailureKind::Protocol => "protocol",
            FailureKind::ResourceLimit => "resource_limit",
            FailureKind::Config => "config",
        }
    }
}

/// Why an attempt failed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Failure {
    /// Whether to retry.
    pub class: ErrorClass,
    /// What happened.
    pub kind: FailureKind,
    /// For people: what happened and what to do. Redacted.
    pub message: String,
}

/// Cost and effort an agent reported; every field is `None` when the agent
/// does not report it.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Usage {
    /// Cost in US dollars (Claude Code's `total_cost_usd`).
    pub cost_usd: Option<f64>,
    /// Input (prompt) tokens.
    pub input_tokens: Option<u64>,
    /// Output (completion) tokens.
    pub output_tokens: Option<u64>,
    /// Agent turns (Claude Code's `num_turns`).
    pub turns: Option<u32>,
}

/// The result of one attempt.
#[derive(Debug, Clone, PartialEq)]
pub struct AttemptOutcome {
    /// `None`: the attempt succeeded. `Some`: why it failed.
    pub failure: Option<Failure>,
    /// What the agent answered or printed, redacted and capped. Present on
    /// failure too (partial output, error text), possibly empty.
    pub output: Output,
    /// Wall-clock time the attempt took.
    pub duration: Duration,
    /// Cost and effort, when reported.
    pub usage: Usage,
    /// The agent's own hint of when to try again (HTTP `Retry-After`), for
    /// transient failures. The engine's backoff applies when `None`.
    pub retry_after: Option<Duration>,
    /// A link to the agent's own view of the attempt (Codegen `web_url`).
    pub web_url: Option<String>,
    /// Pull requests the agent opened itself (Codegen's
    /// `github_pull_requests[].url`): linked, never opened again.
    pub pull_requests: Vec<String>,
}

impl AttemptOutcome {
    /// Whether the attempt succeeded.
    pub fn succeeded(&self) -> bool {
        self.failure.is_none()
    }

    /// The error class of a failed attempt; `None` on success.
    pub fn error_class(&self) -> Option<ErrorClass> {
        self.failure.as_ref().map(|f| f.class)
    }

    pub(crate) fn success(output: Output, started: Instant) -> Self {
        Self {
            failure: None,
            output,
            duration: started.elapsed(),
            usage: Usage::default(),
            retry_after: None,
            web_url: None,
            pull_requests: Vec::new(),
        }
    }

    pub(crate) fn failed(
        class: ErrorClass,
        kind: FailureKind,
        message: impl Into<String>,
        output: Output,
        started: Instant,
    ) -> Self {
        Self {
            failure: Some(Failure {
                class,
                kind,
                message: message.into(),
            }),
            output,
            duration: started.elapsed(),
            usage: Usage::default(),
            retry_after: None,
            web_url: None,
            pull_requests: Vec::new(),
        }
    }
}

/// The result of a health probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    /// Whether the agent answered (any answer, even an error status, counts
    /// for HTTP agents; the binary exists and is executable for local ones).
    pub reachable: bool,
    /// How long the probe took.
    pub latency: Duration,
    /// What was seen, for the dashboard (`"status stable"`, `"connection
    /// refused"`, …). Redacted.
    pub detail: String,
}

/// Something that does a step's work. Object safe: the engine holds
/// `Arc<dyn Agent>` from the [`AgentRegistry`].
#[async_trait]
pub trait Agent: Send + Sync + fmt::Debug {
    /// The configured name (`claude-code`, `codegen`, `tests`, …).
    fn name(&self) -> &str;

    /// Which adapter this is.
    fn kind(&self) -> AgentKind;

    /// Runs one attempt to the end, a failure, the deadline or cancellation;
    /// see the module docs for the contract.
    async fn run(&self, attempt: AttemptRequest) -> AttemptOutcome;

    /// Probes the agent without giving it work. Bounded by a few seconds.
    async fn health(&self) -> Health;

    /// Run `run` ended: let go of whatever the agent keeps for it (a
    /// managed AgentAPI server). Most agents keep nothing.
    async fn release(&self, _run: &str) {}
}

/// Shared by every adapter: what output to keep and how to redact it.
#[derive(Debug, Clone)]
pub struct OutputPolicy {
    /// Redacts output, messages and prompts.
    pub redactor: Arc<crate::redact::Redactor>,
    /// Output cap per attempt, in bytes.
    pub limit: usize,
}

impl Default for OutputPolicy {
    fn default() -> Self {
        Self {
            redactor: Arc::default(),
            limit: output::DEFAULT_OUTPUT_LIMIT,
        }
    }
}

impl OutputPolicy {
    /// Redacts and caps `raw`.
    pub fn output(&self, raw: &str) -> Output {
        Output::from_text(raw, &self.redactor, self.limit)
    }

    /// Redacts a message (errors, notes); no cap beyond 4 KiB.
    pub fn message(&self, raw: &str) -> String {
        let redacted = self.redactor.redact(raw);
        if redacted.len() > 4096 {
            let mut end = 4096;
            while !redacted.is_char_boundary(end) {
                end -= 1;
            }
            format!("{}…", &redacted[..end])
        } else {
            redacted
        }
    }
}

/// Sleeps until `until`, or returns `false` early when `cancel` fires.
pub(crate) async fn sleep_or_cancel(until: Instant, cancel: &CancellationToken) -> bool {
    tokio::select! {
        _ = tokio::time::sleep_until(until) => true,
        _ = cancel.cancelled() => false,
    }
}

/// A `reqwest` client builder with the TLS crypto provider installed. Every
/// HTTP client in taskmaster (and its tests) must be built from this one:
/// `reqwest::Client::new()` panics without a provider.
///
/// reqwest is built with `rustls-no-provider`: the `ring` provider is
/// installed here as the process default (once; an already installed
/// default is kept), which avoids building aws-lc.
pub fn http_client_builder() -> reqwest::ClientBuilder {
    static PROVIDER: std::sync::Once = std::sync::Once::new();
    PROVIDER.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
    reqwest::Client::builder().user_agent(concat!("taskmaster/", env!("CARGO_PKG_VERSION")))
}

#[cfg(test)]
mod tests {
    use super::ErrorClass;

    #[test]
    fn an_error_class_is_its_stored_name_and_other_text_is_refused() {
        for c in [ErrorClass::Transient, ErrorClass::Permanent] {
            assert_eq!(ErrorClass::parse(c.as_str()), Some(c));
        }
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        let read = |text: &str| conn.query_row("SELECT ?1", [text], |r| r.get::<_, ErrorClass>(0));
        assert_eq!(read("transient").unwrap(), ErrorClass::Transient);
        let err = read("flaky").unwrap_err().to_string();
        assert!(err.contains("unknown error class `flaky`"), "{err}");
    }
}
