//! A quick throughput measurement (not a benchmark harness; benches/ has the criterion ones).
//! Run: cargo test --release -p phenix-models --test throughput -- --ignored --nocapture

mod common;

use std::time::Instant;

use phenix_models::{Model, MorganFeaturizer, RuntimeOptions};

fn approved_drugs() -> Vec<String> {
    let text =
        std::fs::read_to_string(common::repo_root().join("data/molecules/approved_drugs.csv"))
            .unwrap();
    // id,name,smiles: the name may be quoted and contain commas, the SMILES never does.
    text.lines()
        .skip(1)
        .map(|l| l.rsplit(',').next().unwrap().to_string())
        .collect()
}

#[test]
#[ignore = "measurement; run with --release -- --ignored --nocapture"]
fn molecules_per_second() {
    let smiles = approved_drugs();
    let fp = MorganFeaturizer::new(2, 2048).unwrap();
    let mut out = vec![0f32; 2048];
    for s in &smiles {
        fp.features_into(s, &mut out).unwrap(); // warm-up
    }
    let reps = 3;
    let t = Instant::now();
    for _ in 0..reps {
        for s in &smiles {
            fp.features_into(s, &mut out).unwrap();
        }
    }
    let n = (reps * smiles.len()) as f64;
    eprintln!(
        "featurize only (radius 2, 2048 bits, dense f32, 1 thread): {:.0} molecules/s",
        n / t.elapsed().as_secs_f64()
    );

    let t = Instant::now();
    for _ in 0..reps {
        for s in &smiles {
            let mol = chematic_smiles::parse(s).unwrap();
            let _ =
                chematic_fp::rdkit_morgan_bitvec(&mol, &chematic_fp::RdkitMorganConfig::default())
                    .unwrap();
        }
    }
    eprintln!(
        "  parse + chematic bits alone, without the RDKit-sanitization check: {:.0} molecules/s",
        n / t.elapsed().as_secs_f64()
    );

    let dir = common::fresh_dir("bench");
    common::run_python("make_test_bundle.py", &["--bench", dir.to_str().unwrap()]);
    let items: Vec<(&str, f64)> = smiles.iter().map(|s| (s.as_str(), 10.0)).collect();
    for threads in [1, 2] {
        let model = Model::load(
            &dir,
            &RuntimeOptions::default()
                .intra_threads(threads)
                .max_batch(256),
        )
        .unwrap();
        model.embed_molecules(&items[..256]).unwrap();
        let t = Instant::now();
        for _ in 0..reps {
            for chunk in items.chunks(256) {
                model.embed_molecules(chunk).unwrap();
            }
        }
        eprintln!(
            "featurize + ONNX (2048+1 -> 1024 -> 256 MLP, batch 256, {threads} intra-op thread(s)): {:.0} molecules/s",
            n / t.elapsed().as_secs_f64()
        );
        let rows = vec![0.5f32; 256 * 1024];
        let t = Instant::now();
        for _ in 0..10 {
            model.embed_phenomics(&rows).unwrap();
        }
        eprintln!(
            "phenomics (1024 -> 1024 -> 256 MLP, batch 256, {threads} thread(s)): {:.0} profiles/s",
            2560.0 / t.elapsed().as_secs_f64()
        );
    }
}
