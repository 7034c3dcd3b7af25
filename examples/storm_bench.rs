//! The PR storm benchmark (`benches/storm.sh` runs it; figures in
//! `benches/README.md`).
//!
//! One target per invocation, one JSON line of figures on stdout:
//!
//! ```sh
//! storm_bench storm  --seconds 10 [--rate 500] [--installations 50] [--database-url postgres://…]
//! storm_bench idle   --seconds 10   # the same binary, a workflow set no delivery starts
//! storm_bench probot --seconds 10   # Probot 14 (benches/probot), an app that only receives
//! ```
//!
//! Every delivery is a signed `pull_request.opened` of a different pull
//! request (number, head commit, title) across 50 repositories. Without
//! `--rate`, 16 connections send as fast as they are answered (closed loop:
//! intake throughput and latency); with `--rate R`, deliveries start every
//! 1/R s whatever the answers (open loop: the time from a delivery's 202 to
//! its run's first check run at GitHub).
//!
//! Around taskmaster: the test suite's stateful fake GitHub
//! (`tests/support/fake_github.rs`) on loopback, answering every call 50 ms
//! late as GitHub does; the shipped workflows (`workflows/`) with
//! `claude-code` a managed AgentAPI agent whose servers are the test suite's
//! stand-in (`examples/agentapi_standin.rs`) answering each turn in 1 s;
//! workspaces off (runs get an empty directory) and `make` a stand-in that
//! succeeds, so the figures are taskmaster's own work, not git's or a test
//! suite's.
//!
//! Figures: intake requests/s, p50/p99/max in ms, non-2xx; dispatcher lag
//! (age of the oldest queued delivery, sampled from `/api/health` every
//! 250 ms) during and after the load; first check run p50/p99 from each
//! delivery's 202; steps started per second and runs finished; peak RSS of
//! the service (`VmHWM`); and the accounting: deliveries stored, runs per
//! delivery, check runs per head commit, deliveries still queued when the
//! settle time ran out.

#[path = "../tests/support/fake_github.rs"]
mod fake_github;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const SECRET: &str = "storm-secret";
const REPOSITORIES: u64 = 50;
const PRIVATE_KEY: &str = include_str!("../tests/fixtures/github/app-key.pem");

struct Args {
    target: String,
    seconds: f64,
    connections: usize,
    rate: Option<f64>,
    installations: u64,
    database_url: Option<String>,
    settle: f64,
    agent_ms: u64,
    github_ms: u64,
}

fn args() -> Args {
    let mut a = Args {
        target: String::new(),
        seconds: 10.0,
        connections: 16,
        rate: None,
        installations: REPOSITORIES,
        database_url: None,
        settle: 120.0,
        agent_ms: 1000,
        github_ms: 50,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| panic!("{arg} needs a value"));
        match arg.as_str() {
            "--seconds" => a.seconds = value().parse().expect("--seconds S"),
            "--connections" => a.connections = value().parse().expect("--connections N"),
            "--rate" => a.rate = Some(value().parse().expect("--rate R")),
            "--installations" => a.installations = value().parse().expect("--installations N"),
            "--database-url" => a.database_url = Some(value()),
            "--settle" => a.settle = value().parse().expect("--settle S"),
            "--agent-ms" => a.agent_ms = value().parse().expect("--agent-ms N"),
            "--github-ms" => a.github_ms = value().parse().expect("--github-ms N"),
            t if !t.starts_with("--") && a.target.is_empty() => a.target = t.to_owned(),
            other => panic!("unknown argument {other}"),
        }
    }
    assert!(
        matches!(
            a.target.as_str(),
            "storm" | "idle" | "probot" | "memstore" | "durable" | "journal" | "ceiling"
        ),
        "usage: storm_bench storm|idle|probot|memstore|durable|journal|ceiling [--seconds S] [--rate R] [--installations N] \
         [--database-url URL] [--settle S] [--agent-ms N] [--github-ms N]"
    );
    a
}

/// The payload template as text with markers where a delivery's own values
/// go, split at the markers: filling it is a few copies, not a JSON
/// serialisation per request.
struct Template {
    pieces: Vec<String>,
    slots: Vec<Slot>,
}

