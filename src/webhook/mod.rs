//! Webhook intake: `POST /api/github/webhooks`.
//!
//! The one door GitHub knocks on. Its job is narrow and must be done right:
//!
//! 1. read the raw body (up to GitHub's 25 MB payload cap, 413 above it);
//! 2. verify `X-Hub-Signature-256` over those raw bytes **before** parsing
//!    (401 with a one-line reason otherwise);
//! 3. check the delivery headers and that the body is a JSON object (400);
//! 4. store the delivery in the inbox and wait for the commit (group commit,
//!    see [`inbox`]) — only then answer: 202 `queued`, 200 `duplicate` for a
//!    delivery id already stored, 200 for `ping`, 202 `ignored` for events
//!    taskmaster does not act on.
//!
//! Nothing slow happens here: no GitHub call, no agent call. GitHub gives a
//! receiver 10 seconds and never retries on its own
//! (<https://docs.github.com/en/webhooks/using-webhooks/best-practices-for-using-webhooks>),
//! so the work happens later, in the dispatcher, from the durable inbox.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use bytes::Bytes;
use serde::Deserialize;

use crate::server::connections::{BodyCharge, ConnectionHandle};
use crate::store::{DeliveryState, EncodedPayload, InsertOutcome, NewDelivery, now_ms};

pub mod inbox;
pub mod signature;

pub use inbox::{Inbox, InboxError};
pub use signature::{SignatureError, WebhookSecrets, sign};

/// The route GitHub Apps conventionally post to (Probot's path).
pub const WEBHOOK_PATH: &str = "/api/github/webhooks";

/// GitHub caps webhook payloads at 25 MB and does not send larger ones
/// (<https://docs.github.com/en/webhooks/webhook-events-and-payloads#payload-cap>).
/// We accept up to 25 MiB, a little more than that.
pub const MAX_PAYLOAD_BYTES: usize = 25 * 1024 * 1024;

/// If the inbox cannot commit within this time the request answers 503, well
/// inside GitHub's 10 s, so GitHub records a failure that redelivery can repair.
const STORE_DEADLINE: Duration = Duration::from_secs(8);

/// Events taskmaster acts on: stored as `queued` for the dispatcher. Every other
/// event is stored as `ignored` (kept for the record, never dispatched).
pub const ACTED_ON_EVENTS: &[&str] = &[
    "pull_request",
    "issues",
    "issue_comment",
    "check_run",
    "check_suite",
    "installation",
    "installation_repositories",
    "push",
];

/// What the webhook handler needs.
#[derive(Clone)]
pub struct WebhookState {
    pub secrets: Arc<WebhookSecrets>,
    pub inbox: Inbox,
    /// Webhook requests verified and stored at once, their bodies read; a
    /// request that finds none free is answered 503 at once.
    pub in_flight: Arc<tokio::sync::Semaphore>,
}

/// The intake router: `POST /api/github/webhooks` with the raised body limit.
pub fn router(state: WebhookState) -> Router {
    Router::new()
        .route(WEBHOOK_PATH, post(receive))
        .layer(DefaultBodyLimit::max(MAX_PAYLOAD_BYTES))
        .with_state(state)
}

/// The JSON answer to every webhook request.
#[derive(Debug, serde::Serialize, Deserialize, PartialEq, Eq)]
pub struct Receipt {
    /// The `X-GitHub-Delivery` id, when the request had a usable one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delivery: Option<String>,
    /// `queued`, `ignored`, `done` (ping), `duplicate`, or `rejected`.
    pub status: String,
    /// Why a request was rejected, one line.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

fn reject(status: StatusCode, delivery: Option<&str>, error: impl Into<String>) -> Response {
    let error = error.into();
    tracing::info!(status = status.as_u16(), delivery, %error, "webhook rejected");
    (
        status,
        Json(Receipt {
            delivery: delivery.map(str::to_owned),
            status: "rejected".into(),
            error: Some(error),
        }),
    )
        .into_response()
}

/// The fields of a payload that the inbox indexes. Everything else is skipped
/// (but still validated as JSON) while deserializing.
#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow, default)]
    action: Option<Cow<'a, str>>,
    #[serde(default)]
    installation: Option<IdOnly>,
    #[serde(borrow, default)]
    repository: Option<RepositoryName<'a>>,
    #[serde(borrow, default)]
    sender: Option<Sender<'a>>,
}

#[derive(Deserialize)]
struct IdOnly {
    id: crate::ids::InstallationId,
}

#[derive(Deserialize)]
struct RepositoryName<'a> {
    #[serde(borrow)]
    full_name: Cow<'a, str>,
}

#[derive(Deserialize)]
struct Sender<'a> {
    id: i64,
    #[serde(borrow)]
    login: Cow<'a, str>,
}

