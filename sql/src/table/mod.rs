//! The `phenix` virtual table and the functions built on it.
//!
//! SQL surface:
//! - [`vtab`]: the rusqlite trait glue of `CREATE VIRTUAL TABLE t USING phenix(...)`; every method
//!   calls into one of:
//!   - [`write`]: INSERT/UPDATE/DELETE and the `INSERT INTO t(t) VALUES ('<command>')` commands;
//!   - [`plan`]: xBestIndex, the [`plan::Plan`] and its idxNum/idxStr encoding;
//!   - [`cursor`]: xFilter/xColumn/xRowid, one function per plan (KNN, point, scan);
//!   - [`prefilter`]: the metadata pre-filter of KNN queries and its in-memory cache.
//! - [`retrieve`]: `phenix_retrieve` (table-valued and scalar) and `phenix_retrieve_all`.
//! - [`check`]: `phenix_check`, the integrity check.
//! - [`backup`]: `phenix_backup`, a consistent copy of a database and its vector files.
//!
//! Storage and state:
//! - [`state`]: one table's per-connection state (private fields), with the commit protocol
//!   (`state/txn.rs`), compaction (`state/compact.rs`) and the IVF index's life (`state/index.rs`);
//! - [`index`]: the IVF index declaration, its snapshot files and `phenix_index_status`;
//! - [`live`]: the live set (slot → rowid) and its invariants;
//! - [`shadow`]: the shadow tables and the one reader of `<t>_info`;
//! - [`sidecar`]: vector-file paths, open-and-check-header, orphan collection;
//! - [`drops`]: an in-memory table's vectors freed when its `DROP TABLE` commits;
//! - [`registry`]: process-wide registries (connected tables, in-memory stores, thread count);
//! - [`schema`]: parsing the column definitions; [`names`]: quoting and registry keys.
//!
//! Dependencies point one way: vtab → {write, plan, cursor} → {prefilter, state} → {live, shadow,
//! sidecar, registry, names}; check is used by write and uses only the storage modules; retrieve uses
//! the storage modules.

pub(crate) mod backup;
pub(crate) mod check;
pub(crate) mod cursor;
pub(crate) mod drops;
pub(crate) mod index;
pub(crate) mod live;
pub(crate) mod names;
pub(crate) mod plan;
pub(crate) mod prefilter;
pub(crate) mod rank;
pub(crate) mod registry;
pub(crate) mod retrieve;
pub(crate) mod schema;
pub(crate) mod shadow;
pub(crate) mod sidecar;
pub(crate) mod state;
pub(crate) mod vtab;
pub(crate) mod vtab_in;
pub(crate) mod write;

use crate::error::catch_panic;
use rusqlite::ffi;
use rusqlite::vtab::Module;
use std::ffi::{c_char, c_int, CStr};
use vtab::PhenixTab;

/// Sets a vtab's error message (SQLite frees it with `sqlite3_free`).
///
/// # Safety
/// `vt` must be a live `sqlite3_vtab` handed to us by SQLite.
unsafe fn set_err(vt: *mut ffi::sqlite3_vtab, msg: &str) {
    // SAFETY: `vt` is live (caller); a previous message, if any, came from SQLite's allocator.
    unsafe {
        if !(*vt).zErrMsg.is_null() {
            ffi::sqlite3_free((*vt).zErrMsg.cast());
        }
        (*vt).zErrMsg = crate::error::sqlite_owned_cstring(msg);
    }
}

/// Runs `f` on the `PhenixTab` behind `vt` inside [`catch_panic`]; an error's message goes to
/// `zErrMsg` and its code is returned.
///
/// # Safety
/// `vt` must point at a `PhenixTab` created by this module: the hooks calling this are installed only
/// in [`MODULE`], so SQLite calls them only on tables of this module.
unsafe fn with_tab(
    vt: *mut ffi::sqlite3_vtab,
    what: &str,
    f: impl FnOnce(&mut PhenixTab) -> rusqlite::Result<()>,
) -> c_int {
    // SAFETY: every sqlite3_vtab of the `phenix` module is the first field of a `#[repr(C)] PhenixTab`.
    let tab = unsafe { &mut *(vt as *mut PhenixTab) };
    let (code, msg) = match catch_panic(what, || f(tab)) {
        Ok(()) => return ffi::SQLITE_OK,
        Err(rusqlite::Error::SqliteFailure(e, m)) => (e.extended_code, m.unwrap_or_default()),
        Err(e) => (ffi::SQLITE_ERROR, e.to_string()),
    };
    // SAFETY: `vt` is live.
    unsafe { set_err(vt, &msg) };
    code
}

