//! The commit protocol of docs/design.md ("Transactions"), as the xMethods run it: `begin_write` at a
//! transaction's first write, `sync` at xSync, `commit`/`rollback`, and the savepoint hooks.

use super::TableState;
use crate::error::{panic_point, Error};
use crate::table::shadow::{self, COMMITTED};
use crate::table::sidecar::collect_orphans;
use phenix_core::store::VectorStore;
use std::sync::{Arc, Mutex};

/// What a rollback returns a table to: the store in use (a compaction replaces it), how many rows it
/// held, and the generation and committed count that went with it.
///
/// SQLite numbers savepoints from 0 for the outermost one it counts; the savepoint that *starts* a
/// transaction (`SAVEPOINT` outside `BEGIN`) is not counted, so `ROLLBACK TO` it calls `xRollbackTo(-1)`,
/// and a table that joins a transaction late is told only of the savepoint level current at its
/// `xBegin`. A rollback to savepoint `i` therefore restores the snapshot taken at `xSavepoint(i)` if
/// this table has one, and otherwise the state at the transaction's first write: nothing of this
/// table changed before it.
#[derive(Clone)]
pub(crate) struct Snapshot {
    store: Arc<Mutex<VectorStore>>,
    len: u64,
    generation: u64,
    committed: u64,
    /// The IVF index's epoch (`state/index.rs`): a rollback truncates the index, or drops it if it
    /// was rebuilt or remapped since.
    index_epoch: u64,
}

impl TableState {
    fn snapshot(&self) -> Snapshot {
        Snapshot {
            store: self.store.clone(),
            len: self.store().len(),
            generation: self.generation,
            committed: self.committed,
            index_epoch: self.index_epoch(),
        }
    }

    /// Returns to `snap`: its store (truncated back to its length; rows past it are this
    /// transaction's, past every reader's committed count) and its generation and committed count.
    /// SQLite restores the shadow tables itself; the live set is reloaded from them.
    fn restore(&mut self, snap: &Snapshot) -> rusqlite::Result<()> {
        self.restore_state(snap);
        let mut s = self.store();
        if s.len() > snap.len {
            s.truncate(snap.len).map_err(Error::from)?;
        }
        Ok(())
    }

    /// The part of [`TableState::restore`] that cannot fail: the store, generation and committed count
    /// of `snap`, and the live set dropped (rows past `snap.len` stay, unreferenced).
    fn restore_state(&mut self, snap: &Snapshot) {
        if !Arc::ptr_eq(&self.store, &snap.store) {
            // A compaction is undone: its file is an orphan for the next write to remove.
            self.orphans_collected = false;
        }
        self.store = snap.store.clone();
        self.generation = snap.generation;
        self.committed = snap.committed;
        self.live = None;
        self.index_restore(snap.len, snap.index_epoch);
    }

    /// Whether this transaction replaced the vector store (a compaction not rolled back).
    fn compacted(&self) -> bool {
        self.begin
            .as_ref()
            .is_some_and(|b| !Arc::ptr_eq(&b.store, &self.store))
    }

    /// Step 1 of the commit protocol, once per write transaction: take SQLite's write lock, read the
    /// committed count, and remove rows past it (leftovers of a crash or rollback).
    pub(crate) fn begin_write(&mut self) -> rusqlite::Result<()> {
        if self.in_write {
            return Ok(());
        }
        self.usable()?;
        // A no-op write takes the write lock before we look at or truncate the file.
        shadow::take_write_lock(&self.conn, &self.schema, &self.name)?;
        if !self.orphans_collected {
            collect_orphans(&self.conn, &self.schema, None)?;
            self.orphans_collected = true;
        }
        // Other connections may have committed since this one last looked (a write can come without a
        // read before it): take their state up, under the write lock.
        let dv = self.data_version_now()?;
        let (c, g, m) = self.read_info()?;
        if dv != self.data_version || c != self.committed || g != self.generation {
            self.catch_up(c, g, m)?;
            self.data_version = dv;
        }
        {
            // Leftovers of a crashed or rolled-back writer, past the committed count.
            let mut s = self.store();
            if s.len() > c {
                s.truncate(c).map_err(Error::from)?;
            }
        }
        self.in_write = true;
        self.begin = Some(self.snapshot());
        if self.live.is_none() {
            self.load_live()?;
        }
        Ok(())
    }

    /// Step 3: make the appended rows durable and record the new committed count in the transaction.
    pub(crate) fn sync(&mut self) -> rusqlite::Result<()> {
        if !self.in_write {
            return Ok(());
        }
        let n = {
            let mut s = self.store();
            s.sync().map_err(Error::from)?;
            s.len()
        };
        self.index_autosnapshot()?;
        // After a compaction the count may equal the old one and still must be written (the table
        // now names another file); otherwise an unchanged count needs no write.
        let compacted = self.compacted();
        if n != self.committed || compacted {
            shadow::set(&self.conn, &self.schema, &self.name, COMMITTED, n as i64)?;
        }
        if self.remapping || compacted {
            let m = shadow::bump_remaps(&self.conn, &self.schema, &self.name)?;
            self.remaps_written = Some(m);
        }
        Ok(())
    }

