//! `cargo xtask bench <target>`: benchmark programs, built in release mode and run as separate
//! processes (never timed tests). Each target lives in its own module; add a variant to
//! [`Target`] and a match arm in [`run`] for a new one.

mod augment;
mod dataset;
mod extract;
mod fine_tune;
mod head;
mod head_accuracy;
mod head_memory;
mod pipeline_extract;
mod predict;

use anyhow::Result;

/// What `cargo xtask bench` measures.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum Target {
    /// Image decode + resize throughput, directory scan time and memory bound (crates/dataset).
    Dataset,
    /// Keras ImageDataGenerator augmentation throughput beside keras-preprocessing (crates/augment).
    Augment,
    /// VGG16 feature extraction (f32, bf16) beside a PyTorch DataLoader reference on the same images.
    Extract,
    /// Dense-head training on cached-size features beside the same model in Python PyTorch.
    Head,
    /// Dense-head validation and test accuracy on a dataset (the demo's cats vs dogs by default):
    /// input sizes, caffe vs rescale, block5 vs block4, plain vs augmented passes.
    HeadAccuracy,
    /// Peak RSS of `train-head` on the demo's cached features and on a training split ten times
    /// larger (the same rows repeated under other file names): it must stay flat.
    HeadMemory,
    /// One fine-tuning epoch (plain, cached-trunk) beside the same model in Python PyTorch;
    /// `-- --accuracy` adds small-budget accuracy of head only, head + augmented passes and both
    /// fine-tuning modes.
    FineTune,
    /// The pipeline's extraction stages with blocks 1-4 run twice (extract, then extract-trunk,
    /// both from images) beside trunk-first with block5_pool derived from the cached block4_pool.
    PipelineExtract,
    /// `predict` with the demo's fine-tuned VGG16 model file beside `extract-features` of the
    /// same base on the same images; predict's peak RSS on 1,000 and 10,000 images.
    Predict,
}

pub fn run(target: Target, args: &[String]) -> Result<()> {
    match target {
        Target::Dataset => dataset::run(args),
        Target::Augment => augment::run(args),
        Target::Head => head::run(args),
        Target::HeadAccuracy => head_accuracy::run(args),
        Target::HeadMemory => head_memory::run(args),
        Target::Extract => extract::run(args),
        Target::FineTune => fine_tune::run(args),
        Target::PipelineExtract => pipeline_extract::run(args),
        Target::Predict => predict::run(args),
    }
}
