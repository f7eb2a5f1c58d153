use super::*;

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

fn waiting(spool: &Spool) -> u64 {
    spool.store().totals.entries.load(Ordering::Relaxed)
}

/// Re-reading the store (for changes the operator CLI made) while
/// writes commit must never leave the per-route count below the
/// entries stored: a new write would then go live ahead of an older
/// stored version of its step. (Found on review.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resync_never_undercounts_waiting_writes() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = SpoolFile {
        path: dir.path().join("spool.sqlite3"),
        ..SpoolFile::default()
    };
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
        let resync = tokio::spawn(async move { s.resync().await });
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        resync.await.unwrap();
        assert_eq!(
            waiting(&spool),
            n,
            "round {round}: the count fell below what is stored"
        );
    }
}
