//! Per-connection state of one phenix table: its shadow tables, its vector store and the commit
//! protocol of docs/design.md.
//!
//! Shadow tables (in the table's own schema):
//! - `<t>_info(key TEXT PRIMARY KEY, value) WITHOUT ROWID`: `table_id` (32 hex digits), `committed`
//!   (rows of the vector file that are committed), `generation`, `definition` (canonical column list).
//! - `<t>_rows(rowid INTEGER PRIMARY KEY, slot INTEGER NOT NULL, <metadata and aux columns>)`: the row ids,
//!   the slot of each row's vector in the file, and the other columns.
//!
//! The vector file lives at `<database file>-phenix/<table_id>.g<generation>.phx`: the directory comes from
//! the database's own filename (`sqlite3_db_filename`), the name from the hex table id; nothing in the
//! schema names a path. Temp and `:memory:` databases keep vectors in memory.

use super::schema::TableDef;
use super::table_err;
use crate::error::sql_error;
use phenix_core::store::{random_table_id, VectorStore};
use phenix_core::Bitmap;
use rusqlite::{params, Connection, OptionalExtension};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, Weak};

/// Marks a slot with no live row in [`Live::rowids`].
pub const DEAD: i64 = i64::MIN;

/// Which slots hold live rows, and their row ids (rebuilt from `<t>_rows` when stale).
#[derive(Debug, Default)]
pub struct Live {
    /// Live slots.
    pub bitmap: Bitmap,
    /// Row id of each slot (or [`DEAD`]).
    pub rowids: Vec<i64>,
}

/// Per-connection state of one phenix table.
pub struct TableState {
    /// A non-owning connection on the vtab's database handle.
    pub conn: Connection,
    /// Schema (`main`, `temp`, or an ATTACH name).
    pub schema: String,
    /// Table name.
    pub name: String,
    /// Column definitions.
    pub def: TableDef,
    /// The table id (also the sidecar's name).
    pub table_id: [u8; 16],
    /// The vectors.
    pub store: Arc<Mutex<VectorStore>>,
    /// Cached live set; `None` when it must be reloaded.
    pub live: Option<Live>,
    /// `PRAGMA data_version` when `live` and the committed count were last loaded.
    pub data_version: i64,
    /// The committed count as of the start of this connection's write transaction (or last load).
    pub committed: u64,
    /// Whether this connection's write transaction has done its first-write recovery step.
    pub in_write: bool,
    /// `(savepoint, store length at the savepoint)`.
    pub savepoints: Vec<(i32, u64)>,
    /// Whether this connection already removed orphaned sidecar files (once per connection of the
    /// table, at its first write: a readdir and a schema scan are not worth repeating per statement).
    pub orphans_collected: bool,
}

/// Stores of in-memory (temp / `:memory:`) tables, by table id, so a re-connect within the connection
/// (after a schema reset) finds the same vectors.
type MemStores = Mutex<HashMap<[u8; 16], Arc<Mutex<VectorStore>>>>;
fn mem_stores() -> &'static MemStores {
    static M: OnceLock<MemStores> = OnceLock::new();
    M.get_or_init(Default::default)
}

/// Live tables by (database handle, schema, table) for `phenix_retrieve_all`.
pub type Key = (usize, String, String);
fn registry() -> &'static Mutex<HashMap<Key, Weak<Mutex<TableState>>>> {
    static R: OnceLock<Mutex<HashMap<Key, Weak<Mutex<TableState>>>>> = OnceLock::new();
    R.get_or_init(Default::default)
}

/// The registry key of a table.
pub fn key(db: usize, schema: &str, name: &str) -> Key {
    (db, schema.to_ascii_lowercase(), name.to_ascii_lowercase())
}

/// Registers a table's state.
pub fn register_state(k: Key, s: &Arc<Mutex<TableState>>) {
    let mut r = registry().lock().unwrap_or_else(|e| e.into_inner());
    r.retain(|_, w| w.strong_count() > 0);
    r.insert(k, Arc::downgrade(s));
}

/// Finds a connected table's state.
pub fn lookup_state(k: &Key) -> Option<Arc<Mutex<TableState>>> {
    registry()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(k)
        .and_then(Weak::upgrade)
}

/// Removes a table from the registry.
pub fn unregister_state(k: &Key) {
    registry()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(k);
}

/// `"schema"."name"` with quotes escaped.
pub fn qualified(schema: &str, name: &str) -> String {
    format!(
        "\"{}\".\"{}\"",
        schema.replace('"', "\"\""),
        name.replace('"', "\"\"")
    )
}

