//! Assembles the service: intake, inbox writer, dispatcher, API — and takes it
//! down in the right order.
//!
//! Shutdown order matters for the guarantees: first stop accepting and let
//! requests in flight finish (each waits for its commit), then let the inbox
//! writer drain, and only then stop the dispatcher, which releases whatever it
//! claimed but did not finish. Nothing answered is lost; nothing claimed stays
//! stuck behind a lease.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tower_http::trace::TraceLayer;

use crate::dispatch::{DeliveryHandler, Dispatcher};
use crate::store::Store;
use crate::webhook::{self, Inbox, WebhookSecrets, WebhookState};

/// What [`start`] needs.
pub struct ServerConfig {
    /// Where to listen; port 0 picks a free port (see [`RunningServer::local_addr`]).
    pub addr: SocketAddr,
    pub secrets: WebhookSecrets,
    pub store: Arc<dyn Store>,
    pub handler: Arc<dyn DeliveryHandler>,
}

/// A started service.
pub struct RunningServer {
    /// The bound address.
    pub local_addr: SocketAddr,
    pub store: Arc<dyn Store>,
    shutdown: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
}

impl RunningServer {
    /// Asks the service to stop gracefully; see [`RunningServer::wait`].
    pub fn shutdown(&self) {
        self.shutdown.cancel();
    }

    /// A token that, when cancelled, stops the service gracefully.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Waits until the service has stopped (after [`RunningServer::shutdown`]).
    pub async fn wait(self) -> anyhow::Result<()> {
        self.task.await.context("server task panicked")?
    }

    /// Shuts down and waits.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.shutdown();
        self.wait().await
    }
}

/// Recovers unfinished deliveries, binds the listener and starts every task.
/// The API is the health check alone; see [`start_with`] for the whole API.
///
/// Errors: the address cannot be bound, or start-up recovery fails.
pub async fn start(config: ServerConfig) -> anyhow::Result<RunningServer> {
    let api = crate::api::router(config.store.clone());
    start_with(config, api).await
}

/// As [`start`], serving `api` (e.g. [`crate::api::service`]) beside intake.
///
/// Errors: the address cannot be bound, or start-up recovery fails.
pub async fn start_with(config: ServerConfig, api: Router) -> anyhow::Result<RunningServer> {
    let ServerConfig {
        addr,
        secrets,
        store,
        handler,
    } = config;

    let recovered = store
        .recover_deliveries()
        .await
        .context("start-up recovery of unfinished deliveries failed")?;
    if recovered > 0 {
        tracing::info!(
            recovered,
            "deliveries left in processing by a previous run are queued again"
        );
    }

    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    let local_addr = listener.local_addr()?;

    let wake = Arc::new(Notify::new());
    let (inbox, writer) = Inbox::start(store.clone(), wake.clone());
    let dispatcher_cancel = CancellationToken::new();
    let dispatcher =
        tokio::spawn(Dispatcher::new(store.clone(), handler, wake).run(dispatcher_cancel.clone()));

    let app: Router = webhook::router(WebhookState {
        secrets: Arc::new(secrets),
        inbox,
    })
    .merge(api)
    .layer(TraceLayer::new_for_http());

    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    let task = tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(stop.cancelled_owned())
            .await;
        // The router (and with it the last Inbox handle) is gone: the writer
        // drains what is queued and ends.
        writer.await.context("inbox writer panicked")?;
        dispatcher_cancel.cancel();
        dispatcher.await.context("dispatcher panicked")?;
        served.context("HTTP server failed")
    });

    tracing::info!(address = %local_addr, "listening");
    Ok(RunningServer {
        local_addr,
        store,
        shutdown,
        task,
    })
}
