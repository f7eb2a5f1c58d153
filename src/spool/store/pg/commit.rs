//! One group commit as one transaction: the counter lock that gives the
//! fleet one order, the duplicate look-up, and the pipelined statements
//! that store the batch. Separate because this is the only place rows
//! enter the queue from writers, and the only place that talks to the
//! server outside tokio-postgres' `Transaction` (see [`commit`]).

use std::collections::{HashMap, HashSet};

use deadpool_postgres::{ClientWrapper, Pool};
use futures_util::future::{try_join3, try_join4, try_join5};
use tokio_postgres::{Row, Statement};

use super::fold::{Batch, Plan};
use super::{Appended, NewEntry, StoreError, now_ms, pg_error, unavailable};

/// The waiting entry an asked write would fold into: same content and
/// keys, last in line for every one of its keys, no barrier after it. Keys
/// travel flat, each write naming its slice (`$7[ks:ke]`), because SQL
/// arrays of arrays must be rectangular. The key check compares
/// `o.seq + 0` for the same reason as the claim's: only the `(key, seq)`
/// index may serve it.
const FIND_DUPLICATES: &str = "
SELECT q.i, d.seq, d.keys
  FROM unnest($1::int4[], $2::int8[], $3::text[], $4::text[], $5::text[], $6::bytea[],
              $8::int4[], $9::int4[])
       AS q(i, digest, route, method, path, body, ks, ke)
 CROSS JOIN LATERAL (
       SELECT e.seq, e.keys FROM datalayer_sidecar.entries e
        WHERE e.digest = q.digest AND e.route = q.route AND e.method = q.method
          AND e.path = q.path AND e.body = q.body AND e.keys = ($7::text[])[q.ks:q.ke]
          AND NOT EXISTS (SELECT 1 FROM datalayer_sidecar.entry_keys o
                           WHERE o.key = ANY(e.keys) AND o.seq + 0 > e.seq)
          AND NOT EXISTS (SELECT 1 FROM datalayer_sidecar.entries b
                           WHERE b.barrier AND b.seq > e.seq)
        LIMIT 1) d";

/// Every new row of a group commit in one statement; keys travel flat as in
/// [`FIND_DUPLICATES`].
const INSERT_ROWS: &str = "
INSERT INTO datalayer_sidecar.entries
       (seq, route, request_id, created_ms, method, path, headers, body, keys, barrier,
        digest, replica)
SELECT r.seq, r.route, r.request_id, $12, r.method, r.path, r.headers, r.body,
       ($8::text[])[r.ks:r.ke], r.barrier, r.digest, $13
  FROM unnest($1::int8[], $2::text[], $3::text[], $4::text[], $5::text[], $6::bytea[],
              $7::bytea[], $9::int4[], $10::int4[], $11::bool[], $14::int8[])
       AS r(seq, route, request_id, method, path, headers, body, ks, ke, barrier, digest)";

const LOCK_COUNTER: &str = "SELECT seq FROM datalayer_sidecar.counter FOR UPDATE";

const SET_COUNTER: &str = "UPDATE datalayer_sidecar.counter SET seq = $1";

const UPDATE_HEADERS: &str = "
UPDATE datalayer_sidecar.entries e SET headers = u.headers
  FROM unnest($1::int8[], $2::bytea[]) AS u(seq, headers)
 WHERE e.seq = u.seq";

/// One group commit in two round trips and at most seven statements,
/// whatever the batch size: `BEGIN`, the counter lock and one duplicate
/// look-up for the batch, pipelined; then one insert for every new row, one
/// header update for the folded ones, the counter update and `COMMIT`,
/// pipelined. Entries that follow another entry of the batch on the same
/// keys are decided in memory ([`super::fold`]), because the look-up ran
/// before those rows existed.
///
/// Why not tokio-postgres' `Transaction`: it waits for `BEGIN` and for the
/// last statement before it sends `COMMIT`, two more round trips, and every
/// round trip is time all the batch's writers wait (on a shared core, a
/// wait for the server to be scheduled). Pipelined, a failed statement
/// aborts the transaction and the server answers the `COMMIT` behind it
/// with a rollback, so nothing of a failed batch is kept; after any error
/// the connection is rolled back before it goes back to the pool.
pub(super) async fn commit(
    pool: &Pool,
    entries: &[&NewEntry],
    replica: &str,
) -> Result<Vec<Appended>, StoreError> {
    let c = pool.get().await.map_err(unavailable)?;
    let result = commit_on(&c, entries, replica).await;
    if result.is_err() && !c.is_closed() {
        // Whatever was sent, the connection leaves no transaction open. (A
        // `ROLLBACK` outside one only draws a warning.)
        if c.batch_execute("ROLLBACK").await.is_err() {
            let _ = deadpool_postgres::Object::take(c);
        }
    }
    result
}

