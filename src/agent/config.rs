//! Agent configuration: the `agents:` section of the service configuration
//! file (`taskmaster.yml`, path from `--config` / `TASKMASTER_CONFIG`), the
//! environment variables that override it, and the [`AgentRegistry`] that
//! builds each agent by name.
//!
//! Resolution, last one wins:
//!
//! 1. **Built-in defaults** ([`builtin_agents`]): `claude-code`, `aider` and
//!    `goose` are AgentAPI agents at `http://localhost:3284`, `:3285` and
//!    `:3286` (AgentAPI's default port is 3284; one server per agent, so the
//!    next two ports); `codegen` is the hosted Codegen API; `command` runs
//!    plain commands under the `standard` policy.
//! 2. **The file**: an entry replaces the built-in agent of the same name
//!    whole; new names add agents.
//! 3. **The environment**: `CLAUDE_CODE_ENDPOINT`, `AIDER_ENDPOINT`,
//!    `GOOSE_ENDPOINT` set the endpoint of the agent of that name;
//!    `CODEGEN_ENDPOINT`, `CODEGEN_ORG_ID` and the token variable
//!    (`CODEGEN_API_TOKEN` unless `token_env` names another) apply to every
//!    `codegen` agent.
//!
//! The file is strict like workflow files: unknown keys, wrong types and
//! settings that do not apply to an agent's `kind` are errors that name the
//! file, line and column. Secrets never live in the file: tokens and API
//! keys come from the environment (`token_env`, `env_allow`), and their
//! values are registered with the [`Redactor`].

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use serde_saphyr::Spanned;

use super::agentapi::{self, AgentApiAgent, AgentApiSettings};
use super::cli::{CliAgent, CliFlavor, CliSettings};
use super::codegen::{CodegenAgent, CodegenSettings};
use super::command::{CommandAgent, CommandSettings, Policy, ResourceLimits, RunAs};
use super::{Agent, OutputPolicy, output};
use crate::redact::Redactor;

/// Which adapter an agent uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AgentKind {
    /// An AgentAPI server (`coder/agentapi`), see [`super::agentapi`].
    Agentapi,
    /// A local agent CLI in headless mode, see [`super::cli`].
    Cli,
    /// The hosted Codegen API, see [`super::codegen`].
    Codegen,
    /// A plain command, see [`super::command`].
    Command,
}

impl AgentKind {
    /// The name as written in configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            AgentKind::Agentapi => "agentapi",
            AgentKind::Cli => "cli",
            AgentKind::Codegen => "codegen",
            AgentKind::Command => "command",
        }
    }
}

/// Circuit-breaker settings of one agent. The breaker itself is the
/// engine's: after `failure_threshold` consecutive transient failures it
/// stops sending attempts to the agent for `cooldown_seconds`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CircuitBreakerConfig {
    /// Consecutive transient failures that open the breaker (default 5).
    #[serde(default = "default_threshold")]
    pub failure_threshold: u32,
    /// Seconds the breaker stays open before one trial attempt (default 300).
    #[serde(default = "default_cooldown")]
    pub cooldown_seconds: u64,
}

fn default_threshold() -> u32 {
    5
}

fn default_cooldown() -> u64 {
    300
}

impl Default for CircuitBreakerConfig {
    fn default() -> Self {
        Self {
            failure_threshold: default_threshold(),
            cooldown_seconds: default_cooldown(),
        }
    }
}

/// Budget of one step run on this agent; enforced by the engine. `None`:
/// no limit of that kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetConfig {
    /// Attempts per step.
    pub max_attempts: Option<u32>,
    /// Wall-clock seconds per step, all attempts together.
    pub max_wall_seconds: Option<u64>,
    /// US dollars per step, where the agent reports cost.
    pub max_cost_usd: Option<f64>,
}

