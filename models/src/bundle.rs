//! The model bundle: a directory with `phenix-model.json`, `molecule.onnx` and `phenomics.onnx`.
//!
//! This module reads and checks the manifest on its own (no ONNX Runtime needed). Checking the
//! manifest against the ONNX files happens when [`crate::Model::load`] creates the sessions.
//! The format is described key by key in `docs/models.md`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::concentration::ConcentrationEncoding;
use crate::error::{Error, Result};
use crate::featurize::MorganFeaturizer;

/// The manifest's file name inside a bundle directory.
pub const MANIFEST_FILE: &str = "phenix-model.json";

/// The only `format_version` this crate reads.
pub const FORMAT_VERSION: u32 = 1;

/// The largest `embedding.dim`: the widest vector a phenix table stores (`phenix_core::store::MAX_DIM`).
/// Embedding buffers are sized from it before the model runs, so an unchecked value from a manifest
/// could ask for terabytes.
pub const MAX_EMBEDDING_DIM: usize = 65_536;

/// The largest `phenomics.input_dim` (profile buffers are sized from it before the model runs).
pub const MAX_INPUT_DIM: usize = 1 << 20;

/// `phenix-model.json`, as deserialized. Unknown keys are rejected everywhere except in
/// `provenance` (so a typo cannot silently fall back to a default).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Schema version of this file; must be [`FORMAT_VERSION`].
    pub format_version: u32,
    /// Model name (e.g. `default`).
    pub name: String,
    /// Model version (free text, e.g. `0.1.0`).
    pub version: String,
    /// The shared embedding space of both encoders.
    pub embedding: EmbeddingSpec,
    /// The molecule encoder.
    pub molecule: MoleculeSpec,
    /// The phenomics encoder.
    pub phenomics: PhenomicsSpec,
    /// How the model was made (reported, never interpreted).
    pub provenance: Provenance,
}

/// `embedding`: size and metric of the shared space.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbeddingSpec {
    /// Width of both encoders' outputs.
    pub dim: usize,
    /// How embeddings are compared.
    pub distance: Distance,
}

/// `embedding.distance`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Distance {
    /// 1 - cosine similarity. Outputs are L2-normalised by the model; load checks it on a probe.
    Cosine,
    /// Euclidean distance.
    L2,
    /// Negative dot product.
    Dot,
}

/// `molecule`: the molecule encoder and its inputs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MoleculeSpec {
    /// ONNX file name, relative to the bundle directory.
    pub onnx: String,
    /// How SMILES become the fingerprint input.
    pub featurizer: FeaturizerSpec,
    /// How the concentration (µM) becomes the concentration input.
    pub concentration: ConcentrationEncoding,
    /// Name of the ONNX input receiving the fingerprint, `[batch, n_bits]` float32.
    pub input_fingerprint: String,
    /// Name of the ONNX input receiving the concentration features, `[batch, n_features]`
    /// float32; `null` or absent exactly when the encoding is `none` or `implicit`.
    #[serde(default)]
    pub input_concentration: Option<String>,
    /// Name of the ONNX output, `[batch, dim]` float32.
    pub output: String,
}

/// `molecule.featurizer`, tagged by `kind`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum FeaturizerSpec {
    /// RDKit-compatible Morgan fingerprint.
    Morgan(MorganSpec),
}

/// `{"kind": "morgan", ...}`: RDKit `GetMorganGenerator(radius=radius, fpSize=n_bits,
/// includeChirality=chirality)`, bits (`GetFingerprint`) or counts (`GetCountFingerprint`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MorganSpec {
    /// Morgan radius, 0..=3.
    pub radius: u32,
    /// Fingerprint width: 128, 256, 512, 1024 or 2048.
    pub n_bits: usize,
    /// `true`: feature = number of environments folded onto the bit; `false`: 0/1.
    #[serde(default)]
    pub counts: bool,
    /// RDKit's `includeChirality`.
    #[serde(default)]
    pub chirality: bool,
}

// The one place that turns a manifest's spec into a featurizer: here, not in featurize.rs, so the
// dependency goes one way (bundle uses featurize; the featurizer knows nothing of manifests).
impl MorganFeaturizer {
    /// The featurizer a bundle's `{"kind": "morgan", ...}` asks for.
    pub fn from_spec(spec: &MorganSpec) -> Result<Self> {
        Ok(Self::new(spec.radius, spec.n_bits)?
            .with_counts(spec.counts)
            .with_chirality(spec.chirality))
    }
}

/// `phenomics`: the phenomics encoder and its input.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PhenomicsSpec {
    /// ONNX file name, relative to the bundle directory.
    pub onnx: String,
    /// Width of one phenomics profile.
    pub input_dim: usize,
    /// Applied in Rust before the ONNX model sees the profile.
    pub normalization: Normalization,
    /// Name of the ONNX input, `[batch, input_dim]` float32.
    pub input: String,
    /// Name of the ONNX output, `[batch, dim]` float32.
    pub output: String,
    /// Optional: the names of the profile's features, in order (`input_dim` distinct, non-empty
    /// names), so a caller can check that its profiles are laid out as the model was trained on.
    /// Bundles written before this key existed have none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub features: Option<Vec<String>>,
    /// Optional: how wells were normalised per plate before training (for example
    /// `{"method": "center", "against": "controls"}`). Recorded for the caller, who must normalise
    /// query profiles the same way; never applied by phenix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plate_normalization: Option<serde_json::Value>,
}

