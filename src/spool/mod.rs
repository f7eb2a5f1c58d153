//! Store-and-forward for idempotent writes: nothing acknowledged is lost.
//!
//! When a write on a spooling route cannot be delivered now for a transient
//! reason (breaker open, retries exhausted on a transient class, deadline
//! about to pass), [`SpoolLayer`] commits it to the durable [`store`] and
//! answers the app with the protocol-correct success the SDK expects (see
//! [`record::spooled_response`]) — only after the commit. The [`drain`]
//! worker then delivers entries in order through the same breaker and retry
//! budget as live traffic; delivered entries are deleted, permanently
//! refused ones move to a dead-letter table with the backend's answer.
//!
//! Order: every write gets a ticket on arrival and entries replay in ticket
//! order per key. A write's keys name what it writes (`step:<id>`,
//! `thread:<id>`; see [`crate::route::Route::order_keys`]); the key `*`
//! marks a barrier (a delete of a thread, say), ordered against every other
//! write. While a route has entries waiting, its new writes are appended
//! behind them instead of going ahead; a write that shares a key with a
//! live write still in flight also goes behind it, and the worker waits for
//! that earlier write to finish (delivered, or spooled ahead). So an older
//! version of a step or thread never overwrites a newer one upstream.
//! Delivery is at least once; the backend's upsert by step id makes a
//! repeat harmless.
//!
//! No anchor codebase has a spool; the shape borrows from tower's `buffer`
//! (a worker fed by a channel, `Closed` when it dies) and mini-redis (a
//! background task stopped by a shutdown signal, drained on exit).

pub mod cli;
pub mod drain;
pub mod record;
pub mod store;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderName, Request, Response};
use serde::Serialize;
use tokio::sync::Notify;
use tower::{Layer, Service, ServiceExt};

use crate::body::{RequestBody, ResponseBody};
use crate::classify::Class;
use crate::config::SpoolFile;
use crate::error::{Error, SpoolFull, SpoolUnavailable};
use crate::exchange;
use crate::metrics::SpoolMetrics;
use crate::route::SpoolMode;
use store::{NewEntry, Store, StoreError};

type FastMap<K, V> = HashMap<K, V, foldhash::fast::FixedState>;

#[derive(Debug, Default)]
struct OrderState {
    next_ticket: u64,
    /// Hash of a step id → ticket of the live (in-flight) write that holds
    /// it. A hash collision only makes an unrelated write wait its turn.
    live: FastMap<u64, u64>,
    /// Route → entries committed and waiting.
    stored: FastMap<Arc<str>, u64>,
    /// Route → writes being committed right now.
    reserved: FastMap<Arc<str>, u64>,
}

impl OrderState {
    /// Whether a write with these (hashed) keys conflicts with a live one:
    /// it shares a key, or one of the two is a barrier.
    fn conflicts(&self, keys: &[u64]) -> bool {
        if self.live.is_empty() {
            return false;
        }
        let barrier = barrier_key();
        self.live.contains_key(&barrier)
            || keys
                .iter()
                .any(|k| *k == barrier || self.live.contains_key(k))
    }

    fn waiting(&self, route: &str) -> u64 {
        self.stored.get(route).copied().unwrap_or(0)
            + self.reserved.get(route).copied().unwrap_or(0)
    }
}

#[derive(Debug)]
struct Inner {
    store: Store,
    cfg: SpoolFile,
    /// Headers not written to disk (credentials, when not stored).
    skip: Vec<HeaderName>,
    order: Mutex<OrderState>,
    /// Wakes the worker: something was stored, or a live write finished.
    wake: Notify,
    metrics: SpoolMetrics,
}

/// A cheap handle to the open spool.
#[derive(Debug, Clone)]
pub struct Spool {
    inner: Arc<Inner>,
}

/// The spool's state, for the admin endpoint.
#[derive(Debug, Clone, Serialize)]
pub struct SpoolStatus {
    /// The store file.
    pub path: String,
    /// Counts read from the store.
    #[serde(flatten)]
    pub stats: store::Stats,
    /// Writes committed since start.
    pub committed: u64,
    /// Group commits since start.
    pub commit_batches: u64,
    /// Writes refused because the spool was full, since start.
    pub refused_full: u64,
    /// Capacity in entries.
    pub max_entries: u64,
    /// Capacity in bytes.
    pub max_bytes: u64,
}

/// Whether a write goes to the upstream now or behind the spool.
#[derive(Debug)]
pub enum Admit {
    /// Send it; hold the guard until it is done.
    Live(LiveGuard),
    /// Spool it at this ticket.
    Behind(u64),
}