#[derive(Clone, Copy)]
enum Slot {
    Number,
    Installation,
    Repo,
    FullName,
    Sha,
    Index,
}

impl Template {
    fn new(root: &Path) -> Template {
        let raw = std::fs::read(root.join("tests/fixtures/webhooks/pull_request.opened.json"))
            .expect("the pull_request.opened fixture");
        let mut v: Value = serde_json::from_slice(&raw).unwrap();
        v["installation"] = json!({ "id": "@@INSTALLATION@@" });
        v["number"] = json!("@@NUMBER@@");
        v["repository"]["name"] = json!("@@REPO@@");
        v["repository"]["full_name"] = json!("@@FULL@@");
        v["repository"]["owner"]["login"] = json!("storm");
        let pr = &mut v["pull_request"];
        pr["number"] = json!("@@NUMBER@@");
        pr["title"] = json!("Change number @@INDEX@@");
        pr["head"]["sha"] = json!("@@SHA@@");
        pr["head"]["ref"] = json!("change-@@INDEX@@");
        for side in ["head", "base"] {
            pr[side]["repo"]["full_name"] = json!("@@FULL@@");
            pr[side]["repo"]["name"] = json!("@@REPO@@");
            pr[side]["repo"]["owner"]["login"] = json!("storm");
        }
        let text = serde_json::to_string(&v).unwrap();
        let markers = [
            ("\"@@NUMBER@@\"", Slot::Number),
            ("\"@@INSTALLATION@@\"", Slot::Installation),
            ("@@REPO@@", Slot::Repo),
            ("@@FULL@@", Slot::FullName),
            ("@@SHA@@", Slot::Sha),
            ("@@INDEX@@", Slot::Index),
        ];
        let (mut pieces, mut slots, mut rest) = (Vec::new(), Vec::new(), text.as_str());
        loop {
            let next = markers
                .iter()
                .filter_map(|(m, s)| rest.find(m).map(|at| (at, m.len(), *s)))
                .min_by_key(|(at, _, _)| *at);
            let Some((at, len, slot)) = next else { break };
            pieces.push(rest[..at].to_owned());
            slots.push(slot);
            rest = &rest[at + len..];
        }
        pieces.push(rest.to_owned());
        Template { pieces, slots }
    }

    /// The `i`-th delivery's body (see [`subject`]).
    fn body(&self, i: u64, installations: u64) -> Vec<u8> {
        let (repo, sha) = subject(i);
        let name = &repo["storm/".len()..];
        let mut out =
            String::with_capacity(self.pieces.iter().map(String::len).sum::<usize>() + 256);
        for (k, piece) in self.pieces.iter().enumerate() {
            out.push_str(piece);
            if let Some(slot) = self.slots.get(k) {
                match slot {
                    Slot::Number => out.push_str(&(i + 1).to_string()),
                    Slot::Installation => out.push_str(&(1000 + i % installations).to_string()),
                    Slot::Repo => out.push_str(name),
                    Slot::FullName => out.push_str(&repo),
                    Slot::Sha => out.push_str(&sha),
                    Slot::Index => out.push_str(&i.to_string()),
                }
            }
        }
        out.into_bytes()
    }
}

