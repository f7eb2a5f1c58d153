use super::*;
use file::open_checked;
use rusqlite::Connection;
use tokio::sync::oneshot;

/// An append with this request id fails the way a full disk can.
const FULL_AND_ROLLED_BACK: &str = "test:full-and-rolled-back";

/// What SQLite may do on SQLITE_FULL or SQLITE_IOERR, for the append of
/// [`FULL_AND_ROLLED_BACK`]: roll the whole transaction back, then report
/// the error.
struct FullAndRolledBack;

impl writer::Faults for FullAndRolledBack {
    fn before_append(&self, c: &Connection, e: &NewEntry) -> rusqlite::Result<()> {
        if e.request_id != FULL_AND_ROLLED_BACK {
            return Ok(());
        }
        c.execute_batch("ROLLBACK")?;
        Err(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_FULL),
            Some("database or disk is full".into()),
        ))
    }
}

fn entry(ticket: u64, body_len: usize) -> NewEntry {
    NewEntry {
        ticket,
        route: "spooled_writes".into(),
        request_id: format!("r{ticket}"),
        method: "POST".into(),
        path: "/api/graphql".into(),
        headers: Vec::new(),
        body: Bytes::from(vec![b'x'; body_len]),
        keys: vec![format!("step:s{ticket}")],
        dedup: true,
    }
}

fn open(dir: &tempfile::TempDir) -> Store {
    Store::open(
        &dir.path().join("spool.sqlite3"),
        false,
        256,
        LedgerCounters::default(),
    )
    .unwrap()
}

#[tokio::test]
async fn head_stops_at_the_byte_bound_but_returns_at_least_one() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    for t in 1..=10 {
        store.append(entry(t, 1000)).await.unwrap();
    }
    let ids = |v: Vec<Entry>| v.into_iter().map(|e| e.request_id).collect::<Vec<_>>();
    // In order, and cut once the bodies reach 2,500 bytes.
    assert_eq!(
        ids(store.head(100, 2500).await.unwrap()),
        ["r1", "r2", "r3"]
    );
    // The count bound still applies.
    assert_eq!(ids(store.head(2, 1 << 20).await.unwrap()), ["r1", "r2"]);
    // An entry larger than the bound is still delivered.
    assert_eq!(ids(store.head(100, 10).await.unwrap()), ["r1"]);
}

/// Each caller of a group commit is told the truth, whatever SQLite did to
/// the transaction: an acknowledged entry is stored, a refused one is not,
/// and the totals match the file. (Found on review: after SQLite rolled
/// the transaction back, the rest of the batch went on in autocommit mode,
/// was stored, and its callers were told it failed.)
#[test]
fn a_group_commit_reports_exactly_what_it_stored() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("spool.sqlite3");
    prepare_file(&path).unwrap();
    let conn = open_checked(&path).unwrap();
    let ledger = Arc::new(Ledger::new(
        LedgerCounters::default(),
        ledger::DiskUseIs::Measured,
    ));
    let mut replies = Vec::new();
    let batch: Vec<Cmd> = [(1, "a"), (2, FULL_AND_ROLLED_BACK), (3, "c")]
        .into_iter()
        .map(|(t, rid)| {
            let (tx, rx) = oneshot::channel();
            replies.push(rx);
            Cmd::Append(
                vec![NewEntry {
                    request_id: rid.into(),
                    ..entry(t, 10)
                }],
                tx,
            )
        })
        .collect();
    let conn = writer::apply_for_test(
        conn,
        &path,
        batch,
        ledger.clone(),
        Box::new(FullAndRolledBack),
    );
    let told: Vec<bool> = replies
        .into_iter()
        .map(|mut rx| rx.try_recv().expect("every caller answered").is_ok())
        .collect();
    let stored: Vec<String> = conn
        .prepare("SELECT request_id FROM entries ORDER BY id")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    for (rid, ok) in ["a", FULL_AND_ROLLED_BACK, "c"].iter().zip(&told) {
        assert_eq!(
            stored.iter().any(|s| s == rid),
            *ok,
            "{rid}: told ok={ok}, stored: {stored:?}"
        );
    }
    assert!(!told[1], "the failed write is refused");
    assert_eq!(
        ledger.entries(),
        stored.len() as u64,
        "the ledger matches the file"
    );
    // And the ledger in the file agrees.
    let fresh = Ledger::new(LedgerCounters::default(), ledger::DiskUseIs::Measured);
    load_ledger(&conn, &fresh).unwrap();
    assert_eq!(fresh.entries(), stored.len() as u64);
}

