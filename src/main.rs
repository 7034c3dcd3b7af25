//! The `taskmaster` binary: `serve` (the default), `migrate`, `validate` and `run`.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use taskmaster::agent::{AgentRegistry, AgentsConfig, env::process_lookup};
use taskmaster::config::{Cli, Command, MISSING_SECRET_HELP, Settings, TokenCommand};
use taskmaster::control::{AppHandler, AppHandlerConfig, AppIdentity};
use taskmaster::engine::{Engine, Transition};
use taskmaster::github::{self, RetryPolicy};
use taskmaster::outbox::Outbox;
use taskmaster::server::{self, ServerConfig};
use taskmaster::store::RunState;
use taskmaster::workflow::{DEFAULT_AGENTS, WorkflowSet};
use taskmaster::{store, telemetry};
use tokio_util::sync::CancellationToken;

/// mimalloc instead of glibc's malloc: under the PR storm `perf` put 13 % of
/// the server's CPU in glibc's allocator (see `benches/README.md`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    telemetry::init(cli.settings.log_format, &cli.settings.log_filter);
    let result = match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(cli.settings).await,
        Command::Migrate => migrate(cli.settings).await,
        Command::Validate { dir } => validate(&cli.settings, &dir),
        Command::Run {
            workflow,
            event,
            event_name,
            delivery,
        } => run(cli.settings, &workflow, &event, &event_name, delivery).await,
        Command::Token { action } => token(cli.settings, action).await,
        Command::Prune { dry_run } => prune(cli.settings, dry_run).await,
        Command::Doctor => doctor(&cli.settings).await,
        Command::Deliver {
            payload,
            event,
            url,
        } => deliver(&cli.settings, &payload, event, url).await,
        Command::AppManifest { name, code, out } => {
            app_manifest(&cli.settings, &name, code.as_deref(), &out).await
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("taskmaster: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn doctor(settings: &Settings) -> anyhow::Result<()> {
    let report = taskmaster::doctor::diagnose(settings).await;
    print!("{}", report.render());
    if report.failed() {
        anyhow::bail!("some checks failed (see above)");
    }
    Ok(())
}

async fn migrate(settings: Settings) -> anyhow::Result<()> {
    store::connect_runs_with(&settings.database_url, &settings.pool_settings()).await?;
    println!(
        "database {} is up to date",
        store::redact_url(&settings.database_url)
    );
    Ok(())
}

/// `taskmaster prune [--dry-run]`: what is past retention, deleted (or
/// counted), and the database's size before and after.
async fn prune(settings: Settings, dry_run: bool) -> anyhow::Result<()> {
    use taskmaster::store::retention;
    let store = store::connect_runs_with(&settings.database_url, &settings.pool_settings()).await?;
    let retention_settings = settings.retention();
    let cutoffs = retention::Cutoffs::at(&retention_settings, store::now_ms());
    let before = store.database_size().await?;
    let print = |counts: &retention::PruneCounts, verb: &str| {
        for (kind, n) in counts.kinds() {
            let why = retention_settings
                .days_of(kind)
                .map_or("kept forever".to_string(), |d| {
                    format!("older than {d} days")
                });
            println!("{verb} {n:>8} {kind:<10} ({why})");
        }
    };
    if dry_run {
        let counts = store.prunable(&cutoffs).await?;
        print(&counts, "would prune");
        println!(
            "database: {} bytes ({} free)",
            before.bytes, before.free_bytes
        );
        return Ok(());
    }
    let Some(guard) = store.try_exclusive("pruner").await? else {
        anyhow::bail!(
            "another taskmaster process is pruning this database; try again once it is done"
        );
    };
    let counts = retention::prune(&*store, &cutoffs, std::time::Duration::ZERO).await?;
    if store.enable_reclaiming().await? {
        println!("switched the database to incremental vacuum (VACUUM rewrote the file)");
    }
    drop(guard);
    print(&counts, "pruned");
    let after = store.database_size().await?;
    println!(
        "database: {} bytes before, {} bytes after ({} free)",
        before.bytes, after.bytes, after.free_bytes
    );
    Ok(())
}

/// `taskmaster validate [DIR]`: every error on stderr, a summary on stdout.
/// Agent names are checked against the agents `serve` would have (`--config`),
/// so a set that validates here also starts.
fn validate(settings: &Settings, dir: &std::path::Path) -> anyhow::Result<()> {
    let (names, kinds) = agent_names(settings)?;
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    match WorkflowSet::load_dir_for(dir, &names, Some(&kinds)) {
        Ok(set) => {
            println!("{}: {} workflows are valid", dir.display(), set.len());
            for wf in set.iter() {
                println!(
                    "  {} ({} steps{})",
                    wf.name,
                    wf.steps.len(),
                    if wf.enabled { "" } else { ", disabled" }
                );
            }
            Ok(())
        }
        Err(errors) => anyhow::bail!("{errors}"),
    }
}

/// The agents from `--config` and the workflows from `--workflows`, checked
/// against each other. Errors say which file is wrong and how to check it.
/// The agents, the workflows, and the service configuration's `sign_in:`
/// and `insights_report:`.
/// `extra_secrets` (credentials not in the environment, such as a
/// registered App's) are redacted from agents' output too.
fn load_agents_and_workflows(
    settings: &Settings,
    extra_secrets: &[String],
) -> anyhow::Result<(Arc<AgentRegistry>, Arc<WorkflowSet>, ServiceExtras)> {
    let agents_config =
        AgentsConfig::load(settings.config.as_deref(), &process_lookup).map_err(|e| {
            anyhow::anyhow!("refusing to start: the agent configuration is invalid: {e}")
        })?;
    // Secrets the service may hold as flags, not variables: redacted too.
    let mut secrets: Vec<String> = settings
        .webhook_secret
        .iter()
        .flat_map(|s| s.values().map(str::to_owned))
        .collect();
    if let Some(p) = taskmaster::redact::url_password(&settings.database_url) {
        secrets.push(p.to_owned());
    }
    secrets.extend(extra_secrets.iter().cloned());
    let registry = AgentRegistry::with_secrets(&agents_config, &process_lookup, &secrets)
        .map_err(|e| anyhow::anyhow!("refusing to start: cannot build the agents: {e}"))?;
    let names = registry_names(&registry);
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    // Refuse to start on a broken workflow set: better no service than runs
    // that fail one by one in production.
    let kinds = agent_kinds(&agents_config);
    let workflows =
        WorkflowSet::load_dir_for(&settings.workflows, &names, Some(&kinds)).map_err(|e| {
            anyhow::anyhow!(
                "refusing to start: the workflow definitions in {} are invalid \
(check them with `taskmaster validate {}`):\n{e}",
                settings.workflows.display(),
                settings.workflows.display()
            )
        })?;
    tracing::info!(workflows = workflows.len(), dir = %settings.workflows.display(),
        "workflow definitions loaded");
    Ok((
        Arc::new(registry),
        Arc::new(workflows),
        ServiceExtras {
            sign_in: agents_config.sign_in,
            insights_report: agents_config.insights_report,
        },
    ))
}

/// The service configuration's parts beyond agents.
struct ServiceExtras {
    sign_in: taskmaster::dashboard::signin::SignInConfig,
    insights_report: Option<taskmaster::insights::weekly::InsightsReportConfig>,
}

/// The configured agents' names (the built-in ones when none are configured).
fn registry_names(registry: &AgentRegistry) -> Vec<String> {
    let names: Vec<String> = registry.names().map(str::to_owned).collect();
    if names.is_empty() {
        DEFAULT_AGENTS.iter().map(|s| s.to_string()).collect()
    } else {
        names
    }
}

/// Each configured agent's kind, by name (for checking steps' `with:` keys).
fn agent_kinds(
    config: &AgentsConfig,
) -> std::collections::HashMap<String, taskmaster::agent::AgentKind> {
    config
        .agents
        .iter()
        .map(|(name, agent)| (name.clone(), agent.kind))
        .collect()
}

/// The agent names `serve` would check workflows against, from `--config`,
/// and their kinds.
fn agent_names(
    settings: &Settings,
) -> anyhow::Result<(
    Vec<String>,
    std::collections::HashMap<String, taskmaster::agent::AgentKind>,
)> {
    let agents_config = AgentsConfig::load(settings.config.as_deref(), &process_lookup)
        .map_err(|e| anyhow::anyhow!("the agent configuration is invalid: {e}"))?;
    let registry = AgentRegistry::new(&agents_config, &process_lookup)
        .map_err(|e| anyhow::anyhow!("cannot build the agents: {e}"))?;
    Ok((registry_names(&registry), agent_kinds(&agents_config)))
}

/// `taskmaster serve`: the service, until SIGINT or SIGTERM. Without App
/// credentials it offers the set-up page (`/setup`) and, once an App is
/// registered there, starts again in this process with its credentials.
async fn serve(settings: Settings) -> anyhow::Result<()> {
    let store = store::connect_runs_with(&settings.database_url, &settings.pool_settings()).await?;
    // One key for every start: a registration does not log anyone out.
    let session_key = settings
        .session_key
        .clone()
        .unwrap_or_else(taskmaster::dashboard::SessionKey::random);
    let stop = CancellationToken::new();
    let signalled = stop.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutting down: finishing requests in flight");
        signalled.cancel();
    });
    // A restart after a registration listens where the first start did
    // (with PORT=0, on the port it picked).
    let mut addr = SocketAddr::new(settings.host, settings.port);
    loop {
        let app = taskmaster::setup::resolve_app(
            |name| std::env::var(name).ok(),
            settings.webhook_secret.as_ref(),
            &settings.app_slug,
            &settings.data_dir,
        )
        .map_err(|e| anyhow::anyhow!("refusing to start: {e:#}"))?;
        let (registered, bound) =
            serve_once(&settings, addr, app, store.clone(), &session_key, &stop).await?;
        addr = bound;
        if !registered {
            tracing::info!("stopped");
            return Ok(());
        }
        tracing::info!("starting again with the registered GitHub App's credentials");
    }
}

