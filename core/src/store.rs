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
//! and the length check on open catch the common accidents.

use crate::crc32::crc32;
use crate::error::{Error, Result};
use crate::fault::{self, FaultPoint};
use crate::kernels::Row;
use crate::types::{ElemType, Metric};
use half::f16;
use memmap2::Mmap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// The eight magic bytes that open every phenix vector file.
pub const MAGIC: [u8; 8] = *b"PHNXVEC\0";
/// The file format version this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// Bytes before row 0 (one page, so the data region is page-aligned and every row 64-byte aligned).
pub const HEADER_LEN: usize = 4096;
/// Row alignment in bytes.
pub const ROW_ALIGN: usize = 64;
/// The largest dimension a store accepts.
pub const MAX_DIM: usize = 65_536;

// Header field offsets, each built from the one before it.
const OFF_MAGIC: usize = 0;
const OFF_VERSION: usize = OFF_MAGIC + 8;
const OFF_HEADER_LEN: usize = OFF_VERSION + 4;
const OFF_DIM: usize = OFF_HEADER_LEN + 4;
const OFF_ELEM: usize = OFF_DIM + 4;
const OFF_METRIC: usize = OFF_ELEM + 1;
const OFF_RESERVED: usize = OFF_METRIC + 1;
const OFF_STRIDE: usize = OFF_RESERVED + 2;
const OFF_FLAGS: usize = OFF_STRIDE + 4;
const OFF_TABLE_ID: usize = OFF_FLAGS + 4;
const OFF_GENERATION: usize = OFF_TABLE_ID + 16;
const OFF_CRC: usize = OFF_GENERATION + 8;
const HEADER_FIELDS_END: usize = OFF_CRC + 4;
const _: () = assert!(HEADER_FIELDS_END == 60 && HEADER_FIELDS_END <= HEADER_LEN);

/// Pending appends are written to the file once they reach this many bytes.
const FLUSH_BYTES: usize = 1 << 20;

/// What a store holds: dimension, element type and metric.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Layout {
    dim: usize,
    elem: ElemType,
    metric: Metric,
}

impl Layout {
    /// A layout; `dim` must be in `1..=MAX_DIM`.
    pub fn new(dim: usize, elem: ElemType, metric: Metric) -> Result<Self> {
        if dim == 0 || dim > MAX_DIM {
            return Err(Error::InvalidArgument(format!(
                "dimension {dim} is outside 1..={MAX_DIM}"
            )));
        }
        Ok(Layout { dim, elem, metric })
    }
    /// Elements per row.
    pub fn dim(&self) -> usize {
        self.dim
    }
    /// Element type.
    pub fn elem(&self) -> ElemType {
        self.elem
    }
    /// Distance metric.
    pub fn metric(&self) -> Metric {
        self.metric
    }
    /// Bytes between the starts of consecutive rows: `dim × size` rounded up to [`ROW_ALIGN`].
    pub fn stride(&self) -> usize {
        (self.dim * self.elem.size()).div_ceil(ROW_ALIGN) * ROW_ALIGN
    }
    /// Bytes of payload per row.
    pub fn row_bytes(&self) -> usize {
        self.dim * self.elem.size()
    }
    fn describe(&self) -> String {
        format!("{}[{}] distance={}", self.elem, self.dim, self.metric)
    }
}

/// The decoded file header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// What the rows hold.
    pub layout: Layout,
    /// A random identifier chosen when the file was created; the SQL layer keeps a copy to detect a
    /// sidecar that belongs to another table.
    pub table_id: [u8; 16],
    /// Incremented by each compaction that rewrites the table into a new file.
    pub generation: u64,
}

