//! Regression tests for defects found by adversarial testing: compaction inside savepoints, crafted
//! shadow tables, in-memory databases of every kind (`:memory:`, deserialized images, the memdb VFS,
//! shared cache, copies made with the backup API), backups to URIs, and wrong results at the edges of
//! the planner (collations, IN lists, rowid constraints, distance bounds, extreme values).
//!
//! Each test is named after the behaviour it guards and compares with an independent reference (an
//! ordinary SQLite table holding the same rows, or f64 brute force).

mod common;
use common::*;
use rusqlite::{params, Connection, OpenFlags};
use std::collections::BTreeMap;
use std::path::Path;

/// The error message of `sql`, or `None` when it succeeds.
fn err_of(c: &Connection, sql: &str) -> Option<String> {
    c.execute_batch(sql).err().map(|e| e.to_string())
}

fn ids(c: &Connection, sql: &str) -> Vec<i64> {
    c.prepare(sql)
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(|r| r.unwrap())
        .collect()
}

fn try_ids(c: &Connection, sql: &str) -> rusqlite::Result<Vec<i64>> {
    c.prepare(sql)?
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<Vec<i64>>>()
}

fn pairs(c: &Connection, sql: &str) -> Vec<(i64, f64)> {
    c.prepare(sql)
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(|r| r.unwrap())
        .collect()
}

/// rowid → vector (float32 elements) of a float32 table, as SQL returns them.
fn vectors_f32(c: &Connection, t: &str) -> BTreeMap<i64, Vec<f32>> {
    c.prepare(&format!("SELECT rowid, v FROM {t}"))
        .unwrap()
        .query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?)))
        .unwrap()
        .map(|r| {
            let (id, b) = r.unwrap();
            (
                id,
                b.chunks_exact(4)
                    .map(|x| f32::from_le_bytes([x[0], x[1], x[2], x[3]]))
                    .collect(),
            )
        })
        .collect()
}

fn check(c: &Connection, t: &str) -> String {
    c.query_row("SELECT phenix_check(?1)", [t], |r| r.get(0))
        .unwrap()
}

// ---------------------------------------------------------------------------------------------------
// Compaction inside savepoints

/// `SAVEPOINT s; optimize; INSERT; ROLLBACK TO s; RELEASE s` commits the table as it was before the
/// savepoint; the file and the shadow tables agree on reopen.
#[test]
fn compaction_rolled_back_to_a_transaction_savepoint_keeps_the_committed_rows() {
    let d = TempDir::new("adv-sp1");
    let path = d.0.join("a.db");
    let c = open(&path);
    c.execute_batch(
        "CREATE VIRTUAL TABLE t USING phenix(v float16[3] distance=l2);
         INSERT INTO t(rowid, v) VALUES (100, '[5,5,5]');
         SAVEPOINT s; INSERT INTO t(t) VALUES ('optimize'); INSERT INTO t(rowid, v) VALUES (1, '[1,2,3]');
         ROLLBACK TO s; RELEASE s;",
    )
    .unwrap();
    assert_eq!(ids(&c, "SELECT rowid FROM t"), vec![100]);
    drop(c);
    let c = open(&path);
    assert_eq!(check(&c, "t"), "ok");
    assert_eq!(
        ids(&c, "SELECT rowid FROM t WHERE v MATCH '[0,0,0]' AND k = 5"),
        vec![100]
    );
}

/// `BEGIN; SAVEPOINT s; UPDATE …; optimize; ROLLBACK TO s; COMMIT`: the writing connection and a new
/// connection both read the vector from before the savepoint.
#[test]
fn compaction_rolled_back_to_a_savepoint_restores_the_updated_vector() {
    let d = TempDir::new("adv-sp2");
    let path = d.0.join("a.db");
    let c = open(&path);
    c.execute_batch(
        "CREATE VIRTUAL TABLE t USING phenix(v float32[3] distance=l2);
         INSERT INTO t(rowid, v) VALUES (1, '[1,1,1]');
         BEGIN; SAVEPOINT s; UPDATE t SET v = '[2,2,2]' WHERE rowid = 1;
         INSERT INTO t(t) VALUES ('optimize'); ROLLBACK TO s; COMMIT;",
    )
    .unwrap();
    assert_eq!(vectors_f32(&c, "t")[&1], vec![1.0, 1.0, 1.0]);
    let c2 = open(&path);
    assert_eq!(vectors_f32(&c2, "t")[&1], vec![1.0, 1.0, 1.0]);
    assert_eq!(check(&c2, "t"), "ok");
}

/// A compaction released from an inner savepoint and rolled back with the outer one is undone whole:
/// KNN still finds every row and the next INSERT changes no other row's vector.
#[test]
fn compaction_released_then_rolled_back_with_the_outer_savepoint_is_undone() {
    let d = TempDir::new("adv-sp3");
    let path = d.0.join("a.db");
    let c = open(&path);
    c.execute_batch(
        "CREATE VIRTUAL TABLE t USING phenix(v float32[3] distance=l2);
         INSERT INTO t(rowid, v) VALUES (8, '[8,8,8]'), (9, '[9,9,9]');
         DELETE FROM t WHERE rowid = 8;
         SAVEPOINT a; SAVEPOINT b; INSERT INTO t(t) VALUES ('optimize'); RELEASE b; ROLLBACK TO a; RELEASE a;",
    )
    .unwrap();
    assert_eq!(check(&c, "t"), "ok");
    assert_eq!(
        ids(&c, "SELECT rowid FROM t WHERE v MATCH '[0,0,0]' AND k = 5"),
        vec![9]
    );
    c.execute_batch("INSERT INTO t(rowid, v) VALUES (10, '[1,1,1]')")
        .unwrap();
    let v = vectors_f32(&c, "t");
    assert_eq!(v[&9], vec![9.0, 9.0, 9.0]);
    assert_eq!(v[&10], vec![1.0, 1.0, 1.0]);
    drop(c);
    let c = open(&path);
    assert_eq!(check(&c, "t"), "ok");
    assert_eq!(vectors_f32(&c, "t")[&9], vec![9.0, 9.0, 9.0]);
}

// ---------------------------------------------------------------------------------------------------
// Crafted shadow tables

