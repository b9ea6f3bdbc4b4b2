//! Property tests of the analysis functions (sql/src/analysis/) on random, often bad, input: no panic
//! ever reaches SQLite, every error is `SQLITE_ERROR` with a `phenix: ` message naming the problem,
//! and input that must be refused (profiles of different lengths in one group, NaN/±inf elements,
//! blobs that are not fits, fits for another length) is never accepted; valid input gives the
//! answer recomputed here in f64 (medians, robust normalisation, fit round trips).
//!
//! `PHENIX_PROPTEST_CASES=N` runs every property with N cases (default 64).

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use rusqlite::types::Value;
use rusqlite::Connection;

fn cases() -> u32 {
    std::env::var("PHENIX_PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64)
}

fn conn() -> Connection {
    let c = Connection::open_in_memory().unwrap();
    phenix_sql::register(&c).unwrap();
    c
}

fn blob(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn floats(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// Runs `sql` over table `g(k, v)`; panics are caught by rusqlite and would surface as errors
/// mentioning "internal error", which this rejects.
fn run(c: &Connection, sql: &str) -> Result<Option<Value>, String> {
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        c.query_row(sql, [], |r| r.get::<_, Value>(0))
    }));
    match r {
        Err(_) => panic!("a panic escaped from {sql}"),
        Ok(Ok(v)) => Ok(Some(v)),
        Ok(Err(rusqlite::Error::QueryReturnedNoRows)) => Ok(None),
        Ok(Err(e)) => {
            let msg = e.to_string();
            assert_eq!(
                e.sqlite_error_code(),
                Some(rusqlite::ErrorCode::Unknown),
                "{msg}"
            );
            assert!(
                msg.starts_with("phenix: "),
                "error without the phenix prefix: {msg}"
            );
            assert!(
                !msg.contains("internal error"),
                "a panic inside phenix: {msg}"
            );
            Err(msg)
        }
    }
}

/// An element: mostly ordinary numbers, sometimes NaN / ±inf.
fn elem() -> impl Strategy<Value = f32> {
    prop_oneof![
        20 => -100.0f32..100.0,
        1 => Just(f32::NAN),
        1 => Just(f32::INFINITY),
        1 => Just(f32::NEG_INFINITY),
        2 => Just(1.0f32),
    ]
}

/// A group of profiles, usually of one length, sometimes not.
fn group() -> impl Strategy<Value = Vec<Vec<f32>>> {
    (1usize..6, 1usize..12).prop_flat_map(|(d, n)| {
        proptest::collection::vec(
            prop_oneof![10 => proptest::collection::vec(elem(), d..=d), 1 => proptest::collection::vec(elem(), 1..8)],
            n..=n,
        )
    })
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    }
}

const AGGREGATES: &[&str] = &[
    "phenix_median(v)",
    "phenix_modz(v)",
    "phenix_norm_fit('robust', v)",
    "phenix_norm_fit('standardize', v)",
    "phenix_norm_fit('sphere', v, '{\"method\":\"zca\",\"pad\":true}')",
    "phenix_norm_fit('sphere', v, '{\"method\":\"pca-cor\"}')",
    "phenix_feature_select(v, (SELECT names FROM n), '{\"operations\":[\"variance_threshold\",\"frequency_threshold\",\"correlation_threshold\"]}')",
    "phenix_activity(k, v, 50, 3)",
    "phenix_activity_map(rowid, k, k = 0, v, '{\"null_size\": 20}')",
    "phenix_map(rowid, k, v, '{\"null_size\": 20}')",
    "phenix_moa_accuracy(rowid, k, k % 2, v)",
    "phenix_recall(CASE WHEN rowid % 2 THEN 'query' ELSE 'candidate' END, rowid, k, v, 50)",
];

