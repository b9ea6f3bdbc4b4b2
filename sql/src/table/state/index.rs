//! The per-connection life of a table's IVF index (docs/design.md, "Commit protocol for the index"):
//!
//! - **load** ([`TableState::prepare_index`], at a KNN query): the snapshot `<t>_info.index_gen`
//!   names is read and checked once per `data_version`; rows of the vector file past what the index
//!   holds (appended since the snapshot, by any connection, or by this transaction) are added then, in
//!   GEMM blocks, so INSERT itself never touches the index. A snapshot that cannot be used (missing,
//!   damaged, another table's) leaves the table on exact search, with one notice on stderr per
//!   connection and the problem in `phenix_check`.
//! - **build** ([`TableState::build_index`], `INSERT INTO t(t) VALUES ('build-index')`): trains and
//!   fills a new index inside the write transaction, writes snapshot `n + 1` (fsynced), and names it in
//!   `<t>_info`; the commit makes it current, a rollback leaves it an orphan for the next writer's
//!   clean-up.
//! - **rollback**: a savepoint records the index's epoch; rolling back to it truncates the index to
//!   the restored row count, or drops it (reloaded at the next query) if it was rebuilt or remapped
//!   since.
//! - **automatic snapshot** ([`TableState::index_autosnapshot`], at `xSync`): once the rows past the
//!   snapshot exceed a tenth of it, the caught-up index is written as the next snapshot in the
//!   committing transaction.
//! - **compaction**: the index is remapped to the new slots (codes kept) and written as the new
//!   generation's snapshot in the same transaction.
//!
//! Deleted rows stay in the index until compaction; searches skip them through the live set.

use super::TableState;
use crate::args::table_err;
use crate::error::Error;
use crate::table::index::{self, Home, INDEX_COVERED, INDEX_GEN, PROGRESS_ROWS};
use crate::table::registry::search_threads;
use crate::table::shadow::{self, Info};
use crate::table::sidecar::{db_file, memory_identity};
use phenix_core::ivf::{IvfIndex, IvfParams};

/// The fewest rows past the snapshot that make `xSync` write a new one (besides a tenth of the rows
/// the snapshot holds).
pub(crate) const AUTO_SNAPSHOT_ROWS: u64 = 64;

/// A table's index in one connection.
#[derive(Default)]
pub(crate) struct IndexState {
    /// The index in use, if one is loaded.
    loaded: Option<Loaded>,
    /// Bumped whenever `loaded` is replaced, rebuilt or remapped (savepoints compare it).
    epoch: u64,
    /// The `data_version` at which `loaded` was last checked against `<t>_info` (`None`: check again).
    checked: Option<i64>,
    /// Why the recorded snapshot cannot be used (queries use exact search meanwhile).
    unavailable: Option<String>,
    /// Notices already printed by this connection.
    warned: Vec<String>,
}

struct Loaded {
    idx: IvfIndex,
    /// Its snapshot number (`<t>_info.index_gen`).
    n: u64,
    /// The vector-file generation it indexes.
    generation: u64,
}

impl IndexState {
    fn replace(&mut self, l: Option<Loaded>) {
        self.loaded = l;
        self.epoch += 1;
    }
}

/// Sets `<t>_info.key` to `value`, adding the key if it is absent (inside the transaction).
fn upsert(st: &TableState, key: &str, value: u64) -> rusqlite::Result<()> {
    st.conn.execute(
        &format!(
            "INSERT INTO {}(key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            shadow::info_table(&st.schema, &st.name)
        ),
        rusqlite::params![key, value as i64],
    )?;
    Ok(())
}

impl TableState {
    /// Where this table's snapshots live.
    pub(crate) fn index_home(&self) -> rusqlite::Result<Home> {
        Ok(match db_file(&self.conn, &self.schema)? {
            Some(db) => index::dir_home(&db)?,
            None => Home::Memory(
                self.mem
                    .unwrap_or((memory_identity(&self.conn, &self.schema), self.table_id)),
            ),
        })
    }

    /// The loaded index, if the table has a usable one ([`TableState::prepare_index`] loads it).
    pub(crate) fn ivf(&self) -> Option<&IvfIndex> {
        self.index.loaded.as_ref().map(|l| &l.idx)
    }

    /// The `nprobe` of a query that gives none: the declaration's, else 1/16 of the lists.
    pub(crate) fn default_nprobe(&self) -> usize {
        let lists = self.ivf().map_or(1, IvfIndex::lists);
        self.def
            .index
            .as_ref()
            .and_then(|d| d.nprobe)
            .unwrap_or_else(|| index::default_nprobe(lists))
    }

