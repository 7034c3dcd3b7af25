//! The report outbox's records: what each run last showed on GitHub.
//!
//! The outbox ([`crate::outbox`]) reconciles rather than replays events: a
//! run is *dirty* when the fingerprint of its current state differs from the
//! one GitHub last accepted for it. Only ids GitHub handed out (the check
//! run's, the sticky comment's) and that fingerprint are stored, so whatever
//! happened while the service was down, the next pass sends the run as it
//! stands now — and never a second check run or comment, because the stored
//! ids (or GitHub-side searches) find the first ones.
//!
//! Times are Unix epoch milliseconds.

use crate::ids::InstallationId;

/// A run whose report may be stale, with what was last reported for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportCandidate {
    /// The run.
    pub run_id: super::RunId,
    /// `deliveries.installation_id` of the delivery that started the run.
    pub installation_id: InstallationId,
    /// The check run's id, once created.
    pub check_run_id: Option<i64>,
    /// The fingerprint GitHub last accepted.
    pub reported_fingerprint: Option<String>,
    /// A fingerprint that failed permanently (not sent again).
    pub gave_up_fingerprint: Option<String>,
    /// When GitHub last accepted a report of this run, epoch ms.
    pub reported_at: Option<i64>,
    /// Failed sends since the last success.
    pub attempts: i64,
}

impl ReportCandidate {
    /// A run the outbox has never touched (`Reports::unreported_runs`):
    /// nothing reported, no check run, no failure.
    pub fn unreported(run_id: super::RunId, installation_id: InstallationId) -> Self {
        Self {
            run_id,
            installation_id,
            check_run_id: None,
            reported_fingerprint: None,
            gave_up_fingerprint: None,
            reported_at: None,
            attempts: 0,
        }
    }
}

/// How one report attempt ended, for [`super::Reports::record_report`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReportOutcome {
    /// GitHub accepted the run as `fingerprint` (run state `state`).
    Reported {
        /// The fingerprint sent.
        fingerprint: String,
        /// `runs.state` at the time (finished runs drop out of the dirty list).
        state: String,
        /// When the report's snapshot was read or earlier (epoch ms), stored
        /// as `reported_at`: a step started or finished at or after it makes
        /// the run a report candidate again (`report_candidates`).
        observed_at: i64,
    },
    /// A transient error: try again at `next_attempt_at`.
    Retry {
        /// What went wrong.
        error: String,
        /// Epoch ms.
        next_attempt_at: i64,
    },
    /// A permanent error: this fingerprint is not sent again; a later change
    /// of the run is.
    GaveUp {
        /// The fingerprint that failed.
        fingerprint: String,
        /// What went wrong.
        error: String,
    },
}
