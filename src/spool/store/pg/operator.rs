//! The operator's reads and changes of the shared queue: listing waiting
//! entries and dead letters, sending dead letters again, purging. Separate
//! because these run on an operator's request (the `spool` CLI, the admin
//! endpoints), hold no leases and may touch entries any replica holds.

use super::{DeadLetter, ENTRY_COLUMNS, Entry, PgStore, StoreError, entry_of, sql, unavailable};
use crate::route::BARRIER_KEY;

impl PgStore {
    /// Waiting entries in delivery order, from `offset`.
    pub async fn list(&self, limit: usize, offset: usize) -> Result<Vec<Entry>, StoreError> {
        let c = self.client().await?;
        let rows = c
            .query(
                &format!(
                    "SELECT {ENTRY_COLUMNS} FROM datalayer_sidecar.entries ORDER BY seq LIMIT $1 OFFSET $2"
                ),
                &[&(limit as i64), &(offset as i64)],
            )
            .await
            .map_err(unavailable)?;
        Ok(rows.iter().map(entry_of).collect())
    }

    /// Dead letters, oldest first.
    pub async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, StoreError> {
        let c = self.client().await?;
        let rows = c
            .query(
                "SELECT seq, route, request_id, created_ms, dead_ms, keys, attempts, class, kind,
                        status, response, reason
                   FROM datalayer_sidecar.dead_letters ORDER BY seq LIMIT $1",
                &[&(limit as i64)],
            )
            .await
            .map_err(unavailable)?;
        Ok(rows.iter().map(dead_letter_of).collect())
    }

    /// Send dead letters again, at the end of the queue (all when `ids` is
    /// empty); returns how many moved.
    pub async fn requeue(&self, ids: &[i64]) -> Result<u64, StoreError> {
        let mut c = self.client().await?;
        let t = c.transaction().await.map_err(sql)?;
        let base: i64 = t
            .query_one("SELECT seq FROM datalayer_sidecar.counter FOR UPDATE", &[])
            .await
            .map_err(sql)?
            .get(0);
        let all = ids.is_empty();
        let moved = t
            .query(
                "WITH gone AS (
                    DELETE FROM datalayer_sidecar.dead_letters WHERE $1 OR seq = ANY($2) RETURNING *),
                 numbered AS (SELECT gone.*, row_number() OVER (ORDER BY seq) AS n FROM gone)
                 INSERT INTO datalayer_sidecar.entries
                   (seq, route, request_id, created_ms, method, path, headers, body, keys, barrier,
                    digest, attempts, replica)
                 SELECT $3 + n, route, request_id, created_ms, method, path, headers, body, keys,
                        $4 = ANY(keys), 0, 0, 'requeue' FROM numbered
                 RETURNING seq",
                &[&all, &ids, &base, &BARRIER_KEY],
            )
            .await
            .map_err(sql)?;
        let n = moved.len() as i64;
        t.execute("UPDATE datalayer_sidecar.counter SET seq = seq + $1", &[&n])
            .await
            .map_err(sql)?;
        t.commit().await.map_err(sql)?;
        Ok(n as u64)
    }

    /// Delete waiting entries and/or dead letters; returns how many.
    pub async fn purge(&self, entries: bool, dead: bool) -> Result<u64, StoreError> {
        let c = self.client().await?;
        let mut n = 0;
        if entries {
            n += c
                .execute("DELETE FROM datalayer_sidecar.entries", &[])
                .await
                .map_err(sql)?;
        }
        if dead {
            n += c
                .execute("DELETE FROM datalayer_sidecar.dead_letters", &[])
                .await
                .map_err(sql)?;
        }
        Ok(n)
    }
}

/// A dead letter from a row of the columns [`PgStore::dead_letters`] reads.
fn dead_letter_of(r: &tokio_postgres::Row) -> DeadLetter {
    DeadLetter {
        id: r.get(0),
        route: r.get(1),
        request_id: r.get(2),
        created_ms: r.get(3),
        dead_ms: r.get(4),
        keys: r.get(5),
        attempts: r.get(6),
        class: r.get(7),
        kind: r.get(8),
        status: r.get::<_, Option<i32>>(9).map(i64::from),
        response: r
            .get::<_, Option<Vec<u8>>>(10)
            .map(|b| String::from_utf8_lossy(&b).into_owned()),
        reason: r.get(11),
    }
}
