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
//! fsync, not N. A write is acknowledged only after its transaction commits.
//! Reads (the replay worker's next entries, stats) use a second connection;
//! WAL lets them run beside the writer.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use serde::Serialize;
use tokio::sync::oneshot;

/// Schema version written to `PRAGMA user_version`.
const SCHEMA_VERSION: i64 = 2;

/// Version 2 names each ordering key by what it writes (`step:<id>`):
/// version 1 spooled `ingestStep` writes only, keyed by the bare step id in
/// a column called `step_ids`.
const MIGRATE_1_TO_2: &str = "
ALTER TABLE entries RENAME COLUMN step_ids TO keys;
ALTER TABLE dead_letters RENAME COLUMN step_ids TO keys;
UPDATE entries SET keys =
    (SELECT json_group_array('step:' || value) FROM json_each(entries.keys));
UPDATE dead_letters SET keys =
    (SELECT json_group_array('step:' || value) FROM json_each(dead_letters.keys));
";
/// Largest backend answer kept with a dead letter.
const MAX_DEAD_RESPONSE: usize = 64 * 1024;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS entries (
    id          INTEGER PRIMARY KEY, -- the ticket: replay order
    route       TEXT    NOT NULL,
    request_id  TEXT    NOT NULL,
    created_ms  INTEGER NOT NULL,
    method      TEXT    NOT NULL,
    path        TEXT    NOT NULL,
    headers     BLOB    NOT NULL,
    body        BLOB    NOT NULL,
    keys    TEXT    NOT NULL,
    attempts    INTEGER NOT NULL DEFAULT 0,
    last_error  TEXT
);
CREATE TABLE IF NOT EXISTS dead_letters (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    ticket      INTEGER NOT NULL,
    route       TEXT    NOT NULL,
    request_id  TEXT    NOT NULL,
    created_ms  INTEGER NOT NULL,
    dead_ms     INTEGER NOT NULL,
    method      TEXT    NOT NULL,
    path        TEXT    NOT NULL,
    headers     BLOB    NOT NULL,
    body        BLOB    NOT NULL,
    keys    TEXT    NOT NULL,
    attempts    INTEGER NOT NULL,
    class       TEXT    NOT NULL,
    kind        TEXT    NOT NULL,
    status      INTEGER,
    response    BLOB,
    reason      TEXT    NOT NULL
);
";

/// Why the store could not be used.
#[derive(Debug, thiserror::Error)]
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
    /// A statement failed (disk full, I/O error, ...).
    #[error("spool store: {0}")]
    Sql(String),
    /// The writer thread is gone.
    #[error("spool store is closed")]
    Closed,
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Sql(describe_sql(&e))
    }
}

fn describe_sql(e: &rusqlite::Error) -> String {
    match e.sqlite_error_code() {
        Some(rusqlite::ErrorCode::DiskFull) => format!("disk full: {e}"),
        _ => e.to_string(),
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
    /// Step ids the write touches.
    pub keys: Vec<String>,
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
    /// Step ids the write touches.
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
    /// Step ids the write touches.
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

enum Cmd {
    Append(NewEntry, oneshot::Sender<Result<(), StoreError>>),
    Delivered(i64, oneshot::Sender<Result<(), StoreError>>),
    Failed(i64, String, oneshot::Sender<Result<(), StoreError>>),
    Dead(i64, DeadInfo, oneshot::Sender<Result<(), StoreError>>),
}

/// Running totals kept in memory so the hot path never counts rows.
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
}

/// The open store.
#[derive(Debug, Clone)]
pub struct Store {
    tx: mpsc::Sender<Cmd>,
    reader: Arc<Mutex<Connection>>,
    /// In-memory totals.
    pub totals: Arc<Totals>,
    path: PathBuf,
}

impl std::fmt::Debug for Cmd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Cmd")
    }
}

