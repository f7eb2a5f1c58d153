//! The spool: acknowledged writes are never lost, arrive in order, and the
//! operator can see and manage what waits.

mod support;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use http::Request;
use support::backend::{Backend, Fault};
use support::client::{self, TestBody, add_step_with, sample};
use support::proxy::{config, config_text, spooled_route};
use support::{Answer, Process, Reply, Sidecar};

/// Short timeouts so a down backend is noticed quickly; the preset (step
/// and thread writes spool) with the spooled route's attempts shortened to
/// match.
fn settings(extra: &str) -> String {
    let routes = spooled_route(
        "idempotent = true\non_failure = \"spool\"\ntimeouts = { per_try = \"300ms\" }\nretry = { max_attempts = 2 }",
    );
    format!(
        "[timeouts]\nper_try = \"500ms\"\ndeadline = \"2s\"\n[retry]\nbackoff_base = \"10ms\"\nbackoff_max = \"50ms\"\nmin_attempt_time = \"10ms\"\n[breaker]\nconsecutive_failures = 5\nopen_for = \"300ms\"\n{extra}\n{routes}"
    )
}

fn spool_section(dir: &std::path::Path, extra: &str) -> String {
    format!(
        "[spool]\npath = \"{}\"\nreplay_backoff_base = \"20ms\"\nreplay_backoff_max = \"200ms\"\ncommit_margin = \"300ms\"\n{extra}\n",
        dir.join("spool.sqlite3").display()
    )
}

async fn start(backend: &Backend, spool_extra: &str) -> Sidecar {
    let dir = tempfile::tempdir().unwrap();
    let text = settings(&spool_section(dir.path(), spool_extra));
    Sidecar::start_in(config(&backend.url(), &text), dir).await
}

async fn write(addr: std::net::SocketAddr, id: &str, content: &str) -> Answer {
    client::post_json(
        addr,
        "/api/graphql",
        &add_step_with(vec![(id.to_string(), content.to_string())]),
    )
    .await
}

/// The write was acknowledged the way the SDK needs: 200, every alias ok.
fn assert_acked(a: &Answer) {
    assert_eq!(a.status, 200, "{}", a.text());
    let j = a.json();
    assert!(j.get("errors").is_none(), "{j}");
    for (_, v) in j["data"].as_object().unwrap() {
        assert_eq!(v["ok"], true, "{j}");
    }
}

fn spooled(a: &Answer) -> bool {
    a.header("x-sidecar-spooled") == Some("true")
}

