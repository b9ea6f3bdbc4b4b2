//! Phenomic-profile analysis in SQL: from a wide per-well table to profile blobs ([`pack`]),
//! control-based normalisation ([`fit`]), feature hygiene ([`select`]), consensus profiles
//! ([`consensus`]), activity calls ([`activity`]), copairs-style mean average precision ([`map`]) and
//! retrieval metrics ([`metrics`]).
//!
//! The reference with executed examples and the conventions followed (pycytominer 1.7, copairs 0.5)
//! is `docs/analysis.md`.
//!
//! Conventions shared by every function here:
//! - A profile argument is JSON text or a `float32` blob; every profile result is a `float32` blob.
//! - Aggregates that need all of a group's rows (medians, MAD, MODZ, feature selection, activity, mAP,
//!   metrics) keep them in memory as `f32`, and refuse a group larger than [`MAX_GROUP_VALUES`]
//!   values with an error instead of growing without bound. Streaming aggregates (`standardize`,
//!   `sphere`, `phenix_mean`) keep `O(d)` or `O(d²)` state whatever the row count.
//! - Aggregate results with many parts (per-query rows and a summary) are JSON text, unpacked with
//!   SQLite's `json_each` / `->>`.
//! - Errors are [`AnalysisError`]s, reaching SQLite as `SQLITE_ERROR` with a message that starts
//!   with `phenix: ` and names the function, the row or feature, what was expected and what was found.

pub mod activity;
pub mod consensus;
pub mod fit;
pub mod map;
pub mod metrics;
pub mod pack;
pub mod select;

use crate::vector::{decode_vector, VectorError};
use phenix_core::ElemType;
use rusqlite::functions::FunctionFlags;
use rusqlite::types::ValueRef;
use rusqlite::Connection;

/// The most `f32` values (rows × features) one group of a buffering aggregate may hold: 2^28
/// values, 1 GiB. A larger group is an error naming this limit, never an unbounded allocation.
pub const MAX_GROUP_VALUES: usize = 1 << 28;

/// Why an analysis function refused its input.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum AnalysisError {
    /// A bad argument (type, value, option).
    #[error("phenix: {func}(): {detail}")]
    Argument {
        /// The SQL function.
        func: &'static str,
        /// What was wrong.
        detail: String,
    },
    /// A profile of another length than the group's first one.
    #[error("phenix: {func}(): profile {row} of the group has {got} elements, the ones before it have {expected}; all profiles of one group must have the same features")]
    LengthMismatch {
        /// The SQL function.
        func: &'static str,
        /// 1-based position of the row in the group.
        row: u64,
        /// Its length.
        got: usize,
        /// The length of the earlier rows.
        expected: usize,
    },
    /// A group without (enough) rows.
    #[error("phenix: {func}(): {detail}")]
    TooFewRows {
        /// The SQL function.
        func: &'static str,
        /// What was needed and found.
        detail: String,
    },
    /// A feature that cannot be used (constant, zero MAD, ...).
    #[error("phenix: {func}(): feature {index}{name} {detail}")]
    Feature {
        /// The SQL function.
        func: &'static str,
        /// 0-based feature position.
        index: usize,
        /// ` (name)` when the feature names are known, else empty.
        name: String,
        /// What is wrong with it.
        detail: String,
    },
    /// A cell of a wide table that is not a finite number.
    #[error("phenix: phenix_pack(): row {rowid} of {table}, column {column}: {detail}")]
    Cell {
        /// The table.
        table: String,
        /// The row's rowid.
        rowid: i64,
        /// The column.
        column: String,
        /// What was found.
        detail: String,
    },
    /// A value that is not a fitted normalisation, or a fit that does not match the profile.
    #[error("phenix: {func}(): {detail}")]
    Fit {
        /// The SQL function.
        func: &'static str,
        /// What was wrong.
        detail: String,
    },
    /// A group larger than [`MAX_GROUP_VALUES`].
    #[error("phenix: {func}(): the group holds more than {limit} values (rows x features); this aggregate keeps a group's rows in memory, so split the group (GROUP BY plate) or select fewer features")]
    GroupTooLarge {
        /// The SQL function.
        func: &'static str,
        /// The limit.
        limit: usize,
    },
}

