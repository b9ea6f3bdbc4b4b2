//! Harness: panic counting, per-thread allocation tracking, error classification.

use proptest::test_runner::{Config, TestRunner};
use rusqlite::types::Value;
use rusqlite::Connection;
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, Once};

/// Panics on phenix's unnamed worker threads (featurizer, search), whichever test caused them.
pub(crate) static WORKER_PANICS: Mutex<Vec<String>> = Mutex::new(Vec::new());

thread_local! {
    /// Set while this thread runs SQL (phenix code): a panic then counts.
    static IN_SQL: Cell<bool> = const { Cell::new(false) };
    /// Panics while this thread ran SQL.
    static PANICS: std::cell::RefCell<Vec<String>> = const { std::cell::RefCell::new(Vec::new()) };
    /// Bytes allocated and not freed by this thread since tracking started, and the peak.
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

pub(crate) fn install_panic_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let prev = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            // Test threads are named after their test; phenix's own worker threads (featurizer,
            // search) are unnamed. A test's own failed assertion runs outside `IN_SQL`.
            if IN_SQL.with(Cell::get) {
                let _ = PANICS.try_with(|p| p.borrow_mut().push(info.to_string()));
            } else if std::thread::current().name().is_none() {
                WORKER_PANICS
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(info.to_string());
            }
            prev(info);
        }));
    });
}

/// Runs `f` (SQL through phenix) with panic counting on.
pub(crate) fn in_sql<T>(f: impl FnOnce() -> T) -> T {
    install_panic_hook();
    let was = IN_SQL.with(|s| s.replace(true));
    let r = f();
    IN_SQL.with(|s| s.set(was));
    r
}

/// Asserts that phenix did not panic (caught or not) while this test ran SQL, nor on a worker thread.
pub(crate) fn assert_no_panics() {
    let mine = PANICS.with(|p| p.borrow().clone());
    assert!(
        mine.is_empty(),
        "phenix panicked (caught or not): {mine:#?}"
    );
    let w = WORKER_PANICS.lock().unwrap_or_else(|e| e.into_inner());
    assert!(w.is_empty(), "a phenix worker thread panicked: {w:#?}");
}

/// Counts this thread's heap use (for "a huge k allocates nothing in proportion to k").
pub(crate) struct Counting;

pub(crate) fn track(delta: isize) {
    let _ = LIVE.try_with(|l| {
        let v = l.get() + delta;
        l.set(v);
        let _ = PEAK.try_with(|p| p.set(p.get().max(v)));
    });
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged, so `System`'s
// guarantees hold; the only addition is bookkeeping in const-initialised thread-locals without
// destructors (`try_with` never panics, and never allocates).
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        // SAFETY: forwarded as is (caller upholds `GlobalAlloc::alloc`'s contract).
        let p = unsafe { System.alloc(l) };
        if !p.is_null() {
            track(l.size() as isize);
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        track(-(l.size() as isize));
        // SAFETY: `p` was allocated by `System` with layout `l` (every allocation goes through here).
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        // SAFETY: forwarded as is.
        let p = unsafe { System.alloc_zeroed(l) };
        if !p.is_null() {
            track(l.size() as isize);
        }
        p
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        // SAFETY: forwarded as is: `p` came from `System` with layout `l`.
        let q = unsafe { System.realloc(p, l, new) };
        if !q.is_null() {
            track(new as isize - l.size() as isize);
        }
        q
    }
}

#[global_allocator]
pub(crate) static ALLOC: Counting = Counting;

/// The peak of this thread's extra heap use while `f` runs, in bytes.
pub(crate) fn peak_alloc<T>(f: impl FnOnce() -> T) -> (T, isize) {
    let base = LIVE.with(Cell::get);
    PEAK.with(|p| p.set(base));
    let r = f();
    (r, PEAK.with(Cell::get) - base)
}

/// Property-test case count: `default` unless `PHENIX_PROPTEST_CASES` is set.
pub(crate) fn cases(default: u32) -> u32 {
    std::env::var("PHENIX_PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

pub(crate) fn runner(default_cases: u32) -> TestRunner {
    TestRunner::new(Config {
        cases: cases(default_cases),
        failure_persistence: None,
        ..Config::default()
    })
}

pub(crate) use crate::common::{mem, open};

/// A connection without phenix, to write shadow tables the way another program would.
pub(crate) fn plain(path: &Path) -> Connection {
    Connection::open(path).unwrap()
}

/// Runs one statement through phenix: its first column of every row, or the error.
pub(crate) fn rows(c: &Connection, sql: &str) -> rusqlite::Result<Vec<Value>> {
    in_sql(|| {
        let mut st = c.prepare(sql)?;
        let v = st
            .query_map([], |r| r.get::<_, Value>(0))?
            .collect::<rusqlite::Result<Vec<_>>>();
        v
    })
}

pub(crate) fn one(c: &Connection, sql: &str) -> rusqlite::Result<Value> {
    rows(c, sql).map(|mut v| {
        assert_eq!(v.len(), 1, "{sql}: expected one row, got {v:?}");
        v.remove(0)
    })
}

/// The message of a phenix error: `SQLITE_ERROR` whose text starts with `phenix: `.
pub(crate) fn phenix_msg(e: &rusqlite::Error, ctx: &str) -> String {
    match e {
        rusqlite::Error::SqliteFailure(f, Some(msg)) => {
            assert_eq!(
                f.extended_code,
                rusqlite::ffi::SQLITE_ERROR,
                "{ctx}: not SQLITE_ERROR: {msg}"
            );
            assert!(
                msg.starts_with("phenix: "),
                "{ctx}: the message does not start with `phenix: `: {msg}"
            );
            assert!(
                !msg.contains("internal error") && !msg.contains("panic"),
                "{ctx}: a panic became the error: {msg}"
            );
            msg.clone()
        }
        other => panic!("{ctx}: not an SQLite error with a message: {other:?}"),
    }
}

pub(crate) fn expect_err<T: std::fmt::Debug>(r: rusqlite::Result<T>, ctx: &str) -> String {
    match r {
        Ok(v) => panic!("{ctx}: expected an error, got {v:?}"),
        Err(e) => phenix_msg(&e, ctx),
    }
}

pub(crate) fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

pub(crate) use crate::common::{f16_bytes as f16s_le, f32_bytes as f32s_le};

pub(crate) fn blob_lit(b: &[u8]) -> String {
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("x'{h}'")
}
