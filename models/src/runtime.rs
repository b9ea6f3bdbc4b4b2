//! ONNX Runtime: finding the shared library, sessions, and running the encoders.
//!
//! `ort` is used with `load-dynamic`: nothing links against ONNX Runtime at build time, and the
//! library is opened on the first [`Model::load`]. Which file is opened is decided by
//! [`runtime_library_candidates`] (see `docs/models.md`); the first library loaded stays for
//! the life of the process (ONNX Runtime's API table is process-global).
//!
//! Every call into `ort` runs inside `catch_unwind`, so a panic in `ort` (it panics when its
//! library is missing) becomes an [`Error`] instead of unwinding into the caller (or across an
//! FFI boundary such as SQLite's).

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use ort::environment::Environment;
use ort::ep::ExecutionProvider as _;
use ort::session::Session;
use ort::value::{TensorElementType, TensorRef, ValueType};

use crate::bundle::{Distance, Manifest, ModelBundle};
use crate::error::{Encoder, Error, Result};
use crate::featurize::MorganFeaturizer;

/// Environment variable naming the ONNX Runtime library file (same name `ort` itself uses).
pub const ORT_DYLIB_PATH_ENV: &str = "ORT_DYLIB_PATH";
/// Environment variable naming a phenix checkout whose `.ort/` holds the library.
pub const PHENIX_ROOT_ENV: &str = "PHENIX_ROOT";
/// Relative directory `tools/setup` puts the library link in.
pub const ORT_DIR: &str = ".ort";

/// File name of the ONNX Runtime library on this platform (`libonnxruntime.so` on Linux).
pub fn runtime_library_file_name() -> String {
    format!(
        "{}onnxruntime{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    )
}

/// Where ONNX Runtime runs the models.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum ExecutionProvider {
    /// ONNX Runtime's CPU provider (always available).
    #[default]
    Cpu,
    /// NVIDIA CUDA. Needs an ONNX Runtime build with CUDA (e.g. the `onnxruntime-gpu` wheel),
    /// the CUDA libraries and a GPU; otherwise loading fails with
    /// [`Error::ExecutionProviderUnavailable`]. There is no silent fallback to the CPU.
    Cuda {
        /// CUDA device ordinal.
        device_id: i32,
    },
}

impl ExecutionProvider {
    /// Parses `cpu`, `cuda` or `cuda:N`.
    pub fn parse(s: &str) -> Result<Self> {
        let s = s.trim().to_ascii_lowercase();
        if s == "cpu" {
            return Ok(ExecutionProvider::Cpu);
        }
        if s == "cuda" {
            return Ok(ExecutionProvider::Cuda { device_id: 0 });
        }
        if let Some(id) = s.strip_prefix("cuda:").and_then(|d| d.parse().ok()) {
            return Ok(ExecutionProvider::Cuda { device_id: id });
        }
        Err(Error::InvalidInput(format!(
            "unknown execution provider {s:?}: use \"cpu\", \"cuda\" or \"cuda:N\""
        )))
    }
}

/// Default [`RuntimeOptions::intra_spin_us`].
const DEFAULT_INTRA_SPIN_US: u32 = 200;

/// How models are loaded and run. `Default`: library found as documented, ONNX Runtime's
/// default thread count, CPU, batches of 1024, intra-op workers spinning at most 200 µs.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RuntimeOptions {
    library_path: Option<PathBuf>,
    intra_threads: usize,
    execution_provider: ExecutionProvider,
    max_batch: usize,
    intra_spin_us: u32,
}

impl Default for RuntimeOptions {
    fn default() -> Self {
        RuntimeOptions {
            library_path: None,
            intra_threads: 0,
            execution_provider: ExecutionProvider::Cpu,
            max_batch: 1024,
            intra_spin_us: DEFAULT_INTRA_SPIN_US,
        }
    }
}

impl RuntimeOptions {
    /// Use this ONNX Runtime library file, before every other place (see [`runtime_library_candidates`]).
    pub fn library_path(mut self, path: impl Into<PathBuf>) -> Self {
        self.library_path = Some(path.into());
        self
    }

    /// Threads ONNX Runtime uses inside one operator; 0 (default) lets ONNX Runtime choose
    /// (one per physical core).
    pub fn intra_threads(mut self, n: usize) -> Self {
        self.intra_threads = n;
        self
    }

    /// Where to run the models (default [`ExecutionProvider::Cpu`]).
    pub fn execution_provider(mut self, ep: ExecutionProvider) -> Self {
        self.execution_provider = ep;
        self
    }

