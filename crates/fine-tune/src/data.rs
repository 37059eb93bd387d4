//! What the training loop eats: decoded splits held in memory, the seeded plan of every step
//! (which samples, which augmentation, which cached pass), training batches built from images
//! (augmented on the fly, run through the frozen trunk) or read row by row from the trunk cache,
//! and the trunk's output for the validation and test splits, computed once from images or read
//! from the cache in sequential batches. Cached features are never held whole: a split of the
//! cache is a [`SplitReader`] (chunk offsets and labels), so memory does not grow with it.
//!
//! Every random choice is a pure function of `(seed, epoch, step)`: the batch order comes from
//! `training::order::epoch_permutation`, the augmentation from `AugmentConfig::sample`, the cached
//! pass from [`mix`]. A resumed run therefore needs only `(epoch, step)` to continue exactly.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use augment::AugmentConfig;
use dataset::{ClassMode, ScanOptions, SplitIndex};
use feature_cache::{Cache, EntryRef, ExtractionRecord, SplitReader};
use rayon::prelude::*;
use serde::Serialize;
use tch::{Device, Tensor};

use models::Classifier as Net;

/// The libtorch seed of a training step (dropout masks): reseeded before every step, so the
/// global generator's state never has to be saved.
pub fn step_seed(seed: u64, epoch: usize, step: usize) -> i64 {
    training::order::step_seed(seed, 0x64726f70, epoch, step)
}

/// One sample of a batch: which image, its appearance number in the epoch (an epoch longer than
/// the split goes round it again in a new order), and the cached pass to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    pub index: usize,
    pub round: usize,
    pub pass: u32,
}

/// Which samples every step of one epoch sees: position `p` of the epoch is sample
/// `perm(epoch, p / n)[p % n]`; batches are consecutive positions, always full.
pub struct EpochPlan {
    n: usize,
    batch: usize,
    seed: u64,
    epoch: usize,
    passes: u32,
    rounds: Vec<Option<Vec<usize>>>,
}

impl EpochPlan {
    /// `passes`: augmented passes to choose from (1 when not reading the trunk cache).
    pub fn new(n: usize, batch: usize, seed: u64, epoch: usize, passes: u32) -> Self {
        Self { n, batch, seed, epoch, passes: passes.max(1), rounds: Vec::new() }
    }

    pub fn batch(&mut self, step: usize) -> Vec<Sample> {
        (step * self.batch..(step + 1) * self.batch)
            .map(|p| {
                let (round, at) = (p / self.n, p % self.n);
                let index = self.order(round)[at];
                let pass = (training::order::mix(&[
                    self.seed,
                    0x70617373,
                    self.epoch as u64,
                    round as u64,
                    index as u64,
                ]) % self.passes as u64) as u32;
                Sample { index, round, pass }
            })
            .collect()
    }

    fn order(&mut self, round: usize) -> &[usize] {
        if self.rounds.len() <= round {
            self.rounds.resize(round + 1, None);
        }
        let (n, seed, stream) = (self.n, self.seed, ((self.epoch as u64) << 20) | round as u64);
        self.rounds[round]
            .get_or_insert_with(|| training::order::epoch_permutation(n, seed, stream))
    }
}

/// A split decoded to RGB8 at the input size, in file order.
pub type Images = dataset::DecodedSplit;

/// Scans `<root>/<split>` like Keras `flow_from_directory` (sparse labels), following
/// symlinked folders when `follow_links` (`--follow-links`).
pub fn scan(root: &Path, split: &str, follow_links: bool) -> Result<SplitIndex> {
    dataset::scan(root, split, &scan_options(follow_links))
        .with_context(|| format!("scanning split {split} of {}", root.display()))
}

/// Scans `train` and every other split of `root` that exists, applying the class rule every
/// training stage applies (`dataset::scan_training_splits`: at least 2 classes, the same in
/// every split); returns the train split.
pub fn scan_train(root: &Path, follow_links: bool) -> Result<SplitIndex> {
    let splits: Vec<&str> = ["train", "validation", "test"]
        .into_iter()
        .filter(|s| *s == "train" || root.join(s).is_dir())
        .collect();
    let mut indexes = dataset::scan_training_splits(root, &splits, &scan_options(follow_links))
        .with_context(|| format!("scanning {}", root.display()))?;
    Ok(indexes.swap_remove(0))
}

