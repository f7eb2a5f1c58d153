//! The worker's loop: refill the free slots from the head of the queue,
//! nap until something can change what is eligible, settle the deliveries
//! that ended. A sliding window, not rounds: up to `concurrency`
//! deliveries are in flight, and a slot freed by one starts the next
//! eligible entry at once, so one slow delivery (a hung attempt, a long
//! `Retry-After`) holds its own slot and the entries behind it on the same
//! keys, not the whole queue.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::pace::Pacing;
use super::{Done, Drain, Finished, HEAD_MAX_BYTES, IDLE_RESYNC, STALE_CACHE};
use crate::clock;
use crate::shutdown::shutdown_requested;
use crate::spool::store::Entry;

/// The loop's state between turns.
struct Worker {
    this: Arc<Drain>,
    pacing: Pacing,
    last_resync: Instant,
    tasks: JoinSet<Finished>,
    /// Entries being delivered, with their keys.
    in_flight: HashMap<i64, Vec<String>>,
    task_entries: HashMap<tokio::task::Id, Vec<i64>>,
    /// Entries whose joined request was refused as a whole: each goes on
    /// its own, so only the one at fault is refused.
    solo: HashSet<i64>,
    /// The head of the queue, read in batches: one read serves many
    /// deliveries. Reading per delivery kept a read transaction open almost
    /// all the time, so checkpoints could never restart the WAL and it grew
    /// without bound while a large queue drained.
    cache: Vec<Entry>,
    reload: bool,
    short_interval: Duration,
    /// When the last read of the head took all there was, on a store that
    /// paces such reads.
    short_read: Option<Instant>,
    /// When the head was last read, and how many entries that read took.
    read_at: Instant,
    read_len: usize,
}

/// What a refill wants from the head of the queue.
struct Want {
    /// Entries that fill the free slots.
    free: usize,
    /// Entries to look for (probes skip those earlier probes failed with).
    take: usize,
    /// A whole window's worth.
    wanted: usize,
    /// How many a read of the head takes.
    head_limit: usize,
    probing: bool,
}

/// What one refill decided for the nap that follows.
struct Turn {
    /// Deliveries allowed at once now.
    window: usize,
    /// A read of the head put off until then.
    read_due_in: Option<Duration>,
}

impl Drain {
    /// Run until `shutdown` turns true.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let mut w = Worker::new(Arc::new(self));
        loop {
            if *shutdown.borrow() {
                break;
            }
            w.take_requests().await;
            let Some(turn) = w.refill().await else {
                // A commit landed inside what was read: read again.
                continue;
            };
            let nap = w.nap(&turn);
            // Backing off after failures (not paused: a live success says
            // nothing of the stored entries' credentials): the first answer
            // the backend gives anyone ends the wait.
            let backing_off = w.pacing.paused.is_none()
                && !w.pacing.backend_asked
                && w.pacing.until.is_some_and(|t| t > Instant::now());
            let breaker = w.this.view().breaker.clone();
            let spool = w.this.spool.clone();
            tokio::select! {
                () = breaker.backend_answers(), if backing_off => {
                    w.pacing.backoff = w.this.view().replay.backoff_base;
                    w.pacing.until = None;
                }
                Some(first) = w.tasks.join_next_with_id(), if !w.tasks.is_empty() => {
                    w.settle(first);
                }
                () = spool.inner.wake.notified() => {}
                () = tokio::time::sleep(nap) => {}
                () = shutdown_requested(&mut shutdown) => break,
            }
        }
        // Stop between entries: deliveries in flight finish (bounded by
        // their route's deadline) and commit their outcome.
        while w.tasks.join_next().await.is_some() {}
        tracing::info!("spool worker stopped");
    }
}

impl Worker {
    fn new(this: Arc<Drain>) -> Worker {
        let pacing = Pacing {
            backoff: this.view().replay.backoff_base,
            until: None,
            // A worker started again after it stopped resumes a pause it
            // was in (and `/spool` keeps saying so until a probe passes).
            paused: this.spool.paused(),
            backend_asked: false,
            probed: HashSet::new(),
        };
        let short_interval = this.spool.store().short_head_interval();
        Worker {
            this,
            pacing,
            last_resync: Instant::now(),
            tasks: JoinSet::new(),
            in_flight: HashMap::new(),
            task_entries: HashMap::new(),
            solo: HashSet::new(),
            cache: Vec::new(),
            reload: true,
            short_interval,
            short_read: None,
            read_at: Instant::now(),
            read_len: 0,
        }
    }

