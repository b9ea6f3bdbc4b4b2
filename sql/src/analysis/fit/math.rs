//! The parameters of each method from a group's accumulated state: medians and MADs (robust), and the
//! whitening matrix from the eigendecomposition of the Gram matrix (sphere).

use super::super::{arg_err, median_in_place, AnalysisError, Rows};
use super::{Method, FIT, MAD_SCALE};
use faer::{Accum, Mat, MatMut, MatRef, Par};

/// `g += ZᵀZ` for the `b × d` row-major block `z`, lower triangle only.
pub(super) fn gram_update(g: MatMut<'_, f64>, z: &[f64], b: usize, d: usize) {
    use faer::linalg::matmul::triangular::{matmul, BlockStructure};
    let z = MatRef::from_row_major_slice(z, b, d);
    matmul(
        g,
        BlockStructure::TriangularLower,
        Accum::Add,
        z.transpose(),
        BlockStructure::Rectangular,
        z,
        BlockStructure::Rectangular,
        1.0f64,
        Par::Seq,
    );
}

pub(super) fn robust_params(
    rows: &Rows,
    epsilon: f64,
    fname: &dyn Fn(usize) -> String,
) -> Result<Vec<f64>, AnalysisError> {
    let (n, d) = (rows.n, rows.dim);
    let mut center = Vec::with_capacity(d);
    let mut scale = Vec::with_capacity(d);
    // Column-major copy, one pass over the rows (the row-major gather per column is cache-hostile).
    let mut cols = vec![0f32; n * d];
    for (i, row) in rows.data.chunks_exact(d).enumerate() {
        for (j, &v) in row.iter().enumerate() {
            cols[j * n + i] = v;
        }
    }
    let mut col = vec![0f64; n];
    for j in 0..d {
        for (c, &v) in col.iter_mut().zip(&cols[j * n..(j + 1) * n]) {
            *c = f64::from(v);
        }
        let med = median_in_place(&mut col);
        for c in col.iter_mut() {
            *c = (*c - med).abs();
        }
        let mad = median_in_place(&mut col) * MAD_SCALE;
        if mad == 0.0 {
            return Err(AnalysisError::Feature {
                func: FIT,
                index: j,
                name: fname(j),
                detail: format!(
                    "has MAD 0 over the {n} control rows (at least half of them share one value); robust normalisation would divide by epsilon ({epsilon:e}); drop it (phenix_feature_select) first"
                ),
            });
        }
        center.push(med);
        scale.push(mad + epsilon);
    }
    Ok([center, scale].concat())
}

/// What [`sphere_params`] needs of a group besides its Gram matrix: the row count, the dimension, the
/// shift (the group's first row) and the sums of the shifted rows.
pub(super) struct Moments<'a> {
    pub(super) n: u64,
    pub(super) dim: usize,
    pub(super) shift: &'a [f64],
    pub(super) s1: &'a [f64],
}

