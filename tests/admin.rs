//! The admin listener: health, readiness, metrics, state.

mod support;

use std::time::Duration;

use support::client::{self, sample};
use support::{FakeUpstream, Reply, Sidecar};

#[tokio::test]
async fn healthz_readyz_and_unknown_paths() {
    let up = FakeUpstream::start(|_, _| Reply::status(200)).await;
    let sc = Sidecar::start(&up.url(), "").await;
    let h = client::get(sc.admin, "/healthz").await;
    assert_eq!(h.status, 200);
    assert_eq!(h.json()["status"], "ok");
    // Ready as soon as start-up finishes.
    let mut ready = client::get(sc.admin, "/readyz").await;
    for _ in 0..50 {
        if ready.status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        ready = client::get(sc.admin, "/readyz").await;
    }
    assert_eq!(ready.status, 200);
    let nf = client::get(sc.admin, "/nope").await;
    assert_eq!(nf.status, 404);
    assert!(nf.json()["endpoints"].as_array().unwrap().len() >= 4);
}

#[tokio::test]
async fn readyz_turns_503_when_shutdown_starts() {
    let up =
        FakeUpstream::start(|_, _| Reply::status(200).delayed(Duration::from_millis(800))).await;
    let sc = Sidecar::start(&up.url(), "").await;
    let addr = sc.addr;
    let admin = sc.admin;
    let slow = tokio::spawn(async move { client::get(addr, "/slow").await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let stopping = tokio::spawn(sc.stop());
    tokio::time::sleep(Duration::from_millis(100)).await;
    let r = client::get(admin, "/readyz").await;
    assert_eq!(r.status, 503, "not ready while draining");
    assert_eq!(slow.await.unwrap().status, 200);
    stopping.await.unwrap();
}

#[tokio::test]
async fn metrics_count_requests_by_route_and_status_class() {
    let up = FakeUpstream::start(|r, _| match r.uri.path() {
        "/api/graphql" => Reply::json(
            200,
            serde_json::json!({"data": {"step0": {"ok": true, "message": "ok"}}}),
        ),
        "/api/missing" => Reply::status(404),
        _ => Reply::status(200),
    })
    .await;
    let sc = Sidecar::start(&up.url(), "").await;
    for _ in 0..3 {
        let a = client::post_json(sc.addr, "/api/graphql", &client::add_step(&["a"])).await;
        assert_eq!(a.status, 200);
    }
    client::get(sc.addr, "/api/missing").await;
    let m = client::get(sc.admin, "/metrics").await;
    assert_eq!(m.status, 200);
    assert!(m.header("content-type").unwrap().contains("text"));
    let text = m.text();
    let writes = sample(
        &text,
        "datalayer_sidecar_requests_total{route=\"spooled_writes\",status_class=\"2xx\",class=\"success\"}",
    );
    assert_eq!(writes, Some(3.0), "{text}");
    let missing = sample(
        &text,
        "datalayer_sidecar_requests_total{route=\"default\",status_class=\"4xx\",class=\"permanent\"}",
    );
    assert_eq!(missing, Some(1.0));
    let hist = sample(
        &text,
        "datalayer_sidecar_request_duration_seconds_count{route=\"spooled_writes\",status_class=\"2xx\"}",
    );
    assert_eq!(hist, Some(3.0));
    assert!(text.contains("datalayer_sidecar_request_duration_seconds_bucket{le="));
    assert!(text.contains("datalayer_sidecar_breaker_state"));
    assert!(text.contains("datalayer_sidecar_retry_budget_balance"));
    assert!(text.contains("datalayer_sidecar_connections_total"));
    assert!(text.ends_with("# EOF\n"));
}

#[tokio::test]
async fn breaker_and_config_endpoints() {
    let up = FakeUpstream::start(|_, _| Reply::status(200)).await;
    let sc = Sidecar::start(&up.url(), "[spool]\napi_key = \"sk-admin-hidden\"\n").await;
    let b = client::get(sc.admin, "/breaker").await;
    assert_eq!(b.status, 200);
    assert_eq!(b.json()["state"], "closed");
    let c = client::get(sc.admin, "/config").await;
    assert_eq!(c.status, 200);
    assert!(c.text().contains("[upstream]"));
    assert!(!c.text().contains("sk-admin-hidden"));
}
