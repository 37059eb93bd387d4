//! `pretrain`: the train-from-scratch stage. Trains Chollet's small convnet (or a VGG16 of
//! reduced width) with its dense top on a class-per-folder dataset, and writes the conv base as
//! our weights file (`base.safetensors`: named layers, `rescale` preprocessing, the layer list),
//! which `extract-features --weights` and `fine-tune --weights` accept like VGG16 weights, plus
//! the whole model, history, plots, confusion matrices, metrics and `stage.json`.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use augment::{AugmentConfig, AugmentSpec};
use clap::Parser;
use models::DeviceChoice;
use models::weights::Provenance;
use pretrain::data::{self, Images};
use pretrain::net::{self, ArchChoice, PREPROCESSING};
use pretrain::train::{self, PretrainTask};
use serde::Serialize;
use training::checkpoint::CheckpointDir;
use training::fit_loop::{self, Checkpointing, FitConfig, Outcome, TrainState};
use training::outputs::{self, SplitEvaluation, StageEvaluation};
use training::{OptimizerChoice, OptimizerSpec, PhasePlan};

/// Train a convnet from scratch on an image-folder dataset (`train/`, `validation/`, optional
/// `test/`, one folder per class) and save its conv base as weights for extract-features and
/// fine-tune. Defaults are Chollet's cats-vs-dogs convnet (*Deep Learning with Python* 5.2):
/// 150x150 input, RMSprop lr 1e-4, batch 20, 30 epochs, Dense 512 on top.
///
/// Example: `pretrain --data data/mnist-small --out runs/homework/pretrain --input-size 64
/// --epochs 5`
#[derive(Parser, Debug)]
#[command(version, about, long_about)]
struct Args {
    /// Dataset root holding train/ and validation/ (and optionally test/), one folder per class.
    #[arg(long)]
    data: PathBuf,
    /// Stage folder for weights, history, plots and metrics.
    #[arg(long)]
    out: PathBuf,
    /// The conv base to train.
    #[arg(long, value_enum, default_value_t = ArchChoice::SmallConvnet)]
    arch: ArchChoice,
    /// With --arch vgg16: fraction of VGG16's filters per layer (0.25: 16, 32, 64, 128, 128).
    #[arg(long, default_value_t = 1.0)]
    width: f64,
    /// Images are resized to SIZE x SIZE (the small convnet needs at least 46, VGG16 32).
    #[arg(long, default_value_t = 150)]
    input_size: u32,
    #[arg(long, default_value_t = 30)]
    epochs: usize,
    #[arg(long, default_value_t = 20)]
    batch_size: usize,
    #[arg(long, default_value_t = 1e-4)]
    lr: f64,
    #[arg(long, value_enum, default_value_t = OptimizerChoice::Rmsprop)]
    optimizer: OptimizerChoice,
    /// Units of the dense layer on top of the base.
    #[arg(long, default_value_t = 512)]
    hidden: i64,
    /// Dropout after the dense layer (0 disables it).
    #[arg(long, default_value_t = 0.5)]
    dropout: f64,
    /// Augment training images with the seed's ImageDataGenerator settings (rotation 40, shifts
    /// 0.2, shear 0.2, zoom 0.2, horizontal flip): right for clothes, wrong for digits.
    #[arg(long)]
    augment: bool,
    /// Augment with the settings in this JSON file (Keras argument names) instead.
    #[arg(long)]
    augment_spec: Option<PathBuf>,
    /// Keep the last epoch's weights instead of those of the epoch with the lowest validation loss.
    #[arg(long)]
    keep_last: bool,
    /// Also draw smoothed curves (exponential moving average with this factor; 0: none).
    #[arg(long, default_value_t = 0.8)]
    smoothing: f64,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// libtorch CPU threads (default: libtorch's choice).
    #[arg(long)]
    threads: Option<i32>,
    /// auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    device: DeviceChoice,
    /// Continue from OUT/checkpoints (the weights, optimizer state and position of the last
    /// checkpoint); a checkpoint of other settings is refused. Without one, starts afresh.
    #[arg(long)]
    resume: bool,
    /// Also checkpoint every N steps inside an epoch (0: at the end of every epoch only).
    #[arg(long, default_value_t = 0)]
    checkpoint_every: usize,
    /// Stop after this many steps, checkpointed, with exit status 3 (to test --resume).
    #[arg(long, hide = true)]
    stop_after_steps: Option<usize>,
    /// Follow symlinked folders (split, class and subfolders; a loop is an error), as
    /// `dataset check --follow-links`. Symlinked image files are read either way.
    #[arg(long)]
    follow_links: bool,
}

