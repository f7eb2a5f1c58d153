//! Tickets and per-key order: which writes go to the upstream now, which
//! wait in memory for an earlier write of their keys, which go behind the
//! queue, and which stored entries the replay worker may start.
//!
//! Every write on a spooling route gets a ticket when it arrives; tickets
//! are the queue's order. A write's keys name what it writes (`step:<id>`;
//! `*` is a barrier, ordered against everything). Three sets hold what is
//! not yet delivered, and the rules keep each key's versions in ticket
//! order across all three:
//!
//! - **flights**: writes in flight to the upstream, and writes waiting in
//!   memory for an earlier flight of one of their keys. A write whose key
//!   (or barrier) is held by a flight waits behind the latest one —
//!   without being stored — and goes live when every flight ahead of it
//!   has ended with an answer. It is stored instead (at its own ticket,
//!   after theirs) when one of them was stored, or when its deadline nears.
//!   So a hot key's concurrent writes go to the backend one after another,
//!   and the spool takes only what could not be delivered.
//! - **pending**: writes being committed to the store, by ticket. A flight
//!   that failed joins them at its own, earlier ticket before it ends, so
//!   the flights waiting behind it see it stored and follow it there.
//! - **stored**: the store's entries. While any entry waits, or any write is
//!   pending, every new write goes behind them.
//!
//! The worker starts no entry that shares a key with a flight, and reads the
//! head of the queue in batches. A commit at a ticket lower than the last
//! one it read leaves a hole in what it read, so every commit records the
//! lowest ticket committed since the last read, and the worker reads again
//! before it starts anything behind a hole. The checks and the updates
//! happen under one lock, so there is no moment at which a key is free and
//! the write that holds it back is invisible.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use tokio::sync::watch;
use tokio::time::Instant;

use super::Spool;
use super::store::Entry;
use crate::route::BARRIER_KEY;

type FastMap<K, V> = HashMap<K, V, foldhash::fast::FixedState>;

/// A key's hash. A collision only makes an unrelated write wait its turn.
pub(super) fn key_hash(key: &str) -> u64 {
    use std::hash::BuildHasher;
    foldhash::fast::FixedState::default().hash_one(key)
}

fn barrier_hash() -> u64 {
    key_hash(BARRIER_KEY)
}

/// A write being committed.
#[derive(Debug)]
struct Pending {
    /// Sorted: a write of many keys is checked against it by search.
    keys: Box<[u64]>,
    bytes: u64,
}

/// `keys`, sorted and without repeats.
fn sorted(mut keys: Box<[u64]>) -> Box<[u64]> {
    keys.sort_unstable();
    let mut v = keys.into_vec();
    v.dedup();
    v.into_boxed_slice()
}

/// How a flight ended, for the flights waiting behind it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    /// Answered (delivered, or refused for its content): nothing of it
    /// reaches the backend later, so what waits behind may go live.
    Answered,
    /// Committed to the store (or being committed): what waits behind
    /// follows it there.
    Stored,
}

/// A write in flight or waiting; it tells those behind it how it ended.
#[derive(Debug)]
struct Flight {
    ticket: u64,
    keys: Box<[u64]>,
    ended: watch::Sender<Option<Ended>>,
}

#[derive(Debug)]
pub(super) struct OrderState {
    next_ticket: u64,
    /// Key → tickets of the flights that hold it.
    held: FastMap<u64, BTreeSet<u64>>,
    /// Ticket → flight.
    flights: BTreeMap<u64, Arc<Flight>>,
    /// Ticket → write being committed.
    pending: BTreeMap<u64, Pending>,
    pending_bytes: u64,
    /// Lowest ticket committed since the worker last read the head
    /// (`u64::MAX`: none).
    low_commit: u64,
}

impl OrderState {
    pub(super) fn new(next_ticket: u64) -> Self {
        OrderState {
            next_ticket,
            held: FastMap::default(),
            flights: BTreeMap::new(),
            pending: BTreeMap::new(),
            pending_bytes: 0,
            low_commit: u64::MAX,
        }
    }

    /// Whether a write with these keys conflicts with a flight: it shares
    /// a key, or one of the two is a barrier.
    fn conflicts_live(&self, keys: &[u64]) -> bool {
        if self.flights.is_empty() {
            return false;
        }
        let barrier = barrier_hash();
        self.held.contains_key(&barrier)
            || keys
                .iter()
                .any(|k| *k == barrier || self.held.contains_key(k))
    }

