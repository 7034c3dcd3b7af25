//! Routing over real webhook payloads (`tests/fixtures/webhooks`), against
//! the shipped workflows: which workflows start for each event, and why.
//! Variations (a draft, a bot, a fork, a hotfix branch, …) are made by
//! editing a real payload, so every case keeps GitHub's full shape.

use std::path::Path;
use std::sync::LazyLock;

use serde_json::Value;
use taskmaster::classify::TaskType;
use taskmaster::event::Event;
use taskmaster::routing::{RouteDecision, route};
use taskmaster::workflow::{DEFAULT_AGENTS, WorkflowSet};

static SET: LazyLock<WorkflowSet> = LazyLock::new(|| {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("workflows");
    WorkflowSet::load_dir(&dir, DEFAULT_AGENTS).unwrap_or_else(|e| panic!("{e}"))
});

fn fixture(name: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/webhooks")
        .join(format!("{name}.json"));
    serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap()
}

/// Routes fixture `name` after `edit`; the event name is the file's prefix.
fn route_fixture(name: &str, edit: impl FnOnce(&mut Value)) -> Vec<RouteDecision> {
    let mut payload = fixture(name);
    edit(&mut payload);
    let event_name = name.split('.').next().unwrap();
    let event = Event::parse(event_name, &serde_json::to_vec(&payload).unwrap()).unwrap();
    route(&event, &SET)
}

/// `(workflow, started)` pairs.
fn outcome(decisions: &[RouteDecision]) -> Vec<(&str, bool)> {
    decisions
        .iter()
        .map(|d| (d.workflow.as_str(), d.start))
        .collect()
}

#[track_caller]
fn reason<'a>(decisions: &'a [RouteDecision], workflow: &str) -> &'a str {
    &decisions
        .iter()
        .find(|d| d.workflow == workflow)
        .unwrap_or_else(|| panic!("no decision for {workflow}: {decisions:#?}"))
        .reason
}

#[test]
fn every_fixture_parses_and_routes() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/webhooks");
    let mut count = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let file = path.file_name().unwrap().to_str().unwrap().to_owned();
        let event_name = file.split('.').next().unwrap();
        let event = Event::parse(event_name, &std::fs::read(&path).unwrap())
            .unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(event.name(), event_name, "{file}");
        let _ = route(&event, &SET);
        count += 1;
    }
    assert!(count > 100, "{count} fixtures");
}

#[test]
fn typed_fields_come_from_the_payload() {
    let payload = serde_json::to_vec(&fixture("pull_request.opened")).unwrap();
    let Event::PullRequest(e) = Event::parse("pull_request", &payload).unwrap() else {
        panic!("not a pull_request");
    };
    assert_eq!(e.action, "opened");
    assert_eq!(e.pull_request.number, 2);
    assert_eq!(e.pull_request.base.branch, "master");
    assert_eq!(e.pull_request.head.branch, "changes");
    assert_eq!(e.pull_request.head.sha.len(), 40);
    assert!(!e.pull_request.is_fork());
    assert_eq!(e.pull_request.author_association, "OWNER");
    assert_eq!(
        e.envelope.repository.as_ref().unwrap().full_name,
        "Codertocat/Hello-World"
    );

    let payload = serde_json::to_vec(&fixture("check_run.requested_action")).unwrap();
    let Event::CheckRun(e) = Event::parse("check_run", &payload).unwrap() else {
        panic!("not a check_run");
    };
    assert_eq!(
        e.requested_action.as_ref().unwrap().identifier,
        "lgtm|26764"
    );
    assert_eq!(e.check_run.pull_requests[0].number, 26764);
    assert_eq!(e.app_id(), Some(25811));

    let payload = serde_json::to_vec(&fixture("check_suite.rerequested")).unwrap();
    let event = Event::parse("check_suite", &payload).unwrap();
    assert!(event.sender().unwrap().is_bot());

    let payload = serde_json::to_vec(&fixture("issue_comment.created")).unwrap();
    let Event::IssueComment(e) = Event::parse("issue_comment", &payload).unwrap() else {
        panic!("not an issue_comment");
    };
    assert!(!e.issue.is_pull_request());
    assert_eq!(e.comment.author_association, "OWNER");
}

