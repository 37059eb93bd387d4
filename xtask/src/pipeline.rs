//! `cargo xtask pipeline`: the whole workflow in one command. Installs what is missing (libtorch,
//! demo weights), builds the stage binaries, runs them one process at a time, skips stages that
//! are up to date, and writes `runs/<name>/report.md` and `report.html`.
//!
//! A stage is up to date when its `stage.json` exists, every output still matches its digest, and
//! the invocation (arguments and input digests, kept in `pipeline.json` beside it) is the one the
//! pipeline would make now. `--status` prints that verdict per stage without running anything.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::libtorch::Libtorch;

/// Command-line overrides of the config file.
#[derive(Debug, clap::Args)]
pub struct PipelineArgs {
    /// Pipeline settings (TOML); default: pipeline.toml at the repository root.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Run folder name (runs/<name>).
    #[arg(long)]
    name: Option<String>,
    /// Dataset root with train/, validation/ and test/ class folders.
    #[arg(long)]
    data: Option<PathBuf>,
    /// VGG16 conv-base weights (our safetensors); default: the demo weights.
    #[arg(long)]
    weights: Option<PathBuf>,
    /// auto, cpu, cuda or cuda:N.
    #[arg(long)]
    device: Option<String>,
    /// Feature cache folder (may be shared with teammates).
    #[arg(long)]
    cache_dir: Option<PathBuf>,
    /// `seed` runs the seed's full settings (150x150, 30 head epochs, 100 fine-tuning epochs of
    /// the whole model on augmented images); `demo` the settings of the config file. Default:
    /// `seed` when a CUDA GPU is visible (`nvidia-smi -L`), else `demo`.
    #[arg(long, value_enum)]
    profile: Option<Profile>,
    /// List each stage as done / stale / corrupt / missing, without running anything.
    #[arg(long)]
    status: bool,
    /// Set for a `[compare]` run: its from-scratch baseline is left out (the run it is compared
    /// with has its own).
    #[arg(skip)]
    without_scratch: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, clap::ValueEnum)]
enum Profile {
    Demo,
    Seed,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Config {
    run: RunConfig,
    extract: ExtractConfig,
    head: HeadConfig,
    fine_tune: FineTuneConfig,
    pretrain: PretrainConfig,
    scratch: ScratchConfig,
    compare: Option<CompareConfig>,
}

/// `[compare]`: another run, on this run's dataset, whose accuracies the report sets beside this
/// run's (the homework sets its MNIST-pretrained base beside ImageNet VGG16 on the same pair).
/// The pipeline runs it first (skipping what is up to date; without its from-scratch baseline,
/// since this run has one), so it always exists and always used the same data; the report checks
/// that by the dataset digests both runs recorded.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct CompareConfig {
    /// Its pipeline config (relative to the repository root); its `[run] data` and `name` are
    /// replaced by this run's data and `name` below.
    config: PathBuf,
    /// Its run folder name (runs/<name>).
    name: String,
}

/// `[pretrain]`: train a convnet from scratch on another dataset first and, with `use_as_base`,
/// transfer its conv base instead of VGG16 (the seed's homework: MNIST digits to Fashion-MNIST).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct PretrainConfig {
    enabled: bool,
    data: PathBuf,
    use_as_base: bool,
    arch: String,
    width: f64,
    epochs: u32,
    batch_size: u32,
    lr: f64,
    augment: bool,
    seed: u64,
}

/// `[scratch]`: the same kind of convnet trained from scratch on the run's own dataset, the
/// baseline that shows what transfer buys.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct ScratchConfig {
    enabled: bool,
    arch: String,
    width: f64,
    epochs: u32,
    batch_size: u32,
    lr: f64,
    augment: bool,
    seed: u64,
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

