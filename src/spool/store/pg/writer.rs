//! The group-commit loop: everything queued while a transaction commits
//! goes into the next one, and each caller is told what happened to its
//! own write. Separate from the transaction itself ([`super::commit`])
//! because this decides who is answered what when a batch fails, and the
//! in-memory totals change here only for committed writes.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use deadpool_postgres::Pool;
use tokio::sync::{mpsc, oneshot};

use super::commit::commit;
use super::{Appended, NewEntry, StoreError, Totals};

/// Where a write's caller waits for what became of its entries.
pub(super) type Reply = oneshot::Sender<Result<Vec<Appended>, StoreError>>;

/// A write as the writer receives it.
type Write = (Vec<NewEntry>, Reply);

/// Commit what arrives, a batch of writes per transaction, until every
/// sender is gone.
pub(super) async fn writer(
    pool: Pool,
    mut rx: mpsc::UnboundedReceiver<Write>,
    totals: Arc<Totals>,
    max_batch: usize,
    replica: Arc<str>,
) {
    while let Some(first) = rx.recv().await {
        let batch = gather(first, &mut rx, max_batch);
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
                // other writers' entries are not at fault.
                commit_each_alone(&pool, &totals, batch, &replica).await;
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

/// `first` and what else is queued already, up to `max_batch` entries
/// (a write is never split, so the last may pass it).
fn gather(first: Write, rx: &mut mpsc::UnboundedReceiver<Write>, max_batch: usize) -> Vec<Write> {
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
    batch
}

/// Each write of a refused batch again, in a transaction of its own and in
/// the same order, so only the refused one fails.
async fn commit_each_alone(pool: &Pool, totals: &Totals, batch: Vec<Write>, replica: &str) {
    for (es, reply) in batch {
        let one: Vec<&NewEntry> = es.iter().collect();
        match commit(pool, &one, replica).await {
            Ok(mine) => {
                totals.batches.fetch_add(1, Ordering::Relaxed);
                settle(totals, &es, mine, reply);
            }
            Err(e) => {
                let _ = reply.send(Err(e));
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