#[test]
fn an_opened_pull_request_starts_pr_processing() {
    let d = route_fixture("pull_request.opened", |_| {});
    assert_eq!(outcome(&d), [("pr_processing", true)]);
    assert_eq!(
        reason(&d, "pr_processing"),
        "pull_request.opened on #2 (changes -> master) matches `on.pull_request`"
    );
    let task = d[0].classification.as_ref().unwrap();
    assert_eq!(
        task.task_type,
        TaskType::Default,
        "a README update is not a typed task: {:?}",
        task.evidence
    );
}

#[test]
fn a_bug_label_on_a_pull_request_classifies_the_review_but_writes_no_code() {
    // pull_request.opened.2 carries the `bug` label: the review knows it is
    // a bugfix, but the code-writing bugfix workflow starts from issues.
    let d = route_fixture("pull_request.opened.2", |_| {});
    assert_eq!(outcome(&d), [("pr_processing", true)]);
    let task = d[0].classification.as_ref().unwrap();
    assert_eq!(task.task_type, TaskType::Bugfix);
    let d = route_fixture("pull_request.labeled", |_| {});
    assert_eq!(outcome(&d), []);
}

#[test]
fn adding_a_task_label_to_an_issue_starts_the_task_workflow_once() {
    let d = route_fixture("issues.labeled", |_| {});
    assert_eq!(outcome(&d), [("bugfix", true), ("issue_triage", true)]);
    // Adding an unrelated label to a bug must not start it again.
    let d = route_fixture("issues.labeled", |p| {
        p["label"]["name"] = "documentation".into();
    });
    assert!(outcome(&d).iter().all(|(w, _)| *w != "bugfix"), "{d:#?}");
}

/// Point 10 of the bring-back issue: a repository may let labels start a
/// code-writing task workflow on its pull requests, but a PR's title or
/// branch never does.
#[test]
fn on_pull_requests_only_a_label_starts_a_workflow_that_writes_code() {
    let set = WorkflowSet::from_sources(
        vec![(
            "fixer.yml".into(),
            "name: fixer\non: { task: { types: [bugfix], events: [pull_request] } }\n\
             steps:\n  code: { agent: claude-code, changes: true, prompt: fix }\n"
                .into(),
        )],
        DEFAULT_AGENTS,
    )
    .unwrap();
    let route_with = |name: &str, edit: &dyn Fn(&mut Value)| {
        let mut payload = fixture(name);
        edit(&mut payload);
        let event = Event::parse("pull_request", &serde_json::to_vec(&payload).unwrap()).unwrap();
        route(&event, &set)
            .into_iter()
            .map(|d| (d.workflow, d.start))
            .collect::<Vec<_>>()
    };
    // The `bug` label, added by someone with triage rights: it starts.
    assert_eq!(
        route_with("pull_request.opened.2", &|_| {}),
        [("fixer".to_owned(), true)]
    );
    // A `fix:` title or a `bugfix/` branch without the label: it does not.
    let unlabeled = |p: &mut Value| p["pull_request"]["labels"] = serde_json::json!([]);
    assert_eq!(
        route_with("pull_request.opened.2", &|p| {
            unlabeled(p);
            p["pull_request"]["title"] = "fix: the README".into();
        }),
        []
    );
    assert_eq!(
        route_with("pull_request.opened.2", &|p| {
            unlabeled(p);
            p["pull_request"]["head"]["ref"] = "hotfix/readme".into();
        }),
        []
    );
}

#[test]
fn a_new_push_reruns_pr_processing_but_not_the_task_workflow() {
    let d = route_fixture("pull_request.synchronize", |_| {});
    assert_eq!(outcome(&d), [("pr_processing", true)]);
}

