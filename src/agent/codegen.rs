//! The `codegen` adapter: the hosted [Codegen](https://codegen.com) REST API.
//!
//! Spec: `specs/codegen-openapi3.json` and `AGENT_PROTOCOLS.md` §3. Base URL
//! `https://api.codegen.com` ([`DEFAULT_ENDPOINT`]), `Authorization: Bearer
//! <token>`, an integer organisation id in the path.
//!
//! 1. `POST /v1/organizations/{org_id}/agent/run` with `{prompt, repo_id?,
//!    model?, agent_type?, metadata}` creates an agent run; `metadata`
//!    carries `taskmaster_attempt: "run:step:attempt"` so a duplicate can be
//!    found on Codegen's side. The API has no idempotency key, so a create
//!    that fails in transit is *not* retried here (it may have succeeded);
//!    the engine's retry makes a new attempt.
//! 2. `GET /v1/organizations/{org_id}/agent/run/{id}` is polled (there is no
//!    webhook or stream) with exponential backoff, [`CodegenSettings::poll_initial`]
//!    growing by half each time up to [`CodegenSettings::poll_max`], until a
//!    final status or our own deadline. Status strings vary in case across
//!    Codegen's own sources (`completed`, `COMPLETE`, `failed`, `ERROR`,
//!    `CANCELLED`, `ACTIVE`, `RUNNING`, `PENDING`), so they are compared
//!    case-insensitively; an unknown status counts as still running.
//! 3. The output is the run's `result` (else `summary`), then the pull
//!    requests it opened (`github_pull_requests[].url`) and its `web_url`.
//!
//! Errors (`{message, status_code}`): 429 (60 requests / 30 s; 10 run
//! creations / minute) is waited out per `Retry-After` and retried within the
//! deadline, else returned as transient with the hint; 402 (plan limit), 401,
//! 403, 404 and 422 are permanent and say what to check; 5xx and network
//! errors are transient.
//!
//! Cancel and timeout stop *waiting*: the spec has no endpoint to stop a
//! run, so it may carry on at Codegen; the message gives its link.

use std::time::Duration;

use async_trait::async_trait;
use reqwest::StatusCode;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::json;
use tokio::time::Instant;

use super::agentapi::error_chain;
use super::{
    Agent, AgentKind, AttemptOutcome, AttemptRequest, ErrorClass, Failure, FailureKind, Health,
    OutputPolicy,
};

/// Codegen's API base URL.
pub const DEFAULT_ENDPOINT: &str = "https://api.codegen.com";

/// Settings of one Codegen agent.
#[derive(Debug, Clone)]
pub struct CodegenSettings {
    /// The agent's name.
    pub name: String,
    /// API base URL (`CODEGEN_ENDPOINT`).
    pub endpoint: String,
    /// API token (`CODEGEN_API_TOKEN`). `None`: every run fails with a
    /// configuration error that says so.
    pub token: Option<SecretString>,
    /// Organisation id (`CODEGEN_ORG_ID`).
    pub org_id: Option<i64>,
    /// `repo_id` of created runs when `repos` does not name the run's
    /// repository (a step's `with.repo_id` wins over both).
    pub repo_id: Option<i64>,
    /// Codegen's repository id for each GitHub repository (`owner/name`):
    /// one service serves many repositories, and Codegen must work on the
    /// run's. With `repos` set and neither a match nor `repo_id`, the
    /// attempt fails rather than let Codegen pick a repository.
    pub repos: std::collections::BTreeMap<String, i64>,
    /// `model` of created runs (a step's `with.model` wins).
    pub model: Option<String>,
    /// `agent_type` of created runs: `codegen` or `claude_code`.
    pub agent_type: Option<String>,
    /// Longest wall-clock time of one attempt.
    pub timeout: Duration,
    /// First polling interval.
    pub poll_initial: Duration,
    /// Longest polling interval.
    pub poll_max: Duration,
    /// Timeout of each HTTP request.
    pub request_timeout: Duration,
    /// Wait after a 429 without `Retry-After`.
    pub rate_limit_wait: Duration,
    /// Output cap and redaction.
    pub output: OutputPolicy,
}