async fn commit_on(
    t: &ClientWrapper,
    entries: &[&NewEntry],
    replica: &str,
) -> Result<Vec<Appended>, StoreError> {
    let s = Statements::prepare(t).await?;
    let batch = Batch::of(entries);
    let (base, in_table) = begin_and_look_up(t, &s, &batch).await?;
    let plan = batch.decide(base, &in_table);
    write_and_commit(t, &s, &batch, &plan, replica).await?;
    Ok(plan.results)
}

/// The group commit's statements, prepared.
struct Statements {
    find_duplicates: Statement,
    insert_rows: Statement,
    update_headers: Statement,
    lock_counter: Statement,
    set_counter: Statement,
}

impl Statements {
    /// Every statement prepared once per connection: a statement given as
    /// text is parsed, planned and described on every run, one more round
    /// trip each.
    async fn prepare(t: &ClientWrapper) -> Result<Self, StoreError> {
        let (find_duplicates, insert_rows, update_headers, lock_counter, set_counter) = try_join5(
            t.prepare_cached(FIND_DUPLICATES),
            t.prepare_cached(INSERT_ROWS),
            t.prepare_cached(UPDATE_HEADERS),
            t.prepare_cached(LOCK_COUNTER),
            t.prepare_cached(SET_COUNTER),
        )
        .await
        .map_err(pg_error)?;
        Ok(Statements {
            find_duplicates,
            insert_rows,
            update_headers,
            lock_counter,
            set_counter,
        })
    }
}

/// The first round trip: `BEGIN`, the counter lock and the duplicate
/// look-up, sent in this order on the first poll, so the transaction opens
/// first. Returns the counter and, by batch entry, the waiting row each
/// asked entry folds into.
async fn begin_and_look_up(
    t: &ClientWrapper,
    s: &Statements,
    batch: &Batch<'_>,
) -> Result<(i64, HashMap<usize, i64>), StoreError> {
    let lock = t.query_one(&s.lock_counter, &[]);
    let (_, base, found) = try_join3(
        t.batch_execute("BEGIN"),
        lock,
        look_up_duplicates(t, s, batch),
    )
    .await
    .map_err(pg_error)?;
    Ok((base.get(0), found_in_table(found, batch.entries)))
}

async fn look_up_duplicates(
    t: &ClientWrapper,
    s: &Statements,
    batch: &Batch<'_>,
) -> Result<Vec<Row>, tokio_postgres::Error> {
    let (asked, entries) = (&batch.asked, batch.entries);
    if asked.is_empty() {
        return Ok(Vec::new());
    }
    let idx: Vec<i32> = asked.iter().map(|&i| i as i32).collect();
    let d: Vec<i64> = asked.iter().map(|&i| batch.digests[i]).collect();
    let route: Vec<&str> = asked.iter().map(|&i| entries[i].route.as_str()).collect();
    let method: Vec<&str> = asked.iter().map(|&i| entries[i].method.as_str()).collect();
    let path: Vec<&str> = asked.iter().map(|&i| entries[i].path.as_str()).collect();
    let body: Vec<&[u8]> = asked.iter().map(|&i| &entries[i].body[..]).collect();
    let (keys, ks, ke) = flat_keys(asked.iter().map(|&i| entries[i]));
    t.query(
        &s.find_duplicates,
        &[&idx, &d, &route, &method, &path, &body, &keys, &ks, &ke],
    )
    .await
}

