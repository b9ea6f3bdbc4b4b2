//! Finding, loading and identifying the ONNX Runtime shared library (once per process).

use std::panic::catch_unwind;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use ort::environment::Environment;

use super::{lock, panic_message};
use crate::error::{Error, Result};

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

pub(super) struct LoadedRuntime {
    pub(super) env: Environment,
    pub(super) info: RuntimeInfo,
}

static RUNTIME: Mutex<Option<Arc<LoadedRuntime>>> = Mutex::new(None);

/// Loads ONNX Runtime (once per process) and returns what was loaded. Later calls return the
/// first library even if `library_path` differs. A failed load is not remembered: after
/// fixing the path, calling again retries.
pub fn init_runtime(library_path: Option<&Path>) -> Result<RuntimeInfo> {
    Ok(runtime(library_path)?.info.clone())
}

pub(super) fn runtime(library_path: Option<&Path>) -> Result<Arc<LoadedRuntime>> {
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
    disable_telemetry();
    let loaded = catch_unwind(|| {
        ort::init_from(&path).map(|b| b.with_name("phenix").with_telemetry(false).build())
    });
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

/// Environment variable ONNX Runtime (1.32 on Linux) reads when it initialises: unless it is `1`,
/// the PyPI builds write a device id and an event cache under `$XDG_CACHE_HOME` or `~/.cache`
/// (`Microsoft/DeveloperTools/.onnxruntime/`) and in `$TMPDIR` (`.ses`), and upload telemetry.
pub const ORT_DISABLE_TELEMETRY_ENV: &str = "ORT_DISABLE_TELEMETRY";

/// Sets `ORT_DISABLE_TELEMETRY=1` for this process unless it is set already (to anything: an
/// application that wants ONNX Runtime's telemetry sets it to `0`). Called once, under the runtime
/// lock, just before the library is opened; ONNX Runtime reads it then. Turning telemetry off
/// through the API (`DisableTelemetryEvents`, done too) comes after the files are written.
///
/// Changing the environment races with other threads that read it through C's `getenv` at the
/// same moment; an application that loads ONNX Runtime while other threads run and wants no
/// such race sets the variable itself at startup (then phenix leaves the environment alone), or
/// calls `init_runtime` before starting threads (docs/models.md).
fn disable_telemetry() {
    if std::env::var_os(ORT_DISABLE_TELEMETRY_ENV).is_none() {
        std::env::set_var(ORT_DISABLE_TELEMETRY_ENV, "1");
    }
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
