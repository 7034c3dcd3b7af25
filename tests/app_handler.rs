//! The App's delivery handler in process, against the recording GitHub:
//! installation state, `.github/taskmaster.yml` (cache, overrides, errors
//! with line and column, invalidation by push), and dry run.

mod engine_support;

use std::sync::Arc;
use std::time::Duration;

use engine_support::{Act, Scripted, TestEngine, fast_config, workflows};
use serde_json::{Value, json};
use taskmaster::control::{AppHandler, AppHandlerConfig, AppIdentity};
use taskmaster::dispatch::{DeliveryHandler, Handled};
use taskmaster::engine::AgentMap;
use taskmaster::github::fake::RecordingGitHub;
use taskmaster::github::{GitHub, Permission, RepoName};
use taskmaster::outbox::{Outbox, OutboxConfig};
use taskmaster::repo_config::{self, RepoConfig};
use taskmaster::store::prelude::*;
use taskmaster::store::{
    Delivery, DeliveryState, EffectKind, EffectState, InstallationState, now_ms,
};

const REVIEW: &str = "name: review\non: { pull_request: { actions: [opened] } }\nsteps:\n  a: { agent: worker, prompt: hi }\n";
const TRIAGE: &str = "name: triage\non: { issues: { actions: [opened] } }\nsteps:\n  a: { agent: worker, prompt: hi }\n";

