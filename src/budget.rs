//! Spend limits: what an attempt cost, and whether the next one may start.
//!
//! **Cost.** An attempt's cost is what the agent reported (Claude Code's
//! `total_cost_usd`, Aider's cost line) or, when it reported none, an
//! estimate from the agent's `price:` in the service configuration: tokens
//! × price per million tokens when the agent reported token counts, else
//! wall time × price per minute (AgentAPI agents report neither). Estimates
//! are marked as such ([`attempt_cost`]).
//!
//! **Budgets.** `budgets:` in the service configuration caps spend per run,
//! per repository per UTC day and month, per installation per month, and
//! overall per month, each in dollars, attempts and agent-minutes
//! ([`Budgets`]). The engine checks them before an attempt starts (an
//! attempt that would start over a budget does not start: the step fails
//! without retry or fallback, and the run stops with a `neutral` check run
//! saying which budget, how much was spent and how to raise it), again when
//! an attempt ends (a run whose budget that attempt spent stops at once,
//! cancelling its attempts still running), and bounds a running attempt's
//! time by what is left where time is what costs (agent-minutes, and
//! per-minute prices). Spend per day is kept in the
//! `spend` table, added to as each attempt ends.

use std::time::Duration;

use chrono::{DateTime, Datelike, Utc};
use serde::{Deserialize, Serialize};

use crate::agent::Usage;

const DAY_MS: i64 = 24 * 60 * 60 * 1000;

/// An agent's prices, for attempts whose agent reports no cost. US dollars.
#[derive(Debug, Clone, Copy, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    /// Per million input (prompt) tokens.
    pub input_per_mtok: Option<f64>,
    /// Per million output (completion) tokens.
    pub output_per_mtok: Option<f64>,
    /// Per minute of wall time (AgentAPI agents, which report no usage).
    pub per_minute: Option<f64>,
}

impl Price {
    /// The estimated cost of an attempt that used `usage` for `duration`:
    /// from tokens when both the counts and a token price are known, else
    /// from minutes when a per-minute price is; `None` otherwise.
    pub fn estimate(&self, usage: &Usage, duration: Duration) -> Option<f64> {
        let tokens = |n: Option<u64>, price: Option<f64>| Some(n? as f64 * price? / 1e6);
        let input = tokens(usage.input_tokens, self.input_per_mtok);
        let output = tokens(usage.output_tokens, self.output_per_mtok);
        if input.is_some() || output.is_some() {
            return Some(input.unwrap_or(0.0) + output.unwrap_or(0.0));
        }
        self.per_minute.map(|p| p * duration.as_secs_f64() / 60.0)
    }
}

/// An attempt's cost in US dollars and whether it is an estimate: the
/// agent's own figure when it reported one, else `price`'s estimate.
pub fn attempt_cost(
    usage: &Usage,
    duration: Duration,
    price: Option<&Price>,
) -> (Option<f64>, bool) {
    match usage.cost_usd {
        Some(usd) => (Some(usd), false),
        None => match price.and_then(|p| p.estimate(usage, duration)) {
            Some(usd) => (Some(usd), true),
            None => (None, false),
        },
    }
}

/// Limits of one budget; `None`: no limit of that kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// US dollars.
    pub usd: Option<f64>,
    /// Attempts started.
    pub attempts: Option<u64>,
    /// Minutes agents spent on attempts.
    pub agent_minutes: Option<f64>,
}

impl Limits {
    /// No limit of any kind.
    pub fn is_empty(&self) -> bool {
        self.usd.is_none() && self.attempts.is_none() && self.agent_minutes.is_none()
    }

    /// The tighter of two limits, kind by kind.
    pub fn tighter(self, other: Limits) -> Limits {
        fn min<T: PartialOrd>(a: Option<T>, b: Option<T>) -> Option<T> {
            match (a, b) {
                (Some(a), Some(b)) => Some(if b < a { b } else { a }),
                (a, b) => a.or(b),
            }
        }
        Limits {
            usd: min(self.usd, other.usd),
            attempts: min(self.attempts, other.attempts),
            agent_minutes: min(self.agent_minutes, other.agent_minutes),
        }
    }
}

