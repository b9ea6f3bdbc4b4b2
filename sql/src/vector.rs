//! Vector values in SQL: decoding JSON text, `float32` blobs and `float16` blobs into `f32`, and encoding
//! back.
//!
//! # Encodings
//! - **JSON text**: an array of numbers, `'[1, 2.5, -3]'` (JSON number grammar; whitespace allowed).
//! - **`float32` blob**: `4·N` bytes, each element an IEEE 754 binary32 in little-endian order. This is
//!   sqlite-vec's format, so its blobs (`vec_f32(...)`) can be passed unchanged.
//! - **`float16` blob**: `2·N` bytes, IEEE 754 binary16 little-endian (what `phenix_f16` returns).
//!
//! A blob does not say which of the two it is. Two rules decide:
//! - With an expected dimension `N` ([`parse_vector`] with `Some((N, _))`, used for table columns) the
//!   length decides: `2·N` bytes are `float16`, `4·N` bytes are `float32`, anything else is an error.
//! - Without one ([`decode_vector`], used by the scalar functions) the caller says how blobs are encoded;
//!   the SQL functions take it from the blob's SQLite subtype when it has one of phenix's
//!   ([`SUBTYPE_F16`], [`SUBTYPE_F32`]: every blob phenix returns carries one), else from an optional
//!   last argument `'float16'`/`'float32'`, else `float32`. Subtypes do not survive storage in a
//!   column: a stored `float16` blob needs the argument again.
//!
//! Every decoded element is finite (NaN and ±inf are errors). An empty vector is an error.
//!
//! # Errors
//! [`VectorError`] messages start with `phenix: `, name the value (`what`, e.g. `column embedding` or
//! `phenix_dims() argument 1`), say what was expected and what was found.

use half::f16;
use phenix_core::ElemType;
use rusqlite::types::ValueRef;
use std::fmt::Write as _;

/// The SQLite subtype phenix gives the `float32` blobs it returns: 223, sqlite-vec's subtype for its
/// `float32` vectors, so either extension reads the other's results right.
pub const SUBTYPE_F32: u32 = 223;
/// The SQLite subtype phenix gives the `float16` blobs it returns (104, `'h'` for half).
pub const SUBTYPE_F16: u32 = 104;

/// The subtype of a blob of `elem` elements ([`SUBTYPE_F32`] / [`SUBTYPE_F16`]).
pub fn subtype_of(elem: ElemType) -> u32 {
    match elem {
        ElemType::F32 => SUBTYPE_F32,
        ElemType::F16 => SUBTYPE_F16,
    }
}

/// The element type a subtype tags, if it is one of phenix's (or sqlite-vec's `float32`).
pub fn elem_of_subtype(subtype: u32) -> Option<ElemType> {
    match subtype {
        SUBTYPE_F32 => Some(ElemType::F32),
        SUBTYPE_F16 => Some(ElemType::F16),
        _ => None,
    }
}

/// How a vector value was encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Encoding {
    /// JSON text, `[1,2.5,-3]`.
    Json,
    /// A little-endian blob of the given element type.
    Blob(ElemType),
}

impl Encoding {
    /// Encodes `values` in this encoding. For [`Encoding::Blob`]`(ElemType::F16)` the values must already
    /// be in float16's range (see [`check_f16_range`]); larger ones become ±inf.
    pub fn encode(self, values: &[f32]) -> rusqlite::types::Value {
        use rusqlite::types::Value;
        match self {
            Encoding::Json => Value::Text(to_json(values)),
            Encoding::Blob(ElemType::F32) => Value::Blob(encode_f32(values)),
            Encoding::Blob(ElemType::F16) => Value::Blob(encode_f16(values)),
        }
    }
}

/// A decoded vector and the encoding it came in.
#[derive(Clone, Debug, PartialEq)]
pub struct Decoded {
    /// The elements, widened to `f32`; all finite, at least one.
    pub values: Vec<f32>,
    /// The encoding of the SQL value.
    pub encoding: Encoding,
}

