//! `extract-features`: the feature-extraction stage. Runs each dataset split (and K augmented
//! passes of the training split) through the frozen VGG16 conv base and stores the features in
//! the content-addressed cache; entries already cached (by anyone sharing the cache) are reused
//! after verification. Leaves `features.json` in its run folder for the later stages.

mod model;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use augment::{AugmentConfig, AugmentSpec};
use clap::{Parser, ValueEnum};
use dataset::{BadImagePolicy, BatchOptions, ClassMode, DecodeOptions, Interpolation, ScanOptions, Size, SplitIndex};
use feature_cache::{AugmentationKey, Cache, DatasetKey, EntryRef, ExtractionRecord, FORMAT_VERSION, FeatureKey, FileKey, Lookup};
use indicatif::{ProgressBar, ProgressStyle};
use models::{DeviceChoice, LayerName};
use rayon::prelude::*;
use serde::Serialize;

use crate::model::{FeatureModel, Pending, Precision};
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
    /// Layer whose output is the feature (Keras `block4_pool` or torchvision `features.23`).
    #[arg(long, default_value = "block5_pool")]
    layer: LayerName,
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
    /// Global pooling of the feature map, as Keras `pooling=` (none keeps [H, W, C]).
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
    /// Skip images that cannot be decoded (each logged), instead of stopping at the first.
    #[arg(long)]
    skip_bad_images: bool,
    /// With --skip-bad-images, fail when more than this fraction of a split is bad.
    #[arg(long, default_value_t = 0.01)]
    max_bad_fraction: f64,
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
    layer: String,
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
    skip_bad_images: bool,
}

/// One unit of work: a split, plain or one augmented pass.
struct Job<'a> {
    split: &'a str,
    index: &'a SplitIndex,
    key: FeatureKey,
    pass: Option<u32>,
}

