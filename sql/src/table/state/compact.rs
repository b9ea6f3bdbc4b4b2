//! Compaction (`INSERT INTO t(t) VALUES ('optimize')`); its undo on rollback is a snapshot restore
//! (`txn.rs`).

use super::TableState;
use crate::args::table_err;
use crate::table::registry;
use crate::table::shadow::{self, GENERATION};
use crate::table::sidecar::{checked_sidecar_path, db_file};
use phenix_core::store::{Header, VectorStore};
use std::path::Path;
use std::sync::{Arc, Mutex};

impl TableState {
    /// After a compaction of an in-memory table commits, a re-connect must find the new store.
    pub(super) fn publish_memory_store(&self) {
        if let Some(key) = self.mem {
            registry::publish_memory_store(key, self.generation, &self.store, &self.keep);
        }
    }

    /// Compaction: copies the live rows, in slot order and bit for bit, into a new vector file of
    /// generation `g + 1`, syncs it, renumbers the slots in `<t>_rows` and names the new generation in
    /// `<t>_info`, all inside the current write transaction. Until SQLite commits, every other
    /// connection keeps using generation `g`, which is never touched; a crash before the commit leaves
    /// `g + 1` as an orphan, a crash after it leaves `g` as one, and the next writer removes it. Returns
    /// the number of rows kept.
    pub(crate) fn optimize(&mut self) -> rusqlite::Result<u64> {
        /// Rows are copied in chunks of about this many bytes.
        const COPY_BYTES: usize = 4 << 20;
        self.begin_write()?;
        // The index (if any) holds every row before it is remapped to the new slots.
        self.prepare_index()?;
        let slots: Vec<i64> = {
            let mut st = self.conn.prepare(&format!(
                "SELECT slot FROM {} ORDER BY slot",
                self.rows_table()
            ))?;
            let v = st
                .query_map([], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?;
            v
        };
        // Progress counts rows copied; an interrupt stops the copy at its next chunk (the new file is
        // removed and the statement fails, changing nothing).
        // SAFETY: only the handle's address is used (to read its interrupt flag).
        let op = crate::control::Op::begin(
            unsafe { self.conn.handle() },
            "optimize",
            slots.len() as u64,
        );
        let generation = self.generation + 1;
        let layout = self.def.layout;
        let mut new = match db_file(&self.conn, &self.schema)? {
            Some(db) => {
                let path = checked_sidecar_path(&db, &self.table_id, generation)?;
                // A file of this generation can only be the leftover of a compaction that crashed or
                // rolled back: `<t>_info` names an older one and we hold the write lock.
                match std::fs::remove_file(&path) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                        return Err(table_err(
                            &self.name,
                            crate::error::Error::Io(format!(
                                "cannot replace the stale file {}: {e}",
                                path.display()
                            )),
                        ))
                    }
                    _ => {}
                }
                let header = Header {
                    layout,
                    table_id: self.table_id,
                    generation,
                };
                VectorStore::create_with_header(&path, header)
                    .map_err(|e| table_err(&self.name, e))?
            }
            None => VectorStore::in_memory(layout),
        };
        if let Err(e) = self
            .fill_compacted(&mut new, &slots, generation, COPY_BYTES, &op)
            .and_then(|()| self.index_compacted(&slots, generation))
        {
            if let Some(p) = new.path().map(Path::to_path_buf) {
                drop(new);
                let _ = std::fs::remove_file(p);
            }
            return Err(e);
        }
        // The store replaced stays in the savepoint snapshots (and the transaction's begin snapshot)
        // that name it, so a rollback to any of them puts it back.
        self.store = Arc::new(Mutex::new(new));
        self.generation = generation;
        // No reader can be using the new file, so nothing in it is protected from rollback truncation.
        self.committed = 0;
        self.live = None;
        self.load_live()?;
        op.finish();
        Ok(slots.len() as u64)
    }

    /// Copies the rows at `slots` of the current store into `new`, syncs it, and rewrites the shadow
    /// tables for `generation` (inside the transaction).
    fn fill_compacted(
        &self,
        new: &mut VectorStore,
        slots: &[i64],
        generation: u64,
        copy_bytes: usize,
        op: &crate::control::Op,
    ) -> rusqlite::Result<()> {
        {
            let mut old = self.store();
            let n = old.len();
            let view = old.view(n).map_err(|e| table_err(&self.name, e))?;
            let mut buf = Vec::with_capacity(copy_bytes + self.def.layout.stride());
            let mut pending = 0u64;
            for &slot in slots {
                if slot < 0 || slot as u64 >= n {
                    return Err(table_err(
                        &self.name,
                        crate::error::Error::Corrupt(format!(
                            "a row points at slot {slot}, but the vector file holds {n} rows; run phenix_check"
                        )),
                    ));
                }
                buf.extend_from_slice(view.raw(slot as usize..slot as usize + 1));
                pending += 1;
                if buf.len() >= copy_bytes {
                    new.append_encoded(&buf)
                        .map_err(|e| table_err(&self.name, e))?;
                    buf.clear();
                    op.step(std::mem::take(&mut pending))
                        .map_err(|e| e.in_table(&self.name))?;
                }
            }
            if !buf.is_empty() {
                new.append_encoded(&buf)
                    .map_err(|e| table_err(&self.name, e))?;
            }
            op.step(pending).map_err(|e| e.in_table(&self.name))?;
        }
        new.sync().map_err(|e| table_err(&self.name, e))?;
        op.check().map_err(|e| e.in_table(&self.name))?;
        let rows = self.rows_table();
        self.conn.execute(
            &format!(
                "UPDATE {rows} SET slot = m.n FROM (SELECT rowid AS r, row_number() OVER (ORDER BY slot) - 1 AS n FROM {rows}) AS m WHERE {rows}.rowid = m.r"
            ),
            [],
        )?;
        shadow::set(
            &self.conn,
            &self.schema,
            &self.name,
            GENERATION,
            generation as i64,
        )?;
        Ok(())
    }
}
