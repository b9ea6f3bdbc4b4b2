//! phenix-core benchmarks: kernel throughput, exact top-k against the memory-bandwidth baseline (with and
//! without a cancellation control), and
//! batched top-k against faer's plain GEMM. Run: `cargo bench -p phenix-benches --bench core`.
//! Set PHENIX_BENCH_QUICK=1 to skip the 1M-row groups.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use phenix_benches::{faer_gemm_only, random_store, random_vec, read_and_sum};
use phenix_core::batch::{search_batch_with, BatchPath, TILE_ROWS};
use phenix_core::control::Control;
use phenix_core::topk::{search, SearchParams};
use phenix_core::{ElemType, Kernels, Metric};
use std::hint::black_box;
use std::time::Duration;

fn quick() -> bool {
    std::env::var_os("PHENIX_BENCH_QUICK").is_some()
}

/// Kernel throughput: the fused cosine pass over 4,096 rows held in L2/L3-sized memory.
fn kernels(c: &mut Criterion) {
    let k = Kernels::best();
    let mut g = c.benchmark_group(format!("kernel_cosine_{}", k.isa().name()));
    g.measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500));
    for elem in [ElemType::F16, ElemType::F32] {
        for dim in [128usize, 256, 384, 768, 1536] {
            let rows = 4096;
            let mut store = random_store(rows, dim, elem, Metric::Cosine);
            let view = store.view(rows as u64).expect("view");
            let q = random_vec(7, dim);
            let qn = k.norm_squared(&q).sqrt();
            g.throughput(Throughput::Bytes((rows * dim * elem.size()) as u64));
            g.bench_function(BenchmarkId::new(elem.name(), dim), |b| {
                b.iter(|| {
                    let mut s = 0f32;
                    for i in 0..rows {
                        s += k.distance(Metric::Cosine, &q, qn, view.row(i));
                    }
                    black_box(s)
                })
            });
        }
    }
    g.finish();
}

/// Exact top-10 over N × 256 f16 rows vs a plain read of the same bytes, 1 and 2 threads.
fn exact_topk(c: &mut Criterion) {
    let sizes: &[usize] = if quick() {
        &[100_000]
    } else {
        &[100_000, 1_000_000]
    };
    for &rows in sizes {
        let dim = 256;
        let mut store = random_store(rows, dim, ElemType::F16, Metric::Cosine);
        let view = store.view(rows as u64).expect("view");
        let bytes = view.raw(0..rows);
        let q = random_vec(99, dim);
        let mut g = c.benchmark_group(format!("scan_{rows}x{dim}_f16"));
        g.throughput(Throughput::Bytes(bytes.len() as u64));
        g.sample_size(20).measurement_time(Duration::from_secs(4));
        for threads in [1usize, 2] {
            g.bench_function(BenchmarkId::new("read_and_sum", threads), |b| {
                b.iter(|| black_box(read_and_sum(black_box(bytes), threads)))
            });
            g.bench_function(BenchmarkId::new("topk10_cosine", threads), |b| {
                let mut p = SearchParams::new(10);
                p.threads = threads;
                b.iter(|| black_box(search(&view, &q, &p).expect("search")))
            });
            // The same search polled once per chunk by a control doing what phenix-sql's does (an
            // atomic flag, the thread's id, a clock read): the cost of being interruptible.
            g.bench_function(BenchmarkId::new("topk10_cosine_control", threads), |b| {
                let flag = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
                let (f, start, me) = (
                    flag.clone(),
                    std::time::Instant::now(),
                    std::thread::current().id(),
                );
                let control = Control::new(move |_| {
                    let mine = std::thread::current().id() == me;
                    black_box((mine, start.elapsed()));
                    !f.load(std::sync::atomic::Ordering::Relaxed)
                });
                let mut p = SearchParams::new(10);
                p.threads = threads;
                p.control = Some(&control);
                b.iter(|| black_box(search(&view, &q, &p).expect("search")))
            });
        }
        g.finish();
    }
}

/// 1,000 queries at once: phenix's batched top-10 on every path this CPU runs (GEMM, AVX512-BF16, AMX)
/// vs faer's GEMM alone on the same shapes (f32 tiles already converted, no selection), on 1 and 2
/// threads.
fn batched(c: &mut Criterion) {
    let rows = if quick() { 100_000 } else { 1_000_000 };
    let (dim, nq) = (256usize, 1000usize);
    let mut store = random_store(rows, dim, ElemType::F16, Metric::Cosine);
    let view = store.view(rows as u64).expect("view");
    let queries = random_vec(5, nq * dim);
    let flops = 2.0 * nq as f64 * rows as f64 * dim as f64;
    let mut g = c.benchmark_group(format!("batch_{nq}q_{rows}x{dim}"));
    g.sample_size(10).measurement_time(Duration::from_secs(20));
    // Throughput in "elements" = floating-point operations of the GEMM, so criterion prints FLOP/s.
    g.throughput(Throughput::Elements(flops as u64));
    let xt: Vec<f32> = random_vec(3, TILE_ROWS * dim);
    for threads in [1usize, 2] {
        for path in BatchPath::available() {
            g.bench_function(
                BenchmarkId::new(format!("phenix_top10_{}", path.name()), threads),
                |b| {
                    let mut p = SearchParams::new(10);
                    p.threads = threads;
                    b.iter(|| {
                        black_box(search_batch_with(&view, &queries, &p, path).expect("batch"))
                    })
                },
            );
        }
        g.bench_function(BenchmarkId::new("faer_gemm_only", threads), |b| {
            b.iter(|| faer_gemm_only(&xt, &queries, rows, dim, threads))
        });
    }
    g.finish();
}

criterion_group!(benches, kernels, exact_topk, batched);
criterion_main!(benches);
