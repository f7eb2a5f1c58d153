//! Claims and leases: which entries this replica may deliver now, for how
//! long it holds them, and giving them back. Separate because this is where
//! the fleet's per-key order and its exclusion between replicas are
//! decided; everything else in the store trusts a lease it finds here.

use std::time::Duration;

use super::{ENTRY_COLUMNS, Entry, PgStore, StoreError, entry_of, pg_error, sql, unavailable};
use crate::clock;

/// Least time between two claims while the queue is short (the last claim
/// took all there was). A claim is one transaction whatever it returns, and
/// costs the server about as much as a whole batch of appends, so claiming
/// after every commit at a steady write rate costs the server more than the
/// writes do and acknowledgements fall behind. Waiting lets a claim take
/// what many commits stored.
pub const SHORT_CLAIM_INTERVAL: Duration = Duration::from_millis(25);

/// Entries this replica may claim: not held by another replica's live
/// lease, and first in line for every one of their keys (no older entry
/// shares a key, no older barrier, and for a barrier no older entry at all).
///
/// The key check compares `o.seq + 0`, so the only index it can use is
/// `(key, seq)`, looked up by the entry's keys. With `o.seq` bare, the
/// planner could instead range-scan the `seq` index over every older key
/// row, dead ones included, per entry walked; it chooses that plan when its
/// statistics describe a small table, and on a deep queue the claim then
/// runs on and on while holding row locks that block the other replicas'
/// deliveries. The group commit's duplicate look-up does the same.
const CLAIMABLE: &str = "(l.seq IS NULL OR l.until_ms < k.now OR l.owner = $2)
    AND NOT EXISTS (
        SELECT 1 FROM datalayer_sidecar.entry_keys o
        WHERE o.key = ANY(e.keys) AND o.seq + 0 < e.seq)
    AND NOT EXISTS (
        SELECT 1 FROM datalayer_sidecar.entries b WHERE b.barrier AND b.seq < e.seq)
    AND (NOT e.barrier OR e.seq <= (SELECT min(f.seq) FROM datalayer_sidecar.entries f))";

/// Lease times are the database's clock (`k.now`, the statement's start,
/// in ms), never a replica's: replicas whose clocks disagree still agree
/// on when a lease ran out.
const CLOCK: &str =
    "clock AS (SELECT (extract(epoch FROM statement_timestamp()) * 1000)::bigint AS now)";

/// A claim: the first claimable entries from `$4` on, leased to this
/// replica for `$1` ms, and the entries it already holds on a lease with
/// more than half its time left, up to `$3` in all. A lease row that
/// exists is taken over only if, once locked, it is still expired (or
/// ours): a renewal that committed while this claim ran wins, and the
/// entry is not returned. The row lock keeps a
/// concurrent claim off the new entries until this statement's leases are
/// committed; the leases keep them off afterwards. Entries held on a fresh
/// lease are neither locked nor checked again: no other replica may take
/// them while the lease runs, and nothing older than them can join their
/// keys (`seq` only grows). Locking and re-checking them would make every
/// claim walk the replica's whole window of deliveries in flight again.
/// Their lease rows go with their entries (the `entries_removed` trigger),
/// so none is counted here after its entry is gone. Built once: the entry
/// columns are prefixed with the table's alias.
static CLAIM: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    let columns: Vec<String> = ENTRY_COLUMNS
        .split(", ")
        .map(|col| format!("t.{col}"))
        .collect();
    format!(
        "WITH {CLOCK},
         mine AS (
            SELECT l.seq FROM datalayer_sidecar.leases l CROSS JOIN clock k
             WHERE l.seq >= $4 AND l.owner = $2 AND l.until_ms >= k.now + $1::bigint / 2
             ORDER BY l.seq LIMIT $3),
         c AS (
            SELECT e.seq FROM datalayer_sidecar.entries e
              LEFT JOIN datalayer_sidecar.leases l ON l.seq = e.seq
              CROSS JOIN clock k
             WHERE e.seq >= $4
               AND NOT coalesce(l.owner = $2 AND l.until_ms >= k.now + $1::bigint / 2, false)
               AND {CLAIMABLE}
             ORDER BY e.seq
             LIMIT greatest(0, $3 - (SELECT count(*) FROM mine))
             FOR UPDATE OF e SKIP LOCKED),
         claimed AS (
            INSERT INTO datalayer_sidecar.leases AS held (seq, owner, until_ms)
            SELECT seq, $2, (SELECT now FROM clock) + $1::bigint FROM c
            ON CONFLICT (seq) DO UPDATE SET owner = EXCLUDED.owner, until_ms = EXCLUDED.until_ms
             WHERE held.owner = EXCLUDED.owner OR held.until_ms < EXCLUDED.until_ms - $1::bigint
            RETURNING seq)
         SELECT {} FROM datalayer_sidecar.entries t
          WHERE t.seq IN (SELECT seq FROM mine UNION ALL SELECT seq FROM claimed)",
        columns.join(", ")
    )
});

