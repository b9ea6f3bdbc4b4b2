//! Bad input never crashes the host (issue 8, parts 4 and 6), in-process with the bundled SQLite.
//!
//! Part 4, property tests (proptest): `CREATE VIRTUAL TABLE … USING phenix(…)` arguments, vector JSON
//! and blobs (lengths, NaN, ±inf, subnormals, huge dimensions), SMILES (random bytes and mutations of
//! real ones from `data/molecules`), model manifests and ONNX files, and the arguments of every
//! `phenix*` SQL function. Every property asserts: no panic inside phenix (a panic hook counts panics on
//! the thread while it runs SQL, and on phenix's worker threads), every error is `SQLITE_ERROR` with a
//! message that starts with `phenix: ` and names what was wrong, and valid input gives the right
//! answer (distances recomputed in `f64`, encodings against `half`, fingerprints against RDKit's
//! reference file, KNN against brute force).
//!
//! Part 6, untrusted databases: hostile shadow-table contents (`<t>_info`, `<t>_rows`) and symlinks in
//! the sidecar directory must not make phenix read or write outside `<db>-phenix/`, and the functions that
//! take a path (or run SQL text) refuse to run from views and triggers.
//!
//! Case counts: CI runs each property with its default count (see `cases()`); set
//! `PHENIX_PROPTEST_CASES=N` to run every property with N cases (e.g. 5000 for a long run:
//! `PHENIX_PROPTEST_CASES=5000 cargo test --release -p phenix-sql --test bad_input`).

mod common;
use common::TempDir;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use rusqlite::types::Value;
use rusqlite::Connection;
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, Once};

// ------------------------------------------------------------------------------------------------
// Harness: panic counting, per-thread allocation tracking, error classification.

/// Panics on phenix's unnamed worker threads (featurizer, search), whichever test caused them.
static WORKER_PANICS: Mutex<Vec<String>> = Mutex::new(Vec::new());

thread_local! {
    /// Set while this thread runs SQL (phenix code): a panic then counts.
    static IN_SQL: Cell<bool> = const { Cell::new(false) };
    /// Panics while this thread ran SQL.
    static PANICS: std::cell::RefCell<Vec<String>> = const { std::cell::RefCell::new(Vec::new()) };
    /// Bytes allocated and not freed by this thread since tracking started, and the peak.
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

fn install_panic_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let prev = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            // Test threads are named after their test; phenix's own worker threads (featurizer,
            // search) are unnamed. A test's own failed assertion runs outside `IN_SQL`.
            if IN_SQL.with(Cell::get) {
                let _ = PANICS.try_with(|p| p.borrow_mut().push(info.to_string()));
            } else if std::thread::current().name().is_none() {
                WORKER_PANICS
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(info.to_string());
            }
            prev(info);
        }));
    });
}

/// Runs `f` (SQL through phenix) with panic counting on.
fn in_sql<T>(f: impl FnOnce() -> T) -> T {
    install_panic_hook();
    let was = IN_SQL.with(|s| s.replace(true));
    let r = f();
    IN_SQL.with(|s| s.set(was));
    r
}

/// Asserts that phenix did not panic (caught or not) while this test ran SQL, nor on a worker thread.
fn assert_no_panics() {
    let mine = PANICS.with(|p| p.borrow().clone());
    assert!(
        mine.is_empty(),
        "phenix panicked (caught or not): {mine:#?}"
    );
    let w = WORKER_PANICS.lock().unwrap_or_else(|e| e.into_inner());
    assert!(w.is_empty(), "a phenix worker thread panicked: {w:#?}");
}

/// Counts this thread's heap use (for "a huge k allocates nothing in proportion to k").
struct Counting;

