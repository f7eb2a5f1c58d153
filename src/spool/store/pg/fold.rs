//! Which writes of a group commit fold into a waiting row and which get a
//! row of their own, decided in memory. Separate because it is pure: the
//! transaction ([`super::commit`]) asks the table once for the entries no
//! earlier entry of the batch touches, and everything else is decided here
//! from what the batch itself holds, since the look-up ran before the
//! batch's rows existed.
//!
//! A write folds into a waiting row only if it has the same content and
//! keys and that row is last in line for every one of its keys, with no
//! barrier after it: folding never reorders what a key's replays see.

use std::collections::{HashMap, HashSet};

use super::{Appended, NewEntry};
use crate::route::BARRIER_KEY;

/// A group commit's entries, in order, with what the decisions need of
/// each.
pub(super) struct Batch<'a> {
    pub(super) entries: &'a [&'a NewEntry],
    /// Whether each entry is a barrier.
    pub(super) barriers: Vec<bool>,
    /// Each entry's content digest ([`digest`]).
    pub(super) digests: Vec<i64>,
    /// The entries that ask the table for a waiting row to fold into.
    pub(super) asked: Vec<usize>,
}

/// What each entry of a batch became, and the rows that takes.
pub(super) struct Plan {
    /// Each entry's answer, in batch order.
    pub(super) results: Vec<Appended>,
    /// The new rows as (seq, entry), in order.
    pub(super) rows: Vec<(i64, usize)>,
    /// For each row an entry went to, new or waiting, the entry whose
    /// headers it keeps: the newest.
    pub(super) headers_of: HashMap<i64, usize>,
    /// The counter before the batch.
    pub(super) base: i64,
    /// The counter after it: the last new row's `seq`, or `base`.
    pub(super) next: i64,
}

/// Where a batch entry ends up: a new row at `seq`, or folded into the
/// waiting row `seq`.
#[derive(Clone, Copy)]
struct Slot {
    seq: i64,
    /// The batch entry whose content the row holds.
    like: usize,
}

impl<'a> Batch<'a> {
    pub(super) fn of(entries: &'a [&'a NewEntry]) -> Self {
        let barriers: Vec<bool> = entries
            .iter()
            .map(|e| e.keys.iter().any(|k| k == BARRIER_KEY))
            .collect();
        let digests = entries.iter().map(|e| digest(e)).collect();
        let mut batch = Batch {
            entries,
            barriers,
            digests,
            asked: Vec::new(),
        };
        batch.asked = batch.asking_the_table();
        batch
    }

    /// Which entries ask the table: those no earlier entry of the batch
    /// shares a key with (or precedes as a barrier); for the others the
    /// batch itself decides.
    fn asking_the_table(&self) -> Vec<usize> {
        let mut seen: HashSet<&str> = HashSet::new();
        let mut after_barrier = false;
        let mut asked = Vec::new();
        for (i, e) in self.entries.iter().enumerate() {
            let fresh = !after_barrier && e.keys.iter().all(|k| !seen.contains(k.as_str()));
            if fresh && self.may_fold(i) {
                asked.push(i);
            }
            seen.extend(e.keys.iter().map(String::as_str));
            after_barrier |= self.barriers[i];
        }
        asked
    }

    /// Whether entry `i` may fold into another row at all: it asks for
    /// de-duplication, has keys, and is no barrier.
    fn may_fold(&self, i: usize) -> bool {
        let e = self.entries[i];
        e.dedup && !self.barriers[i] && !e.keys.is_empty()
    }

    /// Decide each entry in order, numbering new rows from `base`.
    /// `in_table` holds the waiting rows the table look-up found for asked
    /// entries.
    pub(super) fn decide(&self, base: i64, in_table: &HashMap<usize, i64>) -> Plan {
        let entries = self.entries;
        // The latest row for every key, new or waiting.
        let mut latest: HashMap<&str, Slot> = HashMap::new();
        let mut plan = Plan {
            results: Vec::with_capacity(entries.len()),
            rows: Vec::new(),
            headers_of: HashMap::new(),
            base,
            next: base,
        };
        for (i, e) in entries.iter().enumerate() {
            let from_table = in_table.get(&i).map(|&seq| Slot { seq, like: i });
            let from_batch = self.folds_into_batch_row(&latest, i);
            if let Some(slot) = from_table.or(from_batch) {
                plan.headers_of.insert(slot.seq, i);
                for k in &e.keys {
                    latest.insert(k.as_str(), slot);
                }
                plan.results.push(Appended::Duplicate(slot.seq));
                continue;
            }
            plan.next += 1;
            plan.rows.push((plan.next, i));
            if self.barriers[i] {
                // Nothing before a barrier may absorb what follows it.
                latest.clear();
            }
            for k in &e.keys {
                latest.insert(
                    k.as_str(),
                    Slot {
                        seq: plan.next,
                        like: i,
                    },
                );
            }
            plan.results.push(Appended::Stored);
        }
        plan
    }

    /// The row of this batch entry `i` folds into: the latest row of all
    /// its keys, if that is one row with the same content.
    fn folds_into_batch_row(&self, latest: &HashMap<&str, Slot>, i: usize) -> Option<Slot> {
        if !self.may_fold(i) {
            return None;
        }
        let e = self.entries[i];
        let first = latest.get(e.keys[0].as_str())?;
        let all = e
            .keys
            .iter()
            .all(|k| latest.get(k.as_str()).map(|s| s.seq) == Some(first.seq));
        (all && same_content(self.entries[first.like], e)).then_some(*first)
    }
}

fn same_content(a: &NewEntry, b: &NewEntry) -> bool {
    a.keys == b.keys
        && a.route == b.route
        && a.method == b.method
        && a.path == b.path
        && a.body == b.body
}

/// The content's digest, by which the table finds a row of the same
/// content (`entries_digest`) before comparing the content itself.
fn digest(e: &NewEntry) -> i64 {
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
    h.finish() as i64
}