/// The scan options of every split fine-tune reads (and of its data digest).
pub fn scan_options(follow_links: bool) -> ScanOptions {
    ScanOptions { class_mode: ClassMode::Sparse, follow_links, ..Default::default() }
}

/// Decodes every image of `index`, resized (nearest, Keras' default) to `size` x `size`.
pub fn decode(index: SplitIndex, size: usize) -> Result<Images> {
    let split = index.dir.display().to_string();
    Images::decode(index, size).with_context(|| format!("decoding {split}"))
}

/// Copies a host tensor to `device`; for CUDA through pinned memory without blocking, so the
/// copy overlaps with the work already queued.
pub fn upload(t: Tensor, device: Device) -> Result<Tensor> {
    Ok(match device {
        Device::Cpu => t,
        _ => t.f_pin_memory(device)?.f_to_device_(device, t.kind(), true, false)?,
    })
}

/// The trunk's output for a whole split (validation, test), read in batches: rows `[N, C, H, W]`
/// and labels `[N]`.
pub struct TrunkSet {
    rows: TrunkRows,
    pub labels: Tensor,
    pub truth: Vec<i64>,
    /// Where the features came from: `images` or `cache <key>`.
    pub source: String,
}

enum TrunkRows {
    /// Computed from images, `[N, C, H, W]` on the device.
    Computed(Tensor),
    /// Read from the trunk cache on demand (`[H, W, C]` rows), put on `device`.
    Cached { reader: Box<SplitReader>, row_shape: [i64; 3], device: Device },
}

impl TrunkSet {
    pub fn len(&self) -> usize {
        self.truth.len()
    }

    /// The trunk's output for rows `start..start + len`, `[len, C, H, W]` on the device (cached
    /// rows are channels last, permuted to a view).
    pub fn rows(&self, start: i64, len: i64) -> Result<Tensor> {
        match &self.rows {
            TrunkRows::Computed(xs) => Ok(xs.f_narrow(0, start, len)?),
            TrunkRows::Cached { reader, row_shape: [h, w, c], device } => {
                let mut buf = vec![0f32; len as usize * reader.row_len()];
                reader.read_range(start as u64, len as u64, &mut buf)?;
                let host = Tensor::from_slice(&buf).f_view([len, *h, *w, *c])?;
                Ok(upload(host, *device)?.f_permute([0, 3, 1, 2])?)
            }
        }
    }
}

/// Runs `images` through the frozen trunk once, in batches.
pub fn trunk_of_images(net: &Net, images: &Images, batch: usize) -> Result<TrunkSet> {
    let mut parts = Vec::new();
    let s = images.size as i64;
    for start in (0..images.len()).step_by(batch) {
        let end = (start + batch).min(images.len());
        let len = images.size * images.size * 3;
        let host = Tensor::from_slice(&images.pixels[start * len..end * len]).f_view([
            (end - start) as i64,
            s,
            s,
            3,
        ])?;
        parts.push(net.trunk(&upload(host, net.device())?)?);
    }
    if parts.is_empty() {
        bail!("split {} has no images", images.index.dir.display());
    }
    Ok(TrunkSet {
        rows: TrunkRows::Computed(Tensor::f_cat(&parts, 0)?),
        labels: upload(Tensor::from_slice(&images.labels), net.device())?,
        truth: images.labels.clone(),
        source: "images".into(),
    })
}

/// Where training batches come from.
pub enum TrainSource {
    /// Decoded images, augmented per (seed, epoch, appearance) and run through the trunk.
    Images { images: Box<Images>, augment: Option<AugmentConfig> },
    /// The trunk's output for K augmented passes from extract-features, one split reader per
    /// pass (sample `i` of pass `p` is row `i` of reader `p`), rows `[H, W, C]` read per batch.
    Cached { passes: Vec<SplitReader>, row_shape: [i64; 3], labels: Vec<i64> },
}

impl TrainSource {
    pub fn len(&self) -> usize {
        match self {
            Self::Images { images, .. } => images.len(),
            Self::Cached { labels, .. } => labels.len(),
        }
    }

    pub fn passes(&self) -> u32 {
        match self {
            Self::Images { .. } => 1,
            Self::Cached { passes, .. } => passes.len() as u32,
        }
    }

