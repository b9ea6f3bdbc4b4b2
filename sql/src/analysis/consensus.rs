//! Consensus profiles: `phenix_median(profile)` (element-wise median, pandas' convention for an even
//! count) and `phenix_modz(profile [, options])` (pycytominer's MODZ: replicates weighted by their
//! mean Spearman correlation with the others).
//!
//! Both keep the group's profiles in memory (a median needs every value): bounded by
//! [`super::MAX_GROUP_VALUES`] values per group. NULL profiles are skipped; a group with no profile
//! gives NULL, as `phenix_mean` does.

use super::{check_keys, num_opt, options_arg, profile_arg, pure, AnalysisError, Rows};
use crate::error::Guarded;
use crate::vector::encode_f32;
use rusqlite::functions::{Aggregate, Context};
use rusqlite::Connection;

/// Registers both aggregates.
pub fn register(conn: &Connection) -> rusqlite::Result<()> {
    conn.create_aggregate_function(
        "phenix_median",
        1,
        pure(),
        Guarded {
            name: "phenix_median",
            inner: Median,
        },
    )?;
    for n in [1, 2] {
        conn.create_aggregate_function(
            "phenix_modz",
            n,
            pure(),
            Guarded {
                name: "phenix_modz",
                inner: Modz,
            },
        )?;
    }
    Ok(())
}

struct Median;

impl Aggregate<Rows, Option<Vec<u8>>> for Median {
    fn init(&self, _: &mut Context<'_>) -> rusqlite::Result<Rows> {
        Ok(Rows::default())
    }
    fn step(&self, ctx: &mut Context<'_>, acc: &mut Rows) -> rusqlite::Result<()> {
        if let Some(x) = profile_arg(ctx.get_raw(0), "phenix_median", 0)? {
            acc.push(&x, "phenix_median")?;
        }
        Ok(())
    }
    fn finalize(
        &self,
        _: &mut Context<'_>,
        acc: Option<Rows>,
    ) -> rusqlite::Result<Option<Vec<u8>>> {
        let Some(rows) = acc.filter(|r| r.n > 0) else {
            return Ok(None);
        };
        let mut col = vec![0f64; rows.n];
        let out: Vec<f32> = (0..rows.dim)
            .map(|j| {
                for (i, c) in col.iter_mut().enumerate() {
                    *c = f64::from(rows.data[i * rows.dim + j]);
                }
                super::median_in_place(&mut col) as f32
            })
            .collect();
        Ok(Some(encode_f32(&out)))
    }
}

/// Ranks of `xs` (1-based, ties get their average rank), as pandas' `rank(method="average")`.
pub(crate) fn ranks(xs: &[f32]) -> Vec<f64> {
    let mut idx: Vec<usize> = (0..xs.len()).collect();
    idx.sort_by(|&a, &b| xs[a].total_cmp(&xs[b]));
    let mut r = vec![0f64; xs.len()];
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && xs[idx[j + 1]] == xs[idx[i]] {
            j += 1;
        }
        let avg = (i + j) as f64 / 2.0 + 1.0;
        for &k in &idx[i..=j] {
            r[k] = avg;
        }
        i = j + 1;
    }
    r
}

/// Pearson correlation of two equally long vectors; NaN when either is constant.
pub(crate) fn pearson(a: &[f64], b: &[f64]) -> f64 {
    let n = a.len() as f64;
    let ma = a.iter().sum::<f64>() / n;
    let mb = b.iter().sum::<f64>() / n;
    let (mut sab, mut saa, mut sbb) = (0.0, 0.0, 0.0);
    for (x, y) in a.iter().zip(b) {
        let (dx, dy) = (x - ma, y - mb);
        sab += dx * dy;
        saa += dx * dx;
        sbb += dy * dy;
    }
    sab / (saa * sbb).sqrt()
}

struct Modz;

