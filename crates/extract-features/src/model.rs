//! The frozen feature extractor: VGG16 weights loaded once, preprocessing, the layer cut,
//! optional global pooling, and the CPU fast paths (channels-last layout, bfloat16).
//!
//! Weights are our safetensors (`features.N.weight|bias`, metadata `preprocessing`,
//! `architecture`), read with `training::tensors_io`.

use std::path::Path;

use anyhow::{Context, Result};
use clap::ValueEnum;
use models::{Layer, LayerName, LoadedWeights, Pooling, Preprocessing, load_weights, preprocess};
use serde::Serialize;
use tch::{Device, Kind, Tensor};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    F32,
    Bf16,
}

impl Precision {
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
        }
    }

    fn kind(self) -> Kind {
        match self {
            Precision::F32 => Kind::Float,
            Precision::Bf16 => Kind::BFloat16,
        }
    }
}

/// Gives every 4-D weight channels-last strides (same values), the layout oneDNN's fastest CPU
/// convolutions use; `preprocess` makes the input channels-last by permuting NHWC (no copy).
fn to_channels_last(vs: &tch::nn::VarStore) -> Result<()> {
    for (_, mut var) in vs.variables() {
        if var.dim() == 4 {
            let nhwc = var.f_permute([0, 2, 3, 1])?.f_contiguous()?.f_permute([0, 3, 1, 2])?;
            tch::no_grad(|| var.set_data(&nhwc));
        }
    }
    Ok(())
}

/// The conv base (VGG16 or any base of our weights format) cut at a layer, ready to turn u8 image
/// batches into feature rows.
pub struct FeatureModel {
    weights: LoadedWeights,
    layer: Layer,
    preprocessing: Preprocessing,
    pooling: Pooling,
    precision: Precision,
    device: Device,
}

impl FeatureModel {
    pub fn load(
        path: &Path,
        device: Device,
        layer: &LayerName,
        preprocessing: Option<Preprocessing>,
        pooling: Pooling,
        precision: Precision,
    ) -> Result<Self> {
        let mut weights = load_weights(path, device).with_context(|| format!("loading weights {}", path.display()))?;
        let layer = weights.base.layer(layer).context("--layer")?;
        weights.vs.freeze();
        let preprocessing = preprocessing.unwrap_or(weights.meta.preprocessing);
        if precision == Precision::Bf16 {
            weights.vs.bfloat16();
        }
        if device == Device::Cpu {
            to_channels_last(&weights.vs)?;
        }
        Ok(Self { weights, layer, preprocessing, pooling, precision, device })
    }

    pub fn weights_sha256(&self) -> &str {
        &self.weights.meta.digest
    }

    pub fn architecture(&self) -> &str {
        &self.weights.meta.architecture
    }

    /// The Keras name of the layer cut (`block5_pool` for `features.30`).
    pub fn layer_name(&self) -> &str {
        self.weights.base.arch().name_of(self.layer)
    }

    pub fn preprocessing_name(&self) -> String {
        self.preprocessing.to_string()
    }

    /// Shape of one feature row for square inputs of `size`: `[H, W, C]` (channels last, as
    /// Keras stores them) or `[C]` with global pooling.
    pub fn row_shape(&self, size: i64) -> Result<Vec<u64>> {
        let chw = self.weights.base.arch().feature_shape(size, size, self.layer, self.pooling)?;
        // Stored channels last, as Keras does: [C, H, W] -> [H, W, C].
        let mut shape: Vec<u64> = chw.iter().map(|&d| d as u64).collect();
        shape.rotate_left(1);
        Ok(shape)
    }

    /// images: `n` RGB8 images of `h` x `w`, HWC, back to back -> `n` feature rows, flattened.
    pub fn features(&self, images: &[u8], n: usize, h: usize, w: usize) -> Result<Vec<f32>> {
        tch::no_grad(|| {
            let batch = Tensor::from_slice(images).f_view([n as i64, h as i64, w as i64, 3])?;
            let batch = if self.device == Device::Cpu { batch } else { batch.f_pin_memory(self.device)?.f_to_device_(self.device, Kind::Uint8, true, false)? };
            // NHWC u8 -> float NCHW view with channels-last strides (no copy): the fast CPU layout.
            let xs = preprocess(&batch, self.preprocessing)?.f_to_kind(self.precision.kind())?;
            let ys = self.pooling.apply(&self.weights.base.forward_to(&xs, self.layer)?)?;
            let ys = if ys.dim() == 4 { ys.f_permute([0, 2, 3, 1])? } else { ys };
            let ys = ys.f_to_kind(Kind::Float)?.f_to_device(Device::Cpu)?.f_contiguous()?;
            Ok(Vec::<f32>::try_from(ys.f_flatten(0, -1)?)?)
        })
    }
}
