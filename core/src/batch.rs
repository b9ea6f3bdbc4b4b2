//! Top-k for many queries at once.
//!
//! Two kinds of path, chosen per call by [`BatchPath`]:
//!
//! - **Reduced precision** ([`BatchPath::Amx`], [`BatchPath::Avx512Bf16`]; `float16` stores): rows and
//!   queries are rounded to `bf16` and scored on the CPU's matrix unit with `f32` accumulation; a rigorous
//!   error bound keeps, per query, every row that could still be in the exact top-k, and those are
//!   re-scored with the one-query kernels. The result equals [`crate::topk::search`] for every query
//!   (rows, distances and tie order). The bound and its proof: docs/design.md, "Reduced-precision batch
//!   scoring".
//! - **`f32` GEMM** ([`BatchPath::Gemm`], every CPU and element type): rows are taken in tiles of
//!   [`TILE_ROWS`], widened to `f32`, multiplied against all queries with faer's GEMM, and the same bound
//!   (with `f32` GEMM's rounding error in place of `bf16`'s) keeps every row that could be in a query's
//!   exact top-k; those are re-scored with the one-query kernels. The result equals
//!   [`crate::topk::search`] too.
//!
//! Tiles (or row blocks) are split over threads; per-thread collectors are merged at the end.

use crate::bitmap::Bitmap;
use crate::error::{Error, Result};
use crate::kernels::{Kernels, Row};
use crate::lowp::{self, Unit};
use crate::store::RowsView;
use crate::topk::{Candidates, Hit, SearchParams};
use crate::types::{ElemType, Metric};
use faer::{Accum, MatMut, MatRef, Par};
use half::slice::HalfFloatSliceExt;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Which batched path to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BatchPath {
    /// The fastest path this CPU supports for the call's shape: AMX, then AVX512-BF16, then GEMM.
    /// `PHENIX_BATCH_PATH=gemm|amx|avx512bf16` overrides it (for tests and benchmarks).
    Auto,
    /// `f32` GEMM (faer); every CPU, every element type.
    Gemm,
    /// AMX-BF16 tiles with an exact re-rank (`float16` stores; Intel Sapphire Rapids and later, Linux
    /// granting the tile state).
    Amx,
    /// AVX512-BF16 `vdpbf16ps` with an exact re-rank (`float16` stores; AMD Zen 4, Intel Cooper Lake and
    /// later).
    Avx512Bf16,
}

impl BatchPath {
    /// The concrete paths this CPU (and OS) can run, GEMM first.
    pub fn available() -> Vec<BatchPath> {
        [BatchPath::Gemm, BatchPath::Avx512Bf16, BatchPath::Amx]
            .into_iter()
            .filter(|p| p.supported())
            .collect()
    }

    /// Whether this CPU (and, for AMX, the OS permission) allows the path.
    pub fn supported(self) -> bool {
        match self {
            BatchPath::Auto | BatchPath::Gemm => true,
            BatchPath::Amx => Unit::Amx.supported(),
            BatchPath::Avx512Bf16 => Unit::Avx512Bf16.supported(),
        }
    }

    /// A short name (`auto`, `gemm`, `amx`, `avx512bf16`), also what `PHENIX_BATCH_PATH` takes.
    pub fn name(self) -> &'static str {
        match self {
            BatchPath::Auto => "auto",
            BatchPath::Gemm => "gemm",
            BatchPath::Amx => "amx",
            BatchPath::Avx512Bf16 => "avx512bf16",
        }
    }

    /// Parses [`BatchPath::name`].
    pub fn parse(s: &str) -> Option<BatchPath> {
        [
            BatchPath::Auto,
            BatchPath::Gemm,
            BatchPath::Amx,
            BatchPath::Avx512Bf16,
        ]
        .into_iter()
        .find(|p| p.name().eq_ignore_ascii_case(s.trim()))
    }

    /// The path `PHENIX_BATCH_PATH` names, if it names one this CPU supports; otherwise `Auto`.
    fn from_env() -> BatchPath {
        static ENV: std::sync::OnceLock<BatchPath> = std::sync::OnceLock::new();
        *ENV.get_or_init(|| {
            std::env::var("PHENIX_BATCH_PATH")
                .ok()
                .and_then(|v| BatchPath::parse(&v))
                .filter(|p| p.supported())
                .unwrap_or(BatchPath::Auto)
        })
    }
}

