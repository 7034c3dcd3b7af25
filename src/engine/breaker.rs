//! A circuit breaker per agent.
//!
//! `closed` → `open` after `failure_threshold` consecutive failures →
//! `half_open` once `cooldown` has passed (one trial attempt goes through) →
//! `closed` on its success, `open` again on its failure. While a breaker is
//! open the executor sends steps straight to their fallback agent instead of
//! queueing more attempts against an agent that is down.
//!
//! Breakers live in memory: they describe the agent as this process sees it
//! now, and a restart that forgets them costs at most `failure_threshold`
//! failed attempts. Only transient failures (unreachable, busy, timeouts)
//! count; a permanent failure says something about the request, not the agent.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;

/// A breaker's state, as the API shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    /// Attempts go through.
    Closed,
    /// Attempts are refused until the cool-down ends.
    Open,
    /// One trial attempt is allowed.
    HalfOpen,
}

/// Settings of one agent's breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerConfig {
    /// Consecutive failures that open it (0: never opens).
    pub failure_threshold: u32,
    /// How long it stays open.
    pub cooldown: Duration,
}

#[derive(Debug)]
struct Breaker {
    config: BreakerConfig,
    failures: u32,
    opened_at: Option<Instant>,
    trial_in_flight: bool,
}

/// What the breaker says about sending an attempt now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Go ahead.
    Allow,
    /// Go ahead: this is the half-open trial.
    Trial,
    /// Refused; the breaker reopens for a trial after this long.
    Refuse(Duration),
}

/// Every agent's breaker.
#[derive(Debug, Default)]
pub struct Breakers {
    inner: Mutex<HashMap<String, Breaker>>,
}

impl Breakers {
    /// Asks whether an attempt may go to `agent`; `config` applies the first
    /// time the agent is seen.
    pub fn admit(&self, agent: &str, config: BreakerConfig) -> Admission {
        let mut map = self.inner.lock().expect("breaker lock");
        let b = map.entry(agent.to_owned()).or_insert(Breaker {
            config,
            failures: 0,
            opened_at: None,
            trial_in_flight: false,
        });
        match b.opened_at {
            None => Admission::Allow,
            Some(at) => {
                let elapsed = at.elapsed();
                if elapsed < b.config.cooldown {
                    Admission::Refuse(b.config.cooldown - elapsed)
                } else if b.trial_in_flight {
                    Admission::Refuse(b.config.cooldown.min(Duration::from_secs(1)))
                } else {
                    b.trial_in_flight = true;
                    Admission::Trial
                }
            }
        }
    }

    /// Records an attempt's result: `failed` for a transient failure.
    /// Returns the new state when it changed.
    pub fn record(&self, agent: &str, failed: bool) -> Option<BreakerState> {
        let mut map = self.inner.lock().expect("breaker lock");
        let b = map.get_mut(agent)?;
        let before = state_of(b);
        if failed {
            b.failures = b.failures.saturating_add(1);
            let threshold_hit =
                b.config.failure_threshold > 0 && b.failures >= b.config.failure_threshold;
            if b.trial_in_flight || (b.opened_at.is_none() && threshold_hit) {
                b.opened_at = Some(Instant::now());
            }
        } else {
            b.failures = 0;
            b.opened_at = None;
        }
        b.trial_in_flight = false;
        let after = state_of(b);
        (after != before).then_some(after)
    }

    /// An admitted attempt ended without telling anything about the agent
    /// (cancelled, lease lost, shutdown): a half-open breaker's trial slot is
    /// freed so that another attempt can be the trial.
    pub fn abandon(&self, agent: &str) {
        if let Some(b) = self.inner.lock().expect("breaker lock").get_mut(agent) {
            b.trial_in_flight = false;
        }
    }

    /// Agents whose breaker refuses attempts right now (open within its
    /// cool-down, or half-open with its trial taken). No side effects.
    pub fn refusing(&self) -> std::collections::HashSet<String> {
        let map = self.inner.lock().expect("breaker lock");
        map.iter()
            .filter(|(_, b)| {
                b.opened_at
                    .is_some_and(|at| at.elapsed() < b.config.cooldown || b.trial_in_flight)
            })
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// How long until `agent`'s breaker lets a trial through (zero when it
    /// would now). No side effects.
    pub fn retry_in(&self, agent: &str) -> Duration {
        let map = self.inner.lock().expect("breaker lock");
        match map.get(agent).and_then(|b| b.opened_at.map(|at| (b, at))) {
            Some((b, at)) => {
                b.config
                    .cooldown
                    .saturating_sub(at.elapsed())
                    .max(if b.trial_in_flight {
                        Duration::from_millis(100)
                    } else {
                        Duration::ZERO
                    })
            }
            None => Duration::ZERO,
        }
    }

    /// The breaker state of `agent` (closed when never used).
    pub fn state(&self, agent: &str) -> BreakerState {
        let map = self.inner.lock().expect("breaker lock");
        map.get(agent).map(state_of).unwrap_or(BreakerState::Closed)
    }

    /// Every agent's breaker state, for the API.
    pub fn snapshot(&self) -> Vec<(String, BreakerState)> {
        let map = self.inner.lock().expect("breaker lock");
        let mut out: Vec<_> = map.iter().map(|(k, b)| (k.clone(), state_of(b))).collect();
        out.sort();
        out
    }
}

impl PartialOrd for BreakerState {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for BreakerState {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (*self as u8).cmp(&(*other as u8))
    }
}

fn state_of(b: &Breaker) -> BreakerState {
    match b.opened_at {
        None => BreakerState::Closed,
        Some(at) if at.elapsed() >= b.config.cooldown => BreakerState::HalfOpen,
        Some(_) => BreakerState::Open,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_threshold_half_opens_after_cooldown_and_closes_on_success() {
        let breakers = Breakers::default();
        let config = BreakerConfig {
            failure_threshold: 2,
            cooldown: Duration::from_millis(50),
        };
        assert_eq!(breakers.admit("a", config), Admission::Allow);
        assert_eq!(breakers.record("a", true), None);
        assert_eq!(breakers.record("a", true), Some(BreakerState::Open));
        assert!(matches!(breakers.admit("a", config), Admission::Refuse(_)));
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(breakers.state("a"), BreakerState::HalfOpen);
        assert_eq!(breakers.admit("a", config), Admission::Trial);
        // Only one trial at a time.
        assert!(matches!(breakers.admit("a", config), Admission::Refuse(_)));
        // An abandoned trial frees the slot for another.
        breakers.abandon("a");
        assert_eq!(breakers.admit("a", config), Admission::Trial);
        // A failed trial opens it again for a whole cool-down.
        assert_eq!(breakers.record("a", true), Some(BreakerState::Open));
        assert!(matches!(breakers.admit("a", config), Admission::Refuse(_)));
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(breakers.admit("a", config), Admission::Trial);
        assert_eq!(breakers.record("a", false), Some(BreakerState::Closed));
        assert_eq!(breakers.admit("a", config), Admission::Allow);
    }

    #[test]
    fn a_success_resets_the_count() {
        let breakers = Breakers::default();
        let config = BreakerConfig {
            failure_threshold: 2,
            cooldown: Duration::from_secs(60),
        };
        breakers.admit("a", config);
        breakers.record("a", true);
        breakers.record("a", false);
        breakers.record("a", true);
        assert_eq!(breakers.state("a"), BreakerState::Closed);
    }
}