    /// The trunk's output for `samples` `[B, C, H, W]` and their labels `[B]`, on the device.
    pub fn batch(
        &self,
        net: &Net,
        samples: &[Sample],
        seed: u64,
        epoch: usize,
    ) -> Result<(Tensor, Tensor)> {
        let labels = |all: &[i64]| -> Result<Tensor> {
            let ys: Vec<i64> = samples.iter().map(|s| all[s.index]).collect();
            upload(Tensor::from_slice(&ys), net.device())
        };
        match self {
            Self::Images { images, augment } => {
                let (size, n) = (images.size, images.len());
                let len = size * size * 3;
                let shape = [samples.len() as i64, size as i64, size as i64, 3];
                // Augmented pixels stay floats (float NHWC, given to the trunk as an NCHW
                // view), as Keras hands them to the network; plain ones stay RGB8.
                let host = match augment {
                    Some(config) => {
                        let mut buf = vec![0f32; samples.len() * len];
                        buf.par_chunks_mut(len).zip(samples.par_iter()).try_for_each(
                            |(dst, s)| {
                                let appearance = (s.round * n + s.index) as u64;
                                config.sample(seed, epoch as u64, appearance).apply_u8_to_f32(
                                    images.image(s.index),
                                    size,
                                    size,
                                    3,
                                    dst,
                                )
                            },
                        )?;
                        Tensor::from_slice(&buf).f_view(shape)?.f_permute([0, 3, 1, 2])?
                    }
                    None => {
                        let mut buf = vec![0u8; samples.len() * len];
                        buf.par_chunks_mut(len)
                            .zip(samples.par_iter())
                            .for_each(|(dst, s)| dst.copy_from_slice(images.image(s.index)));
                        Tensor::from_slice(&buf).f_view(shape)?
                    }
                };
                Ok((net.trunk(&upload(host, net.device())?)?, labels(&images.labels)?))
            }
            Self::Cached { passes, row_shape: [h, w, c], labels: all } => {
                // Each pass's rows of the batch in one read, put in batch order.
                let len = (h * w * c) as usize;
                let mut buf = vec![0f32; samples.len() * len];
                let mut part = Vec::new();
                for (p, pass) in passes.iter().enumerate() {
                    let (at, rows): (Vec<usize>, Vec<u64>) = samples
                        .iter()
                        .enumerate()
                        .filter(|(_, s)| s.pass as usize == p)
                        .map(|(at, s)| (at, s.index as u64))
                        .unzip();
                    if rows.is_empty() {
                        continue;
                    }
                    part.resize(rows.len() * len, 0f32);
                    pass.read_rows(&rows, &mut part)?;
                    for (k, at) in at.into_iter().enumerate() {
                        buf[at * len..(at + 1) * len]
                            .copy_from_slice(&part[k * len..(k + 1) * len]);
                    }
                }
                let host = Tensor::from_slice(&buf).f_view([samples.len() as i64, *h, *w, *c])?;
                let xs = upload(host, net.device())?.f_permute([0, 3, 1, 2])?;
                Ok((xs, labels(all)?))
            }
        }
    }
}

/// What a trunk cache must have been extracted with to stand in for the trunk.
pub struct TrunkExpect<'a> {
    pub layer: &'a str,
    pub weights_sha256: &'a str,
    pub input_size: u32,
    pub preprocessing: &'a str,
    pub classes: &'a [String],
    /// `[H, W, C]` of one row.
    pub row_shape: [u64; 3],
}

/// What was read from `--trunk-cache`, for config.json.
#[derive(Debug, Clone, Serialize)]
pub struct TrunkCacheInfo {
    pub features_json: PathBuf,
    pub train_keys: Vec<String>,
    pub validation_key: Option<String>,
    pub test_key: Option<String>,
    /// sha256 of features.json: it names the keys, and the keys every setting of the extraction.
    pub features_json_sha256: String,
}

/// `--trunk-cache`: the record, the opened cache and the checked entry references.
pub struct TrunkCache {
    pub info: TrunkCacheInfo,
    record: ExtractionRecord,
    cache: Cache,
    path: PathBuf,
}