/// One life of the service with `app`'s credentials, listening on `addr`.
/// Returns true when it stopped because an App was just registered (start
/// again), false on `stop`; and the address it listened on.
async fn serve_once(
    settings: &Settings,
    addr: SocketAddr,
    app: taskmaster::setup::ResolvedApp,
    store: Arc<dyn store::RunStore>,
    session_key: &taskmaster::dashboard::SessionKey,
    stop: &CancellationToken,
) -> anyhow::Result<(bool, SocketAddr)> {
    let setup = if app.needs_registration() {
        let public_url = taskmaster::tools::webhook_url(settings.public_url.as_deref(), addr)
            .trim_end_matches("/api/github/webhooks")
            .to_owned();
        Some(taskmaster::setup::Setup::new(
            taskmaster::setup::SetupConfig {
                api_url: app.github.api_url.clone(),
                web_url: settings.github_web_url.clone(),
                public_url,
                data_dir: settings.data_dir.clone(),
                features: taskmaster::tools::ManifestFeatures::default(),
            },
        )?)
    } else {
        None
    };
    let secrets = match (app.secrets.clone(), &setup) {
        (Some(secrets), _) => secrets,
        // Nothing can be verified until an App is registered: a secret no
        // one knows refuses every delivery (401).
        (None, Some(_)) => {
            taskmaster::webhook::WebhookSecrets::new(vec![secrecy::SecretString::from(
                uuid::Uuid::new_v4().to_string(),
            )])
            .map_err(|e| anyhow::anyhow!(e))?
        }
        (None, None) => anyhow::bail!(MISSING_SECRET_HELP),
    };
    let mut app_secrets: Vec<String> = app
        .secrets
        .iter()
        .flat_map(|s| s.values().map(str::to_owned))
        .collect();
    app_secrets.extend(
        app.oauth_client
            .iter()
            .map(|(_, secret)| secrecy::ExposeSecret::expose_secret(secret).to_owned()),
    );
    let (agents, workflows, extras) = load_agents_and_workflows(settings, &app_secrets)?;
    if let Some(report) = &extras.insights_report
        && workflows.get(&report.workflow).is_none()
    {
        anyhow::bail!(
            "refusing to start: insights_report.workflow `{}` is not among the workflows in {} \
             (the shipped workflows/insights_report.yml is one)",
            report.workflow,
            settings.workflows.display()
        );
    }
    let mut github_settings = app.github.clone();
    github_settings.bot_login = Some(format!("{}[bot]", app.slug));
    let github = github::connect(&github_settings, RetryPolicy::default())
        .map_err(|e| anyhow::anyhow!("refusing to start: cannot build the GitHub client: {e}"))?;
    let engine = Engine::new(
        store.clone(),
        workflows.clone(),
        agents.clone(),
        taskmaster::engine::EngineConfig {
            budgets: agents.budgets(),
            ..engine_config(settings, github.clone())?
        },
    );
    let redelivery_stop = CancellationToken::new();
    if github_settings.credentials.is_some() {
        tokio::spawn(github::redelivery::run_scheduler(
            github.clone(),
            store.clone(),
            settings
                .redelivery_interval
                .max(std::time::Duration::from_secs(1)),
            redelivery_stop.clone(),
        ));
    }
    let app_id = github_settings
        .credentials
        .as_ref()
        .map(|c| c.app_id as i64);
    let outbox = Outbox::new(store.clone(), github.clone(), settings.outbox_config());
    let handler = AppHandler::new(
        store.clone(),
        github.clone(),
        engine.clone(),
        AppHandlerConfig {
            identity: AppIdentity {
                app_id,
                slug: app.slug.clone(),
            },
            repo_config_ttl: settings.repo_config_ttl,
            permission_ttl: settings.permission_ttl,
            effects_wake: Some(outbox.waker()),
            max_runs_per_subject_per_hour: settings.max_runs_per_subject_per_hour,
        },
    );
    let outbox_stop = CancellationToken::new();
    let outbox_task = tokio::spawn(outbox.run(Some(engine.subscribe()), outbox_stop.clone()));
    let background_stop = CancellationToken::new();
    if settings.prune_interval_minutes > 0 {
        tokio::spawn(store::retention::run_pruner(
            store.clone(),
            settings.retention(),
            std::time::Duration::from_secs(settings.prune_interval_minutes * 60),
            background_stop.clone(),
        ));
    }
    let engine_stop = CancellationToken::new();
    let engine_task = tokio::spawn(engine.clone().run(engine_stop.clone()));
    if let Some(report) = extras.insights_report.clone() {
        tokio::spawn(taskmaster::insights::weekly::run_scheduler(
            engine.clone(),
            report,
            std::time::Duration::from_secs(3600),
            background_stop.clone(),
        ));
    }
    // The Prometheus recorder, before the first delivery is counted.
    taskmaster::instrument::handle();
    let api_state = taskmaster::api::ApiState::new(engine.clone(), settings.metrics_public)
        .with_github(github.clone());
    let dashboard_state = taskmaster::dashboard::DashboardState::new(
        api_state.clone(),
        taskmaster::dashboard::DashboardSettings {
            public: settings.dashboard_public,
            key: session_key.clone(),
            setup_pending: setup.is_some(),
        },
    );
    let oauth = match (&app.oauth_client, &settings.public_url) {
        (Some((id, secret)), Some(public)) => {
            Some(taskmaster::dashboard::signin::GitHubOAuth::new(
                &settings.github_web_url,
                &app.github.api_url,
                id.clone(),
                secret.clone(),
                public,
            )?)
        }
        _ => None,
    };
    let sign_in_config = &extras.sign_in;
    if sign_in_config.github.is_some() && settings.public_url.is_none() {
        anyhow::bail!(
            "refusing to start: sign_in.github needs PUBLIC_URL (GitHub sends the browser back to {{PUBLIC_URL}}/auth/github/callback)"
        );
    }
    let dashboard_state = dashboard_state.with_sign_in(
        taskmaster::dashboard::signin::SignIn::new(sign_in_config, oauth)
            .map_err(|e| anyhow::anyhow!("refusing to start: {e:#}"))?,
    );
    let live_streams = dashboard_state.streams_token();
    let dashboard = taskmaster::dashboard::router(dashboard_state);
    let setup_routes = match &setup {
        Some(setup) => taskmaster::setup::router(setup.clone()),
        None => taskmaster::setup::cli_callback_router(),
    };
    let api = taskmaster::api::service(api_state)
        .merge(dashboard)
        .merge(setup_routes);
    let running = server::start_with(
        ServerConfig {
            addr,
            secrets,
            store: store.clone(),
            handler: Arc::new(handler),
            limits: taskmaster::server::IntakeLimits {
                header_timeout: settings
                    .header_timeout
                    .max(std::time::Duration::from_millis(1)),
                body_timeout: settings
                    .body_timeout
                    .max(std::time::Duration::from_millis(1)),
                max_connections: settings.max_connections.max(1),
                max_webhooks_in_flight: settings.max_webhooks_in_flight.max(1),
                max_body_bytes: settings
                    .max_body_bytes
                    .max(taskmaster::webhook::MAX_PAYLOAD_BYTES),
            },
        },
        api,
    )
    .await?;
    let webhook_url =
        taskmaster::tools::webhook_url(settings.public_url.as_deref(), running.local_addr);
    match &setup {
        Some(setup) => {
            if settings.public_url.is_none() {
                let local = taskmaster::tools::webhook_url(None, running.local_addr);
                setup.set_public_url(local.trim_end_matches("/api/github/webhooks"));
            }
            tracing::warn!(
                "no GitHub App is configured: every webhook is refused until one is registered"
            );
            // The one-time link goes to the terminal, not to the logs.
            eprintln!(
                "\nNo GitHub App is configured. Register one from your browser:\n\n    {}\n\n\
                 (a one-time link; the token is also in {}).\n",
                setup.link(),
                settings
                    .data_dir
                    .join(taskmaster::setup::SETUP_TOKEN_FILE)
                    .display()
            );
        }
        None => tracing::info!(
            webhook_url = %webhook_url,
            "GitHub App webhook URL (the App's settings → Webhook URL): {webhook_url}"
        ),
    }
    if settings.public_url.is_none() {
        tracing::info!(
            "PUBLIC_URL is not set: GitHub cannot reach a laptop or a private network by itself; \
             see the README's “Reaching the service” (a Cloudflare Tunnel, smee.io or a reverse proxy)"
        );
    }
    let registered = setup
        .as_ref()
        .map(taskmaster::setup::Setup::registered)
        .unwrap_or_default();
    let token = running.shutdown_token();
    let stop_for_server = stop.clone();
    let registered_for_server = registered.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = stop_for_server.cancelled() => {}
            _ = registered_for_server.cancelled() => {}
        }
        // Open dashboard event streams would hold the graceful shutdown forever.
        live_streams.cancel();
        token.cancel();
    });
    let bound = running.local_addr;
    let served = running.wait().await;
    // Intake and the dispatcher are down; now the engine releases its steps.
    engine_stop.cancel();
    engine_task
        .await
        .context("engine panicked")?
        .context("engine start-up recovery failed")?;
    redelivery_stop.cancel();
    background_stop.cancel();
    // Last, the outbox sends what the engine settled (one bounded pass).
    outbox_stop.cancel();
    outbox_task.await.context("outbox panicked")?;
    served?;
    Ok((registered.is_cancelled() && !stop.is_cancelled(), bound))
}

