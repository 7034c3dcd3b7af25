//! Both store backends for one set of tests.
//!
//! A test body is a generic `async fn(Backend)`; [`both_backends!`] turns
//! each into `sqlite::NAME` and `postgres::NAME` test functions, so neither
//! backend drifts from the other.
//!
//! PostgreSQL tests need a server: `TEST_DATABASE_URL` names a database the
//! tests may create schemas in (each test gets a fresh schema of its own, so
//! tests run in parallel). When it is unset the PostgreSQL tests **fail**
//! with instructions, unless `TASKMASTER_SKIP_PG=1` is set for a quick local
//! run (CI never sets it; `scripts/test.sh` starts a server of its own).
#![allow(dead_code)] // each test crate uses a different part

use std::str::FromStr;
use std::sync::Arc;

use sqlx::postgres::PgConnectOptions;
use taskmaster::store::prelude::*;
use taskmaster::store::{PgStore, PoolSettings, SqliteStore, Store};

/// A repository name for the store's lookups (`owner/name`; panics on
/// anything else).
pub fn repo(full_name: &str) -> taskmaster::github::RepoName {
    taskmaster::github::RepoName::parse(full_name).expect("owner/name")
}

/// Which database a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Sqlite,
    Postgres,
}

/// A migrated, empty store of one backend, and how to reach it again.
pub struct Backend {
    pub kind: Kind,
    pub store: Arc<dyn RunStore>,
    /// A `DATABASE_URL` for another process (or a second store) on the
    /// same data.
    pub url: String,
    /// SQLite's file lives here.
    _dir: Option<tempfile::TempDir>,
}

impl Backend {
    /// True for a store several processes may share (PostgreSQL).
    pub fn shared(&self) -> bool {
        self.kind == Kind::Postgres
    }

    /// A second, independent store (its own pool) on the same data: a
    /// second replica.
    pub async fn reopen(&self) -> Arc<dyn RunStore> {
        match self.kind {
            Kind::Sqlite => Arc::new(SqliteStore::open(&self.url).await.unwrap()),
            Kind::Postgres => Arc::new(
                PgStore::open(&self.url, &PoolSettings::default())
                    .await
                    .unwrap(),
            ),
        }
    }
}

/// A fresh SQLite store in a temporary directory.
pub async fn sqlite() -> Backend {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("t.db").display());
    let store = SqliteStore::open(&url).await.unwrap();
    store.migrate().await.unwrap();
    Backend {
        kind: Kind::Sqlite,
        store: Arc::new(store),
        url,
        _dir: Some(dir),
    }
}

/// The instructions printed when `TEST_DATABASE_URL` is missing.
pub const PG_HELP: &str = "PostgreSQL tests need a database: set TEST_DATABASE_URL, e.g.\n\
    \n    TEST_DATABASE_URL=postgres://postgres@127.0.0.1:5432/taskmaster_test cargo test\n\
    \n(each test creates a schema of its own in it), or run `bash scripts/test.sh`, which \
    starts a throwaway PostgreSQL server when TEST_DATABASE_URL is unset. For a quick local \
    run without PostgreSQL, TASKMASTER_SKIP_PG=1 skips these tests (CI must not set it).";

/// The PostgreSQL server URL for tests; `None` when skipping is explicitly
/// asked for. Panics with [`PG_HELP`] otherwise.
pub fn pg_url() -> Option<String> {
    match std::env::var("TEST_DATABASE_URL") {
        Ok(url) if !url.trim().is_empty() => Some(url),
        _ if std::env::var("TASKMASTER_SKIP_PG").as_deref() == Ok("1") => {
            eprintln!("TASKMASTER_SKIP_PG=1: skipping a PostgreSQL test");
            None
        }
        _ => panic!("{PG_HELP}"),
    }
}

/// A fresh schema of its own in the test database; returns a URL whose
/// connections use it. `None` when skipping (see [`pg_url`]).
pub async fn pg_schema_url() -> Option<String> {
    let base = pg_url()?;
    let schema = format!("t_{}", uuid::Uuid::new_v4().simple());
    let options = PgConnectOptions::from_str(&base)
        .unwrap_or_else(|e| panic!("TEST_DATABASE_URL does not parse: {e}\n\n{PG_HELP}"));
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect_with(options)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to TEST_DATABASE_URL: {e}\n\n{PG_HELP}"));
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    let sep = if base.contains('?') { '&' } else { '?' };
    Some(format!("{base}{sep}options=-c%20search_path%3D{schema}"))
}

/// A fresh PostgreSQL store in a schema of its own; `None` when skipping.
pub async fn postgres() -> Option<Backend> {
    let url = pg_schema_url().await?;
    let store = PgStore::open(&url, &PoolSettings::default()).await.unwrap();
    store.migrate().await.unwrap();
    Some(Backend {
        kind: Kind::Postgres,
        store: Arc::new(store),
        url,
        _dir: None,
    })
}

/// `both_backends!(a, b)` makes `sqlite::a`, `postgres::a`, … from the
/// `async fn a(backend: Backend)` bodies in the calling module.
#[macro_export]
macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::backends::sqlite().await).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let Some(backend) = super::backends::postgres().await else { return };
                    super::$name(backend).await;
                }
            )*
        }
    };
}

/// Keeps `Store` in scope for callers that only glob-import this module.
pub fn as_store(store: &Arc<dyn RunStore>) -> Arc<dyn Store> {
    store.clone() as Arc<dyn Store>
}
