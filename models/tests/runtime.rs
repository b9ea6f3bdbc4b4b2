//! Model bundles through ONNX Runtime: outputs equal Python onnxruntime's on the same inputs,
//! and every way a bundle can be wrong is reported as such.
//!
//! The bundles are made by tests/models/make_test_bundle.py (random-weight MLPs, opset 17,
//! IR 9) once per run; the ONNX Runtime library is found the default way (this test binary
//! lives under target/, whose ancestor holds .ort/libonnxruntime.so after tools/setup), or
//! through ORT_DYLIB_PATH.

mod common;

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use phenix_models::{Encoder, Error, ExecutionProvider, Model, RuntimeOptions};
use serde_json::Value;

/// The generated suite, made once per test binary.
fn suite() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = common::fresh_dir("suite");
        common::run_python("make_test_bundle.py", &["--suite", dir.to_str().unwrap()]);
        dir
    })
}

fn opts() -> RuntimeOptions {
    RuntimeOptions::default().intra_threads(1)
}

/// A copy of suite bundle `name` in a fresh directory, with `edit` applied to its manifest.
fn edited(name: &str, edit: impl FnOnce(&mut Value)) -> PathBuf {
    let src = suite().join(name);
    let dst = common::fresh_dir(name);
    for f in ["phenix-model.json", "molecule.onnx", "phenomics.onnx"] {
        std::fs::copy(src.join(f), dst.join(f)).unwrap();
    }
    let path = dst.join("phenix-model.json");
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut v);
    std::fs::write(&path, serde_json::to_string_pretty(&v).unwrap()).unwrap();
    dst
}

fn load_err(dir: &Path) -> Error {
    match Model::load(dir, &opts()) {
        Ok(_) => panic!("{} loaded but should not", dir.display()),
        Err(e) => e,
    }
}

#[track_caller]
fn assert_contains(e: &Error, needles: &[&str]) {
    let msg = e.to_string();
    for n in needles {
        assert!(msg.contains(n), "error message lacks {n:?}:\n{msg}\n{e:?}");
    }
}

struct Cases {
    molecules: Vec<(String, f64)>,
    molecule_embeddings: Vec<f32>,
    profiles: Vec<f32>,
    phenomics_embeddings: Vec<f32>,
}

fn cases(name: &str) -> Cases {
    let v: Value = serde_json::from_str(
        &std::fs::read_to_string(suite().join(name).join("cases.json")).unwrap(),
    )
    .unwrap();
    let flat = |key: &str| -> Vec<f32> {
        v[key]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|row| {
                row.as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_f64().unwrap() as f32)
            })
            .collect()
    };
    Cases {
        molecules: v["molecules"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| (m[0].as_str().unwrap().to_string(), m[1].as_f64().unwrap()))
            .collect(),
        molecule_embeddings: flat("molecule_embeddings"),
        profiles: flat("profiles"),
        phenomics_embeddings: flat("phenomics_embeddings"),
    }
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Rust featurizer + encoding + ort vs RDKit + numpy + Python onnxruntime.
const TOLERANCE: f32 = 1e-5;