/// The look-up's rows by batch entry; a row counts only if its keys are
/// the entry's own.
fn found_in_table(found: Vec<Row>, entries: &[&NewEntry]) -> HashMap<usize, i64> {
    let mut in_table = HashMap::new();
    for r in found {
        let i = r.get::<_, i32>(0) as usize;
        let keys: Vec<String> = r.get(2);
        if entries.get(i).is_some_and(|e| e.keys == keys) {
            in_table.insert(i, r.get(1));
        }
    }
    in_table
}

/// The second round trip: the new rows, the folded rows' headers, the
/// counter and `COMMIT`, pipelined. `COMMIT` last: if a statement before it
/// failed, the server has aborted the transaction and answers it with a
/// rollback.
async fn write_and_commit(
    t: &ClientWrapper,
    s: &Statements,
    batch: &Batch<'_>,
    plan: &Plan,
    replica: &str,
) -> Result<(), StoreError> {
    let counter = async {
        if plan.next > plan.base {
            t.execute(&s.set_counter, &[&plan.next]).await
        } else {
            Ok(0)
        }
    };
    try_join4(
        insert_rows(t, s, batch, plan, replica),
        update_folded_headers(t, s, batch, plan),
        counter,
        t.batch_execute("COMMIT"),
    )
    .await
    .map_err(pg_error)?;
    Ok(())
}

/// Every new row in one statement, each with the headers of the newest
/// entry folded into it.
async fn insert_rows(
    t: &ClientWrapper,
    s: &Statements,
    batch: &Batch<'_>,
    plan: &Plan,
    replica: &str,
) -> Result<u64, tokio_postgres::Error> {
    let (rows, entries) = (&plan.rows, batch.entries);
    if rows.is_empty() {
        return Ok(0);
    }
    let (keys, ks, ke) = flat_keys(rows.iter().map(|&(_, i)| entries[i]));
    let col = |f: fn(&NewEntry) -> &str| -> Vec<&str> {
        rows.iter().map(|&(_, i)| f(entries[i])).collect()
    };
    let seqs: Vec<i64> = rows.iter().map(|&(s, _)| s).collect();
    let headers: Vec<&[u8]> = rows
        .iter()
        .map(|&(seq, i)| &entries[plan.headers_of.get(&seq).copied().unwrap_or(i)].headers[..])
        .collect();
    let bodies: Vec<&[u8]> = rows.iter().map(|&(_, i)| &entries[i].body[..]).collect();
    let barrier: Vec<bool> = rows.iter().map(|&(_, i)| batch.barriers[i]).collect();
    let digest: Vec<i64> = rows.iter().map(|&(_, i)| batch.digests[i]).collect();
    t.execute(
        &s.insert_rows,
        &[
            &seqs,
            &col(|e| &e.route),
            &col(|e| &e.request_id),
            &col(|e| &e.method),
            &col(|e| &e.path),
            &headers,
            &bodies,
            &keys,
            &ks,
            &ke,
            &barrier,
            &now_ms(),
            &replica,
            &digest,
        ],
    )
    .await
}

/// The waiting rows entries folded into take the newest entry's headers.
async fn update_folded_headers(
    t: &ClientWrapper,
    s: &Statements,
    batch: &Batch<'_>,
    plan: &Plan,
) -> Result<u64, tokio_postgres::Error> {
    let fresh: HashSet<i64> = plan.rows.iter().map(|&(s, _)| s).collect();
    let (seqs, headers): (Vec<i64>, Vec<&[u8]>) = plan
        .headers_of
        .iter()
        .filter(|(seq, _)| !fresh.contains(seq))
        .map(|(&seq, &i)| (seq, &batch.entries[i].headers[..]))
        .unzip();
    if seqs.is_empty() {
        return Ok(0);
    }
    t.execute(&s.update_headers, &[&seqs, &headers]).await
}

/// The keys of `entries` as one flat array, and each entry's slice of it
/// (1-based, inclusive).
fn flat_keys<'a>(
    entries: impl Iterator<Item = &'a NewEntry>,
) -> (Vec<&'a str>, Vec<i32>, Vec<i32>) {
    let (mut keys, mut ks, mut ke) = (Vec::new(), Vec::new(), Vec::new());
    for e in entries {
        ks.push(keys.len() as i32 + 1);
        keys.extend(e.keys.iter().map(String::as_str));
        ke.push(keys.len() as i32);
    }
    (keys, ks, ke)
}
