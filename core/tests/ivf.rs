//! The IVF index against exact search (f64 brute force over the stored rows): recall@10 over nprobe on
//! random, clustered and embedding-shaped data, exact re-ranked distances, filters that still return
//! k rows, incremental add/remove, compaction remaps, and the on-disk bytes (round trip and damage).

mod common;
use common::*;
use phenix_core::ivf::{IvfIndex, IvfParams, IvfSearch};
use phenix_core::store::{Layout, VectorStore};
use phenix_core::{Bitmap, ElemType, Error, Metric};
use std::path::Path;

/// `n` rows of `dim` values of one of three shapes.
fn data(shape: &str, n: usize, dim: usize, seed: u64) -> Vec<f32> {
    let mut rng = Rng(seed);
    match shape {
        "random" => rng.vec(n * dim, 1.0),
        "clustered" => {
            let centers: Vec<Vec<f32>> = (0..50).map(|_| rng.vec(dim, 1.0)).collect();
            (0..n)
                .flat_map(|_| {
                    let c = centers[rng.below(50) as usize].clone();
                    c.into_iter()
                        .map(|x| x + 0.15 * rng.unit())
                        .collect::<Vec<_>>()
                })
                .collect()
        }
        // Embedding-shaped: a molecule vector in a 16-dimensional subspace, mapped up, plus small
        // per-dose shifts (5 close rows per molecule) and noise, as model embeddings at five doses.
        "embedding" => {
            let basis: Vec<Vec<f32>> = (0..16).map(|_| rng.vec(dim, 1.0)).collect();
            let dose: Vec<f32> = rng.vec(dim, 0.05);
            let mut out = Vec::with_capacity(n * dim);
            while out.len() < n * dim {
                let z = rng.vec(16, 1.0);
                for d in 0..5 {
                    let mut v = vec![0f32; dim];
                    for (zi, b) in z.iter().zip(&basis) {
                        for (x, bi) in v.iter_mut().zip(b) {
                            *x += zi * bi;
                        }
                    }
                    for (x, s) in v.iter_mut().zip(&dose) {
                        *x += d as f32 * s + 0.02 * rng.unit();
                    }
                    out.extend(v);
                }
            }
            out.truncate(n * dim);
            out
        }
        _ => unreachable!(),
    }
}

struct Fixture {
    store: VectorStore,
    rows: Vec<Vec<f32>>, // as stored (f16-rounded)
    dim: usize,
    metric: Metric,
}

fn fixture(shape: &str, n: usize, dim: usize, metric: Metric, seed: u64) -> Fixture {
    let mut store = VectorStore::in_memory(Layout::new(dim, ElemType::F16, metric).unwrap());
    let x = data(shape, n, dim, seed);
    store.append(&x).unwrap();
    store.set_committed(n as u64).unwrap();
    let rows = x.chunks(dim).map(f16_round).collect();
    Fixture {
        store,
        rows,
        dim,
        metric,
    }
}

fn recall(got: &[(usize, f64)], want: &[(usize, f64)]) -> f64 {
    let hit = got
        .iter()
        .filter(|g| want.iter().any(|w| w.0 == g.0))
        .count();
    hit as f64 / want.len().max(1) as f64
}

/// Mean recall@10 of `idx` at `nprobe` over `nq` queries, checking every returned distance against
/// f64 and the (distance, slot) order.
fn measure(
    f: &mut Fixture,
    idx: &IvfIndex,
    nprobe: usize,
    nq: usize,
    keep: &dyn Fn(usize) -> bool,
    cands: Option<&Bitmap>,
) -> f64 {
    let mut rng = Rng(99);
    let n = f.rows.len();
    let view = f.store.view(n as u64).unwrap();
    let mut total = 0.0;
    for _ in 0..nq {
        // Queries near a stored row (as in retrieval), not uniform noise.
        let base = &f.rows[rng.below(n as u64) as usize];
        let q: Vec<f32> = base.iter().map(|x| x + 0.1 * rng.unit()).collect();
        let want = brute_topk(f.metric, &q, &f.rows, 10, keep);
        let mut p = IvfSearch::new(10, nprobe);
        p.candidates = cands;
        p.threads = 2;
        let hits = idx.search(&view, &q, &p).unwrap();
        assert_eq!(hits.len(), want.len(), "k rows when k rows qualify");
        for w in hits.windows(2) {
            assert!((w[0].distance, w[0].slot) <= (w[1].distance, w[1].slot));
        }
        let got: Vec<(usize, f64)> = hits
            .iter()
            .map(|h| {
                let s = h.slot as usize;
                assert!(keep(s), "slot {s} does not qualify");
                let d = dist64(f.metric, &q, &f.rows[s]);
                assert!(
                    (h.distance as f64 - d).abs() <= 1e-4 * d.abs().max(1.0),
                    "distance of slot {s} is {} but exactly {d}",
                    h.distance
                );
                (s, d)
            })
            .collect();
        total += recall(&got, &want);
    }
    total / nq as f64
}

