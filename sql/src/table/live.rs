//! The live set of a table: which slots of the vector file hold live rows, and the row id of each.
//!
//! Invariants (kept by the methods here, the only code that changes a live set):
//! - a slot is live iff it is in `bitmap` (its entry in `rowids` is then the row id; any value, the
//!   smallest i64 included, is a valid row id, so liveness never comes from the row-id map);
//! - no two slots carry the same row id (rows come from `<t>_rows`, whose rowid is the primary key;
//!   loading refuses two rows on one slot);
//! - every slot is below the store length the set was loaded or extended for.
//!
//! The row ids come from one of two places: `<t>_rows` (read whole: tables of format 1 and in-memory
//! tables), or the table's row-id file, mapped ([`Live::load_mapped`]): every slot below the committed
//! count is live except those listed in `<t>_dead`, so opening costs a map and a read of the deletions
//! since the last compaction, and catching up with another connection costs its appends (a longer map)
//! and its deletions (`<t>_dead` entries past the last one seen).

use crate::error::Error;
use phenix_core::store::IdsSnapshot;
use phenix_core::Bitmap;
use rusqlite::Connection;

/// The row-id entry of a slot with no live row (only a filler: liveness is the bitmap's).
const DEAD: i64 = i64::MIN;

/// Which slots hold live rows, and their row ids (rebuilt from `<t>_rows` when stale).
#[derive(Debug, Default)]
pub(crate) struct Live {
    bitmap: Bitmap,
    rowids: Rowids,
    /// The largest `<t>_dead.seq` applied (mapped sets).
    dead_seen: i64,
}

/// Where a live set's row ids come from.
#[derive(Debug)]
enum Rowids {
    /// Read from `<t>_rows`, by slot.
    Owned(Vec<i64>),
    /// The row-id file's entries (slots below `ids.len()`), then this connection's own appends past
    /// them (by slot − `ids.len()`).
    Mapped { ids: IdsSnapshot, extra: Vec<i64> },
}

