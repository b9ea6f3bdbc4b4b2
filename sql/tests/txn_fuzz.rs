//! Random transactions against a phenix table and an ordinary table in the same database, receiving the
//! same writes in the same transactions: INSERT / UPDATE (vector, tag, rowid) / DELETE / `optimize` /
//! BEGIN / COMMIT / ROLLBACK / SAVEPOINT / ROLLBACK TO / RELEASE, in rollback-journal and WAL mode, with
//! and without an outer BEGIN (a SAVEPOINT outside a transaction starts one). After every statement the
//! phenix table must hold exactly the reference's rows (vector bytes and tag), KNN must equal brute force
//! (exact integer squared distances) over the reference, and after every sequence a reopened connection
//! (where the database outlives its connection) must see the same and `phenix_check` must say `ok`.
//!
//! Every SQLite database kind ([`Kind`]): a file, `:memory:`, the temp schema of a file connection, a
//! deserialized image (memdb), a shared-cache in-memory database written by two connections taking
//! turns transaction by transaction (each checked when the other committed), an ATTACHed file, and two
//! connections on one file, a writer and a reader that checks after every statement of the writer
//! that it sees exactly the committed rows (the reference as its own snapshot has it).
//!
//! CI runs `PHENIX_TXN_FUZZ_SEQS` sequences (default 140, 20 per kind; about 15 s); the long run in
//! docs/reliability.md sets it to thousands. `PHENIX_TXN_FUZZ_SEED` shifts the seeds; the seed picks
//! the kind (`seed % 7`), the journal mode and the outer BEGIN; a failing sequence prints its seed,
//! kind, mode and statements, so it can be replayed with `PHENIX_TXN_FUZZ_ONLY=<seed>`.

mod common;
use common::*;
use rusqlite::Connection;
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
    set_mode(&c, "main", wal);
    c
}

fn set_mode(c: &Connection, schema: &str, wal: bool) {
    let mode = if wal { "WAL" } else { "DELETE" };
    c.execute_batch(&format!(
        "PRAGMA {schema}.journal_mode={mode}; PRAGMA {schema}.synchronous=OFF;"
    ))
    .unwrap();
}

/// The database kinds the fuzzer runs on.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    /// A database file, one connection.
    File,
    /// `:memory:`.
    Memory,
    /// The temp schema of a connection on a file.
    Temp,
    /// A database image loaded with `sqlite3_deserialize` (memdb).
    Deserialized,
    /// A shared-cache in-memory database, two connections writing in turns.
    SharedCache,
    /// A database file ATTACHed to a connection on another file.
    Attached,
    /// One file, two connections: a writer and a reader checking between its statements.
    TwoConnections,
}

const KINDS: [Kind; 7] = [
    Kind::File,
    Kind::Memory,
    Kind::Temp,
    Kind::Deserialized,
    Kind::SharedCache,
    Kind::Attached,
    Kind::TwoConnections,
];

impl Kind {
    /// Whether the database outlives its connections (so the sequence ends with a reopen).
    fn durable(self) -> bool {
        matches!(self, Kind::File | Kind::Attached | Kind::TwoConnections)
    }
    /// The schema prefix of the tables.
    fn prefix(self) -> &'static str {
        match self {
            Kind::Temp => "temp.",
            Kind::Attached => "aux.",
            _ => "",
        }
    }
}

