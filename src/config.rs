//! Settings, from flags and environment variables (clap, `env` feature).
//!
//! Every setting is both a flag and an environment variable, and may be given
//! before or after the subcommand. Secrets are parsed straight into `secrecy`
//! types and their environment values are hidden from `--help`.

use std::net::IpAddr;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

use crate::webhook::WebhookSecrets;

/// The command line.
#[derive(Debug, Parser)]
#[command(
    name = "taskmaster",
    version,
    about = "A GitHub App that runs durable, multi-step AI-agent workflows on pull requests and issues"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub settings: Settings,
}

/// What to do. With no subcommand, `serve`.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the service: webhook intake, dispatcher, API (the default).
    Serve,
    /// Create or upgrade the database schema, then exit.
    Migrate,
    /// Check workflow definitions: print every error (file:line:column) and
    /// exit non-zero if there is any.
    Validate {
        /// The folder of workflow `.yml` files.
        #[arg(default_value = "workflows")]
        dir: std::path::PathBuf,
    },
    /// Run one workflow locally on an event payload, to completion, printing
    /// each step's progress and the outcome (exit status 0 when it succeeded).
    Run {
        /// The workflow's name (see `taskmaster validate`).
        workflow: String,
        /// The event payload, a JSON file as GitHub would send it.
        #[arg(long)]
        event: std::path::PathBuf,
        /// The event's name (`X-GitHub-Event`).
        #[arg(long, default_value = "pull_request")]
        event_name: String,
        /// The delivery id to record the run under. Running again with the
        /// same id carries on (or shows) that run instead of starting another.
        #[arg(long)]
        delivery: Option<String>,
    },
    /// Check the set-up end to end — webhook secret, configuration and
    /// workflows, database, GitHub App and its webhook URL, `PUBLIC_URL`,
    /// each agent, git, bubblewrap, disk — and say what is wrong and how to
    /// fix it. Changes nothing; exit status 1 when a check fails.
    Doctor,
    /// Send a payload file to a running service as GitHub would: signed
    /// with the configured webhook secret, under a fresh delivery id. Prints
    /// the answer; exit status 1 unless it was accepted (2xx).
    Deliver {
        /// The payload, a JSON file as GitHub sends it (e.g. a fixture).
        payload: std::path::PathBuf,
        /// The event name (`X-GitHub-Event`); by default the file name's
        /// first part (`pull_request.opened.json` → `pull_request`).
        #[arg(long)]
        event: Option<String>,
        /// The webhook URL; by default this machine's service on `PORT`.
        #[arg(long)]
        url: Option<String>,
    },
    /// Register the GitHub App from a manifest: print the manifest for
    /// `PUBLIC_URL` (paste it into GitHub's "register from manifest" form),
    /// or, with `--code`, exchange the code GitHub returned for the App's
    /// credentials and write them to `github-app.env` and `github-app.pem`.
    AppManifest {
        /// The App's name on GitHub (unique across GitHub).
        #[arg(long, default_value = "taskmaster")]
        name: String,
        /// The code from the redirect after registering (valid one hour).
        #[arg(long)]
        code: Option<String>,
        /// Where to write the credentials.
        #[arg(long, default_value = ".")]
        out: std::path::PathBuf,
    },
    /// Delete what is past retention (`--keep-*-days`) now, in small
    /// batches, and give the space back to the file system; print what went
    /// and the database's size before and after.
    Prune {
        /// Only count what would be deleted; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Manage API tokens of the operator API (`Authorization: Bearer …`).
    Token {
        #[command(subcommand)]
        action: TokenCommand,
    },
}

/// `taskmaster token …`.
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a token and print it once (only its hash is stored).
    Create {
        /// `admin` (everything, tokens), `developer` (tasks, validations,
        /// workflows), `operator` (execute, pause, resume, cancel, retry) or
        /// `viewer` (read only).
        #[arg(long)]
        role: crate::store::Role,
        /// A unique name, shown in the audit log (default: generated).
        #[arg(long)]
        name: Option<String>,
        /// Refuse the token after this many days (default: never).
        #[arg(long, value_parser = clap::value_parser!(i64).range(1..=3650))]
        expires_in_days: Option<i64>,
        /// Let the token act on this repository (`owner/name`) only; repeat
        /// for several (default: every repository; not for admin tokens).
        #[arg(long = "repository")]
        repositories: Vec<String>,
    },
    /// Revoke a token by name: it is refused from then on.
    Revoke {
        /// The token's name (see `taskmaster token list`).
        name: String,
    },
    /// List tokens (names, roles, use; never the tokens themselves).
    List,
}

