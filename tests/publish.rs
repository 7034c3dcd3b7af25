//! Bringing the work back: a run's change becomes one commit, one branch and
//! one pull request on GitHub — or a review of suggestions on a fork's pull
//! request — through the real GitHub client against the stateful fake
//! GitHub (`support::fake_github`), whose Git Data is real git in the
//! repositories that `git http-backend` serves the workspaces from. Each test
//! ends by checking the full set of writes GitHub received.

mod engine_support;
mod support;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use taskmaster::store::RunId;

use async_trait::async_trait;
use engine_support::{TestEngine, fast_config, workflows};
use secrecy::SecretString;
use serde_json::{Value, json};
use support::fake_github::FakeGitHub;
use support::git_server::{GitServer, RepoBuilder};
use taskmaster::agent::command::{CommandAgent, CommandSettings};
use taskmaster::agent::{Agent, AgentKind, AttemptOutcome, AttemptRequest, Health, Output, Usage};
use taskmaster::engine::{AgentMap, EngineConfig};
use taskmaster::github::{GitHub, GitHubClient, GitHubSettings, RetryPolicy};
use taskmaster::outbox::{Outbox, OutboxConfig};
use taskmaster::store::prelude::*;
use taskmaster::store::{ChangeState, PublishTarget, RunState, StepState};
use taskmaster::workspace::{TokenSource, WorkspaceError, WorkspaceSettings, Workspaces};

const PRIVATE_KEY: &str = include_str!("fixtures/github/app-key.pem");
const REPO: &str = "acme/widgets";
const REPO_ID: i64 = 8101;
const PUBLIC_URL: &str = "https://taskmaster.example";

struct AnyToken;

#[async_trait]
impl TokenSource for AnyToken {
    async fn read_token(
        &self,
        _installation: Option<taskmaster::ids::InstallationId>,
        _full_name: &str,
    ) -> Result<Option<SecretString>, WorkspaceError> {
        Ok(Some(SecretString::from(
            "ghs_readOnlyTestToken0123456789abcdef",
        )))
    }
}

/// An agent that edits its workspace with `edit` and answers `answer`.
struct Editor {
    edit: Box<dyn Fn(&Path) + Send + Sync>,
    answer: String,
}

impl std::fmt::Debug for Editor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Editor")
    }
}

#[async_trait]
impl Agent for Editor {
    fn name(&self) -> &str {
        "editor"
    }
    fn kind(&self) -> AgentKind {
        AgentKind::Cli
    }
    async fn run(&self, attempt: AttemptRequest) -> AttemptOutcome {
        let dir = attempt.workdir.clone().expect("a workspace");
        (self.edit)(&dir);
        AttemptOutcome {
            failure: None,
            output: Output::from_text(&self.answer, &Default::default(), 10_000),
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

fn editor(answer: &str, edit: impl Fn(&Path) + Send + Sync + 'static) -> Arc<Editor> {
    Arc::new(Editor {
        edit: Box::new(edit),
        answer: answer.into(),
    })
}

fn write(dir: &Path, path: &str, content: &str) {
    let full = dir.join(path);
    std::fs::create_dir_all(full.parent().unwrap()).unwrap();
    std::fs::write(full, content).unwrap();
}

fn command_agent() -> Arc<CommandAgent> {
    Arc::new(CommandAgent::new(CommandSettings::new("command")))
}

/// A git server with `acme/widgets` (main, a same-repository PR #1 on
/// `feature`, a fork's PR #2), the fake GitHub over its repositories, and
/// the real client pointed at the fake.
struct World {
    git: GitServer,
    fake: FakeGitHub,
    github: Arc<dyn GitHub>,
    repo: RepoBuilder,
    base: String,
    pr1: String,
    fork: String,
    _data: tempfile::TempDir,
    workspaces: Arc<Workspaces>,
}

async fn world() -> World {
    let git = GitServer::start(None).await;
    let repo = git.create_repo(REPO);
    let base = repo.commit(
        &[
            ("README.md", "hello\n"),
            ("CLAUDE.md", "Base rules.\n"),
            ("src/lib.rs", "fn one() {}\nfn two() {}\nfn three() {}\n"),
        ],
        "base",
    );
    repo.push(&base, "refs/heads/main");
    let pr1 = repo.commit(
        &[(
            "src/lib.rs",
            "fn one() {}\nfn two_changed() {}\nfn three() {}\n",
        )],
        "pr change",
    );
    repo.push(&pr1, "refs/heads/feature");
    repo.push(&pr1, "refs/pull/1/head");
    repo.checkout(&base);
    let fork = repo.commit(&[("fork.txt", "from a fork\n")], "fork change");
    repo.push(&fork, "refs/pull/2/head");
    let fake = FakeGitHub::start(git.root()).await;
    fake.add_issue(REPO, 7);
    fake.add_pull_request(REPO, 1, "feature", &pr1, "main", &base, REPO);
    fake.add_pull_request(REPO, 2, "patch-1", &fork, "main", &base, "stranger/widgets");
    let url = fake.url.clone();
    let settings = GitHubSettings::from_lookup(move |name| match name {
        "GITHUB_APP_ID" => Some("12345".into()),
        "GITHUB_PRIVATE_KEY" => Some(PRIVATE_KEY.into()),
        "GITHUB_API_URL" => Some(url.clone()),
        _ => None,
    })
    .unwrap();
    let github: Arc<dyn GitHub> = Arc::new(
        GitHubClient::new(&settings, RetryPolicy::scaled(0.001))
            .unwrap()
            .with_bot_login(support::fake_github::BOT_LOGIN),
    );
    let data = tempfile::tempdir().unwrap();
    let mut s = WorkspaceSettings::new(data.path());
    s.git_url = git.base_url.clone();
    s.min_free_bytes = 0;
    let workspaces = Arc::new(Workspaces::new(s, Arc::new(AnyToken)).unwrap());
    World {
        git,
        fake,
        github,
        repo,
        base,
        pr1,
        fork,
        _data: data,
        workspaces,
    }
}

impl World {
    fn config(&self) -> EngineConfig {
        EngineConfig {
            workspaces: Some(self.workspaces.clone()),
            ..fast_config()
        }
    }

    fn outbox(&self, store: Arc<dyn RunStore>) -> Outbox {
        Outbox::new(
            store,
            self.github.clone(),
            OutboxConfig {
                public_url: Some(PUBLIC_URL.into()),
                retry_base: Duration::from_millis(20),
                retry_max: Duration::from_millis(200),
                min_interval: Duration::ZERO,
                ..OutboxConfig::default()
            },
        )
    }

    /// Every write GitHub received, as `METHOD path`, in order.
    fn write_lines(&self) -> Vec<String> {
        self.fake
            .writes()
            .iter()
            .map(|r| format!("{} {} {}", r.method, r.path, r.status))
            .collect()
    }
}

/// Runs outbox passes until the run's change is no longer pending.
async fn publish(outbox: &Outbox, store: &Arc<dyn RunStore>, run_id: i64) -> ChangeState {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        outbox.pass().await.unwrap();
        let change = store
            .run_change(RunId(run_id))
            .await
            .unwrap()
            .expect("a change");
        if change.state != ChangeState::Pending {
            // One more pass sends the report that shows it.
            outbox.pass().await.unwrap();
            return change.state;
        }
        assert!(
            Instant::now() < deadline,
            "run {run_id}: the change is still pending: {:?}",
            change.last_error
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn issue_payload(number: u64, title: &str) -> Vec<u8> {
    let mut d: Value = serde_json::from_slice(
        &std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/webhooks/issues.opened.json"
        ))
        .unwrap(),
    )
    .unwrap();
    d["issue"]["number"] = json!(number);
    d["issue"]["title"] = json!(title);
    d["issue"]["user"] = json!({"login": "alice", "id": 1001, "type": "User"});
    d["sender"] = json!({"login": "alice", "id": 1001, "type": "User"});
    d["repository"]["id"] = json!(REPO_ID);
    d["repository"]["full_name"] = json!(REPO);
    d["repository"]["name"] = json!("widgets");
    d["repository"]["default_branch"] = json!("main");
    d["installation"] = json!({"id": 42});
    serde_json::to_vec(&d).unwrap()
}

fn pr_payload(number: u64, head_ref: &str, head: &str, base: &str, head_repo: &str) -> Vec<u8> {
    let mut d: Value = serde_json::from_slice(&engine_support::pr_payload()).unwrap();
    d["number"] = json!(number);
    d["repository"]["id"] = json!(REPO_ID);
    d["repository"]["full_name"] = json!(REPO);
    d["repository"]["default_branch"] = json!("main");
    d["installation"] = json!({"id": 42});
    d["sender"] = json!({"login": "bob", "id": 2002, "type": "User"});
    let pr = &mut d["pull_request"];
    pr["number"] = json!(number);
    pr["head"]["sha"] = json!(head);
    pr["head"]["ref"] = json!(head_ref);
    pr["base"]["sha"] = json!(base);
    pr["base"]["ref"] = json!("main");
    pr["base"]["repo"]["full_name"] = json!(REPO);
    pr["head"]["repo"]["full_name"] = json!(head_repo);
    serde_json::to_vec(&d).unwrap()
}

async fn start(t: &TestEngine, workflow: &str, event: &str, payload: &[u8]) -> i64 {
    let delivery = format!("test-{}", uuid::Uuid::new_v4());
    (t.engine
        .start_run(workflow, event, payload, &delivery)
        .await
        .unwrap()
        .run_id)
        .0
}

fn output_of(snap: &taskmaster::store::RunSnapshot, step: &str) -> String {
    snap.step(step)
        .and_then(|s| s.error.clone().or(s.output.clone()))
        .unwrap_or_default()
}

const ISSUE_WORKFLOW: &str = r#"
name: fix
on: { issues: { actions: [opened] } }
steps:
  code:
    agent: editor
    changes: true
    prompt: "Fix issue {{ issue.number }}."
  describe:
    agent: command
    needs: code
    pull_request: true
    with: { run: [printf, "Add the agent's note\n\nThe agent wrote agent-note.txt."] }
"#;

fn find_claude() -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("claude"))
            .find(|p| p.is_file())
    })
}

