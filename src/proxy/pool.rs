//! Connections to the one upstream: kept alive, reused, replaced when closed.
//!
//! Written by hand on top of hyper's connection API (`client::conn`), with
//! hyper-util's TCP connector and hyper-rustls for TLS, rather than using
//! hyper-util's pooled `legacy::Client`. That client is built for any number
//! of origins: it hashes a (scheme, authority) key with SipHash on every
//! checkout and return, records connection info into every response's
//! extensions, moves a 3.7 KB future per request, and spawns a task per
//! request to wait until the connection can take the next one. The sidecar
//! talks to exactly one origin, so the pool is a stack of idle HTTP/1
//! senders (most recently used first) plus one shared HTTP/2 sender. The
//! legacy client was ~6% of the pinned benchmark's profile; with this pool
//! callgrind counts 78.1k instead of 85.0k instructions per request.
//!
//! Behaviour kept from the legacy client: a request that a reused connection
//! refuses before anything was written (it closed while idle) is sent again
//! on another connection, at most twice; idle connections are closed after
//! `upstream.pool_idle_timeout`, at most `upstream.pool_max_idle` are kept;
//! HTTP/1 requests go out in origin form, HTTP/2 in absolute form.
//! Not kept: the legacy client let concurrent requests wait for one HTTP/2
//! connection being opened; here a burst that arrives before the first one
//! is up opens one connection each, keeps the last, and lets the others
//! close once their request is done. (Making them wait would also make
//! them wait, one connect timeout after another, on an upstream that does
//! not answer.)

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use http::uri::{PathAndQuery, Uri};
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::{TrySendError, http1, http2};
use hyper_util::client::legacy::connect::Connection;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::time::Instant;
use tower::Service;

use crate::body::{Lease, RequestBody, Returns};
use crate::error::Error;

pub use crate::error::ConnectError;

/// Reused connections that may refuse a request before sending any of it
/// (closed by the upstream while idle); a fresh connection ends the loop.
const MAX_UNSENT_RESENDS: usize = 2;

/// The pool's settings.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// Idle connections are closed after this long.
    pub idle_timeout: Duration,
    /// At most this many idle HTTP/1 connections are kept.
    pub max_idle: usize,
}

/// Connections to the upstream, shared by every request. Cheap to clone.
#[derive(Clone)]
pub struct Pool<C> {
    inner: Arc<Inner<C>>,
}

impl<C> std::fmt::Debug for Pool<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("origin", &self.inner.origin)
            .field("idle", &self.inner.lock_idle().len())
            .finish()
    }
}

struct Inner<C> {
    connector: C,
    /// `scheme://authority/`: what the connector dials.
    origin: Uri,
    cfg: PoolConfig,
    /// Idle HTTP/1 senders, least recently used first.
    idle: Mutex<Vec<Idle>>,
    /// The HTTP/2 connection, when the upstream negotiated it: one is
    /// enough, it multiplexes.
    h2: Mutex<Option<http2::SendRequest<RequestBody>>>,
    h1_builder: http1::Builder,
    h2_builder: http2::Builder<TokioExecutor>,
    reaper_started: AtomicBool,
}

struct Idle {
    tx: http1::SendRequest<RequestBody>,
    since: Instant,
}

/// A connection to use for one request.
enum Conn {
    H1 {
        tx: http1::SendRequest<RequestBody>,
        reused: bool,
    },
    H2 {
        tx: http2::SendRequest<RequestBody>,
        reused: bool,
    },
}

impl<C> Returns for Inner<C>
where
    C: Send + Sync + 'static,
{
    fn put(self: Arc<Self>, tx: http1::SendRequest<RequestBody>) {
        if tx.is_closed() {
            return;
        }
        if tx.is_ready() {
            self.put_ready(tx);
            return;
        }
        // The connection task has not yet seen the end of the exchange (or
        // the body was abandoned mid-way): wait for it off this path, as
        // the connection is either reusable soon or closing.
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let pool = Arc::downgrade(&self);
        let mut tx = tx;
        rt.spawn(async move {
            if tx.ready().await.is_ok()
                && let Some(pool) = pool.upgrade()
            {
                pool.put_ready(tx);
            }
        });
    }
}

