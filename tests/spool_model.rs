//! A randomized model test of the promise: whatever mix of live writes,
//! transient and permanent failures, backend outages, replays and sidecar
//! restarts, the backend never holds an older version of a step than one it
//! already had, never gets a write it refuses, and ends with every
//! acknowledged version applied and each step at the last version written.
//!
//! Each scenario is drawn from a seed (printed on failure; set
//! `MODEL_SEED=<n>` to replay one, `MODEL_SCENARIOS=<n>` for more). It runs
//! the real sidecar in process against the scriptable backend: timing is
//! real, so a scenario explores whatever interleavings the scheduler gives
//! it, and the checks hold for any of them.

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::backend::{Backend, Fault, REFUSE};
use support::client::{self, add_step_with};
use support::proxy::{config, spooled_route};
use support::{Reply, Sidecar};
use tokio::sync::RwLock;

/// What a writer saw for one version it wrote.
#[derive(Debug, Clone)]
struct Written {
    step: String,
    version: u32,
    refused_content: bool,
    acked: bool,
}

fn content(step: &str, version: u32, refuse: bool) -> String {
    if refuse {
        format!("{REFUSE}{step} v{version:04}")
    } else {
        format!("{step} v{version:04}")
    }
}

/// The version number of a content written by [`content`].
fn version_of(c: &str) -> u32 {
    c.rsplit(" v")
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

struct Scenario {
    seed: u64,
    steps: usize,
    writers: usize,
    writes_per_writer: usize,
    fault_rate: f64,
    refuse_rate: f64,
    outages: usize,
    restart: bool,
    replay_concurrency: usize,
    max_attempts: u32,
    breaker: bool,
}

impl Scenario {
    fn draw(seed: u64) -> Scenario {
        // Consecutive seeds would start fastrand's streams alike.
        let mut r = fastrand::Rng::with_seed(mix(seed));
        Scenario {
            seed,
            steps: r.usize(3..10),
            writers: r.usize(2..5),
            writes_per_writer: r.usize(15..40),
            fault_rate: r.f64() * 0.5,
            refuse_rate: if r.bool() { 0.1 } else { 0.0 },
            outages: r.usize(0..3),
            restart: r.bool(),
            replay_concurrency: r.usize(1..9),
            max_attempts: r.u32(1..4),
            breaker: r.bool(),
        }
    }

    fn config(&self, dir: &std::path::Path) -> String {
        format!(
            "[timeouts]\nper_try = \"250ms\"\ndeadline = \"1500ms\"\n[retry]\nbackoff_base = \"5ms\"\nbackoff_max = \"30ms\"\nmin_attempt_time = \"20ms\"\nmax_attempts = {}\n[breaker]\nenabled = {}\nconsecutive_failures = 5\nopen_for = \"200ms\"\n[spool]\npath = \"{}\"\nreplay_backoff_base = \"10ms\"\nreplay_backoff_max = \"100ms\"\ncommit_margin = \"300ms\"\nreplay_concurrency = {}\n[shutdown]\ngrace_period = \"2s\"\n{}",
            self.max_attempts,
            self.breaker,
            dir.join("spool.sqlite3").display(),
            self.replay_concurrency,
            spooled_route(&format!(
                "idempotent = true\non_failure = \"spool\"\ntimeouts = {{ per_try = \"200ms\" }}\nretry = {{ max_attempts = {} }}",
                self.max_attempts
            )),
        )
    }
}

/// splitmix64: spreads nearby seeds over the whole space.
fn mix(seed: u64) -> u64 {
    let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Transient faults with the scenario's rate, while `on`.
fn faults(seed: u64, rate: f64, on: Arc<AtomicBool>) -> Fault {
    let rng = Mutex::new(fastrand::Rng::with_seed(mix(seed ^ 0x5eed)));
    Arc::new(move |_, _| {
        if !on.load(Ordering::SeqCst) {
            return None;
        }
        let mut r = rng.lock().unwrap();
        if r.f64() >= rate {
            return None;
        }
        Some(match r.u8(0..4) {
            0 => Reply::text(503, "busy"),
            1 => Reply::Close,
            2 => Reply::text(502, "bad gateway").delayed(Duration::from_millis(80)),
            _ => Reply::text(503, "slow").delayed(Duration::from_millis(300)),
        })
    })
}

async fn run(s: Scenario) {
    let faulty = Arc::new(AtomicBool::new(true));
    let mut backend = Backend::up_now(Some(faults(s.seed, s.fault_rate, faulty.clone()))).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg_text = s.config(dir.path());
    let url = backend.url();
    let start = || Sidecar::start_in(config(&url, &cfg_text), tempfile::tempdir().unwrap());
    let sc = Arc::new(RwLock::new(Some(start().await)));
    let addr: Arc<RwLock<SocketAddr>> =
        Arc::new(RwLock::new(sc.read().await.as_ref().unwrap().addr));
    let log: Arc<Mutex<Vec<Written>>> = Arc::default();

    let mut writers = Vec::new();
    for w in 0..s.writers {
        let (addr, log, state) = (addr.clone(), log.clone(), backend.state.clone());
        let mut r = fastrand::Rng::with_seed(mix(s.seed.wrapping_mul(31).wrapping_add(w as u64)));
        let mine: Vec<String> = (0..s.steps)
            .filter(|i| i % s.writers == w)
            .map(|i| format!("st{i}"))
            .collect();
        let (n, refuse_rate) = (s.writes_per_writer, s.refuse_rate);
        writers.push(tokio::spawn(async move {
            let mut next: HashMap<String, u32> = HashMap::new();
            let mut sent = Vec::new();
            for _ in 0..n {
                if mine.is_empty() {
                    break;
                }
                let step = mine[r.usize(..mine.len())].clone();
                let v = next.entry(step.clone()).or_insert(0);
                *v += 1;
                let (version, refuse) = (*v, r.f64() < refuse_rate);
                let c = content(&step, version, refuse);
                let body = add_step_with(vec![(step.clone(), c.clone())]);
                let target = *addr.read().await;
                let log = log.clone();
                let task = tokio::spawn(async move {
                    let acked = match tokio::time::timeout(
                        Duration::from_secs(10),
                        try_post(target, &body),
                    )
                    .await
                    {
                        Ok(Some((200, j))) => {
                            j["errors"].is_null()
                                && j["data"]["step0"]["ok"] == serde_json::json!(true)
                        }
                        _ => false,
                    };
                    log.lock().unwrap().push(Written {
                        step,
                        version,
                        refused_content: refuse,
                        acked,
                    });
                });
                // Like Chainlit, which fires a step's update without
                // awaiting its create: the next write may go while this
                // one is in flight, once the order is certain — it reached
                // the backend, or it was answered.
                let waited = tokio::time::Instant::now();
                while !task.is_finished()
                    && waited.elapsed() < Duration::from_secs(5)
                    && !state.lock().unwrap().received.iter().any(|(_, x)| *x == c)
                {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                sent.push(task);
                tokio::time::sleep(Duration::from_millis(r.u64(0..15))).await;
            }
            for t in sent {
                t.await.unwrap();
            }
        }));
    }

    // Outages and a restart while the writers run.
    let mut r = fastrand::Rng::with_seed(mix(s.seed ^ 0xface));
    for _ in 0..s.outages {
        tokio::time::sleep(Duration::from_millis(r.u64(50..400))).await;
        backend.take_down();
        tokio::time::sleep(Duration::from_millis(r.u64(100..700))).await;
        backend.up().await;
    }
    if s.restart {
        tokio::time::sleep(Duration::from_millis(r.u64(50..300))).await;
        let old = sc.write().await.take();
        if let Some(old) = old {
            old.stop().await;
        }
        let new = start().await;
        *addr.write().await = new.addr;
        *sc.write().await = Some(new);
    }
    for w in writers {
        w.await.unwrap();
    }

    // Calm: the backend is up and faultless; the spool drains.
    faulty.store(false, Ordering::SeqCst);
    backend.up().await;
    let admin = sc.read().await.as_ref().unwrap().admin;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let st = client::get(admin, "/spool").await.json();
        if st["depth"] == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "seed {}: the spool never drained: {st}",
            s.seed
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    check(&s, &log.lock().unwrap(), &backend);
    if let Some(sc) = sc.write().await.take() {
        sc.stop().await;
    }
}

async fn try_post(addr: SocketAddr, body: &serde_json::Value) -> Option<(u16, serde_json::Value)> {
    let req = http::Request::post(format!("http://{addr}/api/graphql"))
        .header("content-type", "application/json")
        .body(support::TestBody::full(body.to_string()))
        .ok()?;
    let resp = client::client().request(req).await.ok()?;
    let status = resp.status().as_u16();
    let bytes = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .ok()?
        .to_bytes();
    Some((status, serde_json::from_slice(&bytes).unwrap_or_default()))
}

fn check(s: &Scenario, written: &[Written], backend: &Backend) {
    let seed = s.seed;
    let applied = backend.applied();
    let steps = backend.steps();
    let mut per_step: HashMap<&str, Vec<&Written>> = HashMap::new();
    for w in written {
        per_step.entry(&w.step).or_default().push(w);
    }
    for (step, ws) in per_step {
        let seen: Vec<&str> = applied
            .iter()
            .filter(|(id, _)| id == step)
            .map(|(_, c)| c.as_str())
            .collect();
        // Never a refused write, never an older version after a newer one.
        assert!(
            seen.iter().all(|c| !c.starts_with(REFUSE)),
            "seed {seed}: {step}: a refused write was applied: {seen:?}"
        );
        let versions: Vec<u32> = seen.iter().map(|c| version_of(c)).collect();
        assert!(
            versions.windows(2).all(|w| w[0] <= w[1]),
            "seed {seed}: {step}: an older version overwrote a newer one: {versions:?}"
        );
        // Every acknowledged version that the backend takes arrived.
        for w in ws.iter().filter(|w| w.acked && !w.refused_content) {
            assert!(
                versions.contains(&w.version),
                "seed {seed}: {step} v{} was acknowledged and never arrived: {versions:?}",
                w.version
            );
        }
        // The step holds the last acknowledged version, or a later one whose
        // acknowledgement was lost (a restart cut the answer off).
        let last_acked = ws
            .iter()
            .filter(|w| w.acked && !w.refused_content)
            .map(|w| w.version)
            .max();
        if let Some(v) = last_acked {
            let held = steps.get(step).map(|c| version_of(c)).unwrap_or(0);
            assert!(
                held >= v,
                "seed {seed}: {step} holds v{held}, older than the acknowledged v{v}"
            );
            assert!(
                ws.iter().any(|w| w.version == held && !w.refused_content),
                "seed {seed}: {step} holds v{held}, which was never written"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_mix_of_failures_keeps_every_step_in_order_and_loses_nothing() {
    let seeds: Vec<u64> = match std::env::var("MODEL_SEED") {
        Ok(one) => vec![one.parse().expect("MODEL_SEED is a number")],
        Err(_) => {
            let n: u64 = std::env::var("MODEL_SCENARIOS")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(8);
            let base = fastrand::u64(..);
            (0..n).map(|i| base.wrapping_add(i)).collect()
        }
    };
    for seed in seeds {
        let s = Scenario::draw(seed);
        eprintln!(
            "model scenario seed={seed} steps={} writers={} writes={} faults={:.2} refuse={} outages={} restart={} replay_concurrency={} attempts={} breaker={}",
            s.steps,
            s.writers,
            s.writes_per_writer,
            s.fault_rate,
            s.refuse_rate,
            s.outages,
            s.restart,
            s.replay_concurrency,
            s.max_attempts,
            s.breaker
        );
        run(s).await;
    }
}
