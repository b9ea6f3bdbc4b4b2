//! Exact and batched top-k against brute force in f64.

mod common;
use common::*;
use phenix_core::batch::search_batch;
use phenix_core::store::{Layout, VectorStore};
use phenix_core::topk::{search, Candidates, SearchParams};
use phenix_core::{Bitmap, ElemType, Isa, Kernels, Metric};

struct Fixture {
    store: VectorStore,
    rows: Vec<Vec<f32>>, // as stored
}

fn fixture(n: usize, dim: usize, elem: ElemType, metric: Metric, seed: u64) -> Fixture {
    let mut rng = Rng(seed);
    let l = Layout::new(dim, elem, metric).unwrap();
    let mut store = VectorStore::in_memory(l);
    let mut rows: Vec<Vec<f32>> = Vec::with_capacity(n);
    let mut flat = Vec::with_capacity(n * dim);
    for i in 0..n {
        // Some exact duplicates to exercise ties.
        let v = if i % 97 == 5 && i > 0 {
            rows[i - 1].clone()
        } else {
            rng.vec(dim, 1.0)
        };
        let stored = match elem {
            ElemType::F16 => f16_round(&v),
            ElemType::F32 => v.clone(),
        };
        flat.extend_from_slice(&v);
        rows.push(stored);
    }
    store.append(&flat).unwrap();
    store.set_committed(n as u64).unwrap();
    Fixture { store, rows }
}

/// Same slots in the same order; distances within `tol` of the f64 reference. Where the f64 reference has
/// near-ties (within 1e-5), order may legitimately differ: compare as sets there.
fn assert_matches(got: &[phenix_core::topk::Hit], want: &[(usize, f64)], tol: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: count");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g.distance as f64 - w.1).abs() <= tol,
            "{what}: rank {i}: distance {} vs reference {}",
            g.distance,
            w.1
        );
        if g.slot as usize != w.0 {
            // Allowed only for a near-tie in the reference.
            let near = want
                .iter()
                .any(|x| x.0 == g.slot as usize && (x.1 - w.1).abs() <= 1e-5);
            let in_ref = want.iter().any(|x| x.0 == g.slot as usize);
            assert!(
                near || (!in_ref && (g.distance as f64 - want.last().unwrap().1).abs() <= 1e-5),
                "{what}: rank {i}: slot {} vs reference {} (distances {} / {})",
                g.slot,
                w.0,
                g.distance,
                w.1
            );
        }
    }
}

#[test]
fn exact_topk_matches_brute_force_for_every_metric_dtype_and_path() {
    for elem in [ElemType::F16, ElemType::F32] {
        for metric in [Metric::Cosine, Metric::L2, Metric::Dot] {
            let mut f = fixture(3000, 67, elem, metric, 1);
            let view = f.store.view(3000).unwrap();
            let mut rng = Rng(99);
            for isa in Isa::available() {
                for k in [1, 10, 100] {
                    let q = rng.vec(67, 1.0);
                    let mut p = SearchParams::new(k);
                    p.kernels = Kernels::for_isa(isa);
                    let got = search(&view, &q, &p).unwrap();
                    let want = brute_topk(metric, &q, &f.rows, k, |_| true);
                    assert_matches(&got, &want, 1e-4, &format!("{elem} {metric} {isa:?} k={k}"));
                }
            }
        }
    }
}

#[test]
fn k_larger_than_rows_returns_all_and_huge_k_does_not_allocate_k() {
    let mut f = fixture(50, 16, ElemType::F16, Metric::Cosine, 2);
    let view = f.store.view(50).unwrap();
    let q = Rng(5).vec(16, 1.0);
    for k in [50, 51, usize::MAX] {
        let got = search(&view, &q, &SearchParams::new(k)).unwrap();
        assert_eq!(got.len(), 50);
        let want = brute_topk(Metric::Cosine, &q, &f.rows, 50, |_| true);
        assert_matches(&got, &want, 1e-4, "all rows");
    }
    assert!(search(&view, &q, &SearchParams::new(0)).is_err());
    assert!(search(&view, &q[..15], &SearchParams::new(1)).is_err());
    let mut nanq = q.clone();
    nanq[3] = f32::NAN;
    assert!(search(&view, &nanq, &SearchParams::new(1)).is_err());
}

#[test]
fn filters_deleted_and_threshold() {
    let mut f = fixture(5000, 32, ElemType::F16, Metric::L2, 3);
    let view = f.store.view(5000).unwrap();
    let mut rng = Rng(8);
    let q = rng.vec(32, 1.0);
    // 1 % selectivity bitmap; every 7th slot deleted.
    let allowed: Vec<u64> = (0..5000)
        .filter(|i| i % 100 == 3 || i % 100 == 47)
        .collect();
    let bm = Bitmap::from_slots(5000, allowed.iter().copied());
    let deleted = Bitmap::from_slots(5000, (0..5000).filter(|i| i % 7 == 0));
    let keep = |i: usize| (i % 100 == 3 || i % 100 == 47) && !i.is_multiple_of(7);
    let want = brute_topk(Metric::L2, &q, &f.rows, 10, keep);
    for cand in [Candidates::Bitmap(&bm), Candidates::Slots(&allowed)] {
        let mut p = SearchParams::new(10);
        p.candidates = cand;
        p.deleted = Some(&deleted);
        let got = search(&view, &q, &p).unwrap();
        assert_matches(&got, &want, 1e-4, "filtered");
        assert_eq!(got.len(), 10, "pre-filter returns k rows when k qualify");
    }
    // Threshold: strictly below t.
    let all = brute_topk(Metric::L2, &q, &f.rows, 5000, |_| true);
    let t = all[25].1 as f32;
    let mut p = SearchParams::new(1000);
    p.max_distance = Some(t);
    let got = search(&view, &q, &p).unwrap();
    assert!(got.iter().all(|h| h.distance < t));
    assert!((24..=26).contains(&got.len()), "got {}", got.len());
    // Unsorted slot lists are refused.
    let mut p = SearchParams::new(1);
    let bad = [5u64, 3];
    p.candidates = Candidates::Slots(&bad);
    assert!(search(&view, &q, &p).is_err());
}

