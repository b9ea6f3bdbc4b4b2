//! The persisted row-id map (format 2): the row-id file beside the vectors and `<t>_dead`. A reader
//! connection that keeps its live set across statements must follow another connection's inserts,
//! deletes, vector and rowid updates, rollbacks, savepoints and compactions exactly (checked against
//! a model of the rows and an f64 brute force); a new connection must map the file and give the same
//! answers; in-memory tables keep their live set in memory; and a damaged row-id file or `<t>_dead` is a
//! `SQLITE_CORRUPT_VTAB` error and a `phenix_check` line, never a SIGBUS or a wrong row.

mod common;
use common::*;
use rusqlite::{params, Connection};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

const DIM: usize = 4;

type Model = BTreeMap<i64, Vec<f32>>;

fn create(c: &Connection) {
    c.execute_batch("CREATE VIRTUAL TABLE t USING phenix(v float32[4] distance=l2, tag INTEGER)")
        .unwrap();
}

fn insert(c: &Connection, m: &mut Model, id: i64, seed: u64) {
    let v = xorshift_vec(seed, DIM);
    c.execute(
        "INSERT INTO t(rowid, v, tag) VALUES (?1, ?2, ?3)",
        params![id, json(&v), id % 3],
    )
    .unwrap();
    m.insert(id, v);
}

/// A file database in a fresh directory with table `t` holding rows 1..=rows, and its model.
fn table_with(dir: &str, rows: i64) -> (TempDir, PathBuf, Connection, Model) {
    let d = TempDir::new(dir);
    let db = d.0.join("f.db");
    let c = open(&db);
    create(&c);
    let mut m = Model::new();
    for i in 1..=rows {
        insert(&c, &mut m, i, i as u64);
    }
    (d, db, c, m)
}

/// The row ids a one-parameter query returns for the query vector `q`.
fn rowids(c: &Connection, sql: &str, q: &[f32]) -> Result<Vec<i64>, String> {
    c.prepare(sql)
        .map_err(|e| e.to_string())?
        .query_map([json(q)], |r| r.get(0))
        .map_err(|e| e.to_string())?
        .collect::<rusqlite::Result<_>>()
        .map_err(|e| e.to_string())
}

/// Every model row as (f64 squared L2 distance to `q`, rowid), nearest first, ties by rowid.
fn brute_force(m: &Model, q: &[f32]) -> Vec<(f64, i64)> {
    let mut want: Vec<(f64, i64)> = m
        .iter()
        .map(|(id, v)| {
            let d: f64 = v
                .iter()
                .zip(q)
                .map(|(a, b)| (*a as f64 - *b as f64).powi(2))
                .sum();
            (d, *id)
        })
        .collect();
    want.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    want
}

/// Every row by KNN (k = all), nearest first, against the model: the same rows exactly once, the
/// first ten in the order of an f64 brute force.
fn check_knn(c: &Connection, m: &Model, seed: u64) -> Result<(), String> {
    let q = xorshift_vec(seed ^ 0xABCD, DIM);
    let got = rowids(c, "SELECT rowid FROM t WHERE v MATCH ?1 AND k = 100000", &q)?;
    let want = brute_force(m, &q);
    let mut sorted = got.clone();
    sorted.sort_unstable();
    let ids: Vec<i64> = m.keys().copied().collect();
    if sorted != ids {
        return Err(format!("KNN rows {sorted:?}, model {ids:?}"));
    }
    let top: Vec<i64> = want.iter().take(10).map(|w| w.1).collect();
    if got[..top.len()] != top[..] {
        return Err(format!(
            "KNN order {:?}, brute force {top:?}",
            &got[..top.len()]
        ));
    }
    Ok(())
}

fn format_of(c: &Connection) -> i64 {
    c.query_row("SELECT value FROM t_info WHERE key = 'format'", [], |r| {
        r.get(0)
    })
    .unwrap()
}

fn dead_count(c: &Connection) -> i64 {
    c.query_row("SELECT count(*) FROM t_dead", [], |r| r.get(0))
        .unwrap()
}

fn check_ok(c: &Connection) {
    let s: String = c
        .query_row("SELECT phenix_check('t')", [], |r| r.get(0))
        .unwrap();
    assert_eq!(s, "ok");
}

