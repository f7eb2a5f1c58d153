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
//! `spool.replay_concurrency`); an entry that shares a step with an earlier
//! one waits for it, so each step's versions still arrive in order.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Request, Response};
use tokio::sync::watch;
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
use crate::route::{ErrorFormat, Routes};

/// How often the worker re-reads the store when idle (it is also woken on
/// every commit); this catches changes made by the operator CLI.
const IDLE_RESYNC: Duration = Duration::from_secs(5);

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
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let this = Arc::new(self);
        let mut backoff = this.backoff.0;
        let mut last_resync = Instant::now();
        loop {
            if *shutdown.borrow() {
                break;
            }
            let batch = match this.spool.store().head(this.concurrency * 2).await {
                Ok(b) => b,
                Err(e) => {
                    tracing::error!(error = %e, "spool: cannot read the queue");
                    if sleep_or_stop(&mut shutdown, Duration::from_secs(1)).await {
                        break;
                    }
                    continue;
                }
            };
            if last_resync.elapsed() >= IDLE_RESYNC {
                this.spool.resync().await;
                last_resync = Instant::now();
            }
            if batch.is_empty() {
                tokio::select! {
                    () = this.spool.inner.wake.notified() => {}
                    () = tokio::time::sleep(IDLE_RESYNC) => {}
                    () = shutdown_requested(&mut shutdown) => break,
                }
                continue;
            }
            if let Some(wait) = this.breaker.retry_after() {
                if sleep_or_stop(&mut shutdown, wait).await {
                    break;
                }
            }
            let round = this.ready_prefix(batch);
            if round.is_empty() {
                // The head waits for an older live write of the same steps.
                tokio::select! {
                    () = this.spool.inner.wake.notified() => {}
                    () = tokio::time::sleep(Duration::from_millis(50)) => {}
                    () = shutdown_requested(&mut shutdown) => break,
                }
                continue;
            }
            // Entries in a round touch disjoint steps, so they may be
            // delivered at once; each round finishes (deliveries and their
            // commits) before the next starts or the worker stops.
            let mut tasks = tokio::task::JoinSet::new();
            for entry in round {
                let this = this.clone();
                tasks.spawn(async move { this.deliver_and_commit(entry).await });
            }
            let mut wait: Option<Duration> = None;
            let mut failed = false;
            while let Some(res) = tasks.join_next().await {
                if let Ok(Some(w)) = res {
                    failed = true;
                    wait = Some(wait.map_or(w, |x: Duration| x.max(w)));
                }
            }
            if failed {
                let delay = wait.unwrap_or(backoff).max(this.backoff.0).max(backoff);
                backoff = (backoff * 2).min(this.backoff.1);
                if sleep_or_stop(&mut shutdown, delay).await {
                    break;
                }
            } else {
                backoff = this.backoff.0;
            }
        }
        tracing::info!("spool worker stopped");
    }

    /// The longest prefix of `batch` (in replay order) whose entries touch
    /// disjoint steps, none held by a live write: safe to deliver at once.
    fn ready_prefix(&self, batch: Vec<Entry>) -> Vec<Entry> {
        let mut seen = std::collections::HashSet::new();
        let mut out = Vec::new();
        for entry in batch {
            if out.len() >= self.concurrency
                || self.spool.held(&entry.step_ids)
                || entry.step_ids.iter().any(|id| seen.contains(id))
            {
                break;
            }
            seen.extend(entry.step_ids.iter().cloned());
            out.push(entry);
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
        let body = Bytes::from(entry.body.clone());
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
            step_ids: entry.step_ids.clone().into_boxed_slice(),
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

/// Sleep for `d`; true if shutdown was requested meanwhile.
async fn sleep_or_stop(shutdown: &mut watch::Receiver<bool>, d: Duration) -> bool {
    tokio::select! {
        () = tokio::time::sleep(d) => false,
        () = shutdown_requested(shutdown) => true,
    }
}
