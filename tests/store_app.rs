//! The App's own records in the store: installations, repository
//! configuration cache, the GitHub-effects outbox and the audit log — on
//! both backends (`sqlite::…`, `postgres::…`; see `tests/backends/mod.rs`).

mod backends;

use backends::Backend;
use taskmaster::store::{
    ActorKind, AuditEntry, EffectKind, EffectOutcome, EffectState, InstallationId,
    InstallationState, NewEffect, RepoConfigRecord,
};

async fn installations_keep_their_latest_state_and_repositories(b: Backend) {
    let store = &b.store;
    assert_eq!(
        store.installation_state(InstallationId(7)).await.unwrap(),
        None
    );
    store
        .set_installation(
            InstallationId(7),
            Some("octo-org"),
            InstallationState::Active,
        )
        .await
        .unwrap();
    store
        .set_installation(InstallationId(7), None, InstallationState::Suspended)
        .await
        .unwrap();
    assert_eq!(
        store.installation_state(InstallationId(7)).await.unwrap(),
        Some(InstallationState::Suspended)
    );
    store
        .update_installation_repositories(
            InstallationId(7),
            &[backends::repo("o/b"), backends::repo("o/a")],
            &[],
        )
        .await
        .unwrap();
    store
        .update_installation_repositories(
            InstallationId(7),
            &[backends::repo("o/a")],
            &[backends::repo("o/b")],
        )
        .await
        .unwrap();
    assert_eq!(
        store
            .installation_repositories(InstallationId(7))
            .await
            .unwrap(),
        vec![backends::repo("o/a")]
    );
}

async fn repo_config_cache_is_replaced_and_forgotten(b: Backend) {
    let store = &b.store;
    assert_eq!(
        store.repo_config(&backends::repo("o/r")).await.unwrap(),
        None
    );
    let first = RepoConfigRecord {
        body: Some("workflows: {}\n".into()),
        error: None,
        fetched_at: 10,
    };
    store
        .set_repo_config(&backends::repo("o/r"), &first)
        .await
        .unwrap();
    let second = RepoConfigRecord {
        body: None,
        error: None,
        fetched_at: 20,
    };
    store
        .set_repo_config(&backends::repo("o/r"), &second)
        .await
        .unwrap();
    assert_eq!(
        store.repo_config(&backends::repo("o/r")).await.unwrap(),
        Some(second)
    );
    store
        .forget_repo_config(&backends::repo("o/r"))
        .await
        .unwrap();
    assert_eq!(
        store.repo_config(&backends::repo("o/r")).await.unwrap(),
        None
    );
}

fn effect(seq: i64, kind: EffectKind, body: &str) -> NewEffect {
    NewEffect {
        source: "delivery-1".into(),
        seq,
        installation_id: Some(InstallationId(3)),
        repository: "o/r".parse().unwrap(),
        kind,
        target: 12,
        body: body.into(),
    }
}

async fn effects_are_queued_once_per_source_and_seq_and_finish(b: Backend) {
    let store = &b.store;
    let batch = vec![
        effect(0, EffectKind::Reaction, "eyes"),
        effect(1, EffectKind::Comment, "> /status\n\nhello"),
    ];
    assert_eq!(store.enqueue_effects(&batch).await.unwrap(), 2);
    // The same delivery handled again adds nothing.
    assert_eq!(store.enqueue_effects(&batch).await.unwrap(), 0);

    let due = store.due_effects(i64::MAX, 10).await.unwrap();
    assert_eq!(due.len(), 2);
    assert_eq!(due[0].kind, EffectKind::Reaction);
    assert_eq!(due[1].body, "> /status\n\nhello");

    store
        .finish_effect(
            due[0].id,
            &EffectOutcome::Retry {
                error: "502".into(),
                retry_at: 1_000,
            },
        )
        .await
        .unwrap();
    store
        .finish_effect(due[1].id, &EffectOutcome::Sent)
        .await
        .unwrap();
    assert!(store.due_effects(999, 10).await.unwrap().is_empty());
    let retried = store.due_effects(1_000, 10).await.unwrap();
    assert_eq!(retried.len(), 1);
    assert_eq!(retried[0].attempts, 1);
    assert_eq!(retried[0].last_error.as_deref(), Some("502"));
    store
        .finish_effect(retried[0].id, &EffectOutcome::DryRun)
        .await
        .unwrap();

    let all = store.effects_for("delivery-1").await.unwrap();
    assert_eq!(
        all.iter().map(|e| e.state).collect::<Vec<_>>(),
        vec![EffectState::DryRun, EffectState::Sent]
    );
}

async fn audit_log_pages_newest_first(b: Backend) {
    let store = &b.store;
    for i in 0..5 {
        let id = store
            .append_audit(&AuditEntry {
                id: 0,
                at: 100 + i,
                actor_kind: ActorKind::GithubUser,
                actor: "octocat".into(),
                action: "command.retry".into(),
                target: Some(format!("run:{i}")),
                outcome: "ok".into(),
                detail: Some(serde_json::json!({ "step": "review" })),
            })
            .await
            .unwrap();
        assert!(id > 0);
    }
    let page = store.audit_entries(None, 2).await.unwrap();
    assert_eq!(
        page.iter().map(|e| e.at).collect::<Vec<_>>(),
        vec![104, 103]
    );
    let next = store.audit_entries(Some(page[1].id), 10).await.unwrap();
    assert_eq!(next.len(), 3);
    assert_eq!(next[0].at, 102);
    assert_eq!(
        next[0].detail,
        Some(serde_json::json!({ "step": "review" }))
    );
    assert_eq!(next[0].actor_kind, ActorKind::GithubUser);
}

/// One installation's backlog never fills a batch: installations take
/// turns, each in its own order.
async fn installations_take_turns_for_due_effects(b: Backend) {
    let store = &b.store;
    let flood: Vec<NewEffect> = (0..100)
        .map(|i| NewEffect {
            source: "flood".into(),
            ..effect(i, EffectKind::Comment, &format!("flood {i}"))
        })
        .collect();
    store.enqueue_effects(&flood).await.unwrap();
    let other = NewEffect {
        source: "other".into(),
        installation_id: Some(InstallationId(4)),
        ..effect(0, EffectKind::Reaction, "eyes")
    };
    store.enqueue_effects(&[other]).await.unwrap();
    let due = store.due_effects(i64::MAX, 10).await.unwrap();
    assert_eq!(due.len(), 10);
    // Turn 1: each installation's oldest; then installation 3 in order.
    assert_eq!(due[0].body, "flood 0");
    assert_eq!(due[1].installation_id, Some(InstallationId(4)));
    let flood_order: Vec<&str> = due[2..].iter().map(|e| e.body.as_str()).collect();
    assert_eq!(
        flood_order,
        (1..=8).map(|i| format!("flood {i}")).collect::<Vec<_>>()
    );
    // At most EFFECT_TURNS of one installation in a batch.
    let due = store.due_effects(i64::MAX, 1000).await.unwrap();
    assert_eq!(
        due.len() as i64,
        taskmaster::store::EFFECT_TURNS + 1,
        "{} due",
        due.len()
    );
}

both_backends!(
    installations_take_turns_for_due_effects,
    installations_keep_their_latest_state_and_repositories,
    repo_config_cache_is_replaced_and_forgotten,
    effects_are_queued_once_per_source_and_seq_and_finish,
    audit_log_pages_newest_first,
);
