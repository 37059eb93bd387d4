//! `extract-features`: the feature-extraction stage. Runs each dataset split (and K augmented
//! passes of the training split) through the frozen VGG16 conv base and stores the features of
//! one or more layers in the content-addressed cache. Nothing is run twice: entries already
//! cached (by anyone sharing the cache) are reused after verification; several layers come from
//! one pass; and a layer whose entry is missing is computed from the cached entry of a lower
//! layer with the same settings when there is one, running only the layers between (the entry's
//! key is the one a direct extraction gives, and so are its features, bit for bit on the CPU).
//! Leaves `features.json` (the first layer; with several, also `features-<layer>.json` each) in
//! its run folder for the later stages.

mod model;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use augment::{AugmentConfig, AugmentSpec};
use clap::{Parser, ValueEnum};
use dataset::{
    BadImagePolicy, BatchOptions, ClassMode, DecodeOptions, Interpolation, ScanOptions, Size,
    SplitIndex,
};
use feature_cache::{
    AugmentationKey, Cache, DatasetKey, EntryRef, ExtractionRecord, FORMAT_VERSION, FeatureKey,
    FileKey, LoadedEntry, Lookup, Origin, SplitPlan,
};
use indicatif::{ProgressBar, ProgressStyle};
use models::{DeviceChoice, Layer, LayerName};
use rayon::prelude::*;
use serde::Serialize;

use crate::model::{FeatureModel, Pending, Precision, Staged};
use models::{Pooling, Preprocessing};

/// Extract VGG16 conv-base features of an image-folder dataset into the shared feature cache
/// (the seed's `conv_base.predict` over each split). Defaults reproduce the seed: 150x150,
/// block5_pool, no pooling, batch 20.
///
/// Example: `extract-features --data data/fashion-mnist-small --weights vgg16.safetensors
/// --out runs/demo/extract --augment-passes 2`
#[derive(Parser, Debug)]
#[command(version, about, long_about)]
struct Args {
    /// Dataset root holding one folder per split, each with one folder per class.
    #[arg(long)]
    data: PathBuf,
    /// Splits to extract.
    #[arg(long, value_delimiter = ',', default_value = "train,validation,test")]
    splits: Vec<String>,
    /// VGG16 conv-base weights (our safetensors, from `cargo xtask weights` or an import).
    #[arg(long)]
    weights: PathBuf,
    /// Layer(s) whose output is the feature (Keras `block4_pool` or torchvision `features.23`);
    /// several, comma-separated, come from one pass, each into its own cache entries.
    #[arg(long, value_delimiter = ',', default_value = "block5_pool")]
    layer: Vec<LayerName>,
    /// Images are resized to SIZE x SIZE.
    #[arg(long, default_value_t = 150)]
    input_size: u32,
    /// Resize interpolation (Keras' default is nearest).
    #[arg(long, value_enum, default_value_t = Resize::Nearest)]
    resize: Resize,
    /// Centre-crop to the target aspect ratio before resizing (instead of stretching).
    #[arg(long)]
    crop: bool,
    /// Override the preprocessing recorded with the weights (caffe, torch or rescale).
    #[arg(long, value_enum)]
    preprocessing: Option<Preprocessing>,
    /// Global pooling of the feature map, as Keras `pooling=` (none keeps [H, W, C] per image,
    /// channels last as Keras stores it; avg and max give [C]).
    #[arg(long, value_enum, default_value_t = Pooling::None)]
    pooling: Pooling,
    /// Numeric precision of the forward pass: bf16 is about twice as fast on CPUs with AVX-512
    /// BF16, at about 1% relative error in the features; autocast (CUDA only) runs the
    /// convolutions in float16 under libtorch's autocast. On CUDA, float32 convolutions use TF32
    /// tensor cores (libtorch's default); NVIDIA_TF32_OVERRIDE=0 in the environment turns that off.
    #[arg(long, value_enum, default_value_t = Precision::F32)]
    precision: Precision,
    #[arg(long, default_value_t = 20)]
    batch_size: usize,
    /// auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    device: DeviceChoice,
    /// On CUDA, let cuDNN time its convolution algorithms for each new input shape and keep the
    /// fastest (costs the first batch of each shape).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    cudnn_benchmark: bool,
    /// Also store this many independently augmented passes of the training split.
    #[arg(long, default_value_t = 0)]
    augment_passes: u32,
    /// Seed of the augmentation draws (pass p uses epoch p of the stream).
    #[arg(long, default_value_t = 0)]
    augment_seed: u64,
    /// Augmentation settings as JSON (Keras ImageDataGenerator argument names); default: the
    /// seed's generator (rotation 40, shifts 0.2, shear 0.2, zoom 0.2, horizontal flip).
    #[arg(long)]
    augment_spec: Option<PathBuf>,
    /// Feature cache root, possibly shared [default: $TRANSFER_KIT_CACHE_DIR, else
    /// ~/.cache/transfer-kit/features].
    #[arg(long)]
    cache_dir: Option<PathBuf>,
    /// Stage folder: config.json, features.json, classes.json, stage.json.
    #[arg(long)]
    out: PathBuf,
    /// Compute a missing entry from the cached entry of a lower layer (same weights, size,
    /// preprocessing, precision, augmentation pass and files, no pooling) when there is one,
    /// running only the layers between; `false` always runs from the images.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    derive: bool,
    /// Skip images that cannot be decoded (each logged), instead of stopping at the first.
    #[arg(long)]
    skip_bad_images: bool,
    /// With --skip-bad-images, fail when more than this fraction of a split is bad.
    #[arg(long, default_value_t = 0.01)]
    max_bad_fraction: f64,
    /// Follow symlinked folders (split, class and subfolders; a loop is an error), as
    /// `dataset check --follow-links`. Symlinked image files are read either way.
    #[arg(long)]
    follow_links: bool,
    /// Compute only the chunks of shard I of N (a Slurm array task, a Kubernetes Indexed Job
    /// pod): the plan's chunks are dealt round-robin, so every chunk is in exactly one of
    /// shards 0..N-1. `auto/N` takes I from SLURM_ARRAY_TASK_ID, else JOB_COMPLETION_INDEX
    /// (N is always given: a resubmitted array task sees SLURM_ARRAY_TASK_COUNT=1). Chunks
    /// already cached are verified and skipped. Writes only `<out>/shards/I-of-N.json`; run
    /// --merge when every shard is done.
    #[arg(long, value_name = "I/N", conflicts_with = "merge")]
    shard: Option<ShardSpec>,
    /// Check that every chunk of the plan is in the cache and verifies, publish the split
    /// indexes and write the stage outputs (features.json, classes.json, config.json,
    /// stage.json) as a single-process run does; copies no feature bytes. Missing chunks are
    /// listed (with --shards, with the shards to rerun) and the exit status is non-zero.
    #[arg(long)]
    merge: bool,
    /// With --merge: the N the shards ran with, so missing chunks name the shard to rerun.
    #[arg(long, requires = "merge", value_parser = clap::value_parser!(u32).range(1..))]
    shards: Option<u32>,
    /// Print the plan as JSON on stdout (`indexes`: the split index keys, `chunks`: every chunk
    /// entry key) and exit, computing and writing nothing: what to fetch from a remote cache
    /// before extracting (`cargo xtask pipeline --remote`).
    #[arg(long, conflicts_with_all = ["shard", "merge"])]
    plan_only: bool,
}

