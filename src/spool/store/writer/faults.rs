//! The seam where a test makes the storage fail the way a real disk can.
//!
//! Some failures cannot be provoked on demand in a test: on `SQLITE_FULL`
//! or `SQLITE_IOERR`, SQLite may roll the whole transaction back before it
//! reports the error, and the writer must still tell each caller the truth.
//! So the writer is built with a [`Faults`]: the running sidecar gives it
//! [`NoFaults`], whose hooks do nothing, and a test gives it its own to
//! reproduce such a failure in the middle of a transaction. It is separate
//! so that no test-only branch sits inside the code that writes entries.

use rusqlite::Connection;

use super::NewEntry;

/// Failures injected into the writer's transactions.
pub(in crate::spool::store) trait Faults: Send {
    /// Runs inside the transaction, just before `entry` is written; an
    /// error fails that append as the statement's own error would.
    fn before_append(&self, _conn: &Connection, _entry: &NewEntry) -> rusqlite::Result<()> {
        Ok(())
    }
}

/// No faults: what the running sidecar uses.
pub(super) struct NoFaults;

impl Faults for NoFaults {}
