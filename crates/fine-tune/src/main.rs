//! `fine-tune`: the fine-tuning stage (Chollet 5.3, "fine-tuning"). VGG16 conv base + Flatten +
//! Dense(256, relu) (+ Dropout) + Dense(1, sigmoid) or Dense(N, softmax); first the head trains
//! with the base frozen (or comes from `train-head`), then the base from `--unfreeze-from` up
//! trains with it at a small learning rate, on images augmented on the fly or, in cached-trunk
//! mode, on the frozen layers' output for K augmented passes read from the feature cache.
//!
//! Checkpoints after every epoch make `--resume` continue a killed run exactly; the outputs are
//! those of `train-head` (weights, history, plots, confusion matrices, metrics, stage.json).

mod data;
mod train;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use augment::{AugmentConfig, AugmentSpec};
use clap::Parser;
use models::{DeviceChoice, LayerName, Preprocessing};
use serde::Serialize;
use training::checkpoint::CheckpointDir;
use training::outputs::{self, SplitEvaluation, StageEvaluation};
use training::{HeadSpec, OptimizerChoice, tensors_io};

use crate::data::{TrainSource, TrunkCache, TrunkExpect, TrunkSet};
use crate::train::{FineTuneTask, Optimizers};
use models::classifier::{Classifier, ModelHeader, head_input_width, trunk_layer};
use training::fit_loop::{self, Checkpointing, FitConfig, Outcome, TrainState};

