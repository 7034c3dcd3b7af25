//! Insights: what the history of runs and attempts says about workflows,
//! steps, agents and repositories — analytics ([`analyze`]), predicted run
//! times ([`predict`]), advice with its evidence ([`advice`]) and a written
//! report an agent makes of them every week ([`weekly`]).
//!
//! Everything here is a pure function of a [`History`] read from the store
//! (`Queries::history`), so it is computed the same way for the API
//! (`GET /api/insights`), the dashboard (`/insights`) and the check runs,
//! and is tested on generated histories.
//!
//! Percentiles are nearest-rank over the samples (`p50` of 1, 2, 3, 4 is 2);
//! durations are milliseconds; instants are epoch milliseconds.

pub mod advice;
pub mod chart;
pub mod decide;
pub mod predict;
pub mod weekly;

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::store::{AttemptEnd, RunState};

/// One run, as history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RunFact {
    pub id: i64,
    pub workflow: String,
    pub repository: Option<String>,
    /// `queued`, `running`, `paused`, `succeeded`, `failed`, `cancelled`, `timed_out`.
    pub state: RunState,
    pub conclusion: Option<String>,
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    /// US dollars its attempts cost.
    pub cost_usd: f64,
}

impl RunFact {
    /// Whether a newer run of its concurrency group cancelled it.
    pub fn superseded(&self) -> bool {
        self.state == RunState::Cancelled
            && self
                .conclusion
                .as_deref()
                .is_some_and(|c| c.starts_with("superseded by run"))
    }

    /// Creation to start: time spent waiting (approval, queue).
    pub fn queue_ms(&self) -> Option<i64> {
        self.started_at.map(|s| (s - self.created_at).max(0))
    }

    /// Start to finish: time spent working.
    pub fn work_ms(&self) -> Option<i64> {
        Some((self.finished_at? - self.started_at?).max(0))
    }
}

/// One attempt of a step, as history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AttemptFact {
    pub run_id: i64,
    pub workflow: String,
    pub step: String,
    /// 1-based over every agent of the step.
    pub number: i64,
    pub agent: String,
    /// The step's own agent (others are its fallbacks).
    pub primary_agent: String,
    pub started_at: i64,
    pub finished_at: Option<i64>,
    /// `succeeded`, `failed`, `timed_out`, `cancelled`, `lost`; absent while running.
    pub outcome: Option<AttemptEnd>,
    /// What went wrong (`agent`, `timeout`, `idle_timeout`, `unreachable`, …).
    pub error_kind: Option<String>,
    pub error: Option<String>,
    pub duration_ms: Option<i64>,
    pub cost_usd: Option<f64>,
}

impl AttemptFact {
    fn succeeded(&self) -> bool {
        self.outcome == Some(AttemptEnd::Succeeded)
    }

    fn failed(&self) -> bool {
        matches!(
            self.outcome,
            Some(AttemptEnd::Failed | AttemptEnd::TimedOut)
        )
    }

    fn timed_out(&self) -> bool {
        self.outcome == Some(AttemptEnd::TimedOut)
            || matches!(self.error_kind.as_deref(), Some("timeout" | "idle_timeout"))
    }

    /// Whether the attempt reached its agent (see [`decide::NOT_RUN_KINDS`]).
    pub fn ran(&self) -> bool {
        !self
            .error_kind
            .as_deref()
            .is_some_and(|k| decide::NOT_RUN_KINDS.contains(&k))
    }

    fn fallback(&self) -> bool {
        self.agent != self.primary_agent
    }

    fn ms(&self) -> Option<i64> {
        self.duration_ms
            .or_else(|| Some(self.finished_at? - self.started_at))
    }
}

/// Runs created in a window and their attempts.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct History {
    /// Start of the window (epoch ms).
    pub since: i64,
    /// Newest first.
    pub runs: Vec<RunFact>,
    /// Oldest first.
    pub attempts: Vec<AttemptFact>,
}

