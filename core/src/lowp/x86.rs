//! x86_64 pieces of the reduced-precision batch path: CPU and OS checks, the AMX tile configuration, the
//! two score micro-kernels (AMX `tdpbf16ps` and AVX512-BF16 `vdpbf16ps`), `f32 → bf16` conversion and the
//! score filter.
//!
//! Every micro-kernel computes the same 32 × 32 block of scores into the same layout, so the driver in
//! [`super`] does not care which one ran:
//!
//! - `xb` holds rows as `bf16` in AMX `A` tiles: for each tile of 16 rows and each step `ks` of 32
//!   dimensions (`KS = dp/32` steps, zero-padded), 16 lines of 64 bytes (row `m`'s 32 elements), 1 KiB
//!   contiguous at `(rt · KS + ks) · 512` `u16`. A block of 32 rows is two consecutive row tiles.
//! - `qv` holds queries in the VNNI layout the AMX `B` operand wants: for each tile of 16 queries and each
//!   step of 32 dimensions, 16 lines of 64 bytes; line `kk` holds, for query `n = 0..16`, the pair
//!   `(q_n[32·ks + 2kk], q_n[32·ks + 2kk + 1])`. One such 1 KiB tile is `(qt · KS + ks) · 512` `u16` in.
//! - `c` receives 4 tiles of 16 × 16 `f32` (1 KiB each): tile `(rt, qt)` (row tile, query tile) at
//!   `(2·rt + qt) · 256`, its line `m` = row `16·rt + m`, lane `n` = query `16·qt + n`.

use std::arch::asm;
use std::arch::x86_64::*;

/// Whether the CPU has AMX-TILE and AMX-BF16 (CPUID leaf 7, EDX bits 24 and 22), the OS enables the
/// tile state in XCR0 (bits 17 and 18), and the AVX-512 pieces the driver uses (conversion, filter).
pub(super) fn amx_cpu() -> bool {
    if !avx512_bf16_cpu() {
        return false;
    }
    // SAFETY: CPUID is available on every x86_64 CPU; leaf 7 exists when the max leaf is >= 7.
    let max = __cpuid(0).eax;
    if max < 7 {
        return false;
    }
    let l7 = __cpuid_count(7, 0);
    let tile = (l7.edx >> 24) & 1 == 1;
    let bf16 = (l7.edx >> 22) & 1 == 1;
    if !(tile && bf16) {
        return false;
    }
    // XCR0 bits 17 (XTILECFG) and 18 (XTILEDATA): the OS supports saving the tile state.
    // SAFETY: `xgetbv` needs OSXSAVE (CPUID.1:ECX bit 27), checked first.
    let osxsave = (__cpuid(1).ecx >> 27) & 1 == 1;
    if !osxsave {
        return false;
    }
    let xcr0 = unsafe { xgetbv0() };
    xcr0 & (3 << 17) == 3 << 17
}

/// XCR0.
///
/// # Safety
/// The CPU must support XSAVE with OSXSAVE set.
#[target_feature(enable = "xsave")]
unsafe fn xgetbv0() -> u64 {
    // SAFETY: the caller checked OSXSAVE, so `xgetbv` with ECX = 0 does not fault.
    unsafe { _xgetbv(0) }
}

/// Whether the CPU runs the AVX-512 F + BF16 code of this module.
pub(super) fn avx512_bf16_cpu() -> bool {
    std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512bw")
        && std::arch::is_x86_feature_detected!("avx512bf16")
}

