//! SMILES: mutations of real molecules and random bytes.

use crate::harness::*;
use proptest::prelude::*;
use rusqlite::types::Value;
use rusqlite::Connection;

fn real_smiles() -> Vec<String> {
    let dir = repo().join("data/molecules");
    let mut out = Vec::new();
    for (file, col) in [("approved_drugs.csv", 2usize), ("nci_5k.csv", 1)] {
        let text = std::fs::read_to_string(dir.join(file)).unwrap();
        for line in text.lines().skip(1) {
            // The SMILES is the last field (names may hold commas; SMILES never do).
            let s = if col == 2 {
                line.rsplit(',').next()
            } else {
                line.split(',').nth(col)
            };
            if let Some(s) = s.filter(|s| !s.is_empty()) {
                out.push(s.to_string());
            }
        }
    }
    assert!(out.len() > 5000, "{} SMILES", out.len());
    out
}

#[derive(Clone, Debug)]
enum Mutation {
    Delete(usize),
    Insert(usize, char),
    Replace(usize, char),
    Truncate(usize),
    Duplicate(usize, usize),
    Swap(usize),
}

fn smiles_char() -> impl Strategy<Value = char> {
    prop_oneof![
        8 => prop::sample::select("CNOSPFIBrclnos()[]=#@+-.%/\\*:~$H0123456789".chars().collect::<Vec<_>>()),
        1 => any::<char>(),
        1 => prop::sample::select(vec!['\0', '\n', ' ', '\u{7f}', 'é', '\u{202e}']),
    ]
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>()).prop_map(Mutation::Delete),
        (any::<usize>(), smiles_char()).prop_map(|(p, c)| Mutation::Insert(p, c)),
        (any::<usize>(), smiles_char()).prop_map(|(p, c)| Mutation::Replace(p, c)),
        (any::<usize>()).prop_map(Mutation::Truncate),
        (any::<usize>(), 1..20usize).prop_map(|(p, n)| Mutation::Duplicate(p, n)),
        (any::<usize>()).prop_map(Mutation::Swap),
    ]
}

fn mutate(s: &str, ms: &[Mutation]) -> String {
    let mut v: Vec<char> = s.chars().collect();
    for m in ms {
        let n = v.len();
        let at = |p: usize| if n == 0 { 0 } else { p % n };
        match *m {
            Mutation::Delete(p) if n > 0 => {
                v.remove(at(p));
            }
            Mutation::Insert(p, c) => v.insert(if n == 0 { 0 } else { p % (n + 1) }, c),
            Mutation::Replace(p, c) if n > 0 => v[at(p)] = c,
            Mutation::Truncate(p) => v.truncate(at(p)),
            Mutation::Duplicate(p, len) if n > 0 => {
                let a = at(p);
                let seg: Vec<char> = v[a..(a + len).min(n)].to_vec();
                v.splice(a..a, seg);
            }
            Mutation::Swap(p) if n > 1 => {
                let a = at(p) % (n - 1);
                v.swap(a, a + 1);
            }
            _ => {}
        }
    }
    v.into_iter().collect()
}

/// Fingerprint and embedding of one SMILES (as SQL text; invalid UTF-8 through `CAST(x'…' AS TEXT)`).
fn check_smiles(c: &Connection, smiles_sql: &str, what: &str) {
    let fp = one(
        c,
        &format!("SELECT phenix_fingerprint({smiles_sql}, 2, 2048)"),
    );
    let emb = one(
        c,
        &format!("SELECT phenix_embed_molecule('default', {smiles_sql}, 1.0)"),
    );
    match (fp, emb) {
        (Ok(Value::Text(t)), Ok(Value::Blob(b))) => {
            let bits: Vec<u32> =
                serde_json::from_str(&t).unwrap_or_else(|e| panic!("{what}: {t}: {e}"));
            assert!(
                bits.windows(2).all(|w| w[0] < w[1]),
                "{what}: not ascending: {t}"
            );
            assert!(
                bits.iter().all(|&b| b < 2048),
                "{what}: bit out of range: {t}"
            );
            assert_eq!(b.len(), 512, "{what}: embedding of {} bytes", b.len());
            let v: Vec<f32> = b
                .chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect();
            assert!(
                v.iter().all(|x| x.is_finite()),
                "{what}: non-finite embedding"
            );
            let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
            assert!((norm - 1.0).abs() < 1e-2, "{what}: embedding norm {norm}");
        }
        (Err(fe), Err(ee)) => {
            let fm = phenix_msg(&fe, what);
            let em = phenix_msg(&ee, what);
            for (m, f) in [(&fm, "phenix_fingerprint"), (&em, "phenix_embed_molecule")] {
                assert!(m.starts_with(&format!("phenix: {f}: ")), "{what}: {m}");
                assert!(
                    m.contains("invalid SMILES") || m.contains("not UTF-8"),
                    "{what}: the message does not say the SMILES is the problem: {m}"
                );
            }
        }
        (fp, emb) => panic!(
            "{what}: the fingerprint and the default model's featurizer disagree: {fp:?} / {emb:?}"
        ),
    }
}

fn sql_text(s: &str) -> String {
    if s.contains('\0') {
        // A literal cannot hold NUL: build the text from its bytes.
        format!("CAST({} AS TEXT)", blob_lit(s.as_bytes()))
    } else {
        format!("'{}'", s.replace('\'', "''"))
    }
}

#[test]
fn smiles_mutations_and_random_bytes() {
    let c = mem();
    let all = real_smiles();
    let strategy = prop_oneof![
        4 => (0..all.len(), prop::collection::vec(mutation(), 1..4))
            .prop_map(|(i, m)| (i, m, Vec::new())),
        1 => prop::collection::vec(any::<u8>(), 0..48).prop_map(|b| (0, Vec::new(), b)),
    ];
    runner(600)
        .run(&strategy, |(i, ms, bytes)| {
            if ms.is_empty() {
                let lit = format!("CAST({} AS TEXT)", blob_lit(&bytes));
                check_smiles(&c, &lit, &format!("bytes {bytes:?}"));
            } else {
                let s = mutate(&all[i], &ms);
                check_smiles(
                    &c,
                    &sql_text(&s),
                    &format!("{:?} mutated {ms:?} to {s:?}", all[i]),
                );
            }
            Ok(())
        })
        .unwrap();
    // Unmutated SMILES with every supported radius and width, against RDKit's bits
    // (data/molecules/morgan_reference.csv, made by RDKit's GetMorganGenerator).
    let text = std::fs::read_to_string(repo().join("data/molecules/morgan_reference.csv")).unwrap();
    let mut n = 0;
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split(',').collect();
        let (s, r, b, bits) = (f[0], f[1], f[2], f[3]);
        let want: Vec<u32> = bits
            .split_whitespace()
            .map(|x| x.parse().unwrap())
            .collect();
        let sql = format!("SELECT phenix_fingerprint({}, {r}, {b})", sql_text(s));
        let got: Vec<u32> = match one(&c, &sql).unwrap() {
            Value::Text(t) => serde_json::from_str(&t).unwrap(),
            other => panic!("{sql}: {other:?}"),
        };
        assert_eq!(got, want, "{sql}");
        n += 1;
    }
    assert!(n >= 300, "{n} reference rows");
    assert_no_panics();
}
