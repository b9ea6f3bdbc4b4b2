//! A fixed-size bit set over slots, for candidate filters and deleted slots.

/// A set of slots `0..len`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Bitmap {
    words: Vec<u64>,
    len: usize,
}

impl Bitmap {
    /// An empty set over `0..len`.
    pub fn new(len: usize) -> Self {
        Bitmap {
            words: vec![0; len.div_ceil(64)],
            len,
        }
    }

    /// The set of the given slots; its length is one past the largest (or `len`, if larger).
    pub fn from_slots(len: usize, slots: impl IntoIterator<Item = u64>) -> Self {
        let mut b = Bitmap::new(len);
        for s in slots {
            b.insert(s as usize);
        }
        b
    }

    /// The size of the universe.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the universe is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Adds `i`, growing the universe if needed.
    pub fn insert(&mut self, i: usize) {
        if i >= self.len {
            self.len = i + 1;
            self.words.resize(self.len.div_ceil(64), 0);
        }
        self.words[i / 64] |= 1 << (i % 64);
    }

    /// Removes `i`.
    pub fn remove(&mut self, i: usize) {
        if i < self.len {
            self.words[i / 64] &= !(1 << (i % 64));
        }
    }

    /// Whether `i` is in the set (false past the universe).
    #[inline]
    pub fn contains(&self, i: usize) -> bool {
        i < self.len && self.words[i / 64] & (1 << (i % 64)) != 0
    }

    /// Number of members.
    pub fn count(&self) -> usize {
        self.words.iter().map(|w| w.count_ones() as usize).sum()
    }

    /// Shrinks or grows the universe to `len`, dropping members at or past it.
    pub fn truncate(&mut self, len: usize) {
        self.words.resize(len.div_ceil(64), 0);
        if !len.is_multiple_of(64) {
            if let Some(last) = self.words.last_mut() {
                *last &= (1u64 << (len % 64)) - 1;
            }
        }
        self.len = len;
    }

    /// Grows the universe to `len` (if larger) with every new slot a member: the slots of rows
    /// appended since the set was made. A word at a time.
    pub fn extend_full(&mut self, len: usize) {
        if len <= self.len {
            return;
        }
        let old = self.len;
        self.words.resize(len.div_ceil(64), 0);
        let first_whole = old.div_ceil(64);
        if !old.is_multiple_of(64) {
            // The partial word: bits old..min(len, its end).
            let hi = len.min(first_whole * 64);
            for i in old..hi {
                self.words[i / 64] |= 1 << (i % 64);
            }
        }
        let last_whole = len / 64;
        if first_whole < last_whole {
            self.words[first_whole..last_whole].fill(u64::MAX);
        }
        if !len.is_multiple_of(64) && last_whole >= first_whole {
            self.words[last_whole] |= (1u64 << (len % 64)) - 1;
        }
        self.len = len;
    }

    /// The set `{i in 0..len : f(i)}`, built a word at a time.
    pub fn from_fn(len: usize, mut f: impl FnMut(usize) -> bool) -> Self {
        let mut words = vec![0u64; len.div_ceil(64)];
        for (wi, w) in words.iter_mut().enumerate() {
            let base = wi * 64;
            let mut bits = 0u64;
            for b in 0..64.min(len - base) {
                bits |= u64::from(f(base + b)) << b;
            }
            *w = bits;
        }
        Bitmap { words, len }
    }

    /// Keeps only the members also in `other` (members past `other`'s universe are dropped).
    pub fn intersect_with(&mut self, other: &Bitmap) {
        for (i, w) in self.words.iter_mut().enumerate() {
            *w &= other.words.get(i).copied().unwrap_or(0);
        }
    }

    /// Whether every slot of `0..n` is a member (true for `n = 0`).
    pub fn contains_all_below(&self, n: usize) -> bool {
        if n > self.len {
            return false;
        }
        let full = n / 64;
        if self.words[..full].iter().any(|&w| w != u64::MAX) {
            return false;
        }
        let rest = n % 64;
        rest == 0 || self.words[full] & ((1u64 << rest) - 1) == (1u64 << rest) - 1
    }

