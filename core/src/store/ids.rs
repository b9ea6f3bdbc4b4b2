//! The row-id column: a companion file beside a vector file holding, for every slot, the row id of
//! the row written there (`i64`, little-endian), so a reader maps slot → row id instead of reading it
//! out of a database table.
//!
//! File layout (`<table_id>.g<generation>.ids`, byte-exact description in `docs/design.md`):
//!
//! ```text
//! [0, 64)          header: magic "PHNXIDS\0", version 1, header length 64, table id, generation,
//!                  CRC-32 of bytes 0..40
//! [64 + 8*i, +8)   the row id of slot i
//! ```
//!
//! Like the vector file it has no count: the caller's committed row count says how many entries are
//! valid; entries past it are leftovers that the writer truncates. Entries below the committed count
//! are never rewritten (a row that changes its row id moves to a new slot), so a map of them never
//! changes under a reader. A [`VectorStore`](crate::store::VectorStore) that carries a column appends,
//! flushes, syncs, truncates and length-checks it with its rows, so the commit protocol of the vector
//! file covers it unchanged.

use crate::crc32::crc32;
use crate::error::{Error, Result};
use crate::fault::{self, FaultPlan, FaultPoint};
use memmap2::Mmap;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Magic bytes of a row-id file.
pub const IDS_MAGIC: [u8; 8] = *b"PHNXIDS\0";
/// Format version of the row-id file.
pub const IDS_VERSION: u32 = 1;
/// Header length in bytes (entries start 8-byte aligned).
pub const IDS_HEADER_LEN: usize = 64;
const OFF_CRC: usize = 40;

/// Pending entries are written once this many accumulate.
const FLUSH_ENTRIES: usize = 1 << 16;

/// The header of a row-id file: whose vectors it describes.
fn encode_header(table_id: &[u8; 16], generation: u64) -> [u8; IDS_HEADER_LEN] {
    let mut b = [0u8; IDS_HEADER_LEN];
    b[0..8].copy_from_slice(&IDS_MAGIC);
    b[8..12].copy_from_slice(&IDS_VERSION.to_le_bytes());
    b[12..16].copy_from_slice(&(IDS_HEADER_LEN as u32).to_le_bytes());
    b[16..32].copy_from_slice(table_id);
    b[32..40].copy_from_slice(&generation.to_le_bytes());
    let crc = crc32(&b[..OFF_CRC]);
    b[OFF_CRC..OFF_CRC + 4].copy_from_slice(&crc.to_le_bytes());
    b
}

/// Checks a header read from `path` against the table id and generation expected.
fn check_header(path: &Path, b: &[u8], table_id: &[u8; 16], generation: u64) -> Result<()> {
    let bad = |detail: String| Error::BadIdFile {
        path: path.to_path_buf(),
        detail,
    };
    if b.len() < IDS_HEADER_LEN {
        return Err(bad(format!(
            "the file has {} bytes, its header needs {IDS_HEADER_LEN}",
            b.len()
        )));
    }
    if b[0..8] != IDS_MAGIC {
        return Err(bad(format!(
            "bad magic {:02x?}; expected a row-id file written by phenix",
            &b[0..8]
        )));
    }
    let u32_at = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
    if u32_at(8) != IDS_VERSION {
        return Err(bad(format!(
            "format version {}, this phenix reads version {IDS_VERSION}",
            u32_at(8)
        )));
    }
    let stored = u32_at(OFF_CRC);
    let computed = crc32(&b[..OFF_CRC]);
    if stored != computed {
        return Err(bad(format!(
            "header checksum {stored:#010x}, computed {computed:#010x}: the header is damaged"
        )));
    }
    if u32_at(12) as usize != IDS_HEADER_LEN {
        return Err(bad(format!(
            "header length {}, expected {IDS_HEADER_LEN}",
            u32_at(12)
        )));
    }
    if b[16..32] != table_id[..] {
        return Err(bad(
            "it belongs to another table (its table id differs from the vector file's)".into(),
        ));
    }
    let g = u64::from_le_bytes(b[32..40].try_into().unwrap_or_default());
    if g != generation {
        return Err(bad(format!(
            "it is generation {g}, but the vector file is generation {generation}"
        )));
    }
    Ok(())
}

