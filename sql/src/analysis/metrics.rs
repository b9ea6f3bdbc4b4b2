//! Retrieval metrics, as per-query rows plus a summary (JSON).
//!
//! - `phenix_recall(role, id, key, vector, x_percent)`: the MolPhenix protocol. Rows with role
//!   `'query'` are queries, rows with role `'candidate'` the candidates; `key` identifies the true
//!   candidate of a query (e.g. `json_array(molecule, dose)`), unique among candidates. A query's
//!   rank is `#{candidates more similar than its true one} + 0.5 · #{other candidates exactly as
//!   similar}` (cosine; 0 = best; ties counted half) and it is a hit when `rank < ceil(x/100 · N)`
//!   (`models/training/train.py`'s `ranks` / `recall_at`).
//! - `phenix_moa_accuracy(id, compound, moa, profile)`: not-same-compound 1-NN MoA accuracy (the
//!   BBBC021 benchmark): each row's nearest neighbour by cosine among rows of *other* compounds
//!   (pre-filter; ties go to the earliest row in (compound, moa, id) order); correct when its MoA
//!   equals the row's.
//!
//! Memory: all vectors of the call (bounded by [`super::MAX_GROUP_VALUES`]).

use super::map::{id_json, push_unit, sims_block};
use super::{arg_err, type_name, AnalysisError, Key};
use crate::error::Guarded;
use rusqlite::functions::{Aggregate, Context};
use rusqlite::types::ValueRef;
use rusqlite::Connection;
use std::collections::HashMap;

/// Registers both aggregates.
pub fn register(conn: &Connection) -> rusqlite::Result<()> {
    conn.create_aggregate_function(
        "phenix_recall",
        5,
        super::pure(),
        Guarded {
            name: "phenix_recall",
            inner: Recall,
        },
    )?;
    conn.create_aggregate_function(
        "phenix_moa_accuracy",
        4,
        super::pure(),
        Guarded {
            name: "phenix_moa_accuracy",
            inner: Moa,
        },
    )?;
    Ok(())
}

struct Recall;

#[derive(Default)]
struct RecallAcc {
    q_ids: Vec<serde_json::Value>,
    q_keys: Vec<Key>,
    q_units: Vec<f32>,
    c_keys: Vec<Key>,
    c_units: Vec<f32>,
    dim: usize,
    x: Option<f64>,
}

const R: &str = "phenix_recall";

