//! One epoch of batches over a [`SplitIndex`]: every image exactly once (the last batch may be
//! short), in path order or in a seeded shuffled order, decoded in parallel with rayon, with a
//! bounded number of batches decoded ahead. Unlike Keras' generators it ends by itself, so no
//! caller needs a `break`.
//!
//! Reproducibility: the order is computed up front, on one thread, from the seed and the epoch
//! number only; rayon only decides which core decodes an image, never where it lands. So the
//! batches are identical for any thread count.

use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::decode::{DecodeOptions, Size, decode};
use crate::error::{Error, Result};
use crate::scan::{ClassMode, FileEntry, SplitIndex};

/// Seed of the per-epoch shuffle. Epoch `e` uses ChaCha8 seeded with this value on stream `e`,
/// so every epoch has its own order and any epoch can be reproduced alone (resume).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShuffleSeed(pub u64);

/// What to do with an image that cannot be read or decoded.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BadImagePolicy {
    /// Stop at the first bad image with an error naming it (the default).
    #[default]
    FailFast,
    /// Log and skip bad images; fail once more than `max_fraction` of the epoch's images have
    /// been skipped.
    Skip { max_fraction: f64 },
}

#[derive(Debug, Clone)]
pub struct BatchOptions {
    /// Images per batch (Keras default 32); the last batch of an epoch may be smaller.
    pub batch_size: usize,
    pub shuffle: Option<ShuffleSeed>,
    /// Drop a last batch smaller than `batch_size`.
    pub drop_last: bool,
    /// Batches decoded ahead on a background thread; 0 decodes inside `next()`. At most
    /// `prefetch + 2` batches are alive at once (queued, being decoded, held by the caller).
    pub prefetch: usize,
    pub on_bad_image: BadImagePolicy,
    /// Decode on this pool instead of rayon's global one.
    pub pool: Option<Arc<rayon::ThreadPool>>,
}

impl Default for BatchOptions {
    fn default() -> Self {
        BatchOptions {
            batch_size: 32,
            shuffle: None,
            drop_last: false,
            prefetch: 2,
            on_bad_image: BadImagePolicy::FailFast,
            pool: None,
        }
    }
}

/// An image that was skipped, with the reason; goes into stage manifests.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Skipped {
    pub path: PathBuf,
    pub reason: String,
}

/// Training targets of a batch, by [`ClassMode`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Targets {
    /// `[N]`, 0.0 or 1.0.
    Binary(Vec<f32>),
    /// `[N, num_classes]` row-major one-hot.
    Categorical { num_classes: usize, one_hot: Vec<f32> },
    /// `[N]` class indices.
    Sparse(Vec<i64>),
}

impl Targets {
    pub fn new(mode: ClassMode, num_classes: usize, classes: &[usize]) -> Targets {
        match mode {
            ClassMode::Binary => Targets::Binary(classes.iter().map(|&c| c as f32).collect()),
            ClassMode::Sparse => Targets::Sparse(classes.iter().map(|&c| c as i64).collect()),
            ClassMode::Categorical => {
                let mut one_hot = vec![0.0; classes.len() * num_classes];
                for (row, &c) in classes.iter().enumerate() {
                    one_hot[row * num_classes + c] = 1.0;
                }
                Targets::Categorical { num_classes, one_hot }
            }
        }
    }
}

/// Decoded images and their labels.
#[derive(Debug, Clone)]
pub struct Batch {
    /// `[N, H, W, 3]` RGB8, row-major (HWC per image).
    pub images: Vec<u8>,
    pub size: Size,
    /// Class index of each image.
    pub classes: Vec<usize>,
    pub targets: Targets,
    /// Position of each image in `SplitIndex::files`.
    pub indices: Vec<usize>,
    pub paths: Vec<PathBuf>,
}

impl Batch {
    pub fn len(&self) -> usize {
        self.indices.len()
    }

    pub fn is_empty(&self) -> bool {
        self.indices.is_empty()
    }

    /// `[N, H, W, 3]`.
    pub fn shape(&self) -> [usize; 4] {
        [self.len(), self.size.height as usize, self.size.width as usize, 3]
    }