impl<C> Inner<C> {
    fn lock_idle(&self) -> MutexGuard<'_, Vec<Idle>> {
        // A panic while holding the lock cannot leave the Vec inconsistent.
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_h2(&self) -> MutexGuard<'_, Option<http2::SendRequest<RequestBody>>> {
        self.h2.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl<C> Inner<C>
where
    C: Send + Sync + 'static,
{
    fn put_ready(&self, tx: http1::SendRequest<RequestBody>) {
        let now = Instant::now();
        let mut idle = self.lock_idle();
        prune(&mut idle, now, self.cfg.idle_timeout);
        if idle.len() < self.cfg.max_idle {
            idle.push(Idle { tx, since: now });
        }
    }

    /// An open connection, if one is idle: HTTP/2 first, then the most
    /// recently used HTTP/1 connection (its socket is the warmest).
    fn checkout(&self) -> Option<Conn> {
        {
            let mut h2 = self.lock_h2();
            match h2.as_ref() {
                Some(tx) if !tx.is_closed() => {
                    return Some(Conn::H2 {
                        tx: tx.clone(),
                        reused: true,
                    });
                }
                Some(_) => *h2 = None,
                None => {}
            }
        }
        let now = Instant::now();
        let mut idle = self.lock_idle();
        while let Some(Idle { tx, since }) = idle.pop() {
            if tx.is_closed() || now.saturating_duration_since(since) >= self.cfg.idle_timeout {
                continue;
            }
            return Some(Conn::H1 { tx, reused: true });
        }
        None
    }
}

/// Drop idle connections past their idle time (the oldest are first).
fn prune(idle: &mut Vec<Idle>, now: Instant, timeout: Duration) {
    let expired = idle
        .iter()
        .take_while(|i| now.saturating_duration_since(i.since) >= timeout || i.tx.is_closed())
        .count();
    if expired > 0 {
        idle.drain(..expired);
    }
}

/// An I/O stream from the connector.
type ConnectedIo<C> = <C as Service<Uri>>::Response;

impl<C> Pool<C>
where
    C: Service<Uri> + Clone + Send + Sync + 'static,
    C::Response: hyper::rt::Read + hyper::rt::Write + Connection + Unpin + Send + 'static,
    C::Future: Send,
    C::Error: Into<Error>,
{
    /// A pool dialling `origin` (scheme and authority) through `connector`.
    pub fn new(connector: C, origin: Uri, cfg: PoolConfig) -> Self {
        let mut h2_builder = http2::Builder::new(TokioExecutor::new());
        h2_builder.timer(TokioTimer::new());
        Pool {
            inner: Arc::new(Inner {
                connector,
                origin,
                cfg,
                idle: Mutex::new(Vec::new()),
                h2: Mutex::new(None),
                h1_builder: http1::Builder::new(),
                h2_builder,
                reaper_started: AtomicBool::new(false),
            }),
        }
    }

    /// Send `req` on a pooled or new connection. The lease, for HTTP/1,
    /// must live until the response body has been read.
    pub async fn send(
        &self,
        mut req: Request<RequestBody>,
    ) -> Result<(Response<Incoming>, Option<Lease>), Error> {
        let mut resends = 0;
        loop {
            let conn = match self.inner.checkout() {
                Some(conn) => conn,
                // Boxed: the connect path (TCP, TLS, HTTP/2 handshake) is
                // a 6 KB state machine that would otherwise be part of,
                // and copied with, every request's future.
                None => Box::pin(self.connect()).await?,
            };
            let (result, lease, reused) = match conn {
                Conn::H1 { mut tx, reused } => {
                    if let Err(e) = tx.ready().await {
                        if reused {
                            // Closed while idle, before anything was sent.
                            continue;
                        }
                        // A fresh connection the upstream closed at once:
                        // a failure to report, not a reason to dial again.
                        return Err(Box::new(e));
                    }
                    to_origin_form(&mut req);
                    let result = tx.try_send_request(req).await;
                    (result, Some(self.lease(tx)), reused)
                }
                Conn::H2 { mut tx, reused } => {
                    let result = tx.try_send_request(req).await;
                    (result, None, reused)
                }
            };
            match result {
                Ok(resp) => return Ok((resp, lease)),
                Err(e) => {
                    let (error, unsent) = split(e);
                    match unsent {
                        Some(r) if reused && resends < MAX_UNSENT_RESENDS => {
                            resends += 1;
                            tracing::debug!(%error, "pooled connection closed before the request was sent; sending on another");
                            req = r;
                        }
                        _ => return Err(Box::new(error)),
                    }
                }
            }
        }
    }

    fn lease(&self, tx: http1::SendRequest<RequestBody>) -> Lease {
        Lease::new(tx, self.inner.clone())
    }

    async fn connect(&self) -> Result<Conn, Error> {
        self.start_reaper();
        let mut connector = self.inner.connector.clone();
        let io: ConnectedIo<C> = connector
            .call(self.inner.origin.clone())
            .await
            .map_err(|e| connect_error(e.into()))?;
        if io.connected().is_negotiated_h2() {
            let (tx, conn) = self
                .inner
                .h2_builder
                .handshake(io)
                .await
                .map_err(|e| connect_error(Box::new(e)))?;
            drive(conn, "upstream HTTP/2 connection ended");
            *self.inner.lock_h2() = Some(tx.clone());
            Ok(Conn::H2 { tx, reused: false })
        } else {
            let (tx, conn) = self
                .inner
                .h1_builder
                .handshake(io)
                .await
                .map_err(|e| connect_error(Box::new(e)))?;
            drive(conn, "upstream connection ended");
            Ok(Conn::H1 { tx, reused: false })
        }
    }

    /// Close idle connections on time even when no request comes to notice.
    fn start_reaper(&self) {
        if self.inner.reaper_started.swap(true, Ordering::Relaxed) {
            return;
        }
        let weak = Arc::downgrade(&self.inner);
        let every = (self.inner.cfg.idle_timeout / 2).max(Duration::from_millis(100));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(inner) = weak.upgrade() else { return };
                let timeout = inner.cfg.idle_timeout;
                prune(&mut inner.lock_idle(), Instant::now(), timeout);
            }
        });
    }
}