/// Fine-tune the top of VGG16 together with the dense head (the seed's last experiment).
/// Defaults are the seed's: 150x150, 30 epochs of head training with the base frozen (RMSprop
/// lr 2e-5), then 100 epochs from block5_conv1 up with RMSprop lr 1e-5, 100 steps of 20
/// augmented images per epoch (rotation 40, shifts 0.2, shear 0.2, zoom 0.2, horizontal flip).
///
/// Example: `fine-tune --data data/fashion-mnist-small --weights vgg16.safetensors --out
/// runs/demo/fine-tune`
#[derive(Parser, Debug)]
#[command(version, about, long_about)]
struct Args {
    /// Dataset root with train/, validation/ and (optionally) test/, one folder per class.
    #[arg(long)]
    data: PathBuf,
    /// VGG16 conv-base weights (our safetensors, from `cargo xtask weights` or an import).
    #[arg(long)]
    weights: PathBuf,
    /// Stage folder for weights, checkpoints, history, plots and metrics.
    #[arg(long)]
    out: PathBuf,
    /// Images are resized to SIZE x SIZE (at least 32).
    #[arg(long, default_value_t = 150)]
    input_size: u32,
    /// First layer that trains (Keras `block5_conv1` or torchvision `features.24`); every
    /// layer below it stays frozen.
    #[arg(long, default_value = "block5_conv1")]
    unfreeze_from: LayerName,
    /// Start from a head trained by `train-head` (its head.safetensors) instead of training one
    /// with the base frozen; the default number of head epochs then becomes 0.
    #[arg(long)]
    head: Option<PathBuf>,
    /// Epochs of head training with the whole base frozen [default: 30, or 0 with --head].
    #[arg(long)]
    head_epochs: Option<usize>,
    /// Learning rate of the head-training epochs.
    #[arg(long, default_value_t = 2e-5)]
    head_phase_lr: f64,
    /// Fine-tuning epochs (top of the base and head together).
    #[arg(long, default_value_t = 100)]
    epochs: usize,
    /// Fine-tuning learning rate (RMSprop).
    #[arg(long, default_value_t = 1e-5)]
    lr: f64,
    /// Fine-tuning learning rate of the unfrozen base layers [default: --lr].
    #[arg(long)]
    base_lr: Option<f64>,
    /// Fine-tuning learning rate of the head [default: --lr].
    #[arg(long)]
    head_lr: Option<f64>,
    #[arg(long, value_enum, default_value_t = OptimizerChoice::Rmsprop)]
    optimizer: OptimizerChoice,
    /// Batches per epoch (Keras `steps_per_epoch`); an epoch longer than the training split
    /// goes round it again in a new order.
    #[arg(long, default_value_t = 100)]
    steps_per_epoch: usize,
    #[arg(long, default_value_t = 20)]
    batch_size: usize,
    /// Hidden units of the head (taken from --head when given).
    #[arg(long)]
    hidden: Option<i64>,
    /// Dropout after the hidden layer [default: 0, the seed's fine-tuning model; with --head,
    /// the head's own].
    #[arg(long)]
    dropout: Option<f64>,
    /// Augmentation settings as JSON (Keras ImageDataGenerator argument names) [default: the
    /// seed's generator].
    #[arg(long, conflicts_with = "no_augment")]
    augment_spec: Option<PathBuf>,
    /// Train on the images as they are.
    #[arg(long)]
    no_augment: bool,
    /// Override the preprocessing recorded with the weights.
    #[arg(long, value_enum)]
    preprocessing: Option<Preprocessing>,
    /// Cached-trunk mode: the `features.json` of an extract-features run with `--layer` set to
    /// the last frozen layer (block4_pool for block5_conv1) and `--augment-passes K`. Each epoch
    /// draws one of the K passes per image and only the unfrozen top runs. The augmentation is
    /// the extraction's; --augment-spec does not apply.
    #[arg(long, conflicts_with_all = ["augment_spec", "no_augment"])]
    trunk_cache: Option<PathBuf>,
    /// Read the trunk cache's entries from this folder instead of the one its record names.
    #[arg(long, requires = "trunk_cache")]
    cache_dir: Option<PathBuf>,
    /// Continue the run whose checkpoint is in --out (same settings); starts afresh when there
    /// is none.
    #[arg(long)]
    resume: bool,
    /// Also checkpoint every N steps inside an epoch (0: at the end of each epoch only).
    #[arg(long, default_value_t = 0)]
    checkpoint_every: usize,
    /// Draw smoothed curves too (Chollet's exponential moving average with this factor; 0: no).
    #[arg(long, default_value_t = 0.8)]
    smoothing: f64,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    device: DeviceChoice,
    /// libtorch CPU threads [default: libtorch's choice]; results are bit-reproducible for a
    /// given thread count.
    #[arg(long)]
    threads: Option<i32>,
    /// Mixed precision on CUDA: the trunk, forward passes and validation under libtorch's
    /// autocast (float16 convolutions and matmuls; weights, gradients, loss and optimizer stay
    /// float32; no loss scaling). Ignored, with a warning, on the CPU: tch's autocast is
    /// CUDA-only (and bfloat16 is slower than float32 on CPUs without AMX).
    #[arg(long)]
    autocast: bool,
    /// Test hook: exit like a crash (status 3) after N steps, right after saving a checkpoint.
    #[arg(long, hide = true)]
    stop_after_steps: Option<usize>,
    /// Follow symlinked folders (split, class and subfolders; a loop is an error), as
    /// `dataset check --follow-links`. Symlinked image files are read either way.
    #[arg(long)]
    follow_links: bool,
}

/// Everything that determines the result, written to config.json before training starts; a
/// checkpoint resumes only a run with the same digest.
#[derive(Debug, Serialize)]
struct StageConfig {
    data: PathBuf,
    weights: PathBuf,
    weights_sha256: String,
    preprocessing: Preprocessing,
    input_size: u32,
    unfreeze_from: String,
    trunk_until: Option<String>,
    head_init: Option<HeadInit>,
    head_spec: HeadSpec,
    head_epochs: usize,
    epochs: usize,
    optimizers: Optimizers,
    steps_per_epoch: usize,
    batch_size: usize,
    mode: &'static str,
    augmentation: Option<serde_json::Value>,
    trunk_cache: Option<data::TrunkCacheInfo>,
    seed: u64,
    device: String,
    threads: i32,
    /// Only written when on, so the digests of runs without it stay as they were.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    autocast: bool,
}

#[derive(Debug, Clone, Serialize)]
struct HeadInit {
    path: PathBuf,
    sha256: String,
}

