//! The `command` agent: a plain program (tests, a linter, a scanner) run in a
//! working directory under a named security policy.
//!
//! A command step runs code from the repository under review, so it is
//! treated as hostile:
//!
//! * **No shell** unless the step asks for one (`shell: true`): the argv is
//!   given as a list and passed to `execve` as is, so nothing in it is ever
//!   interpreted.
//! * **A clean environment** ([`super::env`]): an allow-list, never a GitHub
//!   credential.
//! * **A deadline**: at the attempt's deadline (or on cancel) the whole
//!   process group gets `SIGTERM`, then `SIGKILL` after a grace period.
//! * **Resource limits** set with `setrlimit` between fork and exec: CPU
//!   seconds (`RLIMIT_CPU`), address space in bytes (`RLIMIT_AS`), open files
//!   (`RLIMIT_NOFILE`) and processes of the user (`RLIMIT_NPROC`; not
//!   enforced by the kernel for root, so set `run_as` when taskmaster runs as
//!   root). A [`Policy`] names a set of limits.
//! * **A sandbox** for `hardened` and `paranoid`: the command runs under
//!   `bwrap` (bubblewrap, Debian package `bubblewrap`) in new namespaces
//!   *without network*, seeing the system directories read-only, the
//!   working directory (the run's workspace) read-write, the mirror it
//!   borrows objects from read-only, and a private `/tmp`, `/proc` and
//!   `/dev`: nothing of the data directory, the database or the service's
//!   working directory. When `bwrap` is missing the step **fails** with a
//!   message naming the package, unless the agent's configuration sets
//!   `allow_unsandboxed: true`; then it runs, and the first line of its
//!   output says plainly that it ran without the sandbox.
//! * **Pull-request code** (a workspace at a PR's head) runs at least under
//!   the agent's `untrusted_policy` (default `hardened`); an operator who
//!   wants PR code run without the sandbox sets it to `standard` or
//!   `minimal` for that agent.
//!
//! Step inputs (`with:`):
//!
//! | key | type | meaning |
//! | --- | --- | --- |
//! | `run` (alias `command`) | list of strings, or a string | what to run (required); a string is split on whitespace and run without a shell |
//! | `shell` | bool | run `run` with `/bin/sh -c` instead (only when the step says so) |
//! | `policy` | `minimal`/`standard`/`hardened`/`paranoid` | may only be *stricter* than the agent's |
//! | `env` | map of string to string | extra variables (GitHub credential names refused) |
//!
//! Exit code 0 is success; the output is stdout followed by stderr, each
//! capped, all redacted.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::process::{self, Ended, ProcessSpec};
use super::{
    Agent, AgentKind, AttemptOutcome, AttemptRequest, ErrorClass, FailureKind, Health, OutputPolicy,
};

/// Resource limits for one process (and, for processes, its user). `None`
/// leaves a limit as inherited. Units are in the field names.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourceLimits {
    /// CPU time in seconds (`RLIMIT_CPU`); the kernel sends `SIGXCPU`, then
    /// `SIGKILL`.
    pub cpu_seconds: Option<u64>,
    /// Virtual address space in bytes (`RLIMIT_AS`); allocations beyond it
    /// fail. Runtimes that reserve large address ranges (JVM, Go, some
    /// sanitizers) need generous values.
    pub memory_bytes: Option<u64>,
    /// Open file descriptors (`RLIMIT_NOFILE`).
    pub open_files: Option<u64>,
    /// Processes and threads of the user (`RLIMIT_NPROC`); `fork` fails
    /// beyond it. Not enforced for root.
    pub processes: Option<u64>,
}

impl ResourceLimits {
    /// These limits with every field set in `overrides` replaced.
    pub fn overridden_by(self, overrides: &ResourceLimits) -> Self {
        Self {
            cpu_seconds: overrides.cpu_seconds.or(self.cpu_seconds),
            memory_bytes: overrides.memory_bytes.or(self.memory_bytes),
            open_files: overrides.open_files.or(self.open_files),
            processes: overrides.processes.or(self.processes),
        }
    }
}