/// A delivery or event header value we are willing to store: 1–128 printable
/// ASCII characters.
fn header_token<'h>(headers: &'h HeaderMap, name: &str) -> Result<&'h str, String> {
    let value = headers
        .get(name)
        .ok_or_else(|| format!("missing {name} header"))?;
    let value = value
        .to_str()
        .map_err(|_| format!("{name} header is not printable ASCII"))?;
    if value.is_empty() || value.len() > 128 || !value.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!("{name} header must be 1-128 printable characters"));
    }
    Ok(value)
}

async fn receive(
    State(state): State<WebhookState>,
    connection: Option<axum::Extension<ConnectionHandle>>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Response {
    let started = std::time::Instant::now();
    // Read here (not by an extractor) to say why a body did not arrive:
    // too slow (the server's body timeout) is 408, too big is 413, no room
    // in the body budget is 503. The bytes stay charged to the budget until
    // the answer.
    let (body, _charge) = match read_body(&headers, body, connection.as_deref()).await {
        Ok(read) => read,
        Err((status, why)) => {
            crate::instrument::delivery_rejected(started.elapsed());
            return reject(status, None, why);
        }
    };
    // Taken once the body is here: slow senders never hold one.
    let Ok(_in_flight) = state.in_flight.clone().try_acquire_owned() else {
        tracing::warn!("webhook requests at their limit: answered 503");
        crate::instrument::delivery_rejected(started.elapsed());
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [(axum::http::header::RETRY_AFTER, "5")],
            "too many webhook requests in flight; try again",
        )
            .into_response();
    };
    let (response, event, outcome) = receive_inner(state, &headers, body).await;
    match event {
        Some(event) => crate::instrument::delivery(event, outcome, started.elapsed()),
        None => crate::instrument::delivery_rejected(started.elapsed()),
    }
    response
}

/// Reads a request body of at most [`MAX_PAYLOAD_BYTES`], charged to the
/// connection's body budget (when served by [`crate::server`]; a router used
/// alone has no budget): a body of declared length is charged that length
/// before it is read, and its buffer grows as bytes arrive, never past that
/// length; a chunked one is charged piece by piece as it arrives.
///
/// Errors: the status and one-line reason to answer — 408 (too slow),
/// 413 (too big or longer than declared), 503 (no room in the budget),
/// 400 (broken).
async fn read_body(
    headers: &HeaderMap,
    body: axum::body::Body,
    connection: Option<&ConnectionHandle>,
) -> Result<(Bytes, Option<BodyCharge>), (StatusCode, &'static str)> {
    let too_large = (
        StatusCode::PAYLOAD_TOO_LARGE,
        "the request body is too large",
    );
    let no_room = |_| {
        tracing::warn!("request-body budget spent: answered 503");
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "too many request bodies are being read at once; try again",
        )
    };
    // hyper has checked `Content-Length` (one valid value) unless the body
    // is chunked; the body's own size hint is lost in the timeout layer.
    let declared = if headers.contains_key(axum::http::header::TRANSFER_ENCODING) {
        None
    } else {
        headers
            .get(axum::http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
    };
    let declared = match declared {
        Some(n) if n > MAX_PAYLOAD_BYTES as u64 => return Err(too_large),
        Some(n) => Some(n as usize),
        None => None,
    };
    let mut charge: Option<BodyCharge> = match (connection, declared) {
        (Some(connection), Some(n)) if n > 0 => Some(connection.charge(n).await.map_err(no_room)?),
        _ => None,
    };
    let limit = declared.unwrap_or(MAX_PAYLOAD_BYTES);
    let mut buffer: Vec<u8> = Vec::new();
    let mut stream = body.into_data_stream();
    while let Some(piece) = futures_util::StreamExt::next(&mut stream).await {
        let piece = piece.map_err(|e| {
            let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&e);
            while let Some(s) = source {
                if s.is::<tower_http::timeout::TimeoutError>() {
                    return (
                        StatusCode::REQUEST_TIMEOUT,
                        "the request body did not arrive in time",
                    );
                }
                source = s.source();
            }
            (
                StatusCode::BAD_REQUEST,
                "the request body could not be read",
            )
        })?;
        if buffer.len() + piece.len() > limit {
            return Err(too_large);
        }
        if declared.is_none()
            && let Some(connection) = connection
            && !piece.is_empty()
        {
            let more = connection.charge(piece.len()).await.map_err(no_room)?;
            match charge.as_mut() {
                Some(charge) => charge.merge(more),
                None => charge = Some(more),
            }
        }
        if buffer.is_empty() && declared == Some(piece.len()) {
            // The whole body in one piece: no copy.
            return Ok((piece, charge));
        }
        // Grow by doubling, but never past the declared length: what a
        // trickling body holds stays close to what it sent.
        let needed = buffer.len() + piece.len();
        if needed > buffer.capacity() {
            let target = (buffer.capacity() * 2).max(needed).min(limit);
            buffer.reserve_exact(target - buffer.len());
        }
        buffer.extend_from_slice(&piece);
    }
    Ok((Bytes::from(buffer), charge))
}

