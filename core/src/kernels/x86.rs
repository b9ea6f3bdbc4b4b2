//! x86_64 SIMD paths: AVX2 + FMA + F16C (8 lanes) and AVX-512F (16 lanes).
//!
//! Every function here is `#[target_feature]` and reached only through [`super::Kernels`], which is built
//! only after `Isa::supported` confirmed the features at run time. Each kernel runs four independent
//! accumulators over 4 × LANES elements, then single vectors, then a scalar tail, so any length works.

use half::f16;
use std::arch::x86_64::*;

// ---------------------------------------------------------------- AVX2 helpers

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn hsum256(v: __m256) -> f32 {
    let lo = _mm256_castps256_ps128(v);
    let hi = _mm256_extractf128_ps(v, 1);
    let s = _mm_add_ps(lo, hi);
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    _mm_cvtss_f32(s)
}

/// Loads 8 `f16` at `p` as `f32`.
///
/// # Safety
/// `p..p+8` must be readable.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn ld16_256(p: *const f16) -> __m256 {
    // SAFETY: the caller guarantees 16 readable bytes; loadu has no alignment requirement.
    _mm256_cvtph_ps(unsafe { _mm_loadu_si128(p as *const __m128i) })
}

/// Loads 8 `f32` at `p`.
///
/// # Safety
/// `p..p+8` must be readable.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn ld32_256(p: *const f32) -> __m256 {
    // SAFETY: the caller guarantees 32 readable bytes; loadu has no alignment requirement.
    unsafe { _mm256_loadu_ps(p) }
}

// ---------------------------------------------------------------- AVX-512 helpers

/// Loads 16 `f16` at `p` as `f32`.
///
/// # Safety
/// `p..p+16` must be readable.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn ld16_512(p: *const f16) -> __m512 {
    // SAFETY: the caller guarantees 32 readable bytes; loadu has no alignment requirement.
    _mm512_cvtph_ps(unsafe { _mm256_loadu_si256(p as *const __m256i) })
}

/// Loads 16 `f32` at `p`.
///
/// # Safety
/// `p..p+16` must be readable.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn ld32_512(p: *const f32) -> __m512 {
    // SAFETY: the caller guarantees 64 readable bytes; loadu has no alignment requirement.
    unsafe { _mm512_loadu_ps(p) }
}

// ---------------------------------------------------------------- kernel generators

/// One-accumulator reductions (`dot`, `l2`): `$step(acc, q, x) -> acc`.
macro_rules! reduce_kernel {
    ($name:ident, $feat:literal, $t:ty, $lanes:expr, $zero:ident, $ldq:ident, $ldx:ident, $add:ident,
     $hsum:ident, $step:expr, $tail:expr) => {
        /// See the module docs.
        ///
        /// # Safety
        /// The CPU must support the target features; `q` and `x` must have equal lengths.
        #[target_feature(enable = $feat)]
        pub(super) unsafe fn $name(q: &[f32], x: &[$t]) -> f32 {
            debug_assert_eq!(q.len(), x.len());
            let n = q.len().min(x.len());
            let (qp, xp) = (q.as_ptr(), x.as_ptr());
            let step = $step;
            let (mut a0, mut a1, mut a2, mut a3) = ($zero(), $zero(), $zero(), $zero());
            let mut i = 0;
            // SAFETY: every load reads `lanes` elements starting at `i`, and each loop condition keeps
            // `i + lanes <= n`, the length of both slices.
            unsafe {
                while i + 4 * $lanes <= n {
                    a0 = step(a0, $ldq(qp.add(i)), $ldx(xp.add(i)));
                    a1 = step(a1, $ldq(qp.add(i + $lanes)), $ldx(xp.add(i + $lanes)));
                    a2 = step(
                        a2,
                        $ldq(qp.add(i + 2 * $lanes)),
                        $ldx(xp.add(i + 2 * $lanes)),
                    );
                    a3 = step(
                        a3,
                        $ldq(qp.add(i + 3 * $lanes)),
                        $ldx(xp.add(i + 3 * $lanes)),
                    );
                    i += 4 * $lanes;
                }
                while i + $lanes <= n {
                    a0 = step(a0, $ldq(qp.add(i)), $ldx(xp.add(i)));
                    i += $lanes;
                }
            }
            let mut s = $hsum($add($add(a0, a1), $add(a2, a3)));
            let tail = $tail;
            while i < n {
                s += tail(q[i], x[i]);
                i += 1;
            }
            s
        }
    };
}

