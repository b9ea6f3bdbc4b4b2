//! The phenix vs sqlite-vec comparison harness: seeded data, the SQL both engines are driven
//! with, and the agreement measure between their result sets. Used by the runner
//! (`src/bin/compare.rs`) and the criterion bench (`benches/compare.rs`).

use crate::random_vec;
use rusqlite::Connection;
use std::path::{Path, PathBuf};

/// Registers sqlite-vec as an auto-extension (once per process), so every connection opened afterwards
/// has `vec0`.
pub fn register_sqlite_vec() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: `sqlite3_vec_init` has the signature of an SQLite extension entry point (db, error
        // message out-pointer, API routines); it is linked into the same bundled SQLite, so the API
        // pointer it receives is that library's own.
        unsafe {
            rusqlite::ffi::sqlite3_auto_extension(Some(std::mem::transmute::<
                *const (),
                unsafe extern "C" fn(
                    *mut rusqlite::ffi::sqlite3,
                    *mut *mut std::ffi::c_char,
                    *const rusqlite::ffi::sqlite3_api_routines,
                ) -> std::ffi::c_int,
            >(
                sqlite_vec::sqlite3_vec_init as *const (),
            )));
        }
    });
}

/// Opens `path` with both engines available (WAL, synchronous=NORMAL, as an application would).
pub fn open(path: &Path) -> rusqlite::Result<Connection> {
    register_sqlite_vec();
    let c = Connection::open(path)?;
    phenix_sql::register(&c)?;
    c.execute_batch("PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;")?;
    Ok(c)
}

/// The two engines.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Engine {
    /// phenix, `float16[N]`.
    Phenix,
    /// sqlite-vec 0.1.9, `vec0(float[N])`.
    SqliteVec,
}

impl Engine {
    /// Short name (used on command lines and in file names).
    pub fn name(self) -> &'static str {
        match self {
            Engine::Phenix => "phenix",
            Engine::SqliteVec => "sqlite-vec",
        }
    }

    /// Parses [`Engine::name`].
    pub fn parse(s: &str) -> Option<Engine> {
        match s {
            "phenix" => Some(Engine::Phenix),
            "sqlite-vec" => Some(Engine::SqliteVec),
            _ => None,
        }
    }

    /// `CREATE VIRTUAL TABLE t …`: a cosine vector column `embedding` and an integer metadata column
    /// `cat` that KNN queries can filter on (a vec0 metadata column in sqlite-vec).
    pub fn create_sql(self, dim: usize) -> String {
        match self {
            Engine::Phenix => format!(
                "CREATE VIRTUAL TABLE t USING phenix(embedding float16[{dim}] distance=cosine, cat INTEGER)"
            ),
            Engine::SqliteVec => format!(
                "CREATE VIRTUAL TABLE t USING vec0(embedding float[{dim}] distance_metric=cosine, cat integer)"
            ),
        }
    }
}

/// KNN query text, the same for both engines: `?1` the f32 query blob, `?2` k, plus `filter`
/// (e.g. `"AND cat < 10"`).
pub fn knn_sql(filter: &str) -> String {
    format!("SELECT rowid, distance FROM t WHERE embedding MATCH ?1 AND k = ?2 {filter}")
}

/// The metadata filters measured: (label, SQL, fraction of rows that pass).
pub const FILTERS: [(&str, &str, f64); 2] =
    [("10%", "AND cat < 10", 0.10), ("1%", "AND cat = 0", 0.01)];

/// The data distributions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Data {
    /// Uniform in [-1, 1)^dim, then normalised.
    Random,
    /// [`CLUSTERS`] random unit centres; each row is a centre plus Gaussian noise of norm ~0.5,
    /// normalised.
    Clustered,
}

/// Number of centres of [`Data::Clustered`].
pub const CLUSTERS: u64 = 1000;

impl Data {
    /// Short name.
    pub fn name(self) -> &'static str {
        match self {
            Data::Random => "random",
            Data::Clustered => "clustered",
        }
    }
    /// Parses [`Data::name`].
    pub fn parse(s: &str) -> Option<Data> {
        match s {
            "random" => Some(Data::Random),
            "clustered" => Some(Data::Clustered),
            _ => None,
        }
    }
}

fn normalise(v: &mut [f32]) {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if n > 0.0 {
        v.iter_mut().for_each(|x| *x /= n);
    }
}

/// Standard normal values (Box–Muller over splitmix64 uniforms), seeded.
fn gaussian(seed: u64, n: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(n + 1);
    let mut s = seed;
    while out.len() < n {
        s = crate::splitmix64(s);
        let u1 = ((s >> 11) as f64 + 1.0) / (1u64 << 53) as f64; // (0, 1]
        s = crate::splitmix64(s);
        let u2 = (s >> 11) as f64 / (1u64 << 53) as f64;
        let r = (-2.0 * u1.ln()).sqrt();
        let t = std::f64::consts::TAU * u2;
        out.push((r * t.cos()) as f32);
        out.push((r * t.sin()) as f32);
    }
    out.truncate(n);
    out
}

