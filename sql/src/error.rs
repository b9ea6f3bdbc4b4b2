//! The error type of phenix-sql, the one place where it becomes a SQLite result code, and the one
//! panic-catching wrapper every SQLite callback runs in.
//!
//! Every phenix error reaches SQLite with a message that starts with `phenix: ` and the result code of
//! its class ([`Error::code`]):
//!
//! | class | code | examples |
//! |---|---|---|
//! | bad argument or value | `SQLITE_ERROR` | a malformed vector, `k = 0`, an unknown command or option |
//! | a value of the wrong SQL type where SQLite says "datatype mismatch" | `SQLITE_MISMATCH` | a text rowid given to `INSERT` |
//! | a damaged vector file or shadow table | `SQLITE_CORRUPT_VTAB` (`SQLITE_CORRUPT` in the low byte) | a bad header checksum, a truncated file, a row pointing past the file |
//! | a vector file that is missing | `SQLITE_CANTOPEN` | the sidecar file was deleted |
//! | a read snapshot older than a committed compaction | `SQLITE_BUSY` | retry the transaction |
//! | a store opened read-only asked to write | `SQLITE_READONLY` | |
//! | other I/O failures | `SQLITE_ERROR` | a failed `write` or `fsync` |
//! | a panic inside phenix | `SQLITE_ERROR` | `phenix: internal error in xFilter: …` |
//! | long work stopped by `sqlite3_interrupt` or the progress callback | `SQLITE_INTERRUPT` | `phenix: interrupted` |
//!
//! I/O failures are deliberately not `SQLITE_IOERR`: SQLite treats that code (like `SQLITE_FULL` and
//! `SQLITE_NOMEM`) as fatal to the whole transaction and rolls it back, whereas phenix leaves the
//! transaction usable after a failed statement (its appends past the committed count are discarded).
//!
//! (rusqlite's default for a function error would be `SQLITE_CONSTRAINT_FUNCTION`, which tells the host
//! a constraint failed; phenix never lets that through.)

use crate::vector::VectorError;
use rusqlite::ffi;

