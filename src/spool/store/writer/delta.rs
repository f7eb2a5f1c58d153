//! What one transaction changed, and how that reaches the ledger
//! ([`crate::spool::store::ledger`]).
//!
//! The statements record their effects in a [`Delta`] as they run; only a
//! transaction that committed publishes it. Keeping the change apart from
//! the counters is what lets a rolled-back transaction leave no trace in
//! the totals or in the window of recent writes.

use super::Writer;
use super::recent::InTxn;
use crate::spool::store::ledger::Change;

/// What the commands of one transaction change in the ledger and in the
/// window of recent writes.
#[derive(Default)]
pub(super) struct Delta {
    pub(super) entries: i64,
    pub(super) bytes: i64,
    pub(super) dead: i64,
    pub(super) ticket: i64,
    pub(super) deduplicated: u64,
    /// Writes stored as new entries.
    pub(super) appended: u64,
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
        self.ledger.commit(&Change {
            entries: d.entries,
            bytes: d.bytes,
            dead: d.dead,
            ticket: d.ticket,
            stored: d.appended,
            deduplicated: d.deduplicated,
            transaction: true,
        });
        for w in d.stored.writes {
            self.recent.remember(w);
        }
    }
}