#[test]
fn aggregates_refuse_bad_groups_and_never_panic() {
    let mut runner = TestRunner::new(Config {
        cases: cases(),
        ..Config::default()
    });
    runner
        .run(
            &(group(), proptest::collection::vec(0i64..3, 12)),
            |(g, keys)| {
                let c = conn();
                c.execute_batch("CREATE TABLE g(k, v); CREATE TABLE n(names);")
                    .unwrap();
                for (i, v) in g.iter().enumerate() {
                    c.execute(
                        "INSERT INTO g VALUES (?1, ?2)",
                        rusqlite::params![keys[i % keys.len()], blob(v)],
                    )
                    .unwrap();
                }
                let d0 = g[0].len();
                let names: Vec<String> = (0..d0).map(|j| format!("f{j}")).collect();
                c.execute(
                    "INSERT INTO n VALUES (?1)",
                    [serde_json::to_string(&names).unwrap()],
                )
                .unwrap();
                let ragged = g.iter().any(|v| v.len() != d0);
                let non_finite = g.iter().flatten().any(|x| !x.is_finite());
                for agg in AGGREGATES {
                    let r = run(&c, &format!("SELECT {agg} FROM g"));
                    if ragged || non_finite {
                        let msg = r.expect_err(&format!(
                            "{agg} accepted a group with ragged or non-finite profiles: {g:?}"
                        ));
                        if non_finite && !ragged {
                            assert!(msg.contains("NaN") || msg.contains("inf"), "{agg}: {msg}");
                        }
                    }
                }
                if !ragged && !non_finite {
                    // Medians and robust fits against f64 recomputation.
                    let med = run(&c, "SELECT phenix_median(v) FROM g").unwrap().unwrap();
                    let Value::Blob(b) = med else {
                        panic!("median is not a blob")
                    };
                    let got = floats(&b);
                    for j in 0..d0 {
                        let want = median(g.iter().map(|v| f64::from(v[j])).collect());
                        assert_eq!(got[j], want as f32);
                    }
                    if let Ok(Some(Value::Blob(fit))) =
                        run(&c, "SELECT phenix_norm_fit('robust', v) FROM g")
                    {
                        let Value::Blob(out) = run_bound(&c, &fit, &g[0]).unwrap() else {
                            panic!()
                        };
                        let out = floats(&out);
                        for j in 0..d0 {
                            let col: Vec<f64> = g.iter().map(|v| f64::from(v[j])).collect();
                            let m = median(col.clone());
                            let mad = median(col.iter().map(|x| (x - m).abs()).collect()) * 1.4826;
                            let want = (f64::from(g[0][j]) - m) / (mad + 1e-18);
                            assert!(
                                ((f64::from(out[j]) - want) / want.abs().max(1.0)).abs() < 1e-6,
                                "{j}: {} vs {want}",
                                out[j]
                            );
                        }
                        // Another length is refused, naming both.
                        let mut longer = g[0].clone();
                        longer.push(1.0);
                        let e = run_bound(&c, &fit, &longer).unwrap_err();
                        assert!(e.contains(&format!("profiles of {d0} features")), "{e}");
                        // Any single-byte change is refused (checksum), never applied.
                        for pos in [0, 9, 13, 17, fit.len() / 2, fit.len() - 1] {
                            let mut bad = fit.clone();
                            bad[pos] ^= 0x5a;
                            let e = run_bound(&c, &bad, &g[0]).unwrap_err();
                            assert!(e.contains("not a fitted normalisation"), "{e}");
                        }
                    }
                }
                Ok(())
            },
        )
        .unwrap();
}

fn run_bound(c: &Connection, fit: &[u8], v: &[f32]) -> Result<Value, String> {
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        c.query_row(
            "SELECT phenix_norm_apply(?1, ?2)",
            rusqlite::params![fit, blob(v)],
            |r| r.get::<_, Value>(0),
        )
    }));
    match r {
        Err(_) => panic!("a panic escaped from phenix_norm_apply"),
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => {
            let msg = e.to_string();
            assert!(
                msg.starts_with("phenix: ") && !msg.contains("internal error"),
                "{msg}"
            );
            Err(msg)
        }
    }
}