impl Aggregate<RecallAcc, Option<String>> for Recall {
    fn init(&self, _: &mut Context<'_>) -> rusqlite::Result<RecallAcc> {
        Ok(RecallAcc::default())
    }
    fn step(&self, ctx: &mut Context<'_>, acc: &mut RecallAcc) -> rusqlite::Result<()> {
        let x = match ctx.get_raw(4) {
            ValueRef::Integer(i) => i as f64,
            ValueRef::Real(r) => r,
            other => {
                return Err(arg_err(
                    R,
                    format!(
                        "argument 5 (x_percent) must be a number: got {}",
                        type_name(other)
                    ),
                )
                .into())
            }
        };
        if !(x > 0.0 && x <= 100.0) {
            return Err(arg_err(
                R,
                format!("argument 5 (x_percent) must be in (0, 100]: got {x}"),
            )
            .into());
        }
        if acc.x.is_some_and(|y| y != x) {
            return Err(arg_err(R, "x_percent must be the same on every row").into());
        }
        acc.x = Some(x);
        let role = match ctx.get_raw(0) {
            ValueRef::Text(t) if t.eq_ignore_ascii_case(b"query") => true,
            ValueRef::Text(t) if t.eq_ignore_ascii_case(b"candidate") => false,
            other => {
                let found = match other {
                    ValueRef::Text(t) => format!("'{}'", String::from_utf8_lossy(t)),
                    o => type_name(o).to_string(),
                };
                return Err(arg_err(
                    R,
                    format!("argument 1 (role) must be 'query' or 'candidate': got {found}"),
                )
                .into());
            }
        };
        let Some(key) = Key::from_value(ctx.get_raw(2), R, "argument 3 (key)")? else {
            return Err(arg_err(R, "argument 3 (key) is NULL; every query and candidate needs its (molecule, dose) key").into());
        };
        let Some(v) = super::profile_arg(ctx.get_raw(3), R, 3)? else {
            return Err(arg_err(R, "argument 4 (vector) is NULL").into());
        };
        let n = acc.q_keys.len() + acc.c_keys.len();
        let mut dim = acc.dim;
        if n > 0 && v.len() != dim {
            return Err(AnalysisError::LengthMismatch {
                func: R,
                row: n as u64 + 1,
                got: v.len(),
                expected: dim,
            }
            .into());
        }
        if role {
            push_unit(
                &mut acc.q_units,
                &mut dim,
                acc.q_keys.len().max(usize::from(n > 0)),
                &v,
                R,
            )?;
            acc.q_ids.push(id_json(ctx.get_raw(1)));
            acc.q_keys.push(key);
        } else {
            push_unit(
                &mut acc.c_units,
                &mut dim,
                acc.c_keys.len().max(usize::from(n > 0)),
                &v,
                R,
            )?;
            acc.c_keys.push(key);
        }
        acc.dim = dim;
        if acc.q_units.len() + acc.c_units.len() > super::MAX_GROUP_VALUES {
            return Err(AnalysisError::GroupTooLarge {
                func: R,
                limit: super::MAX_GROUP_VALUES,
            }
            .into());
        }
        Ok(())
    }
    fn finalize(
        &self,
        _: &mut Context<'_>,
        acc: Option<RecallAcc>,
    ) -> rusqlite::Result<Option<String>> {
        let Some(acc) = acc else {
            return Err(AnalysisError::TooFewRows {
                func: R,
                detail: "no rows".into(),
            }
            .into());
        };
        if acc.q_keys.is_empty() || acc.c_keys.is_empty() {
            return Err(AnalysisError::TooFewRows {
                func: R,
                detail: format!(
                    "needs query rows and candidate rows: got {} queries and {} candidates",
                    acc.q_keys.len(),
                    acc.c_keys.len()
                ),
            }
            .into());
        }
        let mut where_c: HashMap<&Key, usize> = HashMap::new();
        for (i, k) in acc.c_keys.iter().enumerate() {
            if where_c.insert(k, i).is_some() {
                return Err(arg_err(R, format!("candidate key {} appears more than once; keys identify the true candidate and must be unique", k.to_json())).into());
            }
        }
        let (nq, nc, d) = (acc.q_keys.len(), acc.c_keys.len(), acc.dim);
        let x = acc.x.expect("set");
        let k = (x / 100.0 * nc as f64).ceil().max(1.0);
        let mut truth = Vec::with_capacity(nq);
        for key in &acc.q_keys {
            match where_c.get(key) {
                Some(&c) => truth.push(c),
                None => {
                    return Err(arg_err(
                        R,
                        format!("query key {} has no candidate with that key", key.to_json()),
                    )
                    .into())
                }
            }
        }
        // Queries and candidates in one matrix: [candidates; queries].
        let mut all = acc.c_units.clone();
        all.extend_from_slice(&acc.q_units);
        let mut rows = Vec::with_capacity(nq);
        let mut hits = 0.0;
        let mut block = Vec::new();
        let n_all = nc + nq;
        let mut q0 = 0;
        while q0 < nq {
            let q1 = (q0 + 256).min(nq);
            sims_block(&all, d, nc, nc + q0, nc + q1, &mut block);
            for qi in q0..q1 {
                let row = &block[(qi - q0) * nc..(qi - q0 + 1) * nc];
                let t = row[truth[qi]];
                let better = row.iter().filter(|&&s| s > t).count();
                let ties = row.iter().filter(|&&s| s == t).count() - 1;
                let rank = better as f64 + 0.5 * ties as f64;
                let hit = rank < k;
                hits += f64::from(u8::from(hit));
                rows.push(serde_json::json!({"id": acc.q_ids[qi], "key": acc.q_keys[qi].to_json(), "rank": rank, "similarity": t, "hit": hit}));
            }
            q0 = q1;
        }
        let _ = n_all;
        let out = serde_json::json!({
            "summary": {"n_queries": nq, "n_candidates": nc, "x_percent": x, "k": k, "recall": hits / nq as f64},
            "queries": rows,
        });
        Ok(Some(out.to_string()))
    }
}

