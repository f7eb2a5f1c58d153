//! The promise where features meet: batches, partial answers, joined
//! replays, backend-chosen waits, refusals of everything, hot keys. Each
//! test is a write the sidecar acknowledged that was once lost, overwritten
//! by an older version, or stuck.

mod support;

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use support::backend::{AliasFault, AliasReply, Backend, RequestFault};
use support::client::{self, add_step_with};
use support::proxy::{config, spooled_route};
use support::{Answer, Reply, Sidecar};

/// A spooling sidecar with short timeouts; `extra` goes before the route.
async fn start(backend: &Backend, extra: &str) -> Sidecar {
    let dir = tempfile::tempdir().unwrap();
    let spool = if extra.contains("[spool]") {
        extra.replace(
            "[spool]",
            &format!(
                "[spool]\npath = \"{}\"",
                dir.path().join("spool.sqlite3").display()
            ),
        )
    } else {
        format!(
            "[spool]\npath = \"{}\"\n{extra}",
            dir.path().join("spool.sqlite3").display()
        )
    };
    let text = format!(
        "[timeouts]\nper_try = \"500ms\"\ndeadline = \"2s\"\n[retry]\nbackoff_base = \"10ms\"\nbackoff_max = \"50ms\"\nmin_attempt_time = \"10ms\"\njitter = 0.0\n{spool}\n{}",
        spooled_route(
            "idempotent = true\non_failure = \"spool\"\ntimeouts = { per_try = \"300ms\" }\nretry = { max_attempts = 2 }"
        )
    );
    Sidecar::start_in(config(&backend.url(), &text), dir).await
}

async fn write(addr: std::net::SocketAddr, list: &[(&str, &str)]) -> Answer {
    let body = add_step_with(
        list.iter()
            .map(|(id, c)| (id.to_string(), c.to_string()))
            .collect(),
    );
    client::post_json(addr, "/api/graphql", &body).await
}

async fn spool(sc: &Sidecar) -> serde_json::Value {
    client::get(sc.admin, "/spool").await.json()
}

