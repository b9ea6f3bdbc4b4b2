//! Per-connection state of one phenix table: its definition, its vector store and live set, and what
//! this connection knows of the committed state. Opening ([`TableState::create`],
//! [`TableState::connect`]) and following other connections' commits live here; the commit protocol of
//! docs/design.md is in [`txn`], compaction in [`compact`].

mod compact;
mod index;
mod txn;

pub(crate) use txn::Failed;

use super::live::Live;
use super::registry;
use super::schema::TableDef;
use super::shadow::{self, Info, COMMITTED, DEFINITION, FORMAT, FORMAT_VERSION, GENERATION};
use super::sidecar::{self, db_file, Expected};
use crate::args::table_err;
use crate::error::Error;
use phenix_core::store::{random_table_id, VectorStore};
use rusqlite::Connection;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

/// Per-connection state of one phenix table.
pub(crate) struct TableState {
    /// A non-owning connection on the vtab's database handle.
    conn: Connection,
    /// Schema (`main`, `temp`, or an ATTACH name).
    schema: String,
    /// Table name.
    name: String,
    /// Column definitions.
    def: TableDef,
    /// The table id (also the sidecar's name).
    table_id: [u8; 16],
    /// The vectors.
    store: Arc<Mutex<VectorStore>>,
    /// Cached live set; `None` when it must be reloaded.
    live: Option<Live>,
    /// `PRAGMA data_version` when `live` and the committed count were last loaded.
    data_version: i64,
    /// The committed count as of the start of this connection's write transaction (or last load).
    committed: u64,
    /// Whether this connection's write transaction has done its first-write recovery step.
    in_write: bool,
    /// `<t>_info.remaps` when `live` was last made consistent with the shadow tables: a counter every
    /// transaction that deletes rows or moves them to other slots (vector or rowid update, compaction)
    /// increments. While it and the generation stay the same, other connections only appended rows, and
    /// the live set is extended instead of reloaded.
    remaps: i64,
    /// Whether the current write transaction deleted or moved rows (it increments `remaps` at xSync).
    remapping: bool,
    /// The `remaps` value this transaction wrote at xSync, taken over at xCommit.
    remaps_written: Option<i64>,
    /// The state at each open savepoint this table saw (`xSavepoint(i)`), by index; `None` when the
    /// savepoint was opened before this transaction's first write (the state then is `begin`).
    savepoints: Vec<(i32, Option<txn::Snapshot>)>,
    /// The state at this write transaction's first write (`begin_write`): what `ROLLBACK`, and a
    /// `ROLLBACK TO` a savepoint this table has no entry for, return to.
    begin: Option<txn::Snapshot>,
    /// Whether this connection already removed orphaned sidecar files (once per connection of the
    /// table, at its first write: a readdir and a schema scan are not worth repeating per statement;
    /// reset after a compaction commits or rolls back, so the file it left behind goes at the next write).
    orphans_collected: bool,
    /// The generation of the vector file in use (`<t>_info.generation`).
    generation: u64,
    /// Why the table could not be opened, if it could not ([`TableState::connect`]).
    broken: Option<Broken>,
    /// For an in-memory table: its key in the process-wide store registry.
    mem: Option<registry::MemKey>,
    /// This connection's in-memory stores (the module's client data).
    keep: registry::ConnStores,
    /// The table's IVF index in this connection (`state/index.rs`).
    index: index::IndexState,
}

impl TableState {
    /// `CREATE VIRTUAL TABLE`: makes the shadow tables and the vector file.
    pub(crate) fn create(
        conn: Connection,
        schema: &str,
        name: &str,
        def: TableDef,
        keep: registry::ConnStores,
    ) -> rusqlite::Result<Self> {
        let id = random_table_id();
        shadow::create(&conn, schema, name, &id, &def)?;
        let store = match db_file(&conn, schema)? {
            Some(db) => {
                let dir = sidecar::checked_sidecar_dir(&db)?;
                std::fs::create_dir_all(&dir).map_err(|e| {
                    Error::Io(format!(
                        "cannot create the sidecar directory {}: {e}",
                        dir.display()
                    ))
                })?;
                let path = sidecar::sidecar_path(&db, &id, 0);
                let s = VectorStore::create(&path, def.layout, id).map_err(Error::from)?;
                Arc::new(Mutex::new(s))
            }
            None => {
                let a = Arc::new(Mutex::new(VectorStore::in_memory(def.layout)));
                let key = (sidecar::memory_identity(&conn, schema), id);
                registry::publish_memory_store(key, 0, &a, &keep);
                let mut st = Self::new(conn, schema, name, def, id, a, 0);
                st.mem = Some(key);
                st.keep = keep;
                return Ok(st);
            }
        };
        let mut st = Self::new(conn, schema, name, def, id, store, 0);
        st.keep = keep;
        Ok(st)
    }

