//! Managed AgentAPI servers: one `agentapi server` per run, in the run's
//! workspace.
//!
//! An AgentAPI server is one agent process holding one conversation, working
//! in the directory it was started in (it has no flag to choose another),
//! with no authentication (`WORKSPACES.md`, "Beyond one machine"). A single
//! long-lived server (`endpoint:`) is therefore one shared terminal for
//! every repository and installation. With `spawn:` instead, taskmaster
//! starts a server for each run the first time one of its steps needs the
//! agent: on a free loopback port, in the run's workspace, with a clean
//! environment (no GitHub credential), inside the bwrap sandbox when
//! `sandbox: true` (network kept so the agent reaches its model; only the
//! workspace and its mirror visible). The run's steps then talk to their own
//! server, one turn at a time ([`AgentApiAgent`]), and the server is stopped
//! (its process group killed) when the run ends ([`Agent::release`]) or the
//! service stops.
//!
//! The port is passed as `--port=<n>` right after the `server` argument
//! (or where the argv has a literal `{port}`). AgentAPI listens on every
//! interface of its port and only checks the `Host` header, so on a shared
//! host keep the ports firewalled (or run the service in its own network
//! namespace or Pod).

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;

use super::agentapi::{AgentApiAgent, AgentApiSettings};
use super::{Agent, AgentKind, AttemptOutcome, AttemptRequest, ErrorClass, FailureKind, Health};

/// Settings of one managed AgentAPI agent.
#[derive(Debug, Clone)]
pub struct ManagedSettings {
    /// The turn settings; `endpoint` is replaced by each run's server.
    pub api: AgentApiSettings,
    /// The server's argv, e.g. `[agentapi, server, --type=claude, --, claude]`.
    pub spawn: Vec<String>,
    /// Variables copied from taskmaster's environment, besides the base set.
    pub env_allow: Vec<String>,
    /// Variables set to fixed values.
    pub env: BTreeMap<String, String>,
    /// Run the server in the bwrap sandbox (with network).
    pub sandbox: bool,
    /// The `bwrap` binary (`None`: from `PATH`).
    pub bwrap: Option<PathBuf>,
    /// Extra read-only paths in the sandbox.
    pub sandbox_ro_binds: Vec<PathBuf>,
    /// With `sandbox`, start without it when `bwrap` is missing.
    pub allow_unsandboxed: bool,
    /// How long a new server may take to answer `GET /status`.
    pub server_startup: Duration,
}

impl ManagedSettings {
    /// Settings that start `spawn` per run, with the turn settings `api`.
    pub fn new(api: AgentApiSettings, spawn: Vec<String>) -> Self {
        Self {
            api,
            spawn,
            env_allow: Vec::new(),
            env: BTreeMap::new(),
            sandbox: false,
            bwrap: None,
            sandbox_ro_binds: Vec::new(),
            allow_unsandboxed: false,
            server_startup: Duration::from_secs(30),
        }
    }
}

/// One run's server.
struct Server {
    agent: AgentApiAgent,
    child: std::sync::Mutex<tokio::process::Child>,
    port: u16,
}

impl Server {
    fn stop(&self) {
        let mut child = self.child.lock().expect("child lock");
        if let Some(pid) = child.id() {
            // SAFETY: signalling the process group we started (setpgid 0).
            unsafe { libc::kill(-(pid as i32), libc::SIGKILL) };
        }
        let _ = child.start_kill();
    }
}

/// The managed AgentAPI agent (see the module docs).
pub struct ManagedAgentApi {
    settings: ManagedSettings,
    lookup: fn(&str) -> Option<String>,
    /// Servers by run id.
    servers: tokio::sync::Mutex<HashMap<String, Arc<Server>>>,
}

impl std::fmt::Debug for ManagedAgentApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ManagedAgentApi")
            .field("name", &self.settings.api.name)
            .field("spawn", &self.settings.spawn)
            .finish_non_exhaustive()
    }
}

