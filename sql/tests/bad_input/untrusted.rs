//! Untrusted databases: hostile shadow-table contents and sidecar symlinks.

use crate::common::TempDir;
use crate::harness::*;
use rusqlite::types::Value;
use std::path::{Path, PathBuf};

/// A database with phenix table `t` (3 rows), closed; returns its table id.
fn make_db(path: &Path) -> String {
    let c = open(path);
    c.execute_batch(
        "CREATE VIRTUAL TABLE t USING phenix(v float32[2], m TEXT);
         INSERT INTO t(rowid, v, m) VALUES (1, '[1, 0]', 'a'), (2, '[0, 1]', 'b'), (3, '[1, 1]', 'c');",
    )
    .unwrap();
    let id: String = c
        .query_row("SELECT value FROM t_info WHERE key = 'table_id'", [], |r| {
            r.get(0)
        })
        .unwrap();
    drop(c);
    id
}

/// Length and FNV-1a hash of a file's bytes.
fn digest(b: &[u8]) -> String {
    let h = b.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &x| {
        (h ^ u64::from(x)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("{} bytes, fnv {h:016x}", b.len())
}

/// Every file under `dir` (recursively, not following symlinks) with its length and hash, or its
/// symlink target.
fn snapshot(dir: &Path) -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            if m.is_dir() {
                stack.push(p);
            } else if m.is_file() {
                out.push((p.clone(), digest(&std::fs::read(&p).unwrap())));
            } else {
                let target = std::fs::read_link(&p).unwrap();
                out.push((p.clone(), format!("-> {}", target.display())));
            }
        }
    }
    out.sort();
    out
}

fn set_info(db: &Path, key: &str, value_sql: &str) {
    plain(db)
        .execute(
            &format!("UPDATE t_info SET value = {value_sql} WHERE key = '{key}'"),
            [],
        )
        .unwrap();
}

/// Every way phenix may touch the table: read, KNN, write, create another table (which collects
/// orphans), drop. Returns the errors' messages (every error must be a phenix error or SQLite's own).
fn exercise(db: &Path) -> Vec<String> {
    let c = open(db);
    let mut msgs = Vec::new();
    for sql in [
        "SELECT count(*) FROM t",
        "SELECT rowid FROM t WHERE v MATCH '[1, 0]' AND k = 2",
        "INSERT INTO t(rowid, v, m) VALUES (10, '[2, 2]', 'x')",
        "DELETE FROM t WHERE rowid = 1",
        "CREATE VIRTUAL TABLE other USING phenix(v float16[2])",
        "INSERT INTO other(v) VALUES ('[1, 2]')",
    ] {
        if let Err(e) = in_sql(|| c.execute_batch(sql)) {
            let s = e.to_string();
            assert!(
                !s.contains("internal error") && !s.contains("panic"),
                "{sql}: {s}"
            );
            msgs.push(format!("{sql}: {s}"));
        }
    }
    msgs
}