    /// `xConnect`: opens an existing table. A table that cannot be opened (a missing or damaged vector
    /// file, damaged shadow tables, another table claiming its id) still connects, *broken*: every read
    /// and write returns the open error, while `DROP TABLE` works, so damage never traps a table in the
    /// schema. Only a snapshot conflict (`SQLITE_BUSY`, retry) fails the connect itself.
    pub(crate) fn connect(
        conn: Connection,
        schema: &str,
        name: &str,
        def: TableDef,
        keep: registry::ConnStores,
    ) -> rusqlite::Result<Self> {
        match open_existing(&conn, schema, name, &def, &keep) {
            Ok((id, committed, generation, store)) => {
                let in_memory = store
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .path()
                    .is_none();
                let mem = in_memory.then(|| (sidecar::memory_identity(&conn, schema), id));
                let mut st = Self::new(conn, schema, name, def, id, store, committed);
                st.generation = generation;
                st.mem = mem;
                st.keep = keep;
                Ok(st)
            }
            Err(e) if e.sqlite_error_code() == Some(rusqlite::ErrorCode::DatabaseBusy) => Err(e),
            Err(e) => {
                let layout = def.layout;
                let mut st = Self::new(
                    conn,
                    schema,
                    name,
                    def,
                    [0; 16],
                    Arc::new(Mutex::new(VectorStore::in_memory(layout))),
                    0,
                );
                st.broken = Some(Broken::from(e));
                st.keep = keep;
                Ok(st)
            }
        }
    }

