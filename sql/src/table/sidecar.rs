//! The sidecar directory and vector files: where a table's vectors live, opening a file and checking
//! that it is the table's own (the one place that does both), and the removal of orphaned files.
//!
//! The vector file lives at `<database file>-phenix/<table_id>.g<generation>.phx`: the directory comes
//! from the database's own filename (`pragma_database_list`), the name from the hex table id; nothing in
//! the schema names a path. In-memory databases of every kind keep vectors in memory and never touch the
//! file system: temp, `:memory:`, `mode=memory` URIs (also with a shared cache), the memdb VFS, and
//! images loaded with `sqlite3_deserialize` (which SQLite names `x` on the memdb VFS).

use super::names::{hex, unhex};
use super::shadow::{self, Info, GENERATION};
use crate::error::Error;
use phenix_core::store::{Layout, VectorStore};
use rusqlite::{Connection, OptionalExtension};
use std::path::{Path, PathBuf};

/// The database file of `schema`, or `None` for an in-memory database (no file name, or the memdb VFS:
/// a deserialized image or `file:…?vfs=memdb`, whose "file name" names no file).
pub(crate) fn db_file(conn: &Connection, schema: &str) -> rusqlite::Result<Option<PathBuf>> {
    // `pragma_database_list` gives the file of each schema ('' for temp and :memory:).
    let file: Option<String> = conn
        .query_row(
            "SELECT file FROM pragma_database_list WHERE name = ?1",
            [schema],
            |r| r.get(0),
        )
        .optional()?;
    let Some(file) = file.filter(|f| !f.is_empty()) else {
        return Ok(None);
    };
    if vfs_name(conn, schema).as_deref() == Some("memdb") {
        return Ok(None);
    }
    Ok(Some(PathBuf::from(file)))
}

/// The name of the VFS serving `schema` (`SQLITE_FCNTL_VFS_POINTER`), if SQLite reports one.
fn vfs_name(conn: &Connection, schema: &str) -> Option<String> {
    use rusqlite::ffi;
    let db = std::ffi::CString::new(schema).ok()?;
    let mut vfs: *mut ffi::sqlite3_vfs = std::ptr::null_mut();
    // SAFETY: a live handle, a NUL-terminated schema name and an out-pointer of the type
    // SQLITE_FCNTL_VFS_POINTER writes; the VFS object outlives the connection.
    let rc = unsafe {
        ffi::sqlite3_file_control(
            conn.handle(),
            db.as_ptr(),
            ffi::SQLITE_FCNTL_VFS_POINTER,
            (&mut vfs as *mut *mut ffi::sqlite3_vfs).cast(),
        )
    };
    if rc != ffi::SQLITE_OK || vfs.is_null() {
        return None;
    }
    // SAFETY: a registered VFS has a NUL-terminated name that lives as long as the VFS.
    let name = unsafe { (*vfs).zName };
    if name.is_null() {
        return None;
    }
    // SAFETY: as above.
    Some(
        unsafe { std::ffi::CStr::from_ptr(name) }
            .to_string_lossy()
            .into_owned(),
    )
}

/// The identity of the in-memory database `schema`: the address of its pager's file handle
/// (`SQLITE_FCNTL_FILE_POINTER`), shared by the connections of one shared cache and by nothing else
/// while the database is open. Falls back to (handle, schema) if SQLite has no pager for it.
pub(crate) fn memory_identity(conn: &Connection, schema: &str) -> usize {
    use rusqlite::ffi;
    let fallback = || {
        // SAFETY: only the handle's address is used.
        let h = unsafe { conn.handle() } as usize;
        h ^ schema
            .bytes()
            .fold(0usize, |a, b| a.rotate_left(5) ^ b as usize)
    };
    let Ok(db) = std::ffi::CString::new(schema) else {
        return fallback();
    };
    let mut f: *mut ffi::sqlite3_file = std::ptr::null_mut();
    // SAFETY: a live handle, a NUL-terminated schema name and an out-pointer of the type
    // SQLITE_FCNTL_FILE_POINTER writes; only the address is kept, never dereferenced.
    let rc = unsafe {
        ffi::sqlite3_file_control(
            conn.handle(),
            db.as_ptr(),
            ffi::SQLITE_FCNTL_FILE_POINTER,
            (&mut f as *mut *mut ffi::sqlite3_file).cast(),
        )
    };
    if rc == ffi::SQLITE_OK && !f.is_null() {
        f as usize
    } else {
        fallback()
    }
}

/// The sidecar directory of a database file: `<file>-phenix`.
pub(crate) fn sidecar_dir(db: &Path) -> PathBuf {
    let mut s = db.as_os_str().to_owned();
    s.push("-phenix");
    PathBuf::from(s)
}

/// The sidecar directory of `db`, refused if it is a symbolic link or not a directory: a database made
/// by someone else could otherwise point phenix's writes and clean-ups at another directory.
pub(crate) fn checked_sidecar_dir(db: &Path) -> Result<PathBuf, Error> {
    let dir = sidecar_dir(db);
    match std::fs::symlink_metadata(&dir) {
        Ok(m) if m.file_type().is_symlink() => Err(Error::InvalidArgument(format!(
            "the sidecar directory {} is a symbolic link; phenix keeps vectors only in a real directory next to the database",
            dir.display()
        ))),
        Ok(m) if !m.is_dir() => Err(Error::InvalidArgument(format!(
            "the sidecar directory {} is not a directory",
            dir.display()
        ))),
        _ => Ok(dir),
    }
}