/// `--shard I/N`: this worker's share of the chunks.
#[derive(Debug, Clone, Copy)]
struct Shard {
    index: u32,
    count: u32,
}

/// `--shard` as typed: `I/N` or `auto/N`.
#[derive(Debug, Clone, Copy)]
struct ShardSpec {
    index: Option<u32>,
    count: u32,
}

impl std::str::FromStr for ShardSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (i, n) = s.split_once('/').ok_or("expected I/N (e.g. 3/8) or auto/N")?;
        let count: u32 = n.parse().map_err(|_| format!("N in {s:?} is not a number"))?;
        if count == 0 {
            return Err("N must be at least 1".into());
        }
        let index = match i {
            "auto" => None,
            i => Some(i.parse().map_err(|_| format!("I in {s:?} is not a number or auto"))?),
        };
        Ok(Self { index, count })
    }
}

/// The shard that computes unit `unit` (a chunk, in plan order) of a run split `count` ways:
/// dealt round-robin, so shards differ by at most one chunk and a shard's chunks spread over
/// every split and pass.
fn shard_of(unit: usize, count: u32) -> u32 {
    (unit % count as usize) as u32
}

/// Environment variables `--shard auto/N` reads the shard index from, in order.
const SHARD_INDEX_VARS: [&str; 2] = ["SLURM_ARRAY_TASK_ID", "JOB_COMPLETION_INDEX"];

impl ShardSpec {
    /// The shard index: given, or from the scheduler's environment.
    fn resolve(self) -> Result<Shard> {
        let index = match self.index {
            Some(i) => i,
            None => {
                let (var, value) = SHARD_INDEX_VARS
                    .iter()
                    .find_map(|v| std::env::var(v).ok().map(|value| (*v, value)))
                    .with_context(|| {
                        format!(
                            "--shard auto/{}: neither {} is set (give the index: --shard I/{})",
                            self.count,
                            SHARD_INDEX_VARS.join(" nor "),
                            self.count
                        )
                    })?;
                let index: u32 = value.trim().parse().with_context(|| {
                    format!("--shard auto/{}: {var}={value:?} is not a number", self.count)
                })?;
                if index >= self.count {
                    let n = self.count;
                    bail!(
                        "--shard auto/{n}: {var}={index} is not below {n}: the array's indexes must run from 0 to {}",
                        n - 1
                    );
                }
                index
            }
        };
        if index >= self.count {
            bail!("--shard {index}/{}: the index must be below {}", self.count, self.count);
        }
        Ok(Shard { index, count: self.count })
    }
}

#[derive(Debug, Clone, Copy, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
enum Resize {
    Nearest,
    Bilinear,
}

/// Resolved settings, written to config.json before work starts.
#[derive(Debug, Serialize)]
struct StageConfig {
    data: PathBuf,
    splits: Vec<String>,
    weights: PathBuf,
    weights_sha256: String,
    layers: Vec<String>,
    input_size: u32,
    resize: String,
    preprocessing: String,
    pooling: Pooling,
    precision: Precision,
    batch_size: usize,
    augment_passes: u32,
    augment_seed: u64,
    augment_spec: serde_json::Value,
    cache_dir: PathBuf,
    derive: bool,
    skip_bad_images: bool,
}

/// One split, plain or one augmented pass, planned into chunks for each layer cut (in
/// `FeatureModel::layers` order; every layer's plan has the same chunks, of the same files).
struct Job<'a> {
    split: &'a str,
    index: &'a SplitIndex,
    pass: Option<u32>,
    plans: Vec<SplitPlan>,
}

/// One chunk of a job, the unit of work: its files as a split index of their own (so decoding
/// and batching start at the chunk), and its entry key for each layer.
struct Unit<'a> {
    split: &'a str,
    pass: Option<u32>,
    index: SplitIndex,
    keys: Vec<FeatureKey>,
}

impl<'a> Unit<'a> {
    fn new(job: &Job<'a>, chunk: usize) -> Self {
        let range = job.plans[0].chunks[chunk].range.clone();
        let mut index = job.index.clone();
        index.files = job.index.files[range].to_vec();
        index.omitted = Vec::new();
        Self {
            split: job.split,
            pass: job.pass,
            index,
            keys: job.plans.iter().map(|p| p.chunks[chunk].key.clone()).collect(),
        }
    }
}

#[derive(Default)]
struct Totals {
    /// Chunks this process was given (all of them, or its shard's).
    chunks: usize,
    hits: usize,
    computed: usize,
    derived: usize,
    /// Rows computed from a cached lower layer (`images` counts rows computed from images).
    derived_rows: usize,
    images: usize,
    model: Duration,
    skipped: Vec<String>,
    timings: Vec<EntryTiming>,
}

/// The batch on the device: its labels, and when its submit call started and returned.
struct InFlight {
    pending: Pending,
    labels: Vec<i32>,
    submitted: Instant,
    returned: Instant,
}

/// Where the time of one computed entry went, in the stage summary (`stage.json`).
///
/// Measured with host clocks and device synchronisation (tch exposes no CUDA events): one batch
/// is in flight at a time, so the device has work queued from a batch's submit until the
/// synchronisation that follows it returns (`device_queued_seconds`, an upper bound of its busy
/// time: it includes launch latency, and the device may finish before the host asks); between
/// that return and the next submit it has nothing to do (`device_starved_seconds`, a lower bound
/// of its idle time: decode, augmentation and writing that were not hidden). `host_wait_seconds`
/// is the host blocked in synchronisation: when it is above zero for every batch, the device was
/// the bottleneck. On the CPU the forward pass is synchronous, so queued time is model time and
/// starved time is everything else.
#[derive(Debug, Default, Serialize)]
struct EntryTiming {
    split: String,
    pass: Option<u32>,
    images: usize,
    batches: usize,
    seconds: f64,
    device_queued_seconds: f64,
    device_starved_seconds: f64,
    host_wait_seconds: f64,
    /// Batches whose synchronisation found the device still working (host waited > 0.1 ms).
    device_bound_batches: usize,
    /// From the start to the first batch's rows: start-up, first decode, cuDNN autotuning.
    first_batch_seconds: f64,
    /// Images per second after the first batch (null with one batch).
    steady_images_per_second: Option<f64>,
    #[serde(skip)]
    first_batch_rows: usize,
}

