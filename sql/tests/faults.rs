//! I/O fault injection (phenix-core's `fault-injection` feature): every file-system call of the vector
//! store (create, write, fsync, truncate, map, open) is made to fail, one at a time and at each of its
//! first few occurrences, during every kind of operation. The failing statement must report the fault
//! (never succeed silently), and afterwards the table must hold exactly what the model says (the
//! failed operation's changes gone, everything committed before intact), pass `phenix_check`, and keep
//! working. Each operation kind is its own test; each attaches its fault plan to its own directory
//! (`fault::scope`), so the tests run in parallel without seeing each other's faults.

mod common;
use common::*;
use phenix_core::fault::{self, FaultPlan, FaultPoint};
use rusqlite::{params, Connection};
use std::collections::BTreeMap;
use std::path::Path;

const DIM: usize = 8;
type Model = BTreeMap<i64, Vec<u8>>;

fn contents(c: &Connection) -> rusqlite::Result<Model> {
    c.prepare("SELECT rowid, v FROM t")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect()
}

fn insert(c: &Connection, m: &mut Model, id: i64) -> rusqlite::Result<()> {
    let v = rand_vec(id as u64, DIM);
    c.execute(
        "INSERT INTO t(rowid, v) VALUES (?1, ?2)",
        params![id, json(&v)],
    )?;
    m.insert(id, json_f16_bytes(&v));
    Ok(())
}

fn knn_count(c: &Connection) -> rusqlite::Result<i64> {
    c.query_row(
        "SELECT count(*) FROM t WHERE v MATCH '[1,0,0,0,0,0,0,0]' AND k = 5",
        [],
        |x| x.get(0),
    )
}

/// Runs `body` as one transaction: all of it, or (on any error) none of it.
fn atomically(
    c: &Connection,
    m: &mut Model,
    body: impl FnOnce(&Connection, &mut Model) -> rusqlite::Result<()>,
) -> rusqlite::Result<()> {
    let mut scratch = m.clone();
    c.execute_batch("BEGIN")?;
    let r = body(c, &mut scratch).and_then(|()| c.execute_batch("COMMIT"));
    match r {
        Ok(()) => {
            *m = scratch;
            Ok(())
        }
        Err(e) => {
            let _ = c.execute_batch("ROLLBACK");
            Err(e)
        }
    }
}

type Op = fn(&Path, &Connection, &mut Model) -> rusqlite::Result<()>;

fn ops() -> Vec<(&'static str, Op)> {
    vec![
        ("insert 300 rows", |_, c, m| {
            atomically(c, m, |c, m| {
                for id in 1000..1300 {
                    insert(c, m, id)?;
                }
                Ok(())
            })
        }),
        ("update and delete", |_, c, m| {
            atomically(c, m, |c, m| {
                for id in (1..40).step_by(3) {
                    let v = rand_vec(7000 + id as u64, DIM);
                    c.execute(
                        "UPDATE t SET v = ?1 WHERE rowid = ?2",
                        params![json(&v), id],
                    )?;
                    m.insert(id, json_f16_bytes(&v));
                }
                c.execute("DELETE FROM t WHERE rowid % 5 = 0", [])?;
                m.retain(|id, _| id % 5 != 0);
                Ok(())
            })
        }),
        ("optimize", |_, c, m| {
            atomically(c, m, |c, m| {
                c.execute("DELETE FROM t WHERE rowid % 4 = 1", [])?;
                m.retain(|id, _| id % 4 != 1);
                c.execute("INSERT INTO t(t) VALUES ('optimize')", [])?;
                Ok(())
            })
        }),
        ("insert then roll back", |_, c, m| {
            c.execute_batch("BEGIN")?;
            let mut scratch = m.clone();
            let r = (|| {
                for id in 2000..2100 {
                    insert(c, &mut scratch, id)?;
                }
                // A query inside the transaction writes the buffered rows to the file, so the
                // rollback has to truncate it.
                knn_count(c).map(|_| ())
            })();
            c.execute_batch("ROLLBACK")?;
            r
        }),
        ("savepoint rolled back", |_, c, m| {
            atomically(c, m, |c, m| {
                insert(c, m, 3000)?;
                c.execute_batch("SAVEPOINT s")?;
                let mut scratch = m.clone();
                for id in 3001..3100 {
                    insert(c, &mut scratch, id)?;
                }
                knn_count(c)?;
                c.execute_batch("ROLLBACK TO s; RELEASE s")?;
                insert(c, m, 3100)
            })
        }),
        ("create a second table", |_, c, _| {
            c.execute_batch("CREATE VIRTUAL TABLE u USING phenix(v float16[8]); INSERT INTO u(v) VALUES ('[1,2,3,4,5,6,7,8]')")
        }),
        ("read on a new connection", |db, _, m| {
            let r = open(db);
            same(&contents(&r)?, m, "a successful read");
            assert_eq!(knn_count(&r)?, 5.min(m.len() as i64));
            Ok(())
        }),
    ]
}

/// A database with table `t` holding rows 1..=200, committed.
fn setup(db: &Path) -> (Connection, Model) {
    let c = open(db);
    c.execute_batch("CREATE VIRTUAL TABLE t USING phenix(v float16[8] distance=cosine)")
        .unwrap();
    let mut m = Model::new();
    atomically(&c, &mut m, |c, m| {
        for id in 1..=200 {
            insert(c, m, id)?;
        }
        Ok(())
    })
    .unwrap();
    (c, m)
}

