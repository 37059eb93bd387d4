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
use pretrain::net::{self, ArchChoice, ConvNet, PREPROCESSING};
use pretrain::train::{self, TrainConfig};
use serde::Serialize;
use training::outputs::{self, SplitEvaluation, StageEvaluation};
use training::{Optimizer, OptimizerChoice, OptimizerSpec, tensors_io};

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
}

const BASE_FILE: &str = "base.safetensors";
const MODEL_FILE: &str = "model.safetensors";

fn main() -> ExitCode {
    cpu_runtime::init();
    cli_support::main(|| run(Args::parse()))
}

fn run(args: Args) -> Result<()> {
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
    let device = args.device.resolve()?;
    let augment = match (&args.augment_spec, args.augment) {
        (Some(path), _) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            Some(
                AugmentConfig::new(
                    AugmentSpec::from_json(&text).with_context(|| path.display().to_string())?,
                )
                .with_context(|| format!("augmentation settings in {}", path.display()))?,
            )
        }
        (None, true) => Some(AugmentConfig::new(AugmentSpec::seed_generator())?),
        (None, false) => None,
    };
    let optimizer_spec = args.optimizer.spec(args.lr);

    let data_sha256 = data_digest(&args.data)?;
    let classes = data::scan(&args.data, "train")?.classes;
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
    };
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    run_folder::write_json(&args.out.join(run_folder::CONFIG_FILE), &config)?;
    let config_sha256 = run_folder::json_sha256(&config);

    let load = |split: &str| -> Result<Images> {
        let images = data::load(&args.data, split, args.input_size as usize)?;
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
    let net = ConvNet::new(arch.clone(), size, classes.len(), args.hidden, args.dropout, device)?;
    tracing::info!(
        architecture = arch.name(),
        params = models::parameter_count(&net.vs),
        "network built"
    );
    let mut optimizer = Optimizer::new(optimizer_spec, net.variables());
    let train_config = TrainConfig {
        epochs: args.epochs,
        batch_size: args.batch_size,
        seed: args.seed,
        augment,
        restore_best: !args.keep_last,
    };
    let mut so_far = Vec::new();
    let trained =
        train::fit(&net, &mut optimizer, &train_set, &val_set, &train_config, |record| {
            so_far.push(record.clone());
            Ok(training::write_history(&args.out.join("history.csv"), &so_far)?)
        })?;
    let history = &trained.history;

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
    let base_meta = net.save_base(&args.out.join(BASE_FILE), &provenance)?;
    let metadata = HashMap::from([
        ("architecture".to_owned(), format!("{}+dense_head", arch.name())),
        ("layers".to_owned(), arch.to_json()),
        ("head".to_owned(), serde_json::to_string(net.head.spec())?),
        ("input_size".to_owned(), args.input_size.to_string()),
        ("preprocessing".to_owned(), PREPROCESSING.name().to_owned()),
        ("class_names".to_owned(), serde_json::to_string(&classes)?),
        ("base_sha256".to_owned(), base_meta.digest.clone()),
    ]);
    tensors_io::save(&args.out.join(MODEL_FILE), &net.variables(), &metadata)?;

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
    Ok(())
}

/// The dataset as an input of this stage (see `dataset::tree_digest`).
fn data_digest(root: &Path) -> Result<String> {
    let options =
        dataset::ScanOptions { class_mode: dataset::ClassMode::Sparse, ..Default::default() };
    dataset::tree_digest(root, &options)
        .with_context(|| format!("digesting the dataset {}", root.display()))
}
