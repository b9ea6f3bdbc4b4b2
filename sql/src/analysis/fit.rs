//! Control-based normalisation: `phenix_norm_fit(method, profile [, options])` (aggregate),
//! `phenix_norm_apply(fit, profile [, features])` (scalar) and `phenix_fit_info(fit)` (scalar).
//!
//! Methods, following pycytominer 1.7's `normalize`:
//! - `standardize`: `(x - mean) / sd`, population sd (ddof 0), as sklearn's `StandardScaler`. State:
//!   `O(d)` (shifted sums in f64), any number of rows.
//! - `robust`: `(x - median) / (MAD·1.4826 + epsilon)`, epsilon 1e-18 by default, as pycytominer's
//!   `mad_robustize` (`RobustMAD`). Needs all of a group's values (medians): bounded by
//!   [`super::MAX_GROUP_VALUES`] per group.
//! - `sphere`: ZCA / PCA whitening (pycytominer's `Spherize`, default `zca-cor`), fitted on the
//!   eigendecomposition (faer) of the control Gram matrix, which is accumulated `O(d²)` in chunks
//!   through GEMM, any number of rows. With singular values `Σ = sqrt(eig(XcᵀXc))` the whitening
//!   matrix is `W = V · diag(sqrt(n-1) / (Σ + epsilon))` (PCA) and `W · Vᵀ` (ZCA): epsilon is added to
//!   the singular values, as pycytominer does. `-cor` variants first standardise with the ddof-0 sd.
//!
//! A fit is a self-describing blob (see [`Fit::encode`]): magic `PHXNFIT\0`, version, method,
//! dimension, row count, FNV-1a hash of the feature list (0 when not given), epsilon, parameters
//! (f64), FNV-1a checksum. `phenix_norm_apply` refuses anything else and names what differs.

use super::{
    arg_err, check_keys, feature_list, features_hash, num_opt, options_arg, profile_arg, pure,
    type_name, AnalysisError, Fnv, Rows,
};
use crate::error::{create_scalar, Guarded};
use crate::vector::encode_f32;
use faer::{Accum, Mat, MatMut, MatRef, Par};
use rusqlite::functions::{Aggregate, Context};
use rusqlite::types::ValueRef;
use rusqlite::Connection;
use std::cell::RefCell;
use std::sync::Arc;

const FIT: &str = "phenix_norm_fit";
const APPLY: &str = "phenix_norm_apply";
const MAGIC: &[u8; 8] = b"PHXNFIT\0";
const VERSION: u32 = 1;
const HEADER: usize = 56;
/// Rows per GEMM update of the sphering Gram matrix.
const CHUNK: usize = 1024;
/// pycytominer's MAD scale (`scale=1/1.4826` in scipy's `median_abs_deviation`).
pub const MAD_SCALE: f64 = 1.4826;

/// A normalisation method.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// mean / sd (ddof 0).
    Standardize,
    /// median / MAD × 1.4826.
    Robust,
    /// ZCA whitening of the covariance.
    Zca,
    /// PCA whitening of the covariance.
    Pca,
    /// ZCA whitening of the correlation.
    ZcaCor,
    /// PCA whitening of the correlation.
    PcaCor,
}

impl Method {
    fn code(self) -> u32 {
        match self {
            Method::Standardize => 1,
            Method::Robust => 2,
            Method::Zca => 3,
            Method::Pca => 4,
            Method::ZcaCor => 5,
            Method::PcaCor => 6,
        }
    }
    fn from_code(c: u32) -> Option<Method> {
        Some(match c {
            1 => Method::Standardize,
            2 => Method::Robust,
            3 => Method::Zca,
            4 => Method::Pca,
            5 => Method::ZcaCor,
            6 => Method::PcaCor,
            _ => return None,
        })
    }
    /// The name `phenix_fit_info` reports.
    pub fn name(self) -> &'static str {
        match self {
            Method::Standardize => "standardize",
            Method::Robust => "robust",
            Method::Zca => "sphere/zca",
            Method::Pca => "sphere/pca",
            Method::ZcaCor => "sphere/zca-cor",
            Method::PcaCor => "sphere/pca-cor",
        }
    }
    fn is_sphere(self) -> bool {
        matches!(
            self,
            Method::Zca | Method::Pca | Method::ZcaCor | Method::PcaCor
        )
    }
    fn n_params(self, d: usize) -> usize {
        match self {
            Method::Standardize | Method::Robust => 2 * d,
            _ => 2 * d + d * d,
        }
    }
}

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

