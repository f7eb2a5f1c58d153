//! The writer thread: the one owner of the write connection. It takes the
//! commands queued while the previous transaction was committing and
//! applies them as one group commit, then keeps the write-ahead log
//! bounded before the next.
//!
//! Each concern the thread serves has its own file:
//! - [`commit`]: group commits that tell each caller the truth;
//! - [`rows`]: what each command does to the rows;
//! - [`ledger`]: what a committed transaction changes in the in-memory
//!   mirror of the ledger;
//! - [`recent`]: recognising a write already stored;
//! - [`wal`]: the bound on the write-ahead log, and disk use;
//! - [`recover`]: a store file deleted or replaced while the sidecar runs;
//! - [`faults`]: the seam where tests make the storage fail.
//!
//! This file starts the threads and runs the writer's loop.

mod commit;
mod delta;
mod faults;
mod recent;
mod recover;
mod rows;
mod wal;

pub(super) use faults::Faults;
#[cfg(test)]
pub(super) use recent::RECENT_WINDOW;
pub use wal::WAL_LIMIT;

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, mpsc};
use tokio::time::Instant;

use rusqlite::Connection;
use tokio::sync::oneshot;

use super::{
    Appended, Cmd, DeadInfo, Ledger, MAX_DEAD_RESPONSE, NewEntry, RESYNC_EVERY, StoreError,
    load_ledger, now_ms, open_checked, prepare_file,
};
use commit::reply;
use faults::NoFaults;
use recent::Recent;
use recover::file_id;
use wal::{checkpoint_loop, writer_pragmas};

/// The reader's and the checkpointer's connections.
pub(super) fn side_connections(path: &Path) -> Result<(Connection, Connection), StoreError> {
    let reader = open_checked(path)?;
    let checkpointer = open_checked(path)?;
    // They touch few pages; keep their caches small (the writer keeps
    // SQLite's default).
    for c in [&reader, &checkpointer] {
        c.pragma_update(None, "cache_size", -256)?;
    }
    Ok((reader, checkpointer))
}

/// Start the writer and checkpointer threads.
pub(super) fn spawn(
    path: PathBuf,
    mut conn: Connection,
    rx: mpsc::Receiver<Cmd>,
    ledger: Arc<Ledger>,
    reader: Arc<Mutex<Connection>>,
    checkpointer: Arc<Mutex<Connection>>,
    max_batch: usize,
) -> Result<(), StoreError> {
    let frames = Arc::new(AtomicU64::new(0));
    writer_pragmas(&mut conn, frames.clone())?;
    let page_size: i64 = conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
    let (kick, kicked) = mpsc::sync_channel(1);
    let spawn_err = |e: std::io::Error| StoreError::Open {
        path: path.clone(),
        detail: format!("cannot start a spool thread: {e}"),
    };
    let ck = checkpointer.clone();
    std::thread::Builder::new()
        .name("spool-checkpoint".into())
        .spawn(move || checkpoint_loop(ck, kicked))
        .map_err(spawn_err)?;
    let writer = Writer {
        identity: file_id(&path).ok(),
        conn,
        path: path.clone(),
        ledger,
        reader,
        checkpointer,
        kick,
        since_kick: 0,
        page_size: page_size.max(512) as u64,
        broken: None,
        max_batch: max_batch.max(1),
        frames,
        checkpoint_wait: 0,
        recent: Recent::default(),
        faults: Box::new(NoFaults),
    };
    std::thread::Builder::new()
        .name("spool-writer".into())
        .spawn(move || writer.run(rx))
        .map_err(spawn_err)?;
    Ok(())
}

/// The file beside `path` whose name adds `suffix` (SQLite's `-wal` and
/// `-shm`, the recovery's copies).
fn sibling(path: &Path, suffix: &str) -> PathBuf {
    PathBuf::from(format!("{}{suffix}", path.display()))
}

