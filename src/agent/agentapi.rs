//! The `agentapi` adapter: one turn with an agent behind
//! [coder/agentapi](https://github.com/coder/agentapi) (Claude Code, Aider,
//! Goose, Codex, … in a terminal, served over HTTP).
//!
//! Spec: `specs/agentapi-openapi.json` (AgentAPI 0.12) and
//! `AGENT_PROTOCOLS.md` §1. One turn, done right:
//!
//! 1. wait until `GET /status` says `stable` (the agent may still be
//!    starting, or finishing someone else's turn), under a start-up timeout;
//! 2. note the newest message id, then `POST /message`
//!    `{"content": prompt, "type": "user"}`. AgentAPI answers only once the
//!    agent has *started* working, so any `stable` seen afterwards is the end
//!    of our turn. A `user` message sent while the agent is not `stable` is
//!    refused with **HTTP 500** `application/problem+json` whose
//!    `errors[].message` says "message can only be sent when the agent is
//!    waiting for user input": that is [`FailureKind::Busy`], transient;
//! 3. follow `GET /events` (Server-Sent Events) until a `status_change` to
//!    `stable`. The server replays the current state on connect and has no
//!    event ids, so a dropped stream is simply reconnected (with backoff);
//!    while it is down, and when `/events` is missing, `GET /status` is
//!    polled instead. Two timeouts run throughout: the wall clock (the
//!    attempt's deadline or the agent's `timeout`, whichever is first) and an
//!    idle timeout (no message changed for that long: `stable` only means
//!    the screen stopped changing for ~2 s, and a stuck agent may never get
//!    there);
//! 4. the answer is the last `role: "agent"` message newer than our prompt in
//!    `GET /messages` (terminal-rendered text, wrapped at 80 columns).
//!
//! On cancel or timeout the adapter writes the agent's interrupt keystroke
//! (`POST /message` with `"type": "raw"`; Escape for Claude Code, Ctrl-C for
//! the others by default) so it stops working, and returns without waiting
//! for it to settle.
//!
//! AgentAPI serves one conversation and has no authentication, so one
//! adapter runs one turn at a time (attempts queue on a lock, within their
//! deadlines), and the server belongs on loopback or a private network.

use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::json;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{
    Agent, AgentKind, AttemptOutcome, AttemptRequest, ErrorClass, Failure, FailureKind, Health,
    OutputPolicy,
};

/// AgentAPI's default port (`agentapi server --port`, default 3284).
pub const DEFAULT_PORT: u16 = 3284;

/// The keystroke that interrupts Claude Code (Escape).
pub const INTERRUPT_ESCAPE: &str = "\u{1b}";
/// The keystroke that interrupts most terminal agents (Ctrl-C).
pub const INTERRUPT_CTRL_C: &str = "\u{3}";

/// The text of AgentAPI's refusal of a `user` message while the agent works.
const BUSY_TEXT: &str = "message can only be sent when the agent is waiting for user input";

/// Settings of one AgentAPI agent.
#[derive(Debug, Clone)]
pub struct AgentApiSettings {
    /// The agent's name.
    pub name: String,
    /// Base URL of the AgentAPI server, e.g. `http://localhost:3284`.
    pub endpoint: String,
    /// Longest wall-clock time of one turn, whatever the attempt's deadline.
    pub timeout: Duration,
    /// Fail when no message changes for this long.
    pub idle_timeout: Duration,
    /// How long to wait for `stable` before sending the prompt.
    pub startup_timeout: Duration,
    /// Interval of `/status` polling (start-up, and when `/events` is down).
    pub poll_interval: Duration,
    /// Timeout of each short request (`/status`, `/messages`).
    pub request_timeout: Duration,
    /// Keystrokes sent as a `raw` message on cancel or timeout.
    pub interrupt: String,
    /// Output cap and redaction.
    pub output: OutputPolicy,
}

impl AgentApiSettings {
    /// Defaults: 1 h turn, 10 min idle, 60 s start-up, 500 ms polling, 10 s
    /// requests, Escape as the interrupt.
    pub fn new(name: impl Into<String>, endpoint: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            endpoint: endpoint.into(),
            timeout: Duration::from_secs(3600),
            idle_timeout: Duration::from_secs(600),
            startup_timeout: Duration::from_secs(60),
            poll_interval: Duration::from_millis(500),
            request_timeout: Duration::from_secs(10),
            interrupt: INTERRUPT_ESCAPE.to_owned(),
            output: OutputPolicy::default(),
        }
    }
}