/// Wait until `/spool` satisfies `pred`, or fail with what it said.
async fn wait_spool(sc: &Sidecar, within: Duration, pred: impl Fn(&serde_json::Value) -> bool) {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let s = spool(sc).await;
        if pred(&s) {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "spool: {s}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Defect 1: a step that only ever failed transiently — `ok:false, "db
/// busy"` inside a joined replay, then 503 when the retry layer sent it
/// alone — was dead-lettered, because the worker judged the merged answer
/// again and took the retry layer's own per-alias error for a refusal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joined_replay_keeps_a_step_that_only_failed_transiently() {
    let failing = Arc::new(AtomicBool::new(true));
    let f = failing.clone();
    let alias: AliasFault = Arc::new(move |id, _| {
        (id == "victim" && f.load(Ordering::SeqCst)).then(|| AliasReply::NotOk("db busy".into()))
    });
    let f = failing.clone();
    let alone: RequestFault = Arc::new(move |ids| {
        (ids == ["victim".to_string()] && f.load(Ordering::SeqCst))
            .then(|| Reply::text(503, "busy"))
    });
    let mut backend = Backend::down(None)
        .with_alias_fault(alias)
        .with_request_fault(alone);
    let sc = start(
        &backend,
        "[breaker]\nenabled = false\n[spool]\nreplay_backoff_base = \"4s\"\nreplay_backoff_max = \"4s\"",
    )
    .await;
    let a = write(
        sc.addr,
        &[("a", "a v1"), ("b", "b v1"), ("victim", "victim v1")],
    )
    .await;
    assert_eq!(a.header("x-sidecar-spooled"), Some("true"), "{}", a.text());
    wait_spool(&sc, Duration::from_secs(5), |s| s["depth"] == 3).await;
    backend.up().await;
    backend
        .wait_for(Duration::from_secs(10), "a and b", |st| {
            st.steps.contains_key("a") && st.steps.contains_key("b")
        })
        .await;
    // The joined delivery and its retry of `victim` alone are over.
    wait_spool(&sc, Duration::from_secs(5), |s| s["depth"] == 1).await;
    let s = spool(&sc).await;
    assert_eq!(
        s["dead_letters"], 0,
        "a transient failure is not a refusal: {s}"
    );
    failing.store(false, Ordering::SeqCst);
    backend
        .wait_for(Duration::from_secs(15), "victim delivered", |st| {
            st.steps.get("victim").map(String::as_str) == Some("victim v1")
        })
        .await;
    wait_spool(&sc, Duration::from_secs(5), |s| {
        s["depth"] == 0 && s["dead_letters"] == 0
    })
    .await;
    sc.stop().await;
}

/// Defect 2: one AddStep names step `s` twice, `v1` then `v2`. The backend
/// keeps failing `v1` and takes `v2`; the spool stored only `v1`, whose
/// replay then overwrote `v2`. Every later version of a step whose earlier
/// version stays open is stored after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_later_version_in_a_partly_answered_batch_is_not_overwritten_by_the_earlier() {
    let failing = Arc::new(AtomicBool::new(true));
    let f = failing.clone();
    // In every request `s` appears as v1 then v2: fail each first one.
    let alias: AliasFault = Arc::new(move |id, seen| {
        (id == "s" && seen % 2 == 0 && f.load(Ordering::SeqCst))
            .then(|| AliasReply::NotOk("db busy".into()))
    });
    let mut backend = Backend::down(None).with_alias_fault(alias);
    backend.up().await;
    let sc = start(&backend, "").await;
    let a = write(sc.addr, &[("s", "s v1"), ("t", "t v1"), ("s", "s v2")]).await;
    assert_eq!(a.status, 200, "{}", a.text());
    let j = a.json();
    for k in ["step0", "step1", "step2"] {
        assert_eq!(j["data"][k]["ok"], true, "{j}");
    }
    failing.store(false, Ordering::SeqCst);
    wait_spool(&sc, Duration::from_secs(10), |s| s["depth"] == 0).await;
    let applied = backend.applied();
    let last_s = applied.iter().rev().find(|(id, _)| id == "s").cloned();
    assert_eq!(
        last_s.map(|(_, c)| c).as_deref(),
        Some("s v2"),
        "the step ends on the version the app sent last: {applied:?}"
    );
    assert_eq!(backend.steps()["s"], "s v2");
    sc.stop().await;
}

/// The backend answers 429 with `retry_after` while `on`, then takes writes.
fn rate_limited(retry_after: &'static str, on: Arc<AtomicBool>) -> support::backend::Fault {
    Arc::new(move |_, _| {
        on.load(Ordering::SeqCst)
            .then(|| Reply::text(429, "slow down").with_header("retry-after", retry_after))
    })
}

/// Defect 3: a `Retry-After` the worker cannot add to the clock killed it
/// (every later write acknowledged, stored and never sent, `/readyz`
/// still 200), and a day-long one stalled the queue for a day. On replay
/// a wait the backend asks for is capped by `spool.replay_backoff_max`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_the_backend_asks_for_on_replay_is_capped() {
    for retry_after in ["18446744073709551615", "86400"] {
        let limiting = Arc::new(AtomicBool::new(true));
        let mut backend = Backend::down(Some(rate_limited(retry_after, limiting.clone())));
        let sc = start(
            &backend,
            "[breaker]\nenabled = false\n[spool]\nreplay_backoff_base = \"100ms\"\nreplay_backoff_max = \"1s\"",
        )
        .await;
        let a = write(sc.addr, &[("waited", "waited v1")]).await;
        assert_eq!(a.header("x-sidecar-spooled"), Some("true"), "{}", a.text());
        backend.up().await;
        backend
            .wait_for(Duration::from_secs(5), "a replay answered 429", |st| {
                st.requests > 0
            })
            .await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        limiting.store(false, Ordering::SeqCst);
        // Within a few replay_backoff_max, not a day (nor never).
        backend
            .wait_for(
                Duration::from_secs(5),
                &format!("delivery after Retry-After: {retry_after}"),
                |st| st.steps.contains_key("waited"),
            )
            .await;
        // The worker is alive: a later write is delivered too.
        backend.take_down();
        let a = write(sc.addr, &[("later", "later v1")]).await;
        assert_eq!(a.header("x-sidecar-spooled"), Some("true"), "{}", a.text());
        backend.up().await;
        backend
            .wait_for(Duration::from_secs(5), "a later write delivered", |st| {
                st.steps.contains_key("later")
            })
            .await;
        assert_eq!(client::get(sc.admin, "/readyz").await.status, 200);
        sc.stop().await;
    }
}