/// Walk the queue in order and stop at the claim's limit. The planner
/// misjudges how many entries pass the order checks (it expects almost
/// none to), and would then read and sort the whole queue for every claim.
const WALK_IN_ORDER: &str = "SET LOCAL enable_seqscan = off; SET LOCAL enable_sort = off;
             SET LOCAL enable_hashjoin = off; SET LOCAL enable_bitmapscan = off";

/// Extend this replica's leases on `$1` by `$3` ms, those still running
/// only: a lease that ran out is up for any replica to take, so its holder
/// gives it up rather than deliver on it.
const RENEW_LEASES: &str = "WITH clock AS (
    SELECT (extract(epoch FROM statement_timestamp()) * 1000)::bigint AS now)
UPDATE datalayer_sidecar.leases l SET until_ms = k.now + $3::bigint FROM clock k
 WHERE l.seq = ANY($1) AND l.owner = $2 AND l.until_ms >= k.now RETURNING l.seq";

/// Give back this replica's ($2) leases on `$1`.
const RELEASE_LEASES: &str =
    "DELETE FROM datalayer_sidecar.leases WHERE seq = ANY($1) AND owner = $2";

/// A claim walks the queue from `from`, not from its start: the rows below
/// are delivered (dead until a vacuum, and slow to walk in a deep queue)
/// or held by other replicas. Every few claims, and after one that found
/// nothing, it walks from the start again, so entries another replica gave
/// back are found. Order does not depend on it: a claim never takes an
/// entry while an older one of its keys waits.
#[derive(Debug, Default)]
pub(super) struct Scan {
    from: i64,
    claims: u32,
}

/// Claims between walks from the start of the queue.
const REWIND_EVERY: u32 = 8;

impl PgStore {
    /// Claim the next deliverable entries (see the module docs).
    pub async fn head(&self, limit: usize, max_bytes: usize) -> Result<Vec<Entry>, StoreError> {
        let mut c = self.client().await?;
        let mut out = self.claim(&mut c, limit).await?;
        out.sort_by_key(|e| e.id);
        self.scan_next_from(&out);
        // Within the byte budget (always at least one); give back what this
        // claim newly took past it.
        let keep = within_bytes(&out, max_bytes);
        if keep < out.len() {
            let rest = self.newly_taken(&out[keep..]);
            out.truncate(keep);
            c.execute(RELEASE_LEASES, &[&rest, &&*self.replica])
                .await
                .map_err(sql)?;
        }
        if let Ok(mut held) = self.held.lock() {
            held.extend(out.iter().map(|e| e.id));
        }
        Ok(out)
    }

