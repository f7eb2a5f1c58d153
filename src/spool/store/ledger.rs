//! The spool's one ledger in memory: what the store holds and what it has
//! committed, changed only by the store, only for a transaction that
//! committed, in the same call that learns of the commit.
//!
//! The durable ledger is kept by triggers in the same transaction as the
//! rows (SQLite's [`super::schema`], PostgreSQL's `pg::schema`); this is
//! its mirror, plus the event counts since start. The counts the metrics
//! expose (`spool_committed`, `spool_deduplicated`,
//! `spool_commit_batches`) are the registered counters themselves, handed
//! to the store when it opens, so no second copy can drift. The gauges and
//! the status page read [`Ledger::counts`] and [`Ledger::disk`] when they
//! are asked.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use prometheus_client::metrics::counter::Counter;
use serde::Serialize;

/// The metric counters the ledger counts into.
#[derive(Debug, Clone, Default)]
pub struct LedgerCounters {
    /// Writes stored as new entries.
    pub committed: Counter,
    /// Writes folded into an identical waiting entry.
    pub deduplicated: Counter,
    /// Transactions committed (SQLite: every one; PostgreSQL: the group
    /// commits of writes).
    pub batches: Counter,
}

/// How the store's disk use is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskUseIs {
    /// Measured from the files after each commit (SQLite).
    Measured,
    /// The bodies' bytes: the database is someone else's, its files are
    /// not ours to measure (PostgreSQL).
    Bytes,
}

/// A snapshot of the ledger.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    /// Entries waiting.
    pub entries: u64,
    /// Body bytes waiting.
    pub bytes: u64,
    /// Dead letters.
    pub dead_letters: u64,
    /// The highest ticket (entry id) the store has held.
    pub max_ticket: i64,
    /// Writes stored since start.
    pub committed: u64,
    /// Writes folded into a waiting one since start.
    pub deduplicated: u64,
    /// Transactions since start.
    pub commit_batches: u64,
}

/// The store's disk use.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct DiskUse {
    /// Database pages in use.
    pub db_used_bytes: u64,
    /// The write-ahead log.
    pub wal_bytes: u64,
    /// The store's files together.
    pub disk_bytes: u64,
    /// The largest `disk_bytes` since start.
    pub disk_high_water_bytes: u64,
}

/// What one committed transaction changed.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Change {
    pub(super) entries: i64,
    pub(super) bytes: i64,
    pub(super) dead: i64,
    /// The highest entry id it stored.
    pub(super) ticket: i64,
    pub(super) stored: u64,
    pub(super) deduplicated: u64,
    /// Whether it counts as a transaction in `spool_commit_batches`.
    pub(super) transaction: bool,
}

/// The in-memory ledger (see the module doc).
#[derive(Debug)]
pub struct Ledger {
    entries: AtomicU64,
    bytes: AtomicU64,
    dead: AtomicU64,
    max_ticket: AtomicI64,
    db_used_bytes: AtomicU64,
    wal_bytes: AtomicU64,
    disk_bytes: AtomicU64,
    disk_high_water: AtomicU64,
    disk_use: DiskUseIs,
    counters: LedgerCounters,
}

impl Ledger {
    /// An empty ledger counting into `counters`.
    pub fn new(counters: LedgerCounters, disk_use: DiskUseIs) -> Ledger {
        Ledger {
            entries: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            dead: AtomicU64::new(0),
            max_ticket: AtomicI64::new(0),
            db_used_bytes: AtomicU64::new(0),
            wal_bytes: AtomicU64::new(0),
            disk_bytes: AtomicU64::new(0),
            disk_high_water: AtomicU64::new(0),
            disk_use,
            counters,
        }
    }

    /// What the store holds and has committed, now.
    pub fn counts(&self) -> Counts {
        Counts {
            entries: get(&self.entries),
            bytes: get(&self.bytes),
            dead_letters: get(&self.dead),
            max_ticket: self.max_ticket.load(Ordering::Relaxed),
            committed: self.counters.committed.get(),
            deduplicated: self.counters.deduplicated.get(),
            commit_batches: self.counters.batches.get(),
        }
    }

