//! The IVF index's bytes (layout in `docs/design.md`, "The IVF index file").

use super::{IvfIndex, List, ABSENT};
use crate::crc32::crc32;
use crate::error::{Error, Result};
use crate::types::Metric;
use std::path::Path;

/// The eight magic bytes that open an IVF index file.
pub const IVF_MAGIC: [u8; 8] = *b"PHNXIVF\0";
/// The index format version this build writes and reads.
pub const IVF_FORMAT_VERSION: u32 = 1;

const OFF_MAGIC: usize = 0;
const OFF_VERSION: usize = OFF_MAGIC + 8;
const OFF_DIM: usize = OFF_VERSION + 4;
const OFF_METRIC: usize = OFF_DIM + 4;
const OFF_CODES: usize = OFF_METRIC + 1;
const OFF_RESERVED: usize = OFF_CODES + 1;
const OFF_LISTS: usize = OFF_RESERVED + 2;
const OFF_COVERED: usize = OFF_LISTS + 4;
const OFF_ENTRIES: usize = OFF_COVERED + 8;
const OFF_TABLE_ID: usize = OFF_ENTRIES + 8;
const OFF_GENERATION: usize = OFF_TABLE_ID + 16;
const OFF_BODY_CRC: usize = OFF_GENERATION + 8;
const OFF_HEADER_CRC: usize = OFF_BODY_CRC + 4;
/// Bytes before the body.
const HEADER_END: usize = OFF_HEADER_CRC + 4;
const _: () = assert!(HEADER_END == 72);

/// Code kind 1: 8-bit scalar quantisation.
const CODES_SQ8: u8 = 1;

impl IvfIndex {
    /// The index as bytes: a 72-byte header (with CRCs of itself and of the body), then centroids,
    /// quantiser and lists.
    pub fn to_bytes(&self) -> Vec<u8> {
        let (dim, nl) = (self.dim, self.lists.len());
        let mut b = vec![0u8; HEADER_END];
        b[OFF_MAGIC..OFF_VERSION].copy_from_slice(&IVF_MAGIC);
        b[OFF_VERSION..OFF_DIM].copy_from_slice(&IVF_FORMAT_VERSION.to_le_bytes());
        b[OFF_DIM..OFF_METRIC].copy_from_slice(&(dim as u32).to_le_bytes());
        b[OFF_METRIC] = self.metric.code();
        b[OFF_CODES] = CODES_SQ8;
        b[OFF_LISTS..OFF_COVERED].copy_from_slice(&(nl as u32).to_le_bytes());
        b[OFF_COVERED..OFF_ENTRIES].copy_from_slice(&self.covered.to_le_bytes());
        b[OFF_ENTRIES..OFF_TABLE_ID].copy_from_slice(&(self.len() as u64).to_le_bytes());
        b[OFF_TABLE_ID..OFF_GENERATION].copy_from_slice(&self.table_id);
        b[OFF_GENERATION..OFF_BODY_CRC].copy_from_slice(&self.generation.to_le_bytes());
        let f32s = |b: &mut Vec<u8>, v: &[f32]| v.iter().for_each(|x| b.extend(x.to_le_bytes()));
        f32s(&mut b, &self.centroids);
        f32s(&mut b, &self.sq_min);
        f32s(&mut b, &self.sq_step);
        for l in &self.lists {
            b.extend((l.slots.len() as u64).to_le_bytes());
        }
        for l in &self.lists {
            l.slots.iter().for_each(|s| b.extend(s.to_le_bytes()));
            f32s(&mut b, &l.aux);
            b.extend_from_slice(&l.codes);
        }
        let body = crc32(&b[HEADER_END..]);
        b[OFF_BODY_CRC..OFF_HEADER_CRC].copy_from_slice(&body.to_le_bytes());
        let head = crc32(&b[..OFF_HEADER_CRC]);
        b[OFF_HEADER_CRC..HEADER_END].copy_from_slice(&head.to_le_bytes());
        b
    }

