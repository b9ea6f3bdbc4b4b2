//! Arguments of every phenix SQL function.

use crate::harness::*;
use proptest::prelude::*;
use rusqlite::types::Value;
use rusqlite::Connection;

/// SQL expressions for argument values of every type, including the awkward ones.
const ARGS: &[&str] = &[
    "NULL",
    "0",
    "-1",
    "1",
    "2",
    "-9223372036854775808",
    "9223372036854775807",
    "0.5",
    "-0.0",
    "1e308",
    "''",
    "'x'",
    "CAST(x'ff80' AS TEXT)",
    "x''",
    "x'0000803f0000803f'",
    "zeroblob(100000)",
    "'[1,0]'",
    "'[1,2,3]'",
    "'default'",
    "'t'",
    "'main.t'",
    "'temp.t'",
    "'plain'",
    "'nope'",
    "'a.b.c'",
    "'.t'",
    "'float16'",
    "'CCO'",
    "'SELECT ''CCO'', 1.0'",
    "printf('%.*c', 20000, 'a')",
    "'/'",
    "'/dev/null'",
];

/// (SQL template with `{0}`, `{1}`, …, number of arguments, name the error must mention).
const CALLS: &[(&str, usize, &str)] = &[
    ("SELECT phenix_version()", 0, "phenix_version"),
    ("SELECT phenix_f16({0})", 1, "phenix_f16()"),
    ("SELECT phenix_f16({0}, {1})", 2, "phenix_f16()"),
    ("SELECT phenix_f32({0}, {1})", 2, "phenix_f32()"),
    ("SELECT phenix_to_json({0})", 1, "phenix_to_json()"),
    ("SELECT phenix_dims({0}, {1})", 2, "phenix_dims()"),
    ("SELECT phenix_normalize({0})", 1, "phenix_normalize()"),
    (
        "SELECT phenix_distance_cosine({0}, {1})",
        2,
        "phenix_distance_cosine()",
    ),
    (
        "SELECT phenix_distance_l2({0}, {1}, {2})",
        3,
        "phenix_distance_l2()",
    ),
    ("SELECT phenix_dot({0}, {1})", 2, "phenix_dot()"),
    (
        "SELECT phenix_mean(v) FROM (SELECT {0} AS v UNION ALL SELECT {1})",
        2,
        "phenix_mean",
    ),
    ("SELECT phenix_mean({0}, {1})", 2, "phenix_mean"),
    (
        "SELECT phenix_fingerprint({0}, {1}, {2})",
        3,
        "phenix_fingerprint",
    ),
    ("SELECT phenix_model_load({0}, {1})", 2, "phenix_model_load"),
    (
        "SELECT phenix_model_load({0}, {1}, {2})",
        3,
        "phenix_model_load",
    ),
    (
        "SELECT phenix_embed_molecule({0}, {1}, {2})",
        3,
        "phenix_embed_molecule",
    ),
    (
        "SELECT phenix_embed_phenomics({0}, {1})",
        2,
        "phenix_embed_phenomics",
    ),
    (
        "SELECT phenix_retrieve({0}, {1}, {2})",
        3,
        "phenix_retrieve",
    ),
    (
        "SELECT count(*) FROM phenix_retrieve({0}, {1}, {2})",
        3,
        "phenix_retrieve",
    ),
    (
        "SELECT count(*) FROM phenix_retrieve_all({0}, {1}, {2})",
        3,
        "phenix_retrieve_all",
    ),
    (
        "SELECT count(*) FROM phenix_embed_molecules({0}, {1})",
        2,
        "phenix_embed_molecules",
    ),
    ("SELECT count(*) FROM phenix_models", 0, "phenix_models"),
    (
        "SELECT count(*) FROM t WHERE v MATCH {0} AND k = {1}",
        2,
        "phenix table t",
    ),
    (
        "SELECT count(*) FROM t WHERE v MATCH {0} AND k = {1} AND distance < {2}",
        3,
        "phenix table t",
    ),
    (
        "SELECT count(*) FROM t WHERE v MATCH {0} AND m = {1} AND distance <= {2}",
        3,
        "phenix table t",
    ),
    (
        "SELECT count(*) FROM t WHERE rowid = {0} AND m >= {1}",
        2,
        "phenix table t",
    ),
    (
        "INSERT INTO t(rowid, v, m) VALUES ({0}, {1}, {2})",
        3,
        "phenix table t",
    ),
    (
        "UPDATE t SET v = {0} WHERE rowid = {1}",
        2,
        "phenix table t",
    ),
];

