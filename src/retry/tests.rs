//! A route's delivery stack, built by the builder the binary uses
//! ([`crate::stack::delivery`]) over a mock upstream, with paused time:
//! deadlines and `Retry-After` are checked to the instant, and the breaker
//! is met where the builder puts it.

use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use tokio::time::Instant;
use tower::{Service, ServiceExt};

use super::RetryBudget;
use crate::body::{RequestBody, ResponseBody};
use crate::breaker::Breaker;
use crate::classify::Classifier;
use crate::config::{Config, Overrides};
use crate::error::Error;
use crate::exchange::{Exchange, NotRetried, Routed};
use crate::metrics::Metrics;
use crate::route::Routes;

type Mock = tower_test::mock::Mock<Request<RequestBody>, Response<ResponseBody>>;
type Handle = tower_test::mock::Handle<Request<RequestBody>, Response<ResponseBody>>;

struct Rig {
    svc: tower::util::BoxCloneService<Request<RequestBody>, Response<ResponseBody>, Error>,
    handle: Handle,
    routes: Routes,
    route_metrics: Arc<[Arc<crate::metrics::RouteMetrics>]>,
}

fn rig(timeouts: &str, retry: &str) -> Rig {
    rig_with(timeouts, retry, "")
}

/// [`rig`] with more config (whole sections) after `[retry]`.
fn rig_with(timeouts: &str, retry: &str, more: &str) -> Rig {
    let text = format!(
        "[upstream]\nurl = \"http://127.0.0.1:9\"\n[timeouts]\n{timeouts}\n[retry]\njitter = 0.0\n{retry}\n{more}\n[[routes]]\nname = \"steps\"\nidempotent = true\n"
    );
    let cfg = Config::from_toml_str(&text, std::path::Path::new("t"), &[], &Overrides::default())
        .unwrap();
    let routes = Routes::new(cfg.routes.clone());
    let metrics = Metrics::new();
    let route_metrics = metrics.route_table(routes.all());
    let breaker = Breaker::new(cfg.breaker.clone(), metrics.breaker.clone());
    let budget = Arc::new(RetryBudget::new(&crate::retry::BudgetParams {
        window: Duration::from_secs(10),
        min_per_sec: 100,
        ratio: 1.0,
    }));
    let (mock, handle): (Mock, Handle) = tower_test::mock::pair();
    let classifier = Arc::new(Classifier::new(&cfg.classify));
    // The builder the binary uses, over the mock upstream.
    let parts = crate::stack::DeliveryParts {
        classifier,
        breaker,
        budget,
        upstream_slots: Arc::new(tokio::sync::Semaphore::new(64)),
    };
    let route = routes.all()[0].clone();
    let svc = crate::stack::delivery(
        parts,
        route.clone(),
        route_metrics[route.index].clone(),
        mock,
    );
    Rig {
        svc: tower::util::BoxCloneService::new(svc),
        handle,
        routes,
        route_metrics,
    }
}

fn request(rig: &Rig) -> (Request<RequestBody>, Arc<Exchange>) {
    request_on(&rig.routes, &rig.route_metrics)
}