#[test]
fn recall_grows_with_nprobe_and_reaches_exact() {
    for (shape, metric, at8) in [
        ("random", Metric::L2, 0.25),
        ("clustered", Metric::Cosine, 0.9),
        ("embedding", Metric::Cosine, 0.9),
        ("clustered", Metric::Dot, 0.8),
    ] {
        let mut f = fixture(shape, 6000, 48, metric, 11);
        let n = f.rows.len() as u64;
        let view = f.store.view(n).unwrap();
        let mut params = IvfParams::new(64);
        params.threads = 2;
        let idx = IvfIndex::build(&view, None, &params, [1; 16], 0).unwrap();
        assert_eq!(idx.len(), 6000);
        let mut curve = Vec::new();
        for nprobe in [1, 8, 64] {
            curve.push(measure(&mut f, &idx, nprobe, 40, &|_| true, None));
        }
        eprintln!("{shape} {metric}: recall@10 at nprobe 1/8/64 = {curve:?}");
        assert!(
            curve[0] <= curve[1] + 0.02 && curve[1] <= curve[2] + 0.02,
            "{shape}: {curve:?}"
        );
        assert!(
            curve[1] >= at8,
            "{shape} {metric}: recall at nprobe 8 {curve:?}"
        );
        // Every list probed: only the code shortlist stands between the index and exact search.
        assert!(curve[2] >= 0.98, "{shape} {metric}: all lists {curve:?}");
    }
}

#[test]
fn a_filter_still_returns_k_rows() {
    let mut f = fixture("clustered", 5000, 32, Metric::L2, 3);
    let view = f.store.view(5000).unwrap();
    let idx = IvfIndex::build(&view, None, &IvfParams::new(50), [0; 16], 0).unwrap();
    // 1 row in 100 qualifies: the probed list rarely holds 10 of them, so probing must go on.
    let cands = Bitmap::from_fn(5000, |i| i % 100 == 7);
    let r = measure(&mut f, &idx, 1, 20, &|i| i % 100 == 7, Some(&cands));
    assert!(r >= 0.6, "filtered recall {r}");
    // Fewer qualifying rows than k: all of them.
    let few = Bitmap::from_slots(5000, [4, 4000, 17]);
    let view = f.store.view(5000).unwrap();
    let mut p = IvfSearch::new(10, 1);
    p.candidates = Some(&few);
    let hits = idx.search(&view, &f.rows[0], &p).unwrap();
    let mut slots: Vec<u64> = hits.iter().map(|h| h.slot).collect();
    slots.sort();
    assert_eq!(slots, vec![4, 17, 4000]);
}

#[test]
fn incremental_adds_and_removes_match_exact_search_over_live_rows() {
    let mut f = fixture("clustered", 8000, 32, Metric::Cosine, 5);
    // Trained and filled on the first half; the second half arrives later.
    let mut idx = IvfIndex::build(
        &f.store.view(4000).unwrap(),
        None,
        &IvfParams::new(40),
        [0; 16],
        0,
    )
    .unwrap();
    assert_eq!(idx.covered(), 4000);
    idx.add_rows(&f.store.view(8000).unwrap(), 4000..6000, None, 2)
        .unwrap();
    for s in 6000..8000u64 {
        idx.add(s, &f.rows[s as usize]).unwrap();
    }
    assert_eq!((idx.len(), idx.covered()), (8000, 8000));
    // Delete every third row.
    let mut live = Bitmap::from_fn(8000, |_| true);
    for s in (0..8000u64).step_by(3) {
        assert!(idx.remove(s));
        live.remove(s as usize);
    }
    assert!(!idx.remove(0), "removing twice");
    assert_eq!(idx.len(), 8000 - 2667);
    let r = measure(&mut f, &idx, 40, 30, &|i| i % 3 != 0, None);
    assert!(r >= 0.98, "all lists: {r}");
    let r = measure(&mut f, &idx, 6, 30, &|i| i % 3 != 0, None);
    assert!(r >= 0.85, "nprobe 6: {r}");
    // Deleted rows skipped at search time instead (the SQL live set), on an index that still has them.
    let view = f.store.view(8000).unwrap();
    let full = IvfIndex::build(&view, None, &IvfParams::new(40), [0; 16], 0).unwrap();
    let dead = Bitmap::from_fn(8000, |i| i % 3 == 0);
    let mut p = IvfSearch::new(10, 40);
    p.deleted = Some(&dead);
    let hits = full.search(&view, &f.rows[3], &p).unwrap();
    assert!(hits.iter().all(|h| h.slot % 3 != 0));
    assert_eq!(hits.len(), 10);
    // An update: slot 1 gets a new vector; the old one is gone from the index.
    idx.add(1, &f.rows[2]).unwrap();
    assert_eq!(idx.len(), 8000 - 2667);
    // A rollback of the rows past 7000: they leave the index, the rest stays.
    idx.truncate(7000);
    assert_eq!(idx.covered(), 7000);
    assert_eq!(idx.len(), 7000 - 2334);
    assert!(!idx.contains(7001) && idx.contains(6998) && !idx.contains(6999));
}