/// A connection on `:memory:` whose main database is replaced by a deserialized image (of a database
/// holding one ordinary table), as `sqlite3_deserialize` hosts do.
fn deserialized() -> Connection {
    let src = Connection::open_in_memory().unwrap();
    src.execute_batch("CREATE TABLE seed(x); INSERT INTO seed VALUES (1);")
        .unwrap();
    let mut size: rusqlite::ffi::sqlite3_int64 = 0;
    // SAFETY: a live connection and a NUL-terminated schema name; flags 0 returns a copy from
    // sqlite3_malloc, which the deserialize below takes over (FREEONCLOSE).
    let image =
        unsafe { rusqlite::ffi::sqlite3_serialize(src.handle(), c"main".as_ptr(), &mut size, 0) };
    assert!(!image.is_null());
    let c = mem();
    // SAFETY: `image` holds `size` bytes from sqlite3_malloc; SQLite owns and frees it from here on.
    let rc = unsafe {
        rusqlite::ffi::sqlite3_deserialize(
            c.handle(),
            c"main".as_ptr(),
            image,
            size,
            size,
            rusqlite::ffi::SQLITE_DESERIALIZE_FREEONCLOSE
                | rusqlite::ffi::SQLITE_DESERIALIZE_RESIZEABLE,
        )
    };
    assert_eq!(rc, rusqlite::ffi::SQLITE_OK);
    let n: i64 = c
        .query_row("SELECT count(*) FROM seed", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 1);
    c
}

/// The connections of one sequence: `conns[0]` writes (in turns with `conns[1]` for a shared
/// cache); for two connections on a file `conns[1]` only reads.
struct Db {
    conns: Vec<Connection>,
}

impl Db {
    fn open(kind: Kind, dir: &Path, seed: u64, wal: bool) -> Db {
        let path = dir.join(format!("fuzz{seed}.db"));
        let aux = dir.join(format!("fuzz{seed}-aux.db"));
        for p in [&path, &aux] {
            let _ = std::fs::remove_file(p);
            let mut d = p.as_os_str().to_owned();
            d.push("-phenix");
            let _ = std::fs::remove_dir_all(std::path::PathBuf::from(d));
        }
        let conns = match kind {
            Kind::File | Kind::Temp => vec![open_pair(&path, wal)],
            Kind::Memory => vec![mem()],
            Kind::Deserialized => vec![deserialized()],
            Kind::SharedCache => {
                let uri = format!(
                    "file:phenix-fuzz-{seed}-{}?mode=memory&cache=shared",
                    std::process::id()
                );
                let o = |u: &str| {
                    let c = Connection::open_with_flags(
                        u,
                        rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE
                            | rusqlite::OpenFlags::SQLITE_OPEN_CREATE
                            | rusqlite::OpenFlags::SQLITE_OPEN_URI,
                    )
                    .unwrap();
                    phenix_sql::register(&c).unwrap();
                    c
                };
                vec![o(&uri), o(&uri)]
            }
            Kind::Attached => {
                let c = open_pair(&path, wal);
                c.execute("ATTACH ?1 AS aux", [aux.to_str().unwrap()])
                    .unwrap();
                set_mode(&c, "aux", wal);
                vec![c]
            }
            Kind::TwoConnections => vec![open_pair(&path, wal), open_pair(&path, wal)],
        };
        Db { conns }
    }

    /// A new connection on the durable database (after the others closed).
    fn reopen(kind: Kind, dir: &Path, seed: u64, wal: bool) -> Connection {
        let path = dir.join(format!("fuzz{seed}.db"));
        let c = open_pair(&path, wal);
        if kind == Kind::Attached {
            let aux = dir.join(format!("fuzz{seed}-aux.db"));
            c.execute("ATTACH ?1 AS aux", [aux.to_str().unwrap()])
                .unwrap();
        }
        c
    }

    fn remove(dir: &Path, seed: u64) {
        for name in [format!("fuzz{seed}.db"), format!("fuzz{seed}-aux.db")] {
            for suffix in ["", "-wal", "-shm", "-journal"] {
                let _ = std::fs::remove_file(dir.join(format!("{name}{suffix}")));
            }
            let _ = std::fs::remove_dir_all(dir.join(format!("{name}-phenix")));
        }
    }
}

/// The reference table's rows.
fn reference(c: &Connection, p: &str) -> Rows {
    c.prepare(&format!("SELECT id, a, b, c, tag FROM {p}r"))
        .unwrap()
        .query_map([], |r| {
            Ok((r.get(0)?, ([r.get(1)?, r.get(2)?, r.get(3)?], r.get(4)?)))
        })
        .unwrap()
        .map(|r| r.unwrap())
        .collect()
}

