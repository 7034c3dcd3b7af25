//! `GET /api/agents`: each configured agent as the engine sees it.
//!
//! Health is probed live (every agent at once, 2 s each); success rate and
//! latency percentiles come from the attempts of the last 24 hours; in
//! flight counts attempts started and not finished; the circuit state is the
//! engine's in-memory breaker. Endpoints are shown without credentials, and
//! nothing else of an agent's configuration (environment, tokens) is shown.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::ApiState;
use super::auth::{Authorized, CanRead};
use super::error::{ApiResult, Problem};
use crate::engine::BreakerState;
use crate::store::now_ms;

/// URLs in a probe's message, with their user info and query: shown
/// without them (an endpoint may carry a credential there).
static URL: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
    regex::Regex::new(r"(?i)\b([a-z][a-z0-9+.-]*://)(?:[^/@\s]*@)?([^\s?#]*)(?:[?#][^\s)]*)?")
        .expect("valid regex")
});

/// `text` with every URL's user info, query and fragment removed.
fn scrub_urls(text: &str) -> String {
    URL.replace_all(text, "$1$2").into_owned()
}

/// How long one health probe may take.
const PROBE_DEADLINE: Duration = Duration::from_secs(2);
/// The window of the success rate and percentiles, ms.
const STATS_WINDOW_MS: i64 = 24 * 3600 * 1000;

/// One agent.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AgentView {
    pub name: String,
    /// `agentapi`, `cli`, `codegen` or `command`.
    pub kind: String,
    /// The URL it talks to, without credentials; absent for `cli` and `command`.
    pub endpoint: Option<String>,
    pub health: AgentHealth,
    /// `closed`, `open` or `half_open`.
    pub circuit: String,
    /// Attempts started and not finished.
    pub in_flight: i64,
    /// Attempts finished in the last 24 hours.
    pub attempts_24h: i64,
    /// Share of those that succeeded (0-1); absent without attempts.
    pub success_rate: Option<f64>,
    /// Attempt duration percentiles of the last 24 hours, ms.
    pub latency_ms: Latency,
}

/// A live health probe.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AgentHealth {
    pub reachable: bool,
    /// How long the probe took, ms.
    pub latency_ms: u64,
    /// What the probe found.
    pub detail: String,
}

/// Duration percentiles, ms; absent without attempts.
#[derive(Debug, Default, Serialize, Deserialize, ToSchema)]
pub struct Latency {
    pub p50: Option<i64>,
    pub p90: Option<i64>,
    pub p99: Option<i64>,
}

/// The `q`-quantile (0-1) of ascending `sorted` values (nearest rank).
fn percentile(sorted: &[i64], q: f64) -> Option<i64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1])
}

/// List the agents with their health, circuit state, load and track record.
#[utoipa::path(get, operation_id = "list_agents", path = "/api/agents", tag = "agents",
    responses(
        (status = 200, description = "Every configured agent", body = Vec<AgentView>),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = [])))]
pub async fn list(
    State(state): State<ApiState>,
    _: Authorized<CanRead>,
) -> ApiResult<Json<Vec<AgentView>>> {
    let source = state.engine.inner.agents.clone();
    let breakers = &state.engine.inner.breakers;
    let stats = state
        .store
        .agent_attempt_stats(now_ms() - STATS_WINDOW_MS)
        .await?;
    let names = source.names();
    let probes = names.iter().map(|name| {
        let agent = source.agent(name);
        async move {
            match agent {
                None => AgentHealth {
                    reachable: false,
                    latency_ms: 0,
                    detail: "not built".into(),
                },
                Some(agent) => match tokio::time::timeout(PROBE_DEADLINE, agent.health()).await {
                    Ok(h) => AgentHealth {
                        reachable: h.reachable,
                        latency_ms: h.latency.as_millis() as u64,
                        detail: scrub_urls(&h.detail),
                    },
                    Err(_) => AgentHealth {
                        reachable: false,
                        latency_ms: PROBE_DEADLINE.as_millis() as u64,
                        detail: "the health probe timed out".into(),
                    },
                },
            }
        }
    });
    let healths = futures_util::future::join_all(probes).await;
    let mut out = Vec::new();
    for (name, health) in names.iter().zip(healths) {
        let s = stats.iter().find(|s| &s.agent == name);
        let kind = source
            .agent(name)
            .map(|a| a.kind().as_str().to_owned())
            .unwrap_or_default();
        let durations = s.map(|s| s.durations_ms.as_slice()).unwrap_or_default();
        out.push(AgentView {
            name: name.clone(),
            kind,
            endpoint: source.public_endpoint(name),
            health,
            circuit: match breakers.state(name) {
                BreakerState::Closed => "closed",
                BreakerState::Open => "open",
                BreakerState::HalfOpen => "half_open",
            }
            .into(),
            in_flight: s.map(|s| s.in_flight).unwrap_or(0),
            attempts_24h: s.map(|s| s.finished).unwrap_or(0),
            success_rate: s
                .filter(|s| s.finished > 0)
                .map(|s| s.succeeded as f64 / s.finished as f64),
            latency_ms: Latency {
                p50: percentile(durations, 0.5),
                p90: percentile(durations, 0.9),
                p99: percentile(durations, 0.99),
            },
        });
    }
    Ok(Json(out))
}

#[cfg(test)]
mod tests {
    use super::percentile;

    #[test]
    fn urls_lose_credentials_and_queries() {
        assert_eq!(
            super::scrub_urls("at http://u:pw@h:1/p?key=s3 failed (x https://h/q?t=1/status)"),
            "at http://h:1/p failed (x https://h/q)"
        );
    }

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<i64> = (1..=100).collect();
        assert_eq!(percentile(&v, 0.5), Some(50));
        assert_eq!(percentile(&v, 0.9), Some(90));
        assert_eq!(percentile(&v, 0.99), Some(99));
        assert_eq!(percentile(&[7], 0.99), Some(7));
        assert_eq!(percentile(&[], 0.5), None);
    }
}
