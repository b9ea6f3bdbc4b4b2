//! Compaction (`INSERT INTO t(t) VALUES ('optimize')`), the integrity check (`phenix_check`,
//! `'integrity-check'`) and corruption: every case is compared with a model of what must be in the table
//! (f16-rounded vectors, byte for byte) and with f64 brute-force KNN.

mod common;
use common::*;
use rusqlite::{params, Connection};
use std::collections::BTreeMap;
use std::path::Path;

const DIM: usize = 16;
/// Header page plus rows of 64 bytes (16 × f16 = 32 bytes, padded).
const HEADER: u64 = 4096;
const STRIDE: u64 = 64;

type Model = BTreeMap<i64, (Vec<f32>, String)>;

fn create(c: &Connection, name: &str) {
    c.execute_batch(&format!(
        "CREATE VIRTUAL TABLE {name} USING phenix(v float16[{DIM}] distance=cosine, tag TEXT, +note TEXT)"
    ))
    .unwrap();
}

fn insert(c: &Connection, t: &str, m: &mut Model, id: i64, seed: u64) {
    let v = rand_vec(seed, DIM);
    let tag = format!("tag{}", seed % 7);
    c.execute(
        &format!("INSERT INTO {t}(rowid, v, tag, note) VALUES (?1, ?2, ?3, 'n')"),
        params![id, json(&v), tag],
    )
    .unwrap();
    m.insert(id, (json_f16r(&v), tag));
}

/// Every row of `t`: rowid → (vector bytes, tag).
fn contents(c: &Connection, t: &str) -> BTreeMap<i64, (Vec<u8>, String)> {
    c.prepare(&format!("SELECT rowid, v, tag FROM {t}"))
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, (r.get(1)?, r.get(2)?))))
        .unwrap()
        .map(|r| r.unwrap())
        .collect()
}

fn assert_matches(c: &Connection, t: &str, m: &Model) {
    let got = contents(c, t);
    let want: BTreeMap<i64, (Vec<u8>, String)> = m
        .iter()
        .map(|(id, (v, tag))| (*id, (json_f16_bytes(v), tag.clone())))
        .collect();
    assert_eq!(got.len(), want.len(), "row count");
    assert!(got == want, "table contents differ from the model");
    // KNN against f64 brute force over the model, for a few queries.
    for s in 0..5u64 {
        let q = rand_vec(1_000_000 + s, DIM);
        let k = 10.min(m.len()).max(1);
        let got: Vec<(i64, f64)> = c
            .prepare(&format!(
                "SELECT rowid, distance FROM {t} WHERE v MATCH ?1 AND k = ?2"
            ))
            .unwrap()
            .query_map(params![json(&q), k as i64], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .map(|r| r.unwrap())
            .collect();
        let mut want: Vec<(i64, f64)> = m.iter().map(|(id, (v, _))| (*id, cos64(&q, v))).collect();
        want.sort_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)));
        want.truncate(k);
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(&want) {
            assert!((g.1 - w.1).abs() < 1e-5, "distance {g:?} vs {w:?}");
        }
    }
}

fn check(c: &Connection, t: &str) -> String {
    c.query_row("SELECT phenix_check(?1)", [t], |r| r.get(0))
        .unwrap()
}

fn generation(c: &Connection, t: &str) -> i64 {
    c.query_row(
        &format!("SELECT value FROM {t}_info WHERE key = 'generation'"),
        [],
        |r| r.get(0),
    )
    .unwrap()
}

fn optimize(c: &Connection, t: &str) {
    c.execute(&format!("INSERT INTO {t}({t}) VALUES ('optimize')"), [])
        .unwrap();
}

/// 600 inserts, 100 vector updates, 250 deletes: 350 live rows in 700 slots.
fn churn(c: &Connection, t: &str, m: &mut Model) {
    let tx = c.unchecked_transaction().unwrap();
    for i in 1..=600 {
        insert(c, t, m, i, i as u64);
    }
    tx.commit().unwrap();
    for i in (1..=600).step_by(6) {
        let v = rand_vec(5000 + i as u64, DIM);
        c.execute(
            &format!("UPDATE {t} SET v = ?1 WHERE rowid = ?2"),
            params![json(&v), i],
        )
        .unwrap();
        m.get_mut(&i).unwrap().0 = json_f16r(&v);
    }
    for i in (2..=600).step_by(12).chain((3..=600).step_by(3)) {
        if m.remove(&i).is_some() {
            c.execute(&format!("DELETE FROM {t} WHERE rowid = ?1"), [i])
                .unwrap();
        }
    }
}

