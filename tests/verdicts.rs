//! Verdicts decide: a validation step's verdict report (asked for by
//! taskmaster, read from the last fenced json block of the answer) gates
//! later steps (`steps.<id>.verdict`), turns the run's check run red with
//! annotations on the lines it names, and is stored as the validation; a
//! malformed answer gets one repair turn, then fails the step as
//! `malformed`, never as the code's verdict.

mod engine_support;

use std::sync::{Arc, Mutex};
use std::time::Duration;
use taskmaster::store::RunId;

use async_trait::async_trait;
use engine_support::{TestEngine, fast_config, workflows};
use taskmaster::agent::command::{CommandAgent, CommandSettings};
use taskmaster::agent::{Agent, AgentKind, AttemptOutcome, AttemptRequest, Health, Output, Usage};
use taskmaster::engine::AgentMap;
use taskmaster::github::{AnnotationLevel, CheckConclusion};
use taskmaster::outbox::build_report;
use taskmaster::store::prelude::*;
use taskmaster::store::{RunState, StepState, ValidationFilter, Verdict};

/// Answers each attempt with the next scripted text, recording the prompts.
#[derive(Debug)]
struct Reviewer {
    answers: Mutex<Vec<String>>,
    prompts: Mutex<Vec<String>>,
}

impl Reviewer {
    fn new(answers: &[&str]) -> Arc<Self> {
        Arc::new(Self {
            answers: Mutex::new(answers.iter().rev().map(|s| (*s).to_owned()).collect()),
            prompts: Mutex::new(Vec::new()),
        })
    }
}

#[async_trait]
impl Agent for Reviewer {
    fn name(&self) -> &str {
        "reviewer"
    }
    fn kind(&self) -> AgentKind {
        AgentKind::Agentapi
    }
    async fn run(&self, attempt: AttemptRequest) -> AttemptOutcome {
        self.prompts.lock().unwrap().push(attempt.prompt.clone());
        let text = self
            .answers
            .lock()
            .unwrap()
            .pop()
            .unwrap_or_else(|| "no more answers".into());
        AttemptOutcome {
            failure: None,
            output: Output::from_text(&text, &Default::default(), 100_000),
            duration: Duration::from_millis(1),
            usage: Usage::default(),
            retry_after: None,
            web_url: None,
            pull_requests: Vec::new(),
        }
    }
    async fn health(&self) -> Health {
        Health {
            reachable: true,
            latency: Duration::ZERO,
            detail: String::new(),
        }
    }
}

const WORKFLOW: &str = r#"
name: review
on: { pull_request: {} }
steps:
  review:
    agent: reviewer
    validation: code_review
    prompt: "Review PR {{ pr.number }}."
  deploy:
    agent: command
    needs: review
    if: steps.review.verdict == 'pass'
    with: { run: [echo, deployed] }
"#;

fn finding(line: u64, severity: &str) -> String {
    format!(
        r#"{{"path":"src/lib.rs","start_line":{line},"end_line":{line},"severity":"{severity}","title":"Finding {line}","message":"Look at line {line}."}}"#
    )
}

fn answer(verdict: &str, findings: &[String]) -> String {
    format!(
        "I read the change.\n\n```json\n{{\"verdict\":\"{verdict}\",\"summary\":\"The loop is off by one.\\nDetails below.\",\"findings\":[{}]}}\n```\n",
        findings.join(",")
    )
}

fn command() -> Arc<CommandAgent> {
    Arc::new(CommandAgent::new(CommandSettings::new("command")))
}

async fn run_with(reviewer: Arc<Reviewer>) -> (TestEngine, i64) {
    let set = workflows(&[WORKFLOW], &["reviewer", "command"]);
    let agents = AgentMap::new().with(reviewer).with(command());
    let t = TestEngine::start(set, agents, fast_config()).await;
    let id = t.start_run("review").await;
    t.wait_run(id, Duration::from_secs(30)).await;
    (t, id)
}

