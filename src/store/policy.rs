//! The store's decisions, as pure functions both backends call: which
//! steps a retry resets, and which ready steps a claim may take against the
//! in-flight, per-agent and per-run (`max_parallel`) limits. The backends
//! only read the rows these need and write what they decide, so SQLite and
//! PostgreSQL cannot drift apart in policy, and the policy is tested once
//! (here, with unit and property tests) rather than through SQL twice.
//!
//! Concurrency groups stay in the claim's SQL (`NOT EXISTS` an older live
//! run of the group): that is a filter on rows, not a count.

use std::collections::{HashMap, HashSet};

use super::runs::{ClaimLimits, StepRecord, StepState};

/// What [`retry_plan`] decided.
#[derive(Debug, Clone, PartialEq)]
pub enum RetryPlan<'a> {
    /// The named step is not in the run.
    NotFound,
    /// Nothing to reset: no failed step (or the named one has not ended).
    Unchanged,
    /// Reset these steps to `pending` (in the order given); never a running
    /// or pending step.
    Reset(Vec<&'a StepRecord>),
}

/// Which steps of a run a retry resets: the named `step` if it has ended,
/// else every failed step; then, transitively, every step that needs one
/// of those (whatever order `steps` is in). Running steps are left to
/// finish and pending ones are already pending, so neither is reset.
pub fn retry_plan<'a>(steps: &'a [StepRecord], step: Option<&str>) -> RetryPlan<'a> {
    let mut reset: HashSet<&str> = HashSet::new();
    match step {
        Some(name) => {
            let Some(s) = steps.iter().find(|s| s.step == name) else {
                return RetryPlan::NotFound;
            };
            if s.state.is_terminal() {
                reset.insert(&s.step);
            }
        }
        None => reset.extend(
            steps
                .iter()
                .filter(|s| s.state.is_failure())
                .map(|s| s.step.as_str()),
        ),
    }
    if reset.is_empty() {
        return RetryPlan::Unchanged;
    }
    // Dependents, to a fixed point.
    loop {
        let before = reset.len();
        for s in steps {
            if !reset.contains(s.step.as_str())
                && s.needs.iter().any(|n| reset.contains(n.as_str()))
            {
                reset.insert(&s.step);
            }
        }
        if reset.len() == before {
            break;
        }
    }
    let chosen: Vec<&StepRecord> = steps
        .iter()
        .filter(|s| {
            reset.contains(s.step.as_str())
                && !matches!(s.state, StepState::Running | StepState::Pending)
        })
        .collect();
    if chosen.is_empty() {
        RetryPlan::Unchanged
    } else {
        RetryPlan::Reset(chosen)
    }
}

/// A ready step a claim may take, one row of the claim's query (in
/// service order).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimCandidate {
    pub step_row: i64,
    pub run_id: i64,
    pub agent: String,
    /// The run's `max_parallel`, if it has one.
    pub max_parallel: Option<i64>,
    /// The run's workflow and delivery (for the claimed step's record).
    pub workflow: String,
    pub delivery_id: String,
}

/// Claim admission: which candidates, taken in service order, fit the
/// limits. Build it with the steps running now, ask [`Admission::admits`]
/// for each candidate in order, and tell it [`Admission::claimed`] for each
/// one the backend did claim (a row another claimer took first is not).
#[derive(Debug)]
pub struct Admission<'a> {
    limits: &'a ClaimLimits,
    running_per_agent: HashMap<String, i64>,
    running_per_run: HashMap<i64, i64>,
    claimed: usize,
}

impl<'a> Admission<'a> {
    /// `running_per_agent`: running steps by agent (database-wide; only
    /// needed for agents `limits` names); `running_per_run`: running steps
    /// of each candidate run that has a `max_parallel`.
    pub fn new(
        limits: &'a ClaimLimits,
        running_per_agent: HashMap<String, i64>,
        running_per_run: HashMap<i64, i64>,
    ) -> Self {
        Self {
            limits,
            running_per_agent,
            running_per_run,
            claimed: 0,
        }
    }

    /// The claim has all it may take.
    pub fn full(&self) -> bool {
        self.claimed >= self.limits.max
    }