/// `n` aliases of distinct steps, each with its own id variable.
fn wide(n: usize, tag: &str) -> serde_json::Value {
    add_step_with(
        (0..n)
            .map(|i| (format!("{tag}-{i}"), format!("{tag} v1")))
            .collect(),
    )
}

/// Defect 5: root fields were unbounded and several per-request paths
/// were quadratic in them (10,000 aliases took 1.9 s, 20,000 took 6.7 s).
/// A document is refused past `limits.max_root_fields`, with a structured
/// 400, and a document four times larger costs about four times as much:
/// quadratic paths made it nine to ten times.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn root_fields_are_bounded_and_cost_linear_time() {
    let backend = Backend::down(None);
    let sc = start(&backend, "[limits]\nmax_root_fields = 4000\n[spool]").await;
    // A first write makes the spool non-empty, so the measured ones are
    // stored at once rather than tried against the down backend.
    let a = write(sc.addr, &[("first", "first v1")]).await;
    assert_eq!(a.header("x-sidecar-spooled"), Some("true"), "{}", a.text());
    let took = |n: usize, round: usize| {
        let body = wide(n, &format!("w{n}-{round}"));
        async move {
            let t = tokio::time::Instant::now();
            let a = client::post_json(sc.addr, "/api/graphql", &body).await;
            assert_eq!(a.header("x-sidecar-spooled"), Some("true"), "{}", a.text());
            t.elapsed()
        }
    };
    let mut small = Duration::MAX;
    let mut large = Duration::MAX;
    for round in 0..3 {
        small = small.min(took(1000, round).await);
        large = large.min(took(4000, round).await);
    }
    assert!(
        large < small * 7,
        "4,000 aliases took {large:?}, 1,000 took {small:?}: not linear"
    );
    let over = client::post_json(sc.addr, "/api/graphql", &wide(4001, "over")).await;
    assert_eq!(over.status, 400, "{}", over.text());
    let j = over.json();
    assert_eq!(
        j["errors"][0]["extensions"]["code"], "too_many_root_fields",
        "{j}"
    );
    assert_eq!(j["errors"][0]["extensions"]["class"], "permanent", "{j}");
    assert!(
        j["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("limits.max_root_fields"),
        "{j}"
    );
    sc.stop().await;
}

/// The request ids, variables and fragments a client controls are bounded
/// too: too many variables is refused like too many root fields, and a
/// fragment spread repeated at every level cannot expand a small document
/// into millions of root fields.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn variables_and_fragment_expansion_are_bounded() {
    let backend = Backend::down(None);
    let sc = start(&backend, "[limits]\nmax_variables = 10\n[spool]").await;
    let a = client::post_json(sc.addr, "/api/graphql", &wide(6, "vars")).await;
    assert_eq!(a.status, 400, "{}", a.text());
    assert_eq!(
        a.json()["errors"][0]["extensions"]["code"],
        "too_many_variables"
    );
    // 2^16 root fields from a document of a few hundred bytes.
    let mut doc = String::from("mutation M { ...F0 } ");
    for i in 0..16 {
        doc.push_str(&format!(
            "fragment F{i} on Mutation {{ ...F{} ...F{} }} ",
            i + 1,
            i + 1
        ));
    }
    doc.push_str("fragment F16 on Mutation { ingestStep(id: \"x\") { ok } }");
    let t = tokio::time::Instant::now();
    let a = client::post_json(
        sc.addr,
        "/api/graphql",
        &serde_json::json!({ "query": doc }),
    )
    .await;
    assert_eq!(a.status, 400, "{}", a.text());
    assert_eq!(
        a.json()["errors"][0]["extensions"]["code"],
        "invalid_graphql_request"
    );
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    sc.stop().await;
}