/// Held by a live write on a spooling route; releases its step ids.
#[derive(Debug)]
pub struct LiveGuard {
    spool: Spool,
    ticket: u64,
    ids: Vec<u64>,
}

fn barrier_key() -> u64 {
    id_key(crate::route::BARRIER_KEY)
}

fn id_key(id: &str) -> u64 {
    use std::hash::BuildHasher;
    foldhash::fast::FixedState::default().hash_one(id)
}

impl Drop for LiveGuard {
    fn drop(&mut self) {
        if let Ok(mut o) = self.spool.inner.order.lock() {
            for id in &self.ids {
                if o.live.get(id) == Some(&self.ticket) {
                    o.live.remove(id);
                }
            }
        }
        // The worker waits on live writes only while entries wait; with an
        // empty queue, waking it for every live write would cost a query.
        if self
            .spool
            .inner
            .store
            .totals
            .entries
            .load(Ordering::Relaxed)
            > 0
        {
            self.spool.inner.wake.notify_one();
        }
    }
}

/// A write ready to be spooled.
#[derive(Debug, Clone)]
pub struct Write {
    /// Route name.
    pub route: Arc<str>,
    /// Original request id.
    pub request_id: String,
    /// Method.
    pub method: String,
    /// Path and query.
    pub path: String,
    /// Encoded headers (credentials left out unless stored).
    pub headers: Vec<u8>,
    /// Body.
    pub body: Bytes,
    /// Step ids.
    pub ids: Vec<String>,
}