/// What a batched search did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchStats {
    /// The path that ran (never `Auto`).
    pub path: BatchPath,
    /// Query × row pairs re-scored with the one-query kernels after the bound's filter.
    pub rescored: u64,
    /// Query × row pairs scored in all (queries × rows of the view).
    pub scored: u64,
}

/// Largest `k` the reduced-precision paths take under [`BatchPath::Auto`]: beyond it most rows are
/// candidates anyway and the exact GEMM scores are cheaper to use directly.
const AUTO_MAX_K: usize = 4096;

/// Rows per GEMM tile (1024 × 256 dims × 4 bytes = 1 MiB, which stays in L2).
pub const TILE_ROWS: usize = 1024;

/// For each of the `queries.len() / dim` queries (row-major), its `k` nearest rows. Takes the same
/// parameters as [`crate::topk::search`]; `kernels` chooses the one-query kernels that norm and re-score.
/// Runs [`BatchPath::Auto`].
pub fn search_batch(
    view: &RowsView<'_>,
    queries: &[f32],
    p: &SearchParams<'_>,
) -> Result<Vec<Vec<Hit>>> {
    Ok(search_batch_with(view, queries, p, BatchPath::Auto)?.0)
}

/// [`search_batch`] on a chosen path, with what it did. A reduced-precision path on a `float32` store
/// runs GEMM instead (the stats say so); a path this CPU cannot run is an error.
pub fn search_batch_with(
    view: &RowsView<'_>,
    queries: &[f32],
    p: &SearchParams<'_>,
    path: BatchPath,
) -> Result<(Vec<Vec<Hit>>, BatchStats)> {
    let layout = view.layout();
    let dim = layout.dim();
    if !queries.len().is_multiple_of(dim) {
        return Err(Error::DimMismatch {
            expected: dim,
            found: queries.len() % dim,
        });
    }
    if p.k == 0 {
        return Err(Error::InvalidArgument("k must be at least 1".into()));
    }
    if p.max_distance.is_some_and(f32::is_nan) {
        return Err(Error::InvalidArgument("distance threshold is NaN".into()));
    }
    if let Some(i) = queries.iter().position(|x| !x.is_finite()) {
        return Err(Error::InvalidArgument(format!(
            "query {} element {} is {} (queries must be finite)",
            i / dim,
            i % dim,
            queries[i]
        )));
    }
    if let Candidates::Slots(s) = p.candidates {
        if s.windows(2).any(|w| w[0] >= w[1]) {
            return Err(Error::InvalidArgument(
                "candidate slots must be ascending and distinct".into(),
            ));
        }
    }
    if !path.supported() {
        return Err(Error::InvalidArgument(format!(
            "batch path {} is not supported on this CPU",
            path.name()
        )));
    }
    let nq = queries.len() / dim;
    let metric = p.metric.unwrap_or(layout.metric());
    let kernels = p.kernels.unwrap_or_else(Kernels::best);
    let rows = view.rows();
    let scored = (nq as u64).saturating_mul(rows as u64);
    let path = match path {
        BatchPath::Auto => match BatchPath::from_env() {
            BatchPath::Auto => {
                // Measured (docs/benchmarks.md): from 2 queries on, the unit path takes less CPU time.
                if p.k > AUTO_MAX_K || nq < 2 || rows < 1024 {
                    BatchPath::Gemm
                } else if BatchPath::Amx.supported() {
                    BatchPath::Amx
                } else if BatchPath::Avx512Bf16.supported() {
                    BatchPath::Avx512Bf16
                } else {
                    BatchPath::Gemm
                }
            }
            forced => forced,
        },
        other => other,
    };
    let unit = match path {
        BatchPath::Amx => Some(Unit::Amx),
        BatchPath::Avx512Bf16 => Some(Unit::Avx512Bf16),
        _ => None,
    };
    let slot_bitmap;
    let allow: Option<&Bitmap> = match p.candidates {
        Candidates::All => None,
        Candidates::Bitmap(b) => Some(b),
        Candidates::Slots(s) => {
            slot_bitmap = Bitmap::from_slots(rows, s.iter().copied());
            Some(&slot_bitmap)
        }
    };
    if let (Some(unit), ElemType::F16) = (unit, layout.elem()) {
        if nq == 0 {
            return Ok((
                Vec::new(),
                BatchStats {
                    path,
                    rescored: 0,
                    scored,
                },
            ));
        }
        let out = lowp::search_batch(unit, view, queries, p, metric, kernels, allow);
        crate::control::check(p.control)?;
        return Ok((
            out.hits,
            BatchStats {
                path,
                rescored: out.rescored,
                scored,
            },
        ));
    }
    if nq == 0 {
        let stats = BatchStats {
            path: BatchPath::Gemm,
            rescored: 0,
            scored,
        };
        return Ok((Vec::new(), stats));
    }
    let out = gemm(view, queries, p, metric, kernels, allow);
    crate::control::check(p.control)?;
    let stats = BatchStats {
        path: BatchPath::Gemm,
        rescored: out.rescored,
        scored,
    };
    Ok((out.hits, stats))
}

