//! Cancellation and progress of long phenix work on the bundled SQLite (>= 3.41, so phenix reads the
//! interrupt flag): each long operation is interrupted from another thread once it has started, and
//! must fail with SQLITE_INTERRUPT from phenix itself (not SQLite noticing afterwards), leave the data
//! as it was and the table usable. Times to stop are printed (`--nocapture`), never asserted.
//!
//! "Started" is made certain with the progress callback: its first call (on the statement's thread,
//! mid-operation) hands over to the interrupting thread and waits until `sqlite3_interrupt` was called,
//! so the work must notice the flag at its next chunk. The time to stop runs from that call to the
//! statement's return.
//!
//! Sizes are small for CI; `PHENIX_CANCEL_ROWS=200000 PHENIX_CANCEL_DIM=256 PHENIX_CANCEL_QUERIES=3000
//! cargo test --release -p phenix-sql --test cancel -- --nocapture --test-threads 1` gives the
//! figures of docs/embedding.md.

mod common;

use common::{f32_bytes, rand_vec, TempDir};
use phenix_sql::control::{set_progress, Progress};
use rusqlite::{ffi, Connection};
use std::ops::ControlFlow;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The progress callback is process-wide: one test at a time installs it.
static SERIAL: Mutex<()> = Mutex::new(());

/// A file database with table `t` of `rows` random vectors (every 7th deleted) and `queries` query
/// vectors in table `q`.
fn setup(dir: &TempDir, rows: usize, queries: usize) -> Connection {
    let dim = env("PHENIX_CANCEL_DIM", 64);
    let c = common::open(&dir.0.join("db.sqlite"));
    c.execute_batch(&format!(
        "CREATE VIRTUAL TABLE t USING phenix(v float16[{dim}] distance=cosine, tag INTEGER);
         CREATE VIRTUAL TABLE q USING phenix(v float16[{dim}]);"
    ))
    .unwrap();
    c.execute_batch("BEGIN").unwrap();
    {
        let mut ins = c.prepare("INSERT INTO t(v, tag) VALUES (?1, ?2)").unwrap();
        for i in 0..rows {
            ins.execute(rusqlite::params![
                f32_bytes(&rand_vec(i as u64 + 1, dim)),
                i as i64
            ])
            .unwrap();
        }
        let mut ins = c.prepare("INSERT INTO q(v) VALUES (?1)").unwrap();
        for i in 0..queries {
            ins.execute([f32_bytes(&rand_vec(1_000_000 + i as u64, dim))])
                .unwrap();
        }
    }
    c.execute_batch("DELETE FROM t WHERE rowid % 7 = 0; COMMIT")
        .unwrap();
    c
}

/// What an interrupted statement did.
struct Stopped {
    code: i32,
    message: String,
    /// From `sqlite3_interrupt` to the statement's return.
    to_stop: Duration,
    /// The same statement run to its end (for the figures).
    full: Duration,
    /// Progress reports seen before the stop: (done, total).
    seen: Vec<(u64, u64)>,
}

/// Runs `sql` (all its rows) on `c`, calling `sqlite3_interrupt` from another thread at the first
/// progress report of operation `op`.
fn interrupt_during(c: &Connection, op: &'static str, sql: &str) -> Stopped {
    let handle = c.get_interrupt_handle();
    let (to_interrupter, started) = mpsc::channel::<()>();
    let (ack, interrupted) = mpsc::channel::<Instant>();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let at = Arc::new(Mutex::new(None::<Instant>));
    let (s, a) = (seen.clone(), at.clone());
    let to_interrupter = Mutex::new(Some(to_interrupter));
    let interrupted = Mutex::new(interrupted);
    set_progress(
        Some(Arc::new(move |p: &Progress<'_>| {
            if p.op != op {
                return ControlFlow::Continue(());
            }
            s.lock().unwrap().push((p.done, p.total));
            if let Some(tx) = to_interrupter.lock().unwrap().take() {
                tx.send(()).unwrap();
                *a.lock().unwrap() = Some(interrupted.lock().unwrap().recv().unwrap());
            }
            ControlFlow::Continue(())
        })),
        Duration::ZERO,
    );
    let interrupter = std::thread::spawn(move || {
        if started.recv().is_ok() {
            let t = Instant::now();
            handle.interrupt();
            ack.send(t).unwrap();
        }
    });
    let r = run_all(c, sql);
    let end = Instant::now();
    set_progress(None, Duration::ZERO);
    interrupter.join().unwrap();
    let err = r.expect_err("the statement was interrupted");
    let t0 = at.lock().unwrap().expect("the operation reported progress");
    let (code, message) = match &err {
        rusqlite::Error::SqliteFailure(f, m) => (f.extended_code, m.clone().unwrap_or_default()),
        e => panic!("not an SQLite error: {e}"),
    };
    let seen = seen.lock().unwrap().clone();
    Stopped {
        code,
        message,
        to_stop: end - t0,
        full: Duration::ZERO,
        seen,
    }
}