/// Everything phenix-sql reports to SQLite. Messages keep the `phenix: ` prefix and say what was wrong
/// and what was expected.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A bad argument or value from SQL (`SQLITE_ERROR`).
    #[error("phenix: {0}")]
    InvalidArgument(String),
    /// A value of the wrong SQL type where SQLite itself reports a datatype mismatch
    /// (`SQLITE_MISMATCH`).
    #[error("phenix: {0}")]
    Mismatch(String),
    /// A bad column definition in `CREATE VIRTUAL TABLE … USING phenix(…)` (`SQLITE_ERROR`).
    #[error("phenix: {0}")]
    Schema(#[from] crate::table::schema::SchemaError),
    /// A vector value that cannot be decoded (`SQLITE_ERROR`).
    #[error(transparent)]
    Vector(#[from] VectorError),
    /// An error of the vector store (phenix-core); the code follows its kind (see [`Error::code`]).
    #[error("phenix: {context}{source}")]
    Store {
        /// What phenix was doing, e.g. `phenix table t: ` (empty or ending in `: `).
        context: String,
        /// The store's error.
        #[source]
        source: phenix_core::Error,
    },
    /// A shadow table or vector file whose content is damaged (`SQLITE_CORRUPT_VTAB`).
    #[error("phenix: {0}")]
    Corrupt(String),
    /// A vector file that is missing (`SQLITE_CANTOPEN`).
    #[error("phenix: {0}")]
    CantOpen(String),
    /// A read transaction whose snapshot names a vector file a later compaction replaced
    /// (`SQLITE_BUSY`): retry the transaction.
    #[error("phenix: {0}")]
    SnapshotConflict(String),
    /// A file-system failure outside the store (creating or removing a directory) (`SQLITE_ERROR`).
    #[error("phenix: {0}")]
    Io(String),
    /// A panic caught at the FFI boundary (`SQLITE_ERROR`).
    #[error("phenix: internal error in {what}: {detail}")]
    Panic {
        /// The callback, e.g. `xFilter` or `phenix_mean`.
        what: String,
        /// The panic message.
        detail: String,
    },
    /// Long work stopped by `sqlite3_interrupt` or the progress callback (`SQLITE_INTERRUPT`); see
    /// [`crate::control`].
    #[error("phenix: interrupted")]
    Interrupted,
    /// An internal invariant did not hold (`SQLITE_INTERNAL`).
    #[error("phenix: internal: {0}")]
    Internal(String),
    /// An error SQLite returned to a statement phenix ran; passed on with its own code.
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
}

/// Result alias of phenix-sql.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A store error in context `context` (`"phenix table t: "`, `"phenix_backup: "`, or empty).
    pub fn store(context: impl Into<String>, source: phenix_core::Error) -> Self {
        Error::Store {
            context: context.into(),
            source,
        }
    }

    /// The SQLite result code of this error: the one mapping from phenix errors to codes.
    pub fn code(&self) -> i32 {
        use phenix_core::Error as C;
        match self {
            Error::InvalidArgument(_)
            | Error::Schema(_)
            | Error::Vector(_)
            | Error::Io(_)
            | Error::Panic { .. } => ffi::SQLITE_ERROR,
            Error::Mismatch(_) => ffi::SQLITE_MISMATCH,
            Error::Corrupt(_) => ffi::SQLITE_CORRUPT_VTAB,
            Error::CantOpen(_) => ffi::SQLITE_CANTOPEN,
            Error::SnapshotConflict(_) => ffi::SQLITE_BUSY,
            Error::Internal(_) => ffi::SQLITE_INTERNAL,
            Error::Interrupted => ffi::SQLITE_INTERRUPT,
            Error::Store { source, .. } => match source {
                C::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
                    ffi::SQLITE_CANTOPEN
                }
                C::BadMagic { .. }
                | C::HeaderChecksum { .. }
                | C::BadHeader { .. }
                | C::LayoutMismatch { .. }
                | C::Truncated { .. }
                | C::SlotOutOfRange { .. } => ffi::SQLITE_CORRUPT_VTAB,
                C::ReadOnly(_) => ffi::SQLITE_READONLY,
                C::Cancelled => ffi::SQLITE_INTERRUPT,
                _ => ffi::SQLITE_ERROR,
            },
            Error::Sqlite(e) => e
                .sqlite_error()
                .map_or(ffi::SQLITE_ERROR, |f| f.extended_code),
        }
    }

    /// This error about phenix table `name`: the message becomes `phenix: phenix table <name>: …`
    /// (one `phenix: ` prefix) and the class is kept.
    pub fn in_table(self, name: &str) -> Error {
        self.with_context(&format!("phenix table {name}: "))
    }

    /// This error with `prefix` (e.g. `phenix_backup: `) put before its message; the class is kept.
    pub fn with_context(self, prefix: &str) -> Error {
        let wrap = |m: String| format!("{prefix}{}", strip(&m));
        match self {
            Error::InvalidArgument(m) => Error::InvalidArgument(wrap(m)),
            Error::Mismatch(m) => Error::Mismatch(wrap(m)),
            Error::Corrupt(m) => Error::Corrupt(wrap(m)),
            Error::CantOpen(m) => Error::CantOpen(wrap(m)),
            Error::SnapshotConflict(m) => Error::SnapshotConflict(wrap(m)),
            Error::Io(m) => Error::Io(wrap(m)),
            Error::Internal(m) => Error::Internal(wrap(m)),
            Error::Interrupted => Error::Interrupted,
            Error::Store { context, source } => Error::Store {
                context: format!("{prefix}{context}"),
                source,
            },
            Error::Vector(v) => Error::InvalidArgument(wrap(v.to_string())),
            Error::Sqlite(rusqlite::Error::SqliteFailure(f, Some(m))) => Error::Sqlite(
                rusqlite::Error::SqliteFailure(f, Some(format!("phenix: {}", wrap(m)))),
            ),
            other => Error::InvalidArgument(wrap(other.to_string())),
        }
    }
}

impl From<String> for Error {
    fn from(m: String) -> Self {
        Error::InvalidArgument(m)
    }
}

/// `m` without a leading `phenix: `.
fn strip(m: &str) -> &str {
    m.strip_prefix("phenix: ").unwrap_or(m)
}

impl From<phenix_core::Error> for Error {
    fn from(e: phenix_core::Error) -> Self {
        Error::store("", e)
    }
}

/// The one conversion to SQLite: the code of [`Error::code`] and the message with its `phenix: `
/// prefix.
impl From<Error> for rusqlite::Error {
    fn from(e: Error) -> Self {
        match e {
            Error::Sqlite(e) => e,
            e => {
                let mut s = e.to_string();
                // SQLite takes the message as a C string: one with a NUL byte (quoted from a bad
                // argument) would be dropped whole, leaving only "SQL logic error".
                if s.contains('\0') {
                    s = s.replace('\0', "\\0");
                }
                if !s.starts_with("phenix: ") {
                    s.insert_str(0, "phenix: ");
                }
                rusqlite::Error::SqliteFailure(ffi::Error::new(e.code()), Some(s))
            }
        }
    }
}

