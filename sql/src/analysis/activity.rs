//! Activity calls from replicate consistency: `phenix_activity(treatment, profile, n_null, seed)`.
//!
//! For each treatment (a group key) with at least 2 replicate profiles: the consistency is the mean
//! pairwise cosine similarity of its replicates (f64). The null distribution for a replicate count
//! `r` is `n_null` random sets of `r` wells with `r` different treatments, drawn from all the wells
//! passed in; `p = (1 + #{null >= consistency}) / (1 + n_null)` and `q` is the Benjamini–Hochberg
//! adjustment over the treatments that have a p-value. The null is shared by every treatment with
//! the same replicate count.
//!
//! The random stream (so numpy can reproduce a call exactly; `tests/sql/test_analysis.py` does):
//! wells are sorted by (treatment, profile elements in order); one SplitMix64 stream seeded with
//! `seed`; replicate counts in ascending order; for each, `n_null` sets, each drawn as `r` indices
//! `floor(next_u64() · N / 2^64)` (N = number of wells), the whole set drawn again when two of its
//! wells share a treatment.
//!
//! The result is JSON: an array of `{"treatment", "n_replicates", "consistency", "p_value",
//! "q_value"}` in treatment order (NULL consistency and p for single-replicate treatments). Memory:
//! all profiles of the call (bounded by [`super::MAX_GROUP_VALUES`]).

use super::{
    arg_err, bh_qvalues, dot, profile_arg, pure, type_name, unit, AnalysisError, Key, SplitMix64,
    MAX_GROUP_VALUES,
};
use crate::error::Guarded;
use rusqlite::functions::{Aggregate, Context};
use rusqlite::types::ValueRef;
use rusqlite::Connection;
use std::collections::BTreeMap;

const F: &str = "phenix_activity";

/// Registers `phenix_activity`.
pub fn register(conn: &Connection) -> rusqlite::Result<()> {
    conn.create_aggregate_function(
        F,
        4,
        pure(),
        Guarded {
            name: F,
            inner: Activity,
        },
    )?;
    Ok(())
}

struct Activity;

#[derive(Default)]
struct Acc {
    wells: Vec<(Key, Vec<f32>)>,
    values: usize,
    dim: usize,
    params: Option<(u64, u64)>,
}

fn int_arg(v: ValueRef<'_>, what: &str) -> Result<i64, AnalysisError> {
    match v {
        ValueRef::Integer(i) => Ok(i),
        other => Err(arg_err(
            F,
            format!("{what} must be an integer: got {}", type_name(other)),
        )),
    }
}

