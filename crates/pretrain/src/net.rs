//! The network trained from scratch: a conv base of any [`ConvArch`] (variables
//! `features.N.weight|bias`, as in every weights file) and the dense top of the training crate
//! (`head.fc1`, `head.fc2`) in one `VarStore`.
//!
//! Input: RGB8 `[N, H, W, 3]`, scaled to [0, 1] (Keras `rescale=1./255`, recorded as the base's
//! preprocessing). The base's output is flattened channels-last, as Keras' `Flatten` does, so a
//! head trained later by `train-head` on cached features of this base is laid out the same way.

use std::path::Path;

use anyhow::{Context, Result};
use clap::ValueEnum;
use models::weights::{Provenance, WeightsMeta, save_conv_base};
use models::{ConvArch, ConvBase, LayerKind, Preprocessing};
use serde::Serialize;
use tch::{Device, Tensor, nn};
use training::{DenseHead, HeadSpec, tensors_io};

/// The preprocessing the network is trained with, and so the one its weights record.
pub const PREPROCESSING: Preprocessing = Preprocessing::Rescale;

/// The architectures `pretrain --arch` offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ArchChoice {
    /// Chollet's small convnet: Conv 32, 64, 128, 128 (3x3 valid) each with a 2x2 max pool.
    SmallConvnet,
    /// VGG16's 13 convolutions and 5 pools, filters scaled by --width.
    Vgg16,
}

/// The conv base of `choice`; `width` scales VGG16's filters (must be 1 for the small convnet).
pub fn arch(choice: ArchChoice, width: f64) -> Result<ConvArch> {
    Ok(match choice {
        ArchChoice::SmallConvnet => {
            anyhow::ensure!(width == 1.0, "--width applies to --arch vgg16 only");
            ConvArch::small_convnet()
        }
        ArchChoice::Vgg16 => ConvArch::vgg16_width(width)?,
    })
}

/// Conv base + dense top.
pub struct ConvNet {
    pub vs: nn::VarStore,
    pub base: ConvBase,
    pub head: DenseHead,
    pub input_size: i64,
}

impl ConvNet {
    /// A fresh network initialised like Keras (Glorot-uniform kernels, zero biases) from the
    /// current libtorch seed. Fails when `input_size` does not survive the base's pools.
    pub fn new(
        arch: ConvArch,
        input_size: i64,
        classes: usize,
        hidden: i64,
        dropout: f64,
        device: Device,
    ) -> Result<Self> {
        anyhow::ensure!(classes >= 2, "training needs at least 2 classes, got {classes}");
        let [c, h, w] = arch
            .output_shape(input_size, input_size, arch.last())
            .with_context(|| format!("--input-size {input_size}"))?;
        let vs = nn::VarStore::new(device);
        let base = ConvBase::with_arch(&vs.root(), arch);
        keras_conv_init(&vs, &base)?;
        let head = DenseHead::new(
            &vs.root(),
            HeadSpec { input_width: c * h * w, hidden, dropout, classes },
        );
        Ok(Self { vs, base, head, input_size })
    }

    /// batch: RGB8 `[N, H, W, 3]` on the device -> logits `[N, 1 | classes]`. `train` turns
    /// dropout on.
    pub fn forward_t(&self, batch: &Tensor, train: bool) -> Result<Tensor> {
        let xs = models::preprocess(batch, PREPROCESSING)?;
        let ys = self.base.forward(&xs)?;
        Ok(self.head.forward_t(&ys.f_permute([0, 2, 3, 1])?, train)?)
    }

    /// Every variable, sorted by name: what an optimizer gets and what `model.safetensors` holds.
    pub fn variables(&self) -> Vec<(String, Tensor)> {
        tensors_io::named_variables(&self.vs)
    }

    /// Writes the conv base (no head) as our weights file.
    pub fn save_base(&self, path: &Path, provenance: &Provenance) -> Result<WeightsMeta> {
        let base: Vec<(String, Tensor)> =
            self.variables().into_iter().filter(|(n, _)| n.starts_with("features.")).collect();
        save_conv_base(path, self.base.arch(), &base, provenance)
            .with_context(|| format!("writing {}", path.display()))
    }
}

/// Keras' `Conv2D` defaults: kernel Glorot-uniform over fan_in = in * k * k and
/// fan_out = out * k * k, bias zero (libtorch's own default is Kaiming-uniform with a random bias).
fn keras_conv_init(vs: &nn::VarStore, base: &ConvBase) -> Result<()> {
    let vars = vs.variables();
    let arch = base.arch();
    for layer in arch.layers() {
        let spec = arch.spec(layer);
        let LayerKind::Conv { in_channels, out_channels, kernel, .. } = spec.kind else { continue };
        let limit = (6.0 / ((in_channels + out_channels) * kernel * kernel) as f64).sqrt();
        let name = |what: &str| format!("features.{}.{what}", spec.torch_index);
        let weight =
            vars.get(&name("weight")).with_context(|| format!("no variable {}", name("weight")))?;
        let bias =
            vars.get(&name("bias")).with_context(|| format!("no variable {}", name("bias")))?;
        tch::no_grad(|| -> Result<()> {
            let _ = weight.shallow_clone().f_uniform_(-limit, limit)?;
            let _ = bias.shallow_clone().f_zero_()?;
            Ok(())
        })?;
    }
    Ok(())
}