/// The row-id file of the table's newest generation (the old one stays until the next write).
fn ids_file(db: &Path) -> PathBuf {
    let mut phx = sidecar_files(db);
    phx.sort_by_key(|p| {
        let n = p.file_stem().unwrap().to_string_lossy().into_owned();
        n.rsplit(".g").next().unwrap().parse::<u64>().unwrap()
    });
    phx.last().unwrap().with_extension("ids")
}

fn read_ids(p: &Path) -> Vec<i64> {
    let b = std::fs::read(p).unwrap();
    assert_eq!(&b[..8], b"PHNXIDS\0");
    b[64..]
        .chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

/// A reader connection that stays open follows every kind of write of another connection, in
/// rollback-journal and WAL mode; a new connection after each step agrees.
#[test]
fn a_reader_follows_every_write_of_another_connection() {
    for wal in [false, true] {
        let d = TempDir::new(&format!("rowid-map-follow-{wal}"));
        let db = d.0.join("f.db");
        let w = open(&db);
        if wal {
            w.execute_batch("PRAGMA journal_mode=WAL").unwrap();
        }
        create(&w);
        assert_eq!(format_of(&w), 2);
        let mut m = Model::new();
        for i in 1..=60 {
            insert(&w, &mut m, i, i as u64);
        }
        let r = open(&db);
        check_knn(&r, &m, 1).unwrap();
        let mut rng = 12345u64;
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let mut fresh = 1000i64;
        for step in 0..120u64 {
            let ids: Vec<i64> = m.keys().copied().collect();
            let pick = ids[(next() % ids.len() as u64) as usize];
            let what = next() % 6;
            let txn = next() % 3 == 0;
            if txn {
                w.execute_batch("BEGIN").unwrap();
            }
            match what {
                0 => {
                    fresh += 1;
                    insert(&w, &mut m, fresh, next());
                }
                1 | 2 => {
                    w.execute("DELETE FROM t WHERE rowid = ?1", [pick]).unwrap();
                    m.remove(&pick);
                }
                3 => {
                    let v = xorshift_vec(next(), DIM);
                    w.execute(
                        "UPDATE t SET v = ?1 WHERE rowid = ?2",
                        params![json(&v), pick],
                    )
                    .unwrap();
                    m.insert(pick, v);
                }
                4 => {
                    // A rowid change without a new vector moves the row to a new slot.
                    fresh += 1;
                    w.execute("UPDATE t SET rowid = ?1 WHERE rowid = ?2", [fresh, pick])
                        .unwrap();
                    let v = m.remove(&pick).unwrap();
                    m.insert(fresh, v);
                }
                _ => {
                    w.execute("UPDATE t SET tag = tag + 1 WHERE rowid = ?1", [pick])
                        .unwrap();
                }
            }
            if txn {
                w.execute_batch("COMMIT").unwrap();
            }
            if step % 40 == 39 {
                w.execute_batch("INSERT INTO t(t) VALUES ('optimize')")
                    .unwrap();
                assert_eq!(dead_count(&w), 0, "compaction empties t_dead");
            }
            check_knn(&r, &m, step)
                .unwrap_or_else(|e| panic!("wal {wal} step {step}: reader: {e}"));
            check_knn(&w, &m, step)
                .unwrap_or_else(|e| panic!("wal {wal} step {step}: writer: {e}"));
            if step % 20 == 0 {
                let n = open(&db);
                check_knn(&n, &m, step)
                    .unwrap_or_else(|e| panic!("wal {wal} step {step}: new connection: {e}"));
                check_ok(&n);
            }
        }
        check_ok(&r);
        // The file holds each live row's row id at its slot.
        let ids = read_ids(&ids_file(&db));
        let rows: Vec<(i64, i64)> = w
            .prepare("SELECT rowid, slot FROM t_rows")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .map(|r| r.unwrap())
            .collect();
        for (rowid, slot) in rows {
            assert_eq!(ids[slot as usize], rowid);
        }
    }
}

/// Deletes rolled back (whole transaction or to a savepoint) leave no `t_dead` entry and no hole in
/// any connection's live set; the deletes that stay are seen by a reader after the commit.
#[test]
fn rolled_back_deletes_and_savepoints() {
    let (_d, db, w, mut m) = table_with("rowid-map-rollback", 20);
    let r = open(&db);
    check_knn(&r, &m, 0).unwrap();

    w.execute_batch("BEGIN; DELETE FROM t WHERE rowid = 3; DELETE FROM t WHERE rowid = 4;")
        .unwrap();
    assert_eq!(dead_count(&w), 2);
    w.execute_batch("ROLLBACK").unwrap();
    assert_eq!(dead_count(&w), 0);
    check_knn(&w, &m, 1).unwrap();
    check_knn(&r, &m, 1).unwrap();

    w.execute_batch(
        "BEGIN; SAVEPOINT a; DELETE FROM t WHERE rowid = 5; UPDATE t SET v = '[9,9,9,9]' WHERE rowid = 6;",
    )
    .unwrap();
    w.execute_batch("ROLLBACK TO a").unwrap();
    // The transaction goes on after the partial rollback.
    w.execute_batch(
        "DELETE FROM t WHERE rowid = 7; SAVEPOINT b; DELETE FROM t WHERE rowid = 8; RELEASE b;",
    )
    .unwrap();
    insert(&w, &mut m, 100, 100);
    m.remove(&7);
    m.remove(&8);
    check_knn(&w, &m, 2).unwrap();
    // Before the commit the reader sees the committed state.
    let mut before = m.clone();
    before.remove(&100);
    before.insert(7, xorshift_vec(7, DIM));
    before.insert(8, xorshift_vec(8, DIM));
    check_knn(&r, &before, 2).unwrap();
    w.execute_batch("COMMIT").unwrap();
    assert_eq!(dead_count(&w), 2);
    check_knn(&r, &m, 3).unwrap();
    check_knn(&open(&db), &m, 3).unwrap();
    check_ok(&r);

    // A compaction rolled back (to a savepoint before it) leaves the old file and t_dead in force.
    w.execute_batch("BEGIN; SAVEPOINT c; INSERT INTO t(t) VALUES ('optimize');")
        .unwrap();
    assert_eq!(dead_count(&w), 0);
    w.execute_batch("ROLLBACK TO c; DELETE FROM t WHERE rowid = 9; COMMIT;")
        .unwrap();
    m.remove(&9);
    assert_eq!(dead_count(&w), 3);
    check_knn(&w, &m, 4).unwrap();
    check_knn(&r, &m, 4).unwrap();
    check_knn(&open(&db), &m, 4).unwrap();
    check_ok(&w);
}

/// Compaction renumbers the slots: the new generation's row-id file lists the live rows in slot
/// order, `t_dead` is empty, and the old generation's two files go at the next write.
#[test]
fn compaction_rewrites_the_map_and_empties_the_dead_list() {
    let d = TempDir::new("rowid-map-compact");
    let db = d.0.join("f.db");
    let w = open(&db);
    create(&w);
    let mut m = Model::new();
    for i in 1..=30 {
        insert(&w, &mut m, i * 10, i as u64);
    }
    let r = open(&db);
    check_knn(&r, &m, 0).unwrap();
    for i in [20, 50, 70, 300] {
        w.execute("DELETE FROM t WHERE rowid = ?1", [i]).unwrap();
        m.remove(&i);
    }
    assert_eq!(dead_count(&w), 4);
    w.execute_batch("INSERT INTO t(t) VALUES ('optimize')")
        .unwrap();
    assert_eq!(dead_count(&w), 0);
    let ids = read_ids(&ids_file(&db));
    assert_eq!(ids, m.keys().copied().collect::<Vec<_>>());
    check_knn(&r, &m, 1).unwrap();
    w.execute("DELETE FROM t WHERE rowid = 10", []).unwrap();
    m.remove(&10);
    let mut dir = db.as_os_str().to_owned();
    dir.push("-phenix");
    let mut names: Vec<String> = std::fs::read_dir(PathBuf::from(dir))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names.len(), 2, "{names:?}");
    assert!(
        names[0].ends_with(".g1.ids") && names[1].ends_with(".g1.phx"),
        "{names:?}"
    );
    check_knn(&r, &m, 2).unwrap();
    check_ok(&r);
}

