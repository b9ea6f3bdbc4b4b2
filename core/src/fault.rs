//! I/O fault injection and crash images for tests.
//!
//! The seam is per store: a [`FaultPlan`] is shared (`Arc`) between a test and the backends it governs,
//! so tests that inject faults run in parallel, each with its own plan.
//!
//! - [`FaultyBackend`] wraps any [`StorageBackend`] and asks its plan before each operation (write,
//!   sync, set_len, a new mapping).
//! - [`CrashBackend`] keeps the bytes written apart from the bytes made durable (by `sync_data`), like
//!   a disk with a volatile cache, and hands out crash images: what a file could hold after power loss
//!   at this instant. It asks its plan too, so a test can fail the n-th operation and then crash.
//! - Stores that the SQL layer opens by path take their plan from `scope` (cargo feature
//!   `fault-injection`): a test attaches a plan to its own directory and every store created or opened
//!   under it, and every directory sync there, obeys that plan. Without the feature, path-opened stores
//!   never look for a plan.

use crate::store::backend::{short_storage, AlignedBuf, StorageBackend};
use std::fmt;
use std::io;
use std::path::Path;
#[cfg(feature = "fault-injection")]
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

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
}

const NONE: usize = usize::MAX;
const ANY: usize = usize::MAX - 1;

/// When to fail: at most one armed fault at a time; it fires once, then the plan is disarmed.
#[derive(Default)]
pub struct FaultPlan {
    armed: AtomicUsize,
    countdown: AtomicU64,
    hits: [AtomicU64; 6],
    fired: AtomicU64,
}

impl fmt::Debug for FaultPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultPlan")
            .field("fired", &self.fired())
            .finish()
    }
}

impl FaultPlan {
    /// A disarmed plan.
    pub fn new() -> Arc<Self> {
        Arc::new(FaultPlan {
            armed: AtomicUsize::new(NONE),
            ..Default::default()
        })
    }
    /// Arms `point`: the call there after `nth` more successful ones (`nth = 0`: the next) fails once.
    pub fn arm(&self, point: FaultPoint, nth: u64) {
        self.countdown.store(nth, Ordering::SeqCst);
        self.armed.store(point as usize, Ordering::SeqCst);
    }
    /// Arms every point: the operation after `nth` more successful ones, of any kind, fails once.
    pub fn arm_any(&self, nth: u64) {
        self.countdown.store(nth, Ordering::SeqCst);
        self.armed.store(ANY, Ordering::SeqCst);
    }
    /// Disarms the plan.
    pub fn disarm(&self) {
        self.armed.store(NONE, Ordering::SeqCst);
    }
    /// How many times `point` was reached under this plan.
    pub fn hits(&self, point: FaultPoint) -> u64 {
        self.hits[point as usize].load(Ordering::SeqCst)
    }
    /// How many injected faults fired under this plan.
    pub fn fired(&self) -> u64 {
        self.fired.load(Ordering::SeqCst)
    }
    /// Called before each I/O operation at `point`: the injected error, if this is the armed call.
    pub fn check(&self, point: FaultPoint) -> io::Result<()> {
        self.hits[point as usize].fetch_add(1, Ordering::SeqCst);
        let armed = self.armed.load(Ordering::SeqCst);
        if armed != point as usize && armed != ANY {
            return Ok(());
        }
        if self.countdown.fetch_sub(1, Ordering::SeqCst) == 0 {
            self.armed.store(NONE, Ordering::SeqCst);
            self.fired.fetch_add(1, Ordering::SeqCst);
            return Err(io::Error::other(format!("injected fault at {point:?}")));
        }
        Ok(())
    }
}

/// Checks `plan` (if any) at `point`.
pub(crate) fn check(plan: Option<&FaultPlan>, point: FaultPoint) -> io::Result<()> {
    plan.map_or(Ok(()), |p| p.check(point))
}

/// A backend whose operations first ask a [`FaultPlan`].
pub struct FaultyBackend<B> {
    inner: B,
    plan: Arc<FaultPlan>,
    /// The longest mapping handed out since the last shrink: only a longer one counts as a new map.
    mapped: usize,
}

impl<B: fmt::Debug> fmt::Debug for FaultyBackend<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultyBackend")
            .field("inner", &self.inner)
            .finish()
    }
}

impl<B: StorageBackend> FaultyBackend<B> {
    /// Wraps `inner` under `plan`.
    pub fn new(inner: B, plan: Arc<FaultPlan>) -> Self {
        FaultyBackend {
            inner,
            plan,
            mapped: 0,
        }
    }
}