fn arg_fixture() -> Connection {
    let c = mem();
    c.execute_batch(
        "CREATE VIRTUAL TABLE t USING phenix(v float32[2] distance=l2, m INTEGER);
         CREATE VIRTUAL TABLE q USING phenix(v float16[2]);
         CREATE TABLE plain(x);
         INSERT INTO t(rowid, v, m) VALUES (1, '[0, 0]', 1), (2, '[3, 4]', 2), (3, '[1, 1]', 3);
         INSERT INTO q(rowid, v) VALUES (10, '[1, 0]');",
    )
    .unwrap();
    c
}

#[test]
fn every_function_with_arguments_of_every_type() {
    let c = arg_fixture();
    let strategy = (
        0..CALLS.len(),
        prop::collection::vec(prop::sample::select(ARGS.to_vec()), 3),
    );
    runner(2000)
        .run(&strategy, |(ci, args)| {
            let (tpl, n, name) = CALLS[ci];
            let mut sql = tpl.to_string();
            for (i, a) in args.iter().enumerate().take(n) {
                // Invalid UTF-8 in table constraints has its own test
                // (invalid_utf8_in_table_constraints_names_the_table).
                let a = if name == "phenix table t" && a.contains("x'ff80'") {
                    "'y'"
                } else {
                    a
                };
                sql = sql.replace(&format!("{{{i}}}"), a);
            }
            // Writes are undone so every case sees the same table.
            let r = in_sql(|| {
                c.execute_batch("SAVEPOINT s")?;
                let r = rows(&c, &sql);
                c.execute_batch("ROLLBACK TO s; RELEASE s")?;
                r
            });
            match r {
                // SQLite's own check of a non-integer rowid given to INSERT/UPDATE of a virtual table.
                Err(rusqlite::Error::SqliteFailure(f, Some(m)))
                    if f.code == rusqlite::ErrorCode::TypeMismatch && tpl.contains("INTO t") =>
                {
                    prop_assert_eq!(m, "datatype mismatch");
                }
                // A duplicate rowid is a constraint violation (the code conflict clauses act on),
                // reported by phenix for the table itself (not its shadow table).
                Err(rusqlite::Error::SqliteFailure(f, Some(m)))
                    if f.code == rusqlite::ErrorCode::ConstraintViolation
                        && tpl.contains(" t")
                        && tpl.starts_with(['I', 'U']) =>
                {
                    prop_assert!(
                        m.starts_with("phenix: phenix table t: a row with rowid ")
                            && m.contains("UNIQUE constraint failed: t.rowid"),
                        "{}: {}",
                        sql,
                        m
                    );
                }
                Err(e) => {
                    let msg = phenix_msg(&e, &sql);
                    prop_assert!(
                        msg.contains(name)
                            || msg.starts_with("phenix: no model named ")
                            // phenix_retrieve reports a bad query as the table's own MATCH error.
                            || (name.starts_with("phenix_retrieve") && msg.starts_with("phenix: phenix table ")),
                        "{}: the message does not name {}: {}",
                        sql,
                        name,
                        msg
                    );
                }
                Ok(_) => {}
            }
            Ok(())
        })
        .unwrap();
    // The documented messages for the classic mistakes.
    for (sql, want) in [
        ("SELECT count(*) FROM t WHERE v MATCH '[1,0]' AND k = 0", "phenix: phenix table t: k must be a positive integer, got 0"),
        ("SELECT count(*) FROM t WHERE v MATCH '[1,0]' AND k = -5", "phenix: phenix table t: k must be a positive integer, got -5"),
        ("SELECT count(*) FROM t WHERE v MATCH '[1,0]' AND k = NULL", "phenix: phenix table t: k must be a positive integer, got NULL"),
        ("SELECT count(*) FROM t WHERE v MATCH '[1,0]' AND k = 2.5", "phenix: phenix table t: k must be a positive integer, got 2.5"),
        ("SELECT count(*) FROM t WHERE v MATCH '[1,0]' AND k = 'ten'", "phenix: phenix table t: k must be a positive integer, got text"),
        ("SELECT phenix_retrieve('t', '[1,0]', 0)", "phenix: phenix_retrieve: k must be a positive integer, got 0"),
        ("SELECT count(*) FROM phenix_retrieve('t', '[1,0]', -1)", "phenix: phenix_retrieve: k must be a positive integer, got -1"),
        ("SELECT count(*) FROM phenix_retrieve_all('t', 'q', NULL)", "phenix: phenix_retrieve_all: k must be a positive integer, got NULL"),
        ("SELECT count(*) FROM phenix_retrieve('nope', '[1,0]', 1)", "phenix: phenix_retrieve: no table nope: no such table: main.nope"),
        ("SELECT count(*) FROM phenix_retrieve('plain', '[1,0]', 1)", "phenix: phenix_retrieve: plain is not a phenix table"),
        ("SELECT count(*) FROM phenix_retrieve(NULL, '[1,0]', 1)", "phenix: phenix_retrieve: argument 1 (table name) is NULL; expected text"),
        ("SELECT count(*) FROM phenix_retrieve('t', NULL, 1)", "phenix: phenix table t: MATCH on v expects float32[2]: got NULL"),
        ("SELECT count(*) FROM phenix_retrieve_all('t', 'nope', 1)", "phenix: phenix_retrieve_all: no table nope: no such table: main.nope"),
        ("SELECT phenix_embed_molecule(NULL, 'CCO', 1)", "phenix: phenix_embed_molecule: argument 1 (model) is NULL; expected text"),
        ("SELECT phenix_embed_molecule('nope', 'CCO', 1)", "phenix: no model named 'nope'; load one with phenix_model_load(name, path) (loaded: default)"),
        ("SELECT phenix_fingerprint('CCO', NULL, 2048)", "phenix: phenix_fingerprint: argument 2 (radius) must be an integer"),
        ("SELECT phenix_model_load('x', NULL)", "phenix: phenix_model_load() argument 2 expects a file path (text): got NULL"),
        ("SELECT phenix_model_load('default', '/')", "phenix: phenix_model_load: the name 'default' is reserved for the shipped model"),
    ] {
        let msg = expect_err(one(&c, sql), sql);
        match want.strip_suffix(')').filter(|w| w.contains("(loaded: ")) {
            // The model registry is process-wide: other tests of this binary (bundles.rs) may have
            // loaded models by now, and they are listed after `default`.
            Some(prefix) => assert!(msg.starts_with(prefix), "{sql}: {msg}"),
            None => assert_eq!(msg, want, "{sql}"),
        }
    }
    // phenix_embed_molecules: the inner query's values of the wrong type name the row and the column.
    for (q, want) in [
        ("SELECT 1, 2", "SMILES"),
        ("SELECT 'CCO', 'abc'", "concentration"),
        ("SELECT x'00', 1.0", "SMILES"),
        ("SELECT 'CCO', x'00'", "concentration"),
        ("SELECT NULL, 1.0", "NULL SMILES"),
        ("SELECT 'CCO', NULL", "NULL concentration"),
        ("SELECT 'C1CC', 1.0", "invalid SMILES"),
        ("SELECT 'CCO', -1.0", "concentration -1"),
    ] {
        let sql = format!(
            "SELECT count(*) FROM phenix_embed_molecules('default', '{}')",
            q.replace('\'', "''")
        );
        let msg = expect_err(one(&c, &sql), &sql);
        assert!(
            msg.starts_with("phenix: phenix_embed_molecules: ") && msg.contains(want),
            "{sql}: {msg}"
        );
    }
    assert_no_panics();
}