/// `GET /status`.
#[derive(Debug, Deserialize)]
struct StatusBody {
    status: String,
    #[serde(default)]
    agent_type: Option<String>,
    #[serde(default)]
    transport: Option<String>,
}

/// One entry of `GET /messages`.
#[derive(Debug, Clone, Deserialize)]
struct Message {
    id: i64,
    role: String,
    content: String,
}

#[derive(Debug, Deserialize)]
struct MessagesBody {
    messages: Vec<Message>,
}

/// `event: message_update` data (the text is in `message`, not `content`).
#[derive(Debug, Deserialize)]
struct MessageUpdate {
    id: i64,
    #[serde(default)]
    message: String,
}

/// `event: status_change` data.
#[derive(Debug, Deserialize)]
struct StatusChange {
    status: String,
}

/// `event: agent_error` data.
#[derive(Debug, Deserialize)]
struct AgentError {
    message: String,
    #[serde(default)]
    level: String,
}

/// RFC 9457 problem details as AgentAPI (huma) writes them.
#[derive(Debug, Default, Deserialize)]
struct Problem {
    #[serde(default)]
    title: Option<String>,
    #[serde(default)]
    detail: Option<String>,
    #[serde(default)]
    errors: Option<Vec<ProblemDetail>>,
}

#[derive(Debug, Deserialize)]
struct ProblemDetail {
    #[serde(default)]
    message: Option<String>,
}

impl Problem {
    /// Every human-readable part, joined.
    fn text(&self) -> String {
        let mut parts: Vec<&str> = Vec::new();
        parts.extend(self.title.as_deref());
        parts.extend(self.detail.as_deref());
        for e in self.errors.iter().flatten() {
            parts.extend(e.message.as_deref());
        }
        parts.join(": ")
    }
}

/// Why waiting stopped early.
enum Stop {
    Failed(Failure),
    Timeout,
    Idle,
    Cancelled,
}

/// The `agentapi` agent (see the module docs).
#[derive(Debug)]
pub struct AgentApiAgent {
    settings: AgentApiSettings,
    client: reqwest::Client,
    /// One turn at a time: the server holds one conversation.
    turn: tokio::sync::Mutex<()>,
}

/// Tracks the newest message to tell real activity from replays.
#[derive(Default)]
struct Activity {
    newest: Option<(i64, String)>,
    errors: Vec<String>,
}

impl Activity {
    /// Records a message; returns whether it is new or changed.
    fn saw(&mut self, id: i64, content: &str) -> bool {
        match &self.newest {
            Some((newest, text)) if id < *newest || (id == *newest && text == content) => false,
            _ => {
                self.newest = Some((id, content.to_owned()));
                true
            }
        }
    }
}

