//! The built binary: logs, signals, memory, the healthcheck subcommand.

mod support;

use std::time::Duration;

use http::Request;
use support::client::{self, TestBody, gen_chunk};
use support::proxy::config_text;
use support::upstream::{FNV_START, fnv1a};
use support::{FakeUpstream, Process, Reply};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_reach_the_logs_at_any_level() {
    let up = FakeUpstream::start(|r, _| {
        if r.uri.path() == "/api/graphql" {
            Reply::json(
                200,
                serde_json::json!({"data": {"step0": {"ok": true, "message": "ok"}}}),
            )
        } else {
            Reply::status(503)
        }
    })
    .await;
    let cfg = config_text(&up.url(), "");
    let mut p = Process::spawn(&cfg, &[("RUST_LOG", "trace")]).await;
    let secrets = [
        "sk-live-SECRET-0123456789",
        "Bearer tok-SECRET-456",
        "sess=SECRET-789",
    ];
    for path in ["/api/graphql", "/api/other"] {
        let body = if path == "/api/graphql" {
            client::add_step(&["s1"]).to_string()
        } else {
            "{}".to_string()
        };
        let req = Request::post(path)
            .header("x-api-key", secrets[0])
            .header("authorization", secrets[1])
            .header("cookie", secrets[2])
            .header("x-request-id", "req-log-check")
            .body(TestBody::full(body))
            .unwrap();
        client::send(p.addr, req).await;
    }
    p.signal("TERM");
    assert!(p.wait_exit(Duration::from_secs(10)).await.success());
    let logs = p.logs();
    for s in secrets {
        assert!(!logs.contains(s), "secret {s} found in logs");
    }
    assert!(!logs.contains("SECRET"), "a secret fragment is in the logs");
    // The access line is there, as JSON, with the fields operators rely on.
    let access: Vec<serde_json::Value> = logs
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["target"] == "access")
        .collect();
    assert_eq!(access.len(), 2, "one access line per request:\n{logs}");
    let step = access.iter().find(|v| v["path"] == "/api/graphql").unwrap();
    assert_eq!(step["request_id"], "req-log-check");
    assert_eq!(step["method"], "POST");
    assert_eq!(step["route"], "spooled_writes");
    assert_eq!(step["graphql_op"], "AddStep");
    assert_eq!(step["status"], 200);
    assert!(step["total_ms"].as_f64().is_some());
    assert!(step["upstream_ms"].as_f64().is_some());
    assert!(step["response_bytes"].as_u64().unwrap() > 0);
    assert!(step["request_bytes"].as_u64().unwrap() > 0);
    let other = access.iter().find(|v| v["path"] == "/api/other").unwrap();
    assert_eq!(other["status"], 503);
    assert_eq!(other["class"], "transient");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_requests_and_exits_zero() {
    let up = FakeUpstream::start(|_, _| {
        Reply::text(200, "finished").delayed(Duration::from_millis(1500))
    })
    .await;
    let cfg = config_text(
        &up.url(),
        "[shutdown]\ngrace_period = \"10s\"\n[timeouts]\nper_try = \"5s\"\ndeadline = \"8s\"\n",
    );
    let mut p = Process::spawn(&cfg, &[]).await;
    let addr = p.addr;
    let slow = tokio::spawn(async move { client::get(addr, "/slow").await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    p.signal("TERM");
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Not accepting any more: the listener is closed.
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "new connections must be refused during the drain"
    );
    let a = slow.await.unwrap();
    assert_eq!(a.status, 200);
    assert_eq!(a.text(), "finished");
    let status = p.wait_exit(Duration::from_secs(10)).await;
    assert!(status.success(), "exit status {status:?}\n{}", p.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_megabyte_upload_streams_with_bounded_memory() {
    const CHUNK: usize = 64 * 1024;
    const CHUNKS: u64 = 1600; // 100 MiB
    let up = FakeUpstream::start(|_, _| Reply::status(200)).await;
    let cfg = config_text(&up.url(), "");
    let p = Process::spawn(&cfg, &[]).await;
    let idle = p.status_kib("VmRSS");
    let req = Request::post("/consume")
        .body(TestBody::Gen {
            left: CHUNKS,
            size: CHUNK,
            n: 0,
        })
        .unwrap();
    let a = client::send(p.addr, req).await;
    assert_eq!(a.status, 200, "{}", a.text());
    let mut expect = FNV_START;
    for n in 0..CHUNKS {
        expect = fnv1a(expect, &gen_chunk(n, CHUNK));
    }
    let got = up.consumed();
    assert_eq!(got, vec![(CHUNKS * CHUNK as u64, expect)], "bytes and hash");
    let peak = p.status_kib("VmHWM");
    eprintln!("idle RSS {idle} KiB, peak RSS {peak} KiB after 100 MiB");
    assert!(
        peak < idle + 32 * 1024,
        "peak RSS {peak} KiB grew more than 32 MiB over idle {idle} KiB"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthcheck_subcommand_reports_health() {
    let up = FakeUpstream::start(|_, _| Reply::status(200)).await;
    let cfg = config_text(&up.url(), "");
    let mut p = Process::spawn(&cfg, &[]).await;
    let cfg_path = p.dir.join("sidecar.toml");
    let run = |admin: String| {
        std::process::Command::new(support::proxy::binary())
            .arg("healthcheck")
            .arg("--config")
            .arg(&cfg_path)
            .arg("--admin-listen")
            .arg(admin)
            .output()
            .unwrap()
    };
    let ok = run(p.admin.to_string());
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    p.signal("TERM");
    p.wait_exit(Duration::from_secs(10)).await;
    let down = run(p.admin.to_string());
    assert!(!down.status.success());
    assert!(String::from_utf8_lossy(&down.stderr).contains("unhealthy"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_log_format_by_flag() {
    let up = FakeUpstream::start(|_, _| Reply::status(200)).await;
    let cfg = config_text(&up.url(), "[log]\nformat = \"text\"\n");
    let mut p = Process::spawn(&cfg, &[]).await;
    client::get(p.addr, "/x").await;
    p.signal("INT");
    assert!(p.wait_exit(Duration::from_secs(10)).await.success());
    let logs = p.logs();
    let line = logs
        .lines()
        .find(|l| l.contains("access"))
        .unwrap_or_default();
    assert!(line.contains("status=200"), "{logs}");
    assert!(serde_json::from_str::<serde_json::Value>(line).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_retried_reason_is_in_the_access_line() {
    let up = FakeUpstream::start(|_, _| Reply::text(503, "down")).await;
    let cfg = config_text(
        &up.url(),
        "[retry]\nmax_replay_body = \"1KiB\"\nbackoff_base = \"1ms\"\nbackoff_max = \"1ms\"\n[breaker]\nenabled = false\n",
    );
    let mut p = Process::spawn(&cfg, &[]).await;
    let big = serde_json::json!({"blob": "x".repeat(4096)});
    let a = client::post_json_to(p.addr, "/api/things", &big, "PUT").await;
    assert_eq!(a.status, 503);
    assert_eq!(up.hits(), 1);
    p.signal("TERM");
    assert!(p.wait_exit(Duration::from_secs(10)).await.success());
    let logs = p.logs();
    let line = logs
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["target"] == "access")
        .unwrap_or_else(|| panic!("no access line:\n{logs}"));
    assert_eq!(line["not_retried"], "body_over_cap", "{line}");
    assert_eq!(line["class"], "transient");
    assert_eq!(line["kind"], "status_5xx");
    assert_eq!(line["attempts"], 1);
}
