//! Batched step writes, alias by alias: a write of several steps is stored
//! as one entry per step; the replay worker joins waiting steps into one
//! batched request and settles each alias's answer on its own; a live
//! write whose answer is partial spools only the aliases still open.

mod support;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use support::backend::{AliasFault, AliasReply, Backend, REFUSE, RequestFault, State};
use support::client::{self, add_step_with, sample};
use support::proxy::{config, config_text, spooled_route};
use support::{Answer, Process, Reply, Sidecar};

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

fn steps(list: &[(&str, &str)]) -> serde_json::Value {
    add_step_with(
        list.iter()
            .map(|(id, c)| (id.to_string(), c.to_string()))
            .collect(),
    )
}

async fn write(addr: std::net::SocketAddr, list: &[(&str, &str)]) -> Answer {
    client::post_json(addr, "/api/graphql", &steps(list)).await
}

fn acked(a: &Answer) -> bool {
    let j = a.json();
    a.status == 200
        && a.header("x-sidecar-spooled") == Some("true")
        && j["data"]
            .as_object()
            .is_some_and(|d| d.values().all(|v| v["ok"] == true))
}

/// Versions of each step in the order the backend applied them.
fn assert_in_order(state: &State) {
    let mut seen: HashMap<&str, u32> = HashMap::new();
    for (id, content) in &state.applied {
        let v: u32 = content
            .rsplit('v')
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        if let Some(prev) = seen.get(id.as_str()) {
            assert!(v >= *prev, "{id}: v{v} applied after v{prev}");
        }
        seen.insert(id, v);
    }
}

/// Writes of 40 steps (some steps written two or three times) wait while
/// the backend is down; when it comes back they reach it in a handful of
/// batched requests — never two versions of one step in one request — and
/// each step ends on its last version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_steps_are_replayed_in_batched_requests_in_order() {
    let mut backend = Backend::down(None);
    let sc = start(&backend, "replay_batch = 25").await;
    let mut last = HashMap::new();
    let mut stored = 0usize;
    for round in 1..=3u32 {
        for s in 0..40 {
            if round > 1 && s % round != 0 {
                continue;
            }
            stored += 1;
            let id = format!("step-{s}");
            let content = format!("{id} v{round}");
            let a = write(sc.addr, &[(&id, &content)]).await;
            assert!(acked(&a), "{}", a.text());
            last.insert(id, content);
        }
    }
    // The tries made while the backend refused connections: one per backoff
    // period, so as many as the writes above took time (more on a loaded
    // machine).
    let m = client::get(sc.admin, "/metrics").await.text();
    let made_while_down =
        sample(&m, "datalayer_sidecar_spool_replay_requests_total").unwrap_or(0.0);
    backend.up().await;
    let expected = last.clone();
    backend
        .wait_for(
            Duration::from_secs(20),
            "every step on its last version",
            |st| expected.iter().all(|(id, c)| st.steps.get(id) == Some(c)),
        )
        .await;
    let requests = {
        let st = backend.state.lock().unwrap();
        assert_in_order(&st);
        assert_eq!(
            st.applied.len(),
            stored,
            "each stored write applied once: {:?}",
            st.batches
        );
        for batch in &st.batches {
            let mut ids = batch.clone();
            ids.sort();
            ids.dedup();
            assert_eq!(
                ids.len(),
                batch.len(),
                "two versions of a step in one request: {batch:?}"
            );
            assert!(
                batch.len() <= 25,
                "spool.replay_batch is 25: {}",
                batch.len()
            );
        }
        let requests = st.batches.len();
        assert!(
            requests <= 10,
            "{stored} writes took {requests} requests: {:?}",
            st.batches.iter().map(Vec::len).collect::<Vec<_>>()
        );
        requests
    };
    // The worker counts a delivery once it has committed its removal, a
    // moment after the backend applied it.
    let delivered = "datalayer_sidecar_spool_replays_total{outcome=\"delivered\"}";
    let mut m = String::new();
    for _ in 0..500 {
        m = client::get(sc.admin, "/metrics").await.text();
        if sample(&m, delivered) == Some(stored as f64) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(sample(&m, delivered), Some(stored as f64));
    let made =
        sample(&m, "datalayer_sidecar_spool_replay_requests_total").unwrap() - made_while_down;
    assert!(
        made >= requests as f64 && made <= (requests + 3) as f64,
        "{made} made after the backend came back vs {requests} it received"
    );
}