impl Header {
    /// Encodes the header page.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; HEADER_LEN];
        b[OFF_MAGIC..OFF_VERSION].copy_from_slice(&MAGIC);
        b[OFF_VERSION..OFF_HEADER_LEN].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        b[OFF_HEADER_LEN..OFF_DIM].copy_from_slice(&(HEADER_LEN as u32).to_le_bytes());
        b[OFF_DIM..OFF_ELEM].copy_from_slice(&(self.layout.dim as u32).to_le_bytes());
        b[OFF_ELEM] = self.layout.elem.code();
        b[OFF_METRIC] = self.layout.metric.code();
        b[OFF_STRIDE..OFF_FLAGS].copy_from_slice(&(self.layout.stride() as u32).to_le_bytes());
        b[OFF_TABLE_ID..OFF_GENERATION].copy_from_slice(&self.table_id);
        b[OFF_GENERATION..OFF_CRC].copy_from_slice(&self.generation.to_le_bytes());
        let crc = crc32(&b[..OFF_CRC]);
        b[OFF_CRC..HEADER_FIELDS_END].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Decodes and validates a header page read from `path`.
    pub fn decode(path: &Path, b: &[u8]) -> Result<Header> {
        let p = || path.to_path_buf();
        if b.len() < HEADER_FIELDS_END {
            let mut found = [0u8; 8];
            let n = b.len().min(8);
            found[..n].copy_from_slice(&b[..n]);
            if found != MAGIC {
                return Err(Error::BadMagic { path: p(), found });
            }
            return Err(Error::BadHeader {
                path: p(),
                field: "length",
                detail: format!("file has {} bytes, the header needs {HEADER_LEN}", b.len()),
            });
        }
        let u32_at = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        let mut magic = [0u8; 8];
        magic.copy_from_slice(&b[OFF_MAGIC..OFF_VERSION]);
        if magic != MAGIC {
            return Err(Error::BadMagic {
                path: p(),
                found: magic,
            });
        }
        let version = u32_at(OFF_VERSION);
        if version != FORMAT_VERSION {
            return Err(Error::VersionMismatch {
                path: p(),
                expected: FORMAT_VERSION,
                found: version,
            });
        }
        let stored = u32_at(OFF_CRC);
        let computed = crc32(&b[..OFF_CRC]);
        if stored != computed {
            return Err(Error::HeaderChecksum {
                path: p(),
                found: stored,
                computed,
            });
        }
        let bad = |field, detail: String| Error::BadHeader {
            path: p(),
            field,
            detail,
        };
        let header_len = u32_at(OFF_HEADER_LEN) as usize;
        if header_len != HEADER_LEN {
            return Err(bad(
                "header_len",
                format!("{header_len}, expected {HEADER_LEN}"),
            ));
        }
        if b.len() < HEADER_LEN {
            return Err(bad(
                "length",
                format!("file has {} bytes, the header needs {HEADER_LEN}", b.len()),
            ));
        }
        let elem = ElemType::from_code(b[OFF_ELEM])
            .ok_or_else(|| bad("element type", format!("unknown code {}", b[OFF_ELEM])))?;
        let metric = Metric::from_code(b[OFF_METRIC])
            .ok_or_else(|| bad("metric", format!("unknown code {}", b[OFF_METRIC])))?;
        let dim = u32_at(OFF_DIM) as usize;
        let layout = Layout::new(dim, elem, metric).map_err(|e| bad("dim", e.to_string()))?;
        let stride = u32_at(OFF_STRIDE) as usize;
        if stride != layout.stride() {
            return Err(bad(
                "stride",
                format!(
                    "{stride}, expected {} for {}",
                    layout.stride(),
                    layout.describe()
                ),
            ));
        }
        let mut table_id = [0u8; 16];
        table_id.copy_from_slice(&b[OFF_TABLE_ID..OFF_GENERATION]);
        let mut g = [0u8; 8];
        g.copy_from_slice(&b[OFF_GENERATION..OFF_CRC]);
        Ok(Header {
            layout,
            table_id,
            generation: u64::from_le_bytes(g),
        })
    }
}

/// A fresh random table identifier (not cryptographic; distinct per call and per process).
pub fn random_table_id() -> [u8; 16] {
    use std::hash::{BuildHasher, Hasher};
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut out = [0u8; 16];
    for half in out.chunks_mut(8) {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
        h.write_u32(std::process::id());
        if let Ok(t) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
            h.write_u128(t.as_nanos());
        }
        half.copy_from_slice(&h.finish().to_le_bytes());
    }
    out
}

/// A 64-byte aligned block, the unit of the in-memory backend.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Block([u8; ROW_ALIGN]);

enum Backend {
    File {
        path: PathBuf,
        file: File,
        /// The current map of `[0, mapped_len)`; `None` while the file has no rows.
        map: Option<Mmap>,
        mapped_len: usize,
        /// Complete rows written to the file (not counting `pending`).
        file_rows: u64,
        /// Encoded rows appended but not yet written.
        pending: Vec<u8>,
        writable: bool,
    },
    Memory {
        blocks: Vec<Block>,
        rows: u64,
    },
}