fn track(delta: isize) {
    let _ = LIVE.try_with(|l| {
        let v = l.get() + delta;
        l.set(v);
        let _ = PEAK.try_with(|p| p.set(p.get().max(v)));
    });
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged, so `System`'s
// guarantees hold; the only addition is bookkeeping in const-initialised thread-locals without
// destructors (`try_with` never panics, and never allocates).
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        // SAFETY: forwarded as is (caller upholds `GlobalAlloc::alloc`'s contract).
        let p = unsafe { System.alloc(l) };
        if !p.is_null() {
            track(l.size() as isize);
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        track(-(l.size() as isize));
        // SAFETY: `p` was allocated by `System` with layout `l` (every allocation goes through here).
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        // SAFETY: forwarded as is.
        let p = unsafe { System.alloc_zeroed(l) };
        if !p.is_null() {
            track(l.size() as isize);
        }
        p
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        // SAFETY: forwarded as is: `p` came from `System` with layout `l`.
        let q = unsafe { System.realloc(p, l, new) };
        if !q.is_null() {
            track(new as isize - l.size() as isize);
        }
        q
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// The peak of this thread's extra heap use while `f` runs, in bytes.
fn peak_alloc<T>(f: impl FnOnce() -> T) -> (T, isize) {
    let base = LIVE.with(Cell::get);
    PEAK.with(|p| p.set(base));
    let r = f();
    (r, PEAK.with(Cell::get) - base)
}

/// Property-test case count: `default` unless `PHENIX_PROPTEST_CASES` is set.
fn cases(default: u32) -> u32 {
    std::env::var("PHENIX_PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn runner(default_cases: u32) -> TestRunner {
    TestRunner::new(Config {
        cases: cases(default_cases),
        failure_persistence: None,
        ..Config::default()
    })
}

fn mem() -> Connection {
    let c = Connection::open_in_memory().unwrap();
    phenix_sql::register(&c).unwrap();
    c
}

fn open(path: &Path) -> Connection {
    let c = Connection::open(path).unwrap();
    phenix_sql::register(&c).unwrap();
    c
}

/// A connection without phenix, to write shadow tables the way another program would.
fn plain(path: &Path) -> Connection {
    Connection::open(path).unwrap()
}

/// Runs one statement through phenix: its first column of every row, or the error.
fn rows(c: &Connection, sql: &str) -> rusqlite::Result<Vec<Value>> {
    in_sql(|| {
        let mut st = c.prepare(sql)?;
        let v = st
            .query_map([], |r| r.get::<_, Value>(0))?
            .collect::<rusqlite::Result<Vec<_>>>();
        v
    })
}

fn one(c: &Connection, sql: &str) -> rusqlite::Result<Value> {
    rows(c, sql).map(|mut v| {
        assert_eq!(v.len(), 1, "{sql}: expected one row, got {v:?}");
        v.remove(0)
    })
}

/// The message of a phenix error: `SQLITE_ERROR` whose text starts with `phenix: `.
fn phenix_msg(e: &rusqlite::Error, ctx: &str) -> String {
    match e {
        rusqlite::Error::SqliteFailure(f, Some(msg)) => {
            assert_eq!(
                f.extended_code,
                rusqlite::ffi::SQLITE_ERROR,
                "{ctx}: not SQLITE_ERROR: {msg}"
            );
            assert!(
                msg.starts_with("phenix: "),
                "{ctx}: the message does not start with `phenix: `: {msg}"
            );
            assert!(
                !msg.contains("internal error") && !msg.contains("panic"),
                "{ctx}: a panic became the error: {msg}"
            );
            msg.clone()
        }
        other => panic!("{ctx}: not an SQLite error with a message: {other:?}"),
    }
}

fn expect_err<T: std::fmt::Debug>(r: rusqlite::Result<T>, ctx: &str) -> String {
    match r {
        Ok(v) => panic!("{ctx}: expected an error, got {v:?}"),
        Err(e) => phenix_msg(&e, ctx),
    }
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn f32s_le(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn f16s_le(v: &[f32]) -> Vec<u8> {
    v.iter()
        .flat_map(|x| half::f16::from_f32(*x).to_le_bytes())
        .collect()
}

fn blob_lit(b: &[u8]) -> String {
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("x'{h}'")
}

// ------------------------------------------------------------------------------------------------
// Part 4a: CREATE VIRTUAL TABLE arguments.

#[derive(Clone, Debug)]
struct Name {
    text: String,
    /// Letters, digits and `_`, not starting with a digit.
    ident: bool,
}

fn name() -> impl Strategy<Value = Name> {
    prop_oneof![
        6 => "[a-z_][a-z0-9_]{0,6}".prop_map(|t| Name { text: t, ident: true }),
        1 => prop::sample::select(vec!["distance", "k", "K", "rank", "rowid", "oid", "_rowid_", "t", "T"])
            .prop_map(|t| Name { text: t.into(), ident: true }),
        1 => prop::sample::select(vec!["1", "x-y", "é", "x.y", "$x", "x~y", "日本"])
            .prop_map(|t| Name { text: t.into(), ident: false }),
    ]
}

#[derive(Clone, Debug)]
enum ColSpec {
    Vector {
        name: Name,
        aux: bool,
        elem: String,
        dim: String,
        dim_ok: bool,
        opts: Vec<(String, bool)>,
    },
    Meta {
        name: Name,
        aux: bool,
        ty: String,
        ty_ok: bool,
    },
}

impl ColSpec {
    fn text(&self) -> String {
        match self {
            ColSpec::Vector {
                name,
                aux,
                elem,
                dim,
                opts,
                ..
            } => {
                let mut s = format!("{}{} {elem}[{dim}]", if *aux { "+" } else { "" }, name.text);
                for (o, _) in opts {
                    s.push(' ');
                    s.push_str(o);
                }
                s
            }
            ColSpec::Meta { name, aux, ty, .. } => {
                format!("{}{} {ty}", if *aux { "+" } else { "" }, name.text)
                    .trim_end()
                    .to_string()
            }
        }
    }
    fn name(&self) -> &Name {
        match self {
            ColSpec::Vector { name, .. } | ColSpec::Meta { name, .. } => name,
        }
    }
}

fn col_spec() -> impl Strategy<Value = ColSpec> {
    let elem = prop::sample::select(vec!["float16", "float32", "float", "FLOAT16", "Float32"]);
    let dim = prop_oneof![
        6 => prop::sample::select(vec![1usize, 2, 3, 4, 7, 16, 256]).prop_map(|d| (d.to_string(), true)),
        1 => Just(("65536".to_string(), true)),
        1 => Just(("007".to_string(), true)),
        3 => prop::sample::select(vec![
            "0", "65537", "-1", "99999999999999999999999", "x", "", "1.5", "1e3", "4.0", "0x10",
        ])
        .prop_map(|d| (d.to_string(), false)),
    ];
    let opt = prop_oneof![
        3 => prop::sample::select(vec!["distance=cosine", "distance=l2", "distance=dot", "distance=L2", "DISTANCE=Cosine", "distance_metric=dot"])
            .prop_map(|o| (o.to_string(), true)),
        1 => prop::sample::select(vec!["distance=manhattan", "metric=l2", "distance", "=l2", "distance=", "l2"])
            .prop_map(|o| (o.to_string(), false)),
    ];
    let meta_ty = prop_oneof![
        4 => prop::sample::select(vec!["TEXT", "integer", "INT", "Real", "FLOAT", "DOUBLE", "BLOB", "NUMERIC", ""])
            .prop_map(|t| (t.to_string(), true)),
        1 => prop::sample::select(vec!["VARCHAR", "TEXT NOT", "float64[3]", "vector[4]", "float16[x]", "BLOB BLOB"])
            .prop_map(|t| (t.to_string(), false)),
    ];
    prop_oneof![
        (
            name(),
            prop::bool::weighted(0.1),
            elem,
            dim,
            prop::collection::vec(opt, 0..3)
        )
            .prop_map(|(name, aux, elem, (dim, dim_ok), opts)| ColSpec::Vector {
                name,
                aux,
                elem: elem.into(),
                dim,
                dim_ok,
                opts,
            }),
        (name(), any::<bool>(), meta_ty).prop_map(|(name, aux, (ty, ty_ok))| ColSpec::Meta {
            name,
            aux,
            ty,
            ty_ok,
        }),
    ]
}

/// Whether phenix must accept the definition (docs/sql.md, "The phenix virtual table").
fn definition_ok(cols: &[ColSpec]) -> bool {
    let reserved = ["distance", "k", "rank", "rowid", "oid", "_rowid_", "t"];
    let mut seen = std::collections::HashSet::new();
    let mut vectors = 0;
    for c in cols {
        let n = c.name();
        let l = n.text.to_ascii_lowercase();
        if !n.ident || reserved.contains(&l.as_str()) || !seen.insert(l) {
            return false;
        }
        match c {
            ColSpec::Vector {
                aux, dim_ok, opts, ..
            } => {
                // Options are key=value with key distance or distance_metric, each valid, and the
                // distance given at most once.
                if *aux || !dim_ok || opts.iter().any(|(_, ok)| !ok) || opts.len() > 1 {
                    return false;
                }
                vectors += 1;
            }
            ColSpec::Meta { ty_ok, .. } => {
                if !ty_ok {
                    return false;
                }
            }
        }
    }
    vectors == 1
}

#[test]
fn create_virtual_table_arguments() {
    let mut r = runner(1000);
    r.run(&prop::collection::vec(col_spec(), 0..5), |cols| {
        let c = mem();
        let texts: Vec<String> = cols.iter().map(ColSpec::text).collect();
        let sql = format!("CREATE VIRTUAL TABLE t USING phenix({})", texts.join(", "));
        let res = in_sql(|| c.execute_batch(&sql));
        if definition_ok(&cols) {
            prop_assert!(res.is_ok(), "{sql}: rejected: {res:?}");
            // The table works: insert a unit vector and find it at distance 0 (-1 for dot).
            let ColSpec::Vector { dim, opts, .. } = cols
                .iter()
                .find(|c| matches!(c, ColSpec::Vector { .. }))
                .unwrap()
            else {
                unreachable!()
            };
            let d: usize = dim.parse().unwrap();
            let mut v = vec![0f32; d];
            v[0] = 1.0;
            let metric = opts
                .last()
                .map(|(o, _)| o.split_once('=').unwrap().1.to_ascii_lowercase())
                .unwrap_or_else(|| "cosine".into());
            let vname = cols
                .iter()
                .find(|c| matches!(c, ColSpec::Vector { .. }))
                .unwrap()
                .name()
                .text
                .clone();
            in_sql(|| {
                c.execute(
                    &format!("INSERT INTO t(rowid, \"{vname}\") VALUES (7, ?1)"),
                    [f32s_le(&v)],
                )
            })
            .unwrap();
            let got = rows(
                &c,
                &format!(
                    "SELECT rowid, distance FROM t WHERE \"{vname}\" MATCH {} AND k = 3",
                    blob_lit(&f32s_le(&v))
                ),
            )
            .unwrap();
            let want = if metric == "dot" { -1.0 } else { 0.0 };
            prop_assert_eq!(got, vec![Value::Integer(7)]);
            let dist = one(
                &c,
                &format!(
                    "SELECT distance FROM t WHERE \"{vname}\" MATCH {} AND k = 1",
                    blob_lit(&f32s_le(&v))
                ),
            )
            .unwrap();
            prop_assert_eq!(dist, Value::Real(want), "{}", sql);
        } else {
            let e = match res {
                Ok(()) => return Err(TestCaseError::fail(format!("{sql}: accepted"))),
                Err(e) => e,
            };
            let msg = phenix_msg(&e, &sql);
            prop_assert!(msg.starts_with("phenix: phenix table t: "), "{}", msg);
            // The message quotes the offending column (or says there is no vector column).
            let named = msg.contains("no vector column")
                || cols.iter().any(|c| {
                    let t = c.text();
                    msg.contains(&format!("`{t}`")) || msg.contains(&format!("`{}`", c.name().text))
                });
            prop_assert!(named, "{sql}: the message names no column: {msg}");
            prop_assert!(
                msg.contains("expected")
                    || msg.contains("must")
                    || msg.contains("reserved")
                    || msg.contains("twice")
                    || msg.contains("exactly one")
                    || msg.contains("cannot")
                    || msg.contains("declare one"),
                "{sql}: the message does not say what is expected: {msg}"
            );
        }
        Ok(())
    })
    .unwrap();
    assert_no_panics();
}

// ------------------------------------------------------------------------------------------------
// Part 4b: vector values (JSON and blobs) through every vector function.

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

// ------------------------------------------------------------------------------------------------
// Part 4c: SMILES.

fn real_smiles() -> Vec<String> {
    let dir = repo().join("data/molecules");
    let mut out = Vec::new();
    for (file, col) in [("approved_drugs.csv", 2usize), ("nci_5k.csv", 1)] {
        let text = std::fs::read_to_string(dir.join(file)).unwrap();
        for line in text.lines().skip(1) {
            // The SMILES is the last field (names may hold commas; SMILES never do).
            let s = if col == 2 {
                line.rsplit(',').next()
            } else {
                line.split(',').nth(col)
            };
            if let Some(s) = s.filter(|s| !s.is_empty()) {
                out.push(s.to_string());
            }
        }
    }
    assert!(out.len() > 5000, "{} SMILES", out.len());
    out
}

#[derive(Clone, Debug)]
enum Mutation {
    Delete(usize),
    Insert(usize, char),
    Replace(usize, char),
    Truncate(usize),
    Duplicate(usize, usize),
    Swap(usize),
}

fn smiles_char() -> impl Strategy<Value = char> {
    prop_oneof![
        8 => prop::sample::select("CNOSPFIBrclnos()[]=#@+-.%/\\*:~$H0123456789".chars().collect::<Vec<_>>()),
        1 => any::<char>(),
        1 => prop::sample::select(vec!['\0', '\n', ' ', '\u{7f}', 'é', '\u{202e}']),
    ]
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>()).prop_map(Mutation::Delete),
        (any::<usize>(), smiles_char()).prop_map(|(p, c)| Mutation::Insert(p, c)),
        (any::<usize>(), smiles_char()).prop_map(|(p, c)| Mutation::Replace(p, c)),
        (any::<usize>()).prop_map(Mutation::Truncate),
        (any::<usize>(), 1..20usize).prop_map(|(p, n)| Mutation::Duplicate(p, n)),
        (any::<usize>()).prop_map(Mutation::Swap),
    ]
}

fn mutate(s: &str, ms: &[Mutation]) -> String {
    let mut v: Vec<char> = s.chars().collect();
    for m in ms {
        let n = v.len();
        let at = |p: usize| if n == 0 { 0 } else { p % n };
        match *m {
            Mutation::Delete(p) if n > 0 => {
                v.remove(at(p));
            }
            Mutation::Insert(p, c) => v.insert(if n == 0 { 0 } else { p % (n + 1) }, c),
            Mutation::Replace(p, c) if n > 0 => v[at(p)] = c,
            Mutation::Truncate(p) => v.truncate(at(p)),
            Mutation::Duplicate(p, len) if n > 0 => {
                let a = at(p);
                let seg: Vec<char> = v[a..(a + len).min(n)].to_vec();
                v.splice(a..a, seg);
            }
            Mutation::Swap(p) if n > 1 => {
                let a = at(p) % (n - 1);
                v.swap(a, a + 1);
            }
            _ => {}
        }
    }
    v.into_iter().collect()
}

/// Fingerprint and embedding of one SMILES (as SQL text; invalid UTF-8 through `CAST(x'…' AS TEXT)`).
fn check_smiles(c: &Connection, smiles_sql: &str, what: &str) {
    let fp = one(
        c,
        &format!("SELECT phenix_fingerprint({smiles_sql}, 2, 2048)"),
    );
    let emb = one(
        c,
        &format!("SELECT phenix_embed_molecule('default', {smiles_sql}, 1.0)"),
    );
    match (fp, emb) {
        (Ok(Value::Text(t)), Ok(Value::Blob(b))) => {
            let bits: Vec<u32> =
                serde_json::from_str(&t).unwrap_or_else(|e| panic!("{what}: {t}: {e}"));
            assert!(
                bits.windows(2).all(|w| w[0] < w[1]),
                "{what}: not ascending: {t}"
            );
            assert!(
                bits.iter().all(|&b| b < 2048),
                "{what}: bit out of range: {t}"
            );
            assert_eq!(b.len(), 512, "{what}: embedding of {} bytes", b.len());
            let v: Vec<f32> = b
                .chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect();
            assert!(
                v.iter().all(|x| x.is_finite()),
                "{what}: non-finite embedding"
            );
            let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
            assert!((norm - 1.0).abs() < 1e-2, "{what}: embedding norm {norm}");
        }
        (Err(fe), Err(ee)) => {
            let fm = phenix_msg(&fe, what);
            let em = phenix_msg(&ee, what);
            for (m, f) in [(&fm, "phenix_fingerprint"), (&em, "phenix_embed_molecule")] {
                assert!(m.starts_with(&format!("phenix: {f}: ")), "{what}: {m}");
                assert!(
                    m.contains("invalid SMILES") || m.contains("not UTF-8"),
                    "{what}: the message does not say the SMILES is the problem: {m}"
                );
            }
        }
        (fp, emb) => panic!(
            "{what}: the fingerprint and the default model's featurizer disagree: {fp:?} / {emb:?}"
        ),
    }
}

fn sql_text(s: &str) -> String {
    if s.contains('\0') {
        // A literal cannot hold NUL: build the text from its bytes.
        format!("CAST({} AS TEXT)", blob_lit(s.as_bytes()))
    } else {
        format!("'{}'", s.replace('\'', "''"))
    }
}

#[test]
fn smiles_mutations_and_random_bytes() {
    let c = mem();
    let all = real_smiles();
    let strategy = prop_oneof![
        4 => (0..all.len(), prop::collection::vec(mutation(), 1..4))
            .prop_map(|(i, m)| (i, m, Vec::new())),
        1 => prop::collection::vec(any::<u8>(), 0..48).prop_map(|b| (0, Vec::new(), b)),
    ];
    runner(600)
        .run(&strategy, |(i, ms, bytes)| {
            if ms.is_empty() {
                let lit = format!("CAST({} AS TEXT)", blob_lit(&bytes));
                check_smiles(&c, &lit, &format!("bytes {bytes:?}"));
            } else {
                let s = mutate(&all[i], &ms);
                check_smiles(
                    &c,
                    &sql_text(&s),
                    &format!("{:?} mutated {ms:?} to {s:?}", all[i]),
                );
            }
            Ok(())
        })
        .unwrap();
    // Unmutated SMILES with every supported radius and width, against RDKit's bits
    // (data/molecules/morgan_reference.csv, made by RDKit's GetMorganGenerator).
    let text = std::fs::read_to_string(repo().join("data/molecules/morgan_reference.csv")).unwrap();
    let mut n = 0;
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split(',').collect();
        let (s, r, b, bits) = (f[0], f[1], f[2], f[3]);
        let want: Vec<u32> = bits
            .split_whitespace()
            .map(|x| x.parse().unwrap())
            .collect();
        let sql = format!("SELECT phenix_fingerprint({}, {r}, {b})", sql_text(s));
        let got: Vec<u32> = match one(&c, &sql).unwrap() {
            Value::Text(t) => serde_json::from_str(&t).unwrap(),
            other => panic!("{sql}: {other:?}"),
        };
        assert_eq!(got, want, "{sql}");
        n += 1;
    }
    assert!(n >= 300, "{n} reference rows");
    assert_no_panics();
}

// ------------------------------------------------------------------------------------------------
// Part 4d: model bundles through phenix_model_load.

fn default_manifest() -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(repo().join("models/default/phenix-model.json")).unwrap())
        .unwrap()
}

