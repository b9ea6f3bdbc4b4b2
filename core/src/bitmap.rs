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
}