/// An AddStep with the client's key.
async fn write_keyed(addr: std::net::SocketAddr, key: &str, id: &str, content: &str) -> Answer {
    let body = add_step_with(vec![(id.to_string(), content.to_string())]);
    client::send(
        addr,
        http::Request::post("/api/graphql")
            .header("content-type", "application/json")
            .header("x-api-key", key)
            .body(support::TestBody::full(body.to_string()))
            .unwrap(),
    )
    .await
}

/// Defect 6: a live step write that met a refusal of everything (401
/// while a key is being rotated) was answered 401 — a lost step and a
/// task exception in the app — while the worker paused on the very same
/// answer. Live and replay decide alike: the write is stored and
/// acknowledged, the queue pauses with the reason, and it resumes when
/// the backend takes writes again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_write_that_meets_a_refusal_of_everything_is_stored_and_pauses_the_queue() {
    let mut backend = Backend::down(None);
    *backend.api_key.lock().unwrap() = Some("rotating".into());
    backend.up().await;
    let sc = start(&backend, "").await;
    let a = write_keyed(sc.addr, "k1", "rot-1", "rot-1 v1").await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(a.header("x-sidecar-spooled"), Some("true"), "{}", a.text());
    assert_eq!(a.json()["data"]["step0"]["ok"], true);
    wait_spool(&sc, Duration::from_secs(5), |s| {
        s["paused"]["reason"] == "status_401"
    })
    .await;
    let m = client::get(sc.admin, "/metrics").await.text();
    assert_eq!(
        client::sample(&m, "datalayer_sidecar_spool_paused"),
        Some(1.0)
    );
    // The next write goes behind the paused queue: stored, acknowledged.
    let a = write_keyed(sc.addr, "k1", "rot-2", "rot-2 v1").await;
    assert_eq!(a.header("x-sidecar-spooled"), Some("true"), "{}", a.text());
    assert!(backend.steps().is_empty());
    // The backend takes the key again: a probe goes through, both arrive.
    *backend.api_key.lock().unwrap() = None;
    backend
        .wait_for(Duration::from_secs(15), "both steps", |st| {
            st.steps.len() == 2
        })
        .await;
    wait_spool(&sc, Duration::from_secs(5), |s| {
        s["depth"] == 0 && s["paused"].is_null() && s["dead_letters"] == 0
    })
    .await;
    sc.stop().await;
}

