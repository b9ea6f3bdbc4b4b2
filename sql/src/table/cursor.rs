//! The cursor of a phenix table: xFilter runs the plan ([`knn`](PhenixCursor::knn),
//! [`point`](PhenixCursor::point) or [`scan`](PhenixCursor::scan)) into a list of rows, then
//! xNext/xColumn/xRowid walk it.

use super::names::quoted;
use super::plan::{self, IdxArg, Plan};
use super::prefilter::{prefilter, MetaCache, MetaCond};
use super::rank;
use super::registry::{lock_state, search_threads, SharedState};
use super::schema::TableDef;
use super::state::TableState;
use crate::args::{arg, owned, positive_k, table_err};
use crate::error::{sql_error, Error};
use crate::vector::parse_vector;
use phenix_core::topk::Candidates;
use phenix_core::{Bitmap, ElemType};
use rusqlite::types::{Value, ValueRef};
use rusqlite::vtab::{sqlite3_vtab_cursor, Context, Filters};
use std::ffi::c_int;
use std::sync::{Arc, Mutex};

/// A row a cursor will return.
struct OutRow {
    rowid: i64,
    slot: u64,
    distance: Option<f64>,
    /// Metadata and aux values (`None` for KNN rows: fetched when a column is asked for).
    cols: Option<Vec<Value>>,
}

/// A cursor over a phenix table.
#[repr(C)]
pub(crate) struct PhenixCursor {
    base: sqlite3_vtab_cursor,
    state: SharedState,
    meta: Arc<Mutex<MetaCache>>,
    rows: Vec<OutRow>,
    pos: usize,
}

/// The xFilter arguments of a plan, decoded.
#[derive(Default)]
struct Bound {
    query: Option<Vec<f32>>,
    k: Option<usize>,
    /// The tightest distance bound and whether it is `<=` (compared as doubles, as SQL would).
    max_d: Option<(f64, bool)>,
    rowid: Option<Value>,
    /// SQL conditions on `<t>_rows`, their bound values, and the same constraints for the cache.
    conds: Vec<String>,
    cond_vals: Vec<Value>,
    meta_conds: Vec<MetaCond>,
    /// Whether the conditions include ones the metadata cache cannot answer (IN lists, rowids).
    uncached: bool,
    /// `nprobe = ?` (a table with an index).
    nprobe: Option<usize>,
    /// `exact = 1`: exact search even where an index exists.
    exact: bool,
}

