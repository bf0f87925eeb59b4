//! The crate's error type and the one place where errors become errno values.
//!
//! Invariants: every failure a filesystem request can meet is an `Error`; `Error::errno` is the
//! only mapping to kernel error numbers, so the FUSE layer never chooses an errno itself.

use crate::codec::CodecError;
use crate::store::StoreError;
use std::io;

/// Errors of the engine and the layers below it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no such file or directory")]
    NotFound,
    #[error("file exists")]
    Exists,
    #[error("not a directory")]
    NotDir,
    #[error("is a directory")]
    IsDir,
    #[error("directory not empty")]
    NotEmpty,
    #[error("name too long (limit 255 bytes)")]
    NameTooLong,
    #[error("invalid argument: {0}")]
    Invalid(&'static str),
    #[error("operation not permitted: {0}")]
    NotPermitted(&'static str),
    #[error("no such attribute")]
    NoAttr,
    #[error("result does not fit the buffer")]
    Range,
    #[error("value too large: {0}")]
    TooBig(&'static str),
    #[error("operation not supported: {0}")]
    Unsupported(&'static str),
    #[error("file too large")]
    FileTooBig,
    #[error("too many links")]
    TooManyLinks,
    #[error("data corruption: {0}")]
    Corrupt(String),
    /// The journal turned read-only (a failed disk write or sync, or an index update that
    /// failed after its record was appended); the next mount recovers.
    #[error("the filesystem is read-only after an error: {0}")]
    Poisoned(String),
    /// An encrypted store opened without its key, or a key given for a plain store.
    #[error("{0}")]
    Locked(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Codec(#[from] CodecError),
    #[error("metadata index: {0}")]
    Index(#[from] redb::Error),
    #[error(transparent)]
    Io(#[from] io::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

// redb's specific errors all fold into `redb::Error`.
macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for Error {
            fn from(e: $t) -> Error {
                Error::Index(redb::Error::from(e))
            }
        }
    )*};
}
from_redb!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError
);

/// Whether an error of the index database means its file is damaged (or not a database at
/// all), as opposed to a failing disk: a damaged index is set aside and rebuilt.
pub fn index_corrupt(e: &redb::Error) -> bool {
    match e {
        redb::Error::Corrupted(_) | redb::Error::UpgradeRequired(_) => true,
        // redb reports a file that holds no database as an I/O error of this kind.
        redb::Error::Io(io) => {
            io.raw_os_error().is_none() && io.kind() == io::ErrorKind::InvalidData
        }
        _ => false,
    }
}

impl Error {
    /// The errno the kernel should see for this error.
    pub fn errno(&self) -> i32 {
        use libc::*;
        match self {
            Error::NotFound => ENOENT,
            Error::Exists => EEXIST,
            Error::NotDir => ENOTDIR,
            Error::IsDir => EISDIR,
            Error::NotEmpty => ENOTEMPTY,
            Error::NameTooLong => ENAMETOOLONG,
            Error::Invalid(_) => EINVAL,
            Error::NotPermitted(_) => EPERM,
            Error::NoAttr => ENODATA,
            Error::Range => ERANGE,
            Error::TooBig(_) => E2BIG,
            Error::Unsupported(_) => EOPNOTSUPP,
            Error::FileTooBig => EFBIG,
            Error::TooManyLinks => EMLINK,
            Error::Poisoned(_) => EROFS,
            Error::Locked(_) => EACCES,
            Error::Index(e) if index_corrupt(e) => EIO,
            Error::Index(redb::Error::Io(e)) => io_errno(e),
            Error::Corrupt(_) | Error::Codec(_) | Error::Index(_) => EIO,
            Error::Store(e) => e.errno(),
            Error::Io(e) => io_errno(e),
        }
    }
}

/// Errno of an I/O error from the backing filesystem; EIO when it carries none.
pub fn io_errno(e: &io::Error) -> i32 {
    match e.raw_os_error() {
        Some(n) => n,
        None if e.kind() == io::ErrorKind::StorageFull => libc::ENOSPC,
        None => libc::EIO,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_table() {
        let cases: Vec<(Error, i32)> = vec![
            (Error::NotFound, libc::ENOENT),
            (Error::Exists, libc::EEXIST),
            (Error::NotEmpty, libc::ENOTEMPTY),
            (Error::NoAttr, libc::ENODATA),
            (Error::Range, libc::ERANGE),
            (Error::Corrupt("x".into()), libc::EIO),
            (
                Error::Io(io::Error::from_raw_os_error(libc::ENOSPC)),
                libc::ENOSPC,
            ),
            (Error::Store(StoreError::Corrupt("bad".into())), libc::EIO),
            (Error::Poisoned("disk".into()), libc::EROFS),
            (
                Error::Index(redb::Error::Io(io::Error::from_raw_os_error(libc::ENOSPC))),
                libc::ENOSPC,
            ),
            (
                Error::Index(redb::Error::Io(io::Error::from_raw_os_error(libc::EACCES))),
                libc::EACCES,
            ),
            (Error::Index(redb::Error::Corrupted("x".into())), libc::EIO),
            (Error::Index(redb::Error::PreviousIo), libc::EIO),
        ];
        assert!(index_corrupt(&redb::Error::Corrupted("x".into())));
        assert!(index_corrupt(&redb::Error::Io(io::Error::new(
            io::ErrorKind::InvalidData,
            "not a database"
        ))));
        assert!(!index_corrupt(&redb::Error::Io(
            io::Error::from_raw_os_error(libc::ENOSPC)
        )));
        for (e, n) in cases {
            assert_eq!(e.errno(), n, "{e}");
        }
    }
}