/// The phenix table's rows (float16 vectors decoded; every value is a small integer, exact in f16).
fn phenix_rows(c: &Connection, p: &str) -> Result<Rows, String> {
    let mut st = c
        .prepare(&format!("SELECT rowid, v, tag FROM {p}t"))
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
fn compare(c: &Connection, p: &str, rng: &mut Rng) -> Result<(), String> {
    let want = reference(c, p);
    let got = phenix_rows(c, p)?;
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
            format!("SELECT rowid, distance FROM {p}t WHERE v MATCH ?1 AND k = ?2 AND tag = ?3")
        } else {
            format!(
                "SELECT rowid, distance FROM {p}t WHERE v MATCH ?1 AND k = ?2 AND ?3 IS NOT NULL"
            )
        };
        check_int_knn(c, &sql, &want, &q, k, &tag, filtered)?;
    }
    Ok(())
}

#[derive(Debug)]
struct Failure {
    seed: u64,
    kind: Kind,
    wal: bool,
    outer_begin: bool,
    log: Vec<String>,
    what: String,
}

/// Runs one sequence; `Err` describes the first divergence.
fn run_sequence(dir: &Path, seed: u64) -> Result<(), Failure> {
    let kind = KINDS[(seed % KINDS.len() as u64) as usize];
    let wal = (seed / KINDS.len() as u64) % 2 == 1;
    let outer_begin = (seed / (2 * KINDS.len() as u64)) % 2 == 1;
    let p = kind.prefix();
    let mut rng = Rng(seed.wrapping_mul(0x2545_F491_4F6C_DD1D) ^ 0xD1B5_4A32_D192_ED03);
    let mut log: Vec<String> = Vec::new();
    let fail = |log: &Vec<String>, what: String| Failure {
        seed,
        kind,
        wal,
        outer_begin,
        log: log.clone(),
        what,
    };
    let db = Db::open(kind, dir, seed, wal);
    // The connection the statements go to (a shared cache switches between transactions).
    let mut cur = 0usize;
    db.conns[0]
        .execute_batch(&format!(
            "CREATE VIRTUAL TABLE {p}t USING phenix(v float16[3] distance=l2, tag TEXT);
             CREATE TABLE {p}r(id INTEGER PRIMARY KEY, a INTEGER, b INTEGER, c INTEGER, tag TEXT);"
        ))
        .unwrap();
    // A few committed rows to start from.
    for _ in 0..3 + rng.below(5) {
        let id = 1 + rng.below(20) as i64;
        let (v, tag) = (rng.vec3(), rng.tag());
        let sql = format!(
            "INSERT OR IGNORE INTO {p}r VALUES ({id}, {}, {}, {}, '{tag}'); \
             INSERT INTO {p}t(rowid, v, tag) SELECT {id}, '{}', '{tag}' WHERE changes() = 1;",
            v[0],
            v[1],
            v[2],
            vjson(&v)
        );
        db.conns[0].execute_batch(&sql).unwrap();
        log.push(sql);
    }
    let mut savepoints: Vec<String> = Vec::new();
    let mut sp_counter = 0;
    let steps = 20 + rng.below(25);
    for _ in 0..steps {
        if kind == Kind::SharedCache && db.conns[cur].is_autocommit() && rng.below(3) == 0 {
            cur = 1 - cur;
            log.push(format!("-- connection {cur}"));
        }
        let c = &db.conns[cur];
        let in_txn = !c.is_autocommit();
        let rows = reference(c, p);
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
                    "UPDATE {p}t SET v = '{}' WHERE rowid = {id}; UPDATE {p}r SET a = {}, b = {}, c = {} WHERE id = {id};",
                    vjson(&v),
                    v[0],
                    v[1],
                    v[2]
                )
            } else {
                format!(
                    "INSERT INTO {p}t(rowid, v, tag) VALUES ({id}, '{}', '{tag}'); INSERT INTO {p}r VALUES ({id}, {}, {}, {}, '{tag}');",
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
                "UPDATE {p}t SET tag = '{tag}' WHERE rowid = {id}; UPDATE {p}r SET tag = '{tag}' WHERE id = {id};"
            )
        } else if pick < 35 && !existing.is_empty() {
            let id = existing[rng.below(existing.len() as u64) as usize];
            let to = 21 + rng.below(20) as i64;
            if rows.contains_key(&to) {
                continue;
            }
            format!(
                "UPDATE {p}t SET rowid = {to} WHERE rowid = {id}; UPDATE {p}r SET id = {to} WHERE id = {id};"
            )
        } else if pick < 45 && !existing.is_empty() {
            let id = existing[rng.below(existing.len() as u64) as usize];
            format!("DELETE FROM {p}t WHERE rowid = {id}; DELETE FROM {p}r WHERE id = {id};")
        } else if pick < 58 {
            // The command column is named after the table, unqualified.
            format!("INSERT INTO {p}t(t) VALUES ('optimize')")
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
        if let Err(e) = compare(c, p, &mut rng) {
            return Err(fail(&log, e));
        }
        // The other connection: the reader of two connections on a file sees the committed rows at
        // every step (its own snapshot of the reference); the other writer of a shared cache, once
        // this one committed (before that the shared cache's table locks keep it out).
        let other = match kind {
            Kind::TwoConnections => Some(1),
            Kind::SharedCache if c.is_autocommit() => Some(1 - cur),
            _ => None,
        };
        if let Some(o) = other {
            if let Err(e) = compare(&db.conns[o], p, &mut rng) {
                return Err(fail(&log, format!("connection {o}: {e}")));
            }
        }
    }
    let c = &db.conns[cur];
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
    // The committed state, as a new connection sees it (or, for a database that ends with its
    // connections, every connection).
    let want = reference(c, p);
    let check_all = |c: &Connection, log: &Vec<String>| -> Result<(), Failure> {
        let check: String =
            match c.query_row(&format!("SELECT phenix_check('{p}t')"), [], |r| r.get(0)) {
                Ok(s) => s,
                Err(e) => return Err(fail(log, format!("phenix_check failed: {e}"))),
            };
        if check != "ok" {
            return Err(fail(log, format!("phenix_check: {check}")));
        }
        if reference(c, p) != want {
            return Err(fail(
                log,
                "the reference differs between connections".into(),
            ));
        }
        Ok(())
    };
    let c = if kind.durable() {
        drop(db);
        log.push("-- reopen".into());
        Db::reopen(kind, dir, seed, wal)
    } else {
        let mut db = db;
        for c in &db.conns {
            check_all(c, &log)?;
        }
        db.conns.swap_remove(cur)
    };
    check_all(&c, &log)?;
    if let Err(e) = compare(&c, p, &mut rng) {
        return Err(fail(&log, format!("after reopen: {e}")));
    }
    // A write after reopen must not disturb the committed rows.
    let sql = format!("INSERT INTO {p}t(rowid, v, tag) VALUES (99, '[7,7,7]', 'z'); INSERT INTO {p}r VALUES (99, 7, 7, 7, 'z');");
    log.push(sql.clone());
    if let Err(e) = c.execute_batch(&sql) {
        return Err(fail(&log, format!("statement failed: {e}")));
    }
    if let Err(e) = compare(&c, p, &mut rng) {
        return Err(fail(&log, format!("after reopen and insert: {e}")));
    }
    drop(c);
    Db::remove(dir, seed);
    Ok(())
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|s| s.parse().ok())
}

/// The random-transaction fuzzer (see the module docs).
#[test]
fn random_transactions_with_compaction_match_an_ordinary_table() {
    let dir = TempDir::new("txn-fuzz");
    let seqs = env_u64("PHENIX_TXN_FUZZ_SEQS").unwrap_or(140);
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
                    "txn_fuzz: seed {seed} ({:?}, wal {}, outer BEGIN {}) after {} statements: {}",
                    f.kind,
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
             First: seed {} ({:?}, wal {}, outer BEGIN {}): {}\nstatements:\n  {}",
            failures.len(),
            seeds.len(),
            f.seed,
            f.kind,
            f.wal,
            f.outer_begin,
            f.what,
            f.log.join("\n  ")
        );
    }
}
