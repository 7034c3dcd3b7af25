//! The engine's side of verdicts ([`crate::verdict`]): an attempt's
//! verdict settled once its agent answered (one repair turn for an answer
//! that does not parse, test reports read, findings fitted to the
//! checkout), and a validation step's verdict stored.

use std::time::Duration;

use super::Engine;
use crate::agent::{Agent, AttemptOutcome, AttemptRequest, ErrorClass, Failure, FailureKind};
use crate::store::{StepState, now_ms};
use crate::verdict::{self, Verdict, VerdictReport};
use crate::workflow::Step;
use crate::workspace::Workspace;

/// Appends `report` to the answer as its last fenced json block (the one
/// read from then on), after a line saying what taskmaster did.
fn append(outcome: &mut AttemptOutcome, note: &str, report: &VerdictReport) {
    outcome.output.text.push_str(&format!(
        "\n\n({note})\n```json\n{}\n```\n",
        serde_json::to_string(report).unwrap_or_default()
    ));
}

/// Settles the verdict of an attempt that was not stopped. `repair_base`
/// is the request, when the step asked its agent for a verdict report.
///
/// * An answer whose report does not parse gets one repair turn quoting
///   the error; a second failure makes the attempt fail as malformed (a
///   failure of the answer, not the code's verdict). Returns `true` then.
/// * The step's test reports (`reports:`) become a report of their own.
/// * Findings are fitted to the checkout (paths not in it dropped, lines
///   clamped).
pub(super) async fn settle(
    agent: &dyn Agent,
    def: &Step,
    workspace: Option<&Workspace>,
    repair_base: Option<AttemptRequest>,
    grace: Duration,
    outcome: &mut AttemptOutcome,
) -> bool {
    let mut malformed = false;
    let asked = repair_base.is_some();
    if let (Some(base), None) = (repair_base, &outcome.failure) {
        match verdict::parse(&outcome.output.text) {
            Ok(_) => {}
            Err(error) => {
                tracing::info!(step = %def.id, %error, "the verdict did not parse; one repair turn");
                let answer = &outcome.output.text;
                let mut cut = answer.len().saturating_sub(4000);
                while !answer.is_char_boundary(cut) {
                    cut += 1;
                }
                let mut repair = base;
                repair.prompt = format!(
                    "{}\n\nYour previous answer ended with:\n{}\n\n{}",
                    repair.prompt,
                    &answer[cut..],
                    verdict::repair_prompt(&error)
                );
                let deadline = repair.deadline + grace;
                match tokio::time::timeout_at(deadline, agent.run(repair)).await {
                    Ok(second) if second.failure.is_none() => {
                        match verdict::parse(&second.output.text) {
                            Ok(_) => {
                                outcome.output = second.output;
                                outcome.duration += second.duration;
                            }
                            Err(again) => {
                                malformed = true;
                                outcome.failure = Some(Failure {
                                    class: ErrorClass::Permanent,
                                    kind: FailureKind::Protocol,
                                    message: format!(
                                        "malformed verdict: {again} (after one repair turn; \
                                         first: {error})"
                                    ),
                                });
                            }
                        }
                    }
                    Ok(second) => outcome.failure = second.failure,
                    Err(_) => {
                        outcome.failure = Some(Failure {
                            class: ErrorClass::Transient,
                            kind: FailureKind::Timeout,
                            message: "the verdict's repair turn did not return within the \
                                      step's timeout"
                                .into(),
                        });
                    }
                }
            }
        }
    }
    // Test reports the step wrote (`reports: [junit: …]`): failed tests
    // become findings.
    if let Some(ws) = workspace.filter(|_| !def.reports.is_empty()) {
        let exit_ok = outcome.failure.is_none();
        let mut merged: Option<VerdictReport> = None;
        for r in &def.reports {
            let (root, glob, sarif) = (ws.path.clone(), r.glob.clone(), r.format == "sarif");
            let Ok(report) = tokio::task::spawn_blocking(move || {
                if sarif {
                    verdict::from_sarif(&root, &glob, exit_ok)
                } else {
                    verdict::from_junit(&root, &glob, exit_ok)
                }
            })
            .await
            else {
                continue;
            };
            merged = Some(match merged {
                None => report,
                Some(mut m) => {
                    if report.verdict == Verdict::Fail {
                        m.verdict = Verdict::Fail;
                    }
                    m.summary = format!("{} {}", m.summary, report.summary);
                    m.findings.extend(report.findings);
                    m.findings.truncate(verdict::MAX_FINDINGS);
                    m
                }
            });
        }
        if let Some(report) = merged {
            append(outcome, "taskmaster read the step's test reports", &report);
        }
    }
    // Findings refer to the checkout they were made on.
    if asked
        && outcome.failure.is_none()
        && let Some(ws) = workspace.filter(|ws| ws.repo_id > 0)
        && let Ok(mut report) = verdict::parse(&outcome.output.text)
        && verdict::fit_to_tree(&mut report, &ws.path)
    {
        append(
            outcome,
            "taskmaster checked the findings against the checkout",
            &report,
        );
    }
    malformed
}