/// Seed namespace of the query vectors (disjoint from rows' seeds).
const QUERY_SEED: u64 = 1 << 40;

/// Row `id` (1-based) of a data set.
pub fn row_vec(data: Data, id: u64, dim: usize) -> Vec<f32> {
    point(data, id, dim)
}

/// Query `j` (0-based) of a data set: drawn from the same distribution as the rows, other seeds.
pub fn query_vec(data: Data, j: u64, dim: usize) -> Vec<f32> {
    point(data, QUERY_SEED + j, dim)
}

fn point(data: Data, seed: u64, dim: usize) -> Vec<f32> {
    let mut v = match data {
        Data::Random => random_vec(seed.wrapping_mul(0x2545_F491_4F6C_DD1D), dim),
        Data::Clustered => {
            let c = crate::splitmix64(seed ^ 0xC1u64) % CLUSTERS;
            let mut v = random_vec((c + 1).wrapping_mul(0x5851_F42D_4C95_7F2D), dim);
            normalise(&mut v);
            let sd = 0.5 / (dim as f32).sqrt();
            for (x, g) in v.iter_mut().zip(gaussian(seed, dim)) {
                *x += sd * g;
            }
            v
        }
    };
    normalise(&mut v);
    v
}

/// The metadata value of row `id`: uniform over 0..100, independent of the vector.
pub fn cat(id: u64) -> i64 {
    (crate::splitmix64(id ^ 0xCA7_CA7) % 100) as i64
}

/// A vector as an f32 little-endian blob (sqlite-vec's format; phenix reads it too).
pub fn f32_blob(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Writes the source database: `src(id INTEGER PRIMARY KEY, v BLOB, cat INTEGER)` with `rows` rows and
/// `qs(id INTEGER PRIMARY KEY, v BLOB)` with `queries` query vectors, all f32 blobs.
pub fn write_source(
    path: &Path,
    data: Data,
    rows: u64,
    dim: usize,
    queries: u64,
) -> rusqlite::Result<()> {
    let _ = std::fs::remove_file(path);
    let c = Connection::open(path)?;
    c.execute_batch(
        "PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF;
         CREATE TABLE src(id INTEGER PRIMARY KEY, v BLOB NOT NULL, cat INTEGER NOT NULL);
         CREATE TABLE qs(id INTEGER PRIMARY KEY, v BLOB NOT NULL);
         BEGIN;",
    )?;
    {
        let mut st = c.prepare("INSERT INTO src(id, v, cat) VALUES (?1, ?2, ?3)")?;
        for id in 1..=rows {
            st.execute(rusqlite::params![
                id as i64,
                f32_blob(&row_vec(data, id, dim)),
                cat(id)
            ])?;
        }
        let mut st = c.prepare("INSERT INTO qs(id, v) VALUES (?1, ?2)")?;
        for j in 0..queries {
            st.execute(rusqlite::params![
                j as i64 + 1,
                f32_blob(&query_vec(data, j, dim))
            ])?;
        }
    }
    c.execute_batch("COMMIT;")?;
    Ok(())
}

/// Bytes under `p` (a file, or a directory recursively); 0 if it does not exist.
pub fn disk_size(p: &Path) -> u64 {
    let Ok(m) = std::fs::metadata(p) else {
        return 0;
    };
    if !m.is_dir() {
        return m.len();
    }
    std::fs::read_dir(p)
        .map(|rd| rd.flatten().map(|e| disk_size(&e.path())).sum())
        .unwrap_or(0)
}

/// Everything a database `db` occupies: the file, its `-wal`/`-shm`/`-journal`, and phenix's sidecar
/// directory `<db>-phenix/`.
pub fn db_footprint(db: &Path) -> u64 {
    ["", "-wal", "-shm", "-journal", "-phenix"]
        .iter()
        .map(|suf| {
            let mut s = db.as_os_str().to_owned();
            s.push(suf);
            disk_size(&PathBuf::from(s))
        })
        .sum()
}

/// Removes a database and everything [`db_footprint`] counts.
pub fn remove_db(db: &Path) {
    for suf in ["", "-wal", "-shm", "-journal"] {
        let mut s = db.as_os_str().to_owned();
        s.push(suf);
        let _ = std::fs::remove_file(PathBuf::from(s));
    }
    let mut s = db.as_os_str().to_owned();
    s.push("-phenix");
    let _ = std::fs::remove_dir_all(PathBuf::from(s));
}

/// `(VmRSS, VmHWM)` of this process in bytes, from `/proc/self/status` (`None` where unavailable).
pub fn memory() -> (Option<u64>, Option<u64>) {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let get = |key: &str| {
        s.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|r| r.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kb| kb * 1024)
    };
    (get("VmRSS:"), get("VmHWM:"))
}