/// One entry under `agents:`, as written. Which keys apply depends on
/// `kind`; see `taskmaster.example.yml`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct AgentEntry {
    kind: Option<AgentKind>,
    // Common.
    timeout_seconds: Option<u64>,
    concurrency: Option<u32>,
    circuit_breaker: Option<CircuitBreakerConfig>,
    budget: Option<BudgetConfig>,
    price: Option<crate::budget::Price>,
    // agentapi, codegen
    endpoint: Option<String>,
    // agentapi: start a server per run instead of using `endpoint`
    spawn: Option<Vec<String>>,
    // agentapi
    idle_timeout_seconds: Option<u64>,
    startup_timeout_seconds: Option<u64>,
    poll_interval_ms: Option<u64>,
    interrupt: Option<String>,
    // cli
    cli: Option<CliFlavor>,
    binary: Option<PathBuf>,
    max_turns: Option<u32>,
    args: Option<Vec<String>>,
    // cli, codegen
    model: Option<String>,
    // cli, command
    env_allow: Option<Vec<String>>,
    env: Option<BTreeMap<String, String>>,
    workdir: Option<PathBuf>,
    kill_grace_seconds: Option<u64>,
    limits: Option<ResourceLimits>,
    // command
    policy: Option<Policy>,
    sandbox: Option<bool>,
    untrusted_policy: Option<Policy>,
    allow_unsandboxed: Option<bool>,
    run_as: Option<RunAs>,
    bwrap: Option<PathBuf>,
    sandbox_ro_binds: Option<Vec<PathBuf>>,
    // codegen
    org_id: Option<i64>,
    repo_id: Option<i64>,
    repos: Option<BTreeMap<String, i64>>,
    agent_type: Option<String>,
    token_env: Option<String>,
}

/// The file's top level.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    /// Output kept per attempt, in bytes.
    output_limit_bytes: Option<usize>,
    /// Environment variables whose values are redacted from all output.
    #[serde(default)]
    redact_env: Vec<String>,
    #[serde(default)]
    agents: BTreeMap<String, Spanned<AgentEntry>>,
    /// Spend limits (see [`crate::budget`]).
    #[serde(default)]
    budgets: crate::budget::Budgets,
    /// Dashboard sign-in (see [`crate::dashboard::signin`]).
    #[serde(default)]
    sign_in: crate::dashboard::signin::SignInConfig,
    /// The written insights report (see [`crate::insights::weekly`]).
    #[serde(default)]
    insights_report: Option<crate::insights::weekly::InsightsReportConfig>,
}

/// A configuration error, with the place it was found when known.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    /// The file, when the error is in one.
    pub path: Option<PathBuf>,
    /// 1-based line, when known.
    pub line: Option<u32>,
    /// 1-based column, when known.
    pub column: Option<u32>,
    /// What is wrong and what to do.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.path, self.line, self.column) {
            (Some(p), Some(l), Some(c)) => write!(f, "{}:{l}:{c}: {}", p.display(), self.message),
            (Some(p), Some(l), None) => write!(f, "{}:{l}: {}", p.display(), self.message),
            (Some(p), _, _) => write!(f, "{}: {}", p.display(), self.message),
            (None, Some(l), Some(c)) => write!(f, "line {l}, column {c}: {}", self.message),
            _ => f.write_str(&self.message),
        }
    }
}

/// One agent, resolved: what the engine needs to schedule it, and what the
/// registry needs to build it.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// The agent's name.
    pub name: String,
    /// Its adapter.
    pub kind: AgentKind,
    /// Attempts that may run on it at once (default 1 for an AgentAPI
    /// `endpoint`, one server holding one conversation; 4 otherwise,
    /// managed AgentAPI servers included, which are one per run).
    pub concurrency: u32,
    /// Circuit-breaker settings.
    pub circuit_breaker: CircuitBreakerConfig,
    /// Budget per step.
    pub budget: BudgetConfig,
    /// Prices for attempts whose cost the agent does not report (see
    /// [`crate::budget`]).
    pub price: Option<crate::budget::Price>,
    entry: AgentEntry,
}

