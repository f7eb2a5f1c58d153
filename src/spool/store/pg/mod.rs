//! The shared store: PostgreSQL, for fleets of replicas.
//!
//! Why tokio-postgres with deadpool rather than sqlx: the store needs a
//! handful of fixed statements, no compile-time query checking against a
//! live database (CI would need one to build), and no ORM; tokio-postgres
//! is the async client sqlx and most Rust PostgreSQL code build on, and
//! deadpool-postgres is a small, well-kept pool for it. TLS goes through
//! rustls (`tokio-postgres-rustls`), the same verified stack as the
//! upstream's, with the built-in roots plus `spool.postgres_ca_file`.
//!
//! Guarantees, across every replica that shares the database:
//!
//! - **Acknowledged means committed.** A write is acknowledged after its
//!   transaction commits with `synchronous_commit = on`. Writes are group
//!   committed: what queued while one transaction committed goes into the
//!   next, all or nothing, and each caller is told what happened to its own.
//!   A write the server refuses fails alone: the others of its batch are
//!   committed again, one transaction each, in order ([`writer`]).
//! - **One order for the fleet.** Each transaction takes the single row of
//!   `counter` `FOR UPDATE` and numbers its entries from it (`seq`), so
//!   appending transactions are serialized and `seq` order is commit order:
//!   the order in which writes were acknowledged, whichever replica took
//!   them ([`commit`]).
//! - **Per-key order.** A replica claims an entry only if no entry with a
//!   lower `seq` shares one of its keys (or is a barrier): version N+1 of a
//!   step is never delivered before version N ([`claim`]).
//! - **Leases.** A claim writes a row in `leases` (owner, until); a replica
//!   that dies leaves leases that expire after `spool.lease`, and any other
//!   replica then takes the entries over. `FOR UPDATE SKIP LOCKED` keeps two
//!   replicas from claiming the same entry at once. Leases live in their own
//!   small rows, so claiming and renewing write those rather than rewriting
//!   whole entries (bodies included). Only the holder of an entry's lease
//!   records what became of it ([`outcome`]).
//!
//! Migrations run at start under a transaction-scoped advisory lock, so
//! sidecars starting together apply each version once ([`schema`]). No
//! extension needed.
//!
//! This file holds the handle itself and what every part of it shares: how
//! a row becomes an [`Entry`] and how a driver error becomes a
//! [`StoreError`].

mod claim;
mod commit;
mod connect;
mod counts;
mod fold;
mod operator;
mod outcome;
mod schema;
mod writer;

pub use claim::SHORT_CLAIM_INTERVAL;
pub use connect::{PgParams, redact_url};

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use deadpool_postgres::Pool;
use tokio::sync::{mpsc, oneshot};

use super::ledger::{Change, DiskUseIs, Ledger, LedgerCounters};
use super::{
    Appended, DeadInfo, DeadLetter, Entry, MAX_DEAD_RESPONSE, NewEntry, Sharing, SpoolStore, Stats,
    StoreError, StoreFuture, now_ms,
};

/// The open shared store.
#[derive(Debug, Clone)]
pub struct PgStore {
    pool: Pool,
    appends: mpsc::UnboundedSender<(Vec<NewEntry>, writer::Reply)>,
    replica: Arc<str>,
    lease: Duration,
    display: Arc<str>,
    /// The entries this replica has claimed and not yet finished with,
    /// so a hand-off releases them without scanning the queue.
    held: Arc<std::sync::Mutex<std::collections::BTreeSet<i64>>>,
    /// Where the next claim starts walking the queue (see [`PgStore::head`]).
    scan: Arc<std::sync::Mutex<claim::Scan>>,
    /// This replica's mirror of the shared ledger.
    ledger: Arc<Ledger>,
}

impl PgStore {
    /// Connect, apply migrations and load the shared ledger, which counts
    /// into `counters`. `max_batch` writes at most go into one
    /// transaction.
    pub async fn open(
        p: &PgParams,
        counters: LedgerCounters,
        max_batch: usize,
    ) -> Result<PgStore, StoreError> {
        let pool = connect::pool(p)?;
        schema::migrate(&pool).await?;
        let (appends, rx) = mpsc::unbounded_channel();
        let store = PgStore {
            pool,
            appends,
            replica: connect::replica_name(),
            lease: p.lease,
            display: p.display.as_str().into(),
            held: Arc::default(),
            scan: Arc::default(),
            ledger: Arc::new(Ledger::new(counters, DiskUseIs::Bytes)),
        };
        counts::reload_ledger(&store.pool, &store.ledger).await?;
        tokio::spawn(writer::writer(
            store.pool.clone(),
            rx,
            store.ledger.clone(),
            max_batch,
            store.replica.clone(),
        ));
        Ok(store)
    }