fn main() -> ExitCode {
    // Not `cpu_runtime::init`: flushing denormals could change feature bits under the same cache key.
    cpu_runtime::keep_freed_memory();
    cli_support::main(|| run(Args::parse()))
}

fn run(args: Args) -> Result<()> {
    let started = Instant::now();
    if args.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    let shard = args.shard.map(ShardSpec::resolve).transpose()?;
    // A merge or a plan computes nothing: the weights are read on the CPU, so a merge job
    // given the extraction's `--device cuda` runs without a GPU.
    let device =
        if args.merge || args.plan_only { tch::Device::Cpu } else { args.device.resolve()? };
    if device.is_cuda() {
        tch::Cuda::cudnn_set_benchmark(args.cudnn_benchmark);
    }
    // Scan first: a dataset no stage can train on (the class rule of dataset::classes) stops
    // here, before any weights are loaded or features computed.
    let scan_options = ScanOptions {
        class_mode: ClassMode::Sparse,
        follow_links: args.follow_links,
        ..Default::default()
    };
    let split_names: Vec<&str> = args.splits.iter().map(String::as_str).collect();
    let scanned = dataset::scan_training_splits(&args.data, &split_names, &scan_options)
        .with_context(|| format!("scanning {}", args.data.display()))?;
    let model = FeatureModel::load(
        &args.weights,
        device,
        &args.layer,
        args.preprocessing,
        args.pooling,
        args.precision,
    )?;
    let size = Size::square(args.input_size);
    let row_shapes = model
        .layers()
        .iter()
        .map(|&l| model.row_shape(args.input_size as i64, l, args.pooling))
        .collect::<Result<Vec<_>>>()?;
    let resize = match (args.resize, args.crop) {
        (Resize::Nearest, false) => "nearest",
        (Resize::Bilinear, false) => "bilinear",
        (Resize::Nearest, true) => "nearest+center-crop",
        (Resize::Bilinear, true) => "bilinear+center-crop",
    };
    let augment_config = match &args.augment_spec {
        Some(path) => AugmentConfig::from_file(path)?,
        None => AugmentConfig::new(AugmentSpec::seed_generator())?,
    };
    let augment_json: serde_json::Value = serde_json::from_str(&augment_config.canonical_json())?;

    let cache_dir = args.cache_dir.clone().unwrap_or_else(feature_cache::default_cache_dir);
    let cache = match Cache::open(&cache_dir) {
        Ok(cache) => cache,
        Err(err) => {
            let private = args.out.join("cache");
            tracing::warn!(cache = %cache_dir.display(), %err, fallback = %private.display(), "the feature cache cannot be opened: using a private cache in the run folder");
            Cache::open(&private)
                .with_context(|| format!("opening the private cache {}", private.display()))?
        }
    };
    let removed = cache.clean_leftovers().unwrap_or_default();
    if !removed.is_empty() {
        tracing::info!(count = removed.len(), "removed leftovers of interrupted extractions");
    }
    let config = StageConfig {
        data: args.data.clone(),
        splits: args.splits.clone(),
        weights: args.weights.clone(),
        weights_sha256: model.weights_sha256().to_owned(),
        layers: model.layers().iter().map(|&l| model.layer_name(l).to_owned()).collect(),
        input_size: args.input_size,
        resize: resize.to_owned(),
        preprocessing: model.preprocessing_name(),
        pooling: args.pooling,
        precision: args.precision,
        batch_size: args.batch_size,
        augment_passes: args.augment_passes,
        augment_seed: args.augment_seed,
        augment_spec: augment_json.clone(),
        cache_dir: cache_dir.clone(),
        derive: args.derive,
        skip_bad_images: args.skip_bad_images,
    };
    // A shard leaves the stage folder to the merge (every shard writing it would race).
    if shard.is_none() && !args.plan_only {
        std::fs::create_dir_all(&args.out)
            .with_context(|| format!("creating {}", args.out.display()))?;
        run_folder::write_json(&args.out.join(run_folder::CONFIG_FILE), &config)?;
    }

    // Scan and fingerprint every split first: the keys need every file's content digest.
    let mut indexes = Vec::new();
    for (split, index) in args.splits.iter().zip(scanned) {
        let digests = dataset::digests(&index)?;
        indexes.push((split.as_str(), index, digests));
    }
    let classes = indexes[0].1.classes.clone();
    let base_key = |split: &str,
                    index: &SplitIndex,
                    digests: &[String],
                    pass: Option<u32>,
                    layer: Layer,
                    pooling: Pooling| FeatureKey {
        format_version: FORMAT_VERSION,
        weights_sha256: model.weights_sha256().to_owned(),
        architecture: model.architecture().to_owned(),
        layer: model.layer_name(layer).to_owned(),
        input_size: [args.input_size, args.input_size],
        resize: resize.to_owned(),
        preprocessing: model.preprocessing_name(),
        pooling: pooling.name().to_owned(),
        precision: args.precision.name().to_owned(),
        augmentation: pass.map(|p| AugmentationKey {
            spec: augment_json.clone(),
            seed: args.augment_seed,
            pass: p,
        }),
        dataset: DatasetKey {
            split: split.to_owned(),
            classes: index.classes.clone(),
            files: index
                .files
                .iter()
                .zip(digests)
                .map(|(f, d)| FileKey {
                    path: relative(&f.path, &index.dir),
                    label: f.class as u32,
                    sha256: d.clone(),
                })
                .collect(),
        },
    };
    let keys = |split: &str, index: &SplitIndex, digests: &[String], pass: Option<u32>| {
        model
            .layers()
            .iter()
            .map(|&l| base_key(split, index, digests, pass, l, args.pooling))
            .collect::<Vec<_>>()
    };
    let mut jobs = Vec::new();
    for (split, index, digests) in &indexes {
        let passes = std::iter::once(None)
            .chain((0..if *split == "train" { args.augment_passes } else { 0 }).map(Some));
        for pass in passes {
            let plans: Vec<SplitPlan> =
                keys(split, index, digests, pass).iter().map(SplitPlan::new).collect();
            jobs.push(Job { split, index, pass, plans });
        }
    }
    // Every chunk of every job, in plan order; shard i of n computes units i, i + n, ...
    let units: Vec<(usize, usize)> = jobs
        .iter()
        .enumerate()
        .flat_map(|(j, job)| (0..job.plans[0].chunks.len()).map(move |c| (j, c)))
        .collect();
    if args.plan_only {
        let plans = || jobs.iter().flat_map(|job| &job.plans);
        let plan = serde_json::json!({
            "indexes": plans().map(|p| p.index_key.clone()).collect::<Vec<_>>(),
            "chunks": plans().flat_map(|p| p.chunks.iter().map(|c| c.key.digest())).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&plan)?);
        return Ok(());
    }

    let mut totals = Totals::default();
    let fallback_dir = args.out.join("cache");
    let mut fallback: Option<Cache> = None;
    // What this process knows of each chunk entry, by (job, layer, chunk).
    let mut known: HashMap<(usize, usize, usize), Known> = HashMap::new();
    if !args.merge {
        let mine: Vec<usize> = (0..units.len())
            .filter(|&u| shard.is_none_or(|s| shard_of(u, s.count) == s.index))
            .collect();
        for (j, job) in jobs.iter().enumerate() {
            let chunks: Vec<usize> =
                mine.iter().filter(|&&u| units[u].0 == j).map(|&u| units[u].1).collect();
            if chunks.is_empty() {
                continue;
            }
            let label = match job.pass {
                Some(p) => format!("{} (augmented pass {p})", job.split),
                None => job.split.to_owned(),
            };
            let files: u64 =
                chunks.iter().map(|&c| job.plans[0].chunks[c].range.len() as u64).sum();
            let bar = progress_bar(files, &label);
            for c in chunks {
                let unit = Unit::new(job, c);
                let got = compute_chunk(
                    &args,
                    (&model, size, &augment_config),
                    (&cache, &fallback_dir, &mut fallback, shard.is_some()),
                    &unit,
                    (&bar, &label),
                    &mut totals,
                )?;
                for (l, k) in got.into_iter().enumerate() {
                    known.insert((j, l, c), k);
                }
            }
            bar.finish();
        }
        totals.chunks = mine.len();
    }
    if let Some(shard) = shard {
        let path = args.out.join("shards").join(format!("{}-of-{}.json", shard.index, shard.count));
        std::fs::create_dir_all(path.parent().expect("a file in a folder"))
            .with_context(|| format!("creating {}", path.display()))?;
        let summary = ShardSummary {
            shard: shard.index,
            shards: shard.count,
            chunks: totals.chunks,
            found: totals.hits,
            computed: totals.computed,
            derived: totals.derived,
            images_run: totals.images - totals.derived_rows,
            seconds: started.elapsed().as_secs_f64(),
            cuda_visible_devices: std::env::var("CUDA_VISIBLE_DEVICES").ok(),
            entries: totals.timings,
        };
        run_folder::write_json(&path, &summary)?;
        eprintln!(
            "extract-features: shard {}/{}: {} chunks ({} entries found, {} computed from images, {} from a lower layer) in {:.1}s -> {}",
            shard.index,
            shard.count,
            summary.chunks,
            summary.found,
            summary.computed,
            summary.derived,
            summary.seconds,
            path.display()
        );
        return Ok(());
    }

    // The merge: every chunk of the plan verified (this process's own from memory), then the
    // split indexes published. A missing chunk stops it, naming the shard that computes it.
    let mut missing = Vec::new();
    for (u, &(j, c)) in units.iter().enumerate() {
        let job = &jobs[j];
        for (l, plan) in job.plans.iter().enumerate() {
            if known.contains_key(&(j, l, c)) {
                continue;
            }
            let chunk = &plan.chunks[c];
            match find(&cache, &fallback_dir, &chunk.key)? {
                Some((entry, private)) => {
                    known.insert(
                        (j, l, c),
                        Known { rows: entry.shape()[0], private, origin: Origin::Found },
                    );
                    totals.hits += 1;
                    totals.skipped.extend(
                        entry
                            .manifest
                            .skipped
                            .iter()
                            .map(|p| job.index.dir.join(p).display().to_string()),
                    );
                }
                None => missing.push((u, j, l, c)),
            }
        }
    }
    if !missing.is_empty() {
        for &(u, j, l, c) in &missing {
            let job = &jobs[j];
            let chunk = &job.plans[l].chunks[c];
            let files = &chunk.key.dataset.files;
            let pass = job.pass.map_or(String::new(), |p| format!(" augmented pass {p}"));
            let shard =
                args.shards.map_or(String::new(), |n| format!(", shard {}/{n}", shard_of(u, n)));
            eprintln!(
                "missing: {}{pass} {} chunk {} of {} ({} files, {} .. {}): key {}{shard}",
                job.split,
                model.layer_name(model.layers()[l]),
                c + 1,
                job.plans[l].chunks.len(),
                files.len(),
                files.first().map_or("", |f| f.path.as_str()),
                files.last().map_or("", |f| f.path.as_str()),
                chunk.key.digest(),
            );
        }
        let rerun = match args.shards {
            Some(n) => {
                let ids: std::collections::BTreeSet<u32> =
                    missing.iter().map(|&(u, ..)| shard_of(u, n)).collect();
                let ids: Vec<String> = ids.iter().map(u32::to_string).collect();
                format!("rerun shards: {} (of --shard I/{n})", ids.join(","))
            }
            None => "rerun the shards that compute them (give --shards N to name them)".to_owned(),
        };
        bail!(
            "{} of the plan's {} chunk entries are missing from {}: {rerun}",
            missing.len(),
            units.len() * model.layers().len(),
            cache.root().display()
        );
    }
    // Per layer, in `model.layers()` order: each job's split index.
    let mut entries: Vec<Vec<EntryRef>> = vec![Vec::new(); model.layers().len()];
    for (j, job) in jobs.iter().enumerate() {
        for (l, plan) in job.plans.iter().enumerate() {
            let chunks: Vec<&Known> = (0..plan.chunks.len()).map(|c| &known[&(j, l, c)]).collect();
            let rows: Vec<u64> = chunks.iter().map(|k| k.rows).collect();
            let skipped: u64 =
                plan.chunks.iter().zip(&rows).map(|(c, r)| c.range.len() as u64 - r).sum();
            if skipped > 0 && !args.skip_bad_images {
                bail!(
                    "{}: {skipped} images were skipped as bad when its chunks were computed, but this run does not skip bad images: merge with --skip-bad-images as the shards ran, or fix the images and recompute",
                    job.index.dir.display()
                );
            }
            if skipped > 0 && !skips_allowed(&args, skipped as usize, job.index.files.len()) {
                bail!(
                    "{}: {skipped} of {} images were skipped as bad, more than --max-bad-fraction {} allows",
                    job.index.dir.display(),
                    job.index.files.len(),
                    args.max_bad_fraction
                );
            }
            // The index goes where its chunks are: the private cache if any chunk is there.
            let private = chunks.iter().any(|k| k.private);
            let root = if private { fallback_dir.as_path() } else { cache.root() };
            feature_cache::write_index(root, &plan.index(&rows, tool()))?;
            // A derived split names the lower layer's split index (the chunks name its chunks).
            let origin = match aggregate_origin(chunks.iter().map(|k| &k.origin)) {
                Origin::Derived { from_layer, .. } => Origin::Derived {
                    from_key: plan.at_layer(&from_layer, Pooling::None.name()).index_key,
                    from_layer,
                },
                origin => origin,
            };
            entries[l].push(EntryRef {
                split: job.split.to_owned(),
                pass: job.pass,
                key: plan.index_key.clone(),
                rows: rows.iter().sum(),
                cache_dir: private.then(|| fallback_dir.clone()),
                origin: Some(origin),
            });
        }
    }

    // One record per layer: `features.json` for the first (what later stages read by default),
    // and with several layers `features-<layer>.json` for each.
    let mut records = Vec::new();
    for ((&layer, row_shape), layer_entries) in model.layers().iter().zip(&row_shapes).zip(entries)
    {
        records.push(ExtractionRecord {
            cache_dir: cache.root().to_owned(),
            classes: classes.clone(),
            feature_shape: row_shape.clone(),
            layer: model.layer_name(layer).to_owned(),
            weights_sha256: model.weights_sha256().to_owned(),
            entries: layer_entries,
        });
    }
    let mut record_files = vec![feature_cache::EXTRACTION_FILE.to_owned()];
    run_folder::write_json(&args.out.join(feature_cache::EXTRACTION_FILE), &records[0])?;
    if records.len() > 1 {
        for record in &records {
            let file = format!("features-{}.json", record.layer);
            run_folder::write_json(&args.out.join(&file), record)?;
            record_files.push(file);
        }
    }
    indexes[0].1.class_map().write(&args.out)?;
    let wall = started.elapsed().as_secs_f64();
    let model_share = if totals.images > 0 { totals.model.as_secs_f64() / wall } else { 0.0 };
    let summary = serde_json::json!({
        "device": format!("{device:?}"),
        // Chunk entries found in the cache, computed from the images, and computed from a
        // cached lower layer (only the layers between run); the plan's chunks (each holds every
        // layer's entry).
        "chunks": units.len(),
        "cache_hits": totals.hits,
        "computed": totals.computed,
        "derived": totals.derived,
        // Rows run through the network: from images, and from a cached lower layer's features.
        "images_run": totals.images - totals.derived_rows,
        "rows_derived": totals.derived_rows,
        "images_per_second": if totals.images > 0 { totals.images as f64 / wall } else { 0.0 },
        "model_time_fraction": model_share,
        "skipped": totals.skipped,
        "peak_rss_mb": cli_support::peak_rss_mb(),
        "feature_shape": row_shapes[0],
        "layers": records.iter().map(|r| serde_json::json!({ "layer": r.layer, "feature_shape": r.feature_shape })).collect::<Vec<_>>(),
        "precision": args.precision.name(),
        "batch_size": args.batch_size,
        "cudnn_benchmark": device.is_cuda().then_some(args.cudnn_benchmark),
        // TF32 is libtorch's default for float32 convolutions on CUDA; NVIDIA's libraries honour
        // this variable (0 = off), which is how the GPU check compares both.
        "nvidia_tf32_override": std::env::var("NVIDIA_TF32_OVERRIDE").ok(),
        "timing_method": "host clocks around device synchronisation, one batch in flight",
        "entries": totals.timings,
    });
    // Keys of the first layer as before (`entry:<split>:<pass>`); other layers' carry their name.
    let inputs: BTreeMap<String, String> =
        BTreeMap::from([("weights".to_owned(), model.weights_sha256().to_owned())])
            .into_iter()
            .chain(records.iter().enumerate().flat_map(|(i, r)| {
                r.entries.iter().map(move |e| {
                    let pass = e.pass.map_or("plain".to_owned(), |p| format!("pass{p}"));
                    let name = if i == 0 {
                        format!("entry:{}:{pass}", e.split)
                    } else {
                        format!("entry:{}:{}:{pass}", r.layer, e.split)
                    };
                    (name, e.key.clone())
                })
            }))
            .collect();
    let record_files: Vec<&str> =
        record_files.iter().map(String::as_str).chain([dataset::CLASS_MAP_FILE]).collect();
    run_folder::StageRecord::write(
        &args.out,
        "extract-features",
        run_folder::json_sha256(&config),
        inputs,
        &record_files,
        wall,
        summary,
    )?;
    eprintln!(
        "extract-features: {} splits in {} chunk entries ({} from cache, {} computed from images, {} from a lower layer; {} images and {} lower-layer rows run at {:.1} rows/s, model {:.0}% of wall time) in {wall:.1}s -> {}",
        jobs.len() * model.layers().len(),
        units.len() * model.layers().len(),
        totals.hits,
        totals.computed,
        totals.derived,
        totals.images - totals.derived_rows,
        totals.derived_rows,
        if totals.images > 0 { totals.images as f64 / wall } else { 0.0 },
        100.0 * model_share,
        args.out.display()
    );
    Ok(())
}