#[test]
fn hostile_info_values_stay_inside_the_sidecar_directory() {
    let root = TempDir::new("hostile-info");
    // Something outside that a path built from the shadow tables could reach.
    let outside = root.0.join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("precious.phx"), b"not yours").unwrap();
    let cases: &[(&str, &str, &str)] = &[
        ("table_id", "'../outside/precious'", "no valid table_id"),
        (
            "table_id",
            "'../../../../../../../../tmp/x'",
            "no valid table_id",
        ),
        ("table_id", "'/etc/passwd'", "no valid table_id"),
        (
            "table_id",
            "'0123456789abcdef0123456789abcde/'",
            "no valid table_id",
        ),
        (
            "table_id",
            "'0123456789abcdef0123456789abcdef/..'",
            "no valid table_id",
        ),
        (
            "table_id",
            "'0123456789abcdef0123456789abcdeé'",
            "no valid table_id",
        ),
        (
            "table_id",
            "12345678901234567890123456789012",
            "no valid table_id",
        ),
        (
            "table_id",
            "x'0123456789abcdef0123456789abcdef'",
            "no valid table_id",
        ),
        ("table_id", "NULL", "no valid table_id"),
        (
            "table_id",
            "'00000000000000000000000000000000'",
            "No such file",
        ),
        ("generation", "9223372036854775807", "No such file"),
        ("generation", "1", "No such file"),
        ("committed", "9223372036854775807", "t"),
        ("committed", "-1", "no valid committed count"),
        ("committed", "'../x'", "no valid committed count"),
        ("committed", "4", "t"),
        (
            "definition",
            "'v float32[3] distance=cosine, m TEXT'",
            "differ from the stored definition",
        ),
        ("format", "'../../x'", ""),
    ];
    for (i, (key, value, want)) in cases.iter().enumerate() {
        let dir = root.0.join(format!("c{i}"));
        std::fs::create_dir_all(&dir).unwrap();
        let db = dir.join("x.db");
        make_db(&db);
        set_info(&db, key, value);
        let before_outside = snapshot(&outside);
        let msgs = exercise(&db);
        // Nothing outside changed; nothing appeared next to the database but its own files.
        assert_eq!(snapshot(&outside), before_outside, "{key} = {value}");
        let names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        for n in &names {
            assert!(
                n.starts_with("x.db"),
                "{key} = {value}: phenix made {n} next to the database"
            );
        }
        // Inside the sidecar only `<32 hex>.g<N>.phx` files and their row-id files (`.ids`).
        for (p, _) in snapshot(&dir.join("x.db-phenix")) {
            let f = p.file_name().unwrap().to_string_lossy().into_owned();
            assert!(
                f.len() > 36
                    && f[..32].bytes().all(|b| b.is_ascii_hexdigit())
                    && (f.ends_with(".phx") || f.ends_with(".ids")),
                "{key} = {value}: {f}"
            );
            assert_eq!(p.parent().unwrap(), dir.join("x.db-phenix"));
        }
        if !want.is_empty() {
            // Reading the damaged table fails with a phenix error that names the table and the problem.
            let first = msgs
                .first()
                .unwrap_or_else(|| panic!("{key} = {value}: everything worked"));
            assert!(
                first.starts_with("SELECT count(*) FROM t: phenix: phenix table t"),
                "{key} = {value}: {first}"
            );
            assert!(
                first.contains(want),
                "{key} = {value}: `{want}` missing from {first}"
            );
        }
    }
    assert_no_panics();
}

/// A `generation` that is not a non-negative integer (or is missing) must not make phenix delete the
/// table's own vector file as an orphan.
#[test]
fn a_damaged_generation_never_deletes_the_vectors() {
    let root = TempDir::new("generation");
    let mut lost = Vec::new();
    for (i, value) in ["'abc'", "-1", "NULL", "1.5", "x'00'", "'0'"]
        .iter()
        .enumerate()
    {
        let dir = root.0.join(format!("g{i}"));
        std::fs::create_dir_all(&dir).unwrap();
        let db = dir.join("x.db");
        let id = make_db(&db);
        let file = dir.join(format!("x.db-phenix/{id}.g0.phx"));
        let bytes = std::fs::read(&file).unwrap();
        set_info(&db, "generation", value);
        let _ = exercise(&db);
        // Repair the generation: the three committed rows are all still there.
        set_info(&db, "generation", "0");
        if !file.exists() {
            lost.push(*value);
            continue;
        }
        assert!(
            std::fs::read(&file)
                .unwrap()
                .starts_with(&bytes[..bytes.len().min(64)]),
            "generation = {value}: header changed"
        );
        let c = open(&db);
        let n = rows(&c, "SELECT rowid FROM t WHERE v MATCH '[1, 0]' AND k = 10");
        assert!(
            matches!(&n, Ok(v) if v.len() >= 2),
            "generation = {value}: {n:?}"
        );
    }
    assert_no_panics();
    assert!(
        lost.is_empty(),
        "the vector file was deleted for generation = {lost:?}"
    );
}

#[test]
fn hostile_rows_slots_are_refused() {
    let root = TempDir::new("slots");
    for (i, slot) in [
        "-1",
        "3",
        "1000000000000",
        "-9223372036854775808",
        "'x'",
        "2.5",
    ]
    .iter()
    .enumerate()
    {
        let dir = root.0.join(format!("s{i}"));
        std::fs::create_dir_all(&dir).unwrap();
        let db = dir.join("x.db");
        make_db(&db);
        plain(&db)
            .execute(
                &format!("UPDATE t_rows SET slot = {slot} WHERE rowid = 2"),
                [],
            )
            .unwrap();
        let c = open(&db);
        for sql in [
            "SELECT rowid FROM t WHERE v MATCH '[1, 0]' AND k = 3",
            "SELECT count(*) FROM phenix_retrieve('t', '[1, 0]', 3)",
            "SELECT v FROM t",
        ] {
            match rows(&c, sql) {
                Ok(v) => assert!(v.len() <= 3, "slot {slot}: {sql}: {v:?}"),
                Err(e) => {
                    let s = e.to_string();
                    assert!(
                        s.starts_with("phenix: ") || s.contains("Invalid column type"),
                        "slot {slot}: {sql}: {s}"
                    );
                    assert!(!s.contains("internal error"), "slot {slot}: {sql}: {s}");
                }
            }
        }
    }
    assert_no_panics();
}

