//! Process-wide resource settings an embedding application may set before work starts: how many
//! threads phenix's exact KNN scans and ONNX Runtime's intra-op pools use.
//!
//! Both default to 0, "one per core" (`std::thread::available_parallelism`). Set them early: ONNX
//! Runtime starts its threads when a model is loaded, so a model loaded before the change keeps its
//! count (load it again under another name, or restart).

use std::sync::atomic::{AtomicUsize, Ordering};

static KNN_THREADS: AtomicUsize = AtomicUsize::new(0);
static ONNX_THREADS: AtomicUsize = AtomicUsize::new(0);

/// The largest thread count accepted by the setters (ONNX Runtime starts every intra-op thread at
/// once, so an absurd count would try to start that many OS threads).
pub const MAX_THREADS: usize = 1024;

/// The number of cores this process may use (read once).
pub fn cores() -> usize {
    static C: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *C.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// Caps the threads of one exact KNN scan or batched retrieval at `n` (0: one per core). Values above
/// [`MAX_THREADS`] are an error.
pub fn set_knn_threads(n: usize) -> Result<(), String> {
    check(n)?;
    KNN_THREADS.store(n, Ordering::Relaxed);
    Ok(())
}

/// Threads ONNX Runtime uses inside one operator, and the featurizer's threads, for models loaded
/// from now on without an explicit `threads` option (0: one per core).
pub fn set_onnx_threads(n: usize) -> Result<(), String> {
    check(n)?;
    ONNX_THREADS.store(n, Ordering::Relaxed);
    Ok(())
}

/// The KNN thread count in effect (never 0).
pub fn knn_threads() -> usize {
    match KNN_THREADS.load(Ordering::Relaxed) {
        0 => cores(),
        n => n,
    }
}

/// The ONNX Runtime thread count in effect (never 0).
pub fn onnx_threads() -> usize {
    match ONNX_THREADS.load(Ordering::Relaxed) {
        0 => cores(),
        n => n,
    }
}

fn check(n: usize) -> Result<(), String> {
    if n > MAX_THREADS {
        Err(format!(
            "phenix: {n} threads is out of range; expected 0 (one per core) to {MAX_THREADS}"
        ))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thread_settings_default_to_the_cores_and_refuse_absurd_counts() {
        assert_eq!(knn_threads(), cores());
        assert!(set_knn_threads(MAX_THREADS + 1).is_err());
        assert_eq!(knn_threads(), cores(), "a refused value changes nothing");
        set_onnx_threads(1).unwrap();
        assert_eq!(onnx_threads(), 1);
        set_onnx_threads(0).unwrap();
        assert_eq!(onnx_threads(), cores());
    }
}