#[test]
fn embeddings_match_python_onnxruntime() {
    for name in ["log", "none", "implicit", "one_hot", "sigmoid"] {
        let dir = suite().join(name);
        let model = Model::load(&dir, &opts()).unwrap_or_else(|e| panic!("{name}: {e}"));
        let c = cases(name);
        let uses_c = model.manifest().molecule.concentration.uses_concentration();
        // `none` and `implicit` ignore the concentration: pass NaN to show it.
        let items: Vec<(&str, f64)> = c
            .molecules
            .iter()
            .map(|(s, conc)| (s.as_str(), if uses_c { *conc } else { f64::NAN }))
            .collect();
        let got = model.embed_molecules(&items).unwrap();
        let d_mol = max_abs_diff(&got, &c.molecule_embeddings);
        assert!(
            d_mol <= TOLERANCE,
            "{name}: molecule embeddings differ by {d_mol}"
        );
        let got = model.embed_phenomics(&c.profiles).unwrap();
        let d_phen = max_abs_diff(&got, &c.phenomics_embeddings);
        assert!(
            d_phen <= TOLERANCE,
            "{name}: phenomics embeddings differ by {d_phen}"
        );
        eprintln!(
            "{name}: {} molecules, {} profiles; max |rust - python| = {d_mol:e} / {d_phen:e}",
            items.len(),
            c.profiles.len() / model.manifest().phenomics.input_dim
        );

        // Small batches give the same rows.
        let small = Model::load(&dir, &opts().max_batch(5)).unwrap();
        assert_eq!(
            small.embed_molecules(&items).unwrap(),
            model.embed_molecules(&items).unwrap()
        );
        assert_eq!(
            small.embed_phenomics(&c.profiles).unwrap(),
            model.embed_phenomics(&c.profiles).unwrap()
        );
        assert!(model.embed_molecules(&[]).unwrap().is_empty());
        assert!(model.embed_phenomics(&[]).unwrap().is_empty());
    }
}

/// `n` approved drugs (in file order) with concentrations spread over 0.001-100 µM.
fn drug_items(n: usize) -> Vec<(String, f64)> {
    let path = common::repo_root().join("data/molecules/approved_drugs.csv");
    let text = std::fs::read_to_string(&path).unwrap();
    text.lines()
        .skip(1)
        // id,name,smiles: names may hold commas, SMILES never do.
        .map(|l| l.rsplit(',').next().unwrap().to_string())
        .take(n)
        .enumerate()
        .map(|(i, s)| (s, 10f64.powf(-3.0 + 5.0 * (i % 97) as f64 / 96.0)))
        .collect()
}

/// With more than one intra-op thread, `embed_molecules` featurizes a batch on several threads
/// that take blocks of molecules from a queue. Every row must still be its own molecule's
/// embedding: compared with embedding each molecule alone (one featurizer thread, batch of 1).
#[test]
fn threaded_featurizing_keeps_rows_in_order() {
    let owned = drug_items(300);
    let items: Vec<(&str, f64)> = owned.iter().map(|(s, c)| (s.as_str(), *c)).collect();
    let dir = suite().join("log");
    let one = Model::load(&dir, &opts()).unwrap();
    let dim = one.dim();
    let mut alone = Vec::with_capacity(items.len() * dim);
    for item in &items {
        alone.extend(one.embed_molecules(&[*item]).unwrap());
    }
    // Also with intra-op spinning off (0) and ONNX Runtime's long default-like spin.
    for (threads, max_batch, spin_us) in [
        (2, 1024, 200),
        (2, 100, 0),
        (0, 1024, 200),
        (3, 77, 100_000),
    ] {
        let model = Model::load(
            &dir,
            &opts()
                .intra_threads(threads)
                .max_batch(max_batch)
                .intra_spin_us(spin_us),
        )
        .unwrap();
        let got = model.embed_molecules(&items).unwrap();
        let d = max_abs_diff(&got, &alone);
        assert!(
            d <= TOLERANCE,
            "intra_threads {threads}, max_batch {max_batch}, spin {spin_us} µs: rows differ from one-by-one embedding by {d}"
        );
        // The first failing molecule in input order is the one reported, wherever the
        // failures fall among the featurizer threads' blocks.
        for bad in [[5, 250], [40, 41], [120, 17], [299, 200]] {
            let mut broken = items.clone();
            broken[bad[0]].0 = "C1CC(";
            broken[bad[1]].0 = "C(C)(C)(C)(C)C";
            let first = bad[0].min(bad[1]);
            let e = model.embed_molecules(&broken).unwrap_err();
            assert_contains(&e, &[&format!("{:?}", broken[first].0)]);
        }
        let mut broken = items.clone();
        broken[230].1 = -1.0;
        broken[260].0 = "C1CC(";
        let e = model.embed_molecules(&broken).unwrap_err();
        assert!(matches!(e, Error::InvalidConcentration { .. }), "{e}");
    }
}

