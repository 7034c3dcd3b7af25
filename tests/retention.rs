//! Retention on both backends: the pruner deletes exactly what is past
//! retention and keeps what a live run needs; a pruned delivery cannot be
//! redelivered; and a large SQLite database shrinks on disk once pruned.

mod backends;

use std::str::FromStr;
use std::time::Duration;

use backends::{Backend, Kind};
use bytes::Bytes;
use sqlx::Connection;
use taskmaster::store::prelude::*;
use taskmaster::store::retention::{self, Cutoffs, PruneCounts, RetentionSettings};
use taskmaster::store::{
    ActorKind, AuditEntry, DeliveryState, EffectKind, EffectOutcome, EncodedPayload, NewDelivery,
    NewEffect, NewRun, NewStep, StoreError, now_ms,
};

const DAY: i64 = 24 * 60 * 60 * 1000;

fn delivery(id: &str, days_ago: i64, state: DeliveryState) -> NewDelivery {
    NewDelivery {
        delivery_id: id.into(),
        event: "pull_request".into(),
        action: Some("opened".into()),
        hook_id: Some(1),
        installation_id: Some(taskmaster::ids::InstallationId(42)),
        repository: Some("octo/repo".into()),
        sender_id: Some(7),
        sender_login: Some("octocat".into()),
        payload: EncodedPayload::encode(Bytes::from(format!("{{\"id\":\"{id}\"}}"))),
        received_at: now_ms() - days_ago * DAY,
        state,
    }
}

fn run_of(delivery: &str) -> NewRun {
    NewRun {
        workflow: "review".into(),
        delivery_id: delivery.into(),
        event: "pull_request".into(),
        repository: Some("octo/repo".parse().unwrap()),
        subject_number: Some(7),
        head_sha: None,
        classification: None,
        reason: "test".into(),
        context: serde_json::json!({}),
        priority: taskmaster::classify::Priority::Medium,
        concurrency_group: None,
        cancel_in_progress: false,
        max_parallel: None,
        timeout: None,
        needs_approval: None,
        steps: vec![NewStep {
            step: "work".into(),
            needs: vec![],
            agent: "worker".into(),
            continue_on_error: false,
            rank_ms: 1000,
            runs_when_cancelled: false,
        }],
    }
}

/// Runs `sql` on the backend's database (to age rows; the store has no
/// reason to let anyone set times).
async fn exec(b: &Backend, sql: &str) {
    match b.kind {
        Kind::Sqlite => {
            let path = b.url.strip_prefix("sqlite://").unwrap_or(&b.url);
            let c = rusqlite::Connection::open(path).unwrap();
            c.busy_timeout(Duration::from_secs(10)).unwrap();
            c.execute_batch(sql).unwrap();
        }
        Kind::Postgres => {
            let options = sqlx::postgres::PgConnectOptions::from_str(&b.url).unwrap();
            let mut c = sqlx::PgConnection::connect_with(&options).await.unwrap();
            sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()))
                .execute(&mut c)
                .await
                .unwrap();
        }
    }
}

/// Ends run `id` `days_ago` days ago with an output on its step.
async fn finish(b: &Backend, id: i64, days_ago: i64) {
    let at = now_ms() - days_ago * DAY;
    exec(
        b,
        &format!(
            "UPDATE runs SET state = 'succeeded', desired_state = 'running', \
             started_at = {at}, finished_at = {at} WHERE id = {id}"
        ),
    )
    .await;
    exec(
        b,
        &format!(
            "UPDATE steps SET state = 'succeeded', output = 'the review', finished_at = {at} \
             WHERE run_id = {id}"
        ),
    )
    .await;
}

