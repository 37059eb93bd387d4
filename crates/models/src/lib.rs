//! Models for transfer learning on tch: the VGG16 convolutional base (Keras `include_top=False`)
//! with both Keras (`block5_conv1`) and torchvision (`features.24`) layer names, a layer cut, and
//! device selection (`auto|cpu|cuda|cuda:N`).
//!
//! Variables are named like torchvision's `vgg16().features` (`features.N.weight`, `.bias`), so
//! torchvision-style weight files load by name.

mod device;
mod error;
pub mod import;
mod onnx;
mod vgg16;

pub use device::DeviceChoice;
pub use error::ModelError;
pub use vgg16::{LayerKind, LayerSpec, VGG16_LAYERS, Vgg16Base, Vgg16Layer, output_shape};

/// Number of trainable scalars held by a `VarStore`.
pub fn parameter_count(vs: &tch::nn::VarStore) -> i64 {
    vs.trainable_variables().iter().map(|t| t.numel() as i64).sum()
}