impl Bound {
    fn read(st: &TableState, args: &[IdxArg], values: &Filters<'_>) -> rusqlite::Result<Bound> {
        let def = st.def();
        let name = st.name();
        let mut b = Bound::default();
        for (i, a) in args.iter().enumerate() {
            let v = arg(values, i);
            match *a {
                IdxArg::Match => {
                    let l = def.layout;
                    b.query = Some(
                        parse_vector(
                            v,
                            &format!("MATCH on {}", def.vector),
                            Some((l.dim(), ElemType::F32)),
                        )
                        .map_err(|e| table_err(name, e))?,
                    )
                }
                IdxArg::K | IdxArg::Limit => {
                    let what = if *a == IdxArg::K { "k" } else { "LIMIT" };
                    let kk = positive_k(v, &format!("phenix table {name}: {what}"))?;
                    b.k = Some(b.k.map_or(kk, |o| o.min(kk)));
                }
                IdxArg::DistLt | IdxArg::DistLe => {
                    let t = match v {
                        ValueRef::Integer(i) => i as f64,
                        ValueRef::Real(r) => r,
                        _ => {
                            return Err(sql_error(format!(
                                "phenix table {name}: the distance bound must be a number"
                            )))
                        }
                    };
                    let le = *a == IdxArg::DistLe;
                    // The tighter of two bounds; at the same value `<` is tighter than `<=`.
                    if b.max_d
                        .is_none_or(|(m, mle)| t < m || (t == m && mle && !le))
                    {
                        b.max_d = Some((t, le));
                    }
                }
                IdxArg::Nprobe => {
                    b.nprobe = Some(positive_k(v, &format!("phenix table {name}: nprobe"))?)
                }
                IdxArg::Exact => {
                    b.exact = match v {
                        ValueRef::Integer(0) => false,
                        ValueRef::Integer(1) => true,
                        _ => {
                            return Err(sql_error(format!(
                        "phenix table {name}: exact must be 0 (use the index) or 1 (exact search)"
                    )))
                        }
                    }
                }
                IdxArg::Rowid => b.rowid = Some(owned(v).map_err(|e| table_err(name, e))?),
                IdxArg::RowidIn | IdxArg::MetaIn(_) => {
                    let col = match *a {
                        IdxArg::MetaIn(c) => quoted(&def.columns[c].name),
                        _ => "rowid".to_string(),
                    };
                    let mut marks = Vec::new();
                    for x in super::vtab_in::values(values, i)? {
                        b.cond_vals.push(x);
                        marks.push(format!("?{}", b.cond_vals.len()));
                    }
                    b.conds.push(if marks.is_empty() {
                        "0".to_string()
                    } else {
                        format!("{col} IN ({})", marks.join(", "))
                    });
                    b.uncached = true;
                }
                IdxArg::MetaColl(col, op, coll) => {
                    let c = format!("{} COLLATE {}", quoted(&def.columns[col].name), coll.name());
                    b.conds.push(op.sql(&c, b.cond_vals.len() + 1));
                    if op.has_rhs() {
                        b.cond_vals.push(owned(v).map_err(|e| table_err(name, e))?);
                    }
                    b.uncached = true;
                }
                IdxArg::Meta(col, op) => {
                    let c = quoted(&def.columns[col].name);
                    b.conds.push(op.sql(&c, b.cond_vals.len() + 1));
                    let rhs = if op.has_rhs() {
                        let o = owned(v).map_err(|e| table_err(name, e))?;
                        b.cond_vals.push(o.clone());
                        Some(o)
                    } else {
                        None
                    };
                    b.meta_conds.push(MetaCond::new(col, op, rhs));
                }
            }
        }
        Ok(b)
    }
}

impl PhenixCursor {
    pub(crate) fn new(state: SharedState, meta: Arc<Mutex<MetaCache>>) -> Self {
        PhenixCursor {
            base: sqlite3_vtab_cursor::default(),
            state,
            meta,
            rows: Vec::new(),
            pos: 0,
        }
    }

    /// xFilter: runs the plan xBestIndex chose.
    pub(crate) fn filter(
        &mut self,
        idx_num: c_int,
        idx_str: &str,
        values: &Filters<'_>,
    ) -> rusqlite::Result<()> {
        let state = self.state.clone();
        let mut st = lock_state(&state);
        st.refresh_for_read()?;
        let (plan, args) = plan::parse(idx_num, idx_str, st.def().n_meta())?;
        let b = Bound::read(&st, &args, values)?;
        if plan == Plan::Knn && !b.exact && b.k.is_some() {
            st.prepare_index()?;
        }
        self.rows.clear();
        self.pos = 0;
        self.rows = match plan {
            Plan::Knn => self.knn(&st, b)?,
            Plan::Point => point(&st, b)?,
            Plan::Scan => scan(&st, b)?,
        };
        Ok(())
    }