#[test]
fn optimize_reclaims_space_and_keeps_every_row() {
    let d = TempDir::new("optimize");
    let db = d.0.join("t.db");
    let c = open(&db);
    create(&c, "t");
    let mut m = Model::new();
    churn(&c, "t", &mut m);
    let live = m.len() as u64;
    let files = sidecar_files(&db);
    assert_eq!(files.len(), 1);
    let slots_before = 600 + 100;
    assert_eq!(
        std::fs::metadata(&files[0]).unwrap().len(),
        HEADER + slots_before * STRIDE
    );
    // A second connection that has read the table before the compaction.
    let reader = open(&db);
    assert_matches(&reader, "t", &m);

    optimize(&c, "t");
    assert_eq!(generation(&c, "t"), 1);
    assert_matches(&c, "t", &m);
    assert_eq!(check(&c, "t"), "ok");
    // The reader follows the new generation.
    assert_matches(&reader, "t", &m);
    assert_eq!(check(&reader, "t"), "ok");
    // The old file goes at this connection's next write; the new one holds only live rows.
    insert(&c, "t", &mut m, 10_000, 10_000);
    let files = sidecar_files(&db);
    assert_eq!(files.len(), 1, "{files:?}");
    assert!(files[0].to_string_lossy().ends_with(".g1.phx"));
    assert_eq!(
        std::fs::metadata(&files[0]).unwrap().len(),
        HEADER + (live + 1) * STRIDE
    );
    assert_matches(&reader, "t", &m);
    drop(c);
    drop(reader);
    let c = open(&db);
    assert_matches(&c, "t", &m);
    assert_eq!(check(&c, "t"), "ok");
    // Compacting again (nothing to reclaim) and after deleting everything.
    optimize(&c, "t");
    assert_matches(&c, "t", &m);
    c.execute("DELETE FROM t", []).unwrap();
    m.clear();
    optimize(&c, "t");
    assert_matches(&c, "t", &m);
    assert_eq!(check(&c, "t"), "ok");
    insert(&c, "t", &mut m, 1, 1);
    assert_matches(&c, "t", &m);
}

#[test]
fn optimize_rolls_back_with_its_transaction_or_savepoint() {
    let d = TempDir::new("optimize-rb");
    let db = d.0.join("t.db");
    let c = open(&db);
    create(&c, "t");
    let mut m = Model::new();
    churn(&c, "t", &mut m);

    // Whole transaction rolled back: inserts before and after the compaction vanish with it.
    c.execute_batch("BEGIN").unwrap();
    let mut scratch = m.clone();
    insert(&c, "t", &mut scratch, 20_000, 20_000);
    optimize(&c, "t");
    insert(&c, "t", &mut scratch, 20_001, 20_001);
    assert_matches(&c, "t", &scratch);
    c.execute_batch("ROLLBACK").unwrap();
    assert_eq!(generation(&c, "t"), 0);
    assert_matches(&c, "t", &m);
    assert_eq!(check(&c, "t"), "ok");

    // ROLLBACK TO a savepoint taken before the compaction undoes it; the rest commits.
    c.execute_batch("BEGIN").unwrap();
    insert(&c, "t", &mut m, 30_000, 30_000);
    c.execute_batch("SAVEPOINT s").unwrap();
    c.execute("DELETE FROM t WHERE rowid = 1", []).unwrap();
    optimize(&c, "t");
    c.execute_batch("ROLLBACK TO s").unwrap();
    insert(&c, "t", &mut m, 30_001, 30_001);
    c.execute_batch("COMMIT").unwrap();
    assert_eq!(generation(&c, "t"), 0);
    assert_matches(&c, "t", &m);
    assert_eq!(check(&c, "t"), "ok");

    // A statement that fails after a compaction in the same transaction rolls back only itself. Both
    // statements write several rows, so SQLite gives each a statement savepoint (the same index, one
    // after the other).
    c.execute_batch("BEGIN").unwrap();
    insert(&c, "t", &mut m, 35_000, 35_000);
    c.execute(
        "INSERT INTO t(t) SELECT 'optimize' FROM (SELECT 1 UNION ALL SELECT 2)",
        [],
    )
    .unwrap();
    let dup = c.execute(
        "INSERT INTO t(rowid, v, tag) VALUES (35002, '[0,1,0,0,0,0,0,0,0,0,0,0,0,0,0,0]', 'x'), (35000, '[1,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0]', 'dup')",
        [],
    );
    assert!(dup.is_err());
    assert_matches(&c, "t", &m);
    insert(&c, "t", &mut m, 35_001, 35_001);
    c.execute_batch("COMMIT").unwrap();
    assert_eq!(generation(&c, "t"), 2);
    assert_matches(&c, "t", &m);
    assert_eq!(check(&c, "t"), "ok");
    drop(c);
    let c = open(&db);
    assert_matches(&c, "t", &m);

    // A compaction inside a released savepoint commits; a savepoint after it rolls back alone.
    c.execute_batch("BEGIN; SAVEPOINT a").unwrap();
    c.execute("DELETE FROM t WHERE rowid = 1", []).unwrap();
    m.remove(&1);
    optimize(&c, "t");
    c.execute_batch("RELEASE a; SAVEPOINT b").unwrap();
    let mut scratch = m.clone();
    insert(&c, "t", &mut scratch, 40_000, 40_000);
    c.execute_batch("ROLLBACK TO b").unwrap();
    insert(&c, "t", &mut m, 40_001, 40_001);
    c.execute_batch("COMMIT").unwrap();
    assert_eq!(generation(&c, "t"), 3);
    assert_matches(&c, "t", &m);
    assert_eq!(check(&c, "t"), "ok");
    // The rolled-back generation-1 file of the first attempt was replaced; after the next write only
    // generation 1 remains.
    insert(&c, "t", &mut m, 40_002, 40_002);
    let files = sidecar_files(&db);
    assert_eq!(files.len(), 1, "{files:?}");
    drop(c);
    let c = open(&db);
    assert_matches(&c, "t", &m);
}

