//! Wide table → profile vectors: `phenix_pack(table, include, exclude)` (table-valued, streaming),
//! `phenix_features(table, include, exclude)` (table-valued) and `phenix_features_json(table, include,
//! exclude)` (scalar).
//!
//! Feature columns are chosen by name with comma-separated SQLite `LIKE` patterns (`%` any run, `_`
//! one character, ASCII case-insensitive, no escape character), in the table's column order. All three
//! read the named table, so all are `SQLITE_DIRECTONLY` (not callable from views or triggers), as
//! `phenix_retrieve` is.

use super::{arg_err, type_name, AnalysisError};
use crate::error::catch_panic;
use crate::error::create_scalar;
use crate::tvf::{bind_arguments, TableFunction, Tvf};
use crate::vector::encode_f32;
use rusqlite::functions::FunctionFlags;
use rusqlite::types::{Value, ValueRef};
use rusqlite::vtab::{
    sqlite3_vtab, sqlite3_vtab_cursor, Context, Filters, IndexInfo, Module, VTab, VTabConfig,
    VTabConnection, VTabCursor,
};
use rusqlite::Connection;
use std::borrow::Cow;
use std::ffi::{c_int, CStr};

const PACK: &str = "phenix_pack";

/// Rows fetched from the source table per step of a `phenix_pack` scan (bounded memory).
const BATCH: usize = 512;

/// Registers the three functions.
pub fn register(conn: &Connection) -> rusqlite::Result<()> {
    const PACK_M: Module<'static, PackTab> = Module::eponymous_only_module();
    conn.create_module(PACK, &PACK_M, None)?;
    const FEAT_M: Module<'static, Tvf<Features>> = Module::eponymous_only_module();
    conn.create_module("phenix_features", &FEAT_M, None)?;
    create_scalar(
        conn,
        "phenix_features_json",
        3,
        FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DIRECTONLY,
        |ctx| {
            // SAFETY: the connection reference is used only inside this call, on this thread.
            let conn = unsafe { ctx.get_connection() }?;
            let args: Vec<ValueRef<'_>> = (0..3).map(|i| ctx.get_raw(i)).collect();
            let sel = Selection::resolve(&conn, "phenix_features_json", &args)?;
            Ok(serde_json::Value::from(sel.names).to_string())
        },
    )?;
    Ok(())
}

/// SQLite `LIKE` (ASCII case-insensitive, `%` and `_`, no escape).
pub fn like(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().map(|c| c.to_ascii_lowercase()).collect();
    let s: Vec<char> = name.chars().map(|c| c.to_ascii_lowercase()).collect();
    // Iterative wildcard matching with backtracking to the last '%'.
    let (mut i, mut j) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while j < s.len() {
        if i < p.len() && (p[i] == '_' || p[i] == s[j]) {
            i += 1;
            j += 1;
        } else if i < p.len() && p[i] == '%' {
            star = Some((i, j));
            i += 1;
        } else if let Some((si, sj)) = star {
            i = si + 1;
            j = sj + 1;
            star = Some((si, sj + 1));
        } else {
            return false;
        }
    }
    while i < p.len() && p[i] == '%' {
        i += 1;
    }
    i == p.len()
}

fn patterns(v: ValueRef<'_>, func: &'static str, what: &str) -> Result<Vec<String>, AnalysisError> {
    let s = match v {
        ValueRef::Null => return Ok(Vec::new()),
        ValueRef::Text(t) => String::from_utf8_lossy(t).into_owned(),
        other => {
            return Err(arg_err(
                func,
                format!(
                    "{what} must be text (comma-separated LIKE patterns): got {}",
                    type_name(other)
                ),
            ))
        }
    };
    Ok(s.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(str::to_string)
        .collect())
}

/// Splits `schema.table` (or `table`, schema `main`), as `phenix_retrieve` does.
fn split_name(name: &str) -> (String, String) {
    match name.split_once('.') {
        Some((s, t)) if !s.is_empty() && !t.is_empty() => (s.to_string(), t.to_string()),
        _ => ("main".to_string(), name.to_string()),
    }
}

fn quote(id: &str) -> String {
    format!("\"{}\"", id.replace('"', "\"\""))
}

/// The chosen feature columns of a table.
struct Selection {
    schema: String,
    table: String,
    names: Vec<String>,
}