    /// Entries waiting (one load: the admission path asks per write).
    pub fn entries(&self) -> u64 {
        get(&self.entries)
    }

    /// The highest ticket the store has held (one load, as above).
    pub fn max_ticket(&self) -> i64 {
        self.max_ticket.load(Ordering::Relaxed)
    }

    /// The store's disk use, now.
    pub fn disk(&self) -> DiskUse {
        match self.disk_use {
            DiskUseIs::Measured => DiskUse {
                db_used_bytes: get(&self.db_used_bytes),
                wal_bytes: get(&self.wal_bytes),
                disk_bytes: get(&self.disk_bytes),
                disk_high_water_bytes: get(&self.disk_high_water),
            },
            DiskUseIs::Bytes => {
                let bytes = get(&self.bytes);
                DiskUse {
                    db_used_bytes: bytes,
                    wal_bytes: 0,
                    disk_bytes: bytes,
                    disk_high_water_bytes: get(&self.disk_high_water).max(bytes),
                }
            }
        }
    }

    /// A transaction that made `c` committed.
    pub(super) fn commit(&self, c: &Change) {
        add(&self.entries, c.entries);
        add(&self.bytes, c.bytes);
        add(&self.dead, c.dead);
        self.max_ticket.fetch_max(c.ticket, Ordering::Relaxed);
        self.counters.committed.inc_by(c.stored);
        self.counters.deduplicated.inc_by(c.deduplicated);
        if c.transaction {
            self.counters.batches.inc();
        }
        if self.disk_use == DiskUseIs::Bytes {
            self.disk_high_water
                .fetch_max(get(&self.bytes), Ordering::Relaxed);
        }
    }

    /// The durable ledger, read whole (the file or the shared database is
    /// the truth: the operator CLI and other replicas change it too).
    pub(super) fn reload(&self, entries: i64, bytes: i64, dead: i64, max_ticket: i64) {
        self.entries.store(entries.max(0) as u64, Ordering::Relaxed);
        self.bytes.store(bytes.max(0) as u64, Ordering::Relaxed);
        self.dead.store(dead.max(0) as u64, Ordering::Relaxed);
        self.max_ticket.fetch_max(max_ticket, Ordering::Relaxed);
    }

    /// The files' sizes, measured after a commit (SQLite).
    pub(super) fn measured(&self, db_used: Option<u64>, wal: u64, disk: u64) {
        if let Some(used) = db_used {
            self.db_used_bytes.store(used, Ordering::Relaxed);
        }
        self.wal_bytes.store(wal, Ordering::Relaxed);
        self.disk_bytes.store(disk, Ordering::Relaxed);
        self.disk_high_water.fetch_max(disk, Ordering::Relaxed);
    }
}

fn get(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

/// Add a signed change to a count that never goes below zero.
fn add(counter: &AtomicU64, delta: i64) {
    if delta >= 0 {
        counter.fetch_add(delta as u64, Ordering::Relaxed);
    } else {
        let _ = counter.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
            Some(v.saturating_sub(delta.unsigned_abs()))
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_what_a_commit_reports_changes_the_counts_and_the_metric_is_the_count() {
        let counters = LedgerCounters::default();
        let l = Ledger::new(counters.clone(), DiskUseIs::Bytes);
        l.commit(&Change {
            entries: 2,
            bytes: 30,
            ticket: 7,
            stored: 2,
            deduplicated: 1,
            transaction: true,
            ..Change::default()
        });
        l.commit(&Change {
            entries: -5,
            bytes: -10,
            ..Change::default()
        });
        let c = l.counts();
        assert_eq!((c.entries, c.bytes, c.max_ticket), (0, 20, 7));
        assert_eq!((c.committed, c.deduplicated, c.commit_batches), (2, 1, 1));
        assert_eq!(
            counters.committed.get(),
            2,
            "the metric is the ledger's count"
        );
        assert_eq!(l.disk().disk_high_water_bytes, 30);
        l.reload(4, 8, 1, 3);
        let c = l.counts();
        assert_eq!(
            (c.entries, c.bytes, c.dead_letters, c.max_ticket),
            (4, 8, 1, 7)
        );
    }
}
