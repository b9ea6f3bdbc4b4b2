//! The shadow tables of a phenix table, and the one reader of `<t>_info`.
//!
//! - `<t>_info(key TEXT PRIMARY KEY, value) WITHOUT ROWID`, keys:
//!   - `table_id`: 32 hex digits, also the name of the vector file;
//!   - `committed`: rows of the vector file that are committed;
//!   - `generation`: the vector file in use (`<table_id>.g<generation>.phx`), bumped by compaction;
//!   - `definition`: the canonical column list ([`TableDef::canonical`]), compared on connect;
//!   - `format`: 1;
//!   - `remaps`: a counter every transaction that deletes rows or moves them to other slots increments
//!     (absent in tables that never did: 0), so readers know when only appends happened.
//! - `<t>_rows(rowid INTEGER PRIMARY KEY, slot INTEGER NOT NULL, <metadata and aux columns>)`: the row
//!   ids, the slot of each row's vector in the file, and the other columns.
//! - `<t>_dead(seq INTEGER PRIMARY KEY, slot INTEGER NOT NULL)` (format 2 only): the slots whose rows
//!   were deleted or moved away since the last compaction, in the order it happened; with the row-id
//!   file beside the vectors it makes the live set (docs/design.md, "The row-id map").
//!
//! To add a key: a constant here, its default in [`create`], its reading in [`Info`], and its check in
//! `check.rs`.

use super::names::{hex, qualified, unhex};
use super::schema::TableDef;
use rusqlite::types::Value;
use rusqlite::{params, Connection};
use std::collections::HashMap;

/// `<t>_info` key: the table id.
pub(crate) const TABLE_ID: &str = "table_id";
/// `<t>_info` key: committed rows.
pub(crate) const COMMITTED: &str = "committed";
/// `<t>_info` key: vector-file generation.
pub(crate) const GENERATION: &str = "generation";
/// `<t>_info` key: canonical definition.
pub(crate) const DEFINITION: &str = "definition";
/// `<t>_info` key: shadow-table format.
pub(crate) const FORMAT: &str = "format";
/// `<t>_info` key: remap counter.
pub(crate) const REMAPS: &str = "remaps";

/// The shadow-table format of tables without a row-id map (made before it existed, or in memory).
pub(crate) const FORMAT_VERSION: u64 = 1;
/// The shadow-table format of tables with a row-id file and `<t>_dead`.
pub(crate) const FORMAT_MAPPED: u64 = 2;

/// Whether this build reads shadow-table format `f`.
pub(crate) fn format_known(f: i64) -> bool {
    f == FORMAT_VERSION as i64 || f == FORMAT_MAPPED as i64
}

/// The `WHERE` condition on `sqlite_master` that selects phenix tables: the one test of "is it a
/// phenix table".
pub(crate) const IS_PHENIX: &str =
    "type = 'table' AND sql LIKE 'CREATE VIRTUAL TABLE%USING phenix%'";

/// `<t>_info`, qualified.
pub(crate) fn info_table(schema: &str, name: &str) -> String {
    qualified(schema, &format!("{name}_info"))
}

/// `<t>_rows`, qualified.
pub(crate) fn rows_table(schema: &str, name: &str) -> String {
    qualified(schema, &format!("{name}_rows"))
}

/// `<t>_dead`, qualified.
pub(crate) fn dead_table(schema: &str, name: &str) -> String {
    qualified(schema, &format!("{name}_dead"))
}

/// The phenix tables of `schema`.
pub(crate) fn phenix_tables(conn: &Connection, schema: &str) -> rusqlite::Result<Vec<String>> {
    let mut st = conn.prepare(&format!(
        "SELECT name FROM \"{}\".sqlite_master WHERE {IS_PHENIX}",
        schema.replace('"', "\"\"")
    ))?;
    let v = st
        .query_map([], |r| r.get::<_, String>(0))?
        .collect::<rusqlite::Result<_>>()?;
    Ok(v)
}