    /// Whether `c` may be claimed now: the claim is not full, its agent is
    /// under its limit, and its run under its `max_parallel`.
    pub fn admits(&self, c: &ClaimCandidate) -> bool {
        if self.full() {
            return false;
        }
        if let Some(limit) = self.limits.per_agent.get(&c.agent)
            && self.running_per_agent.get(&c.agent).copied().unwrap_or(0) >= i64::from(*limit)
        {
            return false;
        }
        if let Some(max) = c.max_parallel
            && self.running_per_run.get(&c.run_id).copied().unwrap_or(0) >= max
        {
            return false;
        }
        true
    }

    /// `c` was claimed: it counts against the limits from now on.
    pub fn claimed(&mut self, c: &ClaimCandidate) {
        self.claimed += 1;
        *self.running_per_agent.entry(c.agent.clone()).or_insert(0) += 1;
        *self.running_per_run.entry(c.run_id).or_insert(0) += 1;
    }

    /// The runs among `candidates` whose running steps [`Admission::new`]
    /// needs (those with a `max_parallel`), each once.
    pub fn runs_to_count(candidates: &[ClaimCandidate]) -> Vec<i64> {
        let mut runs: Vec<i64> = candidates
            .iter()
            .filter(|c| c.max_parallel.is_some())
            .map(|c| c.run_id)
            .collect();
        runs.sort_unstable();
        runs.dedup();
        runs
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn step(name: &str, state: StepState, needs: &[&str]) -> StepRecord {
        StepRecord {
            id: crate::store::StepId(0),
            run_id: crate::store::RunId(1),
            step: name.into(),
            position: 0,
            needs: needs.iter().map(|s| s.to_string()).collect(),
            continue_on_error: false,
            state,
            agent: "worker".into(),
            agent_index: 0,
            attempts: 0,
            agent_attempts: 0,
            run_at: 0,
            priority: 0,
            lease_owner: None,
            lease_expires_at: None,
            output: None,
            error: None,
            started_at: None,
            finished_at: None,
            cost_usd: 0.0,
        }
    }

    #[test]
    fn a_retry_resets_failed_steps_and_their_dependents_whatever_the_order() {
        use StepState::*;
        // Listed out of topological order on purpose.
        let steps = vec![
            step("deploy", Skipped, &["test"]),
            step("test", Failed, &["build"]),
            step("build", Succeeded, &[]),
            step("notify", Skipped, &["deploy"]),
            step("lint", Succeeded, &[]),
        ];
        let names = |plan: RetryPlan<'_>| match plan {
            RetryPlan::Reset(chosen) => chosen.iter().map(|s| s.step.clone()).collect(),
            other => panic!("{other:?}"),
        };
        let reset: Vec<String> = names(retry_plan(&steps, None));
        assert_eq!(reset, ["deploy", "test", "notify"]);
        // A named step that ended: it and its dependents.
        let reset: Vec<String> = names(retry_plan(&steps, Some("build")));
        assert_eq!(reset, ["deploy", "test", "build", "notify"]);
        assert_eq!(retry_plan(&steps, Some("nope")), RetryPlan::NotFound);
        let running = vec![step("a", Running, &[]), step("b", Pending, &["a"])];
        assert_eq!(retry_plan(&running, Some("a")), RetryPlan::Unchanged);
        assert_eq!(retry_plan(&running, None), RetryPlan::Unchanged);
    }

    fn limits(max: usize, per_agent: &[(&str, u32)]) -> ClaimLimits {
        ClaimLimits {
            max,
            per_agent: per_agent.iter().map(|(a, n)| (a.to_string(), *n)).collect(),
            ..ClaimLimits::default()
        }
    }

    fn candidate(row: i64, run: i64, agent: &str, max_parallel: Option<i64>) -> ClaimCandidate {
        ClaimCandidate {
            step_row: row,
            run_id: run,
            agent: agent.into(),
            max_parallel,
            workflow: "review".into(),
            delivery_id: "d-1".into(),
        }
    }

