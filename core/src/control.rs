//! Stopping and watching long work from outside: a [`Control`] that scans and batched searches poll
//! once per chunk of rows (never per row).
//!
//! The owner builds a `Control` with a hook, passes it in [`crate::topk::SearchParams::control`], and
//! the workers call [`Control::step`] after each chunk with the rows it covered. The hook gets the
//! running total and answers whether to go on; once it says stop (or [`Control::stop`] is called) every
//! worker leaves at its next chunk and the search returns [`crate::Error::Cancelled`]. The hook runs on
//! whichever worker thread finished the chunk, so it must be cheap and thread-safe (an atomic load, a
//! clock read); phenix-sql's hook reads SQLite's interrupt flag and reports progress from the thread
//! running the statement only.
//!
//! ```
//! use phenix_core::control::Control;
//! use std::sync::atomic::{AtomicBool, Ordering};
//! static CANCEL: AtomicBool = AtomicBool::new(false);
//! let c = Control::new(|_done| !CANCEL.load(Ordering::Relaxed));
//! assert!(c.step(100));
//! CANCEL.store(true, Ordering::Relaxed);
//! assert!(!c.step(100));
//! assert!(c.stopped() && c.done() == 200);
//! ```

use crate::error::{Error, Result};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// The hook: gets the units done so far (all workers together), returns `false` to stop.
pub type Hook = dyn Fn(u64) -> bool + Send + Sync;

/// A stop flag and a progress counter shared by the workers of one operation.
pub struct Control {
    stop: AtomicBool,
    done: AtomicU64,
    hook: Option<Box<Hook>>,
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Control")
            .field("stopped", &self.stopped())
            .field("done", &self.done())
            .finish()
    }
}

impl Default for Control {
    fn default() -> Self {
        Control {
            stop: AtomicBool::new(false),
            done: AtomicU64::new(0),
            hook: None,
        }
    }
}

impl Control {
    /// A control whose `hook` is asked after every chunk whether to go on.
    pub fn new(hook: impl Fn(u64) -> bool + Send + Sync + 'static) -> Self {
        Control {
            hook: Some(Box::new(hook)),
            ..Control::default()
        }
    }

    /// Records `n` more units done and asks the hook; `false` once the work is to stop (and from then
    /// on).
    #[inline]
    pub fn step(&self, n: u64) -> bool {
        let done = self.done.fetch_add(n, Ordering::Relaxed).saturating_add(n);
        if self.stopped() {
            return false;
        }
        if let Some(h) = &self.hook {
            if !h(done) {
                self.stop();
                return false;
            }
        }
        true
    }

    /// Asks the work to stop at the next chunk.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    /// Whether the work was asked to stop.
    #[inline]
    pub fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// Units recorded so far.
    pub fn done(&self) -> u64 {
        self.done.load(Ordering::Relaxed)
    }

    /// `Err(Error::Cancelled)` once stopped.
    pub fn check(&self) -> Result<()> {
        if self.stopped() {
            Err(Error::Cancelled)
        } else {
            Ok(())
        }
    }
}

/// [`Control::step`] on an optional control (`true` without one).
#[inline]
pub(crate) fn step(c: Option<&Control>, n: u64) -> bool {
    c.is_none_or(|c| c.step(n))
}

/// [`Control::check`] on an optional control.
#[inline]
pub(crate) fn check(c: Option<&Control>) -> Result<()> {
    c.map_or(Ok(()), Control::check)
}
