//! A missing or wrong ONNX Runtime library is a clear error, not a panic, and fixing the path
//! then works. Its own test binary (one #[test]): ONNX Runtime is loaded once per process and
//! this test changes ORT_DYLIB_PATH.

mod common;

use phenix_models::{init_runtime, Error, LibrarySource, Model, RuntimeOptions};

fn minimal_bundle() -> std::path::PathBuf {
    let dir = common::fresh_dir("lib-bundle");
    let manifest = serde_json::json!({
        "format_version": 1, "name": "t", "version": "0",
        "embedding": {"dim": 4, "distance": "cosine"},
        "molecule": {"onnx": "molecule.onnx",
            "featurizer": {"kind": "morgan", "radius": 2, "n_bits": 2048, "counts": false, "chirality": false},
            "concentration": {"kind": "none"}, "input_fingerprint": "fingerprint",
            "input_concentration": null, "output": "embedding"},
        "phenomics": {"onnx": "phenomics.onnx", "input_dim": 3, "normalization": {"kind": "none"},
            "input": "profile", "output": "embedding"},
        "provenance": {"training_data": "", "loss": "", "command": "", "seed": 0, "split": "", "metrics": {}}
    });
    std::fs::write(dir.join("phenix-model.json"), manifest.to_string()).unwrap();
    dir
}

#[track_caller]
fn expect_library_error(r: Result<impl std::fmt::Debug, Error>, needles: &[&str]) {
    let e = r.unwrap_err();
    assert!(matches!(e, Error::RuntimeLibrary { .. }), "{e:?}");
    let msg = e.to_string();
    for n in needles {
        assert!(msg.contains(n), "message lacks {n:?}: {msg}");
    }
    assert!(
        msg.contains("ORT_DYLIB_PATH"),
        "message should say how to fix it: {msg}"
    );
    eprintln!("{msg}");
}

#[test]
fn missing_or_wrong_library_is_a_clear_error() {
    let bundle = minimal_bundle();

    // A path that does not exist.
    std::env::set_var("ORT_DYLIB_PATH", "/nonexistent/libonnxruntime.so");
    expect_library_error(
        init_runtime(None),
        &["/nonexistent/libonnxruntime.so", "does not exist"],
    );
    expect_library_error(
        Model::load(&bundle, &RuntimeOptions::default()),
        &["/nonexistent/libonnxruntime.so"],
    );

    // A file that is not a shared library.
    let not_lib = common::fresh_dir("not-lib").join("libonnxruntime.so");
    std::fs::write(&not_lib, "not a library").unwrap();
    std::env::set_var("ORT_DYLIB_PATH", &not_lib);
    expect_library_error(
        init_runtime(None),
        &[not_lib.to_str().unwrap(), "cannot load"],
    );

    // A real shared library that is not ONNX Runtime (this process's libc).
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    let libc = maps
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .find(|p| p.contains("/libc.so") || p.contains("/libc-"))
        .expect("libc in /proc/self/maps");
    std::env::set_var("ORT_DYLIB_PATH", libc);
    expect_library_error(init_runtime(None), &["does not export `OrtGetApiBase`"]);

    // An explicit path in the options is used alone too.
    std::env::remove_var("ORT_DYLIB_PATH");
    std::env::remove_var("PHENIX_ROOT");
    let opts = RuntimeOptions::default().library_path("/nonexistent/libort.so");
    expect_library_error(
        Model::load(&bundle, &opts),
        &["/nonexistent/libort.so", "runtime options"],
    );

    // Without ORT_DYLIB_PATH the default search finds <checkout>/.ort/ from target/, and a
    // failed attempt before does not stick.
    let info = init_runtime(None).expect("tools/setup makes .ort/libonnxruntime.so");
    assert_eq!(info.source, LibrarySource::NextToModule, "{info:?}");
    assert!(info.library.ends_with(".ort/libonnxruntime.so"), "{info:?}");
    assert!(info.version.starts_with("1."), "{info:?}");
    eprintln!("loaded {info:?}");
    // Once loaded, it stays: a later bad path is ignored.
    std::env::set_var("ORT_DYLIB_PATH", "/nonexistent/libonnxruntime.so");
    assert_eq!(init_runtime(None).unwrap(), info);
    std::env::remove_var("ORT_DYLIB_PATH");
}