fn connect_error(e: Error) -> Error {
    Box::new(ConnectError(e))
}

/// Run a connection's I/O on its own task until it closes.
fn drive<F>(conn: F, ended: &'static str)
where
    F: std::future::Future<Output = hyper::Result<()>> + Send + 'static,
{
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "{ended}");
        }
    });
}

fn split(e: TrySendError<Request<RequestBody>>) -> (hyper::Error, Option<Request<RequestBody>>) {
    let mut e = e;
    let unsent = e.take_message();
    (e.into_error(), unsent)
}

/// HTTP/1 request lines carry the path and query only.
fn to_origin_form(req: &mut Request<RequestBody>) {
    if req.uri().scheme().is_none() && req.uri().authority().is_none() {
        return;
    }
    let pq = req
        .uri()
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    *req.uri_mut() = Uri::from(pq);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http1_requests_use_the_origin_form() {
        let mut req = Request::new(RequestBody::full(bytes::Bytes::new()));
        *req.uri_mut() = "https://backend.example.com:8443/api/graphql?x=1&y=2"
            .parse()
            .unwrap();
        to_origin_form(&mut req);
        assert_eq!(req.uri().to_string(), "/api/graphql?x=1&y=2");
        assert!(req.uri().authority().is_none());

        *req.uri_mut() = "http://backend.example.com".parse().unwrap();
        to_origin_form(&mut req);
        assert_eq!(req.uri().to_string(), "/");
    }
}