/// Why a SQL value is not an acceptable vector. Messages start with `phenix: ` and name the value.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum VectorError {
    /// The value is SQL NULL (the scalar functions return NULL instead of raising this).
    #[error("phenix: {what} expects {expected}: got NULL")]
    Null {
        /// The value's name.
        what: String,
        /// What was expected.
        expected: String,
    },
    /// The value is an integer or a real number.
    #[error("phenix: {what} expects {expected}: got {found}")]
    WrongType {
        /// The value's name.
        what: String,
        /// What was expected.
        expected: String,
        /// `an integer` or `a real number`.
        found: &'static str,
    },
    /// A blob whose length fits no accepted encoding.
    #[error("phenix: {what} expects {expected}: got a {len}-byte blob ({hint})")]
    BlobLength {
        /// The value's name.
        what: String,
        /// What was expected.
        expected: String,
        /// The blob's length in bytes.
        len: usize,
        /// Which lengths would have been accepted.
        hint: String,
    },
    /// Text that is not a JSON array of numbers.
    #[error("phenix: {what}: malformed JSON vector at character {position}: {detail} (a vector is JSON text like '[1, 2.5, -3]')")]
    Json {
        /// The value's name.
        what: String,
        /// 1-based character position of the problem.
        position: usize,
        /// What was wrong there.
        detail: String,
    },
    /// A vector with no elements.
    #[error("phenix: {what}: the vector is empty; a vector needs at least one element")]
    Empty {
        /// The value's name.
        what: String,
    },
    /// A vector of another dimension than expected.
    #[error("phenix: {what} expects {expected}: got {found} elements")]
    DimMismatch {
        /// The value's name.
        what: String,
        /// What was expected (`float16[256]`).
        expected: String,
        /// The number of elements found.
        found: usize,
    },
    /// An element that is NaN, ±inf, too large for `float32` (JSON) or for `float16` (targets/outputs).
    #[error("phenix: {what}: element {index} is {value}: {reason}")]
    OutOfRange {
        /// The value's name.
        what: String,
        /// 0-based index of the element.
        index: usize,
        /// The element as written or decoded.
        value: String,
        /// Why it is not accepted.
        reason: &'static str,
    },
}

impl From<VectorError> for rusqlite::Error {
    fn from(e: VectorError) -> Self {
        crate::error::sql_error(e)
    }
}

const NON_FINITE: &str = "vectors hold finite numbers only (no NaN or infinity)";
const F32_OVERFLOW: &str = "too large for float32 (|x| <= 3.4028235e38)";
const F16_RANGE: &str =
    "outside float16's range (|x| <= 65504); store it as float32 or scale the vector";

/// The largest finite `float16` magnitude.
pub const F16_MAX: f32 = 65504.0;

/// Decodes a vector for a column or parameter of known shape.
///
/// `what` names the value in messages (`column embedding`). With `expect = Some((n, elem))`, a blob of
/// `2·n` bytes is read as `float16` and one of `4·n` bytes as `float32`; JSON text must hold `n` numbers;
/// and when `elem` is [`ElemType::F16`] every element must fit in float16 (`|x| <= 65504`). With
/// `None`, a blob is read as `float32` (use [`decode_vector`] to say otherwise). NULL is
/// [`VectorError::Null`].
pub fn parse_vector(
    value: ValueRef<'_>,
    what: &str,
    expect: Option<(usize, ElemType)>,
) -> Result<Vec<f32>, VectorError> {
    let Some((dim, elem)) = expect else {
        return decode_vector(value, what, ElemType::F32).map(|d| d.values);
    };
    let expected = format!("{elem}[{dim}]");
    let values = match value {
        ValueRef::Blob(b) => {
            let blob_elem = if b.len() == dim * 2 {
                ElemType::F16
            } else if b.len() == dim * 4 {
                ElemType::F32
            } else {
                return Err(VectorError::BlobLength {
                    what: what.into(),
                    expected,
                    len: b.len(),
                    hint: format!(
                        "expected {} bytes of f16 or {} bytes of f32",
                        dim * 2,
                        dim * 4
                    ),
                });
            };
            decode_blob(b, blob_elem, what)?
        }
        other => {
            let v = decode_vector_into(other, what, ElemType::F32, elem).map_err(|e| match e {
                VectorError::Null { what, .. } => VectorError::Null {
                    what,
                    expected: expected.clone(),
                },
                VectorError::WrongType { what, found, .. } => VectorError::WrongType {
                    what,
                    expected: expected.clone(),
                    found,
                },
                e => e,
            })?;
            if v.values.len() != dim {
                return Err(VectorError::DimMismatch {
                    what: what.into(),
                    expected,
                    found: v.values.len(),
                });
            }
            v.values
        }
    };
    if elem == ElemType::F16 {
        check_f16_range(&values, what)?;
    }
    Ok(values)
}