pub(super) fn sphere_params(
    acc: Moments<'_>,
    g0: &Mat<f64>,
    method: Method,
    epsilon: f64,
    pad: bool,
    fname: &dyn Fn(usize) -> String,
) -> Result<Vec<f64>, AnalysisError> {
    let (n, d) = (acc.n as usize, acc.dim);
    if n < 2 {
        return Err(AnalysisError::TooFewRows {
            func: FIT,
            detail: format!(
                "sphering needs at least 2 control rows (a covariance); the group has {n}"
            ),
        });
    }
    let nf = n as f64;
    // Centred Gram: Σ (x-K)(x-K)ᵀ - s1 s1ᵀ / n.
    let mean: Vec<f64> = (0..d).map(|j| acc.s1[j] / nf).collect();
    let mut g = Mat::<f64>::from_fn(d, d, |i, j| {
        g0[(i.max(j), i.min(j))] - acc.s1[i] * acc.s1[j] / nf
    });
    let center: Vec<f64> = (0..d).map(|j| acc.shift[j] + mean[j]).collect();
    let cor = matches!(method, Method::ZcaCor | Method::PcaCor);
    let mut scale = vec![1.0f64; d];
    for j in 0..d {
        let var = g[(j, j)] / nf;
        if var <= 0.0 {
            return Err(AnalysisError::Feature {
                func: FIT,
                index: j,
                name: fname(j),
                detail: format!("is constant over the {n} control rows; it makes the covariance singular, drop it (phenix_feature_select) before sphering"),
            });
        }
        if cor {
            scale[j] = var.sqrt();
        }
    }
    if cor {
        g = Mat::<f64>::from_fn(d, d, |i, j| g[(i, j)] / (scale[i] * scale[j]));
    }
    let evd = g.self_adjoint_eigen(faer::Side::Lower).map_err(|e| {
        arg_err(
            FIT,
            format!("the eigendecomposition did not converge ({e:?})"),
        )
    })?;
    let u = evd.U();
    let s = evd.S().column_vector();
    // Descending order, as numpy's SVD.
    let lam: Vec<f64> = (0..d).rev().map(|k| s[k].max(0.0)).collect();
    let cols: Vec<usize> = (0..d).rev().collect();
    let lmax = lam[0];
    let tol = lmax * d.max(n) as f64 * 1e-13;
    let rank = lam.iter().filter(|&&l| l > tol).count();
    let full = d.min(n - 1);
    if rank < full || rank == 0 {
        return Err(AnalysisError::TooFewRows {
            func: FIT,
            detail: format!(
                "the {n} control rows span only {rank} dimensions of the {d} features (expected {full}): some features are linear combinations of others (duplicated or constant); drop them with phenix_feature_select (correlation_threshold) before sphering"
            ),
        });
    }
    if rank < d && !pad {
        return Err(AnalysisError::TooFewRows {
            func: FIT,
            detail: format!(
                "sphering {d} features needs at least {} control rows for a full-rank covariance; the group has {n} (rank {rank}). Use fewer features (phenix_feature_select), more controls, method 'robust' or 'standardize', or option \"pad\": true to whiten as pycytominer does (the smallest nonzero singular value stands in for the {} missing ones, regularised by epsilon = {epsilon:e})",
                d + 1,
                d - rank
            ),
        });
    }
    let mut sig: Vec<f64> = lam.iter().map(|l| l.sqrt()).collect();
    for k in rank..d {
        sig[k] = sig[rank - 1];
    }
    let f: Vec<f64> = sig
        .iter()
        .map(|s| (nf - 1.0).sqrt() / (s + epsilon))
        .collect();
    // V with columns in descending order; sign fixed so the largest-magnitude entry is positive.
    let mut v = Mat::<f64>::from_fn(d, d, |i, k| u[(i, cols[k])]);
    for k in 0..d {
        let mut best = 0usize;
        for i in 0..d {
            if v[(i, k)].abs() > v[(best, k)].abs() {
                best = i;
            }
        }
        if v[(best, k)] < 0.0 {
            for i in 0..d {
                v[(i, k)] = -v[(i, k)];
            }
        }
    }
    let vf = Mat::<f64>::from_fn(d, d, |i, k| v[(i, k)] * f[k]);
    let w = match method {
        Method::Pca | Method::PcaCor => vf,
        _ => {
            let mut w = Mat::<f64>::zeros(d, d);
            faer::linalg::matmul::matmul(
                w.as_mut(),
                Accum::Replace,
                vf.as_ref(),
                v.transpose(),
                1.0,
                Par::Seq,
            );
            w
        }
    };
    let mut params = Vec::with_capacity(2 * d + d * d);
    params.extend_from_slice(&center);
    params.extend_from_slice(&scale);
    for i in 0..d {
        for j in 0..d {
            params.push(w[(i, j)]);
        }
    }
    Ok(params)
}
