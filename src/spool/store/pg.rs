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
//!   committed again, one transaction each, in order.
//! - **One order for the fleet.** Each transaction takes the single row of
//!   `counter` `FOR UPDATE` and numbers its entries from it (`seq`), so
//!   appending transactions are serialized and `seq` order is commit order:
//!   the order in which writes were acknowledged, whichever replica took
//!   them.
//! - **Per-key order.** A replica claims an entry only if no entry with a
//!   lower `seq` shares one of its keys (or is a barrier): version N+1 of a
//!   step is never delivered before version N.
//! - **Leases.** A claim writes a row in `leases` (owner, until); a replica
//!   that dies leaves leases that expire after `spool.lease`, and any other
//!   replica then takes the entries over. `FOR UPDATE SKIP LOCKED` keeps two
//!   replicas from claiming the same entry at once. Leases live in their own
//!   small rows: claiming and renewing rewrote whole entries (bodies
//!   included) when they were columns of `entries`, and that write traffic
//!   made two replicas drain slower than one.
//!
//! Migrations run at start under a transaction-scoped advisory lock, so
//! sidecars starting together apply each version once. No extension needed.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use deadpool_postgres::{Manager, ManagerConfig, Pool, QueueMode, RecyclingMethod};
use tokio::sync::{mpsc, oneshot};

use super::{Appended, DeadInfo, DeadLetter, Entry, NewEntry, Stats, StoreError, Totals, now_ms};
use crate::clock;
use crate::route::BARRIER_KEY;

/// Least time between two claims while the queue is short (the last claim
/// took all there was). A claim is one transaction whatever it returns, and
/// costs the server about as much as a whole batch of appends; claiming
/// after every commit at a steady write rate (a few entries each time) took
/// more of the server than the writes did, and acknowledgements fell
/// behind. Waiting this long lets a claim take what a few dozen commits
/// stored.
pub const SHORT_CLAIM_INTERVAL: Duration = Duration::from_millis(25);

/// The settings the shared store is opened with.
#[derive(Clone)]
pub struct PgParams {
    /// Parsed connection settings (password included).
    pub config: tokio_postgres::Config,
    /// The URL with the password replaced, for logs and `/config`.
    pub display: String,
    /// Extra CA certificates for the database's TLS certificate.
    pub ca_file: Option<PathBuf>,
    /// Connections at most.
    pub pool: usize,
    /// How long a claim holds an entry.
    pub lease: Duration,
}

impl std::fmt::Debug for PgParams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the password: only the redacted URL.
        f.debug_struct("PgParams")
            .field("url", &self.display)
            .field("pool", &self.pool)
            .field("lease", &self.lease)
            .finish()
    }
}

impl PartialEq for PgParams {
    fn eq(&self, other: &Self) -> bool {
        self.display == other.display
            && self.config.get_password() == other.config.get_password()
            && self.ca_file == other.ca_file
            && self.pool == other.pool
            && self.lease == other.lease
    }
}

/// `postgres://user:secret@host/db` → `postgres://user:<redacted>@host/db`.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "<unparsable postgres URL>".to_string();
    };
    let (auth, tail) = match rest.split_once('@') {
        Some((a, t)) => (Some(a), t),
        None => (None, rest),
    };
    let tail = tail
        .split('&')
        .map(|kv| {
            if kv.to_ascii_lowercase().contains("password=") {
                "password=<redacted>"
            } else {
                kv
            }
        })
        .collect::<Vec<_>>()
        .join("&");
    match auth {
        Some(a) => match a.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:<redacted>@{tail}"),
            None => format!("{scheme}://{a}@{tail}"),
        },
        None => format!("{scheme}://{tail}"),
    }
}

const MIGRATION_LOCK: i64 = 0x6473_6c73_7031; // "dslsp1"

