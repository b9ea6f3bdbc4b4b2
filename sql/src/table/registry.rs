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

/// Which in-memory table a store belongs to: (identity of the in-memory database, table id). The
/// identity is the address of the database's pager file handle ([`super::sidecar::memory_identity`]):
/// connections of one shared cache share it; every other database (another `:memory:`, a copy made
/// with the backup API, a deserialized image) has its own, so two databases never share vectors even
/// when a copy carries the same table id.
pub(crate) type MemKey = (usize, [u8; 16]);

/// The stores of in-memory tables: by [`MemKey`], the generation published last and a weak reference
/// (the strong ones are each connection's [`ConnStores`] and its table states, so the vectors are freed
/// when the last connection using them closes, or at `DROP TABLE`).
type MemStores = Mutex<HashMap<MemKey, (u64, Weak<Mutex<VectorStore>>)>>;
fn mem_stores() -> &'static MemStores {
    static M: OnceLock<MemStores> = OnceLock::new();
    M.get_or_init(Default::default)
}

/// One connection's in-memory stores, held by the `phenix` module's client data: SQLite drops it when
/// the connection closes. It keeps a table's vectors while SQLite disconnects and reconnects the table
/// within the connection (a schema reset).
pub(crate) type ConnStores = Arc<Mutex<HashMap<MemKey, Arc<Mutex<VectorStore>>>>>;

/// Publishes the store of in-memory table `key` at `generation` (made, or replaced by a committed
/// compaction), held by connection `conn`.
pub(crate) fn publish_memory_store(
    key: MemKey,
    generation: u64,
    s: &Arc<Mutex<VectorStore>>,
    conn: &ConnStores,
) {
    let mut m = mem_stores().lock().unwrap_or_else(|e| e.into_inner());
    m.retain(|_, (_, w)| w.strong_count() > 0);
    m.insert(key, (generation, Arc::downgrade(s)));
    conn.lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(key, s.clone());
}

/// The store of in-memory table `key` at `generation`, if this process holds it; the connection
/// `conn` keeps it from then on.
pub(crate) fn memory_store(
    key: &MemKey,
    generation: u64,
    conn: &ConnStores,
) -> Option<Arc<Mutex<VectorStore>>> {
    let s = {
        let m = mem_stores().lock().unwrap_or_else(|e| e.into_inner());
        match m.get(key) {
            Some((g, w)) if *g == generation => w.upgrade(),
            _ => None,
        }
    }?;
    conn.lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(*key, s.clone());
    Some(s)
}

/// Connection `conn` no longer holds in-memory table `key` (its DROP TABLE committed).
pub(crate) fn release_memory_store(key: &MemKey, conn: &ConnStores) {
    conn.lock().unwrap_or_else(|e| e.into_inner()).remove(key);
}

/// Whether this process still holds the in-memory vectors of the table with hex id `id`.
pub(crate) fn memory_store_alive(id: &str) -> bool {
    super::names::unhex(id).is_some_and(|id| {
        mem_stores()
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .any(|((_, i), (_, w))| *i == id && w.strong_count() > 0)
    })
}

/// The bytes of rows held by the in-memory vectors of the table with hex id `id`, if this process
/// still holds them (for tests that measure what a drop frees).
pub(crate) fn memory_store_bytes(id: &str) -> Option<u64> {
    let id = super::names::unhex(id)?;
    let stores: Vec<_> = mem_stores()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .filter(|((_, i), _)| *i == id)
        .filter_map(|(_, (_, w))| w.upgrade())
        .collect();
    if stores.is_empty() {
        return None;
    }
    Some(
        stores
            .iter()
            .map(|s| {
                let s = s.lock().unwrap_or_else(|e| e.into_inner());
                s.len() * s.layout().stride() as u64
            })
            .sum(),
    )
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

/// Threads a KNN scan may use: the process-wide cap of `settings` (`phenix_set_threads`), else one per
/// core (read once: `available_parallelism` reads cgroup files on Linux).
pub(crate) fn search_threads() -> usize {
    crate::settings::knn_threads()
}
