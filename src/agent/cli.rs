//! The `cli` adapter: a local agent CLI in headless mode, one process per
//! attempt (`AGENT_PROTOCOLS.md` §2).
//!
//! | flavor | command line | result |
//! | --- | --- | --- |
//! | `claude` | `claude -p <prompt> --output-format json [--max-turns N] [--model M] [--allowedTools …] [--permission-mode …] [--append-system-prompt …]` | the final JSON object: `result`, `is_error`, `subtype`, `total_cost_usd`, `num_turns`, `usage` |
//! | `aider` | `aider --message <prompt> --yes-always --no-auto-commits --no-pretty --no-stream --no-check-update [--model M] [files…]` | exit code; cost and tokens from its `Tokens: … Cost: …` line |
//! | `goose` | `goose run -t <prompt> --no-session [--max-turns N]`, with `GOOSE_MODE=auto`; a validation step: `goose run --recipe <recipe.json> --params task=<prompt file> --no-session`, the recipe's `response.json_schema` being the verdict schema | exit code; a validation step's final output (its last line of JSON) becomes its verdict block |
//! | `codex` | `codex exec <prompt>` | exit code |
//!
//! Prompts longer than [`ARGV_PROMPT_LIMIT`] bytes do not fit one argv entry
//! (Linux caps a single argument at 128 KiB), so they go through stdin
//! (`claude -p` and `codex exec -` read it) or a private temporary file
//! (`aider --message-file`, `goose run -i`).
//!
//! Each run gets the working directory, a clean environment (the flavor's
//! own API-key variables plus the configured allow-list; never a GitHub
//! token: see [`super::env`]), the wall-clock deadline with a process-group
//! kill, and capped, redacted output ([`super::process`]).
//!
//! Failures are permanent unless the agent's output names a condition that
//! passes (rate limits, overload, HTTP 429/5xx, timeouts): the CLIs do not
//! classify their errors, so this is a documented heuristic.
//!
//! Validation steps get the verdict schema as `with.json_schema` from the
//! engine: Claude Code's `--json-schema` (read back from
//! `structured_output`) and Goose's recipe `response` validate against it in
//! the agent; the others are asked for a fenced block.
//!
//! Step inputs (`with:`), all optional, override the agent's settings:
//! `model` (string), `max_turns` (integer), `allowed_tools` (list of
//! strings, claude), `permission_mode` (string, claude),
//! `append_system_prompt` (string, claude), `files` (list of paths, aider).

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::command::ResourceLimits;
use super::process::{self, Ended, ProcessSpec};
use super::{
    Agent, AgentKind, AttemptOutcome, AttemptRequest, ErrorClass, FailureKind, Health,
    OutputPolicy, Usage,
};

/// Prompts longer than this many bytes go through stdin or a file.
pub const ARGV_PROMPT_LIMIT: usize = 100 * 1024;

/// Which agent CLI.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CliFlavor {
    /// Anthropic's Claude Code (`claude`).
    Claude,
    /// Aider (`aider`).
    Aider,
    /// Block's Goose (`goose`).
    Goose,
    /// OpenAI's Codex CLI (`codex`).
    Codex,
}

impl CliFlavor {
    /// The default binary name, looked up in `PATH`.
    pub fn default_binary(self) -> &'static str {
        match self {
            CliFlavor::Claude => "claude",
            CliFlavor::Aider => "aider",
            CliFlavor::Goose => "goose",
            CliFlavor::Codex => "codex",
        }
    }

    /// Variables the CLI needs from taskmaster's environment (its model
    /// provider's keys and settings), besides the base allow-list.
    pub fn default_env_allow(self) -> &'static [&'static str] {
        match self {
            CliFlavor::Claude => &[
                "ANTHROPIC_API_KEY",
                "ANTHROPIC_BASE_URL",
                "ANTHROPIC_MODEL",
                "CLAUDE_CODE_OAUTH_TOKEN",
                "CLAUDE_CONFIG_DIR",
            ],
            CliFlavor::Aider => &[
                "OPENAI_API_KEY",
                "ANTHROPIC_API_KEY",
                "OPENROUTER_API_KEY",
                "GEMINI_API_KEY",
                "DEEPSEEK_API_KEY",
                "AIDER_MODEL",
            ],
            CliFlavor::Goose => &[
                "GOOSE_PROVIDER",
                "GOOSE_MODEL",
                "OPENAI_API_KEY",
                "ANTHROPIC_API_KEY",
                "GOOGLE_API_KEY",
            ],
            CliFlavor::Codex => &["OPENAI_API_KEY", "CODEX_HOME"],
        }
    }
}

