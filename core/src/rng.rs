//! SplitMix64 (Vigna's `splitmix64.c`): the one seeded generator of phenix, used by IVF training
//! (sampling and initialisation) and by the SQL layer's seeded nulls, whose stream is documented so
//! numpy can reproduce it.

/// SplitMix64 from a seed. The sequence of [`SplitMix64::next_u64`] is part of phenix's documented
/// behaviour (docs/analysis.md): do not change it.
#[derive(Clone, Debug)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator whose first output is splitmix64's first output for `seed`.
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    /// The next 64-bit output.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// An index in `0..n` (`n > 0`) as the high 64 bits of `next_u64() * n` (Lemire's multiply-shift,
    /// without rejection): the documented stream of the SQL layer's seeded nulls.
    pub fn index(&mut self, n: usize) -> usize {
        ((u128::from(self.next_u64()) * n as u128) >> 64) as usize
    }

    /// An index in `0..n` (`n > 0`) as `next_u64() % n`: IVF training's sampling stream.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}
