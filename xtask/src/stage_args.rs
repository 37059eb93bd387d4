//! The command lines of the binaries xtask runs, typed: one struct per binary (one field per
//! flag it is given), whose [`StageArgs::to_args`] spells the flags. The pipeline, the benches,
//! the demo-weights fetch and the gpu-check bundle all build their argument lists here, so a
//! flag is spelled once, in [`flag`], and a renamed flag is one edit.
//!
//! Each struct has the binary's required arguments as plain fields and every other flag as an
//! `Option` (or a `bool` switch): `None` leaves the binary's own default. Flags come out in a
//! fixed order, the one the pipeline has always recorded in `pipeline.json`, so a run made before
//! these builders existed is still up to date.
//!
//! gpu_check.py runs where there is no Rust, so `gpu_check.rs` writes argument lists into its
//! bundle with [`template`]: the same builders, some values replaced by `{name}` placeholders
//! the script fills in.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use anyhow::{Result, bail};

/// Every flag xtask passes, spelled once.
pub mod flag {
    pub const ARCH: &str = "--arch";
    pub const AUGMENT: &str = "--augment";
    pub const AUGMENT_PASSES: &str = "--augment-passes";
    pub const AUGMENT_SEED: &str = "--augment-seed";
    pub const AUTOCAST: &str = "--autocast";
    pub const BATCH_SIZE: &str = "--batch-size";
    pub const CACHE_DIR: &str = "--cache-dir";
    pub const CUDNN_BENCHMARK: &str = "--cudnn-benchmark";
    pub const DATA: &str = "--data";
    pub const DERIVE: &str = "--derive";
    pub const DEVICE: &str = "--device";
    pub const EPOCHS: &str = "--epochs";
    pub const FEATURES: &str = "--features";
    pub const HEAD: &str = "--head";
    pub const HEAD_EPOCHS: &str = "--head-epochs";
    pub const INPUT_SIZE: &str = "--input-size";
    pub const JSON: &str = "--json";
    pub const LAYER: &str = "--layer";
    pub const LR: &str = "--lr";
    pub const MODEL: &str = "--model";
    pub const NO_AUGMENTED_PASSES: &str = "--no-augmented-passes";
    pub const OPTIMIZER: &str = "--optimizer";
    pub const OUT: &str = "--out";
    pub const POOLING: &str = "--pooling";
    pub const PRECISION: &str = "--precision";
    pub const PREPROCESSING: &str = "--preprocessing";
    pub const RESUME: &str = "--resume";
    pub const SEED: &str = "--seed";
    pub const SOURCE: &str = "--source";
    pub const SPLIT: &str = "--split";
    pub const SPLITS: &str = "--splits";
    pub const STEPS_PER_EPOCH: &str = "--steps-per-epoch";
    pub const TOP_LOSSES: &str = "--top-losses";
    pub const TRUNK_CACHE: &str = "--trunk-cache";
    pub const UNFREEZE_FROM: &str = "--unfreeze-from";
    pub const WEIGHTS: &str = "--weights";
    pub const WIDTH: &str = "--width";
    /// extract-features' sharded runs (the Slurm scripts) and its plan (`--remote`); they are
    /// appended to a planned extraction's arguments, not fields of [`super::ExtractFeatures`].
    pub const MERGE: &str = "--merge";
    pub const PLAN_ONLY: &str = "--plan-only";
    pub const SHARD: &str = "--shard";
    pub const SHARDS: &str = "--shards";
}

