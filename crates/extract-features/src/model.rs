//! The frozen feature extractor: VGG16 weights loaded once, preprocessing, the layer cut,
//! optional global pooling, and the CPU fast paths (channels-last layout, bfloat16).
//!
//! Weights are our safetensors (`features.N.weight|bias`, metadata `preprocessing`,
//! `architecture`), read with `training::tensors_io`.

use std::path::Path;

use anyhow::{Context, Result};
use clap::ValueEnum;
use models::{Vgg16Base, Vgg16Layer, output_shape};
use serde::Serialize;
use tch::{Device, Kind, Tensor};

/// Keras `pooling=` for `include_top=False`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Pooling {
    None,
    Avg,
    Max,
}

impl Pooling {
    pub fn name(self) -> &'static str {
        match self {
            Pooling::None => "none",
            Pooling::Avg => "avg",
            Pooling::Max => "max",
        }
    }
}

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

/// How pixels become network input; recorded with the weights, overridable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Preprocessing {
    /// Keras/Caffe lineage: RGB -> BGR, subtract the ImageNet mean [103.939, 116.779, 123.68], 0-255.
    Caffe,
    /// torchvision: divide by 255, subtract mean [0.485, 0.456, 0.406], divide by std [0.229, 0.224, 0.225].
    Torch,
    /// Divide by 255 only (what the seed's `ImageDataGenerator(rescale=1./255)` does).
    Rescale,
}

impl std::fmt::Display for Preprocessing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Preprocessing::Caffe => "caffe",
            Preprocessing::Torch => "torch",
            Preprocessing::Rescale => "rescale",
        })
    }
}

impl Preprocessing {
    fn parse(s: &str) -> Option<Self> {
        <Self as ValueEnum>::from_str(s, true).ok()
    }

    /// u8 `[N, H, W, 3]` RGB -> float `[N, 3, H, W]` (a channels-last view, no copy).
    fn apply(self, batch: &Tensor) -> Result<Tensor> {
        let xs = batch.f_to_kind(Kind::Float)?;
        let device = xs.device();
        let xs = match self {
            Preprocessing::Caffe => {
                let bgr = xs.f_flip([3])?;
                let mean = Tensor::from_slice(&[103.939f32, 116.779, 123.68]).f_to_device(device)?;
                bgr.f_sub(&mean)?
            }
            Preprocessing::Torch => {
                let mean = Tensor::from_slice(&[0.485f32, 0.456, 0.406]).f_to_device(device)?;
                let std = Tensor::from_slice(&[0.229f32, 0.224, 0.225]).f_to_device(device)?;
                (xs / 255.0).f_sub(&mean)?.f_div(&std)?
            }
            Preprocessing::Rescale => xs / 255.0,
        };
        Ok(xs.f_permute([0, 3, 1, 2])?)
    }
}

/// Loaded VGG16 weights and what their file says about them.
struct Weights {
    vs: tch::nn::VarStore,
    base: Vgg16Base,
    sha256: String,
    architecture: String,
    preprocessing: Preprocessing,
}

fn load_weights(path: &Path, device: Device) -> Result<Weights> {
    let loaded = training::tensors_io::load(path)?;
    let architecture = loaded.metadata.get("architecture").cloned().unwrap_or_else(|| "vgg16_conv_base".into());
    let preprocessing = match loaded.metadata.get("preprocessing") {
        Some(p) => Preprocessing::parse(p).with_context(|| format!("{}: unknown preprocessing {p:?}", path.display()))?,
        None => anyhow::bail!("{}: no preprocessing recorded in the metadata; pass --preprocessing", path.display()),
    };
    let mut vs = tch::nn::VarStore::new(Device::Cpu);
    let base = Vgg16Base::new(&vs.root());
    training::tensors_io::copy_into(&vs, &loaded.tensors, path)?;
    vs.set_device(device);
    Ok(Weights { vs, base, sha256: loaded.sha256, architecture, preprocessing })
}

/// Gives every 4-D weight channels-last strides (same values), the layout oneDNN's fastest CPU
/// convolutions use; the input is made channels-last by permuting NHWC without a copy.
fn to_channels_last(vs: &tch::nn::VarStore) -> Result<()> {
    for (_, mut var) in vs.variables() {
        if var.dim() == 4 {
            let nhwc = var.f_permute([0, 2, 3, 1])?.f_contiguous()?.f_permute([0, 3, 1, 2])?;
            tch::no_grad(|| var.set_data(&nhwc));
        }
    }
    Ok(())
}

/// VGG16 cut at a layer, ready to turn u8 image batches into feature rows.
pub struct FeatureModel {
    weights: Weights,
    layer: Vgg16Layer,
    preprocessing: Preprocessing,
    pooling: Pooling,
    precision: Precision,
    device: Device,
}

impl FeatureModel {
    pub fn load(
        path: &Path,
        device: Device,
        layer: Vgg16Layer,
        preprocessing: Option<Preprocessing>,
        pooling: Pooling,
        precision: Precision,
    ) -> Result<Self> {
        let mut weights = load_weights(path, device).with_context(|| format!("loading weights {}", path.display()))?;
        weights.vs.freeze();
        let preprocessing = preprocessing.unwrap_or(weights.preprocessing);
        if precision == Precision::Bf16 {
            weights.vs.bfloat16();
        }
        if device == Device::Cpu {
            to_channels_last(&weights.vs)?;
        }
        Ok(Self { weights, layer, preprocessing, pooling, precision, device })
    }

    pub fn weights_sha256(&self) -> &str {
        &self.weights.sha256
    }

    pub fn architecture(&self) -> &str {
        &self.weights.architecture
    }

    pub fn preprocessing_name(&self) -> String {
        self.preprocessing.to_string()
    }

    /// Shape of one feature row for square inputs of `size`: `[H, W, C]` (channels last, as
    /// Keras stores them) or `[C]` with global pooling.
    pub fn row_shape(&self, size: i64) -> Result<Vec<u64>> {
        let [c, h, w] = output_shape(size, size, self.layer)?;
        Ok(match self.pooling {
            Pooling::None => vec![h as u64, w as u64, c as u64],
            Pooling::Avg | Pooling::Max => vec![c as u64],
        })
    }

    /// images: `n` RGB8 images of `h` x `w`, HWC, back to back -> `n` feature rows, flattened.
    pub fn features(&self, images: &[u8], n: usize, h: usize, w: usize) -> Result<Vec<f32>> {
        tch::no_grad(|| {
            let batch = Tensor::from_slice(images).f_view([n as i64, h as i64, w as i64, 3])?;
            let batch = if self.device == Device::Cpu { batch } else { batch.f_pin_memory(self.device)?.f_to_device_(self.device, Kind::Uint8, true, false)? };
            // NHWC u8 -> float NCHW view with channels-last strides (no copy): the fast CPU layout.
            let xs = self.preprocessing.apply(&batch)?.f_to_kind(self.precision.kind())?;
            let ys = self.weights.base.forward_to(&xs, self.layer)?;
            let ys = match self.pooling {
                Pooling::None => ys.f_permute([0, 2, 3, 1])?,
                Pooling::Avg => ys.f_mean_dim(&[2i64, 3][..], false, Kind::Float)?,
                Pooling::Max => ys.f_amax(&[2i64, 3][..], false)?,
            };
            let ys = ys.f_to_kind(Kind::Float)?.f_to_device(Device::Cpu)?.f_contiguous()?;
            Ok(Vec::<f32>::try_from(ys.f_flatten(0, -1)?)?)
        })
    }
}