fn table_id(c: &Connection, t: &str) -> String {
    c.query_row(
        &format!("SELECT value FROM {t}_info WHERE key = 'table_id'"),
        [],
        |r| r.get(0),
    )
    .unwrap()
}

/// Two tables whose `_info` claim one table id are refused (open and phenix_check), and nothing
/// truncates the other table's file; t1 keeps answering from its own rows after t2 is dropped.
#[test]
fn two_tables_claiming_one_table_id_are_refused_and_never_crash() {
    let d = TempDir::new("adv-sameid");
    let path = d.0.join("a.db");
    let c = open(&path);
    c.execute_batch(
        "CREATE VIRTUAL TABLE t1 USING phenix(v float32[4] distance=l2);
         CREATE VIRTUAL TABLE t2 USING phenix(v float32[4] distance=l2);",
    )
    .unwrap();
    c.execute_batch("BEGIN").unwrap();
    for i in 0..2000 {
        c.execute(
            "INSERT INTO t1(rowid, v) VALUES (?1, ?2)",
            params![i + 1, json(&rand_vec(i as u64, 4))],
        )
        .unwrap();
    }
    c.execute_batch("COMMIT").unwrap();
    let id1 = table_id(&c, "t1");
    c.execute(
        "UPDATE t2_info SET value = ?1 WHERE key = 'table_id'",
        [&id1],
    )
    .unwrap();
    drop(c);
    let c = open(&path);
    let p1 = check(&c, "t1");
    let p2 = check(&c, "t2");
    assert!(
        p1.contains("table id") && p2.contains("table id"),
        "{p1} / {p2}"
    );
    let e = err_of(&c, "INSERT INTO t2(rowid, v) VALUES (1, '[1,2,3,4]')")
        .expect("a write into a table sharing another's id must fail");
    assert!(e.contains("table id"), "{e}");
    assert!(try_ids(
        &c,
        "SELECT rowid FROM t1 WHERE v MATCH '[0,0,0,0]' AND k = 3"
    )
    .is_err());
    // The way out: drop the impostor; t1 is whole.
    c.execute_batch("DROP TABLE t2").unwrap();
    let c2 = open(&path);
    assert_eq!(check(&c2, "t1"), "ok");
    assert_eq!(
        ids(&c2, "SELECT count(*) FROM t1 WHERE v MATCH '[0,0,0,0]'"),
        vec![2000]
    );
}

/// A vector file shrunk under a live mapping (by something outside phenix) gives an error at the
/// next query, never SIGBUS.
#[test]
fn a_vector_file_shrunk_under_a_reader_gives_an_error_not_a_fault() {
    let d = TempDir::new("adv-shrink");
    let path = d.0.join("a.db");
    let c = open(&path);
    c.execute_batch(
        "CREATE VIRTUAL TABLE t USING phenix(v float32[16] distance=l2); CREATE TABLE other(x);",
    )
    .unwrap();
    c.execute_batch("BEGIN").unwrap();
    for i in 0..2000 {
        c.execute(
            "INSERT INTO t(rowid, v) VALUES (?1, ?2)",
            params![i + 1, json(&rand_vec(i as u64, 16))],
        )
        .unwrap();
    }
    c.execute_batch("COMMIT").unwrap();
    let q = json(&rand_vec(7, 16));
    let n = ids(
        &c,
        &format!("SELECT rowid FROM t WHERE v MATCH '{q}' AND k = 3"),
    )
    .len();
    assert_eq!(n, 3);
    let dir = d.0.join("a.db-phenix");
    let file = std::fs::read_dir(&dir)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&file)
        .unwrap()
        .set_len(4096 + 64 * 10)
        .unwrap();
    // Another connection commits (to an ordinary table), so the reader refreshes.
    let w = open(&path);
    w.execute_batch("INSERT INTO other VALUES (1)").unwrap();
    let r = try_ids(
        &c,
        &format!("SELECT rowid FROM t WHERE v MATCH '{q}' AND k = 3"),
    );
    let e = r
        .expect_err("a truncated file must be an error")
        .to_string();
    assert!(e.contains("phenix"), "{e}");
}

/// A crafted `committed` below the slots in use is refused at first use instead of answering
/// (an empty KNN) or letting the next INSERT overwrite a row's vector.
#[test]
fn a_committed_count_below_the_slots_in_use_is_refused() {
    let d = TempDir::new("adv-committed");
    let path = d.0.join("a.db");
    let c = open(&path);
    c.execute_batch("CREATE VIRTUAL TABLE t USING phenix(v float32[2] distance=l2)")
        .unwrap();
    for i in 1..=9 {
        c.execute(
            "INSERT INTO t(rowid, v) VALUES (?1, ?2)",
            params![i, format!("[{i},{i}]")],
        )
        .unwrap();
    }
    c.execute_batch("UPDATE t_info SET value = 0 WHERE key = 'committed'")
        .unwrap();
    drop(c);
    let c = open(&path);
    let e = try_ids(&c, "SELECT rowid FROM t WHERE v MATCH '[0,0]' AND k = 100")
        .expect_err("KNN must not answer from a damaged table")
        .to_string();
    assert!(e.contains("committed"), "{e}");
    assert!(err_of(&c, "INSERT INTO t(rowid, v) VALUES (100, '[7,7]')").is_some());
    assert!(check(&c, "t") != "ok");
}

/// A table whose sidecar file is missing can still be dropped, and phenix_check says how to recover.
#[test]
fn a_table_with_a_missing_sidecar_can_be_dropped() {
    let d = TempDir::new("adv-dropbroken");
    let path = d.0.join("a.db");
    let c = open(&path);
    c.execute_batch(
        "CREATE VIRTUAL TABLE t USING phenix(v float32[2] distance=l2);
         INSERT INTO t(rowid, v) VALUES (1, '[1,1]');",
    )
    .unwrap();
    drop(c);
    std::fs::remove_dir_all(d.0.join("a.db-phenix")).unwrap();
    let c = open(&path);
    assert!(try_ids(&c, "SELECT rowid FROM t").is_err());
    let p = check(&c, "t");
    assert!(
        p.contains("DROP TABLE"),
        "phenix_check should name the way out: {p}"
    );
    c.execute_batch("DROP TABLE t").unwrap();
    c.execute_batch(
        "CREATE VIRTUAL TABLE t USING phenix(v float32[2] distance=l2);
         INSERT INTO t(rowid, v) VALUES (2, '[2,2]');",
    )
    .unwrap();
    assert_eq!(ids(&c, "SELECT rowid FROM t"), vec![2]);
    // A damaged _info value does not block DROP either.
    c.execute_batch("UPDATE t_info SET value = 'zz' WHERE key = 'table_id'")
        .unwrap();
    drop(c);
    let c = open(&path);
    c.execute_batch("DROP TABLE t").unwrap();
}

