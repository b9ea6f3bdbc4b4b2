//! phenix vs sqlite-vec, side by side, through SQL. Prints a ratio table.
//!
//! ```text
//! cargo run --release -p phenix-benches --bin compare -- [options]
//!   --rows N            rows in the table (default 100000)
//!   --dim D             dimensions (default 256)
//!   --data KIND         random | clustered (default random)
//!   --knn-queries M     distinct queries timed one at a time per KNN measure (default 20)
//!   --batch-queries Q   queries of the batch measure: sqlite-vec one by one vs phenix_retrieve_all
//!                       (default 1000; 0 skips it)
//!   --parts LIST        comma-separated subset of insert,knn,filter,batch (default all)
//!   --engines LIST      phenix,sqlite-vec (default both)
//!   --dir PATH          working directory (default $TMPDIR/phenix-compare); the source database
//!                       src-<data>-<N>x<D>.db is generated once and reused
//!   --reuse             keep an engine's table from an earlier run if it exists (skips insert);
//!                       implies --keep
//!   --keep              keep the databases afterwards (default: the run removes the source and
//!                       engine databases and the id files it used, and --dir if that is then empty)
//!   -h, --help          print this and exit
//! ```
//!
//! Each engine runs in its own processes (the runner re-executes itself): one loads the table
//! (`INSERT INTO t SELECT … FROM` the attached source database, one transaction), a fresh one runs the
//! queries, so resident memory after the first query is that engine's alone. Both get identical
//! queries as f32 blobs; phenix stores `float16[D]`, sqlite-vec `float[D]`, both cosine, with an integer
//! metadata column `cat` (uniform 0..99) for the filtered queries (`cat < 10`: 10 %, `cat = 0`: 1 %).
//! The result ids of both engines are compared (mean overlap of the top-k sets).

use phenix_benches::compare::{
    agreement, db_footprint, knn_sql, median, memory, open, remove_db, write_source, Data, Engine,
    FILTERS,
};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

#[derive(Clone, Debug)]
struct Opts {
    rows: u64,
    dim: usize,
    data: Data,
    knn_queries: usize,
    batch_queries: usize,
    parts: Vec<String>,
    engines: Vec<Engine>,
    dir: PathBuf,
    reuse: bool,
    keep: bool,
    /// Internal: `(phase, engine)` of a child process.
    child: Option<(String, Engine)>,
}

const PARTS: [&str; 4] = ["insert", "knn", "filter", "batch"];

/// `--help`: the option list of this file's header.
const HELP: &str = "\
phenix vs sqlite-vec, side by side, through SQL; prints a ratio table (docs/benchmarks.md).

usage: cargo run --release -p phenix-benches --bin compare -- [options]
  --rows N            rows in the table (default 100000)
  --dim D             dimensions (default 256)
  --data KIND         random | clustered (default random)
  --knn-queries M     distinct queries timed one at a time per KNN measure (default 20)
  --batch-queries Q   queries of the batch measure: sqlite-vec one by one vs phenix_retrieve_all
                      (default 1000; 0 skips it)
  --parts LIST        comma-separated subset of insert,knn,filter,batch (default all)
  --engines LIST      phenix,sqlite-vec (default both)
  --dir PATH          working directory (default $TMPDIR/phenix-compare)
  --reuse             keep an engine's table from an earlier run if it exists (skips insert);
                      implies --keep
  --keep              keep the databases afterwards (default: remove the source and engine
                      databases and id files of this run, and --dir if it is then empty)
  -h, --help          print this and exit
";

fn usage(msg: &str) -> ! {
    eprintln!("compare: {msg}\n(compare --help lists the options)");
    std::process::exit(2)
}

