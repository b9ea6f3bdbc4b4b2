//! Cancellation and progress of long phenix work: KNN scans, `phenix_retrieve_all`, `'build-index'`,
//! `phenix_embed_molecules`, compaction (`'optimize'`) and `phenix_backup`.
//!
//! Each long operation runs under an [`Op`]: a [`phenix_core::control::Control`] whose hook, polled
//! once per chunk of rows by every worker thread,
//!
//! - reads SQLite's interrupt flag of the statement's connection (`sqlite3_is_interrupted`, SQLite
//!   3.41 or later; on older hosts the flag cannot be read and the work runs to its end, after which
//!   SQLite reports the interrupt itself), and
//! - on the thread running the statement, calls the process-wide progress callback
//!   ([`set_progress`]) at most once per interval; the callback may ask to stop.
//!
//! A stopped operation returns [`crate::Error::Interrupted`] (`SQLITE_INTERRUPT`, "phenix:
//! interrupted") and changes nothing: the work of a statement is discarded as for any failed statement.
//! Code that cannot take a `Control` argument (the KNN ranking shared by several callers) finds the
//! innermost running operation of its thread with `current()`.

use phenix_core::control::Control;
use rusqlite::ffi;
use std::cell::RefCell;
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

/// One progress report.
#[derive(Debug, Clone, Copy)]
pub struct Progress<'a> {
    /// The connection running the statement (rusqlite: `Connection::handle()`).
    pub db: *mut ffi::sqlite3,
    /// The operation: `knn`, `retrieve_all`, `embed_molecules`, `optimize`, `backup` or `build_index`.
    pub op: &'a str,
    /// Work units done, never more than `total`, never decreasing within one operation.
    pub done: u64,
    /// Work units of the whole operation (rows, molecules, or rows plus queries; only `done / total`
    /// is meant to be shown).
    pub total: u64,
}

/// A progress callback: [`ControlFlow::Break`] stops the operation (it then fails with
/// `SQLITE_INTERRUPT`).
pub type ProgressFn = dyn Fn(&Progress<'_>) -> ControlFlow<()> + Send + Sync;

struct Callback {
    f: Arc<ProgressFn>,
    every: Duration,
}

static CALLBACK: RwLock<Option<Arc<Callback>>> = RwLock::new(None);

/// Installs (or with `None` removes) the process-wide progress callback.
///
/// It is called on the thread running the statement, for every connection of the process, from
/// operations that run at least `every`: at most once per `every` while they run (at chunk ends, so
/// a little later than `every` at times), and once more with `done == total` when such an operation
/// finishes. With `every` zero it is called after every chunk. It must not use the connection it
/// reports on. Operations already running keep the callback they started with.
pub fn set_progress(f: Option<Arc<ProgressFn>>, every: Duration) {
    let cb = f.map(|f| Arc::new(Callback { f, every }));
    *CALLBACK.write().unwrap_or_else(|e| e.into_inner()) = cb;
}

thread_local! {
    /// The operations running on this thread, innermost last.
    static RUNNING: RefCell<Vec<Arc<Control>>> = const { RefCell::new(Vec::new()) };
}

/// The innermost operation running on this thread, if any.
pub(crate) fn current() -> Option<Arc<Control>> {
    RUNNING.with(|r| r.borrow().last().cloned())
}

/// A long operation of one statement; ends when dropped.
pub(crate) struct Op {
    control: Arc<Control>,
    report: Option<Arc<Report>>,
}

/// What the hook needs to call the progress callback.
struct Report {
    db: usize,
    name: &'static str,
    total: u64,
    cb: Arc<Callback>,
    thread: std::thread::ThreadId,
    start: Instant,
    /// Nanoseconds after `start` of the last call (or of the start).
    last: AtomicU64,
    /// Units reported last (calls never go backwards).
    shown: AtomicU64,
    called: AtomicBool,
}

impl Report {
    /// Calls the callback (on the statement's thread, once per interval); `false` to stop.
    fn tick(&self, done: u64, force: bool) -> bool {
        if std::thread::current().id() != self.thread {
            return true;
        }
        let now = self.start.elapsed().as_nanos() as u64;
        let every = self.cb.every.as_nanos() as u64;
        if !force && now.saturating_sub(self.last.load(Ordering::Relaxed)) < every {
            return true;
        }
        let done = done.min(self.total).max(self.shown.load(Ordering::Relaxed));
        self.last.store(now, Ordering::Relaxed);
        self.shown.store(done, Ordering::Relaxed);
        self.called.store(true, Ordering::Relaxed);
        let p = Progress {
            db: self.db as *mut ffi::sqlite3,
            op: self.name,
            done,
            total: self.total,
        };
        // A panicking callback stops the operation rather than unwinding through phenix.
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (self.cb.f)(&p)))
            .is_ok_and(|f| f.is_continue())
    }
}

