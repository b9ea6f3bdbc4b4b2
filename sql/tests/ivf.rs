//! The IVF index inside a phenix table (`index=ivf(...)`), checked against independent references:
//! recall@10 against float64 brute force on random and clustered data, returned distances against
//! float64, random transactions (inserts, updates, deletes, build-index, optimize, savepoints,
//! rollbacks) against an ordinary SQLite table, a damaged or missing snapshot (named by `phenix_check`,
//! queries fall back to exact search), a new connection taking up a snapshot plus later rows, and bad
//! options. Sizes are small (CI); `PHENIX_IVF_FUZZ_SEQS` sets the random sequences (default 40;
//! docs/reliability.md has the long run).

mod common;
use common::*;
use rusqlite::{params, Connection};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

const DIM: usize = 32;

/// `n` rows: random in [-1, 1) (`clusters = 0`), or around `clusters` random centres (the same
/// centres for every `seed`: queries drawn with another seed fall near the rows' clusters).
fn data(n: usize, clusters: usize, seed: u64) -> Vec<Vec<f32>> {
    let centres: Vec<Vec<f32>> = (0..clusters)
        .map(|c| rand_vec(1000 + c as u64, DIM))
        .collect();
    (0..n)
        .map(|i| {
            let noise = rand_vec(seed.wrapping_mul(1_000_003) + i as u64, DIM);
            let v: Vec<f32> = if clusters == 0 {
                noise
            } else {
                let c = &centres[(i * 7 + seed as usize) % clusters];
                c.iter().zip(&noise).map(|(a, b)| a + 0.5 * b).collect()
            };
            f16r(&v)
        })
        .collect()
}

fn create(c: &Connection, name: &str, index: &str) {
    c.execute_batch(&format!(
        "CREATE VIRTUAL TABLE {name} USING phenix(v float16[{DIM}] distance=cosine, tag INTEGER, index={index})"
    ))
    .unwrap();
}

fn load(c: &Connection, name: &str, rows: &[Vec<f32>]) {
    c.execute_batch("BEGIN").unwrap();
    {
        let mut st = c
            .prepare(&format!(
                "INSERT INTO {name}(rowid, v, tag) VALUES (?1, ?2, ?3)"
            ))
            .unwrap();
        for (i, v) in rows.iter().enumerate() {
            st.execute(params![i as i64 + 1, f16_bytes(v), (i % 10) as i64])
                .unwrap();
        }
    }
    c.execute_batch("COMMIT").unwrap();
}

fn build(c: &Connection, name: &str) -> rusqlite::Result<usize> {
    c.execute(
        &format!("INSERT INTO {name}({name}) VALUES ('build-index')"),
        [],
    )
}

/// (rowid, distance) of a KNN query with extra SQL conditions.
fn knn(c: &Connection, name: &str, q: &[f32], k: usize, extra: &str) -> Vec<(i64, f64)> {
    try_knn(c, name, q, k, extra).unwrap()
}

fn try_knn(
    c: &Connection,
    name: &str,
    q: &[f32],
    k: usize,
    extra: &str,
) -> rusqlite::Result<Vec<(i64, f64)>> {
    c.prepare(&format!(
        "SELECT rowid, distance FROM {name} WHERE v MATCH ?1 AND k = ?2 {extra}"
    ))?
    .query_map(params![f32_bytes(q), k as i64], |r| {
        Ok((r.get(0)?, r.get(1)?))
    })?
    .collect()
}

/// The k nearest of `rows` (rowid = index + 1) to `q` in float64: (rowid, distance).
fn brute(rows: &[Vec<f32>], q: &[f32], k: usize, keep: impl Fn(usize) -> bool) -> Vec<(i64, f64)> {
    let mut d: Vec<(i64, f64)> = rows
        .iter()
        .enumerate()
        .filter(|(i, _)| keep(*i))
        .map(|(i, v)| (i as i64 + 1, cos64(q, v)))
        .collect();
    d.sort_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)));
    d.truncate(k);
    d
}