impl CodegenSettings {
    /// Defaults: the hosted API, 2 h timeout, polling from 5 s up to 60 s,
    /// 30 s requests, 6 s after an unexplained 429.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            endpoint: DEFAULT_ENDPOINT.into(),
            token: None,
            org_id: None,
            repo_id: None,
            repos: std::collections::BTreeMap::new(),
            model: None,
            agent_type: None,
            timeout: Duration::from_secs(2 * 3600),
            poll_initial: Duration::from_secs(5),
            poll_max: Duration::from_secs(60),
            request_timeout: Duration::from_secs(30),
            rate_limit_wait: Duration::from_secs(6),
            output: OutputPolicy::default(),
        }
    }
}

/// `AgentRunResponse`.
#[derive(Debug, Clone, Deserialize)]
struct AgentRun {
    id: i64,
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    web_url: Option<String>,
    #[serde(default)]
    result: Option<String>,
    #[serde(default)]
    summary: Option<String>,
    #[serde(default)]
    github_pull_requests: Option<Vec<PullRequest>>,
}

/// `GithubPullRequestResponse`.
#[derive(Debug, Clone, Deserialize)]
struct PullRequest {
    #[serde(default)]
    title: Option<String>,
    #[serde(default)]
    url: Option<String>,
}

/// Where a run stands, from its status string.
#[derive(Debug, PartialEq, Eq)]
enum RunState {
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

fn run_state(status: Option<&str>) -> RunState {
    match status.map(str::to_ascii_lowercase).as_deref() {
        Some("complete" | "completed" | "succeeded" | "success" | "done") => RunState::Succeeded,
        Some("failed" | "failure" | "error" | "errored") => RunState::Failed,
        Some("cancelled" | "canceled" | "stopped") => RunState::Cancelled,
        _ => RunState::Running,
    }
}

/// An HTTP answer that is not the run.
enum CallError {
    RateLimited(Duration),
    Failed(Failure),
}

/// The `codegen` agent (see the module docs).
#[derive(Debug)]
pub struct CodegenAgent {
    settings: CodegenSettings,
    client: reqwest::Client,
}

impl CodegenAgent {
    /// An adapter for the API at `settings.endpoint`.
    ///
    /// # Errors
    /// When the HTTP client cannot be built (TLS initialisation).
    pub fn new(settings: CodegenSettings) -> Result<Self, reqwest::Error> {
        let client = super::http_client_builder()
            .connect_timeout(Duration::from_secs(10))
            .build()?;
        Ok(Self { settings, client })
    }

    fn url(&self, org_id: i64, path: &str) -> String {
        format!(
            "{}/v1/organizations/{org_id}/agent/run{path}",
            self.settings.endpoint.trim_end_matches('/')
        )
    }

    /// Sends one request and reads the run, or says what went wrong.
    async fn call(
        &self,
        request: reqwest::RequestBuilder,
        what: &str,
    ) -> Result<AgentRun, CallError> {
        let token = self
            .settings
            .token
            .as_ref()
            .map(|t| t.expose_secret().to_owned())
            .unwrap_or_default();
        let response = request
            .bearer_auth(token)
            .timeout(self.settings.request_timeout)
            .send()
            .await
            .map_err(|e| {
                CallError::Failed(Failure {
                    class: ErrorClass::Transient,
                    kind: if e.is_timeout() {
                        FailureKind::Timeout
                    } else {
                        FailureKind::Unreachable
                    },
                    message: format!(
                        "Codegen {what}: cannot reach {}: {}",
                        self.settings.endpoint,
                        error_chain(&e)
                    ),
                })
            })?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let body = response.bytes().await.unwrap_or_default();
        if status.is_success() {
            return serde_json::from_slice(&body).map_err(|e| {
                CallError::Failed(Failure {
                    class: ErrorClass::Transient,
                    kind: FailureKind::Protocol,
                    message: format!("Codegen {what}: the answer is not an agent run: {e}"),
                })
            });
        }
        if status == StatusCode::TOO_MANY_REQUESTS {
            return Err(CallError::RateLimited(
                retry_after.unwrap_or(self.settings.rate_limit_wait),
            ));
        }
        let detail = error_text(&body);
        let permanent = |hint: &str| {
            CallError::Failed(Failure {
                class: ErrorClass::Permanent,
                kind: FailureKind::Config,
                message: format!("Codegen {what}: HTTP {status}: {detail}; {hint}"),
            })
        };
        Err(match status.as_u16() {
            401 => permanent("check CODEGEN_API_TOKEN"),
            402 => permanent(
                "the plan's agent-run allowance is used up: upgrade the Codegen plan or wait for the next billing period",
            ),
            403 => permanent("check that the token's user belongs to organisation CODEGEN_ORG_ID"),
            404 => permanent("check CODEGEN_ORG_ID and the repository (repo_id)"),
            422 => {
                permanent("the request does not match Codegen's API (repo_id, model, agent_type)")
            }
            _ => CallError::Failed(Failure {
                class: ErrorClass::Transient,
                kind: FailureKind::Protocol,
                message: format!("Codegen {what}: HTTP {status}: {detail}"),
            }),
        })
    }

