//! The fit blob (`Fit::encode` / `Fit::decode`) and the per-thread cache of decoded fits that
//! `phenix_norm_apply` and `phenix_fit_info` take as their first argument.

use super::super::{type_name, AnalysisError, Fnv};
use super::Method;
use rusqlite::types::ValueRef;
use std::cell::RefCell;
use std::sync::Arc;

const MAGIC: &[u8; 8] = b"PHXNFIT\0";
const VERSION: u32 = 1;
const HEADER: usize = 56;

/// A fitted normalisation.
#[derive(Clone, Debug, PartialEq)]
pub struct Fit {
    /// The method.
    pub method: Method,
    /// The profile length.
    pub dim: usize,
    /// Control rows it was fitted on.
    pub n_rows: u64,
    /// FNV-1a of the feature names (0: not known).
    pub features_hash: u64,
    /// The epsilon used.
    pub epsilon: f64,
    /// `center[d]`, `scale[d]` (then `W[d×d]` row-major for sphering): `z = (x - center) / scale`,
    /// output `z` (standardize/robust) or `zᵀW`.
    pub params: Vec<f64>,
}

impl Fit {
    /// The blob: magic, u32 version, u32 method, u32 dim, u32 0, u64 rows, u64 feature hash, f64
    /// epsilon, u64 parameter count, f64 parameters, u64 FNV-1a of all bytes before it; little-endian.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(HEADER + 8 * self.params.len() + 8);
        b.extend_from_slice(MAGIC);
        b.extend_from_slice(&VERSION.to_le_bytes());
        b.extend_from_slice(&self.method.code().to_le_bytes());
        b.extend_from_slice(&(self.dim as u32).to_le_bytes());
        b.extend_from_slice(&0u32.to_le_bytes());
        b.extend_from_slice(&self.n_rows.to_le_bytes());
        b.extend_from_slice(&self.features_hash.to_le_bytes());
        b.extend_from_slice(&self.epsilon.to_le_bytes());
        b.extend_from_slice(&(self.params.len() as u64).to_le_bytes());
        for p in &self.params {
            b.extend_from_slice(&p.to_le_bytes());
        }
        let mut h = Fnv::new();
        h.write(&b);
        b.extend_from_slice(&h.finish().to_le_bytes());
        b
    }

    /// Parses and verifies a blob; the error says why it is not a fit.
    pub fn decode(b: &[u8]) -> Result<Fit, String> {
        let u32_at = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        let u64_at = |o: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&b[o..o + 8]);
            u64::from_le_bytes(a)
        };
        if b.len() < HEADER + 8 || &b[..8] != MAGIC {
            return Err(format!(
                "a {}-byte blob that does not start with phenix's fit header (PHXNFIT); pass a value made by phenix_norm_fit",
                b.len()
            ));
        }
        let version = u32_at(8);
        if version != VERSION {
            return Err(format!(
                "a fit of format version {version}; this phenix reads version {VERSION}"
            ));
        }
        let method = Method::from_code(u32_at(12))
            .ok_or_else(|| format!("a fit with unknown method code {}", u32_at(12)))?;
        let dim = u32_at(16) as usize;
        let n_params = u64_at(48);
        let want = method.n_params(dim) as u64;
        if dim == 0 || n_params != want {
            return Err(format!(
                "a damaged fit: {} parameters for method {} and dimension {dim} (expected {want})",
                n_params,
                method.name()
            ));
        }
        let expect_len = (HEADER as u64)
            .saturating_add(n_params.saturating_mul(8))
            .saturating_add(8);
        if b.len() as u64 != expect_len {
            return Err(format!(
                "a damaged fit: {} bytes, its header says {expect_len}",
                b.len()
            ));
        }
        let body = b.len() - 8;
        let mut h = Fnv::new();
        h.write(&b[..body]);
        if h.finish() != u64_at(body) {
            return Err("a damaged fit: its checksum does not match its contents".into());
        }
        let params: Vec<f64> = b[HEADER..body]
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
            .collect();
        if params.iter().any(|p| !p.is_finite()) {
            return Err("a damaged fit: a parameter is not finite".into());
        }
        Ok(Fit {
            method,
            dim,
            n_rows: u64_at(24),
            features_hash: u64_at(32),
            epsilon: f64::from_le_bytes(b[40..48].try_into().expect("8 bytes")),
            params,
        })
    }

    /// Applies the fit to `x` (`x.len() == dim`), in f64.
    pub fn apply(&self, x: &[f32], out: &mut Vec<f32>) {
        let d = self.dim;
        let (center, rest) = self.params.split_at(d);
        let (scale, w) = rest.split_at(d);
        out.clear();
        if !self.method.is_sphere() {
            out.extend(
                x.iter()
                    .zip(center)
                    .zip(scale)
                    .map(|((&v, c), s)| ((f64::from(v) - c) / s) as f32),
            );
            return;
        }
        let mut y = vec![0f64; d];
        for i in 0..d {
            let z = (f64::from(x[i]) - center[i]) / scale[i];
            if z == 0.0 {
                continue;
            }
            let row = &w[i * d..(i + 1) * d];
            for (yj, wij) in y.iter_mut().zip(row) {
                *yj += z * wij;
            }
        }
        out.extend(y.iter().map(|&v| v as f32));
    }

    /// The JSON `phenix_fit_info` returns.
    pub fn info(&self) -> serde_json::Value {
        serde_json::json!({
            "method": self.method.name(),
            "dim": self.dim,
            "n_rows": self.n_rows,
            "epsilon": self.epsilon,
            "features_hash": if self.features_hash == 0 { serde_json::Value::Null } else { format!("{:016x}", self.features_hash).into() },
        })
    }
}

