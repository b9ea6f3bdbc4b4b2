//! Distance kernels between an `f32` query and `f16` or `f32` rows, with runtime dispatch.
//!
//! Three instruction-set paths exist: a portable scalar path (every architecture), AVX2 + FMA + F16C,
//! and AVX-512F (x86_64). [`Kernels::best`] picks the fastest the CPU supports, once; [`Kernels::for_isa`]
//! builds a specific path (tests drive every path through the same table of cases).
//!
//! All paths accumulate in `f32`. The AVX-512 path converts `f16` with `vcvtph2ps` (AVX-512F) and uses
//! `f32` FMAs; AVX512-FP16 arithmetic is deliberately not used: accumulating in `f16` loses the query's
//! precision, and its Rust intrinsics need the unstable `f16` type.
//!
//! # NaN
//! The kernels do not check for NaN: a NaN in the query or the row makes the result NaN. Stores reject NaN
//! and ±inf on insert, and [`crate::topk`] never returns a row whose distance is NaN.

use crate::types::Metric;
use half::f16;

mod scalar;
#[cfg(target_arch = "x86_64")]
mod x86;

/// An instruction-set path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Isa {
    /// Portable Rust; used on every architecture without a SIMD path.
    Scalar,
    /// x86_64 AVX2 + FMA + F16C, 8 lanes.
    Avx2,
    /// x86_64 AVX-512F, 16 lanes.
    Avx512,
}

impl Isa {
    /// The paths this CPU supports, slowest first.
    pub fn available() -> Vec<Isa> {
        [Isa::Scalar, Isa::Avx2, Isa::Avx512]
            .into_iter()
            .filter(|&i| i.supported())
            .collect()
    }

    /// Whether this CPU can run the path.
    pub fn supported(self) -> bool {
        match self {
            Isa::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => {
                std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                    && std::arch::is_x86_feature_detected!("f16c")
            }
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => std::arch::is_x86_feature_detected!("avx512f"),
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    /// A short name for reports.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2+fma+f16c",
            Isa::Avx512 => "avx512f",
        }
    }
}

type DotF16 = unsafe fn(&[f32], &[f16]) -> f32;
type DotF32 = unsafe fn(&[f32], &[f32]) -> f32;
type PairF16 = unsafe fn(&[f32], &[f16]) -> (f32, f32);
type PairF32 = unsafe fn(&[f32], &[f32]) -> (f32, f32);

/// A table of kernels for one instruction-set path. Only constructible for a path the CPU supports.
#[derive(Clone, Copy, Debug)]
pub struct Kernels {
    isa: Isa,
    dot16: DotF16,
    dot32: DotF32,
    l2_16: DotF16,
    l2_32: DotF32,
    dotnorm16: PairF16,
    dotnorm32: PairF32,
}

/// A row borrowed from a store, in its element type.
#[derive(Clone, Copy, Debug)]
pub enum Row<'a> {
    /// A row of `f16` elements.
    F16(&'a [f16]),
    /// A row of `f32` elements.
    F32(&'a [f32]),
}

impl Row<'_> {
    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            Row::F16(x) => x.len(),
            Row::F32(x) => x.len(),
        }
    }
    /// Whether the row has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The row widened to `f32`.
    pub fn to_f32(&self) -> Vec<f32> {
        match self {
            Row::F16(x) => x.iter().map(|v| v.to_f32()).collect(),
            Row::F32(x) => x.to_vec(),
        }
    }
}

impl Kernels {
    /// The fastest path this CPU supports (detected once).
    pub fn best() -> Kernels {
        static BEST: std::sync::OnceLock<Kernels> = std::sync::OnceLock::new();
        *BEST.get_or_init(|| {
            let isa = *Isa::available().last().unwrap_or(&Isa::Scalar);
            Kernels::for_isa(isa).unwrap_or_else(Kernels::scalar)
        })
    }

    /// The portable path.
    pub fn scalar() -> Kernels {
        Kernels {
            isa: Isa::Scalar,
            dot16: scalar::dot_f16,
            dot32: scalar::dot_f32,
            l2_16: scalar::l2_f16,
            l2_32: scalar::l2_f32,
            dotnorm16: scalar::dotnorm_f16,
            dotnorm32: scalar::dotnorm_f32,
        }
    }

    /// The given path, or `None` if this CPU cannot run it.
    pub fn for_isa(isa: Isa) -> Option<Kernels> {
        if !isa.supported() {
            return None;
        }
        match isa {
            Isa::Scalar => Some(Kernels::scalar()),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => Some(Kernels {
                isa,
                dot16: x86::dot_f16_avx2,
                dot32: x86::dot_f32_avx2,
                l2_16: x86::l2_f16_avx2,
                l2_32: x86::l2_f32_avx2,
                dotnorm16: x86::dotnorm_f16_avx2,
                dotnorm32: x86::dotnorm_f32_avx2,
            }),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => Some(Kernels {
                isa,
                dot16: x86::dot_f16_avx512,
                dot32: x86::dot_f32_avx512,
                l2_16: x86::l2_f16_avx512,
                l2_32: x86::l2_f32_avx512,
                dotnorm16: x86::dotnorm_f16_avx512,
                dotnorm32: x86::dotnorm_f32_avx512,
            }),
            #[cfg(not(target_arch = "x86_64"))]
            _ => None,
        }
    }

    /// The path these kernels run.
    pub fn isa(&self) -> Isa {
        self.isa
    }