/// Settings of one `cli` agent.
#[derive(Debug, Clone)]
pub struct CliSettings {
    /// The agent's name.
    pub name: String,
    /// Which CLI.
    pub flavor: CliFlavor,
    /// The binary: a path, or a name looked up in `PATH`.
    pub binary: PathBuf,
    /// `--model`.
    pub model: Option<String>,
    /// `--max-turns` (claude, goose).
    pub max_turns: Option<u32>,
    /// Extra arguments, placed before the prompt options.
    pub extra_args: Vec<String>,
    /// Variables copied from taskmaster's environment, besides the base set
    /// and the flavor's own ([`CliFlavor::default_env_allow`]).
    pub env_allow: Vec<String>,
    /// Variables set to fixed values.
    pub env: BTreeMap<String, String>,
    /// Working directory when the step gives none.
    pub workdir: Option<PathBuf>,
    /// Longest wall-clock time of one attempt.
    pub timeout: Duration,
    /// Time between `SIGTERM` and `SIGKILL`.
    pub kill_grace: Duration,
    /// Resource limits (none by default: agents run compilers and tests).
    pub limits: ResourceLimits,
    /// Run the CLI in the `bwrap` sandbox (see [`super::sandbox`]) with
    /// network (to reach its model), seeing only the run's workspace, its
    /// mirror read-only, the system directories and `sandbox_ro_binds`,
    /// with a private empty `HOME`.
    pub sandbox: bool,
    /// The `bwrap` binary: `None` looks for `bwrap` in `PATH`.
    pub bwrap: Option<PathBuf>,
    /// Extra paths visible read-only in the sandbox (an install outside
    /// `/usr`, e.g. `~/.local`).
    pub sandbox_ro_binds: Vec<PathBuf>,
    /// With `sandbox`, run without it when `bwrap` is missing (default
    /// false: the attempt fails, naming the package).
    pub allow_unsandboxed: bool,
    /// Output cap and redaction.
    pub output: OutputPolicy,
}

impl CliSettings {
    /// Defaults: the flavor's binary from `PATH`, 1 h timeout, 10 s grace.
    pub fn new(name: impl Into<String>, flavor: CliFlavor) -> Self {
        Self {
            name: name.into(),
            flavor,
            binary: PathBuf::from(flavor.default_binary()),
            model: None,
            max_turns: None,
            extra_args: Vec::new(),
            env_allow: Vec::new(),
            env: BTreeMap::new(),
            workdir: None,
            timeout: Duration::from_secs(3600),
            kill_grace: Duration::from_secs(10),
            limits: ResourceLimits::default(),
            sandbox: false,
            bwrap: None,
            sandbox_ro_binds: Vec::new(),
            allow_unsandboxed: false,
            output: OutputPolicy::default(),
        }
    }
}

