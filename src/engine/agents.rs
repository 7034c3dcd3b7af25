//! Where the engine finds agents and their limits.
//!
//! Production uses the [`AgentRegistry`] built from `taskmaster.yml`; tests
//! and benchmarks hand the engine an [`AgentMap`] of in-process agents with
//! scripted behaviour. Either way the engine asks the same three questions:
//! which agent has this name, how many attempts may it run at once, and
//! when should its circuit open.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use super::breaker::BreakerConfig;
use crate::agent::{Agent, AgentRegistry};

/// The agents the engine may use.
pub trait AgentSource: Send + Sync + 'static {
    /// The agent called `name`.
    fn agent(&self, name: &str) -> Option<Arc<dyn Agent>>;
    /// How many attempts may run on `name` at once (`None`: no limit).
    fn concurrency(&self, name: &str) -> Option<u32>;
    /// The circuit-breaker settings of `name`.
    fn breaker(&self, name: &str) -> BreakerConfig;
    /// The most attempts one step may make on `name` (its budget), if limited.
    fn max_attempts(&self, name: &str) -> Option<u32>;
    /// The wall-clock time one step may spend on `name`, all its attempts
    /// together (its budget), if limited.
    fn max_wall(&self, _name: &str) -> Option<Duration> {
        None
    }
    /// The US dollars one step may spend on `name`, all its attempts
    /// together (its budget), if limited; counts attempts that report cost.
    fn max_cost_usd(&self, _name: &str) -> Option<f64> {
        None
    }
    /// The agent's prices, for attempts whose cost it does not report
    /// (see [`crate::budget`]).
    fn price(&self, _name: &str) -> Option<crate::budget::Price> {
        None
    }
    /// Every agent name.
    fn names(&self) -> Vec<String>;
    /// The agent's endpoint for display, without credentials (see
    /// [`crate::agent::config::AgentConfig::public_endpoint`]); `None` when
    /// it has none or it is not known.
    fn public_endpoint(&self, _name: &str) -> Option<String> {
        None
    }
}

impl AgentSource for AgentRegistry {
    fn agent(&self, name: &str) -> Option<Arc<dyn Agent>> {
        self.get(name)
    }
    fn concurrency(&self, name: &str) -> Option<u32> {
        self.config(name).map(|c| c.concurrency)
    }
    fn breaker(&self, name: &str) -> BreakerConfig {
        let c = self
            .config(name)
            .map(|c| c.circuit_breaker)
            .unwrap_or_default();
        BreakerConfig {
            failure_threshold: c.failure_threshold,
            cooldown: Duration::from_secs(c.cooldown_seconds),
        }
    }
    fn max_attempts(&self, name: &str) -> Option<u32> {
        self.config(name).and_then(|c| c.budget.max_attempts)
    }
    fn max_wall(&self, name: &str) -> Option<Duration> {
        self.config(name)
            .and_then(|c| c.budget.max_wall_seconds)
            .map(Duration::from_secs)
    }
    fn max_cost_usd(&self, name: &str) -> Option<f64> {
        self.config(name).and_then(|c| c.budget.max_cost_usd)
    }
    fn price(&self, name: &str) -> Option<crate::budget::Price> {
        self.config(name).and_then(|c| c.price)
    }
    fn names(&self) -> Vec<String> {
        AgentRegistry::names(self).map(str::to_owned).collect()
    }
    fn public_endpoint(&self, name: &str) -> Option<String> {
        self.config(name).and_then(|c| c.public_endpoint())
    }
}

/// One agent of an [`AgentMap`] with its limits.
#[derive(Debug, Clone)]
pub struct MappedAgent {
    /// The agent.
    pub agent: Arc<dyn Agent>,
    /// Attempts at once (`None`: no limit).
    pub concurrency: Option<u32>,
    /// Circuit-breaker settings.
    pub breaker: BreakerConfig,
    /// Wall-clock budget per step (all attempts on this agent together).
    pub max_wall: Option<Duration>,
    /// Cost budget per step in US dollars (all attempts on this agent together).
    pub max_cost_usd: Option<f64>,
    /// Prices for attempts that report no cost.
    pub price: Option<crate::budget::Price>,
}

/// A plain map of agents, for tests, benchmarks and embedding.
#[derive(Debug, Clone, Default)]
pub struct AgentMap {
    agents: BTreeMap<String, MappedAgent>,
}

impl AgentMap {
    /// An empty map.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `agent` under its own name, with no concurrency limit and a
    /// breaker that opens after 5 failures for 300 s.
    pub fn with(self, agent: Arc<dyn Agent>) -> Self {
        self.with_limits(
            agent,
            None,
            BreakerConfig {
                failure_threshold: 5,
                cooldown: Duration::from_secs(300),
            },
        )
    }

    /// Adds `agent` with explicit limits.
    pub fn with_limits(
        mut self,
        agent: Arc<dyn Agent>,
        concurrency: Option<u32>,
        breaker: BreakerConfig,
    ) -> Self {
        self.agents.insert(
            agent.name().to_owned(),
            MappedAgent {
                agent,
                concurrency,
                breaker,
                max_wall: None,
                max_cost_usd: None,
                price: None,
            },
        );
        self
    }

    /// Sets the cost budget per step of agent `name` (added before), US dollars.
    pub fn with_max_cost(mut self, name: &str, max_cost_usd: f64) -> Self {
        if let Some(a) = self.agents.get_mut(name) {
            a.max_cost_usd = Some(max_cost_usd);
        }
        self
    }

    /// Sets the prices of agent `name` (added before).
    pub fn with_price(mut self, name: &str, price: crate::budget::Price) -> Self {
        if let Some(a) = self.agents.get_mut(name) {
            a.price = Some(price);
        }
        self
    }

    /// Sets the wall-clock budget per step of agent `name` (added before).
    pub fn with_max_wall(mut self, name: &str, max_wall: Duration) -> Self {
        if let Some(a) = self.agents.get_mut(name) {
            a.max_wall = Some(max_wall);
        }
        self
    }
}

impl AgentSource for AgentMap {
    fn agent(&self, name: &str) -> Option<Arc<dyn Agent>> {
        self.agents.get(name).map(|a| a.agent.clone())
    }
    fn concurrency(&self, name: &str) -> Option<u32> {
        self.agents.get(name).and_then(|a| a.concurrency)
    }
    fn breaker(&self, name: &str) -> BreakerConfig {
        self.agents
            .get(name)
            .map(|a| a.breaker)
            .unwrap_or(BreakerConfig {
                failure_threshold: 5,
                cooldown: Duration::from_secs(300),
            })
    }
    fn max_attempts(&self, _name: &str) -> Option<u32> {
        None
    }
    fn max_wall(&self, name: &str) -> Option<Duration> {
        self.agents.get(name).and_then(|a| a.max_wall)
    }
    fn max_cost_usd(&self, name: &str) -> Option<f64> {
        self.agents.get(name).and_then(|a| a.max_cost_usd)
    }
    fn price(&self, name: &str) -> Option<crate::budget::Price> {
        self.agents.get(name).and_then(|a| a.price)
    }
    fn names(&self) -> Vec<String> {
        self.agents.keys().cloned().collect()
    }
}
