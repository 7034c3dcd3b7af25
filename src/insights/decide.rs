//! The engine's adaptive part (`adaptive_agents: true` on a workflow):
//! whether a step should start on its first fallback because its own agent
//! has been failing it. Decided from the step's recent attempts that ran
//! (`Histories::recent_outcomes`), never from one bad attempt, and recorded
//! in the run's timeline with the numbers, like the engine's other
//! decisions.

/// Attempts of a step, newest first, the decision looks at.
pub const RECENT_ATTEMPTS: i64 = 50;
/// The agent's attempts needed before it is judged.
pub const MIN_PRIMARY_ATTEMPTS: i64 = 10;
/// The fallback's attempts needed before it is trusted instead.
pub const MIN_FALLBACK_ATTEMPTS: i64 = 5;
/// Below this success rate the agent is likely to fail.
pub const FAILING_BELOW: f64 = 0.5;
/// How much more often the fallback must succeed.
pub const MARGIN: f64 = 0.2;

/// Error kinds of attempts that never reached their agent (an open
/// circuit, a spent budget, no workspace, or this decision): they say
/// nothing about how the agent does.
pub const NOT_RUN_KINDS: [&str; 4] = ["circuit_open", "budget", "workspace", "history"];

/// Why the step should start on `fallback` instead of `primary`, given the
/// step's recent `(agent, attempts, succeeded)`; `None` to run as written.
pub fn prefer_fallback(
    primary: &str,
    fallback: &str,
    recent: &[(String, i64, i64)],
) -> Option<String> {
    let of = |agent: &str| {
        recent
            .iter()
            .find(|(a, _, _)| a == agent)
            .map(|(_, n, ok)| (*n, *ok))
            .unwrap_or((0, 0))
    };
    let (n, ok) = of(primary);
    let (fn_, fok) = of(fallback);
    if n < MIN_PRIMARY_ATTEMPTS || fn_ < MIN_FALLBACK_ATTEMPTS {
        return None;
    }
    let (rate, frate) = (ok as f64 / n as f64, fok as f64 / fn_ as f64);
    (rate < FAILING_BELOW && frate >= rate + MARGIN).then(|| {
        format!(
            "agent `{primary}` succeeded in {ok} of its last {n} attempts at this step and \
             `{fallback}` in {fok} of {fn_}: starting on `{fallback}` (adaptive_agents)"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(agent: &str, n: i64, ok: i64) -> (String, i64, i64) {
        (agent.into(), n, ok)
    }

    #[test]
    fn a_failing_agent_gives_way_to_a_better_fallback_with_the_numbers() {
        let why =
            prefer_fallback("claude", "aider", &[r("claude", 12, 3), r("aider", 6, 5)]).unwrap();
        assert_eq!(
            why,
            "agent `claude` succeeded in 3 of its last 12 attempts at this step and `aider` in 5 \
             of 6: starting on `aider` (adaptive_agents)"
        );
    }

    #[test]
    fn too_little_evidence_or_no_better_fallback_keeps_the_order() {
        // Too few attempts of the agent, or of the fallback.
        assert_eq!(
            prefer_fallback("claude", "aider", &[r("claude", 9, 0), r("aider", 9, 9)]),
            None
        );
        assert_eq!(
            prefer_fallback("claude", "aider", &[r("claude", 20, 2), r("aider", 4, 4)]),
            None
        );
        // The agent does well enough.
        assert_eq!(
            prefer_fallback("claude", "aider", &[r("claude", 20, 10), r("aider", 9, 9)]),
            None
        );
        // The fallback is no better by the margin.
        assert_eq!(
            prefer_fallback("claude", "aider", &[r("claude", 20, 8), r("aider", 10, 5)]),
            None
        );
        assert_eq!(prefer_fallback("claude", "aider", &[]), None);
    }
}