/// In-memory tables keep their live set in memory (format 1, no `t_dead`); two connections of a
/// shared in-memory database still follow each other's deletes.
#[test]
fn in_memory_tables_keep_the_map_in_memory() {
    let uri = "file:rowidmapmem?mode=memory&cache=shared";
    let flags = rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE
        | rusqlite::OpenFlags::SQLITE_OPEN_CREATE
        | rusqlite::OpenFlags::SQLITE_OPEN_URI;
    let a = Connection::open_with_flags(uri, flags).unwrap();
    phenix_sql::register(&a).unwrap();
    let b = Connection::open_with_flags(uri, flags).unwrap();
    phenix_sql::register(&b).unwrap();
    create(&a);
    assert_eq!(format_of(&a), 1);
    let has_dead: i64 = a
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE name = 't_dead'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(has_dead, 0);
    let mut m = Model::new();
    for i in 1..=15 {
        insert(&a, &mut m, i, i as u64);
    }
    check_knn(&b, &m, 0).unwrap();
    a.execute("DELETE FROM t WHERE rowid = 4", []).unwrap();
    m.remove(&4);
    a.execute("UPDATE t SET rowid = 40 WHERE rowid = 5", [])
        .unwrap();
    let v = m.remove(&5).unwrap();
    m.insert(40, v);
    check_knn(&b, &m, 1).unwrap();
    check_knn(&a, &m, 1).unwrap();

    let t = mem();
    create(&t);
    assert_eq!(format_of(&t), 1);
}