/// Schema versions, applied in order; never edited once released.
const MIGRATIONS: &[&str] = &[
    "
CREATE TABLE datalayer_sidecar.counter (
    one  boolean PRIMARY KEY DEFAULT true CHECK (one),
    seq  bigint  NOT NULL
);
INSERT INTO datalayer_sidecar.counter (one, seq) VALUES (true, 0);
CREATE TABLE datalayer_sidecar.entries (
    seq            bigint PRIMARY KEY,
    route          text   NOT NULL,
    request_id     text   NOT NULL,
    created_ms     bigint NOT NULL,
    method         text   NOT NULL,
    path           text   NOT NULL,
    headers        bytea  NOT NULL,
    body           bytea  NOT NULL,
    keys           text[] NOT NULL,
    barrier        boolean NOT NULL,
    digest         bigint NOT NULL,
    attempts       bigint NOT NULL DEFAULT 0,
    last_error     text,
    replica        text   NOT NULL
);
-- Who delivers an entry now, and until when (see the module docs).
CREATE TABLE datalayer_sidecar.leases (
    seq      bigint PRIMARY KEY,
    owner    text   NOT NULL,
    until_ms bigint NOT NULL
);
CREATE INDEX entries_digest ON datalayer_sidecar.entries (digest);
-- A queue: rows are deleted soon after they are inserted. A vacuum started
-- by inserts alone finds nothing to reclaim and only competes with the
-- commits (on a shared core it held them back by 100 ms and more), so
-- inserts start none. Deliveries leave dead rows at the head of the queue,
-- which every claim walks over in order until a vacuum clears them, so
-- deletions start one early (every 20,000 rows, not a fifth of the table)
-- and it runs unthrottled. The freeze limits still apply.
ALTER TABLE datalayer_sidecar.entries SET (
    autovacuum_vacuum_insert_threshold = -1,
    autovacuum_vacuum_scale_factor = 0,
    autovacuum_vacuum_threshold = 20000,
    autovacuum_vacuum_cost_delay = 0);
CREATE INDEX entries_barrier ON datalayer_sidecar.entries (seq) WHERE barrier;
-- Each entry's keys, for the per-key order checks: a B-tree range scan per
-- key (a GIN index on the array cost more per insert, and an OR with the
-- barrier test kept the planner from using it).
CREATE TABLE datalayer_sidecar.entry_keys (
    key  text   NOT NULL,
    seq  bigint NOT NULL,
    PRIMARY KEY (key, seq)
) WITH (autovacuum_vacuum_insert_threshold = -1);
CREATE INDEX entry_keys_seq ON datalayer_sidecar.entry_keys (seq);
-- The ledger: counts kept by the same statements that change the rows, as
-- appended deltas (a single counts row would make every delivery wait for
-- the appending transaction's lock). Reading it sums a few rows instead of
-- scanning the queue; `load_totals` folds the deltas now and then.
CREATE TABLE datalayer_sidecar.ledger (
    route    text   NOT NULL,
    entries  bigint NOT NULL,
    bytes    bigint NOT NULL,
    dead     bigint NOT NULL
);
CREATE TABLE datalayer_sidecar.dead_letters (
    seq         bigint PRIMARY KEY,
    route       text   NOT NULL,
    request_id  text   NOT NULL,
    created_ms  bigint NOT NULL,
    dead_ms     bigint NOT NULL,
    method      text   NOT NULL,
    path        text   NOT NULL,
    headers     bytea  NOT NULL,
    body        bytea  NOT NULL,
    keys        text[] NOT NULL,
    attempts    bigint NOT NULL,
    class       text   NOT NULL,
    kind        text   NOT NULL,
    status      integer,
    response    bytea,
    reason      text   NOT NULL
);
-- Statement-level triggers over transition tables: one call per
-- statement, so a group commit's single INSERT costs one trigger run.
CREATE FUNCTION datalayer_sidecar.entries_added() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO datalayer_sidecar.entry_keys (key, seq)
    SELECT DISTINCT k.key, n.seq FROM new_rows n CROSS JOIN LATERAL unnest(n.keys) AS k(key);
    INSERT INTO datalayer_sidecar.ledger (route, entries, bytes, dead)
    SELECT route, count(*), sum(octet_length(body)), 0 FROM new_rows GROUP BY route;
    RETURN NULL;
END $$;
-- By an array of the removed seqs, so both deletes are index scans: a join
-- with the transition table (which has no statistics) was planned as a
-- scan of the whole order index, per delivery.
CREATE FUNCTION datalayer_sidecar.entries_removed() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    gone bigint[];
BEGIN
    SELECT array_agg(seq) INTO gone FROM old_rows;
    DELETE FROM datalayer_sidecar.entry_keys WHERE seq = ANY(gone);
    DELETE FROM datalayer_sidecar.leases WHERE seq = ANY(gone);
    INSERT INTO datalayer_sidecar.ledger (route, entries, bytes, dead)
    SELECT route, -count(*), -sum(octet_length(body)), 0 FROM old_rows GROUP BY route;
    RETURN NULL;
END $$;
CREATE FUNCTION datalayer_sidecar.dead_added() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO datalayer_sidecar.ledger (route, entries, bytes, dead)
    SELECT route, 0, 0, count(*) FROM new_rows GROUP BY route;
    RETURN NULL;
END $$;
CREATE FUNCTION datalayer_sidecar.dead_removed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO datalayer_sidecar.ledger (route, entries, bytes, dead)
    SELECT route, 0, 0, -count(*) FROM old_rows GROUP BY route;
    RETURN NULL;
END $$;
CREATE TRIGGER entries_added AFTER INSERT ON datalayer_sidecar.entries
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION datalayer_sidecar.entries_added();
CREATE TRIGGER entries_removed AFTER DELETE ON datalayer_sidecar.entries
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION datalayer_sidecar.entries_removed();
CREATE TRIGGER dead_added AFTER INSERT ON datalayer_sidecar.dead_letters
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION datalayer_sidecar.dead_added();
CREATE TRIGGER dead_removed AFTER DELETE ON datalayer_sidecar.dead_letters
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION datalayer_sidecar.dead_removed();
",
    "
-- Autoanalyze of the queue, cheap. With the default statistics target the
-- server samples 30,000 rows: every page of a queue of 100,000 writes, and
-- a sort of each sampled column, bodies and headers included. Run every
-- minute or so against a growing queue, on the core the sidecar shares,
-- that held ~1,000 acknowledgements past 10 ms each time (docs/spool.md).
-- The planner only needs row counts (kept by any sample) and the columns
-- the statements compare: 10 histogram buckets (3,000 sampled rows) serve
-- ordered sequence numbers, a flag and unique digests as well as 100 did,
-- and columns nothing filters on get no statistics.
ALTER TABLE datalayer_sidecar.entries
    ALTER COLUMN seq SET STATISTICS 10,
    ALTER COLUMN barrier SET STATISTICS 10,
    ALTER COLUMN digest SET STATISTICS 10,
    ALTER COLUMN route SET STATISTICS 10,
    ALTER COLUMN method SET STATISTICS 10,
    ALTER COLUMN path SET STATISTICS 10,
    ALTER COLUMN request_id SET STATISTICS 0,
    ALTER COLUMN created_ms SET STATISTICS 0,
    ALTER COLUMN headers SET STATISTICS 0,
    ALTER COLUMN body SET STATISTICS 0,
    ALTER COLUMN keys SET STATISTICS 0,
    ALTER COLUMN attempts SET STATISTICS 0,
    ALTER COLUMN last_error SET STATISTICS 0,
    ALTER COLUMN replica SET STATISTICS 0;
ALTER TABLE datalayer_sidecar.entry_keys
    ALTER COLUMN key SET STATISTICS 10,
    ALTER COLUMN seq SET STATISTICS 10;
",
];

/// Fold the ledger's deltas into one row per route. Replicas folding at
/// once each fold what they saw; the sums stay right.
const FOLD_LEDGER: &str = "
WITH gone AS (DELETE FROM datalayer_sidecar.ledger RETURNING *)
INSERT INTO datalayer_sidecar.ledger (route, entries, bytes, dead)
SELECT route, sum(entries), sum(bytes), sum(dead) FROM gone GROUP BY route
HAVING sum(entries) <> 0 OR sum(bytes) <> 0 OR sum(dead) <> 0";

/// Entries this replica may claim: not held by another replica's live
/// lease, and first in line for every one of their keys (no older entry
/// shares a key, no older barrier, and for a barrier no older entry at all).
///
/// The key check compares `o.seq + 0`, so the only index it can use is
/// `(key, seq)`, looked up by the entry's keys. With `o.seq` bare, the
/// planner could instead range-scan the `seq` index over every older key
/// row, dead ones included, per entry walked; it chose that plan when its
/// statistics described a small table, and a claim on a 100,000-entry
/// queue then ran for minutes while holding row locks that blocked the
/// other replica's deliveries. [`FIND_DUPLICATES`] does the same.
const CLAIMABLE: &str = "(l.seq IS NULL OR l.until_ms < k.now OR l.owner = $2)
    AND NOT EXISTS (
        SELECT 1 FROM datalayer_sidecar.entry_keys o
        WHERE o.key = ANY(e.keys) AND o.seq + 0 < e.seq)
    AND NOT EXISTS (
        SELECT 1 FROM datalayer_sidecar.entries b WHERE b.barrier AND b.seq < e.seq)
    AND (NOT e.barrier OR e.seq <= (SELECT min(f.seq) FROM datalayer_sidecar.entries f))";

const ENTRY_COLUMNS: &str =
    "seq, route, request_id, created_ms, method, path, headers, body, keys, attempts, last_error";

/// Lease times are the database's clock (`k.now`, the statement's start,
/// in ms), never a replica's: replicas whose clocks disagree still agree
/// on when a lease ran out.
const CLOCK: &str =
    "clock AS (SELECT (extract(epoch FROM statement_timestamp()) * 1000)::bigint AS now)";

/// A claim: the first claimable entries from `$4` on, leased to this
/// replica for `$1` ms, and the entries it already holds on a lease with
/// more than half its time left, up to `$3` in all. A lease row that
/// exists is taken over only if, once locked, it is still expired (or
/// ours): a renewal that committed while this claim ran wins, and the
/// entry is not returned. The row lock keeps a
/// concurrent claim off the new entries until this statement's leases are
/// committed; the leases keep them off afterwards. Entries held on a fresh
/// lease are neither locked nor checked again: no other replica may take
/// them while the lease runs, and nothing older than them can join their
/// keys (`seq` only grows). Locking and re-checking them made every claim
/// walk the replica's whole window of deliveries in flight again while a
/// deep queue drained (what that cost: docs/benchmarks.md). Their lease
/// rows go with their entries (the `entries_removed` trigger), so none is
/// counted here after its entry is gone. Built once: the entry columns are
/// prefixed with the table's alias.
static CLAIM: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    let columns: Vec<String> = ENTRY_COLUMNS
        .split(", ")
        .map(|col| format!("t.{col}"))
        .collect();
    format!(
        "WITH {CLOCK},
         mine AS (
            SELECT l.seq FROM datalayer_sidecar.leases l CROSS JOIN clock k
             WHERE l.seq >= $4 AND l.owner = $2 AND l.until_ms >= k.now + $1::bigint / 2
             ORDER BY l.seq LIMIT $3),
         c AS (
            SELECT e.seq FROM datalayer_sidecar.entries e
              LEFT JOIN datalayer_sidecar.leases l ON l.seq = e.seq
              CROSS JOIN clock k
             WHERE e.seq >= $4
               AND NOT coalesce(l.owner = $2 AND l.until_ms >= k.now + $1::bigint / 2, false)
               AND {CLAIMABLE}
             ORDER BY e.seq
             LIMIT greatest(0, $3 - (SELECT count(*) FROM mine))
             FOR UPDATE OF e SKIP LOCKED),
         claimed AS (
            INSERT INTO datalayer_sidecar.leases AS held (seq, owner, until_ms)
            SELECT seq, $2, (SELECT now FROM clock) + $1::bigint FROM c
            ON CONFLICT (seq) DO UPDATE SET owner = EXCLUDED.owner, until_ms = EXCLUDED.until_ms
             WHERE held.owner = EXCLUDED.owner OR held.until_ms < EXCLUDED.until_ms - $1::bigint
            RETURNING seq)
         SELECT {} FROM datalayer_sidecar.entries t
          WHERE t.seq IN (SELECT seq FROM mine UNION ALL SELECT seq FROM claimed)",
        columns.join(", ")
    )
});

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