impl From<AnalysisError> for rusqlite::Error {
    fn from(e: AnalysisError) -> Self {
        crate::error::sql_error(e)
    }
}

pub(crate) fn arg_err(func: &'static str, detail: impl Into<String>) -> AnalysisError {
    AnalysisError::Argument {
        func,
        detail: detail.into(),
    }
}

/// Flags of the pure functions.
pub(crate) fn pure() -> FunctionFlags {
    FunctionFlags::SQLITE_UTF8
        | FunctionFlags::SQLITE_DETERMINISTIC
        | FunctionFlags::SQLITE_INNOCUOUS
}

/// Registers every analysis function on `conn`.
pub fn register(conn: &Connection) -> rusqlite::Result<()> {
    pack::register(conn)?;
    fit::register(conn)?;
    select::register(conn)?;
    consensus::register(conn)?;
    activity::register(conn)?;
    map::register(conn)?;
    metrics::register(conn)?;
    Ok(())
}

/// Decodes profile argument `i` (JSON text or a float32 blob); `None` for SQL NULL.
pub(crate) fn profile_arg(
    v: ValueRef<'_>,
    func: &'static str,
    i: usize,
) -> rusqlite::Result<Option<Vec<f32>>> {
    match decode_vector(v, &format!("{func}() argument {}", i + 1), ElemType::F32) {
        Ok(d) => Ok(Some(d.values)),
        Err(VectorError::Null { .. }) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// A SQL value's kind, for messages ("an integer", "text", ...).
pub fn type_name(v: ValueRef<'_>) -> &'static str {
    match v {
        ValueRef::Null => "NULL",
        ValueRef::Integer(_) => "an integer",
        ValueRef::Real(_) => "a real number",
        ValueRef::Text(_) => "text",
        ValueRef::Blob(_) => "a blob",
    }
}

/// A group key (treatment, label, compound): any non-NULL SQL value, compared by value. Integers and
/// reals are kept apart (`1` and `1.0` are different keys), as are text and blobs. Order: integers
/// (numeric), reals (numeric), text (bytewise), blobs (bytewise).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Key {
    Int(i64),
    Real(u64),
    Text(String),
    Blob(Vec<u8>),
}

impl Key {
    pub(crate) fn from_value(
        v: ValueRef<'_>,
        func: &'static str,
        what: &str,
    ) -> Result<Option<Key>, AnalysisError> {
        Ok(Some(match v {
            ValueRef::Null => return Ok(None),
            ValueRef::Integer(i) => Key::Int(i),
            ValueRef::Real(r) => {
                if !r.is_finite() {
                    return Err(arg_err(func, format!("{what} is {r}; keys must be finite")));
                }
                // Bits mapped so that unsigned order is numeric order.
                let b = r.to_bits();
                Key::Real(if b >> 63 == 1 { !b } else { b | (1 << 63) })
            }
            ValueRef::Text(t) => Key::Text(String::from_utf8_lossy(t).into_owned()),
            ValueRef::Blob(b) => Key::Blob(b.to_vec()),
        }))
    }

    /// The key as a JSON value.
    pub(crate) fn to_json(&self) -> serde_json::Value {
        match self {
            Key::Int(i) => serde_json::Value::from(*i),
            Key::Real(b) => {
                let bits = if b >> 63 == 1 { b & !(1 << 63) } else { !b };
                serde_json::Value::from(f64::from_bits(bits))
            }
            Key::Text(s) => serde_json::Value::from(s.as_str()),
            Key::Blob(b) => {
                serde_json::Value::from(b.iter().map(|x| format!("{x:02x}")).collect::<String>())
            }
        }
    }
}

/// Parses an options argument: NULL or JSON text holding an object.
pub(crate) fn options_arg(
    v: Option<ValueRef<'_>>,
    func: &'static str,
) -> Result<serde_json::Map<String, serde_json::Value>, AnalysisError> {
    let Some(v) = v else {
        return Ok(Default::default());
    };
    let text = match v {
        ValueRef::Null => return Ok(Default::default()),
        ValueRef::Text(t) => String::from_utf8_lossy(t).into_owned(),
        other => {
            return Err(arg_err(
                func,
                format!(
                    "options must be JSON text (an object): got {}",
                    type_name(other)
                ),
            ))
        }
    };
    match serde_json::from_str::<serde_json::Value>(&text) {
        Ok(serde_json::Value::Object(m)) => Ok(m),
        Ok(_) => Err(arg_err(
            func,
            format!("options must be a JSON object: got {text}"),
        )),
        Err(e) => Err(arg_err(
            func,
            format!("options are not valid JSON ({e}): {text}"),
        )),
    }
}

/// Checks that every key of `opts` is one of `known`.
pub(crate) fn check_keys(
    opts: &serde_json::Map<String, serde_json::Value>,
    func: &'static str,
    known: &[&str],
) -> Result<(), AnalysisError> {
    for k in opts.keys() {
        if !known.contains(&k.as_str()) {
            return Err(arg_err(
                func,
                format!("unknown option \"{k}\" (known: {})", known.join(", ")),
            ));
        }
    }
    Ok(())
}

/// A finite number option, with its default.
pub(crate) fn num_opt(
    opts: &serde_json::Map<String, serde_json::Value>,
    func: &'static str,
    key: &str,
    default: f64,
) -> Result<f64, AnalysisError> {
    match opts.get(key) {
        None | Some(serde_json::Value::Null) => Ok(default),
        Some(v) => match v.as_f64() {
            Some(x) if x.is_finite() => Ok(x),
            _ => Err(arg_err(
                func,
                format!("option \"{key}\" must be a number: got {v}"),
            )),
        },
    }
}

/// A feature list given as a JSON array of strings (or JSON text holding one).
pub(crate) fn feature_list(
    v: &serde_json::Value,
    func: &'static str,
    what: &str,
) -> Result<Vec<String>, AnalysisError> {
    let arr = match v {
        serde_json::Value::String(s) => serde_json::from_str::<serde_json::Value>(s)
            .map_err(|e| arg_err(func, format!("{what} is not a JSON array of names ({e})")))?,
        other => other.clone(),
    };
    let serde_json::Value::Array(items) = arr else {
        return Err(arg_err(
            func,
            format!("{what} must be a JSON array of feature names"),
        ));
    };
    items
        .iter()
        .enumerate()
        .map(|(i, x)| {
            x.as_str().map(str::to_string).ok_or_else(|| {
                arg_err(
                    func,
                    format!("{what}: element {i} is {x}, not a feature name (text)"),
                )
            })
        })
        .collect()
}

/// FNV-1a (64-bit) of the feature names, each followed by a 0 byte: the fingerprint of a feature list
/// stored in fitted values.
pub fn features_hash(names: &[String]) -> u64 {
    let mut h = Fnv::new();
    for n in names {
        h.write(n.as_bytes());
        h.write(&[0]);
    }
    h.finish().max(1)
}

/// FNV-1a, 64-bit.
pub(crate) struct Fnv(u64);

impl Fnv {
    pub(crate) fn new() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
    pub(crate) fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
    pub(crate) fn finish(&self) -> u64 {
        self.0
    }
}

/// The documented random stream of the seeded nulls: SplitMix64 from `seed`, and a uniform index in
/// `0..n` by [`SplitMix64::index`] (Lemire's multiply-shift, without rejection). numpy can reproduce it
/// with Python integers (see docs/analysis.md).
pub(crate) use phenix_core::SplitMix64;

/// Benjamini–Hochberg adjusted p-values (statsmodels' `multipletests(method="fdr_bh")`): sorted
/// ascending, `q_(i) = min_{j >= i} p_(j) · m / j`, capped at 1.
pub fn bh_qvalues(p: &[f64]) -> Vec<f64> {
    let m = p.len();
    let mut order: Vec<usize> = (0..m).collect();
    order.sort_by(|&a, &b| p[a].total_cmp(&p[b]));
    let mut q = vec![0.0; m];
    let mut running = f64::INFINITY;
    for (rank, &i) in order.iter().enumerate().rev() {
        let v = p[i] * m as f64 / (rank + 1) as f64;
        running = running.min(v);
        q[i] = running.min(1.0);
    }
    q
}

/// Profiles of one group, row-major, with the checks every buffering aggregate shares.
#[derive(Default)]
pub(crate) struct Rows {
    pub(crate) data: Vec<f32>,
    pub(crate) dim: usize,
    pub(crate) n: usize,
}

impl Rows {
    /// Appends one profile; errors for a length change or a group past [`MAX_GROUP_VALUES`].
    pub(crate) fn push(&mut self, v: &[f32], func: &'static str) -> Result<(), AnalysisError> {
        if self.n == 0 {
            self.dim = v.len();
        } else if v.len() != self.dim {
            return Err(AnalysisError::LengthMismatch {
                func,
                row: self.n as u64 + 1,
                got: v.len(),
                expected: self.dim,
            });
        }
        if self.data.len() + v.len() > MAX_GROUP_VALUES {
            return Err(AnalysisError::GroupTooLarge {
                func,
                limit: MAX_GROUP_VALUES,
            });
        }
        self.data.extend_from_slice(v);
        self.n += 1;
        Ok(())
    }

    pub(crate) fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.dim..(i + 1) * self.dim]
    }
}