/// Writes a bundle directory: `manifest` (or raw text) plus the two ONNX files as symlinks to the
/// shipped ones unless given as bytes.
fn write_bundle(
    dir: &Path,
    manifest: Option<&str>,
    molecule: Option<&[u8]>,
    phenomics: Option<&[u8]>,
) {
    std::fs::create_dir_all(dir).unwrap();
    if let Some(m) = manifest {
        std::fs::write(dir.join("phenix-model.json"), m).unwrap();
    }
    for (name, bytes) in [("molecule.onnx", molecule), ("phenomics.onnx", phenomics)] {
        let p = dir.join(name);
        match bytes {
            Some(b) => std::fs::write(&p, b).unwrap(),
            None => {
                std::os::unix::fs::symlink(repo().join("models/default").join(name), &p).unwrap()
            }
        }
    }
}

fn load(c: &Connection, name: &str, dir: &Path) -> rusqlite::Result<Value> {
    in_sql(|| {
        c.query_row(
            "SELECT phenix_model_load(?1, ?2)",
            rusqlite::params![name, dir.to_str().unwrap()],
            |r| r.get(0),
        )
    })
}

/// Every JSON path of `v` (object keys; first and last array elements).
fn json_paths(v: &serde_json::Value, prefix: Vec<String>, out: &mut Vec<Vec<String>>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, x) in m {
                let mut p = prefix.clone();
                p.push(k.clone());
                out.push(p.clone());
                json_paths(x, p, out);
            }
        }
        serde_json::Value::Array(a) if !a.is_empty() => {
            for i in [0, a.len() - 1] {
                let mut p = prefix.clone();
                p.push(i.to_string());
                out.push(p.clone());
                json_paths(&a[i], p, out);
            }
        }
        _ => {}
    }
}