/// Asks Linux for the AMX tile-data state (`arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`),
/// once per process. `false` when the kernel refuses (or is too old to know the request).
pub(super) fn amx_permission() -> bool {
    static PERM: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *PERM.get_or_init(|| {
        if std::env::var_os("PHENIX_NO_AMX").is_some() {
            return false;
        }
        const ARCH_GET_XCOMP_PERM: libc::c_long = 0x1022;
        const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
        const XFEATURE_XTILEDATA: libc::c_long = 18;
        // SAFETY: arch_prctl with these codes only reads/writes the process's xstate permission
        // (and `mask`, a valid u64 we own); unknown codes return -EINVAL.
        unsafe {
            if libc::syscall(
                libc::SYS_arch_prctl,
                ARCH_REQ_XCOMP_PERM,
                XFEATURE_XTILEDATA,
            ) != 0
            {
                return false;
            }
            let mut mask: u64 = 0;
            if libc::syscall(
                libc::SYS_arch_prctl,
                ARCH_GET_XCOMP_PERM,
                &mut mask as *mut u64,
            ) != 0
            {
                return false;
            }
            mask & (1 << XFEATURE_XTILEDATA) != 0
        }
    })
}

/// The AMX palette-1 configuration: tiles 0–7 all 16 rows × 64 bytes.
#[repr(C, align(64))]
struct TileCfg([u8; 64]);

impl TileCfg {
    fn all_16x64() -> TileCfg {
        let mut c = [0u8; 64];
        c[0] = 1; // palette 1
        for t in 0..8 {
            c[16 + 2 * t..18 + 2 * t].copy_from_slice(&64u16.to_le_bytes());
            c[48 + t] = 16;
        }
        TileCfg(c)
    }
}

/// Loads the tile configuration on this thread; releases the tiles on drop. Not `Send`: the
/// configuration belongs to the thread that loaded it.
pub(super) struct AmxGuard(std::marker::PhantomData<*const ()>);

impl AmxGuard {
    /// # Safety
    /// [`amx_cpu`] and [`amx_permission`] must both have returned `true`.
    pub(super) unsafe fn new() -> AmxGuard {
        let cfg = TileCfg::all_16x64();
        // SAFETY: the CPU has AMX and the process has the tile-data permission (caller); the 64-byte
        // configuration is valid for palette 1 (16 rows × 64 bytes per tile, within the palette limits).
        unsafe {
            asm!("ldtilecfg [{c}]", c = in(reg) cfg.0.as_ptr(), options(nostack, readonly));
        }
        AmxGuard(std::marker::PhantomData)
    }
}

impl Drop for AmxGuard {
    fn drop(&mut self) {
        // SAFETY: a guard exists only after `ldtilecfg` succeeded on this thread (it is not `Send`).
        unsafe { asm!("tilerelease", options(nostack, nomem)) };
    }
}

/// AMX: the 32 × 32 score block for the two row tiles at `a` against the query tiles `b0` and `b1`, over
/// `ks` steps of 32 dimensions, into `c` (layouts in the module docs).
///
/// # Safety
/// An [`AmxGuard`] is live on this thread; `a` points at `2·ks` consecutive 1 KiB row tiles; `b0`, `b1`
/// at `ks` consecutive 1 KiB VNNI tiles each; `c` at 1,024 writable `f32`.
#[inline]
pub(super) unsafe fn amx_block(
    a: *const u16,
    b0: *const u16,
    b1: *const u16,
    ks: usize,
    c: *mut f32,
) {
    // SAFETY: the second row tile starts `ks` tiles after the first (caller).
    let a1 = unsafe { a.add(512 * ks) };
    // SAFETY: the caller guarantees the tile configuration and every address read or written: each
    // `tileloadd` reads 16 lines of 64 bytes at stride 64 (one 1 KiB tile), each `tilestored`
    // writes 16 × 64 bytes. The loop runs `ks` >= 1 times. Tiles 0–3 accumulate, 4–5 hold rows, 6–7
    // queries.
    unsafe {
        asm!(
            "tilezero tmm0",
            "tilezero tmm1",
            "tilezero tmm2",
            "tilezero tmm3",
            // Each product issued as soon as its operands are loaded (about 4 % faster than four
            // loads then four products, measured by `lowp::tests::amx_loop_throughput`).
            "2:",
            "tileloadd tmm4, [{a0} + {s64}*1]",
            "tileloadd tmm6, [{b0} + {s64}*1]",
            "tdpbf16ps tmm0, tmm4, tmm6",
            "tileloadd tmm7, [{b1} + {s64}*1]",
            "tdpbf16ps tmm1, tmm4, tmm7",
            "tileloadd tmm5, [{a1} + {s64}*1]",
            "tdpbf16ps tmm2, tmm5, tmm6",
            "tdpbf16ps tmm3, tmm5, tmm7",
            "add {a0}, 1024",
            "add {a1}, 1024",
            "add {b0}, 1024",
            "add {b1}, 1024",
            "dec {n}",
            "jnz 2b",
            "tilestored [{c} + {s64}*1], tmm0",
            "add {c}, 1024",
            "tilestored [{c} + {s64}*1], tmm1",
            "add {c}, 1024",
            "tilestored [{c} + {s64}*1], tmm2",
            "add {c}, 1024",
            "tilestored [{c} + {s64}*1], tmm3",
            a0 = inout(reg) a => _,
            a1 = inout(reg) a1 => _,
            b0 = inout(reg) b0 => _,
            b1 = inout(reg) b1 => _,
            n = inout(reg) ks => _,
            c = inout(reg) c => _,
            s64 = in(reg) 64usize,
            options(nostack),
        );
    }
}