/// A request on the first of `routes`, routed as prepare does.
fn request_on(
    routes: &Routes,
    route_metrics: &[Arc<crate::metrics::RouteMetrics>],
) -> (Request<RequestBody>, Arc<Exchange>) {
    let ex = Exchange::new(http::HeaderValue::from_static("test"));
    let route = routes.all()[0].clone();
    ex.set_routed(Routed {
        deadline: ex.started + route.deadline,
        metrics: route_metrics[route.index].clone(),
        idempotent: true,
        replayable: true,
        error_format: crate::route::ErrorFormat::Problem,
        operation: None,
        body_bytes: Some(2),
        keys: Box::default(),
        route,
    });
    let mut req = Request::post("http://127.0.0.1:9/x")
        .body(RequestBody::full(bytes::Bytes::from_static(b"{}")))
        .unwrap();
    req.extensions_mut().insert(ex.clone());
    (req, ex)
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn hanging_upstream_is_answered_exactly_at_the_deadline() {
    let mut rig = rig("per_try = \"3s\"\ndeadline = \"8500ms\"", "");
    let (req, ex) = request(&rig);
    let mut handle = rig.handle;
    let arrivals = tokio::spawn(async move {
        let mut held = Vec::new();
        let mut at = Vec::new();
        while let Some((_req, send)) = handle.next_request().await {
            at.push(Instant::now());
            held.push(send); // never answered
        }
        at
    });
    let started = Instant::now();
    let out = rig.svc.ready().await.unwrap().call(req).await;
    let took = started.elapsed();
    assert!(out.is_err());
    assert_eq!(
        took,
        Duration::from_millis(8500),
        "answered at the deadline, not after"
    );
    // Attempts at 0, 3.05 s and 6.15 s (backoff 50 ms, then 100 ms); the
    // third is clamped to the deadline.
    assert_eq!(ex.attempts(), 3);
    assert_eq!(ex.not_retried(), Some(NotRetried::Deadline));
    drop(rig.svc);
    let at = arrivals.await.unwrap();
    let offsets: Vec<_> = at.iter().map(|t| (*t - started).as_millis()).collect();
    assert_eq!(offsets, [0, 3050, 6150]);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn retry_after_is_waited_for_exactly() {
    let mut rig = rig("per_try = \"1s\"\ndeadline = \"8s\"", "");
    let (req, ex) = request(&rig);
    let mut handle = rig.handle;
    let server = tokio::spawn(async move {
        let mut at = Vec::new();
        let mut n = 0;
        while let Some((_req, send)) = handle.next_request().await {
            at.push(Instant::now());
            n += 1;
            let resp = if n == 1 {
                Response::builder()
                    .status(503)
                    .header("retry-after", "3")
                    .body(ResponseBody::empty())
                    .unwrap()
            } else {
                Response::new(ResponseBody::empty())
            };
            send.send_response(resp);
        }
        at
    });
    let started = Instant::now();
    let resp = rig.svc.ready().await.unwrap().call(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(ex.attempts(), 2);
    drop(rig.svc);
    let at = server.await.unwrap();
    assert_eq!(at[1] - at[0], Duration::from_secs(3), "not a moment early");
    assert_eq!(started.elapsed(), Duration::from_secs(3));
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn backoff_doubles_between_attempts_up_to_the_cap() {
    let mut rig = rig(
        "per_try = \"1s\"\ndeadline = \"8s\"",
        "max_attempts = 4\nbackoff_base = \"100ms\"\nbackoff_max = \"250ms\"",
    );
    let (req, ex) = request(&rig);
    let mut handle = rig.handle;
    let server = tokio::spawn(async move {
        let mut at = Vec::new();
        while let Some((_req, send)) = handle.next_request().await {
            at.push(Instant::now());
            send.send_response(
                Response::builder()
                    .status(503)
                    .body(ResponseBody::empty())
                    .unwrap(),
            );
        }
        at
    });
    let started = Instant::now();
    let resp = rig.svc.ready().await.unwrap().call(req).await.unwrap();
    assert_eq!(
        resp.status(),
        503,
        "the backend's answer after the last try"
    );
    assert_eq!(ex.not_retried(), Some(NotRetried::MaxAttempts));
    drop(rig.svc);
    let at = server.await.unwrap();
    let offsets: Vec<_> = at.iter().map(|t| (*t - started).as_millis()).collect();
    assert_eq!(offsets, [0, 100, 300, 550]);
}

/// The breaker, as the builder places it: transient failures the classify
/// layer judged open it, an open breaker refuses with `circuit_open`
/// before the upstream sees anything, and after `open_for` a probe that
/// succeeds closes it again.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn the_breaker_opens_on_judged_failures_refuses_before_the_upstream_and_closes_on_a_probe() {
    let Rig {
        mut svc,
        mut handle,
        routes,
        route_metrics,
    } = rig_with(
        "per_try = \"1s\"\ndeadline = \"2s\"",
        "max_attempts = 1",
        "[breaker]\nconsecutive_failures = 2\nmin_calls = 100\nopen_for = \"5s\"\nprobes = 1",
    );
    let seen = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = seen.clone();
    let server = tokio::spawn(async move {
        while let Some((_req, send)) = handle.next_request().await {
            let n = counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            // Two failures, then the backend is back.
            let status = if n < 2 { 503 } else { 200 };
            send.send_response(
                Response::builder()
                    .status(status)
                    .body(ResponseBody::empty())
                    .unwrap(),
            );
        }
    });
    let seen_now = || seen.load(std::sync::atomic::Ordering::SeqCst);
    for _ in 0..2 {
        let (req, _) = request_on(&routes, &route_metrics);
        let resp = svc.ready().await.unwrap().call(req).await.unwrap();
        assert_eq!(resp.status(), 503);
    }
    assert_eq!(seen_now(), 2);
    let (req, ex) = request_on(&routes, &route_metrics);
    let err = svc
        .ready()
        .await
        .unwrap()
        .call(req)
        .await
        .expect_err("refused while open");
    assert_eq!(
        crate::classify::Class::of_error(&err).kind,
        crate::failure::Kind::CircuitOpen
    );
    assert_eq!(seen_now(), 2, "the upstream saw nothing of it");
    assert_eq!(ex.attempts(), 0);
    tokio::time::advance(Duration::from_secs(5)).await;
    for what in ["the probe", "closed again"] {
        let (req, _) = request_on(&routes, &route_metrics);
        let resp = svc.ready().await.unwrap().call(req).await.unwrap();
        assert_eq!(resp.status(), 200, "{what}");
    }
    assert_eq!(seen_now(), 4);
    drop(svc);
    server.await.unwrap();
}