fn at<'a>(v: &'a mut serde_json::Value, path: &[String]) -> &'a mut serde_json::Value {
    path.iter().fold(v, |v, k| match v {
        serde_json::Value::Array(a) => &mut a[k.parse::<usize>().unwrap()],
        other => &mut other[k.as_str()],
    })
}

fn junk() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::json;
    prop::sample::select(vec![
        json!(null),
        json!(true),
        json!(-1),
        json!(0),
        json!(1e300),
        json!(u64::MAX),
        json!(1u64 << 40),
        json!(""),
        json!("x"),
        json!([]),
        json!({}),
        json!("../molecule.onnx"),
        json!("/dev/zero"),
        json!([1, 2, 3]),
        json!({"kind": "none"}),
    ])
}

#[test]
fn model_manifest_mutations() {
    let c = mem();
    let base = default_manifest();
    let mut paths = Vec::new();
    json_paths(&base, Vec::new(), &mut paths);
    let dir = TempDir::new("manifests");
    let counter = Cell::new(0u32);
    let strategy = (prop::sample::select(paths), prop::option::of(junk()));
    runner(60)
        .run(&strategy, |(path, replacement)| {
            counter.set(counter.get() + 1);
            let case = counter.get();
            let mut m = base.clone();
            match &replacement {
                Some(j) => *at(&mut m, &path) = j.clone(),
                None => {
                    let (last, parent) = path.split_last().unwrap();
                    match at(&mut m, parent) {
                        serde_json::Value::Object(o) => {
                            o.remove(last);
                        }
                        serde_json::Value::Array(a) => {
                            a.remove(last.parse::<usize>().unwrap());
                        }
                        _ => unreachable!(),
                    }
                }
            }
            let d = dir.0.join(format!("b{case}"));
            write_bundle(&d, Some(&m.to_string()), None, None);
            let what = format!("{path:?} -> {replacement:?}");
            match load(&c, &format!("m{case}"), &d) {
                Ok(Value::Text(t)) => {
                    prop_assert!(
                        t.starts_with(&format!("loaded model 'm{case}' (dim ")),
                        "{}: {}",
                        what,
                        t
                    );
                    // A bundle that loads embeds.
                    let e = one(
                        &c,
                        &format!("SELECT length(phenix_embed_molecule('m{case}', 'CCO', 1.0))"),
                    );
                    prop_assert!(
                        matches!(e, Ok(Value::Integer(n)) if n > 0),
                        "{}: {:?}",
                        what,
                        e
                    );
                }
                Ok(other) => prop_assert!(false, "{}: {:?}", what, other),
                Err(e) => {
                    let msg = phenix_msg(&e, &what);
                    prop_assert!(
                        msg.starts_with("phenix: phenix_model_load: "),
                        "{}: {}",
                        what,
                        msg
                    );
                    prop_assert!(
                        msg.contains("phenix-model.json")
                            || msg.contains(".onnx")
                            || msg.contains("molecule")
                            || msg.contains("phenomics"),
                        "{}: the message names neither the manifest nor a model file: {}",
                        what,
                        msg
                    );
                }
            }
            let _ = std::fs::remove_dir_all(&d);
            Ok(())
        })
        .unwrap();
    assert_no_panics();
}