    /// The KNN plan: pre-filter on metadata (in memory when cached, else in SQLite), then rank only the
    /// qualifying live slots; rows by ascending distance, ties by ascending rowid.
    fn knn(&self, st: &TableState, mut b: Bound) -> rusqlite::Result<Vec<OutRow>> {
        let q = b
            .query
            .take()
            .ok_or_else(|| Error::Internal("KNN plan without a query".into()))?;
        let k = b.k.unwrap_or(usize::MAX);
        let live = st
            .live()
            .ok_or_else(|| Error::Internal("live set not loaded".into()))?;
        let n = st.visible_rows();
        if let Some(r) = b.rowid.take() {
            // `rowid = ?` beside MATCH: the one row, before the k nearest are chosen.
            b.cond_vals.push(r);
            b.conds.push(format!("rowid = ?{}", b.cond_vals.len()));
            b.uncached = true;
        }
        let filtered: Option<Bitmap> = if b.conds.is_empty() {
            None
        } else {
            let sql = format!(
                "SELECT slot FROM {} WHERE {}",
                st.rows_table(),
                b.conds.join(" AND ")
            );
            Some(prefilter(
                st,
                (!b.uncached).then_some(&*self.meta),
                &b.meta_conds,
                &sql,
                &b.cond_vals,
                live.bitmap(),
            )?)
        };
        let candidates = match &filtered {
            Some(f) => Candidates::Bitmap(f),
            // Every visible slot live (no deletes): a plain range, no per-row bitmap test.
            None if live.bitmap().contains_all_below(n as usize) => Candidates::All,
            None => Candidates::Bitmap(live.bitmap()),
        };
        if !b.exact {
            if let Some(idx) = st.ivf() {
                let pool = filtered.as_ref().unwrap_or(live.bitmap());
                if let Some(rows) = ivf_knn(st, idx, &q, k, &b, pool, filtered.is_some(), n)? {
                    return Ok(rows);
                }
            }
        }
        let req = rank::Request {
            query: &q,
            candidates,
            k,
            bound: b.max_d,
            threads: search_threads(),
        };
        let ranked = {
            // SAFETY: only the handle's address is used (to read its interrupt flag).
            let op = crate::control::Op::begin(unsafe { st.conn().handle() }, "knn", n);
            let mut store = st.store();
            let view = store.view(n).map_err(|e| table_err(st.name(), e))?;
            let r =
                rank::rank(&view, &req, |s| live.rowid(s)).map_err(|e| table_err(st.name(), e))?;
            op.finish();
            r
        };
        Ok(ranked
            .into_iter()
            .map(|(rowid, slot, d)| OutRow {
                rowid,
                slot,
                distance: Some(d),
                cols: None,
            })
            .collect())
    }

    /// xNext.
    pub(crate) fn next(&mut self) {
        self.pos += 1;
    }

    /// xEof.
    pub(crate) fn eof(&self) -> bool {
        self.pos >= self.rows.len()
    }

    fn row(&self) -> rusqlite::Result<&OutRow> {
        self.rows
            .get(self.pos)
            .ok_or_else(|| Error::Internal("the cursor is past its last row".into()).into())
    }

    /// xRowid.
    pub(crate) fn rowid(&self) -> rusqlite::Result<i64> {
        Ok(self.row()?.rowid)
    }

    /// xColumn: the vector (raw bytes of the stored element type), a metadata or aux column, the
    /// distance (KNN only), or NULL for `k` and the command column.
    pub(crate) fn column(&self, ctx: &mut Context, i: c_int) -> rusqlite::Result<()> {
        let row = self.row()?;
        let st = lock_state(&self.state);
        let def = st.def();
        if i == TableDef::VECTOR_COL {
            if ctx.no_change() {
                return Ok(());
            }
            let bytes = st
                .store()
                .read_raw(row.slot)
                .map_err(|e| table_err(st.name(), e))?;
            return ctx.set_result(&bytes);
        }
        if let Some(c) = def.column_at(i) {
            if let Some(cols) = &row.cols {
                return ctx.set_result(&cols[c]);
            }
            let v: Value = st
                .conn()
                .prepare_cached(&format!(
                    "SELECT \"{}\" FROM {} WHERE rowid = ?1",
                    def.columns[c].name,
                    st.rows_table()
                ))?
                .query_row([row.rowid], |r| r.get(0))?;
            return ctx.set_result(&v);
        }
        if i == def.distance_col() {
            return match row.distance {
                Some(d) => ctx.set_result(&d),
                None => ctx.set_result(&Value::Null),
            };
        }
        ctx.set_result(&Value::Null)
    }
}