impl AgentConfig {
    /// The URL this agent talks to, for display: scheme, host, port and
    /// path only — any user, password, query or fragment is dropped, so a
    /// credential written into the URL is never shown. `None` for kinds
    /// without an endpoint (`cli`, `command`).
    pub fn public_endpoint(&self) -> Option<String> {
        if self.kind == AgentKind::Agentapi && self.entry.spawn.is_some() {
            return Some("managed: one AgentAPI server per run on 127.0.0.1".into());
        }
        let raw = match self.kind {
            AgentKind::Agentapi => self
                .entry
                .endpoint
                .clone()
                .unwrap_or_else(|| format!("http://localhost:{}", agentapi::DEFAULT_PORT)),
            AgentKind::Codegen => self
                .entry
                .endpoint
                .clone()
                .unwrap_or_else(|| super::codegen::DEFAULT_ENDPOINT.to_owned()),
            AgentKind::Cli | AgentKind::Command => return None,
        };
        let (scheme, rest) = raw.split_once("://").unwrap_or(("", raw.as_str()));
        let rest = rest.split(['?', '#']).next().unwrap_or_default();
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        let host = authority.rsplit('@').next().unwrap_or_default();
        Some(if scheme.is_empty() {
            format!("{host}{path}")
        } else {
            format!("{scheme}://{host}{path}")
        })
    }
}

/// All agents, resolved (defaults, file, environment).
#[derive(Debug, Clone)]
pub struct AgentsConfig {
    /// By name.
    pub agents: BTreeMap<String, AgentConfig>,
    /// Output kept per attempt, in bytes (default 1 MiB).
    pub output_limit: usize,
    /// Names of environment variables whose values are redacted.
    pub redact_env: Vec<String>,
    /// Spend limits (`budgets:`).
    pub budgets: crate::budget::Budgets,
    /// Dashboard sign-in (`sign_in:`).
    pub sign_in: crate::dashboard::signin::SignInConfig,
    /// The written insights report (`insights_report:`).
    pub insights_report: Option<crate::insights::weekly::InsightsReportConfig>,
}

/// The built-in agents (see the module docs), as `(name, kind, endpoint)`.
pub fn builtin_agents() -> Vec<(&'static str, AgentKind, Option<&'static str>)> {
    vec![
        (
            "claude-code",
            AgentKind::Agentapi,
            Some("http://localhost:3284"),
        ),
        ("aider", AgentKind::Agentapi, Some("http://localhost:3285")),
        ("goose", AgentKind::Agentapi, Some("http://localhost:3286")),
        (
            "codegen",
            AgentKind::Codegen,
            Some(super::codegen::DEFAULT_ENDPOINT),
        ),
        ("command", AgentKind::Command, None),
    ]
}

/// Environment variables that set the endpoint of the agent of that name.
pub const ENDPOINT_VARIABLES: &[(&str, &str)] = &[
    ("claude-code", "CLAUDE_CODE_ENDPOINT"),
    ("aider", "AIDER_ENDPOINT"),
    ("goose", "GOOSE_ENDPOINT"),
];