impl Drop for ManagedAgentApi {
    fn drop(&mut self) {
        for server in self.servers.get_mut().values() {
            server.stop();
        }
    }
}

impl ManagedAgentApi {
    /// A managed agent reading allowed variables from taskmaster's environment.
    pub fn new(settings: ManagedSettings) -> Self {
        Self {
            settings,
            lookup: super::env::process_lookup,
            servers: tokio::sync::Mutex::new(HashMap::new()),
        }
    }

    /// The port of run `run`'s server, while it runs (for tests and the dashboard).
    pub async fn port_of(&self, run: &str) -> Option<u16> {
        self.servers.lock().await.get(run).map(|s| s.port)
    }

    /// The argv with the port in place.
    fn argv(&self, port: u16) -> Vec<String> {
        let mut argv: Vec<String> = self
            .settings
            .spawn
            .iter()
            .map(|a| a.replace("{port}", &port.to_string()))
            .collect();
        if !self.settings.spawn.iter().any(|a| a.contains("{port}")) {
            let at = argv
                .iter()
                .position(|a| a == "server")
                .map(|i| i + 1)
                .or_else(|| argv.iter().position(|a| a == "--"))
                .unwrap_or(argv.len());
            argv.insert(at, format!("--port={port}"));
        }
        argv
    }

