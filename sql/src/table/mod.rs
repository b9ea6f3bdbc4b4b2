//! The `phenix` virtual table and the retrieval functions built on it.
//!
//! - [`vtab`]: `CREATE VIRTUAL TABLE t USING phenix(...)`, INSERT/UPDATE/DELETE, KNN with `MATCH` + `k`.
//! - [`retrieve`]: `phenix_retrieve` (table-valued and scalar) and `phenix_retrieve_all`.
//! - [`state`]: shadow tables, sidecar file and the commit protocol of docs/design.md.
//! - [`schema`]: parsing the column definitions.
//! - [`check`]: `phenix_check`, the integrity check.
//! - [`backup`]: `phenix_backup`, a consistent copy of a database and its vector files.

pub mod backup;
pub mod check;
pub mod retrieve;
pub mod schema;
pub mod state;
pub mod vtab;

use rusqlite::ffi;
use rusqlite::vtab::Module;
use std::ffi::{c_char, c_int, CStr};
use std::panic::{catch_unwind, AssertUnwindSafe};
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

/// Runs `f` on the `PhenixTab` behind `vt`, catching panics.
///
/// # Safety
/// `vt` must point at a `PhenixTab` created by this module.
unsafe fn with_tab(
    vt: *mut ffi::sqlite3_vtab,
    what: &str,
    f: impl FnOnce(&mut PhenixTab) -> rusqlite::Result<()>,
) -> c_int {
    // SAFETY: every sqlite3_vtab of the `phenix` module is the first field of a `#[repr(C)] PhenixTab`.
    let tab = unsafe { &mut *(vt as *mut PhenixTab) };
    let r = catch_unwind(AssertUnwindSafe(|| f(tab)));
    let msg = match r {
        Ok(Ok(())) => return ffi::SQLITE_OK,
        Ok(Err(e)) => e.to_string(),
        Err(_) => format!("phenix: internal error (panic) in {what}"),
    };
    // SAFETY: `vt` is live.
    unsafe { set_err(vt, &msg) };
    ffi::SQLITE_ERROR
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
    // SAFETY: called by SQLite on a table of this module.
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
    // SAFETY: called by SQLite on a table of this module.
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
    // SAFETY: called by SQLite on a table of this module.
    unsafe {
        with_tab(vt, "xRollbackTo", |t| {
            with_state_unless_nested(t, |st| st.rollback_to(i))
        })
    }
}

unsafe extern "C" fn x_rename(vt: *mut ffi::sqlite3_vtab, new: *const c_char) -> c_int {
    // SAFETY: SQLite passes a NUL-terminated UTF-8 name.
    let name = unsafe { CStr::from_ptr(new) }
        .to_string_lossy()
        .into_owned();
    // SAFETY: called by SQLite on a table of this module.
    unsafe { with_tab(vt, "xRename", |t| t.rename(&name)) }
}

unsafe extern "C" fn x_shadow_name(name: *const c_char) -> c_int {
    // SAFETY: SQLite passes a NUL-terminated suffix.
    let n = unsafe { CStr::from_ptr(name) }.to_bytes();
    c_int::from(n == b"info" || n == b"rows")
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
pub fn register(conn: &rusqlite::Connection) -> rusqlite::Result<()> {
    // SAFETY: `Module` is `#[repr(transparent)]` over `ffi::sqlite3_module`, so the reference casts; the
    // static lives for the whole program.
    let module: &'static Module<'static, PhenixTab> =
        unsafe { &*(&MODULE as *const ffi::sqlite3_module as *const Module<'static, PhenixTab>) };
    conn.create_module("phenix", module, None)?;
    check::register(conn)?;
    backup::register(conn)?;
    retrieve::register(conn)
}

/// Argument `i` of a vtab call (NULL past the end).
pub(crate) fn arg<'a>(
    v: &'a rusqlite::vtab::Values<'a>,
    i: usize,
) -> rusqlite::types::ValueRef<'a> {
    v.iter().nth(i).unwrap_or(rusqlite::types::ValueRef::Null)
}

/// An owned copy of a value (text must be UTF-8).
pub(crate) fn owned(v: rusqlite::types::ValueRef<'_>) -> rusqlite::Result<rusqlite::types::Value> {
    rusqlite::types::Value::try_from(v)
        .map_err(|e| crate::error::sql_error(format!("invalid value ({e}); text must be UTF-8")))
}

/// An error about table `name`: `phenix: phenix table <name>: <e>` (one `phenix: ` prefix).
pub(crate) fn table_err(name: &str, e: impl std::fmt::Display) -> rusqlite::Error {
    let m = e.to_string();
    let m = m.strip_prefix("phenix: ").unwrap_or(&m);
    crate::error::sql_error(format!("phenix table {name}: {m}"))
}

/// A text argument of function `f` (`what` names it, e.g. `argument 1 (model)`), as UTF-8.
pub(crate) fn text_arg<'a>(
    v: rusqlite::types::ValueRef<'a>,
    f: &str,
    what: &str,
) -> rusqlite::Result<&'a str> {
    use rusqlite::types::ValueRef;
    match v {
        ValueRef::Text(t) => std::str::from_utf8(t)
            .map_err(|_| crate::error::sql_error(format!("{f}: {what} is not UTF-8"))),
        ValueRef::Null => Err(crate::error::sql_error(format!(
            "{f}: {what} is NULL; expected text"
        ))),
        _ => Err(crate::error::sql_error(format!("{f}: {what} must be text"))),
    }
}

/// A positive integer `k` (`what` names it in the message, e.g. `phenix table t: k`).
pub(crate) fn positive_k(v: rusqlite::types::ValueRef<'_>, what: &str) -> rusqlite::Result<usize> {
    use rusqlite::types::ValueRef;
    let got = match v {
        ValueRef::Integer(k) if k > 0 => return Ok(k as usize),
        ValueRef::Integer(k) => k.to_string(),
        ValueRef::Null => "NULL".to_string(),
        ValueRef::Real(r) => r.to_string(),
        ValueRef::Text(_) => "text".to_string(),
        ValueRef::Blob(_) => "a blob".to_string(),
    };
    Err(crate::error::sql_error(format!(
        "{what} must be a positive integer, got {got}"
    )))
}