/// The engine's settings, with workspaces under the data directory that
/// fetch with read tokens from `github` (none in dry run).
fn engine_config(
    settings: &Settings,
    github: Arc<dyn github::GitHub>,
) -> anyhow::Result<taskmaster::engine::EngineConfig> {
    use taskmaster::workspace::{GitHubTokens, Workspaces};
    let workspaces = Workspaces::new(
        settings.workspace_settings(),
        Arc::new(GitHubTokens(github)),
    )
    .map_err(|e| {
        anyhow::anyhow!(
            "refusing to start: cannot use the data directory {} (TASKMASTER_DATA_DIR): {e}",
            settings.data_dir.display()
        )
    })?;
    Ok(taskmaster::engine::EngineConfig {
        workspaces: Some(Arc::new(workspaces)),
        ..settings.engine_config()
    })
}

/// `taskmaster run WORKFLOW --event FILE`: one run, to completion, with progress.
async fn run(
    settings: Settings,
    workflow: &str,
    event: &std::path::Path,
    event_name: &str,
    delivery: Option<String>,
) -> anyhow::Result<()> {
    use std::io::IsTerminal;
    let payload = std::fs::read(event)
        .with_context(|| format!("cannot read the event payload {}", event.display()))?;
    let (agents, workflows, _) = load_agents_and_workflows(&settings, &[])?;
    let store = store::connect_runs_with(&settings.database_url, &settings.pool_settings()).await?;
    // The App as `serve` resolves it (the environment's, else a browser
    // registration's from the data directory).
    let app = taskmaster::setup::resolve_app(
        |name| std::env::var(name).ok(),
        settings.webhook_secret.as_ref(),
        &settings.app_slug,
        &settings.data_dir,
    )?;
    let mut github_settings = app.github;
    github_settings.bot_login = Some(format!("{}[bot]", app.slug));
    let github = github::connect(&github_settings, RetryPolicy::default())
        .map_err(|e| anyhow::anyhow!("cannot build the GitHub client: {e}"))?;
    let engine = Engine::new(
        store.clone(),
        workflows,
        agents.clone(),
        taskmaster::engine::EngineConfig {
            budgets: agents.budgets(),
            ..engine_config(&settings, github.clone())?
        },
    );
    let mut transitions = engine.subscribe();
    let stop = CancellationToken::new();
    let task = tokio::spawn(engine.clone().run(stop.clone()));
    let delivery = delivery.unwrap_or_else(|| format!("local-{}", uuid::Uuid::new_v4()));
    let created = engine
        .start_run(workflow, event_name, &payload, &delivery)
        .await?;
    let run_id = created.run_id;
    let tty = std::io::stdout().is_terminal();
    let started = std::time::Instant::now();
    if created.created {
        println!("run {run_id} of {workflow} started (delivery {delivery})");
    } else {
        println!("run {run_id} of {workflow} already exists for delivery {delivery}: carrying on");
    }
    let outcome = loop {
        if let Some(snap) = store.run(run_id).await?
            && snap.run.state.is_terminal()
        {
            break snap;
        }
        let next =
            tokio::time::timeout(std::time::Duration::from_secs(1), transitions.recv()).await;
        let Ok(Ok(t)) = next else { continue };
        let secs = started.elapsed().as_secs_f64();
        match t {
            Transition::Step {
                run_id: r,
                step,
                state,
                agent,
                attempt,
                reason,
            } if r == run_id => {
                let who = match (agent, attempt) {
                    (Some(a), Some(n)) => format!(" (attempt {n} on {a})"),
                    _ => String::new(),
                };
                if tty {
                    println!(
                        "\x1b[2m{secs:7.1}s\x1b[0m  {step:<24} \x1b[1m{state}\x1b[0m{who}  {reason}"
                    );
                } else {
                    println!("{secs:7.1}s  {step:<24} {state}{who}  {reason}");
                }
            }
            Transition::Run {
                run_id: r,
                state,
                reason,
            } if r == run_id => {
                println!("{secs:7.1}s  run {state}: {reason}");
            }
            _ => {}
        }
    };
    stop.cancel();
    task.await.context("engine panicked")??;
    println!();
    println!(
        "run {run_id}: {}{}",
        outcome.run.state,
        outcome
            .run
            .conclusion
            .as_deref()
            .map(|c| format!(" ({c})"))
            .unwrap_or_default()
    );
    for s in &outcome.steps {
        println!(
            "  {:<24} {:<10} attempts {:<2} agent {}",
            s.step,
            s.state.as_str(),
            s.attempts,
            s.agent
        );
    }
    print_change(&settings, &store, &github, run_id.0).await?;
    if outcome.run.state == RunState::Succeeded {
        Ok(())
    } else {
        anyhow::bail!("run {run_id} ended {}", outcome.run.state)
    }
}