/// AVX512-BF16: the same 32 × 32 score block as [`amx_block`], with `vdpbf16ps` (8 rows × 32 queries
/// in 16 registers at a time).
///
/// # Safety
/// As [`amx_block`], with [`avx512_bf16_cpu`] instead of the AMX guard.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
pub(super) unsafe fn dpbf16_block(
    a: *const u16,
    b0: *const u16,
    b1: *const u16,
    ks: usize,
    c: *mut f32,
) {
    for rt in 0..2 {
        for half in 0..2 {
            let r0 = rt * 16 + half * 8;
            let mut acc0 = [_mm512_setzero_ps(); 8];
            let mut acc1 = [_mm512_setzero_ps(); 8];
            for s in 0..ks {
                for kk in 0..16 {
                    // SAFETY: the VNNI tiles hold `ks` · 16 lines of 32 `u16`; the row tiles `2·ks` tiles of
                    // 512 `u16` and `at + 1` stays inside; the caller guarantees both buffers.
                    unsafe {
                        let off = (s * 16 + kk) * 32;
                        let bq0: __m512bh =
                            std::mem::transmute(_mm512_loadu_si512(b0.add(off) as *const _));
                        let bq1: __m512bh =
                            std::mem::transmute(_mm512_loadu_si512(b1.add(off) as *const _));
                        for r in 0..8 {
                            let row = r0 + r;
                            let at = ((row / 16) * ks + s) * 512 + (row % 16) * 32 + 2 * kk;
                            let pair = (a.add(at) as *const u32).read_unaligned();
                            let av: __m512bh = std::mem::transmute(_mm512_set1_epi32(pair as i32));
                            acc0[r] = _mm512_dpbf16_ps(acc0[r], av, bq0);
                            acc1[r] = _mm512_dpbf16_ps(acc1[r], av, bq1);
                        }
                    }
                }
            }
            for r in 0..8 {
                let m = half * 8 + r;
                // SAFETY: `c` holds 4 tiles of 256 `f32` (caller); the offsets stay inside.
                unsafe {
                    _mm512_storeu_ps(c.add((2 * rt) * 256 + m * 16), acc0[r]);
                    _mm512_storeu_ps(c.add((2 * rt + 1) * 256 + m * 16), acc1[r]);
                }
            }
        }
    }
}

