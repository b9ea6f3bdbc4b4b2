//! Mean average precision as copairs 0.5 computes it.
//!
//! - `phenix_activity_map(id, treatment, is_control, profile [, options])`: phenotypic activity. Every
//!   non-control well is a query; its positives are the other wells of its treatment, its negatives
//!   the control wells (copairs with `pos_sameby = [treatment, reference_index]`, `neg_diffby =
//!   [treatment, reference_index]` and a reference index unique per control well, its documented
//!   recipe).
//! - `phenix_map(id, label, profile [, options])`: mAP for a label. Every well is a query; positives
//!   are the other wells with its label, negatives all wells with another label (`pos_sameby =
//!   [label]`, `neg_diffby = [label]`).
//!
//! Average precision (copairs' `ap_contiguous`): similarity = cosine in float32; each query's pairs
//! are ranked by `1 - similarity` (float32) ascending with ties broken positives first (copairs'
//! stable `lexsort` of positive pairs before negative ones); `AP = Σ_k precision@k · rel_k / M`.
//! A query without positives has no AP and is left out of its group's mAP.
//!
//! p-values follow copairs' `mean_average_precision`: for each (M positives, L ranked pairs)
//! configuration a null of `null_size` APs of random rankings; a group's null is the element-wise
//! mean of its queries' nulls, and `p = (1 + #{null > mAP}) / (1 + null_size)`;
//! `corrected_p_value` is Benjamini–Hochberg over the groups; `below_p` / `below_corrected_p` compare
//! with `threshold` (0.05). The random rankings use phenix's own stream (SplitMix64 from `seed`;
//! configurations in ascending (M, L) order; each ranking picks M of L positions by Floyd's
//! algorithm with `index(j+1)` as in [`super::SplitMix64::index`]), so p-values equal copairs' only
//! up to Monte Carlo error, while AP and mAP are equal.
//!
//! Result: JSON `{"groups": [...], "queries": [...]}`. Memory: all profiles (bounded by
//! [`super::MAX_GROUP_VALUES`]) and one `null_size` vector per configuration.

use super::{
    arg_err, bh_qvalues, check_keys, num_opt, options_arg, profile_arg, pure, AnalysisError, Key,
    SplitMix64, MAX_GROUP_VALUES,
};
use crate::error::Guarded;
use faer::{Accum, MatMut, MatRef, Par};
use rusqlite::functions::{Aggregate, Context};
use rusqlite::types::ValueRef;
use rusqlite::Connection;
use std::collections::{BTreeMap, HashMap};

/// Registers `phenix_activity_map` and `phenix_map`.
pub fn register(conn: &Connection) -> rusqlite::Result<()> {
    for n in [4, 5] {
        conn.create_aggregate_function(
            "phenix_activity_map",
            n,
            pure(),
            Guarded {
                name: "phenix_activity_map",
                inner: MapAgg { activity: true },
            },
        )?;
    }
    for n in [3, 4] {
        conn.create_aggregate_function(
            "phenix_map",
            n,
            pure(),
            Guarded {
                name: "phenix_map",
                inner: MapAgg { activity: false },
            },
        )?;
    }
    Ok(())
}

struct MapAgg {
    activity: bool,
}

impl MapAgg {
    fn name(&self) -> &'static str {
        if self.activity {
            "phenix_activity_map"
        } else {
            "phenix_map"
        }
    }
}

/// Input rows of one call.
#[derive(Default)]
pub(crate) struct MapInput {
    pub(crate) ids: Vec<serde_json::Value>,
    /// Group key; `None` for a control row (activity mode).
    pub(crate) keys: Vec<Option<Key>>,
    /// Unit-normalised profiles, row-major.
    pub(crate) units: Vec<f32>,
    pub(crate) dim: usize,
    pub(crate) opts: Option<(usize, u64, f64)>,
}

pub(crate) fn id_json(v: ValueRef<'_>) -> serde_json::Value {
    match v {
        ValueRef::Null => serde_json::Value::Null,
        ValueRef::Integer(i) => i.into(),
        ValueRef::Real(r) => r.into(),
        ValueRef::Text(t) => String::from_utf8_lossy(t).into_owned().into(),
        ValueRef::Blob(b) => b
            .iter()
            .map(|x| format!("{x:02x}"))
            .collect::<String>()
            .into(),
    }
}