/// The other phenix tables of `schema` (not `except`) whose `<t>_info` names table id `id`.
pub(crate) fn tables_claiming(
    conn: &Connection,
    schema: &str,
    id: &[u8; 16],
    except: &str,
) -> rusqlite::Result<Vec<String>> {
    let mut out = Vec::new();
    for t in phenix_tables(conn, schema)? {
        if t.eq_ignore_ascii_case(except) {
            continue;
        }
        if let Ok(info) = Info::read(conn, schema, &t) {
            if info.table_id().as_ref() == Some(id) {
                out.push(t);
            }
        }
    }
    Ok(out)
}

/// Whether `schema.table` is a phenix table (an error if the schema cannot be read).
pub(crate) fn is_phenix_table(
    conn: &Connection,
    schema: &str,
    table: &str,
) -> rusqlite::Result<bool> {
    let mut st = conn.prepare(&format!(
        "SELECT 1 FROM \"{}\".sqlite_master WHERE name = ?1 COLLATE NOCASE AND {IS_PHENIX}",
        schema.replace('"', "\"\"")
    ))?;
    st.exists([table])
}

/// Makes the shadow tables of a new table and fills `<t>_info`; `mapped`: format 2 (a row-id file
/// beside the vectors, and `<t>_dead`), else format 1.
pub(crate) fn create(
    conn: &Connection,
    schema: &str,
    name: &str,
    id: &[u8; 16],
    def: &TableDef,
    mapped: bool,
) -> rusqlite::Result<()> {
    let mut cols = String::new();
    for c in &def.columns {
        cols.push_str(&format!(", \"{}\" {}", c.name, c.decl_type));
    }
    conn.execute_batch(&format!(
        "CREATE TABLE {info}(key TEXT PRIMARY KEY, value) WITHOUT ROWID;
         CREATE TABLE {rows}(rowid INTEGER PRIMARY KEY, slot INTEGER NOT NULL{cols});",
        info = info_table(schema, name),
        rows = rows_table(schema, name),
    ))?;
    if mapped {
        conn.execute_batch(&format!(
            "CREATE TABLE {}(seq INTEGER PRIMARY KEY, slot INTEGER NOT NULL);",
            dead_table(schema, name)
        ))?;
    }
    let format = if mapped {
        FORMAT_MAPPED
    } else {
        FORMAT_VERSION
    };
    conn.execute(
        &format!(
            "INSERT INTO {}(key, value) VALUES ('{TABLE_ID}', ?1), ('{COMMITTED}', 0), ('{GENERATION}', 0), ('{DEFINITION}', ?2), ('{FORMAT}', {format})",
            info_table(schema, name)
        ),
        params![hex(id), def.canonical()],
    )?;
    Ok(())
}

/// `DROP TABLE`: drops the shadow tables (inside the transaction).
pub(crate) fn drop_tables(conn: &Connection, schema: &str, name: &str) -> rusqlite::Result<()> {
    conn.execute_batch(&format!(
        "DROP TABLE IF EXISTS {}; DROP TABLE IF EXISTS {}; DROP TABLE IF EXISTS {};",
        info_table(schema, name),
        rows_table(schema, name),
        dead_table(schema, name)
    ))
}

/// `ALTER TABLE … RENAME`: renames the shadow tables.
pub(crate) fn rename(
    conn: &Connection,
    schema: &str,
    old: &str,
    new: &str,
) -> rusqlite::Result<()> {
    let q = |s: &str| s.replace('"', "\"\"");
    conn.execute_batch(&format!(
        "ALTER TABLE {} RENAME TO \"{}_info\"; ALTER TABLE {} RENAME TO \"{}_rows\";",
        info_table(schema, old),
        q(new),
        rows_table(schema, old),
        q(new)
    ))?;
    let has_dead: bool = conn.query_row(
        &format!(
            "SELECT EXISTS(SELECT 1 FROM \"{}\".sqlite_master WHERE type = 'table' AND name = ?1 COLLATE NOCASE)",
            q(schema)
        ),
        [format!("{old}_dead")],
        |r| r.get(0),
    )?;
    if has_dead {
        conn.execute_batch(&format!(
            "ALTER TABLE {} RENAME TO \"{}_dead\";",
            dead_table(schema, old),
            q(new)
        ))?;
    }
    Ok(())
}