/// `taskmaster run`'s account of the run's change: where it went (in dry
/// run, the commit and pull request it would have made are recorded now),
/// the files, and the diff.
async fn print_change(
    settings: &Settings,
    store: &Arc<dyn taskmaster::store::RunStore>,
    github: &Arc<dyn github::GitHub>,
    run_id: i64,
) -> anyhow::Result<()> {
    use taskmaster::store::ChangeState;
    let Some(mut change) = store.run_change(taskmaster::store::RunId(run_id)).await? else {
        return Ok(());
    };
    if change.state == ChangeState::Pending && github.is_dry_run() {
        let publisher = taskmaster::publish::Publisher::new(
            store.clone(),
            github.clone(),
            settings.public_url.clone(),
            std::time::Duration::from_secs(1),
            std::time::Duration::from_secs(60),
        );
        publisher.pass().await?;
        if let Some(again) = store.run_change(taskmaster::store::RunId(run_id)).await? {
            change = again;
        }
    }
    println!();
    if let Some(text) = taskmaster::publish::describe(&change) {
        println!("change: {text}");
    }
    if change.state == ChangeState::Pending {
        println!("  (stored with the run: `taskmaster serve` on this database sends it to GitHub)");
    }
    for f in &change.change.files {
        println!(
            "  {:<12} {:>5} {:>5}  {}",
            serde_json::to_value(f.status)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default(),
            format!("+{}", f.additions),
            format!("-{}", f.deletions),
            f.path
        );
    }
    if !change.change.diff.is_empty() {
        println!();
        print!("{}", change.change.diff);
        if change.change.diff_truncated {
            println!("[diff cut; the whole change is in the run's record]");
        }
    }
    Ok(())
}