/// Arguments of a `pretrain` run (shared by `[pretrain]` and `[scratch]`).
#[allow(clippy::too_many_arguments)]
fn convnet_args(
    data: &Path,
    out: &Path,
    input_size: u32,
    arch: &str,
    width: f64,
    epochs: u32,
    batch_size: u32,
    lr: f64,
    augment: bool,
    seed: u64,
    device: &str,
) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "--data".into(),
        data.display().to_string(),
        "--out".into(),
        out.display().to_string(),
        "--input-size".into(),
        input_size.to_string(),
        "--arch".into(),
        arch.into(),
        "--width".into(),
        width.to_string(),
        "--epochs".into(),
        epochs.to_string(),
        "--batch-size".into(),
        batch_size.to_string(),
        "--lr".into(),
        lr.to_string(),
        "--seed".into(),
        seed.to_string(),
        "--device".into(),
        device.into(),
    ];
    if augment {
        args.push("--augment".into());
    }
    args
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RunConfig {
    name: String,
    data: PathBuf,
    device: String,
    cache_dir: Option<PathBuf>,
    weights: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct ExtractConfig {
    input_size: u32,
    layer: String,
    pooling: String,
    precision: String,
    batch_size: u32,
    augment_passes: u32,
    augment_seed: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct HeadConfig {
    epochs: u32,
    batch_size: u32,
    lr: f64,
    optimizer: String,
    seed: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct FineTuneConfig {
    enabled: bool,
    mode: FineTuneMode,
    unfreeze_from: String,
    /// The last frozen layer, whose output the cached-trunk mode reads from the cache.
    trunk_layer: String,
    trunk_passes: u32,
    /// Start from the `head` stage's weights (the seed's order) instead of a head phase.
    from_head: bool,
    head_epochs: u32,
    epochs: u32,
    steps_per_epoch: u32,
    batch_size: u32,
    lr: f64,
    seed: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum FineTuneMode {
    /// Every step runs the frozen trunk on freshly augmented images (the seed's way).
    Plain,
    /// The frozen trunk's output for K augmented passes comes from the feature cache.
    CachedTrunk,
}

impl Default for FineTuneConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            mode: FineTuneMode::CachedTrunk,
            unfreeze_from: "block5_conv1".into(),
            trunk_layer: "block4_pool".into(),
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

/// One stage invocation: which binary, where, with what, on what.
struct Step {
    /// Folder name under the run folder, also the label.
    name: &'static str,
    binary: &'static str,
    args: Vec<String>,
    /// Named input digests; a change makes the stage stale, naming the input.
    inputs: BTreeMap<String, String>,
    /// The binary continues an interrupted run of the same invocation with `--resume`.
    resumable: bool,
}

/// `pipeline.json`: the invocation that produced a stage's outputs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Invocation {
    binary: String,
    args: Vec<String>,
    inputs: BTreeMap<String, String>,
}

#[derive(Debug, PartialEq)]
enum Status {
    Done,
    Stale(String),
    Corrupt(String),
    Missing,
    /// Started with the current invocation and not finished.
    Interrupted {
        resumes: bool,
    },
}

pub fn run(args: PipelineArgs, workspace: &Path) -> Result<()> {
    run_pipeline(args, workspace).map(drop)
}

/// One pipeline run (after its `[compare]` run, if any); returns the names of the stages it
/// planned, in order.
fn run_pipeline(args: PipelineArgs, workspace: &Path) -> Result<Vec<&'static str>> {
    let config = resolve_config(&args, workspace)?;
    let run_dir = workspace.join("runs").join(&config.run.name);
    let data = absolute(workspace, &config.run.data);
    if !data.is_dir() {
        bail!(
            "dataset {} does not exist (run `cargo xtask data` for the demo data)",
            data.display()
        );
    }
    let compared = match &config.compare {
        Some(compare) => {
            Some((compare.name.clone(), run_comparison(compare, &args, &config, workspace)?))
        }
        None => None,
    };

    if args.status {
        // Reports only: nothing is installed, built, converted or written.
        let weights = base_weights(&config, workspace, &run_dir, crate::weights::demo_path)?;
        if config.compare.is_some() {
            println!("run `{}`:", config.run.name);
        }
        let steps = plan(&config, &run_dir, &data, &weights)?;
        for step in &steps {
            let dir = run_dir.join(step.name);
            let status = status(step, &dir);
            println!("{:<18} {}", step.name, describe(&status));
        }
        return Ok(steps.iter().map(|s| s.name).collect());
    }

    let torch = crate::libtorch::ensure()?;
    build_stages(&torch, workspace)?;
    let weights = base_weights(&config, workspace, &run_dir, || {
        crate::weights::ensure_demo(&torch, crate::weights::Build::Release)
    })?;
    std::fs::create_dir_all(&run_dir).with_context(|| format!("creating {}", run_dir.display()))?;
    run_folder::write_atomic(
        &run_dir.join("pipeline.resolved.toml"),
        toml::to_string_pretty(&config)?.as_bytes(),
    )?;

    let mut timings = Vec::new();
    let mut steps = plan(&config, &run_dir, &data, &weights)?;
    for i in 0..steps.len() {
        if i > 0 {
            // Later stages depend on the outputs of earlier ones, known only after those ran.
            steps = plan(&config, &run_dir, &data, &weights)?;
        }
        let step = &steps[i];
        let dir = run_dir.join(step.name);
        let started = Instant::now();
        let label = format!("[{}/{}] {}", i + 1, steps.len(), step.name);
        let resume = match status(step, &dir) {
            Status::Done => {
                eprintln!("{label}: up to date (outputs verified)");
                timings.push((step.name, 0.0, true));
                continue;
            }
            other => {
                eprintln!("{label}: {} -> running", describe(&other));
                matches!(other, Status::Interrupted { resumes: true })
                    && same_binary_as_interrupted(workspace, step, &dir)?
            }
        };
        run_stage(&torch, workspace, step, &dir, resume)?;
        let seconds = started.elapsed().as_secs_f64();
        eprintln!("{label}: done in {seconds:.1}s");
        timings.push((step.name, seconds, false));
    }
    let compare_dir = compared.as_ref().map(|(name, _)| workspace.join("runs").join(name));
    let context = crate::report::Context {
        settings: config_summary(&config, &weights),
        base: base_label(&config),
        input_size: config.extract.input_size,
        compare_with: compared.as_ref().zip(compare_dir.as_deref()).map(|((_, stages), dir)| {
            crate::report::Compared {
                base: resolved_config(dir).map_or_else(|| "other".into(), |c| base_label(&c)),
                dir,
                stages: stages.iter().map(|s| (*s).to_owned()).collect(),
            }
        }),
    };
    crate::report::write(&run_dir, &context, &timings)?;
    eprintln!("report: {}", run_dir.join("report.html").display());
    Ok(timings.iter().map(|t| t.0).collect())
}

/// Runs the `[compare]` run on this run's data, with this invocation's device, cache and profile;
/// returns the stages it planned.
fn run_comparison(
    compare: &CompareConfig,
    args: &PipelineArgs,
    config: &Config,
    workspace: &Path,
) -> Result<Vec<&'static str>> {
    if compare.name == config.run.name {
        bail!(
            "[compare] name = {:?} is this run's own name: give the compared run another ({})",
            compare.name,
            args.config
                .as_deref()
                .map_or_else(|| "pipeline.toml".into(), |p| p.display().to_string())
        );
    }
    let path = absolute(workspace, &compare.config);
    let nested: Config = toml::from_str(
        &std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?,
    )
    .with_context(|| format!("{}", path.display()))?;
    if nested.compare.is_some() {
        bail!("{}: a compared run cannot have a [compare] section of its own", path.display());
    }
    let other = workspace.join("runs").join(&compare.name);
    let recorded: Option<run_folder::DatasetRecord> =
        run_folder::read_json(&other.join("dataset").join(run_folder::DATASET_FILE)).ok();
    if let Some(r) = recorded.filter(|r| r.root != absolute(workspace, &config.run.data)) {
        eprintln!(
            "warning: {} was made on {}; [compare] reruns it on {}",
            other.display(),
            r.root.display(),
            config.run.data.display()
        );
    }
    eprintln!(
        "running `{}` ({}) on {} first, to set beside this run",
        compare.name,
        compare.config.display(),
        config.run.data.display()
    );
    if args.status {
        println!("run `{}`:", compare.name);
    }
    let nested_args = PipelineArgs {
        config: Some(path),
        name: Some(compare.name.clone()),
        data: Some(config.run.data.clone()),
        weights: None,
        device: Some(config.run.device.clone()),
        cache_dir: config.run.cache_dir.clone(),
        profile: args.profile,
        status: args.status,
        without_scratch: true,
    };
    run_pipeline(nested_args, workspace).with_context(|| format!("compared run `{}`", compare.name))
}

/// The settings a finished run resolved (`pipeline.resolved.toml`), if it has them.
fn resolved_config(run_dir: &Path) -> Option<Config> {
    toml::from_str(&std::fs::read_to_string(run_dir.join("pipeline.resolved.toml")).ok()?).ok()
}

/// What the run transfers, for the report: its own pretrained base or ImageNet VGG16.
fn base_label(config: &Config) -> String {
    match (&config.pretrain, &config.run.weights) {
        (p, _) if p.enabled && p.use_as_base => {
            format!("small convnet pretrained on {}", p.data.display())
        }
        (_, Some(w)) => format!("the conv base in {}", w.display()),
        (_, None) => "ImageNet VGG16".into(),
    }
}

fn resolve_config(args: &PipelineArgs, workspace: &Path) -> Result<Config> {
    let path = args.config.clone().unwrap_or_else(|| workspace.join("pipeline.toml"));
    let mut config: Config = if path.exists() {
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("{}", path.display()))?
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
    Ok(config)
}

/// A run name is one folder under runs/: not empty, no path separator, not `.` or `..`.
fn check_run_name(name: &str, config: &Path) -> Result<()> {
    if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\\']) {
        bail!(
            "run name {name:?} (from {} or --name) must be a plain folder name under runs/",
            config.display()
        );
    }
    Ok(())
}

