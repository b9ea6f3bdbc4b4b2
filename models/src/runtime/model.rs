//! [`Model`]: a loaded bundle with its two sessions, the process-wide model cache, and embedding.

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use ort::session::Session;
use ort::value::TensorRef;

use super::library::{runtime, RuntimeInfo};
use super::options::RuntimeOptions;
use super::session::{check_io, create_session, OnnxSource};
use super::{lock, panic_message};
use crate::bundle::{Distance, Manifest, ModelBundle};
use crate::error::{Encoder, Error, Result};
use crate::featurize::MorganFeaturizer;

/// A loaded bundle: the checked manifest, the featurizer and one ONNX Runtime session per
/// encoder. `Send + Sync`; each session runs one batch at a time (a `Mutex` per encoder).
pub struct Model {
    bundle: ModelBundle,
    featurizer: MorganFeaturizer,
    /// Most threads [`Model::embed_molecules`] featurizes a batch on (see `featurize_batch`).
    featurize_threads: usize,
    options: RuntimeOptions,
    runtime: RuntimeInfo,
    molecule: Mutex<Session>,
    phenomics: Mutex<Session>,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("dir", &self.bundle.dir())
            .field("name", &self.bundle.manifest().name)
            .field("version", &self.bundle.manifest().version)
            .field("options", &self.options)
            .field("runtime", &self.runtime)
            .finish_non_exhaustive()
    }
}

/// Probe molecules run through the molecule encoder on load (`(SMILES, µM)`).
const PROBE_MOLECULES: [(&str, f64); 2] =
    [("CC(=O)Oc1ccccc1C(=O)O", 1.0), ("c1ccc2[nH]ccc2c1", 10.0)];
/// Molecules a featurizer thread takes at a time in [`Model::embed_molecules`].
const FEATURIZE_BLOCK: usize = 16;
/// How far from 1 an output norm may be for `distance: cosine`.
const UNIT_NORM_TOLERANCE: f32 = 1e-3;

type CacheKey = (
    PathBuf,
    RuntimeOptions,
    Vec<Option<(std::time::SystemTime, u64)>>,
);
static CACHE: OnceLock<Mutex<HashMap<CacheKey, Arc<Model>>>> = OnceLock::new();

/// Drops every model held by [`Model::load_cached`] (sessions are freed once no caller holds them).
pub fn clear_model_cache() {
    if let Some(c) = CACHE.get() {
        lock(c).clear();
    }
    #[cfg(feature = "default-model")]
    crate::default_bundle::clear_cache();
}

impl Model {
    /// Loads a bundle: reads and checks the manifest, loads ONNX Runtime if needed, creates
    /// both sessions with `options`, checks the manifest against each model's real inputs and
    /// outputs (names, float32, rank 2, widths `n_bits` / concentration features /
    /// `input_dim` / `dim`, dynamic batch axis), then runs a two-row probe through each
    /// encoder and checks the output shape, finiteness and, for `distance: cosine`, unit L2 norm.
    pub fn load(dir: impl AsRef<Path>, options: &RuntimeOptions) -> Result<Model> {
        let bundle = ModelBundle::open(dir)?;
        let (mol, phen) = (bundle.molecule_onnx(), bundle.phenomics_onnx());
        Model::build(
            bundle,
            OnnxSource::File(&mol),
            OnnxSource::File(&phen),
            options,
        )
    }

    /// [`Model::load`] for a bundle held in memory: the manifest's text and the bytes of both ONNX
    /// files (the manifest's `onnx` file names are not read). Nothing is read from or written to
    /// the file system except the ONNX Runtime library itself. `label` stands for the bundle
    /// directory in [`Model::bundle`] and in error messages (e.g. `<compiled-in default>`).
    /// The checks and the probe are the same as [`Model::load`]'s.
    pub fn load_from_memory(
        label: impl Into<PathBuf>,
        manifest: &str,
        molecule_onnx: &[u8],
        phenomics_onnx: &[u8],
        options: &RuntimeOptions,
    ) -> Result<Model> {
        let label = label.into();
        let bundle = ModelBundle::from_manifest_text(&label, manifest)?;
        Model::build(
            bundle,
            OnnxSource::Memory(molecule_onnx),
            OnnxSource::Memory(phenomics_onnx),
            options,
        )
    }