/// Which keys apply to which kinds (for the "does not apply" check).
fn misplaced_keys(kind: AgentKind, e: &AgentEntry) -> Vec<&'static str> {
    use AgentKind::*;
    let mut wrong = Vec::new();
    let mut check = |set: bool, key: &'static str, kinds: &[AgentKind]| {
        if set && !kinds.contains(&kind) {
            wrong.push(key);
        }
    };
    check(e.endpoint.is_some(), "endpoint", &[Agentapi, Codegen]);
    check(
        e.idle_timeout_seconds.is_some(),
        "idle_timeout_seconds",
        &[Agentapi],
    );
    check(
        e.startup_timeout_seconds.is_some(),
        "startup_timeout_seconds",
        &[Agentapi],
    );
    check(
        e.poll_interval_ms.is_some(),
        "poll_interval_ms",
        &[Agentapi, Codegen],
    );
    check(e.interrupt.is_some(), "interrupt", &[Agentapi]);
    check(e.spawn.is_some(), "spawn", &[Agentapi]);
    check(e.cli.is_some(), "cli", &[Cli]);
    check(e.binary.is_some(), "binary", &[Cli]);
    check(e.max_turns.is_some(), "max_turns", &[Cli]);
    check(e.args.is_some(), "args", &[Cli]);
    check(e.model.is_some(), "model", &[Cli, Codegen]);
    check(
        e.env_allow.is_some(),
        "env_allow",
        &[Agentapi, Cli, Command],
    );
    check(e.env.is_some(), "env", &[Agentapi, Cli, Command]);
    check(e.workdir.is_some(), "workdir", &[Cli, Command]);
    check(
        e.kill_grace_seconds.is_some(),
        "kill_grace_seconds",
        &[Cli, Command],
    );
    check(e.limits.is_some(), "limits", &[Cli, Command]);
    check(e.policy.is_some(), "policy", &[Command]);
    check(e.untrusted_policy.is_some(), "untrusted_policy", &[Command]);
    check(
        e.allow_unsandboxed.is_some(),
        "allow_unsandboxed",
        &[Agentapi, Cli, Command],
    );
    check(e.run_as.is_some(), "run_as", &[Command]);
    check(e.bwrap.is_some(), "bwrap", &[Agentapi, Cli, Command]);
    check(
        e.sandbox_ro_binds.is_some(),
        "sandbox_ro_binds",
        &[Agentapi, Cli, Command],
    );
    check(e.sandbox.is_some(), "sandbox", &[Agentapi, Cli]);
    check(e.org_id.is_some(), "org_id", &[Codegen]);
    check(e.repo_id.is_some(), "repo_id", &[Codegen]);
    check(e.repos.is_some(), "repos", &[Codegen]);
    check(e.agent_type.is_some(), "agent_type", &[Codegen]);
    check(e.token_env.is_some(), "token_env", &[Codegen]);
    wrong
}

impl AgentsConfig {
    /// The built-in agents with the environment applied (no file).
    ///
    /// # Errors
    /// When an environment override is malformed (`CODEGEN_ORG_ID`).
    pub fn defaults(lookup: &dyn Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        Self::parse("{}", None, lookup)
    }