/// The conv base the run transfers: its own pretrained base, the configured weights, or the demo
/// weights (`demo` says where, `--status` without making them).
fn base_weights(
    config: &Config,
    workspace: &Path,
    run_dir: &Path,
    demo: impl FnOnce() -> Result<PathBuf>,
) -> Result<PathBuf> {
    match &config.run.weights {
        _ if config.pretrain.enabled && config.pretrain.use_as_base => Ok(pretrained_base(run_dir)),
        Some(w) => Ok(absolute(workspace, w)),
        None => demo(),
    }
}

/// The conv base the `pretrain` stage writes.
fn pretrained_base(run_dir: &Path) -> PathBuf {
    run_dir.join("pretrain").join("base.safetensors")
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

fn absolute(workspace: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() { p.to_owned() } else { workspace.join(p) }
}

/// The stage invocations for `config`; inputs of later stages are the current outputs of
/// earlier ones (absent until those ran).
fn plan(config: &Config, run_dir: &Path, data: &Path, weights: &Path) -> Result<Vec<Step>> {
    let mut steps = Vec::new();
    let p = &config.pretrain;
    if p.enabled {
        let source = absolute(&crate::workspace_root(), &p.data);
        steps.push(Step {
            name: "pretrain",
            binary: "pretrain",
            args: convnet_args(
                &source,
                &run_dir.join("pretrain"),
                config.extract.input_size,
                &p.arch,
                p.width,
                p.epochs,
                p.batch_size,
                p.lr,
                p.augment,
                p.seed,
                &config.run.device,
            ),
            inputs: BTreeMap::from([("pretrain dataset".to_owned(), tree_fingerprint(&source)?)]),
            resumable: false,
        });
    }
    // Hashed once per plan: the dataset record, extraction, fine-tuning and the scratch baseline
    // all name it.
    let dataset = tree_fingerprint(data)?;
    // First, so a dataset with errors (bad files, leakage, classes that differ between splits)
    // stops the run before any compute, and the report has a record of what the run trained on.
    steps.insert(
        0,
        Step {
            name: "dataset",
            binary: "dataset",
            // The splits every stage reads: a missing one is an error here, not a stage later.
            args: [
                "check",
                &data.display().to_string(),
                "--split",
                "train",
                "--split",
                "validation",
                "--split",
                "test",
                "--out",
                &run_dir.join("dataset").display().to_string(),
            ]
            .map(String::from)
            .to_vec(),
            inputs: BTreeMap::from([("dataset".to_owned(), dataset.clone())]),
            resumable: false,
        },
    );
    steps.extend(transfer_steps(config, run_dir, data, &dataset, weights)?);
    let c = &config.scratch;
    if c.enabled {
        steps.push(Step {
            name: "scratch",
            binary: "pretrain",
            args: convnet_args(
                data,
                &run_dir.join("scratch"),
                config.extract.input_size,
                &c.arch,
                c.width,
                c.epochs,
                c.batch_size,
                c.lr,
                c.augment,
                c.seed,
                &config.run.device,
            ),
            inputs: BTreeMap::from([("dataset".to_owned(), dataset)]),
            resumable: false,
        });
    }
    Ok(steps)
}

/// Extraction, heads and fine-tuning of the base in `weights`.
fn transfer_steps(
    config: &Config,
    run_dir: &Path,
    data: &Path,
    dataset: &str,
    weights: &Path,
) -> Result<Vec<Step>> {
    let e = &config.extract;
    let mut extract_args = vec![
        "--data".into(),
        data.display().to_string(),
        "--weights".into(),
        weights.display().to_string(),
        "--out".into(),
        run_dir.join("extract").display().to_string(),
        "--layer".into(),
        e.layer.clone(),
        "--input-size".into(),
        e.input_size.to_string(),
        "--pooling".into(),
        e.pooling.clone(),
        "--precision".into(),
        e.precision.clone(),
        "--batch-size".into(),
        e.batch_size.to_string(),
        "--augment-passes".into(),
        e.augment_passes.to_string(),
        "--augment-seed".into(),
        e.augment_seed.to_string(),
        "--device".into(),
        config.run.device.clone(),
    ];
    if let Some(c) = &config.run.cache_dir {
        extract_args.extend(["--cache-dir".into(), c.display().to_string()]);
    }
    let extract_inputs = BTreeMap::from([
        ("dataset".to_owned(), dataset.to_owned()),
        ("weights".to_owned(), digest_or_absent(weights)),
    ]);
    let features = run_dir.join("extract").join("features.json");
    let features_digest = digest_or_absent(&features);
    let h = &config.head;
    let head_args = |out: &str, augmented: bool| {
        let mut a = vec![
            "--features".into(),
            features.display().to_string(),
            "--out".into(),
            run_dir.join(out).display().to_string(),
            "--epochs".into(),
            h.epochs.to_string(),
            "--batch-size".into(),
            h.batch_size.to_string(),
            "--lr".into(),
            h.lr.to_string(),
            "--optimizer".into(),
            h.optimizer.clone(),
            "--seed".into(),
            h.seed.to_string(),
            "--device".into(),
            config.run.device.clone(),
        ];
        if !augmented {
            a.push("--no-augmented-passes".into());
        }
        a
    };
    let head_inputs = BTreeMap::from([("extract/features.json".to_owned(), features_digest)]);
    let mut steps = vec![
        Step {
            name: "extract",
            binary: "extract-features",
            args: extract_args.clone(),
            inputs: extract_inputs.clone(),
            resumable: false,
        },
        Step {
            name: "head",
            binary: "train-head",
            args: head_args("head", false),
            inputs: head_inputs.clone(),
            resumable: false,
        },
    ];
    if e.augment_passes > 0 {
        steps.push(Step {
            name: "head-augmented",
            binary: "train-head",
            args: head_args("head-augmented", true),
            inputs: head_inputs,
            resumable: false,
        });
    }
    let f = &config.fine_tune;
    if !f.enabled {
        return Ok(steps);
    }
    let mut fine_tune_args = vec![
        "--data".into(),
        data.display().to_string(),
        "--weights".into(),
        weights.display().to_string(),
        "--out".into(),
        run_dir.join("fine-tune").display().to_string(),
        "--input-size".into(),
        e.input_size.to_string(),
        "--unfreeze-from".into(),
        f.unfreeze_from.clone(),
        "--epochs".into(),
        f.epochs.to_string(),
        "--steps-per-epoch".into(),
        f.steps_per_epoch.to_string(),
        "--batch-size".into(),
        f.batch_size.to_string(),
        "--lr".into(),
        f.lr.to_string(),
        "--seed".into(),
        f.seed.to_string(),
        "--device".into(),
        config.run.device.clone(),
    ];
    let mut fine_tune_inputs = extract_inputs;
    if f.from_head {
        // The head must have been trained on the base's last layer at this input size;
        // fine-tune checks its input shape against the cut base and names both.
        let head = run_dir.join("head").join("head.safetensors");
        fine_tune_args.extend(["--head".into(), head.display().to_string()]);
        fine_tune_inputs.insert("head/head.safetensors".into(), digest_or_absent(&head));
    } else {
        fine_tune_args.extend(["--head-epochs".into(), f.head_epochs.to_string()]);
    }
    if f.mode == FineTuneMode::CachedTrunk {
        // The frozen trunk's output for K augmented passes: extraction at the last frozen layer.
        let mut trunk_args = extract_args;
        let set = |args: &mut Vec<String>, flag: &str, value: String| {
            let i = args.iter().position(|a| a == flag).expect("flag set above") + 1;
            args[i] = value;
        };
        set(&mut trunk_args, "--out", run_dir.join("extract-trunk").display().to_string());
        set(&mut trunk_args, "--layer", f.trunk_layer.clone());
        set(&mut trunk_args, "--pooling", "none".into());
        set(&mut trunk_args, "--precision", "f32".into());
        set(&mut trunk_args, "--augment-passes", f.trunk_passes.to_string());
        // `--augment-seed` stays the extract stage's: its passes are then the trunk's first
        // passes one layer block higher, derived from these.
        let trunk = run_dir.join("extract-trunk").join("features.json");
        fine_tune_args.extend(["--trunk-cache".into(), trunk.display().to_string()]);
        fine_tune_inputs.insert("extract-trunk/features.json".into(), digest_or_absent(&trunk));
        // First: the trunk's passes run blocks 1-4 of every image once, and `extract` then finds
        // them in the cache and runs only block 5 for its own layer (extract-features derives a
        // higher layer from a cached lower one), so no image goes through blocks 1-4 twice.
        steps.insert(
            0,
            Step {
                name: "extract-trunk",
                binary: "extract-features",
                args: trunk_args,
                inputs: steps[0].inputs.clone(),
                resumable: false,
            },
        );
    }
    steps.push(Step {
        name: "fine-tune",
        binary: "fine-tune",
        args: fine_tune_args,
        inputs: fine_tune_inputs,
        resumable: true,
    });
    Ok(steps)
}

fn digest_or_absent(path: &Path) -> String {
    run_folder::file_sha256(path).map(|d| d.sha256).unwrap_or_else(|_| "absent".into())
}

/// The identity of a dataset tree: every file's relative path and content sha256. Content, not
/// modification time, so touching or copying the data reruns nothing; hashing the demo's 4,000
/// files takes a few milliseconds, and extraction hashes every file anyway for its cache keys.
fn tree_fingerprint(root: &Path) -> Result<String> {
    let mut entries = Vec::new();
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in
            std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))?
        {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let rel = path.strip_prefix(root).unwrap_or(&path).display().to_string();
                entries.push(format!("{rel}\t{}\n", run_folder::file_sha256(&path)?.sha256));
            }
        }
    }
    entries.sort();
    let mut hasher = Sha256::new();
    for e in &entries {
        hasher.update(e.as_bytes());
    }
    Ok(format!("{} files, {}", entries.len(), hex::encode(hasher.finalize())))
}

