//! The shared spool on a real PostgreSQL server (a throwaway cluster per
//! test): replicas share one queue, a replica that dies loses nothing, the
//! order of every step holds across replicas, the database may restart or
//! go away, and its password never shows.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use support::backend::REFUSE;
use support::backend::{Backend, State};
use support::client::{self, sample};
use support::postgres::{PASSWORD, Postgres, server_pki};
use support::proxy::config_text;
use support::{Answer, Process};

/// The shared store on `pg`, opened as a sidecar would (two connections, a
/// 10 s lease, group commits of up to 256 writes), for the store-level tests.
async fn open_store(pg: &Postgres) -> datalayer_sidecar::spool::store::Store {
    open_store_leasing(pg, Duration::from_secs(10)).await
}

/// [`open_store`] with its own lease.
async fn open_store_leasing(
    pg: &Postgres,
    lease: Duration,
) -> datalayer_sidecar::spool::store::Store {
    datalayer_sidecar::spool::store::Store::open_postgres(
        &params(pg, lease),
        256,
        Default::default(),
    )
    .await
    .unwrap()
}

fn params(pg: &Postgres, lease: Duration) -> datalayer_sidecar::spool::store::pg::PgParams {
    datalayer_sidecar::spool::store::pg::PgParams {
        config: pg.url().parse().unwrap(),
        display: pg.url_without_password(),
        ca_file: None,
        pool: 2,
        lease,
    }
}

/// A spooled write of `body` on `route` with one key, for the store-level
/// tests; each overrides what it checks.
fn new_entry(route: &str, key: &str, body: &str) -> datalayer_sidecar::spool::store::NewEntry {
    datalayer_sidecar::spool::store::NewEntry {
        ticket: 0,
        route: route.to_string(),
        request_id: "id".to_string(),
        method: "POST".to_string(),
        path: "/api/graphql".to_string(),
        headers: Vec::new(),
        body: bytes::Bytes::from(body.to_string()),
        keys: vec![key.to_string()],
        dedup: true,
    }
}

/// The schema versions applied to the store, in order: "1,2".
fn schema_versions(pg: &Postgres) -> String {
    pg.psql(
        "SELECT string_agg(version::text, ',' ORDER BY version) FROM datalayer_sidecar.schema_version",
    )
}

fn shared(pg: &Postgres, backend: &str, extra: &str) -> String {
    config_text(
        backend,
        &format!(
            "[spool]\nbackend = \"postgres\"\npostgres_url = \"{}\"\nlease = \"10s\"\n\
             replay_backoff_base = \"50ms\"\nreplay_backoff_max = \"300ms\"\n{extra}",
            pg.url()
        ),
    )
}

async fn write(p: &Process, step: &str, version: u32) -> Answer {
    client::post_json(
        p.addr,
        "/api/graphql",
        &client::add_step_with(vec![(step.to_string(), format!("v{version}"))]),
    )
    .await
}

fn acked(a: &Answer) -> bool {
    a.status == 200 && a.header("x-sidecar-spooled") == Some("true")
}

/// Every step's versions arrived in increasing order, and each ended on
/// `last[step]`.
fn assert_in_order(state: &State, last: &HashMap<String, u32>) {
    let mut seen: HashMap<&str, u32> = HashMap::new();
    for (step, content) in &state.applied {
        let v: u32 = content.trim_start_matches('v').parse().unwrap();
        if let Some(prev) = seen.get(step.as_str()) {
            assert!(
                v >= *prev,
                "step {step}: v{v} delivered after v{prev}: {:?}",
                state.applied
            );
        }
        seen.insert(step, v);
    }
    for (step, v) in last {
        assert_eq!(
            state.steps.get(step).map(String::as_str),
            Some(format!("v{v}").as_str()),
            "step {step} ends on the last acknowledged version"
        );
    }
}

fn all_arrived(last: &HashMap<String, u32>) -> impl Fn(&State) -> bool + '_ {
    move |s: &State| {
        last.iter()
            .all(|(step, v)| s.steps.get(step) == Some(&format!("v{v}")))
    }
}

