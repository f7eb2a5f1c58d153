//! An open-loop HTTP/1.1 load generator for the benchmarks: requests are
//! sent on a fixed schedule (`--rate` per second) whatever the target does,
//! and each latency is measured from the request's scheduled time, so a
//! stall shows up in the percentiles instead of silently lowering the load
//! (wrk, a closed-loop tool, cannot hold a rate). Written here because
//! wrk2 is not packaged for Debian.
//!
//! ```text
//! loadgen --url http://127.0.0.1:8787/api/graphql --body addstep.json \
//!         --rate 5000 --duration 20 --connections 32 [--unique]
//! ```
//! `--unique` replaces `STEP_ID` in the body with a fresh id per request,
//! unique across runs too (prefixed by the run's start time), so repeated
//! runs into one spool are new writes, not repeats of the last run's.
//! Prints one JSON line.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::sync::{Mutex, mpsc};
use tokio::time::Instant;

struct Args {
    url: hyper::Uri,
    body: String,
    rate: f64,
    duration: f64,
    connections: usize,
    unique: bool,
    /// Distinguishes this run's step ids from any earlier run's.
    run: u128,
}

fn args() -> Result<Args, String> {
    let mut url = None;
    let mut body = None;
    let mut rate = 1000.0;
    let mut duration = 10.0;
    let mut connections = 32;
    let mut unique = false;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut val = || it.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--url" => url = Some(val()?.parse().map_err(|e| format!("--url: {e}"))?),
            "--body" => {
                let path = val()?;
                body = Some(std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?)
            }
            "--rate" => rate = val()?.parse().map_err(|e| format!("--rate: {e}"))?,
            "--duration" => duration = val()?.parse().map_err(|e| format!("--duration: {e}"))?,
            "--connections" => {
                connections = val()?.parse().map_err(|e| format!("--connections: {e}"))?
            }
            "--unique" => unique = true,
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(Args {
        url: url.ok_or("--url is required")?,
        body: body.ok_or("--body is required")?,
        rate,
        duration,
        connections,
        unique,
        run: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    })
}

struct Slot {
    n: u64,
    scheduled: Instant,
}

#[derive(Default)]
struct Counts {
    errors: AtomicU64,
    non2xx: AtomicU64,
}

async fn worker(
    args: Arc<Args>,
    rx: Arc<Mutex<mpsc::UnboundedReceiver<Slot>>>,
    counts: Arc<Counts>,
) -> Vec<u64> {
    let mut lat = Vec::new();
    let authority = args
        .url
        .authority()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let path = args
        .url
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    let mut conn: Option<hyper::client::conn::http1::SendRequest<Full<Bytes>>> = None;
    loop {
        let slot = { rx.lock().await.recv().await };
        let Some(slot) = slot else { break };
        if conn.as_ref().is_none_or(|c| c.is_closed()) {
            match tokio::net::TcpStream::connect(&authority).await {
                Ok(s) => {
                    let _ = s.set_nodelay(true);
                    match hyper::client::conn::http1::handshake(TokioIo::new(s)).await {
                        Ok((send, c)) => {
                            tokio::spawn(c);
                            conn = Some(send);
                        }
                        Err(_) => {
                            counts.errors.fetch_add(1, Ordering::Relaxed);
                            continue;
                        }
                    }
                }
                Err(_) => {
                    counts.errors.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
            }
        }
        let Some(send) = conn.as_mut() else { continue };
        let body = if args.unique {
            args.body
                .replace("STEP_ID", &format!("lg-{}-{}", args.run, slot.n))
        } else {
            args.body.clone()
        };
        let req = Request::post(path.as_str())
            .header("host", authority.as_str())
            .header("content-type", "application/json")
            .header("x-api-key", "bench-key")
            .body(Full::new(Bytes::from(body)));
        let Ok(req) = req else { continue };
        if send.ready().await.is_err() {
            conn = None;
            counts.errors.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        match send.send_request(req).await {
            Ok(resp) => {
                let ok = resp.status().is_success();
                if resp.into_body().collect().await.is_err() {
                    counts.errors.fetch_add(1, Ordering::Relaxed);
                    conn = None;
                    continue;
                }
                if !ok {
                    counts.non2xx.fetch_add(1, Ordering::Relaxed);
                }
                lat.push(slot.scheduled.elapsed().as_micros() as u64);
            }
            Err(_) => {
                counts.errors.fetch_add(1, Ordering::Relaxed);
                conn = None;
            }
        }
    }
    lat
}

fn pct(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((q * (sorted.len() - 1) as f64).round() as usize).min(sorted.len() - 1);
    sorted[i]
}

fn main() {
    let args = match args() {
        Ok(a) => Arc::new(a),
        Err(e) => {
            eprintln!("loadgen: {e}");
            std::process::exit(64);
        }
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("runtime: {e}"));
    rt.block_on(async move {
        let (tx, rx) = mpsc::unbounded_channel::<Slot>();
        let rx = Arc::new(Mutex::new(rx));
        let counts = Arc::new(Counts::default());
        let mut workers = Vec::new();
        for _ in 0..args.connections {
            workers.push(tokio::spawn(worker(args.clone(), rx.clone(), counts.clone())));
        }
        // Pace on a plain thread: finer than the async timer's millisecond.
        let total = (args.rate * args.duration) as u64;
        let interval = Duration::from_secs_f64(1.0 / args.rate);
        let start = Instant::now();
        let pacer = std::thread::spawn(move || {
            let std_start = std::time::SystemTime::now();
            for n in 0..total {
                let due = interval * n as u32;
                if let Ok(elapsed) = std_start.elapsed()
                    && due > elapsed {
                        std::thread::sleep(due - elapsed);
                    }
                if tx
                    .send(Slot {
                        n,
                        scheduled: start + due,
                    })
                    .is_err()
                {
                    break;
                }
            }
        });
        let mut lat = Vec::with_capacity(total as usize);
        for w in workers {
            if let Ok(l) = w.await {
                lat.extend(l);
            }
        }
        let _ = pacer.join();
        let wall = start.elapsed().as_secs_f64();
        lat.sort_unstable();
        println!(
            "{{\"target_rate\":{},\"requests\":{},\"achieved_rate\":{:.1},\"errors\":{},\"non2xx\":{},\"p50_us\":{},\"p90_us\":{},\"p99_us\":{},\"p999_us\":{},\"max_us\":{}}}",
            args.rate,
            lat.len(),
            lat.len() as f64 / wall,
            counts.errors.load(Ordering::Relaxed),
            counts.non2xx.load(Ordering::Relaxed),
            pct(&lat, 0.50),
            pct(&lat, 0.90),
            pct(&lat, 0.99),
            pct(&lat, 0.999),
            lat.last().copied().unwrap_or(0)
        );
    });
}
