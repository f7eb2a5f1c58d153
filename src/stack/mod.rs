//! The one place where the layers are put in order.
//!
//! A request goes down this list and its response comes back up it. Every
//! layer says why it stands where it does.

use std::sync::Arc;

use http::header::{AUTHORIZATION, COOKIE, HeaderName, PROXY_AUTHORIZATION};
use http::{HeaderValue, Request, Response};
use hyper::body::Incoming;
use tower::retry::RetryLayer;
use tower::{Service, ServiceBuilder};
use tower_http::request_id::{
    MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};
use tower_http::sensitive_headers::SetSensitiveRequestHeadersLayer;

pub mod per_route;

pub use per_route::PerRoute;

use crate::body::{RequestBody, ResponseBody};
use crate::breaker::{Breaker, BreakerGateLayer};
use crate::classify::Classifier;
use crate::classify::layer::ClassifyLayer;
use crate::edge::{AccessBody, EdgeLayer, EdgeShared, X_REQUEST_ID};
use crate::error::Error;
use crate::metrics::{Metrics, RouteMetrics};
use crate::proxy::client::Upstream;
use crate::proxy::forward::{PrepareLayer, PrepareShared};
use crate::retry::{RetryBudget, RetryPolicy};
use crate::route::Route;
use crate::slot::UpstreamSlotLayer;
use crate::spool::drain::ReplayService;
use crate::spool::{Spool, SpoolLayer};
use crate::timeout::TimeoutLayer;

/// Everything the layers of one config generation share across
/// connections. Built once per generation; the pieces whose settings did
/// not change (breaker, budget, upstream pool, slots, spool) are the same
/// values as in the generation before.
#[derive(Debug, Clone)]
pub struct Shared {
    /// Routing and request rewrite.
    pub prepare: Arc<PrepareShared>,
    /// Access log and request metrics.
    pub edge: Arc<EdgeShared>,
    /// Outcome classification.
    pub classifier: Arc<Classifier>,
    /// The upstream's breaker.
    pub breaker: Breaker,
    /// The retry budget shared by all requests.
    pub budget: Arc<RetryBudget>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// The upstream client.
    pub upstream: Upstream,
    /// The spool, when a route uses it.
    pub spool: Option<Spool>,
    /// Bounds requests in flight to the upstream, across all connections.
    pub upstream_slots: Arc<tokio::sync::Semaphore>,
    /// Header names whose values are secret.
    pub sensitive: Arc<[HeaderName]>,
}

/// Request ids: a random per-process prefix and a counter. Unique without a
/// random draw or a lock per request.
#[derive(Debug, Clone, Copy, Default)]
pub struct FastRequestId;

impl MakeRequestId for FastRequestId {
    fn make_request_id<B>(&mut self, _: &Request<B>) -> Option<RequestId> {
        use std::sync::OnceLock;
        use std::sync::atomic::{AtomicU64, Ordering};
        static PREFIX: OnceLock<[u8; 16]> = OnceLock::new();
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let prefix = PREFIX.get_or_init(|| hex16(fastrand::u64(..)));
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        // Hex by hand: `format!` cost more than the rest of the request's
        // edge bookkeeping together.
        let mut id = Vec::with_capacity(32);
        id.extend_from_slice(prefix);
        id.extend_from_slice(&hex16(n));
        HeaderValue::from_maybe_shared(bytes::Bytes::from(id))
            .ok()
            .map(RequestId::new)
    }
}

/// `v` as 16 lowercase hex digits.
fn hex16(v: u64) -> [u8; 16] {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 16];
    for (i, d) in out.iter_mut().enumerate() {
        *d = DIGITS[((v >> (60 - 4 * i)) & 0xf) as usize];
    }
    out
}

/// The credential headers never to print: always these, plus the header the
/// spool replays a key in.
pub fn sensitive_headers(extra: &HeaderName) -> Arc<[HeaderName]> {
    let mut v = vec![
        AUTHORIZATION,
        PROXY_AUTHORIZATION,
        COOKIE,
        HeaderName::from_static("x-api-key"),
    ];
    if !v.contains(extra) {
        v.push(extra.clone());
    }
    v.into()
}

/// The whole stack for one config generation, shared by every connection
/// (the client's address travels in the request as [`ClientIp`]).
///
/// [`ClientIp`]: crate::proxy::forward::ClientIp
pub fn build(
    shared: Shared,
) -> impl Service<
    Request<Incoming>,
    Response = Response<AccessBody>,
    Error = Error,
    Future = impl Send + 'static,
> + Clone
+ Send
+ Sync
+ 'static {
    let parts = shared.delivery_parts();
    ServiceBuilder::new()
        // Mark credentials sensitive before anything can see them, so no
        // Debug print or trace event of a request head can show a key.
        .layer(SetSensitiveRequestHeadersLayer::from_shared(
            shared.sensitive.clone(),
        ))
        // Give every request an id (the client's own if it sent one) before
        // the edge opens the exchange, so every log line carries it...
        .layer(SetRequestIdLayer::new(X_REQUEST_ID.clone(), FastRequestId))
        // ...and return it to the client on every answer, errors included.
        .layer(PropagateRequestIdLayer::new(X_REQUEST_ID.clone()))
        // Outermost of ours: sees every outcome, so it alone turns errors
        // into structured responses and writes the access line and metrics.
        .layer(EdgeLayer::new(shared.edge.clone()))
        // Read the body, parse GraphQL, pick the route, rewrite the head for
        // the one upstream. Everything below knows the route's policy.
        .layer(PrepareLayer::new(shared.prepare.clone()))
        // Hand the request to its route's stack, built with that route's
        // parameters (see [`per_route`]).
        .service(PerRoute::new(shared.routes().map(|(route, metrics)| {
            ServiceBuilder::new()
                // Outside the deadline: a write that cannot be delivered in
                // time is committed locally and acknowledged before the
                // client gives up.
                .layer(SpoolLayer::new(shared.spool.clone(), route.clone()))
                .service(delivery(
                    parts.clone(),
                    route.clone(),
                    metrics.clone(),
                    shared.upstream.clone(),
                ))
        })))
}