/// Microbenchmark of a reduced-precision path's unit: its dot-product instruction in a register- or
/// tile-resident loop on `threads` threads for about `seconds`. Returns `(GFLOP/s over all threads,
/// GFLOP per CPU-second of one thread)` (a multiply-add counts 2); the second is what a shared machine
/// does not distort. `None` for [`BatchPath::Gemm`]/[`BatchPath::Auto`] or an unsupported unit. For
/// benchmarks.
pub fn unit_peak_gflops(path: BatchPath, threads: usize, seconds: f64) -> Option<(f64, f64)> {
    let unit = match path {
        BatchPath::Amx => Unit::Amx,
        BatchPath::Avx512Bf16 => Unit::Avx512Bf16,
        _ => return None,
    };
    lowp::peak_gflops(unit, threads, seconds)
}

/// The `f32` GEMM path: faer scores tiles of [`TILE_ROWS`] rows against every query, and the bound of
/// the reduced-precision paths — with the error of `f32` GEMM in place of `bf16` rounding — decides
/// which rows are re-scored with the one-query kernels, so the result equals `topk::search`'s (rows,
/// distances, tie order). `float32` rows outside the range the bound covers (an element not zero and
/// not in `[2⁻²⁴, 2³²]` in magnitude) are re-scored for every query.
fn gemm(
    view: &RowsView<'_>,
    queries: &[f32],
    p: &SearchParams<'_>,
    metric: Metric,
    kernels: Kernels,
    allow: Option<&Bitmap>,
) -> lowp::Outcome {
    let dim = view.layout().dim();
    let bound = lowp::Bound::new(metric, dim, dim, lowp::Inputs::F32);
    let sh = lowp::Shared::new(view, queries, p, metric, kernels, allow, bound, 0);
    // What GEMM multiplies, as the bound assumes: q·2^σ (dot, l2) or q/|q| (cosine); zeros for a
    // query outside the bound's range (answered by `topk::search` at the end).
    let scaled: Vec<f32> = queries
        .chunks_exact(dim)
        .zip(&sh.info)
        .flat_map(|(q, info)| info.scaled(metric, q))
        .collect();
    let ntiles = view.rows().div_ceil(TILE_ROWS);
    let threads = p.threads.max(1).min(ntiles.max(1));
    let next = AtomicUsize::new(0);
    let states = if threads == 1 {
        vec![scan_tiles(&sh, &scaled, &next, ntiles)]
    } else {
        std::thread::scope(|sc| {
            let (sh, scaled, next) = (&sh, &scaled, &next);
            let handles: Vec<_> = (1..threads)
                .map(|_| sc.spawn(move || scan_tiles(sh, scaled, next, ntiles)))
                .collect();
            let mut v = vec![scan_tiles(sh, scaled, next, ntiles)];
            v.extend(
                handles
                    .into_iter()
                    .map(|h| h.join().expect("batch thread panicked")),
            );
            v
        })
    };
    sh.finish(states, p)
}