#[tokio::test]
async fn an_issue_run_of_the_real_claude_cli_becomes_one_commit_one_draft_pr_and_a_comment() {
    use support::messages_api::{MessagesApi, Script};
    use taskmaster::agent::cli::{CliAgent, CliFlavor, CliSettings};
    let claude = find_claude().expect(
        "the Claude Code CLI is not installed: `npm install -g @anthropic-ai/claude-code` \
         (scripts/test.sh installs it)",
    );
    let api = MessagesApi::start(Script {
        file_path: "agent-note.txt".into(),
        content: "written by the agent\n".into(),
        answer: "I wrote agent-note.txt.".into(),
        structured: None,
    })
    .await;
    let w = world().await;
    let mut s = CliSettings::new("editor", CliFlavor::Claude);
    s.binary = claude;
    s.sandbox = true;
    for (k, v) in [
        ("ANTHROPIC_BASE_URL", api.base_url.as_str()),
        ("ANTHROPIC_API_KEY", "sk-ant-test-standin"),
        ("DISABLE_AUTOUPDATER", "1"),
        ("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1"),
    ] {
        s.env.insert(k.into(), v.into());
    }
    let set = workflows(
        &[&ISSUE_WORKFLOW.replace(
            "    changes: true\n",
            "    changes: true\n    with: { permission_mode: acceptEdits }\n",
        )],
        &["editor", "command"],
    );
    let agents = AgentMap::new()
        .with(Arc::new(CliAgent::new(s)))
        .with(command_agent());
    let t = TestEngine::start(set, agents, w.config()).await;
    let store: Arc<dyn RunStore> = t.store.clone();
    let run_id = start(&t, "fix", "issues", &issue_payload(7, "fix: add a note")).await;
    let snap = t.wait_run(run_id, Duration::from_secs(120)).await;
    assert_eq!(
        snap.run.state,
        RunState::Succeeded,
        "{}",
        output_of(&snap, "code")
    );
    // Claude Code reports its cost (from the stand-in's token counts): the
    // attempt keeps the CLI's figure, not an estimate.
    let attempts = store.attempts(RunId(run_id)).await.unwrap();
    let code = attempts.iter().find(|a| a.step == "code").unwrap();
    assert!(code.cost_usd.is_some(), "{code:?}");
    assert!(!code.cost_estimated, "{code:?}");
    let outbox = w.outbox(store.clone());
    assert_eq!(
        publish(&outbox, &store, run_id).await,
        ChangeState::Published
    );

    // One draft pull request from taskmaster/fix-7-<run> into main.
    let branch = format!("taskmaster/fix-7-{run_id}");
    let pulls = w.fake.pulls(REPO);
    let opened: Vec<&Value> = pulls
        .iter()
        .filter(|p| p["head"]["ref"] == json!(branch))
        .collect();
    assert_eq!(opened.len(), 1, "{pulls:#?}");
    let pr = opened[0];
    assert_eq!(pr["draft"], json!(true));
    assert_eq!(pr["base"]["ref"], json!("main"));
    assert_eq!(pr["title"], json!("Add the agent's note"));
    let body = pr["body"].as_str().unwrap();
    assert!(body.contains("The agent wrote agent-note.txt."), "{body}");
    assert!(body.contains("Closes #7"), "{body}");
    assert!(
        body.contains(&format!("{PUBLIC_URL}/runs/{run_id}")),
        "{body}"
    );
    assert!(body.contains("secrets"), "{body}");

    // One commit on the branch, on the SHA the run checked out, by the bot,
    // with the trailers; the file as the agent wrote it.
    let head = w.fake.branch_sha(REPO, &branch).expect("the branch");
    let commit = w.fake.commit_info(REPO, &head);
    assert_eq!(commit["parents"], json!([w.base]), "{commit:#}");
    let message = commit["message"].as_str().unwrap();
    assert!(message.starts_with("Add the agent's note\n"), "{message}");
    assert!(
        message.contains(&format!("Taskmaster-Run: {PUBLIC_URL}/runs/{run_id}")),
        "{message}"
    );
    assert!(
        message.contains("Co-authored-by: alice <1001+alice@users.noreply.github.com>"),
        "{message}"
    );
    assert!(
        commit["author"]["name"]
            .as_str()
            .unwrap()
            .ends_with("[bot]"),
        "{commit:#}"
    );
    assert_eq!(
        w.fake.file_at(REPO, &branch, "agent-note.txt").as_deref(),
        Some("written by the agent\n")
    );
    assert_eq!(
        w.fake.branch_sha(REPO, "main").as_deref(),
        Some(w.base.as_str())
    );

    // The issue: the run's sticky report and a comment linking the PR.
    let comments = w.fake.comments(REPO, 7);
    let linking: Vec<&Value> = comments
        .iter()
        .filter(|c| {
            c["body"]
                .as_str()
                .is_some_and(|b| b.contains(pr["html_url"].as_str().unwrap()))
        })
        .collect();
    assert_eq!(linking.len(), 2, "the link and the report: {comments:#?}");

    // The full set of writes, and the narrowed token for the code.
    let lines = w.write_lines();
    let count = |prefix: &str| lines.iter().filter(|l| l.starts_with(prefix)).count();
    assert_eq!(
        count("POST /repos/acme/widgets/git/blobs 201"),
        1,
        "{lines:#?}"
    );
    assert_eq!(
        count("POST /repos/acme/widgets/git/trees 201"),
        1,
        "{lines:#?}"
    );
    assert_eq!(
        count("POST /repos/acme/widgets/git/commits 201"),
        1,
        "{lines:#?}"
    );
    assert_eq!(
        count("POST /repos/acme/widgets/git/refs 201"),
        1,
        "{lines:#?}"
    );
    assert_eq!(count("POST /repos/acme/widgets/pulls 201"), 1, "{lines:#?}");
    assert_eq!(
        count("POST /repos/acme/widgets/issues/7/comments 201"),
        2,
        "{lines:#?}"
    );
    assert_eq!(
        lines.len(),
        7 + count("PATCH /repos/acme/widgets/issues/comments/"),
        "{lines:#?}"
    );
    for r in w.fake.writes() {
        if r.path.contains("/git/") || r.path.ends_with("/pulls") {
            let p = r.permissions.clone().expect("a narrowed token");
            assert_eq!(p.get("contents").map(String::as_str), Some("write"));
            assert!(!p.contains_key("workflows"), "{p:?}");
        }
    }
    assert!(w.fake.unhandled().is_empty(), "{:#?}", w.fake.unhandled());

    // Passes after that write nothing more.
    let before = w.fake.writes().len();
    outbox.pass().await.unwrap();
    outbox.pass().await.unwrap();
    assert_eq!(w.fake.writes().len(), before, "{:#?}", w.write_lines());
    // The API's view and the timeline say where it went.
    let change = store.run_change(RunId(run_id)).await.unwrap().unwrap();
    assert_eq!(
        change.publication.target,
        Some(PublishTarget::NewPullRequest)
    );
    let events = t.events(run_id).await;
    assert!(
        events
            .iter()
            .any(|e| e.kind == "changes" && e.detail.contains("1 file changed (+1 −0)")),
        "{events:#?}"
    );
    assert!(
        events
            .iter()
            .any(|e| e.kind == "published" && e.detail.contains("opened draft pull request")),
        "{events:#?}"
    );
    drop(w.git);
    t.stop().await;
}

