//! Feature hygiene as pycytominer 1.7's `feature_select`:
//! `phenix_feature_select(profile, features [, options])` (aggregate → JSON array of the kept names,
//! in their original order) and `phenix_select(profile, features, kept)` (scalar: the profile
//! projected onto the kept features).
//!
//! Operations (option `"operations"`, default `["variance_threshold"]`), applied in the given order,
//! each on the features the earlier ones kept, as pycytominer does:
//! - `variance_threshold`: drop features whose population variance (ddof 0) is `<= min_variance`
//!   (1e-6), as sklearn's `VarianceThreshold`.
//! - `frequency_threshold`: drop features whose second most common value is rarer than `freq_cut`
//!   (0.05) × the most common one, or whose distinct values are fewer than `unique_cut` (0.01) × rows.
//! - `correlation_threshold`: Pearson correlations of the remaining features; for every pair above
//!   `corr_threshold` (0.9) drop the one whose summed absolute correlation is larger.
//! - `drop_na_columns` is not needed: profiles cannot hold missing values (`phenix_pack` refuses
//!   them), so a column with NAs never reaches a profile.
//!
//! Memory: all profiles of the group (bounded by [`super::MAX_GROUP_VALUES`]).

use super::{
    arg_err, check_keys, feature_list, num_opt, options_arg, profile_arg, pure, type_name,
    AnalysisError, Rows,
};
use crate::error::{create_scalar, Guarded};
use crate::vector::encode_f32;
use faer::{Accum, Mat, MatRef, Par};
use rusqlite::functions::{Aggregate, Context};
use rusqlite::types::ValueRef;
use rusqlite::Connection;
use std::collections::HashMap;

const FS: &str = "phenix_feature_select";
const SEL: &str = "phenix_select";

/// Registers both functions.
pub fn register(conn: &Connection) -> rusqlite::Result<()> {
    for n in [2, 3] {
        conn.create_aggregate_function(
            FS,
            n,
            pure(),
            Guarded {
                name: FS,
                inner: FeatureSelect,
            },
        )?;
    }
    create_scalar(conn, SEL, 3, pure(), select_fn)?;
    Ok(())
}

fn names_arg(
    v: ValueRef<'_>,
    func: &'static str,
    what: &str,
) -> Result<Vec<String>, AnalysisError> {
    match v {
        ValueRef::Text(t) => feature_list(
            &serde_json::Value::String(String::from_utf8_lossy(t).into_owned()),
            func,
            what,
        ),
        other => Err(arg_err(
            func,
            format!(
                "{what} must be a JSON array of feature names: got {}",
                type_name(other)
            ),
        )),
    }
}

fn select_fn(ctx: &Context<'_>) -> rusqlite::Result<Option<Vec<u8>>> {
    let Some(x) = profile_arg(ctx.get_raw(0), SEL, 0)? else {
        return Ok(None);
    };
    let all = names_arg(ctx.get_raw(1), SEL, "argument 2 (the profile's features)")?;
    let kept = names_arg(ctx.get_raw(2), SEL, "argument 3 (the features to keep)")?;
    if all.len() != x.len() {
        return Err(AnalysisError::Fit {
            func: SEL,
            detail: format!(
                "argument 2 lists {} features, the profile has {}",
                all.len(),
                x.len()
            ),
        }
        .into());
    }
    let pos: HashMap<&str, usize> = all
        .iter()
        .enumerate()
        .map(|(i, n)| (n.as_str(), i))
        .collect();
    let mut out = Vec::with_capacity(kept.len());
    for k in &kept {
        match pos.get(k.as_str()) {
            Some(&i) => out.push(x[i]),
            None => return Err(arg_err(SEL, format!("feature \"{k}\" of argument 3 is not among the profile's features (argument 2)")).into()),
        }
    }
    if out.is_empty() {
        return Err(arg_err(SEL, "argument 3 keeps no feature").into());
    }
    Ok(Some(encode_f32(&out)))
}

struct FeatureSelect;

#[derive(Default)]
struct FsAcc {
    rows: Rows,
    names: Option<Vec<String>>,
    opts: Option<serde_json::Map<String, serde_json::Value>>,
}

