//! Batched top-k on a reduced-precision matrix unit (AMX-BF16 tiles, or AVX512-BF16 `vdpbf16ps`), with
//! an exact re-rank.
//!
//! Rows (`float16` stores only) and queries are rounded to `bf16`, every query × row score is computed
//! on the unit with `f32` accumulation, and a row is re-scored only if it could still be in the query's
//! exact top-k: a rigorous bound on the score's error (from `bf16`'s unit roundoff `2⁻⁸`, the `f32`
//! accumulation, and the vectors' norms) gives every row a lower bound `LD` on the distance the
//! one-query kernels compute for it; a row is re-scored with [`Kernels::distance`] when `LD ≤ T`, where
//! `T` is the k-th smallest exact distance re-scored so far, and ranked by `(distance, slot)` in a
//! per-query top-k. The result equals [`crate::topk::search`] for every query — rows, distances and tie
//! order. The derivation and its proof are in docs/design.md ("Reduced-precision batch scoring").
//!
//! Queries outside the range the bound covers (largest element not in `[2⁻³², 2³²]`, which includes the
//! zero vector) are answered by [`crate::topk::search`] directly.

use crate::bitmap::Bitmap;
use crate::kernels::{Kernels, Row};
use crate::store::RowsView;
use crate::topk::{search, Hit, SearchParams, TopK};
use crate::types::Metric;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};

#[cfg(target_arch = "x86_64")]
mod x86;

/// The reduced-precision units.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Unit {
    /// AMX-BF16 tiles (Intel Sapphire Rapids and later).
    Amx,
    /// AVX512-BF16 `vdpbf16ps` (Intel Cooper Lake / Sapphire Rapids, AMD Zen 4).
    Avx512Bf16,
}

impl Unit {
    /// Whether this CPU (and, for AMX, the OS) can run the unit.
    pub(crate) fn supported(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            match self {
                Unit::Amx => x86::amx_cpu() && x86::amx_permission(),
                Unit::Avx512Bf16 => x86::avx512_bf16_cpu(),
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = self;
            false
        }
    }
}

/// Rows per block converted to `bf16` at a time (a multiple of 32).
const RB: usize = 256;

/// `bf16` unit roundoff, `f32` unit roundoff.
const U_BF16: f64 = 1.0 / 256.0;
const U_F32: f64 = 1.0 / 16_777_216.0;
/// Relative loosening of the `f32` pre-filter, far above its own rounding (a few `2⁻²⁴`).
const LOOSEN: f64 = 1.0 / 4096.0;
/// Relative margin for rounding in the `f64` evaluation of the intervals (a few `2⁻⁵³` per operation).
const MARGIN64: f64 = 1.0 / 35_184_372_088_832.0; // 2^-45
/// `2^-126`, the smallest normal `f32`/`bf16`: the units flush anything smaller to zero.
const TAU: f64 = 1.1754943508222875e-38;

/// `γ_n = n·u / (1 − n·u)` for `f32`: the relative error bound of `n` rounded additions / FMAs.
fn gamma(n: f64) -> f64 {
    n * U_F32 / (1.0 - n * U_F32)
}

/// The largest `f32` not above `x`.
pub(crate) fn f32_down(x: f64) -> f32 {
    let f = x as f32;
    if (f as f64) > x {
        f.next_down()
    } else {
        f
    }
}

/// The smallest `f32` not below `x`.
pub(crate) fn f32_up(x: f64) -> f32 {
    let f = x as f32;
    if (f as f64) < x {
        f.next_up()
    } else {
        f
    }
}

/// `bf16` by round-to-nearest-even (finite inputs).
pub(crate) fn bf16_rne(x: f32) -> u16 {
    let b = x.to_bits();
    let r = ((b >> 16) & 1) + 0x7FFF;
    (b.wrapping_add(r) >> 16) as u16
}

/// How a scorer treats its operands (the first step of Lemma 1 in docs/design.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Inputs {
    /// Rounded to `bf16`, exact products, `f32` accumulation, subnormals flushed (the AMX and
    /// AVX512-BF16 units).
    Bf16,
    /// `f32` as given, rounded `f32` products and sums (faer's GEMM).
    F32,
}

/// The error constants for one dimension and metric (docs/design.md names them the same way).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Bound {
    metric: Metric,
    /// Relative error of a unit score: `|ŝ − s| ≤ e·Q·X (+ a_amx)`.
    e: f64,
    /// Absolute error of a unit score from flushed subnormals (scaled units).
    a_amx: f64,
    /// dot: relative error of the `f32` kernel's dot product.
    kappa: f64,
    /// dot: absolute error of the kernel's dot product from gradual underflow.
    abs_k: f64,
    /// cosine: total half-width of the distance interval.
    w_cos: f64,
    /// l2: relative error of the kernel's distance, and its absolute part.
    rho: f64,
    a_l2: f64,
    /// Relative error of a row's `f32` squared norm (`kernels.norm_squared`).
    g_rows: f64,
}

impl Bound {
    /// `dim` the table's dimension, `dp` the number of terms the scorer sums (`dim` rounded up to a
    /// multiple of 32 for the units, `dim` for GEMM), `inputs` how the scorer rounds its operands.
    pub(crate) fn new(metric: Metric, dim: usize, dp: usize, inputs: Inputs) -> Bound {
        let n = dim as f64;
        let np = dp as f64;
        // bf16 units: operands rounded to bf16 (u = 2^-8), products exact (16 significant bits), n
        // rounded additions. f32 GEMM: operands used as given (u = 0), each product rounded too, so a
        // term sees at most n + 1 roundings (any summation order, with or without FMA).
        let (u, g_sum) = match inputs {
            Inputs::Bf16 => (U_BF16, gamma(np)),
            Inputs::F32 => (0.0, gamma(np + 1.0)),
        };
        let e_dot = 2.0 * u + u * u + g_sum * (1.0 + u) * (1.0 + u) + 2f64.powi(-100);
        let g_rows = gamma(n);
        // Cosine: queries normalised in f64 (≤ 2^-36), rounded to f32 then bf16; rows normalised with
        // their f32 norm (γ_n), f32 ops and bf16.
        let eps_q = (1.0 + 2f64.powi(-36)) * (1.0 + U_F32) * (1.0 + u) - 1.0;
        let eps_x =
            (1.0 + g_rows) * (1.0 + 2f64.powi(-50)) * (1.0 + U_F32).powi(2) * (1.0 + u) - 1.0;
        let e_cos = (1.0 + eps_q) * (1.0 + eps_x) * (1.0 + g_sum) - 1.0 + 2f64.powi(-99);
        let delta_c = 4.0 * gamma(n + 8.0) + 2f64.powi(-60);
        Bound {
            metric,
            e: if metric == Metric::Cosine {
                e_cos
            } else {
                e_dot
            },
            a_amx: 3.0 * np * 2.0 * TAU,
            kappa: 2.0 * gamma(n + 4.0),
            abs_k: n * 2f64.powi(-148),
            w_cos: e_cos + delta_c,
            rho: gamma(n + 4.0),
            a_l2: (n * 2f64.powi(-148)).sqrt() * 1.01,
            g_rows,
        }
    }

