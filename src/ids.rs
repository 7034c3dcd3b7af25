//! Typed ids, from the webhook to the database: a run's id is not a step's
//! or an installation's, though each is a number in the database. Each is a
//! transparent newtype over the column's `i64`: it encodes and decodes as
//! the number in both backends (sqlx `Type`, rusqlite `ToSql`/`FromSql`) and
//! in JSON, and prints as the number.

use std::fmt;

use serde::{Deserialize, Serialize};

macro_rules! id_type {
    ($(#[$m:meta])* $name:ident) => {
        $(#[$m])*
        #[derive(
            Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
            sqlx::Type,
        )]
        #[serde(transparent)]
        #[sqlx(transparent)]
        pub struct $name(pub i64);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl std::str::FromStr for $name {
            type Err = std::num::ParseIntError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                s.parse().map($name)
            }
        }

        impl From<$name> for i64 {
            fn from(id: $name) -> i64 {
                id.0
            }
        }

        impl rusqlite::ToSql for $name {
            fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
                Ok(rusqlite::types::ToSqlOutput::from(self.0))
            }
        }

        impl rusqlite::types::FromSql for $name {
            fn column_result(
                value: rusqlite::types::ValueRef<'_>,
            ) -> rusqlite::types::FromSqlResult<Self> {
                i64::column_result(value).map($name)
            }
        }
    };
}

id_type! {
    /// A run (`runs.id`).
    RunId
}

id_type! {
    /// A step's row (`steps.id`, unique over every run): what a lease holds.
    StepId
}

id_type! {
    /// A GitHub App installation (a payload's `installation.id`, the
    /// `{installation_id}` of `POST /app/installations/{installation_id}/access_tokens`;
    /// `deliveries.installation_id`). GitHub's ids are positive and fit an
    /// `i64`, the type of the column in both backends.
    InstallationId
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_their_numbers_in_json_text_and_sqlite() {
        let id = RunId(42);
        assert_eq!(serde_json::to_string(&id).unwrap(), "42");
        assert_eq!(serde_json::from_str::<RunId>("42").unwrap(), id);
        assert_eq!(id.to_string(), "42");
        assert_eq!("42".parse::<RunId>().unwrap(), id);
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        let back: RunId = conn.query_row("SELECT ?1", [id], |r| r.get(0)).unwrap();
        assert_eq!(back, id);
        let inst: InstallationId = serde_json::from_str("7").unwrap();
        assert_eq!(inst, InstallationId(7));
        let back: InstallationId = conn.query_row("SELECT ?1", [inst], |r| r.get(0)).unwrap();
        assert_eq!(back, inst);
    }
}
