//! Shared helpers for the phenix benchmarks: seeded data, in-memory stores, and the phenix vs
//! sqlite-vec comparison harness ([`compare`]).

use phenix_core::store::{Layout, VectorStore};
use phenix_core::{ElemType, Metric};

/// One splitmix64 step: the output for state `x` (the next state is `x + 0x9E37_79B9_7F4A_7C15`).
/// The one copy of the generator in this crate.
pub fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// splitmix64 uniform values in [-1, 1).
pub fn random_vec(seed: u64, n: usize) -> Vec<f32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            let z = splitmix64(s);
            s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
            (z >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

/// An in-memory store of `rows` random rows (appended in chunks to bound peak memory).
pub fn random_store(rows: usize, dim: usize, elem: ElemType, metric: Metric) -> VectorStore {
    let mut s = VectorStore::in_memory(Layout::new(dim, elem, metric).expect("valid layout"));
    let chunk = 65_536;
    let mut done = 0;
    while done < rows {
        let n = chunk.min(rows - done);
        let v = random_vec(done as u64 + 1, n * dim);
        s.append(&v).expect("append");
        done += n;
    }
    s.set_committed(rows as u64).expect("commit");
    s
}

/// Sequential read-and-sum over `bytes` on `threads` threads: the memory-bandwidth baseline.
/// Sums 64-bit words with eight independent accumulators (the compiler vectorises it into 512-bit
/// adds); `bytes` must be 8-byte aligned, as store views are.
pub fn read_and_sum(bytes: &[u8], threads: usize) -> u64 {
    fn sum(b: &[u8]) -> u64 {
        let words: &[u64] = bytemuck::cast_slice(&b[..b.len() / 64 * 64]);
        let mut acc = [0u64; 8];
        for c in words.chunks_exact(8) {
            for j in 0..8 {
                acc[j] = acc[j].wrapping_add(c[j]);
            }
        }
        acc.iter().fold(0u64, |x, y| x.wrapping_add(*y))
    }
    if threads <= 1 {
        return sum(bytes);
    }
    let part = bytes.len().div_ceil(threads).div_ceil(64) * 64;
    std::thread::scope(|s| {
        let hs: Vec<_> = bytes
            .chunks(part)
            .map(|c| s.spawn(move || sum(c)))
            .collect();
        hs.into_iter()
            .map(|h| h.join().expect("sum thread"))
            .fold(0u64, |x, y| x.wrapping_add(y))
    })
}

/// faer's `f32` GEMM alone on the batched path's shapes, the reference the batched top-k is compared
/// with: `rows / TILE_ROWS` products of one `TILE_ROWS × dim` tile `xt` (already `f32`: no conversion)
/// by the `dim × nq` matrix of the row-major `queries`, into a scratch output (no selection), the tiles
/// split over `threads`.
pub fn faer_gemm_only(xt: &[f32], queries: &[f32], rows: usize, dim: usize, threads: usize) {
    use faer::{Accum, MatMut, MatRef, Par};
    use phenix_core::batch::TILE_ROWS;
    let nq = queries.len() / dim;
    let qt = MatRef::from_row_major_slice(queries, nq, dim).transpose();
    let tiles = rows / TILE_ROWS;
    let threads = threads.max(1);
    std::thread::scope(|s| {
        for th in 0..threads {
            s.spawn(move || {
                let mut out = vec![0f32; TILE_ROWS * nq];
                for _ in (th..tiles).step_by(threads) {
                    let x = MatRef::from_row_major_slice(xt, TILE_ROWS, dim);
                    let o = MatMut::from_column_major_slice_mut(&mut out, TILE_ROWS, nq);
                    faer::linalg::matmul::matmul(o, Accum::Replace, x, qt, 1.0f32, Par::Seq);
                }
                std::hint::black_box(out[0]);
            });
        }
    });
}

pub mod compare;
