//! Re-runs from GitHub's UI, read from real webhook payloads
//! (`tests/fixtures/webhooks/`) adjusted to name one of our runs.

use serde_json::{Value, json};
use taskmaster::command::Command;
use taskmaster::event::Event;
use taskmaster::github::rerun::{RerunRequest, rerun_request};

const OUR_APP: i64 = 4242;

fn fixture(name: &str) -> Value {
    let path = format!(
        "{}/tests/fixtures/webhooks/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn parse(event: &str, payload: &Value) -> Event {
    Event::parse(event, &serde_json::to_vec(payload).unwrap()).unwrap()
}

fn ours(mut payload: Value, key: &str) -> Value {
    payload[key]["app"]["id"] = json!(OUR_APP);
    if key == "check_run" {
        payload[key]["name"] = json!("taskmaster / review");
        payload[key]["external_id"] = json!("run-17");
    }
    payload
}

#[test]
fn rerequested_check_run_retries_that_run() {
    let payload = ours(fixture("check_run.rerequested.json"), "check_run");
    assert_eq!(
        rerun_request(&parse("check_run", &payload), OUR_APP),
        Some(RerunRequest::RetryRun {
            repository: "github/hello-world".parse().unwrap(),
            run_id: "run-17".into(),
            head_sha: payload["check_run"]["head_sha"].as_str().unwrap().into(),
        })
    );
    // Another app's check run, or ours without a run id: nothing.
    let theirs = fixture("check_run.rerequested.json");
    assert_eq!(rerun_request(&parse("check_run", &theirs), OUR_APP), None);
    let mut no_id = payload.clone();
    no_id["check_run"]["external_id"] = json!("");
    assert_eq!(rerun_request(&parse("check_run", &no_id), OUR_APP), None);
}

#[test]
fn rerequested_suite_reruns_the_commit_with_or_without_pull_requests() {
    let payload = ours(fixture("check_suite.rerequested.json"), "check_suite");
    let sha = payload["check_suite"]["head_sha"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        rerun_request(&parse("check_suite", &payload), OUR_APP),
        Some(RerunRequest::RerunCommit {
            repository: "Codertocat/Hello-World".parse().unwrap(),
            head_sha: sha.clone(),
            pull_requests: vec![2],
        })
    );
    // A fork PR: GitHub sends `pull_requests: []`; the commit still maps.
    let mut fork = payload.clone();
    fork["check_suite"]["pull_requests"] = json!([]);
    assert_eq!(
        rerun_request(&parse("check_suite", &fork), OUR_APP),
        Some(RerunRequest::RerunCommit {
            repository: "Codertocat/Hello-World".parse().unwrap(),
            head_sha: sha,
            pull_requests: vec![],
        })
    );
    let theirs = fixture("check_suite.rerequested.json");
    assert_eq!(rerun_request(&parse("check_suite", &theirs), OUR_APP), None);
}

#[test]
fn requested_action_maps_the_button_to_its_command() {
    let mut payload = ours(fixture("check_run.requested_action.json"), "check_run");
    let expect = |command| RerunRequest::Action {
        repository: "electron/electron".parse().unwrap(),
        run_id: "run-17".into(),
        workflow: "review".into(),
        command,
    };
    for (identifier, command) in [
        ("retry", Command::Retry { step: None }),
        (
            "rerun",
            Command::Run {
                workflow: "review".into(),
            },
        ),
        ("approve", Command::Approve { sha: None }),
    ] {
        payload["requested_action"]["identifier"] = json!(identifier);
        assert_eq!(
            rerun_request(&parse("check_run", &payload), OUR_APP),
            Some(expect(command))
        );
    }
    // The fixture's own button (another app's identifier) means nothing to us.
    payload["requested_action"]["identifier"] = json!("lgtm|26764");
    assert_eq!(rerun_request(&parse("check_run", &payload), OUR_APP), None);
}