/// The `i`-th pull request's repository and head commit.
fn subject(i: u64) -> (String, String) {
    (
        format!("storm/r{}", i % REPOSITORIES),
        format!("{:040x}", i + 1),
    )
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A child process killed when dropped.
struct Service {
    child: Child,
    port: u16,
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Service {
    /// Peak resident memory (`VmHWM`) in bytes.
    fn peak_rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    }

    /// Stops the service with SIGTERM and waits for it.
    fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

async fn wait_listening(client: &reqwest::Client, port: u16, child: &mut Child, log: &Path) {
    for _ in 0..300 {
        if client
            .get(format!("http://127.0.0.1:{port}/api/health"))
            .send()
            .await
            .is_ok()
        {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "the service exited ({status}) before listening:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the service never listened on {port}");
}

fn start_taskmaster(a: &Args, root: &Path, dir: &Path, github: &str) -> (Service, String) {
    let port = free_port();
    let workflows = if a.target == "storm" {
        root.join("workflows")
    } else {
        let idle = dir.join("idle-workflows");
        std::fs::create_dir_all(&idle).unwrap();
        std::fs::write(
            idle.join("idle.yml"),
            "name: idle\non: { issues: { actions: [transferred] } }\nsteps:\n  \
             noop: { agent: command, with: { run: [\"true\"] } }\n",
        )
        .unwrap();
        idle
    };
    // `make test` (the shipped test step's default command) succeeds.
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::write(bin.join("make"), "#!/bin/sh\nexit 0\n").unwrap();
    std::process::Command::new("chmod")
        .args(["+x", bin.join("make").to_str().unwrap()])
        .status()
        .unwrap();
    let standin = root.join("target/release/examples/agentapi_standin");
    let config = dir.join("taskmaster.yml");
    std::fs::write(
        &config,
        format!(
            "agents:\n  claude-code:\n    kind: agentapi\n    spawn: [{:?}, server, \
             \"--work-ms={}\"]\n    startup_timeout_seconds: 60\n    timeout_seconds: 600\n    concurrency: 32\n",
            standin.display().to_string(),
            a.agent_ms
        ),
    )
    .unwrap();
    let database_url = a
        .database_url
        .clone()
        .unwrap_or_else(|| format!("sqlite://{}", dir.join("storm.db").display()));
    let log = dir.join("taskmaster.log");
    let binary = std::env::var("TASKMASTER_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root.join("target/release/taskmaster"));
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let child = Command::new(binary)
        .arg("serve")
        .env("HOST", "127.0.0.1")
        .env("PORT", port.to_string())
        .env("DATABASE_URL", &database_url)
        .env("GITHUB_WEBHOOK_SECRET", SECRET)
        .env("GITHUB_APP_ID", "12345")
        .env("GITHUB_PRIVATE_KEY", PRIVATE_KEY)
        .env("GITHUB_API_URL", github)
        .env("TASKMASTER_CONFIG", &config)
        .env("TASKMASTER_WORKFLOWS", &workflows)
        .env("TASKMASTER_WORKSPACES", "off")
        .env("TASKMASTER_DATA_DIR", dir.join("data"))
        .env("PATH", path)
        .env("LOG_FORMAT", "json")
        .env(
            "RUST_LOG",
            std::env::var("STORM_RUST_LOG").unwrap_or_else(|_| "info".into()),
        )
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::File::create(dir.join("taskmaster.stderr")).unwrap())
        .spawn()
        .expect("start taskmaster (cargo build --release first)");
    (Service { child, port }, database_url)
}

fn start_probot(root: &Path, dir: &Path) -> Service {
    let port = free_port();
    let app = root.join("benches/probot");
    let child = Command::new(app.join("node_modules/.bin/probot"))
        .args(["run", "./app.js"])
        .current_dir(&app)
        .env("APP_ID", "12345")
        .env("PRIVATE_KEY", PRIVATE_KEY)
        .env("WEBHOOK_SECRET", SECRET)
        .env("PORT", port.to_string())
        .env("HOST", "127.0.0.1")
        .env("LOG_LEVEL", "warn")
        .env("NODE_ENV", "production")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("probot.log")).unwrap())
        .spawn()
        .expect("start Probot (npm ci in benches/probot first)");
    Service { child, port }
}

/// One of the project's reference servers, built beside this example:
/// `memstore` (`examples/intake_memstore.rs`: taskmaster's whole intake path
/// over a store that keeps nothing), `durable` (the same over SQLite with no
/// dispatcher: durable intake alone), `journal` (durable intake behind an
/// append-only journal, the design issue #23 asked to measure) or `ceiling`
/// (`examples/hmac_ceiling.rs`: the signature check alone). They bound what
/// any durable design can reach under this load generator on this machine.
fn start_reference(target: &str, dir: &Path) -> Service {
    let port = free_port();
    let example = match target {
        "memstore" | "durable" | "journal" => "intake_memstore",
        _ => "hmac_ceiling",
    };
    let binary = std::env::current_exe().unwrap().with_file_name(example);
    let mut command = Command::new(&binary);
    if matches!(target, "durable" | "journal") {
        command.env("DATABASE_URL", reference_database(dir));
    }
    if target == "journal" {
        command.env("JOURNAL", dir.join("intake.journal"));
    }
    let child = command
        .env("GITHUB_WEBHOOK_SECRET", SECRET)
        .env("PORT", port.to_string())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("reference.log")).unwrap())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "start {} (cargo build --release --example {example}): {e}",
                binary.display()
            )
        });
    Service { child, port }
}

