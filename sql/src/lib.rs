//! # phenix-sql
//!
//! The SQLite surface of phenix: the vector SQL functions ([`functions`]), the parsing of vector
//! arguments ([`vector`]), the `phenix` virtual table (`src/table/`, internal), the encoder functions
//! ([`encoders`]), and the one [`register`] function that installs all of it on a connection. It owns no storage or search code (that is `phenix-core`) and no
//! model code (`phenix-models`).
//!
//! The same [`register`] serves two builds, chosen by exactly one cargo feature:
//! - `bundled` (default): in-process use with rusqlite's bundled SQLite (applications, tests).
//! - `loadable`: the loadable extension `libphenix.so` (crate `phenix-extension`), which reaches SQLite
//!   only through the API table the host passes to `sqlite3_phenix_init`. Build it alone with
//!   `cargo build --release -p phenix-extension`; see `docs/sql.md`, "Loading".
//!
//! Invariants: no panic crosses into SQLite (every callback runs inside [`catch_panic`]); every error
//! is an [`Error`] that reaches SQLite with a message that starts with `phenix: ` and the result code
//! of its class (`SQLITE_CORRUPT_VTAB` for a damaged vector file, `SQLITE_BUSY` for a snapshot
//! conflict, `SQLITE_CANTOPEN` for a missing file, `SQLITE_ERROR` for bad arguments; see [`error`]).
//!
//! ```
//! # #[cfg(feature = "bundled")] {
//! let conn = rusqlite::Connection::open_in_memory().unwrap();
//! phenix_sql::register(&conn).unwrap();
//! let d: f64 = conn
//!     .query_row("SELECT phenix_distance_l2('[0, 0]', '[3, 4]')", [], |r| r.get(0))
//!     .unwrap();
//! assert_eq!(d, 5.0);
//! # }
//! ```
#![deny(missing_docs)]

#[cfg(all(feature = "bundled", feature = "loadable"))]
compile_error!(
    "phenix-sql: features `bundled` and `loadable` exclude each other; build the extension alone with \
     `cargo build --release -p phenix-extension`"
);

pub mod analysis;
pub(crate) mod args;
pub mod control;
pub mod encoders;
pub mod error;
pub mod functions;
pub mod host;
pub mod settings;
mod table;
pub mod tvf;
pub mod vector;

/// Whether this process still holds the in-memory vectors of the phenix table whose `<t>_info.table_id`
/// is `id` (32 hex digits): for tests that memory is released when a connection closes or the table is
/// dropped.
#[doc(hidden)]
pub fn memory_store_alive(id: &str) -> bool {
    table::registry::memory_store_alive(id)
}

/// The bytes of rows in the in-memory vectors of the phenix table with table id `id`, or `None` once
/// this process no longer holds them: for tests that measure what `DROP TABLE` frees.
#[doc(hidden)]
pub fn memory_store_bytes(id: &str) -> Option<u64> {
    table::registry::memory_store_bytes(id)
}

pub use error::{catch_panic, sql_error, sqlite_owned_cstring, Error, Result};
pub use functions::{create_path_function, path_arg};
pub use table::schema::SchemaError;
pub use vector::{decode_vector, decode_vector_into, parse_vector, Decoded, Encoding, VectorError};

/// This library's version (`SELECT phenix_version()` returns the same).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Loads ONNX Runtime now, from `library` or found as `docs/models.md` describes
/// ([`runtime_library_candidates`]), and says which file and version were loaded. Optional: the
/// first embedding loads it anyway; calling it at startup reports a missing library early and keeps
/// the one-time environment change described in `docs/models.md` away from running threads.
pub use phenix_models::init_runtime as load_onnxruntime;
pub use phenix_models::{runtime_library_candidates, LibrarySource, RuntimeInfo};

/// Installs every phenix function (and the `phenix` virtual table) on `conn`.
///
/// Called by applications on their own connections, and by `sqlite3_phenix_init` when a host loads
/// `libphenix.so`.
pub fn register(conn: &rusqlite::Connection) -> rusqlite::Result<()> {
    functions::register(conn)?;
    analysis::register(conn)?;
    table::register(conn)?;
    encoders::register(conn)?;
    #[cfg(feature = "panic-test")]
    error::panic_test::register(conn)?;
    Ok(())
}
