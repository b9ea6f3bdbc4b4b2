//! [`RuntimeOptions`] and [`ExecutionProvider`]: how models are loaded and run.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

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
    pub(super) library_path: Option<PathBuf>,
    pub(super) intra_threads: usize,
    pub(super) execution_provider: ExecutionProvider,
    pub(super) max_batch: usize,
    pub(super) intra_spin_us: u32,
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
