//! Exact top-k: every candidate row is scored, the `k` closest are kept.
//!
//! Ranking is by `(distance, slot)` ascending: equal distances break ties by the lower slot. That order is
//! total, so splitting the rows over threads and merging the per-thread results gives exactly the rows
//! and distances of the single-threaded scan. Rows whose distance is NaN are never returned.
//!
//! Memory is bounded by the number of qualifying rows, not by `k`: `k = usize::MAX` returns every
//! qualifying row without allocating for `k`.

use crate::bitmap::Bitmap;
use crate::control::{self, Control};
use crate::error::{Error, Result};
use crate::kernels::Kernels;
use crate::store::RowsView;
use crate::types::Metric;
use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::sync::atomic::{AtomicUsize, Ordering as AtomicOrdering};

/// Which slots may be returned.
#[derive(Clone, Copy, Debug, Default)]
pub enum Candidates<'a> {
    /// Every slot of the view.
    #[default]
    All,
    /// Slots whose bit is set.
    Bitmap(&'a Bitmap),
    /// These slots, ascending and without duplicates (checked).
    Slots(&'a [u64]),
}

/// A search request.
#[derive(Clone, Copy, Debug)]
pub struct SearchParams<'a> {
    /// How many rows to return at most (must be >= 1).
    pub k: usize,
    /// The metric; `None` uses the view's layout metric.
    pub metric: Option<Metric>,
    /// Which slots qualify.
    pub candidates: Candidates<'a>,
    /// Slots never returned (deleted rows).
    pub deleted: Option<&'a Bitmap>,
    /// Only rows with `distance < max_distance` qualify.
    pub max_distance: Option<f32>,
    /// Worker threads (1 = the calling thread only). Small scans run on one thread whatever this says.
    pub threads: usize,
    /// The kernels to use; `None` uses [`Kernels::best`].
    pub kernels: Option<Kernels>,
    /// Polled once per chunk of rows (positions of the candidate span) to stop early or report
    /// progress; `None` (the default) costs nothing. A stopped search returns [`Error::Cancelled`].
    pub control: Option<&'a Control>,
}

impl<'a> SearchParams<'a> {
    /// `k` nearest over every row, one thread.
    pub fn new(k: usize) -> Self {
        SearchParams {
            k,
            metric: None,
            candidates: Candidates::All,
            deleted: None,
            max_distance: None,
            threads: 1,
            kernels: None,
            control: None,
        }
    }
}

/// One result row.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Hit {
    /// The row's slot in the store.
    pub slot: u64,
    /// Its distance to the query.
    pub distance: f32,
}

/// Rows scanned per thread below which no extra thread is started (thread start-up costs ~20–50 µs;
/// 32k rows × 256 dims of f16 take ~1 ms to scan).
pub const MIN_ROWS_PER_THREAD: usize = 32_768;

/// Positions per work chunk of a multi-threaded scan (16k rows × 256 dims of f16 = 8 MiB).
const CHUNK_ROWS: usize = 16_384;

#[derive(Clone, Copy, Debug)]
struct Entry(f32, u64);

impl Entry {
    #[inline]
    fn cmp_key(&self, o: &Entry) -> Ordering {
        self.0.total_cmp(&o.0).then(self.1.cmp(&o.1))
    }
}
impl PartialEq for Entry {
    fn eq(&self, o: &Self) -> bool {
        self.cmp_key(o) == Ordering::Equal
    }
}
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Entry {
    fn cmp(&self, o: &Self) -> Ordering {
        self.cmp_key(o)
    }
}

/// A bounded max-heap keeping the `k` smallest `(distance, slot)` pairs.
#[derive(Debug)]
pub struct TopK {
    k: usize,
    heap: BinaryHeap<Entry>,
    worst: f32,
}

impl TopK {
    /// An empty collector of at most `k` entries; `capacity_hint` bounds the first allocation.
    pub fn new(k: usize, capacity_hint: usize) -> Self {
        TopK {
            k,
            heap: BinaryHeap::with_capacity(k.min(capacity_hint).min(1 << 20)),
            worst: f32::INFINITY,
        }
    }

    /// The distance a row must not exceed to enter (infinity until `k` rows are held).
    #[inline]
    pub fn worst(&self) -> f32 {
        self.worst
    }

    /// Offers a row. NaN distances are ignored.
    #[inline]
    pub fn push(&mut self, distance: f32, slot: u64) {
        if distance.is_nan() || self.k == 0 {
            return;
        }
        if self.heap.len() < self.k {
            self.heap.push(Entry(distance, slot));
            if self.heap.len() == self.k {
                self.worst = self.heap.peek().map_or(f32::INFINITY, |e| e.0);
            }
        } else if distance <= self.worst {
            let e = Entry(distance, slot);
            let mut top = self.heap.peek_mut().expect("heap is full");
            if e < *top {
                *top = e;
                drop(top);
                self.worst = self.heap.peek().map_or(f32::INFINITY, |e| e.0);
            }
        }
    }

    /// Merges another collector into this one.
    pub fn merge(&mut self, other: TopK) {
        for e in other.heap {
            self.push(e.0, e.1);
        }
    }

