//! Predicted run times: each step's p50 and p90 from the durations of its
//! succeeded attempts — in the same repository when there are enough,
//! else in every repository, else from its timeout — combined over the
//! workflow's DAG (a step starts when its `needs` have finished, so the
//! run takes its critical path) and pushed back by the queue in front of
//! each step's agent.
//!
//! The p90 is the critical path of the steps' p90s: a step's slow attempts
//! do not all happen in the same run, so it leans high; how often runs
//! finish within it is measured ([`accuracy`]) and shown beside it.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{Durations, History, percentile};
use crate::store::RunState;

/// Samples of one repository needed before its own history is used.
pub const MIN_REPOSITORY_SAMPLES: usize = 5;
/// Samples over every repository needed before they are used.
pub const MIN_SAMPLES: usize = 3;
/// Newest samples kept per step and repository.
pub const MAX_SAMPLES: usize = 200;
/// A step with neither history nor a timeout: its p50 (its p90 is 3×).
pub const DEFAULT_STEP_MS: i64 = 60_000;

/// What a step's estimate is based on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Basis {
    /// Its attempts in the same repository.
    Repository,
    /// Its attempts in every repository.
    AllRepositories,
    /// No history: half its timeout (p50) and its timeout (p90).
    Timeout,
    /// No history and no timeout: [`DEFAULT_STEP_MS`].
    Default,
}

impl Basis {
    /// For people.
    pub fn describe(self) -> &'static str {
        match self {
            Basis::Repository => "this repository's history",
            Basis::AllRepositories => "every repository's history",
            Basis::Timeout => "the step's timeout (no history yet)",
            Basis::Default => "a default (no history, no timeout)",
        }
    }
}

/// One step of a workflow's DAG, as the predictor needs it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DagStep {
    pub id: String,
    pub needs: Vec<String>,
    pub agent: String,
    pub timeout_ms: Option<i64>,
}

/// The DAG of `workflow` (its steps are in topological order).
pub fn dag_of(workflow: &crate::workflow::Workflow) -> Vec<DagStep> {
    workflow
        .steps
        .iter()
        .map(|s| DagStep {
            id: s.id.clone(),
            needs: s.needs.clone(),
            agent: s.agent.clone(),
            timeout_ms: s.timeout.map(|t| t.as_millis() as i64),
        })
        .collect()
}

/// One step's estimate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct StepEstimate {
    pub step: String,
    pub p50_ms: i64,
    pub p90_ms: i64,
    pub basis: Basis,
    /// Attempts it is drawn from.
    pub samples: usize,
}

/// A run's predicted duration, from its start, and the waits in front of
/// it; kept in the run's context ([`Prediction::CONTEXT_KEY`]) from its
/// creation, so reports and pages show what was predicted then.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Prediction {
    /// Creation to finish, queue included.
    pub p50_ms: i64,
    pub p90_ms: i64,
    /// Of which waiting for agents busy with runs ahead of it.
    pub queue_ms: i64,
    /// The steps on the critical path (of the p50s), in order.
    pub critical_path: Vec<String>,
    pub steps: Vec<StepEstimate>,
    /// The weakest basis any step's estimate rests on.
    pub basis: Basis,
}

impl Prediction {
    /// Where runs keep their prediction in their context.
    pub const CONTEXT_KEY: &'static str = "prediction";

    /// The prediction a run's context holds, if any.
    pub fn of_context(context: &serde_json::Value) -> Option<Prediction> {
        serde_json::from_value(context.get(Self::CONTEXT_KEY)?.clone()).ok()
    }

    /// "about 7 min, 90 % within 12 min".
    pub fn describe(&self) -> String {
        format!(
            "about {}, 90 % within {}",
            minutes(self.p50_ms),
            minutes(self.p90_ms)
        )
    }

    /// Time left (p50, p90) for a run whose steps stand as `steps` at
    /// `now`: finished steps take nothing more, a running step its
    /// estimate less what it has run (at least a second), the rest their
    /// estimates after their needs.
    pub fn remaining(&self, dag: &[DagStep], steps: &[StepProgress], now: i64) -> (i64, i64) {
        let estimate: HashMap<&str, &StepEstimate> =
            self.steps.iter().map(|s| (s.step.as_str(), s)).collect();
        let progress: HashMap<&str, &StepProgress> =
            steps.iter().map(|s| (s.step.as_str(), s)).collect();
        let left = |pick: fn(&StepEstimate) -> i64| {
            critical_path(dag, |step| {
                let e = estimate.get(step.id.as_str()).map(|e| pick(e)).unwrap_or(0);
                match progress.get(step.id.as_str()) {
                    Some(p) if p.finished => (0, 0),
                    Some(StepProgress {
                        started_at: Some(at),
                        ..
                    }) => (0, (e - (now - at)).max(1_000)),
                    _ => (0, e),
                }
            })
            .0
        };
        (left(|e| e.p50_ms), left(|e| e.p90_ms))
    }
}