const MODEL_FILE: &str = "model.safetensors";
const BEST_FILE: &str = "best.safetensors";
const CHECKPOINTS: &str = "checkpoints";
fn main() -> ExitCode {
    cpu_runtime::init();
    cli_support::main_resumable(|| run(Args::parse()))
}

/// A `train-head` output to start from.
struct HeadFile {
    spec: HeadSpec,
    tensors: Vec<(String, tch::Tensor)>,
    sha256: String,
}

/// Reads `--head` and checks it against the network.
fn read_head(path: &Path, input_width: i64, classes: usize, last: &str) -> Result<HeadFile> {
    let loaded = tensors_io::load(path)?;
    let spec: HeadSpec = serde_json::from_str(loaded.metadata.get("head").with_context(|| {
        if loaded.metadata.contains_key(models::HEADER_KEY) {
            format!(
                "{}: a model file (the whole classifier); --head takes train-head's head.safetensors from the same folder",
                path.display()
            )
        } else {
            format!("{}: no `head` in the metadata: not train-head's head.safetensors", path.display())
        }
    })?)
    .with_context(|| format!("{}: unreadable `head` metadata", path.display()))?;
    if spec.input_width != input_width {
        bail!(
            "{}: the head takes {} inputs, but {last} at this input size gives {input_width}: train the head on {last} features at the same --input-size",
            path.display(),
            spec.input_width
        );
    }
    if let Some(layer) = loaded.metadata.get("layer").filter(|l| l.as_str() != last) {
        bail!(
            "{}: the head was trained on {layer} features, fine-tuning needs a head on {last}",
            path.display()
        );
    }
    if spec.classes != classes {
        bail!(
            "{}: the head predicts {} classes, the dataset has {classes}",
            path.display(),
            spec.classes
        );
    }
    Ok(HeadFile { spec, tensors: loaded.tensors, sha256: loaded.sha256 })
}

