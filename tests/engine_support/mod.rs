//! Test support for the engine: a real SQLite file, in-process agents with
//! scripted behaviour, and helpers that wait for runs and read their records.
#![allow(dead_code)]

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use taskmaster::agent::{
    Agent, AgentKind, AttemptOutcome, AttemptRequest, ErrorClass, Failure, FailureKind, Health,
    Output, Usage,
};
use taskmaster::engine::{AgentMap, BreakerConfig, Engine, EngineConfig, Transition};
use taskmaster::store::prelude::*;
use taskmaster::store::{RunEvent, RunSnapshot, RunState, SqliteStore, Store};
use taskmaster::workflow::WorkflowSet;
use tokio_util::sync::CancellationToken;

/// What one attempt of a scripted agent does.
#[derive(Debug, Clone)]
pub enum Act {
    /// Succeed after `delay` with `output`.
    Ok(Duration, &'static str),
    /// Fail after `delay`.
    Fail(Duration, ErrorClass, FailureKind),
    /// Fail transiently at once and ask to come back after the duration.
    RetryAfter(Duration),
    /// Fail transiently after `delay`, reporting that the attempt cost this
    /// many US dollars.
    FailCosting(Duration, f64),
    /// Succeed after `delay` with `output`, reporting this many US dollars.
    OkCosting(Duration, &'static str, f64),
    /// Run until cancelled or past the deadline (then report the cause).
    Hang,
    /// Ignore cancellation and the deadline; succeed after the duration.
    Stubborn(Duration),
}

/// One recorded attempt of a scripted agent.
#[derive(Debug, Clone)]
pub struct Seen {
    pub key: String,
    pub step: String,
    pub started: Instant,
    pub ended: Instant,
    pub cancelled: bool,
}

/// An agent that plays a script (per step id, else the default act).
#[derive(Debug)]
pub struct Scripted {
    name: String,
    default: Act,
    per_step: Mutex<HashMap<String, VecDeque<Act>>>,
    pub seen: Mutex<Vec<Seen>>,
}

impl Scripted {
    pub fn new(name: &str, default: Act) -> Arc<Self> {
        Arc::new(Self {
            name: name.into(),
            default,
            per_step: Mutex::new(HashMap::new()),
            seen: Mutex::new(Vec::new()),
        })
    }

    /// Queues acts for the attempts of `step`, in order.
    pub fn script(self: &Arc<Self>, step: &str, acts: Vec<Act>) -> Arc<Self> {
        self.per_step
            .lock()
            .unwrap()
            .insert(step.into(), acts.into());
        self.clone()
    }

    pub fn attempts_of(&self, step: &str) -> Vec<Seen> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.step == step)
            .cloned()
            .collect()
    }
}

fn failed(class: ErrorClass, kind: FailureKind, started: Instant) -> AttemptOutcome {
    AttemptOutcome {
        failure: Some(Failure {
            class,
            kind,
            message: format!("scripted {kind:?}"),
        }),
        output: Output::default(),
        duration: started.elapsed(),
        usage: Usage::default(),
        retry_after: None,
        web_url: None,
        pull_requests: Vec::new(),
    }
}