    #[test]
    fn admission_counts_running_steps_and_its_own_claims() {
        let limits = limits(3, &[("claude", 2)]);
        let running = HashMap::from([("claude".to_string(), 1)]);
        let mut a = Admission::new(&limits, running, HashMap::from([(7, 1)]));
        let c1 = candidate(1, 7, "claude", Some(2));
        let c2 = candidate(2, 7, "goose", Some(2));
        let c3 = candidate(3, 8, "claude", None);
        let c4 = candidate(4, 9, "goose", None);
        let c5 = candidate(5, 10, "goose", None);
        let mut taken = Vec::new();
        for c in [&c1, &c2, &c3, &c4, &c5] {
            if a.admits(c) {
                a.claimed(c);
                taken.push(c.step_row);
            }
        }
        // c2: run 7 is at max_parallel 2 after c1; c3: claude at 2.
        assert_eq!(taken, vec![1, 4, 5]);
        assert!(a.full());
    }

    proptest! {
        /// Whatever the candidates and limits, admission never exceeds a
        /// limit, and skips a candidate only because a limit is reached.
        #[test]
        fn admission_never_exceeds_a_limit_and_is_greedy(
            max in 0usize..8,
            agent_limit in 0u32..4,
            picks in proptest::collection::vec((0i64..4, 0usize..3, proptest::option::of(1i64..3)), 0..24),
            running_a in 0i64..3,
        ) {
            let agents = ["a", "b", "c"];
            let limits = limits(max, &[("a", agent_limit)]);
            // One max_parallel per run (the first seen).
            let mut per_run_max: HashMap<i64, Option<i64>> = HashMap::new();
            let candidates: Vec<ClaimCandidate> = picks
                .iter()
                .enumerate()
                .map(|(i, (run, agent, mp))| {
                    let mp = *per_run_max.entry(*run).or_insert(*mp);
                    candidate(i as i64, *run, agents[*agent], mp)
                })
                .collect();
            let mut a = Admission::new(
                &limits,
                HashMap::from([("a".to_string(), running_a)]),
                HashMap::new(),
            );
            let mut by_agent: HashMap<&str, i64> = HashMap::from([("a", running_a)]);
            let mut by_run: HashMap<i64, i64> = HashMap::new();
            let mut total = 0usize;
            for c in &candidates {
                let agent_full = c.agent == "a" && by_agent["a"] >= i64::from(agent_limit);
                let run_full = c
                    .max_parallel
                    .is_some_and(|m| by_run.get(&c.run_id).copied().unwrap_or(0) >= m);
                let expected = total < max && !agent_full && !run_full;
                prop_assert_eq!(a.admits(c), expected);
                if expected {
                    a.claimed(c);
                    total += 1;
                    *by_agent.entry(c.agent.as_str()).or_insert(0) += 1;
                    *by_run.entry(c.run_id).or_insert(0) += 1;
                }
            }
            prop_assert!(total <= max);
            prop_assert!(by_agent["a"] <= i64::from(agent_limit).max(running_a));
        }

        /// A retry never resets a running or pending step, and whatever it
        /// resets, it resets every ended dependent too.
        #[test]
        fn a_retry_closes_over_dependents(
            states in proptest::collection::vec(0usize..6, 1..10),
            edges in proptest::collection::vec((0usize..10, 0usize..10), 0..20),
        ) {
            use StepState::*;
            let all = [Pending, Running, Succeeded, Failed, Skipped, Cancelled];
            let n = states.len();
            let mut steps: Vec<StepRecord> = (0..n)
                .map(|i| step(&format!("s{i}"), all[states[i]], &[]))
                .collect();
            // Edges only from later to earlier steps: a DAG.
            for (a, b) in edges {
                let (a, b) = (a % n, b % n);
                if a > b {
                    let need = format!("s{b}");
                    if !steps[a].needs.contains(&need) {
                        steps[a].needs.push(need);
                    }
                }
            }
            steps.reverse();
            if let RetryPlan::Reset(chosen) = retry_plan(&steps, None) {
                let chosen: HashSet<&str> = chosen.iter().map(|s| s.step.as_str()).collect();
                for s in &steps {
                    if chosen.contains(s.step.as_str()) {
                        prop_assert!(!matches!(s.state, Running | Pending));
                    }
                    let needs_reset = s.needs.iter().any(|n| chosen.contains(n.as_str()));
                    if needs_reset && !matches!(s.state, Running | Pending) {
                        prop_assert!(chosen.contains(s.step.as_str()), "{} left out", s.step);
                    }
                }
            }
        }
    }
}
