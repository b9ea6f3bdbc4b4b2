//! # phenix-models
//!
//! Everything between a SMILES string or a phenomics profile and an embedding vector:
//!
//! * the **model bundle** ([`ModelBundle`], [`Manifest`]): a directory with
//!   `phenix-model.json`, `molecule.onnx` and `phenomics.onnx`, schema-versioned
//!   (`format_version` 1, described key by key in `docs/models.md`);
//! * the **featurizer** ([`MorganFeaturizer`]): SMILES -> Morgan fingerprint bits (or counts),
//!   bit-identical to RDKit's `GetMorganGenerator(radius, fpSize)`, in pure Rust;
//! * **concentration encodings** ([`ConcentrationEncoding`]): dose in µM -> model features;
//! * the **runtime** ([`Model`]): ONNX Runtime sessions (one per bundle and encoder, cached by
//!   [`Model::load_cached`]) that embed batches of molecules and profiles.
//!
//! * the **default bundle** ([`default_bundle`], cargo feature `default-model`, on by default):
//!   `models/default/` compiled in and loaded from memory, writing nothing to disk.
//!
//! It does **not** own SQLite (the `sql` crate wraps this one into SQL functions), vector
//! storage or search (`phenix-core`), or training (`models/training/`).
//!
//! Invariants:
//! * a [`Model`] exists only after its manifest was checked against both ONNX files (names,
//!   float32, rank 2, widths, dynamic batch axis) and a probe input ran through each encoder;
//! * embeddings are `dim` floats a row, row-major; for `distance: cosine` the model's outputs
//!   are L2-normalised (checked on the probe at load time, not on every call);
//! * no `ort` panic escapes: a missing ONNX Runtime library is [`Error::RuntimeLibrary`].
//!
//! ONNX Runtime is loaded at run time (`ort`'s `load-dynamic`); where the library is looked
//! for is documented at [`runtime_library_candidates`].
//!
//! ## Example
//!
//! ```
//! use phenix_models::{MorganFeaturizer, ConcentrationEncoding};
//!
//! let fp = MorganFeaturizer::new(2, 2048)?;
//! assert_eq!(fp.on_bits("CCO")?, [80, 222, 294, 807, 1057, 1410]);
//! assert!(fp.on_bits("C1CC").is_err()); // unclosed ring: the error names the SMILES
//!
//! let log = ConcentrationEncoding::Log { offset: 0.0, scale: 1.0 };
//! assert_eq!(log.encode(10.0), Some(vec![1.0]));
//! # Ok::<(), phenix_models::Error>(())
//! ```
//!
//! Embedding needs a bundle and the ONNX Runtime library:
//!
//! ```no_run
//! use phenix_models::{Model, RuntimeOptions};
//!
//! let model = Model::load_cached("models/default", &RuntimeOptions::default().intra_threads(1))?;
//! let mols = model.embed_molecules(&[("CC(=O)Oc1ccccc1C(=O)O", 10.0), ("CCO", 1.0)])?;
//! assert_eq!(mols.len(), 2 * model.dim());
//! let profile = vec![0.0f32; model.manifest().phenomics.input_dim];
//! let cells = model.embed_phenomics(&profile)?;
//! assert_eq!(cells.len(), model.dim());
//! # Ok::<(), phenix_models::Error>(())
//! ```
#![deny(missing_docs)]

pub mod bundle;
pub mod concentration;
#[cfg(feature = "default-model")]
pub mod default_bundle;
mod error;
pub mod featurize;
pub mod runtime;

pub use bundle::{
    Distance, EmbeddingSpec, FeaturizerSpec, Manifest, ModelBundle, MoleculeSpec, MorganSpec,
    Normalization, PhenomicsSpec, Provenance, FORMAT_VERSION, MANIFEST_FILE,
};
pub use concentration::ConcentrationEncoding;
pub use error::{Encoder, Error, Result};
pub use featurize::MorganFeaturizer;
pub use runtime::{
    clear_model_cache, init_runtime, runtime_library_candidates, ExecutionProvider, LibrarySource,
    Model, RuntimeInfo, RuntimeOptions,
};