#[test]
fn model_bundle_files_missing_truncated_or_wrong() {
    let c = mem();
    let dir = TempDir::new("bundles");
    let manifest = default_manifest();
    let text = manifest.to_string();
    let mol = std::fs::read(repo().join("models/default/molecule.onnx")).unwrap();
    let phen = std::fs::read(repo().join("models/default/phenomics.onnx")).unwrap();
    let edit = |f: &dyn Fn(&mut serde_json::Value)| {
        let mut m = manifest.clone();
        f(&mut m);
        m.to_string()
    };
    type Case = (
        &'static str,
        Option<String>,
        Option<Vec<u8>>,
        Option<Vec<u8>>,
        &'static [&'static str],
    );
    let cases: Vec<Case> = vec![
        (
            "no manifest",
            None,
            None,
            None,
            &["phenix-model.json", "No such file"],
        ),
        (
            "empty manifest",
            Some(String::new()),
            None,
            None,
            &["phenix-model.json", "not valid JSON"],
        ),
        (
            "manifest not JSON",
            Some("{\"format_version\": 1,".into()),
            None,
            None,
            &["not valid JSON"],
        ),
        (
            "deeply nested",
            Some(format!("{}{}", "[".repeat(100_000), "]".repeat(100_000))),
            None,
            None,
            &["phenix-model.json"],
        ),
        (
            "format 2",
            Some(edit(&|m| m["format_version"] = 2.into())),
            None,
            None,
            &["format_version", "2"],
        ),
        (
            "no dim",
            Some(edit(&|m| {
                m["embedding"].as_object_mut().unwrap().remove("dim");
            })),
            None,
            None,
            &["dim"],
        ),
        (
            "dim 0",
            Some(edit(&|m| m["embedding"]["dim"] = 0.into())),
            None,
            None,
            &["embedding.dim"],
        ),
        (
            "dim 255",
            Some(edit(&|m| m["embedding"]["dim"] = 255.into())),
            None,
            None,
            &["molecule.onnx", "255"],
        ),
        (
            "dim 2^40",
            Some(edit(&|m| m["embedding"]["dim"] = (1u64 << 40).into())),
            None,
            None,
            &["embedding.dim"],
        ),
        (
            "dim 2^64",
            Some(edit(&|m| {
                m["embedding"]["dim"] = serde_json::from_str("18446744073709551616").unwrap()
            })),
            None,
            None,
            &["phenix-model.json"],
        ),
        (
            "input_dim 2^40",
            Some(edit(&|m| {
                m["phenomics"]["input_dim"] = (1u64 << 40).into();
                m["phenomics"]["normalization"] = serde_json::json!({"kind": "none"});
            })),
            None,
            None,
            &["input_dim"],
        ),
        (
            "n_bits 100",
            Some(edit(&|m| {
                m["molecule"]["featurizer"]["n_bits"] = 100.into()
            })),
            None,
            None,
            &["n_bits"],
        ),
        (
            "n_bits 1024",
            Some(edit(&|m| {
                m["molecule"]["featurizer"]["n_bits"] = 1024.into()
            })),
            None,
            None,
            &["molecule.onnx", "1024"],
        ),
        (
            "centre of 383",
            Some(edit(&|m| {
                m["phenomics"]["normalization"]["center"]
                    .as_array_mut()
                    .unwrap()
                    .pop();
            })),
            None,
            None,
            &["center", "383"],
        ),
        (
            "NaN-ish scale",
            Some(edit(&|m| {
                m["phenomics"]["normalization"]["scale"][0] = 0.into()
            })),
            None,
            None,
            &["scale[0]"],
        ),
        (
            "onnx absolute",
            Some(edit(&|m| m["molecule"]["onnx"] = "/etc/passwd".into())),
            None,
            None,
            &["molecule.onnx", "/etc/passwd"],
        ),
        (
            "onnx outside",
            Some(edit(&|m| {
                m["phenomics"]["onnx"] = "../phenomics.onnx".into()
            })),
            None,
            None,
            &["phenomics.onnx", "../phenomics.onnx"],
        ),
        (
            "onnx a directory",
            Some(edit(&|m| m["molecule"]["onnx"] = ".".into())),
            None,
            None,
            &["molecule.onnx"],
        ),
        (
            "wrong output name",
            Some(edit(&|m| m["molecule"]["output"] = "nope".into())),
            None,
            None,
            &["nope"],
        ),
        (
            "swapped models",
            Some(text.clone()),
            Some(phen.clone()),
            Some(mol.clone()),
            &["molecule"],
        ),
        (
            "empty molecule.onnx",
            Some(text.clone()),
            Some(Vec::new()),
            None,
            &["molecule.onnx"],
        ),
        (
            "molecule.onnx 10 bytes",
            Some(text.clone()),
            Some(mol[..10].to_vec()),
            None,
            &["molecule.onnx"],
        ),
        (
            "molecule.onnx half",
            Some(text.clone()),
            Some(mol[..mol.len() / 2].to_vec()),
            None,
            &["molecule.onnx"],
        ),
        (
            "molecule.onnx minus 1",
            Some(text.clone()),
            Some(mol[..mol.len() - 1].to_vec()),
            None,
            &["molecule.onnx"],
        ),
        (
            "phenomics.onnx half",
            Some(text.clone()),
            None,
            Some(phen[..phen.len() / 2].to_vec()),
            &["phenomics.onnx"],
        ),
        (
            "random bytes",
            Some(text.clone()),
            Some(
                (0..4096u32)
                    .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
                    .collect(),
            ),
            None,
            &["molecule.onnx"],
        ),
    ];
    for (i, (what, m, mo, ph)) in cases
        .iter()
        .map(|(w, m, mo, ph, _)| (w, m, mo, ph))
        .enumerate()
    {
        let d = dir.0.join(format!("c{i}"));
        write_bundle(&d, m.as_deref(), mo.as_deref(), ph.as_deref());
        let msg = expect_err(load(&c, &format!("bad{i}"), &d), what);
        assert!(
            msg.starts_with("phenix: phenix_model_load: "),
            "{what}: {msg}"
        );
        for w in cases[i].4 {
            assert!(msg.contains(w), "{what}: `{w}` missing from: {msg}");
        }
        // Nothing was registered under the name.
        let m = expect_err(
            one(
                &c,
                &format!("SELECT phenix_embed_molecule('bad{i}', 'CCO', 1.0)"),
            ),
            what,
        );
        assert!(
            m.contains(&format!("no model named 'bad{i}'")),
            "{what}: {m}"
        );
    }
    // Options: JSON object with provider and threads only, threads in a sane range.
    let good = dir.0.join("good");
    write_bundle(&good, Some(&text), None, None);
    for (opts, want) in [
        ("not json", "options are not JSON"),
        ("[]", "must be a JSON object"),
        ("{\"threads\": 0}", "threads"),
        ("{\"threads\": -1}", "threads"),
        ("{\"threads\": 1.5}", "threads"),
        ("{\"threads\": 1e300}", "threads"),
        ("{\"threads\": 18446744073709551615}", "threads"),
        ("{\"threads\": 1000000000}", "threads"),
        ("{\"provider\": \"tpu\"}", "tpu"),
        ("{\"provider\": 1}", "provider"),
        ("{\"colour\": \"red\"}", "colour"),
    ] {
        let r = in_sql(|| {
            c.query_row(
                "SELECT phenix_model_load('opt', ?1, ?2)",
                rusqlite::params![good.to_str().unwrap(), opts],
                |r| r.get::<_, Value>(0),
            )
        });
        let msg = expect_err(r, opts);
        assert!(
            msg.starts_with("phenix: phenix_model_load: ") && msg.contains(want),
            "{opts}: {msg}"
        );
    }
    assert_no_panics();
}

