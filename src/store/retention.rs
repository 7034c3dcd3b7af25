//! Retention: what the database keeps, and for how long.
//!
//! Without it nothing is ever deleted: every delivery's payload (~2 KB
//! compressed each), every attempt's output (up to 1 MiB), every timeline
//! event and audit row stay forever. [`RetentionSettings`] says how long each
//! kind is kept (days; `None` keeps it forever); [`Cutoffs::at`] turns them
//! into epoch-millisecond cut-offs; [`Retention::prune_batch`] deletes a
//! small batch of each kind past its cut-off in one short transaction, so the
//! writer is never held for long; [`prune`] repeats batches until nothing is
//! left (the background pruner of `serve` and `taskmaster prune`).
//!
//! What a live run needs is never pruned: only **finished** runs lose their
//! outputs, timeline or rows, and a delivery's payload stays while the
//! delivery is queued or in processing, or while a run it started is active.
//! A pruned delivery cannot be redelivered from the dashboard (its payload is
//! gone); GitHub's own "Redeliver" still works.

use std::time::Duration;

use async_trait::async_trait;
use serde::Serialize;

use super::StoreError;

const DAY_MS: i64 = 24 * 60 * 60 * 1000;

/// How long each kind of record is kept, in days (`None`: forever). The
/// defaults are those of `taskmaster serve`'s flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetentionSettings {
    /// Deliveries' payloads, and the GitHub effects (comments, labels) they
    /// caused once sent. Default 30.
    pub payloads_days: Option<u32>,
    /// Finished runs' step outputs and attempt output excerpts. Default 90.
    pub outputs_days: Option<u32>,
    /// Finished runs' timelines. Default 365.
    pub events_days: Option<u32>,
    /// Finished runs themselves (steps, attempts, reports, changes) and the
    /// deliveries' rows. Default 365.
    pub runs_days: Option<u32>,
    /// The audit log. Default: forever.
    pub audit_days: Option<u32>,
}

impl RetentionSettings {
    /// How long records of `kind` (a [`PruneCounts::kinds`] name) are
    /// kept, in days; `None`: forever (or an unknown kind).
    pub fn days_of(&self, kind: &str) -> Option<u32> {
        match kind {
            "payloads" | "effects" => self.payloads_days,
            "outputs" => self.outputs_days,
            "events" => self.events_days,
            "runs" | "deliveries" => self.runs_days,
            "audit" => self.audit_days,
            _ => None,
        }
    }
}

impl Default for RetentionSettings {
    fn default() -> Self {
        RetentionSettings {
            payloads_days: Some(30),
            outputs_days: Some(90),
            events_days: Some(365),
            runs_days: Some(365),
            audit_days: None,
        }
    }
}

/// Epoch-millisecond cut-offs: records of a kind older than its cut-off are
/// past retention (`None`: keep every one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Cutoffs {
    pub payloads_before: Option<i64>,
    pub outputs_before: Option<i64>,
    pub events_before: Option<i64>,
    pub runs_before: Option<i64>,
    pub audit_before: Option<i64>,
}

impl Cutoffs {
    /// The cut-offs of `settings` at `now` (epoch ms).
    pub fn at(settings: &RetentionSettings, now: i64) -> Self {
        let before = |days: Option<u32>| days.map(|d| now - i64::from(d) * DAY_MS);
        Cutoffs {
            payloads_before: before(settings.days_of("payloads")),
            outputs_before: before(settings.days_of("outputs")),
            events_before: before(settings.days_of("events")),
            runs_before: before(settings.days_of("runs")),
            audit_before: before(settings.days_of("audit")),
        }
    }
}

/// How many records of each kind a batch pruned (or a dry run would).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct PruneCounts {
    /// Delivery payloads deleted.
    pub payloads: u64,
    /// Sent, recorded or failed GitHub effects deleted.
    pub effects: u64,
    /// Finished runs whose step outputs and attempt excerpts were cleared.
    pub outputs: u64,
    /// Finished runs whose timelines were deleted.
    pub events: u64,
    /// Finished runs deleted, with their steps, attempts and reports.
    pub runs: u64,
    /// Delivery rows deleted (with what is left of their payloads).
    pub deliveries: u64,
    /// Audit entries deleted.
    pub audit: u64,
}

impl PruneCounts {
    /// Every count added up.
    pub fn total(&self) -> u64 {
        self.payloads
            + self.effects
            + self.outputs
            + self.events
            + self.runs
            + self.deliveries
            + self.audit
    }

