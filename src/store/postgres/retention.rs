//! [`Retention`] on PostgreSQL: the same statements as SQLite's (with `$N`
//! placeholders), each batch one transaction. Space freed by deletes is kept
//! by PostgreSQL for reuse (autovacuum); nothing is given back to the file
//! system, so [`Retention::reclaim_space`] does nothing. Several replicas
//! must not prune at once: the pruner holds [`Store::try_exclusive`].

use super::*;
use crate::store::retention::{
    Cutoffs, DatabaseSize, PruneBounds, PruneCounts, Retention,
    sql::{self, Statement, Values},
};

fn bind<'q>(
    s: &Statement,
    v: &Values,
) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
    let mut q = sqlx::query(sqlx::AssertSqlSafe(s.postgres()));
    for value in s.values(v) {
        q = q.bind(value);
    }
    q
}

async fn query_i64(pool: &PgPool, s: &Statement, v: &Values) -> Result<Option<i64>, StoreError> {
    use sqlx::Row as _;
    let row = bind(s, v).fetch_optional(pool).await?;
    Ok(row.map(|r| r.try_get::<i64, _>(0)).transpose()?)
}

#[async_trait]
impl Retention for PgStore {
    async fn prune_batch(
        &self,
        cutoffs: &Cutoffs,
        bounds: &PruneBounds,
        limit: i64,
    ) -> Result<PruneCounts, StoreError> {
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        let mut counts = PruneCounts::default();
        for kind in sql::kinds() {
            let Some(cutoff) = (kind.cutoff)(cutoffs) else {
                continue;
            };
            let v = Values {
                cutoff,
                limit,
                now,
                bound: bounds.of(kind.name),
            };
            let mut n = 0;
            for s in &kind.prune {
                n = bind(s, &v).execute(&mut *tx).await?.rows_affected();
            }
            sql::set(&mut counts, kind.name, n);
        }
        tx.commit().await?;
        Ok(counts)
    }

    async fn prune_bounds(&self, cutoffs: &Cutoffs) -> Result<PruneBounds, StoreError> {
        let mut bounds = PruneBounds::default();
        for kind in sql::kinds() {
            let (Some(cutoff), Some(bound)) = ((kind.cutoff)(cutoffs), &kind.bound) else {
                continue;
            };
            let v = Values {
                cutoff,
                limit: 0,
                now: 0,
                bound: 0,
            };
            let id = query_i64(&self.pool, bound, &v).await?.unwrap_or(i64::MAX);
            bounds.0.insert(kind.name, id);
        }
        Ok(bounds)
    }

    async fn prunable(&self, cutoffs: &Cutoffs) -> Result<PruneCounts, StoreError> {
        let bounds = self.prune_bounds(cutoffs).await?;
        let mut counts = PruneCounts::default();
        for kind in sql::kinds() {
            let Some(cutoff) = (kind.cutoff)(cutoffs) else {
                continue;
            };
            let v = Values {
                cutoff,
                limit: 0,
                now: 0,
                bound: bounds.of(kind.name),
            };
            let n = query_i64(&self.pool, &kind.count, &v).await?.unwrap_or(0);
            sql::set(&mut counts, kind.name, n as u64);
        }
        Ok(counts)
    }

    async fn reclaim_space(&self, _max_pages: i64) -> Result<u64, StoreError> {
        Ok(0)
    }

    async fn database_size(&self) -> Result<DatabaseSize, StoreError> {
        let (bytes,): (i64,) = sqlx::query_as("SELECT pg_database_size(current_database())")
            .fetch_one(&self.pool)
            .await?;
        Ok(DatabaseSize {
            bytes: bytes as u64,
            free_bytes: 0,
        })
    }
}
