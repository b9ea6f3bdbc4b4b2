//! The `phenix_norm_fit` aggregate: its options, and the running state of one group (shifted sums,
//! all rows for medians, or the Gram matrix in chunks); the parameters are computed in `math.rs`.

use super::super::{
    arg_err, check_keys, feature_list, features_hash, num_opt, options_arg, profile_arg, type_name,
    AnalysisError, Rows,
};
use super::math::{gram_update, robust_params, sphere_params, Moments};
use super::{Fit, Method, FIT};
use faer::Mat;
use rusqlite::functions::{Aggregate, Context};
use rusqlite::types::ValueRef;

/// Rows per GEMM update of the sphering Gram matrix.
const CHUNK: usize = 1024;

/// `phenix_norm_fit`.
pub(super) struct NormFit;

/// Options of one fit.
struct Opts {
    method: Method,
    epsilon: f64,
    pad: bool,
    features: Option<Vec<String>>,
    method_text: String,
    options_text: Option<String>,
}

/// The running state of one group.
#[derive(Default)]
pub(super) struct FitAcc {
    opts: Option<Opts>,
    n: u64,
    dim: usize,
    /// First row (the shift of the sums).
    shift: Vec<f64>,
    s1: Vec<f64>,
    s2: Vec<f64>,
    /// Robust: all rows.
    rows: Rows,
    /// Sphere: the pending chunk (shifted), row-major.
    chunk: Vec<f64>,
    gram: Option<Mat<f64>>,
    /// A second Gram accumulator for the second half of each chunk, filled on another thread when
    /// the machine has more than one core (summed into `gram` at the end).
    gram2: Option<Mat<f64>>,
}

fn parse_opts(ctx: &Context<'_>) -> Result<Opts, AnalysisError> {
    let method_text = match ctx.get_raw(0) {
        ValueRef::Text(t) => String::from_utf8_lossy(t).into_owned(),
        other => {
            return Err(arg_err(
                FIT,
                format!(
                    "argument 1 is the method ('standardize', 'robust' or 'sphere'): got {}",
                    type_name(other)
                ),
            ))
        }
    };
    let raw_opts = (ctx.len() > 2).then(|| ctx.get_raw(2));
    let options_text = match raw_opts {
        Some(ValueRef::Text(t)) => Some(String::from_utf8_lossy(t).into_owned()),
        _ => None,
    };
    let opts = options_arg(raw_opts, FIT)?;
    let features = match opts.get("features") {
        None | Some(serde_json::Value::Null) => None,
        Some(v) => Some(feature_list(v, FIT, "option \"features\"")?),
    };
    let (method, epsilon, pad) = match method_text.to_ascii_lowercase().as_str() {
        "standardize" => {
            check_keys(&opts, FIT, &["features"])?;
            (Method::Standardize, 0.0, false)
        }
        "robust" | "mad_robustize" => {
            check_keys(&opts, FIT, &["features", "epsilon"])?;
            (
                Method::Robust,
                num_opt(&opts, FIT, "epsilon", 1e-18)?,
                false,
            )
        }
        "sphere" | "spherize" => {
            check_keys(&opts, FIT, &["features", "epsilon", "method", "pad"])?;
            let m = match opts.get("method").and_then(|v| v.as_str()).map(str::to_ascii_lowercase) {
                None => Method::ZcaCor,
                Some(s) => match s.as_str() {
                    "zca" => Method::Zca,
                    "pca" => Method::Pca,
                    "zca-cor" => Method::ZcaCor,
                    "pca-cor" => Method::PcaCor,
                    _ => {
                        return Err(arg_err(
                            FIT,
                            format!("sphere option \"method\" must be \"zca\", \"pca\", \"zca-cor\" or \"pca-cor\": got \"{s}\""),
                        ))
                    }
                },
            };
            if opts.get("method").is_some_and(|v| !v.is_string()) {
                return Err(arg_err(FIT, "sphere option \"method\" must be a string"));
            }
            let pad = match opts.get("pad") {
                None | Some(serde_json::Value::Null) => false,
                Some(serde_json::Value::Bool(b)) => *b,
                Some(v) => {
                    return Err(arg_err(
                        FIT,
                        format!("option \"pad\" must be true or false: got {v}"),
                    ))
                }
            };
            (m, num_opt(&opts, FIT, "epsilon", 1e-6)?, pad)
        }
        other => {
            return Err(arg_err(
                FIT,
                format!(
                "unknown method '{other}'; use 'standardize', 'robust' (median/MAD) or 'sphere'"
            ),
            ))
        }
    };
    if epsilon < 0.0 {
        return Err(arg_err(
            FIT,
            format!("option \"epsilon\" must be >= 0: got {epsilon}"),
        ));
    }
    Ok(Opts {
        method,
        epsilon,
        pad,
        features,
        method_text,
        options_text,
    })
}

