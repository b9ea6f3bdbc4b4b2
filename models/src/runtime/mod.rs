//! ONNX Runtime: finding the shared library, sessions, and running the encoders.
//!
//! `ort` is used with `load-dynamic`: nothing links against ONNX Runtime at build time, and the
//! library is opened on the first [`Model::load`]. Which file is opened is decided by
//! [`runtime_library_candidates`] (see `docs/models.md`); the first library loaded stays for
//! the life of the process (ONNX Runtime's API table is process-global).
//!
//! Every call into `ort` runs inside `catch_unwind`, so a panic in `ort` (it panics when its
//! library is missing) becomes an [`Error`] instead of unwinding into the caller (or across an
//! FFI boundary such as SQLite's).
//!
//! The parts: [`library`] (finding and loading the shared library), [`options`]
//! ([`RuntimeOptions`]), `session` (creating and checking sessions) and `model` ([`Model`]).

use std::sync::{Mutex, MutexGuard};

pub mod library;
mod model;
pub mod options;
mod session;

pub use library::{
    init_runtime, runtime_library_candidates, runtime_library_file_name, LibrarySource,
    RuntimeInfo, ORT_DIR, ORT_DISABLE_TELEMETRY_ENV, ORT_DYLIB_PATH_ENV, PHENIX_ROOT_ENV,
};
pub use model::{clear_model_cache, Model};
pub use options::{ExecutionProvider, RuntimeOptions};

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic inside ort while a lock was held is turned into an error by the caller; the
    // guarded data (an Option or a Session) stays usable.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn panic_message(p: Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".to_string()
    }
}