    /// The `i`-th image, `[H, W, 3]`.
    pub fn image(&self, i: usize) -> &[u8] {
        let n = self.size.height as usize * self.size.width as usize * 3;
        &self.images[i * n..(i + 1) * n]
    }
}

/// The visiting order of epoch `epoch`: `0..n` without a seed, else a Fisher-Yates shuffle
/// driven by ChaCha8 (seed, stream = epoch) with unbiased bounded integers. Written out here
/// rather than taken from `rand` so the order can never change with a dependency update.
pub fn epoch_order(n: usize, shuffle: Option<ShuffleSeed>, epoch: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    if let Some(ShuffleSeed(seed)) = shuffle {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        rng.set_stream(epoch);
        for i in (1..n).rev() {
            let j = below(&mut rng, i as u64 + 1) as usize;
            order.swap(i, j);
        }
    }
    order
}

/// Uniform in `0..bound` (Lemire's multiply-and-reject).
fn below(rng: &mut ChaCha8Rng, bound: u64) -> u64 {
    let threshold = bound.wrapping_neg() % bound;
    loop {
        let m = u128::from(rng.next_u64()) * u128::from(bound);
        if (m as u64) >= threshold {
            return (m >> 64) as u64;
        }
    }
}

/// Iterator over one epoch; yields `Err` once and then ends when an image is bad (fail-fast)
/// or when too many were skipped.
pub struct Batches {
    source: Source,
    skipped: Arc<Mutex<Vec<Skipped>>>,
    total: usize,
}

enum Source {
    Inline(Box<Producer>),
    Prefetch { rx: Option<Receiver<Result<Batch>>>, worker: Option<JoinHandle<()>> },
}

impl std::fmt::Debug for Batches {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batches").field("total", &self.total).finish_non_exhaustive()
    }
}

/// Epoch `epoch` of `index` in batches. `decode.target_size` is required: a batch is one
/// `[N, H, W, 3]` buffer.
pub fn batches(
    index: &SplitIndex,
    decode: &DecodeOptions,
    opts: &BatchOptions,
    epoch: u64,
) -> Result<Batches> {
    let invalid = |reason: &str| Error::Invalid {
        path: index.dir.clone(),
        what: "batch options",
        reason: reason.into(),
    };
    let size =
        decode.target_size.ok_or_else(|| invalid("a target size is needed to batch images"))?;
    if opts.batch_size == 0 {
        return Err(invalid("batch size must be at least 1"));
    }
    if let BadImagePolicy::Skip { max_fraction } = opts.on_bad_image
        && !(0.0..=1.0).contains(&max_fraction)
    {
        return Err(invalid("the skip fraction must lie in [0, 1]"));
    }
    let mut order = epoch_order(index.len(), opts.shuffle, epoch);
    if opts.drop_last {
        order.truncate(order.len() / opts.batch_size * opts.batch_size);
    }
    let skipped = Arc::new(Mutex::new(Vec::new()));
    let total = order.len();
    let producer = Producer {
        dir: index.dir.clone(),
        files: index.files.iter().cloned().collect(),
        num_classes: index.classes.len(),
        class_mode: index.class_mode,
        order,
        pos: 0,
        size,
        decode: *decode,
        opts: opts.clone(),
        skipped: Arc::clone(&skipped),
        finished: false,
    };
    let source = if opts.prefetch == 0 {
        Source::Inline(Box::new(producer))
    } else {
        let (tx, rx) = sync_channel(opts.prefetch);
        let mut producer = producer;
        let worker = std::thread::Builder::new()
            .name("dataset-prefetch".into())
            .spawn(move || {
                while let Some(batch) = producer.next_batch() {
                    if tx.send(batch).is_err() {
                        break; // the consumer was dropped
                    }
                }
            })
            .map_err(|e| Error::io(&index.dir, e))?;
        Source::Prefetch { rx: Some(rx), worker: Some(worker) }
    };
    Ok(Batches { source, skipped, total })
}

impl Batches {
    /// Images skipped so far in this epoch (with [`BadImagePolicy::Skip`]).
    pub fn skipped(&self) -> Vec<Skipped> {
        self.skipped.lock().expect("skip list lock").clone()
    }

    /// Images this epoch visits (before skipping).
    pub fn total(&self) -> usize {
        self.total
    }
}