// ------------------------------------------------------------------------------------------------
// Part 4e: arguments of every phenix SQL function.

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
        assert_eq!(msg, want, "{sql}");
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

// ------------------------------------------------------------------------------------------------
// Part 6: untrusted databases.

/// A database with phenix table `t` (3 rows), closed; returns its table id.
fn make_db(path: &Path) -> String {
    let c = open(path);
    c.execute_batch(
        "CREATE VIRTUAL TABLE t USING phenix(v float32[2], m TEXT);
         INSERT INTO t(rowid, v, m) VALUES (1, '[1, 0]', 'a'), (2, '[0, 1]', 'b'), (3, '[1, 1]', 'c');",
    )
    .unwrap();
    let id: String = c
        .query_row("SELECT value FROM t_info WHERE key = 'table_id'", [], |r| {
            r.get(0)
        })
        .unwrap();
    drop(c);
    id
}

/// Length and FNV-1a hash of a file's bytes.
fn digest(b: &[u8]) -> String {
    let h = b.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &x| {
        (h ^ u64::from(x)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("{} bytes, fnv {h:016x}", b.len())
}

/// Every file under `dir` (recursively, not following symlinks) with its length and hash, or its
/// symlink target.
fn snapshot(dir: &Path) -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            if m.is_dir() {
                stack.push(p);
            } else if m.is_file() {
                out.push((p.clone(), digest(&std::fs::read(&p).unwrap())));
            } else {
                let target = std::fs::read_link(&p).unwrap();
                out.push((p.clone(), format!("-> {}", target.display())));
            }
        }
    }
    out.sort();
    out
}

fn set_info(db: &Path, key: &str, value_sql: &str) {
    plain(db)
        .execute(
            &format!("UPDATE t_info SET value = {value_sql} WHERE key = '{key}'"),
            [],
        )
        .unwrap();
}

/// Every way phenix may touch the table: read, KNN, write, create another table (which collects
/// orphans), drop. Returns the errors' messages (every error must be a phenix error or SQLite's own).
fn exercise(db: &Path) -> Vec<String> {
    let c = open(db);
    let mut msgs = Vec::new();
    for sql in [
        "SELECT count(*) FROM t",
        "SELECT rowid FROM t WHERE v MATCH '[1, 0]' AND k = 2",
        "INSERT INTO t(rowid, v, m) VALUES (10, '[2, 2]', 'x')",
        "DELETE FROM t WHERE rowid = 1",
        "CREATE VIRTUAL TABLE other USING phenix(v float16[2])",
        "INSERT INTO other(v) VALUES ('[1, 2]')",
    ] {
        if let Err(e) = in_sql(|| c.execute_batch(sql)) {
            let s = e.to_string();
            assert!(
                !s.contains("internal error") && !s.contains("panic"),
                "{sql}: {s}"
            );
            msgs.push(format!("{sql}: {s}"));
        }
    }
    msgs
}

