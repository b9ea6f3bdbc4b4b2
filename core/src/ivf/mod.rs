//! An IVF index over a store's rows: approximate top-k with an exact re-rank.
//!
//! - **Coarse quantiser**: `lists` centroids from seeded k-means (faer GEMM for the assignment step) on
//!   a sample of the rows (spherical k-means for cosine: rows and centroids at unit length).
//! - **Inverted lists**: each row lives in the list of its nearest centroid, as its slot, an 8-bit
//!   scalar-quantised code (`dim` bytes, per-dimension min/step trained on the sample) and one float
//!   (`|x̂|²` for L2, `1/|x̂|` for cosine) that turns a code inner product into a distance estimate.
//! - **Search**: the `nprobe` lists whose centroids are closest to the query are scanned with the
//!   codes (one `f32 × u8` inner product per row); the best `max(k, rerank)` estimates are re-scored
//!   exactly on the store's rows (`f16` or `f32`, the same kernels as [`crate::topk::search`]), so
//!   returned distances are exact and ranked by `(distance, slot)`. With a candidate filter, probing
//!   continues past `nprobe` until `k` qualifying rows are found or every list is probed, so a filtered
//!   search returns `k` rows whenever `k` rows qualify.
//! - **Maintenance**: [`IvfIndex::add`] / [`IvfIndex::add_rows`] assign and encode new rows,
//!   [`IvfIndex::remove`] drops a slot, [`IvfIndex::remap`] renumbers slots after a compaction. Rows
//!   deleted in the table can also be skipped at search time through `deleted`, as in exact search.
//! - **Format**: [`IvfIndex::to_bytes`] / [`IvfIndex::from_bytes`] (layout in `docs/design.md`, "The
//!   IVF index file"); the bytes record which vector file (table id, generation) and how many of its
//!   rows (`covered`) the index holds, so the SQL layer can keep the file under the same commit
//!   protocol as the vector file and add the rows past `covered` when it opens the index.

mod format;
mod kmeans;

use crate::bitmap::Bitmap;
use crate::error::{Error, Result};
use crate::kernels::{Kernels, Row};
use crate::store::RowsView;
use crate::topk::{Hit, TopK};
use crate::types::Metric;
use half::slice::HalfFloatSliceExt;

pub use format::{IVF_FORMAT_VERSION, IVF_MAGIC};

/// How to build an index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IvfParams {
    /// Number of inverted lists (centroids); `1..=65536`, and at most the number of training rows.
    pub lists: usize,
    /// Rows sampled for training; 0 = `min(rows, 64 × lists)`.
    pub train_sample: usize,
    /// Lloyd iterations.
    pub iterations: usize,
    /// Seed of the sample and of the initial centroids.
    pub seed: u64,
    /// Threads for the assignment GEMMs.
    pub threads: usize,
}

impl IvfParams {
    /// `lists` lists, a 64-per-list sample, 10 iterations, seed 0, one thread.
    pub fn new(lists: usize) -> Self {
        IvfParams {
            lists,
            train_sample: 0,
            iterations: 10,
            seed: 0,
            threads: 1,
        }
    }
    /// `lists ≈ 4·√rows`, within `1..=65536`: the usual IVF sizing.
    pub fn for_rows(rows: usize) -> Self {
        IvfParams::new(((4.0 * (rows as f64).sqrt()) as usize).clamp(1, 65_536))
    }
}

/// A search request.
#[derive(Clone, Copy, Debug)]
pub struct IvfSearch<'a> {
    /// Rows to return (>= 1).
    pub k: usize,
    /// Lists to probe (>= 1; more lists: higher recall, slower). Values past the list count probe all.
    pub nprobe: usize,
    /// Shortlist re-scored exactly: the best `max(k, rerank)` code estimates.
    pub rerank: usize,
    /// Only these slots may be returned (a metadata pre-filter).
    pub candidates: Option<&'a Bitmap>,
    /// Slots never returned (deleted rows).
    pub deleted: Option<&'a Bitmap>,
    /// Threads scanning lists.
    pub threads: usize,
}

impl<'a> IvfSearch<'a> {
    /// `k` rows, `nprobe` lists, a shortlist of `max(4k, 64)`, one thread.
    pub fn new(k: usize, nprobe: usize) -> Self {
        IvfSearch {
            k,
            nprobe,
            rerank: (4 * k).max(64),
            candidates: None,
            deleted: None,
            threads: 1,
        }
    }
}

