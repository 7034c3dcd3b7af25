//! The `taskmaster` binary: `serve` (the default), `migrate` and `validate`.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use taskmaster::config::{Cli, Command, MISSING_SECRET_HELP};
use taskmaster::dispatch::AcceptAll;
use taskmaster::server::{self, ServerConfig};
use taskmaster::workflow::{DEFAULT_AGENTS, WorkflowSet};
use taskmaster::{store, telemetry};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    telemetry::init(cli.settings.log_format, &cli.settings.log_filter);
    let result = match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(cli.settings).await,
        Command::Migrate => migrate(cli.settings).await,
        Command::Validate { dir } => validate(&dir),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("taskmaster: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn migrate(settings: taskmaster::config::Settings) -> anyhow::Result<()> {
    store::connect(&settings.database_url).await?;
    println!(
        "database {} is up to date",
        store::redact_url(&settings.database_url)
    );
    Ok(())
}

/// `taskmaster validate [DIR]`: every error on stderr, a summary on stdout.
fn validate(dir: &std::path::Path) -> anyhow::Result<()> {
    match WorkflowSet::load_dir(dir, DEFAULT_AGENTS) {
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

async fn serve(settings: taskmaster::config::Settings) -> anyhow::Result<()> {
    let Some(secrets) = settings.webhook_secret else {
        anyhow::bail!(MISSING_SECRET_HELP);
    };
    // Refuse to start on a broken workflow set: better no service than runs
    // that fail one by one in production.
    let workflows = WorkflowSet::load_dir(&settings.workflows, DEFAULT_AGENTS).map_err(|e| {
        anyhow::anyhow!(
            "refusing to start: the workflow definitions in {} are invalid \
(check them with `taskmaster validate {}`):\n{e}",
            settings.workflows.display(),
            settings.workflows.display()
        )
    })?;
    tracing::info!(workflows = workflows.len(), dir = %settings.workflows.display(),
        "workflow definitions loaded");
    let store = store::connect(&settings.database_url).await?;
    let running = server::start(ServerConfig {
        addr: SocketAddr::new(settings.host, settings.port),
        secrets,
        store,
        handler: Arc::new(AcceptAll),
    })
    .await?;
    let token = running.shutdown_token();
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutting down: finishing requests in flight");
        token.cancel();
    });
    running.wait().await?;
    tracing::info!("stopped");
    Ok(())
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
