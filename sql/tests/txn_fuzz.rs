//! Random transactions against a phenix table and an ordinary table in the same database, receiving the
//! same writes in the same transactions: INSERT / UPDATE (vector, tag, rowid) / DELETE / `optimize` /
//! BEGIN / COMMIT / ROLLBACK / SAVEPOINT / ROLLBACK TO / RELEASE, in rollback-journal and WAL mode, with
//! and without an outer BEGIN (a SAVEPOINT outside a transaction starts one). After every statement the
//! phenix table must hold exactly the reference's rows (vector bytes and tag), KNN must equal brute force
//! over the reference, and after every sequence a reopened connection must see the same and
//! `phenix_check` must say `ok`. A second connection, open for the whole sequence, reads after every
//! statement that leaves the writer outside a transaction, so it follows each committed change (the
//! catch-up of its live set: appends, `<t>_dead` entries, new generations) and must agree too.
//!
//! CI runs `PHENIX_TXN_FUZZ_SEQS` sequences (default 200); the long run in docs/reliability.md sets it
//! to thousands. `PHENIX_TXN_FUZZ_SEED` shifts the seeds; a failing sequence prints its seed, mode and
//! statements, so it can be replayed with `PHENIX_TXN_FUZZ_ONLY=<seed>`.

mod common;
use common::*;
use rusqlite::{params, Connection};
use std::collections::BTreeMap;
use std::path::Path;

/// rowid → ([a, b, c], tag).
type Rows = BTreeMap<i64, ([i64; 3], String)>;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn vec3(&mut self) -> [i64; 3] {
        [
            self.below(8) as i64,
            self.below(8) as i64,
            self.below(8) as i64,
        ]
    }
    fn tag(&mut self) -> String {
        ["a", "b", "c"][self.below(3) as usize].to_string()
    }
}

fn vjson(v: &[i64; 3]) -> String {
    format!("[{},{},{}]", v[0], v[1], v[2])
}

fn open_pair(path: &Path, wal: bool) -> Connection {
    let c = open(path);
    c.execute_batch(if wal {
        "PRAGMA journal_mode=WAL; PRAGMA synchronous=OFF;"
    } else {
        "PRAGMA journal_mode=DELETE; PRAGMA synchronous=OFF;"
    })
    .unwrap();
    c
}

/// The reference table's rows.
fn reference(c: &Connection) -> Rows {
    c.prepare("SELECT id, a, b, c, tag FROM r")
        .unwrap()
        .query_map([], |r| {
            Ok((r.get(0)?, ([r.get(1)?, r.get(2)?, r.get(3)?], r.get(4)?)))
        })
        .unwrap()
        .map(|r| r.unwrap())
        .collect()
}

/// The phenix table's rows (float16 vectors decoded; every value is a small integer, exact in f16).
fn phenix_rows(c: &Connection) -> Result<Rows, String> {
    let mut st = c
        .prepare("SELECT rowid, v, tag FROM t")
        .map_err(|e| e.to_string())?;
    let rows = st
        .query_map([], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, Vec<u8>>(1)?,
                r.get::<_, String>(2)?,
            ))
        })
        .map_err(|e| e.to_string())?;
    let mut out = Rows::new();
    for r in rows {
        let (id, b, tag) = r.map_err(|e| e.to_string())?;
        if b.len() != 6 {
            return Err(format!("row {id}: vector of {} bytes", b.len()));
        }
        let mut v = [0i64; 3];
        for (i, x) in v.iter_mut().enumerate() {
            let f = half::f16::from_le_bytes([b[2 * i], b[2 * i + 1]]).to_f32();
            *x = f as i64;
            if f != *x as f32 {
                return Err(format!("row {id}: element {f} is not an integer"));
            }
        }
        out.insert(id, (v, tag));
    }
    Ok(out)
}

