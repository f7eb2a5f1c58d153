//! The status page (`GET /` on the admin port), loaded in a real headless
//! browser (Debian's `chromium`, installed by `tests/setup.sh`) while faults run:
//! its figures must agree with `/metrics` and `/spool`.
//!
//! `DATALAYER_SIDECAR_SCREENSHOT=path` also saves the page as a PNG there
//! (that is how `docs/status-page.png` is made).

mod support;

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use support::client::{self, sample};
use support::{FakeUpstream, Reply, Sidecar};

fn chromium() -> &'static str {
    for c in ["chromium", "chromium-browser", "google-chrome"] {
        if std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("command -v {c}"))
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
        {
            return c;
        }
    }
    panic!("no chromium on PATH: `apt-get install chromium` (tests/setup.sh installs it)");
}

/// Run headless chromium on `url` with `args`; its standard output.
async fn browse(url: &str, profile: &Path, args: &[&str]) -> String {
    let mut cmd = tokio::process::Command::new(chromium());
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-extensions",
        "--no-first-run",
        "--hide-scrollbars",
    ])
    .arg(format!("--user-data-dir={}", profile.display()))
    .args(args)
    .arg(url)
    .env("HOME", profile)
    .stdout(Stdio::piped())
    .stderr(Stdio::null())
    .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .expect("chromium did not finish within 60 s")
        .expect("chromium runs");
    assert!(out.status.success(), "chromium failed: {:?}", out.status);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The text of the element with `id` in the DOM chromium dumped.
fn by_id(dom: &str, id: &str) -> String {
    let marker = format!("id=\"{id}\"");
    let at = dom
        .find(&marker)
        .unwrap_or_else(|| panic!("no #{id} in the page"));
    let open_end = at + dom[at..].find('>').unwrap() + 1;
    let close = open_end + dom[open_end..].find('<').unwrap();
    dom[open_end..close].trim().to_string()
}

fn num(dom: &str, id: &str) -> f64 {
    by_id(dom, id)
        .parse()
        .unwrap_or_else(|_| panic!("#{id} is not a number: {}", by_id(dom, id)))
}

fn total(metrics: &str, prefix: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_in_a_real_browser_agrees_with_the_metrics() {
    // Step writes fail (so they are spooled), `/hang` outlasts every
    // timeout (structured 504s), everything else answers.
    let up = FakeUpstream::start(|r, _| match r.uri.path() {
        "/api/graphql" => Reply::status(503),
        "/hang" => Reply::status(200).delayed(Duration::from_secs(30)),
        _ => Reply::status(200),
    })
    .await;
    let sc = Sidecar::start(
        &up.url(),
        "[retry]\nmax_attempts = 2\nbackoff_base = \"10ms\"\n[breaker]\nenabled = false\n\
         [[routes]]\nname = \"hangs\"\npath = \"/hang\"\ntimeouts = { per_try = \"200ms\", deadline = \"300ms\" }\n",
    )
    .await;
    let mut jobs = Vec::new();
    for i in 0..12 {
        let addr = sc.addr;
        jobs.push(tokio::spawn(async move {
            client::get(addr, &format!("/read/{i}"))
                .await
                .status
                .as_u16()
        }));
    }
    for i in 0..6 {
        let addr = sc.addr;
        jobs.push(tokio::spawn(async move {
            let id = format!("step-{i}");
            client::post_json(addr, "/api/graphql", &client::add_step(&[&id]))
                .await
                .status
                .as_u16()
        }));
    }
    for _ in 0..3 {
        let addr = sc.addr;
        jobs.push(tokio::spawn(async move {
            client::get(addr, "/hang").await.status.as_u16()
        }));
    }
    let mut statuses = Vec::new();
    for j in jobs {
        statuses.push(j.await.unwrap());
    }
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 18);
    assert_eq!(statuses.iter().filter(|s| **s == 504).count(), 3);

    let profile = tempfile::tempdir().unwrap();
    let url = format!("http://{}/", sc.admin);
    let dom = browse(&url, profile.path(), &["--dump-dom"]).await;
    let metrics = client::get(sc.admin, "/metrics").await.text();
    let spool = client::get(sc.admin, "/spool").await.json();

    // Is data getting through: every request counted once, as /metrics has it.
    let (answered, spooled, failed) = (
        num(&dom, "answered"),
        num(&dom, "spooled"),
        num(&dom, "failed"),
    );
    assert_eq!((answered, spooled, failed), (12.0, 6.0, 3.0), "{dom}");
    assert_eq!(
        answered + spooled + failed,
        total(&metrics, "datalayer_sidecar_requests_total{")
    );
    assert_eq!(by_id(&dom, "verdict"), "degraded");
    // The spool as /spool and /metrics say.
    assert_eq!(num(&dom, "spool-depth"), spool["depth"].as_f64().unwrap());
    assert_eq!(
        Some(num(&dom, "spool-depth")),
        sample(&metrics, "datalayer_sidecar_spool_depth")
    );
    assert_eq!(
        num(&dom, "spool-dead-letters"),
        spool["dead_letters"].as_f64().unwrap()
    );
    assert_eq!(by_id(&dom, "breaker-state"), "closed (disabled)");
    // Retries by route as /metrics counts them.
    let retries_cell = |route: &str| -> f64 {
        let marker = format!("data-route=\"{route}\" data-reason=\"retries\">");
        let at = dom.find(&marker).unwrap() + marker.len();
        dom[at..at + dom[at..].find('<').unwrap()].parse().unwrap()
    };
    assert_eq!(
        retries_cell("hangs"),
        total(&metrics, "datalayer_sidecar_retries_total{route=\"hangs\"}")
    );
    // The last errors: code and route, never a header or a body.
    assert!(
        dom.contains("upstream_timeout") || dom.contains("deadline_exceeded"),
        "{dom}"
    );
    assert!(dom.contains("<td>hangs</td>"), "{dom}");
    assert_eq!(num(&dom, "generation"), 1.0);
    assert!(dom.contains("<svg"), "the depth chart is inline");
    assert!(
        !dom.contains("src=\"http") && !dom.contains("<script"),
        "self-contained: no external asset, no script"
    );

    let shot = match std::env::var_os("DATALAYER_SIDECAR_SCREENSHOT") {
        Some(p) => std::path::PathBuf::from(p),
        None => profile.path().join("status.png"),
    };
    browse(
        &url,
        profile.path(),
        &[
            &format!("--screenshot={}", shot.display()),
            "--window-size=1100,1500",
        ],
    )
    .await;
    let png = std::fs::read(&shot).unwrap();
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "a real screenshot"
    );
}