/// Two sidecars share one store while the backend is down; writes are
/// acknowledged through both, alternating, so consecutive versions of a
/// step go through different replicas. A is SIGKILLed and its directory
/// deleted; the backend comes back; B delivers every acknowledged write,
/// each step's versions in the order they were acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_dies_loses_nothing_and_order_holds_across_replicas() {
    let pg = Postgres::start();
    let mut backend = Backend::down(None);
    let mut a = Process::spawn(&shared(&pg, &backend.url(), ""), &[]).await;
    let b = Process::spawn(&shared(&pg, &backend.url(), ""), &[]).await;
    let mut last = HashMap::new();
    for round in 0..6u32 {
        for s in 0..10 {
            let step = format!("step-{s}");
            let via = if (round + s) % 2 == 0 { &a } else { &b };
            let r = write(via, &step, round).await;
            assert!(acked(&r), "{} {}", r.status, r.text());
            last.insert(step, round);
        }
    }
    let depth = client::get(b.admin, "/spool").await.json()["depth"].clone();
    assert_eq!(depth, 60, "both replicas see one shared queue");
    a.child.kill().unwrap();
    a.wait_exit(Duration::from_secs(5)).await;
    std::fs::remove_dir_all(&a.dir).unwrap();

    backend.up().await;
    backend
        .wait_for(
            Duration::from_secs(40),
            "every acknowledged write",
            all_arrived(&last),
        )
        .await;
    assert_in_order(&backend.state.lock().unwrap(), &last);
    let m = client::get(b.admin, "/metrics").await.text();
    assert_eq!(sample(&m, "datalayer_sidecar_spool_depth"), Some(0.0));
    assert_eq!(
        pg.psql("SELECT count(*) FROM datalayer_sidecar.entries"),
        "0"
    );
    // The per-key order index empties with the queue.
    assert_eq!(
        pg.psql("SELECT count(*) FROM datalayer_sidecar.entry_keys"),
        "0"
    );
}

/// The same step written through two replicas, alternating and each write
/// acknowledged before the next, with the backend up: upstream the step
/// takes its versions in acknowledgement order and ends on the last.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writers_of_one_step_through_two_replicas_are_applied_in_acknowledgement_order() {
    let pg = Postgres::start();
    let backend = Backend::up_now(None).await;
    let a = Process::spawn(&shared(&pg, &backend.url(), ""), &[]).await;
    let b = Process::spawn(&shared(&pg, &backend.url(), ""), &[]).await;
    let mut last = HashMap::new();
    for v in 0..40u32 {
        let via = if v % 2 == 0 { &a } else { &b };
        let r = write(via, "shared-step", v).await;
        assert!(acked(&r), "{} {}", r.status, r.text());
        last.insert("shared-step".to_string(), v);
    }
    backend
        .wait_for(
            Duration::from_secs(30),
            "the last version",
            all_arrived(&last),
        )
        .await;
    assert_in_order(&backend.state.lock().unwrap(), &last);
}

/// The database restarts while writes flow: writes it cannot commit get a
/// structured 503 (never an acknowledgement), the pool reconnects by
/// itself, and every acknowledged write is delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_restart_loses_no_acknowledged_write() {
    let pg = Postgres::start();
    let backend = Backend::up_now(None).await;
    let p = Process::spawn(&shared(&pg, &backend.url(), ""), &[]).await;
    let mut last = HashMap::new();
    let mut refused = 0;
    for i in 0..60u32 {
        if i == 20 {
            pg.stop();
        }
        if i == 40 {
            pg.restart();
        }
        let step = format!("r-{}", i % 15);
        let r = write(&p, &step, i).await;
        if acked(&r) {
            last.insert(step, i);
        } else {
            assert_eq!(r.status, 503, "{}", r.text());
            let code = r.json()["errors"][0]["extensions"]["code"].clone();
            assert_eq!(code, "spool_unavailable", "{}", r.text());
            refused += 1;
        }
    }
    assert!(
        refused >= 20,
        "writes while the database was down were refused: {refused}"
    );
    backend
        .wait_for(
            Duration::from_secs(30),
            "every acknowledged write",
            all_arrived(&last),
        )
        .await;
    assert_in_order(&backend.state.lock().unwrap(), &last);
}

/// With the database down the sidecar keeps serving everything that does
/// not need the spool, and says quickly that it cannot store writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_database_down_writes_fail_visibly_and_reads_still_flow() {
    let pg = Postgres::start();
    let backend = Backend::up_now(None).await;
    let p = Process::spawn(&shared(&pg, &backend.url(), ""), &[]).await;
    pg.stop();
    let started = tokio::time::Instant::now();
    let r = write(&p, "down-1", 1).await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "answered in time"
    );
    let q = client::post_json(p.addr, "/api/graphql", &client::query()).await;
    assert_eq!(
        q.status,
        200,
        "a query does not need the spool: {}",
        q.text()
    );
    assert!(
        !p.logs().contains(PASSWORD),
        "the password never reaches the log"
    );
}

