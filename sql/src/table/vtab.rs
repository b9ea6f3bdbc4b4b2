//! The `phenix` virtual table: rusqlite trait implementations, query planning (xBestIndex) and cursors.
//!
//! Which SQL calls which method:
//! - `CREATE VIRTUAL TABLE` → `create`; first use in a connection → `connect`; `DROP TABLE` → `destroy`.
//! - `INSERT`/`UPDATE`/`DELETE` → `begin` (once per transaction), then `insert`/`update`/`delete`;
//!   `COMMIT` → `sync` then `commit`; `ROLLBACK` → `rollback`; `SAVEPOINT`/`RELEASE`/`ROLLBACK TO` →
//!   `xSavepoint`/`xRelease`/`xRollbackTo` (installed in [`super::module`]).
//! - `SELECT` → `best_index` (plan), `open`, `filter`, then `next`/`column`/`rowid` per row.
//!
//! idxNum: 1 = KNN (MATCH on the vector column), 2 = point lookup by rowid, 3 = scan. idxStr lists, in
//! argv order, what each argument is: `m` (query vector), `k`, `l` (LIMIT), `d<` / `d<=` (distance bound),
//! `r` (rowid =), and `c<col>:<op>` (metadata constraint, op one of `= > >= < <= != is isnot null notnull`).

use super::schema::TableDef;
use super::state::{self, TableState, DEAD};
use super::{arg, owned, positive_k, table_err};
use crate::error::{catch_panic, sql_error};
use crate::vector::parse_vector;
use phenix_core::topk::{search, Candidates, SearchParams};
use phenix_core::ElemType;
use rusqlite::types::{Value, ValueRef};
use rusqlite::vtab::{
    sqlite3_vtab, sqlite3_vtab_cursor, Context, CreateVTab, Filters, IndexConstraintOp, IndexInfo,
    Inserts, TransactionVTab, UpdateVTab, Updates, VTab, VTabConfig, VTabConnection, VTabCursor,
    VTabKind,
};
use std::borrow::Cow;
use std::ffi::{c_int, CStr, CString};
use std::sync::{Arc, Mutex, MutexGuard};

/// One phenix table, as SQLite sees it.
#[repr(C)]
pub struct PhenixTab {
    base: sqlite3_vtab,
    /// Shared with cursors and the `phenix_retrieve_all` registry.
    pub state: Arc<Mutex<TableState>>,
    key: state::Key,
}

/// Locks a table's state (a poisoned lock is taken over: the state is re-validated on use).
pub fn lock_state(s: &Mutex<TableState>) -> MutexGuard<'_, TableState> {
    s.lock().unwrap_or_else(|e| e.into_inner())
}
use lock_state as lock;

fn utf8<'a>(b: &'a [u8], what: &str) -> rusqlite::Result<&'a str> {
    std::str::from_utf8(b).map_err(|_| sql_error(format!("{what} is not UTF-8")))
}

impl PhenixTab {
    fn init(
        db: &mut VTabConnection,
        schema: &[u8],
        table: &[u8],
        args: &[&[u8]],
        create: bool,
    ) -> rusqlite::Result<(Cow<'static, CStr>, Self)> {
        let schema = utf8(schema, "schema name")?.to_string();
        let name = utf8(table, "table name")?.to_string();
        let cols: Vec<&str> = args
            .iter()
            .map(|a| utf8(a, "column definition"))
            .collect::<rusqlite::Result<_>>()?;
        let def = super::schema::parse(&name, &cols).map_err(sql_error)?;
        // SAFETY: the handle is the connection that is creating/connecting this table; the non-owning
        // `Connection` made from it never closes it and is dropped in xDisconnect/xDestroy, before
        // SQLite can close the database.
        let handle = unsafe { db.handle() };
        // SAFETY: as above.
        let conn = unsafe { rusqlite::Connection::from_handle(handle) }?;
        let decl =
            CString::new(def.declare()).map_err(|_| sql_error("column name holds a NUL byte"))?;
        let st = if create {
            state::collect_orphans(&conn, &schema)?;
            TableState::create(conn, &schema, &name, def)?
        } else {
            TableState::connect(conn, &schema, &name, def)?
        };
        db.config(VTabConfig::Innocuous)?;
        let key = state::key(handle as usize, &schema, &name);
        let state = Arc::new(Mutex::new(st));
        state::register_state(key.clone(), &state);
        Ok((
            Cow::Owned(decl),
            PhenixTab {
                base: sqlite3_vtab::default(),
                state,
                key,
            },
        ))
    }
}