    /// Largest number of rows sent to ONNX Runtime in one run (default 1024, minimum 1); longer
    /// inputs are split. Bounds the memory of the dense fingerprint batch (`n_bits × 4` bytes a row).
    pub fn max_batch(mut self, n: usize) -> Self {
        self.max_batch = n.max(1);
        self
    }

    /// How long, in microseconds, an idle ONNX Runtime intra-op worker busy-waits for its next
    /// task before sleeping (default 200); 0 turns spinning off.
    /// Longer spins hold a core that phenix's featurizer threads need between runs; without
    /// spinning, waking the workers for every run slows one-molecule calls.
    pub fn intra_spin_us(mut self, us: u32) -> Self {
        self.intra_spin_us = us;
        self
    }

    /// The configured library path, if any.
    pub fn get_library_path(&self) -> Option<&Path> {
        self.library_path.as_deref()
    }

    /// The configured intra-op thread count (0 = ONNX Runtime's default).
    pub fn get_intra_threads(&self) -> usize {
        self.intra_threads
    }

    /// The configured execution provider.
    pub fn get_execution_provider(&self) -> ExecutionProvider {
        self.execution_provider
    }

    /// The configured maximum batch.
    pub fn get_max_batch(&self) -> usize {
        self.max_batch
    }

    /// The configured intra-op spin time in microseconds (0 = no spinning).
    pub fn get_intra_spin_us(&self) -> u32 {
        self.intra_spin_us
    }
}

/// Where a candidate library path came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum LibrarySource {
    /// [`RuntimeOptions::library_path`].
    Options,
    /// `$ORT_DYLIB_PATH`.
    OrtDylibPath,
    /// `$PHENIX_ROOT/.ort/`.
    PhenixRoot,
    /// Next to the module (shared library or executable) containing this crate, or in a
    /// `.ort/` directory there or in one of its ancestors.
    NextToModule,
    /// The bare file name, resolved by the system's dynamic loader (`LD_LIBRARY_PATH`, ldconfig).
    SystemSearch,
}

/// The places the ONNX Runtime library is looked for, in order. The first existing file is
/// used, except that an explicit path (options or `$ORT_DYLIB_PATH`) is used alone: if it is
/// wrong, loading fails instead of silently picking another library.
///
/// 1. `explicit` ([`RuntimeOptions::library_path`]);
/// 2. `$ORT_DYLIB_PATH`, if set and non-empty;
/// 3. `$PHENIX_ROOT/.ort/libonnxruntime.so`, if `PHENIX_ROOT` is set;
/// 4. `libonnxruntime.so` and `.ort/libonnxruntime.so` in the directory of the module that
///    contains this code (the SQLite extension `.so`, or the executable), then
///    `.ort/libonnxruntime.so` in each ancestor of that directory (so a build under
///    `<checkout>/target/...` finds `<checkout>/.ort/`);
/// 5. the bare file name, left to the system's dynamic loader.
pub fn runtime_library_candidates(explicit: Option<&Path>) -> Vec<(PathBuf, LibrarySource)> {
    if let Some(p) = explicit {
        return vec![(p.to_path_buf(), LibrarySource::Options)];
    }
    if let Some(p) = std::env::var_os(ORT_DYLIB_PATH_ENV).filter(|p| !p.is_empty()) {
        return vec![(PathBuf::from(p), LibrarySource::OrtDylibPath)];
    }
    let file = runtime_library_file_name();
    let mut out = Vec::new();
    if let Some(root) = std::env::var_os(PHENIX_ROOT_ENV).filter(|p| !p.is_empty()) {
        out.push((
            Path::new(&root).join(ORT_DIR).join(&file),
            LibrarySource::PhenixRoot,
        ));
    }
    let mut dirs: Vec<PathBuf> = Vec::new();
    if let Some(dir) = this_module_path().as_deref().and_then(Path::parent) {
        dirs.push(dir.to_path_buf());
    }
    if let Some(dir) = std::env::current_exe()
        .ok()
        .as_deref()
        .and_then(Path::parent)
    {
        if !dirs.iter().any(|d| d == dir) {
            dirs.push(dir.to_path_buf());
        }
    }
    for dir in &dirs {
        out.push((dir.join(&file), LibrarySource::NextToModule));
        for ancestor in dir.ancestors() {
            out.push((
                ancestor.join(ORT_DIR).join(&file),
                LibrarySource::NextToModule,
            ));
        }
    }
    out.push((PathBuf::from(&file), LibrarySource::SystemSearch));
    out
}

