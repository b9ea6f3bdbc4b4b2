//! The metadata pre-filter of KNN queries: which live slots pass every metadata constraint, answered
//! from an in-memory cache of the metadata columns ([`MetaCache`]) when it can be, with SQLite's own
//! comparison rules, else by a `SELECT slot FROM <t>_rows WHERE …` in SQLite. The result is a
//! [`Bitmap`] of slots that the top-k search ranks.

use super::plan::MetaOp;
use super::state::TableState;
use phenix_core::Bitmap;
use rusqlite::types::{Value, ValueRef};
use std::cmp::Ordering;
use std::collections::HashMap;
use std::sync::Mutex;

/// The slots passing every metadata constraint of a KNN query, among `live`'s members.
///
/// Outside a transaction the constraints are evaluated against the table's [`MetaCache`] (when given:
/// `None` for conditions it cannot answer, IN lists and rowids) when it holds the columns (exactly as SQLite compares, see [`MetaCond`]); otherwise `sql` (`SELECT slot FROM
/// <t>_rows WHERE …` with `vals` bound) runs in SQLite.
pub(crate) fn prefilter(
    st: &TableState,
    cache: Option<&Mutex<MetaCache>>,
    conds: &[MetaCond],
    sql: &str,
    vals: &[Value],
    live: &Bitmap,
) -> rusqlite::Result<Bitmap> {
    let len = live.len();
    // Inside a transaction, a ROLLBACK would undo changes without a version bump: no cache there.
    if let Some(cache) = cache.filter(|_| st.conn().is_autocommit() && !st.in_write()) {
        let version = (
            st.data_version(),
            st.conn().total_changes(),
            st.committed(),
            st.store().len(),
        );
        let mut c = cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(mut b) = c.select(st, version, conds, len)? {
            b.intersect_with(live);
            return Ok(b);
        }
    }
    let mut stmt = st.conn().prepare_cached(sql)?;
    let mut rows = stmt.query(rusqlite::params_from_iter(vals.iter()))?;
    let mut b = Bitmap::new(len);
    while let Some(r) = rows.next()? {
        let s: i64 = r.get(0)?;
        if s >= 0 && (s as usize) < len {
            b.insert(s as usize);
        }
    }
    Ok(b)
}

/// What the cached columns were read at: (`PRAGMA data_version`, this connection's
/// `sqlite3_total_changes`, committed rows, store length). Another connection's commit moves the first,
/// any write of this one (through the table or not) the second; the cache is only used outside
/// transactions, where nothing is pending a rollback.
type MetaVersion = (i64, u64, u64, u64);

/// Metadata columns of one table held in memory by slot, so KNN pre-filters need no SQLite scan.
#[derive(Default)]
pub(crate) struct MetaCache {
    /// The version `cols` were read at.
    version: Option<MetaVersion>,
    /// The version of the last filtered query that found the cache stale: the columns are read only
    /// when a second query sees the same version, so alternating writes and queries never pay for it.
    pending: Option<MetaVersion>,
    /// Column index → values by slot (`None`: the column is not cacheable, e.g. it holds blobs or
    /// mixes text and numbers).
    cols: HashMap<usize, Option<CachedCol>>,
}

/// A numeric SQLite value.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Num {
    Null,
    Int(i64),
    Real(f64),
}

/// A cached column: every value numeric (or NULL), or every value text (or NULL).
#[derive(Debug)]
enum CachedCol {
    Num(Vec<Num>),
    Text(Vec<Option<Box<[u8]>>>),
}

