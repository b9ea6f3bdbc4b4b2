//! Bad input never crashes the host and is refused with an error naming what was wrong, in-process with
//! the bundled SQLite.
//!
//! Property tests (proptest): `CREATE VIRTUAL TABLE … USING phenix(…)` arguments, vector JSON
//! and blobs (lengths, NaN, ±inf, subnormals, huge dimensions), SMILES (random bytes and mutations of
//! real ones from `data/molecules`), model manifests and ONNX files, and the arguments of every
//! `phenix*` SQL function. Every property asserts: no panic inside phenix (a panic hook counts panics on
//! the thread while it runs SQL, and on phenix's worker threads), every error is `SQLITE_ERROR` with a
//! message that starts with `phenix: ` and names what was wrong, and valid input gives the right
//! answer (distances recomputed in `f64`, encodings against `half`, fingerprints against RDKit's
//! reference file, KNN against brute force).
//!
//! Untrusted databases: hostile shadow-table contents (`<t>_info`, `<t>_rows`) and symlinks in
//! the sidecar directory must not make phenix read or write outside `<db>-phenix/`, and the functions that
//! take a path (or run SQL text) refuse to run from views and triggers.
//!
//! Case counts: CI runs each property with its default count (see `cases()`); set
//! `PHENIX_PROPTEST_CASES=N` to run every property with N cases (e.g. 5000 for a long run:
//! `PHENIX_PROPTEST_CASES=5000 cargo test --release -p phenix-sql --test bad_input`).
//!
//! One test target, one module per kind of input: `harness` (panic counting, allocation tracking, error
//! classification), `create`, `vectors`, `smiles`, `bundles`, `functions`, `untrusted`.

mod bundles;
#[path = "../common/mod.rs"]
mod common;
mod create;
mod functions;
mod harness;
mod smiles;
mod untrusted;
mod vectors;
