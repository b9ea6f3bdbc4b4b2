//! Batched top-k, every phenix path side by side with faer's plain GEMM and the reduced-precision units'
//! peak, in one process. `benches/python/batch_side_by_side.py` runs it next to faiss.
//!
//! ```text
//! cargo run --release -p phenix-benches --bin batch -- [options]
//!   --rows N         rows (default 100000)
//!   --dim D          dimensions (default 256)
//!   --queries Q      queries (default 1000)
//!   --k K            neighbours (default 10)
//!   --threads T      threads (default 2)
//!   --metric M       cosine | l2 | dot (default cosine)
//!   --paths LIST     comma-separated subset of gemm,amx,avx512bf16,faer (default all this CPU runs)
//!   --repeat R       timed runs per path: the median is printed, and the best (least CPU time)
//!                    as `best_*` (default 1)
//!   --dump DIR       write rows.f16 (N × D, little-endian), queries.f32 and <path>.ids (Q × K u64 slots)
//! ```
//!
//! Data: `random_store` rows (uniform in [-1, 1), stored as f16) and `random_vec(5, Q·D)` queries, the
//! same as the criterion benchmark. Prints one JSON object per line: `{"what": ..., "seconds": ...,
//! "gflops": ..., ...}`; GFLOP/s count 2·Q·N·D, as for a GEMM of the same shape.

use phenix_benches::{faer_gemm_only, random_store, random_vec};
use phenix_core::batch::{search_batch_with, unit_peak_gflops, BatchPath, TILE_ROWS};
use phenix_core::topk::SearchParams;
use phenix_core::{ElemType, Metric};
use std::io::Write;
use std::time::Instant;

