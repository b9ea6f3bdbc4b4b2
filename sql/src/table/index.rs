//! The IVF index of a phenix table, SQL side: its declaration (`index=ivf(lists=N, codes=sq8,
//! nprobe=P)`), its snapshot files and the `<t>_info` keys naming them, and `phenix_check`'s look at a
//! snapshot. The per-connection life of the index (load, catch-up, build, rollback, compaction) is in
//! `state/index.rs`; the search itself is `phenix_core::ivf`.
//!
//! Storage (docs/design.md, "Commit protocol for the index"): an immutable snapshot file
//! `<table_id>.g<generation>.i<n>.ivf` in the sidecar directory, named by `<t>_info.index_gen = n`,
//! holding the rows `0..index_covered` of the vector file; the rows past it are added from the vector
//! file when a connection loads the index (and at each query, for rows appended since).

use super::names::hex;
use crate::error::Error;
use phenix_core::ivf::IvfIndex;
use phenix_core::store::{sync_parent_dir, Layout};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

/// `<t>_info` key: the snapshot in use (absent: no index built).
pub(crate) const INDEX_GEN: &str = "index_gen";
/// `<t>_info` key: the vector-file rows the snapshot holds.
pub(crate) const INDEX_COVERED: &str = "index_covered";

/// The largest list count (and `nprobe` in a declaration).
pub(crate) const MAX_LISTS: usize = 65_536;

/// Tables with at least this many rows print build progress on stderr.
pub(crate) const PROGRESS_ROWS: usize = 200_000;

/// A declared index: `index=ivf(lists=N, codes=sq8, nprobe=P)`; every option may be left out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndexDecl {
    /// Inverted lists; `None`: `IvfParams::for_rows` (about 4·√rows) when the index is built.
    pub lists: Option<usize>,
    /// The table's default `nprobe`; `None`: [`default_nprobe`].
    pub nprobe: Option<usize>,
}

const USAGE: &str =
    "expected index=ivf(lists=1..65536, codes=sq8, nprobe=1..65536), each option optional";

impl IndexDecl {
    /// Parses the text after `index=`: `ivf`, `ivf()` or `ivf(key=value, ...)`.
    pub fn parse(v: &str) -> Result<IndexDecl, String> {
        let lower = v.trim().to_ascii_lowercase();
        let Some(rest) = lower.strip_prefix("ivf") else {
            return Err(format!("unknown index kind `{v}`; {USAGE}"));
        };
        let rest = rest.trim();
        let body = if rest.is_empty() {
            ""
        } else {
            rest.strip_prefix('(')
                .and_then(|r| r.strip_suffix(')'))
                .ok_or_else(|| format!("`{v}` is not ivf(...); {USAGE}"))?
        };
        let mut d = IndexDecl {
            lists: None,
            nprobe: None,
        };
        let mut seen: Vec<String> = Vec::new();
        for opt in body.split(',').map(str::trim).filter(|o| !o.is_empty()) {
            let (k, val) = opt
                .split_once('=')
                .map(|(k, v)| (k.trim(), v.trim()))
                .ok_or_else(|| format!("index option `{opt}` must be key=value; {USAGE}"))?;
            if seen.iter().any(|s| s == k) {
                return Err(format!("index option `{k}` is given twice; {USAGE}"));
            }
            seen.push(k.to_string());
            let int = |what: &str| -> Result<usize, String> {
                val.parse::<usize>()
                    .ok()
                    .filter(|n| (1..=MAX_LISTS).contains(n))
                    .ok_or_else(|| {
                        format!(
                            "index option {what}={val} is out of range; expected an integer in 1..={MAX_LISTS}"
                        )
                    })
            };
            match k {
                "lists" => d.lists = Some(int("lists")?),
                "nprobe" => d.nprobe = Some(int("nprobe")?),
                "codes" if val == "sq8" => {}
                "codes" => {
                    return Err(format!(
                        "index option codes={val} is not supported; expected codes=sq8 (8-bit scalar quantisation; PQ was measured and not kept, docs/design.md)"
                    ))
                }
                _ => return Err(format!("unknown index option `{k}`; {USAGE}")),
            }
        }
        Ok(d)
    }
}