/// Decodes a vector of any dimension: JSON text, or a blob of `blob_elem` elements.
///
/// `what` names the value in messages (`phenix_dims() argument 1`). NULL is [`VectorError::Null`].
pub fn decode_vector(
    value: ValueRef<'_>,
    what: &str,
    blob_elem: ElemType,
) -> Result<Decoded, VectorError> {
    decode_vector_into(value, what, blob_elem, ElemType::F32)
}

/// [`decode_vector`] for a value that will be stored as `json_target`: with [`ElemType::F16`],
/// each JSON number is rounded once, from its decimal text, to the nearest `float16` (ties to
/// even; `|x| <= 65504` is required), and returned as that `float16`'s exact `f32` value, so that
/// encoding it as `float16` afterwards changes nothing. (Rounding to `f32` first and then to
/// `float16` would round twice: `1.00048828125001` would become 1, not the nearest 1.0009766.)
/// Blobs are read as `blob_elem` either way.
pub fn decode_vector_into(
    value: ValueRef<'_>,
    what: &str,
    blob_elem: ElemType,
    json_target: ElemType,
) -> Result<Decoded, VectorError> {
    let expected = || format!("a vector (JSON text or a {} blob)", blob_elem.name());
    match value {
        ValueRef::Null => Err(VectorError::Null {
            what: what.into(),
            expected: expected(),
        }),
        ValueRef::Integer(_) => Err(VectorError::WrongType {
            what: what.into(),
            expected: expected(),
            found: "an integer",
        }),
        ValueRef::Real(_) => Err(VectorError::WrongType {
            what: what.into(),
            expected: expected(),
            found: "a real number",
        }),
        ValueRef::Text(t) => {
            let s = std::str::from_utf8(t).map_err(|e| VectorError::Json {
                what: what.into(),
                position: char_position(t, e.valid_up_to()),
                detail: "the text is not valid UTF-8".into(),
            })?;
            let values = parse_json(s, what, json_target)?;
            Ok(Decoded {
                values,
                encoding: Encoding::Json,
            })
        }
        ValueRef::Blob(b) => {
            let size = blob_elem.size();
            if b.len() % size != 0 {
                let hint = match blob_elem {
                    ElemType::F32 => "a float32 blob has 4 bytes per element; for a float16 blob pass 'float16' as the last argument",
                    ElemType::F16 => "a float16 blob has 2 bytes per element",
                };
                return Err(VectorError::BlobLength {
                    what: what.into(),
                    expected: format!("a {} blob", blob_elem.name()),
                    len: b.len(),
                    hint: hint.into(),
                });
            }
            let values = decode_blob(b, blob_elem, what)?;
            Ok(Decoded {
                values,
                encoding: Encoding::Blob(blob_elem),
            })
        }
    }
}

fn decode_blob(b: &[u8], elem: ElemType, what: &str) -> Result<Vec<f32>, VectorError> {
    if b.is_empty() {
        return Err(VectorError::Empty { what: what.into() });
    }
    let values: Vec<f32> = match elem {
        ElemType::F32 => b
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        ElemType::F16 => b
            .chunks_exact(2)
            .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
    };
    check_finite(&values, what)?;
    Ok(values)
}

fn check_finite(values: &[f32], what: &str) -> Result<(), VectorError> {
    match values.iter().position(|x| !x.is_finite()) {
        None => Ok(()),
        Some(index) => Err(VectorError::OutOfRange {
            what: what.into(),
            index,
            value: format_f32(values[index]),
            reason: NON_FINITE,
        }),
    }
}

/// Checks that every element fits in `float16` (`|x| <= 65504`, as `phenix_core::store::check_values`).
pub fn check_f16_range(values: &[f32], what: &str) -> Result<(), VectorError> {
    match values.iter().position(|x| x.abs() > F16_MAX) {
        None => Ok(()),
        Some(index) => Err(VectorError::OutOfRange {
            what: what.into(),
            index,
            value: format_f32(values[index]),
            reason: F16_RANGE,
        }),
    }
}