#[test]
fn random_blobs_are_never_fits() {
    let c = conn();
    let mut runner = TestRunner::new(Config {
        cases: cases() * 4,
        ..Config::default()
    });
    runner
        .run(&proptest::collection::vec(any::<u8>(), 0..200), |mut b| {
            // Half the cases start with the real magic, to reach the deeper checks.
            if b.len() > 8 && b[0] % 2 == 0 {
                b[..8].copy_from_slice(b"PHXNFIT\0");
            }
            let e =
                run_bound(&c, &b, &[1.0, 2.0]).expect_err("a random blob was accepted as a fit");
            assert!(
                e.contains("not a fitted normalisation") || e.contains("must be a fitted"),
                "{e}"
            );
            let info = run(
                &c,
                &format!(
                    "SELECT phenix_fit_info(x'{}')",
                    b.iter().map(|x| format!("{x:02x}")).collect::<String>()
                ),
            );
            assert!(info.is_err() || b.is_empty());
            Ok(())
        })
        .unwrap();
}

#[test]
fn pack_reports_row_and_column_of_every_bad_cell() {
    let mut runner = TestRunner::new(Config {
        cases: cases(),
        ..Config::default()
    });
    let cell = prop_oneof![
        5 => (-1e6f64..1e6).prop_map(Value::Real),
        2 => any::<i32>().prop_map(|i| Value::Integer(i64::from(i))),
        2 => (-1e3f64..1e3).prop_map(|x| Value::Text(format!("{x}"))),
        1 => Just(Value::Null),
        1 => Just(Value::Text("abc".into())),
        1 => Just(Value::Text(String::new())),
        1 => Just(Value::Text("nan".into())),
        1 => Just(Value::Real(f64::INFINITY)),
        1 => Just(Value::Blob(vec![1, 2])),
        1 => Just(Value::Real(1e300)),
    ];
    runner
        .run(
            &proptest::collection::vec(proptest::collection::vec(cell, 3), 1..6),
            |rows| {
                let c = conn();
                c.execute_batch("CREATE TABLE w(Meta, Cells_a, Cells_b, Cells_c)")
                    .unwrap();
                for r in &rows {
                    c.execute(
                        "INSERT INTO w VALUES ('m', ?1, ?2, ?3)",
                        rusqlite::params![r[0], r[1], r[2]],
                    )
                    .unwrap();
                }
                let good = |v: &Value| match v {
                    Value::Real(x) => x.is_finite() && x.abs() <= f64::from(f32::MAX),
                    Value::Integer(_) => true,
                    Value::Text(t) => t.trim().parse::<f64>().is_ok_and(|x| x.is_finite()),
                    _ => false,
                };
                let first_bad = rows
                    .iter()
                    .enumerate()
                    .find_map(|(i, r)| r.iter().position(|v| !good(v)).map(|j| (i + 1, j)));
                let r = run(
                    &c,
                    "SELECT group_concat(hex(profile)) FROM phenix_pack('w', 'Cells_%', NULL)",
                );
                match first_bad {
                    None => {
                        r.expect("all cells are numbers");
                    }
                    Some((row, col)) => {
                        let e = r.expect_err("a bad cell was packed");
                        let name = ["Cells_a", "Cells_b", "Cells_c"][col];
                        assert!(
                            e.contains(&format!("row {row} of main.w, column {name}")),
                            "{e} (expected row {row} {name})"
                        );
                    }
                }
                Ok(())
            },
        )
        .unwrap();
}

