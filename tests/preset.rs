//! Protected out of the box: with no `[[routes]]`, the LiteralAI preset
//! retries, spools and orders step and thread writes; every request is
//! answered within its deadline, waiting for an upstream slot included; and
//! `/readyz` says ready only once start-up is over.

mod support;

use std::time::Duration;

use support::backend::Backend;
use support::client::{self, add_step_with, query, upsert_thread};
use support::proxy::{Process, free_port};
use support::{Answer, FakeUpstream, Reply, Sidecar};

/// What an operator writes when trying the sidecar: the upstream and the
/// spool's path, nothing else (the test harness picks the ports).
fn minimal(upstream: &str, dir: &std::path::Path) -> String {
    format!(
        "[upstream]\nurl = \"{upstream}\"\n[spool]\npath = \"{}\"\n",
        dir.join("spool.sqlite3").display()
    )
}

async fn start_minimal(backend: &Backend) -> Sidecar {
    let dir = tempfile::tempdir().unwrap();
    let cfg = datalayer_sidecar::config::Config::from_toml_str(
        &minimal(&backend.url(), dir.path()),
        std::path::Path::new("minimal.toml"),
        &[],
        &Default::default(),
    )
    .unwrap();
    Sidecar::start_in(cfg, dir).await
}

fn spooled(a: &Answer) -> bool {
    a.header("x-sidecar-spooled") == Some("true")
}

async fn gql(sc: &Sidecar, body: &serde_json::Value) -> Answer {
    client::post_json(sc.addr, "/api/graphql", body).await
}

fn step(id: &str, content: &str) -> serde_json::Value {
    add_step_with(vec![(id.to_string(), content.to_string())])
}

fn delete_step(id: &str) -> serde_json::Value {
    serde_json::json!({
        "query": "mutation DeleteStep($id: String!) { deleteStep(id: $id) { id } }",
        "variables": {"id": id},
    })
}

