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
use std::time::Duration;

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
    /// How slow or numerous clients are held off.
    pub limits: IntakeLimits,
}

/// Limits that keep intake answering while slow or flooding clients try
/// to hold it: every connection gets its request's headers within
/// `header_timeout` (else it is closed) and its body within `body_timeout`
/// (else 408); at most `max_connections` are open (more wait in the
/// kernel's backlog); at most `max_webhooks_in_flight` webhook requests are
/// handled at once, more are answered `503` at once (GitHub's redelivery,
/// and taskmaster's own redelivery pass, bring them back).
#[derive(Debug, Clone, Copy)]
pub struct IntakeLimits {
    pub header_timeout: Duration,
    pub body_timeout: Duration,
    pub max_connections: usize,
    pub max_webhooks_in_flight: usize,
}

impl Default for IntakeLimits {
    /// 10 s for headers, 30 s for a body (GitHub sends at most 25 MB, fast),
    /// 4,096 connections, 512 webhook requests in flight.
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            max_connections: 4096,
            max_webhooks_in_flight: 512,
        }
    }
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
        limits,
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

    let in_flight = Arc::new(tokio::sync::Semaphore::new(limits.max_webhooks_in_flight));
    let app: Router = webhook::router(WebhookState {
        secrets: Arc::new(secrets),
        inbox,
    })
    .layer(axum::middleware::from_fn(
        move |req: axum::extract::Request, next: axum::middleware::Next| {
            let in_flight = in_flight.clone();
            async move {
                // Held while the body is read and the delivery committed.
                match in_flight.try_acquire_owned() {
                    Ok(_permit) => next.run(req).await,
                    Err(_) => {
                        tracing::warn!("webhook requests at their limit: answered 503");
                        axum::response::IntoResponse::into_response((
                            axum::http::StatusCode::SERVICE_UNAVAILABLE,
                            [(axum::http::header::RETRY_AFTER, "5")],
                            "too many webhook requests in flight; try again",
                        ))
                    }
                }
            }
        },
    ))
    .merge(api)
    .layer(tower_http::timeout::RequestBodyTimeoutLayer::new(
        limits.body_timeout,
    ))
    .layer(TraceLayer::new_for_http());

    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    let task = tokio::spawn(async move {
        let served = serve(listener, app, limits, stop).await;
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

/// Serves `app` on `listener` until `stop`, then lets the requests in
/// flight finish (each connection closes after its current request).
///
/// taskmaster's own accept loop rather than `axum::serve`, for what that
/// does not offer: a header read timeout (hyper's, which needs a timer) and
/// a cap on open connections.
async fn serve(
    listener: TcpListener,
    app: Router,
    limits: IntakeLimits,
    stop: CancellationToken,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioIo, TokioTimer};
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let connections = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    loop {
        let permit = tokio::select! {
            p = connections.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            _ = stop.cancelled() => break,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors and the like: pause, go on.
                    tracing::warn!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.cancelled() => break,
        };
        let _ = stream.set_nodelay(true);
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_timeout);
        let connection = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            let _permit = permit;
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}