/// `budgets:` of the service configuration.
#[derive(Debug, Clone, Copy, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Budgets {
    /// One run, all its attempts together.
    #[serde(default)]
    pub run: Limits,
    /// One repository, one UTC day.
    #[serde(default)]
    pub repository_day: Limits,
    /// One repository, one calendar month (UTC).
    #[serde(default)]
    pub repository_month: Limits,
    /// One installation, one calendar month (UTC).
    #[serde(default)]
    pub installation_month: Limits,
    /// Everything, one calendar month (UTC).
    #[serde(default)]
    pub global_month: Limits,
}

/// Which budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    Run,
    RepositoryDay,
    RepositoryMonth,
    InstallationMonth,
    GlobalMonth,
}

impl Scope {
    /// Every scope, in the order they are checked.
    pub const ALL: [Scope; 5] = [
        Scope::Run,
        Scope::RepositoryDay,
        Scope::RepositoryMonth,
        Scope::InstallationMonth,
        Scope::GlobalMonth,
    ];

    /// Its key under `budgets:`.
    pub fn key(self) -> &'static str {
        match self {
            Scope::Run => "run",
            Scope::RepositoryDay => "repository_day",
            Scope::RepositoryMonth => "repository_month",
            Scope::InstallationMonth => "installation_month",
            Scope::GlobalMonth => "global_month",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Scope::Run => "this run's budget",
            Scope::RepositoryDay => "the repository's budget for today (UTC)",
            Scope::RepositoryMonth => "the repository's budget for this month (UTC)",
            Scope::InstallationMonth => "the installation's budget for this month (UTC)",
            Scope::GlobalMonth => "the service's budget for this month (UTC)",
        }
    }

    /// The first day (days since the epoch, UTC) of this scope's period at
    /// `now` (epoch ms); `None` for a run, which has no period.
    pub fn since_day(self, now: i64) -> Option<i64> {
        match self {
            Scope::Run => None,
            Scope::RepositoryDay => Some(day_number(now)),
            _ => Some(month_start_day(now)),
        }
    }
}

/// Days since 1970-01-01 (UTC) at `now` (epoch ms).
pub fn day_number(now: i64) -> i64 {
    now.div_euclid(DAY_MS)
}

/// The day number of the first day of `now`'s calendar month (UTC).
pub fn month_start_day(now: i64) -> i64 {
    let at = DateTime::<Utc>::from_timestamp_millis(now).unwrap_or_default();
    day_number(now) - i64::from(at.day0())
}

/// What was spent in one scope.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Spent {
    pub usd: f64,
    pub attempts: i64,
    pub agent_ms: i64,
}

/// Why an attempt may not start.
#[derive(Debug, Clone, PartialEq)]
pub struct Exhausted {
    pub scope: Scope,
    /// One paragraph for people: which budget, what was spent against what
    /// limit, and how to raise it.
    pub message: String,
}

/// What is left under every budget, for an attempt allowed to start.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Headroom {
    /// The least dollars left in any scope with a dollar limit.
    pub usd: Option<f64>,
    /// The least agent-minutes left in any scope with that limit.
    pub agent_minutes: Option<f64>,
}

impl Headroom {
    /// The longest an attempt may run before a budget is spent: the
    /// agent-minutes left, and the dollars left at `price`'s per-minute
    /// rate. `None`: no time-based limit applies.
    pub fn time_left(&self, price: Option<&Price>) -> Option<Duration> {
        let by_usd = match (self.usd, price.and_then(|p| p.per_minute)) {
            (Some(usd), Some(rate)) if rate > 0.0 => Some(usd / rate),
            _ => None,
        };
        let minutes = match (self.agent_minutes, by_usd) {
            (Some(a), Some(b)) => a.min(b),
            (a, b) => a.or(b)?,
        };
        Some(Duration::from_secs_f64((minutes * 60.0).max(0.0)))
    }
}

impl Budgets {
    /// The key of a run's context holding the repository's budgets it was
    /// created under (`.github/taskmaster.yml`).
    pub const CONTEXT_KEY: &str = "budgets";

