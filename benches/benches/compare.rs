//! phenix vs sqlite-vec single-query latency on small tables (100 and 10,000 rows × 256, cosine,
//! k = 10), where per-query overhead (planning, argument decoding, threads) dominates the scan. Same
//! data, tables and SQL as the runner `src/bin/compare.rs` (which measures the large tables).
//! Run: `cargo bench -p phenix-benches --bench compare`.

use criterion::{criterion_group, criterion_main, Criterion};
use phenix_benches::compare::{
    f32_blob, knn_sql, open, query_vec, remove_db, write_source, Data, Engine,
};
use std::time::Duration;

const DIM: usize = 256;

fn small_tables(c: &mut Criterion) {
    let dir = std::env::temp_dir().join(format!("phenix-compare-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp dir");
    for rows in [100u64, 10_000] {
        let src = dir.join(format!("src-{rows}.db"));
        write_source(&src, Data::Random, rows, DIM, 0).expect("source");
        let mut g = c.benchmark_group(format!("sql_knn10_cosine_{rows}x{DIM}"));
        g.sample_size(50).measurement_time(Duration::from_secs(3));
        let queries: Vec<Vec<u8>> = (0..64)
            .map(|j| f32_blob(&query_vec(Data::Random, j, DIM)))
            .collect();
        for e in [Engine::Phenix, Engine::SqliteVec] {
            let db = dir.join(format!("{}-{rows}.db", e.name()));
            remove_db(&db);
            let conn = open(&db).expect("open");
            conn.execute_batch(&e.create_sql(DIM)).expect("create");
            conn.execute("ATTACH ?1 AS s", [src.display().to_string()])
                .expect("attach");
            conn.execute_batch(
                "BEGIN; INSERT INTO t(rowid, embedding, cat) SELECT id, v, cat FROM s.src; COMMIT; DETACH s;",
            )
            .expect("fill");
            let mut st = conn.prepare(&knn_sql("")).expect("prepare");
            let mut i = 0usize;
            g.bench_function(e.name(), |b| {
                b.iter(|| {
                    i = (i + 1) % queries.len();
                    let n = st
                        .query_map(rusqlite::params![&queries[i], 10i64], |r| {
                            r.get::<_, i64>(0)
                        })
                        .expect("query")
                        .count();
                    assert_eq!(n, 10);
                })
            });
            drop(st);
            drop(conn);
            remove_db(&db);
        }
        g.finish();
    }
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, small_tables);
criterion_main!(benches);
