//! The service's own HTTP API. For now: `GET /api/health`.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;

use crate::store::{InboxDepth, Store};

/// How long the health check waits for the database.
const HEALTH_DEADLINE: Duration = Duration::from_secs(2);

/// The body of `GET /api/health`.
#[derive(Debug, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct Health {
    /// `ok` or `unavailable`.
    pub status: String,
    /// The crate version.
    pub version: String,
    /// `ok`, or the database error.
    pub database: String,
    /// Deliveries waiting for or in the dispatcher; absent when the database is down.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inbox: Option<InboxDepthBody>,
}

/// Inbox depth as reported by the health check.
#[derive(Debug, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct InboxDepthBody {
    pub queued: i64,
    pub processing: i64,
}

impl From<InboxDepth> for InboxDepthBody {
    fn from(d: InboxDepth) -> Self {
        InboxDepthBody {
            queued: d.queued,
            processing: d.processing,
        }
    }
}

/// Routes of the API.
pub fn router(store: Arc<dyn Store>) -> Router {
    Router::new()
        .route("/api/health", get(health))
        .with_state(store)
}

/// `GET /api/health`: 200 with version, database status and inbox depth; 503
/// when the database cannot be reached within 2 s.
async fn health(State(store): State<Arc<dyn Store>>) -> Response {
    let probe = async {
        store.ping().await?;
        store.inbox_depth().await
    };
    let (code, database, inbox) = match tokio::time::timeout(HEALTH_DEADLINE, probe).await {
        Ok(Ok(depth)) => (StatusCode::OK, "ok".to_string(), Some(depth.into())),
        Ok(Err(e)) => (StatusCode::SERVICE_UNAVAILABLE, e.to_string(), None),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "database timed out".to_string(),
            None,
        ),
    };
    let body = Health {
        status: if code == StatusCode::OK {
            "ok"
        } else {
            "unavailable"
        }
        .into(),
        version: env!("CARGO_PKG_VERSION").into(),
        database,
        inbox,
    };
    (code, Json(body)).into_response()
}
