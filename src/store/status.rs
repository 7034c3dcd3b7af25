//! Where a database's schema stands ([`migration_status`]), read without
//! opening a store: no lock taken, nothing created or migrated, so
//! `taskmaster doctor` can ask while the service runs.

use super::{StoreError, is_postgres_url};

/// The migrations a database has and lacks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MigrationStatus {
    /// Versions applied, oldest first.
    pub applied: Vec<i64>,
    /// Versions this build has and the database lacks, with descriptions.
    pub pending: Vec<(i64, String)>,
    /// Versions the database has and this build does not know (a newer
    /// taskmaster migrated it).
    pub unknown: Vec<i64>,
    /// A migration that failed part-way, if any.
    pub failed: Option<i64>,
}

fn compare(known: &sqlx::migrate::Migrator, applied: Vec<(i64, bool)>) -> MigrationStatus {
    let failed = applied.iter().find(|(_, ok)| !ok).map(|(v, _)| *v);
    let applied: Vec<i64> = applied.into_iter().map(|(v, _)| v).collect();
    let known_versions: Vec<i64> = known.iter().map(|m| m.version).collect();
    MigrationStatus {
        pending: known
            .iter()
            .filter(|m| !m.migration_type.is_down_migration() && !applied.contains(&m.version))
            .map(|m| (m.version, m.description.to_string()))
            .collect(),
        unknown: applied
            .iter()
            .copied()
            .filter(|v| !known_versions.contains(v))
            .collect(),
        applied,
        failed,
    }
}

/// The schema of the database at `url` against this build's migrations.
///
/// Errors: the database cannot be reached or opened (a SQLite file that
/// does not exist is [`StoreError::UnsupportedUrl`] with what to do).
pub async fn migration_status(url: &str) -> Result<MigrationStatus, StoreError> {
    if is_postgres_url(url) {
        use sqlx::Connection as _;
        let mut conn = sqlx::PgConnection::connect(url).await?;
        let exists: (bool,) = sqlx::query_as("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
            .fetch_one(&mut conn)
            .await?;
        let applied: Vec<(i64, bool)> = if exists.0 {
            sqlx::query_as("SELECT version, success FROM _sqlx_migrations ORDER BY version")
                .fetch_all(&mut conn)
                .await?
        } else {
            Vec::new()
        };
        let _ = conn.close().await;
        return Ok(compare(super::postgres::migrator(), applied));
    }
    let Some(path) = super::sqlite::file_of(url) else {
        return Ok(compare(super::sqlite::migrator(), Vec::new()));
    };
    if !path.exists() {
        return Err(StoreError::UnsupportedUrl {
            url: url.to_owned(),
            hint: "no database file there yet: `taskmaster migrate` (or `serve`) creates it",
        });
    }
    let applied = tokio::task::spawn_blocking(move || -> Result<Vec<(i64, bool)>, StoreError> {
        let conn = rusqlite::Connection::open_with_flags(
            &path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        let exists: bool = conn.query_row(
            "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' \
             AND name = '_sqlx_migrations')",
            [],
            |r| r.get(0),
        )?;
        if !exists {
            return Ok(Vec::new());
        }
        let mut statement =
            conn.prepare("SELECT version, success FROM _sqlx_migrations ORDER BY version")?;
        let rows = statement
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    })
    .await
    .map_err(|e| StoreError::Durability(format!("reading the schema panicked: {e}")))??;
    Ok(compare(super::sqlite::migrator(), applied))
}
