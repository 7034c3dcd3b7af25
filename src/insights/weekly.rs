//! The written insights report: every `every_days` days the service
//! computes the insights of the last `window_days` ([`super::report`]) and
//! starts the `insights_report` workflow on the issue the operator chose,
//! with the figures (as Markdown) as that issue's body in the run's
//! context (`{{ issue.body }}`). The workflow's agent writes the summary;
//! the run's comment on the issue carries it, like any run's.
//!
//! Configured in the service configuration:
//!
//! ```yaml
//! insights_report:
//!   repository: acme/ops     # where the summary is posted
//!   issue: 12                # on which issue
//!   every_days: 7            # default 7
//!   window_days: 7           # the history it covers (default every_days)
//!   workflow: insights_report  # default
//!   installation_id: 123     # default: the installation that last delivered an event about the repository
//! ```
//!
//! Each period's run is keyed by a delivery id made of the repository, the
//! issue and the period's number, so replicas and restarts start it once.

use crate::ids::InstallationId;
use std::time::Duration;

use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use super::Report;
use crate::engine::Engine;

/// `insights_report:` in the service configuration.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct InsightsReportConfig {
    /// `owner/name` of the repository the summary is posted in.
    pub repository: crate::github::RepoName,
    /// The issue whose conversation gets the summary.
    pub issue: u64,
    /// How often, in days (1 to 90; default 7).
    #[serde(default = "default_every_days")]
    pub every_days: u32,
    /// The history each report covers, in days (default `every_days`).
    #[serde(default)]
    pub window_days: Option<u32>,
    /// The workflow that writes it (default `insights_report`).
    #[serde(default = "default_workflow")]
    pub workflow: String,
    /// The installation that may post in `repository` (default: the one
    /// that last delivered an event about it).
    #[serde(default)]
    pub installation_id: Option<InstallationId>,
}

fn default_every_days() -> u32 {
    7
}

fn default_workflow() -> String {
    "insights_report".into()
}

impl InsightsReportConfig {
    /// Checks the values.
    ///
    /// # Errors
    /// What is wrong, naming the key.
    pub fn validate(&self) -> Result<(), String> {
        // `repository` is `owner/name`: checked when the file is read.
        if !(1..=90).contains(&self.every_days) {
            return Err("insights_report.every_days must be 1 to 90".into());
        }
        if self.window_days.is_some_and(|d| !(1..=365).contains(&d)) {
            return Err("insights_report.window_days must be 1 to 365".into());
        }
        if self.issue == 0 {
            return Err("insights_report.issue must be an issue number".into());
        }
        Ok(())
    }

    /// The period `now_ms` falls in (periods of `every_days` from the epoch).
    pub fn period(&self, now_ms: i64) -> i64 {
        now_ms / (i64::from(self.every_days) * 86_400_000)
    }

    /// The delivery id that keys the run of `period`.
    pub fn delivery_id(&self, period: i64) -> String {
        format!(
            "insights-report:{}#{}:{period}",
            self.repository, self.issue
        )
    }
}

fn pct(v: Option<f64>) -> String {
    v.map_or("–".into(), |v| format!("{:.0} %", v * 100.0))
}

fn mins(ms: Option<i64>) -> String {
    ms.map_or("–".into(), |ms| {
        if ms < 60_000 {
            format!("{:.0} s", ms as f64 / 1000.0)
        } else {
            format!("{:.1} min", ms as f64 / 60_000.0)
        }
    })
}