impl Spool {
    /// Open the store at `spool.path` (see [`Store::open`]).
    pub fn open(
        cfg: &SpoolFile,
        sensitive: &[HeaderName],
        metrics: SpoolMetrics,
        quarantine_corrupt: bool,
    ) -> Result<Spool, StoreError> {
        let store = Store::open(&cfg.path, quarantine_corrupt)?;
        let next_ticket = store.totals.max_ticket.load(Ordering::Relaxed).max(0) as u64 + 1;
        let mut skip = vec![http::header::HOST];
        if !cfg.store_credentials {
            skip.extend(sensitive.iter().cloned());
        }
        let spool = Spool {
            inner: Arc::new(Inner {
                store,
                cfg: cfg.clone(),
                skip,
                order: Mutex::new(OrderState {
                    next_ticket,
                    ..OrderState::default()
                }),
                wake: Notify::new(),
                metrics,
            }),
        };
        spool.update_gauges();
        Ok(spool)
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// Decide where a write on `route` touching `ids` goes.
    pub fn admit(&self, route: &str, ids: &[String], write_behind: bool) -> Admit {
        let Ok(mut o) = self.inner.order.lock() else {
            return Admit::Behind(0);
        };
        // Entries the operator requeued may have moved the end of the queue.
        let end = self
            .inner
            .store
            .totals
            .max_ticket
            .load(Ordering::Relaxed)
            .max(0) as u64;
        let ticket = o.next_ticket.max(end + 1);
        o.next_ticket = ticket + 1;
        let keys: Vec<u64> = ids.iter().map(|id| id_key(id)).collect();
        let behind = write_behind || o.waiting(route) > 0 || o.conflicts(&keys);
        if behind {
            return Admit::Behind(ticket);
        }
        for k in &keys {
            o.live.insert(*k, ticket);
        }
        let ids = keys;
        Admit::Live(LiveGuard {
            spool: self.clone(),
            ticket,
            ids,
        })
    }

    /// Whether a write with these keys must wait for a live write.
    fn held(&self, ids: &[String]) -> bool {
        let keys: Vec<u64> = ids.iter().map(|id| id_key(id)).collect();
        self.inner
            .order
            .lock()
            .map(|o| o.conflicts(&keys))
            .unwrap_or(false)
    }

    fn adjust(&self, route: &Arc<str>, reserved: i64, stored: i64) {
        if let Ok(mut guard) = self.inner.order.lock() {
            let o = &mut *guard;
            for (map, d) in [(&mut o.reserved, reserved), (&mut o.stored, stored)] {
                let v = map.entry(route.clone()).or_insert(0);
                *v = v.saturating_add_signed(d);
            }
        }
    }

    /// Commit `write` at `ticket`; returns once it is durable.
    pub async fn enqueue(&self, write: Write, ticket: u64) -> Result<(), Error> {
        let inner = &self.inner;
        let totals = &inner.store.totals;
        let entries = totals.entries.load(Ordering::Relaxed);
        let bytes = totals.bytes.load(Ordering::Relaxed);
        if entries >= inner.cfg.max_entries
            || bytes + write.body.len() as u64 > inner.cfg.max_bytes.as_u64()
        {
            inner.metrics.full.inc();
            tracing::warn!(
                entries,
                bytes,
                max_entries = inner.cfg.max_entries,
                max_bytes = inner.cfg.max_bytes.as_u64(),
                "spool full; write refused"
            );
            return Err(Box::new(SpoolFull(format!(
                "{entries} entries, {bytes} bytes waiting"
            ))));
        }
        let route = write.route.clone();
        self.adjust(&route, 1, 0);
        let result = inner
            .store
            .append(NewEntry {
                ticket,
                route: write.route.to_string(),
                request_id: write.request_id,
                method: write.method,
                path: write.path,
                headers: write.headers,
                body: write.body,
                keys: write.ids,
            })
            .await;
        match result {
            Ok(()) => {
                self.adjust(&route, -1, 1);
                inner.metrics.committed.inc();
                inner
                    .metrics
                    .commit_batches
                    .inner()
                    .store(totals.batches.load(Ordering::Relaxed), Ordering::Relaxed);
                self.update_gauges();
                inner.wake.notify_one();
                Ok(())
            }
            Err(e) => {
                self.adjust(&route, -1, 0);
                Err(Box::new(SpoolUnavailable(e.to_string())))
            }
        }
    }

    /// An entry of `route` left the queue (delivered or dead-lettered).
    fn removed(&self, route: &str) {
        let route: Arc<str> = route.into();
        self.adjust(&route, 0, -1);
        self.update_gauges();
    }

    fn update_gauges(&self) {
        let t = &self.inner.store.totals;
        let m = &self.inner.metrics;
        m.depth.set(t.entries.load(Ordering::Relaxed) as i64);
        m.bytes.set(t.bytes.load(Ordering::Relaxed) as i64);
        m.dead_letters.set(t.dead.load(Ordering::Relaxed) as i64);
    }

    /// Refresh the gauges that need a query (oldest entry's age).
    pub async fn refresh_metrics(&self) {
        self.update_gauges();
        let oldest = self
            .inner
            .store
            .read(|c| {
                Ok(c.query_row(
                    "SELECT created_ms FROM entries ORDER BY id LIMIT 1",
                    [],
                    |r| r.get::<_, i64>(0),
                )
                .ok())
            })
            .await
            .ok()
            .flatten();
        let age = oldest.map_or(0.0, |o| (store::now_ms() - o).max(0) as f64 / 1000.0);
        self.inner.metrics.oldest_age_seconds.set(age);
    }

    /// The spool's state.
    pub async fn stats(&self) -> Result<SpoolStatus, StoreError> {
        let stats = self.inner.store.stats().await?;
        let m = &self.inner.metrics;
        Ok(SpoolStatus {
            path: self.inner.store.path().display().to_string(),
            stats,
            committed: m.committed.get(),
            commit_batches: self.inner.store.totals.batches.load(Ordering::Relaxed),
            refused_full: m.full.get(),
            max_entries: self.inner.cfg.max_entries,
            max_bytes: self.inner.cfg.max_bytes.as_u64(),
        })
    }

    /// Re-read per-route waiting counts from the store (the operator CLI may
    /// have changed it while the sidecar runs).
    async fn resync(&self) {
        if self.inner.store.refresh_totals().await.is_err() {
            return;
        }
        if let Ok(stats) = self.inner.store.stats().await {
            if let Ok(mut o) = self.inner.order.lock() {
                o.stored = stats
                    .per_route
                    .into_iter()
                    .map(|(k, v)| (Arc::from(k.as_str()), v))
                    .collect();
            }
        }
        self.update_gauges();
    }

    /// The write as it will be stored, from the parts of its request.
    fn write_of(&self, head: &Head, route: &Arc<str>, body: Bytes, ids: &[String]) -> Write {
        Write {
            route: route.clone(),
            request_id: head.request_id.to_str().unwrap_or("-").to_string(),
            method: head.method.as_str().to_string(),
            path: head
                .uri
                .path_and_query()
                .map_or("/", |p| p.as_str())
                .to_string(),
            headers: record::encode_headers(&head.headers, &self.inner.skip),
            body,
            ids: ids.to_vec(),
        }
    }
}

/// What a spooled copy of a request needs from its head: cheap clones,
/// encoded for the store only if the write is actually spooled.
struct Head {
    method: http::Method,
    uri: http::Uri,
    headers: http::HeaderMap,
    request_id: http::HeaderValue,
}

/// Adds [`SpoolService`] to a stack.
#[derive(Debug, Clone)]
pub struct SpoolLayer {
    spool: Option<Spool>,
}

impl SpoolLayer {
    /// Spool through `spool` (no-op when `None`).
    pub fn new(spool: Option<Spool>) -> Self {
        SpoolLayer { spool }
    }
}

impl<S> Layer<S> for SpoolLayer {
    type Service = SpoolService<S>;
    fn layer(&self, inner: S) -> SpoolService<S> {
        SpoolService {
            inner,
            spool: self.spool.clone(),
        }
    }
}

/// See the module documentation.
#[derive(Debug, Clone)]
pub struct SpoolService<S> {
    inner: S,
    spool: Option<Spool>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = Result<T, Error>> + Send>>;

pin_project_lite::pin_project! {
    /// Response future of [`SpoolService`]: the inner future untouched on
    /// routes that do not spool.
    pub struct ResponseFuture<F> {
        #[pin]
        state: State<F>,
    }
}

pin_project_lite::pin_project! {
    #[project = StateProj]
    enum State<F> {
        Passthrough { #[pin] future: F },
        Spooling { future: BoxFuture<Response<ResponseBody>> },
    }
}

impl<F> std::fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("spool::ResponseFuture")
    }
}

impl<F> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<ResponseBody>, Error>>,
{
    type Output = Result<Response<ResponseBody>, Error>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Passthrough { future } => future.poll(cx),
            StateProj::Spooling { future } => future.as_mut().poll(cx),
        }
    }
}