/// Text that is not UTF-8 in a constraint or column value: an error naming the table and the column
/// (or the rowid), not a bare decoding error.
#[test]
fn invalid_utf8_in_table_constraints_names_the_table() {
    let c = arg_fixture();
    let mut bad = Vec::new();
    for sql in [
        "SELECT count(*) FROM t WHERE rowid = CAST(x'ff80' AS TEXT)",
        "SELECT count(*) FROM t WHERE v MATCH '[1,0]' AND k = 3 AND m = CAST(x'ff80' AS TEXT)",
        "INSERT INTO t(rowid, v, m) VALUES (9, '[1,0]', CAST(x'ff80' AS TEXT))",
    ] {
        let msg = expect_err(one(&c, sql), sql);
        if !msg.contains("phenix table t") {
            bad.push(format!("{sql}: {msg}"));
        }
    }
    assert_no_panics();
    assert!(
        bad.is_empty(),
        "messages that do not name the table: {bad:#?}"
    );
}

/// A query vector given as text that is not UTF-8: the message names phenix_retrieve and says what
/// was expected (it used to be a bare "invalid value", found by the property test above).
#[test]
fn invalid_utf8_query_of_phenix_retrieve_names_the_function() {
    let c = arg_fixture();
    let sql = "SELECT * FROM phenix_retrieve('t', CAST(x'ff80' AS TEXT), 1)";
    let msg = expect_err(one(&c, sql), sql);
    assert!(
        msg.contains("phenix_retrieve: query") && msg.contains("UTF-8"),
        "{sql}: {msg}"
    );
    assert_no_panics();
}