impl Selection {
    fn resolve(
        conn: &Connection,
        func: &'static str,
        args: &[ValueRef<'_>],
    ) -> Result<Selection, rusqlite::Error> {
        let name = match args[0] {
            ValueRef::Text(t) if !t.is_empty() => String::from_utf8_lossy(t).into_owned(),
            other => {
                return Err(arg_err(
                    func,
                    format!(
                        "argument 1 is the table name ('name' or 'schema.name'): got {}",
                        type_name(other)
                    ),
                )
                .into())
            }
        };
        let include = patterns(args[1], func, "argument 2 (include patterns)")?;
        if include.is_empty() {
            return Err(arg_err(
                func,
                "argument 2 (include patterns) names no pattern; give comma-separated LIKE patterns such as 'Cells_%,Nuclei_%'",
            )
            .into());
        }
        let exclude = patterns(args[2], func, "argument 3 (exclude patterns)")?;
        let (schema, table) = split_name(&name);
        let mut st = conn.prepare("SELECT name FROM pragma_table_info(?1, ?2) ORDER BY cid")?;
        let cols: Vec<String> = st
            .query_map([&table, &schema], |r| r.get::<_, String>(0))?
            .collect::<rusqlite::Result<_>>()?;
        if cols.is_empty() {
            return Err(arg_err(func, format!("no table {schema}.{table}")).into());
        }
        let names: Vec<String> = cols
            .into_iter()
            .filter(|c| include.iter().any(|p| like(p, c)) && !exclude.iter().any(|p| like(p, c)))
            .collect();
        if names.is_empty() {
            return Err(arg_err(
                func,
                format!(
                    "no column of {schema}.{table} matches the include patterns {include:?} without matching the exclude patterns {exclude:?}"
                ),
            )
            .into());
        }
        Ok(Selection {
            schema,
            table,
            names,
        })
    }
}

/// A cell as `f32`, or the reason it is not a finite number.
fn cell(v: ValueRef<'_>) -> Result<f32, String> {
    let x = match v {
        ValueRef::Integer(i) => i as f64,
        ValueRef::Real(r) => r,
        ValueRef::Text(t) => {
            let s = String::from_utf8_lossy(t);
            let s = s.trim();
            if s.is_empty() {
                return Err(
                    "is an empty string (a missing value); fill or drop it before packing".into(),
                );
            }
            match s.parse::<f64>() {
                Ok(x) => x,
                Err(_) => return Err(format!("is '{s}', not a number")),
            }
        }
        ValueRef::Null => {
            return Err("is NULL (a missing value); fill or drop it before packing".into())
        }
        ValueRef::Blob(b) => return Err(format!("is a {}-byte blob, not a number", b.len())),
    };
    if x.is_nan() {
        return Err("is NaN; profiles hold finite numbers only".into());
    }
    if x.is_infinite() {
        return Err(format!("is {x}; profiles hold finite numbers only"));
    }
    if x.abs() > f64::from(f32::MAX) {
        return Err(format!("is {x}, too large for float32"));
    }
    Ok(x as f32)
}

/// `phenix_features(table, include, exclude)`: `(position, name)` of the chosen columns, from 0.
pub struct Features;

impl TableFunction for Features {
    const NAME: &'static str = "phenix_features";
    const DECL: &'static CStr =
        c"CREATE TABLE x(position INTEGER, name TEXT, tbl HIDDEN, include HIDDEN, exclude HIDDEN)";
    const VISIBLE: c_int = 2;
    const ARGS: c_int = 3;
    const DIRECT_ONLY: bool = true;
    fn rows(conn: &Connection, args: &[ValueRef<'_>]) -> rusqlite::Result<Vec<Vec<Value>>> {
        let sel = Selection::resolve(conn, "phenix_features", args)?;
        Ok(sel
            .names
            .into_iter()
            .enumerate()
            .map(|(i, n)| vec![Value::Integer(i as i64), Value::Text(n)])
            .collect())
    }
}

/// The `phenix_pack` virtual table: streams `(rowid, profile)` in rowid order, 512 (`BATCH`) source rows
/// at a time.
#[repr(C)]
pub struct PackTab {
    base: sqlite3_vtab,
    conn: Connection,
}

/// Its cursor, borrowing the table's connection (SQLite closes a table's cursors before the table).
#[repr(C)]
pub struct PackCursor<'vtab> {
    base: sqlite3_vtab_cursor,
    conn: &'vtab Connection,
    sel: Option<Selection>,
    sql: String,
    rows: Vec<(i64, Vec<u8>)>,
    pos: usize,
    last_rowid: Option<i64>,
    done: bool,
}

// SAFETY: `PackTab` is `#[repr(C)]` with `sqlite3_vtab` as its first field.
unsafe impl<'vtab> VTab<'vtab> for PackTab {
    type Aux = ();
    type Cursor = PackCursor<'vtab>;

    fn connect(
        db: &mut VTabConnection,
        _aux: Option<&()>,
        _module: &[u8],
        _schema: &[u8],
        _table: &[u8],
        _args: &[&[u8]],
    ) -> rusqlite::Result<(Cow<'static, CStr>, Self)> {
        catch_panic(PACK, || {
            db.config(VTabConfig::DirectOnly)?;
            // SAFETY: the wrapper never closes the handle and is dropped with this table, before
            // SQLite closes the connection.
            let conn = unsafe { Connection::from_handle(db.handle()) }?;
            Ok((
                Cow::Borrowed(
                    c"CREATE TABLE x(rowid INTEGER, profile BLOB, tbl HIDDEN, include HIDDEN, exclude HIDDEN)",
                ),
                PackTab {
                    base: sqlite3_vtab::default(),
                    conn,
                },
            ))
        })
    }

