//! Harvest benchmark: how long taskmaster takes to compute a run's change
//! (`Workspaces::harvest`: trusted git directory, `add -A`, steering reset,
//! raw/numstat/diff, blobs) in a large checkout, with the checkout's own
//! index as the starting point (what taskmaster does) against starting from
//! the tree alone (`read-tree`, which makes git hash every file), in one
//! run, alternating.
//!
//! ```text
//! cargo run --release --example harvest_bench [files] [changed] [rounds]
//! ```
//!
//! Defaults: 50,000 files, 10 of them changed, 7 rounds. Figures in
//! `benches/README.md`.

#[path = "../tests/support/git_server.rs"]
#[allow(dead_code)]
mod git_server;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use secrecy::SecretString;
use taskmaster::workspace::{
    ChangeLimits, CheckoutRequest, Target, TokenSource, WorkspaceError, WorkspaceSettings,
    Workspaces,
};

struct NoToken;

#[async_trait]
impl TokenSource for NoToken {
    async fn read_token(
        &self,
        _: Option<taskmaster::ids::InstallationId>,
        _: &str,
    ) -> Result<Option<SecretString>, WorkspaceError> {
        Ok(None)
    }
}

/// One commit of `files` files on `main`, with `git fast-import`.
fn generate(bare: &Path, files: usize) {
    let mut child = Command::new("git")
        .args(["fast-import", "--quiet"])
        .current_dir(bare)
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .stdin(Stdio::piped())
        .spawn()
        .expect("git fast-import");
    let mut out = std::io::BufWriter::new(child.stdin.take().unwrap());
    writeln!(out, "commit refs/heads/main").unwrap();
    writeln!(out, "committer Bench <bench@example.com> 1700000000 +0000").unwrap();
    writeln!(out, "data 4\nbase").unwrap();
    for i in 0..files {
        let body = format!(
            "// file {i}\npub fn f{i}() -> u64 {{ {i} }}\n{}\n",
            "// padding ".repeat(12)
        );
        writeln!(
            out,
            "M 100644 inline src/m{:03}/d{:02}/f{i:05}.rs",
            i % 500,
            (i / 500) % 20
        )
        .unwrap();
        writeln!(out, "data {}\n{body}", body.len()).unwrap();
    }
    drop(out);
    assert!(child.wait().unwrap().success(), "fast-import failed");
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("numbers: files changed rounds"))
        .collect();
    let files = args.first().copied().unwrap_or(50_000);
    let changed = args.get(1).copied().unwrap_or(10);
    let rounds = args.get(2).copied().unwrap_or(7);

    let server = git_server::GitServer::start(None).await;
    let repo = server.create_repo("bench/big");
    let t = Instant::now();
    generate(&repo.bare, files);
    println!(
        "generated {files} files in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let data = tempfile::tempdir().unwrap();
    let mut settings = WorkspaceSettings::new(data.path());
    settings.git_url = server.base_url.clone();
    settings.min_free_bytes = 0;
    settings.max_workspace_bytes = u64::MAX;
    let ws = Arc::new(Workspaces::new(settings, Arc::new(NoToken)).unwrap());
    let made = ws
        .ensure(&CheckoutRequest {
            run_id: 1,
            repo_id: 1,
            full_name: "bench/big".into(),
            installation: None,
            target: Target::Branch {
                name: "main".into(),
            },
            pinned_sha: None,
        })
        .await
        .unwrap();
    println!(
        "checkout of {files} files in {:.2} s",
        made.duration.as_secs_f64()
    );
    // The agent's work: `changed` files edited, one added.
    for i in 0..changed {
        let i = i * (files / changed.max(1));
        let path = made.path.join(format!(
            "src/m{:03}/d{:02}/f{i:05}.rs",
            i % 500,
            (i / 500) % 20
        ));
        let mut text = std::fs::read_to_string(&path).unwrap();
        text.push_str("// changed by the agent\n");
        std::fs::write(&path, text).unwrap();
    }
    std::fs::write(made.path.join("NEW.md"), "added by the agent\n").unwrap();

    let index = data.path().join("workspaces").join("1.index");
    let moved = data.path().join("1.index.aside");
    let limits = ChangeLimits::default();
    let (mut with_index, mut tree_only) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        let order = if round % 2 == 0 {
            [true, false]
        } else {
            [false, true]
        };
        for use_index in order {
            if !use_index {
                std::fs::rename(&index, &moved).unwrap();
            }
            let t = Instant::now();
            let change = ws.harvest(1, limits).await.unwrap().unwrap();
            let secs = t.elapsed().as_secs_f64();
            assert_eq!(change.files.len(), changed + 1, "{:?}", change.files);
            if use_index {
                with_index.push(secs);
            } else {
                std::fs::rename(&moved, &index).unwrap();
                tree_only.push(secs);
            }
        }
        println!(
            "round {round}: with the checkout's index {:.3} s, from the tree alone {:.3} s",
            with_index[round], tree_only[round]
        );
    }
    let (a, b) = (median(with_index), median(tree_only));
    println!(
        "median: with the checkout's index {a:.3} s, from the tree alone {b:.3} s, ratio {:.2}",
        a / b
    );
}