impl<B: StorageBackend> StorageBackend for FaultyBackend<B> {
    fn len(&self) -> io::Result<u64> {
        self.inner.len()
    }
    fn read(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(offset, buf)
    }
    fn write(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.plan.check(FaultPoint::Write)?;
        self.inner.write(offset, data)
    }
    fn set_len(&mut self, len: u64) -> io::Result<()> {
        self.plan.check(FaultPoint::Truncate)?;
        if (self.mapped as u64) > len {
            self.mapped = 0;
        }
        self.inner.set_len(len)
    }
    fn sync_data(&mut self) -> io::Result<()> {
        self.plan.check(FaultPoint::Fsync)?;
        self.inner.sync_data()
    }
    fn map(&mut self, len: usize) -> io::Result<&[u8]> {
        if len > self.mapped {
            self.plan.check(FaultPoint::Map)?;
        }
        let m = self.inner.map(len)?;
        self.mapped = self.mapped.max(len);
        Ok(m)
    }
    fn path(&self) -> Option<&Path> {
        self.inner.path()
    }
}

/// One operation not yet made durable.
#[derive(Clone, Debug)]
enum Pending {
    Write { offset: u64, data: Vec<u8> },
    SetLen(u64),
}

#[derive(Default)]
struct CrashState {
    live: AlignedBuf,
    durable: AlignedBuf,
    unsynced: Vec<Pending>,
}

/// An in-memory disk with a volatile cache: writes and length changes reach [`CrashBackend::written`]
/// at once and [`CrashBackend::durable`] only at `sync_data`. Clones share the same disk, so a test
/// keeps one handle while the store owns another.
#[derive(Clone)]
pub struct CrashBackend {
    state: Arc<Mutex<CrashState>>,
    plan: Arc<FaultPlan>,
    /// This handle's copy of the live bytes handed out by `map` (a mapping cannot borrow the shared
    /// state through its lock); refreshed whenever a longer or newer view is asked for.
    view: AlignedBuf,
    view_epoch: u64,
    epoch: Arc<AtomicU64>,
}

impl fmt::Debug for CrashBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.lock();
        f.debug_struct("CrashBackend")
            .field("written", &s.live.len())
            .field("durable", &s.durable.len())
            .field("unsynced ops", &s.unsynced.len())
            .finish()
    }
}

impl CrashBackend {
    /// An empty disk whose operations obey `plan`.
    pub fn new(plan: Arc<FaultPlan>) -> Self {
        Self::from_image(&[], plan)
    }
    /// A disk that holds `image`, durably (for example a crash image, to reopen after a crash).
    pub fn from_image(image: &[u8], plan: Arc<FaultPlan>) -> Self {
        let buf = AlignedBuf::from_bytes(image);
        CrashBackend {
            state: Arc::new(Mutex::new(CrashState {
                live: buf.clone(),
                durable: buf,
                unsynced: Vec::new(),
            })),
            plan,
            view: AlignedBuf::default(),
            view_epoch: u64::MAX,
            epoch: Arc::new(AtomicU64::new(0)),
        }
    }
    fn lock(&self) -> MutexGuard<'_, CrashState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
    fn changed(&self) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
    }
    /// Every byte written so far (what a reader of the file sees now).
    pub fn written(&self) -> Vec<u8> {
        self.lock().live.bytes().to_vec()
    }
    /// The bytes made durable by the last `sync_data` (what survives a crash for sure).
    pub fn durable(&self) -> Vec<u8> {
        self.lock().durable.bytes().to_vec()
    }
    /// Operations written but not yet synced.
    pub fn unsynced_ops(&self) -> usize {
        self.lock().unsynced.len()
    }
    /// One possible content after a power loss now: the durable bytes, then each unsynced operation
    /// in order, applied whole, torn (a write cut at a 512-byte sector boundary) or lost, as `choose`
    /// decides (`choose(i, sectors)` returns how many of the `sectors` sectors of operation `i` to
    /// keep; a length change is one sector). Real disks may also reorder unsynced writes; a later
    /// write reaching the disk without an earlier one is modelled by keeping 0 sectors of the earlier.
    pub fn crash_image(&self, mut choose: impl FnMut(usize, usize) -> usize) -> Vec<u8> {
        let s = self.lock();
        let mut img = s.durable.clone();
        for (i, op) in s.unsynced.iter().enumerate() {
            match op {
                Pending::Write { offset, data } => {
                    let sectors = data.len().div_ceil(512).max(1);
                    let keep = choose(i, sectors).min(sectors);
                    let n = (keep * 512).min(data.len());
                    if n > 0 {
                        img.write(*offset, &data[..n]);
                    }
                }
                Pending::SetLen(len) => {
                    if choose(i, 1) > 0 {
                        img.set_len(*len as usize);
                    }
                }
            }
        }
        img.bytes().to_vec()
    }
}

