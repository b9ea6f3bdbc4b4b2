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
//!   [`TILE_ROWS`], widened to `f32`, multiplied against all queries with faer's GEMM, and every query's
//!   column of scores is turned into distances and offered to that query's [`TopK`]. The final hits are
//!   re-scored with the one-query kernels, so reported distances are exactly the one-query path's; only
//!   rows whose GEMM distances tie within rounding (~1e-6) at the k-th place can differ.
//!
//! Tiles (or row blocks) are split over threads; per-thread collectors are merged at the end.

use crate::bitmap::Bitmap;
use crate::error::{Error, Result};
use crate::kernels::{Kernels, Row};
use crate::lowp::{self, Unit};
use crate::store::RowsView;
use crate::topk::{Candidates, Hit, SearchParams, TopK};
use crate::types::{ElemType, Metric};
use faer::{Accum, MatMut, MatRef, Par};
use half::slice::HalfFloatSliceExt;

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
    /// Query × row pairs re-scored with the one-query kernels after the reduced-precision filter
    /// (0 on the GEMM path, which re-scores only its `k` winners per query).
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
    let stats = BatchStats {
        path: BatchPath::Gemm,
        rescored: 0,
        scored,
    };
    Ok((gemm(view, queries, p, metric, kernels, allow)?, stats))
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

/// The `f32` GEMM path.
fn gemm(
    view: &RowsView<'_>,
    queries: &[f32],
    p: &SearchParams<'_>,
    metric: Metric,
    kernels: Kernels,
    allow: Option<&Bitmap>,
) -> Result<Vec<Vec<Hit>>> {
    let dim = view.layout().dim();
    let nq = queries.len() / dim;
    if nq == 0 {
        return Ok(Vec::new());
    }
    let qnorm: Vec<f32> = queries
        .chunks_exact(dim)
        .map(|q| kernels.norm_squared(q).sqrt())
        .collect();

    let rows = view.rows();
    let ntiles = rows.div_ceil(TILE_ROWS);
    let threads = p.threads.max(1).min(ntiles.max(1));
    let ctx = Ctx {
        kernels,
        view,
        queries,
        qnorm: &qnorm,
        metric,
        allow,
        deleted: p.deleted,
        max_distance: p.max_distance,
        k: p.k,
        nq,
        dim,
    };
    let mut tops = if threads == 1 {
        ctx.scan_tiles(0, ntiles, p.control)
    } else {
        std::thread::scope(|sc| {
            let ctx = &ctx;
            let handles: Vec<_> = (1..threads)
                .map(|t| {
                    let (a, b) = part(ntiles, threads, t);
                    sc.spawn(move || ctx.scan_tiles(a, b, p.control))
                })
                .collect();
            let (a, b) = part(ntiles, threads, 0);
            let mut first = ctx.scan_tiles(a, b, p.control);
            for h in handles {
                let other = h.join().expect("batch thread panicked");
                for (mine, theirs) in first.iter_mut().zip(other) {
                    mine.merge(theirs);
                }
            }
            first
        })
    };

    crate::control::check(p.control)?;
    // Re-score the winners with the one-query kernels so distances match `topk::search` exactly.
    Ok(tops
        .drain(..)
        .enumerate()
        .map(|(qi, top)| {
            let q = &queries[qi * dim..(qi + 1) * dim];
            let mut hits: Vec<Hit> = top
                .into_sorted()
                .into_iter()
                .map(|h| Hit {
                    slot: h.slot,
                    distance: kernels.distance(metric, q, qnorm[qi], view.row(h.slot as usize)),
                })
                .filter(|h| p.max_distance.is_none_or(|t| h.distance < t))
                .collect();
            hits.sort_by(|a, b| a.distance.total_cmp(&b.distance).then(a.slot.cmp(&b.slot)));
            hits
        })
        .collect())
}

fn part(n: usize, parts: usize, i: usize) -> (usize, usize) {
    let base = n / parts;
    let extra = n % parts;
    let start = i * base + i.min(extra);
    (start, start + base + usize::from(i < extra))
}

struct Ctx<'a, 'v> {
    kernels: Kernels,
    view: &'a RowsView<'v>,
    queries: &'a [f32],
    qnorm: &'a [f32],
    metric: Metric,
    allow: Option<&'a Bitmap>,
    deleted: Option<&'a Bitmap>,
    max_distance: Option<f32>,
    k: usize,
    nq: usize,
    dim: usize,
}

