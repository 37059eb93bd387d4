//! The error type of the feature cache: each variant names the path it is about and why.

use std::path::PathBuf;

use crate::npy::{NpyError, ReadError};

/// Everything that can go wrong with a cache, its entries and bundles.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// Reading or writing `path` failed (a missing file inside an entry counts as corruption).
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    /// The `.npy` file `path` is not one this tool writes (or expects here).
    #[error("{path}: {source}")]
    Npy { path: PathBuf, source: NpyError },
    /// The entry file (or bundle) `path` is damaged or inconsistent, for `reason`.
    #[error("{path}: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    /// The sha256 of `file` (at `path`) is not the one `checksums.sha256` records.
    #[error("{path}: digest mismatch for {file}: recorded {recorded}, actual {actual}")]
    Digest { path: PathBuf, file: String, recorded: String, actual: String },
    /// The caller asked for something impossible (wrong row count or shape, a non-key name).
    #[error("{path}: {reason}")]
    Usage { path: PathBuf, reason: String },
    /// There is no entry folder at `path` (gone, never written, or removed by `gc`).
    #[error("{path}: no such cache entry or split index")]
    Missing { path: PathBuf },
}

/// `run_folder::write_atomic` names the file it failed on; keep that path.
impl From<run_folder::RunError> for CacheError {
    fn from(err: run_folder::RunError) -> Self {
        match err {
            run_folder::RunError::Io { path, source } => CacheError::Io { path, source },
            run_folder::RunError::Invalid { path, reason } => CacheError::Corrupt { path, reason },
        }
    }
}

impl CacheError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| CacheError::Io { path, source }
    }

    pub(crate) fn corrupt(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        CacheError::Corrupt { path: path.into(), reason: reason.into() }
    }

    pub(crate) fn from_read(path: impl Into<PathBuf>, err: ReadError) -> Self {
        let path = path.into();
        match err {
            ReadError::Format(source) => CacheError::Npy { path, source },
            ReadError::Io(source) => CacheError::Io { path, source },
        }
    }

    /// True when the entry itself is damaged (as opposed to the cache being unreadable), so
    /// recomputing it is the right response.
    pub fn is_corruption(&self) -> bool {
        matches!(
            self,
            CacheError::Npy { .. } | CacheError::Corrupt { .. } | CacheError::Digest { .. }
        ) || matches!(self, CacheError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound)
    }
}