impl StorageBackend for CrashBackend {
    fn len(&self) -> io::Result<u64> {
        Ok(self.lock().live.len() as u64)
    }
    fn read(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        Ok(self.lock().live.read(offset, buf))
    }
    fn write(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.plan.check(FaultPoint::Write)?;
        let mut s = self.lock();
        s.live.write(offset, data);
        s.unsynced.push(Pending::Write {
            offset,
            data: data.to_vec(),
        });
        drop(s);
        self.changed();
        Ok(())
    }
    fn set_len(&mut self, len: u64) -> io::Result<()> {
        self.plan.check(FaultPoint::Truncate)?;
        let mut s = self.lock();
        s.live.set_len(len as usize);
        s.unsynced.push(Pending::SetLen(len));
        drop(s);
        self.changed();
        Ok(())
    }
    fn sync_data(&mut self) -> io::Result<()> {
        self.plan.check(FaultPoint::Fsync)?;
        let mut s = self.lock();
        s.durable = s.live.clone();
        s.unsynced.clear();
        Ok(())
    }
    fn map(&mut self, len: usize) -> io::Result<&[u8]> {
        let epoch = self.epoch.load(Ordering::SeqCst);
        if self.view.len() < len || self.view_epoch != epoch {
            self.plan.check(FaultPoint::Map)?;
            let s = self.lock();
            if s.live.len() < len {
                return Err(short_storage(s.live.len() as u64, len as u64));
            }
            let copy = AlignedBuf::from_bytes(s.live.bytes());
            drop(s);
            self.view = copy;
            self.view_epoch = epoch;
        }
        if self.view.len() < len {
            return Err(short_storage(self.view.len() as u64, len as u64));
        }
        Ok(&self.view.bytes()[..len])
    }
}

/// Stores opened by path under a directory obey a plan while the returned guard lives.
///
/// With the `fault-injection` feature: every [`VectorStore::create`](crate::store::VectorStore::create)
/// and [`VectorStore::open`](crate::store::VectorStore::open) of a path inside `dir` (and
/// [`sync_parent_dir`](crate::store::sync_parent_dir) of such a path) checks `plan` at
/// [`FaultPoint::Create`] / [`FaultPoint::Open`] / [`FaultPoint::Fsync`], and the store it returns
/// wraps its file in a [`FaultyBackend`] under `plan`. Tests in one process use distinct directories,
/// so they do not see each other's faults.
#[cfg(feature = "fault-injection")]
pub fn scope(dir: &Path, plan: Arc<FaultPlan>) -> ScopeGuard {
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    scopes().push((dir.clone(), plan));
    ScopeGuard { dir }
}

/// Removes its directory's plan on drop.
#[cfg(feature = "fault-injection")]
#[must_use = "the plan is detached when the guard is dropped"]
#[derive(Debug)]
pub struct ScopeGuard {
    dir: PathBuf,
}

#[cfg(feature = "fault-injection")]
impl Drop for ScopeGuard {
    fn drop(&mut self) {
        scopes().retain(|(d, _)| *d != self.dir);
    }
}

#[cfg(feature = "fault-injection")]
type Scopes = Vec<(PathBuf, Arc<FaultPlan>)>;

#[cfg(feature = "fault-injection")]
fn scopes() -> MutexGuard<'static, Scopes> {
    static SCOPES: Mutex<Scopes> = Mutex::new(Vec::new());
    SCOPES.lock().unwrap_or_else(|e| e.into_inner())
}

/// The plan attached to a directory holding `path`, if any (always `None` without `fault-injection`).
#[cfg(feature = "fault-injection")]
pub(crate) fn plan_for(path: &Path) -> Option<Arc<FaultPlan>> {
    let s = scopes();
    if s.is_empty() {
        return None;
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    s.iter()
        .filter(|(d, _)| dir.starts_with(d))
        .max_by_key(|(d, _)| d.as_os_str().len())
        .map(|(_, p)| p.clone())
}

/// The plan attached to a directory holding `path` (never any without `fault-injection`).
#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub(crate) fn plan_for(_path: &Path) -> Option<Arc<FaultPlan>> {
    None
}