type Reply = oneshot::Sender<Result<Vec<Appended>, StoreError>>;

/// The open shared store.
#[derive(Debug, Clone)]
pub struct PgStore {
    pool: Pool,
    appends: mpsc::UnboundedSender<(Vec<NewEntry>, Reply)>,
    replica: Arc<str>,
    lease: Duration,
    display: Arc<str>,
    /// The entries this replica has claimed and not yet finished with,
    /// so a hand-off releases them without scanning the queue.
    held: Arc<std::sync::Mutex<std::collections::BTreeSet<i64>>>,
    /// Where the next claim starts walking the queue (see [`PgStore::head`]).
    scan: Arc<std::sync::Mutex<Scan>>,
}

/// A claim walks the queue from `from`, not from its start: the rows below
/// are delivered (dead until a vacuum, and walking them cost a claim up to
/// 800 ms in a deep drain) or held by other replicas. Every few claims, and
/// after one that found nothing, it walks from the start again, so entries
/// another replica gave back are found. Order does not depend on it: a
/// claim never takes an entry while an older one of its keys waits.
#[derive(Debug, Default)]
struct Scan {
    from: i64,
    claims: u32,
}

/// Claims between walks from the start of the queue.
const REWIND_EVERY: u32 = 8;

fn tls(p: &PgParams) -> Result<tokio_postgres_rustls::MakeRustlsConnect, StoreError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = &p.ca_file {
        use pki_types::CertificateDer;
        use pki_types::pem::PemObject;
        let fail = |detail: String| StoreError::Open {
            path: path.clone(),
            detail: format!("spool.postgres_ca_file: {detail}"),
        };
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
            .map_err(|e| fail(e.to_string()))?
            .collect::<Result<_, _>>()
            .map_err(|e| fail(e.to_string()))?;
        for cert in certs {
            roots.add(cert).map_err(|e| fail(e.to_string()))?;
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| StoreError::Unavailable(format!("postgres: TLS: {e}")))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}

