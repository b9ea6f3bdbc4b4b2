//! The crate's one error type.

use std::path::PathBuf;

/// Which of a bundle's two encoders an error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Encoder {
    /// `molecule.onnx`: Morgan fingerprint (+ concentration features) -> embedding.
    Molecule,
    /// `phenomics.onnx`: phenomics profile -> embedding.
    Phenomics,
}

impl std::fmt::Display for Encoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Encoder::Molecule => "molecule",
            Encoder::Phenomics => "phenomics",
        })
    }
}

/// Everything that can go wrong in `phenix-models`.
///
/// Each message names the file, field or input involved and says how to fix the problem.
/// The enum is `#[non_exhaustive]`: match the variants you handle and keep a `_` arm.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A SMILES string could not be parsed or fingerprinted.
    #[error("invalid SMILES {smiles:?}: {reason}; check the SMILES (RDKit's Chem.MolFromSmiles must accept it)")]
    InvalidSmiles {
        /// The SMILES as given.
        smiles: String,
        /// Why it was rejected.
        reason: String,
    },

    /// A featurizer setting this crate cannot compute bit-identically to RDKit.
    #[error("unsupported featurizer setting {field} = {value}: {supported}")]
    UnsupportedFeaturizer {
        /// The field (`radius`, `n_bits`, `kind`).
        field: &'static str,
        /// The value found.
        value: String,
        /// What is supported.
        supported: &'static str,
    },

    /// A concentration was not finite and positive where the bundle's encoding needs one.
    #[error("concentration {value} µM for {smiles:?} is invalid: the encoding {encoding:?} needs a finite concentration > 0 in µM")]
    InvalidConcentration {
        /// The SMILES the concentration belongs to.
        smiles: String,
        /// The value given.
        value: f64,
        /// The bundle's concentration encoding kind.
        encoding: &'static str,
    },

    /// An input slice had the wrong length or contained a non-finite value.
    #[error("invalid input: {0}")]
    InvalidInput(String),

    /// A bundle file could not be read.
    #[error("cannot read {path}: {source}; check that the model bundle directory exists and is readable")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },

    /// `phenix-model.json` is not valid JSON or misses / mistypes a field.
    #[error("{path}: {message}; see docs/models.md for the bundle format")]
    Manifest {
        /// The manifest file.
        path: PathBuf,
        /// What is wrong (serde's message includes line and column).
        message: String,
    },

    /// The manifest's `format_version` is not the one this crate reads.
    #[error("{path}: format_version {found} is not supported (this phenix reads format_version {expected}); re-export the bundle or upgrade phenix")]
    VersionMismatch {
        /// The manifest file.
        path: PathBuf,
        /// What this crate reads.
        expected: u32,
        /// What the file says.
        found: u64,
    },

    /// The manifest and an ONNX file disagree (input/output names, element types, shapes),
    /// or an encoder's probe output is not what the manifest promises.
    #[error("{encoder} encoder ({path}): {message}")]
    BundleMismatch {
        /// Which encoder.
        encoder: Encoder,
        /// The ONNX file.
        path: PathBuf,
        /// What does not fit, and how to fix it.
        message: String,
    },

    /// ONNX Runtime could not load an ONNX file (missing, truncated, not ONNX, unsupported opset).
    #[error("{encoder} encoder: ONNX Runtime cannot load {path}: {message}; restore the file, or re-export the model as ONNX with an opset this ONNX Runtime supports")]
    OnnxLoad {
        /// Which encoder.
        encoder: Encoder,
        /// The ONNX file.
        path: PathBuf,
        /// ONNX Runtime's message.
        message: String,
    },

    /// The ONNX Runtime shared library could not be found or loaded, or has the wrong version.
    #[error("ONNX Runtime library: {message}. Set ORT_DYLIB_PATH to libonnxruntime.so from the onnxruntime==1.32.0 wheel (tools/setup links it to .ort/libonnxruntime.so), or see docs/models.md for where phenix looks")]
    RuntimeLibrary {
        /// What went wrong, with every path tried.
        message: String,
    },

    /// The requested execution provider is not available in this ONNX Runtime build or on this machine.
    #[error("execution provider {provider} is not available: {reason}; use the cpu provider, or install an ONNX Runtime build with {provider} support (e.g. onnxruntime-gpu) and its drivers")]
    ExecutionProviderUnavailable {
        /// The provider asked for (`cuda`).
        provider: &'static str,
        /// Why it failed.
        reason: String,
    },

    /// ONNX Runtime failed while creating a session or running a model.
    #[error("{encoder} encoder: ONNX Runtime error: {message}")]
    Runtime {
        /// Which encoder.
        encoder: Encoder,
        /// ONNX Runtime's message.
        message: String,
    },
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
