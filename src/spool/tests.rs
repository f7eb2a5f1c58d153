use super::*;
use std::sync::atomic::Ordering;
use std::time::Duration;

fn write(route: &Arc<str>, n: u64) -> Write {
    Write {
        route: route.clone(),
        request_id: format!("r{n}"),
        method: "POST".into(),
        path: "/api/graphql".into(),
        headers: Vec::new(),
        body: Bytes::from(vec![b'x'; 200]),
        keys: vec![format!("step:s{n}")],
    }
}

/// The default `[spool]` settings with the store at `path`, validated as
/// the sidecar does.
fn settings(path: &std::path::Path) -> SpoolSettings {
    let text = format!(
        "[upstream]\nurl = \"http://127.0.0.1:9\"\n[spool]\npath = {:?}\n",
        path.display().to_string()
    );
    crate::config::Config::from_toml_str(
        &text,
        std::path::Path::new("t"),
        &[],
        &crate::config::Overrides::default(),
    )
    .unwrap()
    .spool
}

fn waiting(spool: &Spool) -> u64 {
    spool.store().waiting()
}

/// Re-reading the store (for changes the operator CLI made) while
/// writes commit must never leave the per-route count below the
/// entries stored: a new write would then go live ahead of an older
/// stored version of its step. (Found on review.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resync_never_undercounts_waiting_writes() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = settings(&dir.path().join("spool.sqlite3"));
    let spool = Spool::open(&cfg, &[], SpoolMetrics::default(), false).unwrap();
    let route: Arc<str> = "spooled_writes".into();
    let mut n = 0;
    for round in 0..40 {
        let mut tasks = Vec::new();
        for _ in 0..20 {
            n += 1;
            let (s, w) = (spool.clone(), write(&route, n));
            let Admit::Behind(place) = s.admit(&w.keys, 200, true) else {
                panic!("write-behind always goes behind");
            };
            tasks.push(tokio::spawn(async move { s.enqueue(w, place).await }));
        }
        let s = spool.clone();
        let resync = tokio::spawn(async move { s.store().resync().await });
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        resync.await.unwrap().unwrap();
        assert_eq!(
            waiting(&spool),
            n,
            "round {round}: the count fell below what is stored"
        );
    }
}

fn body_write(route: &Arc<str>, body: &str, key: &str) -> Write {
    Write {
        body: Bytes::from(body.to_string()),
        keys: vec![key.to_string()],
        ..write(route, 0)
    }
}

/// A repeat of a stored write is not folded into it while a write of the
/// same key with a ticket between them is still being committed: that
/// write would land between the two and win.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeat_is_not_folded_over_a_write_still_being_committed() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = settings(&dir.path().join("spool.sqlite3"));
    let spool = Spool::open(&cfg, &[], SpoolMetrics::default(), false).unwrap();
    let route: Arc<str> = "spooled_writes".into();
    // F goes live; L (same step) waits behind it.
    let Admit::Live(f) = spool.admit(&["step:a".into()], 1, false) else {
        panic!("an empty queue sends a write live");
    };
    let Admit::Wait(l) = spool.admit(&["step:a".into()], 1, false) else {
        panic!("a write of a live key waits behind it");
    };
    // F fails: it is reserved at its own, earlier ticket, and L, told so,
    // follows it into the store, where it is pending.
    let f = f.into_reservation();
    let far = tokio::time::Instant::now() + Duration::from_secs(60);
    let Resolved::Behind(l) = l.resolve(far).await else {
        panic!("a write behind a stored one is stored after it");
    };
    spool
        .enqueue(body_write(&route, "X", "step:a"), f)
        .await
        .unwrap();
    // E repeats F while L is still being committed.
    let Admit::Behind(e) = spool.admit(&["step:a".into()], 1, false) else {
        panic!("behind the queue");
    };
    let got = spool
        .enqueue(body_write(&route, "X", "step:a"), e)
        .await
        .unwrap();
    assert_eq!(got, store::Appended::Stored, "E must stay after L");
    spool
        .enqueue(body_write(&route, "Y", "step:a"), l)
        .await
        .unwrap();
    let bodies: Vec<String> = spool
        .store()
        .head(10, 1 << 20)
        .await
        .unwrap()
        .into_iter()
        .map(|e| String::from_utf8(e.body.to_vec()).unwrap())
        .collect();
    assert_eq!(bodies, ["X", "Y", "X"]);
}

