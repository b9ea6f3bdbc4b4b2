//! Every batched path against the exact one-query path (bit-for-bit: rows, distances, tie order) and
//! against brute force in f64, on adversarial data: exact ties, near-duplicates inside the reduced-
//! precision rounding bound, zero vectors, magnitudes up to 65504 and f16 subnormals, queries at both
//! ends of (and outside) the range the bound covers, filters, thresholds and threads.
//!
//! Paths the CPU cannot run are listed on stderr and not exercised; `paths_available_on_this_cpu` fails
//! if a CPU that reports the features does not get the path.

mod common;
use common::*;
use phenix_core::batch::{search_batch_with, BatchPath};
use phenix_core::store::{Layout, VectorStore};
use phenix_core::topk::{search, Candidates, Hit, SearchParams};
use phenix_core::{Bitmap, ElemType, Isa, Kernels, Metric};

/// The data generators.
#[derive(Clone, Copy, Debug)]
enum Data {
    /// Uniform in [-1, 1).
    Random,
    /// Rows drawn from 6 distinct vectors: every distance ties with hundreds of others.
    Ties,
    /// One base vector plus ±1-ulp (f16) changes in a few elements, and exact copies: hundreds of rows
    /// whose scores sit within the bf16 bound of the k-th.
    NearDup,
    /// Zero rows, rows at ±65504, f16 subnormals (6e-8), and ordinary rows mixed.
    Extreme,
    /// Permutations of one vector, against constant queries: every score is the same in exact
    /// arithmetic and differs only by the summation order's rounding, which GEMM and the one-query
    /// kernels do differently.
    Permuted,
}

fn rows_for(data: Data, n: usize, dim: usize, rng: &mut Rng) -> Vec<Vec<f32>> {
    let base = rng.vec(dim, 1.0);
    let protos: Vec<Vec<f32>> = (0..6).map(|_| rng.vec(dim, 1.0)).collect();
    (0..n)
        .map(|i| match data {
            Data::Random => rng.vec(dim, 1.0),
            Data::Ties => protos[rng.below(6) as usize].clone(),
            Data::NearDup => {
                let mut v = base.clone();
                if i % 3 != 0 {
                    for _ in 0..3 {
                        let j = rng.below(dim as u64) as usize;
                        let h = half::f16::from_f32(v[j]);
                        let b = h.to_bits();
                        let nb = if rng.below(2) == 0 {
                            b.wrapping_add(1)
                        } else {
                            b.wrapping_sub(1)
                        };
                        v[j] = half::f16::from_bits(nb).to_f32();
                    }
                }
                v
            }
            Data::Permuted => {
                let mut v = base.clone();
                for j in (1..dim).rev() {
                    v.swap(j, rng.below(j as u64 + 1) as usize);
                }
                v
            }
            Data::Extreme => match i % 7 {
                0 => vec![0.0; dim],
                1 => (0..dim)
                    .map(|_| if rng.below(2) == 0 { 65504.0 } else { -65504.0 })
                    .collect(),
                2 => rng.vec(dim, 6e-8),
                3 => {
                    let mut v = rng.vec(dim, 1.0);
                    v[rng.below(dim as u64) as usize] = 65504.0;
                    v
                }
                4 => rng.vec(dim, 3e4),
                _ => rng.vec(dim, 1.0),
            },
        })
        .map(|v| f16_round(&v))
        .collect()
}

fn queries_for(data: Data, rows: &[Vec<f32>], nq: usize, dim: usize, rng: &mut Rng) -> Vec<f32> {
    let mut out = Vec::with_capacity(nq * dim);
    for i in 0..nq {
        let q: Vec<f32> = match (data, i % 6) {
            // Some queries equal to rows (distance 0, exact ties at the top).
            (_, 0) => rows[rng.below(rows.len() as u64) as usize].clone(),
            (Data::Extreme, 1) => rng.vec(dim, 1e-9),
            (Data::Extreme, 2) => rng.vec(dim, 1e9),
            // Outside the bound's range: answered by the exact path.
            (Data::Extreme, 3) => rng.vec(dim, 1e30),
            (Data::Extreme, 4) => vec![0.0; dim],
            (Data::Permuted, 1..=3) => vec![0.3 + i as f32; dim],
            (Data::Permuted, _) => {
                // Equal values on a few blocks of coordinates, so partial sums tie too.
                let c = rng.vec(4, 1.0);
                (0..dim).map(|d| c[d % 4]).collect()
            }
            (Data::NearDup, _) => {
                let mut v = rows[0].clone();
                v[i % dim] += 1e-3;
                v
            }
            _ => rng.vec(dim, 1.0),
        };
        out.extend(q);
    }
    out
}

