//! The vector-file header: its constants, the [`Layout`] it records, and its codec.
//!
//! The byte layout (the table in `docs/design.md`, "The vector file") is written once below as a chain
//! of offsets, each built from the one before it, so a field can only move by editing the chain. The
//! golden-bytes test in `core/tests/backend.rs` pins the encoding of a known header.

use crate::crc32::crc32;
use crate::error::{Error, Result};
use crate::types::{ElemType, Metric};
use std::path::Path;

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
    pub(crate) fn describe(&self) -> String {
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