impl TrunkCache {
    /// Reads `features.json` and checks that it describes the trunk (layer, weights, size,
    /// preprocessing, classes, no pooling) before anything heavy is loaded.
    pub fn open(path: &Path, cache_dir: Option<&Path>, expect: &TrunkExpect<'_>) -> Result<Self> {
        let record: ExtractionRecord = run_folder::read_json(path)?;
        let fail = |why: String| anyhow::anyhow!("trunk cache {}: {why}", path.display());
        if record.layer != expect.layer {
            return Err(fail(format!(
                "holds {} features, but the frozen part ends at {}: run extract-features with \
                 --layer {}",
                record.layer, expect.layer, expect.layer
            )));
        }
        if record.weights_sha256 != expect.weights_sha256 {
            return Err(fail(format!(
                "extracted with weights {}, not --weights ({})",
                record.weights_sha256, expect.weights_sha256
            )));
        }
        if record.classes != expect.classes {
            return Err(fail(format!(
                "classes {:?}, the dataset has {:?}",
                record.classes, expect.classes
            )));
        }
        if record.feature_shape != expect.row_shape {
            return Err(fail(format!(
                "rows of shape {:?}, the trunk at {}x{} gives {:?} (input size or pooling differs)",
                record.feature_shape, expect.input_size, expect.input_size, expect.row_shape
            )));
        }
        let train = record.passes("train");
        if train.is_empty() {
            return Err(fail("no augmented passes of the training split: run extract-features with --augment-passes K".into()));
        }
        let dir = cache_dir.map(Path::to_owned).unwrap_or_else(|| record.cache_dir.clone());
        let cache = Cache::open(&dir)
            .with_context(|| format!("opening the feature cache {}", dir.display()))?;
        let info = TrunkCacheInfo {
            features_json: path.to_owned(),
            train_keys: train.iter().map(|e| e.key.clone()).collect(),
            validation_key: record.plain("validation").map(|e| e.key.clone()),
            test_key: record.plain("test").map(|e| e.key.clone()),
            features_json_sha256: run_folder::file_sha256(path)?.sha256,
        };
        Ok(Self { info, record, cache, path: path.to_owned() })
    }

    /// Opens and verifies a split of the cache (its index and every chunk), then checks its
    /// settings and row shape against `expect` and, when given, its file list against the
    /// scanned split. Rows are read later, a batch at a time.
    fn open_split(
        &self,
        entry: &EntryRef,
        expect: &TrunkExpect<'_>,
        split: Option<&SplitIndex>,
    ) -> Result<SplitReader> {
        let reader = ExtractionRecord::open(&self.cache, entry, &self.path)?;
        let c = reader.settings();
        let fail = |why: String| {
            anyhow::anyhow!(
                "trunk cache {}: entry {} ({}): {why}",
                self.path.display(),
                entry.key,
                entry.split
            )
        };
        let checks = [
            ("layer", c.layer.as_str(), expect.layer.to_owned()),
            ("pooling", c.pooling.as_str(), "none".to_owned()),
            ("preprocessing", c.preprocessing.as_str(), expect.preprocessing.to_owned()),
            ("resize", c.resize.as_str(), "nearest".to_owned()),
            ("weights", c.weights_sha256.as_str(), expect.weights_sha256.to_owned()),
        ];
        for (what, found, wanted) in checks {
            if found != wanted {
                return Err(fail(format!("{what} is {found}, fine-tune needs {wanted}")));
            }
        }
        if c.input_size != [expect.input_size; 2] {
            return Err(fail(format!(
                "input size {:?}, --input-size is {}",
                c.input_size, expect.input_size
            )));
        }
        if c.precision != "f32" {
            tracing::warn!(key = %entry.key, precision = %c.precision, "trunk cache entry not extracted in f32: the top sees rounded features");
        }
        if !reader.skipped().is_empty() {
            return Err(fail(format!(
                "{} images were skipped at extraction: rows no longer match files",
                reader.skipped().len()
            )));
        }
        if reader.row_shape() != expect.row_shape {
            return Err(fail(format!(
                "rows of shape {:?}, the trunk at {}x{} gives {:?}",
                reader.row_shape(),
                expect.input_size,
                expect.input_size,
                expect.row_shape
            )));
        }
        if let Some(index) = split {
            let files: Vec<(String, u32)> = index
                .files
                .iter()
                .map(|f| {
                    (
                        f.path
                            .strip_prefix(&index.dir)
                            .unwrap_or(&f.path)
                            .to_string_lossy()
                            .replace('\\', "/"),
                        f.class as u32,
                    )
                })
                .collect();
            let cached: Vec<(String, u32)> =
                reader.files()?.into_iter().map(|f| (f.path, f.label)).collect();
            if files != cached {
                return Err(fail(format!(
                    "extracted from another file list ({} files) than {} holds now ({} files): extract again",
                    cached.len(),
                    index.dir.display(),
                    files.len()
                )));
            }
        }
        Ok(reader)
    }

