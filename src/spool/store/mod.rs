//! The durable store: SQLite (bundled, WAL, `synchronous=FULL`).
//!
//! Why SQLite through rusqlite rather than redb: it is the most widely
//! deployed and tested embedded store, its WAL mode gives crash-safe commits
//! with one fsync per transaction, and an operator can open the file with
//! the `sqlite3` shell in an emergency. The bundled build pins the library
//! version, so behaviour does not depend on the host's copy.
//!
//! One writer thread owns the write connection and applies commands in
//! batches: everything queued while the previous transaction was committing
//! goes into the next one (group commit), so N concurrent writes cost one
//! fsync, not N. A write is acknowledged only after its transaction
//! commits, and each caller is told exactly what happened to its own
//! command (see [`writer`]). Reads (the replay worker's next entries,
//! stats) use a second connection; WAL lets them run beside the writer.
//!
//! Counts come from one ledger kept by triggers in the same transaction as
//! the rows ([`schema`]); the writer mirrors it in memory after each commit
//! and re-reads it, in its own thread, when the operator CLI may have
//! changed the file. Disk use is bounded: see [`writer`] for the
//! write-ahead log and [`crate::spool`] for admission.

mod ops;
pub mod pg;
mod schema;
mod writer;

pub use ops::{count, list_dead, list_entries, purge, requeue, stats};

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use bytes::Bytes;
use rusqlite::{Connection, OpenFlags};
use serde::Serialize;
use tokio::sync::oneshot;

/// Largest backend answer kept with a dead letter.
pub(super) const MAX_DEAD_RESPONSE: usize = 64 * 1024;

/// Why the store could not be used.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The file is not a SQLite database, fails its integrity check, or was
    /// written by an incompatible version.
    #[error(
        "spool.path {path}: the spool store is unreadable or corrupt ({detail}). Refusing to start so that nothing stored in it is lost. Back it up or inspect it, then start with --quarantine-corrupt-spool to move it aside and begin with an empty spool"
    )]
    Corrupt {
        /// The store file.
        path: PathBuf,
        /// What SQLite said.
        detail: String,
    },
    /// The file or its directory could not be created or opened.
    #[error("spool.path {path}: {detail}")]
    Open {
        /// The store file.
        path: PathBuf,
        /// What went wrong.
        detail: String,
    },
    /// The filesystem is full: nothing in the transaction was stored.
    #[error("spool store: disk full: {0}")]
    DiskFull(String),
    /// A statement failed (I/O error, read-only filesystem, ...).
    #[error("spool store: {0}")]
    Sql(String),
    /// The writer thread is gone.
    #[error("spool store is closed")]
    Closed,
    /// The shared database cannot be reached (down, refusing
    /// connections, out of connections): nothing was stored.
    #[error("spool store unavailable: {0}")]
    Unavailable(String),
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        match e.sqlite_error_code() {
            Some(rusqlite::ErrorCode::DiskFull) => StoreError::DiskFull(e.to_string()),
            _ => StoreError::Sql(e.to_string()),
        }
    }
}

/// A write to store.
#[derive(Debug, Clone)]
pub struct NewEntry {
    /// Position in the replay order.
    pub ticket: u64,
    /// The route it came in on.
    pub route: String,
    /// The request id of the original request.
    pub request_id: String,
    /// HTTP method.
    pub method: String,
    /// Path and query.
    pub path: String,
    /// Encoded headers (see [`super::record`]).
    pub headers: Vec<u8>,
    /// The request body.
    pub body: Bytes,
    /// Ordering keys (see [`crate::route::Route::order_keys`]).
    pub keys: Vec<String>,
    /// Whether it may be folded into an identical waiting entry: no write
    /// of the same keys with an earlier ticket was in flight or being
    /// committed when it was sent to the store (see [`Appended`]).
    pub dedup: bool,
}

/// What an append did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Appended {
    /// Stored as a new entry.
    Stored,
    /// An identical write was already waiting, last in line for every one
    /// of its keys, among the writes stored recently: that entry stands for
    /// both (it takes the newer headers), so the write is delivered once.
    Duplicate(i64),
}