/// The `nprobe` a query uses when it gives none and the declaration names none: 1/16 of the lists
/// (at least 8, at most all). On the measured 1M × 256 curve (docs/benchmarks.md, 2,048 lists) that is
/// nprobe 128: recall@10 0.98 (1/32, nprobe 64, was 0.949).
pub(crate) fn default_nprobe(lists: usize) -> usize {
    (lists.div_ceil(16)).max(8).min(lists.max(1))
}

/// The file name of snapshot `n` of generation `generation` of table `id`.
pub(crate) fn snapshot_name(id: &[u8; 16], generation: u64, n: u64) -> String {
    format!("{}.g{generation}.i{n}.ivf", hex(id))
}

/// Whether `name` looks like a snapshot file of some table (for the orphan collection).
pub(crate) fn is_snapshot_name(name: &str) -> bool {
    name.ends_with(".ivf")
        && name.get(..32).and_then(super::names::unhex).is_some()
        && name.get(32..34) == Some(".g")
}

/// Where a table's snapshots live: the sidecar directory of a database file, or (in-memory
/// databases) this process's memory.
#[derive(Clone, Debug)]
pub(crate) enum Home {
    /// The sidecar directory.
    Dir(PathBuf),
    /// An in-memory table: by its registry key.
    Memory(super::registry::MemKey),
}

type MemSnapshots = Mutex<HashMap<(super::registry::MemKey, u64, u64), Arc<Vec<u8>>>>;
fn mem_snapshots() -> &'static MemSnapshots {
    static M: OnceLock<MemSnapshots> = OnceLock::new();
    M.get_or_init(Default::default)
}

impl Home {
    /// A printable name of snapshot `n`.
    pub(crate) fn describe(&self, id: &[u8; 16], generation: u64, n: u64) -> String {
        match self {
            Home::Dir(d) => d
                .join(snapshot_name(id, generation, n))
                .display()
                .to_string(),
            Home::Memory(_) => format!("in-memory index snapshot {n}"),
        }
    }

