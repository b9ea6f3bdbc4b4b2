//! Model bundles through phenix_model_load.

use crate::common::TempDir;
use crate::harness::*;
use proptest::prelude::*;
use rusqlite::types::Value;
use rusqlite::Connection;
use std::cell::Cell;
use std::path::Path;

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
