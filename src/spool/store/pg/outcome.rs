//! What became of a delivery attempt: delivered, failed (to try again), or
//! dead. Separate because each outcome is recorded only by the replica
//! that still holds the entry's lease: one another replica took over after
//! the lease ran out is that replica's to settle.

use super::{Change, DeadInfo, MAX_DEAD_RESPONSE, PgStore, StoreError, now_ms, pg_error, sql};

/// A delivered batch leaves the queue (its keys, leases and counts go with
/// it: the `entries_removed` trigger) — the entries whose lease this
/// replica ($2) still owns. One another replica took over after the lease
/// ran out is that replica's to remove: it may be sending it now, and
/// removing it here would let the step's next version be claimed and
/// delivered before that send lands.
const DELETE_DELIVERED: &str = "DELETE FROM datalayer_sidecar.entries e
 USING datalayer_sidecar.leases l
 WHERE e.seq = ANY($1) AND l.seq = e.seq AND l.owner = $2
 RETURNING octet_length(e.body)::bigint";

/// The entry `$1`, if this replica ($8) holds its lease, moved to the dead
/// letters with one more attempt counted and the reason `$2`..`$7`.
const MOVE_TO_DEAD_LETTERS: &str = "WITH gone AS (DELETE FROM datalayer_sidecar.entries e
                     USING datalayer_sidecar.leases l
                     WHERE e.seq = $1 AND l.seq = e.seq AND l.owner = $8 RETURNING e.*)
                 INSERT INTO datalayer_sidecar.dead_letters
                   (seq, route, request_id, created_ms, dead_ms, method, path, headers, body, keys,
                    attempts, class, kind, status, response, reason)
                 SELECT seq, route, request_id, created_ms, $2, method, path, headers, body, keys,
                        attempts + 1, $3, $4, $5, $6, $7 FROM gone
                 RETURNING octet_length(body)::bigint";

impl PgStore {
    /// Remove delivered entries.
    pub async fn delivered_many(&self, ids: &[i64]) -> Result<(), StoreError> {
        let c = self.client().await?;
        let delete = c.prepare_cached(DELETE_DELIVERED).await.map_err(pg_error)?;
        let rows = c
            .query(&delete, &[&ids, &&*self.replica])
            .await
            .map_err(sql)?;
        for &id in ids {
            self.let_go(id);
        }
        let bytes: i64 = rows.iter().map(|r| r.get::<_, i64>(0)).sum();
        self.ledger.commit(&Change {
            entries: -(rows.len() as i64),
            bytes: -bytes,
            ..Change::default()
        });
        Ok(())
    }

    /// Count a failed attempt of each of `ids`. The claims stay with this
    /// replica (it tries again) until their lease runs out.
    pub async fn failed_many(&self, ids: &[i64], error: String) -> Result<(), StoreError> {
        let c = self.client().await?;
        c.execute(
            "UPDATE datalayer_sidecar.entries e
                SET attempts = attempts + 1, last_error = $2
               FROM datalayer_sidecar.leases l
              WHERE e.seq = ANY($1) AND l.seq = e.seq AND l.owner = $3",
            &[&ids, &error, &&*self.replica],
        )
        .await
        .map_err(sql)?;
        Ok(())
    }

    /// Move an entry to the dead letters.
    pub async fn dead_letter(&self, id: i64, info: DeadInfo) -> Result<(), StoreError> {
        let mut c = self.client().await?;
        let t = c.transaction().await.map_err(sql)?;
        let response = info.response.map(|mut r| {
            r.truncate(MAX_DEAD_RESPONSE);
            r
        });
        let moved = t
            .query_opt(
                MOVE_TO_DEAD_LETTERS,
                &[
                    &id,
                    &now_ms(),
                    &info.class,
                    &info.kind,
                    &info.status.map(i32::from),
                    &response,
                    &info.reason,
                    &&*self.replica,
                ],
            )
            .await
            .map_err(sql)?;
        t.commit().await.map_err(sql)?;
        self.let_go(id);
        if let Some(r) = moved {
            self.ledger.commit(&Change {
                entries: -1,
                bytes: -r.get::<_, i64>(0),
                dead: 1,
                ..Change::default()
            });
        }
        Ok(())
    }
}