    /// The flights a new write of `keys` comes after: every flight of each
    /// of its keys and every barrier flight; for a barrier, every flight.
    /// Every one, not only the latest: a flight between may end without
    /// being delivered (its client left) while one before it still runs.
    fn ahead_of(&self, keys: &[u64]) -> Vec<Arc<Flight>> {
        let barrier = barrier_hash();
        if keys.contains(&barrier) {
            return self.flights.values().cloned().collect();
        }
        let mut tickets: Vec<u64> = keys
            .iter()
            .chain(std::iter::once(&barrier))
            .filter_map(|k| self.held.get(k))
            .flatten()
            .copied()
            .collect();
        tickets.sort_unstable();
        tickets.dedup();
        tickets
            .iter()
            .filter_map(|t| self.flights.get(t).cloned())
            .collect()
    }

    /// The flight is over: it holds its keys no more.
    fn land(&mut self, f: &Flight) {
        self.flights.remove(&f.ticket);
        for k in f.keys.iter() {
            if let Some(t) = self.held.get_mut(k) {
                t.remove(&f.ticket);
                if t.is_empty() {
                    self.held.remove(k);
                }
            }
        }
    }

    /// Whether a write at `ticket` must wait for a pending one before it.
    /// Each of the write's keys is searched for in each pending write's
    /// sorted keys: a write of one step against one of a thousand steps
    /// costs a search, not a scan.
    fn conflicts_pending(&self, ticket: u64, keys: &[u64]) -> bool {
        let barrier = barrier_hash();
        let mine_barrier = keys.contains(&barrier);
        self.pending.range(..ticket).any(|(_, p)| {
            mine_barrier
                || p.keys.binary_search(&barrier).is_ok()
                || keys.iter().any(|k| p.keys.binary_search(k).is_ok())
        })
    }

    /// Writes being committed, and their bytes.
    pub(super) fn pending(&self) -> (u64, u64) {
        (self.pending.len() as u64, self.pending_bytes)
    }
}

/// Whether a write goes to the upstream now, waits for the flights of its
/// keys, or goes behind the spool.
#[derive(Debug)]
pub enum Admit {
    /// Send it; hold the guard until it is done.
    Live(LiveGuard),
    /// Wait for the flights ahead of it (see [`Waiting::resolve`]).
    Wait(Waiting),
    /// Spool it at this ticket.
    Behind(Reservation),
}

/// Where a waiting write goes once the flights ahead of it have ended.
#[derive(Debug)]
pub enum Resolved {
    /// Send it; hold the guard until it is done.
    Live(LiveGuard),
    /// Spool it at this ticket.
    Behind(Reservation),
}

/// Held by a live write on a spooling route; releases its keys.
#[derive(Debug)]
pub struct LiveGuard {
    spool: Spool,
    flight: Arc<Flight>,
    bytes: u64,
    /// How it ended, once known: `None` until the write was answered or
    /// stored. A guard dropped before that (its request abandoned, maybe
    /// still on its way to the backend) counts as stored: the writes behind
    /// it go behind the spool rather than live.
    ended: Option<Ended>,
}

impl LiveGuard {
    /// The write's ticket.
    pub fn ticket(&self) -> u64 {
        self.flight.ticket
    }

    /// The backend answered the write, and nothing of it is stored: the
    /// writes waiting behind it may go live.
    pub fn answered(mut self) {
        self.ended = Some(Ended::Answered);
    }

    /// The live write failed: it will be committed at its own ticket.
    /// Reserving before letting go of the keys means no later write of the
    /// same keys can start in between, and the writes waiting behind it are
    /// told it is stored, so they follow it into the store.
    pub fn into_reservation(mut self) -> Reservation {
        let r = self
            .spool
            .reserve(self.flight.ticket, self.flight.keys.clone(), self.bytes);
        self.ended = Some(Ended::Stored);
        drop(self);
        r
    }
}

impl Drop for LiveGuard {
    fn drop(&mut self) {
        let ended = self.ended.unwrap_or(Ended::Stored);
        self.spool.end_flight(&self.flight, ended);
    }
}

/// A write waiting in memory for the flights of its keys ahead of it.
#[derive(Debug)]
pub struct Waiting {
    spool: Spool,
    flight: Option<Arc<Flight>>,
    ahead: Vec<watch::Receiver<Option<Ended>>>,
    bytes: u64,
}