    /// The open error of a broken table ([`TableState::connect`]), as a fresh error.
    pub(crate) fn usable(&self) -> rusqlite::Result<()> {
        match &self.broken {
            None => Ok(()),
            Some(b) => Err(b.error(&self.name)),
        }
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
            begin: None,
            orphans_collected: false,
            remaps: 0,
            remapping: false,
            remaps_written: None,
            generation: 0,
            broken: None,
            mem: None,
            keep: registry::ConnStores::default(),
            index: index::IndexState::default(),
        }
    }

    /// The connection (non-owning, on the vtab's database handle).
    pub(crate) fn conn(&self) -> &Connection {
        &self.conn
    }
    /// The schema (`main`, `temp`, or an ATTACH name).
    pub(crate) fn schema(&self) -> &str {
        &self.schema
    }
    /// The table's name.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }
    /// The column definitions.
    pub(crate) fn def(&self) -> &TableDef {
        &self.def
    }
    /// Whether this connection is inside a write transaction on the table.
    pub(crate) fn in_write(&self) -> bool {
        self.in_write
    }
    /// The committed count as this connection last saw it.
    pub(crate) fn committed(&self) -> u64 {
        self.committed
    }
    /// The generation of the vector file in use.
    pub(crate) fn generation(&self) -> u64 {
        self.generation
    }
    /// `PRAGMA data_version` at the last load.
    pub(crate) fn data_version(&self) -> i64 {
        self.data_version
    }
    /// The live set, if loaded ([`TableState::refresh_for_read`] and `begin_write` load it).
    pub(crate) fn live(&self) -> Option<&Live> {
        self.live.as_ref()
    }
    /// The live set, for a write to record what it changed (nothing to do while it is unloaded).
    pub(crate) fn live_mut(&mut self) -> Option<&mut Live> {
        self.live.as_mut()
    }

    /// The `<t>_rows` table, qualified.
    pub(crate) fn rows_table(&self) -> String {
        shadow::rows_table(&self.schema, &self.name)
    }

    /// Rows a scan may touch: the committed ones, plus this connection's own appends while it is
    /// writing. Rows past that may belong to another process's unfinished transaction and may be
    /// truncated by it at any moment, so a reader never maps them into a scan.
    pub(crate) fn visible_rows(&self) -> u64 {
        let len = self.store().len();
        if self.in_write {
            len
        } else {
            self.committed.min(len)
        }
    }

    /// Locks the store.
    pub(crate) fn store(&self) -> MutexGuard<'_, VectorStore> {
        self.store.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The committed count, the generation and the remap counter recorded in `<t>_info` (a table made
    /// before the counter existed has none: 0).
    fn read_info(&self) -> rusqlite::Result<(u64, u64, i64)> {
        let info = Info::read(&self.conn, &self.schema, &self.name)?;
        match (info.count(COMMITTED), info.count(GENERATION)) {
            (Some(c), Some(g)) => Ok((c, g, info.remaps())),
            _ => Err(Error::Corrupt(format!(
                "phenix table {}: shadow table {}_info has no valid committed count or generation; run phenix_check",
                self.name, self.name
            ))
            .into()),
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
                    &Expected {
                        table: &self.name,
                        id: &self.table_id,
                        generation,
                        committed,
                        layout: Some(self.def.layout),
                    },
                )?;
                self.store = Arc::new(Mutex::new(s));
            } else if let Some(key) = self.mem {
                // Another connection of a shared in-memory database compacted: its new store.
                self.store = registry::memory_store(&key, generation, &self.keep).ok_or_else(|| {
                    Error::CantOpen(format!(
                        "phenix table {}: the in-memory vectors of generation {generation} are gone",
                        self.name
                    ))
                })?;
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
    pub(crate) fn refresh_for_read(&mut self) -> rusqlite::Result<()> {
        self.usable()?;
        let dv = self.data_version_now()?;
        if dv != self.data_version && !self.in_write {
            let (c, g, m) = self.read_info()?;
            self.catch_up(c, g, m)?;
            self.data_version = dv;
        }
        if self.live.is_none() {
            self.load_live()?;
        }
        // A vector file shrunk by another program since the last statement: an error now, instead
        // of SIGBUS when a row read touches a lost page.
        self.store()
            .check_length()
            .map_err(|e| table_err(&self.name, e))
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
        } else if c > old {
            let rows = self.rows_table();
            if let Some(live) = self.live.as_mut() {
                live.extend(&self.conn, &rows, old, c, &self.name)?;
            }
        }
        Ok(())
    }

    /// Records that the current write transaction deletes rows or moves them to other slots.
    pub(crate) fn note_remap(&mut self) {
        self.remapping = true;
    }

    fn load_live(&mut self) -> rusqlite::Result<()> {
        // Only slots this connection may read: a `<t>_rows` entry pointing past the committed rows
        // (a crafted or damaged count) is refused here rather than read as another row's vector.
        let len = self.visible_rows() as usize;
        self.live = Some(Live::load(&self.conn, &self.rows_table(), len, &self.name)?);
        Ok(())
    }

    /// `DROP TABLE`: drops the shadow tables (inside the transaction). The vector file is removed by the
    /// clean-up of the next connection that writes (or creates a phenix table) once no table refers to
    /// it ([`sidecar::collect_orphans`]).
    pub(crate) fn destroy(&mut self) -> rusqlite::Result<()> {
        shadow::drop_tables(&self.conn, &self.schema, &self.name)?;
        // An in-memory table's vectors go with it once the drop cannot roll back: when it commits
        // (a ROLLBACK brings the table back and needs them; `drops`), else at once in autocommit
        // mode, else when the connection closes.
        if let Some(key) = self.mem {
            if !super::drops::release_at_commit(&self.conn, key) && self.conn.is_autocommit() {
                registry::release_memory_store(&key, &self.keep);
            }
            self.store = Arc::new(Mutex::new(VectorStore::in_memory(self.def.layout)));
        }
        Ok(())
    }

    /// `ALTER TABLE … RENAME`: renames the shadow tables (the vector file is named by the table id).
    pub(crate) fn rename(&mut self, new: &str) -> rusqlite::Result<()> {
        shadow::rename(&self.conn, &self.schema, &self.name, new)?;
        self.name = new.to_string();
        Ok(())
    }
}

/// The open error of a broken table: its SQLite code and message.
struct Broken {
    code: std::ffi::c_int,
    msg: String,
}

impl From<rusqlite::Error> for Broken {
    fn from(e: rusqlite::Error) -> Self {
        match e {
            rusqlite::Error::SqliteFailure(f, m) => Broken {
                code: f.extended_code,
                msg: m.unwrap_or_else(|| f.to_string()),
            },
            other => Broken {
                code: rusqlite::ffi::SQLITE_ERROR,
                msg: other.to_string(),
            },
        }
    }
}

