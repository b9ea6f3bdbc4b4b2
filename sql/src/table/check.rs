//! `phenix_check('table')` and `INSERT INTO t(t) VALUES ('integrity-check')`: an integrity check of one
//! phenix table across its shadow tables and its vector file.
//!
//! It checks, without trusting the cached state of any connection:
//! - `<t>_info`: a valid table id, committed count, generation, format 1 and a parseable definition;
//! - the vector file of that generation: present, a regular file, its header (magic, version, checksum)
//!   valid, its layout equal to the definition, its table id and generation equal to `<t>_info`'s, and at
//!   least the committed number of rows;
//! - `<t>_rows`: every slot an integer below the committed count, no slot used twice;
//! - every live vector finite;
//! - the IVF index snapshot `<t>_info` names, if any: decoded (both CRCs and every structural check),
//!   the table's own (table id, generation, layout), covering no more rows than are committed.
//!
//! The result is `ok` or one line per problem (like `PRAGMA integrity_check`). A table whose damage stops
//! it from opening is still checked: the check opens the file itself, read-only.

use super::index;
use super::names::{self, qualified, split_name};
use super::registry::{self, lock_state};
use super::schema::{self, TableDef};
use super::shadow::{self, COMMITTED, DEFINITION, FORMAT, FORMAT_VERSION, GENERATION, TABLE_ID};
use super::sidecar::{self, Expected};
use super::state::TableState;
use crate::args::{table_err, text_arg};
use crate::error::{create_scalar, sql_error, Error};
use phenix_core::store::VectorStore;
use rusqlite::functions::FunctionFlags;
use rusqlite::types::Value;
use rusqlite::Connection;

/// Registers `phenix_check(table)`.
pub(crate) fn register(conn: &Connection) -> rusqlite::Result<()> {
    create_scalar(
        conn,
        "phenix_check",
        1,
        FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DIRECTONLY,
        |ctx| {
            let name = text_arg(ctx.get_raw(0), "phenix_check", "argument 1 (table name)")?;
            // SAFETY: the connection is only used for the duration of this call, on its own thread.
            let conn = unsafe { ctx.get_connection() }?;
            let problems = check_table(&conn, name)?;
            Ok(if problems.is_empty() {
                "ok".to_string()
            } else {
                problems.join("\n")
            })
        },
    )
}

/// Checks table `name` (`table` or `schema.table`) as committed, or as this connection's open write
/// transaction sees it. An error only when there is no such phenix table; problems are returned.
pub(crate) fn check_table(conn: &Connection, name: &str) -> rusqlite::Result<Vec<String>> {
    let (schema, table) = split_name(name);
    let is_phenix = shadow::is_phenix_table(conn, &schema, &table)
        .map_err(|e| sql_error(format!("phenix_check: no table {name}: {e}")))?;
    if !is_phenix {
        return Err(sql_error(format!(
            "phenix_check: {name} is not a phenix table in schema {schema}"
        )));
    }
    // This connection's own write transaction: check what it sees (rows past the committed count
    // that it appended are live).
    // SAFETY: only the handle's address is used, as a registry key.
    let db = unsafe { conn.handle() } as usize;
    if let Some(s) = registry::lookup_state(&names::key(db, &schema, &table)) {
        let st = lock_state(&s);
        if st.in_write() {
            return check_state(&st);
        }
    }
    // One snapshot for the whole check: while a statement on the schema is open, every read of this
    // connection belongs to the same read transaction (in WAL mode, the same snapshot; with a rollback
    // journal, the shared lock keeps writers from committing), so `<t>_info`, the file and `<t>_rows`
    // agree even while another connection writes.
    let mut hold = conn.prepare(&format!(
        "SELECT 1 FROM \"{}\".sqlite_master",
        schema.replace('"', "\"\"")
    ))?;
    let mut held = hold.query([])?;
    held.next()?;
    let mut p = check_committed(conn, &schema, &table, db)?;
    drop(held);
    // The way out, on the last problem's line (one line per problem, like PRAGMA integrity_check).
    if let Some(last) = p.last_mut() {
        last.push_str(&format!(
            "; to recover: restore the database with its sidecar directory from a backup (phenix_backup), or DROP TABLE {table} (works on a damaged table) and load the rows again"
        ));
    }
    Ok(p)
}

