//! Exact KNN ranking on top of the core's top-k: the SQL contract is "the k nearest rows by ascending
//! distance, equal distances by ascending rowid, a distance bound exact in SQL's double terms", which
//! the float32 top-k of `phenix_core::topk` (ties by slot, bound in float32) does not give alone:
//!
//! - **ties by rowid**: the core breaks ties by slot, and slots follow insertion and compaction order,
//!   not rowids. The search asks for k + 1 rows; when the (k+1)-th ties the k-th, every row at that
//!   distance is fetched and the order is by (distance, rowid).
//! - **distance bounds**: the bound is widened to the smallest float32 at or above it for the scan and
//!   each returned distance (a float32, exact as a double) is compared with the double bound.
//! - **cosine with a tiny query**: the query is scaled by 1/max|q| first (cosine does not change), so
//!   its norm does not underflow in float32.
//! - **distances beyond float32**: when a returned distance overflowed to infinity (l2 or dot over
//!   float32 vectors near `f32::MAX`), the candidates are ranked again in float64.

use phenix_core::store::RowsView;
use phenix_core::topk::{search, Candidates, SearchParams};
use phenix_core::Metric;

/// One ranked row: (rowid, slot, distance).
pub(crate) type Ranked = (i64, u64, f64);

/// A KNN request over a view.
pub(crate) struct Request<'a> {
    /// The query (float32 elements).
    pub query: &'a [f32],
    /// The rows that may be returned.
    pub candidates: Candidates<'a>,
    /// Rows to return at most (`usize::MAX`: all).
    pub k: usize,
    /// `distance <= b` (`true`) or `distance < b` (`false`).
    pub bound: Option<(f64, bool)>,
    /// Worker threads.
    pub threads: usize,
}

/// The k nearest rows of `req` among `view`, by (distance, rowid); `rowid` maps a slot to its row id
/// (`None`: not live, skipped).
pub(crate) fn rank(
    view: &RowsView<'_>,
    req: &Request<'_>,
    rowid: impl Fn(u64) -> Option<i64>,
) -> phenix_core::Result<Vec<Ranked>> {
    let metric = view.layout().metric();
    let q = scaled_query(req.query, metric);
    let coarse = req.bound.map(|(b, _)| next_up(at_or_above(b)));
    let within = |d: f64| match req.bound {
        None => true,
        Some((b, true)) => d <= b,
        Some((b, false)) => d < b,
    };
    // The operation running on this thread (a KNN statement, phenix_retrieve_all) stops the scan
    // when interrupted.
    let control = crate::control::current();
    let mut p = SearchParams::new(req.k.saturating_add(1));
    p.candidates = req.candidates;
    p.threads = req.threads;
    p.control = control.as_deref();
    p.max_distance = coarse;
    let hits = search(view, &q, &p)?;
    if hits.iter().any(|h| !h.distance.is_finite()) {
        return Ok(rank_f64(view, req, metric, rowid, within));
    }
    let k = req.k;
    let mut out: Vec<Ranked> = if hits.len() > k && hits[k].distance == hits[k - 1].distance {
        // The k-th distance is shared by rows past k: take every row at or below it.
        let dk = hits[k - 1].distance;
        let mut p2 = p;
        p2.k = usize::MAX;
        p2.max_distance = Some(match coarse {
            Some(c) => c.min(next_up(dk)),
            None => next_up(dk),
        });
        search(view, &q, &p2)?
            .into_iter()
            .filter_map(|h| Some((rowid(h.slot)?, h.slot, h.distance as f64)))
            .filter(|r| within(r.2))
            .collect()
    } else {
        hits.into_iter()
            .filter_map(|h| Some((rowid(h.slot)?, h.slot, h.distance as f64)))
            .filter(|r| within(r.2))
            .collect()
    };
    out.sort_by(|a, b| a.2.total_cmp(&b.2).then(a.0.cmp(&b.0)));
    out.truncate(k);
    Ok(out)
}