/// 1-based character position of byte offset `byte` in `t` (counting UTF-8 lead bytes).
fn char_position(t: &[u8], byte: usize) -> usize {
    t[..byte.min(t.len())]
        .iter()
        .filter(|&&c| (c & 0xC0) != 0x80)
        .count()
        + 1
}

/// Parses a JSON array of numbers into `f32`: each number rounded once, from its decimal text, to
/// the nearest `target` value (see [`decode_vector_into`]).
fn parse_json(s: &str, what: &str, target: ElemType) -> Result<Vec<f32>, VectorError> {
    let b = s.as_bytes();
    let err = |pos: usize, detail: String| VectorError::Json {
        what: what.into(),
        position: char_position(b, pos),
        detail,
    };
    let found = |pos: usize| -> String {
        match s[pos..].chars().next() {
            None => "the end of the text".into(),
            Some(c) => format!("'{c}'"),
        }
    };
    let skip_ws = |mut i: usize| {
        while i < b.len() && matches!(b[i], b' ' | b'\t' | b'\n' | b'\r') {
            i += 1;
        }
        i
    };
    let mut i = skip_ws(0);
    if b.get(i) != Some(&b'[') {
        return Err(err(i, format!("expected '[', found {}", found(i))));
    }
    i = skip_ws(i + 1);
    let mut out = Vec::new();
    if b.get(i) == Some(&b']') {
        i += 1;
    } else {
        loop {
            let start = i;
            let end = scan_number(b, i)
                .ok_or_else(|| err(start, format!("expected a number, found {}", found(start))))?;
            let text = &s[start..end];
            // Rust's parser rounds correctly to the nearest f32; the grammar was checked by scan_number.
            let x: f32 = match target {
                ElemType::F32 => text
                    .parse()
                    .map_err(|_| err(start, format!("cannot read the number {text}")))?,
                ElemType::F16 => match decimal_to_f16(text) {
                    Some(h) => h.to_f32(),
                    None => {
                        return Err(VectorError::OutOfRange {
                            what: what.into(),
                            index: out.len(),
                            value: text.into(),
                            reason: F16_RANGE,
                        })
                    }
                },
            };
            if !x.is_finite() {
                return Err(VectorError::OutOfRange {
                    what: what.into(),
                    index: out.len(),
                    value: text.into(),
                    reason: F32_OVERFLOW,
                });
            }
            out.push(x);
            i = skip_ws(end);
            match b.get(i) {
                Some(b',') => i = skip_ws(i + 1),
                Some(b']') => {
                    i += 1;
                    break;
                }
                _ => return Err(err(i, format!("expected ',' or ']', found {}", found(i)))),
            }
        }
    }
    i = skip_ws(i);
    if i != b.len() {
        return Err(err(i, format!("unexpected {} after ']'", found(i))));
    }
    if out.is_empty() {
        return Err(VectorError::Empty { what: what.into() });
    }
    Ok(out)
}

/// The `float16` nearest to the decimal `text` (a JSON number), ties to even; `None` if
/// `|text| > 65504`. Rust parses to the nearest `f64`; the two `float16` values around that `f64`
/// are compared by their exact distance to it (`half`'s own `f64` conversion may go through `f32`,
/// rounding twice). When the `f64` lands exactly on the midpoint between them, the decimal itself
/// may lie just above or below it: then the decimal text is compared with the midpoint exactly.
fn decimal_to_f16(text: &str) -> Option<f16> {
    let x: f64 = text.parse().ok()?;
    if x.abs() > f64::from(F16_MAX) {
        return None;
    }
    // `approx` is within one float16 step of x; `lo` is the largest float16 <= x.
    let approx = f16::from_f64(x);
    let lo = if approx.to_f64() > x {
        next_f16(approx, false)
    } else {
        approx
    };
    if lo.to_f64() == x {
        return Some(lo);
    }
    let hi = next_f16(lo, true);
    // Both differences are exact: the operands are within a factor of two of each other or one is 0.
    let (d_lo, d_hi) = (x - lo.to_f64(), hi.to_f64() - x);
    if d_lo != d_hi {
        return Some(if d_lo < d_hi { lo } else { hi });
    }
    // x is the midpoint. Its exact decimal expansion (a dyadic rational with few significant
    // bits: exact at 60 digits) against the text decides.
    let exact = format!("{:.60e}", x.abs());
    let (larger, smaller) = if x > 0.0 { (hi, lo) } else { (lo, hi) };
    Some(
        match compare_decimal(text.trim_start_matches('-'), &exact) {
            std::cmp::Ordering::Greater => larger,
            std::cmp::Ordering::Less => smaller,
            // A true tie: the one with an even last bit.
            std::cmp::Ordering::Equal => {
                if lo.to_bits() & 1 == 0 {
                    lo
                } else {
                    hi
                }
            }
        },
    )
}

