//! The pipeline's settings: `pipeline.toml` (or `--config`), then `--profile`, then the
//! command-line flags, resolved into one [`Config`]. Every key is optional and has the default
//! shown in the shipped `pipeline.toml`; an unknown key is an error. Settings that follow from
//! others (`trunk_layer`, the layer just below `unfreeze_from`) are not here: `layers.rs`
//! derives them from the base's layer table.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use super::PipelineArgs;

/// `--profile`: which settings a run uses.
#[derive(Debug, Clone, Copy, PartialEq, clap::ValueEnum)]
pub enum Profile {
    /// The config file's settings.
    Demo,
    /// The seed's full settings (150x150, plain fine-tuning after a head phase, 100 epochs).
    Seed,
}

/// The whole config file.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct Config {
    pub run: RunConfig,
    pub extract: ExtractConfig,
    pub head: HeadConfig,
    pub fine_tune: FineTuneConfig,
    pub pretrain: PretrainConfig,
    pub scratch: ScratchConfig,
    pub compare: Option<CompareConfig>,
}

/// A resolved config and the file it came from (named by every error about a setting).
#[derive(Debug, Clone)]
pub(super) struct Settings {
    pub config: Config,
    /// The config file read, or the one that would have been (built-in defaults).
    pub file: PathBuf,
}

/// `[compare]`: another run, on this run's dataset, whose accuracies the report sets beside this
/// run's (the homework sets its MNIST-pretrained base beside ImageNet VGG16 on the same pair).
/// The pipeline runs it first (skipping what is up to date; without its from-scratch baseline,
/// since this run has one), so it always exists and always used the same data; the report checks
/// that by the dataset digests both runs recorded.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CompareConfig {
    /// Its pipeline config (relative to the repository root); its `[run] data` and `name` are
    /// replaced by this run's data and `name` below.
    pub config: PathBuf,
    /// Its run folder name (runs/<name>).
    pub name: String,
}

/// `[run]`: where the run goes and what it reads.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct RunConfig {
    pub name: String,
    pub data: PathBuf,
    pub device: String,
    pub cache_dir: Option<PathBuf>,
    pub weights: Option<PathBuf>,
}

/// `[extract]`: the frozen base's features (and the input size of every stage).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct ExtractConfig {
    pub input_size: u32,
    pub layer: String,
    pub pooling: String,
    pub precision: String,
    pub batch_size: u32,
    pub augment_passes: u32,
    pub augment_seed: u64,
}

/// `[head]`: the dense heads on cached features.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct HeadConfig {
    pub epochs: u32,
    pub batch_size: u32,
    pub lr: f64,
    pub optimizer: String,
    pub seed: u64,
}

/// `[fine_tune]`: the top of the base trained with the head.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct FineTuneConfig {
    pub enabled: bool,
    pub mode: FineTuneMode,
    pub unfreeze_from: String,
    /// No longer a setting: the last frozen layer is the one just below `unfreeze_from`.
    /// Accepted from older config files only so that `layers.rs` can warn (or, when it names
    /// another layer, refuse); never written back.
    #[serde(skip_serializing)]
    pub trunk_layer: Option<String>,
    pub trunk_passes: u32,
    /// Start from the `head` stage's weights (the seed's order) instead of a head phase.
    pub from_head: bool,
    pub head_epochs: u32,
    pub epochs: u32,
    pub steps_per_epoch: u32,
    pub batch_size: u32,
    pub lr: f64,
    pub seed: u64,
}

/// How fine-tuning gets the frozen trunk's output.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(super) enum FineTuneMode {
    /// Every step runs the frozen trunk on freshly augmented images (the seed's way).
    Plain,
    /// The frozen trunk's output for K augmented passes comes from the feature cache.
    CachedTrunk,
}

/// `[pretrain]`: train a convnet from scratch on another dataset first and, with `use_as_base`,
/// transfer its conv base instead of VGG16 (the seed's homework: MNIST digits to Fashion-MNIST).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct PretrainConfig {
    pub enabled: bool,
    pub data: PathBuf,
    pub use_as_base: bool,
    pub arch: String,
    pub width: f64,
    pub epochs: u32,
    pub batch_size: u32,
    pub lr: f64,
    pub augment: bool,
    pub seed: u64,
}

/// `[scratch]`: the same kind of convnet trained from scratch on the run's own dataset, the
/// baseline that shows what transfer buys.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct ScratchConfig {
    pub enabled: bool,
    pub arch: String,
    pub width: f64,
    pub epochs: u32,
    pub batch_size: u32,
    pub lr: f64,
    pub augment: bool,
    pub seed: u64,
}

impl Default for RunConfig {
    fn default() -> Self {
        Self {
            name: "demo".into(),
            data: "data/cats-vs-dogs-small".into(),
            device: "auto".into(),
            cache_dir: None,
            weights: None,
        }
    }
}

impl Default for ExtractConfig {
    fn default() -> Self {
        Self {
            input_size: 64,
            layer: "block5_pool".into(),
            pooling: "none".into(),
            precision: "f32".into(),
            batch_size: 20,
            augment_passes: 5,
            augment_seed: 0,
        }
    }
}

impl Default for HeadConfig {
    fn default() -> Self {
        Self { epochs: 30, batch_size: 20, lr: 2e-5, optimizer: "rmsprop".into(), seed: 0 }
    }
}

