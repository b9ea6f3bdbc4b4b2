//! Shared helpers for the integration tests: paths and the Python helpers in tests/models/.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The repository root (the workspace directory above `models/`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The Python with rdkit, onnx and onnxruntime: `$PHENIX_PYTHON`, else `<repo>/.venv/bin/python`.
pub fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("PHENIX_PYTHON") {
        return PathBuf::from(p);
    }
    let p = repo_root().join(".venv/bin/python");
    assert!(
        p.exists(),
        "{} is missing: run tools/setup (it creates .venv with rdkit, onnx and onnxruntime), \
         or set PHENIX_PYTHON",
        p.display()
    );
    p
}

/// Runs `tests/models/<script>` with `args`; panics with its stderr on failure.
pub fn run_python(script: &str, args: &[&str]) {
    let path = repo_root().join("tests/models").join(script);
    let out = Command::new(python())
        .arg(&path)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", path.display()));
    assert!(
        out.status.success(),
        "{} {:?} failed ({}):\n{}",
        path.display(),
        args,
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A fresh, empty directory under cargo's per-target test temp dir.
pub fn fresh_dir(name: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "phenix-models-{}-{}-{name}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