    /// `LD`, a lower bound on the distance the one-query kernels compute for a row with unit score `s`
    /// (scaled units), `f32` squared norm `xx` and norm bound `x`, against query `q`. Evaluated in `f64`
    /// and lowered by [`MARGIN64`] of the magnitudes involved, so it is below the exact-arithmetic value.
    #[inline]
    pub(crate) fn lower(&self, q: &QueryInfo, s: f32, xx: f32, x: f32) -> f64 {
        let s = s as f64;
        match self.metric {
            Metric::Cosine => 1.0 - s - self.w_cos - 4.0 * MARGIN64,
            Metric::Dot => {
                let sh = s / q.sig;
                let x = x as f64;
                let w = (self.e + self.kappa) * q.q * x + self.a_amx / q.sig + self.abs_k;
                -sh - w - MARGIN64 * (sh.abs() + w)
            }
            Metric::L2 => {
                let sh = s / q.sig;
                let (xx, x) = (xx as f64, x as f64);
                let e = 2.0 * self.e * q.q * x
                    + 2.0 * self.a_amx / q.sig
                    + self.g_rows / (1.0 - self.g_rows) * x * x
                    + 2f64.powi(-36) * q.q * q.q;
                let d2 = q.qq + xx - 2.0 * sh;
                let m = MARGIN64 * (q.qq + xx + 2.0 * sh.abs() + e);
                let lo = (d2 - e - m).max(0.0);
                (1.0 - self.rho) * lo.sqrt() * (1.0 - MARGIN64) - self.a_l2
            }
        }
    }

    /// The per-query filter coefficients `(θ, α, β)` for the current bound `t` on the k-th distance: a
    /// score passes when `s ≥ θ + α·fa − β·fb` (row values from [`Bound::row_terms`]). Conservative: it
    /// passes every row whose exact-arithmetic `LD` is `≤ t`, whatever the `f32` rounding of the test.
    pub(crate) fn filter(&self, q: &QueryInfo, t: f64) -> (f32, f32, f32) {
        if !q.safe || t.is_nan() {
            return (f32::INFINITY, 0.0, 0.0);
        }
        let (th, mag, alpha, beta) = match self.metric {
            Metric::Cosine => (1.0 - t - self.w_cos, 1.0 + t.abs() + self.w_cos, 0.0, 0.0),
            Metric::Dot => {
                let a = -q.sig * t;
                let b = self.a_amx + q.sig * self.abs_k;
                (a - b, a.abs() + b, 0.0, q.sig * (self.e + self.kappa) * q.q)
            }
            Metric::L2 => {
                let r = (t + self.a_l2) / (1.0 - self.rho);
                if r < 0.0 {
                    return (f32::INFINITY, 0.0, 0.0);
                }
                let qlo = q.qq - 2f64.powi(-36) * q.q * q.q;
                let h = q.sig / 2.0;
                (
                    h * (qlo - r * r) - self.a_amx,
                    h * (qlo.abs() + r * r) + self.a_amx,
                    h,
                    q.sig * self.e * q.q,
                )
            }
        };
        let theta = if t == f64::INFINITY {
            f32::NEG_INFINITY
        } else {
            f32_down(th - LOOSEN * mag - 2f64.powi(-140))
        };
        (theta, alpha as f32, f32_up(beta * (1.0 + LOOSEN)))
    }

    /// A row's filter terms `(fa, fb)` and its interval inputs `(xx, x)` from its `f32` squared norm.
    pub(crate) fn row_terms(&self, xx: f32) -> (f32, f32, f32) {
        let xx64 = xx as f64;
        // |x|² ≤ xx / (1 − γ): an upper bound on |x|.
        let x = f32_up((xx64 / (1.0 - self.g_rows)).sqrt() * (1.0 + MARGIN64));
        match self.metric {
            Metric::Cosine => (0.0, 0.0, x),
            Metric::Dot => (0.0, x, x),
            Metric::L2 => {
                let x64 = x as f64;
                let v = xx64 - self.g_rows / (1.0 - self.g_rows) * x64 * x64;
                (f32_down(v - LOOSEN * v.abs() - 2f64.powi(-140)), x, x)
            }
        }
    }
}

/// Whether a `float32` row is in the range the bound covers: every element zero or of magnitude in
/// `[2⁻²⁴, 2³²]` (every `float16` row is). Rows outside it are re-scored for every query.
pub(crate) fn tame_f32(x: &[f32]) -> bool {
    const LO: f32 = 1.0 / 16_777_216.0; // 2^-24
    const HI: f32 = 4_294_967_296.0; // 2^32
    x.iter().fold(true, |ok, &v| {
        let a = v.abs();
        ok & (a == 0.0 || (LO..=HI).contains(&a))
    })
}

/// What the bound needs to know about one query.
#[derive(Clone, Copy, Debug)]
pub(crate) struct QueryInfo {
    /// Whether the query is in the range the bound covers.
    pub(crate) safe: bool,
    /// `2^σ`, the exact power-of-two scale applied before rounding (dot and l2; 1 for cosine).
    pub(crate) sig: f64,
    /// Upper bound on `|q|` (unscaled).
    pub(crate) q: f64,
    /// `|q|²` summed in `f64` (relative error ≤ 2⁻³⁶).
    pub(crate) qq: f64,
}

