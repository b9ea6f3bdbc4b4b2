//! I/O fault injection for tests (cargo feature `fault-injection`).
//!
//! Every point where the store touches the file system calls [`check`] first: creating a file, writing
//! rows, `fsync`ing (file or directory), truncating, and mapping. Without the feature `check` is an
//! inlined `Ok(())`. With it, a test arms one point with [`arm`] and the `n`-th following call at that
//! point fails with an injected `io::Error`, which the store reports like a real one (its path and
//! operation in the message). The state is process-wide: tests that arm faults must not run in parallel
//! with other store users in the same process (keep them in their own test binary, serialised).

/// A place where the store does I/O.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FaultPoint {
    /// Creating a vector file.
    Create,
    /// Writing rows (or the header) to a file.
    Write,
    /// `fsync`/`fdatasync` of a file or its directory.
    Fsync,
    /// Truncating a file.
    Truncate,
    /// Mapping (or re-mapping) a file.
    Map,
    /// Opening an existing file.
    Open,
}

impl FaultPoint {
    /// Every point, for tests that sweep them all.
    pub const ALL: [FaultPoint; 6] = [
        FaultPoint::Create,
        FaultPoint::Write,
        FaultPoint::Fsync,
        FaultPoint::Truncate,
        FaultPoint::Map,
        FaultPoint::Open,
    ];

    #[cfg(feature = "fault-injection")]
    fn index(self) -> usize {
        self as usize
    }
}

#[cfg(feature = "fault-injection")]
mod imp {
    use super::FaultPoint;
    use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

    const NONE: usize = usize::MAX;
    static ARMED: AtomicUsize = AtomicUsize::new(NONE);
    static COUNTDOWN: AtomicU64 = AtomicU64::new(0);
    static HITS: [AtomicU64; 6] = [const { AtomicU64::new(0) }; 6];
    static FIRED: AtomicU64 = AtomicU64::new(0);

    pub fn arm(point: FaultPoint, nth: u64) {
        COUNTDOWN.store(nth, Ordering::SeqCst);
        ARMED.store(point.index(), Ordering::SeqCst);
    }

    pub fn disarm() {
        ARMED.store(NONE, Ordering::SeqCst);
    }

    pub fn hits(point: FaultPoint) -> u64 {
        HITS[point.index()].load(Ordering::SeqCst)
    }

    pub fn fired() -> u64 {
        FIRED.load(Ordering::SeqCst)
    }

    pub fn check(point: FaultPoint) -> std::io::Result<()> {
        HITS[point.index()].fetch_add(1, Ordering::SeqCst);
        if ARMED.load(Ordering::SeqCst) != point.index() {
            return Ok(());
        }
        // Fail when the countdown reaches zero; later calls succeed again (one fault per arming).
        if COUNTDOWN.fetch_sub(1, Ordering::SeqCst) == 0 {
            ARMED.store(NONE, Ordering::SeqCst);
            FIRED.fetch_add(1, Ordering::SeqCst);
            return Err(std::io::Error::other(format!(
                "injected fault at {point:?}"
            )));
        }
        Ok(())
    }
}

/// Arms `point`: the call after `nth` more successful calls there (`nth = 0`: the next one) fails once.
#[cfg(feature = "fault-injection")]
pub fn arm(point: FaultPoint, nth: u64) {
    imp::arm(point, nth)
}

/// Disarms any armed point.
#[cfg(feature = "fault-injection")]
pub fn disarm() {
    imp::disarm()
}

/// How many times `point` was reached since the process started.
#[cfg(feature = "fault-injection")]
pub fn hits(point: FaultPoint) -> u64 {
    imp::hits(point)
}

/// How many injected faults fired since the process started.
#[cfg(feature = "fault-injection")]
pub fn fired() -> u64 {
    imp::fired()
}

/// Called before each I/O operation of the store.
#[cfg(feature = "fault-injection")]
pub(crate) fn check(point: FaultPoint) -> std::io::Result<()> {
    imp::check(point)
}

/// Called before each I/O operation of the store (no-op without `fault-injection`).
#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub(crate) fn check(_point: FaultPoint) -> std::io::Result<()> {
    Ok(())
}