#[tokio::test]
async fn drafts_refused_by_the_plan_open_a_normal_pull_request() {
    let w = world().await;
    w.fake.set_drafts_supported(REPO, false);
    let set = workflows(&[ISSUE_WORKFLOW], &["editor", "command"]);
    let agents = AgentMap::new()
        .with(editor("done", |d| write(d, "agent-note.txt", "note\n")))
        .with(command_agent());
    let t = TestEngine::start(set, agents, w.config()).await;
    let store: Arc<dyn RunStore> = t.store.clone();
    let run_id = start(&t, "fix", "issues", &issue_payload(7, "a note")).await;
    assert_eq!(
        t.wait_run(run_id, Duration::from_secs(60)).await.run.state,
        RunState::Succeeded
    );
    let outbox = w.outbox(store.clone());
    assert_eq!(
        publish(&outbox, &store, run_id).await,
        ChangeState::Published
    );
    let lines = w.write_lines();
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.starts_with("POST /repos/acme/widgets/pulls "))
            .cloned()
            .collect::<Vec<_>>(),
        vec![
            "POST /repos/acme/widgets/pulls 422".to_owned(),
            "POST /repos/acme/widgets/pulls 201".to_owned()
        ]
    );
    let pulls = w.fake.pulls(REPO);
    let ours: Vec<&Value> = pulls
        .iter()
        .filter(|p| {
            p["head"]["ref"]
                .as_str()
                .unwrap()
                .starts_with("taskmaster/")
        })
        .collect();
    assert_eq!(ours.len(), 1);
    assert_eq!(ours[0]["draft"], json!(false));
    t.stop().await;
}

const PR_WORKFLOW: &str = r#"
name: fixup
on: { pull_request: {} }
steps:
  code:
    agent: editor
    changes: true
    prompt: "Fix PR {{ pr.number }}."
"#;