impl PhenixTab {
    /// `xRename`.
    pub fn rename(&mut self, new: &str) -> rusqlite::Result<()> {
        lock(&self.state).rename(new)?;
        state::unregister_state(&self.key);
        self.key = state::key(self.key.0, &self.key.1, new);
        state::register_state(self.key.clone(), &self.state);
        Ok(())
    }
}

impl Drop for PhenixTab {
    fn drop(&mut self) {
        state::unregister_state(&self.key);
    }
}

// SAFETY: `PhenixTab` is `#[repr(C)]` with `sqlite3_vtab` as its first field, as rusqlite requires.
unsafe impl<'vtab> VTab<'vtab> for PhenixTab {
    type Aux = ();
    type Cursor = PhenixCursor;

    fn connect(
        db: &mut VTabConnection,
        _aux: Option<&()>,
        _module: &[u8],
        schema: &[u8],
        table: &[u8],
        args: &[&[u8]],
    ) -> rusqlite::Result<(Cow<'static, CStr>, Self)> {
        catch_panic("xConnect", || Self::init(db, schema, table, args, false))
    }

    fn best_index(&self, info: &mut IndexInfo) -> rusqlite::Result<bool> {
        catch_panic("xBestIndex", || {
            let def = lock(&self.state).def.clone();
            best_index(&def, info)
        })
    }

    fn open(&'vtab mut self) -> rusqlite::Result<PhenixCursor> {
        Ok(PhenixCursor {
            base: sqlite3_vtab_cursor::default(),
            state: self.state.clone(),
            rows: Vec::new(),
            pos: 0,
        })
    }
}

impl CreateVTab<'_> for PhenixTab {
    const KIND: VTabKind = VTabKind::Default;

    fn create(
        db: &mut VTabConnection,
        _aux: Option<&()>,
        _module: &[u8],
        schema: &[u8],
        table: &[u8],
        args: &[&[u8]],
    ) -> rusqlite::Result<(Cow<'static, CStr>, Self)> {
        catch_panic("xCreate", || Self::init(db, schema, table, args, true))
    }

    fn destroy(&self) -> rusqlite::Result<()> {
        catch_panic("xDestroy", || lock(&self.state).destroy())
    }
}