async fn the_pruner_deletes_what_is_past_retention_and_keeps_what_live_runs_need(b: Backend) {
    let s = &b.store;
    // Deliveries, in the order they arrived (ids follow arrival times).
    s.insert_deliveries(&[
        delivery("ancient", 400, DeliveryState::Done),
        delivery("old-done", 100, DeliveryState::Done),
        delivery("old-failed", 40, DeliveryState::Failed),
        delivery("old-queued", 40, DeliveryState::Queued),
        delivery("old-live-run", 40, DeliveryState::Done),
        delivery("recent", 1, DeliveryState::Done),
    ])
    .await
    .unwrap();
    let created = s
        .create_runs(&[
            run_of("old-live-run"),
            run_of("recent"),
            run_of("ancient"),
            run_of("old-done"),
        ])
        .await
        .unwrap();
    let [live, recent, ancient, old] = [0, 1, 2, 3].map(|i| created[i].run_id);
    finish(&b, recent.0, 1).await;
    finish(&b, ancient.0, 400).await;
    finish(&b, old.0, 100).await;
    // Effects: one sent 40 days ago, one still pending from then.
    s.enqueue_effects(&[
        NewEffect {
            source: "old-failed".into(),
            seq: 0,
            installation_id: Some(taskmaster::ids::InstallationId(42)),
            repository: "octo/repo".parse().unwrap(),
            kind: EffectKind::Comment,
            target: 7,
            body: "sent".into(),
        },
        NewEffect {
            source: "old-failed".into(),
            seq: 1,
            installation_id: Some(taskmaster::ids::InstallationId(42)),
            repository: "octo/repo".parse().unwrap(),
            kind: EffectKind::Comment,
            target: 7,
            body: "pending".into(),
        },
    ])
    .await
    .unwrap();
    let effects = s.effects_for("old-failed").await.unwrap();
    s.finish_effect(effects[0].id, &EffectOutcome::Sent)
        .await
        .unwrap();
    exec(
        &b,
        &format!(
            "UPDATE github_effects SET created_at = {}",
            now_ms() - 40 * DAY
        ),
    )
    .await;
    for (days_ago, action) in [(400, "token.create"), (1, "run.cancel")] {
        s.append_audit(&AuditEntry {
            id: 0,
            at: now_ms() - days_ago * DAY,
            actor_kind: ActorKind::GithubUser,
            actor: "octocat".into(),
            action: action.into(),
            target: None,
            outcome: "ok".into(),
            detail: None,
        })
        .await
        .unwrap();
    }

    let settings = RetentionSettings {
        audit_days: Some(365),
        ..RetentionSettings::default()
    };
    let cutoffs = Cutoffs::at(&settings, now_ms());
    let expected = PruneCounts {
        // old-failed, old-done and ancient; not the
        // queued one, nor the one whose run is live.
        payloads: 3,
        effects: 1,
        // `old` (100 days); `ancient` too, before its row goes.
        outputs: 2,
        // `ancient` only: timelines are kept a year.
        events: 1,
        runs: 1,
        deliveries: 1,
        audit: 1,
    };
    assert_eq!(s.prunable(&cutoffs).await.unwrap(), expected);
    let pruned = retention::prune(&**s, &cutoffs, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(pruned, expected);
    assert_eq!(s.prunable(&cutoffs).await.unwrap(), PruneCounts::default());

    // What a live run or the queue needs is still there.
    assert!(s.delivery("old-queued").await.unwrap().is_some());
    assert!(s.delivery("old-live-run").await.unwrap().is_some());
    assert!(s.delivery("recent").await.unwrap().is_some());
    assert!(s.run(live).await.unwrap().is_some());
    // Outputs: cleared 100 days on, kept a day on; the run itself stays.
    let old_run = s.run(old).await.unwrap().expect("kept a year");
    assert_eq!(old_run.steps[0].output, None);
    assert!(
        !s.run_events(old).await.unwrap().is_empty(),
        "timelines stay a year"
    );
    let recent_run = s.run(recent).await.unwrap().unwrap();
    assert_eq!(recent_run.steps[0].output.as_deref(), Some("the review"));
    assert!(s.run(ancient).await.unwrap().is_none());
    assert!(s.run_events(ancient).await.unwrap().is_empty());
    // The pending effect stays; the audit keeps the recent entry.
    let effects = s.effects_for("old-failed").await.unwrap();
    assert_eq!(effects.len(), 1);
    assert_eq!(effects[0].body, "pending");
    let audit = s.audit_entries(None, 10).await.unwrap();
    assert_eq!(audit.len(), 1);
    assert_eq!(audit[0].action, "run.cancel");

    // A pruned delivery cannot be redelivered, and says why.
    match s.requeue_delivery("old-failed", now_ms()).await {
        Err(e @ StoreError::Pruned { .. }) => {
            assert!(e.to_string().contains("--keep-payloads-days"), "{e}")
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    // Nothing else changes on a second pass.
    let again = retention::prune(&**s, &cutoffs, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(again, PruneCounts::default());
    assert!(s.database_size().await.unwrap().bytes > 0);
}

both_backends!(the_pruner_deletes_what_is_past_retention_and_keeps_what_live_runs_need);

/// 100,000 deliveries past retention: pruned in batches, the SQLite file
/// gives the space back (incremental vacuum).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_thousand_delivery_sqlite_database_shrinks_on_disk_after_pruning() {
    let b = backends::sqlite().await;
    let s = &b.store;
    let body = vec![b'x'; 400];
    for batch in 0..100 {
        let rows: Vec<NewDelivery> = (0..1000)
            .map(|i| {
                let mut d = delivery(&format!("d-{batch}-{i}"), 40, DeliveryState::Done);
                // Distinct, incompressible-enough bodies under the 512-byte
                // compression threshold.
                let mut raw = body.clone();
                raw.extend_from_slice(d.delivery_id.as_bytes());
                d.payload = EncodedPayload::encode(Bytes::from(raw));
                d
            })
            .collect();
        s.insert_deliveries(&rows).await.unwrap();
    }
    let before = s.database_size().await.unwrap();
    let file = b.url.trim_start_matches("sqlite://").to_owned();
    let file_before = std::fs::metadata(&file).unwrap().len();
    let settings = RetentionSettings::default();
    let cutoffs = Cutoffs::at(&settings, now_ms());
    let started = std::time::Instant::now();
    let pruned = retention::prune(&**s, &cutoffs, Duration::ZERO)
        .await
        .unwrap();
    let batches = 100_000 / retention::PRUNE_BATCH as u128;
    eprintln!(
        "pruned 100,000 payloads in {} ms ({} µs a batch of {}, vacuum included)",
        started.elapsed().as_millis(),
        started.elapsed().as_micros() / batches,
        retention::PRUNE_BATCH
    );
    assert_eq!(pruned.payloads, 100_000);
    let after = s.database_size().await.unwrap();
    eprintln!(
        "database: {} bytes before, {} after ({} free); file {} bytes before",
        before.bytes, after.bytes, after.free_bytes, file_before
    );
    assert!(after.bytes * 2 < before.bytes, "{before:?} → {after:?}");
    // The file itself shrinks once the log is checkpointed into it (the
    // store's checkpointer runs behind the writer).
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let len = std::fs::metadata(&file).unwrap().len();
        if len * 2 < file_before {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the file stayed at {len} bytes (was {file_before})"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A file made before incremental vacuum was switched on is converted by
/// `taskmaster prune` (and only then: a running service never rewrites
/// the file), which prints what it pruned and the sizes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn taskmaster_prune_converts_an_older_file_and_prints_what_went() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("old.db").display());
    {
        // An older file: tables exist before auto_vacuum could be set.
        let c = rusqlite::Connection::open(dir.path().join("old.db")).unwrap();
        c.execute_batch("CREATE TABLE before_upgrade (x INTEGER)")
            .unwrap();
        c.close().unwrap();
    }
    {
        let store = taskmaster::store::SqliteStore::open(&url).await.unwrap();
        store.migrate().await.unwrap();
        store
            .insert_deliveries(&[delivery("old", 40, DeliveryState::Done)])
            .await
            .unwrap();
        assert_eq!(store.reclaim_space(10).await.unwrap(), 0);
    }
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_taskmaster"))
            .args(["--database-url", &url])
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let dry = run(&["prune", "--dry-run"]);
    assert!(
        dry.contains("would prune        1 payloads   (older than 30 days)"),
        "{dry}"
    );
    let done = run(&["prune"]);
    assert!(done.contains("pruned        1 payloads"), "{done}");
    assert!(
        done.contains("switched the database to incremental vacuum"),
        "{done}"
    );
    let again = run(&["prune"]);
    assert!(!again.contains("switched"), "{again}");
    assert!(again.contains("pruned        0 payloads"), "{again}");
    let store = taskmaster::store::SqliteStore::open(&url).await.unwrap();
    assert!(store.delivery("old").await.unwrap().is_none());
}