/// `phenomics.normalization`, tagged by `kind`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Normalization {
    /// Profiles go to the model unchanged.
    None,
    /// `(x - center) / scale`, element-wise.
    Standardize {
        /// `input_dim` finite values.
        center: Vec<f32>,
        /// `input_dim` finite, non-zero values.
        scale: Vec<f32>,
    },
}

impl Normalization {
    /// Normalizes one profile in place (`row.len()` must be the bundle's `input_dim`).
    pub fn apply(&self, row: &mut [f32]) {
        if let Normalization::Standardize { center, scale } = self {
            for ((x, c), s) in row.iter_mut().zip(center).zip(scale) {
                *x = (*x - c) / s;
            }
        }
    }
}

/// `provenance`: how the model was trained. Extra keys are kept in `extra`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Provenance {
    /// Training data description.
    pub training_data: String,
    /// Loss function.
    pub loss: String,
    /// Command that produced the bundle.
    pub command: String,
    /// Random seed.
    pub seed: u64,
    /// Train/test split description.
    pub split: String,
    /// Evaluation metrics, name -> value.
    #[serde(default)]
    pub metrics: BTreeMap<String, serde_json::Value>,
    /// Any other keys.
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

/// A bundle directory whose manifest has been read and checked (but whose ONNX files have not).
#[derive(Debug, Clone, PartialEq)]
pub struct ModelBundle {
    dir: PathBuf,
    manifest: Manifest,
}

impl ModelBundle {
    /// Reads `dir/phenix-model.json` and checks it on its own: format version, value ranges,
    /// lengths, and that `input_concentration` is present exactly when the encoding needs it.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        let path = dir.join(MANIFEST_FILE);
        let text = read_regular_file(&path).map_err(|source| Error::Io {
            path: path.clone(),
            source,
        })?;
        let text = String::from_utf8(text).map_err(|_| Error::Manifest {
            path: path.clone(),
            message: "not valid JSON: the file is not UTF-8 text".into(),
        })?;
        let manifest = Manifest::from_json(&text, &path)?;
        Ok(ModelBundle { dir, manifest })
    }

    /// A bundle whose manifest text is already in memory (e.g. compiled into the program), checked
    /// as [`ModelBundle::open`] checks a file. `dir` is not read: it names the bundle in messages
    /// and in [`ModelBundle::molecule_onnx`] / [`ModelBundle::phenomics_onnx`].
    pub fn from_manifest_text(dir: impl AsRef<Path>, text: &str) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        let manifest = Manifest::from_json(text, &dir.join(MANIFEST_FILE))?;
        Ok(ModelBundle { dir, manifest })
    }

    /// The bundle directory as given to [`ModelBundle::open`].
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The checked manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Path of the molecule encoder's ONNX file.
    pub fn molecule_onnx(&self) -> PathBuf {
        self.dir.join(&self.manifest.molecule.onnx)
    }

    /// Path of the phenomics encoder's ONNX file.
    pub fn phenomics_onnx(&self) -> PathBuf {
        self.dir.join(&self.manifest.phenomics.onnx)
    }

    /// The featurizer the manifest asks for.
    pub fn featurizer(&self) -> MorganFeaturizer {
        let FeaturizerSpec::Morgan(spec) = &self.manifest.molecule.featurizer;
        // validate() has checked radius and n_bits.
        MorganFeaturizer::from_spec(spec).expect("checked by Manifest::validate")
    }
}

/// Reads a regular file (following symlinks). Anything else — a FIFO, a device, a directory — is
/// an error, never a read: a FIFO would block the caller forever, a device could be endless. The
/// file is opened non-blocking (which makes opening a FIFO return at once) and checked on the
/// opened handle, so it cannot be swapped for something else between the check and the read.
pub(crate) fn read_regular_file(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(libc::O_NONBLOCK);
    }
    let mut file = options.open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file (a directory, FIFO, socket or device); bundle files must be regular files",
        ));
    }
    let mut bytes = Vec::with_capacity(meta.len().try_into().unwrap_or(0));
    file.read_to_end(&mut bytes)?;
    Ok(bytes)
}

