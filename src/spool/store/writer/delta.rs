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
    /// What it changes in the ledger.
    pub(super) change: Change,
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
            transaction: true,
            ..d.change
        });
        for w in d.stored.writes {
            self.recent.remember(w);
        }
    }
}