/// Appends `x` normalised to unit length (f64 norm, stored f32); an error for a zero profile.
pub(crate) fn push_unit(
    units: &mut Vec<f32>,
    dim: &mut usize,
    n: usize,
    x: &[f32],
    func: &'static str,
) -> Result<(), AnalysisError> {
    if n == 0 {
        *dim = x.len();
    } else if x.len() != *dim {
        return Err(AnalysisError::LengthMismatch {
            func,
            row: n as u64 + 1,
            got: x.len(),
            expected: *dim,
        });
    }
    if units.len() + x.len() > MAX_GROUP_VALUES {
        return Err(AnalysisError::GroupTooLarge {
            func,
            limit: MAX_GROUP_VALUES,
        });
    }
    let Some(u) = super::unit(x) else {
        return Err(arg_err(
            func,
            format!(
                "profile {} is all zeros; its cosine similarity is undefined",
                n + 1
            ),
        ));
    };
    units.extend(u.iter().map(|&v| v as f32));
    Ok(())
}

/// Cosine similarities of rows `q0..q1` against all rows: `(q1-q0) × n`, row-major.
pub(crate) fn sims_block(
    units: &[f32],
    dim: usize,
    n: usize,
    q0: usize,
    q1: usize,
    out: &mut Vec<f32>,
) {
    out.clear();
    out.resize((q1 - q0) * n, 0.0);
    let q = MatRef::from_row_major_slice(&units[q0 * dim..q1 * dim], q1 - q0, dim);
    let all = MatRef::from_row_major_slice(&units[..n * dim], n, dim);
    let o = MatMut::from_row_major_slice_mut(out, q1 - q0, n);
    faer::linalg::matmul::matmul(o, Accum::Replace, q, all.transpose(), 1.0f32, Par::Seq);
}

/// AP of one query from its positives' and negatives' ranking keys (`1 - sim`, ascending is better),
/// ties broken positives first. `pos` is sorted in place.
pub(crate) fn average_precision(pos: &mut [f32], neg: &mut [f32], neg_sorted: bool) -> f64 {
    let m = pos.len();
    pos.sort_unstable_by(f32::total_cmp);
    let use_sort = m > 24;
    if use_sort && !neg_sorted {
        neg.sort_unstable_by(f32::total_cmp);
    }
    let mut s = 0.0f64;
    for (t, &k) in pos.iter().enumerate() {
        let less = if use_sort || neg_sorted {
            neg.partition_point(|&v| v < k)
        } else {
            neg.iter().filter(|&&v| v < k).count()
        };
        let t1 = (t + 1) as f64;
        s += t1 / (t1 + less as f64);
    }
    s / m as f64
}

/// The null APs of random rankings with `m` positives among `l`: `null_size` values.
pub(crate) fn null_ap(rng: &mut SplitMix64, m: usize, l: usize, null_size: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(null_size);
    let mut chosen: Vec<usize> = Vec::with_capacity(m);
    for _ in 0..null_size {
        chosen.clear();
        // Floyd's algorithm: m distinct positions of 0..l.
        for j in l - m..l {
            let t = rng.index(j + 1);
            if chosen.contains(&t) {
                chosen.push(j);
            } else {
                chosen.push(t);
            }
        }
        chosen.sort_unstable();
        let ap: f64 = chosen
            .iter()
            .enumerate()
            .map(|(t, &p)| (t + 1) as f64 / (p + 1) as f64)
            .sum::<f64>()
            / m as f64;
        out.push(ap as f32);
    }
    out
}

impl Aggregate<MapInput, Option<String>> for MapAgg {
    fn init(&self, _: &mut Context<'_>) -> rusqlite::Result<MapInput> {
        Ok(MapInput::default())
    }