/// One element of a command line.
#[derive(Debug, Clone, PartialEq)]
pub enum Arg {
    /// A subcommand or positional argument.
    Word(OsString),
    /// A flag and its value, as two arguments.
    Flag(&'static str, OsString),
    /// A flag alone.
    Switch(&'static str),
}

/// A binary's arguments, typed.
pub trait StageArgs {
    /// The binary's file name (under `target/<profile>/`).
    const BINARY: &'static str;

    /// The command line, in order.
    fn args(&self) -> Vec<Arg>;

    /// The command line as the binary gets it.
    fn to_args(&self) -> Vec<OsString> {
        flatten(self.args())
    }

    /// [`to_args`](Self::to_args) as text (paths converted lossily, as `Path::display` does):
    /// what the pipeline records and compares.
    fn to_strings(&self) -> Vec<String> {
        lossy(self.to_args())
    }
}

fn flatten(args: Vec<Arg>) -> Vec<OsString> {
    let mut out = Vec::new();
    for arg in args {
        match arg {
            Arg::Word(w) => out.push(w),
            Arg::Flag(f, v) => out.extend([f.into(), v]),
            Arg::Switch(f) => out.push(f.into()),
        }
    }
    out
}

fn lossy(args: Vec<OsString>) -> Vec<String> {
    args.into_iter().map(|a| a.to_string_lossy().into_owned()).collect()
}

/// `args` as text with the value of each flag in `slots` replaced by `{name}`: an argument list
/// for a program without Rust (gpu_check.py) to fill in. A slot whose flag `args` does not pass
/// is an error, so a template never silently loses a value.
pub fn template<A: StageArgs>(args: &A, slots: &[(&str, &str)]) -> Result<Vec<String>> {
    let mut list = args.args();
    for &(slot_flag, name) in slots {
        let Some(value) = list.iter_mut().find_map(|a| match a {
            Arg::Flag(f, v) if *f == slot_flag => Some(v),
            _ => None,
        }) else {
            bail!("{} template: no {slot_flag} to make the slot {{{name}}} of", A::BINARY);
        };
        *value = format!("{{{name}}}").into();
    }
    Ok(lossy(flatten(list)))
}

/// Pushes `flag value` when `value` is set.
fn opt<T: ToString>(out: &mut Vec<Arg>, flag: &'static str, value: &Option<T>) {
    if let Some(v) = value {
        out.push(Arg::Flag(flag, v.to_string().into()));
    }
}

/// Pushes `flag path` when `path` is set.
fn opt_path(out: &mut Vec<Arg>, flag: &'static str, path: &Option<PathBuf>) {
    if let Some(p) = path {
        out.push(Arg::Flag(flag, p.into()));
    }
}

fn path(flag: &'static str, p: &Path) -> Arg {
    Arg::Flag(flag, p.into())
}

/// `dataset check DATA --split S... [--out DIR]`: the dataset's record (`dataset.json`), and
/// an error when the data has problems.
#[derive(Debug, Clone)]
pub struct DatasetCheck {
    pub data: PathBuf,
    /// Splits that must be there.
    pub splits: Vec<String>,
    /// Stage folder for `dataset.json`.
    pub out: Option<PathBuf>,
}

impl StageArgs for DatasetCheck {
    const BINARY: &'static str = "dataset";
    fn args(&self) -> Vec<Arg> {
        let mut out = vec![Arg::Word("check".into()), Arg::Word(self.data.clone().into())];
        for s in &self.splits {
            out.push(Arg::Flag(flag::SPLIT, s.into()));
        }
        opt_path(&mut out, flag::OUT, &self.out);
        out
    }
}

/// `extract-features`: a dataset through a frozen conv base into the feature cache.
#[derive(Debug, Clone)]
pub struct ExtractFeatures {
    pub data: PathBuf,
    pub weights: PathBuf,
    /// Stage folder (`features.json`).
    pub out: PathBuf,
    /// Keras name or `features.N`.
    pub layer: Option<String>,
    pub input_size: Option<u32>,
    /// `none`, `avg`, `max`.
    pub pooling: Option<String>,
    /// `f32`, `bf16`, `autocast`.
    pub precision: Option<String>,
    pub batch_size: Option<u32>,
    pub augment_passes: Option<u32>,
    pub augment_seed: Option<u64>,
    /// `auto`, `cpu`, `cuda`, `cuda:N`.
    pub device: Option<String>,
    pub cache_dir: Option<PathBuf>,
    /// Splits to extract, comma-joined.
    pub splits: Option<Vec<String>>,
    /// `caffe`, `torch`, `rescale` (default: the weights' own).
    pub preprocessing: Option<String>,
    /// Derive a missing entry from a cached lower layer.
    pub derive: Option<bool>,
    pub cudnn_benchmark: Option<bool>,
}

impl ExtractFeatures {
    /// `data` through `weights` into `out`, every other setting the binary's default.
    pub fn new(
        data: impl Into<PathBuf>,
        weights: impl Into<PathBuf>,
        out: impl Into<PathBuf>,
    ) -> Self {
        Self {
            data: data.into(),
            weights: weights.into(),
            out: out.into(),
            layer: None,
            input_size: None,
            pooling: None,
            precision: None,
            batch_size: None,
            augment_passes: None,
            augment_seed: None,
            device: None,
            cache_dir: None,
            splits: None,
            preprocessing: None,
            derive: None,
            cudnn_benchmark: None,
        }
    }
}

impl StageArgs for ExtractFeatures {
    const BINARY: &'static str = "extract-features";
    fn args(&self) -> Vec<Arg> {
        let mut out = vec![
            path(flag::DATA, &self.data),
            path(flag::WEIGHTS, &self.weights),
            path(flag::OUT, &self.out),
        ];
        opt(&mut out, flag::LAYER, &self.layer);
        opt(&mut out, flag::INPUT_SIZE, &self.input_size);
        opt(&mut out, flag::POOLING, &self.pooling);
        opt(&mut out, flag::PRECISION, &self.precision);
        opt(&mut out, flag::BATCH_SIZE, &self.batch_size);
        opt(&mut out, flag::AUGMENT_PASSES, &self.augment_passes);
        opt(&mut out, flag::AUGMENT_SEED, &self.augment_seed);
        opt(&mut out, flag::DEVICE, &self.device);
        opt_path(&mut out, flag::CACHE_DIR, &self.cache_dir);
        opt(&mut out, flag::SPLITS, &self.splits.as_ref().map(|s| s.join(",")));
        opt(&mut out, flag::PREPROCESSING, &self.preprocessing);
        opt(&mut out, flag::DERIVE, &self.derive);
        opt(&mut out, flag::CUDNN_BENCHMARK, &self.cudnn_benchmark);
        out
    }
}

/// `train-head`: the dense classifier on cached features.
#[derive(Debug, Clone)]
pub struct TrainHead {
    /// The extraction's `features.json`.
    pub features: PathBuf,
    /// Stage folder.
    pub out: PathBuf,
    pub epochs: Option<u32>,
    pub batch_size: Option<u32>,
    pub lr: Option<f64>,
    /// `rmsprop`, `adam`, ...
    pub optimizer: Option<String>,
    pub seed: Option<u64>,
    pub device: Option<String>,
    /// Train on plain features even when the extraction made augmented passes.
    pub no_augmented_passes: bool,
    /// Read the cache entries from here instead of the folder `features.json` records.
    pub cache_dir: Option<PathBuf>,
    /// The base weights the features came from: with them the stage also writes the whole
    /// classifier (`model.safetensors`).
    pub weights: Option<PathBuf>,
}

impl TrainHead {
    /// A head on `features` into `out`, every other setting the binary's default.
    pub fn new(features: impl Into<PathBuf>, out: impl Into<PathBuf>) -> Self {
        Self {
            features: features.into(),
            out: out.into(),
            epochs: None,
            batch_size: None,
            lr: None,
            optimizer: None,
            seed: None,
            device: None,
            no_augmented_passes: false,
            cache_dir: None,
            weights: None,
        }
    }
}

impl StageArgs for TrainHead {
    const BINARY: &'static str = "train-head";
    fn args(&self) -> Vec<Arg> {
        let mut out = vec![path(flag::FEATURES, &self.features), path(flag::OUT, &self.out)];
        opt(&mut out, flag::EPOCHS, &self.epochs);
        opt(&mut out, flag::BATCH_SIZE, &self.batch_size);
        opt(&mut out, flag::LR, &self.lr);
        opt(&mut out, flag::OPTIMIZER, &self.optimizer);
        opt(&mut out, flag::SEED, &self.seed);
        opt(&mut out, flag::DEVICE, &self.device);
        if self.no_augmented_passes {
            out.push(Arg::Switch(flag::NO_AUGMENTED_PASSES));
        }
        opt_path(&mut out, flag::CACHE_DIR, &self.cache_dir);
        opt_path(&mut out, flag::WEIGHTS, &self.weights);
        out
    }
}

/// `evaluate`: a model file on a labelled split (figures, confusion matrix, top losses).
#[derive(Debug, Clone)]
pub struct Evaluate {
    pub model: PathBuf,
    /// Dataset root (`<data>/<split>/<class>/`).
    pub data: PathBuf,
    /// Stage folder.
    pub out: PathBuf,
    pub split: Option<String>,
    pub top_losses: Option<u32>,
    pub device: Option<String>,
}

impl StageArgs for Evaluate {
    const BINARY: &'static str = "evaluate";
    fn args(&self) -> Vec<Arg> {
        let mut out = vec![
            path(flag::MODEL, &self.model),
            path(flag::DATA, &self.data),
            path(flag::OUT, &self.out),
        ];
        opt(&mut out, flag::SPLIT, &self.split);
        opt(&mut out, flag::TOP_LOSSES, &self.top_losses);
        opt(&mut out, flag::DEVICE, &self.device);
        out
    }
}

/// `explain`: Grad-CAM overlays of a model file's predictions on some images.
#[derive(Debug, Clone)]
pub struct Explain {
    pub model: PathBuf,
    pub images: Vec<PathBuf>,
    /// Stage folder.
    pub out: PathBuf,
    pub device: Option<String>,
}

impl StageArgs for Explain {
    const BINARY: &'static str = "explain";
    fn args(&self) -> Vec<Arg> {
        let mut out = vec![path(flag::MODEL, &self.model), path(flag::OUT, &self.out)];
        opt(&mut out, flag::DEVICE, &self.device);
        out.extend(self.images.iter().map(|p| Arg::Word(p.clone().into_os_string())));
        out
    }
}

/// `fine-tune`: the top of the base and the head, trained together on augmented images (or on
/// the cached trunk's passes).
#[derive(Debug, Clone)]
pub struct FineTune {
    pub data: PathBuf,
    pub weights: PathBuf,
    /// Stage folder.
    pub out: PathBuf,
    pub input_size: Option<u32>,
    /// The first layer that trains.
    pub unfreeze_from: Option<String>,
    pub epochs: Option<u32>,
    pub steps_per_epoch: Option<u32>,
    pub batch_size: Option<u32>,
    pub lr: Option<f64>,
    pub seed: Option<u64>,
    pub device: Option<String>,
    /// Start from this trained head (`head.safetensors`).
    pub head: Option<PathBuf>,
    /// Head epochs with the base frozen first.
    pub head_epochs: Option<u32>,
    /// Cached-trunk mode: the trunk extraction's `features.json`.
    pub trunk_cache: Option<PathBuf>,
    /// Mixed precision on CUDA.
    pub autocast: bool,
    /// Continue from the checkpoint in `out`.
    pub resume: bool,
}

impl FineTune {
    /// Fine-tuning `weights` on `data` into `out`, every other setting the binary's default.
    pub fn new(
        data: impl Into<PathBuf>,
        weights: impl Into<PathBuf>,
        out: impl Into<PathBuf>,
    ) -> Self {
        Self {
            data: data.into(),
            weights: weights.into(),
            out: out.into(),
            input_size: None,
            unfreeze_from: None,
            epochs: None,
            steps_per_epoch: None,
            batch_size: None,
            lr: None,
            seed: None,
            device: None,
            head: None,
            head_epochs: None,
            trunk_cache: None,
            autocast: false,
            resume: false,
        }
    }
}

impl StageArgs for FineTune {
    const BINARY: &'static str = "fine-tune";
    fn args(&self) -> Vec<Arg> {
        let mut out = vec![
            path(flag::DATA, &self.data),
            path(flag::WEIGHTS, &self.weights),
            path(flag::OUT, &self.out),
        ];
        opt(&mut out, flag::INPUT_SIZE, &self.input_size);
        opt(&mut out, flag::UNFREEZE_FROM, &self.unfreeze_from);
        opt(&mut out, flag::EPOCHS, &self.epochs);
        opt(&mut out, flag::STEPS_PER_EPOCH, &self.steps_per_epoch);
        opt(&mut out, flag::BATCH_SIZE, &self.batch_size);
        opt(&mut out, flag::LR, &self.lr);
        opt(&mut out, flag::SEED, &self.seed);
        opt(&mut out, flag::DEVICE, &self.device);
        opt_path(&mut out, flag::HEAD, &self.head);
        opt(&mut out, flag::HEAD_EPOCHS, &self.head_epochs);
        opt_path(&mut out, flag::TRUNK_CACHE, &self.trunk_cache);
        if self.autocast {
            out.push(Arg::Switch(flag::AUTOCAST));
        }
        if self.resume {
            out.push(Arg::Switch(flag::RESUME));
        }
        out
    }
}

/// `pretrain`: a convnet trained from scratch, its conv base saved as weights.
#[derive(Debug, Clone)]
pub struct Pretrain {
    pub data: PathBuf,
    /// Stage folder (`base.safetensors`).
    pub out: PathBuf,
    pub input_size: Option<u32>,
    /// `small-convnet` or `vgg16`.
    pub arch: Option<String>,
    /// With `vgg16`: fraction of its filters.
    pub width: Option<f64>,
    pub epochs: Option<u32>,
    pub batch_size: Option<u32>,
    pub lr: Option<f64>,
    pub seed: Option<u64>,
    pub device: Option<String>,
    /// The seed's augmentation of the training images.
    pub augment: bool,
}

impl StageArgs for Pretrain {
    const BINARY: &'static str = "pretrain";
    fn args(&self) -> Vec<Arg> {
        let mut out = vec![path(flag::DATA, &self.data), path(flag::OUT, &self.out)];
        opt(&mut out, flag::INPUT_SIZE, &self.input_size);
        opt(&mut out, flag::ARCH, &self.arch);
        opt(&mut out, flag::WIDTH, &self.width);
        opt(&mut out, flag::EPOCHS, &self.epochs);
        opt(&mut out, flag::BATCH_SIZE, &self.batch_size);
        opt(&mut out, flag::LR, &self.lr);
        opt(&mut out, flag::SEED, &self.seed);
        opt(&mut out, flag::DEVICE, &self.device);
        if self.augment {
            out.push(Arg::Switch(flag::AUGMENT));
        }
        out
    }
}

/// `vgg16-weights`, the weights tool of the models crate.
#[derive(Debug, Clone)]
pub enum Vgg16Weights {
    /// `devices`: prints whether libtorch sees CUDA, as one JSON line.
    Devices,
    /// `random --seed N --out FILE`: seeded random VGG16 weights; prints their sha256.
    Random { seed: u32, out: PathBuf },
    /// `import MODEL --out FILE --preprocessing P --source TEXT`: a converted model.
    Import { model: PathBuf, out: PathBuf, preprocessing: String, source: String },
}

impl StageArgs for Vgg16Weights {
    const BINARY: &'static str = "vgg16-weights";
    fn args(&self) -> Vec<Arg> {
        match self {
            Self::Devices => vec![Arg::Word("devices".into())],
            Self::Random { seed, out } => vec![
                Arg::Word("random".into()),
                Arg::Flag(flag::SEED, seed.to_string().into()),
                path(flag::OUT, out),
            ],
            Self::Import { model, out, preprocessing, source } => vec![
                Arg::Word("import".into()),
                Arg::Word(model.into()),
                path(flag::OUT, out),
                Arg::Flag(flag::PREPROCESSING, preprocessing.into()),
                Arg::Flag(flag::SOURCE, source.into()),
            ],
        }
    }
}

/// `vgg16-layers --json`: the layer table of a conv base at an input size.
#[derive(Debug, Clone)]
pub struct Vgg16Layers {
    pub input_size: u32,
    /// The base in this weights file; else `arch`, else VGG16.
    pub weights: Option<PathBuf>,
    /// `small-convnet` or `vgg16`, as `pretrain --arch`.
    pub arch: Option<String>,
    /// With `arch`: as `pretrain --width`.
    pub width: Option<f64>,
}

impl StageArgs for Vgg16Layers {
    const BINARY: &'static str = "vgg16-layers";
    fn args(&self) -> Vec<Arg> {
        let mut out = vec![
            Arg::Switch(flag::JSON),
            Arg::Flag(flag::INPUT_SIZE, self.input_size.to_string().into()),
        ];
        opt_path(&mut out, flag::WEIGHTS, &self.weights);
        opt(&mut out, flag::ARCH, &self.arch);
        opt(&mut out, flag::WIDTH, &self.width);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unset_flags_are_left_to_the_binary() {
        let args = ExtractFeatures::new("d", "w", "o").to_strings();
        assert_eq!(args, ["--data", "d", "--weights", "w", "--out", "o"]);
        let head = TrainHead { no_augmented_passes: true, ..TrainHead::new("f.json", "o") };
        assert_eq!(
            head.to_strings(),
            ["--features", "f.json", "--out", "o", "--no-augmented-passes"]
        );
    }

    #[test]
    fn templates_replace_values_and_refuse_missing_slots() {
        let args = ExtractFeatures {
            input_size: Some(0),
            splits: Some(vec!["{splits}".into()]),
            ..ExtractFeatures::new("{data}", "{weights}", "{out}")
        };
        assert_eq!(
            template(&args, &[(flag::INPUT_SIZE, "size")]).unwrap(),
            [
                "--data",
                "{data}",
                "--weights",
                "{weights}",
                "--out",
                "{out}",
                "--input-size",
                "{size}",
                "--splits",
                "{splits}"
            ]
        );
        let err = template(&args, &[(flag::BATCH_SIZE, "batch")]).unwrap_err().to_string();
        assert!(err.contains("--batch-size") && err.contains("extract-features"), "{err}");
    }
}