    /// Whether a later snapshot of table `id` than (`generation`, `n`) exists: a snapshot missing while
    /// one exists was replaced by a commit this (WAL) read transaction does not see yet, not lost.
    pub(crate) fn newer_exists(&self, id: &[u8; 16], generation: u64, n: u64) -> bool {
        let Home::Dir(d) = self else {
            return false;
        };
        let prefix = format!("{}.g", hex(id));
        std::fs::read_dir(d).is_ok_and(|entries| {
            entries.flatten().any(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let Some((g, i)) = name
                    .strip_prefix(&prefix)
                    .and_then(|r| r.strip_suffix(".ivf"))
                    .and_then(|r| r.split_once(".i"))
                else {
                    return false;
                };
                matches!((g.parse::<u64>(), i.parse::<u64>()), (Ok(g), Ok(i)) if (g, i) > (generation, n))
            })
        })
    }

    /// Writes snapshot `n` durably (file, fsync, directory fsync). A file of that name can only be the
    /// leftover of a transaction that did not commit (`<t>_info` names an older one and the caller
    /// holds the write lock), so it is replaced.
    pub(crate) fn write(
        &self,
        id: &[u8; 16],
        generation: u64,
        n: u64,
        bytes: Vec<u8>,
    ) -> Result<(), Error> {
        match self {
            Home::Dir(d) => {
                use std::io::Write;
                use std::os::unix::fs::OpenOptionsExt;
                let path = d.join(snapshot_name(id, generation, n));
                let io = |what: &str, e: std::io::Error| {
                    Error::Io(format!(
                        "cannot {what} the index snapshot {}: {e}",
                        path.display()
                    ))
                };
                match std::fs::remove_file(&path) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                        return Err(io("replace", e))
                    }
                    _ => {}
                }
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(&path)
                    .map_err(|e| io("create", e))?;
                f.write_all(&bytes).map_err(|e| io("write", e))?;
                f.sync_data().map_err(|e| io("fsync", e))?;
                sync_parent_dir(&path).map_err(Error::from)?;
                Ok(())
            }
            Home::Memory(k) => {
                let mut m = mem_snapshots().lock().unwrap_or_else(|e| e.into_inner());
                // Keep this table's previous snapshot (a rollback returns to it); older ones go, and so
                // do the snapshots of tables whose vectors this process no longer holds.
                m.retain(|(key, _, old), _| {
                    if key == k {
                        old.saturating_add(1) >= n
                    } else {
                        super::registry::memory_store_alive(&hex(&key.1))
                    }
                });
                m.insert((*k, generation, n), Arc::new(bytes));
                Ok(())
            }
        }
    }

    /// Reads and decodes snapshot `n` for a vector file of `store_rows` rows, and checks that it is the
    /// table's own (`id`, `generation`, `layout`) and holds `covered` rows. The error is a sentence
    /// naming the snapshot and what is wrong with it.
    pub(crate) fn read(
        &self,
        id: &[u8; 16],
        generation: u64,
        n: u64,
        covered: u64,
        store_rows: u64,
        layout: Layout,
    ) -> Result<IvfIndex, String> {
        let what = self.describe(id, generation, n);
        let (path, bytes): (PathBuf, Arc<Vec<u8>>) = match self {
            Home::Dir(d) => {
                let path = d.join(snapshot_name(id, generation, n));
                match std::fs::symlink_metadata(&path) {
                    Ok(m) if !m.file_type().is_file() => {
                        return Err(format!("the index snapshot {what} is not a regular file"))
                    }
                    Err(e) => return Err(format!("the index snapshot {what} cannot be read: {e}")),
                    Ok(_) => {}
                }
                let b = std::fs::read(&path)
                    .map_err(|e| format!("the index snapshot {what} cannot be read: {e}"))?;
                (path, Arc::new(b))
            }
            Home::Memory(k) => {
                let m = mem_snapshots().lock().unwrap_or_else(|e| e.into_inner());
                let b = m.get(&(*k, generation, n)).cloned().ok_or_else(|| {
                    format!("the {what} is not in this process (in-memory indexes live with the connection that built them)")
                })?;
                (PathBuf::from(what.clone()), b)
            }
        };
        let idx = IvfIndex::from_bytes(&path, &bytes, store_rows)
            .map_err(|e| format!("the index snapshot {what} is damaged: {e}"))?;
        if !idx.belongs_to(id, generation) {
            return Err(format!(
                "the index snapshot {what} belongs to another table or vector-file generation"
            ));
        }
        if idx.covered() != covered {
            return Err(format!(
                "the index snapshot {what} holds {} rows of the vector file, but <t>_info.index_covered says {covered}",
                idx.covered()
            ));
        }
        if idx.dim() != layout.dim() || idx.metric() != layout.metric() {
            return Err(format!(
                "the index snapshot {what} is {}-dimensional {}, the table {}-dimensional {}",
                idx.dim(),
                idx.metric(),
                layout.dim(),
                layout.metric()
            ));
        }
        Ok(idx)
    }
}