/// A user and group to run commands as (numeric ids), set in the child
/// before exec. Needs taskmaster to run as root (or with `CAP_SETUID`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunAs {
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
}

/// A named security policy: a set of [`ResourceLimits`] and whether to use
/// the `bwrap` sandbox. Ordered from the most lenient to the strictest.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Policy {
    /// CPU 1 h, 4096 files; no memory or process limit; no sandbox.
    Minimal,
    /// CPU 30 min, 8 GiB address space, 4096 files, 1024 processes; no
    /// sandbox. The default.
    #[default]
    Standard,
    /// CPU 15 min, 4 GiB, 1024 files, 256 processes; `bwrap` without network.
    Hardened,
    /// CPU 5 min, 2 GiB, 256 files, 64 processes; `bwrap` without network,
    /// all capabilities dropped, home directories hidden.
    Paranoid,
}

const GIB: u64 = 1024 * 1024 * 1024;

impl Policy {
    /// Every policy, most lenient first.
    pub const ALL: [Policy; 4] = [
        Policy::Minimal,
        Policy::Standard,
        Policy::Hardened,
        Policy::Paranoid,
    ];

    /// The policy's name as written in configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            Policy::Minimal => "minimal",
            Policy::Standard => "standard",
            Policy::Hardened => "hardened",
            Policy::Paranoid => "paranoid",
        }
    }

    /// Parses a policy name.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.as_str() == name)
    }

    /// The limits the policy names.
    pub fn limits(self) -> ResourceLimits {
        match self {
            Policy::Minimal => ResourceLimits {
                cpu_seconds: Some(3600),
                memory_bytes: None,
                open_files: Some(4096),
                processes: None,
            },
            Policy::Standard => ResourceLimits {
                cpu_seconds: Some(1800),
                memory_bytes: Some(8 * GIB),
                open_files: Some(4096),
                processes: Some(1024),
            },
            Policy::Hardened => ResourceLimits {
                cpu_seconds: Some(900),
                memory_bytes: Some(4 * GIB),
                open_files: Some(1024),
                processes: Some(256),
            },
            Policy::Paranoid => ResourceLimits {
                cpu_seconds: Some(300),
                memory_bytes: Some(2 * GIB),
                open_files: Some(256),
                processes: Some(64),
            },
        }
    }

    /// Whether the policy runs commands in the `bwrap` sandbox.
    pub fn sandboxed(self) -> bool {
        self >= Policy::Hardened
    }
}

/// Settings of one `command` agent (from the `agents:` section of the
/// service configuration).
#[derive(Debug, Clone)]
pub struct CommandSettings {
    /// The agent's name.
    pub name: String,
    /// The policy; steps may ask for a stricter one.
    pub policy: Policy,
    /// The least strict policy for steps working on a pull request's code
    /// (default `hardened`).
    pub untrusted_policy: Policy,
    /// Run `hardened`/`paranoid` commands without the sandbox when `bwrap`
    /// is missing (default false: such steps fail).
    pub allow_unsandboxed: bool,
    /// Overrides of single limits of the policy.
    pub limits: ResourceLimits,
    /// Run as this user (recommended when taskmaster runs as root).
    pub run_as: Option<RunAs>,
    /// Variables copied from taskmaster's environment, besides the base set.
    pub env_allow: Vec<String>,
    /// Variables set to fixed values.
    pub env: BTreeMap<String, String>,
    /// Working directory when the step gives none.
    pub workdir: Option<PathBuf>,
    /// Longest wall-clock time of one attempt, whatever the deadline.
    pub timeout: Duration,
    /// Time between `SIGTERM` and `SIGKILL` on timeout or cancel.
    pub kill_grace: Duration,
    /// The `bwrap` binary: `None` looks for `bwrap` in `PATH`.
    pub bwrap: Option<PathBuf>,
    /// Extra paths made visible read-only inside the sandbox (toolchains
    /// outside the system directories, e.g. `~/.cargo`).
    pub sandbox_ro_binds: Vec<PathBuf>,
    /// Output cap and redaction.
    pub output: OutputPolicy,
}