/// One GEMM thread: takes tiles from `next` until none are left.
fn scan_tiles(
    sh: &lowp::Shared<'_, '_>,
    scaled: &[f32],
    next: &AtomicUsize,
    ntiles: usize,
) -> lowp::ThreadState {
    let (dim, nq) = (sh.dim, sh.nq);
    let rows = sh.view.rows();
    let mut st = sh.state();
    let mut xt = vec![0f32; TILE_ROWS * dim];
    // Per row of the tile: f32 squared norm, norm bound, filter terms (NaN: never passes).
    let mut xx = vec![0f32; TILE_ROWS];
    let mut xn = vec![0f32; TILE_ROWS];
    let mut fa = vec![0f32; TILE_ROWS];
    let mut fb = vec![0f32; TILE_ROWS];
    // Allowed rows the bound does not cover: re-scored for every query.
    let mut wild: Vec<usize> = Vec::new();
    let mut scores = vec![0f32; TILE_ROWS * nq];
    let qt = MatRef::from_row_major_slice(scaled, nq, dim).transpose();
    loop {
        let tile = next.fetch_add(1, Ordering::Relaxed);
        if tile >= ntiles {
            break;
        }
        let r0 = tile * TILE_ROWS;
        let t = TILE_ROWS.min(rows - r0);
        // Stopped: leave (the caller then returns `Cancelled`).
        if !crate::control::step(sh.control, t as u64) {
            break;
        }
        wild.clear();
        let mut any = false;
        for j in 0..t {
            let s = r0 + j;
            let dst = &mut xt[j * dim..(j + 1) * dim];
            let ok = sh.allowed(s);
            let tame = ok
                && match sh.view.row(s) {
                    Row::F16(x) => {
                        x.convert_to_f32_slice(dst);
                        true
                    }
                    Row::F32(x) => {
                        dst.copy_from_slice(x);
                        lowp::tame_f32(x)
                    }
                };
            if !tame {
                if ok {
                    wild.push(j);
                }
                dst.fill(0.0);
                fa[j] = f32::NAN;
                fb[j] = f32::NAN;
                continue;
            }
            any = true;
            let n2 = sh.kernels.norm_squared(dst);
            let (a, b, x) = sh.bound.row_terms(n2);
            (xx[j], xn[j], fa[j], fb[j]) = (n2, x, a, b);
            if sh.metric == Metric::Cosine {
                // x/|x| with the f32 norm (the zero row stays zero: cosine 0, distance 1).
                let r = if n2 > 0.0 {
                    (1.0 / (n2 as f64).sqrt()) as f32
                } else {
                    0.0
                };
                dst.iter_mut().for_each(|v| *v *= r);
            }
        }
        if any {
            let x = MatRef::from_row_major_slice(&xt[..t * dim], t, dim);
            let out = MatMut::from_column_major_slice_mut(&mut scores[..t * nq], t, nq);
            faer::linalg::matmul::matmul(out, Accum::Replace, x, qt, 1.0f32, Par::Seq);
            for qi in 0..nq {
                if !sh.info[qi].safe {
                    continue;
                }
                let col = &scores[qi * t..(qi + 1) * t];
                let (al, be) = (sh.alpha[qi], sh.beta[qi]);
                // The pre-filter `s ≥ θ + α·fa − β·fb` on 16 rows at a time (vectorised, no branch);
                // rows of a group with a pass go to the exact bound test one by one, against the
                // query's current θ (which tightens as rows enter).
                for j0 in (0..t).step_by(16) {
                    let j1 = (j0 + 16).min(t);
                    let th = st.theta[qi];
                    let mut pass = false;
                    for j in j0..j1 {
                        pass |= col[j] >= th + al * fa[j] - be * fb[j];
                    }
                    if !pass {
                        continue;
                    }
                    for j in j0..j1 {
                        if col[j] >= st.theta[qi] + al * fa[j] - be * fb[j] {
                            sh.offer(
                                qi,
                                (r0 + j) as u64,
                                col[j],
                                xx[j],
                                xn[j],
                                &mut st.theta[qi],
                                &mut st.tops[qi],
                                &mut st.rescored,
                            );
                        }
                    }
                }
            }
        }
        for &j in &wild {
            for qi in (0..nq).filter(|&qi| sh.info[qi].safe) {
                sh.rescore(
                    qi,
                    (r0 + j) as u64,
                    &mut st.theta[qi],
                    &mut st.tops[qi],
                    &mut st.rescored,
                );
            }
        }
    }
    st
}
