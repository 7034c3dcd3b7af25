//! SQLite queries of the dashboard's deliveries page (see
//! [`crate::store::deliveries`]): a page of the inbox, and putting one
//! delivery back in the queue.

use rusqlite::{Connection, params};

use super::sql::{Query, Sql};
use crate::store::deliveries::{DeliveryFilter, DeliverySummary};
use crate::store::rows::{SummaryRow, corrupt};
use crate::store::{DeliveryState, StoreError};

pub(super) fn list_deliveries(
    conn: &Connection,
    f: &DeliveryFilter,
) -> Result<Vec<DeliverySummary>, StoreError> {
    let mut q = Query::new(
        "SELECT id, delivery_id, event, action, repository, sender_login, received_at, state, \
         attempts, error FROM deliveries WHERE id < ",
    );
    q.bind(f.before_id.unwrap_or(i64::MAX));
    if let Some(state) = f.state {
        q.push(" AND state = ").bind(state.as_str().to_owned());
    }
    q.push(" ORDER BY id DESC LIMIT ").bind(f.limit);
    let rows: Vec<SummaryRow> = q.all(conn)?;
    rows.into_iter().map(DeliverySummary::try_from).collect()
}

/// Puts a failed or ignored delivery back in the queue (on the writer).
pub(super) fn requeue_delivery(
    conn: &Connection,
    delivery_id: &str,
    now: i64,
) -> Result<Option<DeliveryState>, StoreError> {
    let tx = conn.unchecked_transaction()?;
    let state: Option<(String, bool)> = tx.opt(
        "SELECT state, EXISTS (SELECT 1 FROM delivery_payloads p WHERE p.id = deliveries.id) \
         FROM deliveries WHERE delivery_id = ?1",
        [delivery_id],
    )?;
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
        tx.exec(
            "UPDATE deliveries SET state = 'queued', available_at = ?2, claimed_by = NULL, \
             lease_expires_at = NULL, finished_at = NULL, error = NULL WHERE delivery_id = ?1",
            params![delivery_id, now],
        )?;
        tx.commit()?;
    }
    Ok(Some(state))
}
