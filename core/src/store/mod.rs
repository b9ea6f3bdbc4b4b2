//! The vector store: one column of fixed-dimension vectors, append-only, memory-mapped.
//!
//! File layout (all integers little-endian; byte-exact description in `docs/design.md`):
//!
//! ```text
//! [0, 4096)                   header (magic, version, dim, element type, metric, stride, table id,
//!                             generation, CRC-32 of the header fields)
//! [4096 + i*stride, +stride)  row i: dim elements, zero-padded to a multiple of 64 bytes
//! ```
//!
//! The number of *committed* rows is not in the file: the caller keeps it (the SQL layer keeps it in a
//! SQLite shadow table, so it commits atomically with SQLite's own transaction) and passes it to
//! [`VectorStore::open`]. Rows past it are leftovers of an unfinished transaction; readers never look at
//! them and only the writer removes them ([`VectorStore::truncate`]), because shrinking a file that
//! another process has mapped would kill that process with SIGBUS when it touched the lost pages.
//!
//! # Mapping contract
//! A file is mapped read-only. phenix never rewrites bytes below the committed length (updates append a
//! new row; compaction writes a new file), so a mapped committed row never changes under a reader. A
//! process outside phenix that rewrites or shrinks the file breaks this contract; the header checksum
//! and the length check on open catch the common accidents, and the store checks the file's length
//! again at every [`VectorStore::refresh`] and [`VectorStore::view`] (and before a point read past the
//! rows last checked), so rows lost to a truncation are [`Error::Truncated`] instead of a SIGBUS when
//! the lost pages are touched. (A truncation racing with a scan already under way can still fault.)
//!
//! # Backends
//! The bytes live in a [`StorageBackend`]: [`FileBackend`] for files, [`MemoryBackend`] for `:memory:`
//! and temp databases, and the test backends of [`crate::fault`] (fail on demand, model a crash).
//! [`VectorStore::create_on`] and [`VectorStore::open_on`] take any backend; the path-based
//! constructors use a file.

pub mod backend;
pub mod header;
pub mod ids;

pub use backend::{FileBackend, MemoryBackend, StorageBackend};
pub use header::{
    random_table_id, Header, Layout, FORMAT_VERSION, HEADER_LEN, MAGIC, MAX_DIM, ROW_ALIGN,
};
pub use ids::{IdColumn, IdsSnapshot};

use crate::error::{Error, Result};
use crate::fault::{self, FaultPlan, FaultPoint, FaultyBackend};
use crate::kernels::Row;
use crate::types::ElemType;
use std::fs::File;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Pending appends are written to the backend once they reach this many bytes.
const FLUSH_BYTES: usize = 1 << 20;

/// A column of vectors over a [`StorageBackend`]. See the module docs for the file format and the
/// mapping contract.
pub struct VectorStore {
    header: Header,
    committed: u64,
    backend: Box<dyn StorageBackend>,
    /// Complete rows in the backend as far as this handle knows (its own writes, or the last length
    /// check); appends go after them.
    file_rows: u64,
    /// Rows the backend was seen to hold completely at the last length check or own write: no slice
    /// past them is handed out without checking the length again.
    verified_rows: u64,
    /// The end of the rows this handle wrote itself (and has not truncated).
    own_rows: u64,
    /// Encoded rows appended but not yet written.
    pending: Vec<u8>,
    writable: bool,
    /// The row-id column beside the rows, if the store carries one: appended, flushed, synced,
    /// truncated and length-checked with them.
    ids: Option<IdColumn>,
}

impl std::fmt::Debug for VectorStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VectorStore")
            .field("layout", &self.header.layout)
            .field("committed", &self.committed)
            .field("len", &self.len())
            .field("backend", &self.backend)
            .finish()
    }
}
/// Rows `0..rows` of a store, borrowed for scanning.
#[derive(Clone, Copy, Debug)]
pub struct RowsView<'a> {
    bytes: &'a [u8],
    layout: Layout,
    rows: usize,
}

