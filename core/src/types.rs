//! Element types and metrics.

use std::fmt;

/// How vector elements are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ElemType {
    /// IEEE 754 binary16, 2 bytes per element (the default).
    F16,
    /// IEEE 754 binary32, 4 bytes per element.
    F32,
}

impl ElemType {
    /// Bytes per element.
    pub const fn size(self) -> usize {
        match self {
            ElemType::F16 => 2,
            ElemType::F32 => 4,
        }
    }
    /// The on-disk code (header byte).
    pub const fn code(self) -> u8 {
        match self {
            ElemType::F16 => 1,
            ElemType::F32 => 2,
        }
    }
    /// Inverse of [`ElemType::code`].
    pub const fn from_code(c: u8) -> Option<Self> {
        match c {
            1 => Some(ElemType::F16),
            2 => Some(ElemType::F32),
            _ => None,
        }
    }
    /// The name used in SQL and messages (`float16`, `float32`).
    pub const fn name(self) -> &'static str {
        match self {
            ElemType::F16 => "float16",
            ElemType::F32 => "float32",
        }
    }
}

impl fmt::Display for ElemType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A distance between a query `q` and a row `x`. Smaller is closer for all three.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Metric {
    /// `1 - q·x / (|q| |x|)`; defined as 1 when either vector is zero.
    Cosine,
    /// Euclidean distance `|q - x|` (not squared, as in sqlite-vec).
    L2,
    /// Negative inner product `-q·x`.
    Dot,
}

impl Metric {
    /// The on-disk code (header byte).
    pub const fn code(self) -> u8 {
        match self {
            Metric::Cosine => 1,
            Metric::L2 => 2,
            Metric::Dot => 3,
        }
    }
    /// Inverse of [`Metric::code`].
    pub const fn from_code(c: u8) -> Option<Self> {
        match c {
            1 => Some(Metric::Cosine),
            2 => Some(Metric::L2),
            3 => Some(Metric::Dot),
            _ => None,
        }
    }
    /// The name used in SQL (`cosine`, `l2`, `dot`).
    pub const fn name(self) -> &'static str {
        match self {
            Metric::Cosine => "cosine",
            Metric::L2 => "l2",
            Metric::Dot => "dot",
        }
    }
    /// Parses a SQL name (case-insensitive).
    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "cosine" => Some(Metric::Cosine),
            "l2" => Some(Metric::L2),
            "dot" | "ip" => Some(Metric::Dot),
            _ => None,
        }
    }
}

impl fmt::Display for Metric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