fn arg<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> T {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// CPU time of the whole process (all threads), seconds.
fn process_cpu() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let rows: usize = arg(&args, "--rows", 100_000);
    let dim: usize = arg(&args, "--dim", 256);
    let nq: usize = arg(&args, "--queries", 1000);
    let k: usize = arg(&args, "--k", 10);
    let threads: usize = arg(&args, "--threads", 2);
    let repeat: usize = arg(&args, "--repeat", 1);
    let metric = Metric::parse(&arg(&args, "--metric", "cosine".to_string())).expect("metric");
    let dump: Option<String> = args
        .iter()
        .position(|a| a == "--dump")
        .and_then(|i| args.get(i + 1).cloned());
    let default_paths: Vec<String> = BatchPath::available()
        .iter()
        .map(|p| p.name().to_string())
        .chain(std::iter::once("faer".to_string()))
        .collect();
    let paths: Vec<String> = args
        .iter()
        .position(|a| a == "--paths")
        .and_then(|i| args.get(i + 1))
        .map(|v| v.split(',').map(str::to_string).collect())
        .unwrap_or(default_paths);

    let t0 = Instant::now();
    let mut store = random_store(rows, dim, ElemType::F16, metric);
    let view = store.view(rows as u64).expect("view");
    let queries = random_vec(5, nq * dim);
    eprintln!(
        "data: {rows} x {dim} f16 rows, {nq} queries ({:.1} s)",
        t0.elapsed().as_secs_f64()
    );
    if let Some(dir) = &dump {
        std::fs::create_dir_all(dir).expect("dump dir");
        let mut f = std::io::BufWriter::new(
            std::fs::File::create(format!("{dir}/rows.f16")).expect("rows"),
        );
        for i in 0..rows {
            f.write_all(view.raw(i..i + 1).get(..dim * 2).expect("row bytes"))
                .expect("write");
        }
        let qb: Vec<u8> = queries.iter().flat_map(|v| v.to_le_bytes()).collect();
        std::fs::write(format!("{dir}/queries.f32"), qb).expect("queries");
    }
    let flops = 2.0 * nq as f64 * rows as f64 * dim as f64;
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    println!(
        "{{\"what\": \"setup\", \"rows\": {rows}, \"dim\": {dim}, \"queries\": {nq}, \"k\": {k}, \"threads\": {threads}, \"metric\": \"{metric}\", \"cpu\": \"{cpu}\"}}"
    );
    for name in &paths {
        if name == "faer" {
            // faer's GEMM alone on the same shapes: f32 tiles already converted, no selection.
            let xt: Vec<f32> = random_vec(3, TILE_ROWS * dim);
            let tiles = rows / TILE_ROWS;
            let mut times = Vec::new();
            let mut cpus = Vec::new();
            for _ in 0..repeat {
                let t = Instant::now();
                let c = process_cpu();
                faer_gemm_only(&xt, &queries, rows, dim, threads);
                let scale = rows as f64 / (tiles * TILE_ROWS) as f64;
                times.push(t.elapsed().as_secs_f64() * scale);
                cpus.push((process_cpu() - c) * scale);
            }
            let s = median(times);
            let cpu = median(cpus);
            println!(
                "{{\"what\": \"faer_gemm_f32\", \"seconds\": {s:.4}, \"cpu_seconds\": {cpu:.4}, \"gflops\": {:.1}, \"gflops_per_cpu_s\": {:.1}}}",
                flops / s / 1e9,
                flops / cpu / 1e9
            );
            continue;
        }
        let path = BatchPath::parse(name).unwrap_or_else(|| panic!("unknown path {name}"));
        if !path.supported() {
            eprintln!("{name}: not supported on this CPU, skipped");
            continue;
        }
        let mut p = SearchParams::new(k);
        p.threads = threads;
        let mut times = Vec::new();
        let mut cpus = Vec::new();
        let mut last = None;
        for _ in 0..repeat {
            let t = Instant::now();
            let c = process_cpu();
            let r = search_batch_with(&view, &queries, &p, path).expect("batch");
            times.push(t.elapsed().as_secs_f64());
            cpus.push(process_cpu() - c);
            last = Some(r);
        }
        let (hits, stats) = last.expect("one run");
        let cpu_best = cpus.iter().copied().fold(f64::INFINITY, f64::min);
        let s = median(times);
        let cpu = median(cpus);
        let peak = unit_peak_gflops(path, threads, 0.5);
        let gf = flops / s / 1e9;
        // Per CPU-second of one thread: what the code does with the time it gets on a shared machine.
        let gf_cpu = flops / cpu / 1e9;
        println!(
            "{{\"what\": \"phenix_{}\", \"seconds\": {s:.4}, \"cpu_seconds\": {cpu:.4}, \"gflops\": {gf:.1}, \"gflops_per_cpu_s\": {gf_cpu:.1}, \"rescored_per_query\": {:.2}, \"rescored_share\": {:.3e}, \"unit_peak_gflops\": {}, \"unit_peak_per_cpu_s\": {}, \"share_of_peak\": {}, \"best_cpu_seconds\": {cpu_best:.4}, \"best_gflops_per_cpu_s\": {:.1}, \"best_share_of_peak\": {}}}",
            stats.path.name(),
            stats.rescored as f64 / nq as f64,
            stats.rescored as f64 / stats.scored.max(1) as f64,
            peak.map_or("null".into(), |v| format!("{:.1}", v.0)),
            peak.map_or("null".into(), |v| format!("{:.1}", v.1)),
            peak.map_or("null".into(), |v| format!("{:.3}", gf_cpu / v.1)),
            flops / cpu_best / 1e9,
            peak.map_or("null".into(), |v| format!("{:.3}", flops / cpu_best / 1e9 / v.1)),
        );
        if let Some(dir) = &dump {
            let ids: Vec<u8> = hits
                .iter()
                .flat_map(|h| (0..k).map(move |i| h.get(i).map_or(u64::MAX, |x| x.slot)))
                .flat_map(|s| s.to_le_bytes())
                .collect();
            std::fs::write(format!("{dir}/{}.ids", stats.path.name()), ids).expect("ids");
        }
    }
}
