//! The analysis functions through SQL (in-process, bundled SQLite): per-plate robust normalisation
//! (fit on the DMSO wells + apply to every well), fitting ZCA-cor sphering, and phenotypic-activity
//! mAP. Sizes are kept small for CI-scale runs; the side-by-side comparison with pycytominer and
//! copairs at full size is `benches/python/analysis_vs_reference.py` (figures in docs/benchmarks.md).
//!
//! Run: `cargo bench -p phenix-benches --bench analysis -- --quick`.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use rusqlite::Connection;

/// A deterministic pseudo-random f32 in [-1, 1).
fn rnd(state: &mut u64) -> f32 {
    *state = state
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    ((*state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
}

fn blob(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn conn() -> Connection {
    let c = Connection::open_in_memory().unwrap();
    phenix_sql::register(&c).unwrap();
    c
}

/// `n` wells × `d` features on `plates` plates, every 10th well a DMSO control.
fn wells(c: &Connection, n: usize, d: usize, plates: usize) {
    c.execute_batch("CREATE TABLE prof(id INTEGER PRIMARY KEY, plate, role, profile)")
        .unwrap();
    let mut s = 1u64;
    let tx = c.unchecked_transaction().unwrap();
    {
        let mut st = tx
            .prepare("INSERT INTO prof VALUES (?1, ?2, ?3, ?4)")
            .unwrap();
        for i in 0..n {
            let v: Vec<f32> = (0..d).map(|_| rnd(&mut s) * 3.0 + 5.0).collect();
            let role = if i % 10 == 0 { "DMSO" } else { "trt" };
            st.execute(rusqlite::params![
                i as i64,
                (i % plates) as i64,
                role,
                blob(&v)
            ])
            .unwrap();
        }
    }
    tx.commit().unwrap();
}

fn normalize(cr: &mut Criterion) {
    let (n, d) = (20_000, 1000);
    let c = conn();
    wells(&c, n, d, 20);
    let mut g = cr.benchmark_group("analysis_normalize");
    g.sample_size(10);
    g.throughput(Throughput::Elements(n as u64));
    g.bench_function("robust_fit_and_apply_20k_x_1000", |b| {
        b.iter(|| {
            c.execute_batch(
                "DROP TABLE IF EXISTS fits; DROP TABLE IF EXISTS normed;
                 CREATE TABLE fits AS SELECT plate, phenix_norm_fit('robust', profile) AS fit FROM prof
                   WHERE role = 'DMSO' GROUP BY plate;
                 CREATE TABLE normed AS SELECT p.id, phenix_norm_apply(f.fit, p.profile) AS profile
                   FROM prof p JOIN fits f USING (plate);",
            )
            .unwrap();
        })
    });
    g.finish();
}

fn sphere(cr: &mut Criterion) {
    let (n, d) = (10_000, 500);
    let c = conn();
    wells(&c, n, d, 1);
    let mut g = cr.benchmark_group("analysis_sphere");
    g.sample_size(10);
    g.throughput(Throughput::Elements(n as u64));
    g.bench_function("zca_cor_fit_10k_x_500", |b| {
        b.iter(|| {
            let fit: Vec<u8> = c
                .query_row(
                    "SELECT phenix_norm_fit('sphere', profile) FROM prof",
                    [],
                    |r| r.get(0),
                )
                .unwrap();
            assert!(fit.len() > d * d * 8);
        })
    });
    g.finish();
}

fn activity_map(cr: &mut Criterion) {
    let (n, d) = (2_000, 128);
    let c = conn();
    c.execute_batch("CREATE TABLE w(id INTEGER PRIMARY KEY, t, ctrl, profile)")
        .unwrap();
    let mut s = 7u64;
    for i in 0..n {
        let v: Vec<f32> = (0..d).map(|_| rnd(&mut s)).collect();
        let (t, ctrl) = if i < n / 5 {
            ("DMSO".to_string(), 1)
        } else {
            (format!("t{}", i / 4), 0)
        };
        c.execute(
            "INSERT INTO w(t, ctrl, profile) VALUES (?1, ?2, ?3)",
            rusqlite::params![t, ctrl, blob(&v)],
        )
        .unwrap();
    }
    let mut g = cr.benchmark_group("analysis_map");
    g.sample_size(10);
    g.throughput(Throughput::Elements(n as u64));
    g.bench_function("activity_map_2k_wells_null_1000", |b| {
        b.iter(|| {
            let r: String = c
                .query_row(
                    "SELECT phenix_activity_map(id, t, ctrl, profile, '{\"null_size\": 1000}') FROM w",
                    [],
                    |r| r.get(0),
                )
                .unwrap();
            assert!(r.len() > 100);
        })
    });
    g.finish();
}

criterion_group!(benches, normalize, sphere, activity_map);
criterion_main!(benches);