impl MetaCache {
    /// The slots (of `0..len`) passing all of `conds`, or `None` when the cache cannot answer (stale on
    /// first sight of a version, or a column/constraint it cannot evaluate exactly).
    fn select(
        &mut self,
        st: &TableState,
        version: MetaVersion,
        conds: &[MetaCond],
        len: usize,
    ) -> rusqlite::Result<Option<Bitmap>> {
        if self.version != Some(version) {
            if self.pending != Some(version) {
                self.pending = Some(version);
                return Ok(None);
            }
            self.cols.clear();
            self.version = Some(version);
        }
        for c in conds {
            if let std::collections::hash_map::Entry::Vacant(e) = self.cols.entry(c.col) {
                let col = &st.def().columns[c.col];
                e.insert(load_column(st, &col.name, len)?);
            }
        }
        let mut out: Option<Bitmap> = None;
        for c in conds {
            let Some(col) = self.cols[&c.col].as_ref() else {
                return Ok(None);
            };
            let text_ok = matches!(
                affinity(&st.def().columns[c.col].decl_type),
                Affinity::Text | Affinity::Blob
            );
            let b = match (col, &c.rhs) {
                (CachedCol::Num(v), Rhs::Null) => {
                    eval(v.len(), len, c, |s| v[s] == Num::Null, |_| Ordering::Equal)
                }
                (CachedCol::Text(v), Rhs::Null) => {
                    eval(v.len(), len, c, |s| v[s].is_none(), |_| Ordering::Equal)
                }
                (CachedCol::Num(v), Rhs::Num(r)) => {
                    let r = *r;
                    eval(v.len(), len, c, |s| v[s] == Num::Null, |s| num_cmp(v[s], r))
                }
                (CachedCol::Text(v), Rhs::Text(r)) if text_ok => eval(
                    v.len(),
                    len,
                    c,
                    |s| v[s].is_none(),
                    |s| v[s].as_deref().unwrap_or_default().cmp(&r[..]),
                ),
                _ => return Ok(None),
            };
            match &mut out {
                None => out = Some(b),
                Some(o) => o.intersect_with(&b),
            }
        }
        Ok(out)
    }
}

/// `{s in 0..len : cond holds for slot s}`; slots past `have` (no cached value) are left out.
#[inline]
fn eval(
    have: usize,
    len: usize,
    c: &MetaCond,
    is_null: impl Fn(usize) -> bool,
    cmp: impl Fn(usize) -> Ordering,
) -> Bitmap {
    let n = have.min(len);
    let mut b = Bitmap::from_fn(n, |s| {
        if is_null(s) {
            c.null_ok
        } else if matches!(c.rhs, Rhs::Null) {
            c.mask == ALL
        } else {
            c.mask & ord_bit(cmp(s)) != 0
        }
    });
    b.truncate(len);
    b
}

/// Reads `SELECT slot, "<name>" FROM <t>_rows` into a cached column.
fn load_column(st: &TableState, name: &str, len: usize) -> rusqlite::Result<Option<CachedCol>> {
    let sql = format!(
        "SELECT slot, \"{}\" FROM {}",
        name.replace('"', "\"\""),
        st.rows_table()
    );
    let mut stmt = st.conn().prepare(&sql)?;
    let mut rows = stmt.query([])?;
    let mut col: Option<CachedCol> = None;
    while let Some(r) = rows.next()? {
        let s: i64 = r.get(0)?;
        if s < 0 || s as usize >= len {
            continue;
        }
        let s = s as usize;
        let v = r.get_ref(1)?;
        let n = match v {
            ValueRef::Null => continue,
            ValueRef::Integer(i) => Some(Num::Int(i)),
            ValueRef::Real(x) => Some(Num::Real(x)),
            ValueRef::Text(_) => None,
            ValueRef::Blob(_) => return Ok(None),
        };
        match (&mut col, n, v) {
            (None, Some(_), _) => col = Some(CachedCol::Num(vec![Num::Null; len])),
            (None, None, _) => col = Some(CachedCol::Text(vec![None; len])),
            _ => {}
        }
        match (col.as_mut().expect("set above"), n, v) {
            (CachedCol::Num(c), Some(x), _) => c[s] = x,
            (CachedCol::Text(c), None, ValueRef::Text(t)) => c[s] = Some(t.into()),
            _ => return Ok(None), // text and numbers mixed
        }
    }
    Ok(Some(
        col.unwrap_or_else(|| CachedCol::Num(vec![Num::Null; len])),
    ))
}

/// SQLite's column affinity of a declared type (https://sqlite.org/datatype3.html, 3.1).
#[derive(Debug, PartialEq)]
enum Affinity {
    Integer,
    Text,
    Blob,
    Real,
    Numeric,
}

fn affinity(decl: &str) -> Affinity {
    let d = decl.to_ascii_uppercase();
    if d.contains("INT") {
        Affinity::Integer
    } else if d.contains("CHAR") || d.contains("CLOB") || d.contains("TEXT") {
        Affinity::Text
    } else if d.contains("BLOB") || d.trim().is_empty() {
        Affinity::Blob
    } else if d.contains("REAL") || d.contains("FLOA") || d.contains("DOUB") {
        Affinity::Real
    } else {
        Affinity::Numeric
    }
}

const LT: u8 = 1;
const EQ: u8 = 2;
const GT: u8 = 4;
const ALL: u8 = LT | EQ | GT;