/// Milliseconds since the epoch, now.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Create the file (mode 0600) and its directory (0700) if missing; tighten
/// an existing file's mode: it holds API keys.
fn prepare_file(path: &Path) -> Result<(), StoreError> {
    let open_err = |detail: String| StoreError::Open {
        path: path.to_path_buf(),
        detail,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.exists() {
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
            Err(e) => return Err(open_err(e.to_string())),
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
    configure(&conn).map_err(|e| corrupt(e.to_string()))?;
    let check: String = conn
        .query_row("PRAGMA quick_check", [], |r| r.get(0))
        .map_err(|e| corrupt(e.to_string()))?;
    if check != "ok" {
        return Err(corrupt(format!("integrity check: {check}")));
    }
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(|e| corrupt(e.to_string()))?;
    if version > SCHEMA_VERSION {
        return Err(corrupt(format!(
            "schema version {version} is newer than this binary's {SCHEMA_VERSION}"
        )));
    }
    if version < SCHEMA_VERSION {
        let migrate = if version == 1 { MIGRATE_1_TO_2 } else { "" };
        conn.execute_batch(&format!(
            "BEGIN IMMEDIATE; {SCHEMA} {migrate} PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;"
        ))
        .map_err(|e| {
            let _ = conn.execute_batch("ROLLBACK");
            corrupt(format!("cannot migrate from schema version {version}: {e}"))
        })?;
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

impl Store {
    /// Open (creating if needed) the store at `path`. A corrupt store is an
    /// error unless `quarantine_corrupt`, in which case it is moved aside
    /// and an empty store is created.
    pub fn open(path: &Path, quarantine_corrupt: bool) -> Result<Store, StoreError> {
        prepare_file(path)?;
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
        let reader = open_checked(path)?;
        let checkpointer = open_checked(path)?;
        // The reader and the checkpointer touch few pages; keep their caches
        // small (the writer keeps SQLite's default 2 MiB).
        for c in [&reader, &checkpointer] {
            c.pragma_update(None, "cache_size", -256)?;
        }
        // Checkpoints copy the log into the main file and fsync it; run in
        // the writer they would stall every acknowledgement behind them, so
        // a separate thread runs them (WAL lets it work beside the writer).
        writer.pragma_update(None, "wal_autocheckpoint", 0)?;
        let totals = Arc::new(Totals::default());
        load_totals(&reader, &totals)?;
        let (tx, rx) = mpsc::channel();
        let (kick, kicked) = mpsc::sync_channel(1);
        let t = totals.clone();
        let spawn_err = |e: std::io::Error| StoreError::Open {
            path: path.to_path_buf(),
            detail: format!("cannot start a spool thread: {e}"),
        };
        std::thread::Builder::new()
            .name("spool-checkpoint".into())
            .spawn(move || checkpoint_loop(checkpointer, kicked))
            .map_err(spawn_err)?;
        std::thread::Builder::new()
            .name("spool-writer".into())
            .spawn(move || writer_loop(writer, rx, t, kick))
            .map_err(spawn_err)?;
        Ok(Store {
            tx,
            reader: Arc::new(Mutex::new(reader)),
            totals,
            path: path.to_path_buf(),
        })
    }

    /// The store file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    async fn call<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, StoreError>>) -> Cmd,
    ) -> Result<T, StoreError> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(make(tx)).map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Store a write; returns once it is durably committed.
    pub async fn append(&self, entry: NewEntry) -> Result<(), StoreError> {
        self.call(|r| Cmd::Append(entry, r)).await
    }

    /// Remove a delivered entry.
    pub async fn delivered(&self, id: i64) -> Result<(), StoreError> {
        self.call(|r| Cmd::Delivered(id, r)).await
    }

    /// Count a failed delivery attempt.
    pub async fn failed(&self, id: i64, error: String) -> Result<(), StoreError> {
        self.call(|r| Cmd::Failed(id, error, r)).await
    }

    /// Move an entry to the dead-letter table.
    pub async fn dead_letter(&self, id: i64, info: DeadInfo) -> Result<(), StoreError> {
        self.call(|r| Cmd::Dead(id, info, r)).await
    }

    /// Run `f` on the read connection, off the async threads.
    pub async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let reader = self.reader.clone();
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
    pub async fn head(&self, limit: usize, max_bytes: usize) -> Result<Vec<Entry>, StoreError> {
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT id, route, request_id, created_ms, method, path, headers, body, keys, attempts, last_error
                 FROM entries ORDER BY id LIMIT ?1",
            )?;
            let mut rows = stmt.query(params![limit as i64])?;
            let (mut out, mut bytes) = (Vec::new(), 0usize);
            while let Some(r) = rows.next()? {
                let entry = entry_of(r)?;
                bytes += entry.body_bytes;
                out.push(entry);
                if bytes >= max_bytes {
                    break;
                }
            }
            Ok(out)
        })
        .await
    }

    /// Counts for operators.
    pub async fn stats(&self) -> Result<Stats, StoreError> {
        self.read(stats).await
    }

    /// Re-read the totals from the file (after the operator CLI changed it).
    pub async fn refresh_totals(&self) -> Result<(), StoreError> {
        let totals = self.totals.clone();
        self.read(move |c| load_totals(c, &totals)).await
    }
}