#[test]
fn drafts_are_held_back_until_ready_for_review() {
    let d = route_fixture("pull_request.opened.2", |p| {
        p["pull_request"]["draft"] = true.into();
    });
    assert_eq!(outcome(&d), [("pr_processing", false)]);
    assert_eq!(
        reason(&d, "pr_processing"),
        "pull request #2 is a draft; it starts when marked ready for review (or set `drafts: true`)"
    );
    let d = route_fixture("pull_request.ready_for_review", |_| {});
    assert_eq!(outcome(&d), [("pr_processing", true)]);
    let d = route_fixture("pull_request.converted_to_draft", |_| {});
    assert_eq!(outcome(&d), []);
}

#[test]
fn bot_senders_are_held_back() {
    let d = route_fixture("pull_request.opened", |p| {
        p["sender"]["login"] = "dependabot[bot]".into();
        p["sender"]["type"] = "Bot".into();
    });
    assert_eq!(outcome(&d), [("pr_processing", false)]);
    assert_eq!(
        reason(&d, "pr_processing"),
        "sender `dependabot[bot]` is a bot; set `bots: true` on the trigger to start for bots"
    );
    let d = route_fixture("issues.opened", |p| {
        p["sender"]["type"] = "Bot".into();
    });
    assert_eq!(outcome(&d), [("bugfix", false), ("issue_triage", false)]);
}

#[test]
fn fork_pull_requests_start_waiting_for_approval() {
    let d = route_fixture("pull_request.opened", |p| {
        p["pull_request"]["head"]["repo"]["full_name"] = "mallory/Hello-World".into();
    });
    assert_eq!(outcome(&d), [("pr_processing", true)]);
    let pr = d.iter().find(|d| d.workflow == "pr_processing").unwrap();
    let wait = pr
        .approval
        .as_deref()
        .expect("a fork's run waits for approval");
    assert!(
        wait.contains("comes from the fork `mallory/Hello-World`"),
        "{wait}"
    );
    assert!(wait.contains("/approve"), "{wait}");
}

#[test]
fn untrusted_authors_wait_for_approval_and_collaborators_do_not() {
    for (association, waits) in [
        ("OWNER", false),
        ("MEMBER", false),
        ("COLLABORATOR", false),
        ("CONTRIBUTOR", true),
        ("FIRST_TIME_CONTRIBUTOR", true),
        ("NONE", true),
    ] {
        let d = route_fixture("pull_request.opened", |p| {
            p["pull_request"]["author_association"] = association.into();
        });
        let pr = d.iter().find(|d| d.workflow == "pr_processing").unwrap();
        assert!(pr.start, "{association}");
        assert_eq!(pr.approval.is_some(), waits, "{association}: {pr:?}");
    }
}

#[test]
fn a_hotfix_branch_selects_the_hotfix_workflows() {
    let d = route_fixture("pull_request.opened", |p| {
        p["pull_request"]["head"]["ref"] = "hotfix/login-500".into();
    });
    // The branch classifies the PR as a hotfix (the review's priority) and
    // starts the deployment workflow; the code-writing `hotfix` workflow
    // starts from issues only.
    assert_eq!(
        outcome(&d),
        [("hotfix_deployment", true), ("pr_processing", true)]
    );
    assert_eq!(
        d[0].classification.as_ref().unwrap().task_type,
        TaskType::Hotfix
    );
    assert_eq!(
        reason(&d, "hotfix_deployment"),
        "pull_request.opened on #2 (hotfix/login-500 -> master) matches `on.pull_request`; head \
branch matches hotfix/*"
    );
    assert!(
        d[0].classification.as_ref().unwrap().priority >= taskmaster::classify::Priority::High,
        "hotfixes are at least high priority"
    );
}

