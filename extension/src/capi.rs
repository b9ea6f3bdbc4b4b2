//! The C API beside the entry point, declared in `include/phenix.h`: the version, loading ONNX
//! Runtime from code, the thread settings and the progress callback. None of these touch SQLite, so they may be called
//! before any connection exists. Strings they return are freed with [`phenix_free`].

use std::ffi::{c_char, c_int, CStr, CString};
use std::path::Path;

/// `"0.1.0\0"`: the version this library was built as.
static VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), "\0");

/// The library's version, e.g. `"0.1.0"` (static; do not free). Compare it with `PHENIX_VERSION`
/// from the header you compiled against.
#[no_mangle]
pub extern "C" fn phenix_version() -> *const c_char {
    VERSION.as_ptr().cast()
}

/// Hands `s` to the caller as a `phenix_free`-able C string (NUL bytes written as `\0`).
fn give(s: &str) -> *mut c_char {
    CString::new(s.replace('\0', "\\0"))
        .expect("NUL bytes were replaced")
        .into_raw()
}

/// Writes `msg` into `*out` if `out` is not null.
///
/// # Safety
/// `out` is null or writable.
unsafe fn put(out: *mut *mut c_char, msg: &str) {
    if !out.is_null() {
        // SAFETY: non-null and writable (caller).
        unsafe { *out = give(msg) };
    }
}

/// Loads ONNX Runtime now: from `path` if not NULL, else found as docs/models.md describes
/// (`ORT_DYLIB_PATH`, next to this library, `.ort/` directories, the system loader). Returns 0 and,
/// if `info` is not NULL, `"<version> <file>"` in `*info`; or 1 and the reason in `*err` (if not
/// NULL). The first library loaded stays for the life of the process; later calls report it.
///
/// # Safety
/// `path` is NULL or a NUL-terminated string; `info` and `err` are NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn phenix_load_onnxruntime(
    path: *const c_char,
    info: *mut *mut c_char,
    err: *mut *mut c_char,
) -> c_int {
    let run = || {
        let path = (!path.is_null()).then(|| {
            use std::os::unix::ffi::OsStrExt;
            // SAFETY: non-null and NUL-terminated (caller).
            let bytes = unsafe { CStr::from_ptr(path) }.to_bytes();
            Path::new(std::ffi::OsStr::from_bytes(bytes)).to_path_buf()
        });
        phenix_sql::load_onnxruntime(path.as_deref())
    };
    match std::panic::catch_unwind(run) {
        Ok(Ok(rt)) => {
            // SAFETY: `info` is NULL or writable (caller).
            unsafe { put(info, &format!("{} {}", rt.version, rt.library.display())) };
            0
        }
        Ok(Err(e)) => {
            // SAFETY: `err` is NULL or writable (caller).
            unsafe { put(err, &format!("phenix: {e}")) };
            1
        }
        Err(_) => {
            // SAFETY: as above.
            unsafe {
                put(
                    err,
                    "phenix: internal error (a panic) while loading ONNX Runtime",
                )
            };
            1
        }
    }
}

/// Sets the process-wide thread caps: `knn_threads` for one exact KNN scan or batched retrieval,
/// `onnx_threads` for ONNX Runtime's intra-op pool (and the featurizer) of models loaded from now
/// on. 0 means one per core; a negative value leaves that setting unchanged. Returns 0, or 1 with
/// the reason in `*err` (if not NULL) for a count above 1024.
///
/// # Safety
/// `err` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn phenix_set_threads(
    knn_threads: c_int,
    onnx_threads: c_int,
    err: *mut *mut c_char,
) -> c_int {
    let mut result = Ok(());
    if let Ok(n) = usize::try_from(knn_threads) {
        result = phenix_sql::settings::set_knn_threads(n);
    }
    if let (Ok(()), Ok(n)) = (&result, usize::try_from(onnx_threads)) {
        result = phenix_sql::settings::set_onnx_threads(n);
    }
    match result {
        Ok(()) => 0,
        Err(e) => {
            // SAFETY: `err` is NULL or writable (caller).
            unsafe { put(err, &e) };
            1
        }
    }
}

