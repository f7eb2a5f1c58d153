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

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use http::{HeaderName, HeaderValue, Request, Response};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tower::util::BoxCloneSyncService;
use tower::{Service, ServiceExt};

use super::batch::{Joinable, joinable};
use super::record::decode_headers;
use super::refusal::system_refusal;
use super::store::{DeadInfo, Entry, Totals, now_ms};
use super::{Paused, ReplayParams, Spool};
use crate::body::{RequestBody, ResponseBody};
use crate::breaker::Breaker;
use crate::classify::aliases::{AliasAnswers, AttemptAliases};
use crate::classify::{Class, Kind, Verdict};
use crate::clock;
use crate::error::Error;
use crate::exchange::{Exchange, Routed};
use crate::graphql::{self, split};
use crate::metrics::PauseLabels;
use crate::proxy::forward::PrepareShared;
use crate::route::ErrorFormat;
use crate::shutdown::shutdown_requested;

/// How often the worker re-reads the ledger when idle (it is also woken on
/// every commit); this catches changes made by the operator CLI.
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

/// The worker's state between deliveries.
struct Pacing {
    backoff: Duration,
    /// No new delivery starts before this instant (deliveries in flight go
    /// on): the backend is struggling, or refusing everything.
    until: Option<Instant>,
    /// Set while paused: one probe at a time until one goes through.
    paused: Option<Paused>,
    /// Whether `until` is a wait the backend asked for (`Retry-After`),
    /// longer than the worker's own backoff: a live success does not cut
    /// that short.
    backend_asked: bool,
    /// Entries whose delivery failed while the breaker was not closed,
    /// since the last delivery that went through: the next probes take
    /// other entries first, so one entry that keeps failing on its own
    /// (slow, too large) cannot keep the breaker from closing.
    probed: HashSet<i64>,
}

impl Pacing {
    /// How many of `start` no earlier probe failed with.
    fn unprobed(&self, start: &[Entry]) -> usize {
        start
            .iter()
            .filter(|e| !self.probed.contains(&e.id))
            .count()
    }
}

impl Drain {
    /// The generation in force.
    fn view(&self) -> arc_swap::Guard<Arc<ReplayView>> {
        self.view.load()
    }