impl QueryInfo {
    pub(crate) fn new(metric: Metric, q: &[f32]) -> QueryInfo {
        let maxabs = q.iter().fold(0f32, |m, v| m.max(v.abs()));
        let safe = maxabs >= 2f32.powi(-32) && maxabs <= 2f32.powi(32);
        let qq: f64 = q.iter().map(|&v| v as f64 * v as f64).sum();
        let sig = if safe && metric != Metric::Cosine {
            let e = ((maxabs.to_bits() >> 23) & 0xff) as i32 - 127;
            2f64.powi(-e)
        } else {
            1.0
        };
        QueryInfo {
            safe,
            sig,
            q: qq.sqrt() * (1.0 + 2f64.powi(-35)),
            qq,
        }
    }

    /// The `f32` values the unit multiplies (before `bf16` rounding): `q·2^σ`, or `q/|q|` for cosine.
    pub(crate) fn scaled(&self, metric: Metric, q: &[f32]) -> Vec<f32> {
        if !self.safe {
            return vec![0.0; q.len()];
        }
        match metric {
            Metric::Cosine => {
                let r = 1.0 / self.qq.sqrt();
                q.iter().map(|&v| (v as f64 * r) as f32).collect()
            }
            _ => q.iter().map(|&v| (v as f64 * self.sig) as f32).collect(),
        }
    }
}

/// CPU time of the calling thread, in seconds.
pub(crate) fn thread_cpu_seconds() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_THREAD_CPUTIME_ID exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

/// The unit's peak on `threads` threads for about `seconds`: `(GFLOP/s of wall time over all threads,
/// GFLOP per CPU-second of one thread)` (a multiply-add = 2). The second figure is the best of the
/// ~10 ms windows each thread ran (FLOPs over the thread's CPU time in the window): on a shared VM even
/// the CPU time a thread gets runs slower while other tenants use the core's sibling or the caches,
/// and the best window is the unit's own rate. `None` if the unit is not supported.
pub(crate) fn peak_gflops(unit: Unit, threads: usize, seconds: f64) -> Option<(f64, f64)> {
    if !unit.supported() {
        return None;
    }
    #[cfg(target_arch = "x86_64")]
    {
        let run = || {
            let t0 = std::time::Instant::now();
            let mut flops = 0.0;
            let mut best: f64 = 0.0;
            // SAFETY: the unit is supported (checked above); AMX gets its tile configuration first.
            let _g = (unit == Unit::Amx).then(|| unsafe { x86::AmxGuard::new() });
            while t0.elapsed().as_secs_f64() < seconds {
                let w0 = thread_cpu_seconds();
                let mut f = 0.0;
                while thread_cpu_seconds() - w0 < 0.01 {
                    f += match unit {
                        // SAFETY: as above.
                        Unit::Amx => unsafe { x86::amx_peak(1 << 12) },
                        // SAFETY: as above.
                        Unit::Avx512Bf16 => unsafe { x86::dpbf16_peak(1 << 12) },
                    };
                }
                best = best.max(f / (thread_cpu_seconds() - w0));
                flops += f;
            }
            (flops / t0.elapsed().as_secs_f64(), best)
        };
        let r: Vec<(f64, f64)> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..threads.max(1)).map(|_| s.spawn(run)).collect();
            hs.into_iter()
                .map(|h| h.join().expect("peak thread"))
                .collect()
        });
        let wall: f64 = r.iter().map(|x| x.0).sum();
        let best = r.iter().map(|x| x.1).fold(0.0, f64::max);
        Some((wall / 1e9, best / 1e9))
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (threads, seconds);
        None
    }
}

/// The queries as the unit's `B` operand: tiles of 16 queries × 32 dims in VNNI pairs (layout in `x86`),
/// each query scaled by [`QueryInfo::scaled`] and rounded to `bf16`.
fn pack_queries(
    info: &[QueryInfo],
    metric: Metric,
    queries: &[f32],
    dim: usize,
    dp: usize,
    nqp: usize,
) -> Aligned {
    let ks = dp / 32;
    let mut qv_buf = Aligned::zeroed(nqp * dp);
    let qv = qv_buf.as_mut_slice();
    for (qi, q) in queries.chunks_exact(dim).enumerate() {
        let scaled = info[qi].scaled(metric, q);
        let (qt, n) = (qi / 16, qi % 16);
        for (d, &v) in scaled.iter().enumerate() {
            let (s, within) = (d / 32, d % 32);
            let (kk, e) = (within / 2, within % 2);
            qv[((qt * ks + s) * 16 + kk) * 32 + n * 2 + e] = bf16_rne(v);
        }
    }
    qv_buf
}

/// Writes row `j` of a block (`w`: its `dp` values widened to `f32`, zero-padded) into the unit's row
/// tiles as `bf16(w · scale)`.
#[cfg(target_arch = "x86_64")]
fn put_row(xb: &mut [u16], j: usize, dp: usize, w: &[f32], scale: f32) {
    let ks = dp / 32;
    let (rt, m) = (j / 16, j % 16);
    for c in 0..ks {
        let at = (rt * ks + c) * 512 + m * 32;
        // SAFETY: both units imply AVX512-F/BW/BF16 (checked before any search or test starts).
        unsafe { x86::to_bf16(&w[c * 32..c * 32 + 32], scale, &mut xb[at..at + 32]) };
    }
}

/// The result of a scan: hits per query, and how many candidates were re-scored exactly.
pub(crate) struct Outcome {
    pub(crate) hits: Vec<Vec<Hit>>,
    pub(crate) rescored: u64,
}

