//! The vector SQL functions in-process (rusqlite, bundled SQLite), each checked against an independent
//! reference: distances and means recomputed in `f64` here, blob encodings against hand-written bit
//! patterns. The same functions loaded as `libphenix.so` are checked against numpy in `tests/sql/`.

mod common;

use common::{f32_bytes as f32_blob, xorshift_vec as vector};
use rusqlite::types::Value;
use rusqlite::{params, Connection};

fn conn() -> Connection {
    let c = Connection::open_in_memory().unwrap();
    phenix_sql::register(&c).unwrap();
    c
}

fn one(c: &Connection, sql: &str) -> Value {
    c.query_row(sql, [], |r| r.get(0)).unwrap()
}

fn one_p(c: &Connection, sql: &str, p: impl rusqlite::Params) -> Value {
    c.query_row(sql, p, |r| r.get(0)).unwrap()
}

/// The error message of a statement that must fail with SQLITE_ERROR.
fn err(c: &Connection, sql: &str) -> String {
    match c.query_row(sql, [], |r| r.get::<_, Value>(0)) {
        Ok(v) => panic!("{sql}: expected an error, got {v:?}"),
        Err(rusqlite::Error::SqliteFailure(e, Some(msg))) => {
            assert_eq!(e.extended_code, rusqlite::ffi::SQLITE_ERROR, "{sql}: {msg}");
            msg
        }
        Err(e) => panic!("{sql}: unexpected error {e:?}"),
    }
}

fn json(v: &[f32]) -> String {
    let parts: Vec<String> = v.iter().map(|x| format!("{x:?}")).collect();
    format!("[{}]", parts.join(", "))
}

fn real(v: Value) -> f64 {
    match v {
        Value::Real(r) => r,
        other => panic!("expected a real, got {other:?}"),
    }
}

fn blob(v: Value) -> Vec<u8> {
    match v {
        Value::Blob(b) => b,
        other => panic!("expected a blob, got {other:?}"),
    }
}

fn text(v: Value) -> String {
    match v {
        Value::Text(t) => t,
        other => panic!("expected text, got {other:?}"),
    }
}

fn dot64(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(&x, &y)| f64::from(x) * f64::from(y))
        .sum()
}

fn close(got: f64, want: f64, what: &str) {
    let tol = 1e-5 * want.abs().max(1.0);
    assert!((got - want).abs() <= tol, "{what}: got {got}, want {want}");
}

#[test]
fn f16_and_f32_blobs_have_the_documented_bytes() {
    let c = conn();
    // 1.0 = 0x3C00, 2.5 = 0x4100, -3 = 0xC200, 65504 = 0x7BFF, 0.1 -> 0x2E66 (nearest), little-endian.
    assert_eq!(
        blob(one(&c, "SELECT phenix_f16('[1, 2.5, -3, 65504, 0.1]')")),
        vec![0x00, 0x3C, 0x00, 0x41, 0x00, 0xC2, 0xFF, 0x7B, 0x66, 0x2E]
    );
    // 1.0 = 0x3F800000, -2.5 = 0xC0200000.
    assert_eq!(
        blob(one(&c, "SELECT phenix_f32('[1, -2.5]')")),
        vec![0x00, 0x00, 0x80, 0x3F, 0x00, 0x00, 0x20, 0xC0]
    );
    // f16 -> f32 widening and back.
    assert_eq!(
        blob(one(
            &c,
            "SELECT phenix_f32(phenix_f16('[1, -2.5]'), 'float16')"
        )),
        vec![0x00, 0x00, 0x80, 0x3F, 0x00, 0x00, 0x20, 0xC0]
    );
    assert_eq!(
        text(one(
            &c,
            "SELECT phenix_to_json(phenix_f16('[0.1, 2.5]'), 'F16')"
        )),
        "[0.099975586,2.5]"
    );
}