impl<'a> RowsView<'a> {
    /// A view over `bytes`, which must hold `rows` rows of `layout.stride()` bytes and be aligned to
    /// [`ROW_ALIGN`] (for `f32` rows, 4 is enough).
    pub fn new(bytes: &'a [u8], layout: Layout, rows: usize) -> Result<Self> {
        let need = rows
            .checked_mul(layout.stride())
            .ok_or_else(|| Error::InvalidArgument("row count overflows".into()))?;
        if bytes.len() < need {
            return Err(Error::InvalidArgument(format!(
                "view needs {need} bytes, got {}",
                bytes.len()
            )));
        }
        // An empty view (a table with no rows) may come from an unaligned empty slice.
        if need > 0 && !(bytes.as_ptr() as usize).is_multiple_of(layout.elem().size()) {
            return Err(Error::InvalidArgument("view bytes are misaligned".into()));
        }
        Ok(RowsView {
            bytes: &bytes[..need],
            layout,
            rows,
        })
    }
    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.rows
    }
    /// The layout.
    pub fn layout(&self) -> Layout {
        self.layout
    }
    /// Row `i` in its element type. Panics if `i >= rows()`.
    #[inline]
    pub fn row(&self, i: usize) -> Row<'a> {
        let s = self.layout.stride();
        let b = &self.bytes[i * s..i * s + self.layout.row_bytes()];
        match self.layout.elem() {
            ElemType::F16 => Row::F16(bytemuck::cast_slice(b)),
            ElemType::F32 => Row::F32(bytemuck::cast_slice(b)),
        }
    }
    /// The raw bytes of rows `range` (stride-spaced).
    pub fn raw(&self, range: Range<usize>) -> &'a [u8] {
        let s = self.layout.stride();
        &self.bytes[range.start * s..range.end * s]
    }
}

/// Wraps a file backend in the fault plan of its directory, if a test attached one.
fn with_plan(b: FileBackend, plan: Option<Arc<FaultPlan>>) -> Box<dyn StorageBackend> {
    match plan {
        Some(p) => Box::new(FaultyBackend::new(b, p)),
        None => Box::new(b),
    }
}

impl VectorStore {
    /// Creates a new file at `path` (which must not exist) and syncs it and its directory.
    pub fn create(path: &Path, layout: Layout, table_id: [u8; 16]) -> Result<Self> {
        let header = Header {
            layout,
            table_id,
            generation: 0,
        };
        Self::create_with_header(path, header)
    }

    /// Creates a new file with a given header (compaction uses this to write generation `g + 1`).
    pub fn create_with_header(path: &Path, header: Header) -> Result<Self> {
        let plan = fault::plan_for(path);
        let file = fault::check(plan.as_deref(), FaultPoint::Create)
            .and_then(|()| FileBackend::create(path))
            .map_err(|e| Error::io("create", path, e))?;
        let s = Self::create_on(with_plan(file, plan), header)?;
        sync_parent_dir(path)?;
        Ok(s)
    }

    /// A new store on an empty `backend`: writes the header and syncs it.
    pub fn create_on(mut backend: Box<dyn StorageBackend>, header: Header) -> Result<Self> {
        let name = backend_name(&*backend);
        backend
            .write(0, &header.encode())
            .map_err(|e| Error::io("write header", &name, e))?;
        backend
            .sync_data()
            .map_err(|e| Error::io("fsync", &name, e))?;
        Ok(VectorStore {
            header,
            committed: 0,
            backend,
            file_rows: 0,
            verified_rows: 0,
            own_rows: 0,
            pending: Vec::new(),
            writable: true,
            ids: None,
        })
    }

    /// Opens an existing file. `committed` is the caller's committed row count: the file must hold at
    /// least that many complete rows (else [`Error::Truncated`]). With `expected`, the header must match
    /// it (else [`Error::LayoutMismatch`]). `writable` opens the file for appends; the file is never
    /// modified by `open` itself, whatever the role.
    pub fn open(
        path: &Path,
        expected: Option<Layout>,
        committed: u64,
        writable: bool,
    ) -> Result<Self> {
        let plan = fault::plan_for(path);
        let file = fault::check(plan.as_deref(), FaultPoint::Open)
            .and_then(|()| FileBackend::open(path, writable))
            .map_err(|e| Error::io("open", path, e))?;
        Self::open_on(with_plan(file, plan), expected, committed, writable)
    }