/// The password: from the URL, a file or PGPASSWORD; never in `/config`,
/// `check-config`, the log or an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_password_never_shows() {
    let pg = Postgres::start();
    let backend = Backend::up_now(None).await;
    let p = Process::spawn(&shared(&pg, &backend.url(), ""), &[]).await;
    let config = client::get(p.admin, "/config").await.text();
    assert!(!config.contains(PASSWORD), "{config}");
    assert!(config.contains("postgres:<redacted>@"), "{config}");
    let out = p.cli(&["check-config"]);
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{printed}");
    assert!(!printed.contains(PASSWORD), "{printed}");
    let r = write(&p, "pw-1", 1).await;
    assert!(acked(&r), "{}", r.text());
    assert!(!p.logs().contains(PASSWORD));

    // The password from PGPASSWORD, and from a file.
    let no_pw = config_text(
        &backend.url(),
        &format!(
            "[spool]\nbackend = \"postgres\"\npostgres_url = \"{}\"\n",
            pg.url_without_password()
        ),
    );
    let q = Process::spawn(&no_pw, &[("PGPASSWORD", PASSWORD)]).await;
    assert!(acked(&write(&q, "pw-2", 1).await));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pgpass");
    std::fs::write(&file, format!("{PASSWORD}\n")).unwrap();
    let with_file = format!("{no_pw}postgres_password_file = \"{}\"\n", file.display());
    let f = Process::spawn(&with_file, &[]).await;
    assert!(acked(&write(&f, "pw-3", 1).await));

    // A wrong password: a clear refusal to start, without the password.
    let wrong = shared(&pg, &backend.url(), "").replace(PASSWORD, "not-the-password");
    let mut w = Process::start_at(dir.path(), &wrong, &[], &[]);
    let status = w.wait_exit(Duration::from_secs(20)).await;
    assert!(!status.success());
    let logs = w.logs();
    assert!(logs.contains("postgres"), "{logs}");
    assert!(!logs.contains("not-the-password"), "{logs}");
}

/// `spool stats`, `list` and `dead-letters` on the shared store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_spool_commands_work_on_the_shared_store() {
    let pg = Postgres::start();
    let backend = Backend::down(None);
    let p = Process::spawn(&shared(&pg, &backend.url(), ""), &[]).await;
    for i in 0..3 {
        assert!(acked(&write(&p, &format!("cli-{i}"), 1).await));
    }
    let out = p.cli(&["spool", "stats", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stats: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(stats["depth"], 3);
    let out = p.cli(&["spool", "list"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("step:cli-0"), "{text}");
    let out = p.cli(&["spool", "dead-letters", "--json"]);
    assert!(out.status.success());
}

/// Sidecars starting together on an empty database: each schema version
/// is applied once, and every one of them starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidecars_starting_together_migrate_once() {
    let pg = Postgres::start();
    let backend = Backend::up_now(None).await;
    let config = shared(&pg, &backend.url(), "");
    let dirs: Vec<_> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut ps: Vec<Process> = dirs
        .iter()
        .map(|d| Process::start_at(d.path(), &config, &[], &[]))
        .collect();
    for p in &mut ps {
        p.wait_ready(Duration::from_secs(20)).await;
    }
    assert_eq!(schema_versions(&pg), "1,2");
    for (i, p) in ps.iter().enumerate() {
        assert!(acked(&write(p, &format!("m-{i}"), 1).await));
    }
}

/// SIGTERM with entries waiting and the backend down: the replica hands
/// back what it had claimed and says so; another replica delivers them at
/// once, without waiting for the lease to run out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_hands_the_claimed_entries_to_the_fleet() {
    let pg = Postgres::start();
    let mut backend = Backend::down(None);
    // A lease far longer than the test: only a hand-off lets B deliver.
    let long = "lease = \"10min\"\n";
    let mut a = Process::spawn(
        &shared(&pg, &backend.url(), "").replace("lease = \"10s\"\n", long),
        &[],
    )
    .await;
    let mut last = HashMap::new();
    for i in 0..20u32 {
        let step = format!("h-{i}");
        assert!(acked(&write(&a, &step, i).await));
        last.insert(step, i);
    }
    // Let A's worker claim them (it retries against the down backend).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let claimed = pg.psql("SELECT count(*) FROM datalayer_sidecar.leases");
    assert_ne!(claimed, "0", "A holds claims");
    a.signal("TERM");
    let status = a.wait_exit(Duration::from_secs(30)).await;
    assert!(status.success(), "{}", a.logs());
    let logs = a.logs();
    let line = logs
        .lines()
        .find(|l| l.contains("spool hand-off"))
        .unwrap_or_else(|| panic!("no hand-off line: {logs}"));
    assert!(line.contains("\"held_only_locally\":0"), "{line}");
    assert!(line.contains("\"waiting_in_shared_store\":20"), "{line}");
    assert_eq!(
        pg.psql("SELECT count(*) FROM datalayer_sidecar.leases"),
        "0"
    );
    backend.up().await;
    let b = Process::spawn(
        &shared(&pg, &backend.url(), "").replace("lease = \"10s\"\n", long),
        &[],
    )
    .await;
    backend
        .wait_for(
            Duration::from_secs(20),
            "every write, delivered by B",
            all_arrived(&last),
        )
        .await;
    drop(b);
}