/// The row ids of slots `0..len()`, mapped read-only; independent of the column it came from (a
/// reader keeps it while the writer appends).
#[derive(Clone, Debug, Default)]
pub struct IdsSnapshot {
    map: Option<Arc<Mmap>>,
    rows: usize,
}

impl IdsSnapshot {
    /// Slots covered.
    pub fn len(&self) -> usize {
        self.rows
    }
    /// Whether no slot is covered.
    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }
    /// The row id written at `slot` (`None` past the snapshot).
    #[inline]
    pub fn get(&self, slot: usize) -> Option<i64> {
        if slot >= self.rows {
            return None;
        }
        let m = self.map.as_ref()?;
        let o = IDS_HEADER_LEN + slot * 8;
        let b: [u8; 8] = m.get(o..o + 8)?.try_into().ok()?;
        Some(i64::from_le_bytes(b))
    }
}

/// A writable (or read-only) row-id file.
pub struct IdColumn {
    path: PathBuf,
    file: File,
    plan: Option<Arc<FaultPlan>>,
    /// Complete entries in the file as far as this handle knows.
    file_rows: u64,
    /// Entries appended but not yet written.
    pending: Vec<i64>,
    /// The largest map made so far (shared with snapshots).
    map: Option<Arc<Mmap>>,
    writable: bool,
}

impl std::fmt::Debug for IdColumn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdColumn")
            .field("path", &self.path)
            .field("len", &self.len())
            .finish()
    }
}

impl IdColumn {
    /// Creates the file at `path` (which must not exist), writes and syncs its header. The caller
    /// syncs the directory (the vector file beside it is created in the same one).
    pub fn create(path: &Path, table_id: &[u8; 16], generation: u64) -> Result<Self> {
        let plan = fault::plan_for(path);
        let file = fault::check(plan.as_deref(), FaultPoint::Create)
            .and_then(|()| {
                OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create_new(true)
                    .open(path)
            })
            .map_err(|e| Error::io("create", path, e))?;
        let c = IdColumn {
            path: path.to_path_buf(),
            file,
            plan,
            file_rows: 0,
            pending: Vec::new(),
            map: None,
            writable: true,
        };
        c.io(FaultPoint::Write, "write header", |f| {
            f.write_all_at(&encode_header(table_id, generation), 0)
        })?;
        c.io(FaultPoint::Fsync, "fsync", File::sync_data)?;
        Ok(c)
    }