/// [`receive`], returning with the answer the event (once the signature
/// made it trustworthy) and the outcome, for the metrics.
async fn receive_inner(
    state: WebhookState,
    headers: &HeaderMap,
    body: Bytes,
) -> (Response, Option<&str>, &'static str) {
    // 1. Authenticate the raw bytes before looking at anything in them.
    let signature = headers.get("x-hub-signature-256").map(|v| v.as_bytes());
    if let Err(e) = state.secrets.verify(signature, &body) {
        return (
            reject(StatusCode::UNAUTHORIZED, None, e.to_string()),
            None,
            "rejected",
        );
    }

    // 2. Delivery headers.
    let delivery_id = match header_token(headers, "x-github-delivery") {
        Ok(id) => id,
        Err(e) => return (reject(StatusCode::BAD_REQUEST, None, e), None, "rejected"),
    };
    let event = match header_token(headers, "x-github-event") {
        Ok(event) => event,
        Err(e) => {
            return (
                reject(StatusCode::BAD_REQUEST, Some(delivery_id), e),
                None,
                "rejected",
            );
        }
    };
    let hook_id = headers
        .get("x-github-hook-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i64>().ok());

    // 3. The body must be one JSON object. serde_json would also accept an
    //    array for a struct, hence the explicit first-byte check.
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    if first != Some(&b'{') {
        return (
            reject(
                StatusCode::BAD_REQUEST,
                Some(delivery_id),
                "body is not a JSON object",
            ),
            Some(event),
            "rejected",
        );
    }
    let envelope: Envelope = match serde_json::from_slice(&body) {
        Ok(envelope) => envelope,
        Err(e) => {
            return (
                reject(
                    StatusCode::BAD_REQUEST,
                    Some(delivery_id),
                    format!("body is not valid webhook JSON: {e}"),
                ),
                Some(event),
                "rejected",
            );
        }
    };

    let state_at_intake = if event == "ping" {
        DeliveryState::Done
    } else if ACTED_ON_EVENTS.contains(&event) {
        DeliveryState::Queued
    } else {
        DeliveryState::Ignored
    };
    let delivery = NewDelivery {
        delivery_id: delivery_id.to_owned(),
        event: event.to_owned(),
        action: envelope.action.map(Cow::into_owned),
        hook_id,
        installation_id: envelope.installation.map(|i| i.id),
        repository: envelope.repository.map(|r| r.full_name.into_owned()),
        sender_id: envelope.sender.as_ref().map(|s| s.id),
        sender_login: envelope.sender.map(|s| s.login.into_owned()),
        payload: EncodedPayload::encode(body),
        received_at: now_ms(),
        state: state_at_intake,
    };

    // 4. Durable before the answer.
    let outcome = match tokio::time::timeout(STORE_DEADLINE, state.inbox.submit(delivery)).await {
        Ok(Ok(outcome)) => outcome,
        Ok(Err(e)) => {
            tracing::error!(delivery = delivery_id, error = %e, "inbox write failed");
            return (
                reject(
                    StatusCode::SERVICE_UNAVAILABLE,
                    Some(delivery_id),
                    "the delivery could not be stored; ask GitHub to redeliver it",
                ),
                Some(event),
                "unavailable",
            );
        }
        Err(_) => {
            tracing::error!(delivery = delivery_id, "inbox write timed out");
            return (
                reject(
                    StatusCode::SERVICE_UNAVAILABLE,
                    Some(delivery_id),
                    "the delivery could not be stored in time; ask GitHub to redeliver it",
                ),
                Some(event),
                "unavailable",
            );
        }
    };

    let (status, label) = match (outcome, state_at_intake) {
        (InsertOutcome::Duplicate, _) => (StatusCode::OK, "duplicate"),
        (InsertOutcome::Stored, DeliveryState::Done) => (StatusCode::OK, "done"),
        (InsertOutcome::Stored, DeliveryState::Ignored) => (StatusCode::ACCEPTED, "ignored"),
        (InsertOutcome::Stored, _) => (StatusCode::ACCEPTED, "queued"),
    };
    tracing::debug!(
        delivery = delivery_id,
        event,
        status = label,
        "delivery received"
    );
    let response = (
        status,
        Json(Receipt {
            delivery: Some(delivery_id.to_owned()),
            status: label.into(),
            error: None,
        }),
    )
        .into_response();
    (response, Some(event), label)
}
