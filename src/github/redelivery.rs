//! Redelivery of webhooks that failed while taskmaster was down.
//!
//! GitHub never retries a webhook on its own: a delivery our endpoint did not
//! answer with 2xx (down for a deploy, a crash, a 10 s timeout) is recorded
//! as failed and stays failed. GitHub keeps the App's deliveries for 3 days
//! and lets the App ask for any of them again
//! (<https://docs.github.com/en/webhooks/using-webhooks/handling-failed-webhook-deliveries>,
//! which publishes a script doing what this module does).
//!
//! [`redeliver_missing`] walks `GET /app/hook/deliveries` from the newest
//! back to a given time, and for each delivery (a GUID) that has no 2xx
//! attempt and is not in our inbox asks GitHub to send it again. The list
//! holds one item per *attempt*, so a GUID can appear several times
//! (earlier redeliveries); it is considered once, and a GUID with any
//! successful attempt is left alone — that attempt reached the inbox, or
//! will, and the inbox dedupes by GUID anyway.
//!
//! The inbox check is a predicate so this stays independent of the store:
//! wire it to "is this `X-GitHub-Delivery` stored?".

use std::collections::HashSet;
use std::future::Future;

use chrono::{DateTime, Duration, Utc};

use super::{GitHub, GitHubError};

/// How far back GitHub keeps deliveries.
pub const DELIVERY_RETENTION: Duration = Duration::days(3);

/// Most pages read in one pass (100 deliveries each), a guard against a
/// cursor that never ends.
pub const MAX_PAGES: usize = 200;

/// What one pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RedeliveryReport {
    /// Delivery attempts listed (all pages read).
    pub listed: usize,
    /// GUIDs GitHub was asked to redeliver, oldest last as listed.
    pub redelivered: Vec<String>,
    /// GUIDs whose redelivery request failed, with the error text.
    pub failed: Vec<(String, String)>,
}

/// Asks GitHub to redeliver every failed delivery since `since` whose GUID
/// `has_delivery` does not know.
///
/// `since` is clamped to GitHub's 3-day window. Deliveries are listed newest
/// first; listing stops at the first attempt older than `since`. For each
/// GUID the newest failed attempt's id is redelivered.
///
/// # Errors
/// Listing errors end the pass with the error (nothing half-done matters:
/// the next pass starts over). A failed redelivery request is recorded in
/// [`RedeliveryReport::failed`] and the pass goes on.
///
/// Sources:
/// <https://docs.github.com/en/rest/apps/webhooks#list-deliveries-for-an-app-webhook>,
/// <https://docs.github.com/en/rest/apps/webhooks#redeliver-a-delivery-for-an-app-webhook>
pub async fn redeliver_missing<F, Fut>(
    github: &dyn GitHub,
    since: DateTime<Utc>,
    now: DateTime<Utc>,
    has_delivery: F,
) -> Result<RedeliveryReport, GitHubError>
where
    F: Fn(String) -> Fut,
    Fut: Future<Output = bool>,
{
    let since = since.max(now - DELIVERY_RETENTION);
    let mut report = RedeliveryReport::default();
    // GUIDs decided already: succeeded somewhere, or redelivery chosen.
    let mut succeeded: HashSet<String> = HashSet::new();
    // Failed GUIDs in listing order with the newest failed attempt's id.
    let mut failed: Vec<(String, u64)> = Vec::new();
    let mut failed_seen: HashSet<String> = HashSet::new();

    let mut cursor: Option<String> = None;
    'pages: for _ in 0..MAX_PAGES {
        let page = github.list_hook_deliveries(cursor.as_deref()).await?;
        for delivery in &page.deliveries {
            if delivery.delivered_at < since {
                break 'pages;
            }
            report.listed += 1;
            if delivery.succeeded() {
                succeeded.insert(delivery.guid.clone());
            } else if failed_seen.insert(delivery.guid.clone()) {
                failed.push((delivery.guid.clone(), delivery.id));
            }
        }
        match page.next_cursor {
            Some(next) if !page.deliveries.is_empty() => cursor = Some(next),
            _ => break,
        }
    }

    for (guid, attempt_id) in failed {
        if succeeded.contains(&guid) || has_delivery(guid.clone()).await {
            continue;
        }
        match github.redeliver(attempt_id).await {
            Ok(()) => {
                tracing::info!(%guid, attempt_id, "asked GitHub to redeliver a missed webhook");
                report.redelivered.push(guid);
            }
            Err(e) => {
                tracing::warn!(%guid, attempt_id, error = %e, "redelivery request failed");
                report.failed.push((guid, e.to_string()));
            }
        }
    }
    Ok(report)
}

/// How far back a pass after the first reaches before the previous pass
/// began, so a delivery that failed while that pass was listing is not missed.
const PASS_OVERLAP: chrono::Duration = chrono::Duration::minutes(10);

/// Redelivers what GitHub failed to deliver while taskmaster was down: a pass
/// at start-up (back to GitHub's 3-day window), then one every `interval`
/// (each reaching back to the previous pass, with a 10-minute overlap),
/// until `cancel` fires. A delivery is "known" when the inbox has its GUID;
/// if the inbox cannot be read, it is treated as known, so a database hiccup
/// never turns into a redelivery storm. Errors are logged and the next pass
/// starts over.
///
/// GitHub never retries a failed delivery by itself; it publishes a script
/// that does this on a schedule. This is that script, built in.
pub async fn run_scheduler(
    github: std::sync::Arc<dyn GitHub>,
    store: std::sync::Arc<dyn crate::store::Store>,
    interval: std::time::Duration,
    cancel: tokio_util::sync::CancellationToken,
) {
    let mut since = Utc::now() - DELIVERY_RETENTION;
    loop {
        let started = Utc::now();
        // Replicas sharing a database take turns: one pass at a time (a
        // PostgreSQL advisory lock); the others skip theirs, and the next
        // pass of this replica reaches back to its own last pass.
        let guard = match store.try_exclusive("redelivery").await {
            Ok(Some(guard)) => guard,
            Ok(None) => {
                tracing::debug!("another replica is scanning for missed deliveries");
                tokio::select! {
                    _ = tokio::time::sleep(interval) => continue,
                    _ = cancel.cancelled() => return,
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot take the redelivery lock; skipping this pass");
                tokio::select! {
                    _ = tokio::time::sleep(interval) => continue,
                    _ = cancel.cancelled() => return,
                }
            }
        };
        let store = store.clone();
        let pass = redeliver_missing(github.as_ref(), since, started, move |guid| {
            let store = store.clone();
            async move {
                match store.delivery(&guid).await {
                    Ok(found) => found.is_some(),
                    Err(e) => {
                        tracing::warn!(error = %e, "inbox unreadable; not redelivering");
                        true
                    }
                }
            }
        })
        .await;
        drop(guard);
        match pass {
            Ok(report) => {
                if !report.redelivered.is_empty() || !report.failed.is_empty() {
                    tracing::info!(
                        listed = report.listed,
                        redelivered = ?report.redelivered,
                        failed = ?report.failed,
                        "asked GitHub to redeliver missed webhook deliveries"
                    );
                }
                since = started - PASS_OVERLAP;
            }
            Err(e) => {
                tracing::warn!(error = %e, "redelivery pass failed; the next one starts over")
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = cancel.cancelled() => return,
        }
    }
}
