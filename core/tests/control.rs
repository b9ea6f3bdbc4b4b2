//! `SearchParams::control`: a control that never stops changes no result on any path (one-query scan on
//! 1 and 2 threads, every batched path this CPU runs); one that stops makes every path return
//! `Cancelled` after few chunks; progress adds up to the rows scanned.

mod common;

use common::Rng;
use phenix_core::batch::{search_batch_with, BatchPath};
use phenix_core::control::Control;
use phenix_core::store::{Layout, VectorStore};
use phenix_core::topk::{search, Candidates, SearchParams};
use phenix_core::{Bitmap, ElemType, Error, Metric};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

const ROWS: usize = 70_000;
const DIM: usize = 32;

fn store(elem: ElemType) -> VectorStore {
    let layout = Layout::new(DIM, elem, Metric::Cosine).unwrap();
    let mut s = VectorStore::in_memory(layout);
    let mut rng = Rng(7);
    s.append(&rng.vec(ROWS * DIM, 1.0)).unwrap();
    s.set_committed(ROWS as u64).unwrap();
    s
}

#[test]
fn a_control_that_goes_on_changes_nothing_and_counts_every_row() {
    let mut bm = Bitmap::new(ROWS);
    for i in (0..ROWS).filter(|i| i % 3 != 0) {
        bm.insert(i);
    }
    for elem in [ElemType::F16, ElemType::F32] {
        let mut s = store(elem);
        let view = s.view(ROWS as u64).unwrap();
        let q = Rng(11).vec(DIM, 1.0);
        for threads in [1, 2] {
            for cand in [Candidates::All, Candidates::Bitmap(&bm)] {
                let mut p = SearchParams::new(10);
                p.threads = threads;
                p.candidates = cand;
                let plain = search(&view, &q, &p).unwrap();
                let control = Control::new(|_| true);
                p.control = Some(&control);
                assert_eq!(search(&view, &q, &p).unwrap(), plain);
                assert_eq!(control.done(), ROWS as u64, "every position once");
            }
        }
        let queries = Rng(13).vec(5 * DIM, 1.0);
        for path in BatchPath::available() {
            for threads in [1, 2] {
                let mut p = SearchParams::new(10);
                p.threads = threads;
                p.candidates = Candidates::Bitmap(&bm);
                let plain = search_batch_with(&view, &queries, &p, path).unwrap().0;
                let control = Control::new(|_| true);
                p.control = Some(&control);
                let (with, _) = search_batch_with(&view, &queries, &p, path).unwrap();
                assert_eq!(with, plain, "{path:?} {threads} threads");
                assert_eq!(control.done(), ROWS as u64, "{path:?}: every row once");
            }
        }
    }
}

#[test]
fn a_control_that_stops_makes_every_path_return_cancelled_early() {
    let mut s = store(ElemType::F16);
    let view = s.view(ROWS as u64).unwrap();
    let q = Rng(11).vec(DIM, 1.0);
    let queries = Rng(13).vec(5 * DIM, 1.0);
    for threads in [1, 2] {
        // Stops at the first report.
        let calls = Arc::new(AtomicU64::new(0));
        let c2 = calls.clone();
        let control = Control::new(move |_| {
            c2.fetch_add(1, Ordering::Relaxed);
            false
        });
        let mut p = SearchParams::new(10);
        p.threads = threads;
        p.control = Some(&control);
        assert!(matches!(search(&view, &q, &p), Err(Error::Cancelled)));
        assert!(control.stopped());
        assert!(
            control.done() < ROWS as u64,
            "stopped before the end: {}",
            control.done()
        );
        assert_eq!(calls.load(Ordering::Relaxed), 1, "a stop is final");
        for path in BatchPath::available() {
            let control = Control::new(|_| false);
            let mut p = p;
            p.control = Some(&control);
            assert!(
                matches!(
                    search_batch_with(&view, &queries, &p, path),
                    Err(Error::Cancelled)
                ),
                "{path:?}"
            );
            assert!(control.done() < ROWS as u64, "{path:?}: stopped early");
        }
        // Stopped from outside before the search starts: no rows returned, one chunk per worker.
        let control = Control::default();
        control.stop();
        let mut early = p;
        early.control = Some(&control);
        assert!(matches!(search(&view, &q, &early), Err(Error::Cancelled)));
    }
}
