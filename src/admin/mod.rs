//! The admin listener, on its own port (loopback by default).
//!
//! Endpoints:
//! - `GET /healthz` — 200 while the process is alive.
//! - `GET /readyz`  — 200 once start-up has finished (spool opened and
//!   checked, replay worker running, listeners bound) and until shutdown
//!   starts; 503 with the phase (`starting`, `opening_spool`, `draining`)
//!   otherwise. The admin port answers from the first moment of start-up,
//!   so a startup probe sees the phase while the spool is checked.
//! - `GET /metrics` — Prometheus text exposition.
//! - `GET /breaker` — the circuit breaker's state as JSON.
//! - `GET /spool`   — the spool's depth, age and counters as JSON.
//! - `GET /config`  — the effective configuration (secrets redacted), TOML,
//!   headed by the generation in force.
//! - `GET /`        — the status page ([`status`]).
//! - `POST /reload` — read the config file and environment again and apply
//!   them; answers the [`ReloadReport`] as JSON (200 applied, 422 invalid,
//!   503 while starting or when the sidecar has no file to reload).
//!
//! It is served by hyper directly, not through the proxy stack: it must
//! answer even when the stack is saturated or the upstream is down. Every
//! request first passes [`guard`]: a foreign `Host` name (DNS rebinding)
//! gets 421 `host_not_allowed`, a cross-site `POST` 403 `cross_site_request`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

mod guard;
mod reads;
mod reload;
pub mod status;

use crate::breaker::Breaker;
use crate::generation::{ReloadReport, ReloadSender};
use crate::metrics::{Metrics, RouteMetrics};
use crate::retry::RetryBudget;
use crate::shutdown::shutdown_requested;
use crate::spool::Spool;

/// Where the sidecar is in its life, as `/readyz` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum Phase {
    /// Building the stack.
    Starting = 0,
    /// Opening and checking the spool store.
    OpeningSpool = 1,
    /// Serving traffic.
    Serving = 2,
    /// Shutdown started.
    Draining = 3,
}

impl Phase {
    /// Stable label.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Starting => "starting",
            Phase::OpeningSpool => "opening_spool",
            Phase::Serving => "serving",
            Phase::Draining => "draining",
        }
    }

    fn from_u8(v: u8) -> Phase {
        match v {
            1 => Phase::OpeningSpool,
            2 => Phase::Serving,
            3 => Phase::Draining,
            _ => Phase::Starting,
        }
    }
}

/// What the admin endpoints read.
#[derive(Debug)]
pub struct AdminState {
    /// All metrics.
    pub metrics: Arc<Metrics>,
    /// The spool, once open (when a route spools).
    pub spool: OnceLock<Spool>,
    /// The current [`Phase`].
    pub phase: AtomicU8,
    /// The generation in force, once the first one is built.
    pub view: arc_swap::ArcSwapOption<AdminView>,
    /// Outcomes and recent errors for the status page.
    pub board: Arc<status::StatusBoard>,
    /// Where `POST /reload` queues its request.
    pub reload: Option<ReloadSender>,
}

/// One config generation as the admin endpoints show it.
#[derive(Debug)]
pub struct AdminView {
    /// The generation's number.
    pub generation: u64,
    /// The effective config as TOML, secrets redacted.
    pub config_toml: String,
    /// The breaker in force.
    pub breaker: Breaker,
    /// The retry budget in force (its balance is exported at scrape time).
    pub budget: Arc<RetryBudget>,
    /// The routes' metric handles.
    pub routes: Arc<[Arc<RouteMetrics>]>,
    /// The upstream's origin.
    pub upstream: String,
    /// How the last reload ended.
    pub last_reload: Option<ReloadReport>,
    /// `admin.allowed_hosts`.
    pub allowed_hosts: Arc<[String]>,
}

impl AdminState {
    /// Move to `phase`.
    pub fn set_phase(&self, phase: Phase) {
        self.phase.store(phase as u8, Ordering::Release);
    }

    /// Move to `phase` unless already past it (a reload that opens the
    /// spool must not take readiness back).
    pub fn advance_phase(&self, phase: Phase) {
        self.phase.fetch_max(phase as u8, Ordering::AcqRel);
    }

    /// The current phase.
    pub fn phase(&self) -> Phase {
        Phase::from_u8(self.phase.load(Ordering::Acquire))
    }
}

fn json(status: StatusCode, value: &serde_json::Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(value.to_string())));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

fn text(content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

/// The admin port's routing table. The guard runs first on every request;
/// `/reload` is the one path that takes `POST`, every other one is a read.
async fn handle(state: Arc<AdminState>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let allowed = state.view.load().as_ref().map(|v| v.allowed_hosts.clone());
    if let Some(refused) = guard::refuse(
        req.method(),
        req.headers(),
        allowed.as_deref().unwrap_or_default(),
    ) {
        return refused;
    }
    let (method, path) = (req.method(), req.uri().path());
    if path == "/reload" {
        if method != Method::POST {
            return json(
                StatusCode::METHOD_NOT_ALLOWED,
                &serde_json::json!({"error": "use POST /reload"}),
            );
        }
        return reload::reload(&state).await;
    }
    if method != Method::GET && method != Method::HEAD {
        return json(
            StatusCode::METHOD_NOT_ALLOWED,
            &serde_json::json!({"error": "only GET is supported (and POST /reload)"}),
        );
    }
    // One generation for the whole answer, even if a reload lands meanwhile.
    let view = state.view.load_full();
    let view = view.as_deref();
    match path {
        "/healthz" => reads::healthz(),
        "/readyz" => reads::readyz(&state),
        "/metrics" => reads::metrics(&state, view).await,
        "/breaker" => reads::breaker(&state, view),
        "/spool" => reads::spool(&state).await,
        "/config" => reads::config(&state, view),
        "/" => reads::status_page(&state, view).await,
        _ => reads::not_found(),
    }
}

/// Serve the admin endpoints until `shutdown` fires.
pub async fn serve(
    listener: TcpListener,
    state: Arc<AdminState>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = shutdown_requested(&mut shutdown) => return,
        };
        let state = state.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(handle(state, req).await) }
            });
            let result = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(5))
                .serve_connection(TokioIo::new(stream), svc)
                .await;
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "admin connection error");
            }
        });
    }
}

/// `healthcheck`: GET `path` (`/healthz`, or `/readyz` with `--ready`) on
/// the admin address; `Ok` on a 200.
pub async fn probe(addr: SocketAddr, path: &str, timeout: Duration) -> Result<(), String> {
    let target = if addr.ip().is_unspecified() {
        match addr {
            SocketAddr::V4(_) => SocketAddr::from(([127, 0, 0, 1], addr.port())),
            SocketAddr::V6(_) => SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, addr.port())),
        }
    } else {
        addr
    };
    let attempt = async {
        let stream = TcpStream::connect(target)
            .await
            .map_err(|e| format!("connect {target}: {e}"))?;
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let req = Request::get(path)
            .header("host", target.to_string())
            .body(Empty::<Bytes>::new())
            .map_err(|e| e.to_string())?;
        let resp = send.send_request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status();
        let _ = resp.into_body().collect().await;
        if status == StatusCode::OK {
            Ok(())
        } else {
            Err(format!("{path} answered {status}"))
        }
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .map_err(|_| format!("no answer from {target} within {timeout:?}"))?
}
