//! Config generations: what a reload swaps, and the connection service that
//! reads the generation in force for each request.
//!
//! A generation is the validated config with the stack built from it. The
//! one in force sits in an [`ArcSwap`]: a request loads it once, when it
//! arrives, and keeps that `Arc` until its response is done, so a reload
//! never changes the policy of a request in flight and never touches a
//! connection. `arc-swap` rather than a lock: the load is a few atomic
//! operations and never waits for a reload.

use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};

use arc_swap::ArcSwap;
use http::{Request, Response};
use hyper::body::Incoming;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};
use tower::Service;
use tower::util::Oneshot;

use crate::config::Config;
use crate::edge::AccessBody;
use crate::error::Error;
use crate::proxy::forward::ClientIp;
use crate::stack::Shared;

/// One config generation: the config and the stack built from it.
#[derive(Debug)]
pub struct Generation<S> {
    /// 1 at start, +1 per applied reload.
    pub number: u64,
    /// The config in force.
    pub config: Arc<Config>,
    /// The pieces the stack was built from.
    pub shared: Shared,
    /// The whole stack, built once for this generation.
    pub service: S,
}

/// The generation in force, swapped by reloads.
pub type Current<S> = Arc<ArcSwap<Generation<S>>>;

/// The service of one client connection: each request goes through the
/// generation in force when it arrives.
#[derive(Debug)]
pub struct Live<S> {
    current: Current<S>,
    client: Option<ClientIp>,
}

impl<S> Clone for Live<S> {
    fn clone(&self) -> Self {
        Live {
            current: self.current.clone(),
            client: self.client.clone(),
        }
    }
}

impl<S> Live<S> {
    /// For a connection from `peer`.
    pub fn new(current: Current<S>, peer: SocketAddr) -> Self {
        Live {
            current,
            client: ClientIp::of(peer),
        }
    }
}

impl<S> Service<Request<Incoming>> for Live<S>
where
    S: Service<Request<Incoming>, Response = Response<AccessBody>, Error = Error> + Clone,
{
    type Response = Response<AccessBody>;
    type Error = Error;
    type Future = Oneshot<S, Request<Incoming>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Error>> {
        // Readiness belongs to the generation the request will use, which
        // is only known at `call`; `Oneshot` waits for it there.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<Incoming>) -> Self::Future {
        if let Some(ip) = &self.client {
            req.extensions_mut().insert(ip.clone());
        }
        let service = self.current.load().service.clone();
        Oneshot::new(service, req)
    }
}

/// What asked for a reload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    /// SIGHUP.
    Sighup,
    /// `POST /reload` on the admin port.
    Http,
}

/// How a reload ended.
#[derive(Debug, Clone, Serialize)]
pub struct ReloadReport {
    /// `applied` or `invalid`.
    pub result: &'static str,
    /// The generation in force after it.
    pub generation: u64,
    /// What asked for it.
    pub trigger: Trigger,
    /// When it ended, ms since the Unix epoch.
    pub at_ms: i64,
    /// Changed keys that take effect only at the next start.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub restart_needed: Vec<&'static str>,
    /// Why the new config was refused (it names the key).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The key at fault, when one is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

/// A queued reload; `reply` gets its report.
#[derive(Debug)]
pub struct ReloadRequest {
    /// What asked for it.
    pub trigger: Trigger,
    /// Where the report goes (none for a signal).
    pub reply: Option<oneshot::Sender<ReloadReport>>,
}

/// Sends reloads to the one task that applies them, in order. Unbounded:
/// a request is a few bytes, and a reload asked for during a reload must
/// be queued, never dropped.
pub type ReloadSender = mpsc::UnboundedSender<ReloadRequest>;
