//! The app-facing listener: accept, limit, serve, drain.
//!
//! Connections beyond `listen.max_connections` wait in the kernel's backlog
//! (the semaphore is taken before `accept`, so a flood cannot make the
//! sidecar allocate per connection). A client that does not finish its
//! headers within `header_read_timeout`, or sends more than
//! `max_header_bytes` of them, is cut off by hyper. On shutdown the listener
//! closes at once and in-flight requests get the grace period to finish.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tower::Service;

use crate::edge::AccessBody;
use crate::error::Error;
use crate::metrics::Metrics;
use crate::shutdown::shutdown_requested;

/// The listener's settings, checked by the config (`[listen]`). They shape
/// the listening socket and hyper's connection builders, so changing them
/// needs a restart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenParams {
    /// Address to bind.
    pub address: SocketAddr,
    /// Also accept HTTP/2 with prior knowledge (h2c).
    pub http2: bool,
    /// Connections served at once.
    pub max_connections: usize,
    /// A client must finish its request head within this time.
    pub header_read_timeout: Duration,
    /// Largest request head accepted, in bytes (at least 8 KiB).
    pub max_header_bytes: usize,
}

/// Serve `listener` until `shutdown` fires, then drain for up to `grace`.
///
/// `make` builds the service for one connection from the peer's address.
pub async fn serve<M, S>(
    listener: TcpListener,
    cfg: &ListenParams,
    make: M,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
    grace: impl Fn() -> Duration,
) where
    M: Fn(SocketAddr) -> S,
    S: Service<Request<Incoming>, Response = Response<AccessBody>, Error = Error>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let limit = Arc::new(Semaphore::new(cfg.max_connections));
    let graceful = GracefulShutdown::new();
    let max_header = cfg.max_header_bytes;
    let mut h1 = hyper::server::conn::http1::Builder::new();
    // Half-close: a client's FIN after its request is not an abort. The
    // request runs to its answer (delivered or spooled; a write the client
    // stopped waiting for is still worth keeping), and hyper does not read
    // ahead on a busy connection, which would make it allocate a second
    // read buffer while the request still holds the first.
    h1.timer(TokioTimer::new())
        .half_close(true)
        .header_read_timeout(cfg.header_read_timeout)
        .max_header_size(max_header);
    let mut auto = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    auto.http1()
        .timer(TokioTimer::new())
        .half_close(true)
        .header_read_timeout(cfg.header_read_timeout)
        .max_buf_size(max_header.max(8192));
    auto.http2()
        .timer(TokioTimer::new())
        .max_header_list_size(max_header as u32);
    loop {
        let permit = tokio::select! {
            p = limit.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            () = shutdown_requested(&mut shutdown) => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = shutdown_requested(&mut shutdown) => break,
        };
        let _ = stream.set_nodelay(true);
        metrics.connections_total.inc();
        metrics.connections_active.inc();
        let svc = TowerToHyperService::new(make(peer));
        let io = TokioIo::new(stream);
        let active = metrics.connections_active.clone();
        if cfg.http2 {
            let conn = graceful.watch(auto.serve_connection(io, svc).into_owned());
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(%peer, error = %e, "client connection ended with an error");
                }
                active.dec();
                drop(permit);
            });
        } else {
            let conn = graceful.watch(h1.serve_connection(io, svc));
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(%peer, error = %e, "client connection ended with an error");
                }
                active.dec();
                drop(permit);
            });
        }
    }
    drop(listener);
    let grace = grace();
    let open = graceful.count();
    tracing::info!(
        open_connections = open,
        grace_ms = grace.as_millis() as u64,
        "listener closed; draining"
    );
    match tokio::time::timeout(grace, graceful.shutdown()).await {
        Ok(()) => tracing::info!("all client connections finished"),
        Err(_) => tracing::warn!("grace period over with connections still open; closing them"),
    }
}
