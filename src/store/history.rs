//! [`Histories`]: the runs and attempts [`crate::insights`] learns from.

use async_trait::async_trait;

use super::StoreError;
use crate::insights::{AttemptFact, History, RunFact};

/// The runs of a window (newest first, their ids above a bound), so both
/// backends read the same rows. `?1` the window's start (epoch ms), `?2`
/// the most runs.
pub(in crate::store) const HISTORY_RUNS: &str = "SELECT id, workflow, repository, state, \
     conclusion, created_at, started_at, finished_at, cost_usd FROM runs \
     WHERE created_at >= ?1 ORDER BY id DESC LIMIT ?2";

/// The attempts of runs `?1 <= id <= ?2` created since `?3`, oldest first,
/// with their step's own agent.
pub(in crate::store) const HISTORY_ATTEMPTS: &str = "SELECT a.run_id, a.workflow, a.step, \
     a.number, a.agent, s.primary_agent, a.started_at, a.finished_at, a.outcome, a.error_kind, \
     a.error, a.duration_ms, a.cost_usd FROM attempts a JOIN steps s ON s.id = a.step_row \
     JOIN runs r ON r.id = a.run_id \
     WHERE a.run_id >= ?1 AND a.run_id <= ?2 AND r.created_at >= ?3 ORDER BY a.id";

/// The durations of a workflow's newest succeeded attempts, with their
/// run's repository: `?1` the workflow, `?2` the most rows.
pub(in crate::store) const STEP_DURATIONS: &str = "SELECT a.step, r.repository, \
     COALESCE(a.duration_ms, a.finished_at - a.started_at) FROM attempts a \
     JOIN runs r ON r.id = a.run_id \
     WHERE a.workflow = ?1 AND a.outcome = 'succeeded' AND a.finished_at IS NOT NULL \
     ORDER BY a.id DESC LIMIT ?2";

/// The store's side of insights.
#[async_trait]
pub trait Histories: Send + Sync + 'static {
    /// Runs created at or after `since` (epoch ms), at most `limit` of the
    /// newest, and their attempts: what `/insights` analyses. For people,
    /// not hot paths: it reads rows in proportion to the window.
    async fn history(&self, since: i64, limit: i64) -> Result<History, StoreError>;

    /// `(step, repository, duration ms)` of the newest `limit` succeeded
    /// attempts of `workflow`, newest first: what a new run's prediction
    /// is drawn from (one indexed read per run created).
    async fn step_durations(
        &self,
        workflow: &str,
        limit: i64,
    ) -> Result<Vec<(String, Option<String>, i64)>, StoreError>;

    /// `(agent, attempts, succeeded)` of the newest `limit` ended attempts
    /// of `step` of `workflow` that reached their agent: what
    /// `adaptive_agents` decides by ([`crate::insights::decide`]).
    async fn recent_outcomes(
        &self,
        workflow: &str,
        step: &str,
        limit: i64,
    ) -> Result<Vec<(String, i64, i64)>, StoreError>;

    /// Steps ready or running, per agent: the queue a new run's steps join
    /// (read through the partial indexes of ready and running steps).
    async fn active_steps_by_agent(&self) -> Result<Vec<(String, i64)>, StoreError>;
}

/// [`Histories::recent_outcomes`]' SQL: `?1` workflow, `?2` step, `?3`
/// limit; attempts of [`NOT_RUN_KINDS`] left out.
///
/// [`NOT_RUN_KINDS`]: crate::insights::decide::NOT_RUN_KINDS
pub(in crate::store) static RECENT_OUTCOMES: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| {
        let kinds: Vec<String> = crate::insights::decide::NOT_RUN_KINDS
            .iter()
            .map(|k| format!("'{k}'"))
            .collect();
        format!(
            "SELECT agent, COUNT(*), SUM(CASE WHEN outcome = 'succeeded' THEN 1 ELSE 0 END) \
             FROM (SELECT agent, outcome FROM attempts \
                   WHERE workflow = ?1 AND step = ?2 AND outcome IS NOT NULL \
                     AND COALESCE(error_kind, '') NOT IN ({}) \
                   ORDER BY id DESC LIMIT ?3) AS recent \
             GROUP BY agent ORDER BY agent",
            kinds.join(", ")
        )
    });

/// [`Histories::active_steps_by_agent`]'s SQL: each half matches one
/// partial index's condition.
pub(in crate::store) const ACTIVE_STEPS_BY_AGENT: &str = "SELECT agent, SUM(n) FROM ( \
     SELECT agent, COUNT(*) AS n FROM steps WHERE state = 'ready' GROUP BY agent \
     UNION ALL \
     SELECT agent, COUNT(*) AS n FROM steps WHERE state = 'running' GROUP BY agent) AS q \
     GROUP BY agent ORDER BY agent";

/// The attempts' id range of `runs` (newest first): `(oldest, newest)`.
pub(in crate::store) fn run_bounds(runs: &[RunFact]) -> Option<(i64, i64)> {
    Some((runs.last()?.id, runs.first()?.id))
}

/// A row of [`HISTORY_ATTEMPTS`] as a fact.
#[allow(clippy::type_complexity)]
pub(in crate::store) type AttemptTuple = (
    i64,
    String,
    String,
    i64,
    String,
    String,
    i64,
    Option<i64>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<i64>,
    Option<f64>,
);

/// An attempt row as a fact; an outcome that is not an [`AttemptEnd`]'s
/// name is a [`StoreError::Corrupt`] row.
///
/// [`AttemptEnd`]: super::AttemptEnd
pub(in crate::store) fn attempt_fact(t: AttemptTuple) -> Result<AttemptFact, StoreError> {
    let outcome = super::rows::parse_named(
        "attempts",
        "attempt outcome",
        t.8.as_deref(),
        super::AttemptEnd::parse,
    )?;
    Ok(AttemptFact {
        run_id: t.0,
        workflow: t.1,
        step: t.2,
        number: t.3,
        agent: t.4,
        primary_agent: t.5,
        started_at: t.6,
        finished_at: t.7,
        outcome,
        error_kind: t.9,
        error: t.10,
        duration_ms: t.11,
        cost_usd: t.12,
    })
}

/// A row of [`HISTORY_RUNS`]: `(id, workflow, repository, state,
/// conclusion, created_at, started_at, finished_at, cost_usd)`.
pub(in crate::store) type RunTuple = (
    i64,
    String,
    Option<String>,
    String,
    Option<String>,
    i64,
    Option<i64>,
    Option<i64>,
    f64,
);

/// A run row as a fact; a state that is not a [`RunState`]'s name is a
/// [`StoreError::Corrupt`] row.
///
/// [`RunState`]: super::RunState
pub(in crate::store) fn run_fact(t: RunTuple) -> Result<RunFact, StoreError> {
    let state = super::RunState::parse(&t.3)
        .ok_or_else(|| super::rows::corrupt("runs", format!("unknown run state `{}`", t.3)))?;
    Ok(RunFact {
        id: t.0,
        workflow: t.1,
        repository: t.2,
        state,
        conclusion: t.4,
        created_at: t.5,
        started_at: t.6,
        finished_at: t.7,
        cost_usd: t.8,
    })
}
