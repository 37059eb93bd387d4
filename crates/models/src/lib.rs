//! Models for transfer learning on tch: convolutional bases described by a layer list (VGG16,
//! Keras `include_top=False`; Chollet's small convnet; a VGG16 of reduced width) with both Keras
//! (`block5_conv1`, `conv2d_1`) and torchvision (`features.24`) layer names, a layer cut with
//! global pooling, the preprocessing each set of weights needs, weight import (ONNX of Keras
//! lineage, PyTorch state dicts, tch-rs `.ot`, safetensors) into our safetensors format with
//! provenance and digest, and device selection (`auto|cpu|cuda|cuda:N`).
//!
//! Variables are named like torchvision's `vgg16().features` (`features.N.weight`, `.bias`), so
//! torchvision-style weight files load by name; other architectures follow the same rule (N is
//! the position in an `nn.Sequential` of conv, ReLU, pool).
//!
//! Typical use: `let w = load_weights(path, device)?;` then
//! `w.features(&u8_batch_nhwc, "block4_pool", Pooling::Avg)?` (`[N, 512]`), or
//! `preprocess(&batch, mode)?` and `w.base.features(&xs, layer, pooling)?` to override the
//! preprocessing recorded with the weights. Layers are named through the architecture
//! ([`ConvArch`], e.g. `ConvArch::vgg16().layer("features.24")`, or anything [`ToLayer`]), and
//! shapes come from it (`arch.output_shape(h, w, layer)`, `arch.feature_shape(..)`); a VGG16 base
//! is `ConvBase::with_arch(path, ConvArch::vgg16())`.

mod arch;
mod base;
pub mod classifier;
mod device;
mod error;
pub mod head;
pub mod import;
mod onnx;
mod pickle;
mod pooling;
mod preprocess;
pub mod tensor_file;
pub mod weights;

pub use arch::{
    ConvArch, ConvLayer, Layer, LayerDef, LayerKind, LayerName, Padding, SMALL_CONVNET, ToLayer,
    VGG16_ARCHITECTURE,
};
pub use base::{ConvBase, run_conv, run_pool};
pub use classifier::{Classifier, HEADER_KEY, MODEL_FORMAT_VERSION, ModelHeader};
pub use device::DeviceChoice;
pub use error::ModelError;
pub use head::{DenseHead, HeadSpec};
pub use import::{SourceFormat, import_weights};
pub use pooling::Pooling;
pub use preprocess::{CAFFE_MEAN_BGR, Preprocessing, TORCH_MEAN_RGB, TORCH_STD_RGB, preprocess};
pub use weights::{LoadedWeights, WeightsMeta, load_weights};

/// Number of trainable scalars held by a `VarStore`.
pub fn parameter_count(vs: &tch::nn::VarStore) -> i64 {
    vs.trainable_variables().iter().map(|t| t.numel() as i64).sum()
}