struct Writer {
    conn: Connection,
    path: PathBuf,
    identity: Option<(u64, u64)>,
    ledger: Arc<Ledger>,
    reader: Arc<Mutex<Connection>>,
    checkpointer: Arc<Mutex<Connection>>,
    kick: mpsc::SyncSender<()>,
    since_kick: u32,
    page_size: u64,
    /// Why the writer refuses to write (the store file was replaced).
    broken: Option<String>,
    max_batch: usize,
    /// Frames in the log after the last commit (from SQLite's WAL hook).
    frames: Arc<AtomicU64>,
    /// Commits to go before the next attempt to finish a checkpoint.
    checkpoint_wait: u32,
    /// Recent writes, for de-duplication.
    recent: Recent,
    /// Failures a test injects; none in the running sidecar.
    faults: Box<dyn Faults>,
}

impl Writer {
    /// Read the ledger from the file into memory, with disk use; what was
    /// recently stored is forgotten (the file may have changed beneath).
    fn reload(&mut self) -> Result<(), StoreError> {
        load_ledger(&self.conn, &self.ledger)?;
        self.recent.clear(self.ledger.counts().max_ticket);
        self.measure();
        Ok(())
    }

    fn run(mut self, rx: mpsc::Receiver<Cmd>) {
        let mut read_at = Instant::now();
        // Ends when every sender is dropped (shutdown), after the queue is
        // empty.
        loop {
            let due = RESYNC_EVERY.saturating_sub(read_at.elapsed());
            let first = match rx.recv_timeout(due) {
                Ok(cmd) => cmd,
                Err(mpsc::RecvTimeoutError::Timeout) => Cmd::Resync(oneshot::channel().0),
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            };
            let mut batch = vec![first];
            while batch.len() < self.max_batch {
                match rx.try_recv() {
                    Ok(cmd) => batch.push(cmd),
                    Err(_) => break,
                }
            }
            let (resyncs, writes): (Vec<Cmd>, Vec<Cmd>) =
                batch.into_iter().partition(|c| matches!(c, Cmd::Resync(_)));
            if !writes.is_empty() {
                self.apply(writes);
                self.after_commit();
            }
            // The operator CLI may have changed the file: read its ledger
            // when asked and every RESYNC_EVERY, between transactions, so
            // no commit can slip between the read and its use.
            let due = read_at.elapsed() >= RESYNC_EVERY;
            if due || !resyncs.is_empty() {
                let r = self.reload().map(|()| Vec::new());
                if let Err(e) = &r {
                    tracing::warn!(error = %e, "spool: cannot re-read the ledger");
                }
                read_at = Instant::now();
                for cmd in resyncs {
                    reply(cmd, r.clone());
                }
            }
        }
        // Fold the log back into the database so a clean stop leaves one
        // file.
        let _ = self.conn.pragma_update(None, "wal_checkpoint", "TRUNCATE");
    }
}

/// Apply `batch` as the writer would, meeting `faults` (tests of the
/// commit's truthfulness).
#[cfg(test)]
pub(super) fn apply_for_test(
    conn: Connection,
    path: &Path,
    batch: Vec<Cmd>,
    ledger: Arc<Ledger>,
    faults: Box<dyn Faults>,
) -> Connection {
    let (kick, _kicked) = mpsc::sync_channel(1);
    let mut w = Writer {
        identity: None,
        conn,
        path: path.to_path_buf(),
        ledger,
        reader: Arc::new(Mutex::new(Connection::open_in_memory().unwrap())),
        checkpointer: Arc::new(Mutex::new(Connection::open_in_memory().unwrap())),
        kick,
        since_kick: 0,
        page_size: 4096,
        broken: None,
        max_batch: 1024,
        frames: Arc::new(AtomicU64::new(0)),
        checkpoint_wait: 0,
        recent: Recent::default(),
        faults,
    };
    w.apply(batch);
    w.conn
}
