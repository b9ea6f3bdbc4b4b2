//! The `phenix` virtual table in-process (bundled SQLite): KNN against brute force, pre-filtering,
//! transactions, savepoints, reopen, UPDATE/DELETE, retrieval functions, DROP/RENAME and errors.

use rusqlite::{params, Connection};

mod common;
use common::*;

fn knn(c: &Connection, sql: &str, p: impl rusqlite::Params) -> Vec<(i64, f64)> {
    c.prepare(sql)
        .unwrap()
        .query_map(p, |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(|r| r.unwrap())
        .collect()
}

/// Fills `molecules` with `n` random 32-d vectors; concentration = rowid % 10; returns stored vectors.
fn fill(c: &Connection, n: usize) -> Vec<Vec<f32>> {
    c.execute_batch(
        "CREATE VIRTUAL TABLE molecules USING phenix(embedding float16[32] distance=cosine, smiles TEXT, concentration REAL, +note TEXT)",
    )
    .unwrap();
    let tx = c.unchecked_transaction().unwrap();
    let mut rows = Vec::new();
    {
        let mut st = c
            .prepare("INSERT INTO molecules(rowid, embedding, smiles, concentration, note) VALUES (?1, ?2, ?3, ?4, ?5)")
            .unwrap();
        for i in 1..=n {
            let v = rand_vec(i as u64, 32);
            st.execute(params![
                i as i64,
                json(&v),
                format!("C{i}"),
                (i % 10) as f64,
                "n"
            ])
            .unwrap();
            rows.push(f16r(&v));
        }
    }
    tx.commit().unwrap();
    rows
}

fn brute(rows: &[Vec<f32>], q: &[f32], k: usize, keep: impl Fn(i64) -> bool) -> Vec<(i64, f64)> {
    let mut v: Vec<(i64, f64)> = rows
        .iter()
        .enumerate()
        .map(|(i, r)| (i as i64 + 1, cos64(q, r)))
        .filter(|(id, _)| keep(*id))
        .collect();
    v.sort_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)));
    v.truncate(k);
    v
}

fn same(got: &[(i64, f64)], want: &[(i64, f64)]) {
    assert_eq!(got.len(), want.len(), "row count: got {got:?}");
    for (g, w) in got.iter().zip(want) {
        assert!(
            (g.1 - w.1).abs() < 1e-5,
            "distance {} vs {} (got {got:?})",
            g.1,
            w.1
        );
        if g.0 != w.0 {
            assert!((g.1 - w.1).abs() < 1e-6, "rowid {} vs {}", g.0, w.0);
        }
    }
}

#[test]
fn knn_matches_brute_force_and_prefilter_returns_k() {
    let c = mem();
    let rows = fill(&c, 2000);
    for s in 0..5u64 {
        let q = rand_vec(10_000 + s, 32);
        let got = knn(
            &c,
            "SELECT rowid, distance FROM molecules WHERE embedding MATCH ?1 AND k = 10",
            [json(&q)],
        );
        same(&got, &brute(&rows, &q, 10, |_| true));
        // The same through ORDER BY distance LIMIT (no k), as on SQLite 3.40.
        let got2 = knn(
            &c,
            "SELECT rowid, distance FROM molecules WHERE embedding MATCH ?1 ORDER BY distance LIMIT 10",
            [json(&q)],
        );
        same(&got2, &got);
        // An f32 blob query gives the same rows.
        let blob: Vec<u8> = q.iter().flat_map(|x| x.to_le_bytes()).collect();
        let got3 = knn(
            &c,
            "SELECT rowid, distance FROM molecules WHERE embedding MATCH ?1 AND k = 10",
            [blob],
        );
        same(&got3, &got);
        // Pre-filter: 1 % selectivity (concentration = 3 and smiles < 'C3' is rare) still gives k rows.
        let got = knn(
            &c,
            "SELECT rowid, distance FROM molecules WHERE embedding MATCH ?1 AND k = 10 AND concentration = 3",
            [json(&q)],
        );
        let want = brute(&rows, &q, 10, |id| id % 10 == 3);
        same(&got, &want);
        assert_eq!(got.len(), 10, "pre-filter returns k rows");
        // A post-filter (k first, then the condition) would return fewer.
        let post = brute(&rows, &q, 10, |_| true)
            .iter()
            .filter(|(id, _)| id % 10 == 3)
            .count();
        assert!(post < 10);
        // Range + distance bound.
        let got = knn(
            &c,
            "SELECT rowid, distance FROM molecules WHERE embedding MATCH ?1 AND k = 50 AND concentration >= 8 AND distance < 0.9",
            [json(&q)],
        );
        let want: Vec<_> = brute(&rows, &q, 50, |id| id % 10 >= 8)
            .into_iter()
            .filter(|w| w.1 < 0.9)
            .collect();
        same(&got, &want);
    }
    // k above the qualifying count returns them all.
    let q = rand_vec(1, 32);
    let got = knn(
        &c,
        "SELECT rowid, distance FROM molecules WHERE embedding MATCH ?1 AND k = 100000 AND concentration = 0",
        [json(&q)],
    );
    assert_eq!(got.len(), 200);
}