/// Identical waiting writes, through two replicas, are delivered once; a
/// write the backend refuses for its content becomes a dead letter in the
/// shared store, and `spool requeue` sends it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicates_are_delivered_once_and_dead_letters_are_shared() {
    let pg = Postgres::start();
    let mut backend = Backend::down(None);
    let a = Process::spawn(&shared(&pg, &backend.url(), ""), &[]).await;
    let b = Process::spawn(&shared(&pg, &backend.url(), ""), &[]).await;
    for p in [&a, &b, &a] {
        assert!(acked(&write(p, "same", 7).await));
    }
    let refused = client::post_json(
        a.addr,
        "/api/graphql",
        &client::add_step_with(vec![("bad".to_string(), REFUSE.to_string())]),
    )
    .await;
    assert!(acked(&refused));
    assert_eq!(
        pg.psql("SELECT count(*) FROM datalayer_sidecar.entries"),
        "2"
    );
    backend.up().await;
    backend
        .wait_for(Duration::from_secs(20), "the step", |s| {
            s.steps.contains_key("same")
        })
        .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while pg.psql("SELECT count(*) FROM datalayer_sidecar.dead_letters") != "1" {
        assert!(tokio::time::Instant::now() < deadline, "no dead letter");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let received = backend
        .state
        .lock()
        .unwrap()
        .received
        .iter()
        .filter(|(id, _)| id == "same")
        .count();
    assert_eq!(received, 1, "three identical writes, delivered once");
    let dead = b.cli(&["spool", "dead-letters", "--json"]);
    let dead: serde_json::Value = serde_json::from_slice(&dead.stdout).unwrap();
    assert_eq!(dead.as_array().unwrap().len(), 1, "{dead}");
    let out = b.cli(&["spool", "requeue", "--all"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        pg.psql("SELECT count(*) FROM datalayer_sidecar.dead_letters"),
        "0"
    );
    assert_eq!(
        pg.psql("SELECT count(*) FROM datalayer_sidecar.entries"),
        "1"
    );
    // Dead-lettering took its keys out of the order index, requeueing put
    // them back: one entry, one key.
    assert_eq!(
        pg.psql("SELECT string_agg(key, ',') FROM datalayer_sidecar.entry_keys"),
        "step:bad"
    );
}

/// TLS to the database is verified: a server certificate the roots do not
/// know stops the start with a clear error; with its CA in
/// `spool.postgres_ca_file` the sidecar connects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_to_the_database_is_verified() {
    let pki = server_pki();
    let pg = Postgres::start_tls(&pki);
    let backend = Backend::up_now(None).await;
    let dir = tempfile::tempdir().unwrap();
    let url = format!("{}?sslmode=require", pg.url());
    let base = config_text(
        &backend.url(),
        &format!("[spool]\nbackend = \"postgres\"\npostgres_url = \"{url}\"\n"),
    );
    let mut refused = Process::start_at(dir.path(), &base, &[], &[]);
    let status = refused.wait_exit(Duration::from_secs(20)).await;
    assert!(!status.success());
    let logs = refused.logs();
    assert!(
        logs.contains("invalid peer certificate") && logs.contains("UnknownIssuer"),
        "the reason is named: {logs}"
    );
    assert!(!logs.contains(PASSWORD), "{logs}");
    let ca = dir.path().join("db-ca.pem");
    std::fs::write(&ca, &pki.ca_pem).unwrap();
    let trusted = format!("{base}postgres_ca_file = \"{}\"\n", ca.display());
    let p = Process::spawn(&trusted, &[]).await;
    assert!(acked(&write(&p, "tls-1", 1).await));
    let ssl = pg.psql("SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) WHERE a.application_name = 'datalayer-sidecar' AND s.ssl");
    assert_ne!(ssl, "0", "the sidecar's sessions use TLS");
}

