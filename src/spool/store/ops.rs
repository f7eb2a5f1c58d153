//! Reads of the store, and the operator's changes to it (requeue, purge),
//! on any connection: the sidecar's reader, or the `spool` CLI's own.

use std::collections::HashMap;

use bytes::Bytes;
use rusqlite::{Connection, params};

use super::{DeadLetter, Entry, Stats, StoreError, now_ms};

pub(super) fn row_keys(text: String) -> Vec<String> {
    serde_json::from_str(&text).unwrap_or_default()
}

const ENTRY_COLUMNS: &str =
    "id, route, request_id, created_ms, method, path, headers, body, keys, attempts, last_error";

/// An entry from a row of [`ENTRY_COLUMNS`].
fn entry_of(r: &rusqlite::Row<'_>) -> rusqlite::Result<Entry> {
    let body = Bytes::from(r.get::<_, Vec<u8>>(7)?);
    Ok(Entry {
        id: r.get(0)?,
        route: r.get(1)?,
        request_id: r.get(2)?,
        created_ms: r.get(3)?,
        method: r.get(4)?,
        path: r.get(5)?,
        headers: r.get(6)?,
        body_bytes: body.len(),
        body,
        keys: row_keys(r.get(8)?),
        attempts: r.get(9)?,
        last_error: r.get(10)?,
    })
}

/// See [`super::Store::head`].
pub(super) fn head(
    c: &Connection,
    limit: usize,
    max_bytes: usize,
) -> Result<Vec<Entry>, StoreError> {
    let mut stmt = c.prepare_cached(&format!(
        "SELECT {ENTRY_COLUMNS} FROM entries ORDER BY id LIMIT ?1"
    ))?;
    let mut rows = stmt.query(params![limit as i64])?;
    let (mut out, mut bytes) = (Vec::new(), 0usize);
    while let Some(r) = rows.next()? {
        let entry = entry_of(r)?;
        bytes += entry.body_bytes;
        out.push(entry);
        if bytes >= max_bytes {
            break;
        }
    }
    Ok(out)
}

/// Waiting entries in replay order, from `offset`.
pub fn list_entries(
    conn: &Connection,
    limit: usize,
    offset: usize,
) -> Result<Vec<Entry>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {ENTRY_COLUMNS} FROM entries ORDER BY id LIMIT ?1 OFFSET ?2"
    ))?;
    let rows = stmt.query_map(params![limit as i64, offset as i64], entry_of)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Dead letters, oldest first.
pub fn list_dead(conn: &Connection, limit: usize) -> Result<Vec<DeadLetter>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, route, request_id, created_ms, dead_ms, keys, attempts, class, kind, status, response, reason
         FROM dead_letters ORDER BY id LIMIT ?1",
    )?;
    let rows = stmt.query_map([limit as i64], |r| {
        let response: Option<Vec<u8>> = r.get(10)?;
        Ok(DeadLetter {
            id: r.get(0)?,
            route: r.get(1)?,
            request_id: r.get(2)?,
            created_ms: r.get(3)?,
            dead_ms: r.get(4)?,
            keys: row_keys(r.get(5)?),
            attempts: r.get(6)?,
            class: r.get(7)?,
            kind: r.get(8)?,
            status: r.get(9)?,
            response: response.map(|b| String::from_utf8_lossy(&b).into_owned()),
            reason: r.get(11)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Counts for operators, from the ledger: no scan of the rows, so it is
/// as cheap with a million entries waiting as with none.
pub fn stats(conn: &Connection) -> Result<Stats, StoreError> {
    let mut per_route = HashMap::new();
    let (mut depth, mut bytes) = (0u64, 0u64);
    let mut stmt =
        conn.prepare_cached("SELECT route, entries, bytes FROM ledger WHERE entries > 0")?;
    for row in stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, i64>(1)?,
            r.get::<_, i64>(2)?,
        ))
    })? {
        let (route, n, b) = row?;
        depth += n.max(0) as u64;
        bytes += b.max(0) as u64;
        per_route.insert(route, n.max(0) as u64);
    }
    let dead: i64 = conn.query_row(
        "SELECT value FROM counters WHERE name = 'dead_letters'",
        [],
        |r| r.get(0),
    )?;
    // The head of the queue is its oldest entry (a requeued dead letter
    // joins at the end with a new time).
    let oldest: Option<i64> = conn
        .query_row(
            "SELECT created_ms FROM entries ORDER BY id LIMIT 1",
            [],
            |r| r.get(0),
        )
        .ok();
    Ok(Stats {
        depth,
        bytes,
        oldest_age_seconds: oldest.map(|o| ((now_ms() - o).max(0)) as f64 / 1000.0),
        dead_letters: dead.max(0) as u64,
        per_route,
    })
}

/// Move dead letters back to the queue (at its end). `ids` empty = all.
/// Returns how many moved. `progress` is called after each one.
pub fn requeue(
    conn: &mut Connection,
    ids: &[i64],
    mut progress: impl FnMut(u64),
) -> Result<u64, StoreError> {
    let targets: Vec<i64> = if ids.is_empty() {
        let mut stmt = conn.prepare("SELECT id FROM dead_letters ORDER BY id")?;
        let rows = stmt.query_map([], |r| r.get(0))?;
        rows.collect::<Result<_, _>>()?
    } else {
        ids.to_vec()
    };
    let mut moved = 0;
    for chunk in targets.chunks(500) {
        let tx = conn.transaction()?;
        for id in chunk {
            let next: i64 = tx.query_row(
                "SELECT max(coalesce((SELECT max(id) FROM entries), 0),
                            (SELECT value FROM counters WHERE name = 'max_dead_ticket')) + 1",
                [],
                |r| r.get(0),
            )?;
            let n = tx.execute(
                "INSERT INTO entries (id, route, request_id, created_ms, method, path, headers, body, keys, attempts, last_error, body_bytes)
                 SELECT ?2, route, request_id, ?3, method, path, headers, body, keys, 0,
                        'requeued from dead letter ' || id || ': ' || reason, length(body)
                 FROM dead_letters WHERE id = ?1",
                params![id, next, now_ms()],
            )?;
            if n == 1 {
                tx.execute("DELETE FROM dead_letters WHERE id = ?1", [id])?;
                moved += 1;
            }
            progress(1);
        }
        tx.commit()?;
    }
    Ok(moved)
}

/// Delete waiting entries and/or dead letters. Returns rows deleted.
pub fn purge(
    conn: &mut Connection,
    pending: bool,
    dead: bool,
    mut progress: impl FnMut(u64),
) -> Result<u64, StoreError> {
    let mut deleted = 0;
    for (table, on) in [("entries", pending), ("dead_letters", dead)] {
        if !on {
            continue;
        }
        loop {
            let tx = conn.transaction()?;
            let n = tx.execute(
                &format!("DELETE FROM {table} WHERE id IN (SELECT id FROM {table} ORDER BY id LIMIT 1000)"),
                [],
            )? as u64;
            tx.commit()?;
            deleted += n;
            progress(n);
            if n == 0 {
                break;
            }
        }
    }
    Ok(deleted)
}

/// Count rows a purge or requeue would touch (for the progress bar), from
/// the ledger.
pub fn count(conn: &Connection, table: &str) -> Result<u64, StoreError> {
    let sql = match table {
        "entries" => "SELECT coalesce(sum(entries), 0) FROM ledger",
        _ => "SELECT value FROM counters WHERE name = 'dead_letters'",
    };
    let n: i64 = conn.query_row(sql, [], |r| r.get(0))?;
    Ok(n.max(0) as u64)
}