/// A stored definition that differs from the declared columns, and an unknown `format`, are reported
/// by phenix_check; the format is refused on open.
#[test]
fn check_reports_a_definition_mismatch_and_open_refuses_an_unknown_format() {
    let d = TempDir::new("adv-def");
    let path = d.0.join("a.db");
    let c = open(&path);
    c.execute_batch(
        "CREATE VIRTUAL TABLE t USING phenix(v float32[2] distance=l2, s TEXT);
         INSERT INTO t(rowid, v, s) VALUES (1, '[1,1]', 'a');
         UPDATE t_info SET value = 'v float32[2] distance=l2, s INTEGER' WHERE key = 'definition';",
    )
    .unwrap();
    drop(c);
    let c = open(&path);
    let p = check(&c, "t");
    assert!(p.contains("definition"), "{p}");
    c.execute_batch(
        "UPDATE t_info SET value = 'v float32[2] distance=l2, s TEXT' WHERE key = 'definition';
         UPDATE t_info SET value = 2 WHERE key = 'format';",
    )
    .unwrap();
    drop(c);
    let c = open(&path);
    let e = err_of(&c, "INSERT INTO t(rowid, v, s) VALUES (2, '[2,2]', 'b')")
        .expect("format 2 must be refused");
    assert!(e.contains("format"), "{e}");
    assert!(check(&c, "t").contains("format"));
}

// ---------------------------------------------------------------------------------------------------
// In-memory databases of every kind