/// The `float16` next to `h` upwards (`up`) or downwards.
fn next_f16(h: f16, up: bool) -> f16 {
    let bits = h.to_bits();
    let positive = bits & 0x8000 == 0;
    let mag = bits & 0x7fff;
    let out = if up == positive {
        // Away from zero.
        bits + 1
    } else if mag == 0 {
        // From ±0 towards the other sign.
        0x8001 ^ (bits & 0x8000)
    } else {
        bits - 1
    };
    f16::from_bits(out)
}

/// Compares two non-negative decimal numbers given as text (`12.5e-3`, `1.25000e1`) exactly.
fn compare_decimal(a: &str, b: &str) -> std::cmp::Ordering {
    /// (significant digits without leading or trailing zeros, decimal exponent of the first one).
    fn normal(s: &str) -> (Vec<u8>, i64) {
        let (mantissa, exp) = match s.find(['e', 'E']) {
            Some(i) => (&s[..i], s[i + 1..].parse::<i64>().unwrap_or(0)),
            None => (s, 0),
        };
        let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
        let mut digits: Vec<u8> = int.bytes().chain(frac.bytes()).map(|c| c - b'0').collect();
        let mut point = int.len() as i64 + exp;
        while digits.first() == Some(&0) {
            digits.remove(0);
            point -= 1;
        }
        while digits.last() == Some(&0) {
            digits.pop();
        }
        (digits, point)
    }
    let (da, pa) = normal(a);
    let (db, pb) = normal(b);
    match (da.is_empty(), db.is_empty()) {
        (true, true) => return std::cmp::Ordering::Equal,
        (true, false) => return std::cmp::Ordering::Less,
        (false, true) => return std::cmp::Ordering::Greater,
        _ => {}
    }
    pa.cmp(&pb).then_with(|| da.cmp(&db))
}

/// The end of a JSON number starting at `i` (`-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`), or
/// `None` if there is none.
fn scan_number(b: &[u8], mut i: usize) -> Option<usize> {
    let digits = |mut i: usize| {
        let s = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        (i > s).then_some(i)
    };
    if b.get(i) == Some(&b'-') {
        i += 1;
    }
    match b.get(i) {
        Some(b'0') => i += 1,
        Some(b'1'..=b'9') => i = digits(i)?,
        _ => return None,
    }
    if b.get(i) == Some(&b'.') {
        i = digits(i + 1)?;
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(b.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        i = digits(i)?;
    }
    Some(i)
}

/// The shortest decimal text that reads back as the same `f32`, without a trailing `.0`
/// (`1`, `2.5`, `1e-7`, `3.4028235e38`).
pub fn format_f32(x: f32) -> String {
    let s = format!("{x:?}");
    match s.strip_suffix(".0") {
        Some(t) => t.to_string(),
        None => s,
    }
}

/// JSON text for a vector: `[1,2.5,-3]` (no spaces; each element as [`format_f32`]).
pub fn to_json(values: &[f32]) -> String {
    let mut s = String::with_capacity(values.len() * 10 + 2);
    s.push('[');
    for (i, x) in values.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        let _ = write!(s, "{}", format_f32(*x));
    }
    s.push(']');
    s
}