/// Where one step of a run stands, for [`Prediction::remaining`].
#[derive(Debug, Clone, PartialEq)]
pub struct StepProgress {
    pub step: String,
    pub started_at: Option<i64>,
    /// Succeeded, failed, skipped or cancelled.
    pub finished: bool,
}

/// "45 s", "7 min", "1 h 20 min" (rounded up to the unit shown).
pub fn minutes(ms: i64) -> String {
    let s = (ms.max(0) + 999) / 1000;
    if s < 60 {
        format!("{s} s")
    } else if s < 3600 {
        format!("{} min", (s + 59) / 60)
    } else {
        let m = (s + 59) / 60;
        format!("{} h {} min", m / 60, m % 60)
    }
}

/// How many steps are ahead of a new run on an agent, and how many run at
/// once there.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct AgentQueue {
    pub ahead: usize,
    pub concurrency: usize,
}

/// Step durations of one workflow, per step and repository.
#[derive(Debug, Clone, Default)]
pub struct Predictor {
    /// (step, repository) → durations, newest first.
    by_repository: HashMap<(String, String), Vec<i64>>,
    /// step → durations, newest first.
    by_step: HashMap<String, Vec<i64>>,
}

impl Predictor {
    /// From `(step, repository, duration ms)` samples, newest first (as
    /// `Queries::step_durations` returns them).
    pub fn new(samples: &[(String, Option<String>, i64)]) -> Self {
        let mut p = Predictor::default();
        for (step, repository, ms) in samples {
            let all = p.by_step.entry(step.clone()).or_default();
            if all.len() < MAX_SAMPLES * 4 {
                all.push(*ms);
            }
            if let Some(repository) = repository {
                let own = p
                    .by_repository
                    .entry((step.clone(), repository.clone()))
                    .or_default();
                if own.len() < MAX_SAMPLES {
                    own.push(*ms);
                }
            }
        }
        p
    }

    /// From the succeeded attempts of `workflow` in `history`, except run
    /// `leave_out`'s (for [`accuracy`]).
    pub fn from_history(history: &History, workflow: &str, leave_out: Option<i64>) -> Self {
        let repository: HashMap<i64, Option<String>> = history
            .runs
            .iter()
            .map(|r| (r.id, r.repository.clone()))
            .collect();
        let mut samples: Vec<(String, Option<String>, i64)> = history
            .attempts
            .iter()
            .rev()
            .filter(|a| a.workflow == workflow && a.succeeded() && Some(a.run_id) != leave_out)
            .filter_map(|a| {
                Some((
                    a.step.clone(),
                    repository.get(&a.run_id).cloned().flatten(),
                    a.ms()?,
                ))
            })
            .collect();
        samples.truncate(MAX_SAMPLES * 20);
        Predictor::new(&samples)
    }

    /// The estimate of `step` in `repository`.
    pub fn step(&self, repository: Option<&str>, step: &DagStep) -> StepEstimate {
        let pick = |samples: &Vec<i64>, basis| {
            let d = Durations::of(samples.clone());
            StepEstimate {
                step: step.id.clone(),
                p50_ms: d.p50_ms.unwrap_or(0),
                p90_ms: d.p90_ms.unwrap_or(0),
                basis,
                samples: samples.len(),
            }
        };
        if let Some(own) = repository
            .and_then(|r| self.by_repository.get(&(step.id.clone(), r.to_string())))
            .filter(|s| s.len() >= MIN_REPOSITORY_SAMPLES)
        {
            return pick(own, Basis::Repository);
        }
        if let Some(all) = self
            .by_step
            .get(&step.id)
            .filter(|s| s.len() >= MIN_SAMPLES)
        {
            return pick(all, Basis::AllRepositories);
        }
        let (p50_ms, p90_ms, basis) = match step.timeout_ms {
            Some(t) => (t / 2, t, Basis::Timeout),
            None => (DEFAULT_STEP_MS, DEFAULT_STEP_MS * 3, Basis::Default),
        };
        StepEstimate {
            step: step.id.clone(),
            p50_ms,
            p90_ms,
            basis,
            samples: 0,
        }
    }

