//! The in-memory GitHub the engine and outbox tests (and dry run) use, and
//! the idempotent effects on top of the trait: a restart that forgot the
//! stored ids creates no second check run and no second sticky comment.

use serde_json::json;
use taskmaster::github::{
    CheckRunId, Effect, GitHub, GitHubError, InstallationId, Permission, RecordingGitHub, RepoName,
    upsert_check_run, upsert_sticky_comment,
};
use taskmaster::report::{
    RunOutcome, RunReport, RunState, STICKY_MARKER, Subject, render_sticky_comment,
};

const INST: InstallationId = InstallationId(1);

fn repo() -> RepoName {
    RepoName::parse("octo/widgets").unwrap()
}

fn run(state: RunState) -> RunReport {
    RunReport {
        run_id: "run-1".into(),
        workflow: "review".into(),
        repository: "octo/widgets".parse().ok(),
        number: 3,
        subject: Subject::PullRequest,
        head_sha: Some("a".repeat(40)),
        state,
        steps: vec![],
        details_url: None,
        started_at: None,
        completed_at: None,
        reason: None,
        change: None,
        findings: Vec::new(),
        annotate: false,
        verdict_rules: Default::default(),
        failed_by_verdict: false,
        has_verdicts: false,
        started_by_api: None,
        stopped_by_budget: None,
        expected: None,
        cost_micro_usd: 0,
    }
}

#[tokio::test]
async fn a_restart_creates_no_second_check_run_or_comment() {
    let gh = RecordingGitHub::new();
    // Before the restart: both created, ids stored.
    let queued = run(RunState::Queued);
    let check = upsert_check_run(&gh, INST, &repo(), None, &queued.new_check_run().unwrap())
        .await
        .unwrap();
    let body = render_sticky_comment(&[queued]);
    let comment = upsert_sticky_comment(&gh, INST, &repo(), 3, None, STICKY_MARKER, &body)
        .await
        .unwrap();

    // After a restart the ids were never recorded: found again, edited.
    let done = run(RunState::Completed(RunOutcome::Succeeded));
    let check_again = upsert_check_run(&gh, INST, &repo(), None, &done.new_check_run().unwrap())
        .await
        .unwrap();
    let body = render_sticky_comment(&[done]);
    let comment_again = upsert_sticky_comment(&gh, INST, &repo(), 3, None, STICKY_MARKER, &body)
        .await
        .unwrap();
    assert_eq!(check_again, check);
    assert_eq!(comment_again, comment);
    assert_eq!(gh.check_run_count(&repo()), 1);
    assert_eq!(gh.comments(&repo(), 3), [body]);

    let kinds: Vec<&str> = gh
        .effects()
        .iter()
        .map(|e| match e {
            Effect::CreateCheckRun { .. } => "create check run",
            Effect::UpdateCheckRun { .. } => "update check run",
            Effect::CreateComment { .. } => "create comment",
            Effect::UpdateComment { .. } => "update comment",
            _ => "other",
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "create check run",
            "create comment",
            "update check run",
            "update comment"
        ]
    );
    let Effect::UpdateCheckRun { body, .. } = &gh.effects()[2] else {
        unreachable!()
    };
    assert_eq!(body["conclusion"], json!("success"));
}

#[tokio::test]
async fn a_new_run_on_the_same_commit_gets_its_own_check_run() {
    let gh = RecordingGitHub::new();
    let first = run(RunState::Queued);
    let mut second = run(RunState::Queued);
    second.run_id = "run-2".into();
    let a = upsert_check_run(&gh, INST, &repo(), None, &first.new_check_run().unwrap())
        .await
        .unwrap();
    let b = upsert_check_run(&gh, INST, &repo(), None, &second.new_check_run().unwrap())
        .await
        .unwrap();
    assert_ne!(a, b);
    assert_eq!(gh.check_run_count(&repo()), 2);
}

#[tokio::test]
async fn a_stale_stored_id_falls_back_to_the_search() {
    let gh = RecordingGitHub::new();
    let queued = run(RunState::Queued);
    let id = upsert_check_run(&gh, INST, &repo(), None, &queued.new_check_run().unwrap())
        .await
        .unwrap();
    let again = upsert_check_run(
        &gh,
        INST,
        &repo(),
        Some(CheckRunId(9999)),
        &queued.new_check_run().unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(again, id);
}

#[tokio::test]
async fn failures_can_be_injected_and_are_classified() {
    let gh = RecordingGitHub::new();
    gh.fail_next(GitHubError::Api {
        status: 502,
        method: "POST".into(),
        path: "/x".into(),
        message: String::new(),
    });
    let err = gh.create_comment(INST, &repo(), 3, "x").await.unwrap_err();
    assert!(err.is_transient());
    assert!(gh.effects().is_empty());
    gh.create_comment(INST, &repo(), 3, "x").await.unwrap();
    assert_eq!(gh.effects().len(), 1);

    gh.set_permission("Alice", Permission::Maintain);
    assert_eq!(
        gh.collaborator_permission(INST, &repo(), "alice")
            .await
            .unwrap(),
        Permission::Maintain
    );
    assert!(Permission::Maintain >= Permission::Write);
}

#[tokio::test]
async fn without_credentials_effects_are_recorded_not_sent() {
    let settings = taskmaster::github::GitHubSettings::from_lookup(|_| None).unwrap();
    let gh = taskmaster::github::connect(&settings, Default::default()).unwrap();
    // No server anywhere: a real client would fail to connect.
    let id = gh.create_comment(INST, &repo(), 3, "hello").await.unwrap();
    let found = gh
        .find_comment_by_marker(INST, &repo(), 3, "hello")
        .await
        .unwrap();
    assert_eq!(found, Some(id));
}