/// A table whose stored state is made with `f`, opened by a new connection: the error of its first
/// KNN (which must fail) and phenix_check's report.
fn damaged(name: &str, f: impl FnOnce(&Path, &Connection)) -> (rusqlite::Error, String) {
    let d = TempDir::new(&format!("rowid-map-damage-{name}"));
    let db = d.0.join("f.db");
    let w = open(&db);
    create(&w);
    let mut m = Model::new();
    for i in 1..=12 {
        insert(&w, &mut m, i, i as u64);
    }
    w.execute("DELETE FROM t WHERE rowid = 2", []).unwrap();
    f(&db, &w);
    drop(w);
    let c = open(&db);
    let e = c
        .prepare("SELECT rowid FROM t WHERE v MATCH '[0,0,0,0]' AND k = 100")
        .and_then(|mut s| {
            s.query_map([], |r| r.get::<_, i64>(0))?
                .collect::<rusqlite::Result<Vec<_>>>()
        })
        .expect_err("a KNN over a damaged map must fail");
    let check: String = c
        .query_row("SELECT phenix_check('t')", [], |r| r.get(0))
        .unwrap();
    (e, check)
}

fn is_corrupt(e: &rusqlite::Error) -> bool {
    e.sqlite_error()
        .is_some_and(|f| f.extended_code == rusqlite::ffi::SQLITE_CORRUPT_VTAB)
}

#[test]
fn a_damaged_row_id_file_is_a_corrupt_error() {
    let patch = |db: &Path, at: usize, bytes: &[u8]| {
        let p = ids_file(db);
        let mut b = std::fs::read(&p).unwrap();
        b[at..at + bytes.len()].copy_from_slice(bytes);
        std::fs::write(&p, b).unwrap();
    };
    // Header: magic, checksum, another table's id.
    for (name, at, bytes) in [
        ("magic", 0usize, &b"XXXX"[..]),
        ("crc", 41, &[0x55][..]),
        ("table-id", 20, &[1, 2, 3][..]),
    ] {
        let (e, check) = damaged(name, |db, _| patch(db, at, bytes));
        assert!(is_corrupt(&e), "{name}: {e}");
        assert!(e.to_string().contains("row-id file"), "{name}: {e}");
        assert!(check.contains("row-id file"), "{name}: {check}");
    }
    // Shorter than the committed rows.
    let (e, check) = damaged("short", |db, _| {
        let p = ids_file(db);
        let f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
        f.set_len(64 + 8 * 5).unwrap();
    });
    assert!(is_corrupt(&e), "{e}");
    assert!(check.contains(".ids"), "{check}");
    // Missing.
    let (e, check) = damaged("missing", |db, _| {
        std::fs::remove_file(ids_file(db)).unwrap()
    });
    assert!(is_corrupt(&e), "{e}");
    assert!(check.contains("missing"), "{check}");
    // A valid header over wrong row ids (two entries swapped): the rows KNN would return under the
    // wrong ids are refused, and phenix_check names the disagreement.
    let (e, check) = damaged("swapped", |db, _| {
        let p = ids_file(db);
        let mut b = std::fs::read(&p).unwrap();
        let (x, y) = (64 + 8 * 4, 64 + 8 * 7);
        let tmp: Vec<u8> = b[x..x + 8].to_vec();
        b.copy_within(y..y + 8, x);
        b[y..y + 8].copy_from_slice(&tmp);
        std::fs::write(&p, b).unwrap();
    });
    assert!(is_corrupt(&e), "{e}");
    assert!(
        check.contains("disagrees with t_rows at 2 slot(s)"),
        "{check}"
    );
    // t_dead losing an entry: the deleted slot would come back as a row.
    let (e, check) = damaged("dead-lost", |_, c| {
        c.execute("DELETE FROM t_dead", []).unwrap();
    });
    assert!(is_corrupt(&e), "{e}");
    assert!(check.contains("not listed in t_dead"), "{check}");
    // t_dead naming a slot past the committed rows.
    let (e, check) = damaged("dead-range", |_, c| {
        c.execute("INSERT INTO t_dead(slot) VALUES (1000)", [])
            .unwrap();
    });
    assert!(is_corrupt(&e), "{e}");
    assert!(check.contains("t_dead: 1 entr"), "{check}");
}