fn hex(id: &[u8; 16]) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<[u8; 16]> {
    if s.len() != 32 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// The database file of `schema`, or `None` for temp / in-memory databases.
pub fn db_file(conn: &Connection, schema: &str) -> rusqlite::Result<Option<PathBuf>> {
    // `pragma_database_list` gives the file of each schema ('' for temp and :memory:).
    let file: Option<String> = conn
        .query_row(
            "SELECT file FROM pragma_database_list WHERE name = ?1",
            [schema],
            |r| r.get(0),
        )
        .optional()?;
    Ok(file.filter(|f| !f.is_empty()).map(PathBuf::from))
}

/// The sidecar directory of a database file: `<file>-phenix`.
pub fn sidecar_dir(db: &Path) -> PathBuf {
    let mut s = db.as_os_str().to_owned();
    s.push("-phenix");
    PathBuf::from(s)
}

/// The vector file of a table.
pub fn sidecar_path(db: &Path, id: &[u8; 16], generation: u64) -> PathBuf {
    sidecar_dir(db).join(format!("{}.g{generation}.phx", hex(id)))
}

fn info_table(schema: &str, name: &str) -> String {
    qualified(schema, &format!("{name}_info"))
}
fn rows_table(schema: &str, name: &str) -> String {
    qualified(schema, &format!("{name}_rows"))
}

fn core_err(e: phenix_core::Error) -> rusqlite::Error {
    sql_error(e)
}

impl TableState {
    /// `CREATE VIRTUAL TABLE`: makes the shadow tables and the vector file.
    pub fn create(
        conn: Connection,
        schema: &str,
        name: &str,
        def: TableDef,
    ) -> rusqlite::Result<Self> {
        let id = random_table_id();
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
        conn.execute(
            &format!(
                "INSERT INTO {}(key, value) VALUES ('table_id', ?1), ('committed', 0), ('generation', 0), ('definition', ?2), ('format', 1)",
                info_table(schema, name)
            ),
            params![hex(&id), def.canonical()],
        )?;
        let store = match db_file(&conn, schema)? {
            Some(db) => {
                let dir = sidecar_dir(&db);
                std::fs::create_dir_all(&dir).map_err(|e| {
                    sql_error(format!(
                        "cannot create the sidecar directory {}: {e}",
                        dir.display()
                    ))
                })?;
                let path = sidecar_path(&db, &id, 0);
                VectorStore::create(&path, def.layout, id).map_err(core_err)?
            }
            None => {
                let s = VectorStore::in_memory(def.layout);
                let a = Arc::new(Mutex::new(s));
                mem_stores()
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(id, a.clone());
                return Ok(Self::new(conn, schema, name, def, id, a, 0));
            }
        };
        Ok(Self::new(
            conn,
            schema,
            name,
            def,
            id,
            Arc::new(Mutex::new(store)),
            0,
        ))
    }

    /// `xConnect`: opens an existing table.
    pub fn connect(
        conn: Connection,
        schema: &str,
        name: &str,
        def: TableDef,
    ) -> rusqlite::Result<Self> {
        let info = info_table(schema, name);
        let get = |key: &str| -> rusqlite::Result<Option<rusqlite::types::Value>> {
            conn.query_row(
                &format!("SELECT value FROM {info} WHERE key = ?1"),
                [key],
                |r| r.get(0),
            )
            .optional()
        };
        let text = |v: Option<rusqlite::types::Value>| match v {
            Some(rusqlite::types::Value::Text(t)) => Some(t),
            _ => None,
        };
        let int = |v: Option<rusqlite::types::Value>| match v {
            Some(rusqlite::types::Value::Integer(i)) if i >= 0 => Some(i as u64),
            _ => None,
        };
        let id = text(get("table_id")?)
            .and_then(|t| unhex(&t))
            .ok_or_else(|| sql_error(format!("phenix table {name}: shadow table {name}_info has no valid table_id; the table is damaged")))?;
        let committed = int(get("committed")?).ok_or_else(|| {
            sql_error(format!(
                "phenix table {name}: shadow table {name}_info has no valid committed count"
            ))
        })?;
        let generation = int(get("generation")?).unwrap_or(0);
        if let Some(d) = text(get("definition")?) {
            if d != def.canonical() {
                return Err(sql_error(format!(
                    "phenix table {name}: the declared columns `{}` differ from the stored definition `{d}`",
                    def.canonical()
                )));
            }
        }
        let store = match db_file(&conn, schema)? {
            Some(db) => {
                let path = sidecar_path(&db, &id, generation);
                let readonly = conn.is_readonly(schema)?;
                let s = VectorStore::open(&path, Some(def.layout), committed, !readonly)
                    .map_err(|e| table_err(name, e))?;
                if s.header().table_id != id {
                    return Err(sql_error(format!(
                        "phenix table {name}: the vector file {} belongs to another table",
                        path.display()
                    )));
                }
                Arc::new(Mutex::new(s))
            }
            None => mem_stores()
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&id)
                .cloned()
                .ok_or_else(|| sql_error(format!("phenix table {name}: its in-memory vectors are gone (the process that made them ended)")))?,
        };
        Ok(Self::new(conn, schema, name, def, id, store, committed))
    }

    fn new(
        conn: Connection,
        schema: &str,
        name: &str,
        def: TableDef,
        table_id: [u8; 16],
        store: Arc<Mutex<VectorStore>>,
        committed: u64,
    ) -> Self {
        TableState {
            conn,
            schema: schema.to_string(),
            name: name.to_string(),
            def,
            table_id,
            store,
            live: None,
            data_version: -1,
            committed,
            in_write: false,
            savepoints: Vec::new(),
            orphans_collected: false,
        }
    }

    /// The `<t>_rows` table, qualified.
    pub fn rows_table(&self) -> String {
        rows_table(&self.schema, &self.name)
    }
    fn info_table(&self) -> String {
        info_table(&self.schema, &self.name)
    }

    /// Rows a scan may touch: the committed ones, plus this connection's own appends while it is
    /// writing. Rows past that may belong to another process's unfinished transaction and may be
    /// truncated by it at any moment, so a reader never maps them into a scan.
    pub fn visible_rows(&self) -> u64 {
        let len = self.store().len();
        if self.in_write {
            len
        } else {
            self.committed.min(len)
        }
    }

    /// Locks the store.
    pub fn store(&self) -> std::sync::MutexGuard<'_, VectorStore> {
        self.store.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn read_committed(&self) -> rusqlite::Result<u64> {
        let v: i64 = self.conn.query_row(
            &format!(
                "SELECT value FROM {} WHERE key = 'committed'",
                self.info_table()
            ),
            [],
            |r| r.get(0),
        )?;
        Ok(v.max(0) as u64)
    }

    /// Before a read: if another connection committed since the last load, reload the committed count and
    /// the live set.
    pub fn refresh_for_read(&mut self) -> rusqlite::Result<()> {
        let dv: i64 = self.conn.query_row(
            &format!(
                "PRAGMA \"{}\".data_version",
                self.schema.replace('"', "\"\"")
            ),
            [],
            |r| r.get(0),
        )?;
        if dv != self.data_version && !self.in_write {
            let c = self.read_committed()?;
            self.store()
                .refresh(c)
                .map_err(|e| table_err(&self.name, e))?;
            self.committed = c;
            self.live = None;
            self.data_version = dv;
        }
        if self.live.is_none() {
            self.load_live()?;
        }
        Ok(())
    }

    fn load_live(&mut self) -> rusqlite::Result<()> {
        let len = self.store().len() as usize;
        let mut live = Live {
            bitmap: Bitmap::new(len),
            rowids: vec![DEAD; len],
        };
        let mut st = self
            .conn
            .prepare(&format!("SELECT rowid, slot FROM {}", self.rows_table()))?;
        let mut rows = st.query([])?;
        while let Some(r) = rows.next()? {
            let (rowid, slot): (i64, i64) = (r.get(0)?, r.get(1)?);
            if slot < 0 || slot as usize >= len {
                return Err(sql_error(format!(
                    "phenix table {}: row {rowid} points at slot {slot}, but the vector file holds {len} rows; run phenix_check",
                    self.name
                )));
            }
            live.bitmap.insert(slot as usize);
            live.rowids[slot as usize] = rowid;
        }
        self.live = Some(live);
        Ok(())
    }

    /// Step 1 of the commit protocol, once per write transaction: take SQLite's write lock, read the
    /// committed count, and remove rows past it (leftovers of a crash or rollback).
    pub fn begin_write(&mut self) -> rusqlite::Result<()> {
        if self.in_write {
            return Ok(());
        }
        // A no-op write takes the write lock before we look at or truncate the file.
        self.conn.execute(
            &format!(
                "UPDATE {} SET value = value WHERE key = 'committed'",
                self.info_table()
            ),
            [],
        )?;
        if !self.orphans_collected {
            collect_orphans(&self.conn, &self.schema)?;
            self.orphans_collected = true;
        }
        let c = self.read_committed()?;
        {
            let mut s = self.store();
            s.refresh(c).map_err(|e| table_err(&self.name, e))?;
            if s.len() > c {
                s.truncate(c).map_err(core_err)?;
            }
        }
        if c != self.committed {
            self.live = None;
        }
        self.committed = c;
        self.in_write = true;
        if self.live.is_none() {
            self.load_live()?;
        }
        Ok(())
    }

    /// Step 3: make the appended rows durable and record the new committed count in the transaction.
    pub fn sync(&mut self) -> rusqlite::Result<()> {
        if !self.in_write {
            return Ok(());
        }
        let n = {
            let mut s = self.store();
            s.sync().map_err(core_err)?;
            s.len()
        };
        if n != self.committed {
            self.conn.execute(
                &format!(
                    "UPDATE {} SET value = ?1 WHERE key = 'committed'",
                    self.info_table()
                ),
                [n as i64],
            )?;
        }
        Ok(())
    }

    /// Step 4: the transaction committed.
    pub fn commit(&mut self) -> rusqlite::Result<()> {
        if self.in_write {
            let mut s = self.store();
            let n = s.len();
            s.set_committed(n).map_err(core_err)?;
            drop(s);
            self.committed = n;
        }
        self.in_write = false;
        self.savepoints.clear();
        // Our own commit does not change data_version; keep the cache.
        Ok(())
    }

    /// Step 5: the transaction rolled back: forget the uncommitted appends.
    pub fn rollback(&mut self) -> rusqlite::Result<()> {
        if self.in_write {
            let c = self.committed;
            let mut s = self.store();
            if s.len() > c {
                s.truncate(c).map_err(core_err)?;
            }
        }
        self.in_write = false;
        self.savepoints.clear();
        self.live = None;
        Ok(())
    }

    /// `xSavepoint`.
    pub fn savepoint(&mut self, i: i32) {
        let n = self.store().len();
        self.savepoints.retain(|(s, _)| *s < i);
        self.savepoints.push((i, n));
    }

    /// `xRelease`.
    pub fn release(&mut self, i: i32) {
        self.savepoints.retain(|(s, _)| *s < i);
    }

    /// `xRollbackTo`.
    pub fn rollback_to(&mut self, i: i32) -> rusqlite::Result<()> {
        if let Some(&(_, n)) = self.savepoints.iter().find(|(s, _)| *s == i) {
            let mut s = self.store();
            if s.len() > n && n >= self.committed {
                s.truncate(n).map_err(core_err)?;
            }
        }
        self.savepoints.retain(|(s, _)| *s <= i);
        self.live = None;
        Ok(())
    }

    /// `DROP TABLE`: drops the shadow tables (inside the transaction). The vector file is removed by the
    /// clean-up of the next connection that writes (or creates a phenix table) once no table refers to it ([`collect_orphans`]).
    pub fn destroy(&mut self) -> rusqlite::Result<()> {
        self.conn.execute_batch(&format!(
            "DROP TABLE IF EXISTS {}; DROP TABLE IF EXISTS {};",
            self.info_table(),
            self.rows_table()
        ))?;
        Ok(())
    }

    /// `ALTER TABLE … RENAME`: renames the shadow tables (the vector file is named by the table id).
    pub fn rename(&mut self, new: &str) -> rusqlite::Result<()> {
        let q = |s: &str| s.replace('"', "\"\"");
        self.conn.execute_batch(&format!(
            "ALTER TABLE {} RENAME TO \"{}_info\"; ALTER TABLE {} RENAME TO \"{}_rows\";",
            self.info_table(),
            q(new),
            self.rows_table(),
            q(new)
        ))?;
        self.name = new.to_string();
        Ok(())
    }
}

