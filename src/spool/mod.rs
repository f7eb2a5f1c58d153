//! Store-and-forward for idempotent writes: nothing acknowledged is lost.
//!
//! When a write on a spooling route cannot be delivered now for a transient
//! reason (breaker open, retries exhausted on a transient class, deadline
//! about to pass), [`layer::SpoolLayer`] commits it to the durable [`store`]
//! and answers the app with the protocol-correct success the SDK expects
//! (see [`record::spooled_response`]) — only after the commit. The
//! [`drain`] worker then delivers entries in order through the same breaker
//! and retry budget as live traffic; delivered entries are deleted, entries
//! the backend refuses for their own content move to a dead-letter table
//! with the backend's answer, and a refusal of everything (a rotated key, a
//! certificate gone bad) pauses the queue instead.
//!
//! Order: see [`admission`]. Capacity: `spool.max_entries` entries, and the
//! database may use at most `spool.max_bytes` of disk (its write-ahead log
//! is bounded apart, see [`store`]); past either a write is refused with
//! `spool_full` and nothing stored is dropped. Identical waiting writes are
//! stored once. Delivery is at least once; the backend's upsert by id makes
//! a repeat harmless.
//!
//! No anchor codebase has a spool; the shape borrows from tower's `buffer`
//! (a worker fed by a channel, `Closed` when it dies) and mini-redis (a
//! background task stopped by a shutdown signal, drained on exit).

pub mod admission;
mod batch;
pub mod cli;
pub mod drain;
pub mod layer;
pub mod record;
pub mod refusal;
pub mod store;
pub mod supervise;

pub use admission::{Admit, LiveGuard, Reservation, Resolved, Waiting};
pub use layer::{SpoolLayer, SpoolService};

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::HeaderName;
use serde::Serialize;
use tokio::sync::Notify;

use crate::classify::Class;
use crate::error::{Error, SpoolFull, SpoolUnavailable};
use crate::metrics::SpoolMetrics;
use admission::OrderState;
pub use store::DiskUse;
use store::{Appended, LedgerCounters, NewEntry, Store, StoreError};

/// Disk a stored write takes beyond its body and headers (row, index
/// entries, page slack), for the capacity check.
const ENTRY_OVERHEAD: u64 = 512;

/// The spool's settings, checked by the config (`[spool]`).
#[derive(Debug, Clone, PartialEq)]
pub struct SpoolSettings {
    /// Where entries are stored (a restart is needed to change it).
    pub backend: SpoolBackend,
    /// The SQLite store file (a restart is needed to change it).
    pub path: std::path::PathBuf,
    /// Most writes in one transaction (a restart is needed to change it).
    pub max_batch: usize,
    /// Capacity (live).
    pub limits: SpoolLimits,
    /// Store the client's credentials with each entry (live: applies to
    /// writes stored from then on).
    pub store_credentials: bool,
    /// The header that carries the client's credential.
    pub api_key_header: HeaderName,
    /// The credential replays send when credentials are not stored
    /// (marked sensitive: it never prints).
    pub replay_key: Option<(HeaderName, http::HeaderValue)>,
    /// How the replay worker paces itself (live).
    pub replay: ReplayParams,
    /// Margin kept before a spooling route's deadline for the local commit.
    pub commit_margin: std::time::Duration,
}

/// Which store the spool uses.
#[derive(Debug, Clone, PartialEq)]
pub enum SpoolBackend {
    /// A SQLite file at `path`, on this machine.
    Sqlite,
    /// A PostgreSQL database shared by every replica.
    Postgres(Box<store::pg::PgParams>),
}

/// How much the spool may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpoolLimits {
    /// Waiting entries.
    pub max_entries: u64,
    /// Bytes of database pages in use.
    pub max_bytes: u64,
}

/// The replay worker's pace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayParams {
    /// First delay after a failed replay.
    pub backoff_base: std::time::Duration,
    /// Largest delay between failed replays.
    pub backoff_max: std::time::Duration,
    /// Deliveries in flight at once.
    pub concurrency: usize,
    /// Most step writes joined into one replayed request.
    pub batch: usize,
    /// Most body bytes joined into one replayed request.
    pub batch_bytes: usize,
    /// Statuses that refuse a write for its content (dead letter).
    pub dead_letter_statuses: Vec<u16>,
}