/// A bad-argument error (`SQLITE_ERROR`) carrying `msg`, prefixed with `phenix: ` unless it already
/// is: shorthand for [`Error::InvalidArgument`] converted for SQLite.
pub fn sql_error(msg: impl std::fmt::Display) -> rusqlite::Error {
    let s = msg.to_string();
    Error::InvalidArgument(strip(&s).to_string()).into()
}

/// Runs `f`, turning a panic into an SQL error (`phenix: internal error in {what}: {panic message}`)
/// instead of letting it unwind into SQLite (which aborts the process). The one panic wrapper: every
/// virtual-table xMethod, savepoint hook and SQL function body of phenix runs inside it.
///
/// rusqlite 0.40 wraps scalar, aggregate and window callbacks in `catch_unwind` itself, but **not** the
/// virtual-table xMethods (`src/vtab/mod.rs` has no `catch_unwind`; its xRowid glue indexes nothing
/// but calls our code bare), so without this a panic there aborts the host.
///
/// With the test-only `panic-test` feature, `panic_test::hit` runs first and panics when the test
/// armed `what`'s callback kind.
pub fn catch_panic<T>(what: &str, f: impl FnOnce() -> rusqlite::Result<T>) -> rusqlite::Result<T> {
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        #[cfg(feature = "panic-test")]
        panic_test::hit(what);
        f()
    }));
    match r {
        Ok(r) => r,
        Err(payload) => {
            let detail = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic without a message".into());
            Err(Error::Panic {
                what: what.to_string(),
                detail,
            }
            .into())
        }
    }
}

/// A place inside a callback where the test-only `panic-test` feature can make it panic (armed as
/// `"<callback>: <place>"`, e.g. `"xCommit: store committed"`), to check that a failure part-way
/// through leaves consistent state. Does nothing without the feature.
#[inline(always)]
pub(crate) fn panic_point(_what: &str) {
    #[cfg(feature = "panic-test")]
    panic_test::hit(_what);
}