/// Opens `uri` with URI filenames enabled.
fn open_uri(uri: &str) -> Connection {
    let c = Connection::open_with_flags(
        uri,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_URI
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .unwrap();
    phenix_sql::register(&c).unwrap();
    c
}

/// Serializes schema `main` of `c`.
fn serialize(c: &Connection) -> Vec<u8> {
    let mut n: rusqlite::ffi::sqlite3_int64 = 0;
    // SAFETY: a live handle; sqlite3_serialize returns a buffer from sqlite3_malloc (freed below).
    unsafe {
        let p = rusqlite::ffi::sqlite3_serialize(c.handle(), c"main".as_ptr(), &mut n, 0);
        assert!(!p.is_null());
        let v = std::slice::from_raw_parts(p, n as usize).to_vec();
        rusqlite::ffi::sqlite3_free(p.cast());
        v
    }
}

/// A `:memory:` connection whose main schema is replaced by `image` (as Python's `deserialize` does).
fn deserialized(image: &[u8]) -> Connection {
    let c = mem();
    // SAFETY: the buffer is allocated with sqlite3_malloc64 and handed to SQLite (FREEONCLOSE).
    unsafe {
        let buf = rusqlite::ffi::sqlite3_malloc64(image.len() as u64) as *mut u8;
        std::ptr::copy_nonoverlapping(image.as_ptr(), buf, image.len());
        let rc = rusqlite::ffi::sqlite3_deserialize(
            c.handle(),
            c"main".as_ptr(),
            buf,
            image.len() as i64,
            image.len() as i64,
            rusqlite::ffi::SQLITE_DESERIALIZE_FREEONCLOSE
                | rusqlite::ffi::SQLITE_DESERIALIZE_RESIZEABLE,
        );
        assert_eq!(rc, 0);
    }
    c
}

fn plain_image() -> Vec<u8> {
    let c = Connection::open_in_memory().unwrap();
    c.execute_batch("CREATE TABLE plain(x); INSERT INTO plain VALUES (1);")
        .unwrap();
    serialize(&c)
}

/// Deserialized databases keep their vectors in memory: no `x-phenix/` appears in the working
/// directory, and two of them in one process keep their own rows.
#[test]
fn deserialized_databases_keep_vectors_in_memory_and_apart() {
    let cwd_sidecar = std::env::current_dir().unwrap().join("x-phenix");
    let existed = cwd_sidecar.exists();
    let img = plain_image();
    let a = deserialized(&img);
    let b = deserialized(&img);
    for (c, base) in [(&a, 0), (&b, 100)] {
        c.execute_batch("CREATE VIRTUAL TABLE t USING phenix(v float32[2] distance=l2)")
            .unwrap();
        for i in 1..=5 {
            c.execute(
                "INSERT INTO t(rowid, v) VALUES (?1, ?2)",
                params![base + i, format!("[{},0]", base + i)],
            )
            .unwrap();
        }
    }
    a.execute_batch("DELETE FROM t WHERE rowid = 1; INSERT INTO t(t) VALUES ('optimize');")
        .unwrap();
    assert_eq!(
        ids(&a, "SELECT rowid FROM t WHERE v MATCH '[0,0]' AND k = 10"),
        vec![2, 3, 4, 5]
    );
    assert_eq!(
        ids(&b, "SELECT rowid FROM t WHERE v MATCH '[0,0]' AND k = 10"),
        vec![101, 102, 103, 104, 105]
    );
    assert_eq!(vectors_f32(&b, "t")[&103], vec![103.0, 0.0]);
    assert_eq!(check(&a, "t"), "ok");
    assert_eq!(check(&b, "t"), "ok");
    if !existed {
        assert!(
            !cwd_sidecar.exists(),
            "a deserialized database wrote vectors into the working directory"
        );
    }
}

/// An in-memory database of the memdb VFS named like a path writes nothing next to that path.
#[test]
fn memdb_vfs_databases_touch_no_files() {
    let d = TempDir::new("adv-memdb");
    let name = d.0.join("ghost.db");
    let c = open_uri(&format!("file:{}?vfs=memdb", name.display()));
    c.execute_batch(
        "CREATE VIRTUAL TABLE t USING phenix(v float32[2] distance=l2);
         INSERT INTO t(rowid, v) VALUES (1, '[1,0]'), (2, '[0,1]');",
    )
    .unwrap();
    assert_eq!(
        ids(&c, "SELECT rowid FROM t WHERE v MATCH '[1,0]' AND k = 1"),
        vec![1]
    );
    let listing: Vec<_> = std::fs::read_dir(&d.0).unwrap().flatten().collect();
    assert!(listing.is_empty(), "files appeared: {listing:?}");
}

/// A `:memory:` database copied with SQLite's backup API does not share its vector store with the
/// original: the copy either refuses clearly or holds its own rows, never the other's.
#[test]
fn a_memory_database_copied_with_the_backup_api_shares_no_vectors() {
    let a = mem();
    a.execute_batch(
        "CREATE VIRTUAL TABLE t USING phenix(v float32[2] distance=l2);
         INSERT INTO t(rowid, v) VALUES (1, '[0,1]'), (2, '[1,0]');",
    )
    .unwrap();
    let mut b = mem();
    {
        let bk = rusqlite::backup::Backup::new(&a, &mut b).unwrap();
        bk.step(-1).unwrap();
    }
    a.execute_batch("INSERT INTO t(rowid, v) VALUES (4, '[0,0.2]')")
        .unwrap();
    match b.execute_batch("INSERT INTO t(rowid, v) VALUES (3, '[0,0.1]')") {
        Err(e) => {
            let e = e.to_string();
            assert!(e.contains("phenix"), "{e}");
            assert!(try_ids(&b, "SELECT rowid FROM t").is_err());
        }
        Ok(()) => {
            let v = vectors_f32(&b, "t");
            assert_eq!(v.keys().copied().collect::<Vec<_>>(), vec![1, 2, 3]);
            assert_eq!(v[&3], vec![0.0, 0.1]);
        }
    }
    let va = vectors_f32(&a, "t");
    assert_eq!(va.keys().copied().collect::<Vec<_>>(), vec![1, 2, 4]);
    assert_eq!(va[&4], vec![0.0, 0.2]);
    assert_eq!(check(&a, "t"), "ok");
}

/// Two connections on one shared-cache in-memory database: a compaction by one leaves the other
/// reading the right vectors, and a third connection sees the same.
#[test]
fn shared_cache_memory_database_survives_compaction_by_another_connection() {
    let uri = format!(
        "file:phenix-shm-{}?mode=memory&cache=shared",
        std::process::id()
    );
    let a = open_uri(&uri);
    let b = open_uri(&uri);
    a.execute_batch(
        "CREATE VIRTUAL TABLE t USING phenix(v float32[2] distance=l2);
         INSERT INTO t(rowid, v) VALUES (1, '[0,0]'), (2, '[1,1]'), (3, '[0,0.5]');",
    )
    .unwrap();
    b.execute_batch("DELETE FROM t WHERE rowid = 1; INSERT INTO t(t) VALUES ('optimize');")
        .unwrap();
    a.execute_batch("INSERT INTO t(rowid, v) VALUES (4, '[2,2]')")
        .unwrap();
    let want: BTreeMap<i64, Vec<f32>> = [
        (2, vec![1.0, 1.0]),
        (3, vec![0.0, 0.5]),
        (4, vec![2.0, 2.0]),
    ]
    .into_iter()
    .collect();
    for c in [&a, &b] {
        assert_eq!(vectors_f32(c, "t"), want);
        assert_eq!(
            ids(c, "SELECT rowid FROM t WHERE v MATCH '[0,0]' AND k = 10"),
            vec![3, 2, 4]
        );
        assert_eq!(check(c, "t"), "ok");
    }
    let c = open_uri(&uri);
    assert_eq!(vectors_f32(&c, "t"), want);
}

/// The vectors of `:memory:` tables are freed when their connection closes or the table is dropped.
#[test]
fn memory_tables_free_their_vectors_on_close_and_drop() {
    let alive = |id: &str| phenix_sql::memory_store_alive(id);
    let v = json(&rand_vec(3, 64));
    let mut closed = Vec::new();
    for _ in 0..3 {
        let c = mem();
        c.execute_batch("CREATE VIRTUAL TABLE t USING phenix(v float32[64] distance=l2)")
            .unwrap();
        c.execute("INSERT INTO t(rowid, v) VALUES (1, ?1)", [&v])
            .unwrap();
        let id = table_id(&c, "t");
        assert!(alive(&id));
        closed.push(id);
        drop(c);
    }
    for id in &closed {
        assert!(
            !alive(id),
            "the vectors of a closed :memory: database are still held"
        );
    }
    let c = mem();
    c.execute_batch(
        "CREATE VIRTUAL TABLE t USING phenix(v float32[2] distance=l2);
         INSERT INTO t(rowid, v) VALUES (1, '[1,1]');
         CREATE VIRTUAL TABLE temp.u USING phenix(v float32[2] distance=l2);
         INSERT INTO u(rowid, v) VALUES (1, '[1,1]');",
    )
    .unwrap();
    let (id, idu) = (table_id(&c, "t"), table_id(&c, "u"));
    assert!(alive(&id) && alive(&idu));
    c.execute_batch("DROP TABLE t; DROP TABLE u;").unwrap();
    assert!(!alive(&id) && !alive(&idu), "DROP TABLE kept the vectors");
}

/// `DROP TABLE` of an in-memory table inside a transaction frees its vectors when the drop commits
/// (they used to stay until the connection closed), and keeps them while the drop can still roll back:
/// a ROLLBACK or a ROLLBACK TO a savepoint before the drop brings the table back with its rows.
/// Measured as the bytes this process holds for the table's id, for `:memory:` main tables, temp
/// tables, attached `:memory:` databases and drops inside savepoints.
#[test]
fn memory_tables_dropped_in_a_transaction_free_their_vectors_at_commit() {
    let bytes = |id: &str| phenix_sql::memory_store_bytes(id);
    let rows = 50;
    // float32[64]: 256 bytes a row, a multiple of the 64-byte stride.
    let fill = |c: &Connection, t: &str| {
        c.execute_batch(&format!(
            "CREATE VIRTUAL TABLE {t} USING phenix(v float32[64] distance=l2)"
        ))
        .unwrap();
        for i in 0..rows {
            c.execute(
                &format!("INSERT INTO {t}(rowid, v) VALUES (?1, ?2)"),
                rusqlite::params![i, json(&rand_vec(i as u64, 64))],
            )
            .unwrap();
        }
    };
    let knn = |c: &Connection, t: &str| -> Vec<i64> {
        ids(
            c,
            &format!(
                "SELECT rowid FROM {t} WHERE v MATCH '{}' AND k = 3",
                json(&rand_vec(7, 64))
            ),
        )
    };
    let full = (rows * 256) as u64;
    for (t, attach) in [("t", false), ("temp.u", false), ("m.w", true)] {
        let c = mem();
        if attach {
            c.execute_batch("ATTACH ':memory:' AS m").unwrap();
        }
        fill(&c, t);
        let id = table_id(&c, t);
        let before = knn(&c, t);
        assert_eq!(bytes(&id), Some(full), "{t}");
        // Rolled back: the table and its vectors stay.
        c.execute_batch(&format!("BEGIN; DROP TABLE {t};")).unwrap();
        assert_eq!(
            bytes(&id),
            Some(full),
            "{t}: freed before the drop committed"
        );
        c.execute_batch("ROLLBACK").unwrap();
        assert_eq!(bytes(&id), Some(full), "{t}");
        assert_eq!(knn(&c, t), before, "{t}: after a rolled-back DROP");
        // Rolled back to a savepoint opened before the drop, then committed: the table stays.
        c.execute_batch(&format!(
            "BEGIN; SAVEPOINT a; DROP TABLE {t}; ROLLBACK TO a; COMMIT;"
        ))
        .unwrap();
        assert_eq!(bytes(&id), Some(full), "{t}: ROLLBACK TO freed the vectors");
        assert_eq!(knn(&c, t), before, "{t}: after ROLLBACK TO before the DROP");
        // A drop inside a savepoint that is released, then committed: freed at the COMMIT.
        c.execute_batch(&format!("BEGIN; SAVEPOINT a; DROP TABLE {t}; RELEASE a;"))
            .unwrap();
        assert_eq!(bytes(&id), Some(full), "{t}: freed before the COMMIT");
        c.execute_batch("COMMIT").unwrap();
        assert_eq!(bytes(&id), None, "{t}: the committed DROP kept the vectors");
        // Made again under the same name, dropped in a plain transaction.
        fill(&c, t);
        let id = table_id(&c, t);
        assert_eq!(bytes(&id), Some(full), "{t}");
        c.execute_batch(&format!("BEGIN; DROP TABLE {t}; COMMIT;"))
            .unwrap();
        assert_eq!(bytes(&id), None, "{t}: the committed DROP kept the vectors");
    }
    // A temp table of a connection whose main database is a file the transaction writes anyway.
    let d = TempDir::new("adv-dropmem");
    let c = open(&d.0.join("m.db"));
    c.execute_batch("CREATE TABLE x(a)").unwrap();
    fill(&c, "temp.u");
    let id = table_id(&c, "temp.u");
    assert_eq!(bytes(&id), Some(full));
    c.execute_batch("BEGIN; INSERT INTO x VALUES (1); DROP TABLE temp.u; COMMIT;")
        .unwrap();
    assert_eq!(bytes(&id), None, "the committed DROP kept the vectors");
}

// ---------------------------------------------------------------------------------------------------
// Backup

/// `phenix_backup('file:…')` never overwrites the database the URI names and leaves no directory named
/// like the URI.
#[test]
fn backup_to_a_uri_never_overwrites_an_existing_database() {
    let d = TempDir::new("adv-bkuri");
    let victim = d.0.join("victim.db");
    {
        let v = Connection::open(&victim).unwrap();
        v.execute_batch("CREATE TABLE precious(x); INSERT INTO precious VALUES (42);")
            .unwrap();
    }
    let src = d.0.join("src.db");
    let c = open(&src);
    c.execute_batch(
        "CREATE VIRTUAL TABLE t USING phenix(v float32[2] distance=l2);
         INSERT INTO t(rowid, v) VALUES (1, '[1,1]');",
    )
    .unwrap();
    let r: rusqlite::Result<String> = c.query_row(
        "SELECT phenix_backup(?1)",
        [format!("file:{}", victim.display())],
        |r| r.get(0),
    );
    let e = r
        .expect_err("a URI destination must be refused")
        .to_string();
    assert!(e.contains("URI") || e.contains("exists"), "{e}");
    let v = Connection::open(&victim).unwrap();
    let x: i64 = v
        .query_row("SELECT x FROM precious", [], |r| r.get(0))
        .unwrap();
    assert_eq!(x, 42);
    let odd: Vec<_> = std::fs::read_dir(&d.0)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("file:"))
        .collect();
    assert!(odd.is_empty(), "{odd:?}");
    // Relative URIs too (resolved against the working directory by SQLite).
    let r: rusqlite::Result<String> = c.query_row(
        "SELECT phenix_backup('file:nowhere.db?mode=rwc')",
        [],
        |r| r.get(0),
    );
    assert!(r.is_err());
    assert!(!Path::new("nowhere.db").exists());
}