fn parse_args() -> Opts {
    let mut o = Opts {
        rows: 100_000,
        dim: 256,
        data: Data::Random,
        knn_queries: 20,
        batch_queries: 1000,
        parts: PARTS.iter().map(|s| s.to_string()).collect(),
        engines: vec![Engine::Phenix, Engine::SqliteVec],
        dir: std::env::temp_dir().join("phenix-compare"),
        reuse: false,
        keep: false,
        child: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut val = || {
            it.next()
                .unwrap_or_else(|| usage(&format!("{a} needs a value")))
        };
        let num = |s: String| {
            s.replace('_', "")
                .parse::<u64>()
                .unwrap_or_else(|_| usage(&format!("{a}: not a number: {s}")))
        };
        match a.as_str() {
            "--rows" => o.rows = num(val()),
            "--dim" => o.dim = num(val()) as usize,
            "--data" => {
                let v = val();
                o.data = Data::parse(&v).unwrap_or_else(|| usage(&format!("unknown data {v}")))
            }
            "--knn-queries" => o.knn_queries = num(val()).max(1) as usize,
            "--batch-queries" => o.batch_queries = num(val()) as usize,
            "--parts" => {
                o.parts = val().split(',').map(str::to_string).collect();
                if let Some(p) = o.parts.iter().find(|p| !PARTS.contains(&p.as_str())) {
                    usage(&format!("unknown part {p}"));
                }
            }
            "--engines" => {
                o.engines = val()
                    .split(',')
                    .map(|e| {
                        Engine::parse(e).unwrap_or_else(|| usage(&format!("unknown engine {e}")))
                    })
                    .collect()
            }
            "--dir" => o.dir = PathBuf::from(val()),
            "--reuse" => {
                o.reuse = true;
                o.keep = true;
            }
            "--keep" => o.keep = true,
            "-h" | "--help" => {
                print!("{HELP}");
                std::process::exit(0)
            }
            "--child" => {
                let v = val();
                let (phase, e) = v.split_once(':').unwrap_or_else(|| usage("bad --child"));
                o.child = Some((
                    phase.to_string(),
                    Engine::parse(e).unwrap_or_else(|| usage("bad --child engine")),
                ));
            }
            other => usage(&format!("unknown argument {other}")),
        }
    }
    o
}

impl Opts {
    fn tag(&self) -> String {
        format!("{}-{}x{}", self.data.name(), self.rows, self.dim)
    }
    fn source(&self) -> PathBuf {
        self.dir.join(format!("src-{}.db", self.tag()))
    }
    fn db(&self, e: Engine) -> PathBuf {
        self.dir.join(format!("{}-{}.db", e.name(), self.tag()))
    }
    fn ids(&self, e: Engine, what: &str) -> PathBuf {
        self.dir
            .join(format!("ids-{}-{}-{what}.txt", e.name(), self.tag()))
    }
    fn has(&self, part: &str) -> bool {
        self.parts.iter().any(|p| p == part)
    }
    fn queries_needed(&self) -> usize {
        self.knn_queries.max(self.batch_queries)
    }
    fn child_args(&self) -> Vec<String> {
        vec![
            "--rows".into(),
            self.rows.to_string(),
            "--dim".into(),
            self.dim.to_string(),
            "--data".into(),
            self.data.name().into(),
            "--knn-queries".into(),
            self.knn_queries.to_string(),
            "--batch-queries".into(),
            self.batch_queries.to_string(),
            "--parts".into(),
            self.parts.join(","),
            "--dir".into(),
            self.dir.display().to_string(),
        ]
    }
}

/// One `RESULT key value` line (what the parent reads from a child).
fn emit(key: &str, value: impl std::fmt::Display) {
    println!("RESULT {key} {value}");
}

fn write_ids(path: &Path, ids: &[Vec<i64>]) {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).expect("ids file"));
    for q in ids {
        let line: Vec<String> = q.iter().map(i64::to_string).collect();
        writeln!(f, "{}", line.join(" ")).expect("write ids");
    }
}

fn read_ids(path: &Path) -> Option<Vec<Vec<i64>>> {
    let s = std::fs::read_to_string(path).ok()?;
    Some(
        s.lines()
            .map(|l| {
                l.split_whitespace()
                    .filter_map(|x| x.parse().ok())
                    .collect()
            })
            .collect(),
    )
}

fn child_load(o: &Opts, e: Engine) {
    let db = o.db(e);
    remove_db(&db);
    let c = open(&db).expect("open");
    c.execute_batch(&e.create_sql(o.dim)).expect("create");
    c.execute("ATTACH ?1 AS s", [o.source().display().to_string()])
        .expect("attach");
    let t = Instant::now();
    c.execute_batch(
        "BEGIN; INSERT INTO t(rowid, embedding, cat) SELECT id, v, cat FROM s.src; COMMIT;",
    )
    .expect("insert select");
    let secs = t.elapsed().as_secs_f64();
    c.execute_batch("DETACH s;").expect("detach");
    drop(c);
    emit("insert_s", secs);
}