/// Everything that determines the result, written to config.json before training starts.
#[derive(Debug, Serialize)]
struct StageConfig<'a> {
    data: &'a Path,
    data_sha256: &'a str,
    architecture: &'a str,
    layers: serde_json::Value,
    input_size: u32,
    preprocessing: &'static str,
    classes: &'a [String],
    hidden: i64,
    dropout: f64,
    optimizer: OptimizerSpec,
    epochs: usize,
    batch_size: usize,
    augment: Option<serde_json::Value>,
    restore_best: bool,
    seed: u64,
    device: String,
    /// libtorch CPU threads: float reductions split by thread count, so a resumed run with
    /// another count would not end where an uninterrupted one does.
    threads: i32,
}

const BASE_FILE: &str = "base.safetensors";
const MODEL_FILE: &str = "model.safetensors";
const CHECKPOINTS: &str = "checkpoints";
fn main() -> ExitCode {
    cpu_runtime::init();
    cli_support::main_resumable(|| run(Args::parse()))
}

/// Trains and writes the stage's outputs; `false` when `--stop-after-steps` stopped it.
fn run(args: Args) -> Result<bool> {
    let started = Instant::now();
    if let Some(threads) = args.threads {
        tch::set_num_threads(threads);
    }
    if !(0.0..1.0).contains(&args.dropout) {
        bail!("--dropout must be in [0, 1), got {}", args.dropout);
    }
    let arch = net::arch(args.arch, args.width)?;
    let size = args.input_size as i64;
    arch.output_shape(size, size, arch.last())
        .with_context(|| format!("--input-size {}", args.input_size))?;
    anyhow::ensure!(
        args.batch_size >= 1 && args.epochs >= 1,
        "--batch-size and --epochs must be at least 1"
    );
    let device = args.device.resolve()?;
    let augment = match (&args.augment_spec, args.augment) {
        (Some(path), _) => Some(AugmentConfig::from_file(path)?),
        (None, true) => Some(AugmentConfig::new(AugmentSpec::seed_generator())?),
        (None, false) => None,
    };
    let optimizer_spec = args.optimizer.spec(args.lr);

    let classes = data::scan_train(&args.data, args.follow_links)?.classes;
    let data_sha256 = data_digest(&args.data, args.follow_links)?;
    let config = StageConfig {
        data: &args.data,
        data_sha256: &data_sha256,
        architecture: arch.name(),
        layers: serde_json::from_str(&arch.to_json())?,
        input_size: args.input_size,
        preprocessing: PREPROCESSING.name(),
        classes: &classes,
        hidden: args.hidden,
        dropout: args.dropout,
        optimizer: optimizer_spec,
        epochs: args.epochs,
        batch_size: args.batch_size,
        augment: augment.as_ref().map(|a| serde_json::from_str(&a.canonical_json())).transpose()?,
        restore_best: !args.keep_last,
        seed: args.seed,
        device: format!("{device:?}"),
        threads: tch::get_num_threads(),
    };
    let config_sha256 = run_folder::json_sha256(&config);
    let checkpoints = CheckpointDir::new(args.out.join(CHECKPOINTS));
    let resumed = fit_loop::resume_point(&checkpoints, &config_sha256, args.resume)?;
    // Only now, so a refused resume leaves the run's config.json as it was.
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    run_folder::write_json(&args.out.join(run_folder::CONFIG_FILE), &config)?;
    if resumed.is_none() {
        checkpoints.clear()?;
    }

    let load = |split: &str| -> Result<Images> {
        let images =
            data::load_following(&args.data, split, args.input_size as usize, args.follow_links)?;
        if images.classes() != classes {
            bail!(
                "split {split} of {} has classes {:?}, train has {:?}",
                args.data.display(),
                images.classes(),
                classes
            );
        }
        Ok(images)
    };
    let train_set = load("train")?;
    let val_set = load("validation")?;
    let test_set = args.data.join("test").is_dir().then(|| load("test")).transpose()?;
    tracing::info!(
        train = train_set.len(),
        validation = val_set.len(),
        test = test_set.as_ref().map(Images::len),
        classes = classes.len(),
        "splits decoded"
    );

    tch::manual_seed(args.seed as i64);
    let trained_on = BTreeMap::from([
        ("data".to_owned(), data_sha256.clone()),
        ("config".to_owned(), config_sha256.clone()),
    ]);
    let mut net =
        net::new_model(&arch, size, &classes, (args.hidden, args.dropout), trained_on, device)?;
    tracing::info!(
        architecture = arch.name(),
        params = net.trainable().iter().map(|(_, t)| t.numel() as i64).sum::<i64>(),
        "network built"
    );
    let metadata = HashMap::from([
        ("architecture".to_owned(), "pretrain_checkpoint".to_owned()),
        ("config_sha256".to_owned(), config_sha256.clone()),
    ]);
    let fit = FitConfig {
        phases: vec![PhasePlan { name: "scratch".into(), epochs: args.epochs }],
        early_stopping: None,
        restore_best: !args.keep_last,
        checkpoints: Some(Checkpointing {
            dir: &checkpoints,
            metadata: &metadata,
            every_steps: args.checkpoint_every,
        }),
        stop_after_steps: args.stop_after_steps,
        autocast: false,
    };
    let mut task = PretrainTask {
        net: &net,
        train: &train_set,
        val: &val_set,
        optimizer: optimizer_spec,
        batch_size: args.batch_size,
        seed: args.seed,
        augment: augment.as_ref(),
        order: Vec::new(),
    };
    let checkpoint_path = checkpoints.pointer_path(fit_loop::LATEST);
    let (state, resume_tensors) = match resumed {
        Some(ckpt) => (ckpt.state, Some(ckpt.tensors)),
        None => (TrainState::new(config_sha256.clone()), None),
    };
    let history_path = args.out.join("history.csv");
    let outcome = fit.run(
        &mut task,
        state,
        resume_tensors.as_deref().map(|t| (t, checkpoint_path.as_path())),
        |history| Ok(training::write_history(&history_path, history)?),
    )?;
    let trained = match outcome {
        Outcome::Finished(fitted) => fitted,
        Outcome::Stopped(state) => {
            eprintln!(
                "pretrain: stopped after {} steps as asked (epoch {}, step {}); continue with --resume",
                args.stop_after_steps.unwrap_or_default(),
                state.epoch + 1,
                state.step
            );
            return Ok(false);
        }
    };
    let history = &trained.state.history;

    // Evaluation of the weights we keep and its files, then the weights.
    let evaluate = |split: &str, images: &Images| -> Result<(Vec<i64>, f64)> {
        let eval = train::evaluate(&net, images, args.batch_size)?;
        tracing::info!(split, loss = eval.loss, acc = eval.acc, "evaluated");
        Ok((eval.predictions, eval.loss))
    };
    let val_eval = evaluate("validation", &val_set)?;
    let test_eval = test_set.as_ref().map(|t| anyhow::Ok((t, evaluate("test", t)?))).transpose()?;
    fn split<'a>(
        images: &'a Images,
        (predicted, loss): &'a (Vec<i64>, f64),
    ) -> SplitEvaluation<'a> {
        SplitEvaluation { truth: &images.labels, predicted, loss: *loss, source: None }
    }
    let written = StageEvaluation {
        classes: &classes,
        history,
        kept_epoch: trained.kept_epoch,
        smoothing: (args.smoothing > 0.0).then_some(args.smoothing),
        validation: split(&val_set, &val_eval),
        test: test_eval.as_ref().map(|(images, eval)| split(images, eval)),
    }
    .write(&args.out)?;
    let mut files = written.files;
    let metrics = written.metrics;

    let val_acc = metrics.validation.acc;
    let provenance = Provenance {
        preprocessing: PREPROCESSING,
        source: format!(
            "pretrain: {} trained from scratch on {} ({} classes, {} training images at {}x{}), epoch {} of {}, validation acc {val_acc:.4}",
            arch.name(),
            args.data.display(),
            classes.len(),
            train_set.len(),
            args.input_size,
            args.input_size,
            trained.kept_epoch,
            history.len()
        ),
        source_sha256: config_sha256.clone(),
        source_format: "pretrain".to_owned(),
    };
    let base_meta = net::save_base(&mut net, &args.out.join(BASE_FILE), &provenance)?;
    net.save(&args.out.join(MODEL_FILE))?;

    let inputs = BTreeMap::from([("data".to_owned(), data_sha256.clone())]);
    files.extend([BASE_FILE, MODEL_FILE].map(String::from));
    let summary = outputs::stage_summary(
        &metrics,
        device,
        serde_json::json!({
            "architecture": arch.name(),
            "base_sha256": base_meta.digest,
            "train_seconds": history.iter().map(|r| r.seconds).sum::<f64>(),
        }),
    );
    let names: Vec<&str> = files.iter().map(String::as_str).collect();
    run_folder::StageRecord::write(
        &args.out,
        "pretrain",
        config_sha256,
        inputs,
        &names,
        started.elapsed().as_secs_f64(),
        summary,
    )?;
    eprintln!(
        "pretrain: {} {} (epoch {} of {}) in {:.1}s -> {}",
        arch.name(),
        outputs::accuracy_line(&metrics),
        trained.kept_epoch,
        history.len(),
        started.elapsed().as_secs_f64(),
        args.out.join(BASE_FILE).display()
    );
    Ok(true)
}

/// The dataset as an input of this stage (see `dataset::tree_digest`).
fn data_digest(root: &Path, follow_links: bool) -> Result<String> {
    let options = dataset::ScanOptions {
        class_mode: dataset::ClassMode::Sparse,
        follow_links,
        ..Default::default()
    };
    dataset::tree_digest(root, &options)
        .with_context(|| format!("digesting the dataset {}", root.display()))
}
