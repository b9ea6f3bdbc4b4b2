//! The committed format-v1 fixture (`tests/fixtures/v1/`, written by `make.py` there) still opens and
//! gives the same answers, so a change to the vector-file header, the shadow tables or the slot layout
//! that would strand existing databases fails here. Its content is a function of the row number,
//! recomputed below; KNN answers are checked against an f64 brute force over those vectors.

mod common;

use common::{f16_bytes, TempDir};
use rusqlite::types::Value;
use rusqlite::Connection;
use std::path::{Path, PathBuf};

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/v1")
}

/// A private copy of the fixture (opening a table may write: the copy keeps the committed files
/// unchanged).
fn copy_fixture(to: &Path) -> PathBuf {
    let src = fixture_dir();
    let db = to.join("phenix-v1.db");
    std::fs::copy(src.join("phenix-v1.db"), &db).unwrap();
    let side = to.join("phenix-v1.db-phenix");
    std::fs::create_dir_all(&side).unwrap();
    for e in std::fs::read_dir(src.join("phenix-v1.db-phenix")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), side.join(e.file_name())).unwrap();
    }
    db
}

/// `mols.emb` of row `i` as make.py writes it (multiples of 1/8: exact in float16).
fn emb(i: i64) -> Vec<f32> {
    (0..8)
        .map(|j| ((i * 31 + j * 17) % 23 - 11) as f32 / 8.0)
        .collect()
}

/// `prof.p` of row `i`.
fn prof(i: i64) -> Vec<f32> {
    (0..4).map(|j| ((i * 3 + j * 5) % 7 - 3) as f32).collect()
}

/// The live rows of `mols`: 1..=48 without multiples of 7 (deleted before the compaction), then 49..=56.
fn mols_rowids() -> Vec<i64> {
    (1..=48).filter(|i| i % 7 != 0).chain(49..=56).collect()
}

fn mols_vector(i: i64) -> Vec<f32> {
    if i == 5 {
        emb(105)
    } else {
        emb(i)
    }
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let d: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    1.0 - d / (na * nb)
}

fn l2(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (*x as f64 - *y as f64).powi(2))
        .sum::<f64>()
        .sqrt()
}

/// Checks a KNN answer against the brute force `want` (all candidates with their f64 distance): the
/// distances by rank agree, and every returned row's own distance is the reported one.
fn check_knn(got: &[(i64, f64)], mut want: Vec<(i64, f64)>, k: usize, ctx: &str) {
    want.sort_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)));
    assert_eq!(got.len(), k.min(want.len()), "{ctx}: {got:?}");
    for (rank, (g, w)) in got.iter().zip(&want).enumerate() {
        assert!(
            (g.1 - w.1).abs() < 1e-5,
            "{ctx}: rank {rank}: {got:?} vs {want:?}"
        );
        let own = want.iter().find(|x| x.0 == g.0).expect("a live row");
        assert!(
            (own.1 - g.1).abs() < 1e-5,
            "{ctx}: row {}: {} vs {}",
            g.0,
            g.1,
            own.1
        );
    }
}