/// Sets `<t>_info.key` (inside the transaction).
pub(crate) fn set(
    conn: &Connection,
    schema: &str,
    name: &str,
    key: &str,
    value: i64,
) -> rusqlite::Result<()> {
    conn.execute(
        &format!(
            "UPDATE {} SET value = ?1 WHERE key = ?2",
            info_table(schema, name)
        ),
        params![value, key],
    )?;
    Ok(())
}

/// A no-op write to `<t>_info`: takes SQLite's write lock.
pub(crate) fn take_write_lock(conn: &Connection, schema: &str, name: &str) -> rusqlite::Result<()> {
    conn.execute(
        &format!(
            "UPDATE {} SET value = value WHERE key = '{COMMITTED}'",
            info_table(schema, name)
        ),
        [],
    )?;
    Ok(())
}

/// Increments `<t>_info.remaps` (made 1 if absent) and returns its new value.
pub(crate) fn bump_remaps(conn: &Connection, schema: &str, name: &str) -> rusqlite::Result<i64> {
    conn.query_row(
        &format!(
            "INSERT INTO {}(key, value) VALUES ('{REMAPS}', 1) ON CONFLICT(key) DO UPDATE SET value = coalesce(value, 0) + 1 RETURNING value",
            info_table(schema, name)
        ),
        [],
        |r| r.get(0),
    )
}

/// The content of `<t>_info`, as stored: the one reader of that table. Each caller decides what a
/// missing or ill-typed key means for it (an error when connecting, a problem line in `phenix_check`,
/// "remove nothing" for the orphan collection).
#[derive(Debug, Clone, Default)]
pub(crate) struct Info {
    vals: HashMap<String, Value>,
}

impl Info {
    /// Reads `<t>_info` of `schema.table` (an error if it cannot be read).
    pub(crate) fn read(conn: &Connection, schema: &str, table: &str) -> rusqlite::Result<Info> {
        let mut st = conn.prepare_cached(&format!(
            "SELECT key, value FROM {}",
            info_table(schema, table)
        ))?;
        let vals = st
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, Value>(1)?)))?
            .collect::<rusqlite::Result<HashMap<_, _>>>()?;
        Ok(Info { vals })
    }

    /// The stored value of `key` (`None`: absent).
    pub(crate) fn get(&self, key: &str) -> Option<&Value> {
        self.vals.get(key)
    }

    /// `key` as a non-negative integer.
    pub(crate) fn count(&self, key: &str) -> Option<u64> {
        match self.get(key) {
            Some(Value::Integer(i)) if *i >= 0 => Some(*i as u64),
            _ => None,
        }
    }

    /// `key` as text.
    pub(crate) fn text(&self, key: &str) -> Option<&str> {
        match self.get(key) {
            Some(Value::Text(t)) => Some(t),
            _ => None,
        }
    }

    /// The table id (32 hex digits).
    pub(crate) fn table_id(&self) -> Option<[u8; 16]> {
        self.text(TABLE_ID).and_then(unhex)
    }

    /// The shadow-table format (1 if absent: tables made before the key existed).
    pub(crate) fn format(&self) -> Option<i64> {
        match self.get(FORMAT) {
            None => Some(FORMAT_VERSION as i64),
            Some(Value::Integer(f)) => Some(*f),
            _ => None,
        }
    }

    /// The remap counter (0 if absent or not an integer: a table made before it existed).
    pub(crate) fn remaps(&self) -> i64 {
        match self.get(REMAPS) {
            Some(Value::Integer(m)) => *m,
            _ => 0,
        }
    }
}