fn load_totals(conn: &Connection, totals: &Totals) -> Result<(), StoreError> {
    let (n, bytes, max_ticket): (i64, i64, Option<i64>) = conn.query_row(
        "SELECT count(*), coalesce(sum(length(body)), 0), max(id) FROM entries",
        [],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )?;
    let (dead, dead_ticket): (i64, Option<i64>) =
        conn.query_row("SELECT count(*), max(ticket) FROM dead_letters", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?;
    totals.entries.store(n as u64, Ordering::Relaxed);
    totals.bytes.store(bytes as u64, Ordering::Relaxed);
    totals.dead.store(dead as u64, Ordering::Relaxed);
    let max = max_ticket.unwrap_or(0).max(dead_ticket.unwrap_or(0));
    totals.max_ticket.fetch_max(max, Ordering::Relaxed);
    Ok(())
}

/// Commits between checkpoint requests.
const CHECKPOINT_EVERY: u32 = 64;

fn writer_loop(
    mut conn: Connection,
    rx: mpsc::Receiver<Cmd>,
    totals: Arc<Totals>,
    kick: mpsc::SyncSender<()>,
) {
    let mut since_kick = 0u32;
    // Ends when every sender is dropped (shutdown), after the queue is empty.
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < 1024 {
            match rx.try_recv() {
                Ok(cmd) => batch.push(cmd),
                Err(_) => break,
            }
        }
        apply_batch(&mut conn, batch, &totals);
        since_kick += 1;
        if since_kick >= CHECKPOINT_EVERY {
            // A full channel means a request is already pending.
            let _ = kick.try_send(());
            since_kick = 0;
        }
    }
    drop(kick);
    // Fold the WAL back into the main file so a clean stop leaves one file.
    let _ = conn.pragma_update(None, "wal_checkpoint", "TRUNCATE");
}

