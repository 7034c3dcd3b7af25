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
    id: i64,
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
    headers: HeaderMap,
    body: axum::body::Body,
) -> Response {
    let started = std::time::Instant::now();
    // Read here (not by an extractor) to say why a body did not arrive:
    // too slow (the server's body timeout) is 408, too big is 413.
    let body = match axum::body::to_bytes(body, MAX_PAYLOAD_BYTES).await {
        Ok(body) => body,
        Err(e) => {
            let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&e);
            let mut slow = false;
            while let Some(s) = source {
                slow |= s.is::<tower_http::timeout::TimeoutError>();
                source = s.source();
            }
            let (status, why) = if slow {
                (
                    StatusCode::REQUEST_TIMEOUT,
                    "the request body did not arrive in time",
                )
            } else if format!("{e:?}").contains("LengthLimit") {
                (
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "the request body is too large",
                )
            } else {
                (
                    StatusCode::BAD_REQUEST,
                    "the request body could not be read",
                )
            };
            crate::instrument::delivery_rejected(started.elapsed());
            return reject(status, None, why);
        }
    };
    let (response, event, outcome) = receive_inner(state, &headers, body).await;
    match event {
        Some(event) => crate::instrument::delivery(event, outcome, started.elapsed()),
        None => crate::instrument::delivery_rejected(started.elapsed()),
    }
    response
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
