//! Test helpers: a seeded PRNG and f64 reference distances.
#![allow(dead_code)]

use phenix_core::Metric;

/// splitmix64: small, seeded, good enough for test data.
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [-1, 1).
    pub fn unit(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
    pub fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.unit() * scale).collect()
    }
}

/// Values as an f16 store holds them.
pub fn f16_round(v: &[f32]) -> Vec<f32> {
    v.iter().map(|&x| half::f16::from_f32(x).to_f32()).collect()
}

pub fn dot64(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum()
}

/// The distance of `metric` in f64, with phenix's definitions.
pub fn dist64(metric: Metric, q: &[f32], x: &[f32]) -> f64 {
    match metric {
        Metric::Dot => -dot64(q, x),
        Metric::L2 => q
            .iter()
            .zip(x)
            .map(|(&a, &b)| (a as f64 - b as f64).powi(2))
            .sum::<f64>()
            .sqrt(),
        Metric::Cosine => {
            let (qq, xx) = (dot64(q, q).sqrt(), dot64(x, x).sqrt());
            if qq == 0.0 || xx == 0.0 {
                1.0
            } else {
                (1.0 - dot64(q, x) / (qq * xx)).clamp(0.0, 2.0)
            }
        }
    }
}

/// Brute-force top-k in f64: ascending (distance, slot), over `rows` (already as stored).
pub fn brute_topk(
    metric: Metric,
    q: &[f32],
    rows: &[Vec<f32>],
    k: usize,
    keep: impl Fn(usize) -> bool,
) -> Vec<(usize, f64)> {
    let mut all: Vec<(usize, f64)> = rows
        .iter()
        .enumerate()
        .filter(|(i, _)| keep(*i))
        .map(|(i, r)| (i, dist64(metric, q, r)))
        .collect();
    all.sort_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)));
    all.truncate(k);
    all
}