/// How far two engines' answers to the same queries agree.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Agreement {
    /// Queries compared.
    pub queries: usize,
    /// Mean over queries of |A ∩ B| / max(|A|, |B|) (1.0 when both are empty).
    pub mean_overlap: f64,
    /// Fraction of queries whose id sets are identical.
    pub identical: f64,
}

/// Compares per-query id lists (order ignored; duplicates within one list count once). Lists are paired
/// by position; extra lists on either side are ignored.
pub fn agreement(a: &[Vec<i64>], b: &[Vec<i64>]) -> Agreement {
    let n = a.len().min(b.len());
    if n == 0 {
        return Agreement {
            queries: 0,
            mean_overlap: f64::NAN,
            identical: f64::NAN,
        };
    }
    let mut sum = 0.0;
    let mut same = 0usize;
    for (x, y) in a.iter().zip(b) {
        let mut x = x.clone();
        let mut y = y.clone();
        x.sort_unstable();
        x.dedup();
        y.sort_unstable();
        y.dedup();
        let (mut i, mut j, mut common) = (0, 0, 0usize);
        while i < x.len() && j < y.len() {
            match x[i].cmp(&y[j]) {
                std::cmp::Ordering::Less => i += 1,
                std::cmp::Ordering::Greater => j += 1,
                std::cmp::Ordering::Equal => {
                    common += 1;
                    i += 1;
                    j += 1;
                }
            }
        }
        let denom = x.len().max(y.len());
        sum += if denom == 0 {
            1.0
        } else {
            common as f64 / denom as f64
        };
        same += usize::from(x == y);
    }
    Agreement {
        queries: n,
        mean_overlap: sum / n as f64,
        identical: same as f64 / n as f64,
    }
}

/// Median of `v` (sorted in place); NaN when empty.
pub fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agreement_counts_overlap_and_identical_sets() {
        let a = vec![vec![1, 2, 3, 4], vec![5, 6], vec![], vec![9, 9, 8]];
        let b = vec![vec![4, 3, 2, 1], vec![6, 7], vec![], vec![8, 9]];
        let g = agreement(&a, &b);
        assert_eq!(g.queries, 4);
        // 1.0, 0.5, 1.0 (both empty), 1.0 (duplicates count once).
        assert!((g.mean_overlap - 3.5 / 4.0).abs() < 1e-12);
        assert!((g.identical - 0.75).abs() < 1e-12);
        // Different lengths: the longer list is the denominator.
        let g = agreement(&[vec![1, 2]], &[vec![1, 2, 3, 4]]);
        assert!((g.mean_overlap - 0.5).abs() < 1e-12);
        assert_eq!(g.identical, 0.0);
        // Unpaired lists are ignored.
        assert_eq!(agreement(&[vec![1]], &[vec![1], vec![2]]).queries, 1);
        assert!(agreement(&[], &[]).mean_overlap.is_nan());
    }

    #[test]
    fn median_of_odd_and_even() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(&mut []).is_nan());
    }

    #[test]
    fn data_is_seeded_normalised_and_clustered() {
        for data in [Data::Random, Data::Clustered] {
            let a = row_vec(data, 7, 64);
            assert_eq!(a, row_vec(data, 7, 64));
            assert_ne!(a, row_vec(data, 8, 64));
            assert_ne!(a, query_vec(data, 7, 64));
            let n: f32 = a.iter().map(|x| x * x).sum();
            assert!((n - 1.0).abs() < 1e-4, "{data:?}: |x|² = {n}");
        }
        // Rows of one cluster are much closer to each other than random rows are.
        let dot = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>();
        let (mut same, mut found) = (0.0, 0);
        let first = row_vec(Data::Clustered, 1, 256);
        for id in 2..20_000 {
            let v = row_vec(Data::Clustered, id, 256);
            let d = dot(&first, &v);
            if d > 0.5 {
                same += d;
                found += 1;
            }
        }
        assert!(found >= 5, "cluster mates of row 1: {found}");
        assert!(same / found as f32 > 0.7);
        let r = dot(
            &row_vec(Data::Random, 1, 256),
            &row_vec(Data::Random, 2, 256),
        );
        assert!(r.abs() < 0.3);
    }

    #[test]
    fn cat_is_roughly_uniform() {
        let n = 100_000u64;
        let lt10 = (1..=n).filter(|&i| cat(i) < 10).count() as f64 / n as f64;
        let eq0 = (1..=n).filter(|&i| cat(i) == 0).count() as f64 / n as f64;
        assert!((lt10 - 0.10).abs() < 0.005, "{lt10}");
        assert!((eq0 - 0.01).abs() < 0.002, "{eq0}");
    }
}