/// One inverted list.
#[derive(Clone, Debug, Default, PartialEq)]
struct List {
    slots: Vec<u64>,
    /// Per row: `|x̂|²` (L2), `1/|x̂|` (cosine) or 0 (dot).
    aux: Vec<f32>,
    /// `dim` bytes per row.
    codes: Vec<u8>,
}

/// An IVF index with 8-bit scalar-quantised codes (see the module docs).
#[derive(Clone, Debug, PartialEq)]
pub struct IvfIndex {
    dim: usize,
    metric: Metric,
    /// `lists × dim`, in the search space (unit length for cosine).
    centroids: Vec<f32>,
    /// `|c|²` of each centroid (derived from `centroids`, not stored).
    centroid_nn: Vec<f32>,
    /// Per dimension: the value of code 0 and the step between codes.
    sq_min: Vec<f32>,
    sq_step: Vec<f32>,
    lists: Vec<List>,
    /// Slot → list (`u32::MAX`: not in the index).
    list_of: Vec<u32>,
    /// Rows `0..covered` of the store were offered to the index.
    covered: u64,
    /// The vector file the index belongs to.
    table_id: [u8; 16],
    generation: u64,
}

const ABSENT: u32 = u32::MAX;

impl IvfIndex {
    /// Trains the centroids and the quantiser on a sample of the rows of `view` that are live
    /// (`live = None`: all), then adds every live row. `table_id` and `generation` name the vector
    /// file (see [`IvfIndex::belongs_to`]).
    pub fn build(
        view: &RowsView<'_>,
        live: Option<&Bitmap>,
        params: &IvfParams,
        table_id: [u8; 16],
        generation: u64,
    ) -> Result<Self> {
        let mut idx = Self::train(view, live, params, table_id, generation)?;
        idx.add_rows(view, 0..view.rows() as u64, live, params.threads)?;
        Ok(idx)
    }

    /// Trains an empty index (no rows added; `covered = 0`).
    pub fn train(
        view: &RowsView<'_>,
        live: Option<&Bitmap>,
        params: &IvfParams,
        table_id: [u8; 16],
        generation: u64,
    ) -> Result<Self> {
        let layout = view.layout();
        let (dim, metric) = (layout.dim(), layout.metric());
        let rows: Vec<usize> = match live {
            None => (0..view.rows()).collect(),
            Some(b) => b.iter_range(0, view.rows()).collect(),
        };
        if params.lists == 0 || params.lists > 65_536 {
            return Err(Error::InvalidArgument(format!(
                "lists = {} is outside 1..=65536",
                params.lists
            )));
        }
        if rows.len() < params.lists {
            return Err(Error::InvalidArgument(format!(
                "an IVF index with {} lists needs at least {} rows to train, the table has {}",
                params.lists,
                params.lists,
                rows.len()
            )));
        }
        let want = if params.train_sample == 0 {
            (64 * params.lists).min(rows.len())
        } else {
            params.train_sample.clamp(params.lists, rows.len())
        };
        let mut rng = kmeans::Rng::new(params.seed ^ 0x5eed_1f0f);
        let mut pick = kmeans::sample(rows.len(), want, &mut rng);
        pick.sort_unstable();
        let mut x = vec![0f32; pick.len() * dim];
        for (dst, &i) in x.chunks_exact_mut(dim).zip(&pick) {
            to_search_space(view.row(rows[i]), metric, dst);
        }
        let spherical = metric == Metric::Cosine;
        let centroids = kmeans::kmeans(
            &x,
            dim,
            params.lists,
            params.iterations,
            spherical,
            params.seed,
            params.threads,
        );
        // Scalar quantiser: per-dimension range of the sample, 255 steps.
        let mut lo = vec![f32::INFINITY; dim];
        let mut hi = vec![f32::NEG_INFINITY; dim];
        for r in x.chunks_exact(dim) {
            for d in 0..dim {
                lo[d] = lo[d].min(r[d]);
                hi[d] = hi[d].max(r[d]);
            }
        }
        let sq_step: Vec<f32> = lo
            .iter()
            .zip(&hi)
            .map(|(l, h)| if h > l { (h - l) / 255.0 } else { 1.0 })
            .collect();
        Ok(IvfIndex {
            dim,
            metric,
            lists: vec![List::default(); params.lists],
            centroid_nn: centroid_nn(&centroids, dim),
            centroids,
            sq_min: lo,
            sq_step,
            list_of: Vec::new(),
            covered: 0,
            table_id,
            generation,
        })
    }