/// After a real rotation the stored entries carry the old key, which the
/// backend no longer takes: the operator sets `spool.api_key` to the new
/// key and reloads, and the paused queue drains with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_key_rotation_a_reloaded_spool_api_key_drains_the_queue() {
    use datalayer_sidecar::config::{Config, Overrides, Source};
    let mut backend = Backend::down(None);
    *backend.api_key.lock().unwrap() = Some("new-key".into());
    backend.up().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("sidecar.toml");
    let store = dir.path().join("spool.sqlite3");
    let url = backend.url();
    let text = move |api_key: &str| {
        support::proxy::config_text(
            &url,
            &format!(
                "[spool]\npath = \"{}\"\nreplay_backoff_base = \"50ms\"\nreplay_backoff_max = \"500ms\"\n{api_key}",
                store.display()
            ),
        )
    };
    std::fs::write(&file, text("")).unwrap();
    let cfg = Config::load(Some(&file), &Overrides::default()).unwrap();
    let opts = datalayer_sidecar::sidecar::Options {
        source: Some(Source {
            path: Some(file.clone()),
            overrides: Overrides::default(),
        }),
        ..Default::default()
    };
    let sc = Sidecar::start_opts(cfg, dir, opts).await;
    for i in 0..3 {
        let a = write_keyed(sc.addr, "old-key", &format!("k-{i}"), "v1").await;
        assert_eq!(a.header("x-sidecar-spooled"), Some("true"), "{}", a.text());
    }
    wait_spool(&sc, Duration::from_secs(5), |s| {
        s["depth"] == 3 && s["paused"]["reason"] == "status_401"
    })
    .await;
    // Nothing dead-lettered while the old key is refused.
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(spool(&sc).await["dead_letters"], 0);
    std::fs::write(&file, text("api_key = \"new-key\"")).unwrap();
    let r = client::post_json(sc.admin, "/reload", &serde_json::json!({})).await;
    assert_eq!(r.status, 200, "{}", r.text());
    backend
        .wait_for(Duration::from_secs(10), "the three steps", |st| {
            st.steps.len() == 3
        })
        .await;
    let keys = backend.state.lock().unwrap().keys.clone();
    assert_eq!(keys.last().map(String::as_str), Some("new-key"));
    wait_spool(&sc, Duration::from_secs(5), |s| {
        s["depth"] == 0 && s["paused"].is_null()
    })
    .await;
    sc.stop().await;
}

/// Defect 7: with a healthy backend, 32 connections writing one step had
/// most writes answered from the spool ("behind the queue", 0 attempts),
/// which then drained far slower than they came. Concurrent writes of one
/// key now wait in memory for the one ahead and go live; only what cannot
/// be delivered is stored. Each writer's versions reach the backend in the
/// order it wrote them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_of_one_step_wait_in_memory_and_go_live() {
    let mut backend = Backend::down(None);
    backend.up().await;
    let sc = Arc::new(start(&backend, "").await);
    let stop_at = tokio::time::Instant::now() + Duration::from_secs(2);
    let mut writers = Vec::new();
    for w in 0..32 {
        let sc = sc.clone();
        writers.push(tokio::spawn(async move {
            let (mut acked, mut spooled, mut i) = (0u32, 0u32, 0u32);
            while tokio::time::Instant::now() < stop_at {
                i += 1;
                let a = write(sc.addr, &[("hot", &format!("hot w{w:02} v{i:05}"))]).await;
                assert_eq!(a.status, 200, "{}", a.text());
                acked += 1;
                spooled += u32::from(a.header("x-sidecar-spooled").is_some());
            }
            (acked, spooled)
        }));
    }
    let (mut acked, mut spooled) = (0, 0);
    for w in writers {
        let (a, s) = w.await.unwrap();
        acked += a;
        spooled += s;
    }
    assert!(acked > 100, "{acked} writes in 2 s");
    assert!(
        spooled * 10 <= acked,
        "{spooled} of {acked} answered from the spool"
    );
    wait_spool(&sc, Duration::from_secs(5), |s| s["depth"] == 0).await;
    // Per writer, versions applied in the order written.
    let mut last: std::collections::HashMap<String, String> = Default::default();
    for (_, c) in backend.applied() {
        let (w, v) = c.rsplit_once(' ').unwrap();
        if let Some(prev) = last.get(w) {
            assert!(v > prev.as_str(), "{w}: {v} after {prev}");
        }
        last.insert(w.to_string(), v.to_string());
    }
    Arc::try_unwrap(sc).ok().unwrap().stop().await;
}