#[test]
fn load_cached_shares_and_reloads_after_a_change() {
    let dir = edited("log", |_| {});
    let a = Model::load_cached(&dir, &opts()).unwrap();
    let b = Model::load_cached(&dir, &opts()).unwrap();
    assert!(Arc::ptr_eq(&a, &b));
    let other = Model::load_cached(&dir, &opts().intra_threads(2)).unwrap();
    assert!(
        !Arc::ptr_eq(&a, &other),
        "different options, different sessions"
    );
    // Rewrite the manifest (new size: a version string one byte longer).
    let path = dir.join("phenix-model.json");
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("0.0.1-test", "0.0.10-test");
    std::fs::write(&path, text).unwrap();
    let c = Model::load_cached(&dir, &opts()).unwrap();
    assert!(!Arc::ptr_eq(&a, &c));
    assert_eq!(c.manifest().version, "0.0.10-test");
    phenix_models::clear_model_cache();
}

#[test]
fn invalid_inputs_at_run_time() {
    let model = Model::load(suite().join("log"), &opts()).unwrap();
    let e = model
        .embed_molecules(&[("CCO", 1.0), ("C1CC(", 1.0)])
        .unwrap_err();
    assert!(matches!(e, Error::InvalidSmiles { .. }));
    assert_contains(&e, &["\"C1CC(\""]);
    let e = model
        .embed_molecules(&[("C(C)(C)(C)(C)C", 1.0)])
        .unwrap_err();
    assert_contains(&e, &["C(C)(C)(C)(C)C", "valence"]);
    for c in [0.0, -1.0, f64::NAN, f64::INFINITY] {
        let e = model.embed_molecules(&[("CCO", c)]).unwrap_err();
        assert!(matches!(e, Error::InvalidConcentration { .. }), "{c}: {e}");
        assert_contains(&e, &["\"CCO\"", "finite concentration > 0"]);
    }
    let d = model.manifest().phenomics.input_dim;
    let e = model.embed_phenomics(&vec![0.0; d + 1]).unwrap_err();
    assert_contains(&e, &["not a multiple of input_dim 48"]);
    let mut rows = vec![0.0; 2 * d];
    rows[d + 3] = f32::NAN;
    let e = model.embed_phenomics(&rows).unwrap_err();
    assert_contains(&e, &["row 1 feature 3", "finite"]);
}

#[test]
fn cuda_is_refused_clearly_without_cuda() {
    let e = Model::load(
        suite().join("log"),
        &opts().execution_provider(ExecutionProvider::Cuda { device_id: 0 }),
    )
    .unwrap_err();
    assert!(
        matches!(
            e,
            Error::ExecutionProviderUnavailable {
                provider: "cuda",
                ..
            }
        ),
        "{e:?}"
    );
    assert_contains(&e, &["cuda", "cpu provider"]);
    eprintln!("{e}");
    assert_eq!(
        ExecutionProvider::parse("cuda:1").unwrap(),
        ExecutionProvider::Cuda { device_id: 1 }
    );
    assert_eq!(
        ExecutionProvider::parse("CPU").unwrap(),
        ExecutionProvider::Cpu
    );
    assert!(ExecutionProvider::parse("tpu").is_err());
}