    /// `phenix_index_status(t)`: what this connection's index is, as JSON.
    pub(crate) fn index_status(&self) -> serde_json::Value {
        let Some(decl) = &self.def.index else {
            return serde_json::json!({"declared": false, "status": "no index declared"});
        };
        let status = match (&self.index.loaded, &self.index.unavailable) {
            (Some(_), _) => "ok".to_string(),
            (None, Some(why)) => format!("unavailable, queries use exact search: {why}"),
            (None, None) => {
                "not built, queries use exact search (INSERT INTO t(t) VALUES ('build-index'))"
                    .to_string()
            }
        };
        let mut v = serde_json::json!({
            "declared": true,
            "lists_declared": decl.lists,
            "status": status,
        });
        if let Some(l) = &self.index.loaded {
            v["lists"] = l.idx.lists().into();
            v["rows"] = l.idx.len().into();
            v["covered"] = l.idx.covered().into();
            v["snapshot"] = l.n.into();
            v["nprobe"] = self.default_nprobe().into();
            v["memory_bytes"] = l.idx.memory_bytes().into();
        }
        v
    }

    /// The epoch a savepoint records.
    pub(super) fn index_epoch(&self) -> u64 {
        self.index.epoch
    }

    /// Before a KNN query (after [`TableState::refresh_for_read`] or inside a write transaction): makes
    /// the loaded index the one `<t>_info` names, holding every row this connection can see.
    pub(crate) fn prepare_index(&mut self) -> rusqlite::Result<()> {
        if self.def.index.is_none() || self.broken.is_some() {
            return Ok(());
        }
        let dv = self.data_version;
        if self.index.checked != Some(dv) {
            let info = Info::read(&self.conn, &self.schema, &self.name)?;
            let want = match (info.count(INDEX_GEN), info.count(INDEX_COVERED)) {
                (Some(n), Some(c)) => Some((n, c)),
                _ => None,
            };
            match want {
                None => {
                    if self.index.loaded.is_some() {
                        self.index.replace(None);
                    }
                    self.index.unavailable = None;
                }
                Some((n, covered)) => {
                    let current = self
                        .index
                        .loaded
                        .as_ref()
                        .is_some_and(|l| l.n == n && l.generation == self.generation);
                    if !current {
                        self.index.replace(None);
                        let rows = self.visible_rows();
                        let home = self.index_home()?;
                        let got = if covered > rows {
                            Err(format!(
                                "{}_info says the index covers {covered} rows, but {rows} are committed",
                                self.name
                            ))
                        } else {
                            home.read(
                                &self.table_id,
                                self.generation,
                                n,
                                covered,
                                rows,
                                self.def.layout,
                            )
                        };
                        match got {
                            Ok(idx) => {
                                self.index.replace(Some(Loaded {
                                    idx,
                                    n,
                                    generation: self.generation,
                                }));
                                self.index.unavailable = None;
                            }
                            Err(why) => {
                                // A snapshot a later commit replaced (a WAL reader behind a writer
                                // that rebuilt or compacted): exact search for now, no alarm.
                                let replaced =
                                    home.newer_exists(&self.table_id, self.generation, n);
                                if !replaced && !self.index.warned.contains(&why) {
                                    // The user is told once per connection (stderr), and by
                                    // phenix_check; results stay exact.
                                    eprintln!(
                                        "phenix: table {t}: {why}; queries on {t} use exact search (phenix_check('{t}') reports it; INSERT INTO {t}({t}) VALUES ('build-index') rebuilds the index)",
                                        t = self.name
                                    );
                                    self.index.warned.push(why.clone());
                                }
                                self.index.unavailable = Some(why);
                            }
                        }
                    }
                }
            }
            self.index.checked = Some(dv);
        }
        // Rows appended since the snapshot (or since the last query): added in GEMM blocks. Dead rows
        // are added too (searches skip them): a ROLLBACK TO can bring a row deleted in this
        // transaction back.
        let vis = self.visible_rows();
        if let Some(l) = self.index.loaded.as_mut() {
            if l.idx.covered() > vis {
                l.idx.truncate(vis);
            }
            let from = l.idx.covered();
            if from < vis {
                let mut s = self.store.lock().unwrap_or_else(|e| e.into_inner());
                let view = s.view(vis).map_err(|e| table_err(&self.name, e))?;
                l.idx
                    .add_rows(&view, from..vis, None, search_threads())
                    .map_err(|e| table_err(&self.name, e))?;
            }
        }
        Ok(())
    }