    /// Reads the file at `path`, or the defaults when `path` is `None`.
    ///
    /// # Errors
    /// The file cannot be read, or [`AgentsConfig::parse`] fails.
    pub fn load(
        path: Option<&Path>,
        lookup: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let Some(path) = path else {
            return Self::defaults(lookup);
        };
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            path: Some(path.to_owned()),
            line: None,
            column: None,
            message: format!("cannot read the configuration file: {e}"),
        })?;
        Self::parse(&text, Some(path), lookup)
    }

    /// Parses configuration text (`path` only names it in errors) and
    /// applies defaults and the environment.
    ///
    /// # Errors
    /// YAML syntax, unknown keys, wrong types, keys that do not apply to an
    /// agent's kind, invalid values, malformed environment overrides; with
    /// file, line and column where known.
    pub fn parse(
        text: &str,
        path: Option<&Path>,
        lookup: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let error = |line: Option<u32>, column: Option<u32>, message: String| ConfigError {
            path: path.map(Path::to_owned),
            line,
            column,
            message,
        };
        let file: FileConfig = if text.trim().is_empty() {
            FileConfig::default()
        } else {
            serde_saphyr::from_str(text).map_err(|e| {
                let location = e.location();
                error(
                    location.map(|l| l.line() as u32),
                    location.map(|l| l.column() as u32),
                    e.to_string(),
                )
            })?
        };
        file.sign_in
            .validate()
            .map_err(|message| error(None, None, message))?;
        if let Some(report) = &file.insights_report {
            report
                .validate()
                .map_err(|message| error(None, None, message))?;
        }

        let mut entries: BTreeMap<String, AgentEntry> = BTreeMap::new();
        for (name, kind, endpoint) in builtin_agents() {
            let mut entry = AgentEntry {
                kind: Some(kind),
                endpoint: endpoint.map(str::to_owned),
                ..AgentEntry::default()
            };
            if kind == AgentKind::Agentapi && name != "claude-code" {
                entry.interrupt = Some(agentapi::INTERRUPT_CTRL_C.to_owned());
            }
            entries.insert(name.to_owned(), entry);
        }
        for (name, spanned) in file.agents {
            let at = spanned.referenced;
            let (line, column) = (Some(at.line() as u32), Some(at.column() as u32));
            let entry = spanned.value;
            let fail = |m: String| error(line, column, format!("agent `{name}`: {m}"));
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                return Err(fail(
                    "agent names use letters, digits, `-` and `_` only".into(),
                ));
            }
            let Some(kind) = entry.kind else {
                return Err(fail(
                    "missing `kind`: one of agentapi, cli, codegen, command".into(),
                ));
            };
            let wrong = misplaced_keys(kind, &entry);
            if !wrong.is_empty() {
                return Err(fail(format!(
                    "{} do{} not apply to kind `{}`",
                    wrong
                        .iter()
                        .map(|k| format!("`{k}`"))
                        .collect::<Vec<_>>()
                        .join(", "),
                    if wrong.len() == 1 { "es" } else { "" },
                    kind.as_str()
                )));
            }
            if entry.concurrency == Some(0) {
                return Err(fail("`concurrency` must be at least 1".into()));
            }
            if entry.timeout_seconds == Some(0) {
                return Err(fail("`timeout_seconds` must be at least 1".into()));
            }
            if let Some(endpoint) = &entry.endpoint
                && !(endpoint.starts_with("http://") || endpoint.starts_with("https://"))
            {
                return Err(fail(format!(
                    "`endpoint` must be an http:// or https:// URL, not `{endpoint}`"
                )));
            }
            if kind == AgentKind::Cli && entry.cli.is_none() {
                return Err(fail(
                    "missing `cli`: one of claude, aider, goose, codex".into(),
                ));
            }
            if let Some(names) = &entry.env_allow
                && let Some(bad) = names.iter().find(|n| super::env::is_denied(n))
            {
                return Err(fail(format!(
                    "`env_allow` names `{bad}`: GitHub credentials and taskmaster's own secrets are never given to agents"
                )));
            }
            if let Some(env) = &entry.env
                && let Some(bad) = env.keys().find(|n| super::env::is_denied(n))
            {
                return Err(fail(format!(
                    "`env` sets `{bad}`: GitHub credentials and taskmaster's own secrets are never given to agents"
                )));
            }
            entries.insert(name, entry);
        }

        // Environment overrides.
        for (name, variable) in ENDPOINT_VARIABLES {
            if let Some(value) = lookup(variable).filter(|v| !v.trim().is_empty())
                && let Some(entry) = entries.get_mut(*name)
            {
                entry.endpoint = Some(value.trim().to_owned());
            }
        }
        let org_from_env = match lookup("CODEGEN_ORG_ID").filter(|v| !v.trim().is_empty()) {
            Some(v) => Some(v.trim().parse::<i64>().map_err(|_| ConfigError {
                path: None,
                line: None,
                column: None,
                message: format!(
                    "CODEGEN_ORG_ID must be the integer id of your Codegen organisation, not `{v}`"
                ),
            })?),
            None => None,
        };
        for entry in entries.values_mut() {
            if entry.kind == Some(AgentKind::Codegen) {
                if let Some(endpoint) = lookup("CODEGEN_ENDPOINT").filter(|v| !v.trim().is_empty())
                {
                    entry.endpoint = Some(endpoint.trim().to_owned());
                }
                if org_from_env.is_some() {
                    entry.org_id = org_from_env;
                }
            }
        }

        let agents = entries
            .into_iter()
            .map(|(name, entry)| {
                let kind = entry.kind.unwrap_or(AgentKind::Command);
                let config = AgentConfig {
                    name: name.clone(),
                    kind,
                    // One long-lived AgentAPI server holds one conversation;
                    // managed ones (`spawn`) are one server per run.
                    concurrency: entry.concurrency.unwrap_or(
                        if kind == AgentKind::Agentapi && entry.spawn.is_none() {
                            1
                        } else {
                            4
                        },
                    ),
                    circuit_breaker: entry.circuit_breaker.unwrap_or_default(),
                    budget: entry.budget.unwrap_or_default(),
                    price: entry.price,
                    entry,
                };
                (name, config)
            })
            .collect();
        Ok(Self {
            agents,
            output_limit: file
                .output_limit_bytes
                .unwrap_or(output::DEFAULT_OUTPUT_LIMIT),
            redact_env: file.redact_env,
            budgets: file.budgets,
            sign_in: file.sign_in,
            insights_report: file.insights_report,
        })
    }
}

