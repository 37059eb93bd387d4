//! The error type of the training crate.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error(
        "non-finite loss ({loss}) at epoch {epoch}, step {step}: training stopped, no weights written from this state"
    )]
    NonFinite { epoch: usize, step: usize, loss: f64 },
    #[error(
        "non-finite validation loss ({loss}) after epoch {epoch}: the training loss was finite, so look at the validation inputs (a non-finite feature or pixel) or lower the learning rate"
    )]
    NonFiniteValidation { epoch: usize, loss: f64 },
    #[error("{path}: {reason}")]
    Weights { path: PathBuf, reason: String },
    #[error("{0}")]
    Config(String),
    #[error("plot {path}: {reason}")]
    Plot { path: PathBuf, reason: String },
    #[error(transparent)]
    Model(#[from] models::ModelError),
    /// What a training task (batches, validation, history) failed with.
    #[error(transparent)]
    Task(Box<dyn std::error::Error + Send + Sync>),
    #[error("libtorch error: {0}")]
    Torch(#[from] tch::TchError),
}

impl From<plots::PlotError> for TrainError {
    fn from(e: plots::PlotError) -> Self {
        TrainError::Plot { path: e.path, reason: e.reason }
    }
}