#[test]
fn manifest_errors() {
    type Edit = Box<dyn FnOnce(&mut Value)>;
    let cases: Vec<(&str, Edit, Vec<&str>)> = vec![
        (
            "missing dim",
            Box::new(|v| {
                v["embedding"].as_object_mut().unwrap().remove("dim");
            }),
            vec!["missing field `dim`"],
        ),
        (
            "missing phenomics",
            Box::new(|v| {
                v.as_object_mut().unwrap().remove("phenomics");
            }),
            vec!["missing field `phenomics`"],
        ),
        (
            "unknown key",
            Box::new(|v| v["molecule"]["fingerprint_input"] = "x".into()),
            vec!["unknown field `fingerprint_input`"],
        ),
        (
            "distance",
            Box::new(|v| v["embedding"]["distance"] = "cos".into()),
            vec!["unknown variant `cos`"],
        ),
        (
            "radius",
            Box::new(|v| v["molecule"]["featurizer"]["radius"] = 5.into()),
            vec!["radius = 5", "0, 1, 2 or 3"],
        ),
        (
            "n_bits",
            Box::new(|v| v["molecule"]["featurizer"]["n_bits"] = 1000.into()),
            vec!["n_bits = 1000"],
        ),
        (
            "featurizer kind",
            Box::new(|v| v["molecule"]["featurizer"]["kind"] = "ecfp".into()),
            vec!["unknown variant `ecfp`"],
        ),
        (
            "log scale 0",
            Box::new(|v| v["molecule"]["concentration"]["scale"] = 0.0.into()),
            vec!["`scale` is 0"],
        ),
        (
            "edges order",
            Box::new(|v| {
                v["molecule"]["concentration"] =
                    serde_json::json!({"kind": "one_hot", "edges_um": [1.0, 0.5]})
            }),
            vec!["strictly ascending"],
        ),
        (
            "conc input without features",
            Box::new(|v| v["molecule"]["concentration"] = serde_json::json!({"kind": "none"})),
            vec!["set it to null"],
        ),
        (
            "features without conc input",
            Box::new(|v| v["molecule"]["input_concentration"] = Value::Null),
            vec!["input_concentration` is null"],
        ),
        (
            "center length",
            Box::new(|v| {
                v["phenomics"]["normalization"]["center"]
                    .as_array_mut()
                    .unwrap()
                    .pop();
            }),
            vec!["center` has 47 values", "input_dim` is 48"],
        ),
        (
            "scale zero",
            Box::new(|v| v["phenomics"]["normalization"]["scale"][7] = 0.0.into()),
            vec!["scale[7]` is 0"],
        ),
        (
            "dim zero",
            Box::new(|v| v["embedding"]["dim"] = 0.into()),
            vec!["`embedding.dim` must be > 0"],
        ),
        (
            "feature names too few",
            Box::new(|v| v["phenomics"]["features"] = serde_json::json!(["a", "b"])),
            vec!["`phenomics.features` has 2 names", "input_dim` is 48"],
        ),
        (
            "feature name repeated",
            Box::new(|v| {
                let mut names: Vec<String> = (0..48).map(|i| format!("Cells_F{i}")).collect();
                names[30] = "Cells_F3".into();
                v["phenomics"]["features"] = serde_json::json!(names);
            }),
            vec!["`phenomics.features[30]` \"Cells_F3\" appears twice"],
        ),
        (
            "feature name empty",
            Box::new(|v| {
                let mut names: Vec<String> = (0..48).map(|i| format!("Cells_F{i}")).collect();
                names[5] = String::new();
                v["phenomics"]["features"] = serde_json::json!(names);
            }),
            vec!["`phenomics.features[5]` is empty"],
        ),
        (
            "plate normalisation not an object",
            Box::new(|v| v["phenomics"]["plate_normalization"] = "center".into()),
            vec!["`phenomics.plate_normalization` must be a JSON object"],
        ),
    ];
    for (what, edit, needles) in cases {
        let e = load_err(&edited("log", edit));
        assert!(
            matches!(
                e,
                Error::Manifest { .. } | Error::UnsupportedFeaturizer { .. }
            ),
            "{what}: {e:?}"
        );
        assert_contains(&e, &needles);
        assert_contains(&e, &["phenix-model.json"]);
    }

    let e = load_err(&edited("log", |v| v["format_version"] = 2.into()));
    assert!(
        matches!(
            e,
            Error::VersionMismatch {
                expected: 1,
                found: 2,
                ..
            }
        ),
        "{e:?}"
    );
    assert_contains(&e, &["format_version 2 is not supported"]);

    // The optional keys that say what the profile is: a bundle with them loads and keeps them, and
    // one without them (every bundle written before they existed) loads too.
    let names: Vec<String> = (0..48).map(|i| format!("Cells_F{i}")).collect();
    let with = edited("log", |v| {
        v["phenomics"]["features"] = serde_json::json!(names.clone());
        v["phenomics"]["plate_normalization"] = serde_json::json!({"method": "center"});
    });
    let b = phenix_models::ModelBundle::open(&with).unwrap();
    assert_eq!(b.manifest().phenomics.features.as_deref(), Some(&names[..]));
    assert_eq!(
        b.manifest().phenomics.plate_normalization,
        Some(serde_json::json!({"method": "center"}))
    );
    let without = edited("log", |_| {});
    assert_eq!(
        phenix_models::ModelBundle::open(&without)
            .unwrap()
            .manifest()
            .phenomics
            .features,
        None
    );

    let dir = edited("log", |_| {});
    std::fs::write(dir.join("phenix-model.json"), "{\"format_version\": 1, ").unwrap();
    assert_contains(&load_err(&dir), &["not valid JSON"]);
    std::fs::remove_file(dir.join("phenix-model.json")).unwrap();
    let e = load_err(&dir);
    assert!(matches!(e, Error::Io { .. }), "{e:?}");
}

