//! `train-head`: the dense-head stage. Opens the train / validation / test features that
//! `extract-features` cached (verifying every chunk of every split), trains Flatten ->
//! Dense(256, relu) -> Dropout(0.5) -> Dense(1, sigmoid) or Dense(N, softmax) with Keras RMSprop
//! on batches read from the cache as they are needed (no split is ever held whole, so memory
//! does not grow with the dataset), and writes the head weights, history, plots, confusion
//! matrix and metrics into its run folder.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Parser;
use feature_cache::{Cache, ExtractionRecord, SplitReader};
use models::DeviceChoice;
use models::classifier::{Classifier, ModelHeader};
use serde::Serialize;
use tch::{Device, nn};
use training::fit_loop::BoxError;
use training::outputs::{self, SplitEvaluation, StageEvaluation};
use training::{
    DenseHead, FeatureRows, HeadFit, HeadSpec, OptimizerChoice, OptimizerSpec, StreamedSet,
    evaluate_features, tensors_io,
};

/// Train the dense classifier head on cached VGG16 features (the seed's "fast feature
/// extraction without data augmentation"). Defaults are the seed's: RMSprop lr 2e-5, 30 epochs,
/// batch 20.
///
/// Example: `train-head --features runs/demo/extract/features.json --out runs/demo/head`
#[derive(Parser, Debug)]
#[command(version, about, long_about)]
struct Args {
    /// The `features.json` written by extract-features.
    #[arg(long)]
    features: PathBuf,
    /// Read the cache entries from this folder instead of the one recorded in features.json.
    #[arg(long)]
    cache_dir: Option<PathBuf>,
    /// The base weights file the features were extracted with (its sha256 is checked against
    /// the features'): with it, the stage also writes model.safetensors, the classifier that
    /// takes images (base up to the cached layer + this head) and needs no other file.
    #[arg(long)]
    weights: Option<PathBuf>,
    /// Stage folder for weights, history, plots and metrics.
    #[arg(long)]
    out: PathBuf,
    #[arg(long, default_value_t = 30)]
    epochs: usize,
    #[arg(long, default_value_t = 20)]
    batch_size: i64,
    #[arg(long, default_value_t = 2e-5)]
    lr: f64,
    #[arg(long, value_enum, default_value_t = OptimizerChoice::Rmsprop)]
    optimizer: OptimizerChoice,
    /// L2 weight decay added to the gradients.
    #[arg(long, default_value_t = 0.0)]
    weight_decay: f64,
    #[arg(long, default_value_t = 256)]
    hidden: i64,
    #[arg(long, default_value_t = 0.5)]
    dropout: f64,
    /// Stop when validation loss has not improved for this many epochs.
    #[arg(long)]
    early_stopping_patience: Option<usize>,
    /// With early stopping, put back the weights of the best epoch.
    #[arg(long)]
    restore_best: bool,
    /// Use the augmented passes of the training split when the extraction made some (each
    /// epoch draws one pass per sample). `--no-augmented-passes` trains on plain features.
    #[arg(long = "no-augmented-passes", action = clap::ArgAction::SetFalse)]
    augmented_passes: bool,
    /// Also draw smoothed curves (Chollet's exponential moving average with this factor).
    #[arg(long, default_value_t = 0.8)]
    smoothing: f64,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    device: DeviceChoice,
}

/// Everything that determines the result, written to config.json before training starts.
#[derive(Debug, Serialize)]
struct StageConfig<'a> {
    features: &'a Path,
    train_keys: Vec<String>,
    validation_key: String,
    test_key: Option<String>,
    head: &'a HeadSpec,
    optimizer: OptimizerSpec,
    epochs: usize,
    batch_size: i64,
    early_stopping_patience: Option<usize>,
    restore_best: bool,
    seed: u64,
    device: String,
}

const WEIGHTS_FILE: &str = "head.safetensors";
/// The whole classifier (base up to the cut + head), written when `--weights` is given.
const MODEL_FILE: &str = "model.safetensors";

