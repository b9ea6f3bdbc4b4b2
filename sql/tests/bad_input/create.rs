//! CREATE VIRTUAL TABLE arguments.

use crate::harness::*;
use proptest::prelude::*;
use rusqlite::types::Value;

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