/// The final object of `claude -p --output-format json`.
#[derive(Debug, Deserialize)]
struct ClaudeResult {
    #[serde(default)]
    subtype: Option<String>,
    #[serde(default)]
    result: Option<String>,
    #[serde(default)]
    is_error: bool,
    #[serde(default)]
    total_cost_usd: Option<f64>,
    #[serde(default)]
    num_turns: Option<u32>,
    #[serde(default)]
    usage: Option<ClaudeUsage>,
    /// With `--json-schema`: the answer as an object valid against it.
    #[serde(default)]
    structured_output: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
struct ClaudeUsage {
    #[serde(default)]
    input_tokens: Option<u64>,
    #[serde(default)]
    output_tokens: Option<u64>,
}

/// The `cli` agent (see the module docs).
#[derive(Debug)]
pub struct CliAgent {
    settings: CliSettings,
    lookup: fn(&str) -> Option<String>,
}

/// Arguments after the binary, bytes for stdin, and the temporary files
/// (prompt, Goose recipe) to keep alive while the process runs.
type CommandLine = (Vec<OsString>, Option<Vec<u8>>, Vec<PromptFile>);

/// A temporary prompt file, removed on drop.
struct PromptFile(PathBuf);

impl Drop for PromptFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn write_prompt_file(prompt: &str) -> std::io::Result<PromptFile> {
    write_temp_file("prompt", "txt", prompt)
}

/// A new file `taskmaster-<what>-<uuid>.<ext>` in the temporary directory,
/// readable by this user only.
fn write_temp_file(what: &str, ext: &str, text: &str) -> std::io::Result<PromptFile> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path =
        std::env::temp_dir().join(format!("taskmaster-{what}-{}.{ext}", uuid::Uuid::new_v4()));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)?;
    file.write_all(text.as_bytes())?;
    Ok(PromptFile(path))
}

/// Words in an agent's error output that mean "try again later".
const TRANSIENT_HINTS: &[&str] = &[
    "rate limit",
    "ratelimit",
    "rate_limit",
    "overloaded",
    "429",
    "502",
    "503",
    "529",
    "timed out",
    "timeout",
    "connection error",
    "temporarily unavailable",
];

fn classify(text: &str) -> ErrorClass {
    let lower = text.to_lowercase();
    if TRANSIENT_HINTS.iter().any(|h| lower.contains(h)) {
        ErrorClass::Transient
    } else {
        ErrorClass::Permanent
    }
}

/// Reads aider's `Tokens: 2.1k sent, 150 received. Cost: $0.01 message, $0.02 session.`
fn aider_usage(text: &str) -> Usage {
    let mut usage = Usage::default();
    let count = |s: &str| -> Option<u64> {
        let s = s.trim();
        let (num, scale) = match s.strip_suffix('k') {
            Some(n) => (n, 1_000.0),
            None => match s.strip_suffix('M') {
                Some(n) => (n, 1_000_000.0),
                None => (s, 1.0),
            },
        };
        num.replace(',', "")
            .parse::<f64>()
            .ok()
            .map(|v| (v * scale) as u64)
    };
    for line in text.lines().rev() {
        let Some(rest) = line.trim().strip_prefix("Tokens:") else {
            continue;
        };
        if let Some((sent, rest)) = rest.split_once(" sent") {
            usage.input_tokens = count(sent.rsplit(',').next().unwrap_or(sent));
            if let Some((received, _)) = rest.split_once(" received") {
                usage.output_tokens = count(received.trim_start_matches(',').trim());
            }
        }
        if let Some((_, cost)) = rest.split_once("Cost:")
            && let Some((_, session)) = cost.split_once(", $")
        {
            usage.cost_usd = session
                .split_whitespace()
                .next()
                .and_then(|v| v.parse().ok());
        }
        break;
    }
    usage
}

impl CliAgent {
    /// A CLI agent reading allowed variables from taskmaster's environment.
    pub fn new(settings: CliSettings) -> Self {
        Self {
            settings,
            lookup: super::env::process_lookup,
        }
    }

    /// Replaces how taskmaster's own environment is read (tests).
    pub fn with_env_lookup(mut self, lookup: fn(&str) -> Option<String>) -> Self {
        self.lookup = lookup;
        self
    }

