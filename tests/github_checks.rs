//! Check runs and comments as GitHub receives them: every body is read back
//! from the fake GitHub and checked against the documented shape and limits
//! (<https://docs.github.com/en/rest/checks/runs>,
//! <https://docs.github.com/en/rest/issues/comments>).

mod github_world;

use chrono::{TimeZone, Utc};
use github_world::*;
use serde_json::{Value, json};
use taskmaster::github::checks::{MAX_COMMENT_CHARS, MAX_OUTPUT_BYTES};
use taskmaster::github::{
    Annotation, AnnotationLevel, CheckOutput, CheckRunId, CheckRunUpdate, CommentId, GitHub,
    Reaction, upsert_sticky_comment,
};
use taskmaster::report::{
    RunOutcome, RunReport, RunState, STICKY_MARKER, StepReport, StepState, Subject,
    render_sticky_comment,
};
use wiremock::matchers::{method, path, query_param};
use wiremock::{Mock, ResponseTemplate};

const CHECK_RUNS: &str = "/repos/octo/widgets/check-runs";
const SHA: &str = "0123456789abcdef0123456789abcdef01234567";

fn run(state: RunState, output: &str) -> RunReport {
    RunReport {
        run_id: "run-17".into(),
        workflow: "review".into(),
        repository: "octo/widgets".parse().ok(),
        number: 7,
        subject: Subject::PullRequest,
        head_sha: Some(SHA.into()),
        state,
        steps: vec![
            StepReport {
                id: "plan".into(),
                agent: "claude".into(),
                state: StepState::Succeeded,
                attempts: 1,
                duration_ms: Some(1_500),
                output: Some("planned".into()),
                cost_micro_usd: 0,
            },
            StepReport {
                id: "test".into(),
                agent: "command".into(),
                state: StepState::Failed,
                attempts: 3,
                duration_ms: Some(65_000),
                output: Some(output.into()),
                cost_micro_usd: 0,
            },
        ],
        details_url: Some("https://taskmaster.example/runs/run-17".into()),
        started_at: Some(Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap()),
        completed_at: Some(Utc.with_ymd_and_hms(2026, 1, 2, 3, 9, 5).unwrap()),
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

async fn mount_check_runs(w: &World) {
    Mock::given(method("POST"))
        .and(path(CHECK_RUNS))
        .respond_with(ResponseTemplate::new(201).set_body_json(json!({"id": 555})))
        .mount(&w.server)
        .await;
    Mock::given(method("PATCH"))
        .and(path(format!("{CHECK_RUNS}/555")))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"id": 555})))
        .mount(&w.server)
        .await;
}

/// The documented shape of a check-run body (create or update).
#[track_caller]
fn assert_check_run_shape(body: &Value, creating: bool) {
    let obj = body.as_object().expect("an object");
    let allowed = [
        "name",
        "head_sha",
        "details_url",
        "external_id",
        "status",
        "started_at",
        "conclusion",
        "completed_at",
        "output",
        "actions",
    ];
    for key in obj.keys() {
        assert!(allowed.contains(&key.as_str()), "unknown field {key}");
    }
    if creating {
        assert!(body["name"].as_str().unwrap().starts_with("taskmaster / "));
        assert_eq!(body["head_sha"].as_str().unwrap().len(), 40);
    }
    if let Some(s) = body.get("status") {
        assert!(
            ["queued", "in_progress", "completed"].contains(&s.as_str().unwrap()),
            "{s}"
        );
    }
    if let Some(c) = body.get("conclusion") {
        let c = c.as_str().unwrap();
        assert!(
            [
                "success",
                "failure",
                "neutral",
                "cancelled",
                "skipped",
                "timed_out",
                "action_required"
            ]
            .contains(&c),
            "{c}"
        );
        assert!(
            body.get("completed_at").is_some(),
            "a conclusion needs completed_at"
        );
    }
    for t in ["started_at", "completed_at"] {
        if let Some(v) = body.get(t) {
            chrono::DateTime::parse_from_rfc3339(v.as_str().unwrap()).expect("ISO 8601");
        }
    }
    if let Some(o) = body.get("output") {
        assert!(!o["title"].as_str().expect("output.title").is_empty());
        assert!(o["summary"].as_str().expect("output.summary").len() <= MAX_OUTPUT_BYTES);
        if let Some(t) = o.get("text") {
            assert!(t.as_str().unwrap().len() <= MAX_OUTPUT_BYTES);
        }
        if let Some(a) = o.get("annotations") {
            assert!(a.as_array().unwrap().len() <= 50);
        }
    }
    if let Some(a) = body.get("actions") {
        let a = a.as_array().unwrap();
        assert!(a.len() <= 3);
        for action in a {
            assert!((1..=20).contains(&action["label"].as_str().unwrap().chars().count()));
            assert!((1..=40).contains(&action["description"].as_str().unwrap().chars().count()));
            assert!((1..=20).contains(&action["identifier"].as_str().unwrap().chars().count()));
        }
    }
}

