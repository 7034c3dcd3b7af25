//! How good are the predicted run times? Generated histories with known
//! step distributions (log-normal, a few spreads, a few history lengths)
//! over the DAG review → (lint ∥ test) → report: the estimated p50 and p90
//! of each step against the true ones, and the leave-one-out accuracy the
//! insights page shows (median error of the predicted p50, share of runs
//! within the predicted p90). Figures: benches/README.md, "Insights".
//!
//! Usage: cargo run --release --example insights_accuracy

use std::collections::HashMap;

use taskmaster::insights::predict::{DagStep, Predictor, accuracy};
use taskmaster::insights::{AttemptFact, History, RunFact};

/// Step medians, ms.
const MEDIANS: [(&str, f64); 4] = [
    ("review", 240_000.0),
    ("lint", 30_000.0),
    ("test", 120_000.0),
    ("report", 20_000.0),
];

fn dag() -> Vec<DagStep> {
    let step = |id: &str, needs: &[&str]| DagStep {
        id: id.into(),
        needs: needs.iter().map(|s| s.to_string()).collect(),
        agent: "claude".into(),
        timeout_ms: Some(1_800_000),
    };
    vec![
        step("review", &[]),
        step("lint", &["review"]),
        step("test", &["review"]),
        step("report", &["lint", "test"]),
    ]
}

/// A log-normal sample around `median` with spread `sigma` (Box–Muller).
fn sample(rng: &mut fastrand::Rng, median: f64, sigma: f64) -> i64 {
    let (u, v) = (rng.f64().max(1e-12), rng.f64());
    let z = (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos();
    (median * (sigma * z).exp()) as i64
}

fn history(runs: i64, sigma: f64, seed: u64) -> History {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut h = History::default();
    for id in 1..=runs {
        let d: HashMap<&str, i64> = MEDIANS
            .iter()
            .map(|(s, m)| (*s, sample(&mut rng, *m, sigma)))
            .collect();
        let work = d["review"] + d["lint"].max(d["test"]) + d["report"];
        h.runs.push(RunFact {
            id,
            workflow: "review".into(),
            repository: Some("octo/widgets".into()),
            state: taskmaster::store::RunState::Succeeded,
            conclusion: None,
            created_at: id * 10_000_000,
            started_at: Some(id * 10_000_000),
            finished_at: Some(id * 10_000_000 + work),
            cost_usd: 0.0,
        });
        for (s, _) in MEDIANS {
            h.attempts.push(AttemptFact {
                run_id: id,
                workflow: "review".into(),
                step: s.into(),
                number: 1,
                agent: "claude".into(),
                primary_agent: "claude".into(),
                started_at: 0,
                finished_at: Some(d[s]),
                outcome: Some(taskmaster::store::AttemptEnd::Succeeded),
                error_kind: None,
                error: None,
                duration_ms: Some(d[s]),
                cost_usd: None,
            });
        }
    }
    h.runs.reverse();
    h
}

fn main() {
    // z of the 90th percentile of a standard normal.
    const Z90: f64 = 1.281_551_6;
    println!(
        "| spread σ | runs of history | step p50 error (median over steps) | step p90 error | run p50 median error (leave-one-out) | runs within predicted p90 |"
    );
    println!("| --- | --- | --- | --- | --- | --- |");
    for sigma in [0.2, 0.4, 0.8] {
        for runs in [10, 50, 200] {
            let (mut p50_errors, mut p90_errors) = (Vec::new(), Vec::new());
            let (mut loo_error, mut coverage) = (Vec::new(), Vec::new());
            for seed in 0..20u64 {
                let h = history(runs, sigma, seed * 7919 + runs as u64);
                let p = Predictor::from_history(&h, "review", None);
                for (step, median) in MEDIANS {
                    let s = dag().into_iter().find(|d| d.id == step).unwrap();
                    let e = p.step(Some("octo/widgets"), &s);
                    p50_errors.push((e.p50_ms as f64 - median).abs() / median);
                    let p90 = median * (sigma * Z90).exp();
                    p90_errors.push((e.p90_ms as f64 - p90).abs() / p90);
                }
                let a = accuracy(&h, "review", &dag());
                loo_error.push(a.median_error.unwrap_or(f64::NAN));
                coverage.push(a.p90_coverage.unwrap_or(f64::NAN));
            }
            let median = |v: &mut Vec<f64>| {
                v.sort_by(f64::total_cmp);
                v[v.len() / 2]
            };
            println!(
                "| {sigma} | {runs} | {:.1} % | {:.1} % | {:.1} % | {:.0} % |",
                median(&mut p50_errors) * 100.0,
                median(&mut p90_errors) * 100.0,
                median(&mut loo_error) * 100.0,
                median(&mut coverage) * 100.0,
            );
        }
    }
}