impl UpdateVTab<'_> for PhenixTab {
    fn delete(&mut self, arg: ValueRef<'_>) -> rusqlite::Result<()> {
        catch_panic("xUpdate (DELETE)", || {
            let rowid = arg.as_i64()?;
            let mut st = lock(&self.state);
            st.begin_write()?;
            let rows = st.rows_table();
            let slot: Option<i64> = rusqlite::OptionalExtension::optional(st.conn.query_row(
                &format!("SELECT slot FROM {rows} WHERE rowid = ?1"),
                [rowid],
                |r| r.get(0),
            ))?;
            if let Some(slot) = slot {
                st.conn
                    .prepare_cached(&format!("DELETE FROM {rows} WHERE rowid = ?1"))?
                    .execute([rowid])?;
                if let Some(live) = st.live.as_mut() {
                    live.bitmap.remove(slot as usize);
                    if let Some(r) = live.rowids.get_mut(slot as usize) {
                        *r = DEAD;
                    }
                }
            }
            Ok(())
        })
    }

    fn insert(&mut self, args: &Inserts<'_>) -> rusqlite::Result<i64> {
        catch_panic("xUpdate (INSERT)", || {
            let mut st = lock(&self.state);
            st.begin_write()?;
            let def = st.def.clone();
            let ncols = def.columns.len();
            // args: [0] NULL, [1] new rowid, [2] vector, [3..3+ncols] columns, then distance, k.
            for (i, what) in [(3 + ncols, "distance"), (4 + ncols, "k")] {
                if !matches!(arg(args, i), ValueRef::Null) {
                    return Err(sql_error(format!(
                        "phenix table {}: `{what}` is computed by queries and cannot be inserted",
                        st.name
                    )));
                }
            }
            let v = read_vector(&st, arg(args, 2))?;
            let slot = {
                let mut s = st.store();
                s.append(&v).map_err(|e| table_err(&st.name, e))?.start
            };
            let rowid_arg = arg(args, 1);
            let rowid = match insert_row(&st, &def, rowid_arg, slot, |i| arg(args, 3 + i)) {
                Ok(r) => r,
                Err(e) => {
                    // Forget the vector just appended (it is past the committed length).
                    let _ = st.store().truncate(slot);
                    return Err(e);
                }
            };
            if let Some(live) = st.live.as_mut() {
                live.bitmap.insert(slot as usize);
                if live.rowids.len() <= slot as usize {
                    live.rowids.resize(slot as usize + 1, DEAD);
                }
                live.rowids[slot as usize] = rowid;
            }
            Ok(rowid)
        })
    }

    fn update(&mut self, args: &Updates<'_>) -> rusqlite::Result<()> {
        catch_panic("xUpdate (UPDATE)", || {
            let mut st = lock(&self.state);
            st.begin_write()?;
            let def = st.def.clone();
            let ncols = def.columns.len();
            let old_rowid = arg(args, 0).as_i64()?;
            let new_rowid = match arg(args, 1) {
                ValueRef::Integer(i) => i,
                _ => old_rowid,
            };
            let rows = st.rows_table();
            let old_slot: i64 = st.conn.query_row(
                &format!("SELECT slot FROM {rows} WHERE rowid = ?1"),
                [old_rowid],
                |r| r.get(0),
            )?;
            let mut slot = old_slot as u64;
            if !args.no_change(2) {
                let v = read_vector(&st, arg(args, 2))?;
                slot = st
                    .store()
                    .append(&v)
                    .map_err(|e| table_err(&st.name, e))?
                    .start;
            }
            let mut sets = vec!["rowid = ?1".to_string(), "slot = ?2".to_string()];
            let mut vals: Vec<Value> = vec![Value::Integer(new_rowid), Value::Integer(slot as i64)];
            for (i, c) in def.columns.iter().enumerate() {
                if !args.no_change(3 + i) {
                    sets.push(format!("\"{}\" = ?{}", c.name, vals.len() + 1));
                    vals.push(owned(arg(args, 3 + i))?);
                }
            }
            let _ = ncols;
            let sql = format!(
                "UPDATE {rows} SET {} WHERE rowid = ?{}",
                sets.join(", "),
                vals.len() + 1
            );
            vals.push(Value::Integer(old_rowid));
            st.conn.execute(&sql, rusqlite::params_from_iter(vals))?;
            if let Some(live) = st.live.as_mut() {
                live.bitmap.remove(old_slot as usize);
                if let Some(r) = live.rowids.get_mut(old_slot as usize) {
                    *r = DEAD;
                }
                live.bitmap.insert(slot as usize);
                if live.rowids.len() <= slot as usize {
                    live.rowids.resize(slot as usize + 1, DEAD);
                }
                live.rowids[slot as usize] = new_rowid;
            }
            Ok(())
        })
    }
}

impl TransactionVTab<'_> for PhenixTab {
    fn begin(&mut self) -> rusqlite::Result<()> {
        Ok(())
    }
    fn sync(&mut self) -> rusqlite::Result<()> {
        catch_panic("xSync", || lock(&self.state).sync())
    }
    fn commit(&mut self) -> rusqlite::Result<()> {
        catch_panic("xCommit", || lock(&self.state).commit())
    }
    fn rollback(&mut self) -> rusqlite::Result<()> {
        catch_panic("xRollback", || lock(&self.state).rollback())
    }
}