    /// Run until `shutdown` turns true.
    ///
    /// A sliding window, not rounds: up to `concurrency` deliveries are in
    /// flight, and a slot freed by one starts the next eligible entry at
    /// once, so one slow delivery (a hung attempt, a long `Retry-After`)
    /// holds its own slot and the entries behind it on the same keys, not
    /// the whole queue.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let this = Arc::new(self);
        let mut pacing = Pacing {
            backoff: this.view().replay.backoff_base,
            until: None,
            // A worker started again after it stopped resumes a pause it
            // was in (and `/spool` keeps saying so until a probe passes).
            paused: this.spool.paused(),
            backend_asked: false,
            probed: HashSet::new(),
        };
        let mut last_resync = Instant::now();
        let mut tasks: JoinSet<Finished> = JoinSet::new();
        let mut in_flight: HashMap<i64, Vec<String>> = HashMap::new();
        let mut task_entries: HashMap<tokio::task::Id, Vec<i64>> = HashMap::new();
        // Entries whose joined request was refused as a whole: each goes
        // on its own, so only the one at fault is refused.
        let mut solo: HashSet<i64> = HashSet::new();
        // The head of the queue, read in batches: one read serves many
        // deliveries. Reading per delivery kept a read transaction open
        // almost all the time, so checkpoints could never restart the WAL
        // and it grew without bound while a large queue drained.
        let mut cache: Vec<Entry> = Vec::new();
        let mut reload = true;
        let short_interval = this.spool.store().short_head_interval();
        // When the last read of the head took all there was, on a store
        // that paces such reads.
        let mut short_read: Option<Instant> = None;
        // When the head was last read, and how many entries that read took.
        let mut read_at = Instant::now();
        let mut read_len = 0usize;
        loop {
            if *shutdown.borrow() {
                break;
            }
            // A live write met a refusal of everything: pause as on our own.
            if let Some((reason, detail)) = this.spool.take_pause_request() {
                this.pace(&mut pacing, Done::Pause { reason, detail });
            }
            if last_resync.elapsed() >= IDLE_RESYNC {
                // Also picks up what the operator CLI changed in the file.
                this.spool.resync().await;
                last_resync = Instant::now();
                reload = true;
            }
            let waiting = pacing.until.is_some_and(|t| t > Instant::now());
            let mut read_due_in = None;
            // While the breaker is not closed, only as many deliveries as
            // it lets through as probes. Each delivery renews its claims and
            // records its failure in the store, and those the breaker turns
            // away still did so and were charged a try: against a down
            // backend a whole window of them per try cost the store a burst
            // of work that acknowledgements of live writes waited behind
            // (docs/benchmarks.md).
            let probes = this.view().breaker.probe_limit();
            // Paused: one probe at a time.
            let window = if pacing.paused.is_some() {
                1
            } else {
                let concurrency = this.view().replay.concurrency;
                probes.map_or(concurrency, |p| p.min(concurrency))
            };
            let probing = probes.is_some() && pacing.paused.is_none();
            let per_request = this.view().replay.batch.max(1);
            if !waiting && tasks.len() < window {
                let free = window.saturating_sub(tasks.len());
                let per = if pacing.paused.is_some() {
                    1
                } else {
                    per_request
                };
                let stored = Totals::get(&this.spool.store().totals.entries);
                // While probing, what the probes need: a claim of two whole
                // windows per try would hold (and, on the shared store,
                // lease) entries no delivery is going to take.
                let wanted = window * per;
                // Probes skip the entries earlier probes failed with.
                let take = free * per + if probing { pacing.probed.len() } else { 0 };
                // A read takes what is in flight and a whole window more (at
                // least 16 entries per slot, for small batches), and the next
                // comes only when what was read cannot fill the free slots:
                // about one read per window delivered. Reading whenever fewer
                // than a window's worth waited, with a third of a window more
                // per read, meant a read per delivery or two ended while a
                // deep queue drained, and on the shared store every read is a
                // claim that sends again each row the replica already holds
                // (what that cost: docs/benchmarks.md).
                let head_limit = wanted + wanted.max(window * 16);
                let mut cache_end = cache.last().map_or(-1, |e| e.id);
                let mut ready = None;
                let mut due = reload;
                // Reading the head again helps only once the cache is stale:
                // a window of it delivered since the read (the head moved on),
                // or the read is old. Entries that wait on a key in flight
                // are read back the same, so a cache of one hot step's
                // versions was read again after every delivery, and the
                // reads — not the deliveries — set the drain's pace.
                // (Checked below only while more is stored than the cache
                // holds.) A read that took all there was misses what was
                // stored since.
                let waiting_in_cache = cache.iter().any(|e| !in_flight.contains_key(&e.id));
                let stale = !waiting_in_cache
                    || read_len < head_limit
                    || read_len.saturating_sub(cache.len()) >= wanted
                    || read_at.elapsed() >= STALE_CACHE;
                if !due && stored > cache.len() as u64 {
                    match this.spool.eligible(&cache, cache_end, &in_flight, take) {
                        // Probes count only entries no earlier probe failed
                        // with, and look for more in the queue only while
                        // what was read is less than a probes' read: past
                        // that they start over from the head.
                        Ok(start)
                            if start.len() >= free * per
                                && (!probing
                                    || cache.len() >= head_limit
                                    || pacing.unprobed(&start) >= free * per) =>
                        {
                            ready = Some(start)
                        }
                        Ok(start) if !stale => ready = Some(start),
                        _ => due = true,
                    }
                }
                let deferred = short_read
                    .map(|t| short_interval.saturating_sub(t.elapsed()))
                    .filter(|left| due && !left.is_zero());
                if deferred.is_some() {
                    read_due_in = deferred;
                } else if due {
                    this.spool.head_read_starts();
                    this.spool.inner.metrics.queue_reads.inc();
                    match this.spool.store().head(head_limit, HEAD_MAX_BYTES).await {
                        Ok(batch) => {
                            short_read = (!short_interval.is_zero() && batch.len() < head_limit)
                                .then(Instant::now);
                            read_at = Instant::now();
                            read_len = batch.len();
                            cache = batch;
                            cache_end = cache.last().map_or(-1, |e| e.id);
                            reload = false;
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "spool: cannot read the queue");
                            pacing.until =
                                Some(clock::after(Instant::now(), Duration::from_secs(1)));
                        }
                    }
                }
                // While the breaker is open, wait out its open time; once it
                // is over, the next delivery is the probe.
                if let Some(wait) = this.view().breaker.retry_after().filter(|w| !w.is_zero()) {
                    pacing.until = Some(clock::after(Instant::now(), wait));
                } else if pacing.until.is_none_or(|t| t <= Instant::now()) {
                    // What the check above found, when the cache was not read again.
                    let start = match ready.take() {
                        Some(start) => Ok(start),
                        None => this.spool.eligible(&cache, cache_end, &in_flight, take),
                    };
                    match start {
                        Ok(mut start) => {
                            if probing {
                                // Every entry at hand failed a probe: round again.
                                if pacing.unprobed(&start) == 0 {
                                    pacing.probed.clear();
                                } else {
                                    start.retain(|e| !pacing.probed.contains(&e.id));
                                }
                            }
                            for batch in this.group(start, free, per, &solo) {
                                let ids: Vec<i64> = batch.iter().map(|(e, _)| e.id).collect();
                                for (e, _) in &batch {
                                    in_flight.insert(e.id, e.keys.clone());
                                }
                                let this = this.clone();
                                let handle =
                                    tasks.spawn(async move { this.deliver_batch(batch).await });
                                task_entries.insert(handle.id(), ids);
                            }
                        }
                        Err(_) => {
                            // A commit landed inside what was read.
                            reload = true;
                            continue;
                        }
                    }
                }
            }
            let idle_queue = cache.is_empty();
            // Wait for whatever can change what is eligible: a delivery
            // ending, a new commit or a live write letting go of its keys,
            // the pause ending, or (with nothing to do) the resync period.
            let nap = match pacing.until {
                Some(t) if t > Instant::now() => t - Instant::now(),
                // A read of the head put off: come back when it is due.
                _ if let Some(left) = read_due_in => left,
                _ if idle_queue && in_flight.is_empty() => IDLE_RESYNC,
                _ if tasks.len() >= window => IDLE_RESYNC,
                // Entries wait on keys held elsewhere: look again soon.
                _ => Duration::from_millis(50),
            };
            // Backing off after failures (not paused: a live success says
            // nothing of the stored entries' credentials): the first answer
            // the backend gives anyone ends the wait.
            let backing_off = pacing.paused.is_none()
                && !pacing.backend_asked
                && pacing.until.is_some_and(|t| t > Instant::now());
            let breaker = this.view().breaker.clone();
            tokio::select! {
                () = breaker.backend_answers(), if backing_off => {
                    pacing.backoff = this.view().replay.backoff_base;
                    pacing.until = None;
                }
                Some(first) = tasks.join_next_with_id(), if !tasks.is_empty() => {
                    // Take every delivery that has ended, so one read of the
                    // queue refills all the freed slots.
                    let mut next = Some(first);
                    while let Some(result) = next {
                        let (task, finished) = match result {
                            Ok((task, f)) => (task, f),
                            Err(e) => (e.id(), Finished::of(&[], Done::Retry(Duration::ZERO))),
                        };
                        let ids = task_entries.remove(&task).unwrap_or_default();
                        for id in &ids {
                            in_flight.remove(id);
                        }
                        if matches!(finished.done, Done::Retry(_))
                            && this.view().breaker.probe_limit().is_some()
                        {
                            pacing.probed.extend(ids);
                        }
                        if !finished.gone.is_empty() {
                            let gone: HashSet<i64> = finished.gone.iter().copied().collect();
                            cache.retain(|e| !gone.contains(&e.id));
                            for id in &gone {
                                solo.remove(id);
                            }
                        }
                        solo.extend(finished.solo);
                        this.pace(&mut pacing, finished.done);
                        next = tasks.try_join_next_with_id();
                    }
                }
                () = this.spool.inner.wake.notified() => {}
                () = tokio::time::sleep(nap) => {}
                () = shutdown_requested(&mut shutdown) => break,
            }
        }
        // Stop between entries: deliveries in flight finish (bounded by
        // their route's deadline) and commit their outcome.
        while tasks.join_next().await.is_some() {}
        tracing::info!("spool worker stopped");
    }

    /// What one finished delivery does to the pace of the next ones.
    fn pace(&self, pacing: &mut Pacing, done: Done) {
        let now = Instant::now();
        match done {
            Done::Lost => {}
            Done::Gone => {
                pacing.backend_asked = false;
                pacing.backoff = self.view().replay.backoff_base;
                pacing.probed.clear();
                if let Some(p) = pacing.paused.take() {
                    tracing::warn!(
                        target: "spool",
                        reason = %p.reason,
                        paused_ms = (now_ms() - p.since_ms).max(0),
                        "spool resumed: the backend takes writes again"
                    );
                    self.spool.set_paused(None);
                }
            }
            Done::Retry(wait) => {
                // A wait the backend asked for (`Retry-After`) is honoured
                // up to replay_backoff_max: past that one entry would stall
                // the whole queue, and a value past the clock's range would
                // stop the worker.
                let wait = wait.min(self.view().replay.backoff_max);
                pacing.backend_asked = wait > pacing.backoff;
                let until = clock::after(now, wait.max(pacing.backoff));
                // Failures of deliveries that ran side by side are one
                // event: back off further once per pause.
                if pacing.until.is_none_or(|t| t <= now) {
                    pacing.backoff = pacing
                        .backoff
                        .saturating_mul(2)
                        .min(self.view().replay.backoff_max);
                }
                pacing.until = Some(pacing.until.map_or(until, |t| t.max(until)));
            }
            Done::Pause { reason, detail } => {
                pacing.backend_asked = false;
                let wait = pacing.backoff;
                pacing.backoff = pacing
                    .backoff
                    .saturating_mul(2)
                    .min(self.view().replay.backoff_max);
                pacing.until = Some(clock::after(now, wait));
                let next_probe_ms = clock::ms_after(wait);
                let paused = match pacing.paused.take() {
                    Some(p) => Paused {
                        next_probe_ms,
                        detail,
                        ..p
                    },
                    None => {
                        tracing::warn!(
                            target: "spool",
                            reason = %reason,
                            detail = %detail,
                            "spool paused: the backend refuses every write; nothing is dead-lettered, probing again"
                        );
                        self.spool
                            .inner
                            .metrics
                            .pauses
                            .get_or_create(&PauseLabels {
                                reason: reason.clone(),
                            })
                            .inc();
                        Paused {
                            reason,
                            detail,
                            since_ms: now_ms(),
                            next_probe_ms,
                        }
                    }
                };
                self.spool.set_paused(Some(paused.clone()));
                pacing.paused = Some(paused);
            }
        }
    }

    /// Of `start` (entries that may start now, in queue order, no two
    /// sharing a key), at most `free` deliveries: entries that can be
    /// joined go together, up to `per` and the byte budget per request;
    /// others (and those in `solo`) go alone. Entries not placed wait for
    /// a later round.
    fn group(
        &self,
        start: Vec<Entry>,
        free: usize,
        per: usize,
        solo: &HashSet<i64>,
    ) -> Vec<Vec<(Entry, Option<Joinable>)>> {
        let max_bytes = self.view().replay.batch_bytes;
        let mut out: Vec<Vec<(Entry, Option<Joinable>)>> = Vec::new();
        let mut bytes: Vec<usize> = Vec::new();
        let mut open: HashMap<Vec<u8>, usize> = HashMap::new();
        for entry in start {
            let join = if per > 1 && !solo.contains(&entry.id) {
                joinable(&entry)
            } else {
                None
            };
            if let Some(j) = &join
                && let Some(&at) = open.get(&j.group)
                && out[at].len() < per
                && bytes[at] + entry.body_bytes <= max_bytes
            {
                bytes[at] += entry.body_bytes;
                out[at].push((entry, join));
                continue;
            }
            if out.len() >= free {
                continue;
            }
            if let Some(j) = &join {
                open.insert(j.group.clone(), out.len());
            }
            bytes.push(entry.body_bytes);
            out.push(vec![(entry, join)]);
        }
        out
    }

    /// Deliver entries — one as it is, several joined into one request —
    /// and commit what the backend said about each.
    async fn deliver_batch(&self, batch: Vec<(Entry, Option<Joinable>)>) -> Finished {
        let ids: Vec<i64> = batch.iter().map(|(e, _)| e.id).collect();
        let asked = Instant::now();
        let held: HashSet<i64> = match self.spool.store().renew_many(&ids).await {
            Ok(held) => held.into_iter().collect(),
            Err(e) => {
                tracing::warn!(error = %e, entries = ids.len(), "spool: cannot renew the claims; trying later");
                return Finished::of(&ids, Done::Retry(Duration::from_secs(1)));
            }
        };
        // The renewal holds the entries for `lease` from when the database
        // ran it, at most `asked.elapsed()` ago; the delivery may take its
        // route's deadline. Config keeps the lease longer than every
        // deadline, but a slow renewal eats that margin: deliver only if the
        // lease outlives the delivery, so no other replica can take the
        // entry over while this one may still send it.
        if let Some(lease) = self.spool.store().lease() {
            let view = self.view();
            let longest = batch
                .iter()
                .map(|(e, _)| view.prepare.routes.deadline_of(&e.route))
                .max()
                .unwrap_or(Duration::ZERO);
            if lease.saturating_sub(asked.elapsed()) <= longest {
                tracing::warn!(
                    entries = ids.len(),
                    renewal_ms = asked.elapsed().as_millis() as u64,
                    "spool: the claims' renewal took too long to deliver on them safely; trying later"
                );
                return Finished::of(&ids, Done::Retry(Duration::ZERO));
            }
        }
        // Entries another replica took over are its to deliver.
        let lost: Vec<i64> = ids
            .iter()
            .copied()
            .filter(|id| !held.contains(id))
            .collect();
        let mut mine: Vec<(Entry, Option<Joinable>)> = batch
            .into_iter()
            .filter(|(e, _)| held.contains(&e.id))
            .collect();
        let mut finished = match mine.len() {
            0 => Finished::of(&[], Done::Lost),
            1 => {
                let (entry, _) = mine.remove(0);
                let id = entry.id;
                Finished::of(&[id], self.deliver_and_commit(entry).await)
            }
            _ => self.deliver_joined(mine).await,
        };
        finished.gone.extend(lost);
        finished
    }

    /// Deliver several single-step entries as one batched mutation and
    /// commit each alias's answer to its own entry.
    async fn deliver_joined(&self, batch: Vec<(Entry, Option<Joinable>)>) -> Finished {
        let view = self.view.load_full();
        let store = self.spool.store();
        let metrics = &self.spool.inner.metrics;
        let ids: Vec<i64> = batch.iter().map(|(e, _)| e.id).collect();
        let parts: Vec<&split::Batch> = batch
            .iter()
            .filter_map(|(_, j)| j.as_ref().map(|j| &j.batch))
            .collect();
        if parts.len() != batch.len() {
            // Only joinable entries are grouped; nothing to join otherwise.
            return Finished::of(&ids, Done::Retry(Duration::ZERO));
        }
        let name = parts[0]
            .name()
            .filter(|n| parts.iter().all(|p| p.name() == Some(*n)));
        let mut joined = batch[0].0.clone();
        joined.body = split::join(name, &parts);
        joined.body_bytes = joined.body.len();
        joined.keys = batch.iter().flat_map(|(e, _)| e.keys.clone()).collect();
        let keys: Vec<String> = (0..batch.len()).map(split::joined_key).collect();
        let outcome = match Self::request(&view, &joined) {
            Ok((mut req, ex)) => {
                // Judged alias by alias, always: a success of the whole is
                // no confirmation of each entry.
                req.extensions_mut().insert(AttemptAliases(
                    keys.iter().map(|k| k.as_str().into()).collect(),
                ));
                metrics.replay_requests.inc();
                let mut service = view.service.clone();
                let result = match service.ready().await {
                    Ok(svc) => svc.call(req).await,
                    Err(e) => Err(e),
                };
                Some((result, ex.attempts()))
            }
            Err(_) => None,
        };
        let (result, attempts) = match outcome {
            Some(o) => o,
            None => {
                // The joined request could not be built: send them alone.
                return Finished {
                    gone: Vec::new(),
                    solo: ids,
                    done: Done::Retry(Duration::ZERO),
                };
            }
        };
        let (answers, class, status, body) = match &result {
            Ok(resp) => {
                let class = resp
                    .extensions()
                    .get::<Class>()
                    .copied()
                    .unwrap_or(Class::OK);
                let body = resp.body().bytes().map(<[u8]>::to_vec);
                // Each alias's verdict as the classify layer and the retry
                // policy reached it: never judged again from the body.
                let answers = resp
                    .extensions()
                    .get::<AliasAnswers>()
                    .filter(|a| a.0.len() == batch.len())
                    .map(|a| a.0.to_vec());
                (answers, class, Some(resp.status().as_u16()), body)
            }
            Err(e) => (None, Class::of_error(e), None, None),
        };
        let Some(answers) = answers else {
            return self
                .joined_as_a_whole(&ids, &result, class, status, body, attempts)
                .await;
        };
        let mut delivered = Vec::new();
        let mut open = Vec::new();
        let mut refused = Vec::new();
        // An alias refused as a system (the retry of it met a 401, say) is
        // decided by the rule live writes share: kept, and the queue pauses.
        let mut paused_by: Option<(String, String)> = None;
        for ((entry, _), (key, a)) in batch.iter().zip(keys.iter().zip(answers)) {
            let system = (a.verdict == Verdict::Permanent)
                .then(|| {
                    let class = Class {
                        verdict: Verdict::Permanent,
                        kind: a.kind,
                        ..Class::OK
                    };
                    system_refusal(&class, &view.replay.dead_letter_statuses)
                })
                .flatten();
            if let Some(reason) = system {
                paused_by
                    .get_or_insert((reason, format!("{} to a batched replay", a.kind.as_str())));
                open.push(entry.id);
                continue;
            }
            match a.verdict {
                Verdict::Success => delivered.push(entry.id),
                Verdict::Transient => open.push(entry.id),
                Verdict::Permanent => {
                    let mut answer = format!(
                        "{{\"data\":{{{}:{}}}",
                        serde_json::Value::String(key.clone()),
                        a.data.as_deref().map_or("null", |d| d.get())
                    );
                    if !a.errors.is_empty() {
                        let errors: Vec<&str> = a.errors.iter().map(|e| e.get()).collect();
                        answer.push_str(&format!(",\"errors\":[{}]", errors.join(",")));
                    }
                    answer.push('}');
                    refused.push((
                        entry,
                        DeadInfo {
                            class: Verdict::Permanent.as_str().into(),
                            kind: a.kind.as_str().into(),
                            status,
                            response: Some(answer.into_bytes()),
                            reason: format!(
                                "backend refused this step in a batched replay ({})",
                                a.kind.as_str()
                            ),
                        },
                    ));
                }
            }
        }
        let mut gone = Vec::new();
        if !delivered.is_empty() {
            match store.delivered_many(delivered.clone()).await {
                Ok(()) => {
                    metrics.replay_delivered.inc_by(delivered.len() as u64);
                    tracing::info!(
                        target: "spool",
                        entries = delivered.len(),
                        first = delivered[0],
                        aliases = batch.len(),
                        "spooled writes delivered in one batched request"
                    );
                    gone.extend(delivered);
                }
                Err(e) => {
                    tracing::error!(error = %e, "spool: cannot delete delivered entries; they will be sent again");
                }
            }
        }
        for (entry, info) in refused {
            tracing::warn!(
                target: "spool",
                entry = entry.id,
                request_id = %entry.request_id,
                route = %entry.route,
                kind = %info.kind,
                reason = %info.reason,
                "spooled write refused by the backend for its content; moved to dead letters"
            );
            match store.dead_letter(entry.id, info).await {
                Ok(()) => {
                    metrics.replay_dead_lettered.inc();
                    gone.push(entry.id);
                }
                Err(e) => {
                    tracing::error!(error = %e, entry = entry.id, "spool: cannot dead-letter an entry")
                }
            }
        }
        let done = if open.is_empty() {
            Done::Gone
        } else {
            metrics.replay_transient.inc_by(open.len() as u64);
            let error = format!("{} ({attempts} attempts)", class.kind.as_str());
            let _ = store.failed_many(open, error).await;
            match paused_by {
                Some((reason, detail)) => Done::Pause { reason, detail },
                None => Done::Retry(class.retry_after.unwrap_or(Duration::ZERO)),
            }
        };
        self.spool.update_gauges();
        Finished {
            gone,
            solo: Vec::new(),
            done,
        }
    }

    /// A joined request answered as a whole (an error, a status, an error
    /// that names no alias): the same for every entry in it, except that a
    /// refusal of its content dead-letters nothing — its entries are sent
    /// again one by one.
    async fn joined_as_a_whole(
        &self,
        ids: &[i64],
        result: &Result<Response<ResponseBody>, Error>,
        class: Class,
        status: Option<u16>,
        body: Option<Vec<u8>>,
        attempts: u32,
    ) -> Finished {
        let failed = |error: String| async move {
            self.spool
                .inner
                .metrics
                .replay_transient
                .inc_by(ids.len() as u64);
            let _ = self.spool.store().failed_many(ids.to_vec(), error).await;
        };
        match class.verdict {
            Verdict::Success => {
                // Success without an answer per alias: not confirmed.
                failed("no answer per alias".into()).await;
                Finished::of(ids, Done::Retry(Duration::ZERO))
            }
            Verdict::Transient => {
                let wait = match result {
                    Err(_) if class.kind == Kind::CircuitOpen => self.view().breaker.retry_after(),
                    _ => class.retry_after,
                };
                let error = match result {
                    Err(e) => format!("{e} ({attempts} attempts)"),
                    Ok(_) => format!("{} ({attempts} attempts)", class.kind.as_str()),
                };
                failed(error).await;
                let mut finished = Finished::of(ids, Done::Retry(wait.unwrap_or(Duration::ZERO)));
                // The backend took the request and failed on it (a 5xx, a
                // hang, a reset, an error that names no alias): one entry
                // may be the cause, so none may hold back the others —
                // they go one by one from now on. A request that never
                // reached it (refused connection, open breaker) or a rate
                // limit says nothing about the entries.
                if class.may_have_reached && class.kind != Kind::Status(429) {
                    finished.solo = ids.to_vec();
                }
                finished
            }
            Verdict::Permanent => {
                let reason = match result {
                    Err(e) => e.to_string(),
                    Ok(_) => format!(
                        "backend answered {} ({}) to a batched replay",
                        status.unwrap_or(0),
                        class.kind.as_str()
                    ),
                };
                let info = DeadInfo {
                    class: class.verdict.as_str().into(),
                    kind: class.kind.as_str().into(),
                    status,
                    response: body,
                    reason,
                };
                match self.refusal(&class, info) {
                    Outcome::SystemRefusal { reason, detail } => {
                        failed(detail.clone()).await;
                        Finished::of(ids, Done::Pause { reason, detail })
                    }
                    outcome => {
                        let reason = match outcome {
                            Outcome::Refused(info) => info.reason,
                            _ => String::new(),
                        };
                        tracing::info!(
                            target: "spool",
                            entries = ids.len(),
                            reason = %reason,
                            "a batched replay was refused as a whole; sending its entries one by one"
                        );
                        Finished {
                            gone: Vec::new(),
                            solo: ids.to_vec(),
                            done: Done::Retry(Duration::ZERO),
                        }
                    }
                }
            }
        }
    }

    /// Deliver one entry and commit the result.
    async fn deliver_and_commit(&self, entry: Entry) -> Done {
        let outcome = self.deliver(&entry).await;
        let metrics = &self.spool.inner.metrics;
        let store = self.spool.store();
        match outcome {
            Outcome::Delivered => {
                if let Err(e) = store.delivered(entry.id).await {
                    tracing::error!(error = %e, entry = entry.id, "spool: cannot delete a delivered entry; it will be sent again");
                    return Done::Retry(Duration::from_secs(1));
                }
                metrics.replay_delivered.inc();
                self.spool.update_gauges();
                tracing::info!(
                    target: "spool",
                    entry = entry.id,
                    request_id = %entry.request_id,
                    route = %entry.route,
                    attempts = entry.attempts + 1,
                    "spooled write delivered"
                );
                Done::Gone
            }
            Outcome::Refused(info) => {
                tracing::warn!(
                    target: "spool",
                    entry = entry.id,
                    request_id = %entry.request_id,
                    route = %entry.route,
                    kind = %info.kind,
                    status = info.status,
                    reason = %info.reason,
                    "spooled write refused by the backend for its content; moved to dead letters"
                );
                if let Err(e) = store.dead_letter(entry.id, info).await {
                    tracing::error!(error = %e, entry = entry.id, "spool: cannot dead-letter an entry");
                    return Done::Retry(Duration::from_secs(1));
                }
                metrics.replay_dead_lettered.inc();
                self.spool.update_gauges();
                Done::Gone
            }
            Outcome::Transient { error, wait } => {
                metrics.replay_transient.inc();
                let _ = store.failed(entry.id, error.clone()).await;
                tracing::info!(
                    target: "spool",
                    entry = entry.id,
                    error = %error,
                    "spooled write not delivered yet"
                );
                Done::Retry(wait.unwrap_or(Duration::ZERO))
            }
            Outcome::SystemRefusal { reason, detail } => {
                metrics.replay_transient.inc();
                let _ = store.failed(entry.id, detail.clone()).await;
                Done::Pause { reason, detail }
            }
        }
    }

    /// A refusal (permanent class) of this entry: its content's fault, or
    /// the system's?
    fn refusal(&self, class: &Class, info: DeadInfo) -> Outcome {
        match system_refusal(class, &self.view().replay.dead_letter_statuses) {
            None => Outcome::Refused(info),
            Some(reason) => Outcome::SystemRefusal {
                reason,
                detail: info.reason,
            },
        }
    }

    fn request(
        view: &ReplayView,
        entry: &Entry,
    ) -> Result<(Request<RequestBody>, Arc<Exchange>), String> {
        let body = entry.body.clone();
        let op = graphql::operation_of(&body).ok();
        let method =
            http::Method::from_bytes(entry.method.as_bytes()).map_err(|e| e.to_string())?;
        let path = entry.path.split('?').next().unwrap_or("/");
        let routes = &view.prepare.routes;
        let route = routes
            .all()
            .iter()
            .find(|r| *r.name == *entry.route)
            .cloned()
            .unwrap_or_else(|| routes.find(&method, path, op.as_deref()).clone());
        let mut headers = decode_headers(&entry.headers);
        headers.insert(http::header::HOST, view.prepare.target.host().clone());
        // The stored length is the original request's; an entry cut from a
        // batch, or a joined replay, has a body of its own (hyper writes
        // the length of the body it sends).
        headers.remove(http::header::CONTENT_LENGTH);
        if let Some((name, value)) = &view.api_key {
            headers.insert(name.clone(), value.clone());
        }
        let request_id = HeaderValue::from_str(&entry.request_id)
            .unwrap_or_else(|_| HeaderValue::from_static("-"));
        let ex = Exchange::new(request_id);
        ex.set_routed(Routed {
            deadline: clock::after(ex.started, route.deadline),
            metrics: view.prepare.route_metrics[route.index].clone(),
            route,
            operation: op,
            idempotent: true,
            replayable: true,
            error_format: ErrorFormat::Graphql,
            body_bytes: Some(body.len() as u64),
            keys: entry.keys.clone().into_boxed_slice(),
        });
        let mut req = Request::new(RequestBody::full(body));
        *req.method_mut() = method;
        *req.uri_mut() = view
            .prepare
            .target
            .uri_for(&entry.path)
            .map_err(|e| e.to_string())?;
        *req.headers_mut() = headers;
        req.extensions_mut().insert(ex.clone());
        Ok((req, ex))
    }

    async fn deliver(&self, entry: &Entry) -> Outcome {
        let view = self.view.load_full();
        let (req, ex) = match Self::request(&view, entry) {
            Ok(r) => r,
            Err(reason) => {
                // The stored write itself cannot be sent: its content's fault.
                return Outcome::Refused(DeadInfo {
                    class: "permanent".into(),
                    kind: "bad_request".into(),
                    status: None,
                    response: None,
                    reason: format!("cannot rebuild the request: {reason}"),
                });
            }
        };
        self.spool.inner.metrics.replay_requests.inc();
        let mut service = view.service.clone();
        let result = match service.ready().await {
            Ok(svc) => svc.call(req).await,
            Err(e) => Err(e),
        };
        let attempts = ex.attempts();
        match result {
            Ok(resp) => {
                let class = resp
                    .extensions()
                    .get::<Class>()
                    .copied()
                    .unwrap_or(Class::OK);
                match class.verdict {
                    Verdict::Success => Outcome::Delivered,
                    Verdict::Transient => Outcome::Transient {
                        error: format!("{} ({} attempts)", class.kind.as_str(), attempts),
                        wait: class.retry_after,
                    },
                    Verdict::Permanent => {
                        let status = resp.status();
                        // Keep the backend's answer (bounded) for the operator.
                        let limited = http_body_util::Limited::new(resp.into_body(), 64 * 1024);
                        let response = http_body_util::BodyExt::collect(limited)
                            .await
                            .ok()
                            .map(|c| c.to_bytes().to_vec());
                        let info = DeadInfo {
                            class: class.verdict.as_str().into(),
                            kind: class.kind.as_str().into(),
                            status: Some(status.as_u16()),
                            response,
                            reason: format!("backend answered {status} ({})", class.kind.as_str()),
                        };
                        self.refusal(&class, info)
                    }
                }
            }
            Err(e) => {
                let class = Class::of_error(&e);
                if class.verdict == Verdict::Permanent {
                    let info = DeadInfo {
                        class: class.verdict.as_str().into(),
                        kind: class.kind.as_str().into(),
                        status: None,
                        response: None,
                        reason: e.to_string(),
                    };
                    self.refusal(&class, info)
                } else {
                    let wait = if class.kind == Kind::CircuitOpen {
                        self.view().breaker.retry_after()
                    } else {
                        None
                    };
                    Outcome::Transient {
                        error: format!("{e} ({attempts} attempts)"),
                        wait,
                    }
                }
            }
        }
    }
}
