//! Where a store's bytes live: the [`StorageBackend`] trait and its two production implementations,
//! [`FileBackend`] (a file, memory-mapped for reading) and [`MemoryBackend`] (a heap buffer, for
//! `:memory:` and temp databases). Test backends that fail on demand or model a crash are in
//! [`crate::fault`].
//!
//! A backend is a flat, growable byte array: the store writes the header at offset 0 and rows after it,
//! and it never asks a backend to understand either. Every method is one I/O operation, so a wrapper
//! can count, fail or record them one by one.

use crate::store::header::ROW_ALIGN;
use memmap2::Mmap;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// The storage under one [`VectorStore`](crate::store::VectorStore).
///
/// Contract, which every implementation keeps and the store relies on:
/// - [`map`](StorageBackend::map)`(len)` returns bytes `[0, len)` as they are now, starting at an
///   address aligned to 64 bytes, or an error if the storage holds fewer than `len` bytes at the time
///   of the call (a file truncated by another process must become an error here, never a mapping of
///   pages past the end of the file, which would raise SIGBUS when touched).
/// - The bytes of a returned slice below the storage's length do not change until the next `&mut`
///   call, except through writes at or past the length the caller declared committed (which no reader
///   maps).
/// - [`sync_data`](StorageBackend::sync_data) makes every completed [`write`](StorageBackend::write)
///   and [`set_len`](StorageBackend::set_len) durable.
pub trait StorageBackend: Send + fmt::Debug {
    /// The current length in bytes.
    fn len(&self) -> io::Result<u64>;
    /// Whether the storage is empty.
    fn is_empty(&self) -> io::Result<bool> {
        Ok(self.len()? == 0)
    }
    /// Reads up to `buf.len()` bytes at `offset`; returns how many were read (fewer only at the end).
    fn read(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize>;
    /// Writes all of `data` at `offset`, growing the storage if needed.
    fn write(&mut self, offset: u64, data: &[u8]) -> io::Result<()>;
    /// Sets the length (truncates or zero-extends).
    fn set_len(&mut self, len: u64) -> io::Result<()>;
    /// Makes completed writes and length changes durable.
    fn sync_data(&mut self) -> io::Result<()>;
    /// Bytes `[0, len)` for reading (see the trait docs for the guarantees).
    fn map(&mut self, len: usize) -> io::Result<&[u8]>;
    /// The file behind the storage, if there is one.
    fn path(&self) -> Option<&Path> {
        None
    }
}

impl<B: StorageBackend + ?Sized> StorageBackend for Box<B> {
    fn len(&self) -> io::Result<u64> {
        (**self).len()
    }
    fn read(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        (**self).read(offset, buf)
    }
    fn write(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        (**self).write(offset, data)
    }
    fn set_len(&mut self, len: u64) -> io::Result<()> {
        (**self).set_len(len)
    }
    fn sync_data(&mut self) -> io::Result<()> {
        (**self).sync_data()
    }
    fn map(&mut self, len: usize) -> io::Result<&[u8]> {
        (**self).map(len)
    }
    fn path(&self) -> Option<&Path> {
        (**self).path()
    }
}

/// The error a backend returns when asked to map or read past the end of its storage.
pub(crate) fn short_storage(have: u64, need: u64) -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        format!("storage holds {have} bytes, {need} needed"),
    )
}

/// A vector file: `pwrite`/`pread` for I/O, a read-only memory map for [`StorageBackend::map`].
pub struct FileBackend {
    path: PathBuf,
    file: File,
    /// The current read-only map; its length is the largest `len` mapped so far.
    map: Option<Mmap>,
}

impl fmt::Debug for FileBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileBackend")
            .field("path", &self.path)
            .field("mapped", &self.map.as_ref().map_or(0, |m| m.len()))
            .finish()
    }
}

impl FileBackend {
    /// Creates `path`, which must not exist, for reading and writing.
    pub fn create(path: &Path) -> io::Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)?;
        Ok(FileBackend {
            path: path.to_path_buf(),
            file,
            map: None,
        })
    }

    /// Opens an existing `path`, for writing too if `writable`. A symbolic link in place of the file
    /// (planted next to a database made by someone else) is refused (`O_NOFOLLOW`), not followed.
    pub fn open(path: &Path, writable: bool) -> io::Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(writable)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)?;
        Ok(FileBackend {
            path: path.to_path_buf(),
            file,
            map: None,
        })
    }
}