/// Compares the phenix table with the reference: contents, KNN (with and without a tag filter) and
/// `count(*)`.
fn compare(c: &Connection, rng: &mut Rng) -> Result<(), String> {
    let want = reference(c);
    let got = phenix_rows(c)?;
    if got != want {
        return Err(format!(
            "contents differ:\n  phenix    {got:?}\n  reference {want:?}"
        ));
    }
    let q = rng.vec3();
    let k = 1 + rng.below(8) as usize;
    let tag = rng.tag();
    for filtered in [false, true] {
        let sql = if filtered {
            "SELECT rowid, distance FROM t WHERE v MATCH ?1 AND k = ?2 AND tag = ?3"
        } else {
            "SELECT rowid, distance FROM t WHERE v MATCH ?1 AND k = ?2 AND ?3 IS NOT NULL"
        };
        let got: Vec<(i64, f64)> = c
            .prepare(sql)
            .map_err(|e| e.to_string())?
            .query_map(params![vjson(&q), k as i64, tag], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .map_err(|e| e.to_string())?
            .collect::<rusqlite::Result<_>>()
            .map_err(|e| format!("KNN: {e}"))?;
        let mut exp: Vec<(i64, i64)> = want
            .iter()
            .filter(|(_, (_, t))| !filtered || *t == tag)
            .map(|(id, (v, _))| (*id, (0..3).map(|i| (v[i] - q[i]).pow(2)).sum::<i64>()))
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
    }
    Ok(())
}

#[derive(Debug)]
struct Failure {
    seed: u64,
    wal: bool,
    outer_begin: bool,
    log: Vec<String>,
    what: String,
}

/// Runs one sequence; `Err` describes the first divergence.
fn run_sequence(dir: &Path, seed: u64) -> Result<(), Failure> {
    let wal = seed % 2 == 1;
    let outer_begin = (seed / 2) % 2 == 1;
    let path = dir.join(format!("fuzz{seed}.db"));
    let _ = std::fs::remove_file(&path);
    let _ = std::fs::remove_dir_all(dir.join(format!("fuzz{seed}.db-phenix")));
    let mut rng = Rng(seed.wrapping_mul(0x2545_F491_4F6C_DD1D) ^ 0xD1B5_4A32_D192_ED03);
    let mut log: Vec<String> = Vec::new();
    let fail = |log: &Vec<String>, what: String| Failure {
        seed,
        wal,
        outer_begin,
        log: log.clone(),
        what,
    };
    let mut c = open_pair(&path, wal);
    c.execute_batch(
        "CREATE VIRTUAL TABLE t USING phenix(v float16[3] distance=l2, tag TEXT);
         CREATE TABLE r(id INTEGER PRIMARY KEY, a INTEGER, b INTEGER, c INTEGER, tag TEXT);",
    )
    .unwrap();
    let reader = open_pair(&path, wal);
    // A few committed rows to start from.
    for _ in 0..3 + rng.below(5) {
        let id = 1 + rng.below(20) as i64;
        let (v, tag) = (rng.vec3(), rng.tag());
        let sql = format!(
            "INSERT OR IGNORE INTO r VALUES ({id}, {}, {}, {}, '{tag}'); \
             INSERT INTO t(rowid, v, tag) SELECT {id}, '{}', '{tag}' WHERE changes() = 1;",
            v[0],
            v[1],
            v[2],
            vjson(&v)
        );
        c.execute_batch(&sql).unwrap();
        log.push(sql);
    }
    let mut savepoints: Vec<String> = Vec::new();
    let mut sp_counter = 0;
    let steps = 20 + rng.below(25);
    for _ in 0..steps {
        let in_txn = !c.is_autocommit();
        let rows = reference(&c);
        let existing: Vec<i64> = rows.keys().copied().collect();
        let pick = rng.below(100);
        let sql: String = if outer_begin && !in_txn && pick < 60 {
            savepoints.clear();
            "BEGIN".into()
        } else if pick < 22 {
            let id = 1 + rng.below(20) as i64;
            let (v, tag) = (rng.vec3(), rng.tag());
            if rows.contains_key(&id) {
                format!(
                    "UPDATE t SET v = '{}' WHERE rowid = {id}; UPDATE r SET a = {}, b = {}, c = {} WHERE id = {id};",
                    vjson(&v),
                    v[0],
                    v[1],
                    v[2]
                )
            } else {
                format!(
                    "INSERT INTO t(rowid, v, tag) VALUES ({id}, '{}', '{tag}'); INSERT INTO r VALUES ({id}, {}, {}, {}, '{tag}');",
                    vjson(&v),
                    v[0],
                    v[1],
                    v[2]
                )
            }
        } else if pick < 30 && !existing.is_empty() {
            let id = existing[rng.below(existing.len() as u64) as usize];
            let tag = rng.tag();
            format!(
                "UPDATE t SET tag = '{tag}' WHERE rowid = {id}; UPDATE r SET tag = '{tag}' WHERE id = {id};"
            )
        } else if pick < 35 && !existing.is_empty() {
            let id = existing[rng.below(existing.len() as u64) as usize];
            let to = 21 + rng.below(20) as i64;
            if rows.contains_key(&to) {
                continue;
            }
            format!(
                "UPDATE t SET rowid = {to} WHERE rowid = {id}; UPDATE r SET id = {to} WHERE id = {id};"
            )
        } else if pick < 45 && !existing.is_empty() {
            let id = existing[rng.below(existing.len() as u64) as usize];
            format!("DELETE FROM t WHERE rowid = {id}; DELETE FROM r WHERE id = {id};")
        } else if pick < 58 {
            "INSERT INTO t(t) VALUES ('optimize')".into()
        } else if pick < 70 {
            sp_counter += 1;
            let n = format!("s{sp_counter}");
            savepoints.push(n.clone());
            format!("SAVEPOINT {n}")
        } else if pick < 80 && !savepoints.is_empty() {
            let i = rng.below(savepoints.len() as u64) as usize;
            let n = savepoints[i].clone();
            savepoints.truncate(i + 1);
            format!("ROLLBACK TO {n}")
        } else if pick < 88 && !savepoints.is_empty() {
            let i = rng.below(savepoints.len() as u64) as usize;
            let n = savepoints[i].clone();
            savepoints.truncate(i);
            format!("RELEASE {n}")
        } else if pick < 95 && in_txn {
            savepoints.clear();
            "COMMIT".into()
        } else if in_txn {
            savepoints.clear();
            "ROLLBACK".into()
        } else {
            continue;
        };
        log.push(sql.clone());
        if let Err(e) = c.execute_batch(&sql) {
            return Err(fail(&log, format!("statement failed: {e}")));
        }
        if c.is_autocommit() {
            // RELEASE of the outermost savepoint of a transaction that SAVEPOINT started commits it.
            savepoints.clear();
        }
        if let Err(e) = compare(&c, &mut rng) {
            return Err(fail(&log, e));
        }
        if c.is_autocommit() {
            if let Err(e) = compare(&reader, &mut rng) {
                return Err(fail(&log, format!("reader connection: {e}")));
            }
        }
    }
    drop(reader);
    if !c.is_autocommit() {
        let end = if rng.below(2) == 0 {
            "COMMIT"
        } else {
            "ROLLBACK"
        };
        log.push(end.into());
        if let Err(e) = c.execute_batch(end) {
            return Err(fail(&log, format!("statement failed: {e}")));
        }
    }
    // The committed state, as a new connection sees it.
    let want = reference(&c);
    drop(c);
    c = open_pair(&path, wal);
    log.push("-- reopen".into());
    let check: String = match c.query_row("SELECT phenix_check('t')", [], |r| r.get(0)) {
        Ok(s) => s,
        Err(e) => return Err(fail(&log, format!("phenix_check failed: {e}"))),
    };
    if check != "ok" {
        return Err(fail(&log, format!("phenix_check after reopen: {check}")));
    }
    if reference(&c) != want {
        return Err(fail(&log, "the reference changed across reopen".into()));
    }
    if let Err(e) = compare(&c, &mut rng) {
        return Err(fail(&log, format!("after reopen: {e}")));
    }
    // A write after reopen must not disturb the committed rows.
    let sql = "INSERT INTO t(rowid, v, tag) VALUES (99, '[7,7,7]', 'z'); INSERT INTO r VALUES (99, 7, 7, 7, 'z');";
    log.push(sql.into());
    if let Err(e) = c.execute_batch(sql) {
        return Err(fail(&log, format!("statement failed: {e}")));
    }
    if let Err(e) = compare(&c, &mut rng) {
        return Err(fail(&log, format!("after reopen and insert: {e}")));
    }
    drop(c);
    let _ = std::fs::remove_file(&path);
    let _ = std::fs::remove_file(dir.join(format!("fuzz{seed}.db-wal")));
    let _ = std::fs::remove_file(dir.join(format!("fuzz{seed}.db-shm")));
    let _ = std::fs::remove_dir_all(dir.join(format!("fuzz{seed}.db-phenix")));
    Ok(())
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|s| s.parse().ok())
}

