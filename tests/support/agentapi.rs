//! A stand-in AgentAPI server (coder/agentapi 0.12,
//! `specs/agentapi-openapi.json`) on 127.0.0.1, with knobs for the ways a
//! real one misbehaves: slow start-up, a busy agent, an agent that never
//! becomes stable, a dropped event stream, no `/events` at all.
//!
//! It follows the spec where the adapter can tell: message 0 is the start-up
//! banner; a `user` message is refused with HTTP 500 problem+json unless the
//! status is `stable`; while the agent works its latest message is rewritten
//! in place under the same id; `/events` replays the current state on
//! connect (`message_update` carries the text in `message`), then streams
//! changes; `raw` messages are keystrokes and are not stored.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use tokio::sync::broadcast;

pub const BANNER: &str =
    "╭──────────────────────────╮\n│ ✻ Welcome to Claude Code! │\n╰──────────────────────────╯";
pub const BUSY: &str =
    "failed to send message: message can only be sent when the agent is waiting for user input";
const TIME: &str = "2025-06-01T12:00:00Z";

/// How the stand-in agent behaves.
#[derive(Debug, Clone)]
pub struct Behavior {
    /// How long the agent reports `running` after start-up.
    pub startup: Duration,
    /// How long a turn works before the answer.
    pub work: Duration,
    /// Progress rewrites of the agent message during a turn.
    pub updates: u32,
    /// The final answer; `{prompt}` is replaced by the prompt.
    pub answer: String,
    /// Appended to the answer when the prompt asks for a verdict report
    /// (taskmaster's validation steps), as a real agent following the
    /// instructions would: the last fenced json block.
    pub verdict: Option<String>,
    /// Keep working (and rewriting the message) until interrupted.
    pub never_stable: bool,
    /// While working, change nothing on screen (for idle timeouts).
    pub silent: bool,
    /// Refuse every `user` message as busy, whatever the status.
    pub busy_on_post: bool,
    /// Close this many `/events` connections right after the replay.
    pub drop_streams: u32,
    /// Answer 404 on `/events` (an AgentAPI without SSE).
    pub no_events: bool,
}

