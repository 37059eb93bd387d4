//! `history.csv` for the training stages: the record and format live in `run_folder` (the
//! pipeline's report reads them too); these wrappers report errors as [`TrainError`].

use std::path::Path;

pub use run_folder::{EpochRecord, history_csv as to_csv};

use crate::TrainError;

/// Writes `history.csv` atomically.
pub fn write_csv(path: &Path, history: &[EpochRecord]) -> Result<(), TrainError> {
    crate::write_atomic_ctx(path, to_csv(history).as_bytes())
}

/// Reads a `history.csv` written by [`write_csv`] (for resuming and reports).
pub fn read_csv(path: &Path) -> Result<Vec<EpochRecord>, TrainError> {
    run_folder::read_history(path).map_err(|e| match e {
        run_folder::RunError::Io { path, source } => TrainError::Io { path, source },
        run_folder::RunError::Invalid { path, reason } => TrainError::Weights { path, reason },
    })
}