/// Removes vector files in the sidecar directory of `schema` that no phenix table of that schema refers
/// to (left by a committed DROP TABLE or an interrupted compaction). Runs only under SQLite's write
/// lock (from `CREATE VIRTUAL TABLE` and a transaction's first write), so no other connection can be
/// creating a table at the same time; a reader still using a removed file keeps its open descriptor and
/// map, which Linux keeps valid after unlink.
pub fn collect_orphans(conn: &Connection, schema: &str) -> rusqlite::Result<usize> {
    let Some(db) = db_file(conn, schema)? else {
        return Ok(0);
    };
    let dir = sidecar_dir(&db);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Ok(0);
    };
    // Every (id, generation) referenced by a `<t>_info` shadow table of a phenix table.
    let mut referenced = std::collections::HashSet::new();
    let tables: Vec<String> = {
        let mut st = conn.prepare(&format!(
            "SELECT name FROM \"{}\".sqlite_master WHERE type = 'table' AND sql LIKE 'CREATE VIRTUAL TABLE%USING phenix%'",
            schema.replace('"', "\"\"")
        ))?;
        let v = st
            .query_map([], |r| r.get::<_, String>(0))?
            .collect::<rusqlite::Result<_>>()?;
        v
    };
    for t in tables {
        let info = info_table(schema, &t);
        let r: rusqlite::Result<(String, i64)> = conn.query_row(
            &format!(
                "SELECT (SELECT value FROM {info} WHERE key='table_id'), (SELECT value FROM {info} WHERE key='generation')"
            ),
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        );
        if let Ok((id, g)) = r {
            referenced.insert(format!("{id}.g{g}.phx"));
        }
    }
    let mut removed = 0;
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        let ours = name.ends_with(".phx") && name.len() > 36 && unhex(&name[..32]).is_some();
        if ours && !referenced.contains(&name) && std::fs::remove_file(e.path()).is_ok() {
            removed += 1;
        }
    }
    Ok(removed)
}