/// Registers the three functions.
pub fn register(conn: &Connection) -> rusqlite::Result<()> {
    for n in [2, 3] {
        conn.create_aggregate_function(
            FIT,
            n,
            pure(),
            Guarded {
                name: FIT,
                inner: NormFit,
            },
        )?;
    }
    for n in [2, 3] {
        create_scalar(conn, APPLY, n, pure(), apply_fn)?;
    }
    create_scalar(conn, "phenix_fit_info", 1, pure(), |ctx| {
        let fit = fit_arg(ctx.get_raw(0), "phenix_fit_info")?;
        Ok(fit.info().to_string())
    })?;
    Ok(())
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

fn fit_arg(v: ValueRef<'_>, func: &'static str) -> Result<Arc<Fit>, AnalysisError> {
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

fn apply_fn(ctx: &Context<'_>) -> rusqlite::Result<Option<Vec<u8>>> {
    if matches!(ctx.get_raw(0), ValueRef::Null) {
        return Err(AnalysisError::Fit {
            func: APPLY,
            detail: "argument 1 (the fit) is NULL: this row's group has no fit, e.g. a plate without control rows (join the fits with LEFT JOIN to list such rows)".into(),
        }
        .into());
    }
    let fit = fit_arg(ctx.get_raw(0), APPLY)?;
    let Some(x) = profile_arg(ctx.get_raw(1), APPLY, 1)? else {
        return Ok(None);
    };
    if x.len() != fit.dim {
        return Err(AnalysisError::Fit {
            func: APPLY,
            detail: format!(
                "the fit is for profiles of {} features, the profile has {}",
                fit.dim,
                x.len()
            ),
        }
        .into());
    }
    if ctx.len() > 2 && !matches!(ctx.get_raw(2), ValueRef::Null) {
        let names = match ctx.get_raw(2) {
            ValueRef::Text(t) => feature_list(
                &serde_json::Value::String(String::from_utf8_lossy(t).into_owned()),
                APPLY,
                "argument 3 (the profile's feature list)",
            )?,
            other => {
                return Err(arg_err(
                    APPLY,
                    format!(
                        "argument 3 must be the profile's feature list as JSON text: got {}",
                        type_name(other)
                    ),
                )
                .into())
            }
        };
        if names.len() != fit.dim {
            return Err(AnalysisError::Fit {
                func: APPLY,
                detail: format!(
                    "argument 3 lists {} features, the fit has {}",
                    names.len(),
                    fit.dim
                ),
            }
            .into());
        }
        let h = features_hash(&names);
        if fit.features_hash == 0 {
            return Err(AnalysisError::Fit {
                func: APPLY,
                detail: "the fit records no feature list (fit it with options {\"features\": [...]}) so it cannot check argument 3".into(),
            }
            .into());
        }
        if h != fit.features_hash {
            return Err(AnalysisError::Fit {
                func: APPLY,
                detail: format!(
                    "the profile's feature list (hash {h:016x}) differs from the one the fit was made on (hash {:016x}): same length {}, other names or order",
                    fit.features_hash, fit.dim
                ),
            }
            .into());
        }
    }
    let mut out = Vec::with_capacity(x.len());
    fit.apply(&x, &mut out);
    if let Some(j) = out.iter().position(|v| !v.is_finite()) {
        return Err(AnalysisError::Feature {
            func: APPLY,
            index: j,
            name: String::new(),
            detail: format!("normalises to {}, outside float32's range", out[j]),
        }
        .into());
    }
    Ok(Some(encode_f32(&out)))
}

/// `phenix_norm_fit`.
struct NormFit;

/// Options of one fit.
struct Opts {
    method: Method,
    epsilon: f64,
    pad: bool,
    features: Option<Vec<String>>,
    method_text: String,
    options_text: Option<String>,
}

/// The running state of one group.
#[derive(Default)]
struct FitAcc {
    opts: Option<Opts>,
    n: u64,
    dim: usize,
    /// First row (the shift of the sums).
    shift: Vec<f64>,
    s1: Vec<f64>,
    s2: Vec<f64>,
    /// Robust: all rows.
    rows: Rows,
    /// Sphere: the pending chunk (shifted), row-major.
    chunk: Vec<f64>,
    gram: Option<Mat<f64>>,
}

fn parse_opts(ctx: &Context<'_>) -> Result<Opts, AnalysisError> {
    let method_text = match ctx.get_raw(0) {
        ValueRef::Text(t) => String::from_utf8_lossy(t).into_owned(),
        other => {
            return Err(arg_err(
                FIT,
                format!(
                    "argument 1 is the method ('standardize', 'robust' or 'sphere'): got {}",
                    type_name(other)
                ),
            ))
        }
    };
    let raw_opts = (ctx.len() > 2).then(|| ctx.get_raw(2));
    let options_text = match raw_opts {
        Some(ValueRef::Text(t)) => Some(String::from_utf8_lossy(t).into_owned()),
        _ => None,
    };
    let opts = options_arg(raw_opts, FIT)?;
    let features = match opts.get("features") {
        None | Some(serde_json::Value::Null) => None,
        Some(v) => Some(feature_list(v, FIT, "option \"features\"")?),
    };
    let (method, epsilon, pad) = match method_text.to_ascii_lowercase().as_str() {
        "standardize" => {
            check_keys(&opts, FIT, &["features"])?;
            (Method::Standardize, 0.0, false)
        }
        "robust" | "mad_robustize" => {
            check_keys(&opts, FIT, &["features", "epsilon"])?;
            (
                Method::Robust,
                num_opt(&opts, FIT, "epsilon", 1e-18)?,
                false,
            )
        }
        "sphere" | "spherize" => {
            check_keys(&opts, FIT, &["features", "epsilon", "method", "pad"])?;
            let m = match opts.get("method").and_then(|v| v.as_str()).map(str::to_ascii_lowercase) {
                None => Method::ZcaCor,
                Some(s) => match s.as_str() {
                    "zca" => Method::Zca,
                    "pca" => Method::Pca,
                    "zca-cor" => Method::ZcaCor,
                    "pca-cor" => Method::PcaCor,
                    _ => {
                        return Err(arg_err(
                            FIT,
                            format!("sphere option \"method\" must be \"zca\", \"pca\", \"zca-cor\" or \"pca-cor\": got \"{s}\""),
                        ))
                    }
                },
            };
            if opts.get("method").is_some_and(|v| !v.is_string()) {
                return Err(arg_err(FIT, "sphere option \"method\" must be a string"));
            }
            let pad = match opts.get("pad") {
                None | Some(serde_json::Value::Null) => false,
                Some(serde_json::Value::Bool(b)) => *b,
                Some(v) => {
                    return Err(arg_err(
                        FIT,
                        format!("option \"pad\" must be true or false: got {v}"),
                    ))
                }
            };
            (m, num_opt(&opts, FIT, "epsilon", 1e-6)?, pad)
        }
        other => {
            return Err(arg_err(
                FIT,
                format!(
                "unknown method '{other}'; use 'standardize', 'robust' (median/MAD) or 'sphere'"
            ),
            ))
        }
    };
    if epsilon < 0.0 {
        return Err(arg_err(
            FIT,
            format!("option \"epsilon\" must be >= 0: got {epsilon}"),
        ));
    }
    Ok(Opts {
        method,
        epsilon,
        pad,
        features,
        method_text,
        options_text,
    })
}

impl Aggregate<FitAcc, Option<Vec<u8>>> for NormFit {
    fn init(&self, _: &mut Context<'_>) -> rusqlite::Result<FitAcc> {
        Ok(FitAcc::default())
    }

    fn step(&self, ctx: &mut Context<'_>, acc: &mut FitAcc) -> rusqlite::Result<()> {
        if let Some(o) = &acc.opts {
            let same_method =
                matches!(ctx.get_raw(0), ValueRef::Text(t) if t == o.method_text.as_bytes());
            let same_opts = match (ctx.len() > 2).then(|| ctx.get_raw(2)) {
                None | Some(ValueRef::Null) => o.options_text.is_none(),
                Some(ValueRef::Text(t)) => o.options_text.as_deref().map(str::as_bytes) == Some(t),
                _ => false,
            };
            if !same_method || !same_opts {
                return Err(arg_err(
                    FIT,
                    "the method and options must be the same on every row of a group",
                )
                .into());
            }
        } else {
            acc.opts = Some(parse_opts(ctx)?);
        }
        let Some(x) = profile_arg(ctx.get_raw(1), FIT, 1)? else {
            return Err(arg_err(
                FIT,
                format!("profile {} of the group is NULL; fit on rows that have profiles (add `AND profile IS NOT NULL`)", acc.n + 1),
            )
            .into());
        };
        let opts = acc.opts.as_ref().expect("set");
        if let Some(f) = &opts.features {
            if f.len() != x.len() {
                return Err(AnalysisError::Fit {
                    func: FIT,
                    detail: format!(
                        "option \"features\" lists {} names, the profiles have {} elements",
                        f.len(),
                        x.len()
                    ),
                }
                .into());
            }
        }
        let method = opts.method;
        if acc.n == 0 {
            acc.dim = x.len();
            acc.shift = x.iter().map(|&v| f64::from(v)).collect();
            acc.s1 = vec![0.0; acc.dim];
            if method == Method::Standardize {
                acc.s2 = vec![0.0; acc.dim];
            }
            if method.is_sphere() {
                if acc.dim > 8192 {
                    return Err(arg_err(
                        FIT,
                        format!(
                            "sphering {} features needs a {0}x{0} matrix; at most 8192 features",
                            acc.dim
                        ),
                    )
                    .into());
                }
                acc.gram = Some(Mat::zeros(acc.dim, acc.dim));
            }
        } else if x.len() != acc.dim {
            return Err(AnalysisError::LengthMismatch {
                func: FIT,
                row: acc.n + 1,
                got: x.len(),
                expected: acc.dim,
            }
            .into());
        }
        acc.n += 1;
        match method {
            Method::Standardize => {
                for ((s1, s2), (&v, k)) in acc
                    .s1
                    .iter_mut()
                    .zip(&mut acc.s2)
                    .zip(x.iter().zip(&acc.shift))
                {
                    let z = f64::from(v) - k;
                    *s1 += z;
                    *s2 += z * z;
                }
            }
            Method::Robust => acc.rows.push(&x, FIT)?,
            _ => {
                for ((s1, &v), k) in acc.s1.iter_mut().zip(&x).zip(&acc.shift) {
                    let z = f64::from(v) - k;
                    *s1 += z;
                    acc.chunk.push(z);
                }
                if acc.chunk.len() >= CHUNK * acc.dim {
                    acc.flush();
                }
            }
        }
        Ok(())
    }

    fn finalize(
        &self,
        _: &mut Context<'_>,
        acc: Option<FitAcc>,
    ) -> rusqlite::Result<Option<Vec<u8>>> {
        let Some(mut acc) = acc else {
            return Err(AnalysisError::TooFewRows {
                func: FIT,
                detail: "the group has no rows: there are no control rows to fit on (check the WHERE clause that selects the controls, e.g. role = 'DMSO')".into(),
            }
            .into());
        };
        let Some(opts) = acc.opts.take() else {
            return Err(AnalysisError::TooFewRows {
                func: FIT,
                detail: "the group has no rows".into(),
            }
            .into());
        };
        let names = opts.features.as_deref();
        let fname = |j: usize| names.map_or(String::new(), |n| format!(" ({})", n[j]));
        let n = acc.n;
        let d = acc.dim;
        let params = match opts.method {
            Method::Standardize => {
                let nf = n as f64;
                let mut center = Vec::with_capacity(d);
                let mut scale = Vec::with_capacity(d);
                for j in 0..d {
                    let m = acc.s1[j] / nf;
                    let var = (acc.s2[j] / nf - m * m).max(0.0);
                    if var == 0.0 {
                        return Err(AnalysisError::Feature {
                            func: FIT,
                            index: j,
                            name: fname(j),
                            detail: format!("is constant over the {n} control rows (sd 0); drop it (phenix_feature_select) before standardizing"),
                        }
                        .into());
                    }
                    center.push(acc.shift[j] + m);
                    scale.push(var.sqrt());
                }
                [center, scale].concat()
            }
            Method::Robust => robust_params(&acc.rows, opts.epsilon, &fname)?,
            _ => {
                acc.flush();
                sphere_params(&acc, opts.method, opts.epsilon, opts.pad, &fname)?
            }
        };
        let fit = Fit {
            method: opts.method,
            dim: d,
            n_rows: n,
            features_hash: names.map_or(0, features_hash),
            epsilon: opts.epsilon,
            params,
        };
        Ok(Some(fit.encode()))
    }
}

impl FitAcc {
    /// Adds the pending chunk's `ZᵀZ` to the Gram matrix (GEMM).
    fn flush(&mut self) {
        let d = self.dim;
        let b = self.chunk.len() / d.max(1);
        if b == 0 {
            return;
        }
        let z = MatRef::from_row_major_slice(&self.chunk, b, d);
        let g: MatMut<'_, f64> = self.gram.as_mut().expect("sphere").as_mut();
        // Only the lower triangle of the symmetric Gram matrix is computed (half the flops).
        use faer::linalg::matmul::triangular::{matmul, BlockStructure};
        matmul(
            g,
            BlockStructure::TriangularLower,
            Accum::Add,
            z.transpose(),
            BlockStructure::Rectangular,
            z,
            BlockStructure::Rectangular,
            1.0f64,
            Par::Seq,
        );
        self.chunk.clear();
    }
}

fn robust_params(
    rows: &Rows,
    epsilon: f64,
    fname: &dyn Fn(usize) -> String,
) -> Result<Vec<f64>, AnalysisError> {
    let (n, d) = (rows.n, rows.dim);
    let mut center = Vec::with_capacity(d);
    let mut scale = Vec::with_capacity(d);
    // Column-major copy, one pass over the rows (the row-major gather per column is cache-hostile).
    let mut cols = vec![0f32; n * d];
    for (i, row) in rows.data.chunks_exact(d).enumerate() {
        for (j, &v) in row.iter().enumerate() {
            cols[j * n + i] = v;
        }
    }
    let mut col = vec![0f64; n];
    for j in 0..d {
        for (c, &v) in col.iter_mut().zip(&cols[j * n..(j + 1) * n]) {
            *c = f64::from(v);
        }
        let med = super::median_in_place(&mut col);
        for c in col.iter_mut() {
            *c = (*c - med).abs();
        }
        let mad = super::median_in_place(&mut col) * MAD_SCALE;
        if mad == 0.0 {
            return Err(AnalysisError::Feature {
                func: FIT,
                index: j,
                name: fname(j),
                detail: format!(
                    "has MAD 0 over the {n} control rows (at least half of them share one value); robust normalisation would divide by epsilon ({epsilon:e}); drop it (phenix_feature_select) first"
                ),
            });
        }
        center.push(med);
        scale.push(mad + epsilon);
    }
    Ok([center, scale].concat())
}

fn sphere_params(
    acc: &FitAcc,
    method: Method,
    epsilon: f64,
    pad: bool,
    fname: &dyn Fn(usize) -> String,
) -> Result<Vec<f64>, AnalysisError> {
    let (n, d) = (acc.n as usize, acc.dim);
    if n < 2 {
        return Err(AnalysisError::TooFewRows {
            func: FIT,
            detail: format!(
                "sphering needs at least 2 control rows (a covariance); the group has {n}"
            ),
        });
    }
    let nf = n as f64;
    let g0 = acc.gram.as_ref().expect("sphere");
    // Centred Gram: Σ (x-K)(x-K)ᵀ - s1 s1ᵀ / n.
    let mean: Vec<f64> = (0..d).map(|j| acc.s1[j] / nf).collect();
    let mut g = Mat::<f64>::from_fn(d, d, |i, j| {
        g0[(i.max(j), i.min(j))] - acc.s1[i] * acc.s1[j] / nf
    });
    let center: Vec<f64> = (0..d).map(|j| acc.shift[j] + mean[j]).collect();
    let cor = matches!(method, Method::ZcaCor | Method::PcaCor);
    let mut scale = vec![1.0f64; d];
    for j in 0..d {
        let var = g[(j, j)] / nf;
        if var <= 0.0 {
            return Err(AnalysisError::Feature {
                func: FIT,
                index: j,
                name: fname(j),
                detail: format!("is constant over the {n} control rows; it makes the covariance singular, drop it (phenix_feature_select) before sphering"),
            });
        }
        if cor {
            scale[j] = var.sqrt();
        }
    }
    if cor {
        g = Mat::<f64>::from_fn(d, d, |i, j| g[(i, j)] / (scale[i] * scale[j]));
    }
    let evd = g.self_adjoint_eigen(faer::Side::Lower).map_err(|e| {
        arg_err(
            FIT,
            format!("the eigendecomposition did not converge ({e:?})"),
        )
    })?;
    let u = evd.U();
    let s = evd.S().column_vector();
    // Descending order, as numpy's SVD.
    let lam: Vec<f64> = (0..d).rev().map(|k| s[k].max(0.0)).collect();
    let cols: Vec<usize> = (0..d).rev().collect();
    let lmax = lam[0];
    let tol = lmax * d.max(n) as f64 * 1e-13;
    let rank = lam.iter().filter(|&&l| l > tol).count();
    let full = d.min(n - 1);
    if rank < full || rank == 0 {
        return Err(AnalysisError::TooFewRows {
            func: FIT,
            detail: format!(
                "the {n} control rows span only {rank} dimensions of the {d} features (expected {full}): some features are linear combinations of others (duplicated or constant); drop them with phenix_feature_select (correlation_threshold) before sphering"
            ),
        });
    }
    if rank < d && !pad {
        return Err(AnalysisError::TooFewRows {
            func: FIT,
            detail: format!(
                "sphering {d} features needs at least {} control rows for a full-rank covariance; the group has {n} (rank {rank}). Use fewer features (phenix_feature_select), more controls, method 'robust' or 'standardize', or option \"pad\": true to whiten as pycytominer does (the smallest nonzero singular value stands in for the {} missing ones, regularised by epsilon = {epsilon:e})",
                d + 1,
                d - rank
            ),
        });
    }
    let mut sig: Vec<f64> = lam.iter().map(|l| l.sqrt()).collect();
    for k in rank..d {
        sig[k] = sig[rank - 1];
    }
    let f: Vec<f64> = sig
        .iter()
        .map(|s| (nf - 1.0).sqrt() / (s + epsilon))
        .collect();
    // V with columns in descending order; sign fixed so the largest-magnitude entry is positive.
    let mut v = Mat::<f64>::from_fn(d, d, |i, k| u[(i, cols[k])]);
    for k in 0..d {
        let mut best = 0usize;
        for i in 0..d {
            if v[(i, k)].abs() > v[(best, k)].abs() {
                best = i;
            }
        }
        if v[(best, k)] < 0.0 {
            for i in 0..d {
                v[(i, k)] = -v[(i, k)];
            }
        }
    }
    let vf = Mat::<f64>::from_fn(d, d, |i, k| v[(i, k)] * f[k]);
    let w = match method {
        Method::Pca | Method::PcaCor => vf,
        _ => {
            let mut w = Mat::<f64>::zeros(d, d);
            faer::linalg::matmul::matmul(
                w.as_mut(),
                Accum::Replace,
                vf.as_ref(),
                v.transpose(),
                1.0,
                Par::Seq,
            );
            w
        }
    };
    let mut params = Vec::with_capacity(2 * d + d * d);
    params.extend_from_slice(&center);
    params.extend_from_slice(&scale);
    for i in 0..d {
        for j in 0..d {
            params.push(w[(i, j)]);
        }
    }
    Ok(params)
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
