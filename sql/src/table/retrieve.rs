//! `phenix_retrieve(table, query, k)` (table-valued → rowid, rank, distance; scalar → JSON) and
//! `phenix_retrieve_all(target_table, query_table, k)` (every vector of one table against another through
//! the batched GEMM path → query_rowid, rowid, rank, distance). The queries are a phenix table, or any
//! table or view with a vector column, named `'name(vector_column)'` or `'name(id_column,
//! vector_column)'`; because it can read any table, `phenix_retrieve_all` is `SQLITE_DIRECTONLY`.
//!
//! On a table with a built IVF index both use it with the table's default `nprobe` (the declaration's
//! `nprobe=`, else 1/16 of the lists): `phenix_retrieve` runs the table's MATCH, `phenix_retrieve_all`
//! searches the index once per query vector. Distances are exact (re-ranked on the stored rows).

use super::names::{self, qualified, split_name};
use super::rank;
use super::registry::{self, lock_state, search_threads, SharedState};
use crate::args::{owned, positive_k, text_arg};
use crate::error::{create_scalar, sql_error, Error};
use crate::tvf::{TableFunction, Tvf};
use phenix_core::batch::search_batch;
use phenix_core::ivf::IvfSearch;
use phenix_core::topk::{Candidates, SearchParams};
use rusqlite::functions::FunctionFlags;
use rusqlite::types::{Value, ValueRef};
use rusqlite::vtab::Module;
use rusqlite::Connection;
use std::ffi::{c_int, CStr};

/// Finds the state of phenix table `name` on `conn`, connecting it if needed.
pub(crate) fn table_state(
    conn: &Connection,
    fname: &str,
    name: &str,
) -> rusqlite::Result<SharedState> {
    let (schema, table) = split_name(name);
    // Preparing a statement on the table makes SQLite connect it in this connection.
    conn.prepare(&format!(
        "SELECT rowid FROM {} LIMIT 0",
        qualified(&schema, &table)
    ))
    .map_err(|e| sql_error(format!("{fname}: no table {name}: {e}")))?;
    // SAFETY: only the handle's address is used, as a registry key.
    let db = unsafe { conn.handle() } as usize;
    registry::lookup_state(&names::key(db, &schema, &table))
        .ok_or_else(|| sql_error(format!("{fname}: {name} is not a phenix table")))
}