#[tokio::test]
async fn a_same_repository_pr_gets_a_commit_on_its_head_and_a_moved_head_a_pr_against_it() {
    let w = world().await;
    let set = workflows(&[PR_WORKFLOW], &["editor"]);
    // Each run adds a line to the changelog (and fixes a name once).
    let agents = AgentMap::new().with(editor("fixed two", |d| {
        let lib = std::fs::read_to_string(d.join("src/lib.rs")).unwrap();
        write(d, "src/lib.rs", &lib.replace("two_changed", "two_fixed"));
        let log = std::fs::read_to_string(d.join("CHANGELOG.md")).unwrap_or_default();
        write(d, "CHANGELOG.md", &format!("{log}- fixed\n"));
    }));
    let t = TestEngine::start(set, agents, w.config()).await;
    let store: Arc<dyn RunStore> = t.store.clone();
    let outbox = w.outbox(store.clone());

    // 1. The head is where the run found it: the commit goes onto it.
    let run1 = start(
        &t,
        "fixup",
        "pull_request",
        &pr_payload(1, "feature", &w.pr1, &w.base, REPO),
    )
    .await;
    assert_eq!(
        t.wait_run(run1, Duration::from_secs(60)).await.run.state,
        RunState::Succeeded
    );
    assert_eq!(publish(&outbox, &store, run1).await, ChangeState::Published);
    let head = w.fake.branch_sha(REPO, "feature").unwrap();
    assert_ne!(head, w.pr1);
    assert_eq!(w.fake.commit_info(REPO, &head)["parents"], json!([w.pr1]));
    let lib = w.fake.file_at(REPO, "feature", "src/lib.rs").unwrap();
    assert!(lib.contains("two_fixed"), "{lib}");
    let change = store.run_change(RunId(run1)).await.unwrap().unwrap();
    assert_eq!(change.publication.target, Some(PublishTarget::HeadBranch));
    let ours = |w: &World| -> Vec<Value> {
        w.fake
            .pulls(REPO)
            .into_iter()
            .filter(|p| {
                p["head"]["ref"]
                    .as_str()
                    .unwrap()
                    .starts_with("taskmaster/")
            })
            .collect()
    };
    assert!(ours(&w).is_empty(), "no new pull request");

    // 2. Someone pushes to the head after the run checked it out: the
    //    update is refused as not a fast forward, and the change goes to a
    //    new branch and a pull request against the head instead.
    let run2 = start(
        &t,
        "fixup",
        "pull_request",
        &pr_payload(1, "feature", &head, &w.base, REPO),
    )
    .await;
    assert_eq!(
        t.wait_run(run2, Duration::from_secs(60)).await.run.state,
        RunState::Succeeded,
    );
    support::git_server::git(
        &w.repo.work,
        &["fetch", "-q", w.repo.bare.to_str().unwrap(), "feature"],
    );
    w.repo.checkout(&head);
    let pushed = w
        .repo
        .commit(&[("README.md", "hello from bob\n")], "bob's push");
    w.repo.push(&pushed, "refs/heads/feature");
    assert_eq!(publish(&outbox, &store, run2).await, ChangeState::Published);
    assert_eq!(
        w.fake.branch_sha(REPO, "feature").as_deref(),
        Some(pushed.as_str()),
        "bob's push is kept"
    );
    let change = store.run_change(RunId(run2)).await.unwrap().unwrap();
    assert_eq!(
        change.publication.target,
        Some(PublishTarget::PullRequestOnHead)
    );
    let pulls = ours(&w);
    assert_eq!(pulls.len(), 1, "{pulls:#?}");
    assert_eq!(pulls[0]["base"]["ref"], json!("feature"));
    assert_eq!(
        pulls[0]["head"]["ref"],
        json!(format!("taskmaster/fixup-1-{run2}"))
    );
    let new_head = pulls[0]["head"]["sha"].as_str().unwrap().to_owned();
    assert_eq!(
        w.fake.commit_info(REPO, &new_head)["parents"],
        json!([head])
    );
    // PR #1 hears of it.
    assert!(
        w.fake.comments(REPO, 1).iter().any(|c| c["body"]
            .as_str()
            .unwrap()
            .contains(&format!("pull request #{}", pulls[0]["number"]))),
        "{:#?}",
        w.fake.comments(REPO, 1)
    );
    let refused: Vec<String> = w
        .write_lines()
        .into_iter()
        .filter(|l| l.starts_with("PATCH /repos/acme/widgets/git/refs/heads/feature"))
        .collect();
    assert_eq!(
        refused,
        vec![
            "PATCH /repos/acme/widgets/git/refs/heads/feature 200".to_owned(),
            "PATCH /repos/acme/widgets/git/refs/heads/feature 422".to_owned()
        ]
    );
    assert!(w.fake.unhandled().is_empty(), "{:#?}", w.fake.unhandled());
    t.stop().await;
}

#[tokio::test]
async fn a_fork_pr_gets_a_review_of_suggestions_inside_its_hunks_and_no_push() {
    let w = world().await;
    let set = workflows(&[PR_WORKFLOW], &["editor"]);
    let agents = AgentMap::new().with(editor("improved", |d| {
        write(d, "fork.txt", "from a fork, improved\n");
        write(d, "README.md", "hello world\n");
    }));
    let t = TestEngine::start(set, agents, w.config()).await;
    let store: Arc<dyn RunStore> = t.store.clone();
    let run_id = start(
        &t,
        "fixup",
        "pull_request",
        &pr_payload(2, "patch-1", &w.fork, &w.base, "stranger/widgets"),
    )
    .await;
    assert_eq!(
        t.wait_run(run_id, Duration::from_secs(60)).await.run.state,
        RunState::Succeeded
    );
    let outbox = w.outbox(store.clone());
    assert_eq!(
        publish(&outbox, &store, run_id).await,
        ChangeState::Published
    );
    let reviews = w.fake.reviews(REPO, 2);
    assert_eq!(
        reviews.len(),
        1,
        "{:?}\n{:#?}",
        store
            .run_change(RunId(run_id))
            .await
            .unwrap()
            .unwrap()
            .publication,
        w.write_lines()
    );
    let review = &reviews[0];
    assert_eq!(review["event"], json!("COMMENT"));
    let comments = review["comments"].as_array().unwrap();
    assert_eq!(
        comments.len(),
        1,
        "only the line inside the PR's hunks: {review:#}"
    );
    assert_eq!(comments[0]["path"], json!("fork.txt"));
    assert_eq!(comments[0]["line"], json!(1));
    assert_eq!(
        comments[0]["body"],
        json!("```suggestion\nfrom a fork, improved\n```")
    );
    assert!(
        review["body"]
            .as_str()
            .unwrap()
            .contains("1 part of the change falls outside"),
        "{review:#}"
    );
    // Never a push: no Git Data, no ref, no pull request.
    let lines = w.write_lines();
    assert!(
        lines
            .iter()
            .all(|l| !l.contains("/git/") && !l.starts_with("POST /repos/acme/widgets/pulls ")),
        "{lines:#?}"
    );
    // The whole patch is in the check run's text.
    let runs = w.fake.check_runs(REPO);
    let text = runs
        .iter()
        .filter_map(|c| c["output"]["text"].as_str())
        .collect::<Vec<_>>()
        .join("\n");
    assert!(text.contains("+hello world"), "{runs:#?}");
    // Reports and the review only: nothing else written.
    assert!(
        lines.iter().all(|l| l.contains("/check-runs")
            || l.contains("/issues/2/comments")
            || l.contains("/issues/comments/")
            || l.contains("/pulls/2/reviews")),
        "{lines:#?}"
    );
    t.stop().await;
}

