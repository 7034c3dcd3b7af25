//! The `command` agent against real processes: deadlines, process-group
//! kills, resource limits, the environment allow-list, the sandbox.
//!
//! Every hostile program here is bounded (a few hundred MiB at most, a
//! hundred short sleeps, one second of CPU) so that a broken limit fails the
//! test without hurting a shared machine.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::json;
use taskmaster::agent::command::{CommandAgent, CommandSettings, Policy, ResourceLimits, RunAs};
use taskmaster::agent::{
    Agent, AttemptOutcome, AttemptRequest, ErrorClass, FailureKind, IdempotencyKey,
};

fn key() -> IdempotencyKey {
    IdempotencyKey {
        run: "r1".into(),
        step: "tests".into(),
        attempt: 1,
    }
}

fn request(with: serde_json::Value, timeout: Duration, dir: &std::path::Path) -> AttemptRequest {
    let mut req = AttemptRequest::new(key(), "", timeout);
    req.with = with.as_object().unwrap().clone();
    req.workdir = Some(dir.to_path_buf());
    req
}

fn settings(policy: Policy) -> CommandSettings {
    let mut s = CommandSettings::new("tests");
    s.policy = policy;
    s.kill_grace = Duration::from_millis(300);
    s
}

fn is_root() -> bool {
    unsafe { libc::geteuid() == 0 }
}

/// A directory anyone may enter and write (for commands run as `nobody`).
fn open_dir() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    dir
}

/// Alive means present in /proc and not a zombie.
fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat.rsplit(')').next().unwrap_or("").trim_start();
            !state.starts_with('Z') && !state.starts_with('X')
        }
        Err(_) => false,
    }
}

#[track_caller]
fn assert_failed(outcome: &AttemptOutcome, kind: FailureKind) {
    let failure = outcome.failure.as_ref().unwrap_or_else(|| {
        panic!(
            "expected a {kind:?} failure, got success: {}",
            outcome.output.text
        )
    });
    assert_eq!(failure.kind, kind, "{failure:?}\n{}", outcome.output.text);
}

#[tokio::test]
async fn success_captures_stdout_and_stderr() {
    let dir = tempfile::tempdir().unwrap();
    let agent = CommandAgent::new(settings(Policy::Standard));
    let outcome = agent
        .run(request(
            json!({"command": ["sh", "-c", "echo out; echo err >&2; pwd"]}),
            Duration::from_secs(10),
            dir.path(),
        ))
        .await;
    assert!(outcome.succeeded(), "{outcome:?}");
    let text = &outcome.output.text;
    assert!(text.contains("out\n") && text.contains("err\n"), "{text}");
    assert!(text.contains(dir.path().to_str().unwrap()), "{text}");
}

#[tokio::test]
async fn nonzero_exit_is_a_permanent_failure() {
    let dir = tempfile::tempdir().unwrap();
    let agent = CommandAgent::new(settings(Policy::Standard));
    let outcome = agent
        .run(request(
            json!({"command": ["sh", "-c", "exit 3"]}),
            Duration::from_secs(10),
            dir.path(),
        ))
        .await;
    assert_failed(&outcome, FailureKind::Agent);
    let failure = outcome.failure.unwrap();
    assert_eq!(failure.class, ErrorClass::Permanent);
    assert!(failure.message.contains("status 3"), "{}", failure.message);
}

#[tokio::test]
async fn arguments_never_reach_a_shell() {
    let dir = tempfile::tempdir().unwrap();
    let agent = CommandAgent::new(settings(Policy::Standard));
    let outcome = agent
        .run(request(
            json!({"command": ["echo", "$HOME; touch pwned"]}),
            Duration::from_secs(10),
            dir.path(),
        ))
        .await;
    assert!(outcome.succeeded(), "{outcome:?}");
    assert_eq!(outcome.output.text, "$HOME; touch pwned\n");
    assert!(!dir.path().join("pwned").exists());
}

#[tokio::test]
async fn a_process_ignoring_sigterm_is_killed_at_the_deadline_with_its_children() {
    let dir = tempfile::tempdir().unwrap();
    let agent = CommandAgent::new(settings(Policy::Standard));
    let script = "trap '' TERM; sleep 60 & echo $! > pids; sleep 60 & echo $! >> pids; echo $$ >> pids; echo started; wait; wait";
    let started = std::time::Instant::now();
    let outcome = agent
        .run(request(
            json!({"command": script, "shell": true}),
            Duration::from_secs(1),
            dir.path(),
        ))
        .await;
    let took = started.elapsed();
    assert_failed(&outcome, FailureKind::Timeout);
    assert_eq!(outcome.error_class(), Some(ErrorClass::Transient));
    assert!(
        outcome.output.text.contains("started"),
        "{}",
        outcome.output.text
    );
    assert!(took < Duration::from_secs(4), "took {took:?}");
    let pids: Vec<i32> = std::fs::read_to_string(dir.path().join("pids"))
        .unwrap()
        .lines()
        .map(|l| l.trim().parse().unwrap())
        .collect();
    assert_eq!(pids.len(), 3);
    // SIGKILL is delivered at once, but give the kernel a moment to reap.
    tokio::time::sleep(Duration::from_millis(200)).await;
    for pid in pids {
        assert!(!alive(pid), "process {pid} survived the deadline");
    }
}