/// The KNN rows of one query: (rowid, distance), ascending.
fn retrieve(
    conn: &Connection,
    table: &str,
    query: ValueRef<'_>,
    k: usize,
) -> rusqlite::Result<Vec<(i64, f64)>> {
    let st = table_state(conn, "phenix_retrieve", table)?;
    let (schema, name, vector) = {
        let s = lock_state(&st);
        (
            s.schema().to_string(),
            s.name().to_string(),
            s.def().vector.clone(),
        )
    };
    drop(st);
    let sql = format!(
        "SELECT rowid, distance FROM {} WHERE \"{}\" MATCH ?1 AND k = ?2",
        qualified(&schema, &name),
        vector.replace('"', "\"\"")
    );
    let mut stmt = conn.prepare(&sql)?;
    let q: Value = owned(query).map_err(|e| {
        sql_error(format!(
            "phenix_retrieve: query: {}",
            e.to_string().trim_start_matches("phenix: ")
        ))
    })?;
    let rows = stmt
        .query_map(rusqlite::params![q, k as i64], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(rows)
}

/// Registers the functions.
pub(crate) fn register(conn: &Connection) -> rusqlite::Result<()> {
    const RETRIEVE: Module<'static, Tvf<RetrieveFn>> = Module::eponymous_only_module();
    const RETRIEVE_ALL: Module<'static, Tvf<RetrieveAllFn>> = Module::eponymous_only_module();
    conn.create_module("phenix_retrieve", &RETRIEVE, None)?;
    conn.create_module("phenix_retrieve_all", &RETRIEVE_ALL, None)?;
    create_scalar(
        conn,
        "phenix_retrieve",
        3,
        FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_INNOCUOUS,
        |ctx| {
            let table = text_arg(ctx.get_raw(0), "phenix_retrieve", "argument 1 (table name)")?;
            let k = positive_k(ctx.get_raw(2), "phenix_retrieve: k")?;
            // SAFETY: the connection is only used for the duration of this call, on its own thread.
            let conn = unsafe { ctx.get_connection() }?;
            let rows = retrieve(&conn, table, ctx.get_raw(1), k)?;
            let json: Vec<serde_json::Value> = rows
                .into_iter()
                .map(|(r, d)| serde_json::json!({"rowid": r, "distance": d}))
                .collect();
            Ok(serde_json::Value::Array(json).to_string())
        },
    )
}

/// `phenix_retrieve(table, query, k)` as a table: `(rowid, rank, distance)`.
pub struct RetrieveFn;

impl TableFunction for RetrieveFn {
    const NAME: &'static str = "phenix_retrieve";
    const DECL: &'static CStr =
        c"CREATE TABLE x(rowid INTEGER, rank INTEGER, distance REAL, tbl HIDDEN, query HIDDEN, k HIDDEN)";
    const VISIBLE: c_int = 3;
    const ARGS: c_int = 3;
    fn rows(conn: &Connection, args: &[ValueRef<'_>]) -> rusqlite::Result<Vec<Vec<Value>>> {
        let f = Self::NAME;
        let table = text_arg(args[0], f, "argument 1 (table name)")?;
        let k = positive_k(args[2], &format!("{f}: k"))?;
        Ok(retrieve(conn, table, args[1], k)?
            .into_iter()
            .zip(1..)
            .map(|((r, d), rank)| vec![Value::Integer(r), Value::Integer(rank), Value::Real(d)])
            .collect())
    }
}

/// `phenix_retrieve_all(target_table, query_table, k)`: `(query_rowid, rowid, rank, distance)`.
pub struct RetrieveAllFn;

impl TableFunction for RetrieveAllFn {
    const NAME: &'static str = "phenix_retrieve_all";
    const DECL: &'static CStr = c"CREATE TABLE x(query_rowid INTEGER, rowid INTEGER, rank INTEGER, distance REAL, target_table HIDDEN, query_table HIDDEN, k HIDDEN)";
    const VISIBLE: c_int = 4;
    const ARGS: c_int = 3;
    // It reads any table or view named in its arguments (not only phenix tables).
    const DIRECT_ONLY: bool = true;
    fn rows(conn: &Connection, args: &[ValueRef<'_>]) -> rusqlite::Result<Vec<Vec<Value>>> {
        let f = Self::NAME;
        let target = text_arg(args[0], f, "target_table")?;
        let queries = text_arg(args[1], f, "query_table")?;
        let k = positive_k(args[2], &format!("{f}: k"))?;
        Ok(retrieve_all(conn, target, queries, k)?
            .into_iter()
            .map(|(q, r, rank, d)| {
                vec![
                    Value::Integer(q),
                    Value::Integer(r),
                    Value::Integer(rank),
                    Value::Real(d),
                ]
            })
            .collect())
    }
}

/// Every live vector of `qt` against `tt`: (query_rowid, rowid, rank, distance).
fn retrieve_all(
    conn: &Connection,
    target: &str,
    queries: &str,
    k: usize,
) -> rusqlite::Result<Vec<(i64, i64, i64, f64)>> {
    let f = "phenix_retrieve_all";
    let tt = table_state(conn, f, target)?;
    if let Some(src) = QuerySource::parse(queries) {
        let dim = lock_state(&tt).def().layout.dim();
        let (qrowids, qvecs) = src.read(conn, dim)?;
        return search_all(conn, f, &tt, target, queries, &qrowids, &qvecs, dim, k);
    }
    let qt = table_state(conn, f, queries)?;
    // Read the queries (and release that table before locking the target, which may be the same one).
    let (qrowids, qvecs, qdim) = {
        let mut q = lock_state(&qt);
        q.refresh_for_read()?;
        let live = q
            .live()
            .ok_or_else(|| Error::Internal("live set not loaded".into()))?;
        let pairs = live.by_rowid();
        if live.is_mapped() {
            // Query row ids from the row-id file, checked against `<t>_rows` like result rows.
            for &(rowid, slot) in &pairs {
                q.check_result_row(rowid, slot as u64)?;
            }
        }
        let dim = q.def().layout.dim();
        let n = q.visible_rows();
        let mut store = q.store();
        let view = store
            .view(n)
            .map_err(|e| Error::store(format!("{f}: "), e))?;
        let mut vecs = Vec::with_capacity(pairs.len() * dim);
        for &(_, s) in &pairs {
            vecs.extend(view.row(s).to_f32());
        }
        (
            pairs.into_iter().map(|p| p.0).collect::<Vec<_>>(),
            vecs,
            dim,
        )
    };
    search_all(conn, f, &tt, target, queries, &qrowids, &qvecs, qdim, k)
}

/// Queries read from an ordinary table or view: `name(vector)` or `name(id, vector)`.
struct QuerySource {
    schema: String,
    table: String,
    id: Option<String>,
    vector: String,
}

impl QuerySource {
    /// `None` when `spec` has no column list (a phenix table).
    fn parse(spec: &str) -> Option<QuerySource> {
        let spec = spec.trim();
        let open = spec.find('(')?;
        let inner = spec[open + 1..].strip_suffix(')')?;
        let cols: Vec<String> = inner.split(',').map(|c| c.trim().to_string()).collect();
        let (id, vector) = match cols.as_slice() {
            [v] if !v.is_empty() => (None, v.clone()),
            [i, v] if !i.is_empty() && !v.is_empty() => (Some(i.clone()), v.clone()),
            _ => return None,
        };
        let (schema, table) = split_name(spec[..open].trim());
        Some(QuerySource {
            schema,
            table,
            id,
            vector,
        })
    }

    /// The (id, vector) rows; vectors are JSON text, float32 blobs or float16 blobs of `dim` elements.
    fn read(&self, conn: &Connection, dim: usize) -> rusqlite::Result<(Vec<i64>, Vec<f32>)> {
        let f = "phenix_retrieve_all";
        let q = |c: &str| format!("\"{}\"", c.replace('"', "\"\""));
        let id = self.id.as_deref().map_or("rowid".to_string(), q);
        let from = qualified(&self.schema, &self.table);
        // A double-quoted name that is no column would silently be a string literal: check first.
        let cols: Vec<String> = conn
            .prepare("SELECT name FROM pragma_table_info(?1, ?2)")?
            .query_map([&self.table, &self.schema], |r| r.get::<_, String>(0))?
            .collect::<rusqlite::Result<_>>()?;
        if cols.is_empty() {
            return Err(sql_error(format!(
                "{f}: no table or view {}.{}",
                self.schema, self.table
            )));
        }
        for c in self.id.iter().chain(std::iter::once(&self.vector)) {
            if !cols.iter().any(|x| x.eq_ignore_ascii_case(c)) {
                return Err(sql_error(format!(
                    "{f}: cannot read queries {}.{}: no column {c} (columns: {})",
                    self.schema,
                    self.table,
                    cols.join(", ")
                )));
            }
        }
        let sql = format!("SELECT {id}, {} FROM {from}", q(&self.vector));
        let mut st = conn.prepare(&sql).map_err(|e| {
            sql_error(format!(
                "{f}: cannot read queries {}.{}({}{}): {e}{}",
                self.schema,
                self.table,
                self.id
                    .as_deref()
                    .map_or(String::new(), |i| format!("{i}, ")),
                self.vector,
                if self.id.is_none() {
                    " (a view has no rowid: name its id column, 'view(id, vector)')"
                } else {
                    ""
                }
            ))
        })?;
        let mut rows = st.query([])?;
        let (mut ids, mut vecs) = (Vec::new(), Vec::new());
        while let Some(r) = rows.next()? {
            let idv = match r.get_ref(0)? {
                ValueRef::Integer(i) => i,
                other => {
                    return Err(sql_error(format!(
                        "{f}: query id column {} holds {} in row {}; ids must be integers{}",
                        self.id.as_deref().unwrap_or("rowid"),
                        crate::analysis::type_name(other),
                        ids.len() + 1,
                        if self.id.is_none() {
                            " (a view has no rowid: name its id column, 'view(id, vector)')"
                        } else {
                            ""
                        }
                    )))
                }
            };
            let what = format!("query {idv}, column {}", self.vector);
            let v = crate::vector::parse_vector(
                r.get_ref(1)?,
                &what,
                Some((dim, phenix_core::ElemType::F32)),
            )?;
            ids.push(idv);
            vecs.extend_from_slice(&v);
        }
        Ok((ids, vecs))
    }
}

/// Top-k of every query vector in the target table.
///
/// Progress (`retrieve_all`) counts the target's rows during the batched scan, then one unit per query
/// ranked; an interrupt stops the scan at its next block of rows and the ranking at its next query.
#[allow(clippy::too_many_arguments)]
fn search_all(
    conn: &Connection,
    f: &str,
    tt: &SharedState,
    target: &str,
    queries: &str,
    qrowids: &[i64],
    qvecs: &[f32],
    qdim: usize,
    k: usize,
) -> rusqlite::Result<Vec<(i64, i64, i64, f64)>> {
    let mut t = lock_state(tt);
    if t.def().layout.dim() != qdim {
        return Err(sql_error(format!(
            "{f}: {queries} holds {qdim}-dimensional vectors but {target} holds {}",
            t.def().layout.dim()
        )));
    }
    t.refresh_for_read()?;
    t.prepare_index()?;
    let n = t.visible_rows();
    let threads = search_threads();
    let live = t
        .live()
        .ok_or_else(|| Error::Internal("live set not loaded".into()))?;
    let mut store = t.store();
    let view = store
        .view(n)
        .map_err(|e| Error::store(format!("{f}: "), e))?;
    // SAFETY: only the handle's address is used (to read its interrupt flag).
    let db = unsafe { conn.handle() };
    let op = crate::control::Op::begin(db, "retrieve_all", n + qrowids.len() as u64);
    if let Some(idx) = t.ivf() {
        // The table's IVF index, one query at a time with the table's default nprobe (as MATCH
        // without `nprobe =`), re-ranked exactly; ties by rowid.
        let mut p = IvfSearch::new(k, t.default_nprobe());
        p.candidates = Some(live.bitmap());
        p.threads = threads;
        let metric = view.layout().metric();
        let mut out = Vec::new();
        for (qi, q) in qvecs.chunks(qdim.max(1)).enumerate() {
            let hits = rank::ivf_search(&view, idx, q, metric, k, p)
                .map_err(|e| Error::store(format!("{f}: "), e))?;
            let mut rows: Vec<(i64, u64, f64)> = if hits.iter().any(|h| !h.distance.is_finite()) {
                let req = rank::Request {
                    query: q,
                    candidates: Candidates::Bitmap(live.bitmap()),
                    k,
                    bound: None,
                    threads,
                };
                rank::rank(&view, &req, |s| live.rowid(s))
                    .map_err(|e| Error::store(format!("{f}: "), e))?
            } else {
                hits.into_iter()
                    .filter_map(|h| Some((live.rowid(h.slot)?, h.slot, h.distance as f64)))
                    .collect()
            };
            rows.sort_by(|a, b| a.2.total_cmp(&b.2).then(a.0.cmp(&b.0)));
            rows.truncate(k);
            emit(&t, live.is_mapped(), qrowids[qi], rows, &mut out)?;
            // Interruptible between queries (one query's probe is short).
            op.step(1)?;
        }
        op.finish();
        return Ok(out);
    }
    let hits = {
        // One row more than asked, to see whether the k-th distance is (nearly) shared.
        let mut p = SearchParams::new(k.saturating_add(1));
        p.candidates = Candidates::Bitmap(live.bitmap());
        p.threads = threads;
        p.control = Some(op.control());
        // Each query scaled as MATCH scales it (cosine: by its largest magnitude), so the batch
        // scores the same vectors MATCH and the exact re-rank below do.
        let metric = view.layout().metric();
        let scaled: Vec<f32> = if qdim == 0 {
            qvecs.to_vec()
        } else {
            qvecs
                .chunks(qdim)
                .flat_map(|q| rank::scaled_query(q, metric))
                .collect()
        };
        search_batch(&view, &scaled, &p).map_err(|e| Error::store(format!("{f}: "), e))?
    };
    let mut out = Vec::new();
    for (qi, hs) in hits.into_iter().enumerate() {
        // The batched (GEMM) distances differ from the per-query kernels' in the last bits, so rows
        // whose distances are within rounding of each other could come out in another order, or
        // another row at the k-th distance, than MATCH gives. Such a query is ranked again exactly,
        // as MATCH ranks it (ties by rowid); so is one whose distances overflowed float32.
        let close = |a: f32, b: f32| (b - a).abs() <= 1e-5 * a.abs().max(b.abs()).max(1.0);
        let exact = hs.iter().any(|h| !h.distance.is_finite())
            || hs.windows(2).any(|w| close(w[0].distance, w[1].distance));
        let rows: Vec<(i64, u64, f64)> = if exact {
            let q = &qvecs[qi * qdim..(qi + 1) * qdim];
            let req = rank::Request {
                query: q,
                candidates: Candidates::Bitmap(live.bitmap()),
                k,
                bound: None,
                threads,
            };
            // Interruptible; its rows are not counted (this operation counts queries now).
            let _scan = crate::control::Op::silent(db);
            rank::rank(&view, &req, |s| live.rowid(s))
                .map_err(|e| Error::store(format!("{f}: "), e))?
        } else {
            let mut rows: Vec<(i64, u64, f64)> = hs
                .into_iter()
                .take(k)
                .filter_map(|h| Some((live.rowid(h.slot)?, h.slot, h.distance as f64)))
                .collect();
            rows.sort_by(|a, b| a.2.total_cmp(&b.2).then(a.0.cmp(&b.0)));
            rows
        };
        emit(&t, live.is_mapped(), qrowids[qi], rows, &mut out)?;
        op.step(1)?;
    }
    op.finish();
    Ok(out)
}

/// One query's ranked rows `(rowid, slot, distance)` appended to `out` as (query rowid, rowid, rank,
/// distance). Row ids that came from the row-id file (`mapped`) are first checked against `<t>_rows`,
/// as KNN's are, so a damaged map is an error rather than wrong rows.
fn emit(
    t: &super::state::TableState,
    mapped: bool,
    qrowid: i64,
    rows: Vec<(i64, u64, f64)>,
    out: &mut Vec<(i64, i64, i64, f64)>,
) -> rusqlite::Result<()> {
    if mapped {
        for &(rowid, slot, _) in &rows {
            t.check_result_row(rowid, slot)?;
        }
    }
    for (rank, (rowid, _, d)) in rows.into_iter().enumerate() {
        out.push((qrowid, rowid, rank as i64 + 1, d));
    }
    Ok(())
}
