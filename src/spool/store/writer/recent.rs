//! Recognising a write the writer has already stored.
//!
//! The SDK sends a failed batch again soon after, and a write whose answer
//! was lost would otherwise be queued and replayed twice. The writer keeps
//! the last [`RECENT_WINDOW`] writes in memory, indexed by key, so it can
//! tell a repeat without an index on disk; this file owns that window and
//! the rule for what counts as the same write, apart from the statements
//! that store entries.

use std::collections::HashMap;

use rusqlite::{Connection, OptionalExtension, params};

use super::NewEntry;
use crate::route::BARRIER_KEY;

/// Writes the writer remembers for de-duplication.
pub(in crate::spool::store) const RECENT_WINDOW: usize = 4096;

/// A stored write, as de-duplication needs it.
pub(super) struct RecentWrite {
    id: i64,
    keys: Box<[u64]>,
    barrier: bool,
    digest: u64,
}

/// The writes stored so far in the transaction being built, indexed as
/// [`Recent`] is, so checking an entry against them does not walk them.
#[derive(Default)]
pub(super) struct InTxn {
    pub(super) writes: Vec<RecentWrite>,
    /// Key → the latest id in the transaction that writes it.
    latest: HashMap<u64, i64>,
    /// The latest barrier in the transaction.
    barrier: Option<i64>,
    /// Id → its place in `writes`.
    at: HashMap<i64, usize>,
}

impl InTxn {
    pub(super) fn push(&mut self, w: RecentWrite) {
        for k in w.keys.iter() {
            let id = self.latest.entry(*k).or_insert(w.id);
            *id = (*id).max(w.id);
        }
        if w.barrier {
            self.barrier = self.barrier.max(Some(w.id));
        }
        self.at.insert(w.id, self.writes.len());
        self.writes.push(w);
    }
}

/// The last [`RECENT_WINDOW`] writes stored, in commit order, indexed by
/// key, and the highest id that left the window. An identical write is
/// recognised when its original is still in the window without an index
/// on disk.
#[derive(Default)]
pub(super) struct Recent {
    /// Ids in commit order (an id already forgotten is skipped).
    order: std::collections::VecDeque<i64>,
    writes: HashMap<i64, RecentWrite>,
    /// Key → ids in the window that write it.
    by_key: HashMap<u64, Vec<i64>>,
    barriers: std::collections::BTreeSet<i64>,
    /// No entry that left the window has a higher id.
    horizon: i64,
}

fn digest(e: &NewEntry) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = foldhash::fast::FixedState::default().build_hasher();
    for part in [
        e.route.as_bytes(),
        e.method.as_bytes(),
        e.path.as_bytes(),
        &e.body[..],
    ] {
        h.write_usize(part.len());
        h.write(part);
    }
    h.finish()
}

fn hashed_keys(keys: &[String]) -> Box<[u64]> {
    use std::hash::BuildHasher;
    let mut out: Vec<u64> = keys
        .iter()
        .map(|k| foldhash::fast::FixedState::default().hash_one(k))
        .collect();
    out.sort_unstable();
    out.dedup();
    out.into_boxed_slice()
}

impl RecentWrite {
    pub(super) fn of(id: i64, e: &NewEntry) -> Self {
        RecentWrite {
            id,
            keys: hashed_keys(&e.keys),
            barrier: e.keys.iter().any(|k| k == BARRIER_KEY),
            digest: digest(e),
        }
    }
}

impl Recent {
    pub(super) fn remember(&mut self, w: RecentWrite) {
        while self.order.len() >= RECENT_WINDOW {
            let Some(old) = self.order.pop_front() else {
                break;
            };
            if self.writes.contains_key(&old) {
                self.horizon = self.horizon.max(old);
                self.forget(old);
            }
        }
        self.order.push_back(w.id);
        for k in w.keys.iter() {
            self.by_key.entry(*k).or_default().push(w.id);
        }
        if w.barrier {
            self.barriers.insert(w.id);
        }
        self.writes.insert(w.id, w);
    }

    /// An entry left the queue (or the window): a write identical to it is
    /// a new write.
    pub(super) fn forget(&mut self, id: i64) {
        let Some(w) = self.writes.remove(&id) else {
            return;
        };
        for k in w.keys.iter() {
            if let Some(ids) = self.by_key.get_mut(k) {
                ids.retain(|i| *i != id);
                if ids.is_empty() {
                    self.by_key.remove(k);
                }
            }
        }
        self.barriers.remove(&id);
    }

    /// The operator's tools may have changed the file: know nothing.
    pub(super) fn clear(&mut self, max_id: i64) {
        *self = Recent {
            horizon: self.horizon.max(max_id),
            ..Recent::default()
        };
    }

    /// The waiting entry `e` repeats, if any: same route, method, path,
    /// body and keys, and the last entry — by ticket — of each of its keys,
    /// with no barrier after it (the body is then compared byte for byte).
    /// `in_batch`: writes stored earlier in the same transaction.
    fn candidate(&self, in_batch: &InTxn, e: &NewEntry) -> Option<i64> {
        if !e.dedup || e.keys.is_empty() || e.keys.iter().any(|k| k == BARRIER_KEY) {
            return None;
        }
        let keys = hashed_keys(&e.keys);
        let mut last: Option<i64> = None;
        for k in keys.iter() {
            let in_window = self.by_key.get(k).and_then(|ids| ids.iter().max().copied());
            let in_txn = in_batch.latest.get(k).copied();
            let latest = in_window.max(in_txn)?;
            match last {
                Some(l) if l != latest => return None,
                _ => last = Some(latest),
            }
        }
        let last = last?;
        let barrier = self.barriers.last().copied().max(in_batch.barrier);
        let w = self
            .writes
            .get(&last)
            .or_else(|| in_batch.at.get(&last).map(|&i| &in_batch.writes[i]))?;
        // An entry that left the window may come after it, and so may a
        // barrier.
        (last > self.horizon
            && barrier.is_none_or(|b| b < last)
            && last < e.ticket as i64
            && *w.keys == *keys
            && w.digest == digest(e))
        .then_some(last)
    }
}

/// The waiting entry `e` repeats, if any: a [`Recent::candidate`] whose
/// stored request is the same as `e`'s, byte for byte.
pub(super) fn duplicate_of(
    c: &Connection,
    recent: &Recent,
    in_txn: &InTxn,
    e: &NewEntry,
) -> rusqlite::Result<Option<i64>> {
    Ok(recent
        .candidate(in_txn, e)
        .map(|id| same_request(c, id, e).map(|same| same.then_some(id)))
        .transpose()?
        .flatten())
}

/// Whether the stored entry `id` is the same request as `e`, byte for byte.
fn same_request(c: &Connection, id: i64, e: &NewEntry) -> rusqlite::Result<bool> {
    Ok(c.prepare_cached(
        "SELECT route = ?2 AND method = ?3 AND path = ?4 AND body_bytes = ?5 AND body = ?6
         FROM entries WHERE id = ?1",
    )?
    .query_row(
        params![
            id,
            e.route,
            e.method,
            e.path,
            e.body.len() as i64,
            &e.body[..]
        ],
        |r| r.get::<_, bool>(0),
    )
    .optional()?
    .unwrap_or(false))
}