impl StorageBackend for FileBackend {
    fn len(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }
    fn read(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let mut done = 0;
        while done < buf.len() {
            match self.file.read_at(&mut buf[done..], offset + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(done)
    }
    fn write(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.file.write_all_at(data, offset)
    }
    fn set_len(&mut self, len: u64) -> io::Result<()> {
        // Drop our own map of pages about to go, so nothing of ours can touch them.
        if self.map.as_ref().is_some_and(|m| m.len() as u64 > len) {
            self.map = None;
        }
        self.file.set_len(len)
    }
    fn sync_data(&mut self) -> io::Result<()> {
        self.file.sync_data()
    }
    fn map(&mut self, len: usize) -> io::Result<&[u8]> {
        if len == 0 {
            return Ok(&[]);
        }
        if self.map.as_ref().is_none_or(|m| m.len() < len) {
            // Never map past the end of the file: touching such a page raises SIGBUS.
            let have = self.len()?;
            if have < len as u64 {
                return Err(short_storage(have, len as u64));
            }
            // A map that only has to grow is extended in place (`mremap`), keeping the page-table
            // entries of the pages already touched: a reader following another connection's appends
            // then pays for the new rows, not for faulting the whole file in again.
            #[cfg(target_os = "linux")]
            let grown = self.map.as_mut().is_some_and(|m| {
                // SAFETY: as for a new map below; `&mut self` means no slice of the old map is still
                // borrowed, and a map that moves is only reached through `self.map` afterwards.
                unsafe { m.remap(len, memmap2::RemapOptions::new().may_move(true)) }.is_ok()
            });
            #[cfg(not(target_os = "linux"))]
            let grown = false;
            if !grown {
                // SAFETY: the map is read-only and phenix never rewrites or shrinks the region below
                // the committed length while it is mapped (module docs of `store`, "Mapping
                // contract"); the length was checked against the file just above, and the store
                // re-checks it at every scan and refresh, so a file shrunk by a process outside phenix
                // is reported as truncated instead of faulting. The map lives in `self`, and every
                // slice handed out borrows `self`.
                let m = unsafe { memmap2::MmapOptions::new().len(len).map(&self.file) }?;
                self.map = Some(m);
            }
        }
        let m = self
            .map
            .as_ref()
            .ok_or_else(|| short_storage(0, len as u64))?;
        Ok(&m[..len])
    }
    fn path(&self) -> Option<&Path> {
        Some(&self.path)
    }
}

/// A 64-byte aligned block, the unit of [`MemoryBackend`]'s buffer.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
pub(crate) struct Block(pub(crate) [u8; ROW_ALIGN]);

/// Bytes of `blocks` as one slice.
pub(crate) fn block_bytes(blocks: &[Block]) -> &[u8] {
    // SAFETY: `Block` is `repr(C)` plain bytes with no padding, so a slice of blocks is a valid,
    // initialised byte slice of `len * ROW_ALIGN` bytes for the same lifetime.
    unsafe {
        std::slice::from_raw_parts(blocks.as_ptr() as *const u8, std::mem::size_of_val(blocks))
    }
}

/// Bytes of `blocks` as one mutable slice.
pub(crate) fn block_bytes_mut(blocks: &mut [Block]) -> &mut [u8] {
    // SAFETY: as in `block_bytes`; every byte pattern is a valid `Block`, so writes through the byte
    // slice cannot create an invalid value, and the exclusive borrow is carried over.
    unsafe {
        std::slice::from_raw_parts_mut(
            blocks.as_mut_ptr() as *mut u8,
            std::mem::size_of_val(blocks),
        )
    }
}

/// A growable, 64-byte aligned byte buffer with the file's semantics (reads past the end are short,
/// writes past it zero-fill the gap).
#[derive(Clone, Default)]
pub(crate) struct AlignedBuf {
    blocks: Vec<Block>,
    len: usize,
}

impl AlignedBuf {
    pub(crate) fn from_bytes(b: &[u8]) -> Self {
        let mut a = AlignedBuf::default();
        a.write(0, b);
        a
    }
    pub(crate) fn len(&self) -> usize {
        self.len
    }
    pub(crate) fn bytes(&self) -> &[u8] {
        &block_bytes(&self.blocks)[..self.len]
    }
    pub(crate) fn read(&self, offset: u64, buf: &mut [u8]) -> usize {
        let b = self.bytes();
        let start = (offset as usize).min(b.len());
        let n = buf.len().min(b.len() - start);
        buf[..n].copy_from_slice(&b[start..start + n]);
        n
    }
    pub(crate) fn write(&mut self, offset: u64, data: &[u8]) {
        let end = offset as usize + data.len();
        if end > self.len {
            self.set_len(end);
        }
        block_bytes_mut(&mut self.blocks)[offset as usize..end].copy_from_slice(data);
    }
    pub(crate) fn set_len(&mut self, len: usize) {
        let blocks = len.div_ceil(ROW_ALIGN);
        if len < self.len {
            // Zero the cut tail of the last block, so a later extension reads zeros as a file would.
            let tail = &mut block_bytes_mut(&mut self.blocks)[len..self.len];
            tail.fill(0);
        }
        self.blocks.resize(blocks, Block([0; ROW_ALIGN]));
        self.len = len;
    }
}

/// Rows in memory (`:memory:` and temp databases). Nothing is durable; `sync_data` does nothing.
#[derive(Default)]
pub struct MemoryBackend {
    buf: AlignedBuf,
}

impl fmt::Debug for MemoryBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryBackend")
            .field("len", &self.buf.len())
            .finish()
    }
}

impl MemoryBackend {
    /// An empty buffer.
    pub fn new() -> Self {
        MemoryBackend::default()
    }
    /// A buffer holding a copy of `bytes` (for example a file image).
    pub fn from_bytes(bytes: &[u8]) -> Self {
        MemoryBackend {
            buf: AlignedBuf::from_bytes(bytes),
        }
    }
}

impl StorageBackend for MemoryBackend {
    fn len(&self) -> io::Result<u64> {
        Ok(self.buf.len() as u64)
    }
    fn read(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        Ok(self.buf.read(offset, buf))
    }
    fn write(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.buf.write(offset, data);
        Ok(())
    }
    fn set_len(&mut self, len: u64) -> io::Result<()> {
        self.buf.set_len(len as usize);
        Ok(())
    }
    fn sync_data(&mut self) -> io::Result<()> {
        Ok(())
    }
    fn map(&mut self, len: usize) -> io::Result<&[u8]> {
        let b = self.buf.bytes();
        if b.len() < len {
            return Err(short_storage(b.len() as u64, len as u64));
        }
        Ok(&b[..len])
    }
}