    fn build(
        bundle: ModelBundle,
        molecule: OnnxSource<'_>,
        phenomics: OnnxSource<'_>,
        options: &RuntimeOptions,
    ) -> Result<Model> {
        let featurizer = bundle.featurizer();
        let rt = runtime(options.library_path.as_deref())?;
        let manifest = bundle.manifest();

        let mol_path = bundle.molecule_onnx();
        let mol_session = create_session(&rt, molecule, &mol_path, Encoder::Molecule, options)?;
        let mut mol_inputs = vec![(
            manifest.molecule.input_fingerprint.as_str(),
            featurizer.n_bits(),
            "molecule.input_fingerprint (featurizer n_bits)",
        )];
        if let Some(name) = &manifest.molecule.input_concentration {
            mol_inputs.push((
                name.as_str(),
                manifest.molecule.concentration.n_features(),
                "molecule.input_concentration (concentration features)",
            ));
        }
        check_io(
            &mol_session,
            Encoder::Molecule,
            &mol_path,
            &mol_inputs,
            (&manifest.molecule.output, manifest.embedding.dim),
        )?;

        let phen_path = bundle.phenomics_onnx();
        let phen_session = create_session(&rt, phenomics, &phen_path, Encoder::Phenomics, options)?;
        check_io(
            &phen_session,
            Encoder::Phenomics,
            &phen_path,
            &[(
                manifest.phenomics.input.as_str(),
                manifest.phenomics.input_dim,
                "phenomics.input_dim",
            )],
            (&manifest.phenomics.output, manifest.embedding.dim),
        )?;

        // More featurizer threads than cores cannot help CPU-bound work. Decided once here:
        // `available_parallelism` reads cgroup files, too slow for every one-molecule call.
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let featurize_threads = match options.intra_threads {
            0 => cores,
            n => n.min(cores),
        };
        let model = Model {
            featurizer,
            featurize_threads,
            options: options.clone(),
            runtime: rt.info.clone(),
            molecule: Mutex::new(mol_session),
            phenomics: Mutex::new(phen_session),
            bundle,
        };
        model.probe()?;
        Ok(model)
    }

