//! Helpers shared by the integration tests of phenix-sql (each test file uses a subset): the one
//! temporary-directory type, connections with phenix registered, the seeded vector generators
//! (splitmix64 and xorshift64*), and vector encodings.
#![allow(dead_code)]

use rusqlite::Connection;
use std::path::{Path, PathBuf};

/// A directory removed on drop.
pub struct TempDir(pub PathBuf);
impl TempDir {
    pub fn new(name: &str) -> Self {
        let p = std::env::temp_dir().join(format!("phenix-sql-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A connection on `path` with phenix registered.
pub fn open(path: &Path) -> Connection {
    let c = Connection::open(path).unwrap();
    phenix_sql::register(&c).unwrap();
    c
}

/// An in-memory connection with phenix registered.
pub fn mem() -> Connection {
    let c = Connection::open_in_memory().unwrap();
    phenix_sql::register(&c).unwrap();
    c
}

/// splitmix64 in [-1, 1).
pub fn rand_vec(seed: u64, n: usize) -> Vec<f32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = s;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            ((z ^ (z >> 31)) >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

/// A deterministic pseudo-random vector (xorshift64*), elements in [-2, 2).
pub fn xorshift_vec(seed: u64, dim: usize) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..dim)
        .map(|_| {
            s ^= s >> 12;
            s ^= s << 25;
            s ^= s >> 27;
            let u = (s.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40) as f64 / (1u64 << 24) as f64;
            (u * 4.0 - 2.0) as f32
        })
        .collect()
}

/// The little-endian f32 bytes of `v` (a `float32` blob).
pub fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// A vector as a JSON array.
pub fn json(v: &[f32]) -> String {
    format!(
        "[{}]",
        v.iter()
            .map(|x| x.to_string())
            .collect::<Vec<_>>()
            .join(",")
    )
}

/// `v` rounded through f16.
pub fn f16r(v: &[f32]) -> Vec<f32> {
    v.iter().map(|&x| half::f16::from_f32(x).to_f32()).collect()
}

/// The float16 bytes phenix stores for `v` written as [`json`] text: each decimal is rounded once,
/// to the nearest float16 (not through float32, which can round a float16 midpoint the other way).
#[allow(dead_code)]
pub fn json_f16_bytes(v: &[f32]) -> Vec<u8> {
    v.iter()
        .flat_map(|&x| {
            let d: f64 = x.to_string().parse().expect("a decimal");
            nearest_f16(d).to_le_bytes()
        })
        .collect()
}

/// `v` as phenix stores it when written as [`json`] text: each decimal rounded once to float16.
#[allow(dead_code)]
pub fn json_f16r(v: &[f32]) -> Vec<f32> {
    v.iter()
        .map(|&x| nearest_f16(x.to_string().parse().expect("a decimal")).to_f32())
        .collect()
}

/// The float16 nearest to `d`, ties to even, computed by comparing neighbours in f64 (`half`'s
/// `from_f64` goes through float32 where F16C is used, which rounds twice).
#[allow(dead_code)]
pub fn nearest_f16(d: f64) -> half::f16 {
    let a = half::f16::from_f64(d).to_bits();
    let mut best: Option<(f64, u16)> = None;
    for bits in [a.wrapping_sub(1), a, a.wrapping_add(1)] {
        let c = half::f16::from_bits(bits);
        if !c.is_finite() || (c.to_f64() < 0.0) != (d < 0.0) && c.to_f64() != 0.0 {
            continue;
        }
        let err = (c.to_f64() - d).abs();
        best = match best {
            Some((e, b)) if e < err || (e == err && b & 1 == 0) => Some((e, b)),
            _ => Some((err, bits)),
        };
    }
    half::f16::from_bits(best.expect("a finite candidate").1)
}

/// The little-endian f16 bytes of `v` (what a float16 column returns).
pub fn f16_bytes(v: &[f32]) -> Vec<u8> {
    v.iter()
        .flat_map(|&x| half::f16::from_f32(x).to_le_bytes())
        .collect()
}

/// Cosine distance in f64.
pub fn cos64(a: &[f32], b: &[f32]) -> f64 {
    let d: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    1.0 - d / (na * nb)
}

/// The sidecar files (`*.phx`) of database `db`, sorted by name.
pub fn sidecar_files(db: &Path) -> Vec<PathBuf> {
    let mut dir = db.as_os_str().to_owned();
    dir.push("-phenix");
    let mut v: Vec<PathBuf> = std::fs::read_dir(PathBuf::from(dir))
        .map(|r| r.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    v.retain(|p| p.extension().is_some_and(|e| e == "phx"));
    v.sort();
    v
}
