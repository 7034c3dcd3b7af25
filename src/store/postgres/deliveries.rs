//! PostgreSQL queries of the dashboard's deliveries page (see
//! [`crate::store::deliveries`]); the same meaning as the SQLite ones.

use sqlx::postgres::PgPool;
use sqlx::{Postgres, QueryBuilder};

use super::{CHANNEL_DELIVERIES, corrupt, notify};
use crate::store::deliveries::{DeliveryFilter, DeliverySummary};
use crate::store::rows::SummaryRow;
use crate::store::{DeliveryState, StoreError};

pub(super) async fn list_deliveries(
    pool: &PgPool,
    f: &DeliveryFilter,
) -> Result<Vec<DeliverySummary>, StoreError> {
    let mut q = QueryBuilder::<Postgres>::new(
        "SELECT id, delivery_id, event, action, repository, sender_login, received_at, state, \
         attempts::BIGINT AS attempts, error FROM deliveries WHERE id < ",
    );
    q.push_bind(f.before_id.unwrap_or(i64::MAX));
    if let Some(state) = f.state {
        q.push(" AND state = ").push_bind(state.as_str());
    }
    q.push(" ORDER BY id DESC LIMIT ").push_bind(f.limit);
    let rows: Vec<SummaryRow> = q.build_query_as().fetch_all(pool).await?;
    rows.into_iter().map(DeliverySummary::try_from).collect()
}

pub(super) async fn requeue_delivery(
    pool: &PgPool,
    delivery_id: &str,
    now: i64,
) -> Result<Option<DeliveryState>, StoreError> {
    let mut tx = pool.begin().await?;
    let state: Option<(String, bool)> =
        sqlx::query_as("SELECT state, EXISTS (SELECT 1 FROM delivery_payloads p WHERE p.id = deliveries.id) FROM deliveries WHERE delivery_id = $1 FOR UPDATE")
            .bind(delivery_id)
            .fetch_optional(&mut *tx)
            .await?;
    let Some((state, has_payload)) = state else {
        return Ok(None);
    };
    let state = DeliveryState::parse(&state)
        .ok_or_else(|| corrupt("deliveries", format!("unknown state `{state}`")))?;
    if matches!(state, DeliveryState::Failed | DeliveryState::Ignored) {
        if !has_payload {
            return Err(StoreError::Pruned {
                what: format!("the payload of delivery {delivery_id}"),
                hint: "GitHub's own Redeliver (the App's advanced settings) still sends it; \
                       keep payloads longer with --keep-payloads-days",
            });
        }
        sqlx::query(
            "UPDATE deliveries SET state = 'queued', available_at = $2, claimed_by = NULL, \
             lease_expires_at = NULL, finished_at = NULL, error = NULL WHERE delivery_id = $1",
        )
        .bind(delivery_id)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        notify(&mut tx, CHANNEL_DELIVERIES).await?;
        tx.commit().await?;
    }
    Ok(Some(state))
}