/// Fits up to this size are compared byte for byte on a cache hit.
const FULL_COMPARE: usize = 1 << 20;

/// (blob length, checksum, the bytes compared on a hit, the decoded fit).
type CacheEntry = (usize, u64, Option<Vec<u8>>, Arc<Fit>);

thread_local! {
    /// The last fits decoded on this thread, keyed by (length, checksum, bytes): a fit of up to
    /// [`FULL_COMPARE`] bytes must match byte for byte; a larger one (a sphering matrix of more than
    /// ~360 features) by length, header and checksum, which were verified against its contents
    /// when it was first decoded. Saves re-parsing the parameters on every row of an `INSERT … SELECT`.
    static CACHE: RefCell<Vec<CacheEntry>> = const { RefCell::new(Vec::new()) };
}

pub(super) fn fit_arg(v: ValueRef<'_>, func: &'static str) -> Result<Arc<Fit>, AnalysisError> {
    let b = match v {
        ValueRef::Blob(b) => b,
        other => {
            return Err(AnalysisError::Fit {
                func,
                detail: format!(
                "argument 1 must be a fitted normalisation (a blob from phenix_norm_fit): got {}",
                type_name(other)
            ),
            })
        }
    };
    let key = if b.len() >= HEADER + 8 {
        let mut a = [0u8; 8];
        a.copy_from_slice(&b[b.len() - 8..]);
        Some(u64::from_le_bytes(a))
    } else {
        None
    };
    if let Some(k) = key {
        let hit = CACHE.with(|c| {
            c.borrow().iter().find_map(|(len, sum, bytes, fit)| {
                let same = *len == b.len()
                    && *sum == k
                    && bytes.as_deref() == Some(&b[..bytes.as_ref().map_or(0, Vec::len)]);
                same.then(|| fit.clone())
            })
        });
        if let Some(f) = hit {
            return Ok(f);
        }
    }
    let fit = Arc::new(Fit::decode(b).map_err(|d| AnalysisError::Fit {
        func,
        detail: format!("argument 1 is not a fitted normalisation: {d}"),
    })?);
    if let Some(k) = key {
        CACHE.with(|c| {
            let mut c = c.borrow_mut();
            if c.len() >= 8 {
                c.remove(0);
            }
            let keep = if b.len() <= FULL_COMPARE {
                b.len()
            } else {
                HEADER
            };
            let bytes = Some(b[..keep].to_vec());
            c.push((b.len(), k, bytes, fit.clone()));
        });
    }
    Ok(fit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fit_blob_round_trips_and_rejects_damage() {
        let f = Fit {
            method: Method::Robust,
            dim: 2,
            n_rows: 5,
            features_hash: 7,
            epsilon: 1e-18,
            params: vec![1.0, 2.0, 3.0, 4.0],
        };
        let b = f.encode();
        assert_eq!(Fit::decode(&b).unwrap(), f);
        let mut bad = b.clone();
        bad[HEADER] ^= 1;
        assert!(Fit::decode(&bad).unwrap_err().contains("checksum"));
        assert!(Fit::decode(&b[..b.len() - 1]).is_err());
        assert!(Fit::decode(b"hello").unwrap_err().contains("header"));
    }
}