    /// Builds argv (after the binary), stdin and an optional prompt file.
    fn command_line(
        &self,
        prompt: &str,
        with: &serde_json::Map<String, serde_json::Value>,
    ) -> std::io::Result<CommandLine> {
        let s = &self.settings;
        let str_in = |key: &str| with.get(key).and_then(|v| v.as_str()).map(str::to_owned);
        let list_in = |key: &str| -> Vec<String> {
            with.get(key)
                .and_then(|v| v.as_array())
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default()
        };
        let model = str_in("model").or_else(|| s.model.clone());
        let max_turns = with
            .get("max_turns")
            .and_then(|v| v.as_u64())
            .map(|n| n as u32)
            .or(s.max_turns);
        let long = prompt.len() > ARGV_PROMPT_LIMIT;
        let mut args: Vec<String> = Vec::new();
        let mut stdin = None;
        let mut files = Vec::new();
        match s.flavor {
            CliFlavor::Claude => {
                args.push("-p".into());
                if long {
                    stdin = Some(prompt.as_bytes().to_vec());
                } else {
                    args.push(prompt.into());
                }
                args.extend(["--output-format".into(), "json".into()]);
                if let Some(n) = max_turns {
                    args.extend(["--max-turns".into(), n.to_string()]);
                }
                if let Some(m) = model {
                    args.extend(["--model".into(), m]);
                }
                let tools = list_in("allowed_tools");
                if !tools.is_empty() {
                    args.push("--allowedTools".into());
                    args.extend(tools);
                }
                if let Some(mode) = str_in("permission_mode") {
                    args.extend(["--permission-mode".into(), mode]);
                }
                if let Some(extra) = str_in("append_system_prompt") {
                    args.extend(["--append-system-prompt".into(), extra]);
                }
                // Set by the engine for validation steps (the verdict
                // schema): Claude Code then returns `structured_output`.
                if let Some(schema) = str_in("json_schema") {
                    args.extend(["--json-schema".into(), schema]);
                }
            }
            CliFlavor::Aider => {
                if long {
                    let f = write_prompt_file(prompt)?;
                    args.extend(["--message-file".into(), f.0.to_string_lossy().into_owned()]);
                    files.push(f);
                } else {
                    args.extend(["--message".into(), prompt.into()]);
                }
                args.extend(
                    [
                        "--yes-always",
                        "--no-auto-commits",
                        "--no-pretty",
                        "--no-stream",
                        "--no-check-update",
                    ]
                    .map(String::from),
                );
                if let Some(m) = model {
                    args.extend(["--model".into(), m]);
                }
                args.extend(list_in("files"));
            }
            CliFlavor::Goose => {
                args.push("run".into());
                if let Some(schema) = str_in("json_schema")
                    .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
                {
                    // A validation step: a recipe whose `response.json_schema`
                    // makes Goose end with its `final_output` tool, checked
                    // against the schema (one line of JSON, printed last).
                    // The prompt is a `file` parameter: Goose renders recipes
                    // as templates, and a prompt must never be one.
                    let p = write_prompt_file(prompt)?;
                    let recipe = goose_recipe(schema);
                    let r = write_temp_file("recipe", "json", &recipe.to_string())?;
                    args.extend([
                        "--recipe".into(),
                        r.0.to_string_lossy().into_owned(),
                        "--params".into(),
                        format!("task={}", p.0.to_string_lossy()),
                    ]);
                    files.extend([p, r]);
                } else if long {
                    let f = write_prompt_file(prompt)?;
                    args.extend(["-i".into(), f.0.to_string_lossy().into_owned()]);
                    files.push(f);
                } else {
                    args.extend(["-t".into(), prompt.into()]);
                }
                args.push("--no-session".into());
                if let Some(n) = max_turns {
                    args.extend(["--max-turns".into(), n.to_string()]);
                }
            }
            CliFlavor::Codex => {
                args.push("exec".into());
                if let Some(m) = model {
                    args.extend(["--model".into(), m]);
                }
                if long {
                    args.push("-".into());
                    stdin = Some(prompt.as_bytes().to_vec());
                } else {
                    args.push(prompt.into());
                }
            }
        }
        let mut all: Vec<OsString> = s.extra_args.iter().map(OsString::from).collect();
        all.extend(args.into_iter().map(OsString::from));
        Ok((all, stdin, files))
    }
}