#[async_trait]
impl Agent for Scripted {
    fn name(&self) -> &str {
        &self.name
    }
    fn kind(&self) -> AgentKind {
        AgentKind::Command
    }
    async fn run(&self, attempt: AttemptRequest) -> AttemptOutcome {
        let started = Instant::now();
        let act = self
            .per_step
            .lock()
            .unwrap()
            .get_mut(&attempt.key.step)
            .and_then(|q| q.pop_front())
            .unwrap_or_else(|| self.default.clone());
        let mut cancelled = false;
        let outcome = match act {
            Act::Ok(delay, output) => {
                tokio::select! {
                    _ = tokio::time::sleep(delay) => AttemptOutcome {
                        failure: None,
                        output: Output { text: format!("{output} ({})", attempt.prompt.trim()), truncated_bytes: 0 },
                        duration: started.elapsed(),
                        usage: Usage::default(),
                        retry_after: None,
                        web_url: None,
                        pull_requests: Vec::new(),
                    },
                    _ = attempt.cancel.cancelled() => {
                        cancelled = true;
                        failed(ErrorClass::Permanent, FailureKind::Cancelled, started)
                    }
                }
            }
            Act::Fail(delay, class, kind) => {
                tokio::time::sleep(delay).await;
                failed(class, kind, started)
            }
            Act::OkCosting(delay, output, cost) => {
                tokio::time::sleep(delay).await;
                AttemptOutcome {
                    failure: None,
                    output: Output {
                        text: output.to_owned(),
                        truncated_bytes: 0,
                    },
                    duration: started.elapsed(),
                    usage: Usage {
                        cost_usd: Some(cost),
                        ..Usage::default()
                    },
                    retry_after: None,
                    web_url: None,
                    pull_requests: Vec::new(),
                }
            }
            Act::FailCosting(delay, cost) => {
                tokio::time::sleep(delay).await;
                let mut o = failed(ErrorClass::Transient, FailureKind::Agent, started);
                o.usage.cost_usd = Some(cost);
                o
            }
            Act::RetryAfter(after) => {
                let mut o = failed(ErrorClass::Transient, FailureKind::RateLimited, started);
                o.retry_after = Some(after);
                o
            }
            Act::Hang => {
                tokio::select! {
                    _ = tokio::time::sleep_until(attempt.deadline) =>
                        failed(ErrorClass::Transient, FailureKind::Timeout, started),
                    _ = attempt.cancel.cancelled() => {
                        cancelled = true;
                        failed(ErrorClass::Permanent, FailureKind::Cancelled, started)
                    }
                }
            }
            Act::Stubborn(delay) => {
                tokio::time::sleep(delay).await;
                AttemptOutcome {
                    failure: None,
                    output: Output {
                        text: "stubborn".into(),
                        truncated_bytes: 0,
                    },
                    duration: started.elapsed(),
                    usage: Usage::default(),
                    retry_after: None,
                    web_url: None,
                    pull_requests: Vec::new(),
                }
            }
        };
        self.seen.lock().unwrap().push(Seen {
            key: attempt.key.to_string(),
            step: attempt.key.step.clone(),
            started,
            ended: Instant::now(),
            cancelled,
        });
        outcome
    }
    async fn health(&self) -> Health {
        Health {
            reachable: true,
            latency: Duration::ZERO,
            detail: "scripted".into(),
        }
    }
}

/// Millisecond-scale engine settings for tests.
pub fn fast_config() -> EngineConfig {
    EngineConfig {
        max_in_flight: 16,
        lease: Duration::from_millis(600),
        poll: Duration::from_millis(10),
        reap_interval: Duration::from_millis(50),
        default_step_timeout: Duration::from_secs(10),
        timeout_grace: Duration::from_millis(200),
        default_estimate: std::time::Duration::from_secs(1),
        shutdown_grace: Duration::from_secs(2),
        workspaces: None,
        ..EngineConfig::default()
    }
}

/// A breaker that never opens (for tests that count failures).
pub fn no_breaker() -> BreakerConfig {
    BreakerConfig {
        failure_threshold: 0,
        cooldown: Duration::from_secs(1),
    }
}

/// A pull_request payload from the fixtures.
pub fn pr_payload() -> Vec<u8> {
    std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/webhooks/pull_request.opened.json"
    ))
    .unwrap()
}

/// Loads workflows given as YAML texts, accepting `agents` as agent names.
pub fn workflows(sources: &[&str], agents: &[&str]) -> Arc<WorkflowSet> {
    let sources = sources
        .iter()
        .enumerate()
        .map(|(i, s)| (PathBuf::from(format!("wf{i}.yml")), s.to_string()))
        .collect();
    Arc::new(WorkflowSet::from_sources(sources, agents).unwrap_or_else(|e| panic!("{e}")))
}

/// An engine on a fresh SQLite file, running.
pub struct TestEngine {
    pub engine: Engine,
    pub store: Arc<SqliteStore>,
    pub dir: tempfile::TempDir,
    pub shutdown: CancellationToken,
    pub task: tokio::task::JoinHandle<()>,
}