    /// Opens a store on `backend`, which holds a header and rows (as [`VectorStore::open`] does for a
    /// file; a read-only store refuses appends and truncation whatever the backend allows).
    pub fn open_on(
        backend: Box<dyn StorageBackend>,
        expected: Option<Layout>,
        committed: u64,
        writable: bool,
    ) -> Result<Self> {
        let name = backend_name(&*backend);
        let mut head = vec![0u8; HEADER_LEN];
        let n = backend
            .read(0, &mut head)
            .map_err(|e| Error::io("read header", &name, e))?;
        head.truncate(n);
        let header = Header::decode(&name, &head)?;
        if let Some(exp) = expected {
            if exp != header.layout {
                return Err(Error::LayoutMismatch {
                    path: name,
                    expected: exp.describe(),
                    found: header.layout.describe(),
                });
            }
        }
        let mut s = VectorStore {
            header,
            committed,
            backend,
            file_rows: 0,
            verified_rows: 0,
            own_rows: 0,
            pending: Vec::new(),
            writable,
            ids: None,
        };
        let file_rows = s.storage_rows()?;
        if file_rows < committed {
            return Err(Error::Truncated {
                path: name,
                found: file_rows,
                committed,
            });
        }
        s.file_rows = file_rows;
        s.verified_rows = file_rows;
        Ok(s)
    }

    /// An in-memory store (for `:memory:` and temp databases).
    pub fn in_memory(layout: Layout) -> Self {
        let header = Header {
            layout,
            table_id: random_table_id(),
            generation: 0,
        };
        VectorStore {
            backend: Box::new(MemoryBackend::from_bytes(&header.encode())),
            header,
            committed: 0,
            file_rows: 0,
            verified_rows: 0,
            own_rows: 0,
            pending: Vec::new(),
            writable: true,
            ids: None,
        }
    }

    /// The header.
    pub fn header(&self) -> &Header {
        &self.header
    }
    /// The layout.
    pub fn layout(&self) -> Layout {
        self.header.layout
    }
    /// The file path (`None` in memory).
    pub fn path(&self) -> Option<&Path> {
        self.backend.path()
    }
    /// The storage under the store.
    pub fn backend(&self) -> &dyn StorageBackend {
        &*self.backend
    }

    /// The path named in errors: the file, or `<memory>`.
    fn name(&self) -> PathBuf {
        backend_name(&*self.backend)
    }

    /// Complete rows the backend holds now (one length check).
    fn storage_rows(&self) -> Result<u64> {
        let len = self
            .backend
            .len()
            .map_err(|e| Error::io("stat", &self.name(), e))?;
        Ok(len.saturating_sub(HEADER_LEN as u64) / self.header.layout.stride() as u64)
    }

    fn pending_rows(&self) -> u64 {
        (self.pending.len() / self.header.layout.stride()) as u64
    }

    /// All rows: committed ones and this writer's uncommitted appends.
    pub fn len(&self) -> u64 {
        self.file_rows + self.pending_rows()
    }

    /// Whether the store has no rows at all.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The committed row count declared by the caller.
    pub fn committed(&self) -> u64 {
        self.committed
    }

    /// Declares the first `n` rows committed. `n` must not exceed [`VectorStore::len`]. The caller makes
    /// the rows durable first ([`VectorStore::sync`]) and records `n` in its own transaction.
    pub fn set_committed(&mut self, n: u64) -> Result<()> {
        if n > self.len() {
            return Err(Error::SlotOutOfRange {
                slot: n,
                len: self.len(),
            });
        }
        self.committed = n;
        Ok(())
    }

    /// Encodes `vectors` (row-major, a multiple of `dim` values) and checks every value.
    pub fn encode_rows(&self, vectors: &[f32]) -> Result<Vec<u8>> {
        let l = self.header.layout;
        if vectors.is_empty() || !vectors.len().is_multiple_of(l.dim()) {
            return Err(Error::DimMismatch {
                expected: l.dim(),
                found: vectors.len(),
            });
        }
        let stride = l.stride();
        let n = vectors.len() / l.dim();
        let mut out = vec![0u8; n * stride];
        for (r, v) in vectors.chunks_exact(l.dim()).enumerate() {
            check_values(v, l.elem())?;
            let dst = &mut out[r * stride..r * stride + l.row_bytes()];
            match l.elem() {
                ElemType::F16 => {
                    for (d, x) in dst.chunks_exact_mut(2).zip(v) {
                        d.copy_from_slice(&half::f16::from_f32(*x).to_le_bytes());
                    }
                }
                ElemType::F32 => {
                    for (d, x) in dst.chunks_exact_mut(4).zip(v) {
                        d.copy_from_slice(&x.to_le_bytes());
                    }
                }
            }
        }
        Ok(out)
    }

