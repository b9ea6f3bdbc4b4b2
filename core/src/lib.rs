//! # phenix-core
//!
//! The storage and search engine of phenix, with no SQLite and no ONNX in it:
//!
//! - [`store`]: one column of fixed-dimension vectors in an append-only, memory-mapped file (`f16` by
//!   default, `f32` as an option), or in memory. The file format and the commit protocol are in
//!   `docs/design.md`.
//! - [`kernels`]: dot, cosine and L2 between an `f32` query and `f16`/`f32` rows, with run-time dispatch
//!   to AVX-512F, AVX2+FMA+F16C or portable code.
//! - [`topk`]: exact top-k with candidate filters, deleted slots, a distance threshold and threads.
//! - [`control`]: stopping (interrupts) and watching (progress) long scans, polled once per chunk.
//! - [`batch`]: top-k for many queries at once: AMX-BF16 / AVX512-BF16 scoring with an exact re-rank
//!   where the CPU has the unit, blocked `f32` GEMM (faer) otherwise.
//!
//! Invariants: a store never hands out a row past its committed length to a reader; rows are aligned to
//! 64 bytes; ranking is by `(distance, slot)` ascending, so ties break by the lower slot, and the result is
//! the same whatever the thread count.
//!
//! ```
//! use phenix_core::{store::{Layout, VectorStore}, topk::{search, SearchParams}, ElemType, Metric};
//! let layout = Layout::new(4, ElemType::F16, Metric::Cosine).unwrap();
//! let mut store = VectorStore::in_memory(layout);
//! store.append(&[1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0]).unwrap();
//! store.set_committed(2).unwrap();
//! let view = store.view(2).unwrap();
//! let hits = search(&view, &[0.9, 0.1, 0.0, 0.0], &SearchParams::new(1)).unwrap();
//! assert_eq!(hits[0].slot, 0);
//! ```
#![deny(missing_docs)]

pub mod batch;
pub mod bitmap;
pub mod control;
mod crc32;
mod error;
pub mod fault;
pub mod ivf;
pub mod kernels;
mod lowp;
mod rng;
pub mod store;
pub mod topk;
mod types;

pub use bitmap::Bitmap;
pub use error::{Error, Result};
pub use kernels::{Isa, Kernels, Row};
pub use rng::SplitMix64;
pub use types::{ElemType, Metric};