#[test]
fn conventional_commit_titles_select_the_task_workflow() {
    for (title, workflow) in [
        ("fix: handle empty README", "bugfix"),
        ("feat(api): paginate repositories", "feature"),
        ("refactor: split the store module", "refactor"),
    ] {
        // On a pull request the title classifies the review only.
        let d = route_fixture("pull_request.opened", |p| {
            p["pull_request"]["title"] = title.into();
        });
        assert_eq!(outcome(&d), [("pr_processing", true)], "{title}");
        assert_eq!(
            d[0].classification.as_ref().unwrap().task_type.to_string(),
            workflow,
            "{title}"
        );
        // On an issue it starts the task workflow.
        let d = route_fixture("issues.opened", |p| {
            p["issue"]["title"] = title.into();
            p["issue"]["labels"] = serde_json::json!([]);
        });
        assert!(outcome(&d).contains(&(workflow, true)), "{title}: {d:#?}");
        assert!(
            reason(&d, workflow).contains("conventional commit"),
            "{title}"
        );
    }
    // A feature branch starts feature_integration (a review), not feature.
    let d = route_fixture("pull_request.opened", |p| {
        p["pull_request"]["head"]["ref"] = "feature/dark-mode".into();
    });
    assert_eq!(
        outcome(&d),
        [("feature_integration", true), ("pr_processing", true)]
    );
}

/// Any GitHub user can open an issue: a stranger's issue starts its runs
/// waiting for `/approve`, and a `fix:`/`hotfix:` title (the author's
/// choice) does not select a task workflow; a label (triage rights) does.
#[test]
fn a_strangers_issue_waits_for_approval_and_its_title_selects_nothing() {
    let stranger = |p: &mut Value, title: &str| {
        p["issue"]["title"] = title.into();
        p["issue"]["labels"] = serde_json::json!([]);
        p["issue"]["author_association"] = "NONE".into();
        p["issue"]["user"]["login"] = "mallory".into();
    };
    let d = route_fixture("issues.opened", |p| stranger(p, "hotfix: rewrite auth"));
    assert_eq!(outcome(&d), [("issue_triage", true)], "{d:#?}");
    let approval = d[0].approval.as_deref().expect("waits for approval");
    assert!(
        approval.contains("issue #1 is by @mallory (none), not an owner, member or collaborator"),
        "{approval}"
    );
    // The same title from a collaborator starts the hotfix at once.
    let d = route_fixture("issues.opened", |p| {
        stranger(p, "hotfix: rewrite auth");
        p["issue"]["author_association"] = "COLLABORATOR".into();
    });
    assert!(outcome(&d).contains(&("hotfix", true)), "{d:#?}");
    assert!(d.iter().all(|x| x.approval.is_none()), "{d:#?}");
    // A maintainer's `bug` label on the stranger's issue selects bugfix,
    // which still waits: the issue's text is the stranger's.
    let d = route_fixture("issues.labeled", |p| {
        stranger(p, "it crashes");
        p["issue"]["labels"] = serde_json::json!([{"name": "bug", "id": 1, "node_id": "L", "url": "", "color": "d73a4a", "default": true, "description": ""}]);
        p["label"] = serde_json::json!({"name": "bug", "id": 1, "node_id": "L", "url": "", "color": "d73a4a", "default": true, "description": ""});
    });
    let bugfix = d.iter().find(|x| x.workflow == "bugfix").expect("bugfix");
    assert!(bugfix.start && bugfix.approval.is_some(), "{d:#?}");
}

#[test]
fn a_trigger_may_let_anyones_issue_start_unasked() {
    let text = r#"
name: welcome
on: { issues: { untrusted: true } }
steps:
  hello: { agent: claude-code, prompt: "Welcome the author." }
"#;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("welcome.yml"), text).unwrap();
    let set = WorkflowSet::load_dir(dir.path(), DEFAULT_AGENTS).unwrap();
    let mut payload = fixture("issues.opened");
    payload["issue"]["author_association"] = "NONE".into();
    let event = Event::parse("issues", &serde_json::to_vec(&payload).unwrap()).unwrap();
    let d = route(&event, &set);
    assert_eq!(outcome(&d), [("welcome", true)]);
    assert!(d[0].approval.is_none(), "{d:#?}");
}

