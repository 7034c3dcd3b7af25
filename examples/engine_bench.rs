//! Engine benchmark (figures in `benches/ENGINE.md`).
//!
//! `cargo run --release --example engine_bench -- [latency|memory] [RUNS]`
//! or `... -- rate [STEPS_PER_S] [SECONDS]`
//!
//! * `latency`: chains of 10 steps on an agent that answers at once.
//!   Dispatch latency is the time from a step's need returning (the agent's
//!   `run` finished) to the step's attempt starting (the agent's `run`
//!   entered): the result's commit, the planner, the wake-up, the claim and
//!   the attempt's start, each a durable SQLite transaction (WAL,
//!   `synchronous=FULL`). Reported for one run alone and for RUNS (default
//!   100) runs at once, with steps completed per second.
//! * `rate [STEPS_PER_S] [SECONDS]`: open loop — a new 10-step run every
//!   `10 / STEPS_PER_S` s (default 1,000 steps/s for 5 s), each created in
//!   its own transaction; dispatch latency at that steady load, and the rate
//!   actually completed.
//! * `memory`: RUNS (default 10,000) one-step runs whose agent takes 30 s, all
//!   in flight at once; reports the resident set size (VmRSS).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use taskmaster::store::RunId;

use async_trait::async_trait;
use taskmaster::agent::{Agent, AgentKind, AttemptOutcome, AttemptRequest, Health, Output, Usage};
use taskmaster::engine::intake::new_run;
use taskmaster::engine::{AgentMap, BreakerConfig, Engine, EngineConfig};
use taskmaster::event::Event;
use taskmaster::store::prelude::*;
use taskmaster::store::{SqliteStore, Store};
use taskmaster::workflow::WorkflowSet;
use tokio_util::sync::CancellationToken;

#[derive(Debug)]
struct Timed {
    delay: Duration,
    /// (run, step) → (entered, returned)
    seen: Mutex<HashMap<(String, String), (Instant, Instant)>>,
    running: std::sync::atomic::AtomicUsize,
}

