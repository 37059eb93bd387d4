//! The error type of the models crate: every variant says what was wrong and with which input.

use std::path::PathBuf;

/// Errors from building, loading or running a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(
        "unknown VGG16 layer {name:?}: expected a Keras name (block1_conv1 .. block5_pool) or a torchvision index (features.0 .. features.30)"
    )]
    UnknownLayer { name: String },
    #[error("unknown layer {name:?} in {architecture}: expected a Keras name ({expected})")]
    UnknownLayerIn { name: String, architecture: String, expected: String },
    #[error("architecture {name}: {reason}")]
    BadArchitecture { name: String, reason: String },
    #[error("input batch has shape {shape:?}: expected {expected}")]
    BadInputShape { shape: Vec<i64>, expected: String },
    #[error("no layer to keep: name at least one")]
    NothingToKeep,
    #[error("layer {layer} is not above {after}: a pass continuing from {after} cannot produce it")]
    LayerNotAbove { layer: String, after: String },
    #[error("input batch is empty (N = 0): nothing to run")]
    EmptyBatch,
    #[error(
        "input of {height}x{width} is too small for {architecture} up to {layer}: the feature map vanishes at {vanishes_at} (needs at least {min}x{min})"
    )]
    InputTooSmall {
        height: i64,
        width: i64,
        architecture: String,
        layer: String,
        vanishes_at: String,
        min: i64,
    },
    #[error("unknown device {given:?}: expected auto, cpu, cuda or cuda:N")]
    UnknownDevice { given: String },
    #[error("device {given} requested, but libtorch sees {available} CUDA device(s)")]
    CudaUnavailable { given: String, available: i64 },
    #[error("{path}: {reason}")]
    Weights { path: PathBuf, reason: String },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: missing tensor {name} (expected shape {expected:?})")]
    MissingTensor { path: PathBuf, name: String, expected: Vec<i64> },
    #[error("{path}: tensor {name} has shape {actual:?}, expected {expected:?}")]
    TensorShape { path: PathBuf, name: String, expected: Vec<i64>, actual: Vec<i64> },
    #[error("{path}: several tensors could be {name}: {candidates:?}")]
    AmbiguousTensor { path: PathBuf, name: String, candidates: Vec<String> },
    #[error("{path}: tensor {name} holds a non-finite value ({value})")]
    NonFinite { path: PathBuf, name: String, value: f32 },
    #[error("unknown preprocessing {given:?}: expected caffe, torch or rescale")]
    UnknownPreprocessing { given: String },
    #[error("unknown weights format {given:?}: expected onnx, torch, tch or safetensors")]
    UnknownFormat { given: String },
    #[error("unknown pooling {given:?}: expected none, avg or max")]
    UnknownPooling { given: String },
    #[error(
        "cannot preprocess a {kind} batch of shape {shape:?}: expected uint8 [N, H, W, 3] or float [N, 3, H, W]"
    )]
    BadBatch { kind: String, shape: Vec<i64> },
    #[error(
        "head expects inputs of width {expected}, but the features have width {actual} (shape {shape:?})"
    )]
    WidthMismatch { expected: i64, actual: i64, shape: Vec<i64> },
    #[error("libtorch error: {0}")]
    Torch(#[from] tch::TchError),
}