/// What every scan thread of a batched search shares, whatever scores the rows (a reduced-precision
/// unit here, faer's `f32` GEMM in [`crate::batch`]): the queries, the bound, and the exact re-scoring of
/// the rows the bound keeps.
pub(crate) struct Shared<'a, 'v> {
    pub(crate) view: &'a RowsView<'v>,
    pub(crate) kernels: Kernels,
    pub(crate) metric: Metric,
    allow: Option<&'a Bitmap>,
    deleted: Option<&'a Bitmap>,
    tmax: f64,
    k: usize,
    pub(crate) dim: usize,
    pub(crate) nq: usize,
    pub(crate) bound: Bound,
    pub(crate) info: Vec<QueryInfo>,
    /// The queries (row-major) and their `f32` norms as `topk::search` computes them.
    queries: &'a [f32],
    qnorm: Vec<f32>,
    /// Per-query α, β (fixed) and the initial θ, padded with never-passing queries to `pad`.
    pub(crate) alpha: Vec<f32>,
    pub(crate) beta: Vec<f32>,
    theta0: Vec<f32>,
    /// Polled after each block of rows (the caller returns `Cancelled` once it stopped).
    pub(crate) control: Option<&'a crate::control::Control>,
    /// Per query, the smallest k-th distance any thread's full top-k has held ([`key`]-encoded):
    /// each is the k-th smallest `D` of k distinct qualifying rows, so every thread may use it as its
    /// bound `T'` (docs/design.md, the theorem's note on threads).
    cap: Vec<AtomicU32>,
}

/// An `f32` as a `u32` whose unsigned order is the float's order (negative values flipped).
fn key(f: f32) -> u32 {
    let b = f.to_bits();
    if b >> 31 == 1 {
        !b
    } else {
        b | 0x8000_0000
    }
}

/// The inverse of [`key`].
fn unkey(k: u32) -> f32 {
    f32::from_bits(if k >> 31 == 1 { k & 0x7FFF_FFFF } else { !k })
}

/// One thread's running state.
pub(crate) struct ThreadState {
    /// Per query, the pre-filter threshold θ for the current bound.
    pub(crate) theta: Vec<f32>,
    /// Per query, the `k` best rows re-scored so far, by `(D, slot)` with the one-query kernels.
    pub(crate) tops: Vec<TopK>,
    /// Rows re-scored.
    pub(crate) rescored: u64,
}

impl<'a, 'v> Shared<'a, 'v> {
    /// `queries` validated (finite, a multiple of the view's dimension); `bound` for the scorer;
    /// `pad` ≥ the query count, the length of the per-query filter vectors.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        view: &'a RowsView<'v>,
        queries: &'a [f32],
        p: &SearchParams<'a>,
        metric: Metric,
        kernels: Kernels,
        allow: Option<&'a Bitmap>,
        bound: Bound,
        pad: usize,
    ) -> Self {
        let dim = view.layout().dim();
        let nq = queries.len() / dim;
        let tmax = p.max_distance.map_or(f64::INFINITY, |t| t as f64);
        let info: Vec<QueryInfo> = queries
            .chunks_exact(dim)
            .map(|q| QueryInfo::new(metric, q))
            .collect();
        let pad = pad.max(nq);
        let mut alpha = vec![0f32; pad];
        let mut beta = vec![0f32; pad];
        let mut theta0 = vec![f32::INFINITY; pad];
        for (qi, q) in info.iter().enumerate() {
            let (t, a, b) = bound.filter(q, tmax);
            theta0[qi] = t;
            alpha[qi] = a;
            beta[qi] = b;
        }
        let qnorm: Vec<f32> = queries
            .chunks_exact(dim)
            .map(|q| kernels.norm_squared(q).sqrt())
            .collect();
        Shared {
            view,
            kernels,
            metric,
            allow,
            deleted: p.deleted,
            tmax,
            k: p.k,
            dim,
            nq,
            bound,
            info,
            queries,
            qnorm,
            alpha,
            beta,
            theta0,
            control: p.control,
            cap: (0..nq)
                .map(|_| AtomicU32::new(key(f32::INFINITY)))
                .collect(),
        }
    }

    /// A fresh thread state.
    pub(crate) fn state(&self) -> ThreadState {
        ThreadState {
            theta: self.theta0.clone(),
            tops: (0..self.nq).map(|_| TopK::new(self.k, 64)).collect(),
            rescored: 0,
        }
    }

    /// Whether slot `s` may be returned (candidate filter and deleted slots).
    #[inline]
    pub(crate) fn allowed(&self, s: usize) -> bool {
        self.allow.is_none_or(|a| a.contains(s)) && !self.deleted.is_some_and(|d| d.contains(s))
    }

    /// A score that passed the `f32` filter: if its row's `LD` is within the query's bound `T` (the
    /// k-th smallest exact distance re-scored so far, or the threshold), re-score the row exactly with
    /// the one-query kernels and keep it in the query's top-k, which tightens `T`. Memory stays `O(k)`
    /// per query however many rows tie.
    #[allow(clippy::too_many_arguments)]
    #[inline]
    pub(crate) fn offer(
        &self,
        qi: usize,
        slot: u64,
        s: f32,
        xx: f32,
        x: f32,
        theta: &mut f32,
        top: &mut TopK,
        rescored: &mut u64,
    ) {
        let q = &self.info[qi];
        let ld = self.bound.lower(q, s, xx, x);
        let own = top.worst();
        let shared = unkey(self.cap[qi].load(Ordering::Relaxed));
        let t = (own.min(shared) as f64).min(self.tmax);
        if ld > t || ld.is_nan() {
            if shared < own {
                // Another thread's top-k is tighter than this one's θ was built from.
                *theta = self.bound.filter(q, t).0;
            }
            return;
        }
        self.rescore(qi, slot, theta, top, rescored);
    }

    /// Re-scores row `slot` for query `qi` exactly and offers it to the query's top-k (rows the bound
    /// does not cover go straight here).
    #[inline]
    pub(crate) fn rescore(
        &self,
        qi: usize,
        slot: u64,
        theta: &mut f32,
        top: &mut TopK,
        rescored: &mut u64,
    ) {
        *rescored += 1;
        let d = self.kernels.distance(
            self.metric,
            &self.queries[qi * self.dim..(qi + 1) * self.dim],
            self.qnorm[qi],
            self.view.row(slot as usize),
        );
        // As `topk::search`: rows at or past the threshold (and NaN) never enter.
        if self.tmax < f64::INFINITY && (d.is_nan() || d as f64 >= self.tmax) {
            return;
        }
        let before = top.worst();
        top.push(d, slot);
        let after = top.worst();
        if after != before {
            // `after` is the k-th smallest D of k distinct rows: a valid T' for every thread.
            let prev = unkey(self.cap[qi].fetch_min(key(after), Ordering::Relaxed));
            let t = (after.min(prev) as f64).min(self.tmax);
            *theta = self.bound.filter(&self.info[qi], t).0;
        }
    }

    /// Merges the threads' top-k lists; queries outside the bound's range go to `topk::search`.
    pub(crate) fn finish(&self, states: Vec<ThreadState>, p: &SearchParams<'_>) -> Outcome {
        let mut tops: Vec<Option<TopK>> = (0..self.nq).map(|_| None).collect();
        let mut rescored = 0u64;
        for st in states {
            rescored += st.rescored;
            for (qi, top) in st.tops.into_iter().enumerate() {
                match &mut tops[qi] {
                    Some(t) => t.merge(top),
                    None => tops[qi] = Some(top),
                }
            }
        }
        let mut hits = Vec::with_capacity(self.nq);
        for (qi, top) in tops.into_iter().enumerate() {
            if !self.info[qi].safe {
                let q = &self.queries[qi * self.dim..(qi + 1) * self.dim];
                let mut sp = *p;
                sp.candidates = match self.allow {
                    Some(b) => crate::topk::Candidates::Bitmap(b),
                    None => crate::topk::Candidates::All,
                };
                sp.kernels = Some(self.kernels);
                sp.metric = Some(self.metric);
                // Validated queries fail only when stopped (the caller then returns `Cancelled`).
                hits.push(search(self.view, q, &sp).unwrap_or_default());
                continue;
            }
            hits.push(top.map_or_else(Vec::new, TopK::into_sorted));
        }
        Outcome { hits, rescored }
    }
}

