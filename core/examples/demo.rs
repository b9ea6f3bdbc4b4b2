//! phenix-core demo: build a memory-mapped f16 store of clustered vectors, reopen it, and query it with
//! the exact (one query) and batched (GEMM) paths. Run: `cargo run --release -p phenix-core --example demo`.
//!
//! The vectors are synthetic (seeded clusters standing in for embeddings); the SQL demo replaces this
//! once the SQL surface lands.

use phenix_core::batch::search_batch;
use phenix_core::store::{random_table_id, Layout, VectorStore};
use phenix_core::topk::{search, SearchParams};
use phenix_core::{ElemType, Kernels, Metric};
use std::time::Instant;

const DIM: usize = 256;
const ROWS: usize = 200_000;
const CLUSTERS: usize = 64;

fn rng(state: &mut u64) -> f32 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    ((z ^ (z >> 31)) >> 40) as f32 / (1u64 << 23) as f32 - 1.0
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::temp_dir().join(format!("phenix-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("demo.phx");
    let mut s = 42u64;
    let centres: Vec<f32> = (0..CLUSTERS * DIM).map(|_| rng(&mut s)).collect();
    let layout = Layout::new(DIM, ElemType::F16, Metric::Cosine)?;

    let t = Instant::now();
    let mut store = VectorStore::create(&path, layout, random_table_id())?;
    let mut batch = Vec::with_capacity(10_000 * DIM);
    for i in 0..ROWS {
        let c = i % CLUSTERS;
        batch.extend((0..DIM).map(|d| centres[c * DIM + d] + 0.35 * rng(&mut s)));
        if batch.len() == 10_000 * DIM {
            store.append(&batch)?;
            batch.clear();
            eprint!("\rappending: {:>6} / {ROWS} rows", i + 1);
        }
    }
    store.sync()?;
    store.set_committed(ROWS as u64)?;
    eprintln!();
    let file_mb = std::fs::metadata(&path)?.len() as f64 / 1e6;
    println!(
        "built {ROWS} x {DIM} float16 rows in {:.2} s; file {:.1} MB ({:.0} bytes/row)",
        t.elapsed().as_secs_f64(),
        file_mb,
        file_mb * 1e6 / ROWS as f64
    );
    drop(store);

    let mut store = VectorStore::open(&path, Some(layout), ROWS as u64, false)?;
    let view = store.view(ROWS as u64)?;
    println!("kernels: {}", Kernels::best().isa().name());
    let query: Vec<f32> = centres[7 * DIM..8 * DIM].to_vec();
    for threads in [1, 2] {
        let mut p = SearchParams::new(10);
        p.threads = threads;
        let t = Instant::now();
        let hits = search(&view, &query, &p)?;
        println!(
            "exact top-10 over {ROWS} rows on {threads} thread(s): {:.2} ms",
            t.elapsed().as_secs_f64() * 1e3
        );
        if threads == 1 {
            println!("  rank  slot     cluster  distance");
            for (r, h) in hits.iter().enumerate() {
                println!(
                    "  {:>4}  {:>7}  {:>7}  {:.5}",
                    r + 1,
                    h.slot,
                    h.slot as usize % CLUSTERS,
                    h.distance
                );
            }
        }
    }
    let nq = 200;
    let queries: Vec<f32> = (0..nq)
        .flat_map(|i| centres[(i % CLUSTERS) * DIM..(i % CLUSTERS + 1) * DIM].to_vec())
        .collect();
    let mut bp = SearchParams::new(10);
    bp.threads = 2;
    let t = Instant::now();
    let res = search_batch(&view, &queries, &bp)?;
    let right = res
        .iter()
        .enumerate()
        .map(|(i, hits)| {
            hits.iter()
                .filter(|h| h.slot as usize % CLUSTERS == i % CLUSTERS)
                .count()
        })
        .sum::<usize>();
    println!(
        "batched top-10 for {nq} queries: {:.1} ms ({:.2} ms/query); {right}/{} hits in the query's own cluster",
        t.elapsed().as_secs_f64() * 1e3,
        t.elapsed().as_secs_f64() * 1e3 / nq as f64,
        nq * 10
    );
    drop(store);
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
