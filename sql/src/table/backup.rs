//! `phenix_backup(dest [, schema])`: a consistent copy of a database and the vector files of its phenix
//! tables, safe while other connections write.
//!
//! `VACUUM INTO` and the sqlite3 `.backup` command copy the database file only; a phenix table's vectors
//! live in the sidecar directory. `phenix_backup` opens its own read-only connection on the database,
//! starts one read transaction (a WAL snapshot, or a shared lock in rollback-journal mode, so writers
//! wait until it ends), and under it:
//! 1. reads every phenix table's table id, generation and committed count from its `<t>_info`, and opens
//!    its vector file;
//! 2. copies the header and the first `committed` rows of each file into `<dest>-phenix/` and syncs them
//!    (rows below the committed count are never rewritten, so the copy is the committed state), and the
//!    IVF index snapshot `<t>_info` names, if any (snapshots are immutable);
//! 3. copies the database pages with SQLite's online-backup API, inside the same read transaction.
//!
//! The result is the last committed state: a write transaction still open on the calling connection is
//! not part of it.

use super::shadow::{self, Info, COMMITTED, GENERATION};
use super::sidecar::{self, checked_sidecar_dir, checked_sidecar_path, Expected};
use crate::args::text_arg;
use crate::error::{sql_error, Error};
use crate::functions::{create_path_function, path_arg};
use phenix_core::store::{sync_parent_dir, VectorStore};
use rusqlite::backup::{Backup, StepResult};
use rusqlite::{Connection, OpenFlags};
use std::path::Path;
use std::time::Duration;

const F: &str = "phenix_backup";

/// Registers `phenix_backup(dest)` and `phenix_backup(dest, schema)` (DIRECTONLY: they write files).
pub(crate) fn register(conn: &Connection) -> rusqlite::Result<()> {
    for n_arg in [1, 2] {
        create_path_function(conn, F, n_arg, move |ctx| {
            let dest = path_arg(ctx, 0, F)?;
            let schema = if n_arg == 2 {
                text_arg(ctx.get_raw(1), F, "argument 2 (schema)")?.to_string()
            } else {
                "main".to_string()
            };
            // SAFETY: the connection is only used for the duration of this call, on its own thread.
            let conn = unsafe { ctx.get_connection() }?;
            let src = sidecar::db_file(&conn, &schema)?.ok_or_else(|| {
                sql_error(format!(
                    "{F}: schema {schema} is not a database file (temp, :memory: or unknown); only file databases can be backed up"
                ))
            })?;
            // SAFETY: only the handle's address is used (to read its interrupt flag).
            let r = backup(&src, &dest, unsafe { conn.handle() })?;
            Ok(serde_json::json!({"tables": r.0, "rows": r.1}).to_string())
        })?;
    }
    Ok(())
}

