//! The shipped `default` bundle (`models/default/`), compiled into the library with the
//! `default-model` cargo feature (on by default; about 12 MB).
//!
//! [`load`] builds the sessions from these bytes in memory: nothing is written to or read from
//! the file system (no cache directory, no temporary files), so it works from a read-only
//! install, in a sandbox, and without `HOME`. Build with `default-features = false` to leave
//! the bytes out; the bundle directory can then still be loaded with [`Model::load`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use crate::error::Result;
use crate::runtime::{Model, RuntimeOptions};

/// `models/default/phenix-model.json`.
pub const MANIFEST_JSON: &str = include_str!("../default/phenix-model.json");
/// `models/default/molecule.onnx`.
pub const MOLECULE_ONNX: &[u8] = include_bytes!("../default/molecule.onnx");
/// `models/default/phenomics.onnx`.
pub const PHENOMICS_ONNX: &[u8] = include_bytes!("../default/phenomics.onnx");
/// What stands for the bundle directory in [`Model::bundle`] and in messages.
pub const LABEL: &str = "<compiled-in default>";

static CACHE: OnceLock<Mutex<HashMap<RuntimeOptions, Arc<Model>>>> = OnceLock::new();

/// The compiled-in bundle, loaded from memory once per process and set of `options` (later
/// calls return the same [`Model`]). A failed load is not remembered.
pub fn load(options: &RuntimeOptions) -> Result<Arc<Model>> {
    let cache = CACHE.get_or_init(Default::default);
    if let Some(m) = super::runtime::lock(cache).get(options) {
        return Ok(m.clone());
    }
    // Load outside the lock: loading takes a while and may fail.
    let model = Arc::new(Model::load_from_memory(
        LABEL,
        MANIFEST_JSON,
        MOLECULE_ONNX,
        PHENOMICS_ONNX,
        options,
    )?);
    let mut c = super::runtime::lock(cache);
    Ok(c.entry(options.clone()).or_insert(model).clone())
}

/// Drops the models [`load`] holds (called by [`crate::clear_model_cache`]).
pub(crate) fn clear_cache() {
    if let Some(c) = CACHE.get() {
        super::runtime::lock(c).clear();
    }
}
