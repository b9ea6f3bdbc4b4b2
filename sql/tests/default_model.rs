//! The compiled-in `default` model: it loads from memory and writes nothing anywhere, and a build
//! without the `default-model` feature refuses 'default' clearly.
//!
//! One test per binary: it points HOME, XDG_CACHE_HOME and TMPDIR (process-wide) at fresh
//! directories before anything loads. Run the refusal half with
//! `cargo test -p phenix-sql --no-default-features --features bundled --test default_model`.

use rusqlite::Connection;
use std::path::{Path, PathBuf};

/// Every file and directory under `dir`, relative.
fn listing(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            out.push(p.strip_prefix(dir).unwrap().to_path_buf());
            if p.is_dir() {
                stack.push(p);
            }
        }
    }
    out
}

#[cfg(feature = "default-model")]
#[test]
fn default_model_loads_from_memory_and_writes_nothing() {
    use std::os::unix::fs::PermissionsExt;
    let base = std::env::temp_dir().join(format!("phenix-default-model-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    let (home, tmp) = (base.join("home"), base.join("tmp"));
    for d in [&home, &tmp] {
        std::fs::create_dir_all(d).unwrap();
        // Read-only (a read-only install or sandbox); root ignores the mode, so the listing
        // check below is what proves nothing was written.
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o555)).unwrap();
    }
    // SAFETY-free in edition 2021, but process-wide: this binary has this one test, and it sets
    // them before phenix or ONNX Runtime run.
    std::env::set_var("HOME", &home);
    std::env::remove_var("XDG_CACHE_HOME");
    std::env::set_var("TMPDIR", &tmp);

    let c = Connection::open_in_memory().unwrap();
    phenix_sql::register(&c).unwrap();
    let smiles = ["CC(=O)Oc1ccccc1C(=O)O", "CCO", "c1ccc2[nH]ccc2c1"];
    let mut from_memory = Vec::new();
    for s in smiles {
        let b: Vec<u8> = c
            .query_row(
                "SELECT phenix_embed_molecule('default', ?1, 10.0)",
                [s],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(b.len(), 2 * 256);
        from_memory.push(b);
    }
    let profile = format!("[{}]", vec!["0.5"; 384].join(","));
    let phen_mem: Vec<u8> = c
        .query_row(
            "SELECT phenix_embed_phenomics('default', ?1)",
            [&profile],
            |r| r.get(0),
        )
        .unwrap();
    // The path column is NULL for the compiled-in model: there is no directory.
    let (path, dim): (Option<String>, i64) = c
        .query_row(
            "SELECT path, dim FROM phenix_models WHERE name = 'default'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!((path, dim), (None, 256));
    assert!(
        listing(&home).is_empty() && listing(&tmp).is_empty(),
        "the default model wrote files: HOME {:?}, TMPDIR {:?}",
        listing(&home),
        listing(&tmp)
    );

    // The same bundle read from its directory gives bit-identical embeddings.
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/default");
    c.query_row(
        "SELECT phenix_model_load('disk', ?1)",
        [dir.to_str().unwrap()],
        |r| r.get::<_, String>(0),
    )
    .unwrap();
    for (s, mem) in smiles.iter().zip(&from_memory) {
        let disk: Vec<u8> = c
            .query_row("SELECT phenix_embed_molecule('disk', ?1, 10.0)", [s], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(&disk, mem, "{s}: memory and directory loads differ");
    }
    let phen_disk: Vec<u8> = c
        .query_row(
            "SELECT phenix_embed_phenomics('disk', ?1)",
            [&profile],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(phen_disk, phen_mem);
    std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)).unwrap();
    let _ = std::fs::remove_dir_all(&base);
}

#[cfg(not(feature = "default-model"))]
#[test]
fn default_is_refused_clearly_without_the_feature() {
    let c = Connection::open_in_memory().unwrap();
    phenix_sql::register(&c).unwrap();
    for sql in [
        "SELECT phenix_embed_molecule('default', 'CCO', 1.0)",
        "SELECT phenix_embed_phenomics('default', '[1]')",
        "SELECT * FROM phenix_embed_molecules('default', 'SELECT ''CCO'', 1.0')",
    ] {
        let e = c
            .query_row(sql, [], |r| r.get::<_, rusqlite::types::Value>(0))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("model 'default' is not compiled into this build")
                && e.contains("default-model")
                && e.contains("phenix_model_load"),
            "{sql}: {e}"
        );
    }
    // The models table lists what is there: nothing yet, and no error.
    let n: i64 = c
        .query_row("SELECT count(*) FROM phenix_models", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 0);
    // A bundle directory still loads.
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/default");
    c.query_row(
        "SELECT phenix_model_load('mine', ?1)",
        [dir.to_str().unwrap()],
        |r| r.get::<_, String>(0),
    )
    .unwrap();
    let b: Vec<u8> = c
        .query_row(
            "SELECT phenix_embed_molecule('mine', 'CCO', 1.0)",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(b.len(), 512);
    let _ = listing;
}