impl PgStore {
    /// Connect, apply migrations and load the shared totals into `totals`.
    /// `max_batch` writes at most go into one transaction.
    pub async fn open(
        p: &PgParams,
        totals: Arc<Totals>,
        max_batch: usize,
    ) -> Result<PgStore, StoreError> {
        let mut config = p.config.clone();
        // Acknowledged means committed and flushed, whatever the server's
        // default says. No JIT: these are small statements over indexes,
        // but once the queue is large the planner's cost estimates pass
        // `jit_above_cost`, and compiling each execution took 20-100 ms
        // (every commit, after an autoanalyze re-planned them).
        config.options("-c synchronous_commit=on -c jit=off");
        config.application_name("datalayer-sidecar");
        config.connect_timeout(Duration::from_secs(5));
        let manager = Manager::from_config(
            config,
            tls(p)?,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(p.pool.max(2))
            // The connection used last goes out first, so the group commit
            // keeps to one server process with its caches warm. (First in,
            // first out moved it to another process on every commit; the
            // server spent a quarter more CPU per write: docs/spool.md.)
            .queue_mode(QueueMode::Lifo)
            .wait_timeout(Some(Duration::from_secs(5)))
            .create_timeout(Some(Duration::from_secs(5)))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .build()
            .map_err(unavailable)?;
        migrate(&pool).await?;
        let replica: Arc<str> = format!(
            "{}-{}-{:08x}",
            hostname(),
            std::process::id(),
            fastrand::u32(..)
        )
        .into();
        let (appends, rx) = mpsc::unbounded_channel();
        let store = PgStore {
            pool,
            appends,
            replica,
            lease: p.lease,
            display: p.display.as_str().into(),
            held: Arc::default(),
            scan: Arc::default(),
        };
        store.load_totals(&totals).await?;
        tokio::spawn(writer(
            store.pool.clone(),
            rx,
            totals,
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

    /// Claim the next deliverable entries (see the module docs).
    pub async fn head(&self, limit: usize, max_bytes: usize) -> Result<Vec<Entry>, StoreError> {
        let mut c = self.client().await?;
        let t = c.transaction().await.map_err(unavailable)?;
        // Walk the queue in order and stop at `limit`. The planner
        // misjudges how many entries pass the order checks (it guessed one
        // of 100,000), and then chose to read and sort the whole queue for
        // every claim: 800 ms each while two replicas drained a deep queue.
        t.batch_execute(
            "SET LOCAL enable_seqscan = off; SET LOCAL enable_sort = off;
             SET LOCAL enable_hashjoin = off; SET LOCAL enable_bitmapscan = off",
        )
        .await
        .map_err(sql)?;
        let from = match self.scan.lock() {
            Ok(mut scan) => {
                scan.claims = scan.claims.wrapping_add(1);
                if scan.claims % REWIND_EVERY == 0 {
                    scan.from = 0;
                }
                scan.from
            }
            Err(_) => 0,
        };
        let claim = t.prepare_cached(&CLAIM).await.map_err(sql)?;
        let rows = t
            .query(
                &claim,
                // A lease of ours with more than half its time left is
                // neither rewritten nor locked (`mine` in the claim): every
                // claim returns the entries this replica already holds, and
                // rewriting their leases each time was most of a claim's
                // writes.
                &[
                    &clock::millis(self.lease),
                    &&*self.replica,
                    &(limit as i64),
                    &from,
                ],
            )
            .await
            .map_err(sql)?;
        t.commit().await.map_err(sql)?;
        let mut out: Vec<Entry> = rows.iter().map(entry_of).collect();
        out.sort_by_key(|e| e.id);
        if let Ok(mut scan) = self.scan.lock() {
            // Nothing found from here: walk from the start next time.
            scan.from = out.first().map_or(0, |e| e.id);
        }
        // Within the byte budget (always at least one); give back what this
        // claim newly took past it. Never an entry held before it: the
        // worker may be delivering that one, and a lease given back is one
        // another replica may take while the delivery runs.
        let mut bytes = 0usize;
        let mut keep = out.len();
        for (i, e) in out.iter().enumerate() {
            bytes += e.body_bytes;
            if bytes >= max_bytes {
                keep = i + 1;
                break;
            }
        }
        if keep < out.len() {
            let rest: Vec<i64> = match self.held.lock() {
                Ok(held) => out[keep..]
                    .iter()
                    .map(|e| e.id)
                    .filter(|id| !held.contains(id))
                    .collect(),
                Err(_) => Vec::new(),
            };
            out.truncate(keep);
            c.execute(
                "DELETE FROM datalayer_sidecar.leases WHERE seq = ANY($1) AND owner = $2",
                &[&rest, &&*self.replica],
            )
            .await
            .map_err(sql)?;
        }
        if let Ok(mut held) = self.held.lock() {
            held.extend(out.iter().map(|e| e.id));
        }
        Ok(out)
    }

    /// This replica is done with `id` (delivered, dead-lettered, or taken
    /// over by another replica).
    fn let_go(&self, id: i64) {
        if let Ok(mut held) = self.held.lock() {
            held.remove(&id);
        }
    }

    /// Remove delivered entries.
    pub async fn delivered_many(&self, ids: &[i64], totals: &Totals) -> Result<(), StoreError> {
        let c = self.client().await?;
        let delete = c.prepare_cached(DELETE_DELIVERED).await.map_err(pg_error)?;
        let rows = c
            .query(&delete, &[&ids, &&*self.replica])
            .await
            .map_err(sql)?;
        for &id in ids {
            self.let_go(id);
        }
        for r in rows {
            sub(totals, r.get::<_, i64>(0));
        }
        Ok(())
    }

    /// Before a delivery: extend this replica's claim on `ids`; returns
    /// those it still holds. An entry whose claim is gone (another replica
    /// took it after the lease ran out, or it was delivered) must not be
    /// sent from what this replica read earlier.
    pub async fn renew_many(&self, ids: &[i64]) -> Result<Vec<i64>, StoreError> {
        let c = self.client().await?;
        let renew = c.prepare_cached(RENEW_LEASES).await.map_err(pg_error)?;
        let rows = c
            .query(&renew, &[&ids, &&*self.replica, &clock::millis(self.lease)])
            .await
            .map_err(unavailable)?;
        let kept: std::collections::HashSet<i64> = rows.iter().map(|r| r.get(0)).collect();
        for &id in ids {
            if !kept.contains(&id) {
                self.let_go(id);
            }
        }
        Ok(ids.iter().copied().filter(|id| kept.contains(id)).collect())
    }

    /// Count a failed attempt of each of `ids`. The claims stay with this
    /// replica (it tries again) until their lease runs out.
    pub async fn failed_many(&self, ids: &[i64], error: String) -> Result<(), StoreError> {
        let c = self.client().await?;
        c.execute(
            "UPDATE datalayer_sidecar.entries e
                SET attempts = attempts + 1, last_error = $2
               FROM datalayer_sidecar.leases l
              WHERE e.seq = ANY($1) AND l.seq = e.seq AND l.owner = $3",
            &[&ids, &error, &&*self.replica],
        )
        .await
        .map_err(sql)?;
        Ok(())
    }

    /// Move an entry to the dead letters.
    pub async fn dead_letter(
        &self,
        id: i64,
        info: DeadInfo,
        totals: &Totals,
    ) -> Result<(), StoreError> {
        let mut c = self.client().await?;
        let t = c.transaction().await.map_err(sql)?;
        let response = info.response.map(|mut r| {
            r.truncate(super::MAX_DEAD_RESPONSE);
            r
        });
        let moved = t
            .query_opt(
                "WITH gone AS (DELETE FROM datalayer_sidecar.entries e
                     USING datalayer_sidecar.leases l
                     WHERE e.seq = $1 AND l.seq = e.seq AND l.owner = $8 RETURNING e.*)
                 INSERT INTO datalayer_sidecar.dead_letters
                   (seq, route, request_id, created_ms, dead_ms, method, path, headers, body, keys,
                    attempts, class, kind, status, response, reason)
                 SELECT seq, route, request_id, created_ms, $2, method, path, headers, body, keys,
                        attempts + 1, $3, $4, $5, $6, $7 FROM gone
                 RETURNING octet_length(body)::bigint",
                &[
                    &id,
                    &now_ms(),
                    &info.class,
                    &info.kind,
                    &info.status.map(i32::from),
                    &response,
                    &info.reason,
                    &&*self.replica,
                ],
            )
            .await
            .map_err(sql)?;
        t.commit().await.map_err(sql)?;
        self.let_go(id);
        if let Some(r) = moved {
            sub(totals, r.get::<_, i64>(0));
            totals.dead.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Re-read the shared totals (other replicas write and deliver too)
    /// from the ledger, folding its deltas first so it stays a few rows.
    pub async fn load_totals(&self, totals: &Totals) -> Result<(), StoreError> {
        let c = self.client().await?;
        c.batch_execute(FOLD_LEDGER).await.map_err(unavailable)?;
        let r = c
            .query_one(
                "SELECT coalesce(sum(entries), 0)::bigint, coalesce(sum(bytes), 0)::bigint,
                        coalesce(sum(dead), 0)::bigint,
                        (SELECT seq FROM datalayer_sidecar.counter)
                   FROM datalayer_sidecar.ledger",
                &[],
            )
            .await
            .map_err(unavailable)?;
        let (n, bytes, dead, seq): (i64, i64, i64, i64) = (r.get(0), r.get(1), r.get(2), r.get(3));
        totals.entries.store(n.max(0) as u64, Ordering::Relaxed);
        totals.bytes.store(bytes.max(0) as u64, Ordering::Relaxed);
        totals
            .db_used_bytes
            .store(bytes.max(0) as u64, Ordering::Relaxed);
        totals
            .disk_bytes
            .store(bytes.max(0) as u64, Ordering::Relaxed);
        totals.dead.store(dead.max(0) as u64, Ordering::Relaxed);
        totals.max_ticket.fetch_max(seq, Ordering::Relaxed);
        Ok(())
    }

    /// When the first entry in line was stored (entries keep queue order,
    /// so this is the oldest but for requeued dead letters).
    pub async fn oldest_ms(&self) -> Result<Option<i64>, StoreError> {
        let c = self.client().await?;
        Ok(c.query_opt(
            "SELECT created_ms FROM datalayer_sidecar.entries ORDER BY seq LIMIT 1",
            &[],
        )
        .await
        .map_err(unavailable)?
        .map(|r| r.get(0)))
    }

    /// Counts for operators (of the whole shared queue), from the ledger.
    pub async fn stats(&self) -> Result<Stats, StoreError> {
        let c = self.client().await?;
        let rows = c
            .query(
                "SELECT route, sum(entries)::bigint, sum(bytes)::bigint, sum(dead)::bigint
                   FROM datalayer_sidecar.ledger GROUP BY route",
                &[],
            )
            .await
            .map_err(unavailable)?;
        let mut s = Stats::default();
        for r in rows {
            let (route, n, bytes, dead): (String, i64, i64, i64) =
                (r.get(0), r.get(1), r.get(2), r.get(3));
            s.depth += n.max(0) as u64;
            s.bytes += bytes.max(0) as u64;
            s.dead_letters += dead.max(0) as u64;
            if n > 0 {
                s.per_route.insert(route, n as u64);
            }
        }
        s.oldest_age_seconds = self
            .oldest_ms()
            .await?
            .map(|ms| ((now_ms() - ms).max(0)) as f64 / 1000.0);
        Ok(s)
    }

    /// Waiting entries in delivery order, from `offset`.
    pub async fn list(&self, limit: usize, offset: usize) -> Result<Vec<Entry>, StoreError> {
        let c = self.client().await?;
        let rows = c
            .query(
                &format!(
                    "SELECT {ENTRY_COLUMNS} FROM datalayer_sidecar.entries ORDER BY seq LIMIT $1 OFFSET $2"
                ),
                &[&(limit as i64), &(offset as i64)],
            )
            .await
            .map_err(unavailable)?;
        Ok(rows.iter().map(entry_of).collect())
    }

    /// Dead letters, oldest first.
    pub async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, StoreError> {
        let c = self.client().await?;
        let rows = c
            .query(
                "SELECT seq, route, request_id, created_ms, dead_ms, keys, attempts, class, kind,
                        status, response, reason
                   FROM datalayer_sidecar.dead_letters ORDER BY seq LIMIT $1",
                &[&(limit as i64)],
            )
            .await
            .map_err(unavailable)?;
        Ok(rows
            .iter()
            .map(|r| DeadLetter {
                id: r.get(0),
                route: r.get(1),
                request_id: r.get(2),
                created_ms: r.get(3),
                dead_ms: r.get(4),
                keys: r.get(5),
                attempts: r.get(6),
                class: r.get(7),
                kind: r.get(8),
                status: r.get::<_, Option<i32>>(9).map(i64::from),
                response: r
                    .get::<_, Option<Vec<u8>>>(10)
                    .map(|b| String::from_utf8_lossy(&b).into_owned()),
                reason: r.get(11),
            })
            .collect())
    }

    /// Send dead letters again, at the end of the queue (all when `ids` is
    /// empty); returns how many moved.
    pub async fn requeue(&self, ids: &[i64]) -> Result<u64, StoreError> {
        let mut c = self.client().await?;
        let t = c.transaction().await.map_err(sql)?;
        let base: i64 = t
            .query_one("SELECT seq FROM datalayer_sidecar.counter FOR UPDATE", &[])
            .await
            .map_err(sql)?
            .get(0);
        let all = ids.is_empty();
        let moved = t
            .query(
                "WITH gone AS (
                    DELETE FROM datalayer_sidecar.dead_letters WHERE $1 OR seq = ANY($2) RETURNING *),
                 numbered AS (SELECT gone.*, row_number() OVER (ORDER BY seq) AS n FROM gone)
                 INSERT INTO datalayer_sidecar.entries
                   (seq, route, request_id, created_ms, method, path, headers, body, keys, barrier,
                    digest, attempts, replica)
                 SELECT $3 + n, route, request_id, created_ms, method, path, headers, body, keys,
                        $4 = ANY(keys), 0, 0, 'requeue' FROM numbered
                 RETURNING seq",
                &[&all, &ids, &base, &BARRIER_KEY],
            )
            .await
            .map_err(sql)?;
        let n = moved.len() as i64;
        t.execute("UPDATE datalayer_sidecar.counter SET seq = seq + $1", &[&n])
            .await
            .map_err(sql)?;
        t.commit().await.map_err(sql)?;
        Ok(n as u64)
    }

    /// Delete waiting entries and/or dead letters; returns how many.
    pub async fn purge(&self, entries: bool, dead: bool) -> Result<u64, StoreError> {
        let c = self.client().await?;
        let mut n = 0;
        if entries {
            n += c
                .execute("DELETE FROM datalayer_sidecar.entries", &[])
                .await
                .map_err(sql)?;
        }
        if dead {
            n += c
                .execute("DELETE FROM datalayer_sidecar.dead_letters", &[])
                .await
                .map_err(sql)?;
        }
        Ok(n)
    }

    /// Give back every entry this replica holds (at shutdown), so the
    /// fleet takes them at once instead of after the lease.
    pub async fn release_all(&self) -> Result<u64, StoreError> {
        let held: Vec<i64> = match self.held.lock() {
            Ok(mut h) => std::mem::take(&mut *h).into_iter().collect(),
            Err(_) => Vec::new(),
        };
        let c = self.client().await?;
        c.execute(
            "DELETE FROM datalayer_sidecar.leases WHERE seq = ANY($1) AND owner = $2",
            &[&held, &&*self.replica],
        )
        .await
        .map_err(sql)
    }
}

fn sub(totals: &Totals, bytes: i64) {
    let _ = totals
        .entries
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
            Some(v.saturating_sub(1))
        });
    for t in [&totals.bytes, &totals.db_used_bytes, &totals.disk_bytes] {
        let _ = t.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
            Some(v.saturating_sub(bytes.max(0) as u64))
        });
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "sidecar".to_string())
}