/// A stored write waiting for delivery.
#[derive(Debug, Clone, Serialize)]
pub struct Entry {
    /// Row id, which is also its position in the replay order.
    pub id: i64,
    /// The route it came in on.
    pub route: String,
    /// The original request id.
    pub request_id: String,
    /// When it was stored (ms since the epoch).
    pub created_ms: i64,
    /// HTTP method.
    pub method: String,
    /// Path and query.
    pub path: String,
    /// Encoded headers.
    #[serde(skip)]
    pub headers: Vec<u8>,
    /// The body.
    #[serde(skip)]
    pub body: Bytes,
    /// Body size in bytes.
    pub body_bytes: usize,
    /// Ordering keys.
    pub keys: Vec<String>,
    /// Delivery attempts so far.
    pub attempts: i64,
    /// The last delivery failure.
    pub last_error: Option<String>,
}

/// A write the backend refused permanently.
#[derive(Debug, Clone, Serialize)]
pub struct DeadLetter {
    /// Row id.
    pub id: i64,
    /// The route it came in on.
    pub route: String,
    /// The original request id.
    pub request_id: String,
    /// When it was first stored (ms since the epoch).
    pub created_ms: i64,
    /// When it was dead-lettered (ms since the epoch).
    pub dead_ms: i64,
    /// Ordering keys.
    pub keys: Vec<String>,
    /// Delivery attempts made.
    pub attempts: i64,
    /// The failure's class.
    pub class: String,
    /// The failure's kind.
    pub kind: String,
    /// The backend's status, if it answered.
    pub status: Option<i64>,
    /// The backend's answer (truncated to 64 KiB).
    pub response: Option<String>,
    /// Why it was dead-lettered.
    pub reason: String,
}

/// Counts for operators.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Stats {
    /// Entries waiting for delivery.
    pub depth: u64,
    /// Bytes of waiting request bodies.
    pub bytes: u64,
    /// Age of the oldest waiting entry, in seconds.
    pub oldest_age_seconds: Option<f64>,
    /// Entries in the dead-letter table.
    pub dead_letters: u64,
    /// Waiting entries per route.
    pub per_route: HashMap<String, u64>,
}

/// How a failed delivery is recorded as a dead letter.
#[derive(Debug, Clone)]
pub struct DeadInfo {
    /// Class label.
    pub class: String,
    /// Kind label.
    pub kind: String,
    /// Backend status, if any.
    pub status: Option<u16>,
    /// Backend answer, if any.
    pub response: Option<Vec<u8>>,
    /// Why.
    pub reason: String,
}

/// The in-memory mirror of the ledger and the store's disk use, written by
/// the writer thread after each commit (and after re-reading the ledger).
#[derive(Debug, Default)]
pub struct Totals {
    /// Entries waiting.
    pub entries: AtomicU64,
    /// Body bytes waiting.
    pub bytes: AtomicU64,
    /// Dead letters.
    pub dead: AtomicU64,
    /// Highest ticket seen.
    pub max_ticket: AtomicI64,
    /// Transactions committed.
    pub batches: AtomicU64,
    /// Writes not stored because an identical one was waiting.
    pub deduplicated: AtomicU64,
    /// Bytes of database pages in use (the file minus its free pages).
    pub db_used_bytes: AtomicU64,
    /// Bytes of the write-ahead log in use (its frames since it last
    /// started over).
    pub wal_bytes: AtomicU64,
    /// Size of the store's files together (database, WAL, shared memory).
    pub disk_bytes: AtomicU64,
    /// The largest `disk_bytes` seen since start.
    pub disk_high_water: AtomicU64,
}