/// `spool.replay_batch = 1` sends each entry on its own, as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_batch_one_sends_each_entry_alone() {
    let mut backend = Backend::down(None);
    let sc = start(&backend, "replay_batch = 1").await;
    for s in 0..12 {
        let id = format!("solo-{s}");
        assert!(acked(&write(sc.addr, &[(&id, "v1")]).await));
    }
    backend.up().await;
    backend
        .wait_for(Duration::from_secs(10), "all 12", |st| st.steps.len() == 12)
        .await;
    let st = backend.state.lock().unwrap();
    assert!(st.batches.iter().all(|b| b.len() == 1), "{:?}", st.batches);
}

/// A deep queue is read a window at a time, not once per delivery: on the
/// shared store every read is a claim that sends again each entry the
/// replica already holds, so reading per delivery multiplied the
/// database's work per step.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deep_queue_is_read_a_window_at_a_time_not_once_per_delivery() {
    // Sixteen requests of forty steps in flight; a read takes up to twice
    // that, 1,280 entries, and each later one at least 600 more, so three
    // reads cover the queue. Reading whenever fewer than a full window
    // waited, with 256 entries more per read, took 6–8 reads here, and one
    // per delivery where deliveries end one at a time.
    deep_queue_reads(2400, 40, 3).await;
    // One step per request: a read takes 16 + 256 entries, each later one
    // at least 240 more. Two windows (32 entries) would be a read per
    // sixteen deliveries, 75 here.
    deep_queue_reads(1200, 1, 5).await;
}

/// Drain `steps` waiting entries, sixteen requests of `batch` at a time,
/// and check the queue was read at most `allowed` times, once more for the
/// breaker's probes (the backend was down, so the breaker is open or
/// probing when it returns, and the probes read only what they need), and
/// once more per 5 s, when the worker reads it again anyway.
async fn deep_queue_reads(steps: usize, batch: usize, allowed: u32) {
    let mut backend = Backend::down(None);
    let sc = start(
        &backend,
        &format!("replay_batch = {batch}\nreplay_concurrency = 16"),
    )
    .await;
    for chunk in 0..steps / 20 {
        let ids: Vec<String> = (0..20).map(|i| format!("deep-{chunk}-{i}")).collect();
        let list: Vec<(&str, &str)> = ids.iter().map(|id| (id.as_str(), "v1")).collect();
        assert!(acked(&write(sc.addr, &list).await));
    }
    let reads = || async {
        let m = client::get(sc.admin, "/metrics").await.text();
        sample(&m, "datalayer_sidecar_spool_queue_reads_total").expect("the queue reads counter")
    };
    let t0 = tokio::time::Instant::now();
    let before = reads().await;
    backend.up().await;
    backend
        .wait_for(Duration::from_secs(30), "every step", |st| {
            st.steps.len() == steps
        })
        .await;
    let reads = reads().await - before;
    let requests = backend.state.lock().unwrap().batches.len();
    let allowed = f64::from(allowed) + 1.0 + (t0.elapsed().as_secs_f64() / 5.0).ceil();
    assert!(
        reads <= allowed,
        "{reads} reads of the queue (at most {allowed}) for {steps} entries in {requests} requests of up to {batch}"
    );
}

/// A write of three steps stored while the backend is down becomes three
/// entries, one per step, each holding only its own field and variables.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batched_write_is_stored_as_one_entry_per_step() {
    let mut backend = Backend::down(None);
    let sc = start(&backend, "replay_batch = 1\nreplay_concurrency = 1").await;
    let a = write(sc.addr, &[("x", "x v1"), ("y", "y v1"), ("z", "z v1")]).await;
    assert!(acked(&a), "{}", a.text());
    assert_eq!(a.json()["data"].as_object().unwrap().len(), 3);
    let s = client::get(sc.admin, "/spool").await.json();
    assert_eq!(s["depth"], 3, "{s}");
    backend.up().await;
    backend
        .wait_for(Duration::from_secs(10), "the three steps", |st| {
            st.steps.len() == 3
        })
        .await;
    let st = backend.state.lock().unwrap();
    // Replayed one request at a time (replay_batch = 1, concurrency 1), so
    // each entry holds one step, in the order the app wrote them.
    assert_eq!(
        st.batches,
        vec![vec!["x".to_string()], vec!["y".into()], vec!["z".into()]]
    );
}

