//! The replay worker: delivers spooled writes in order.
//!
//! It sends each entry through the same layers as live traffic (deadline,
//! breaker gate, retry with the shared budget, classification, per-try
//! timeout), so it is paced by the same breaker — while the breaker is open
//! it waits, and when the open time is over its next delivery is the
//! half-open probe — and by the same budget. A delivered entry is deleted; a
//! transient failure leaves it at the head and backs off (doubling from
//! `spool.replay_backoff_base` to `replay_backoff_max`); a permanent failure
//! moves it to the dead-letter table with the backend's answer, the class
//! and the attempt count. On shutdown it stops between entries: a delivery
//! in progress finishes (bounded by the route's deadline) and its result is
//! committed before the worker exits.
//!
//! Entries that touch disjoint steps are delivered concurrently (up to
//! `spool.replay_concurrency`, as a sliding window); an entry that shares a
//! step with an earlier one waits for it, so each step's versions still
//! arrive in order.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use http::{HeaderName, HeaderValue, Request, Response};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tower::util::BoxCloneSyncService;
use tower::{Service, ServiceExt};

use super::Spool;
use super::record::decode_headers;
use super::store::{DeadInfo, Entry};
use crate::body::{RequestBody, ResponseBody};
use crate::breaker::Breaker;
use crate::classify::{Class, Kind, Verdict};
use crate::error::Error;
use crate::exchange::{Exchange, Routed};
use crate::graphql;
use crate::proxy::forward::Target;
use crate::proxy::server::shutdown_requested;
use crate::route::{BARRIER_KEY, ErrorFormat, Routes};

/// How often the worker re-reads the store when idle (it is also woken on
/// every commit); this catches changes made by the operator CLI.
const IDLE_RESYNC: Duration = Duration::from_secs(5);

/// The most body bytes the worker reads ahead of its deliveries.
const HEAD_MAX_BYTES: usize = 8 * 1024 * 1024;

/// The service replays go through (the stack below the spool layer).
pub type ReplayService = BoxCloneSyncService<Request<RequestBody>, Response<ResponseBody>, Error>;

/// What the worker needs.
#[derive(Debug)]
pub struct Drain {
    /// The spool.
    pub spool: Spool,
    /// The layers below the spool, over the upstream client.
    pub service: ReplayService,
    /// The route table (entries are re-routed by name).
    pub routes: Routes,
    /// The upstream.
    pub target: Arc<Target>,
    /// The breaker, to wait out an open state.
    pub breaker: Breaker,
    /// Credential sent on replay when credentials are not stored.
    pub api_key: Option<(HeaderName, HeaderValue)>,
    /// First and largest backoff between failed deliveries.
    pub backoff: (Duration, Duration),
    /// Deliveries in flight at once (entries touching disjoint steps).
    pub concurrency: usize,
}

enum Outcome {
    Delivered,
    Transient {
        error: String,
        wait: Option<Duration>,
    },
    Permanent(DeadInfo),
}

