//! No panic crosses the FFI boundary: with the test-only `panic-test` feature, `phenix_test_panic(kind)`
//! makes the next callback of that kind panic inside phenix's panic wrapper, and each statement here must
//! come back as an SQL error naming the callback (or, for the callbacks whose result SQLite ignores,
//! xCommit and xRollback, complete) instead of aborting the process. Afterwards the table still answers.
//!
//! Run: `cargo test -p phenix-sql --features panic-test --test panics` (tools/test does).

mod common;

use common::TempDir;
use rusqlite::Connection;

/// Arms `kind`, runs `sql`, and returns its error message (`None` if it succeeded); asserts the panic
/// fired.
fn with_panic(c: &Connection, kind: &str, sql: &str) -> Option<String> {
    c.query_row("SELECT phenix_test_panic(?1)", [kind], |_| Ok(()))
        .unwrap();
    let r = if sql.starts_with("SELECT") {
        // Every row, so xNext/xColumn/xRowid run.
        c.prepare(sql).and_then(|mut st| {
            let n = st.column_count();
            let mut q = st.query([])?;
            while let Some(r) = q.next()? {
                for i in 0..n {
                    r.get_ref(i)?;
                }
            }
            Ok(())
        })
    } else {
        c.execute_batch(sql)
    };
    let left: String = c
        .query_row("SELECT phenix_test_panic('')", [], |r| r.get(0))
        .unwrap();
    assert_eq!(left, "", "{kind}: no {kind} callback ran for `{sql}`");
    r.err().map(|e| e.to_string())
}

fn expect_error(c: &Connection, kind: &str, sql: &str) {
    let m = with_panic(c, kind, sql).unwrap_or_else(|| panic!("{kind}: `{sql}` succeeded"));
    assert!(
        m.starts_with("phenix: internal error in ")
            && m.contains(kind)
            && m.contains("injected panic"),
        "{kind}: {m}"
    );
}

/// For the savepoint hooks and xDestroy SQLite reports its own generic message ("SQL logic error") rather than the
/// vtab's: the statement must still fail.
fn expect_failure(c: &Connection, kind: &str, sql: &str) {
    let m = with_panic(c, kind, sql).unwrap_or_else(|| panic!("{kind}: `{sql}` succeeded"));
    assert!(
        m.contains("internal error in ") || m == "SQL logic error",
        "{kind}: {m}"
    );
}

fn count(c: &Connection) -> i64 {
    c.query_row("SELECT count(*) FROM t", [], |r| r.get(0))
        .unwrap()
}

