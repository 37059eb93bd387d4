//! Training pieces shared by the stages that train (`train-head`, `fine-tune`): the seed's dense
//! head, optimizers with Keras semantics and checkpointable state, the epoch loop on cached
//! features, the stage outputs (history CSV, plots, confusion matrices, `metrics.json`:
//! [`outputs`]), and atomic writes of everything a run produces.

mod atomic;
pub mod checkpoint;
mod error;
pub mod fit;
mod fused;
pub mod head;
mod history;
pub mod optim;
pub mod outputs;
pub mod tensors_io;

pub use atomic::write_atomic_ctx;
pub use error::TrainError;
pub use fit::{EarlyStopping, Evaluation, FeatureSet, FitConfig, evaluate, fit};
pub use head::{DenseHead, HeadSpec};
pub use history::{
    EpochRecord, read_csv as read_history, to_csv as history_csv, write_csv as write_history,
};
pub use optim::{Optimizer, OptimizerChoice, OptimizerSpec};
pub use outputs::ConfusionMatrix;
