//! Seeded k-means (Lloyd's iterations) with the assignment step as one GEMM per block (faer).

use faer::{Accum, MatMut, MatRef, Par};

/// Rows per GEMM block of an assignment.
const BLOCK: usize = 1024;

/// The seeded generator of sampling and initialisation.
pub(crate) use crate::SplitMix64 as Rng;

/// `k` distinct indices of `0..n` (all of them, shuffled, if `k >= n`): a partial Fisher–Yates.
pub(crate) fn sample(n: usize, k: usize, rng: &mut Rng) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..n).collect();
    let k = k.min(n);
    for i in 0..k {
        let j = i + rng.below(n - i);
        idx.swap(i, j);
    }
    idx.truncate(k);
    idx
}

/// For each row of `x` (`rows × dim`, row-major), the index of the centroid with the highest
/// `x·c - |c|²/2` (the nearest in L2; with unit centroids and `spherical`, the highest `x·c`), and that
/// score. Blocks are split over `threads`.
pub(crate) fn assign(
    x: &[f32],
    dim: usize,
    centroids: &[f32],
    half_norms: &[f32],
    threads: usize,
) -> Vec<(u32, f32)> {
    let rows = x.len() / dim;
    let k = half_norms.len();
    let blocks = rows.div_ceil(BLOCK);
    let run = |b0: usize, b1: usize| -> Vec<(u32, f32)> {
        let mut out = Vec::with_capacity((b1 - b0) * BLOCK);
        let mut scores = vec![0f32; BLOCK * k];
        let ct = MatRef::from_row_major_slice(centroids, k, dim).transpose();
        for b in b0..b1 {
            let r0 = b * BLOCK;
            let t = BLOCK.min(rows - r0);
            let xb = MatRef::from_row_major_slice(&x[r0 * dim..(r0 + t) * dim], t, dim);
            let s = MatMut::from_row_major_slice_mut(&mut scores[..t * k], t, k);
            faer::linalg::matmul::matmul(s, Accum::Replace, xb, ct, 1.0f32, Par::Seq);
            for row in scores[..t * k].chunks_exact(k) {
                let mut best = (0u32, f32::NEG_INFINITY);
                for (j, (&s, &h)) in row.iter().zip(half_norms).enumerate() {
                    let v = s - h;
                    if v > best.1 {
                        best = (j as u32, v);
                    }
                }
                out.push(best);
            }
        }
        out
    };
    let threads = threads.max(1).min(blocks.max(1));
    if threads == 1 {
        return run(0, blocks);
    }
    std::thread::scope(|sc| {
        let run = &run;
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let (a, b) = (blocks * t / threads, blocks * (t + 1) / threads);
                sc.spawn(move || run(a, b))
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("k-means thread panicked"))
            .collect()
    })
}

/// Half squared norms of the centroids (`|c|²/2`); zero for spherical k-means, where the score is
/// the plain inner product.
pub(crate) fn half_norms(centroids: &[f32], dim: usize, spherical: bool) -> Vec<f32> {
    centroids
        .chunks_exact(dim)
        .map(|c| {
            if spherical {
                0.0
            } else {
                c.iter().map(|v| v * v).sum::<f32>() * 0.5
            }
        })
        .collect()
}

/// Scales `v` to unit length (a zero vector stays zero).
pub(crate) fn normalize(v: &mut [f32]) {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if n > 0.0 {
        let inv = 1.0 / n;
        v.iter_mut().for_each(|x| *x *= inv);
    }
}

/// `k` centroids of the rows of `x` after `iterations` Lloyd iterations from `k` distinct rows
/// chosen by `seed`. `spherical`: centroids are re-normalised after each update (cosine). A cluster
/// that empties takes a random row of the largest cluster, nudged, so every centroid keeps a share.
pub(crate) fn kmeans(
    x: &[f32],
    dim: usize,
    k: usize,
    iterations: usize,
    spherical: bool,
    seed: u64,
    threads: usize,
) -> Vec<f32> {
    let rows = x.len() / dim;
    let mut rng = Rng::new(seed);
    let mut c: Vec<f32> = Vec::with_capacity(k * dim);
    for i in sample(rows, k, &mut rng) {
        c.extend_from_slice(&x[i * dim..(i + 1) * dim]);
    }
    for _ in 0..iterations {
        let h = half_norms(&c, dim, spherical);
        let a = assign(x, dim, &c, &h, threads);
        let mut sums = vec![0f64; k * dim];
        let mut counts = vec![0usize; k];
        for (i, &(j, _)) in a.iter().enumerate() {
            let j = j as usize;
            counts[j] += 1;
            for (s, v) in sums[j * dim..(j + 1) * dim]
                .iter_mut()
                .zip(&x[i * dim..(i + 1) * dim])
            {
                *s += *v as f64;
            }
        }
        let largest = (0..k).max_by_key(|&j| counts[j]).unwrap_or(0);
        let members: Vec<usize> = a
            .iter()
            .enumerate()
            .filter(|(_, &(j, _))| j as usize == largest)
            .map(|(i, _)| i)
            .collect();
        for j in 0..k {
            let cj = &mut c[j * dim..(j + 1) * dim];
            if counts[j] == 0 {
                if members.is_empty() {
                    continue;
                }
                let i = members[rng.below(members.len())];
                for (d, v) in cj.iter_mut().zip(&x[i * dim..(i + 1) * dim]) {
                    let eps = (rng.next_u64() >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
                    *d = v * (1.0 + 1e-3 * eps);
                }
            } else {
                let inv = 1.0 / counts[j] as f64;
                for (d, s) in cj.iter_mut().zip(&sums[j * dim..(j + 1) * dim]) {
                    *d = (s * inv) as f32;
                }
            }
            if spherical {
                normalize(cj);
            }
        }
    }
    c
}
