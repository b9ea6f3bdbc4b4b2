//! Writes: `INSERT`, `UPDATE`, `DELETE` (xUpdate) and the commands `INSERT INTO t(t) VALUES ('…')`
//! (`optimize`, `integrity-check`, `build-index`). Written rows reach the IVF index at the next query
//! (`state/index.rs`), not here.
//!
//! xUpdate's arguments for an INSERT are `[NULL, new rowid, <columns in declared order>]`, for an
//! UPDATE `[old rowid, new rowid, <columns>]`: the value of column `c` (its [`TableDef`] index, vector
//! 0, metadata and aux from 1, then the hidden `distance`, `k` and command columns) is argument
//! [`argv`]`(c)`.

use super::registry::lock_state;
use super::schema::TableDef;
use super::state::TableState;
use crate::args::{arg, owned, table_err, text_arg};
use crate::error::{sql_error, Error};
use crate::vector::parse_vector;
use rusqlite::types::{Value, ValueRef};
use rusqlite::vtab::{Inserts, Updates};
use std::sync::Mutex;

/// The xUpdate argument index of column `col`.
fn argv(col: i32) -> usize {
    col as usize + 2
}

/// `DELETE`: removes the row and marks its slot dead.
pub(crate) fn delete(state: &Mutex<TableState>, rowid: ValueRef<'_>) -> rusqlite::Result<()> {
    let rowid = rowid.as_i64()?;
    let mut st = lock_state(state);
    st.begin_write()?;
    remove_row(&mut st, rowid)
}

/// Removes row `rowid` (if it exists) inside the write transaction.
fn remove_row(st: &mut TableState, rowid: i64) -> rusqlite::Result<()> {
    let rows = st.rows_table();
    let slot: Option<i64> = rusqlite::OptionalExtension::optional(st.conn().query_row(
        &format!("SELECT slot FROM {rows} WHERE rowid = ?1"),
        [rowid],
        |r| r.get(0),
    ))?;
    if let Some(slot) = slot {
        st.conn()
            .prepare_cached(&format!("DELETE FROM {rows} WHERE rowid = ?1"))?
            .execute([rowid])?;
        st.note_remap();
        if let Some(live) = st.live_mut() {
            live.mark_dead(slot as u64);
        }
    }
    Ok(())
}

/// What a write does about an existing row with the row id it is about to take.
#[derive(PartialEq)]
enum OnConflict {
    /// No such row, or it was removed (`OR REPLACE`): go on.
    Proceed,
    /// `OR IGNORE`: leave the table as it is.
    Skip,
}

/// Applies the statement's conflict mode (`sqlite3_vtab_on_conflict`) to a write that would give row
/// id `rowid` to a new or moved row, as SQLite does for an ordinary table: REPLACE removes the row
/// holding it, IGNORE skips the write, anything else is a constraint error naming the table.
fn rowid_conflict(st: &mut TableState, rowid: i64) -> rusqlite::Result<OnConflict> {
    let rows = st.rows_table();
    let exists: bool = st.conn().query_row(
        &format!("SELECT EXISTS(SELECT 1 FROM {rows} WHERE rowid = ?1)"),
        [rowid],
        |r| r.get(0),
    )?;
    if !exists {
        return Ok(OnConflict::Proceed);
    }
    // SAFETY: called inside xUpdate on the vtab's own connection, as the API requires.
    let mode = unsafe { rusqlite::ffi::sqlite3_vtab_on_conflict(st.conn().handle()) };
    match mode {
        rusqlite::ffi::SQLITE_REPLACE => {
            remove_row(st, rowid)?;
            Ok(OnConflict::Proceed)
        }
        rusqlite::ffi::SQLITE_IGNORE => Ok(OnConflict::Skip),
        _ => Err(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CONSTRAINT),
            Some(format!(
                "phenix: phenix table {}: a row with rowid {rowid} already exists (UNIQUE constraint failed: {}.rowid); use INSERT OR REPLACE or INSERT OR IGNORE, or another rowid",
                st.name(),
                st.name()
            )),
        )),
    }
}

/// `INSERT` (or a command, when the command column is set): appends the vector, then the row.
pub(crate) fn insert(state: &Mutex<TableState>, args: &Inserts<'_>) -> rusqlite::Result<i64> {
    let mut st = lock_state(state);
    let def = st.def().clone();
    match arg(args, argv(def.command_col())) {
        ValueRef::Null => {}
        cmd => {
            // A command row carries nothing else: a vector or value beside it would be dropped.
            let extra = std::iter::once(1)
                .chain((0..def.command_col()).map(argv))
                .any(|i| !matches!(arg(args, i), ValueRef::Null));
            if extra {
                return Err(sql_error(format!(
                    "phenix table {}: a command row (INSERT INTO {}({}) VALUES ('optimize')) takes no other values",
                    st.name(),
                    st.name(),
                    st.name()
                )));
            }
            return run_command(&mut st, cmd).map(|()| 0);
        }
    }
    st.begin_write()?;
    if let ValueRef::Integer(r) = arg(args, 1) {
        if rowid_conflict(&mut st, r)? == OnConflict::Skip {
            return Ok(r);
        }
    }
    let hidden = [
        (Some(def.distance_col()), "distance"),
        (Some(def.k_col()), "k"),
        (def.nprobe_col(), "nprobe"),
        (def.exact_col(), "exact"),
    ];
    for (col, what) in hidden {
        let Some(col) = col else { continue };
        if !matches!(arg(args, argv(col)), ValueRef::Null) {
            return Err(sql_error(format!(
                "phenix table {}: `{what}` is computed by queries and cannot be inserted",
                st.name()
            )));
        }
    }
    let v = read_vector(&st, arg(args, argv(TableDef::VECTOR_COL)))?;
    let slot = {
        let mut s = st.store();
        s.append(&v).map_err(|e| table_err(st.name(), e))?.start
    };
    let rowid = match insert_row(&st, &def, arg(args, 1), slot, |i| {
        arg(args, argv(TableDef::meta_col(i)))
    }) {
        Ok(r) => r,
        Err(e) => {
            // Forget the vector just appended (it is past the committed length).
            let _ = st.store().truncate(slot);
            return Err(e);
        }
    };
    if let Some(live) = st.live_mut() {
        live.set(slot, rowid);
    }
    Ok(rowid)
}

