//! Every kernel path against an f64 reference, on random data and on edge cases.

mod common;
use common::*;
use half::f16;
use phenix_core::{Isa, Kernels, Metric, Row};

/// One table of cases drives every path: (dim, scale, description).
const CASES: &[(usize, f32, &str)] = &[
    (1, 1.0, "dim 1"),
    (3, 1.0, "dim 3"),
    (7, 1.0, "dim 7"),
    (8, 1.0, "dim 8"),
    (15, 1.0, "dim 15"),
    (16, 1.0, "dim 16"),
    (17, 1.0, "dim 17"),
    (31, 1.0, "dim 31"),
    (33, 1.0, "dim 33"),
    (63, 1.0, "dim 63"),
    (65, 1.0, "dim 65"),
    (127, 1.0, "dim 127"),
    (128, 1.0, "dim 128"),
    (255, 1.0, "dim 255"),
    (256, 1.0, "dim 256"),
    (384, 1.0, "dim 384"),
    (769, 1.0, "dim 769"),
    (1536, 1.0, "dim 1536"),
    (256, 60000.0, "large magnitudes near f16 max"),
    (100, 1e-3, "small magnitudes"),
];

fn paths() -> Vec<Kernels> {
    let v: Vec<Kernels> = Isa::available()
        .into_iter()
        .map(|i| Kernels::for_isa(i).expect("available path builds"))
        .collect();
    assert!(!v.is_empty());
    v
}

fn check(got: f32, want: f64, scale: f64, what: &str) {
    let tol = 1e-5 * scale + 1e-6;
    assert!(
        (got as f64 - want).abs() <= tol,
        "{what}: got {got}, want {want} (tolerance {tol})"
    );
}

#[test]
fn every_path_matches_f64_reference() {
    let mut rng = Rng(42);
    let mut checked = 0;
    for k in paths() {
        for &(dim, scale, what) in CASES {
            for _ in 0..5 {
                let q = rng.vec(dim, scale);
                let x = f16_round(&rng.vec(dim, scale));
                let x16: Vec<f16> = x.iter().map(|&v| f16::from_f32(v)).collect();
                // Bound for the accumulated rounding: the sum of absolute terms.
                let abs_dot: f64 = q
                    .iter()
                    .zip(&x)
                    .map(|(a, b)| (*a as f64 * *b as f64).abs())
                    .sum();
                let abs_l2: f64 = q
                    .iter()
                    .zip(&x)
                    .map(|(a, b)| (*a as f64 - *b as f64).powi(2))
                    .sum();
                let xx = dot64(&x, &x);
                let label = format!("{} {what}", k.isa().name());
                for row in [Row::F16(&x16), Row::F32(&x)] {
                    check(
                        k.dot(&q, row),
                        dot64(&q, &x),
                        abs_dot,
                        &format!("{label} dot"),
                    );
                    let l2ref: f64 = abs_l2;
                    check(k.l2_squared(&q, row), l2ref, l2ref, &format!("{label} l2"));
                    let (d, n) = k.dot_and_norm(&q, row);
                    check(d, dot64(&q, &x), abs_dot, &format!("{label} dot/norm"));
                    check(n, xx, xx, &format!("{label} norm"));
                    let qn = k.norm_squared(&q).sqrt();
                    for m in [Metric::Cosine, Metric::L2, Metric::Dot] {
                        let want = dist64(m, &q, &x);
                        let s = match m {
                            Metric::Dot => abs_dot,
                            _ => want.abs().max(1e-3) * 10.0,
                        };
                        check(
                            k.distance(m, &q, qn, row),
                            want,
                            s,
                            &format!("{label} {m:?}"),
                        );
                    }
                    checked += 1;
                }
            }
        }
    }
    assert!(checked >= CASES.len() * 5 * 2);
}

#[test]
fn zero_vectors() {
    for k in paths() {
        let q = vec![0.0f32; 37];
        let x = vec![0.5f32; 37];
        let qn = k.norm_squared(&q).sqrt();
        assert_eq!(k.distance(Metric::Cosine, &q, qn, Row::F32(&x)), 1.0);
        let qn2 = k.norm_squared(&x).sqrt();
        assert_eq!(k.distance(Metric::Cosine, &x, qn2, Row::F32(&q)), 1.0);
        assert_eq!(k.distance(Metric::Dot, &q, qn, Row::F32(&x)), 0.0);
        assert!(
            (k.distance(Metric::L2, &q, qn, Row::F32(&x)) - (37f32 * 0.25).sqrt()).abs() < 1e-5
        );
    }
}

#[test]
fn nan_propagates() {
    for k in paths() {
        let mut q = vec![1.0f32; 40];
        q[39] = f32::NAN;
        let x = vec![1.0f32; 40];
        assert!(k.dot(&q, Row::F32(&x)).is_nan(), "{}", k.isa().name());
        let qn = k.norm_squared(&q).sqrt();
        assert!(k.distance(Metric::Cosine, &q, qn, Row::F32(&x)).is_nan());
    }
}

#[test]
fn simd_paths_exist_on_this_machine() {
    // The CI machine is x86_64 with AVX-512; make sure the SIMD paths are really tested there.
    if cfg!(target_arch = "x86_64") && std::arch::is_x86_feature_detected!("avx512f") {
        assert_eq!(Isa::available(), vec![Isa::Scalar, Isa::Avx2, Isa::Avx512]);
        assert_eq!(Kernels::best().isa(), Isa::Avx512);
    }
}

#[test]
#[should_panic(expected = "differ in length")]
fn length_mismatch_panics_in_safe_api() {
    Kernels::best().dot(&[1.0, 2.0], Row::F32(&[1.0]));
}