/// Runs `f` on the table's state for a savepoint hook. While one of phenix's own xMethods holds the
/// state (compaction, say, runs SQL on the shadow tables inside xUpdate), SQLite calls the hooks again for
/// that nested statement's savepoint; those statements never touch the vector store, so the hook has
/// nothing to do and must not wait for a lock its own thread holds.
fn with_state_unless_nested(
    t: &PhenixTab,
    f: impl FnOnce(&mut state::TableState) -> rusqlite::Result<()>,
) -> rusqlite::Result<()> {
    match t.state.try_lock() {
        Ok(mut st) => f(&mut st),
        Err(std::sync::TryLockError::Poisoned(p)) => f(&mut p.into_inner()),
        Err(std::sync::TryLockError::WouldBlock) => Ok(()),
    }
}

unsafe extern "C" fn x_savepoint(vt: *mut ffi::sqlite3_vtab, i: c_int) -> c_int {
    // SAFETY: installed only in MODULE (see `with_tab`).
    unsafe {
        with_tab(vt, "xSavepoint", |t| {
            with_state_unless_nested(t, |st| {
                st.savepoint(i);
                Ok(())
            })
        })
    }
}

unsafe extern "C" fn x_release(vt: *mut ffi::sqlite3_vtab, i: c_int) -> c_int {
    // SAFETY: installed only in MODULE (see `with_tab`).
    unsafe {
        with_tab(vt, "xRelease", |t| {
            with_state_unless_nested(t, |st| {
                st.release(i);
                Ok(())
            })
        })
    }
}

unsafe extern "C" fn x_rollback_to(vt: *mut ffi::sqlite3_vtab, i: c_int) -> c_int {
    // SAFETY: installed only in MODULE (see `with_tab`).
    let rc = unsafe {
        with_tab(vt, "xRollbackTo", |t| {
            with_state_unless_nested(t, |st| st.rollback_to(i))
        })
    };
    if rc != ffi::SQLITE_OK {
        // SQLite rolled the shadow tables back to the savepoint all the same: the state follows
        // (`TableState::recover`), whatever part of `rollback_to` ran.
        // SAFETY: as above.
        unsafe {
            with_tab(vt, "recovery of a failed transaction hook", |t| {
                with_state_unless_nested(t, |st| {
                    st.recover(state::Failed::RollbackTo(i));
                    Ok(())
                })?;
                t.state.clear_poison();
                Ok(())
            })
        };
    }
    rc
}

unsafe extern "C" fn x_rename(vt: *mut ffi::sqlite3_vtab, new: *const c_char) -> c_int {
    // SAFETY: SQLite passes a NUL-terminated UTF-8 name.
    let name = unsafe { CStr::from_ptr(new) }
        .to_string_lossy()
        .into_owned();
    // SAFETY: installed only in MODULE (see `with_tab`).
    unsafe { with_tab(vt, "xRename", |t| t.rename(&name)) }
}

unsafe extern "C" fn x_shadow_name(name: *const c_char) -> c_int {
    // SAFETY: SQLite passes a NUL-terminated suffix.
    let n = unsafe { CStr::from_ptr(name) }.to_bytes();
    c_int::from(n == b"info" || n == b"rows" || n == b"dead")
}

/// The `phenix` module: rusqlite's transactional module plus savepoints, rename and shadow-table names
/// (module version 3).
static MODULE: ffi::sqlite3_module = {
    let m: Module<'static, PhenixTab> = Module::update_module_with_tx();
    // SAFETY: `Module` is `#[repr(transparent)]` over `ffi::sqlite3_module`.
    let mut base: ffi::sqlite3_module = unsafe { std::mem::transmute(m) };
    base.iVersion = 3;
    base.xRename = Some(x_rename);
    base.xSavepoint = Some(x_savepoint);
    base.xRelease = Some(x_release);
    base.xRollbackTo = Some(x_rollback_to);
    base.xShadowName = Some(x_shadow_name);
    base
};

/// Registers the `phenix` module and the retrieval functions.
pub(crate) fn register(conn: &rusqlite::Connection) -> rusqlite::Result<()> {
    // SAFETY: `Module` is `#[repr(transparent)]` over `ffi::sqlite3_module`, so the reference casts; the
    // static lives for the whole program.
    let module: &'static Module<'static, PhenixTab> =
        unsafe { &*(&MODULE as *const ffi::sqlite3_module as *const Module<'static, PhenixTab>) };
    // The module's client data holds this connection's in-memory vectors; SQLite drops it at close.
    let stores = registry::ConnStores::default();
    drops::register(conn, &stores)?;
    conn.create_module("phenix", module, Some(stores))?;
    check::register(conn)?;
    backup::register(conn)?;
    index::register(conn)?;
    retrieve::register(conn)
}