    /// Dimension.
    pub fn dim(&self) -> usize {
        self.dim
    }
    /// Metric.
    pub fn metric(&self) -> Metric {
        self.metric
    }
    /// Number of lists.
    pub fn lists(&self) -> usize {
        self.lists.len()
    }
    /// Rows held.
    pub fn len(&self) -> usize {
        self.lists.iter().map(|l| l.slots.len()).sum()
    }
    /// Whether the index holds no rows.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Rows `0..covered` of the store were offered to the index (added unless not live).
    pub fn covered(&self) -> u64 {
        self.covered
    }
    /// Whether the index belongs to the vector file with this table id and generation.
    pub fn belongs_to(&self, table_id: &[u8; 16], generation: u64) -> bool {
        self.table_id == *table_id && self.generation == generation
    }
    /// Whether `slot` is in the index.
    pub fn contains(&self, slot: u64) -> bool {
        self.list_of
            .get(slot as usize)
            .is_some_and(|&l| l != ABSENT)
    }
    /// Bytes held in memory by the lists, codes and centroids (not the store's rows).
    pub fn memory_bytes(&self) -> usize {
        self.centroids.len() * 4
            + self.list_of.len() * 4
            + self
                .lists
                .iter()
                .map(|l| l.slots.len() * 8 + l.aux.len() * 4 + l.codes.len())
                .sum::<usize>()
    }

    /// Encodes `v` (already in the search space) into `code`, returning its aux value.
    fn encode(&self, v: &[f32], code: &mut [u8]) -> f32 {
        let mut nn = 0f32;
        for d in 0..self.dim {
            let c = ((v[d] - self.sq_min[d]) / self.sq_step[d])
                .round()
                .clamp(0.0, 255.0);
            code[d] = c as u8;
            let x = self.sq_min[d] + c * self.sq_step[d];
            nn += x * x;
        }
        match self.metric {
            Metric::L2 => nn,
            Metric::Cosine if nn > 0.0 => 1.0 / nn.sqrt(),
            _ => 0.0,
        }
    }

    /// The nearest list of `v` (in the search space).
    fn nearest_list(&self, v: &[f32]) -> usize {
        let kernels = Kernels::best();
        let spherical = self.metric == Metric::Cosine;
        let mut best = (0, f32::NEG_INFINITY);
        for (j, c) in self.centroids.chunks_exact(self.dim).enumerate() {
            let dot = kernels.dot(v, Row::F32(c));
            let s = if spherical {
                dot
            } else {
                dot - 0.5 * self.centroid_nn[j]
            };
            if s > best.1 {
                best = (j, s);
            }
        }
        best.0
    }

    fn push(&mut self, list: usize, slot: u64, v: &[f32]) {
        let mut code = vec![0u8; self.dim];
        let aux = self.encode(v, &mut code);
        let l = &mut self.lists[list];
        l.slots.push(slot);
        l.aux.push(aux);
        l.codes.extend_from_slice(&code);
        if self.list_of.len() <= slot as usize {
            self.list_of.resize(slot as usize + 1, ABSENT);
        }
        self.list_of[slot as usize] = list as u32;
    }

    /// Adds one row (given as `f32`) at `slot`, replacing the slot's previous row if it was present.
    /// `covered` grows to `slot + 1` if it was below.
    pub fn add(&mut self, slot: u64, vector: &[f32]) -> Result<()> {
        if vector.len() != self.dim {
            return Err(Error::DimMismatch {
                expected: self.dim,
                found: vector.len(),
            });
        }
        if let Some(i) = vector.iter().position(|x| !x.is_finite()) {
            return Err(Error::InvalidArgument(format!(
                "element {i} is {} (vectors must be finite)",
                vector[i]
            )));
        }
        self.remove(slot);
        let mut v = vector.to_vec();
        if self.metric == Metric::Cosine {
            kmeans::normalize(&mut v);
        }
        let list = self.nearest_list(&v);
        self.push(list, slot, &v);
        self.covered = self.covered.max(slot + 1);
        Ok(())
    }