impl Aggregate<FitAcc, Option<Vec<u8>>> for NormFit {
    fn init(&self, _: &mut Context<'_>) -> rusqlite::Result<FitAcc> {
        Ok(FitAcc::default())
    }

    fn step(&self, ctx: &mut Context<'_>, acc: &mut FitAcc) -> rusqlite::Result<()> {
        if let Some(o) = &acc.opts {
            let same_method =
                matches!(ctx.get_raw(0), ValueRef::Text(t) if t == o.method_text.as_bytes());
            let same_opts = match (ctx.len() > 2).then(|| ctx.get_raw(2)) {
                None | Some(ValueRef::Null) => o.options_text.is_none(),
                Some(ValueRef::Text(t)) => o.options_text.as_deref().map(str::as_bytes) == Some(t),
                _ => false,
            };
            if !same_method || !same_opts {
                return Err(arg_err(
                    FIT,
                    "the method and options must be the same on every row of a group",
                )
                .into());
            }
        } else {
            acc.opts = Some(parse_opts(ctx)?);
        }
        let Some(x) = profile_arg(ctx.get_raw(1), FIT, 1)? else {
            return Err(arg_err(
                FIT,
                format!("profile {} of the group is NULL; fit on rows that have profiles (add `AND profile IS NOT NULL`)", acc.n + 1),
            )
            .into());
        };
        let opts = acc.opts.as_ref().expect("set");
        if let Some(f) = &opts.features {
            if f.len() != x.len() {
                return Err(AnalysisError::Fit {
                    func: FIT,
                    detail: format!(
                        "option \"features\" lists {} names, the profiles have {} elements",
                        f.len(),
                        x.len()
                    ),
                }
                .into());
            }
        }
        let method = opts.method;
        if acc.n == 0 {
            acc.dim = x.len();
            acc.shift = x.iter().map(|&v| f64::from(v)).collect();
            acc.s1 = vec![0.0; acc.dim];
            if method == Method::Standardize {
                acc.s2 = vec![0.0; acc.dim];
            }
            if method.is_sphere() {
                if acc.dim > 8192 {
                    return Err(arg_err(
                        FIT,
                        format!(
                            "sphering {} features needs a {0}x{0} matrix; at most 8192 features",
                            acc.dim
                        ),
                    )
                    .into());
                }
                acc.gram = Some(Mat::zeros(acc.dim, acc.dim));
            }
        } else if x.len() != acc.dim {
            return Err(AnalysisError::LengthMismatch {
                func: FIT,
                row: acc.n + 1,
                got: x.len(),
                expected: acc.dim,
            }
            .into());
        }
        acc.n += 1;
        match method {
            Method::Standardize => {
                for ((s1, s2), (&v, k)) in acc
                    .s1
                    .iter_mut()
                    .zip(&mut acc.s2)
                    .zip(x.iter().zip(&acc.shift))
                {
                    let z = f64::from(v) - k;
                    *s1 += z;
                    *s2 += z * z;
                }
            }
            Method::Robust => acc.rows.push(&x, FIT)?,
            _ => {
                for ((s1, &v), k) in acc.s1.iter_mut().zip(&x).zip(&acc.shift) {
                    let z = f64::from(v) - k;
                    *s1 += z;
                    acc.chunk.push(z);
                }
                if acc.chunk.len() >= CHUNK * acc.dim {
                    acc.flush();
                }
            }
        }
        Ok(())
    }