fn run(args: Args) -> Result<bool> {
    let started = Instant::now();
    if args.batch_size == 0 || args.steps_per_epoch == 0 {
        bail!("--batch-size and --steps-per-epoch must be at least 1");
    }
    if args.epochs == 0 && args.head_epochs == Some(0) && args.head.is_none() {
        bail!(
            "nothing to train: --epochs 0 and --head-epochs 0 without a --head would write an untrained head"
        );
    }
    if let Some(d) = args.dropout.filter(|d| !(0.0..1.0).contains(d)) {
        bail!("--dropout must be in [0, 1), got {d}");
    }
    if let Some(threads) = args.threads {
        tch::set_num_threads(threads);
    }
    let device = args.device.resolve()?;
    if device.is_cuda() {
        tch::Cuda::cudnn_set_benchmark(true);
    }
    // tch's autocast is CUDA autocast: on the CPU it would change nothing.
    let autocast = args.autocast && device.is_cuda();
    if args.autocast && !autocast {
        tracing::warn!(device = ?device, "--autocast applies to CUDA only: training in float32");
    }
    let size = args.input_size as i64;
    // The class rule first (dataset::scan_training_splits), before any weights are loaded.
    let train_index = data::scan_train(&args.data, args.follow_links)?;
    let weights = models::load_weights(&args.weights, device)
        .with_context(|| format!("loading weights {}", args.weights.display()))?;
    let arch = weights.base.arch().clone();
    let unfreeze_from = weights.base.layer(&args.unfreeze_from).context("--unfreeze-from")?;
    let input_width = head_input_width(&arch, arch.last(), models::Pooling::None, size)
        .with_context(|| format!("--input-size {}", args.input_size))?;
    let trunk_until = trunk_layer(&arch, unfreeze_from);

    let classes = train_index.classes.clone();
    let weights_sha256 = weights.meta.digest.clone();
    let preprocessing = args.preprocessing.unwrap_or(weights.meta.preprocessing);

    let head_init = args
        .head
        .as_deref()
        .map(|p| read_head(p, input_width, classes.len(), arch.name_of(arch.last())))
        .transpose()?;
    let head_spec = match &head_init {
        Some(head) => {
            HeadSpec { dropout: args.dropout.unwrap_or(head.spec.dropout), ..head.spec.clone() }
        }
        None => HeadSpec {
            input_width,
            hidden: args.hidden.unwrap_or(256),
            dropout: args.dropout.unwrap_or(0.0),
            classes: classes.len(),
        },
    };
    if let (Some(h), Some(head)) = (args.hidden, &head_init)
        && h != head.spec.hidden
    {
        bail!("--hidden {h} contradicts the head in --head ({} units)", head.spec.hidden);
    }
    let augment = match (&args.augment_spec, args.no_augment || args.trunk_cache.is_some()) {
        (_, true) => None,
        (Some(path), false) => Some(AugmentConfig::from_file(path)?),
        (None, false) => Some(AugmentConfig::new(AugmentSpec::seed_generator())?),
    };

    let trunk_name = trunk_until.map(|l| arch.name_of(l)).unwrap_or("input");
    let [c, h, w] = match trunk_until {
        Some(l) => arch.output_shape(size, size, l)?,
        None => [3, size, size],
    };
    let expect = TrunkExpect {
        layer: trunk_name,
        weights_sha256: &weights_sha256,
        input_size: args.input_size,
        preprocessing: preprocessing.name(),
        classes: &classes,
        row_shape: [h as u64, w as u64, c as u64],
    };
    let trunk_cache = match &args.trunk_cache {
        Some(path) => {
            if trunk_until.is_none() {
                bail!(
                    "--trunk-cache needs frozen layers, but --unfreeze-from {} trains the whole base",
                    args.unfreeze_from
                );
            }
            Some(TrunkCache::open(path, args.cache_dir.as_deref(), &expect)?)
        }
        None => None,
    };

    let optimizers = Optimizers {
        head_phase: args.optimizer.spec(args.head_phase_lr),
        base: args.optimizer.spec(args.base_lr.unwrap_or(args.lr)),
        head: args.optimizer.spec(args.head_lr.unwrap_or(args.lr)),
    };
    let head_epochs = args.head_epochs.unwrap_or(if args.head.is_some() { 0 } else { 30 });
    let config = StageConfig {
        data: args.data.clone(),
        weights: args.weights.clone(),
        weights_sha256: weights_sha256.clone(),
        preprocessing,
        input_size: args.input_size,
        unfreeze_from: arch.name_of(unfreeze_from).to_owned(),
        trunk_until: trunk_until.map(|l| arch.name_of(l).to_owned()),
        head_init: args
            .head
            .as_ref()
            .zip(head_init.as_ref())
            .map(|(p, h)| HeadInit { path: p.clone(), sha256: h.sha256.clone() }),
        head_spec: head_spec.clone(),
        head_epochs,
        epochs: args.epochs,
        optimizers,
        steps_per_epoch: args.steps_per_epoch,
        batch_size: args.batch_size,
        mode: if trunk_cache.is_some() { "cached-trunk" } else { "plain" },
        augmentation: augment
            .as_ref()
            .map(|a| serde_json::from_str(&a.canonical_json()))
            .transpose()?,
        trunk_cache: trunk_cache.as_ref().map(|t| t.info.clone()),
        seed: args.seed,
        device: format!("{device:?}"),
        threads: tch::get_num_threads(),
        autocast,
    };
    let config_sha256 = run_folder::json_sha256(&config);

    // Resume, or start afresh.
    let checkpoints = CheckpointDir::new(args.out.join(CHECKPOINTS));
    let resumed = fit_loop::resume_point(&checkpoints, &config_sha256, args.resume)?;
    let checkpoint_path = checkpoints.pointer_path(fit_loop::LATEST);
    // Only now, so a refused resume leaves the run's config.json as it was.
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    run_folder::write_json(&args.out.join(run_folder::CONFIG_FILE), &config)?;
    if resumed.is_none() {
        checkpoints.clear()?;
    }

    tch::manual_seed(args.seed as i64);
    let header = ModelHeader {
        format_version: models::MODEL_FORMAT_VERSION,
        architecture: arch.name().to_owned(),
        layers: arch.defs().to_vec(),
        cut: arch.name_of(arch.last()).to_owned(),
        pooling: models::Pooling::None,
        head: head_spec.clone(),
        class_names: classes.clone(),
        preprocessing,
        input_size: [size, size],
        resize: "nearest".to_owned(),
        base_weights_sha256: weights_sha256.clone(),
        trained_on: BTreeMap::from([
            ("data".to_owned(), data_digest(&args.data, args.follow_links)?),
            ("config".to_owned(), config_sha256.clone()),
        ]),
        stage: "fine-tune".to_owned(),
    };
    let net = Classifier::on_base(weights, header, Some(unfreeze_from))?;
    if let (Some(head), None) = (&head_init, &resumed) {
        net.load_trainable(
            &head.tensors,
            Some("head."),
            args.head.as_deref().expect("head_init comes from --head"),
        )?;
    }

    // Data: the training source, and the trunk's output for validation and test, computed once.
    let batch = args.batch_size;
    let source = match &trunk_cache {
        Some(cache) => cache.train(&expect, &train_index)?,
        None => TrainSource::Images {
            images: Box::new(data::decode(train_index, args.input_size as usize)?),
            augment,
        },
    };
    let eval_set = |split: &str| -> Result<Option<TrunkSet>> {
        if !args.data.join(split).is_dir() {
            return Ok(None);
        }
        let index = data::scan(&args.data, split, args.follow_links)?;
        if index.classes != classes {
            bail!("split {split} has classes {:?}, train has {classes:?}", index.classes);
        }
        if let Some(set) = trunk_cache
            .as_ref()
            .map(|t| t.eval_set(split, &expect, &index, device))
            .transpose()?
            .flatten()
        {
            return Ok(Some(set));
        }
        Ok(Some(data::trunk_of_images(
            &net,
            &data::decode(index, args.input_size as usize)?,
            batch,
        )?))
    };
    let validation = eval_set("validation")?
        .with_context(|| format!("{} has no validation split", args.data.display()))?;
    let test = eval_set("test")?;
    tracing::info!(
        mode = config.mode,
        train = source.len(),
        passes = source.passes(),
        validation = validation.truth.len(),
        test = test.as_ref().map(|t| t.truth.len()),
        trunk = trunk_name,
        "data ready"
    );

    let metadata = HashMap::from([
        ("architecture".to_owned(), "fine_tune_checkpoint".to_owned()),
        ("config_sha256".to_owned(), config_sha256.clone()),
    ]);
    let history_path = args.out.join("history.csv");
    let fit = FitConfig {
        phases: train::phases(head_epochs, args.epochs),
        early_stopping: None,
        restore_best: false,
        checkpoints: Some(Checkpointing {
            dir: &checkpoints,
            metadata: &metadata,
            every_steps: args.checkpoint_every,
        }),
        stop_after_steps: args.stop_after_steps,
        autocast,
    };
    let mut task = FineTuneTask {
        net: &net,
        source: &source,
        validation: &validation,
        steps_per_epoch: args.steps_per_epoch,
        batch_size: batch,
        seed: args.seed,
        optimizers,
        plan: None,
    };
    let (state, resume_tensors) = match resumed {
        Some(ckpt) => (ckpt.state, Some(ckpt.tensors)),
        None => (TrainState::new(config_sha256.clone()), None),
    };
    let outcome = fit
        .run(
            &mut task,
            state,
            resume_tensors.as_deref().map(|t| (t, checkpoint_path.as_path())),
            |history| Ok(training::write_history(&history_path, history)?),
        )
        .with_context(|| checkpoints.slot_note(fit_loop::LATEST))?;
    let (state, breakdowns) = match outcome {
        Outcome::Finished(fitted) => (fitted.state, fitted.breakdowns),
        Outcome::Stopped(state) => {
            eprintln!(
                "fine-tune: stopped after {} steps as asked (epoch {}, step {}); continue with --resume",
                args.stop_after_steps.unwrap_or_default(),
                state.epoch + 1,
                state.step
            );
            return Ok(false);
        }
    };
    let history = state.history.clone();
    training::write_history(&history_path, &history)?;

    // Outputs: weights (final and best), plots, evaluation, stage record.
    net.save(&args.out.join(MODEL_FILE))?;
    let mut files: Vec<String> = vec![MODEL_FILE.into()];
    let mut best_summary = None;
    if let Some(best) = checkpoints.load::<TrainState>(fit_loop::BEST)? {
        let trained: HashMap<String, tch::Tensor> = best.tensors.into_iter().collect();
        let tensors: Vec<(String, tch::Tensor)> = net
            .variables()
            .into_iter()
            .map(|(n, t)| match trained.get(&n) {
                Some(b) => (n, b.shallow_clone()),
                None => (n, t),
            })
            .collect();
        let b = best.state.best.context("the best checkpoint records no best epoch")?;
        net.save_variables(&args.out.join(BEST_FILE), &tensors)?;
        files.push(BEST_FILE.into());
        best_summary = Some(b);
    }
    // The final weights (model.safetensors) are the ones evaluated.
    let evaluations = [("validation", Some(&validation)), ("test", test.as_ref())]
        .into_iter()
        .filter_map(|(split, set)| set.map(|set| (split, set)))
        .map(|(split, set)| {
            let eval = train::evaluate(&net, set, batch)?;
            tracing::info!(split, loss = eval.loss, acc = eval.acc, "evaluated");
            Ok((set, eval.predictions, eval.loss))
        })
        .collect::<Result<Vec<_>>>()?;
    fn split<'a>((set, predicted, loss): &'a (&TrunkSet, Vec<i64>, f64)) -> SplitEvaluation<'a> {
        SplitEvaluation {
            truth: &set.truth,
            predicted,
            loss: *loss,
            source: Some(set.source.clone()),
        }
    }
    let written = StageEvaluation {
        classes: &classes,
        history: &history,
        kept_epoch: history.len(),
        smoothing: (args.smoothing > 0.0).then_some(args.smoothing),
        validation: split(&evaluations[0]),
        test: evaluations.get(1).map(split),
    }
    .write(&args.out)?;
    files.extend(written.files);
    let metrics = written.metrics;
    let median_epoch_seconds = outputs::median_epoch_seconds(&history);

    let mut inputs = BTreeMap::from([
        ("weights".to_owned(), weights_sha256.clone()),
        ("data".to_owned(), data_digest(&args.data, args.follow_links)?),
    ]);
    if let Some(HeadInit { sha256, .. }) = &config.head_init {
        inputs.insert("head".to_owned(), sha256.clone());
    }
    if let Some(info) = &config.trunk_cache {
        inputs.insert("trunk_cache".to_owned(), info.features_json_sha256.clone());
    }
    let summary = outputs::stage_summary(
        &metrics,
        device,
        serde_json::json!({
            "mode": config.mode,
            "best_epoch": best_summary.as_ref().map(|b| b.epoch),
            "median_epoch_seconds": median_epoch_seconds,
            "train_images_per_second": median_epoch_seconds.map(|s| (args.steps_per_epoch * batch) as f64 / s),
            "autocast": autocast,
            // Seconds per part of each epoch this process ran (a resumed epoch counts its own steps).
            "epoch_breakdown": breakdowns,
        }),
    );
    let names: Vec<&str> = files.iter().map(String::as_str).collect();
    run_folder::StageRecord::write(
        &args.out,
        "fine-tune",
        config_sha256,
        inputs,
        &names,
        started.elapsed().as_secs_f64(),
        summary,
    )?;
    eprintln!(
        "fine-tune ({}): {} after {} epochs in {:.1}s -> {}",
        config.mode,
        outputs::accuracy_line(&metrics),
        history.len(),
        started.elapsed().as_secs_f64(),
        args.out.display()
    );
    Ok(true)
}

/// The dataset as an input of this stage (see `dataset::tree_digest`).
fn data_digest(root: &Path, follow_links: bool) -> Result<String> {
    dataset::tree_digest(root, &data::scan_options(follow_links))
        .with_context(|| format!("digesting the dataset {}", root.display()))
}