/// The Goose recipe of a validation step: the prompt from the `task` file
/// parameter, and `schema` as the `response.json_schema` its final output
/// must satisfy. Source: Goose's recipe reference ("Response",
/// "Parameters": a `file` parameter is replaced by the file's content).
fn goose_recipe(schema: serde_json::Value) -> serde_json::Value {
    let mut schema = schema;
    if let Some(o) = schema.as_object_mut() {
        o.remove("$schema");
        o.remove("$id");
    }
    serde_json::json!({
        "version": "1.0.0",
        "title": "taskmaster validation step",
        "description": "A taskmaster workflow step that ends with a verdict report.",
        "prompt": "{{ task }}",
        "parameters": [{
            "key": "task",
            "input_type": "file",
            "requirement": "required",
            "description": "The step's prompt"
        }],
        "response": { "json_schema": schema }
    })
}

/// Goose's structured final output: the last line of `stdout` that is a
/// JSON object (Goose prints it on one line, last).
fn goose_final_output(stdout: &str) -> Option<serde_json::Value> {
    stdout
        .lines()
        .rev()
        .map(str::trim)
        .filter(|l| l.starts_with('{') && l.ends_with('}'))
        .find_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(serde_json::Value::is_object)
}

#[async_trait]
impl Agent for CliAgent {
    fn name(&self) -> &str {
        &self.settings.name
    }

    fn kind(&self) -> AgentKind {
        AgentKind::Cli
    }

