//! A randomized model of the promise where features meet: batched writes
//! that name a step more than once, answers that settle some aliases and
//! fail others, joined replays, waits the backend asks for (`Retry-After`,
//! absurd ones included), outages, restarts — on the local store, and on
//! PostgreSQL with two replicas, one killed while it holds leases.
//!
//! The checks are DESIGN's rule 2 and the promise, at the end: each step
//! upstream holds the last version the app was answered for (or a later
//! one it wrote), every acknowledged version reached the backend, nothing
//! refused for its content reached it, and nothing is dead-lettered that
//! the backend did not refuse for its content. (A batch that names a step
//! twice may see its later version re-sent after the earlier one when the
//! earlier one is retried, so the history in between is not checked here:
//! `spool_model.rs` holds single writes to that stricter rule.)
//!
//! Each scenario is drawn from a seed (printed; `MODEL_SEED=<n>` replays
//! one, `MODEL_SCENARIOS=<n>` runs more).

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::backend::{AliasFault, AliasReply, Backend, Fault, REFUSE};
use support::client::{self, add_step_with};
use support::postgres::Postgres;
use support::proxy::{config, config_text, spooled_route};
use support::{Process, Reply, Sidecar};
use tokio::sync::RwLock;

/// One alias of a write, and what the app was answered for it.
#[derive(Debug, Clone)]
struct Alias {
    step: String,
    version: u32,
    refused: bool,
    acked: bool,
}

fn content(step: &str, version: u32, refuse: bool) -> String {
    if refuse {
        format!("{REFUSE}{step} v{version:04}")
    } else {
        format!("{step} v{version:04}")
    }
}

fn version_of(c: &str) -> u32 {
    c.rsplit(" v")
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// splitmix64: spreads nearby seeds over the whole space.
fn mix(seed: u64) -> u64 {
    let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[derive(Debug)]
struct Scenario {
    seed: u64,
    writers: usize,
    steps_per_writer: usize,
    writes_per_writer: usize,
    max_aliases: usize,
    fault_rate: f64,
    alias_fault_rate: f64,
    refuse_rate: f64,
    outages: usize,
    restart: bool,
    replay_batch: usize,
    replay_concurrency: usize,
    max_attempts: u32,
    breaker: bool,
}

impl Scenario {
    fn draw(seed: u64) -> Scenario {
        let mut r = fastrand::Rng::with_seed(mix(seed));
        Scenario {
            seed,
            writers: r.usize(2..5),
            steps_per_writer: r.usize(1..4),
            writes_per_writer: r.usize(10..25),
            max_aliases: r.usize(1..5),
            fault_rate: r.f64() * 0.3,
            alias_fault_rate: r.f64() * 0.3,
            refuse_rate: if r.bool() { 0.08 } else { 0.0 },
            outages: r.usize(0..3),
            restart: r.bool(),
            replay_batch: [1, 5, 25][r.usize(..3)],
            replay_concurrency: r.usize(1..9),
            max_attempts: r.u32(1..4),
            breaker: r.bool(),
        }
    }

    /// Everything but the spool's location and backend.
    fn settings(&self) -> String {
        format!(
            "[timeouts]\nper_try = \"250ms\"\ndeadline = \"1500ms\"\n[retry]\nbackoff_base = \"5ms\"\nbackoff_max = \"30ms\"\nmin_attempt_time = \"20ms\"\nmax_attempts = {ma}\nretry_after_max = \"1s\"\n[breaker]\nenabled = {br}\nconsecutive_failures = 5\nopen_for = \"200ms\"\n[shutdown]\ngrace_period = \"2s\"\n{route}",
            ma = self.max_attempts,
            br = self.breaker,
            route = spooled_route(&format!(
                "idempotent = true\non_failure = \"spool\"\ntimeouts = {{ per_try = \"200ms\" }}\nretry = {{ max_attempts = {} }}",
                self.max_attempts
            )),
        )
    }

    fn spool(&self) -> String {
        format!(
            "replay_backoff_base = \"10ms\"\nreplay_backoff_max = \"100ms\"\ncommit_margin = \"300ms\"\nreplay_concurrency = {}\nreplay_batch = {}\n",
            self.replay_concurrency, self.replay_batch
        )
    }
}

/// Whole-request faults while `on`: statuses, closed connections, slow
/// answers, and `Retry-After` waits (a second, none, or past the clock).
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
        Some(match r.u8(0..6) {
            0 => Reply::text(503, "busy"),
            1 => Reply::Close,
            2 => Reply::text(502, "bad gateway").delayed(Duration::from_millis(80)),
            3 => Reply::text(429, "slow down").with_header("retry-after", "1"),
            4 => Reply::text(429, "slow down").with_header("retry-after", "0"),
            _ => Reply::text(429, "slow down").with_header("retry-after", "18446744073709551615"),
        })
    })
}