/// Versions of `id` in the order the backend applied them.
fn versions(applied: &[(String, String)], id: &str) -> Vec<String> {
    applied
        .iter()
        .filter(|(i, _)| i == id)
        .map(|(_, c)| c.clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_safety_acknowledged_writes_survive_sigkill() {
    let mut backend = Backend::down(None);
    let dir = tempfile::tempdir().unwrap();
    let cfg = config_text(&backend.url(), &settings(""));
    let mut p = Process::spawn_at(dir.path(), &cfg, &[], &[]).await;
    // 30 steps, written 1..=3 times each; versions of a step in sequence.
    let mut last: HashMap<String, String> = HashMap::new();
    let mut tasks = Vec::new();
    for s in 0..30 {
        let addr = p.addr;
        tasks.push(tokio::spawn(async move {
            let id = format!("step-{s}");
            let mut content = String::new();
            for v in 1..=(1 + s % 3) {
                content = format!("{id} v{v}");
                let a = write(addr, &id, &content).await;
                assert_acked(&a);
                assert!(spooled(&a), "backend is down, so the write was spooled");
            }
            (id, content)
        }));
    }
    for t in tasks {
        let (id, content) = t.await.unwrap();
        last.insert(id, content);
    }
    // Acknowledged means committed: kill without any chance to flush.
    p.signal("KILL");
    p.wait_exit(Duration::from_secs(10)).await;
    backend.up().await;
    let _p2 = Process::spawn_at(dir.path(), &cfg, &[], &[]).await;
    let expected = last.clone();
    backend
        .wait_for(Duration::from_secs(30), "every step delivered", |st| {
            expected.iter().all(|(id, c)| st.steps.get(id) == Some(c))
        })
        .await;
    assert_eq!(
        backend.steps(),
        last,
        "each step upstream holds the app's last write"
    );
    let applied = backend.applied();
    for id in last.keys() {
        let vs = versions(&applied, id);
        let mut sorted = vs.clone();
        sorted.sort();
        assert_eq!(vs, sorted, "{id} applied out of order: {vs:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_of_a_step_arrive_in_order() {
    let mut backend = Backend::down(None);
    let sc = start(&backend, "").await;
    for v in 1..=3 {
        let a = write(sc.addr, "s-order", &format!("v{v}")).await;
        assert_acked(&a);
        assert!(spooled(&a));
    }
    // While entries wait, a new write goes behind them even if the backend
    // is back: it cannot overtake v1..v3.
    backend.up().await;
    let a = write(sc.addr, "s-order", "v4").await;
    assert_acked(&a);
    backend
        .wait_for(Duration::from_secs(10), "v4 applied", |st| {
            st.steps.get("s-order").map(String::as_str) == Some("v4")
        })
        .await;
    let vs = versions(&backend.applied(), "s-order");
    assert_eq!(
        vs,
        ["v1", "v2", "v3", "v4"],
        "never an older version after a newer one"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_entry_does_not_hold_back_other_steps() {
    // The oldest entry keeps failing slowly (503 after 250 ms, four times:
    // two deliveries of two attempts); twelve entries for other steps wait
    // behind it. The replay window must deliver them while the slow one
    // is still being retried, not in lockstep with it.
    let fault: Fault = Arc::new(|id, attempt| {
        (id == "s-slow" && attempt < 4)
            .then(|| Reply::status(503).delayed(Duration::from_millis(250)))
    });
    let mut backend = Backend::down(Some(fault));
    let sc = start(&backend, "replay_concurrency = 4").await;
    let a = write(sc.addr, "s-slow", "v1").await;
    assert_acked(&a);
    assert!(spooled(&a));
    let others: Vec<String> = (0..12).map(|i| format!("s-fast-{i}")).collect();
    for id in &others {
        let a = write(sc.addr, id, "v1").await;
        assert_acked(&a);
        assert!(spooled(&a), "queued behind the waiting entry");
    }
    backend.up().await;
    backend
        .wait_for(Duration::from_secs(20), "all 13 steps applied", |st| {
            st.steps.len() == 13
        })
        .await;
    let applied = backend.applied();
    let slow_at = applied
        .iter()
        .position(|(id, _)| id == "s-slow")
        .expect("the slow step was applied");
    let late: Vec<&String> = applied[slow_at..]
        .iter()
        .map(|(id, _)| id)
        .filter(|id| others.contains(id))
        .collect();
    assert!(
        late.is_empty(),
        "entries for other steps waited for the slow one: {late:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blackout_of_twenty_seconds_loses_nothing() {
    let mut backend = Backend::up_now(None).await;
    let sc = start(&backend, "").await;
    let addr = sc.addr;
    let writer = tokio::spawn(async move {
        let mut last = HashMap::new();
        let mut answers = Vec::new();
        let started = tokio::time::Instant::now();
        let mut n = 0;
        while started.elapsed() < Duration::from_secs(26) {
            // A few steps updated over and over, plus a new one each time.
            let id = format!("b-{}", n % 7);
            let content = format!("{id} @{n}");
            let a = write(addr, &id, &content).await;
            answers.push((a.status.as_u16(), spooled(&a), a.json()));
            last.insert(id, content);
            let fresh = format!("new-{n}");
            let a = write(addr, &fresh, "fresh").await;
            answers.push((a.status.as_u16(), spooled(&a), a.json()));
            last.insert(fresh, "fresh".to_string());
            n += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        (last, answers)
    });
    tokio::time::sleep(Duration::from_secs(3)).await;
    backend.take_down();
    tokio::time::sleep(Duration::from_secs(20)).await;
    backend.up().await;
    let (last, answers) = writer.await.unwrap();
    for (status, _, body) in &answers {
        assert_eq!(*status, 200, "a write failed: {body}");
        assert!(body.get("errors").is_none());
    }
    let spooled_count = answers.iter().filter(|a| a.1).count();
    assert!(
        spooled_count > 100,
        "the blackout was spooled ({spooled_count})"
    );
    let expected = last.clone();
    backend
        .wait_for(Duration::from_secs(30), "all steps after recovery", |st| {
            expected.iter().all(|(id, c)| st.steps.get(id) == Some(c))
        })
        .await;
    let m = client::get(sc.admin, "/metrics").await.text();
    assert_eq!(sample(&m, "datalayer_sidecar_spool_depth "), Some(0.0));
    assert!(
        sample(
            &m,
            "datalayer_sidecar_breaker_transitions_total{to=\"open\"}"
        )
        .unwrap()
            >= 1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permanent_refusal_is_dead_lettered_and_requeue_sends_it_again() {
    // The backend refuses step "bad" the first time it sees it.
    let fault: Fault = Arc::new(|id, attempt| {
        (id == "bad" && attempt == 0).then(|| {
            Reply::json(
                400,
                serde_json::json!({"errors": [{"message": "Variable \"$id_0\" got invalid value", "extensions": {"code": "BAD_USER_INPUT"}}]}),
            )
        })
    });
    let mut backend = Backend::down(Some(fault));
    let dir = tempfile::tempdir().unwrap();
    let cfg = config_text(&backend.url(), &settings(""));
    let p = Process::spawn_at(dir.path(), &cfg, &[], &[]).await;
    assert_acked(&write(p.addr, "good", "fine").await);
    assert_acked(&write(p.addr, "bad", "refused once").await);
    backend.up().await;
    backend
        .wait_for(
            Duration::from_secs(15),
            "good delivered, bad refused",
            |st| st.steps.contains_key("good") && st.attempts.get("bad") == Some(&1),
        )
        .await;
    // Give the worker a moment to commit the dead letter.
    let mut dead = serde_json::Value::Null;
    for _ in 0..100 {
        let out = p.cli(&["spool", "dead-letters", "--json"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        dead = serde_json::from_slice(&out.stdout).unwrap();
        if dead.as_array().is_some_and(|a| !a.is_empty()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let d = &dead[0];
    assert_eq!(d["keys"], serde_json::json!(["step:bad"]), "{dead}");
    assert_eq!(d["status"], 400);
    assert_eq!(d["class"], "permanent");
    assert!(d["reason"].as_str().unwrap().contains("400"));
    assert!(d["response"].as_str().unwrap().contains("BAD_USER_INPUT"));
    assert!(!backend.steps().contains_key("bad"));

    let out = p.cli(&["spool", "requeue", "--all"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("requeued 1"));
    backend
        .wait_for(
            Duration::from_secs(15),
            "bad delivered after requeue",
            |st| st.steps.get("bad").map(String::as_str) == Some("refused once"),
        )
        .await;
    let stats = p.cli(&["spool", "stats", "--json"]);
    let s: serde_json::Value = serde_json::from_slice(&stats.stdout).unwrap();
    assert_eq!(s["dead_letters"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_spool_refuses_with_spool_full_and_keeps_what_it_has() {
    let mut backend = Backend::down(None);
    let sc = start(&backend, "max_entries = 3").await;
    for i in 0..3 {
        assert_acked(&write(sc.addr, &format!("f{i}"), "kept").await);
    }
    let a = write(sc.addr, "f3", "refused").await;
    assert_eq!(a.status, 503);
    assert_eq!(a.json()["errors"][0]["extensions"]["code"], "spool_full");
    assert_eq!(a.header("retry-after"), Some("1"));
    assert_eq!(a.json()["errors"][0]["extensions"]["class"], "transient");
    let m = client::get(sc.admin, "/metrics").await.text();
    assert_eq!(sample(&m, "datalayer_sidecar_spool_full_total"), Some(1.0));
    // Counted as it was answered: one failure vocabulary.
    let refused: Vec<&str> = m
        .lines()
        .filter(|l| l.starts_with("datalayer_sidecar_requests_total{") && l.contains("5xx"))
        .filter(|l| !l.ends_with(" 0"))
        .collect();
    assert!(
        !refused.is_empty() && refused.iter().all(|l| l.contains("class=\"transient\"")),
        "{refused:?}"
    );
    backend.up().await;
    backend
        .wait_for(Duration::from_secs(10), "stored writes delivered", |st| {
            (0..3).all(|i| st.steps.contains_key(&format!("f{i}")))
        })
        .await;
    assert!(
        !backend.steps().contains_key("f3"),
        "the refused write was not stored"
    );
    // Drained (the deletes commit just after the backend answers): spooling
    // works again.
    let mut depth = serde_json::Value::Null;
    for _ in 0..200 {
        depth = client::get(sc.admin, "/spool").await.json()["depth"].clone();
        if depth == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(depth, 0);
    backend.take_down();
    let a = write(sc.addr, "f4", "after drain").await;
    assert_acked(&a);
    assert!(spooled(&a));
}

#[tokio::test]
async fn corrupt_store_refuses_to_start_unless_quarantined() {
    let backend = Backend::down(None);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("spool.sqlite3");
    std::fs::write(
        &path,
        b"this is not a database, it is a sandwich ".repeat(200),
    )
    .unwrap();
    let text = settings(&spool_section(dir.path(), ""));
    let cfg = config(&backend.url(), &text);
    let sc = Sidecar::start_opts(
        cfg.clone(),
        tempfile::tempdir().unwrap(),
        Default::default(),
    )
    .await;
    let err = sc.result().await.unwrap_err().to_string();
    assert!(
        err.contains("corrupt") && err.contains("--quarantine-corrupt-spool"),
        "{err}"
    );
    assert!(path.exists(), "the file is left alone");

    let opts = datalayer_sidecar::sidecar::Options {
        quarantine_corrupt_spool: true,
        ..Default::default()
    };
    let sc = Sidecar::start_opts(cfg, tempfile::tempdir().unwrap(), opts).await;
    let a = write(sc.addr, "q1", "fresh store").await;
    assert_acked(&a);
    let moved: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains(".corrupt-"))
        .collect();
    assert_eq!(moved.len(), 1, "the corrupt file was moved aside");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_store_through_the_binary_is_a_clear_error() {
    let backend = Backend::down(None);
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("data")).unwrap();
    std::fs::write(dir.path().join("data/spool.sqlite3"), vec![0x42u8; 8192]).unwrap();
    let cfg = config_text(&backend.url(), &settings(""));
    let mut p = Process::start_at(dir.path(), &cfg, &[], &[]);
    let st = p.wait_exit(Duration::from_secs(10)).await;
    assert!(!st.success());
    let logs = p.logs();
    assert!(logs.contains("corrupt"), "{logs}");
    let p = Process::spawn_at(dir.path(), &cfg, &[], &["--quarantine-corrupt-spool"]).await;
    assert_eq!(client::get(p.admin, "/readyz").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_writers_each_get_one_ack_and_nothing_is_lost() {
    let mut backend = Backend::down(None);
    let sc = start(&backend, "").await;
    let mut tasks = Vec::new();
    for i in 0..200 {
        let addr = sc.addr;
        tasks.push(tokio::spawn(async move {
            write(addr, &format!("c{i}"), &format!("content {i}")).await
        }));
    }
    for t in tasks {
        assert_acked(&t.await.unwrap());
    }
    let status = client::get(sc.admin, "/spool").await.json();
    assert_eq!(status["depth"], 200, "{status}");
    assert_eq!(status["committed"], 200);
    assert!(
        status["commit_batches"].as_u64().unwrap() < 200,
        "group commit: {status}"
    );
    backend.up().await;
    backend
        .wait_for(Duration::from_secs(20), "200 steps", |st| {
            st.steps.len() == 200
        })
        .await;
    for i in 0..200 {
        assert_eq!(backend.steps()[&format!("c{i}")], format!("content {i}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_behind_acknowledges_after_commit_and_delivers_later() {
    let backend = Backend::up_now(None).await;
    let dir = tempfile::tempdir().unwrap();
    let routes = settings(&spool_section(dir.path(), "")).replace(
        "on_failure = \"spool\"",
        "on_failure = \"spool\"\nmode = \"write_behind\"",
    );
    let sc = Sidecar::start_in(config(&backend.url(), &routes), dir).await;
    for i in 0..20 {
        let a = write(sc.addr, &format!("w{i}"), "behind").await;
        assert_acked(&a);
        assert!(spooled(&a), "every write is acknowledged from the spool");
    }
    backend
        .wait_for(Duration::from_secs(10), "20 steps", |st| {
            st.steps.len() == 20
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_stay_off_disk_when_asked_and_replay_uses_the_configured_key() {
    let mut backend = Backend::down(None);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("spool.sqlite3");
    let text = settings(&spool_section(
        dir.path(),
        "store_credentials = false\napi_key = \"replay-key-123\"",
    ));
    let sc = Sidecar::start_in(config(&backend.url(), &text), dir).await;
    let req = Request::post("/api/graphql")
        .header("x-api-key", "client-key-SECRET")
        .header("authorization", "Bearer client-token-SECRET")
        .body(TestBody::full(
            add_step_with(vec![("k1".into(), "keyed".into())]).to_string(),
        ))
        .unwrap();
    assert_acked(&client::send(sc.addr, req).await);
    let mut raw = std::fs::read(&path).unwrap();
    raw.extend(std::fs::read(path.with_extension("sqlite3-wal")).unwrap_or_default());
    let raw = String::from_utf8_lossy(&raw);
    assert!(!raw.contains("client-key-SECRET") && !raw.contains("client-token-SECRET"));
    assert!(raw.contains("keyed"), "the write itself is stored");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "the store holds keys: owner only");
    }
    backend.up().await;
    backend
        .wait_for(Duration::from_secs(10), "k1", |st| {
            st.steps.contains_key("k1")
        })
        .await;
    let keys = backend.state.lock().unwrap().keys.clone();
    assert_eq!(keys.last().map(String::as_str), Some("replay-key-123"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permanent_live_failures_are_not_spooled() {
    let fault: Fault = Arc::new(|_, _| {
        Some(Reply::json(
            200,
            serde_json::json!({"errors": [{"message": "invalid", "extensions": {"code": "GRAPHQL_VALIDATION_FAILED"}}]}),
        ))
    });
    let backend = Backend::up_now(Some(fault)).await;
    let sc = start(&backend, "").await;
    let a = write(sc.addr, "p1", "x").await;
    assert_eq!(a.status, 200);
    assert!(!spooled(&a));
    assert_eq!(
        a.json()["errors"][0]["extensions"]["code"],
        "GRAPHQL_VALIDATION_FAILED"
    );
    let status = client::get(sc.admin, "/spool").await.json();
    assert_eq!(status["depth"], 0);
    assert_eq!(status["committed"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_exhausted_on_a_transient_failure_are_spooled_then_delivered() {
    // 503 for the first four attempts at step "t1": two live attempts fail
    // and the write is spooled; the first replay (two attempts) fails too;
    // the next replay lands.
    let fault: Fault = Arc::new(|_, attempt| (attempt < 4).then(|| Reply::text(503, "busy")));
    let backend = Backend::up_now(Some(fault)).await;
    let sc = start(&backend, "").await;
    let a = write(sc.addr, "t1", "eventually").await;
    assert_acked(&a);
    assert!(spooled(&a));
    assert_eq!(a.header("x-sidecar-attempts"), Some("2"));
    backend
        .wait_for(Duration::from_secs(10), "t1 delivered", |st| {
            st.steps.contains_key("t1")
        })
        .await;
    // The worker counts a delivery once it has committed its removal, a
    // moment after the backend applied it.
    let mut m = String::new();
    for _ in 0..200 {
        m = client::get(sc.admin, "/metrics").await.text();
        if sample(
            &m,
            "datalayer_sidecar_spool_replays_total{outcome=\"delivered\"}",
        ) == Some(1.0)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        sample(
            &m,
            "datalayer_sidecar_spool_replays_total{outcome=\"delivered\"}"
        ),
        Some(1.0)
    );
    assert!(
        sample(
            &m,
            "datalayer_sidecar_spool_replays_total{outcome=\"transient_failure\"}"
        )
        .unwrap()
            >= 1.0
    );
}

/// A live write that fails after a newer version of the same step was
/// spooled behind it is stored at its own, earlier place in the queue; the
/// newer version must still be delivered after it. (Found on review: the
/// worker's cached head of the queue did not see the older entry land in
/// front of it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_write_spooled_after_a_newer_version_is_still_delivered_first() {
    // The first attempt at step "s" fails slowly; everything else succeeds.
    let fault: Fault = Arc::new(|id, attempt| {
        (id == "s" && attempt == 0).then(|| Reply::status(503).delayed(Duration::from_millis(600)))
    });
    let backend = Backend::up_now(Some(fault)).await;
    let dir = tempfile::tempdir().unwrap();
    let text = settings(&spool_section(dir.path(), "replay_concurrency = 1")).replace(
        "retry = { max_attempts = 2 }",
        "retry = { max_attempts = 1 }",
    );
    let sc = Sidecar::start_in(config(&backend.url(), &text), dir).await;
    // v1 goes live and hangs on its 503.
    let addr = sc.addr;
    let v1 = tokio::spawn(async move { write(addr, "s", "v1").await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    // v2 of the same step, and another step, go behind v1 into the spool.
    let v2 = write(sc.addr, "s", "v2").await;
    assert_acked(&v2);
    assert!(spooled(&v2));
    assert_acked(&write(sc.addr, "x", "other").await);
    // v1 fails, is spooled at its own place, and is acknowledged.
    let v1 = v1.await.unwrap();
    assert_acked(&v1);
    assert!(spooled(&v1));
    backend
        .wait_for(Duration::from_secs(10), "both versions applied", |st| {
            st.applied.iter().filter(|(id, _)| id == "s").count() >= 2
        })
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        versions(&backend.applied(), "s"),
        ["v1", "v2"],
        "the older version must not overwrite the newer one"
    );
    assert_eq!(backend.steps()["s"], "v2");
    sc.stop().await;
}

/// A refusal that applies to every request (an API key rotated: 401) pauses
/// the queue; it never dead-letters acknowledged writes. The worker resumes
/// by itself once a probe goes through. (Found on review: every entry went
/// to dead letters at full speed.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_of_everything_pauses_the_queue_and_never_dead_letters_it() {
    let refusing = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let r = refusing.clone();
    let fault: Fault = Arc::new(move |_, _| {
        r.load(std::sync::atomic::Ordering::SeqCst)
            .then(|| Reply::json(401, serde_json::json!({"error": "invalid api key"})))
    });
    let mut backend = Backend::down(Some(fault));
    let sc = start(&backend, "").await;
    let mut last = HashMap::new();
    for i in 0..30 {
        let id = format!("k{i}");
        let a = write(sc.addr, &id, "acked while down").await;
        assert_acked(&a);
        last.insert(id, "acked while down".to_string());
    }
    backend.up().await;
    // The backend refuses everything for a while.
    backend
        .wait_for(Duration::from_secs(10), "refusals seen", |st| {
            st.requests >= 3
        })
        .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let s = client::get(sc.admin, "/spool").await.json();
    assert_eq!(s["dead_letters"], 0, "{s}");
    assert_eq!(s["depth"], 30, "{s}");
    assert_eq!(s["paused"]["reason"], "status_401", "{s}");
    let m = client::get(sc.admin, "/metrics").await.text();
    assert_eq!(
        sample(&m, "datalayer_sidecar_spool_paused "),
        Some(1.0),
        "{m}"
    );
    // Paused means probing, not hammering: a handful of requests, not 30 per try.
    let refused = backend.state.lock().unwrap().requests;
    assert!(refused < 15, "{refused} requests while paused");
    // The key is fixed: everything arrives, nothing was dead-lettered.
    refusing.store(false, std::sync::atomic::Ordering::SeqCst);
    backend
        .wait_for(Duration::from_secs(30), "every write delivered", |st| {
            last.iter().all(|(id, c)| st.steps.get(id) == Some(c))
        })
        .await;
    let s = client::get(sc.admin, "/spool").await.json();
    assert_eq!(s["dead_letters"], 0, "{s}");
    assert!(s["paused"].is_null(), "{s}");
    sc.stop().await;
}

/// Tries per entry, from `spool list --json`.
fn tries(p: &Process) -> Vec<(i64, u64)> {
    let out = p.cli(&["spool", "list", "--json", "--limit", "1000"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    list.as_array()
        .unwrap()
        .iter()
        .map(|e| (e["id"].as_i64().unwrap(), e["attempts"].as_u64().unwrap()))
        .collect()
}

/// While the breaker is open or probing, the worker starts no more
/// deliveries than the breaker lets through, and each probe takes an entry
/// no earlier probe failed with; once the breaker closes the window opens
/// again. A whole window of deliveries per try, all but the probe turned
/// away by the breaker, cost the store a burst of claim renewals and
/// failure records each time (acknowledged writes waited behind it) and
/// charged a try to entries that were never sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_the_breaker_is_open_replays_start_only_its_probes_and_the_window_reopens_after() {
    let mut backend = Backend::down(None);
    let dir = tempfile::tempdir().unwrap();
    let text = settings(&spool_section(
        dir.path(),
        "replay_concurrency = 8\nreplay_batch = 1",
    ))
    .replace("open_for = \"300ms\"", "open_for = \"300ms\"\nprobes = 1");
    let cfg = config_text(&backend.url(), &text);
    let p = Process::spawn_at(dir.path(), &cfg, &[], &[]).await;
    let ids: Vec<String> = (0..40).map(|i| format!("probe-{i}")).collect();
    for id in &ids {
        let a = write(p.addr, id, "acked while down").await;
        assert_acked(&a);
        assert!(spooled(&a));
    }
    // Past the first tries (the breaker opens), then two looks two seconds
    // apart. Each probe that fails opens the breaker for 300 ms, so two
    // seconds hold at most seven probes.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before: HashMap<i64, u64> = tries(&p).into_iter().collect();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = tries(&p);
    assert_eq!(after.len(), 40);
    let grew: Vec<(i64, u64)> = after
        .iter()
        .map(|(id, n)| (*id, n - before.get(id).copied().unwrap_or(0)))
        .filter(|(_, d)| *d > 0)
        .collect();
    let charged: u64 = grew.iter().map(|(_, d)| d).sum();
    assert!(
        (1..=8).contains(&charged),
        "{charged} tries charged in two seconds of a down backend (id, tries): {grew:?}"
    );
    assert!(
        grew.iter().all(|(_, d)| *d == 1),
        "a probe took an entry an earlier probe had failed with: {grew:?}"
    );
    // The backend returns, slow to answer: one delivery at a time would
    // take 40 × 150 ms = 6 s; the reopened window of eight takes about one.
    backend
        .answer_delay_ms
        .store(150, std::sync::atomic::Ordering::SeqCst);
    backend.up().await;
    let started = tokio::time::Instant::now();
    backend
        .wait_for(Duration::from_secs(30), "every write delivered", |st| {
            ids.iter().all(|id| st.steps.contains_key(id))
        })
        .await;
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(3),
        "40 deliveries took {took:?}: the window did not open again"
    );
}

/// The SDK sends a failed batch again, byte for byte: while both copies
/// wait in the spool, the backend gets the write once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_waiting_writes_are_delivered_once() {
    let mut backend = Backend::down(None);
    let sc = start(&backend, "").await;
    let body = add_step_with(vec![("d".to_string(), "same".to_string())]);
    for _ in 0..3 {
        let a = client::post_json(sc.addr, "/api/graphql", &body).await;
        assert_acked(&a);
        assert!(spooled(&a));
    }
    // A different version in between is a different write.
    assert_acked(&write(sc.addr, "d", "other").await);
    assert_acked(&write(sc.addr, "d", "same").await);
    let s = client::get(sc.admin, "/spool").await.json();
    assert_eq!(s["depth"], 3, "{s}");
    assert_eq!(s["deduplicated"], 2, "{s}");
    backend.up().await;
    backend
        .wait_for(Duration::from_secs(10), "three versions", |st| {
            st.applied.iter().filter(|(id, _)| id == "d").count() >= 3
        })
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(versions(&backend.applied(), "d"), ["same", "other", "same"]);
    let m = client::get(sc.admin, "/metrics").await.text();
    assert_eq!(
        sample(&m, "datalayer_sidecar_spool_deduplicated_total"),
        Some(2.0),
        "{m}"
    );
    sc.stop().await;
}

/// The largest of the store's files together while `f` runs, sampled.
async fn disk_peak<F: std::future::Future>(path: &std::path::Path, f: F) -> (F::Output, u64) {
    let path = path.to_path_buf();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let s = stop.clone();
    let sampler = tokio::task::spawn_blocking(move || {
        let size = |suffix: &str| {
            std::fs::metadata(format!("{}{suffix}", path.display())).map_or(0, |m| m.len())
        };
        let mut peak = 0;
        while !s.load(std::sync::atomic::Ordering::SeqCst) {
            peak = peak.max(size("") + size("-wal") + size("-shm"));
            std::thread::sleep(Duration::from_millis(5));
        }
        peak
    });
    let out = f.await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    (out, sampler.await.unwrap())
}

/// A sustained burst with the backend down: the store's files stay within
/// `spool.max_bytes` plus the write-ahead log's 64 MiB bound, and past it
/// writes get a structured `spool_full`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_with_the_backend_down_keeps_the_spool_within_its_disk_bound() {
    const MIB: u64 = 1024 * 1024;
    let backend = Backend::down(None);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("spool.sqlite3");
    let text = settings(&spool_section(dir.path(), "max_bytes = \"96MiB\"")).replace(
        "on_failure = \"spool\"",
        "on_failure = \"spool\"\nmode = \"write_behind\"",
    );
    let sc = Sidecar::start_in(config(&backend.url(), &text), dir).await;
    let filler = "y".repeat(16 * 1024);
    let (refused, peak) = disk_peak(&path, async {
        let mut writers = Vec::new();
        for w in 0..16 {
            let (addr, filler) = (sc.addr, filler.clone());
            writers.push(tokio::spawn(async move {
                for i in 0..1000 {
                    let a = write(addr, &format!("w{w}-{i}"), &filler).await;
                    if a.status != 200 {
                        return Some(a);
                    }
                }
                None
            }));
        }
        let mut refused = Vec::new();
        for w in writers {
            refused.extend(w.await.unwrap());
        }
        refused
    })
    .await;
    assert!(!refused.is_empty(), "the burst outgrew 96 MiB");
    for a in &refused {
        assert_eq!(a.status, 503, "{}", a.text());
        let code = &a.json()["errors"][0]["extensions"]["code"];
        assert_eq!(code, "spool_full", "{}", a.text());
    }
    assert!(
        peak <= 96 * MIB + 64 * MIB,
        "the store's files peaked at {} MiB",
        peak / MIB
    );
    let s = client::get(sc.admin, "/spool").await.json();
    assert!(
        s["disk"]["disk_high_water_bytes"].as_u64().unwrap() <= 160 * MIB,
        "{s}"
    );
    sc.stop().await;
}