    /// The prediction for a new run of `dag` in `repository`, with `queues`
    /// (by agent) ahead of it: a step on a busy agent waits `ahead /
    /// concurrency` rounds of its own duration before it starts.
    pub fn predict(
        &self,
        repository: Option<&str>,
        dag: &[DagStep],
        queues: &HashMap<String, AgentQueue>,
    ) -> Prediction {
        let steps: Vec<StepEstimate> = dag.iter().map(|s| self.step(repository, s)).collect();
        let by_id: HashMap<&str, &StepEstimate> =
            steps.iter().map(|s| (s.step.as_str(), s)).collect();
        let rounds = |step: &DagStep| {
            queues
                .get(&step.agent)
                .filter(|q| q.concurrency > 0)
                .map(|q| (q.ahead / q.concurrency) as i64)
                .unwrap_or(0)
        };
        let with = |pick: fn(&StepEstimate) -> i64| {
            critical_path(dag, |step| {
                let e = by_id.get(step.id.as_str()).map(|e| pick(e)).unwrap_or(0);
                (rounds(step) * e, e)
            })
        };
        let (p50_ms, path) = with(|e| e.p50_ms);
        let (p90_ms, _) = with(|e| e.p90_ms);
        let (unqueued, _) = critical_path(dag, |step| {
            (
                0,
                by_id.get(step.id.as_str()).map(|e| e.p50_ms).unwrap_or(0),
            )
        });
        let basis = steps
            .iter()
            .map(|s| s.basis)
            .max_by_key(|b| *b as u8)
            .unwrap_or(Basis::Default);
        Prediction {
            p50_ms,
            p90_ms: p90_ms.max(p50_ms),
            queue_ms: p50_ms - unqueued,
            critical_path: path,
            steps,
            basis,
        }
    }
}

/// The longest path through `dag` when each step takes `cost(step)` =
/// (earliest start after now, duration): its length and its steps.
fn critical_path(dag: &[DagStep], cost: impl Fn(&DagStep) -> (i64, i64)) -> (i64, Vec<String>) {
    let mut finish: HashMap<&str, (i64, Option<&str>)> = HashMap::new();
    for step in dag {
        let (earliest, duration) = cost(step);
        let (ready, before) = step
            .needs
            .iter()
            .filter_map(|n| finish.get(n.as_str()).map(|(t, _)| (*t, n.as_str())))
            .max_by_key(|(t, _)| *t)
            .map(|(t, n)| (t, Some(n)))
            .unwrap_or((0, None));
        finish.insert(&step.id, (ready.max(earliest) + duration, before));
    }
    let Some((last, (length, _))) = dag
        .iter()
        .filter_map(|s| finish.get_key_value(s.id.as_str()))
        .max_by_key(|(_, (t, _))| *t)
    else {
        return (0, Vec::new());
    };
    let mut path = vec![last.to_string()];
    let mut at = finish[last].1;
    while let Some(step) = at {
        path.push(step.to_string());
        at = finish[step].1;
    }
    path.reverse();
    (*length, path)
}

/// How well predictions would have done on a workflow's recent runs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Accuracy {
    pub workflow: String,
    /// Succeeded runs checked (the newest, at most [`ACCURACY_RUNS`]).
    pub runs: usize,
    /// Median of |predicted p50 − actual| / actual, start to finish.
    pub median_error: Option<f64>,
    /// Share of runs that finished within the predicted p90.
    pub p90_coverage: Option<f64>,
}

/// Runs per workflow [`accuracy`] checks.
pub const ACCURACY_RUNS: usize = 50;