/// The figures of `report` as Markdown, for the agent to read: workflows,
/// the steps that fail or retry most, agents, recurring errors, the advice
/// with its evidence, and how far the predictions held.
pub fn markdown(report: &Report) -> String {
    use std::fmt::Write as _;
    let a = &report.analytics;
    let mut out = String::new();
    let _ = writeln!(out, "# taskmaster insights, last {} days\n", report.days);
    let _ = writeln!(out, "## Workflows\n");
    let _ = writeln!(
        out,
        "| workflow | runs | succeeded | failed | success | p50 | p90 | cost |\n|---|---|---|---|---|---|---|---|"
    );
    for w in &a.workflows {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | ${:.2} |",
            w.name,
            w.runs,
            w.succeeded,
            w.failed,
            pct(w.success_rate),
            mins(w.duration.p50_ms),
            mins(w.duration.p90_ms),
            w.cost_usd
        );
    }
    let mut steps: Vec<_> = a.steps.iter().collect();
    steps.sort_by(|x, y| {
        x.success_rate
            .unwrap_or(1.0)
            .total_cmp(&y.success_rate.unwrap_or(1.0))
            .then(y.attempts.cmp(&x.attempts))
    });
    let _ = writeln!(out, "\n## Steps (least successful first)\n");
    let _ = writeln!(
        out,
        "| step | attempts | success | retries | fallbacks | timeouts | flaky runs | p50 |\n|---|---|---|---|---|---|---|---|"
    );
    for s in steps.iter().take(10) {
        let _ = writeln!(
            out,
            "| {}/{} | {} | {} | {} | {} | {} | {} | {} |",
            s.workflow,
            s.step,
            s.attempts,
            pct(s.success_rate),
            pct(s.retry_rate),
            pct(s.fallback_rate),
            s.timeouts,
            s.flaky_runs,
            mins(s.duration.p50_ms)
        );
    }
    let _ = writeln!(out, "\n## Agents\n");
    let _ = writeln!(
        out,
        "| agent | attempts | success | p50 | timeouts | unavailable | cost |\n|---|---|---|---|---|---|---|"
    );
    for g in &a.agents {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | ${:.2} |",
            g.agent,
            g.attempts,
            pct(g.success_rate),
            mins(g.duration.p50_ms),
            g.timeouts,
            g.unavailable,
            g.cost_usd
        );
    }
    if !a.errors.is_empty() {
        let _ = writeln!(out, "\n## Recurring errors\n");
        for e in a.errors.iter().take(5) {
            let _ = writeln!(out, "- {}× `{}`", e.count, e.pattern.replace('`', "'"));
        }
    }
    let _ = writeln!(out, "\n## Advice\n");
    if report.advice.is_empty() {
        let _ = writeln!(out, "No rule fired.");
    }
    for advice in &report.advice {
        let evidence: Vec<String> = advice
            .evidence
            .iter()
            .map(|e| format!("{} {}", e.name, e.value))
            .collect();
        let _ = writeln!(
            out,
            "- **{}** ({}): {} Evidence: {}. Change: {}",
            advice.subject,
            advice.rule,
            advice.finding,
            evidence.join(", "),
            advice.change
        );
    }
    if !report.accuracy.is_empty() {
        let _ = writeln!(out, "\n## Prediction accuracy\n");
        for acc in &report.accuracy {
            let _ = writeln!(
                out,
                "- {}: median error {} over {} runs, {} finished within the predicted p90",
                acc.workflow,
                pct(acc.median_error),
                acc.runs,
                pct(acc.p90_coverage)
            );
        }
    }
    out
}

/// The `issues` event a report run is started with: the chosen issue, its
/// body the figures.
pub fn payload(
    config: &InsightsReportConfig,
    installation_id: InstallationId,
    figures: &str,
) -> serde_json::Value {
    serde_json::json!({
        "action": "insights_report",
        "issue": {
            "number": config.issue,
            "title": "taskmaster insights report",
            "body": figures,
            "state": "open",
            "labels": [],
            "user": { "login": "taskmaster", "id": 0, "type": "Bot" },
        },
        "repository": { "full_name": config.repository },
        "installation": { "id": installation_id },
        "sender": { "login": "taskmaster", "id": 0, "type": "Bot" },
    })
}

/// Starts this period's report run when it has not been started yet, then
/// looks again every `check_every` until `stop`.
pub async fn run_scheduler(
    engine: Engine,
    config: InsightsReportConfig,
    check_every: Duration,
    stop: CancellationToken,
) {
    let mut done: Option<i64> = None;
    loop {
        let period = config.period(engine.now());
        if done != Some(period) {
            match start_period(&engine, &config, period).await {
                Ok(true) => done = Some(period),
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "the insights report could not start"),
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(check_every) => {}
            _ = stop.cancelled() => return,
        }
    }
}