    /// `INSERT INTO t(t) VALUES ('build-index')`: trains and fills the declared index on the live rows,
    /// writes it as a new snapshot and names it in `<t>_info`, inside the write transaction.
    pub(crate) fn build_index(&mut self) -> rusqlite::Result<()> {
        self.begin_write()?;
        let name = self.name.clone();
        let decl = self.def.index.clone().ok_or_else(|| {
            table_err(
                &name,
                format!(
                    "build-index: the table declares no index; declare one when creating it, e.g. CREATE VIRTUAL TABLE {name} USING phenix(embedding float16[256], index=ivf(lists=1024))"
                ),
            )
        })?;
        let live = self
            .live
            .as_ref()
            .ok_or_else(|| Error::Internal("live set not loaded".into()))?;
        let rows = live.bitmap().count();
        let lists = decl
            .lists
            .unwrap_or_else(|| IvfParams::for_rows(rows).lists.min(rows.max(1)));
        if rows == 0 || rows < lists {
            return Err(table_err(
                &name,
                format!(
                    "build-index: an IVF index with {lists} lists needs at least {lists} live rows to train, the table has {rows}; the table stays on exact search (insert more rows, or declare fewer lists)"
                ),
            ));
        }
        let threads = search_threads();
        let mut params = IvfParams::new(lists);
        params.threads = threads;
        let progress = rows >= PROGRESS_ROWS;
        let t0 = std::time::Instant::now();
        let len = self.store.lock().unwrap_or_else(|e| e.into_inner()).len();
        // Interruptible (sqlite3_interrupt) and reported to the progress callback between chunks.
        // SAFETY: only the handle's address is used (to read its interrupt flag).
        let op = crate::control::Op::begin(unsafe { self.conn.handle() }, "build_index", len);
        let idx = {
            let mut s = self.store.lock().unwrap_or_else(|e| e.into_inner());
            let view = s.view(len).map_err(|e| table_err(&name, e))?;
            if progress {
                eprintln!(
                    "phenix: {name}: build-index: training {lists} lists on a sample of {} of {rows} rows",
                    (64 * lists).min(rows)
                );
            }
            let mut idx = IvfIndex::train(
                &view,
                Some(live.bitmap()),
                &params,
                self.table_id,
                self.generation,
            )
            .map_err(|e| table_err(&name, e))?;
            op.check()?;
            const STEP: u64 = 1 << 18;
            let mut a = 0;
            while a < len {
                let b = (a + STEP).min(len);
                idx.add_rows(&view, a..b, Some(live.bitmap()), threads)
                    .map_err(|e| table_err(&name, e))?;
                op.step(b - a)?;
                if progress && (b.is_multiple_of(1 << 20) || b == len) {
                    eprintln!(
                        "phenix: {name}: build-index: {b} / {len} rows assigned ({:.1} s)",
                        t0.elapsed().as_secs_f64()
                    );
                }
                a = b;
            }
            idx
        };
        let n = Info::read(&self.conn, &self.schema, &self.name)?
            .count(INDEX_GEN)
            .map_or(1, |n| n + 1);
        self.write_snapshot(&idx, n)?;
        op.finish();
        if progress {
            eprintln!(
                "phenix: {name}: build-index: done, {} rows in {lists} lists, {:.1} s",
                idx.len(),
                t0.elapsed().as_secs_f64()
            );
        }
        self.index.replace(Some(Loaded {
            idx,
            n,
            generation: self.generation,
        }));
        self.index.unavailable = None;
        self.index.checked = Some(self.data_version);
        // The snapshot replaced is an orphan once this commits: the next write transaction removes it.
        self.orphans_collected = false;
        Ok(())
    }

    /// Writes `idx` as snapshot `n` and names it in `<t>_info` (inside the transaction).
    fn write_snapshot(&self, idx: &IvfIndex, n: u64) -> rusqlite::Result<()> {
        let home = self.index_home()?;
        home.write(&self.table_id, self.generation, n, idx.to_bytes())
            .map_err(|e| table_err(&self.name, e))?;
        upsert(self, INDEX_GEN, n)?;
        upsert(self, INDEX_COVERED, idx.covered())?;
        Ok(())
    }

