//! Rolling upgrades on PostgreSQL: replicas of the previous and the new
//! version run on one database at once, so migrations only expand the
//! schema (new tables, new columns that are nullable or have a default)
//! and a later release contracts what no running version reads any more
//! (see `migrations/README.md`).
//!
//! * Every migration is applied in turn and the catalog compared before
//!   and after: no table or column disappears or changes type, no nullable
//!   column becomes NOT NULL, no column is added NOT NULL without a default.
//! * The real binary starts on a schema that a newer version's migration
//!   expanded (a new nullable column, a NOT NULL column with a default, a
//!   new table, recorded as applied) — as a replica of the previous version
//!   restarting mid-upgrade does — and takes a delivery through to a run
//!   and its steps, whose new columns get their defaults.

mod backends;
mod harness;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use sqlx::Connection;
use taskmaster::store::{PgStore, PoolSettings, Store};

/// `(table, column)` → `(type, nullable, has a default)`.
type Catalog = BTreeMap<(String, String), (String, bool, bool)>;

async fn catalog(conn: &mut sqlx::PgConnection) -> Catalog {
    let rows: Vec<(String, String, String, String, Option<String>)> = sqlx::query_as(
        "SELECT table_name::text, column_name::text, data_type::text, is_nullable::text, \
                column_default::text \
         FROM information_schema.columns \
         WHERE table_schema = current_schema() AND table_name <> '_sqlx_migrations'",
    )
    .fetch_all(&mut *conn)
    .await
    .unwrap();
    rows.into_iter()
        .map(|(t, c, ty, nullable, default)| ((t, c), (ty, nullable == "YES", default.is_some())))
        .collect()
}

/// Migrations allowed to contract (drop, rename, tighten), each with why
/// no running version still needs what it removes. None so far.
const CONTRACTIONS: &[(&str, &str)] = &[];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_migration_only_expands_the_schema() {
    let Some(url) = backends::pg_schema_url().await else {
        return;
    };
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations/postgres");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "sql"))
        .collect();
    files.sort();
    assert!(files.len() >= 15, "{} migrations", files.len());
    let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
    let mut before = catalog(&mut conn).await;
    let mut problems = Vec::new();
    for file in &files {
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        let sql = std::fs::read_to_string(file).unwrap();
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let after = catalog(&mut conn).await;
        let allowed = CONTRACTIONS.iter().any(|(m, _)| *m == name);
        let tables_before: std::collections::BTreeSet<&str> =
            before.keys().map(|(t, _)| t.as_str()).collect();
        for ((table, column), (ty, nullable, _)) in &before {
            match after.get(&(table.clone(), column.clone())) {
                None => problems.push(format!("{name}: drops {table}.{column}")),
                Some((new_ty, new_nullable, new_default)) => {
                    if new_ty != ty {
                        problems.push(format!(
                            "{name}: changes {table}.{column} from {ty} to {new_ty}"
                        ));
                    }
                    if *nullable && !new_nullable && !new_default {
                        problems.push(format!(
                            "{name}: makes {table}.{column} NOT NULL (the previous version may write NULL)"
                        ));
                    }
                }
            }
        }
        for ((table, column), (_, nullable, default)) in &after {
            let added = !before.contains_key(&(table.clone(), column.clone()));
            if added && tables_before.contains(table.as_str()) && !nullable && !default {
                problems.push(format!(
                    "{name}: adds {table}.{column} NOT NULL without a default \
                     (the previous version's INSERTs do not name it)"
                ));
            }
        }
        if allowed {
            problems.retain(|p| !p.starts_with(&name));
        }
        before = after;
    }
    assert!(
        problems.is_empty(),
        "migrations must only expand the schema while two versions share it \
         (migrations/README.md):\n{}",
        problems.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn this_version_runs_on_a_schema_a_newer_version_expanded() {
    let Some(url) = backends::pg_schema_url().await else {
        return;
    };
    PgStore::open(&url, &PoolSettings::default())
        .await
        .unwrap()
        .migrate()
        .await
        .unwrap();
    // What a newer release's migration might add, recorded as sqlx records
    // an applied migration this build does not know.
    let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
    sqlx::raw_sql(
        "ALTER TABLE runs ADD COLUMN future_note TEXT; \
         ALTER TABLE steps ADD COLUMN future_weight INTEGER NOT NULL DEFAULT 1; \
         CREATE TABLE future_things (id BIGSERIAL PRIMARY KEY, note TEXT); \
         INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES (9999, 'a newer release', TRUE, '\\x00', 1);",
    )
    .execute(&mut conn)
    .await
    .unwrap();

    // This binary starts on it, as a replica of the previous version does
    // when it restarts during a rolling upgrade, and works.
    let service = harness::ChildService::start_url(&url, &[]);
    assert!(
        service.logs_text().contains("newer than this build"),
        "the start-up says the schema is ahead: {}",
        service.logs_text()
    );
    let client = taskmaster::agent::http_client_builder().build().unwrap();
    let body = harness::fixture("pull_request.opened.json");
    let (status, _) = harness::post(
        &client,
        &service.webhook_url(),
        Some("pull_request"),
        Some("rolling-1"),
        &body,
        Some(&harness::sign(harness::SECRET, &body)),
    )
    .await;
    assert_eq!(status, 202);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (runs, steps): (i64, i64) = sqlx::query_as(
            "SELECT (SELECT COUNT(*) FROM runs WHERE future_note IS NULL), \
                    (SELECT COUNT(*) FROM steps WHERE future_weight = 1)",
        )
        .fetch_one(&mut conn)
        .await
        .unwrap();
        if runs > 0 && steps > 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no run from the delivery: {}",
            service.logs_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ready = client
        .get(format!("{}/api/ready", service.base_url))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
}