/// The committed state of table `schema.table`, read in the caller's read transaction.
fn check_committed(
    conn: &Connection,
    schema: &str,
    table: &str,
    db: usize,
) -> rusqlite::Result<Vec<String>> {
    let (schema, table) = (schema.to_string(), table.to_string());
    let mut p = Vec::new();
    declared_matches_stored(conn, &schema, &table, &mut p);
    let Some(info) = read_info(conn, &schema, &table, &mut p)? else {
        return Ok(p);
    };
    let mut store = match sidecar::db_file(conn, &schema)? {
        Some(dbf) => {
            let path = sidecar::sidecar_path(&dbf, &info.id, info.generation);
            if std::fs::symlink_metadata(&path).is_err()
                && sidecar::newer_generation_exists(&dbf, &info.id, info.generation)
            {
                // This read transaction's snapshot predates a compaction that committed since, and the
                // old file is gone: check through this connection's open copy of it, if it has one.
                if let Some(s) = registry::lookup_state(&names::key(db, &schema, &table)) {
                    if let Ok(st) = s.try_lock() {
                        if st.usable().is_ok()
                            && st.generation() == info.generation
                            && st.visible_rows() >= info.committed
                        {
                            let mut store = st.store();
                            check_rows(conn, &schema, &table, &mut store, info.committed, &mut p)?;
                            return Ok(p);
                        }
                    }
                }
                return Err(Error::SnapshotConflict(format!(
                    "phenix_check: this read transaction's snapshot names vector file generation {} of {table}, which a later compaction replaced; retry the transaction (busy)",
                    info.generation
                ))
                .into());
            }
            match open_checked(&dbf, &table, &info, &mut p) {
                Some(s) => s,
                // Removed between the look above and the open (a compaction's clean-up): the same
                // snapshot conflict, not damage.
                None if std::fs::symlink_metadata(&path).is_err()
                    && sidecar::newer_generation_exists(&dbf, &info.id, info.generation) =>
                {
                    return Err(Error::SnapshotConflict(format!(
                        "phenix_check: this read transaction's snapshot names vector file generation {} of {table}, which a later compaction replaced; retry the transaction (busy)",
                        info.generation
                    ))
                    .into());
                }
                None => return Ok(p),
            }
        }
        None => {
            // In-memory tables: the vectors live in this process; check them through the connection
            // (unless the caller is that table's own integrity-check, which holds its state).
            let Some(s) = registry::lookup_state(&names::key(db, &schema, &table)) else {
                p.push(format!(
                    "{table}: its in-memory vectors are not loaded in this connection"
                ));
                return Ok(p);
            };
            let Ok(mut st) = s.try_lock() else {
                p.push(format!("{table}: its in-memory vectors are in use"));
                return Ok(p);
            };
            // Another connection of a shared cache may have committed since this one last read:
            // check the state as committed now, not this connection's cached count.
            if let Err(e) = st.usable().and_then(|()| st.refresh_for_read()) {
                p.push(e.to_string());
                return Ok(p);
            }
            let mut out = check_state(&st)?;
            p.append(&mut out);
            return Ok(p);
        }
    };
    check_rows(conn, &schema, &table, &mut store, info.committed, &mut p)?;
    if let Some(dbf) = sidecar::db_file(conn, &schema)? {
        check_index(
            conn,
            &schema,
            &table,
            index::dir_home(&dbf),
            &info,
            info.committed,
            &mut p,
        );
    }
    Ok(p)
}

