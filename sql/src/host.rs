//! The host check the loadable extension runs before anything touches SQLite.
//!
//! `sqlite3_phenix_init` (crate `phenix-extension`) reads the host's version from the API-routines table
//! and calls [`check_host_version`] before rusqlite initialises its function pointers: rusqlite's own
//! check would report a failure through `sqlite3_malloc64` before that pointer is set up, which aborts
//! the host. The message is then written with the table's `malloc` (present in every SQLite version).

/// The oldest SQLite that phenix supports, as `sqlite3_libversion_number()`: 3.40.0.
///
/// Verified hosts: Debian 12's `sqlite3` CLI and Python `sqlite3` module (3.40.1), apsw (3.54.1),
/// rusqlite 0.40.0's bundled SQLite (3.53.2, in-process). rusqlite 0.40.0's loadable bindings were
/// generated from 3.34.1 headers, so older hosts might work, but none was tested.
pub const MIN_SQLITE_VERSION_NUMBER: i32 = 3_040_000;

/// The host's API table (`sqlite3_api_routines`), recorded by the loadable extension's entry point:
/// phenix calls the few routines newer than rusqlite's loadable bindings (which were generated from
/// older headers) through it. Null in-process (the bundled build links SQLite directly).
static HOST_API: std::sync::atomic::AtomicPtr<std::ffi::c_void> =
    std::sync::atomic::AtomicPtr::new(std::ptr::null_mut());

/// Records the host's API table (the loadable extension's entry point calls this once the host passed
/// the version check).
pub fn set_host_api(p: *mut std::ffi::c_void) {
    HOST_API.store(p, std::sync::atomic::Ordering::Release);
}

/// The host's API table, if recorded ([`set_host_api`]).
#[cfg_attr(not(feature = "loadable"), allow(dead_code))]
pub(crate) fn host_api() -> *mut std::ffi::c_void {
    HOST_API.load(std::sync::atomic::Ordering::Acquire)
}

/// `sqlite3_is_interrupted(db)`: SQLite >= 3.41.0 ([`IS_INTERRUPTED_SINCE`]).
pub(crate) type IsInterrupted =
    unsafe extern "C" fn(*mut rusqlite::ffi::sqlite3) -> std::ffi::c_int;

/// The first SQLite with `sqlite3_is_interrupted` (3.41.0).
pub const IS_INTERRUPTED_SINCE: i32 = 3_041_000;

/// `sqlite3_is_interrupted`, linked directly in-process.
#[cfg(not(feature = "loadable"))]
pub(crate) fn is_interrupted_fn() -> Option<IsInterrupted> {
    Some(rusqlite::ffi::sqlite3_is_interrupted)
}

/// `sqlite3_is_interrupted` from the host's API table, where it is the entry at byte offset 2128 on
/// 64-bit hosts (`offsetof` in the 3.41 to 3.53 headers: the table only grows at its end). Hosts
/// older than 3.41 have a shorter table, so the version is checked before that entry is read: `None`
/// there (and when no table was recorded).
#[cfg(feature = "loadable")]
pub(crate) fn is_interrupted_fn() -> Option<IsInterrupted> {
    const _: () = assert!(std::mem::size_of::<usize>() == 8);
    let api = host_api();
    if api.is_null() || host_version() < IS_INTERRUPTED_SINCE {
        return None;
    }
    // SAFETY: `api` is the host's sqlite3_api_routines (recorded by the entry point), of a version
    // >= 3.41 (checked above), whose entry at this offset is `is_interrupted` (or null).
    unsafe {
        let f = *(api.cast::<u8>().add(2128) as *const *const std::ffi::c_void);
        (!f.is_null()).then(|| std::mem::transmute::<*const std::ffi::c_void, IsInterrupted>(f))
    }
}

/// The SQLite version phenix runs on (`sqlite3_libversion_number()` of the host, or of the bundled
/// SQLite in-process).
pub fn host_version() -> i32 {
    // SAFETY: takes no arguments; in the loadable build rusqlite routes it through the host's table,
    // which the entry point set up before any phenix function can run.
    unsafe { rusqlite::ffi::sqlite3_libversion_number() }
}

/// `3040001` → `3.40.1`.
pub fn version_string(number: i32) -> String {
    format!(
        "{}.{}.{}",
        number / 1_000_000,
        number / 1000 % 1000,
        number % 1000
    )
}

/// `Ok` if a host reporting `sqlite3_libversion_number() == host` can load phenix; otherwise the
/// message to give it: `phenix needs SQLite >= 3.40.0, host is 3.39.4`.
pub fn check_host_version(host: i32) -> Result<(), String> {
    if host >= MIN_SQLITE_VERSION_NUMBER {
        Ok(())
    } else {
        Err(format!(
            "phenix needs SQLite >= {}, host is {}",
            version_string(MIN_SQLITE_VERSION_NUMBER),
            version_string(host)
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        assert_eq!(version_string(3_040_001), "3.40.1");
        assert_eq!(version_string(3_054_001), "3.54.1");
        assert!(check_host_version(3_040_000).is_ok());
        assert!(check_host_version(3_040_001).is_ok());
        assert!(check_host_version(3_054_001).is_ok());
        assert_eq!(
            check_host_version(3_039_004).unwrap_err(),
            "phenix needs SQLite >= 3.40.0, host is 3.39.4"
        );
        assert_eq!(
            check_host_version(3_034_001).unwrap_err(),
            "phenix needs SQLite >= 3.40.0, host is 3.34.1"
        );
    }
}
