//! The featurizer against RDKit: the committed reference file, and RDKit itself (through
//! tests/models/rdkit_fingerprints.py) on every molecule in data/molecules/ at radii 1-3 ×
//! 1024/2048 bits, plus counts and chirality at radius 2 / 2048 bits.

mod common;

use std::collections::BTreeMap;

use phenix_models::MorganFeaturizer;

#[test]
fn morgan_reference_csv_300_of_300() {
    let path = common::repo_root().join("data/molecules/morgan_reference.csv");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut n = 0;
    let mut failures = Vec::new();
    for (i, line) in text.lines().enumerate().skip(1) {
        // smiles,radius,nbits,on_bits; SMILES have no commas, so split from the right.
        let mut f = line.rsplitn(4, ',');
        let (bits, nbits, radius, smiles) = (
            f.next().unwrap(),
            f.next().unwrap(),
            f.next().unwrap(),
            f.next().unwrap(),
        );
        let fp = MorganFeaturizer::new(radius.parse().unwrap(), nbits.parse().unwrap()).unwrap();
        let want: Vec<u32> = bits
            .split_whitespace()
            .map(|b| b.parse().unwrap())
            .collect();
        n += 1;
        match fp.on_bits(smiles) {
            Ok(got) if got == want => {}
            other => failures.push(format!(
                "line {}: {smiles}: want {want:?}, got {other:?}",
                i + 1
            )),
        }
    }
    assert_eq!(n, 300, "morgan_reference.csv should have 300 rows");
    assert!(
        failures.is_empty(),
        "{} of {n} differ:\n{}",
        failures.len(),
        failures.join("\n")
    );
    eprintln!("morgan_reference.csv: {n}/{n} identical");
}

#[test]
fn every_data_molecule_matches_rdkit() {
    let dir = common::fresh_dir("rdkit-fp");
    let tsv = dir.join("rdkit_fingerprints.tsv");
    let mutants = dir.join("mutants.tsv");
    common::run_python(
        "rdkit_fingerprints.py",
        &[
            "--out",
            tsv.to_str().unwrap(),
            "--mutants",
            mutants.to_str().unwrap(),
        ],
    );
    check_mutants(&std::fs::read_to_string(&mutants).unwrap());
    let text = std::fs::read_to_string(&tsv).unwrap();

    // (radius, n_bits, counts, chirality) -> (rows, identical)
    let mut stats: BTreeMap<(u32, usize, bool, bool), (usize, usize)> = BTreeMap::new();
    let mut failures = Vec::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split('\t').collect();
        assert_eq!(f.len(), 8, "bad TSV line {line:?}");
        let (file, row, smiles) = (f[0], f[1], f[2]);
        let (radius, n_bits): (u32, usize) = (f[3].parse().unwrap(), f[4].parse().unwrap());
        let (counts, chirality) = (f[5] == "1", f[6] == "1");
        let fp = MorganFeaturizer::new(radius, n_bits)
            .unwrap()
            .with_counts(counts)
            .with_chirality(chirality);
        let want: Vec<(u32, u32)> = f[7]
            .split_whitespace()
            .map(|t| match t.split_once(':') {
                Some((b, c)) => (b.parse().unwrap(), c.parse().unwrap()),
                None => (t.parse().unwrap(), 1),
            })
            .collect();
        let got: Result<Vec<(u32, u32)>, _> = if counts {
            fp.bit_counts(smiles)
        } else {
            fp.on_bits(smiles)
                .map(|b| b.into_iter().map(|b| (b, 1)).collect())
        };
        let s = stats
            .entry((radius, n_bits, counts, chirality))
            .or_default();
        s.0 += 1;
        match got {
            Ok(got) if got == want => s.1 += 1,
            Ok(got) => {
                let only_rdkit: Vec<_> = want.iter().filter(|x| !got.contains(x)).collect();
                let only_phenix: Vec<_> = got.iter().filter(|x| !want.contains(x)).collect();
                failures.push(format!(
                    "{file} row {row} {smiles} (radius {radius}, {n_bits} bits, counts {counts}, chirality {chirality}): \
                     (bit, count) only in RDKit {only_rdkit:?}, only in phenix {only_phenix:?}"
                ));
            }
            Err(e) => failures.push(format!(
                "{file} row {row} (radius {radius}, {n_bits} bits, counts {counts}, chirality {chirality}): phenix error: {e}"
            )),
        }
    }
    let summary: Vec<String> = stats
        .iter()
        .map(|((r, n, c, ch), (rows, ok))| {
            format!("radius {r} n_bits {n} counts {c} chirality {ch}: {ok}/{rows} identical")
        })
        .collect();
    eprintln!("{}", summary.join("\n"));
    assert!(
        stats.len() == 8
            && stats
                .values()
                .all(|s| s.0 == stats.values().next().unwrap().0)
    );
    assert!(
        failures.is_empty(),
        "{} (molecule, setting) rows differ from RDKit:\n{}\n{}",
        failures.len(),
        summary.join("\n"),
        failures
            .iter()
            .take(30)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// Randomly edited data SMILES: phenix accepts exactly those RDKit's MolFromSmiles accepts,
/// and gives the same radius-2 / 2048-bit fingerprint for them.
fn check_mutants(text: &str) {
    let fp = MorganFeaturizer::new(2, 2048).unwrap();
    let (mut n, mut accepted, mut failures) = (0, 0, Vec::new());
    for line in text.lines() {
        let f: Vec<&str> = line.split('\t').collect();
        let (rdkit_ok, smiles) = (f[0] == "1", f[1]);
        n += 1;
        accepted += usize::from(rdkit_ok);
        match (rdkit_ok, fp.on_bits(smiles)) {
            (true, Ok(got)) => {
                let want: Vec<u32> = f[2]
                    .split_whitespace()
                    .map(|b| b.parse().unwrap())
                    .collect();
                if got != want {
                    failures.push(format!(
                        "{smiles}: bits differ: RDKit {want:?}, phenix {got:?}"
                    ));
                }
            }
            (false, Err(_)) => {}
            (true, Err(e)) => {
                failures.push(format!("{smiles}: RDKit accepts, phenix rejects: {e}"))
            }
            (false, Ok(_)) => failures.push(format!("{smiles}: RDKit rejects, phenix accepts")),
        }
    }
    eprintln!(
        "mutants: {} of {n} agree with RDKit ({accepted} accepted by RDKit, {} rejected)",
        n - failures.len(),
        n - accepted
    );
    assert!(
        failures.is_empty(),
        "{} of {n} mutants disagree with RDKit:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