/// Two-accumulator kernels: `(q·x, x·x)`.
macro_rules! pair_kernel {
    ($name:ident, $feat:literal, $t:ty, $lanes:expr, $zero:ident, $ldq:ident, $ldx:ident, $add:ident,
     $fma:ident, $hsum:ident, $conv:expr) => {
        /// See the module docs.
        ///
        /// # Safety
        /// The CPU must support the target features; `q` and `x` must have equal lengths.
        #[target_feature(enable = $feat)]
        pub(super) unsafe fn $name(q: &[f32], x: &[$t]) -> (f32, f32) {
            debug_assert_eq!(q.len(), x.len());
            let n = q.len().min(x.len());
            let (qp, xp) = (q.as_ptr(), x.as_ptr());
            let (mut d0, mut d1, mut n0, mut n1) = ($zero(), $zero(), $zero(), $zero());
            let mut i = 0;
            // SAFETY: as in `reduce_kernel`: every load stays below `n`.
            unsafe {
                while i + 2 * $lanes <= n {
                    let x0 = $ldx(xp.add(i));
                    let x1 = $ldx(xp.add(i + $lanes));
                    d0 = $fma($ldq(qp.add(i)), x0, d0);
                    d1 = $fma($ldq(qp.add(i + $lanes)), x1, d1);
                    n0 = $fma(x0, x0, n0);
                    n1 = $fma(x1, x1, n1);
                    i += 2 * $lanes;
                }
                while i + $lanes <= n {
                    let x0 = $ldx(xp.add(i));
                    d0 = $fma($ldq(qp.add(i)), x0, d0);
                    n0 = $fma(x0, x0, n0);
                    i += $lanes;
                }
            }
            let mut d = $hsum($add(d0, d1));
            let mut nn = $hsum($add(n0, n1));
            let conv = $conv;
            while i < n {
                let v: f32 = conv(x[i]);
                d += q[i] * v;
                nn += v * v;
                i += 1;
            }
            (d, nn)
        }
    };
}

