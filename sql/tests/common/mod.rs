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

/// A vector as a JSON array, each element written as its exact decimal value (not the shortest
/// text that reads back as the same f32). phenix rounds JSON numbers bound for a float16 column once,
/// from the decimal, to the nearest float16; the shortest text of an f32 that lies exactly halfway
/// between two float16 values is a little off the halfway point and would round to a neighbour of
/// what `f16::from_f32` (ties to even) gives. Exact text rounds like the f32 itself.
pub fn json(v: &[f32]) -> String {
    format!(
        "[{}]",
        v.iter()
            .map(|&x| exact_decimal(x))
            .collect::<Vec<_>>()
            .join(",")
    )
}

/// The exact decimal value of `x` (every f32 is a finite binary fraction), e.g. `0.100000001490116119384765625`.
pub fn exact_decimal(x: f32) -> String {
    // 150 fractional digits hold every f32 exactly (the smallest subnormal has 149 binary places).
    let s = format!("{:.150}", f64::from(x));
    let s = s.trim_end_matches('0');
    s.strip_suffix('.').unwrap_or(s).to_string()
}

/// `v` rounded through f16.
pub fn f16r(v: &[f32]) -> Vec<f32> {
    v.iter().map(|&x| half::f16::from_f32(x).to_f32()).collect()
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

/// Runs the KNN statement `sql` (`?1` the query as JSON, `?2` k, `?3` the tag) and compares its rows
/// with an exact integer brute force over `want` (rowid -> (vector, tag)), restricted to rows whose
/// tag is `tag` when `filtered`. Integer vectors: equal squared distances give bit-equal float32
/// distances, ranked by rowid as the brute force ranks them; distances must agree within 1e-4.
pub fn check_int_knn<const N: usize, T: PartialEq + rusqlite::ToSql + std::fmt::Debug>(
    c: &Connection,
    sql: &str,
    want: &std::collections::BTreeMap<i64, ([i64; N], T)>,
    q: &[i64; N],
    k: usize,
    tag: &T,
    filtered: bool,
) -> Result<(), String> {
    let qj = format!(
        "[{}]",
        q.iter()
            .map(|x| x.to_string())
            .collect::<Vec<_>>()
            .join(",")
    );
    let got: Vec<(i64, f64)> = c
        .prepare(sql)
        .map_err(|e| e.to_string())?
        .query_map(rusqlite::params![qj, k as i64, tag], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .map_err(|e| e.to_string())?
        .collect::<rusqlite::Result<_>>()
        .map_err(|e| format!("KNN: {e}"))?;
    let mut exp: Vec<(i64, i64)> = want
        .iter()
        .filter(|(_, (_, t))| !filtered || t == tag)
        .map(|(id, (v, _))| (*id, (0..N).map(|i| (v[i] - q[i]).pow(2)).sum::<i64>()))
        .collect();
    exp.sort_by_key(|&(id, d2)| (d2, id));
    exp.truncate(k);
    let ok = got.len() == exp.len()
        && got
            .iter()
            .zip(&exp)
            .all(|(g, e)| g.0 == e.0 && (g.1 - (e.1 as f64).sqrt()).abs() < 1e-4);
    if !ok {
        return Err(format!(
            "KNN (k = {k}, q = {q:?}, tag filter {filtered}) returned {got:?}, brute force {exp:?}"
        ));
    }
    Ok(())
}