    /// Decodes and validates index bytes read from `path` (named in errors), for a vector file holding
    /// `store_rows` rows (the index may not cover more). Every damage is a typed error
    /// ([`Error::BadMagic`], [`Error::VersionMismatch`], [`Error::HeaderChecksum`],
    /// [`Error::BadHeader`]); none panics, none allocates more than the bytes and the store's row count
    /// justify, and none yields an index that returns rows outside the store.
    pub fn from_bytes(path: &Path, b: &[u8], store_rows: u64) -> Result<Self> {
        let p = || path.to_path_buf();
        let bad = |field: &'static str, detail: String| Error::BadHeader {
            path: p(),
            field,
            detail,
        };
        if b.len() < HEADER_END {
            let mut found = [0u8; 8];
            let n = b.len().min(8);
            found[..n].copy_from_slice(&b[..n]);
            if found != IVF_MAGIC {
                return Err(Error::BadMagic { path: p(), found });
            }
            return Err(bad(
                "length",
                format!("{} bytes, the header needs {HEADER_END}", b.len()),
            ));
        }
        let u32_at = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        let u64_at = |o: usize| {
            let mut x = [0u8; 8];
            x.copy_from_slice(&b[o..o + 8]);
            u64::from_le_bytes(x)
        };
        let mut magic = [0u8; 8];
        magic.copy_from_slice(&b[..8]);
        if magic != IVF_MAGIC {
            return Err(Error::BadMagic {
                path: p(),
                found: magic,
            });
        }
        let version = u32_at(OFF_VERSION);
        if version != IVF_FORMAT_VERSION {
            return Err(Error::VersionMismatch {
                path: p(),
                expected: IVF_FORMAT_VERSION,
                found: version,
            });
        }
        let stored = u32_at(OFF_HEADER_CRC);
        let computed = crc32(&b[..OFF_HEADER_CRC]);
        if stored != computed {
            return Err(Error::HeaderChecksum {
                path: p(),
                found: stored,
                computed,
            });
        }
        let stored = u32_at(OFF_BODY_CRC);
        let computed = crc32(&b[HEADER_END..]);
        if stored != computed {
            return Err(bad(
                "body checksum",
                format!(
                    "stored {stored:#010x}, computed {computed:#010x}: the index body is damaged"
                ),
            ));
        }
        let dim = u32_at(OFF_DIM) as usize;
        if dim == 0 || dim > crate::store::MAX_DIM {
            return Err(bad("dim", format!("{dim}")));
        }
        let metric = Metric::from_code(b[OFF_METRIC])
            .ok_or_else(|| bad("metric", format!("unknown code {}", b[OFF_METRIC])))?;
        if b[OFF_CODES] != CODES_SQ8 {
            return Err(bad("codes", format!("unknown code kind {}", b[OFF_CODES])));
        }
        let nl = u32_at(OFF_LISTS) as usize;
        if nl == 0 || nl > 65_536 {
            return Err(bad("lists", format!("{nl}")));
        }
        let covered = u64_at(OFF_COVERED);
        let entries = u64_at(OFF_ENTRIES);
        if covered > store_rows {
            return Err(bad(
                "covered",
                format!("the index covers {covered} rows, the vector file holds {store_rows}"),
            ));
        }
        if entries > covered {
            return Err(bad(
                "entries",
                format!("{entries} rows, but only {covered} covered"),
            ));
        }
        let mut table_id = [0u8; 16];
        table_id.copy_from_slice(&b[OFF_TABLE_ID..OFF_GENERATION]);
        let generation = u64_at(OFF_GENERATION);
        // Sizes, in checked arithmetic: a crafted header must not overflow or over-allocate.
        let row = 8u64 + 4 + dim as u64;
        let fixed = (nl as u64 * dim as u64 + 2 * dim as u64) * 4 + nl as u64 * 8;
        let want = entries
            .checked_mul(row)
            .and_then(|x| x.checked_add(fixed))
            .and_then(|x| x.checked_add(HEADER_END as u64));
        if want != Some(b.len() as u64) {
            return Err(bad(
                "length",
                format!(
                    "{} bytes, expected {want:?} for {entries} rows in {nl} lists of dim {dim}",
                    b.len()
                ),
            ));
        }
        let mut off = HEADER_END;
        let mut f32s = |n: usize| -> Vec<f32> {
            let v = b[off..off + 4 * n]
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            off += 4 * n;
            v
        };
        let centroids = f32s(nl * dim);
        let sq_min = f32s(dim);
        let sq_step = f32s(dim);
        if centroids.iter().chain(&sq_min).any(|x| !x.is_finite())
            || sq_step.iter().any(|x| !(x.is_finite() && *x > 0.0))
        {
            return Err(bad(
                "centroids",
                "non-finite centroid or quantiser value".into(),
            ));
        }
        let lens: Vec<u64> = (0..nl).map(|j| u64_at(off + 8 * j)).collect();
        off += 8 * nl;
        if lens.iter().try_fold(0u64, |a, &x| a.checked_add(x)) != Some(entries) {
            return Err(bad(
                "lists",
                "list lengths do not add up to the entry count".into(),
            ));
        }
        let mut list_of = vec![ABSENT; covered as usize];
        let mut lists = Vec::with_capacity(nl);
        for (j, &n) in lens.iter().enumerate() {
            let n = n as usize;
            let slots: Vec<u64> = (0..n).map(|i| u64_at(off + 8 * i)).collect();
            off += 8 * n;
            let aux: Vec<f32> = b[off..off + 4 * n]
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            off += 4 * n;
            let codes = b[off..off + n * dim].to_vec();
            off += n * dim;
            for &s in &slots {
                if s >= covered {
                    return Err(bad(
                        "slot",
                        format!("slot {s} is past the covered count {covered}"),
                    ));
                }
                if list_of[s as usize] != ABSENT {
                    return Err(bad("slot", format!("slot {s} appears twice")));
                }
                list_of[s as usize] = j as u32;
            }
            if aux.iter().any(|x| !x.is_finite()) {
                return Err(bad("aux", format!("non-finite value in list {j}")));
            }
            lists.push(List { slots, aux, codes });
        }
        Ok(IvfIndex {
            dim,
            metric,
            centroid_nn: super::centroid_nn(&centroids, dim),
            centroids,
            sq_min,
            sq_step,
            lists,
            list_of,
            covered,
            table_id,
            generation,
        })
    }
}