fn read_vector(st: &TableState, v: ValueRef<'_>) -> rusqlite::Result<Vec<f32>> {
    let l = st.def.layout;
    parse_vector(
        v,
        &format!("column {}", st.def.vector),
        Some((l.dim(), l.elem())),
    )
    .map_err(|e| table_err(&st.name, e))
}

fn insert_row<'a>(
    st: &TableState,
    def: &TableDef,
    rowid: ValueRef<'_>,
    slot: u64,
    col: impl Fn(usize) -> ValueRef<'a>,
) -> rusqlite::Result<i64> {
    let mut names = String::from("rowid, slot");
    let mut marks = String::from("?1, ?2");
    let mut vals: Vec<Value> = vec![
        match rowid {
            ValueRef::Integer(i) => Value::Integer(i),
            ValueRef::Null => Value::Null,
            other => {
                return Err(sql_error(format!(
                    "phenix table {}: rowid must be an integer, got {:?}",
                    st.name,
                    other.data_type()
                )))
            }
        },
        Value::Integer(slot as i64),
    ];
    for (i, c) in def.columns.iter().enumerate() {
        names.push_str(&format!(", \"{}\"", c.name));
        marks.push_str(&format!(", ?{}", i + 3));
        vals.push(owned(col(i))?);
    }
    let sql = format!("INSERT INTO {}({names}) VALUES ({marks})", st.rows_table());
    st.conn
        .prepare_cached(&sql)?
        .execute(rusqlite::params_from_iter(vals))?;
    Ok(st.conn.last_insert_rowid())
}