fn tool() -> &'static str {
    concat!("extract-features ", env!("CARGO_PKG_VERSION"))
}

fn relative(path: &Path, root: &Path) -> String {
    path.strip_prefix(root).unwrap_or(path).to_string_lossy().replace('\\', "/")
}

/// The verified entry of `key` in the shared cache or, failing that, in the run folder's private
/// cache (`true`); `None` when neither has it (a corrupt one is removed, so it is recomputed).
fn find(
    cache: &Cache,
    fallback_dir: &Path,
    key: &FeatureKey,
) -> Result<Option<(LoadedEntry, bool)>> {
    if let Lookup::Hit(entry) = cache.lookup(key)? {
        return Ok(Some((*entry, false)));
    }
    if fallback_dir.is_dir()
        && let Lookup::Hit(entry) = Cache::open(fallback_dir)?.lookup(key)?
    {
        return Ok(Some((*entry, true)));
    }
    Ok(None)
}

/// A chunk entry the merge will list: its rows, whether it lives in the private cache, and
/// how this process got it.
struct Known {
    rows: u64,
    private: bool,
    origin: Origin,
}

/// What a shard run leaves in `<out>/shards/I-of-N.json` (the merge writes the stage outputs).
#[derive(Serialize)]
struct ShardSummary {
    shard: u32,
    shards: u32,
    /// Chunks assigned to this shard (each computes every layer of one chunk).
    chunks: usize,
    /// Chunk entries found in the cache (verified, no compute), computed from the images, and
    /// computed from a cached lower layer.
    found: usize,
    computed: usize,
    derived: usize,
    images_run: usize,
    seconds: f64,
    /// The device the scheduler bound this task to (Slurm `--gres=gpu:1`), as seen here.
    cuda_visible_devices: Option<String>,
    entries: Vec<EntryTiming>,
}

