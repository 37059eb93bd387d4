//! Training pieces shared by the stages that train (`train-head`, `fine-tune`, `pretrain`): the
//! one training loop ([`fit_loop`]: phases, validation, best epoch, early stopping, checkpoints
//! and exact resume) with a task per stage (a head on cached features: [`features`]), the loss,
//! optimizers with Keras semantics and checkpointable state, the stage outputs (history CSV, plots, confusion matrices, `metrics.json`:
//! [`outputs`]), and atomic writes of everything a run produces.

mod atomic;
pub mod checkpoint;
mod error;
pub mod features;
pub mod fit_loop;
mod fused;
pub mod head;
mod history;
pub mod optim;
pub mod order;
pub mod outputs;
pub mod tensors_io;

pub use atomic::write_atomic_ctx;
pub use error::TrainError;
pub use features::{
    FeatureRows, FeatureSet, FeatureTask, Features, HeadFit, StreamedSet, evaluate,
    evaluate_features, fit_head,
};
pub use fit_loop::{EarlyStopping, Evaluation, FitConfig, Outcome, PhasePlan, Task, TrainState};
pub use head::{DenseHead, HeadSpec};
pub use history::{
    EpochRecord, read_csv as read_history, to_csv as history_csv, write_csv as write_history,
};
pub use optim::{Optimizer, OptimizerChoice, OptimizerSpec};
pub use outputs::ConfusionMatrix;