#[tokio::test]
async fn lifecycle_bodies_match_github_shape() {
    let w = world().await;
    mount_check_runs(&w).await;
    let queued = run(RunState::Queued, "");
    let id = w
        .client
        .create_check_run(INSTALLATION, &repo(), &queued.new_check_run().unwrap())
        .await
        .unwrap();
    assert_eq!(id, CheckRunId(555));
    for state in [RunState::Running, RunState::Completed(RunOutcome::Failed)] {
        w.client
            .update_check_run(
                INSTALLATION,
                &repo(),
                id,
                &run(state, "boom").check_run_update(),
            )
            .await
            .unwrap();
    }
    let created = w.bodies("POST", CHECK_RUNS).await;
    assert_eq!(created.len(), 1);
    assert_check_run_shape(&created[0], true);
    assert_eq!(created[0]["name"], "taskmaster / review");
    assert_eq!(created[0]["status"], "queued");
    assert_eq!(created[0]["external_id"], "run-17");
    assert_eq!(
        created[0]["details_url"],
        "https://taskmaster.example/runs/run-17"
    );
    assert!(created[0].get("conclusion").is_none());

    let updates = w.bodies("PATCH", &format!("{CHECK_RUNS}/555")).await;
    assert_eq!(updates.len(), 2);
    for u in &updates {
        assert_check_run_shape(u, false);
        assert!(u.get("head_sha").is_none() && u.get("name").is_none());
    }
    assert_eq!(updates[0]["status"], "in_progress");
    assert_eq!(updates[1]["status"], "completed");
    assert_eq!(updates[1]["conclusion"], "failure");
    let ids: Vec<&str> = updates[1]["actions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["identifier"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["retry", "rerun"]);
}

#[tokio::test]
async fn waiting_for_approval_is_action_required_with_an_approve_button() {
    let w = world().await;
    mount_check_runs(&w).await;
    let body = run(RunState::WaitingForApproval, "")
        .new_check_run()
        .unwrap();
    w.client
        .create_check_run(INSTALLATION, &repo(), &body)
        .await
        .unwrap();
    let sent = &w.bodies("POST", CHECK_RUNS).await[0];
    assert_check_run_shape(sent, true);
    assert_eq!(sent["conclusion"], "action_required");
    assert_eq!(sent["actions"][0]["label"], "Approve run");
    assert_eq!(sent["actions"][0]["identifier"], "approve");
}

#[tokio::test]
async fn a_200_kb_output_is_truncated_to_the_byte_limit_with_a_note() {
    let w = world().await;
    mount_check_runs(&w).await;
    // Multi-byte characters, so a cut by characters would overflow.
    let huge = "日本語のログ行\n".repeat(10_000); // ~200 KB
    assert!(huge.len() > 200_000);
    let report = run(RunState::Completed(RunOutcome::Failed), &huge);
    w.client
        .create_check_run(INSTALLATION, &repo(), &report.new_check_run().unwrap())
        .await
        .unwrap();
    let sent = &w.bodies("POST", CHECK_RUNS).await[0];
    assert_check_run_shape(sent, true);
    let text = sent["output"]["text"].as_str().unwrap();
    assert!(text.len() <= MAX_OUTPUT_BYTES, "{} bytes", text.len());
    assert!(text.len() > 60_000, "the budget is used, not wasted");
    assert!(
        text.contains("left out to fit GitHub's limit"),
        "visible note"
    );

    // The generic guard on a raw field, too.
    let raw = CheckOutput::new("t", &"é".repeat(100_000), Some(&"x".repeat(200_000)));
    assert!(raw.summary().len() <= MAX_OUTPUT_BYTES);
    assert!(raw.text().unwrap().len() <= MAX_OUTPUT_BYTES);
    assert!(raw.text().unwrap().contains("**Truncated:**"));
}

#[tokio::test]
async fn annotations_are_sent_fifty_per_request() {
    let w = world().await;
    mount_check_runs(&w).await;
    let annotations: Vec<Annotation> = (1..=120)
        .map(|i| Annotation::new("src/lib.rs", i, i, AnnotationLevel::Warning, "look"))
        .collect();
    let mut body = run(RunState::Running, "").new_check_run().unwrap();
    body.fields.output = Some(CheckOutput::new("t", "s", None).with_annotations(annotations));
    w.client
        .create_check_run(INSTALLATION, &repo(), &body)
        .await
        .unwrap();
    let created = w.bodies("POST", CHECK_RUNS).await;
    let updates = w.bodies("PATCH", &format!("{CHECK_RUNS}/555")).await;
    let count = |b: &Value| b["output"]["annotations"].as_array().map_or(0, Vec::len);
    assert_eq!(count(&created[0]), 50);
    assert_eq!(updates.iter().map(count).collect::<Vec<_>>(), [50, 20]);
    for u in &updates {
        assert_check_run_shape(u, false);
        assert_eq!(
            u["output"]["title"], "t",
            "title and summary go with output"
        );
    }
    assert_eq!(updates[1]["output"]["annotations"][19]["start_line"], 120);

    // An update with an empty annotation list is one request.
    w.client
        .update_check_run(
            INSTALLATION,
            &repo(),
            CheckRunId(555),
            &CheckRunUpdate::default(),
        )
        .await
        .unwrap();
    assert_eq!(
        w.bodies("PATCH", &format!("{CHECK_RUNS}/555")).await.len(),
        3
    );
}

#[tokio::test]
async fn comment_bodies_are_limited_in_characters() {
    let w = world().await;
    let p = "/repos/octo/widgets/issues/7/comments";
    Mock::given(method("POST"))
        .and(path(p))
        .respond_with(ResponseTemplate::new(201).set_body_json(json!({"id": 1})))
        .mount(&w.server)
        .await;
    w.client
        .create_comment(INSTALLATION, &repo(), 7, &"ä".repeat(70_000))
        .await
        .unwrap();
    let body = &w.bodies("POST", p).await[0];
    let text = body["body"].as_str().unwrap();
    assert_eq!(body.as_object().unwrap().len(), 1, "only `body`");
    assert!(text.chars().count() <= MAX_COMMENT_CHARS);
    assert!(text.contains("**Truncated:**"));
}

#[tokio::test]
async fn reactions_use_github_content_values() {
    let w = world().await;
    let p = "/repos/octo/widgets/issues/comments/9/reactions";
    Mock::given(method("POST"))
        .and(path(p))
        .respond_with(ResponseTemplate::new(201).set_body_json(json!({"id": 1})))
        .mount(&w.server)
        .await;
    for r in [Reaction::Eyes, Reaction::PlusOne] {
        w.client
            .add_reaction(INSTALLATION, &repo(), CommentId(9), r)
            .await
            .unwrap();
    }
    let bodies = w.bodies("POST", p).await;
    assert_eq!(
        bodies,
        [json!({"content": "eyes"}), json!({"content": "+1"})]
    );
}

#[tokio::test]
async fn config_file_is_read_raw_from_the_default_branch() {
    let w = world().await;
    Mock::given(method("GET"))
        .and(path("/repos/octo/widgets/contents/.github/taskmaster.yml"))
        .and(wiremock::matchers::header(
            "accept",
            "application/vnd.github.raw+json",
        ))
        .respond_with(ResponseTemplate::new(200).set_body_string("workflows: {}\n"))
        .mount(&w.server)
        .await;
    let text = w
        .client
        .file_contents(INSTALLATION, &repo(), ".github/taskmaster.yml", None)
        .await
        .unwrap();
    assert_eq!(text.as_deref(), Some("workflows: {}\n"));
}

fn comment(id: u64, login: &str, kind: &str, body: &str) -> Value {
    json!({"id": id, "body": body, "user": {"login": login, "type": kind}})
}

/// Page 1 holds 100 comments by people (one pretending to be the marker),
/// page 2 holds our sticky comment.
async fn mount_comment_pages(w: &World, with_ours: bool) {
    let p = "/repos/octo/widgets/issues/7/comments";
    let mut page1: Vec<Value> = (1..=99)
        .map(|i| comment(i, "alice", "User", "looks good"))
        .collect();
    page1[98] = comment(99, "mallory", "User", &format!("{STICKY_MARKER} fake"));
    // Another App's bot with our marker: a bot, but not ours.
    let mut other = comment(
        100,
        "other-app[bot]",
        "Bot",
        &format!("{STICKY_MARKER} lookalike"),
    );
    other["performed_via_github_app"] = json!({"id": 999});
    page1.push(other);
    let link = format!(
        "<{}{p}?per_page=100&page=2>; rel=\"next\", <{}{p}?per_page=100&page=2>; rel=\"last\"",
        w.server.uri(),
        w.server.uri()
    );
    Mock::given(method("GET"))
        .and(path(p))
        .and(query_param("page", "1"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(page1)
                .insert_header("link", link.as_str()),
        )
        .mount(&w.server)
        .await;
    let mut page2 = vec![comment(101, "bob", "User", "/retry")];
    if with_ours {
        // GitHub marks what our App wrote with its id.
        let mut ours = comment(
            4242,
            "taskmaster[bot]",
            "Bot",
            &format!("{STICKY_MARKER}\nold"),
        );
        ours["performed_via_github_app"] = json!({"id": APP_ID});
        page2.push(ours);
    }
    Mock::given(method("GET"))
        .and(path(p))
        .and(query_param("page", "2"))
        .respond_with(ResponseTemplate::new(200).set_body_json(page2))
        .mount(&w.server)
        .await;
}

#[tokio::test]
async fn sticky_comment_is_found_on_page_two_and_edited() {
    let w = world().await;
    mount_comment_pages(&w, true).await;
    Mock::given(method("PATCH"))
        .and(path("/repos/octo/widgets/issues/comments/4242"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"id": 4242})))
        .mount(&w.server)
        .await;
    let body = render_sticky_comment(&[run(RunState::Running, "")]);
    let id = upsert_sticky_comment(
        &w.client,
        INSTALLATION,
        &repo(),
        7,
        None,
        STICKY_MARKER,
        &body,
    )
    .await
    .unwrap();
    assert_eq!(
        id,
        CommentId(4242),
        "ours, not mallory's or another App's look-alike"
    );
    assert!(
        w.requests("POST", "/repos/octo/widgets/issues/7/comments")
            .await
            .is_empty()
    );
    let edits = w
        .bodies("PATCH", "/repos/octo/widgets/issues/comments/4242")
        .await;
    assert_eq!(edits, [json!({"body": body})]);
}

