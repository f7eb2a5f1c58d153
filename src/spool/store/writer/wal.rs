//! A bounded write-ahead log, and the disk use the spool's admission is
//! judged by.
//!
//! SQLite reuses the log from its start only when a checkpoint has copied
//! all of it into the database and no reader still needs it. A
//! checkpointer thread copies frames beside the writer (passive: it never
//! blocks a commit), but during a sustained burst the writer appends frames
//! faster than a concurrent checkpoint can finish, so the log never
//! restarts and grows without bound. So the writer itself, between two
//! transactions, finishes the checkpoint once the log passes
//! [`WAL_CHECKPOINT_AT`]: most frames are already copied, so it costs the
//! remainder and one fsync of the database, and the next transaction starts
//! the log over (truncated to [`WAL_CHECKPOINT_AT`] by
//! `journal_size_limit`). Past [`WAL_RESTART_AT`] it waits briefly for
//! readers (`RESTART`); past [`WAL_LIMIT`] the spool refuses new writes
//! (`spool_full`) rather than grow. This policy runs between transactions,
//! never inside one, so it is apart from the commit path.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use rusqlite::Connection;

use super::{StoreError, Writer, sibling};

/// The writer finishes the checkpoint itself once the log is this large.
const WAL_CHECKPOINT_AT: u64 = 16 * 1024 * 1024;
/// Past this, the writer waits (briefly) for readers to let the log restart.
const WAL_RESTART_AT: u64 = 32 * 1024 * 1024;
/// Past this, new writes are refused instead of growing the log.
pub const WAL_LIMIT: u64 = 48 * 1024 * 1024;
/// Commits between requests to the checkpointer thread.
const CHECKPOINT_EVERY: u32 = 64;
/// Commits before the writer tries again to finish a checkpoint that a
/// reader cut short.
const CHECKPOINT_RETRY_AFTER: u32 = 16;

/// Set up the writer's connection; `frames` receives the log's length (in
/// frames) after each commit.
pub(super) fn writer_pragmas(
    conn: &mut Connection,
    frames: Arc<AtomicU64>,
) -> Result<(), StoreError> {
    // Checkpoints run beside the writer (and, to bound the log, between its
    // transactions), never inside a commit.
    conn.pragma_update(None, "wal_autocheckpoint", 0)?;
    conn.pragma_update(None, "journal_size_limit", WAL_CHECKPOINT_AT as i64)?;
    // After wal_autocheckpoint, which replaces the WAL hook. The log file is
    // reused from its start after a checkpoint, so its size on disk says
    // nothing of how much of it is in use: SQLite's count of frames does.
    conn.wal_hook(Some(
        move |_: &mut rusqlite::hooks::Wal, pages: std::ffi::c_int| {
            frames.store(pages.max(0) as u64, Ordering::Relaxed);
            Ok(())
        },
    ))?;
    Ok(())
}

/// A file's length; a missing file has none.
fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

/// Runs passive checkpoints when the writer asks, or every second while
/// idle, until the writer is gone.
pub(super) fn checkpoint_loop(conn: Arc<Mutex<Connection>>, kicked: mpsc::Receiver<()>) {
    loop {
        match kicked.recv_timeout(Duration::from_secs(1)) {
            Ok(()) | Err(mpsc::RecvTimeoutError::Timeout) => {
                if let Ok(c) = conn.lock()
                    && let Err(e) = c.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
                {
                    tracing::debug!(error = %e, "spool checkpoint skipped");
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        }
    }
}

impl Writer {
    /// Disk use, the bound on the log, and the checkpointer's pace.
    pub(super) fn after_commit(&mut self) {
        self.measure();
        let wal = self.ledger.disk().wal_bytes;
        // An attempt a reader cut short is tried again a few commits later,
        // not after every one.
        if wal > WAL_CHECKPOINT_AT && self.checkpoint_wait == 0 && !self.finish_checkpoint(wal) {
            self.checkpoint_wait = CHECKPOINT_RETRY_AFTER;
        }
        self.checkpoint_wait = self.checkpoint_wait.saturating_sub(1);
        self.since_kick += 1;
        if self.since_kick >= CHECKPOINT_EVERY {
            // A full channel means a request is already pending.
            let _ = self.kick.try_send(());
            self.since_kick = 0;
        }
    }

    /// Whether the log was copied in full (the next commit starts it over).
    fn finish_checkpoint(&self, wal: u64) -> bool {
        let checkpoint = |mode: &str| -> rusqlite::Result<bool> {
            self.conn
                .prepare_cached(&format!("PRAGMA wal_checkpoint({mode})"))?
                .query_row([], |r| {
                    let (busy, log, done): (i64, i64, i64) = (r.get(0)?, r.get(1)?, r.get(2)?);
                    Ok(busy == 0 && log == done)
                })
        };
        if checkpoint("PASSIVE").unwrap_or(false) {
            return true;
        }
        if wal <= WAL_RESTART_AT {
            return false;
        }
        // A reader holds an old snapshot: wait a little for it.
        let _ = self.conn.busy_timeout(Duration::from_millis(100));
        let done = checkpoint("RESTART").unwrap_or_else(|e| {
            tracing::debug!(error = %e, wal_bytes = wal, "spool log restart postponed");
            false
        });
        let _ = self.conn.busy_timeout(Duration::from_secs(5));
        done
    }

    /// Disk use and the log in use, into the ledger.
    pub(super) fn measure(&self) {
        let pragma = |sql: &str| -> rusqlite::Result<i64> {
            self.conn.prepare_cached(sql)?.query_row([], |r| r.get(0))
        };
        let used = pragma("PRAGMA page_count").and_then(|pages| {
            let free = pragma("PRAGMA freelist_count")?;
            Ok((pages - free).max(0) as u64 * self.page_size)
        });

        // The log in use (frames and their headers), not the file, which
        // keeps its size when SQLite starts it over.
        let wal = self.frames.load(Ordering::Relaxed) * (self.page_size + 24);
        let wal_file = file_len(&sibling(&self.path, "-wal"));
        let disk = file_len(&self.path) + wal_file + file_len(&sibling(&self.path, "-shm"));
        self.ledger.measured(used.ok(), wal, disk);
    }
}