#[test]
fn optimize_in_memory_and_commands() {
    let c = mem();
    create(&c, "t");
    let mut m = Model::new();
    churn(&c, "t", &mut m);
    optimize(&c, "t");
    assert_matches(&c, "t", &m);
    assert_eq!(check(&c, "t"), "ok");
    c.execute("INSERT INTO t(t) VALUES ('integrity-check')", [])
        .unwrap();
    let e = c
        .execute("INSERT INTO t(t) VALUES ('vacuum')", [])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("unknown command 'vacuum'") && e.contains("'optimize'"),
        "{e}"
    );
    let e = c
        .execute("INSERT INTO t(t) VALUES (42)", [])
        .unwrap_err()
        .to_string();
    assert!(e.contains("command must be text"), "{e}");
    let e = c
        .query_row("SELECT phenix_check('nope')", [], |r| r.get::<_, String>(0))
        .unwrap_err()
        .to_string();
    assert!(e.contains("nope is not a phenix table"), "{e}");
    c.execute_batch("CREATE TABLE plain(x)").unwrap();
    let e = c
        .query_row("SELECT phenix_check('plain')", [], |r| {
            r.get::<_, String>(0)
        })
        .unwrap_err()
        .to_string();
    assert!(e.contains("plain is not a phenix table"), "{e}");
    let e = c
        .query_row("SELECT phenix_check(NULL)", [], |r| r.get::<_, String>(0))
        .unwrap_err()
        .to_string();
    assert!(e.contains("NULL"), "{e}");
}

/// A fresh database with table `t` (and `u`, same layout), 50 rows each; returns the sidecar of `t`.
fn damaged_setup(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let db = dir.join("t.db");
    let c = open(&db);
    create(&c, "t");
    let mut m = Model::new();
    for i in 1..=50 {
        insert(&c, "t", &mut m, i, i as u64);
    }
    let id: String = c
        .query_row("SELECT value FROM t_info WHERE key = 'table_id'", [], |r| {
            r.get(0)
        })
        .unwrap();
    create(&c, "u");
    for i in 1..=50 {
        insert(&c, "u", &mut m, i, 100 + i as u64);
    }
    assert_eq!(check(&c, "t"), "ok");
    let mut side = db.as_os_str().to_owned();
    side.push(format!("-phenix/{id}.g0.phx"));
    (db, side.into())
}

/// Copies the vector file of `table` (generation 0) over `dest`.
fn copy_sidecar_of(db: &Path, table: &str, dest: &Path) {
    let id: String = open(db)
        .query_row(
            &format!("SELECT value FROM {table}_info WHERE key = 'table_id'"),
            [],
            |r| r.get(0),
        )
        .unwrap();
    let mut other = db.as_os_str().to_owned();
    other.push(format!("-phenix/{id}.g0.phx"));
    std::fs::copy(std::path::PathBuf::from(other), dest).unwrap();
}