/// A progress bar of `total` images labelled `label` (hidden without a terminal; then the
/// loop logs every ~10%).
fn progress_bar(total: u64, label: &str) -> ProgressBar {
    let bar = ProgressBar::new(total).with_message(label.to_owned());
    bar.set_style(
        ProgressStyle::with_template("{msg:>28} [{bar:30}] {pos}/{len} {per_sec} eta {eta}")
            .expect("static template")
            .progress_chars("=> "),
    );
    bar
}

/// How a split index's chunks came to this run, as one [`Origin`]: all found, else derived
/// (naming a source) when any chunk was, else computed from the images.
fn aggregate_origin<'a>(origins: impl Iterator<Item = &'a Origin>) -> Origin {
    let mut result = Origin::Found;
    for origin in origins {
        match (origin, &result) {
            (Origin::Derived { .. }, Origin::Found | Origin::Images) => result = origin.clone(),
            (Origin::Images, Origin::Found) => result = Origin::Images,
            _ => {}
        }
    }
    result
}

/// Finds or computes every layer's entry of one chunk: verified cache hits first; the missing
/// layers from the highest lower layer's cached entry of the same chunk (`derive`) when there is
/// one, else from the images (`extract`), in one pass. In a sharded run (`shared_only`) a cache
/// that cannot be written is an error, since every shard and the merge must meet in one cache.
fn compute_chunk(
    args: &Args,
    (model, size, augment_config): (&FeatureModel, Size, &AugmentConfig),
    (cache, fallback_dir, fallback, shared_only): (&Cache, &Path, &mut Option<Cache>, bool),
    unit: &Unit<'_>,
    progress: (&ProgressBar, &str),
    totals: &mut Totals,
) -> Result<Vec<Known>> {
    let label = progress.1;
    let files = unit.index.files.len();
    let mut got: Vec<Option<Known>> = (0..unit.keys.len()).map(|_| None).collect();
    for (i, key) in unit.keys.iter().enumerate() {
        let Some((entry, private)) = find(cache, fallback_dir, key)? else { continue };
        if !entry.manifest.skipped.is_empty() && !args.skip_bad_images {
            tracing::info!(split = %label, layer = %key.layer, skipped = entry.manifest.skipped.len(), "cached chunk skipped images this run does not skip (no --skip-bad-images): recomputing");
            continue;
        }
        totals.skipped.extend(
            entry.manifest.skipped.iter().map(|p| unit.index.dir.join(p).display().to_string()),
        );
        totals.hits += 1;
        tracing::debug!(split = %label, layer = %key.layer, key = %key.digest(), "cache hit");
        got[i] = Some(Known { rows: entry.shape()[0], private, origin: Origin::Found });
    }
    let missing: Vec<usize> = (0..got.len()).filter(|&i| got[i].is_none()).collect();
    if missing.is_empty() {
        progress.0.inc(files as u64);
        return Ok(got.into_iter().map(|k| k.expect("every layer found")).collect());
    }
    let keep: Vec<Layer> = missing.iter().map(|&i| model.layers()[i]).collect();
    let lowest = *keep.iter().min().expect("missing is not empty");
    // The highest lower layer whose unpooled entry of this chunk is cached.
    let mut source = None;
    if args.derive {
        for below in model.layers_below(lowest) {
            let mut key = unit.keys[0].clone();
            key.layer = model.layer_name(below).to_owned();
            key.pooling = Pooling::None.name().to_owned();
            if let Some((entry, _)) = find(cache, fallback_dir, &key)? {
                if !entry.manifest.skipped.is_empty() && !args.skip_bad_images {
                    continue;
                }
                source = Some((below, key.digest(), entry));
                break;
            }
        }
    }
    let mut writers = Vec::new();
    let mut private = Vec::new();
    for &i in &missing {
        let row_shape = model.row_shape(args.input_size as i64, model.layers()[i], args.pooling)?;
        match cache.writer(unit.keys[i].clone(), tool(), files as u64, &row_shape) {
            Ok(w) => {
                writers.push(w);
                private.push(false);
            }
            Err(err) if shared_only => {
                return Err(anyhow::Error::new(err).context(format!(
                    "the feature cache {} cannot be written: a sharded run needs the one cache every shard and the merge share",
                    cache.root().display()
                )));
            }
            Err(err) => {
                tracing::warn!(cache = %cache.root().display(), %err, fallback = %fallback_dir.display(), "the feature cache cannot be written: using a private cache in the run folder");
                let fb = match fallback {
                    Some(fb) => fb,
                    None => fallback.insert(Cache::open(fallback_dir)?),
                };
                writers.push(fb.writer(unit.keys[i].clone(), tool(), files as u64, &row_shape)?);
                private.push(true);
            }
        }
    }
    let (rows, origin) = match source {
        Some((from, from_key, entry)) => {
            let from_layer = model.layer_name(from).to_owned();
            tracing::debug!(split = %label, from = %from_layer, key = %from_key, "computing from the cached lower layer");
            for w in &mut writers {
                w.derived_from(from_key.clone());
            }
            let rows = derive(args, model, unit, &entry, from, &keep, writers, progress, totals)?;
            totals.derived += missing.len();
            (rows, Origin::Derived { from_key, from_layer })
        }
        None => {
            let rows = extract(
                args,
                (model, size, augment_config),
                unit,
                &keep,
                writers,
                progress,
                totals,
            )?;
            totals.computed += missing.len();
            (rows, Origin::Images)
        }
    };
    for (&i, private) in missing.iter().zip(private) {
        got[i] = Some(Known { rows, private, origin: origin.clone() });
    }
    Ok(got.into_iter().map(|k| k.expect("every layer found or computed")).collect())
}