// === impl SpoolService ===

impl<S> Service<Request<RequestBody>> for SpoolService<S>
where
    S: Service<Request<RequestBody>, Response = Response<ResponseBody>, Error = Error>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<ResponseBody>;
    type Error = Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<RequestBody>) -> Self::Future {
        let spools = exchange::of(&req)
            .and_then(|e| e.routed())
            .is_some_and(|r| r.route.spools() && r.operation.is_some());
        let spool = match (&self.spool, spools) {
            (Some(s), true) => s.clone(),
            _ => {
                return ResponseFuture {
                    state: State::Passthrough {
                        future: self.inner.call(req),
                    },
                };
            }
        };
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        ResponseFuture {
            state: State::Spooling {
                future: Box::pin(spool_call(spool, inner, req)),
            },
        }
    }
}

// A plain fn around an `async move` block rather than an `async fn`: an
// async fn keeps its arguments twice in its state (as captures and as
// locals), and this state is built and moved for every spooling-route write.
#[allow(clippy::manual_async_fn)]
fn spool_call<S>(
    spool: Spool,
    mut inner: S,
    req: Request<RequestBody>,
) -> impl Future<Output = Result<Response<ResponseBody>, Error>>
where
    S: Service<Request<RequestBody>, Response = Response<ResponseBody>, Error = Error>,
{
    async move {
        let ex = exchange::of(&req).cloned().ok_or("spool: no exchange")?;
        let routed = ex.routed().ok_or("spool: request not routed")?;
        let op = routed
            .operation
            .clone()
            .ok_or("spool: not a GraphQL request")?;
        let Some(body) = req.body().full_bytes() else {
            // GraphQL bodies are always read whole; nothing to keep otherwise.
            return inner.ready().await?.call(req).await;
        };
        let route = routed.route.clone();
        let head = Head {
            method: req.method().clone(),
            uri: req.uri().clone(),
            headers: req.headers().clone(),
            request_id: ex.request_id.clone(),
        };
        match spool.admit(
            &route.name,
            &routed.keys,
            route.mode == SpoolMode::WriteBehind,
        ) {
            Admit::Behind(ticket) => {
                let body_copy = body.clone();
                let write = spool.write_of(&head, &route.name, body, &routed.keys);
                // Boxed: the enqueue state would otherwise widen every live
                // write's future, and that future is moved on each call.
                Box::pin(spool.enqueue(write, ticket)).await?;
                ex.set_spooled();
                Ok(record::spooled_response(&op, &body_copy))
            }
            Admit::Live(guard) => {
                let result = inner.ready().await?.call(req).await;
                let class = match &result {
                    Ok(r) => r.extensions().get::<Class>().copied().unwrap_or(Class::OK),
                    Err(e) => Class::of_error(e),
                };
                if !class.is_transient() {
                    return result;
                }
                // Spooled at its own (earlier) ticket: anything that touched the
                // same steps meanwhile went behind it.
                let ticket = guard.ticket;
                let body_copy = body.clone();
                let write = spool.write_of(&head, &route.name, body, &routed.keys);
                let stored = Box::pin(spool.enqueue(write, ticket)).await;
                drop(guard);
                stored?;
                ex.set_spooled();
                tracing::debug!(
                    request_id = ?ex.request_id,
                    kind = class.kind.as_str(),
                    "write spooled after a transient failure"
                );
                Ok(record::spooled_response(&op, &body_copy))
            }
        }
    }
}
