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
use phenix_core::store::{random_table_id, Header, Layout, VectorStore};
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
    /// `<t>_info.remaps` when `live` was last made consistent with the shadow tables: a counter every
    /// transaction that deletes rows or moves them to other slots (vector or rowid update, compaction)
    /// increments. While it and the generation stay the same, other connections only appended rows, and
    /// the live set is extended instead of reloaded.
    remaps: i64,
    /// Whether the current write transaction deleted or moved rows (it increments `remaps` at xSync).
    remapping: bool,
    /// The `remaps` value this transaction wrote at xSync, taken over at xCommit.
    remaps_written: Option<i64>,
    /// `(savepoint, store length at the savepoint)`.
    pub savepoints: Vec<(i32, u64)>,
    /// Whether this connection already removed orphaned sidecar files (once per connection of the
    /// table, at its first write: a readdir and a schema scan are not worth repeating per statement;
    /// reset after a compaction commits or rolls back, so the file it left behind goes at the next write).
    pub orphans_collected: bool,
    /// The generation of the vector file in use (`<t>_info.generation`).
    pub generation: u64,
    /// The compactions made in the current write transaction, oldest first; each is undone if the
    /// transaction, or a savepoint open when it ran, rolls back.
    compactions: Vec<Compaction>,
}

/// What a compaction replaced, to put it back on rollback.
struct Compaction {
    /// The store in use before the compaction (with this transaction's appends up to then).
    old_store: Arc<Mutex<VectorStore>>,
    old_generation: u64,
    old_committed: u64,
    /// The highest savepoint open when the compaction ran: rolling back to it or an earlier one undoes
    /// the compaction.
    under_savepoint: Option<i32>,
}

/// Stores of in-memory (temp / `:memory:`) tables, by table id, so a re-connect within the connection
/// (after a schema reset) finds the same vectors.
type MemStores = Mutex<HashMap<[u8; 16], Arc<Mutex<VectorStore>>>>;
fn mem_stores() -> &'static MemStores {
    static M: OnceLock<MemStores> = OnceLock::new();
    M.get_or_init(Default::default)
}