impl Drain {
    /// Run until `shutdown` turns true.
    ///
    /// A sliding window, not rounds: up to `concurrency` deliveries are in
    /// flight, and a slot freed by one starts the next eligible entry at
    /// once, so one slow delivery (a hung attempt, a long `Retry-After`)
    /// holds its own slot and the entries behind it on the same steps, not
    /// the whole queue.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let this = Arc::new(self);
        let mut backoff = this.backoff.0;
        // After a failed delivery no new one starts before this instant
        // (deliveries in flight go on): the backend is likely struggling.
        let mut paused_until: Option<Instant> = None;
        let mut last_resync = Instant::now();
        let mut tasks: JoinSet<Option<Duration>> = JoinSet::new();
        let mut in_flight: HashMap<i64, Vec<String>> = HashMap::new();
        let mut task_entry: HashMap<tokio::task::Id, i64> = HashMap::new();
        // The head of the queue, read in batches: one read serves many
        // deliveries. Reading per delivery kept a read transaction open
        // almost all the time, so checkpoints could never restart the WAL
        // and it grew without bound while a large queue drained.
        let mut cache: Vec<Entry> = Vec::new();
        let mut reload = true;
        loop {
            if *shutdown.borrow() {
                break;
            }
            if last_resync.elapsed() >= IDLE_RESYNC {
                // Also picks up what the operator CLI changed in the file.
                this.spool.resync().await;
                last_resync = Instant::now();
                reload = true;
            }
            let paused = paused_until.is_some_and(|t| t > Instant::now());
            if !paused && in_flight.len() < this.concurrency {
                let candidates = cache.len().saturating_sub(in_flight.len());
                let stored = this.spool.store().totals.entries.load(Ordering::Relaxed);
                if reload || (candidates < this.concurrency && stored > cache.len() as u64) {
                    match this
                        .spool
                        .store()
                        .head(this.concurrency * 16, HEAD_MAX_BYTES)
                        .await
                    {
                        Ok(batch) => {
                            cache = batch;
                            reload = false;
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "spool: cannot read the queue");
                            paused_until = Some(Instant::now() + Duration::from_secs(1));
                        }
                    }
                }
                // While the breaker is open, wait out its open time; once it
                // is over, the next delivery is the probe.
                if let Some(wait) = this.breaker.retry_after().filter(|w| !w.is_zero()) {
                    paused_until = Some(Instant::now() + wait);
                } else if paused_until.is_none_or(|t| t <= Instant::now()) {
                    for entry in this.eligible(&cache, &in_flight) {
                        in_flight.insert(entry.id, entry.keys.clone());
                        let id = entry.id;
                        let this = this.clone();
                        let handle =
                            tasks.spawn(async move { this.deliver_and_commit(entry).await });
                        task_entry.insert(handle.id(), id);
                    }
                }
            }
            let idle_queue = cache.is_empty();
            // Wait for whatever can change what is eligible: a delivery
            // ending, a new commit or a live write letting go of its steps,
            // the pause ending, or (with nothing to do) the resync period.
            let nap = match paused_until {
                Some(t) if t > Instant::now() => t - Instant::now(),
                _ if idle_queue && in_flight.is_empty() => IDLE_RESYNC,
                _ if in_flight.len() >= this.concurrency => IDLE_RESYNC,
                // Entries wait on steps held elsewhere: look again soon.
                _ => Duration::from_millis(50),
            };
            tokio::select! {
                Some(first) = tasks.join_next_with_id(), if !tasks.is_empty() => {
                    // Take every delivery that has ended, so one read of the
                    // queue refills all the freed slots.
                    let mut done = Some(first);
                    while let Some(result) = done {
                        let (task, failed) = match result {
                            Ok((task, wait)) => (task, wait),
                            Err(e) => (e.id(), Some(Duration::ZERO)),
                        };
                        let entry = task_entry.remove(&task);
                        if let Some(id) = entry {
                            in_flight.remove(&id);
                            if failed.is_none() {
                                // Delivered or dead-lettered: gone from the store.
                                cache.retain(|e| e.id != id);
                            }
                        }
                        match failed {
                            Some(wait) => {
                                let now = Instant::now();
                                let until = now + wait.max(backoff);
                                // Failures of deliveries that ran side by side
                                // are one event: back off further once per pause.
                                if paused_until.is_none_or(|t| t <= now) {
                                    backoff = (backoff * 2).min(this.backoff.1);
                                }
                                paused_until = Some(paused_until.map_or(until, |t| t.max(until)));
                            }
                            None => backoff = this.backoff.0,
                        }
                        done = tasks.try_join_next_with_id();
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

    /// The entries of `batch` (in replay order) to start now: not in
    /// flight, sharing no key with an earlier entry still waiting or in
    /// flight, nor with a live write — so each key's versions arrive in
    /// order — up to the free slots. A barrier (key `*`) starts only when
    /// nothing is ahead of it, and nothing behind it starts before it ends.
    fn eligible(&self, batch: &[Entry], in_flight: &HashMap<i64, Vec<String>>) -> Vec<Entry> {
        let mut seen: HashSet<&str> = in_flight.values().flatten().map(String::as_str).collect();
        let mut barrier_ahead = seen.contains(BARRIER_KEY);
        let mut out = Vec::new();
        let free = self.concurrency.saturating_sub(in_flight.len());
        for entry in batch {
            if out.len() >= free || barrier_ahead {
                break;
            }
            if in_flight.contains_key(&entry.id) {
                continue;
            }
            let barrier = entry.keys.iter().any(|k| k == BARRIER_KEY);
            let blocked = self.spool.held(&entry.keys)
                || if barrier {
                    !seen.is_empty() || !out.is_empty()
                } else {
                    entry.keys.iter().any(|id| seen.contains(id.as_str()))
                };
            seen.extend(entry.keys.iter().map(String::as_str));
            barrier_ahead = barrier;
            if !blocked {
                out.push(entry.clone());
            }
        }
        out
    }

    /// Deliver one entry and commit the result. Returns the wait asked for
    /// when the delivery failed transiently (`Some(ZERO)` when none).
    async fn deliver_and_commit(&self, entry: Entry) -> Option<Duration> {
        let outcome = self.deliver(&entry).await;
        let metrics = &self.spool.inner.metrics;
        let store = self.spool.store();
        match outcome {
            Outcome::Delivered => {
                if let Err(e) = store.delivered(entry.id).await {
                    tracing::error!(error = %e, entry = entry.id, "spool: cannot delete a delivered entry; it will be sent again");
                    return Some(Duration::ZERO);
                }
                metrics.replay_delivered.inc();
                self.spool.removed(&entry.route);
                tracing::info!(
                    target: "spool",
                    entry = entry.id,
                    request_id = %entry.request_id,
                    route = %entry.route,
                    attempts = entry.attempts + 1,
                    "spooled write delivered"
                );
                None
            }
            Outcome::Permanent(info) => {
                tracing::warn!(
                    target: "spool",
                    entry = entry.id,
                    request_id = %entry.request_id,
                    route = %entry.route,
                    kind = %info.kind,
                    status = info.status,
                    reason = %info.reason,
                    "spooled write refused by the backend; moved to dead letters"
                );
                if let Err(e) = store.dead_letter(entry.id, info).await {
                    tracing::error!(error = %e, entry = entry.id, "spool: cannot dead-letter an entry");
                    return Some(Duration::ZERO);
                }
                metrics.replay_dead_lettered.inc();
                self.spool.removed(&entry.route);
                None
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
                Some(wait.unwrap_or(Duration::ZERO))
            }
        }
    }

    fn request(&self, entry: &Entry) -> Result<(Request<RequestBody>, Arc<Exchange>), String> {
        let body = entry.body.clone();
        let op = graphql::operation_of(&body).ok();
        let method =
            http::Method::from_bytes(entry.method.as_bytes()).map_err(|e| e.to_string())?;
        let path = entry.path.split('?').next().unwrap_or("/");
        let route = self
            .routes
            .all()
            .iter()
            .find(|r| *r.name == *entry.route)
            .cloned()
            .unwrap_or_else(|| self.routes.find(&method, path, op.as_deref()).clone());
        let mut headers = decode_headers(&entry.headers);
        headers.insert(http::header::HOST, self.target.host().clone());
        if let Some((name, value)) = &self.api_key {
            headers.insert(name.clone(), value.clone());
        }
        let request_id = HeaderValue::from_str(&entry.request_id)
            .unwrap_or_else(|_| HeaderValue::from_static("-"));
        let ex = Exchange::new(request_id);
        ex.set_routed(Routed {
            deadline: ex.started + route.deadline,
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
        *req.uri_mut() = self
            .target
            .uri_for(&entry.path)
            .map_err(|e| e.to_string())?;
        *req.headers_mut() = headers;
        req.extensions_mut().insert(ex.clone());
        Ok((req, ex))
    }

    async fn deliver(&self, entry: &Entry) -> Outcome {
        let (req, ex) = match self.request(entry) {
            Ok(r) => r,
            Err(reason) => {
                return Outcome::Permanent(DeadInfo {
                    class: "permanent".into(),
                    kind: "bad_request".into(),
                    status: None,
                    response: None,
                    reason: format!("cannot rebuild the request: {reason}"),
                });
            }
        };
        let mut service = self.service.clone();
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
                        Outcome::Permanent(DeadInfo {
                            class: class.verdict.as_str().into(),
                            kind: class.kind.as_str().into(),
                            status: Some(status.as_u16()),
                            response,
                            reason: format!("backend answered {status} ({})", class.kind.as_str()),
                        })
                    }
                }
            }
            Err(e) => {
                let class = Class::of_error(&e);
                if class.verdict == Verdict::Permanent {
                    Outcome::Permanent(DeadInfo {
                        class: class.verdict.as_str().into(),
                        kind: class.kind.as_str().into(),
                        status: None,
                        response: None,
                        reason: e.to_string(),
                    })
                } else {
                    let wait = if class.kind == Kind::CircuitOpen {
                        self.breaker.retry_after()
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