    fn render(run: &AgentRun) -> String {
        let mut text = run
            .result
            .clone()
            .filter(|r| !r.trim().is_empty())
            .or_else(|| run.summary.clone())
            .unwrap_or_default();
        let prs: Vec<&PullRequest> = run
            .github_pull_requests
            .iter()
            .flatten()
            .filter(|pr| pr.url.is_some())
            .collect();
        if !prs.is_empty() {
            text.push_str("\n\nPull requests:\n");
            for pr in prs {
                let url = pr.url.as_deref().unwrap_or_default();
                match pr.title.as_deref() {
                    Some(title) => text.push_str(&format!("- {title}: {url}\n")),
                    None => text.push_str(&format!("- {url}\n")),
                }
            }
        }
        if let Some(url) = &run.web_url {
            text.push_str(&format!("\nCodegen run: {url}\n"));
        }
        text
    }
}

/// `{message}` or `{detail: [...]}` from an error body, else the raw text.
fn error_text(body: &[u8]) -> String {
    #[derive(Deserialize)]
    struct ErrorBody {
        message: Option<String>,
        detail: Option<serde_json::Value>,
    }
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(ErrorBody {
            message: Some(m), ..
        }) => m,
        Ok(ErrorBody {
            detail: Some(d), ..
        }) => d.to_string(),
        _ => String::from_utf8_lossy(&body[..body.len().min(500)]).into_owned(),
    }
}

#[async_trait]
impl Agent for CodegenAgent {
    fn name(&self) -> &str {
        &self.settings.name
    }

    fn kind(&self) -> AgentKind {
        AgentKind::Codegen
    }