/// A spoolable write whose root field names no id is not spooled: it
/// cannot be ordered against other versions of what it writes, and
/// ordering it against everything would serialize all traffic. It is
/// delivered live, and a failure reaches the app as a structured error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_with_no_id_is_not_spooled() {
    let backend = Backend::down(None);
    let sc = start(&backend, "").await;
    let body = serde_json::json!({
        "query": "mutation AddStep($input: Json) { step0: ingestStep(input: $input) { ok message } }",
        "variables": {"input": {"id": "inside", "output": {"content": "x"}}}
    });
    let a = client::post_json(sc.addr, "/api/graphql", &body).await;
    assert_eq!(a.status, 503, "{}", a.text());
    assert!(a.header("x-sidecar-spooled").is_none(), "{}", a.text());
    assert!(a.json()["errors"][0]["extensions"]["code"].is_string());
    assert_eq!(spool(&sc).await["depth"], 0);
    sc.stop().await;
}

/// A step's spooled versions drain one after another, each once, never
/// two in one request: a version is sent only after the one before it is
/// delivered and its removal committed, so no crash or redelivery can make
/// the backend apply an older version after a newer one. (How fast this
/// goes, in a release build: `bench/hotkey.sh`, docs/benchmarks.md.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_steps_spooled_versions_drain_one_at_a_time_in_order() {
    let mut backend = Backend::down(None);
    let sc = start(&backend, "[spool]\nreplay_batch = 50").await;
    let n = 300;
    for v in 1..=n {
        let a = write(sc.addr, &[("one", &format!("one v{v:05}"))]).await;
        assert_eq!(a.header("x-sidecar-spooled"), Some("true"), "{}", a.text());
    }
    backend.up().await;
    let last = format!("one v{n:05}");
    backend
        .wait_for(Duration::from_secs(30), "the last version", |st| {
            st.steps.get("one") == Some(&last)
        })
        .await;
    {
        let st = backend.state.lock().unwrap();
        let versions: Vec<&str> = st.applied.iter().map(|(_, c)| c.as_str()).collect();
        assert!(
            versions.windows(2).all(|w| w[0] < w[1]),
            "in order: {versions:?}"
        );
        assert_eq!(versions.len(), n, "each version applied once");
        assert!(
            st.batches.iter().all(|b| b.len() == 1),
            "one version per request"
        );
    }
    sc.stop().await;
}

/// Defect 8: after an outage the queue slept out its backoff (up to
/// `spool.replay_backoff_max`) while live requests already succeeded. A
/// live answer that shows the backend is up wakes the worker: spooled
/// writes flow within a second of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_success_wakes_the_queue_from_its_backoff() {
    let mut backend = Backend::down(None);
    let sc = start(
        &backend,
        "[breaker]\nenabled = false\n[spool]\nreplay_backoff_base = \"2s\"\nreplay_backoff_max = \"30s\"",
    )
    .await;
    let a = write(sc.addr, &[("woken", "woken v1")]).await;
    assert_eq!(a.header("x-sidecar-spooled"), Some("true"), "{}", a.text());
    // Let the worker fail a few times, so its backoff is long.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    backend.up().await;
    // A live request (not spooled) that the backend answers.
    let q = client::post_json(sc.addr, "/api/graphql", &client::query()).await;
    assert_eq!(q.status, 200, "{}", q.text());
    let t = tokio::time::Instant::now();
    backend
        .wait_for(Duration::from_secs(20), "the spooled write", |st| {
            st.steps.contains_key("woken")
        })
        .await;
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "delivered {:?} after the first live success",
        t.elapsed()
    );
    sc.stop().await;
}

