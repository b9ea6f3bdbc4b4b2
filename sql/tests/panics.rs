//! No panic crosses the FFI boundary: with the test-only `panic-test` feature, `phenix_test_panic(kind)`
//! makes the next callback of that kind panic inside phenix's panic wrapper, and each statement here must
//! come back as an SQL error naming the callback (or, for the callbacks whose result SQLite ignores,
//! xCommit and xRollback, complete) instead of aborting the process. Afterwards the table still answers.
//!
//! Run: `cargo test -p phenix-sql --features panic-test --test panics` (tools/test does).

mod common;

use common::TempDir;
use phenix_core::fault::{self, FaultPlan, FaultPoint};
use rusqlite::Connection;
use std::sync::Mutex;

/// The armed panic kind is process-wide: the tests of this file take turns.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

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
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
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
    // inside phenix. (What a failure there leaves behind is checked by
    // `a_failing_commit_or_rollback_loses_no_committed_row`.)
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

/// How a transaction hook is made to fail.
#[derive(Clone, Copy, Debug)]
enum Failure {
    /// `phenix_test_panic(kind)`: a panic at the hook's entry, or at a named point inside it.
    Panic(&'static str),
    /// An I/O error from the vector file (truncation when a rollback gives space back).
    Io(FaultPoint),
}

/// The statement whose hook fails.
#[derive(Clone, Copy, Debug, PartialEq)]
enum End {
    Commit,
    Rollback,
    RollbackTo,
}

/// The phenix table's rows (rowid, vector) against the ordinary table `r`'s, and a KNN against f64
/// brute force over `r`: every committed row is there, nothing else.
fn same_as_reference(c: &Connection, when: &str) {
    let want: Vec<(i64, [f64; 2])> = c
        .prepare("SELECT id, a, b FROM r ORDER BY id")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, [r.get(1)?, r.get(2)?])))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap();
    let got: Vec<(i64, Vec<u8>)> = c
        .prepare("SELECT rowid, v FROM t ORDER BY rowid")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap_or_else(|e| panic!("{when}: reading t: {e}"));
    let want_bytes: Vec<(i64, Vec<u8>)> = want
        .iter()
        .map(|(id, v)| (*id, common::f32_bytes(&[v[0] as f32, v[1] as f32])))
        .collect();
    assert_eq!(got, want_bytes, "{when}: rows differ from the reference");
    let q = [2.5f64, 1.0];
    let k = 4;
    let knn: Vec<i64> = c
        .prepare("SELECT rowid FROM t WHERE v MATCH '[2.5, 1]' AND k = ?1")
        .unwrap()
        .query_map([k], |r| r.get(0))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap_or_else(|e| panic!("{when}: KNN: {e}"));
    let mut brute: Vec<(f64, i64)> = want
        .iter()
        .map(|(id, v)| ((v[0] - q[0]).powi(2) + (v[1] - q[1]).powi(2), *id))
        .collect();
    brute.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let brute: Vec<i64> = brute.iter().take(k as usize).map(|x| x.1).collect();
    assert_eq!(knn, brute, "{when}: KNN differs from brute force");
}

/// Inserts row `id` (vector `[id, id % 3]`) into `t` and the reference `r`.
fn put(c: &Connection, id: i64) {
    c.execute_batch(&format!(
        "INSERT INTO t(rowid, v) VALUES ({id}, '[{id}, {}]'); INSERT INTO r VALUES ({id}, {id}, {});",
        id % 3,
        id % 3
    ))
    .unwrap();
}

fn del(c: &Connection, id: i64) {
    c.execute_batch(&format!(
        "DELETE FROM t WHERE rowid = {id}; DELETE FROM r WHERE id = {id};"
    ))
    .unwrap();
}