    /// A pause a live write asked for, and the periodic re-read of the head.
    async fn take_requests(&mut self) {
        // A live write met a refusal of everything: pause as on our own.
        if let Some((reason, detail)) = self.this.spool.take_pause_request() {
            self.this
                .pace(&mut self.pacing, Done::Pause { reason, detail });
        }
        if self.last_resync.elapsed() >= IDLE_RESYNC {
            // Entries the operator CLI requeued are seen only by reading
            // the head again (the store re-reads its ledger on its own).
            self.last_resync = Instant::now();
            self.reload = true;
        }
    }

    /// Start deliveries in the free slots, reading the head of the queue
    /// again when what was read cannot fill them. `None` when a commit
    /// landed inside what was read (the loop reads again at once).
    async fn refill(&mut self) -> Option<Turn> {
        let this = self.this.clone();
        let waiting = self.pacing.until.is_some_and(|t| t > Instant::now());
        let mut read_due_in = None;
        // While the breaker is not closed, only as many deliveries as it
        // lets through as probes. Each delivery renews its claims and
        // records its failure in the store, and those the breaker turns
        // away still did so and were charged a try: against a down backend
        // a whole window of them per try cost the store a burst of work
        // that acknowledgements of live writes waited behind.
        let probes = this.view().breaker.probe_limit();
        // Paused: one probe at a time.
        let window = if self.pacing.paused.is_some() {
            1
        } else {
            let concurrency = this.view().replay.concurrency;
            probes.map_or(concurrency, |p| p.min(concurrency))
        };
        let probing = probes.is_some() && self.pacing.paused.is_none();
        if waiting || self.tasks.len() >= window {
            return Some(Turn {
                window,
                read_due_in,
            });
        }
        let free = window.saturating_sub(self.tasks.len());
        let per = if self.pacing.paused.is_some() {
            1
        } else {
            this.view().replay.batch.max(1)
        };
        // While probing, what the probes need: a claim of two whole windows
        // per try would hold (and, on the shared store, lease) entries no
        // delivery is going to take.
        let wanted = window * per;
        // Probes skip the entries earlier probes failed with.
        let take = free * per + if probing { self.pacing.probed.len() } else { 0 };
        // A read takes what is in flight and a whole window more (at least
        // 16 entries per slot, for small batches), and the next comes only
        // when what was read cannot fill the free slots: about one read per
        // window delivered. Reading whenever fewer than a window's worth
        // waited meant a read per delivery or two while a deep queue
        // drained, and on the shared store every read is a claim that sends
        // again each row the replica already holds.
        let head_limit = wanted + wanted.max(window * 16);
        let (mut ready, due) = self.ready_in_cache(Want {
            free: free * per,
            take,
            wanted,
            head_limit,
            probing,
        });
        let deferred = self
            .short_read
            .map(|t| self.short_interval.saturating_sub(t.elapsed()))
            .filter(|left| due && !left.is_zero());
        if deferred.is_some() {
            read_due_in = deferred;
        } else if due {
            self.read_head(head_limit).await;
        }
        // While the breaker is open, wait out its open time; once it is
        // over, the next delivery is the probe.
        if let Some(wait) = this.view().breaker.retry_after().filter(|w| !w.is_zero()) {
            self.pacing.until = Some(clock::after(Instant::now(), wait));
        } else if self.pacing.until.is_none_or(|t| t <= Instant::now()) {
            // What the check above found, when the cache was not read again.
            let start = match ready.take() {
                Some(start) => Ok(start),
                None => {
                    this.spool
                        .eligible(&self.cache, cache_end(&self.cache), &self.in_flight, take)
                }
            };
            let Ok(start) = start else {
                self.reload = true;
                return None;
            };
            self.start(start, free, per, probing);
        }
        Some(Turn {
            window,
            read_due_in,
        })
    }