#[test]
fn compaction_remap_keeps_codes_and_renumbers_slots() {
    let mut f = fixture("clustered", 3000, 16, Metric::L2, 8);
    let view = f.store.view(3000).unwrap();
    let mut idx = IvfIndex::build(&view, None, &IvfParams::new(20), [3; 16], 4).unwrap();
    // Compaction keeps odd slots: old 2i+1 → new i.
    idx.remap(|s| (s % 2 == 1).then_some(s / 2), 1500, 5);
    assert!(idx.belongs_to(&[3; 16], 5));
    assert_eq!((idx.len(), idx.covered()), (1500, 1500));
    let odd: Vec<f32> = f
        .rows
        .iter()
        .skip(1)
        .step_by(2)
        .flatten()
        .copied()
        .collect();
    let mut g = VectorStore::in_memory(Layout::new(16, ElemType::F16, Metric::L2).unwrap());
    g.append(&odd).unwrap();
    let mut f2 = Fixture {
        rows: odd.chunks(16).map(|r| r.to_vec()).collect(),
        store: g,
        dim: f.dim,
        metric: f.metric,
    };
    let r = measure(&mut f2, &idx, 20, 20, &|_| true, None);
    assert!(r >= 0.98, "{r}");
}

#[test]
fn bytes_round_trip_and_damage_is_a_typed_error() {
    let mut f = fixture("clustered", 2000, 24, Metric::Cosine, 21);
    let view = f.store.view(2000).unwrap();
    let mut idx = IvfIndex::build(&view, None, &IvfParams::new(16), [9; 16], 2).unwrap();
    idx.remove(5);
    let b = idx.to_bytes();
    let p = Path::new("t.ivf");
    let back = IvfIndex::from_bytes(p, &b, 2000).unwrap();
    assert_eq!(back, idx);
    let q = &f.rows[77];
    assert_eq!(
        back.search(&view, q, &IvfSearch::new(10, 4)).unwrap(),
        idx.search(&view, q, &IvfSearch::new(10, 4)).unwrap()
    );
    // The index may not cover more rows than the vector file holds.
    assert!(matches!(
        IvfIndex::from_bytes(p, &b, 1999),
        Err(Error::BadHeader {
            field: "covered",
            ..
        })
    ));
    // Every flipped byte, in the header and through the body, is refused (a CRC or a field check).
    let mut rng = Rng(4);
    let mut offsets: Vec<usize> = (0..72).collect();
    offsets.extend((0..200).map(|_| rng.below(b.len() as u64) as usize));
    for o in offsets {
        let mut d = b.clone();
        d[o] ^= 1 << rng.below(8);
        assert!(
            IvfIndex::from_bytes(p, &d, 2000).is_err(),
            "flip at {o} accepted"
        );
    }
    for cut in [0, 7, 71, 72, 1000, b.len() - 1] {
        assert!(
            IvfIndex::from_bytes(p, &b[..cut], 2000).is_err(),
            "cut at {cut}"
        );
    }
    assert!(matches!(
        IvfIndex::from_bytes(p, b"PHNXVEC\0and more bytes", 2000),
        Err(Error::BadMagic { .. })
    ));
}

#[test]
fn bad_parameters_are_errors() {
    let mut f = fixture("random", 100, 8, Metric::L2, 1);
    let view = f.store.view(100).unwrap();
    let e = IvfIndex::build(&view, None, &IvfParams::new(101), [0; 16], 0).unwrap_err();
    assert!(e.to_string().contains("at least 101 rows"), "{e}");
    assert!(IvfIndex::build(&view, None, &IvfParams::new(0), [0; 16], 0).is_err());
    let idx = IvfIndex::build(&view, None, &IvfParams::new(4), [0; 16], 0).unwrap();
    let q = vec![0.0; 8];
    assert!(idx.search(&view, &q, &IvfSearch::new(10, 0)).is_err());
    assert!(idx.search(&view, &q, &IvfSearch::new(0, 1)).is_err());
    assert!(matches!(
        idx.search(&view, &q[..7], &IvfSearch::new(1, 1)),
        Err(Error::DimMismatch { .. })
    ));
    assert!(idx
        .search(&view, &[f32::NAN; 8], &IvfSearch::new(1, 1))
        .is_err());
    let mut idx = idx;
    assert!(idx.add(200, &[f32::INFINITY; 8]).is_err());
    // nprobe past the list count probes them all.
    assert_eq!(
        idx.search(&view, &q, &IvfSearch::new(100, 1000))
            .unwrap()
            .len(),
        100
    );
}