    /// Step 4: the transaction committed.
    pub(crate) fn commit(&mut self) -> rusqlite::Result<()> {
        if self.in_write {
            let mut s = self.store();
            let n = s.len();
            s.set_committed(n).map_err(Error::from)?;
            drop(s);
            panic_point("xCommit: store committed");
            self.committed = n;
            if let Some(m) = self.remaps_written.take() {
                self.remaps = m;
            }
            self.remapping = false;
            if self.compacted() {
                // The old file is an orphan now; the next write of this connection removes it.
                self.orphans_collected = false;
                self.publish_memory_store();
            }
            panic_point("xCommit: count taken over");
        }
        self.in_write = false;
        self.savepoints.clear();
        self.begin = None;
        // Our own commit does not change data_version; keep the cache.
        Ok(())
    }

    /// Step 5: the transaction rolled back: back to the state at its first write (compactions undone,
    /// uncommitted appends forgotten).
    pub(crate) fn rollback(&mut self) -> rusqlite::Result<()> {
        self.remapping = false;
        self.remaps_written = None;
        let r = match self.begin.take() {
            // If truncating fails the rows stay past the committed count, where no reader looks, and
            // the next write transaction truncates them; the state below is reset either way.
            Some(b) => self.restore(&b),
            None => Ok(()),
        };
        panic_point("xRollback: store restored");
        self.in_write = false;
        self.savepoints.clear();
        self.live = None;
        r
    }

    /// `xSavepoint(i)`: remember the state at savepoint `i` (savepoints `>= i` are gone).
    pub(crate) fn savepoint(&mut self, i: i32) {
        self.savepoints.retain(|(s, _)| *s < i);
        let snap = if self.in_write {
            Some(self.snapshot())
        } else {
            None
        };
        self.savepoints.push((i, snap));
    }

    /// `xRelease(i)`: savepoints `>= i` are gone; their changes now belong to the enclosing one.
    pub(crate) fn release(&mut self, i: i32) {
        self.savepoints.retain(|(s, _)| *s < i);
    }

    /// `xRollbackTo(i)`: back to the state at savepoint `i` (see [`Snapshot`]); savepoint `i` stays
    /// open, later ones are gone.
    pub(crate) fn rollback_to(&mut self, i: i32) -> rusqlite::Result<()> {
        self.savepoints.retain(|(s, _)| *s <= i);
        let snap = match self.savepoints.iter().find(|(s, _)| *s == i) {
            Some((_, Some(snap))) => Some(snap.clone()),
            _ => self.begin.clone(),
        };
        self.live = None;
        panic_point("xRollbackTo: savepoints dropped");
        match snap {
            // Failing to give the space back is not an error of ROLLBACK TO (SQLite would only say
            // "SQL logic error"): the rows stay as dead slots that no `<t>_rows` entry names, and
            // compaction reclaims them. The store, generation and count are restored either way.
            Some(snap) => {
                let _ = self.restore(&snap);
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// Makes the state consistent with what SQLite holds after `failed` returned an error or
    /// panicked part-way (SQLite ignores the result of xCommit and xRollback, and has restored the
    /// shadow tables in every case). Without this a table whose xCommit failed still believed its
    /// transaction open, and a later `ROLLBACK` truncated the vector file back to that transaction's
    /// start, past rows SQLite had committed since.
    ///
    /// Nothing here can fail: the cached state is forgotten, and the next read or write reloads the
    /// committed count, generation and live set from `<t>_info` and `<t>_rows` (`data_version` reset).
    pub(crate) fn recover(&mut self, failed: Failed) {
        match failed {
            Failed::Commit => {
                // SQLite committed: a compaction of an in-memory table must be findable by a
                // re-connect (xCommit publishes it; it may not have got there).
                if self.in_write && self.compacted() {
                    self.publish_memory_store();
                }
                self.forget_transaction();
            }
            Failed::Rollback => {
                // SQLite rolled back: the store of the transaction's first write is the one
                // `<t>_info` names again. Rows appended past its length stay until the next writer
                // truncates them (no reader looks past the committed count).
                if let Some(b) = self.begin.take() {
                    self.restore_state(&b);
                }
                self.forget_transaction();
            }
            Failed::RollbackTo(i) => {
                // The transaction goes on, back at savepoint `i`: the store and counts of that
                // savepoint (a compaction since then undone), without giving space back.
                self.savepoints.retain(|(s, _)| *s <= i);
                let snap = match self.savepoints.iter().find(|(s, _)| *s == i) {
                    Some((_, Some(snap))) => Some(snap.clone()),
                    _ => self.begin.clone(),
                };
                if let Some(snap) = snap {
                    self.restore_state(&snap);
                }
                self.live = None;
            }
        }
    }

    /// After a transaction ended abnormally: no transaction, nothing cached that could be stale.
    fn forget_transaction(&mut self) {
        self.in_write = false;
        self.begin = None;
        self.savepoints.clear();
        self.remapping = false;
        self.remaps_written = None;
        self.live = None;
        // Forces the next read to reload `<t>_info` (and this connection's next write reloads it anyway).
        self.data_version = -1;
        // A compaction's old file (or an undone one's new file) may be an orphan now.
        self.orphans_collected = false;
    }
}

/// Which transaction hook failed ([`TableState::recover`]).
#[derive(Clone, Copy, Debug)]
pub(crate) enum Failed {
    /// xCommit: SQLite committed.
    Commit,
    /// xRollback: SQLite rolled back.
    Rollback,
    /// xRollbackTo(i): SQLite rolled back to savepoint `i`; the transaction continues.
    RollbackTo(i32),
}
