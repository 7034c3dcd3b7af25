//! Workspace benchmark: time to a ready workspace for a new pull-request
//! head with a warm mirror, against a fresh `git clone` of the same
//! repository, alternating, in one run.
//!
//! ```sh
//! cargo run --release --example workspace_bench -- [files] [commits] [rounds]
//! # defaults: 50000 files, 10000 commits, 5 rounds; SKIP_FRESH=1 times only
//! # the warm workspaces (for the memory figure)
//! ```
//!
//! It generates a repository (`git fast-import`: a first commit with
//! `files` files, then `commits - 1` commits changing three files each),
//! serves it with `git http-backend` over smart HTTP on loopback (the test
//! suite's server, requiring a token), warms the mirror with one workspace,
//! then for each round pushes a new head to `refs/pull/<n>/head` and times:
//!
//! * **warm**: `Workspaces::ensure` for a new run of that head (fetch the
//!   new commit into the mirror, a fresh `.git` from the mirror on the work
//!   tree the previous run left parked, `reset --hard` + `clean -ffdx`,
//!   restore steering files, diff against the base);
//! * **fresh**: `git clone` of the repository over the same server, as a bot
//!   without a mirror would.
//!
//! It prints each figure, the medians, their ratio, and this process's
//! resident memory before the first workspace and after each warm one (git
//! runs as child processes; the service's memory should not grow with the
//! repository). The git server runs in this process too and buffers each
//! pack it serves, so the figure is an upper bound.

#[path = "../tests/support/git_server.rs"]
#[allow(dead_code)]
mod git_server;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use secrecy::SecretString;
use taskmaster::workspace::{
    CheckoutRequest, Target, TokenSource, WorkspaceError, WorkspaceSettings, Workspaces,
};

const TOKEN: &str = "ghs_benchToken";

struct Token;

#[async_trait]
impl TokenSource for Token {
    async fn read_token(
        &self,
        _: Option<taskmaster::ids::InstallationId>,
        _: &str,
    ) -> Result<Option<SecretString>, WorkspaceError> {
        Ok(Some(SecretString::from(TOKEN)))
    }
}

