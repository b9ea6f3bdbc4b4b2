//! `IN` lists handled all at once (`sqlite3_vtab_in`, SQLite >= 3.38), for the bundled and the loadable
//! build alike.
//!
//! rusqlite exposes these calls only with its `modern_sqlite` feature, which the loadable build cannot
//! enable (rusqlite's extension initialisation then requires a host newer than Debian's 3.40), and its
//! loadable bindings predate them. The functions are in every supported host (>= 3.40): in-process they
//! are linked directly; in the loadable build they are read from the host's API table at their fixed
//! offsets (the table only ever grows at its end). They are called on the raw pointers behind
//! rusqlite's `IndexInfo` and `Filters`.

use rusqlite::ffi;
use rusqlite::types::Value;
use rusqlite::vtab::{Filters, IndexInfo};
use std::ffi::c_int;

// rusqlite 0.40's `IndexInfo` is a one-field tuple struct over `*mut sqlite3_index_info`, and `Filters`
// a one-field struct over `Values`, itself one field `&[*mut sqlite3_value]`. The sizes are checked at
// compile time; rusqlite is pinned (`=0.40.0`), so the layouts cannot change under us.
const _: () = assert!(
    std::mem::size_of::<IndexInfo>() == std::mem::size_of::<*mut ffi::sqlite3_index_info>()
);
const _: () = assert!(
    std::mem::size_of::<Filters<'static>>() == std::mem::size_of::<&[*mut ffi::sqlite3_value]>()
);

type VtabIn = unsafe extern "C" fn(*mut ffi::sqlite3_index_info, c_int, c_int) -> c_int;
type VtabInIter =
    unsafe extern "C" fn(*mut ffi::sqlite3_value, *mut *mut ffi::sqlite3_value) -> c_int;

/// The routines, in-process.
#[cfg(not(feature = "loadable"))]
fn routines() -> Option<(VtabIn, VtabInIter, VtabInIter)> {
    Some((
        ffi::sqlite3_vtab_in,
        ffi::sqlite3_vtab_in_first,
        ffi::sqlite3_vtab_in_next,
    ))
}

/// The routines, from the host's API table: `vtab_in`, `vtab_in_first`, `vtab_in_next` are its
/// entries at byte offsets 2072, 2080, 2088 on 64-bit hosts (SQLite 3.38 to today; checked with
/// `offsetof` against the 3.40.1 and 3.53 headers).
#[cfg(feature = "loadable")]
fn routines() -> Option<(VtabIn, VtabInIter, VtabInIter)> {
    const _: () = assert!(std::mem::size_of::<usize>() == 8);
    let api = crate::host::host_api();
    if api.is_null() {
        return None;
    }
    // SAFETY: `api` is the host's sqlite3_api_routines table (recorded by the entry point after the
    // host passed the >= 3.40 check), whose entries at these offsets are these functions (or null).
    unsafe {
        let at = |off: usize| *(api.cast::<u8>().add(off) as *const *const std::ffi::c_void);
        let (a, b, c) = (at(2072), at(2080), at(2088));
        if a.is_null() || b.is_null() || c.is_null() {
            return None;
        }
        Some((
            std::mem::transmute::<*const std::ffi::c_void, VtabIn>(a),
            std::mem::transmute::<*const std::ffi::c_void, VtabInIter>(b),
            std::mem::transmute::<*const std::ffi::c_void, VtabInIter>(c),
        ))
    }
}

fn raw_info(info: &IndexInfo) -> *mut ffi::sqlite3_index_info {
    // SAFETY: `IndexInfo` is a single-field struct holding exactly this pointer (sizes asserted above);
    // the pointer is only passed back to SQLite during the xBestIndex call that owns it.
    unsafe { std::mem::transmute_copy::<IndexInfo, *mut ffi::sqlite3_index_info>(info) }
}