impl Waiting {
    /// Wait until every flight ahead has ended, or `until`: live when they
    /// were all answered; behind the spool, at this write's own ticket (so
    /// after theirs), when one of them was stored or the time is up.
    pub async fn resolve(mut self, until: Instant) -> Resolved {
        let mut stored = false;
        let mut ahead = std::mem::take(&mut self.ahead);
        for rx in &mut ahead {
            let ended = tokio::time::timeout_at(until, rx.wait_for(Option::is_some)).await;
            match ended {
                Ok(Ok(e)) if *e == Some(Ended::Answered) => {}
                // Stored, or its flight gone without a word (it was dropped
                // before it could say): behind it, to be safe.
                Ok(_) => stored = true,
                Err(_) => {
                    stored = true;
                    break;
                }
            }
            if stored {
                break;
            }
        }
        let Some(flight) = self.flight.take() else {
            return Resolved::Behind(Reservation {
                spool: self.spool.clone(),
                ticket: 0,
                done: true,
            });
        };
        if stored {
            let place = self
                .spool
                .reserve(flight.ticket, flight.keys.clone(), self.bytes);
            self.spool.end_flight(&flight, Ended::Stored);
            return Resolved::Behind(place);
        }
        Resolved::Live(LiveGuard {
            spool: self.spool.clone(),
            flight,
            bytes: self.bytes,
            ended: None,
        })
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        // Gone before it was sent or stored (the client left): those behind
        // it may go on.
        if let Some(f) = self.flight.take() {
            self.spool.end_flight(&f, Ended::Answered);
        }
    }
}

/// A write's place in the queue while it is committed. Dropped without
/// [`Reservation::committed`], it leaves the queue (the write was refused,
/// or the client went away before it was stored).
#[derive(Debug)]
pub struct Reservation {
    spool: Spool,
    ticket: u64,
    done: bool,
}

impl Reservation {
    /// The ticket.
    pub fn ticket(&self) -> u64 {
        self.ticket
    }

    /// The write is in the store at its ticket.
    pub(super) fn committed(mut self) {
        self.release(true);
    }

    fn release(&mut self, stored: bool) {
        if self.done {
            return;
        }
        self.done = true;
        if let Ok(mut o) = self.spool.inner.order.lock() {
            if let Some(p) = o.pending.remove(&self.ticket) {
                o.pending_bytes = o.pending_bytes.saturating_sub(p.bytes);
            }
            if stored {
                o.low_commit = o.low_commit.min(self.ticket);
            }
        }
        self.spool.inner.wake.notify_one();
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        // Dropped before `committed`: the write may still commit (its
        // future was dropped after the store had it), so the worker reads
        // the head again rather than miss an entry at an early ticket.
        self.release(true);
    }
}

/// Why the worker must read the head of the queue again.
#[derive(Debug)]
pub(super) struct Reread;

impl Spool {
    fn reserve(&self, ticket: u64, keys: Box<[u64]>, bytes: u64) -> Reservation {
        if let Ok(mut o) = self.inner.order.lock() {
            o.pending_bytes += bytes;
            o.pending.insert(
                ticket,
                Pending {
                    keys: sorted(keys),
                    bytes,
                },
            );
        }
        Reservation {
            spool: self.clone(),
            ticket,
            done: false,
        }
    }

    /// A flight is over: it lets go of its keys and tells those behind it.
    fn end_flight(&self, f: &Flight, ended: Ended) {
        if let Ok(mut o) = self.inner.order.lock() {
            o.land(f);
        }
        f.ended.send_replace(Some(ended));
        // The worker waits on flights only while entries wait; with an
        // empty queue, waking it for every live write would cost a query.
        if self.inner.store.waiting() > 0 {
            self.inner.wake.notify_one();
        }
    }

    /// Decide where a write touching `keys` (of `bytes` to store) goes.
    pub fn admit(&self, keys: &[String], bytes: u64, write_behind: bool) -> Admit {
        self.admit_n(keys, bytes, write_behind, 1)
    }