impl Totals {
    /// Relaxed load of a counter.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// How the writer answers a command: what each of its writes did.
type Reply = oneshot::Sender<Result<Vec<Appended>, StoreError>>;

/// A command to the writer. Each runs whole in one transaction: the writes
/// of one `Append` are all stored, or none.
enum Cmd {
    Append(Vec<NewEntry>, Reply),
    Delivered(Vec<i64>, Reply),
    Failed(Vec<i64>, String, Reply),
    Dead(i64, DeadInfo, Reply),
    /// Re-read the ledger (the operator CLI may have changed the file).
    Resync(Reply),
}

impl std::fmt::Debug for Cmd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Cmd")
    }
}

/// The open store.
#[derive(Debug, Clone)]
pub struct Store {
    backend: Backend,
    /// The in-memory ledger and disk use (of the shared queue, with
    /// PostgreSQL).
    pub totals: Arc<Totals>,
    path: PathBuf,
}

#[derive(Debug, Clone)]
enum Backend {
    Sqlite {
        /// Held for as long as the store is open: one sidecar per store file.
        _lock: Arc<std::fs::File>,
        tx: mpsc::Sender<Cmd>,
        reader: Arc<Mutex<Connection>>,
    },
    Postgres(pg::PgStore),
}

pub use crate::clock::now_ms;

/// Create the file (mode 0600) and its directory (0700) if missing; tighten
/// an existing file's mode: it holds API keys.
fn prepare_file(path: &Path) -> Result<(), StoreError> {
    let open_err = |detail: String| StoreError::Open {
        path: path.to_path_buf(),
        detail,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
        && !dir.exists()
    {
        let mut b = std::fs::DirBuilder::new();
        b.recursive(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::DirBuilderExt;
            b.mode(0o700);
        }
        b.create(dir)
            .map_err(|e| open_err(format!("cannot create directory {}: {e}", dir.display())))?;
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
        {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let meta = std::fs::metadata(path).map_err(|e| open_err(e.to_string()))?;
                if meta.permissions().mode() & 0o077 != 0 {
                    tracing::warn!(path = %path.display(), "spool file was readable by others; setting mode 0600");
                    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
                        .map_err(|e| open_err(e.to_string()))?;
                }
            }
            Err(e) => {
                return Err(open_err(format!(
                    "cannot create the store file: {e} (is the directory writable?)"
                )));
            }
        }
    }
    Ok(())
}

fn configure(conn: &Connection) -> Result<(), rusqlite::Error> {
    conn.busy_timeout(Duration::from_secs(5))?;
    let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(rusqlite::Error::InvalidQuery);
    }
    // FULL: in WAL mode the log is synced at every commit, so an
    // acknowledged write survives power loss, not only a crash.
    conn.pragma_update(None, "synchronous", "FULL")?;
    Ok(())
}

/// Open a connection to an existing store and check it, without creating
/// anything (for the operator CLI and for the sidecar's start).
pub fn open_checked(path: &Path) -> Result<Connection, StoreError> {
    let corrupt = |detail: String| StoreError::Corrupt {
        path: path.to_path_buf(),
        detail,
    };
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| StoreError::Open {
        path: path.to_path_buf(),
        detail: e.to_string(),
    })?;
    configure(&conn).map_err(|e| match e.sqlite_error_code() {
        // Not the file's fault: say what the filesystem said.
        Some(rusqlite::ErrorCode::ReadOnly | rusqlite::ErrorCode::CannotOpen) => StoreError::Open {
            path: path.to_path_buf(),
            detail: e.to_string(),
        },
        _ => corrupt(e.to_string()),
    })?;
    let check: String = conn
        .query_row("PRAGMA quick_check", [], |r| r.get(0))
        .map_err(|e| corrupt(e.to_string()))?;
    if check != "ok" {
        return Err(corrupt(format!("integrity check: {check}")));
    }
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(|e| corrupt(e.to_string()))?;
    if version > schema::VERSION {
        return Err(corrupt(format!(
            "schema version {version} is newer than this binary's {}",
            schema::VERSION
        )));
    }
    if version < schema::VERSION {
        schema::migrate(&conn, version)
            .map_err(|e| corrupt(format!("cannot migrate from schema version {version}: {e}")))?;
    }
    Ok(conn)
}

