//! The one error type of phenix-core.

use std::path::PathBuf;

/// Everything that can go wrong in phenix-core. Messages say what was expected and how to fix it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An operating-system I/O call failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What phenix was doing ("open", "write", "fsync", ...).
        op: &'static str,
        /// The file involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The file does not start with the phenix magic bytes: it is not a phenix vector file.
    #[error("{path}: not a phenix vector file (bad magic {found:02x?}); expected a file written by phenix")]
    BadMagic {
        /// The file involved.
        path: PathBuf,
        /// The first eight bytes found.
        found: [u8; 8],
    },
    /// The file was written by a format version this build cannot read.
    #[error("{path}: vector file format version {found}, this phenix reads version {expected}; upgrade phenix or rebuild the table")]
    VersionMismatch {
        /// The file involved.
        path: PathBuf,
        /// The version this build reads.
        expected: u32,
        /// The version in the file.
        found: u32,
    },
    /// The header's checksum does not match its bytes: the header was damaged.
    #[error(
        "{path}: vector file header is corrupt (checksum {found:#010x}, computed {computed:#010x})"
    )]
    HeaderChecksum {
        /// The file involved.
        path: PathBuf,
        /// The checksum stored in the file.
        found: u32,
        /// The checksum computed over the header bytes.
        computed: u32,
    },
    /// A header field holds a value that no phenix writes.
    #[error("{path}: vector file header field `{field}` is invalid: {detail}")]
    BadHeader {
        /// The file involved.
        path: PathBuf,
        /// The header field.
        field: &'static str,
        /// What is wrong with it.
        detail: String,
    },
    /// The file's layout (dimension, element type, metric or table id) is not the one the caller expected.
    #[error("{path}: vector file holds {found}, expected {expected}")]
    LayoutMismatch {
        /// The file involved.
        path: PathBuf,
        /// What the caller expected.
        expected: String,
        /// What the file holds.
        found: String,
    },
    /// The file is shorter than the committed row count: committed rows were lost.
    #[error("{path}: vector file holds {found} complete rows but {committed} are committed; the file was truncated or replaced")]
    Truncated {
        /// The file involved.
        path: PathBuf,
        /// Complete rows present in the file.
        found: u64,
        /// Rows the caller declared committed.
        committed: u64,
    },
    /// The work was stopped through its [`crate::control::Control`] (an interrupt or a progress hook
    /// asking to stop) before it finished; nothing it would have returned is returned.
    #[error("interrupted")]
    Cancelled,
    /// A vector of the wrong length was given.
    #[error("vector has {found} dimensions, expected {expected}")]
    DimMismatch {
        /// The store's dimension.
        expected: usize,
        /// The length given.
        found: usize,
    },
    /// A slot index past the end of the store.
    #[error("slot {slot} is out of range (the store holds {len} rows)")]
    SlotOutOfRange {
        /// The slot asked for.
        slot: u64,
        /// Rows in the store.
        len: u64,
    },
    /// An invalid argument (dimension 0, k = 0, a threshold that is NaN, ...).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A value cannot be stored in the store's element type (f16 holds |x| <= 65504 and no NaN/inf).
    #[error("value {value} at index {index} cannot be stored as {elem}: {reason}")]
    ValueOutOfRange {
        /// Index within the vector.
        index: usize,
        /// The offending value.
        value: f32,
        /// The element type.
        elem: &'static str,
        /// Why.
        reason: &'static str,
    },
    /// The operation needs the writer role but the store was opened read-only.
    #[error("the vector store was opened read-only; {0} needs the writer")]
    ReadOnly(&'static str),
    /// A fault injected by a test hook (only with the `fault-injection` feature).
    #[error("injected fault at {0}")]
    Injected(&'static str),
}

/// Result alias for phenix-core.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(op: &'static str, path: &std::path::Path, source: std::io::Error) -> Self {
        Error::Io {
            op,
            path: path.to_path_buf(),
            source,
        }
    }
}