    /// `(kind, count)` for each kind, in a fixed order (metrics, summaries).
    pub fn kinds(&self) -> [(&'static str, u64); 7] {
        [
            ("payloads", self.payloads),
            ("effects", self.effects),
            ("outputs", self.outputs),
            ("events", self.events),
            ("runs", self.runs),
            ("deliveries", self.deliveries),
            ("audit", self.audit),
        ]
    }
}

impl std::ops::AddAssign for PruneCounts {
    fn add_assign(&mut self, o: Self) {
        self.payloads += o.payloads;
        self.effects += o.effects;
        self.outputs += o.outputs;
        self.events += o.events;
        self.runs += o.runs;
        self.deliveries += o.deliveries;
        self.audit += o.audit;
    }
}

/// The database's size on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct DatabaseSize {
    /// Bytes the database takes (SQLite: the main file, pages × page size;
    /// PostgreSQL: `pg_database_size`).
    pub bytes: u64,
    /// Of those, bytes in free pages that a vacuum could give back to the
    /// file system (SQLite's freelist; 0 on PostgreSQL, whose autovacuum
    /// keeps free space for reuse).
    pub free_bytes: u64,
}

/// The store's side of retention.
#[async_trait]
pub trait Retention: Send + Sync + 'static {
    /// Prunes at most `limit` records of each kind past `cutoffs` (and below
    /// `bounds`), in one transaction, and returns how many went. Never touches what a live run
    /// needs (see the module documentation). Errors: the database's.
    async fn prune_batch(
        &self,
        cutoffs: &Cutoffs,
        bounds: &PruneBounds,
        limit: i64,
    ) -> Result<PruneCounts, StoreError>;

    /// The id bounds of a round of batches at `cutoffs` (see [`sql`]), read
    /// on a reader: a scan from each table's oldest row to its first one at
    /// or after the cut-off.
    async fn prune_bounds(&self, cutoffs: &Cutoffs) -> Result<PruneBounds, StoreError>;

    /// How many records of each kind are past `cutoffs` now (a dry run;
    /// writes nothing).
    async fn prunable(&self, cutoffs: &Cutoffs) -> Result<PruneCounts, StoreError>;

    /// Gives free pages back to the file system, at most `max_pages` (SQLite
    /// with `auto_vacuum = INCREMENTAL`: `PRAGMA incremental_vacuum`);
    /// returns the bytes given back. PostgreSQL: nothing to do, 0.
    async fn reclaim_space(&self, max_pages: i64) -> Result<u64, StoreError>;

    /// The database's size (the `taskmaster_database_bytes` metric).
    async fn database_size(&self) -> Result<DatabaseSize, StoreError>;

    /// Makes [`Retention::reclaim_space`] possible on a database that
    /// cannot yet (SQLite files created before `auto_vacuum = INCREMENTAL`:
    /// switch it on and `VACUUM`, which rewrites the file, holds the writer
    /// throughout and needs room for a second copy). Returns whether it did
    /// anything. For `taskmaster prune`, not for a running service. The
    /// default does nothing.
    async fn enable_reclaiming(&self) -> Result<bool, StoreError> {
        Ok(false)
    }
}

/// Rows of each kind per [`Retention::prune_batch`] transaction in
/// [`prune`]: a batch of 200 payloads holds the SQLite writer about 2 ms
/// (`tests/retention.rs` prints the figure).
pub const PRUNE_BATCH: i64 = 200;

/// Prunes everything past `cutoffs` in batches of [`PRUNE_BATCH`], pausing
/// `pause` between batches so other writers get the database, then gives
/// free space back ([`Retention::reclaim_space`]). Returns the totals.
/// Errors: the first database error (what was pruned before it stays
/// pruned).
pub async fn prune(
    store: &dyn Retention,
    cutoffs: &Cutoffs,
    pause: Duration,
) -> Result<PruneCounts, StoreError> {
    let mut total = PruneCounts::default();
    let bounds = store.prune_bounds(cutoffs).await?;
    loop {
        let batch = store.prune_batch(cutoffs, &bounds, PRUNE_BATCH).await?;
        total += batch;
        for (kind, n) in batch.kinds() {
            if n > 0 {
                metrics::counter!("taskmaster_pruned_total", "kind" => kind).increment(n);
            }
        }
        if batch.total() == 0 {
            break;
        }
        tokio::time::sleep(pause).await;
    }
    // 500 pages (2 MB of 4 KB pages) per transaction, until nothing is
    // given back.
    while store.reclaim_space(500).await? > 0 {
        tokio::time::sleep(pause).await;
    }
    Ok(total)
}

