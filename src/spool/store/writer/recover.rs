//! A store file that disappears or is replaced while the sidecar runs.
//!
//! Before each transaction the writer checks that the path still names the
//! file it opened. If the file was deleted, every acknowledged entry is
//! still readable through the open connection: the writer copies the
//! database (`VACUUM INTO`) to a new file, closes the old connections so
//! the old write-ahead log is let go, moves the copy into place and goes
//! on. If another file took the name, it refuses to write to either until
//! restarted. This is the one place the writer touches the file system
//! beyond SQLite, so it is kept apart from the commit path it guards.

use std::path::Path;

use rusqlite::Connection;

use super::wal::writer_pragmas;
use super::{StoreError, Writer, now_ms, open_checked, prepare_file, sibling, side_connections};

/// (device, inode) of a file.
pub(super) fn file_id(path: &Path) -> std::io::Result<(u64, u64)> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(path)?;
        Ok((m.dev(), m.ino()))
    }
    #[cfg(not(unix))]
    {
        std::fs::metadata(path).map(|_| (0, 0))
    }
}

/// Why a deleted store file could not be recovered, at step `what`.
fn unrecovered(path: &Path, what: &str, e: &dyn std::fmt::Display) -> StoreError {
    StoreError::Sql(format!(
        "the store file {} was deleted and could not be recovered ({what}: {e}); acknowledged entries are still held by the running sidecar",
        path.display()
    ))
}

/// A connection that holds no file, for the time between letting go of
/// the deleted file and opening the new one.
fn placeholder() -> Result<Connection, StoreError> {
    Connection::open_in_memory().map_err(StoreError::from)
}

/// Move the deleted file's log aside and the recovered `copy` to `path`.
fn move_into_place(copy: &Path, path: &Path) -> Result<(), StoreError> {
    for suffix in ["-wal", "-shm"] {
        let stale = sibling(path, suffix);
        if stale.exists() {
            let aside = sibling(path, &format!("{suffix}.orphan-{}", now_ms()));
            std::fs::rename(&stale, &aside)
                .map_err(|e| unrecovered(path, "moving the old log aside", &e))?;
        }
    }
    std::fs::rename(copy, path).map_err(|e| unrecovered(path, "moving the copy into place", &e))?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
        && let Ok(d) = std::fs::File::open(dir)
    {
        let _ = d.sync_all();
    }
    Ok(())
}

impl Writer {
    /// Whether the path still names the file this writer opened; recovers
    /// a deleted file.
    pub(super) fn check_identity(&mut self) -> Result<(), StoreError> {
        if let Some(why) = &self.broken {
            return Err(StoreError::Sql(why.clone()));
        }
        let Some(expected) = self.identity else {
            return Ok(());
        };
        match file_id(&self.path) {
            Ok(id) if id == expected => Ok(()),
            Ok(_) => {
                let why = format!(
                    "{} was replaced by another file while the sidecar ran; writes are refused until a restart (the entries acknowledged before are in the old file, which the sidecar still holds open: copy it aside before restarting)",
                    self.path.display()
                );
                tracing::error!(path = %self.path.display(), "spool store file replaced while running; refusing writes");
                self.broken = Some(why.clone());
                Err(StoreError::Sql(why))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => self.recover(),
            Err(e) => Err(StoreError::Sql(format!(
                "cannot check {}: {e}",
                self.path.display()
            ))),
        }
    }

    /// The store file was deleted under the open connections: copy what
    /// they still see into a new file at the same path.
    fn recover(&mut self) -> Result<(), StoreError> {
        let path = self.path.clone();
        tracing::error!(path = %path.display(), "spool store file deleted while running; recovering it from the open connection");
        let copy = sibling(&path, &format!(".recovering-{}", now_ms()));
        self.copy_database_to(&copy)?;
        self.let_go_of_deleted_file()?;
        move_into_place(&copy, &path)?;
        self.reopen()?;
        tracing::warn!(
            path = %path.display(),
            waiting = self.ledger.counts().entries,
            "spool store recovered; every acknowledged entry kept"
        );
        Ok(())
    }

    /// Copy what the open connection sees into `copy`, durably.
    fn copy_database_to(&self, copy: &Path) -> Result<(), StoreError> {
        prepare_file(copy)?;
        self.conn
            .execute("VACUUM INTO ?1", [copy.to_string_lossy().as_ref()])
            .map_err(|e| unrecovered(&self.path, "copying", &e))?;
        std::fs::File::open(copy)
            .and_then(|f| f.sync_all())
            .map_err(|e| unrecovered(&self.path, "syncing the copy", &e))
    }

    /// Close every connection to the deleted file before a new file takes
    /// the name: a connection opened on the new file must not find the old
    /// log beside it.
    fn let_go_of_deleted_file(&mut self) -> Result<(), StoreError> {
        if let Ok(mut r) = self.reader.lock() {
            *r = placeholder()?;
        }
        if let Ok(mut c) = self.checkpointer.lock() {
            *c = placeholder()?;
        }
        drop(std::mem::replace(&mut self.conn, placeholder()?));
        Ok(())
    }

    /// Open the recovered file in place of the old one and read its
    /// ledger afresh.
    fn reopen(&mut self) -> Result<(), StoreError> {
        let mut conn = open_checked(&self.path)?;
        writer_pragmas(&mut conn, self.frames.clone())?;
        let (reader, checkpointer) = side_connections(&self.path)?;
        if let Ok(mut r) = self.reader.lock() {
            *r = reader;
        }
        if let Ok(mut c) = self.checkpointer.lock() {
            *c = checkpointer;
        }
        self.conn = conn;
        self.identity = file_id(&self.path).ok();
        self.reload()
    }
}
