//! Server-Sent Events for the live pages.
//!
//! * `/runs/{id}/events`: the engine's transitions of that run
//!   (`event: transition`, the [`Transition`] as JSON);
//! * `/runs/events`: every run transition, plus `event: run_created` when a
//!   run with a higher id appears (checked every second: runs created by
//!   another process, or by a delivery before the engine touched them, are
//!   not on the engine's channel).
//!
//! The engine's channel is a bounded broadcast: a slow reader that falls
//! behind gets `event: resync` instead of the lost events, and the page
//! fetches its live part again — it never shows a state it missed. A
//! comment every 15 s keeps proxies from closing an idle stream.

use crate::store::RunId;
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::{Stream, StreamExt};
use tokio::sync::broadcast::error::RecvError;

use super::DashboardState;
use super::pages::error_page;
use super::session::Viewer;
use crate::engine::Transition;
use crate::store::RunFilter;

/// How often the list stream looks for new runs.
const NEW_RUN_POLL: Duration = Duration::from_secs(1);

/// How long one event stream lives; the browser's `EventSource` then
/// reconnects (and the page resyncs), so an abandoned or hostile stream
/// never holds a connection for ever.
pub const STREAM_LIFETIME: Duration = Duration::from_secs(30 * 60);

fn sse<S>(state: &DashboardState, stream: S) -> Response
where
    S: Stream<Item = Result<Event, Infallible>> + Send + 'static,
{
    let stream = stream
        .take_until(state.streams.clone().cancelled_owned())
        .take_until(tokio::time::sleep(STREAM_LIFETIME));
    let mut r = Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response();
    r.headers_mut().insert(
        axum::http::header::CACHE_CONTROL,
        axum::http::HeaderValue::from_static("no-store"),
    );
    r
}

fn transition_event(t: &Transition) -> Event {
    Event::default()
        .event("transition")
        .data(serde_json::to_string(t).unwrap_or_else(|_| "{}".into()))
}

/// `GET /runs/{id}/events`.
pub async fn run_events(
    State(state): State<DashboardState>,
    _: Viewer,
    Path(id): Path<String>,
) -> Response {
    let Ok(id) = id.parse::<i64>() else {
        return error_page(StatusCode::NOT_FOUND, "No such run.");
    };
    match state.api.store.run(RunId(id)).await {
        Ok(Some(_)) => {}
        Ok(None) => return error_page(StatusCode::NOT_FOUND, &format!("There is no run {id}.")),
        Err(e) => {
            tracing::error!(error = %e, "dashboard: cannot read a run");
            return error_page(
                StatusCode::INTERNAL_SERVER_ERROR,
                "The database could not be read.",
            );
        }
    }
    let rx = state.api.engine.subscribe();
    let stream = futures_util::stream::unfold(rx, move |mut rx| async move {
        loop {
            match rx.recv().await {
                Ok(t) => {
                    let mine = match &t {
                        Transition::Run { run_id, .. } | Transition::Step { run_id, .. } => {
                            *run_id == RunId(id)
                        }
                    };
                    if mine {
                        return Some((Ok(transition_event(&t)), rx));
                    }
                }
                Err(RecvError::Lagged(_)) => {
                    return Some((Ok(Event::default().event("resync").data("lagged")), rx));
                }
                Err(RecvError::Closed) => return None,
            }
        }
    });
    sse(&state, stream)
}

/// `GET /runs/events`.
pub async fn runs_events(State(state): State<DashboardState>, _: Viewer) -> Response {
    let store = state.api.store.clone();
    let latest = |store: std::sync::Arc<dyn crate::store::RunStore>| async move {
        store
            .list_runs(&RunFilter {
                limit: 1,
                ..RunFilter::default()
            })
            .await
            .ok()
            .and_then(|r| r.first().map(|r| r.id))
            .unwrap_or(RunId(0))
    };
    let seen = latest(store.clone()).await;
    let rx = state.api.engine.subscribe();
    let mut tick = tokio::time::interval(NEW_RUN_POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let stream = futures_util::stream::unfold(
        (rx, tick, seen, store),
        move |(mut rx, mut tick, mut seen, store)| async move {
            loop {
                tokio::select! {
                    t = rx.recv() => match t {
                        Ok(t @ Transition::Run { .. }) => {
                            return Some((Ok(transition_event(&t)), (rx, tick, seen, store)));
                        }
                        Ok(Transition::Step { .. }) => {}
                        Err(RecvError::Lagged(_)) => {
                            let e = Event::default().event("resync").data("lagged");
                            return Some((Ok(e), (rx, tick, seen, store)));
                        }
                        Err(RecvError::Closed) => return None,
                    },
                    _ = tick.tick() => {
                        let now = latest(store.clone()).await;
                        if now > seen {
                            seen = now;
                            let e = Event::default().event("run_created").data(now.to_string());
                            return Some((Ok(e), (rx, tick, seen, store)));
                        }
                    }
                }
            }
        },
    );
    sse(&state, stream)
}