#[tokio::test]
async fn an_identical_write_last_in_line_is_stored_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let w = |t: u64, body: &str, key: &str| NewEntry {
        body: Bytes::from(body.to_string()),
        keys: vec![key.to_string()],
        ..entry(t, 0)
    };
    assert_eq!(
        store.append(w(1, "v1", "step:a")).await.unwrap(),
        Appended::Stored
    );
    // The SDK's retry of the same batch: delivered once.
    let again = NewEntry {
        headers: b"x-api-key\0new\0".to_vec(),
        ..w(2, "v1", "step:a")
    };
    assert_eq!(store.append(again).await.unwrap(), Appended::Duplicate(1));
    // A different version in between makes the same body a new write again.
    assert_eq!(
        store.append(w(3, "v2", "step:a")).await.unwrap(),
        Appended::Stored
    );
    assert_eq!(
        store.append(w(4, "v1", "step:a")).await.unwrap(),
        Appended::Stored
    );
    // Other steps are independent.
    assert_eq!(
        store.append(w(5, "v1", "step:b")).await.unwrap(),
        Appended::Stored
    );
    let head = store.head(10, 1 << 20).await.unwrap();
    let order: Vec<(i64, &str)> = head
        .iter()
        .map(|e| (e.id, std::str::from_utf8(&e.body).unwrap()))
        .collect();
    assert_eq!(order, [(1, "v1"), (3, "v2"), (4, "v1"), (5, "v1")]);
    assert_eq!(
        head[0].headers, b"x-api-key\0new\0",
        "the newer headers go with it"
    );
    assert_eq!(store.ledger().deduplicated, 1);
    assert_eq!(store.waiting(), 4);
}

/// Changes the operator's CLI makes to the file reach the ledger through
/// the triggers, and the running store picks them up on resync.
#[tokio::test]
async fn the_ledger_follows_cli_changes() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    for t in 1..=5 {
        store.append(entry(t, 100)).await.unwrap();
    }
    let mut cli = open_checked(store.path()).unwrap();
    assert_eq!(count(&cli, "entries").unwrap(), 5);
    purge(&mut cli, true, false, |_| {}).unwrap();
    assert_eq!(store.waiting(), 5, "not yet seen");
    store.resync().await.unwrap();
    assert_eq!(store.waiting(), 0);
    assert_eq!(store.ledger().bytes, 0);
    let s = store.stats().await.unwrap();
    assert_eq!((s.depth, s.bytes), (0, 0));
    assert!(s.per_route.is_empty());
}

#[tokio::test]
async fn one_store_file_serves_one_sidecar() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("spool.sqlite3");
    let first = Store::open(&path, false, 256, LedgerCounters::default()).unwrap();
    let err = Store::open(&path, false, 256, LedgerCounters::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("another datalayer-sidecar is using this spool"),
        "{err}"
    );
    // The operator's tools still open it beside the running sidecar.
    open_checked(&path).unwrap();
    drop(first);
    // Once the first is gone (its threads let go of the handle), the lock
    // is free again.
    for _ in 0..100 {
        if Store::open(&path, false, 256, LedgerCounters::default()).is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the lock was never released");
}

/// An entry that left the window of recent writes may come after the
/// candidate in the queue: then nothing is folded.
#[tokio::test]
async fn a_write_is_not_folded_past_entries_that_left_the_window() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let w = |t: u64, body: &str, key: &str| NewEntry {
        body: Bytes::from(body.to_string()),
        keys: vec![key.to_string()],
        ..entry(t, 0)
    };
    // H (ticket 20) is stored first; F (ticket 10) lands later, at its own
    // earlier place, after enough other writes to push H out of the window.
    store.append(w(20, "H", "step:a")).await.unwrap();
    for t in 100..(100 + writer::RECENT_WINDOW as u64) {
        store.append(entry(t, 1)).await.unwrap();
    }
    store.append(w(10, "F", "step:a")).await.unwrap();
    // E repeats F, but H comes between them in the queue.
    let e = w(100_000, "F", "step:a");
    assert_eq!(store.append(e).await.unwrap(), Appended::Stored);
}

/// The store re-reads its ledger on its own, without being asked: a purge
/// the operator CLI made beside the running sidecar reaches the counts
/// within [`RESYNC_EVERY`] (and a little).
#[tokio::test]
async fn the_store_rereads_its_ledger_on_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    for t in 1..=3 {
        store.append(entry(t, 100)).await.unwrap();
    }
    let mut cli = open_checked(store.path()).unwrap();
    purge(&mut cli, true, false, |_| {}).unwrap();
    assert_eq!(store.waiting(), 3, "not yet seen");
    let deadline = tokio::time::Instant::now() + RESYNC_EVERY + Duration::from_secs(3);
    while store.waiting() != 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the purge never reached the ledger"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(store.ledger().bytes, 0);
}