#[test]
fn hostile_info_values_stay_inside_the_sidecar_directory() {
    let root = TempDir::new("hostile-info");
    // Something outside that a path built from the shadow tables could reach.
    let outside = root.0.join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("precious.phx"), b"not yours").unwrap();
    let cases: &[(&str, &str, &str)] = &[
        ("table_id", "'../outside/precious'", "no valid table_id"),
        (
            "table_id",
            "'../../../../../../../../tmp/x'",
            "no valid table_id",
        ),
        ("table_id", "'/etc/passwd'", "no valid table_id"),
        (
            "table_id",
            "'0123456789abcdef0123456789abcde/'",
            "no valid table_id",
        ),
        (
            "table_id",
            "'0123456789abcdef0123456789abcdef/..'",
            "no valid table_id",
        ),
        (
            "table_id",
            "'0123456789abcdef0123456789abcdeé'",
            "no valid table_id",
        ),
        (
            "table_id",
            "12345678901234567890123456789012",
            "no valid table_id",
        ),
        (
            "table_id",
            "x'0123456789abcdef0123456789abcdef'",
            "no valid table_id",
        ),
        ("table_id", "NULL", "no valid table_id"),
        (
            "table_id",
            "'00000000000000000000000000000000'",
            "No such file",
        ),
        ("generation", "9223372036854775807", "No such file"),
        ("generation", "1", "No such file"),
        ("committed", "9223372036854775807", "t"),
        ("committed", "-1", "no valid committed count"),
        ("committed", "'../x'", "no valid committed count"),
        ("committed", "4", "t"),
        (
            "definition",
            "'v float32[3] distance=cosine, m TEXT'",
            "differ from the stored definition",
        ),
        ("format", "'../../x'", ""),
    ];
    for (i, (key, value, want)) in cases.iter().enumerate() {
        let dir = root.0.join(format!("c{i}"));
        std::fs::create_dir_all(&dir).unwrap();
        let db = dir.join("x.db");
        make_db(&db);
        set_info(&db, key, value);
        let before_outside = snapshot(&outside);
        let msgs = exercise(&db);
        // Nothing outside changed; nothing appeared next to the database but its own files.
        assert_eq!(snapshot(&outside), before_outside, "{key} = {value}");
        let names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        for n in &names {
            assert!(
                n.starts_with("x.db"),
                "{key} = {value}: phenix made {n} next to the database"
            );
        }
        // Inside the sidecar only `<32 hex>.g<N>.phx` files.
        for (p, _) in snapshot(&dir.join("x.db-phenix")) {
            let f = p.file_name().unwrap().to_string_lossy().into_owned();
            assert!(
                f.len() > 36
                    && f[..32].bytes().all(|b| b.is_ascii_hexdigit())
                    && f.ends_with(".phx"),
                "{key} = {value}: {f}"
            );
            assert_eq!(p.parent().unwrap(), dir.join("x.db-phenix"));
        }
        if !want.is_empty() {
            // Reading the damaged table fails with a phenix error that names the table and the problem.
            let first = msgs
                .first()
                .unwrap_or_else(|| panic!("{key} = {value}: everything worked"));
            assert!(
                first.starts_with("SELECT count(*) FROM t: phenix: phenix table t"),
                "{key} = {value}: {first}"
            );
            assert!(
                first.contains(want),
                "{key} = {value}: `{want}` missing from {first}"
            );
        }
    }
    assert_no_panics();
}

/// A `generation` that is not a non-negative integer (or is missing) must not make phenix delete the
/// table's own vector file as an orphan.
#[test]
fn a_damaged_generation_never_deletes_the_vectors() {
    let root = TempDir::new("generation");
    let mut lost = Vec::new();
    for (i, value) in ["'abc'", "-1", "NULL", "1.5", "x'00'", "'0'"]
        .iter()
        .enumerate()
    {
        let dir = root.0.join(format!("g{i}"));
        std::fs::create_dir_all(&dir).unwrap();
        let db = dir.join("x.db");
        let id = make_db(&db);
        let file = dir.join(format!("x.db-phenix/{id}.g0.phx"));
        let bytes = std::fs::read(&file).unwrap();
        set_info(&db, "generation", value);
        let _ = exercise(&db);
        // Repair the generation: the three committed rows are all still there.
        set_info(&db, "generation", "0");
        if !file.exists() {
            lost.push(*value);
            continue;
        }
        assert!(
            std::fs::read(&file)
                .unwrap()
                .starts_with(&bytes[..bytes.len().min(64)]),
            "generation = {value}: header changed"
        );
        let c = open(&db);
        let n = rows(&c, "SELECT rowid FROM t WHERE v MATCH '[1, 0]' AND k = 10");
        assert!(
            matches!(&n, Ok(v) if v.len() >= 2),
            "generation = {value}: {n:?}"
        );
    }
    assert_no_panics();
    assert!(
        lost.is_empty(),
        "the vector file was deleted for generation = {lost:?}"
    );
}

#[test]
fn hostile_rows_slots_are_refused() {
    let root = TempDir::new("slots");
    for (i, slot) in [
        "-1",
        "3",
        "1000000000000",
        "-9223372036854775808",
        "'x'",
        "2.5",
    ]
    .iter()
    .enumerate()
    {
        let dir = root.0.join(format!("s{i}"));
        std::fs::create_dir_all(&dir).unwrap();
        let db = dir.join("x.db");
        make_db(&db);
        plain(&db)
            .execute(
                &format!("UPDATE t_rows SET slot = {slot} WHERE rowid = 2"),
                [],
            )
            .unwrap();
        let c = open(&db);
        for sql in [
            "SELECT rowid FROM t WHERE v MATCH '[1, 0]' AND k = 3",
            "SELECT count(*) FROM phenix_retrieve('t', '[1, 0]', 3)",
            "SELECT v FROM t",
        ] {
            match rows(&c, sql) {
                Ok(v) => assert!(v.len() <= 3, "slot {slot}: {sql}: {v:?}"),
                Err(e) => {
                    let s = e.to_string();
                    assert!(
                        s.starts_with("phenix: ") || s.contains("Invalid column type"),
                        "slot {slot}: {sql}: {s}"
                    );
                    assert!(!s.contains("internal error"), "slot {slot}: {sql}: {s}");
                }
            }
        }
    }
    assert_no_panics();
}

/// The vector file in the sidecar directory is a symlink to another database's vector file (whose id
/// the hostile database copied): phenix must not write through it.
#[test]
fn a_symlinked_vector_file_is_not_written_through() {
    let root = TempDir::new("symlink-file");
    std::fs::create_dir_all(root.0.join("victim")).unwrap();
    std::fs::create_dir_all(root.0.join("evil")).unwrap();
    let victim = root.0.join("victim/v.db");
    let id = make_db(&victim);
    let victim_files = snapshot(&root.0.join("victim"));
    let evil = root.0.join("evil/e.db");
    let _ = make_db(&evil);
    // The hostile database claims the victim's table id, with nothing committed, and its sidecar holds
    // a symlink to the victim's file.
    set_info(&evil, "table_id", &format!("'{id}'"));
    set_info(&evil, "committed", "0");
    plain(&evil).execute("DELETE FROM t_rows", []).unwrap();
    let link = root.0.join(format!("evil/e.db-phenix/{id}.g0.phx"));
    std::os::unix::fs::symlink(
        root.0.join(format!("victim/v.db-phenix/{id}.g0.phx")),
        &link,
    )
    .unwrap();
    let _ = exercise(&evil);
    assert_eq!(
        snapshot(&root.0.join("victim")),
        victim_files,
        "the victim's files changed"
    );
    let c = open(&victim);
    assert_eq!(
        rows(&c, "SELECT rowid FROM t ORDER BY rowid")
            .unwrap()
            .len(),
        3
    );
    assert_no_panics();
}