    /// Adds the rows `range` of `view` that are live (`live = None`: all), assigning them in GEMM
    /// blocks over `threads`. `covered` grows to `range.end`.
    pub fn add_rows(
        &mut self,
        view: &RowsView<'_>,
        range: std::ops::Range<u64>,
        live: Option<&Bitmap>,
        threads: usize,
    ) -> Result<()> {
        let layout = view.layout();
        if layout.dim() != self.dim || layout.metric() != self.metric {
            return Err(Error::InvalidArgument(format!(
                "the index is {}-dimensional {}, the rows {}-dimensional {}",
                self.dim,
                self.metric,
                layout.dim(),
                layout.metric()
            )));
        }
        if range.end > view.rows() as u64 {
            return Err(Error::SlotOutOfRange {
                slot: range.end,
                len: view.rows() as u64,
            });
        }
        let dim = self.dim;
        let spherical = self.metric == Metric::Cosine;
        let half = kmeans::half_norms(&self.centroids, dim, spherical);
        const CHUNK: u64 = 65_536;
        let mut start = range.start;
        while start < range.end {
            let end = (start + CHUNK).min(range.end);
            let slots: Vec<u64> = (start..end)
                .filter(|&s| live.is_none_or(|b| b.contains(s as usize)))
                .collect();
            let mut x = vec![0f32; slots.len() * dim];
            for (dst, &s) in x.chunks_exact_mut(dim).zip(&slots) {
                to_search_space(view.row(s as usize), self.metric, dst);
            }
            let a = kmeans::assign(&x, dim, &self.centroids, &half, threads);
            for ((&s, &(list, _)), v) in slots.iter().zip(&a).zip(x.chunks_exact(dim)) {
                self.remove(s);
                self.push(list as usize, s, v);
            }
            start = end;
        }
        self.covered = self.covered.max(range.end);
        Ok(())
    }

    /// Removes `slot`; returns whether it was present.
    pub fn remove(&mut self, slot: u64) -> bool {
        let Some(&list) = self.list_of.get(slot as usize) else {
            return false;
        };
        if list == ABSENT {
            return false;
        }
        self.list_of[slot as usize] = ABSENT;
        let dim = self.dim;
        let l = &mut self.lists[list as usize];
        let Some(pos) = l.slots.iter().position(|&s| s == slot) else {
            return false;
        };
        let last = l.slots.len() - 1;
        l.slots.swap_remove(pos);
        l.aux.swap_remove(pos);
        if pos != last {
            let (a, b) = l.codes.split_at_mut(last * dim);
            a[pos * dim..(pos + 1) * dim].copy_from_slice(&b[..dim]);
        }
        l.codes.truncate(last * dim);
        true
    }

    /// Forgets every slot at or past `n` (a rolled-back transaction's appends); `covered` drops to
    /// `n` if it was larger. Costs time proportional to the slots past `n`.
    pub fn truncate(&mut self, n: u64) {
        for s in n..self.list_of.len() as u64 {
            self.remove(s);
        }
        self.list_of.truncate(n as usize);
        self.covered = self.covered.min(n);
    }

    /// Renumbers slots after a compaction: `map(old)` is the new slot, or `None` to drop the row.
    /// `covered` becomes `new_covered` (the compacted file's row count). Codes are kept, so no row is
    /// re-read or re-encoded.
    pub fn remap(&mut self, map: impl Fn(u64) -> Option<u64>, new_covered: u64, generation: u64) {
        let dim = self.dim;
        let mut list_of = vec![ABSENT; new_covered as usize];
        for (j, l) in self.lists.iter_mut().enumerate() {
            let mut keep = 0;
            for i in 0..l.slots.len() {
                if let Some(n) = map(l.slots[i]).filter(|&n| n < new_covered) {
                    l.slots[keep] = n;
                    l.aux[keep] = l.aux[i];
                    l.codes.copy_within(i * dim..(i + 1) * dim, keep * dim);
                    list_of[n as usize] = j as u32;
                    keep += 1;
                }
            }
            l.slots.truncate(keep);
            l.aux.truncate(keep);
            l.codes.truncate(keep * dim);
        }
        self.list_of = list_of;
        self.covered = new_covered;
        self.generation = generation;
    }