#[derive(Default)]
struct Totals {
    hits: usize,
    computed: usize,
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
    let device = args.device.resolve()?;
    if device.is_cuda() {
        tch::Cuda::cudnn_set_benchmark(args.cudnn_benchmark);
    }
    let model = FeatureModel::load(&args.weights, device, &args.layer, args.preprocessing, args.pooling, args.precision)?;
    let size = Size::square(args.input_size);
    let row_shape = model.row_shape(args.input_size as i64)?;
    let resize = match (args.resize, args.crop) {
        (Resize::Nearest, false) => "nearest",
        (Resize::Bilinear, false) => "bilinear",
        (Resize::Nearest, true) => "nearest+center-crop",
        (Resize::Bilinear, true) => "bilinear+center-crop",
    };
    let augment_config = match &args.augment_spec {
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            AugmentConfig::new(AugmentSpec::from_json(&text).with_context(|| format!("{}", path.display()))?)
                .with_context(|| format!("augmentation settings in {}", path.display()))?
        }
        None => AugmentConfig::new(AugmentSpec::seed_generator())?,
    };
    let augment_json: serde_json::Value = serde_json::from_str(&augment_config.canonical_json())?;

    let cache_dir = args.cache_dir.clone().unwrap_or_else(feature_cache::default_cache_dir);
    let cache = match Cache::open(&cache_dir) {
        Ok(cache) => cache,
        Err(err) => {
            let private = args.out.join("cache");
            tracing::warn!(cache = %cache_dir.display(), %err, fallback = %private.display(), "the feature cache cannot be opened: using a private cache in the run folder");
            Cache::open(&private).with_context(|| format!("opening the private cache {}", private.display()))?
        }
    };
    let removed = cache.clean_leftovers().unwrap_or_default();
    if !removed.is_empty() {
        tracing::info!(count = removed.len(), "removed leftovers of interrupted extractions");
    }
    std::fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    let config = StageConfig {
        data: args.data.clone(),
        splits: args.splits.clone(),
        weights: args.weights.clone(),
        weights_sha256: model.weights_sha256().to_owned(),
        layer: model.layer_name().to_owned(),
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
        skip_bad_images: args.skip_bad_images,
    };
    run_folder::write_json(&args.out.join(run_folder::CONFIG_FILE), &config)?;

    // Scan and fingerprint every split first: the keys need every file's content digest.
    let mut indexes = Vec::new();
    for split in &args.splits {
        let index = dataset::scan(&args.data, split, &ScanOptions { class_mode: ClassMode::Sparse, ..Default::default() })
            .with_context(|| format!("scanning split {split} of {}", args.data.display()))?;
        let digests = dataset::digests(&index)?;
        indexes.push((split.as_str(), index, digests));
    }
    let classes = indexes[0].1.classes.clone();
    for (split, index, _) in &indexes {
        if index.classes != classes {
            bail!("split {split} has classes {:?}, but {} has {:?}", index.classes, indexes[0].0, classes);
        }
    }
    let base_key = |split: &str, index: &SplitIndex, digests: &[String], pass: Option<u32>| FeatureKey {
        format_version: FORMAT_VERSION,
        weights_sha256: model.weights_sha256().to_owned(),
        architecture: model.architecture().to_owned(),
        layer: model.layer_name().to_owned(),
        input_size: [args.input_size, args.input_size],
        resize: resize.to_owned(),
        preprocessing: model.preprocessing_name(),
        pooling: args.pooling.name().to_owned(),
        precision: args.precision.name().to_owned(),
        augmentation: pass.map(|p| AugmentationKey { spec: augment_json.clone(), seed: args.augment_seed, pass: p }),
        dataset: DatasetKey {
            split: split.to_owned(),
            classes: index.classes.clone(),
            files: index
                .files
                .iter()
                .zip(digests)
                .map(|(f, d)| FileKey { path: relative(&f.path, &index.dir), label: f.class as u32, sha256: d.clone() })
                .collect(),
        },
    };
    let mut jobs = Vec::new();
    for (split, index, digests) in &indexes {
        jobs.push(Job { split, index, key: base_key(split, index, digests, None), pass: None });
        if *split == "train" {
            for p in 0..args.augment_passes {
                jobs.push(Job { split, index, key: base_key(split, index, digests, Some(p)), pass: Some(p) });
            }
        }
    }

    let mut totals = Totals::default();
    let mut fallback: Option<Cache> = None;
    let mut entries = Vec::new();
    for job in &jobs {
        let key = job.key.digest();
        let label = match job.pass {
            Some(p) => format!("{} (augmented pass {p})", job.split),
            None => job.split.to_owned(),
        };
        let fallback_dir = args.out.join("cache");
        let mut lookup = cache.lookup(&job.key)?;
        if !matches!(lookup, Lookup::Hit(_)) && fallback_dir.is_dir() {
            lookup = Cache::open(&fallback_dir)?.lookup(&job.key)?;
            if matches!(lookup, Lookup::Hit(_)) {
                fallback.get_or_insert(Cache::open(&fallback_dir)?);
            }
        }
        let (rows, entry_cache) = match lookup {
            Lookup::Hit(entry) => {
                totals.hits += 1;
                tracing::info!(split = %label, key = %key, "cache hit");
                let in_fallback = !cache.entry_dir(&key).is_dir();
                (entry.shape()[0], in_fallback.then(|| fallback_dir.clone()))
            }
            Lookup::Miss | Lookup::Corrupt(_) => {
                let rows_announced = job.index.files.len() as u64;
                let (writer, in_fallback) = match cache.writer(job.key.clone(), tool(), rows_announced, &row_shape) {
                    Ok(w) => (w, false),
                    Err(err) => {
                        tracing::warn!(cache = %cache_dir.display(), %err, fallback = %fallback_dir.display(), "the feature cache cannot be written: using a private cache in the run folder");
                        let fb = fallback.get_or_insert(Cache::open(&fallback_dir)?);
                        (fb.writer(job.key.clone(), tool(), rows_announced, &row_shape)?, true)
                    }
                };
                let rows = extract(&args, &model, job, size, &augment_config, writer, &label, &mut totals)?;
                totals.computed += 1;
                (rows, in_fallback.then(|| fallback_dir.clone()))
            }
        };
        entries.push(EntryRef { split: job.split.to_owned(), pass: job.pass, key, rows, cache_dir: entry_cache });
    }

    let record = ExtractionRecord {
        cache_dir: cache.root().to_owned(),
        classes: classes.clone(),
        feature_shape: row_shape.clone(),
        layer: model.layer_name().to_owned(),
        weights_sha256: model.weights_sha256().to_owned(),
        entries,
    };
    run_folder::write_json(&args.out.join(feature_cache::EXTRACTION_FILE), &record)?;
    indexes[0].1.class_map().write(&args.out)?;
    let wall = started.elapsed().as_secs_f64();
    let model_share = if totals.images > 0 { totals.model.as_secs_f64() / wall } else { 0.0 };
    let summary = serde_json::json!({
        "device": format!("{device:?}"),
        "cache_hits": totals.hits,
        "computed": totals.computed,
        "images_run": totals.images,
        "images_per_second": if totals.images > 0 { totals.images as f64 / wall } else { 0.0 },
        "model_time_fraction": model_share,
        "skipped": totals.skipped,
        "peak_rss_mb": peak_rss_mb(),
        "feature_shape": row_shape,
        "precision": args.precision.name(),
        "batch_size": args.batch_size,
        "cudnn_benchmark": device.is_cuda().then_some(args.cudnn_benchmark),
        // TF32 is libtorch's default for float32 convolutions on CUDA; NVIDIA's libraries honour
        // this variable (0 = off), which is how the GPU check compares both.
        "nvidia_tf32_override": std::env::var("NVIDIA_TF32_OVERRIDE").ok(),
        "timing_method": "host clocks around device synchronisation, one batch in flight",
        "entries": totals.timings,
    });
    let inputs: BTreeMap<String, String> = BTreeMap::from([("weights".to_owned(), model.weights_sha256().to_owned())])
        .into_iter()
        .chain(record.entries.iter().map(|e| (format!("entry:{}:{}", e.split, e.pass.map_or("plain".to_owned(), |p| format!("pass{p}"))), e.key.clone())))
        .collect();
    run_folder::StageRecord::write(
        &args.out,
        "extract-features",
        run_folder::json_sha256(&config),
        inputs,
        &[feature_cache::EXTRACTION_FILE, dataset::CLASS_MAP_FILE],
        wall,
        summary,
    )?;
    eprintln!(
        "extract-features: {} entries ({} from cache, {} computed, {} images at {:.1} img/s, model {:.0}% of wall time) in {wall:.1}s -> {}",
        jobs.len(),
        totals.hits,
        totals.computed,
        totals.images,
        if totals.images > 0 { totals.images as f64 / wall } else { 0.0 },
        100.0 * model_share,
        args.out.display()
    );
    Ok(())
}

