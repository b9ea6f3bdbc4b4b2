//! Storage backends: the store over memory, over a failing backend and over a crashing one.
//!
//! Bugs these guard:
//! - a vector file shrunk underneath a live mapping (by another process, or a crafted database) killed
//!   the host with SIGBUS at the next touch of a lost page, instead of a typed error;
//! - an I/O error in the middle of an append, sync or truncation left the store claiming rows it does
//!   not hold, or lost committed rows;
//! - rows made durable by `sync` and then declared committed were not all there after a power loss at
//!   any later instant (with any subset of later, unsynced writes lost or torn);
//! - the fault seam was process-wide, so fault tests could not run in parallel.

mod common;
use common::*;
use phenix_core::fault::{CrashBackend, FaultPlan, FaultPoint, FaultyBackend};
use phenix_core::store::{Header, Layout, MemoryBackend, VectorStore, HEADER_LEN, MAGIC};
use phenix_core::{ElemType, Error, Metric};

fn layout(dim: usize) -> Layout {
    Layout::new(dim, ElemType::F16, Metric::L2).unwrap()
}

fn header(l: Layout) -> Header {
    Header {
        layout: l,
        table_id: [7; 16],
        generation: 3,
    }
}

/// Bitwise CRC-32 (IEEE, reflected, poly 0xEDB88320): the reference for the header checksum.
fn crc32_reference(b: &[u8]) -> u32 {
    let mut c = !0u32;
    for &x in b {
        c ^= x as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 {
                (c >> 1) ^ 0xEDB8_8320
            } else {
                c >> 1
            };
        }
    }
    !c
}

/// The header's bytes as docs/design.md lays them out, field by field.
#[test]
fn header_bytes_match_the_documented_layout() {
    let h = Header {
        layout: Layout::new(300, ElemType::F32, Metric::Dot).unwrap(),
        table_id: *b"0123456789abcdef",
        generation: 0x0102_0304_0506_0708,
    };
    let b = h.encode();
    assert_eq!(b.len(), HEADER_LEN);
    assert_eq!(&b[0..8], &MAGIC);
    assert_eq!(&b[0..8], b"PHNXVEC\0");
    assert_eq!(&b[8..12], &[1, 0, 0, 0]); // format version
    assert_eq!(&b[12..16], &[0x00, 0x10, 0, 0]); // header_len 4096
    assert_eq!(&b[16..20], &[0x2c, 0x01, 0, 0]); // dim 300
    assert_eq!(b[20], 2); // f32
    assert_eq!(b[21], 3); // dot
    assert_eq!(&b[22..24], &[0, 0]);
    assert_eq!(&b[24..28], &[0xc0, 0x04, 0, 0]); // stride 1216 = 300 * 4 rounded up to 64
    assert_eq!(&b[28..32], &[0, 0, 0, 0]);
    assert_eq!(&b[32..48], b"0123456789abcdef");
    assert_eq!(&b[48..56], &[8, 7, 6, 5, 4, 3, 2, 1]);
    assert_eq!(&b[56..60], &crc32_reference(&b[..56]).to_le_bytes());
    assert!(b[60..].iter().all(|&x| x == 0));
    assert_eq!(Header::decode(std::path::Path::new("x"), &b).unwrap(), h);
}