    /// The `k` nearest rows of `query` (see the module docs). `view` holds the rows the index was
    /// built from (its rows past `covered` are not searched: add them first).
    pub fn search(
        &self,
        view: &RowsView<'_>,
        query: &[f32],
        p: &IvfSearch<'_>,
    ) -> Result<Vec<Hit>> {
        if query.len() != self.dim || view.layout().dim() != self.dim {
            return Err(Error::DimMismatch {
                expected: self.dim,
                found: query.len(),
            });
        }
        if p.k == 0 {
            return Err(Error::InvalidArgument("k must be at least 1".into()));
        }
        if p.nprobe == 0 {
            return Err(Error::InvalidArgument("nprobe must be at least 1".into()));
        }
        if let Some(i) = query.iter().position(|x| !x.is_finite()) {
            return Err(Error::InvalidArgument(format!(
                "query element {i} is {} (queries must be finite)",
                query[i]
            )));
        }
        let metric = self.metric;
        let mut q = query.to_vec();
        if metric == Metric::Cosine {
            kmeans::normalize(&mut q);
        }
        // Lists by the distance of their centroid to the query (SIMD dots; only the probed prefix is
        // sorted).
        let kernels = Kernels::best();
        let mut order: Vec<(f32, u32)> = self
            .centroids
            .chunks_exact(self.dim)
            .enumerate()
            .map(|(j, c)| {
                let dot = kernels.dot(&q, Row::F32(c));
                let key = match metric {
                    Metric::L2 => self.centroid_nn[j] - 2.0 * dot,
                    Metric::Cosine | Metric::Dot => -dot,
                };
                (key, j as u32)
            })
            .collect();
        let by_key = |a: &(f32, u32), b: &(f32, u32)| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1));
        let nprobe = p.nprobe.min(order.len());
        if nprobe < order.len() {
            order.select_nth_unstable_by(nprobe, by_key);
            order[..nprobe].sort_unstable_by(by_key);
        } else {
            order.sort_unstable_by(by_key);
        }
        // The query folded into the code space: q·x̂ = q·min + Σ (q∘step)_d c_d.
        let w: Vec<f32> = q.iter().zip(&self.sq_step).map(|(a, b)| a * b).collect();
        let qmin: f32 = q.iter().zip(&self.sq_min).map(|(a, b)| a * b).sum();
        let qq: f32 = q.iter().map(|x| x * x).sum();
        let short = p.k.max(p.rerank);
        let ctx = Scan {
            idx: self,
            w: &w,
            qmin,
            qq,
            candidates: p.candidates,
            deleted: p.deleted,
            short,
            dot: dot_u8_fn(),
        };
        let mut top = ctx.scan_parallel(&order[..nprobe], p.threads);
        // A filter can leave fewer than k rows in the probed lists: keep probing until k qualify.
        let mut next = nprobe;
        if top.len() < p.k && next < order.len() {
            order[next..].sort_unstable_by(by_key);
        }
        while top.len() < p.k && next < order.len() {
            let more = (next * 2).min(order.len());
            let extra = ctx.scan_parallel(&order[next..more], p.threads);
            top.found += extra.found;
            top.merge(extra.top);
            next = more;
        }
        // Exact re-rank of the shortlist on the stored rows.
        let qnorm = kernels.norm_squared(query).sqrt();
        let mut exact = TopK::new(p.k, short);
        for h in top.top.into_sorted() {
            if (h.slot as usize) < view.rows() {
                let d = kernels.distance(metric, query, qnorm, view.row(h.slot as usize));
                exact.push(d, h.slot);
            }
        }
        Ok(exact.into_sorted())
    }
}

/// `|c|²` of each centroid.
fn centroid_nn(centroids: &[f32], dim: usize) -> Vec<f32> {
    centroids
        .chunks_exact(dim)
        .map(|c| c.iter().map(|x| x * x).sum())
        .collect()
}

/// Writes row `x` in the index's search space (unit length for cosine) into `dst`.
fn to_search_space(x: Row<'_>, metric: Metric, dst: &mut [f32]) {
    match x {
        Row::F16(v) => v.convert_to_f32_slice(dst),
        Row::F32(v) => dst.copy_from_slice(v),
    }
    if metric == Metric::Cosine {
        kmeans::normalize(dst);
    }
}

/// Approximate top entries with a count of the rows offered.
struct Short {
    top: TopK,
    found: usize,
}

