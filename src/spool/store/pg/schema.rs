//! The shared schema and its migrations. Separate because the released
//! migration texts are fixed history: they are applied as written, in
//! order, and never edited; everything else in the store may change
//! around them.

use deadpool_postgres::Pool;

use super::{StoreError, sql, unavailable};

/// The advisory lock sidecars starting together take to migrate one at a
/// time.
const MIGRATION_LOCK: i64 = 0x6473_6c73_7031; // "dslsp1"

/// Schema versions, applied in order; never edited once released.
const MIGRATIONS: &[&str] = &[
    "
CREATE TABLE datalayer_sidecar.counter (
    one  boolean PRIMARY KEY DEFAULT true CHECK (one),
    seq  bigint  NOT NULL
);
INSERT INTO datalayer_sidecar.counter (one, seq) VALUES (true, 0);
CREATE TABLE datalayer_sidecar.entries (
    seq            bigint PRIMARY KEY,
    route          text   NOT NULL,
    request_id     text   NOT NULL,
    created_ms     bigint NOT NULL,
    method         text   NOT NULL,
    path           text   NOT NULL,
    headers        bytea  NOT NULL,
    body           bytea  NOT NULL,
    keys           text[] NOT NULL,
    barrier        boolean NOT NULL,
    digest         bigint NOT NULL,
    attempts       bigint NOT NULL DEFAULT 0,
    last_error     text,
    replica        text   NOT NULL
);
-- Who delivers an entry now, and until when (see the module docs).
CREATE TABLE datalayer_sidecar.leases (
    seq      bigint PRIMARY KEY,
    owner    text   NOT NULL,
    until_ms bigint NOT NULL
);
CREATE INDEX entries_digest ON datalayer_sidecar.entries (digest);
-- A queue: rows are deleted soon after they are inserted. A vacuum started
-- by inserts alone finds nothing to reclaim and only competes with the
-- commits (on a shared core it held them back by 100 ms and more), so
-- inserts start none. Deliveries leave dead rows at the head of the queue,
-- which every claim walks over in order until a vacuum clears them, so
-- deletions start one early (every 20,000 rows, not a fifth of the table)
-- and it runs unthrottled. The freeze limits still apply.
ALTER TABLE datalayer_sidecar.entries SET (
    autovacuum_vacuum_insert_threshold = -1,
    autovacuum_vacuum_scale_factor = 0,
    autovacuum_vacuum_threshold = 20000,
    autovacuum_vacuum_cost_delay = 0);
CREATE INDEX entries_barrier ON datalayer_sidecar.entries (seq) WHERE barrier;
-- Each entry's keys, for the per-key order checks: a B-tree range scan per
-- key (a GIN index on the array cost more per insert, and an OR with the
-- barrier test kept the planner from using it).
CREATE TABLE datalayer_sidecar.entry_keys (
    key  text   NOT NULL,
    seq  bigint NOT NULL,
    PRIMARY KEY (key, seq)
) WITH (autovacuum_vacuum_insert_threshold = -1);
CREATE INDEX entry_keys_seq ON datalayer_sidecar.entry_keys (seq);
-- The ledger: counts kept by the same statements that change the rows, as
-- appended deltas (a single counts row would make every delivery wait for
-- the appending transaction's lock). Reading it sums a few rows instead of
-- scanning the queue; `load_totals` folds the deltas now and then.
CREATE TABLE datalayer_sidecar.ledger (
    route    text   NOT NULL,
    entries  bigint NOT NULL,
    bytes    bigint NOT NULL,
    dead     bigint NOT NULL
);
CREATE TABLE datalayer_sidecar.dead_letters (
    seq         bigint PRIMARY KEY,
    route       text   NOT NULL,
    request_id  text   NOT NULL,
    created_ms  bigint NOT NULL,
    dead_ms     bigint NOT NULL,
    method      text   NOT NULL,
    path        text   NOT NULL,
    headers     bytea  NOT NULL,
    body        bytea  NOT NULL,
    keys        text[] NOT NULL,
    attempts    bigint NOT NULL,
    class       text   NOT NULL,
    kind        text   NOT NULL,
    status      integer,
    response    bytea,
    reason      text   NOT NULL
);
-- Statement-level triggers over transition tables: one call per
-- statement, so a group commit's single INSERT costs one trigger run.
CREATE FUNCTION datalayer_sidecar.entries_added() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO datalayer_sidecar.entry_keys (key, seq)
    SELECT DISTINCT k.key, n.seq FROM new_rows n CROSS JOIN LATERAL unnest(n.keys) AS k(key);
    INSERT INTO datalayer_sidecar.ledger (route, entries, bytes, dead)
    SELECT route, count(*), sum(octet_length(body)), 0 FROM new_rows GROUP BY route;
    RETURN NULL;
END $$;
-- By an array of the removed seqs, so both deletes are index scans: a join
-- with the transition table (which has no statistics) was planned as a
-- scan of the whole order index, per delivery.
CREATE FUNCTION datalayer_sidecar.entries_removed() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    gone bigint[];
BEGIN
    SELECT array_agg(seq) INTO gone FROM old_rows;
    DELETE FROM datalayer_sidecar.entry_keys WHERE seq = ANY(gone);
    DELETE FROM datalayer_sidecar.leases WHERE seq = ANY(gone);
    INSERT INTO datalayer_sidecar.ledger (route, entries, bytes, dead)
    SELECT route, -count(*), -sum(octet_length(body)), 0 FROM old_rows GROUP BY route;
    RETURN NULL;
END $$;
CREATE FUNCTION datalayer_sidecar.dead_added() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO datalayer_sidecar.ledger (route, entries, bytes, dead)
    SELECT route, 0, 0, count(*) FROM new_rows GROUP BY route;
    RETURN NULL;
END $$;
CREATE FUNCTION datalayer_sidecar.dead_removed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO datalayer_sidecar.ledger (route, entries, bytes, dead)
    SELECT route, 0, 0, -count(*) FROM old_rows GROUP BY route;
    RETURN NULL;
END $$;
CREATE TRIGGER entries_added AFTER INSERT ON datalayer_sidecar.entries
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION datalayer_sidecar.entries_added();
CREATE TRIGGER entries_removed AFTER DELETE ON datalayer_sidecar.entries
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION datalayer_sidecar.entries_removed();
CREATE TRIGGER dead_added AFTER INSERT ON datalayer_sidecar.dead_letters
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION datalayer_sidecar.dead_added();
CREATE TRIGGER dead_removed AFTER DELETE ON datalayer_sidecar.dead_letters
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION datalayer_sidecar.dead_removed();
",
    "
-- Autoanalyze of the queue, cheap. With the default statistics target the
-- server samples 30,000 rows: every page of a queue of 100,000 writes, and
-- a sort of each sampled column, bodies and headers included. Run every
-- minute or so against a growing queue, on the core the sidecar shares,
-- that held ~1,000 acknowledgements past 10 ms each time (docs/spool.md).
-- The planner only needs row counts (kept by any sample) and the columns
-- the statements compare: 10 histogram buckets (3,000 sampled rows) serve
-- ordered sequence numbers, a flag and unique digests as well as 100 did,
-- and columns nothing filters on get no statistics.
ALTER TABLE datalayer_sidecar.entries
    ALTER COLUMN seq SET STATISTICS 10,
    ALTER COLUMN barrier SET STATISTICS 10,
    ALTER COLUMN digest SET STATISTICS 10,
    ALTER COLUMN route SET STATISTICS 10,
    ALTER COLUMN method SET STATISTICS 10,
    ALTER COLUMN path SET STATISTICS 10,
    ALTER COLUMN request_id SET STATISTICS 0,
    ALTER COLUMN created_ms SET STATISTICS 0,
    ALTER COLUMN headers SET STATISTICS 0,
    ALTER COLUMN body SET STATISTICS 0,
    ALTER COLUMN keys SET STATISTICS 0,
    ALTER COLUMN attempts SET STATISTICS 0,
    ALTER COLUMN last_error SET STATISTICS 0,
    ALTER COLUMN replica SET STATISTICS 0;
ALTER TABLE datalayer_sidecar.entry_keys
    ALTER COLUMN key SET STATISTICS 10,
    ALTER COLUMN seq SET STATISTICS 10;
",
];

/// Bring the schema up to this sidecar's version, or refuse a newer one.
pub(super) async fn migrate(pool: &Pool) -> Result<(), StoreError> {
    let mut c = pool.get().await.map_err(unavailable)?;
    let t = c.transaction().await.map_err(unavailable)?;
    // Sidecars starting together: one applies, the others wait and see
    // the versions applied.
    t.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(sql)?;
    t.batch_execute(
        "CREATE SCHEMA IF NOT EXISTS datalayer_sidecar;
         CREATE TABLE IF NOT EXISTS datalayer_sidecar.schema_version (version integer NOT NULL)",
    )
    .await
    .map_err(sql)?;
    let current: i64 = t
        .query_one(
            "SELECT coalesce(max(version), 0)::bigint FROM datalayer_sidecar.schema_version",
            &[],
        )
        .await
        .map_err(sql)?
        .get(0);
    if current > MIGRATIONS.len() as i64 {
        return Err(StoreError::Sql(format!(
            "postgres: the spool schema is version {current}, newer than this sidecar knows ({}); upgrade the sidecar",
            MIGRATIONS.len()
        )));
    }
    for (i, m) in MIGRATIONS.iter().enumerate().skip(current.max(0) as usize) {
        t.batch_execute(m).await.map_err(sql)?;
        t.execute(
            "INSERT INTO datalayer_sidecar.schema_version (version) VALUES ($1)",
            &[&(i as i32 + 1)],
        )
        .await
        .map_err(sql)?;
        tracing::info!(version = i + 1, "spool: postgres schema migrated");
    }
    t.commit().await.map_err(sql)?;
    Ok(())
}