impl TestEngine {
    pub async fn start(set: Arc<WorkflowSet>, agents: AgentMap, config: EngineConfig) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(
            SqliteStore::open(dir.path().join("engine.db").to_str().unwrap())
                .await
                .unwrap(),
        );
        store.migrate().await.unwrap();
        Self::start_on(dir, store, set, agents, config)
    }

    pub fn start_on(
        dir: tempfile::TempDir,
        store: Arc<SqliteStore>,
        set: Arc<WorkflowSet>,
        agents: AgentMap,
        config: EngineConfig,
    ) -> Self {
        let engine = Engine::new(store.clone(), set, Arc::new(agents), config);
        let shutdown = CancellationToken::new();
        let task = {
            let engine = engine.clone();
            let shutdown = shutdown.clone();
            tokio::spawn(async move { engine.run(shutdown).await.unwrap() })
        };
        TestEngine {
            engine,
            store,
            dir,
            shutdown,
            task,
        }
    }

    /// Starts `workflow` on the PR fixture under a fresh delivery id.
    pub async fn start_run(&self, workflow: &str) -> i64 {
        let delivery = format!("test-{}", uuid::Uuid::new_v4());
        (self
            .engine
            .start_run(workflow, "pull_request", &pr_payload(), &delivery)
            .await
            .unwrap()
            .run_id)
            .0
    }

    /// The run and its steps as stored now; panics when there is no such run.
    pub async fn snapshot(&self, run_id: i64) -> RunSnapshot {
        self.store
            .run(taskmaster::store::RunId(run_id))
            .await
            .unwrap()
            .expect("run exists")
    }

    /// Waits until the run is in an end state; panics after `limit`.
    #[track_caller]
    pub fn wait_run(
        &self,
        run_id: i64,
        limit: Duration,
    ) -> impl std::future::Future<Output = RunSnapshot> + '_ {
        let caller = std::panic::Location::caller();
        async move {
            let deadline = Instant::now() + limit;
            loop {
                let snap = self.snapshot(run_id).await;
                if snap.run.state.is_terminal() {
                    return snap;
                }
                if Instant::now() > deadline {
                    let events = self.events(run_id).await;
                    panic!(
                        "{caller}: run {run_id} still {} after {limit:?}; steps: {:?}\ntimeline:\n{}",
                        snap.run.state,
                        snap.steps
                            .iter()
                            .map(|s| (&s.step, s.state))
                            .collect::<Vec<_>>(),
                        events
                            .iter()
                            .map(|e| format!("  {:?} {} {}", e.step, e.kind, e.detail))
                            .collect::<Vec<_>>()
                            .join("\n")
                    );
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }

    /// Waits until `pred` holds for the run.
    pub async fn wait_until(
        &self,
        run_id: i64,
        limit: Duration,
        what: &str,
        pred: impl Fn(&RunSnapshot) -> bool,
    ) -> RunSnapshot {
        let deadline = Instant::now() + limit;
        loop {
            let snap = self.snapshot(run_id).await;
            if pred(&snap) {
                return snap;
            }
            assert!(
                Instant::now() < deadline,
                "run {run_id}: timed out waiting for {what}; {:?}",
                snap.steps
                    .iter()
                    .map(|s| (&s.step, s.state))
                    .collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    pub async fn events(&self, run_id: i64) -> Vec<RunEvent> {
        self.store
            .run_events(taskmaster::store::RunId(run_id))
            .await
            .unwrap()
    }

    /// The timeline's events of `kind` for `step`.
    pub async fn decisions(&self, run_id: i64, step: &str, kind: &str) -> Vec<String> {
        self.events(run_id)
            .await
            .into_iter()
            .filter(|e| e.step.as_deref() == Some(step) && e.kind == kind)
            .map(|e| e.detail)
            .collect()
    }

    pub async fn stop(self) -> (tempfile::TempDir, Arc<SqliteStore>) {
        self.shutdown.cancel();
        self.task.await.unwrap();
        (self.dir, self.store)
    }
}

/// Collects transitions of one run from a subscription until it ends.
pub async fn collect_transitions(
    mut rx: tokio::sync::broadcast::Receiver<Transition>,
    run_id: i64,
    limit: Duration,
) -> Vec<Transition> {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(limit, async {
        while let Ok(t) = rx.recv().await {
            let done = matches!(&t, Transition::Run { run_id: r, state, .. } if *r == taskmaster::store::RunId(run_id) && state.is_terminal());
            out.push(t);
            if done {
                break;
            }
        }
    })
    .await;
    out
}

pub fn is_terminal(s: RunState) -> bool {
    s.is_terminal()
}