/// Per-alias transient failures while `on`: `ok: false` or a transient
/// GraphQL error for that alias alone.
fn alias_faults(seed: u64, rate: f64, on: Arc<AtomicBool>) -> AliasFault {
    let rng = Mutex::new(fastrand::Rng::with_seed(mix(seed ^ 0xa11a5)));
    Arc::new(move |_, _| {
        if !on.load(Ordering::SeqCst) {
            return None;
        }
        let mut r = rng.lock().unwrap();
        if r.f64() >= rate {
            return None;
        }
        Some(if r.bool() {
            AliasReply::NotOk("db busy".into())
        } else {
            AliasReply::Error("INTERNAL_SERVER_ERROR".into())
        })
    })
}

async fn post(addr: SocketAddr, body: &serde_json::Value) -> Option<(u16, serde_json::Value)> {
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

/// The writers: each owns its steps and writes batches of them — a step
/// may appear more than once in a batch, its versions in order — through
/// one of the addresses in `targets`, like Chainlit: the next write may go
/// once the order is certain (the backend received it, or it was
/// answered).
async fn write_all(
    s: &Scenario,
    backend_state: Arc<Mutex<support::backend::State>>,
    targets: Arc<RwLock<Vec<SocketAddr>>>,
) -> Vec<Alias> {
    let log: Arc<Mutex<Vec<Alias>>> = Arc::default();
    let mut writers = Vec::new();
    for w in 0..s.writers {
        let (targets, log, state) = (targets.clone(), log.clone(), backend_state.clone());
        let mut r = fastrand::Rng::with_seed(mix(s.seed.wrapping_mul(31).wrapping_add(w as u64)));
        let mine: Vec<String> = (0..s.steps_per_writer)
            .map(|i| format!("w{w}s{i}"))
            .collect();
        let (n, max_aliases, refuse_rate) = (s.writes_per_writer, s.max_aliases, s.refuse_rate);
        writers.push(tokio::spawn(async move {
            let mut next: HashMap<String, u32> = HashMap::new();
            let mut sent = Vec::new();
            for _ in 0..n {
                let k = r.usize(1..=max_aliases);
                let aliases: Vec<Alias> = (0..k)
                    .map(|_| {
                        let step = mine[r.usize(..mine.len())].clone();
                        let v = next.entry(step.clone()).or_insert(0);
                        *v += 1;
                        Alias {
                            step,
                            version: *v,
                            refused: r.f64() < refuse_rate,
                            acked: false,
                        }
                    })
                    .collect();
                let contents: Vec<String> = aliases
                    .iter()
                    .map(|a| content(&a.step, a.version, a.refused))
                    .collect();
                let body = add_step_with(
                    aliases
                        .iter()
                        .zip(&contents)
                        .map(|(a, c)| (a.step.clone(), c.clone()))
                        .collect(),
                );
                let target = {
                    let t = targets.read().await;
                    t[r.usize(..t.len())]
                };
                let log = log.clone();
                let task = tokio::spawn(async move {
                    let answer =
                        tokio::time::timeout(Duration::from_secs(10), post(target, &body)).await;
                    let mut aliases = aliases;
                    if let Ok(Some((200, j))) = answer {
                        for (i, a) in aliases.iter_mut().enumerate() {
                            a.acked =
                                j["data"][format!("step{i}")]["ok"] == serde_json::json!(true);
                        }
                    }
                    log.lock().unwrap().extend(aliases);
                });
                let waited = tokio::time::Instant::now();
                while !task.is_finished()
                    && waited.elapsed() < Duration::from_secs(5)
                    && !{
                        let st = state.lock().unwrap();
                        contents
                            .iter()
                            .all(|c| st.received.iter().any(|(_, x)| x == c))
                    }
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
    for w in writers {
        w.await.unwrap();
    }
    Arc::try_unwrap(log).unwrap().into_inner().unwrap()
}

/// The end state against what the app was answered, and the dead letters
/// (their bodies) against what the backend refused.
fn check(seed: u64, written: &[Alias], backend: &Backend, dead: &[String]) {
    let applied = backend.applied();
    let steps = backend.steps();
    assert!(
        applied.iter().all(|(_, c)| !c.starts_with(REFUSE)),
        "seed {seed}: a refused write was applied"
    );
    for body in dead {
        assert!(
            body.contains(REFUSE),
            "seed {seed}: dead-lettered without a refusal of its content: {body}"
        );
    }
    // A version overwritten by an older one must be applied again after
    // it. The retry layer sends a step's later version again after an
    // earlier one it retries, so the backend may hold the older one for a
    // while; what must never happen is that the newer one is then taken
    // for delivered (defect 2 of issue 18: only the open older version
    // was stored, and its replay had the last word).
    let applied_by = backend.state.lock().unwrap().applied_by.clone();
    let mut histories: HashMap<&str, Vec<(usize, u32)>> = HashMap::new();
    for ((step, c), &req) in applied.iter().zip(&applied_by) {
        histories
            .entry(step)
            .or_default()
            .push((req, version_of(c)));
    }
    for (step, h) in &histories {
        for (i, &(_, x)) in h.iter().enumerate() {
            for &(_, y) in &h[..i] {
                if y > x {
                    assert!(
                        h[i + 1..].iter().any(|&(_, z)| z == y),
                        "seed {seed}: {step} v{y} was overwritten by v{x} and never applied again; (request, version) applied: {h:?}"
                    );
                }
            }
        }
    }
    let mut per_step: HashMap<&str, Vec<&Alias>> = HashMap::new();
    for a in written {
        per_step.entry(&a.step).or_default().push(a);
    }
    for (step, aliases) in per_step {
        let seen: Vec<u32> = applied
            .iter()
            .filter(|(id, _)| id == step)
            .map(|(_, c)| version_of(c))
            .collect();
        for a in aliases.iter().filter(|a| a.acked && !a.refused) {
            assert!(
                seen.contains(&a.version),
                "seed {seed}: {step} v{} was acknowledged and never arrived: {seen:?}",
                a.version
            );
        }
        if let Some(last) = aliases
            .iter()
            .filter(|a| a.acked && !a.refused)
            .map(|a| a.version)
            .max()
        {
            let held = steps.get(step).map(|c| version_of(c)).unwrap_or(0);
            assert!(
                held >= last,
                "seed {seed}: {step} holds v{held}, older than the acknowledged v{last}: applied {seen:?}"
            );
            assert!(
                aliases.iter().any(|a| a.version == held && !a.refused),
                "seed {seed}: {step} holds v{held}, which was never written"
            );
        }
    }
}

/// Wait until the spool behind `admin` is empty (60 s at most).
async fn drained(seed: u64, admin: SocketAddr) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let st = client::get(admin, "/spool").await.json();
        if st["depth"] == 0 {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "seed {seed}: the spool never drained: {st}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn seeds(default: u64) -> Vec<u64> {
    match std::env::var("MODEL_SEED") {
        Ok(one) => vec![one.parse().expect("MODEL_SEED is a number")],
        Err(_) => {
            let n: u64 = std::env::var("MODEL_SCENARIOS")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(default);
            let base = fastrand::u64(..);
            (0..n).map(|i| base.wrapping_add(i)).collect()
        }
    }
}

fn backend_for(s: &Scenario, on: &Arc<AtomicBool>) -> Backend {
    Backend::down(Some(faults(s.seed, s.fault_rate, on.clone()))).with_alias_fault(alias_faults(
        s.seed,
        s.alias_fault_rate,
        on.clone(),
    ))
}

/// Outages while the writers run.
async fn outages(s: &Scenario, backend: &mut Backend) {
    let mut r = fastrand::Rng::with_seed(mix(s.seed ^ 0xface));
    for _ in 0..s.outages {
        tokio::time::sleep(Duration::from_millis(r.u64(50..400))).await;
        backend.take_down();
        tokio::time::sleep(Duration::from_millis(r.u64(100..700))).await;
        backend.up().await;
    }
}

/// Batches, partial answers, joined replays and backend-chosen waits on
/// the local store, with outages and a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_partial_answers_and_joined_replays_end_on_the_last_acknowledged_version() {
    for seed in seeds(6) {
        let s = Scenario::draw(seed);
        eprintln!("batch model scenario {s:?}");
        let faulty = Arc::new(AtomicBool::new(true));
        let mut backend = backend_for(&s, &faulty);
        backend.up().await;
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("spool.sqlite3");
        let text = format!(
            "{}\n[spool]\npath = \"{}\"\n{}",
            s.settings(),
            store.display(),
            s.spool()
        );
        let url = backend.url();
        let start = || Sidecar::start_in(config(&url, &text), tempfile::tempdir().unwrap());
        let sc = start().await;
        let targets = Arc::new(RwLock::new(vec![sc.addr]));
        let sc = Arc::new(RwLock::new(Some(sc)));
        let writing = {
            let (s2, targets) = (Scenario::draw(seed), targets.clone());
            let state = backend.state.clone();
            tokio::spawn(async move { write_all(&s2, state, targets).await })
        };
        outages(&s, &mut backend).await;
        if s.restart {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let old = sc.write().await.take();
            if let Some(old) = old {
                old.stop().await;
            }
            let new = start().await;
            *targets.write().await = vec![new.addr];
            *sc.write().await = Some(new);
        }
        let written = writing.await.unwrap();
        faulty.store(false, Ordering::SeqCst);
        backend.up().await;
        let admin = sc.read().await.as_ref().unwrap().admin;
        drained(seed, admin).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        if let Some(sc) = sc.write().await.take() {
            sc.stop().await;
        }
        let conn = rusqlite::Connection::open(&store).unwrap();
        let dead: Vec<String> = conn
            .prepare("SELECT body FROM dead_letters")
            .unwrap()
            .query_map([], |r| r.get::<_, Vec<u8>>(0))
            .unwrap()
            .map(|b| String::from_utf8_lossy(&b.unwrap()).into_owned())
            .collect();
        check(seed, &written, &backend, &dead);
    }
}

/// The same on PostgreSQL: two sidecar processes share the queue, the app
/// writes through either, one is SIGKILLed with the leases it holds (the
/// other takes its entries over when they run out) and comes back later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_on_postgres_with_lease_expiry_end_on_the_last_acknowledged_version() {
    for seed in seeds(2) {
        let s = Scenario::draw(seed);
        eprintln!("postgres model scenario {s:?}");
        let pg = Postgres::start();
        let faulty = Arc::new(AtomicBool::new(true));
        let mut backend = backend_for(&s, &faulty);
        backend.up().await;
        let text = config_text(
            &backend.url(),
            &format!(
                "{}\n[spool]\nbackend = \"postgres\"\npostgres_url = \"{}\"\nlease = \"2s\"\n{}",
                s.settings(),
                pg.url(),
                s.spool()
            ),
        );
        let dir_a = tempfile::tempdir().unwrap();
        let mut a = Process::spawn_at(dir_a.path(), &text, &[], &[]).await;
        let b = Process::spawn(&text, &[]).await;
        let targets = Arc::new(RwLock::new(vec![a.addr, b.addr]));
        let writing = {
            let (s2, targets) = (Scenario::draw(seed), targets.clone());
            let state = backend.state.clone();
            tokio::spawn(async move { write_all(&s2, state, targets).await })
        };
        let mut r = fastrand::Rng::with_seed(mix(seed ^ 0xdead));
        tokio::time::sleep(Duration::from_millis(r.u64(200..800))).await;
        // A dies with what it holds; the app writes through B meanwhile.
        *targets.write().await = vec![b.addr];
        a.signal("KILL");
        a.wait_exit(Duration::from_secs(5)).await;
        outages(&s, &mut backend).await;
        tokio::time::sleep(Duration::from_millis(r.u64(500..2500))).await;
        let a2 = Process::spawn_at(dir_a.path(), &text, &[], &[]).await;
        targets.write().await.push(a2.addr);
        let written = writing.await.unwrap();
        faulty.store(false, Ordering::SeqCst);
        backend.up().await;
        drained(seed, b.admin).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        let dead: Vec<String> = pg
            .psql("SELECT string_agg(convert_from(body, 'UTF8'), E'\\n') FROM datalayer_sidecar.dead_letters")
            .lines()
            .map(str::to_string)
            .filter(|l| !l.is_empty())
            .collect();
        check(seed, &written, &backend, &dead);
        drop((a2, b));
    }
}
