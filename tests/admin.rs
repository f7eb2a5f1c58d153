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

/// `req` to the admin port with these headers.
async fn admin_req(
    admin: std::net::SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> support::Answer {
    let mut b = http::Request::builder().method(method).uri(path);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    client::send(admin, b.body(support::TestBody::empty()).unwrap()).await
}

/// A page the operator opens in a browser can reach the admin port on
/// loopback. A cross-site request that changes state (`POST /reload`) is
/// refused: a foreign or `null` Origin, a `Sec-Fetch-Site` other than
/// same-origin, or a body type a form can send without a preflight. The
/// CLI's and curl's plain POST still works.
#[tokio::test]
async fn cross_site_requests_cannot_reload() {
    let up = FakeUpstream::start(|_, _| Reply::status(200)).await;
    let sc = Sidecar::start(&up.url(), "").await;
    for headers in [
        vec![
            ("origin", "http://evil.example"),
            ("content-type", "text/plain"),
        ],
        vec![("origin", "null")],
        vec![("sec-fetch-site", "cross-site")],
        vec![("content-type", "application/x-www-form-urlencoded")],
        vec![("content-type", "multipart/form-data; boundary=x")],
    ] {
        let a = admin_req(sc.admin, "POST", "/reload", &headers).await;
        assert_eq!(a.status, 403, "{headers:?}: {}", a.text());
        assert_eq!(a.json()["error"], "cross_site_request", "{headers:?}");
    }
    // Plain POST (curl -X POST), and a same-origin one: not refused as
    // cross-site (this sidecar has no file to reload: 503).
    let origin = format!("http://{}", sc.admin);
    for headers in [
        vec![],
        vec![
            ("origin", origin.as_str()),
            ("sec-fetch-site", "same-origin"),
        ],
    ] {
        let a = admin_req(sc.admin, "POST", "/reload", &headers).await;
        assert_eq!(a.status, 503, "{headers:?}: {}", a.text());
    }
}

/// DNS rebinding: a page on evil.example whose name is made to resolve to
/// 127.0.0.1 reads the admin port with `Host: evil.example`. Every
/// endpoint refuses a Host that is not an IP literal, a loopback name or a
/// name in `admin.allowed_hosts`; probes (an IP and the port), Prometheus
/// and the CLI keep working.
#[tokio::test]
async fn a_foreign_host_name_is_refused_on_every_endpoint() {
    let up = FakeUpstream::start(|_, _| Reply::status(200)).await;
    let sc = Sidecar::start(
        &up.url(),
        "[admin]\naddress = \"127.0.0.1:0\"\nallowed_hosts = [\"sidecar-admin.internal\"]\n",
    )
    .await;
    for path in ["/config", "/spool", "/metrics", "/", "/healthz"] {
        let a = admin_req(sc.admin, "GET", path, &[("host", "evil.example")]).await;
        assert_eq!(a.status, 421, "{path}: {}", a.text());
        assert_eq!(a.json()["error"], "host_not_allowed", "{path}");
    }
    let a = admin_req(
        sc.admin,
        "POST",
        "/reload",
        &[("host", "evil.example:9901")],
    )
    .await;
    assert_eq!(a.status, 421, "{}", a.text());
    let port = sc.admin.port();
    for host in [
        format!("127.0.0.1:{port}"),
        format!("localhost:{port}"),
        "10.1.2.3:9901".to_string(),
        "[::1]:9901".to_string(),
        "sidecar-admin.internal:9901".to_string(),
        "SIDECAR-ADMIN.internal".to_string(),
    ] {
        let a = admin_req(sc.admin, "GET", "/config", &[("host", host.as_str())]).await;
        assert_eq!(a.status, 200, "{host}: {}", a.text());
    }
}