fn knn(c: &Connection, sql: &str, q: &[f32]) -> Vec<(i64, f64)> {
    c.prepare(sql)
        .unwrap()
        .query_map([common::json(q)], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap()
}

#[test]
fn format_v1_header_bytes() {
    // The file header of docs/design.md, field by field (little-endian).
    let c = Connection::open_with_flags(
        fixture_dir().join("phenix-v1.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let id: String = c
        .query_row(
            "SELECT value FROM mols_info WHERE key = 'table_id'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let b = std::fs::read(fixture_dir().join(format!("phenix-v1.db-phenix/{id}.g1.phx"))).unwrap();
    let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap());
    assert_eq!(&b[0..8], b"PHNXVEC\0", "magic");
    assert_eq!(u32_at(8), 1, "format version");
    assert_eq!(u32_at(12), 4096, "header length");
    assert_eq!(u32_at(16), 8, "dimension");
    assert_eq!((b[20], b[21]), (1, 1), "element type f16, metric cosine");
    assert_eq!(u32_at(24), 64, "row stride");
    let hex: String = b[32..48].iter().map(|x| format!("{x:02x}")).collect();
    assert_eq!(hex, id, "table id");
    assert_eq!(
        u64::from_le_bytes(b[48..56].try_into().unwrap()),
        1,
        "generation"
    );
    assert_eq!(
        b.len(),
        4096 + 51 * 64,
        "header + 51 committed rows of 64 bytes"
    );
}

#[test]
fn format_v1_fixture_opens_and_answers() {
    let dir = TempDir::new("fixture-v1");
    let db = copy_fixture(&dir.0);
    let c = common::open(&db);
    let ids = mols_rowids();
    let n: i64 = c
        .query_row("SELECT count(*) FROM mols", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, ids.len() as i64);
    // Every column of every row, vectors bit for bit.
    let mut st = c
        .prepare("SELECT rowid, emb, dose, plate, smiles, note FROM mols ORDER BY rowid")
        .unwrap();
    let rows: Vec<(i64, Vec<u8>, f64, i64, String, String)> = st
        .query_map([], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
            ))
        })
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap();
    assert_eq!(rows.len(), ids.len());
    for (r, &i) in rows.iter().zip(&ids) {
        let plate = if i == 3 { 9 } else { i % 4 };
        let want = (
            i,
            f16_bytes(&mols_vector(i)),
            i as f64 * 0.5,
            plate,
            "C".repeat(1 + (i % 5) as usize),
            format!("row {i}"),
        );
        assert_eq!(r, &want, "row {i}");
    }
    // KNN, unfiltered and filtered, against brute force.
    let all: Vec<(i64, Vec<f32>)> = ids.iter().map(|&i| (i, mols_vector(i))).collect();
    for (qi, q) in [
        emb(2),
        emb(60),
        emb(105),
        vec![1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.5],
    ]
    .iter()
    .enumerate()
    {
        let want: Vec<(i64, f64)> = all.iter().map(|(i, v)| (*i, cosine(q, v))).collect();
        let got = knn(
            &c,
            "SELECT rowid, distance FROM mols WHERE emb MATCH ?1 AND k = 7",
            q,
        );
        check_knn(&got, want.clone(), 7, &format!("query {qi}"));
        let plate1: Vec<(i64, f64)> = want
            .into_iter()
            .filter(|(i, _)| *i != 3 && i % 4 == 1)
            .collect();
        let got = knn(
            &c,
            "SELECT rowid, distance FROM mols WHERE emb MATCH ?1 AND k = 5 AND plate = 1",
            q,
        );
        check_knn(&got, plate1, 5, &format!("query {qi}, plate = 1"));
    }
    let profs: Vec<(i64, f64)> = (1..=10).map(|i| (i, l2(&prof(2), &prof(i)))).collect();
    let got = knn(
        &c,
        "SELECT rowid, distance FROM prof WHERE p MATCH ?1 AND k = 4",
        &prof(2),
    );
    check_knn(&got, profs, 4, "prof");
    // The shadow tables as format 1 has them, and a clean integrity check.
    let info = |t: &str, k: &str| -> Value {
        c.query_row(
            &format!("SELECT value FROM {t}_info WHERE key = ?1"),
            [k],
            |r| r.get(0),
        )
        .unwrap()
    };
    assert_eq!(info("mols", "format"), Value::Integer(1));
    assert_eq!(info("mols", "generation"), Value::Integer(1));
    assert_eq!(info("mols", "committed"), Value::Integer(51));
    assert!(matches!(info("mols", "remaps"), Value::Integer(m) if m > 0));
    assert_eq!(info("prof", "generation"), Value::Integer(0));
    for t in ["mols", "prof"] {
        let ok: String = c
            .query_row("SELECT phenix_check(?1)", [t], |r| r.get(0))
            .unwrap();
        assert_eq!(ok, "ok", "{t}");
    }
    // And it stays writable.
    c.execute(
        "INSERT INTO mols(rowid, emb, plate) VALUES (100, ?1, 1)",
        [common::json(&emb(7))],
    )
    .unwrap();
    // emb(7) is also rows 30 and 53's vector (the formula repeats every 23 rows): all at distance 0.
    let got = knn(
        &c,
        "SELECT rowid, distance FROM mols WHERE emb MATCH ?1 AND k = 5 AND plate = 1",
        &emb(7),
    );
    assert_eq!(
        got.iter()
            .filter(|r| r.1.abs() < 1e-6)
            .map(|r| r.0)
            .collect::<Vec<_>>(),
        vec![53, 100]
    );
}
