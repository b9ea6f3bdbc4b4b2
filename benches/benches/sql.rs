//! phenix vs sqlite-vec through SQL, in one run: bulk `INSERT … SELECT` of 100k × 256 rows in one
//! transaction, and exact KNN (k = 10, cosine) over them. Run: `cargo bench -p phenix-benches --bench sql`.
//! File sizes are printed once per engine.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use phenix_benches::compare::register_sqlite_vec;
use phenix_benches::random_vec;
use rusqlite::Connection;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const ROWS: usize = 100_000;
const DIM: usize = 256;

#[derive(Clone, Copy, PartialEq)]
enum Engine {
    Phenix,
    SqliteVec,
}

impl Engine {
    fn name(self) -> &'static str {
        match self {
            Engine::Phenix => "phenix_float16",
            Engine::SqliteVec => "sqlite_vec_float32",
        }
    }
    fn create(self) -> String {
        match self {
            Engine::Phenix => {
                format!(
                    "CREATE VIRTUAL TABLE t USING phenix(embedding float16[{DIM}] distance=cosine)"
                )
            }
            Engine::SqliteVec => {
                format!("CREATE VIRTUAL TABLE t USING vec0(embedding float[{DIM}] distance_metric=cosine)")
            }
        }
    }
}

fn tmpdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("phenix-bench-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("tmp dir");
    d
}

fn open(path: &Path) -> Connection {
    register_sqlite_vec();
    let c = Connection::open(path).expect("open");
    phenix_sql::register(&c).expect("register phenix");
    c.execute_batch("PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;")
        .expect("pragmas");
    c
}

/// A database holding `src(id, v)` with ROWS f32 blobs.
fn source_db(path: &Path) -> Connection {
    let c = open(path);
    c.execute_batch("CREATE TABLE src(id INTEGER PRIMARY KEY, v BLOB)")
        .expect("src");
    let tx = c.unchecked_transaction().expect("tx");
    {
        let mut st = c
            .prepare("INSERT INTO src(id, v) VALUES (?1, ?2)")
            .expect("prep");
        for i in 0..ROWS {
            let v = random_vec(i as u64 + 1, DIM);
            let b: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
            st.execute(rusqlite::params![i as i64 + 1, b])
                .expect("insert src");
        }
    }
    tx.commit().expect("commit");
    c
}

fn dir_size(p: &Path) -> u64 {
    std::fs::read_dir(p)
        .map(|rd| {
            rd.flatten()
                .map(|e| {
                    let m = e.metadata().expect("meta");
                    if m.is_dir() {
                        dir_size(&e.path())
                    } else {
                        m.len()
                    }
                })
                .sum()
        })
        .unwrap_or(0)
}

fn bulk_insert(c: &mut Criterion) {
    let mut g = c.benchmark_group(format!("sql_insert_select_{ROWS}x{DIM}"));
    g.sample_size(10).measurement_time(Duration::from_secs(30));
    g.throughput(Throughput::Elements(ROWS as u64));
    for engine in [Engine::Phenix, Engine::SqliteVec] {
        let mut reported = false;
        g.bench_function(engine.name(), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for i in 0..iters {
                    let d = tmpdir(&format!("ins{i}"));
                    let conn = source_db(&d.join("b.db"));
                    conn.execute_batch(&engine.create()).expect("create");
                    let t = Instant::now();
                    conn.execute_batch(
                        "BEGIN; INSERT INTO t(rowid, embedding) SELECT id, v FROM src; COMMIT;",
                    )
                    .expect("insert select");
                    total += t.elapsed();
                    if !reported {
                        conn.execute_batch("DROP TABLE src; VACUUM;")
                            .expect("vacuum");
                        drop(conn);
                        eprintln!(
                            "\n{}: database + sidecar = {:.1} MB for {ROWS} x {DIM}",
                            engine.name(),
                            dir_size(&d) as f64 / 1e6
                        );
                        reported = true;
                    } else {
                        drop(conn);
                    }
                    let _ = std::fs::remove_dir_all(&d);
                }
                total
            })
        });
    }
    g.finish();
}

fn knn(c: &mut Criterion) {
    let mut g = c.benchmark_group(format!("sql_knn10_cosine_{ROWS}x{DIM}"));
    g.sample_size(20).measurement_time(Duration::from_secs(5));
    for engine in [Engine::Phenix, Engine::SqliteVec] {
        let d = tmpdir(&format!("knn-{}", engine.name()));
        let conn = source_db(&d.join("k.db"));
        conn.execute_batch(&engine.create()).expect("create");
        conn.execute_batch("BEGIN; INSERT INTO t(rowid, embedding) SELECT id, v FROM src; COMMIT;")
            .expect("fill");
        let q: Vec<u8> = random_vec(424242, DIM)
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        let mut st = conn
            .prepare("SELECT rowid, distance FROM t WHERE embedding MATCH ?1 AND k = 10")
            .expect("prepare");
        g.bench_function(engine.name(), |b| {
            b.iter(|| {
                let rows: Vec<(i64, f64)> = st
                    .query_map([&q], |r| Ok((r.get(0)?, r.get(1)?)))
                    .expect("query")
                    .map(|r| r.expect("row"))
                    .collect();
                assert_eq!(rows.len(), 10);
                rows
            })
        });
        drop(st);
        drop(conn);
        let _ = std::fs::remove_dir_all(&d);
    }
    g.finish();
}

criterion_group!(benches, bulk_insert, knn);
criterion_main!(benches);
