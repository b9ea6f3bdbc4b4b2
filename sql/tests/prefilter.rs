//! KNN metadata pre-filters against SQLite itself, property-tested: random values of every storage
//! class (integers at the 2^53 and i64 edges, reals, -0.0, texts, NULL) in typed and untyped columns,
//! and random constraints of every operator phenix pushes down. Each query runs three times, so both
//! the SQLite pre-filter and phenix's in-memory metadata cache (built on the second sight of the same
//! data) answer; the row ids must equal a plain SQLite table's `WHERE` on the same rows.
//! `PHENIX_PROPTEST_CASES=N` sets the number of cases (default 40).

mod common;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use rusqlite::types::Value;
use rusqlite::Connection;

fn pool() -> Vec<Value> {
    vec![
        Value::Null,
        Value::Integer(0),
        Value::Integer(-1),
        Value::Integer(3),
        Value::Integer(1 << 53),
        Value::Integer((1 << 53) + 1),
        Value::Integer(i64::MAX),
        Value::Integer(i64::MIN),
        Value::Real(0.5),
        Value::Real(-0.0),
        Value::Real(3.0),
        Value::Real(9_007_199_254_740_992.0),
        Value::Real(1e300),
        Value::Real(-1e-300),
        Value::Text(String::new()),
        Value::Text("a".into()),
        Value::Text("A".into()),
        Value::Text("3".into()),
        Value::Text("10".into()),
        Value::Text("é".into()),
    ]
}

const COLS: [&str; 4] = ["n", "r", "s", "u"];
const OPS: [&str; 10] = [
    "=",
    "<",
    "<=",
    ">",
    ">=",
    "!=",
    "IS",
    "IS NOT",
    "IS NULL",
    "IS NOT NULL",
];

fn ids(c: &Connection, sql: &str, p: &Value) -> Vec<i64> {
    let mut st = c.prepare(sql).unwrap();
    let params: Vec<&Value> = if st.parameter_count() == 0 {
        vec![]
    } else {
        vec![p]
    };
    let mut v: Vec<i64> = st
        .query_map(rusqlite::params_from_iter(params), |r| r.get(0))
        .unwrap()
        .map(|r| r.unwrap())
        .collect();
    v.sort_unstable();
    v
}

#[test]
fn prefiltered_knn_selects_what_sqlite_selects() {
    let cases = std::env::var("PHENIX_PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(40);
    let pool = pool();
    let np = pool.len();
    let rows = prop::collection::vec(prop::array::uniform4(0..np), 1..120);
    let conds = prop::collection::vec((0..COLS.len(), 0..OPS.len(), 0..np), 1..8);
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(&(rows, conds), |(rows, conds)| {
            let c = common::mem();
            c.execute_batch(
                "CREATE VIRTUAL TABLE t USING phenix(v float32[2] distance=l2, n INTEGER, r REAL, s TEXT, u);
                 CREATE TABLE p(id INTEGER PRIMARY KEY, n INTEGER, r REAL, s TEXT, u);",
            )
            .unwrap();
            for (i, vals) in rows.iter().enumerate() {
                let v: Vec<&Value> = vals.iter().map(|&j| &pool[j]).collect();
                let id = i as i64 + 1;
                c.execute(
                    "INSERT INTO t(rowid, v, n, r, s, u) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    rusqlite::params![id, format!("[{id}, 0]"), v[0], v[1], v[2], v[3]],
                )
                .unwrap();
                c.execute(
                    "INSERT INTO p(id, n, r, s, u) VALUES (?1, ?2, ?3, ?4, ?5)",
                    rusqlite::params![id, v[0], v[1], v[2], v[3]],
                )
                .unwrap();
            }
            for &(col, op, val) in &conds {
                let (col, op) = (COLS[col], OPS[op]);
                let f = if op.ends_with("NULL") {
                    format!("{col} {op}")
                } else {
                    format!("{col} {op} ?1")
                };
                let want = ids(&c, &format!("SELECT id FROM p WHERE {f}"), &pool[val]);
                for round in 0..3 {
                    let got = ids(
                        &c,
                        &format!("SELECT rowid FROM t WHERE v MATCH '[0, 0]' AND k = 100000 AND {f}"),
                        &pool[val],
                    );
                    prop_assert_eq!(
                        &got,
                        &want,
                        "`{}` with {:?}, round {}",
                        f,
                        &pool[val],
                        round
                    );
                }
            }
            Ok(())
        })
        .unwrap();
}