    /// Opens the file at `path` (not following a symbolic link), checks its header against
    /// `table_id` and `generation`, and that it holds at least `committed` entries.
    pub fn open(
        path: &Path,
        table_id: &[u8; 16],
        generation: u64,
        committed: u64,
        writable: bool,
    ) -> Result<Self> {
        let plan = fault::plan_for(path);
        let file = fault::check(plan.as_deref(), FaultPoint::Open)
            .and_then(|()| {
                OpenOptions::new()
                    .read(true)
                    .write(writable)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(path)
            })
            .map_err(|e| Error::io("open", path, e))?;
        let mut head = [0u8; IDS_HEADER_LEN];
        let mut n = 0;
        while n < head.len() {
            match file.read_at(&mut head[n..], n as u64) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Error::io("read header", path, e)),
            }
        }
        check_header(path, &head[..n], table_id, generation)?;
        let mut c = IdColumn {
            path: path.to_path_buf(),
            file,
            plan,
            file_rows: 0,
            pending: Vec::new(),
            map: None,
            writable,
        };
        c.file_rows = c.check(committed)?;
        Ok(c)
    }

    fn io<T>(
        &self,
        point: FaultPoint,
        op: &'static str,
        f: impl FnOnce(&File) -> io::Result<T>,
    ) -> Result<T> {
        fault::check(self.plan.as_deref(), point)
            .and_then(|()| f(&self.file))
            .map_err(|e| Error::io(op, &self.path, e))
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Entries: the file's and the pending ones.
    pub fn len(&self) -> u64 {
        self.file_rows + self.pending.len() as u64
    }

    /// Whether the column holds no entry.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Complete entries in the file now (one `fstat`).
    fn disk_rows(&self) -> Result<u64> {
        let len = self.io(FaultPoint::Map, "stat", |f| f.metadata())?.len();
        Ok(len.saturating_sub(IDS_HEADER_LEN as u64) / 8)
    }

    /// Checks the file's length: at least `relied` entries, else [`Error::BadIdFile`]. Returns the
    /// entries present.
    pub fn check(&self, relied: u64) -> Result<u64> {
        let found = self.disk_rows()?;
        if found < relied {
            return Err(Error::BadIdFile {
                path: self.path.clone(),
                detail: format!(
                    "it holds {found} row ids but {relied} rows are committed; the file was truncated or replaced"
                ),
            });
        }
        Ok(found)
    }

    /// Notices entries another process appended (and committed up to `committed`).
    pub fn refresh(&mut self, committed: u64) -> Result<()> {
        let found = self.check(committed)?;
        if self.pending.is_empty() {
            self.file_rows = found;
        }
        Ok(())
    }

    /// Appends row ids (the writer's).
    pub fn append(&mut self, ids: &[i64]) -> Result<()> {
        if !self.writable {
            return Err(Error::ReadOnly("append"));
        }
        self.pending.extend_from_slice(ids);
        if self.pending.len() >= FLUSH_ENTRIES {
            self.flush()?;
        }
        Ok(())
    }

    /// Writes pending entries (no fsync).
    pub fn flush(&mut self) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let mut buf = Vec::with_capacity(self.pending.len() * 8);
        for id in &self.pending {
            buf.extend_from_slice(&id.to_le_bytes());
        }
        let off = IDS_HEADER_LEN as u64 + self.file_rows * 8;
        self.io(FaultPoint::Write, "write", |f| f.write_all_at(&buf, off))?;
        self.file_rows += self.pending.len() as u64;
        self.pending.clear();
        Ok(())
    }

    /// Writes pending entries and `fdatasync`s the file.
    pub fn sync(&mut self) -> Result<()> {
        self.flush()?;
        self.io(FaultPoint::Fsync, "fsync", File::sync_data)
    }

    /// Removes every entry at or past `n` (the writer's, past every reader's committed count).
    pub fn truncate(&mut self, n: u64) -> Result<()> {
        if !self.writable {
            return Err(Error::ReadOnly("truncate"));
        }
        if n >= self.file_rows {
            self.pending.truncate((n - self.file_rows) as usize);
            return Ok(());
        }
        self.pending.clear();
        let len = IDS_HEADER_LEN as u64 + n * 8;
        // Our own map must not cover pages about to go.
        if self.map.as_ref().is_some_and(|m| m.len() as u64 > len) {
            self.map = None;
        }
        self.io(FaultPoint::Truncate, "truncate", |f| f.set_len(len))?;
        self.file_rows = n;
        Ok(())
    }

    /// The row ids of slots `0..rows` (`rows <= len()`) as a read-only map, after checking that the
    /// file holds them (pending entries are written first if `rows` reaches them).
    pub fn snapshot(&mut self, rows: u64) -> Result<IdsSnapshot> {
        if rows > self.len() {
            return Err(Error::SlotOutOfRange {
                slot: rows,
                len: self.len(),
            });
        }
        if rows > self.file_rows {
            self.flush()?;
        }
        if rows == 0 {
            return Ok(IdsSnapshot::default());
        }
        let need = IDS_HEADER_LEN + rows as usize * 8;
        if self.map.as_ref().is_none_or(|m| m.len() < need) {
            // Never map past the end of the file: touching such a page raises SIGBUS.
            self.check(rows)?;
            fault::check(self.plan.as_deref(), FaultPoint::Map)
                .map_err(|e| Error::io("mmap", &self.path, e))?;
            // SAFETY: read-only map of a file whose length was checked just above; entries below the
            // committed count are never rewritten or truncated (module docs), and the writer truncates
            // only past it, dropping its own map first; a snapshot reaching past the committed count
            // (the writer's own appends) is dropped by the SQL layer before any rollback truncates.
            let m = unsafe { memmap2::MmapOptions::new().len(need).map(&self.file) }
                .map_err(|e| Error::io("mmap", &self.path, e))?;
            self.map = Some(Arc::new(m));
        }
        Ok(IdsSnapshot {
            map: self.map.clone(),
            rows: rows as usize,
        })
    }
}