impl Default for FineTuneConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            mode: FineTuneMode::CachedTrunk,
            unfreeze_from: "block5_conv1".into(),
            trunk_layer: None,
            trunk_passes: 5,
            from_head: true,
            head_epochs: 30,
            epochs: 15,
            steps_per_epoch: 100,
            batch_size: 20,
            lr: 1e-5,
            seed: 0,
        }
    }
}

impl Default for PretrainConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            data: "data/mnist-small".into(),
            use_as_base: true,
            arch: "small-convnet".into(),
            width: 1.0,
            epochs: 8,
            batch_size: 20,
            lr: 1e-4,
            augment: false,
            seed: 0,
        }
    }
}

impl Default for ScratchConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            arch: "small-convnet".into(),
            width: 1.0,
            epochs: 150,
            batch_size: 20,
            lr: 1e-4,
            augment: true,
            seed: 0,
        }
    }
}

/// Reads the config file (`--config`, else `pipeline.toml` at the root, else the defaults) and
/// applies the profile and the flags.
pub(super) fn resolve(args: &PipelineArgs, workspace: &Path) -> Result<Settings> {
    let path = args.config.clone().unwrap_or_else(|| workspace.join("pipeline.toml"));
    let mut config: Config = if path.exists() {
        read(&path)?
    } else if args.config.is_some() {
        bail!("config file {} does not exist", path.display());
    } else {
        Config::default()
    };
    let profile = args.profile.unwrap_or_else(|| {
        if cuda_visible() {
            eprintln!("a CUDA GPU is visible: running the seed's full settings (--profile demo for the config file's)");
            Profile::Seed
        } else {
            Profile::Demo
        }
    });
    if profile == Profile::Seed {
        config.extract.input_size = 150;
        config.extract.precision = "f32".into();
        config.head.epochs = 30;
        let f = &mut config.fine_tune;
        f.mode = FineTuneMode::Plain;
        // The book trains the head end to end on augmented images with the base frozen, then
        // fine-tunes: a head phase of 30 epochs rather than the cached-feature head.
        f.from_head = false;
        f.head_epochs = 30;
        f.epochs = 100;
        f.steps_per_epoch = 100;
        // The book's second convnet from scratch: augmentation and dropout, 100 epochs.
        config.scratch.epochs = 100;
        config.scratch.augment = true;
    }
    if let Some(v) = &args.name {
        config.run.name = v.clone();
    }
    if let Some(v) = &args.data {
        config.run.data = v.clone();
    }
    if let Some(v) = &args.weights {
        config.run.weights = Some(v.clone());
    }
    if let Some(v) = &args.device {
        config.run.device = v.clone();
    }
    if let Some(v) = &args.cache_dir {
        config.run.cache_dir = Some(v.clone());
    }
    if args.without_scratch {
        config.scratch.enabled = false;
    }
    check_run_name(&config.run.name, &path)?;
    if let Some(c) = &config.compare {
        check_run_name(&c.name, &path)?;
    }
    Ok(Settings { config, file: path })
}

/// A config file as written, nothing applied.
pub(super) fn read(path: &Path) -> Result<Config> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("{}", path.display()))
}

/// The settings a finished run resolved (`pipeline.resolved.toml`), if it has them.
pub(super) fn resolved_config(run_dir: &Path) -> Option<Config> {
    toml::from_str(&std::fs::read_to_string(run_dir.join("pipeline.resolved.toml")).ok()?).ok()
}

/// A run name is one folder under runs/: not empty, no path separator, not `.` or `..`.
pub(super) fn check_run_name(name: &str, config: &Path) -> Result<()> {
    if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\\']) {
        bail!(
            "run name {name:?} (from {} or --name) must be a plain folder name under runs/",
            config.display()
        );
    }
    Ok(())
}

/// Whether `nvidia-smi` lists a GPU (cheap, and needs no libtorch in xtask).
fn cuda_visible() -> bool {
    Command::new("nvidia-smi")
        .arg("-L")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// `p` under `workspace` unless it is absolute.
pub(super) fn absolute(workspace: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() { p.to_owned() } else { workspace.join(p) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_file_parses_and_defaults_fill_gaps() {
        let c: Config = toml::from_str("[extract]\ninput_size = 64\n").unwrap();
        assert_eq!(c.extract.input_size, 64);
        assert_eq!(c.head.epochs, 30);
        assert!(
            toml::from_str::<Config>("[extract]\ninput_sise = 64\n").is_err(),
            "typos must be errors"
        );
    }

    #[test]
    fn shipped_config_parses() {
        let c = read(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../pipeline.toml")).unwrap();
        assert_eq!(c.run.name, "demo");
    }

    #[test]
    fn trunk_layer_is_read_but_never_written_back() {
        let c: Config = toml::from_str("[fine_tune]\ntrunk_layer = \"block4_pool\"\n").unwrap();
        assert_eq!(c.fine_tune.trunk_layer.as_deref(), Some("block4_pool"));
        let written = toml::to_string_pretty(&c).unwrap();
        assert!(!written.contains("trunk_layer"), "{written}");
    }

    #[test]
    fn run_names_are_plain_folder_names() {
        for bad in ["", ".", "..", "../data", "a/b"] {
            assert!(check_run_name(bad, Path::new("p.toml")).is_err(), "{bad:?}");
        }
        assert!(check_run_name("homework-vgg16", Path::new("p.toml")).is_ok());
    }
}
