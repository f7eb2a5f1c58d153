//! After the accept loop: what happens between the last client request and
//! the process exit — the spool's last deliveries, the replay worker's
//! stop, the hand-off of a shared store's claims, the admin port's close.
//!
//! Separate from serving because its order is the guarantee: the worker
//! stops between entries before the store is let go, and the store's writer
//! finishes its queue and checkpoints only when the last handle is dropped.

use std::sync::OnceLock;

use tokio::sync::watch;
use tokio::time::Instant;

use super::{AdminPort, Core};
use crate::generation::Current;
use crate::spool::Spool;
use crate::spool::store::{Sharing, Store};

/// Stop everything that outlived the live requests, in order, once the
/// accept loop returned and the reload task handed `core` back.
/// `shutdown_began` is when shutdown started: the grace period of the
/// generation in force covers the live drain and then the spool's.
pub(super) async fn stop<S>(
    core: Core,
    current: Current<S>,
    shutdown_began: &OnceLock<Instant>,
    worker_stop: watch::Sender<bool>,
    admin: AdminPort,
) {
    let last = current.load().config.clone();
    if last.shutdown_drain_spool
        && core.worker.is_some()
        && let Some(spool) = core
            .spool
            .as_ref()
            .filter(|s| s.store().sharing() == Sharing::Alone)
    {
        let began = shutdown_began.get().copied().unwrap_or_else(Instant::now);
        drain_before_exit(spool, began + last.shutdown_grace).await;
    }
    let _ = worker_stop.send(true);
    let Core { worker, spool, .. } = core;
    if let Some(w) = worker {
        let _ = w.await;
    }
    if let Some(shared) = spool
        .as_ref()
        .map(Spool::store)
        .filter(|s| s.sharing() != Sharing::Alone)
    {
        hand_off(shared).await;
    }
    drop(current);
    drop(spool);
    let _ = admin.stop.send(true);
    let _ = admin.task.await;
    tracing::info!("datalayer-sidecar stopped");
}

/// After the last client request: let the replay worker go on until the
/// spool is empty or `deadline` (the end of the grace period) passes, and
/// say how it ended. Entries left stay in the store for the next start.
async fn drain_before_exit(spool: &Spool, deadline: Instant) {
    let depth = || spool.store().waiting();
    let at_start = depth();
    if at_start == 0 {
        return;
    }
    tracing::info!(
        waiting = at_start,
        within_ms = deadline
            .saturating_duration_since(Instant::now())
            .as_millis() as u64,
        "spool: delivering what waits before exit"
    );
    loop {
        let now = depth();
        if now == 0 {
            tracing::info!(
                delivered = at_start,
                remaining = 0,
                "spool drained before exit"
            );
            return;
        }
        if Instant::now() >= deadline {
            tracing::warn!(
                delivered = at_start.saturating_sub(now),
                remaining = now,
                path = %spool.store().path().display(),
                "spool: the grace period is over with entries waiting; they stay in the store and are delivered after the next start from this path (keep it on a volume that outlives the pod)"
            );
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// With the shared store every acknowledged write is already in it; give
/// back what this replica had claimed, so the others take it at once
/// rather than when the lease runs out, and say how the queue stands.
async fn hand_off(shared: &Store) {
    let released = shared.release_claims().await;
    let waiting = shared.stats().await.map(|s| s.depth);
    match (released, waiting) {
        (Ok(released), Ok(waiting)) => tracing::info!(
            handed_over = released,
            waiting_in_shared_store = waiting,
            held_only_locally = 0,
            "spool hand-off: every acknowledged write is in the shared store"
        ),
        (r, w) => tracing::warn!(
            error = %r.err().or(w.err()).map_or_else(String::new, |e| e.to_string()),
            held_only_locally = 0,
            "spool hand-off: the shared store could not be reached; this replica's claims are released when their lease runs out"
        ),
    }
}