/// Runs one KNN statement per query; returns per-query seconds and ids.
fn run_knn(
    c: &rusqlite::Connection,
    sql: &str,
    queries: &[Vec<u8>],
    k: usize,
) -> (Vec<f64>, Vec<Vec<i64>>) {
    let mut st = c.prepare(sql).expect("prepare knn");
    let mut times = Vec::with_capacity(queries.len());
    let mut ids = Vec::with_capacity(queries.len());
    for q in queries {
        let t = Instant::now();
        let r: Vec<i64> = st
            .query_map(rusqlite::params![q, k as i64], |r| r.get(0))
            .expect("knn")
            .collect::<rusqlite::Result<_>>()
            .expect("knn row");
        times.push(t.elapsed().as_secs_f64());
        ids.push(r);
    }
    (times, ids)
}

fn child_query(o: &Opts, e: Engine) {
    // Queries first (from the source database, on a connection closed before the engine's is opened).
    let queries: Vec<Vec<u8>> = {
        let s = rusqlite::Connection::open(o.source()).expect("open source");
        let mut st = s
            .prepare("SELECT v FROM qs ORDER BY id LIMIT ?1")
            .expect("qs");
        st.query_map([o.queries_needed() as i64], |r| r.get(0))
            .expect("qs")
            .collect::<rusqlite::Result<_>>()
            .expect("qs rows")
    };
    assert!(
        queries.len() >= o.queries_needed(),
        "source has too few queries"
    );
    let c = open(&o.db(e)).expect("open");
    let (rss0, _) = memory();
    emit("rss_before_mb", rss0.unwrap_or(0) as f64 / 1e6);
    // The first query of the process (phenix maps the file and loads the row ids here).
    let (t, _) = run_knn(&c, &knn_sql(""), &queries[..1], 10);
    emit("first_query_ms", t[0] * 1e3);
    let (rss, hwm) = memory();
    emit("rss_first_mb", rss.unwrap_or(0) as f64 / 1e6);
    emit("hwm_first_mb", hwm.unwrap_or(0) as f64 / 1e6);
    let m = &queries[..o.knn_queries];
    if o.has("knn") {
        for k in [10, 100] {
            let (mut t, ids) = run_knn(&c, &knn_sql(""), m, k);
            emit(&format!("knn{k}_ms"), median(&mut t) * 1e3);
            emit(
                &format!("knn{k}_rows"),
                ids.iter().map(Vec::len).min().unwrap_or(0),
            );
            write_ids(&o.ids(e, &format!("knn{k}")), &ids);
        }
    }
    if o.has("filter") {
        for (label, f, _) in FILTERS {
            let (mut t, ids) = run_knn(&c, &knn_sql(f), m, 10);
            let key = format!("filter{}", label.trim_end_matches('%'));
            // phenix's first filtered queries read the metadata column in SQLite (then it is cached).
            emit(&format!("{key}_first_ms"), t[0] * 1e3);
            emit(&format!("{key}_ms"), median(&mut t) * 1e3);
            emit(
                &format!("{key}_rows_min"),
                ids.iter().map(Vec::len).min().unwrap_or(0),
            );
            emit(
                &format!("{key}_rows_max"),
                ids.iter().map(Vec::len).max().unwrap_or(0),
            );
            write_ids(&o.ids(e, &key), &ids);
        }
    }
    if o.has("batch") && o.batch_queries > 0 {
        let qs = &queries[..o.batch_queries];
        let t = Instant::now();
        let ids: Vec<Vec<i64>> = match e {
            Engine::SqliteVec => run_knn(&c, &knn_sql(""), qs, 10).1,
            Engine::Phenix => {
                // The queries go into an in-memory float32 phenix table; that load is timed too.
                c.execute_batch(&format!(
                    "CREATE VIRTUAL TABLE temp.qt USING phenix(embedding float32[{}] distance=cosine)",
                    o.dim
                ))
                .expect("query table");
                {
                    let mut ins = c
                        .prepare("INSERT INTO temp.qt(rowid, embedding) VALUES (?1, ?2)")
                        .expect("prep");
                    for (i, q) in qs.iter().enumerate() {
                        ins.execute(rusqlite::params![i as i64 + 1, q])
                            .expect("insert query");
                    }
                }
                let mut out = vec![Vec::new(); qs.len()];
                let mut st = c
                    .prepare(
                        "SELECT query_rowid, rowid FROM phenix_retrieve_all('t', 'temp.qt', 10)",
                    )
                    .expect("retrieve_all");
                let mut rows = st.query([]).expect("retrieve_all");
                while let Some(r) = rows.next().expect("row") {
                    let q: i64 = r.get(0).expect("q");
                    out[q as usize - 1].push(r.get(1).expect("rowid"));
                }
                out
            }
        };
        let secs = t.elapsed().as_secs_f64();
        emit("batch_s", secs);
        emit("batch_queries", qs.len());
        write_ids(&o.ids(e, "batch"), &ids);
    }
    let (rss, hwm) = memory();
    emit("rss_end_mb", rss.unwrap_or(0) as f64 / 1e6);
    emit("hwm_end_mb", hwm.unwrap_or(0) as f64 / 1e6);
}