/// A worker that ends without being asked (here: a panic on its first
/// start) is seen — not running, the reason kept, the gauge at 0 — and
/// started again; a shutdown stops it for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_dies_is_seen_and_started_again() {
    use std::sync::atomic::AtomicU32;
    let dir = tempfile::tempdir().unwrap();
    let cfg = settings(&dir.path().join("spool.sqlite3"));
    let metrics = SpoolMetrics::default();
    let spool = Spool::open(&cfg, &[], metrics.clone(), false).unwrap();
    let starts = Arc::new(AtomicU32::new(0));
    let (stop, rx) = tokio::sync::watch::channel(false);
    let (died_tx, mut died) = tokio::sync::mpsc::unbounded_channel::<()>();
    let s = starts.clone();
    let worker = move |mut stop: tokio::sync::watch::Receiver<bool>| {
        let n = s.fetch_add(1, Ordering::SeqCst);
        let died = died_tx.clone();
        async move {
            if n == 0 {
                let _ = died.send(());
                panic!("worker bug");
            }
            let _ = stop.wait_for(|v| *v).await;
        }
    };
    let task = tokio::spawn(supervise::supervise(spool.clone(), worker, rx));
    died.recv().await.unwrap();
    // Down until the restart: not running, with the reason.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let down = loop {
        let h = spool.worker_health();
        if h.state == "restarting" {
            break h;
        }
        assert!(tokio::time::Instant::now() < deadline, "{h:?}");
        tokio::time::sleep(Duration::from_millis(1)).await;
    };
    assert_eq!(down.restarts, 1);
    assert!(
        down.last_failure.as_deref().unwrap().contains("worker bug"),
        "{down:?}"
    );
    // Started again.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !spool.worker_health().is_running() || starts.load(Ordering::SeqCst) < 2 {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(metrics.worker_up.get(), 1);
    assert_eq!(metrics.worker_restarts.get(), 1);
    assert!(spool.stats().await.unwrap().worker.is_running());
    stop.send(true).unwrap();
    task.await.unwrap();
    assert_eq!(spool.worker_health().state, "stopped");
    assert_eq!(starts.load(Ordering::SeqCst), 2);
}

/// A write waiting behind a live one, and another behind it: when the one
/// in between is dropped (its client left), the last still waits for the
/// live one — and follows it into the store if it is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_dropped_in_between_does_not_release_the_one_behind_it() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = settings(&dir.path().join("spool.sqlite3"));
    let spool = Spool::open(&cfg, &[], SpoolMetrics::default(), false).unwrap();
    let key = ["step:a".to_string()];
    let Admit::Live(a) = spool.admit(&key, 1, false) else {
        panic!("live");
    };
    let Admit::Wait(b) = spool.admit(&key, 1, false) else {
        panic!("b waits");
    };
    let Admit::Wait(c) = spool.admit(&key, 1, false) else {
        panic!("c waits");
    };
    drop(b);
    let far = tokio::time::Instant::now() + Duration::from_secs(60);
    let c = tokio::spawn(async move { c.resolve(far).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!c.is_finished(), "c went on while a was still live");
    let _a_stored = a.into_reservation();
    assert!(
        matches!(c.await.unwrap(), Resolved::Behind(_)),
        "c follows a into the store"
    );
}

/// A live write whose guard is dropped before it was answered (its
/// request abandoned, perhaps still on its way) counts as stored: the
/// write behind it goes behind the spool, not live.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_live_write_sends_the_one_behind_it_to_the_spool() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = settings(&dir.path().join("spool.sqlite3"));
    let spool = Spool::open(&cfg, &[], SpoolMetrics::default(), false).unwrap();
    let key = ["step:a".to_string()];
    let Admit::Live(a) = spool.admit(&key, 1, false) else {
        panic!("live");
    };
    let Admit::Wait(b) = spool.admit(&key, 1, false) else {
        panic!("b waits");
    };
    drop(a);
    let far = tokio::time::Instant::now() + Duration::from_secs(60);
    assert!(matches!(b.resolve(far).await, Resolved::Behind(_)));
}

/// A write the store fails to commit is refused with the fault's own
/// answer (a full disk: `spool_full`, counted as such; a store that went
/// away: unavailable, not counted as full), nothing of it is counted as
/// committed or waiting, and the next write, behind it in line, is neither
/// held up nor lost.
#[tokio::test]
async fn a_write_the_store_fails_is_refused_as_such_and_leaves_no_count() {
    use crate::spool::store::faulty::{FaultyStore, Plan};
    use crate::spool::store::{SqliteStore, Store};

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("spool.sqlite3");
    let cfg = settings(&path);
    let metrics = SpoolMetrics::default();
    let counters = ledger_counters(&metrics);
    let plan = Arc::new(std::sync::Mutex::new(Plan::default()));
    {
        let mut p = plan.lock().unwrap();
        p.append
            .push_back(StoreError::DiskFull("no space left".into()));
        p.append.push_back(StoreError::Unavailable("gone".into()));
    }
    let inner = SqliteStore::open(&path, false, 256, counters).unwrap();
    let store = Store::of(
        FaultyStore {
            inner,
            plan: plan.clone(),
        },
        path.clone(),
    );
    let spool = Spool::with_store(store, &cfg, &[], metrics.clone());
    let route: Arc<str> = "spooled_writes".into();
    let mut outcomes = Vec::new();
    for n in 1..=3 {
        let w = write(&route, n);
        let Admit::Behind(place) = spool.admit(&w.keys, 200, true) else {
            panic!("write-behind always goes behind");
        };
        outcomes.push(spool.enqueue(w, place).await);
    }
    let err = |i: usize| outcomes[i].as_ref().expect_err("refused");
    assert!(err(0).downcast_ref::<SpoolFull>().is_some(), "{}", err(0));
    assert!(
        err(1).downcast_ref::<SpoolUnavailable>().is_some(),
        "{}",
        err(1)
    );
    assert_eq!(outcomes[2].as_ref().ok(), Some(&Appended::Stored));
    assert_eq!(metrics.full.get(), 1, "only the full disk counts as full");
    assert_eq!(metrics.committed.get(), 1, "only the stored write counts");
    assert_eq!(waiting(&spool), 1);
    let status = spool.stats().await.unwrap();
    assert_eq!((status.committed, status.stats.depth), (1, 1));
}