    fn step(&self, ctx: &mut Context<'_>, acc: &mut MapInput) -> rusqlite::Result<()> {
        let f = self.name();
        let (key_i, prof_i, opt_i) = if self.activity { (1, 3, 4) } else { (1, 2, 3) };
        if acc.opts.is_none() {
            let o = options_arg((ctx.len() > opt_i).then(|| ctx.get_raw(opt_i)), f)?;
            check_keys(&o, f, &["null_size", "seed", "threshold"])?;
            let null_size = num_opt(&o, f, "null_size", 10000.0)?;
            if !(1.0..=1e7).contains(&null_size) || null_size.fract() != 0.0 {
                return Err(arg_err(
                    f,
                    format!("option \"null_size\" must be an integer 1..10000000: got {null_size}"),
                )
                .into());
            }
            let seed = num_opt(&o, f, "seed", 0.0)?;
            if seed.fract() != 0.0 {
                return Err(
                    arg_err(f, format!("option \"seed\" must be an integer: got {seed}")).into(),
                );
            }
            let thr = num_opt(&o, f, "threshold", 0.05)?;
            acc.opts = Some((null_size as usize, seed as i64 as u64, thr));
        }
        let n = acc.keys.len();
        let is_control = if self.activity {
            match ctx.get_raw(2) {
                ValueRef::Integer(i) => i != 0,
                ValueRef::Null => {
                    return Err(arg_err(
                        f,
                        format!(
                            "is_control of row {} is NULL; it must be 1 (a control well) or 0",
                            n + 1
                        ),
                    )
                    .into())
                }
                other => {
                    return Err(arg_err(
                        f,
                        format!(
                            "is_control of row {} must be 1 or 0: got {}",
                            n + 1,
                            super::type_name(other)
                        ),
                    )
                    .into())
                }
            }
        } else {
            false
        };
        let key = if is_control {
            None
        } else {
            match Key::from_value(ctx.get_raw(key_i), f, "the group key")? {
                Some(k) => Some(k),
                None => {
                    return Err(arg_err(
                        f,
                        format!(
                            "the {} of row {} is NULL",
                            if self.activity { "treatment" } else { "label" },
                            n + 1
                        ),
                    )
                    .into())
                }
            }
        };
        let Some(x) = profile_arg(ctx.get_raw(prof_i), f, prof_i)? else {
            return Err(arg_err(f, format!("the profile of row {} is NULL", n + 1)).into());
        };
        push_unit(&mut acc.units, &mut acc.dim, n, &x, f)?;
        acc.ids.push(super::map::id_json(ctx.get_raw(0)));
        acc.keys.push(key);
        Ok(())
    }

    fn finalize(
        &self,
        _: &mut Context<'_>,
        acc: Option<MapInput>,
    ) -> rusqlite::Result<Option<String>> {
        let f = self.name();
        let Some(acc) = acc.filter(|a| !a.keys.is_empty()) else {
            return Err(AnalysisError::TooFewRows {
                func: f,
                detail: "no rows".into(),
            }
            .into());
        };
        Ok(Some(compute_map(&acc, self.activity, f)?.to_string()))
    }
}