impl Manifest {
    /// Parses and checks a manifest; `path` is only used in error messages.
    pub fn from_json(text: &str, path: &Path) -> Result<Self> {
        let bad = |message: String| Error::Manifest {
            path: path.to_path_buf(),
            message,
        };
        // Look at the version first, so that a future format is reported as such and not as
        // a list of unknown or missing keys.
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| bad(format!("not valid JSON: {e}")))?;
        match value.get("format_version") {
            None => return Err(bad("missing key `format_version`".into())),
            Some(v) => match v.as_u64() {
                Some(found) if found == u64::from(FORMAT_VERSION) => {}
                Some(found) => {
                    return Err(Error::VersionMismatch {
                        path: path.to_path_buf(),
                        expected: FORMAT_VERSION,
                        found,
                    });
                }
                None => {
                    return Err(bad(format!(
                        "`format_version` must be an integer, found {v}"
                    )))
                }
            },
        }
        let manifest: Manifest = serde_json::from_str(text).map_err(|e| bad(e.to_string()))?;
        manifest.validate().map_err(bad)?;
        Ok(manifest)
    }

    /// Checks values serde cannot: ranges, lengths, finiteness, and the
    /// `input_concentration` / encoding pairing. Returns the first problem found.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.embedding.dim == 0 {
            return Err("`embedding.dim` must be > 0".into());
        }
        let m = &self.molecule;
        for (key, v) in [
            ("molecule.onnx", &m.onnx),
            ("molecule.input_fingerprint", &m.input_fingerprint),
            ("molecule.output", &m.output),
            ("phenomics.onnx", &self.phenomics.onnx),
            ("phenomics.input", &self.phenomics.input),
            ("phenomics.output", &self.phenomics.output),
        ] {
            if v.is_empty() {
                return Err(format!("`{key}` must not be empty"));
            }
        }
        // The ONNX files live inside the bundle: a manifest cannot point the loader elsewhere.
        for (key, v) in [
            ("molecule.onnx", &m.onnx),
            ("phenomics.onnx", &self.phenomics.onnx),
        ] {
            let inside = Path::new(v)
                .components()
                .all(|c| matches!(c, std::path::Component::Normal(_)));
            if !inside {
                return Err(format!(
                    "`{key}` is {v:?}; it must be a file name relative to the bundle directory \
                     (no absolute path, `.` or `..`)"
                ));
            }
        }
        if self.embedding.dim > MAX_EMBEDDING_DIM {
            return Err(format!(
                "`embedding.dim` is {}; at most {MAX_EMBEDDING_DIM} (the widest phenix table)",
                self.embedding.dim
            ));
        }
        let FeaturizerSpec::Morgan(spec) = &m.featurizer;
        MorganFeaturizer::from_spec(spec).map_err(|e| format!("`molecule.featurizer`: {e}"))?;
        m.concentration
            .validate()
            .map_err(|e| format!("`molecule.concentration`: {e}"))?;
        match (&m.input_concentration, m.concentration.n_features()) {
            (Some(name), 0) => {
                return Err(format!(
                    "`molecule.input_concentration` is {name:?} but the concentration encoding \
                     {:?} has no features: set it to null, or choose an encoding with features",
                    m.concentration.kind()
                ));
            }
            (None, n) if n > 0 => {
                return Err(format!(
                    "the concentration encoding {:?} has {n} feature(s) but \
                     `molecule.input_concentration` is null: name the ONNX input that takes them",
                    m.concentration.kind()
                ));
            }
            (Some(name), _) if name.is_empty() || *name == m.input_fingerprint => {
                return Err(format!(
                    "`molecule.input_concentration` {name:?} must be non-empty and differ from \
                     `molecule.input_fingerprint`"
                ));
            }
            _ => {}
        }
        let p = &self.phenomics;
        if p.input_dim == 0 {
            return Err("`phenomics.input_dim` must be > 0".into());
        }
        if p.input_dim > MAX_INPUT_DIM {
            return Err(format!(
                "`phenomics.input_dim` is {}; at most {MAX_INPUT_DIM}",
                p.input_dim
            ));
        }
        if let Normalization::Standardize { center, scale } = &p.normalization {
            for (key, v) in [("center", center), ("scale", scale)] {
                if v.len() != p.input_dim {
                    return Err(format!(
                        "`phenomics.normalization.{key}` has {} values but `phenomics.input_dim` is {}",
                        v.len(),
                        p.input_dim
                    ));
                }
                if let Some(i) = v.iter().position(|x| !x.is_finite()) {
                    return Err(format!(
                        "`phenomics.normalization.{key}[{i}]` is {}, must be finite",
                        v[i]
                    ));
                }
            }
            if let Some(i) = scale.iter().position(|&x| x == 0.0) {
                return Err(format!(
                    "`phenomics.normalization.scale[{i}]` is 0; every scale must be non-zero \
                     (use 1 for constant features)"
                ));
            }
        }
        if let Some(names) = &p.features {
            if names.len() != p.input_dim {
                return Err(format!(
                    "`phenomics.features` has {} names but `phenomics.input_dim` is {}",
                    names.len(),
                    p.input_dim
                ));
            }
            let mut seen = std::collections::HashSet::with_capacity(names.len());
            for (i, n) in names.iter().enumerate() {
                if n.is_empty() {
                    return Err(format!(
                        "`phenomics.features[{i}]` is empty; every feature needs a name"
                    ));
                }
                if !seen.insert(n.as_str()) {
                    return Err(format!(
                        "`phenomics.features[{i}]` {n:?} appears twice; feature names must be distinct"
                    ));
                }
            }
        }
        if let Some(v) = &p.plate_normalization {
            if !v.is_object() {
                return Err("`phenomics.plate_normalization` must be a JSON object".into());
            }
        }
        Ok(())
    }
}