/// A column of vectors. See the module docs for the file format and the mapping contract.
pub struct VectorStore {
    header: Header,
    committed: u64,
    backend: Backend,
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
        let mut file = io_at(FaultPoint::Create, "create", path, || {
            OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(path)
        })?;
        io_at(FaultPoint::Write, "write header", path, || {
            file.write_all(&header.encode())
        })?;
        io_at(FaultPoint::Fsync, "fsync", path, || file.sync_all())?;
        sync_parent_dir(path)?;
        Ok(VectorStore {
            header,
            committed: 0,
            backend: Backend::File {
                path: path.to_path_buf(),
                file,
                map: None,
                mapped_len: 0,
                file_rows: 0,
                pending: Vec::new(),
                writable: true,
            },
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
        let file = io_at(FaultPoint::Open, "open", path, || {
            // O_NOFOLLOW: a symbolic link in place of the file (planted next to a database made by
            // someone else) is refused instead of followed.
            OpenOptions::new()
                .read(true)
                .write(writable)
                .custom_flags(libc::O_NOFOLLOW)
                .open(path)
        })?;
        let mut head = vec![0u8; HEADER_LEN];
        let n = read_full_at(&file, &mut head, 0).map_err(|e| Error::io("read header", path, e))?;
        head.truncate(n);
        let header = Header::decode(path, &head)?;
        if let Some(exp) = expected {
            if exp != header.layout {
                return Err(Error::LayoutMismatch {
                    path: path.to_path_buf(),
                    expected: exp.describe(),
                    found: header.layout.describe(),
                });
            }
        }
        let len = file
            .metadata()
            .map_err(|e| Error::io("stat", path, e))?
            .len();
        let file_rows = (len.saturating_sub(HEADER_LEN as u64)) / header.layout.stride() as u64;
        if file_rows < committed {
            return Err(Error::Truncated {
                path: path.to_path_buf(),
                found: file_rows,
                committed,
            });
        }
        Ok(VectorStore {
            header,
            committed,
            backend: Backend::File {
                path: path.to_path_buf(),
                file,
                map: None,
                mapped_len: 0,
                file_rows,
                pending: Vec::new(),
                writable,
            },
        })
    }

    /// An in-memory store (for `:memory:` and temp databases).
    pub fn in_memory(layout: Layout) -> Self {
        VectorStore {
            header: Header {
                layout,
                table_id: random_table_id(),
                generation: 0,
            },
            committed: 0,
            backend: Backend::Memory {
                blocks: Vec::new(),
                rows: 0,
            },
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
        match &self.backend {
            Backend::File { path, .. } => Some(path),
            Backend::Memory { .. } => None,
        }
    }

    /// All rows: committed ones and this writer's uncommitted appends.
    pub fn len(&self) -> u64 {
        match &self.backend {
            Backend::File {
                file_rows, pending, ..
            } => *file_rows + (pending.len() / self.header.layout.stride()) as u64,
            Backend::Memory { rows, .. } => *rows,
        }
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
                        d.copy_from_slice(&f16::from_f32(*x).to_le_bytes());
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
    /// and nothing is appended). Returns the slots of the new rows.
    pub fn append(&mut self, vectors: &[f32]) -> Result<Range<u64>> {
        let enc = self.encode_rows(vectors)?;
        self.append_encoded(&enc)
    }

    /// Appends rows already encoded in this store's layout: `enc` holds whole rows of
    /// [`Layout::stride`] bytes each (as [`RowsView::raw`] returns them). Compaction copies rows this way,
    /// bit for bit.
    pub fn append_encoded(&mut self, enc: &[u8]) -> Result<Range<u64>> {
        let stride = self.header.layout.stride();
        if !enc.len().is_multiple_of(stride) {
            return Err(Error::DimMismatch {
                expected: stride,
                found: enc.len() % stride,
            });
        }
        let start = self.len();
        let n = (enc.len() / stride) as u64;
        match &mut self.backend {
            Backend::File {
                writable, pending, ..
            } => {
                if !*writable {
                    return Err(Error::ReadOnly("append"));
                }
                pending.extend_from_slice(enc);
                if pending.len() >= FLUSH_BYTES {
                    self.flush()?;
                }
            }
            Backend::Memory { blocks, rows } => {
                let per_row = stride / ROW_ALIGN;
                for chunk in enc.chunks_exact(ROW_ALIGN) {
                    let mut b = Block([0; ROW_ALIGN]);
                    b.0.copy_from_slice(chunk);
                    blocks.push(b);
                }
                debug_assert_eq!(blocks.len() as u64, (*rows + n) * per_row as u64);
                *rows += n;
            }
        }
        Ok(start..start + n)
    }

    /// Writes pending appends to the file (no fsync).
    pub fn flush(&mut self) -> Result<()> {
        if let Backend::File {
            path,
            file,
            file_rows,
            pending,
            ..
        } = &mut self.backend
        {
            if pending.is_empty() {
                return Ok(());
            }
            let stride = self.header.layout.stride();
            let off = HEADER_LEN as u64 + *file_rows * stride as u64;
            io_at(FaultPoint::Write, "write", path, || {
                file.write_all_at(pending, off)
            })?;
            *file_rows += (pending.len() / stride) as u64;
            pending.clear();
        }
        Ok(())
    }

    /// Makes every appended row durable: writes pending rows and `fdatasync`s the file.
    pub fn sync(&mut self) -> Result<()> {
        self.flush()?;
        if let Backend::File { path, file, .. } = &self.backend {
            io_at(FaultPoint::Fsync, "fsync", path, || file.sync_data())?;
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
        let stride = self.header.layout.stride();
        match &mut self.backend {
            Backend::File {
                path,
                file,
                map,
                mapped_len,
                file_rows,
                pending,
                writable,
            } => {
                if !*writable {
                    return Err(Error::ReadOnly("truncate"));
                }
                if n >= *file_rows {
                    pending.truncate(((n - *file_rows) as usize) * stride);
                } else {
                    pending.clear();
                    // Drop our own map of the pages about to go.
                    if *mapped_len > HEADER_LEN + n as usize * stride {
                        *map = None;
                        *mapped_len = 0;
                    }
                    io_at(FaultPoint::Truncate, "truncate", path, || {
                        file.set_len(HEADER_LEN as u64 + n * stride as u64)
                    })?;
                    *file_rows = n;
                }
            }
            Backend::Memory { blocks, rows } => {
                if n < *rows {
                    blocks.truncate(n as usize * (stride / ROW_ALIGN));
                    *rows = n;
                }
            }
        }
        self.committed = self.committed.min(n);
        Ok(())
    }

    /// Notices rows that another process appended and committed (the file grew): `committed` is the
    /// new committed count. Errors if the file holds fewer rows.
    pub fn refresh(&mut self, committed: u64) -> Result<()> {
        if let Backend::File {
            path,
            file,
            file_rows,
            pending,
            ..
        } = &mut self.backend
        {
            if committed > *file_rows && pending.is_empty() {
                let len = file
                    .metadata()
                    .map_err(|e| Error::io("stat", path, e))?
                    .len();
                let stride = self.header.layout.stride() as u64;
                *file_rows = len.saturating_sub(HEADER_LEN as u64) / stride;
            }
            if committed > *file_rows + (pending.len() / self.header.layout.stride()) as u64 {
                return Err(Error::Truncated {
                    path: path.clone(),
                    found: *file_rows,
                    committed,
                });
            }
        } else if committed > self.len() {
            return Err(Error::SlotOutOfRange {
                slot: committed,
                len: self.len(),
            });
        }
        self.committed = committed;
        Ok(())
    }

    /// Checks that the file still holds the committed rows and every byte currently mapped. phenix
    /// never shrinks a file below a committed count, but a process outside phenix (or a crafted
    /// database pointing two tables at one file) can; reading a mapped page past the end of a file
    /// raises SIGBUS, so callers check before reading after noticing another connection's commit. On
    /// failure the map is dropped and [`Error::Truncated`] returned. In memory: always `Ok`.
    pub fn check_file_length(&mut self) -> Result<()> {
        let stride = self.header.layout.stride() as u64;
        let committed = self.committed;
        if let Backend::File {
            path,
            file,
            map,
            mapped_len,
            file_rows,
            ..
        } = &mut self.backend
        {
            let len = file
                .metadata()
                .map_err(|e| Error::io("stat", path, e))?
                .len();
            let need = (HEADER_LEN as u64 + committed * stride).max(*mapped_len as u64);
            if len < need {
                *map = None;
                *mapped_len = 0;
                let found = len.saturating_sub(HEADER_LEN as u64) / stride;
                *file_rows = (*file_rows).min(found);
                return Err(Error::Truncated {
                    path: path.clone(),
                    found,
                    committed,
                });
            }
        }
        Ok(())
    }

    /// A view of rows `0..rows` (`rows <= len()`), mapping the file as needed. Pending appends are
    /// written first.
    pub fn view(&mut self, rows: u64) -> Result<RowsView<'_>> {
        let layout = self.header.layout;
        let stride = layout.stride();
        if rows > self.len() {
            return Err(Error::SlotOutOfRange {
                slot: rows,
                len: self.len(),
            });
        }
        let need_bytes = rows as usize * stride;
        match &self.backend {
            Backend::File { file_rows, .. } if rows > *file_rows => self.flush()?,
            _ => {}
        }
        match &mut self.backend {
            Backend::File {
                path,
                file,
                map,
                mapped_len,
                ..
            } => {
                if rows == 0 {
                    return RowsView::new(&[], layout, 0);
                }
                let need = HEADER_LEN + need_bytes;
                if *mapped_len < need || map.is_none() {
                    fault::check(FaultPoint::Map).map_err(|e| Error::io("mmap", path, e))?;
                    // SAFETY: the map is read-only and phenix never rewrites or shrinks the region
                    // below the committed length while it is mapped (module docs, "Mapping
                    // contract"); rows past it are read only by the writer that wrote them. The map
                    // lives in `self`, and every slice handed out borrows `self`.
                    let m = unsafe { memmap2::MmapOptions::new().len(need).map(&*file) }
                        .map_err(|e| Error::io("mmap", path, e))?;
                    *mapped_len = need;
                    *map = Some(m);
                }
                let m = map.as_ref().expect("mapped above");
                RowsView::new(
                    &m[HEADER_LEN..HEADER_LEN + need_bytes],
                    layout,
                    rows as usize,
                )
            }
            Backend::Memory { blocks, .. } => {
                let blocks = &blocks[..need_bytes / ROW_ALIGN];
                // SAFETY: `Block` is `repr(C)` plain bytes with no padding, so a slice of blocks is a
                // valid, initialised byte slice of `len * ROW_ALIGN` bytes for the same lifetime.
                let bytes =
                    unsafe { std::slice::from_raw_parts(blocks.as_ptr() as *const u8, need_bytes) };
                RowsView::new(bytes, layout, rows as usize)
            }
        }
    }

    /// Reads slot `slot` (which must be `< len()`) widened to `f32`.
    pub fn read(&mut self, slot: u64) -> Result<Vec<f32>> {
        if slot >= self.len() {
            return Err(Error::SlotOutOfRange {
                slot,
                len: self.len(),
            });
        }
        let view = self.view(slot + 1)?;
        Ok(view.row(slot as usize).to_f32())
    }

    /// The stored bytes of `slot` (little-endian elements, without padding).
    pub fn read_raw(&mut self, slot: u64) -> Result<Vec<u8>> {
        if slot >= self.len() {
            return Err(Error::SlotOutOfRange {
                slot,
                len: self.len(),
            });
        }
        let rb = self.header.layout.row_bytes();
        let view = self.view(slot + 1)?;
        Ok(view.raw(slot as usize..slot as usize + 1)[..rb].to_vec())
    }
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

fn read_full_at(file: &File, buf: &mut [u8], off: u64) -> std::io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], off + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// fsyncs the directory holding `path`, so a created or renamed entry survives a crash.
pub fn sync_parent_dir(path: &Path) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let d = File::open(dir).map_err(|e| Error::io("open directory", dir, e))?;
    io_at(FaultPoint::Fsync, "fsync directory", dir, || d.sync_all())
}

/// Runs one I/O operation after the fault-injection check of its point, mapping errors to [`Error::Io`].
fn io_at<T>(
    point: FaultPoint,
    op: &'static str,
    path: &Path,
    f: impl FnOnce() -> std::io::Result<T>,
) -> Result<T> {
    fault::check(point)
        .and_then(|()| f())
        .map_err(|e| Error::io(op, path, e))
}
