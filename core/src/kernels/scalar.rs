//! The portable path. Eight independent accumulators let the compiler vectorise for the baseline target
//! and keep the rounding pattern close to the SIMD paths.

use half::f16;

const L: usize = 8;

macro_rules! scalar_pair {
    ($name:ident, $t:ty, $conv:expr) => {
        /// `(q·x, x·x)`.
        ///
        /// # Safety
        /// Always safe to call; `unsafe` only to share the kernel-table signature. Lengths must match.
        pub(super) unsafe fn $name(q: &[f32], x: &[$t]) -> (f32, f32) {
            let conv = $conv;
            let mut d = [0f32; L];
            let mut n = [0f32; L];
            let qc = q.chunks_exact(L);
            let xc = x.chunks_exact(L);
            let (qr, xr) = (qc.remainder(), xc.remainder());
            for (qa, xa) in qc.zip(xc) {
                for j in 0..L {
                    let v: f32 = conv(xa[j]);
                    d[j] += qa[j] * v;
                    n[j] += v * v;
                }
            }
            let mut ds: f32 = d.iter().sum();
            let mut ns: f32 = n.iter().sum();
            for (a, b) in qr.iter().zip(xr) {
                let v: f32 = conv(*b);
                ds += a * v;
                ns += v * v;
            }
            (ds, ns)
        }
    };
}

macro_rules! scalar_reduce {
    ($name:ident, $t:ty, $conv:expr, $op:expr) => {
        /// A reduction over `q` and `x`.
        ///
        /// # Safety
        /// Always safe to call; `unsafe` only to share the kernel-table signature. Lengths must match.
        pub(super) unsafe fn $name(q: &[f32], x: &[$t]) -> f32 {
            let conv = $conv;
            let op = $op;
            let mut acc = [0f32; L];
            let qc = q.chunks_exact(L);
            let xc = x.chunks_exact(L);
            let (qr, xr) = (qc.remainder(), xc.remainder());
            for (qa, xa) in qc.zip(xc) {
                for j in 0..L {
                    acc[j] += op(qa[j], conv(xa[j]));
                }
            }
            let mut s: f32 = acc.iter().sum();
            for (a, b) in qr.iter().zip(xr) {
                s += op(*a, conv(*b));
            }
            s
        }
    };
}

fn h(v: f16) -> f32 {
    v.to_f32()
}
fn id(v: f32) -> f32 {
    v
}
fn mul(a: f32, b: f32) -> f32 {
    a * b
}
fn sqd(a: f32, b: f32) -> f32 {
    (a - b) * (a - b)
}

scalar_reduce!(dot_f16, f16, h, mul);
scalar_reduce!(dot_f32, f32, id, mul);
scalar_reduce!(l2_f16, f16, h, sqd);
scalar_reduce!(l2_f32, f32, id, sqd);
scalar_pair!(dotnorm_f16, f16, h);
scalar_pair!(dotnorm_f32, f32, id);