    fn best_index(&self, info: &mut IndexInfo) -> rusqlite::Result<bool> {
        // Visible: rowid, profile; arguments: tbl, include, exclude.
        catch_panic(PACK, || Ok(bind_arguments(info, 2, 3, 1e9, 1_000_000)))
    }

    fn open(&'vtab mut self) -> rusqlite::Result<PackCursor<'vtab>> {
        Ok(PackCursor {
            base: sqlite3_vtab_cursor::default(),
            conn: &self.conn,
            sel: None,
            sql: String::new(),
            rows: Vec::new(),
            pos: 0,
            last_rowid: None,
            done: true,
        })
    }
}

impl PackCursor<'_> {
    /// Loads the next batch of rows after `last_rowid`.
    fn fetch(&mut self) -> rusqlite::Result<()> {
        let conn = self.conn;
        let sel = self.sel.as_ref().expect("fetch after filter");
        self.rows.clear();
        self.pos = 0;
        let mut st = conn.prepare_cached(&self.sql)?;
        let after = self.last_rowid.unwrap_or(i64::MIN);
        let mut q = st.query([after])?;
        let d = sel.names.len();
        let mut buf = vec![0f32; d];
        while let Some(r) = q.next()? {
            let rowid: i64 = r.get(0)?;
            for (j, slot) in buf.iter_mut().enumerate() {
                *slot = cell(r.get_ref(j + 1)?).map_err(|detail| AnalysisError::Cell {
                    table: format!("{}.{}", sel.schema, sel.table),
                    rowid,
                    column: sel.names[j].clone(),
                    detail,
                })?;
            }
            self.rows.push((rowid, encode_f32(&buf)));
            self.last_rowid = Some(rowid);
        }
        self.done = self.rows.len() < BATCH;
        Ok(())
    }
}

// SAFETY: `PackCursor` is `#[repr(C)]` with `sqlite3_vtab_cursor` as its first field.
unsafe impl VTabCursor for PackCursor<'_> {
    fn filter(&mut self, _n: c_int, _s: Option<&str>, args: &Filters<'_>) -> rusqlite::Result<()> {
        catch_panic(PACK, || {
            let conn = self.conn;
            let vals: Vec<ValueRef<'_>> = args.iter().collect();
            let sel = Selection::resolve(conn, PACK, &vals)?;
            let cols: Vec<String> = sel.names.iter().map(|n| quote(n)).collect();
            self.sql = format!(
                "SELECT rowid, {} FROM {}.{} WHERE rowid > ?1 ORDER BY rowid LIMIT {BATCH}",
                cols.join(", "),
                quote(&sel.schema),
                quote(&sel.table)
            );
            self.sel = Some(sel);
            self.last_rowid = None;
            if let Err(e) = conn.prepare_cached(&self.sql) {
                return Err(arg_err(
                    PACK,
                    format!(
                        "cannot read rowids of {} ({e}); phenix_pack reads ordinary rowid tables, not views or WITHOUT ROWID tables",
                        vals.first().map(|v| match v {
                            ValueRef::Text(t) => String::from_utf8_lossy(t).into_owned(),
                            _ => String::new(),
                        }).unwrap_or_default()
                    ),
                )
                .into());
            }
            self.fetch()
        })
    }
    fn next(&mut self) -> rusqlite::Result<()> {
        catch_panic(PACK, || {
            self.pos += 1;
            if self.pos >= self.rows.len() && !self.done {
                self.fetch()?;
            }
            Ok(())
        })
    }
    fn eof(&self) -> bool {
        self.pos >= self.rows.len()
    }
    fn column(&self, ctx: &mut Context, i: c_int) -> rusqlite::Result<()> {
        catch_panic(PACK, || match (self.rows.get(self.pos), i) {
            (Some((rowid, _)), 0) => ctx.set_result(rowid),
            (Some((_, blob)), 1) => ctx.set_result(blob),
            _ => ctx.set_result(&Value::Null),
        })
    }
    fn rowid(&self) -> rusqlite::Result<i64> {
        Ok(self.rows.get(self.pos).map_or(0, |r| r.0))
    }
}

#[cfg(test)]
mod tests {
    use super::like;

    #[test]
    fn like_follows_sqlite() {
        assert!(like("Cells_%", "Cells_AreaShape_Area"));
        assert!(like("cells_%", "CELLS_x"));
        assert!(like("%_Location_%", "Nuclei_Location_Center_X"));
        assert!(!like("%_Location_%", "Nuclei_Loc"));
        assert!(like("a_c", "abc"));
        assert!(!like("a_c", "abbc"));
        assert!(like("%", ""));
        assert!(like("%a%b", "xxaxxb"));
        assert!(!like("%a%b", "xxaxxbc"));
    }
}