/// The KNN plan through the IVF index: the `k` nearest of the `pool` slots by the index (probing
/// `nprobe` lists, more when a filter leaves fewer than `k` rows in them), re-ranked exactly, by
/// (distance, rowid). `None` when exact search is the better plan: no `k` or one reaching every row, a
/// filter that leaves few rows (at most the re-rank shortlist, or 1/20 of the rows: scanning them
/// exactly costs less than probing lists until `k` qualify), or distances beyond float32.
#[allow(clippy::too_many_arguments)]
fn ivf_knn(
    st: &TableState,
    idx: &phenix_core::ivf::IvfIndex,
    q: &[f32],
    k: usize,
    b: &Bound,
    pool: &Bitmap,
    filtered: bool,
    n: u64,
) -> rusqlite::Result<Option<Vec<OutRow>>> {
    if k as u64 >= n {
        // Every row (no k, or k past the rows): an exact scan is what the index would do.
        return Ok(None);
    }
    let mut p =
        phenix_core::ivf::IvfSearch::new(k, b.nprobe.unwrap_or_else(|| st.default_nprobe()));
    if filtered {
        let c = pool.count();
        if c <= p.rerank.max(k) || c.saturating_mul(20) <= n as usize {
            return Ok(None);
        }
    }
    p.candidates = Some(pool);
    p.threads = search_threads();
    let live = st
        .live()
        .ok_or_else(|| Error::Internal("live set not loaded".into()))?;
    let metric = st.def().layout.metric();
    let hits = {
        let mut store = st.store();
        let view = store.view(n).map_err(|e| table_err(st.name(), e))?;
        rank::ivf_search(&view, idx, q, metric, k, p).map_err(|e| table_err(st.name(), e))?
    };
    if hits.iter().any(|h| !h.distance.is_finite()) {
        return Ok(None);
    }
    let within = |d: f64| match b.max_d {
        None => true,
        Some((m, true)) => d <= m,
        Some((m, false)) => d < m,
    };
    let mut rows: Vec<OutRow> = hits
        .into_iter()
        .filter_map(|h| {
            let rowid = live.rowid(h.slot)?;
            let d = h.distance as f64;
            within(d).then_some(OutRow {
                rowid,
                slot: h.slot,
                distance: Some(d),
                cols: None,
            })
        })
        .collect();
    rows.sort_by(|a, b| {
        a.distance
            .unwrap_or(0.0)
            .total_cmp(&b.distance.unwrap_or(0.0))
            .then(a.rowid.cmp(&b.rowid))
    });
    rows.truncate(k);
    Ok(Some(rows))
}

/// The point plan: the row with the given rowid (and the metadata constraints SQLite passed along).
fn point(st: &TableState, b: Bound) -> rusqlite::Result<Vec<OutRow>> {
    select_rows(st, b)
}

/// The scan plan: every row in rowid order, metadata constraints applied in SQLite.
fn scan(st: &TableState, b: Bound) -> rusqlite::Result<Vec<OutRow>> {
    select_rows(st, b)
}

/// `SELECT rowid, slot, <columns> FROM <t>_rows WHERE <conditions> ORDER BY rowid`.
fn select_rows(st: &TableState, b: Bound) -> rusqlite::Result<Vec<OutRow>> {
    let def = st.def();
    let mut names = String::new();
    for c in &def.columns {
        names.push_str(&format!(", \"{}\"", c.name));
    }
    let mut vals = b.cond_vals;
    let mut wh = b.conds;
    if let Some(r) = b.rowid {
        vals.push(r);
        wh.push(format!("rowid = ?{}", vals.len()));
    }
    let where_sql = if wh.is_empty() {
        String::new()
    } else {
        format!(" WHERE {}", wh.join(" AND "))
    };
    let sql = format!(
        "SELECT rowid, slot{names} FROM {}{where_sql} ORDER BY rowid",
        st.rows_table()
    );
    let ncols = def.columns.len();
    let mut stmt = st.conn().prepare_cached(&sql)?;
    let mut q = stmt.query(rusqlite::params_from_iter(vals.iter()))?;
    let mut rows = Vec::new();
    while let Some(r) = q.next()? {
        let mut cols = Vec::with_capacity(ncols);
        for i in 0..ncols {
            cols.push(r.get::<_, Value>(2 + i)?);
        }
        rows.push(OutRow {
            rowid: r.get(0)?,
            slot: r.get::<_, i64>(1)? as u64,
            distance: None,
            cols: Some(cols),
        });
    }
    Ok(rows)
}