    /// [`Model::load`] through a process-wide cache keyed by the bundle's canonical path, the
    /// options, and the size and modification time of its three files: a bundle is loaded
    /// once, and loaded again after one of its files changes.
    pub fn load_cached(dir: impl AsRef<Path>, options: &RuntimeOptions) -> Result<Arc<Model>> {
        let dir = dir.as_ref();
        let canonical = std::fs::canonicalize(dir).map_err(|source| Error::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let stamp = |p: PathBuf| {
            std::fs::metadata(p)
                .ok()
                .and_then(|m| Some((m.modified().ok()?, m.len())))
        };
        let mut stamps = vec![stamp(canonical.join(crate::bundle::MANIFEST_FILE))];
        if let Ok(b) = ModelBundle::open(&canonical) {
            stamps.push(stamp(b.molecule_onnx()));
            stamps.push(stamp(b.phenomics_onnx()));
        }
        let key = (canonical.clone(), options.clone(), stamps);
        let cache = CACHE.get_or_init(Default::default);
        if let Some(m) = lock(cache).get(&key) {
            return Ok(m.clone());
        }
        // Load outside the lock: loading takes a while and may fail.
        let model = Arc::new(Model::load(&canonical, options)?);
        let mut c = lock(cache);
        c.retain(|(p, o, _), _| !(p == &canonical && o == options));
        Ok(c.entry(key).or_insert(model).clone())
    }

    /// The bundle (directory and manifest).
    pub fn bundle(&self) -> &ModelBundle {
        &self.bundle
    }

    /// The manifest.
    pub fn manifest(&self) -> &Manifest {
        self.bundle.manifest()
    }

    /// Embedding width (`embedding.dim`).
    pub fn dim(&self) -> usize {
        self.manifest().embedding.dim
    }

    /// Embedding distance (`embedding.distance`).
    pub fn distance(&self) -> Distance {
        self.manifest().embedding.distance
    }

    /// The molecule featurizer.
    pub fn featurizer(&self) -> &MorganFeaturizer {
        &self.featurizer
    }

    /// The options the model was loaded with.
    pub fn options(&self) -> &RuntimeOptions {
        &self.options
    }

    /// The ONNX Runtime library in use.
    pub fn runtime(&self) -> &RuntimeInfo {
        &self.runtime
    }

    /// Embeds `(SMILES, concentration in µM)` pairs; returns `items.len() × dim` floats,
    /// row-major. The concentration is ignored by the `none` and `implicit` encodings and must
    /// be finite and `> 0` otherwise. Fails on the first invalid SMILES or concentration
    /// (the error names it); nothing is returned for the other items then.
    pub fn embed_molecules(&self, items: &[(&str, f64)]) -> Result<Vec<f32>> {
        let m = &self.manifest().molecule;
        let n_bits = self.featurizer.n_bits();
        let n_conc = m.concentration.n_features();
        let mut out = Vec::with_capacity(items.len() * self.dim());
        let batch = self.options.max_batch.min(items.len());
        // One input buffer for all batches (`features_into` overwrites every value of a row).
        let mut fp = vec![0f32; batch * n_bits];
        let mut conc = vec![0f32; batch * n_conc];
        for chunk in items.chunks(self.options.max_batch) {
            let rows = chunk.len();
            let fp = &mut fp[..rows * n_bits];
            let conc = &mut conc[..rows * n_conc];
            self.featurize_batch(chunk, fp, conc)?;
            let mut inputs = vec![(m.input_fingerprint.as_str(), &fp[..], n_bits)];
            if let Some(name) = &m.input_concentration {
                inputs.push((name.as_str(), &conc[..], n_conc));
            }
            self.run(Encoder::Molecule, rows, &inputs, &m.output, &mut out)?;
        }
        Ok(out)
    }

    /// Fills `fp` (`items.len() × n_bits`) and `conc` (`items.len() × n_conc`) for one batch.
    /// The featurizer is most of the per-molecule cost, so a batch is featurized on up to
    /// `intra_threads` threads (at most one per core; one per core when 0) that take blocks of [`FEATURIZE_BLOCK`]
    /// molecules from a shared queue: molecules differ in size, and fixed halves would leave
    /// one core idle at the end. Small batches stay on this thread. On failure, the error is
    /// the first failing molecule in input order.
    fn featurize_batch(
        &self,
        items: &[(&str, f64)],
        fp: &mut [f32],
        conc: &mut [f32],
    ) -> Result<()> {
        let m = &self.manifest().molecule;
        let n_bits = self.featurizer.n_bits();
        let n_conc = m.concentration.n_features();
        let featurize = |items: &[(&str, f64)], fp: &mut [f32], conc: &mut [f32]| -> Result<()> {
            for (i, &(smiles, c)) in items.iter().enumerate() {
                self.featurizer
                    .features_into(smiles, &mut fp[i * n_bits..(i + 1) * n_bits])?;
                if !m
                    .concentration
                    .encode_into(c, &mut conc[i * n_conc..(i + 1) * n_conc])
                {
                    return Err(Error::InvalidConcentration {
                        smiles: smiles.to_string(),
                        value: c,
                        encoding: m.concentration.kind(),
                    });
                }
            }
            Ok(())
        };
        let threads = self
            .featurize_threads
            .min(items.len().div_ceil(2 * FEATURIZE_BLOCK));
        if threads <= 1 {
            return featurize(items, fp, conc);
        }
        // Blocks in input order; each worker pops the next one. `conc` is empty when the encoding
        // has no features: then every block gets an empty slice.
        let blocks: Vec<_> = items
            .chunks(FEATURIZE_BLOCK)
            .zip(fp.chunks_mut(FEATURIZE_BLOCK * n_bits))
            .zip(
                conc.chunks_mut((FEATURIZE_BLOCK * n_conc).max(1))
                    .chain(std::iter::repeat_with(|| &mut [][..])),
            )
            .enumerate()
            .collect();
        let queue = Mutex::new(blocks.into_iter());
        let first_error: Mutex<Option<(usize, Error)>> = Mutex::new(None);
        let work = || {
            loop {
                // A statement of its own: the guard must be dropped before featurizing (in a
                // `while let` scrutinee it would live through the loop body).
                let next = lock(&queue).next();
                let Some((index, ((items, fp), conc))) = next else {
                    break;
                };
                if let Err(e) = featurize(items, fp, conc) {
                    let mut slot = lock(&first_error);
                    if slot.as_ref().is_none_or(|(i, _)| index < *i) {
                        *slot = Some((index, e));
                    }
                }
            }
        };
        let panicked = std::thread::scope(|sc| {
            let helpers: Vec<_> = (1..threads).map(|_| sc.spawn(work)).collect();
            work();
            helpers.into_iter().any(|h| h.join().is_err())
        });
        if panicked {
            return Err(Error::InvalidInput("featurizer thread panicked".into()));
        }
        match first_error.into_inner().unwrap_or_else(|p| p.into_inner()) {
            Some((_, e)) => Err(e),
            None => Ok(()),
        }
    }

    /// Embeds phenomics profiles given as `rows × input_dim` floats, row-major (raw, before
    /// normalization: the bundle's normalization is applied here). Returns `rows × dim` floats.
    pub fn embed_phenomics(&self, rows: &[f32]) -> Result<Vec<f32>> {
        let p = &self.manifest().phenomics;
        let d = p.input_dim;
        if !rows.len().is_multiple_of(d) {
            return Err(Error::InvalidInput(format!(
                "phenomics input has {} values, not a multiple of input_dim {d}: pass rows × {d} floats",
                rows.len()
            )));
        }
        if let Some(i) = rows.iter().position(|x| !x.is_finite()) {
            return Err(Error::InvalidInput(format!(
                "phenomics row {} feature {} is {}: profiles must be finite",
                i / d,
                i % d,
                rows[i]
            )));
        }
        let mut out = Vec::with_capacity(rows.len() / d * self.dim());
        for chunk in rows.chunks(self.options.max_batch * d) {
            let mut x = chunk.to_vec();
            for row in x.chunks_mut(d) {
                p.normalization.apply(row);
            }
            self.run(
                Encoder::Phenomics,
                chunk.len() / d,
                &[(p.input.as_str(), x.as_slice(), d)],
                &p.output,
                &mut out,
            )?;
        }
        Ok(out)
    }

    /// Runs one batch and appends the checked `[rows, dim]` output to `out`.
    fn run(
        &self,
        encoder: Encoder,
        rows: usize,
        inputs: &[(&str, &[f32], usize)],
        output: &str,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        let session = match encoder {
            Encoder::Molecule => &self.molecule,
            Encoder::Phenomics => &self.phenomics,
        };
        let dim = self.dim();
        let err = |message: String| Error::Runtime { encoder, message };
        let result = catch_unwind(AssertUnwindSafe(|| -> Result<()> {
            let mut values = Vec::with_capacity(inputs.len());
            for &(name, data, width) in inputs {
                let t = TensorRef::from_array_view(([rows, width], data))
                    .map_err(|e| err(format!("input {name:?}: {e}")))?;
                values.push((name, t));
            }
            let mut s = lock(session);
            let outputs = s.run(values).map_err(|e| err(e.to_string()))?;
            let value = outputs
                .get(output)
                .ok_or_else(|| err(format!("the model returned no output {output:?}")))?;
            let (shape, data) = value
                .try_extract_tensor::<f32>()
                .map_err(|e| err(format!("output {output:?}: {e}")))?;
            if **shape != [rows as i64, dim as i64] {
                return Err(err(format!(
                    "output {output:?} has shape {:?} for a batch of {rows}, expected [{rows}, {dim}] (embedding.dim)",
                    &**shape
                )));
            }
            if let Some(i) = data.iter().position(|x| !x.is_finite()) {
                return Err(err(format!(
                    "output {output:?} row {} has a non-finite value ({}); the model is broken for this input",
                    i / dim,
                    data[i]
                )));
            }
            out.extend_from_slice(data);
            Ok(())
        }));
        match result {
            Ok(r) => r,
            Err(p) => Err(err(format!("ONNX Runtime panicked: {}", panic_message(p)))),
        }
    }

    fn probe(&self) -> Result<()> {
        let dim = self.dim();
        let mol = self
            .embed_molecules(&PROBE_MOLECULES)
            .map_err(|e| self.probe_error(Encoder::Molecule, e))?;
        let p = &self.manifest().phenomics;
        let mut rows = Vec::with_capacity(2 * p.input_dim);
        for r in 0..2 {
            for i in 0..p.input_dim {
                let z = ((i * 7 + r * 3 + 1) as f32).sin();
                rows.push(match &p.normalization {
                    crate::bundle::Normalization::Standardize { center, scale } => {
                        center[i] + scale[i] * z
                    }
                    _ => z,
                });
            }
        }
        let phen = self
            .embed_phenomics(&rows)
            .map_err(|e| self.probe_error(Encoder::Phenomics, e))?;
        if self.distance() == Distance::Cosine {
            for (encoder, out) in [(Encoder::Molecule, &mol), (Encoder::Phenomics, &phen)] {
                for (r, row) in out.chunks(dim).enumerate() {
                    let norm = row.iter().map(|x| x * x).sum::<f32>().sqrt();
                    if (norm - 1.0).abs() > UNIT_NORM_TOLERANCE {
                        return Err(Error::BundleMismatch {
                            encoder,
                            path: self.onnx_path(encoder),
                            message: format!(
                                "embedding.distance is cosine but the output of probe row {r} has L2 norm {norm}, not 1: \
                                 end the model with an L2 normalisation (x / max(||x||, eps))"
                            ),
                        });
                    }
                }
            }
        }
        Ok(())
    }

    fn onnx_path(&self, encoder: Encoder) -> PathBuf {
        match encoder {
            Encoder::Molecule => self.bundle.molecule_onnx(),
            Encoder::Phenomics => self.bundle.phenomics_onnx(),
        }
    }

    fn probe_error(&self, encoder: Encoder, e: Error) -> Error {
        match e {
            Error::Runtime { message, .. } => Error::BundleMismatch {
                encoder,
                path: self.onnx_path(encoder),
                message: format!("running a probe input failed: {message}"),
            },
            other => other,
        }
    }
}
