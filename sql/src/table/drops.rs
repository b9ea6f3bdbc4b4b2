//! Freeing the vectors of a dropped in-memory table when its `DROP TABLE` commits.
//!
//! The vectors of an in-memory phenix table live in this process, held by the connection's
//! [`ConnStores`]. `DROP TABLE` inside a transaction cannot free them at xDestroy: a `ROLLBACK` (or
//! `ROLLBACK TO` a savepoint opened before the drop) brings the table back, and it reconnects to the
//! same vectors. SQLite tells a virtual table of its transaction's end only through xCommit and
//! xRollback of the virtual tables written in it, and the dropped table is gone by then; the commit and
//! rollback hooks have one slot per connection, which the host owns.
//!
//! So xDestroy hands the table's key to the eponymous virtual table `phenix_drop_watch` with a one-row
//! `INSERT` (a nested statement, as the shadow-table drops are): that enrols the watch in the
//! transaction. It remembers the key with the savepoint level of the drop; a `ROLLBACK TO` below that
//! level or a `ROLLBACK` forgets it (the table is back, with its vectors), and xCommit releases the
//! connection's hold on the vectors, which frees them unless another connection of a shared cache
//! still has the table open.
//!
//! The `INSERT` takes a write transaction on `main` (SQLite begins one on the schema of the table
//! written, and an eponymous table is in `main`). When `main` is a file that this transaction has not
//! written, the watch is not used (it would lock the file for a drop of a temp table); the vectors are
//! then freed when the connection closes, as they are if the `INSERT` fails.

use super::registry::{self, ConnStores, MemKey};
use super::sidecar::db_file;
use crate::error::catch_panic;
use rusqlite::ffi;
use rusqlite::types::ValueRef;
use rusqlite::vtab::{
    sqlite3_vtab, sqlite3_vtab_cursor, Context, CreateVTab, Filters, IndexInfo, Inserts, Module,
    TransactionVTab, UpdateVTab, Updates, VTab, VTabConfig, VTabConnection, VTabCursor, VTabKind,
};
use rusqlite::Connection;
use std::borrow::Cow;
use std::cell::Cell;
use std::ffi::{c_int, CStr};

/// The SQL name of the watch (an eponymous table: no `CREATE` needed, one per connection).
const NAME: &str = "phenix_drop_watch";

thread_local! {
    /// The key xDestroy hands to the watch's xUpdate (the nested `INSERT` runs on this thread); an
    /// `INSERT` by anyone else finds nothing here and does nothing.
    static HANDOFF: Cell<Option<MemKey>> = const { Cell::new(None) };
}

/// Called by xDestroy of in-memory table `key`: its vectors are released when the drop commits.
/// Returns false if the watch could not take the key (see the module docs); the caller then falls back
/// to releasing at once in autocommit mode, or at connection close.
pub(crate) fn release_at_commit(conn: &Connection, key: MemKey) -> bool {
    let main_is_file = !matches!(db_file(conn, "main"), Ok(None));
    // SAFETY: the handle is the live connection this table is being destroyed on; the name is a
    // NUL-terminated literal.
    let writing_main =
        unsafe { ffi::sqlite3_txn_state(conn.handle(), c"main".as_ptr()) } == ffi::SQLITE_TXN_WRITE;
    if main_is_file && !writing_main {
        return false;
    }
    HANDOFF.with(|h| h.set(Some(key)));
    let r = conn.execute(&format!("INSERT INTO main.{NAME} VALUES (NULL)"), []);
    let taken = HANDOFF.with(|h| h.take()).is_none();
    r.is_ok() && taken
}

/// The watch: the connection's stores, the drops of the current transaction with the savepoint level
/// each was made at (-1: outside every savepoint SQLite counts), and the level now.
#[repr(C)]
pub(crate) struct DropWatch {
    base: sqlite3_vtab,
    stores: ConnStores,
    level: c_int,
    pending: Vec<(c_int, MemKey)>,
}

impl DropWatch {
    /// `xSavepoint(i)`: savepoint `i` opens; drops from now on are at level `i`.
    fn savepoint(&mut self, i: c_int) {
        self.release(i);
        self.level = i;
    }
    /// `xRelease(i)`: savepoints `>= i` are gone; their drops belong to the enclosing level.
    fn release(&mut self, i: c_int) {
        for (l, _) in &mut self.pending {
            if *l >= i {
                *l = i - 1;
            }
        }
        self.level = self.level.min(i - 1);
    }
    /// `xRollbackTo(i)`: everything since savepoint `i` opened is undone, drops included; `i` stays.
    fn rollback_to(&mut self, i: c_int) {
        self.pending.retain(|(l, _)| *l < i);
        self.level = i;
    }
}

/// The watch holds no rows.
#[repr(C)]
pub(crate) struct NoRows {
    base: sqlite3_vtab_cursor,
}

// SAFETY: `DropWatch` is `#[repr(C)]` with `sqlite3_vtab` as its first field.
unsafe impl<'vtab> VTab<'vtab> for DropWatch {
    type Aux = ConnStores;
    type Cursor = NoRows;