/// Everything a unit scan thread reads.
struct Ctx<'s, 'a, 'v> {
    sh: &'s Shared<'a, 'v>,
    unit: Unit,
    dp: usize,
    nqp: usize,
    /// VNNI-packed queries (see `x86`).
    qv: &'s [u16],
}

/// The reduced-precision batch search. `queries` are validated (finite, a multiple of `dim`); the view
/// holds `float16` rows.
pub(crate) fn search_batch<'a>(
    unit: Unit,
    view: &'a RowsView<'_>,
    queries: &'a [f32],
    p: &SearchParams<'a>,
    metric: Metric,
    kernels: Kernels,
    allow: Option<&'a Bitmap>,
) -> Outcome {
    let dim = view.layout().dim();
    let nq = queries.len() / dim;
    let dp = dim.div_ceil(32) * 32;
    let nqp = nq.div_ceil(32) * 32;
    let bound = Bound::new(metric, dim, dp, Inputs::Bf16);
    let sh = Shared::new(view, queries, p, metric, kernels, allow, bound, nqp);
    let qv_buf = pack_queries(&sh.info, metric, queries, dim, dp, nqp);
    let rows = view.rows();
    let nblocks = rows.div_ceil(RB);
    let threads = p.threads.max(1).min(nblocks.max(1));
    let ctx = Ctx {
        sh: &sh,
        unit,
        dp,
        nqp,
        qv: qv_buf.as_slice(),
    };
    let next = AtomicUsize::new(0);
    let states: Vec<ThreadState> = if threads == 1 {
        vec![ctx.scan(&next, nblocks)]
    } else {
        std::thread::scope(|sc| {
            let ctx = &ctx;
            let next = &next;
            let hs: Vec<_> = (1..threads)
                .map(|_| sc.spawn(move || ctx.scan(next, nblocks)))
                .collect();
            let mut v = vec![ctx.scan(next, nblocks)];
            v.extend(
                hs.into_iter()
                    .map(|h| h.join().expect("batch thread panicked")),
            );
            v
        })
    };
    sh.finish(states, p)
}

