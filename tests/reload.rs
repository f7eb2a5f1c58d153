//! Hot reload: SIGHUP and `POST /reload` apply a new config to requests
//! that arrive after it, never to those in flight, drop no connection and
//! no request, refuse an invalid file without changing anything, and apply
//! reloads one after another in the order they were asked for.

mod support;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use tokio::time::Instant;

use datalayer_sidecar::config::{Config, Overrides, Source};
use datalayer_sidecar::sidecar::Options;
use support::client::{self, sample};
use support::proxy::config_text;
use support::{Answer, FakeUpstream, Process, Reply, Sidecar};

/// A sidecar started from a file it can reload.
struct Reloadable {
    sc: Sidecar,
    file: PathBuf,
    upstream: String,
}

impl Reloadable {
    async fn start(upstream: &str, extra: &str) -> Reloadable {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("sidecar.toml");
        let upstream = upstream.to_string();
        write(&file, &upstream, dir.path(), extra);
        let cfg = Config::load(Some(&file), &Overrides::default()).unwrap();
        let opts = Options {
            source: Some(Source {
                path: Some(file.clone()),
                overrides: Overrides::default(),
            }),
            ..Default::default()
        };
        let sc = Sidecar::start_opts(cfg, dir, opts).await;
        Reloadable { sc, file, upstream }
    }

    /// Rewrite the file with `extra` and reload it through the admin port.
    async fn reload(&self, extra: &str) -> Answer {
        write(&self.file, &self.upstream, self.sc.dir.path(), extra);
        post_reload(self.sc.admin).await
    }
}

/// The config file: `extra` (top-level keys first), with the upstream and
/// a spool in `dir` added to its sections or after them.
fn write(file: &Path, upstream: &str, dir: &Path, extra: &str) {
    let mut text = extra.to_string();
    let mut section = |name: &str, line: String| {
        let head = format!("[{name}]\n");
        if text.contains(&head) {
            text = text.replacen(&head, &format!("{head}{line}\n"), 1);
        } else {
            text.push_str(&format!("\n{head}{line}\n"));
        }
    };
    section("upstream", format!("url = \"{upstream}\""));
    section(
        "spool",
        format!("path = \"{}\"", dir.join("spool.sqlite3").display()),
    );
    std::fs::write(file, text).unwrap();
}

async fn post_reload(admin: std::net::SocketAddr) -> Answer {
    client::post_json_to(admin, "/reload", &serde_json::json!({}), "POST").await
}

async fn generation(admin: std::net::SocketAddr) -> u64 {
    let text = client::get(admin, "/config").await.text();
    let first = text.lines().next().unwrap_or_default().to_string();
    first
        .strip_prefix("# generation ")
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no generation in /config: {first}"))
}

const SLOW: Duration = Duration::from_millis(1500);

fn slow_upstream() -> impl Fn(&support::Recorded, usize) -> Reply + Send + Sync + 'static {
    |r: &support::Recorded, _| match r.uri.path() {
        "/slow" => Reply::status(200).delayed(SLOW),
        _ => Reply::status(200),
    }
}