#[test]
fn a_panic_in_every_callback_kind_is_an_sql_error() {
    let dir = TempDir::new("panics");
    let db = dir.0.join("p.db");
    let c = common::open(&db);
    expect_error(
        &c,
        "xCreate",
        "CREATE VIRTUAL TABLE bad USING phenix(v float32[2])",
    );
    c.execute_batch(
        "CREATE VIRTUAL TABLE t USING phenix(v float32[2] distance=l2, n INTEGER);
         INSERT INTO t(rowid, v, n) VALUES (1, '[0, 0]', 1), (2, '[1, 0]', 2), (3, '[2, 0]', 3);",
    )
    .unwrap();
    let knn = "SELECT rowid FROM t WHERE v MATCH '[0, 0]' AND k = 2";
    for kind in ["xBestIndex", "xOpen", "xFilter", "xNext", "xRowid"] {
        expect_error(&c, kind, knn);
    }
    expect_error(
        &c,
        "xColumn",
        "SELECT v, n, distance FROM t WHERE v MATCH '[0, 0]' AND k = 2",
    );
    expect_error(
        &c,
        "xUpdate",
        "INSERT INTO t(rowid, v, n) VALUES (4, '[3, 0]', 4)",
    );
    expect_error(&c, "xUpdate", "UPDATE t SET n = 9 WHERE rowid = 1");
    expect_error(&c, "xUpdate", "DELETE FROM t WHERE rowid = 1");
    expect_error(
        &c,
        "xBegin",
        "INSERT INTO t(rowid, v, n) VALUES (4, '[3, 0]', 4)",
    );
    // xSync fails the COMMIT; the transaction is then rolled back.
    c.execute_batch("BEGIN; INSERT INTO t(rowid, v, n) VALUES (4, '[3, 0]', 4);")
        .unwrap();
    expect_error(&c, "xSync", "COMMIT");
    let _ = c.execute_batch("ROLLBACK");
    assert_eq!(count(&c), 3);
    // SQLite ignores the result of xCommit and xRollback: the statement completes and the panic stays
    // inside phenix. (What a panic there leaves behind is not checked: the table's state then still
    // believes its transaction open, so they run on a table of their own.)
    {
        let c3 = common::open(&db);
        c3.execute_batch("CREATE VIRTUAL TABLE u USING phenix(v float32[2])")
            .unwrap();
        c3.execute_batch("BEGIN; INSERT INTO u(rowid, v) VALUES (1, '[3, 0]');")
            .unwrap();
        assert_eq!(with_panic(&c3, "xCommit", "COMMIT"), None);
        c3.execute_batch("BEGIN; INSERT INTO u(rowid, v) VALUES (2, '[4, 0]');")
            .unwrap();
        assert_eq!(with_panic(&c3, "xRollback", "ROLLBACK"), None);
        let one: i64 = c3.query_row("SELECT 1", [], |r| r.get(0)).unwrap();
        assert_eq!(one, 1);
    }
    // Savepoint hooks: inside a transaction that has written to the table.
    c.execute_batch("BEGIN; INSERT INTO t(rowid, v, n) VALUES (6, '[5, 0]', 6);")
        .unwrap();
    expect_failure(&c, "xSavepoint", "SAVEPOINT s1");
    c.execute_batch("SAVEPOINT s2; INSERT INTO t(rowid, v, n) VALUES (7, '[6, 0]', 7);")
        .unwrap();
    expect_failure(&c, "xRollbackTo", "ROLLBACK TO s2");
    c.execute_batch("SAVEPOINT s3").unwrap();
    expect_failure(&c, "xRelease", "RELEASE s3");
    c.execute_batch("ROLLBACK").unwrap();
    expect_error(&c, "xRename", "ALTER TABLE t RENAME TO t2");
    // Functions: scalar, aggregate (and window), table-valued, the path functions, the table's own.
    expect_error(
        &c,
        "phenix_distance_l2",
        "SELECT phenix_distance_l2('[0]', '[1]')",
    );
    expect_error(&c, "phenix_mean", "SELECT phenix_mean(v) FROM t");
    expect_error(&c, "phenix_median", "SELECT phenix_median(v) FROM t");
    expect_error(&c, "phenix_fit_info", "SELECT phenix_fit_info(NULL)");
    expect_error(
        &c,
        "phenix_retrieve",
        "SELECT * FROM phenix_retrieve('t', '[0, 0]', 2)",
    );
    expect_error(
        &c,
        "phenix_retrieve_all",
        "SELECT * FROM phenix_retrieve_all('t', 't', 1)",
    );
    expect_error(&c, "phenix_check", "SELECT phenix_check('t')");
    expect_error(
        &c,
        "phenix_backup",
        &format!("SELECT phenix_backup('{}')", dir.0.join("b.db").display()),
    );
    // xConnect: a second connection connects the table.
    let c2 = common::open(&db);
    expect_error(&c2, "xConnect", "SELECT count(*) FROM t");
    // Nothing was lost or broken by any of it.
    assert_eq!(count(&c), 3);
    assert_eq!(count(&c2), 3);
    let ids: Vec<i64> = c
        .prepare(knn)
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap();
    assert_eq!(ids, vec![1, 2]);
    assert_eq!(
        c.query_row("SELECT phenix_check('t')", [], |r| r.get::<_, String>(0))
            .unwrap(),
        "ok"
    );
    expect_failure(&c, "xDestroy", "DROP TABLE t");
}