impl Ctx<'_, '_> {
    /// Scans tiles `[first, end)`, stopping early when `control` says so (the caller then checks it).
    fn scan_tiles(
        &self,
        first: usize,
        end: usize,
        control: Option<&crate::control::Control>,
    ) -> Vec<TopK> {
        let (dim, nq) = (self.dim, self.nq);
        let rows = self.view.rows();
        let mut tops: Vec<TopK> = (0..nq).map(|_| TopK::new(self.k, rows)).collect();
        let mut xt = vec![0f32; TILE_ROWS * dim];
        let mut xn = vec![0f32; TILE_ROWS];
        let mut scores = vec![0f32; TILE_ROWS * nq];
        let mut dist = vec![0f32; TILE_ROWS];
        let mut ok = vec![true; TILE_ROWS];
        let qt = MatRef::from_row_major_slice(self.queries, nq, dim).transpose();
        let kernels = self.kernels;
        // The distance bound in selection-key space (squared for L2), with slack for GEMM rounding;
        // the exact bound is applied after re-scoring.
        let key_bound = match (self.max_distance, self.metric) {
            (None, _) => f32::INFINITY,
            (Some(m), Metric::L2) => m.max(0.0) * m.max(0.0) * (1.0 + 1e-4) + 1e-5,
            (Some(m), _) => m + 1e-4 * m.abs().max(1.0),
        };
        for tile in first..end {
            let r0 = tile * TILE_ROWS;
            let t = TILE_ROWS.min(rows - r0);
            // Which rows of the tile may be returned.
            let mut any = false;
            for (j, o) in ok[..t].iter_mut().enumerate() {
                let s = r0 + j;
                *o = self.allow.is_none_or(|a| a.contains(s))
                    && !self.deleted.is_some_and(|d| d.contains(s));
                any |= *o;
            }
            if !crate::control::step(control, t as u64) {
                break;
            }
            if !any {
                continue;
            }
            for j in 0..t {
                let dst = &mut xt[j * dim..(j + 1) * dim];
                match self.view.row(r0 + j) {
                    Row::F16(x) => x.convert_to_f32_slice(dst),
                    Row::F32(x) => dst.copy_from_slice(x),
                }
                // Cosine keeps 1/|x| (0 for a zero row, which then scores cos = 0, distance 1, as the
                // one-query kernels define it); L2 keeps |x|².
                xn[j] = match self.metric {
                    Metric::Dot => 0.0,
                    Metric::L2 => kernels.norm_squared(dst),
                    Metric::Cosine => {
                        let n = kernels.norm_squared(dst).sqrt();
                        if n > 0.0 {
                            1.0 / n
                        } else {
                            0.0
                        }
                    }
                };
            }
            let x = MatRef::from_row_major_slice(&xt[..t * dim], t, dim);
            let out = MatMut::from_column_major_slice_mut(&mut scores[..t * nq], t, nq);
            faer::linalg::matmul::matmul(out, Accum::Replace, x, qt, 1.0f32, Par::Seq);
            let all_ok = ok[..t].iter().all(|&o| o);
            for (qi, top) in tops.iter_mut().enumerate() {
                let col = &scores[qi * t..(qi + 1) * t];
                // Selection keys, monotonic in the distance: cosine distance, squared L2, -dot. Written
                // as plain element-wise loops so they vectorise; final distances are re-scored later.
                let qn = self.qnorm[qi];
                match self.metric {
                    Metric::Dot => {
                        for (d, s) in dist[..t].iter_mut().zip(col) {
                            *d = -*s;
                        }
                    }
                    Metric::L2 => {
                        let qq = qn * qn;
                        for ((d, s), xx) in dist[..t].iter_mut().zip(col).zip(&xn[..t]) {
                            *d = qq + xx - 2.0 * s;
                        }
                    }
                    Metric::Cosine => {
                        let iq = if qn > 0.0 { 1.0 / qn } else { 0.0 };
                        for ((d, s), ix) in dist[..t].iter_mut().zip(col).zip(&xn[..t]) {
                            *d = 1.0 - s * ix * iq;
                        }
                    }
                }
                let bound = key_bound;
                for j in 0..t {
                    let d = dist[j];
                    if d <= top.worst() && d < bound && (all_ok || ok[j]) {
                        top.push(d, (r0 + j) as u64);
                    }
                }
            }
        }
        tops
    }
}