/// The process's peak resident memory (`VmHWM`), for the streaming-memory benchmark.
fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: f64 = status.lines().find_map(|l| l.strip_prefix("VmHWM:"))?.trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kb / 1024.0)
}

fn tool() -> &'static str {
    concat!("extract-features ", env!("CARGO_PKG_VERSION"))
}

fn relative(path: &Path, root: &Path) -> String {
    path.strip_prefix(root).unwrap_or(path).to_string_lossy().replace('\\', "/")
}

/// Runs one job through the model into `writer`; returns the rows written.
#[allow(clippy::too_many_arguments)]
fn extract(
    args: &Args,
    model: &FeatureModel,
    job: &Job<'_>,
    size: Size,
    augment_config: &AugmentConfig,
    mut writer: feature_cache::EntryWriter,
    label: &str,
    totals: &mut Totals,
) -> Result<u64> {
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
        on_bad_image: if args.skip_bad_images {
            BadImagePolicy::Skip { max_fraction: args.max_bad_fraction }
        } else {
            BadImagePolicy::FailFast
        },
        ..Default::default()
    };
    let total = job.index.files.len() as u64;
    let bar = ProgressBar::new(total).with_message(label.to_owned());
    bar.set_style(
        ProgressStyle::with_template("{msg:>28} [{bar:30}] {pos}/{len} {per_sec} eta {eta}")
            .expect("static template")
            .progress_chars("=> "),
    );
    let (h, w) = (size.height as usize, size.width as usize);
    let step = (total / 10).max(1);
    let mut timing = EntryTiming { split: job.split.to_owned(), pass: job.pass, ..Default::default() };
    let loop_start = Instant::now();
    let mut batches = dataset::batches(job.index, &decode, &options, 0)?;
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
    let (mut writer, rows) = std::thread::scope(|scope| -> Result<(feature_cache::EntryWriter, u64)> {
        let (to_writer, finished) = std::sync::mpsc::sync_channel::<(Pending, Vec<i32>)>(2);
        let bar = &bar;
        let write_thread = scope.spawn(move || -> Result<(feature_cache::EntryWriter, u64)> {
            let mut rows = 0u64;
            for (pending, labels) in finished {
                writer.append(&pending.rows()?, &labels)?;
                let n = pending.len() as u64;
                rows += n;
                bar.inc(n);
                // Without a terminal (the pipeline logs to a file) the bar is hidden: log every ~10%.
                if bar.is_hidden() && (rows / step != (rows - n) / step || rows == total) {
                    tracing::info!(split = %label, done = rows, total, "extracting");
                }
            }
            Ok((writer, rows))
        });
        let mut run_loop = || -> Result<()> {
            let mut in_flight: Option<InFlight> = None;
            for batch in batches.by_ref() {
                // Decode (on the prefetch threads), augmentation and staging overlap the batch in
                // flight.
                let mut batch = batch?;
                if let Some(pass) = job.pass {
                    let image_len = h * w * 3;
                    let src = batch.images.clone();
                    batch.images.par_chunks_mut(image_len).zip(src.par_chunks(image_len)).zip(batch.indices.par_iter()).try_for_each(
                        |((dst, src), &i)| augment_config.sample(args.augment_seed, pass as u64, i as u64).apply_u8(src, h, w, 3, dst),
                    )?;
                }
                let staged = model.stage(&batch.images, batch.len(), h, w)?;
                let finished = settle(in_flight.take(), &mut timing);
                let submitted = Instant::now();
                let pending = model.submit(staged)?;
                let labels = batch.classes.iter().map(|&c| c as i32).collect();
                in_flight = Some(InFlight { pending, labels, submitted, returned: Instant::now() });
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
        let written = write_thread.join().map_err(|_| anyhow::anyhow!("the feature writer thread panicked"))?;
        looped?;
        written
    })?;
    timing.images = rows as usize;
    timing.seconds = loop_start.elapsed().as_secs_f64();
    timing.device_starved_seconds = (timing.seconds - timing.device_queued_seconds).max(0.0);
    if timing.batches > 1 {
        let rest = timing.seconds - timing.first_batch_seconds;
        timing.steady_images_per_second = (rest > 0.0).then(|| (rows as usize - timing.first_batch_rows) as f64 / rest);
    }
    totals.model += Duration::from_secs_f64(timing.device_queued_seconds);
    totals.images += rows as usize;
    totals.timings.push(timing);
    for skipped in batches.skipped() {
        tracing::warn!(path = %skipped.path.display(), reason = %skipped.reason, "skipped a bad image");
        writer.skip(relative(&skipped.path, &job.index.dir));
        totals.skipped.push(skipped.path.display().to_string());
    }
    if !batches.skipped().is_empty() {
        eprintln!("{label}: skipped {} of {}", batches.skipped().len(), total);
    }
    bar.finish();
    writer.finish()?;
    Ok(rows)
}
