//! The writer thread: group commits that tell each caller the truth, the
//! ledger's in-memory mirror, the bound on the write-ahead log, and a store
//! file that disappears while the sidecar runs.
//!
//! **Truthful group commits.** A batch runs in one transaction. If a
//! statement fails, the transaction is rolled back (SQLite may already have
//! done so itself on `SQLITE_FULL` or `SQLITE_IOERR`, and statements after
//! that would have run outside any transaction) and nothing in it is
//! stored. A failure of the storage (disk full, I/O, read-only) fails every
//! command of the batch; a failure of one command's own statement fails
//! that command, and the rest run again in a new transaction. Only commands
//! of a committed transaction are answered `Ok`, and only their effects
//! reach the in-memory ledger.
//!
//! **A bounded write-ahead log.** SQLite reuses the log from its start only
//! when a checkpoint has copied all of it into the database and no reader
//! still needs it. A checkpointer thread copies frames beside the writer
//! (passive: it never blocks a commit), but during a sustained burst the
//! writer appends frames faster than a concurrent checkpoint can finish, so
//! the log never restarts and grows without bound. So the writer itself,
//! between two transactions, finishes the checkpoint once the log passes
//! [`WAL_CHECKPOINT_AT`]: most frames are already copied, so it costs the
//! remainder and one fsync of the database, and the next transaction starts
//! the log over (truncated to [`WAL_CHECKPOINT_AT`] by
//! `journal_size_limit`). Past [`WAL_RESTART_AT`] it waits briefly for
//! readers (`RESTART`); past [`WAL_LIMIT`] the spool refuses new writes
//! (`spool_full`) rather than grow.
//!
//! **A deleted store file.** Before each transaction the writer checks that
//! the path still names the file it opened. If the file was deleted, every
//! acknowledged entry is still readable through the open connection: the
//! writer copies the database (`VACUUM INTO`) to a new file, closes the old
//! connections so the old write-ahead log is let go, moves the copy into
//! place and goes on. If another file took the name, it refuses to write to
//! either until restarted.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, params};

use super::{
    Appended, Cmd, DeadInfo, MAX_DEAD_RESPONSE, NewEntry, StoreError, Totals, load_totals, now_ms,
    open_checked, prepare_file,
};
use crate::route::BARRIER_KEY;

/// The writer finishes the checkpoint itself once the log is this large.
pub(super) const WAL_CHECKPOINT_AT: u64 = 16 * 1024 * 1024;
/// Past this, the writer waits (briefly) for readers to let the log restart.
pub(super) const WAL_RESTART_AT: u64 = 32 * 1024 * 1024;
/// Past this, new writes are refused instead of growing the log.
pub const WAL_LIMIT: u64 = 48 * 1024 * 1024;
/// Commits between requests to the checkpointer thread.
const CHECKPOINT_EVERY: u32 = 64;
/// Commits before the writer tries again to finish a checkpoint that a
/// reader cut short.
const CHECKPOINT_RETRY_AFTER: u32 = 16;

/// Run a statement that returns no rows, compiled once per connection.
fn run_cached(c: &Connection, sql: &str) -> rusqlite::Result<()> {
    c.prepare_cached(sql)?.execute([]).map(|_| ())
}

/// The reader's and the checkpointer's connections.
pub(super) fn side_connections(path: &Path) -> Result<(Connection, Connection), StoreError> {
    let reader = open_checked(path)?;
    let checkpointer = open_checked(path)?;
    // They touch few pages; keep their caches small (the writer keeps
    // SQLite's default 2 MiB).
    for c in [&reader, &checkpointer] {
        c.pragma_update(None, "cache_size", -256)?;
    }
    Ok((reader, checkpointer))
}

/// Set up the writer's connection; `frames` receives the log's length (in
/// frames) after each commit.
fn writer_pragmas(conn: &mut Connection, frames: Arc<AtomicU64>) -> Result<(), StoreError> {
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

/// Start the writer and checkpointer threads.
pub(super) fn spawn(
    path: PathBuf,
    mut conn: Connection,
    rx: mpsc::Receiver<Cmd>,
    totals: Arc<Totals>,
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
        totals,
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
    };
    std::thread::Builder::new()
        .name("spool-writer".into())
        .spawn(move || writer.run(rx))
        .map_err(spawn_err)?;
    Ok(())
}

/// (device, inode) of a file.
fn file_id(path: &Path) -> std::io::Result<(u64, u64)> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(path)?;
        Ok((m.dev(), m.ino()))
    }
    #[cfg(not(unix))]
    {
        std::fs::metadata(path).map(|_| (0, 0))
    }
}

fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

fn sibling(path: &Path, suffix: &str) -> PathBuf {
    PathBuf::from(format!("{}{suffix}", path.display()))
}

/// Runs passive checkpoints when the writer asks, or every second while
/// idle, until the writer is gone.
fn checkpoint_loop(conn: Arc<Mutex<Connection>>, kicked: mpsc::Receiver<()>) {
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

struct Writer {
    conn: Connection,
    path: PathBuf,
    identity: Option<(u64, u64)>,
    totals: Arc<Totals>,
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
}

/// What the commands of one transaction change in the ledger and in the
/// window of recent writes.
#[derive(Default)]
struct Delta {
    entries: i64,
    bytes: i64,
    dead: i64,
    ticket: i64,
    deduplicated: u64,
    stored: InTxn,
    removed: Vec<i64>,
}

/// A transaction that did not commit.
struct Failure {
    /// The command whose statement failed, if one did.
    at: Option<usize>,
    error: rusqlite::Error,
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

fn reply(cmd: Cmd, r: Result<Vec<Appended>, StoreError>) {
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
    fn run(mut self, rx: mpsc::Receiver<Cmd>) {
        // Ends when every sender is dropped (shutdown), after the queue is
        // empty.
        while let Ok(first) = rx.recv() {
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
            for cmd in resyncs {
                let r = load_totals(&self.conn, &self.totals).map(|()| Vec::new());
                self.recent
                    .clear(self.totals.max_ticket.load(Ordering::Relaxed));
                self.measure();
                reply(cmd, r);
            }
        }
        // Fold the log back into the database so a clean stop leaves one
        // file.
        let _ = self.conn.pragma_update(None, "wal_checkpoint", "TRUNCATE");
    }

    fn apply(&mut self, batch: Vec<Cmd>) {
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
            let r = match cmd {
                Cmd::Append(es, _) => es
                    .iter()
                    .map(|e| append_one(c, &self.recent, e, &mut delta))
                    .collect(),
                Cmd::Delivered(ids, _) => ids
                    .iter()
                    .try_for_each(|id| remove_one(c, *id, &mut delta))
                    .map(|()| Vec::new()),
                Cmd::Failed(ids, err, _) => ids
                    .iter()
                    .try_for_each(|id| {
                        c.prepare_cached(
                            "UPDATE entries SET attempts = attempts + 1, last_error = ?2 WHERE id = ?1",
                        )
                        .and_then(|mut s| s.execute(params![id, err]))
                        .map(|_| ())
                    })
                    .map(|()| Vec::new()),
                Cmd::Dead(id, info, _) => dead_one(c, *id, info, &mut delta).map(|_| Vec::new()),
                Cmd::Resync(_) => Ok(Vec::new()),
            };
            match r {
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

    fn publish(&mut self, d: Delta) {
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

    /// Disk use, the bound on the log, and the checkpointer's pace.
    fn after_commit(&mut self) {
        self.measure();
        let wal = Totals::get(&self.totals.wal_bytes);
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

    fn measure(&self) {
        let t = &self.totals;
        let pragma = |sql: &str| -> rusqlite::Result<i64> {
            self.conn.prepare_cached(sql)?.query_row([], |r| r.get(0))
        };
        let used = pragma("PRAGMA page_count").and_then(|pages| {
            let free = pragma("PRAGMA freelist_count")?;
            Ok((pages - free).max(0) as u64 * self.page_size)
        });
        if let Ok(used) = used {
            t.db_used_bytes.store(used, Ordering::Relaxed);
        }
        // The log in use (frames and their headers), not the file, which
        // keeps its size when SQLite starts it over.
        let wal = Totals::get(&self.frames) * (self.page_size + 24);
        let wal_file = file_len(&sibling(&self.path, "-wal"));
        let disk = file_len(&self.path) + wal_file + file_len(&sibling(&self.path, "-shm"));
        t.wal_bytes.store(wal, Ordering::Relaxed);
        t.disk_bytes.store(disk, Ordering::Relaxed);
        t.disk_high_water.fetch_max(disk, Ordering::Relaxed);
    }

    /// Whether the path still names the file this writer opened; recovers
    /// a deleted file.
    fn check_identity(&mut self) -> Result<(), StoreError> {
        if let Some(why) = &self.broken {
            return Err(StoreError::Sql(why.clone()));
        }
        let Some(expected) = self.identity else {
            return Ok(());
        };
        match file_id(&self.path) {
            Ok(id) if id == expected => Ok(()),
            Ok(_) => {
                let why = format!(
                    "{} was replaced by another file while the sidecar ran; writes are refused until a restart (the entries acknowledged before are in the old file, which the sidecar still holds open: copy it aside before restarting)",
                    self.path.display()
                );
                tracing::error!(path = %self.path.display(), "spool store file replaced while running; refusing writes");
                self.broken = Some(why.clone());
                Err(StoreError::Sql(why))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => self.recover(),
            Err(e) => Err(StoreError::Sql(format!(
                "cannot check {}: {e}",
                self.path.display()
            ))),
        }
    }

    /// The store file was deleted under the open connections: copy what
    /// they still see into a new file at the same path.
    fn recover(&mut self) -> Result<(), StoreError> {
        let path = self.path.clone();
        tracing::error!(path = %path.display(), "spool store file deleted while running; recovering it from the open connection");
        let copy = sibling(&path, &format!(".recovering-{}", now_ms()));
        let fail = |what: &str, e: &dyn std::fmt::Display| {
            StoreError::Sql(format!(
                "the store file {} was deleted and could not be recovered ({what}: {e}); acknowledged entries are still held by the running sidecar",
                path.display()
            ))
        };
        prepare_file(&copy)?;
        self.conn
            .execute("VACUUM INTO ?1", [copy.to_string_lossy().as_ref()])
            .map_err(|e| fail("copying", &e))?;
        std::fs::File::open(&copy)
            .and_then(|f| f.sync_all())
            .map_err(|e| fail("syncing the copy", &e))?;
        // Let go of the deleted file and its log before a new file takes
        // the name: a connection opened on the new file must not find the
        // old log beside it.
        let placeholder = || Connection::open_in_memory().map_err(StoreError::from);
        if let Ok(mut r) = self.reader.lock() {
            *r = placeholder()?;
        }
        if let Ok(mut c) = self.checkpointer.lock() {
            *c = placeholder()?;
        }
        drop(std::mem::replace(&mut self.conn, placeholder()?));
        for suffix in ["-wal", "-shm"] {
            let stale = sibling(&path, suffix);
            if stale.exists() {
                let aside = sibling(&path, &format!("{suffix}.orphan-{}", now_ms()));
                std::fs::rename(&stale, &aside)
                    .map_err(|e| fail("moving the old log aside", &e))?;
            }
        }
        std::fs::rename(&copy, &path).map_err(|e| fail("moving the copy into place", &e))?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
            && let Ok(d) = std::fs::File::open(dir)
        {
            let _ = d.sync_all();
        }
        let mut conn = open_checked(&path)?;
        writer_pragmas(&mut conn, self.frames.clone())?;
        let (reader, checkpointer) = side_connections(&path)?;
        if let Ok(mut r) = self.reader.lock() {
            *r = reader;
        }
        if let Ok(mut c) = self.checkpointer.lock() {
            *c = checkpointer;
        }
        self.conn = conn;
        self.identity = file_id(&path).ok();
        load_totals(&self.conn, &self.totals)?;
        self.recent
            .clear(self.totals.max_ticket.load(Ordering::Relaxed));
        tracing::warn!(
            path = %path.display(),
            waiting = Totals::get(&self.totals.entries),
            "spool store recovered; every acknowledged entry kept"
        );
        Ok(())
    }
}

fn add(counter: &std::sync::atomic::AtomicU64, delta: i64) {
    if delta >= 0 {
        counter.fetch_add(delta as u64, Ordering::Relaxed);
    } else {
        let _ = counter.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
            Some(v.saturating_sub(delta.unsigned_abs()))
        });
    }
}

/// Writes the writer remembers for de-duplication.
pub(super) const RECENT_WINDOW: usize = 4096;

/// A stored write, as de-duplication needs it.
struct RecentWrite {
    id: i64,
    keys: Box<[u64]>,
    barrier: bool,
    digest: u64,
}

/// The writes stored so far in the transaction being built, indexed as
/// [`Recent`] is, so checking an entry against them does not walk them.
#[derive(Default)]
struct InTxn {
    writes: Vec<RecentWrite>,
    /// Key → the latest id in the transaction that writes it.
    latest: HashMap<u64, i64>,
    /// The latest barrier in the transaction.
    barrier: Option<i64>,
    /// Id → its place in `writes`.
    at: HashMap<i64, usize>,
}

impl InTxn {
    fn push(&mut self, w: RecentWrite) {
        for k in w.keys.iter() {
            let id = self.latest.entry(*k).or_insert(w.id);
            *id = (*id).max(w.id);
        }
        if w.barrier {
            self.barrier = self.barrier.max(Some(w.id));
        }
        self.at.insert(w.id, self.writes.len());
        self.writes.push(w);
    }
}

/// The last [`RECENT_WINDOW`] writes stored, in commit order, indexed by
/// key, and the highest id that left the window. An identical write is
/// recognised when its original is still in the window — the SDK sends a
/// failed batch again 0.2 s later — without an index on disk.
#[derive(Default)]
pub(super) struct Recent {
    /// Ids in commit order (an id already forgotten is skipped).
    order: std::collections::VecDeque<i64>,
    writes: HashMap<i64, RecentWrite>,
    /// Key → ids in the window that write it.
    by_key: HashMap<u64, Vec<i64>>,
    barriers: std::collections::BTreeSet<i64>,
    /// No entry that left the window has a higher id.
    horizon: i64,
}

fn digest(e: &NewEntry) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = foldhash::fast::FixedState::default().build_hasher();
    for part in [
        e.route.as_bytes(),
        e.method.as_bytes(),
        e.path.as_bytes(),
        &e.body[..],
    ] {
        h.write_usize(part.len());
        h.write(part);
    }
    h.finish()
}

fn hashed_keys(keys: &[String]) -> Box<[u64]> {
    use std::hash::BuildHasher;
    let mut out: Vec<u64> = keys
        .iter()
        .map(|k| foldhash::fast::FixedState::default().hash_one(k))
        .collect();
    out.sort_unstable();
    out.dedup();
    out.into_boxed_slice()
}

impl RecentWrite {
    fn of(id: i64, e: &NewEntry) -> Self {
        RecentWrite {
            id,
            keys: hashed_keys(&e.keys),
            barrier: e.keys.iter().any(|k| k == BARRIER_KEY),
            digest: digest(e),
        }
    }
}

impl Recent {
    fn remember(&mut self, w: RecentWrite) {
        while self.order.len() >= RECENT_WINDOW {
            let Some(old) = self.order.pop_front() else {
                break;
            };
            if self.writes.contains_key(&old) {
                self.horizon = self.horizon.max(old);
                self.forget(old);
            }
        }
        self.order.push_back(w.id);
        for k in w.keys.iter() {
            self.by_key.entry(*k).or_default().push(w.id);
        }
        if w.barrier {
            self.barriers.insert(w.id);
        }
        self.writes.insert(w.id, w);
    }

    /// An entry left the queue (or the window): a write identical to it is
    /// a new write.
    fn forget(&mut self, id: i64) {
        let Some(w) = self.writes.remove(&id) else {
            return;
        };
        for k in w.keys.iter() {
            if let Some(ids) = self.by_key.get_mut(k) {
                ids.retain(|i| *i != id);
                if ids.is_empty() {
                    self.by_key.remove(k);
                }
            }
        }
        self.barriers.remove(&id);
    }

    /// The operator's tools may have changed the file: know nothing.
    fn clear(&mut self, max_id: i64) {
        *self = Recent {
            horizon: self.horizon.max(max_id),
            ..Recent::default()
        };
    }

    /// The waiting entry `e` repeats, if any: same route, method, path,
    /// body and keys, and the last entry — by ticket — of each of its keys,
    /// with no barrier after it (the body is then compared byte for byte).
    /// `in_batch`: writes stored earlier in the same transaction.
    fn candidate(&self, in_batch: &InTxn, e: &NewEntry) -> Option<i64> {
        if !e.dedup || e.keys.is_empty() || e.keys.iter().any(|k| k == BARRIER_KEY) {
            return None;
        }
        let keys = hashed_keys(&e.keys);
        let mut last: Option<i64> = None;
        for k in keys.iter() {
            let in_window = self.by_key.get(k).and_then(|ids| ids.iter().max().copied());
            let in_txn = in_batch.latest.get(k).copied();
            let latest = in_window.max(in_txn)?;
            match last {
                Some(l) if l != latest => return None,
                _ => last = Some(latest),
            }
        }
        let last = last?;
        let barrier = self.barriers.last().copied().max(in_batch.barrier);
        let w = self
            .writes
            .get(&last)
            .or_else(|| in_batch.at.get(&last).map(|&i| &in_batch.writes[i]))?;
        // An entry that left the window may come after it, and so may a
        // barrier.
        (last > self.horizon
            && barrier.is_none_or(|b| b < last)
            && last < e.ticket as i64
            && *w.keys == *keys
            && w.digest == digest(e))
        .then_some(last)
    }
}

/// Whether the stored entry `id` is the same request as `e`, byte for byte.
fn same_request(c: &Connection, id: i64, e: &NewEntry) -> rusqlite::Result<bool> {
    Ok(c.prepare_cached(
        "SELECT route = ?2 AND method = ?3 AND path = ?4 AND body_bytes = ?5 AND body = ?6
         FROM entries WHERE id = ?1",
    )?
    .query_row(
        params![
            id,
            e.route,
            e.method,
            e.path,
            e.body.len() as i64,
            &e.body[..]
        ],
        |r| r.get::<_, bool>(0),
    )
    .optional()?
    .unwrap_or(false))
}

fn append_one(
    c: &Connection,
    recent: &Recent,
    e: &NewEntry,
    delta: &mut Delta,
) -> rusqlite::Result<Appended> {
    let dup = recent
        .candidate(&delta.stored, e)
        .map(|id| same_request(c, id, e).map(|same| same.then_some(id)))
        .transpose()?
        .flatten();
    #[cfg(test)]
    if e.request_id == super::tests::FULL_AND_ROLLED_BACK {
        // What SQLite may do on SQLITE_FULL or SQLITE_IOERR: roll the
        // whole transaction back, then report the error.
        c.execute_batch("ROLLBACK")?;
        return Err(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_FULL),
            Some("database or disk is full".into()),
        ));
    }
    if let Some(dup) = dup {
        // The newer credentials go with it.
        c.prepare_cached("UPDATE entries SET headers = ?2 WHERE id = ?1")?
            .execute(params![dup, e.headers])?;
        delta.deduplicated += 1;
        return Ok(Appended::Duplicate(dup));
    }
    let keys = serde_json::to_string(&e.keys).unwrap_or_else(|_| "[]".into());
    // The ticket is the id, unless an entry the operator requeued while the
    // sidecar ran took it: then append at the end instead.
    c.prepare_cached(
        "INSERT INTO entries (id, route, request_id, created_ms, method, path, headers, body, keys, body_bytes)
         VALUES ((SELECT CASE WHEN EXISTS (SELECT 1 FROM entries WHERE id = ?1)
                      THEN (SELECT max(id) + 1 FROM entries) ELSE ?1 END),
                 ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
    )?
    .execute(params![
        e.ticket as i64,
        e.route,
        e.request_id,
        now_ms(),
        e.method,
        e.path,
        e.headers,
        &e.body[..],
        keys,
        e.body.len() as i64,
    ])?;
    let id = c.last_insert_rowid();
    delta.stored.push(RecentWrite::of(id, e));
    delta.entries += 1;
    delta.bytes += e.body.len() as i64;
    delta.ticket = delta.ticket.max(id);
    Ok(Appended::Stored)
}

fn remove_one(c: &Connection, id: i64, delta: &mut Delta) -> rusqlite::Result<()> {
    let len: Option<i64> = c
        .prepare_cached("SELECT body_bytes FROM entries WHERE id = ?1")?
        .query_row([id], |r| r.get(0))
        .optional()?;
    if let Some(len) = len {
        c.prepare_cached("DELETE FROM entries WHERE id = ?1")?
            .execute([id])?;
        delta.removed.push(id);
        delta.entries -= 1;
        delta.bytes -= len;
    }
    Ok(())
}

fn dead_one(c: &Connection, id: i64, info: &DeadInfo, delta: &mut Delta) -> rusqlite::Result<()> {
    let response = info
        .response
        .as_ref()
        .map(|r| r[..r.len().min(MAX_DEAD_RESPONSE)].to_vec());
    let moved = c.execute(
        "INSERT INTO dead_letters (ticket, route, request_id, created_ms, dead_ms, method, path, headers, body, keys, attempts, class, kind, status, response, reason)
         SELECT id, route, request_id, created_ms, ?2, method, path, headers, body, keys, attempts + 1, ?3, ?4, ?5, ?6, ?7
         FROM entries WHERE id = ?1",
        params![
            id,
            now_ms(),
            info.class,
            info.kind,
            info.status.map(i64::from),
            response,
            info.reason
        ],
    )?;
    if moved == 1 {
        remove_one(c, id, delta)?;
        delta.dead += 1;
    }
    Ok(())
}

/// Apply `batch` as the writer would (tests of the commit's truthfulness).
#[cfg(test)]
pub(super) fn apply_for_test(
    conn: Connection,
    path: &Path,
    batch: Vec<Cmd>,
    totals: Arc<Totals>,
) -> Connection {
    let (kick, _kicked) = mpsc::sync_channel(1);
    let mut w = Writer {
        identity: None,
        conn,
        path: path.to_path_buf(),
        totals,
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
    };
    w.apply(batch);
    w.conn
}
