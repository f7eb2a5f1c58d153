//! The local store's file: created with the right modes, opened and
//! checked (integrity, schema version), locked to one sidecar, moved aside
//! when corrupt, and its ledger read. Separate from the store's commands
//! ([`super::sqlite`]) because the operator CLI opens the file this way
//! too, without the lock and without a writer.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use super::{Ledger, StoreError, now_ms, schema};

/// Create the file (mode 0600) and its directory (0700) if missing; tighten
/// an existing file's mode: it holds API keys.
pub(super) fn prepare_file(path: &Path) -> Result<(), StoreError> {
    let open_err = |detail: String| StoreError::Open {
        path: path.to_path_buf(),
        detail,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
        && !dir.exists()
    {
        let mut b = std::fs::DirBuilder::new();
        b.recursive(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::DirBuilderExt;
            b.mode(0o700);
        }
        b.create(dir)
            .map_err(|e| open_err(format!("cannot create directory {}: {e}", dir.display())))?;
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
        {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let meta = std::fs::metadata(path).map_err(|e| open_err(e.to_string()))?;
                if meta.permissions().mode() & 0o077 != 0 {
                    tracing::warn!(path = %path.display(), "spool file was readable by others; setting mode 0600");
                    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
                        .map_err(|e| open_err(e.to_string()))?;
                }
            }
            Err(e) => {
                return Err(open_err(format!(
                    "cannot create the store file: {e} (is the directory writable?)"
                )));
            }
        }
    }
    Ok(())
}

fn configure(conn: &Connection) -> Result<(), rusqlite::Error> {
    conn.busy_timeout(Duration::from_secs(5))?;
    let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(rusqlite::Error::InvalidQuery);
    }
    // FULL: in WAL mode the log is synced at every commit, so an
    // acknowledged write survives power loss, not only a crash.
    conn.pragma_update(None, "synchronous", "FULL")?;
    Ok(())
}

/// Open a connection to an existing store and check it, without creating
/// anything (for the operator CLI and for the sidecar's start).
pub fn open_checked(path: &Path) -> Result<Connection, StoreError> {
    let corrupt = |detail: String| StoreError::Corrupt {
        path: path.to_path_buf(),
        detail,
    };
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| StoreError::Open {
        path: path.to_path_buf(),
        detail: e.to_string(),
    })?;
    configure(&conn).map_err(|e| match e.sqlite_error_code() {
        // Not the file's fault: say what the filesystem said.
        Some(rusqlite::ErrorCode::ReadOnly | rusqlite::ErrorCode::CannotOpen) => StoreError::Open {
            path: path.to_path_buf(),
            detail: e.to_string(),
        },
        _ => corrupt(e.to_string()),
    })?;
    let check: String = conn
        .query_row("PRAGMA quick_check", [], |r| r.get(0))
        .map_err(|e| corrupt(e.to_string()))?;
    if check != "ok" {
        return Err(corrupt(format!("integrity check: {check}")));
    }
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(|e| corrupt(e.to_string()))?;
    if version > schema::VERSION {
        return Err(corrupt(format!(
            "schema version {version} is newer than this binary's {}",
            schema::VERSION
        )));
    }
    if version < schema::VERSION {
        schema::migrate(&conn, version)
            .map_err(|e| corrupt(format!("cannot migrate from schema version {version}: {e}")))?;
    }
    Ok(conn)
}

/// Move a corrupt store (and its WAL files) aside; returns the new name.
pub fn quarantine(path: &Path) -> Result<PathBuf, StoreError> {
    let aside = PathBuf::from(format!("{}.corrupt-{}", path.display(), now_ms()));
    for suffix in ["", "-wal", "-shm"] {
        let from = PathBuf::from(format!("{}{suffix}", path.display()));
        if from.exists() {
            let to = PathBuf::from(format!("{}{suffix}", aside.display()));
            std::fs::rename(&from, &to).map_err(|e| StoreError::Open {
                path: from.clone(),
                detail: format!("cannot move aside: {e}"),
            })?;
        }
    }
    Ok(aside)
}

/// Take `<path>.lock`: two sidecars draining one store would each deliver
/// what the other also delivers, and order each key only within itself.
/// The lock goes with the process, however it ends. The operator CLI does
/// not take it (it works beside a running sidecar).
pub(super) fn lock(path: &Path) -> Result<std::fs::File, StoreError> {
    let lock_path = PathBuf::from(format!("{}.lock", path.display()));
    let err = |detail: String| StoreError::Open {
        path: path.to_path_buf(),
        detail,
    };
    let mut open = std::fs::OpenOptions::new();
    open.read(true).write(true).create(true).truncate(false);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        open.mode(0o600);
    }
    let file = open
        .open(&lock_path)
        .map_err(|e| err(format!("cannot open {}: {e}", lock_path.display())))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(err(format!(
            "another datalayer-sidecar is using this spool ({} is locked); give each sidecar its own spool.path",
            lock_path.display()
        ))),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(err(format!("cannot lock {}: {e}", lock_path.display())))
        }
    }
}

/// Read the ledger into `ledger` (all of it: the file is the truth).
pub(super) fn load_ledger(conn: &Connection, ledger: &Ledger) -> Result<(), StoreError> {
    let (n, bytes): (i64, i64) = conn.query_row(
        "SELECT coalesce(sum(entries), 0), coalesce(sum(bytes), 0) FROM ledger",
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    let counter = |name: &str| -> Result<i64, StoreError> {
        Ok(
            conn.query_row("SELECT value FROM counters WHERE name = ?1", [name], |r| {
                r.get(0)
            })?,
        )
    };
    let dead = counter("dead_letters")?;
    let dead_ticket = counter("max_dead_ticket")?;
    let max_id: Option<i64> = conn.query_row("SELECT max(id) FROM entries", [], |r| r.get(0))?;
    ledger.reload(n, bytes, dead, max_id.unwrap_or(0).max(dead_ticket));
    Ok(())
}
