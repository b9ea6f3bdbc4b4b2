//! One implementation of SQLite's eponymous table-valued functions for phenix: a [`TableFunction`]
//! says which columns it declares, which hidden columns are its arguments and how to compute its
//! rows; [`Tvf`] does the rest (argument planning in xBestIndex, materialised rows, panics caught).
//!
//! Register one with a `const` module in the caller, which makes the `&'static` SQLite needs:
//!
//! ```text
//! const M: Module<'static, Tvf<MyFn>> = Module::eponymous_only_module();
//! conn.create_module("my_fn", &M, None)?;
//! ```

use crate::error::catch_panic;
use rusqlite::types::{Value, ValueRef};
use rusqlite::vtab::{
    sqlite3_vtab, sqlite3_vtab_cursor, Context, Filters, IndexConstraintOp, IndexInfo, VTab,
    VTabConfig, VTabConnection, VTabCursor,
};
use rusqlite::Connection;
use std::borrow::Cow;
use std::ffi::{c_int, CStr};
use std::marker::PhantomData;

/// A table-valued function whose rows are computed at once from its arguments.
pub trait TableFunction: 'static {
    /// The SQL name, for messages.
    const NAME: &'static str;
    /// The declared schema: visible columns, then the hidden argument columns.
    const DECL: &'static CStr;
    /// Number of visible columns (the arguments are the hidden columns after them, in order).
    const VISIBLE: c_int;
    /// Number of arguments; all are required (`name(a, b, ...)`).
    const ARGS: c_int;
    /// Whether the function may only be called from top-level SQL (not views or triggers).
    const DIRECT_ONLY: bool = false;
    /// The planner's cost of one call. Every call recomputes all rows, so a function that does real
    /// work must say so, or SQLite puts it in the inner loop of a join and reruns it per outer row.
    const COST: f64 = 1e6;
    /// The planner's row estimate of one call.
    const ROWS: i64 = 1000;
    /// The rows for `args` (one value per visible column each), run on the calling connection.
    fn rows(conn: &Connection, args: &[ValueRef<'_>]) -> rusqlite::Result<Vec<Vec<Value>>>;
}

/// xBestIndex of a table-valued function whose `args` arguments are the hidden columns after its
/// `visible` columns, all required: binds each `=` constraint on them to `argv[1..=args]` in column
/// order (omitted from SQLite's re-check) and sets the plan's cost and row estimate. Returns false
/// (the plan is unusable) when an argument has no `=` constraint or an unusable one, so SQLite picks a
/// plan that supplies them all.
pub(crate) fn bind_arguments(
    info: &mut IndexInfo,
    visible: c_int,
    args: c_int,
    cost: f64,
    rows: i64,
) -> bool {
    let mut slots = vec![None; args as usize];
    for (i, c) in info.constraints().enumerate() {
        let arg = c.column() - visible;
        if (0..args).contains(&arg) && c.operator() == IndexConstraintOp::SQLITE_INDEX_CONSTRAINT_EQ
        {
            if !c.is_usable() {
                return false;
            }
            slots[arg as usize] = Some(i);
        }
    }
    let Some(slots) = slots.into_iter().collect::<Option<Vec<usize>>>() else {
        return false;
    };
    for (n, i) in (1..).zip(slots) {
        let mut u = info.constraint_usage(i);
        u.set_argv_index(n);
        u.set_omit(true);
    }
    info.set_estimated_cost(cost);
    info.set_estimated_rows(rows);
    true
}

/// The virtual table of a [`TableFunction`].
#[repr(C)]
pub struct Tvf<F: TableFunction> {
    base: sqlite3_vtab,
    /// A non-owning connection on the handle SQLite connected this table to.
    conn: Connection,
    f: PhantomData<F>,
}

/// Its cursor over materialised rows. It borrows the table's connection: SQLite closes every cursor
/// of a table before it disconnects the table (rusqlite ties the cursor's lifetime to the table's
/// `open(&'vtab mut self)` borrow), so no raw pointer is needed.
#[repr(C)]
pub struct TvfCursor<'vtab, F: TableFunction> {
    base: sqlite3_vtab_cursor,
    conn: &'vtab Connection,
    rows: Vec<Vec<Value>>,
    pos: usize,
    f: PhantomData<F>,
}

// SAFETY: `Tvf` is `#[repr(C)]` with `sqlite3_vtab` as its first field.
unsafe impl<'vtab, F: TableFunction> VTab<'vtab> for Tvf<F> {
    type Aux = ();
    type Cursor = TvfCursor<'vtab, F>;

    fn connect(
        db: &mut VTabConnection,
        _aux: Option<&()>,
        _module: &[u8],
        _schema: &[u8],
        _table: &[u8],
        _args: &[&[u8]],
    ) -> rusqlite::Result<(Cow<'static, CStr>, Self)> {
        catch_panic(F::NAME, || {
            if F::DIRECT_ONLY {
                db.config(VTabConfig::DirectOnly)?;
            } else {
                db.config(VTabConfig::Innocuous)?;
            }
            // SAFETY: the wrapper never closes the handle and is dropped with this table, before
            // SQLite closes the connection.
            let conn = unsafe { Connection::from_handle(db.handle()) }?;
            Ok((
                Cow::Borrowed(F::DECL),
                Tvf {
                    base: sqlite3_vtab::default(),
                    conn,
                    f: PhantomData,
                },
            ))
        })
    }

    fn best_index(&self, info: &mut IndexInfo) -> rusqlite::Result<bool> {
        catch_panic(F::NAME, || {
            Ok(bind_arguments(info, F::VISIBLE, F::ARGS, F::COST, F::ROWS))
        })
    }

    fn open(&'vtab mut self) -> rusqlite::Result<TvfCursor<'vtab, F>> {
        catch_panic(F::NAME, || {
            Ok(TvfCursor {
                base: sqlite3_vtab_cursor::default(),
                conn: &self.conn,
                rows: Vec::new(),
                pos: 0,
                f: PhantomData,
            })
        })
    }
}

// SAFETY: `TvfCursor` is `#[repr(C)]` with `sqlite3_vtab_cursor` as its first field.
unsafe impl<F: TableFunction> VTabCursor for TvfCursor<'_, F> {
    fn filter(&mut self, _n: c_int, _s: Option<&str>, args: &Filters<'_>) -> rusqlite::Result<()> {
        catch_panic(F::NAME, || {
            let vals: Vec<ValueRef<'_>> = args.iter().collect();
            self.rows = F::rows(self.conn, &vals)?;
            self.pos = 0;
            Ok(())
        })
    }
    fn next(&mut self) -> rusqlite::Result<()> {
        catch_panic(F::NAME, || {
            self.pos += 1;
            Ok(())
        })
    }
    fn eof(&self) -> bool {
        self.pos >= self.rows.len()
    }
    fn column(&self, ctx: &mut Context, i: c_int) -> rusqlite::Result<()> {
        catch_panic(F::NAME, || {
            let v = self.rows.get(self.pos).and_then(|r| r.get(i as usize));
            ctx.set_result(v.unwrap_or(&Value::Null))
        })
    }
    fn rowid(&self) -> rusqlite::Result<i64> {
        catch_panic(F::NAME, || Ok(self.pos as i64 + 1))
    }
}