/// The pruning statements, written once for both backends with named
/// arguments (`:cutoff`, the kind's cut-off in epoch ms; `:limit`, the
/// batch size; `:now`; `:bound`, the kind's id bound), numbered `?N` in order
/// of appearance ([`Statement::sql`]; PostgreSQL's are `$N`:
/// [`Statement::postgres`]).
///
/// Kinds that arrive in id order (deliveries, payloads, effects, audit) are
/// pruned below an **id bound**: the first row at or after the cut-off,
/// found once per round by [`Retention::prune_bounds`] on a reader (a scan
/// in id order from the oldest remaining row). A batch then reads only rows
/// below it, however many remain, and no index on arrival times is needed on
/// the intake path. This takes ids to follow arrival times, as they do: a
/// row gets its id when it is stored, and its time then. A row stored out of
/// order (replicas' clocks a few seconds apart) is pruned a round later.
/// Runs are found through the partial indexes of migration 0014.
pub(in crate::store) mod sql {
    /// A value a statement takes.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Arg {
        Cutoff,
        Limit,
        Now,
        Bound,
    }

    /// The values of one kind's statements in one batch.
    #[derive(Debug, Clone, Copy)]
    pub struct Values {
        pub cutoff: i64,
        pub limit: i64,
        pub now: i64,
        pub bound: i64,
    }

    /// One statement, with its arguments in placeholder order.
    #[derive(Debug, Clone)]
    pub struct Statement {
        /// With `?1`, `?2`, … placeholders.
        pub sql: String,
        pub args: Vec<Arg>,
    }

    impl Statement {
        fn new(text: &str) -> Self {
            let names = [
                (":cutoff", Arg::Cutoff),
                (":limit", Arg::Limit),
                (":now", Arg::Now),
                (":bound", Arg::Bound),
            ];
            let mut args: Vec<Arg> = Vec::new();
            let mut sql = String::with_capacity(text.len());
            let mut rest = text;
            while let Some(i) = rest.find(':') {
                sql.push_str(&rest[..i]);
                let tail = &rest[i..];
                let Some((name, arg)) = names.iter().find(|(n, _)| tail.starts_with(n)) else {
                    sql.push(':');
                    rest = &tail[1..];
                    continue;
                };
                let n = match args.iter().position(|a| a == arg) {
                    Some(p) => p + 1,
                    None => {
                        args.push(*arg);
                        args.len()
                    }
                };
                sql.push_str(&format!("?{n}"));
                rest = &tail[name.len()..];
            }
            sql.push_str(rest);
            Statement { sql, args }
        }

        /// The statement with PostgreSQL's `$N` placeholders.
        pub fn postgres(&self) -> String {
            crate::store::postgres_sql(&self.sql)
        }

        /// The values to bind, in placeholder order.
        pub fn values(&self, v: &Values) -> Vec<i64> {
            self.args
                .iter()
                .map(|a| match a {
                    Arg::Cutoff => v.cutoff,
                    Arg::Limit => v.limit,
                    Arg::Now => v.now,
                    Arg::Bound => v.bound,
                })
                .collect()
        }
    }

    /// One kind of record: the statement finding its id bound (kinds in id
    /// order only), a statement counting what is past its cut-off, and the
    /// statements pruning one batch (the last one's row count is the
    /// batch's count).
    #[derive(Debug, Clone)]
    pub struct Kind {
        pub name: &'static str,
        pub bound: Option<Statement>,
        pub count: Statement,
        pub prune: Vec<Statement>,
        /// The cut-off it takes.
        pub cutoff: fn(&super::Cutoffs) -> Option<i64>,
    }

    const ACTIVE: &str = "('queued', 'running', 'paused')";
    const ENDED: &str = "('succeeded', 'failed', 'cancelled', 'timed_out')";

    fn by_id(
        name: &'static str,
        table: &str,
        bound: &str,
        from_where: String,
        cutoff: fn(&super::Cutoffs) -> Option<i64>,
    ) -> Kind {
        Kind {
            name,
            bound: Some(Statement::new(bound)),
            count: Statement::new(&format!("SELECT COUNT(*) {from_where}")),
            prune: vec![Statement::new(&format!(
                "DELETE FROM {table} WHERE id IN (SELECT t.id {from_where} ORDER BY t.id LIMIT :limit)"
            ))],
            cutoff,
        }
    }

    fn by_run(
        name: &'static str,
        from_where: String,
        prune: &[&str],
        cutoff: fn(&super::Cutoffs) -> Option<i64>,
    ) -> Kind {
        let ids = format!("SELECT id {from_where} ORDER BY finished_at LIMIT :limit");
        Kind {
            name,
            bound: None,
            count: Statement::new(&format!("SELECT COUNT(*) {from_where}")),
            prune: prune
                .iter()
                .map(|s| Statement::new(&s.replace("{ids}", &ids)))
                .collect(),
            cutoff,
        }
    }

    /// Every kind, in the order a batch prunes them.
    pub fn kinds() -> Vec<Kind> {
        let ended = |mark: &str| {
            format!(
                "FROM runs WHERE finished_at IS NOT NULL AND {mark} IS NULL \
                 AND finished_at < :cutoff AND state IN {ENDED}"
            )
        };
        vec![
            by_id(
                "payloads",
                "delivery_payloads",
                "SELECT b.id FROM delivery_payloads b JOIN deliveries bd ON bd.id = b.id \
                 WHERE bd.received_at >= :cutoff ORDER BY b.id LIMIT 1",
                format!(
                    "FROM delivery_payloads t JOIN deliveries d ON d.id = t.id \
                     WHERE t.id < :bound AND d.received_at < :cutoff \
                     AND d.state NOT IN ('queued', 'processing') \
                     AND NOT EXISTS (SELECT 1 FROM runs r WHERE r.delivery_id = d.delivery_id \
                       AND r.state IN {ACTIVE})"
                ),
                |c| c.payloads_before,
            ),
            by_id(
                "effects",
                "github_effects",
                "SELECT id FROM github_effects WHERE created_at >= :cutoff ORDER BY id LIMIT 1",
                "FROM github_effects t WHERE t.id < :bound AND t.created_at < :cutoff \
                 AND t.state <> 'pending'"
                    .to_owned(),
                |c| c.payloads_before,
            ),
            by_run(
                "outputs",
                ended("outputs_pruned_at"),
                &[
                    "UPDATE steps SET output = NULL WHERE output IS NOT NULL AND run_id IN ({ids})",
                    "UPDATE attempts SET output_excerpt = NULL \
                     WHERE output_excerpt IS NOT NULL AND run_id IN ({ids})",
                    "UPDATE runs SET outputs_pruned_at = :now WHERE id IN ({ids})",
                ],
                |c| c.outputs_before,
            ),
            by_run(
                "events",
                ended("events_pruned_at"),
                &[
                    "DELETE FROM run_events WHERE run_id IN ({ids})",
                    "UPDATE runs SET events_pruned_at = :now WHERE id IN ({ids})",
                ],
                |c| c.events_before,
            ),
            by_run(
                "runs",
                format!(
                    "FROM runs WHERE finished_at IS NOT NULL AND finished_at < :cutoff \
                     AND state IN {ENDED}"
                ),
                &["DELETE FROM runs WHERE id IN ({ids})"],
                |c| c.runs_before,
            ),
            // A delivery's row goes once no run it started stays (runs
            // share the cut-off, and go first in a batch).
            by_id(
                "deliveries",
                "deliveries",
                "SELECT id FROM deliveries WHERE received_at >= :cutoff ORDER BY id LIMIT 1",
                format!(
                    "FROM deliveries t WHERE t.id < :bound AND t.received_at < :cutoff \
                     AND t.state NOT IN ('queued', 'processing') \
                     AND NOT EXISTS (SELECT 1 FROM runs r WHERE r.delivery_id = t.delivery_id \
                       AND NOT (r.finished_at IS NOT NULL AND r.finished_at < :cutoff \
                         AND r.state IN {ENDED}))"
                ),
                |c| c.runs_before,
            ),
            by_id(
                "audit",
                "audit_log",
                "SELECT id FROM audit_log WHERE at >= :cutoff ORDER BY id LIMIT 1",
                "FROM audit_log t WHERE t.id < :bound AND t.at < :cutoff".to_owned(),
                |c| c.audit_before,
            ),
        ]
    }

    /// Sets `name`'s count in `counts`.
    pub fn set(counts: &mut super::PruneCounts, name: &str, n: u64) {
        match name {
            "payloads" => counts.payloads = n,
            "effects" => counts.effects = n,
            "outputs" => counts.outputs = n,
            "events" => counts.events = n,
            "runs" => counts.runs = n,
            "deliveries" => counts.deliveries = n,
            "audit" => counts.audit = n,
            _ => unreachable!("unknown kind {name}"),
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn named_arguments_are_numbered_in_order_of_appearance() {
            let s = Statement::new("a < :bound AND b < :cutoff AND c < :bound LIMIT :limit");
            assert_eq!(s.sql, "a < ?1 AND b < ?2 AND c < ?1 LIMIT ?3");
            assert_eq!(s.postgres(), "a < $1 AND b < $2 AND c < $1 LIMIT $3");
            let v = Values {
                cutoff: 10,
                limit: 5,
                now: 99,
                bound: 7,
            };
            assert_eq!(s.values(&v), vec![7, 10, 5]);
        }

        #[test]
        fn every_statement_names_only_known_arguments() {
            for kind in kinds() {
                for s in kind.bound.iter().chain([&kind.count]).chain(&kind.prune) {
                    assert!(!s.sql.contains(':'), "{}: {}", kind.name, s.sql);
                }
            }
        }
    }
}