fn status(c: &Connection, name: &str) -> serde_json::Value {
    let s: String = c
        .query_row("SELECT phenix_index_status(?1)", [name], |r| r.get(0))
        .unwrap();
    serde_json::from_str(&s).unwrap()
}

fn check(c: &Connection, name: &str) -> String {
    c.query_row("SELECT phenix_check(?1)", [name], |r| r.get(0))
        .unwrap()
}

/// Mean recall@10 of `queries` at `extra` (e.g. `AND nprobe = 4`), and a check that every returned
/// distance is the float64 distance of that row.
fn recall(c: &Connection, rows: &[Vec<f32>], queries: &[Vec<f32>], extra: &str) -> f64 {
    let mut hit = 0usize;
    for q in queries {
        let got = knn(c, "t", q, 10, extra);
        assert_eq!(got.len(), 10, "{extra}");
        for &(r, d) in &got {
            let want = cos64(q, &rows[r as usize - 1]);
            assert!(
                (d - want).abs() < 2e-6,
                "row {r}: {d} vs f64 {want} ({extra})"
            );
        }
        let truth = brute(rows, q, 10, |_| true);
        hit += got
            .iter()
            .filter(|g| truth.iter().any(|t| t.0 == g.0))
            .count();
    }
    hit as f64 / (10 * queries.len()) as f64
}