/// `phenix_retrieve_all` ranks without the cursor: its rows are checked against `t_rows` too.
#[test]
fn retrieve_all_refuses_rows_of_a_damaged_map() {
    let (_d, db, w, _m) = table_with("rowid-map-retrieve-all", 12);
    let all = |c: &Connection| -> rusqlite::Result<Vec<(i64, i64)>> {
        c.prepare("SELECT query_rowid, rowid FROM phenix_retrieve_all('t', 't', 12)")?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect()
    };
    assert_eq!(all(&w).unwrap().len(), 144);
    drop(w);
    let p = ids_file(&db);
    let mut b = std::fs::read(&p).unwrap();
    b[64 + 8 * 3..64 + 8 * 4].copy_from_slice(&999i64.to_le_bytes());
    std::fs::write(&p, b).unwrap();
    let e = all(&open(&db)).expect_err("a row id the table does not hold");
    assert!(is_corrupt(&e), "{e}");
    assert!(e.to_string().contains("row 999"), "{e}");
    // The damaged table as the query side only (an ordinary target) is refused as well.
    let c = open(&db);
    c.execute_batch("CREATE VIRTUAL TABLE u USING phenix(v float32[4] distance=l2)")
        .unwrap();
    c.execute("INSERT INTO u(rowid, v) VALUES (1, '[0,0,0,0]')", [])
        .unwrap();
    let e = c
        .prepare("SELECT query_rowid FROM phenix_retrieve_all('u', 't', 1)")
        .and_then(|mut s| {
            s.query_map([], |r| r.get::<_, i64>(0))?
                .collect::<rusqlite::Result<Vec<_>>>()
        })
        .expect_err("query rows of a damaged map");
    assert!(is_corrupt(&e), "{e}");
}

/// A reader holding a map of the row-id file when another program truncates it gets an error at its
/// next statement (the length is checked per statement), not a SIGBUS.
#[test]
fn a_row_id_file_truncated_under_a_reader_is_an_error() {
    let (_d, db, _w, m) = table_with("rowid-map-truncated", 2000);
    let r = open(&db);
    check_knn(&r, &m, 0).unwrap();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(ids_file(&db))
        .unwrap();
    f.set_len(64).unwrap();
    let e = r
        .query_row(
            "SELECT rowid FROM t WHERE v MATCH '[0,0,0,0]' AND k = 3",
            [],
            |r| r.get::<_, i64>(0),
        )
        .expect_err("truncated under the reader");
    assert!(is_corrupt(&e), "{e}");
}