/// A little-endian `float32` blob (`4·N` bytes, sqlite-vec's format).
pub fn encode_f32(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// A little-endian `float16` blob (`2·N` bytes), each element rounded to nearest-even. Values beyond
/// ±65504 become ±inf: check with [`check_f16_range`] first.
pub fn encode_f16(values: &[f32]) -> Vec<u8> {
    values
        .iter()
        .flat_map(|x| f16::from_f32(*x).to_le_bytes())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(s: &str) -> Result<Vec<f32>, VectorError> {
        decode_vector(ValueRef::Text(s.as_bytes()), "v", ElemType::F32).map(|d| d.values)
    }

    #[test]
    fn json_accepts_the_json_number_grammar() {
        assert_eq!(json("[1, 2.5, -3]").unwrap(), vec![1.0, 2.5, -3.0]);
        assert_eq!(
            json(" [ 1e2 ,-0.5E-1,0 ] \n").unwrap(),
            vec![100.0, -0.05, 0.0]
        );
        assert_eq!(json("[0.1]").unwrap(), vec![0.1f32]);
    }

    #[test]
    fn json_rejects_what_json_rejects_with_a_position() {
        for (s, pos) in [
            ("", 1),
            ("[1,", 4),
            ("[1 2]", 4),
            ("[01]", 3),
            ("[.5]", 2),
            ("[1.]", 2),
            ("[NaN]", 2),
            ("[1,]", 4),
            ("[1] x", 5),
            ("[\"a\"]", 2),
            ("[+1]", 2),
            ("[é,1]", 2),
        ] {
            match json(s) {
                Err(VectorError::Json { position, .. }) => assert_eq!(position, pos, "{s}"),
                other => panic!("{s}: {other:?}"),
            }
        }
        assert!(matches!(json("[]"), Err(VectorError::Empty { .. })));
        assert!(matches!(
            json("[1, 1e39]"),
            Err(VectorError::OutOfRange { index: 1, .. })
        ));
    }

    #[test]
    fn blobs_by_length_with_an_expected_dim() {
        let f32b = encode_f32(&[1.0, -2.0]);
        let f16b = encode_f16(&[1.0, -2.0]);
        for b in [&f32b, &f16b] {
            let v = parse_vector(ValueRef::Blob(b), "c", Some((2, ElemType::F16))).unwrap();
            assert_eq!(v, vec![1.0, -2.0]);
        }
        let e = parse_vector(
            ValueRef::Blob(&[0; 1020]),
            "column embedding",
            Some((256, ElemType::F16)),
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "phenix: column embedding expects float16[256]: got a 1020-byte blob (expected 512 bytes of f16 or 1024 bytes of f32)"
        );
        let e = parse_vector(
            ValueRef::Text(b"[1,2,3]"),
            "column embedding",
            Some((2, ElemType::F32)),
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "phenix: column embedding expects float32[2]: got 3 elements"
        );
        let e =
            parse_vector(ValueRef::Text(b"[1,70000]"), "c", Some((2, ElemType::F16))).unwrap_err();
        assert!(matches!(e, VectorError::OutOfRange { index: 1, .. }), "{e}");
        assert!(parse_vector(ValueRef::Text(b"[1,70000]"), "c", Some((2, ElemType::F32))).is_ok());
    }

    #[test]
    fn nan_and_inf_in_blobs_are_errors() {
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let b = encode_f32(&[0.0, bad]);
            let e = parse_vector(ValueRef::Blob(&b), "v", None).unwrap_err();
            assert!(matches!(e, VectorError::OutOfRange { index: 1, .. }), "{e}");
            let b = encode_f16(&[0.0, bad]);
            let e = decode_vector(ValueRef::Blob(&b), "v", ElemType::F16).unwrap_err();
            assert!(matches!(e, VectorError::OutOfRange { index: 1, .. }), "{e}");
        }
    }

    #[test]
    fn json_text_round_trips_every_f32_it_prints() {
        for x in [
            0.1f32,
            1.0,
            -0.0,
            1e-7,
            3.4028235e38,
            f32::MIN_POSITIVE,
            1.0e-45,
            123456.79,
        ] {
            let t = to_json(&[x]);
            let back = json(&t).unwrap();
            assert_eq!(back[0].to_bits(), x.to_bits(), "{t}");
        }
        assert_eq!(to_json(&[1.0, 2.5, -3.0]), "[1,2.5,-3]");
    }
}

#[cfg(test)]
mod f16_rounding_tests {
    use super::*;

