//! The in-memory mirror of the ledger: what one transaction changed, and
//! how that reaches the counters everyone else reads.
//!
//! The statements record their effects in a [`Delta`] as they run; only a
//! transaction that committed publishes it. Keeping the change apart from
//! the counters is what lets a rolled-back transaction leave no trace in
//! the totals or in the window of recent writes.

use std::sync::atomic::{AtomicU64, Ordering};

use super::Writer;
use super::recent::InTxn;

/// What the commands of one transaction change in the ledger and in the
/// window of recent writes.
#[derive(Default)]
pub(super) struct Delta {
    pub(super) entries: i64,
    pub(super) bytes: i64,
    pub(super) dead: i64,
    pub(super) ticket: i64,
    pub(super) deduplicated: u64,
    pub(super) stored: InTxn,
    pub(super) removed: Vec<i64>,
}

impl Writer {
    /// The transaction that produced `d` committed: count it and remember
    /// its writes.
    pub(super) fn publish(&mut self, d: Delta) {
        for id in &d.removed {
            self.recent.forget(*id);
        }
        let t = &self.totals;
        add(&t.entries, d.entries);
        add(&t.bytes, d.bytes);
        add(&t.dead, d.dead);
        t.max_ticket.fetch_max(d.ticket, Ordering::Relaxed);
        t.deduplicated.fetch_add(d.deduplicated, Ordering::Relaxed);
        t.batches.fetch_add(1, Ordering::Relaxed);
        for w in d.stored.writes {
            self.recent.remember(w);
        }
    }
}

/// Add a signed change to a counter that never goes below zero.
fn add(counter: &AtomicU64, delta: i64) {
    if delta >= 0 {
        counter.fetch_add(delta as u64, Ordering::Relaxed);
    } else {
        let _ = counter.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
            Some(v.saturating_sub(delta.unsigned_abs()))
        });
    }
}