#[test]
fn columns_rank_and_retrieve_functions() {
    let c = mem();
    let rows = fill(&c, 300);
    let q = rand_vec(77, 32);
    let want = brute(&rows, &q, 5, |_| true);
    let tvf: Vec<(i64, i64, f64)> = c
        .prepare("SELECT rowid, rank, distance FROM phenix_retrieve('molecules', ?1, 5)")
        .unwrap()
        .query_map([json(&q)], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .map(|r| r.unwrap())
        .collect();
    same(&tvf.iter().map(|t| (t.0, t.2)).collect::<Vec<_>>(), &want);
    assert_eq!(
        tvf.iter().map(|t| t.1).collect::<Vec<_>>(),
        vec![1, 2, 3, 4, 5]
    );
    let s: String = c
        .query_row(
            "SELECT phenix_retrieve('molecules', ?1, 5)",
            [json(&q)],
            |r| r.get(0),
        )
        .unwrap();
    let j: serde_json::Value = serde_json::from_str(&s).unwrap();
    assert_eq!(j.as_array().unwrap().len(), 5);
    assert_eq!(j[0]["rowid"].as_i64().unwrap(), want[0].0);
    // Metadata and aux columns come back with KNN rows; the embedding is the stored f16 blob.
    let (smiles, conc, note, emb): (String, f64, String, Vec<u8>) = c
        .query_row(
            "SELECT smiles, concentration, note, embedding FROM molecules WHERE embedding MATCH ?1 AND k = 1",
            [json(&q)],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .unwrap();
    let id = want[0].0;
    assert_eq!(smiles, format!("C{id}"));
    assert_eq!(conc, (id % 10) as f64);
    assert_eq!(note, "n");
    assert_eq!(emb.len(), 64);
    let back: Vec<f32> = emb
        .chunks(2)
        .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
        .collect();
    assert_eq!(back, rows[id as usize - 1]);
    // phenix_retrieve_all: every query row against the table, through the GEMM path.
    c.execute_batch("CREATE VIRTUAL TABLE queries USING phenix(e float16[32])")
        .unwrap();
    for i in 0..7 {
        c.execute(
            "INSERT INTO queries(rowid, e) VALUES (?1, ?2)",
            params![100 + i, json(&rand_vec(500 + i as u64, 32))],
        )
        .unwrap();
    }
    let all: Vec<(i64, i64, i64, f64)> = c
        .prepare("SELECT query_rowid, rowid, rank, distance FROM phenix_retrieve_all('molecules', 'queries', 3)")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .unwrap()
        .map(|r| r.unwrap())
        .collect();
    assert_eq!(all.len(), 21);
    for i in 0..7 {
        let q = f16r(&rand_vec(500 + i as u64, 32));
        let got: Vec<(i64, f64)> = all
            .iter()
            .filter(|r| r.0 == 100 + i)
            .map(|r| (r.1, r.3))
            .collect();
        same(&got, &brute(&rows, &q, 3, |_| true));
    }
}

#[test]
fn transactions_savepoints_and_reopen() {
    let d = TempDir::new("tx");
    let db = d.0.join("t.db");
    let c = open(&db);
    c.execute_batch("CREATE VIRTUAL TABLE t USING phenix(v float32[4] distance=l2, tag TEXT)")
        .unwrap();
    c.execute(
        "INSERT INTO t(rowid, v, tag) VALUES (1, '[1,0,0,0]', 'a')",
        [],
    )
    .unwrap();
    c.execute_batch("BEGIN; INSERT INTO t(rowid, v, tag) VALUES (2, '[0,1,0,0]', 'b'); ROLLBACK;")
        .unwrap();
    let ids = |c: &Connection| -> Vec<i64> {
        c.prepare("SELECT rowid FROM t ORDER BY rowid")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(|r| r.unwrap())
            .collect()
    };
    assert_eq!(ids(&c), vec![1]);
    c.execute_batch(
        "BEGIN; INSERT INTO t(rowid, v, tag) VALUES (3, '[0,0,1,0]', 'c');
         SAVEPOINT s1; INSERT INTO t(rowid, v, tag) VALUES (4, '[0,0,0,1]', 'd'); ROLLBACK TO s1;
         INSERT INTO t(rowid, v, tag) VALUES (5, '[1,1,0,0]', 'e'); COMMIT;",
    )
    .unwrap();
    assert_eq!(ids(&c), vec![1, 3, 5]);
    // The rolled-back vector is never served; the one inserted after ROLLBACK TO is.
    let got = knn(
        &c,
        "SELECT rowid, distance FROM t WHERE v MATCH '[0,0,0,1]' AND k = 3",
        [],
    );
    assert_eq!(got.iter().map(|g| g.0).collect::<Vec<_>>(), vec![1, 3, 5]);
    let got = knn(
        &c,
        "SELECT rowid, distance FROM t WHERE v MATCH '[1,1,0,0]' AND k = 1",
        [],
    );
    assert_eq!(got, vec![(5, 0.0)]);
    // UPDATE of the vector and of metadata only; DELETE.
    c.execute("UPDATE t SET v = '[0,0,0,2]' WHERE rowid = 3", [])
        .unwrap();
    c.execute("UPDATE t SET tag = 'z' WHERE rowid = 1", [])
        .unwrap();
    c.execute("DELETE FROM t WHERE rowid = 5", []).unwrap();
    drop(c);
    let c = open(&db);
    assert_eq!(ids(&c), vec![1, 3]);
    let got = knn(
        &c,
        "SELECT rowid, distance FROM t WHERE v MATCH '[0,0,0,1]' AND k = 5",
        [],
    );
    assert_eq!(got, vec![(3, 1.0), (1, 2f64.sqrt() as f32 as f64)]);
    let tag: String = c
        .query_row("SELECT tag FROM t WHERE rowid = 1", [], |r| r.get(0))
        .unwrap();
    assert_eq!(tag, "z");
    let v: Vec<u8> = c
        .query_row("SELECT v FROM t WHERE rowid = 3", [], |r| r.get(0))
        .unwrap();
    assert_eq!(
        v,
        [0f32, 0.0, 0.0, 2.0]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect::<Vec<_>>()
    );
    // A second connection sees committed rows only.
    let c2 = open(&db);
    c.execute_batch("BEGIN; INSERT INTO t(rowid, v, tag) VALUES (9, '[0,0,0,1]', 'x');")
        .unwrap();
    let got = knn(
        &c2,
        "SELECT rowid, distance FROM t WHERE v MATCH '[0,0,0,1]' AND k = 5",
        [],
    );
    assert_eq!(got.iter().map(|g| g.0).collect::<Vec<_>>(), vec![3, 1]);
    c.execute_batch("COMMIT").unwrap();
    let got = knn(
        &c2,
        "SELECT rowid, distance FROM t WHERE v MATCH '[0,0,0,1]' AND k = 5",
        [],
    );
    assert_eq!(got.iter().map(|g| g.0).collect::<Vec<_>>(), vec![9, 3, 1]);
}

#[test]
fn drop_rename_attach_and_temp() {
    let d = TempDir::new("ddl");
    let db = d.0.join("t.db");
    let c = open(&db);
    let side = d.0.join("t.db-phenix");
    // Vector files (`.phx`); each file table's row-id file (`.ids`) comes and goes with its own.
    let files = || {
        let names: Vec<String> = std::fs::read_dir(&side)
            .map(|r| {
                r.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        let phx: Vec<&String> = names.iter().filter(|n| n.ends_with(".phx")).collect();
        let ids = names.iter().filter(|n| n.ends_with(".ids")).count();
        assert_eq!(ids, phx.len(), "{names:?}");
        phx.len()
    };
    c.execute_batch(
        "CREATE VIRTUAL TABLE a USING phenix(v float16[2]); INSERT INTO a(v) VALUES ('[1,2]');",
    )
    .unwrap();
    assert_eq!(files(), 1);
    // A rolled-back DROP loses nothing.
    c.execute_batch("BEGIN; DROP TABLE a; ROLLBACK;").unwrap();
    let n: i64 = c
        .query_row("SELECT count(*) FROM a", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 1);
    let n: i64 = c
        .query_row(
            "SELECT count(*) FROM a WHERE v MATCH '[1,2]' AND k = 1",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(n, 1);
    // RENAME carries the vectors along.
    c.execute_batch("ALTER TABLE a RENAME TO b").unwrap();
    let got = knn(
        &c,
        "SELECT rowid, distance FROM b WHERE v MATCH '[1,2]' AND k = 1",
        [],
    );
    assert_eq!(got, vec![(1, 0.0)]);
    // A committed DROP: the sidecar goes at the next CREATE of a phenix table ...
    c.execute_batch("DROP TABLE b; CREATE VIRTUAL TABLE c2 USING phenix(v float16[2]);")
        .unwrap();
    assert_eq!(files(), 1, "only c2's file is left");
    // ... or at the first write of a connection opened after the drop.
    c.execute_batch("CREATE VIRTUAL TABLE c3 USING phenix(v float16[2]); DROP TABLE c3;")
        .unwrap();
    assert_eq!(files(), 2, "c3's file waits for the next connection");
    let c2 = open(&db);
    c2.execute("INSERT INTO c2(v) VALUES ('[1, 1]')", [])
        .unwrap();
    assert_eq!(files(), 1, "removed by the new connection's first write");
    drop(c2);
    // ATTACH and temp.
    let other = d.0.join("other.db");
    c.execute("ATTACH ?1 AS aux", [other.to_str().unwrap()])
        .unwrap();
    c.execute_batch(
        "CREATE VIRTUAL TABLE aux.x USING phenix(v float16[2]); INSERT INTO aux.x(v) VALUES ('[3,4]');
         CREATE VIRTUAL TABLE temp.y USING phenix(v float16[2]); INSERT INTO temp.y(v) VALUES ('[5,6]');",
    )
    .unwrap();
    assert!(d.0.join("other.db-phenix").is_dir());
    let a: i64 = c
        .query_row(
            "SELECT rowid FROM aux.x WHERE v MATCH '[3,4]' AND k = 1",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let b: i64 = c
        .query_row(
            "SELECT rowid FROM temp.y WHERE v MATCH '[5,6]' AND k = 1",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!((a, b), (1, 1));
    let n: i64 = c
        .query_row(
            "SELECT count(*) FROM phenix_retrieve('aux.x', '[3,4]', 3)",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(n, 1);
}

#[test]
fn bad_input_gives_clear_errors() {
    let c = mem();
    c.execute_batch("CREATE VIRTUAL TABLE m USING phenix(embedding float16[3], conc REAL)")
        .unwrap();
    let err = |sql: &str| c.execute(sql, []).unwrap_err().to_string();
    let q = |sql: &str| {
        c.prepare(sql)
            .and_then(|mut s| {
                s.query_map([], |r| r.get::<_, i64>(0))?
                    .collect::<rusqlite::Result<Vec<_>>>()
            })
            .unwrap_err()
            .to_string()
    };
    for (sql, want) in [
        ("INSERT INTO m(embedding) VALUES ('[1,2]')", "float16[3]"),
        ("INSERT INTO m(embedding) VALUES ('[1,2,')", "embedding"),
        ("INSERT INTO m(embedding) VALUES ('[1,2,70000]')", "65504"),
        ("INSERT INTO m(embedding) VALUES (NULL)", "embedding"),
        ("INSERT INTO m(embedding) VALUES (x'0000')", "float16[3]"),
        (
            "INSERT INTO m(embedding, distance) VALUES ('[1,2,3]', 1)",
            "distance",
        ),
    ] {
        let e = err(sql);
        assert!(e.contains(want) && e.starts_with("phenix: "), "{sql}: {e}");
    }
    c.execute("INSERT INTO m(embedding, conc) VALUES ('[1,2,3]', 1)", [])
        .unwrap();
    for (sql, want) in [
        (
            "SELECT rowid FROM m WHERE embedding MATCH '[1,2,3]' AND k = 0",
            "positive integer",
        ),
        (
            "SELECT rowid FROM m WHERE embedding MATCH '[1,2,3]' AND k = -5",
            "positive integer",
        ),
        (
            "SELECT rowid FROM m WHERE embedding MATCH '[1,2,3]' AND k = NULL",
            "positive integer",
        ),
        (
            "SELECT rowid FROM m WHERE embedding MATCH '[1,2,3]' AND k = 1.5",
            "positive integer",
        ),
        (
            "SELECT rowid FROM m WHERE embedding MATCH '[1,2]' AND k = 1",
            "float",
        ),
        (
            "SELECT rowid FROM phenix_retrieve('nope', '[1,2,3]', 1)",
            "nope",
        ),
        (
            "SELECT rowid FROM phenix_retrieve('m', '[1,2,3]', 0)",
            "positive integer",
        ),
    ] {
        let e = q(sql);
        assert!(e.contains(want), "{sql}: {e}");
    }
    for (sql, want) in [
        (
            "CREATE VIRTUAL TABLE z1 USING phenix(a TEXT)",
            "no vector column",
        ),
        (
            "CREATE VIRTUAL TABLE z2 USING phenix(v float16[0])",
            "dimension",
        ),
        (
            "CREATE VIRTUAL TABLE z3 USING phenix(v float16[4] distance=hamming)",
            "unknown distance",
        ),
    ] {
        let e = c.execute_batch(sql).unwrap_err().to_string();
        assert!(e.contains(want), "{sql}: {e}");
    }
    // The table still works after every error.
    let n: i64 = c
        .query_row("SELECT count(*) FROM m", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 1);
}