#[test]
fn issues_start_triage_and_the_task_workflow() {
    let d = route_fixture("issues.opened", |_| {});
    assert_eq!(outcome(&d), [("bugfix", true), ("issue_triage", true)]);
    assert_eq!(
        reason(&d, "issue_triage"),
        "issues.opened on #1 matches `on.issues`"
    );
    let d = route_fixture("issues.labeled", |_| {});
    assert_eq!(outcome(&d), [("bugfix", true), ("issue_triage", true)]);
    assert_eq!(
        reason(&d, "issue_triage"),
        "issues.labeled on #1 matches `on.issues` (label `bug` added)"
    );
    // No task label: triage only.
    let d = route_fixture("issues.opened", |p| {
        p["issue"]["labels"] = serde_json::json!([]);
    });
    assert_eq!(outcome(&d), [("issue_triage", true)]);
    for quiet in [
        "issues.edited",
        "issues.closed",
        "issues.assigned",
        "issues.locked",
    ] {
        if Path::new(env!("CARGO_MANIFEST_DIR"))
            .join(format!("tests/fixtures/webhooks/{quiet}.json"))
            .exists()
        {
            assert_eq!(outcome(&route_fixture(quiet, |_| {})), [], "{quiet}");
        }
    }
}

#[test]
fn run_comments_start_the_named_workflow() {
    assert_eq!(outcome(&route_fixture("issue_comment.created", |_| {})), []);
    let d = route_fixture("issue_comment.created", |p| {
        p["comment"]["body"] = "Thanks!\n/run triage".into();
    });
    assert_eq!(outcome(&d), [("issue_triage", true)]);
    assert_eq!(
        reason(&d, "issue_triage"),
        "@Codertocat commented `/run triage` on issue #1"
    );
    // `/run review` is for pull requests only.
    let d = route_fixture("issue_comment.created", |p| {
        p["comment"]["body"] = "/run review".into();
    });
    assert_eq!(outcome(&d), [("pr_processing", false)]);
    let d = route_fixture("issue_comment.created", |p| {
        p["comment"]["body"] = "/run review".into();
        p["issue"]["pull_request"] = serde_json::json!({"url": "https://api.github.com/x"});
    });
    assert_eq!(outcome(&d), [("pr_processing", true)]);
    // Quoted, edited, from a stranger, from a bot: never.
    let d = route_fixture("issue_comment.created", |p| {
        p["comment"]["body"] = "> /run triage".into();
    });
    assert_eq!(outcome(&d), []);
    let d = route_fixture("issue_comment.edited", |p| {
        p["comment"]["body"] = "/run triage".into();
    });
    assert_eq!(outcome(&d), [("issue_triage", false)]);
    let d = route_fixture("issue_comment.created", |p| {
        p["comment"]["body"] = "/run triage".into();
        p["comment"]["author_association"] = "NONE".into();
    });
    assert_eq!(outcome(&d), [("issue_triage", false)]);
    assert!(reason(&d, "issue_triage").contains("only owners, members and collaborators"));
    let d = route_fixture("issue_comment.created", |p| {
        p["comment"]["body"] = "/run triage".into();
        p["comment"]["user"]["type"] = "Bot".into();
    });
    assert_eq!(outcome(&d), [("issue_triage", false)]);
    let d = route_fixture("issue_comment.created", |p| {
        p["comment"]["body"] = "/run no_such_workflow".into();
    });
    assert_eq!(outcome(&d), []);
}

#[test]
fn other_events_start_nothing() {
    for name in [
        "check_run.rerequested",
        "check_run.requested_action",
        "check_suite.requested",
        "check_suite.rerequested",
        "installation.created",
        "installation_repositories.added",
        "ping",
        "push",
        "pull_request.closed",
    ] {
        assert_eq!(outcome(&route_fixture(name, |_| {})), [], "{name}");
    }
}
