//! The one place where phenix errors become SQLite errors.
//!
//! Every phenix error reaches SQLite as `SQLITE_ERROR` (code 1) with a message that starts with
//! `phenix: ` (rusqlite's default for a function error would be `SQLITE_CONSTRAINT_FUNCTION`, which
//! tells the host a constraint failed).

use rusqlite::ffi;

/// A SQLite error (`SQLITE_ERROR`) carrying `msg`, prefixed with `phenix: ` unless it already is.
pub fn sql_error(msg: impl std::fmt::Display) -> rusqlite::Error {
    let mut s = msg.to_string();
    // SQLite takes the message as a C string: one with a NUL byte (quoted from a bad argument)
    // would be dropped whole, leaving only "SQL logic error".
    if s.contains('\0') {
        s = s.replace('\0', "\\0");
    }
    if !s.starts_with("phenix: ") {
        s.insert_str(0, "phenix: ");
    }
    rusqlite::Error::SqliteFailure(ffi::Error::new(ffi::SQLITE_ERROR), Some(s))
}

/// Runs `f`, turning a panic into an SQL error (`phenix: internal error in {what}: {panic message}`)
/// instead of letting it unwind into SQLite (which aborts the process).
///
/// rusqlite 0.40 wraps scalar, aggregate and window callbacks in `catch_unwind` itself
/// (`src/functions.rs`: `call_boxed_closure`, `call_boxed_step`, `call_boxed_inverse`,
/// `call_boxed_final`, `call_boxed_value`), but **not** the virtual-table xMethods (`src/vtab/mod.rs`
/// has no `catch_unwind`): wrap every `VTab`/`VTabCursor` method body in this.
pub fn catch_panic<T>(what: &str, f: impl FnOnce() -> rusqlite::Result<T>) -> rusqlite::Result<T> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(payload) => {
            let detail = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic without a message".into());
            Err(sql_error(format!("internal error in {what}: {detail}")))
        }
    }
}

/// `msg` copied into memory from `sqlite3_malloc`, NUL-terminated (interior NULs become spaces), for the
/// fields SQLite frees itself with `sqlite3_free` (`sqlite3_vtab::zErrMsg`, `*pzErr`). Null if the
/// allocation fails.
///
/// Use this instead of `sqlite3_mprintf`, which the `loadable` build does not have (the API-table
/// bindings leave out variadic functions); `sqlite3_malloc` exists in both builds.
pub fn sqlite_owned_cstring(msg: &str) -> *mut std::os::raw::c_char {
    let bytes = msg.as_bytes();
    let Ok(len) = std::os::raw::c_int::try_from(bytes.len() + 1) else {
        return std::ptr::null_mut();
    };
    // SAFETY: sqlite3_malloc with a positive size; in the loadable build it is called only after
    // `sqlite3_phenix_init` has set up the API table (every phenix callback runs after that).
    let p = unsafe { ffi::sqlite3_malloc(len) }.cast::<u8>();
    if p.is_null() {
        return std::ptr::null_mut();
    }
    for (i, &b) in bytes.iter().enumerate() {
        // SAFETY: `p` holds `len` = bytes.len() + 1 bytes; i < bytes.len().
        unsafe { *p.add(i) = if b == 0 { b' ' } else { b } };
    }
    // SAFETY: index bytes.len() < len.
    unsafe { *p.add(bytes.len()) = 0 };
    p.cast()
}

#[cfg(all(test, feature = "bundled"))]
mod tests {
    #[test]
    fn catch_panic_turns_a_panic_into_an_sql_error() {
        let r: rusqlite::Result<()> = super::catch_panic("xFilter", || panic!("boom {}", 1));
        let e = r.unwrap_err();
        assert_eq!(e.to_string(), "phenix: internal error in xFilter: boom 1");
        assert_eq!(e.sqlite_error_code(), Some(rusqlite::ErrorCode::Unknown));
        assert_eq!(super::catch_panic("x", || Ok(3)).unwrap(), 3);
    }

    #[test]
    fn owned_cstring_is_nul_terminated_and_freeable() {
        let p = super::sqlite_owned_cstring("phenix: a\0b");
        assert!(!p.is_null());
        // SAFETY: a NUL-terminated string from sqlite3_malloc, freed once with sqlite3_free.
        unsafe {
            assert_eq!(std::ffi::CStr::from_ptr(p).to_str().unwrap(), "phenix: a b");
            rusqlite::ffi::sqlite3_free(p.cast());
        }
    }
}