    async fn run(&self, attempt: AttemptRequest) -> AttemptOutcome {
        let started = Instant::now();
        let s = &self.settings;
        let out = &s.output;
        let deadline = attempt.deadline.min(started + s.timeout);
        let cancel = &attempt.cancel;
        let fail =
            |f: Failure, text: &str, retry_after: Option<Duration>, web_url: Option<String>| {
                let mut o = AttemptOutcome::failed(
                    f.class,
                    f.kind,
                    out.message(&f.message),
                    out.output(text),
                    started,
                );
                o.retry_after = retry_after;
                o.web_url = web_url;
                o
            };
        let config = |message: String| Failure {
            class: ErrorClass::Permanent,
            kind: FailureKind::Config,
            message,
        };
        let cancelled = |what: String| Failure {
            class: ErrorClass::Permanent,
            kind: FailureKind::Cancelled,
            message: what,
        };
        if s.token.is_none() {
            return fail(
                config(format!(
                    "Codegen agent `{}` has no API token: set CODEGEN_API_TOKEN",
                    s.name
                )),
                "",
                None,
                None,
            );
        }
        let Some(org_id) = s.org_id else {
            return fail(
                config(format!(
                    "Codegen agent `{}` has no organisation id: set CODEGEN_ORG_ID (or `org_id:` in the agent's configuration)",
                    s.name
                )),
                "",
                None,
                None,
            );
        };

        // 1. Create the run (waiting out 429s within the deadline).
        let with = &attempt.with;
        let mut body = json!({
            "prompt": out.redactor.redact(&attempt.prompt),
            "metadata": {"taskmaster_attempt": attempt.key.to_string()},
        });
        let mapped = attempt.repository.as_ref().and_then(|r| {
            s.repos
                .iter()
                .find(|(name, _)| name.eq_ignore_ascii_case(r))
                .map(|(_, id)| *id)
        });
        let repo_id = with
            .get("repo_id")
            .and_then(|v| v.as_i64())
            .or(mapped)
            .or(s.repo_id);
        if repo_id.is_none() && !s.repos.is_empty() {
            return AttemptOutcome::failed(
                ErrorClass::Permanent,
                FailureKind::Config,
                format!(
                    "agent `{}` has no Codegen repo_id for {}: add it under `repos:` in the agent's configuration (or set a default `repo_id`)",
                    s.name,
                    attempt
                        .repository
                        .as_deref()
                        .unwrap_or("this run (it names no repository)")
                ),
                out.output(""),
                started,
            );
        }
        let model = with
            .get("model")
            .and_then(|v| v.as_str())
            .map(str::to_owned)
            .or_else(|| s.model.clone());
        let agent_type = with
            .get("agent_type")
            .and_then(|v| v.as_str())
            .map(str::to_owned)
            .or_else(|| s.agent_type.clone());
        if let Some(id) = repo_id {
            body["repo_id"] = json!(id);
        }
        if let Some(m) = model {
            body["model"] = json!(m);
        }
        if let Some(t) = agent_type {
            body["agent_type"] = json!(t);
        }
        let mut run = loop {
            let request = self.client.post(self.url(org_id, "")).json(&body);
            match self.call(request, "create agent run").await {
                Ok(run) => break run,
                Err(CallError::Failed(f)) => return fail(f, "", None, None),
                Err(CallError::RateLimited(wait)) => {
                    let until = Instant::now() + wait;
                    if until >= deadline {
                        return fail(
                            Failure {
                                class: ErrorClass::Transient,
                                kind: FailureKind::RateLimited,
                                message: format!(
                                    "Codegen rate limit (HTTP 429) on run creation; retry after {} s",
                                    wait.as_secs()
                                ),
                            },
                            "",
                            Some(wait),
                            None,
                        );
                    }
                    tracing::info!(agent = %s.name, wait_s = wait.as_secs(), "Codegen rate limit on run creation; waiting");
                    if !super::sleep_or_cancel(until, cancel).await {
                        return fail(
                            cancelled("cancelled before the Codegen run was created".into()),
                            "",
                            None,
                            None,
                        );
                    }
                }
            }
        };
        tracing::info!(agent = %s.name, codegen_run = run.id, key = %attempt.key, "Codegen agent run created");

        // 2. Poll until a final status.
        let mut interval = s.poll_initial;
        let mut last_error: Option<String> = None;
        loop {
            match run_state(run.status.as_deref()) {
                RunState::Running => {}
                RunState::Succeeded => {
                    let mut o = AttemptOutcome::success(out.output(&Self::render(&run)), started);
                    o.web_url = run.web_url.clone();
                    // Only links on GitHub: the URLs are shown and stored.
                    o.pull_requests = run
                        .github_pull_requests
                        .iter()
                        .flatten()
                        .filter_map(|pr| pr.url.clone())
                        .filter(|u| u.starts_with("https://"))
                        .collect();
                    return o;
                }
                RunState::Failed => {
                    return fail(
                        Failure {
                            class: ErrorClass::Permanent,
                            kind: FailureKind::Agent,
                            message: format!(
                                "Codegen run {} ended with status `{}`",
                                run.id,
                                run.status.as_deref().unwrap_or("?")
                            ),
                        },
                        &Self::render(&run),
                        None,
                        run.web_url.clone(),
                    );
                }
                RunState::Cancelled => {
                    return fail(
                        Failure {
                            class: ErrorClass::Permanent,
                            kind: FailureKind::Agent,
                            message: format!(
                                "Codegen run {} was cancelled on Codegen's side",
                                run.id
                            ),
                        },
                        &Self::render(&run),
                        None,
                        run.web_url.clone(),
                    );
                }
            }
            let link = run
                .web_url
                .clone()
                .unwrap_or_else(|| format!("run {}", run.id));
            let next = Instant::now() + interval;
            if next >= deadline {
                let _ = super::sleep_or_cancel(deadline, cancel).await;
                let mut message = format!(
                    "Codegen run {} still `{}` after {:.0} s (timeout); it may carry on at Codegen: {link}",
                    run.id,
                    run.status.as_deref().unwrap_or("?"),
                    started.elapsed().as_secs_f64()
                );
                if let Some(e) = &last_error {
                    message.push_str(&format!(" (last polling error: {e})"));
                }
                if cancel.is_cancelled() {
                    return fail(
                        cancelled(format!(
                            "cancelled; Codegen has no endpoint to stop a run, so it may carry on: {link}"
                        )),
                        "",
                        None,
                        run.web_url.clone(),
                    );
                }
                return fail(
                    Failure {
                        class: ErrorClass::Transient,
                        kind: FailureKind::Timeout,
                        message,
                    },
                    &Self::render(&run),
                    None,
                    run.web_url.clone(),
                );
            }
            if !super::sleep_or_cancel(next, cancel).await {
                return fail(
                    cancelled(format!(
                        "cancelled; Codegen has no endpoint to stop a run, so it may carry on: {link}"
                    )),
                    "",
                    None,
                    run.web_url.clone(),
                );
            }
            interval = (interval.mul_f64(1.5)).min(s.poll_max);
            let request = self.client.get(self.url(org_id, &format!("/{}", run.id)));
            match self.call(request, "get agent run").await {
                Ok(fresh) => {
                    run = fresh;
                    last_error = None;
                }
                Err(CallError::RateLimited(wait)) => {
                    interval = interval.max(wait);
                    last_error = Some("rate limited (HTTP 429)".into());
                }
                Err(CallError::Failed(f)) if f.class == ErrorClass::Permanent => {
                    return fail(f, "", None, run.web_url.clone());
                }
                Err(CallError::Failed(f)) => {
                    // Keep polling through network blips until the deadline.
                    last_error = Some(f.message);
                }
            }
        }
    }