impl Default for Behavior {
    fn default() -> Self {
        Self {
            startup: Duration::ZERO,
            work: Duration::from_millis(300),
            updates: 3,
            answer: "Done: {prompt}".into(),
            verdict: Some(
                "\n```json\n{\"verdict\":\"pass\",\"summary\":\"Stand-in review: nothing \
                 found.\",\"findings\":[]}\n```\n"
                    .into(),
            ),
            never_stable: false,
            silent: false,
            busy_on_post: false,
            drop_streams: 0,
            no_events: false,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Msg {
    pub id: i64,
    pub role: &'static str,
    pub content: String,
}

#[derive(Debug, Default)]
pub struct Recorded {
    pub status: String,
    pub messages: Vec<Msg>,
    /// `raw` messages received (keystrokes).
    pub raws: Vec<String>,
    /// `user` messages received, refused or not.
    pub user_posts: u32,
    pub event_connections: u32,
    interrupted: bool,
}

#[derive(Clone)]
struct Shared {
    behavior: Arc<Mutex<Behavior>>,
    state: Arc<Mutex<Recorded>>,
    events: broadcast::Sender<String>,
}

pub struct StandIn {
    pub addr: SocketAddr,
    shared: Shared,
}

impl StandIn {
    pub async fn start(behavior: Behavior) -> Self {
        Self::start_on(behavior, 0).await
    }

    /// Starts on 127.0.0.1:`port` (0: any free port).
    pub async fn start_on(behavior: Behavior, port: u16) -> Self {
        let (events, _) = broadcast::channel(1024);
        let shared = Shared {
            behavior: Arc::new(Mutex::new(behavior.clone())),
            state: Arc::new(Mutex::new(Recorded {
                status: if behavior.startup.is_zero() {
                    "stable".into()
                } else {
                    "running".into()
                },
                messages: vec![Msg {
                    id: 0,
                    role: "agent",
                    content: BANNER.into(),
                }],
                ..Recorded::default()
            })),
            events,
        };
        if !behavior.startup.is_zero() {
            let s = shared.clone();
            tokio::spawn(async move {
                tokio::time::sleep(behavior.startup).await;
                set_status(&s, "stable");
            });
        }
        let app = axum::Router::new()
            .route("/status", get(status))
            .route("/messages", get(messages))
            .route("/message", post(message))
            .route("/events", get(events_handler))
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { addr, shared }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn recorded<T>(&self, f: impl FnOnce(&Recorded) -> T) -> T {
        f(&self.shared.state.lock().unwrap())
    }

    pub fn set_behavior(&self, f: impl FnOnce(&mut Behavior)) {
        f(&mut self.shared.behavior.lock().unwrap());
    }
}

/// An address where nothing listens (connection refused).
pub async fn refused_url() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{addr}")
}

fn sse(event: &str, data: Value) -> String {
    format!("event: {event}\ndata: {data}\n\n")
}

fn set_status(s: &Shared, status: &str) {
    let agent_type = "claude";
    s.state.lock().unwrap().status = status.into();
    let _ = s.events.send(sse(
        "status_change",
        json!({"status": status, "agent_type": agent_type}),
    ));
}

fn upsert_agent_message(s: &Shared, id: i64, content: String) {
    {
        let mut st = s.state.lock().unwrap();
        match st.messages.iter_mut().find(|m| m.id == id) {
            Some(m) => m.content = content.clone(),
            None => st.messages.push(Msg {
                id,
                role: "agent",
                content: content.clone(),
            }),
        }
    }
    let _ = s.events.send(sse(
        "message_update",
        json!({"id": id, "role": "agent", "message": content, "time": TIME}),
    ));
}

fn problem(status: StatusCode, detail: &str, message: &str) -> Response {
    let body = json!({
        "$schema": "http://localhost:3284/schemas/ErrorModel.json",
        "title": status.canonical_reason().unwrap_or(""),
        "status": status.as_u16(),
        "detail": detail,
        "errors": [{"message": message}],
    });
    (
        status,
        [(header::CONTENT_TYPE, "application/problem+json")],
        body.to_string(),
    )
        .into_response()
}

async fn status(State(s): State<Shared>) -> Json<Value> {
    let status = s.state.lock().unwrap().status.clone();
    Json(json!({
        "$schema": "http://localhost:3284/schemas/StatusResponseBody.json",
        "agent_type": "claude",
        "status": status,
        "transport": "pty",
    }))
}

async fn messages(State(s): State<Shared>) -> Json<Value> {
    let st = s.state.lock().unwrap();
    let messages: Vec<Value> = st
        .messages
        .iter()
        .map(|m| json!({"id": m.id, "role": m.role, "content": m.content, "time": TIME}))
        .collect();
    Json(json!({"messages": messages}))
}

async fn message(State(s): State<Shared>, body: axum::body::Bytes) -> Response {
    let Ok(body) = serde_json::from_slice::<Value>(&body) else {
        return problem(
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation failed",
            "expected JSON",
        );
    };
    let (Some(content), Some(kind)) = (body["content"].as_str(), body["type"].as_str()) else {
        return problem(
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation failed",
            "expected required property content and type",
        );
    };
    let behavior = s.behavior.lock().unwrap().clone();
    match kind {
        "raw" => {
            let mut st = s.state.lock().unwrap();
            st.raws.push(content.to_owned());
            if st.status == "running" && (content == "\u{1b}" || content == "\u{3}") {
                st.interrupted = true;
            }
            Json(json!({"ok": true})).into_response()
        }
        "user" => {
            let id = {
                let mut st = s.state.lock().unwrap();
                st.user_posts += 1;
                if behavior.busy_on_post || st.status != "stable" {
                    drop(st);
                    return problem(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "Failed to send message",
                        BUSY,
                    );
                }
                let id = st.messages.last().map(|m| m.id).unwrap_or(-1) + 1;
                st.messages.push(Msg {
                    id,
                    role: "user",
                    content: content.to_owned(),
                });
                st.interrupted = false;
                id
            };
            let _ = s.events.send(sse(
                "message_update",
                json!({"id": id, "role": "user", "message": content, "time": TIME}),
            ));
            set_status(&s, "running");
            upsert_agent_message(&s, id + 1, "✻ Thinking…".into());
            let worker = s.clone();
            let prompt = content.to_owned();
            tokio::spawn(work(worker, behavior, id + 1, prompt));
            // AgentAPI answers once the agent has started on the task.
            Json(json!({"ok": true})).into_response()
        }
        _ => problem(
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation failed",
            "expected value to be one of \"user, raw\"",
        ),
    }
}

async fn work(s: Shared, behavior: Behavior, id: i64, prompt: String) {
    let interrupted = |s: &Shared| s.state.lock().unwrap().interrupted;
    let step = behavior.work / behavior.updates.max(1);
    let mut i = 0u32;
    loop {
        tokio::time::sleep(step.max(Duration::from_millis(10))).await;
        if interrupted(&s) {
            upsert_agent_message(&s, id, "Interrupted by user".into());
            set_status(&s, "stable");
            return;
        }
        i += 1;
        if !behavior.never_stable && i > behavior.updates {
            break;
        }
        if !behavior.silent {
            upsert_agent_message(&s, id, format!("✻ Working… step {i}"));
        }
    }
    let mut answer = behavior.answer.replace("{prompt}", &prompt);
    if let Some(verdict) = behavior
        .verdict
        .as_deref()
        .filter(|_| prompt.contains("holding your verdict"))
    {
        answer.push_str(verdict);
    }
    upsert_agent_message(&s, id, answer);
    set_status(&s, "stable");
}

async fn events_handler(State(s): State<Shared>) -> Response {
    let (drop_now, no_events) = {
        let mut b = s.behavior.lock().unwrap();
        let drop_now = b.drop_streams > 0;
        if drop_now {
            b.drop_streams -= 1;
        }
        (drop_now, b.no_events)
    };
    if no_events {
        return problem(StatusCode::NOT_FOUND, "Not Found", "no such route");
    }
    let rx = s.events.subscribe();
    let replay = {
        let mut st = s.state.lock().unwrap();
        st.event_connections += 1;
        let mut replay: Vec<String> = st
            .messages
            .iter()
            .map(|m| {
                sse(
                    "message_update",
                    json!({"id": m.id, "role": m.role, "message": m.content, "time": TIME}),
                )
            })
            .collect();
        replay.push(sse(
            "status_change",
            json!({"status": st.status, "agent_type": "claude"}),
        ));
        replay
    };
    let replay = futures_util::stream::iter(
        replay
            .into_iter()
            .map(|e| Ok::<_, std::convert::Infallible>(bytes::Bytes::from(e))),
    );
    let live = futures_util::stream::unfold((rx, drop_now), |(mut rx, drop_now)| async move {
        if drop_now {
            return None;
        }
        loop {
            match rx.recv().await {
                Ok(event) => {
                    return Some((Ok(bytes::Bytes::from(event)), (rx, drop_now)));
                }
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    });
    use futures_util::StreamExt;
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(replay.chain(live)))
        .unwrap()
}