// ---------------------------------------------------------------------------------------------------
// Wrong results at the edges

fn text_table(c: &Connection) {
    c.execute_batch(
        "CREATE VIRTUAL TABLE t USING phenix(v float32[2] distance=l2, s TEXT, +aux TEXT);
         CREATE TABLE p(id INTEGER PRIMARY KEY, x REAL, y REAL, s TEXT, aux TEXT);",
    )
    .unwrap();
    let rows: [(i64, f32, f32, &str); 6] = [
        (1, 0.0, 0.0, "a"),
        (2, 1.0, 0.0, "A"),
        (3, 2.0, 0.0, "b"),
        (4, 3.0, 0.0, "B"),
        (5, 4.0, 0.0, "a"),
        (6, 5.0, 0.0, "c"),
    ];
    for (id, x, y, s) in rows {
        c.execute(
            "INSERT INTO t(rowid, v, s, aux) VALUES (?1, ?2, ?3, ?3)",
            params![id, format!("[{x},{y}]"), s],
        )
        .unwrap();
        c.execute(
            "INSERT INTO p VALUES (?1, ?2, ?3, ?4, ?4)",
            params![id, x, y, s],
        )
        .unwrap();
    }
}

/// The nearest `k` of the reference rows passing `filter` (l2 from [0,0]: x ascending here).
fn reference_knn(c: &Connection, filter: &str, k: usize) -> Vec<i64> {
    ids(
        c,
        &format!("SELECT id FROM p WHERE {filter} ORDER BY x*x + y*y, id LIMIT {k}"),
    )
}

