//! The store's tables, the triggers that keep its ledger, and migrations.
//!
//! The ledger (`ledger`: waiting entries and body bytes per route;
//! `counters`: dead letters and the highest dead ticket) is maintained by
//! triggers, so it changes in the same transaction as the rows, whoever
//! writes the file — the sidecar or the operator's `spool` commands. The
//! sidecar's in-memory totals are re-read from it, never from a count over
//! the rows.
//!
//! There is no index on the ordering keys: step ids are random, so such an
//! index takes a write to a random page per entry, and checkpoints of those
//! scattered pages stalled commits once the queue held hundreds of
//! thousands of entries. Entries are appended in id order instead, and
//! de-duplication looks at recent writes in memory (see the writer).

use rusqlite::Connection;

/// Schema version written to `PRAGMA user_version`.
pub(super) const VERSION: i64 = 4;

/// The tables and triggers of the current version (idempotent).
const CREATE: &str = "
CREATE TABLE IF NOT EXISTS entries (
    id          INTEGER PRIMARY KEY, -- the ticket: replay order
    route       TEXT    NOT NULL,
    request_id  TEXT    NOT NULL,
    created_ms  INTEGER NOT NULL,
    method      TEXT    NOT NULL,
    path        TEXT    NOT NULL,
    headers     BLOB    NOT NULL,
    body        BLOB    NOT NULL,
    keys        TEXT    NOT NULL, -- JSON list of ordering keys
    attempts    INTEGER NOT NULL DEFAULT 0,
    last_error  TEXT,
    body_bytes  INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS dead_letters (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    ticket      INTEGER NOT NULL,
    route       TEXT    NOT NULL,
    request_id  TEXT    NOT NULL,
    created_ms  INTEGER NOT NULL,
    dead_ms     INTEGER NOT NULL,
    method      TEXT    NOT NULL,
    path        TEXT    NOT NULL,
    headers     BLOB    NOT NULL,
    body        BLOB    NOT NULL,
    keys        TEXT    NOT NULL,
    attempts    INTEGER NOT NULL,
    class       TEXT    NOT NULL,
    kind        TEXT    NOT NULL,
    status      INTEGER,
    response    BLOB,
    reason      TEXT    NOT NULL
);
CREATE TABLE IF NOT EXISTS ledger (
    route   TEXT PRIMARY KEY,
    entries INTEGER NOT NULL,
    bytes   INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS counters (
    name  TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
INSERT OR IGNORE INTO counters (name, value) VALUES ('dead_letters', 0), ('max_dead_ticket', 0);
CREATE TRIGGER IF NOT EXISTS entry_added AFTER INSERT ON entries BEGIN
    INSERT INTO ledger (route, entries, bytes) VALUES (NEW.route, 1, NEW.body_bytes)
        ON CONFLICT (route) DO UPDATE SET entries = entries + 1, bytes = bytes + excluded.bytes;
END;
CREATE TRIGGER IF NOT EXISTS entry_removed AFTER DELETE ON entries BEGIN
    UPDATE ledger SET entries = entries - 1, bytes = bytes - OLD.body_bytes
        WHERE route = OLD.route;
END;
CREATE TRIGGER IF NOT EXISTS dead_added AFTER INSERT ON dead_letters BEGIN
    UPDATE counters SET value = value + 1 WHERE name = 'dead_letters';
    UPDATE counters SET value = max(value, NEW.ticket) WHERE name = 'max_dead_ticket';
END;
CREATE TRIGGER IF NOT EXISTS dead_removed AFTER DELETE ON dead_letters BEGIN
    UPDATE counters SET value = value - 1 WHERE name = 'dead_letters';
END;
";

/// Version 2 named each ordering key by what it writes (`step:<id>`):
/// version 1 spooled `ingestStep` writes only, keyed by the bare step id in
/// a column called `step_ids`.
const FROM_1: &str = "
ALTER TABLE entries RENAME COLUMN step_ids TO keys;
ALTER TABLE dead_letters RENAME COLUMN step_ids TO keys;
UPDATE entries SET keys =
    (SELECT json_group_array('step:' || value) FROM json_each(entries.keys));
UPDATE dead_letters SET keys =
    (SELECT json_group_array('step:' || value) FROM json_each(dead_letters.keys));
";

/// Version 3 added the ledger and `body_bytes`; they are filled from the
/// rows once, before the triggers take over.
const FROM_2: &str = "
ALTER TABLE entries ADD COLUMN body_bytes INTEGER NOT NULL DEFAULT 0;
UPDATE entries SET body_bytes = length(body);
";

/// Version 4 dropped the index on ordering keys (see the module doc):
/// version 3's triggers wrote to it, so they are made again without it.
const FROM_3: &str = "
DROP TRIGGER IF EXISTS entry_added;
DROP TRIGGER IF EXISTS entry_removed;
DROP TABLE IF EXISTS entry_keys;
";

/// Fill the ledger from the rows (after `FROM_2`).
const FILL: &str = "
INSERT INTO ledger (route, entries, bytes)
    SELECT route, count(*), sum(body_bytes) FROM entries GROUP BY route;
UPDATE counters SET value = (SELECT count(*) FROM dead_letters) WHERE name = 'dead_letters';
UPDATE counters SET value = coalesce((SELECT max(ticket) FROM dead_letters), 0)
    WHERE name = 'max_dead_ticket';
";

/// Bring a store at `from` up to [`VERSION`], in one transaction.
pub(super) fn migrate(conn: &Connection, from: i64) -> rusqlite::Result<()> {
    let mut sql = String::from("BEGIN IMMEDIATE;");
    match from {
        0 => sql.push_str(CREATE),
        1 | 2 => {
            if from == 1 {
                sql.push_str(FROM_1);
            }
            sql.push_str(FROM_2);
            // CREATE makes the new tables; the triggers it makes fire only
            // on later writes, so the fill below counts each row once.
            sql.push_str(CREATE);
            sql.push_str(FILL);
        }
        3 => {
            sql.push_str(FROM_3);
            sql.push_str(CREATE);
        }
        _ => {}
    }
    sql.push_str(&format!("PRAGMA user_version = {VERSION}; COMMIT;"));
    conn.execute_batch(&sql).inspect_err(|_| {
        let _ = conn.execute_batch("ROLLBACK");
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The version 1 schema, as that release created it.
    const V1: &str = "
CREATE TABLE entries (id INTEGER PRIMARY KEY, route TEXT NOT NULL, request_id TEXT NOT NULL,
    created_ms INTEGER NOT NULL, method TEXT NOT NULL, path TEXT NOT NULL, headers BLOB NOT NULL,
    body BLOB NOT NULL, step_ids TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, last_error TEXT);
CREATE TABLE dead_letters (id INTEGER PRIMARY KEY AUTOINCREMENT, ticket INTEGER NOT NULL,
    route TEXT NOT NULL, request_id TEXT NOT NULL, created_ms INTEGER NOT NULL, dead_ms INTEGER NOT NULL,
    method TEXT NOT NULL, path TEXT NOT NULL, headers BLOB NOT NULL, body BLOB NOT NULL,
    step_ids TEXT NOT NULL, attempts INTEGER NOT NULL, class TEXT NOT NULL, kind TEXT NOT NULL,
    status INTEGER, response BLOB, reason TEXT NOT NULL);
PRAGMA user_version = 1;
INSERT INTO entries (id, route, request_id, created_ms, method, path, headers, body, step_ids)
    VALUES (1, 'step_writes', 'r1', 0, 'POST', '/api/graphql', x'', x'00112233', '[\"a\",\"b\"]'),
           (2, 'step_writes', 'r2', 0, 'POST', '/api/graphql', x'', x'0011', '[\"c\"]');
INSERT INTO dead_letters (ticket, route, request_id, created_ms, dead_ms, method, path, headers,
    body, step_ids, attempts, class, kind, reason)
    VALUES (7, 'step_writes', 'r7', 0, 0, 'POST', '/api/graphql', x'', x'', '[\"d\"]', 1, 'permanent',
            'status_4xx', 'refused');
";

    #[test]
    fn version_1_is_migrated_with_its_ledger_and_keys() {
        let c = Connection::open_in_memory().unwrap();
        c.execute_batch(V1).unwrap();
        migrate(&c, 1).unwrap();
        let keys: String = c
            .query_row("SELECT keys FROM entries WHERE id = 1", [], |r| r.get(0))
            .unwrap();
        assert_eq!(keys, r#"["step:a","step:b"]"#);
        let ledger: (i64, i64) = c
            .query_row(
                "SELECT entries, bytes FROM ledger WHERE route = 'step_writes'",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!(ledger, (2, 6));
        let dead: i64 = c
            .query_row(
                "SELECT value FROM counters WHERE name = 'dead_letters'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(dead, 1);
        // The triggers keep it from here on.
        c.execute("DELETE FROM entries WHERE id = 2", []).unwrap();
        let n: i64 = c
            .query_row(
                "SELECT entries FROM ledger WHERE route = 'step_writes'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(n, 1);
        let v: i64 = c
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(v, VERSION);
    }

    /// Version 3 as that release created it: the key index and the
    /// triggers that fed it.
    const V3_INDEX: &str = "
CREATE TABLE entry_keys (key TEXT NOT NULL, entry INTEGER NOT NULL, PRIMARY KEY (key, entry)) WITHOUT ROWID;
DROP TRIGGER entry_added;
CREATE TRIGGER entry_added AFTER INSERT ON entries BEGIN
    INSERT INTO ledger (route, entries, bytes) VALUES (NEW.route, 1, NEW.body_bytes)
        ON CONFLICT (route) DO UPDATE SET entries = entries + 1, bytes = bytes + excluded.bytes;
    INSERT INTO entry_keys (key, entry) SELECT value, NEW.id FROM json_each(NEW.keys);
END;
PRAGMA user_version = 3;
";

    #[test]
    fn version_3_loses_its_key_index_and_keeps_its_ledger() {
        let c = Connection::open_in_memory().unwrap();
        migrate(&c, 0).unwrap();
        c.execute_batch(V3_INDEX).unwrap();
        c.execute(
            "INSERT INTO entries (id, route, request_id, created_ms, method, path, headers, body, keys, body_bytes)
             VALUES (5, 'spooled_writes', 'r5', 0, 'POST', '/api/graphql', x'', x'0011', '[\"step:a\"]', 2)",
            [],
        )
        .unwrap();
        migrate(&c, 3).unwrap();
        let index: i64 = c
            .query_row(
                "SELECT count(*) FROM sqlite_schema WHERE name = 'entry_keys'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(index, 0);
        // The new triggers keep the ledger without the index.
        c.execute(
            "INSERT INTO entries (id, route, request_id, created_ms, method, path, headers, body, keys, body_bytes)
             VALUES (6, 'spooled_writes', 'r6', 0, 'POST', '/api/graphql', x'', x'00', '[\"step:b\"]', 1)",
            [],
        )
        .unwrap();
        c.execute("DELETE FROM entries WHERE id = 5", []).unwrap();
        let ledger: (i64, i64) = c
            .query_row(
                "SELECT entries, bytes FROM ledger WHERE route = 'spooled_writes'",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!(ledger, (1, 1));
        let v: i64 = c
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(v, VERSION);
    }
}
