//! The read-only admin endpoints, one handler each.
//!
//! Each answers from [`AdminState`] and changes nothing the proxy decides
//! on (`/metrics` only copies scrape-time figures into gauges), which is
//! why `GET` and `HEAD` share them. The one endpoint that acts,
//! `POST /reload`, is [`super::reload`]; which path goes to which handler
//! is decided in one place, the routing table in [`super`].

use bytes::Bytes;
use http::header::CACHE_CONTROL;
use http::{HeaderValue, Response, StatusCode};
use http_body_util::Full;

use super::{AdminState, AdminView, Phase, json, status, text};
use crate::spool::Spool;

/// 503 for an endpoint that needs the first generation, before it is built.
fn starting(state: &AdminState) -> Response<Full<Bytes>> {
    json(
        StatusCode::SERVICE_UNAVAILABLE,
        &serde_json::json!({"error": "starting", "phase": state.phase().as_str()}),
    )
}

/// `GET /healthz`: the process answers, so it is alive.
pub(super) fn healthz() -> Response<Full<Bytes>> {
    json(StatusCode::OK, &serde_json::json!({"status": "ok"}))
}

/// `GET /readyz`: serving, and the replay worker runs: a sidecar that
/// stores writes nobody delivers is not ready.
pub(super) fn readyz(state: &AdminState) -> Response<Full<Bytes>> {
    let phase = state.phase();
    let worker = state.spool.get().map(Spool::worker_health);
    let worker_down = worker.as_ref().filter(|w| !w.is_running());
    let ready = phase == Phase::Serving && worker_down.is_none();
    let mut body = serde_json::json!({"ready": ready, "phase": phase.as_str()});
    if let Some(w) = worker_down {
        body["reason"] = "spool_worker_down".into();
        body["worker"] = serde_json::to_value(w).unwrap_or_default();
    }
    json(
        if ready {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        },
        &body,
    )
}

/// `GET /metrics`: the gauges only known at scrape time are set first.
pub(super) async fn metrics(state: &AdminState, view: Option<&AdminView>) -> Response<Full<Bytes>> {
    if let Some(v) = view {
        state.metrics.budget_balance.set(v.budget.balance());
    }
    if let Some(spool) = state.spool.get() {
        spool.refresh_metrics().await;
    }
    text(
        "application/openmetrics-text; version=1.0.0; charset=utf-8",
        state.metrics.encode(),
    )
}

/// `GET /breaker`: the breaker in force.
pub(super) fn breaker(state: &AdminState, view: Option<&AdminView>) -> Response<Full<Bytes>> {
    match view {
        Some(v) => json(
            StatusCode::OK,
            &serde_json::to_value(v.breaker.snapshot()).unwrap_or_default(),
        ),
        None => starting(state),
    }
}

/// `GET /spool`: the spool's figures; "not open yet" while starting is
/// told apart from "no route spools".
pub(super) async fn spool(state: &AdminState) -> Response<Full<Bytes>> {
    match state.spool.get() {
        Some(spool) => match spool.stats().await {
            Ok(stats) => json(
                StatusCode::OK,
                &serde_json::to_value(stats).unwrap_or_default(),
            ),
            Err(e) => json(
                StatusCode::SERVICE_UNAVAILABLE,
                &serde_json::json!({"error": e.to_string()}),
            ),
        },
        None if state.phase() < Phase::Serving => starting(state),
        None => json(
            StatusCode::NOT_FOUND,
            &serde_json::json!({"error": "no route spools; the spool is not open"}),
        ),
    }
}

/// `GET /config`: the effective config, headed by its generation.
pub(super) fn config(state: &AdminState, view: Option<&AdminView>) -> Response<Full<Bytes>> {
    match view {
        Some(v) => text(
            "application/toml; charset=utf-8",
            format!("# generation {}\n{}", v.generation, v.config_toml),
        ),
        None => starting(state),
    }
}

/// `GET /`: the status page, never cached (it refreshes itself).
pub(super) async fn status_page(
    state: &AdminState,
    view: Option<&AdminView>,
) -> Response<Full<Bytes>> {
    let Some(v) = view else {
        return starting(state);
    };
    let spool = match state.spool.get() {
        Some(s) => Some(s.stats().await.map_err(|e| e.to_string())),
        None => None,
    };
    let page = status::render(&status::PageInput {
        board: &state.board,
        breaker: v.breaker.snapshot(),
        spool,
        routes: &v.routes,
        generation: v.generation,
        last_reload: v.last_reload.clone(),
        upstream: v.upstream.clone(),
        phase: state.phase().as_str(),
    });
    let mut r = text("text/html; charset=utf-8", page);
    r.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// Any other path: 404 with the list of endpoints.
pub(super) fn not_found() -> Response<Full<Bytes>> {
    json(
        StatusCode::NOT_FOUND,
        &serde_json::json!({
            "error": "not found",
            "endpoints": ["/", "/healthz", "/readyz", "/metrics", "/breaker", "/spool", "/config", "POST /reload"],
        }),
    )
}