/// Review finding: a joined replay answered 200 with every alias `null`
/// (nothing confirmed) was taken for delivered — the answer had as many
/// members as aliases and no failure. A joined request is judged alias by
/// alias, always: its entries stay until each is confirmed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joined_replay_answered_without_confirmations_keeps_its_entries() {
    let lied = Arc::new(AtomicBool::new(false));
    let l = lied.clone();
    let nulls: RequestFault = Arc::new(move |ids| {
        (ids.len() > 1 && !l.swap(true, Ordering::SeqCst)).then(|| {
            let data: serde_json::Map<String, serde_json::Value> = (0..ids.len())
                .map(|k| (format!("a{k}"), serde_json::Value::Null))
                .collect();
            Reply::json(200, serde_json::json!({ "data": data }))
        })
    });
    let mut backend = Backend::down(None).with_request_fault(nulls);
    let sc = start(&backend, "[spool]\nreplay_concurrency = 1").await;
    for i in 0..4 {
        let a = write(sc.addr, &[(&format!("n-{i}"), "v1")]).await;
        assert_eq!(a.header("x-sidecar-spooled"), Some("true"), "{}", a.text());
    }
    backend.up().await;
    backend
        .wait_for(Duration::from_secs(10), "all four applied", |st| {
            st.steps.len() == 4
        })
        .await;
    assert!(
        lied.load(Ordering::SeqCst),
        "the joined request was answered with nulls"
    );
    sc.stop().await;
}

/// Review finding: inside a joined replay, the retry of one alias met a
/// refusal of everything (401): the alias was dead-lettered, where a
/// whole request meeting it pauses the queue. One rule decides both: the
/// entry stays, the queue pauses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_of_everything_on_the_retry_of_one_alias_pauses_and_dead_letters_nothing() {
    let refusing = Arc::new(AtomicBool::new(true));
    let f = refusing.clone();
    let alias: AliasFault = Arc::new(move |id, _| {
        (id == "e2" && f.load(Ordering::SeqCst)).then(|| AliasReply::NotOk("db busy".into()))
    });
    let f = refusing.clone();
    let alone: RequestFault = Arc::new(move |ids| {
        (ids == ["e2".to_string()] && f.load(Ordering::SeqCst))
            .then(|| Reply::json(401, serde_json::json!({"errors": [{"message": "bad key"}]})))
    });
    let mut backend = Backend::down(None)
        .with_alias_fault(alias)
        .with_request_fault(alone);
    let sc = start(
        &backend,
        "[breaker]\nenabled = false\n[spool]\nreplay_backoff_base = \"300ms\"\nreplay_backoff_max = \"1s\"",
    )
    .await;
    let a = write(sc.addr, &[("e1", "e1 v1"), ("e2", "e2 v1")]).await;
    assert_eq!(a.header("x-sidecar-spooled"), Some("true"), "{}", a.text());
    backend.up().await;
    wait_spool(&sc, Duration::from_secs(10), |s| {
        s["depth"] == 1 && s["paused"]["reason"] == "status_401"
    })
    .await;
    assert_eq!(spool(&sc).await["dead_letters"], 0);
    refusing.store(false, Ordering::SeqCst);
    backend
        .wait_for(Duration::from_secs(10), "e2 delivered", |st| {
            st.steps.contains_key("e2")
        })
        .await;
    wait_spool(&sc, Duration::from_secs(5), |s| {
        s["depth"] == 0 && s["dead_letters"] == 0
    })
    .await;
    sc.stop().await;
}

/// Review finding: a batch [s v1, s v2] where v1 fails transiently and the
/// backend refuses v2 for its content stored v2 too (held behind v1) and
/// answered it as spooled; its replay was then dead-lettered. A version
/// refused for its content is never applied, so nothing holds it: the app
/// gets the refusal, and only v1 is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_later_version_refused_for_its_content_is_not_stored_behind_an_open_one() {
    // v1 fails on every attempt (v2 is refused before the alias fault).
    let alias: AliasFault =
        Arc::new(move |id, _| (id == "r").then(|| AliasReply::NotOk("db busy".into())));
    let mut backend = Backend::down(None).with_alias_fault(alias);
    backend.up().await;
    let sc = start(&backend, "[spool]").await;
    let a = write(
        sc.addr,
        &[
            ("r", "r v1"),
            ("r", &format!("{} r v2", support::backend::REFUSE)),
        ],
    )
    .await;
    let j = a.json();
    assert_eq!(
        a.header("x-sidecar-spooled"),
        Some("partial"),
        "{}",
        a.text()
    );
    assert_eq!(j["data"]["step0"]["ok"], true, "{j}");
    assert_eq!(
        j["data"]["step1"]["ok"], false,
        "the refusal, as the backend said: {j}"
    );
    assert_eq!(spool(&sc).await["depth"], 1, "only v1 is stored");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(spool(&sc).await["dead_letters"], 0);
    sc.stop().await;
}

