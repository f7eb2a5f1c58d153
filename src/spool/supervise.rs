//! Keeps the replay worker running: a worker that ends without being asked
//! (a panic, a bug) is started again, and while it is down the sidecar says
//! so — `/readyz` answers 503 with the reason, `/spool` shows it, the
//! `spool_worker_up` gauge is 0 and the log has the error — so nothing
//! keeps acknowledging into a queue that nobody drains unnoticed.
//!
//! Why not rely on the task alone: a panicking tokio task ends quietly
//! (its `JoinHandle` holds the panic), and the sidecar kept serving, every
//! write stored and none sent. The restart waits a little, doubling up to
//! [`MAX_BACKOFF`], so a worker that fails at once on every start does not
//! spin; a worker that ran for [`STABLE_AFTER`] starts from the shortest
//! wait again.

use std::future::Future;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::watch;
use tokio::time::Instant;

use super::Spool;
use crate::clock::now_ms;

/// The first wait before a restart.
const MIN_BACKOFF: Duration = Duration::from_millis(100);
/// The longest wait before a restart.
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// A worker that ran this long before it ended starts the backoff over.
const STABLE_AFTER: Duration = Duration::from_secs(60);

/// The replay worker's health, for `/readyz`, `/spool` and the status page.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct WorkerHealth {
    /// `running`, `restarting` (ended without being asked; started again
    /// after a wait) or `stopped` (shutdown).
    pub state: &'static str,
    /// Times it ended without being asked.
    pub restarts: u64,
    /// Why it ended the last time it did.
    pub last_failure: Option<String>,
    /// When the state began (ms since the epoch).
    pub since_ms: i64,
}

impl WorkerHealth {
    pub(super) fn starting() -> Self {
        WorkerHealth {
            state: "running",
            restarts: 0,
            last_failure: None,
            since_ms: now_ms(),
        }
    }

    /// Whether the worker is delivering (or ready to).
    pub fn is_running(&self) -> bool {
        self.state == "running"
    }
}

impl Spool {
    /// The replay worker's health.
    pub fn worker_health(&self) -> WorkerHealth {
        self.inner
            .worker
            .lock()
            .map(|w| w.clone())
            .unwrap_or_else(|_| WorkerHealth {
                state: "restarting",
                restarts: 0,
                last_failure: Some("the worker's state lock is poisoned".into()),
                since_ms: now_ms(),
            })
    }

    fn set_worker(&self, f: impl FnOnce(&mut WorkerHealth)) {
        if let Ok(mut w) = self.inner.worker.lock() {
            f(&mut w);
            self.inner.metrics.worker_up.set(i64::from(w.is_running()));
        }
    }
}

/// Run `worker` (given a shutdown signal) until `shutdown` turns true,
/// starting it again whenever it ends without being asked.
pub async fn supervise<F, Fut>(spool: Spool, mut worker: F, shutdown: watch::Receiver<bool>)
where
    F: FnMut(watch::Receiver<bool>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut backoff = MIN_BACKOFF;
    loop {
        spool.set_worker(|w| {
            w.state = "running";
            w.since_ms = now_ms();
        });
        let started = Instant::now();
        let ended = tokio::spawn(worker(shutdown.clone())).await;
        if *shutdown.borrow() {
            break;
        }
        let why = match ended {
            Ok(()) => "the worker returned while the sidecar runs".to_string(),
            Err(e) if e.is_panic() => {
                let payload = e.into_panic();
                let text = payload
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_string())
                    .or_else(|| payload.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "a panic without a message".into());
                format!("panicked: {text}")
            }
            Err(e) => e.to_string(),
        };
        if started.elapsed() >= STABLE_AFTER {
            backoff = MIN_BACKOFF;
        }
        spool.inner.metrics.worker_restarts.inc();
        spool.set_worker(|w| {
            w.state = "restarting";
            w.restarts += 1;
            w.last_failure = Some(why.clone());
            w.since_ms = now_ms();
        });
        tracing::error!(
            target: "spool",
            error = %why,
            restart_in_ms = backoff.as_millis() as u64,
            "spool worker stopped without being asked; not ready until it runs again"
        );
        let mut stop = shutdown.clone();
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            () = crate::shutdown::shutdown_requested(&mut stop) => break,
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
    spool.set_worker(|w| {
        w.state = "stopped";
        w.since_ms = now_ms();
    });
}
