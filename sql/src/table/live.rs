//! The live set of a table: which slots of the vector file hold live rows, and the row id of each.
//!
//! Invariants (kept by the methods here, the only code that changes a live set):
//! - a slot is live iff it is in `bitmap` (its entry in `rowids` is then the row id; any value, the
//!   smallest i64 included, is a valid row id, so liveness never comes from the row-id map);
//! - no two slots carry the same row id (rows come from `<t>_rows`, whose rowid is the primary key;
//!   loading refuses two rows on one slot);
//! - every slot is below the store length the set was loaded or extended for.

use crate::error::Error;
use phenix_core::Bitmap;
use rusqlite::Connection;

/// The row-id entry of a slot with no live row (only a filler: liveness is the bitmap's).
const DEAD: i64 = i64::MIN;

/// Which slots hold live rows, and their row ids (rebuilt from `<t>_rows` when stale).
#[derive(Debug, Default)]
pub(crate) struct Live {
    bitmap: Bitmap,
    rowids: Vec<i64>,
}

/// The slot of `<t>_rows` row `rowid` as an integer; anything else is damage.
fn slot_of(v: rusqlite::types::ValueRef<'_>, rowid: i64, table: &str) -> rusqlite::Result<i64> {
    use rusqlite::types::ValueRef;
    match v {
        ValueRef::Integer(s) => Ok(s),
        other => Err(Error::Corrupt(format!(
            "phenix table {table}: row {rowid} has a slot of type {:?} in {table}_rows; expected an integer; run phenix_check",
            other.data_type()
        ))
        .into()),
    }
}

impl Live {
    /// Reads `SELECT rowid, slot FROM <rows>` into a live set over `len` slots (the rows that are
    /// committed, or visible to this connection's own write transaction); a row pointing at or past
    /// `len`, a slot that is not an integer, or two rows on one slot are damage.
    pub(crate) fn load(
        conn: &Connection,
        rows: &str,
        len: usize,
        table: &str,
    ) -> rusqlite::Result<Live> {
        let mut live = Live {
            bitmap: Bitmap::new(len),
            rowids: vec![DEAD; len],
        };
        let mut st = conn.prepare(&format!("SELECT rowid, slot FROM {rows}"))?;
        let mut q = st.query([])?;
        while let Some(r) = q.next()? {
            let rowid: i64 = r.get(0)?;
            let slot = slot_of(r.get_ref(1)?, rowid, table)?;
            if slot < 0 || slot as usize >= len {
                return Err(Error::Corrupt(format!(
                    "phenix table {table}: row {rowid} points at slot {slot}, but only {len} rows are committed; run phenix_check"
                ))
                .into());
            }
            live.claim(slot as usize, rowid, table)?;
        }
        Ok(live)
    }

    /// Adds the rows pointing at slots `from..to` (appended by other connections). The newest rows
    /// usually have the largest row ids, so `<rows>` is read from the end and the read stops once every
    /// slot of the range is accounted for (all of it, if some slot has no row).
    pub(crate) fn extend(
        &mut self,
        conn: &Connection,
        rows: &str,
        from: u64,
        to: u64,
        table: &str,
    ) -> rusqlite::Result<()> {
        let want = (to - from) as usize;
        let mut found: Vec<(i64, usize)> = Vec::with_capacity(want.min(1 << 20));
        {
            let mut st = conn.prepare_cached(&format!(
                "SELECT rowid, slot FROM {rows} ORDER BY rowid DESC"
            ))?;
            let mut q = st.query([])?;
            while found.len() < want {
                let Some(r) = q.next()? else { break };
                let rowid: i64 = r.get(0)?;
                let slot = slot_of(r.get_ref(1)?, rowid, table)?;
                if slot >= from as i64 {
                    if slot >= to as i64 {
                        return Err(Error::Corrupt(format!(
                            "phenix table {table}: row {rowid} points at slot {slot}, but {to} rows are committed; run phenix_check"
                        ))
                        .into());
                    }
                    found.push((rowid, slot as usize));
                }
            }
        }
        if self.rowids.len() < to as usize {
            self.rowids.resize(to as usize, DEAD);
        }
        for (rowid, slot) in found {
            self.claim(slot, rowid, table)?;
        }
        Ok(())
    }

    /// Puts `rowid` on a free `slot` (loading): two rows on one slot are damage.
    fn claim(&mut self, slot: usize, rowid: i64, table: &str) -> rusqlite::Result<()> {
        if self.bitmap.contains(slot) {
            return Err(Error::Corrupt(format!(
                "phenix table {table}: rows {} and {rowid} both point at slot {slot}; run phenix_check",
                self.rowids[slot]
            ))
            .into());
        }
        self.bitmap.insert(slot);
        self.rowids[slot] = rowid;
        Ok(())
    }

    /// The row at `slot` was deleted or moved away.
    pub(crate) fn mark_dead(&mut self, slot: u64) {
        let slot = slot as usize;
        self.bitmap.remove(slot);
        if let Some(r) = self.rowids.get_mut(slot) {
            *r = DEAD;
        }
    }

    /// Row `rowid` now lives at `slot` (an insert, or the new place of an updated row).
    pub(crate) fn set(&mut self, slot: u64, rowid: i64) {
        let slot = slot as usize;
        self.bitmap.insert(slot);
        if self.rowids.len() <= slot {
            self.rowids.resize(slot + 1, DEAD);
        }
        self.rowids[slot] = rowid;
    }

    /// The live slots.
    pub(crate) fn bitmap(&self) -> &Bitmap {
        &self.bitmap
    }

    /// The row id at `slot`, if it is live.
    pub(crate) fn rowid(&self, slot: u64) -> Option<i64> {
        let s = slot as usize;
        if s < self.bitmap.len() && self.bitmap.contains(s) {
            self.rowids.get(s).copied()
        } else {
            None
        }
    }

    /// `(rowid, slot)` of every live row, by ascending rowid.
    pub(crate) fn by_rowid(&self) -> Vec<(i64, usize)> {
        let mut pairs: Vec<(i64, usize)> =
            self.bitmap.iter().map(|s| (self.rowids[s], s)).collect();
        pairs.sort_unstable();
        pairs
    }
}