#[inline]
fn ord_bit(o: Ordering) -> u8 {
    match o {
        Ordering::Less => LT,
        Ordering::Equal => EQ,
        Ordering::Greater => GT,
    }
}

/// The right-hand side of a metadata constraint.
#[derive(Debug, Clone)]
enum Rhs {
    Null,
    Num(Num),
    Text(Box<[u8]>),
    /// Anything else (blobs): never evaluated from the cache.
    Other,
}

/// One metadata constraint `col <op> rhs`, as the orderings of a non-NULL value it accepts (`mask`)
/// and whether a NULL value passes (`null_ok`); with a NULL `rhs`, a non-NULL value passes iff
/// `mask == ALL` (`IS NOT NULL`).
#[derive(Debug, Clone)]
pub(crate) struct MetaCond {
    col: usize,
    mask: u8,
    null_ok: bool,
    rhs: Rhs,
}

impl MetaCond {
    pub(crate) fn new(col: usize, op: MetaOp, rhs: Option<Value>) -> MetaCond {
        let rhs = match rhs {
            None | Some(Value::Null) => Rhs::Null,
            Some(Value::Integer(i)) => Rhs::Num(Num::Int(i)),
            Some(Value::Real(x)) => Rhs::Num(Num::Real(x)),
            Some(Value::Text(t)) => Rhs::Text(t.into_bytes().into()),
            Some(Value::Blob(_)) => Rhs::Other,
        };
        let null_rhs = matches!(rhs, Rhs::Null);
        let (mask, null_ok) = match (op, null_rhs) {
            (MetaOp::Null, _) => (0, true),
            (MetaOp::NotNull, _) => (ALL, false),
            (MetaOp::Is, true) => (0, true),
            (MetaOp::Is, false) => (EQ, false),
            (MetaOp::IsNot, true) => (ALL, false),
            (MetaOp::IsNot, false) => (LT | GT, true),
            // `x <op> NULL` is NULL: nothing passes.
            (_, true) => (0, false),
            (MetaOp::Eq, _) => (EQ, false),
            (MetaOp::Ne, _) => (LT | GT, false),
            (MetaOp::Lt, _) => (LT, false),
            (MetaOp::Le, _) => (LT | EQ, false),
            (MetaOp::Gt, _) => (GT, false),
            (MetaOp::Ge, _) => (GT | EQ, false),
        };
        MetaCond {
            col,
            mask,
            null_ok,
            rhs,
        }
    }
}

/// SQLite's order of two non-NULL numbers (integers and reals compare exactly, as `sqlite3IntFloatCompare`).
fn num_cmp(a: Num, b: Num) -> Ordering {
    match (a, b) {
        (Num::Int(x), Num::Int(y)) => x.cmp(&y),
        // No NaN is stored (SQLite turns it into NULL); -0.0 == 0.0 as in SQLite.
        (Num::Real(x), Num::Real(y)) => x.partial_cmp(&y).unwrap_or(Ordering::Equal),
        (Num::Int(x), Num::Real(y)) => int_real_cmp(x, y),
        (Num::Real(x), Num::Int(y)) => int_real_cmp(y, x).reverse(),
        _ => Ordering::Equal,
    }
}