#[test]
fn huge_k_returns_every_qualifying_row_without_allocating_for_k() {
    let c = mem();
    c.execute_batch(
        "CREATE VIRTUAL TABLE t USING phenix(v float32[4] distance=l2, m INTEGER);
         CREATE VIRTUAL TABLE q USING phenix(v float32[4] distance=l2);",
    )
    .unwrap();
    let n = 200usize;
    let mut vecs = Vec::new();
    for i in 0..n {
        let v: Vec<f32> = (0..4)
            .map(|j| (((i * 7 + j * 13) % 101) as f32 - 50.0) / 10.0)
            .collect();
        in_sql(|| {
            c.execute(
                "INSERT INTO t(rowid, v, m) VALUES (?1, ?2, ?3)",
                rusqlite::params![i as i64 + 1, f32s_le(&v), (i % 3) as i64],
            )
        })
        .unwrap();
        vecs.push(v);
    }
    in_sql(|| {
        c.execute(
            "INSERT INTO q(rowid, v) VALUES (1, ?1), (2, ?2)",
            [f32s_le(&[0.0; 4]), f32s_le(&[1.0; 4])],
        )
    })
    .unwrap();
    let query = [0.0f32; 4];
    // Reference: rowids by f64 distance, ties by rowid.
    let mut reference: Vec<(f64, i64, i64)> = vecs
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let d = v
                .iter()
                .zip(&query)
                .map(|(&a, &b)| (f64::from(a) - f64::from(b)).powi(2))
                .sum::<f64>()
                .sqrt();
            (d, i as i64 + 1, (i % 3) as i64)
        })
        .collect();
    reference.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    let all: Vec<Value> = reference.iter().map(|r| Value::Integer(r.1)).collect();
    let m1: Vec<Value> = reference
        .iter()
        .filter(|r| r.2 == 1)
        .map(|r| Value::Integer(r.1))
        .collect();
    let k = i64::MAX;
    let ql = blob_lit(&f32s_le(&query));
    // Rows at equal distance may come in either order when float32 rounding separates them: compare
    // as sets, and check the order against the reference distances.
    let dist_of: std::collections::HashMap<i64, f64> =
        reference.iter().map(|r| (r.1, r.0)).collect();
    let same_rows = |got: &[Value], want: &[Value], sql: &str| {
        let ids = |v: &[Value]| {
            let mut x: Vec<i64> = v
                .iter()
                .map(|v| match v {
                    Value::Integer(i) => *i,
                    o => panic!("{o:?}"),
                })
                .collect();
            let order = x.clone();
            x.sort();
            (x, order)
        };
        let (g, order) = ids(got);
        assert_eq!(g, ids(want).0, "{sql}: other rows");
        for w in order.windows(2) {
            assert!(
                dist_of[&w[0]] <= dist_of[&w[1]] + 1e-6,
                "{sql}: {} before {}",
                w[0],
                w[1]
            );
        }
    };
    for (sql, want) in [
        (
            format!("SELECT rowid FROM t WHERE v MATCH {ql} AND k = {k}"),
            &all,
        ),
        (
            format!("SELECT rowid FROM t WHERE v MATCH {ql} AND k = {k} AND m = 1"),
            &m1,
        ),
        (
            format!("SELECT rowid FROM t WHERE v MATCH {ql} ORDER BY distance LIMIT {k}"),
            &all,
        ),
        (
            format!("SELECT rowid FROM phenix_retrieve('t', {ql}, {k})"),
            &all,
        ),
        (
            format!("SELECT rowid FROM t WHERE v MATCH {ql} AND k = 100000000"),
            &all,
        ),
    ] {
        let (got, peak) = peak_alloc(|| rows(&c, &sql).unwrap());
        same_rows(&got, want, &sql);
        assert!(peak < 8 << 20, "{sql}: allocated {peak} bytes for {n} rows");
    }
    let (got, peak) = peak_alloc(|| {
        one(
            &c,
            &format!("SELECT json_array_length(phenix_retrieve('t', {ql}, {k}))"),
        )
        .unwrap()
    });
    assert_eq!(got, Value::Integer(n as i64));
    assert!(
        peak < 8 << 20,
        "scalar phenix_retrieve allocated {peak} bytes"
    );
    let (got, peak) = peak_alloc(|| {
        one(
            &c,
            &format!("SELECT count(*) FROM phenix_retrieve_all('t', 'q', {k})"),
        )
        .unwrap()
    });
    assert_eq!(got, Value::Integer(2 * n as i64));
    assert!(peak < 8 << 20, "phenix_retrieve_all allocated {peak} bytes");
    // The distance bound with a huge k: exactly the rows under it.
    // A bound halfway between two distinct distances (no row sits on it).
    let i = (n / 2..n - 1)
        .find(|&i| reference[i + 1].0 - reference[i].0 > 1e-3)
        .unwrap();
    let t = (reference[i].0 + reference[i + 1].0) / 2.0;
    let want: Vec<Value> = reference
        .iter()
        .filter(|r| (r.0 as f32) < t as f32)
        .map(|r| Value::Integer(r.1))
        .collect();
    let sql = format!("SELECT rowid FROM t WHERE v MATCH {ql} AND k = {k} AND distance < {t}");
    same_rows(&rows(&c, &sql).unwrap(), &want, &sql);
    assert_no_panics();
}
