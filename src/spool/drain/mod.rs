//! The replay worker: delivers spooled writes in order.
//!
//! It sends each entry through the same layers as live traffic (deadline,
//! breaker gate, retry with the shared budget, classification, per-try
//! timeout), so it is paced by the same breaker — while the breaker is open
//! it waits, and when the open time is over its next delivery is the
//! half-open probe — and by the same budget. What happens to an entry
//! depends on what the backend said about it:
//!
//! - **delivered**: deleted.
//! - **transient** (5xx the config calls transient, resets, timeouts, ...):
//!   it stays at the head; no new delivery starts for a while, the wait
//!   doubling from `spool.replay_backoff_base` to `replay_backoff_max`.
//!   While the breaker is open or probing, the worker starts no more
//!   deliveries than the breaker's probes, taking entries an earlier probe
//!   did not fail with first; the window opens again when the breaker
//!   closes.
//! - **refused for its content** (a GraphQL error or an `ok: false` with a
//!   permanent message for this write, a status in
//!   `spool.dead_letter_statuses`): moved to the dead-letter table with the
//!   backend's answer, the class and the attempt count.
//! - **refused as a system** (any other refusal: 401, 403, 404, a TLS
//!   certificate the roots reject, anything unclassified): the write is not
//!   at fault, so it stays, and the worker **pauses** — one probe at a time,
//!   backing off as above, said in the log, the `spool_paused` metric and
//!   `/spool` — until a probe goes through (the key was fixed, the
//!   certificate renewed); then it resumes by itself.
//!
//! On shutdown it stops between entries: a delivery in progress finishes
//! (bounded by the route's deadline) and its result is committed before the
//! worker exits.
//!
//! Entries that touch disjoint keys are delivered concurrently (up to
//! `spool.replay_concurrency` requests, as a sliding window); an entry that
//! shares a key with an earlier one waits for it (see [`super::admission`]).
//!
//! **Joined replays.** Waiting step writes of different steps — entries of
//! one `ingestStep` field each, from the same client — are joined into one
//! batched mutation of up to `spool.replay_batch` aliases and
//! `spool.replay_batch_bytes` (see [`super::batch`]); each alias's answer
//! decides its own entry: delivered, tried again later, or dead-lettered
//! with the backend's answer for that alias. Two versions of one step are
//! never in one request: only entries that could start side by side are
//! joined. A joined request the backend refuses as a whole for its content
//! (a validation error that names no alias, a 400) dead-letters nothing:
//! its entries are sent again one by one, so only the one at fault is
//! refused. Other entries (thread upserts, deletes, documents that cannot
//! be cut) are replayed as they are.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use http::{HeaderName, HeaderValue, Request, Response};
use tower::util::BoxCloneSyncService;

use super::store::DeadInfo;
use super::{ReplayParams, Spool};
use crate::body::{RequestBody, ResponseBody};
use crate::breaker::Breaker;
use crate::error::Error;
use crate::proxy::forward::PrepareShared;

mod deliver;
mod joined;
mod pace;
mod worker;

/// How often the worker reads the head again and naps at most when idle
/// (it is also woken on every commit): the operator CLI's requeues are
/// seen this way. The store re-reads its ledger on its own
/// ([`crate::spool::store::RESYNC_EVERY`]).
const IDLE_RESYNC: Duration = Duration::from_secs(5);

/// Past this age the worker's copy of the head of the queue is read again
/// when it cannot fill the free slots (entries committed behind it since).
const STALE_CACHE: Duration = Duration::from_secs(1);

/// The most body bytes the worker reads ahead of its deliveries.
const HEAD_MAX_BYTES: usize = 8 * 1024 * 1024;

/// The service replays go through (the stack below the spool layer).
pub type ReplayService = BoxCloneSyncService<Request<RequestBody>, Response<ResponseBody>, Error>;

/// What the worker needs.
#[derive(Debug, Clone)]
pub struct Drain {
    /// The spool.
    pub spool: Spool,
    /// What it delivers with: swapped by a reload, read per delivery, so
    /// the worker keeps running across reloads and each delivery uses the
    /// generation in force when it starts.
    pub view: Arc<ArcSwap<ReplayView>>,
}

/// One config generation's view for the replay worker.
#[derive(Debug)]
pub struct ReplayView {
    /// The layers below the spool, over the upstream client.
    pub service: ReplayService,
    /// The route table (entries are re-routed by name), the upstream and
    /// the routes' metric handles.
    pub prepare: Arc<PrepareShared>,
    /// The breaker, to wait out an open state.
    pub breaker: Breaker,
    /// Credential sent on replay when credentials are not stored.
    pub api_key: Option<(HeaderName, HeaderValue)>,
    /// Backoff, concurrency and dead-letter statuses.
    pub replay: ReplayParams,
}

/// What the backend said about one entry.
enum Outcome {
    Delivered,
    Transient {
        error: String,
        wait: Option<Duration>,
    },
    /// Refused for its own content.
    Refused(DeadInfo),
    /// Refused as a system: the entry is not at fault.
    SystemRefusal {
        reason: String,
        detail: String,
    },
}

/// What a finished delivery means for the worker.
enum Done {
    /// The entry left the queue (delivered or dead-lettered): the backend
    /// is taking writes.
    Gone,
    /// Try again after this wait (or the backoff).
    Retry(Duration),
    /// Pause the queue.
    Pause { reason: String, detail: String },
    /// Another replica holds the entry now (shared store): forget it.
    Lost,
}

/// What a finished delivery of one or more entries means for the worker.
struct Finished {
    /// Entries that left the queue, or that another replica holds now.
    gone: Vec<i64>,
    /// Entries to send one by one from now on.
    solo: Vec<i64>,
    /// What it means for the pace.
    done: Done,
}

impl Finished {
    fn of(entries: &[i64], done: Done) -> Finished {
        let gone = if matches!(done, Done::Gone | Done::Lost) {
            entries.to_vec()
        } else {
            Vec::new()
        };
        Finished {
            gone,
            solo: Vec::new(),
            done,
        }
    }
}

impl Drain {
    /// The generation in force.
    fn view(&self) -> arc_swap::Guard<Arc<ReplayView>> {
        self.view.load()
    }
}