/// Computes APs, mAPs, p-values and q-values.
pub(crate) fn compute_map(
    acc: &MapInput,
    activity: bool,
    f: &'static str,
) -> Result<serde_json::Value, AnalysisError> {
    let (null_size, seed, threshold) = acc.opts.expect("set");
    let n = acc.keys.len();
    let dim = acc.dim;
    // Group ids.
    let mut gindex: BTreeMap<&Key, usize> = BTreeMap::new();
    for k in acc.keys.iter().flatten() {
        let len = gindex.len();
        gindex.entry(k).or_insert(len);
    }
    // Renumber in key order.
    let order: Vec<&Key> = gindex.keys().copied().collect();
    let gid: Vec<Option<usize>> = acc
        .keys
        .iter()
        .map(|k| {
            k.as_ref()
                .map(|k| order.binary_search(&k).expect("present"))
        })
        .collect();
    let n_controls = gid.iter().filter(|g| g.is_none()).count();
    if activity && n_controls == 0 {
        return Err(AnalysisError::TooFewRows { func: f, detail: "no control wells (is_control = 1): activity mAP ranks each treatment's replicates against the controls".into() });
    }
    let controls: Vec<usize> = (0..n).filter(|&i| gid[i].is_none()).collect();
    let mut ap = vec![f64::NAN; n];
    let mut conf = vec![(0usize, 0usize); n];
    let mut block = Vec::new();
    let mut pos: Vec<f32> = Vec::new();
    let mut neg: Vec<f32> = Vec::new();
    const B: usize = 256;
    let mut q0 = 0;
    while q0 < n {
        let q1 = (q0 + B).min(n);
        sims_block(&acc.units, dim, n, q0, q1, &mut block);
        for qi in q0..q1 {
            let Some(g) = gid[qi] else { continue };
            let row = &block[(qi - q0) * n..(qi - q0 + 1) * n];
            pos.clear();
            neg.clear();
            if activity {
                for j in 0..n {
                    if j != qi && gid[j] == Some(g) {
                        pos.push(1.0f32 - row[j]);
                    }
                }
                for &j in &controls {
                    neg.push(1.0f32 - row[j]);
                }
            } else {
                for j in 0..n {
                    if j == qi {
                        continue;
                    }
                    if gid[j] == Some(g) {
                        pos.push(1.0f32 - row[j]);
                    } else {
                        neg.push(1.0f32 - row[j]);
                    }
                }
            }
            conf[qi] = (pos.len(), pos.len() + neg.len());
            if !pos.is_empty() {
                ap[qi] = average_precision(&mut pos, &mut neg, false);
            }
        }
        q0 = q1;
    }
    // Nulls per configuration.
    let mut confs: Vec<(usize, usize)> =
        (0..n).filter(|&i| conf[i].0 > 0).map(|i| conf[i]).collect();
    confs.sort_unstable();
    confs.dedup();
    let mut rng = SplitMix64::new(seed);
    let mut nulls: HashMap<(usize, usize), Vec<f32>> = HashMap::new();
    for &(m, l) in &confs {
        nulls.insert((m, l), null_ap(&mut rng, m, l, null_size));
    }
    let mut groups = Vec::new();
    let mut pvals = Vec::new();
    for (g, key) in order.iter().enumerate() {
        let members: Vec<usize> = (0..n)
            .filter(|&i| gid[i] == Some(g) && conf[i].0 > 0)
            .collect();
        if members.is_empty() {
            groups.push((key, 0usize, None, None));
            continue;
        }
        let map = members.iter().map(|&i| ap[i]).sum::<f64>() / members.len() as f64;
        let mut acc_null = vec![0f64; null_size];
        for &i in &members {
            for (a, &v) in acc_null.iter_mut().zip(&nulls[&conf[i]]) {
                *a += f64::from(v);
            }
        }
        let k = members.len() as f64;
        let above = acc_null.iter().filter(|&&s| s / k > map).count();
        let p = (1.0 + above as f64) / (1.0 + null_size as f64);
        pvals.push(p);
        groups.push((key, members.len(), Some(map), Some(p)));
    }
    let q = bh_qvalues(&pvals);
    let mut qi = q.into_iter();
    let gname = if activity { "treatment" } else { "label" };
    let groups_json: Vec<serde_json::Value> = groups
        .into_iter()
        .map(|(k, nq, map, p)| {
            let q = p.map(|_| qi.next().expect("one q per p"));
            let mut o = serde_json::Map::new();
            o.insert(gname.into(), k.to_json());
            o.insert("n_queries".into(), nq.into());
            o.insert("mean_average_precision".into(), map.into());
            o.insert("p_value".into(), p.into());
            o.insert("corrected_p_value".into(), q.into());
            o.insert("below_p".into(), p.map(|p| p < threshold).into());
            o.insert("below_corrected_p".into(), q.map(|q| q < threshold).into());
            serde_json::Value::Object(o)
        })
        .collect();
    let queries: Vec<serde_json::Value> = (0..n)
        .filter(|&i| gid[i].is_some())
        .map(|i| {
            let mut o = serde_json::Map::new();
            o.insert("id".into(), acc.ids[i].clone());
            o.insert(gname.into(), acc.keys[i].as_ref().expect("query").to_json());
            o.insert(
                "average_precision".into(),
                if ap[i].is_nan() {
                    serde_json::Value::Null
                } else {
                    ap[i].into()
                },
            );
            o.insert("n_pos_pairs".into(), conf[i].0.into());
            o.insert("n_total_pairs".into(), conf[i].1.into());
            serde_json::Value::Object(o)
        })
        .collect();
    Ok(serde_json::json!({"groups": groups_json, "queries": queries}))
}