/// Move a corrupt store (and its WAL files) aside; returns the new name.
pub fn quarantine(path: &Path) -> Result<PathBuf, StoreError> {
    let aside = PathBuf::from(format!("{}.corrupt-{}", path.display(), now_ms()));
    for suffix in ["", "-wal", "-shm"] {
        let from = PathBuf::from(format!("{}{suffix}", path.display()));
        if from.exists() {
            let to = PathBuf::from(format!("{}{suffix}", aside.display()));
            std::fs::rename(&from, &to).map_err(|e| StoreError::Open {
                path: from.clone(),
                detail: format!("cannot move aside: {e}"),
            })?;
        }
    }
    Ok(aside)
}

/// Take `<path>.lock`: two sidecars draining one store would each deliver
/// what the other also delivers, and order each key only within itself.
/// The lock goes with the process, however it ends. The operator CLI does
/// not take it (it works beside a running sidecar).
fn lock(path: &Path) -> Result<std::fs::File, StoreError> {
    let lock_path = PathBuf::from(format!("{}.lock", path.display()));
    let err = |detail: String| StoreError::Open {
        path: path.to_path_buf(),
        detail,
    };
    let mut open = std::fs::OpenOptions::new();
    open.read(true).write(true).create(true).truncate(false);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        open.mode(0o600);
    }
    let file = open
        .open(&lock_path)
        .map_err(|e| err(format!("cannot open {}: {e}", lock_path.display())))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(err(format!(
            "another datalayer-sidecar is using this spool ({} is locked); give each sidecar its own spool.path",
            lock_path.display()
        ))),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(err(format!("cannot lock {}: {e}", lock_path.display())))
        }
    }
}