/// What the spool does with writes, changed by a reload.
#[derive(Debug)]
struct Live {
    limits: SpoolLimits,
    /// Headers not written to disk (credentials, when not stored).
    skip: Vec<HeaderName>,
    /// Statuses that refuse a write for its content (see [`refusal`]).
    dead_letter_statuses: Vec<u16>,
}

impl Live {
    fn of(cfg: &SpoolSettings, sensitive: &[HeaderName]) -> Live {
        let mut skip = vec![http::header::HOST];
        if !cfg.store_credentials {
            skip.extend(sensitive.iter().cloned());
        }
        Live {
            limits: cfg.limits,
            skip,
            dead_letter_statuses: cfg.replay.dead_letter_statuses.clone(),
        }
    }
}

#[derive(Debug)]
struct Inner {
    store: Store,
    live: arc_swap::ArcSwap<Live>,
    order: Mutex<OrderState>,
    /// Wakes the worker: something was stored, or a live write finished.
    wake: Notify,
    metrics: SpoolMetrics,
    /// Set by the worker while the backend refuses everything.
    paused: Mutex<Option<Paused>>,
    /// Whether the replay worker runs (see [`supervise`]).
    worker: Mutex<supervise::WorkerHealth>,
    /// A refusal of everything a live write met (reason, detail): the
    /// worker pauses on it as on one of its own.
    pause_asked: Mutex<Option<(String, String)>>,
}

/// A cheap handle to the open spool.
#[derive(Debug, Clone)]
pub struct Spool {
    inner: Arc<Inner>,
}

/// Why the worker stopped delivering, while it waits for a probe to pass.
#[derive(Debug, Clone, Serialize)]
pub struct Paused {
    /// Stable label of the refusal (`status_401`, `tls`, `internal`, ...).
    pub reason: String,
    /// What the backend (or the connection) said.
    pub detail: String,
    /// When the pause began (ms since the epoch).
    pub since_ms: i64,
    /// When the next probe goes (ms since the epoch).
    pub next_probe_ms: i64,
}

/// The spool's state, for the admin endpoint.
#[derive(Debug, Clone, Serialize)]
pub struct SpoolStatus {
    /// The store file.
    pub path: String,
    /// Counts read from the store.
    #[serde(flatten)]
    pub stats: store::Stats,
    /// Disk use.
    pub disk: DiskUse,
    /// Writes committed since start.
    pub committed: u64,
    /// Writes not stored because an identical one was waiting.
    pub deduplicated: u64,
    /// Group commits since start.
    pub commit_batches: u64,
    /// Writes refused because the spool was full, since start.
    pub refused_full: u64,
    /// Capacity in entries.
    pub max_entries: u64,
    /// Capacity in bytes of database.
    pub max_bytes: u64,
    /// Set while the backend refuses every write and the worker waits.
    pub paused: Option<Paused>,
    /// Whether the replay worker runs.
    pub worker: supervise::WorkerHealth,
}

/// A write ready to be spooled.
#[derive(Debug, Clone)]
pub struct Write {
    /// Route name.
    pub route: Arc<str>,
    /// Original request id.
    pub request_id: String,
    /// Method.
    pub method: String,
    /// Path and query.
    pub path: String,
    /// Encoded headers (credentials left out unless stored).
    pub headers: Vec<u8>,
    /// Body.
    pub body: Bytes,
    /// Ordering keys.
    pub keys: Vec<String>,
}

/// The metric counters the spool's store counts its commits into.
pub(crate) fn ledger_counters(metrics: &SpoolMetrics) -> LedgerCounters {
    LedgerCounters {
        committed: metrics.committed.clone(),
        deduplicated: metrics.deduplicated.clone(),
        batches: metrics.commit_batches.clone(),
    }
}