/// One planned argument.
#[derive(Debug, Clone, PartialEq)]
enum Arg {
    Match,
    K,
    Limit,
    DistLt,
    DistLe,
    Rowid,
    Meta(usize, &'static str),
}

fn best_index(def: &TableDef, info: &mut IndexInfo) -> rusqlite::Result<bool> {
    let nmeta = def.n_meta() as i32;
    let (dcol, kcol) = (def.distance_col(), def.k_col());
    let mut args: Vec<(usize, Arg)> = Vec::new();
    let mut has_match = false;
    let mut has_rowid = false;
    for (i, c) in info.constraints().enumerate() {
        if !c.is_usable() {
            continue;
        }
        let col = c.column();
        let op = c.operator();
        use IndexConstraintOp::*;
        let a = match (col, op) {
            (0, SQLITE_INDEX_CONSTRAINT_MATCH) => {
                has_match = true;
                Some(Arg::Match)
            }
            (c, SQLITE_INDEX_CONSTRAINT_EQ) if c == kcol => Some(Arg::K),
            (_, SQLITE_INDEX_CONSTRAINT_LIMIT) => Some(Arg::Limit),
            (c, SQLITE_INDEX_CONSTRAINT_LT) if c == dcol => Some(Arg::DistLt),
            (c, SQLITE_INDEX_CONSTRAINT_LE) if c == dcol => Some(Arg::DistLe),
            (-1, SQLITE_INDEX_CONSTRAINT_EQ) => {
                has_rowid = true;
                Some(Arg::Rowid)
            }
            (c, op) if c >= 1 && c <= nmeta => {
                let o = match op {
                    SQLITE_INDEX_CONSTRAINT_EQ => Some("="),
                    SQLITE_INDEX_CONSTRAINT_GT => Some(">"),
                    SQLITE_INDEX_CONSTRAINT_GE => Some(">="),
                    SQLITE_INDEX_CONSTRAINT_LT => Some("<"),
                    SQLITE_INDEX_CONSTRAINT_LE => Some("<="),
                    SQLITE_INDEX_CONSTRAINT_NE => Some("!="),
                    SQLITE_INDEX_CONSTRAINT_IS => Some("is"),
                    SQLITE_INDEX_CONSTRAINT_ISNOT => Some("isnot"),
                    SQLITE_INDEX_CONSTRAINT_ISNULL => Some("null"),
                    SQLITE_INDEX_CONSTRAINT_ISNOTNULL => Some("notnull"),
                    _ => None,
                };
                o.map(|o| Arg::Meta(c as usize - 1, o))
            }
            _ => None,
        };
        if let Some(a) = a {
            args.push((i, a));
        }
    }
    let plan = if has_match {
        1
    } else if has_rowid {
        2
    } else {
        3
    };
    // Only the arguments the plan uses.
    args.retain(|(_, a)| match plan {
        1 => !matches!(a, Arg::Rowid),
        2 => matches!(a, Arg::Rowid),
        _ => matches!(a, Arg::Meta(..)),
    });
    // One rowid argument is enough.
    if plan == 2 {
        args.truncate(1);
    }
    let mut idx = Vec::new();
    for (argv, (i, a)) in (1..).zip(args.iter()) {
        let mut u = info.constraint_usage(*i);
        u.set_argv_index(argv);
        // Metadata constraints are re-checked by SQLite (same affinity rules, so the pre-filter is exact);
        // k, MATCH, LIMIT and the distance bound are ours alone.
        u.set_omit(!matches!(a, Arg::Meta(..) | Arg::Limit));
        idx.push(match a {
            Arg::Match => "m".to_string(),
            Arg::K => "k".to_string(),
            Arg::Limit => "l".to_string(),
            Arg::DistLt => "d<".to_string(),
            Arg::DistLe => "d<=".to_string(),
            Arg::Rowid => "r".to_string(),
            Arg::Meta(c, o) => format!("c{c}:{o}"),
        });
    }
    if plan == 1 {
        // Rows come out in ascending distance, ties by rowid.
        let mut ob: Vec<(i32, bool)> = info
            .order_bys()
            .map(|o| (o.column(), o.is_order_by_desc()))
            .collect();
        if ob.len() == 2 && ob[1] == (-1, false) {
            ob.pop();
        }
        if ob.len() == 1 && ob[0] == (dcol, false) {
            info.set_order_by_consumed(true);
        }
    }
    info.set_idx_num(plan);
    info.set_idx_str(&idx.join(","));
    let cost = match plan {
        1 => 10.0,
        2 => 1.0,
        _ => 1e6,
    };
    info.set_estimated_cost(cost);
    if plan == 2 {
        info.set_estimated_rows(1);
    }
    Ok(true)
}

/// A row a cursor will return.
struct OutRow {
    rowid: i64,
    slot: u64,
    distance: Option<f32>,
    /// Metadata and aux values, fetched lazily for KNN rows.
    cols: Option<Vec<Value>>,
}

/// A cursor over a phenix table.
#[repr(C)]
pub struct PhenixCursor {
    base: sqlite3_vtab_cursor,
    state: Arc<Mutex<TableState>>,
    rows: Vec<OutRow>,
    pos: usize,
}

fn meta_sql(def: &TableDef, c: usize, op: &str, argn: usize) -> String {
    let col = format!("\"{}\"", def.columns[c].name);
    match op {
        "is" => format!("{col} IS ?{argn}"),
        "isnot" => format!("{col} IS NOT ?{argn}"),
        "null" => format!("{col} IS NULL"),
        "notnull" => format!("{col} IS NOT NULL"),
        o => format!("{col} {o} ?{argn}"),
    }
}

impl PhenixCursor {
    fn run(&mut self, plan: c_int, idx: &str, args: &Filters<'_>) -> rusqlite::Result<()> {
        let mut st = lock(&self.state);
        st.refresh_for_read()?;
        let def = st.def.clone();
        let tokens: Vec<&str> = if idx.is_empty() {
            vec![]
        } else {
            idx.split(',').collect()
        };
        let mut query: Option<Vec<f32>> = None;
        let mut k: Option<usize> = None;
        let mut max_d: Option<f32> = None;
        let mut le = false;
        let mut conds = Vec::new();
        let mut cond_vals: Vec<Value> = Vec::new();
        let mut rowid_eq: Option<Value> = None;
        for (i, t) in tokens.iter().enumerate() {
            let v = arg(args, i);
            match *t {
                "m" => {
                    let l = def.layout;
                    query = Some(
                        parse_vector(
                            v,
                            &format!("MATCH on {}", def.vector),
                            Some((l.dim(), ElemType::F32)),
                        )
                        .map_err(|e| table_err(&st.name, e))?,
                    )
                }
                "k" => {
                    let kk = positive_k(v, &format!("phenix table {}: k", st.name))?;
                    k = Some(k.map_or(kk, |o| o.min(kk)));
                }
                "l" => {
                    let kk = positive_k(v, &format!("phenix table {}: LIMIT", st.name))?;
                    k = Some(k.map_or(kk, |o| o.min(kk)));
                }
                "d<" | "d<=" => {
                    let t2 = match v {
                        ValueRef::Integer(i) => i as f64,
                        ValueRef::Real(r) => r,
                        _ => {
                            return Err(sql_error(format!(
                                "phenix table {}: the distance bound must be a number",
                                st.name
                            )))
                        }
                    } as f32;
                    if max_d.is_none_or(|m| t2 < m) {
                        max_d = Some(t2);
                        le = *t == "d<=";
                    }
                }
                "r" => rowid_eq = Some(owned(v)?),
                c if c.starts_with('c') => {
                    let (col, op) = c[1..].split_once(':').unwrap_or(("0", "="));
                    let col: usize = col.parse().unwrap_or(0);
                    conds.push(meta_sql(&def, col, op, cond_vals.len() + 1));
                    if op != "null" && op != "notnull" {
                        cond_vals.push(owned(v)?);
                    }
                }
                _ => {}
            }
        }
        let rows_t = st.rows_table();
        self.rows.clear();
        self.pos = 0;
        match plan {
            1 => {
                let q = query.ok_or_else(|| sql_error("internal: KNN plan without a query"))?;
                let k = k.unwrap_or(usize::MAX);
                // Pre-filter on metadata in SQLite, then rank only the qualifying slots.
                let filtered: Option<Vec<u64>> = if conds.is_empty() {
                    None
                } else {
                    let sql = format!(
                        "SELECT slot FROM {rows_t} WHERE {} ORDER BY slot",
                        conds.join(" AND ")
                    );
                    let mut stmt = st.conn.prepare_cached(&sql)?;
                    let v = stmt
                        .query_map(rusqlite::params_from_iter(cond_vals.iter()), |r| {
                            r.get::<_, i64>(0)
                        })?
                        .map(|r| r.map(|s| s as u64))
                        .collect::<rusqlite::Result<Vec<u64>>>()?;
                    Some(v)
                };
                let live = st
                    .live
                    .as_ref()
                    .ok_or_else(|| sql_error("internal: live set not loaded"))?;
                let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
                let mut params = SearchParams::new(k);
                params.threads = threads;
                params.candidates = match &filtered {
                    Some(v) => Candidates::Slots(v),
                    None => Candidates::Bitmap(&live.bitmap),
                };
                if let Some(m) = max_d {
                    params.max_distance = Some(if le { next_up(m) } else { m });
                }
                let n = st.visible_rows();
                let hits = {
                    let mut store = st.store();
                    let view = store.view(n).map_err(|e| table_err(&st.name, e))?;
                    search(&view, &q, &params).map_err(|e| table_err(&st.name, e))?
                };
                let live = st.live.as_ref().expect("checked above");
                self.rows = hits
                    .into_iter()
                    .map(|h| OutRow {
                        rowid: live.rowids.get(h.slot as usize).copied().unwrap_or(DEAD),
                        slot: h.slot,
                        distance: Some(h.distance),
                        cols: None,
                    })
                    .filter(|r| r.rowid != DEAD)
                    .collect();
                // Ties by ascending rowid.
                self.rows.sort_by(|a, b| {
                    a.distance
                        .unwrap_or(0.0)
                        .total_cmp(&b.distance.unwrap_or(0.0))
                        .then(a.rowid.cmp(&b.rowid))
                });
            }
            _ => {
                let mut names = String::new();
                for c in &def.columns {
                    names.push_str(&format!(", \"{}\"", c.name));
                }
                let mut vals = cond_vals;
                let mut wh = conds;
                if let Some(r) = rowid_eq {
                    vals.push(r);
                    wh.push(format!("rowid = ?{}", vals.len()));
                }
                let where_sql = if wh.is_empty() {
                    String::new()
                } else {
                    format!(" WHERE {}", wh.join(" AND "))
                };
                let sql =
                    format!("SELECT rowid, slot{names} FROM {rows_t}{where_sql} ORDER BY rowid");
                let ncols = def.columns.len();
                let mut stmt = st.conn.prepare_cached(&sql)?;
                let mut q = stmt.query(rusqlite::params_from_iter(vals.iter()))?;
                while let Some(r) = q.next()? {
                    let mut cols = Vec::with_capacity(ncols);
                    for i in 0..ncols {
                        cols.push(r.get::<_, Value>(2 + i)?);
                    }
                    self.rows.push(OutRow {
                        rowid: r.get(0)?,
                        slot: r.get::<_, i64>(1)? as u64,
                        distance: None,
                        cols: Some(cols),
                    });
                }
            }
        }
        Ok(())
    }
}

/// The next representable `f32` above `x` (turns `distance <= t` into `distance < next_up(t)`).
fn next_up(x: f32) -> f32 {
    if x.is_nan() || x == f32::INFINITY {
        return x;
    }
    if x == 0.0 {
        return f32::from_bits(1);
    }
    let b = x.to_bits();
    f32::from_bits(if x > 0.0 { b + 1 } else { b - 1 })
}

// SAFETY: `PhenixCursor` is `#[repr(C)]` with `sqlite3_vtab_cursor` as its first field.
unsafe impl VTabCursor for PhenixCursor {
    fn filter(
        &mut self,
        idx_num: c_int,
        idx_str: Option<&str>,
        args: &Filters<'_>,
    ) -> rusqlite::Result<()> {
        catch_panic("xFilter", || self.run(idx_num, idx_str.unwrap_or(""), args))
    }