/// Whether this process still holds the in-memory vectors of the table with hex id `id` (for tests of
/// memory release).
pub fn memory_store_alive(id: &str) -> bool {
    unhex(id).is_some_and(|id| {
        mem_stores()
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(&id)
    })
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

pub(crate) fn unhex(s: &str) -> Option<[u8; 16]> {
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

/// The sidecar directory of `db`, refused if it is a symbolic link or not a directory: a database made
/// by someone else could otherwise point phenix's writes and clean-ups at another directory.
pub fn checked_sidecar_dir(db: &Path) -> rusqlite::Result<PathBuf> {
    let dir = sidecar_dir(db);
    match std::fs::symlink_metadata(&dir) {
        Ok(m) if m.file_type().is_symlink() => Err(sql_error(format!(
            "the sidecar directory {} is a symbolic link; phenix keeps vectors only in a real directory next to the database",
            dir.display()
        ))),
        Ok(m) if !m.is_dir() => Err(sql_error(format!(
            "the sidecar directory {} is not a directory",
            dir.display()
        ))),
        _ => Ok(dir),
    }
}

/// The vector file of a table, after checking its directory ([`checked_sidecar_dir`]).
pub fn checked_sidecar_path(
    db: &Path,
    id: &[u8; 16],
    generation: u64,
) -> rusqlite::Result<PathBuf> {
    checked_sidecar_dir(db)?;
    Ok(sidecar_path(db, id, generation))
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
                let dir = checked_sidecar_dir(&db)?;
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
        let generation = int(get("generation")?).ok_or_else(|| {
            sql_error(format!(
                "phenix table {name}: shadow table {name}_info has no valid generation"
            ))
        })?;
        if let Some(d) = text(get("definition")?) {
            if d != def.canonical() {
                return Err(sql_error(format!(
                    "phenix table {name}: the declared columns `{}` differ from the stored definition `{d}`",
                    def.canonical()
                )));
            }
        }
        let store = match db_file(&conn, schema)? {
            Some(db) => Arc::new(Mutex::new(open_file(
                &conn,
                schema,
                name,
                &db,
                def.layout,
                &id,
                (generation, committed),
            )?)),
            None => mem_stores()
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&id)
                .cloned()
                .ok_or_else(|| sql_error(format!("phenix table {name}: its in-memory vectors are gone (the process that made them ended)")))?,
        };
        let mut st = Self::new(conn, schema, name, def, id, store, committed);
        st.generation = generation;
        Ok(st)
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
            remaps: 0,
            remapping: false,
            remaps_written: None,
            generation: 0,
            compactions: Vec::new(),
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

    /// The committed count, the generation and the remap counter recorded in `<t>_info` (a table made
    /// before the counter existed has none: 0).
    fn read_info(&self) -> rusqlite::Result<(u64, u64, i64)> {
        use rusqlite::types::Value;
        let (c, g, m): (Value, Value, Value) = self
            .conn
            .prepare_cached(&format!(
                "SELECT (SELECT value FROM {info} WHERE key = 'committed'), (SELECT value FROM {info} WHERE key = 'generation'), (SELECT value FROM {info} WHERE key = 'remaps')",
                info = self.info_table()
            ))?
            .query_row([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        let m = match m {
            Value::Integer(m) => m,
            _ => 0,
        };
        match (c, g) {
            (Value::Integer(c), Value::Integer(g)) if c >= 0 && g >= 0 => {
                Ok((c as u64, g as u64, m))
            }
            _ => Err(sql_error(format!(
                "phenix table {}: shadow table {}_info has no valid committed count or generation; run phenix_check",
                self.name, self.name
            ))),
        }
    }

    /// Takes up another connection's committed state: if it compacted the table (new generation), opens
    /// the new vector file in place of the old one; then notices rows appended up to `committed`.
    fn follow(&mut self, committed: u64, generation: u64) -> rusqlite::Result<()> {
        if generation != self.generation {
            if let Some(db) = db_file(&self.conn, &self.schema)? {
                let s = open_file(
                    &self.conn,
                    &self.schema,
                    &self.name,
                    &db,
                    self.def.layout,
                    &self.table_id,
                    (generation, committed),
                )?;
                self.store = Arc::new(Mutex::new(s));
            }
            self.generation = generation;
            self.live = None;
        }
        self.store()
            .refresh(committed)
            .map_err(|e| table_err(&self.name, e))
    }

    /// Before a read: if another connection committed since the last load, reload the committed count and
    /// the live set.
    pub fn refresh_for_read(&mut self) -> rusqlite::Result<()> {
        let dv = self.data_version_now()?;
        if dv != self.data_version && !self.in_write {
            let (c, g, m) = self.read_info()?;
            self.catch_up(c, g, m)?;
            self.data_version = dv;
        }
        if self.live.is_none() {
            self.load_live()?;
        }
        Ok(())
    }

    /// `PRAGMA data_version` of the table's schema (a cached statement: it runs before every query).
    fn data_version_now(&self) -> rusqlite::Result<i64> {
        self.conn
            .prepare_cached(&format!(
                "PRAGMA \"{}\".data_version",
                self.schema.replace('"', "\"\"")
            ))?
            .query_row([], |r| r.get(0))
    }

    /// Takes up the state other connections committed (`c`, `g`, `m` from `<t>_info`): a new generation
    /// opens its file; if rows were only appended (same generation and remap counter), the live set is
    /// extended by the new slots, otherwise it is dropped for a full reload.
    fn catch_up(&mut self, c: u64, g: u64, m: i64) -> rusqlite::Result<()> {
        let old = self.committed;
        let appended_only = g == self.generation && m == self.remaps && c >= old;
        self.follow(c, g)?;
        self.committed = c;
        self.remaps = m;
        if !appended_only {
            self.live = None;
        } else if c > old && self.live.is_some() {
            self.extend_live(old, c)?;
        }
        Ok(())
    }

    /// Adds to the live set the rows pointing at slots `from..to` (appended by other connections). The
    /// newest rows usually have the largest row ids, so `<t>_rows` is read from the end and the read
    /// stops once every slot of the range is accounted for (all of it, if some slot has no row).
    fn extend_live(&mut self, from: u64, to: u64) -> rusqlite::Result<()> {
        let want = (to - from) as usize;
        let mut found: Vec<(i64, usize)> = Vec::with_capacity(want.min(1 << 20));
        {
            let mut st = self.conn.prepare_cached(&format!(
                "SELECT rowid, slot FROM {} ORDER BY rowid DESC",
                self.rows_table()
            ))?;
            let mut rows = st.query([])?;
            while found.len() < want {
                let Some(r) = rows.next()? else { break };
                let (rowid, slot): (i64, i64) = (r.get(0)?, r.get(1)?);
                if slot >= from as i64 {
                    if slot >= to as i64 {
                        return Err(sql_error(format!(
                            "phenix table {}: row {rowid} points at slot {slot}, but {to} rows are committed; run phenix_check",
                            self.name
                        )));
                    }
                    found.push((rowid, slot as usize));
                }
            }
        }
        let name = self.name.clone();
        let live = self.live.as_mut().expect("checked by the caller");
        if live.rowids.len() < to as usize {
            live.rowids.resize(to as usize, DEAD);
        }
        for (rowid, slot) in found {
            if live.rowids[slot] != DEAD {
                return Err(sql_error(format!(
                    "phenix table {name}: rows {} and {rowid} both point at slot {slot}; run phenix_check",
                    live.rowids[slot]
                )));
            }
            live.bitmap.insert(slot);
            live.rowids[slot] = rowid;
        }
        Ok(())
    }

    /// Records that the current write transaction deletes rows or moves them to other slots.
    pub fn note_remap(&mut self) {
        self.remapping = true;
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
            if live.rowids[slot as usize] != DEAD {
                return Err(sql_error(format!(
                    "phenix table {}: rows {} and {rowid} both point at slot {slot}; run phenix_check",
                    self.name, live.rowids[slot as usize]
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
            collect_orphans(&self.conn, &self.schema, None)?;
            self.orphans_collected = true;
        }
        // Other connections may have committed since this one last looked (a write can come without a
        // read before it): take their state up, under the write lock.
        let dv = self.data_version_now()?;
        let (c, g, m) = self.read_info()?;
        if dv != self.data_version || c != self.committed || g != self.generation {
            self.catch_up(c, g, m)?;
            self.data_version = dv;
        }
        {
            // Leftovers of a crashed or rolled-back writer, past the committed count.
            let mut s = self.store();
            if s.len() > c {
                s.truncate(c).map_err(core_err)?;
            }
        }
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
        // After a compaction the count may equal the old one and still must be written (the table
        // now names another file); otherwise an unchanged count needs no write.
        if n != self.committed || !self.compactions.is_empty() {
            self.conn.execute(
                &format!(
                    "UPDATE {} SET value = ?1 WHERE key = 'committed'",
                    self.info_table()
                ),
                [n as i64],
            )?;
        }
        if self.remapping || !self.compactions.is_empty() {
            let m: i64 = self.conn.query_row(
                &format!(
                    "INSERT INTO {}(key, value) VALUES ('remaps', 1) ON CONFLICT(key) DO UPDATE SET value = coalesce(value, 0) + 1 RETURNING value",
                    self.info_table()
                ),
                [],
                |r| r.get(0),
            )?;
            self.remaps_written = Some(m);
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
            if let Some(m) = self.remaps_written.take() {
                self.remaps = m;
            }
            self.remapping = false;
            if !self.compactions.is_empty() {
                self.compactions.clear();
                // The old file is an orphan now; the next write of this connection removes it.
                self.orphans_collected = false;
                self.publish_memory_store();
            }
        }
        self.in_write = false;
        self.savepoints.clear();
        // Our own commit does not change data_version; keep the cache.
        Ok(())
    }

    /// Step 5: the transaction rolled back: forget the uncommitted appends.
    pub fn rollback(&mut self) -> rusqlite::Result<()> {
        while self.undo_compaction() {}
        self.remapping = false;
        self.remaps_written = None;
        let mut r = Ok(());
        if self.in_write {
            let c = self.committed;
            let mut s = self.store();
            if s.len() > c {
                // If this fails the rows stay past the committed count, where no reader looks, and the
                // next write transaction truncates them; the state below is reset either way.
                r = s.truncate(c).map_err(core_err);
            }
        }
        self.in_write = false;
        self.savepoints.clear();
        self.live = None;
        r
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
        // A compaction made under savepoint `i` or a later one now belongs to the enclosing savepoint
        // (or to the transaction): a new savepoint `i` rolled back later must not undo it.
        let outer = if i > 0 { Some(i - 1) } else { None };
        for c in &mut self.compactions {
            if c.under_savepoint.is_some_and(|m| m >= i) {
                c.under_savepoint = outer;
            }
        }
    }

    /// `xRollbackTo`.
    pub fn rollback_to(&mut self, i: i32) -> rusqlite::Result<()> {
        // Undo the compactions made after savepoint `i` was opened (newest first).
        while matches!(self.compactions.last(), Some(c) if c.under_savepoint.is_some_and(|m| i <= m))
        {
            self.undo_compaction();
        }
        if let Some(&(_, n)) = self.savepoints.iter().find(|(s, _)| *s == i) {
            let mut s = self.store();
            if s.len() > n && n >= self.committed {
                // Failing to give the space back is not an error of ROLLBACK TO (SQLite would only say
                // "SQL logic error"): the rows stay as dead slots that no `<t>_rows` entry names, and
                // compaction reclaims them.
                let _ = s.truncate(n);
            }
        }
        self.savepoints.retain(|(s, _)| *s <= i);
        self.live = None;
        Ok(())
    }

    /// Puts back what a compaction of this transaction replaced (the transaction or its savepoint rolled
    /// back; SQLite restores `<t>_rows` and `<t>_info` itself). The new file is left as an orphan for the
    /// next write to remove, under the write lock.
    /// Undoes the newest compaction; `false` if there was none.
    fn undo_compaction(&mut self) -> bool {
        let Some(c) = self.compactions.pop() else {
            return false;
        };
        self.store = c.old_store;
        self.generation = c.old_generation;
        self.committed = c.old_committed;
        self.live = None;
        self.orphans_collected = false;
        true
    }

    /// After a compaction of an in-memory table commits, a re-connect must find the new store.
    fn publish_memory_store(&self) {
        if self.store().path().is_none() {
            mem_stores()
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(self.table_id, self.store.clone());
        }
    }

    /// Compaction (`INSERT INTO t(t) VALUES ('optimize')`): copies the live rows, in slot order and bit
    /// for bit, into a new vector file of generation `g + 1`, syncs it, renumbers the slots in `<t>_rows`
    /// and names the new generation in `<t>_info`, all inside the current write transaction. Until SQLite
    /// commits, every other connection keeps using generation `g`, which is never touched; a crash before
    /// the commit leaves `g + 1` as an orphan, a crash after it leaves `g` as one, and the next writer
    /// removes it. Returns the number of rows kept.
    pub fn optimize(&mut self) -> rusqlite::Result<u64> {
        /// Rows are copied in chunks of about this many bytes.
        const COPY_BYTES: usize = 4 << 20;
        self.begin_write()?;
        let slots: Vec<i64> = {
            let mut st = self.conn.prepare(&format!(
                "SELECT slot FROM {} ORDER BY slot",
                self.rows_table()
            ))?;
            let v = st
                .query_map([], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?;
            v
        };
        let generation = self.generation + 1;
        let layout = self.def.layout;
        let mut new = match db_file(&self.conn, &self.schema)? {
            Some(db) => {
                let path = checked_sidecar_path(&db, &self.table_id, generation)?;
                // A file of this generation can only be the leftover of a compaction that crashed or
                // rolled back: `<t>_info` names an older one and we hold the write lock.
                match std::fs::remove_file(&path) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                        return Err(table_err(
                            &self.name,
                            format!("cannot replace the stale file {}: {e}", path.display()),
                        ))
                    }
                    _ => {}
                }
                let header = Header {
                    layout,
                    table_id: self.table_id,
                    generation,
                };
                VectorStore::create_with_header(&path, header)
                    .map_err(|e| table_err(&self.name, e))?
            }
            None => VectorStore::in_memory(layout),
        };
        if let Err(e) = self.fill_compacted(&mut new, &slots, generation, COPY_BYTES) {
            if let Some(p) = new.path().map(Path::to_path_buf) {
                drop(new);
                let _ = std::fs::remove_file(p);
            }
            return Err(e);
        }
        let old = std::mem::replace(&mut self.store, Arc::new(Mutex::new(new)));
        self.compactions.push(Compaction {
            old_store: old,
            old_generation: self.generation,
            old_committed: self.committed,
            under_savepoint: self.savepoints.iter().map(|s| s.0).max(),
        });
        self.generation = generation;
        // No reader can be using the new file, so nothing in it is protected from rollback truncation.
        self.committed = 0;
        self.live = None;
        self.load_live()?;
        Ok(slots.len() as u64)
    }

    /// Copies the rows at `slots` of the current store into `new`, syncs it, and rewrites the shadow
    /// tables for `generation` (inside the transaction).
    fn fill_compacted(
        &self,
        new: &mut VectorStore,
        slots: &[i64],
        generation: u64,
        copy_bytes: usize,
    ) -> rusqlite::Result<()> {
        {
            let mut old = self.store();
            let n = old.len();
            let view = old.view(n).map_err(|e| table_err(&self.name, e))?;
            let mut buf = Vec::with_capacity(copy_bytes + self.def.layout.stride());
            for &slot in slots {
                if slot < 0 || slot as u64 >= n {
                    return Err(table_err(
                        &self.name,
                        format!("a row points at slot {slot}, but the vector file holds {n} rows; run phenix_check"),
                    ));
                }
                buf.extend_from_slice(view.raw(slot as usize..slot as usize + 1));
                if buf.len() >= copy_bytes {
                    new.append_encoded(&buf)
                        .map_err(|e| table_err(&self.name, e))?;
                    buf.clear();
                }
            }
            if !buf.is_empty() {
                new.append_encoded(&buf)
                    .map_err(|e| table_err(&self.name, e))?;
            }
        }
        new.sync().map_err(|e| table_err(&self.name, e))?;
        let rows = self.rows_table();
        self.conn.execute(
            &format!(
                "UPDATE {rows} SET slot = m.n FROM (SELECT rowid AS r, row_number() OVER (ORDER BY slot) - 1 AS n FROM {rows}) AS m WHERE {rows}.rowid = m.r"
            ),
            [],
        )?;
        self.conn.execute(
            &format!(
                "UPDATE {} SET value = ?1 WHERE key = 'generation'",
                self.info_table()
            ),
            [generation as i64],
        )?;
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

/// Opens the vector file of generation `at.0` with `at.1` committed rows, and checks that it is the
/// table's own file (table id) of that generation.
fn open_file(
    conn: &Connection,
    schema: &str,
    name: &str,
    db: &Path,
    layout: Layout,
    id: &[u8; 16],
    at: (u64, u64),
) -> rusqlite::Result<VectorStore> {
    let (generation, committed) = at;
    let path = checked_sidecar_path(db, id, generation)?;
    if std::fs::symlink_metadata(&path).is_err() && newer_generation_exists(db, id, generation) {
        // A WAL reader whose snapshot predates a compaction that has since committed, and whose old
        // file the next writer already removed: like SQLite's own SQLITE_BUSY_SNAPSHOT, the caller
        // retries the read transaction and sees the new generation.
        return Err(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY),
            Some(format!(
                "phenix: phenix table {name}: this read transaction's snapshot names vector file generation {generation}, which a later compaction replaced; retry the transaction (busy)"
            )),
        ));
    }
    let readonly = conn.is_readonly(schema)?;
    let s = VectorStore::open(&path, Some(layout), committed, !readonly)
        .map_err(|e| table_err(name, e))?;
    check_header(&s, &path, name, id, generation).map_err(|e| table_err(name, e))?;
    Ok(s)
}

/// Whether the opened vector file at `path` is table `table`'s own file (table id `id`) of the
/// generation its `<table>_info` names; the problem otherwise. Used wherever a vector file is opened:
/// connecting a table, `phenix_check`, `phenix_backup`.
pub fn check_header(
    s: &VectorStore,
    path: &Path,
    table: &str,
    id: &[u8; 16],
    generation: u64,
) -> Result<(), String> {
    if s.header().table_id != *id {
        return Err(format!(
            "the vector file {} belongs to another table (its table id differs from {table}_info's)",
            path.display()
        ));
    }
    if s.header().generation != generation {
        return Err(format!(
            "the vector file {} is generation {}, but {table}_info names generation {generation}",
            path.display(),
            s.header().generation
        ));
    }
    Ok(())
}

/// Whether the sidecar directory holds a file of table `id` with a generation above `generation`.
fn newer_generation_exists(db: &Path, id: &[u8; 16], generation: u64) -> bool {
    let prefix = format!("{}.g", hex(id));
    std::fs::read_dir(sidecar_dir(db)).is_ok_and(|entries| {
        entries.flatten().any(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            name.strip_prefix(&prefix)
                .and_then(|r| r.strip_suffix(".phx"))
                .and_then(|g| g.parse::<u64>().ok())
                .is_some_and(|g| g > generation)
        })
    })
}

/// Removes vector files in the sidecar directory of `schema` that no phenix table of that schema refers
/// to (left by a committed DROP TABLE or an interrupted compaction). Runs only under SQLite's write
/// lock (from `CREATE VIRTUAL TABLE` and a transaction's first write), so no other connection can be
/// creating a table at the same time; a reader still using a removed file keeps its open descriptor and
/// map, which Linux keeps valid after unlink.
///
/// `creating` names a table whose `CREATE VIRTUAL TABLE` is running: its schema row exists but its
/// shadow tables do not yet (and it has no file to protect).
pub fn collect_orphans(
    conn: &Connection,
    schema: &str,
    creating: Option<&str>,
) -> rusqlite::Result<usize> {
    let Some(db) = db_file(conn, schema)? else {
        return Ok(0);
    };
    let dir = checked_sidecar_dir(&db)?;
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
        if creating.is_some_and(|c| c.eq_ignore_ascii_case(&t)) {
            continue;
        }
        let info = info_table(schema, &t);
        let r: rusqlite::Result<(String, i64)> = conn.query_row(
            &format!(
                "SELECT (SELECT value FROM {info} WHERE key='table_id'), (SELECT value FROM {info} WHERE key='generation')"
            ),
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        );
        match r {
            Ok((id, g)) if unhex(&id).is_some() && g >= 0 => {
                referenced.insert(format!("{id}.g{g}.phx"));
            }
            // A table whose reference cannot be read (damaged shadow table): its file cannot be told
            // from an orphan, so remove nothing.
            _ => return Ok(0),
        }
    }
    let mut removed = 0;
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        let ours = name.ends_with(".phx") && name.get(..32).and_then(unhex).is_some();
        let regular = e.file_type().is_ok_and(|t| t.is_file());
        if ours && regular && !referenced.contains(&name) && std::fs::remove_file(e.path()).is_ok()
        {
            removed += 1;
        }
    }
    Ok(removed)
}