    /// The repository's budgets a run was created under; empty (no limit
    /// of its own) when it has none or they do not read.
    pub fn of_run(context: &serde_json::Value) -> Budgets {
        context
            .get(Self::CONTEXT_KEY)
            .and_then(|v| serde_json::from_value(v.clone()).ok())
            .unwrap_or_default()
    }

    /// The limits of `scope`.
    pub fn limits(&self, scope: Scope) -> Limits {
        match scope {
            Scope::Run => self.run,
            Scope::RepositoryDay => self.repository_day,
            Scope::RepositoryMonth => self.repository_month,
            Scope::InstallationMonth => self.installation_month,
            Scope::GlobalMonth => self.global_month,
        }
    }

    /// Whether any budget is set (no budget: nothing to read or check).
    pub fn is_empty(&self) -> bool {
        Scope::ALL.iter().all(|s| self.limits(*s).is_empty())
    }

    /// Scopes with some limit.
    pub fn scopes(&self) -> impl Iterator<Item = Scope> + '_ {
        Scope::ALL
            .into_iter()
            .filter(|s| !self.limits(*s).is_empty())
    }

    /// `self` narrowed by `other` (a repository's `.github/taskmaster.yml`
    /// may only tighten the service's budgets).
    pub fn tighter(&self, other: &Budgets) -> Budgets {
        Budgets {
            run: self.run.tighter(other.run),
            repository_day: self.repository_day.tighter(other.repository_day),
            repository_month: self.repository_month.tighter(other.repository_month),
            installation_month: self.installation_month.tighter(other.installation_month),
            global_month: self.global_month.tighter(other.global_month),
        }
    }

    /// Checks `spent` (per scope; a scope missing from it spent nothing)
    /// against every budget. The run's attempt count includes the attempt
    /// about to start (the claim recorded it), so `attempts: N` allows N.
    ///
    /// # Errors
    /// The first budget that is spent, in [`Scope::ALL`]'s order.
    pub fn check(&self, spent: &[(Scope, Spent)]) -> Result<Headroom, Exhausted> {
        let mut headroom = Headroom::default();
        for scope in Scope::ALL {
            let limits = self.limits(scope);
            let s = spent
                .iter()
                .find(|(sc, _)| *sc == scope)
                .map(|(_, s)| *s)
                .unwrap_or_default();
            let how = format!(
                "Raise `budgets.{}` in the service configuration (or in the repository's \
                 .github/taskmaster.yml, where it set a lower one)",
                scope.key()
            );
            if let Some(max) = limits.usd {
                if s.usd >= max {
                    return Err(Exhausted {
                        scope,
                        message: format!(
                            "{} of ${max:.2} is spent: ${:.2} so far. {how} (`usd`) to go on.",
                            capitalize(scope.describe()),
                            s.usd
                        ),
                    });
                }
                let left = max - s.usd;
                headroom.usd = Some(headroom.usd.map_or(left, |h: f64| h.min(left)));
            }
            if let Some(max) = limits.attempts {
                // The run's count includes the attempt about to start; the
                // periods' counts are of attempts that ended.
                let over = if scope == Scope::Run {
                    s.attempts > max as i64
                } else {
                    s.attempts >= max as i64
                };
                if over {
                    return Err(Exhausted {
                        scope,
                        message: format!(
                            "{} of {max} attempts is spent: {} so far. {how} (`attempts`) to go on.",
                            capitalize(scope.describe()),
                            s.attempts
                        ),
                    });
                }
            }
            if let Some(max) = limits.agent_minutes {
                let used = s.agent_ms as f64 / 60_000.0;
                if used >= max {
                    return Err(Exhausted {
                        scope,
                        message: format!(
                            "{} of {max} agent-minutes is spent: {used:.1} so far. {how} (`agent_minutes`) to go on.",
                            capitalize(scope.describe())
                        ),
                    });
                }
                let left = max - used;
                headroom.agent_minutes =
                    Some(headroom.agent_minutes.map_or(left, |h: f64| h.min(left)));
            }
        }
        Ok(headroom)
    }
}

fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(cost: Option<f64>, input: Option<u64>, output: Option<u64>) -> Usage {
        Usage {
            cost_usd: cost,
            input_tokens: input,
            output_tokens: output,
            turns: None,
        }
    }

    #[test]
    fn reported_cost_wins_then_tokens_then_minutes() {
        let price = Price {
            input_per_mtok: Some(3.0),
            output_per_mtok: Some(15.0),
            per_minute: Some(0.5),
        };
        let two_min = Duration::from_secs(120);
        assert_eq!(
            attempt_cost(&usage(Some(0.02), Some(1), Some(1)), two_min, Some(&price)),
            (Some(0.02), false)
        );
        let (usd, estimated) = attempt_cost(
            &usage(None, Some(1_000_000), Some(100_000)),
            two_min,
            Some(&price),
        );
        assert!((usd.unwrap() - 4.5).abs() < 1e-9 && estimated);
        let (usd, estimated) = attempt_cost(&usage(None, None, None), two_min, Some(&price));
        assert!((usd.unwrap() - 1.0).abs() < 1e-9 && estimated);
        assert_eq!(
            attempt_cost(&usage(None, None, None), two_min, None),
            (None, false)
        );
    }

    #[test]
    fn months_start_on_the_first_utc_day() {
        // 2026-12-07T10:00:00Z and 2027-01-01T00:00:00Z.
        let dec7 = 1_796_637_600_000;
        let jan1 = 1_798_761_600_000;
        assert_eq!(month_start_day(dec7), day_number(dec7) - 6);
        assert_eq!(month_start_day(jan1), day_number(jan1));
        assert_eq!(month_start_day(jan1 - 1), day_number(jan1) - 31);
    }

    #[test]
    fn the_first_spent_budget_is_named_with_how_to_raise_it() {
        let budgets = Budgets {
            run: Limits {
                usd: Some(5.0),
                attempts: Some(3),
                agent_minutes: None,
            },
            repository_day: Limits {
                usd: Some(20.0),
                ..Limits::default()
            },
            ..Budgets::default()
        };
        let run = |usd, attempts| {
            (
                Scope::Run,
                Spent {
                    usd,
                    attempts,
                    agent_ms: 0,
                },
            )
        };
        let day = |usd| {
            (
                Scope::RepositoryDay,
                Spent {
                    usd,
                    attempts: 0,
                    agent_ms: 0,
                },
            )
        };
        let ok = budgets.check(&[run(1.0, 3), day(12.0)]).unwrap();
        assert_eq!(ok.usd, Some(4.0));
        let e = budgets.check(&[run(1.0, 4), day(0.0)]).unwrap_err();
        assert_eq!(e.scope, Scope::Run);
        assert!(e.message.contains("3 attempts"), "{}", e.message);
        let e = budgets.check(&[run(1.0, 1), day(20.5)]).unwrap_err();
        assert_eq!(e.scope, Scope::RepositoryDay);
        assert!(
            e.message.contains("$20.00") && e.message.contains("$20.50"),
            "{}",
            e.message
        );
        assert!(
            e.message.contains("`budgets.repository_day`"),
            "{}",
            e.message
        );
    }

    #[test]
    fn headroom_bounds_time_by_minutes_and_per_minute_price() {
        let h = Headroom {
            usd: Some(1.0),
            agent_minutes: Some(10.0),
        };
        let price = Price {
            per_minute: Some(0.25),
            ..Price::default()
        };
        assert_eq!(h.time_left(Some(&price)), Some(Duration::from_secs(240)));
        assert_eq!(h.time_left(None), Some(Duration::from_secs(600)));
        assert_eq!(Headroom::default().time_left(Some(&price)), None);
    }

    #[test]
    fn a_repository_may_only_tighten() {
        let service = Budgets {
            run: Limits {
                usd: Some(5.0),
                ..Limits::default()
            },
            ..Budgets::default()
        };
        let repo = Budgets {
            run: Limits {
                usd: Some(50.0),
                attempts: Some(2),
                ..Limits::default()
            },
            ..Budgets::default()
        };
        let t = service.tighter(&repo);
        assert_eq!(t.run.usd, Some(5.0));
        assert_eq!(t.run.attempts, Some(2));
    }
}