/// Runs passive checkpoints when the writer asks, or every second while
/// idle, until the writer is gone.
fn checkpoint_loop(conn: Connection, kicked: mpsc::Receiver<()>) {
    loop {
        match kicked.recv_timeout(Duration::from_secs(1)) {
            Ok(()) | Err(mpsc::RecvTimeoutError::Timeout) => {
                if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
                    tracing::debug!(error = %e, "spool checkpoint skipped");
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        }
    }
}

/// What one command will change in the totals if the batch commits.
#[derive(Default)]
struct Delta {
    entries: i64,
    bytes: i64,
    dead: i64,
    ticket: i64,
}

fn apply_batch(conn: &mut Connection, batch: Vec<Cmd>, totals: &Totals) {
    let mut results: Vec<Result<(), StoreError>> = Vec::with_capacity(batch.len());
    let mut delta = Delta::default();
    let outcome = (|| -> Result<(), rusqlite::Error> {
        let tx = conn.transaction()?;
        for cmd in &batch {
            let r = match cmd {
                Cmd::Append(e, _) => append_one(&tx, e, &mut delta),
                Cmd::Delivered(id, _) => remove_one(&tx, *id, &mut delta),
                Cmd::Failed(id, err, _) => tx
                    .execute(
                        "UPDATE entries SET attempts = attempts + 1, last_error = ?2 WHERE id = ?1",
                        params![id, err],
                    )
                    .map(|_| ()),
                Cmd::Dead(id, info, _) => dead_one(&tx, *id, info, &mut delta),
            };
            results.push(r.map_err(StoreError::from));
        }
        tx.commit()
    })();
    match outcome {
        Ok(()) => {
            totals.batches.fetch_add(1, Ordering::Relaxed);
            add(&totals.entries, delta.entries);
            add(&totals.bytes, delta.bytes);
            add(&totals.dead, delta.dead);
            totals.max_ticket.fetch_max(delta.ticket, Ordering::Relaxed);
            for (cmd, r) in batch.into_iter().zip(results) {
                reply(cmd, r);
            }
        }
        Err(e) => {
            // Nothing in the batch is durable: every caller gets the error,
            // so no write is acknowledged.
            let msg = describe_sql(&e);
            tracing::error!(error = %msg, "spool commit failed");
            for cmd in batch {
                reply(cmd, Err(StoreError::Sql(msg.clone())));
            }
        }
    }
}

fn add(counter: &AtomicU64, delta: i64) {
    if delta >= 0 {
        counter.fetch_add(delta as u64, Ordering::Relaxed);
    } else {
        let _ = counter.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
            Some(v.saturating_sub(delta.unsigned_abs()))
        });
    }
}

fn reply(cmd: Cmd, r: Result<(), StoreError>) {
    match cmd {
        Cmd::Append(_, tx)
        | Cmd::Delivered(_, tx)
        | Cmd::Failed(_, _, tx)
        | Cmd::Dead(_, _, tx) => {
            let _ = tx.send(r);
        }
    }
}

fn append_one(
    tx: &rusqlite::Transaction<'_>,
    e: &NewEntry,
    delta: &mut Delta,
) -> Result<(), rusqlite::Error> {
    let ids = serde_json::to_string(&e.keys).unwrap_or_else(|_| "[]".into());
    let created = now_ms();
    // The ticket is the id, unless an entry the operator requeued while the
    // sidecar ran took it: then append at the end instead.
    tx.prepare_cached(
        "INSERT INTO entries (id, route, request_id, created_ms, method, path, headers, body, keys)
         VALUES ((SELECT CASE WHEN EXISTS (SELECT 1 FROM entries WHERE id = ?1)
                      THEN (SELECT max(id) + 1 FROM entries) ELSE ?1 END),
                 ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )?
    .execute(params![
        e.ticket as i64,
        e.route,
        e.request_id,
        created,
        e.method,
        e.path,
        e.headers,
        &e.body[..],
        ids
    ])?;
    let id = tx.last_insert_rowid();
    delta.entries += 1;
    delta.bytes += e.body.len() as i64;
    delta.ticket = delta.ticket.max(id);
    Ok(())
}

fn remove_one(
    tx: &rusqlite::Transaction<'_>,
    id: i64,
    delta: &mut Delta,
) -> Result<(), rusqlite::Error> {
    let len: Option<i64> = tx
        .prepare_cached("SELECT length(body) FROM entries WHERE id = ?1")?
        .query_row([id], |r| r.get(0))
        .optional()?;
    if let Some(len) = len {
        tx.prepare_cached("DELETE FROM entries WHERE id = ?1")?
            .execute([id])?;
        delta.entries -= 1;
        delta.bytes -= len;
    }
    Ok(())
}

fn dead_one(
    tx: &rusqlite::Transaction<'_>,
    id: i64,
    info: &DeadInfo,
    delta: &mut Delta,
) -> Result<(), rusqlite::Error> {
    let response = info
        .response
        .as_ref()
        .map(|r| r[..r.len().min(MAX_DEAD_RESPONSE)].to_vec());
    let moved = tx.execute(
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
        remove_one(tx, id, delta)?;
        delta.dead += 1;
    }
    Ok(())
}

fn row_ids(text: String) -> Vec<String> {
    serde_json::from_str(&text).unwrap_or_default()
}

/// Waiting entries in replay order, from `offset`.
pub fn list_entries(
    conn: &Connection,
    limit: usize,
    offset: usize,
) -> Result<Vec<Entry>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, route, request_id, created_ms, method, path, headers, body, keys, attempts, last_error
         FROM entries ORDER BY id LIMIT ?1 OFFSET ?2",
    )?;
    let rows = stmt.query_map(params![limit as i64, offset as i64], entry_of)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// An entry from a row of `SELECT id, route, request_id, created_ms, method,