    /// At `xSync`: when the rows past the snapshot exceed a tenth of it (and [`AUTO_SNAPSHOT_ROWS`]),
    /// writes the index (caught up to this transaction's rows) as the next snapshot inside the
    /// transaction, so a new connection adds a short tail instead of every row since the last build.
    /// Failing to write the file only skips this (the snapshot is an optimisation; the table stays
    /// correct without it).
    pub(super) fn index_autosnapshot(&mut self) -> rusqlite::Result<()> {
        if self.def.index.is_none() || self.broken.is_some() {
            return Ok(());
        }
        let info = Info::read(&self.conn, &self.schema, &self.name)?;
        let (Some(n), Some(covered)) = (info.count(INDEX_GEN), info.count(INDEX_COVERED)) else {
            return Ok(());
        };
        let len = self.store.lock().unwrap_or_else(|e| e.into_inner()).len();
        let tail = len.saturating_sub(covered);
        if tail < AUTO_SNAPSHOT_ROWS || tail.saturating_mul(10) < covered {
            return Ok(());
        }
        self.prepare_index()?;
        let Some(l) = self.index.loaded.as_ref() else {
            return Ok(());
        };
        if l.n != n || l.idx.covered() != len {
            return Ok(());
        }
        let home = self.index_home()?;
        if home
            .write(&self.table_id, self.generation, n + 1, l.idx.to_bytes())
            .is_err()
        {
            return Ok(());
        }
        let c = l.idx.covered();
        upsert(self, INDEX_GEN, n + 1)?;
        upsert(self, INDEX_COVERED, c)?;
        if let Some(l) = self.index.loaded.as_mut() {
            l.n = n + 1;
        }
        // A failed commit rolls back to the previous snapshot: the epoch tells the rollback to reload.
        self.index.epoch += 1;
        self.orphans_collected = false;
        Ok(())
    }

    /// A rollback restored the store to `len` rows and the index epoch recorded then.
    pub(super) fn index_restore(&mut self, len: u64, epoch: u64) {
        if self.index.epoch != epoch {
            // Rebuilt or remapped since: `<t>_info` (restored by SQLite) names the snapshot to reload.
            self.index.replace(None);
            self.index.checked = None;
        } else if let Some(l) = self.index.loaded.as_mut() {
            if l.idx.covered() > len {
                l.idx.truncate(len);
            }
        }
    }

    /// Compaction into `generation`: the live rows moved to slots `0..slots.len()` in the order of
    /// `slots` (their old slots). Remaps the loaded index (codes kept) and writes it as the new
    /// generation's snapshot; an index that could not be loaded is dropped from `<t>_info` (build it
    /// again). Runs before the connection switches to the new file; on an error the index is dropped
    /// from memory and reloaded from `<t>_info` at the next query.
    pub(super) fn index_compacted(
        &mut self,
        slots: &[i64],
        generation: u64,
    ) -> rusqlite::Result<()> {
        if self.def.index.is_none() {
            return Ok(());
        }
        let info = Info::read(&self.conn, &self.schema, &self.name)?;
        let Some(n) = info.count(INDEX_GEN) else {
            return Ok(());
        };
        let Some(mut l) = self.index.loaded.take() else {
            self.conn.execute(
                &format!(
                    "DELETE FROM {} WHERE key IN ('{INDEX_GEN}', '{INDEX_COVERED}')",
                    shadow::info_table(&self.schema, &self.name)
                ),
                [],
            )?;
            self.index.replace(None);
            self.index.unavailable = None;
            return Ok(());
        };
        self.index.epoch += 1;
        let top = slots
            .iter()
            .map(|&s| s.max(0) as usize + 1)
            .max()
            .unwrap_or(0);
        let mut map = vec![u64::MAX; top];
        for (new, &old) in slots.iter().enumerate() {
            map[old.max(0) as usize] = new as u64;
        }
        l.idx.remap(
            |s| map.get(s as usize).copied().filter(|&x| x != u64::MAX),
            slots.len() as u64,
            generation,
        );
        let home = self.index_home()?;
        let r = home
            .write(&self.table_id, generation, n + 1, l.idx.to_bytes())
            .map_err(|e| table_err(&self.name, e))
            .and_then(|()| upsert(self, INDEX_GEN, n + 1))
            .and_then(|()| upsert(self, INDEX_COVERED, slots.len() as u64));
        match r {
            Ok(()) => {
                self.index.replace(Some(Loaded {
                    idx: l.idx,
                    n: n + 1,
                    generation,
                }));
                self.index.checked = Some(self.data_version);
                Ok(())
            }
            Err(e) => {
                self.index.replace(None);
                self.index.checked = None;
                Err(e)
            }
        }
    }
}
