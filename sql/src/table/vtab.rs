//! The `phenix` virtual table as rusqlite sees it: the trait implementations, each a call into the
//! module that owns the work, inside the one panic wrapper ([`catch_panic`]).
//!
//! Which SQL calls which method:
//! - `CREATE VIRTUAL TABLE` → `create`; first use in a connection → `connect`; `DROP TABLE` → `destroy`.
//! - `INSERT`/`UPDATE`/`DELETE` → `begin` (once per transaction), then `insert`/`update`/`delete`
//!   ([`super::write`]); `COMMIT` → `sync` then `commit`; `ROLLBACK` → `rollback` (the protocol is in
//!   `state/txn.rs`); `SAVEPOINT`/`RELEASE`/`ROLLBACK TO` → `xSavepoint`/`xRelease`/`xRollbackTo`
//!   (installed in [`super::register`]).
//! - `SELECT` → `best_index` ([`super::plan`]), `open`, `filter`, then `next`/`column`/`rowid` per row
//!   ([`super::cursor`]).

use super::cursor::PhenixCursor;
use super::names::{self, Key};
use super::prefilter::MetaCache;
use super::registry::{self, lock_state, SharedState};
use super::sidecar;
use super::state::{Failed, TableState};
use super::{plan, write};
use crate::args::utf8;
use crate::error::{catch_panic, sql_error};
use rusqlite::types::ValueRef;
use rusqlite::vtab::{
    sqlite3_vtab, Context, CreateVTab, Filters, IndexInfo, Inserts, TransactionVTab, UpdateVTab,
    Updates, VTab, VTabConfig, VTabConnection, VTabCursor, VTabKind,
};
use std::borrow::Cow;
use std::ffi::{c_int, CStr, CString};
use std::sync::{Arc, Mutex};

/// One phenix table, as SQLite sees it.
#[repr(C)]
pub(crate) struct PhenixTab {
    base: sqlite3_vtab,
    /// Shared with cursors and the process registry (`phenix_retrieve_all`, `phenix_check`).
    pub(crate) state: SharedState,
    key: Key,
    /// Metadata columns cached for KNN pre-filters (read path only).
    meta: Arc<Mutex<MetaCache>>,
}

impl PhenixTab {
    fn init(
        db: &mut VTabConnection,
        schema: &[u8],
        table: &[u8],
        args: &[&[u8]],
        create: bool,
        aux: Option<&registry::ConnStores>,
    ) -> rusqlite::Result<(Cow<'static, CStr>, Self)> {
        let schema = utf8(schema, "schema name")?.to_string();
        let name = utf8(table, "table name")?.to_string();
        let cols: Vec<&str> = args
            .iter()
            .map(|a| utf8(a, "column definition"))
            .collect::<rusqlite::Result<_>>()?;
        let def = super::schema::parse(&name, &cols).map_err(crate::error::Error::from)?;
        // SAFETY: the handle is the connection that is creating/connecting this table; the non-owning
        // `Connection` made from it never closes it and is dropped in xDisconnect/xDestroy, before
        // SQLite can close the database.
        let handle = unsafe { db.handle() };
        // SAFETY: as above.
        let conn = unsafe { rusqlite::Connection::from_handle(handle) }?;
        let decl = CString::new(def.declare(&name))
            .map_err(|_| sql_error("column name holds a NUL byte"))?;
        // Registered by `register`, so always present; a fresh map only if SQLite passed none.
        let keep = aux.cloned().unwrap_or_default();
        let st = if create {
            sidecar::collect_orphans(&conn, &schema, Some(&name))?;
            TableState::create(conn, &schema, &name, def, keep)?
        } else {
            TableState::connect(conn, &schema, &name, def, keep)?
        };
        db.config(VTabConfig::Innocuous)?;
        let key = names::key(handle as usize, &schema, &name);
        let state = Arc::new(Mutex::new(st));
        registry::register_state(key.clone(), &state);
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

    /// `xRename`.
    pub(crate) fn rename(&mut self, new: &str) -> rusqlite::Result<()> {
        lock_state(&self.state).rename(new)?;
        registry::unregister_state(&self.key);
        self.key = names::key(self.key.0, &self.key.1, new);
        registry::register_state(self.key.clone(), &self.state);
        Ok(())
    }
}

impl Drop for PhenixTab {
    fn drop(&mut self) {
        // xDisconnect/xDestroy: rusqlite's glue catches no unwind here.
        let _ = catch_panic("xDisconnect", || {
            registry::unregister_state(&self.key);
            Ok(())
        });
    }
}

// SAFETY: `PhenixTab` is `#[repr(C)]` with `sqlite3_vtab` as its first field, as rusqlite requires.
unsafe impl<'vtab> VTab<'vtab> for PhenixTab {
    type Aux = registry::ConnStores;
    type Cursor = PhenixCursor;