impl CommandSettings {
    /// Defaults: `standard` policy, 1 hour timeout, 5 s kill grace.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            policy: Policy::Standard,
            untrusted_policy: Policy::Hardened,
            allow_unsandboxed: false,
            limits: ResourceLimits::default(),
            run_as: None,
            env_allow: Vec::new(),
            env: BTreeMap::new(),
            workdir: None,
            timeout: Duration::from_secs(3600),
            kill_grace: Duration::from_secs(5),
            bwrap: None,
            sandbox_ro_binds: Vec::new(),
            output: OutputPolicy::default(),
        }
    }
}

/// The `command` agent (see the module docs).
#[derive(Debug)]
pub struct CommandAgent {
    settings: CommandSettings,
    lookup: fn(&str) -> Option<String>,
}

/// What a step asked to run, parsed from `with:`.
struct Invocation {
    argv: Vec<String>,
    policy: Policy,
    env: BTreeMap<String, String>,
}

impl CommandAgent {
    /// A command agent with the given settings, reading allowed variables
    /// from taskmaster's environment.
    pub fn new(settings: CommandSettings) -> Self {
        Self {
            settings,
            lookup: super::env::process_lookup,
        }
    }

    /// Replaces how taskmaster's own environment is read (for tests: the
    /// allow-list is then checked against a known environment).
    pub fn with_env_lookup(mut self, lookup: fn(&str) -> Option<String>) -> Self {
        self.lookup = lookup;
        self
    }

    fn parse(
        &self,
        with: &serde_json::Map<String, serde_json::Value>,
        untrusted: bool,
    ) -> Result<Invocation, String> {
        let floor = if untrusted {
            self.settings.policy.max(self.settings.untrusted_policy)
        } else {
            self.settings.policy
        };
        use serde_json::Value;
        let shell = match with.get("shell") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(other) => return Err(format!("`shell` must be true or false, not {other}")),
        };
        // Workflows name the program `run` (as GitHub Actions does); `command`
        // is accepted as an alias.
        let (key, value) = match (with.get("run"), with.get("command")) {
            (Some(_), Some(_)) => {
                return Err("give the program as `run` or as `command`, not both".into());
            }
            (Some(v), None) => ("run", v),
            (None, Some(v)) => ("command", v),
            (None, None) => {
                return Err("missing `run`: give the program and its arguments as a list, e.g. `run: [cargo, test]`".into());
            }
        };
        let argv = match value {
            Value::Array(items) => {
                let argv = items
                    .iter()
                    .map(|v| v.as_str().map(str::to_owned))
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(|| format!("`{key}` must be a list of strings"))?;
                if argv.is_empty() {
                    return Err(format!(
                        "`{key}` is an empty list: give the program and its arguments"
                    ));
                }
                if shell {
                    let mut full = vec!["/bin/sh".to_owned(), "-c".to_owned()];
                    full.push(argv.join(" "));
                    full
                } else {
                    argv
                }
            }
            Value::String(line) if shell => {
                vec!["/bin/sh".to_owned(), "-c".to_owned(), line.clone()]
            }
            // Without `shell`, a string is split on whitespace and run
            // directly: no quoting, no globbing, no `;` or `|` — a shell's
            // metacharacters reach the program as plain arguments.
            Value::String(line) => {
                let argv: Vec<String> = line.split_whitespace().map(str::to_owned).collect();
                if argv.is_empty() {
                    return Err(format!(
                        "`{key}` is empty: give the program and its arguments"
                    ));
                }
                argv
            }
            other => {
                return Err(format!(
                    "`{key}` must be a list of strings or a string, not {other}"
                ));
            }
        };
        let policy = match with.get("policy") {
            None | Some(Value::Null) => floor,
            Some(Value::String(name)) => {
                let asked = Policy::parse(name).ok_or_else(|| {
                    format!("unknown policy `{name}`: use minimal, standard, hardened or paranoid")
                })?;
                if asked < floor {
                    return Err(format!(
                        "the step asks for policy `{}`, more lenient than the agent's `{}`{}: a step may only tighten the policy",
                        asked.as_str(),
                        floor.as_str(),
                        if floor > self.settings.policy {
                            " for pull-request code (`untrusted_policy`)"
                        } else {
                            ""
                        }
                    ));
                }
                asked
            }
            Some(other) => return Err(format!("`policy` must be a string, not {other}")),
        };
        let mut env = BTreeMap::new();
        match with.get("env") {
            None | Some(Value::Null) => {}
            Some(Value::Object(map)) => {
                for (name, value) in map {
                    let value = match value {
                        Value::String(s) => s.clone(),
                        Value::Number(n) => n.to_string(),
                        Value::Bool(b) => b.to_string(),
                        _ => return Err(format!("`env.{name}` must be a string")),
                    };
                    env.insert(name.clone(), value);
                }
            }
            Some(_) => return Err("`env` must be a map of names to strings".into()),
        }
        Ok(Invocation { argv, policy, env })
    }

    fn find_bwrap(&self) -> Option<PathBuf> {
        super::sandbox::find_bwrap(self.settings.bwrap.as_deref())
    }
}

