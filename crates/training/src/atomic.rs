//! Atomic file writes (delegated to `run-folder`, the one implementation in the workspace), with
//! errors in this crate's type.

use std::path::Path;

/// Writes `bytes` to `path` via a fsynced temp file in the same folder and a rename, naming the
/// file on failure.
pub fn write_atomic_ctx(path: &Path, bytes: &[u8]) -> Result<(), crate::TrainError> {
    run_folder::write_atomic(path, bytes).map_err(|e| match e {
        run_folder::RunError::Io { path, source } => crate::TrainError::Io { path, source },
        other => crate::TrainError::Weights { path: path.to_owned(), reason: other.to_string() },
    })
}