    fn finalize(
        &self,
        _: &mut Context<'_>,
        acc: Option<FitAcc>,
    ) -> rusqlite::Result<Option<Vec<u8>>> {
        let Some(mut acc) = acc else {
            return Err(AnalysisError::TooFewRows {
                func: FIT,
                detail: "the group has no rows: there are no control rows to fit on (check the WHERE clause that selects the controls, e.g. role = 'DMSO')".into(),
            }
            .into());
        };
        let Some(opts) = acc.opts.take() else {
            return Err(AnalysisError::TooFewRows {
                func: FIT,
                detail: "the group has no rows".into(),
            }
            .into());
        };
        let names = opts.features.as_deref();
        let fname = |j: usize| names.map_or(String::new(), |n| format!(" ({})", n[j]));
        let n = acc.n;
        let d = acc.dim;
        let params = match opts.method {
            Method::Standardize => {
                let nf = n as f64;
                let mut center = Vec::with_capacity(d);
                let mut scale = Vec::with_capacity(d);
                for j in 0..d {
                    let m = acc.s1[j] / nf;
                    let var = (acc.s2[j] / nf - m * m).max(0.0);
                    if var == 0.0 {
                        return Err(AnalysisError::Feature {
                            func: FIT,
                            index: j,
                            name: fname(j),
                            detail: format!("is constant over the {n} control rows (sd 0); drop it (phenix_feature_select) before standardizing"),
                        }
                        .into());
                    }
                    center.push(acc.shift[j] + m);
                    scale.push(var.sqrt());
                }
                [center, scale].concat()
            }
            Method::Robust => robust_params(&acc.rows, opts.epsilon, &fname)?,
            _ => {
                acc.flush();
                let gram = acc.take_gram();
                sphere_params(
                    Moments {
                        n: acc.n,
                        dim: acc.dim,
                        shift: &acc.shift,
                        s1: &acc.s1,
                    },
                    &gram,
                    opts.method,
                    opts.epsilon,
                    opts.pad,
                    &fname,
                )?
            }
        };
        let fit = Fit {
            method: opts.method,
            dim: d,
            n_rows: n,
            features_hash: names.map_or(0, features_hash),
            epsilon: opts.epsilon,
            params,
        };
        Ok(Some(fit.encode()))
    }
}

impl FitAcc {
    /// Adds the pending chunk's `ZᵀZ` to the Gram matrix (GEMM, lower triangle only: half the
    /// flops). With two or more cores the chunk is split in two halves accumulated on two threads.
    fn flush(&mut self) {
        let d = self.dim;
        let b = self.chunk.len() / d.max(1);
        if b == 0 {
            return;
        }
        let threads = crate::table::registry::search_threads();
        let g = self.gram.as_mut().expect("sphere");
        if threads >= 2 && b >= 256 {
            let g2 = self.gram2.get_or_insert_with(|| Mat::zeros(d, d));
            let half = b / 2;
            let (z1, z2) = self.chunk.split_at(half * d);
            std::thread::scope(|sc| {
                sc.spawn(|| gram_update(g2.as_mut(), z2, b - half, d));
                gram_update(g.as_mut(), z1, half, d);
            });
        } else {
            gram_update(g.as_mut(), &self.chunk, b, d);
        }
        self.chunk.clear();
    }

    /// The Gram matrix with both accumulators summed (lower triangle valid).
    fn take_gram(&mut self) -> Mat<f64> {
        let mut g = self.gram.take().expect("sphere");
        if let Some(g2) = self.gram2.take() {
            g += g2;
        }
        g
    }
}
