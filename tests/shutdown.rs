//! The shutdown contract the Kubernetes manifests rely on
//! (deploy/kubernetes): a native sidecar gets SIGTERM after the app has
//! exited, with what is left of the grace period. The real binary, a real
//! signal: with the backend up it delivers what the spool holds and exits
//! 0 before the grace period is over; with the backend down it exits 0 at
//! the end of the grace period, says how many entries remain, and a
//! restart on the same volume delivers them.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use support::Process;
use support::backend::Backend;
use support::client::{self, add_step_with};
use support::proxy::{config_text, spooled_route};

fn settings(grace: &str, spool: &str) -> String {
    let routes = spooled_route(
        "idempotent = true\non_failure = \"spool\"\ntimeouts = { per_try = \"300ms\" }\nretry = { max_attempts = 2 }",
    );
    format!(
        "[timeouts]\nper_try = \"500ms\"\ndeadline = \"2s\"\n[retry]\nbackoff_base = \"10ms\"\nbackoff_max = \"50ms\"\nmin_attempt_time = \"10ms\"\n[breaker]\nconsecutive_failures = 5\nopen_for = \"300ms\"\n[spool]\nreplay_backoff_base = \"20ms\"\nreplay_backoff_max = \"200ms\"\n{spool}\n[shutdown]\ngrace_period = \"{grace}\"\n{routes}"
    )
}

async fn fill(p: &Process, n: usize) -> HashMap<String, String> {
    let mut last = HashMap::new();
    for i in 0..n {
        let id = format!("sd-{i}");
        let content = format!("{id} v1");
        let a = client::post_json(
            p.addr,
            "/api/graphql",
            &add_step_with(vec![(id.clone(), content.clone())]),
        )
        .await;
        assert_eq!(a.status, 200, "{}", a.text());
        assert_eq!(a.header("x-sidecar-spooled"), Some("true"));
        last.insert(id, content);
    }
    last
}

fn log_line(logs: &str, message: &str) -> Option<serde_json::Value> {
    logs.lines()
        .filter(|l| l.contains(message))
        .find_map(|l| serde_json::from_str(l).ok())
}

/// SIGTERM with 20 entries waiting and a slow but working backend (one
/// entry per request, 150 ms each: about 3 s of work): the sidecar stops
/// taking requests, keeps delivering, and exits 0 once the spool is empty,
/// well before the 20 s grace period is over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_delivers_the_spool_then_exits_zero_within_the_grace_period() {
    let mut backend = Backend::down(None);
    let cfg = config_text(
        &backend.url(),
        &settings("20s", "replay_batch = 1\nreplay_concurrency = 1"),
    );
    let mut p = Process::spawn(&cfg, &[]).await;
    let last = fill(&p, 20).await;
    backend
        .answer_delay_ms
        .store(150, std::sync::atomic::Ordering::SeqCst);
    backend.up().await;
    // Some deliveries under way, most still waiting.
    backend
        .wait_for(Duration::from_secs(10), "a first delivery", |st| {
            !st.applied.is_empty()
        })
        .await;
    let started = tokio::time::Instant::now();
    p.signal("TERM");
    // `kill` returns once the signal is queued; the sidecar's signal task
    // and this probe's connection can reach its runtime in either order,
    // so readiness is given a moment to drop (the drain takes ~3 s).
    let mut ready = client::try_get(p.admin, "/readyz").await;
    let until = started + Duration::from_secs(1);
    while ready == Some(200) && tokio::time::Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(20)).await;
        ready = client::try_get(p.admin, "/readyz").await;
    }
    assert_ne!(ready, Some(200), "not ready once shutdown began");
    let status = p.wait_exit(Duration::from_secs(25)).await;
    let took = started.elapsed();
    assert!(status.success(), "{status}; log:\n{}", p.logs());
    assert!(took < Duration::from_secs(15), "took {took:?}");
    let steps = backend.steps();
    for (id, content) in &last {
        assert_eq!(steps.get(id), Some(content), "{id} delivered before exit");
    }
    let logs = p.logs();
    let drained = log_line(&logs, "spool drained before exit").expect("drain reported");
    assert_eq!(drained["remaining"], 0, "{drained}");
}

/// SIGTERM with the backend down and a 2 s grace period: the sidecar exits
/// 0 when the grace period is over, logs how many entries remain, and they
/// stay in the store: a restart on the same directory delivers them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_the_backend_down_reports_what_remains_and_keeps_it() {
    let mut backend = Backend::down(None);
    let dir = tempfile::tempdir().unwrap();
    let cfg = config_text(&backend.url(), &settings("2s", ""));
    let mut p = Process::spawn_at(dir.path(), &cfg, &[], &[]).await;
    let last = fill(&p, 12).await;
    let started = tokio::time::Instant::now();
    p.signal("TERM");
    let status = p.wait_exit(Duration::from_secs(10)).await;
    let took = started.elapsed();
    assert!(status.success(), "{status}; log:\n{}", p.logs());
    assert!(
        took >= Duration::from_millis(1800) && took < Duration::from_secs(6),
        "exits at the end of the grace period: {took:?}"
    );
    let logs = p.logs();
    let report = log_line(&logs, "grace period is over with entries waiting")
        .unwrap_or_else(|| panic!("what remains is reported; log:\n{logs}"));
    assert_eq!(report["remaining"], 12, "{report}");
    backend.up().await;
    let _p2 = Process::spawn_at(dir.path(), &cfg, &[], &[]).await;
    let expected = last.clone();
    backend
        .wait_for(
            Duration::from_secs(15),
            "delivered after the restart",
            |st| expected.iter().all(|(id, c)| st.steps.get(id) == Some(c)),
        )
        .await;
}

/// `shutdown.drain_spool = false`: the worker stops at once; entries stay
/// for the next start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_spool_off_exits_without_waiting() {
    let backend = Backend::down(None);
    let cfg = config_text(&backend.url(), &settings("20s", "")).replace(
        "[shutdown]\ngrace_period = \"20s\"",
        "[shutdown]\ngrace_period = \"20s\"\ndrain_spool = false",
    );
    let mut p = Process::spawn(&cfg, &[]).await;
    fill(&p, 3).await;
    let started = tokio::time::Instant::now();
    p.signal("TERM");
    let status = p.wait_exit(Duration::from_secs(10)).await;
    assert!(status.success());
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert!(!p.logs().contains("grace period is over"));
}