impl Ctx<'_, '_, '_> {
    fn scan(&self, next: &AtomicUsize, nblocks: usize) -> ThreadState {
        let mut st = self.sh.state();
        #[cfg(target_arch = "x86_64")]
        {
            let _guard = match self.unit {
                // SAFETY: the unit was checked with `Unit::supported` (CPU features and the OS
                // permission) before this search started.
                Unit::Amx => Some(unsafe { x86::AmxGuard::new() }),
                Unit::Avx512Bf16 => None,
            };
            let mut buf = Buffers::new(self.dp);
            // The next block is claimed before this one is scored, so its rows can be prefetched
            // while the unit works.
            let mut b = next.fetch_add(1, Ordering::Relaxed);
            while b < nblocks {
                let nb = next.fetch_add(1, Ordering::Relaxed);
                let ahead = if nb < nblocks {
                    let r0 = nb * RB;
                    self.sh.view.raw(r0..(r0 + RB).min(self.sh.view.rows()))
                } else {
                    &[]
                };
                self.block(b, ahead, &mut buf, &mut st);
                let rows = RB.min(self.sh.view.rows() - b * RB);
                if !crate::control::step(self.sh.control, rows as u64) {
                    break;
                }
                b = nb;
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = (next, nblocks);
            unreachable!("reduced-precision units exist only on x86_64");
        }
        st
    }

    /// Converts rows `[RB·b, RB·b + RB)` and scores them against every query, prefetching the bytes
    /// `ahead` (the next block's rows) into L2 while the unit works.
    #[cfg(target_arch = "x86_64")]
    fn block(&self, b: usize, ahead: &[u8], buf: &mut Buffers, st: &mut ThreadState) {
        let r0 = b * RB;
        let t = RB.min(self.sh.view.rows() - r0);
        let tp = t.div_ceil(32) * 32;
        let dp = self.dp;
        let mut any = false;
        for j in 0..tp {
            let s = r0 + j;
            let ok = j < t && self.sh.allowed(s);
            let ks = dp / 32;
            let (rt, m) = (j / 16, j % 16);
            if !ok {
                for c in 0..ks {
                    let at = (rt * ks + c) * 512 + m * 32;
                    buf.xb[at..at + 32].fill(0);
                }
                buf.fa[j] = f32::NAN;
                buf.fb[j] = f32::NAN;
                buf.live[j] = 0;
                continue;
            }
            any = true;
            let row = self.sh.view.row(s);
            // Squared norm (f32, any summation order: the bound uses only its γ_m error).
            let xx = match row {
                // SAFETY: both units imply AVX512-F/BW/BF16 (checked before the search started).
                Row::F16(x) => unsafe { x86::f16_norm_squared(x) },
                Row::F32(x) => self.sh.kernels.norm_squared(x),
            };
            let (fa, fb, x) = self.sh.bound.row_terms(xx);
            buf.fa[j] = fa;
            buf.fb[j] = fb;
            buf.live[j] = 0xFFFF;
            buf.xx[j] = xx;
            buf.x[j] = x;
            let scale = if self.sh.metric == Metric::Cosine {
                if xx > 0.0 {
                    (1.0 / (xx as f64).sqrt()) as f32
                } else {
                    0.0
                }
            } else {
                1.0
            };
            match row {
                Row::F16(x) => {
                    let base = rt * ks * 512 + m * 32;
                    // SAFETY: as above; `32·ks = dp >= dim`, and row tile `rt` holds `ks` chunks at
                    // `base + 512·c`, inside the block buffer.
                    unsafe { x86::f16_row_to_tiles(x, scale, &mut buf.xb, base, ks) };
                }
                Row::F32(x) => {
                    let w = &mut buf.wide[..dp];
                    w[..self.sh.dim].copy_from_slice(x);
                    w[self.sh.dim..].fill(0.0);
                    put_row(&mut buf.xb, j, dp, w, scale);
                }
            }
        }
        if !any {
            return;
        }
        for (rt, tile) in buf.tile[..tp / 16].iter_mut().enumerate() {
            let rows = rt * 16..rt * 16 + 16;
            let live = buf.live[rows.clone()].iter().map(|&l| l != 0);
            let fa = buf.fa[rows.clone()].iter().zip(live.clone());
            let fb = buf.fb[rows].iter().zip(live.clone());
            *tile = (
                live.clone().any(|l| l),
                fa.filter(|x| x.1).fold(f32::INFINITY, |m, x| m.min(*x.0)),
                fb.filter(|x| x.1)
                    .fold(f32::NEG_INFINITY, |m, x| m.max(*x.0)),
            );
        }
        let ks = dp / 32;
        // Score block i+1 on the unit before filtering block i from the other buffer: the unit works
        // while the vector code filters, and the filter never reads a buffer the unit just wrote.
        let mut pending: Option<(usize, usize, usize)> = None;
        let pairs = (tp / 32) * (self.nqp / 32);
        // Cache lines of `ahead` to prefetch per block pair, so all are requested by the end.
        let lines = ahead.len().div_ceil(64);
        let per_pair = lines.div_ceil(pairs.max(1));
        for i in 0..=pairs {
            let cur = i % 2;
            for l in (i * per_pair..((i + 1) * per_pair).min(lines)).map(|l| l * 64) {
                // SAFETY: `l < ahead.len()`; a prefetch never faults and changes no state.
                unsafe {
                    std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T1 }>(
                        ahead.as_ptr().add(l) as *const i8,
                    )
                };
            }
            if i < pairs {
                let (qp, rp) = (i / (tp / 32), i % (tp / 32));
                let b0 = &self.qv[(2 * qp) * ks * 512..];
                let b1 = &self.qv[(2 * qp + 1) * ks * 512..];
                let a = &buf.xb[rp * 32 * dp..(rp + 1) * 32 * dp];
                debug_assert_eq!(32 * dp, 2 * ks * 512);
                let c = &mut buf.c[cur].0;
                // SAFETY: `a` holds 2·ks row tiles (32 rows of `dp` bf16); `b0`/`b1` start `ks` VNNI tiles each (the
                // query buffer holds `nqp/16 · ks` tiles and `2qp + 1 < nqp/16`); `c` holds 1,024 f32.
                // The unit's CPU support (and for AMX the thread's tile configuration) is live.
                unsafe {
                    match self.unit {
                        Unit::Amx => {
                            x86::amx_block(a.as_ptr(), b0.as_ptr(), b1.as_ptr(), ks, c.as_mut_ptr())
                        }
                        Unit::Avx512Bf16 => x86::dpbf16_block(
                            a.as_ptr(),
                            b0.as_ptr(),
                            b1.as_ptr(),
                            ks,
                            c.as_mut_ptr(),
                        ),
                    }
                }
            }
            if let Some((qp, rp, which)) = pending.take() {
                self.filter(&buf.c[which].0, qp, rp, r0, buf, st);
            }
            if i < pairs {
                pending = Some((i / (tp / 32), i % (tp / 32), cur));
            }
        }
    }

    /// Filters one 32 × 32 score block (query pair `qp`, row pair `rp` of the block at `r0`).
    #[cfg(target_arch = "x86_64")]
    fn filter(
        &self,
        c: &[f32; 1024],
        qp: usize,
        rp: usize,
        r0: usize,
        buf: &Buffers,
        st: &mut ThreadState,
    ) {
        let q0 = qp * 32;
        let rows = rp * 32;
        let (theta, tops, rescored) = (&mut st.theta, &mut st.tops, &mut st.rescored);
        let th: [f32; 32] = theta[q0..q0 + 32].try_into().expect("32 lanes");
        let (xx, x) = (&buf.xx, &buf.x);
        let hit = |r: usize, j: usize, s: f32| {
            let qi = q0 + j;
            let row = rows + r;
            self.sh.offer(
                qi,
                (r0 + row) as u64,
                s,
                xx[row],
                x[row],
                &mut theta[qi],
                &mut tops[qi],
                rescored,
            );
        };
        let (al, be) = (&self.sh.alpha[q0..q0 + 32], &self.sh.beta[q0..q0 + 32]);
        let (fa, fb, live) = (
            &buf.fa[rows..rows + 32],
            &buf.fb[rows..rows + 32],
            &buf.live[rows..rows + 32],
        );
        let tile = [buf.tile[2 * rp], buf.tile[2 * rp + 1]];
        // SAFETY: AVX-512F is present (both units imply it).
        unsafe {
            match self.sh.metric {
                Metric::Cosine => {
                    x86::filter_block::<false, false>(c, &th, al, be, fa, fb, live, tile, hit)
                }
                Metric::Dot => {
                    x86::filter_block::<false, true>(c, &th, al, be, fa, fb, live, tile, hit)
                }
                Metric::L2 => {
                    x86::filter_block::<true, true>(c, &th, al, be, fa, fb, live, tile, hit)
                }
            }
        }
    }
}