    /// [`Spool::admit`] for a write that may be stored as up to `tickets`
    /// entries (one per root field): it takes that many consecutive
    /// tickets, so its entries keep their order and nothing comes between.
    pub fn admit_n(&self, keys: &[String], bytes: u64, write_behind: bool, tickets: u64) -> Admit {
        let hashed: Box<[u64]> = sorted(keys.iter().map(|k| key_hash(k)).collect());
        // Entries the operator requeued may have moved the end of the queue.
        let end = self.inner.store.max_ticket().max(0) as u64;
        let Ok(mut o) = self.inner.order.lock() else {
            // A poisoned lock: behind the queue is always safe.
            return Admit::Behind(Reservation {
                spool: self.clone(),
                ticket: end + 1,
                done: true,
            });
        };
        let ticket = o.next_ticket.max(end + 1);
        o.next_ticket = ticket + tickets.max(1);
        // Read under the lock: a write leaves `pending` under it after its
        // commit counted it, so one of the two always shows it.
        let stored = self.inner.store.waiting();
        if write_behind || stored > 0 || !o.pending.is_empty() {
            o.pending_bytes += bytes;
            o.pending.insert(
                ticket,
                Pending {
                    keys: hashed,
                    bytes,
                },
            );
            return Admit::Behind(Reservation {
                spool: self.clone(),
                ticket,
                done: false,
            });
        }
        let ahead = o.ahead_of(&hashed);
        let (ended, _) = watch::channel(None);
        let flight = Arc::new(Flight {
            ticket,
            keys: hashed,
            ended,
        });
        o.flights.insert(ticket, flight.clone());
        for k in flight.keys.iter() {
            o.held.entry(*k).or_default().insert(ticket);
        }
        if ahead.is_empty() {
            return Admit::Live(LiveGuard {
                spool: self.clone(),
                flight,
                bytes,
                ended: None,
            });
        }
        Admit::Wait(Waiting {
            spool: self.clone(),
            ahead: ahead.iter().map(|f| f.ended.subscribe()).collect(),
            flight: Some(flight),
            bytes,
        })
    }

    /// Whether a write at `ticket` may be folded into an identical waiting
    /// entry: no write of its keys is in flight, waiting or being committed
    /// with an earlier ticket (it would land between the two). New writes
    /// only get later tickets, so the answer holds until the write is
    /// stored.
    pub(super) fn may_fold(&self, ticket: u64, keys: &[String]) -> bool {
        let hashed: Vec<u64> = keys.iter().map(|k| key_hash(k)).collect();
        self.inner
            .order
            .lock()
            .map(|o| !o.conflicts_live(&hashed) && !o.conflicts_pending(ticket, &hashed))
            .unwrap_or(false)
    }

    /// The worker is about to read the head of the queue: commits from now
    /// on are news to it.
    pub(super) fn head_read_starts(&self) {
        if let Ok(mut o) = self.inner.order.lock() {
            o.low_commit = u64::MAX;
        }
    }

    /// The entries of `cache` (the head of the queue, in order; entries up
    /// to `cache_end` were read) to start now: not in flight, sharing no key
    /// with an earlier entry still waiting or in flight, nor with a live or
    /// pending write ahead of it — so each key's versions arrive in order —
    /// up to `free` of them. A barrier starts only when nothing is ahead of
    /// it, and nothing behind it starts before it ends. [`Reread`] when a
    /// commit landed inside what was read.
    pub(super) fn eligible(
        &self,
        cache: &[Entry],
        cache_end: i64,
        in_flight: &HashMap<i64, Vec<String>>,
        free: usize,
    ) -> Result<Vec<Entry>, Reread> {
        let o = self.inner.order.lock().map_err(|_| Reread)?;
        // A write spooled at an early ticket can land inside what was read,
        // where ids are tickets.
        if self.inner.store.ids_are_tickets() && cache_end >= 0 && o.low_commit <= cache_end as u64
        {
            return Err(Reread);
        }
        let mut seen: std::collections::HashSet<&str> =
            in_flight.values().flatten().map(String::as_str).collect();
        let mut barrier_ahead = seen.contains(BARRIER_KEY);
        let mut out = Vec::new();
        for entry in cache {
            if out.len() >= free || barrier_ahead {
                break;
            }
            if in_flight.contains_key(&entry.id) {
                continue;
            }
            let barrier = entry.keys.iter().any(|k| k == BARRIER_KEY);
            // Behind an earlier entry of its key first: no hashing for the
            // versions queued behind a hot step.
            let behind = if barrier {
                !seen.is_empty() || !out.is_empty()
            } else {
                entry.keys.iter().any(|k| seen.contains(k.as_str()))
            };
            let blocked = behind || {
                let hashed: Vec<u64> = entry.keys.iter().map(|k| key_hash(k)).collect();
                o.conflicts_live(&hashed) || o.conflicts_pending(entry.id.max(0) as u64, &hashed)
            };
            seen.extend(entry.keys.iter().map(String::as_str));
            barrier_ahead = barrier;
            if !blocked {
                out.push(entry.clone());
            }
        }
        Ok(out)
    }
}