/// A metadata constraint with a non-BINARY collation selects what an ordinary table selects, in a
/// scan and in KNN.
#[test]
fn collated_metadata_constraints_select_what_sqlite_selects() {
    let c = mem();
    text_table(&c);
    for f in [
        "s = 'A' COLLATE NOCASE",
        "s > 'a' COLLATE NOCASE",
        "s COLLATE NOCASE = 'b'",
        "s = 'a' COLLATE RTRIM",
    ] {
        let want = ids(&c, &format!("SELECT id FROM p WHERE {f} ORDER BY id"));
        assert!(!want.is_empty() || f.contains('>'), "{f}");
        let scan = ids(&c, &format!("SELECT rowid FROM t WHERE {f} ORDER BY rowid"));
        assert_eq!(scan, want, "scan with {f}");
        for k in [1, 2, 10] {
            let got = ids(
                &c,
                &format!("SELECT rowid FROM t WHERE v MATCH '[0,0]' AND k = {k} AND {f}"),
            );
            assert_eq!(got, reference_knn(&c, f, k), "KNN k = {k} with {f}");
        }
    }
}

/// `k` bounds the whole result when a metadata column is constrained with IN, and the rows come in
/// distance order.
#[test]
fn in_lists_on_metadata_return_k_rows_in_distance_order() {
    let c = mem();
    text_table(&c);
    for (f, k) in [
        ("s IN ('a', 'b')", 1),
        ("s IN ('a', 'b')", 2),
        ("s IN ('b', 'a')", 3),
        ("s IN ('c', 'B', 'a')", 10),
        ("s IN (SELECT s FROM p WHERE id > 3)", 2),
    ] {
        let got = ids(
            &c,
            &format!("SELECT rowid FROM t WHERE v MATCH '[0,0]' AND k = {k} AND {f}"),
        );
        assert_eq!(got, reference_knn(&c, f, k), "k = {k} with {f}");
    }
}

/// Rowid constraints beside `k` choose among the rows they allow (they filter before the k nearest
/// are taken).
#[test]
fn rowid_constraints_filter_before_the_k_nearest_are_chosen() {
    let c = mem();
    text_table(&c);
    for (f, k) in [
        ("rowid = 5", 3),
        ("rowid IN (4, 5)", 1),
        ("rowid IN (4, 5)", 3),
        ("rowid = 99", 3),
        ("rowid = 2 AND s = 'A'", 1),
    ] {
        let got = ids(
            &c,
            &format!("SELECT rowid FROM t WHERE v MATCH '[0,0]' AND k = {k} AND {f}"),
        );
        let f2 = f.replace("rowid", "id");
        assert_eq!(got, reference_knn(&c, &f2, k), "k = {k} with {f}");
    }
}

/// A row whose rowid is the smallest 64-bit integer is found by KNN and the retrieval functions.
#[test]
fn the_smallest_rowid_is_found_by_knn() {
    let c = mem();
    c.execute_batch(
        "CREATE VIRTUAL TABLE t USING phenix(v float32[2] distance=l2);
         INSERT INTO t(rowid, v) VALUES (-9223372036854775808, '[0,0]'), (1, '[1,1]');",
    )
    .unwrap();
    assert_eq!(
        ids(&c, "SELECT rowid FROM t WHERE v MATCH '[0,0]' AND k = 10"),
        vec![i64::MIN, 1]
    );
    assert_eq!(
        ids(&c, "SELECT rowid FROM phenix_retrieve('t', '[0,0]', 10)"),
        vec![i64::MIN, 1]
    );
    assert_eq!(
        ids(
            &c,
            "SELECT rowid FROM phenix_retrieve_all('t', 't', 10) WHERE query_rowid = 1"
        ),
        vec![1, i64::MIN]
    );
}

/// `distance <= b` and `distance < b` hold exactly in SQL's double terms for every returned row, and no
/// row satisfying them is left out.
#[test]
fn distance_bounds_hold_exactly_as_doubles() {
    let c = mem();
    c.execute_batch("CREATE VIRTUAL TABLE t USING phenix(v float32[1] distance=l2)")
        .unwrap();
    let xs = [
        0.1f32,
        0.2,
        0.3,
        f32::from_bits(0.3f32.to_bits() + 1),
        0.4,
        1.0 / 3.0,
    ];
    for (i, x) in xs.iter().enumerate() {
        c.execute(
            "INSERT INTO t(rowid, v) VALUES (?1, ?2)",
            params![i as i64 + 1, format!("[{x}]")],
        )
        .unwrap();
    }
    let all = pairs(&c, "SELECT rowid, distance FROM t WHERE v MATCH '[0]'");
    for b in [
        0.3f64,
        0.30000001192092896,
        0.3000000119,
        1.0 / 3.0,
        0.2,
        0.1,
    ] {
        for op in ["<=", "<"] {
            let got = pairs(
                &c,
                &format!(
                    "SELECT rowid, distance FROM t WHERE v MATCH '[0]' AND distance {op} {b:e}"
                ),
            );
            let want: Vec<(i64, f64)> = all
                .iter()
                .copied()
                .filter(|&(_, d)| if op == "<=" { d <= b } else { d < b })
                .collect();
            assert_eq!(got, want, "distance {op} {b:e}");
        }
    }
}