    async fn health(&self) -> Health {
        let started = Instant::now();
        let url = format!(
            "{}/v1/organizations",
            self.settings.endpoint.trim_end_matches('/')
        );
        let mut request = self.client.get(url).timeout(Duration::from_secs(5));
        if let Some(token) = &self.settings.token {
            request = request.bearer_auth(token.expose_secret());
        }
        let (reachable, detail) = match request.send().await {
            Ok(r) if r.status().is_success() => (true, format!("HTTP {}", r.status())),
            Ok(r) if r.status() == StatusCode::UNAUTHORIZED => (
                true,
                format!("HTTP {}: check CODEGEN_API_TOKEN", r.status()),
            ),
            Ok(r) => (true, format!("HTTP {}", r.status())),
            Err(e) => (false, self.settings.output.message(&error_chain(&e))),
        };
        Health {
            reachable,
            latency: started.elapsed(),
            detail,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_compare_case_insensitively() {
        for s in ["completed", "COMPLETE", "Complete"] {
            assert_eq!(run_state(Some(s)), RunState::Succeeded, "{s}");
        }
        for s in ["failed", "ERROR"] {
            assert_eq!(run_state(Some(s)), RunState::Failed, "{s}");
        }
        assert_eq!(run_state(Some("CANCELLED")), RunState::Cancelled);
        for s in [
            "ACTIVE",
            "RUNNING",
            "PENDING",
            "evaluation",
            "something-new",
        ] {
            assert_eq!(run_state(Some(s)), RunState::Running, "{s}");
        }
        assert_eq!(run_state(None), RunState::Running);
    }
}