    async fn run(&self, attempt: AttemptRequest) -> AttemptOutcome {
        let started = Instant::now();
        let s = &self.settings;
        let out = &s.output;
        let prompt = out.redactor.redact(&attempt.prompt);
        let (args, stdin, _prompt_file) = match self.command_line(&prompt, &attempt.with) {
            Ok(parts) => parts,
            Err(e) => {
                return AttemptOutcome::failed(
                    ErrorClass::Transient,
                    FailureKind::Agent,
                    format!("cannot write the prompt file: {e}"),
                    out.output(""),
                    started,
                );
            }
        };
        let mut allow: Vec<String> = s
            .flavor
            .default_env_allow()
            .iter()
            .map(|v| v.to_string())
            .collect();
        allow.extend(s.env_allow.iter().cloned());
        let mut set = s.env.clone();
        if s.flavor == CliFlavor::Goose {
            set.entry("GOOSE_MODE".into())
                .or_insert_with(|| "auto".into());
        }
        set.insert("TASKMASTER_ATTEMPT".into(), attempt.key.to_string());
        let (env, refused) = super::env::build(&self.lookup, &allow, &set);
        if !refused.is_empty() {
            tracing::warn!(agent = %s.name, withheld = ?refused, "GitHub credentials are never given to agents");
        }
        let workdir = attempt.workdir.clone().or_else(|| s.workdir.clone());
        let (program, args) = match (s.sandbox, &workdir) {
            (true, Some(dir)) => match super::sandbox::find_bwrap(s.bwrap.as_deref()) {
                Some(bwrap) => {
                    let mut read_only = s.sandbox_ro_binds.clone();
                    read_only.extend(attempt.read_only.iter().cloned());
                    // A binary given by path outside the system directories.
                    if let Some(parent) = s.binary.parent().filter(|p| p.is_absolute()) {
                        read_only.push(parent.to_owned());
                    }
                    read_only.extend(_prompt_file.iter().map(|f| f.0.clone()));
                    let spec = super::sandbox::SandboxSpec {
                        workdir: dir,
                        read_only,
                        network: true,
                        drop_caps: false,
                        private_home: true,
                    };
                    let argv = std::iter::once(s.binary.clone().into_os_string()).chain(args);
                    super::sandbox::wrap(&bwrap, &spec, argv)
                }
                None if !s.allow_unsandboxed => {
                    return AttemptOutcome::failed(
                        ErrorClass::Permanent,
                        FailureKind::Config,
                        format!(
                            "agent `{}` runs in the bwrap sandbox, but `bwrap` is not installed: install the Debian package `bubblewrap` (or set `allow_unsandboxed: true` for this agent)",
                            s.name
                        ),
                        out.output(""),
                        started,
                    );
                }
                None => {
                    tracing::warn!(agent = %s.name, "bwrap not found: running the agent without its sandbox");
                    (s.binary.clone().into_os_string(), args)
                }
            },
            _ => (s.binary.clone().into_os_string(), args),
        };
        let result = process::run(
            ProcessSpec {
                program,
                args,
                workdir,
                env,
                stdin,
                limits: s.limits,
                run_as: None,
                deadline: attempt.deadline.min(started + s.timeout),
                kill_grace: s.kill_grace,
                output_limit: out.limit,
            },
            &attempt.cancel,
        )
        .await;
        let stdout = result.stdout.finish(&out.redactor).text;
        let stderr = result.stderr.finish(&out.redactor).text;
        let binary = s.binary.display();
        let exit = match result.ended {
            Ended::Exited(status) => status,
            Ended::TimedOut => {
                return AttemptOutcome::failed(
                    ErrorClass::Transient,
                    FailureKind::Timeout,
                    format!(
                        "`{binary}` timed out after {:.0} s; its process group was terminated",
                        started.elapsed().as_secs_f64()
                    ),
                    out.output(&join(&stdout, &stderr)),
                    started,
                );
            }
            Ended::Cancelled => {
                return AttemptOutcome::failed(
                    ErrorClass::Permanent,
                    FailureKind::Cancelled,
                    "cancelled: the agent's process group was terminated",
                    out.output(&join(&stdout, &stderr)),
                    started,
                );
            }
            Ended::SpawnFailed(e) => {
                let (class, kind) = if e.kind() == std::io::ErrorKind::NotFound {
                    (ErrorClass::Permanent, FailureKind::Config)
                } else {
                    (ErrorClass::Transient, FailureKind::Agent)
                };
                return AttemptOutcome::failed(
                    class,
                    kind,
                    format!(
                        "cannot run `{binary}` for agent `{}`: {e}; install it or set `binary:` in the agent's configuration",
                        s.name
                    ),
                    out.output(""),
                    started,
                );
            }
        };

        if s.flavor == CliFlavor::Claude {
            return self.claude_outcome(exit.code(), &stdout, &stderr, started);
        }
        let text = join(&stdout, &stderr);
        let mut answer = stdout.clone();
        // Goose's final output (a recipe with a response schema) becomes
        // the last fenced json block, where the verdict reader looks.
        if s.flavor == CliFlavor::Goose
            && attempt.with.contains_key("json_schema")
            && let Some(v) = goose_final_output(&stdout)
        {
            answer = format!("{}\n\n```json\n{v}\n```\n", stdout.trim_end());
        }
        let mut outcome = if exit.success() {
            AttemptOutcome::success(out.output(&answer), started)
        } else {
            let how = match exit.code() {
                Some(code) => format!("exited with status {code}"),
                None => "was killed by a signal".to_owned(),
            };
            AttemptOutcome::failed(
                classify(&text),
                FailureKind::Agent,
                out.message(&format!(
                    "`{binary}` {how}: {}",
                    last_line(&stderr, &stdout)
                )),
                out.output(&text),
                started,
            )
        };
        if s.flavor == CliFlavor::Aider {
            outcome.usage = aider_usage(&stdout);
        }
        outcome
    }

    async fn health(&self) -> Health {
        let started = Instant::now();
        let path = (self.lookup)("PATH");
        let found = process::find_program(&self.settings.binary.to_string_lossy(), path.as_deref());
        Health {
            reachable: found.is_some(),
            latency: started.elapsed(),
            detail: match found {
                Some(p) => format!(
                    "{} found at {}",
                    self.settings.flavor.default_binary(),
                    p.display()
                ),
                None => format!(
                    "`{}` not found in PATH; install it or set `binary:`",
                    self.settings.binary.display()
                ),
            },
        }
    }
}