/// One scenario: committed rows, a transaction (with or without compactions, before and after a
/// savepoint) whose COMMIT / ROLLBACK / ROLLBACK TO fails inside phenix, then the operations that a
/// table still believing its transaction open got wrong: a rolled-back transaction (which truncated
/// committed rows), a committed write, a compaction, a new connection.
fn failing_end(file: bool, compact: bool, end: End, failure: Failure) {
    let what = format!("file {file}, compaction {compact}, {end:?} failing by {failure:?}");
    let dir = TempDir::new(&format!(
        "txnfail-{}-{}-{end:?}-{}",
        file,
        compact,
        match failure {
            Failure::Panic(p) => p.replace([':', ' '], "_"),
            Failure::Io(p) => format!("{p:?}"),
        }
    ));
    let db = dir.0.join("f.db");
    let plan = FaultPlan::new();
    let _scope = fault::scope(&dir.0, plan.clone());
    let c = if file {
        common::open(&db)
    } else {
        common::mem()
    };
    c.execute_batch(
        "CREATE VIRTUAL TABLE t USING phenix(v float32[2] distance=l2);
         CREATE TABLE r(id INTEGER PRIMARY KEY, a REAL, b REAL);",
    )
    .unwrap();
    for id in 1..=6 {
        put(&c, id);
    }
    c.execute_batch("BEGIN").unwrap();
    put(&c, 7);
    put(&c, 8);
    if compact {
        del(&c, 2);
        c.execute_batch("INSERT INTO t(t) VALUES ('optimize')")
            .unwrap();
    }
    c.execute_batch("SAVEPOINT s").unwrap();
    put(&c, 9);
    del(&c, 4);
    if compact {
        c.execute_batch("INSERT INTO t(t) VALUES ('optimize')")
            .unwrap();
    }
    put(&c, 12);
    // A KNN writes the buffered rows to the file, so a rollback has file space to give back.
    same_as_reference(&c, &format!("{what}: inside the transaction"));
    let sql = match end {
        End::Commit => "COMMIT",
        End::Rollback => "ROLLBACK",
        End::RollbackTo => "ROLLBACK TO s",
    };
    match failure {
        Failure::Panic(kind) => {
            // SQLite ignores xCommit's and xRollback's result; a failing xRollbackTo fails its
            // statement. Either way the panic fired (with_panic checks) and stays inside phenix.
            let _ = with_panic(&c, kind, sql);
        }
        Failure::Io(point) => {
            plan.arm(point, 0);
            let _ = c.execute_batch(sql);
            plan.disarm();
            assert_eq!(plan.fired(), 1, "{what}: the injected fault did not fire");
        }
    }
    if !c.is_autocommit() {
        // After ROLLBACK TO the transaction goes on: the rows of before the savepoint commit.
        same_as_reference(&c, &format!("{what}: after {sql}, in the transaction"));
        put(&c, 13);
        c.execute_batch("COMMIT").unwrap();
    }
    same_as_reference(&c, &format!("{what}: after {sql}"));
    // A table that still believed its transaction open truncated the committed rows here.
    c.execute_batch("BEGIN").unwrap();
    put(&c, 20);
    same_as_reference(&c, &format!("{what}: a later transaction"));
    c.execute_batch("ROLLBACK").unwrap();
    same_as_reference(&c, &format!("{what}: after a later ROLLBACK"));
    put(&c, 21);
    same_as_reference(&c, &format!("{what}: after a later INSERT"));
    c.execute_batch("BEGIN").unwrap();
    del(&c, 1);
    c.execute_batch("INSERT INTO t(t) VALUES ('optimize'); COMMIT")
        .unwrap();
    same_as_reference(&c, &format!("{what}: after a later compaction"));
    assert_eq!(
        c.query_row("SELECT phenix_check('t')", [], |r| r.get::<_, String>(0))
            .unwrap(),
        "ok",
        "{what}"
    );
    if file {
        drop(c);
        let c = common::open(&db);
        same_as_reference(&c, &format!("{what}: a new connection"));
        assert_eq!(
            c.query_row("SELECT phenix_check('t')", [], |r| r.get::<_, String>(0))
                .unwrap(),
            "ok",
            "{what}: a new connection"
        );
    }
}

/// A failure inside xCommit, xRollback or xRollbackTo (a panic at its entry or part-way, or an I/O
/// error while giving file space back) leaves the table consistent with what SQLite committed: no
/// committed row is lost by a later ROLLBACK, and later writes, compactions and connections agree with
/// an ordinary table that took the same statements. Before the fix, a failed xCommit left the table
/// believing its transaction open, and the next ROLLBACK truncated the rows committed since.
#[test]
fn a_failing_commit_or_rollback_loses_no_committed_row() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let cases: &[(End, Failure)] = &[
        (End::Commit, Failure::Panic("xCommit")),
        (End::Commit, Failure::Panic("xCommit: store committed")),
        (End::Commit, Failure::Panic("xCommit: count taken over")),
        (End::Rollback, Failure::Panic("xRollback")),
        (End::Rollback, Failure::Panic("xRollback: store restored")),
        (End::Rollback, Failure::Io(FaultPoint::Truncate)),
        (End::RollbackTo, Failure::Panic("xRollbackTo")),
        (
            End::RollbackTo,
            Failure::Panic("xRollbackTo: savepoints dropped"),
        ),
        (End::RollbackTo, Failure::Io(FaultPoint::Truncate)),
    ];
    for file in [true, false] {
        for compact in [false, true] {
            for &(end, failure) in cases {
                if !file && matches!(failure, Failure::Io(_)) {
                    // In-memory stores do no file I/O.
                    continue;
                }
                failing_end(file, compact, end, failure);
            }
        }
    }
}
