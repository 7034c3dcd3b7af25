//! `/fix` end to end through the real `taskmaster serve` binary: a signed
//! `issue_comment` webhook, the permission check, a run on a real checkout
//! (`git http-backend`), and its change brought back to the stateful fake
//! GitHub as one commit, one branch and one draft pull request — also when
//! the service is SIGKILLed in the middle of those writes and restarted.

mod harness;
mod support;

use std::time::{Duration, Instant};
use taskmaster::store::RunId;

use harness::{ChildService, SECRET, fixture, post, sign};
use serde_json::{Value, json};
use support::fake_github::FakeGitHub;
use support::git_server::GitServer;

const PRIVATE_KEY: &str = include_str!("fixtures/github/app-key.pem");
const REPO: &str = "acme/widgets";

const FIX_WORKFLOW: &str = r#"
name: fix
on: { issue_comment: { command: fix } }
steps:
  code:
    agent: command
    changes: true
    with: { run: [sh, -c, "printf 'fixed as asked\n' > NOTES.md"] }
  describe:
    agent: command
    needs: code
    pull_request: true
    with: { run: [printf, "Add the notes file\n\nWritten as asked in the comment."] }
"#;

struct World {
    git: GitServer,
    fake: FakeGitHub,
    base: String,
    dir: tempfile::TempDir,
}

async fn world() -> World {
    let git = GitServer::start(None).await;
    let repo = git.create_repo(REPO);
    let base = repo.commit(&[("README.md", "hello\n")], "base");
    repo.push(&base, "refs/heads/main");
    let fake = FakeGitHub::start(git.root()).await;
    fake.add_issue(REPO, 7);
    fake.set_permission("maintainer", "write");
    fake.set_permission("reader", "read");
    let dir = tempfile::tempdir().unwrap();
    let workflows = dir.path().join("workflows");
    std::fs::create_dir(&workflows).unwrap();
    std::fs::write(workflows.join("fix.yml"), FIX_WORKFLOW).unwrap();
    World {
        git,
        fake,
        base,
        dir,
    }
}

impl World {
    fn start(&self) -> ChildService {
        let workflows = self.dir.path().join("workflows");
        ChildService::start(
            &self.dir.path().join("fix.db"),
            &[
                ("TASKMASTER_WORKFLOWS", workflows.to_str().unwrap()),
                ("TASKMASTER_WORKSPACES", "checkout"),
                ("GITHUB_GIT_URL", &self.git.base_url),
                ("GITHUB_APP_ID", "12345"),
                ("GITHUB_PRIVATE_KEY", PRIVATE_KEY),
                ("GITHUB_API_URL", &self.fake.url),
                // The fake's App: its bot is `taskmaster-test[bot]`.
                ("GITHUB_APP_SLUG", "taskmaster-test"),
                ("PUBLIC_URL", "https://taskmaster.example"),
                ("TASKMASTER_MIN_FREE_DISK_MB", "0"),
                ("TASKMASTER_REPORT_INTERVAL_MS", "100"),
                ("TASKMASTER_OUTBOX_POLL_MS", "50"),
            ],
        )
    }

    fn our_pulls(&self) -> Vec<Value> {
        self.fake
            .pulls(REPO)
            .into_iter()
            .filter(|p| {
                p["head"]["ref"]
                    .as_str()
                    .unwrap()
                    .starts_with("taskmaster/")
            })
            .collect()
    }
}

/// `/fix …` on issue #7 by `login`.
fn fix_comment(login: &str, id: i64, body: &str) -> Vec<u8> {
    let mut v: Value = serde_json::from_slice(&fixture("issue_comment.created.json")).unwrap();
    v["installation"] = json!({ "id": 42 });
    v["repository"]["id"] = json!(9301);
    v["repository"]["full_name"] = json!(REPO);
    v["repository"]["name"] = json!("widgets");
    v["repository"]["owner"]["login"] = json!("acme");
    v["repository"]["default_branch"] = json!("main");
    v["issue"]["number"] = json!(7);
    v["issue"]["title"] = json!("The notes file is missing");
    let user = json!({ "login": login, "id": 5000 + id, "type": "User" });
    v["comment"]["id"] = json!(id);
    v["comment"]["body"] = json!(body);
    v["comment"]["user"] = user.clone();
    v["comment"]["author_association"] = json!("MEMBER");
    v["sender"] = user;
    serde_json::to_vec(&v).unwrap()
}