/// Leave-one-out accuracy over the newest succeeded runs of `workflow`:
/// each is predicted from every other run's attempts (without queues, so
/// against its start-to-finish time).
pub fn accuracy(history: &History, workflow: &str, dag: &[DagStep]) -> Accuracy {
    let runs: Vec<_> = history
        .runs
        .iter()
        .filter(|r| r.workflow == workflow && r.state == RunState::Succeeded)
        .filter_map(|r| Some((r, r.work_ms()?)))
        .filter(|(_, ms)| *ms > 0)
        .take(ACCURACY_RUNS)
        .collect();
    let mut errors: Vec<i64> = Vec::new();
    let mut covered = 0;
    for (run, actual) in &runs {
        let p = Predictor::from_history(history, workflow, Some(run.id)).predict(
            run.repository.as_deref(),
            dag,
            &HashMap::new(),
        );
        // Per mille, so the percentile works on integers.
        errors.push(((p.p50_ms - actual).abs() * 1000) / actual);
        if *actual <= p.p90_ms {
            covered += 1;
        }
    }
    errors.sort_unstable();
    Accuracy {
        workflow: workflow.to_string(),
        runs: runs.len(),
        median_error: percentile(&errors, 50.0).map(|e| e as f64 / 1000.0),
        p90_coverage: (!runs.is_empty()).then(|| covered as f64 / runs.len() as f64),
    }
}

#[cfg(test)]
mod tests {
    use super::super::{AttemptFact, RunFact};
    use super::*;
    use crate::store::AttemptEnd;

    fn step(id: &str, needs: &[&str], agent: &str) -> DagStep {
        DagStep {
            id: id.into(),
            needs: needs.iter().map(|s| s.to_string()).collect(),
            agent: agent.into(),
            timeout_ms: Some(600_000),
        }
    }

    /// review → (lint ∥ test) → report.
    fn dag() -> Vec<DagStep> {
        vec![
            step("review", &[], "claude"),
            step("lint", &["review"], "command"),
            step("test", &["review"], "command"),
            step("report", &["lint", "test"], "claude"),
        ]
    }