/// The hits of an IVF search for the `k` nearest (`p.k` is set here), among which the SQL ranking
/// by (distance, rowid) picks `k`: the index ranks equal distances by slot, so it is asked for one row
/// more than `k`, and while that row ties the k-th, for twice as many, so every row the index finds at
/// the k-th distance competes. The query is scaled as [`rank`] scales it, so distances are bit-equal
/// to exact search's.
pub(crate) fn ivf_search(
    view: &RowsView<'_>,
    idx: &phenix_core::ivf::IvfIndex,
    query: &[f32],
    metric: Metric,
    k: usize,
    mut p: phenix_core::ivf::IvfSearch<'_>,
) -> phenix_core::Result<Vec<phenix_core::topk::Hit>> {
    let q = scaled_query(query, metric);
    p.k = k.saturating_add(1);
    loop {
        let hits = idx.search(view, &q, &p)?;
        let tied = hits.len() == p.k && hits[k].distance == hits[k - 1].distance;
        if !tied || p.k >= view.rows() {
            return Ok(hits);
        }
        p.k = p.k.saturating_mul(2);
    }
}

/// The query a search uses: for cosine, scaled so its largest magnitude is 1 (the cosine is the same,
/// and the float32 norm of a tiny or huge query neither underflows nor overflows).
pub(crate) fn scaled_query(q: &[f32], metric: Metric) -> Vec<f32> {
    if metric != Metric::Cosine {
        return q.to_vec();
    }
    let m = q.iter().fold(0.0f64, |m, x| m.max((*x as f64).abs()));
    if m == 0.0 || !m.is_finite() {
        return q.to_vec();
    }
    q.iter().map(|x| (*x as f64 / m) as f32).collect()
}

/// Every candidate ranked in float64 (the slow path for distances beyond float32).
fn rank_f64(
    view: &RowsView<'_>,
    req: &Request<'_>,
    metric: Metric,
    rowid: impl Fn(u64) -> Option<i64>,
    within: impl Fn(f64) -> bool,
) -> Vec<Ranked> {
    let slots: Box<dyn Iterator<Item = u64>> = match req.candidates {
        Candidates::All => Box::new(0..view.rows() as u64),
        Candidates::Bitmap(b) => Box::new(b.iter().map(|s| s as u64)),
        Candidates::Slots(s) => Box::new(s.iter().copied()),
    };
    let q: Vec<f64> = req.query.iter().map(|x| *x as f64).collect();
    let mut out: Vec<Ranked> = slots
        .filter(|&s| (s as usize) < view.rows())
        .filter_map(|s| {
            let r = rowid(s)?;
            let x: Vec<f64> = view
                .row(s as usize)
                .to_f32()
                .iter()
                .map(|v| *v as f64)
                .collect();
            let d = distance_f64(&q, &x, metric);
            (!d.is_nan() && within(d)).then_some((r, s, d))
        })
        .collect();
    out.sort_by(|a, b| a.2.total_cmp(&b.2).then(a.0.cmp(&b.0)));
    out.truncate(req.k);
    out
}

/// The metric in float64 (as `phenix_core::Metric` defines it).
pub(crate) fn distance_f64(q: &[f64], x: &[f64], metric: Metric) -> f64 {
    match metric {
        Metric::L2 => q
            .iter()
            .zip(x)
            .map(|(a, b)| (a - b) * (a - b))
            .sum::<f64>()
            .sqrt(),
        Metric::Dot => -q.iter().zip(x).map(|(a, b)| a * b).sum::<f64>(),
        Metric::Cosine => {
            let d: f64 = q.iter().zip(x).map(|(a, b)| a * b).sum();
            let nq = q.iter().map(|a| a * a).sum::<f64>().sqrt();
            let nx = x.iter().map(|a| a * a).sum::<f64>().sqrt();
            if nq == 0.0 || nx == 0.0 {
                1.0
            } else {
                1.0 - d / (nq * nx)
            }
        }
    }
}

/// The smallest float32 at or above `b`.
fn at_or_above(b: f64) -> f32 {
    let f = b as f32;
    if (f as f64) < b {
        next_up(f)
    } else {
        f
    }
}

/// The next representable `f32` above `x` (turns `distance <= t` into `distance < next_up(t)`).
pub(crate) fn next_up(x: f32) -> f32 {
    if x.is_nan() || x == f32::INFINITY {
        return x;
    }
    if x == 0.0 {
        return f32::from_bits(1);
    }
    let b = x.to_bits();
    f32::from_bits(if x > 0.0 { b + 1 } else { b - 1 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_round_up_to_float32() {
        assert!(at_or_above(0.3) as f64 >= 0.3);
        assert_eq!(at_or_above(0.5), 0.5);
        assert!(at_or_above(-0.3) as f64 >= -0.3);
        assert_eq!(next_up(0.0), f32::from_bits(1));
    }
}
