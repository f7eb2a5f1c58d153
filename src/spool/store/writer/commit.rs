//! Group commits that tell each caller the truth.
//!
//! A batch runs in one transaction. If a statement fails, the transaction
//! is rolled back (SQLite may already have done so itself on `SQLITE_FULL`
//! or `SQLITE_IOERR`, and statements after that would have run outside any
//! transaction) and nothing in it is stored. A failure of the storage (disk
//! full, I/O, read-only) fails every command of the batch; a failure of one
//! command's own statement fails that command, and the rest run again in a
//! new transaction. Only commands of a committed transaction are answered
//! `Ok`, and only their effects reach the in-memory ledger. This file owns
//! that decision; the statements themselves are [`super::rows`]'.

use rusqlite::Connection;

use super::delta::Delta;
use super::rows::apply_cmd;
use super::{Appended, Cmd, StoreError, Writer};

/// A transaction that did not commit.
struct Failure {
    /// The command whose statement failed, if one did.
    at: Option<usize>,
    error: rusqlite::Error,
}

/// Run a statement that returns no rows, compiled once per connection.
fn run_cached(c: &Connection, sql: &str) -> rusqlite::Result<()> {
    c.prepare_cached(sql)?.execute([]).map(|_| ())
}

/// Whether an error is the storage's (every statement would fail) rather
/// than one command's.
fn is_storage(e: &rusqlite::Error) -> bool {
    use rusqlite::ErrorCode::*;
    matches!(
        e.sqlite_error_code(),
        Some(
            DiskFull
                | SystemIoFailure
                | ReadOnly
                | CannotOpen
                | DatabaseBusy
                | DatabaseLocked
                | DatabaseCorrupt
                | NotADatabase
                | OutOfMemory
                | FileLockingProtocolFailed
        )
    )
}

/// Answer the caller of `cmd`.
pub(super) fn reply(cmd: Cmd, r: Result<Vec<Appended>, StoreError>) {
    match cmd {
        Cmd::Append(_, tx)
        | Cmd::Delivered(_, tx)
        | Cmd::Failed(_, _, tx)
        | Cmd::Dead(_, _, tx)
        | Cmd::Resync(tx) => {
            let _ = tx.send(r);
        }
    }
}

impl Writer {
    /// Commit `batch`, answering every command in it with what happened to
    /// that command.
    pub(super) fn apply(&mut self, batch: Vec<Cmd>) {
        if let Err(e) = self.check_identity() {
            for cmd in batch {
                reply(cmd, Err(e.clone()));
            }
            return;
        }
        let mut pending = batch;
        while !pending.is_empty() {
            match self.try_commit(&pending) {
                Ok((outcomes, delta)) => {
                    self.publish(delta);
                    for (cmd, out) in pending.drain(..).zip(outcomes) {
                        reply(cmd, Ok(out));
                    }
                }
                Err(Failure { at: Some(i), error }) if !is_storage(&error) => {
                    tracing::error!(error = %error, "spool: a write was refused by the store");
                    reply(pending.remove(i), Err(error.into()));
                }
                Err(Failure { error, .. }) => {
                    let e = StoreError::from(error);
                    tracing::error!(error = %e, writes = pending.len(), "spool commit failed; nothing in it was stored");
                    for cmd in pending.drain(..) {
                        reply(cmd, Err(e.clone()));
                    }
                }
            }
        }
    }

    fn rollback(&self) {
        if !self.conn.is_autocommit() {
            let _ = run_cached(&self.conn, "ROLLBACK");
        }
    }

    /// One transaction over `cmds`: all of it commits, or none.
    fn try_commit(&self, cmds: &[Cmd]) -> Result<(Vec<Vec<Appended>>, Delta), Failure> {
        let c = &self.conn;
        run_cached(c, "BEGIN IMMEDIATE").map_err(|error| Failure { at: None, error })?;
        let mut delta = Delta::default();
        let mut outs = Vec::with_capacity(cmds.len());
        for (i, cmd) in cmds.iter().enumerate() {
            match apply_cmd(c, &self.recent, &*self.faults, cmd, &mut delta) {
                Ok(o) => outs.push(o),
                Err(error) => {
                    self.rollback();
                    return Err(Failure { at: Some(i), error });
                }
            }
        }
        if let Err(error) = run_cached(c, "COMMIT") {
            self.rollback();
            return Err(Failure { at: None, error });
        }
        Ok((outs, delta))
    }
}