async fn deliver(service: &ChildService, delivery: &str, body: &[u8]) {
    let client = taskmaster::agent::http_client_builder().build().unwrap();
    let (status, _) = post(
        &client,
        &service.webhook_url(),
        Some("issue_comment"),
        Some(delivery),
        body,
        Some(&sign(SECRET, body)),
    )
    .await;
    assert!(status.is_success(), "{status}");
}

async fn wait_for<F: FnMut() -> bool>(what: &str, service: &ChildService, mut check: F) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !check() {
        if Instant::now() >= deadline {
            panic!(
                "timed out waiting for {what}\nservice log:\n{}",
                service.logs_text()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One branch `taskmaster/fix-7-*` with one commit on the base, one draft
/// pull request from it with `Closes #7`, one comment linking it.
fn assert_one_of_each(w: &World, context: &str) {
    let pulls = w.our_pulls();
    assert_eq!(pulls.len(), 1, "{context}: {pulls:#?}");
    let pr = &pulls[0];
    let branch = pr["head"]["ref"].as_str().unwrap();
    assert!(
        branch.starts_with("taskmaster/fix-7-"),
        "{context}: {branch}"
    );
    assert_eq!(pr["draft"], json!(true), "{context}");
    assert_eq!(pr["title"], json!("Add the notes file"), "{context}");
    assert!(
        pr["body"].as_str().unwrap().contains("Closes #7"),
        "{context}"
    );
    let head = w.fake.branch_sha(REPO, branch).unwrap();
    let commit = w.fake.commit_info(REPO, &head);
    assert_eq!(commit["parents"], json!([w.base]), "{context}: {commit:#}");
    assert!(
        commit["message"]
            .as_str()
            .unwrap()
            .contains("Co-authored-by: maintainer <5021+maintainer@users.noreply.github.com>"),
        "{context}: {commit:#}"
    );
    assert_eq!(
        w.fake.file_at(REPO, branch, "NOTES.md").as_deref(),
        Some("fixed as asked\n"),
        "{context}"
    );
    let refs = w
        .fake
        .writes()
        .iter()
        .filter(|r| r.method == "POST" && r.path.ends_with("/git/refs") && r.status == 201)
        .count();
    assert_eq!(refs, 1, "{context}");
    let links = w
        .fake
        .comments(REPO, 7)
        .iter()
        .filter(|c| {
            c["body"]
                .as_str()
                .unwrap()
                .starts_with("<!-- taskmaster:pull-request run=")
        })
        .count();
    assert_eq!(links, 1, "{context}: {:#?}", w.fake.comments(REPO, 7));
    assert_eq!(
        w.fake.branch_sha(REPO, "main").as_deref(),
        Some(w.base.as_str())
    );
}

#[tokio::test]
async fn fix_from_a_writer_becomes_a_draft_pr_and_from_a_reader_is_refused() {
    let w = world().await;
    let service = w.start();
    // A reader's /fix: refused with a reason, nothing runs.
    deliver(
        &service,
        "fix-reader",
        &fix_comment("reader", 20, "/fix please"),
    )
    .await;
    wait_for("the refusal", &service, || {
        w.fake
            .comments(REPO, 7)
            .iter()
            .any(|c| c["body"].as_str().unwrap().starts_with("> /fix please"))
    })
    .await;
    assert!(w.our_pulls().is_empty());
    // A writer's /fix: one draft pull request.
    deliver(
        &service,
        "fix-writer",
        &fix_comment("maintainer", 21, "/fix add the notes file"),
    )
    .await;
    wait_for("the pull request", &service, || !w.our_pulls().is_empty()).await;
    wait_for("the linking comment", &service, || {
        w.fake.comments(REPO, 7).iter().any(|c| {
            c["body"]
                .as_str()
                .unwrap()
                .starts_with("<!-- taskmaster:pull-request run=")
        })
    })
    .await;
    assert_one_of_each(&w, "no kill");
    // The commit and the pull request were made with the narrowed token.
    for r in w.fake.writes() {
        if r.path.contains("/git/") || r.path.ends_with("/pulls") {
            let p = r.permissions.clone().expect("a narrowed token");
            assert_eq!(p.get("contents").map(String::as_str), Some("write"));
        }
    }
    assert!(w.fake.unhandled().is_empty(), "{:#?}", w.fake.unhandled());
    // No token — the narrowed write token, the read token, the
    // installation token — is in the service's log or under its data
    // directory (mirrors, workspaces, the harvest's trusted git directory).
    let tokens = w.fake.token_values();
    assert!(tokens.len() >= 2, "{tokens:?}");
    let logs = service.logs_text();
    let mut files = Vec::new();
    let mut stack = vec![service.data_dir.path().to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap().flatten() {
            let t = e.file_type().unwrap();
            if t.is_dir() {
                stack.push(e.path());
            } else if t.is_file() {
                files.push(e.path());
            }
        }
    }
    assert!(!files.is_empty());
    for token in &tokens {
        assert!(!logs.contains(token.as_str()), "a token is in the log");
        for f in &files {
            let bytes = std::fs::read(f).unwrap();
            assert!(
                !bytes.windows(token.len()).any(|w| w == token.as_bytes()),
                "a token is in {}",
                f.display()
            );
        }
    }
    drop(service);
}

/// SIGKILL while GitHub holds each write of the loop (it then completes
/// the write, as GitHub would for a request already received), restart on
/// the same database: one branch, one commit on it, one pull request.
#[tokio::test]
async fn a_sigkill_at_each_write_then_a_restart_leaves_one_branch_one_commit_one_pr() {
    for suffix in ["/git/blobs", "/git/commits", "/git/refs", "/pulls"] {
        let w = world().await;
        let hold = w.fake.hold("POST", suffix);
        let mut service = w.start();
        deliver(
            &service,
            "fix-kill",
            &fix_comment("maintainer", 21, "/fix add the notes file"),
        )
        .await;
        if tokio::time::timeout(Duration::from_secs(60), hold.arrived())
            .await
            .is_err()
        {
            panic!(
                "{suffix} never arrived\nservice log:\n{}",
                service.logs_text()
            );
        }
        service.signal(libc::SIGKILL);
        service.wait_exit(Duration::from_secs(10));
        hold.release();
        let service = w.start();
        wait_for(
            &format!("the pull request after a kill at {suffix}"),
            &service,
            || {
                w.fake.comments(REPO, 7).iter().any(|c| {
                    c["body"]
                        .as_str()
                        .unwrap()
                        .starts_with("<!-- taskmaster:pull-request run=")
                })
            },
        )
        .await;
        assert_one_of_each(&w, suffix);
        drop(service);
    }
}

/// Without App credentials (dry run), `taskmaster run` records the commit
/// and pull request it would have made, prints the change and its diff,
/// and sends nothing.
#[tokio::test]
async fn taskmaster_run_in_dry_run_prints_the_diff_and_records_the_would_be_pr() {
    let w = world().await;
    let payload = w.dir.path().join("comment.json");
    std::fs::write(
        &payload,
        fix_comment("maintainer", 30, "/fix add the notes file"),
    )
    .unwrap();
    let db = w.dir.path().join("dry.db");
    // Async: the git server answers on this test's runtime.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_taskmaster"))
        .args(["run", "fix", "--event-name", "issue_comment", "--event"])
        .arg(&payload)
        .arg("--workflows")
        .arg(w.dir.path().join("workflows"))
        .arg("--database-url")
        .arg(format!("sqlite://{}", db.display()))
        .arg("--data-dir")
        .arg(w.dir.path().join("data"))
        .args([
            "--git-url",
            &w.git.base_url,
            "--min-free-disk-mb",
            "0",
            "--log",
            "error",
        ])
        .env_remove("GITHUB_APP_ID")
        .env_remove("GITHUB_PRIVATE_KEY")
        .env_remove("GITHUB_PRIVATE_KEY_PATH")
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("change: Dry run: a change of 1 file (+1 −0) was recorded, not sent."),
        "{stdout}"
    );
    assert!(
        stdout.contains("added           +1    -0  NOTES.md"),
        "{stdout}"
    );
    assert!(stdout.contains("+fixed as asked"), "{stdout}");
    // Recorded with the run: the would-be pull request.
    let store = taskmaster::store::SqliteStore::open(db.to_str().unwrap())
        .await
        .unwrap();
    let change = taskmaster::store::ChangeStore::run_change(&store, RunId(1))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(change.state, taskmaster::store::ChangeState::DryRun);
    let would = change.publication.would_open.unwrap();
    assert_eq!(would["title"], json!("Add the notes file"));
    assert!(
        would["branch"]
            .as_str()
            .unwrap()
            .starts_with("taskmaster/fix-7-")
    );
    assert!(would["body"].as_str().unwrap().contains("Closes #7"));
    // Nothing reached GitHub.
    assert!(w.fake.requests().is_empty(), "{:#?}", w.fake.requests());
}

/// `/fix` on a same-repository pull request: the change is committed onto
/// the PR's head branch, no new pull request (forks and a moved head are in
/// `tests/publish.rs`).
#[tokio::test]
async fn fix_on_a_same_repository_pr_commits_onto_its_head() {
    let w = world().await;
    // PR #8 from `feature` (this repository) and PR #9 from a fork.
    let work = w.git.root().parent().unwrap().join("work").join(REPO);
    support::git_server::git(&work, &["checkout", "-q", "-b", "feature"]);
    std::fs::write(work.join("NOTES.md"), "first draft\n").unwrap();
    support::git_server::git(&work, &["add", "-A"]);
    support::git_server::git(&work, &["commit", "-q", "-m", "feature"]);
    let head = support::git_server::git(&work, &["rev-parse", "HEAD"]);
    let bare = w.git.root().join(format!("{REPO}.git"));
    for refname in ["refs/heads/feature", "refs/pull/8/head"] {
        support::git_server::git(
            &work,
            &[
                "push",
                "-q",
                bare.to_str().unwrap(),
                &format!("{head}:{refname}"),
            ],
        );
    }
    w.fake
        .add_pull_request(REPO, 8, "feature", &head, "main", &w.base, REPO);
    let service = w.start();
    let mut comment: Value =
        serde_json::from_slice(&fix_comment("maintainer", 40, "/fix add the notes file")).unwrap();
    comment["issue"]["number"] = json!(8);
    comment["issue"]["pull_request"] =
        json!({ "url": format!("https://api.github.com/repos/{REPO}/pulls/8") });
    deliver(&service, "fix-pr", &serde_json::to_vec(&comment).unwrap()).await;
    wait_for("the commit on the head branch", &service, || {
        w.fake.branch_sha(REPO, "feature").as_deref() != Some(head.as_str())
    })
    .await;
    let new_head = w.fake.branch_sha(REPO, "feature").unwrap();
    let commit = w.fake.commit_info(REPO, &new_head);
    assert_eq!(commit["parents"], json!([head]), "{commit:#}");
    assert_eq!(
        w.fake.file_at(REPO, "feature", "NOTES.md").as_deref(),
        Some("fixed as asked\n")
    );
    assert!(w.our_pulls().is_empty(), "no new pull request");
    assert!(w.fake.unhandled().is_empty(), "{:#?}", w.fake.unhandled());
    drop(service);
}