/// State: the rows and the options text of the first row.
#[derive(Default)]
struct ModzAcc {
    rows: Rows,
    min_weight: f64,
    precision: Option<i32>,
    set: bool,
}

/// Rounds half to even at `digits` decimals, as numpy's `round`.
fn round_to(x: f64, digits: i32) -> f64 {
    let p = 10f64.powi(digits);
    let y = x * p;
    let r = y.round();
    let r = if (y - y.trunc()).abs() == 0.5 {
        2.0 * (y / 2.0).round()
    } else {
        r
    };
    r / p
}

impl Aggregate<ModzAcc, Option<Vec<u8>>> for Modz {
    fn init(&self, _: &mut Context<'_>) -> rusqlite::Result<ModzAcc> {
        Ok(ModzAcc::default())
    }
    fn step(&self, ctx: &mut Context<'_>, acc: &mut ModzAcc) -> rusqlite::Result<()> {
        const F: &str = "phenix_modz";
        if !acc.set {
            let o = options_arg((ctx.len() > 1).then(|| ctx.get_raw(1)), F)?;
            check_keys(&o, F, &["min_weight", "precision"])?;
            acc.min_weight = num_opt(&o, F, "min_weight", 0.01)?;
            acc.precision = match o.get("precision") {
                Some(serde_json::Value::Null) => None,
                None => Some(4),
                Some(v) => match v.as_i64() {
                    Some(p) if (0..=15).contains(&p) => Some(p as i32),
                    _ => {
                        return Err(super::arg_err(
                            F,
                            format!(
                                "option \"precision\" must be an integer 0..15 or null: got {v}"
                            ),
                        )
                        .into())
                    }
                },
            };
            acc.set = true;
        }
        if let Some(x) = profile_arg(ctx.get_raw(0), F, 0)? {
            acc.rows.push(&x, F)?;
        }
        Ok(())
    }
    fn finalize(
        &self,
        _: &mut Context<'_>,
        acc: Option<ModzAcc>,
    ) -> rusqlite::Result<Option<Vec<u8>>> {
        let Some(acc) = acc.filter(|a| a.rows.n > 0) else {
            return Ok(None);
        };
        let r = &acc.rows;
        if r.n == 1 {
            return Ok(Some(encode_f32(r.row(0))));
        }
        if r.dim < 2 {
            return Err(AnalysisError::TooFewRows {
                func: "phenix_modz",
                detail: "MODZ correlates replicates across features and needs profiles of at least 2 features".into(),
            }
            .into());
        }
        let rk: Vec<Vec<f64>> = (0..r.n).map(|i| ranks(r.row(i))).collect();
        let mut raw = vec![0f64; r.n];
        for i in 0..r.n {
            // Mean over the other replicates of the correlation clipped at 0 (NaN skipped, as pandas).
            let (mut s, mut c) = (0.0, 0usize);
            for j in 0..r.n {
                if i == j {
                    continue;
                }
                let rho = pearson(&rk[i], &rk[j]);
                if rho.is_nan() {
                    continue;
                }
                s += rho.max(0.0);
                c += 1;
            }
            let m = if c == 0 { f64::NAN } else { s / c as f64 };
            raw[i] = if m.is_nan() { m } else { m.max(acc.min_weight) };
        }
        let sum: f64 = raw.iter().filter(|x| !x.is_nan()).sum();
        let mut w: Vec<f64> = if sum == 0.0 {
            vec![1.0 / r.n as f64; r.n]
        } else {
            raw.iter()
                .map(|x| if x.is_nan() { 0.0 } else { x / sum })
                .collect()
        };
        if let Some(p) = acc.precision {
            for x in &mut w {
                *x = round_to(*x, p);
            }
        }
        let out: Vec<f32> = (0..r.dim)
            .map(|j| {
                (0..r.n)
                    .map(|i| f64::from(r.data[i * r.dim + j]) * w[i])
                    .sum::<f64>() as f32
            })
            .collect();
        Ok(Some(encode_f32(&out)))
    }
}