    /// The redacted URL.
    pub fn display(&self) -> &str {
        &self.display
    }

    /// How long a claim or a renewal holds an entry.
    pub fn lease(&self) -> Duration {
        self.lease
    }

    /// This replica's name in `leases.owner`.
    pub fn replica(&self) -> &str {
        &self.replica
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool.get().await.map_err(unavailable)
    }

    /// Store writes, all in one transaction; returns once it is
    /// committed.
    pub async fn append_many(&self, entries: Vec<NewEntry>) -> Result<Vec<Appended>, StoreError> {
        let (tx, rx) = oneshot::channel();
        self.appends
            .send((entries, tx))
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }
}

impl SpoolStore for PgStore {
    fn append_many(&self, entries: Vec<NewEntry>) -> StoreFuture<'_, Vec<Appended>> {
        Box::pin(PgStore::append_many(self, entries))
    }

    fn head(&self, limit: usize, max_bytes: usize) -> StoreFuture<'_, Vec<Entry>> {
        Box::pin(PgStore::head(self, limit, max_bytes))
    }

    fn renew_many<'a>(&'a self, ids: &'a [i64]) -> StoreFuture<'a, Vec<i64>> {
        Box::pin(PgStore::renew_many(self, ids))
    }

    fn delivered_many(&self, ids: Vec<i64>) -> StoreFuture<'_, ()> {
        Box::pin(async move { PgStore::delivered_many(self, &ids).await })
    }

    fn failed_many(&self, ids: Vec<i64>, error: String) -> StoreFuture<'_, ()> {
        Box::pin(async move { PgStore::failed_many(self, &ids, error).await })
    }

    fn dead_letter(&self, id: i64, info: DeadInfo) -> StoreFuture<'_, ()> {
        Box::pin(PgStore::dead_letter(self, id, info))
    }

    fn resync(&self) -> StoreFuture<'_, ()> {
        Box::pin(counts::reload_ledger(&self.pool, &self.ledger))
    }

    fn oldest_ms(&self) -> StoreFuture<'_, Option<i64>> {
        Box::pin(PgStore::oldest_ms(self))
    }

    fn stats(&self) -> StoreFuture<'_, Stats> {
        Box::pin(PgStore::stats(self))
    }

    fn release_claims(&self) -> StoreFuture<'_, u64> {
        Box::pin(self.release_all())
    }

    fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    fn sharing(&self) -> Sharing {
        Sharing::Shared { lease: self.lease }
    }
}

/// The columns [`entry_of`] reads, in its order.
const ENTRY_COLUMNS: &str =
    "seq, route, request_id, created_ms, method, path, headers, body, keys, attempts, last_error";

/// An entry from a row of [`ENTRY_COLUMNS`].
fn entry_of(r: &tokio_postgres::Row) -> Entry {
    let body = Bytes::from(r.get::<_, Vec<u8>>(7));
    Entry {
        id: r.get(0),
        route: r.get(1),
        request_id: r.get(2),
        created_ms: r.get(3),
        method: r.get(4),
        path: r.get(5),
        headers: r.get(6),
        body_bytes: body.len(),
        body,
        keys: r.get(8),
        attempts: r.get(9),
        last_error: r.get(10),
    }
}

/// `e` and its sources: "error performing TLS handshake: invalid peer
/// certificate: UnknownIssuer" says what to fix, the first part alone
/// does not. (Connection errors carry no password.)
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let next = s.to_string();
        if !out.contains(&next) {
            out.push_str(": ");
            out.push_str(&next);
        }
        source = s.source();
    }
    out
}

fn sql<E: std::error::Error>(e: E) -> StoreError {
    StoreError::Sql(format!("postgres: {}", chain(&e)))
}

fn unavailable<E: std::error::Error>(e: E) -> StoreError {
    StoreError::Unavailable(format!("postgres: {}", chain(&e)))
}

/// A refusal by the server is a statement error; anything without an SQL
/// state (a closed connection, an I/O error) means the database is gone.
fn pg_error(e: tokio_postgres::Error) -> StoreError {
    if e.code().is_some() {
        sql(e)
    } else {
        unavailable(e)
    }
}