/// `phenix_check`'s look at the snapshot `<t>_info` names (if any): decoded (both CRCs, every
/// structural check), the table's own, covering `index_covered <= committed` rows. Problems are pushed
/// as lines naming the snapshot.
#[allow(clippy::too_many_arguments)]
pub(crate) fn check_snapshot(
    info: &super::shadow::Info,
    home: &Home,
    table: &str,
    id: &[u8; 16],
    generation: u64,
    rows: u64,
    layout: Layout,
    p: &mut Vec<String>,
) {
    let Some(n) = info.count(INDEX_GEN) else {
        if info.get(INDEX_GEN).is_some() {
            p.push(format!(
                "{table}_info: `{INDEX_GEN}` is not a non-negative integer; the index is ignored (queries use exact search)"
            ));
        }
        return;
    };
    let Some(covered) = info.count(INDEX_COVERED) else {
        p.push(format!(
            "{table}_info: `{INDEX_COVERED}` is not a non-negative integer; the index is ignored (queries use exact search)"
        ));
        return;
    };
    if covered > rows {
        p.push(format!(
            "{table}_info: the index covers {covered} rows but only {rows} are committed; the index is ignored (queries use exact search)"
        ));
        return;
    }
    if let Err(e) = home.read(id, generation, n, covered, rows, layout) {
        p.push(format!(
            "{table}: {e}; queries use exact search until INSERT INTO {table}({table}) VALUES ('build-index') rebuilds it"
        ));
    }
}

/// Registers `phenix_index_status(table)`: the table's index as this connection sees it (JSON:
/// `status` is `ok`, `not built …` or `unavailable … : <why>`; with a loaded index also `lists`,
/// `rows`, `covered`, `snapshot`, the default `nprobe` and `memory_bytes`).
pub(crate) fn register(conn: &rusqlite::Connection) -> rusqlite::Result<()> {
    use rusqlite::functions::FunctionFlags;
    crate::error::create_scalar(
        conn,
        "phenix_index_status",
        1,
        FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DIRECTONLY,
        |ctx| {
            let f = "phenix_index_status";
            let name = crate::args::text_arg(ctx.get_raw(0), f, "argument 1 (table name)")?;
            // SAFETY: the connection is only used for the duration of this call, on its own thread.
            let conn = unsafe { ctx.get_connection() }?;
            let st = super::retrieve::table_state(&conn, f, name)?;
            let mut s = super::registry::lock_state(&st);
            s.refresh_for_read()?;
            s.prepare_index()?;
            Ok(s.index_status().to_string())
        },
    )
}

/// The sidecar directory for snapshots of `db` (checked as the vector file's is).
pub(crate) fn dir_home(db: &Path) -> Result<Home, Error> {
    Ok(Home::Dir(super::sidecar::checked_sidecar_dir(db)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_declarations_and_names_bad_options() {
        assert_eq!(
            IndexDecl::parse("ivf(lists=2048, codes=sq8)").unwrap(),
            IndexDecl {
                lists: Some(2048),
                nprobe: None
            }
        );
        assert_eq!(
            IndexDecl::parse("IVF").unwrap(),
            IndexDecl {
                lists: None,
                nprobe: None
            }
        );
        assert_eq!(IndexDecl::parse("ivf(nprobe=4)").unwrap().nprobe, Some(4));
        for (bad, want) in [
            (
                "ivf(lists=0)",
                "lists=0 is out of range; expected an integer in 1..=65536",
            ),
            ("ivf(lists=65537)", "lists=65537 is out of range"),
            ("ivf(lists=-3)", "lists=-3 is out of range"),
            ("ivf(lists=x)", "lists=x is out of range"),
            ("ivf(nprobe=0)", "nprobe=0 is out of range"),
            (
                "ivf(codes=pq)",
                "codes=pq is not supported; expected codes=sq8",
            ),
            ("ivf(lists=4, lists=5)", "given twice"),
            ("ivf(foo=1)", "unknown index option `foo`"),
            ("hnsw(m=16)", "unknown index kind"),
            ("ivf(lists)", "must be key=value"),
        ] {
            let e = IndexDecl::parse(bad).unwrap_err();
            assert!(e.contains(want), "{bad}: {e}");
        }
    }

    #[test]
    fn default_nprobe_is_a_sixteenth_of_the_lists() {
        assert_eq!(default_nprobe(2048), 128);
        assert_eq!(default_nprobe(100), 8);
        assert_eq!(default_nprobe(3), 3);
        assert_eq!(default_nprobe(1), 1);
    }
}