impl AgentApiAgent {
    /// An adapter for the server at `settings.endpoint`.
    ///
    /// # Errors
    /// When the HTTP client cannot be built (TLS initialisation).
    pub fn new(settings: AgentApiSettings) -> Result<Self, reqwest::Error> {
        let client = super::http_client_builder()
            .connect_timeout(Duration::from_secs(5))
            .build()?;
        Ok(Self {
            settings,
            client,
            turn: tokio::sync::Mutex::new(()),
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.settings.endpoint.trim_end_matches('/'))
    }

    fn unreachable(&self, e: &reqwest::Error) -> Failure {
        let (kind, what) = if e.is_timeout() {
            (FailureKind::Timeout, "timed out")
        } else if e.is_connect() {
            (FailureKind::Unreachable, "cannot connect")
        } else {
            (FailureKind::Unreachable, "request failed")
        };
        Failure {
            class: ErrorClass::Transient,
            kind,
            message: format!(
                "AgentAPI agent `{}` at {}: {what} ({}); is `agentapi server` running there?",
                self.settings.name,
                self.settings.endpoint,
                error_chain(e)
            ),
        }
    }

    async fn status(&self) -> Result<StatusBody, Failure> {
        let response = self
            .client
            .get(self.url("/status"))
            .timeout(self.settings.request_timeout)
            .send()
            .await
            .map_err(|e| self.unreachable(&e))?;
        self.json(response, "/status").await
    }

    async fn messages(&self) -> Result<Vec<Message>, Failure> {
        let response = self
            .client
            .get(self.url("/messages"))
            .timeout(self.settings.request_timeout)
            .send()
            .await
            .map_err(|e| self.unreachable(&e))?;
        Ok(self
            .json::<MessagesBody>(response, "/messages")
            .await?
            .messages)
    }

    async fn json<T: serde::de::DeserializeOwned>(
        &self,
        response: reqwest::Response,
        path: &str,
    ) -> Result<T, Failure> {
        let status = response.status();
        let body = response.bytes().await.map_err(|e| self.unreachable(&e))?;
        if !status.is_success() {
            let problem: Problem = serde_json::from_slice(&body).unwrap_or_default();
            return Err(Failure {
                class: ErrorClass::Transient,
                kind: FailureKind::Protocol,
                message: format!(
                    "AgentAPI `GET {path}` answered HTTP {status}: {}",
                    problem.text()
                ),
            });
        }
        serde_json::from_slice(&body).map_err(|e| Failure {
            class: ErrorClass::Transient,
            kind: FailureKind::Protocol,
            message: format!(
                "AgentAPI `GET {path}` answered JSON that does not follow the AgentAPI spec: {e}"
            ),
        })
    }

    /// `POST /message`.
    async fn send(&self, content: &str, kind: &str, timeout: Duration) -> Result<(), Failure> {
        let response = self
            .client
            .post(self.url("/message"))
            .timeout(timeout)
            .json(&json!({ "content": content, "type": kind }))
            .send()
            .await
            .map_err(|e| self.unreachable(&e))?;
        let status = response.status();
        let body = response.bytes().await.unwrap_or_default();
        if status.is_success() {
            #[derive(Deserialize)]
            struct Ok {
                ok: bool,
            }
            return match serde_json::from_slice::<Ok>(&body) {
                Ok(Ok { ok: true }) => Ok(()),
                _ => Err(Failure {
                    class: ErrorClass::Transient,
                    kind: FailureKind::Protocol,
                    message: "AgentAPI accepted the message but did not answer `{\"ok\": true}`"
                        .into(),
                }),
            };
        }
        let problem: Problem = serde_json::from_slice(&body).unwrap_or_default();
        let text = problem.text();
        Err(if text.contains(BUSY_TEXT) {
            Failure {
                class: ErrorClass::Transient,
                kind: FailureKind::Busy,
                message: format!(
                    "AgentAPI agent `{}` is busy (it was not waiting for input): {text}",
                    self.settings.name
                ),
            }
        } else if status.is_client_error() {
            Failure {
                class: ErrorClass::Permanent,
                kind: FailureKind::Protocol,
                message: format!("AgentAPI refused the message with HTTP {status}: {text}"),
            }
        } else {
            Failure {
                class: ErrorClass::Transient,
                kind: FailureKind::Protocol,
                message: format!("AgentAPI failed to take the message: HTTP {status}: {text}"),
            }
        })
    }

    /// Step 1: poll `/status` until `stable`.
    async fn wait_stable(&self, until: Instant, cancel: &CancellationToken) -> Result<(), Stop> {
        loop {
            if self.status().await.map_err(Stop::Failed)?.status == "stable" {
                return Ok(());
            }
            let next = Instant::now() + self.settings.poll_interval;
            if next >= until {
                return Err(Stop::Timeout);
            }
            if !super::sleep_or_cancel(next, cancel).await {
                return Err(Stop::Cancelled);
            }
        }
    }

    /// Step 3: follow `/events` (or poll `/status`) until `stable`.
    async fn follow(
        &self,
        deadline: Instant,
        cancel: &CancellationToken,
        activity: &mut Activity,
    ) -> Result<(), Stop> {
        let mut last_change = Instant::now();
        let mut backoff = Duration::from_millis(100);
        let mut events_supported = true;
        loop {
            if events_supported {
                match self
                    .stream_events(deadline, cancel, activity, &mut last_change)
                    .await
                {
                    StreamEnd::Stable => return Ok(()),
                    StreamEnd::Stop(stop) => return Err(stop),
                    StreamEnd::Unsupported => events_supported = false,
                    StreamEnd::Dropped(why) => {
                        tracing::debug!(agent = %self.settings.name, why, "AgentAPI event stream dropped; polling /status, then reconnecting");
                    }
                }
            }
            // Fallback (and between reconnects): one /status and /messages poll.
            match self.status().await {
                Ok(status) if status.status == "stable" => return Ok(()),
                Ok(_) => backoff = Duration::from_millis(100),
                Err(failure) if failure.kind == FailureKind::Unreachable => {
                    // The server went away mid-turn: keep trying until a
                    // timeout, with backoff; it may come back.
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
                Err(failure) => return Err(Stop::Failed(failure)),
            }
            if let Ok(messages) = self.messages().await
                && let Some(last) = messages.last()
                && activity.saw(last.id, &last.content)
            {
                last_change = Instant::now();
            }
            let wait = if events_supported {
                backoff
            } else {
                self.settings.poll_interval
            };
            let idle_at = last_change + self.settings.idle_timeout;
            let next = Instant::now() + wait;
            tokio::select! {
                _ = tokio::time::sleep_until(next) => {}
                _ = tokio::time::sleep_until(deadline) => return Err(Stop::Timeout),
                _ = tokio::time::sleep_until(idle_at) => return Err(Stop::Idle),
                _ = cancel.cancelled() => return Err(Stop::Cancelled),
            }
        }
    }

    async fn stream_events(
        &self,
        deadline: Instant,
        cancel: &CancellationToken,
        activity: &mut Activity,
        last_change: &mut Instant,
    ) -> StreamEnd {
        let connect = self
            .client
            .get(self.url("/events"))
            .header("accept", "text/event-stream")
            .send();
        let response = tokio::select! {
            r = connect => r,
            _ = tokio::time::sleep_until(deadline) => return StreamEnd::Stop(Stop::Timeout),
            _ = cancel.cancelled() => return StreamEnd::Stop(Stop::Cancelled),
        };
        let response = match response {
            Ok(r) => r,
            Err(e) => return StreamEnd::Dropped(error_chain(&e)),
        };
        if matches!(response.status().as_u16(), 404 | 405) {
            return StreamEnd::Unsupported;
        }
        if !response.status().is_success() {
            return StreamEnd::Dropped(format!("HTTP {}", response.status()));
        }
        let mut body = response.bytes_stream();
        let mut parser = SseParser::default();
        loop {
            let idle_at = *last_change + self.settings.idle_timeout;
            let chunk = tokio::select! {
                c = body.next() => c,
                _ = tokio::time::sleep_until(deadline) => return StreamEnd::Stop(Stop::Timeout),
                _ = tokio::time::sleep_until(idle_at) => return StreamEnd::Stop(Stop::Idle),
                _ = cancel.cancelled() => return StreamEnd::Stop(Stop::Cancelled),
            };
            let bytes = match chunk {
                Some(Ok(bytes)) => bytes,
                Some(Err(e)) => return StreamEnd::Dropped(error_chain(&e)),
                None => return StreamEnd::Dropped("end of stream".into()),
            };
            for event in parser.push(&bytes) {
                match event.event.as_str() {
                    "status_change" => {
                        if let Ok(change) = serde_json::from_str::<StatusChange>(&event.data)
                            && change.status == "stable"
                        {
                            return StreamEnd::Stable;
                        }
                    }
                    "message_update" => {
                        if let Ok(update) = serde_json::from_str::<MessageUpdate>(&event.data)
                            && activity.saw(update.id, &update.message)
                        {
                            *last_change = Instant::now();
                        }
                    }
                    "agent_error" => {
                        if let Ok(error) = serde_json::from_str::<AgentError>(&event.data) {
                            let level = if error.level.is_empty() {
                                "error"
                            } else {
                                &error.level
                            };
                            activity.errors.push(format!("{level}: {}", error.message));
                        }
                    }
                    _ => {}
                }
            }
        }
    }

    /// Best effort: stop whatever the agent is doing.
    async fn interrupt(&self) {
        if self.settings.interrupt.is_empty() {
            return;
        }
        if let Err(failure) = self
            .send(&self.settings.interrupt, "raw", Duration::from_secs(3))
            .await
        {
            tracing::warn!(agent = %self.settings.name, error = %self.settings.output.message(&failure.message), "could not interrupt the agent");
        }
    }

    /// The last agent message newer than `after`.
    fn answer(messages: &[Message], after: i64) -> Option<&Message> {
        messages
            .iter()
            .rev()
            .find(|m| m.role == "agent" && m.id > after)
    }
}

enum StreamEnd {
    Stable,
    Stop(Stop),
    Unsupported,
    Dropped(String),
}

#[async_trait]
impl Agent for AgentApiAgent {
    fn name(&self) -> &str {
        &self.settings.name
    }

    fn kind(&self) -> AgentKind {
        AgentKind::Agentapi
    }

    async fn run(&self, attempt: AttemptRequest) -> AttemptOutcome {
        let started = Instant::now();
        let out = &self.settings.output;
        let deadline = attempt.deadline.min(started + self.settings.timeout);
        let cancel = &attempt.cancel;
        let fail = |failure: Failure, output: &str| {
            AttemptOutcome::failed(
                failure.class,
                failure.kind,
                out.message(&failure.message),
                out.output(output),
                started,
            )
        };
        let timeout_failure = |what: &str| Failure {
            class: ErrorClass::Transient,
            kind: FailureKind::Timeout,
            message: format!("AgentAPI agent `{}`: {what}", self.settings.name),
        };
        let cancelled = || Failure {
            class: ErrorClass::Permanent,
            kind: FailureKind::Cancelled,
            message: "cancelled".into(),
        };

        // One turn at a time.
        let _turn = tokio::select! {
            guard = self.turn.lock() => guard,
            _ = tokio::time::sleep_until(deadline) => return fail(timeout_failure("timed out waiting for the previous turn on this agent to end"), ""),
            _ = cancel.cancelled() => return fail(cancelled(), ""),
        };

        // 1. Wait for `stable`.
        let startup_until = deadline.min(Instant::now() + self.settings.startup_timeout);
        match self.wait_stable(startup_until, cancel).await {
            Ok(()) => {}
            Err(Stop::Failed(failure)) => return fail(failure, ""),
            Err(Stop::Cancelled) => return fail(cancelled(), ""),
            Err(Stop::Timeout | Stop::Idle) => {
                return fail(
                    Failure {
                        class: ErrorClass::Transient,
                        kind: FailureKind::Busy,
                        message: format!(
                            "AgentAPI agent `{}` did not become `stable` (ready for input) within {:.0} s: it is still starting or busy with another turn",
                            self.settings.name,
                            startup_until
                                .saturating_duration_since(started)
                                .as_secs_f64()
                        ),
                    },
                    "",
                );
            }
        }

        // 2. Send the prompt, remembering where the conversation stood.
        let before = match self.messages().await {
            Ok(messages) => messages.iter().map(|m| m.id).max().unwrap_or(-1),
            Err(failure) => return fail(failure, ""),
        };
        let prompt = out.redactor.redact(&attempt.prompt);
        let remaining = deadline.saturating_duration_since(Instant::now());
        let send = self.send(&prompt, "user", remaining.max(Duration::from_millis(1)));
        let sent = tokio::select! {
            r = send => r,
            _ = cancel.cancelled() => {
                self.interrupt().await;
                return fail(cancelled(), "");
            }
        };
        if let Err(failure) = sent {
            return fail(failure, "");
        }

        // 3. Follow the turn to `stable`.
        let mut activity = Activity::default();
        let stop = self.follow(deadline, cancel, &mut activity).await.err();
        // The partial answer is read before the interrupt: an agent may
        // replace its screen's last message once interrupted ("Interrupted
        // by user"), and the work so far would be lost.
        let partial = if stop.is_some() {
            let partial = match self.messages().await {
                Ok(messages) => Self::answer(&messages, before).map(|m| m.content.clone()),
                Err(_) => None,
            };
            self.interrupt().await;
            partial
        } else {
            None
        };

        // 4. Read the answer (also the partial one, on failure).
        let answer = match self.messages().await {
            Ok(messages) => Self::answer(&messages, before).map(|m| m.content.clone()),
            Err(failure) if stop.is_none() => return fail(failure, ""),
            Err(_) => None,
        };
        let answer = match (partial, answer) {
            (Some(partial), Some(last)) if !last.contains(partial.trim()) => {
                Some(format!("{partial}\n\n{last}"))
            }
            (Some(partial), None) => Some(partial),
            (_, last) => last,
        };
        let mut text = answer.clone().unwrap_or_default();
        if !activity.errors.is_empty() {
            text.push_str("\n\n[taskmaster] the agent reported errors:\n");
            for e in &activity.errors {
                text.push_str(&format!("- {e}\n"));
            }
        }
        match stop {
            None if answer.is_some() => AttemptOutcome::success(out.output(&text), started),
            None => fail(
                Failure {
                    class: ErrorClass::Transient,
                    kind: FailureKind::Protocol,
                    message: format!(
                        "AgentAPI agent `{}` became stable without an agent message after the prompt",
                        self.settings.name
                    ),
                },
                &text,
            ),
            Some(Stop::Failed(failure)) => fail(failure, &text),
            Some(Stop::Cancelled) => fail(cancelled(), &text),
            Some(Stop::Timeout) => fail(
                timeout_failure(&format!(
                    "no `stable` status after {:.0} s (wall-clock timeout); the agent was interrupted",
                    started.elapsed().as_secs_f64()
                )),
                &text,
            ),
            Some(Stop::Idle) => fail(
                Failure {
                    class: ErrorClass::Transient,
                    kind: FailureKind::IdleTimeout,
                    message: format!(
                        "AgentAPI agent `{}`: no new output for {:.0} s (idle timeout); the agent was interrupted",
                        self.settings.name,
                        self.settings.idle_timeout.as_secs_f64()
                    ),
                },
                &text,
            ),
        }
    }

    async fn health(&self) -> Health {
        let started = Instant::now();
        let (reachable, detail) = match self.status().await {
            Ok(status) => (
                true,
                format!(
                    "status {} (agent {}, transport {})",
                    status.status,
                    status.agent_type.as_deref().unwrap_or("?"),
                    status.transport.as_deref().unwrap_or("?")
                ),
            ),
            Err(failure) => (
                failure.kind == FailureKind::Protocol,
                self.settings.output.message(&failure.message),
            ),
        };
        Health {
            reachable,
            latency: started.elapsed(),
            detail,
        }
    }
}

/// An error and its sources, joined: reqwest's own `Display` hides the cause
/// ("connection refused") in the source chain.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// One Server-Sent Event.
#[derive(Debug, Clone, PartialEq, Eq)]
struct SseEvent {
    event: String,
    data: String,
}

/// An incremental parser for `text/event-stream` (WHATWG HTML, "Server-sent
/// events"): lines end in LF, CRLF or CR; `event:` and `data:` fields; a
/// blank line dispatches; lines starting with `:` are comments.
#[derive(Debug, Default)]
struct SseParser {
    buffer: Vec<u8>,
    event: String,
    data: Vec<String>,
}

impl SseParser {
    fn push(&mut self, bytes: &[u8]) -> Vec<SseEvent> {
        self.buffer.extend_from_slice(bytes);
        let mut events = Vec::new();
        while let Some(end) = self.buffer.iter().position(|&b| b == b'\n' || b == b'\r') {
            // A CR at the very end may be the first half of CRLF: wait.
            if self.buffer[end] == b'\r' && end + 1 == self.buffer.len() {
                break;
            }
            let skip = if self.buffer[end] == b'\r' && self.buffer.get(end + 1) == Some(&b'\n') {
                2
            } else {
                1
            };
            let line = String::from_utf8_lossy(&self.buffer[..end]).into_owned();
            self.buffer.drain(..end + skip);
            if line.is_empty() {
                if !self.data.is_empty() {
                    events.push(SseEvent {
                        event: if self.event.is_empty() {
                            "message".into()
                        } else {
                            std::mem::take(&mut self.event)
                        },
                        data: self.data.join("\n"),
                    });
                }
                self.event.clear();
                self.data.clear();
                continue;
            }
            if line.starts_with(':') {
                continue;
            }
            let (field, value) = match line.split_once(':') {
                Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
                None => (line.as_str(), ""),
            };
            match field {
                "event" => self.event = value.to_owned(),
                "data" => self.data.push(value.to_owned()),
                _ => {}
            }
        }
        events
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_parser_handles_split_chunks_crlf_comments_and_multiline_data() {
        let mut p = SseParser::default();
        assert!(
            p.push(b": hello\r\nevent: status_change\r\ndata: {\"status\":")
                .is_empty()
        );
        let events = p.push(b"\"stable\"}\r\n\r\ndata: a\ndata: b\n\n");
        assert_eq!(
            events,
            vec![
                SseEvent {
                    event: "status_change".into(),
                    data: "{\"status\":\"stable\"}".into()
                },
                SseEvent {
                    event: "message".into(),
                    data: "a\nb".into()
                }
            ]
        );
    }

    #[test]
    fn busy_problem_text_is_read_from_errors() {
        let body = r#"{"title":"Internal Server Error","status":500,"detail":"Failed to send message","errors":[{"message":"failed to send message: message can only be sent when the agent is waiting for user input"}]}"#;
        let problem: Problem = serde_json::from_str(body).unwrap();
        assert!(problem.text().contains(BUSY_TEXT));
    }

    #[test]
    fn answer_is_the_last_agent_message_after_the_prompt() {
        let m = |id, role: &str| Message {
            id,
            role: role.into(),
            content: format!("{role}{id}"),
        };
        let messages = [m(0, "agent"), m(1, "user"), m(2, "agent")];
        assert_eq!(
            AgentApiAgent::answer(&messages, 0).unwrap().content,
            "agent2"
        );
        assert!(AgentApiAgent::answer(&messages[..2], 0).is_none());
    }
}