impl CliAgent {
    fn claude_outcome(
        &self,
        code: Option<i32>,
        stdout: &str,
        stderr: &str,
        started: Instant,
    ) -> AttemptOutcome {
        let out = &self.settings.output;
        let parsed = serde_json::from_str::<ClaudeResult>(stdout.trim())
            .ok()
            .or_else(|| {
                stdout
                    .lines()
                    .rev()
                    .filter(|l| l.trim_start().starts_with('{'))
                    .find_map(|l| serde_json::from_str::<ClaudeResult>(l).ok())
            });
        let Some(result) = parsed else {
            let text = join(stdout, stderr);
            return AttemptOutcome::failed(
                classify(&text),
                if code == Some(0) {
                    FailureKind::Protocol
                } else {
                    FailureKind::Agent
                },
                out.message(&format!(
                    "`claude` {} without its JSON result (is `--output-format json` supported by this version?): {}",
                    match code {
                        Some(c) => format!("exited with status {c}"),
                        None => "was killed by a signal".into(),
                    },
                    last_line(stderr, stdout)
                )),
                out.output(&text),
                started,
            );
        };
        let mut answer = result.result.clone().unwrap_or_default();
        // The structured answer becomes the last fenced json block, where
        // the verdict reader looks (`crate::verdict`).
        if let Some(structured) = &result.structured_output
            && !result.is_error
        {
            answer = format!(
                "{}\n\n```json\n{}\n```\n",
                answer.trim_end(),
                serde_json::to_string(structured).unwrap_or_default()
            );
        }
        let mut outcome = if !result.is_error && code == Some(0) {
            AttemptOutcome::success(out.output(&answer), started)
        } else {
            let subtype = result.subtype.as_deref().unwrap_or("error");
            let class = if subtype == "error_max_turns" {
                ErrorClass::Permanent
            } else {
                classify(&format!("{answer}\n{stderr}"))
            };
            AttemptOutcome::failed(
                class,
                FailureKind::Agent,
                out.message(&format!(
                    "Claude Code reported an error ({subtype}): {}",
                    last_line(&answer, stderr)
                )),
                out.output(&join(&answer, stderr)),
                started,
            )
        };
        outcome.usage = Usage {
            cost_usd: result.total_cost_usd,
            input_tokens: result.usage.as_ref().and_then(|u| u.input_tokens),
            output_tokens: result.usage.as_ref().and_then(|u| u.output_tokens),
            turns: result.num_turns,
        };
        outcome
    }
}

fn join(stdout: &str, stderr: &str) -> String {
    match (stdout.is_empty(), stderr.is_empty()) {
        (_, true) => stdout.to_owned(),
        (true, false) => stderr.to_owned(),
        (false, false) => format!("{}\n{stderr}", stdout.trim_end_matches('\n')),
    }
}

/// The last non-empty line of `first`, else of `second`, for messages.
fn last_line<'a>(first: &'a str, second: &'a str) -> &'a str {
    [first, second]
        .iter()
        .find_map(|t| t.lines().rev().find(|l| !l.trim().is_empty()))
        .unwrap_or("(no output)")
        .trim()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aider_cost_line() {
        let usage = aider_usage(
            "Edited foo.rs\n\nTokens: 2.1k sent, 150 received. Cost: $0.0081 message, $0.0243 session.\n",
        );
        assert_eq!(usage.input_tokens, Some(2100));
        assert_eq!(usage.output_tokens, Some(150));
        assert_eq!(usage.cost_usd, Some(0.0243));
    }

    #[test]
    fn transient_hints() {
        assert_eq!(classify("API Error: 529 Overloaded"), ErrorClass::Transient);
        assert_eq!(classify("Invalid API key"), ErrorClass::Permanent);
    }
}