/// `UPDATE`: a new vector is appended to a new slot (the old one becomes dead); other columns are
/// updated in `<t>_rows`.
pub(crate) fn update(state: &Mutex<TableState>, args: &Updates<'_>) -> rusqlite::Result<()> {
    let mut st = lock_state(state);
    st.begin_write()?;
    let def = st.def().clone();
    let old_rowid = arg(args, 0).as_i64()?;
    let new_rowid = match arg(args, 1) {
        ValueRef::Integer(i) => i,
        _ => old_rowid,
    };
    if new_rowid != old_rowid && rowid_conflict(&mut st, new_rowid)? == OnConflict::Skip {
        return Ok(());
    }
    let rows = st.rows_table();
    let old_slot: i64 = st.conn().query_row(
        &format!("SELECT slot FROM {rows} WHERE rowid = ?1"),
        [old_rowid],
        |r| r.get(0),
    )?;
    let mut slot = old_slot as u64;
    let vector_arg = argv(TableDef::VECTOR_COL);
    if !args.no_change(vector_arg) || new_rowid != old_rowid {
        // The row moves to another slot or changes its row id: readers must reload their map.
        st.note_remap();
    }
    if !args.no_change(vector_arg) {
        let v = read_vector(&st, arg(args, vector_arg))?;
        slot = st
            .store()
            .append(&v)
            .map_err(|e| table_err(st.name(), e))?
            .start;
    }
    let mut sets = vec!["rowid = ?1".to_string(), "slot = ?2".to_string()];
    let mut vals: Vec<Value> = vec![Value::Integer(new_rowid), Value::Integer(slot as i64)];
    for (i, c) in def.columns.iter().enumerate() {
        let a = argv(TableDef::meta_col(i));
        if !args.no_change(a) {
            sets.push(format!("\"{}\" = ?{}", c.name, vals.len() + 1));
            vals.push(
                owned(arg(args, a))
                    .map_err(|e| table_err(st.name(), format!("column {}: {e}", c.name)))?,
            );
        }
    }
    let sql = format!(
        "UPDATE {rows} SET {} WHERE rowid = ?{}",
        sets.join(", "),
        vals.len() + 1
    );
    vals.push(Value::Integer(old_rowid));
    st.conn().execute(&sql, rusqlite::params_from_iter(vals))?;
    if let Some(live) = st.live_mut() {
        live.mark_dead(old_slot as u64);
        live.set(slot, new_rowid);
    }
    Ok(())
}

/// `INSERT INTO t(t) VALUES ('<command>')`.
fn run_command(st: &mut TableState, cmd: ValueRef<'_>) -> rusqlite::Result<()> {
    let name = st.name().to_string();
    let cmd = text_arg(cmd, &format!("phenix table {name}"), "the command")?;
    match cmd {
        "optimize" => st.optimize().map(|_| ()),
        "build-index" => st.build_index(),
        "integrity-check" => {
            let problems = super::check::check_state(st)?;
            if problems.is_empty() {
                Ok(())
            } else {
                Err(table_err(
                    &name,
                    Error::Corrupt(format!("integrity check failed: {}", problems.join("; "))),
                ))
            }
        }
        other => Err(table_err(
            &name,
            format!("unknown command '{other}'; expected 'optimize', 'integrity-check' or 'build-index'"),
        )),
    }
}

/// The vector argument of a write, checked against the table's layout.
fn read_vector(st: &TableState, v: ValueRef<'_>) -> rusqlite::Result<Vec<f32>> {
    let l = st.def().layout;
    parse_vector(
        v,
        &format!("column {}", st.def().vector),
        Some((l.dim(), l.elem())),
    )
    .map_err(|e| table_err(st.name(), e))
}

/// Inserts the `<t>_rows` row of a new vector at `slot`; returns its rowid.
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
                return Err(Error::Mismatch(format!(
                    "phenix table {}: rowid must be an integer, got {:?}",
                    st.name(),
                    other.data_type()
                ))
                .into())
            }
        },
        Value::Integer(slot as i64),
    ];
    for (i, c) in def.columns.iter().enumerate() {
        names.push_str(&format!(", \"{}\"", c.name));
        marks.push_str(&format!(", ?{}", i + 3));
        vals.push(
            owned(col(i)).map_err(|e| table_err(st.name(), format!("column {}: {e}", c.name)))?,
        );
    }
    let sql = format!("INSERT INTO {}({names}) VALUES ({marks})", st.rows_table());
    st.conn()
        .prepare_cached(&sql)?
        .execute(rusqlite::params_from_iter(vals))?;
    Ok(st.conn().last_insert_rowid())
}