#[tokio::test]
async fn refused_changes_say_why_and_write_nothing_to_github() {
    let w = world().await;
    let token = format!("ghs_{}", "A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8");
    let cases: Vec<(&str, Arc<Editor>, &str)> = vec![
        (
            "workflow",
            editor("ci", |d| write(d, ".github/workflows/ci.yml", "on: push\n")),
            "allow_workflow_changes",
        ),
        (
            "secret",
            {
                let token = token.clone();
                editor("config", move |d| {
                    write(d, "config.py", &format!("TOKEN = \"{token}\"\n"))
                })
            },
            "line 1 of `config.py` adds what looks like a secret (github-token)",
        ),
        (
            "symlink",
            editor("link", |d| {
                std::os::unix::fs::symlink("/etc/passwd", d.join("passwd")).unwrap()
            }),
            "`passwd` is a symlink to `/etc/passwd`, outside the repository",
        ),
    ];
    for (name, agent, why) in cases {
        let set = workflows(&[ISSUE_WORKFLOW], &["editor", "command"]);
        let agents = AgentMap::new().with(agent).with(command_agent());
        let t = TestEngine::start(set, agents, w.config()).await;
        let store: Arc<dyn RunStore> = t.store.clone();
        let run_id = start(&t, "fix", "issues", &issue_payload(7, name)).await;
        let snap = t.wait_run(run_id, Duration::from_secs(60)).await;
        assert_eq!(snap.run.state, RunState::Failed, "{name}");
        let code = snap.step("code").unwrap();
        assert_eq!(code.state, StepState::Failed, "{name}");
        let error = code.error.clone().unwrap_or_default();
        assert!(error.contains(why), "{name}: {error}");
        let change = store.run_change(RunId(run_id)).await.unwrap().unwrap();
        assert_eq!(change.state, ChangeState::Refused, "{name}");
        let outbox = w.outbox(store.clone());
        outbox.pass().await.unwrap();
        outbox.pass().await.unwrap();
        // The issue's report says why; no Git Data, no branch, no PR.
        let lines = w.write_lines();
        assert!(
            lines.iter().all(
                |l| l.starts_with("POST /repos/acme/widgets/issues/7/comments")
                    || l.starts_with("PATCH /repos/acme/widgets/issues/comments/")
            ),
            "{name}: {lines:#?}"
        );
        let reported = w
            .fake
            .comments(REPO, 7)
            .iter()
            .any(|c| c["body"].as_str().unwrap().contains("Change refused"));
        assert!(reported, "{name}: {:#?}", w.fake.comments(REPO, 7));
        // The token is in no report.
        assert!(
            w.fake
                .comments(REPO, 7)
                .iter()
                .all(|c| !c["body"].as_str().unwrap().contains(&token)),
            "{name}"
        );
        t.stop().await;
    }
}

/// A workflow that allows workflow changes still needs the App's
/// `workflows` permission: without it the change is not sent and the run
/// says why; with it, the commit is made with `workflows: write` too.
#[tokio::test]
async fn workflow_files_need_the_workflow_to_allow_them_and_the_app_to_hold_the_permission() {
    let w = world().await;
    let allowing =
        ISSUE_WORKFLOW.replace("name: fix\n", "name: fix\nallow_workflow_changes: true\n");
    let set = workflows(&[&allowing], &["editor", "command"]);
    let agents = AgentMap::new()
        .with(editor("ci", |d| {
            write(d, ".github/workflows/ci.yml", "on: push\n")
        }))
        .with(command_agent());
    let t = TestEngine::start(set, agents, w.config()).await;
    let store: Arc<dyn RunStore> = t.store.clone();
    let outbox = w.outbox(store.clone());
    // Not granted: refused before any write, with what to do.
    let run1 = start(&t, "fix", "issues", &issue_payload(7, "ci one")).await;
    assert_eq!(
        t.wait_run(run1, Duration::from_secs(60)).await.run.state,
        RunState::Succeeded
    );
    assert_eq!(publish(&outbox, &store, run1).await, ChangeState::Failed);
    let change = store.run_change(RunId(run1)).await.unwrap().unwrap();
    let why = change.last_error.unwrap_or_default();
    assert!(why.contains("`workflows` permission"), "{why}");
    assert!(
        w.write_lines()
            .iter()
            .all(|l| !l.contains("/git/") && !l.contains("/pulls")),
        "{:#?}",
        w.write_lines()
    );
    assert!(
        w.fake
            .comments(REPO, 7)
            .iter()
            .any(|c| c["body"].as_str().unwrap().contains("could not be sent")),
        "the report says so: {:#?}",
        w.fake.comments(REPO, 7)
    );
    // Granted: committed with a token that carries workflows: write.
    w.fake.grant("workflows", "write");
    let run2 = start(&t, "fix", "issues", &issue_payload(7, "ci two")).await;
    assert_eq!(
        t.wait_run(run2, Duration::from_secs(60)).await.run.state,
        RunState::Succeeded
    );
    assert_eq!(publish(&outbox, &store, run2).await, ChangeState::Published);
    let refs: Vec<_> = w
        .fake
        .writes()
        .into_iter()
        .filter(|r| r.path.ends_with("/git/refs"))
        .collect();
    assert_eq!(refs.len(), 1, "{:#?}", w.write_lines());
    let p = refs[0].permissions.clone().unwrap();
    assert_eq!(p.get("workflows").map(String::as_str), Some("write"));
    assert_eq!(refs[0].status, 201);
    t.stop().await;
}