fn store_of(rows: &[Vec<f32>], dim: usize, metric: Metric) -> VectorStore {
    store_of_elem(rows, dim, metric, ElemType::F16)
}

fn store_of_elem(rows: &[Vec<f32>], dim: usize, metric: Metric, elem: ElemType) -> VectorStore {
    let mut s = VectorStore::in_memory(Layout::new(dim, elem, metric).unwrap());
    let flat: Vec<f32> = rows.iter().flatten().copied().collect();
    s.append(&flat).unwrap();
    s.set_committed(rows.len() as u64).unwrap();
    s
}

/// Every path this CPU runs, GEMM included (each is forced through `search_batch_with`).
fn all_paths() -> Vec<BatchPath> {
    let v = BatchPath::available();
    if v == [BatchPath::Gemm] {
        eprintln!("no reduced-precision batch path on this CPU: only GEMM is exercised");
    }
    v
}

/// Runs `path` and checks every query against `topk::search` (bit-equal) and f64 brute force.
#[allow(clippy::too_many_arguments)]
fn check(
    what: &str,
    path: BatchPath,
    store: &mut VectorStore,
    rows: &[Vec<f32>],
    queries: &[f32],
    dim: usize,
    p: &SearchParams<'_>,
    keep: &dyn Fn(usize) -> bool,
) -> (u64, u64) {
    let n = rows.len();
    let view = store.view(n as u64).unwrap();
    let (got, stats) = search_batch_with(&view, queries, p, path).unwrap();
    // float32 stores run GEMM whatever path is asked for.
    let want_path = if view.layout().elem() == ElemType::F32 {
        BatchPath::Gemm
    } else {
        path
    };
    assert_eq!(stats.path, want_path, "{what}: ran {:?}", stats.path);
    assert_eq!(got.len(), queries.len() / dim);
    let metric = p.metric.unwrap_or(view.layout().metric());
    for (qi, hits) in got.iter().enumerate() {
        let q = &queries[qi * dim..(qi + 1) * dim];
        let mut sp = *p;
        sp.threads = 1;
        let one = search(&view, q, &sp).unwrap();
        assert_eq!(hits, &one, "{what}: query {qi} differs from the exact path");
        // And the exact path itself against f64: each hit's distance is its row's f64 distance, and the
        // i-th hit's distance is the i-th f64 distance, within f32 kernel rounding.
        let want = brute_topk(metric, q, rows, p.k, keep);
        assert!(hits.len() <= want.len(), "{what}: q{qi} count");
        let qn = dot64(q, q).sqrt();
        for (h, w) in hits.iter().zip(&want) {
            if !h.distance.is_finite() {
                // Past f32's range (float32 rows near f32::MAX): the bit-equality above is the check.
                continue;
            }
            let x = &rows[h.slot as usize];
            let own = dist64(metric, q, x);
            let scale = qn * dot64(x, x).sqrt().max(dot64(&rows[w.0], &rows[w.0]).sqrt());
            let tol = 1e-4 * (1.0 + w.1.abs()) + 1e-5 * scale;
            assert!(
                (h.distance as f64 - own).abs() <= tol && (h.distance as f64 - w.1).abs() <= tol,
                "{what}: q{qi}: {h:?} (own f64 {own}) vs f64 rank entry {w:?}"
            );
        }
    }
    (stats.rescored, stats.scored)
}

#[test]
fn paths_available_on_this_cpu() {
    let av = BatchPath::available();
    assert!(av.contains(&BatchPath::Gemm));
    #[cfg(target_arch = "x86_64")]
    {
        let bf16 = std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512bf16");
        assert_eq!(av.contains(&BatchPath::Avx512Bf16), bf16);
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        if bf16 && cpuinfo.contains(" amx_bf16") && cpuinfo.contains(" amx_tile") {
            assert!(
                av.contains(&BatchPath::Amx) || std::env::var_os("PHENIX_NO_AMX").is_some(),
                "the CPU reports AMX but the path is unavailable (permission refused?)"
            );
        }
    }
    eprintln!("batch paths here: {av:?}");
    assert!(BatchPath::parse("AMX") == Some(BatchPath::Amx));
    assert!(BatchPath::parse("nope").is_none());
}