#[test]
fn recall_against_brute_force_on_random_and_clustered_data() {
    let dir = TempDir::new("ivf-recall");
    for (kind, clusters) in [("random", 0usize), ("clustered", 300)] {
        let db = dir.0.join(format!("{kind}.db"));
        let c = open(&db);
        create(&c, "t", "ivf(lists=32, codes=sq8)");
        let rows = data(4000, clusters, 7);
        load(&c, "t", &rows);
        assert!(status(&c, "t")["status"]
            .as_str()
            .unwrap()
            .starts_with("not built"));
        build(&c, "t").unwrap();
        let s = status(&c, "t");
        assert_eq!(s["status"], "ok", "{s}");
        assert_eq!(s["lists"], 32);
        assert_eq!(s["rows"], 4000);
        assert_eq!(s["nprobe"], 8);
        let queries: Vec<Vec<f32>> = data(40, clusters, 99);
        let r1 = recall(&c, &rows, &queries, "AND nprobe = 1");
        let rd = recall(&c, &rows, &queries, "");
        let rall = recall(&c, &rows, &queries, "AND nprobe = 32");
        let exact = recall(&c, &rows, &queries, "AND exact = 1");
        eprintln!("{kind}: recall@10 nprobe=1 {r1:.3}, default (8) {rd:.3}, all {rall:.3}, exact {exact:.3}");
        assert_eq!(exact, 1.0, "{kind}");
        assert!(rall >= 0.99, "{kind}: probing every list: {rall}");
        // The index is what answered: one list cannot find every neighbour.
        assert!(r1 < rall, "{kind}: nprobe 1 {r1} vs all {rall}");
        let floor = if clusters > 0 { 0.95 } else { 0.5 };
        assert!(rd >= floor, "{kind}: default nprobe recall {rd} < {floor}");
        assert!(rd >= r1);
        // phenix_retrieve uses the index with the default nprobe; its rows are the MATCH's.
        let q = &queries[0];
        let via: Vec<(i64, f64)> = c
            .prepare("SELECT rowid, distance FROM phenix_retrieve('t', ?1, 10)")
            .unwrap()
            .query_map([f32_bytes(q)], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .map(|r| r.unwrap())
            .collect();
        assert_eq!(via, knn(&c, "t", q, 10, ""));
        // phenix_retrieve_all searches the index per query: each query's rows equal its MATCH's.
        c.execute_batch("CREATE TABLE qs(id INTEGER PRIMARY KEY, v BLOB)")
            .unwrap();
        for (i, q) in queries.iter().take(5).enumerate() {
            c.execute(
                "INSERT INTO qs VALUES (?1, ?2)",
                params![i as i64, f32_bytes(q)],
            )
            .unwrap();
        }
        for (i, q) in queries.iter().take(5).enumerate() {
            let all: Vec<(i64, f64)> = c
                .prepare("SELECT rowid, distance FROM phenix_retrieve_all('t', 'qs(id, v)', 10) WHERE query_rowid = ?1")
                .unwrap()
                .query_map([i as i64], |r| Ok((r.get(0)?, r.get(1)?)))
                .unwrap()
                .map(|r| r.unwrap())
                .collect();
            assert_eq!(all, knn(&c, "t", q, 10, ""), "query {i}");
        }
        assert_eq!(check(&c, "t"), "ok");
    }
}

#[test]
fn filters_return_k_rows_when_k_qualify() {
    let dir = TempDir::new("ivf-filter");
    let c = open(&dir.0.join("f.db"));
    create(&c, "t", "ivf(lists=32)");
    let rows = data(3000, 30, 3);
    load(&c, "t", &rows);
    build(&c, "t").unwrap();
    for (i, q) in data(20, 30, 17).iter().enumerate() {
        let tag = (i % 10) as i64;
        // 10% of the rows qualify: the index path, probing past nprobe until k rows qualify.
        let got = knn(&c, "t", q, 10, &format!("AND nprobe = 1 AND tag = {tag}"));
        assert_eq!(got.len(), 10);
        for (r, _) in &got {
            assert_eq!((*r - 1) % 10, tag);
        }
        // Probing every list, the filtered answer is brute force's.
        let all = knn(&c, "t", q, 10, &format!("AND nprobe = 32 AND tag = {tag}"));
        let want = brute(&rows, q, 10, |j| (j % 10) as i64 == tag);
        assert_eq!(
            all.iter().map(|r| r.0).collect::<Vec<_>>(),
            want.iter().map(|r| r.0).collect::<Vec<_>>()
        );
        // A filter that leaves fewer than k rows returns all of them.
        let few = knn(&c, "t", q, 10, "AND nprobe = 1 AND rowid IN (5, 50, 500)");
        let mut ids: Vec<i64> = few.iter().map(|r| r.0).collect();
        ids.sort();
        assert_eq!(ids, vec![5, 50, 500]);
    }
}

#[test]
fn bad_options_and_too_few_rows_are_clear_errors() {
    let c = mem();
    for (index, want) in [
        (
            "ivf(lists=0)",
            "index option lists=0 is out of range; expected an integer in 1..=65536",
        ),
        ("ivf(lists=70000)", "lists=70000 is out of range"),
        ("ivf(nprobe=0)", "nprobe=0 is out of range"),
        (
            "ivf(codes=pq)",
            "codes=pq is not supported; expected codes=sq8",
        ),
        ("ivf(list=4)", "unknown index option `list`"),
        ("hnsw", "unknown index kind"),
    ] {
        let e = c
            .execute_batch(&format!(
                "CREATE VIRTUAL TABLE b USING phenix(v float16[4], index={index})"
            ))
            .unwrap_err()
            .to_string();
        assert!(e.contains(want), "{index}: {e}");
    }
    let e = c
        .execute_batch(
            "CREATE VIRTUAL TABLE b USING phenix(v float16[4], nprobe INTEGER, index=ivf)",
        )
        .unwrap_err()
        .to_string();
    assert!(e.contains("reserved in a table with an index"), "{e}");
    // Without an index, columns named nprobe and exact are ordinary metadata columns.
    c.execute_batch(
        "CREATE VIRTUAL TABLE plain USING phenix(v float16[4], nprobe INTEGER, exact INTEGER)",
    )
    .unwrap();
    let e = build(&c, "plain").unwrap_err().to_string();
    assert!(
        e.contains("build-index: the table declares no index"),
        "{e}"
    );

    c.execute_batch(
        "CREATE VIRTUAL TABLE t USING phenix(v float16[4], index=ivf(lists=4));
         INSERT INTO t(rowid, v) VALUES (1, '[1,0,0,0]'), (2, '[0,1,0,0]'), (3, '[0,0,1,0]');",
    )
    .unwrap();
    let e = build(&c, "t").unwrap_err().to_string();
    assert!(
        e.contains("an IVF index with 4 lists needs at least 4 live rows to train, the table has 3; the table stays on exact search"),
        "{e}"
    );
    // Still exact, still answering.
    let got = knn(&c, "t", &[1.0, 0.1, 0.0, 0.0], 2, "");
    assert_eq!(got.iter().map(|r| r.0).collect::<Vec<_>>(), vec![1, 2]);
    c.execute("INSERT INTO t(rowid, v) VALUES (4, '[0,0,0,1]')", [])
        .unwrap();
    build(&c, "t").unwrap();
    for (extra, want) in [
        ("AND nprobe = 0", "nprobe must be a positive integer, got 0"),
        (
            "AND nprobe = -2",
            "nprobe must be a positive integer, got -2",
        ),
        ("AND nprobe = 'x'", "nprobe must be a positive integer"),
        (
            "AND exact = 2",
            "exact must be 0 (use the index) or 1 (exact search)",
        ),
    ] {
        let e = try_knn(&c, "t", &[1.0, 0.0, 0.0, 0.0], 2, extra)
            .unwrap_err()
            .to_string();
        assert!(e.contains(want), "{extra}: {e}");
    }
    // nprobe past the list count probes every list.
    assert_eq!(
        knn(&c, "t", &[1.0, 0.1, 0.0, 0.0], 2, "AND nprobe = 1000").len(),
        2
    );
    let e = c
        .execute(
            "INSERT INTO t(rowid, v, nprobe) VALUES (9, '[1,1,1,1]', 3)",
            [],
        )
        .unwrap_err()
        .to_string();
    assert!(e.contains("`nprobe` is computed by queries"), "{e}");
    // An in-memory table keeps its index in the connection.
    assert_eq!(status(&c, "t")["status"], "ok");
}

/// The vector files and index snapshots of `db` (other sidecar files, e.g. the row-id map, are
/// another test's business).
fn sidecar_names(db: &Path) -> Vec<String> {
    let mut d = db.as_os_str().to_owned();
    d.push("-phenix");
    let mut v: Vec<String> = std::fs::read_dir(PathBuf::from(d))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    // Each vector file has its row-id file beside it (same name, `.ids`); listed here without them.
    let ids: Vec<String> = v.iter().filter(|n| n.ends_with(".ids")).cloned().collect();
    v.retain(|n| !n.ends_with(".ids"));
    let phx: Vec<String> = v
        .iter()
        .filter(|n| n.ends_with(".phx"))
        .map(|n| n.replace(".phx", ".ids"))
        .collect();
    assert_eq!(ids, phx, "row-id files beside the vector files");
    v
}

#[test]
fn snapshots_follow_commits_compaction_and_rollback() {
    let dir = TempDir::new("ivf-snap");
    let db = dir.0.join("s.db");
    let a = open(&db);
    create(&a, "t", "ivf(lists=16)");
    let mut rows = data(1200, 20, 5);
    load(&a, "t", &rows[..1000]);
    build(&a, "t").unwrap();
    // Rows committed after the snapshot: a new connection adds them from the vector file.
    let info = |c: &Connection, key: &str| -> Option<i64> {
        c.query_row("SELECT value FROM t_info WHERE key = ?1", [key], |r| {
            r.get(0)
        })
        .ok()
    };
    let insert = |c: &Connection, from: usize, to: usize| {
        c.execute_batch("BEGIN").unwrap();
        for (i, v) in rows.iter().enumerate().take(to).skip(from) {
            c.execute(
                "INSERT INTO t(rowid, v, tag) VALUES (?1, ?2, 0)",
                params![i as i64 + 1, f16_bytes(v)],
            )
            .unwrap();
        }
        c.execute_batch("COMMIT").unwrap();
    };
    insert(&a, 1000, 1050);
    assert_eq!(
        (info(&a, "index_gen"), info(&a, "index_covered")),
        (Some(1), Some(1000))
    );
    let b = open(&db);
    let s = status(&b, "t");
    assert_eq!(
        (s["snapshot"].as_u64(), s["covered"].as_u64()),
        (Some(1), Some(1050)),
        "{s}"
    );
    // Past a tenth of the snapshot, the commit writes the next snapshot (xSync).
    insert(&a, 1050, 1200);
    assert_eq!(
        (info(&a, "index_gen"), info(&a, "index_covered")),
        (Some(2), Some(1200))
    );
    let s = status(&b, "t");
    assert_eq!(
        (s["snapshot"].as_u64(), s["covered"].as_u64()),
        (Some(2), Some(1200)),
        "{s}"
    );
    let q = rows[1100].clone();
    assert_eq!(knn(&b, "t", &q, 1, "AND nprobe = 16")[0].0, 1101);
    // B's query after A's delete and update: dead rows never come back.
    a.execute_batch("DELETE FROM t WHERE rowid = 1101").unwrap();
    assert_ne!(knn(&b, "t", &q, 1, "AND nprobe = 16")[0].0, 1101);
    rows[5] = rows[1100].clone();
    a.execute("UPDATE t SET v = ?1 WHERE rowid = 6", [f16_bytes(&rows[5])])
        .unwrap();
    assert_eq!(knn(&b, "t", &q, 1, "AND nprobe = 16")[0].0, 6);

    // A rebuild rolled back leaves the old snapshot current; its file goes at the next write.
    let id: String = a
        .query_row("SELECT value FROM t_info WHERE key = 'table_id'", [], |r| {
            r.get(0)
        })
        .unwrap();
    a.execute_batch("BEGIN").unwrap();
    build(&a, "t").unwrap();
    assert_eq!(status(&a, "t")["snapshot"], 3);
    a.execute_batch("ROLLBACK").unwrap();
    assert_eq!(status(&a, "t")["snapshot"], 2);
    a.execute("DELETE FROM t WHERE rowid = 1", []).unwrap();
    assert_eq!(
        sidecar_names(&db),
        vec![format!("{id}.g0.i2.ivf"), format!("{id}.g0.phx")]
    );
    // Savepoints: a ROLLBACK TO past a rebuild goes back to the old index, one after it keeps it.
    a.execute_batch("BEGIN; SAVEPOINT s1").unwrap();
    build(&a, "t").unwrap();
    a.execute_batch("SAVEPOINT s2").unwrap();
    let q2 = data(1, 0, 4242).remove(0);
    a.execute(
        "INSERT INTO t(rowid, v, tag) VALUES (5000, ?1, 1)",
        [f16_bytes(&q2)],
    )
    .unwrap();
    assert_eq!(knn(&a, "t", &q2, 1, "AND nprobe = 16")[0].0, 5000);
    a.execute_batch("ROLLBACK TO s2").unwrap();
    assert_ne!(knn(&a, "t", &q2, 1, "AND nprobe = 16")[0].0, 5000);
    assert_eq!(knn(&a, "t", &q, 1, "AND nprobe = 16")[0].0, 6);
    assert_eq!(status(&a, "t")["snapshot"], 3);
    a.execute_batch("ROLLBACK TO s1").unwrap();
    assert_eq!(status(&a, "t")["snapshot"], 2);
    a.execute_batch("COMMIT").unwrap();

    // Compaction remaps the index and writes the new generation's snapshot in the same transaction.
    a.execute_batch("DELETE FROM t WHERE rowid % 3 = 0; INSERT INTO t(t) VALUES ('optimize')")
        .unwrap();
    let s = status(&a, "t");
    assert_eq!(s["status"], "ok", "{s}");
    let live: i64 = a
        .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
        .unwrap();
    assert_eq!(s["rows"].as_i64(), Some(live));
    assert_eq!(s["covered"].as_i64(), Some(live));
    a.execute("DELETE FROM t WHERE rowid = 2", []).unwrap();
    assert_eq!(
        sidecar_names(&db),
        vec![format!("{id}.g1.i3.ivf"), format!("{id}.g1.phx")]
    );
    assert_eq!(check(&a, "t"), "ok");
    // Another connection follows the compaction and still finds every row through the index.
    let keep = |j: usize| !(j + 1).is_multiple_of(3) && j != 0 && j != 1 && j != 1100;
    for (i, q) in data(10, 20, 77).iter().enumerate() {
        let got = knn(&b, "t", q, 10, "AND nprobe = 16");
        let want = brute(&rows, q, 10, keep);
        assert_eq!(
            got.iter().map(|r| r.0).collect::<Vec<_>>(),
            want.iter().map(|r| r.0).collect::<Vec<_>>(),
            "query {i}"
        );
    }
    drop((a, b));
    let c = open(&db);
    assert_eq!(check(&c, "t"), "ok");
    assert_eq!(status(&c, "t")["snapshot"], 3);
}

#[test]
fn a_damaged_or_missing_snapshot_is_named_and_queries_fall_back_to_exact() {
    let dir = TempDir::new("ivf-damage");
    let db = dir.0.join("d.db");
    let rows = data(3000, 40, 11);
    let queries = data(30, 40, 12);
    let c = open(&db);
    create(&c, "t", "ivf(lists=32)");
    load(&c, "t", &rows);
    build(&c, "t").unwrap();
    // With the index, one list misses some neighbours (so the fallback below is observable).
    let r1 = recall(&c, &rows, &queries, "AND nprobe = 1");
    assert!(r1 < 1.0, "{r1}");
    drop(c);
    let id = sidecar_names(&db)[0][..32].to_string();
    let snap = PathBuf::from(format!("{}-phenix/{id}.g0.i1.ivf", db.display()));
    let mut bytes = std::fs::read(&snap).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(&snap, &bytes).unwrap();
    let c = open(&db);
    let p = check(&c, "t");
    assert!(
        p.contains(&format!("the index snapshot {} is damaged", snap.display()))
            && p.contains("queries use exact search"),
        "{p}"
    );
    // Exact answers at nprobe 1 (never rows from a damaged index), and the status says why.
    assert_eq!(recall(&c, &rows, &queries, "AND nprobe = 1"), 1.0);
    let s = status(&c, "t");
    assert!(s["status"].as_str().unwrap().contains("is damaged"), "{s}");
    // Another table's snapshot in its place: refused as foreign.
    let other = dir.0.join("o.db");
    let o = open(&other);
    create(&o, "t", "ivf(lists=32)");
    load(&o, "t", &rows);
    build(&o, "t").unwrap();
    drop(o);
    let oid = sidecar_names(&other)[0][..32].to_string();
    drop(c);
    std::fs::copy(format!("{}-phenix/{oid}.g0.i1.ivf", other.display()), &snap).unwrap();
    let c = open(&db);
    let p = check(&c, "t");
    assert!(p.contains("belongs to another table"), "{p}");
    assert_eq!(recall(&c, &rows, &queries, "AND nprobe = 1"), 1.0);
    drop(c);
    std::fs::remove_file(&snap).unwrap();
    let c = open(&db);
    let p = check(&c, "t");
    assert!(p.contains("cannot be read"), "{p}");
    assert_eq!(recall(&c, &rows, &queries, "AND nprobe = 1"), 1.0);
    // A rebuild repairs it.
    build(&c, "t").unwrap();
    assert_eq!(check(&c, "t"), "ok");
    assert!(recall(&c, &rows, &queries, "AND nprobe = 1") < 1.0);
}

// ---- random transactions against an ordinary table ----

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn vec(&mut self) -> [i64; 4] {
        [0, 1, 2, 3].map(|_| self.below(9) as i64 - 4)
    }
}

