//! phenix from an application on rusqlite 0.43 (its own bundled SQLite), through libphenix's C API.
//! Creates a table, inserts, runs KNN against brute force, embeds with the compiled-in model, and
//! uses two connections on two threads. Exits non-zero on the first failure.

use rusqlite::{ffi, params, Connection};
use std::ffi::{c_char, c_int, CStr};

// --- phenix's C API (include/phenix.h) ---
extern "C" {
    fn sqlite3_phenix_init(
        db: *mut ffi::sqlite3,
        err: *mut *mut c_char,
        api: *const ffi::sqlite3_api_routines,
    ) -> c_int;
    fn phenix_version() -> *const c_char;
    fn phenix_load_onnxruntime(
        path: *const c_char,
        info: *mut *mut c_char,
        err: *mut *mut c_char,
    ) -> c_int;
    fn phenix_free(p: *mut c_char);
}

/// Registers phenix for every connection this process opens from now on, through this program's
/// SQLite (SQLite hands phenix its own API table: one SQLite library serves both).
fn register_phenix_for_new_connections() -> rusqlite::Result<()> {
    // SAFETY: sqlite3_phenix_init has the signature SQLite calls auto-extensions with.
    let rc = unsafe { ffi::sqlite3_auto_extension(Some(sqlite3_phenix_init)) };
    if rc == ffi::SQLITE_OK {
        Ok(())
    } else {
        Err(rusqlite::Error::SqliteFailure(ffi::Error::new(rc), None))
    }
}

fn phenix_version_string() -> String {
    // SAFETY: a static NUL-terminated string.
    unsafe { CStr::from_ptr(phenix_version()) }
        .to_string_lossy()
        .into_owned()
}

fn splitmix(seed: &mut u64) -> f32 {
    *seed = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *seed;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    ((z ^ (z >> 31)) >> 40) as f32 / (1u64 << 23) as f32 - 1.0
}

fn blob(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::args()
        .nth(1)
        .map_or_else(std::env::temp_dir, Into::into);
    let path = dir.join("phenix-rust-example.db");
    let _ = std::fs::remove_file(&path);

    // ONNX Runtime from code: NULL = the documented search (ORT_DYLIB_PATH, next to the library, .ort/).
    let (mut info, mut err) = (std::ptr::null_mut(), std::ptr::null_mut());
    // SAFETY: NULL path; writable out-pointers; both strings freed with phenix_free.
    let rc = unsafe { phenix_load_onnxruntime(std::ptr::null(), &mut info, &mut err) };
    for p in [info, err] {
        if !p.is_null() {
            // SAFETY: returned by libphenix, NUL-terminated, freed once.
            println!(
                "onnxruntime: {}",
                unsafe { CStr::from_ptr(p) }.to_string_lossy()
            );
            // SAFETY: returned by libphenix, freed once.
            unsafe { phenix_free(p) };
        }
    }
    assert_eq!(rc, 0, "ONNX Runtime did not load");

    register_phenix_for_new_connections()?;
    let conn = Connection::open(&path)?;
    let version: String = conn.query_row("SELECT phenix_version()", [], |r| r.get(0))?;
    assert_eq!(version, phenix_version_string());

    const N: usize = 400;
    const DIM: usize = 8;
    let mut seed = 7;
    let rows: Vec<Vec<f32>> = (0..N)
        .map(|_| (0..DIM).map(|_| splitmix(&mut seed)).collect())
        .collect();
    conn.execute_batch(
        "CREATE VIRTUAL TABLE items USING phenix(v float32[8] distance=cosine, tag TEXT)",
    )?;
    {
        let tx = conn.unchecked_transaction()?;
        let mut ins = tx.prepare("INSERT INTO items(rowid, v, tag) VALUES (?1, ?2, ?3)")?;
        for (i, r) in rows.iter().enumerate() {
            ins.execute(params![
                i as i64 + 1,
                blob(r),
                if i % 3 == 0 { "a" } else { "b" }
            ])?;
        }
        drop(ins);
        tx.commit()?;
    }
    let q: Vec<f32> = (0..DIM).map(|_| splitmix(&mut seed)).collect();
    let cosine = |a: &[f32], b: &[f32]| {
        let dot: f64 = a
            .iter()
            .zip(b)
            .map(|(x, y)| f64::from(*x) * f64::from(*y))
            .sum();
        let na: f64 = a.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
        let nb: f64 = b.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
        1.0 - dot / (na * nb)
    };
    // Brute force over the rows tagged 'a' (a pre-filter).
    let mut want: Vec<(f64, i64)> = rows
        .iter()
        .enumerate()
        .filter(|(i, _)| i % 3 == 0)
        .map(|(i, r)| (cosine(r, &q), i as i64 + 1))
        .collect();
    want.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let mut st =
        conn.prepare("SELECT rowid, distance FROM items WHERE v MATCH ?1 AND k = 5 AND tag = 'a'")?;
    let got: Vec<(i64, f64)> = st
        .query_map([blob(&q)], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    assert_eq!(got.len(), 5);
    for ((id, d), (wd, wid)) in got.iter().zip(&want) {
        assert_eq!(id, wid, "KNN order differs from brute force");
        assert!((d - wd).abs() < 1e-5, "distance {d} vs brute force {wd}");
    }

    // Embeddings with the compiled-in model.
    conn.execute_batch(
        "CREATE VIRTUAL TABLE mols USING phenix(e float16[256], smiles TEXT);
         INSERT INTO mols(e, smiles) SELECT embedding, smiles FROM phenix_embed_molecules('default',
           'SELECT ''CCO'', 1.0 UNION ALL SELECT ''c1ccccc1O'', 10.0 UNION ALL SELECT ''CC(=O)Oc1ccccc1C(=O)O'', 10.0');",
    )?;
    let nearest: String = conn.query_row(
        "SELECT smiles FROM mols WHERE e MATCH phenix_embed_molecule('default', 'c1ccccc1O', 10.0) AND k = 1",
        [],
        |r| r.get(0),
    )?;
    assert_eq!(nearest, "c1ccccc1O");

    // Two more connections on two threads (each gets phenix from the auto-extension).
    let handles: Vec<_> = (0..2)
        .map(|t| {
            let path = path.clone();
            std::thread::spawn(move || -> rusqlite::Result<i64> {
                let c = Connection::open(&path)?;
                c.busy_timeout(std::time::Duration::from_secs(10))?;
                if t == 0 {
                    c.execute(
                        "INSERT INTO items(rowid, v, tag) VALUES (10000, '[1,0,0,0,0,0,0,0]', 'c')",
                        [],
                    )?;
                }
                c.query_row(
                    "SELECT count(*) FROM items WHERE tag IN ('a', 'b')",
                    [],
                    |r| r.get(0),
                )
            })
        })
        .collect();
    for h in handles {
        assert_eq!(h.join().expect("thread panicked")?, N as i64);
    }
    println!(
        "phenix rust example: ok (rusqlite 0.43, SQLite {}, phenix {})",
        rusqlite::version(),
        phenix_version_string()
    );
    Ok(())
}