/// Starts `period`'s report run; false when the installation is not known
/// yet (tried again at the next check).
async fn start_period(
    engine: &Engine,
    config: &InsightsReportConfig,
    period: i64,
) -> anyhow::Result<bool> {
    let installation = match config.installation_id {
        Some(id) => id,
        None => match engine
            .store()
            .installation_for_repository(&config.repository)
            .await?
        {
            Some(id) => id,
            None => {
                tracing::warn!(
                    repository = %config.repository,
                    "the insights report waits: no installation has delivered an event about \
                     its repository yet (install the App there, or set insights_report.installation_id)"
                );
                return Ok(false);
            }
        },
    };
    let days = i64::from(config.window_days.unwrap_or(config.every_days));
    let report = super::report(
        &**engine.store(),
        engine.workflows(),
        engine.now(),
        days,
        None,
        None,
    )
    .await?;
    let figures = markdown(&report);
    let body = serde_json::to_vec(&payload(config, installation, &figures))?;
    let created = engine
        .start_run(
            &config.workflow,
            "issues",
            &body,
            &config.delivery_id(period),
        )
        .await?;
    if created.created {
        tracing::info!(run_id = %created.run_id, repository = %config.repository,
            issue = config.issue, "insights report started");
    } else {
        tracing::info!(
            run_id = %created.run_id,
            "this period's insights report exists already"
        );
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periods_key_one_run_each() {
        let c: InsightsReportConfig =
            serde_saphyr::from_str("repository: acme/ops\nissue: 12\n").unwrap();
        assert_eq!(c.every_days, 7);
        assert_eq!(c.workflow, "insights_report");
        c.validate().unwrap();
        let week = 7 * 86_400_000;
        assert_eq!(c.period(week * 100), 100);
        assert_eq!(c.period(week * 101 - 1), 100);
        assert_eq!(c.delivery_id(100), "insights-report:acme/ops#12:100");
        // A repository that is not `owner/name` fails the file's parse, at
        // its line and column.
        let bad = serde_saphyr::from_str::<InsightsReportConfig>("repository: ops\nissue: 12\n")
            .unwrap_err()
            .to_string();
        assert!(
            bad.contains("`ops` is not a repository name (`owner/name`)"),
            "{bad}"
        );
        assert!(bad.contains("line 1 column 13"), "{bad}");
    }

    #[test]
    fn the_markdown_carries_the_history_s_numbers() {
        use crate::insights::tests::{attempt, run};
        let history = crate::insights::History {
            since: 0,
            runs: vec![
                run(1, "review", "succeeded", 0, 120_000),
                run(2, "review", "succeeded", 10, 240_000),
                run(3, "review", "failed", 20, 60_000),
            ],
            attempts: vec![
                attempt(1, "analyse", 1, "claude", "succeeded", 100_000),
                attempt(2, "analyse", 1, "claude", "failed", 30_000),
                attempt(2, "analyse", 2, "claude", "succeeded", 200_000),
                attempt(3, "analyse", 1, "claude", "failed", 50_000),
            ],
        };
        let analytics = crate::insights::analyze(&history);
        let report = Report {
            since: 0,
            days: 7,
            workflow: None,
            repository: None,
            truncated: false,
            advice: crate::insights::advice::advise(&analytics, &[]),
            analytics,
            accuracy: Vec::new(),
        };
        let text = markdown(&report);
        // 3 runs, 2 succeeded, 1 failed, 67 %, $1.50 (3 × 0.50).
        assert!(text.contains("| review | 3 | 2 | 1 | 67 % |"), "{text}");
        assert!(text.contains("$1.50"), "{text}");
        // analyse: 4 attempts over 3 runs, 2 of which it finished (67 %),
        // one of them after a retry (33 % of runs retried, 1 flaky run).
        assert!(
            text.contains("| review/analyse | 4 | 67 % | 33 % | 0 % | 0 | 1 |"),
            "{text}"
        );
        assert!(text.contains("| claude | 4 | 50 % |"), "{text}");
        assert!(text.contains("2× `exit status # after # ms`"), "{text}");
    }

    #[test]
    fn the_payload_is_an_issues_event() {
        let c: InsightsReportConfig =
            serde_saphyr::from_str("repository: acme/ops\nissue: 12\n").unwrap();
        let body = serde_json::to_vec(&payload(&c, InstallationId(5), "figures")).unwrap();
        let event = crate::event::Event::parse("issues", &body).unwrap();
        assert_eq!(event.repository().unwrap().full_name, "acme/ops");
        assert_eq!(event.installation_id(), Some(InstallationId(5)));
    }
}