/// One thread's scratch space.
struct Buffers {
    xb: Aligned,
    wide: Vec<f32>,
    fa: Vec<f32>,
    fb: Vec<f32>,
    live: Vec<u16>,
    xx: Vec<f32>,
    x: Vec<f32>,
    /// Per 16-row tile: (any live row, smallest `fa`, largest `fb` of its live rows).
    tile: Vec<(bool, f32, f32)>,
    c: Box<[CBuf; 2]>,
}

#[repr(C, align(64))]
struct CBuf([f32; 1024]);

/// A 64-byte aligned `u16` buffer: tile loads of 64-byte lines that straddle two cache lines run about
/// ten times slower.
struct Aligned(Vec<Line>);

#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([u16; 32]);

impl Aligned {
    /// `n` zeros (`n` a multiple of 32).
    fn zeroed(n: usize) -> Aligned {
        Aligned(vec![Line([0; 32]); n.div_ceil(32)])
    }
    fn as_slice(&self) -> &[u16] {
        // SAFETY: `Line` is `repr(C)` of 32 `u16` with no padding (64 bytes, align 64), so the vector's
        // storage is `32 · len` initialised, properly aligned `u16`.
        unsafe { std::slice::from_raw_parts(self.0.as_ptr() as *const u16, self.0.len() * 32) }
    }
    fn as_mut_slice(&mut self) -> &mut [u16] {
        // SAFETY: as in `as_slice`, and `&mut self` makes the borrow unique.
        unsafe {
            std::slice::from_raw_parts_mut(self.0.as_mut_ptr() as *mut u16, self.0.len() * 32)
        }
    }
}

impl std::ops::Deref for Aligned {
    type Target = [u16];
    fn deref(&self) -> &[u16] {
        self.as_slice()
    }
}

impl std::ops::DerefMut for Aligned {
    fn deref_mut(&mut self) -> &mut [u16] {
        self.as_mut_slice()
    }
}