impl Aggregate<FsAcc, Option<String>> for FeatureSelect {
    fn init(&self, _: &mut Context<'_>) -> rusqlite::Result<FsAcc> {
        Ok(FsAcc::default())
    }
    fn step(&self, ctx: &mut Context<'_>, acc: &mut FsAcc) -> rusqlite::Result<()> {
        if acc.names.is_none() {
            acc.names = Some(names_arg(
                ctx.get_raw(1),
                FS,
                "argument 2 (the feature names)",
            )?);
            let o = options_arg((ctx.len() > 2).then(|| ctx.get_raw(2)), FS)?;
            check_keys(
                &o,
                FS,
                &[
                    "operations",
                    "min_variance",
                    "freq_cut",
                    "unique_cut",
                    "corr_threshold",
                ],
            )?;
            acc.opts = Some(o);
        }
        let Some(x) = profile_arg(ctx.get_raw(0), FS, 0)? else {
            return Ok(());
        };
        let names = acc.names.as_ref().expect("set");
        if x.len() != names.len() {
            return Err(AnalysisError::LengthMismatch {
                func: FS,
                row: acc.rows.n as u64 + 1,
                got: x.len(),
                expected: names.len(),
            }
            .into());
        }
        acc.rows.push(&x, FS)?;
        Ok(())
    }
    fn finalize(
        &self,
        _: &mut Context<'_>,
        acc: Option<FsAcc>,
    ) -> rusqlite::Result<Option<String>> {
        let Some(acc) = acc.filter(|a| a.rows.n > 0) else {
            return Err(AnalysisError::TooFewRows {
                func: FS,
                detail: "the group has no profiles to select features on".into(),
            }
            .into());
        };
        let names = acc.names.expect("set");
        let opts = acc.opts.expect("set");
        let ops: Vec<String> = match opts.get("operations") {
            None => vec!["variance_threshold".into()],
            Some(v) => feature_list(v, FS, "option \"operations\"")?,
        };
        let min_var = num_opt(&opts, FS, "min_variance", 1e-6)?;
        let freq_cut = num_opt(&opts, FS, "freq_cut", 0.05)?;
        let unique_cut = num_opt(&opts, FS, "unique_cut", 0.01)?;
        let corr = num_opt(&opts, FS, "corr_threshold", 0.9)?;
        let rows = &acc.rows;
        let (n, d) = (rows.n, rows.dim);
        let col =
            |j: usize| -> Vec<f64> { (0..n).map(|i| f64::from(rows.data[i * d + j])).collect() };
        let mut keep: Vec<usize> = (0..d).collect();
        for op in &ops {
            match op.as_str() {
                "variance_threshold" => {
                    keep.retain(|&j| {
                        let c = col(j);
                        let m = c.iter().sum::<f64>() / n as f64;
                        let var = c.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / n as f64;
                        // sklearn: a constant column has variance 0 (its peak-to-peak is 0).
                        let constant = c.iter().all(|&x| x == c[0]);
                        !constant && var > min_var
                    });
                }
                "frequency_threshold" => {
                    keep.retain(|&j| {
                        let mut c = col(j);
                        c.sort_by(f64::total_cmp);
                        let mut counts = Vec::new();
                        let mut i = 0;
                        while i < c.len() {
                            let mut k = i;
                            while k < c.len() && c[k] == c[i] {
                                k += 1;
                            }
                            counts.push(k - i);
                            i = k;
                        }
                        let uniq = counts.len();
                        counts.sort_unstable_by(|a, b| b.cmp(a));
                        let ratio = if uniq < 2 { 0.0 } else { counts[1] as f64 / counts[0] as f64 };
                        !(ratio < freq_cut || (uniq as f64 / n as f64) < unique_cut)
                    });
                }
                "correlation_threshold" => keep = correlation_threshold(rows, &keep, corr),
                other => {
                    return Err(arg_err(
                        FS,
                        format!("unknown operation \"{other}\" (known: variance_threshold, frequency_threshold, correlation_threshold)"),
                    )
                    .into())
                }
            }
        }
        if keep.is_empty() {
            return Err(arg_err(
                FS,
                format!(
                    "every one of the {d} features was dropped by {ops:?}; loosen the thresholds"
                ),
            )
            .into());
        }
        let kept: Vec<&str> = keep.iter().map(|&j| names[j].as_str()).collect();
        Ok(Some(serde_json::Value::from(kept).to_string()))
    }
}

/// pycytominer's `correlation_threshold` on the features `keep` (positions), returning the kept ones.
fn correlation_threshold(rows: &Rows, keep: &[usize], threshold: f64) -> Vec<usize> {
    let (n, d) = (rows.n, rows.dim);
    let k = keep.len();
    if k < 2 || n < 2 {
        return keep.to_vec();
    }
    // Centred data of the kept features, column-major n × k, in f64.
    let mut x = Mat::<f64>::zeros(n, k);
    for (c, &j) in keep.iter().enumerate() {
        let m = (0..n).map(|i| f64::from(rows.data[i * d + j])).sum::<f64>() / n as f64;
        for i in 0..n {
            x[(i, c)] = f64::from(rows.data[i * d + j]) - m;
        }
    }
    let mut g = Mat::<f64>::zeros(k, k);
    let xr: MatRef<'_, f64> = x.as_ref();
    faer::linalg::matmul::matmul(
        g.as_mut(),
        Accum::Replace,
        xr.transpose(),
        xr,
        1.0,
        Par::Seq,
    );
    let sd: Vec<f64> = (0..k).map(|c| g[(c, c)].sqrt()).collect();
    let r = |a: usize, b: usize| -> f64 { g[(a, b)] / (sd[a] * sd[b]) };
    // Summed absolute correlation per feature (NaN skipped, as pandas' sum).
    let sums: Vec<f64> = (0..k)
        .map(|a| (0..k).map(|b| r(a, b).abs()).filter(|v| !v.is_nan()).sum())
        .collect();
    let mut order: Vec<usize> = (0..k).collect();
    order.sort_by(|&a, &b| sums[a].total_cmp(&sums[b]));
    let mut pos = vec![0usize; k];
    for (p, &a) in order.iter().enumerate() {
        pos[a] = p;
    }
    let mut excluded = vec![false; k];
    for a in 0..k {
        for b in 0..a {
            let c = r(a, b);
            if c > threshold {
                // pair_a = a (later), pair_b = b: drop the one later in ascending summed |r|.
                if pos[a] > pos[b] {
                    excluded[a] = true;
                } else {
                    excluded[b] = true;
                }
            }
        }
    }
    keep.iter()
        .enumerate()
        .filter(|(c, _)| !excluded[*c])
        .map(|(_, &j)| j)
        .collect()
}