/// Review finding: a live success cut short a wait the backend had asked
/// for on replay (`Retry-After`), so a rate-limited backend got the replays
/// at once. Only the worker's own backoff ends early.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_success_does_not_cut_a_wait_the_backend_asked_for() {
    let times: Arc<Mutex<Vec<tokio::time::Instant>>> = Arc::default();
    let t = times.clone();
    let limited: RequestFault = Arc::new(move |ids| {
        if ids != ["ra".to_string()] {
            return None;
        }
        let mut t = t.lock().unwrap();
        t.push(tokio::time::Instant::now());
        (t.len() == 1).then(|| Reply::text(429, "slow down").with_header("retry-after", "2"))
    });
    let mut backend = Backend::down(None).with_request_fault(limited);
    let sc = start(
        &backend,
        "[breaker]\nenabled = false\n[spool]\nreplay_backoff_base = \"50ms\"\nreplay_backoff_max = \"5s\"",
    )
    .await;
    let a = write(sc.addr, &[("ra", "ra v1")]).await;
    assert_eq!(a.header("x-sidecar-spooled"), Some("true"), "{}", a.text());
    backend.up().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while times.lock().unwrap().is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "no replay");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The app's live traffic goes through meanwhile.
    for _ in 0..5 {
        let q = client::post_json(sc.addr, "/api/graphql", &client::query()).await;
        assert_eq!(q.status, 200, "{}", q.text());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    backend
        .wait_for(Duration::from_secs(10), "ra delivered", |st| {
            st.steps.contains_key("ra")
        })
        .await;
    let t = times.lock().unwrap().clone();
    assert!(
        t[1] - t[0] >= Duration::from_millis(1900),
        "the second replay came {:?} after the 429 asked for 2 s",
        t[1] - t[0]
    );
    sc.stop().await;
}

/// Review finding: a document that cannot be cut into one entry per alias
/// (its root fields come from a fragment) answered partly — one alias
/// refused for its content, one open — was stored whole and the open
/// alias acknowledged; the whole entry's replay was then dead-lettered and
/// the acknowledged alias lost. Such a document is not stored in part: the
/// app gets the backend's answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_document_that_cannot_be_cut_is_not_spooled_in_part() {
    let alias: AliasFault =
        Arc::new(move |id, _| (id == "frag-b").then(|| AliasReply::NotOk("db busy".into())));
    let mut backend = Backend::down(None).with_alias_fault(alias);
    backend.up().await;
    let sc = start(&backend, "[spool]").await;
    let body = serde_json::json!({
        "query": "mutation M($a: String!, $oa: Json, $b: String!, $ob: Json) { ...F } fragment F on Mutation { x: ingestStep(id: $a, output: $oa) { ok message } y: ingestStep(id: $b, output: $ob) { ok message } }",
        "variables": {"a": "frag-a", "oa": {"content": format!("{}a", support::backend::REFUSE)},
                      "b": "frag-b", "ob": {"content": "b v1"}}
    });
    let a = client::post_json(sc.addr, "/api/graphql", &body).await;
    assert!(a.header("x-sidecar-spooled").is_none(), "{}", a.text());
    let j = a.json();
    assert_eq!(
        j["data"]["y"]["ok"], false,
        "the app sees the open alias's failure: {j}"
    );
    assert_eq!(spool(&sc).await["depth"], 0);
    sc.stop().await;
}