/// Whether runs get a checkout of their commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum WorkspaceMode {
    /// Each run gets a checkout of its exact commit (the default).
    Checkout,
    /// Each run gets an empty directory under the data directory.
    Off,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable, coloured when on a terminal.
    Pretty,
    /// One JSON object per line, for log collectors.
    Json,
}

/// Settings shared by every subcommand.
#[derive(Debug, Clone, clap::Args)]
pub struct Settings {
    /// Address to listen on.
    #[arg(long, env = "HOST", default_value = "0.0.0.0", global = true)]
    pub host: IpAddr,

    /// Port to listen on (0 picks a free one).
    #[arg(long, env = "PORT", default_value_t = 3000, global = true)]
    pub port: u16,

    /// Database: `sqlite://FILE` (created if absent; one process), or
    /// `postgres://USER:PASSWORD@HOST:PORT/DATABASE` (several replicas may
    /// share it).
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "sqlite://taskmaster.db",
        hide_env_values = true,
        global = true
    )]
    pub database_url: String,

    /// Webhook secret of the GitHub App; several, comma-separated, are all
    /// accepted (for rotation). Required by `serve`.
    #[arg(
        long = "webhook-secret",
        env = "GITHUB_WEBHOOK_SECRET",
        value_parser = WebhookSecrets::parse,
        hide_env_values = true,
        global = true
    )]
    pub webhook_secret: Option<WebhookSecrets>,

    /// Service configuration file (YAML: agents, output limit, redaction),
    /// e.g. `taskmaster.yml`. Without it the built-in agents are used.
    #[arg(long = "config", env = "TASKMASTER_CONFIG", global = true)]
    pub config: Option<std::path::PathBuf>,

    /// Log format.
    #[arg(
        long,
        env = "LOG_FORMAT",
        value_enum,
        default_value = "pretty",
        global = true
    )]
    pub log_format: LogFormat,

    /// Folder of workflow definitions loaded by `serve`; the service refuses
    /// to start if any of them is invalid.
    #[arg(
        long,
        env = "TASKMASTER_WORKFLOWS",
        default_value = "workflows",
        global = true
    )]
    pub workflows: std::path::PathBuf,

    /// PostgreSQL only: most connections in this process's pool (at least
    /// 2; plus one for `LISTEN`; an exclusive job held, such as the outbox,
    /// keeps one of the pool's). Size the server's `max_connections` for
    /// every replica together.
    #[arg(
        long = "pg-max-connections",
        env = "TASKMASTER_PG_MAX_CONNECTIONS",
        default_value_t = 10,
        global = true
    )]
    pub pg_max_connections: u32,

    /// PostgreSQL only: connections kept open while idle.
    #[arg(
        long = "pg-min-connections",
        env = "TASKMASTER_PG_MIN_CONNECTIONS",
        default_value_t = 1,
        global = true
    )]
    pub pg_min_connections: u32,

    /// PostgreSQL only: how long, in milliseconds, a query waits for a free
    /// pool connection before it fails.
    #[arg(
        long = "pg-acquire-timeout-ms",
        env = "TASKMASTER_PG_ACQUIRE_TIMEOUT_MS",
        default_value = "10000",
        value_parser = parse_millis,
        value_name = "MS",
        global = true
    )]
    pub pg_acquire_timeout: Duration,

    /// Steps in flight at once, over every run and agent.
    #[arg(
        long,
        env = "TASKMASTER_MAX_IN_FLIGHT",
        default_value_t = 64,
        global = true
    )]
    pub max_in_flight: usize,

    /// Lease of a running step, in milliseconds; renewed every third. A
    /// worker that stops renewing loses its step to the reaper after this.
    #[arg(
        long = "lease-ms",
        env = "TASKMASTER_LEASE_MS",
        default_value = "30000",
        value_parser = parse_millis,
        value_name = "MS",
        global = true
    )]
    pub lease: Duration,

    /// The service's public base URL (`https://taskmaster.example.com`): a
    /// run's check run links to `{PUBLIC_URL}/runs/{id}` as its Details. No
    /// link when unset.
    #[arg(long = "public-url", env = "PUBLIC_URL", global = true)]
    pub public_url: Option<String>,

    /// GitHub's web site (`https://github.com`, or a GitHub Enterprise
    /// Server's address): where the App is registered from the set-up page
    /// and where dashboard sign-in sends the browser.
    #[arg(
        long = "github-web-url",
        env = "GITHUB_WEB_URL",
        default_value = "https://github.com",
        global = true
    )]
    pub github_web_url: String,

    /// A request's headers must arrive within this many milliseconds, or its
    /// connection is closed (slow clients cannot hold connections).
    #[arg(
        long = "header-timeout-ms",
        env = "TASKMASTER_HEADER_TIMEOUT_MS",
        default_value = "10000",
        value_parser = parse_millis,
        value_name = "MS",
        global = true
    )]
    pub header_timeout: Duration,

    /// A request's body must arrive within this many milliseconds (else 408).
    #[arg(
        long = "body-timeout-ms",
        env = "TASKMASTER_BODY_TIMEOUT_MS",
        default_value = "30000",
        value_parser = parse_millis,
        value_name = "MS",
        global = true
    )]
    pub body_timeout: Duration,

    /// Open connections at most: when all are taken, the oldest one still
    /// reading its request is closed; when all are busy, more wait in the
    /// kernel's backlog.
    #[arg(
        long,
        env = "TASKMASTER_MAX_CONNECTIONS",
        default_value_t = 4096,
        global = true
    )]
    pub max_connections: usize,

    /// Webhook requests handled at once at most; more are answered 503.
    #[arg(
        long,
        env = "TASKMASTER_MAX_WEBHOOKS_IN_FLIGHT",
        default_value_t = 512,
        global = true
    )]
    pub max_webhooks_in_flight: usize,

    /// Bytes of request bodies held at once at most (at least 25 MiB, one
    /// largest payload); when they run out, the oldest slow reader is closed.
    #[arg(
        long,
        env = "TASKMASTER_MAX_BODY_BYTES",
        default_value_t = 64 * 1024 * 1024,
        global = true
    )]
    pub max_body_bytes: usize,

    /// At most one GitHub update of a run per this many milliseconds (the
    /// outbox coalesces changes in between; a finished run is sent at once).
    #[arg(
        long = "report-interval-ms",
        env = "TASKMASTER_REPORT_INTERVAL_MS",
        default_value = "3000",
        value_parser = parse_millis,
        value_name = "MS",
        global = true
    )]
    pub report_interval: Duration,

    /// How often the outbox looks for runs to report when no hint wakes it,
    /// in milliseconds.
    #[arg(
        long = "outbox-poll-ms",
        env = "TASKMASTER_OUTBOX_POLL_MS",
        default_value = "2000",
        value_parser = parse_millis,
        value_name = "MS",
        global = true
    )]
    pub outbox_poll: Duration,

    /// How often, in milliseconds, to ask GitHub for failed webhook deliveries
    /// missing from the inbox and have them redelivered (with App
    /// credentials only; a pass also runs at start-up).
    #[arg(
        long = "redelivery-interval-ms",
        env = "TASKMASTER_REDELIVERY_INTERVAL_MS",
        default_value = "300000",
        value_parser = parse_millis,
        value_name = "MS",
        global = true
    )]
    pub redelivery_interval: Duration,

    /// The App's slug (the name in `https://github.com/apps/<slug>`): comments
    /// may address commands as `@<slug> retry`, and `<slug>[bot]` is the
    /// App's own account, whose comments never run commands.
    #[arg(
        long,
        env = "GITHUB_APP_SLUG",
        default_value = "taskmaster",
        global = true
    )]
    pub app_slug: String,

    /// How long, in milliseconds, a repository's `.github/taskmaster.yml` is
    /// used before it is fetched again (a push to the default branch that
    /// touches it drops it at once).
    #[arg(
        long = "repo-config-ttl-ms",
        env = "TASKMASTER_REPO_CONFIG_TTL_MS",
        default_value = "300000",
        value_parser = parse_millis,
        value_name = "MS",
        global = true
    )]
    pub repo_config_ttl: Duration,

    /// How long, in milliseconds, a user's permission on a repository (from
    /// GitHub's collaborator-permission API) is trusted before it is asked again.
    #[arg(
        long = "permission-ttl-ms",
        env = "TASKMASTER_PERMISSION_TTL_MS",
        default_value = "60000",
        value_parser = parse_millis,
        value_name = "MS",
        global = true
    )]
    pub permission_ttl: Duration,

    /// Serve `GET /api/metrics` without a token. When false, Prometheus must
    /// send an API token (any role).
    #[arg(
        long,
        env = "TASKMASTER_METRICS_PUBLIC",
        default_value_t = false,
        action = clap::ArgAction::Set,
        global = true
    )]
    pub metrics_public: bool,

    /// Serve the dashboard's pages (runs, agents, deliveries, tasks) without
    /// logging in, e.g. so check-run Details links work for everyone on an
    /// open-source project. Controls always need a login (operator role).
    #[arg(
        long,
        env = "TASKMASTER_DASHBOARD_PUBLIC",
        default_value_t = false,
        action = clap::ArgAction::Set,
        global = true
    )]
    pub dashboard_public: bool,

    /// The key that signs dashboard session cookies and CSRF tokens (any
    /// long random text, e.g. `openssl rand -hex 32`). Unset: a random key
    /// per process, so sessions end on restart; set it when several
    /// replicas serve the dashboard.
    #[arg(
        long,
        env = "TASKMASTER_SESSION_KEY",
        value_parser = parse_session_key,
        hide_env_values = true,
        global = true
    )]
    pub session_key: Option<crate::dashboard::SessionKey>,

    /// Where taskmaster keeps repository mirrors and run workspaces (never
    /// the service's working directory). Created if absent, owner-only.
    #[arg(
        long = "data-dir",
        env = "TASKMASTER_DATA_DIR",
        default_value = "./taskmaster-data",
        global = true
    )]
    pub data_dir: std::path::PathBuf,

    /// Workspaces: `checkout` gives every run a checkout of its commit;
    /// `off` gives steps an empty per-run directory instead (for agents that
    /// fetch code themselves, such as Codegen, or for trying workflows that
    /// need no code).
    #[arg(
        long = "workspaces",
        env = "TASKMASTER_WORKSPACES",
        value_enum,
        default_value = "checkout",
        global = true
    )]
    pub workspaces: WorkspaceMode,

    /// Base URL of the git remote: repositories are fetched from
    /// `{GITHUB_GIT_URL}/{owner}/{name}.git` (for GitHub Enterprise, its host).
    #[arg(
        long = "git-url",
        env = "GITHUB_GIT_URL",
        default_value = "https://github.com",
        global = true
    )]
    pub git_url: String,

    /// Keep a failed run's workspace this many hours for debugging (0:
    /// removed when the run ends, like every other).
    #[arg(
        long = "keep-failed-workspaces",
        env = "TASKMASTER_KEEP_FAILED_WORKSPACES",
        default_value_t = 0,
        global = true
    )]
    pub keep_failed_workspaces_hours: u64,

    /// Refuse to make a workspace while the data directory's disk has less
    /// free space than this many megabytes (10^6 bytes).
    #[arg(
        long = "min-free-disk-mb",
        env = "TASKMASTER_MIN_FREE_DISK_MB",
        default_value_t = 1024,
        global = true
    )]
    pub min_free_disk_mb: u64,

    /// A checkout larger than this many megabytes (work tree, without
    /// `.git`) fails its step.
    #[arg(
        long = "max-workspace-mb",
        env = "TASKMASTER_MAX_WORKSPACE_MB",
        default_value_t = 2048,
        global = true
    )]
    pub max_workspace_mb: u64,

    /// Mirrors no run has used for this many days are removed.
    #[arg(
        long = "mirror-ttl-days",
        env = "TASKMASTER_MIRROR_TTL_DAYS",
        default_value_t = 14,
        global = true
    )]
    pub mirror_ttl_days: u64,

    /// `pr.diff` in prompts is cut at this many bytes, with a note naming
    /// the files left out.
    #[arg(
        long = "diff-limit-bytes",
        env = "TASKMASTER_DIFF_LIMIT_BYTES",
        default_value_t = 100_000,
        global = true
    )]
    pub diff_limit_bytes: usize,

    /// A change of more files than this is refused before anything is sent
    /// to GitHub.
    #[arg(
        long = "max-change-files",
        env = "TASKMASTER_MAX_CHANGE_FILES",
        default_value_t = 300,
        global = true
    )]
    pub max_change_files: usize,

    /// A change writing more than this many bytes of file contents is
    /// refused before anything is sent to GitHub.
    #[arg(
        long = "max-change-bytes",
        env = "TASKMASTER_MAX_CHANGE_BYTES",
        default_value_t = 10_000_000,
        global = true
    )]
    pub max_change_bytes: u64,

    /// Delete deliveries' payloads (and the comments, labels and reactions
    /// they caused, once sent) after this many days; 0 keeps them forever.
    /// Every delivery that is queued, or whose run is still active, is kept.
    #[arg(
        long = "keep-payloads-days",
        env = "TASKMASTER_KEEP_PAYLOADS_DAYS",
        default_value_t = 30,
        global = true
    )]
    pub keep_payloads_days: u32,

    /// Clear finished runs' step outputs and attempt excerpts after this
    /// many days; 0 keeps them forever.
    #[arg(
        long = "keep-outputs-days",
        env = "TASKMASTER_KEEP_OUTPUTS_DAYS",
        default_value_t = 90,
        global = true
    )]
    pub keep_outputs_days: u32,

    /// Delete finished runs' timelines after this many days; 0 keeps them
    /// forever.
    #[arg(
        long = "keep-events-days",
        env = "TASKMASTER_KEEP_EVENTS_DAYS",
        default_value_t = 365,
        global = true
    )]
    pub keep_events_days: u32,

    /// Delete finished runs (steps, attempts, reports) and deliveries'
    /// rows after this many days; 0 keeps them forever.
    #[arg(
        long = "keep-runs-days",
        env = "TASKMASTER_KEEP_RUNS_DAYS",
        default_value_t = 365,
        global = true
    )]
    pub keep_runs_days: u32,

    /// Delete audit-log entries after this many days; 0 (the default)
    /// keeps them forever.
    #[arg(
        long = "keep-audit-days",
        env = "TASKMASTER_KEEP_AUDIT_DAYS",
        default_value_t = 0,
        global = true
    )]
    pub keep_audit_days: u32,

    /// Loop breaker: at most this many runs start on one pull request or
    /// issue in any hour (further events on it start nothing, saying why);
    /// 0 turns the limit off. The App's own account never starts runs.
    #[arg(
        long = "max-runs-per-subject-per-hour",
        env = "TASKMASTER_MAX_RUNS_PER_SUBJECT_PER_HOUR",
        default_value_t = 30,
        global = true
    )]
    pub max_runs_per_subject_per_hour: u32,

    /// Prune what is past retention every this many minutes while serving
    /// (`taskmaster prune` does it by hand); 0 turns the pruner off.
    #[arg(
        long = "prune-interval-minutes",
        env = "TASKMASTER_PRUNE_INTERVAL_MINUTES",
        default_value_t = 60,
        global = true
    )]
    pub prune_interval_minutes: u64,

    /// Log filter, in tracing's `RUST_LOG` syntax (e.g. `info,taskmaster=debug`).
    #[arg(long = "log", env = "RUST_LOG", default_value = "info", global = true)]
    pub log_filter: String,
}

