//! Molecules per second through SQL with the shipped default model (featurize + ONNX): the per-row
//! `phenix_embed_molecule` path and the batched `phenix_embed_molecules` path, over the 2,628 approved
//! drugs at 10 µM. The Python baseline doing the same work (RDKit + onnxruntime, batches of 256) is
//! `benches/python/embed_baseline.py`. Also the featurizer alone on 1 and 2 threads.
//! Run: `cargo bench -p phenix-benches --bench embed`.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use rusqlite::Connection;
use std::time::Duration;

fn drugs() -> Vec<String> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../data/molecules/approved_drugs.csv"
    );
    let text = std::fs::read_to_string(path).expect("approved_drugs.csv");
    let mut out = Vec::new();
    for line in text.lines().skip(1) {
        // id,name,smiles; names may be quoted and hold commas, SMILES never do: take the last field.
        if let Some(s) = line.rsplit(',').next() {
            out.push(s.to_string());
        }
    }
    out
}

fn embed(c: &mut Criterion) {
    let smiles = drugs();
    let conn = Connection::open_in_memory().expect("open");
    phenix_sql::register(&conn).expect("register");
    conn.execute_batch("CREATE TABLE src(id INTEGER PRIMARY KEY, smiles TEXT, um REAL)")
        .expect("src");
    {
        let mut st = conn
            .prepare("INSERT INTO src(smiles, um) VALUES (?1, 10.0)")
            .expect("prep");
        for s in &smiles {
            st.execute([s]).expect("insert");
        }
    }
    // Load the model (and ONNX Runtime) outside the measurement.
    let _: Vec<u8> = conn
        .query_row(
            "SELECT phenix_embed_molecule('default', 'CCO', 1.0)",
            [],
            |r| r.get(0),
        )
        .expect("warm up");
    let mut g = c.benchmark_group("embed_approved_drugs_default_model");
    g.sample_size(10).measurement_time(Duration::from_secs(15));
    g.throughput(Throughput::Elements(smiles.len() as u64));
    g.bench_function("per_row_phenix_embed_molecule", |b| {
        let mut st = conn
            .prepare("SELECT sum(length(phenix_embed_molecule('default', smiles, um))) FROM src")
            .expect("prep");
        b.iter(|| st.query_row([], |r| r.get::<_, i64>(0)).expect("run"))
    });
    g.bench_function("batched_phenix_embed_molecules", |b| {
        let mut st = conn
            .prepare("SELECT sum(length(embedding)) FROM phenix_embed_molecules('default', 'SELECT id, smiles, um FROM src')")
            .expect("prep");
        b.iter(|| st.query_row([], |r| r.get::<_, i64>(0)).expect("run"))
    });
    g.finish();
}

/// The featurizer alone (SMILES → 2,048 Morgan bits, RDKit-identical), on 1 and 2 threads.
fn featurize(c: &mut Criterion) {
    let smiles = drugs();
    let fp = phenix_models::MorganFeaturizer::new(2, 2048).expect("featurizer");
    let mut g = c.benchmark_group("featurize_approved_drugs_r2_2048");
    g.sample_size(10).measurement_time(Duration::from_secs(10));
    g.throughput(Throughput::Elements(smiles.len() as u64));
    for threads in [1usize, 2] {
        g.bench_function(format!("threads_{threads}"), |b| {
            b.iter(|| {
                std::thread::scope(|s| {
                    for part in smiles.chunks(smiles.len().div_ceil(threads)) {
                        let fp = &fp;
                        s.spawn(move || {
                            let mut out = vec![0f32; 2048];
                            for m in part {
                                fp.features_into(m, &mut out).expect("valid SMILES");
                            }
                            out[0]
                        });
                    }
                })
            })
        });
    }
    g.finish();
}

criterion_group!(benches, embed, featurize);
criterion_main!(benches);