/// Runs one chunk's images (augmented for an augmented pass) through the model in one pass per
/// batch, the output of each layer of `keep` into the writer at the same position; returns the
/// rows written. An augmented image's draw is keyed by its identity (path and content digest,
/// [`feature_cache::FileKey::identity`]), so it does not depend on where its chunk sits.
fn extract(
    args: &Args,
    (model, size, augment_config): (&FeatureModel, Size, &AugmentConfig),
    unit: &Unit<'_>,
    keep: &[Layer],
    writers: Vec<feature_cache::EntryWriter>,
    progress: (&ProgressBar, &str),
    totals: &mut Totals,
) -> Result<u64> {
    let label = progress.1;
    let decode = DecodeOptions {
        target_size: Some(size),
        interpolation: match args.resize {
            Resize::Nearest => Interpolation::Nearest,
            Resize::Bilinear => Interpolation::Bilinear,
        },
        crop_to_aspect_ratio: args.crop,
        ..Default::default()
    };
    let options = BatchOptions {
        batch_size: args.batch_size,
        shuffle: None,
        prefetch: 2,
        // The fraction is checked over the whole split when the split index is written.
        on_bad_image: if args.skip_bad_images {
            BadImagePolicy::Skip { max_fraction: 1.0 }
        } else {
            BadImagePolicy::FailFast
        },
        ..Default::default()
    };
    let (h, w) = (size.height as usize, size.width as usize);
    let mut batches = dataset::batches(&unit.index, &decode, &options, 0)?;
    let files = &unit.keys[0].dataset.files;
    // Decode (on the prefetch threads), augmentation and staging overlap the batch in flight.
    // Augmented pixels stay floats, as Keras hands them to the network (rounding to u8 would
    // move each by up to 0.5).
    let staged = batches.by_ref().map(|batch| -> Result<(Staged, Vec<i32>)> {
        let batch = batch?;
        let labels = batch.classes.iter().map(|&c| c as i32).collect();
        let Some(pass) = unit.pass else {
            return Ok((model.stage(&batch.images, batch.len(), h, w)?, labels));
        };
        let image_len = h * w * 3;
        let mut pixels = vec![0f32; batch.images.len()];
        pixels
            .par_chunks_mut(image_len)
            .zip(batch.images.par_chunks(image_len))
            .zip(batch.indices.par_iter())
            .try_for_each(|((dst, src), &i)| {
                augment_config
                    .sample(args.augment_seed, pass as u64, files[i].identity())
                    .apply_u8_to_f32(src, h, w, 3, dst)
            })?;
        Ok((model.stage_f32(&pixels, batch.len(), h, w)?, labels))
    });
    let (mut writers, rows) =
        pump(model, staged, |s| model.submit(s, keep), writers, unit, progress.0, totals)?;
    for skipped in batches.skipped() {
        tracing::warn!(path = %skipped.path.display(), reason = %skipped.reason, "skipped a bad image");
        for writer in &mut writers {
            writer.skip(relative(&skipped.path, &unit.index.dir));
        }
        totals.skipped.push(skipped.path.display().to_string());
    }
    if !batches.skipped().is_empty() {
        eprintln!(
            "{label}: skipped {} of a chunk of {}",
            batches.skipped().len(),
            unit.index.files.len()
        );
    }
    // The key holds each file's digest from the plan, taken before decoding; a file replaced
    // since (a dataset updated during a long sharded run) would put its new features under its
    // old key, in every teammate's cache. So the files are hashed again before publishing.
    let now = dataset::digests(&unit.index)?;
    for (file, digest) in unit.keys[0].dataset.files.iter().zip(&now) {
        if &file.sha256 != digest {
            bail!(
                "{}: changed while it was being extracted (sha256 {} when planned, {digest} now): nothing of its chunk was published; rerun extract-features",
                unit.index.dir.join(&file.path).display(),
                file.sha256
            );
        }
    }
    for writer in writers {
        writer.finish()?;
    }
    Ok(rows)
}

