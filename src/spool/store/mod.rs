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

#[cfg(test)]
pub(crate) mod faulty;
mod file;
pub mod ledger;
mod ops;
pub mod pg;
mod schema;
mod sqlite;
mod writer;

pub use file::{open_checked, quarantine};
pub use ledger::{Counts, DiskUse, Ledger, LedgerCounters};
pub use ops::{count, list_dead, list_entries, purge, requeue, stats};
pub use sqlite::SqliteStore;

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;

use file::{load_ledger, prepare_file};
use sqlite::Cmd;

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

pub use crate::clock::now_ms;

/// How often a store re-reads its durable ledger: the operator CLI (and,
/// with PostgreSQL, the other replicas) change it beside this process.
pub const RESYNC_EVERY: Duration = Duration::from_secs(5);

/// What a store method returns: boxed, so the stores sit behind one
/// `dyn` trait (the spool picks one at start-up, and tests wrap one).
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// Whether other sidecars share the store, which decides how entries are
/// numbered and held and how a stop ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sharing {
    /// One sidecar holds the store (the local file): an entry's id is the
    /// ticket its write was admitted with, what it read stays its own, and
    /// it may deliver what is waiting before it stops.
    Alone,
    /// Replicas share the store (PostgreSQL): it numbers entries itself
    /// in commit order, a read claims entries for `lease`, and a stop
    /// gives the claims back.
    Shared {
        /// How long a claim or renewal holds an entry.
        lease: Duration,
    },
}

/// A spool store: the SQLite file ([`SqliteStore`]) or the shared
/// PostgreSQL database ([`pg::PgStore`]). Every method that changes rows
/// changes the [`Ledger`] in the same call, once the transaction
/// committed, and only then; nothing else keeps the store's counts.
pub trait SpoolStore: Send + Sync + std::fmt::Debug + 'static {
    /// Store writes in one transaction, all or none; returns once they
    /// are committed, with what happened to each (see [`Appended`]).
    fn append_many(&self, entries: Vec<NewEntry>) -> StoreFuture<'_, Vec<Appended>>;
    /// The next entries to deliver, in order: at most `limit`, and no more
    /// once their bodies reach `max_bytes` (always at least one). A shared
    /// store claims them for this replica.
    fn head(&self, limit: usize, max_bytes: usize) -> StoreFuture<'_, Vec<Entry>>;
    /// Of `ids`, those this sidecar may deliver now.
    fn renew_many<'a>(&'a self, ids: &'a [i64]) -> StoreFuture<'a, Vec<i64>>;
    /// Remove delivered entries, in one transaction.
    fn delivered_many(&self, ids: Vec<i64>) -> StoreFuture<'_, ()>;
    /// Count a failed delivery attempt of each of `ids`.
    fn failed_many(&self, ids: Vec<i64>, error: String) -> StoreFuture<'_, ()>;
    /// Move an entry to the dead-letter table.
    fn dead_letter(&self, id: i64, info: DeadInfo) -> StoreFuture<'_, ()>;
    /// Re-read the durable ledger now (the store also does so every
    /// [`RESYNC_EVERY`] on its own). SQLite reads it in its writer's
    /// order, so it never undoes a commit; PostgreSQL's shared counts move
    /// with every replica anyway, and a read that crossed a commit of this
    /// replica is set right by the next.
    fn resync(&self) -> StoreFuture<'_, ()>;
    /// When the oldest waiting entry was stored (ms since the epoch).
    fn oldest_ms(&self) -> StoreFuture<'_, Option<i64>>;
    /// Counts for operators, read from the store.
    fn stats(&self) -> StoreFuture<'_, Stats>;
    /// Give back what this sidecar holds, for others to deliver; how many.
    fn release_claims(&self) -> StoreFuture<'_, u64>;
    /// The in-memory ledger.
    fn ledger(&self) -> &Ledger;
    /// Whether others share the store.
    fn sharing(&self) -> Sharing;
}

/// The open store, whichever it is: cheap to clone, one per spool.
#[derive(Debug, Clone)]
pub struct Store {
    inner: Arc<dyn SpoolStore>,
    path: PathBuf,
}

impl Store {
    /// Open (creating if needed) the local store at `path` (see
    /// [`SqliteStore::open`]).
    pub fn open(
        path: &Path,
        quarantine_corrupt: bool,
        max_batch: usize,
        counters: LedgerCounters,
    ) -> Result<Store, StoreError> {
        let store = SqliteStore::open(path, quarantine_corrupt, max_batch, counters)?;
        Ok(Store::of(store, path.to_path_buf()))
    }

    /// Open the shared store (see [`pg`]).
    pub async fn open_postgres(
        p: &pg::PgParams,
        max_batch: usize,
        counters: LedgerCounters,
    ) -> Result<Store, StoreError> {
        let store = pg::PgStore::open(p, counters, max_batch).await?;
        tracing::info!(url = %p.display, replica = store.replica(), "spool: shared postgres store open");
        Ok(Store::of(store, PathBuf::from(p.display.clone())))
    }