/// Old tables (format 1, no row-id file) keep opening and working: their live set is read from
/// `<t>_rows` on open, as before; writes keep them format 1.
#[test]
fn format_1_tables_keep_working() {
    let (_d, db, w, mut m) = table_with("rowid-map-format1", 10);
    // Make it a format-1 table as an older phenix wrote it: no t_dead, no row-id file.
    w.execute_batch("UPDATE t_info SET value = 1 WHERE key = 'format'; DROP TABLE t_dead;")
        .unwrap();
    drop(w);
    std::fs::remove_file(ids_file(&db)).unwrap();
    let w = open(&db);
    let r = open(&db);
    check_knn(&r, &m, 0).unwrap();
    w.execute("DELETE FROM t WHERE rowid = 3", []).unwrap();
    m.remove(&3);
    w.execute("UPDATE t SET rowid = 30 WHERE rowid = 4", [])
        .unwrap();
    let v = m.remove(&4).unwrap();
    m.insert(30, v);
    insert(&w, &mut m, 11, 11);
    w.execute_batch("INSERT INTO t(t) VALUES ('optimize')")
        .unwrap();
    check_knn(&r, &m, 1).unwrap();
    check_knn(&w, &m, 1).unwrap();
    assert_eq!(format_of(&w), 1);
    check_ok(&r);
}

/// An IVF-indexed table: a reader's index searches (every list probed, so the answer must equal exact
/// search) follow another connection's deletes, rowid moves, inserts and compaction through the mapped
/// live set, and a damaged map is refused on that path too.
#[test]
fn ivf_searches_use_the_mapped_live_set() {
    let d = TempDir::new("rowid-map-ivf");
    let db = d.0.join("f.db");
    let w = open(&db);
    w.execute_batch(
        "CREATE VIRTUAL TABLE t USING phenix(v float32[4] distance=l2, tag INTEGER, index=ivf(lists=4))",
    )
    .unwrap();
    let mut m = Model::new();
    w.execute_batch("BEGIN").unwrap();
    for i in 1..=300 {
        insert(&w, &mut m, i, i as u64);
    }
    w.execute_batch("COMMIT").unwrap();
    w.execute("INSERT INTO t(t) VALUES ('build-index')", [])
        .unwrap();
    let r = open(&db);
    let ivf = |c: &Connection, m: &Model, seed: u64| -> Result<(), String> {
        let q = xorshift_vec(seed ^ 0x5A5A, DIM);
        let got = rowids(
            c,
            "SELECT rowid FROM t WHERE v MATCH ?1 AND k = 10 AND nprobe = 4",
            &q,
        )?;
        let want = brute_force(m, &q);
        let want: Vec<i64> = want.iter().take(10).map(|w| w.1).collect();
        if got != want {
            return Err(format!("IVF {got:?}, brute force {want:?}"));
        }
        Ok(())
    };
    ivf(&r, &m, 0).unwrap();
    for step in 0..30u64 {
        let pick = *m.keys().nth((step * 7 % m.len() as u64) as usize).unwrap();
        match step % 4 {
            0 | 1 => {
                w.execute("DELETE FROM t WHERE rowid = ?1", [pick]).unwrap();
                m.remove(&pick);
            }
            2 => {
                let to = 10_000 + step as i64;
                w.execute("UPDATE t SET rowid = ?1 WHERE rowid = ?2", [to, pick])
                    .unwrap();
                let v = m.remove(&pick).unwrap();
                m.insert(to, v);
            }
            _ => insert(&w, &mut m, 20_000 + step as i64, 77 + step),
        }
        if step == 20 {
            w.execute_batch("INSERT INTO t(t) VALUES ('optimize')")
                .unwrap();
        }
        ivf(&r, &m, step).unwrap_or_else(|e| panic!("step {step}: reader: {e}"));
        ivf(&open(&db), &m, step).unwrap_or_else(|e| panic!("step {step}: new connection: {e}"));
    }
    check_ok(&r);
    drop((w, r));
    // A row id changed under a valid header: the index path refuses it as the exact path does.
    let p = ids_file(&db);
    let mut b = std::fs::read(&p).unwrap();
    for s in 0..(b.len() - 64) / 8 {
        b[64 + 8 * s..72 + 8 * s].copy_from_slice(&(500_000 + s as i64).to_le_bytes());
    }
    std::fs::write(&p, b).unwrap();
    let e = ivf(&open(&db), &m, 99).expect_err("every row id wrong");
    assert!(e.contains("row-id file"), "{e}");
}