/// Panics with a short description of how `got` differs from `want`.
fn same(got: &Model, want: &Model, what: &str) {
    if got == want {
        return;
    }
    let extra: Vec<_> = got
        .keys()
        .filter(|k| !want.contains_key(k))
        .take(5)
        .collect();
    let missing: Vec<_> = want
        .keys()
        .filter(|k| !got.contains_key(k))
        .take(5)
        .collect();
    let changed: Vec<_> = want
        .iter()
        .filter(|(k, v)| got.get(k).is_some_and(|g| g != *v))
        .map(|(k, _)| k)
        .take(5)
        .collect();
    panic!(
        "{what}: {} rows, expected {}; extra {extra:?}, missing {missing:?}, changed {changed:?}",
        got.len(),
        want.len()
    );
}

fn verify(db: &Path, c: &Connection, m: &Model, what: &str) {
    same(
        &contents(c).unwrap(),
        m,
        &format!("{what}: same connection"),
    );
    let fresh = open(db);
    same(
        &contents(&fresh).unwrap(),
        m,
        &format!("{what}: new connection"),
    );
    let report: String = fresh
        .query_row("SELECT phenix_check('t')", [], |r| r.get(0))
        .unwrap();
    assert_eq!(report, "ok", "{what}");
}

/// Fails every I/O point at each of its first four calls during operation `op_name`, on a fresh
/// table each time, and checks the outcome against the model.
fn sweep(op_name: &str) {
    let (name, op) = ops()
        .into_iter()
        .find(|(n, _)| *n == op_name)
        .expect("a known operation");
    let dir = TempDir::new(&format!("faults-{}", name.replace(' ', "-")));
    let plan = FaultPlan::new();
    let _scope = fault::scope(&dir.0, plan.clone());
    let mut fired_cases = 0;
    let mut cases = 0;
    let mut per_point: BTreeMap<String, u32> = BTreeMap::new();
    for point in FaultPoint::ALL {
        for nth in 0..4u64 {
            cases += 1;
            let case = dir.0.join(format!("c{cases}"));
            std::fs::create_dir_all(&case).unwrap();
            let db = case.join("t.db");
            let (c, mut m) = setup(&db);
            let before = m.clone();
            let fired0 = plan.fired();
            plan.arm(point, nth);
            let r = op(&db, &c, &mut m);
            plan.disarm();
            let fired = plan.fired() > fired0;
            let what = format!("{name}, {point:?} #{nth}");
            if fired {
                fired_cases += 1;
                *per_point.entry(format!("{point:?}")).or_default() += 1;
                match &r {
                    Err(e) => {
                        let e = e.to_string();
                        assert!(
                            e.contains("injected fault") && e.contains("phenix"),
                            "{what}: the error does not name the fault: {e}"
                        );
                        m = before.clone();
                    }
                    // A failed clean-up after a rollback is reported to SQLite, which ignores it;
                    // the rows it left are past the committed count and removed by the next writer.
                    Ok(())
                        if name == "insert then roll back" || name == "savepoint rolled back" => {}
                    Ok(()) => panic!("{what}: the fault fired but the statement succeeded"),
                }
            } else {
                r.unwrap_or_else(|e| panic!("{what}: failed without a fault: {e}"));
            }
            verify(&db, &c, &m, &what);
            // Still usable: a write and a read on the connection that saw the fault.
            atomically(&c, &mut m, |c, m| insert(c, m, 9999))
                .unwrap_or_else(|e| panic!("{what}: write after the fault: {e}"));
            verify(&db, &c, &m, &format!("{what}, then a write"));
            drop(c);
            let _ = std::fs::remove_dir_all(&case);
        }
    }
    eprintln!("{name}: {cases} cases, {fired_cases} with a fault fired: {per_point:?}");
    assert!(fired_cases > 0, "{name}: no fault fired");
}

#[test]
fn faults_during_inserts() {
    sweep("insert 300 rows");
}

#[test]
fn faults_during_update_and_delete() {
    sweep("update and delete");
}

#[test]
fn faults_during_optimize() {
    sweep("optimize");
}

#[test]
fn faults_during_a_rollback() {
    sweep("insert then roll back");
}

#[test]
fn faults_during_a_savepoint_rollback() {
    sweep("savepoint rolled back");
}

#[test]
fn faults_during_create_table() {
    sweep("create a second table");
}

#[test]
fn faults_during_a_read_on_a_new_connection() {
    sweep("read on a new connection");
}

/// Every I/O point is reached, and fails cleanly, by at least one operation.
#[test]
fn every_point_fails_in_some_operation() {
    let dir = TempDir::new("faults-points");
    let mut reached = BTreeMap::new();
    for (name, op) in ops() {
        for point in FaultPoint::ALL {
            let case = dir.0.join(format!("{}-{point:?}", name.replace(' ', "-")));
            std::fs::create_dir_all(&case).unwrap();
            let plan = FaultPlan::new();
            let _scope = fault::scope(&case, plan.clone());
            let db = case.join("t.db");
            let (c, mut m) = setup(&db);
            plan.arm(point, 0);
            let r = op(&db, &c, &mut m);
            plan.disarm();
            if plan.fired() > 0 {
                reached.insert(format!("{point:?}"), name);
                if let Err(e) = r {
                    assert!(
                        e.to_string().contains("injected fault"),
                        "{name}, {point:?}: {e}"
                    );
                }
            }
            drop(c);
        }
    }
    for point in FaultPoint::ALL {
        assert!(
            reached.contains_key(&format!("{point:?}")),
            "no operation reached {point:?}: {reached:?}"
        );
    }
}