    /// `store`, found at `path` (for the status page: with PostgreSQL, the
    /// redacted URL).
    pub fn of(store: impl SpoolStore, path: PathBuf) -> Store {
        Store {
            inner: Arc::new(store),
            path,
        }
    }

    /// The store file (with PostgreSQL: the redacted URL).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What the store holds and has committed, now.
    pub fn ledger(&self) -> Counts {
        self.inner.ledger().counts()
    }

    /// Entries waiting, now.
    pub fn waiting(&self) -> u64 {
        self.inner.ledger().entries()
    }

    /// The highest ticket the store has held: the end of the queue.
    pub fn max_ticket(&self) -> i64 {
        self.inner.ledger().max_ticket()
    }

    /// The store's disk use, now.
    pub fn disk(&self) -> DiskUse {
        self.inner.ledger().disk()
    }

    /// Whether others share the store.
    pub fn sharing(&self) -> Sharing {
        self.inner.sharing()
    }

    /// Whether an entry's id is the ticket its write was admitted with
    /// (the local file). The shared store numbers entries itself, in commit
    /// order, so a new commit always lands after everything read.
    pub fn ids_are_tickets(&self) -> bool {
        self.sharing() == Sharing::Alone
    }

    /// How long a renewal holds an entry for this replica (the shared
    /// store); `None` for the local file, which one sidecar holds alone.
    pub fn lease(&self) -> Option<Duration> {
        match self.sharing() {
            Sharing::Alone => None,
            Sharing::Shared { lease } => Some(lease),
        }
    }

    /// Least time between two reads of the head while the queue is short
    /// (the last read took all there was): none for the local file; for the
    /// shared store, where a read is a claim, see
    /// [`pg::SHORT_CLAIM_INTERVAL`].
    pub fn short_head_interval(&self) -> Duration {
        match self.sharing() {
            Sharing::Alone => Duration::ZERO,
            Sharing::Shared { .. } => pg::SHORT_CLAIM_INTERVAL,
        }
    }

    /// Store a write; returns once it is durably committed (or found to
    /// duplicate a waiting one, see [`Appended::Duplicate`]).
    pub async fn append(&self, entry: NewEntry) -> Result<Appended, StoreError> {
        self.append_many(vec![entry])
            .await?
            .pop()
            .ok_or(StoreError::Closed)
    }

    /// Store several writes in one transaction (see
    /// [`SpoolStore::append_many`]); a store that answers for fewer or more
    /// writes than it was given is an error, never a silent loss.
    pub async fn append_many(&self, entries: Vec<NewEntry>) -> Result<Vec<Appended>, StoreError> {
        let n = entries.len();
        let out = self.inner.append_many(entries).await?;
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
        self.inner.delivered_many(vec![id]).await
    }

    /// See [`SpoolStore::delivered_many`].
    pub async fn delivered_many(&self, ids: Vec<i64>) -> Result<(), StoreError> {
        self.inner.delivered_many(ids).await
    }

    /// Whether this sidecar may deliver `id` now: always with SQLite (one
    /// sidecar per file); with PostgreSQL, while its claim holds.
    pub async fn renew(&self, id: i64) -> Result<bool, StoreError> {
        Ok(self.inner.renew_many(&[id]).await?.first() == Some(&id))
    }

    /// See [`SpoolStore::renew_many`].
    pub async fn renew_many(&self, ids: &[i64]) -> Result<Vec<i64>, StoreError> {
        self.inner.renew_many(ids).await
    }

    /// Count a failed delivery attempt.
    pub async fn failed(&self, id: i64, error: String) -> Result<(), StoreError> {
        self.inner.failed_many(vec![id], error).await
    }

    /// See [`SpoolStore::failed_many`].
    pub async fn failed_many(&self, ids: Vec<i64>, error: String) -> Result<(), StoreError> {
        self.inner.failed_many(ids, error).await
    }

    /// See [`SpoolStore::dead_letter`].
    pub async fn dead_letter(&self, id: i64, info: DeadInfo) -> Result<(), StoreError> {
        self.inner.dead_letter(id, info).await
    }

    /// See [`SpoolStore::resync`].
    pub async fn resync(&self) -> Result<(), StoreError> {
        self.inner.resync().await
    }

    /// See [`SpoolStore::head`].
    pub async fn head(&self, limit: usize, max_bytes: usize) -> Result<Vec<Entry>, StoreError> {
        self.inner.head(limit, max_bytes).await
    }

    /// See [`SpoolStore::oldest_ms`].
    pub async fn oldest_ms(&self) -> Result<Option<i64>, StoreError> {
        self.inner.oldest_ms().await
    }

    /// See [`SpoolStore::stats`].
    pub async fn stats(&self) -> Result<Stats, StoreError> {
        self.inner.stats().await
    }

    /// See [`SpoolStore::release_claims`].
    pub async fn release_claims(&self) -> Result<u64, StoreError> {
        self.inner.release_claims().await
    }
}

pub use writer::WAL_LIMIT;

#[cfg(test)]
mod tests;
