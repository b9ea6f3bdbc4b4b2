//! Vector values (JSON and blobs) through every vector function.

use crate::harness::*;
use proptest::prelude::*;
use rusqlite::types::Value;
use rusqlite::Connection;

fn element() -> impl Strategy<Value = f32> {
    prop_oneof![
        6 => -1000.0f32..1000.0,
        2 => any::<u32>().prop_map(f32::from_bits),
        2 => prop::sample::select(vec![
            0.0f32, -0.0, 1.0, f32::MIN_POSITIVE, 1e-45, -1e-45, 1e-40, f32::MAX, f32::MIN, 3e38,
            65504.0, -65504.0, 65520.0, 1e-8, f32::NAN, -f32::NAN, f32::INFINITY, f32::NEG_INFINITY,
        ]),
    ]
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Enc {
    Json,
    F32,
    F16,
}

/// A vector as an SQL literal, the type argument to pass (if any), and its elements as the function
/// must read them (`None` when the value is invalid, with the reason's expected words).
#[derive(Clone, Debug)]
struct Vect {
    sql: String,
    ty: Option<&'static str>,
    values: Result<Vec<f32>, Vec<String>>,
    enc: Enc,
}

fn make_vect(v: &[f32], enc: Enc, ty_variant: u8) -> Vect {
    match enc {
        Enc::Json => {
            let mut parts = Vec::new();
            let mut bad: Option<Vec<String>> = None;
            for (i, x) in v.iter().enumerate() {
                if x.is_finite() {
                    parts.push(format!("{x:?}"));
                } else {
                    // JSON has no NaN or infinity: write what a user might, and expect an error.
                    let (t, why) = if x.is_nan() {
                        ("NaN", "malformed JSON vector")
                    } else if i % 2 == 0 {
                        ("1e39", "too large for float32")
                    } else {
                        ("Infinity", "malformed JSON vector")
                    };
                    let t = if x.is_sign_negative() && !x.is_nan() {
                        format!("-{t}")
                    } else {
                        t.to_string()
                    };
                    bad.get_or_insert_with(|| vec![why.to_string()]);
                    parts.push(t);
                }
            }
            let values = match bad {
                Some(b) => Err(b),
                None if v.is_empty() => Err(vec!["empty".into()]),
                None => Ok(v.to_vec()),
            };
            let sep = [",", ", ", " ,\n\t"][ty_variant as usize % 3];
            Vect {
                sql: format!("'[{}]'", parts.join(sep)),
                ty: None,
                values,
                enc,
            }
        }
        Enc::F32 => Vect {
            sql: blob_lit(&f32s_le(v)),
            ty: [None, Some("'float32'"), Some("'F32'")][ty_variant as usize % 3],
            values: check_elems(v),
            enc,
        },
        Enc::F16 => {
            let h: Vec<f32> = v.iter().map(|x| half::f16::from_f32(*x).to_f32()).collect();
            Vect {
                sql: blob_lit(&f16s_le(v)),
                ty: [Some("'float16'"), Some("'f16'"), Some("'FLOAT16'")][ty_variant as usize % 3],
                values: check_elems(&h),
                enc,
            }
        }
    }
}

fn check_elems(v: &[f32]) -> Result<Vec<f32>, Vec<String>> {
    if v.is_empty() {
        return Err(vec!["empty".into()]);
    }
    match v.iter().position(|x| !x.is_finite()) {
        Some(i) => Err(vec![
            format!("element {i} is"),
            "finite numbers only".into(),
        ]),
        None => Ok(v.to_vec()),
    }
}

fn call(f: &str, args: &[&str], ty: Option<&str>) -> String {
    let mut a: Vec<&str> = args.to_vec();
    if let Some(t) = ty {
        a.push(t);
    }
    format!("SELECT {f}({})", a.join(", "))
}

fn expect_vector_error(r: rusqlite::Result<Value>, sql: &str, fname: &str, words: &[String]) {
    let msg = expect_err(r, sql);
    assert!(msg.contains(&format!("{fname}()")), "{sql}: {msg}");
    for w in words {
        assert!(msg.contains(w.as_str()), "{sql}: `{w}` missing from {msg}");
    }
}

fn real(v: Value, ctx: &str) -> f64 {
    match v {
        Value::Real(r) => r,
        other => panic!("{ctx}: expected a real, got {other:?}"),
    }
}

fn decode_out(v: Value, enc: Enc, ctx: &str) -> Vec<f32> {
    match (v, enc) {
        (Value::Text(t), Enc::Json) => parse_json_floats(&t, ctx),
        (Value::Blob(b), Enc::F32) => b
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        (Value::Blob(b), Enc::F16) => b
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        (other, e) => panic!("{ctx}: expected a {e:?} vector, got {other:?}"),
    }
}

fn parse_json_floats(t: &str, ctx: &str) -> Vec<f32> {
    let inner = t
        .strip_prefix('[')
        .and_then(|s| s.strip_suffix(']'))
        .unwrap_or_else(|| panic!("{ctx}: not a JSON array: {t}"));
    assert!(
        !inner.contains(' '),
        "{ctx}: phenix JSON has no spaces: {t}"
    );
    inner
        .split(',')
        .map(|x| {
            x.parse::<f32>()
                .unwrap_or_else(|_| panic!("{ctx}: bad number {x} in {t}"))
        })
        .collect()
}

/// Moderate magnitudes, where float32 arithmetic is accurate enough to compare with `f64`.
fn moderate(v: &[f32]) -> bool {
    v.iter()
        .all(|x| *x == 0.0 || (1e-15..=1e15).contains(&x.abs()))
}

fn check_single(c: &Connection, a: &Vect) {
    let args = [a.sql.as_str()];
    // phenix_dims
    let sql = call("phenix_dims", &args, a.ty);
    match &a.values {
        Ok(v) => assert_eq!(
            one(c, &sql).unwrap(),
            Value::Integer(v.len() as i64),
            "{sql}"
        ),
        Err(w) => return expect_vector_error(one(c, &sql), &sql, "phenix_dims", w),
    }
    let v = a.values.as_ref().unwrap();
    // phenix_to_json: every element back exactly.
    let sql = call("phenix_to_json", &args, a.ty);
    let back = decode_out(one(c, &sql).unwrap(), Enc::Json, &sql);
    assert_eq!(
        back.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
        v.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
        "{sql}"
    );
    // phenix_f32: the little-endian bytes.
    let sql = call("phenix_f32", &args, a.ty);
    assert_eq!(one(c, &sql).unwrap(), Value::Blob(f32s_le(v)), "{sql}");
    // phenix_f16: rounded to nearest-even, or an error naming the first element out of range.
    let sql = call("phenix_f16", &args, a.ty);
    match v.iter().position(|x| x.abs() > 65504.0) {
        None => assert_eq!(one(c, &sql).unwrap(), Value::Blob(f16s_le(v)), "{sql}"),
        Some(i) => expect_vector_error(
            one(c, &sql),
            &sql,
            "phenix_f16",
            &[format!("element {i} is"), "outside float16's range".into()],
        ),
    }
    // phenix_normalize: v / |v| (|v| in f64), in the same encoding; an error for norm 0.
    let sql = call("phenix_normalize", &args, a.ty);
    let norm = v.iter().map(|&x| f64::from(x).powi(2)).sum::<f64>().sqrt();
    if norm == 0.0 {
        expect_vector_error(one(c, &sql), &sql, "phenix_normalize", &["norm 0".into()]);
    } else {
        let got = decode_out(one(c, &sql).unwrap(), a.enc, &sql);
        assert_eq!(got.len(), v.len(), "{sql}");
        for (g, &x) in got.iter().zip(v) {
            let want = (f64::from(x) / norm) as f32;
            let want = if a.enc == Enc::F16 {
                half::f16::from_f32(want).to_f32()
            } else {
                want
            };
            let tol = if a.enc == Enc::F16 {
                1e-3 * want.abs() + 1e-7
            } else {
                1e-6 * want.abs() + 1e-44
            };
            assert!((g - want).abs() <= tol, "{sql}: got {g}, want {want}");
        }
    }
}

fn check_pair(c: &Connection, a: &Vect, b: &Vect) {
    // One type argument applies to every blob argument: use it only when both blobs agree.
    let ty = match (a.enc, b.enc) {
        (Enc::F16, Enc::F32) | (Enc::F32, Enc::F16) => return,
        (Enc::F16, _) => a.ty,
        (_, Enc::F16) => b.ty,
        _ => a.ty.or(b.ty),
    };
    let args = [a.sql.as_str(), b.sql.as_str()];
    for f in ["phenix_distance_cosine", "phenix_distance_l2", "phenix_dot"] {
        let sql = call(f, &args, ty);
        let (x, y) = match (&a.values, &b.values) {
            (Err(w), _) | (Ok(_), Err(w)) => {
                expect_vector_error(one(c, &sql), &sql, f, w);
                continue;
            }
            (Ok(x), Ok(y)) => (x, y),
        };
        if x.len() != y.len() {
            expect_vector_error(one(c, &sql), &sql, f, &["differ in dimension".into()]);
            continue;
        }
        let got = one(c, &sql).unwrap();
        if !(moderate(x) && moderate(y)) {
            // Extreme magnitudes: a number (overflow to ±inf allowed), never a crash. Cosine and dot
            // at the float32 extremes have their own tests below (float32 overflow gives NaN = NULL).
            if f == "phenix_distance_l2" {
                assert!(matches!(got, Value::Real(_)), "{sql}: {got:?}");
            }
            continue;
        }
        let got = real(got, &sql);
        let dot: f64 = x
            .iter()
            .zip(y)
            .map(|(&p, &q)| f64::from(p) * f64::from(q))
            .sum();
        let abs_dot: f64 = x
            .iter()
            .zip(y)
            .map(|(&p, &q)| (f64::from(p) * f64::from(q)).abs())
            .sum();
        let nx = x.iter().map(|&p| f64::from(p).powi(2)).sum::<f64>().sqrt();
        let ny = y.iter().map(|&p| f64::from(p).powi(2)).sum::<f64>().sqrt();
        let (want, tol) = match f {
            "phenix_dot" => (dot, 1e-5 * abs_dot + 1e-30),
            "phenix_distance_l2" => {
                let l2 = x
                    .iter()
                    .zip(y)
                    .map(|(&p, &q)| (f64::from(p) - f64::from(q)).powi(2))
                    .sum::<f64>()
                    .sqrt();
                (l2, 1e-5 * (nx + ny) + 1e-30)
            }
            _ => {
                if nx == 0.0 || ny == 0.0 {
                    (1.0, 0.0)
                } else {
                    ((1.0 - dot / (nx * ny)).clamp(0.0, 2.0), 1e-4)
                }
            }
        };
        assert!(
            (got - want).abs() <= tol,
            "{sql}: got {got}, want {want} (tolerance {tol})"
        );
    }
}

#[test]
fn vector_values_through_every_function() {
    let c = mem();
    let enc = prop::sample::select(vec![Enc::Json, Enc::F32, Enc::F16]);
    let vec_strategy = prop_oneof![
        8 => prop::collection::vec(element(), 0..20),
        1 => prop::collection::vec(element(), 0..3),
    ];
    let strategy = (
        vec_strategy.clone(),
        enc.clone(),
        any::<u8>(),
        vec_strategy,
        enc,
        any::<u8>(),
        any::<bool>(),
    );
    runner(1500)
        .run(&strategy, |(va, ea, ta, vb, eb, tb, same_dim)| {
            let a = make_vect(&va, ea, ta);
            // Mostly pairs of one dimension (the distance reference needs them).
            let vb = if same_dim {
                let mut w = vb.clone();
                w.resize(va.len(), 0.5);
                w
            } else {
                vb
            };
            let b = make_vect(&vb, eb, tb);
            check_single(&c, &a);
            check_pair(&c, &a, &b);
            Ok(())
        })
        .unwrap();
    assert_no_panics();
}

#[test]
fn random_blob_bytes_are_read_or_rejected_by_their_length() {
    let c = mem();
    let strategy = (prop::collection::vec(any::<u8>(), 0..40), any::<bool>());
    runner(2000)
        .run(&strategy, |(bytes, f16)| {
            let (size, ty) = if f16 {
                (2, "'float16'")
            } else {
                (4, "'float32'")
            };
            let sql = format!("SELECT phenix_to_json({}, {ty})", blob_lit(&bytes));
            let r = one(&c, &sql);
            if bytes.is_empty() {
                expect_vector_error(r, &sql, "phenix_to_json", &["empty".into()]);
            } else if bytes.len() % size != 0 {
                expect_vector_error(
                    r,
                    &sql,
                    "phenix_to_json",
                    &[format!("got a {}-byte blob", bytes.len())],
                );
            } else {
                let v: Vec<f32> = if f16 {
                    bytes
                        .chunks_exact(2)
                        .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                        .collect()
                } else {
                    bytes
                        .chunks_exact(4)
                        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                        .collect()
                };
                match check_elems(&v) {
                    Err(w) => expect_vector_error(r, &sql, "phenix_to_json", &w),
                    Ok(v) => {
                        let got = decode_out(r.unwrap(), Enc::Json, &sql);
                        prop_assert_eq!(
                            got.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                            v.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
                        );
                    }
                }
            }
            // A phenix table column takes 2·N or 4·N bytes and nothing else.
            Ok(())
        })
        .unwrap();
    // Table columns: the blob length picks float16 (2·N) or float32 (4·N); anything else is an error.
    c.execute_batch("CREATE VIRTUAL TABLE t USING phenix(v float32[3])")
        .unwrap();
    for len in 0..=16usize {
        let b = vec![0x3cu8; len];
        let r = in_sql(|| c.execute("INSERT INTO t(v) VALUES (?1)", [&b]));
        if len == 6 || len == 12 {
            assert!(r.is_ok(), "{len} bytes: {r:?}");
        } else {
            let m = expect_err(r, &format!("{len}-byte blob into float32[3]"));
            assert!(m.contains("column v") && m.contains("float32[3]"), "{m}");
        }
    }
    assert_no_panics();
}

#[test]
fn huge_dimensions_are_handled_or_refused() {
    let c = mem();
    // A million elements as JSON and as a blob: decoded, not crashed.
    let n = 1_000_000usize;
    let json = format!("[{}]", vec!["0.5"; n].join(","));
    let got = one(&c, &format!("SELECT phenix_dims('{json}')")).unwrap();
    assert_eq!(got, Value::Integer(n as i64));
    let blob = f32s_le(&vec![0.25f32; n]);
    let got = in_sql(|| {
        c.query_row("SELECT phenix_distance_l2(?1, ?1)", [&blob], |r| {
            r.get::<_, f64>(0)
        })
    })
    .unwrap();
    assert_eq!(got, 0.0);
    let got = in_sql(|| c.query_row("SELECT phenix_dot(?1, ?1)", [&blob], |r| r.get::<_, f64>(0)))
        .unwrap();
    assert!((got - n as f64 / 16.0).abs() < 1.0, "{got}");
    // Tables cap the dimension at 65536, with a message saying so.
    let m = expect_err(
        in_sql(|| c.execute_batch("CREATE VIRTUAL TABLE big USING phenix(v float16[65537])")),
        "65537 dims",
    );
    assert!(m.contains("1..=65536"), "{m}");
    let m = expect_err(
        in_sql(|| {
            c.execute_batch(
                "CREATE VIRTUAL TABLE big USING phenix(v float16[18446744073709551616])",
            )
        }),
        "2^64 dims",
    );
    assert!(m.contains("1..=65536"), "{m}");
    // The widest table takes its vectors; a query of another length is refused.
    c.execute_batch("CREATE VIRTUAL TABLE w USING phenix(v float16[65536])")
        .unwrap();
    let v = vec![1.0f32; 65536];
    in_sql(|| c.execute("INSERT INTO w(rowid, v) VALUES (1, ?1)", [f16s_le(&v)])).unwrap();
    let m = expect_err(
        in_sql(|| {
            c.query_row(
                "SELECT rowid FROM w WHERE v MATCH ?1 AND k = 1",
                [f32s_le(&v[1..])],
                |r| r.get::<_, i64>(0),
            )
        }),
        "short query",
    );
    assert!(m.contains("MATCH on v") && m.contains("65536"), "{m}");
    assert_no_panics();
}

/// Cosine distance is in [0, 2] for any finite vectors; float32 overflow of the dot product or the
/// norms must not turn it into NaN (SQL NULL) — |x| ≈ 1e20 is an ordinary float32 value.
#[test]
fn cosine_distance_of_large_finite_vectors_is_a_number() {
    let c = mem();
    for (a, b, want) in [
        ("[3e38, 0]", "[3e38, 0]", 0.0),
        ("[1e20, 1]", "[1e20, 2]", 0.0),
        ("[1e20, 0]", "[0, 1e20]", 1.0),
        ("[-2e19, 0]", "[3e19, 0]", 2.0),
    ] {
        let sql = format!("SELECT phenix_distance_cosine('{a}', '{b}')");
        let got = one(&c, &sql).unwrap();
        let got = real(got, &sql);
        assert!((got - want).abs() < 1e-6, "{sql}: got {got}, want {want}");
    }
    // The same vectors in a float32 table: KNN finds the row, at the right distance.
    c.execute_batch(
        "CREATE VIRTUAL TABLE big USING phenix(v float32[2]);
         INSERT INTO big(rowid, v) VALUES (1, '[1e20, 1]'), (2, '[0, 1]');",
    )
    .unwrap();
    let got = rows(
        &c,
        "SELECT rowid FROM big WHERE v MATCH '[1e20, 2]' AND k = 2",
    )
    .unwrap();
    assert_eq!(got, vec![Value::Integer(1), Value::Integer(2)]);
    assert_no_panics();
}

/// The inner product of finite vectors is a number: float32 overflow of partial sums (+inf plus -inf)
/// must not make it NaN, which SQLite returns as NULL.
#[test]
fn dot_of_large_finite_vectors_is_a_number() {
    let c = mem();
    for (a, b) in [
        ("[3e38, 3e38]", "[3.4e38, -3.4e38]"),
        ("[1e30, -1e30, 1]", "[1e30, 1e30, 1]"),
    ] {
        let sql = format!("SELECT phenix_dot('{a}', '{b}')");
        let got = one(&c, &sql).unwrap();
        assert!(matches!(got, Value::Real(_)), "{sql}: got {got:?}");
    }
    assert_no_panics();
}

/// A vector of subnormal elements is not the zero vector: its cosine distance to itself is 0, not the
/// 1 reserved for zero vectors (float32 squares of subnormals underflow to 0).
#[test]
fn cosine_distance_of_tiny_vectors_is_not_the_zero_vector_case() {
    let c = mem();
    for v in ["[1e-45]", "[1e-30, 1e-30]", "[1e-40, 0, 1e-40]"] {
        let sql = format!("SELECT phenix_distance_cosine('{v}', '{v}')");
        let got = real(one(&c, &sql).unwrap(), &sql);
        assert!(got.abs() < 1e-6, "{sql}: got {got}, want 0");
    }
    assert_no_panics();
}