    fn next(&mut self) -> rusqlite::Result<()> {
        self.pos += 1;
        Ok(())
    }

    fn eof(&self) -> bool {
        self.pos >= self.rows.len()
    }

    fn column(&self, ctx: &mut Context, i: c_int) -> rusqlite::Result<()> {
        catch_panic("xColumn", || {
            let row = &self.rows[self.pos];
            let st = lock(&self.state);
            let ncols = st.def.columns.len() as c_int;
            if i == 0 {
                if ctx.no_change() {
                    return Ok(());
                }
                let bytes = st
                    .store()
                    .read_raw(row.slot)
                    .map_err(|e| table_err(&st.name, e))?;
                return ctx.set_result(&bytes);
            }
            if i >= 1 && i <= ncols {
                if let Some(c) = &row.cols {
                    return ctx.set_result(&c[i as usize - 1]);
                }
                let c = &st.def.columns[i as usize - 1];
                let v: Value = st
                    .conn
                    .prepare_cached(&format!(
                        "SELECT \"{}\" FROM {} WHERE rowid = ?1",
                        c.name,
                        st.rows_table()
                    ))?
                    .query_row([row.rowid], |r| r.get(0))?;
                return ctx.set_result(&v);
            }
            if i == ncols + 1 {
                return match row.distance {
                    Some(d) => ctx.set_result(&(d as f64)),
                    None => ctx.set_result(&Value::Null),
                };
            }
            ctx.set_result(&Value::Null)
        })
    }

    fn rowid(&self) -> rusqlite::Result<i64> {
        Ok(self.rows[self.pos].rowid)
    }
}