/// On replay, each alias of a joined request is settled on its own: the
/// steps the backend took are delivered, the one it refuses for its
/// content is dead-lettered with its own answer, the one that fails
/// transiently is sent again (alone) until it goes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_answers_on_replay_settle_each_entry() {
    let flaky: AliasFault = Arc::new(|id, seen| {
        (id == "r-flaky" && seen < 2).then(|| AliasReply::NotOk("database busy".into()))
    });
    let mut backend = Backend::down(None).with_alias_fault(flaky);
    let sc = start(&backend, "").await;
    let mut ids = Vec::new();
    for s in 0..8 {
        let id = format!("r-{s}");
        assert!(acked(&write(sc.addr, &[(&id, "v1")]).await));
        ids.push(id);
    }
    assert!(acked(&write(sc.addr, &[("r-flaky", "v1")]).await));
    assert!(acked(
        &write(sc.addr, &[("r-bad", &format!("{REFUSE} v1"))]).await
    ));
    backend.up().await;
    backend
        .wait_for(Duration::from_secs(15), "the flaky step too", |st| {
            st.steps.contains_key("r-flaky")
        })
        .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let s = client::get(sc.admin, "/spool").await.json();
        if s["depth"] == 0 && s["dead_letters"] == 1 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{s}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    {
        let st = backend.state.lock().unwrap();
        for id in &ids {
            assert_eq!(st.steps.get(id).map(String::as_str), Some("v1"));
        }
        assert!(!st.steps.contains_key("r-bad"), "refused, never applied");
        // The good steps went joined, not one by one: in one request, or
        // two when a delivery that was under way while the backend came up
        // took one of them ahead of the rest.
        let carrying = st
            .batches
            .iter()
            .filter(|b| b.iter().any(|i| ids.contains(i)))
            .count();
        assert!(carrying <= 2, "{:?}", st.batches);
        // Each good step was applied once: its alias was not sent again.
        for id in &ids {
            let n = st.applied.iter().filter(|(i, _)| i == id).count();
            assert_eq!(n, 1, "{id} applied {n} times");
        }
    }
    let dead = client::get(sc.admin, "/spool").await.json();
    assert_eq!(dead["dead_letters"], 1);
}

/// A joined request the backend refuses as a whole for its content (a
/// 400) dead-letters nothing: its entries go again one by one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joined_request_refused_as_a_whole_is_sent_again_entry_by_entry() {
    // Every request of more than one step is refused, once.
    let refused = Arc::new(AtomicBool::new(false));
    let r = refused.clone();
    let fault: RequestFault = Arc::new(move |ids| {
        (ids.len() > 1 && !r.swap(true, Ordering::SeqCst)).then(|| {
            Reply::json(
                400,
                serde_json::json!({"errors": [{"message": "request too complex"}]}),
            )
        })
    });
    let mut backend = Backend::down(None).with_request_fault(fault);
    let sc = start(&backend, "").await;
    for s in 0..6 {
        let id = format!("w-{s}");
        assert!(acked(&write(sc.addr, &[(&id, "v1")]).await));
    }
    backend.up().await;
    backend
        .wait_for(Duration::from_secs(10), "all six", |st| st.steps.len() == 6)
        .await;
    let s = client::get(sc.admin, "/spool").await.json();
    assert_eq!(s["dead_letters"], 0, "{s}");
    let st = backend.state.lock().unwrap();
    let at = st
        .batches
        .iter()
        .position(|b| b.len() > 1)
        .expect("a joined request");
    let joined = st.batches[at].clone();
    for id in &joined {
        assert!(
            st.batches[at + 1..].contains(&vec![id.clone()]),
            "{id} sent again on its own: {:?}",
            st.batches
        );
    }
}