/// A span given in milliseconds (a `*_MS` variable, a `--*-ms` flag): the
/// settings name their unit outside, and hold a [`Duration`] inside.
fn parse_millis(s: &str) -> Result<Duration, String> {
    s.trim()
        .parse::<u64>()
        .map(Duration::from_millis)
        .map_err(|e| format!("`{s}` is not a whole number of milliseconds: {e}"))
}

fn parse_session_key(s: &str) -> Result<crate::dashboard::SessionKey, String> {
    if s.len() < 16 {
        return Err(
            "the session key must be at least 16 characters (try `openssl rand -hex 32`)".into(),
        );
    }
    Ok(crate::dashboard::SessionKey::from_secret(s))
}

/// The message printed when `serve` starts without a webhook secret.
pub const MISSING_SECRET_HELP: &str = "no webhook secret configured: set GITHUB_WEBHOOK_SECRET \
(or pass --webhook-secret) to the secret you entered in your GitHub App's webhook settings; \
several secrets may be given, separated by commas, to rotate without losing deliveries";

impl Settings {
    /// The PostgreSQL pool settings from these flags.
    /// How long records are kept (`--keep-*-days`; 0 is forever).
    pub fn retention(&self) -> crate::store::RetentionSettings {
        let days = |d: u32| (d > 0).then_some(d);
        crate::store::RetentionSettings {
            payloads_days: days(self.keep_payloads_days),
            outputs_days: days(self.keep_outputs_days),
            events_days: days(self.keep_events_days),
            runs_days: days(self.keep_runs_days),
            audit_days: days(self.keep_audit_days),
        }
    }