/// Stores the verdict of a validation step (`validation:` in the workflow):
/// pass when it succeeded, fail when it failed, with the first line of its
/// output as the summary and the (already redacted) output's tail as
/// evidence. A store error is logged; the run goes on.
#[allow(clippy::too_many_arguments)] // the parts of one finished step
pub(super) async fn record_validation(
    engine: &Engine,
    workflow: &str,
    run_id: i64,
    step: &str,
    agent: &str,
    kind: crate::store::ValidationKind,
    state: StepState,
    output: Option<String>,
    error: Option<String>,
) {
    use crate::store::{NewValidation, Verdict as StoredVerdict};
    const EVIDENCE_CHARS: usize = 4000;
    let text = output.unwrap_or_default();
    // The step's verdict report when its answer has one; else its outcome
    // (a test command: pass when it exited 0).
    let report = verdict::parse(&text).ok();
    let stored = match (&report, state) {
        (Some(r), _) => match r.verdict {
            Verdict::Pass => StoredVerdict::Pass,
            Verdict::Fail => StoredVerdict::Fail,
            Verdict::Neutral => StoredVerdict::Warn,
        },
        (None, StepState::Succeeded) => StoredVerdict::Pass,
        (None, _) => StoredVerdict::Fail,
    };
    let first_line = report
        .as_ref()
        .and_then(|r| r.summary.lines().map(str::trim).find(|l| !l.is_empty()))
        .or_else(|| text.lines().map(str::trim).find(|l| !l.is_empty()))
        .or(error.as_deref())
        .unwrap_or("");
    let summary: String = first_line.chars().take(200).collect();
    let chars = text.chars().count();
    let tail: String = text
        .chars()
        .skip(chars.saturating_sub(EVIDENCE_CHARS))
        .collect();
    let mut evidence = vec![serde_json::json!({
        "source": "step_output",
        "agent": agent,
        "excerpt": tail,
        "truncated": chars > EVIDENCE_CHARS,
    })];
    if let Some(e) = &error {
        evidence.push(serde_json::json!({ "source": "step_error", "error": e }));
    }
    if let Some(r) = &report {
        evidence.push(serde_json::json!({
            "source": "verdict",
            "verdict": r.verdict,
            "summary": r.summary,
            "findings": r.findings,
        }));
    }
    let validation = NewValidation {
        run_id: Some(run_id),
        step: Some(step.to_owned()),
        kind,
        verdict: stored,
        summary,
        evidence: serde_json::Value::Array(evidence),
        created_by: "system".into(),
        created_at: now_ms(),
    };
    crate::instrument::verdict(workflow, step, validation.verdict.as_str());
    if let Err(e) = engine.inner.store.create_validation(&validation).await {
        tracing::warn!(run_id = %run_id, step, error = %e, "could not store the step's validation");
    }
}
