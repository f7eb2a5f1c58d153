//! A store that fails on demand around a real one (tests only): the spool
//! meets a full disk or a database that went away at exactly the call a
//! test names, and the real store beneath shows what was kept.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use super::{
    Appended, DeadInfo, Entry, Ledger, NewEntry, Sharing, SpoolStore, Stats, StoreError,
    StoreFuture,
};

/// Which calls fail next, in order.
#[derive(Debug, Default)]
pub(crate) struct Plan {
    /// The next appends' errors.
    pub(crate) append: VecDeque<StoreError>,
    /// The next removals' of delivered entries.
    pub(crate) delivered: VecDeque<StoreError>,
    /// The next reads' of the head.
    pub(crate) head: VecDeque<StoreError>,
}

/// `inner`, failing as [`Plan`] says.
#[derive(Debug)]
pub(crate) struct FaultyStore<S> {
    pub(crate) inner: S,
    pub(crate) plan: Arc<Mutex<Plan>>,
}

impl<S> FaultyStore<S> {
    fn next(&self, pick: impl FnOnce(&mut Plan) -> Option<StoreError>) -> Option<StoreError> {
        self.plan.lock().ok().and_then(|mut p| pick(&mut p))
    }
}

fn fail<'a, T: Send + 'a>(e: StoreError) -> StoreFuture<'a, T> {
    Box::pin(std::future::ready(Err(e)))
}

impl<S: SpoolStore> SpoolStore for FaultyStore<S> {
    fn append_many(&self, entries: Vec<NewEntry>) -> StoreFuture<'_, Vec<Appended>> {
        match self.next(|p| p.append.pop_front()) {
            Some(e) => fail(e),
            None => self.inner.append_many(entries),
        }
    }

    fn head(&self, limit: usize, max_bytes: usize) -> StoreFuture<'_, Vec<Entry>> {
        match self.next(|p| p.head.pop_front()) {
            Some(e) => fail(e),
            None => self.inner.head(limit, max_bytes),
        }
    }

    fn renew_many<'a>(&'a self, ids: &'a [i64]) -> StoreFuture<'a, Vec<i64>> {
        self.inner.renew_many(ids)
    }

    fn delivered_many(&self, ids: Vec<i64>) -> StoreFuture<'_, ()> {
        match self.next(|p| p.delivered.pop_front()) {
            Some(e) => fail(e),
            None => self.inner.delivered_many(ids),
        }
    }

    fn failed_many(&self, ids: Vec<i64>, error: String) -> StoreFuture<'_, ()> {
        self.inner.failed_many(ids, error)
    }

    fn dead_letter(&self, id: i64, info: DeadInfo) -> StoreFuture<'_, ()> {
        self.inner.dead_letter(id, info)
    }

    fn resync(&self) -> StoreFuture<'_, ()> {
        self.inner.resync()
    }

    fn oldest_ms(&self) -> StoreFuture<'_, Option<i64>> {
        self.inner.oldest_ms()
    }

    fn stats(&self) -> StoreFuture<'_, Stats> {
        self.inner.stats()
    }

    fn release_claims(&self) -> StoreFuture<'_, u64> {
        self.inner.release_claims()
    }

    fn ledger(&self) -> &Ledger {
        self.inner.ledger()
    }

    fn sharing(&self) -> Sharing {
        self.inner.sharing()
    }
}