/// The SDK's `DeleteThread`, which names its variable `thread_id`.
fn delete_thread(id: &str) -> serde_json::Value {
    serde_json::json!({
        "query": "mutation DeleteThread($thread_id: String!) { deleteThread(id: $thread_id) { id } }",
        "variables": {"thread_id": id},
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_minimal_config_spools_step_and_thread_writes_while_the_backend_is_down() {
    let mut backend = Backend::down(None);
    let sc = start_minimal(&backend).await;

    let a = gql(&sc, &step("s1", "hello")).await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert!(spooled(&a), "acknowledged from the spool");
    assert_eq!(a.json()["data"]["step0"]["ok"], true);

    // Chainlit's update_thread: the SDK parses the answer into a Thread.
    let a = gql(
        &sc,
        &upsert_thread("t1", Some("First question"), Some("u1")),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert!(spooled(&a));
    let t = &a.json()["data"]["upsertThread"];
    assert_eq!(t["id"], "t1");
    assert_eq!(t["name"], "First question");
    assert!(t["participant"].is_null());

    let a = gql(&sc, &delete_step("s-gone")).await;
    assert!(spooled(&a), "{}", a.text());
    assert_eq!(a.json()["data"]["deleteStep"]["id"], "s-gone");

    backend.up().await;
    backend
        .wait_for(Duration::from_secs(30), "step and thread delivered", |st| {
            st.steps.get("s1").map(String::as_str) == Some("hello")
                && st.threads.get("t1") == Some(&(Some("First question".into()), Some("u1".into())))
        })
        .await;
    sc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_of_one_step_or_thread_reach_the_backend_in_order_whatever_their_kind() {
    let mut backend = Backend::down(None);
    let sc = start_minimal(&backend).await;
    // In the order the app sends them; each acknowledged before the next.
    let writes = [
        step("s", "v1"),
        upsert_thread("t", Some("A"), Some("u")),
        upsert_thread("t2", Some("doomed"), None),
        delete_step("s"),
        step("x", "other"),
        delete_thread("t2"),
        step("s", "v2"),
        upsert_thread("t", Some("B"), None),
        step("y", "after the barrier"),
    ];
    for w in &writes {
        let a = gql(&sc, w).await;
        assert_eq!(a.status, 200, "{}", a.text());
        assert!(spooled(&a), "{}", a.text());
    }
    backend.up().await;
    backend
        .wait_for(Duration::from_secs(30), "every write delivered", |st| {
            st.log.len() >= writes.len()
        })
        .await;
    let log = backend.log();
    let pos = |entry: &str| {
        log.iter()
            .position(|l| l == entry)
            .unwrap_or_else(|| panic!("{entry} not in {log:?}"))
    };
    // Per key, in acknowledgement order.
    assert!(pos("step:s=v1") < pos("delete step:s"), "{log:?}");
    assert!(pos("delete step:s") < pos("step:s=v2"), "{log:?}");
    assert!(pos("thread:t=A") < pos("thread:t=B"), "{log:?}");
    // The barrier: after everything before it, before everything after it.
    let barrier = pos("delete thread:t2");
    for before in [
        "step:s=v1",
        "thread:t=A",
        "thread:t2=doomed",
        "delete step:s",
        "step:x=other",
    ] {
        assert!(pos(before) < barrier, "{before} after the barrier: {log:?}");
    }
    for after in ["step:s=v2", "thread:t=B", "step:y=after the barrier"] {
        assert!(barrier < pos(after), "{after} before the barrier: {log:?}");
    }
    assert_eq!(backend.steps().get("s").map(String::as_str), Some("v2"));
    let threads = backend.threads();
    assert_eq!(
        threads.get("t"),
        Some(&(Some("B".into()), Some("u".into())))
    );
    assert!(!threads.contains_key("t2"));
    sc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_is_answered_within_its_deadline_waiting_for_a_slot_included() {
    // One upstream slot, taken by requests to a backend that never answers.
    let up = FakeUpstream::start(|_, _| Reply::Hang).await;
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "[upstream]\nurl = \"{}\"\nmax_concurrent_requests = 1\n[spool]\npath = \"{}\"\n[timeouts]\nper_try = \"1s\"\ndeadline = \"2s\"\n[breaker]\nenabled = false\n",
        up.url(),
        dir.path().join("spool.sqlite3").display()
    );
    let cfg = datalayer_sidecar::config::Config::from_toml_str(
        &text,
        std::path::Path::new("t.toml"),
        &[],
        &Default::default(),
    )
    .unwrap();
    let sc = Sidecar::start_in(cfg, dir).await;
    let started = tokio::time::Instant::now();
    let mut tasks = Vec::new();
    for i in 0..6 {
        let addr = sc.addr;
        tasks.push(tokio::spawn(async move {
            let a = client::post_json(addr, "/api/graphql", &step(&format!("s{i}"), "x")).await;
            ("write", a, started.elapsed())
        }));
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let addr = sc.addr;
    tasks.push(tokio::spawn(async move {
        let a = client::post_json(addr, "/api/graphql", &query()).await;
        ("query", a, started.elapsed())
    }));
    let addr = sc.addr;
    tasks.push(tokio::spawn(async move {
        let a = client::get(addr, "/api/other").await;
        ("get", a, started.elapsed())
    }));
    for t in tasks {
        let (what, a, took) = t.await.unwrap();
        // 2 s deadline, started up to 100 ms late, plus scheduling slack.
        assert!(
            took < Duration::from_millis(2400),
            "{what} answered after {took:?}: {}",
            a.text()
        );
        match what {
            "write" => {
                assert_eq!(a.status, 200, "{}", a.text());
                assert!(spooled(&a), "a write that cannot get a slot is spooled");
            }
            "query" => {
                assert_eq!(a.status, 504, "{}", a.text());
                let code = &a.json()["errors"][0]["extensions"]["code"];
                assert_eq!(code, "deadline_exceeded", "{}", a.text());
            }
            _ => {
                assert_eq!(a.status, 504, "{}", a.text());
                assert_eq!(a.header("content-type"), Some("application/problem+json"));
                assert_eq!(a.json()["code"], "deadline_exceeded");
            }
        }
    }
    sc.stop().await;
}

/// A spool big enough that opening and checking it takes a moment.
async fn big_spool(path: &std::path::Path) {
    use datalayer_sidecar::spool::store::{NewEntry, Store};
    let store = Store::open(path, false, 256, Default::default()).unwrap();
    let body = bytes::Bytes::from(vec![b'x'; 256 * 1024]);
    let mut tasks = Vec::new();
    for t in 1..=800u64 {
        let store = store.clone();
        let body = body.clone();
        tasks.push(tokio::spawn(async move {
            store
                .append(NewEntry {
                    ticket: t,
                    route: "spooled_writes".into(),
                    request_id: format!("r{t}"),
                    method: "POST".into(),
                    path: "/api/graphql".into(),
                    headers: Vec::new(),
                    body,
                    keys: vec![format!("step:s{t}")],
                    dedup: true,
                })
                .await
                .unwrap()
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_says_ready_only_once_start_up_is_over() {
    let dir = tempfile::tempdir().unwrap();
    big_spool(&dir.path().join("spool.sqlite3")).await;
    let backend = Backend::down(None);
    let admin = free_port();
    let listen = free_port();
    // Fixed ports, so the probe knows where to ask from the first moment.
    let mut p = Process::start_on(
        dir.path(),
        &format!(
            "[upstream]\nurl = \"{}\"\n[spool]\npath = \"spool.sqlite3\"\nmax_bytes = \"2GiB\"\n",
            backend.url()
        ),
        &[],
        &[],
        listen,
        admin,
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut phases = Vec::new();
    loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never ready: {phases:?}\n{}",
            p.logs()
        );
        if let Ok(Ok(_)) = tokio::time::timeout(
            Duration::from_millis(200),
            tokio::net::TcpStream::connect(admin),
        )
        .await
        {
            let a = client::get(admin, "/readyz").await;
            let phase = a.json()["phase"].as_str().unwrap_or_default().to_string();
            if phases.last() != Some(&phase) {
                phases.push(phase.clone());
            }
            if a.status == 200 {
                assert_eq!(phase, "serving");
                // Ready means ready: the data port accepts, the spool
                // answers, its entries are counted.
                tokio::net::TcpStream::connect(listen)
                    .await
                    .expect("data port open");
                let s = client::get(admin, "/spool").await;
                assert_eq!(s.status, 200, "{}", s.text());
                assert_eq!(s.json()["depth"], 800);
                break;
            }
            assert_eq!(a.status, 503);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(
        phases.iter().any(|p| p == "opening_spool"),
        "the probe saw the spool being opened: {phases:?}"
    );
    p.signal("TERM");
    p.wait_exit(Duration::from_secs(30)).await;
}