impl Aggregate<Acc, Option<String>> for Activity {
    fn init(&self, _: &mut Context<'_>) -> rusqlite::Result<Acc> {
        Ok(Acc::default())
    }
    fn step(&self, ctx: &mut Context<'_>, acc: &mut Acc) -> rusqlite::Result<()> {
        let n_null = int_arg(ctx.get_raw(2), "argument 3 (n_null)")?;
        if !(1..=10_000_000).contains(&n_null) {
            return Err(arg_err(
                F,
                format!("argument 3 (n_null) must be 1..10000000: got {n_null}"),
            )
            .into());
        }
        let seed = int_arg(ctx.get_raw(3), "argument 4 (seed)")? as u64;
        match acc.params {
            None => acc.params = Some((n_null as u64, seed)),
            Some(p) if p != (n_null as u64, seed) => {
                return Err(arg_err(F, "n_null and seed must be the same on every row").into())
            }
            _ => {}
        }
        let Some(key) = Key::from_value(ctx.get_raw(0), F, "argument 1 (treatment)")? else {
            return Err(arg_err(
                F,
                format!("the treatment of row {} is NULL", acc.wells.len() + 1),
            )
            .into());
        };
        let Some(x) = profile_arg(ctx.get_raw(1), F, 1)? else {
            return Err(arg_err(
                F,
                format!("the profile of row {} is NULL", acc.wells.len() + 1),
            )
            .into());
        };
        if acc.wells.is_empty() {
            acc.dim = x.len();
        } else if x.len() != acc.dim {
            return Err(AnalysisError::LengthMismatch {
                func: F,
                row: acc.wells.len() as u64 + 1,
                got: x.len(),
                expected: acc.dim,
            }
            .into());
        }
        acc.values += x.len();
        if acc.values > MAX_GROUP_VALUES {
            return Err(AnalysisError::GroupTooLarge {
                func: F,
                limit: MAX_GROUP_VALUES,
            }
            .into());
        }
        acc.wells.push((key, x));
        Ok(())
    }
    fn finalize(&self, _: &mut Context<'_>, acc: Option<Acc>) -> rusqlite::Result<Option<String>> {
        let Some(mut acc) = acc.filter(|a| !a.wells.is_empty()) else {
            return Err(AnalysisError::TooFewRows {
                func: F,
                detail: "no rows: activity needs treatment wells".into(),
            }
            .into());
        };
        let (n_null, seed) = acc.params.expect("set with the first row");
        acc.wells.sort_by(|a, b| {
            a.0.cmp(&b.0).then_with(|| {
                a.1.iter()
                    .zip(&b.1)
                    .map(|(x, y)| x.total_cmp(y))
                    .find(|o| o.is_ne())
                    .unwrap_or(std::cmp::Ordering::Equal)
            })
        });
        let mut units = Vec::with_capacity(acc.wells.len());
        let mut tid = Vec::with_capacity(acc.wells.len());
        let mut groups: BTreeMap<&Key, Vec<usize>> = BTreeMap::new();
        for (i, (k, x)) in acc.wells.iter().enumerate() {
            let Some(u) = unit(x) else {
                return Err(arg_err(F, format!("a profile of treatment {} is all zeros; its cosine similarity is undefined", k.to_json())).into());
            };
            units.push(u);
            groups.entry(k).or_default().push(i);
        }
        let keys: Vec<&Key> = groups.keys().copied().collect();
        for (k, _) in &acc.wells {
            tid.push(keys.binary_search(&k).expect("present"));
        }
        let consistency = |idx: &[usize]| -> f64 {
            let r = idx.len();
            let mut s = 0.0;
            for a in 0..r {
                for b in a + 1..r {
                    s += dot(&units[idx[a]], &units[idx[b]]);
                }
            }
            s / (r * (r - 1) / 2) as f64
        };
        let mut sizes: Vec<usize> = groups.values().map(Vec::len).filter(|&r| r >= 2).collect();
        sizes.sort_unstable();
        sizes.dedup();
        let n_treat = keys.len();
        let n = units.len();
        let mut rng = SplitMix64::new(seed);
        let mut nulls: BTreeMap<usize, Vec<f64>> = BTreeMap::new();
        for &r in &sizes {
            if n_treat < r {
                return Err(AnalysisError::TooFewRows {
                    func: F,
                    detail: format!("the null for {r} replicates needs wells of at least {r} different treatments; there are {n_treat}"),
                }
                .into());
            }
            let mut null = Vec::with_capacity(n_null as usize);
            let mut set = vec![0usize; r];
            let mut attempts: u64 = 0;
            while null.len() < n_null as usize {
                attempts += 1;
                if attempts > 1000 * n_null + 1_000_000 {
                    return Err(arg_err(F, format!("could not draw sets of {r} wells from {r} different treatments (one treatment holds almost all wells)")).into());
                }
                for s in set.iter_mut() {
                    *s = rng.index(n);
                }
                let distinct = (0..r).all(|a| (a + 1..r).all(|b| tid[set[a]] != tid[set[b]]));
                if distinct {
                    null.push(consistency(&set));
                }
            }
            null.sort_by(f64::total_cmp);
            nulls.insert(r, null);
        }
        let mut rows = Vec::with_capacity(keys.len());
        let mut pv = Vec::new();
        for (k, idx) in &groups {
            if idx.len() < 2 {
                rows.push((k, idx.len(), None, None));
                continue;
            }
            let c = consistency(idx);
            let null = &nulls[&idx.len()];
            let ge = null.len() - null.partition_point(|&v| v < c);
            let p = (1.0 + ge as f64) / (1.0 + n_null as f64);
            pv.push(p);
            rows.push((k, idx.len(), Some(c), Some(p)));
        }
        let q = bh_qvalues(&pv);
        let mut qi = q.into_iter();
        let out: Vec<serde_json::Value> = rows
            .into_iter()
            .map(|(k, r, c, p)| {
                serde_json::json!({
                    "treatment": k.to_json(),
                    "n_replicates": r,
                    "consistency": c,
                    "p_value": p,
                    "q_value": p.map(|_| qi.next().expect("one q per p")),
                })
            })
            .collect();
        Ok(Some(serde_json::Value::from(out).to_string()))
    }
}