/// `pipeline.pending.json`: the invocation a stage was started with and has not finished, and
/// the sha256 of the binary that ran it.
const PENDING: &str = "pipeline.pending.json";

#[derive(Serialize, Deserialize)]
struct Pending {
    #[serde(flatten)]
    invocation: Invocation,
    binary_sha256: String,
}

fn stage_binary(workspace: &Path, step: &Step) -> PathBuf {
    crate::weights::target_dir(workspace).join("release").join(step.binary)
}

/// A checkpoint is only continued by the build that wrote it: after a rebuild (a pull, an edit)
/// the checkpoint format or the training code may differ, so the stage starts afresh instead.
fn same_binary_as_interrupted(workspace: &Path, step: &Step, dir: &Path) -> Result<bool> {
    let pending: Pending = run_folder::read_json(&dir.join(PENDING))?;
    let now = run_folder::file_sha256(&stage_binary(workspace, step))?.sha256;
    if pending.binary_sha256 != now {
        eprintln!("    {} was rebuilt since the interruption: starting afresh", step.binary);
    }
    Ok(pending.binary_sha256 == now)
}

impl Step {
    fn invocation(&self) -> Invocation {
        Invocation {
            binary: self.binary.into(),
            args: self.args.clone(),
            inputs: self.inputs.clone(),
        }
    }

    /// The stage was started with exactly this invocation and did not finish (killed, failed).
    fn interrupted_in(&self, dir: &Path) -> bool {
        run_folder::read_json::<Pending>(&dir.join(PENDING))
            .is_ok_and(|pending| pending.invocation == self.invocation())
    }
}

fn status(step: &Step, dir: &Path) -> Status {
    if step.interrupted_in(dir) {
        return Status::Interrupted { resumes: step.resumable };
    }
    let Ok(record) = run_folder::StageRecord::read(dir) else {
        return Status::Missing;
    };
    let invocation: Option<Invocation> = run_folder::read_json(&dir.join("pipeline.json")).ok();
    let wanted = step.invocation();
    match invocation {
        None => return Status::Stale("no record of how it was run".into()),
        Some(inv) if inv != wanted => {
            let changed = wanted
                .inputs
                .iter()
                .find(|(k, v)| inv.inputs.get(*k) != Some(v))
                .map(|(k, _)| format!("input {k} changed"));
            return Status::Stale(changed.unwrap_or_else(|| "settings changed".into()));
        }
        Some(_) => {}
    }
    if let Some(damage) = record.damaged_output(dir) {
        return Status::Corrupt(damage);
    }
    if step.binary == "extract-features"
        && let Some(problem) = missing_cache_entry(dir)
    {
        return Status::Stale(problem);
    }
    Status::Done
}

/// Extraction is only done while the cache entries it recorded still verify (a teammate may
/// have run `gc`, or a disk may have flipped a bit).
fn missing_cache_entry(dir: &Path) -> Option<String> {
    #[derive(Deserialize)]
    struct Record {
        cache_dir: PathBuf,
        entries: Vec<Entry>,
    }
    #[derive(Deserialize)]
    struct Entry {
        key: String,
        split: String,
        #[serde(default)]
        cache_dir: Option<PathBuf>,
    }
    let record: Record = run_folder::read_json(&dir.join("features.json")).ok()?;
    for e in record.entries {
        let root = e.cache_dir.unwrap_or_else(|| record.cache_dir.clone());
        let checksums = root.join(&e.key).join("checksums.sha256");
        let Ok(text) = std::fs::read_to_string(&checksums) else {
            return Some(format!("cache entry {} ({}) is gone", e.key, e.split));
        };
        for line in text.lines() {
            let Some((digest, name)) = line.split_once("  ") else {
                return Some(format!("cache entry {} is damaged", e.key));
            };
            match run_folder::file_sha256(&root.join(&e.key).join(name)) {
                Ok(d) if d.sha256 == digest => {}
                _ => {
                    return Some(format!("cache entry {} ({}) is damaged: {name}", e.key, e.split));
                }
            }
        }
    }
    None
}