/// Two writers of one step, each through its own replica, at the same
/// time: the step ends on a write that no other write followed in real
/// time (none was sent after its acknowledgement arrived), as a single
/// store would.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_through_two_replicas_end_on_a_last_write() {
    let pg = Postgres::start();
    let backend = Backend::up_now(None).await;
    let a = std::sync::Arc::new(Process::spawn(&shared(&pg, &backend.url(), ""), &[]).await);
    let b = std::sync::Arc::new(Process::spawn(&shared(&pg, &backend.url(), ""), &[]).await);
    let t0 = tokio::time::Instant::now();
    let mut writers = Vec::new();
    for (w, p) in [(0u32, a.clone()), (1, b.clone())] {
        writers.push(tokio::spawn(async move {
            let mut done = Vec::new();
            for i in 0..30u32 {
                let v = i * 2 + w;
                let sent = t0.elapsed();
                let r = write(&p, "contended", v).await;
                assert!(acked(&r), "{} {}", r.status, r.text());
                done.push((v, sent, t0.elapsed()));
            }
            done
        }));
    }
    let mut writes = Vec::new();
    for w in writers {
        writes.extend(w.await.unwrap());
    }
    // Wait for the queue to empty, then read what the step ended on.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while pg.psql("SELECT count(*) FROM datalayer_sidecar.entries") != "0" {
        assert!(
            tokio::time::Instant::now() < deadline,
            "queue never emptied"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let last: u32 = backend.steps()["contended"]
        .trim_start_matches('v')
        .parse()
        .unwrap();
    let (_, _, last_acked) = writes.iter().find(|(v, _, _)| *v == last).copied().unwrap();
    let later: Vec<u32> = writes
        .iter()
        .filter(|(_, sent, _)| *sent > last_acked)
        .map(|(v, _, _)| *v)
        .collect();
    assert!(
        later.is_empty(),
        "the step ended on v{last}, but {later:?} were sent after its acknowledgement"
    );
}

/// One group commit decides duplicates exactly as one-by-one appends
/// would, although its duplicate look-ups are pipelined ahead of its
/// inserts: a write folds into the waiting row that is last in line for its
/// keys (in the table or earlier in the same batch), takes its headers, and
/// never folds across a newer version or a barrier.
#[tokio::test(flavor = "current_thread")]
async fn a_group_commit_folds_duplicates_as_one_by_one_appends_would() {
    use datalayer_sidecar::route::BARRIER_KEY;
    use datalayer_sidecar::spool::store::{Appended, NewEntry};

    let pg = Postgres::start();
    let store = open_store(&pg).await;
    let entry = |key: &str, body: &str, headers: &str| NewEntry {
        request_id: headers.to_string(),
        headers: headers.as_bytes().to_vec(),
        ..new_entry("r", key, body)
    };
    // Waiting before the batch: s3 = X, s4 = X.
    assert_eq!(
        store.append(entry("s3", "X", "h0")).await.unwrap(),
        Appended::Stored
    );
    assert_eq!(
        store.append(entry("s4", "X", "h0")).await.unwrap(),
        Appended::Stored
    );
    // Queued together, so the writer takes them as one transaction (the
    // runtime has one thread: nothing runs until all are queued).
    let batch = vec![
        entry("s1", "X", "h1"), // 3
        entry("s1", "X", "h2"), // folds into 3
        entry("s2", "X", "h3"), // 4
        entry("s2", "Y", "h4"), // 5
        entry("s2", "X", "h5"), // 6: 4 is no longer last for s2
        entry("s3", "X", "h6"), // folds into 1 (in the table)
        entry("s3", "X", "h7"), // folds into 1 again, newest headers
        {
            let mut b = entry(BARRIER_KEY, "B", "h8"); // 7
            b.keys = vec![BARRIER_KEY.to_string()];
            b
        },
        entry("s4", "X", "h9"),  // 8: 2 is behind the barrier
        entry("s4", "X", "h10"), // folds into 8
    ];
    let got = futures_util::future::join_all(batch.into_iter().map(|e| store.append(e))).await;
    let got: Vec<Appended> = got.into_iter().map(Result::unwrap).collect();
    use Appended::{Duplicate, Stored};
    assert_eq!(
        got,
        vec![
            Stored,
            Duplicate(3),
            Stored,
            Stored,
            Stored,
            Duplicate(1),
            Duplicate(1),
            Stored,
            Stored,
            Duplicate(8)
        ]
    );
    assert_eq!(
        pg.psql(
            "SELECT string_agg(seq || ':' || array_to_string(keys, ',') || ':' \
             || convert_from(body, 'UTF8') || ':' || convert_from(headers, 'UTF8'), ' ' ORDER BY seq) \
             FROM datalayer_sidecar.entries"
        ),
        "1:s3:X:h7 2:s4:X:h0 3:s1:X:h2 4:s2:X:h3 5:s2:Y:h4 6:s2:X:h5 7:*:B:h8 8:s4:X:h10"
    );
    assert_eq!(pg.psql("SELECT seq FROM datalayer_sidecar.counter"), "8");
    // The order side table holds one row per key of every waiting entry.
    assert_eq!(
        pg.psql("SELECT count(*) FROM datalayer_sidecar.entry_keys"),
        "8"
    );
}