impl Broken {
    fn error(&self, table: &str) -> rusqlite::Error {
        let mut msg = self.msg.clone();
        if !msg.starts_with("phenix: ") {
            msg.insert_str(0, "phenix: ");
        }
        msg.push_str(&format!(
            " (phenix_check('{table}') describes the damage; restore the database and its sidecar directory from a backup, or DROP TABLE {table})"
        ));
        rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(self.code), Some(msg))
    }
}

/// What [`open_existing`] found: table id, committed count, generation and the store.
type Opened = ([u8; 16], u64, u64, Arc<Mutex<VectorStore>>);

/// Reads `<t>_info`, checks it (a table id no other table of the schema claims, a committed count,
/// a generation, format 1, the declared definition) and opens the vector store; `(id, committed,
/// generation, store)`.
fn open_existing(
    conn: &Connection,
    schema: &str,
    name: &str,
    def: &TableDef,
    keep: &registry::ConnStores,
) -> rusqlite::Result<Opened> {
    let info = Info::read(conn, schema, name)?;
    let damaged = |what: &str| -> rusqlite::Error {
        Error::Corrupt(format!(
            "phenix table {name}: shadow table {name}_info has no valid {what}"
        ))
        .into()
    };
    let id = info.table_id().ok_or_else(|| {
        Error::Corrupt(format!(
            "phenix table {name}: shadow table {name}_info has no valid table_id; the table is damaged"
        ))
    })?;
    let committed = info
        .count(COMMITTED)
        .ok_or_else(|| damaged("committed count"))?;
    let generation = info
        .count(GENERATION)
        .ok_or_else(|| damaged("generation"))?;
    match info.get(FORMAT) {
        None => {}
        Some(rusqlite::types::Value::Integer(f)) if *f as u64 == FORMAT_VERSION && *f >= 0 => {}
        Some(other) => {
            return Err(Error::Corrupt(format!(
                "phenix table {name}: {name}_info names format {other:?}; this phenix reads format {FORMAT_VERSION} only"
            ))
            .into())
        }
    }
    if let Some(d) = info.text(DEFINITION) {
        if d != def.canonical() {
            return Err(Error::InvalidArgument(format!(
                "phenix table {name}: the declared columns `{}` differ from the stored definition `{d}`",
                def.canonical()
            ))
            .into());
        }
    }
    let others = shadow::tables_claiming(conn, schema, &id, name)?;
    if let Some(o) = others.first() {
        return Err(Error::Corrupt(format!(
            "phenix table {name}: its table id is also claimed by phenix table {o}; a table id must be unique in a database (a copied or crafted shadow table)"
        ))
        .into());
    }
    let store = match db_file(conn, schema)? {
        Some(db) => Arc::new(Mutex::new(open_file(
            conn,
            schema,
            name,
            &db,
            &Expected {
                table: name,
                id: &id,
                generation,
                committed,
                layout: Some(def.layout),
            },
        )?)),
        None => registry::memory_store(
            &(sidecar::memory_identity(conn, schema), id),
            generation,
            keep,
        )
        .ok_or_else(|| {
            Error::CantOpen(format!(
                "phenix table {name}: its vectors are not in this in-memory database (vectors of in-memory databases live in the process that made them, with that database: a copy made with the backup API or serialize/deserialize, or a database whose connections all closed, holds the table without them); DROP TABLE {name} removes it"
            ))
        })?,
    };
    Ok((id, committed, generation, store))
}

/// Opens the vector file `want` names, after telling a snapshot conflict apart from a missing file.
fn open_file(
    conn: &Connection,
    schema: &str,
    name: &str,
    db: &Path,
    want: &Expected<'_>,
) -> rusqlite::Result<VectorStore> {
    let generation = want.generation;
    let path = sidecar::checked_sidecar_path(db, want.id, generation)?;
    if std::fs::symlink_metadata(&path).is_err()
        && sidecar::newer_generation_exists(db, want.id, generation)
    {
        // A WAL reader whose snapshot predates a compaction that has since committed, and whose old
        // file the next writer already removed: like SQLite's own SQLITE_BUSY_SNAPSHOT, the caller
        // retries the read transaction and sees the new generation.
        return Err(Error::SnapshotConflict(format!(
            "phenix table {name}: this read transaction's snapshot names vector file generation {generation}, which a later compaction replaced; retry the transaction (busy)"
        ))
        .into());
    }
    let readonly = conn.is_readonly(schema)?;
    sidecar::open_vector_file(&path, want, !readonly).map_err(|e| table_err(name, e))
}