/// The vector file of a table, after checking its directory ([`checked_sidecar_dir`]).
pub(crate) fn checked_sidecar_path(
    db: &Path,
    id: &[u8; 16],
    generation: u64,
) -> Result<PathBuf, Error> {
    checked_sidecar_dir(db)?;
    Ok(sidecar_path(db, id, generation))
}

/// The vector file of a table.
pub(crate) fn sidecar_path(db: &Path, id: &[u8; 16], generation: u64) -> PathBuf {
    sidecar_dir(db).join(format!("{}.g{generation}.phx", hex(id)))
}

/// What a vector file must be: the table's own (table id) file of the generation its `<t>_info` names.
pub(crate) struct Expected<'a> {
    /// The table's name, for messages.
    pub table: &'a str,
    /// The table id.
    pub id: &'a [u8; 16],
    /// The generation.
    pub generation: u64,
    /// The committed row count the file must hold.
    pub committed: u64,
    /// The layout, if known (`None`: take the file's own).
    pub layout: Option<Layout>,
}

/// Opens the vector file at `path` and checks that it is `want`'s: the one "open and check the header"
/// of phenix (connecting a table, `phenix_check`, `phenix_backup`). Errors are the store's own (their
/// class gives the SQLite code) or [`Error::Corrupt`] for a file of another table or generation.
pub(crate) fn open_vector_file(
    path: &Path,
    want: &Expected<'_>,
    writable: bool,
) -> Result<VectorStore, Error> {
    let s = VectorStore::open(path, want.layout, want.committed, writable)?;
    check_header(&s, path, want)?;
    Ok(s)
}

/// Whether the opened vector file at `path` is the table's own file of the expected generation.
fn check_header(s: &VectorStore, path: &Path, want: &Expected<'_>) -> Result<(), Error> {
    let table = want.table;
    if s.header().table_id != *want.id {
        return Err(Error::Corrupt(format!(
            "the vector file {} belongs to another table (its table id differs from {table}_info's)",
            path.display()
        )));
    }
    if s.header().generation != want.generation {
        return Err(Error::Corrupt(format!(
            "the vector file {} is generation {}, but {table}_info names generation {}",
            path.display(),
            s.header().generation,
            want.generation
        )));
    }
    Ok(())
}

/// Whether the sidecar directory holds a file of table `id` with a generation above `generation`.
pub(crate) fn newer_generation_exists(db: &Path, id: &[u8; 16], generation: u64) -> bool {
    let prefix = format!("{}.g", hex(id));
    std::fs::read_dir(sidecar_dir(db)).is_ok_and(|entries| {
        entries.flatten().any(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            name.strip_prefix(&prefix)
                .and_then(|r| r.strip_suffix(".phx"))
                .and_then(|g| g.parse::<u64>().ok())
                .is_some_and(|g| g > generation)
        })
    })
}

/// Removes vector files in the sidecar directory of `schema` that no phenix table of that schema refers
/// to (left by a committed DROP TABLE or an interrupted compaction). Runs only under SQLite's write
/// lock (from `CREATE VIRTUAL TABLE` and a transaction's first write), so no other connection can be
/// creating a table at the same time; a reader still using a removed file keeps its open descriptor and
/// map, which Linux keeps valid after unlink.
///
/// `creating` names a table whose `CREATE VIRTUAL TABLE` is running: its schema row exists but its
/// shadow tables do not yet (and it has no file to protect).
pub(crate) fn collect_orphans(
    conn: &Connection,
    schema: &str,
    creating: Option<&str>,
) -> rusqlite::Result<usize> {
    let Some(db) = db_file(conn, schema)? else {
        return Ok(0);
    };
    let dir = checked_sidecar_dir(&db)?;
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Ok(0);
    };
    // Every (id, generation) referenced by a `<t>_info` shadow table of a phenix table.
    let mut referenced = std::collections::HashSet::new();
    for t in shadow::phenix_tables(conn, schema)? {
        if creating.is_some_and(|c| c.eq_ignore_ascii_case(&t)) {
            continue;
        }
        let info = Info::read(conn, schema, &t).ok();
        match info
            .as_ref()
            .and_then(|i| Some((i.table_id()?, i.count(GENERATION)?)))
        {
            Some((id, g)) => {
                referenced.insert(format!("{}.g{g}.phx", hex(&id)));
                // The table's IVF index snapshot, if it has one.
                if let Some(n) = info.as_ref().and_then(|i| i.count(super::index::INDEX_GEN)) {
                    referenced.insert(super::index::snapshot_name(&id, g, n));
                }
            }
            // A table whose reference cannot be read (damaged shadow table): its file cannot be told
            // from an orphan, so remove nothing.
            None => return Ok(0),
        }
    }
    let mut removed = 0;
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        let ours = (name.ends_with(".phx") && name.get(..32).and_then(unhex).is_some())
            || super::index::is_snapshot_name(&name);
        let regular = e.file_type().is_ok_and(|t| t.is_file());
        if ours && regular && !referenced.contains(&name) && std::fs::remove_file(e.path()).is_ok()
        {
            removed += 1;
        }
    }
    Ok(removed)
}