    pub fn pool_settings(&self) -> crate::store::PoolSettings {
        crate::store::PoolSettings {
            max_connections: self.pg_max_connections.max(2),
            min_connections: self.pg_min_connections.min(self.pg_max_connections),
            acquire_timeout: self.pg_acquire_timeout.max(Duration::from_millis(1)),
        }
    }

    /// The engine's settings from these flags (the rest at their defaults).
    pub fn engine_config(&self) -> crate::engine::EngineConfig {
        crate::engine::EngineConfig {
            max_in_flight: self.max_in_flight.max(1),
            lease: self.lease.max(Duration::from_millis(300)),
            ..crate::engine::EngineConfig::default()
        }
    }
}

impl Settings {
    /// The workspace settings from these flags.
    pub fn workspace_settings(&self) -> crate::workspace::WorkspaceSettings {
        const MB: u64 = 1_000_000;
        let mut ws = crate::workspace::WorkspaceSettings::new(&self.data_dir);
        ws.git_url = self.git_url.trim().trim_end_matches('/').to_owned();
        ws.keep_failed = std::time::Duration::from_secs(self.keep_failed_workspaces_hours * 3600);
        ws.min_free_bytes = self.min_free_disk_mb.saturating_mul(MB);
        ws.max_workspace_bytes = self.max_workspace_mb.saturating_mul(MB);
        ws.mirror_ttl = std::time::Duration::from_secs(self.mirror_ttl_days * 24 * 3600);
        ws.diff_limit_bytes = self.diff_limit_bytes.max(1_000);
        ws.change_limits.max_files = self.max_change_files;
        ws.change_limits.max_bytes = self.max_change_bytes;
        ws.checkout = self.workspaces == WorkspaceMode::Checkout;
        ws
    }