/// Whether constraint `i` is an `IN (…)` that SQLite could hand over all at once.
pub(crate) fn is_in(info: &IndexInfo, i: usize) -> bool {
    let Some((vtab_in, _, _)) = routines() else {
        return false;
    };
    // SAFETY: called inside xBestIndex with that call's index info; `i` is a constraint index of it.
    unsafe { vtab_in(raw_info(info), i as c_int, -1) != 0 }
}

/// Asks SQLite to pass IN constraint `i` to xFilter as one list; `true` if it will.
pub(crate) fn take_all(info: &mut IndexInfo, i: usize) -> bool {
    let Some((vtab_in, _, _)) = routines() else {
        return false;
    };
    // SAFETY: as in `is_in`.
    unsafe { vtab_in(raw_info(info), i as c_int, 1) != 0 }
}

/// The values of the IN list at xFilter argument `idx` (one taken with [`take_all`]).
pub(crate) fn values<'a>(filters: &'a Filters<'a>, idx: usize) -> rusqlite::Result<Vec<Value>> {
    // SAFETY: `Filters` is a single-field struct over `Values`, a single-field struct over the argv
    // slice (sizes asserted above); the slice lives as long as `filters`.
    let args: &'a [*mut ffi::sqlite3_value] =
        unsafe { std::mem::transmute_copy::<Filters<'a>, &'a [*mut ffi::sqlite3_value]>(filters) };
    let list = *args.get(idx).ok_or_else(|| {
        rusqlite::Error::ModuleError(format!("IN list argument {idx} is missing"))
    })?;
    let (_, first, next) = routines()
        .ok_or_else(|| rusqlite::Error::ModuleError("sqlite3_vtab_in is not available".into()))?;
    let mut out = Vec::new();
    let mut val: *mut ffi::sqlite3_value = std::ptr::null_mut();
    // SAFETY: `list` is the xFilter argument SQLite made for an all-at-once IN constraint; the values
    // it yields stay valid until xFilter returns, which outlives `'a`'s use by the caller.
    let mut rc = unsafe { first(list, &mut val) };
    while rc == ffi::SQLITE_OK {
        // SAFETY: SQLite returned a valid value.
        out.push(unsafe { owned(val) }?);
        // SAFETY: as above.
        rc = unsafe { next(list, &mut val) };
    }
    if rc != ffi::SQLITE_DONE {
        return Err(rusqlite::Error::SqliteFailure(ffi::Error::new(rc), None));
    }
    Ok(out)
}

/// An owned copy of `v` (text must be UTF-8).
///
/// # Safety
/// `v` must be a valid protected `sqlite3_value`.
unsafe fn owned(v: *mut ffi::sqlite3_value) -> rusqlite::Result<Value> {
    // SAFETY: `v` is valid (caller); each accessor matches the value's type, and the text/blob pointer
    // is read for the length SQLite reports before any other call on `v`.
    unsafe {
        Ok(match ffi::sqlite3_value_type(v) {
            ffi::SQLITE_INTEGER => Value::Integer(ffi::sqlite3_value_int64(v)),
            ffi::SQLITE_FLOAT => Value::Real(ffi::sqlite3_value_double(v)),
            ffi::SQLITE_TEXT => {
                let p = ffi::sqlite3_value_text(v);
                let n = ffi::sqlite3_value_bytes(v) as usize;
                let b = if p.is_null() {
                    &[][..]
                } else {
                    std::slice::from_raw_parts(p, n)
                };
                Value::Text(
                    std::str::from_utf8(b)
                        .map_err(|_| {
                            rusqlite::Error::ModuleError("an IN value is not UTF-8 text".into())
                        })?
                        .to_string(),
                )
            }
            ffi::SQLITE_BLOB => {
                let p = ffi::sqlite3_value_blob(v);
                let n = ffi::sqlite3_value_bytes(v) as usize;
                Value::Blob(if p.is_null() {
                    Vec::new()
                } else {
                    std::slice::from_raw_parts(p as *const u8, n).to_vec()
                })
            }
            _ => Value::Null,
        })
    }
}
