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
use phenix_core::{Bitmap, ElemType};
use rusqlite::types::{Value, ValueRef};
use rusqlite::vtab::{
    sqlite3_vtab, sqlite3_vtab_cursor, Context, CreateVTab, Filters, IndexConstraintOp, IndexInfo,
    Inserts, TransactionVTab, UpdateVTab, Updates, VTab, VTabConfig, VTabConnection, VTabCursor,
    VTabKind,
};
use std::borrow::Cow;
use std::cmp::Ordering;
use std::collections::HashMap;
use std::ffi::{c_int, CStr, CString};
use std::sync::{Arc, Mutex, MutexGuard};

/// One phenix table, as SQLite sees it.
#[repr(C)]
pub struct PhenixTab {
    base: sqlite3_vtab,
    /// Shared with cursors and the `phenix_retrieve_all` registry.
    pub state: Arc<Mutex<TableState>>,
    key: state::Key,
    /// Metadata columns cached for KNN pre-filters (read path only).
    meta: Arc<Mutex<MetaCache>>,
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
        let decl = CString::new(def.declare(&name))
            .map_err(|_| sql_error("column name holds a NUL byte"))?;
        let st = if create {
            state::collect_orphans(&conn, &schema, Some(&name))?;
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
                meta: Arc::default(),
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
            meta: self.meta.clone(),
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
                st.note_remap();
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
            let def = st.def.clone();
            let ncols = def.columns.len();
            // args: [0] NULL, [1] new rowid, [2] vector, [3..3+ncols] columns, then distance, k and the
            // command column named after the table.
            match arg(args, 5 + ncols) {
                ValueRef::Null => {}
                cmd => return run_command(&mut st, cmd).map(|()| 0),
            }
            st.begin_write()?;
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
            if !args.no_change(2) || new_rowid != old_rowid {
                // The row moves to another slot or changes its row id: readers must reload their map.
                st.note_remap();
            }
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
                    vals.push(
                        owned(arg(args, 3 + i))
                            .map_err(|e| table_err(&st.name, format!("column {}: {e}", c.name)))?,
                    );
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

/// `INSERT INTO t(t) VALUES ('<command>')`.
fn run_command(st: &mut TableState, cmd: ValueRef<'_>) -> rusqlite::Result<()> {
    let name = st.name.clone();
    let cmd = super::text_arg(cmd, &format!("phenix table {name}"), "the command")?;
    match cmd {
        "optimize" => st.optimize().map(|_| ()),
        "integrity-check" => {
            let problems = super::check::check_state(st)?;
            if problems.is_empty() {
                Ok(())
            } else {
                Err(table_err(
                    &name,
                    format!("integrity check failed: {}", problems.join("; ")),
                ))
            }
        }
        other => Err(table_err(
            &name,
            format!("unknown command '{other}'; expected 'optimize' or 'integrity-check'"),
        )),
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
        vals.push(
            owned(col(i)).map_err(|e| table_err(&st.name, format!("column {}: {e}", c.name)))?,
        );
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
    meta: Arc<Mutex<MetaCache>>,
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
        let mut meta_conds: Vec<MetaCond> = Vec::new();
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
                "r" => rowid_eq = Some(owned(v).map_err(|e| table_err(&st.name, e))?),
                c if c.starts_with('c') => {
                    let (col, op) = c[1..].split_once(':').unwrap_or(("0", "="));
                    let col: usize = col.parse().unwrap_or(0);
                    conds.push(meta_sql(&def, col, op, cond_vals.len() + 1));
                    let rhs = if op != "null" && op != "notnull" {
                        let o = owned(v).map_err(|e| table_err(&st.name, e))?;
                        cond_vals.push(o.clone());
                        Some(o)
                    } else {
                        None
                    };
                    meta_conds.push(MetaCond::new(col, op, rhs));
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
                let live = st
                    .live
                    .as_ref()
                    .ok_or_else(|| sql_error("internal: live set not loaded"))?;
                let n = st.visible_rows();
                // Pre-filter on metadata (in memory when cached, else in SQLite), then rank only the
                // qualifying slots.
                let filtered: Option<Bitmap> = if conds.is_empty() {
                    None
                } else {
                    let sql = format!("SELECT slot FROM {rows_t} WHERE {}", conds.join(" AND "));
                    Some(prefilter(
                        &st,
                        &self.meta,
                        &meta_conds,
                        &sql,
                        &cond_vals,
                        &live.bitmap,
                    )?)
                };
                let mut params = SearchParams::new(k);
                params.threads = search_threads();
                params.candidates = match &filtered {
                    Some(b) => Candidates::Bitmap(b),
                    // Every visible slot live (no deletes): a plain range, no per-row bitmap test.
                    None if live.bitmap.contains_all_below(n as usize) => Candidates::All,
                    None => Candidates::Bitmap(&live.bitmap),
                };
                if let Some(m) = max_d {
                    params.max_distance = Some(if le { next_up(m) } else { m });
                }
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

/// Threads a KNN scan may use (read once: `available_parallelism` reads cgroup files on Linux, which
/// costs tens of microseconds per call).
pub(crate) fn search_threads() -> usize {
    static T: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *T.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// The slots passing every metadata constraint of a KNN query, among `live`'s members.
///
/// Outside a transaction the constraints are evaluated against the table's [`MetaCache`] when it holds
/// the columns (exactly as SQLite compares, see [`MetaCond`]); otherwise `sql` (`SELECT slot FROM
/// <t>_rows WHERE …` with `vals` bound) runs in SQLite.
fn prefilter(
    st: &TableState,
    cache: &Mutex<MetaCache>,
    conds: &[MetaCond],
    sql: &str,
    vals: &[Value],
    live: &Bitmap,
) -> rusqlite::Result<Bitmap> {
    let len = live.len();
    // Inside a transaction, a ROLLBACK would undo changes without a version bump: no cache there.
    if st.conn.is_autocommit() && !st.in_write {
        let version = (
            st.data_version,
            st.conn.total_changes(),
            st.committed,
            st.store().len(),
        );
        let mut c = cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(mut b) = c.select(st, version, conds, len)? {
            b.intersect_with(live);
            return Ok(b);
        }
    }
    let mut stmt = st.conn.prepare_cached(sql)?;
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
pub struct MetaCache {
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
                let col = &st.def.columns[c.col];
                e.insert(load_column(st, &col.name, len)?);
            }
        }
        let mut out: Option<Bitmap> = None;
        for c in conds {
            let Some(col) = self.cols[&c.col].as_ref() else {
                return Ok(None);
            };
            let text_ok = matches!(
                affinity(&st.def.columns[c.col].decl_type),
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
    let mut stmt = st.conn.prepare(&sql)?;
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
struct MetaCond {
    col: usize,
    mask: u8,
    null_ok: bool,
    rhs: Rhs,
}

impl MetaCond {
    fn new(col: usize, op: &str, rhs: Option<Value>) -> MetaCond {
        let rhs = match rhs {
            None | Some(Value::Null) => Rhs::Null,
            Some(Value::Integer(i)) => Rhs::Num(Num::Int(i)),
            Some(Value::Real(x)) => Rhs::Num(Num::Real(x)),
            Some(Value::Text(t)) => Rhs::Text(t.into_bytes().into()),
            Some(Value::Blob(_)) => Rhs::Other,
        };
        let null_rhs = matches!(rhs, Rhs::Null);
        let (mask, null_ok) = match (op, null_rhs) {
            ("null", _) => (0, true),
            ("notnull", _) => (ALL, false),
            ("is", true) => (0, true),
            ("is", false) => (EQ, false),
            ("isnot", true) => (ALL, false),
            ("isnot", false) => (LT | GT, true),
            // `x <op> NULL` is NULL: nothing passes.
            (_, true) => (0, false),
            ("=", _) => (EQ, false),
            ("!=", _) => (LT | GT, false),
            ("<", _) => (LT, false),
            ("<=", _) => (LT | EQ, false),
            (">", _) => (GT, false),
            (">=", _) => (GT | EQ, false),
            _ => (0, false),
        };
        let rhs = if mask == 0 && !null_ok && !null_rhs {
            Rhs::Other // unknown operator: leave it to SQLite
        } else {
            rhs
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