/// Steps `sql` to its end, collecting every column of every row as text.
fn run_all(c: &Connection, sql: &str) -> rusqlite::Result<Vec<Vec<String>>> {
    let mut st = c.prepare(sql)?;
    let n = st.column_count();
    let mut rows = st.query([])?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        out.push(
            (0..n)
                .map(|i| format!("{:?}", r.get_ref(i).unwrap()))
                .collect(),
        );
    }
    Ok(out)
}

fn timed(c: &Connection, sql: &str) -> (Duration, Vec<Vec<String>>) {
    let t = Instant::now();
    let r = run_all(c, sql).unwrap();
    (t.elapsed(), r)
}

/// Checks that the stop came from phenix, mid-operation, and prints the figures.
fn report(what: &str, mut s: Stopped, full: Duration) {
    s.full = full;
    assert_eq!(
        s.code,
        ffi::SQLITE_INTERRUPT,
        "{what}: {} ({})",
        s.message,
        s.code
    );
    // A table (KNN, a table-valued function, a write) says `phenix: interrupted`; a scalar function
    // (phenix_backup) can only keep the code with SQLite's own message.
    assert!(s.message.ends_with("interrupted"), "{what}: {}", s.message);
    // Mid-operation: the last report came before the end.
    let (done, total) = *s.seen.last().unwrap();
    assert!(
        done < total,
        "{what}: stopped before the end ({done}/{total})"
    );
    println!(
        "cancel: {what}: stopped {:.1} ms after sqlite3_interrupt (at {done}/{total}; uninterrupted {:.1} ms)",
        s.to_stop.as_secs_f64() * 1e3,
        s.full.as_secs_f64() * 1e3
    );
}

fn snapshot(c: &Connection) -> Vec<Vec<String>> {
    run_all(c, "SELECT rowid, tag, hex(v) FROM t ORDER BY rowid").unwrap()
}

#[test]
fn knn_stops_on_interrupt() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = TempDir::new("cancel-knn");
    let rows = env("PHENIX_CANCEL_ROWS", 60_000);
    let c = setup(&dir, rows, 1);
    let sql =
        "SELECT rowid, distance FROM t WHERE v MATCH (SELECT v FROM q WHERE rowid = 1) AND k = 5";
    let before = snapshot(&c);
    let (full, want) = timed(&c, sql);
    let s = interrupt_during(&c, "knn", sql);
    assert!(
        s.message.starts_with("phenix"),
        "from phenix: {}",
        s.message
    );
    report("knn", s, full);
    assert_eq!(run_all(&c, sql).unwrap(), want, "the same query again");
    assert_eq!(snapshot(&c), before);
}

#[test]
fn retrieve_all_stops_on_interrupt() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = TempDir::new("cancel-retrieve-all");
    let rows = env("PHENIX_CANCEL_ROWS", 60_000);
    let c = setup(&dir, rows, env("PHENIX_CANCEL_QUERIES", 200));
    let sql = "SELECT query_rowid, rowid, rank FROM phenix_retrieve_all('t', 'q', 5)";
    let before = snapshot(&c);
    let (full, want) = timed(&c, sql);
    let s = interrupt_during(&c, "retrieve_all", sql);
    assert!(
        s.message.starts_with("phenix"),
        "from phenix: {}",
        s.message
    );
    report("retrieve_all", s, full);
    assert_eq!(run_all(&c, sql).unwrap(), want);
    assert_eq!(snapshot(&c), before);
}