/// `dst[i] = bf16(src[i] · scale)` (round to nearest even), for `src.len() == dst.len()`.
///
/// # Safety
/// [`avx512_bf16_cpu`] must hold.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
pub(super) unsafe fn to_bf16(src: &[f32], scale: f32, dst: &mut [u16]) {
    let n = src.len().min(dst.len());
    let s = _mm512_set1_ps(scale);
    let mut i = 0;
    while i + 32 <= n {
        // SAFETY: `i + 32 <= n` for both slices.
        unsafe {
            let lo = _mm512_mul_ps(_mm512_loadu_ps(src.as_ptr().add(i)), s);
            let hi = _mm512_mul_ps(_mm512_loadu_ps(src.as_ptr().add(i + 16)), s);
            let v: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(hi, lo));
            _mm512_storeu_si512(dst.as_mut_ptr().add(i) as *mut _, v);
        }
        i += 32;
    }
    while i < n {
        dst[i] = super::bf16_rne(src[i] * scale);
        i += 1;
    }
}

/// Scans one 32 × 32 score block: for a live row `r` (of 32; `live[r]` is `0xFFFF`, or 0 for a row that
/// may not be returned) and query lane `j` (of 32), the score passes when
/// `c ≥ theta[j] + alpha[j]·fa[r] − beta[j]·fb[r]` (two FMAs; the `alpha` term only when `A`, the `beta`
/// term only when `B`, so the metric pays only for the terms it has; NaN never passes). Calls
/// `hit(r, j, score)` for each passing pair.
///
/// Each 16 × 16 tile is first tested as a whole: the column maxima of its scores against
/// `theta + alpha·famin − beta·fbmax` (`famin`, `fbmax` the smallest `fa` and largest `fb` of the
/// tile's live rows; `alpha`, `beta` ≥ 0), which is at most every row's threshold, so a tile with no
/// lane passing holds no passing score. This costs one `vmaxps` per line; the per-row test runs only
/// for tiles that pass (rare once the bounds have tightened). A tile with no live row
/// (`tile_live[rt]` false) is skipped.
///
/// # Safety
/// [`avx512_bf16_cpu`] must hold; `c` holds 1,024 `f32` in the block layout.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn filter_block<const A: bool, const B: bool>(
    c: &[f32; 1024],
    theta: &[f32],
    alpha: &[f32],
    beta: &[f32],
    fa: &[f32],
    fb: &[f32],
    live: &[u16],
    tile: [(bool, f32, f32); 2],
    mut hit: impl FnMut(usize, usize, f32),
) {
    assert!(theta.len() >= 32 && alpha.len() >= 32 && beta.len() >= 32);
    assert!(fa.len() >= 32 && fb.len() >= 32 && live.len() >= 32);
    let cp = c.as_ptr();
    for qt in 0..2 {
        // SAFETY: each slice holds at least 32 entries (asserted), read 16 at a time at 0 and 16.
        let (th, al, be) = unsafe {
            (
                _mm512_loadu_ps(theta.as_ptr().add(16 * qt)),
                _mm512_loadu_ps(alpha.as_ptr().add(16 * qt)),
                _mm512_loadu_ps(beta.as_ptr().add(16 * qt)),
            )
        };
        for (rt, &(tile_live, famin, fbmax)) in tile.iter().enumerate() {
            if !tile_live {
                continue;
            }
            // SAFETY: tile `2·rt + qt` (< 4) of `c` is 256 f32 at `(2·rt + qt)·256`.
            let base = unsafe { cp.add((2 * rt + qt) * 256) };
            // SAFETY: lines `m < 16` of the tile, 16 f32 each.
            let mut mx = unsafe { _mm512_loadu_ps(base) };
            for m in 1..16 {
                // SAFETY: as above.
                mx = _mm512_max_ps(mx, unsafe { _mm512_loadu_ps(base.add(16 * m)) });
            }
            let mut t = th;
            if A {
                t = _mm512_fmadd_ps(al, _mm512_set1_ps(famin), t);
            }
            if B {
                t = _mm512_fnmadd_ps(be, _mm512_set1_ps(fbmax), t);
            }
            if _mm512_cmp_ps_mask::<_CMP_GE_OQ>(mx, t) == 0 {
                continue;
            }
            for m in 0..16 {
                let r = 16 * rt + m;
                // SAFETY: line `m` of the tile; `fa`/`fb`/`live` hold 32 entries (asserted).
                let mut mask = unsafe {
                    let sc = _mm512_loadu_ps(base.add(16 * m));
                    let mut t = th;
                    if A {
                        t = _mm512_fmadd_ps(al, _mm512_set1_ps(*fa.get_unchecked(r)), t);
                    }
                    if B {
                        t = _mm512_fnmadd_ps(be, _mm512_set1_ps(*fb.get_unchecked(r)), t);
                    }
                    _mm512_mask_cmp_ps_mask::<_CMP_GE_OQ>(*live.get_unchecked(r), sc, t)
                };
                while mask != 0 {
                    let j = mask.trailing_zeros() as usize;
                    mask &= mask - 1;
                    hit(r, 16 * qt + j, c[(2 * rt + qt) * 256 + 16 * m + j]);
                }
            }
        }
    }
}