/// Runs a child phase; returns its RESULT lines.
fn spawn(o: &Opts, phase: &str, e: Engine) -> BTreeMap<String, f64> {
    let exe = std::env::current_exe().expect("current exe");
    let mut args = o.child_args();
    args.push("--child".into());
    args.push(format!("{phase}:{}", e.name()));
    let out = Command::new(exe)
        .args(&args)
        .stderr(std::process::Stdio::inherit())
        .output()
        .expect("spawn child");
    if !out.status.success() {
        eprintln!("compare: {phase} for {} failed: {}", e.name(), out.status);
        std::process::exit(1);
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut p = l.strip_prefix("RESULT ")?.split_whitespace();
            Some((p.next()?.to_string(), p.next()?.parse().ok()?))
        })
        .collect()
}

fn main() {
    let o = parse_args();
    if let Some((phase, e)) = &o.child {
        match phase.as_str() {
            "load" => child_load(&o, *e),
            "query" => child_query(&o, *e),
            p => usage(&format!("unknown phase {p}")),
        }
        return;
    }
    std::fs::create_dir_all(&o.dir).expect("work dir");
    let src = o.source();
    let need_q = o.queries_needed() as i64;
    let have_q: i64 = rusqlite::Connection::open(&src)
        .and_then(|c| c.query_row("SELECT count(*) FROM qs", [], |r| r.get(0)))
        .unwrap_or(-1);
    if have_q < need_q {
        eprintln!("compare: writing the source database {} …", src.display());
        let t = Instant::now();
        write_source(
            &src,
            o.data,
            o.rows,
            o.dim,
            o.queries_needed().max(1000) as u64,
        )
        .expect("source");
        eprintln!(
            "compare: source written in {:.1} s",
            t.elapsed().as_secs_f64()
        );
    }
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    eprintln!(
        "compare: {} — load average before: {}",
        o.tag(),
        load.trim()
    );
    let mut res: Vec<(Engine, BTreeMap<String, f64>)> = Vec::new();
    for &e in &o.engines {
        let mut r = BTreeMap::new();
        let db = o.db(e);
        if !(o.reuse && db.exists()) {
            eprintln!("compare: {} load …", e.name());
            r.extend(spawn(&o, "load", e));
        }
        r.insert("size_mb".into(), db_footprint(&db) as f64 / 1e6);
        eprintln!("compare: {} queries …", e.name());
        r.extend(spawn(&o, "query", e));
        res.push((e, r));
    }
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    eprintln!("compare: load average after: {}", load.trim());
    report(&o, &res);
    if !o.keep {
        clean_up(&o);
    }
}

/// Removes what this run wrote to `--dir` (the source and engine databases with their journals and
/// sidecars, the id files), and the directory itself if nothing else is in it.
fn clean_up(o: &Opts) {
    let mut freed = 0u64;
    let mut dbs = vec![o.source()];
    dbs.extend(o.engines.iter().map(|&e| o.db(e)));
    for db in &dbs {
        freed += db_footprint(db);
        remove_db(db);
    }
    // The id files of this run: ids-<engine>-<tag>-<measure>.txt (see Opts::ids).
    let prefixes: Vec<String> = o
        .engines
        .iter()
        .map(|e| format!("ids-{}-{}-", e.name(), o.tag()))
        .collect();
    for entry in std::fs::read_dir(&o.dir).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.ends_with(".txt") && prefixes.iter().any(|p| name.starts_with(p)) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    let _ = std::fs::remove_dir(&o.dir); // only succeeds if empty
    eprintln!(
        "compare: removed {:.0} MB of databases from {} (--keep keeps them)",
        freed as f64 / 1e6,
        o.dir.display()
    );
}

