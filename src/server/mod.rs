//! Assembles the service: intake, inbox writer, dispatcher, API — and takes it
//! down in the right order.
//!
//! Shutdown order matters for the guarantees: first stop accepting and let
//! requests in flight finish (each waits for its commit), then let the inbox
//! writer drain, and only then stop the dispatcher, which releases whatever it
//! claimed but did not finish. Nothing answered is lost; nothing claimed stays
//! stuck behind a lease.

pub mod connections;

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
use connections::{AnsweredBody, Connections, TrackedBody};

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
/// (else 408); at most `max_connections` are open and at most
/// `max_body_bytes` of request bodies are held at once — when either runs
/// out, the oldest connection still reading its request is closed to make
/// room (see [`connections`]); at most `max_webhooks_in_flight` webhook
/// requests, their bodies read, are verified and stored at once, more are
/// answered `503` at once (GitHub's redelivery, and taskmaster's own
/// redelivery pass, bring them back).
#[derive(Debug, Clone, Copy)]
pub struct IntakeLimits {
    pub header_timeout: Duration,
    pub body_timeout: Duration,
    pub max_connections: usize,
    pub max_webhooks_in_flight: usize,
    /// Bytes of request bodies held in memory at once, at least one
    /// largest payload (25 MiB).
    pub max_body_bytes: usize,
}

impl Default for IntakeLimits {
    /// 10 s for headers, 30 s for a body (GitHub sends at most 25 MB, fast),
    /// 4,096 connections, 512 webhook requests in flight, 64 MiB of bodies.
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            max_connections: 4096,
            max_webhooks_in_flight: 512,
            max_body_bytes: 64 * 1024 * 1024,
        }
    }
}

/// The most one connection's read buffer holds (hyper's minimum is 8 KiB):
/// request headers up to this size, and this much of a body at a time.
const READ_BUFFER_BYTES: usize = 16 * 1024;

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

    let app: Router = webhook::router(WebhookState {
        secrets: Arc::new(secrets),
        inbox,
        in_flight: Arc::new(tokio::sync::Semaphore::new(limits.max_webhooks_in_flight)),
    })
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
/// does not offer: a header read timeout (hyper's, which needs a timer), a
/// cap on open connections and on request-body bytes, and closing the
/// oldest slow reader to make room ([`connections`]).
async fn serve(
    listener: TcpListener,
    app: Router,
    limits: IntakeLimits,
    stop: CancellationToken,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use tower::ServiceExt;
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let table = Connections::new(limits.max_connections, limits.max_body_bytes);
    loop {
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
        let Some((handle, permit, close)) = table.admit(&stop).await else {
            break;
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let conn = handle.clone();
        let service = tower::service_fn(move |req: axum::http::Request<hyper::body::Incoming>| {
            let app = app.clone();
            let conn = conn.clone();
            async move {
                let (mut parts, body) = req.into_parts();
                parts.extensions.insert(conn.clone());
                let body = axum::body::Body::new(TrackedBody::new(body, conn.clone()));
                let response = app
                    .oneshot(axum::http::Request::from_parts(parts, body))
                    .await?;
                Ok::<_, std::convert::Infallible>(
                    response.map(|b| axum::body::Body::new(AnsweredBody::new(b, conn))),
                )
            }
        });
        let service = hyper_util::service::TowerToHyperService::new(service);
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_timeout)
            // hyper's read buffer, per connection: bounds what a connection
            // holds besides its charged body (the default grows to ~400 KB)
            // and the size of a request's headers (431 above it).
            .max_buf_size(READ_BUFFER_BYTES);
        let connection = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            let _permit = permit;
            tokio::select! {
                ended = connection => if let Err(e) = ended {
                    tracing::debug!(error = %e, "connection ended with an error");
                },
                _ = close.cancelled() => {
                    tracing::debug!("a slow reader was closed to make room");
                }
            }
            handle.closed();
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}