    /// A log-normal duration around `median` ms (spread σ = 0.4).
    fn sample(rng: &mut fastrand::Rng, median: f64) -> i64 {
        // Box–Muller.
        let (u, v) = (rng.f64().max(1e-12), rng.f64());
        let z = (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos();
        (median * (0.4 * z).exp()) as i64
    }

    /// `n` succeeded runs of the DAG in `repository`, step medians as given.
    fn history(n: i64, medians: &[(&str, f64)], seed: u64) -> History {
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut h = History::default();
        for id in 1..=n {
            let durations: HashMap<&str, i64> = medians
                .iter()
                .map(|(s, m)| (*s, sample(&mut rng, *m)))
                .collect();
            let d = |s: &str| durations[s];
            let work = d("review") + d("lint").max(d("test")) + d("report");
            h.runs.push(RunFact {
                id,
                workflow: "review".into(),
                repository: Some("octo/widgets".into()),
                state: RunState::Succeeded,
                conclusion: None,
                created_at: id * 1_000_000,
                started_at: Some(id * 1_000_000),
                finished_at: Some(id * 1_000_000 + work),
                cost_usd: 0.0,
            });
            for (s, _) in medians {
                h.attempts.push(AttemptFact {
                    run_id: id,
                    workflow: "review".into(),
                    step: s.to_string(),
                    number: 1,
                    agent: "claude".into(),
                    primary_agent: "claude".into(),
                    started_at: 0,
                    finished_at: Some(d(s)),
                    outcome: Some(AttemptEnd::Succeeded),
                    error_kind: None,
                    error: None,
                    duration_ms: Some(d(s)),
                    cost_usd: None,
                });
            }
        }
        h.runs.reverse();
        h
    }

    const MEDIANS: [(&str, f64); 4] = [
        ("review", 240_000.0),
        ("lint", 30_000.0),
        ("test", 120_000.0),
        ("report", 20_000.0),
    ];

    #[test]
    fn step_percentiles_match_a_known_distribution() {
        let h = history(400, &MEDIANS, 7);
        let p = Predictor::from_history(&h, "review", None);
        let review = p.step(Some("octo/widgets"), &dag()[0]);
        assert_eq!(review.basis, Basis::Repository);
        assert_eq!(review.samples, MAX_SAMPLES);
        // Median 240 s; p90 of a log-normal with σ 0.4 is e^(1.2816·0.4) = 1.67× it.
        let within = |got: i64, want: f64| (got as f64 - want).abs() / want < 0.12;
        assert!(within(review.p50_ms, 240_000.0), "{review:?}");
        assert!(within(review.p90_ms, 240_000.0 * 1.670), "{review:?}");
    }

    #[test]
    fn the_run_takes_its_critical_path() {
        let h = history(400, &MEDIANS, 11);
        let p = Predictor::from_history(&h, "review", None).predict(
            Some("octo/widgets"),
            &dag(),
            &HashMap::new(),
        );
        assert_eq!(p.critical_path, ["review", "test", "report"]);
        let steps: HashMap<&str, &StepEstimate> =
            p.steps.iter().map(|s| (s.step.as_str(), s)).collect();
        assert_eq!(
            p.p50_ms,
            steps["review"].p50_ms + steps["test"].p50_ms + steps["report"].p50_ms
        );
        assert!(p.p90_ms > p.p50_ms);
        assert_eq!(p.queue_ms, 0);
        assert_eq!(p.basis, Basis::Repository);
    }

    #[test]
    fn a_queue_in_front_of_an_agent_pushes_the_run_back() {
        let h = history(100, &MEDIANS, 3);
        let predictor = Predictor::from_history(&h, "review", None);
        let idle = predictor.predict(Some("octo/widgets"), &dag(), &HashMap::new());
        let busy = predictor.predict(
            Some("octo/widgets"),
            &dag(),
            &HashMap::from([(
                "claude".to_string(),
                AgentQueue {
                    ahead: 8,
                    concurrency: 4,
                },
            )]),
        );
        // Two rounds of `review` before it starts; `report` (also on
        // claude) would wait two of its own rounds from now, but the queue
        // has drained by the time its needs are done.
        let review = idle.steps[0].p50_ms;
        assert_eq!(busy.p50_ms, idle.p50_ms + 2 * review);
        assert_eq!(busy.queue_ms, 2 * review);
        // Fewer ahead than slots: no wait.
        let roomy = predictor.predict(
            Some("octo/widgets"),
            &dag(),
            &HashMap::from([(
                "claude".to_string(),
                AgentQueue {
                    ahead: 3,
                    concurrency: 4,
                },
            )]),
        );
        assert_eq!(roomy.p50_ms, idle.p50_ms);
    }

    #[test]
    fn without_history_it_falls_back_and_says_so() {
        let mut h = history(4, &MEDIANS, 5);
        // Another repository's history, too little of this one's.
        for r in &mut h.runs {
            r.repository = Some("octo/other".into());
        }
        let p = Predictor::from_history(&h, "review", None);
        assert_eq!(
            p.step(Some("octo/widgets"), &dag()[0]).basis,
            Basis::AllRepositories
        );
        let none = Predictor::default();
        let e = none.step(Some("octo/widgets"), &dag()[0]);
        assert_eq!(
            (e.basis, e.p50_ms, e.p90_ms),
            (Basis::Timeout, 300_000, 600_000)
        );
        let mut untimed = dag()[0].clone();
        untimed.timeout_ms = None;
        assert_eq!(none.step(None, &untimed).basis, Basis::Default);
        let p = none.predict(None, &dag(), &HashMap::new());
        assert_eq!(p.basis, Basis::Timeout);
        // review, test and report on the critical path: 3 × 5 min, 3 × 10 min.
        assert_eq!(p.describe(), "about 15 min, 90 % within 30 min");
    }

    #[test]
    fn time_left_shrinks_as_steps_finish() {
        let h = history(100, &MEDIANS, 9);
        let p = Predictor::from_history(&h, "review", None).predict(
            Some("octo/widgets"),
            &dag(),
            &HashMap::new(),
        );
        let (all, _) = p.remaining(&dag(), &[], 0);
        assert_eq!(all, p.p50_ms);
        let progress = vec![
            StepProgress {
                step: "review".into(),
                started_at: Some(0),
                finished: true,
            },
            StepProgress {
                step: "test".into(),
                started_at: Some(1_000),
                finished: false,
            },
        ];
        let (left, left90) = p.remaining(&dag(), &progress, 11_000);
        let test = p.steps[2].p50_ms;
        assert_eq!(left, (test - 10_000) + p.steps[3].p50_ms);
        assert!(left90 >= left);
    }

    #[test]
    fn accuracy_on_a_known_history() {
        let h = history(120, &MEDIANS, 13);
        let a = accuracy(&h, "review", &dag());
        assert_eq!(a.runs, ACCURACY_RUNS);
        let error = a.median_error.unwrap();
        let coverage = a.p90_coverage.unwrap();
        assert!(error < 0.35, "median error {error}");
        assert!(coverage >= 0.85, "p90 coverage {coverage}");
    }

    #[test]
    fn durations_read_in_minutes() {
        assert_eq!(minutes(45_000), "45 s");
        assert_eq!(minutes(420_000), "7 min");
        assert_eq!(minutes(421_000), "8 min");
        assert_eq!(minutes(4_800_000), "1 h 20 min");
    }
}
