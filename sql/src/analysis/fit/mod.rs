//! Control-based normalisation: `phenix_norm_fit(method, profile [, options])` (aggregate),
//! `phenix_norm_apply(fit, profile [, features])` (scalar) and `phenix_fit_info(fit)` (scalar).
//!
//! Methods, following pycytominer 1.7's `normalize`:
//! - `standardize`: `(x - mean) / sd`, population sd (ddof 0), as sklearn's `StandardScaler`. State:
//!   `O(d)` (shifted sums in f64), any number of rows.
//! - `robust`: `(x - median) / (MAD·1.4826 + epsilon)`, epsilon 1e-18 by default, as pycytominer's
//!   `mad_robustize` (`RobustMAD`). Needs all of a group's values (medians): bounded by
//!   [`super::MAX_GROUP_VALUES`] per group.
//! - `sphere`: ZCA / PCA whitening (pycytominer's `Spherize`, default `zca-cor`), fitted on the
//!   eigendecomposition (faer) of the control Gram matrix, which is accumulated `O(d²)` in chunks
//!   through GEMM (split over two threads on a multi-core machine), any number of rows. With singular values `Σ = sqrt(eig(XcᵀXc))` the whitening
//!   matrix is `W = V · diag(sqrt(n-1) / (Σ + epsilon))` (PCA) and `W · Vᵀ` (ZCA): epsilon is added to
//!   the singular values, as pycytominer does. `-cor` variants first standardise with the ddof-0 sd.
//!
//! A fit is a self-describing blob (see [`Fit::encode`]): magic `PHXNFIT\0`, version, method,
//! dimension, row count, FNV-1a hash of the feature list (0 when not given), epsilon, parameters
//! (f64), FNV-1a checksum. `phenix_norm_apply` refuses anything else and names what differs.

//!
//! Files: `blob` (the fit blob's codec and the decoded-fit cache), `aggregate` (the
//! `phenix_norm_fit` aggregate: options and per-group accumulation), `math` (the parameters of each
//! method: medians/MADs, the Gram matrix and its eigendecomposition); here the methods, the
//! registration and `phenix_norm_apply`.

mod aggregate;
mod blob;
mod math;

use super::{arg_err, feature_list, features_hash, profile_arg, pure, type_name, AnalysisError};
use crate::error::{create_scalar, Guarded};
use crate::vector::encode_f32;
use aggregate::NormFit;
use blob::fit_arg;
pub use blob::Fit;
use rusqlite::functions::Context;
use rusqlite::types::ValueRef;
use rusqlite::Connection;

const FIT: &str = "phenix_norm_fit";
const APPLY: &str = "phenix_norm_apply";
/// pycytominer's MAD scale (`scale=1/1.4826` in scipy's `median_abs_deviation`).
pub const MAD_SCALE: f64 = 1.4826;

/// A normalisation method.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// mean / sd (ddof 0).
    Standardize,
    /// median / MAD × 1.4826.
    Robust,
    /// ZCA whitening of the covariance.
    Zca,
    /// PCA whitening of the covariance.
    Pca,
    /// ZCA whitening of the correlation.
    ZcaCor,
    /// PCA whitening of the correlation.
    PcaCor,
}

impl Method {
    fn code(self) -> u32 {
        match self {
            Method::Standardize => 1,
            Method::Robust => 2,
            Method::Zca => 3,
            Method::Pca => 4,
            Method::ZcaCor => 5,
            Method::PcaCor => 6,
        }
    }
    fn from_code(c: u32) -> Option<Method> {
        Some(match c {
            1 => Method::Standardize,
            2 => Method::Robust,
            3 => Method::Zca,
            4 => Method::Pca,
            5 => Method::ZcaCor,
            6 => Method::PcaCor,
            _ => return None,
        })
    }
    /// The name `phenix_fit_info` reports.
    pub fn name(self) -> &'static str {
        match self {
            Method::Standardize => "standardize",
            Method::Robust => "robust",
            Method::Zca => "sphere/zca",
            Method::Pca => "sphere/pca",
            Method::ZcaCor => "sphere/zca-cor",
            Method::PcaCor => "sphere/pca-cor",
        }
    }
    fn is_sphere(self) -> bool {
        matches!(
            self,
            Method::Zca | Method::Pca | Method::ZcaCor | Method::PcaCor
        )
    }
    fn n_params(self, d: usize) -> usize {
        match self {
            Method::Standardize | Method::Robust => 2 * d,
            _ => 2 * d + d * d,
        }
    }
}

