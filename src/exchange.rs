//! The per-request record every layer shares.
//!
//! One `Arc<Exchange>` rides in the request's extensions from the edge of
//! the stack to the upstream client. Layers write what they learn (route,
//! attempts, the last class, why a retry was refused, whether the write was
//! spooled) and the edge reads it once for the response headers, the access
//! line and the metrics. Atomics keep the hot path free of locks; only the
//! routing decision, written once, uses a `OnceLock`.

use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use http::HeaderValue;
use tokio::time::Instant;

use crate::failure::Class;
use crate::graphql::Operation;
use crate::route::{ErrorFormat, Route};

pub use crate::failure::NotRetried;

/// What routing decided for the request.
#[derive(Debug)]
pub struct Routed {
    /// The matched route.
    pub route: Arc<Route>,
    /// The route's metric handles (kept by name across reloads).
    pub metrics: Arc<crate::metrics::RouteMetrics>,
    /// The GraphQL operation, for GraphQL requests.
    pub operation: Option<Arc<Operation>>,
    /// Whether the request may be sent twice.
    pub idempotent: bool,
    /// Whether the body is kept so the request can be replayed.
    pub replayable: bool,
    /// How the sidecar's own errors are written.
    pub error_format: ErrorFormat,
    /// When every attempt must be over.
    pub deadline: Instant,
    /// Request body size, when known.
    pub body_bytes: Option<u64>,
    /// Ids the write touches (spooling routes only; ordering uses them).
    pub keys: Box<[String]>,
}

/// The shared per-request record.
#[derive(Debug)]
pub struct Exchange {
    /// The request id (taken from the client or generated).
    pub request_id: HeaderValue,
    /// When the sidecar received the request head.
    pub started: Instant,
    routed: OnceLock<Routed>,
    attempts: AtomicU32,
    not_retried: AtomicU8,
    spooled: AtomicBool,
    upstream_us: AtomicU64,
    last_class: Mutex<Option<Class>>,
}

impl Exchange {
    /// A new record for a request that just arrived.
    pub fn new(request_id: HeaderValue) -> Arc<Self> {
        Arc::new(Exchange {
            request_id,
            started: Instant::now(),
            routed: OnceLock::new(),
            attempts: AtomicU32::new(0),
            not_retried: AtomicU8::new(0),
            spooled: AtomicBool::new(false),
            upstream_us: AtomicU64::new(u64::MAX),
            last_class: Mutex::new(None),
        })
    }

    /// Record the routing decision (once).
    pub fn set_routed(&self, routed: Routed) {
        let _ = self.routed.set(routed);
    }

    /// The routing decision, once made.
    pub fn routed(&self) -> Option<&Routed> {
        self.routed.get()
    }

    /// Count one more attempt and return the new total.
    pub fn start_attempt(&self) -> u32 {
        self.attempts.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Attempts made so far.
    pub fn attempts(&self) -> u32 {
        self.attempts.load(Ordering::Relaxed)
    }

    /// Record the outcome of the latest attempt.
    pub fn record_attempt(&self, class: Class, upstream: Option<Duration>) {
        if let Ok(mut slot) = self.last_class.lock() {
            *slot = Some(class);
        }
        if let Some(d) = upstream {
            self.upstream_us.store(
                d.as_micros().min(u64::MAX as u128 - 1) as u64,
                Ordering::Relaxed,
            );
        }
    }

    /// The class of the latest attempt.
    pub fn last_class(&self) -> Option<Class> {
        self.last_class.lock().ok().and_then(|c| *c)
    }

    /// Time to the upstream's response head on the latest answered attempt.
    pub fn upstream_latency(&self) -> Option<Duration> {
        match self.upstream_us.load(Ordering::Relaxed) {
            u64::MAX => None,
            us => Some(Duration::from_micros(us)),
        }
    }

    /// Record why the request was not retried.
    pub fn set_not_retried(&self, reason: NotRetried) {
        self.not_retried.store(reason as u8, Ordering::Relaxed);
    }

    /// Why the request was not retried, if it failed.
    pub fn not_retried(&self) -> Option<NotRetried> {
        NotRetried::from_u8(self.not_retried.load(Ordering::Relaxed))
    }

    /// Mark the request as committed to the spool.
    pub fn set_spooled(&self) {
        self.spooled.store(true, Ordering::Relaxed);
    }

    /// Whether the request was committed to the spool.
    pub fn spooled(&self) -> bool {
        self.spooled.load(Ordering::Relaxed)
    }
}

/// The exchange of a request, from its extensions.
pub fn of<B>(req: &http::Request<B>) -> Option<&Arc<Exchange>> {
    req.extensions().get::<Arc<Exchange>>()
}