    /// Appends rows given as `f32` (converted to the element type; values that do not fit are an error
    /// and nothing is appended). Returns the slots of the new rows. A store carrying a row-id column
    /// refuses this ([`VectorStore::append_with_ids`]).
    pub fn append(&mut self, vectors: &[f32]) -> Result<Range<u64>> {
        let enc = self.encode_rows(vectors)?;
        self.append_encoded(&enc)
    }

    /// Attaches a row-id column ([`IdColumn`]) opened or created for this store's file; from here on
    /// appends need row ids ([`VectorStore::append_with_ids`]), and flush, sync, truncate and the
    /// length checks cover the column too.
    pub fn attach_ids(&mut self, ids: IdColumn) {
        self.ids = Some(ids);
    }

    /// Whether the store carries a row-id column.
    pub fn has_ids(&self) -> bool {
        self.ids.is_some()
    }

    /// The row ids of slots `0..rows` as a read-only snapshot (`None` without a row-id column).
    pub fn ids_snapshot(&mut self, rows: u64) -> Result<Option<IdsSnapshot>> {
        match self.ids.as_mut() {
            None => Ok(None),
            Some(c) => c.snapshot(rows).map(Some),
        }
    }

    /// [`VectorStore::append`] with the row id of each new row (ignored by a store without a row-id
    /// column).
    pub fn append_with_ids(&mut self, vectors: &[f32], ids: &[i64]) -> Result<Range<u64>> {
        let enc = self.encode_rows(vectors)?;
        self.append_encoded_with_ids(&enc, ids)
    }

    /// [`VectorStore::append_encoded`] with the row id of each new row (ignored by a store without a
    /// row-id column).
    pub fn append_encoded_with_ids(&mut self, enc: &[u8], ids: &[i64]) -> Result<Range<u64>> {
        let stride = self.header.layout.stride();
        if ids.len() * stride != enc.len() {
            return Err(Error::InvalidArgument(format!(
                "{} row ids for {} rows",
                ids.len(),
                enc.len() / stride.max(1)
            )));
        }
        let start = self.len();
        if let Some(c) = self.ids.as_mut() {
            // The column keeps one entry per row: leftovers past the rows (a crash between the two
            // files' writes) go; a column behind the rows cannot be written in step any more.
            if c.len() > start {
                c.truncate(start)?;
            }
            if c.len() < start {
                // Rows whose row ids were truncated while the rows could not be (a failed
                // truncation): they are no row's, so any filler keeps the column in step.
                let fill = vec![i64::MIN; (start - c.len()) as usize];
                c.append(&fill)?;
            }
        }
        let r = self.append_rows(enc)?;
        if let Some(c) = self.ids.as_mut() {
            c.append(ids)?;
        }
        Ok(r)
    }

    /// Appends rows already encoded in this store's layout: `enc` holds whole rows of
    /// [`Layout::stride`] bytes each (as [`RowsView::raw`] returns them). Compaction copies rows this way,
    /// bit for bit.
    pub fn append_encoded(&mut self, enc: &[u8]) -> Result<Range<u64>> {
        if let Some(c) = &self.ids {
            return Err(Error::InvalidArgument(format!(
                "the store keeps row ids in {}; append rows with their row ids",
                c.path().display()
            )));
        }
        self.append_rows(enc)
    }

    fn append_rows(&mut self, enc: &[u8]) -> Result<Range<u64>> {
        let stride = self.header.layout.stride();
        if !enc.len().is_multiple_of(stride) {
            return Err(Error::DimMismatch {
                expected: stride,
                found: enc.len() % stride,
            });
        }
        if !self.writable {
            return Err(Error::ReadOnly("append"));
        }
        let start = self.len();
        let n = (enc.len() / stride) as u64;
        self.pending.extend_from_slice(enc);
        if self.pending.len() >= FLUSH_BYTES {
            self.flush()?;
        }
        Ok(start..start + n)
    }