fn main() -> ExitCode {
    cpu_runtime::init();
    cli_support::main(|| run(Args::parse()))
}

fn run(args: Args) -> Result<()> {
    let started = Instant::now();
    anyhow::ensure!(
        args.epochs >= 1,
        "--epochs must be at least 1 (0 would write an untrained head)"
    );
    let record: ExtractionRecord = run_folder::read_json(&args.features)?;
    // Before any work: the weights for the model file must be those the features came from.
    if let Some(weights) = &args.weights {
        let digest = run_folder::file_sha256(weights)
            .with_context(|| format!("--weights {}", weights.display()))?
            .sha256;
        if digest != record.weights_sha256 {
            bail!(
                "--weights {}: its sha256 is {digest} but {} was extracted with weights of sha256 {}: pass the weights file extract-features ran",
                weights.display(),
                args.features.display(),
                record.weights_sha256
            );
        }
    }
    let cache_dir = args.cache_dir.clone().unwrap_or_else(|| record.cache_dir.clone());
    let cache = Cache::open(&cache_dir)
        .with_context(|| format!("opening the feature cache {}", cache_dir.display()))?;
    let device = args.device.resolve()?;

    let entry = |split: &str| {
        record
            .plain(split)
            .with_context(|| format!("{} has no {split} features", args.features.display()))
    };
    let passes = if args.augmented_passes { record.passes("train") } else { Vec::new() };
    let train_refs = if passes.is_empty() { vec![entry("train")?] } else { passes };
    let val_ref = entry("validation")?;
    let test_ref = record.plain("test");

    let classes = record.classes.clone();
    // The class rule of every training stage, first on the class list, then (below) on the
    // labels the training entries hold, which skipped bad images may have thinned.
    dataset::require_training_classes(&args.features, &classes, &[])?;
    let width: u64 = record.feature_shape.iter().product();
    let head_spec = HeadSpec {
        input_width: width as i64,
        hidden: args.hidden,
        dropout: args.dropout,
        classes: classes.len(),
    };
    let optimizer_spec = args.optimizer.spec(args.lr).with_weight_decay(args.weight_decay);
    let config = StageConfig {
        features: &args.features,
        train_keys: train_refs.iter().map(|e| e.key.clone()).collect(),
        validation_key: val_ref.key.clone(),
        test_key: test_ref.map(|e| e.key.clone()),
        head: &head_spec,
        optimizer: optimizer_spec,
        epochs: args.epochs,
        batch_size: args.batch_size,
        early_stopping_patience: args.early_stopping_patience,
        restore_best: args.restore_best,
        seed: args.seed,
        device: format!("{device:?}"),
    };
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    run_folder::write_json(&args.out.join(run_folder::CONFIG_FILE), &config)?;

    // Every split is opened (its index and every chunk verified) but never read whole: batches
    // are read from the chunk files as training and evaluation need them.
    let open = |e: &feature_cache::EntryRef| -> Result<CachedRows> {
        Ok(CachedRows(ExtractionRecord::open(&cache, e, &args.features)?))
    };
    let train_entries: Vec<CachedRows> =
        train_refs.iter().map(|e| open(e)).collect::<Result<_>>()?;
    let val_entry = open(val_ref)?;
    let test_entry = test_ref.map(open).transpose()?;
    for CachedRows(e) in train_entries.iter().chain([&val_entry]).chain(test_entry.as_ref()) {
        if e.settings().dataset.classes != classes {
            bail!(
                "cache entry {} has classes {:?}, the extraction record {:?}",
                e.key(),
                e.settings().dataset.classes,
                classes
            );
        }
    }
    let mut counts = vec![0usize; classes.len()];
    for &label in train_entries[0].0.labels() {
        if let Some(n) = usize::try_from(label).ok().and_then(|l| counts.get_mut(l)) {
            *n += 1;
        }
    }
    dataset::require_training_classes(&args.features, &classes, &counts)?;
    if train_entries.iter().any(|e| e.0.labels() != train_entries[0].0.labels()) {
        bail!("the augmented passes of the training split disagree on labels: re-extract them");
    }
    let train = streamed(&train_entries.iter().collect::<Vec<_>>(), device)?;
    let val = streamed(&[&val_entry], device)?;
    let test = test_entry.as_ref().map(|t| streamed(&[t], device)).transpose()?;
    tracing::info!(
        train = train.len(),
        passes = train.passes(),
        validation = val.len(),
        test = test.as_ref().map(StreamedSet::len),
        width,
        "features verified (read in batches)"
    );

    tch::manual_seed(args.seed as i64);
    let vs = nn::VarStore::new(device);
    let head = DenseHead::new(&vs.root(), head_spec.clone());
    // Early stopping with restore puts back the best epoch's weights; otherwise the last stay.
    let restored = args.restore_best && args.early_stopping_patience.is_some();
    let fit = HeadFit {
        epochs: args.epochs,
        batch_size: args.batch_size,
        seed: args.seed,
        early_stopping_patience: args.early_stopping_patience,
        restore_best: restored,
    };
    let history_path = args.out.join("history.csv");
    let fitted = training::fit_head((&head, &vs), optimizer_spec, (&train, &val), &fit, |h| {
        Ok(training::write_history(&history_path, h)?)
    })?;
    let history = fitted.state.history;

    // Outputs: weights, then the evaluation of the weights kept.
    let metadata = HashMap::from([
        ("architecture".to_owned(), "dense_head".to_owned()),
        ("head".to_owned(), serde_json::to_string(&head_spec)?),
        ("input_shape".to_owned(), serde_json::to_string(&record.feature_shape)?),
        ("layer".to_owned(), record.layer.clone()),
        ("weights_sha256".to_owned(), record.weights_sha256.clone()),
        ("class_names".to_owned(), serde_json::to_string(&classes)?),
        ("cache_keys".to_owned(), serde_json::to_string(&config.train_keys)?),
    ]);
    tensors_io::save(&args.out.join(WEIGHTS_FILE), &tensors_io::named_variables(&vs), &metadata)?;
    let model_written = match &args.weights {
        Some(weights) => {
            let trained_on = BTreeMap::from([
                ("features".to_owned(), config.train_keys.join(",")),
                ("config".to_owned(), run_folder::json_sha256(&config)),
            ]);
            let base = ModelBase { weights, key: val_entry.0.settings(), classes: &classes };
            write_model(&base, &head_spec, &vs, trained_on, &args.out.join(MODEL_FILE))?;
            true
        }
        None => {
            tracing::warn!(
                "no --weights given: {MODEL_FILE} (the classifier that takes images) is not written, only {WEIGHTS_FILE}"
            );
            false
        }
    };

    let eval_split = |split: &str, set: &StreamedSet| -> Result<(Vec<i64>, Vec<i64>, f64)> {
        let eval = evaluate_features(&head, set, args.batch_size)?;
        tracing::info!(split, loss = eval.loss, acc = eval.acc, "evaluated");
        Ok((set.labels().to_vec(), eval.predictions, eval.loss))
    };
    let val_eval = eval_split("validation", &val)?;
    let test_eval = test.as_ref().map(|t| eval_split("test", t)).transpose()?;
    fn split((truth, predicted, loss): &(Vec<i64>, Vec<i64>, f64)) -> SplitEvaluation<'_> {
        SplitEvaluation { truth, predicted, loss: *loss, source: None }
    }
    let written = StageEvaluation {
        classes: &classes,
        history: &history,
        kept_epoch: fitted.kept_epoch,
        smoothing: (args.smoothing > 0.0).then_some(args.smoothing),
        validation: split(&val_eval),
        test: test_eval.as_ref().map(split),
    }
    .write(&args.out)?;

    let mut files = written.files;
    files.push(WEIGHTS_FILE.to_owned());
    if model_written {
        files.push(MODEL_FILE.to_owned());
    }
    let inputs = BTreeMap::from([(
        "features.json".to_owned(),
        run_folder::file_sha256(&args.features)?.sha256,
    )]);
    let summary = outputs::stage_summary(
        &written.metrics,
        device,
        serde_json::json!({ "augmented_passes": train.passes() }),
    );
    let names: Vec<&str> = files.iter().map(String::as_str).collect();
    run_folder::StageRecord::write(
        &args.out,
        "train-head",
        run_folder::json_sha256(&config),
        inputs,
        &names,
        started.elapsed().as_secs_f64(),
        summary,
    )?;
    let peak_rss_mb = cli_support::peak_rss_mb().unwrap_or(f64::NAN);
    tracing::info!(peak_rss_mb, "done");
    eprintln!(
        "train-head: {} in {:.1}s, peak_rss_mb={peak_rss_mb:.0} -> {}",
        outputs::accuracy_line(&written.metrics),
        started.elapsed().as_secs_f64(),
        args.out.display()
    );
    Ok(())
}