/// Path of the shared object or executable this function's code was loaded from.
#[cfg(unix)]
fn this_module_path() -> Option<PathBuf> {
    use std::ffi::CStr;
    use std::os::unix::ffi::OsStrExt;
    // SAFETY: an all-zero Dl_info is valid (null pointers, zero integers); dladdr overwrites it.
    let mut info: libc::Dl_info = unsafe { std::mem::zeroed() };
    let addr = this_module_path as *const () as *const libc::c_void;
    // SAFETY: dladdr only inspects the loader's tables for `addr` (the address of a function
    // of this crate, hence inside a loaded object) and writes into `info`, which we own.
    let rc = unsafe { libc::dladdr(addr, &mut info) };
    if rc == 0 || info.dli_fname.is_null() {
        return None;
    }
    // SAFETY: on success dli_fname points to a NUL-terminated path owned by the loader, valid
    // while the object is loaded (it is: it contains this code); we copy it at once.
    let name = unsafe { CStr::from_ptr(info.dli_fname) };
    let path = PathBuf::from(std::ffi::OsStr::from_bytes(name.to_bytes()));
    Some(std::fs::canonicalize(&path).unwrap_or(path))
}

#[cfg(not(unix))]
fn this_module_path() -> Option<PathBuf> {
    None
}

/// The loaded ONNX Runtime: which file and which version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeInfo {
    /// The library file that was opened.
    pub library: PathBuf,
    /// How it was found.
    pub source: LibrarySource,
    /// ONNX Runtime's version string (e.g. `1.32.0`).
    pub version: String,
}

struct LoadedRuntime {
    env: Environment,
    info: RuntimeInfo,
}

static RUNTIME: Mutex<Option<Arc<LoadedRuntime>>> = Mutex::new(None);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic inside ort while a lock was held is turned into an error by the caller; the
    // guarded data (an Option or a Session) stays usable.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn panic_message(p: Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".to_string()
    }
}

/// Loads ONNX Runtime (once per process) and returns what was loaded. Later calls return the
/// first library even if `library_path` differs. A failed load is not remembered: after
/// fixing the path, calling again retries.
pub fn init_runtime(library_path: Option<&Path>) -> Result<RuntimeInfo> {
    Ok(runtime(library_path)?.info.clone())
}

