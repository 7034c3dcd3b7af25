//! The SQLite and PostgreSQL schemas describe the same tables and columns,
//! with the same nullability and the same kind of value in each column:
//! both are migrated from scratch and their catalogs compared. A migration
//! added to one backend and not the other fails here, naming what differs.

mod backends;

use std::collections::BTreeMap;

/// `(table, column)` → `(kind, nullable)`.
type Columns = BTreeMap<(String, String), (&'static str, bool)>;

/// The kind of value a column holds, across both type systems.
fn kind(declared: &str) -> &'static str {
    let t = declared.to_ascii_lowercase();
    match t.as_str() {
        "integer" | "bigint" | "int" | "int8" | "int4" | "smallint" => "integer",
        "boolean" | "bool" => "boolean",
        "text" | "character varying" | "varchar" => "text",
        "blob" | "bytea" => "bytes",
        "real" | "double precision" | "float8" | "numeric" => "real",
        "jsonb" | "json" => "json",
        _ => "other",
    }
}

async fn sqlite_columns(url: &str) -> Columns {
    let conn = rusqlite::Connection::open(url.trim_start_matches("sqlite://")).unwrap();
    let mut statement = conn
        .prepare(
            "SELECT m.name, p.name, p.type, p.\"notnull\", p.pk \
             FROM sqlite_master m, pragma_table_info(m.name) p \
             WHERE m.type = 'table' AND m.name NOT LIKE 'sqlite_%' \
               AND m.name <> '_sqlx_migrations'",
        )
        .unwrap();
    let rows: Vec<(String, String, String, bool, i64)> = statement
        .query_map([], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    rows.into_iter()
        .map(|(table, column, declared, not_null, pk)| {
            // SQLite's INTEGER PRIMARY KEY is the rowid: never NULL, though
            // the catalog does not say so.
            ((table, column), (kind(&declared), !(not_null || pk > 0)))
        })
        .collect()
}

async fn postgres_columns(url: &str) -> Columns {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
    let rows: Vec<(String, String, String, String)> = sqlx::query_as(
        "SELECT table_name::text, column_name::text, data_type::text, is_nullable::text \
         FROM information_schema.columns \
         WHERE table_schema = current_schema() AND table_name <> '_sqlx_migrations'",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    rows.into_iter()
        .map(|(table, column, declared, nullable)| {
            ((table, column), (kind(&declared), nullable == "YES"))
        })
        .collect()
}

#[tokio::test]
async fn sqlite_and_postgresql_schemas_have_the_same_tables_and_columns() {
    let Some(pg) = backends::postgres().await else {
        return;
    };
    let sqlite = backends::sqlite().await;
    let lite = sqlite_columns(&sqlite.url).await;
    let pg = postgres_columns(&pg.url).await;
    assert!(
        lite.len() > 50,
        "the SQLite catalog read {} columns",
        lite.len()
    );
    let mut differences = Vec::new();
    for (key, l) in &lite {
        match pg.get(key) {
            None => differences.push(format!("{}.{}: only in SQLite", key.0, key.1)),
            Some(p) => {
                // SQLite keeps booleans as integers 0/1 and JSON as text.
                let same_kind = l.0 == p.0
                    || (l.0 == "integer" && p.0 == "boolean")
                    || (l.0 == "text" && p.0 == "json");
                if !same_kind {
                    differences.push(format!(
                        "{}.{}: {} in SQLite, {} in PostgreSQL",
                        key.0, key.1, l.0, p.0
                    ));
                }
                if l.1 != p.1 {
                    differences.push(format!(
                        "{}.{}: {} in SQLite, {} in PostgreSQL",
                        key.0,
                        key.1,
                        if l.1 { "nullable" } else { "NOT NULL" },
                        if p.1 { "nullable" } else { "NOT NULL" },
                    ));
                }
            }
        }
    }
    for key in pg.keys().filter(|k| !lite.contains_key(*k)) {
        differences.push(format!("{}.{}: only in PostgreSQL", key.0, key.1));
    }
    assert!(
        differences.is_empty(),
        "the schemas differ:\n{}",
        differences.join("\n")
    );
}