    async fn start(&self, attempt: &AttemptRequest) -> Result<Arc<Server>, (FailureKind, String)> {
        let name = &self.settings.api.name;
        let Some(workdir) = attempt.workdir.clone() else {
            return Err((
                FailureKind::Config,
                format!(
                    "agent `{name}` starts an AgentAPI server per run in the run's workspace, but this run has none (workspaces are off)"
                ),
            ));
        };
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .map_err(|e| (FailureKind::Agent, format!("no free port: {e}")))?;
        let argv = self.argv(port);
        let (program, args): (std::ffi::OsString, Vec<std::ffi::OsString>) = if self
            .settings
            .sandbox
        {
            match super::sandbox::find_bwrap(self.settings.bwrap.as_deref()) {
                Some(bwrap) => {
                    let mut read_only = self.settings.sandbox_ro_binds.clone();
                    read_only.extend(attempt.read_only.iter().cloned());
                    // A server program given by path outside the system directories.
                    if let Some(dir) = std::path::Path::new(&argv[0])
                        .parent()
                        .filter(|p| p.is_absolute())
                    {
                        read_only.push(dir.to_owned());
                    }
                    let spec = super::sandbox::SandboxSpec {
                        workdir: &workdir,
                        read_only,
                        network: true,
                        drop_caps: false,
                        private_home: true,
                    };
                    super::sandbox::wrap(&bwrap, &spec, argv.iter().map(Into::into))
                }
                None if !self.settings.allow_unsandboxed => {
                    return Err((
                        FailureKind::Config,
                        format!(
                            "agent `{name}` runs its AgentAPI server in the bwrap sandbox, but `bwrap` is not installed: install the Debian package `bubblewrap` (or set `allow_unsandboxed: true`)"
                        ),
                    ));
                }
                None => (
                    argv[0].clone().into(),
                    argv[1..].iter().map(Into::into).collect(),
                ),
            }
        } else {
            (
                argv[0].clone().into(),
                argv[1..].iter().map(Into::into).collect(),
            )
        };
        let (env, _refused) =
            super::env::build(&self.lookup, &self.settings.env_allow, &self.settings.env);
        let mut command = tokio::process::Command::new(&program);
        command
            .args(&args)
            .current_dir(&workdir)
            .env_clear()
            .envs(env)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        // SAFETY: prctl is async-signal-safe; the server dies with taskmaster.
        unsafe {
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let mut child = command.spawn().map_err(|e| {
            (
                if e.kind() == std::io::ErrorKind::NotFound {
                    FailureKind::Config
                } else {
                    FailureKind::Agent
                },
                format!(
                    "agent `{name}`: cannot start `{}`: {e}",
                    program.to_string_lossy()
                ),
            )
        })?;
        let mut api = self.settings.api.clone();
        api.endpoint = format!("http://127.0.0.1:{port}");
        let agent = AgentApiAgent::new(api).map_err(|e| (FailureKind::Agent, e.to_string()))?;
        // Wait until it answers `GET /status` (any answer), or it exits.
        let client = super::http_client_builder()
            .build()
            .map_err(|e| (FailureKind::Agent, e.to_string()))?;
        let until = Instant::now() + self.settings.server_startup;
        loop {
            if let Ok(r) = client
                .get(format!("http://127.0.0.1:{port}/status"))
                .timeout(Duration::from_secs(2))
                .send()
                .await
                && r.status().is_success()
            {
                break;
            }
            if let Ok(Some(status)) = child.try_wait() {
                let mut stderr = String::new();
                if let Some(mut err) = child.stderr.take() {
                    use tokio::io::AsyncReadExt;
                    let _ = tokio::time::timeout(
                        Duration::from_secs(1),
                        err.read_to_string(&mut stderr),
                    )
                    .await;
                }
                let tail: String = stderr
                    .chars()
                    .rev()
                    .take(1000)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect();
                return Err((
                    FailureKind::Agent,
                    format!(
                        "agent `{name}`: its AgentAPI server exited ({status}) before answering: {}",
                        tail.trim()
                    ),
                ));
            }
            if Instant::now() > until || attempt.cancel.is_cancelled() {
                let _ = child.start_kill();
                return Err((
                    FailureKind::Timeout,
                    format!(
                        "agent `{name}`: its AgentAPI server did not answer on port {port} within {} s",
                        self.settings.server_startup.as_secs()
                    ),
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tracing::info!(agent = %name, run = %attempt.key.run, port, workdir = %workdir.display(),
            "started the run's AgentAPI server");
        Ok(Arc::new(Server {
            agent,
            child: std::sync::Mutex::new(child),
            port,
        }))
    }
}

#[async_trait]
impl Agent for ManagedAgentApi {
    fn name(&self) -> &str {
        &self.settings.api.name
    }

    fn kind(&self) -> AgentKind {
        AgentKind::Agentapi
    }

    async fn run(&self, attempt: AttemptRequest) -> AttemptOutcome {
        let started = Instant::now();
        let server = {
            let mut servers = self.servers.lock().await;
            let alive = servers
                .get(&attempt.key.run)
                .filter(|s| matches!(s.child.lock().expect("child lock").try_wait(), Ok(None)));
            match alive {
                Some(server) => server.clone(),
                None => match self.start(&attempt).await {
                    Ok(server) => {
                        servers.insert(attempt.key.run.clone(), server.clone());
                        server
                    }
                    Err((kind, message)) => {
                        let class = if kind == FailureKind::Config {
                            ErrorClass::Permanent
                        } else {
                            ErrorClass::Transient
                        };
                        return AttemptOutcome::failed(
                            class,
                            kind,
                            self.settings.api.output.message(&message),
                            self.settings.api.output.output(""),
                            started,
                        );
                    }
                },
            }
        };
        server.agent.run(attempt).await
    }

    async fn health(&self) -> Health {
        let started = Instant::now();
        let program = self.settings.spawn.first().cloned().unwrap_or_default();
        let found = super::process::find_program(&program, None);
        Health {
            reachable: found.is_some(),
            latency: started.elapsed(),
            detail: match found {
                Some(p) => format!(
                    "managed: one AgentAPI server per run ({}), {} running",
                    p.display(),
                    self.servers.lock().await.len()
                ),
                None => format!("managed: `{program}` not found"),
            },
        }
    }

    async fn release(&self, run: &str) {
        if let Some(server) = self.servers.lock().await.remove(run) {
            server.stop();
            tracing::info!(agent = %self.settings.api.name, run, port = server.port,
                "stopped the run's AgentAPI server");
        }
    }
}