/// A file shrunk under a reader's map: every later access is `Truncated`, never SIGBUS.
#[test]
fn a_file_truncated_under_a_mapping_is_an_error_not_a_crash() {
    let dir = std::env::temp_dir().join(format!("phenix-core-sigbus-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join("v.phx");
    // 256-dim f16: 512-byte rows, so 200 rows span many pages and the cut frees whole pages.
    let l = layout(256);
    let mut rng = Rng(5);
    let data = rng.vec(256 * 200, 1.0);
    let mut w = VectorStore::create(&p, l, [1; 16]).unwrap();
    w.append(&data).unwrap();
    w.sync().unwrap();
    w.set_committed(200).unwrap();

    let mut r = VectorStore::open(&p, Some(l), 200, false).unwrap();
    // Map all 200 rows and touch them.
    let v = r.view(200).unwrap();
    assert_eq!(v.row(199).to_f32(), f16_round(&data[199 * 256..]));
    // Another process (here: a plain set_len) cuts the file to 10 rows.
    let f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
    f.set_len((HEADER_LEN + 10 * l.stride()) as u64).unwrap();
    drop(f);

    // A scan checks the length first.
    match r.view(200) {
        Err(Error::Truncated {
            found: 10,
            committed: 200,
            ..
        }) => {}
        other => panic!(
            "view: expected Truncated, got {:?}",
            other.map(|v| v.rows())
        ),
    }
    // Point reads past the rows seen at that check are refused too.
    assert!(matches!(r.read(150), Err(Error::Truncated { .. })));
    assert!(matches!(r.read_raw(11), Err(Error::Truncated { .. })));
    // Rows still in the file stay readable.
    assert_eq!(r.read(9).unwrap(), f16_round(&data[9 * 256..10 * 256]));
    // A refresh that declares the old committed count reports the loss.
    let e = r.refresh(200).unwrap_err();
    assert!(
        matches!(
            e,
            Error::Truncated {
                found: 10,
                committed: 200,
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("truncated"), "{e}");

    // A second reader that refreshes (without scanning) after the cut sees it too.
    let mut w2 = VectorStore::open(&p, Some(l), 10, true).unwrap();
    w2.append(&data[..256 * 90]).unwrap();
    w2.sync().unwrap();
    let mut r2 = VectorStore::open(&p, Some(l), 100, false).unwrap();
    r2.view(100).unwrap();
    let f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
    f.set_len((HEADER_LEN + 20 * l.stride()) as u64).unwrap();
    drop(f);
    assert!(matches!(
        r2.refresh(100),
        Err(Error::Truncated { found: 20, .. })
    ));
    assert!(matches!(r2.read(50), Err(Error::Truncated { .. })));
    let _ = std::fs::remove_dir_all(&dir);
}

/// A writer removing its own uncommitted leftovers is not a truncation a reader complains about.
#[test]
fn a_reader_ignores_another_writers_leftovers_going_away() {
    let mut rng = Rng(9);
    let l = layout(16);
    let disk = CrashBackend::new(FaultPlan::new());
    let mut w = VectorStore::create_on(Box::new(disk.clone()), header(l)).unwrap();
    w.append(&rng.vec(16 * 3, 1.0)).unwrap();
    w.sync().unwrap();
    w.set_committed(3).unwrap();
    w.append(&rng.vec(16 * 5, 1.0)).unwrap();
    w.flush().unwrap(); // 5 uncommitted rows reach the file
    let mut r = VectorStore::open_on(Box::new(disk.clone()), Some(l), 3, false).unwrap();
    assert_eq!(r.len(), 8);
    r.view(3).unwrap();
    w.truncate(3).unwrap(); // the writer's rollback
    r.refresh(3).unwrap();
    assert_eq!(r.view(3).unwrap().rows(), 3);
    assert_eq!(r.len(), 3);
}

#[test]
fn a_store_over_any_backend_holds_the_same_rows() {
    let l = layout(24);
    let mut rng = Rng(1);
    let data = rng.vec(24 * 50, 2.0);
    let mut m = VectorStore::create_on(Box::new(MemoryBackend::new()), header(l)).unwrap();
    m.append(&data).unwrap();
    m.sync().unwrap();
    m.set_committed(50).unwrap();
    // The memory image is a valid vector file: open a copy of it as one.
    let mut image = vec![0u8; m.backend().len().unwrap() as usize];
    assert_eq!(m.backend().read(0, &mut image).unwrap(), image.len());
    let mut copy = VectorStore::open_on(
        Box::new(MemoryBackend::from_bytes(&image)),
        Some(l),
        50,
        false,
    )
    .unwrap();
    assert_eq!(copy.header(), &header(l));
    for i in 0..50 {
        assert_eq!(
            copy.read(i).unwrap(),
            f16_round(&data[i as usize * 24..][..24])
        );
    }
    assert!(matches!(copy.append(&data[..24]), Err(Error::ReadOnly(_))));
    // A too-short image is Truncated on open; a damaged header is a typed error.
    let short = MemoryBackend::from_bytes(&image[..HEADER_LEN + 10 * l.stride()]);
    assert!(matches!(
        VectorStore::open_on(Box::new(short), Some(l), 50, false),
        Err(Error::Truncated {
            found: 10,
            committed: 50,
            ..
        })
    ));
    let mut bad = image.clone();
    bad[40] ^= 1;
    assert!(matches!(
        VectorStore::open_on(Box::new(MemoryBackend::from_bytes(&bad)), None, 0, false),
        Err(Error::HeaderChecksum { .. })
    ));
}

/// Each operation, failed at each of its I/O points: the error is typed and names the fault, and the
/// store afterwards holds exactly the committed rows plus what the model says.
#[test]
fn every_injected_fault_leaves_the_committed_rows_intact() {
    let l = layout(8);
    let mut fired = 0;
    for point in FaultPoint::ALL {
        for nth in 0..3u64 {
            let plan = FaultPlan::new();
            let disk = CrashBackend::new(FaultPlan::new());
            let mut s = VectorStore::create_on(
                Box::new(FaultyBackend::new(disk.clone(), plan.clone())),
                header(l),
            )
            .unwrap();
            let mut rng = Rng(nth * 31 + point as u64);
            let committed_rows = rng.vec(8 * 40, 1.0);
            s.append(&committed_rows).unwrap();
            s.sync().unwrap();
            s.set_committed(40).unwrap();
            let f0 = plan.fired();
            plan.arm(point, nth);
            // A transaction: appends past the flush threshold, a scan, a sync; then a rollback.
            let r = (|| -> Result<(), Error> {
                for _ in 0..3 {
                    s.append(&rng.vec(8 * 9000, 1.0))?; // 9000 rows × 64 B: crosses 1 MiB
                    s.view(s.len())?;
                }
                s.sync()?;
                s.truncate(40)?;
                s.view(40)?;
                Ok(())
            })();
            plan.disarm();
            if plan.fired() > f0 {
                fired += 1;
                let e = r.expect_err("a fired fault must fail the operation");
                assert!(
                    matches!(e, Error::Io { .. }) && e.to_string().contains("injected fault"),
                    "{point:?} #{nth}: {e}"
                );
                // The writer's recovery step: back to the committed rows.
                s.truncate(40).unwrap();
            } else {
                r.unwrap();
            }
            assert_eq!(s.len(), 40, "{point:?} #{nth}");
            let v = s.view(40).unwrap();
            for i in 0..40 {
                assert_eq!(
                    v.row(i).to_f32(),
                    f16_round(&committed_rows[i * 8..][..8]),
                    "{point:?} #{nth} row {i}"
                );
            }
            // The durable image reopens with the committed rows.
            let mut re = VectorStore::open_on(
                Box::new(MemoryBackend::from_bytes(&disk.durable())),
                Some(l),
                40,
                true,
            )
            .unwrap();
            assert_eq!(re.read(39).unwrap(), f16_round(&committed_rows[39 * 8..]));
        }
    }
    assert!(fired >= 8, "only {fired} faults fired");
}

/// Random transactions (appends, scans, syncs, commits, rollbacks, injected faults) with a power loss
/// at random instants: every crash image opens with every committed row, bit for bit, and the writer
/// can continue from it.
#[test]
fn crash_images_keep_every_committed_row() {
    let l = layout(12);
    let mut rng = Rng(2024);
    for trial in 0..60 {
        let plan = FaultPlan::new();
        let disk = CrashBackend::new(plan.clone());
        let mut s = VectorStore::create_on(Box::new(disk.clone()), header(l)).unwrap();
        let mut committed: Vec<Vec<f32>> = Vec::new(); // the model: rows declared committed
        let mut tx: Vec<Vec<f32>> = Vec::new(); // rows appended in the open transaction
        let steps = 5 + rng.below(40);
        for _ in 0..steps {
            if rng.below(6) == 0 {
                plan.arm_any(rng.below(4));
            }
            let r: Result<(), Error> = match rng.below(6) {
                0..=2 => {
                    let max = if rng.below(8) == 0 { 3000 } else { 20 };
                    let n = 1 + rng.below(max) as usize;
                    let v = rng.vec(12 * n, 4.0);
                    s.append(&v).map(|_| {
                        tx.extend(v.chunks(12).map(f16_round));
                    })
                }
                3 => {
                    // Commit: make durable, then record the count (the caller's own transaction).
                    let n = (committed.len() + tx.len()) as u64;
                    s.sync().and_then(|()| s.set_committed(n)).map(|()| {
                        committed.append(&mut tx);
                    })
                }
                4 => s.view(s.len()).map(|_| ()),
                _ => {
                    // Rollback.
                    tx.clear();
                    s.truncate(committed.len() as u64)
                }
            };
            if r.is_err() {
                // Any failure aborts the transaction; the writer's recovery truncates to committed.
                plan.disarm();
                tx.clear();
                s.truncate(committed.len() as u64).unwrap();
            }
        }
        plan.disarm();
        // Power loss now: unsynced operations each kept, torn or lost at random.
        for _ in 0..3 {
            let image = disk.crash_image(|_, sectors| rng.below(sectors as u64 + 1) as usize);
            let c = committed.len() as u64;
            let mut re = VectorStore::open_on(
                Box::new(MemoryBackend::from_bytes(&image)),
                Some(l),
                c,
                true,
            )
            .unwrap_or_else(|e| panic!("trial {trial}: crash image does not open: {e}"));
            for (i, row) in committed.iter().enumerate() {
                assert_eq!(&re.read(i as u64).unwrap(), row, "trial {trial} row {i}");
            }
            re.truncate(c).unwrap();
            assert_eq!(re.append(&[0.5; 12]).unwrap(), c..c + 1);
        }
    }
}