type Rows = BTreeMap<i64, ([i64; 4], i64)>;

fn reference(c: &Connection) -> Rows {
    c.prepare("SELECT id, a, b, c, d, tag FROM r")
        .unwrap()
        .query_map([], |r| {
            Ok((
                r.get(0)?,
                ([r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?], r.get(5)?),
            ))
        })
        .unwrap()
        .map(|r| r.unwrap())
        .collect()
}

fn vj(v: &[i64; 4]) -> String {
    format!("[{},{},{},{}]", v[0], v[1], v[2], v[3])
}

/// KNN probing every list (4) over at most ~40 rows: the index's shortlist (64) holds every row it
/// has, so the answer must be brute force's, and any row the index lost (or a dead row it kept
/// serving) shows.
fn compare(c: &Connection, rng: &mut Rng) -> Result<(), String> {
    let want = reference(c);
    let n: i64 = c
        .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
        .map_err(|e| e.to_string())?;
    if n as usize != want.len() {
        return Err(format!("count {n} vs reference {}", want.len()));
    }
    let q = rng.vec();
    let k = 1 + rng.below(6) as usize;
    let tag = rng.below(2) as i64;
    for filtered in [false, true] {
        let sql = format!(
            "SELECT rowid, distance FROM t WHERE v MATCH ?1 AND k = ?2 AND nprobe = 4{}",
            if filtered {
                " AND tag = ?3"
            } else {
                " AND ?3 IS NOT NULL"
            }
        );
        check_int_knn(c, &sql, &want, &q, k, &tag, filtered)?;
    }
    Ok(())
}

