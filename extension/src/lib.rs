//! # phenix-extension
//!
//! The SQLite loadable extension `libphenix.so` (and `libphenix.a`): the entry point
//! [`sqlite3_phenix_init`], which checks the host's SQLite version and then calls
//! `phenix_sql::register`, and the small C API of [`capi`] (version, ONNX Runtime, thread caps), all
//! declared in `include/phenix.h`. All SQL behaviour lives in `phenix-sql`; this crate owns only the
//! FFI. Embedding it in an application (any SQLite, C or Rust): docs/embedding.md.
//!
//! Build it alone (its `loadable` feature of phenix-sql excludes the `bundled` one the rest of the
//! workspace uses): `cargo build --release -p phenix-extension` → `target/release/libphenix.so`.
//!
//! ```sql
//! .load target/release/libphenix
//! SELECT phenix_version();
//! ```
#![deny(missing_docs)]

pub mod capi;

use rusqlite::{ffi, Connection};
use std::os::raw::{c_char, c_int};
use std::sync::atomic::{AtomicPtr, Ordering};

/// The API table of the SQLite library phenix was first loaded into, in this process.
///
/// rusqlite's loadable bindings keep the host's function pointers in process-wide statics, so a second
/// SQLite library in the same process (e.g. Python's `sqlite3` module and apsw, each with its own
/// SQLite) would redirect the first library's connections into the second one: memory corruption. The
/// first library claims the extension; loading it into another one is refused with an error.
static HOST_API: AtomicPtr<ffi::sqlite3_api_routines> = AtomicPtr::new(std::ptr::null_mut());

/// The entry point SQLite calls when it loads `libphenix.so` (the name SQLite derives from the file
/// name, so `.load libphenix` needs no entry-point argument).
///
/// Before rusqlite initialises anything, the host's `libversion_number` is compared with
/// `phenix_sql::host::MIN_SQLITE_VERSION_NUMBER`; a too-old host (or an API table without that
/// function) gets `SQLITE_ERROR` and a message in `*pz_err_msg`, allocated with the table's own
/// `malloc`, instead of the abort rusqlite's check would cause. A panic anywhere in here is caught and
/// reported the same way.
///
/// # Safety
/// Called by SQLite with a valid connection `db`, a valid `p_api` table for that host, and a
/// `pz_err_msg` that is null or points to writable storage for one pointer, as the loadable-extension
/// protocol guarantees.
#[no_mangle]
pub unsafe extern "C" fn sqlite3_phenix_init(
    db: *mut ffi::sqlite3,
    pz_err_msg: *mut *mut c_char,
    p_api: *mut ffi::sqlite3_api_routines,
) -> c_int {
    let run = || {
        // SAFETY: the caller guarantees `p_api` is null or a valid API table (see `# Safety`).
        if let Err(msg) = unsafe { host_check(p_api) } {
            // SAFETY: as above, and `pz_err_msg` is null or writable.
            unsafe { set_error(p_api, pz_err_msg, &msg) };
            return ffi::SQLITE_ERROR;
        }
        if let Err(msg) = claim_host(&HOST_API, p_api) {
            // SAFETY: as above.
            unsafe { set_error(p_api, pz_err_msg, &msg) };
            return ffi::SQLITE_ERROR;
        }
        // Routines newer than rusqlite's loadable bindings (sqlite3_vtab_in) are called through it.
        phenix_sql::host::set_host_api(p_api.cast());
        // SAFETY: the host passed its own connection and API table; `init` only registers functions.
        unsafe { Connection::extension_init2(db, pz_err_msg, p_api, init) }
    };
    match std::panic::catch_unwind(run) {
        Ok(rc) => rc,
        Err(_) => {
            // SAFETY: as above.
            unsafe {
                set_error(
                    p_api,
                    pz_err_msg,
                    "phenix: internal error (a panic) while loading the extension",
                )
            };
            ffi::SQLITE_ERROR
        }
    }
}

fn init(conn: Connection) -> rusqlite::Result<bool> {
    phenix_sql::register(&conn)?;
    // Not persistent: each connection that wants phenix loads it.
    Ok(false)
}

/// Records `p_api` as this process's SQLite library, or refuses a different one (see [`HOST_API`]).
fn claim_host<T>(slot: &AtomicPtr<T>, p_api: *mut T) -> Result<(), String> {
    match slot.compare_exchange(
        std::ptr::null_mut(),
        p_api,
        Ordering::AcqRel,
        Ordering::Acquire,
    ) {
        Ok(_) => Ok(()),
        Err(first) if first == p_api => Ok(()),
        Err(_) => Err("phenix: libphenix.so is already loaded into another SQLite library in this process; \
             one process can use it with one SQLite library only (e.g. not both Python's sqlite3 module and apsw)"
            .into()),
    }
}