/// Cosine KNN with a query of tiny magnitude ranks as the exact cosine does.
#[test]
fn cosine_knn_with_a_tiny_query_is_exact() {
    let c = mem();
    c.execute_batch(
        "CREATE VIRTUAL TABLE t USING phenix(v float32[2] distance=cosine);
         INSERT INTO t(rowid, v) VALUES (1, '[1,0]'), (2, '[3,4]'), (3, '[0,1]');",
    )
    .unwrap();
    for q in ["[1e-30, 0]", "[1e-22, 0]", "[1e-40, 0]", "[1e30, 0]"] {
        let got = pairs(
            &c,
            &format!("SELECT rowid, distance FROM t WHERE v MATCH '{q}' AND k = 3"),
        );
        let want = [(1, 0.0), (2, 0.4), (3, 1.0)];
        assert_eq!(got.len(), 3, "{q}");
        for (g, w) in got.iter().zip(want) {
            assert_eq!(g.0, w.0, "{q}: {got:?}");
            assert!((g.1 - w.1).abs() < 1e-6, "{q}: {got:?}");
        }
    }
}

/// l2 and dot distances beyond the float32 range rank correctly (computed in float64 where needed).
#[test]
fn distances_beyond_float32_range_rank_correctly() {
    let c = mem();
    c.execute_batch(
        "CREATE VIRTUAL TABLE l USING phenix(v float32[4] distance=l2);
         CREATE VIRTUAL TABLE d USING phenix(v float32[4] distance=dot);
         INSERT INTO l(rowid, v) VALUES (1, '[3e38,3e38,3e38,3e38]'), (2, '[-2.1e38,-2.1e38,-2.1e38,-2.1e38]'), (3, '[1,1,1,1]');
         INSERT INTO d(rowid, v) VALUES (1, '[1.5e38,1.5e38,1.5e38,1.5e38]'), (2, '[1.05e38,1.05e38,1.05e38,1.05e38]'), (3, '[1,1,1,1]');",
    )
    .unwrap();
    // l2 from [1,1,1,1]: row 3 (0), row 2 (4.2e38), row 1 (6.0e38).
    let got = pairs(
        &c,
        "SELECT rowid, distance FROM l WHERE v MATCH '[1,1,1,1]' AND k = 3",
    );
    assert_eq!(
        got.iter().map(|p| p.0).collect::<Vec<_>>(),
        vec![3, 2, 1],
        "{got:?}"
    );
    assert!((got[1].1 / 4.2e38 - 1.0).abs() < 1e-5, "{got:?}");
    assert!((got[2].1 / 6.0e38 - 1.0).abs() < 1e-5, "{got:?}");
    // dot ranks by the negative inner product: row 1 (-6e38) before row 2 (-4.2e38).
    let got = pairs(
        &c,
        "SELECT rowid, distance FROM d WHERE v MATCH '[1,1,1,1]' AND k = 3",
    );
    assert_eq!(
        got.iter().map(|p| p.0).collect::<Vec<_>>(),
        vec![1, 2, 3],
        "{got:?}"
    );
    assert!((got[0].1 / -6.0e38 - 1.0).abs() < 1e-5, "{got:?}");
}

/// `phenix_retrieve_all` breaks exact ties by rowid, as MATCH and phenix_retrieve do.
#[test]
fn retrieve_all_breaks_ties_by_rowid() {
    let c = mem();
    c.execute_batch(
        "CREATE VIRTUAL TABLE t USING phenix(v float32[3] distance=cosine);
         CREATE VIRTUAL TABLE q USING phenix(v float32[3] distance=cosine);
         INSERT INTO q(rowid, v) VALUES (1, '[1,2,3]');",
    )
    .unwrap();
    // 50 parallel vectors inserted in a scrambled rowid order.
    for i in 0..50i64 {
        let id = (i * 37) % 50 + 1;
        let s = 1 + (i % 7);
        c.execute(
            "INSERT INTO t(rowid, v) VALUES (?1, ?2)",
            params![id, format!("[{s},{},{}]", 2 * s, 3 * s)],
        )
        .unwrap();
    }
    let m = ids(&c, "SELECT rowid FROM t WHERE v MATCH '[1,2,3]' AND k = 3");
    let r = ids(&c, "SELECT rowid FROM phenix_retrieve('t', '[1,2,3]', 3)");
    let a = ids(&c, "SELECT rowid FROM phenix_retrieve_all('t', 'q', 3)");
    assert_eq!(m, vec![1, 2, 3]);
    assert_eq!(r, m);
    assert_eq!(a, m);
}

// ---------------------------------------------------------------------------------------------------
// Errors

/// Conflict modes are honoured as an ordinary table honours them (REPLACE, IGNORE), and a duplicate
/// rowid otherwise fails with a phenix error that names the table, not a shadow table.
#[test]
fn conflict_modes_are_honoured_or_refused_clearly() {
    let c = mem();
    c.execute_batch(
        "CREATE VIRTUAL TABLE t USING phenix(v float32[2] distance=l2, s TEXT);
         INSERT INTO t(rowid, v, s) VALUES (1, '[1,1]', 'a'), (2, '[2,2]', 'b');",
    )
    .unwrap();
    let e = err_of(&c, "INSERT INTO t(rowid, v, s) VALUES (1, '[9,9]', 'z')").unwrap();
    assert!(e.contains("phenix") && !e.contains("t_rows"), "{e}");
    let mut outcomes = Vec::new();
    for sql in [
        "INSERT OR REPLACE INTO t(rowid, v, s) VALUES (1, '[5,5]', 'r')",
        "REPLACE INTO t(rowid, v, s) VALUES (1, '[6,6]', 'r2')",
        "INSERT OR IGNORE INTO t(rowid, v, s) VALUES (2, '[7,7]', 'i')",
        "UPDATE OR REPLACE t SET rowid = 2 WHERE rowid = 1",
    ] {
        match c.execute_batch(sql) {
            Ok(()) => outcomes.push(true),
            Err(e) => {
                let e = e.to_string();
                assert!(e.contains("phenix") && !e.contains("t_rows"), "{sql}: {e}");
                outcomes.push(false);
            }
        }
    }
    if outcomes.iter().all(|o| *o) {
        // Honoured: REPLACE, REPLACE, IGNORE, then row 1 replaced row 2.
        let v = vectors_f32(&c, "t");
        assert_eq!(v.keys().copied().collect::<Vec<_>>(), vec![2]);
        assert_eq!(v[&2], vec![6.0, 6.0]);
        assert_eq!(check(&c, "t"), "ok");
    }
}