/// The vector file in the sidecar directory is a symlink to another database's vector file (whose id
/// the hostile database copied): phenix must not write through it.
#[test]
fn a_symlinked_vector_file_is_not_written_through() {
    let root = TempDir::new("symlink-file");
    std::fs::create_dir_all(root.0.join("victim")).unwrap();
    std::fs::create_dir_all(root.0.join("evil")).unwrap();
    let victim = root.0.join("victim/v.db");
    let id = make_db(&victim);
    let victim_files = snapshot(&root.0.join("victim"));
    let evil = root.0.join("evil/e.db");
    let _ = make_db(&evil);
    // The hostile database claims the victim's table id, with nothing committed, and its sidecar holds
    // a symlink to the victim's file.
    set_info(&evil, "table_id", &format!("'{id}'"));
    set_info(&evil, "committed", "0");
    plain(&evil).execute("DELETE FROM t_rows", []).unwrap();
    let link = root.0.join(format!("evil/e.db-phenix/{id}.g0.phx"));
    std::os::unix::fs::symlink(
        root.0.join(format!("victim/v.db-phenix/{id}.g0.phx")),
        &link,
    )
    .unwrap();
    let _ = exercise(&evil);
    assert_eq!(
        snapshot(&root.0.join("victim")),
        victim_files,
        "the victim's files changed"
    );
    let c = open(&victim);
    assert_eq!(
        rows(&c, "SELECT rowid FROM t ORDER BY rowid")
            .unwrap()
            .len(),
        3
    );
    assert_no_panics();
}

/// A symlink to an arbitrary outside file in place of the vector file: refused, the file unchanged.
#[test]
fn a_symlink_to_an_outside_file_is_refused() {
    let root = TempDir::new("symlink-outside");
    let db = root.0.join("x.db");
    let id = make_db(&db);
    let target = root.0.join("precious.txt");
    std::fs::write(&target, b"precious data, not a vector file").unwrap();
    let file = root.0.join(format!("x.db-phenix/{id}.g0.phx"));
    std::fs::remove_file(&file).unwrap();
    std::os::unix::fs::symlink(&target, &file).unwrap();
    // An orphan-looking symlink too: collecting orphans may remove the link, never its target.
    let orphan_target = root.0.join("precious2.txt");
    std::fs::write(&orphan_target, b"also precious").unwrap();
    std::os::unix::fs::symlink(
        &orphan_target,
        root.0
            .join("x.db-phenix/ffffffffffffffffffffffffffffffff.g0.phx"),
    )
    .unwrap();
    let msgs = exercise(&db);
    assert_eq!(
        std::fs::read(&target).unwrap(),
        b"precious data, not a vector file"
    );
    assert_eq!(std::fs::read(&orphan_target).unwrap(), b"also precious");
    let first = msgs.first().expect("reading through the symlink must fail");
    assert!(first.contains("phenix: phenix table t"), "{first}");
    assert_no_panics();
}

/// The sidecar directory itself is a symlink to another database's sidecar directory: phenix must not
/// delete or write the other database's vector files.
#[test]
fn a_symlinked_sidecar_directory_is_not_used() {
    let root = TempDir::new("symlink-dir");
    std::fs::create_dir_all(root.0.join("victim")).unwrap();
    std::fs::create_dir_all(root.0.join("evil")).unwrap();
    let victim = root.0.join("victim/v.db");
    make_db(&victim);
    let victim_files = snapshot(&root.0.join("victim"));
    let evil = root.0.join("evil/e.db");
    plain(&evil).execute_batch("CREATE TABLE x(a)").unwrap();
    std::os::unix::fs::symlink(
        root.0.join("victim/v.db-phenix"),
        root.0.join("evil/e.db-phenix"),
    )
    .unwrap();
    let c = open(&evil);
    let r = in_sql(|| {
        c.execute_batch(
            "CREATE VIRTUAL TABLE t USING phenix(v float16[2]);
             INSERT INTO t(v) VALUES ('[1, 2]');",
        )
    });
    if let Err(e) = &r {
        let _ = phenix_msg(e, "create in a symlinked sidecar directory");
    }
    drop(c);
    assert_eq!(
        snapshot(&root.0.join("victim")),
        victim_files,
        "phenix changed another database's sidecar through a symlinked directory ({r:?})"
    );
    assert_no_panics();
}