    /// The training passes, opened and checked against the scanned training split; their rows
    /// are read per batch.
    pub fn train(&self, expect: &TrunkExpect<'_>, split: &SplitIndex) -> Result<TrainSource> {
        let refs = self.record.passes("train");
        let mut passes: Vec<SplitReader> = Vec::with_capacity(refs.len());
        for entry in &refs {
            let reader = self.open_split(entry, expect, Some(split))?;
            if passes.first().is_some_and(|first| first.labels() != reader.labels()) {
                bail!(
                    "trunk cache {}: the training passes disagree on labels",
                    self.path.display()
                );
            }
            passes.push(reader);
        }
        let labels: Vec<i64> = passes
            .first()
            .map(|p| p.labels().iter().map(|&l| l as i64).collect())
            .unwrap_or_default();
        tracing::info!(
            passes = refs.len(),
            images = labels.len(),
            "training trunk features verified in the cache (read per batch)"
        );
        Ok(TrainSource::Cached { passes, row_shape: row_shape(expect), labels })
    }

    /// The plain entry of `split` as a [`TrunkSet`], if the record has one.
    pub fn eval_set(
        &self,
        split_name: &str,
        expect: &TrunkExpect<'_>,
        split: &SplitIndex,
        device: Device,
    ) -> Result<Option<TrunkSet>> {
        let Some(entry) = self.record.plain(split_name) else {
            return Ok(None);
        };
        let reader = self.open_split(entry, expect, Some(split))?;
        let truth: Vec<i64> = reader.labels().iter().map(|&l| l as i64).collect();
        Ok(Some(TrunkSet {
            labels: upload(Tensor::from_slice(&truth), device)?,
            truth,
            source: format!("cache {}", entry.key),
            rows: TrunkRows::Cached {
                reader: Box::new(reader),
                row_shape: row_shape(expect),
                device,
            },
        }))
    }
}

fn row_shape(expect: &TrunkExpect<'_>) -> [i64; 3] {
    expect.row_shape.map(|d| d as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plan_visits_every_sample_once_per_round_in_a_seeded_order() {
        let (n, batch) = (7, 3);
        let mut plan = EpochPlan::new(n, batch, 5, 2, 4);
        // 5 steps of 3 = 15 positions: two full rounds and one sample of a third.
        let samples: Vec<Sample> = (0..5).flat_map(|s| plan.batch(s)).collect();
        for round in 0..2 {
            let mut seen: Vec<usize> =
                samples.iter().filter(|s| s.round == round).map(|s| s.index).collect();
            seen.sort();
            assert_eq!(seen, (0..n).collect::<Vec<_>>(), "round {round}");
        }
        assert_eq!(samples.iter().filter(|s| s.round == 2).count(), 1);
        assert!(samples.iter().all(|s| s.pass < 4));
        assert!(samples.iter().any(|s| s.pass != samples[0].pass), "passes vary");
        // Any step can be computed alone (resume), and the order depends on seed and epoch.
        assert_eq!(EpochPlan::new(n, batch, 5, 2, 4).batch(3), samples[9..12]);
        assert_ne!(EpochPlan::new(n, batch, 5, 3, 4).batch(0), samples[0..3]);
        assert_ne!(EpochPlan::new(n, batch, 6, 2, 4).batch(0), samples[0..3]);
        assert!(EpochPlan::new(n, batch, 5, 2, 1).batch(4).iter().all(|s| s.pass == 0));
    }

    #[test]
    fn step_seeds_differ_by_seed_epoch_and_step() {
        let mut seeds: Vec<i64> = Vec::new();
        for seed in 0..3 {
            for epoch in 0..4 {
                for step in 0..5 {
                    let s = step_seed(seed, epoch, step);
                    assert!(s >= 0);
                    seeds.push(s);
                }
            }
        }
        let count = seeds.len();
        seeds.sort();
        seeds.dedup();
        assert_eq!(seeds.len(), count);
        assert_eq!(step_seed(1, 2, 3), step_seed(1, 2, 3));
    }
}
