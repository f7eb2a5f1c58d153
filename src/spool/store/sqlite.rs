//! The local store: one SQLite file held by one sidecar. Commands that
//! change the file go to the writer thread ([`super::writer`]), which
//! commits them in groups; reads use a second connection beside it.

use std::path::Path;
use std::sync::{Arc, Mutex, mpsc};

use rusqlite::Connection;
use tokio::sync::oneshot;

use super::file::{load_ledger, lock, open_checked, prepare_file, quarantine};
use super::ledger::{DiskUseIs, Ledger, LedgerCounters};
use super::{
    Appended, DeadInfo, Entry, NewEntry, Sharing, SpoolStore, Stats, StoreError, StoreFuture, ops,
    writer,
};

/// How the writer answers a command: what each of its writes did.
pub(super) type Reply = oneshot::Sender<Result<Vec<Appended>, StoreError>>;

/// A command to the writer. Each runs whole in one transaction: the writes
/// of one `Append` are all stored, or none.
pub(super) enum Cmd {
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

/// The open local store.
#[derive(Debug)]
pub struct SqliteStore {
    /// Held for as long as the store is open: one sidecar per store file.
    _lock: std::fs::File,
    tx: mpsc::Sender<Cmd>,
    reader: Arc<Mutex<Connection>>,
    ledger: Arc<Ledger>,
}

impl SqliteStore {
    /// Open (creating if needed) the store at `path`. A corrupt store is an
    /// error unless `quarantine_corrupt`, in which case it is moved aside
    /// and an empty store is created. At most `max_batch` commands go into
    /// one transaction; the ledger counts into `counters`.
    pub fn open(
        path: &Path,
        quarantine_corrupt: bool,
        max_batch: usize,
        counters: LedgerCounters,
    ) -> Result<SqliteStore, StoreError> {
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
        let ledger = Arc::new(Ledger::new(counters, DiskUseIs::Measured));
        load_ledger(&writer, &ledger)?;
        let (reader, checkpointer) = writer::side_connections(path)?;
        let reader = Arc::new(Mutex::new(reader));
        let checkpointer = Arc::new(Mutex::new(checkpointer));
        let (tx, rx) = mpsc::channel();
        writer::spawn(
            path.to_path_buf(),
            writer,
            rx,
            ledger.clone(),
            reader.clone(),
            checkpointer,
            max_batch,
        )?;
        Ok(SqliteStore {
            _lock: lock,
            tx,
            reader,
            ledger,
        })
    }

    async fn call(&self, make: impl FnOnce(Reply) -> Cmd) -> Result<Vec<Appended>, StoreError> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(make(tx)).map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Run `f` on the read connection, off the async threads.
    async fn read<T: Send + 'static>(
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
}

impl SpoolStore for SqliteStore {
    fn append_many(&self, entries: Vec<NewEntry>) -> StoreFuture<'_, Vec<Appended>> {
        Box::pin(self.call(|r| Cmd::Append(entries, r)))
    }

    fn head(&self, limit: usize, max_bytes: usize) -> StoreFuture<'_, Vec<Entry>> {
        Box::pin(self.read(move |c| ops::head(c, limit, max_bytes)))
    }

    fn renew_many<'a>(&'a self, ids: &'a [i64]) -> StoreFuture<'a, Vec<i64>> {
        // One sidecar holds the file: what it read stays its own.
        Box::pin(std::future::ready(Ok(ids.to_vec())))
    }

    fn delivered_many(&self, ids: Vec<i64>) -> StoreFuture<'_, ()> {
        Box::pin(async move { self.call(|r| Cmd::Delivered(ids, r)).await.map(|_| ()) })
    }

    fn failed_many(&self, ids: Vec<i64>, error: String) -> StoreFuture<'_, ()> {
        Box::pin(async move { self.call(|r| Cmd::Failed(ids, error, r)).await.map(|_| ()) })
    }

    fn dead_letter(&self, id: i64, info: DeadInfo) -> StoreFuture<'_, ()> {
        Box::pin(async move { self.call(|r| Cmd::Dead(id, info, r)).await.map(|_| ()) })
    }

    fn resync(&self) -> StoreFuture<'_, ()> {
        // In the writer's order, so no commit can slip between the read
        // and its use.
        Box::pin(async move { self.call(Cmd::Resync).await.map(|_| ()) })
    }

    fn oldest_ms(&self) -> StoreFuture<'_, Option<i64>> {
        Box::pin(self.read(|c| {
            Ok(c.query_row(
                "SELECT created_ms FROM entries ORDER BY id LIMIT 1",
                [],
                |r| r.get::<_, i64>(0),
            )
            .ok())
        }))
    }

    fn stats(&self) -> StoreFuture<'_, Stats> {
        Box::pin(self.read(ops::stats))
    }

    fn release_claims(&self) -> StoreFuture<'_, u64> {
        Box::pin(std::future::ready(Ok(0)))
    }

    fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    fn sharing(&self) -> Sharing {
        Sharing::Alone
    }
}