impl Op {
    /// Starts operation `name` of `total` units on connection `db`, reporting progress.
    pub(crate) fn begin(db: *mut ffi::sqlite3, name: &'static str, total: u64) -> Op {
        let cb = CALLBACK.read().unwrap_or_else(|e| e.into_inner()).clone();
        let report = cb.map(|cb| {
            Arc::new(Report {
                db: db as usize,
                name,
                total,
                cb,
                thread: std::thread::current().id(),
                start: Instant::now(),
                last: AtomicU64::new(0),
                shown: AtomicU64::new(0),
                called: AtomicBool::new(false),
            })
        });
        Self::with(db, report)
    }

    /// An operation that only watches the interrupt flag (no progress of its own), e.g. the exact
    /// re-ranking inside `phenix_retrieve_all`, whose progress the enclosing operation reports.
    pub(crate) fn silent(db: *mut ffi::sqlite3) -> Op {
        Self::with(db, None)
    }

    fn with(db: *mut ffi::sqlite3, report: Option<Arc<Report>>) -> Op {
        // A null handle (unit tests) has no flag to read.
        let interrupted = crate::host::is_interrupted_fn().filter(|_| !db.is_null());
        let db_addr = db as usize;
        let r = report.clone();
        let control = Arc::new(Control::new(move |done| {
            if let Some(f) = interrupted {
                // SAFETY: `db` is the connection running this statement, open for the whole call (the
                // workers are joined before the statement returns); sqlite3_is_interrupted only reads
                // an atomic flag and may be called from any thread.
                if unsafe { f(db_addr as *mut ffi::sqlite3) } != 0 {
                    return false;
                }
            }
            r.as_ref().is_none_or(|r| r.tick(done, false))
        }));
        RUNNING.with(|v| v.borrow_mut().push(control.clone()));
        Op { control, report }
    }

    /// The control to pass to phenix-core.
    pub(crate) fn control(&self) -> &Control {
        &self.control
    }

    /// Records `n` more units (for loops outside phenix-core); `Err(Interrupted)` once stopped.
    pub(crate) fn step(&self, n: u64) -> Result<(), crate::Error> {
        if self.control.step(n) {
            Ok(())
        } else {
            Err(crate::Error::Interrupted)
        }
    }

    /// `Err(Interrupted)` if the work was stopped (maps a core result's `Cancelled` too).
    pub(crate) fn check(&self) -> Result<(), crate::Error> {
        self.step(0)
    }

    /// The operation finished: a callback that was called gets its final `done == total`.
    pub(crate) fn finish(self) {
        if let Some(r) = &self.report {
            if r.called.load(Ordering::Relaxed) {
                r.tick(r.total, true);
            }
        }
    }
}

impl Drop for Op {
    fn drop(&mut self) {
        RUNNING.with(|v| {
            let mut v = v.borrow_mut();
            if let Some(i) = v.iter().rposition(|c| Arc::ptr_eq(c, &self.control)) {
                v.remove(i);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[test]
    fn nested_operations_stack_and_unwind() {
        assert!(current().is_none());
        let a = Op::silent(std::ptr::null_mut());
        {
            let b = Op::silent(std::ptr::null_mut());
            assert!(Arc::ptr_eq(&current().unwrap(), &b.control));
        }
        assert!(Arc::ptr_eq(&current().unwrap(), &a.control));
        drop(a);
        assert!(current().is_none());
    }

    #[test]
    fn reports_are_monotone_capped_and_end_at_the_total() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        // Only this test installs a callback in this binary's unit tests.
        set_progress(
            Some(Arc::new(move |p: &Progress<'_>| {
                s.lock().unwrap().push((p.op.to_string(), p.done, p.total));
                if p.done >= 30 && p.done < p.total {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                }
            })),
            Duration::ZERO,
        );
        let op = Op::begin(std::ptr::null_mut(), "test", 100);
        op.step(10).unwrap();
        op.step(10).unwrap();
        op.finish();
        let op = Op::begin(std::ptr::null_mut(), "stop", 40);
        op.step(20).unwrap();
        assert!(op.step(20).is_ok(), "done == total goes on");
        let op2 = Op::begin(std::ptr::null_mut(), "stop", 100);
        op2.step(20).unwrap();
        assert!(matches!(op2.step(20), Err(crate::Error::Interrupted)));
        assert!(op2.check().is_err(), "a stop is sticky");
        drop(op2);
        drop(op);
        set_progress(None, Duration::ZERO);
        let v = seen.lock().unwrap().clone();
        assert_eq!(
            v,
            vec![
                ("test".into(), 10, 100),
                ("test".into(), 20, 100),
                ("test".into(), 100, 100),
                ("stop".into(), 20, 40),
                ("stop".into(), 40, 40),
                ("stop".into(), 20, 100),
                ("stop".into(), 40, 100),
            ]
        );
    }
}