/// The IVF index snapshot `<t>_info` names, if any (`super::index::check_snapshot`).
fn check_index(
    conn: &Connection,
    schema: &str,
    table: &str,
    home: Result<index::Home, Error>,
    info: &Info,
    rows: u64,
    p: &mut Vec<String>,
) {
    let (Ok(raw), Ok(home)) = (shadow::Info::read(conn, schema, table), home) else {
        return;
    };
    index::check_snapshot(
        &raw,
        &home,
        table,
        &info.id,
        info.generation,
        rows,
        info.def.layout,
        p,
    );
}

/// Checks a connected table through its state (the command form, and a table inside a write
/// transaction).
pub(crate) fn check_state(st: &TableState) -> rusqlite::Result<Vec<String>> {
    if let Err(e) = st.usable() {
        // A table that could not be opened: check what is stored, as phenix_check does.
        // SAFETY: only the handle's address is used, as a registry key.
        let db = unsafe { st.conn().handle() } as usize;
        let mut p = check_committed(st.conn(), st.schema(), st.name(), db)?;
        if p.is_empty() {
            p.push(e.to_string());
        }
        return Ok(p);
    }
    let mut p = Vec::new();
    let Some(info) = read_info(st.conn(), st.schema(), st.name(), &mut p)? else {
        return Ok(p);
    };
    if let Some(dbf) = sidecar::db_file(st.conn(), st.schema())? {
        // The file on disk, as another connection would open it (our own appends may still be
        // buffered, so the committed count is the one to hold it to).
        let at = if st.in_write() {
            Info {
                generation: st.generation(),
                committed: st.committed().min(info.committed),
                ..info.clone()
            }
        } else {
            info.clone()
        };
        if open_checked(&dbf, st.name(), &at, &mut p).is_none() {
            return Ok(p);
        }
    }
    let bound = st.visible_rows();
    {
        let mut store = st.store();
        check_rows(st.conn(), st.schema(), st.name(), &mut store, bound, &mut p)?;
    }
    let at = Info {
        generation: st.generation(),
        ..info
    };
    check_index(
        st.conn(),
        st.schema(),
        st.name(),
        st.index_home().map_err(Error::from),
        &at,
        bound,
        &mut p,
    );
    Ok(p)
}

#[derive(Clone)]
struct Info {
    id: [u8; 16],
    committed: u64,
    generation: u64,
    def: TableDef,
}

/// Reads and validates `<t>_info`; `None` (with problems) when the rest cannot be checked.
fn read_info(
    conn: &Connection,
    schema: &str,
    table: &str,
    p: &mut Vec<String>,
) -> rusqlite::Result<Option<Info>> {
    let vals = match shadow::Info::read(conn, schema, table) {
        Ok(v) => v,
        Err(e) => {
            p.push(format!("{table}_info cannot be read: {e}"));
            return Ok(None);
        }
    };
    let int = |k: &str, p: &mut Vec<String>| match vals.count(k) {
        Some(i) => Some(i),
        None => {
            p.push(format!(
                "{table}_info: `{k}` is {}; expected a non-negative integer",
                describe(vals.get(k))
            ));
            None
        }
    };
    let committed = int(COMMITTED, p);
    let generation = int(GENERATION, p);
    if let Some(f) = int(FORMAT, p) {
        if f != FORMAT_VERSION {
            p.push(format!(
                "{table}_info: format {f}; this phenix reads format {FORMAT_VERSION}"
            ));
        }
    }
    let id = vals.table_id();
    if let Some(id) = &id {
        for o in shadow::tables_claiming(conn, schema, id, table)? {
            p.push(format!(
                "{table}_info: its table id is also claimed by phenix table {o}; a table id must be unique in a database (DROP TABLE the copy)"
            ));
        }
    }
    if id.is_none() {
        p.push(format!(
            "{table}_info: `table_id` is {}; expected 32 hex digits",
            describe(vals.get(TABLE_ID))
        ));
    }
    let def = match vals.get(DEFINITION) {
        Some(Value::Text(d)) => {
            let args: Vec<&str> = d.split(", ").collect();
            match schema::parse(table, &args) {
                Ok(def) => Some(def),
                Err(e) => {
                    p.push(format!(
                        "{table}_info: the stored definition does not parse: {e}"
                    ));
                    None
                }
            }
        }
        other => {
            p.push(format!(
                "{table}_info: `definition` is {}; expected text",
                describe(other)
            ));
            None
        }
    };
    Ok(match (id, committed, generation, def) {
        (Some(id), Some(committed), Some(generation), Some(def)) => Some(Info {
            id,
            committed,
            generation,
            def,
        }),
        _ => None,
    })
}

