//! Spool store commit cost alone: N appends from C concurrent tasks into a
//! fresh store, then N deliveries; prints writes/s and CPU µs per write.
//!
//!   cargo run --release --example storebench -- [entries] [concurrency] [body_bytes]
//!
//! `STOREBENCH_DROP_TRIGGERS=1` measures without the ledger and key-index
//! triggers (for pricing them; the sidecar always has them).

use tokio::time::Instant;

use bytes::Bytes;
use datalayer_sidecar::spool::store::{NewEntry, Store};

fn cpu_us() -> f64 {
    let s = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let f: Vec<&str> = s
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks: f64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    ticks * 1e6 / 100.0
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let n = args.first().copied().unwrap_or(50_000);
    let conc = args.get(1).copied().unwrap_or(32);
    let body_len = args.get(2).copied().unwrap_or(1400);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("spool.sqlite3");
    let store = Store::open(&path, false, 256, Default::default()).unwrap();
    if std::env::var("STOREBENCH_DROP_TRIGGERS").is_ok() {
        let c = rusqlite::Connection::open(&path).unwrap();
        c.execute_batch("DROP TRIGGER entry_added; DROP TRIGGER entry_removed;")
            .unwrap();
    }
    let body = Bytes::from(vec![b'x'; body_len]);
    let (t0, c0) = (Instant::now(), cpu_us());
    let next = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(1));
    let mut tasks = Vec::new();
    for _ in 0..conc {
        let (store, body, next) = (store.clone(), body.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let t = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if t > n as u64 {
                    break;
                }
                store
                    .append(NewEntry {
                        ticket: t,
                        route: "spooled_writes".into(),
                        request_id: format!("r{t}"),
                        method: "POST".into(),
                        path: "/api/graphql".into(),
                        headers: b"content-type\0application/json\0x-api-key\0k\0".to_vec(),
                        body: body.clone(),
                        keys: vec![format!("step:{t:032x}")],
                        dedup: true,
                    })
                    .await
                    .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let (secs, cpu) = (t0.elapsed().as_secs_f64(), cpu_us() - c0);
    let batches = store.ledger().commit_batches;
    println!(
        "append: {n} writes, {:.0}/s, {:.1} µs CPU/write, {:.1} writes/commit",
        n as f64 / secs,
        cpu / n as f64,
        n as f64 / batches.max(1) as f64
    );
    let (t0, c0) = (Instant::now(), cpu_us());
    let mut done = 0;
    while done < n {
        let head = store.head(256, 8 << 20).await.unwrap();
        if head.is_empty() {
            break;
        }
        let mut ds = Vec::new();
        for e in head {
            let store = store.clone();
            ds.push(tokio::spawn(
                async move { store.delivered(e.id).await.unwrap() },
            ));
        }
        for d in ds {
            d.await.unwrap();
            done += 1;
        }
    }
    let (secs, cpu) = (t0.elapsed().as_secs_f64(), cpu_us() - c0);
    println!(
        "deliver: {done} removals, {:.0}/s, {:.1} µs CPU/removal",
        done as f64 / secs,
        cpu / done.max(1) as f64
    );
}