/// Operands for the peak microbenchmarks: 512 pseudo-random `bf16` in ±1/16 (with all-zero operands
/// this CPU runs `tdpbf16ps` about 25 % faster than on real data, which would overstate the peak).
fn peak_operands() -> [u16; 512] {
    let mut z = 0x9E37_79B9_7F4A_7C15u64;
    std::array::from_fn(|_| {
        z = z
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        super::bf16_rne(((z >> 40) as f32 / 16_777_216.0 - 0.5) / 8.0)
    })
}

/// 1 KiB, 64-byte aligned.
#[repr(C, align(64))]
struct Line64([u16; 512]);

/// Peak microbenchmark: `iters` × 4 `tdpbf16ps` on resident tiles of pseudo-random data (no loads, no
/// stores in the loop). Returns the FLOPs done (2 per multiply-add).
///
/// # Safety
/// An [`AmxGuard`] is live on this thread.
pub(super) unsafe fn amx_peak(iters: u64) -> f64 {
    let data = Line64(peak_operands());
    let ops = &data.0;
    // SAFETY: the tile configuration is loaded (caller); the loads read the 1 KiB `data` at stride 64.
    unsafe {
        asm!(
            "tilezero tmm0",
            "tilezero tmm1",
            "tilezero tmm2",
            "tilezero tmm3",
            "tileloadd tmm4, [{a} + {s}*1]",
            "tileloadd tmm5, [{a} + {s}*1]",
            "tileloadd tmm6, [{a} + {s}*1]",
            "tileloadd tmm7, [{a} + {s}*1]",
            "2:",
            "tdpbf16ps tmm0, tmm4, tmm6",
            "tdpbf16ps tmm1, tmm4, tmm7",
            "tdpbf16ps tmm2, tmm5, tmm6",
            "tdpbf16ps tmm3, tmm5, tmm7",
            "dec {n}",
            "jnz 2b",
            a = in(reg) ops.as_ptr(),
            s = in(reg) 64usize,
            n = inout(reg) iters.max(1) => _,
            options(nostack, readonly),
        );
    }
    iters.max(1) as f64 * 4.0 * (16.0 * 16.0 * 32.0 * 2.0)
}

/// Peak microbenchmark: `iters` × 16 independent `vdpbf16ps` (register operands only). Returns FLOPs.
///
/// # Safety
/// [`avx512_bf16_cpu`] must hold.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
pub(super) unsafe fn dpbf16_peak(iters: u64) -> f64 {
    let ops = peak_operands();
    // SAFETY: `ops` holds 512 u16, the load reads the first 32; register-only AVX512-BF16 arithmetic
    // otherwise; the CPU supports it (caller).
    let a: __m512bh = unsafe { std::mem::transmute(_mm512_loadu_si512(ops.as_ptr() as *const _)) };
    // Opaque to the optimiser, so nothing is folded; the accumulators stay in registers.
    let a = std::hint::black_box(a);
    let mut acc = [_mm512_setzero_ps(); 16];
    for _ in 0..iters.max(1) {
        for v in acc.iter_mut() {
            *v = _mm512_dpbf16_ps(*v, a, a);
        }
    }
    let s = acc
        .iter()
        .fold(_mm512_setzero_ps(), |x, y| _mm512_add_ps(x, *y));
    std::hint::black_box(s);
    iters.max(1) as f64 * 16.0 * 16.0 * 2.0 * 2.0
}