async fn migrate(pool: &Pool) -> Result<(), StoreError> {
    let mut c = pool.get().await.map_err(unavailable)?;
    let t = c.transaction().await.map_err(unavailable)?;
    // Sidecars starting together: one applies, the others wait and see
    // the versions applied.
    t.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(sql)?;
    t.batch_execute(
        "CREATE SCHEMA IF NOT EXISTS datalayer_sidecar;
         CREATE TABLE IF NOT EXISTS datalayer_sidecar.schema_version (version integer NOT NULL)",
    )
    .await
    .map_err(sql)?;
    let current: i64 = t
        .query_one(
            "SELECT coalesce(max(version), 0)::bigint FROM datalayer_sidecar.schema_version",
            &[],
        )
        .await
        .map_err(sql)?
        .get(0);
    if current > MIGRATIONS.len() as i64 {
        return Err(StoreError::Sql(format!(
            "postgres: the spool schema is version {current}, newer than this sidecar knows ({}); upgrade the sidecar",
            MIGRATIONS.len()
        )));
    }
    for (i, m) in MIGRATIONS.iter().enumerate().skip(current.max(0) as usize) {
        t.batch_execute(m).await.map_err(sql)?;
        t.execute(
            "INSERT INTO datalayer_sidecar.schema_version (version) VALUES ($1)",
            &[&(i as i32 + 1)],
        )
        .await
        .map_err(sql)?;
        tracing::info!(version = i + 1, "spool: postgres schema migrated");
    }
    t.commit().await.map_err(sql)?;
    Ok(())
}