impl Short {
    fn len(&self) -> usize {
        self.found
    }
    fn merge(&mut self, other: TopK) {
        self.top.merge(other);
    }
}

struct Scan<'a> {
    idx: &'a IvfIndex,
    w: &'a [f32],
    qmin: f32,
    qq: f32,
    candidates: Option<&'a Bitmap>,
    deleted: Option<&'a Bitmap>,
    short: usize,
    dot: DotU8,
}

impl Scan<'_> {
    fn scan(&self, lists: &[(f32, u32)]) -> (TopK, usize) {
        let dim = self.idx.dim;
        let mut top = TopK::new(self.short, 1024);
        let mut found = 0;
        for &(_, j) in lists {
            let l = &self.idx.lists[j as usize];
            for (i, &slot) in l.slots.iter().enumerate() {
                let s = slot as usize;
                if self.deleted.is_some_and(|d| d.contains(s))
                    || self.candidates.is_some_and(|c| !c.contains(s))
                {
                    continue;
                }
                found += 1;
                // SAFETY: `dot_u8_fn` only returns an implementation whose CPU features were detected
                // at run time; `w` and the code both hold `dim` elements.
                let ip =
                    self.qmin + unsafe { (self.dot)(self.w, &l.codes[i * dim..(i + 1) * dim]) };
                let est = match self.idx.metric {
                    Metric::L2 => self.qq + l.aux[i] - 2.0 * ip,
                    Metric::Cosine => 1.0 - ip * l.aux[i],
                    Metric::Dot => -ip,
                };
                if est <= top.worst() {
                    top.push(est, slot);
                }
            }
        }
        (top, found)
    }

    fn scan_parallel(&self, lists: &[(f32, u32)], threads: usize) -> Short {
        let rows: usize = lists
            .iter()
            .map(|&(_, j)| self.idx.lists[j as usize].slots.len())
            .sum();
        // Below ~16k rows a second thread costs more than it saves.
        let threads = threads
            .max(1)
            .min(lists.len().max(1))
            .min(rows / 16_384 + 1);
        if threads == 1 {
            let (top, found) = self.scan(lists);
            return Short { top, found };
        }
        // Deal the lists round-robin so the threads get similar shares of near and far lists.
        let parts: Vec<Vec<(f32, u32)>> = (0..threads)
            .map(|t| lists.iter().skip(t).step_by(threads).copied().collect())
            .collect();
        std::thread::scope(|sc| {
            let handles: Vec<_> = parts[1..]
                .iter()
                .map(|p| sc.spawn(move || self.scan(p)))
                .collect();
            let (mut top, mut found) = self.scan(&parts[0]);
            for h in handles {
                let (t, f) = h.join().expect("IVF scan thread panicked");
                top.merge(t);
                found += f;
            }
            Short { top, found }
        })
    }
}

type DotU8 = unsafe fn(&[f32], &[u8]) -> f32;

/// `Σ w_d · c_d`, written so that the compiler vectorises it (16 independent lanes).
#[inline(always)]
fn dot_u8_body(w: &[f32], c: &[u8]) -> f32 {
    let mut acc = [0f32; 16];
    let (wc, wr) = w.split_at(w.len() / 16 * 16);
    let (cc, cr) = c.split_at(wc.len());
    for (a, b) in wc.chunks_exact(16).zip(cc.chunks_exact(16)) {
        for i in 0..16 {
            acc[i] += a[i] * b[i] as f32;
        }
    }
    let mut s: f32 = acc.iter().sum();
    for (a, b) in wr.iter().zip(cr) {
        s += a * *b as f32;
    }
    s
}

/// # Safety
/// None beyond the function's signature (portable code).
unsafe fn dot_u8_portable(w: &[f32], c: &[u8]) -> f32 {
    dot_u8_body(w, c)
}

/// # Safety
/// The CPU must support AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn dot_u8_avx512(w: &[f32], c: &[u8]) -> f32 {
    dot_u8_body(w, c)
}

/// # Safety
/// The CPU must support AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_u8_avx2(w: &[f32], c: &[u8]) -> f32 {
    dot_u8_body(w, c)
}

/// The fastest `f32 × u8` inner product this CPU runs.
fn dot_u8_fn() -> DotU8 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            return dot_u8_avx512;
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            return dot_u8_avx2;
        }
    }
    dot_u8_portable
}