/// The `p`-th percentile (0–100, nearest rank) of `sorted`; `None` when empty.
pub fn percentile(sorted: &[i64], p: f64) -> Option<i64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// Count, p50, p90 and p95 of some durations.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Durations {
    pub count: usize,
    pub p50_ms: Option<i64>,
    pub p90_ms: Option<i64>,
    pub p95_ms: Option<i64>,
}

impl Durations {
    /// Of `samples` (any order).
    pub fn of(mut samples: Vec<i64>) -> Self {
        samples.sort_unstable();
        Durations {
            count: samples.len(),
            p50_ms: percentile(&samples, 50.0),
            p90_ms: percentile(&samples, 90.0),
            p95_ms: percentile(&samples, 95.0),
        }
    }
}

/// A share, 0–1; `None` of nothing.
fn rate(part: usize, whole: usize) -> Option<f64> {
    (whole > 0).then(|| part as f64 / whole as f64)
}

/// Runs of one workflow (or one repository).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RunGroup {
    /// The workflow's or repository's name.
    pub name: String,
    pub runs: usize,
    pub succeeded: usize,
    pub failed: usize,
    pub cancelled: usize,
    /// Cancelled because a newer run of their concurrency group started.
    pub superseded: usize,
    /// Succeeded of those that ended succeeded, failed or timed out.
    pub success_rate: Option<f64>,
    /// Creation to finish of finished runs.
    pub duration: Durations,
    /// Creation to start (waiting for approval or a slot).
    pub queue: Durations,
    /// Start to finish.
    pub work: Durations,
    pub cost_usd: f64,
}

/// Attempts of one step of one workflow.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct StepInsight {
    pub workflow: String,
    pub step: String,
    /// Runs in which the step made at least one attempt.
    pub runs: usize,
    pub attempts: usize,
    /// Runs in which the step's last attempt succeeded, of `runs`.
    pub success_rate: Option<f64>,
    /// Of succeeded attempts.
    pub duration: Durations,
    /// Runs in which the step needed more than one attempt, of `runs`.
    pub retry_rate: Option<f64>,
    /// Runs in which a fallback agent was tried, of `runs`.
    pub fallback_rate: Option<f64>,
    /// Fallback agent → runs it rescued (its attempt succeeded).
    pub rescued_by: BTreeMap<String, usize>,
    /// Attempts that ran out of time.
    pub timeouts: usize,
    /// Runs in which an attempt failed and a later attempt on the same
    /// agent (a retry of the same commit) passed.
    pub flaky_runs: usize,
    pub cost_usd: f64,
    /// The step's primary agent in its latest attempt.
    pub primary_agent: String,
}

/// Attempts on one agent.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AgentInsight {
    pub agent: String,
    pub attempts: usize,
    pub succeeded: usize,
    pub success_rate: Option<f64>,
    /// Of succeeded attempts.
    pub duration: Durations,
    pub timeouts: usize,
    /// Attempts that could not reach the agent or found it busy or
    /// rate-limited (what opens its circuit).
    pub unavailable: usize,
    pub cost_usd: f64,
}

/// A failure message that recurs, normalised ([`normalise`]).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ErrorPattern {
    pub pattern: String,
    pub count: usize,
    /// One message as it was (redacted when stored).
    pub example: String,
    /// `workflow/step` it came from.
    pub steps: BTreeSet<String>,
    pub agents: BTreeSet<String>,
}

/// One day's runs (UTC), for the trend charts.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Day {
    /// Days since 1970-01-01.
    pub day: i64,
    pub runs: usize,
    pub succeeded: usize,
    /// p50 of the day's finished runs, creation to finish.
    pub p50_ms: Option<i64>,
    pub cost_usd: f64,
}

/// Everything [`analyze`] finds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Analytics {
    pub since: i64,
    pub workflows: Vec<RunGroup>,
    pub repositories: Vec<RunGroup>,
    pub steps: Vec<StepInsight>,
    pub agents: Vec<AgentInsight>,
    /// Most frequent first; patterns seen at least twice.
    pub errors: Vec<ErrorPattern>,
    /// Oldest first.
    pub days: Vec<Day>,
}

