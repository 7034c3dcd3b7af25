//! A scripted stand-in of Anthropic's Messages API (`POST /v1/messages`,
//! streaming or not), for running the real Claude Code CLI with
//! `ANTHROPIC_BASE_URL` pointing here.
//!
//! The script: a request that offers tools and does not yet carry a tool
//! result is answered with one `tool_use` of `Write` (`file_path`,
//! `content` as configured; skipped when `file_path` is empty); when the
//! CLI offers its `StructuredOutput` tool (`claude --json-schema`) and the
//! script has a `structured` answer, the next turn calls that tool with it;
//! every other request is answered with the configured text and `end_turn`. Streaming answers follow the documented
//! event order: `message_start`, per block `content_block_start` /
//! `content_block_delta` (`text_delta` or `input_json_delta`) /
//! `content_block_stop`, then `message_delta` and `message_stop`.
//! Source: <https://docs.anthropic.com/en/api/messages-streaming>.

use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// What the stand-in answers.
#[derive(Debug, Clone)]
pub struct Script {
    /// The file the one tool call writes (relative to the agent's working directory).
    pub file_path: String,
    /// What it writes.
    pub content: String,
    /// The final answer's text.
    pub answer: String,
    /// The object passed to Claude Code's `StructuredOutput` tool, offered
    /// when it runs with `--json-schema`.
    pub structured: Option<Value>,
}

struct Inner {
    script: Script,
    requests: Mutex<Vec<Value>>,
}

/// The running stand-in.
pub struct MessagesApi {
    pub base_url: String,
    inner: Arc<Inner>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for MessagesApi {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl MessagesApi {
    pub async fn start(script: Script) -> Self {
        let inner = Arc::new(Inner {
            script,
            requests: Mutex::new(Vec::new()),
        });
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        MessagesApi {
            base_url: format!("http://{addr}"),
            inner,
            task,
        }
    }

    /// The bodies of every `POST /v1/messages` so far.
    pub fn requests(&self) -> Vec<Value> {
        self.inner.requests.lock().unwrap().clone()
    }
}

fn has_tool_result(req: &Value) -> bool {
    req["messages"]
        .as_array()
        .and_then(|m| m.last())
        .and_then(|m| m["content"].as_array())
        .is_some_and(|c| c.iter().any(|b| b["type"] == "tool_result"))
}

/// Whether an earlier turn already called `StructuredOutput`.
fn called_structured_output(req: &Value) -> bool {
    req["messages"].as_array().is_some_and(|m| {
        m.iter().any(|msg| {
            msg["content"].as_array().is_some_and(|c| {
                c.iter()
                    .any(|b| b["type"] == "tool_use" && b["name"] == "StructuredOutput")
            })
        })
    })
}

fn offers_tool(req: &Value, name: &str) -> bool {
    req["tools"]
        .as_array()
        .is_some_and(|t| t.iter().any(|t| t["name"] == name))
}

async fn handle(
    State(inner): State<Arc<Inner>>,
    method: Method,
    uri: Uri,
    body: Bytes,
) -> Response {
    if method == Method::HEAD {
        return StatusCode::OK.into_response();
    }
    if method != Method::POST || uri.path() != "/v1/messages" {
        return StatusCode::NOT_FOUND.into_response();
    }
    let req: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    inner.requests.lock().unwrap().push(req.clone());
    let offers_tools = req["tools"].as_array().is_some_and(|t| !t.is_empty());
    let script = &inner.script;
    let (block, stop) = if offers_tools && !has_tool_result(&req) && !script.file_path.is_empty() {
        (
            json!({"type": "tool_use", "id": "toolu_01", "name": "Write",
                   "input": {"file_path": script.file_path, "content": script.content}}),
            "tool_use",
        )
    } else if let Some(structured) = script
        .structured
        .as_ref()
        .filter(|_| offers_tool(&req, "StructuredOutput") && !called_structured_output(&req))
    {
        (
            json!({"type": "tool_use", "id": "toolu_02", "name": "StructuredOutput",
                   "input": structured}),
            "tool_use",
        )
    } else {
        (json!({"type": "text", "text": script.answer}), "end_turn")
    };
    let model = req["model"].clone();
    if req["stream"] != json!(true) {
        return axum::Json(json!({
            "id": "msg_01", "type": "message", "role": "assistant", "model": model,
            "content": [block], "stop_reason": stop, "stop_sequence": null,
            "usage": {"input_tokens": 10, "output_tokens": 5}
        }))
        .into_response();
    }
    let mut sse = String::new();
    let mut event = |name: &str, data: Value| {
        sse.push_str(&format!("event: {name}\ndata: {data}\n\n"));
    };
    event(
        "message_start",
        json!({"type": "message_start", "message": {"id": "msg_01", "type": "message",
            "role": "assistant", "model": model, "content": [], "stop_reason": null,
            "stop_sequence": null, "usage": {"input_tokens": 10, "output_tokens": 1}}}),
    );
    if block["type"] == "text" {
        event(
            "content_block_start",
            json!({"type": "content_block_start", "index": 0,
                   "content_block": {"type": "text", "text": ""}}),
        );
        event(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0,
                   "delta": {"type": "text_delta", "text": block["text"]}}),
        );
    } else {
        event(
            "content_block_start",
            json!({"type": "content_block_start", "index": 0,
                   "content_block": {"type": "tool_use", "id": block["id"], "name": block["name"], "input": {}}}),
        );
        event(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0,
                   "delta": {"type": "input_json_delta", "partial_json": block["input"].to_string()}}),
        );
    }
    event(
        "content_block_stop",
        json!({"type": "content_block_stop", "index": 0}),
    );
    event(
        "message_delta",
        json!({"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": null},
               "usage": {"output_tokens": 5}}),
    );
    event("message_stop", json!({"type": "message_stop"}));
    ([("content-type", "text/event-stream")], sse).into_response()
}