fn runtime(library_path: Option<&Path>) -> Result<Arc<LoadedRuntime>> {
    let mut slot = lock(&RUNTIME);
    if let Some(rt) = slot.as_ref() {
        return Ok(rt.clone());
    }
    let candidates = runtime_library_candidates(library_path);
    let explicit = matches!(
        candidates.first(),
        Some((_, LibrarySource::Options | LibrarySource::OrtDylibPath))
    );
    let chosen = if explicit {
        let (path, source) = candidates[0].clone();
        if !path.exists() {
            let via = match source {
                LibrarySource::Options => {
                    "the library path given in the runtime options".to_string()
                }
                _ => format!("${ORT_DYLIB_PATH_ENV}"),
            };
            return Err(Error::RuntimeLibrary {
                message: format!("{} (from {via}) does not exist", path.display()),
            });
        }
        (path, source)
    } else {
        match candidates
            .iter()
            .find(|(p, s)| *s == LibrarySource::SystemSearch || p.is_file())
        {
            Some(c) => c.clone(),
            None => unreachable!("the system-search candidate is always last"),
        }
    };
    let (path, source) = chosen;
    let tried = || {
        candidates
            .iter()
            .map(|(p, _)| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let loaded = catch_unwind(|| ort::init_from(&path).map(|b| b.with_name("phenix").build()));
    let env = match loaded {
        Err(p) => {
            return Err(Error::RuntimeLibrary {
                message: format!("loading {} panicked: {}", path.display(), panic_message(p)),
            });
        }
        Ok(Err(e)) => {
            // libloading's Display says only "dlopen failed"; dlerror's text is its source.
            let mut detail = e.to_string();
            if let ort::LoadDynamicError::Dlopen { error, .. } = &e {
                let mut src = std::error::Error::source(error);
                while let Some(s) = src {
                    detail.push_str(&format!(": {s}"));
                    src = s.source();
                }
            }
            let e = detail;
            let message = if source == LibrarySource::SystemSearch {
                format!("not found (looked at: {}): {e}", tried())
            } else {
                format!("cannot load {}: {e}", path.display())
            };
            return Err(Error::RuntimeLibrary { message });
        }
        Ok(Ok(Err(e))) => {
            return Err(Error::RuntimeLibrary {
                message: format!(
                    "{} loaded but creating the environment failed: {e}",
                    path.display()
                ),
            });
        }
        Ok(Ok(Ok(env))) => env,
    };
    let version = library_version(&path).unwrap_or_else(|| "unknown".into());
    let rt = Arc::new(LoadedRuntime {
        env,
        info: RuntimeInfo {
            library: path,
            source,
            version,
        },
    });
    *slot = Some(rt.clone());
    Ok(rt)
}

/// ONNX Runtime's own version string (`OrtGetApiBase()->GetVersionString()`, e.g. `1.32.0`).
fn library_version(path: &Path) -> Option<String> {
    use std::ffi::CStr;
    type GetApiBase = unsafe extern "C" fn() -> *const ort::sys::OrtApiBase;
    // SAFETY: `path` was just loaded by ort, so opening it again only takes another reference
    // to the same mapped library (no new initialisers run); the handle outlives every use below.
    let lib = unsafe { libloading::Library::new(path) }.ok()?;
    // SAFETY: OrtGetApiBase is ONNX Runtime's C entry point with exactly this signature (ort
    // checked that the symbol exists when it loaded the library).
    let get_base = unsafe { lib.get::<GetApiBase>(b"OrtGetApiBase") }.ok()?;
    // SAFETY: calling it has no preconditions; it returns a pointer to a static struct.
    let base = unsafe { get_base() };
    if base.is_null() {
        return None;
    }
    // SAFETY: `base` is non-null and points to ONNX Runtime's static OrtApiBase; its
    // GetVersionString returns a static NUL-terminated string, which we copy before `lib` drops.
    let version = unsafe { CStr::from_ptr(((*base).GetVersionString)()) };
    version.to_str().ok().map(str::to_string)
}

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
}

impl Model {
    /// Loads a bundle: reads and checks the manifest, loads ONNX Runtime if needed, creates
    /// both sessions with `options`, checks the manifest against each model's real inputs and
    /// outputs (names, float32, rank 2, widths `n_bits` / concentration features /
    /// `input_dim` / `dim`, dynamic batch axis), then runs a two-row probe through each
    /// encoder and checks the output shape, finiteness and, for `distance: cosine`, unit L2 norm.
    pub fn load(dir: impl AsRef<Path>, options: &RuntimeOptions) -> Result<Model> {
        let bundle = ModelBundle::open(dir)?;
        let featurizer = bundle.featurizer();
        let rt = runtime(options.library_path.as_deref())?;
        let manifest = bundle.manifest();

        let mol_path = bundle.molecule_onnx();
        let mol_session = create_session(&rt, &mol_path, Encoder::Molecule, options)?;
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
        let phen_session = create_session(&rt, &phen_path, Encoder::Phenomics, options)?;
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

fn create_session(
    rt: &LoadedRuntime,
    path: &Path,
    encoder: Encoder,
    options: &RuntimeOptions,
) -> Result<Session> {
    if !path.is_file() {
        return Err(Error::OnnxLoad {
            encoder,
            path: path.to_path_buf(),
            message: "file not found".into(),
        });
    }
    let runtime_err = |message: String| Error::Runtime { encoder, message };
    let made = catch_unwind(AssertUnwindSafe(|| -> Result<Session> {
        let mut builder = Session::builder(&rt.env).map_err(|e| runtime_err(e.to_string()))?;
        if options.intra_threads > 0 {
            builder = builder
                .with_intra_threads(options.intra_threads)
                .map_err(|e| {
                    runtime_err(format!(
                        "setting {} intra-op threads: {e}",
                        options.intra_threads
                    ))
                })?;
        }
        // ONNX Runtime's default lets idle workers spin for a long time after an operator; in
        // `embed_molecules` they would hold a core the featurizer threads need between runs. A
        // short spin still bridges the gaps between operators and between one-row runs.
        // (Measured in docs/benchmarks.md, "Encoders".)
        builder = if options.intra_spin_us == 0 {
            builder.with_intra_op_spinning(false)
        } else {
            builder.with_config_entry(
                "session.intra_op.spin_duration_us",
                options.intra_spin_us.to_string(),
            )
        }
        .map_err(|e| runtime_err(format!("setting intra-op spinning: {e}")))?;
        if let ExecutionProvider::Cuda { device_id } = options.execution_provider {
            let unavailable = |reason: String| Error::ExecutionProviderUnavailable {
                provider: "cuda",
                reason,
            };
            let available =
                ort::ep::CUDA::is_available().map_err(|e| unavailable(e.to_string()))?;
            if !available {
                return Err(unavailable(format!(
                    "the ONNX Runtime library {} (version {}) was built without the CUDA execution provider",
                    rt.info.library.display(),
                    rt.info.version
                )));
            }
            builder = builder
                .with_execution_providers([ort::ep::CUDA::default()
                    .with_device_id(device_id)
                    .build()
                    .error_on_failure()])
                .map_err(|e| {
                    unavailable(format!("registering CUDA device {device_id} failed: {e}"))
                })?;
        }
        builder.commit_from_file(path).map_err(|e| Error::OnnxLoad {
            encoder,
            path: path.to_path_buf(),
            message: e.to_string(),
        })
    }));
    match made {
        Ok(r) => r,
        Err(p) => Err(runtime_err(format!(
            "ONNX Runtime panicked while creating the session: {}",
            panic_message(p)
        ))),
    }
}

fn describe(t: &ValueType) -> String {
    match t {
        ValueType::Tensor { ty, shape, .. } => format!("{ty:?}{:?}", &**shape),
        other => format!("{other:?}"),
    }
}

/// Checks a session's inputs and output against the manifest: `inputs` are
/// `(name, expected width, manifest key)`; `output` is `(name, dim)`.
fn check_io(
    session: &Session,
    encoder: Encoder,
    path: &Path,
    inputs: &[(&str, usize, &str)],
    output: (&str, usize),
) -> Result<()> {
    let mismatch = |message: String| Error::BundleMismatch {
        encoder,
        path: path.to_path_buf(),
        message,
    };
    let list = |outlets: &[ort::value::Outlet]| {
        outlets
            .iter()
            .map(|o| format!("{:?}: {}", o.name(), describe(o.dtype())))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let model_inputs = session.inputs();
    let model_outputs = session.outputs();
    let check_2d = |kind: &str,
                    name: &str,
                    t: &ValueType,
                    width: usize,
                    key: &str,
                    width_may_be_dynamic: bool|
     -> Result<()> {
        let ValueType::Tensor { ty, shape, .. } = t else {
            return Err(mismatch(format!(
                "{kind} {name:?} is {}, expected a float32 tensor",
                describe(t)
            )));
        };
        if *ty != TensorElementType::Float32 {
            return Err(mismatch(format!(
                "{kind} {name:?} has element type {ty:?}, expected float32: cast in the model"
            )));
        }
        if shape.len() != 2 {
            return Err(mismatch(format!(
                "{kind} {name:?} has shape {:?}, expected [batch, {width}] (rank 2)",
                &**shape
            )));
        }
        if shape[0] >= 0 {
            return Err(mismatch(format!(
                "{kind} {name:?} has a fixed batch size {} (shape {:?}); export it with a dynamic batch axis",
                shape[0], &**shape
            )));
        }
        if shape[1] != width as i64 && !(width_may_be_dynamic && shape[1] < 0) {
            return Err(mismatch(format!(
                "{kind} {name:?} has shape {:?}, but the manifest's {key} says its width is {width}: \
                 fix the manifest or re-export the model",
                &**shape
            )));
        }
        Ok(())
    };
    for &(name, width, key) in inputs {
        let Some(o) = model_inputs.iter().find(|o| o.name() == name) else {
            return Err(mismatch(format!(
                "the model has no input {name:?} (named by {}); its inputs are [{}]",
                key.split(' ').next().unwrap_or(key),
                list(model_inputs)
            )));
        };
        check_2d("input", name, o.dtype(), width, key, false)?;
    }
    if let Some(extra) = model_inputs
        .iter()
        .find(|o| !inputs.iter().any(|(n, _, _)| *n == o.name()))
    {
        return Err(mismatch(format!(
            "the model has an input {:?} ({}) that the manifest does not feed; its inputs are [{}]{}",
            extra.name(),
            describe(extra.dtype()),
            list(model_inputs),
            if encoder == Encoder::Molecule {
                ": name it in molecule.input_concentration with a matching encoding, or remove it from the model"
            } else {
                ": remove it from the model"
            }
        )));
    }
    let (name, dim) = output;
    let Some(o) = model_outputs.iter().find(|o| o.name() == name) else {
        return Err(mismatch(format!(
            "the model has no output {name:?} (named by {encoder}.output); its outputs are [{}]",
            list(model_outputs)
        )));
    };
    check_2d("output", name, o.dtype(), dim, "embedding.dim", true)
}
