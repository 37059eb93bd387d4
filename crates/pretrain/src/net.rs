//! The network trained from scratch: a [`Classifier`] with every layer trainable, a conv base of
//! any [`ConvArch`] (variables `features.N.weight|bias`, as in every weights file) and the seed's
//! dense head (`head.fc1`, `head.fc2`).
//!
//! Input: RGB8 `[N, H, W, 3]`, scaled to [0, 1] (Keras `rescale=1./255`, recorded as the base's
//! preprocessing). The base's output is flattened channels-last, as Keras' `Flatten` does, so a
//! head trained later by `train-head` on cached features of this base is laid out the same way.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};
use clap::ValueEnum;
use models::classifier::{ModelHeader, head_input_width};
use models::weights::{Provenance, WeightsMeta, save_conv_base};
use models::{Classifier, ConvArch, HeadSpec, Pooling, Preprocessing};
use serde::Serialize;
use tch::{Device, Tensor};

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

/// A fresh classifier of `arch` for `classes` classes at `input_size`, initialised like Keras
/// (Glorot-uniform kernels, zero biases) from the current libtorch seed: the whole base up to
/// its last layer, flattened channels-last, then Dense(`hidden`, relu), dropout, Dense(1 | N).
/// `trained_on` goes into the model file's header. Fails when `input_size` does not survive the
/// base's pools.
pub fn new_model(
    arch: &ConvArch,
    input_size: i64,
    classes: &[String],
    (hidden, dropout): (i64, f64),
    trained_on: BTreeMap<String, String>,
    device: Device,
) -> Result<Classifier> {
    anyhow::ensure!(classes.len() >= 2, "training needs at least 2 classes, got {}", classes.len());
    let input_width = head_input_width(arch, arch.last(), Pooling::None, input_size)
        .with_context(|| format!("--input-size {input_size}"))?;
    let header = ModelHeader {
        format_version: models::MODEL_FORMAT_VERSION,
        architecture: arch.name().to_owned(),
        layers: arch.defs().to_vec(),
        cut: arch.name_of(arch.last()).to_owned(),
        pooling: Pooling::None,
        head: HeadSpec { input_width, hidden, dropout, classes: classes.len() },
        class_names: classes.to_vec(),
        preprocessing: PREPROCESSING,
        input_size: [input_size, input_size],
        resize: "nearest".to_owned(),
        // Set once the base is written (`save_base`): the model's base is the one it trained.
        base_weights_sha256: String::new(),
        trained_on,
        stage: "pretrain".to_owned(),
    };
    Ok(Classifier::from_scratch(header, device)?)
}

/// Writes the conv base of `model` (no head) as our weights file, which `extract-features` and
/// `fine-tune` take like VGG16's, and records its digest in the model's header.
pub fn save_base(
    model: &mut Classifier,
    path: &Path,
    provenance: &Provenance,
) -> Result<WeightsMeta> {
    let arch = model.header().arch()?;
    let base: Vec<(String, Tensor)> =
        model.variables().into_iter().filter(|(n, _)| n.starts_with("features.")).collect();
    let meta = save_conv_base(path, &arch, &base, provenance)
        .with_context(|| format!("writing {}", path.display()))?;
    model.header_mut().base_weights_sha256 = meta.digest.clone();
    Ok(meta)
}