    /// Writes pending appends to the backend (no fsync).
    pub fn flush(&mut self) -> Result<()> {
        if let Some(c) = self.ids.as_mut() {
            c.flush()?;
        }
        if self.pending.is_empty() {
            return Ok(());
        }
        let stride = self.header.layout.stride();
        let off = HEADER_LEN as u64 + self.file_rows * stride as u64;
        if let Err(e) = self.backend.write(off, &self.pending) {
            return Err(Error::io("write", &self.name(), e));
        }
        self.file_rows += self.pending_rows();
        self.verified_rows = self.file_rows;
        self.own_rows = self.file_rows;
        self.pending.clear();
        Ok(())
    }

    /// Makes every appended row durable: writes pending rows and `fdatasync`s the file.
    pub fn sync(&mut self) -> Result<()> {
        self.flush()?;
        if let Some(c) = self.ids.as_mut() {
            c.sync()?;
        }
        if let Err(e) = self.backend.sync_data() {
            return Err(Error::io("fsync", &self.name(), e));
        }
        Ok(())
    }

    /// Removes every row at or past `n` (the writer's recovery and rollback step).
    ///
    /// Call this only as the single writer (the SQL layer holds SQLite's write lock) and only with
    /// `n >= ` the committed length that any reader may be using: readers never touch rows past the
    /// committed length, so no reader loses a mapped page. The committed count drops to `n` if it was
    /// larger.
    pub fn truncate(&mut self, n: u64) -> Result<()> {
        if !self.writable {
            return Err(Error::ReadOnly("truncate"));
        }
        let stride = self.header.layout.stride();
        if n >= self.file_rows {
            self.pending
                .truncate(((n - self.file_rows) as usize) * stride);
        } else {
            self.pending.clear();
            if let Err(e) = self.backend.set_len(HEADER_LEN as u64 + n * stride as u64) {
                return Err(Error::io("truncate", &self.name(), e));
            }
            self.file_rows = n;
            self.verified_rows = self.verified_rows.min(n);
            self.own_rows = self.own_rows.min(n);
        }
        self.committed = self.committed.min(n);
        // After the rows: if the rows could not be truncated, their row ids stay with them.
        if let Some(c) = self.ids.as_mut() {
            c.truncate(n)?;
        }
        Ok(())
    }

    /// Notices rows that another process appended and committed (the file grew): `committed` is the
    /// new committed count. Errors if the storage holds fewer rows than that, or fewer than this handle
    /// has written or mapped ([`Error::Truncated`]): a file shrunk by a process outside phenix is
    /// reported here instead of faulting a later read of its lost pages.
    pub fn refresh(&mut self, committed: u64) -> Result<()> {
        let found = self.storage_rows()?;
        self.verified_rows = found;
        // Rows this handle relies on: the committed ones and the ones it wrote itself. Rows past both
        // may be another writer's leftovers, which that writer may truncate at any time.
        let relied = committed.max(self.own_rows);
        if found < relied {
            return Err(Error::Truncated {
                path: self.name(),
                found,
                committed: relied,
            });
        }
        if let Some(c) = self.ids.as_mut() {
            c.refresh(committed)?;
        }
        if self.pending.is_empty() {
            self.file_rows = found;
        }
        self.committed = committed;
        Ok(())
    }

    /// Checks the storage's length again (one `fstat` for a file): [`Error::Truncated`] if it no
    /// longer holds the committed rows or the rows this handle wrote. Point reads
    /// ([`VectorStore::read`], [`VectorStore::read_raw`]) use the map without a system call and trust
    /// the last check, so a caller that serves reads calls this once per statement; scans
    /// ([`VectorStore::view`]) and [`VectorStore::refresh`] check by themselves.
    pub fn check_length(&mut self) -> Result<()> {
        let found = self.storage_rows()?;
        self.verified_rows = found;
        let relied = self.committed.max(self.own_rows);
        if found < relied {
            return Err(Error::Truncated {
                path: self.name(),
                found,
                committed: relied,
            });
        }
        if let Some(c) = &self.ids {
            c.check(self.committed)?;
        }
        Ok(())
    }

