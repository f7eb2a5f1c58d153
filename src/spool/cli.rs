//! `datalayer-sidecar spool stats|list|dead-letters|requeue|purge`: the
//! operator's tools. They open the store directly — the SQLite file, or the
//! shared PostgreSQL database — so they work whether the sidecar runs or
//! not (SQLite's WAL mode and locking, and PostgreSQL's transactions, make
//! that safe; a running sidecar picks the changes up within seconds).

use std::io::Write;

use clap::Subcommand;
use indicatif::{ProgressBar, ProgressStyle};

use super::store::pg::PgStore;
use super::store::{self, DeadLetter, Entry, Stats, StoreError};
use super::{SpoolBackend, SpoolSettings};

/// The spool subcommands.
#[derive(Debug, Subcommand)]
pub enum SpoolCommand {
    /// Depth, bytes, oldest entry age and dead letters.
    Stats {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Waiting entries, in delivery order.
    List {
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Writes the backend refused, with its answer and the reason.
    DeadLetters {
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Put dead letters back at the end of the queue to be sent again.
    Requeue {
        /// Dead-letter ids (see `dead-letters`).
        ids: Vec<i64>,
        /// Requeue every dead letter.
        #[arg(long)]
        all: bool,
    },
    /// Delete waiting entries and/or dead letters. Deleted writes are never
    /// delivered.
    Purge {
        /// Delete waiting entries.
        #[arg(long)]
        pending: bool,
        /// Delete dead letters.
        #[arg(long)]
        dead_letters: bool,
        /// Confirm.
        #[arg(long)]
        yes: bool,
    },
}

fn bar(len: u64, what: &str) -> ProgressBar {
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} ({eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    pb.set_message(what.to_string());
    pb
}

fn age(ms: i64) -> String {
    let secs = ((store::now_ms() - ms).max(0) / 1000) as u64;
    humantime::format_duration(std::time::Duration::from_secs(secs)).to_string()
}

/// What a command does to a store. The operator works beside a running
/// sidecar, so this is not the sidecar's [`store::SpoolStore`]: the local
/// file is opened without the sidecar's lock and without a writer thread,
/// and every call blocks (the CLI has nothing else to do meanwhile).
trait Operate {
    /// Counts, from the store's ledger.
    fn stats(&self) -> Result<Stats, StoreError>;
    /// The first `limit` waiting entries.
    fn list(&self, limit: usize) -> Result<Vec<Entry>, StoreError>;
    /// The first `limit` dead letters.
    fn dead(&self, limit: usize) -> Result<Vec<DeadLetter>, StoreError>;
    /// Rows in `entries` or `dead_letters`.
    fn count(&self, table: &str) -> Result<u64, StoreError>;
    /// Move dead letters `ids` (all, if empty) back into the queue.
    fn requeue(&mut self, ids: &[i64], progress: &mut dyn FnMut(u64)) -> Result<u64, StoreError>;
    /// Delete waiting entries, dead letters, or both.
    fn purge(
        &mut self,
        pending: bool,
        dead: bool,
        progress: &mut dyn FnMut(u64),
    ) -> Result<u64, StoreError>;
}

/// The local file, opened and checked.
struct LocalFile(rusqlite::Connection);

impl Operate for LocalFile {
    fn stats(&self) -> Result<Stats, StoreError> {
        store::stats(&self.0)
    }

    fn list(&self, limit: usize) -> Result<Vec<Entry>, StoreError> {
        store::list_entries(&self.0, limit, 0)
    }

    fn dead(&self, limit: usize) -> Result<Vec<DeadLetter>, StoreError> {
        store::list_dead(&self.0, limit)
    }

    fn count(&self, table: &str) -> Result<u64, StoreError> {
        store::count(&self.0, table)
    }

    fn requeue(&mut self, ids: &[i64], progress: &mut dyn FnMut(u64)) -> Result<u64, StoreError> {
        store::requeue(&mut self.0, ids, progress)
    }

    fn purge(
        &mut self,
        pending: bool,
        dead: bool,
        progress: &mut dyn FnMut(u64),
    ) -> Result<u64, StoreError> {
        store::purge(&mut self.0, pending, dead, progress)
    }
}

/// The shared database, on a runtime of the CLI's own. Its statements
/// work in one go, so there is no progress to report.
struct SharedDb(tokio::runtime::Runtime, PgStore);

impl Operate for SharedDb {
    fn stats(&self) -> Result<Stats, StoreError> {
        self.0.block_on(self.1.stats())
    }

    fn list(&self, limit: usize) -> Result<Vec<Entry>, StoreError> {
        self.0.block_on(self.1.list(limit, 0))
    }

    fn dead(&self, limit: usize) -> Result<Vec<DeadLetter>, StoreError> {
        self.0.block_on(self.1.dead_letters(limit))
    }

    fn count(&self, table: &str) -> Result<u64, StoreError> {
        let s = self.stats()?;
        Ok(if table == "entries" {
            s.depth
        } else {
            s.dead_letters
        })
    }

    fn requeue(&mut self, ids: &[i64], _: &mut dyn FnMut(u64)) -> Result<u64, StoreError> {
        self.0.block_on(self.1.requeue(ids))
    }

    fn purge(
        &mut self,
        pending: bool,
        dead: bool,
        _: &mut dyn FnMut(u64),
    ) -> Result<u64, StoreError> {
        self.0.block_on(self.1.purge(pending, dead))
    }
}

/// Open the store `settings` name, for a command.
fn open(settings: &SpoolSettings) -> Result<Box<dyn Operate>, StoreError> {
    match &settings.backend {
        SpoolBackend::Sqlite => {
            let path = &settings.path;
            if !path.exists() {
                return Err(StoreError::Open {
                    path: path.to_path_buf(),
                    detail:
                        "no spool store here (it is created when a spooling route first starts)"
                            .into(),
                });
            }
            Ok(Box::new(LocalFile(store::open_checked(path)?)))
        }
        SpoolBackend::Postgres(p) => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| StoreError::Unavailable(e.to_string()))?;
            let pg = rt.block_on(PgStore::open(p, store::LedgerCounters::default(), 1))?;
            Ok(Box::new(SharedDb(rt, pg)))
        }
    }
}

/// Run a spool subcommand against the spool's store (`spool.backend`).
/// The store is opened first, so a missing store is reported before a
/// command's own arguments are checked.
pub fn run(cmd: SpoolCommand, settings: &SpoolSettings) -> Result<(), StoreError> {
    let mut db = open(settings)?;
    let mut out = std::io::stdout().lock();
    match cmd {
        SpoolCommand::Stats { json } => stats(&*db, &store_location(settings), json, &mut out),
        SpoolCommand::List { limit, json } => list(&*db, limit, json, &mut out),
        SpoolCommand::DeadLetters { limit, json } => dead_letters(&*db, limit, json, &mut out),
        SpoolCommand::Requeue { ids, all } => requeue(&mut *db, &ids, all, &mut out),
        SpoolCommand::Purge {
            pending,
            dead_letters,
            yes,
        } => purge(&mut *db, pending, dead_letters, yes, &mut out),
    }
}

/// Where the store is, as `stats` names it: the SQLite path, or the
/// PostgreSQL database without its password.
fn store_location(settings: &SpoolSettings) -> String {
    match &settings.backend {
        SpoolBackend::Sqlite => settings.path.display().to_string(),
        SpoolBackend::Postgres(p) => p.display.clone(),
    }
}

/// Print one line. A write error is ignored: stdout closed early (a pager
/// or `head` quitting) is not a failure of the command.
fn put(out: &mut impl Write, line: impl std::fmt::Display) {
    let _ = writeln!(out, "{line}");
}

/// `stats`: depth, bytes, oldest age, dead letters, and the depth of each
/// route, sorted by route.
fn stats(
    db: &dyn Operate,
    store: &str,
    json: bool,
    out: &mut impl Write,
) -> Result<(), StoreError> {
    let s = db.stats()?;
    if json {
        put(out, serde_json::to_string_pretty(&s).unwrap_or_default());
        return Ok(());
    }
    put(out, format!("store         {store}"));
    put(out, format!("waiting       {}", s.depth));
    put(out, format!("bytes         {}", s.bytes));
    put(
        out,
        format!(
            "oldest        {}",
            s.oldest_age_seconds
                .map_or("-".into(), |a| format!("{a:.1}s"))
        ),
    );
    put(out, format!("dead letters  {}", s.dead_letters));
    let mut routes: Vec<_> = s.per_route.into_iter().collect();
    routes.sort();
    for (route, n) in routes {
        put(out, format!("  route {route}: {n}"));
    }
    Ok(())
}

/// `list`: waiting entries in delivery order, one line each under a header.
fn list(
    db: &dyn Operate,
    limit: usize,
    json: bool,
    out: &mut impl Write,
) -> Result<(), StoreError> {
    let entries = db.list(limit)?;
    if json {
        put(
            out,
            serde_json::to_string_pretty(&entries).unwrap_or_default(),
        );
        return Ok(());
    }
    put(
        out,
        format!(
            "{:>8} {:>10} {:<18} {:>8} {:>6}  {:<32} last error",
            "id", "age", "route", "bytes", "tries", "keys"
        ),
    );
    for e in entries {
        put(
            out,
            format!(
                "{:>8} {:>10} {:<18} {:>8} {:>6}  {:<32} {}",
                e.id,
                age(e.created_ms),
                e.route,
                e.body_bytes,
                e.attempts,
                e.keys.join(","),
                e.last_error.unwrap_or_default()
            ),
        );
    }
    Ok(())
}

/// `dead-letters`: each refused write with why, and the backend's answer
/// on a second line.
fn dead_letters(
    db: &dyn Operate,
    limit: usize,
    json: bool,
    out: &mut impl Write,
) -> Result<(), StoreError> {
    let dead = db.dead(limit)?;
    if json {
        put(out, serde_json::to_string_pretty(&dead).unwrap_or_default());
        return Ok(());
    }
    for d in dead {
        put(
            out,
            format!(
                "{:>8} {} route={} keys={} tries={} class={} kind={} status={} reason={}\n         answer: {}",
                d.id,
                age(d.dead_ms),
                d.route,
                d.keys.join(","),
                d.attempts,
                d.class,
                d.kind,
                d.status.map_or("-".into(), |s| s.to_string()),
                d.reason,
                d.response.unwrap_or_default()
            ),
        );
    }
    Ok(())
}

/// `requeue`: the named dead letters, or all of them, back at the end of
/// the queue; naming none without `--all` is refused rather than a no-op.
fn requeue(
    db: &mut dyn Operate,
    ids: &[i64],
    all: bool,
    out: &mut impl Write,
) -> Result<(), StoreError> {
    if ids.is_empty() && !all {
        return Err(StoreError::Sql(
            "name the dead letters to requeue, or pass --all".into(),
        ));
    }
    let total = if all {
        db.count("dead_letters")?
    } else {
        ids.len() as u64
    };
    let pb = bar(total, "requeue");
    let moved = db.requeue(if all { &[] } else { ids }, &mut |n| pb.inc(n))?;
    pb.finish_and_clear();
    put(out, format!("requeued {moved} of {total}"));
    Ok(())
}

/// `purge`: delete waiting entries and/or dead letters, only when told
/// which and confirmed, since deleted writes are never delivered.
fn purge(
    db: &mut dyn Operate,
    pending: bool,
    dead_letters: bool,
    yes: bool,
    out: &mut impl Write,
) -> Result<(), StoreError> {
    if !pending && !dead_letters {
        return Err(StoreError::Sql(
            "say what to purge: --pending and/or --dead-letters".into(),
        ));
    }
    if !yes {
        return Err(StoreError::Sql(
            "purging deletes writes that will never be delivered; add --yes to confirm".into(),
        ));
    }
    let mut total = 0;
    if pending {
        total += db.count("entries")?;
    }
    if dead_letters {
        total += db.count("dead_letters")?;
    }
    let pb = bar(total, "purge");
    let n = db.purge(pending, dead_letters, &mut |n| pb.inc(n))?;
    pb.finish_and_clear();
    put(out, format!("deleted {n}"));
    Ok(())
}