fn report(o: &Opts, res: &[(Engine, BTreeMap<String, f64>)]) {
    let get = |e: Engine, k: &str| {
        res.iter()
            .find(|(x, _)| *x == e)
            .and_then(|(_, m)| m.get(k).copied())
    };
    let both = res.len() == 2;
    println!(
        "\n{} rows × {} dims, {} data, cosine; {} timed queries per KNN row (median), batch of {}",
        o.rows,
        o.dim,
        o.data.name(),
        o.knn_queries,
        o.batch_queries
    );
    println!("\n| measure | phenix | sqlite-vec | sqlite-vec / phenix |\n|---|---|---|---|");
    let n = o.rows as f64;
    // (label, key, unit formatter, ratio is "sqlite-vec / phenix" of the value itself)
    let row = |label: &str, key: &str, unit: &str, scale: f64, digits: usize| {
        let p = get(Engine::Phenix, key).map(|v| v * scale);
        let s = get(Engine::SqliteVec, key).map(|v| v * scale);
        let f = |v: Option<f64>| v.map_or("–".to_string(), |v| format!("{v:.digits$} {unit}"));
        let ratio = match (p, s) {
            (Some(p), Some(s)) if both && p > 0.0 => format!("{:.2}", s / p),
            _ => "–".into(),
        };
        println!("| {label} | {} | {} | {ratio} |", f(p), f(s));
    };
    if o.has("insert") {
        let rate = |e| get(e, "insert_s").map(|s| n / s);
        let (p, s) = (rate(Engine::Phenix), rate(Engine::SqliteVec));
        let f = |v: Option<f64>| v.map_or("–".into(), |v| format!("{:.0}k rows/s", v / 1e3));
        let ratio = match (p, s) {
            (Some(p), Some(s)) => format!("{:.2} (phenix {:.1}× faster)", s / p, p / s),
            _ => "–".into(),
        };
        println!(
            "| bulk INSERT … SELECT (one transaction) | {} | {} | {ratio} |",
            f(p),
            f(s)
        );
        row("database + sidecar on disk", "size_mb", "MB", 1.0, 1);
    }
    row(
        "first query in a new process",
        "first_query_ms",
        "ms",
        1.0,
        2,
    );
    row("VmRSS after the first query", "rss_first_mb", "MB", 1.0, 1);
    row("VmHWM after the first query", "hwm_first_mb", "MB", 1.0, 1);
    if o.has("knn") {
        row("KNN k = 10", "knn10_ms", "ms", 1.0, 3);
        row("KNN k = 100", "knn100_ms", "ms", 1.0, 3);
    }
    if o.has("filter") {
        for (label, _, _) in FILTERS {
            let key = label.trim_end_matches('%');
            row(
                &format!("KNN k = 10, filter {label} (`cat`)"),
                &format!("filter{key}_ms"),
                "ms",
                1.0,
                3,
            );
            row(
                "  the first such query (phenix: no cache yet)",
                &format!("filter{key}_first_ms"),
                "ms",
                1.0,
                3,
            );
            row(
                &format!("  rows returned, fewest of {} queries", o.knn_queries),
                &format!("filter{key}_rows_min"),
                "",
                1.0,
                0,
            );
        }
    }
    if o.has("batch") && o.batch_queries > 0 {
        row(
            &format!(
                "{} queries, k = 10 (sqlite-vec one by one, phenix_retrieve_all)",
                o.batch_queries
            ),
            "batch_s",
            "s",
            1.0,
            3,
        );
    }
    row("VmHWM at the end", "hwm_end_mb", "MB", 1.0, 1);
    if both {
        println!("\nagreement of phenix (float16 rows) with sqlite-vec (float32 rows), same ids:");
        // Only what this run measured (ids files of earlier runs stay in --dir).
        let mut whats: Vec<String> = Vec::new();
        if o.has("knn") {
            whats.extend(["knn10".to_string(), "knn100".to_string()]);
        }
        if o.has("filter") {
            whats.extend(
                FILTERS
                    .iter()
                    .map(|(l, _, _)| format!("filter{}", l.trim_end_matches('%'))),
            );
        }
        if o.has("batch") && o.batch_queries > 0 {
            whats.push("batch".into());
        }
        for w in whats {
            let (Some(a), Some(b)) = (
                read_ids(&o.ids(Engine::Phenix, &w)),
                read_ids(&o.ids(Engine::SqliteVec, &w)),
            ) else {
                continue;
            };
            let g = agreement(&a, &b);
            println!(
                "  {w}: {} queries, mean top-k overlap {:.4}, identical sets {:.1} %",
                g.queries,
                g.mean_overlap,
                g.identical * 100.0
            );
        }
    }
}