#[test]
fn threads_give_identical_results_and_ties_break_by_slot() {
    // 100k rows so that two threads really run (MIN_ROWS_PER_THREAD = 32768).
    let mut f = fixture(100_000, 24, ElemType::F16, Metric::Cosine, 4);
    let view = f.store.view(100_000).unwrap();
    let mut rng = Rng(12);
    for k in [1, 10, 1000] {
        let q = rng.vec(24, 1.0);
        let one = search(&view, &q, &SearchParams::new(k)).unwrap();
        for threads in [2, 3, 8] {
            let mut p = SearchParams::new(k);
            p.threads = threads;
            let many = search(&view, &q, &p).unwrap();
            assert_eq!(one, many, "k={k} threads={threads}");
        }
    }
    // Exact duplicate rows (fixture repeats row i-1 at i % 97 == 5): the lower slot comes first.
    let q = f.rows[5].clone();
    let got = search(&view, &q, &SearchParams::new(2)).unwrap();
    assert_eq!(got[0].distance, got[1].distance);
    assert_eq!((got[0].slot, got[1].slot), (4, 5));
    let _ = &mut f;
}

#[test]
fn batched_search_returns_the_one_query_rows() {
    for metric in [Metric::Cosine, Metric::L2, Metric::Dot] {
        for elem in [ElemType::F16, ElemType::F32] {
            let n = 2500; // spans 3 GEMM tiles, the last one partial
            let mut f = fixture(n, 40, elem, metric, 6);
            let view = f.store.view(n as u64).unwrap();
            let mut rng = Rng(21);
            let nq = 37;
            let queries = rng.vec(nq * 40, 1.0);
            let deleted = Bitmap::from_slots(n, (0..n as u64).filter(|i| i % 11 == 0));
            for threads in [1, 2] {
                let mut bp = SearchParams::new(10);
                bp.threads = threads;
                bp.deleted = Some(&deleted);
                let got = search_batch(&view, &queries, &bp).unwrap();
                assert_eq!(got.len(), nq);
                for (qi, hits) in got.iter().enumerate() {
                    let q = &queries[qi * 40..(qi + 1) * 40];
                    let mut sp = SearchParams::new(10);
                    sp.deleted = Some(&deleted);
                    let one = search(&view, q, &sp).unwrap();
                    let want: Vec<(usize, f64)> = one
                        .iter()
                        .map(|h| (h.slot as usize, h.distance as f64))
                        .collect();
                    assert_matches(
                        hits,
                        &want,
                        0.0,
                        &format!("{metric} {elem} q{qi} t{threads}"),
                    );
                }
            }
        }
    }
}

#[test]
fn batched_search_with_candidates_and_threshold() {
    let n = 3000;
    let mut f = fixture(n, 16, ElemType::F16, Metric::Cosine, 9);
    let view = f.store.view(n as u64).unwrap();
    let queries = Rng(5).vec(5 * 16, 1.0);
    let slots: Vec<u64> = (0..n as u64).filter(|i| i % 10 == 1).collect();
    let mut bp = SearchParams::new(20);
    bp.candidates = Candidates::Slots(&slots);
    bp.max_distance = Some(0.9);
    let got = search_batch(&view, &queries, &bp).unwrap();
    for (qi, hits) in got.iter().enumerate() {
        let q = &queries[qi * 16..(qi + 1) * 16];
        let want = brute_topk(Metric::Cosine, q, &f.rows, 20, |i| i % 10 == 1);
        let want: Vec<_> = want.into_iter().filter(|w| w.1 < 0.9).collect();
        assert_matches(hits, &want, 1e-4, &format!("q{qi}"));
    }
}

#[test]
fn chunked_threads_match_one_thread_for_every_candidate_kind() {
    // 100k rows: several 16k-row chunks per thread, taken from a shared counter.
    let mut f = fixture(100_000, 24, ElemType::F16, Metric::Cosine, 4);
    let view = f.store.view(100_000).unwrap();
    let mut rng = Rng(99);
    let bm = Bitmap::from_fn(100_000, |i| i % 3 != 1);
    let deleted = Bitmap::from_fn(100_000, |i| i % 10 == 0);
    let slots: Vec<u64> = (0..100_000u64).filter(|i| i % 7 < 5).collect();
    for k in [1, 10, 500] {
        let q = rng.vec(24, 1.0);
        for cands in [
            Candidates::All,
            Candidates::Bitmap(&bm),
            Candidates::Slots(&slots),
        ] {
            let mut p = SearchParams::new(k);
            p.candidates = cands;
            p.deleted = Some(&deleted);
            let one = search(&view, &q, &p).unwrap();
            assert_eq!(one.len(), k);
            for threads in [2, 5] {
                p.threads = threads;
                assert_eq!(
                    one,
                    search(&view, &q, &p).unwrap(),
                    "k={k} t={threads} {cands:?}"
                );
            }
        }
    }
}