/// Reports a stored definition (`<t>_info.definition`) that differs from the columns the schema declares
/// (`CREATE VIRTUAL TABLE … USING phenix(…)` in `sqlite_master`): such a table refuses to open.
fn declared_matches_stored(conn: &Connection, schema: &str, table: &str, p: &mut Vec<String>) {
    let sql: Option<String> = conn
        .query_row(
            &format!(
                "SELECT sql FROM \"{}\".sqlite_master WHERE type = 'table' AND name = ?1 COLLATE NOCASE",
                schema.replace('"', "\"\"")
            ),
            [table],
            |r| r.get(0),
        )
        .ok();
    let stored = shadow::Info::read(conn, schema, table)
        .ok()
        .and_then(|i| i.text(DEFINITION).map(str::to_string));
    let (Some(sql), Some(stored)) = (sql, stored) else {
        return;
    };
    let Some(args) = module_args(&sql) else {
        return;
    };
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match schema::parse(table, &args) {
        Ok(d) if d.canonical() != stored => p.push(format!(
            "{table}: the declared columns `{}` differ from the stored definition `{stored}` ({table}_info); the table will not open",
            d.canonical()
        )),
        Ok(_) => {}
        Err(e) => p.push(format!("{table}: the declared columns do not parse: {e}")),
    }
}

/// The module arguments of a `CREATE VIRTUAL TABLE … USING m(a, b, …)` statement, split as SQLite
/// splits them: at commas outside parentheses and quotes, trimmed.
fn module_args(sql: &str) -> Option<Vec<String>> {
    let open = sql.find('(')?;
    let close = sql.rfind(')')?;
    let body = sql.get(open + 1..close)?;
    let (mut out, mut cur, mut depth, mut quote) = (Vec::new(), String::new(), 0i32, None::<char>);
    for ch in body.chars() {
        match (quote, ch) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '\'' | '"' | '`') => quote = Some(ch),
            (None, '[') if depth == 0 && cur.trim().is_empty() => quote = Some(']'),
            (None, '(') => depth += 1,
            (None, ')') => depth -= 1,
            (None, ',') if depth == 0 => {
                out.push(cur.trim().to_string());
                cur.clear();
                continue;
            }
            _ => {}
        }
        cur.push(ch);
    }
    if !cur.trim().is_empty() {
        out.push(cur.trim().to_string());
    }
    Some(out)
}

fn describe(v: Option<&Value>) -> String {
    match v {
        None => "missing".into(),
        Some(Value::Null) => "NULL".into(),
        Some(Value::Integer(i)) => format!("{i}"),
        Some(Value::Real(r)) => format!("{r}"),
        Some(Value::Text(t)) => format!("'{}'", t.chars().take(40).collect::<String>()),
        Some(Value::Blob(b)) => format!("a blob of {} bytes", b.len()),
    }
}