struct Moa;

#[derive(Default)]
struct MoaAcc {
    ids: Vec<serde_json::Value>,
    compounds: Vec<Key>,
    moas: Vec<Key>,
    units: Vec<f32>,
    dim: usize,
}

const M: &str = "phenix_moa_accuracy";

impl Aggregate<MoaAcc, Option<String>> for Moa {
    fn init(&self, _: &mut Context<'_>) -> rusqlite::Result<MoaAcc> {
        Ok(MoaAcc::default())
    }
    fn step(&self, ctx: &mut Context<'_>, acc: &mut MoaAcc) -> rusqlite::Result<()> {
        let n = acc.compounds.len();
        let Some(c) = Key::from_value(ctx.get_raw(1), M, "argument 2 (compound)")? else {
            return Err(arg_err(M, format!("the compound of row {} is NULL", n + 1)).into());
        };
        let Some(m) = Key::from_value(ctx.get_raw(2), M, "argument 3 (moa)")? else {
            return Err(arg_err(M, format!("the MoA of row {} is NULL", n + 1)).into());
        };
        let Some(v) = super::profile_arg(ctx.get_raw(3), M, 3)? else {
            return Err(arg_err(M, format!("the profile of row {} is NULL", n + 1)).into());
        };
        push_unit(&mut acc.units, &mut acc.dim, n, &v, M)?;
        acc.ids.push(id_json(ctx.get_raw(0)));
        acc.compounds.push(c);
        acc.moas.push(m);
        Ok(())
    }
    fn finalize(
        &self,
        _: &mut Context<'_>,
        acc: Option<MoaAcc>,
    ) -> rusqlite::Result<Option<String>> {
        let Some(acc) = acc.filter(|a| !a.compounds.is_empty()) else {
            return Err(AnalysisError::TooFewRows {
                func: M,
                detail: "no rows".into(),
            }
            .into());
        };
        let n = acc.compounds.len();
        // Deterministic tie order: (compound, moa, id as JSON text).
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by(|&a, &b| {
            (&acc.compounds[a], &acc.moas[a], acc.ids[a].to_string()).cmp(&(
                &acc.compounds[b],
                &acc.moas[b],
                acc.ids[b].to_string(),
            ))
        });
        let mut rank_of = vec![0usize; n];
        for (r, &i) in order.iter().enumerate() {
            rank_of[i] = r;
        }
        let mut block = Vec::new();
        let mut rows = Vec::with_capacity(n);
        let mut correct = 0usize;
        let mut q0 = 0;
        while q0 < n {
            let q1 = (q0 + 256).min(n);
            sims_block(&acc.units, acc.dim, n, q0, q1, &mut block);
            for qi in q0..q1 {
                let row = &block[(qi - q0) * n..(qi - q0 + 1) * n];
                let mut best: Option<usize> = None;
                for j in 0..n {
                    if acc.compounds[j] == acc.compounds[qi] {
                        continue;
                    }
                    best = match best {
                        None => Some(j),
                        Some(b)
                            if row[j] > row[b] || (row[j] == row[b] && rank_of[j] < rank_of[b]) =>
                        {
                            Some(j)
                        }
                        keep => keep,
                    };
                }
                let Some(b) = best else {
                    return Err(AnalysisError::TooFewRows { func: M, detail: "all rows belong to one compound; the not-same-compound neighbour needs at least two compounds".into() }.into());
                };
                let ok = acc.moas[b] == acc.moas[qi];
                correct += usize::from(ok);
                rows.push(serde_json::json!({
                    "id": acc.ids[qi], "compound": acc.compounds[qi].to_json(), "moa": acc.moas[qi].to_json(),
                    "neighbour_id": acc.ids[b], "neighbour_moa": acc.moas[b].to_json(), "similarity": row[b], "correct": ok,
                }));
            }
            q0 = q1;
        }
        let out = serde_json::json!({"summary": {"n_queries": n, "accuracy": correct as f64 / n as f64}, "queries": rows});
        Ok(Some(out.to_string()))
    }
}
