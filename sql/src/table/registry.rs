//! Process-wide state: the connected tables by [`Key`] (for `phenix_retrieve_all` and `phenix_check`),
//! the vector stores of in-memory tables, and the KNN thread count.

use super::names::Key;
use super::state::TableState;
use phenix_core::store::VectorStore;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};

/// A table's state, shared by its vtab, its cursors and the registry.
pub(crate) type SharedState = Arc<Mutex<TableState>>;

/// Locks a table's state (a poisoned lock is taken over: the state is re-validated on use).
pub(crate) fn lock_state(s: &Mutex<TableState>) -> MutexGuard<'_, TableState> {
    s.lock().unwrap_or_else(|e| e.into_inner())
}

/// Stores of in-memory (temp / `:memory:`) tables, by table id, so a re-connect within the connection
/// (after a schema reset) finds the same vectors.
type MemStores = Mutex<HashMap<[u8; 16], Arc<Mutex<VectorStore>>>>;
fn mem_stores() -> &'static MemStores {
    static M: OnceLock<MemStores> = OnceLock::new();
    M.get_or_init(Default::default)
}

/// Publishes the store of in-memory table `id` (made, or replaced by a committed compaction).
pub(crate) fn publish_memory_store(id: [u8; 16], s: Arc<Mutex<VectorStore>>) {
    mem_stores()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(id, s);
}

/// The store of in-memory table `id`, if this process made it.
pub(crate) fn memory_store(id: &[u8; 16]) -> Option<Arc<Mutex<VectorStore>>> {
    mem_stores()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(id)
        .cloned()
}

type Registry = Mutex<HashMap<Key, Weak<Mutex<TableState>>>>;
fn registry() -> &'static Registry {
    static R: OnceLock<Registry> = OnceLock::new();
    R.get_or_init(Default::default)
}

/// Registers a table's state.
pub(crate) fn register_state(k: Key, s: &SharedState) {
    let mut r = registry().lock().unwrap_or_else(|e| e.into_inner());
    r.retain(|_, w| w.strong_count() > 0);
    r.insert(k, Arc::downgrade(s));
}

/// Finds a connected table's state.
pub(crate) fn lookup_state(k: &Key) -> Option<SharedState> {
    registry()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(k)
        .and_then(Weak::upgrade)
}

/// Removes a table from the registry.
pub(crate) fn unregister_state(k: &Key) {
    registry()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(k);
}

/// Threads a KNN scan may use (read once: `available_parallelism` reads cgroup files on Linux, which
/// costs tens of microseconds per call).
pub(crate) fn search_threads() -> usize {
    static T: OnceLock<usize> = OnceLock::new();
    *T.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}