/// Registers the three functions.
pub fn register(conn: &Connection) -> rusqlite::Result<()> {
    for n in [2, 3] {
        conn.create_aggregate_function(
            FIT,
            n,
            pure(),
            Guarded {
                name: FIT,
                inner: NormFit,
            },
        )?;
    }
    for n in [2, 3] {
        create_scalar(conn, APPLY, n, pure(), apply_fn)?;
    }
    create_scalar(conn, "phenix_fit_info", 1, pure(), |ctx| {
        let fit = fit_arg(ctx.get_raw(0), "phenix_fit_info")?;
        Ok(fit.info().to_string())
    })?;
    Ok(())
}

fn apply_fn(ctx: &Context<'_>) -> rusqlite::Result<Option<Vec<u8>>> {
    if matches!(ctx.get_raw(0), ValueRef::Null) {
        return Err(AnalysisError::Fit {
            func: APPLY,
            detail: "argument 1 (the fit) is NULL: this row's group has no fit, e.g. a plate without control rows (join the fits with LEFT JOIN to list such rows)".into(),
        }
        .into());
    }
    let fit = fit_arg(ctx.get_raw(0), APPLY)?;
    let Some(x) = profile_arg(ctx.get_raw(1), APPLY, 1)? else {
        return Ok(None);
    };
    if x.len() != fit.dim {
        return Err(AnalysisError::Fit {
            func: APPLY,
            detail: format!(
                "the fit is for profiles of {} features, the profile has {}",
                fit.dim,
                x.len()
            ),
        }
        .into());
    }
    if ctx.len() > 2 && !matches!(ctx.get_raw(2), ValueRef::Null) {
        let names = match ctx.get_raw(2) {
            ValueRef::Text(t) => feature_list(
                &serde_json::Value::String(String::from_utf8_lossy(t).into_owned()),
                APPLY,
                "argument 3 (the profile's feature list)",
            )?,
            other => {
                return Err(arg_err(
                    APPLY,
                    format!(
                        "argument 3 must be the profile's feature list as JSON text: got {}",
                        type_name(other)
                    ),
                )
                .into())
            }
        };
        if names.len() != fit.dim {
            return Err(AnalysisError::Fit {
                func: APPLY,
                detail: format!(
                    "argument 3 lists {} features, the fit has {}",
                    names.len(),
                    fit.dim
                ),
            }
            .into());
        }
        let h = features_hash(&names);
        if fit.features_hash == 0 {
            return Err(AnalysisError::Fit {
                func: APPLY,
                detail: "the fit records no feature list (fit it with options {\"features\": [...]}) so it cannot check argument 3".into(),
            }
            .into());
        }
        if h != fit.features_hash {
            return Err(AnalysisError::Fit {
                func: APPLY,
                detail: format!(
                    "the profile's feature list (hash {h:016x}) differs from the one the fit was made on (hash {:016x}): same length {}, other names or order",
                    fit.features_hash, fit.dim
                ),
            }
            .into());
        }
    }
    let mut out = Vec::with_capacity(x.len());
    fit.apply(&x, &mut out);
    if let Some(j) = out.iter().position(|v| !v.is_finite()) {
        return Err(AnalysisError::Feature {
            func: APPLY,
            index: j,
            name: String::new(),
            detail: format!("normalises to {}, outside float32's range", out[j]),
        }
        .into());
    }
    Ok(Some(encode_f32(&out)))
}