fn describe(status: &Status) -> String {
    match status {
        Status::Done => "done".into(),
        Status::Stale(why) => format!("stale ({why})"),
        Status::Corrupt(why) => format!("corrupt ({why})"),
        Status::Missing => "missing".into(),
        Status::Interrupted { resumes: true } => {
            "interrupted (resumes from its last checkpoint)".into()
        }
        Status::Interrupted { resumes: false } => {
            "interrupted (reruns; finished cache entries are reused)".into()
        }
    }
}

fn build_stages(torch: &Libtorch, workspace: &Path) -> Result<()> {
    eprintln!("building the stage binaries (release)");
    crate::build_release(torch, workspace).map(drop)
}

/// Runs one stage binary, its stderr shown and copied to `<stage>/log.txt`; records the
/// invocation once it succeeded.
///
/// Unless it resumes, the stage folder is emptied first, so outputs of other settings can never
/// pass for this run's; `pipeline.pending.json` marks the run as started until it succeeds.
fn run_stage(
    torch: &Libtorch,
    workspace: &Path,
    step: &Step,
    dir: &Path,
    resume: bool,
) -> Result<()> {
    if !resume && dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("clearing {}", dir.display()))?;
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let _ = std::fs::remove_file(dir.join("pipeline.json"));
    let binary = stage_binary(workspace, step);
    let pending = Pending {
        invocation: step.invocation(),
        binary_sha256: run_folder::file_sha256(&binary)?.sha256,
    };
    run_folder::write_json(&dir.join(PENDING), &pending)?;
    let mut args = step.args.clone();
    if resume {
        args.push("--resume".into());
    }
    let log_path = dir.join("log.txt");
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("opening {}", log_path.display()))?;
    writeln!(log, "$ {} {}", binary.display(), args.join(" "))?;
    let mut cmd = Command::new(&binary);
    // Output is piped into the log, so no colour codes.
    cmd.args(&args).stdout(Stdio::piped()).stderr(Stdio::piped()).env("NO_COLOR", "1");
    torch.configure(&mut cmd);
    let mut child = cmd.spawn().with_context(|| format!("starting {}", binary.display()))?;
    let stdout = child.stdout.take().expect("piped");
    let stderr = child.stderr.take().expect("piped");
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let tx2 = tx.clone();
    let readers = [
        std::thread::spawn(move || {
            BufReader::new(stdout).lines().map_while(Result::ok).for_each(|l| drop(tx.send(l)))
        }),
        std::thread::spawn(move || {
            BufReader::new(stderr).lines().map_while(Result::ok).for_each(|l| drop(tx2.send(l)))
        }),
    ];
    for line in rx {
        eprintln!("    {line}");
        writeln!(log, "{line}")?;
    }
    for r in readers {
        let _ = r.join();
    }
    let status = child.wait()?;
    if !status.success() {
        bail!("stage {} failed ({status}); its log: {}", step.name, log_path.display());
    }
    run_folder::write_json(&dir.join("pipeline.json"), &step.invocation())?;
    std::fs::remove_file(dir.join(PENDING))
        .with_context(|| format!("removing {}", dir.join(PENDING).display()))?;
    Ok(())
}