impl Spool {
    /// Open the store at `spool.path` (see [`Store::open`]).
    pub fn open(
        cfg: &SpoolSettings,
        sensitive: &[HeaderName],
        metrics: SpoolMetrics,
        quarantine_corrupt: bool,
    ) -> Result<Spool, StoreError> {
        // The store counts its commits into the metrics' own counters.
        let counters = ledger_counters(&metrics);
        let store = match &cfg.backend {
            SpoolBackend::Sqlite => {
                Store::open(&cfg.path, quarantine_corrupt, cfg.max_batch, counters)?
            }
            // Called off the async threads (see the sidecar's start-up):
            // wait for the connection and migrations here.
            SpoolBackend::Postgres(p) => tokio::runtime::Handle::try_current()
                .map_err(|e| StoreError::Unavailable(e.to_string()))?
                .block_on(Store::open_postgres(p, cfg.max_batch, counters))?,
        };
        Ok(Spool::with_store(store, cfg, sensitive, metrics))
    }

    /// A spool over an open store.
    pub fn with_store(
        store: Store,
        cfg: &SpoolSettings,
        sensitive: &[HeaderName],
        metrics: SpoolMetrics,
    ) -> Spool {
        let next_ticket = store.ledger().max_ticket.max(0) as u64 + 1;
        Spool {
            inner: Arc::new(Inner {
                store,
                live: arc_swap::ArcSwap::from_pointee(Live::of(cfg, sensitive)),
                order: Mutex::new(OrderState::new(next_ticket)),
                wake: Notify::new(),
                metrics,
                paused: Mutex::new(None),
                worker: Mutex::new(supervise::WorkerHealth::starting()),
                pause_asked: Mutex::new(None),
            }),
        }
    }

    /// Take up reloaded settings: capacity and which headers are stored
    /// apply to the next write (the path and batch size need a restart).
    pub fn apply(&self, cfg: &SpoolSettings, sensitive: &[HeaderName]) {
        self.inner.live.store(Arc::new(Live::of(cfg, sensitive)));
    }