#[test]
fn every_path_equals_the_exact_path_on_adversarial_data() {
    let paths = all_paths();
    for data in [
        Data::Random,
        Data::Ties,
        Data::NearDup,
        Data::Extreme,
        Data::Permuted,
    ] {
        for metric in [Metric::Cosine, Metric::L2, Metric::Dot] {
            for &dim in &[40usize] {
                let mut rng = Rng(17 + dim as u64);
                let n = 500;
                let rows = rows_for(data, n, dim, &mut rng);
                let queries = queries_for(data, &rows, 24, dim, &mut rng);
                let mut store = store_of(&rows, dim, metric);
                for &path in &paths {
                    for (k, threads) in [(1, 1), (10, 2)] {
                        let mut p = SearchParams::new(k);
                        p.threads = threads;
                        let what =
                            format!("{data:?} {metric} dim {dim} {path:?} k {k} t {threads}");
                        check(&what, path, &mut store, &rows, &queries, dim, &p, &|_| true);
                    }
                }
            }
        }
    }
}

#[test]
fn filters_threshold_and_kernel_paths_are_honoured() {
    let paths = all_paths();
    let dim = 33; // padded to 64 inside the unit
    let n = 1500;
    let mut rng = Rng(5);
    let rows = rows_for(Data::Random, n, dim, &mut rng);
    let queries = queries_for(Data::Random, &rows, 20, dim, &mut rng);
    for metric in [Metric::Cosine, Metric::L2, Metric::Dot] {
        let mut store = store_of(&rows, dim, metric);
        let bm = Bitmap::from_fn(n, |i| i % 3 != 1);
        let deleted = Bitmap::from_fn(n, |i| i % 10 == 0);
        let slots: Vec<u64> = (0..n as u64).filter(|i| i % 7 < 3).collect();
        let t = match metric {
            Metric::Cosine => 0.9,
            Metric::L2 => 2.3,
            Metric::Dot => -1.0,
        };
        for &path in &paths {
            for isa in Isa::available() {
                let mut p = SearchParams::new(12);
                p.kernels = Kernels::for_isa(isa);
                p.candidates = Candidates::Bitmap(&bm);
                p.deleted = Some(&deleted);
                let keep = |i: usize| i % 3 != 1 && !i.is_multiple_of(10);
                let what = format!("{metric} {path:?} {isa:?} bitmap+deleted");
                check(&what, path, &mut store, &rows, &queries, dim, &p, &keep);
                p.candidates = Candidates::Slots(&slots);
                p.max_distance = Some(t);
                p.threads = 2;
                let keep = |i: usize| i % 7 < 3 && !i.is_multiple_of(10);
                let what = format!("{metric} {path:?} {isa:?} slots+threshold");
                check(&what, path, &mut store, &rows, &queries, dim, &p, &keep);
            }
        }
    }
}

