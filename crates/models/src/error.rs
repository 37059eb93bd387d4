//! The error type of the models crate: every variant says what was wrong and with which input.

/// Errors from building, loading or running a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("unknown VGG16 layer {name:?}: expected a Keras name (block1_conv1 .. block5_pool) or a torchvision index (features.0 .. features.30)")]
    UnknownLayer { name: String },
    #[error("input batch has shape {shape:?}: expected [N, 3, H, W]")]
    BadInputShape { shape: Vec<i64> },
    #[error("input batch is empty (N = 0): nothing to run")]
    EmptyBatch,
    #[error("input of {height}x{width} is too small for VGG16 up to {layer}: the feature map vanishes at {vanishes_at} (needs at least {min}x{min})")]
    InputTooSmall { height: i64, width: i64, layer: &'static str, vanishes_at: &'static str, min: i64 },
    #[error("unknown device {given:?}: expected auto, cpu, cuda or cuda:N")]
    UnknownDevice { given: String },
    #[error("device {given} requested, but libtorch sees {available} CUDA device(s)")]
    CudaUnavailable { given: String, available: i64 },
    #[error("{path}: {reason}")]
    Weights { path: std::path::PathBuf, reason: String },
    #[error("libtorch error: {0}")]
    Torch(#[from] tch::TchError),
}