    /// Whether what was read can fill the slots (the entries to start), or
    /// the head must be read again (`true`).
    fn ready_in_cache(&self, want: Want) -> (Option<Vec<Entry>>, bool) {
        // Reading the head again helps only once the cache is stale: a
        // window of it delivered since the read (the head moved on), or the
        // read is old. Entries that wait on a key in flight are read back
        // the same, so a cache of one hot step's versions was read again
        // after every delivery, and the reads — not the deliveries — set
        // the drain's pace. (Checked below only while more is stored than
        // the cache holds.) A read that took all there was misses what was
        // stored since.
        let waiting_in_cache = self
            .cache
            .iter()
            .any(|e| !self.in_flight.contains_key(&e.id));
        let stale = !waiting_in_cache
            || self.read_len < want.head_limit
            || self.read_len.saturating_sub(self.cache.len()) >= want.wanted
            || self.read_at.elapsed() >= STALE_CACHE;
        if self.reload {
            return (None, true);
        }
        let stored = self.this.spool.store().waiting();
        if stored > self.cache.len() as u64 {
            match self.this.spool.eligible(
                &self.cache,
                cache_end(&self.cache),
                &self.in_flight,
                want.take,
            ) {
                // Probes count only entries no earlier probe failed with,
                // and look for more in the queue only while what was read
                // is less than a probes' read: past that they start over
                // from the head.
                Ok(start)
                    if start.len() >= want.free
                        && (!want.probing
                            || self.cache.len() >= want.head_limit
                            || self.pacing.unprobed(&start) >= want.free) =>
                {
                    return (Some(start), false);
                }
                Ok(start) if !stale => return (Some(start), false),
                _ => return (None, true),
            }
        }
        (None, false)
    }

    /// Read the head of the queue into the cache.
    async fn read_head(&mut self, head_limit: usize) {
        let spool = &self.this.spool;
        spool.head_read_starts();
        spool.inner.metrics.queue_reads.inc();
        match spool.store().head(head_limit, HEAD_MAX_BYTES).await {
            Ok(batch) => {
                self.short_read =
                    (!self.short_interval.is_zero() && batch.len() < head_limit).then(Instant::now);
                self.read_at = Instant::now();
                self.read_len = batch.len();
                self.cache = batch;
                self.reload = false;
            }
            Err(e) => {
                tracing::error!(error = %e, "spool: cannot read the queue");
                self.pacing.until = Some(clock::after(Instant::now(), Duration::from_secs(1)));
            }
        }
    }

    /// Start deliveries of `start` in up to `free` slots.
    fn start(&mut self, mut start: Vec<Entry>, free: usize, per: usize, probing: bool) {
        if probing {
            // Every entry at hand failed a probe: round again.
            if self.pacing.unprobed(&start) == 0 {
                self.pacing.probed.clear();
            } else {
                start.retain(|e| !self.pacing.probed.contains(&e.id));
            }
        }
        for batch in self.this.group(start, free, per, &self.solo) {
            let ids: Vec<i64> = batch.iter().map(|(e, _)| e.id).collect();
            for (e, _) in &batch {
                self.in_flight.insert(e.id, e.keys.clone());
            }
            let this = self.this.clone();
            let handle = self
                .tasks
                .spawn(async move { this.deliver_batch(batch).await });
            self.task_entries.insert(handle.id(), ids);
        }
    }

    /// How long to wait for whatever can change what is eligible: a
    /// delivery ending, a new commit or a live write letting go of its
    /// keys, the pause ending, or (with nothing to do) the resync period.
    fn nap(&self, turn: &Turn) -> Duration {
        match self.pacing.until {
            Some(t) if t > Instant::now() => t - Instant::now(),
            // A read of the head put off: come back when it is due.
            _ if let Some(left) = turn.read_due_in => left,
            _ if self.cache.is_empty() && self.in_flight.is_empty() => IDLE_RESYNC,
            _ if self.tasks.len() >= turn.window => IDLE_RESYNC,
            // Entries wait on keys held elsewhere: look again soon.
            _ => Duration::from_millis(50),
        }
    }

    /// Take every delivery that has ended, so one read of the queue refills
    /// all the freed slots.
    fn settle(&mut self, first: Result<(tokio::task::Id, Finished), tokio::task::JoinError>) {
        let mut next = Some(first);
        while let Some(result) = next {
            let (task, finished) = match result {
                Ok((task, f)) => (task, f),
                Err(e) => (e.id(), Finished::of(&[], Done::Retry(Duration::ZERO))),
            };
            let ids = self.task_entries.remove(&task).unwrap_or_default();
            for id in &ids {
                self.in_flight.remove(id);
            }
            if matches!(finished.done, Done::Retry(_))
                && self.this.view().breaker.probe_limit().is_some()
            {
                self.pacing.probed.extend(ids);
            }
            if !finished.gone.is_empty() {
                let gone: HashSet<i64> = finished.gone.iter().copied().collect();
                self.cache.retain(|e| !gone.contains(&e.id));
                for id in &gone {
                    self.solo.remove(id);
                }
            }
            self.solo.extend(finished.solo);
            self.this.pace(&mut self.pacing, finished.done);
            next = self.tasks.try_join_next_with_id();
        }
    }
}

/// The id of the last entry read (what a commit behind it would follow).
fn cache_end(cache: &[Entry]) -> i64 {
    cache.last().map_or(-1, |e| e.id)
}