    fn connect(
        db: &mut VTabConnection,
        aux: Option<&ConnStores>,
        _module: &[u8],
        _schema: &[u8],
        _table: &[u8],
        _args: &[&[u8]],
    ) -> rusqlite::Result<(Cow<'static, CStr>, Self)> {
        catch_panic(NAME, || {
            db.config(VTabConfig::DirectOnly)?;
            Ok((
                Cow::Borrowed(c"CREATE TABLE x(k)"),
                DropWatch {
                    base: sqlite3_vtab::default(),
                    stores: aux.cloned().unwrap_or_default(),
                    level: -1,
                    pending: Vec::new(),
                },
            ))
        })
    }

    fn best_index(&self, info: &mut IndexInfo) -> rusqlite::Result<bool> {
        info.set_estimated_cost(1.0);
        info.set_estimated_rows(1);
        Ok(true)
    }

    fn open(&'vtab mut self) -> rusqlite::Result<NoRows> {
        Ok(NoRows {
            base: sqlite3_vtab_cursor::default(),
        })
    }
}

impl CreateVTab<'_> for DropWatch {
    const KIND: VTabKind = VTabKind::Eponymous;
}

impl UpdateVTab<'_> for DropWatch {
    fn delete(&mut self, _arg: ValueRef<'_>) -> rusqlite::Result<()> {
        Ok(())
    }
    fn insert(&mut self, _args: &Inserts<'_>) -> rusqlite::Result<i64> {
        catch_panic(NAME, || {
            if let Some(key) = HANDOFF.with(|h| h.take()) {
                self.pending.push((self.level, key));
            }
            Ok(0)
        })
    }
    fn update(&mut self, _args: &Updates<'_>) -> rusqlite::Result<()> {
        Ok(())
    }
}

impl TransactionVTab<'_> for DropWatch {
    fn begin(&mut self) -> rusqlite::Result<()> {
        self.level = -1;
        self.pending.clear();
        Ok(())
    }
    fn sync(&mut self) -> rusqlite::Result<()> {
        Ok(())
    }
    fn commit(&mut self) -> rusqlite::Result<()> {
        catch_panic(NAME, || {
            for (_, key) in self.pending.drain(..) {
                registry::release_memory_store(&key, &self.stores);
            }
            Ok(())
        })
    }
    fn rollback(&mut self) -> rusqlite::Result<()> {
        self.pending.clear();
        Ok(())
    }
}

// SAFETY: `NoRows` is `#[repr(C)]` with `sqlite3_vtab_cursor` as its first field.
unsafe impl VTabCursor for NoRows {
    fn filter(&mut self, _n: c_int, _s: Option<&str>, _a: &Filters<'_>) -> rusqlite::Result<()> {
        Ok(())
    }
    fn next(&mut self) -> rusqlite::Result<()> {
        Ok(())
    }
    fn eof(&self) -> bool {
        true
    }
    fn column(&self, _ctx: &mut Context, _i: c_int) -> rusqlite::Result<()> {
        Ok(())
    }
    fn rowid(&self) -> rusqlite::Result<i64> {
        Ok(0)
    }
}

/// Runs `f` on the watch behind `vt` (no panic can come from these field updates).
///
/// # Safety
/// `vt` must be a `DropWatch`: the hooks calling this are installed only in [`WATCH`].
unsafe fn with_watch(vt: *mut ffi::sqlite3_vtab, f: impl FnOnce(&mut DropWatch)) -> c_int {
    // SAFETY: every sqlite3_vtab of this module is the first field of a `#[repr(C)] DropWatch`.
    f(unsafe { &mut *(vt as *mut DropWatch) });
    ffi::SQLITE_OK
}

unsafe extern "C" fn x_savepoint(vt: *mut ffi::sqlite3_vtab, i: c_int) -> c_int {
    // SAFETY: installed only in WATCH.
    unsafe { with_watch(vt, |w| w.savepoint(i)) }
}

unsafe extern "C" fn x_release(vt: *mut ffi::sqlite3_vtab, i: c_int) -> c_int {
    // SAFETY: installed only in WATCH.
    unsafe { with_watch(vt, |w| w.release(i)) }
}

unsafe extern "C" fn x_rollback_to(vt: *mut ffi::sqlite3_vtab, i: c_int) -> c_int {
    // SAFETY: installed only in WATCH.
    unsafe { with_watch(vt, |w| w.rollback_to(i)) }
}

/// The watch module: rusqlite's transactional module plus the savepoint hooks (module version 2).
static WATCH: ffi::sqlite3_module = {
    let m: Module<'static, DropWatch> = Module::update_module_with_tx();
    // SAFETY: `Module` is `#[repr(transparent)]` over `ffi::sqlite3_module`.
    let mut base: ffi::sqlite3_module = unsafe { std::mem::transmute(m) };
    base.iVersion = 2;
    base.xSavepoint = Some(x_savepoint);
    base.xRelease = Some(x_release);
    base.xRollbackTo = Some(x_rollback_to);
    base
};

/// Registers `phenix_drop_watch` on `conn`, sharing the connection's in-memory stores.
pub(crate) fn register(conn: &Connection, stores: &ConnStores) -> rusqlite::Result<()> {
    // SAFETY: `Module` is `#[repr(transparent)]` over `ffi::sqlite3_module`, so the reference casts; the
    // static lives for the whole program.
    let module: &'static Module<'static, DropWatch> =
        unsafe { &*(&WATCH as *const ffi::sqlite3_module as *const Module<'static, DropWatch>) };
    conn.create_module(NAME, module, Some(stores.clone()))
}