    /// The report outbox's settings from these flags (the rest at their defaults).
    pub fn outbox_config(&self) -> crate::outbox::OutboxConfig {
        crate::outbox::OutboxConfig {
            poll: self.outbox_poll.max(Duration::from_millis(10)),
            min_interval: self.report_interval,
            public_url: self
                .public_url
                .as_deref()
                .map(str::trim)
                .filter(|u| !u.is_empty())
                .map(|u| u.trim_end_matches('/').to_owned()),
            ..crate::outbox::OutboxConfig::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_global_flags() {
        let cli = Cli::try_parse_from(["taskmaster", "migrate", "--port", "4000"]).unwrap();
        assert!(matches!(cli.command, Some(Command::Migrate)));
        assert_eq!(cli.settings.port, 4000);
        assert_eq!(cli.settings.host.to_string(), "0.0.0.0");
        assert_eq!(cli.settings.log_format, LogFormat::Pretty);
    }

    #[test]
    fn spans_are_given_in_milliseconds_and_held_as_durations() {
        let cli = Cli::try_parse_from(["taskmaster", "serve"]).unwrap();
        assert_eq!(cli.settings.lease, Duration::from_secs(30));
        assert_eq!(cli.settings.repo_config_ttl, Duration::from_secs(300));
        let cli = Cli::try_parse_from(["taskmaster", "serve", "--lease-ms", "1500"]).unwrap();
        assert_eq!(cli.settings.lease, Duration::from_millis(1500));
        assert_eq!(
            cli.settings.engine_config().lease,
            Duration::from_millis(1500)
        );
        let err = Cli::try_parse_from(["taskmaster", "serve", "--lease-ms", "30s"]).unwrap_err();
        assert!(
            err.to_string()
                .contains("`30s` is not a whole number of milliseconds"),
            "{err}"
        );
    }

    #[test]
    fn secrets_never_show_in_debug() {
        let cli = Cli::try_parse_from(["taskmaster", "--webhook-secret", "s3cr3t-one,s3cr3t-two"])
            .unwrap();
        let shown = format!("{cli:?}");
        assert!(!shown.contains("s3cr3t"), "{shown}");
        assert_eq!(cli.settings.webhook_secret.unwrap().len(), 2);
    }
}