/// Opens the table's vector file read-only and checks its header against `<t>_info`.
fn open_checked(
    db: &std::path::Path,
    table: &str,
    info: &Info,
    p: &mut Vec<String>,
) -> Option<VectorStore> {
    let path = match sidecar::checked_sidecar_path(db, &info.id, info.generation) {
        Ok(p) => p,
        Err(e) => {
            p.push(e.to_string());
            return None;
        }
    };
    match std::fs::symlink_metadata(&path) {
        Err(e) => {
            p.push(format!(
                "the vector file {} cannot be read: {e}",
                path.display()
            ));
            return None;
        }
        Ok(m) if !m.file_type().is_file() => {
            p.push(format!(
                "the vector file {} is not a regular file",
                path.display()
            ));
            return None;
        }
        Ok(_) => {}
    }
    let want = Expected {
        table,
        id: &info.id,
        generation: info.generation,
        committed: info.committed,
        layout: Some(info.def.layout),
    };
    match sidecar::open_vector_file(&path, &want, false) {
        Ok(s) => Some(s),
        Err(e) => {
            p.push(match e {
                // A file of another table or generation: the problem as it is.
                Error::Corrupt(m) => m,
                e => e.in_table(table).to_string(),
            });
            None
        }
    }
}

/// Checks `<t>_rows` against a store holding `bound` readable rows, and every live vector.
fn check_rows(
    conn: &Connection,
    schema: &str,
    table: &str,
    store: &mut VectorStore,
    bound: u64,
    p: &mut Vec<String>,
) -> rusqlite::Result<()> {
    let rows = qualified(schema, &format!("{table}_rows"));
    let mut slots: Vec<u64> = Vec::new();
    let mut bad_type = 0u64;
    let mut out_of_range = 0u64;
    let mut first_bad: Option<(i64, String)> = None;
    {
        let mut st = match conn.prepare(&format!("SELECT rowid, slot FROM {rows}")) {
            Ok(s) => s,
            Err(e) => {
                p.push(format!("{table}_rows cannot be read: {e}"));
                return Ok(());
            }
        };
        let mut q = st.query([])?;
        while let Some(r) = q.next()? {
            let rowid: i64 = r.get(0)?;
            match r.get::<_, Value>(1)? {
                Value::Integer(s) if s >= 0 && (s as u64) < bound => slots.push(s as u64),
                Value::Integer(s) => {
                    out_of_range += 1;
                    first_bad.get_or_insert((rowid, s.to_string()));
                }
                other => {
                    bad_type += 1;
                    first_bad.get_or_insert((rowid, describe(Some(&other))));
                }
            }
        }
    }
    if out_of_range + bad_type > 0 {
        let (rowid, slot) = first_bad.unwrap_or_default();
        let what = match (out_of_range, bad_type) {
            (n, 0) => format!("{n} row(s) point past the {bound} rows of the vector file"),
            (0, n) => format!("{n} row(s) have a slot that is not an integer"),
            (n, m) => format!(
                "{n} row(s) point past the {bound} rows of the vector file and {m} have a slot that is not an integer"
            ),
        };
        p.push(format!(
            "{table}_rows: {what} (first: row {rowid}, slot {slot})"
        ));
    }
    slots.sort_unstable();
    let dup = slots.windows(2).filter(|w| w[0] == w[1]).count();
    if dup > 0 {
        p.push(format!(
            "{table}_rows: {dup} slot(s) are used by more than one row"
        ));
    }
    if slots.is_empty() {
        return Ok(());
    }
    let view = match store.view(bound) {
        Ok(v) => v,
        Err(e) => {
            p.push(table_err(table, e).to_string());
            return Ok(());
        }
    };
    let mut bad = 0u64;
    let mut first = None;
    for &s in &slots {
        if view.row(s as usize).to_f32().iter().any(|x| !x.is_finite()) {
            bad += 1;
            first.get_or_insert(s);
        }
    }
    if let Some(s) = first {
        p.push(format!(
            "{table}: {bad} stored vector(s) hold NaN or infinity (first at slot {s})"
        ));
    }
    Ok(())
}