/// The random-transaction fuzzer (see the module docs).
#[test]
fn random_transactions_with_compaction_match_an_ordinary_table() {
    let dir = TempDir::new("txn-fuzz");
    let seqs = env_u64("PHENIX_TXN_FUZZ_SEQS").unwrap_or(200);
    let base = env_u64("PHENIX_TXN_FUZZ_SEED").unwrap_or(0);
    let seeds: Vec<u64> = match env_u64("PHENIX_TXN_FUZZ_ONLY") {
        Some(s) => vec![s],
        None => (base..base + seqs).collect(),
    };
    let mut failures: Vec<Failure> = Vec::new();
    for &seed in &seeds {
        if let Err(f) = run_sequence(&dir.0, seed) {
            if failures.len() < 40 {
                eprintln!(
                    "txn_fuzz: seed {seed} (wal {}, outer BEGIN {}) after {} statements: {}",
                    f.wal,
                    f.outer_begin,
                    f.log.len(),
                    f.what.lines().next().unwrap_or_default()
                );
            }
            failures.push(f);
        }
    }
    eprintln!(
        "txn_fuzz: {} sequences, {} failed",
        seeds.len(),
        failures.len()
    );
    if let Some(f) = failures.first() {
        let first: Vec<u64> = failures.iter().map(|f| f.seed).take(20).collect();
        panic!(
            "{} of {} random transaction sequences diverged from the reference (first seeds {first:?}).\n\
             First: seed {} (wal {}, outer BEGIN {}): {}\nstatements:\n  {}",
            failures.len(),
            seeds.len(),
            f.seed,
            f.wal,
            f.outer_begin,
            f.what,
            f.log.join("\n  ")
        );
    }
}