/// Each id-ordered kind's id bound for one round (see [`sql`]): the first
/// id at or after its cut-off, `i64::MAX` when every row is older.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PruneBounds(pub std::collections::BTreeMap<&'static str, i64>);

impl PruneBounds {
    /// `kind`'s bound (`i64::MAX` when none was found).
    pub fn of(&self, kind: &str) -> i64 {
        self.0.get(kind).copied().unwrap_or(i64::MAX)
    }
}

/// The pruner of `serve`: every `every`, prunes what is past `settings`
/// ([`prune`], pausing 50 ms between batches), while holding the
/// `"pruner"` job ([`super::Store::try_exclusive`]: one replica at a time).
/// The first round starts one minute after start-up. Errors are logged and
/// the next round tries again. Returns when `stop` is cancelled.
pub async fn run_pruner(
    store: std::sync::Arc<dyn super::RunStore>,
    settings: RetentionSettings,
    every: Duration,
    stop: tokio_util::sync::CancellationToken,
) {
    let mut wait = Duration::from_secs(60).min(every);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
        wait = every;
        let guard = match store.try_exclusive("pruner").await {
            Ok(Some(guard)) => guard,
            Ok(None) => continue,
            Err(e) => {
                tracing::warn!(error = %e, "pruner: cannot take the pruner job; trying again next round");
                continue;
            }
        };
        let cutoffs = Cutoffs::at(&settings, super::now_ms());
        let pruning = prune(&*store, &cutoffs, Duration::from_millis(50));
        let result = tokio::select! {
            () = stop.cancelled() => return,
            r = pruning => r,
        };
        drop(guard);
        match result {
            Ok(counts) if counts.total() > 0 => {
                tracing::info!(
                    payloads = counts.payloads,
                    effects = counts.effects,
                    outputs = counts.outputs,
                    events = counts.events,
                    runs = counts.runs,
                    deliveries = counts.deliveries,
                    audit = counts.audit,
                    "pruned what is past retention"
                );
            }
            Ok(_) => tracing::debug!("pruner: nothing past retention"),
            Err(e) => tracing::warn!(error = %e, "pruner: a batch failed; trying again next round"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cutoffs_count_days_back_from_now_and_none_keeps_forever() {
        let now = 100 * DAY_MS;
        let c = Cutoffs::at(&RetentionSettings::default(), now);
        assert_eq!(c.payloads_before, Some(70 * DAY_MS));
        assert_eq!(c.outputs_before, Some(10 * DAY_MS));
        assert_eq!(c.events_before, Some(-265 * DAY_MS));
        assert_eq!(c.audit_before, None);
    }

    #[test]
    fn counts_add_up_by_kind() {
        let mut a = PruneCounts {
            payloads: 1,
            runs: 2,
            ..Default::default()
        };
        a += PruneCounts {
            payloads: 3,
            audit: 4,
            ..Default::default()
        };
        assert_eq!(a.payloads, 4);
        assert_eq!(a.total(), 10);
        assert_eq!(a.kinds()[0], ("payloads", 4));
    }
}