fn fixture(name: &str) -> Value {
    let path = format!(
        "{}/tests/fixtures/webhooks/{name}.json",
        env!("CARGO_MANIFEST_DIR")
    );
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

fn delivery(event: &str, id: &str, payload: &Value) -> Delivery {
    Delivery {
        id: 1,
        delivery_id: id.into(),
        event: event.into(),
        action: payload["action"].as_str().map(str::to_owned),
        hook_id: None,
        installation_id: payload["installation"]["id"]
            .as_i64()
            .map(taskmaster::ids::InstallationId),
        repository: payload["repository"]["full_name"]
            .as_str()
            .map(str::to_owned),
        sender_id: None,
        sender_login: None,
        payload: bytes::Bytes::from(serde_json::to_vec(payload).unwrap()),
        received_at: now_ms(),
        state: DeliveryState::Processing,
        attempts: 1,
        error: None,
    }
}

fn pr_opened() -> Value {
    let mut v = fixture("pull_request.opened");
    v["installation"] = json!({ "id": 42 });
    v
}

fn command(body: &str, login: &str, association: &str) -> Value {
    let mut v = fixture("issue_comment.created");
    v["installation"] = json!({ "id": 42 });
    v["comment"]["body"] = body.into();
    v["comment"]["user"] = json!({ "login": login, "id": 5, "type": "User" });
    v["comment"]["author_association"] = association.into();
    v
}

struct World {
    t: TestEngine,
    github: Arc<RecordingGitHub>,
    handler: AppHandler,
}

fn repo() -> RepoName {
    RepoName::parse("Codertocat/Hello-World").unwrap()
}

const FIX: &str = "name: fix\non: { issue_comment: { command: fix } }\nsteps:\n  a: { agent: worker, prompt: hi, changes: true }\n";

async fn world(github: RecordingGitHub) -> World {
    world_with(github, &[REVIEW, TRIAGE]).await
}

async fn world_with(github: RecordingGitHub, files: &[&str]) -> World {
    let set = workflows(files, &["worker", "other"]);
    let agent = Scripted::new("worker", Act::Ok(Duration::from_millis(1), "ok"));
    let other = Scripted::new("other", Act::Ok(Duration::from_millis(1), "ok"));
    let t = TestEngine::start(set, AgentMap::new().with(agent).with(other), fast_config()).await;
    let github = Arc::new(github);
    let handler = AppHandler::new(
        t.store.clone(),
        github.clone(),
        t.engine.clone(),
        AppHandlerConfig {
            identity: AppIdentity {
                app_id: Some(12345),
                slug: "taskmaster".into(),
            },
            repo_config_ttl: std::time::Duration::from_secs(60),
            permission_ttl: Duration::from_secs(60),
            effects_wake: None,
            max_runs_per_subject_per_hour: 0,
        },
    );
    World { t, github, handler }
}

fn started(h: &Handled) -> Vec<String> {
    match h {
        Handled::Start(runs) => runs.iter().map(|r| r.workflow.clone()).collect(),
        _ => Vec::new(),
    }
}

#[tokio::test]
async fn suspended_and_deleted_installations_are_ignored_until_unsuspended() {
    let w = world(RecordingGitHub::new()).await;
    let mut created = fixture("installation.created");
    created["installation"]["id"] = 42.into();
    let h = w
        .handler
        .handle(&delivery("installation", "i-1", &created))
        .await
        .unwrap();
    assert_eq!(h, Handled::Done);
    assert_eq!(
        w.t.store
            .installation_repositories(taskmaster::ids::InstallationId(42))
            .await
            .unwrap(),
        ["Codertocat/Hello-World"]
    );
    let mut added = fixture("installation_repositories.added");
    added["installation"]["id"] = 42.into();
    w.handler
        .handle(&delivery("installation_repositories", "i-2", &added))
        .await
        .unwrap();
    assert_eq!(
        w.t.store
            .installation_repositories(taskmaster::ids::InstallationId(42))
            .await
            .unwrap(),
        ["Codertocat/Hello-World", "Codertocat/Space"]
    );

    let mut suspend = fixture("installation.suspend");
    suspend["installation"]["id"] = 42.into();
    w.handler
        .handle(&delivery("installation", "i-3", &suspend))
        .await
        .unwrap();
    assert_eq!(
        w.t.store
            .installation_state(taskmaster::ids::InstallationId(42))
            .await
            .unwrap(),
        Some(InstallationState::Suspended)
    );
    let h = w
        .handler
        .handle(&delivery("pull_request", "pr-1", &pr_opened()))
        .await
        .unwrap();
    assert_eq!(
        h,
        Handled::Ignored("installation 42 is suspended".into()),
        "no run for a suspended installation"
    );

    let mut unsuspend = fixture("installation.unsuspend");
    unsuspend["installation"]["id"] = 42.into();
    w.handler
        .handle(&delivery("installation", "i-4", &unsuspend))
        .await
        .unwrap();
    let h = w
        .handler
        .handle(&delivery("pull_request", "pr-2", &pr_opened()))
        .await
        .unwrap();
    assert_eq!(started(&h), ["review"]);

    let mut deleted = fixture("installation.deleted");
    deleted["installation"]["id"] = 42.into();
    w.handler
        .handle(&delivery("installation", "i-5", &deleted))
        .await
        .unwrap();
    let h = w
        .handler
        .handle(&delivery("pull_request", "pr-3", &pr_opened()))
        .await
        .unwrap();
    assert_eq!(h, Handled::Ignored("installation 42 is deleted".into()));
}

#[tokio::test]
async fn a_repository_can_turn_a_workflow_off_and_a_push_refreshes_it() {
    let w = world(RecordingGitHub::new()).await;
    w.github.set_file(
        &repo(),
        repo_config::PATH,
        "workflows:\n  review: { enabled: false }\n",
    );
    let h = w
        .handler
        .handle(&delivery("pull_request", "pr-1", &pr_opened()))
        .await
        .unwrap();
    assert_eq!(
        h,
        Handled::Ignored("turned off by .github/taskmaster.yml: review".into())
    );

    // The file changes on GitHub; the cached copy is used until a push to
    // the default branch touches it.
    w.github
        .set_file(&repo(), repo_config::PATH, "workflows: {}\n");
    let h = w
        .handler
        .handle(&delivery("pull_request", "pr-2", &pr_opened()))
        .await
        .unwrap();
    assert!(matches!(h, Handled::Ignored(_)), "cached: {h:?}");

    let mut push = fixture("push");
    push["ref"] = "refs/heads/master".into();
    push["installation"] = json!({ "id": 42 });
    push["commits"] =
        json!([{ "added": [], "modified": [".github/taskmaster.yml"], "removed": [] }]);
    let h = w
        .handler
        .handle(&delivery("push", "push-1", &push))
        .await
        .unwrap();
    assert!(
        matches!(h, Handled::Ignored(ref why) if why.contains("cached copy was dropped")),
        "{h:?}"
    );
    let h = w
        .handler
        .handle(&delivery("pull_request", "pr-3", &pr_opened()))
        .await
        .unwrap();
    assert_eq!(started(&h), ["review"]);

    // A push elsewhere (a tag, another branch, another file) keeps the cache.
    let mut tag = fixture("push");
    tag["installation"] = json!({ "id": 42 });
    let h = w
        .handler
        .handle(&delivery("push", "push-2", &tag))
        .await
        .unwrap();
    assert_eq!(h, Handled::Ignored("push: nothing to do".into()));
    assert!(w.t.store.repo_config(&repo()).await.unwrap().is_some());
}

#[tokio::test]
async fn an_invalid_file_is_reported_with_its_line_and_the_defaults_apply() {
    let w = world(RecordingGitHub::new()).await;
    w.github.set_file(
        &repo(),
        repo_config::PATH,
        "commands:\n  retry: write\n  deploy: admin\n",
    );
    let h = w
        .handler
        .handle(&delivery("pull_request", "pr-1", &pr_opened()))
        .await
        .unwrap();
    assert_eq!(started(&h), ["review"], "the defaults apply");
    let effects = w
        .t
        .store
        .effects_for(
            "config:Codertocat/Hello-World:.github/taskmaster.yml:3:3: `deploy` is not a command (commands: retry, cancel, pause, resume, status, run, approve, fix, help)",
        )
        .await
        .unwrap();
    assert_eq!(effects.len(), 1, "one comment about the broken file");
    assert_eq!(effects[0].kind, EffectKind::Comment);
    assert_eq!(effects[0].target, 2);
    assert!(
        effects[0].body.contains(".github/taskmaster.yml:3:3"),
        "{}",
        effects[0].body
    );
}

#[tokio::test]
async fn per_repository_command_levels_are_enforced() {
    let w = world(RecordingGitHub::new()).await;
    w.github.set_permission("writer", Permission::Write);
    w.github
        .set_file(&repo(), repo_config::PATH, "commands:\n  cancel: admin\n");
    let h = w
        .handler
        .handle(&delivery(
            "issue_comment",
            "c-1",
            &command("/cancel", "writer", "MEMBER"),
        ))
        .await
        .unwrap();
    assert_eq!(h, Handled::Done);
    let effects = w.t.store.effects_for("c-1").await.unwrap();
    let bodies: Vec<&str> = effects.iter().map(|e| e.body.as_str()).collect();
    assert_eq!(bodies.len(), 2, "{bodies:?}");
    assert!(
        bodies[0].starts_with(
            "> /cancel\n\n@writer `/cancel` needs admin access to this repository; you have write."
        ),
        "{bodies:?}"
    );
    assert_eq!(bodies[1], "-1");

    // /help shows this repository's levels; no permission check needed.
    w.handler
        .handle(&delivery(
            "issue_comment",
            "c-2",
            &command("@taskmaster help", "writer", "MEMBER"),
        ))
        .await
        .unwrap();
    let effects = w.t.store.effects_for("c-2").await.unwrap();
    let reply = &effects
        .iter()
        .find(|e| e.kind == EffectKind::Comment)
        .unwrap()
        .body;
    assert!(
        reply.starts_with("> @taskmaster help\n\n@writer taskmaster understands"),
        "{reply}"
    );
    assert!(
        reply.contains(
            "| `/cancel` | cancel this pull request's active runs | admin access or higher |"
        ),
        "{reply}"
    );

    // An unknown command addressed to the app gets help; unaddressed, nothing.
    let h = w
        .handler
        .handle(&delivery(
            "issue_comment",
            "c-3",
            &command("/frobnicate", "writer", "MEMBER"),
        ))
        .await
        .unwrap();
    assert!(matches!(h, Handled::Ignored(_)), "{h:?}");
    w.handler
        .handle(&delivery(
            "issue_comment",
            "c-4",
            &command("@taskmaster frobnicate", "writer", "MEMBER"),
        ))
        .await
        .unwrap();
    let effects = w.t.store.effects_for("c-4").await.unwrap();
    assert!(
        effects[0]
            .body
            .contains("`frobnicate` is not a command taskmaster knows"),
        "{effects:?}"
    );
    assert!(
        effects[0].body.contains("| `/retry [step]` |"),
        "help follows"
    );
}

/// A comment holding hundreds of command lines acts on the first ten and
/// answers in one comment; one person cannot make the App flood a thread.
#[tokio::test]
async fn command_floods_are_capped_and_answered_once() {
    let w = world(RecordingGitHub::new()).await;
    w.github.set_permission("writer", Permission::Write);
    let flood = "/status\n".repeat(300);
    w.handler
        .handle(&delivery(
            "issue_comment",
            "flood-1",
            &command(&flood, "writer", "MEMBER"),
        ))
        .await
        .unwrap();
    let effects = w.t.store.effects_for("flood-1").await.unwrap();
    let comments: Vec<&str> = effects
        .iter()
        .filter(|e| e.kind == EffectKind::Comment)
        .map(|e| e.body.as_str())
        .collect();
    assert_eq!(comments.len(), 1, "one reply for the comment: {effects:?}");
    assert_eq!(
        comments[0].matches("> /status\n\n@writer").count(),
        11,
        "ten answers and one note"
    );
    assert!(
        comments[0].contains(
            "taskmaster reads at most 10 commands in one comment; this line and 289 more"
        ),
        "{}",
        comments[0]
    );
    let audited = w.t.store.audit_entries(None, 100).await.unwrap();
    assert_eq!(
        audited
            .iter()
            .filter(|a| a.action == "command.status")
            .count(),
        10
    );

    // Replies per user and conversation are rate-limited: the sixth
    // comment in the window gets its reaction, not a reply.
    for i in 0..7 {
        w.handler
            .handle(&delivery(
                "issue_comment",
                &format!("spam-{i}"),
                &command("@taskmaster frobnicate", "writer", "MEMBER"),
            ))
            .await
            .unwrap();
    }
    let mut replies = 0;
    for i in 0..7 {
        let effects = w.t.store.effects_for(&format!("spam-{i}")).await.unwrap();
        replies += effects
            .iter()
            .filter(|e| e.kind == EffectKind::Comment)
            .count();
        assert!(
            effects
                .iter()
                .any(|e| e.kind == EffectKind::Reaction && e.body == "-1"),
            "{effects:?}"
        );
    }
    // The flood's reply counted as the first of five.
    assert_eq!(replies, 4);
}

#[tokio::test]
async fn status_lists_the_runs_and_dry_run_records_instead_of_sending() {
    let w = world(RecordingGitHub::dry_run()).await;
    let mut issue = fixture("issues.opened");
    issue["installation"] = json!({ "id": 42 });
    let h = w
        .handler
        .handle(&delivery("issues", "iss-1", &issue))
        .await
        .unwrap();
    let Handled::Start(runs) = h else {
        panic!("{h:?}")
    };
    w.t.store.create_runs(&runs).await.unwrap();

    let number = issue["issue"]["number"].as_u64().unwrap();
    let mut status = command("/status", "Codertocat", "OWNER");
    status["issue"]["number"] = number.into();
    w.handler
        .handle(&delivery("issue_comment", "st-1", &status))
        .await
        .unwrap();
    let effects = w.t.store.effects_for("st-1").await.unwrap();
    let kinds: Vec<(EffectKind, &str)> = effects
        .iter()
        .map(|e| {
            (
                e.kind,
                if e.kind == EffectKind::Reaction {
                    e.body.as_str()
                } else {
                    ""
                },
            )
        })
        .collect();
    assert_eq!(
        kinds,
        [
            (EffectKind::Reaction, "eyes"),
            (EffectKind::Comment, ""),
            (EffectKind::Reaction, "+1")
        ]
    );
    let table = &effects[1].body;
    assert!(
        table.starts_with("> /status\n\n@Codertocat here are the runs"),
        "{table}"
    );
    assert!(table.contains("| `triage` |"), "{table}");

    // The outbox records them as dry run; nothing reaches GitHub.
    let github: Arc<dyn GitHub> = w.github.clone();
    let outbox = Outbox::new(w.t.store.clone(), github, OutboxConfig::default());
    outbox.pass().await.unwrap();
    let effects = w.t.store.effects_for("st-1").await.unwrap();
    assert!(
        effects.iter().all(|e| e.state == EffectState::DryRun),
        "{effects:?}"
    );
}

#[test]
fn config_errors_name_the_line_and_column() {
    let set = workflows(&[REVIEW], &["worker"]);
    let agents = ["worker".to_string()];
    let err = |text: &str| {
        repo_config::parse(text, &set, &agents)
            .unwrap_err()
            .to_string()
    };
    assert_eq!(
        err("workflows:\n  reveiw: { enabled: false }\n"),
        ".github/taskmaster.yml:2:3: no workflow named `reveiw` (known: review)"
    );
    assert_eq!(
        err("commands:\n  retry: sudo\n"),
        ".github/taskmaster.yml:2:10: `sudo` is not a permission level (use one of none, read, triage, write, maintain, admin)"
    );
    let unknown = err("workflow:\n  review: {}\n");
    assert!(
        unknown.starts_with(".github/taskmaster.yml:1:1: "),
        "{unknown}"
    );
    assert_eq!(
        err("workflows:\n  review:\n    agents: { worker: gpt }\n"),
        ".github/taskmaster.yml:3:23: no agent named `gpt` (agents: worker)"
    );
    assert_eq!(
        err("workflows:\n  review:\n    issues: { actions: [opened] }\n"),
        ".github/taskmaster.yml:3:13: workflow `review` has no issues trigger to change"
    );
    let glob = err("workflows:\n  review:\n    pull_request: { branches: [\"[oops\"] }\n");
    assert!(
        glob.starts_with(".github/taskmaster.yml:3:32: `[oops` is not a valid branch glob"),
        "{glob}"
    );
    assert_eq!(
        err("workflows:\n  review:\n    inputs: { test_comand: \"cargo test\" }\n"),
        ".github/taskmaster.yml:3:15: workflow `review` has no input `test_comand` (its inputs: none)"
    );
    assert_eq!(
        err("workflows:\n  review:\n    verdicts: { fail: red }\n"),
        ".github/taskmaster.yml:3:23: unknown variant `red`, expected one of failure, neutral, action_required"
    );
    let typo = err("budgets:\n  run: { dollars: 2 }\n");
    assert!(
        typo.starts_with(".github/taskmaster.yml:2:") && typo.contains("dollars"),
        "{typo}"
    );
    // A repository's budgets go to every workflow of its set (runs keep
    // them in their context; the engine tightens the service's with them).
    let tight =
        repo_config::parse("budgets:\n  run: { usd: 2, attempts: 5 }\n", &set, &agents).unwrap();
    assert_eq!(tight.budgets.run.usd, Some(2.0));
    let applied = tight.apply(&set).expect("budgets change the set");
    assert_eq!(applied.get("review").unwrap().budgets.run.attempts, Some(5));
    let ok = repo_config::parse(
        "commands: { RETRY: Admin }\nworkflows: { review: { enabled: true } }",
        &set,
        &agents,
    )
    .unwrap();
    assert_eq!(ok.commands.get("retry"), Some(&Permission::Admin));
    assert!(ok.workflow_enabled("review", false));
    assert_eq!(
        repo_config::parse("", &set, &agents).unwrap(),
        RepoConfig::default()
    );
}

#[tokio::test]
async fn a_repository_can_change_triggers_and_agents() {
    let w = world(RecordingGitHub::new()).await;
    // The fixture's PR targets `master`: a `main`-only repository skips it.
    w.github.set_file(
        &repo(),
        repo_config::PATH,
        "workflows:\n  review:\n    pull_request: { branches: [main] }\n",
    );
    let h = w
        .handler
        .handle(&delivery("pull_request", "pr-1", &pr_opened()))
        .await
        .unwrap();
    assert!(matches!(h, Handled::Ignored(_)), "{h:?}");

    w.t.store.forget_repo_config(&repo()).await.unwrap();
    w.github.set_file(
        &repo(),
        repo_config::PATH,
        "workflows:\n  review:\n    pull_request: { actions: [closed], branches: [master] }\n",
    );
    let h = w
        .handler
        .handle(&delivery("pull_request", "pr-2", &pr_opened()))
        .await
        .unwrap();
    assert!(
        matches!(h, Handled::Ignored(_)),
        "only `closed` starts it now: {h:?}"
    );

    w.t.store.forget_repo_config(&repo()).await.unwrap();
    w.github.set_file(
        &repo(),
        repo_config::PATH,
        "workflows:\n  review:\n    agents: { worker: other }\n",
    );
    let h = w
        .handler
        .handle(&delivery("pull_request", "pr-3", &pr_opened()))
        .await
        .unwrap();
    let Handled::Start(runs) = h else {
        panic!("{h:?}")
    };
    assert_eq!(runs[0].steps[0].agent, "other", "the repository's agent");

    // Verdict rules: the file's `verdicts:` for every workflow, then the
    // workflow's own; the run keeps them.
    w.t.store.forget_repo_config(&repo()).await.unwrap();
    w.github.set_file(
        &repo(),
        repo_config::PATH,
        "verdicts: { review_comments: false, min_severity: warning }\n\
         workflows:\n  review:\n    verdicts: { fail: neutral }\n",
    );
    let h = w
        .handler
        .handle(&delivery("pull_request", "pr-4", &pr_opened()))
        .await
        .unwrap();
    let Handled::Start(runs) = h else {
        panic!("{h:?}")
    };
    let rules = taskmaster::verdict::VerdictRules::of_run(&runs[0].context);
    assert_eq!(
        rules,
        taskmaster::verdict::VerdictRules {
            fail: taskmaster::verdict::FailConclusion::Neutral,
            review_comments: false,
            min_severity: taskmaster::verdict::Severity::Warning,
        }
    );
}

#[tokio::test]
async fn issues_and_pull_requests_become_classified_tasks_once() {
    use taskmaster::store::{TaskFilter, TaskSource};
    let w = world(RecordingGitHub::new()).await;
    let mut issue = fixture("issues.opened");
    issue["installation"] = json!({ "id": 42 });
    w.handler
        .handle(&delivery("issues", "t-1", &issue))
        .await
        .unwrap();
    let mut edited = issue.clone();
    edited["action"] = "edited".into();
    edited["issue"]["title"] = "Spelling error in the README file (edited)".into();
    w.handler
        .handle(&delivery("issues", "t-2", &edited))
        .await
        .unwrap();
    w.handler
        .handle(&delivery("pull_request", "t-3", &pr_opened()))
        .await
        .unwrap();

    let tasks =
        w.t.store
            .tasks(&TaskFilter {
                repository: Some("Codertocat/Hello-World".into()),
                limit: 10,
                ..TaskFilter::default()
            })
            .await
            .unwrap();
    assert_eq!(tasks.len(), 2, "one task per issue or PR: {tasks:#?}");
    let pr = &tasks[0];
    assert_eq!(pr.source, TaskSource::PullRequest);
    assert_eq!(pr.subject_number, Some(2));
    let issue_task = &tasks[1];
    assert_eq!(issue_task.source, TaskSource::Issue);
    assert_eq!(issue_task.subject_number, Some(1));
    assert_eq!(
        issue_task.title,
        "Spelling error in the README file (edited)"
    );
    assert_eq!(
        issue_task.classification["task_type"], "bugfix",
        "the `bug` label"
    );
    assert_eq!(issue_task.created_by, "github");
}

/// A stranger's pull request: its runs wait. `/approve` approves what the
/// approver saw (runs made before the comment, or those on the named
/// commit); `/run` by someone who may not approve makes a waiting run too.
#[tokio::test]
async fn approve_approves_what_was_seen_and_run_keeps_the_gate() {
    use taskmaster::store::{DeliveryState, EncodedPayload, NewDelivery, Store};
    let w = world(RecordingGitHub::new()).await;
    w.github.set_permission("maintainer", Permission::Write);
    w.github.set_permission("helper", Permission::Triage);
    w.github
        .set_file(&repo(), repo_config::PATH, "commands:\n  run: triage\n");
    let mut pr = pr_opened();
    pr["pull_request"]["author_association"] = "NONE".into();
    pr["pull_request"]["user"]["login"] = "stranger".into();
    let d = delivery("pull_request", "pr-stranger", &pr);
    w.t.store
        .insert_deliveries(&[NewDelivery {
            delivery_id: d.delivery_id.clone(),
            event: d.event.clone(),
            action: d.action.clone(),
            hook_id: None,
            installation_id: d.installation_id,
            repository: d.repository.clone(),
            sender_id: None,
            sender_login: None,
            payload: EncodedPayload::encode(d.payload.clone()),
            received_at: now_ms(),
            state: DeliveryState::Done,
        }])
        .await
        .unwrap();
    let Handled::Start(runs) = w.handler.handle(&d).await.unwrap() else {
        panic!("a run")
    };
    assert!(runs[0].needs_approval.is_some());
    let run = w.t.store.create_runs(&runs).await.unwrap()[0].run_id;
    let head: String = pr["pull_request"]["head"]["sha"]
        .as_str()
        .unwrap()
        .to_owned();

    // A comment on the PR, written an hour before the run was made.
    let on_pr = |body: &str, login: &str, written: chrono::DateTime<chrono::Utc>| {
        let mut c = command(body, login, "MEMBER");
        // Distinct users (permissions are cached by user id).
        c["comment"]["user"]["id"] = json!(login.len() as i64 * 1000);
        c["issue"]["number"] = pr["number"].clone();
        c["issue"]["pull_request"] = json!({ "url": "https://api.github.com/repos/x/y/pulls/2" });
        c["comment"]["created_at"] = written.to_rfc3339().into();
        c
    };
    let an_hour_ago = chrono::Utc::now() - chrono::Duration::hours(1);
    w.handler
        .handle(&delivery(
            "issue_comment",
            "ap-old",
            &on_pr("/approve", "maintainer", an_hour_ago),
        ))
        .await
        .unwrap();
    let snap = w.t.store.run(run).await.unwrap().unwrap();
    assert!(
        snap.run.waiting_approval,
        "made after the comment: not approved"
    );
    let effects = w.t.store.effects_for("ap-old").await.unwrap();
    let reply = effects
        .iter()
        .find(|e| e.kind == EffectKind::Comment)
        .expect("a reply");
    assert!(
        reply
            .body
            .contains(&format!("comment `/approve {}`", &head[..12])),
        "{}",
        reply.body
    );

    // `/run` from someone who may run but not approve: the run waits too.
    let Handled::Start(started) = w
        .handler
        .handle(&delivery(
            "issue_comment",
            "run-helper",
            &on_pr("/run review", "helper", chrono::Utc::now()),
        ))
        .await
        .unwrap()
    else {
        panic!("a run")
    };
    assert!(
        started[0]
            .needs_approval
            .as_deref()
            .is_some_and(|w| w.contains("@helper started it with `/run` and cannot approve it")),
        "{:?}",
        started[0].needs_approval
    );
    // From a maintainer: it starts.
    let Handled::Start(started) = w
        .handler
        .handle(&delivery(
            "issue_comment",
            "run-maint",
            &on_pr("/run review", "maintainer", chrono::Utc::now()),
        ))
        .await
        .unwrap()
    else {
        panic!("a run")
    };
    assert!(started[0].needs_approval.is_none());
    assert_eq!(
        started[0].head_sha.as_deref(),
        Some(head.as_str()),
        "the PR's head"
    );

    // Naming the commit approves it.
    w.handler
        .handle(&delivery(
            "issue_comment",
            "ap-sha",
            &on_pr(
                &format!("/approve {}", &head[..10]),
                "maintainer",
                an_hour_ago,
            ),
        ))
        .await
        .unwrap();
    let snap = w.t.store.run(run).await.unwrap().unwrap();
    assert!(!snap.run.waiting_approval);
    assert_eq!(snap.run.approved_by.as_deref(), Some("maintainer"));
}

/// `approve_label` in `.github/taskmaster.yml`: the label, added by someone
/// who may `/approve`, approves the waiting runs; anyone else's approves
/// nothing.
#[tokio::test]
async fn a_repository_named_label_approves_waiting_runs() {
    let w = world(RecordingGitHub::new()).await;
    w.github.set_permission("maintainer", Permission::Write);
    w.github.set_permission("helper", Permission::Triage);
    w.github
        .set_file(&repo(), repo_config::PATH, "approve_label: ok-to-run\n");
    let mut pr = pr_opened();
    pr["pull_request"]["author_association"] = "NONE".into();
    let Handled::Start(runs) = w
        .handler
        .handle(&delivery("pull_request", "pr-label", &pr))
        .await
        .unwrap()
    else {
        panic!("a run")
    };
    assert!(runs[0].needs_approval.is_some());
    let run = w.t.store.create_runs(&runs).await.unwrap()[0].run_id;
    let labeled = |login: &str, id: i64| {
        let mut v = pr.clone();
        v["action"] = "labeled".into();
        v["label"] = json!({"id": 1, "node_id": "L", "url": "", "name": "ok-to-run",
                            "color": "0e8a16", "default": false, "description": ""});
        v["sender"] = json!({"login": login, "id": id, "type": "User"});
        v
    };
    w.handler
        .handle(&delivery(
            "pull_request",
            "label-helper",
            &labeled("helper", 71),
        ))
        .await
        .unwrap();
    let snap = w.t.store.run(run).await.unwrap().unwrap();
    assert!(
        snap.run.waiting_approval,
        "a triager's label approves nothing"
    );
    w.handler
        .handle(&delivery(
            "pull_request",
            "label-maint",
            &labeled("maintainer", 72),
        ))
        .await
        .unwrap();
    let snap = w.t.store.run(run).await.unwrap().unwrap();
    assert!(!snap.run.waiting_approval);
    assert_eq!(snap.run.approved_by.as_deref(), Some("maintainer"));
    let audit = w.t.store.audit_entries(None, 50).await.unwrap();
    let outcomes: Vec<&str> = audit
        .iter()
        .filter(|a| a.action == "label.approve")
        .map(|a| a.outcome.as_str())
        .collect();
    assert_eq!(outcomes, ["ok", "refused"], "newest first");
}

/// `/fix` keeps the approval gate as `/run` does: on a stranger's issue, a
/// helper whose level lets them `/fix` but not `/approve` starts a run that
/// waits; a maintainer's starts at once.
#[tokio::test]
async fn fix_on_a_strangers_issue_waits_unless_the_asker_may_approve() {
    let w = world_with(RecordingGitHub::new(), &[REVIEW, TRIAGE, FIX]).await;
    w.github.set_permission("maintainer", Permission::Write);
    w.github.set_permission("helper", Permission::Triage);
    w.github
        .set_file(&repo(), repo_config::PATH, "commands:\n  fix: triage\n");
    let on_strangers_issue = |login: &str| {
        let mut c = command("/fix please", login, "MEMBER");
        c["comment"]["user"]["id"] = json!(login.len() as i64 * 1000);
        c["issue"]["author_association"] = "NONE".into();
        c["issue"]["user"]["login"] = "stranger".into();
        c
    };
    let Handled::Start(runs) = w
        .handler
        .handle(&delivery(
            "issue_comment",
            "fix-helper",
            &on_strangers_issue("helper"),
        ))
        .await
        .unwrap()
    else {
        panic!("a run")
    };
    assert_eq!(runs[0].workflow, "fix");
    assert!(
        runs[0]
            .needs_approval
            .as_deref()
            .is_some_and(|w| w.contains("@helper started it with `/fix` and cannot approve it")),
        "{:?}",
        runs[0].needs_approval
    );
    let Handled::Start(runs) = w
        .handler
        .handle(&delivery(
            "issue_comment",
            "fix-maint",
            &on_strangers_issue("maintainer"),
        ))
        .await
        .unwrap()
    else {
        panic!("a run")
    };
    assert!(
        runs[0].needs_approval.is_none(),
        "{:?}",
        runs[0].needs_approval
    );
}
