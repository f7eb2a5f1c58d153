//! What each command does to the rows, inside the transaction the commit
//! path opened.
//!
//! These are the statements alone: they neither begin nor end a
//! transaction and decide nothing about what a failure means for the rest
//! of the batch (that is [`super::commit`]'s). Each records what it changed
//! in the transaction's [`Delta`], which reaches the in-memory ledger only
//! if the transaction commits.

use rusqlite::{Connection, OptionalExtension, params};

use super::delta::Delta;
use super::faults::Faults;
use super::recent::{Recent, RecentWrite, duplicate_of};
use super::{Appended, Cmd, DeadInfo, MAX_DEAD_RESPONSE, NewEntry, now_ms};

/// Run `cmd`'s statements; its callers' answers if they all succeed.
pub(super) fn apply_cmd(
    c: &Connection,
    recent: &Recent,
    faults: &dyn Faults,
    cmd: &Cmd,
    delta: &mut Delta,
) -> rusqlite::Result<Vec<Appended>> {
    match cmd {
        Cmd::Append(es, _) => es
            .iter()
            .map(|e| append_one(c, recent, faults, e, delta))
            .collect(),
        Cmd::Delivered(ids, _) => ids
            .iter()
            .try_for_each(|id| remove_one(c, *id, delta))
            .map(|()| Vec::new()),
        Cmd::Failed(ids, err, _) => ids
            .iter()
            .try_for_each(|id| note_attempt(c, *id, err))
            .map(|()| Vec::new()),
        Cmd::Dead(id, info, _) => dead_one(c, *id, info, delta).map(|_| Vec::new()),
        Cmd::Resync(_) => Ok(Vec::new()),
    }
}

fn append_one(
    c: &Connection,
    recent: &Recent,
    faults: &dyn Faults,
    e: &NewEntry,
    delta: &mut Delta,
) -> rusqlite::Result<Appended> {
    let dup = duplicate_of(c, recent, &delta.stored, e)?;
    faults.before_append(c, e)?;
    if let Some(dup) = dup {
        // The newer credentials go with it.
        c.prepare_cached("UPDATE entries SET headers = ?2 WHERE id = ?1")?
            .execute(params![dup, e.headers])?;
        delta.change.deduplicated += 1;
        return Ok(Appended::Duplicate(dup));
    }
    let keys = serde_json::to_string(&e.keys).unwrap_or_else(|_| "[]".into());
    // The ticket is the id, unless an entry the operator requeued while the
    // sidecar ran took it: then append at the end instead.
    c.prepare_cached(
        "INSERT INTO entries (id, route, request_id, created_ms, method, path, headers, body, keys, body_bytes)
         VALUES ((SELECT CASE WHEN EXISTS (SELECT 1 FROM entries WHERE id = ?1)
                      THEN (SELECT max(id) + 1 FROM entries) ELSE ?1 END),
                 ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
    )?
    .execute(params![
        e.ticket as i64,
        e.route,
        e.request_id,
        now_ms(),
        e.method,
        e.path,
        e.headers,
        &e.body[..],
        keys,
        e.body.len() as i64,
    ])?;
    let id = c.last_insert_rowid();
    delta.stored.push(RecentWrite::of(id, e));
    delta.change.entries += 1;
    delta.change.stored += 1;
    delta.change.bytes += e.body.len() as i64;
    delta.change.ticket = delta.change.ticket.max(id);
    Ok(Appended::Stored)
}

/// A delivery attempt of `id` failed with `err`.
fn note_attempt(c: &Connection, id: i64, err: &str) -> rusqlite::Result<()> {
    c.prepare_cached("UPDATE entries SET attempts = attempts + 1, last_error = ?2 WHERE id = ?1")
        .and_then(|mut s| s.execute(params![id, err]))
        .map(|_| ())
}

fn remove_one(c: &Connection, id: i64, delta: &mut Delta) -> rusqlite::Result<()> {
    let len: Option<i64> = c
        .prepare_cached("SELECT body_bytes FROM entries WHERE id = ?1")?
        .query_row([id], |r| r.get(0))
        .optional()?;
    if let Some(len) = len {
        c.prepare_cached("DELETE FROM entries WHERE id = ?1")?
            .execute([id])?;
        delta.removed.push(id);
        delta.change.entries -= 1;
        delta.change.bytes -= len;
    }
    Ok(())
}

fn dead_one(c: &Connection, id: i64, info: &DeadInfo, delta: &mut Delta) -> rusqlite::Result<()> {
    let response = info
        .response
        .as_ref()
        .map(|r| r[..r.len().min(MAX_DEAD_RESPONSE)].to_vec());
    let moved = c.execute(
        "INSERT INTO dead_letters (ticket, route, request_id, created_ms, dead_ms, method, path, headers, body, keys, attempts, class, kind, status, response, reason)
         SELECT id, route, request_id, created_ms, ?2, method, path, headers, body, keys, attempts + 1, ?3, ?4, ?5, ?6, ?7
         FROM entries WHERE id = ?1",
        params![
            id,
            now_ms(),
            info.class,
            info.kind,
            info.status.map(i64::from),
            response,
            info.reason
        ],
    )?;
    if moved == 1 {
        remove_one(c, id, delta)?;
        delta.change.dead += 1;
    }
    Ok(())
}