    /// A view of rows `0..rows` (`rows <= len()`), mapping the file as needed. Pending appends are
    /// written first. The storage's length is checked first: rows lost to a truncation by another
    /// process are [`Error::Truncated`], never a slice over unmapped pages.
    pub fn view(&mut self, rows: u64) -> Result<RowsView<'_>> {
        self.check_rows(rows)?;
        if rows > 0 {
            self.verified_rows = self.storage_rows()?;
        }
        self.view_verified(rows)
    }

    /// Bounds check, then pending appends written if `rows` reaches them.
    fn check_rows(&mut self, rows: u64) -> Result<()> {
        if rows > self.len() {
            return Err(Error::SlotOutOfRange {
                slot: rows,
                len: self.len(),
            });
        }
        if rows > self.file_rows {
            self.flush()?;
        }
        Ok(())
    }

    /// A view of rows `0..rows` that are known present (checked by the caller).
    fn view_verified(&mut self, rows: u64) -> Result<RowsView<'_>> {
        let layout = self.header.layout;
        if rows == 0 {
            return RowsView::new(&[], layout, 0);
        }
        if rows > self.verified_rows {
            return Err(Error::Truncated {
                path: self.name(),
                found: self.verified_rows,
                committed: rows,
            });
        }
        let need_bytes = rows as usize * layout.stride();
        let name = self.name();
        let m = self
            .backend
            .map(HEADER_LEN + need_bytes)
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::UnexpectedEof => Error::Truncated {
                    path: name.clone(),
                    found: 0,
                    committed: rows,
                },
                _ => Error::io("mmap", &name, e),
            })?;
        RowsView::new(
            &m[HEADER_LEN..HEADER_LEN + need_bytes],
            layout,
            rows as usize,
        )
    }

    /// A view holding row `slot`, for point reads: the length is checked only if the row lies past
    /// the rows seen at the last check (a scan or a refresh checks it again).
    fn view_row(&mut self, slot: u64) -> Result<RowsView<'_>> {
        if slot >= self.len() {
            return Err(Error::SlotOutOfRange {
                slot,
                len: self.len(),
            });
        }
        self.check_rows(slot + 1)?;
        if slot >= self.verified_rows {
            self.verified_rows = self.storage_rows()?;
        }
        // Map every row known present, not just up to this one, so reads in slot order map once.
        let rows = self.verified_rows.min(self.file_rows).max(slot + 1);
        self.view_verified(rows)
    }

    /// Reads slot `slot` (which must be `< len()`) widened to `f32`.
    pub fn read(&mut self, slot: u64) -> Result<Vec<f32>> {
        let view = self.view_row(slot)?;
        Ok(view.row(slot as usize).to_f32())
    }

    /// The stored bytes of `slot` (little-endian elements, without padding).
    pub fn read_raw(&mut self, slot: u64) -> Result<Vec<u8>> {
        let rb = self.header.layout.row_bytes();
        let view = self.view_row(slot)?;
        Ok(view.raw(slot as usize..slot as usize + 1)[..rb].to_vec())
    }
}

/// The path named in errors about `b`: its file, or `<memory>`.
fn backend_name(b: &dyn StorageBackend) -> PathBuf {
    b.path()
        .map_or_else(|| PathBuf::from("<memory>"), Path::to_path_buf)
}

/// Checks that every value can be stored in `elem`.
pub fn check_values(v: &[f32], elem: ElemType) -> Result<()> {
    for (i, &x) in v.iter().enumerate() {
        if !x.is_finite() {
            return Err(Error::ValueOutOfRange {
                index: i,
                value: x,
                elem: elem.name(),
                reason: "NaN and infinity are not stored",
            });
        }
        if elem == ElemType::F16 && x.abs() > 65504.0 {
            return Err(Error::ValueOutOfRange {
                index: i,
                value: x,
                elem: elem.name(),
                reason: "float16 holds magnitudes up to 65504",
            });
        }
    }
    Ok(())
}

/// fsyncs the directory holding `path`, so a created or renamed entry survives a crash.
pub fn sync_parent_dir(path: &Path) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let d = File::open(dir).map_err(|e| Error::io("open directory", dir, e))?;
    fault::check(fault::plan_for(path).as_deref(), FaultPoint::Fsync)
        .and_then(|()| d.sync_all())
        .map_err(|e| Error::io("fsync directory", dir, e))
}