    /// The kept rows, ascending by `(distance, slot)`.
    pub fn into_sorted(self) -> Vec<Hit> {
        let mut v = self.heap.into_vec();
        v.sort_unstable();
        v.into_iter()
            .map(|e| Hit {
                slot: e.1,
                distance: e.0,
            })
            .collect()
    }
}

/// The `k` rows of `view` closest to `query`.
pub fn search(view: &RowsView<'_>, query: &[f32], p: &SearchParams<'_>) -> Result<Vec<Hit>> {
    validate(view, query, p)?;
    let metric = p.metric.unwrap_or(view.layout().metric());
    let kernels = p.kernels.unwrap_or_else(Kernels::best);
    let rows = view.rows();
    let qn = kernels.norm_squared(query).sqrt();

    // Split the candidates into contiguous parts, one per thread.
    let total = match p.candidates {
        Candidates::All => rows,
        Candidates::Bitmap(b) => b.count().min(rows),
        Candidates::Slots(s) => s.len(),
    };
    let threads = p.threads.max(1).min(total / MIN_ROWS_PER_THREAD).max(1);
    // Scans positions `[a, b)`: slots for `All` and `Bitmap`, indices into the list for `Slots`.
    let scan = |a: usize, b: usize, top: &mut TopK| {
        let mut offer = |slot: usize| {
            if let Some(d) = p.deleted {
                if d.contains(slot) {
                    return;
                }
            }
            let dist = kernels.distance(metric, query, qn, view.row(slot));
            if let Some(t) = p.max_distance {
                if dist.is_nan() || dist >= t {
                    return;
                }
            }
            top.push(dist, slot as u64);
        };
        match p.candidates {
            Candidates::All => (a..b).for_each(&mut offer),
            Candidates::Bitmap(bm) => bm.iter_range(a, b).for_each(&mut offer),
            Candidates::Slots(s) => s[a..b]
                .iter()
                .filter(|&&x| (x as usize) < rows)
                .for_each(|&x| offer(x as usize)),
        }
    };
    let span = match p.candidates {
        Candidates::All | Candidates::Bitmap(_) => rows,
        Candidates::Slots(s) => s.len(),
    };
    let top = if threads == 1 {
        let mut top = TopK::new(p.k, total + 1);
        match p.control {
            None => scan(0, span, &mut top),
            Some(c) => {
                // The same positions in chunks, asking the control after each.
                let mut a = 0;
                while a < span {
                    let b = span.min(a + CHUNK_ROWS);
                    scan(a, b, &mut top);
                    if !c.step((b - a) as u64) {
                        break;
                    }
                    a = b;
                }
            }
        }
        top
    } else {
        // Threads take chunks from a shared counter rather than fixed halves, so a thread that the OS
        // deschedules (a busy machine, other threads of the host) does not hold the query back.
        let chunk = CHUNK_ROWS.min(span.div_ceil(threads)).max(1);
        let chunks = span.div_ceil(chunk);
        let next = AtomicUsize::new(0);
        let work = || {
            let mut top = TopK::new(p.k, total / threads + 1);
            loop {
                let c = next.fetch_add(1, AtomicOrdering::Relaxed);
                if c >= chunks {
                    break;
                }
                let (a, b) = (c * chunk, ((c + 1) * chunk).min(span));
                scan(a, b, &mut top);
                if !control::step(p.control, (b - a) as u64) {
                    break;
                }
            }
            top
        };
        std::thread::scope(|sc| {
            let handles: Vec<_> = (1..threads).map(|_| sc.spawn(work)).collect();
            let mut first = work();
            for h in handles {
                first.merge(h.join().expect("scan thread panicked"));
            }
            first
        })
    };
    control::check(p.control)?;
    Ok(top.into_sorted())
}

fn validate(view: &RowsView<'_>, query: &[f32], p: &SearchParams<'_>) -> Result<()> {
    if query.len() != view.layout().dim() {
        return Err(Error::DimMismatch {
            expected: view.layout().dim(),
            found: query.len(),
        });
    }
    if p.k == 0 {
        return Err(Error::InvalidArgument("k must be at least 1".into()));
    }
    if let Some(t) = p.max_distance {
        if t.is_nan() {
            return Err(Error::InvalidArgument("distance threshold is NaN".into()));
        }
    }
    if let Some(i) = query.iter().position(|x| !x.is_finite()) {
        return Err(Error::InvalidArgument(format!(
            "query element {i} is {} (queries must be finite)",
            query[i]
        )));
    }
    if let Candidates::Slots(s) = p.candidates {
        if s.windows(2).any(|w| w[0] >= w[1]) {
            return Err(Error::InvalidArgument(
                "candidate slots must be ascending and distinct".into(),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topk_keeps_smallest_with_slot_ties() {
        let mut t = TopK::new(3, 10);
        for (d, s) in [
            (0.5, 4),
            (0.1, 9),
            (0.5, 2),
            (f32::NAN, 0),
            (0.5, 1),
            (0.9, 3),
        ] {
            t.push(d, s);
        }
        let v: Vec<_> = t.into_sorted().iter().map(|h| h.slot).collect();
        assert_eq!(v, vec![9, 1, 2]);
    }
}