/// What the delivery stacks of every route share: one classifier, breaker,
/// retry budget and set of upstream slots per generation.
#[derive(Debug, Clone)]
pub struct DeliveryParts {
    /// Outcome classification.
    pub classifier: Arc<Classifier>,
    /// The upstream's breaker (used by routes with `breaker = true`).
    pub breaker: Breaker,
    /// The retry budget shared by all requests.
    pub budget: Arc<RetryBudget>,
    /// Bounds requests in flight to the upstream.
    pub upstream_slots: Arc<tokio::sync::Semaphore>,
}

impl Shared {
    /// The parts of this generation the delivery stacks share.
    pub fn delivery_parts(&self) -> DeliveryParts {
        DeliveryParts {
            classifier: self.classifier.clone(),
            breaker: self.breaker.clone(),
            budget: self.budget.clone(),
            upstream_slots: self.upstream_slots.clone(),
        }
    }

    /// Each route of this generation with its metric handles, in table
    /// order (a route's index is its position).
    fn routes(&self) -> impl Iterator<Item = (&Arc<Route>, &Arc<RouteMetrics>)> {
        self.prepare
            .routes
            .all()
            .iter()
            .zip(self.prepare.route_metrics.iter())
    }
}

/// The layers that deliver one request of `route` to `upstream`, counting
/// into the route's `metrics`: the part
/// of a route's stack below the spool, shared by live traffic and the
/// spool's replays so both are paced by the same breaker and budget.
/// Generic over the upstream so tests drive this builder over a mock.
pub fn delivery<U>(
    parts: DeliveryParts,
    route: Arc<Route>,
    metrics: Arc<RouteMetrics>,
    upstream: U,
) -> impl Service<
    Request<RequestBody>,
    Response = Response<ResponseBody>,
    Error = Error,
    Future = impl Send + 'static,
> + Clone
+ Send
+ 'static
where
    U: Service<Request<RequestBody>, Response = Response<ResponseBody>, Error = Error>
        + Clone
        + Send
        + 'static,
    U::Future: Send + 'static,
{
    let breaker = route.breaker.then_some(parts.breaker);
    ServiceBuilder::new()
        // One deadline over all attempts and backoff, below the client's own
        // timeout, so the app always gets our answer first.
        .layer(TimeoutLayer::deadline(route.deadline))
        // Inside the deadline, so waiting for a slot counts against it (the
        // wait is in the response future, not in poll_ready, which runs
        // before the deadline's timer exists); outside retry, so a request
        // keeps its slot through its retries. Shared by every connection:
        // it bounds upstream connections.
        .layer(UpstreamSlotLayer::new(parts.upstream_slots))
        // Fail fast while the upstream is known to be down; one admission
        // covers all of a request's attempts (a probe keeps its slot). A
        // route with `breaker = false` has no gate.
        .layer(BreakerGateLayer::new(breaker.clone()))
        // Retry transient failures when safe, paced by backoff, Retry-After
        // and the shared budget; stops early if the breaker opens.
        // A batched write whose answer is partial is retried alias by
        // alias: the aliases the backend settled are not written twice.
        .layer(RetryLayer::new(RetryPolicy::new(
            parts.budget,
            breaker.clone(),
            route.clone(),
            metrics.clone(),
        )))
        // Judge each attempt once, for retry, breaker, metrics and logs;
        // above the per-try timeout so a timeout is judged like any failure.
        .layer(ClassifyLayer::new(parts.classifier, breaker, metrics))
        // Bound one attempt (clamped to the deadline) so a hung upstream
        // costs one try, not the whole request.
        .layer(TimeoutLayer::per_try(route.per_try, route.deadline))
        .service(upstream)
}

/// Every route's [`delivery`] over the upstream client, boxed for the
/// spool's replay worker.
pub fn replay_service(shared: &Shared) -> ReplayService {
    let parts = shared.delivery_parts();
    ReplayService::new(PerRoute::new(shared.routes().map(|(route, metrics)| {
        delivery(
            parts.clone(),
            route.clone(),
            metrics.clone(),
            shared.upstream.clone(),
        )
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_one_prefix_and_a_counter_in_hex() {
        assert_eq!(&hex16(0x0123_4567_89ab_cdef), b"0123456789abcdef");
        assert_eq!(&hex16(u64::MAX), b"ffffffffffffffff");
        let req = Request::new(());
        let ids: Vec<String> = (0..3)
            .map(|_| {
                let id = FastRequestId.make_request_id(&req).unwrap();
                id.header_value().to_str().unwrap().to_string()
            })
            .collect();
        for id in &ids {
            assert_eq!(id.len(), 32);
            assert!(
                id.bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
            );
            assert_eq!(id[..16], ids[0][..16]);
        }
        let n = |id: &str| u64::from_str_radix(&id[16..], 16).unwrap();
        assert!(n(&ids[0]) < n(&ids[1]) && n(&ids[1]) < n(&ids[2]));
    }
}