#[tokio::test]
async fn sticky_comment_is_created_once_then_edited_by_its_id() {
    let w = world().await;
    mount_comment_pages(&w, false).await;
    Mock::given(method("POST"))
        .and(path("/repos/octo/widgets/issues/7/comments"))
        .respond_with(ResponseTemplate::new(201).set_body_json(json!({"id": 777})))
        .mount(&w.server)
        .await;
    Mock::given(method("PATCH"))
        .and(path("/repos/octo/widgets/issues/comments/777"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"id": 777})))
        .mount(&w.server)
        .await;
    let first = render_sticky_comment(&[run(RunState::Queued, "")]);
    let id = upsert_sticky_comment(
        &w.client,
        INSTALLATION,
        &repo(),
        7,
        None,
        STICKY_MARKER,
        &first,
    )
    .await
    .unwrap();
    assert_eq!(id, CommentId(777));
    let second = render_sticky_comment(&[run(RunState::Completed(RunOutcome::Failed), "boom")]);
    let again = upsert_sticky_comment(
        &w.client,
        INSTALLATION,
        &repo(),
        7,
        Some(id),
        STICKY_MARKER,
        &second,
    )
    .await
    .unwrap();
    assert_eq!(again, id);
    assert_eq!(
        w.requests("POST", "/repos/octo/widgets/issues/7/comments")
            .await
            .len(),
        1
    );
    assert_eq!(
        w.bodies("PATCH", "/repos/octo/widgets/issues/comments/777")
            .await,
        [json!({"body": second})]
    );
}