#[test]
fn manifest_and_onnx_disagree() {
    let mol = Encoder::Molecule;
    let phen = Encoder::Phenomics;
    type Edit = Box<dyn FnOnce(&mut Value)>;
    let cases: Vec<(&str, Edit, Encoder, Vec<&str>)> = vec![
        (
            "n_bits",
            Box::new(|v| v["molecule"]["featurizer"]["n_bits"] = 1024.into()),
            mol,
            vec!["input \"fingerprint\"", "[-1, 2048]", "width is 1024"],
        ),
        (
            "input name",
            Box::new(|v| v["molecule"]["input_fingerprint"] = "fp".into()),
            mol,
            vec!["no input \"fp\"", "\"fingerprint\": Float32[-1, 2048]"],
        ),
        (
            "conc width",
            Box::new(|v| {
                v["molecule"]["concentration"] =
                    serde_json::json!({"kind": "one_hot", "edges_um": [1.0, 10.0]})
            }),
            mol,
            vec!["input \"concentration\"", "[-1, 1]", "width is 3"],
        ),
        (
            "conc name",
            Box::new(|v| v["molecule"]["input_concentration"] = "dose".into()),
            mol,
            vec!["no input \"dose\""],
        ),
        (
            "output name",
            Box::new(|v| v["molecule"]["output"] = "emb".into()),
            mol,
            vec!["no output \"emb\"", "\"embedding\""],
        ),
        (
            "dim",
            Box::new(|v| v["embedding"]["dim"] = 64.into()),
            mol,
            vec!["output \"embedding\"", "[-1, 32]", "width is 64"],
        ),
        (
            "input_dim",
            Box::new(|v| {
                v["phenomics"]["input_dim"] = 40.into();
                v["phenomics"]["normalization"] = serde_json::json!({"kind": "none"});
            }),
            phen,
            vec!["input \"profile\"", "[-1, 48]", "width is 40"],
        ),
        (
            "phenomics input",
            Box::new(|v| v["phenomics"]["input"] = "x".into()),
            phen,
            vec!["no input \"x\""],
        ),
    ];
    for (what, edit, encoder, needles) in cases {
        let e = load_err(&edited("log", edit));
        match &e {
            Error::BundleMismatch { encoder: got, .. } => assert_eq!(*got, encoder, "{what}: {e}"),
            _ => panic!("{what}: expected BundleMismatch, got {e:?}"),
        }
        assert_contains(&e, &needles);
    }

    let e = load_err(&suite().join("fixed_batch"));
    assert_contains(&e, &["fixed batch size 4", "dynamic batch axis"]);
    let e = load_err(&suite().join("extra_input"));
    assert_contains(&e, &["input \"dose\"", "does not feed"]);
    let e = load_err(&suite().join("int_input"));
    assert_contains(&e, &["Int64", "float32"]);
    let e = load_err(&suite().join("unnormalized"));
    assert!(
        matches!(
            e,
            Error::BundleMismatch {
                encoder: Encoder::Molecule,
                ..
            }
        ),
        "{e:?}"
    );
    assert_contains(&e, &["cosine", "L2 norm", "not 1"]);
    // The same model is fine when the bundle does not promise unit vectors.
    Model::load(suite().join("unnormalized_dot"), &opts()).unwrap();
}

