//! The written insights report on the real binary: with `insights_report:`
//! in the service configuration, the service computes the period's figures
//! at start and runs the report workflow on the chosen issue with them in
//! the run's context; the run's sticky comment on that issue (through the
//! fake GitHub) carries what the workflow's agent wrote. The agent here is
//! a command that prints the figures it was given, so the test sees exactly
//! what an agent would read. A restart in the same period starts nothing
//! more (the run is keyed by the period).

mod harness;
mod support;

use std::time::{Duration, Instant};

use harness::ChildService;
use support::fake_github::FakeGitHub;

const WORKFLOW: &str = r#"
name: insights_report
on:
  manual: true
steps:
  summarise:
    agent: command
    with:
      run: ["printf", "%s", "{{ issue.body }}"]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_report_workflow_gets_the_figures_and_its_comment_reaches_the_issue() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("repos")).unwrap();
    std::fs::create_dir(dir.path().join("workflows")).unwrap();
    std::fs::write(dir.path().join("workflows/insights_report.yml"), WORKFLOW).unwrap();
    std::fs::write(
        dir.path().join("taskmaster.yml"),
        "insights_report:\n  repository: octo/ops\n  issue: 7\n  installation_id: 1\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("app.pem"),
        include_str!("fixtures/github/app-key.pem"),
    )
    .unwrap();
    let github = FakeGitHub::start(dir.path().join("repos")).await;
    github.add_issue("octo/ops", 7);
    let env = |db: &str| -> Vec<(String, String)> {
        vec![
            ("GITHUB_API_URL".into(), github.url.clone()),
            ("GITHUB_APP_ID".into(), "12345".into()),
            (
                "GITHUB_PRIVATE_KEY_PATH".into(),
                dir.path().join("app.pem").display().to_string(),
            ),
            (
                "TASKMASTER_CONFIG".into(),
                dir.path().join("taskmaster.yml").display().to_string(),
            ),
            (
                "TASKMASTER_WORKFLOWS".into(),
                dir.path().join("workflows").display().to_string(),
            ),
            ("DATABASE_URL".into(), db.into()),
        ]
    };
    let db = format!("sqlite://{}", dir.path().join("tm.db").display());
    let vars = env(&db);
    let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let service = ChildService::start_url(&db, &vars);

    let deadline = Instant::now() + Duration::from_secs(30);
    let comment = loop {
        let done = github
            .comments("octo/ops", 7)
            .into_iter()
            .map(|c| c["body"].as_str().unwrap_or_default().to_owned())
            .find(|b| b.contains("insights_report") && b.contains("Succeeded"));
        if let Some(body) = done {
            break body;
        }
        assert!(
            Instant::now() < deadline,
            "no report comment on octo/ops#7: {:?}\n{}",
            github.comments("octo/ops", 7),
            service.logs_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // What the agent read (and, here, printed): the period's figures.
    for section in [
        "# taskmaster insights, last 7 days",
        "## Workflows",
        "| workflow | runs | succeeded |",
        "## Agents",
        "## Advice",
    ] {
        assert!(comment.contains(section), "{section} in:\n{comment}");
    }
    assert!(service.logs_text().contains("insights report started"));
    drop(service);

    // Started again in the same period: no second report.
    let again = ChildService::start_url(&db, &vars);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !again
        .logs_text()
        .contains("this period's insights report exists already")
    {
        assert!(Instant::now() < deadline, "{}", again.logs_text());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let runs: i64 = rusqlite::Connection::open(dir.path().join("tm.db"))
        .unwrap()
        .query_row(
            "SELECT COUNT(*) FROM runs WHERE workflow = 'insights_report'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(runs, 1, "one report per period");
}