/// The shared counts come from a ledger kept by the statements that change
/// the rows, not from scanning the queue: after appends on two routes, a
/// repeat, deliveries, a dead letter, a requeue and a purge, `stats` and
/// the totals agree with the tables, and reading them folds the ledger
/// back to at most one row per route.
#[tokio::test(flavor = "current_thread")]
async fn the_shared_counts_agree_with_the_tables() {
    use datalayer_sidecar::spool::store::{Appended, DeadInfo, NewEntry};

    let pg = Postgres::start();
    let store = open_store(&pg).await;
    let entry = |route: &str, key: &str, body: &str| NewEntry {
        request_id: "r".to_string(),
        headers: b"x-h\0v\0".to_vec(),
        ..new_entry(route, key, body)
    };
    let check = |what: &str| {
        let store = store.clone();
        let pg = &pg;
        let what = what.to_string();
        async move {
            store.resync().await.unwrap();
            let stats = store.stats().await.unwrap();
            let sql = |q: &str| pg.psql(q).parse::<u64>().unwrap();
            let depth = sql("SELECT count(*) FROM datalayer_sidecar.entries");
            let bytes =
                sql("SELECT coalesce(sum(octet_length(body)), 0) FROM datalayer_sidecar.entries");
            let dead = sql("SELECT count(*) FROM datalayer_sidecar.dead_letters");
            assert_eq!(
                (stats.depth, stats.bytes, stats.dead_letters),
                (depth, bytes, dead),
                "{what}: stats"
            );
            assert_eq!(
                {
                    let c = store.ledger();
                    (c.entries, c.bytes, c.dead_letters)
                },
                (depth, bytes, dead),
                "{what}: totals"
            );
            let on_a = sql("SELECT count(*) FROM datalayer_sidecar.entries WHERE route = 'a'");
            assert_eq!(
                stats.per_route.get("a").copied().unwrap_or(0),
                on_a,
                "{what}: per route"
            );
            let rows = sql("SELECT count(*) FROM datalayer_sidecar.ledger");
            assert!(
                rows <= 2,
                "{what}: the ledger holds {rows} rows after a fold"
            );
        }
    };
    for i in 0..5 {
        store
            .append(entry("a", &format!("s{i}"), "AAAA"))
            .await
            .unwrap();
        store
            .append(entry("b", &format!("t{i}"), "BBBBBBBB"))
            .await
            .unwrap();
    }
    assert!(matches!(
        store.append(entry("a", "s4", "AAAA")).await.unwrap(),
        Appended::Duplicate(_)
    ));
    check("appended").await;
    let head = store.head(4, 1 << 20).await.unwrap();
    assert_eq!(head.len(), 4);
    store.delivered(head[0].id).await.unwrap();
    store.delivered(head[1].id).await.unwrap();
    store
        .dead_letter(
            head[2].id,
            DeadInfo {
                class: "permanent".into(),
                kind: "item_not_ok".into(),
                status: Some(200),
                response: None,
                reason: "refused".into(),
            },
        )
        .await
        .unwrap();
    check("delivered and dead-lettered").await;
    // As the operator CLI does: its own connection to the shared store.
    let pgs = datalayer_sidecar::spool::store::pg::PgStore::open(
        &params(&pg, Duration::from_secs(30)),
        Default::default(),
        1,
    )
    .await
    .unwrap();
    assert_eq!(pgs.requeue(&[]).await.unwrap(), 1);
    check("requeued").await;
    pgs.purge(true, false).await.unwrap();
    check("purged").await;
}