/// An agent that opened its own pull request (Codegen does): it is
/// linked from the issue, and taskmaster opens none and writes no code.
#[tokio::test]
async fn pull_requests_the_agent_opened_itself_are_linked_not_opened_again() {
    #[derive(Debug)]
    struct OpensItsOwn;
    #[async_trait]
    impl Agent for OpensItsOwn {
        fn name(&self) -> &str {
            "editor"
        }
        fn kind(&self) -> AgentKind {
            AgentKind::Codegen
        }
        async fn run(&self, _attempt: AttemptRequest) -> AttemptOutcome {
            AttemptOutcome {
                failure: None,
                output: Output::from_text("Opened a PR.", &Default::default(), 1000),
                duration: Duration::from_millis(1),
                usage: Usage::default(),
                retry_after: None,
                web_url: None,
                pull_requests: vec!["https://github.com/acme/widgets/pull/55".into()],
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
    let w = world().await;
    let set = workflows(&[ISSUE_WORKFLOW], &["editor", "command"]);
    let agents = AgentMap::new()
        .with(Arc::new(OpensItsOwn))
        .with(command_agent());
    let t = TestEngine::start(set, agents, w.config()).await;
    let store: Arc<dyn RunStore> = t.store.clone();
    let run_id = start(&t, "fix", "issues", &issue_payload(7, "codegen")).await;
    let snap = t.wait_run(run_id, Duration::from_secs(60)).await;
    assert_eq!(
        snap.run.state,
        RunState::Succeeded,
        "{} / {}",
        output_of(&snap, "code"),
        output_of(&snap, "describe")
    );
    let outbox = w.outbox(store.clone());
    assert_eq!(
        publish(&outbox, &store, run_id).await,
        ChangeState::Published
    );
    let change = store.run_change(RunId(run_id)).await.unwrap().unwrap();
    assert_eq!(change.publication.target, Some(PublishTarget::Linked));
    assert!(w.fake.pulls(REPO).iter().all(|p| p["number"] != json!(100)));
    let lines = w.write_lines();
    assert!(
        lines
            .iter()
            .all(|l| !l.contains("/git/") && !l.contains("/pulls")),
        "{lines:#?}"
    );
    assert!(
        w.fake.comments(REPO, 7).iter().any(|c| c["body"]
            .as_str()
            .unwrap()
            .contains("- https://github.com/acme/widgets/pull/55")),
        "{:#?}",
        w.fake.comments(REPO, 7)
    );
    t.stop().await;
}

/// A kill at each write of the loop: the publisher is dropped while GitHub
/// holds the request, GitHub then completes it (nobody reads the answer),
/// and a new publisher finishes the job: one branch, one commit on it, one
/// pull request, one linking comment.
#[tokio::test]
async fn a_kill_at_any_write_leaves_one_branch_one_commit_and_one_pr() {
    for (method, suffix) in [
        ("POST", "/git/blobs"),
        ("POST", "/git/trees"),
        ("POST", "/git/commits"),
        ("POST", "/git/refs"),
        ("POST", "/pulls"),
        ("POST", "/issues/7/comments"),
    ] {
        let w = world().await;
        let set = workflows(&[ISSUE_WORKFLOW], &["editor", "command"]);
        let agents = AgentMap::new()
            .with(editor("done", |d| {
                write(d, "agent-note.txt", "note\n");
                write(d, "src/new.rs", "pub fn new() {}\n");
            }))
            .with(command_agent());
        let t = TestEngine::start(set, agents, w.config()).await;
        let store: Arc<dyn RunStore> = t.store.clone();
        let run_id = start(&t, "fix", "issues", &issue_payload(7, "kill")).await;
        let snap = t.wait_run(run_id, Duration::from_secs(60)).await;
        assert_eq!(
            snap.run.state,
            RunState::Succeeded,
            "{method} {suffix}: {} / {}",
            output_of(&snap, "code"),
            output_of(&snap, "describe")
        );
        let hold = w.fake.hold(method, suffix);
        let first = w.outbox(store.clone());
        let killed = tokio::spawn(async move {
            let _ = first.pass().await;
        });
        tokio::time::timeout(Duration::from_secs(30), hold.arrived())
            .await
            .unwrap_or_else(|_| panic!("{method} {suffix} never arrived"));
        killed.abort();
        let _ = killed.await;
        hold.release();
        // A new process: a new client and outbox on the same database.
        let w2_github = w.github.clone();
        let _ = w2_github;
        let outbox = w.outbox(store.clone());
        assert_eq!(
            publish(&outbox, &store, run_id).await,
            ChangeState::Published,
            "{method} {suffix}"
        );
        let branch = format!("taskmaster/fix-7-{run_id}");
        let head = w.fake.branch_sha(REPO, &branch).expect("the branch");
        assert_eq!(
            w.fake.commit_info(REPO, &head)["parents"],
            json!([w.base]),
            "{method} {suffix}: one commit on the base"
        );
        assert_eq!(
            w.fake.file_at(REPO, &branch, "src/new.rs").as_deref(),
            Some("pub fn new() {}\n")
        );
        let pulls: Vec<Value> = w
            .fake
            .pulls(REPO)
            .into_iter()
            .filter(|p| {
                p["head"]["ref"]
                    .as_str()
                    .unwrap()
                    .starts_with("taskmaster/")
            })
            .collect();
        assert_eq!(pulls.len(), 1, "{method} {suffix}: {pulls:#?}");
        let lines = w.write_lines();
        let refs = lines
            .iter()
            .filter(|l| l.starts_with("POST /repos/acme/widgets/git/refs 201"))
            .count();
        assert_eq!(refs, 1, "{method} {suffix}: {lines:#?}");
        let links = w
            .fake
            .comments(REPO, 7)
            .iter()
            .filter(|c| {
                c["body"]
                    .as_str()
                    .unwrap()
                    .starts_with(&format!("<!-- taskmaster:pull-request run={run_id} -->"))
            })
            .count();
        assert_eq!(links, 1, "{method} {suffix}");
        t.stop().await;
    }
}

/// A review's findings are fitted to the checkout it read: a path that is
/// not there is dropped (GitHub refuses annotations on it) and said so,
/// lines past a file's end are clamped.
#[tokio::test]
async fn findings_are_fitted_to_the_checked_out_commit() {
    let w = world().await;
    let set = workflows(
        &[r#"
name: review
on: { pull_request: {} }
steps:
  review: { agent: editor, validation: code_review, prompt: "Review." }
"#],
        &["editor"],
    );
    let answer = r#"Done.
```json
{"verdict":"fail","summary":"Two things.","findings":[
 {"path":"src/lib.rs","start_line":2,"end_line":90,"severity":"failure","title":"Long","message":"Past the end."},
 {"path":"src/imagined.rs","start_line":1,"end_line":1,"severity":"warning","title":"Ghost","message":"Not there."}]}
```"#;
    let agents = AgentMap::new().with(editor(answer, |_| {}));
    let t = TestEngine::start(set, agents, w.config()).await;
    let run_id = start(
        &t,
        "review",
        "pull_request",
        &pr_payload(1, "feature", &w.pr1, &w.base, REPO),
    )
    .await;
    let snap = t.wait_run(run_id, Duration::from_secs(60)).await;
    let output = snap.step("review").unwrap().output.clone().unwrap();
    let report = taskmaster::verdict::parse(&output).unwrap();
    assert_eq!(report.findings.len(), 1, "{output}");
    assert_eq!(
        (report.findings[0].start_line, report.findings[0].end_line),
        (2, 3),
        "src/lib.rs has three lines"
    );
    assert!(
        report.summary.contains("`src/imagined.rs`"),
        "{}",
        report.summary
    );
    t.stop().await;
}

/// A real `pytest` run in the workspace writes JUnit XML; the step's
/// `reports: [junit: …]` turns its one failing test into a `failure`
/// finding on the failing assertion's line, and the step's verdict into
/// `fail` (the command exited non-zero).
#[tokio::test]
async fn a_failing_pytest_run_becomes_a_finding_on_the_failing_line() {
    let w = world().await;
    w.repo.checkout(&w.base);
    let with_tests = w.repo.commit(
        &[
            ("calc.py", "def add(a, b):\n    return a - b\n"),
            (
                "test_calc.py",
                "from calc import add\n\n\ndef test_zero():\n    assert add(0, 0) == 0\n\n\ndef test_add():\n    assert add(2, 2) == 4\n",
            ),
        ],
        "tests",
    );
    w.repo.push(&with_tests, "refs/heads/main");
    let set = workflows(
        &[r#"
name: tests
on: { issues: { actions: [opened] } }
steps:
  test:
    agent: command
    validation: tests
    reports: [junit: "reports/*.xml"]
    with: { run: [python3, -m, pytest, -q, -p, no:cacheprovider, --junitxml=reports/junit.xml] }
"#],
        &["command"],
    );
    let agents = AgentMap::new().with(command_agent());
    let t = TestEngine::start(set, agents, w.config()).await;
    let run_id = start(&t, "tests", "issues", &issue_payload(7, "tests")).await;
    let snap = t.wait_run(run_id, Duration::from_secs(120)).await;
    let step = snap.step("test").unwrap();
    assert_eq!(step.state, StepState::Failed, "{:?}", step.error);
    let output = step.output.clone().unwrap_or_default();
    let report = taskmaster::verdict::parse(&output).unwrap_or_else(|e| panic!("{e}: {output}"));
    assert_eq!(report.verdict, taskmaster::verdict::Verdict::Fail);
    assert!(
        report.summary.starts_with("2 tests in 1 report, 1 failed."),
        "{}",
        report.summary
    );
    assert_eq!(report.findings.len(), 1, "{report:#?}");
    let f = &report.findings[0];
    assert_eq!(
        (f.path.as_str(), f.start_line),
        ("test_calc.py", 9),
        "{f:#?}"
    );
    assert!(f.title.contains("test_add"), "{f:#?}");
    // The run's report carries it as an annotation.
    let mut r = taskmaster::outbox::build_report(&snap, None);
    r.annotate = true;
    let update = r.check_run_update();
    let annotations = update.output.as_ref().unwrap().annotations().to_vec();
    assert_eq!(annotations.len(), 1);
    assert_eq!(annotations[0].path, "test_calc.py");
    assert_eq!(annotations[0].start_line, 9);
    t.stop().await;
}

/// SARIF from a real linter: `ruff check --output-format sarif` on a tiny
/// project in the workspace; its results land on their lines, its errors
/// fail the verdict.
#[tokio::test]
async fn a_real_ruff_run_in_sarif_becomes_findings_on_its_lines() {
    let w = world().await;
    w.repo.checkout(&w.base);
    let lint = w.repo.commit(
        &[(
            "app.py",
            "import os\n\n\ndef total(xs):\n    return sum(xs) + missing\n",
        )],
        "lint me",
    );
    w.repo.push(&lint, "refs/heads/main");
    let set = workflows(
        &[r#"
name: lint
on: { issues: { actions: [opened] } }
steps:
  lint:
    agent: command
    validation: other
    reports: [sarif: "reports/*.sarif"]
    with: { run: [python3, -m, ruff, check, --no-cache, --select, F, --output-format, sarif, -o, reports/ruff.sarif, app.py] }
"#],
        &["command"],
    );
    let agents = AgentMap::new().with(command_agent());
    let t = TestEngine::start(set, agents, w.config()).await;
    let run_id = start(&t, "lint", "issues", &issue_payload(7, "lint")).await;
    let snap = t.wait_run(run_id, Duration::from_secs(120)).await;
    let step = snap.step("lint").unwrap();
    // ruff exits 1 when it finds something.
    assert_eq!(step.state, StepState::Failed, "{:?}", step.error);
    let output = step.output.clone().unwrap_or_default();
    let report = taskmaster::verdict::parse(&output).unwrap_or_else(|e| panic!("{e}: {output}"));
    assert_eq!(report.verdict, taskmaster::verdict::Verdict::Fail);
    let mut places: Vec<(String, u64)> = report
        .findings
        .iter()
        .map(|f| (f.path.clone(), f.start_line))
        .collect();
    places.sort();
    // F401 `os` imported but unused (line 1), F821 undefined `missing` (line 5).
    assert_eq!(
        places,
        [("app.py".to_owned(), 1), ("app.py".to_owned(), 5)],
        "{report:#?}"
    );
    assert!(
        report
            .findings
            .iter()
            .any(|f| f.message.contains("missing")),
        "{report:#?}"
    );
    t.stop().await;
}

/// A review's findings on lines inside the PR's hunks are posted once as
/// a COMMENT review (with the suggestion); all of them are annotations.
#[tokio::test]
async fn findings_inside_the_prs_hunks_become_one_review_with_suggestions() {
    let w = world().await;
    let set = workflows(
        &[r#"
name: review
on: { pull_request: {} }
steps:
  review: { agent: editor, validation: code_review, prompt: "Review." }
"#],
        &["editor"],
    );
    let answer = r#"```json
{"verdict":"fail","summary":"A name.","findings":[
 {"path":"src/lib.rs","start_line":2,"end_line":2,"severity":"failure","title":"Name","message":"Say what it does.","suggestion":"fn two_named() {}"},
 {"path":"README.md","start_line":1,"end_line":1,"severity":"notice","title":"Old","message":"Not in this PR."}]}
```"#;
    let agents = AgentMap::new().with(editor(answer, |_| {}));
    let t = TestEngine::start(set, agents, w.config()).await;
    let store: Arc<dyn RunStore> = t.store.clone();
    let run_id = start(
        &t,
        "review",
        "pull_request",
        &pr_payload(1, "feature", &w.pr1, &w.base, REPO),
    )
    .await;
    t.wait_run(run_id, Duration::from_secs(60)).await;
    let outbox = w.outbox(store.clone());
    let deadline = Instant::now() + Duration::from_secs(30);
    while w.fake.reviews(REPO, 1).is_empty() {
        assert!(Instant::now() < deadline, "{:#?}", w.write_lines());
        outbox.pass().await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    outbox.pass().await.unwrap();
    let reviews = w.fake.reviews(REPO, 1);
    assert_eq!(reviews.len(), 1, "posted once");
    assert_eq!(reviews[0]["event"], json!("COMMENT"));
    let comments = reviews[0]["comments"].as_array().unwrap();
    assert_eq!(comments.len(), 1, "{comments:#?}");
    assert_eq!(comments[0]["path"], json!("src/lib.rs"));
    assert_eq!(comments[0]["line"], json!(2));
    let body = comments[0]["body"].as_str().unwrap();
    assert!(
        body.contains("```suggestion\nfn two_named() {}\n```"),
        "{body}"
    );
    // Both findings are annotations on the (red) check run.
    let runs = w.fake.check_runs(REPO);
    let run = runs.last().unwrap();
    assert_eq!(run["conclusion"], json!("failure"), "{run:#}");
    assert_eq!(
        run["annotations"].as_array().map(Vec::len),
        Some(2),
        "{run:#}"
    );

    // The next run of the workflow on this pull request (a re-run, or a
    // new push) replaces the review: the earlier one keeps no comments and
    // says what replaced it.
    let second = start(
        &t,
        "review",
        "pull_request",
        &pr_payload(1, "feature", &w.pr1, &w.base, REPO),
    )
    .await;
    t.wait_run(second, Duration::from_secs(60)).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while w.fake.reviews(REPO, 1).len() < 2
        || w.fake.reviews(REPO, 1)[0]["comments"]
            .as_array()
            .is_some_and(|c| !c.is_empty())
    {
        assert!(Instant::now() < deadline, "{:#?}", w.write_lines());
        outbox.pass().await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    outbox.pass().await.unwrap();
    let reviews = w.fake.reviews(REPO, 1);
    assert_eq!(reviews.len(), 2, "one review per run");
    let old = reviews[0]["body"].as_str().unwrap();
    assert!(
        old.contains(&format!("Superseded: taskmaster's `review` run {second}")),
        "{old}"
    );
    assert_eq!(reviews[1]["comments"].as_array().map(Vec::len), Some(1));
    let writes = w.write_lines();
    assert_eq!(
        writes.iter().filter(|l| l.starts_with("DELETE ")).count(),
        1,
        "{writes:#?}"
    );
    t.stop().await;
}

#[tokio::test]
async fn the_real_claude_clis_structured_verdict_decides_the_check_run() {
    use support::messages_api::{MessagesApi, Script};
    use taskmaster::agent::cli::{CliAgent, CliFlavor, CliSettings};
    let claude = find_claude().expect(
        "the Claude Code CLI is not installed: `npm install -g @anthropic-ai/claude-code` \
         (scripts/test.sh installs it)",
    );
    // The model answers through Claude Code's StructuredOutput tool, which
    // the CLI offers only with `--json-schema`.
    let api = MessagesApi::start(Script {
        file_path: String::new(),
        content: String::new(),
        answer: "Reviewed.".into(),
        structured: Some(json!({
            "verdict": "fail",
            "summary": "The renamed function breaks its callers.",
            "findings": [{"path": "src/lib.rs", "start_line": 2, "end_line": 2,
                "severity": "failure", "title": "Broken callers",
                "message": "`two` is still called elsewhere."}]
        })),
    })
    .await;
    let w = world().await;
    let mut s = CliSettings::new("reviewer", CliFlavor::Claude);
    s.binary = claude;
    s.sandbox = true;
    for (k, v) in [
        ("ANTHROPIC_BASE_URL", api.base_url.as_str()),
        ("ANTHROPIC_API_KEY", "sk-ant-test-standin"),
        ("DISABLE_AUTOUPDATER", "1"),
        ("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1"),
    ] {
        s.env.insert(k.into(), v.into());
    }
    let set = workflows(
        &[r#"
name: review
on: { pull_request: {} }
steps:
  review: { agent: reviewer, validation: code_review, prompt: "Review the change." }
  deploy:
    agent: command
    needs: review
    if: steps.review.verdict == 'pass'
    with: { run: [echo, deployed] }
"#],
        &["reviewer", "command"],
    );
    let agents = AgentMap::new()
        .with(Arc::new(CliAgent::new(s)))
        .with(command_agent());
    let t = TestEngine::start(set, agents, w.config()).await;
    let store: Arc<dyn RunStore> = t.store.clone();
    let run_id = start(
        &t,
        "review",
        "pull_request",
        &pr_payload(1, "feature", &w.pr1, &w.base, REPO),
    )
    .await;
    let snap = t.wait_run(run_id, Duration::from_secs(120)).await;
    let review = snap.step("review").unwrap();
    assert_eq!(
        review.state,
        StepState::Succeeded,
        "{}",
        output_of(&snap, "review")
    );
    assert_eq!(snap.step("deploy").unwrap().state, StepState::Skipped);
    assert!(
        api.requests().iter().any(|r| r["tools"]
            .as_array()
            .is_some_and(|t| t.iter().any(|t| t["name"] == "StructuredOutput"))),
        "the CLI was given --json-schema"
    );
    let outbox = w.outbox(store.clone());
    let deadline = Instant::now() + Duration::from_secs(30);
    while w
        .fake
        .check_runs(REPO)
        .last()
        .is_none_or(|r| r["conclusion"].is_null())
    {
        assert!(Instant::now() < deadline, "{:#?}", w.write_lines());
        outbox.pass().await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let runs = w.fake.check_runs(REPO);
    let run = runs.last().unwrap();
    assert_eq!(run["conclusion"], json!("failure"), "{run:#}");
    let annotations = run["annotations"].as_array().unwrap();
    assert_eq!(annotations.len(), 1, "{run:#}");
    assert_eq!(annotations[0]["path"], json!("src/lib.rs"));
    assert_eq!(annotations[0]["start_line"], json!(2));
    assert_eq!(annotations[0]["annotation_level"], json!("failure"));
    t.stop().await;
}

#[tokio::test]
async fn a_workflow_maps_a_fail_verdict_and_posts_only_findings_of_its_least_severity() {
    let w = world().await;
    let set = workflows(
        &[r#"
name: advice
on: { pull_request: {} }
verdicts: { fail: action_required, min_severity: warning }
steps:
  review: { agent: editor, validation: code_review, prompt: "Review." }
"#],
        &["editor"],
    );
    let answer = r#"```json
{"verdict":"fail","summary":"Two things.","findings":[
 {"path":"src/lib.rs","start_line":2,"end_line":2,"severity":"notice","title":"Style","message":"A nit."},
 {"path":"src/lib.rs","start_line":2,"end_line":2,"severity":"warning","title":"Name","message":"Say what it does."}]}
```"#;
    let agents = AgentMap::new().with(editor(answer, |_| {}));
    let t = TestEngine::start(set, agents, w.config()).await;
    let store: Arc<dyn RunStore> = t.store.clone();
    let run_id = start(
        &t,
        "advice",
        "pull_request",
        &pr_payload(1, "feature", &w.pr1, &w.base, REPO),
    )
    .await;
    t.wait_run(run_id, Duration::from_secs(60)).await;
    let outbox = w.outbox(store.clone());
    let deadline = Instant::now() + Duration::from_secs(30);
    while w.fake.reviews(REPO, 1).is_empty() {
        assert!(Instant::now() < deadline, "{:#?}", w.write_lines());
        outbox.pass().await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let reviews = w.fake.reviews(REPO, 1);
    let comments = reviews[0]["comments"].as_array().unwrap();
    assert_eq!(comments.len(), 1, "the notice is not posted: {comments:#?}");
    assert!(
        comments[0]["body"].as_str().unwrap().contains("**Name**"),
        "{comments:#?}"
    );
    let runs = w.fake.check_runs(REPO);
    let run = runs.last().unwrap();
    assert_eq!(run["conclusion"], json!("action_required"), "{run:#}");
    assert!(
        run["output"]["title"]
            .as_str()
            .unwrap()
            .contains("Action required: a verdict is fail"),
        "{run:#}"
    );
    assert_eq!(
        run["annotations"].as_array().map(Vec::len),
        Some(2),
        "every finding is an annotation: {run:#}"
    );
    t.stop().await;
}