impl Default for Rowids {
    fn default() -> Self {
        Rowids::Owned(Vec::new())
    }
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
            rowids: Rowids::Owned(vec![DEAD; len]),
            dead_seen: 0,
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
        if let Rowids::Owned(v) = &mut self.rowids {
            if v.len() < to as usize {
                v.resize(to as usize, DEAD);
            }
        }
        for (rowid, slot) in found {
            self.claim(slot, rowid, table)?;
        }
        Ok(())
    }

    /// A live set over slots `0..len` from the row-id file's entries `ids` (which cover them): every
    /// slot is live except those `<dead>` lists.
    pub(crate) fn load_mapped(
        conn: &Connection,
        rows: &str,
        dead: &str,
        ids: IdsSnapshot,
        len: usize,
        table: &str,
    ) -> rusqlite::Result<Live> {
        if ids.len() < len {
            return Err(Error::Corrupt(format!(
                "phenix table {table}: its row-id file covers {} slots, {len} are needed; run phenix_check",
                ids.len()
            ))
            .into());
        }
        let mut bitmap = Bitmap::new(0);
        bitmap.extend_full(len);
        let mut live = Live {
            bitmap,
            rowids: Rowids::Mapped {
                ids,
                extra: Vec::new(),
            },
            dead_seen: 0,
        };
        live.apply_dead(conn, dead, table)?;
        live.spot_check(conn, rows, table)?;
        Ok(live)
    }

    /// Checks the rows with the smallest and the largest row id (two index lookups) against the map: a
    /// committed count or a row-id file that does not fit `<t>_rows` (a crafted count, a file of
    /// another state) is refused at open instead of answering from it. Every result row is checked
    /// again as it is returned (`TableState::check_result_row`); `phenix_check` checks every row.
    fn spot_check(&self, conn: &Connection, rows: &str, table: &str) -> rusqlite::Result<()> {
        let len = self.bitmap.len();
        for order in ["ASC", "DESC"] {
            let r: Option<(i64, rusqlite::types::Value)> = rusqlite::OptionalExtension::optional(
                conn.prepare_cached(&format!(
                    "SELECT rowid, slot FROM {rows} ORDER BY rowid {order} LIMIT 1"
                ))?
                .query_row([], |r| Ok((r.get(0)?, r.get(1)?))),
            )?;
            let Some((rowid, v)) = r else { return Ok(()) };
            let slot = slot_of(rusqlite::types::ValueRef::from(&v), rowid, table)?;
            if slot < 0 || slot as usize >= len {
                return Err(Error::Corrupt(format!(
                    "phenix table {table}: row {rowid} points at slot {slot}, but only {len} rows are committed; run phenix_check"
                ))
                .into());
            }
            if self.rowid(slot as u64) != Some(rowid) {
                return Err(Error::Corrupt(format!(
                    "phenix table {table}: row {rowid} is at slot {slot}, but the row-id file and {table}_dead say {}; run phenix_check",
                    match self.rowid(slot as u64) {
                        Some(o) => format!("row {o} is there"),
                        None => "that slot holds no row".to_string(),
                    }
                ))
                .into());
            }
        }
        Ok(())
    }

    /// Whether the row ids come from the row-id file.
    pub(crate) fn is_mapped(&self) -> bool {
        matches!(self.rowids, Rowids::Mapped { .. })
    }

    /// A mapped set after other connections committed: slots up to `ids.len()` (their appends) join
    /// as live, then the deletions they recorded in `<dead>` since the last one seen leave.
    pub(crate) fn catch_up_mapped(
        &mut self,
        conn: &Connection,
        dead: &str,
        ids: IdsSnapshot,
        table: &str,
    ) -> rusqlite::Result<()> {
        self.bitmap.extend_full(ids.len());
        self.rowids = Rowids::Mapped {
            ids,
            extra: Vec::new(),
        };
        self.apply_dead(conn, dead, table)
    }

    /// Removes the slots of `<dead>` entries past the last one applied. A slot is never reused within
    /// a generation, so applying an entry twice (a connection's own deletions) changes nothing.
    fn apply_dead(&mut self, conn: &Connection, dead: &str, table: &str) -> rusqlite::Result<()> {
        let mut st = conn.prepare_cached(&format!(
            "SELECT seq, slot FROM {dead} WHERE seq > ?1 ORDER BY seq"
        ))?;
        let mut q = st.query([self.dead_seen])?;
        let len = self.bitmap.len();
        while let Some(r) = q.next()? {
            let seq: i64 = r.get(0)?;
            let slot = match r.get_ref(1)? {
                rusqlite::types::ValueRef::Integer(s) if s >= 0 && (s as usize) < len => s as usize,
                other => {
                    return Err(Error::Corrupt(format!(
                        "phenix table {table}: {table}_dead entry {seq} names slot {other:?}, but only {len} rows are committed; run phenix_check"
                    ))
                    .into())
                }
            };
            self.bitmap.remove(slot);
            self.dead_seen = self.dead_seen.max(seq);
        }
        Ok(())
    }

    /// Puts `rowid` on a free `slot` (loading): two rows on one slot are damage.
    fn claim(&mut self, slot: usize, rowid: i64, table: &str) -> rusqlite::Result<()> {
        if self.bitmap.contains(slot) {
            return Err(Error::Corrupt(format!(
                "phenix table {table}: rows {} and {rowid} both point at slot {slot}; run phenix_check",
                self.rowid(slot as u64).unwrap_or(DEAD)
            ))
            .into());
        }
        self.bitmap.insert(slot);
        self.put(slot, rowid);
        Ok(())
    }

    /// Records `rowid` as the row id of `slot` (liveness is the caller's).
    fn put(&mut self, slot: usize, rowid: i64) {
        let remapped = match &self.rowids {
            Rowids::Mapped { ids, .. } => slot < ids.len() && ids.get(slot) != Some(rowid),
            Rowids::Owned(_) => false,
        };
        if remapped {
            // A mapped slot never changes its row id (a row that does moves to a new slot); should
            // one be given another anyway, hold every row id in memory from here on.
            let n = self.bitmap.len().max(slot + 1);
            let v: Vec<i64> = (0..n).map(|s| self.rowid_any(s)).collect();
            self.rowids = Rowids::Owned(v);
        }
        match &mut self.rowids {
            Rowids::Owned(v) => {
                if v.len() <= slot {
                    v.resize(slot + 1, DEAD);
                }
                v[slot] = rowid;
            }
            Rowids::Mapped { ids, extra } => {
                if let Some(i) = slot.checked_sub(ids.len()) {
                    if extra.len() <= i {
                        extra.resize(i + 1, DEAD);
                    }
                    extra[i] = rowid;
                }
            }
        }
    }

    /// The row id recorded for `slot`, live or not (`DEAD` when none).
    fn rowid_any(&self, slot: usize) -> i64 {
        match &self.rowids {
            Rowids::Owned(v) => v.get(slot).copied().unwrap_or(DEAD),
            Rowids::Mapped { ids, extra } => ids
                .get(slot)
                .or_else(|| extra.get(slot.checked_sub(ids.len())?).copied())
                .unwrap_or(DEAD),
        }
    }

    /// The row at `slot` was deleted or moved away.
    pub(crate) fn mark_dead(&mut self, slot: u64) {
        let slot = slot as usize;
        self.bitmap.remove(slot);
        if let Rowids::Owned(v) = &mut self.rowids {
            if let Some(r) = v.get_mut(slot) {
                *r = DEAD;
            }
        }
    }

    /// Row `rowid` now lives at `slot` (an insert, or the new place of an updated row).
    pub(crate) fn set(&mut self, slot: u64, rowid: i64) {
        let slot = slot as usize;
        self.bitmap.insert(slot);
        self.put(slot, rowid);
    }

    /// The live slots.
    pub(crate) fn bitmap(&self) -> &Bitmap {
        &self.bitmap
    }

    /// The row id at `slot`, if it is live.
    pub(crate) fn rowid(&self, slot: u64) -> Option<i64> {
        let s = slot as usize;
        if self.bitmap.contains(s) {
            Some(self.rowid_any(s))
        } else {
            None
        }
    }

    /// `(rowid, slot)` of every live row, by ascending rowid.
    pub(crate) fn by_rowid(&self) -> Vec<(i64, usize)> {
        let mut pairs: Vec<(i64, usize)> =
            self.bitmap.iter().map(|s| (self.rowid_any(s), s)).collect();
        pairs.sort_unstable();
        pairs
    }
}