fn config_summary(config: &Config, weights: &Path) -> BTreeMap<String, String> {
    let mut summary = BTreeMap::from([
        ("data".into(), config.run.data.display().to_string()),
        ("weights".into(), weights.display().to_string()),
        ("device".into(), config.run.device.clone()),
        ("input size".into(), format!("{0}x{0}", config.extract.input_size)),
        ("layer".into(), config.extract.layer.clone()),
        ("precision".into(), config.extract.precision.clone()),
        ("augmented passes".into(), config.extract.augment_passes.to_string()),
        (
            "head".into(),
            format!(
                "{} epochs, {} lr {}, batch {}",
                config.head.epochs, config.head.optimizer, config.head.lr, config.head.batch_size
            ),
        ),
    ]);
    for (key, enabled, arch, width, epochs, lr, augment) in [
        (
            "pretrain",
            config.pretrain.enabled,
            &config.pretrain.arch,
            config.pretrain.width,
            config.pretrain.epochs,
            config.pretrain.lr,
            config.pretrain.augment,
        ),
        (
            "from scratch",
            config.scratch.enabled,
            &config.scratch.arch,
            config.scratch.width,
            config.scratch.epochs,
            config.scratch.lr,
            config.scratch.augment,
        ),
    ] {
        if enabled {
            let data = if key == "pretrain" {
                config.pretrain.data.display().to_string()
            } else {
                "the run's data".into()
            };
            let width = if width == 1.0 { String::new() } else { format!(" width {width}") };
            summary.insert(key.into(), format!("{arch}{width} on {data}, {epochs} epochs, rmsprop lr {lr}, augmentation {augment}"));
        }
    }
    let f = &config.fine_tune;
    if f.enabled {
        let start = if f.from_head {
            "from the head stage's weights".to_owned()
        } else {
            format!("after {} head epochs", f.head_epochs)
        };
        let mode = match f.mode {
            FineTuneMode::Plain => "plain (trunk run on every augmented batch)".to_owned(),
            FineTuneMode::CachedTrunk => {
                format!("cached trunk ({} augmented passes of {})", f.trunk_passes, f.trunk_layer)
            }
        };
        summary.insert(
            "fine-tune".into(),
            format!(
                "from {} up, {} epochs of {} steps, batch {}, rmsprop lr {}, {start}, {mode}",
                f.unfreeze_from, f.epochs, f.steps_per_epoch, f.batch_size, f.lr
            ),
        );
    }
    summary
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
        let text =
            std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../pipeline.toml"))
                .unwrap();
        let c: Config = toml::from_str(&text).unwrap();
        assert_eq!(c.run.name, "demo");
    }

    /// A dataset folder and a weights file, enough for `plan`.
    fn inputs() -> (tempfile::TempDir, PathBuf, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir_all(data.join("train/a")).unwrap();
        std::fs::write(data.join("train/a/x.png"), b"1").unwrap();
        let weights = dir.path().join("w.safetensors");
        std::fs::write(&weights, b"w").unwrap();
        (dir, data, weights)
    }

    fn names(steps: &[Step]) -> Vec<&str> {
        steps.iter().map(|s| s.name).collect()
    }

    fn step<'a>(steps: &'a [Step], name: &str) -> &'a Step {
        steps.iter().find(|s| s.name == name).unwrap_or_else(|| panic!("no {name} step"))
    }

    fn arg<'a>(step: &'a Step, flag: &str) -> Option<&'a str> {
        step.args.iter().position(|a| a == flag).map(|i| step.args[i + 1].as_str())
    }

    #[test]
    fn default_plan_fine_tunes_from_the_head_on_the_cached_trunk() {
        let (dir, data, weights) = inputs();
        let run = dir.path().join("run");
        let steps = plan(&Config::default(), &run, &data, &weights).unwrap();
        assert_eq!(
            names(&steps),
            [
                "dataset",
                "extract-trunk",
                "extract",
                "head",
                "head-augmented",
                "fine-tune",
                "scratch"
            ]
        );
        let trunk = step(&steps, "extract-trunk");
        assert_eq!(arg(trunk, "--layer"), Some("block4_pool"));
        assert_eq!(arg(trunk, "--augment-passes"), Some("5"));
        // The trunk's passes are the head's passes at a lower layer (same seed, at least as many),
        // so extract derives all of its entries from them.
        let extract = step(&steps, "extract");
        assert_eq!(arg(trunk, "--augment-seed"), arg(extract, "--augment-seed"));
        assert!(
            arg(trunk, "--augment-passes").unwrap().parse::<u32>().unwrap()
                >= arg(extract, "--augment-passes").unwrap().parse().unwrap()
        );
        assert_eq!(arg(trunk, "--out").map(PathBuf::from), Some(run.join("extract-trunk")));
        let fine_tune = step(&steps, "fine-tune");
        assert_eq!(arg(fine_tune, "--input-size"), arg(extract, "--input-size"));
        assert_eq!(
            arg(fine_tune, "--trunk-cache").map(PathBuf::from),
            Some(run.join("extract-trunk/features.json"))
        );
        assert_eq!(
            arg(fine_tune, "--head").map(PathBuf::from),
            Some(run.join("head/head.safetensors"))
        );
        assert_eq!(fine_tune.inputs["head/head.safetensors"], "absent");
        assert!(fine_tune.resumable && !extract.resumable);
        let dataset = step(&steps, "dataset");
        assert_eq!(dataset.args[..2], ["check".to_owned(), data.display().to_string()]);
        assert_eq!(
            dataset.args.iter().filter(|a| *a == "--split").count(),
            3,
            "train, validation and test are required"
        );
        assert_eq!(
            dataset.inputs["dataset"], extract.inputs["dataset"],
            "one identity of the data"
        );

        // A trained head changes the fine-tune invocation (it becomes stale), not the extraction's.
        std::fs::create_dir_all(run.join("head")).unwrap();
        std::fs::write(run.join("head/head.safetensors"), b"h").unwrap();
        let again = plan(&Config::default(), &run, &data, &weights).unwrap();
        assert_ne!(step(&again, "fine-tune").invocation(), fine_tune.invocation());
        assert_eq!(step(&again, "extract").invocation(), extract.invocation());
    }

    #[test]
    fn plain_mode_and_head_phase_need_no_trunk_extraction() {
        let (dir, data, weights) = inputs();
        let mut config = Config::default();
        config.fine_tune.mode = FineTuneMode::Plain;
        config.fine_tune.from_head = false;
        let steps = plan(&config, &dir.path().join("run"), &data, &weights).unwrap();
        assert_eq!(
            names(&steps),
            ["dataset", "extract", "head", "head-augmented", "fine-tune", "scratch"]
        );
        assert_eq!(arg(step(&steps, "fine-tune"), "--trunk-cache"), None);
        assert_eq!(arg(step(&steps, "fine-tune"), "--head-epochs"), Some("30"));
        config.fine_tune.enabled = false;
        assert_eq!(
            names(&plan(&config, &dir.path().join("run"), &data, &weights).unwrap()),
            ["dataset", "extract", "head", "head-augmented", "scratch"]
        );
    }

    #[test]
    fn homework_pretrains_first_and_transfers_that_base() {
        let (dir, data, _) = inputs();
        let run = dir.path().join("run");
        let text =
            std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../homework.toml"))
                .unwrap();
        let mut config: Config = toml::from_str(&text).unwrap();
        assert!(config.pretrain.enabled && config.pretrain.use_as_base);
        assert!(config.pretrain.data.ends_with("mnist-small"));
        // ImageNet VGG16 on the same pair, run first, is what the report sets beside it.
        let compare = config.compare.as_ref().expect("homework.toml has [compare]");
        assert_eq!(
            (compare.config.as_path(), compare.name.as_str()),
            (Path::new("pipeline.toml"), "homework-vgg16")
        );
        let digits = dir.path().join("digits");
        std::fs::create_dir_all(digits.join("train/0")).unwrap();
        config.pretrain.data = digits.clone();
        let base = pretrained_base(&run);
        let steps = plan(&config, &run, &data, &base).unwrap();
        assert_eq!(names(&steps)[..3], ["dataset", "pretrain", "extract"]);
        assert_eq!(steps.last().map(|s| s.name), Some("scratch"));
        let pretrain = step(&steps, "pretrain");
        let extract = step(&steps, "extract");
        assert_eq!(arg(pretrain, "--data").map(PathBuf::from), Some(digits));
        assert_eq!(
            arg(pretrain, "--input-size"),
            arg(extract, "--input-size"),
            "one input size for the whole run"
        );
        assert_eq!(arg(extract, "--weights").map(PathBuf::from), Some(base.clone()));
        assert_eq!(
            extract.inputs["weights"], "absent",
            "digest of the base once pretrain wrote it"
        );
        let scratch = steps.last().unwrap();
        assert_eq!(arg(scratch, "--data").map(PathBuf::from), Some(data.clone()));

        // The base appearing (pretrain ran) makes extraction's invocation change.
        std::fs::create_dir_all(base.parent().unwrap()).unwrap();
        std::fs::write(&base, b"base").unwrap();
        let again = plan(&config, &run, &data, &base).unwrap();
        let extract_again = step(&again, "extract");
        assert_ne!(extract_again.invocation(), extract.invocation());
    }

    #[test]
    fn interrupted_stage_resumes_only_with_the_same_invocation() {
        let (dir, data, weights) = inputs();
        let run = dir.path().join("run");
        let steps = plan(&Config::default(), &run, &data, &weights).unwrap();
        let (extract, fine_tune) = (step(&steps, "extract"), step(&steps, "fine-tune"));
        let stage = run.join("fine-tune");
        assert_eq!(status(fine_tune, &stage), Status::Missing);
        std::fs::create_dir_all(&stage).unwrap();
        let pending =
            |step: &Step| Pending { invocation: step.invocation(), binary_sha256: "b".into() };
        run_folder::write_json(&stage.join(PENDING), &pending(fine_tune)).unwrap();
        assert_eq!(status(fine_tune, &stage), Status::Interrupted { resumes: true });
        // Other settings since the interruption: its checkpoint must not be continued.
        let mut config = Config::default();
        config.fine_tune.lr = 1e-4;
        let changed = plan(&config, &run, &data, &weights).unwrap();
        assert_eq!(status(step(&changed, "fine-tune"), &stage), Status::Missing);
        std::fs::create_dir_all(run.join("extract")).unwrap();
        run_folder::write_json(&run.join("extract").join(PENDING), &pending(extract)).unwrap();
        assert_eq!(status(extract, &run.join("extract")), Status::Interrupted { resumes: false });
    }

    #[test]
    fn finished_stage_is_done_until_an_output_or_input_changes() {
        let (dir, data, weights) = inputs();
        let run = dir.path().join("run");
        let steps = plan(&Config::default(), &run, &data, &weights).unwrap();
        let head = step(&steps, "head");
        let stage = run.join("head");
        std::fs::create_dir_all(&stage).unwrap();
        std::fs::write(stage.join("head.safetensors"), b"h").unwrap();
        run_folder::StageRecord::write(
            &stage,
            "train-head",
            "c".into(),
            BTreeMap::new(),
            &["head.safetensors"],
            1.0,
            serde_json::json!({}),
        )
        .unwrap();
        assert_eq!(status(head, &stage), Status::Stale("no record of how it was run".into()));
        run_folder::write_json(&stage.join("pipeline.json"), &head.invocation()).unwrap();
        assert_eq!(status(head, &stage), Status::Done);
        std::fs::write(stage.join("head.safetensors"), b"H").unwrap();
        assert!(matches!(status(head, &stage), Status::Corrupt(_)));
        std::fs::write(stage.join("head.safetensors"), b"h").unwrap();
        std::fs::create_dir_all(run.join("extract")).unwrap();
        std::fs::write(run.join("extract/features.json"), b"{}").unwrap();
        let replanned = plan(&Config::default(), &run, &data, &weights).unwrap();
        assert_eq!(
            status(step(&replanned, "head"), &stage),
            Status::Stale("input extract/features.json changed".into())
        );
    }

    #[test]
    fn run_names_are_plain_folder_names() {
        for bad in ["", ".", "..", "../data", "a/b"] {
            assert!(check_run_name(bad, Path::new("p.toml")).is_err(), "{bad:?}");
        }
        assert!(check_run_name("homework-vgg16", Path::new("p.toml")).is_ok());
    }

    #[test]
    fn fingerprint_sees_changes() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("a")).unwrap();
        std::fs::write(dir.path().join("a/x.png"), b"1").unwrap();
        let before = tree_fingerprint(dir.path()).unwrap();
        assert_eq!(before, tree_fingerprint(dir.path()).unwrap());
        std::fs::write(dir.path().join("a/x.png"), b"2").unwrap();
        assert_ne!(before, tree_fingerprint(dir.path()).unwrap(), "same size, other content");
        std::fs::write(dir.path().join("a/x.png"), b"1").unwrap();
        assert_eq!(
            before,
            tree_fingerprint(dir.path()).unwrap(),
            "rewritten with the same content"
        );
        std::fs::rename(dir.path().join("a/x.png"), dir.path().join("a/y.png")).unwrap();
        assert_ne!(before, tree_fingerprint(dir.path()).unwrap(), "renamed");
    }
}