/// `Ok` if the host behind `p_api` is new enough; else the message for it.
///
/// # Safety
/// `p_api` is null or points to a valid `sqlite3_api_routines` of some SQLite version. Only
/// `libversion_number`, a field every version has, is read.
unsafe fn host_check(p_api: *const ffi::sqlite3_api_routines) -> Result<(), String> {
    if p_api.is_null() {
        return Err("phenix: the host passed no SQLite API table".into());
    }
    // SAFETY: `p_api` is non-null and valid (caller); `libversion_number` exists in every version's table.
    let Some(libversion_number) = (unsafe { (*p_api).libversion_number }) else {
        return Err("phenix: the host's SQLite API table has no libversion_number".into());
    };
    // SAFETY: a function pointer from the host's API table, which takes no arguments.
    let host = unsafe { libversion_number() };
    phenix_sql::host::check_host_version(host)
}

/// Writes `msg` into `*pz_err_msg`, allocated with the host's `malloc` (SQLite frees it with
/// `sqlite3_free`). Does nothing if either pointer or `malloc` is missing, or allocation fails.
///
/// # Safety
/// `p_api` is null or a valid API table; `pz_err_msg` is null or writable.
unsafe fn set_error(
    p_api: *const ffi::sqlite3_api_routines,
    pz_err_msg: *mut *mut c_char,
    msg: &str,
) {
    if p_api.is_null() || pz_err_msg.is_null() {
        return;
    }
    // SAFETY: non-null and valid (caller); `malloc` exists in every version's table.
    let Some(malloc) = (unsafe { (*p_api).malloc }) else {
        return;
    };
    let bytes = msg.as_bytes();
    let Ok(len) = c_int::try_from(bytes.len() + 1) else {
        return;
    };
    // SAFETY: the host's sqlite3_malloc; a positive size.
    let p = unsafe { malloc(len) }.cast::<u8>();
    if p.is_null() {
        return;
    }
    // SAFETY: `p` holds `len` = bytes.len() + 1 freshly allocated bytes; `pz_err_msg` is writable.
    unsafe {
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), p, bytes.len());
        *p.add(bytes.len()) = 0;
        *pz_err_msg = p.cast::<c_char>();
    }
}

#[cfg(test)]
mod tests {
    //! The entry point against fake API tables (no real SQLite older than 3.40 is installed here).
    use super::*;
    use std::ffi::{c_void, CStr};

    extern "C" {
        fn malloc(n: usize) -> *mut c_void;
        fn free(p: *mut c_void);
    }
    unsafe extern "C" fn test_malloc(n: c_int) -> *mut c_void {
        // SAFETY: libc malloc with a non-negative size.
        unsafe { malloc(n as usize) }
    }
    unsafe extern "C" fn sqlite_3_39_4() -> c_int {
        3_039_004
    }

    /// Calls the entry point with an API table holding only `libversion_number` and `malloc`.
    fn load(version: Option<unsafe extern "C" fn() -> c_int>) -> (c_int, Option<String>) {
        // SAFETY: every field of the table is an `Option` of a function pointer; all-zero is all `None`.
        let mut api: ffi::sqlite3_api_routines = unsafe { std::mem::zeroed() };
        api.libversion_number = version;
        api.malloc = Some(test_malloc);
        let mut err: *mut c_char = std::ptr::null_mut();
        // SAFETY: the check fails before `db` is used; `err` is writable.
        let rc = unsafe { sqlite3_phenix_init(std::ptr::null_mut(), &mut err, &mut api) };
        let msg = (!err.is_null()).then(|| {
            // SAFETY: set_error wrote a NUL-terminated string allocated with libc malloc.
            let s = unsafe { CStr::from_ptr(err) }.to_str().unwrap().to_string();
            // SAFETY: allocated by test_malloc (libc malloc) above.
            unsafe { free(err.cast()) };
            s
        });
        (rc, msg)
    }

    #[test]
    fn a_too_old_host_gets_an_error_not_an_abort() {
        let (rc, msg) = load(Some(sqlite_3_39_4));
        assert_eq!(rc, ffi::SQLITE_ERROR);
        assert_eq!(
            msg.as_deref(),
            Some("phenix needs SQLite >= 3.40.0, host is 3.39.4")
        );
    }

    #[test]
    fn a_table_without_libversion_number_gets_an_error() {
        let (rc, msg) = load(None);
        assert_eq!(rc, ffi::SQLITE_ERROR);
        assert!(msg.unwrap().contains("libversion_number"));
    }

    #[test]
    fn a_second_sqlite_library_in_the_process_is_refused() {
        let slot = AtomicPtr::new(std::ptr::null_mut());
        let (mut a, mut b) = (1u8, 2u8);
        assert!(claim_host(&slot, &mut a).is_ok());
        assert!(
            claim_host(&slot, &mut a).is_ok(),
            "the same library may load it again"
        );
        let e = claim_host(&slot, &mut b).unwrap_err();
        assert!(
            e.contains("already loaded into another SQLite library"),
            "{e}"
        );
    }

    #[test]
    fn a_null_api_table_gets_an_error() {
        // SAFETY: null `p_api` and `pz_err_msg` are handled before anything is dereferenced.
        let rc = unsafe {
            sqlite3_phenix_init(
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
            )
        };
        assert_eq!(rc, ffi::SQLITE_ERROR);
    }
}