#[async_trait]
impl Agent for Timed {
    fn name(&self) -> &str {
        "bench"
    }
    fn kind(&self) -> AgentKind {
        AgentKind::Command
    }
    async fn run(&self, a: AttemptRequest) -> AttemptOutcome {
        let entered = Instant::now();
        self.running
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        if !self.delay.is_zero() {
            tokio::select! {
                _ = tokio::time::sleep(self.delay) => {}
                _ = a.cancel.cancelled() => {}
            }
        }
        self.running
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        self.seen.lock().unwrap().insert(
            (a.key.run.clone(), a.key.step.clone()),
            (entered, Instant::now()),
        );
        AttemptOutcome {
            failure: None,
            output: Output::default(),
            duration: entered.elapsed(),
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

fn chain(steps: usize) -> String {
    let mut y = String::from("name: chain\non: { pull_request: {} }\nsteps:\n");
    for i in 0..steps {
        if i == 0 {
            y.push_str(&format!("  s{i}: {{ agent: bench, prompt: \"x\" }}\n"));
        } else {
            y.push_str(&format!(
                "  s{i}: {{ agent: bench, prompt: \"x\", needs: s{} }}\n",
                i - 1
            ));
        }
    }
    y
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}

struct Bench {
    engine: Engine,
    store: Arc<SqliteStore>,
    agent: Arc<Timed>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

async fn setup(yaml: &str, delay: Duration, config: EngineConfig) -> Bench {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(
        SqliteStore::open(dir.path().join("bench.db").to_str().unwrap())
            .await
            .unwrap(),
    );
    store.migrate().await.unwrap();
    let set = Arc::new(
        WorkflowSet::from_sources(vec![("b.yml".into(), yaml.to_owned())], &["bench"]).unwrap(),
    );
    let agent = Arc::new(Timed {
        delay,
        seen: Mutex::new(HashMap::new()),
        running: Default::default(),
    });
    let agents = AgentMap::new().with_limits(
        agent.clone(),
        None,
        BreakerConfig {
            failure_threshold: 0,
            cooldown: Duration::from_secs(1),
        },
    );
    let engine = Engine::new(store.clone(), set, Arc::new(agents), config);
    let stop = CancellationToken::new();
    let task = {
        let (e, s) = (engine.clone(), stop.clone());
        tokio::spawn(async move { e.run(s).await.unwrap() })
    };
    Bench {
        engine,
        store,
        agent,
        stop,
        task,
        _dir: dir,
    }
}

/// Creates `n` runs in batches of one transaction each; returns their ids.
async fn create(b: &Bench, n: usize) -> Vec<i64> {
    create_from(b, 0, n).await
}

/// Creates runs `from..from + n` (by delivery name) in batches of one
/// transaction each; returns their ids.
async fn create_from(b: &Bench, from: usize, n: usize) -> Vec<i64> {
    let payload = std::fs::read("tests/fixtures/webhooks/pull_request.opened.json").unwrap();
    let event = Event::parse("pull_request", &payload).unwrap();
    let wf = b.engine.workflows().iter().next().unwrap().clone();
    let mut ids = Vec::with_capacity(n);
    let mut i = from;
    while i < from + n {
        let batch: Vec<_> = (i..(i + 500).min(from + n))
            .map(|k| {
                new_run(
                    b.engine.workflows(),
                    &wf,
                    &event,
                    &format!("bench-{k}"),
                    "bench",
                    None,
                    None,
                    &taskmaster::engine::forecast::Forecast::default(),
                )
            })
            .collect();
        i += batch.len();
        ids.extend(
            b.store
                .create_runs(&batch)
                .await
                .unwrap()
                .into_iter()
                .map(|c| c.run_id.0),
        );
    }
    b.engine.wake();
    ids
}

/// Open loop: a new 10-step run every `1000 / (steps_per_s / 10)` ms for
/// `seconds`, each created in its own transaction as the dispatcher would,
/// so the engine is offered `steps_per_s` steady instead of a burst. Reports
/// dispatch latency at that load and the rate actually completed.
async fn rate(steps_per_s: usize, seconds: u64) {
    const STEPS: usize = 10;
    let config = EngineConfig {
        max_in_flight: 256,
        ..EngineConfig::default()
    };
    let b = setup(&chain(STEPS), Duration::ZERO, config).await;
    let runs_per_s = (steps_per_s / STEPS).max(1);
    let total = runs_per_s * seconds as usize;
    let mut tick = tokio::time::interval(Duration::from_secs(1) / runs_per_s as u32);
    let started = Instant::now();
    let mut ids = Vec::with_capacity(total);
    for k in 0..total {
        tick.tick().await;
        ids.extend(create_from(&b, k, 1).await);
    }
    wait_all(&b, &ids).await;
    let wall = started.elapsed();
    let lat = latencies(&b.agent, STEPS);
    println!(
        "offered {steps_per_s} steps/s ({runs_per_s} runs/s × {STEPS} steps, {seconds} s): dispatch p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; completed {:.0} steps/s ({} steps in {:.2} s)",
        percentile(&lat, 0.5).as_secs_f64() * 1e3,
        percentile(&lat, 0.99).as_secs_f64() * 1e3,
        lat.last().unwrap().as_secs_f64() * 1e3,
        (total * STEPS) as f64 / wall.as_secs_f64(),
        total * STEPS,
        wall.as_secs_f64()
    );
    b.stop.cancel();
    let _ = b.task.await;
}

async fn wait_all(b: &Bench, ids: &[i64]) {
    for id in ids {
        loop {
            let snap = b.store.run(RunId(*id)).await.unwrap().unwrap();
            if snap.run.state.is_terminal() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

fn latencies(agent: &Timed, steps: usize) -> Vec<Duration> {
    let seen = agent.seen.lock().unwrap();
    let mut out = Vec::new();
    for ((run, step), (entered, _)) in seen.iter() {
        let i: usize = step[1..].parse().unwrap();
        if i == 0 || i >= steps {
            continue;
        }
        if let Some((_, returned)) = seen.get(&(run.clone(), format!("s{}", i - 1))) {
            out.push(entered.saturating_duration_since(*returned));
        }
    }
    out.sort();
    out
}

async fn latency(runs: usize) {
    const STEPS: usize = 10;
    let config = EngineConfig {
        max_in_flight: 256,
        ..EngineConfig::default()
    };
    for (label, n) in [("1 run alone", 1usize), ("runs at once", runs)] {
        let b = setup(&chain(STEPS), Duration::ZERO, config.clone()).await;
        let started = Instant::now();
        let ids = create(&b, n).await;
        wait_all(&b, &ids).await;
        let wall = started.elapsed();
        let lat = latencies(&b.agent, STEPS);
        println!(
            "{label:>14} ({n} × {STEPS} steps): dispatch p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; {:.0} steps/s ({} steps in {:.2} s)",
            percentile(&lat, 0.5).as_secs_f64() * 1e3,
            percentile(&lat, 0.99).as_secs_f64() * 1e3,
            lat.last().unwrap().as_secs_f64() * 1e3,
            (n * STEPS) as f64 / wall.as_secs_f64(),
            n * STEPS,
            wall.as_secs_f64()
        );
        b.stop.cancel();
        let _ = b.task.await;
    }
}

async fn memory(runs: usize) {
    let config = EngineConfig {
        max_in_flight: runs,
        reap_interval: Duration::from_secs(60),
        shutdown_grace: Duration::from_secs(1),
        ..EngineConfig::default()
    };
    let yaml =
        "name: slow\non: { pull_request: {} }\nsteps:\n  work: { agent: bench, prompt: \"x\" }\n";
    let b = setup(yaml, Duration::from_secs(30), config).await;
    let before = rss_mb();
    let started = Instant::now();
    create(&b, runs).await;
    let created = started.elapsed();
    loop {
        let n = b.agent.running.load(std::sync::atomic::Ordering::SeqCst);
        if n >= runs {
            break;
        }
        if started.elapsed() > Duration::from_secs(600) {
            println!("only {n} of {runs} attempts started after 600 s");
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "{runs} runs in flight (agents taking 30 s): RSS {:.1} MB (baseline {:.1} MB); created in {:.1} s, all attempts running after {:.1} s",
        rss_mb(),
        before,
        created.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    // Hold them through two heartbeats (every 10 s with the default 30 s
    // lease): every lease must stay held.
    tokio::time::sleep(Duration::from_secs(21)).await;
    let expired: i64 = b
        .store
        .connection()
        .unwrap()
        .query_row(
            "SELECT COUNT(*) FROM run_events WHERE kind = 'lease_expired'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    println!(
        "  21 s later: RSS {:.1} MB, {} attempts still running, {expired} leases expired",
        rss_mb(),
        b.agent.running.load(std::sync::atomic::Ordering::SeqCst)
    );
    b.stop.cancel();
    let _ = b.task.await;
}

#[tokio::main]
async fn main() {
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    let args: Vec<String> = std::env::args().collect();
    let what = args.get(1).map(String::as_str).unwrap_or("latency");
    let n: Option<usize> = args.get(2).and_then(|s| s.parse().ok());
    match what {
        "memory" => memory(n.unwrap_or(10_000)).await,
        "rate" => {
            let secs = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(5);
            rate(n.unwrap_or(1_000), secs).await
        }
        _ => latency(n.unwrap_or(100)).await,
    }
}
