//! The group-commit loop: everything queued while a transaction commits
//! goes into the next one, and each caller is told what happened to its
//! own write. Separate from the transaction itself ([`super::commit`])
//! because this decides who is answered what when a batch fails, and the
//! ledger changes here only for committed writes. The loop also re-reads
//! the shared ledger every [`RESYNC_EVERY`], since other replicas write and
//! deliver too.

use std::sync::Arc;

use deadpool_postgres::Pool;
use tokio::sync::{mpsc, oneshot};

use super::commit::commit;
use super::counts::reload_ledger;
use super::{Appended, Change, Ledger, NewEntry, StoreError};
use crate::spool::store::RESYNC_EVERY;

/// Longest the loop spends re-reading the shared ledger: writes queue
/// behind it, and an acknowledgement must not wait on a slow pool or a
/// stalled connection for long. A re-read cut short is tried again at the
/// next tick; the counts meanwhile stay what this replica last knew.
const RESYNC_BOUND: std::time::Duration = std::time::Duration::from_millis(500);

/// Where a write's caller waits for what became of its entries.
pub(super) type Reply = oneshot::Sender<Result<Vec<Appended>, StoreError>>;

/// A write as the writer receives it.
type Write = (Vec<NewEntry>, Reply);

/// Commit what arrives, a batch of writes per transaction, until every
/// sender is gone; between batches, re-read the shared ledger when due.
pub(super) async fn writer(
    pool: Pool,
    mut rx: mpsc::UnboundedReceiver<Write>,
    ledger: Arc<Ledger>,
    max_batch: usize,
    replica: Arc<str>,
) {
    let mut resync = tokio::time::interval(RESYNC_EVERY);
    resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick is at once; the store was read as it opened.
    resync.tick().await;
    loop {
        let first = tokio::select! {
            w = rx.recv() => match w {
                Some(w) => w,
                None => return,
            },
            _ = resync.tick() => {
                match tokio::time::timeout(RESYNC_BOUND, reload_ledger(&pool, &ledger)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "spool: cannot re-read the shared ledger");
                    }
                    Err(_) => tracing::warn!(
                        bound_ms = RESYNC_BOUND.as_millis() as u64,
                        "spool: re-reading the shared ledger took too long; tried again later"
                    ),
                }
                continue;
            }
        };
        let batch = gather(first, &mut rx, max_batch);
        commit_batch(&pool, &ledger, batch, &replica).await;
    }
}

/// One group commit, and what each of its callers is told.
async fn commit_batch(pool: &Pool, ledger: &Ledger, batch: Vec<Write>, replica: &str) {
    let entries: Vec<&NewEntry> = batch.iter().flat_map(|(es, _)| es.iter()).collect();
    match commit(pool, &entries, replica).await {
        Ok(results) => {
            ledger.commit(&change_of(&entries, &results));
            let mut results = results.into_iter();
            for (es, reply) in batch {
                let mine: Vec<Appended> = results.by_ref().take(es.len()).collect();
                let _ = reply.send(Ok(mine));
            }
        }
        Err(StoreError::Sql(_)) if batch.len() > 1 => {
            // The server refused something in the batch (a value it cannot
            // store, say): the transaction is gone, but the other writers'
            // entries are not at fault.
            commit_each_alone(pool, ledger, batch, replica).await;
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
async fn commit_each_alone(pool: &Pool, ledger: &Ledger, batch: Vec<Write>, replica: &str) {
    for (es, reply) in batch {
        let one: Vec<&NewEntry> = es.iter().collect();
        match commit(pool, &one, replica).await {
            Ok(mine) => {
                ledger.commit(&change_of(&one, &mine));
                let _ = reply.send(Ok(mine));
            }
            Err(e) => {
                let _ = reply.send(Err(e));
            }
        }
    }
}

/// What a committed group of writes changed in the ledger.
fn change_of(entries: &[&NewEntry], results: &[Appended]) -> Change {
    let mut c = Change {
        transaction: true,
        ..Change::default()
    };
    for (e, result) in entries.iter().zip(results) {
        match result {
            Appended::Stored => {
                c.entries += 1;
                c.stored += 1;
                c.bytes += e.body.len() as i64;
            }
            Appended::Duplicate(_) => c.deduplicated += 1,
        }
    }
    c
}