#[test]
fn corruption_is_reported_by_check_and_on_open() {
    type Damage = fn(&Path, &Path);
    let cases: &[(&str, Damage, &str)] = &[
        (
            "truncated sidecar",
            |_db, side| {
                let f = std::fs::OpenOptions::new().write(true).open(side).unwrap();
                f.set_len(HEADER + 49 * STRIDE).unwrap();
            },
            "49",
        ),
        (
            "flipped header byte",
            |_db, side| {
                let mut b = std::fs::read(side).unwrap();
                b[20] ^= 0x40;
                std::fs::write(side, b).unwrap();
            },
            "checksum",
        ),
        (
            "missing sidecar",
            |_db, side| std::fs::remove_file(side).unwrap(),
            "No such file",
        ),
        (
            "sidecar of another table",
            |db, side| copy_sidecar_of(db, "u", side),
            "belongs to another table",
        ),
        (
            "wrong dimension",
            |db, side| {
                open(db)
                    .execute_batch(
                        "CREATE VIRTUAL TABLE w USING phenix(v float16[8]);
                         INSERT INTO w(v) VALUES ('[1,2,3,4,5,6,7,8]');",
                    )
                    .unwrap();
                copy_sidecar_of(db, "w", side)
            },
            "float16[8]",
        ),
        (
            "row pointing past the file",
            |db, _| {
                open(db)
                    .execute("UPDATE t_rows SET slot = 999 WHERE rowid = 7", [])
                    .unwrap();
            },
            "point past",
        ),
        (
            "two rows on one slot",
            |db, _| {
                open(db)
                    .execute("UPDATE t_rows SET slot = 3 WHERE rowid = 9", [])
                    .unwrap();
            },
            "more than one row",
        ),
        (
            "damaged table id",
            |db, _| {
                open(db)
                    .execute("UPDATE t_info SET value = 'zz' WHERE key = 'table_id'", [])
                    .unwrap();
            },
            "table_id",
        ),
        (
            "missing committed count",
            |db, _| {
                open(db)
                    .execute("DELETE FROM t_info WHERE key = 'committed'", [])
                    .unwrap();
            },
            "committed",
        ),
    ];
    for (i, (what, damage, needle)) in cases.iter().enumerate() {
        let d = TempDir::new(&format!("corrupt-{i}"));
        let (db, side) = damaged_setup(&d.0);
        damage(&db, &side);
        let c = open(&db);
        let report = check(&c, "t");
        assert!(
            report != "ok" && report.contains(needle),
            "{what}: phenix_check said {report:?}, expected a line containing {needle:?}"
        );
        // The other table is unaffected.
        if *what != "sidecar of another table" {
            assert_eq!(check(&c, "u"), "ok", "{what}");
        }
        // Reading the damaged table fails with a clear error instead of answering wrongly.
        let r = c.query_row(
            "SELECT count(*) FROM t WHERE v MATCH '[1,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0]' AND k = 100",
            [],
            |r| r.get::<_, i64>(0),
        );
        let e = r.expect_err(what).to_string();
        assert!(
            e.contains("phenix table t") || e.contains("t_info"),
            "{what}: {e}"
        );
        let e = c
            .execute("INSERT INTO t(t) VALUES ('integrity-check')", [])
            .map(|_| ())
            .unwrap_err()
            .to_string();
        assert!(!e.is_empty(), "{what}");
    }
}