#[test]
fn optimize_stops_on_interrupt_and_changes_nothing() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = TempDir::new("cancel-optimize");
    let rows = env("PHENIX_CANCEL_ROWS", 60_000);
    let c = setup(&dir, rows, 1);
    let before = snapshot(&c);
    let files = common::sidecar_files(&dir.0.join("db.sqlite"));
    let s = interrupt_during(&c, "optimize", "INSERT INTO t(t) VALUES ('optimize')");
    // The uninterrupted figure: the same compaction on a copy made the same way.
    let dir2 = TempDir::new("cancel-optimize-full");
    let c2 = setup(&dir2, rows, 1);
    let (full, _) = timed(&c2, "INSERT INTO t(t) VALUES ('optimize')");
    report("optimize", s, full);
    assert_eq!(snapshot(&c), before, "committed data unchanged");
    assert_eq!(
        common::sidecar_files(&dir.0.join("db.sqlite")),
        files,
        "no new vector file left behind"
    );
    // Usable: a write, a compaction that runs to its end, the same rows.
    c.execute_batch("INSERT INTO t(t) VALUES ('optimize')")
        .unwrap();
    assert_eq!(snapshot(&c), before);
    c.execute(
        "INSERT INTO t(v, tag) VALUES (?1, -1)",
        [f32_bytes(&rand_vec(7, env("PHENIX_CANCEL_DIM", 64)))],
    )
    .unwrap();
    let ok: String = c
        .query_row("SELECT phenix_check('t')", [], |r| r.get(0))
        .unwrap();
    assert_eq!(ok, "ok");
}

#[test]
fn optimize_in_a_transaction_rolls_the_transaction_back() {
    // SQLite rolls back the whole explicit transaction of a write that fails with SQLITE_INTERRUPT.
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = TempDir::new("cancel-optimize-txn");
    let c = setup(&dir, env("PHENIX_CANCEL_ROWS", 60_000), 1);
    let before = snapshot(&c);
    let kept: i64 = c
        .query_row("SELECT count(*) FROM t WHERE rowid % 5 != 0", [], |r| {
            r.get(0)
        })
        .unwrap();
    c.execute_batch("BEGIN; DELETE FROM t WHERE rowid % 5 = 0;")
        .unwrap();
    let s = interrupt_during(&c, "optimize", "INSERT INTO t(t) VALUES ('optimize')");
    report("optimize in a transaction", s, Duration::ZERO);
    assert!(c.is_autocommit(), "SQLite ended the transaction");
    assert_eq!(snapshot(&c), before, "the DELETE was rolled back too");
    c.execute_batch("DELETE FROM t WHERE rowid % 5 = 0; INSERT INTO t(t) VALUES ('optimize')")
        .unwrap();
    let n: i64 = c
        .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, kept);
}

#[test]
fn backup_stops_on_interrupt_and_leaves_nothing() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = TempDir::new("cancel-backup");
    let rows = env("PHENIX_CANCEL_ROWS", 60_000);
    let c = setup(&dir, rows, 1);
    let before = snapshot(&c);
    let dest = dir.0.join("copy.sqlite");
    let sql = format!("SELECT phenix_backup('{}')", dest.display());
    let s = interrupt_during(&c, "backup", &sql);
    assert!(!dest.exists(), "no partial copy");
    assert!(
        !dir.0.join("copy.sqlite-phenix").exists(),
        "no partial vector files"
    );
    let (full, _) = timed(&c, &sql);
    report("backup", s, full);
    assert_eq!(snapshot(&c), before);
    let copy = common::open(&dest);
    assert_eq!(snapshot(&copy), before, "a later backup is complete");
}

#[cfg(feature = "default-model")]
#[test]
fn embed_molecules_stops_on_interrupt() {
    if std::env::var_os("ORT_DYLIB_PATH").is_none() {
        // The embedding needs ONNX Runtime; tools/test sets ORT_DYLIB_PATH.
        eprintln!("cancel: embed_molecules skipped: ORT_DYLIB_PATH is not set");
        return;
    }
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let c = common::mem();
    let n = env("PHENIX_CANCEL_MOLECULES", 2_000);
    let sql = format!(
        "SELECT id, smiles FROM phenix_embed_molecules('default', \
         'WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {n}) \
          SELECT i, ''C'' || substr(''CCCCCCCCCCCC'', 1, i % 12) || ''O'', 1.0 FROM n')"
    );
    let (full, want) = timed(&c, &sql);
    assert_eq!(want.len(), n);
    let s = interrupt_during(&c, "embed_molecules", &sql);
    report("embed_molecules", s, full);
    assert_eq!(run_all(&c, &sql).unwrap(), want);
}