    /// Whether `class`, a refusal, is the system's (see [`refusal`]):
    /// the pause reason, or `None` for a refusal of the write's content.
    pub(crate) fn system_refusal(&self, class: &Class) -> Option<String> {
        refusal::system_refusal(class, &self.inner.live.load().dead_letter_statuses)
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// Why a write of `bytes` cannot be stored now, if it cannot.
    fn over_capacity(&self, bytes: u64) -> Option<String> {
        let counts = self.inner.store.ledger();
        let disk = self.inner.store.disk();
        let cfg = self.inner.live.load().limits;
        let (pending, pending_bytes) = self
            .inner
            .order
            .lock()
            .map(|o| o.pending())
            .unwrap_or((0, bytes));
        let entries = counts.entries;
        if entries + pending > cfg.max_entries {
            return Some(format!(
                "{entries} entries waiting, spool.max_entries is {}",
                cfg.max_entries
            ));
        }
        let used = disk.db_used_bytes;
        if used + pending_bytes.max(bytes) + ENTRY_OVERHEAD * pending.max(1) > cfg.max_bytes {
            return Some(format!(
                "{used} bytes of database in use, spool.max_bytes is {}",
                cfg.max_bytes
            ));
        }
        let wal = disk.wal_bytes;
        if wal > store::WAL_LIMIT {
            return Some(format!(
                "the write-ahead log is at its bound ({wal} bytes) while a reader holds it"
            ));
        }
        None
    }

    /// Commit `write` at its reserved place; returns once it is durable.
    pub async fn enqueue(&self, write: Write, place: Reservation) -> Result<Appended, Error> {
        let mut done = self.enqueue_many(vec![write], place).await?;
        done.pop()
            .ok_or_else(|| "spool: the store answered no write".into())
    }

    /// Commit `writes` — the entries one write became — at its reserved
    /// place, in one transaction: the first at the reservation's ticket,
    /// the next at the ticket after, and so on (the reservation took as
    /// many). Returns once all are durable; if any cannot be stored, none
    /// is.
    pub async fn enqueue_many(
        &self,
        writes: Vec<Write>,
        place: Reservation,
    ) -> Result<Vec<Appended>, Error> {
        let inner = &self.inner;
        let bytes: u64 = writes
            .iter()
            .map(|w| (w.body.len() + w.headers.len()) as u64)
            .sum();
        if let Some(why) = self.over_capacity(bytes) {
            inner.metrics.full.inc();
            tracing::warn!(reason = %why, "spool full; write refused");
            return Err(Box::new(SpoolFull(why)));
        }
        let entries: Vec<NewEntry> = writes
            .into_iter()
            .enumerate()
            .map(|(i, write)| {
                let ticket = place.ticket() + i as u64;
                NewEntry {
                    dedup: self.may_fold(ticket, &write.keys),
                    ticket,
                    route: write.route.to_string(),
                    request_id: write.request_id,
                    method: write.method,
                    path: write.path,
                    headers: write.headers,
                    body: write.body,
                    keys: write.keys,
                }
            })
            .collect();
        match inner.store.append_many(entries).await {
            Ok(appended) => {
                // The store counted the commit (its ledger).
                place.committed();
                Ok(appended)
            }
            Err(StoreError::DiskFull(e)) => {
                inner.metrics.full.inc();
                Err(Box::new(SpoolFull(format!("the disk is full: {e}"))))
            }
            Err(e) => Err(Box::new(SpoolUnavailable(e.to_string()))),
        }
    }

    /// Set the gauges from the ledger, the settings and the worker's state,
    /// as a scrape reads them: they are views of those, not counts kept
    /// beside them. The oldest entry's age takes a query.
    pub async fn refresh_metrics(&self) {
        let counts = self.inner.store.ledger();
        let disk = self.inner.store.disk();
        let m = &self.inner.metrics;
        let limits = self.inner.live.load().limits;
        let gauge = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        m.capacity_entries.set(gauge(limits.max_entries));
        m.capacity_bytes.set(gauge(limits.max_bytes));
        m.depth.set(gauge(counts.entries));
        m.bytes.set(gauge(counts.bytes));
        m.dead_letters.set(gauge(counts.dead_letters));
        m.disk_bytes.set(gauge(disk.disk_bytes));
        m.wal_bytes.set(gauge(disk.wal_bytes));
        m.paused.set(i64::from(self.paused().is_some()));
        let oldest = self.inner.store.oldest_ms().await.ok().flatten();
        let age = oldest.map_or(0.0, |o| (store::now_ms() - o).max(0) as f64 / 1000.0);
        self.inner.metrics.oldest_age_seconds.set(age);
    }

    /// A live write met a refusal of everything (see [`refusal`]): the
    /// worker pauses the queue as if it had met it.
    pub(crate) fn pause_for(&self, reason: String, detail: String) {
        if let Ok(mut p) = self.inner.pause_asked.lock() {
            *p = Some((reason, detail));
        }
        self.inner.wake.notify_one();
    }

    /// The refusal a live write met since the worker last looked.
    fn take_pause_request(&self) -> Option<(String, String)> {
        self.inner
            .pause_asked
            .lock()
            .ok()
            .and_then(|mut p| p.take())
    }

    /// Why the worker is paused, if it is.
    pub fn paused(&self) -> Option<Paused> {
        self.inner.paused.lock().ok().and_then(|p| p.clone())
    }

    fn set_paused(&self, p: Option<Paused>) {
        if let Ok(mut slot) = self.inner.paused.lock() {
            *slot = p;
        }
    }

    /// The spool's state.
    pub async fn stats(&self) -> Result<SpoolStatus, StoreError> {
        let stats = self.inner.store.stats().await?;
        let m = &self.inner.metrics;
        let counts = self.inner.store.ledger();
        Ok(SpoolStatus {
            path: self.inner.store.path().display().to_string(),
            stats,
            disk: self.inner.store.disk(),
            committed: counts.committed,
            deduplicated: counts.deduplicated,
            commit_batches: counts.commit_batches,
            refused_full: m.full.get(),
            max_entries: self.inner.live.load().limits.max_entries,
            max_bytes: self.inner.live.load().limits.max_bytes,
            paused: self.paused(),
            worker: self.worker_health(),
        })
    }
}

#[cfg(test)]
mod tests;