/// Runs one chunk from `source`, the verified cached entry of the lower layer `from` for the
/// same images and pass, through the layers above it up to each layer of `keep`. The rows are batched
/// exactly as [`extract`] batches the images (`--batch-size` files at a time, less the images the
/// source skipped as bad), so the arithmetic, and on the CPU every bit, is the direct pass's;
/// the source's skipped images are skipped here too. Returns the rows written.
#[allow(clippy::too_many_arguments)]
fn derive(
    args: &Args,
    model: &FeatureModel,
    unit: &Unit<'_>,
    source: &LoadedEntry,
    from: Layer,
    keep: &[Layer],
    writers: Vec<feature_cache::EntryWriter>,
    progress: (&ProgressBar, &str),
    totals: &mut Totals,
) -> Result<u64> {
    let row_shape = &source.shape()[1..];
    let row_len = row_shape.iter().product::<u64>() as usize;
    let sizes = batch_rows(&unit.index, &source.manifest.skipped, args.batch_size);
    let mut start = 0;
    let staged = sizes.into_iter().map(|n| -> Result<(Staged, Vec<i32>)> {
        let (rows, labels) = (
            &source.features[start * row_len..(start + n) * row_len],
            &source.labels[start..start + n],
        );
        start += n;
        Ok((model.stage_features(rows, n, row_shape)?, labels.to_vec()))
    });
    let (mut writers, rows) = pump(
        model,
        staged,
        |s| model.submit_from(s, from, keep),
        writers,
        unit,
        progress.0,
        totals,
    )?;
    for skipped in &source.manifest.skipped {
        for writer in &mut writers {
            writer.skip(skipped.clone());
        }
        totals.skipped.push(unit.index.dir.join(skipped).display().to_string());
    }
    for writer in writers {
        writer.finish()?;
    }
    totals.derived_rows += rows as usize;
    Ok(rows)
}

/// Rows per batch of a direct extraction of `index`: each batch is `batch_size` files in order,
/// less those in `skipped` (paths relative to the split folder); batches left empty are dropped.
fn batch_rows(index: &SplitIndex, skipped: &[String], batch_size: usize) -> Vec<usize> {
    let skipped: std::collections::HashSet<&str> = skipped.iter().map(String::as_str).collect();
    index
        .files
        .chunks(batch_size)
        .map(|files| {
            files
                .iter()
                .filter(|f| !skipped.contains(relative(&f.path, &index.dir).as_str()))
                .count()
        })
        .filter(|&n| n > 0)
        .collect()
}