/// Builds agents by name from an [`AgentsConfig`]; the engine holds one and
/// asks it for `Arc<dyn Agent>` per attempt.
#[derive(Debug, Clone)]
pub struct AgentRegistry {
    agents: BTreeMap<String, Arc<dyn Agent>>,
    configs: BTreeMap<String, AgentConfig>,
    redactor: Arc<Redactor>,
    budgets: crate::budget::Budgets,
}

impl AgentRegistry {
    /// Builds every configured agent. `lookup` reads taskmaster's
    /// environment (API tokens, allowed variables); pass
    /// [`super::env::process_lookup`] in production.
    ///
    /// The shared [`Redactor`] learns the values of: the Codegen tokens, the
    /// variables in `redact_env`, the secret-looking variables agents are
    /// allowed (`*KEY*`, `*TOKEN*`, `*SECRET*`, `*PASSWORD*`), and
    /// taskmaster's own credentials ([`super::env::DENY`]).
    ///
    /// # Errors
    /// When an HTTP client cannot be built.
    pub fn new(
        config: &AgentsConfig,
        lookup: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        Self::with_secrets(config, lookup, &[])
    }

    /// [`AgentRegistry::new`], with more values the redactor must know:
    /// the service's own secrets given as flags rather than variables
    /// (each webhook secret, the database password).
    ///
    /// # Errors
    /// As [`AgentRegistry::new`].
    pub fn with_secrets(
        config: &AgentsConfig,
        lookup: &dyn Fn(&str) -> Option<String>,
        secrets: &[String],
    ) -> Result<Self, ConfigError> {
        let mut redactor = Redactor::default();
        for value in secrets {
            redactor.add_secret(value.clone());
        }
        let secretish = |name: &str| {
            let n = name.to_ascii_uppercase();
            ["KEY", "TOKEN", "SECRET", "PASSWORD"]
                .iter()
                .any(|w| n.contains(w))
        };
        let mut secret_names: Vec<String> =
            super::env::DENY.iter().map(|s| s.to_string()).collect();
        secret_names.extend(config.redact_env.iter().cloned());
        for agent in config.agents.values() {
            let e = &agent.entry;
            secret_names.extend(
                e.env_allow
                    .iter()
                    .flatten()
                    .filter(|n| secretish(n))
                    .cloned(),
            );
            if let Some(flavor) = e.cli {
                secret_names.extend(
                    flavor
                        .default_env_allow()
                        .iter()
                        .filter(|n| secretish(n))
                        .map(|s| s.to_string()),
                );
            }
            if agent.kind == AgentKind::Codegen {
                secret_names.push(
                    e.token_env
                        .clone()
                        .unwrap_or_else(|| "CODEGEN_API_TOKEN".into()),
                );
            }
            for (name, value) in e.env.iter().flatten() {
                if secretish(name) {
                    redactor.add_secret(value.clone());
                }
            }
        }
        for name in &secret_names {
            if let Some(value) = lookup(name) {
                // Rotated webhook secrets are comma-separated: each alone too.
                if name == "GITHUB_WEBHOOK_SECRET" {
                    value.split(',').for_each(|v| redactor.add_secret(v));
                }
                if let Some(password) = crate::redact::url_password(&value) {
                    redactor.add_secret(password);
                }
                redactor.add_secret(value);
            }
        }
        // GitHub App keys may sit in a file: redact what it holds too.
        if let Some(key_path) = lookup("GITHUB_PRIVATE_KEY_PATH")
            && let Ok(pem) = std::fs::read_to_string(key_path)
        {
            redactor.add_secret(pem);
        }
        let redactor = Arc::new(redactor);
        let output = OutputPolicy {
            redactor: redactor.clone(),
            limit: config.output_limit,
        };
        let mut agents: BTreeMap<String, Arc<dyn Agent>> = BTreeMap::new();
        for (name, agent) in &config.agents {
            let built = build(name, agent, &output, lookup).map_err(|message| ConfigError {
                path: None,
                line: None,
                column: None,
                message: format!("agent `{name}`: {message}"),
            })?;
            agents.insert(name.clone(), built);
        }
        Ok(Self {
            agents,
            configs: config.agents.clone(),
            redactor,
            budgets: config.budgets,
        })
    }