/// path, headers, body, keys, attempts, last_error`.
fn entry_of(r: &rusqlite::Row<'_>) -> rusqlite::Result<Entry> {
    let body = Bytes::from(r.get::<_, Vec<u8>>(7)?);
    Ok(Entry {
        id: r.get(0)?,
        route: r.get(1)?,
        request_id: r.get(2)?,
        created_ms: r.get(3)?,
        method: r.get(4)?,
        path: r.get(5)?,
        headers: r.get(6)?,
        body_bytes: body.len(),
        body,
        keys: row_ids(r.get(8)?),
        attempts: r.get(9)?,
        last_error: r.get(10)?,
    })
}

/// Dead letters, oldest first.
pub fn list_dead(conn: &Connection, limit: usize) -> Result<Vec<DeadLetter>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, route, request_id, created_ms, dead_ms, keys, attempts, class, kind, status, response, reason
         FROM dead_letters ORDER BY id LIMIT ?1",
    )?;
    let rows = stmt.query_map([limit as i64], |r| {
        let response: Option<Vec<u8>> = r.get(10)?;
        Ok(DeadLetter {
            id: r.get(0)?,
            route: r.get(1)?,
            request_id: r.get(2)?,
            created_ms: r.get(3)?,
            dead_ms: r.get(4)?,
            keys: row_ids(r.get(5)?),
            attempts: r.get(6)?,
            class: r.get(7)?,
            kind: r.get(8)?,
            status: r.get(9)?,
            response: response.map(|b| String::from_utf8_lossy(&b).into_owned()),
            reason: r.get(11)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Counts for operators, read from the file.
pub fn stats(conn: &Connection) -> Result<Stats, StoreError> {
    let (depth, bytes, oldest): (i64, i64, Option<i64>) = conn.query_row(
        "SELECT count(*), coalesce(sum(length(body)), 0), min(created_ms) FROM entries",
        [],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )?;
    let dead: i64 = conn.query_row("SELECT count(*) FROM dead_letters", [], |r| r.get(0))?;
    let mut per_route = HashMap::new();
    let mut stmt = conn.prepare_cached("SELECT route, count(*) FROM entries GROUP BY route")?;
    for row in stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))? {
        let (route, n) = row?;
        per_route.insert(route, n as u64);
    }
    Ok(Stats {
        depth: depth as u64,
        bytes: bytes as u64,
        oldest_age_seconds: oldest.map(|o| ((now_ms() - o).max(0)) as f64 / 1000.0),
        dead_letters: dead as u64,
        per_route,
    })
}

/// Move dead letters back to the queue (at its end). `ids` empty = all.
/// Returns how many moved. `progress` is called after each one.
pub fn requeue(
    conn: &mut Connection,
    ids: &[i64],
    mut progress: impl FnMut(u64),
) -> Result<u64, StoreError> {
    let targets: Vec<i64> = if ids.is_empty() {
        let mut stmt = conn.prepare("SELECT id FROM dead_letters ORDER BY id")?;
        let rows = stmt.query_map([], |r| r.get(0))?;
        rows.collect::<Result<_, _>>()?
    } else {
        ids.to_vec()
    };
    let mut moved = 0;
    for chunk in targets.chunks(500) {
        let tx = conn.transaction()?;
        for id in chunk {
            let next: i64 = tx.query_row(
                "SELECT max(coalesce((SELECT max(id) FROM entries), 0), coalesce((SELECT max(ticket) FROM dead_letters), 0)) + 1",
                [],
                |r| r.get(0),
            )?;
            let n = tx.execute(
                "INSERT INTO entries (id, route, request_id, created_ms, method, path, headers, body, keys, attempts, last_error)
                 SELECT ?2, route, request_id, ?3, method, path, headers, body, keys, 0, 'requeued from dead letter ' || id || ': ' || reason
                 FROM dead_letters WHERE id = ?1",
                params![id, next, now_ms()],
            )?;
            if n == 1 {
                tx.execute("DELETE FROM dead_letters WHERE id = ?1", [id])?;
                moved += 1;
            }
            progress(1);
        }
        tx.commit()?;
    }
    Ok(moved)
}

/// Delete waiting entries and/or dead letters. Returns rows deleted.
pub fn purge(
    conn: &mut Connection,
    pending: bool,
    dead: bool,
    mut progress: impl FnMut(u64),
) -> Result<u64, StoreError> {
    let mut deleted = 0;
    for (table, on) in [("entries", pending), ("dead_letters", dead)] {
        if !on {
            continue;
        }
        loop {
            let tx = conn.transaction()?;
            let n = tx.execute(
                &format!("DELETE FROM {table} WHERE id IN (SELECT id FROM {table} ORDER BY id LIMIT 1000)"),
                [],
            )? as u64;
            tx.commit()?;
            deleted += n;
            progress(n);
            if n == 0 {
                break;
            }
        }
    }
    Ok(deleted)
}

/// Count rows a purge or requeue would touch (for the progress bar).
pub fn count(conn: &Connection, table: &str) -> Result<u64, StoreError> {
    let sql = match table {
        "entries" => "SELECT count(*) FROM entries",
        _ => "SELECT count(*) FROM dead_letters",
    };
    let n: i64 = conn.query_row(sql, [], |r| r.get(0))?;
    Ok(n as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(ticket: u64, body_len: usize) -> NewEntry {
        NewEntry {
            ticket,
            route: "step_writes".into(),
            request_id: format!("r{ticket}"),
            method: "POST".into(),
            path: "/api/graphql".into(),
            headers: Vec::new(),
            body: Bytes::from(vec![b'x'; body_len]),
            keys: vec![format!("s{ticket}")],
        }
    }

    #[test]
    fn version_1_keys_become_step_keys() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spool.sqlite3");
        {
            let c = Connection::open(&path).unwrap();
            c.execute_batch(&SCHEMA.replace("keys ", "step_ids "))
                .unwrap();
            c.pragma_update(None, "user_version", 1).unwrap();
            c.execute(
                "INSERT INTO entries (id, route, request_id, created_ms, method, path, headers, body, step_ids)
                 VALUES (1, 'step_writes', 'r', 0, 'POST', '/api/graphql', x'', x'', '[\"a\",\"b\"]')",
                [],
            )
            .unwrap();
        }
        let c = open_checked(&path).unwrap();
        let ids: String = c
            .query_row("SELECT keys FROM entries", [], |r| r.get(0))
            .unwrap();
        assert_eq!(row_ids(ids), ["step:a", "step:b"]);
        let v: i64 = c
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(v, SCHEMA_VERSION);
    }

    #[tokio::test]
    async fn head_stops_at_the_byte_bound_but_returns_at_least_one() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("spool.sqlite3"), false).unwrap();
        for t in 1..=10 {
            store.append(entry(t, 1000)).await.unwrap();
        }
        let ids = |v: Vec<Entry>| v.into_iter().map(|e| e.request_id).collect::<Vec<_>>();
        // In order, and cut once the bodies reach 2,500 bytes.
        assert_eq!(
            ids(store.head(100, 2500).await.unwrap()),
            ["r1", "r2", "r3"]
        );
        // The count bound still applies.
        assert_eq!(ids(store.head(2, 1 << 20).await.unwrap()), ["r1", "r2"]);
        // An entry larger than the bound is still delivered.
        assert_eq!(ids(store.head(100, 10).await.unwrap()), ["r1"]);
    }
}