    /// `q · x`. Panics if the lengths differ.
    #[inline]
    pub fn dot(&self, q: &[f32], x: Row<'_>) -> f32 {
        assert_eq!(q.len(), x.len(), "kernel operands differ in length");
        match x {
            // SAFETY: `self` was built by `for_isa`/`scalar`, which only hands out kernels whose target
            // features `Isa::supported` confirmed at run time; the lengths are equal (asserted above),
            // which is the kernels' only other precondition.
            Row::F16(x) => unsafe { (self.dot16)(q, x) },
            // SAFETY: as above.
            Row::F32(x) => unsafe { (self.dot32)(q, x) },
        }
    }

    /// `|q - x|²`. Panics if the lengths differ.
    #[inline]
    pub fn l2_squared(&self, q: &[f32], x: Row<'_>) -> f32 {
        assert_eq!(q.len(), x.len(), "kernel operands differ in length");
        match x {
            // SAFETY: see `dot`.
            Row::F16(x) => unsafe { (self.l2_16)(q, x) },
            // SAFETY: see `dot`.
            Row::F32(x) => unsafe { (self.l2_32)(q, x) },
        }
    }

    /// `(q · x, x · x)` in one pass. Panics if the lengths differ.
    #[inline]
    pub fn dot_and_norm(&self, q: &[f32], x: Row<'_>) -> (f32, f32) {
        assert_eq!(q.len(), x.len(), "kernel operands differ in length");
        match x {
            // SAFETY: see `dot`.
            Row::F16(x) => unsafe { (self.dotnorm16)(q, x) },
            // SAFETY: see `dot`.
            Row::F32(x) => unsafe { (self.dotnorm32)(q, x) },
        }
    }

    /// `|q|²` of an `f32` vector.
    #[inline]
    pub fn norm_squared(&self, q: &[f32]) -> f32 {
        self.dot(q, Row::F32(q))
    }

    /// The distance of `metric` between `q` and `x`. `q_norm` is `|q|` (only read for cosine; compute it
    /// once per query with [`Kernels::norm_squared`]).
    ///
    /// `f32` sums overflow for finite inputs above about 1e19 (a product or a square past `f32::MAX`,
    /// or `+inf` meeting `-inf`); such rows, and `float32` rows whose squared norm underflows to zero, are
    /// recomputed in `f64` ([`distance_f64`]), so a finite query and row never give NaN. The check is a
    /// compare or two per row; the slow path allocates and is only taken for such extreme values.
    #[inline]
    pub fn distance(&self, metric: Metric, q: &[f32], q_norm: f32, x: Row<'_>) -> f32 {
        match metric {
            Metric::Dot => {
                let d = self.dot(q, x);
                if d.is_finite() {
                    -d
                } else {
                    exact(metric, q, x)
                }
            }
            Metric::L2 => {
                let s = self.l2_squared(q, x);
                if s.is_finite() {
                    s.sqrt()
                } else {
                    exact(metric, q, x)
                }
            }
            Metric::Cosine => {
                let (d, xx) = self.dot_and_norm(q, x);
                if d.is_finite() && xx.is_finite() && q_norm.is_finite() && (xx > 0.0 || is_zero(x))
                {
                    cosine_from_parts(d, q_norm, xx.sqrt())
                } else {
                    exact(metric, q, x)
                }
            }
        }
    }
}

/// `1 - d / (qn · xn)`, clamped to `[0, 2]`; 1 when either norm is zero. NaN stays NaN.
#[inline]
pub fn cosine_from_parts(dot: f32, q_norm: f32, x_norm: f32) -> f32 {
    let denom = q_norm * x_norm;
    if denom == 0.0 {
        return 1.0;
    }
    let d = 1.0 - dot / denom;
    if d.is_nan() {
        d
    } else {
        d.clamp(0.0, 2.0)
    }
}

/// The `f64` distance of a row whose `f32` sums overflowed or underflowed.
#[cold]
fn exact(metric: Metric, q: &[f32], x: Row<'_>) -> f32 {
    distance_f64(metric, q, &x.to_f32()) as f32
}

/// Whether every element of `x` is zero (a true zero vector, as opposed to one whose squares underflow).
fn is_zero(x: Row<'_>) -> bool {
    match x {
        Row::F16(v) => v.iter().all(|e| e.to_f32() == 0.0),
        Row::F32(v) => v.iter().all(|e| *e == 0.0),
    }
}

/// The distance of `metric` between two `f32` vectors, summed in `f64`: no overflow or underflow for any
/// finite input (SQL scalar functions, and the fallback of [`Kernels::distance`]). Cosine is 1 when
/// either vector is zero; NaN inputs give NaN. Panics if the lengths differ.
pub fn distance_f64(metric: Metric, a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len(), "vectors of different lengths");
    let (mut d, mut aa, mut bb, mut l2) = (0.0f64, 0.0f64, 0.0f64, 0.0f64);
    for (&x, &y) in a.iter().zip(b) {
        let (x, y) = (f64::from(x), f64::from(y));
        d += x * y;
        aa += x * x;
        bb += y * y;
        l2 += (x - y) * (x - y);
    }
    match metric {
        Metric::Dot => -d,
        Metric::L2 => l2.sqrt(),
        Metric::Cosine => {
            // One square root of the product (no overflow or underflow in f64 for f32 inputs): exact
            // for parallel vectors with integer norms, as the f32 kernels are.
            let denom = (aa * bb).sqrt();
            if denom == 0.0 {
                1.0
            } else {
                let c = 1.0 - d / denom;
                if c.is_nan() {
                    c
                } else {
                    c.clamp(0.0, 2.0)
                }
            }
        }
    }
}

/// The distance between two `f32` vectors with the fastest kernels.
/// Panics if the lengths differ.
pub fn distance_f32(metric: Metric, a: &[f32], b: &[f32]) -> f32 {
    let k = Kernels::best();
    let qn = k.norm_squared(a).sqrt();
    k.distance(metric, a, qn, Row::F32(b))
}
