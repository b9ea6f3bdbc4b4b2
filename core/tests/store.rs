//! The vector file: round trips, reopen, commit/truncate protocol and every typed open error.

mod common;
use common::*;
use phenix_core::store::{Layout, VectorStore, HEADER_LEN, ROW_ALIGN};
use phenix_core::{ElemType, Error, Metric};
use std::path::PathBuf;

fn tmp(name: &str) -> (tempdir::Dir, PathBuf) {
    let d = tempdir::Dir::new(name);
    let p = d.0.join("vectors.phx");
    (d, p)
}

mod tempdir {
    /// A directory removed on drop.
    pub struct Dir(pub std::path::PathBuf);
    impl Dir {
        pub fn new(name: &str) -> Dir {
            let p = std::env::temp_dir().join(format!(
                "phenix-core-{name}-{}-{:?}",
                std::process::id(),
                std::thread::current().id()
            ));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir_all(&p).unwrap();
            Dir(p)
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

fn layout(dim: usize, elem: ElemType) -> Layout {
    Layout::new(dim, elem, Metric::Cosine).unwrap()
}

#[test]
fn rows_survive_reopen_bit_exact() {
    for elem in [ElemType::F16, ElemType::F32] {
        let (_d, p) = tmp(&format!("reopen-{elem}"));
        let l = layout(37, elem);
        let mut rng = Rng(7);
        let data = rng.vec(37 * 100, 3.0);
        let mut s = VectorStore::create(&p, l, [9; 16]).unwrap();
        assert_eq!(s.append(&data[..37 * 60]).unwrap(), 0..60);
        assert_eq!(s.append(&data[37 * 60..]).unwrap(), 60..100);
        s.sync().unwrap();
        s.set_committed(100).unwrap();
        drop(s);
        let mut r = VectorStore::open(&p, Some(l), 100, false).unwrap();
        assert_eq!(r.header().table_id, [9; 16]);
        assert_eq!(r.len(), 100);
        for i in 0..100 {
            let want: Vec<f32> = match elem {
                ElemType::F16 => f16_round(&data[i * 37..(i + 1) * 37]),
                ElemType::F32 => data[i * 37..(i + 1) * 37].to_vec(),
            };
            assert_eq!(r.read(i as u64).unwrap(), want, "row {i} ({elem})");
        }
        // Rows are 64-byte aligned in the map.
        let v = r.view(100).unwrap();
        for i in [0, 1, 99] {
            let ptr = match v.row(i) {
                phenix_core::Row::F16(x) => x.as_ptr() as usize,
                phenix_core::Row::F32(x) => x.as_ptr() as usize,
            };
            assert_eq!(ptr % ROW_ALIGN, 0);
        }
        let flen = std::fs::metadata(&p).unwrap().len() as usize;
        assert_eq!(flen, HEADER_LEN + 100 * l.stride());
    }
}

#[test]
fn in_memory_store_behaves_like_the_file() {
    let l = layout(19, ElemType::F16);
    let mut m = VectorStore::in_memory(l);
    let mut rng = Rng(3);
    let data = rng.vec(19 * 10, 1.0);
    assert_eq!(m.append(&data).unwrap(), 0..10);
    assert_eq!(m.read(4).unwrap(), f16_round(&data[4 * 19..5 * 19]));
    m.truncate(6).unwrap();
    assert_eq!(m.len(), 6);
    assert!(matches!(m.read(6), Err(Error::SlotOutOfRange { .. })));
    assert_eq!(m.append(&data[..19]).unwrap(), 6..7);
    assert_eq!(m.read(6).unwrap(), f16_round(&data[..19]));
}

#[test]
fn uncommitted_rows_are_ignored_and_only_the_writer_truncates() {
    let (_d, p) = tmp("uncommitted");
    let l = layout(8, ElemType::F16);
    let mut s = VectorStore::create(&p, l, [1; 16]).unwrap();
    s.append(&[1.0; 8 * 5]).unwrap();
    s.sync().unwrap();
    s.set_committed(3).unwrap();
    // A crash here leaves 5 rows in the file, 3 committed.
    drop(s);
    let len_before = std::fs::metadata(&p).unwrap().len();
    let r = VectorStore::open(&p, Some(l), 3, false).unwrap();
    assert_eq!(r.committed(), 3);
    drop(r);
    // Opening (as a reader or as the writer) never changes the file.
    let mut w = VectorStore::open(&p, Some(l), 3, true).unwrap();
    assert_eq!(std::fs::metadata(&p).unwrap().len(), len_before);
    // The writer's recovery step removes the leftovers.
    w.truncate(3).unwrap();
    assert_eq!(w.len(), 3);
    assert_eq!(
        std::fs::metadata(&p).unwrap().len() as usize,
        HEADER_LEN + 3 * l.stride()
    );
    assert_eq!(w.append(&[2.0; 8]).unwrap(), 3..4);
    assert_eq!(w.read(3).unwrap(), vec![2.0; 8]);
    // A read-only store refuses to write or truncate.
    let mut ro = VectorStore::open(&p, Some(l), 3, false).unwrap();
    assert!(matches!(ro.append(&[0.0; 8]), Err(Error::ReadOnly(_))));
    assert!(matches!(ro.truncate(0), Err(Error::ReadOnly(_))));
}

#[test]
fn a_reader_sees_rows_another_handle_commits() {
    let (_d, p) = tmp("refresh");
    let l = layout(4, ElemType::F32);
    let mut w = VectorStore::create(&p, l, [2; 16]).unwrap();
    w.append(&[1.0, 2.0, 3.0, 4.0]).unwrap();
    w.sync().unwrap();
    let mut r = VectorStore::open(&p, Some(l), 1, false).unwrap();
    assert_eq!(r.view(1).unwrap().rows(), 1);
    w.append(&[5.0, 6.0, 7.0, 8.0]).unwrap();
    w.sync().unwrap();
    r.refresh(2).unwrap();
    assert_eq!(r.read(1).unwrap(), vec![5.0, 6.0, 7.0, 8.0]);
    assert!(matches!(r.refresh(3), Err(Error::Truncated { .. })));
}

#[test]
fn file_shorter_than_committed_is_an_error() {
    let (_d, p) = tmp("short");
    let l = layout(8, ElemType::F16);
    let mut s = VectorStore::create(&p, l, [0; 16]).unwrap();
    s.append(&[1.0; 8 * 4]).unwrap();
    s.sync().unwrap();
    drop(s);
    // Cut the last row in half.
    let f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
    f.set_len((HEADER_LEN + 3 * l.stride() + 10) as u64)
        .unwrap();
    match VectorStore::open(&p, Some(l), 4, false) {
        Err(Error::Truncated {
            found: 3,
            committed: 4,
            ..
        }) => {}
        other => panic!("expected Truncated, got {:?}", other.err()),
    }
    assert!(VectorStore::open(&p, Some(l), 3, false).is_ok());
}

#[test]
fn damaged_headers_are_typed_errors() {
    let (_d, p) = tmp("header");
    let l = layout(16, ElemType::F16);
    VectorStore::create(&p, l, [5; 16]).unwrap();
    let good = std::fs::read(&p).unwrap();
    let write = |b: &[u8]| std::fs::write(&p, b).unwrap();

    let mut b = good.clone();
    b[0] = b'X';
    write(&b);
    assert!(matches!(
        VectorStore::open(&p, None, 0, false),
        Err(Error::BadMagic { .. })
    ));

    let mut b = good.clone();
    b[8] = 2; // version 2
    write(&b);
    assert!(matches!(
        VectorStore::open(&p, None, 0, false),
        Err(Error::VersionMismatch {
            expected: 1,
            found: 2,
            ..
        })
    ));

    // Any flipped bit in the fields is caught by the checksum.
    for byte in [16, 20, 21, 24, 33, 50] {
        let mut b = good.clone();
        b[byte] ^= 0x10;
        write(&b);
        let e = VectorStore::open(&p, None, 0, false).expect_err("must fail");
        assert!(
            matches!(e, Error::HeaderChecksum { .. }),
            "byte {byte}: {e}"
        );
    }

    write(&good[..30]);
    assert!(matches!(
        VectorStore::open(&p, None, 0, false),
        Err(Error::BadHeader { .. })
    ));
    write(&[]);
    assert!(matches!(
        VectorStore::open(&p, None, 0, false),
        Err(Error::BadMagic { .. })
    ));

    write(&good);
    let other = layout(32, ElemType::F16);
    let e = VectorStore::open(&p, Some(other), 0, false).err().unwrap();
    assert!(matches!(e, Error::LayoutMismatch { .. }));
    assert!(
        e.to_string().contains("float16[16]") && e.to_string().contains("float16[32]"),
        "{e}"
    );
    assert!(VectorStore::open(&p, Some(l), 0, false).is_ok());
    assert!(matches!(
        VectorStore::open(&p.with_extension("missing"), None, 0, false),
        Err(Error::Io { .. })
    ));
}

#[test]
fn values_that_do_not_fit_are_rejected_whole() {
    let mut s = VectorStore::in_memory(layout(3, ElemType::F16));
    for bad in [
        [1.0, f32::NAN, 0.0],
        [f32::INFINITY, 0.0, 0.0],
        [0.0, 0.0, 70000.0],
    ] {
        assert!(matches!(s.append(&bad), Err(Error::ValueOutOfRange { .. })));
    }
    assert!(matches!(
        s.append(&[1.0, 2.0]),
        Err(Error::DimMismatch { .. })
    ));
    assert_eq!(s.len(), 0);
    s.append(&[65504.0, -65504.0, 0.0]).unwrap();
    let mut s32 = VectorStore::in_memory(layout(3, ElemType::F32));
    s32.append(&[70000.0, 0.0, 0.0]).unwrap();
    assert!(s32.append(&[f32::NAN, 0.0, 0.0]).is_err());
    assert!(Layout::new(0, ElemType::F16, Metric::L2).is_err());
}

#[test]
fn create_refuses_to_overwrite() {
    let (_d, p) = tmp("exists");
    let l = layout(4, ElemType::F16);
    VectorStore::create(&p, l, [0; 16]).unwrap();
    assert!(matches!(
        VectorStore::create(&p, l, [0; 16]),
        Err(Error::Io { .. })
    ));
}

#[test]
fn large_appends_flush_and_read_back() {
    let (_d, p) = tmp("large");
    let l = layout(256, ElemType::F16);
    let mut s = VectorStore::create(&p, l, [0; 16]).unwrap();
    let mut rng = Rng(11);
    let data = rng.vec(256 * 5000, 1.0); // 2.5 MB encoded: crosses the flush threshold
    for chunk in data.chunks(256 * 700) {
        s.append(chunk).unwrap();
    }
    assert_eq!(s.len(), 5000);
    for i in [0usize, 2047, 4096, 4999] {
        assert_eq!(
            s.read(i as u64).unwrap(),
            f16_round(&data[i * 256..(i + 1) * 256])
        );
    }
    s.sync().unwrap();
    s.set_committed(5000).unwrap();
    let mut r = VectorStore::open(&p, Some(l), 5000, false).unwrap();
    assert_eq!(r.read(4999).unwrap(), f16_round(&data[4999 * 256..]));
}