#[tokio::test]
async fn a_deleted_sticky_comment_is_found_or_recreated() {
    let w = world().await;
    mount_comment_pages(&w, true).await;
    Mock::given(method("PATCH"))
        .and(path("/repos/octo/widgets/issues/comments/1"))
        .respond_with(ResponseTemplate::new(404).set_body_json(json!({"message": "Not Found"})))
        .mount(&w.server)
        .await;
    Mock::given(method("PATCH"))
        .and(path("/repos/octo/widgets/issues/comments/4242"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"id": 4242})))
        .mount(&w.server)
        .await;
    let body = render_sticky_comment(&[]);
    let id = upsert_sticky_comment(
        &w.client,
        INSTALLATION,
        &repo(),
        7,
        Some(CommentId(1)),
        STICKY_MARKER,
        &body,
    )
    .await
    .unwrap();
    assert_eq!(id, CommentId(4242));
}

#[tokio::test]
async fn check_run_is_found_by_external_id_on_its_commit() {
    let w = world().await;
    let p = format!("/repos/octo/widgets/commits/{SHA}/check-runs");
    Mock::given(method("GET"))
        .and(path(p.as_str()))
        .and(query_param("check_name", "taskmaster / review"))
        .and(query_param("app_id", APP_ID.to_string().as_str()))
        .and(query_param("filter", "all"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "total_count": 2,
            "check_runs": [
                {"id": 1, "external_id": "run-16"},
                {"id": 2, "external_id": "run-17"}
            ]
        })))
        .mount(&w.server)
        .await;
    let found = w
        .client
        .find_check_run(INSTALLATION, &repo(), SHA, "taskmaster / review", "run-17")
        .await
        .unwrap();
    assert_eq!(found, Some(CheckRunId(2)));
    let none = w
        .client
        .find_check_run(INSTALLATION, &repo(), SHA, "taskmaster / review", "run-99")
        .await
        .unwrap();
    assert_eq!(none, None);
}