/// A live write of three steps: the backend takes one, refuses one for
/// good, and keeps failing the third transiently. The app gets the first
/// as the backend answered, the refusal as the backend said it, and the
/// third as spooled; only the third is stored, and it is delivered when
/// the backend takes it — the first is never written twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partial_live_answer_spools_only_the_open_aliases() {
    let failing = Arc::new(AtomicBool::new(true));
    let f = failing.clone();
    let fault: AliasFault = Arc::new(move |id, _| {
        (id == "p-open" && f.load(Ordering::SeqCst))
            .then(|| AliasReply::Error("INTERNAL_SERVER_ERROR".into()))
    });
    let mut backend = Backend::down(None).with_alias_fault(fault);
    backend.up().await;
    let sc = start(&backend, "").await;
    let a = write(
        sc.addr,
        &[
            ("p-ok", "v1"),
            ("p-open", "v1"),
            ("p-bad", &format!("{REFUSE} v1")),
        ],
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(a.header("x-sidecar-spooled"), Some("partial"));
    let j = a.json();
    assert_eq!(
        j["data"]["step0"],
        serde_json::json!({"ok": true, "message": "Step ingested"})
    );
    assert_eq!(j["data"]["step1"]["ok"], true, "{j}");
    assert_eq!(
        j["data"]["step2"]["ok"], false,
        "the refusal, as the backend said: {j}"
    );
    assert!(
        j.get("errors").is_none(),
        "the spooled alias's error is gone: {j}"
    );
    let s = client::get(sc.admin, "/spool").await.json();
    assert_eq!(s["depth"], 1, "only the open alias is stored: {s}");
    failing.store(false, Ordering::SeqCst);
    backend
        .wait_for(Duration::from_secs(10), "the open alias", |st| {
            st.steps.contains_key("p-open")
        })
        .await;
    let st = backend.state.lock().unwrap();
    assert_eq!(
        st.applied.iter().filter(|(i, _)| i == "p-ok").count(),
        1,
        "the settled alias is not written twice"
    );
    assert!(!st.steps.contains_key("p-bad"));
}

/// The sidecar is SIGKILLed while a joined replay is in flight: the backend
/// has applied some of its aliases (one failed) but not yet answered.
/// After a restart the same entries
/// are delivered again (a repeat of an upsert is harmless), later versions
/// still arrive after earlier ones, and every step ends on the version the
/// app wrote last.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_during_a_partial_replay_loses_nothing_and_keeps_order() {
    let flaky: AliasFault =
        Arc::new(|id, seen| (id == "c-3" && seen == 0).then(|| AliasReply::NotOk("busy".into())));
    let mut backend = Backend::down(None).with_alias_fault(flaky);
    let dir = tempfile::tempdir().unwrap();
    let cfg = config_text(
        &backend.url(),
        &settings("[spool]\nreplay_concurrency = 2\nreplay_backoff_base = \"20ms\""),
    );
    let mut p = Process::spawn_at(dir.path(), &cfg, &[], &[]).await;
    let mut last = HashMap::new();
    for v in 1..=2 {
        for s in 0..20 {
            let id = format!("c-{s}");
            let content = format!("{id} v{v}");
            let a = write(p.addr, &[(&id, &content)]).await;
            assert!(acked(&a), "{}", a.text());
            last.insert(id, content);
        }
    }
    // The backend applies what it gets, then takes 3 s to answer.
    backend
        .answer_delay_ms
        .store(3000, std::sync::atomic::Ordering::SeqCst);
    backend.up().await;
    backend
        .wait_for(Duration::from_secs(10), "a joined replay applied", |st| {
            st.applied.len() >= 2
        })
        .await;
    p.signal("KILL");
    p.wait_exit(Duration::from_secs(10)).await;
    let applied_before = backend.state.lock().unwrap().applied.len();
    backend
        .answer_delay_ms
        .store(0, std::sync::atomic::Ordering::SeqCst);
    let _p2 = Process::spawn_at(dir.path(), &cfg, &[], &[]).await;
    let expected = last.clone();
    backend
        .wait_for(
            Duration::from_secs(30),
            "every step on its last version",
            |st| expected.iter().all(|(id, c)| st.steps.get(id) == Some(c)),
        )
        .await;
    let st = backend.state.lock().unwrap();
    assert_in_order(&st);
    assert!(
        st.applied.len() > applied_before,
        "delivered again after the restart"
    );
}