/// A write the server refuses fails alone: its group commit is gone, but
/// the writes batched with it are committed again, each on its own and in
/// order, whichever statement was refused; the connection is left clean
/// (the statements travel pipelined: `BEGIN` with the look-up, the insert
/// with `COMMIT`), and the next commits on the same pool (two connections)
/// store exactly what they are given.
#[tokio::test(flavor = "current_thread")]
async fn a_refused_write_fails_alone_and_the_connection_stays_clean() {
    use datalayer_sidecar::spool::store::{Appended, NewEntry};

    let pg = Postgres::start();
    let store = open_store(&pg).await;
    let entry = |key: &str, dedup: bool| NewEntry {
        dedup,
        ..new_entry("r", key, &format!("body of {key}"))
    };
    for round in 0..4 {
        // Refused by the server for its NUL. Deduplicated, the batch's
        // look-up meets it, before any `COMMIT` is sent; not deduplicated,
        // only the insert does, pipelined with the `COMMIT`.
        let batch = vec![
            entry(&format!("a{round}"), true),
            entry("bad\0key", round % 2 == 1),
            entry(&format!("b{round}"), true),
        ];
        let got = futures_util::future::join_all(batch.into_iter().map(|e| store.append(e))).await;
        assert!(
            matches!(got[0], Ok(Appended::Stored)) && matches!(got[2], Ok(Appended::Stored)),
            "round {round}: the writes batched with the refused one are stored: {got:?}"
        );
        let err = got[1].as_ref().unwrap_err().to_string();
        assert!(
            err.contains("0x00"),
            "round {round}: the server's reason: {err}"
        );
        assert_eq!(
            store
                .append(entry(&format!("ok{round}"), true))
                .await
                .unwrap(),
            Appended::Stored
        );
    }
    assert_eq!(
        pg.psql(
            "SELECT string_agg(seq || ':' || array_to_string(keys, ','), ' ' ORDER BY seq) \
             FROM datalayer_sidecar.entries"
        ),
        "1:a0 2:b0 3:ok0 4:a1 5:b1 6:ok1 7:a2 8:b2 9:ok2 10:a3 11:b3 12:ok3"
    );
    assert_eq!(pg.psql("SELECT seq FROM datalayer_sidecar.counter"), "12");
    assert_eq!(
        pg.psql("SELECT count(*) FROM datalayer_sidecar.entry_keys"),
        "12"
    );
    assert_eq!(
        pg.psql("SELECT sum(entries) FROM datalayer_sidecar.ledger"),
        "12"
    );
    // No session is left inside a transaction.
    assert_eq!(
        pg.psql(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE application_name = 'datalayer-sidecar' AND state LIKE 'idle in transaction%'"
        ),
        "0"
    );
}

