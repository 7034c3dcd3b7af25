//! The benchmark ceiling for webhook intake: an axum handler that only checks
//! `X-Hub-Signature-256` (with taskmaster's own verifier) and answers 202 —
//! no parsing, no storage. `benches/intake.sh` runs it beside the real service
//! under the same load, so the ratio between the two is what it costs to make
//! every delivery durable.
//!
//! Usage: `GITHUB_WEBHOOK_SECRET=… PORT=3999 cargo run --release --example hmac_ceiling`

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use bytes::Bytes;
use taskmaster::webhook::{MAX_PAYLOAD_BYTES, WEBHOOK_PATH, WebhookSecrets};

async fn receive(
    State(secrets): State<Arc<WebhookSecrets>>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let signature = headers.get("x-hub-signature-256").map(|v| v.as_bytes());
    match secrets.verify(signature, &body) {
        Ok(()) => StatusCode::ACCEPTED,
        Err(_) => StatusCode::UNAUTHORIZED,
    }
}

#[tokio::main]
async fn main() {
    let secret = std::env::var("GITHUB_WEBHOOK_SECRET").expect("set GITHUB_WEBHOOK_SECRET");
    let port = std::env::var("PORT").unwrap_or_else(|_| "3999".into());
    let secrets = Arc::new(WebhookSecrets::parse(&secret).expect("valid secret"));
    let app = Router::new()
        .route(WEBHOOK_PATH, post(receive))
        .layer(DefaultBodyLimit::max(MAX_PAYLOAD_BYTES))
        .with_state(secrets);
    let listener = tokio::net::TcpListener::bind(format!("127.0.0.1:{port}"))
        .await
        .expect("bind");
    axum::serve(listener, app).await.expect("serve");
}