/// Files with odd names in the sidecar directory (another program's, or a hostile archive's) do not
/// break writes.
#[test]
fn odd_file_names_in_the_sidecar_directory() {
    let root = TempDir::new("odd-names");
    let db = root.0.join("x.db");
    make_db(&db);
    let side = root.0.join("x.db-phenix");
    for name in [
        format!("{}é.g0.phx", "a".repeat(31)),
        format!("{}日本.phx", "b".repeat(30)),
        "é".repeat(20) + ".phx",
        "notes.txt".into(),
        ".phx".into(),
    ] {
        std::fs::write(side.join(&name), b"x").unwrap();
    }
    std::fs::create_dir_all(side.join("0123456789abcdef0123456789abcdef.g9.phx")).unwrap();
    let c = open(&db);
    let r = in_sql(|| c.execute_batch("INSERT INTO t(rowid, v, m) VALUES (10, '[2, 2]', 'x')"));
    assert!(
        r.is_ok(),
        "a write with odd names in the sidecar directory: {r:?}"
    );
    assert_eq!(rows(&c, "SELECT rowid FROM t").unwrap().len(), 4);
    assert_no_panics();
}

/// Functions that take a path or run SQL text refuse to run from SQL stored in a database (views,
/// triggers), also one made elsewhere and with `trusted_schema` on.
#[test]
fn path_functions_refuse_views_and_triggers() {
    let root = TempDir::new("direct-only");
    let db = root.0.join("x.db");
    let bundle = repo().join("models/default");
    let b = bundle.to_str().unwrap().replace('\'', "''");
    // Made by "someone else": a connection without phenix writes the schema.
    plain(&db)
        .execute_batch(&format!(
            "CREATE TABLE log(x);
             CREATE TABLE src(s TEXT, c REAL);
             INSERT INTO src VALUES ('CCO', 1.0);
             CREATE VIEW load_view AS SELECT phenix_model_load('evil_view', '{b}') AS r;
             CREATE VIEW embed_view AS SELECT count(*) AS n FROM phenix_embed_molecules('default', 'SELECT s, c FROM src');
             CREATE TRIGGER load_trigger AFTER INSERT ON log BEGIN
               SELECT phenix_model_load('evil_trigger', '{b}');
             END;
             CREATE TABLE log2(x);
             CREATE TRIGGER embed_trigger AFTER INSERT ON log2 BEGIN
               INSERT INTO src SELECT smiles, concentration FROM phenix_embed_molecules('default', 'SELECT s, c FROM src');
             END;"
        ))
        .unwrap();
    for trusted in ["ON", "OFF"] {
        let c = open(&db);
        c.execute_batch(&format!("PRAGMA trusted_schema = {trusted}"))
            .unwrap();
        for (sql, fname) in [
            ("SELECT r FROM load_view", "phenix_model_load"),
            ("SELECT n FROM embed_view", "phenix_embed_molecules"),
            ("INSERT INTO log VALUES (1)", "phenix_model_load"),
            ("INSERT INTO log2 VALUES (1)", "phenix_embed_molecules"),
        ] {
            let r = in_sql(|| c.execute_batch(sql));
            let e = r.expect_err(sql).to_string();
            assert!(
                e.contains("unsafe use of") && e.contains(fname),
                "trusted_schema={trusted}: {sql}: {e}"
            );
        }
        // Nothing was loaded or run.
        let names = rows(&c, "SELECT name FROM phenix_models").unwrap();
        assert!(
            !names
                .iter()
                .any(|n| matches!(n, Value::Text(t) if t.starts_with("evil"))),
            "{names:?}"
        );
        assert_eq!(
            one(&c, "SELECT count(*) FROM src").unwrap(),
            Value::Integer(1)
        );
        // The same calls made directly by the application work.
        let r = one(&c, &format!("SELECT phenix_model_load('direct', '{b}')")).unwrap();
        assert!(
            matches!(&r, Value::Text(t) if t.starts_with("loaded model 'direct'")),
            "{r:?}"
        );
        assert_eq!(
            one(
                &c,
                "SELECT count(*) FROM phenix_embed_molecules('default', 'SELECT s, c FROM src')"
            )
            .unwrap(),
            Value::Integer(1)
        );
    }
    assert_no_panics();
}