    /// The service configuration's `budgets:` (spend limits the engine
    /// enforces; see [`crate::budget`]).
    pub fn budgets(&self) -> crate::budget::Budgets {
        self.budgets
    }

    /// The agent called `name`.
    pub fn get(&self, name: &str) -> Option<Arc<dyn Agent>> {
        self.agents.get(name).cloned()
    }

    /// The resolved configuration of `name` (concurrency, breaker, budget).
    pub fn config(&self, name: &str) -> Option<&AgentConfig> {
        self.configs.get(name)
    }

    /// Every agent name, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.agents.keys().map(String::as_str)
    }

    /// The redactor every agent uses; the engine uses it too for anything
    /// else it stores, logs or posts.
    pub fn redactor(&self) -> Arc<Redactor> {
        self.redactor.clone()
    }
}

fn build(
    name: &str,
    agent: &AgentConfig,
    output: &OutputPolicy,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<Arc<dyn Agent>, String> {
    let e = &agent.entry;
    let secs = Duration::from_secs;
    Ok(match agent.kind {
        AgentKind::Agentapi => {
            let endpoint = e
                .endpoint
                .clone()
                .unwrap_or_else(|| format!("http://localhost:{}", agentapi::DEFAULT_PORT));
            let mut s = AgentApiSettings::new(name, endpoint);
            if let Some(t) = e.timeout_seconds {
                s.timeout = secs(t);
            }
            if let Some(t) = e.idle_timeout_seconds {
                s.idle_timeout = secs(t);
            }
            if let Some(t) = e.startup_timeout_seconds {
                s.startup_timeout = secs(t);
            }
            if let Some(ms) = e.poll_interval_ms {
                s.poll_interval = Duration::from_millis(ms.max(10));
            }
            if let Some(i) = &e.interrupt {
                s.interrupt = i.clone();
            }
            s.output = output.clone();
            match &e.spawn {
                None => Arc::new(AgentApiAgent::new(s).map_err(|e| e.to_string())?),
                Some(spawn) => {
                    if e.endpoint.is_some() {
                        return Err("give `endpoint` (one shared AgentAPI server) or `spawn` (a server per run), not both".into());
                    }
                    if spawn.is_empty() {
                        return Err("`spawn` is empty: give the server's argv, e.g. [agentapi, server, --type=claude, --, claude]".into());
                    }
                    let mut m = super::managed::ManagedSettings::new(s, spawn.clone());
                    m.env_allow = e.env_allow.clone().unwrap_or_default();
                    m.env = e.env.clone().unwrap_or_default();
                    m.sandbox = e.sandbox.unwrap_or(false);
                    m.bwrap = e.bwrap.clone();
                    m.sandbox_ro_binds = e.sandbox_ro_binds.clone().unwrap_or_default();
                    m.allow_unsandboxed = e.allow_unsandboxed.unwrap_or(false);
                    if let Some(t) = e.startup_timeout_seconds {
                        m.server_startup = secs(t);
                    }
                    Arc::new(super::managed::ManagedAgentApi::new(m))
                }
            }
        }
        AgentKind::Cli => {
            let flavor = e.cli.unwrap_or(CliFlavor::Claude);
            let mut s = CliSettings::new(name, flavor);
            if let Some(b) = &e.binary {
                s.binary = b.clone();
            }
            s.model = e.model.clone();
            s.max_turns = e.max_turns;
            s.extra_args = e.args.clone().unwrap_or_default();
            s.env_allow = e.env_allow.clone().unwrap_or_default();
            s.env = e.env.clone().unwrap_or_default();
            s.workdir = e.workdir.clone();
            if let Some(t) = e.timeout_seconds {
                s.timeout = secs(t);
            }
            if let Some(t) = e.kill_grace_seconds {
                s.kill_grace = secs(t);
            }
            s.limits = e.limits.unwrap_or_default();
            s.sandbox = e.sandbox.unwrap_or(false);
            s.bwrap = e.bwrap.clone();
            s.sandbox_ro_binds = e.sandbox_ro_binds.clone().unwrap_or_default();
            s.allow_unsandboxed = e.allow_unsandboxed.unwrap_or(false);
            s.output = output.clone();
            Arc::new(CliAgent::new(s))
        }
        AgentKind::Codegen => {
            let mut s = CodegenSettings::new(name);
            if let Some(endpoint) = &e.endpoint {
                s.endpoint = endpoint.clone();
            }
            let token_env = e.token_env.as_deref().unwrap_or("CODEGEN_API_TOKEN");
            s.token = lookup(token_env)
                .filter(|t| !t.trim().is_empty())
                .map(|t| t.trim().to_owned().into());
            s.org_id = e.org_id;
            s.repo_id = e.repo_id;
            s.repos = e.repos.clone().unwrap_or_default();
            s.model = e.model.clone();
            s.agent_type = e.agent_type.clone();
            if let Some(t) = e.timeout_seconds {
                s.timeout = secs(t);
            }
            if let Some(ms) = e.poll_interval_ms {
                s.poll_initial = Duration::from_millis(ms.max(100));
            }
            s.output = output.clone();
            Arc::new(CodegenAgent::new(s).map_err(|e| e.to_string())?)
        }
        AgentKind::Command => {
            let mut s = CommandSettings::new(name);
            s.policy = e.policy.unwrap_or_default();
            if let Some(p) = e.untrusted_policy {
                s.untrusted_policy = p;
            }
            s.allow_unsandboxed = e.allow_unsandboxed.unwrap_or(false);
            s.limits = e.limits.unwrap_or_default();
            s.run_as = e.run_as;
            s.env_allow = e.env_allow.clone().unwrap_or_default();
            s.env = e.env.clone().unwrap_or_default();
            s.workdir = e.workdir.clone();
            if let Some(t) = e.timeout_seconds {
                s.timeout = secs(t);
            }
            if let Some(t) = e.kill_grace_seconds {
                s.kill_grace = secs(t);
            }
            s.bwrap = e.bwrap.clone();
            s.sandbox_ro_binds = e.sandbox_ro_binds.clone().unwrap_or_default();
            s.output = output.clone();
            Arc::new(CommandAgent::new(s))
        }
    })
}