#[test]
fn broken_onnx_files() {
    let dir = edited("log", |_| {});
    let bytes = std::fs::read(dir.join("molecule.onnx")).unwrap();
    std::fs::write(dir.join("molecule.onnx"), &bytes[..bytes.len() / 2]).unwrap();
    let e = load_err(&dir);
    assert!(
        matches!(
            e,
            Error::OnnxLoad {
                encoder: Encoder::Molecule,
                ..
            }
        ),
        "{e:?}"
    );
    assert_contains(&e, &["molecule.onnx", "re-export the model"]);
    eprintln!("truncated: {e}");

    std::fs::write(dir.join("molecule.onnx"), b"not an onnx file").unwrap();
    assert!(matches!(load_err(&dir), Error::OnnxLoad { .. }));

    let dir = edited("log", |_| {});
    std::fs::remove_file(dir.join("phenomics.onnx")).unwrap();
    let e = load_err(&dir);
    assert!(
        matches!(
            e,
            Error::OnnxLoad {
                encoder: Encoder::Phenomics,
                ..
            }
        ),
        "{e:?}"
    );
    assert_contains(&e, &["phenomics.onnx", "file not found"]);
}

/// `mkfifo path`.
fn mkfifo(path: &Path) {
    let st = std::process::Command::new("mkfifo")
        .arg(path)
        .status()
        .unwrap();
    assert!(st.success(), "mkfifo {}", path.display());
}

/// A bundle file that is a FIFO, a directory or a device is refused at once; reading a FIFO would
/// block the loader (and the SQL call behind it) forever. Loads run on a thread so a regression
/// fails the test after 60 s instead of hanging it.
#[test]
fn bundle_files_that_are_not_regular_files_are_refused_without_blocking() {
    type Edit = fn(&Path);
    let cases: [(&str, Edit, &[&str]); 4] = [
        (
            "phenix-model.json",
            |d| {
                std::fs::remove_file(d.join("phenix-model.json")).unwrap();
                mkfifo(&d.join("phenix-model.json"));
            },
            &["phenix-model.json", "not a regular file"],
        ),
        (
            "molecule.onnx",
            |d| {
                std::fs::remove_file(d.join("molecule.onnx")).unwrap();
                mkfifo(&d.join("molecule.onnx"));
            },
            &["molecule.onnx", "not a regular file"],
        ),
        (
            "phenomics.onnx (directory)",
            |d| {
                std::fs::remove_file(d.join("phenomics.onnx")).unwrap();
                std::fs::create_dir(d.join("phenomics.onnx")).unwrap();
            },
            &["phenomics.onnx", "not a regular file"],
        ),
        (
            "phenix-model.json (device)",
            |d| {
                std::fs::remove_file(d.join("phenix-model.json")).unwrap();
                std::os::unix::fs::symlink("/dev/zero", d.join("phenix-model.json")).unwrap();
            },
            &["phenix-model.json", "not a regular file"],
        ),
    ];
    for (what, edit, needles) in cases {
        let dir = edited("log", |_| {});
        edit(&dir);
        let (tx, rx) = std::sync::mpsc::channel();
        let d = dir.clone();
        std::thread::spawn(move || {
            let _ = tx.send(Model::load(&d, &opts()).map(|_| ()));
        });
        let r = rx
            .recv_timeout(std::time::Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("{what}: loading blocked for 60 s"));
        let e = r.expect_err(what);
        assert_contains(&e, needles);
        // And through the cache, which looks at the files' metadata first.
        let e = Model::load_cached(&dir, &opts()).expect_err(what);
        assert_contains(&e, needles);
    }
}
