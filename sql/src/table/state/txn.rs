//! The commit protocol of docs/design.md ("Transactions"), as the xMethods run it: `begin_write` at a
//! transaction's first write, `sync` at xSync, `commit`/`rollback`, and the savepoint hooks.

use super::TableState;
use crate::error::Error;
use crate::table::shadow::{self, COMMITTED};
use crate::table::sidecar::collect_orphans;

impl TableState {
    /// Step 1 of the commit protocol, once per write transaction: take SQLite's write lock, read the
    /// committed count, and remove rows past it (leftovers of a crash or rollback).
    pub(crate) fn begin_write(&mut self) -> rusqlite::Result<()> {
        if self.in_write {
            return Ok(());
        }
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
        // After a compaction the count may equal the old one and still must be written (the table
        // now names another file); otherwise an unchanged count needs no write.
        if n != self.committed || !self.compactions.is_empty() {
            shadow::set(&self.conn, &self.schema, &self.name, COMMITTED, n as i64)?;
        }
        if self.remapping || !self.compactions.is_empty() {
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
            self.committed = n;
            if let Some(m) = self.remaps_written.take() {
                self.remaps = m;
            }
            self.remapping = false;
            if !self.compactions.is_empty() {
                self.compactions.clear();
                // The old file is an orphan now; the next write of this connection removes it.
                self.orphans_collected = false;
                self.publish_memory_store();
            }
        }
        self.in_write = false;
        self.savepoints.clear();
        // Our own commit does not change data_version; keep the cache.
        Ok(())
    }

    /// Step 5: the transaction rolled back: forget the uncommitted appends.
    pub(crate) fn rollback(&mut self) -> rusqlite::Result<()> {
        while self.undo_compaction() {}
        self.remapping = false;
        self.remaps_written = None;
        let mut r = Ok(());
        if self.in_write {
            let c = self.committed;
            let mut s = self.store();
            if s.len() > c {
                // If this fails the rows stay past the committed count, where no reader looks, and the
                // next write transaction truncates them; the state below is reset either way.
                r = s.truncate(c).map_err(|e| Error::from(e).into());
            }
        }
        self.in_write = false;
        self.savepoints.clear();
        self.live = None;
        r
    }

    /// `xSavepoint`.
    pub(crate) fn savepoint(&mut self, i: i32) {
        let n = self.store().len();
        self.savepoints.retain(|(s, _)| *s < i);
        self.savepoints.push((i, n));
    }

    /// `xRelease`.
    pub(crate) fn release(&mut self, i: i32) {
        self.savepoints.retain(|(s, _)| *s < i);
        // A compaction made under savepoint `i` or a later one now belongs to the enclosing savepoint
        // (or to the transaction): a new savepoint `i` rolled back later must not undo it.
        let outer = if i > 0 { Some(i - 1) } else { None };
        for c in &mut self.compactions {
            if c.under_savepoint.is_some_and(|m| m >= i) {
                c.under_savepoint = outer;
            }
        }
    }

    /// `xRollbackTo`.
    pub(crate) fn rollback_to(&mut self, i: i32) -> rusqlite::Result<()> {
        // Undo the compactions made after savepoint `i` was opened (newest first).
        while matches!(self.compactions.last(), Some(c) if c.under_savepoint.is_some_and(|m| i <= m))
        {
            self.undo_compaction();
        }
        if let Some(&(_, n)) = self.savepoints.iter().find(|(s, _)| *s == i) {
            let mut s = self.store();
            if s.len() > n && n >= self.committed {
                // Failing to give the space back is not an error of ROLLBACK TO (SQLite would only say
                // "SQL logic error"): the rows stay as dead slots that no `<t>_rows` entry names, and
                // compaction reclaims them.
                let _ = s.truncate(n);
            }
        }
        self.savepoints.retain(|(s, _)| *s <= i);
        self.live = None;
        Ok(())
    }
}