#[test]
fn backup_copies_the_database_and_its_vectors_consistently() {
    let d = TempDir::new("backup");
    let db = d.0.join("src.db");
    let c = open(&db);
    c.execute_batch(
        "PRAGMA journal_mode=WAL; CREATE TABLE plain(x); INSERT INTO plain VALUES (42);",
    )
    .unwrap();
    create(&c, "t");
    let mut m = Model::new();
    churn(&c, "t", &mut m);
    optimize(&c, "t");
    insert(&c, "t", &mut m, 7_000, 7_000);
    create(&c, "u");
    let mut mu = Model::new();
    for i in 1..=30 {
        insert(&c, "u", &mut mu, i, 500 + i as u64);
    }
    // An open write transaction on the calling connection is not part of the copy.
    c.execute_batch("BEGIN").unwrap();
    insert(&c, "t", &mut Model::new(), 8_000, 8_000);
    let dest = d.0.join("copy.db");
    let r: String = c
        .query_row("SELECT phenix_backup(?1)", [dest.to_str().unwrap()], |r| {
            r.get(0)
        })
        .unwrap();
    c.execute_batch("ROLLBACK").unwrap();
    let r: serde_json::Value = serde_json::from_str(&r).unwrap();
    assert_eq!(r["tables"], 2);
    assert_eq!(r["rows"].as_u64().unwrap(), (m.len() + mu.len()) as u64);
    // VACUUM INTO copies the database but not the vectors: its tables cannot be read.
    let vac = d.0.join("vacuum.db");
    c.execute("VACUUM INTO ?1", [vac.to_str().unwrap()])
        .unwrap();
    let e = open(&vac)
        .query_row("SELECT count(*) FROM t", [], |r| r.get::<_, i64>(0))
        .unwrap_err()
        .to_string();
    assert!(e.contains("phenix table t"), "{e}");
    drop(c);
    // The copy answers exactly as the source.
    let src = open(&db);
    let copy = open(&dest);
    assert_matches(&copy, "t", &m);
    assert_matches(&copy, "u", &mu);
    for s in 0..5u64 {
        let q = json(&rand_vec(77 + s, DIM));
        let knn = |c: &Connection| -> Vec<(i64, f64)> {
            c.prepare("SELECT rowid, distance FROM t WHERE v MATCH ?1 AND k = 20")
                .unwrap()
                .query_map([&q], |r| Ok((r.get(0)?, r.get(1)?)))
                .unwrap()
                .map(|r| r.unwrap())
                .collect()
        };
        assert_eq!(knn(&src), knn(&copy));
    }
    assert_eq!(check(&copy, "t"), "ok");
    assert_eq!(check(&copy, "u"), "ok");
    let x: i64 = copy
        .query_row("SELECT x FROM plain", [], |r| r.get(0))
        .unwrap();
    assert_eq!(x, 42);
    // The copy is independent: writing to it leaves the source alone.
    insert(&copy, "t", &mut Model::new(), 9_000, 9_000);
    assert_matches(&src, "t", &m);

    // Bad destinations and sources.
    let e = src
        .query_row("SELECT phenix_backup(?1)", [dest.to_str().unwrap()], |r| {
            r.get::<_, String>(0)
        })
        .unwrap_err()
        .to_string();
    assert!(e.contains("already exists"), "{e}");
    let e = mem()
        .query_row(
            "SELECT phenix_backup(?1)",
            [d.0.join("m.db").to_str().unwrap()],
            |r| r.get::<_, String>(0),
        )
        .unwrap_err()
        .to_string();
    assert!(e.contains("not a database file"), "{e}");
    src.execute_batch("CREATE VIEW v AS SELECT phenix_backup('x.db') AS r")
        .unwrap();
    let e = src
        .query_row("SELECT r FROM v", [], |r| r.get::<_, String>(0))
        .unwrap_err()
        .to_string();
    assert!(e.contains("unsafe use of phenix_backup"), "{e}");
    assert!(!Path::new("x.db").exists());
}