/// Autoanalyze of a deep queue stays cheap: the server samples at most
/// 3,000 rows of the entries table (with the default target it read every
/// page of a 10,000-entry queue and sorted each column, bodies included),
/// keeps statistics on the columns the statements compare, and a store
/// made by the first schema version gets the same when a sidecar starts.
#[tokio::test(flavor = "current_thread")]
async fn analyzing_a_deep_queue_samples_a_bounded_number_of_rows() {
    let pg = Postgres::start();
    let store = open_store(&pg).await;
    // Bodies differ as step writes do (an identical body on every key
    // would make each commit compare against every row with its digest).
    let padding = "x".repeat(1_300);
    for chunk in 0..40 {
        let entries = (0..250)
            .map(|i| {
                let key = format!("deep-{chunk}-{i}");
                new_entry("a", &key, &format!("{key}{padding}"))
            })
            .collect();
        store.append_many(entries).await.unwrap();
    }
    let sampled = |pg: &Postgres| -> u64 {
        let notices = pg.psql_notices("ANALYZE VERBOSE datalayer_sidecar.entries");
        notices
            .split(" rows in sample")
            .next()
            .and_then(|head| head.rsplit(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no sample size in: {notices}"))
    };
    let n = sampled(&pg);
    assert!(n <= 3_000, "ANALYZE sampled {n} rows");
    let buckets = pg.psql(
        "SELECT array_length(histogram_bounds::text::text[], 1) FROM pg_stats \
         WHERE schemaname = 'datalayer_sidecar' AND tablename = 'entries' AND attname = 'seq'",
    );
    assert_eq!(buckets, "11", "the order column keeps its histogram");
    let wide = pg.psql(
        "SELECT count(*) FROM pg_stats WHERE schemaname = 'datalayer_sidecar' \
         AND tablename = 'entries' AND attname IN ('body', 'headers')",
    );
    assert_eq!(wide, "0", "bodies and headers are not analyzed");
    drop(store);

    // A store from schema version 1: default targets, no version 2.
    pg.psql(
        "DO $$ DECLARE c text; BEGIN
           FOR c IN SELECT attname FROM pg_attribute
                     WHERE attrelid = 'datalayer_sidecar.entries'::regclass AND attnum > 0
                       AND NOT attisdropped LOOP
             EXECUTE format('ALTER TABLE datalayer_sidecar.entries ALTER COLUMN %I SET STATISTICS -1', c);
           END LOOP;
         END $$;
         DELETE FROM datalayer_sidecar.schema_version WHERE version > 1",
    );
    assert!(
        sampled(&pg) > 3_000,
        "the version-1 store samples every row"
    );
    let _store = open_store(&pg).await;
    assert_eq!(schema_versions(&pg), "1,2");
    let n = sampled(&pg);
    assert!(n <= 3_000, "after the upgrade ANALYZE sampled {n} rows");
}

/// Four waiting entries of different steps, appended through `store`.
async fn four_entries(store: &datalayer_sidecar::spool::store::Store) -> Vec<i64> {
    let entries = (0..4)
        .map(|i| {
            new_entry(
                "spooled_writes",
                &format!("step:l{i}"),
                &"x".repeat(1024 + i),
            )
        })
        .collect();
    store.append_many(entries).await.unwrap();
    let ids: Vec<i64> = store
        .head(10, usize::MAX)
        .await
        .unwrap()
        .iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(ids.len(), 4);
    ids
}

/// Issue 18's fourth finding: a claim whose bodies pass the byte budget
/// gave back this replica's leases on the rest, entries it may be
/// delivering, and another replica then claimed them too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_cut_by_its_byte_budget_keeps_the_leases_the_replica_holds() {
    let pg = Postgres::start();
    let a = open_store(&pg).await;
    let b = open_store(&pg).await;
    let held = four_entries(&a).await;
    // The replica reads the head again with a small budget: one entry.
    let cut = a.head(10, 1).await.unwrap();
    assert_eq!(cut.len(), 1);
    // The other replica may take none of them: all four are a's.
    let taken = b.head(10, usize::MAX).await.unwrap();
    assert!(
        taken.is_empty(),
        "b claimed {:?} of a's {held:?}",
        taken.iter().map(|e| e.id).collect::<Vec<_>>()
    );
    assert_eq!(a.renew_many(&held).await.unwrap(), held);
}

/// A lease that ran out is given up: its renewal fails, so a replica never
/// delivers on a lease another may have taken over (or may take while the
/// delivery runs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_lease_is_not_renewed_and_another_replica_takes_it_over() {
    let pg = Postgres::start();
    let a = open_store_leasing(&pg, Duration::from_secs(1)).await;
    let b = open_store_leasing(&pg, Duration::from_secs(1)).await;
    let held = four_entries(&a).await;
    assert_eq!(
        a.renew_many(&held).await.unwrap(),
        held,
        "fresh leases renew"
    );
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert!(
        a.renew_many(&held).await.unwrap().is_empty(),
        "a lease that ran out is not renewed"
    );
    let taken: Vec<i64> = b
        .head(10, usize::MAX)
        .await
        .unwrap()
        .iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(taken, held, "the other replica takes them over");
    assert!(a.renew_many(&held).await.unwrap().is_empty());
    assert_eq!(b.renew_many(&held).await.unwrap(), held);
}

/// A replica whose lease ran out and was taken over does not remove the
/// entry when its own (late) delivery ends: the new owner may be sending
/// it now, and removing it would let the step's next version be claimed
/// and delivered before that send lands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_lost_its_lease_does_not_remove_the_entry() {
    let pg = Postgres::start();
    let a = open_store_leasing(&pg, Duration::from_secs(1)).await;
    let b = open_store_leasing(&pg, Duration::from_secs(1)).await;
    let held = four_entries(&a).await;
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let taken: Vec<i64> = b
        .head(10, usize::MAX)
        .await
        .unwrap()
        .iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(taken, held);
    // A's delivery, begun before, ends now.
    a.delivered_many(held.clone()).await.unwrap();
    assert_eq!(
        pg.psql("SELECT count(*) FROM datalayer_sidecar.entries"),
        "4",
        "the entries are b's to remove"
    );
    b.delivered_many(held.clone()).await.unwrap();
    assert_eq!(
        pg.psql("SELECT count(*) FROM datalayer_sidecar.entries"),
        "0"
    );
}