/// Resident set of this process now, in MB (`VmRSS` of `/proc/self/status`).
fn rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Writes a `git fast-import` stream: `files` files in the first commit on
/// `main`, then `commits - 1` commits changing three files each.
fn generate(bare: &Path, files: usize, commits: usize) {
    let mut child = Command::new("git")
        .args(["fast-import", "--quiet"])
        .current_dir(bare)
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .stdin(Stdio::piped())
        .spawn()
        .expect("git fast-import");
    let mut out = std::io::BufWriter::new(child.stdin.take().unwrap());
    let path = |i: usize| format!("src/m{:03}/d{:02}/f{i:05}.rs", i % 500, (i / 500) % 20);
    let mut time = 1_700_000_000u64;
    for c in 0..commits {
        writeln!(out, "commit refs/heads/main").unwrap();
        writeln!(out, "committer Bench <bench@example.com> {time} +0000").unwrap();
        time += 60;
        let msg = format!("commit {c}");
        writeln!(out, "data {}\n{msg}", msg.len()).unwrap();
        let touched: Vec<usize> = if c == 0 {
            (0..files).collect()
        } else {
            (0..3).map(|k| (c * 7919 + k * 104_729) % files).collect()
        };
        for i in touched {
            let body = format!(
                "// file {i}, revision {c}\npub fn f{i}() -> u64 {{ {} }}\n{}\n",
                i * c + 1,
                "// padding ".repeat(12)
            );
            writeln!(out, "M 100644 inline {}", path(i)).unwrap();
            writeln!(out, "data {}\n{body}", body.len()).unwrap();
        }
    }
    drop(out);
    assert!(child.wait().unwrap().success(), "fast-import failed");
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("numbers: files commits rounds"))
        .collect();
    let files = args.first().copied().unwrap_or(50_000);
    let commits = args.get(1).copied().unwrap_or(10_000);
    let rounds = args.get(2).copied().unwrap_or(5);

    let server = git_server::GitServer::start(Some(TOKEN)).await;
    let repo = server.create_repo("bench/big");
    let started = Instant::now();
    generate(&repo.bare, files, commits);
    git_server::git(&repo.bare, &["repack", "-adq"]);
    let size = git_server::git(&repo.bare, &["count-objects", "-vH"]);
    println!(
        "generated {files} files, {commits} commits in {:.1} s ({})",
        started.elapsed().as_secs_f64(),
        size.lines()
            .find(|l| l.starts_with("size-pack"))
            .unwrap_or("")
    );
    let base = git_server::git(&repo.bare, &["rev-parse", "main"]);
    // New PR heads are commits on top of main, made in a work clone.
    let work = tempfile::tempdir().unwrap();
    git_server::git(
        work.path(),
        &[
            "clone",
            "-q",
            "--no-checkout",
            repo.bare.to_str().unwrap(),
            "w",
        ],
    );
    let w = work.path().join("w");
    let new_head = |n: usize| -> String {
        let tree = git_server::git(&w, &["rev-parse", "origin/main^{tree}"]);
        let commit = git_server::git(
            &w,
            &[
                "-c",
                "user.name=Bench",
                "-c",
                "user.email=bench@example.com",
                "commit-tree",
                &tree,
                "-p",
                "origin/main",
                "-m",
                &format!("pr {n}"),
            ],
        );
        git_server::git(
            &w,
            &[
                "push",
                "-q",
                repo.bare.to_str().unwrap(),
                &format!("{commit}:refs/pull/{n}/head"),
            ],
        );
        commit
    };

    let data = tempfile::tempdir().unwrap();
    let mut settings = WorkspaceSettings::new(data.path());
    settings.git_url = server.base_url.clone();
    settings.min_free_bytes = 0;
    settings.max_workspace_bytes = u64::MAX;
    let ws = Arc::new(Workspaces::new(settings, Arc::new(Token)).unwrap());
    let request = |run_id: i64, number: u64, head: &str| CheckoutRequest {
        run_id,
        repo_id: 1,
        full_name: "bench/big".into(),
        installation: Some(taskmaster::ids::InstallationId(1)),
        target: Target::PullRequest {
            number,
            head_sha: Some(head.to_owned()),
            base_branch: "main".into(),
            base_sha: Some(base.clone()),
        },
        pinned_sha: None,
    };
    let rss_before = rss_mb();
    let mut rss_warm: Vec<f64> = Vec::new();
    let head = new_head(1);
    let t = Instant::now();
    let cold = ws.ensure(&request(1, 1, &head)).await.unwrap();
    println!(
        "cold (empty mirror): {:.2} s, workspace {:.1} MB",
        t.elapsed().as_secs_f64(),
        cold.size_bytes as f64 / 1e6
    );
    ws.finish(1, false).await;
    let rss_after_cold = rss_mb();

    let url = format!("{}/bench/big.git", server.base_url);
    let header = {
        use base64::Engine as _;
        format!(
            "http.extraHeader=AUTHORIZATION: basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("x-access-token:{TOKEN}"))
        )
    };
    // SKIP_FRESH=1: warm workspaces only (the git server then never holds a
    // whole repository's pack, so the memory figure is the workspaces').
    let skip_fresh = std::env::var_os("SKIP_FRESH").is_some();
    let mut warm = Vec::new();
    let mut fresh = Vec::new();
    for round in 0..rounds {
        let n = round + 2;
        let head = new_head(n);
        // Alternate which goes first.
        let order = if round % 2 == 0 {
            [true, false]
        } else {
            [false, true]
        };
        for is_warm in order {
            if is_warm {
                let t = Instant::now();
                let made = ws
                    .ensure(&request(n as i64, n as u64, &head))
                    .await
                    .unwrap();
                let secs = t.elapsed().as_secs_f64();
                assert_eq!(made.sha, head);
                warm.push(secs);
                if round == 0 {
                    println!("  (first warm run: {})", made.fetched);
                }
                // The run ends: its tree is parked for the next run.
                ws.finish(n as i64, false).await;
                rss_warm.push(rss_mb());
            } else if !skip_fresh {
                let dir = tempfile::tempdir().unwrap();
                let t = Instant::now();
                let status = Command::new("git")
                    .args(["-c", &header, "clone", "-q", &url])
                    .arg(dir.path().join("clone"))
                    .env("GIT_CONFIG_GLOBAL", "/dev/null")
                    .env("GIT_TERMINAL_PROMPT", "0")
                    .status()
                    .unwrap();
                assert!(status.success());
                fresh.push(t.elapsed().as_secs_f64());
            }
        }
        println!(
            "round {round}: warm workspace {:.3} s, fresh clone {}",
            warm[round],
            fresh
                .get(round)
                .map_or("skipped".to_owned(), |f| format!("{f:.3} s"))
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if fresh.is_empty() {
        fresh.push(f64::NAN);
    }
    let (w50, f50) = (median(warm.clone()), median(fresh.clone()));
    println!(
        "median: warm workspace {w50:.3} s, fresh clone {f50:.3} s, ratio {:.3} (target <= 0.10 and <= 1 s)",
        w50 / f50
    );
    // The process also runs the git server, which holds each pack it
    // serves in memory (a fresh clone's is the whole repository).
    println!(
        "resident memory of this process: {rss_before:.1} MB before the first workspace, \
         {rss_after_cold:.1} MB after the cold one (the server has served the whole pack), \
         {:.1} MB after the warm ones (max)",
        rss_warm.iter().cloned().fold(0.0, f64::max)
    );
}