#[async_trait]
impl Agent for CommandAgent {
    fn name(&self) -> &str {
        &self.settings.name
    }

    fn kind(&self) -> AgentKind {
        AgentKind::Command
    }

    async fn run(&self, attempt: AttemptRequest) -> AttemptOutcome {
        let started = Instant::now();
        let out = &self.settings.output;
        let invocation = match self.parse(&attempt.with, attempt.untrusted_checkout) {
            Ok(inv) => inv,
            Err(message) => {
                return AttemptOutcome::failed(
                    ErrorClass::Permanent,
                    FailureKind::Config,
                    out.message(&format!("agent `{}`: {message}", self.settings.name)),
                    out.output(""),
                    started,
                );
            }
        };
        let mut notes = Vec::new();
        let mut set = self.settings.env.clone();
        set.extend(invocation.env);
        set.insert("TASKMASTER_ATTEMPT".into(), attempt.key.to_string());
        let (env, refused) = super::env::build(&self.lookup, &self.settings.env_allow, &set);
        if !refused.is_empty() {
            notes.push(format!(
                "environment variables withheld (GitHub credentials are never given to agents): {}",
                refused.join(", ")
            ));
        }
        let workdir = attempt
            .workdir
            .clone()
            .or_else(|| self.settings.workdir.clone())
            .unwrap_or_else(|| std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/")));
        let policy = invocation.policy;
        let limits = policy.limits().overridden_by(&self.settings.limits);
        // SAFETY: geteuid has no preconditions.
        if limits.processes.is_some()
            && self.settings.run_as.is_none()
            && unsafe { libc::geteuid() } == 0
        {
            tracing::warn!(
                agent = %self.settings.name,
                "running commands as root: the kernel does not enforce the process limit for root; set `run_as` to an unprivileged user"
            );
        }
        let (program, args) = if policy.sandboxed() {
            match self.find_bwrap() {
                Some(bwrap) => {
                    let mut read_only = self.settings.sandbox_ro_binds.clone();
                    read_only.extend(attempt.read_only.iter().cloned());
                    let spec = super::sandbox::SandboxSpec {
                        workdir: &workdir,
                        read_only,
                        network: false,
                        drop_caps: policy == Policy::Paranoid,
                        private_home: false,
                    };
                    super::sandbox::wrap(
                        &bwrap,
                        &spec,
                        invocation.argv.into_iter().map(OsString::from),
                    )
                }
                None if !self.settings.allow_unsandboxed => {
                    return AttemptOutcome::failed(
                        ErrorClass::Permanent,
                        FailureKind::Config,
                        out.message(&format!(
                            "agent `{}`: policy `{}` runs commands in the bwrap sandbox, but `bwrap` is not installed: install the Debian package `bubblewrap` (or set `allow_unsandboxed: true` for this agent to run without it)",
                            self.settings.name,
                            policy.as_str()
                        )),
                        out.output(""),
                        started,
                    );
                }
                None => {
                    notes.push(format!(
                        "SANDBOX UNAVAILABLE: policy `{}` asks for the bwrap sandbox without network, but `bwrap` is not installed (Debian package `bubblewrap`); this command ran WITHOUT the sandbox and WITH network access, under resource limits only",
                        policy.as_str()
                    ));
                    tracing::warn!(agent = %self.settings.name, policy = policy.as_str(), "bwrap not found: running without the sandbox");
                    let mut argv = invocation.argv.into_iter().map(OsString::from);
                    let program = argv.next().unwrap_or_default();
                    (program, argv.collect())
                }
            }
        } else {
            let mut argv = invocation.argv.into_iter().map(OsString::from);
            let program = argv.next().unwrap_or_default();
            (program, argv.collect())
        };
        let deadline = attempt.deadline.min(started + self.settings.timeout);
        let shown_program = program.to_string_lossy().into_owned();
        let result = process::run(
            ProcessSpec {
                program,
                args,
                workdir: Some(workdir),
                env,
                stdin: None,
                limits,
                run_as: self.settings.run_as,
                deadline,
                kill_grace: self.settings.kill_grace,
                output_limit: out.limit,
            },
            &attempt.cancel,
        )
        .await;

        let signal = result.signal();
        let mut text = String::new();
        for note in &notes {
            text.push_str(&format!("[taskmaster] {note}\n"));
        }
        let stdout = result.stdout.finish(&out.redactor);
        let stderr = result.stderr.finish(&out.redactor);
        text.push_str(&stdout.text);
        if !stderr.text.is_empty() {
            if !text.is_empty() && !text.ends_with('\n') {
                text.push('\n');
            }
            text.push_str(&stderr.text);
        }
        // Both halves are already capped; the sum is capped once more.
        let output = out.output(&text);
        let secs = |d: Duration| d.as_secs_f64();
        let (class, kind, message) = match result.ended {
            Ended::Exited(status) if status.success() => {
                return AttemptOutcome::success(output, started);
            }
            Ended::Exited(status) => match (status.code(), signal) {
                (_, Some(libc::SIGXCPU)) => (
                    ErrorClass::Permanent,
                    FailureKind::ResourceLimit,
                    format!(
                        "stopped by the CPU limit ({} s of CPU time, policy `{}`)",
                        limits.cpu_seconds.unwrap_or_default(),
                        policy.as_str()
                    ),
                ),
                (_, Some(sig)) => (
                    ErrorClass::Permanent,
                    FailureKind::Agent,
                    format!("killed by signal {sig}"),
                ),
                (Some(code), None) => (
                    ErrorClass::Permanent,
                    FailureKind::Agent,
                    format!("exited with status {code}"),
                ),
                (None, None) => (
                    ErrorClass::Permanent,
                    FailureKind::Agent,
                    "ended without an exit status".to_owned(),
                ),
            },
            Ended::TimedOut => (
                ErrorClass::Transient,
                FailureKind::Timeout,
                format!(
                    "timed out after {:.1} s: the process group was terminated",
                    secs(started.elapsed())
                ),
            ),
            Ended::Cancelled => (
                ErrorClass::Permanent,
                FailureKind::Cancelled,
                "cancelled: the process group was terminated".to_owned(),
            ),
            Ended::SpawnFailed(e) if e.kind() == std::io::ErrorKind::NotFound => (
                ErrorClass::Permanent,
                FailureKind::Config,
                format!(
                    "cannot run `{shown_program}`: not found (check the program name and the PATH given to agent `{}`)",
                    self.settings.name
                ),
            ),
            Ended::SpawnFailed(e) => (
                ErrorClass::Transient,
                FailureKind::Agent,
                format!("cannot start `{shown_program}`: {e}"),
            ),
        };
        AttemptOutcome::failed(
            class,
            kind,
            out.message(&format!("command {message}")),
            output,
            started,
        )
    }

    async fn health(&self) -> Health {
        let started = Instant::now();
        let wants_sandbox = self.settings.policy.sandboxed();
        let detail = match (wants_sandbox, self.find_bwrap()) {
            (true, None) => format!(
                "policy `{}`: bwrap not installed, commands run without the sandbox",
                self.settings.policy.as_str()
            ),
            (true, Some(path)) => format!(
                "policy `{}`: sandbox {}",
                self.settings.policy.as_str(),
                path.display()
            ),
            (false, _) => format!("policy `{}`", self.settings.policy.as_str()),
        };
        Health {
            reachable: true,
            latency: started.elapsed(),
            detail,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn with(value: serde_json::Value) -> serde_json::Map<String, serde_json::Value> {
        value.as_object().unwrap().clone()
    }

    #[test]
    fn steps_may_only_tighten_the_policy() {
        let mut settings = CommandSettings::new("t");
        settings.policy = Policy::Hardened;
        let agent = CommandAgent::new(settings);
        let err = agent
            .parse(
                &with(json!({"command": ["true"], "policy": "minimal"})),
                false,
            )
            .err()
            .unwrap();
        assert!(err.contains("only tighten"), "{err}");
        let inv = agent
            .parse(
                &with(json!({"command": ["true"], "policy": "paranoid"})),
                false,
            )
            .ok()
            .unwrap();
        assert_eq!(inv.policy, Policy::Paranoid);
    }

    #[test]
    fn pull_request_code_runs_at_least_hardened() {
        let agent = CommandAgent::new(CommandSettings::new("t"));
        let inv = agent
            .parse(&with(json!({"run": ["make"]})), true)
            .ok()
            .unwrap();
        assert_eq!(inv.policy, Policy::Hardened);
        let inv = agent
            .parse(&with(json!({"run": ["make"]})), false)
            .ok()
            .unwrap();
        assert_eq!(inv.policy, Policy::Standard);
        let err = agent
            .parse(&with(json!({"run": ["make"], "policy": "standard"})), true)
            .err()
            .unwrap();
        assert!(err.contains("untrusted_policy"), "{err}");
        let mut settings = CommandSettings::new("t");
        settings.untrusted_policy = Policy::Minimal;
        let lenient = CommandAgent::new(settings);
        let inv = lenient
            .parse(&with(json!({"run": ["make"]})), true)
            .ok()
            .unwrap();
        assert_eq!(inv.policy, Policy::Standard);
    }

    #[test]
    fn a_string_runs_without_a_shell_unless_asked() {
        let agent = CommandAgent::new(CommandSettings::new("t"));
        let inv = agent
            .parse(&with(json!({"run": "ls; rm -rf /"})), false)
            .ok()
            .unwrap();
        // No shell: `;` is just part of an argument to `ls`.
        assert_eq!(inv.argv, ["ls;", "rm", "-rf", "/"]);
        let inv = agent
            .parse(&with(json!({"run": ["make", "test"]})), false)
            .ok()
            .unwrap();
        assert_eq!(inv.argv, ["make", "test"]);
        assert!(agent.parse(&with(json!({"run": "  "})), false).is_err());
        assert!(
            agent
                .parse(&with(json!({"run": ["a"], "command": ["b"]})), false)
                .is_err()
        );
        let inv = agent
            .parse(&with(json!({"command": "echo hi", "shell": true})), false)
            .ok()
            .unwrap();
        assert_eq!(inv.argv, ["/bin/sh", "-c", "echo hi"]);
    }
}