/// Copies database `src` and its phenix vector files to `dest`; returns (tables, rows copied).
/// `db` is the calling connection, whose interrupt stops the copy (the destination is then removed);
/// progress (`backup`) counts vector rows, then database pages.
pub fn backup(
    src: &Path,
    dest: &Path,
    db: *mut rusqlite::ffi::sqlite3,
) -> rusqlite::Result<(u64, u64)> {
    // The destination is a plain file name: a `file:` URI would be checked as literal text below and
    // then opened as a URI naming another (possibly existing) database.
    if dest.to_str().is_some_and(|d| d.starts_with("file:")) {
        return Err(sql_error(format!(
            "{F}: the destination {} is a URI; give a plain file path (phenix_backup creates a new database file and its sidecar directory)",
            dest.display()
        )));
    }
    let dest_dir = sidecar::sidecar_dir(dest);
    for p in [dest, dest_dir.as_path()] {
        if std::fs::symlink_metadata(p).is_ok() {
            return Err(sql_error(format!(
                "{F}: {} already exists; the destination must be a new file",
                p.display()
            )));
        }
    }
    let s = Connection::open_with_flags(
        src,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    s.busy_timeout(Duration::from_secs(10))?;
    s.execute_batch("BEGIN")?;
    // The first read starts the read transaction: from here on `s` sees one snapshot.
    let tables = shadow::phenix_tables(&s, "main")?;
    let result = copy_all(&s, src, dest, &tables, db);
    let _ = s.execute_batch("COMMIT");
    if result.is_err() {
        // Leave nothing half-made behind.
        let _ = std::fs::remove_dir_all(&dest_dir);
        let _ = std::fs::remove_file(dest);
    }
    result
}

fn copy_all(
    s: &Connection,
    src: &Path,
    dest: &Path,
    tables: &[String],
    db: *mut rusqlite::ffi::sqlite3,
) -> rusqlite::Result<(u64, u64)> {
    // Open every vector file first (an open descriptor survives a compaction's clean-up).
    let mut files = Vec::new();
    for t in tables {
        let info = Info::read(s, "main", t).map_err(|e| {
            sql_error(format!(
                "{F}: phenix table {t}: cannot read {t}_info: {e}; run phenix_check"
            ))
        })?;
        let (Some(id_bytes), Some(generation), Some(committed)) = (
            info.table_id(),
            info.count(GENERATION),
            info.count(COMMITTED),
        ) else {
            return Err(Error::Corrupt(format!(
                "{F}: phenix table {t}: {t}_info is damaged; run phenix_check"
            ))
            .into());
        };
        let path = checked_sidecar_path(src, &id_bytes, generation)?;
        let want = Expected {
            table: t,
            id: &id_bytes,
            generation,
            committed,
            layout: None,
        };
        let store = sidecar::open_vector_file(&path, &want, false).map_err(|e| match e {
            Error::Corrupt(m) => {
                Error::Corrupt(format!("{F}: phenix table {t}: {m}; run phenix_check"))
            }
            e => e.with_context(&format!("{F}: phenix table {t}: ")),
        })?;
        // The IVF index snapshot, if the table has one (opened now, like the vector file; one that
        // cannot be opened is left out, and the copy reports it as the source does).
        let snapshot = info.count(super::index::INDEX_GEN).and_then(|n| {
            let name = super::index::snapshot_name(&id_bytes, generation, n);
            let f = std::fs::File::open(sidecar::sidecar_dir(src).join(&name)).ok()?;
            Some((name, f))
        });
        files.push((t.clone(), id_bytes, generation, committed, store, snapshot));
    }
    let pages: i64 = s.query_row("PRAGMA page_count", [], |r| r.get(0))?;
    let total = files.iter().map(|f| f.3).sum::<u64>() + pages.max(0) as u64;
    let op = crate::control::Op::begin(db, "backup", total);
    let mut rows = 0u64;
    if !files.is_empty() {
        let dir = sidecar::sidecar_dir(dest);
        std::fs::create_dir(&dir)
            .map_err(|e| Error::Io(format!("{F}: cannot create {}: {e}", dir.display())))?;
        checked_sidecar_dir(dest)?;
        for (t, id, generation, committed, mut store, snapshot) in files {
            if let Some((name, mut f)) = snapshot {
                let to = dir.join(&name);
                let io = |e: std::io::Error| {
                    Error::Io(format!(
                        "{F}: phenix table {t}: cannot copy the index snapshot to {}: {e}",
                        to.display()
                    ))
                };
                let mut out = std::fs::File::create_new(&to).map_err(io)?;
                std::io::copy(&mut f, &mut out).map_err(io)?;
                out.sync_data().map_err(io)?;
            }
            let path = sidecar::sidecar_path(dest, &id, generation);
            let mut out = VectorStore::create_with_header(&path, *store.header())
                .map_err(|e| Error::store(format!("{F}: phenix table {t}: "), e))?;
            const CHUNK: u64 = 16_384;
            let mut at = 0;
            while at < committed {
                let end = (at + CHUNK).min(committed);
                let view = store
                    .view(end)
                    .map_err(|e| Error::store(format!("{F}: phenix table {t}: "), e))?;
                out.append_encoded(view.raw(at as usize..end as usize))
                    .map_err(|e| Error::store(format!("{F}: phenix table {t}: "), e))?;
                op.step(end - at)?;
                at = end;
            }
            out.sync()
                .map_err(|e| Error::store(format!("{F}: phenix table {t}: "), e))?;
            rows += committed;
        }
    }
    // Opened as a plain path (no URI interpretation).
    let mut d = Connection::open_with_flags(
        dest,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    {
        let b = Backup::new(s, &mut d)?;
        // Pages in steps (checking for an interrupt between them), all inside `s`'s read
        // transaction, so the source cannot change between steps.
        const PAGES: i32 = 1024;
        loop {
            match b.step(PAGES)? {
                StepResult::Done => break,
                StepResult::More => op.step(PAGES as u64)?,
                other => {
                    return Err(sql_error(format!(
                        "{F}: the database copy did not finish ({other:?}); retry"
                    )))
                }
            }
        }
    }
    drop(d);
    sync_parent_dir(dest).map_err(sql_error)?;
    op.finish();
    Ok((tables.len() as u64, rows))
}