#[test]
fn json_and_blobs_round_trip_through_every_encoding() {
    let c = conn();
    for dim in [1, 3, 16, 255] {
        let v = vector(dim as u64, dim);
        let b = f32_blob(&v);
        let j = text(one_p(&c, "SELECT phenix_to_json(?1)", params![b]));
        let back = blob(one_p(&c, "SELECT phenix_f32(?1)", params![j]));
        assert_eq!(back, b, "dim {dim}");
        let dims = one_p(&c, "SELECT phenix_dims(?1)", params![j]);
        assert_eq!(dims, Value::Integer(dim as i64));
        let dims16 = one_p(
            &c,
            "SELECT phenix_dims(phenix_f16(?1), 'float16')",
            params![b],
        );
        assert_eq!(dims16, Value::Integer(dim as i64));
    }
}

#[test]
fn distances_match_an_f64_reference() {
    let c = conn();
    for (i, dim) in [1usize, 2, 3, 7, 8, 16, 17, 64, 255, 1000]
        .into_iter()
        .enumerate()
    {
        let a = vector(2 * i as u64 + 1, dim);
        let b = vector(2 * i as u64 + 2, dim);
        let (ab, aa, bb) = (dot64(&a, &b), dot64(&a, &a), dot64(&b, &b));
        let cos = 1.0 - ab / (aa.sqrt() * bb.sqrt());
        let l2 = a
            .iter()
            .zip(&b)
            .map(|(&x, &y)| (f64::from(x) - f64::from(y)).powi(2))
            .sum::<f64>()
            .sqrt();
        for (ea, eb) in [
            (Value::Blob(f32_blob(&a)), Value::Blob(f32_blob(&b))),
            (Value::Text(json(&a)), Value::Text(json(&b))),
            (Value::Text(json(&a)), Value::Blob(f32_blob(&b))),
        ] {
            let row: (f64, f64, f64) = c
                .query_row(
                    "SELECT phenix_distance_cosine(?1, ?2), phenix_distance_l2(?1, ?2), phenix_dot(?1, ?2)",
                    params![ea, eb],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .unwrap();
            close(row.0, cos, &format!("cosine dim {dim}"));
            close(row.1, l2, &format!("l2 dim {dim}"));
            close(row.2, ab, &format!("dot dim {dim}"));
        }
        // float16 blobs: the reference uses the f16-rounded values (read back through phenix_f32).
        let a16 = blob(one_p(&c, "SELECT phenix_f16(?1)", params![json(&a)]));
        let b16 = blob(one_p(&c, "SELECT phenix_f16(?1)", params![json(&b)]));
        let widen = |x: &[u8]| -> Vec<f32> {
            x.chunks_exact(2)
                .map(|p| {
                    // Independent binary16 decode (normal numbers and zero; |x| < 2 here).
                    let h = u16::from_le_bytes([p[0], p[1]]);
                    let sign = if h & 0x8000 != 0 { -1.0 } else { 1.0 };
                    let e = i32::from((h >> 10) & 0x1F);
                    let m = f64::from(h & 0x3FF);
                    let mag = if e == 0 {
                        m * 2f64.powi(-24)
                    } else {
                        (1.0 + m / 1024.0) * 2f64.powi(e - 15)
                    };
                    (sign * mag) as f32
                })
                .collect()
        };
        let (a2, b2) = (widen(&a16), widen(&b16));
        let got = real(one_p(
            &c,
            "SELECT phenix_dot(?1, ?2, 'float16')",
            params![a16, b16],
        ));
        close(got, dot64(&a2, &b2), &format!("f16 dot dim {dim}"));
    }
}

#[test]
fn special_cases_of_the_distances() {
    let c = conn();
    assert_eq!(
        real(one(&c, "SELECT phenix_distance_l2('[0, 0]', '[3, 4]')")),
        5.0
    );
    assert_eq!(
        real(one(&c, "SELECT phenix_distance_cosine('[1, 0]', '[0, 1]')")),
        1.0
    );
    assert_eq!(
        real(one(
            &c,
            "SELECT phenix_distance_cosine('[1, 0]', '[-2, 0]')"
        )),
        2.0
    );
    assert_eq!(
        real(one(&c, "SELECT phenix_distance_cosine('[1, 2]', '[2, 4]')")),
        0.0
    );
    // A zero vector has cosine distance 1 to everything (phenix_core::Metric::Cosine).
    assert_eq!(
        real(one(&c, "SELECT phenix_distance_cosine('[0, 0]', '[1, 2]')")),
        1.0
    );
    assert_eq!(
        real(one(&c, "SELECT phenix_dot('[1, 2]', '[3, -4]')")),
        -5.0
    );
    assert_eq!(
        err(&c, "SELECT phenix_distance_l2('[1, 2, 3]', '[1, 2]')"),
        "phenix: phenix_distance_l2(): the vectors differ in dimension (argument 1 has 3 elements, argument 2 has 2)"
    );
}

#[test]
fn normalize_keeps_the_encoding_and_matches_the_reference() {
    let c = conn();
    let v = vector(99, 37);
    let n = dot64(&v, &v).sqrt();
    let want: Vec<f32> = v.iter().map(|&x| (f64::from(x) / n) as f32).collect();
    let out = blob(one_p(
        &c,
        "SELECT phenix_normalize(?1)",
        params![f32_blob(&v)],
    ));
    assert_eq!(out, f32_blob(&want));
    let out = text(one_p(&c, "SELECT phenix_normalize(?1)", params![json(&v)]));
    assert!(out.starts_with('['));
    let out16 = blob(one_p(
        &c,
        "SELECT phenix_normalize(phenix_f16(?1), 'float16')",
        params![json(&v)],
    ));
    assert_eq!(out16.len(), 2 * 37);
    assert_eq!(
        text(one(&c, "SELECT phenix_normalize('[3, 4]')")),
        "[0.6,0.8]"
    );
    assert_eq!(
        err(&c, "SELECT phenix_normalize('[0, 0]')"),
        "phenix: phenix_normalize(): the vector has norm 0 and cannot be normalized"
    );
}

#[test]
fn mean_groups_skips_nulls_and_checks_dimensions() {
    let c = conn();
    c.execute_batch("CREATE TABLE r(g TEXT, v)").unwrap();
    let mut want = std::collections::BTreeMap::<String, (Vec<f64>, usize)>::new();
    for i in 0..50u64 {
        let g = format!("g{}", i % 4);
        let v = vector(1000 + i, 24);
        let e = want.entry(g.clone()).or_insert((vec![0.0; 24], 0));
        for (s, &x) in e.0.iter_mut().zip(&v) {
            *s += f64::from(x);
        }
        e.1 += 1;
        c.execute("INSERT INTO r VALUES (?1, ?2)", params![g, f32_blob(&v)])
            .unwrap();
    }
    c.execute("INSERT INTO r VALUES ('g0', NULL)", []).unwrap();
    let mut st = c
        .prepare("SELECT g, phenix_mean(v), count(*) FROM r GROUP BY g ORDER BY g")
        .unwrap();
    let rows: Vec<(String, Vec<u8>)> = st
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(rows.len(), 4);
    for (g, b) in rows {
        let (sum, n) = &want[&g];
        let got: Vec<f32> = b
            .chunks_exact(4)
            .map(|p| f32::from_le_bytes([p[0], p[1], p[2], p[3]]))
            .collect();
        for (k, (&x, s)) in got.iter().zip(sum).enumerate() {
            close(f64::from(x), s / *n as f64, &format!("{g}[{k}]"));
        }
    }
    // Encoding follows the first non-NULL value; no non-NULL value gives NULL.
    assert_eq!(
        text(one(
            &c,
            "SELECT phenix_mean(v) FROM (SELECT NULL AS v UNION ALL SELECT '[1, 2]' UNION ALL SELECT '[3, 5]')"
        )),
        "[2,3.5]"
    );
    assert_eq!(
        one(&c, "SELECT phenix_mean(v) FROM r WHERE v IS NULL"),
        Value::Null
    );
    assert_eq!(one(&c, "SELECT phenix_mean(v) FROM r WHERE 0"), Value::Null);
    assert_eq!(
        blob(one(
            &c,
            "SELECT phenix_mean(v, 'float16') FROM (SELECT phenix_f16('[1, 2]') AS v UNION ALL SELECT phenix_f16('[2, 4]'))"
        )),
        vec![0x00, 0x3E, 0x00, 0x42] // [1.5, 3]
    );
    assert_eq!(
        err(
            &c,
            "SELECT phenix_mean(v) FROM (SELECT '[1, 2]' AS v UNION ALL SELECT '[1, 2, 3]')"
        ),
        "phenix: phenix_mean(): vector 2 of the group has 3 elements, the ones before it have 2"
    );
}

#[test]
fn nulls_propagate_and_version_is_the_crate_version() {
    let c = conn();
    for sql in [
        "SELECT phenix_f16(NULL)",
        "SELECT phenix_f32(NULL)",
        "SELECT phenix_to_json(NULL)",
        "SELECT phenix_dims(NULL)",
        "SELECT phenix_normalize(NULL)",
        "SELECT phenix_distance_cosine(NULL, '[1]')",
        "SELECT phenix_distance_l2('[1]', NULL)",
        "SELECT phenix_dot(NULL, NULL)",
    ] {
        assert_eq!(one(&c, sql), Value::Null, "{sql}");
    }
    assert_eq!(
        text(one(&c, "SELECT phenix_version()")),
        env!("CARGO_PKG_VERSION")
    );
}

#[test]
fn argument_errors_say_what_was_expected() {
    let c = conn();
    let cases = [
        (
            "SELECT phenix_dims(42)",
            "phenix: phenix_dims() argument 1 expects a vector (JSON text or a float32 blob): got an integer",
        ),
        (
            "SELECT phenix_dims(x'000000')",
            "phenix: phenix_dims() argument 1 expects a float32 blob: got a 3-byte blob (a float32 blob has 4 bytes per element; for a float16 blob pass 'float16' as the last argument)",
        ),
        (
            "SELECT phenix_dims(x'000000', 'float16')",
            "phenix: phenix_dims() argument 1 expects a float16 blob: got a 3-byte blob (a float16 blob has 2 bytes per element)",
        ),
        (
            "SELECT phenix_dims('[1, 2,, 3]')",
            "phenix: phenix_dims() argument 1: malformed JSON vector at character 7: expected a number, found ',' (a vector is JSON text like '[1, 2.5, -3]')",
        ),
        (
            "SELECT phenix_dims('[]')",
            "phenix: phenix_dims() argument 1: the vector is empty; a vector needs at least one element",
        ),
        (
            "SELECT phenix_dims(x'')",
            "phenix: phenix_dims() argument 1: the vector is empty; a vector needs at least one element",
        ),
        (
            "SELECT phenix_f16('[1, -70000]')",
            "phenix: phenix_f16() argument 1: element 1 is -70000: outside float16's range (|x| <= 65504); store it as float32 or scale the vector",
        ),
        (
            "SELECT phenix_f32('[1e39]')",
            "phenix: phenix_f32() argument 1: element 0 is 1e39: too large for float32 (|x| <= 3.4028235e38)",
        ),
        (
            // 0x7FC00000 = NaN as a float32 blob.
            "SELECT phenix_dims(x'0000c07f')",
            "phenix: phenix_dims() argument 1: element 0 is NaN: vectors hold finite numbers only (no NaN or infinity)",
        ),
        (
            // 0x7C00 = +inf as float16.
            "SELECT phenix_dims(x'007c', 'float16')",
            "phenix: phenix_dims() argument 1: element 0 is inf: vectors hold finite numbers only (no NaN or infinity)",
        ),
        (
            "SELECT phenix_dims('[1]', 'int8')",
            "phenix: phenix_dims() argument 2 is the element type of blob arguments and must be 'float32' or 'float16': got 'int8'",
        ),
    ];
    for (sql, want) in cases {
        assert_eq!(err(&c, sql), want, "{sql}");
    }
}

#[test]
fn pure_functions_work_where_sqlite_requires_deterministic_and_innocuous() {
    let c = conn();
    // Index expressions and CHECK constraints require SQLITE_DETERMINISTIC; with trusted_schema=OFF,
    // functions in views and triggers must be SQLITE_INNOCUOUS.
    c.execute_batch(
        "PRAGMA trusted_schema = OFF;
         CREATE TABLE t(v BLOB CHECK (phenix_dims(v) = 2));
         CREATE INDEX t_dims ON t(phenix_dims(v));
         CREATE VIEW tv AS SELECT phenix_to_json(v) AS j, phenix_distance_l2(v, '[0, 0]') AS d FROM t;
         INSERT INTO t VALUES (phenix_f32('[3, 4]'));",
    )
    .unwrap();
    let (j, d): (String, f64) = c
        .query_row("SELECT j, d FROM tv", [], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap();
    assert_eq!((j.as_str(), d), ("[3,4]", 5.0));
    let e = c
        .execute("INSERT INTO t VALUES ('[1, 2, 3]')", [])
        .unwrap_err();
    assert!(e.to_string().contains("CHECK constraint failed"), "{e}");
}

#[test]
fn path_functions_are_direct_only_and_panics_become_errors() {
    let c = conn();
    phenix_sql::create_path_function(&c, "phenix_test_path", 1, |ctx| {
        let p = phenix_sql::path_arg(ctx, 0, "phenix_test_path")?;
        if p.as_os_str() == "panic" {
            panic!("deliberate");
        }
        Ok(p.display().to_string())
    })
    .unwrap();
    assert_eq!(
        text(one(&c, "SELECT phenix_test_path('/tmp/x.onnx')")),
        "/tmp/x.onnx"
    );
    assert_eq!(
        err(&c, "SELECT phenix_test_path(NULL)"),
        "phenix: phenix_test_path() argument 1 expects a file path (text): got NULL"
    );
    // SQLITE_DIRECTONLY: not callable from a view or trigger, even with trusted_schema on.
    c.execute_batch("CREATE VIEW pv AS SELECT phenix_test_path('/etc/passwd') AS p")
        .unwrap();
    let e = c
        .query_row("SELECT p FROM pv", [], |r| r.get::<_, String>(0))
        .unwrap_err();
    assert!(
        e.to_string().contains("unsafe use of phenix_test_path()"),
        "{e}"
    );
    // A panic inside a callback is caught by rusqlite and reported as an error; the process survives.
    let e = c
        .query_row("SELECT phenix_test_path('panic')", [], |r| {
            r.get::<_, String>(0)
        })
        .unwrap_err();
    assert!(
        matches!(
            e,
            rusqlite::Error::UnwindingPanic | rusqlite::Error::SqliteFailure(..)
        ),
        "{e:?}"
    );
    assert_eq!(
        text(one(&c, "SELECT phenix_version()")),
        env!("CARGO_PKG_VERSION")
    );
}

#[test]
fn mean_is_also_a_window_function() {
    let c = conn();
    c.execute_batch("CREATE TABLE s(i INTEGER, v)").unwrap();
    let vs: Vec<Vec<f32>> = (0..20).map(|i| vector(500 + i, 5)).collect();
    for (i, v) in vs.iter().enumerate() {
        c.execute(
            "INSERT INTO s VALUES (?1, ?2)",
            params![i as i64, f32_blob(v)],
        )
        .unwrap();
    }
    let mut st = c
        .prepare("SELECT i, phenix_mean(v) OVER (ORDER BY i ROWS BETWEEN 2 PRECEDING AND CURRENT ROW) FROM s ORDER BY i")
        .unwrap();
    let rows: Vec<(i64, Vec<u8>)> = st
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(rows.len(), 20);
    for (i, b) in rows {
        let lo = (i - 2).max(0) as usize;
        let frame = &vs[lo..=i as usize];
        for k in 0..5 {
            let want = frame.iter().map(|v| f64::from(v[k])).sum::<f64>() / frame.len() as f64;
            let got = f32::from_le_bytes([b[4 * k], b[4 * k + 1], b[4 * k + 2], b[4 * k + 3]]);
            close(f64::from(got), want, &format!("row {i} elem {k}"));
        }
    }
}

#[test]
fn the_bundled_sqlite_is_the_documented_one() {
    // docs/sql.md, "Supported hosts": rusqlite 0.40.0's bundled SQLite.
    assert_eq!(text(one(&conn(), "SELECT sqlite_version()")), "3.53.2");
}