/// Read the ledger into `totals` (all of it: the file is the truth).
fn load_totals(conn: &Connection, totals: &Totals) -> Result<(), StoreError> {
    let (n, bytes): (i64, i64) = conn.query_row(
        "SELECT coalesce(sum(entries), 0), coalesce(sum(bytes), 0) FROM ledger",
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    let counter = |name: &str| -> Result<i64, StoreError> {
        Ok(
            conn.query_row("SELECT value FROM counters WHERE name = ?1", [name], |r| {
                r.get(0)
            })?,
        )
    };
    let dead = counter("dead_letters")?;
    let dead_ticket = counter("max_dead_ticket")?;
    let max_id: Option<i64> = conn.query_row("SELECT max(id) FROM entries", [], |r| r.get(0))?;
    totals.entries.store(n.max(0) as u64, Ordering::Relaxed);
    totals.bytes.store(bytes.max(0) as u64, Ordering::Relaxed);
    totals.dead.store(dead.max(0) as u64, Ordering::Relaxed);
    totals
        .max_ticket
        .fetch_max(max_id.unwrap_or(0).max(dead_ticket), Ordering::Relaxed);
    Ok(())
}

impl Store {
    /// Open (creating if needed) the store at `path`. A corrupt store is an
    /// error unless `quarantine_corrupt`, in which case it is moved aside
    /// and an empty store is created. At most `max_batch` commands go into
    /// one transaction.
    pub fn open(
        path: &Path,
        quarantine_corrupt: bool,
        max_batch: usize,
    ) -> Result<Store, StoreError> {
        prepare_file(path)?;
        let lock = lock(path)?;
        let writer = match open_checked(path) {
            Ok(c) => c,
            Err(StoreError::Corrupt { detail, .. }) if quarantine_corrupt => {
                let aside = quarantine(path)?;
                tracing::warn!(
                    path = %path.display(),
                    moved_to = %aside.display(),
                    reason = %detail,
                    "corrupt spool moved aside; starting with an empty spool"
                );
                prepare_file(path)?;
                open_checked(path)?
            }
            Err(e) => return Err(e),
        };
        let totals = Arc::new(Totals::default());
        load_totals(&writer, &totals)?;
        let (reader, checkpointer) = writer::side_connections(path)?;
        let reader = Arc::new(Mutex::new(reader));
        let checkpointer = Arc::new(Mutex::new(checkpointer));
        let (tx, rx) = mpsc::channel();
        writer::spawn(
            path.to_path_buf(),
            writer,
            rx,
            totals.clone(),
            reader.clone(),
            checkpointer,
            max_batch,
        )?;
        Ok(Store {
            backend: Backend::Sqlite {
                _lock: Arc::new(lock),
                tx,
                reader,
            },
            totals,
            path: path.to_path_buf(),
        })
    }

    /// Open the shared store (see [`pg`]).
    pub async fn open_postgres(p: &pg::PgParams, max_batch: usize) -> Result<Store, StoreError> {
        let totals = Arc::new(Totals::default());
        let store = pg::PgStore::open(p, totals.clone(), max_batch).await?;
        tracing::info!(url = %p.display, replica = store.replica(), "spool: shared postgres store open");
        Ok(Store {
            path: PathBuf::from(p.display.clone()),
            backend: Backend::Postgres(store),
            totals,
        })
    }

    /// The store file (with PostgreSQL: the redacted URL).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The shared store, when the spool lives in PostgreSQL.
    pub fn postgres(&self) -> Option<&pg::PgStore> {
        match &self.backend {
            Backend::Postgres(p) => Some(p),
            Backend::Sqlite { .. } => None,
        }
    }

    /// Whether an entry's id is the ticket its write was admitted with
    /// (the local file). The shared store numbers entries itself, in commit
    /// order, so a new commit always lands after everything read.
    pub fn ids_are_tickets(&self) -> bool {
        matches!(self.backend, Backend::Sqlite { .. })
    }

    /// How long a renewal holds an entry for this replica (the shared
    /// store); `None` for the local file, which one sidecar holds alone.
    pub fn lease(&self) -> Option<Duration> {
        self.postgres().map(pg::PgStore::lease)
    }

    /// Least time between two reads of the head while the queue is short
    /// (the last read took all there was): none for the local file; for the
    /// shared store, where a read is a claim, see
    /// [`pg::SHORT_CLAIM_INTERVAL`].
    pub fn short_head_interval(&self) -> Duration {
        match &self.backend {
            Backend::Postgres(_) => pg::SHORT_CLAIM_INTERVAL,
            Backend::Sqlite { .. } => Duration::ZERO,
        }
    }

    async fn call(&self, make: impl FnOnce(Reply) -> Cmd) -> Result<Vec<Appended>, StoreError> {
        let Backend::Sqlite { tx: sender, .. } = &self.backend else {
            return Err(StoreError::Closed);
        };
        let (tx, rx) = oneshot::channel();
        sender.send(make(tx)).map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Store a write; returns once it is durably committed (or found to
    /// duplicate a waiting one, see [`Appended::Duplicate`]).
    pub async fn append(&self, entry: NewEntry) -> Result<Appended, StoreError> {
        self.append_many(vec![entry])
            .await?
            .pop()
            .ok_or(StoreError::Closed)
    }

    /// Store several writes in one transaction, all or none; returns once
    /// they are committed, with what happened to each.
    pub async fn append_many(&self, entries: Vec<NewEntry>) -> Result<Vec<Appended>, StoreError> {
        let n = entries.len();
        let out = match &self.backend {
            Backend::Postgres(p) => p.append_many(entries).await?,
            Backend::Sqlite { .. } => self.call(|r| Cmd::Append(entries, r)).await?,
        };
        if out.len() != n {
            return Err(StoreError::Sql(format!(
                "the store answered {} of {n} writes",
                out.len()
            )));
        }
        Ok(out)
    }

    /// Remove a delivered entry.
    pub async fn delivered(&self, id: i64) -> Result<(), StoreError> {
        self.delivered_many(vec![id]).await
    }

    /// Remove delivered entries, in one transaction.
    pub async fn delivered_many(&self, ids: Vec<i64>) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Postgres(p) => p.delivered_many(&ids, &self.totals).await,
            Backend::Sqlite { .. } => self.call(|r| Cmd::Delivered(ids, r)).await.map(|_| ()),
        }
    }

    /// Whether this sidecar may deliver `id` now: always with SQLite (one
    /// sidecar per file); with PostgreSQL, while its claim holds.
    pub async fn renew(&self, id: i64) -> Result<bool, StoreError> {
        Ok(self.renew_many(&[id]).await?.first() == Some(&id))
    }

    /// Of `ids`, those this sidecar may deliver now (see [`Store::renew`]).
    pub async fn renew_many(&self, ids: &[i64]) -> Result<Vec<i64>, StoreError> {
        match &self.backend {
            Backend::Postgres(p) => p.renew_many(ids).await,
            Backend::Sqlite { .. } => Ok(ids.to_vec()),
        }
    }

    /// Count a failed delivery attempt.
    pub async fn failed(&self, id: i64, error: String) -> Result<(), StoreError> {
        self.failed_many(vec![id], error).await
    }

    /// Count a failed delivery attempt of each of `ids`.
    pub async fn failed_many(&self, ids: Vec<i64>, error: String) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Postgres(p) => p.failed_many(&ids, error).await,
            Backend::Sqlite { .. } => self.call(|r| Cmd::Failed(ids, error, r)).await.map(|_| ()),
        }
    }

    /// Move an entry to the dead-letter table.
    pub async fn dead_letter(&self, id: i64, info: DeadInfo) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Postgres(p) => p.dead_letter(id, info, &self.totals).await,
            Backend::Sqlite { .. } => self.call(|r| Cmd::Dead(id, info, r)).await.map(|_| ()),
        }
    }

    /// Re-read the ledger from the file, in the writer's order (so no
    /// commit can slip between the read and its use); with PostgreSQL, the
    /// shared queue's counts.
    pub async fn resync(&self) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Postgres(p) => p.load_totals(&self.totals).await,
            Backend::Sqlite { .. } => self.call(Cmd::Resync).await.map(|_| ()),
        }
    }

    /// Run `f` on the read connection, off the async threads (SQLite).
    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let Backend::Sqlite { reader, .. } = &self.backend else {
            return Err(StoreError::Closed);
        };
        let reader = reader.clone();
        tokio::task::spawn_blocking(move || {
            let conn = reader.lock().map_err(|_| StoreError::Closed)?;
            f(&conn)
        })
        .await
        .map_err(|_| StoreError::Closed)?
    }

    /// The next entries to deliver, in order: at most `limit`, and no more
    /// once their bodies reach `max_bytes` (always at least one), so a queue
    /// of large writes cannot make the worker hold gigabytes.
    ///
    /// With PostgreSQL the entries are claimed for this replica (see [`pg`]).
    pub async fn head(&self, limit: usize, max_bytes: usize) -> Result<Vec<Entry>, StoreError> {
        match &self.backend {
            Backend::Postgres(p) => p.head(limit, max_bytes).await,
            Backend::Sqlite { .. } => self.read(move |c| ops::head(c, limit, max_bytes)).await,
        }
    }

    /// When the oldest waiting entry was stored (ms since the epoch).
    pub async fn oldest_ms(&self) -> Result<Option<i64>, StoreError> {
        match &self.backend {
            Backend::Postgres(p) => p.oldest_ms().await,
            Backend::Sqlite { .. } => {
                self.read(|c| {
                    Ok(c.query_row(
                        "SELECT created_ms FROM entries ORDER BY id LIMIT 1",
                        [],
                        |r| r.get::<_, i64>(0),
                    )
                    .ok())
                })
                .await
            }
        }
    }

    /// Counts for operators.
    pub async fn stats(&self) -> Result<Stats, StoreError> {
        match &self.backend {
            Backend::Postgres(p) => p.stats().await,
            Backend::Sqlite { .. } => self.read(ops::stats).await,
        }
    }
}

pub use writer::WAL_LIMIT;

#[cfg(test)]
mod tests;