/// A failure message with what varies between occurrences taken out:
/// numbers, hexadecimal ids, quoted strings, and paths become `#`, `<hex>`,
/// `"…"` and `<path>`; whitespace is collapsed; at most 160 characters.
pub fn normalise(message: &str) -> String {
    static RULES: std::sync::LazyLock<Vec<(regex::Regex, &'static str)>> =
        std::sync::LazyLock::new(|| {
            [
                (r#""[^"]*"|'[^']*'|`[^`]*`"#, "\"…\""),
                (r"(?:/[\w.\-]+){2,}", "<path>"),
                (r"\b[0-9a-fA-F]{7,}\b", "<hex>"),
                (r"\d+(?:\.\d+)?", "#"),
                (r"\s+", " "),
            ]
            .into_iter()
            .map(|(p, r)| (regex::Regex::new(p).expect("a valid pattern"), r))
            .collect()
        });
    let mut out = message.trim().to_string();
    for (re, with) in RULES.iter() {
        out = re.replace_all(&out, *with).into_owned();
    }
    out.chars().take(160).collect()
}

fn group(name: String, runs: &[&RunFact]) -> RunGroup {
    let failed = |s: RunState| matches!(s, RunState::Failed | RunState::TimedOut);
    let ended = |s: RunState| s == RunState::Succeeded || failed(s);
    let succeeded = runs
        .iter()
        .filter(|r| r.state == RunState::Succeeded)
        .count();
    RunGroup {
        name,
        runs: runs.len(),
        succeeded,
        failed: runs.iter().filter(|r| failed(r.state)).count(),
        cancelled: runs
            .iter()
            .filter(|r| r.state == RunState::Cancelled)
            .count(),
        superseded: runs.iter().filter(|r| r.superseded()).count(),
        success_rate: rate(succeeded, runs.iter().filter(|r| ended(r.state)).count()),
        duration: Durations::of(
            runs.iter()
                .filter_map(|r| Some(r.finished_at? - r.created_at))
                .collect(),
        ),
        queue: Durations::of(runs.iter().filter_map(|r| r.queue_ms()).collect()),
        work: Durations::of(runs.iter().filter_map(|r| r.work_ms()).collect()),
        cost_usd: runs.iter().map(|r| r.cost_usd).sum(),
    }
}

/// Analytics of `history`, per workflow, repository, step and agent.
pub fn analyze(history: &History) -> Analytics {
    let mut by_workflow: BTreeMap<&str, Vec<&RunFact>> = BTreeMap::new();
    let mut by_repository: BTreeMap<&str, Vec<&RunFact>> = BTreeMap::new();
    let mut by_day: BTreeMap<i64, Vec<&RunFact>> = BTreeMap::new();
    for r in &history.runs {
        by_workflow.entry(&r.workflow).or_default().push(r);
        by_repository
            .entry(r.repository.as_deref().unwrap_or(""))
            .or_default()
            .push(r);
        by_day
            .entry(r.created_at.div_euclid(86_400_000))
            .or_default()
            .push(r);
    }
    // Steps: attempts grouped by (workflow, step), then by run.
    let mut by_step: BTreeMap<(&str, &str), BTreeMap<i64, Vec<&AttemptFact>>> = BTreeMap::new();
    let mut by_agent: BTreeMap<&str, Vec<&AttemptFact>> = BTreeMap::new();
    let mut errors: HashMap<String, ErrorPattern> = HashMap::new();
    for a in &history.attempts {
        by_step
            .entry((&a.workflow, &a.step))
            .or_default()
            .entry(a.run_id)
            .or_default()
            .push(a);
        if !a.ran() {
            continue;
        }
        by_agent.entry(&a.agent).or_default().push(a);
        if let (true, Some(message)) = (a.failed(), a.error.as_deref()) {
            let pattern = normalise(message);
            let e = errors
                .entry(pattern.clone())
                .or_insert_with(|| ErrorPattern {
                    pattern,
                    example: message.chars().take(400).collect(),
                    ..Default::default()
                });
            e.count += 1;
            e.steps.insert(format!("{}/{}", a.workflow, a.step));
            e.agents.insert(a.agent.clone());
        }
    }
    let steps = by_step
        .into_iter()
        .map(|((workflow, step), runs)| step_insight(workflow, step, &runs))
        .collect();
    let agents = by_agent
        .into_iter()
        .map(|(agent, attempts)| {
            let succeeded = attempts.iter().filter(|a| a.succeeded()).count();
            AgentInsight {
                agent: agent.to_string(),
                attempts: attempts.len(),
                succeeded,
                success_rate: rate(
                    succeeded,
                    attempts
                        .iter()
                        .filter(|a| a.succeeded() || a.failed())
                        .count(),
                ),
                duration: Durations::of(
                    attempts
                        .iter()
                        .filter(|a| a.succeeded())
                        .filter_map(|a| a.ms())
                        .collect(),
                ),
                timeouts: attempts.iter().filter(|a| a.timed_out()).count(),
                unavailable: attempts
                    .iter()
                    .filter(|a| {
                        matches!(
                            a.error_kind.as_deref(),
                            Some("unreachable" | "busy" | "rate_limited")
                        )
                    })
                    .count(),
                cost_usd: attempts.iter().filter_map(|a| a.cost_usd).sum(),
            }
        })
        .collect();
    let mut errors: Vec<ErrorPattern> = errors.into_values().filter(|e| e.count >= 2).collect();
    errors.sort_by(|a, b| b.count.cmp(&a.count).then(a.pattern.cmp(&b.pattern)));
    Analytics {
        since: history.since,
        workflows: by_workflow
            .into_iter()
            .map(|(name, runs)| group(name.to_string(), &runs))
            .collect(),
        repositories: by_repository
            .into_iter()
            .map(|(name, runs)| group(name.to_string(), &runs))
            .collect(),
        steps,
        agents,
        errors,
        days: by_day
            .into_iter()
            .map(|(day, runs)| {
                let g = group(String::new(), &runs);
                Day {
                    day,
                    runs: g.runs,
                    succeeded: g.succeeded,
                    p50_ms: g.duration.p50_ms,
                    cost_usd: g.cost_usd,
                }
            })
            .collect(),
    }
}

fn step_insight(
    workflow: &str,
    step: &str,
    runs: &BTreeMap<i64, Vec<&AttemptFact>>,
) -> StepInsight {
    let mut s = StepInsight {
        workflow: workflow.to_string(),
        step: step.to_string(),
        runs: runs.len(),
        ..Default::default()
    };
    let (mut passed, mut retried, mut fell_back) = (0, 0, 0);
    let mut durations = Vec::new();
    for attempts in runs.values() {
        // In attempt order.
        let mut attempts = attempts.clone();
        attempts.sort_by_key(|a| a.number);
        s.attempts += attempts.len();
        s.primary_agent = attempts[0].primary_agent.clone();
        if attempts.last().is_some_and(|a| a.succeeded()) {
            passed += 1;
        }
        if attempts.len() > 1 {
            retried += 1;
        }
        if attempts.iter().any(|a| a.fallback()) {
            fell_back += 1;
            if let Some(rescuer) = attempts.iter().find(|a| a.fallback() && a.succeeded()) {
                *s.rescued_by.entry(rescuer.agent.clone()).or_default() += 1;
            }
        }
        let flaky = attempts.iter().enumerate().any(|(i, failed)| {
            failed.failed()
                && failed.ran()
                && attempts[i + 1..]
                    .iter()
                    .any(|later| later.succeeded() && later.agent == failed.agent)
        });
        if flaky {
            s.flaky_runs += 1;
        }
        s.timeouts += attempts.iter().filter(|a| a.timed_out()).count();
        s.cost_usd += attempts.iter().filter_map(|a| a.cost_usd).sum::<f64>();
        durations.extend(
            attempts
                .iter()
                .filter(|a| a.succeeded())
                .filter_map(|a| a.ms()),
        );
    }
    s.success_rate = rate(passed, s.runs);
    s.retry_rate = rate(retried, s.runs);
    s.fallback_rate = rate(fell_back, s.runs);
    s.duration = Durations::of(durations);
    s
}

/// The most runs a [`report`] reads (the newest of its window).
pub const MAX_RUNS: i64 = 20_000;

/// What `GET /api/insights` and `/insights` show.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Report {
    /// Start of the window (epoch ms).
    pub since: i64,
    pub days: i64,
    /// The filters applied, if any.
    pub workflow: Option<String>,
    pub repository: Option<String>,
    /// Whether the window held more than [`MAX_RUNS`] runs (only the
    /// newest were read).
    pub truncated: bool,
    pub analytics: Analytics,
    pub advice: Vec<advice::Advice>,
    /// How far to trust the predictions, per workflow.
    pub accuracy: Vec<predict::Accuracy>,
}

/// The last `days` days (up to `now`) of runs, optionally of one workflow
/// or repository: analytics, advice against `workflows`, and the
/// predictions' accuracy.
///
/// Errors: the store's.
pub async fn report(
    store: &dyn crate::store::Histories,
    workflows: &crate::workflow::WorkflowSet,
    now: i64,
    days: i64,
    workflow: Option<&str>,
    repository: Option<&str>,
) -> Result<Report, crate::store::StoreError> {
    let since = now - days * 86_400_000;
    let mut history = store.history(since, MAX_RUNS).await?;
    let truncated = history.runs.len() as i64 >= MAX_RUNS;
    if workflow.is_some() || repository.is_some() {
        history.runs.retain(|r| {
            workflow.is_none_or(|w| r.workflow == w)
                && repository.is_none_or(|want| r.repository.as_deref() == Some(want))
        });
        let kept: BTreeSet<i64> = history.runs.iter().map(|r| r.id).collect();
        history.attempts.retain(|a| kept.contains(&a.run_id));
    }
    let analytics = analyze(&history);
    let advice = advice::advise(&analytics, &advice::configs(workflows));
    let accuracy = analytics
        .workflows
        .iter()
        .filter_map(|g| {
            let wf = workflows.get(&g.name)?;
            Some(predict::accuracy(&history, &g.name, &predict::dag_of(wf)))
        })
        .collect();
    Ok(Report {
        since,
        days,
        workflow: workflow.map(str::to_owned),
        repository: repository.map(str::to_owned),
        truncated,
        analytics,
        advice,
        accuracy,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn run(id: i64, workflow: &str, state: &str, created: i64, ms: i64) -> RunFact {
        RunFact {
            id,
            workflow: workflow.into(),
            repository: Some("octo/widgets".into()),
            state: RunState::parse(state).expect("a run state"),
            conclusion: None,
            created_at: created,
            started_at: Some(created + 1_000),
            finished_at: Some(created + 1_000 + ms),
            cost_usd: 0.5,
        }
    }

    pub fn attempt(
        run_id: i64,
        step: &str,
        number: i64,
        agent: &str,
        outcome: &str,
        ms: i64,
    ) -> AttemptFact {
        AttemptFact {
            run_id,
            workflow: "review".into(),
            step: step.into(),
            number,
            agent: agent.into(),
            primary_agent: "claude".into(),
            started_at: 0,
            finished_at: Some(ms),
            outcome: Some(AttemptEnd::parse(outcome).expect("an attempt outcome")),
            error_kind: (outcome != "succeeded").then(|| "agent".into()),
            error: (outcome != "succeeded").then(|| format!("exit status 1 after {ms} ms")),
            duration_ms: Some(ms),
            cost_usd: Some(0.25),
        }
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        assert_eq!(percentile(&[], 50.0), None);
        assert_eq!(percentile(&[1, 2, 3, 4], 50.0), Some(2));
        assert_eq!(percentile(&[1, 2, 3, 4], 90.0), Some(4));
        let hundred: Vec<i64> = (1..=100).collect();
        assert_eq!(percentile(&hundred, 90.0), Some(90));
        assert_eq!(percentile(&hundred, 0.0), Some(1));
    }

    #[test]
    fn messages_that_differ_in_numbers_paths_and_ids_group_together() {
        let a = normalise("exit status 1 after 1520 ms in /tmp/ws-18/src/main.rs (sha 9f8e7d6c5b)");
        let b = normalise("exit status 2 after 88 ms in /tmp/ws-3/lib/x.rs (sha 0123abcdef)");
        assert_eq!(a, b);
        assert_eq!(a, "exit status # after # ms in <path> (sha <hex>)");
        assert_ne!(
            normalise("connection refused"),
            normalise("permission denied")
        );
    }

    #[test]
    fn steps_count_retries_fallbacks_rescues_flakes_and_timeouts() {
        let mut timed_out = attempt(2, "test", 1, "claude", "timed_out", 600_000);
        timed_out.error_kind = Some("timeout".into());
        let history = History {
            since: 0,
            runs: vec![run(1, "review", "succeeded", 0, 60_000)],
            attempts: vec![
                // Run 1: passes first time.
                attempt(1, "test", 1, "claude", "succeeded", 1_000),
                // Run 2: times out, the fallback rescues it.
                timed_out,
                attempt(2, "test", 2, "aider", "succeeded", 3_000),
                // Run 3: fails, then passes on the same agent (flaky).
                attempt(3, "test", 1, "claude", "failed", 500),
                attempt(3, "test", 2, "claude", "succeeded", 2_000),
                // Run 4: fails for good.
                attempt(4, "test", 1, "claude", "failed", 500),
            ],
        };
        let a = analyze(&history);
        let s = &a.steps[0];
        assert_eq!((s.runs, s.attempts), (4, 6));
        assert_eq!(s.success_rate, Some(0.75));
        assert_eq!(s.retry_rate, Some(0.5));
        assert_eq!(s.fallback_rate, Some(0.25));
        assert_eq!(s.rescued_by.get("aider"), Some(&1));
        assert_eq!(s.flaky_runs, 1);
        assert_eq!(s.timeouts, 1);
        assert_eq!(s.duration.p50_ms, Some(2_000));
        assert!((s.cost_usd - 1.5).abs() < 1e-9);
        let claude = a.agents.iter().find(|g| g.agent == "claude").unwrap();
        assert_eq!((claude.attempts, claude.succeeded), (5, 2));
        // "exit status 1 after # ms" twice (the timeout's message too).
        assert_eq!(a.errors[0].count, 3);
        assert_eq!(a.errors[0].pattern, "exit status # after # ms");
    }

    #[test]
    fn runs_group_by_workflow_repository_and_day() {
        let mut superseded = run(3, "review", "cancelled", 86_400_000, 5_000);
        superseded.conclusion = Some("superseded by run 4 in concurrency group `pr-1`".into());
        let history = History {
            since: 0,
            runs: vec![
                run(1, "review", "succeeded", 0, 60_000),
                run(2, "review", "failed", 1_000, 120_000),
                superseded,
                run(4, "triage", "succeeded", 86_400_000, 10_000),
            ],
            attempts: vec![],
        };
        let a = analyze(&history);
        let review = &a.workflows[0];
        assert_eq!(review.name, "review");
        assert_eq!((review.runs, review.succeeded, review.failed), (3, 1, 1));
        assert_eq!((review.cancelled, review.superseded), (1, 1));
        assert_eq!(review.success_rate, Some(0.5));
        assert_eq!(review.queue.p50_ms, Some(1_000));
        assert_eq!(review.work.p50_ms, Some(60_000));
        assert_eq!(a.repositories.len(), 1);
        assert_eq!(a.days.len(), 2);
        assert_eq!((a.days[1].day, a.days[1].runs), (1, 2));
    }
}