#[cfg(test)]
mod snapshot_tests {
    use super::*;

    /// The stage invocations `config` resolves to, one argument per line, the fixture's temp
    /// folder written as `$TMP`.
    pub(crate) fn render(steps: &[Step], tmp: &Path) -> String {
        let tmp = tmp.display().to_string();
        let mut out = String::new();
        for s in steps {
            out.push_str(&format!(
                "{} = {}{}\n",
                s.name,
                s.binary,
                if s.resumable { " (resumable)" } else { "" }
            ));
            for a in &s.args {
                out.push_str(&format!("    {}\n", a.replace(&tmp, "$TMP")));
            }
            for (k, v) in &s.inputs {
                out.push_str(&format!("  input {k}: {v}\n"));
            }
        }
        out
    }

    fn fixture() -> (tempfile::TempDir, PathBuf, PathBuf, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir_all(data.join("train/a")).unwrap();
        std::fs::write(data.join("train/a/x.png"), b"1").unwrap();
        let digits = dir.path().join("digits");
        std::fs::create_dir_all(digits.join("train/0")).unwrap();
        std::fs::write(digits.join("train/0/y.png"), b"2").unwrap();
        let weights = dir.path().join("w.safetensors");
        std::fs::write(&weights, b"w").unwrap();
        (dir, data, digits, weights)
    }

    fn resolved(file: &str) -> Config {
        resolved_with(file, Profile::Demo)
    }

    fn resolved_with(file: &str, profile: Profile) -> Config {
        let args = PipelineArgs {
            config: Some(Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(file)),
            name: None,
            data: None,
            weights: None,
            device: None,
            cache_dir: None,
            profile: Some(profile),
            status: false,
            without_scratch: false,
        };
        resolve_config(&args, Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap()).unwrap()
    }