/// Loads `f16` elements `[i, i + 32)` of `x` (zeros past the end) as two 16-lane `f32` vectors.
///
/// # Safety
/// [`avx512_bf16_cpu`] must hold; `i <= x.len()`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn load32_f16(x: &[half::f16], i: usize) -> (__m512, __m512) {
    let left = x.len() - i;
    let mask: __mmask32 = if left >= 32 { !0 } else { (1u32 << left) - 1 };
    // SAFETY: the masked load reads only the `min(32, left)` elements that exist (masked-out lanes
    // are not accessed and do not fault).
    let v = unsafe { _mm512_maskz_loadu_epi16(mask, x.as_ptr().add(i) as *const i16) };
    (
        _mm512_cvtph_ps(_mm512_castsi512_si256(v)),
        _mm512_cvtph_ps(_mm512_extracti64x4_epi64::<1>(v)),
    )
}

/// `Σ x_i²` of an `f16` row, accumulated in `f32` (any order: the bound only uses `γ_m`).
///
/// # Safety
/// [`avx512_bf16_cpu`] must hold.
#[target_feature(enable = "avx512f,avx512bw")]
pub(super) unsafe fn f16_norm_squared(x: &[half::f16]) -> f32 {
    let (mut a, mut b) = (_mm512_setzero_ps(), _mm512_setzero_ps());
    let mut i = 0;
    while i < x.len() {
        // SAFETY: `i < x.len()`; the CPU features are the caller's guarantee.
        let (lo, hi) = unsafe { load32_f16(x, i) };
        a = _mm512_fmadd_ps(lo, lo, a);
        b = _mm512_fmadd_ps(hi, hi, b);
        i += 32;
    }
    _mm512_reduce_add_ps(_mm512_add_ps(a, b))
}

/// Writes `bf16(x · scale)` of an `f16` row into its row-tile slots: chunk `c` of 32 elements goes to
/// `xb[base + 512·c ..][..32]`, zero-padded past `x.len()`, for `c < ks`.
///
/// # Safety
/// [`avx512_bf16_cpu`] must hold; `32·ks >= x.len()`; `xb[base + 512·c .. + 32]` is in bounds for
/// every `c < ks`.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
pub(super) unsafe fn f16_row_to_tiles(
    x: &[half::f16],
    scale: f32,
    xb: &mut [u16],
    base: usize,
    ks: usize,
) {
    let s = _mm512_set1_ps(scale);
    for c in 0..ks {
        let i = 32 * c;
        let (lo, hi) = if i < x.len() {
            // SAFETY: `i < x.len()`.
            unsafe { load32_f16(x, i) }
        } else {
            (_mm512_setzero_ps(), _mm512_setzero_ps())
        };
        let v: __m512i = unsafe {
            // SAFETY: a bit-level reinterpretation of 32 bf16 as 512 bits.
            std::mem::transmute(_mm512_cvtne2ps_pbh(
                _mm512_mul_ps(hi, s),
                _mm512_mul_ps(lo, s),
            ))
        };
        let at = base + 512 * c;
        assert!(at + 32 <= xb.len());
        // SAFETY: `at + 32 <= xb.len()` (asserted): 64 writable bytes.
        unsafe { _mm512_storeu_si512(xb.as_mut_ptr().add(at) as *mut _, v) };
    }
}