#[test]
fn progress_is_monotone_and_ends_at_the_total() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = TempDir::new("cancel-progress");
    let rows = env("PHENIX_CANCEL_ROWS", 60_000);
    let queries = 50;
    let c = setup(&dir, rows, queries);
    let live = c
        .query_row("SELECT count(*) FROM t", [], |r| r.get::<_, i64>(0))
        .unwrap() as u64;
    /// (connection, operation, done, total) of each report.
    type Seen = Vec<(usize, String, u64, u64)>;
    let seen: Arc<Mutex<Seen>> = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    let me = std::thread::current().id();
    set_progress(
        Some(Arc::new(move |p: &Progress<'_>| {
            assert_eq!(
                std::thread::current().id(),
                me,
                "called on the statement's thread"
            );
            s.lock()
                .unwrap()
                .push((p.db as usize, p.op.to_string(), p.done, p.total));
            ControlFlow::Continue(())
        })),
        Duration::ZERO,
    );
    let slots = rows as u64; // visible slots, deleted ones included
    let checks: Vec<(&str, String, u64)> = vec![
        (
            "knn",
            "SELECT rowid FROM t WHERE v MATCH (SELECT v FROM q WHERE rowid = 1) AND k = 3".into(),
            slots,
        ),
        (
            "retrieve_all",
            "SELECT * FROM phenix_retrieve_all('t', 'q', 3)".into(),
            slots + queries as u64,
        ),
        (
            "backup",
            format!(
                "SELECT phenix_backup('{}')",
                dir.0.join("b.sqlite").display()
            ),
            0, // rows + pages: checked below
        ),
        (
            "optimize",
            "INSERT INTO t(t) VALUES ('optimize')".into(),
            live,
        ),
    ];
    // SAFETY: only the address is compared.
    let db = unsafe { c.handle() } as usize;
    for (op, sql, total) in checks {
        seen.lock().unwrap().clear();
        run_all(&c, &sql).unwrap();
        let v = seen.lock().unwrap().clone();
        let mine: Vec<_> = v.iter().filter(|x| x.1 == op).collect();
        assert!(!mine.is_empty(), "{op}: reported");
        assert!(mine.iter().all(|x| x.0 == db), "{op}: the connection");
        let t = mine[0].3;
        if op == "backup" {
            let pages = c
                .query_row("PRAGMA page_count", [], |r| r.get::<_, i64>(0))
                .unwrap() as u64;
            // Every committed slot of both tables, then the pages.
            assert_eq!(
                t,
                slots + queries as u64 + pages,
                "{op}: total = rows + pages"
            );
        } else {
            assert_eq!(t, total, "{op}: total");
        }
        assert!(mine.iter().all(|x| x.3 == t), "{op}: one total");
        assert!(
            mine.windows(2).all(|w| w[0].2 <= w[1].2),
            "{op}: done never decreases: {mine:?}"
        );
        assert_eq!(mine.last().unwrap().2, t, "{op}: ends at the total");
        assert!(
            mine.len() >= 2,
            "{op}: at least one report before the end: {mine:?}"
        );
    }
    set_progress(None, Duration::ZERO);
}

#[test]
fn a_progress_callback_can_stop_the_work() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = TempDir::new("cancel-by-callback");
    let c = setup(&dir, env("PHENIX_CANCEL_ROWS", 60_000), 100);
    let before = snapshot(&c);
    let calls = Arc::new(Mutex::new(0));
    let n = calls.clone();
    set_progress(
        Some(Arc::new(move |_: &Progress<'_>| {
            *n.lock().unwrap() += 1;
            ControlFlow::Break(())
        })),
        Duration::ZERO,
    );
    let e = run_all(&c, "SELECT * FROM phenix_retrieve_all('t', 'q', 3)").unwrap_err();
    set_progress(None, Duration::ZERO);
    assert_eq!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::OperationInterrupted),
        "{e}"
    );
    assert_eq!(*calls.lock().unwrap(), 1, "stopped at the first report");
    assert_eq!(snapshot(&c), before);
    assert!(run_all(&c, "SELECT count(*) FROM phenix_retrieve_all('t', 'q', 3)").is_ok());
}