/// `taskmaster token create|revoke|list`: API tokens, straight in the
/// database (the way to make the first admin token). Each change is in the
/// audit log with the actor `cli`.
async fn token(settings: Settings, action: TokenCommand) -> anyhow::Result<()> {
    use secrecy::ExposeSecret;
    use taskmaster::api::auth;
    use taskmaster::store::ActorKind;
    let store = store::connect_runs(&settings.database_url).await?;
    match action {
        TokenCommand::Create {
            role,
            name,
            expires_in_days,
            repositories,
        } => {
            let (generated, stored) = auth::create_token_scoped(
                &*store,
                role,
                name.as_deref(),
                (ActorKind::System, "cli"),
                expires_in_days.map(|d| taskmaster::store::now_ms() + d * 86_400_000),
                (!repositories.is_empty()).then_some(repositories),
            )
            .await?;
            eprintln!(
                "created the {} token `{}`; it is shown once, store it now:",
                stored.role, stored.name
            );
            println!("{}", generated.secret.expose_secret());
        }
        TokenCommand::Revoke { name } => {
            match auth::revoke_token(&*store, &name, (ActorKind::System, "cli")).await? {
                Some(t) => println!("token `{}` ({}) is revoked", t.name, t.role),
                None => anyhow::bail!("no token named `{name}` (see `taskmaster token list`)"),
            }
        }
        TokenCommand::List => {
            let tokens = store.api_tokens().await?;
            if tokens.is_empty() {
                println!("no API tokens; create one with `taskmaster token create --role admin`");
            }
            for t in tokens {
                println!(
                    "{:<24} {:<10} {}…  created by {:<12} {}",
                    t.name,
                    t.role.as_str(),
                    t.prefix,
                    t.created_by,
                    if t.revoked_at.is_some() {
                        "revoked"
                    } else {
                        "active"
                    }
                );
            }
        }
    }
    Ok(())
}