    /// One claim transaction: the entries [`CLAIM`] returns, in no order.
    async fn claim(
        &self,
        c: &mut deadpool_postgres::Object,
        limit: usize,
    ) -> Result<Vec<Entry>, StoreError> {
        let t = c.transaction().await.map_err(unavailable)?;
        t.batch_execute(WALK_IN_ORDER).await.map_err(sql)?;
        let from = self.scan_start();
        let claim = t.prepare_cached(&CLAIM).await.map_err(sql)?;
        let rows = t
            .query(
                &claim,
                // A lease of ours with more than half its time left is
                // neither rewritten nor locked (`mine` in the claim): every
                // claim returns the entries this replica already holds, and
                // rewriting their leases each time would be most of a
                // claim's writes.
                &[
                    &clock::millis(self.lease),
                    &&*self.replica,
                    &(limit as i64),
                    &from,
                ],
            )
            .await
            .map_err(sql)?;
        t.commit().await.map_err(sql)?;
        Ok(rows.iter().map(entry_of).collect())
    }

    /// Where this claim starts walking: where the last one began, or the
    /// start of the queue every [`REWIND_EVERY`] claims.
    fn scan_start(&self) -> i64 {
        match self.scan.lock() {
            Ok(mut scan) => {
                scan.claims = scan.claims.wrapping_add(1);
                if scan.claims % REWIND_EVERY == 0 {
                    scan.from = 0;
                }
                scan.from
            }
            Err(_) => 0,
        }
    }

    /// The next claim starts at the first entry this one found; nothing
    /// found from here, it walks from the start.
    fn scan_next_from(&self, claimed: &[Entry]) {
        if let Ok(mut scan) = self.scan.lock() {
            scan.from = claimed.first().map_or(0, |e| e.id);
        }
    }

    /// The ids of `past` that this replica did not hold before the claim.
    /// Only those may be given back: the worker may be delivering an entry
    /// held before, and a lease given back is one another replica may take
    /// while the delivery runs.
    fn newly_taken(&self, past: &[Entry]) -> Vec<i64> {
        match self.held.lock() {
            Ok(held) => past
                .iter()
                .map(|e| e.id)
                .filter(|id| !held.contains(id))
                .collect(),
            Err(_) => Vec::new(),
        }
    }

    /// This replica is done with `id` (delivered, dead-lettered, or taken
    /// over by another replica).
    pub(super) fn let_go(&self, id: i64) {
        if let Ok(mut held) = self.held.lock() {
            held.remove(&id);
        }
    }

    /// Before a delivery: extend this replica's claim on `ids`; returns
    /// those it still holds. An entry whose claim is gone (another replica
    /// took it after the lease ran out, or it was delivered) must not be
    /// sent from what this replica read earlier.
    pub async fn renew_many(&self, ids: &[i64]) -> Result<Vec<i64>, StoreError> {
        let c = self.client().await?;
        let renew = c.prepare_cached(RENEW_LEASES).await.map_err(pg_error)?;
        let rows = c
            .query(&renew, &[&ids, &&*self.replica, &clock::millis(self.lease)])
            .await
            .map_err(unavailable)?;
        let kept: std::collections::HashSet<i64> = rows.iter().map(|r| r.get(0)).collect();
        for &id in ids {
            if !kept.contains(&id) {
                self.let_go(id);
            }
        }
        Ok(ids.iter().copied().filter(|id| kept.contains(id)).collect())
    }

    /// Give back every entry this replica holds (at shutdown), so the
    /// fleet takes them at once instead of after the lease.
    pub async fn release_all(&self) -> Result<u64, StoreError> {
        let held: Vec<i64> = match self.held.lock() {
            Ok(mut h) => std::mem::take(&mut *h).into_iter().collect(),
            Err(_) => Vec::new(),
        };
        let c = self.client().await?;
        c.execute(RELEASE_LEASES, &[&held, &&*self.replica])
            .await
            .map_err(sql)
    }
}

/// How many of `claimed`, in order, fit the byte budget: up to and
/// including the one that reaches it, so never none of a claim that found
/// some.
fn within_bytes(claimed: &[Entry], max_bytes: usize) -> usize {
    let mut bytes = 0usize;
    for (i, e) in claimed.iter().enumerate() {
        bytes += e.body_bytes;
        if bytes >= max_bytes {
            return i + 1;
        }
    }
    claimed.len()
}