/// What the cached features were computed with: the base weights file and the entry's key.
struct ModelBase<'a> {
    weights: &'a Path,
    key: &'a feature_cache::FeatureKey,
    classes: &'a [String],
}

/// Writes the classifier that takes images: the base of `base.weights` (its sha256 must be the
/// one the features were extracted with) cut at the cached layer with the cached pooling, and the
/// trained head, as one model file (`models::classifier`).
fn write_model(
    base: &ModelBase,
    head_spec: &HeadSpec,
    head: &nn::VarStore,
    trained_on: BTreeMap<String, String>,
    path: &Path,
) -> Result<()> {
    let weights = models::load_weights(base.weights, Device::Cpu)
        .with_context(|| format!("--weights {}", base.weights.display()))?;
    if weights.meta.digest != base.key.weights_sha256 {
        bail!(
            "--weights {}: its sha256 is {} but the features were extracted with weights of sha256 {}: pass the weights file extract-features ran",
            base.weights.display(),
            weights.meta.digest,
            base.key.weights_sha256
        );
    }
    let key = base.key;
    let header = ModelHeader {
        format_version: models::MODEL_FORMAT_VERSION,
        architecture: weights.base.arch().name().to_owned(),
        layers: weights.base.arch().defs().to_vec(),
        cut: key.layer.clone(),
        pooling: key.pooling.parse()?,
        head: head_spec.clone(),
        class_names: base.classes.to_vec(),
        preprocessing: key.preprocessing.parse()?,
        input_size: key.input_size.map(i64::from),
        resize: key.resize.clone(),
        base_weights_sha256: weights.meta.digest.clone(),
        trained_on,
        stage: "train-head".to_owned(),
    };
    let model = Classifier::on_base(weights, header, None::<&str>)?;
    let tensors = tensors_io::named_variables(head);
    model.load_trainable(&tensors, Some("head."), path)?;
    model.save(path)?;
    Ok(())
}

/// A split of the cache as rows the training crate reads batch by batch (the reader keeps only
/// chunk offsets and labels; rows are read from the chunk files on demand).
struct CachedRows(SplitReader);

impl FeatureRows for CachedRows {
    fn rows(&self) -> u64 {
        self.0.rows()
    }

    fn row_shape(&self) -> Vec<i64> {
        self.0.row_shape().iter().map(|&d| d as i64).collect()
    }

    fn gather(&self, rows: &[u64], out: &mut [f32]) -> Result<(), BoxError> {
        Ok(self.0.read_rows(rows, out)?)
    }

    fn read_range(&self, start: u64, len: u64, out: &mut [f32]) -> Result<(), BoxError> {
        Ok(self.0.read_range(start, len, out)?)
    }
}

/// Passes of one split (the first one's labels) read batch by batch onto `device`.
fn streamed<'a>(passes: &[&'a CachedRows], device: Device) -> Result<StreamedSet<'a>> {
    let labels = passes[0].0.labels().iter().map(|&l| l as i64).collect();
    let rows = passes.iter().map(|&p| p as &dyn FeatureRows).collect();
    Ok(StreamedSet::new(rows, labels, device)?)
}