fn run_sequence(dir: &Path, seed: u64) -> Result<(), String> {
    let wal = seed % 2 == 1;
    let path = dir.join(format!("fz{seed}.db"));
    let mut rng = Rng(seed.wrapping_mul(0x2545_F491_4F6C_DD1D) ^ 0x1234_5678);
    let mut log: Vec<String> = Vec::new();
    let c = open(&path);
    c.execute_batch(if wal {
        "PRAGMA journal_mode=WAL; PRAGMA synchronous=OFF;"
    } else {
        "PRAGMA synchronous=OFF;"
    })
    .unwrap();
    c.execute_batch(
        "CREATE VIRTUAL TABLE t USING phenix(v float32[4] distance=l2, tag INTEGER, index=ivf(lists=4));
         CREATE TABLE r(id INTEGER PRIMARY KEY, a, b, c, d, tag);",
    )
    .unwrap();
    let fail = |log: &Vec<String>, what: String| {
        format!("seed {seed} (wal {wal}): {what}\n  {}", log.join("\n  "))
    };
    let mut sps: Vec<String> = Vec::new();
    let mut spn = 0;
    for _ in 0..35 {
        let rows = reference(&c);
        let ids: Vec<i64> = rows.keys().copied().collect();
        let in_txn = !c.is_autocommit();
        let pick = rng.below(100);
        let sql: String = if pick < 30 {
            let id = 1 + rng.below(40) as i64;
            let (v, tag) = (rng.vec(), rng.below(2));
            if rows.contains_key(&id) {
                format!(
                    "UPDATE t SET v = '{}' WHERE rowid = {id}; UPDATE r SET a={}, b={}, c={}, d={} WHERE id = {id};",
                    vj(&v), v[0], v[1], v[2], v[3]
                )
            } else {
                format!(
                    "INSERT INTO t(rowid, v, tag) VALUES ({id}, '{}', {tag}); INSERT INTO r VALUES ({id}, {}, {}, {}, {}, {tag});",
                    vj(&v), v[0], v[1], v[2], v[3]
                )
            }
        } else if pick < 40 && !ids.is_empty() {
            let id = ids[rng.below(ids.len() as u64) as usize];
            format!("DELETE FROM t WHERE rowid = {id}; DELETE FROM r WHERE id = {id};")
        } else if pick < 44 && !ids.is_empty() {
            let id = ids[rng.below(ids.len() as u64) as usize];
            let to = 41 + rng.below(20) as i64;
            if rows.contains_key(&to) {
                continue;
            }
            format!("UPDATE t SET rowid = {to} WHERE rowid = {id}; UPDATE r SET id = {to} WHERE id = {id};")
        } else if pick < 54 {
            "INSERT INTO t(t) VALUES ('build-index')".into()
        } else if pick < 60 {
            "INSERT INTO t(t) VALUES ('optimize')".into()
        } else if pick < 66 && !in_txn {
            sps.clear();
            "BEGIN".into()
        } else if pick < 74 {
            spn += 1;
            sps.push(format!("s{spn}"));
            format!("SAVEPOINT s{spn}")
        } else if pick < 82 && !sps.is_empty() {
            let i = rng.below(sps.len() as u64) as usize;
            let n = sps[i].clone();
            sps.truncate(i + 1);
            format!("ROLLBACK TO {n}")
        } else if pick < 86 && !sps.is_empty() {
            let i = rng.below(sps.len() as u64) as usize;
            let n = sps[i].clone();
            sps.truncate(i);
            format!("RELEASE {n}")
        } else if pick < 94 && in_txn {
            sps.clear();
            "COMMIT".into()
        } else if in_txn {
            sps.clear();
            "ROLLBACK".into()
        } else {
            continue;
        };
        log.push(sql.clone());
        match c.execute_batch(&sql) {
            Ok(()) => {}
            // Too few rows to train: the statement fails, the table stays as it was.
            Err(e)
                if sql.contains("build-index")
                    && e.to_string().contains("needs at least 4 live rows") =>
            {
                if rows.len() >= 4 {
                    return Err(fail(
                        &log,
                        format!("build-index refused with {} rows: {e}", rows.len()),
                    ));
                }
            }
            Err(e) => return Err(fail(&log, format!("statement failed: {e}"))),
        }
        if c.is_autocommit() {
            sps.clear();
        }
        compare(&c, &mut rng).map_err(|e| fail(&log, e))?;
    }
    if !c.is_autocommit() {
        c.execute_batch("COMMIT").unwrap();
    }
    drop(c);
    let c = open(&path);
    log.push("-- reopen".into());
    let chk: String = c
        .query_row("SELECT phenix_check('t')", [], |r| r.get(0))
        .map_err(|e| fail(&log, e.to_string()))?;
    if chk != "ok" {
        return Err(fail(&log, format!("phenix_check: {chk}")));
    }
    compare(&c, &mut rng).map_err(|e| fail(&log, format!("after reopen: {e}")))?;
    drop(c);
    Ok(())
}