/// `v` scaled to unit L2 norm (in f64), or `None` for a zero vector.
pub(crate) fn unit(v: &[f32]) -> Option<Vec<f64>> {
    let n = v
        .iter()
        .map(|&x| f64::from(x) * f64::from(x))
        .sum::<f64>()
        .sqrt();
    if n == 0.0 {
        return None;
    }
    Some(v.iter().map(|&x| f64::from(x) / n).collect())
}

pub(crate) fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Element-wise median of a column (pandas' `median`: the mean of the two middle values for an even
/// count). `xs` is reordered.
pub(crate) fn median_in_place(xs: &mut [f64]) -> f64 {
    let n = xs.len();
    let mid = n / 2;
    let (_, m, _) = xs.select_nth_unstable_by(mid, f64::total_cmp);
    let hi = *m;
    if n % 2 == 1 {
        return hi;
    }
    let lo = xs[..mid].iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (lo + hi) / 2.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bh_matches_hand_computation() {
        // p sorted: 0.01, 0.02, 0.03, 0.5 -> 0.04, 0.04, 0.04, 0.5
        let q = bh_qvalues(&[0.5, 0.01, 0.03, 0.02]);
        let want = [0.5, 0.04, 0.04, 0.04];
        for (a, b) in q.iter().zip(want) {
            assert!((a - b).abs() < 1e-12, "{q:?}");
        }
    }

    #[test]
    fn median_even_and_odd() {
        assert_eq!(median_in_place(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median_in_place(&mut [4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median_in_place(&mut [7.0]), 7.0);
    }

    #[test]
    fn splitmix_reference_values() {
        // Reference values of SplitMix64 seeded with 0 (Vigna's splitmix64.c).
        let mut r = SplitMix64::new(0);
        assert_eq!(r.next_u64(), 0xE220_A839_7B1D_CDAF);
        assert_eq!(r.next_u64(), 0x6E78_9E6A_A1B9_65F4);
    }
}