/// The SQLite database of the `durable` and `journal` references.
fn reference_database(dir: &Path) -> String {
    format!("sqlite://{}", dir.join("durable.db").display())
}

/// For the references that store (`durable`, `journal`): waits until every
/// accepted delivery is in the database (the journal's mover is behind
/// its answers) or `settle` ran out; returns the count and the wait in s.
async fn reference_stored(dir: &Path, accepted: u64, settle: f64) -> (u64, f64) {
    let path = dir.join("durable.db");
    let started = Instant::now();
    loop {
        let stored = rusqlite::Connection::open_with_flags(
            &path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .and_then(|c| {
            c.query_row("SELECT COUNT(*) FROM deliveries", [], |r| {
                r.get::<_, i64>(0)
            })
        })
        .unwrap_or(0) as u64;
        let waited = started.elapsed().as_secs_f64();
        if stored >= accepted || waited >= settle {
            return (stored, waited);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let at = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[at.clamp(1, sorted.len()) - 1]
}

/// What the load saw: per-request latency (ms) and each accepted
/// delivery's 202 instant by head commit.
#[derive(Default)]
struct Seen {
    latencies_ms: Vec<f64>,
    accepted: HashMap<String, Instant>,
    refused: u64,
    errors: u64,
}

/// What every request of the load shares; cheap to clone.
#[derive(Clone)]
struct Sender {
    client: reqwest::Client,
    url: String,
    template: Arc<Template>,
    installations: u64,
    /// The fake GitHub, told of each pull request before its delivery.
    fake: Option<Arc<fake_github::FakeGitHub>>,
    seen: Arc<Mutex<Seen>>,
}

impl Sender {
    /// Sends the `i`-th delivery and records its answer in `seen`.
    async fn send(&self, i: u64) {
        let Sender {
            client,
            url,
            template,
            installations,
            fake,
            seen,
        } = self;
        let installations = *installations;
        let body = template.body(i, installations);
        let signature = taskmaster::webhook::signature::sign(SECRET, &body);
        if let Some(fake) = fake {
            let (repo, sha) = subject(i);
            fake.add_pull_request(
                &repo,
                i + 1,
                &format!("change-{i}"),
                &sha,
                "master",
                "f95f852bd8fca8fcc58a9a2d6c842781e32a215e",
                &repo,
            );
        }
        let started = Instant::now();
        let answer = client
            .post(url)
            .header("content-type", "application/json")
            .header("user-agent", "GitHub-Hookshot/storm")
            .header("x-github-event", "pull_request")
            .header("x-github-delivery", format!("storm-{i}"))
            .header("x-hub-signature-256", signature)
            .body(body)
            .send()
            .await;
        // The answer read to its end, so the connection is kept for the next.
        let answer = match answer {
            Ok(r) => {
                let status = r.status();
                r.bytes().await.map(|_| status)
            }
            Err(e) => Err(e),
        };
        let done = Instant::now();
        let mut seen = seen.lock().unwrap();
        match answer {
            Ok(status) if status.is_success() => {
                seen.latencies_ms
                    .push(done.duration_since(started).as_secs_f64() * 1000.0);
                seen.accepted.insert(subject(i).1, done);
            }
            Ok(_) => seen.refused += 1,
            Err(_) => seen.errors += 1,
        }
    }
}

#[derive(Default, Clone, Copy)]
struct Lag {
    max_during_ms: i64,
    max_after_ms: i64,
    samples: u64,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let a = args();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let temp = tempfile::tempdir().unwrap();
    // STORM_KEEP=1 keeps the service's log and database (path on stderr).
    let (dir, _temp) = if std::env::var("STORM_KEEP").is_ok() {
        let kept = temp.keep();
        eprintln!("kept: {}", kept.display());
        (kept, None)
    } else {
        (temp.path().to_owned(), Some(temp))
    };
    let client = taskmaster::agent::http_client_builder()
        .pool_max_idle_per_host(a.connections * 2)
        .build()
        .unwrap();
    let taskmaster = matches!(a.target.as_str(), "storm" | "idle");
    let fake = if taskmaster {
        let fake = fake_github::FakeGitHub::start(dir.as_path().join("git")).await;
        fake.set_latency(Duration::from_millis(a.github_ms));
        Some(Arc::new(fake))
    } else {
        None
    };
    let (mut service, database_url) = match &fake {
        Some(fake) => {
            let (s, url) = start_taskmaster(&a, &root, dir.as_path(), &fake.url);
            (s, Some(url))
        }
        None if a.target == "probot" => (start_probot(&root, dir.as_path()), None),
        None => (start_reference(&a.target, dir.as_path()), None),
    };
    let log = dir.as_path().join(match a.target.as_str() {
        "storm" | "idle" => "taskmaster.log",
        "probot" => "probot.log",
        _ => "reference.log",
    });
    let port = service.port;
    wait_listening(&client, port, &mut service.child, &log).await;
    let url = format!("http://127.0.0.1:{port}/api/github/webhooks");
    let template = Arc::new(Template::new(&root));
    let seen = Arc::new(Mutex::new(Seen::default()));
    let sent = Arc::new(AtomicU64::new(0));

    // Dispatcher lag, sampled from the health check until told to stop.
    let loading = Arc::new(AtomicBool::new(true));
    let sampling = Arc::new(AtomicBool::new(taskmaster));
    let lag = Arc::new(Mutex::new(Lag::default()));
    let sampler = {
        let (client, loading, sampling, lag) = (
            client.clone(),
            loading.clone(),
            sampling.clone(),
            lag.clone(),
        );
        let health = format!("http://127.0.0.1:{port}/api/health");
        tokio::spawn(async move {
            while sampling.load(Ordering::Relaxed) {
                if let Ok(r) = client.get(&health).send().await
                    && let Ok(v) = r.json::<Value>().await
                {
                    let age = v["inbox"]["oldest_queued_ms"].as_i64().unwrap_or(0);
                    let mut lag = lag.lock().unwrap();
                    lag.samples += 1;
                    if loading.load(Ordering::Relaxed) {
                        lag.max_during_ms = lag.max_during_ms.max(age);
                    } else {
                        lag.max_after_ms = lag.max_after_ms.max(age);
                    }
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        })
    };

    let load_started = Instant::now();
    let deadline = load_started + Duration::from_secs_f64(a.seconds);
    let sender = Sender {
        client: client.clone(),
        url: url.clone(),
        template: template.clone(),
        installations: a.installations,
        fake: fake.clone(),
        seen: seen.clone(),
    };
    match a.rate {
        None => {
            let workers: Vec<_> = (0..a.connections)
                .map(|_| {
                    let (sender, sent) = (sender.clone(), sent.clone());
                    tokio::spawn(async move {
                        while Instant::now() < deadline {
                            sender.send(sent.fetch_add(1, Ordering::Relaxed)).await;
                        }
                    })
                })
                .collect();
            for w in workers {
                w.await.unwrap();
            }
        }
        Some(rate) => {
            let mut tasks = Vec::new();
            let interval = Duration::from_secs_f64(1.0 / rate);
            let mut next = load_started;
            while next < deadline {
                tokio::time::sleep_until(next.into()).await;
                let (sender, i) = (sender.clone(), sent.fetch_add(1, Ordering::Relaxed));
                tasks.push(tokio::spawn(async move { sender.send(i).await }));
                next += interval;
            }
            for t in tasks {
                t.await.unwrap();
            }
        }
    }
    let load_seconds = load_started.elapsed().as_secs_f64();
    loading.store(false, Ordering::Relaxed);
    let sent = sent.load(Ordering::Relaxed);

    let mut seen = std::mem::take(&mut *seen.lock().unwrap());
    seen.latencies_ms.sort_by(f64::total_cmp);
    let accepted = seen.latencies_ms.len() as u64;
    let mut out = json!({
        "target": a.target,
        "mode": if a.rate.is_some() { "open" } else { "closed" },
        "rate": a.rate,
        "installations": a.installations,
        "database": database_url.as_deref().map(|u| u.split(':').next().unwrap_or("").to_owned()),
        "seconds": load_seconds,
        "sent": sent,
        "accepted": accepted,
        "refused": seen.refused,
        "errors": seen.errors,
        "rps": accepted as f64 / load_seconds,
        "p50_ms": percentile(&seen.latencies_ms, 50.0),
        "p99_ms": percentile(&seen.latencies_ms, 99.0),
        "max_ms": seen.latencies_ms.last().copied().unwrap_or(f64::NAN),
    });

    if let (Some(fake), Some(database_url)) = (&fake, &database_url) {
        // Wait until every accepted delivery of a started workflow has its
        // first check run at GitHub (or the settle time ran out).
        let expect_checks = a.target == "storm";
        let settle_deadline = Instant::now() + Duration::from_secs_f64(a.settle);
        let mut first_check: HashMap<String, Instant> = HashMap::new();
        let (mut seen_requests, mut check_posts) = (0, 0);
        loop {
            let requests = fake.requests_since(seen_requests);
            seen_requests += requests.len();
            for r in &requests {
                if r.method == "POST" && r.path.ends_with("/check-runs") && r.status == 201 {
                    check_posts += 1;
                    if let Some(sha) = r.body["head_sha"].as_str() {
                        first_check.entry(sha.to_owned()).or_insert(r.at);
                    }
                }
            }
            let inbox_empty = lag.lock().unwrap().samples > 0 && {
                let v: Value = client
                    .get(format!("http://127.0.0.1:{port}/api/health"))
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                v["inbox"]["queued"] == 0 && v["inbox"]["processing"] == 0
            };
            let checks_done = !expect_checks || first_check.len() as u64 >= accepted;
            if (inbox_empty && checks_done) || Instant::now() >= settle_deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let settled_seconds = load_started.elapsed().as_secs_f64();
        sampling.store(false, Ordering::Relaxed);
        let _ = sampler.await;
        let peak_rss = service.peak_rss();

        // A delivery whose run had no check run when the settle time ran
        // out counts as infinitely late (a percentile it reaches is `null`),
        // so that a build that reports fewer runs cannot look faster.
        let mut to_check: Vec<f64> = seen
            .accepted
            .iter()
            .map(|(sha, at)| {
                first_check.get(sha).map_or(f64::INFINITY, |c| {
                    c.saturating_duration_since(*at).as_secs_f64() * 1000.0
                })
            })
            .collect();
        to_check.sort_by(f64::total_cmp);
        let checked = to_check.iter().filter(|t| t.is_finite()).count();
        let github_requests = seen_requests;
        let refused_writes = fake.writes().iter().filter(|r| r.status >= 400).count();
        let lag = *lag.lock().unwrap();
        service.stop();
        let counts = database_counts(database_url, load_started, load_seconds).await;
        let o = out.as_object_mut().unwrap();
        o.insert("settled_seconds".into(), json!(settled_seconds));
        o.insert("first_check_runs".into(), json!(checked));
        if expect_checks {
            o.insert(
                "first_check_missing".into(),
                json!(to_check.len() - checked),
            );
        }
        o.insert(
            "first_check_p50_ms".into(),
            json!(percentile(&to_check, 50.0)),
        );
        o.insert(
            "first_check_p99_ms".into(),
            json!(percentile(&to_check, 99.0)),
        );
        o.insert("check_run_posts".into(), json!(check_posts));
        o.insert("github_requests".into(), json!(github_requests));
        o.insert("github_refused_writes".into(), json!(refused_writes));
        o.insert("lag_max_during_ms".into(), json!(lag.max_during_ms));
        o.insert("lag_max_after_ms".into(), json!(lag.max_after_ms));
        o.insert("peak_rss_mb".into(), json!(peak_rss as f64 / 1048576.0));
        for (k, v) in counts {
            o.insert(k, v);
        }
        // Nothing lost, nothing doubled: every accepted delivery stored;
        // none with two runs; with the shipped workflows, every handled
        // one with its run (those still queued when the settle time ran
        // out are counted apart); one check run per head commit.
        let count = |k: &str| out[k].as_i64().unwrap_or(-1);
        let stored = count("deliveries_stored") as u64;
        let ok = stored >= accepted
            && stored <= sent
            && count("deliveries_with_two_runs_or_more") == 0
            && (a.target != "storm" || count("deliveries_handled_without_run") == 0)
            && check_posts == first_check.len();
        out["accounted"] = json!(ok);
    } else {
        if matches!(a.target.as_str(), "durable" | "journal") {
            let (stored, waited) = reference_stored(dir.as_path(), accepted, a.settle).await;
            out["deliveries_stored"] = json!(stored);
            out["stored_after_load_s"] = json!(waited);
            out["accounted"] = json!(stored >= accepted && stored <= sent);
        }
        out["peak_rss_mb"] = json!(service.peak_rss() as f64 / 1048576.0);
        service.stop();
    }
    println!("{out}");
}

/// Counts read from the service's database after it stopped: deliveries
/// stored, runs, runs per delivery, runs finished, and steps started during
/// the load per second.
async fn database_counts(url: &str, started: Instant, load_seconds: f64) -> Vec<(String, Value)> {
    // The load's window in the database's clock (ms since the epoch).
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let from = now_ms - started.elapsed().as_millis() as i64;
    let to = from + (load_seconds * 1000.0) as i64;
    let queries = [
        (
            "deliveries_stored",
            "SELECT COUNT(*) FROM deliveries".to_owned(),
        ),
        ("runs", "SELECT COUNT(*) FROM runs".to_owned()),
        (
            "runs_finished",
            "SELECT COUNT(*) FROM runs WHERE finished_at IS NOT NULL".to_owned(),
        ),
        (
            "deliveries_with_two_runs_or_more",
            "SELECT COUNT(*) FROM (SELECT d.id FROM deliveries d JOIN runs r \
             ON r.delivery_id = d.delivery_id GROUP BY d.id HAVING COUNT(r.id) > 1) x"
                .to_owned(),
        ),
        (
            "deliveries_handled_without_run",
            "SELECT COUNT(*) FROM deliveries d WHERE d.state = 'done' AND NOT EXISTS \
             (SELECT 1 FROM runs r WHERE r.delivery_id = d.delivery_id)"
                .to_owned(),
        ),
        (
            "deliveries_not_yet_handled",
            "SELECT COUNT(*) FROM deliveries WHERE state IN ('queued', 'processing')".to_owned(),
        ),
        (
            "steps_started_during_load",
            format!(
                "SELECT COUNT(*) FROM attempts WHERE started_at >= {from} AND started_at < {to}"
            ),
        ),
    ];
    let mut out = Vec::new();
    if url.starts_with("postgres") {
        let pool = sqlx::PgPool::connect(url)
            .await
            .expect("connect to PostgreSQL");
        for (name, q) in &queries {
            let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(q.clone()))
                .fetch_one(&pool)
                .await
                .expect(q);
            out.push((name.to_string(), json!(n)));
        }
    } else {
        let conn = rusqlite::Connection::open_with_flags(
            url.trim_start_matches("sqlite://"),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .expect("open SQLite");
        for (name, q) in &queries {
            let n: i64 = conn.query_row(q, [], |r| r.get(0)).expect(q);
            out.push((name.to_string(), json!(n)));
        }
    }
    let steps = out
        .iter()
        .find(|(k, _)| k == "steps_started_during_load")
        .and_then(|(_, v)| v.as_i64())
        .unwrap_or(0);
    out.push((
        "steps_started_per_s".into(),
        json!(steps as f64 / load_seconds),
    ));
    out
}