    #[test]
    fn default_config_snapshot() {
        let (dir, data, _, weights) = fixture();
        let steps =
            plan(&resolved("pipeline.toml"), &dir.path().join("run"), &data, &weights).unwrap();
        expect_test::expect![[r#"
            dataset = dataset
                check
                $TMP/data
                --split
                train
                --split
                validation
                --split
                test
                --out
                $TMP/run/dataset
              input dataset: 1 files, b3380228304910a042172ebe86fd640895ef267c130cfd8c00b87be17ea9ef7f
            extract-trunk = extract-features
                --data
                $TMP/data
                --weights
                $TMP/w.safetensors
                --out
                $TMP/run/extract-trunk
                --layer
                block4_pool
                --input-size
                64
                --pooling
                none
                --precision
                f32
                --batch-size
                20
                --augment-passes
                5
                --augment-seed
                0
                --device
                auto
              input dataset: 1 files, b3380228304910a042172ebe86fd640895ef267c130cfd8c00b87be17ea9ef7f
              input weights: 50e721e49c013f00c62cf59f2163542a9d8df02464efeb615d31051b0fddc326
            extract = extract-features
                --data
                $TMP/data
                --weights
                $TMP/w.safetensors
                --out
                $TMP/run/extract
                --layer
                block5_pool
                --input-size
                64
                --pooling
                none
                --precision
                f32
                --batch-size
                20
                --augment-passes
                5
                --augment-seed
                0
                --device
                auto
              input dataset: 1 files, b3380228304910a042172ebe86fd640895ef267c130cfd8c00b87be17ea9ef7f
              input weights: 50e721e49c013f00c62cf59f2163542a9d8df02464efeb615d31051b0fddc326
            head = train-head
                --features
                $TMP/run/extract/features.json
                --out
                $TMP/run/head
                --epochs
                30
                --batch-size
                20
                --lr
                0.00002
                --optimizer
                rmsprop
                --seed
                0
                --device
                auto
                --no-augmented-passes
              input extract/features.json: absent
            head-augmented = train-head
                --features
                $TMP/run/extract/features.json
                --out
                $TMP/run/head-augmented
                --epochs
                30
                --batch-size
                20
                --lr
                0.00002
                --optimizer
                rmsprop
                --seed
                0
                --device
                auto
              input extract/features.json: absent
            fine-tune = fine-tune (resumable)
                --data
                $TMP/data
                --weights
                $TMP/w.safetensors
                --out
                $TMP/run/fine-tune
                --input-size
                64
                --unfreeze-from
                block5_conv1
                --epochs
                15
                --steps-per-epoch
                100
                --batch-size
                20
                --lr
                0.00001
                --seed
                0
                --device
                auto
                --head
                $TMP/run/head/head.safetensors
                --trunk-cache
                $TMP/run/extract-trunk/features.json
              input dataset: 1 files, b3380228304910a042172ebe86fd640895ef267c130cfd8c00b87be17ea9ef7f
              input extract-trunk/features.json: absent
              input head/head.safetensors: absent
              input weights: 50e721e49c013f00c62cf59f2163542a9d8df02464efeb615d31051b0fddc326
            scratch = pretrain
                --data
                $TMP/data
                --out
                $TMP/run/scratch
                --input-size
                64
                --arch
                small-convnet
                --width
                1
                --epochs
                150
                --batch-size
                20
                --lr
                0.0001
                --seed
                0
                --device
                auto
                --augment
              input dataset: 1 files, b3380228304910a042172ebe86fd640895ef267c130cfd8c00b87be17ea9ef7f
        "#]].assert_eq(&render(&steps, dir.path()));
    }

    #[test]
    fn homework_config_snapshot() {
        let (dir, data, digits, _) = fixture();
        let mut config = resolved("homework.toml");
        config.pretrain.data = digits;
        let run = dir.path().join("run");
        let steps = plan(&config, &run, &data, &pretrained_base(&run)).unwrap();
        expect_test::expect![[r#"
            dataset = dataset
                check
                $TMP/data
                --split
                train
                --split
                validation
                --split
                test
                --out
                $TMP/run/dataset
              input dataset: 1 files, b3380228304910a042172ebe86fd640895ef267c130cfd8c00b87be17ea9ef7f
            pretrain = pretrain
                --data
                $TMP/digits
                --out
                $TMP/run/pretrain
                --input-size
                48
                --arch
                small-convnet
                --width
                1
                --epochs
                8
                --batch-size
                20
                --lr
                0.0001
                --seed
                0
                --device
                auto
              input pretrain dataset: 1 files, 2c0c6fb1d5e888f599069c35a55f843401f2f60c33de20f60060badef7329a39
            extract = extract-features
                --data
                $TMP/data
                --weights
                $TMP/run/pretrain/base.safetensors
                --out
                $TMP/run/extract
                --layer
                max_pooling2d_4
                --input-size
                48
                --pooling
                none
                --precision
                f32
                --batch-size
                20
                --augment-passes
                0
                --augment-seed
                0
                --device
                auto
              input dataset: 1 files, b3380228304910a042172ebe86fd640895ef267c130cfd8c00b87be17ea9ef7f
              input weights: absent
            head = train-head
                --features
                $TMP/run/extract/features.json
                --out
                $TMP/run/head
                --epochs
                30
                --batch-size
                20
                --lr
                0.0001
                --optimizer
                rmsprop
                --seed
                0
                --device
                auto
                --no-augmented-passes
              input extract/features.json: absent
            fine-tune = fine-tune (resumable)
                --data
                $TMP/data
                --weights
                $TMP/run/pretrain/base.safetensors
                --out
                $TMP/run/fine-tune
                --input-size
                48
                --unfreeze-from
                conv2d_3
                --epochs
                5
                --steps-per-epoch
                100
                --batch-size
                20
                --lr
                0.0001
                --seed
                0
                --device
                auto
                --head
                $TMP/run/head/head.safetensors
              input dataset: 1 files, b3380228304910a042172ebe86fd640895ef267c130cfd8c00b87be17ea9ef7f
              input head/head.safetensors: absent
              input weights: absent
            scratch = pretrain
                --data
                $TMP/data
                --out
                $TMP/run/scratch
                --input-size
                48
                --arch
                small-convnet
                --width
                1
                --epochs
                8
                --batch-size
                20
                --lr
                0.0001
                --seed
                0
                --device
                auto
              input dataset: 1 files, b3380228304910a042172ebe86fd640895ef267c130cfd8c00b87be17ea9ef7f
        "#]].assert_eq(&render(&steps, dir.path()));
    }

    #[test]
    fn seed_profile_snapshot() {
        let (dir, data, _, weights) = fixture();
        let config = resolved_with("pipeline.toml", Profile::Seed);
        let steps = plan(&config, &dir.path().join("run"), &data, &weights).unwrap();
        expect_test::expect![[r#"
            dataset = dataset
                check
                $TMP/data
                --split
                train
                --split
                validation
                --split
                test
                --out
                $TMP/run/dataset
              input dataset: 1 files, b3380228304910a042172ebe86fd640895ef267c130cfd8c00b87be17ea9ef7f
            extract = extract-features
                --data
                $TMP/data
                --weights
                $TMP/w.safetensors
                --out
                $TMP/run/extract
                --layer
                block5_pool
                --input-size
                150
                --pooling
                none
                --precision
                f32
                --batch-size
                20
                --augment-passes
                5
                --augment-seed
                0
                --device
                auto
              input dataset: 1 files, b3380228304910a042172ebe86fd640895ef267c130cfd8c00b87be17ea9ef7f
              input weights: 50e721e49c013f00c62cf59f2163542a9d8df02464efeb615d31051b0fddc326
            head = train-head
                --features
                $TMP/run/extract/features.json
                --out
                $TMP/run/head
                --epochs
                30
                --batch-size
                20
                --lr
                0.00002
                --optimizer
                rmsprop
                --seed
                0
                --device
                auto
                --no-augmented-passes
              input extract/features.json: absent
            head-augmented = train-head
                --features
                $TMP/run/extract/features.json
                --out
                $TMP/run/head-augmented
                --epochs
                30
                --batch-size
                20
                --lr
                0.00002
                --optimizer
                rmsprop
                --seed
                0
                --device
                auto
              input extract/features.json: absent
            fine-tune = fine-tune (resumable)
                --data
                $TMP/data
                --weights
                $TMP/w.safetensors
                --out
                $TMP/run/fine-tune
                --input-size
                150
                --unfreeze-from
                block5_conv1
                --epochs
                100
                --steps-per-epoch
                100
                --batch-size
                20
                --lr
                0.00001
                --seed
                0
                --device
                auto
                --head-epochs
                30
              input dataset: 1 files, b3380228304910a042172ebe86fd640895ef267c130cfd8c00b87be17ea9ef7f
              input weights: 50e721e49c013f00c62cf59f2163542a9d8df02464efeb615d31051b0fddc326
            scratch = pretrain
                --data
                $TMP/data
                --out
                $TMP/run/scratch
                --input-size
                150
                --arch
                small-convnet
                --width
                1
                --epochs
                100
                --batch-size
                20
                --lr
                0.0001
                --seed
                0
                --device
                auto
                --augment
              input dataset: 1 files, b3380228304910a042172ebe86fd640895ef267c130cfd8c00b87be17ea9ef7f
        "#]].assert_eq(&render(&steps, dir.path()));
    }
}