#[test]
fn backup_while_another_connection_writes_is_a_committed_state() {
    let d = TempDir::new("backup-live");
    let db = d.0.join("src.db");
    let c = open(&db);
    c.execute_batch("PRAGMA journal_mode=WAL").unwrap();
    create(&c, "t");
    // Transactions of 10 rows sharing a tag; every 7th also deletes an older group and compacts.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let db = db.clone();
        let stop = stop.clone();
        std::thread::spawn(move || {
            let w = open(&db);
            w.busy_timeout(std::time::Duration::from_secs(10)).unwrap();
            let mut tx = 0i64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                tx += 1;
                w.execute_batch("BEGIN IMMEDIATE").unwrap();
                for i in 0..10 {
                    let v = rand_vec((tx * 10 + i) as u64, DIM);
                    w.execute(
                        "INSERT INTO t(rowid, v, tag, note) VALUES (?1, ?2, ?3, ?2)",
                        params![tx * 10 + i, json(&v), format!("g{tx}")],
                    )
                    .unwrap();
                }
                if tx % 7 == 0 {
                    w.execute("DELETE FROM t WHERE tag = ?1", [format!("g{}", tx - 3)])
                        .unwrap();
                    w.execute("INSERT INTO t(t) VALUES ('optimize')", [])
                        .unwrap();
                }
                w.execute_batch("COMMIT").unwrap();
            }
            tx
        })
    };
    let mut copies = 0;
    for i in 0..8 {
        std::thread::sleep(std::time::Duration::from_millis(40));
        let dest = d.0.join(format!("copy{i}.db"));
        let r: rusqlite::Result<String> =
            c.query_row("SELECT phenix_backup(?1)", [dest.to_str().unwrap()], |r| {
                r.get(0)
            });
        if let Err(e) = &r {
            // The one expected failure: a compaction removed the file between snapshot and open.
            assert!(e.to_string().contains("phenix_backup"), "{e}");
            continue;
        }
        copies += 1;
        let copy = open(&dest);
        assert_eq!(check(&copy, "t"), "ok");
        let groups: Vec<(String, i64)> = copy
            .prepare("SELECT tag, count(*) FROM t GROUP BY tag")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .map(|r| r.unwrap())
            .collect();
        assert!(groups.iter().all(|(_, n)| *n == 10), "{groups:?}");
        // Every vector is the one its row was written with.
        let rows: Vec<(i64, Vec<u8>, String)> = copy
            .prepare("SELECT rowid, v, note FROM t")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .map(|r| r.unwrap())
            .collect();
        for (id, blob, note) in rows {
            let want: Vec<f32> = serde_json::from_str(&note).unwrap();
            assert_eq!(blob, json_f16_bytes(&want), "row {id}");
            assert_eq!(want, rand_vec(id as u64, DIM));
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let txs = writer.join().unwrap();
    assert!(copies >= 6, "{copies} of 8 backups succeeded");
    assert!(txs > 10, "{txs}");
}

/// A connection keeps its row map across other connections' commits: appends (in row-id order or
/// not) extend it, deletes / vector and row-id updates / compactions reload it, metadata-only updates
/// leave it. After every commit of the writer, the reader's rows and KNN equal the model; so do the
/// writer's own inside a later transaction that starts with a write (no read before it).
#[test]
fn other_connections_commits_are_taken_up() {
    let d = TempDir::new("follow");
    let db = d.0.join("t.db");
    let w = open(&db);
    create(&w, "t");
    let r = open(&db);
    let mut m = Model::new();
    for i in 1..=50 {
        insert(&w, "t", &mut m, i, i as u64);
    }
    assert_matches(&r, "t", &m);
    type Step = fn(&Connection, &mut Model);
    let steps: &[(&str, Step)] = &[
        ("append, rising row ids", |w, m| {
            for i in 100..110 {
                insert(w, "t", m, i, i as u64);
            }
        }),
        ("append, low and negative row ids", |w, m| {
            for i in [-5, 0, 51, 52] {
                insert(w, "t", m, i, (1_000 + i) as u64);
            }
        }),
        ("delete", |w, m| {
            w.execute("DELETE FROM t WHERE rowid IN (3, 100)", [])
                .unwrap();
            m.remove(&3);
            m.remove(&100);
        }),
        ("vector update", |w, m| {
            let v = rand_vec(4242, DIM);
            w.execute("UPDATE t SET v = ?1 WHERE rowid = 7", [json(&v)])
                .unwrap();
            m.get_mut(&7).unwrap().0 = json_f16r(&v);
        }),
        ("row id update", |w, m| {
            w.execute("UPDATE t SET rowid = 700 WHERE rowid = 8", [])
                .unwrap();
            let row = m.remove(&8).unwrap();
            m.insert(700, row);
        }),
        ("metadata update", |w, m| {
            w.execute("UPDATE t SET tag = 'z' WHERE rowid = 9", [])
                .unwrap();
            m.get_mut(&9).unwrap().1 = "z".into();
        }),
        ("compaction, then append", |w, m| {
            optimize(w, "t");
            insert(w, "t", m, 800, 800);
        }),
        ("append after a compaction", |w, m| {
            insert(w, "t", m, 801, 801)
        }),
    ];
    for (i, (what, step)) in steps.iter().enumerate() {
        step(&w, &mut m);
        if i % 2 == 0 {
            // The reader writes before it reads: its map must include the writer's commit.
            r.execute_batch("BEGIN").unwrap();
            insert(&r, "t", &mut m, 5_000, 5_000);
            assert_matches(&r, "t", &m);
            r.execute_batch("ROLLBACK").unwrap();
            m.remove(&5_000);
        }
        assert_matches(&r, "t", &m);
        assert_eq!(check(&r, "t"), "ok", "{what}");
        assert_matches(&w, "t", &m);
    }
}