impl Buffers {
    fn new(dp: usize) -> Buffers {
        Buffers {
            xb: Aligned::zeroed(RB * dp),
            wide: vec![0.0; dp],
            fa: vec![0.0; RB],
            fb: vec![0.0; RB],
            live: vec![0; RB],
            xx: vec![0.0; RB],
            x: vec![0.0; RB],
            tile: vec![(false, 0.0, 0.0); RB / 16],
            c: Box::new([CBuf([0.0; 1024]), CBuf([0.0; 1024])]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hardware half of the bound: every raw unit score is within `e·Q·X + a` of the exact product
    /// of the values the unit was given (before their bf16 rounding), on adversarial data. This checks the
    /// assumption that the unit accumulates in f32 with at most one rounding per addition.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn unit_scores_stay_within_the_bound() {
        let mut s = 0x1234_5678_9abc_def0u64;
        let mut rnd = move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
        };
        let dim = 70;
        let dp = 96;
        let ks = dp / 32;
        for unit in [Unit::Amx, Unit::Avx512Bf16] {
            if !unit.supported() {
                eprintln!("{unit:?} not supported here");
                continue;
            }
            for metric in [Metric::Dot, Metric::Cosine] {
                let bound = Bound::new(metric, dim, dp, Inputs::Bf16);
                let mut worst: f64 = 0.0;
                for trial in 0..20 {
                    // 32 rows (f16 values) and 32 queries (f32), mixed magnitudes and cancellation.
                    let rows: Vec<Vec<f32>> = (0..32)
                        .map(|i| {
                            (0..dim)
                                .map(|d| {
                                    let scale = match (i + trial) % 5 {
                                        0 => 65504.0,
                                        1 => 6e-8,
                                        2 => 1.0,
                                        3 => {
                                            if d % 2 == 0 {
                                                30000.0
                                            } else {
                                                1e-3
                                            }
                                        }
                                        _ => 0.5,
                                    };
                                    half::f16::from_f64(rnd() * scale).to_f32()
                                })
                                .collect()
                        })
                        .collect();
                    let queries: Vec<f32> = (0..32 * dim)
                        .map(|i| {
                            let mag = [1.0, 1e-9, 1e9, 3.0e-5][(i / dim + trial) % 4];
                            (rnd() * mag) as f32
                        })
                        .collect();
                    let info: Vec<QueryInfo> = queries
                        .chunks_exact(dim)
                        .map(|q| QueryInfo::new(metric, q))
                        .collect();
                    let qv = pack_queries(&info, metric, &queries, dim, dp, 32);
                    let mut xb = Aligned::zeroed(32 * dp);
                    let k = Kernels::best();
                    let mut xx = [0f32; 32];
                    for (j, r) in rows.iter().enumerate() {
                        let mut w = r.clone();
                        w.resize(dp, 0.0);
                        xx[j] = k.norm_squared(r);
                        let scale = if metric == Metric::Cosine && xx[j] > 0.0 {
                            (1.0 / (xx[j] as f64).sqrt()) as f32
                        } else {
                            1.0
                        };
                        put_row(&mut xb, j, dp, &w, scale);
                    }
                    let mut c = CBuf([0.0; 1024]);
                    // SAFETY: the unit is supported; the buffers have the sizes the kernels read and
                    // write (2·ks row tiles, 2 × ks query tiles, 1,024 scores).
                    unsafe {
                        match unit {
                            Unit::Amx => {
                                let _g = x86::AmxGuard::new();
                                x86::amx_block(
                                    xb.as_ptr(),
                                    qv.as_ptr(),
                                    qv.as_ptr().add(ks * 512),
                                    ks,
                                    c.0.as_mut_ptr(),
                                );
                            }
                            Unit::Avx512Bf16 => x86::dpbf16_block(
                                xb.as_ptr(),
                                qv.as_ptr(),
                                qv.as_ptr().add(ks * 512),
                                ks,
                                c.0.as_mut_ptr(),
                            ),
                        }
                    }
                    for (r, row) in rows.iter().enumerate() {
                        let xn = row.iter().map(|&v| v as f64 * v as f64).sum::<f64>().sqrt();
                        for (qi, q) in queries.chunks_exact(dim).enumerate() {
                            let inf = &info[qi];
                            if !inf.safe {
                                continue;
                            }
                            let got = c.0[(2 * (r / 16) + qi / 16) * 256 + (r % 16) * 16 + qi % 16]
                                as f64;
                            let dot: f64 =
                                q.iter().zip(row).map(|(&a, &b)| a as f64 * b as f64).sum();
                            let (want, allowed) = if metric == Metric::Cosine {
                                let qn = inf.qq.sqrt();
                                let c = if xn == 0.0 { 0.0 } else { dot / (qn * xn) };
                                (c, bound.e)
                            } else {
                                (dot * inf.sig, bound.e * inf.q * inf.sig * xn + bound.a_amx)
                            };
                            let err = (got - want).abs();
                            assert!(
                                err <= allowed,
                                "{unit:?} {metric} trial {trial} row {r} query {qi}: {got} vs {want}, error {err} > bound {allowed}"
                            );
                            if allowed > 0.0 {
                                worst = worst.max(err / allowed);
                            }
                        }
                    }
                }
                eprintln!("{unit:?} {metric}: largest error / bound = {worst:.3}");
                assert!(
                    worst > 0.0,
                    "{unit:?} {metric}: no rounding seen (test not exercising)"
                );
            }
        }
    }

    /// Microbenchmark (not a check): the AMX block loop alone — no conversion, no filter — on the
    /// driver's buffer sizes (a 256-row block, 1,024 queries, 256 dims) filled with pseudo-random
    /// `bf16`, against the unit's peak; best of 15 short rounds each. Run:
    /// `cargo test --release -p phenix-core --lib amx_loop_throughput -- --ignored --nocapture`.
    #[cfg(target_arch = "x86_64")]
    #[test]
    #[ignore]
    fn amx_loop_throughput() {
        if !Unit::Amx.supported() {
            return;
        }
        let (dp, nqp, rb) = (256, 1024, RB);
        let ks = dp / 32;
        let mut qv = Aligned::zeroed(nqp * dp);
        let mut xb = Aligned::zeroed(rb * dp);
        let mut z = 1u64;
        for v in qv.iter_mut().chain(xb.iter_mut()) {
            z = z
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            *v = bf16_rne(((z >> 40) as f32 / 16_777_216.0 - 0.5) * 0.1);
        }
        let mut c = Box::new([CBuf([0.0; 1024]), CBuf([0.0; 1024])]);
        let (mut best, mut peak) = (0f64, 0f64);
        for _round in 0..15 {
            peak = peak.max(peak_gflops(Unit::Amx, 1, 0.02).expect("amx").1);
            // SAFETY: AMX is supported (checked above).
            let _g = unsafe { x86::AmxGuard::new() };
            let c0 = thread_cpu_seconds();
            let mut flops = 0.0;
            for _ in 0..20_000 / rb {
                for i in 0..(rb / 32) * (nqp / 32) {
                    let (qp, rp) = (i / (rb / 32), i % (rb / 32));
                    let b0 = &qv[(2 * qp) * ks * 512..];
                    let b1 = &qv[(2 * qp + 1) * ks * 512..];
                    let a = &xb[rp * 32 * dp..];
                    let cc = &mut c[i % 2].0;
                    // SAFETY: the buffers hold the tiles `amx_block` reads and the 1,024 f32 it
                    // writes; the tile configuration is loaded.
                    unsafe {
                        x86::amx_block(a.as_ptr(), b0.as_ptr(), b1.as_ptr(), ks, cc.as_mut_ptr())
                    };
                    flops += 32.0 * 32.0 * dp as f64 * 2.0;
                }
            }
            best = best.max(flops / (thread_cpu_seconds() - c0) / 1e9);
        }
        eprintln!(
            "AMX block loop: best {best:.0} GFLOP per CPU-second = {:.1} % of the unit's peak {peak:.0}",
            100.0 * best / peak
        );
    }

    #[test]
    fn key_orders_as_the_floats() {
        let v = [
            f32::NEG_INFINITY,
            -3.0,
            -0.0,
            0.0,
            1e-40,
            0.5,
            2.0,
            f32::INFINITY,
        ];
        for w in v.windows(2) {
            assert!(key(w[0]) <= key(w[1]), "{w:?}");
        }
        for x in v {
            assert_eq!(unkey(key(x)).to_bits(), x.to_bits());
        }
    }

    #[test]
    fn directed_rounding_brackets_the_value() {
        for &v in &[0.1f64, -0.1, 1e-40, 3.0, -1e30, 1.0 / 3.0] {
            assert!((f32_down(v) as f64) <= v && (f32_up(v) as f64) >= v, "{v}");
        }
        assert_eq!(f32_down(f64::NEG_INFINITY), f32::NEG_INFINITY);
    }

    #[test]
    fn bf16_rounding_is_nearest_even() {
        for &v in &[
            1.0f32,
            -2.5,
            65504.0,
            6e-8,
            1.0 + 1.0 / 256.0,
            1.0 + 3.0 / 256.0,
            0.0,
        ] {
            let b = f32::from_bits((bf16_rne(v) as u32) << 16);
            assert!(
                ((b - v).abs() as f64) <= U_BF16 * v.abs() as f64,
                "{v} -> {b}"
            );
        }
        // Ties go to even: 1 + 2^-8 is halfway between 1 and 1 + 2^-7.
        assert_eq!(bf16_rne(1.0 + 1.0 / 256.0), 0x3F80);
        assert_eq!(bf16_rne(1.0 + 3.0 / 256.0), 0x3F82);
    }
}