#[test]
fn property_random_configurations_match_the_exact_path() {
    let paths = all_paths();
    if paths.is_empty() {
        return;
    }
    let cases = std::env::var("PHENIX_BATCH_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(12u64);
    let mut rng = Rng(2024);
    for case in 0..cases {
        let data = [
            Data::Random,
            Data::Ties,
            Data::NearDup,
            Data::Extreme,
            Data::Permuted,
        ][rng.below(5) as usize];
        let metric = [Metric::Cosine, Metric::L2, Metric::Dot][rng.below(3) as usize];
        let dim = 1 + rng.below(100) as usize;
        let n = 1 + rng.below(1200) as usize;
        let nq = 1 + rng.below(50) as usize;
        let k = 1 + rng.below(40) as usize;
        let threads = 1 + rng.below(3) as usize;
        let rows = rows_for(data, n, dim, &mut rng);
        let queries = queries_for(data, &rows, nq, dim, &mut rng);
        let mut store = store_of(&rows, dim, metric);
        let del = Bitmap::from_fn(n, |i| (i * 7 + case as usize).is_multiple_of(13));
        for &path in &paths {
            let mut p = SearchParams::new(k);
            p.threads = threads;
            p.deleted = Some(&del);
            let what =
                format!("case {case}: {data:?} {metric} n {n} dim {dim} nq {nq} k {k} {path:?}");
            check(&what, path, &mut store, &rows, &queries, dim, &p, &|i| {
                !(i * 7 + case as usize).is_multiple_of(13)
            });
        }
    }
}

/// float32 stores (GEMM is their only batched path): near-ties by permutation, rows differing by one
/// f32 ulp, and rows outside the range the bound covers (huge, tiny and subnormal elements), which
/// must be re-scored rather than trusted to GEMM's f32 sums.
#[test]
fn float32_stores_equal_the_exact_path() {
    let dim = 24;
    let mut rng = Rng(99);
    let base = rng.vec(dim, 1.0);
    let rows: Vec<Vec<f32>> = (0..700)
        .map(|i| match i % 9 {
            0 => {
                let mut v = base.clone();
                for j in (1..dim).rev() {
                    v.swap(j, rng.below(j as u64 + 1) as usize);
                }
                v
            }
            1 => {
                let mut v = base.clone();
                let j = rng.below(dim as u64) as usize;
                v[j] = if rng.below(2) == 0 {
                    v[j].next_up()
                } else {
                    v[j].next_down()
                };
                v
            }
            2 => rng.vec(dim, 1e20),
            3 => rng.vec(dim, 1e-30),
            4 => rng.vec(dim, 1e-40), // f32 subnormals
            5 => {
                let mut v = rng.vec(dim, 1.0);
                v[0] = 3.0e38;
                v
            }
            6 => vec![0.0; dim],
            7 => rng.vec(dim, 1e9), // large but inside the row range the bound covers
            _ => rng.vec(dim, 1.0),
        })
        .collect();
    let mut queries = Vec::new();
    for i in 0..18 {
        queries.extend(match i % 6 {
            0 => base.clone(),
            1 => vec![0.7; dim],
            // Inside the query range the bound covers ([2^-32, 2^32]).
            2 => rng.vec(dim, 1e-8),
            3 => rng.vec(dim, 1e8),
            _ => rng.vec(dim, 1.0),
        });
    }
    for metric in [Metric::Cosine, Metric::L2, Metric::Dot] {
        let mut store = store_of_elem(&rows, dim, metric, ElemType::F32);
        let del = Bitmap::from_fn(rows.len(), |i| i % 11 == 4);
        for (k, threads) in [(1, 1), (7, 2), (40, 3)] {
            let mut p = SearchParams::new(k);
            p.threads = threads;
            p.deleted = Some(&del);
            for path in [BatchPath::Gemm, BatchPath::Auto] {
                let what = format!("f32 {metric} k {k} t {threads} {path:?}");
                check(&what, path, &mut store, &rows, &queries, dim, &p, &|i| {
                    i % 11 != 4
                });
            }
        }
    }
}

#[test]
fn rescored_share_is_small_on_random_data() {
    // The bound is useful, not just safe: on 256-d random cosine data few rows are re-scored.
    let paths = all_paths();
    let dim = 256;
    let n = 4096;
    let mut rng = Rng(77);
    let rows = rows_for(Data::Random, n, dim, &mut rng);
    let queries = rng.vec(64 * dim, 1.0);
    for metric in [Metric::Cosine, Metric::L2, Metric::Dot] {
        let mut store = store_of(&rows, dim, metric);
        for &path in &paths {
            let p = SearchParams::new(10);
            let (rescored, scored) =
                check("share", path, &mut store, &rows, &queries, dim, &p, &|_| {
                    true
                });
            let share = rescored as f64 / scored as f64;
            eprintln!(
                "{metric} {path:?}: re-scored {rescored} of {scored} ({:.3} %)",
                100.0 * share
            );
            assert!(share < 0.05, "{metric} {path:?}: {share}");
        }
    }
}

#[test]
fn unsupported_paths_and_bad_input_are_errors() {
    let dim = 8;
    let rows = rows_for(Data::Random, 50, dim, &mut Rng(1));
    let mut store = store_of(&rows, dim, Metric::Cosine);
    let view = store.view(50).unwrap();
    let q = Rng(2).vec(2 * dim, 1.0);
    for path in [BatchPath::Amx, BatchPath::Avx512Bf16] {
        let r = search_batch_with(&view, &q, &SearchParams::new(3), path);
        assert_eq!(r.is_ok(), path.supported(), "{path:?}");
    }
    let mut p = SearchParams::new(3);
    p.max_distance = Some(f32::NAN);
    assert!(search_batch_with(&view, &q, &p, BatchPath::Auto).is_err());
    assert!(
        search_batch_with(&view, &q[..dim + 1], &SearchParams::new(3), BatchPath::Auto).is_err()
    );
    let mut bad = q.clone();
    bad[3] = f32::INFINITY;
    assert!(search_batch_with(&view, &bad, &SearchParams::new(3), BatchPath::Auto).is_err());
    let _: Vec<Vec<Hit>> = Vec::new();
}