/// Whether an entry with these skipped images may stand in for a direct extraction under this
/// run's bad-image policy: a direct run without `--skip-bad-images` stops at a bad image, and one
/// with it fails past `--max-bad-fraction`.
fn skips_allowed(args: &Args, skipped: usize, files: usize) -> bool {
    skipped == 0 || (args.skip_bad_images && skipped as f64 <= args.max_bad_fraction * files as f64)
}

/// The batch loop shared by [`extract`] and [`derive`]: keeps one batch on the device, staging
/// batch k+1 (`staged` does that work) while batch k runs, then synchronises, submits k+1 and
/// hands batch k's rows to a writer thread, which appends the i-th kept layer's rows to
/// `writers[i]`. Records the job's [`EntryTiming`] in `totals`; returns the writers (not yet
/// finished) and the rows written to each.
fn pump(
    model: &FeatureModel,
    staged: impl Iterator<Item = Result<(Staged, Vec<i32>)>>,
    submit: impl Fn(Staged) -> Result<Pending>,
    writers: Vec<feature_cache::EntryWriter>,
    unit: &Unit<'_>,
    bar: &ProgressBar,
    totals: &mut Totals,
) -> Result<(Vec<feature_cache::EntryWriter>, u64)> {
    let total = bar.length().unwrap_or(0);
    let step = (total / 10).max(1);
    let mut timing =
        EntryTiming { split: unit.split.to_owned(), pass: unit.pass, ..Default::default() };
    let loop_start = Instant::now();
    // Ends the batch in flight: waits for the device, accounts its time, hands back its rows.
    let settle = |in_flight: Option<InFlight>, timing: &mut EntryTiming| {
        in_flight.map(|InFlight { pending, labels, submitted, returned }| {
            let asked = Instant::now();
            model.wait();
            let done = Instant::now();
            let waited = done - asked;
            timing.host_wait_seconds += waited.as_secs_f64();
            // On the CPU the work happened inside submit; on CUDA it ran until the wait returned.
            let busy_until = if model.device().is_cuda() { done } else { returned };
            timing.device_queued_seconds += (busy_until - submitted).as_secs_f64();
            timing.device_bound_batches += usize::from(waited > Duration::from_micros(100));
            if timing.batches == 0 {
                timing.first_batch_seconds = (busy_until - loop_start).as_secs_f64();
                timing.first_batch_rows = pending.len();
            }
            timing.batches += 1;
            (pending, labels)
        })
    };
    // Finished batches go to a writer thread (copy out of pinned memory, hashing, the file), so
    // that work overlaps the next batch instead of delaying its submit; the channel is bounded,
    // so a slow disk slows the loop rather than filling memory.
    let (writers, rows) =
        std::thread::scope(|scope| -> Result<(Vec<feature_cache::EntryWriter>, u64)> {
            let (to_writer, finished) = std::sync::mpsc::sync_channel::<(Pending, Vec<i32>)>(2);
            let mut writers = writers;
            let write_thread =
                scope.spawn(move || -> Result<(Vec<feature_cache::EntryWriter>, u64)> {
                    let mut rows = 0u64;
                    for (pending, labels) in finished {
                        for (i, writer) in writers.iter_mut().enumerate() {
                            writer.append(&pending.rows(i)?, &labels)?;
                        }
                        let n = pending.len() as u64;
                        rows += n;
                        bar.inc(n);
                        // Without a terminal (the pipeline logs to a file) the bar is hidden: log
                        // every ~10% of the split (or of this shard's share of it).
                        let done = bar.position();
                        if bar.is_hidden() && (done / step != (done - n) / step || done == total) {
                            tracing::info!(split = %bar.message(), done, total, "extracting");
                        }
                    }
                    Ok((writers, rows))
                });
            let run_loop = || -> Result<()> {
                let mut in_flight: Option<InFlight> = None;
                for next in staged {
                    let (staged, labels) = next?;
                    let finished = settle(in_flight.take(), &mut timing);
                    let submitted = Instant::now();
                    let pending = submit(staged)?;
                    in_flight =
                        Some(InFlight { pending, labels, submitted, returned: Instant::now() });
                    // A closed channel means the writer failed: its error comes from the join below.
                    if finished.is_some_and(|f| to_writer.send(f).is_err()) {
                        return Ok(());
                    }
                }
                if let Some(f) = settle(in_flight.take(), &mut timing) {
                    let _ = to_writer.send(f);
                }
                Ok(())
            };
            let looped = run_loop();
            drop(to_writer);
            let written = write_thread
                .join()
                .map_err(|_| anyhow::anyhow!("the feature writer thread panicked"))?;
            looped?;
            written
        })?;
    timing.images = rows as usize;
    timing.seconds = loop_start.elapsed().as_secs_f64();
    timing.device_starved_seconds = (timing.seconds - timing.device_queued_seconds).max(0.0);
    if timing.batches > 1 {
        let rest = timing.seconds - timing.first_batch_seconds;
        timing.steady_images_per_second =
            (rest > 0.0).then(|| (rows as usize - timing.first_batch_rows) as f64 / rest);
    }
    totals.model += Duration::from_secs_f64(timing.device_queued_seconds);
    totals.images += rows as usize;
    totals.timings.push(timing);
    Ok((writers, rows))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every chunk is computed by exactly one shard of N, whatever N, and the shares are even.
    #[test]
    fn every_chunk_is_assigned_exactly_once() {
        for units in [1usize, 7, 40] {
            for n in 1..=9u32 {
                let mut count = vec![0usize; units];
                let mut per_shard = vec![0usize; n as usize];
                for i in 0..n {
                    for (u, c) in count.iter_mut().enumerate() {
                        if shard_of(u, n) == i {
                            *c += 1;
                            per_shard[i as usize] += 1;
                        }
                    }
                }
                assert!(count.iter().all(|&c| c == 1), "{units} chunks, {n} shards: {count:?}");
                let (lo, hi) = (per_shard.iter().min(), per_shard.iter().max());
                assert!(hi.unwrap() - lo.unwrap() <= 1, "{per_shard:?}");
            }
        }
    }

    #[test]
    fn shard_specs_parse() {
        let spec: ShardSpec = "3/8".parse().unwrap();
        assert_eq!((spec.index, spec.count), (Some(3), 8));
        let spec: ShardSpec = "auto/4".parse().unwrap();
        assert_eq!((spec.index, spec.count), (None, 4));
        for bad in ["3", "3/0", "a/2", "-1/2", "1/x"] {
            assert!(bad.parse::<ShardSpec>().is_err(), "{bad}");
        }
    }
}
