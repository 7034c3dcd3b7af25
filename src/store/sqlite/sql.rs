//! One call per query over rusqlite, for the SQLite store's files: a
//! statement prepared once per connection (the statement cache), its
//! parameters bound by position (`?1`, `?2`, …), its rows decoded by
//! [`FromSqliteRow`] (a row type, or a tuple of columns).

use rusqlite::{Connection, OptionalExtension, Params};

use crate::store::StoreError;
use crate::store::rows::FromSqliteRow;

/// Queries on a connection or a transaction (which derefs to one).
pub(in crate::store) trait Sql {
    /// Every row `sql` returns.
    ///
    /// Errors: the statement does not prepare or run, or a row does not
    /// decode.
    fn all<T: FromSqliteRow>(&self, sql: &str, params: impl Params) -> Result<Vec<T>, StoreError>;

    /// The first row `sql` returns, if any.
    ///
    /// Errors: as [`Sql::all`].
    fn opt<T: FromSqliteRow>(
        &self,
        sql: &str,
        params: impl Params,
    ) -> Result<Option<T>, StoreError>;

    /// The first row `sql` returns.
    ///
    /// Errors: as [`Sql::all`], and `QueryReturnedNoRows` when there is none.
    fn one<T: FromSqliteRow>(&self, sql: &str, params: impl Params) -> Result<T, StoreError>;

    /// Runs `sql`; the number of rows it changed.
    ///
    /// Errors: the statement does not prepare or run.
    fn exec(&self, sql: &str, params: impl Params) -> Result<u64, StoreError>;
}

impl Sql for Connection {
    fn all<T: FromSqliteRow>(&self, sql: &str, params: impl Params) -> Result<Vec<T>, StoreError> {
        Ok(self
            .prepare_cached(sql)?
            .query_map(params, T::from_sqlite_row)?
            .collect::<Result<_, _>>()?)
    }

    fn opt<T: FromSqliteRow>(
        &self,
        sql: &str,
        params: impl Params,
    ) -> Result<Option<T>, StoreError> {
        Ok(self
            .prepare_cached(sql)?
            .query_row(params, T::from_sqlite_row)
            .optional()?)
    }

    fn one<T: FromSqliteRow>(&self, sql: &str, params: impl Params) -> Result<T, StoreError> {
        Ok(self
            .prepare_cached(sql)?
            .query_row(params, T::from_sqlite_row)?)
    }

    fn exec(&self, sql: &str, params: impl Params) -> Result<u64, StoreError> {
        Ok(self.prepare_cached(sql)?.execute(params)? as u64)
    }
}

/// Dynamic SQL with its parameters, for filtered lists: each
/// [`Query::bind`] appends `?N` and its value.
#[derive(Default)]
pub(in crate::store) struct Query {
    pub sql: String,
    pub values: Vec<rusqlite::types::Value>,
}

impl Query {
    /// Starts with `sql`.
    pub fn new(sql: impl Into<String>) -> Self {
        Query {
            sql: sql.into(),
            values: Vec::new(),
        }
    }

    /// Appends `sql`.
    pub fn push(&mut self, sql: &str) -> &mut Self {
        self.sql.push_str(sql);
        self
    }

    /// Appends a placeholder for `value`.
    pub fn bind(&mut self, value: impl Into<rusqlite::types::Value>) -> &mut Self {
        self.values.push(value.into());
        self.sql.push_str(&format!("?{}", self.values.len()));
        self
    }

    /// Every row, on `conn`.
    ///
    /// Errors: as [`Sql::all`].
    pub fn all<T: FromSqliteRow>(&self, conn: &Connection) -> Result<Vec<T>, StoreError> {
        conn.all(&self.sql, rusqlite::params_from_iter(&self.values))
    }
}