    /// Members in ascending order.
    pub fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        self.words.iter().enumerate().flat_map(|(wi, &w)| {
            let mut w = w;
            std::iter::from_fn(move || {
                if w == 0 {
                    None
                } else {
                    let b = w.trailing_zeros() as usize;
                    w &= w - 1;
                    Some(wi * 64 + b)
                }
            })
        })
    }

    /// Members in `[start, end)`, ascending.
    pub fn iter_range(&self, start: usize, end: usize) -> impl Iterator<Item = usize> + '_ {
        let end = end.min(self.len);
        let first_word = start / 64;
        let last_word = end.div_ceil(64);
        self.words[first_word.min(self.words.len())..last_word.min(self.words.len())]
            .iter()
            .enumerate()
            .flat_map(move |(off, &w)| {
                let wi = first_word + off;
                let mut w = w;
                std::iter::from_fn(move || loop {
                    if w == 0 {
                        return None;
                    }
                    let b = w.trailing_zeros() as usize;
                    w &= w - 1;
                    let i = wi * 64 + b;
                    if i >= start && i < end {
                        return Some(i);
                    }
                    if i >= end {
                        return None;
                    }
                })
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_remove_iter() {
        let mut b = Bitmap::new(130);
        for i in [0, 5, 63, 64, 129] {
            b.insert(i);
        }
        assert_eq!(b.iter().collect::<Vec<_>>(), vec![0, 5, 63, 64, 129]);
        assert_eq!(b.iter_range(5, 65).collect::<Vec<_>>(), vec![5, 63, 64]);
        assert_eq!(b.iter_range(6, 63).count(), 0);
        b.remove(63);
        assert!(!b.contains(63) && b.contains(64) && !b.contains(1000));
        assert_eq!(b.count(), 4);
        b.truncate(64);
        assert_eq!(b.iter().collect::<Vec<_>>(), vec![0, 5]);
        b.insert(200);
        assert_eq!(b.len(), 201);
        assert!(b.contains(200));
    }

    #[test]
    fn from_fn_intersect_and_full_prefix() {
        let b = Bitmap::from_fn(130, |i| i % 3 == 0);
        assert_eq!(b.len(), 130);
        assert_eq!(
            b.iter().collect::<Vec<_>>(),
            (0..130).step_by(3).collect::<Vec<_>>()
        );
        let mut c = Bitmap::from_fn(200, |i| i % 2 == 0);
        c.intersect_with(&b);
        assert_eq!(
            c.iter().collect::<Vec<_>>(),
            (0..130).step_by(6).collect::<Vec<_>>()
        );
        assert_eq!(Bitmap::from_fn(0, |_| true).count(), 0);

        let full = Bitmap::from_fn(130, |_| true);
        for n in [0, 1, 63, 64, 65, 128, 130] {
            assert!(full.contains_all_below(n), "{n}");
        }
        assert!(!full.contains_all_below(131));
        let mut holes = full.clone();
        holes.remove(64);
        assert!(holes.contains_all_below(64));
        assert!(!holes.contains_all_below(65));
        assert!(!holes.contains_all_below(130));
    }
}

#[cfg(test)]
mod extend_full_tests {
    use super::*;

    /// `extend_full` against a bit-at-a-time reference, over word boundaries and partial words.
    #[test]
    fn extend_full_sets_exactly_the_new_slots() {
        for old in [0usize, 1, 5, 63, 64, 65, 127, 128, 200] {
            for len in [0usize, 1, 2, 63, 64, 65, 100, 128, 129, 191, 300] {
                let mut b = Bitmap::from_fn(old, |i| i % 3 == 0);
                b.extend_full(len);
                let want =
                    Bitmap::from_fn(old.max(len), |i| if i < old { i % 3 == 0 } else { true });
                assert_eq!(b, want, "old {old} len {len}");
            }
        }
    }
}