/// Registers scalar function `name` with its body inside [`catch_panic`] (rusqlite's own unwind catch
/// would report a panic as `SQLITE_CONSTRAINT_FUNCTION` without the `phenix: ` prefix).
pub(crate) fn create_scalar<F, T>(
    conn: &rusqlite::Connection,
    name: &'static str,
    n_arg: std::os::raw::c_int,
    flags: rusqlite::functions::FunctionFlags,
    f: F,
) -> rusqlite::Result<()>
where
    F: Fn(&rusqlite::functions::Context<'_>) -> rusqlite::Result<T> + Send + 'static,
    T: rusqlite::functions::SqlFnOutput,
{
    conn.create_scalar_function(name, n_arg, flags, move |ctx| {
        catch_panic(name, || f(ctx)).map_err(scalar_error)
    })
}

/// A scalar function's error as rusqlite should report it. rusqlite calls `sqlite3_result_error_code`
/// and then `sqlite3_result_error`, which sets the code back to `SQLITE_ERROR`; an interrupt keeps
/// `SQLITE_INTERRUPT` by going without a message (SQLite then says `interrupted`).
pub(crate) fn scalar_error(e: rusqlite::Error) -> rusqlite::Error {
    match e {
        rusqlite::Error::SqliteFailure(f, Some(_))
            if f.code == rusqlite::ErrorCode::OperationInterrupted =>
        {
            rusqlite::Error::SqliteFailure(f, None)
        }
        e => e,
    }
}

/// An aggregate (or window) function whose callbacks run inside [`catch_panic`] under `name`:
/// register `Guarded { name, inner }` instead of `inner`.
pub struct Guarded<F> {
    /// The SQL name, for the panic message.
    pub name: &'static str,
    /// The aggregate itself.
    pub inner: F,
}

impl<F, A, T> rusqlite::functions::Aggregate<A, T> for Guarded<F>
where
    F: rusqlite::functions::Aggregate<A, T>,
    A: std::panic::RefUnwindSafe + std::panic::UnwindSafe,
    T: rusqlite::functions::SqlFnOutput,
{
    fn init(&self, ctx: &mut rusqlite::functions::Context<'_>) -> rusqlite::Result<A> {
        catch_panic(self.name, || self.inner.init(ctx))
    }
    fn step(
        &self,
        ctx: &mut rusqlite::functions::Context<'_>,
        acc: &mut A,
    ) -> rusqlite::Result<()> {
        catch_panic(self.name, || self.inner.step(ctx, acc))
    }
    fn finalize(
        &self,
        ctx: &mut rusqlite::functions::Context<'_>,
        acc: Option<A>,
    ) -> rusqlite::Result<T> {
        catch_panic(self.name, || self.inner.finalize(ctx, acc))
    }
}

impl<F, A, T> rusqlite::functions::WindowAggregate<A, T> for Guarded<F>
where
    F: rusqlite::functions::WindowAggregate<A, T>,
    A: std::panic::RefUnwindSafe + std::panic::UnwindSafe,
    T: rusqlite::functions::SqlFnOutput,
{
    fn value(&self, acc: Option<&mut A>) -> rusqlite::Result<T> {
        catch_panic(self.name, || self.inner.value(acc))
    }
    fn inverse(
        &self,
        ctx: &mut rusqlite::functions::Context<'_>,
        acc: &mut A,
    ) -> rusqlite::Result<()> {
        catch_panic(self.name, || self.inner.inverse(ctx, acc))
    }
}

/// Test-only panic injection (cargo feature `panic-test`, never in a release build): the SQL function
/// `phenix_test_panic(kind)` arms one callback kind (`xFilter`, `xRowid`, `phenix_mean`, …, matched as
/// a prefix of the name given to [`catch_panic`]); the next callback of that kind panics inside the
/// wrapper, and the test checks that SQL sees an error instead of an abort. `phenix_test_panic('')`
/// disarms; it returns the kind that was armed before (empty once the panic fired).
#[cfg(feature = "panic-test")]
pub mod panic_test {
    use std::sync::Mutex;

    static ARMED: Mutex<String> = Mutex::new(String::new());

    /// Panics if `what` starts with the armed kind (and disarms, so the error path itself runs normally).
    pub fn hit(what: &str) {
        let mut a = ARMED.lock().unwrap_or_else(|e| e.into_inner());
        if !a.is_empty() && what.starts_with(a.as_str()) {
            a.clear();
            drop(a);
            panic!("injected panic in {what}");
        }
    }

    /// Registers `phenix_test_panic(kind)` (not through the panic wrapper: it is the switch).
    pub fn register(conn: &rusqlite::Connection) -> rusqlite::Result<()> {
        conn.create_scalar_function(
            "phenix_test_panic",
            1,
            rusqlite::functions::FunctionFlags::SQLITE_UTF8,
            |ctx| {
                let before = std::mem::replace(
                    &mut *ARMED.lock().unwrap_or_else(|e| e.into_inner()),
                    ctx.get::<String>(0)?,
                );
                Ok(before)
            },
        )
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
    use super::Error;

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

    /// Each class reaches SQLite with its code and one `phenix: ` prefix, also after a table context.
    #[test]
    fn classes_map_to_their_codes() {
        use rusqlite::ffi;
        let path = std::path::PathBuf::from("/x.phx");
        let corrupt = phenix_core::Error::HeaderChecksum {
            path: path.clone(),
            found: 1,
            computed: 2,
        };
        let missing = phenix_core::Error::Io {
            op: "open",
            path,
            source: std::io::ErrorKind::NotFound.into(),
        };
        let cases: Vec<(Error, i32, &str)> = vec![
            (Error::InvalidArgument("k".into()), ffi::SQLITE_ERROR, "phenix: phenix table t: k"),
            (Error::Mismatch("m".into()), ffi::SQLITE_MISMATCH, "phenix: phenix table t: m"),
            (Error::store("", corrupt), ffi::SQLITE_CORRUPT_VTAB, "phenix: phenix table t: /x.phx: vector file header is corrupt (checksum 0x00000001, computed 0x00000002)"),
            (Error::store("", missing), ffi::SQLITE_CANTOPEN, "phenix: phenix table t: open /x.phx: entity not found"),
            (Error::SnapshotConflict("s".into()), ffi::SQLITE_BUSY, "phenix: phenix table t: s"),
            (Error::Corrupt("c".into()), ffi::SQLITE_CORRUPT_VTAB, "phenix: phenix table t: c"),
        ];
        for (e, code, msg) in cases {
            let r: rusqlite::Error = e.in_table("t").into();
            match r {
                rusqlite::Error::SqliteFailure(f, Some(m)) => {
                    assert_eq!(f.extended_code, code, "{m}");
                    assert_eq!(m, msg);
                }
                other => panic!("{other:?}"),
            }
        }
    }
}
