//! Deliveries as the dashboard lists them: the inbox's rows without their
//! payloads (a payload is tens of KB; a page of fifty would be megabytes).

use super::DeliveryState;

/// One stored delivery, without its payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliverySummary {
    /// Arrival order (database row id); the page cursor.
    pub id: i64,
    /// `X-GitHub-Delivery` (or `api:<uuid>` for runs started through the API).
    pub delivery_id: String,
    /// `X-GitHub-Event`.
    pub event: String,
    /// The payload's `action`.
    pub action: Option<String>,
    /// `owner/name`.
    pub repository: Option<String>,
    /// Who caused it on GitHub.
    pub sender_login: Option<String>,
    /// Epoch ms.
    pub received_at: i64,
    /// Where it stands in the inbox.
    pub state: DeliveryState,
    /// Times a dispatcher claimed it.
    pub attempts: i64,
    /// Why it failed, was ignored or is retried.
    pub error: Option<String>,
}

/// Which deliveries to list, newest first.
#[derive(Debug, Clone, Default)]
pub struct DeliveryFilter {
    /// Only deliveries in this state.
    pub state: Option<DeliveryState>,
    /// Only deliveries with a smaller row id (the previous page's last id).
    pub before_id: Option<i64>,
    /// At most this many.
    pub limit: i64,
}