/// `phenix_retrieve_all` with queries from an ordinary table or a view gives the same rows as with
/// the same queries in a phenix table, and brute force agrees on the nearest target.
#[test]
fn retrieve_all_reads_queries_from_any_table_or_view() {
    let c = conn();
    c.execute_batch(
        "CREATE VIRTUAL TABLE targets USING phenix(v float32[3] distance=cosine);
         CREATE VIRTUAL TABLE q_phenix USING phenix(v float32[3] distance=cosine);
         CREATE TABLE plate(well_id INTEGER, role TEXT, profile BLOB);",
    )
    .unwrap();
    let mut s = 3u64;
    let mut next = || {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    };
    let targets: Vec<Vec<f32>> = (0..50).map(|_| (0..3).map(|_| next()).collect()).collect();
    for (i, t) in targets.iter().enumerate() {
        c.execute(
            "INSERT INTO targets(rowid, v) VALUES (?1, ?2)",
            rusqlite::params![i as i64 + 1, blob(t)],
        )
        .unwrap();
    }
    let queries: Vec<Vec<f32>> = (0..20).map(|_| (0..3).map(|_| next()).collect()).collect();
    for (i, q) in queries.iter().enumerate() {
        let id = 1000 + i as i64;
        c.execute(
            "INSERT INTO q_phenix(rowid, v) VALUES (?1, ?2)",
            rusqlite::params![id, blob(q)],
        )
        .unwrap();
        // Alternate float32 blobs and JSON text in the ordinary table.
        let v: Value = if i % 2 == 0 {
            Value::Blob(blob(q))
        } else {
            Value::Text(serde_json::to_string(q).unwrap())
        };
        c.execute(
            "INSERT INTO plate VALUES (?1, 'trt', ?2)",
            rusqlite::params![id, v],
        )
        .unwrap();
    }
    c.execute_batch("INSERT INTO plate VALUES (1, 'DMSO', '[1, 1, 1]'); CREATE VIEW trt AS SELECT well_id, profile FROM plate WHERE role = 'trt';").unwrap();
    let rows = |sql: &str| -> Vec<(i64, i64, i64)> {
        let mut st = c.prepare(sql).unwrap();
        st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    };
    let want =
        rows("SELECT query_rowid, rowid, rank FROM phenix_retrieve_all('targets', 'q_phenix', 3)");
    assert_eq!(want.len(), 60);
    let from_view = rows("SELECT query_rowid, rowid, rank FROM phenix_retrieve_all('targets', 'trt(well_id, profile)', 3)");
    assert_eq!(from_view, want);
    let from_table = rows("SELECT query_rowid, rowid, rank FROM phenix_retrieve_all('targets', 'main.plate(well_id, profile)', 3) WHERE query_rowid >= 1000");
    assert_eq!(from_table, want);
    // Brute force: the nearest target by cosine.
    for (i, q) in queries.iter().enumerate() {
        let cos = |t: &Vec<f32>| {
            let d: f64 = q
                .iter()
                .zip(t)
                .map(|(a, b)| f64::from(*a) * f64::from(*b))
                .sum();
            let n = |v: &[f32]| v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
            d / (n(q) * n(t))
        };
        let best = (0..targets.len())
            .max_by(|&a, &b| cos(&targets[a]).total_cmp(&cos(&targets[b])))
            .unwrap();
        let top = want
            .iter()
            .find(|r| r.0 == 1000 + i as i64 && r.2 == 1)
            .unwrap();
        assert_eq!(top.1, best as i64 + 1);
    }
    // Errors: wrong dimension, missing column, a view without an id column, non-integer ids.
    c.execute_batch("CREATE TABLE bad(id, v); INSERT INTO bad VALUES (1, '[1, 2]'); CREATE TABLE badid(id, v); INSERT INTO badid VALUES ('x', '[1, 2, 3]');").unwrap();
    let err = |sql: &str| c.query_row(sql, [], |_| Ok(())).unwrap_err().to_string();
    let e = err("SELECT count(*) FROM phenix_retrieve_all('targets', 'bad(id, v)', 1)");
    assert!(
        e.contains("query 1, column v") && e.contains("float32[3]"),
        "{e}"
    );
    let e = err("SELECT count(*) FROM phenix_retrieve_all('targets', 'plate(nope)', 1)");
    assert!(
        e.contains("cannot read queries main.plate: no column nope"),
        "{e}"
    );
    let e = err("SELECT count(*) FROM phenix_retrieve_all('targets', 'trt(profile)', 1)");
    assert!(e.contains("a view has no rowid"), "{e}");
    let e = err("SELECT count(*) FROM phenix_retrieve_all('targets', 'badid(id, v)', 1)");
    assert!(e.contains("ids must be integers"), "{e}");
    // It reads any table, so views and triggers may not call it.
    c.execute_batch("CREATE VIEW r AS SELECT * FROM phenix_retrieve_all('targets', 'plate(well_id, profile)', 1)").unwrap();
    let e = err("SELECT count(*) FROM r");
    assert!(
        e.contains("unsafe use of virtual table") || e.contains("phenix_retrieve_all"),
        "{e}"
    );
}