#[tokio::test]
async fn cancel_stops_the_process_group_promptly() {
    let dir = tempfile::tempdir().unwrap();
    let agent = CommandAgent::new(settings(Policy::Standard));
    let req = request(
        json!({"command": ["sleep", "30"]}),
        Duration::from_secs(30),
        dir.path(),
    );
    let cancel = req.cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        cancel.cancel();
    });
    let started = std::time::Instant::now();
    let outcome = agent.run(req).await;
    assert_failed(&outcome, FailureKind::Cancelled);
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn the_cpu_limit_stops_a_busy_loop() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = settings(Policy::Minimal);
    s.limits.cpu_seconds = Some(1);
    let agent = CommandAgent::new(s);
    let outcome = agent
        .run(request(
            json!({"command": ["sh", "-c", "while :; do :; done"]}),
            Duration::from_secs(10),
            dir.path(),
        ))
        .await;
    assert_failed(&outcome, FailureKind::ResourceLimit);
    assert!(
        outcome.duration < Duration::from_secs(8),
        "{:?}",
        outcome.duration
    );
}

#[tokio::test]
async fn the_memory_limit_stops_a_memory_hog() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = settings(Policy::Minimal);
    s.limits = ResourceLimits {
        memory_bytes: Some(64 * 1024 * 1024),
        ..ResourceLimits::default()
    };
    let agent = CommandAgent::new(s);
    // Doubles a string to 256 MiB (about 512 MiB at the peak) and prints its
    // length: bounded even if the limit were not applied.
    let hog = r#"BEGIN { s = "x"; for (i = 0; i < 28; i++) s = s s; print length(s) }"#;
    let outcome = agent
        .run(request(
            json!({"command": ["awk", hog]}),
            Duration::from_secs(20),
            dir.path(),
        ))
        .await;
    assert!(
        !outcome.succeeded(),
        "the hog finished: {}",
        outcome.output.text
    );
    assert!(
        !outcome.output.text.contains("268435456"),
        "{}",
        outcome.output.text
    );
}

#[tokio::test]
async fn the_process_limit_stops_a_fork_bomb() {
    let dir = open_dir();
    let mut s = settings(Policy::Minimal);
    s.limits.processes = Some(16);
    if is_root() {
        // The kernel does not apply RLIMIT_NPROC to root.
        s.run_as = Some(RunAs {
            uid: 65534,
            gid: 65534,
        });
    }
    let agent = CommandAgent::new(s);
    // A bounded bomb: 100 background sleeps, counting those that started.
    let bomb = "n=0; i=0; while [ $i -lt 100 ]; do i=$((i+1)); if sleep 5 & then n=$((n+1)); fi; done; echo spawned=$n; kill $(jobs -p) 2>/dev/null; exit 0";
    let outcome = agent
        .run(request(
            json!({"command": bomb, "shell": true}),
            Duration::from_secs(15),
            dir.path(),
        ))
        .await;
    let text = &outcome.output.text;
    assert!(
        !text.contains("spawned=100"),
        "the bomb was not stopped: {text}"
    );
    assert!(
        text.to_lowercase().contains("fork") || text.contains("Resource temporarily unavailable"),
        "no sign of a refused fork: {text}"
    );
}

#[tokio::test]
async fn the_environment_holds_only_allowed_variables() {
    fn host_env(name: &str) -> Option<String> {
        match name {
            "PATH" => Some("/usr/bin:/bin".into()),
            "HOME" => Some("/nonexistent".into()),
            "GITHUB_TOKEN" => Some("ghs_0123456789abcdefghijABCDEFGHIJ0123".into()),
            "CARGO_HOME" => Some("/opt/cargo".into()),
            "UNLISTED" => Some("nope".into()),
            _ => None,
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let mut s = settings(Policy::Standard);
    s.env_allow = vec!["CARGO_HOME".into(), "GITHUB_TOKEN".into()];
    s.env = BTreeMap::from([
        ("FIXED".to_string(), "1".to_string()),
        ("GH_TOKEN".to_string(), "also-secret".to_string()),
        ("GITHUB_PRIVATE_KEY".to_string(), "pem".to_string()),
    ]);
    let agent = CommandAgent::new(s).with_env_lookup(host_env);
    let outcome = agent
        .run(request(
            json!({"command": ["/usr/bin/env"], "env": {"STEP": "x", "GITHUB_WEBHOOK_SECRET": "w"}}),
            Duration::from_secs(10),
            dir.path(),
        ))
        .await;
    assert!(outcome.succeeded(), "{outcome:?}");
    let mut names: Vec<&str> = outcome
        .output
        .text
        .lines()
        .filter(|l| !l.starts_with("[taskmaster]"))
        .filter_map(|l| l.split_once('=').map(|(n, _)| n))
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "CARGO_HOME",
            "FIXED",
            "HOME",
            "PATH",
            "STEP",
            "TASKMASTER_ATTEMPT"
        ],
        "{}",
        outcome.output.text
    );
    assert!(
        outcome
            .output
            .text
            .contains("TASKMASTER_ATTEMPT=r1:tests:1")
    );
    assert!(
        outcome.output.text.contains("withheld"),
        "{}",
        outcome.output.text
    );
}