#[tokio::test]
async fn a_changed_timeout_and_a_new_route_take_effect_on_the_next_request() {
    let up = FakeUpstream::start(slow_upstream()).await;
    let s = Reloadable::start(
        &up.url(),
        "preset = \"none\"\n[timeouts]\nper_try = \"3s\"\ndeadline = \"4s\"\n",
    )
    .await;
    assert_eq!(client::get(s.sc.addr, "/slow").await.status, 200);
    assert_eq!(generation(s.sc.admin).await, 1);

    // A slow request in flight keeps the generation it started with.
    let addr = s.sc.addr;
    let in_flight = tokio::spawn(async move { client::get(addr, "/slow").await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let r = s
        .reload(
            "preset = \"none\"\n[timeouts]\nper_try = \"3s\"\ndeadline = \"4s\"\n\
             [[routes]]\nname = \"impatient\"\npath_prefix = \"/slow\"\n\
             timeouts = { per_try = \"300ms\", deadline = \"500ms\" }\nretry = { max_attempts = 1 }\n",
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["result"], "applied");
    assert_eq!(r.json()["generation"], 2);
    assert_eq!(
        in_flight.await.unwrap().status,
        200,
        "a request in flight finishes under its own generation"
    );

    let started = Instant::now();
    let a = client::get(s.sc.addr, "/slow").await;
    assert_eq!(a.status, 504, "{}", a.text());
    assert!(started.elapsed() < Duration::from_millis(1200));
    assert_eq!(generation(s.sc.admin).await, 2);
    let m = client::get(s.sc.admin, "/metrics").await.text();
    let impatient: f64 = m
        .lines()
        .filter(|l| l.starts_with("datalayer_sidecar_requests_total{route=\"impatient\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(impatient, 1.0, "the new route took the request: {m}");
    assert_eq!(sample(&m, "datalayer_sidecar_config_generation"), Some(2.0));
    assert_eq!(
        sample(&m, "datalayer_sidecar_reloads_total{result=\"applied\"}"),
        Some(1.0)
    );
}

#[tokio::test]
async fn an_invalid_reload_changes_nothing_and_names_the_key() {
    let up = FakeUpstream::start(slow_upstream()).await;
    let s = Reloadable::start(&up.url(), "preset = \"none\"\n").await;
    let before = client::get(s.sc.admin, "/config").await.text();

    for (bad, key) in [
        (
            "preset = \"none\"\n[timeouts]\nper_try = \"9s\"\ndeadline = \"2s\"\n",
            "timeouts.per_try",
        ),
        (
            "preset = \"none\"\n[retry]\nmax_atempts = 3\n",
            "max_atempts",
        ),
        (
            "preset = \"none\"\n[[routes]]\nname = \"bad name!\"\n",
            "routes[0].name",
        ),
    ] {
        let r = s.reload(bad).await;
        assert_eq!(r.status, 422, "{}", r.text());
        let body = r.json();
        assert_eq!(body["result"], "invalid");
        assert_eq!(body["generation"], 1);
        assert!(
            body["error"].as_str().unwrap_or_default().contains(key),
            "{body}"
        );
    }
    // An unreadable TOML file too.
    std::fs::write(&s.file, "[upstream\nurl=").unwrap();
    let r = post_reload(s.sc.admin).await;
    assert_eq!(r.status, 422, "{}", r.text());

    assert_eq!(client::get(s.sc.admin, "/config").await.text(), before);
    assert_eq!(
        client::get(s.sc.addr, "/slow").await.status,
        200,
        "the old timeouts are still in force"
    );
    let m = client::get(s.sc.admin, "/metrics").await.text();
    assert_eq!(
        sample(&m, "datalayer_sidecar_reloads_total{result=\"invalid\"}"),
        Some(4.0)
    );
    assert_eq!(sample(&m, "datalayer_sidecar_config_generation"), Some(1.0));
}

/// A steady stream of requests (reads and spooled writes) across 20
/// reloads that each change the breaker, the retry budget, the upstream
/// slots or a route: not one request fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_reloads_under_steady_load_fail_no_request() {
    let up = FakeUpstream::start(|r, _| match r.uri.path() {
        "/api/graphql" => Reply::json(200, client::steps_ok(1)),
        _ => Reply::status(200),
    })
    .await;
    let configs = [
        "[breaker]\nmin_calls = 20\n",
        "[breaker]\nmin_calls = 30\n[retry]\nbudget_ratio = 0.7\n",
        "[upstream]\nmax_concurrent_requests = 8\n[timeouts]\nper_try = \"2s\"\n",
        "[[routes]]\nname = \"reads\"\nmethods = [\"GET\"]\n[log]\naccess = false\n",
    ];
    let s = Reloadable::start(&up.url(), configs[0]).await;
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut workers = Vec::new();
    for w in 0..4 {
        let (stop, ok, failed, addr) = (stop.clone(), ok.clone(), failed.clone(), s.sc.addr);
        workers.push(tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let a = if w % 2 == 0 {
                    client::get(addr, "/read").await
                } else {
                    n += 1;
                    let id = format!("w{w}-{n}");
                    client::post_json(addr, "/api/graphql", &client::add_step(&[&id])).await
                };
                if a.status == 200 {
                    ok.fetch_add(1, Ordering::Relaxed);
                } else {
                    failed.fetch_add(1, Ordering::Relaxed);
                    eprintln!("failed: {} {}", a.status, a.text());
                }
            }
        }));
    }
    for i in 1..=20 {
        tokio::time::sleep(Duration::from_millis(60)).await;
        let r = s.reload(configs[i % configs.len()]).await;
        assert_eq!(r.status, 200, "reload {i}: {}", r.text());
        assert_eq!(r.json()["generation"], (i + 1) as u64);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    assert!(ok > 200, "the stream was steady: {ok} requests");
    assert_eq!(failed, 0, "{failed} of {} requests failed", ok + failed);
    assert_eq!(generation(s.sc.admin).await, 21);
}

#[tokio::test]
async fn keys_that_need_a_restart_are_reported_and_keep_their_value() {
    let up = FakeUpstream::start(|_, _| Reply::status(200)).await;
    let s = Reloadable::start(&up.url(), "[listen]\nmax_connections = 100\n").await;
    let r = s
        .reload(
            "[listen]\nmax_connections = 7\n[runtime]\nworker_threads = 2\n[timeouts]\nper_try = \"2s\"\n",
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let needed: Vec<String> = r.json()["restart_needed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    assert_eq!(needed, ["listen.max_connections", "runtime.worker_threads"]);
    let config = client::get(s.sc.admin, "/config").await.text();
    assert!(config.contains("max_connections = 100"), "{config}");
    assert!(config.contains("worker_threads = 1"), "{config}");
    assert!(
        config.contains("per_try = \"2s\""),
        "the rest applies: {config}"
    );
}

#[tokio::test]
async fn breaker_state_carries_over_unless_its_settings_change() {
    let up = FakeUpstream::start(|_, _| Reply::status(503)).await;
    let breaker = "preset = \"none\"\n[retry]\nmax_attempts = 1\n[breaker]\nmin_calls = 5\nconsecutive_failures = 5\nopen_for = \"60s\"\n";
    let s = Reloadable::start(&up.url(), breaker).await;
    for _ in 0..6 {
        client::get(s.sc.addr, "/x").await;
    }
    let state = |a: Answer| a.json()["state"].as_str().unwrap_or_default().to_string();
    assert_eq!(state(client::get(s.sc.admin, "/breaker").await), "open");

    let r = s
        .reload(&format!("{breaker}[timeouts]\nper_try = \"2s\"\n"))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        state(client::get(s.sc.admin, "/breaker").await),
        "open",
        "unchanged breaker settings keep the breaker and its state"
    );
    assert_eq!(
        client::get(s.sc.addr, "/x").await.status,
        503,
        "still failing fast"
    );

    let r = s
        .reload(&breaker.replace("open_for = \"60s\"", "open_for = \"30s\""))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        state(client::get(s.sc.admin, "/breaker").await),
        "closed",
        "new breaker settings start a new breaker"
    );
}

#[tokio::test]
async fn a_reload_that_adds_the_first_spooling_route_opens_the_spool() {
    let up = FakeUpstream::start(|_, _| Reply::status(503)).await;
    let s = Reloadable::start(&up.url(), "preset = \"none\"\n").await;
    assert_eq!(client::get(s.sc.admin, "/spool").await.status, 404);
    let r = s
        .reload("preset = \"literalai\"\n[retry]\nmax_attempts = 1\n")
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let a = client::post_json(s.sc.addr, "/api/graphql", &client::add_step(&["s1"])).await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(
        a.header("x-sidecar-spooled"),
        Some("true"),
        "{:?}",
        a.headers
    );
    let spool = client::get(s.sc.admin, "/spool").await;
    assert_eq!(spool.status, 200);
    assert_eq!(spool.json()["depth"], 1);
    assert_eq!(
        client::get(s.sc.admin, "/readyz").await.status,
        200,
        "opening the spool on reload does not take readiness back"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_reloads_are_queued_and_applied_one_after_another() {
    let up = FakeUpstream::start(|_, _| Reply::status(200)).await;
    let s = Reloadable::start(&up.url(), "").await;
    let admin = s.sc.admin;
    let asks: Vec<_> = (0..8)
        .map(|_| tokio::spawn(async move { post_reload(admin).await }))
        .collect();
    let mut generations = Vec::new();
    for a in asks {
        let r = a.await.unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        generations.push(r.json()["generation"].as_u64().unwrap());
    }
    generations.sort_unstable();
    assert_eq!(generations, (2..=9).collect::<Vec<u64>>(), "none dropped");
}

/// The binary reloads on SIGHUP; two signals in quick succession, each
/// after a rewrite of the file, end on the second file, and a file written
/// between them is never left in force.
#[tokio::test]
async fn two_sighups_in_quick_succession_end_on_the_second_file() {
    let up = FakeUpstream::start(|_, _| Reply::status(200)).await;
    let base = config_text(&up.url(), "[log]\nformat = \"json\"\n");
    let mut p = Process::spawn(&format!("{base}[timeouts]\nper_try = \"1s\"\n"), &[]).await;
    let file = p.dir.join("sidecar.toml");
    std::fs::write(&file, format!("{base}[timeouts]\nper_try = \"2s\"\n")).unwrap();
    p.signal("HUP");
    std::fs::write(&file, format!("{base}[timeouts]\nper_try = \"3s\"\n")).unwrap();
    p.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut config = String::new();
    while Instant::now() < deadline {
        config = client::get(p.admin, "/config").await.text();
        if config.contains("per_try = \"3s\"") && p.logs().matches("config reloaded").count() >= 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(config.contains("per_try = \"3s\""), "{config}");
    assert!(
        client::get(p.addr, "/x").await.status == 200,
        "still serving"
    );
    // Each signal the process saw was a reload (the kernel may merge two
    // signals sent before the first is handled; then one reload read the
    // last file).
    let reloads = p.logs().matches("config reloaded").count();
    assert!((1..=2).contains(&reloads), "{}", p.logs());
    let gen_line = config.lines().next().unwrap_or_default().to_string();
    assert_eq!(gen_line, format!("# generation {}", reloads + 1));
    p.signal("TERM");
    let status = p.wait_exit(Duration::from_secs(10)).await;
    assert!(status.success(), "{status:?}\n{}", p.logs());
}
