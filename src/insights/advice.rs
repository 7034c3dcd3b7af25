//! Advice computed from [`Analytics`]: each piece names what it is about,
//! the numbers behind it, and the exact change to make. A rule stays
//! silent unless its evidence clears a floor (enough runs or attempts), so
//! one unlucky run never produces advice.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::predict::minutes;
use super::{Analytics, StepInsight};

/// Runs or attempts a rule needs before it speaks.
pub const MIN_EVIDENCE: usize = 10;

/// One step's configuration, as the rules need it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StepConfig {
    pub workflow: String,
    pub step: String,
    pub agent: String,
    pub fallback: Vec<String>,
    pub timeout_ms: Option<i64>,
    pub needs: Vec<String>,
    /// Steps whose `output` or `outcome` its prompt, inputs or condition read.
    pub reads: Vec<String>,
}

/// The configuration of every step of `set`.
pub fn configs(set: &crate::workflow::WorkflowSet) -> Vec<StepConfig> {
    let mut out = Vec::new();
    for wf in set.iter() {
        for s in &wf.steps {
            let mut text = s.prompt.clone().unwrap_or_default();
            text.push_str(&serde_json::to_string(&s.with).unwrap_or_default());
            text.push_str(s.condition.source());
            out.push(StepConfig {
                workflow: wf.name.clone(),
                step: s.id.clone(),
                agent: s.agent.clone(),
                fallback: s.fallback.clone(),
                timeout_ms: s.timeout.map(|t| t.as_millis() as i64),
                reads: wf
                    .steps
                    .iter()
                    .filter(|other| {
                        regex::Regex::new(&format!(r"steps\s*\.\s*{}\b", regex::escape(&other.id)))
                            .is_ok_and(|re| re.is_match(&text))
                    })
                    .map(|other| other.id.clone())
                    .collect(),
                needs: s.needs.clone(),
            });
        }
    }
    out
}

/// One piece of advice.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Advice {
    /// The rule: `timeout_too_close`, `swap_fallback`, `agent_unavailable`,
    /// `needless_need`, `flaky_step`, `mostly_superseded`, `spend_concentrated`.
    pub rule: String,
    /// What it is about: `workflow`, `workflow/step` or an agent.
    pub subject: String,
    /// What was found, in a sentence.
    pub finding: String,
    /// The numbers behind it.
    pub evidence: Vec<Evidence>,
    /// The change to make, as exactly as the rule can say it.
    pub change: String,
}

/// A named figure.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Evidence {
    pub name: String,
    pub value: String,
}

fn evidence(pairs: &[(&str, String)]) -> Vec<Evidence> {
    pairs
        .iter()
        .map(|(name, value)| Evidence {
            name: name.to_string(),
            value: value.clone(),
        })
        .collect()
}

fn pct(v: f64) -> String {
    format!("{:.0} %", v * 100.0)
}