fn bwrap_works() -> bool {
    std::process::Command::new("bwrap")
        .args(["--unshare-all", "--ro-bind", "/", "/", "true"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

#[tokio::test]
async fn hardened_runs_in_bwrap_without_network() {
    if !bwrap_works() {
        // In CI the sandbox must be tested: .ci/run installs bubblewrap.
        assert!(
            std::env::var_os("CI").is_none(),
            "bwrap is not installed or cannot create namespaces (apt-get install bubblewrap)"
        );
        eprintln!(
            "SKIPPED: bwrap is not installed or cannot create namespaces here (apt-get install bubblewrap)"
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("input.txt"), "hello").unwrap();
    let agent = CommandAgent::new(settings(Policy::Hardened));
    let outcome = agent
        .run(request(
            json!({"command": ["sh", "-c", "cat /proc/net/dev; cat input.txt; echo made > output.txt"]}),
            Duration::from_secs(10),
            dir.path(),
        ))
        .await;
    assert!(outcome.succeeded(), "{outcome:?}");
    let text = &outcome.output.text;
    let interfaces: Vec<&str> = text
        .lines()
        .filter_map(|l| l.split_once(':').map(|(n, _)| n.trim()))
        .filter(|n| !n.contains('|') && !n.is_empty())
        .collect();
    assert_eq!(interfaces, ["lo"], "{text}");
    assert!(text.contains("hello"), "{text}");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("output.txt")).unwrap(),
        "made\n"
    );
    assert!(!text.contains("SANDBOX UNAVAILABLE"));
}

#[tokio::test]
async fn a_missing_sandbox_fails_closed_naming_the_package() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = settings(Policy::Hardened);
    s.bwrap = Some(PathBuf::from("/nonexistent/bwrap"));
    let agent = CommandAgent::new(s);
    let marker = dir.path().join("ran");
    let outcome = agent
        .run(request(
            json!({"command": ["touch", marker.to_str().unwrap()]}),
            Duration::from_secs(10),
            dir.path(),
        ))
        .await;
    assert_failed(&outcome, FailureKind::Config);
    let message = &outcome.failure.as_ref().unwrap().message;
    assert!(
        message.contains("bubblewrap") && message.contains("allow_unsandboxed"),
        "{message}"
    );
    assert!(
        !marker.exists(),
        "the command must not run without its sandbox"
    );
}

#[tokio::test]
async fn a_missing_sandbox_allowed_by_the_operator_is_said_plainly() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = settings(Policy::Paranoid);
    s.bwrap = Some(PathBuf::from("/nonexistent/bwrap"));
    s.allow_unsandboxed = true;
    let agent = CommandAgent::new(s);
    let outcome = agent
        .run(request(
            json!({"command": ["echo", "ran"]}),
            Duration::from_secs(10),
            dir.path(),
        ))
        .await;
    assert!(outcome.succeeded(), "{outcome:?}");
    let first = outcome.output.text.lines().next().unwrap();
    assert!(
        first.contains("SANDBOX UNAVAILABLE") && first.contains("WITHOUT the sandbox"),
        "{first}"
    );
    assert!(outcome.output.text.contains("ran"));
}

#[tokio::test]
async fn bad_inputs_are_permanent_config_failures() {
    let dir = tempfile::tempdir().unwrap();
    let agent = CommandAgent::new(settings(Policy::Standard));
    for with in [
        json!({}),
        json!({"run": 42}),
        json!({"run": "   "}),
        json!({"run": ["a"], "command": ["b"]}),
        json!({"command": ["definitely-not-a-program-xyz"]}),
    ] {
        let outcome = agent
            .run(request(with.clone(), Duration::from_secs(5), dir.path()))
            .await;
        assert_failed(&outcome, FailureKind::Config);
        assert_eq!(outcome.error_class(), Some(ErrorClass::Permanent), "{with}");
    }
}
