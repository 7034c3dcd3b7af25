//! Property test over random DAGs: every step starts only after its needs
//! ended, each step has one recorded result, and the step states and the
//! run's conclusion match an independent model of GitHub Actions' rules.

mod engine_support;

use std::time::Duration;
use taskmaster::store::RunId;

use engine_support::*;
use proptest::prelude::*;
use taskmaster::agent::{ErrorClass, FailureKind};
use taskmaster::engine::AgentMap;
use taskmaster::store::prelude::*;
use taskmaster::store::{RunState, StepState};

#[derive(Debug, Clone, Copy, PartialEq)]
enum Cond {
    Default,
    Always,
    Failure,
}

#[derive(Debug, Clone)]
struct StepSpec {
    needs: Vec<usize>,
    fails: bool,
    continue_on_error: bool,
    cond: Cond,
    delay_ms: u64,
}

fn dag() -> impl Strategy<Value = Vec<StepSpec>> {
    (2usize..8).prop_flat_map(|n| {
        proptest::collection::vec(
            (
                any::<u8>(),
                proptest::bool::weighted(0.25),
                proptest::bool::weighted(0.2),
                prop_oneof![6 => Just(Cond::Default), 1 => Just(Cond::Always), 1 => Just(Cond::Failure)],
                1u64..15,
            ),
            n,
        )
        .prop_map(|raw| {
            raw.into_iter()
                .enumerate()
                .map(|(i, (mask, fails, coe, cond, delay_ms))| StepSpec {
                    needs: (0..i).filter(|j| mask & (1 << (j % 8)) != 0).collect(),
                    fails,
                    continue_on_error: coe,
                    cond,
                    delay_ms,
                })
                .collect()
        })
    })
}

/// GitHub Actions' rules, written independently of the planner.
fn model(specs: &[StepSpec]) -> (Vec<StepState>, RunState) {
    let mut states: Vec<StepState> = Vec::new();
    let mut failed_up: Vec<bool> = Vec::new();
    for s in specs {
        let upstream = s.needs.iter().any(|&n| {
            failed_up[n] || (states[n] == StepState::Failed && !specs[n].continue_on_error)
        });
        let need_skipped = s.needs.iter().any(|&n| states[n] == StepState::Skipped);
        let runs = match s.cond {
            Cond::Default => !upstream && !need_skipped,
            Cond::Always => true,
            Cond::Failure => upstream,
        };
        states.push(match (runs, s.fails) {
            (false, _) => StepState::Skipped,
            (true, true) => StepState::Failed,
            (true, false) => StepState::Succeeded,
        });
        failed_up.push(upstream);
    }
    let failed = states
        .iter()
        .zip(specs)
        .any(|(st, s)| *st == StepState::Failed && !s.continue_on_error);
    (
        states,
        if failed {
            RunState::Failed
        } else {
            RunState::Succeeded
        },
    )
}

fn yaml(specs: &[StepSpec]) -> String {
    let mut out = String::from("name: random\non: { pull_request: {} }\nsteps:\n");
    for (i, s) in specs.iter().enumerate() {
        let needs: Vec<String> = s.needs.iter().map(|n| format!("s{n}")).collect();
        out.push_str(&format!(
            "  s{i}:\n    agent: worker\n    prompt: \"x\"\n    needs: [{}]\n    continue_on_error: {}\n",
            needs.join(", "),
            s.continue_on_error
        ));
        match s.cond {
            Cond::Default => {}
            Cond::Always => out.push_str("    if: always()\n"),
            Cond::Failure => out.push_str("    if: failure()\n"),
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn random_dags_run_in_order_once_each_with_the_right_conclusion(specs in dag()) {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        rt.block_on(async {
            let agent = Scripted::new("worker", Act::Ok(Duration::from_millis(1), "ok"));
            for (i, s) in specs.iter().enumerate() {
                let act = if s.fails {
                    Act::Fail(Duration::from_millis(s.delay_ms), ErrorClass::Permanent, FailureKind::Agent)
                } else {
                    Act::Ok(Duration::from_millis(s.delay_ms), "ok")
                };
                agent.script(&format!("s{i}"), vec![act]);
            }
            let set = workflows(&[&yaml(&specs)], &["worker"]);
            let t = TestEngine::start(set, AgentMap::new().with_limits(agent.clone(), None, no_breaker()), fast_config()).await;
            let run = t.start_run("random").await;
            let snap = t.wait_run(run, Duration::from_secs(20)).await;
            let (want_steps, want_run) = model(&specs);

            for (i, s) in specs.iter().enumerate() {
                let id = format!("s{i}");
                let got = snap.step(&id).unwrap();
                assert_eq!(got.state, want_steps[i], "step {id} of {specs:#?}");
                let mine = agent.attempts_of(&id);
                assert!(mine.len() <= 1, "step {id} ran {} times", mine.len());
                // Starts only after every need ended.
                if let Some(a) = mine.first() {
                    for n in &s.needs {
                        if let Some(b) = agent.attempts_of(&format!("s{n}")).first() {
                            assert!(a.started >= b.ended, "{id} started before its need s{n} ended");
                        }
                    }
                }
            }
            assert_eq!(snap.run.state, want_run, "{specs:#?}");
            // One recorded result per step, one outcome for the run.
            let events = t.events(run).await;
            for i in 0..specs.len() {
                let id = format!("s{i}");
                let results = events.iter().filter(|e| e.step.as_deref() == Some(id.as_str())
                    && matches!(e.kind.as_str(), "step_succeeded" | "give_up" | "step_skipped")).count();
                assert_eq!(results, 1, "step {id}: {results} recorded results");
            }
            assert_eq!(events.iter().filter(|e| e.kind == "run_finished").count(), 1);
            let attempts = t.store.attempts(RunId(run)).await.unwrap();
            assert!(attempts.iter().all(|a| a.outcome.is_some()));
            t.stop().await;
        });
    }
}
