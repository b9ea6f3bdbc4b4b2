//! A vector file shrunk underneath a reader (by another program, or a crafted database whose sidecar
//! is shorter than its committed count): every statement on the table is an SQL error naming the
//! truncation, and the host process survives. Before the length check at each statement, a column
//! read of a lost row touched an unmapped page and the process died of SIGBUS.

mod common;
use common::*;

fn sidecar(db: &std::path::Path) -> std::path::PathBuf {
    let dir = db.with_file_name(format!(
        "{}-phenix",
        db.file_name().unwrap().to_str().unwrap()
    ));
    let files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "phx"))
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    files[0].clone()
}

#[test]
fn a_truncated_vector_file_is_an_error_not_a_crash() {
    let dir = TempDir::new("truncated-under-map");
    let db = dir.0.join("t.db");
    let c = open(&db);
    c.execute_batch("CREATE VIRTUAL TABLE t USING phenix(v float16[256])")
        .unwrap();
    c.execute_batch("BEGIN").unwrap();
    for id in 1..=300i64 {
        c.execute(
            "INSERT INTO t(rowid, v) VALUES (?1, ?2)",
            rusqlite::params![id, json(&rand_vec(id as u64, 256))],
        )
        .unwrap();
    }
    c.execute_batch("COMMIT").unwrap();
    let q = json(&rand_vec(7, 256));
    let knn = "SELECT count(*) FROM t WHERE v MATCH ?1 AND k = 10";
    // Map every row: a KNN scan, and reads of every vector.
    assert_eq!(c.query_row(knn, [&q], |r| r.get::<_, i64>(0)).unwrap(), 10);
    let total: i64 = c
        .query_row("SELECT sum(length(v)) FROM t", [], |r| r.get(0))
        .unwrap();
    assert_eq!(total, 300 * 512);

    // Another program cuts the file to its header and 20 rows.
    let path = sidecar(&db);
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(4096 + 20 * 512).unwrap();
    drop(f);

    for sql in [
        "SELECT sum(length(v)) FROM t",
        "SELECT length(v) FROM t WHERE rowid = 250",
        "SELECT count(*) FROM t WHERE v MATCH ?1 AND k = 10",
    ] {
        let r = c.prepare(sql).and_then(|mut s| {
            let n = s.parameter_count();
            let mut rows = if n == 1 { s.query([&q])? } else { s.query([])? };
            while rows.next()?.is_some() {}
            Ok(())
        });
        let e = r.expect_err(sql).to_string();
        assert!(e.contains("truncated") && e.contains("300"), "{sql}: {e}");
    }
    // A new connection (a crafted database: a sidecar shorter than its committed count) refuses too.
    let c2 = open(&db);
    let e = c2
        .query_row("SELECT sum(length(v)) FROM t", [], |r| r.get::<_, i64>(0))
        .expect_err("short file")
        .to_string();
    assert!(e.contains("truncated"), "{e}");
}