/// A symlink to an arbitrary outside file in place of the vector file: refused, the file unchanged.
#[test]
fn a_symlink_to_an_outside_file_is_refused() {
    let root = TempDir::new("symlink-outside");
    let db = root.0.join("x.db");
    let id = make_db(&db);
    let target = root.0.join("precious.txt");
    std::fs::write(&target, b"precious data, not a vector file").unwrap();
    let file = root.0.join(format!("x.db-phenix/{id}.g0.phx"));
    std::fs::remove_file(&file).unwrap();
    std::os::unix::fs::symlink(&target, &file).unwrap();
    // An orphan-looking symlink too: collecting orphans may remove the link, never its target.
    let orphan_target = root.0.join("precious2.txt");
    std::fs::write(&orphan_target, b"also precious").unwrap();
    std::os::unix::fs::symlink(
        &orphan_target,
        root.0
            .join("x.db-phenix/ffffffffffffffffffffffffffffffff.g0.phx"),
    )
    .unwrap();
    let msgs = exercise(&db);
    assert_eq!(
        std::fs::read(&target).unwrap(),
        b"precious data, not a vector file"
    );
    assert_eq!(std::fs::read(&orphan_target).unwrap(), b"also precious");
    let first = msgs.first().expect("reading through the symlink must fail");
    assert!(first.contains("phenix: phenix table t"), "{first}");
    assert_no_panics();
}

/// The sidecar directory itself is a symlink to another database's sidecar directory: phenix must not
/// delete or write the other database's vector files.
#[test]
fn a_symlinked_sidecar_directory_is_not_used() {
    let root = TempDir::new("symlink-dir");
    std::fs::create_dir_all(root.0.join("victim")).unwrap();
    std::fs::create_dir_all(root.0.join("evil")).unwrap();
    let victim = root.0.join("victim/v.db");
    make_db(&victim);
    let victim_files = snapshot(&root.0.join("victim"));
    let evil = root.0.join("evil/e.db");
    plain(&evil).execute_batch("CREATE TABLE x(a)").unwrap();
    std::os::unix::fs::symlink(
        root.0.join("victim/v.db-phenix"),
        root.0.join("evil/e.db-phenix"),
    )
    .unwrap();
    let c = open(&evil);
    let r = in_sql(|| {
        c.execute_batch(
            "CREATE VIRTUAL TABLE t USING phenix(v float16[2]);
             INSERT INTO t(v) VALUES ('[1, 2]');",
        )
    });
    if let Err(e) = &r {
        let _ = phenix_msg(e, "create in a symlinked sidecar directory");
    }
    drop(c);
    assert_eq!(
        snapshot(&root.0.join("victim")),
        victim_files,
        "phenix changed another database's sidecar through a symlinked directory ({r:?})"
    );
    assert_no_panics();
}

/// Files with odd names in the sidecar directory (another program's, or a hostile archive's) do not
/// break writes.
#[test]
fn odd_file_names_in_the_sidecar_directory() {
    let root = TempDir::new("odd-names");
    let db = root.0.join("x.db");
    make_db(&db);
    let side = root.0.join("x.db-phenix");
    for name in [
        format!("{}é.g0.phx", "a".repeat(31)),
        format!("{}日本.phx", "b".repeat(30)),
        "é".repeat(20) + ".phx",
        "notes.txt".into(),
        ".phx".into(),
    ] {
        std::fs::write(side.join(&name), b"x").unwrap();
    }
    std::fs::create_dir_all(side.join("0123456789abcdef0123456789abcdef.g9.phx")).unwrap();
    let c = open(&db);
    let r = in_sql(|| c.execute_batch("INSERT INTO t(rowid, v, m) VALUES (10, '[2, 2]', 'x')"));
    assert!(
        r.is_ok(),
        "a write with odd names in the sidecar directory: {r:?}"
    );
    assert_eq!(rows(&c, "SELECT rowid FROM t").unwrap().len(), 4);
    assert_no_panics();
}

/// Functions that take a path or run SQL text refuse to run from SQL stored in a database (views,
/// triggers), also one made elsewhere and with `trusted_schema` on.
#[test]
fn path_functions_refuse_views_and_triggers() {
    let root = TempDir::new("direct-only");
    let db = root.0.join("x.db");
    let bundle = repo().join("models/default");
    let b = bundle.to_str().unwrap().replace('\'', "''");
    // Made by "someone else": a connection without phenix writes the schema.
    plain(&db)
        .execute_batch(&format!(
            "CREATE TABLE log(x);
             CREATE TABLE src(s TEXT, c REAL);
             INSERT INTO src VALUES ('CCO', 1.0);
             CREATE VIEW load_view AS SELECT phenix_model_load('evil_view', '{b}') AS r;
             CREATE VIEW embed_view AS SELECT count(*) AS n FROM phenix_embed_molecules('default', 'SELECT s, c FROM src');
             CREATE TRIGGER load_trigger AFTER INSERT ON log BEGIN
               SELECT phenix_model_load('evil_trigger', '{b}');
             END;
             CREATE TABLE log2(x);
             CREATE TRIGGER embed_trigger AFTER INSERT ON log2 BEGIN
               INSERT INTO src SELECT smiles, concentration FROM phenix_embed_molecules('default', 'SELECT s, c FROM src');
             END;"
        ))
        .unwrap();
    for trusted in ["ON", "OFF"] {
        let c = open(&db);
        c.execute_batch(&format!("PRAGMA trusted_schema = {trusted}"))
            .unwrap();
        for (sql, fname) in [
            ("SELECT r FROM load_view", "phenix_model_load"),
            ("SELECT n FROM embed_view", "phenix_embed_molecules"),
            ("INSERT INTO log VALUES (1)", "phenix_model_load"),
            ("INSERT INTO log2 VALUES (1)", "phenix_embed_molecules"),
        ] {
            let r = in_sql(|| c.execute_batch(sql));
            let e = r.expect_err(sql).to_string();
            assert!(
                e.contains("unsafe use of") && e.contains(fname),
                "trusted_schema={trusted}: {sql}: {e}"
            );
        }
        // Nothing was loaded or run.
        let names = rows(&c, "SELECT name FROM phenix_models").unwrap();
        assert!(
            !names
                .iter()
                .any(|n| matches!(n, Value::Text(t) if t.starts_with("evil"))),
            "{names:?}"
        );
        assert_eq!(
            one(&c, "SELECT count(*) FROM src").unwrap(),
            Value::Integer(1)
        );
        // The same calls made directly by the application work.
        let r = one(&c, &format!("SELECT phenix_model_load('direct', '{b}')")).unwrap();
        assert!(
            matches!(&r, Value::Text(t) if t.starts_with("loaded model 'direct'")),
            "{r:?}"
        );
        assert_eq!(
            one(
                &c,
                "SELECT count(*) FROM phenix_embed_molecules('default', 'SELECT s, c FROM src')"
            )
            .unwrap(),
            Value::Integer(1)
        );
    }
    assert_no_panics();
}