impl Iterator for Batches {
    type Item = Result<Batch>;

    fn next(&mut self) -> Option<Result<Batch>> {
        match &mut self.source {
            Source::Inline(p) => p.next_batch(),
            Source::Prefetch { rx, .. } => rx.as_ref()?.recv().ok(),
        }
    }
}

impl Drop for Batches {
    fn drop(&mut self) {
        if let Source::Prefetch { rx, worker } = &mut self.source {
            drop(rx.take()); // unblocks a worker waiting to send
            if let Some(w) = worker.take() {
                let _ = w.join();
            }
        }
    }
}

struct Producer {
    dir: PathBuf,
    files: Arc<[FileEntry]>,
    num_classes: usize,
    class_mode: ClassMode,
    order: Vec<usize>,
    pos: usize,
    size: Size,
    decode: DecodeOptions,
    opts: BatchOptions,
    skipped: Arc<Mutex<Vec<Skipped>>>,
    finished: bool,
}

impl Producer {
    fn next_batch(&mut self) -> Option<Result<Batch>> {
        while !self.finished {
            if self.pos >= self.order.len() {
                self.finish();
                return None;
            }
            let end = (self.pos + self.opts.batch_size).min(self.order.len());
            let chunk = &self.order[self.pos..end];
            self.pos = end;
            let files = &self.files;
            let decode_opts = &self.decode;
            let work = || -> Vec<Result<image::RgbImage>> {
                chunk.par_iter().map(|&i| decode(&files[i].path, decode_opts)).collect()
            };
            let decoded = match &self.opts.pool {
                Some(pool) => pool.install(work),
                None => work(),
            };
            match self.assemble(&self.order[self.pos - decoded.len()..self.pos], decoded) {
                Ok(Some(batch)) => return Some(Ok(batch)),
                Ok(None) => continue, // every image of this batch was skipped
                Err(e) => {
                    self.finished = true;
                    return Some(Err(e));
                }
            }
        }
        None
    }

    fn assemble(
        &self,
        chunk: &[usize],
        decoded: Vec<Result<image::RgbImage>>,
    ) -> Result<Option<Batch>> {
        let per_image = self.size.height as usize * self.size.width as usize * 3;
        let mut images = Vec::with_capacity(per_image * chunk.len());
        let mut indices = Vec::with_capacity(chunk.len());
        for (&i, result) in chunk.iter().zip(decoded) {
            match result {
                Ok(img) => {
                    images.extend_from_slice(img.as_raw());
                    indices.push(i);
                }
                Err(e) => self.skip_or_fail(&self.files[i].path, e)?,
            }
        }
        if indices.is_empty() {
            return Ok(None);
        }
        let classes: Vec<usize> = indices.iter().map(|&i| self.files[i].class).collect();
        Ok(Some(Batch {
            images,
            size: self.size,
            targets: Targets::new(self.class_mode, self.num_classes, &classes),
            classes,
            paths: indices.iter().map(|&i| self.files[i].path.clone()).collect(),
            indices,
        }))
    }

    fn skip_or_fail(&self, path: &Path, e: Error) -> Result<()> {
        let BadImagePolicy::Skip { max_fraction } = self.opts.on_bad_image else {
            return Err(e);
        };
        let reason = match &e {
            Error::BadImage { reason, .. } => reason.to_string(),
            Error::Io { source, .. } => source.to_string(),
            other => other.to_string(),
        };
        tracing::warn!(path = %path.display(), reason, "skipping bad image");
        let mut skipped = self.skipped.lock().expect("skip list lock");
        skipped.push(Skipped { path: path.to_owned(), reason });
        let total = self.order.len();
        if skipped.len() as f64 > max_fraction * total as f64 {
            return Err(Error::TooManySkipped {
                path: self.dir.clone(),
                skipped: skipped.len(),
                total,
                max_fraction,
            });
        }
        Ok(())
    }

    fn finish(&mut self) {
        self.finished = true;
        let n = self.skipped.lock().expect("skip list lock").len();
        if n > 0 {
            tracing::warn!(dir = %self.dir.display(), "skipped {n} of {} images", self.order.len());
        }
    }
}