#[test]
fn random_transactions_with_an_index_match_an_ordinary_table() {
    let dir = TempDir::new("ivf-fuzz");
    let seqs: u64 = std::env::var("PHENIX_IVF_FUZZ_SEQS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(40);
    let mut failures = Vec::new();
    for seed in 0..seqs {
        if let Err(e) = run_sequence(&dir.0, seed) {
            failures.push(e);
        }
    }
    if let Some(f) = failures.first() {
        panic!(
            "{} of {seqs} sequences diverged; first:\n{f}",
            failures.len()
        );
    }
}

#[test]
fn backup_copies_the_snapshot() {
    let dir = TempDir::new("ivf-backup");
    let db = dir.0.join("b.db");
    let c = open(&db);
    create(&c, "t", "ivf(lists=8)");
    let rows = data(500, 10, 21);
    load(&c, "t", &rows);
    build(&c, "t").unwrap();
    let copy = dir.0.join("copy.db");
    let r: String = c
        .query_row("SELECT phenix_backup(?1)", [copy.to_str().unwrap()], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(r, r#"{"rows":500,"tables":1}"#);
    drop(c);
    let b = open(&copy);
    assert_eq!(check(&b, "t"), "ok");
    let s = status(&b, "t");
    assert_eq!(
        (s["status"].as_str(), s["rows"].as_u64()),
        (Some("ok"), Some(500)),
        "{s}"
    );
    let q = &rows[17];
    assert_eq!(knn(&b, "t", q, 1, "")[0].0, 18);
}

#[test]
fn drop_table_removes_the_snapshot_at_the_next_write() {
    let dir = TempDir::new("ivf-drop");
    let db = dir.0.join("x.db");
    let c = open(&db);
    create(&c, "t", "ivf(lists=4)");
    load(&c, "t", &data(50, 0, 1));
    build(&c, "t").unwrap();
    assert_eq!(sidecar_names(&db).len(), 2);
    c.execute_batch("DROP TABLE t").unwrap();
    create(&c, "u", "ivf");
    let left = sidecar_names(&db);
    assert_eq!(left.len(), 1, "{left:?}");
    assert!(left[0].ends_with(".g0.phx"));
}
