//! phenix's IVF index on a data set written by `benches/python/ivf_compare.py`: build time, memory,
//! and recall@10 / latency over nprobe, next to phenix's exact search. Prints one JSON object per line.
//!
//! ```text
//! cargo run --release -p phenix-benches --bin ivf -- <dir> [lists] [threads] [rerank]
//! ```
//! `<dir>` holds `base.f32` (rows × dim, little-endian f32), `query.f32` and `gt.i32` (the exact top-10
//! slots of each query), and `meta.json`-free sizes: the dimension is read from `dim.txt`.

use phenix_core::ivf::{IvfIndex, IvfParams, IvfSearch};
use phenix_core::store::{Layout, VectorStore};
use phenix_core::topk::{search, SearchParams};
use phenix_core::{ElemType, Metric};
use std::io::Read;
use std::path::Path;
use std::time::Instant;

fn read_f32(p: &Path) -> Vec<f32> {
    let b = std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn status(key: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let dir = Path::new(
        args.get(1)
            .expect("usage: ivf <dir> [lists] [threads] [rerank]"),
    );
    let dim: usize = std::fs::read_to_string(dir.join("dim.txt"))
        .expect("dim.txt")
        .trim()
        .parse()
        .expect("a dimension");
    let threads: usize = args.get(3).map_or(2, |s| s.parse().expect("threads"));
    let rerank: usize = args.get(4).map_or(64, |s| s.parse().expect("rerank"));

    // The rows, streamed into an f16 vector file (the f32 input is never held whole).
    let path = dir.join("phenix-bench.phx");
    let _ = std::fs::remove_file(&path);
    let layout = Layout::new(dim, ElemType::F16, Metric::Cosine).unwrap();
    let mut store = VectorStore::create(&path, layout, [0; 16]).unwrap();
    let mut f = std::fs::File::open(dir.join("base.f32")).expect("base.f32");
    let mut buf = vec![0u8; 4 * dim * 65_536];
    loop {
        let mut got = 0;
        while got < buf.len() {
            let n = f.read(&mut buf[got..]).unwrap();
            if n == 0 {
                break;
            }
            got += n;
        }
        if got == 0 {
            break;
        }
        let v: Vec<f32> = buf[..got]
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        store.append(&v).unwrap();
        if got < buf.len() {
            break;
        }
    }
    store.sync().unwrap();
    let n = store.len();
    store.set_committed(n).unwrap();
    drop(store);
    let mut store = VectorStore::open(&path, Some(layout), n, false).unwrap();
    let lists: usize = args
        .get(2)
        .map_or(IvfParams::for_rows(n as usize).lists, |s| {
            s.parse().expect("lists")
        });
    let queries = read_f32(&dir.join("query.f32"));
    let gt: Vec<i32> = std::fs::read(dir.join("gt.i32"))
        .expect("gt.i32")
        .chunks_exact(4)
        .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    let nq = queries.len() / dim;
    let view = store.view(n).unwrap();
    // Touch every row once so the build and the exact baseline both start from the page cache.
    let mut sink = 0f32;
    for i in (0..n as usize).step_by(64) {
        sink += view.row(i).to_f32()[0];
    }
    let rss0 = status("VmRSS:");

    let mut params = IvfParams::new(lists);
    params.threads = threads;
    let t = Instant::now();
    let idx = IvfIndex::build(&view, None, &params, [0; 16], 0).unwrap();
    let build = t.elapsed().as_secs_f64();
    let hwm = status("VmHWM:");
    println!(
        "{{\"engine\":\"phenix IVF-SQ8\",\"rows\":{n},\"dim\":{dim},\"lists\":{lists},\"threads\":{threads},\"build_s\":{build:.2},\"index_bytes\":{},\"rss_before_kb\":{rss0},\"peak_rss_kb\":{hwm},\"sink\":{sink}}}",
        idx.memory_bytes()
    );
    let bytes = idx.to_bytes();
    let t = Instant::now();
    let back = IvfIndex::from_bytes(&dir.join("x.ivf"), &bytes, n).unwrap();
    println!(
        "{{\"engine\":\"phenix IVF-SQ8\",\"serialized_bytes\":{},\"decode_s\":{:.3}}}",
        bytes.len(),
        t.elapsed().as_secs_f64()
    );
    drop(back);
    drop(bytes);

    // Exact search (the baseline the index must beat), same threads.
    let mut p = SearchParams::new(10);
    p.threads = threads;
    let ne = nq.min(100);
    let t = Instant::now();
    let mut exact_recall = 0usize;
    for qi in 0..ne {
        let q = &queries[qi * dim..(qi + 1) * dim];
        let hits = search(&view, q, &p).unwrap();
        let want = &gt[qi * 10..qi * 10 + 10];
        exact_recall += hits
            .iter()
            .filter(|h| want.contains(&(h.slot as i32)))
            .count();
    }
    let exact_ms = t.elapsed().as_secs_f64() * 1e3 / ne as f64;
    println!(
        "{{\"engine\":\"phenix exact\",\"param\":0,\"recall\":{:.4},\"ms\":{exact_ms:.3}}}",
        exact_recall as f64 / (ne * 10) as f64
    );

    for nprobe in [1, 4, 8, 16, 32, 64, 128, 256] {
        let mut sp = IvfSearch::new(10, nprobe);
        sp.threads = threads;
        sp.rerank = rerank;
        let t = Instant::now();
        let mut hit = 0usize;
        for qi in 0..nq {
            let q = &queries[qi * dim..(qi + 1) * dim];
            let hits = idx.search(&view, q, &sp).unwrap();
            let want = &gt[qi * 10..qi * 10 + 10];
            hit += hits
                .iter()
                .filter(|h| want.contains(&(h.slot as i32)))
                .count();
        }
        let ms = t.elapsed().as_secs_f64() * 1e3 / nq as f64;
        println!(
            "{{\"engine\":\"phenix IVF-SQ8\",\"param\":{nprobe},\"recall\":{:.4},\"ms\":{ms:.3}}}",
            hit as f64 / (nq * 10) as f64
        );
    }
    drop(store);
    let _ = std::fs::remove_file(&path);
}
