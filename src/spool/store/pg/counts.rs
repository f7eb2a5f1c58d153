//! The shared counts: the ledger the triggers keep, read into this
//! replica's in-memory [`Ledger`], and the operator's view of it. Separate
//! because counts never come from scanning the queue: every figure here is
//! a sum over the ledger's few rows (or one index probe), and the in-memory
//! ledger changes only by what a committed statement reported.

use deadpool_postgres::Pool;

use super::{Ledger, PgStore, Stats, StoreError, now_ms, unavailable};

/// Fold the ledger's deltas into one row per route. Replicas folding at
/// once each fold what they saw; the sums stay right.
const FOLD_LEDGER: &str = "
WITH gone AS (DELETE FROM datalayer_sidecar.ledger RETURNING *)
INSERT INTO datalayer_sidecar.ledger (route, entries, bytes, dead)
SELECT route, sum(entries), sum(bytes), sum(dead) FROM gone GROUP BY route
HAVING sum(entries) <> 0 OR sum(bytes) <> 0 OR sum(dead) <> 0";

/// Re-read the shared counts (other replicas write and deliver too) from
/// the ledger, folding its deltas first so it stays a few rows.
pub(super) async fn reload_ledger(pool: &Pool, ledger: &Ledger) -> Result<(), StoreError> {
    let c = pool.get().await.map_err(unavailable)?;
    c.batch_execute(FOLD_LEDGER).await.map_err(unavailable)?;
    let r = c
        .query_one(
            "SELECT coalesce(sum(entries), 0)::bigint, coalesce(sum(bytes), 0)::bigint,
                        coalesce(sum(dead), 0)::bigint,
                        (SELECT seq FROM datalayer_sidecar.counter)
                   FROM datalayer_sidecar.ledger",
            &[],
        )
        .await
        .map_err(unavailable)?;
    let (n, bytes, dead, seq): (i64, i64, i64, i64) = (r.get(0), r.get(1), r.get(2), r.get(3));
    ledger.reload(n, bytes, dead, seq);
    Ok(())
}

impl PgStore {
    /// When the first entry in line was stored (entries keep queue order,
    /// so this is the oldest but for requeued dead letters).
    pub async fn oldest_ms(&self) -> Result<Option<i64>, StoreError> {
        let c = self.client().await?;
        Ok(c.query_opt(
            "SELECT created_ms FROM datalayer_sidecar.entries ORDER BY seq LIMIT 1",
            &[],
        )
        .await
        .map_err(unavailable)?
        .map(|r| r.get(0)))
    }

    /// Counts for operators (of the whole shared queue), from the ledger.
    pub async fn stats(&self) -> Result<Stats, StoreError> {
        let c = self.client().await?;
        let rows = c
            .query(
                "SELECT route, sum(entries)::bigint, sum(bytes)::bigint, sum(dead)::bigint
                   FROM datalayer_sidecar.ledger GROUP BY route",
                &[],
            )
            .await
            .map_err(unavailable)?;
        let mut s = Stats::default();
        for r in rows {
            let (route, n, bytes, dead): (String, i64, i64, i64) =
                (r.get(0), r.get(1), r.get(2), r.get(3));
            s.depth += n.max(0) as u64;
            s.bytes += bytes.max(0) as u64;
            s.dead_letters += dead.max(0) as u64;
            if n > 0 {
                s.per_route.insert(route, n as u64);
            }
        }
        s.oldest_age_seconds = self
            .oldest_ms()
            .await?
            .map(|ms| ((now_ms() - ms).max(0)) as f64 / 1000.0);
        Ok(s)
    }
}