#[tokio::test]
async fn a_fail_verdict_skips_the_gated_step_and_turns_the_check_run_red_with_annotations() {
    let reviewer = Reviewer::new(&[&answer(
        "fail",
        &[finding(3, "failure"), finding(7, "warning")],
    )]);
    let (t, id) = run_with(reviewer.clone()).await;
    let snap = t.store.run(RunId(id)).await.unwrap().unwrap();
    // The engine's run ended as its steps did; the gated step was skipped.
    assert_eq!(snap.step("review").unwrap().state, StepState::Succeeded);
    assert_eq!(snap.step("deploy").unwrap().state, StepState::Skipped);
    // taskmaster asked for the verdict, with the schema.
    let prompt = reviewer.prompts.lock().unwrap()[0].clone();
    assert!(prompt.starts_with("Review PR "), "{prompt}");
    assert!(prompt.contains("fenced ```json block"), "{prompt}");
    assert!(prompt.contains("\"start_line\""), "{prompt}");
    // The check run: failure, the reason, findings by file, annotations.
    let mut report = build_report(&snap, None);
    report.annotate = true;
    let update = report.check_run_update();
    assert_eq!(update.conclusion, Some(CheckConclusion::Failure));
    let output = update.output.clone().unwrap();
    assert!(
        output
            .summary()
            .contains("the verdict of \\`review\\` is fail: The loop is off by one."),
        "{}",
        output.summary()
    );
    assert!(
        output.summary().contains("**Findings:** 2"),
        "{}",
        output.summary()
    );
    let annotations = output.annotations();
    assert_eq!(annotations.len(), 2);
    assert_eq!(annotations[0].path, "src/lib.rs");
    assert_eq!((annotations[0].start_line, annotations[0].end_line), (3, 3));
    assert_eq!(annotations[0].annotation_level, AnnotationLevel::Failure);
    assert_eq!(annotations[1].annotation_level, AnnotationLevel::Warning);
    assert_eq!(annotations[0].title.as_deref(), Some("review: Finding 3"));
    // Without `annotate` (a later update of the finished run) none are sent again.
    report.annotate = false;
    assert!(
        report
            .check_run_update()
            .output
            .unwrap()
            .annotations()
            .is_empty()
    );
    // The validation stored is the verdict, with the findings as evidence.
    let store: Arc<dyn RunStore> = t.store.clone();
    // Recorded just after the step's result (the run may end first).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let validations = loop {
        let v = store
            .validations(&ValidationFilter {
                run_id: Some(id),
                limit: 10,
                ..Default::default()
            })
            .await
            .unwrap();
        if !v.is_empty() || std::time::Instant::now() > deadline {
            break v;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(validations.len(), 1);
    assert_eq!(validations[0].verdict, Verdict::Fail);
    assert_eq!(validations[0].summary, "The loop is off by one.");
    let evidence = validations[0].evidence.to_string();
    assert!(evidence.contains("\"findings\""), "{evidence}");
    // `/api/validations` carries the report itself.
    let view = taskmaster::api::validations::ValidationView::from(validations[0].clone());
    let report = view.report.expect("the verdict report");
    assert_eq!(report.verdict, taskmaster::verdict::Verdict::Fail);
    assert_eq!(report.findings.len(), 2);
    t.stop().await;
}

#[tokio::test]
async fn a_pass_verdict_lets_the_gated_step_run_and_the_check_run_stay_green() {
    let reviewer = Reviewer::new(&[&answer("pass", &[finding(2, "notice")])]);
    let (t, id) = run_with(reviewer).await;
    let snap = t.store.run(RunId(id)).await.unwrap().unwrap();
    assert_eq!(snap.run.state, RunState::Succeeded);
    assert_eq!(snap.step("deploy").unwrap().state, StepState::Succeeded);
    let update = build_report(&snap, None).check_run_update();
    assert_eq!(update.conclusion, Some(CheckConclusion::Success));
    t.stop().await;
}

#[tokio::test]
async fn a_malformed_verdict_gets_one_repair_turn() {
    let reviewer = Reviewer::new(&["Looks good to me, APPROVE.", &answer("pass", &[])]);
    let (t, id) = run_with(reviewer.clone()).await;
    let snap = t.store.run(RunId(id)).await.unwrap().unwrap();
    assert_eq!(snap.step("review").unwrap().state, StepState::Succeeded);
    assert_eq!(snap.step("deploy").unwrap().state, StepState::Succeeded);
    let prompts = reviewer.prompts.lock().unwrap().clone();
    assert_eq!(prompts.len(), 2, "one repair turn");
    assert!(
        prompts[1].contains("Looks good to me, APPROVE."),
        "{}",
        prompts[1]
    );
    assert!(
        prompts[1].contains("could not be read: the answer has no fenced ```json block"),
        "{}",
        prompts[1]
    );
    t.stop().await;
}

#[tokio::test]
async fn malformed_twice_fails_the_step_as_malformed_not_as_the_codes_verdict() {
    let reviewer = Reviewer::new(&["APPROVE", "```json\n{\"verdict\": \"approve\"}\n```"]);
    let (t, id) = run_with(reviewer.clone()).await;
    let snap = t.store.run(RunId(id)).await.unwrap().unwrap();
    let review = snap.step("review").unwrap();
    assert_eq!(review.state, StepState::Failed);
    let error = review.error.clone().unwrap_or_default();
    assert!(error.contains("malformed verdict"), "{error}");
    assert_eq!(snap.step("deploy").unwrap().state, StepState::Skipped);
    let attempts = t.store.attempts(RunId(id)).await.unwrap();
    assert_eq!(attempts[0].outcome.map(|o| o.as_str()), Some("failed"));
    assert!(
        attempts[0]
            .error
            .as_deref()
            .is_some_and(|e| e.starts_with("malformed verdict")),
        "{:?}",
        attempts[0]
    );
    assert_eq!(reviewer.prompts.lock().unwrap().len(), 2);
    // No validation says `fail`: the code was never judged. (Stopping the
    // engine first: it drains its step tasks, so nothing lands later.)
    let (_dir, store) = t.stop().await;
    let validations = store
        .validations(&ValidationFilter {
            run_id: Some(id),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(validations.is_empty(), "{validations:?}");
}

#[tokio::test]
async fn a_hundred_and_twenty_findings_go_out_in_three_annotation_batches() {
    let findings: Vec<String> = (1..=120).map(|l| finding(l, "warning")).collect();
    let reviewer = Reviewer::new(&[&answer("neutral", &findings)]);
    let (t, id) = run_with(reviewer).await;
    let snap = t.store.run(RunId(id)).await.unwrap().unwrap();
    let mut report = build_report(&snap, None);
    report.annotate = true;
    let update = report.check_run_update();
    // `neutral` is not `pass`: the gated step did not run; the check is not red.
    assert_eq!(snap.step("deploy").unwrap().state, StepState::Skipped);
    assert_eq!(update.conclusion, Some(CheckConclusion::Success));
    let batches = update.annotation_batches();
    assert_eq!(batches.len(), 3);
    let sizes: Vec<usize> = batches
        .iter()
        .map(|b| b.output.as_ref().unwrap().annotations().len())
        .collect();
    assert_eq!(sizes, [50, 50, 20]);
    assert!(
        update
            .output
            .unwrap()
            .summary()
            .contains("… and 70 more (as annotations)."),
    );
    t.stop().await;
}