/// Tables named like the hidden columns, a REAL slot and other odd input give clear phenix errors.
#[test]
fn odd_names_and_values_give_clear_errors() {
    let c = mem();
    for name in ["k", "distance", "rowid", "K"] {
        let e = err_of(
            &c,
            &format!("CREATE VIRTUAL TABLE \"{name}\" USING phenix(v float32[2])"),
        );
        if let Some(e) = e {
            assert!(e.contains("phenix") && e.contains(name), "{name}: {e}");
        } else {
            // Accepted: then it must work.
            c.execute_batch(&format!(
                "INSERT INTO \"{name}\"(rowid, v) VALUES (1, '[1,1]')"
            ))
            .unwrap();
            assert_eq!(
                ids(
                    &c,
                    &format!("SELECT rowid FROM phenix_retrieve('{name}', '[1,1]', 1)")
                ),
                vec![1]
            );
        }
    }
    c.execute_batch(
        "CREATE VIRTUAL TABLE t USING phenix(v float32[2] distance=l2);
         INSERT INTO t(rowid, v) VALUES (1, '[1,1]');",
    )
    .unwrap();
    let e = err_of(&c, "SELECT rowid FROM t WHERE v MATCH '[0,0]' AND k = 2.0").unwrap();
    assert!(e.contains("2.0"), "{e}");
    let e = err_of(
        &c,
        "CREATE VIRTUAL TABLE u USING phenix(v float32[2] distance=cosine distance=l2)",
    )
    .unwrap();
    assert!(e.contains("distance"), "{e}");
    let e = err_of(
        &c,
        "SELECT rowid FROM t WHERE v MATCH '[0,0]' AND v MATCH '[1,1]' AND k = 1",
    )
    .unwrap();
    assert!(e.contains("MATCH"), "{e}");
    let e = err_of(&c, "INSERT INTO t(t, v) VALUES ('optimize', '[3,3]')").unwrap();
    assert!(e.contains("optimize"), "{e}");
    let d = TempDir::new("adv-realslot");
    let path = d.0.join("a.db");
    let w = open(&path);
    w.execute_batch(
        "CREATE VIRTUAL TABLE t USING phenix(v float32[2] distance=l2);
         INSERT INTO t(rowid, v) VALUES (1, '[1,1]');
         UPDATE t_rows SET slot = 0.5 WHERE rowid = 1;",
    )
    .unwrap();
    drop(w);
    let c = open(&path);
    let e = try_ids(&c, "SELECT rowid FROM t WHERE v MATCH '[0,0]' AND k = 1")
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(e.contains("phenix table t") && e.contains("slot"), "{e}");
}

/// `phenix_check` reads one snapshot: while another connection inserts, deletes and compacts, every
/// check says `ok` (WAL and rollback journal), and inside one WAL read transaction it agrees with KNN.
#[test]
fn check_reads_one_snapshot_while_another_connection_writes() {
    for wal in [true, false] {
        let d = TempDir::new(if wal { "adv-chk-wal" } else { "adv-chk-del" });
        let path = d.0.join("a.db");
        let w = open(&path);
        w.busy_timeout(std::time::Duration::from_secs(10)).unwrap();
        w.execute_batch(if wal {
            "PRAGMA journal_mode=WAL;"
        } else {
            "PRAGMA journal_mode=DELETE;"
        })
        .unwrap();
        w.execute_batch("CREATE VIRTUAL TABLE t USING phenix(v float32[4] distance=l2, g INTEGER)")
            .unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writer = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut i = 0i64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    i += 1;
                    let sql = match i % 7 {
                        0 => "INSERT INTO t(t) VALUES ('optimize')".to_string(),
                        3 => format!("DELETE FROM t WHERE g = {}", i - 3),
                        _ => format!(
                            "BEGIN; INSERT INTO t(v, g) VALUES ('[1,2,3,4]', {i}), ('[4,3,2,1]', {i}), ('[0,0,0,1]', {i}); COMMIT;"
                        ),
                    };
                    if w.execute_batch(&sql).is_err() {
                        let _ = w.execute_batch("ROLLBACK");
                    }
                }
            })
        };
        let r = open(&path);
        r.busy_timeout(std::time::Duration::from_secs(10)).unwrap();
        let mut checks = 0;
        let started = std::time::Instant::now();
        while checks < 150 && started.elapsed() < std::time::Duration::from_secs(20) {
            match r.query_row("SELECT phenix_check('t')", [], |x| x.get::<_, String>(0)) {
                Ok(s) => {
                    assert_eq!(s, "ok", "wal {wal}: check {checks}");
                    checks += 1;
                }
                // A snapshot conflict or a busy lock is a retry, never a false report.
                Err(e) => assert!(
                    e.sqlite_error_code() == Some(rusqlite::ErrorCode::DatabaseBusy)
                        || e.to_string().ends_with("retry the transaction (busy)"),
                    "wal {wal}: {e}"
                ),
            }
            if wal && checks % 10 == 5 {
                // Inside one read transaction, the check and KNN agree.
                // (A snapshot that names a generation whose file a later compaction removed is the
                // documented SQLITE_BUSY: the transaction is retried.)
                let busy = |e: &rusqlite::Error| {
                    e.sqlite_error_code() == Some(rusqlite::ErrorCode::DatabaseBusy)
                        || e.to_string().ends_with("retry the transaction (busy)")
                };
                r.execute_batch("BEGIN").unwrap();
                let n = try_ids(&r, "SELECT count(*) FROM t WHERE v MATCH '[0,0,0,0]'");
                let s: rusqlite::Result<String> =
                    r.query_row("SELECT phenix_check('t')", [], |x| x.get(0));
                let m = try_ids(&r, "SELECT count(*) FROM t");
                r.execute_batch("COMMIT").unwrap();
                match (n, s, m) {
                    (Ok(n), Ok(s), Ok(m)) => {
                        assert_eq!(n, m);
                        assert_eq!(s, "ok", "inside a read transaction");
                    }
                    (n, s, m) => {
                        for e in [n.err(), s.err(), m.err()].into_iter().flatten() {
                            assert!(busy(&e), "{e}");
                        }
                    }
                }
            }
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        writer.join().unwrap();
        assert!(checks >= 20, "wal {wal}: only {checks} checks ran");
    }
}