fn h(v: f16) -> f32 {
    v.to_f32()
}
fn id(v: f32) -> f32 {
    v
}
fn tail_dot16(a: f32, b: f16) -> f32 {
    a * b.to_f32()
}
fn tail_dot32(a: f32, b: f32) -> f32 {
    a * b
}
fn tail_l2_16(a: f32, b: f16) -> f32 {
    let d = a - b.to_f32();
    d * d
}
fn tail_l2_32(a: f32, b: f32) -> f32 {
    let d = a - b;
    d * d
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn dot_step256(acc: __m256, q: __m256, x: __m256) -> __m256 {
    _mm256_fmadd_ps(q, x, acc)
}
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn l2_step256(acc: __m256, q: __m256, x: __m256) -> __m256 {
    let d = _mm256_sub_ps(q, x);
    _mm256_fmadd_ps(d, d, acc)
}
#[inline]
#[target_feature(enable = "avx512f")]
fn dot_step512(acc: __m512, q: __m512, x: __m512) -> __m512 {
    _mm512_fmadd_ps(q, x, acc)
}
#[inline]
#[target_feature(enable = "avx512f")]
fn l2_step512(acc: __m512, q: __m512, x: __m512) -> __m512 {
    let d = _mm512_sub_ps(q, x);
    _mm512_fmadd_ps(d, d, acc)
}
#[inline]
#[target_feature(enable = "avx512f")]
fn hsum512(v: __m512) -> f32 {
    _mm512_reduce_add_ps(v)
}

// The closures below wrap safe target-feature fns; calling them inside the kernels (same features) is
// sound, and the kernels are only reachable after run-time detection.
reduce_kernel!(
    dot_f16_avx2,
    "avx2,fma,f16c",
    f16,
    8,
    _mm256_setzero_ps,
    ld32_256,
    ld16_256,
    _mm256_add_ps,
    hsum256,
    |a, q, x| dot_step256(a, q, x),
    tail_dot16
);
reduce_kernel!(
    dot_f32_avx2,
    "avx2,fma,f16c",
    f32,
    8,
    _mm256_setzero_ps,
    ld32_256,
    ld32_256,
    _mm256_add_ps,
    hsum256,
    |a, q, x| dot_step256(a, q, x),
    tail_dot32
);
reduce_kernel!(
    l2_f16_avx2,
    "avx2,fma,f16c",
    f16,
    8,
    _mm256_setzero_ps,
    ld32_256,
    ld16_256,
    _mm256_add_ps,
    hsum256,
    |a, q, x| l2_step256(a, q, x),
    tail_l2_16
);
reduce_kernel!(
    l2_f32_avx2,
    "avx2,fma,f16c",
    f32,
    8,
    _mm256_setzero_ps,
    ld32_256,
    ld32_256,
    _mm256_add_ps,
    hsum256,
    |a, q, x| l2_step256(a, q, x),
    tail_l2_32
);
pair_kernel!(
    dotnorm_f16_avx2,
    "avx2,fma,f16c",
    f16,
    8,
    _mm256_setzero_ps,
    ld32_256,
    ld16_256,
    _mm256_add_ps,
    _mm256_fmadd_ps,
    hsum256,
    h
);
pair_kernel!(
    dotnorm_f32_avx2,
    "avx2,fma,f16c",
    f32,
    8,
    _mm256_setzero_ps,
    ld32_256,
    ld32_256,
    _mm256_add_ps,
    _mm256_fmadd_ps,
    hsum256,
    id
);

reduce_kernel!(
    dot_f16_avx512,
    "avx512f",
    f16,
    16,
    _mm512_setzero_ps,
    ld32_512,
    ld16_512,
    _mm512_add_ps,
    hsum512,
    |a, q, x| dot_step512(a, q, x),
    tail_dot16
);
reduce_kernel!(
    dot_f32_avx512,
    "avx512f",
    f32,
    16,
    _mm512_setzero_ps,
    ld32_512,
    ld32_512,
    _mm512_add_ps,
    hsum512,
    |a, q, x| dot_step512(a, q, x),
    tail_dot32
);
reduce_kernel!(
    l2_f16_avx512,
    "avx512f",
    f16,
    16,
    _mm512_setzero_ps,
    ld32_512,
    ld16_512,
    _mm512_add_ps,
    hsum512,
    |a, q, x| l2_step512(a, q, x),
    tail_l2_16
);
reduce_kernel!(
    l2_f32_avx512,
    "avx512f",
    f32,
    16,
    _mm512_setzero_ps,
    ld32_512,
    ld32_512,
    _mm512_add_ps,
    hsum512,
    |a, q, x| l2_step512(a, q, x),
    tail_l2_32
);
pair_kernel!(
    dotnorm_f16_avx512,
    "avx512f",
    f16,
    16,
    _mm512_setzero_ps,
    ld32_512,
    ld16_512,
    _mm512_add_ps,
    _mm512_fmadd_ps,
    hsum512,
    h
);
pair_kernel!(
    dotnorm_f32_avx512,
    "avx512f",
    f32,
    16,
    _mm512_setzero_ps,
    ld32_512,
    ld32_512,
    _mm512_add_ps,
    _mm512_fmadd_ps,
    hsum512,
    id
);