    /// `text` with `extra` appended to its significant digits (`1.5e0` + `0001` = `1.50001e0`).
    fn nudge(exact: &str, extra: &str) -> String {
        let (m, e) = exact.split_once('e').unwrap();
        format!("{m}{extra}e{e}")
    }

    #[test]
    fn json_to_float16_rounds_once_to_the_nearest_for_every_midpoint() {
        // For every pair of adjacent positive float16 values: the exact midpoint (as decimal text)
        // goes to the even one, and a decimal a hair above / below it goes up / down — the hair
        // (1e-40 relative) is far below f64's resolution, so a parse through f64 or f32 alone
        // would see the tie.
        let mut checked = 0;
        for bits in 0u16..0x7bff {
            let (lo, hi) = (f16::from_bits(bits), f16::from_bits(bits + 1));
            let mid = (lo.to_f64() + hi.to_f64()) / 2.0;
            let exact = format!("{mid:.60e}");
            let even = if bits % 2 == 0 { lo } else { hi };
            assert_eq!(decimal_to_f16(&exact), Some(even), "tie {exact}");
            assert_eq!(
                decimal_to_f16(&nudge(&exact, "00000000000000000001")),
                Some(hi),
                "{exact}+"
            );
            // Just below: the midpoint's last significant digit (not 0: trailing zeros are trimmed)
            // lowered by one, followed by 9s.
            let (m, e) = exact.split_once('e').unwrap();
            let mut digits: Vec<u8> = m.bytes().filter(|c| *c != b'.').collect();
            while digits.last() == Some(&b'0') {
                digits.pop();
            }
            let last = digits.len() - 1;
            digits[last] -= 1;
            digits.extend_from_slice(b"99999999999999999999");
            let low_text = format!(
                "{}.{}e{e}",
                digits[0] as char,
                std::str::from_utf8(&digits[1..]).unwrap()
            );
            assert_eq!(
                decimal_to_f16(&low_text),
                Some(lo),
                "{low_text} (just below {exact})"
            );
            // Negative values mirror.
            assert_eq!(decimal_to_f16(&format!("-{low_text}")), Some(-lo));
            checked += 1;
        }
        assert_eq!(checked, 0x7bff);
        // The case from the bug report, through the SQL-facing parser.
        let v = parse_json(
            "[1.00048828125001, 1.00048828125, 65504, -65504]",
            "x",
            ElemType::F16,
        )
        .unwrap();
        assert_eq!(
            encode_f16(&v),
            [0x01, 0x3C, 0x00, 0x3C, 0xFF, 0x7B, 0xFF, 0xFB]
        );
        // Out of range stays an error (the rule is |x| <= 65504, as for float32 input).
        assert!(matches!(
            parse_json("[65504.0001]", "x", ElemType::F16),
            Err(VectorError::OutOfRange { .. })
        ));
    }

    /// The float16 nearest to `x` by binary search over the ordered bit patterns (no conversion
    /// routine involved; random `x` is never exactly a tie).
    fn nearest_by_search(x: f64) -> f16 {
        let (mut a, mut b) = (0u16, 0x7bffu16); // magnitudes: f16 bits are ordered like values
        let m = x.abs();
        while a < b {
            let mid = (a + b).div_ceil(2);
            if f16::from_bits(mid).to_f64() <= m {
                a = mid;
            } else {
                b = mid - 1;
            }
        }
        let lo = f16::from_bits(a);
        let hi = f16::from_bits((a + 1).min(0x7bff));
        let best = if (m - lo.to_f64()).abs() <= (hi.to_f64() - m).abs() {
            lo
        } else {
            hi
        };
        if x < 0.0 {
            -best
        } else {
            best
        }
    }

    #[test]
    fn json_to_float16_matches_the_nearest_found_by_search() {
        // Ordinary decimals: the nearest float16, found independently. (`half`'s `from_f64`
        // rounds through f32 and fails this: 16983.999573841866 gives 16992, not 16976.)
        let mut s = 0x1234_5678_9abc_def0u64;
        for _ in 0..20_000 {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            let x = (s >> 11) as f64 / (1u64 << 53) as f64 * 131_000.0 - 65_500.0;
            let text = format!("{x}");
            assert_eq!(decimal_to_f16(&text), Some(nearest_by_search(x)), "{text}");
        }
    }
}