fn digest(e: &NewEntry) -> i64 {
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
    h.finish() as i64
}

/// The group-commit loop: everything queued while a transaction commits
/// goes into the next one.
async fn writer(
    pool: Pool,
    mut rx: mpsc::UnboundedReceiver<(Vec<NewEntry>, Reply)>,
    totals: Arc<Totals>,
    max_batch: usize,
    replica: Arc<str>,
) {
    while let Some(first) = rx.recv().await {
        let mut writes = first.0.len();
        let mut batch = vec![first];
        while writes < max_batch {
            match rx.try_recv() {
                Ok(next) => {
                    writes += next.0.len();
                    batch.push(next);
                }
                Err(_) => break,
            }
        }
        let entries: Vec<&NewEntry> = batch.iter().flat_map(|(es, _)| es.iter()).collect();
        match commit(&pool, &entries, &replica).await {
            Ok(results) => {
                totals.batches.fetch_add(1, Ordering::Relaxed);
                let mut results = results.into_iter();
                for (es, reply) in batch {
                    let mine: Vec<Appended> = results.by_ref().take(es.len()).collect();
                    settle(&totals, &es, mine, reply);
                }
            }
            Err(StoreError::Sql(_)) if batch.len() > 1 => {
                // The server refused something in the batch (a value it
                // cannot store, say): the transaction is gone, but the
                // other writers' entries are not at fault. Each write goes
                // again in a transaction of its own, in the same order, so
                // only the refused one fails.
                for (es, reply) in batch {
                    let one: Vec<&NewEntry> = es.iter().collect();
                    match commit(&pool, &one, &replica).await {
                        Ok(mine) => {
                            totals.batches.fetch_add(1, Ordering::Relaxed);
                            settle(&totals, &es, mine, reply);
                        }
                        Err(e) => {
                            let _ = reply.send(Err(e));
                        }
                    }
                }
            }
            Err(e) => {
                // All or nothing: the transaction is gone, and so is every
                // write in it; each caller is told so.
                for (_, reply) in batch {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
    }
}

/// Count a committed write's entries and answer its caller.
fn settle(totals: &Totals, entries: &[NewEntry], results: Vec<Appended>, reply: Reply) {
    for (e, result) in entries.iter().zip(&results) {
        match result {
            Appended::Stored => {
                let bytes = e.body.len() as u64;
                totals.entries.fetch_add(1, Ordering::Relaxed);
                for t in [&totals.bytes, &totals.db_used_bytes, &totals.disk_bytes] {
                    t.fetch_add(bytes, Ordering::Relaxed);
                }
            }
            Appended::Duplicate(_) => {
                totals.deduplicated.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    let _ = reply.send(Ok(results));
}

/// Where a batch entry ends up: a new row at `seq`, or folded into the
/// waiting row `seq`.
#[derive(Clone, Copy)]
struct Slot {
    seq: i64,
    /// The batch entry whose content the row holds.
    like: usize,
}

fn same_content(a: &NewEntry, b: &NewEntry) -> bool {
    a.keys == b.keys
        && a.route == b.route
        && a.method == b.method
        && a.path == b.path
        && a.body == b.body
}

/// The waiting entry an asked write would fold into: same content and
/// keys, last in line for every one of its keys, no barrier after it. Keys
/// travel flat, each write naming its slice (`$7[ks:ke]`), because SQL
/// arrays of arrays must be rectangular.
const FIND_DUPLICATES: &str = "
SELECT q.i, d.seq, d.keys
  FROM unnest($1::int4[], $2::int8[], $3::text[], $4::text[], $5::text[], $6::bytea[],
              $8::int4[], $9::int4[])
       AS q(i, digest, route, method, path, body, ks, ke)
 CROSS JOIN LATERAL (
       SELECT e.seq, e.keys FROM datalayer_sidecar.entries e
        WHERE e.digest = q.digest AND e.route = q.route AND e.method = q.method
          AND e.path = q.path AND e.body = q.body AND e.keys = ($7::text[])[q.ks:q.ke]
          AND NOT EXISTS (SELECT 1 FROM datalayer_sidecar.entry_keys o
                           WHERE o.key = ANY(e.keys) AND o.seq + 0 > e.seq)
          AND NOT EXISTS (SELECT 1 FROM datalayer_sidecar.entries b
                           WHERE b.barrier AND b.seq > e.seq)
        LIMIT 1) d";

/// Every new row of a group commit in one statement; keys travel flat as in
/// [`FIND_DUPLICATES`].
const INSERT_ROWS: &str = "
INSERT INTO datalayer_sidecar.entries
       (seq, route, request_id, created_ms, method, path, headers, body, keys, barrier,
        digest, replica)
SELECT r.seq, r.route, r.request_id, $12, r.method, r.path, r.headers, r.body,
       ($8::text[])[r.ks:r.ke], r.barrier, r.digest, $13
  FROM unnest($1::int8[], $2::text[], $3::text[], $4::text[], $5::text[], $6::bytea[],
              $7::bytea[], $9::int4[], $10::int4[], $11::bool[], $14::int8[])
       AS r(seq, route, request_id, method, path, headers, body, ks, ke, barrier, digest)";

const LOCK_COUNTER: &str = "SELECT seq FROM datalayer_sidecar.counter FOR UPDATE";

const SET_COUNTER: &str = "UPDATE datalayer_sidecar.counter SET seq = $1";

/// A delivered batch leaves the queue (its keys, leases and counts go with
/// it: the `entries_removed` trigger) — the entries whose lease this
/// replica ($2) still owns. One another replica took over after the lease
/// ran out is that replica's to remove: it may be sending it now, and
/// removing it here would let the step's next version be claimed and
/// delivered before that send lands.
const DELETE_DELIVERED: &str = "DELETE FROM datalayer_sidecar.entries e
 USING datalayer_sidecar.leases l
 WHERE e.seq = ANY($1) AND l.seq = e.seq AND l.owner = $2
 RETURNING octet_length(e.body)::bigint";

/// Extend this replica's leases on `$1` by `$3` ms, those still running
/// only: a lease that ran out is up for any replica to take, so its holder
/// gives it up rather than deliver on it.
const RENEW_LEASES: &str = "WITH clock AS (
    SELECT (extract(epoch FROM statement_timestamp()) * 1000)::bigint AS now)
UPDATE datalayer_sidecar.leases l SET until_ms = k.now + $3::bigint FROM clock k
 WHERE l.seq = ANY($1) AND l.owner = $2 AND l.until_ms >= k.now RETURNING l.seq";

const UPDATE_HEADERS: &str = "
UPDATE datalayer_sidecar.entries e SET headers = u.headers
  FROM unnest($1::int8[], $2::bytea[]) AS u(seq, headers)
 WHERE e.seq = u.seq";

/// The keys of `entries` as one flat array, and each entry's slice of it
/// (1-based, inclusive).
fn flat_keys<'a>(
    entries: impl Iterator<Item = &'a NewEntry>,
) -> (Vec<&'a str>, Vec<i32>, Vec<i32>) {
    let (mut keys, mut ks, mut ke) = (Vec::new(), Vec::new(), Vec::new());
    for e in entries {
        ks.push(keys.len() as i32 + 1);
        keys.extend(e.keys.iter().map(String::as_str));
        ke.push(keys.len() as i32);
    }
    (keys, ks, ke)
}

/// One group commit in two round trips and at most seven statements,
/// whatever the batch size: `BEGIN`, the counter lock and one duplicate
/// look-up for the batch, pipelined; then one insert for every new row, one
/// header update for the folded ones, the counter update and `COMMIT`,
/// pipelined. Entries that follow another entry of the batch on the same
/// keys are decided here, in memory, from what the batch itself holds,
/// because the look-up ran before those rows existed.
///
/// Why not tokio-postgres' `Transaction`: it waits for `BEGIN` and for the
/// last statement before it sends `COMMIT`, two more round trips, and every
/// round trip is time all the batch's writers wait (on a shared core, a
/// wait for the server to be scheduled). Pipelined, a failed statement
/// aborts the transaction and the server answers the `COMMIT` behind it
/// with a rollback, so nothing of a failed batch is kept; after any error
/// the connection is rolled back before it goes back to the pool.
async fn commit(
    pool: &Pool,
    entries: &[&NewEntry],
    replica: &str,
) -> Result<Vec<Appended>, StoreError> {
    let c = pool.get().await.map_err(unavailable)?;
    let result = commit_on(&c, entries, replica).await;
    if result.is_err() && !c.is_closed() {
        // Whatever was sent, the connection leaves no transaction open. (A
        // `ROLLBACK` outside one only draws a warning.)
        if c.batch_execute("ROLLBACK").await.is_err() {
            let _ = deadpool_postgres::Object::take(c);
        }
    }
    result
}

async fn commit_on(
    t: &deadpool_postgres::ClientWrapper,
    entries: &[&NewEntry],
    replica: &str,
) -> Result<Vec<Appended>, StoreError> {
    use futures_util::future::{try_join3, try_join4, try_join5};

    // Every statement prepared once per connection: a statement given as
    // text is parsed, planned and described on every run, one more round
    // trip each.
    let (find_dups, insert, update_headers, lock_counter, set_counter) = try_join5(
        t.prepare_cached(FIND_DUPLICATES),
        t.prepare_cached(INSERT_ROWS),
        t.prepare_cached(UPDATE_HEADERS),
        t.prepare_cached(LOCK_COUNTER),
        t.prepare_cached(SET_COUNTER),
    )
    .await
    .map_err(pg_error)?;

    // Which entries ask the table: those no earlier entry of the batch
    // shares a key with (or precedes as a barrier); for the others the
    // batch itself decides.
    let barriers: Vec<bool> = entries
        .iter()
        .map(|e| e.keys.iter().any(|k| k == BARRIER_KEY))
        .collect();
    let digests: Vec<i64> = entries.iter().map(|e| digest(e)).collect();
    let mut seen: HashSet<&str> = HashSet::new();
    let mut after_barrier = false;
    let mut asked: Vec<usize> = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        let fresh = !after_barrier && e.keys.iter().all(|k| !seen.contains(k.as_str()));
        if fresh && e.dedup && !barriers[i] && !e.keys.is_empty() {
            asked.push(i);
        }
        seen.extend(e.keys.iter().map(String::as_str));
        after_barrier |= barriers[i];
    }

    let lock = t.query_one(&lock_counter, &[]);
    let lookup = async {
        if asked.is_empty() {
            return Ok(Vec::new());
        }
        let idx: Vec<i32> = asked.iter().map(|&i| i as i32).collect();
        let d: Vec<i64> = asked.iter().map(|&i| digests[i]).collect();
        let route: Vec<&str> = asked.iter().map(|&i| entries[i].route.as_str()).collect();
        let method: Vec<&str> = asked.iter().map(|&i| entries[i].method.as_str()).collect();
        let path: Vec<&str> = asked.iter().map(|&i| entries[i].path.as_str()).collect();
        let body: Vec<&[u8]> = asked.iter().map(|&i| &entries[i].body[..]).collect();
        let (keys, ks, ke) = flat_keys(asked.iter().map(|&i| entries[i]));
        t.query(
            &find_dups,
            &[&idx, &d, &route, &method, &path, &body, &keys, &ks, &ke],
        )
        .await
    };
    // Sent in this order on the first poll: the transaction opens first.
    let (_, base, found) = try_join3(t.batch_execute("BEGIN"), lock, lookup)
        .await
        .map_err(pg_error)?;
    let base: i64 = base.get(0);
    let mut in_table: HashMap<usize, i64> = HashMap::new();
    for r in found {
        let i = r.get::<_, i32>(0) as usize;
        let keys: Vec<String> = r.get(2);
        if entries.get(i).is_some_and(|e| e.keys == keys) {
            in_table.insert(i, r.get(1));
        }
    }

    // Decide each entry in order, keeping the latest row for every key.
    let mut latest: HashMap<&str, Slot> = HashMap::new();
    let mut results = Vec::with_capacity(entries.len());
    let mut rows: Vec<(i64, usize)> = Vec::new(); // (seq, entry) to insert
    let mut headers_of: HashMap<i64, usize> = HashMap::new(); // row -> newest headers
    let mut next = base;
    for (i, e) in entries.iter().enumerate() {
        let from_table = in_table.get(&i).map(|&seq| Slot { seq, like: i });
        let from_batch = (e.dedup && !barriers[i] && !e.keys.is_empty())
            .then(|| {
                let first = latest.get(e.keys[0].as_str())?;
                let all = e
                    .keys
                    .iter()
                    .all(|k| latest.get(k.as_str()).map(|s| s.seq) == Some(first.seq));
                (all && same_content(entries[first.like], e)).then_some(*first)
            })
            .flatten();
        if let Some(slot) = from_table.or(from_batch) {
            headers_of.insert(slot.seq, i);
            for k in &e.keys {
                latest.insert(k.as_str(), slot);
            }
            results.push(Appended::Duplicate(slot.seq));
            continue;
        }
        next += 1;
        rows.push((next, i));
        if barriers[i] {
            // Nothing before a barrier may absorb what follows it.
            latest.clear();
        }
        for k in &e.keys {
            latest.insert(k.as_str(), Slot { seq: next, like: i });
        }
        results.push(Appended::Stored);
    }

    let inserts = async {
        if rows.is_empty() {
            return Ok(0);
        }
        let (keys, ks, ke) = flat_keys(rows.iter().map(|&(_, i)| entries[i]));
        let col = |f: fn(&NewEntry) -> &str| -> Vec<&str> {
            rows.iter().map(|&(_, i)| f(entries[i])).collect()
        };
        let seqs: Vec<i64> = rows.iter().map(|&(s, _)| s).collect();
        let headers: Vec<&[u8]> = rows
            .iter()
            .map(|&(seq, i)| &entries[headers_of.get(&seq).copied().unwrap_or(i)].headers[..])
            .collect();
        let bodies: Vec<&[u8]> = rows.iter().map(|&(_, i)| &entries[i].body[..]).collect();
        let barrier: Vec<bool> = rows.iter().map(|&(_, i)| barriers[i]).collect();
        let digest: Vec<i64> = rows.iter().map(|&(_, i)| digests[i]).collect();
        t.execute(
            &insert,
            &[
                &seqs,
                &col(|e| &e.route),
                &col(|e| &e.request_id),
                &col(|e| &e.method),
                &col(|e| &e.path),
                &headers,
                &bodies,
                &keys,
                &ks,
                &ke,
                &barrier,
                &now_ms(),
                &replica,
                &digest,
            ],
        )
        .await
    };
    let updates = async {
        let fresh: HashSet<i64> = rows.iter().map(|&(s, _)| s).collect();
        let (seqs, headers): (Vec<i64>, Vec<&[u8]>) = headers_of
            .iter()
            .filter(|(seq, _)| !fresh.contains(seq))
            .map(|(&seq, &i)| (seq, &entries[i].headers[..]))
            .unzip();
        if seqs.is_empty() {
            return Ok(0);
        }
        t.execute(&update_headers, &[&seqs, &headers]).await
    };
    let counter = async {
        if next > base {
            t.execute(&set_counter, &[&next]).await
        } else {
            Ok(0)
        }
    };
    // `COMMIT` last: if a statement before it failed, the server has
    // aborted the transaction and answers it with a rollback.
    try_join4(inserts, updates, counter, t.batch_execute("COMMIT"))
        .await
        .map_err(pg_error)?;
    Ok(results)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_password_never_shows() {
        assert_eq!(
            redact_url("postgres://app:s3cret@db.internal:5432/chat?sslmode=require"),
            "postgres://app:<redacted>@db.internal:5432/chat?sslmode=require"
        );
        assert_eq!(
            redact_url("postgres://db/chat?user=app&password=s3cret"),
            "postgres://db/chat?user=app&password=<redacted>"
        );
        assert_eq!(
            redact_url("postgres://app@db/chat"),
            "postgres://app@db/chat"
        );
    }
}