    fn connect(
        db: &mut VTabConnection,
        aux: Option<&registry::ConnStores>,
        _module: &[u8],
        schema: &[u8],
        table: &[u8],
        args: &[&[u8]],
    ) -> rusqlite::Result<(Cow<'static, CStr>, Self)> {
        catch_panic("xConnect", || {
            Self::init(db, schema, table, args, false, aux)
        })
    }

    fn best_index(&self, info: &mut IndexInfo) -> rusqlite::Result<bool> {
        catch_panic("xBestIndex", || {
            let def = lock_state(&self.state).def().clone();
            plan::best_index(&def, info)
        })
    }

    fn open(&'vtab mut self) -> rusqlite::Result<PhenixCursor> {
        catch_panic("xOpen", || {
            Ok(PhenixCursor::new(self.state.clone(), self.meta.clone()))
        })
    }
}

impl CreateVTab<'_> for PhenixTab {
    const KIND: VTabKind = VTabKind::Default;

    fn create(
        db: &mut VTabConnection,
        aux: Option<&registry::ConnStores>,
        _module: &[u8],
        schema: &[u8],
        table: &[u8],
        args: &[&[u8]],
    ) -> rusqlite::Result<(Cow<'static, CStr>, Self)> {
        catch_panic("xCreate", || Self::init(db, schema, table, args, true, aux))
    }

    fn destroy(&self) -> rusqlite::Result<()> {
        catch_panic("xDestroy", || lock_state(&self.state).destroy())
    }
}

impl UpdateVTab<'_> for PhenixTab {
    fn delete(&mut self, arg: ValueRef<'_>) -> rusqlite::Result<()> {
        catch_panic("xUpdate (DELETE)", || write::delete(&self.state, arg))
    }

    fn insert(&mut self, args: &Inserts<'_>) -> rusqlite::Result<i64> {
        catch_panic("xUpdate (INSERT)", || write::insert(&self.state, args))
    }

    fn update(&mut self, args: &Updates<'_>) -> rusqlite::Result<()> {
        catch_panic("xUpdate (UPDATE)", || write::update(&self.state, args))
    }
}

impl TransactionVTab<'_> for PhenixTab {
    fn begin(&mut self) -> rusqlite::Result<()> {
        catch_panic("xBegin", || Ok(()))
    }
    fn sync(&mut self) -> rusqlite::Result<()> {
        catch_panic("xSync", || lock_state(&self.state).sync())
    }
    // SQLite ignores what xCommit and xRollback return: on an error or a panic part-way, the state is
    // made consistent with what SQLite committed (`TableState::recover`).
    fn commit(&mut self) -> rusqlite::Result<()> {
        let r = catch_panic("xCommit", || lock_state(&self.state).commit());
        if r.is_err() {
            recover(&self.state, Failed::Commit);
        }
        r
    }
    fn rollback(&mut self) -> rusqlite::Result<()> {
        let r = catch_panic("xRollback", || lock_state(&self.state).rollback());
        if r.is_err() {
            recover(&self.state, Failed::Rollback);
        }
        r
    }
}

/// Runs [`TableState::recover`] after `failed` (itself panic-free, but inside the wrapper all the same).
/// A panic part-way poisoned the state's lock; the state is consistent again, so the poison goes too
/// (`phenix_check` would otherwise report the table as in use).
pub(crate) fn recover(state: &SharedState, failed: Failed) {
    let _ = catch_panic("recovery of a failed transaction hook", || {
        lock_state(state).recover(failed);
        state.clear_poison();
        Ok(())
    });
}

// SAFETY: `PhenixCursor` is `#[repr(C)]` with `sqlite3_vtab_cursor` as its first field.
unsafe impl VTabCursor for PhenixCursor {
    fn filter(
        &mut self,
        idx_num: c_int,
        idx_str: Option<&str>,
        args: &Filters<'_>,
    ) -> rusqlite::Result<()> {
        catch_panic("xFilter", || {
            PhenixCursor::filter(self, idx_num, idx_str.unwrap_or(""), args)
        })
    }

    fn next(&mut self) -> rusqlite::Result<()> {
        catch_panic("xNext", || {
            PhenixCursor::next(self);
            Ok(())
        })
    }

    fn eof(&self) -> bool {
        // No Result to report through: a panic here would abort, so nothing that can panic runs here.
        PhenixCursor::eof(self)
    }

    fn column(&self, ctx: &mut Context, i: c_int) -> rusqlite::Result<()> {
        catch_panic("xColumn", || PhenixCursor::column(self, ctx, i))
    }

    fn rowid(&self) -> rusqlite::Result<i64> {
        catch_panic("xRowid", || PhenixCursor::rowid(self))
    }
}