fn int_real_cmp(i: i64, r: f64) -> Ordering {
    if r.is_nan() {
        return Ordering::Greater;
    }
    if r < -9_223_372_036_854_775_808.0 {
        return Ordering::Greater;
    }
    if r >= 9_223_372_036_854_775_808.0 {
        return Ordering::Less;
    }
    let t = r.trunc();
    match i.cmp(&(t as i64)) {
        Ordering::Equal => {
            let f = r - t;
            if f > 0.0 {
                Ordering::Less
            } else if f < 0.0 {
                Ordering::Greater
            } else {
                Ordering::Equal
            }
        }
        o => o,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rusqlite::Connection;

    #[test]
    fn int_real_order_is_exact() {
        assert_eq!(int_real_cmp(3, 3.0), Ordering::Equal);
        assert_eq!(int_real_cmp(3, 3.5), Ordering::Less);
        assert_eq!(int_real_cmp(-2, -2.5), Ordering::Greater);
        assert_eq!(int_real_cmp(i64::MAX, 9.3e18), Ordering::Less);
        assert_eq!(int_real_cmp(i64::MIN, -9.3e18), Ordering::Greater);
        // 2^53 + 1 is not representable as f64: a lossy cast would call these equal.
        assert_eq!(
            int_real_cmp((1 << 53) + 1, (1u64 << 53) as f64),
            Ordering::Greater
        );
        assert_eq!(num_cmp(Num::Real(-0.0), Num::Real(0.0)), Ordering::Equal);
        assert_eq!(num_cmp(Num::Real(2.5), Num::Int(2)), Ordering::Greater);
    }

    fn ids(c: &Connection, sql: &str, p: &Value) -> Vec<i64> {
        let mut v: Vec<i64> = c
            .prepare(sql)
            .unwrap()
            .query_map([p], |r| r.get(0))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        v.sort_unstable();
        v
    }

    /// Filtered KNN returns exactly the rows a plain SQLite table with the same columns and types
    /// selects, on the first query of a version (SQL pre-filter), the second (cache built) and the third
    /// (cache used), after writes, and inside a transaction that rolls back.
    #[test]
    fn cached_prefilter_selects_what_sqlite_selects() {
        let c = Connection::open_in_memory().unwrap();
        crate::register(&c).unwrap();
        c.execute_batch(
            "CREATE VIRTUAL TABLE t USING phenix(v float32[2] distance=l2, n INTEGER, r REAL, s TEXT, u, +a TEXT);
             CREATE TABLE p(id INTEGER PRIMARY KEY, n INTEGER, r REAL, s TEXT, u, a TEXT);",
        )
        .unwrap();
        for i in 0..300i64 {
            let n: Value = if i % 11 == 0 {
                Value::Null
            } else {
                Value::Integer(i % 7)
            };
            let r = Value::Real((i % 5) as f64 * 0.5);
            let s: Value = if i % 13 == 0 {
                Value::Null
            } else {
                Value::Text(format!("s{}", i % 4))
            };
            let u: Value = if i % 2 == 0 {
                Value::Integer(i)
            } else {
                Value::Text(format!("{i}"))
            };
            let v = format!("[{i}, 0]");
            c.execute(
                "INSERT INTO t(rowid, v, n, r, s, u, a) VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'x')",
                rusqlite::params![i + 1, v, n, r, s, u],
            )
            .unwrap();
            c.execute(
                "INSERT INTO p(id, n, r, s, u, a) VALUES (?1, ?2, ?3, ?4, ?5, 'x')",
                rusqlite::params![i + 1, n, r, s, u],
            )
            .unwrap();
        }
        let cases: Vec<(&str, Value)> = vec![
            ("n = ?1", Value::Integer(3)),
            ("n < ?1", Value::Real(3.5)),
            ("n >= ?1", Value::Integer(2)),
            ("n != ?1", Value::Integer(4)),
            ("n IS ?1", Value::Null),
            ("n IS ?1", Value::Integer(5)),
            ("n IS NOT ?1", Value::Integer(3)),
            ("n IS NOT ?1", Value::Null),
            ("n = ?1", Value::Null),
            ("n IS NULL AND ?1 IS NULL", Value::Null),
            ("n IS NOT NULL AND ?1 IS NULL", Value::Null),
            ("r > ?1", Value::Integer(1)),
            ("r <= ?1", Value::Real(0.5)),
            ("s = ?1", Value::Text("s1".into())),
            ("s > ?1", Value::Text("s1".into())),
            ("s < ?1", Value::Integer(2)),
            ("u = ?1", Value::Integer(4)),
            ("n = ?1", Value::Text("3".into())),
            ("n > ?1 AND s = 's2'", Value::Integer(1)),
        ];
        let check = |when: &str| {
            for (f, p) in &cases {
                let want = ids(&c, &format!("SELECT id FROM p WHERE {f}"), p);
                for round in 0..3 {
                    let got = ids(
                        &c,
                        &format!("SELECT rowid FROM t WHERE v MATCH '[0, 0]' AND k = 1000 AND {f}"),
                        p,
                    );
                    assert_eq!(got, want, "{when}: `{f}` with {p:?}, round {round}");
                }
            }
        };
        check("after load");
        c.execute_batch("UPDATE t SET n = 3 WHERE rowid = 5; UPDATE p SET n = 3 WHERE id = 5;")
            .unwrap();
        c.execute_batch("DELETE FROM t WHERE rowid = 7; DELETE FROM p WHERE id = 7;")
            .unwrap();
        check("after autocommit writes");
        c.execute_batch(
            "BEGIN; UPDATE t SET n = 3 WHERE rowid = 9; UPDATE p SET n = 3 WHERE id = 9;",
        )
        .unwrap();
        check("inside a transaction");
        c.execute_batch("ROLLBACK").unwrap();
        check("after rollback");
    }
}