/// Frees a string returned by this library (`*info` / `*err` of the functions above). NULL is
/// ignored. Messages SQLite returns (`sqlite3_phenix_init`'s `*pzErrMsg`) are freed with
/// `sqlite3_free` instead.
///
/// # Safety
/// `p` is NULL or a string this library returned and that was not freed yet.
#[no_mangle]
pub unsafe extern "C" fn phenix_free(p: *mut c_char) {
    if !p.is_null() {
        // SAFETY: made by `give` (CString::into_raw) and not freed yet (caller).
        drop(unsafe { CString::from_raw(p) });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_is_the_crate_version() {
        // SAFETY: a static NUL-terminated string.
        let v = unsafe { CStr::from_ptr(phenix_version()) };
        assert_eq!(v.to_str().unwrap(), phenix_sql::VERSION);
    }

    #[test]
    fn a_missing_onnxruntime_is_an_error_string() {
        let (mut info, mut err) = (std::ptr::null_mut(), std::ptr::null_mut());
        let path = c"/no/such/libonnxruntime.so";
        // SAFETY: a valid C string and writable out-pointers.
        let rc = unsafe { phenix_load_onnxruntime(path.as_ptr(), &mut info, &mut err) };
        assert_eq!(rc, 1);
        assert!(info.is_null());
        // SAFETY: set by the call above.
        let msg = unsafe { CStr::from_ptr(err) }.to_str().unwrap().to_string();
        // SAFETY: returned by this library, freed once.
        unsafe { phenix_free(err) };
        assert!(msg.contains("/no/such/libonnxruntime.so"), "{msg}");
    }

    #[test]
    fn thread_caps_refuse_absurd_counts() {
        let mut err = std::ptr::null_mut();
        // SAFETY: a writable out-pointer.
        assert_eq!(unsafe { phenix_set_threads(-1, 5000, &mut err) }, 1);
        // SAFETY: set by the call above.
        let msg = unsafe { CStr::from_ptr(err) }.to_str().unwrap().to_string();
        // SAFETY: returned by this library, freed once.
        unsafe { phenix_free(err) };
        assert!(msg.contains("5000 threads"), "{msg}");
        // SAFETY: NULL err is allowed.
        assert_eq!(unsafe { phenix_set_threads(2, 1, std::ptr::null_mut()) }, 0);
        assert_eq!(phenix_sql::settings::knn_threads(), 2);
        assert_eq!(phenix_sql::settings::onnx_threads(), 1);
    }
}

/// The C progress callback of `include/phenix.h`: non-zero stops the operation.
pub type ProgressCallback = unsafe extern "C" fn(
    ctx: *mut std::ffi::c_void,
    db: *mut rusqlite::ffi::sqlite3,
    op: *const c_char,
    done: u64,
    total: u64,
) -> c_int;

/// Installs (or with `cb` NULL removes) the process-wide progress callback: called on the thread
/// running the statement, for every connection, from long phenix operations (KNN scans,
/// `phenix_retrieve_all`, `phenix_embed_molecules`, `'optimize'`, `phenix_backup`) at most once per
/// `interval_ms` milliseconds while they run, and once more with `done == total` when one that was
/// reported finishes. A non-zero return stops the operation: its statement fails with
/// `SQLITE_INTERRUPT`. `ctx` is passed back unchanged. Returns 0.
///
/// # Safety
/// `cb` is NULL or a function of this signature that may be called from any thread running phenix
/// SQL until it is replaced (and for operations already running then); `ctx` stays valid as long.
#[no_mangle]
pub unsafe extern "C" fn phenix_set_progress(
    cb: Option<ProgressCallback>,
    ctx: *mut std::ffi::c_void,
    interval_ms: u32,
) -> c_int {
    let every = std::time::Duration::from_millis(interval_ms.into());
    let Some(cb) = cb else {
        phenix_sql::control::set_progress(None, every);
        return 0;
    };
    let ctx = ctx as usize;
    // Operation names are few and static: one C string each, made once.
    let names: std::sync::Mutex<Vec<(String, CString)>> = std::sync::Mutex::new(Vec::new());
    let f = move |p: &phenix_sql::control::Progress<'_>| {
        let mut n = names.lock().unwrap_or_else(|e| e.into_inner());
        let i = match n.iter().position(|(s, _)| s == p.op) {
            Some(i) => i,
            None => {
                n.push((p.op.to_string(), CString::new(p.op).unwrap_or_default()));
                n.len() - 1
            }
        };
        // A CString's bytes stay where they are when the vector grows, and entries are never removed.
        let op = n[i].1.as_ptr();
        drop(n);
        // SAFETY: the caller promised `cb` and `ctx` stay valid while installed; `op` points into
        // `names`, which this closure owns, for the call.
        let rc = unsafe { cb(ctx as *mut std::ffi::c_void, p.db, op, p.done, p.total) };
        if rc == 0 {
            std::ops::ControlFlow::Continue(())
        } else {
            std::ops::ControlFlow::Break(())
        }
    };
    phenix_sql::control::set_progress(Some(std::sync::Arc::new(f)), every);
    0
}