/// `taskmaster deliver FILE`: sign and post a payload; print the answer.
async fn deliver(
    settings: &Settings,
    payload: &std::path::Path,
    event: Option<String>,
    url: Option<String>,
) -> anyhow::Result<()> {
    let secrets = settings
        .webhook_secret
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("{MISSING_SECRET_HELP}"))?;
    let event = event
        .or_else(|| taskmaster::tools::event_from_file_name(payload))
        .ok_or_else(|| {
            anyhow::anyhow!(
                "cannot tell the event from the file name {}: pass --event (e.g. --event pull_request)",
                payload.display()
            )
        })?;
    let body = std::fs::read(payload)
        .with_context(|| format!("cannot read the payload {}", payload.display()))?;
    let url =
        url.unwrap_or_else(|| format!("http://127.0.0.1:{}/api/github/webhooks", settings.port));
    let answer = taskmaster::tools::deliver(&url, secrets, &event, &body).await?;
    println!(
        "{} {} (delivery {}, event {event})",
        answer.status, answer.body, answer.delivery_id
    );
    anyhow::ensure!(
        (200..300).contains(&answer.status),
        "the service did not accept the delivery"
    );
    Ok(())
}

/// `taskmaster app-manifest`: print the manifest, or exchange a code.
async fn app_manifest(
    settings: &Settings,
    name: &str,
    code: Option<&str>,
    out: &std::path::Path,
) -> anyhow::Result<()> {
    match code {
        None => {
            let public = settings.public_url.as_deref().ok_or_else(|| {
                anyhow::anyhow!(
                    "set PUBLIC_URL (or --public-url) to the address GitHub will reach this service at"
                )
            })?;
            let manifest = taskmaster::tools::app_manifest(
                name,
                public,
                &taskmaster::tools::ManifestFeatures::default(),
            );
            println!("{}", serde_json::to_string_pretty(&manifest)?);
            eprintln!(
                "Register it at https://github.com/settings/apps/new (or \
                 https://github.com/organizations/<org>/settings/apps/new) by posting this \
                 manifest as the `manifest` form field; GitHub redirects to {}/setup/callback?code=…; \
                 then run `taskmaster app-manifest --code <code>`. Or simply start the service \
                 without App credentials and open the set-up link it prints.",
                public.trim_end_matches('/')
            );
            Ok(())
        }
        Some(code) => {
            let api_url = github::auth::api_url_from(|name| std::env::var(name).ok())?;
            let (app, pem, env) =
                taskmaster::tools::convert_manifest_code(&api_url, code, out).await?;
            println!(
                "GitHub App `{}` (id {}) registered.\n\
                 Credentials written to {} and {} (owner-only).\n\
                 Start the service with them: `set -a; . {}; set +a; taskmaster serve` \
                 (with --out set to the data directory, `serve` finds them by itself).",
                app.slug,
                app.id,
                env.display(),
                pem.display(),
                env.display()
            );
            Ok(())
        }
    }
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = terminate => {}
    }
}