/// Every piece of advice `analytics` supports, given the steps' `configs`.
pub fn advise(analytics: &Analytics, configs: &[StepConfig]) -> Vec<Advice> {
    let config = |s: &StepInsight| {
        configs
            .iter()
            .find(|c| c.workflow == s.workflow && c.step == s.step)
    };
    let mut out = Vec::new();
    for s in &analytics.steps {
        let subject = format!("{}/{}", s.workflow, s.step);
        let Some(c) = config(s) else { continue };
        // A timeout that the slow runs come close to.
        if let (Some(timeout), Some(p95)) = (c.timeout_ms, s.duration.p95_ms)
            && s.duration.count >= MIN_EVIDENCE
            && p95 * 10 >= timeout * 8
        {
            let suggested = (p95 * 3 / 2).max(timeout + 60_000);
            out.push(Advice {
                rule: "timeout_too_close".into(),
                subject: subject.clone(),
                finding: format!(
                    "one succeeded attempt in twenty takes {} or more, within 20 % of the \
                     step's {} timeout: slower ones time out",
                    minutes(p95),
                    minutes(timeout)
                ),
                evidence: evidence(&[
                    ("succeeded attempts", s.duration.count.to_string()),
                    ("p95", minutes(p95)),
                    ("timeout", minutes(timeout)),
                    ("attempts that timed out", s.timeouts.to_string()),
                ]),
                change: format!(
                    "in workflow `{}`, step `{}`: `timeout: {}s`",
                    s.workflow,
                    s.step,
                    suggested / 1000
                ),
            });
        }
        // A fallback that rescues more often than the primary succeeds.
        if s.runs >= MIN_EVIDENCE
            && let Some((rescuer, rescued)) = s.rescued_by.iter().max_by_key(|(_, n)| **n)
        {
            let fell_back = (s.fallback_rate.unwrap_or(0.0) * s.runs as f64).round() as usize;
            let primary_failed = fell_back.max(1);
            let rescue_rate = *rescued as f64 / primary_failed as f64;
            let primary_rate = 1.0 - s.fallback_rate.unwrap_or(0.0);
            if fell_back >= MIN_EVIDENCE / 2 && rescue_rate > primary_rate {
                let mut fallback: Vec<&str> = c
                    .fallback
                    .iter()
                    .filter(|a| *a != rescuer)
                    .map(String::as_str)
                    .collect();
                fallback.insert(0, &c.agent);
                out.push(Advice {
                    rule: "swap_fallback".into(),
                    subject: subject.clone(),
                    finding: format!(
                        "its fallback `{rescuer}` succeeds more often ({}) than its agent \
                         `{}` does ({})",
                        pct(rescue_rate),
                        c.agent,
                        pct(primary_rate)
                    ),
                    evidence: evidence(&[
                        ("runs", s.runs.to_string()),
                        ("runs that fell back", fell_back.to_string()),
                        (&format!("rescued by {rescuer}"), rescued.to_string()),
                    ]),
                    change: format!(
                        "in workflow `{}`, step `{}`: `agent: {rescuer}` and `fallback: [{}]`",
                        s.workflow,
                        s.step,
                        fallback.join(", ")
                    ),
                });
            }
        }
        // A step that passes on a retry of the same commit.
        if s.runs >= MIN_EVIDENCE && s.flaky_runs >= 2 && s.flaky_runs * 10 >= s.runs {
            out.push(Advice {
                rule: "flaky_step".into(),
                subject: subject.clone(),
                finding: format!(
                    "it failed and then passed on a retry with the same agent in {} of {} runs",
                    s.flaky_runs, s.runs
                ),
                evidence: evidence(&[
                    ("runs", s.runs.to_string()),
                    ("flaky runs", s.flaky_runs.to_string()),
                    ("retry rate", pct(s.retry_rate.unwrap_or(0.0))),
                ]),
                change: format!(
                    "find what varies between attempts of `{}` (its failures are under Errors \
                     that recur); until then keep `retry:` on it",
                    s.step
                ),
            });
        }
        // A need whose output the step never reads.
        for need in c.needs.iter().filter(|n| !c.reads.contains(n)) {
            let Some(waited) = analytics
                .steps
                .iter()
                .find(|o| o.workflow == s.workflow && &o.step == need)
                .and_then(|o| o.duration.p50_ms)
            else {
                continue;
            };
            if s.runs < MIN_EVIDENCE || waited < 30_000 {
                continue;
            }
            let rest: Vec<&str> = c
                .needs
                .iter()
                .filter(|n| *n != need)
                .map(String::as_str)
                .collect();
            out.push(Advice {
                rule: "needless_need".into(),
                subject: subject.clone(),
                finding: format!(
                    "it waits for `{need}` (p50 {}) but its prompt, inputs and condition never \
                     read `steps.{need}`: it could run beside it, unless it must run only after \
                     `{need}` succeeds",
                    minutes(waited)
                ),
                evidence: evidence(&[
                    ("runs", s.runs.to_string()),
                    (&format!("p50 of {need}"), minutes(waited)),
                ]),
                change: format!(
                    "in workflow `{}`, step `{}`: `needs: [{}]`",
                    s.workflow,
                    s.step,
                    rest.join(", ")
                ),
            });
        }
    }
    for a in &analytics.agents {
        if a.attempts >= MIN_EVIDENCE && a.unavailable * 5 >= a.attempts {
            let steps: Vec<&str> = configs
                .iter()
                .filter(|c| c.agent == a.agent && c.fallback.is_empty())
                .map(|c| c.step.as_str())
                .collect();
            out.push(Advice {
                rule: "agent_unavailable".into(),
                subject: a.agent.clone(),
                finding: format!(
                    "{} of its {} attempts could not reach it or found it busy or \
                     rate-limited (what opens its circuit)",
                    a.unavailable, a.attempts
                ),
                evidence: evidence(&[
                    ("attempts", a.attempts.to_string()),
                    ("unavailable", a.unavailable.to_string()),
                    ("success rate", pct(a.success_rate.unwrap_or(0.0))),
                ]),
                change: if steps.is_empty() {
                    format!("check `{}`'s health and its `concurrency:`", a.agent)
                } else {
                    format!(
                        "check `{}`'s health and `concurrency:`, and give its steps without \
                         one a `fallback:` ({})",
                        a.agent,
                        steps.join(", ")
                    )
                },
            });
        }
    }
    for w in &analytics.workflows {
        if w.runs >= MIN_EVIDENCE && w.superseded * 2 >= w.runs {
            out.push(Advice {
                rule: "mostly_superseded".into(),
                subject: w.name.clone(),
                finding: format!(
                    "{} of its {} runs were cancelled by a newer run of their concurrency \
                     group before they finished",
                    w.superseded, w.runs
                ),
                evidence: evidence(&[
                    ("runs", w.runs.to_string()),
                    ("superseded", w.superseded.to_string()),
                    (
                        "p50 of finished runs",
                        w.duration.p50_ms.map(minutes).unwrap_or_default(),
                    ),
                ]),
                change: format!(
                    "start `{}` on fewer events (e.g. `ready_for_review` or a label rather \
                     than every push), or make its first steps shorter",
                    w.name
                ),
            });
        }
        let steps: Vec<&StepInsight> = analytics
            .steps
            .iter()
            .filter(|s| s.workflow == w.name)
            .collect();
        let total: f64 = steps.iter().map(|s| s.cost_usd).sum();
        if let Some(top) = steps
            .iter()
            .max_by(|a, b| a.cost_usd.total_cmp(&b.cost_usd))
            && total >= 1.0
            && steps.len() > 1
            && top.cost_usd >= 0.6 * total
        {
            out.push(Advice {
                rule: "spend_concentrated".into(),
                subject: format!("{}/{}", w.name, top.step),
                finding: format!(
                    "it costs {} of the workflow's {}",
                    pct(top.cost_usd / total),
                    format_args!("${total:.2}")
                ),
                evidence: evidence(&[
                    ("step cost", format!("${:.2}", top.cost_usd)),
                    ("workflow cost", format!("${total:.2}")),
                    ("attempts", top.attempts.to_string()),
                ]),
                change: format!(
                    "in workflow `{}`, step `{}`: a cheaper agent, a shorter prompt, or \
                     `budget: {{max_cost_usd: …}}` to cap it",
                    w.name, top.step
                ),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::tests::{attempt, run};
    use super::super::{History, analyze};
    use super::*;
    use crate::store::RunState;

    fn config(step: &str) -> StepConfig {
        StepConfig {
            workflow: "review".into(),
            step: step.into(),
            agent: "claude".into(),
            fallback: vec!["aider".into()],
            timeout_ms: Some(600_000),
            needs: vec![],
            reads: vec![],
        }
    }

    fn rules(history: &History, configs: &[StepConfig]) -> Vec<String> {
        advise(&analyze(history), configs)
            .into_iter()
            .map(|a| a.rule)
            .collect()
    }

    /// `n` runs whose `test` step takes `ms` and passes first time.
    fn steady(n: i64, ms: i64) -> History {
        History {
            since: 0,
            runs: (1..=n)
                .map(|i| run(i, "review", "succeeded", i, ms))
                .collect(),
            attempts: (1..=n)
                .map(|i| attempt(i, "test", 1, "claude", "succeeded", ms))
                .collect(),
        }
    }

    #[test]
    fn a_steady_history_gets_no_advice() {
        assert!(rules(&steady(40, 60_000), &[config("test")]).is_empty());
    }

    #[test]
    fn a_timeout_close_to_the_slow_runs_is_flagged_with_its_numbers() {
        // p95 at 9 min against a 10 min timeout (2 slow attempts in 20).
        let mut h = steady(18, 60_000);
        for i in 19..=20 {
            h.attempts
                .push(attempt(i, "test", 1, "claude", "succeeded", 540_000));
        }
        let advice = advise(&analyze(&h), &[config("test")]);
        assert_eq!(advice.len(), 1, "{advice:#?}");
        let a = &advice[0];
        assert_eq!(
            (a.rule.as_str(), a.subject.as_str()),
            ("timeout_too_close", "review/test")
        );
        assert!(
            a.evidence
                .iter()
                .any(|e| e.name == "p95" && e.value == "9 min")
        );
        assert_eq!(
            a.change,
            "in workflow `review`, step `test`: `timeout: 810s`"
        );
        // Far below: silent.
        assert!(rules(&steady(20, 100_000), &[config("test")]).is_empty());
    }

    #[test]
    fn a_fallback_that_rescues_more_than_the_primary_succeeds_is_swapped() {
        let mut h = History::default();
        for i in 1..=12 {
            if i <= 8 {
                h.attempts
                    .push(attempt(i, "test", 1, "claude", "failed", 1_000));
                h.attempts
                    .push(attempt(i, "test", 2, "aider", "succeeded", 1_000));
            } else {
                h.attempts
                    .push(attempt(i, "test", 1, "claude", "succeeded", 1_000));
            }
        }
        let advice = advise(&analyze(&h), &[config("test")]);
        let swap = advice
            .iter()
            .find(|a| a.rule == "swap_fallback")
            .expect("advised");
        assert_eq!(
            swap.change,
            "in workflow `review`, step `test`: `agent: aider` and `fallback: [claude]`"
        );
        assert!(
            swap.evidence
                .iter()
                .any(|e| e.name == "rescued by aider" && e.value == "8")
        );
        // Rescues rarer than primary successes: silent.
        let mut h = History::default();
        for i in 1..=12 {
            h.attempts
                .push(attempt(i, "test", 1, "claude", "succeeded", 1_000));
        }
        for i in 13..=18 {
            let rescued = if i <= 14 { "succeeded" } else { "failed" };
            h.attempts
                .push(attempt(i, "test", 1, "claude", "failed", 1_000));
            h.attempts
                .push(attempt(i, "test", 2, "aider", rescued, 1_000));
        }
        assert!(!rules(&h, &[config("test")]).contains(&"swap_fallback".to_string()));
    }

    #[test]
    fn a_flaky_step_and_an_unavailable_agent_are_named() {
        let mut h = History::default();
        for i in 1..=10 {
            if i <= 3 {
                h.attempts
                    .push(attempt(i, "test", 1, "claude", "failed", 1_000));
            } else {
                h.attempts
                    .push(attempt(i, "test", 1, "claude", "succeeded", 1_000));
            }
            h.attempts
                .push(attempt(i, "test", 2, "claude", "succeeded", 1_000));
        }
        let advice = advise(&analyze(&h), &[config("test")]);
        let flaky = advice
            .iter()
            .find(|a| a.rule == "flaky_step")
            .expect("flaky");
        assert!(flaky.finding.contains("3 of 10 runs"), "{}", flaky.finding);

        let mut h = History::default();
        for i in 1..=10 {
            let mut a = attempt(i, "test", 1, "claude", "failed", 1_000);
            if i <= 3 {
                a.error_kind = Some("unreachable".into());
            }
            h.attempts.push(a);
        }
        let mut c = config("test");
        c.fallback.clear();
        let advice = advise(&analyze(&h), &[c]);
        let down = advice
            .iter()
            .find(|a| a.rule == "agent_unavailable")
            .expect("down");
        assert!(down.change.contains("(test)"), "{}", down.change);
    }

    #[test]
    fn a_need_never_read_is_pointed_out_but_a_read_one_is_not() {
        let mut h = steady(12, 60_000);
        for i in 1..=12 {
            h.attempts
                .push(attempt(i, "lint", 1, "claude", "succeeded", 90_000));
        }
        let mut test = config("test");
        test.needs = vec!["lint".into()];
        let advice = advise(&analyze(&h), &[test.clone(), config("lint")]);
        let a = advice
            .iter()
            .find(|a| a.rule == "needless_need")
            .expect("advised");
        assert_eq!(a.change, "in workflow `review`, step `test`: `needs: []`");
        test.reads = vec!["lint".into()];
        assert!(!rules(&h, &[test, config("lint")]).contains(&"needless_need".to_string()));
    }

    #[test]
    fn superseded_runs_and_concentrated_spend_are_named() {
        let mut h = steady(12, 60_000);
        for r in h.runs.iter_mut().take(6) {
            r.state = RunState::Cancelled;
            r.conclusion = Some("superseded by run 99 in concurrency group `pr-1`".into());
        }
        for i in 1..=12 {
            let mut a = attempt(i, "lint", 1, "claude", "succeeded", 1_000);
            a.cost_usd = Some(0.01);
            h.attempts.push(a);
        }
        let advice = rules(&h, &[config("test"), config("lint")]);
        assert!(
            advice.contains(&"mostly_superseded".to_string()),
            "{advice:?}"
        );
        // test: 12 × $0.25 = $3 of $3.12.
        assert!(
            advice.contains(&"spend_concentrated".to_string()),
            "{advice:?}"
        );
    }
}
