//! A dense head trained on cached features (Keras `model.fit` on cached features): the [`Task`]
//! train-head gives the one training loop. Each epoch visits every sample once in the order
//! `epoch_permutation(seed, epoch)`; with several augmented passes each sample's pass is drawn
//! from the stream `epoch_rng(seed, epoch, 1)`, in visiting order (row `p * N + i` of the passes
//! stacked is sample `i` of pass `p`). Dropout draws from the global libtorch generator as it
//! runs (no per-step reseed), so the run is reproducible from its start, not resumable in the
//! middle.
//!
//! The features come either held in memory ([`FeatureSet`], tensors) or by row per batch
//! ([`StreamedSet`] over [`FeatureRows`], e.g. the feature cache's split reader, so memory stays
//! flat in the split's size); both give the same batches, so a streamed run on the CPU is
//! bit-identical to an in-memory one (`tests/streamed_features.rs`). Validation and test read
//! sequential batches of the first pass.

use rand_core::RngCore;
use tch::{Device, Kind, Tensor, nn};

use crate::fit_loop::{Batch, BoxError, Evaluation, Task};
use crate::head::{DenseHead, loss, predict};
use crate::order::{epoch_permutation, epoch_rng};
use crate::{OptimizerSpec, TrainError};

/// Features of one split: one `[N, ...]` tensor per augmented pass (just one when plain) and
/// the labels `[N]` (int64), held in memory.
#[derive(Debug)]
pub struct FeatureSet {
    pub passes: Vec<Tensor>,
    pub labels: Tensor,
}

impl FeatureSet {
    pub fn len(&self) -> i64 {
        self.labels.size()[0]
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One pass of a split's features, read by row: what a [`StreamedSet`] takes its batches from.
/// The feature cache's split reader is one (wrapped in the stage crates, since training does not
/// depend on the cache); a `[N, ...]` float tensor is another.
pub trait FeatureRows {
    /// Rows `N`.
    fn rows(&self) -> u64;
    /// The shape of one row (`[H, W, C]` channels last, or `[C]` when pooled).
    fn row_shape(&self) -> Vec<i64>;
    /// Gathers `rows` (any order, repeats allowed) into `out` (`rows.len()` times the row's
    /// length, row after row).
    fn gather(&self, rows: &[u64], out: &mut [f32]) -> Result<(), BoxError>;
    /// Rows `start..start + len` in order into `out` (`len` times the row's length).
    fn read_range(&self, start: u64, len: u64, out: &mut [f32]) -> Result<(), BoxError> {
        let rows: Vec<u64> = (start..start + len).collect();
        self.gather(&rows, out)
    }
}

/// A `[N, ...]` tensor (any device, any float kind) as rows of float32.
impl FeatureRows for Tensor {
    fn rows(&self) -> u64 {
        self.size().first().map_or(0, |&n| n as u64)
    }

    fn row_shape(&self) -> Vec<i64> {
        self.size().get(1..).unwrap_or_default().to_vec()
    }

    fn gather(&self, rows: &[u64], out: &mut [f32]) -> Result<(), BoxError> {
        let index: Vec<i64> = rows.iter().map(|&r| r as i64).collect();
        let index = Tensor::from_slice(&index).f_to_device(self.device())?;
        copy_rows(&self.f_index_select(0, &index)?, out)
    }

    fn read_range(&self, start: u64, len: u64, out: &mut [f32]) -> Result<(), BoxError> {
        copy_rows(&self.f_narrow(0, start as i64, len as i64)?, out)
    }
}

fn copy_rows(rows: &Tensor, out: &mut [f32]) -> Result<(), BoxError> {
    let rows = rows.f_to_device(Device::Cpu)?.f_to_kind(Kind::Float)?.f_contiguous()?;
    let numel = rows.numel();
    if numel != out.len() {
        return Err(format!("{numel} floats read into a buffer of {}", out.len()).into());
    }
    Ok(rows.f_copy_data(out, numel)?)
}

/// Features of one split read by row, one batch at a time: one [`FeatureRows`] per augmented
/// pass (the same `N` rows of the same shape in each) and the labels `[N]`, the only thing held
/// whole. Batches are float32 tensors put on `device`.
pub struct StreamedSet<'a> {
    passes: Vec<&'a dyn FeatureRows>,
    labels: Vec<i64>,
    row_shape: Vec<i64>,
    row_len: usize,
    device: Device,
}

impl<'a> StreamedSet<'a> {
    /// Checks that every pass has one row per label and the first pass's row shape.
    pub fn new(
        passes: Vec<&'a dyn FeatureRows>,
        labels: Vec<i64>,
        device: Device,
    ) -> Result<Self, TrainError> {
        let first = passes
            .first()
            .ok_or_else(|| TrainError::Config("a feature set needs at least one pass".into()))?;
        let row_shape = first.row_shape();
        for (p, pass) in passes.iter().enumerate() {
            if pass.rows() != labels.len() as u64 || pass.row_shape() != row_shape {
                return Err(TrainError::Config(format!(
                    "pass {p} has {} rows of shape {:?}, pass 0 has {} labels and rows of shape {row_shape:?}",
                    pass.rows(),
                    pass.row_shape(),
                    labels.len()
                )));
            }
        }
        let row_len = row_shape.iter().product::<i64>().max(0) as usize;
        Ok(Self { passes, labels, row_shape, row_len, device })
    }

    pub fn len(&self) -> i64 {
        self.labels.len() as i64
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    pub fn passes(&self) -> usize {
        self.passes.len()
    }

    pub fn labels(&self) -> &[i64] {
        &self.labels
    }

    /// `[N, ...]`, the shape of one pass.
    pub fn shape(&self) -> Vec<i64> {
        std::iter::once(self.len()).chain(self.row_shape.iter().copied()).collect()
    }

    fn batch_tensor(&self, buf: &[f32], rows: usize) -> Result<Tensor, TrainError> {
        let shape: Vec<i64> =
            std::iter::once(rows as i64).chain(self.row_shape.iter().copied()).collect();
        Ok(Tensor::from_slice(buf).f_view(shape.as_slice())?.f_to_device(self.device)?)
    }

    /// Rows of the passes stacked (`p * N + i`: sample `i` of pass `p`), read pass by pass.
    fn stacked_rows(&self, rows: &[i64]) -> Result<Tensor, TrainError> {
        let (n, len) = (self.labels.len() as i64, self.row_len);
        let mut out = vec![0f32; rows.len() * len];
        if self.passes.len() == 1 {
            let rows: Vec<u64> = rows.iter().map(|&r| r as u64).collect();
            self.passes[0].gather(&rows, &mut out).map_err(TrainError::Task)?;
        } else {
            let mut part = Vec::new();
            for (p, pass) in self.passes.iter().enumerate() {
                let (at, picked): (Vec<usize>, Vec<u64>) = rows
                    .iter()
                    .enumerate()
                    .filter(|&(_, &r)| r / n == p as i64)
                    .map(|(at, &r)| (at, (r % n) as u64))
                    .unzip();
                if at.is_empty() {
                    continue;
                }
                part.resize(picked.len() * len, 0f32);
                pass.gather(&picked, &mut part).map_err(TrainError::Task)?;
                for (k, &at) in at.iter().enumerate() {
                    out[at * len..(at + 1) * len].copy_from_slice(&part[k * len..(k + 1) * len]);
                }
            }
        }
        self.batch_tensor(&out, rows.len())
    }

    /// Rows `start..start + len` of the first pass and their labels.
    fn range(&self, start: i64, len: i64) -> Result<(Tensor, Tensor), TrainError> {
        let mut out = vec![0f32; len as usize * self.row_len];
        self.passes[0].read_range(start as u64, len as u64, &mut out).map_err(TrainError::Task)?;
        let ys = Tensor::from_slice(&self.labels[start as usize..(start + len) as usize])
            .f_to_device(self.device)?;
        Ok((self.batch_tensor(&out, len as usize)?, ys))
    }
}

/// The features a head trains or is evaluated on: held in memory or streamed by row.
#[derive(Clone, Copy)]
pub enum Features<'a> {
    InMemory(&'a FeatureSet),
    Streamed(&'a StreamedSet<'a>),
}

impl<'a> From<&'a FeatureSet> for Features<'a> {
    fn from(set: &'a FeatureSet) -> Self {
        Self::InMemory(set)
    }
}

impl<'a> From<&'a StreamedSet<'a>> for Features<'a> {
    fn from(set: &'a StreamedSet<'a>) -> Self {
        Self::Streamed(set)
    }
}

impl Features<'_> {
    pub fn len(&self) -> i64 {
        match self {
            Self::InMemory(set) => set.len(),
            Self::Streamed(set) => set.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Augmented passes (1 when plain).
    pub fn passes(&self) -> usize {
        match self {
            Self::InMemory(set) => set.passes.len(),
            Self::Streamed(set) => set.passes(),
        }
    }

    /// `[N, ...]` of each pass.
    fn shapes(&self) -> Vec<Vec<i64>> {
        match self {
            Self::InMemory(set) => set.passes.iter().map(Tensor::size).collect(),
            Self::Streamed(set) => vec![set.shape(); set.passes()],
        }
    }
}

/// A head, its variables and its optimizer, on training and validation features.
pub struct FeatureTask<'a> {
    head: &'a DenseHead,
    vs: &'a nn::VarStore,
    optimizer: OptimizerSpec,
    train: Features<'a>,
    val: Features<'a>,
    /// In memory: all passes stacked (row `p * N + i` is sample `i` of pass `p`).
    stacked: Option<Tensor>,
    batch_size: i64,
    seed: u64,
    /// This epoch's rows of the passes stacked and sample indices, in visiting order.
    rows: Vec<i64>,
    samples: Vec<i64>,
    /// The same on the features' device (in memory).
    rows_t: Tensor,
    samples_t: Tensor,
}

impl<'a> FeatureTask<'a> {
    /// Checks the sets (not empty, widths fit the head) before any training.
    pub fn new(
        (head, vs): (&'a DenseHead, &'a nn::VarStore),
        optimizer: OptimizerSpec,
        (train, val): (impl Into<Features<'a>>, impl Into<Features<'a>>),
        batch_size: i64,
        seed: u64,
    ) -> Result<Self, TrainError> {
        let (train, val) = (train.into(), val.into());
        if train.is_empty() || val.is_empty() || train.passes() == 0 || val.passes() == 0 {
            return Err(TrainError::Config(
                "training and validation sets must not be empty".into(),
            ));
        }
        if batch_size < 1 {
            return Err(TrainError::Config("the batch size must be at least 1".into()));
        }
        for shape in train.shapes().iter().chain(&val.shapes()[..1]) {
            head.check_input(shape)?;
        }
        let stacked = match train {
            Features::InMemory(set) if set.passes.len() == 1 => Some(set.passes[0].shallow_clone()),
            Features::InMemory(set) => Some(Tensor::f_cat(&set.passes, 0)?),
            Features::Streamed(_) => None,
        };
        let empty = Tensor::from_slice::<i64>(&[]);
        Ok(Self {
            head,
            vs,
            optimizer,
            train,
            val,
            stacked,
            batch_size,
            seed,
            rows: Vec::new(),
            samples: Vec::new(),
            rows_t: empty.shallow_clone(),
            samples_t: empty,
        })
    }
}

impl Task for FeatureTask<'_> {
    fn steps_per_epoch(&self) -> usize {
        (self.train.len() as usize).div_ceil(self.batch_size as usize)
    }

    fn begin_epoch(&mut self, epoch: usize) -> Result<(), BoxError> {
        let n = self.train.len();
        let k = self.train.passes() as u64;
        let order = epoch_permutation(n as usize, self.seed, epoch as u64);
        let mut pass_rng = epoch_rng(self.seed, epoch as u64, 1);
        self.rows =
            order
                .iter()
                .map(|&i| {
                    if k == 1 { i as i64 } else { (pass_rng.next_u64() % k) as i64 * n + i as i64 }
                })
                .collect();
        self.samples = order.iter().map(|&i| i as i64).collect();
        if let Some(stacked) = &self.stacked {
            let device = stacked.device();
            self.rows_t = Tensor::from_slice(&self.rows).f_to_device(device)?;
            self.samples_t = Tensor::from_slice(&self.samples).f_to_device(device)?;
        }
        Ok(())
    }

    fn batch(&mut self, _epoch: usize, step: usize) -> Result<Batch, BoxError> {
        let start = step as i64 * self.batch_size;
        let len = self.batch_size.min(self.train.len() - start);
        match (self.train, &self.stacked) {
            (Features::InMemory(train), Some(stacked)) => {
                let xs = stacked.f_index_select(0, &self.rows_t.f_narrow(0, start, len)?)?;
                let ys =
                    train.labels.f_index_select(0, &self.samples_t.f_narrow(0, start, len)?)?;
                Ok(Batch { xs, ys })
            }
            (Features::Streamed(train), _) => {
                let at = start as usize..(start + len) as usize;
                let xs = train.stacked_rows(&self.rows[at.clone()])?;
                let ys: Vec<i64> =
                    self.samples[at].iter().map(|&i| train.labels[i as usize]).collect();
                let ys = Tensor::from_slice(&ys).f_to_device(train.device)?;
                Ok(Batch { xs, ys })
            }
            (Features::InMemory(_), None) => unreachable!("in-memory features are stacked in new"),
        }
    }

    fn step_seed(&self, _epoch: usize, _step: usize) -> Option<i64> {
        None
    }

    fn enter_phase(&self, _phase: usize) -> Vec<(OptimizerSpec, Vec<(String, Tensor)>)> {
        vec![(self.optimizer, self.trainable())]
    }

    fn forward(&self, xs: &Tensor, _phase: usize) -> Result<Tensor, BoxError> {
        Ok(self.head.forward_t(xs, true)?)
    }

    fn validate(&self) -> Result<Evaluation, BoxError> {
        Ok(evaluate_features(self.head, self.val, self.batch_size)?)
    }

    fn trainable(&self) -> Vec<(String, Tensor)> {
        models::tensor_file::named_variables(self.vs)
    }
}

/// Runs `head` over `xs` `[N, ...]` in batches without dropout or gradients; `labels` `[N]`.
pub fn evaluate(
    head: &DenseHead,
    xs: &Tensor,
    labels: &Tensor,
    batch_size: i64,
) -> Result<Evaluation, TrainError> {
    let truth = Vec::<i64>::try_from(labels.f_to_device(tch::Device::Cpu)?)?;
    evaluate_batches(head, truth, batch_size, |start, len| {
        Ok((xs.f_narrow(0, start, len)?, labels.f_narrow(0, start, len)?))
    })
}

/// [`evaluate`] on the first pass of `set`; streamed features are read in sequential batches,
/// never whole.
pub fn evaluate_features<'a>(
    head: &DenseHead,
    set: impl Into<Features<'a>>,
    batch_size: i64,
) -> Result<Evaluation, TrainError> {
    match set.into() {
        Features::InMemory(set) => evaluate(head, &set.passes[0], &set.labels, batch_size),
        Features::Streamed(set) => {
            evaluate_batches(head, set.labels.clone(), batch_size, |start, len| {
                set.range(start, len)
            })
        }
    }
}

/// The evaluation loop: `batch(start, len)` gives rows `start..start + len` and their labels.
fn evaluate_batches(
    head: &DenseHead,
    truth: Vec<i64>,
    batch_size: i64,
    mut batch: impl FnMut(i64, i64) -> Result<(Tensor, Tensor), TrainError>,
) -> Result<Evaluation, TrainError> {
    if batch_size < 1 {
        return Err(TrainError::Config("the batch size must be at least 1".into()));
    }
    let n = truth.len() as i64;
    let mut total_loss = 0.0;
    let mut predictions = Vec::with_capacity(n as usize);
    tch::no_grad(|| -> Result<(), TrainError> {
        let mut start = 0;
        while start < n {
            let len = batch_size.min(n - start);
            let (x, y) = batch(start, len)?;
            let logits = head.forward_t(&x, false)?;
            total_loss += loss(&logits, &y)?.f_double_value(&[])? * len as f64;
            predictions
                .extend(Vec::<i64>::try_from(predict(&logits)?.f_to_device(tch::Device::Cpu)?)?);
            start += len;
        }
        Ok(())
    })?;
    let correct = truth.iter().zip(&predictions).filter(|(a, b)| a == b).count();
    Ok(Evaluation {
        loss: total_loss / n.max(1) as f64,
        acc: correct as f64 / n.max(1) as f64,
        predictions,
    })
}

/// How to train a head on features.
#[derive(Debug, Clone, PartialEq)]
pub struct HeadFit {
    pub epochs: usize,
    pub batch_size: i64,
    pub seed: u64,
    /// Stop after this many epochs without a lower validation loss.
    pub early_stopping_patience: Option<usize>,
    /// Put the best epoch's weights back at the end.
    pub restore_best: bool,
}

/// Trains `head` (variables in `vs`) with `optimizer` on `train`, validating on `val` (each held
/// in memory or streamed): the one loop ([`crate::fit_loop`]) with a [`FeatureTask`], one phase,
/// no checkpoints. `on_epoch` sees the history after every epoch.
pub fn fit_head<'a>(
    (head, vs): (&DenseHead, &nn::VarStore),
    optimizer: OptimizerSpec,
    (train, val): (impl Into<Features<'a>>, impl Into<Features<'a>>),
    config: &HeadFit,
    on_epoch: impl FnMut(&[crate::EpochRecord]) -> Result<(), BoxError>,
) -> Result<crate::fit_loop::Fitted, TrainError> {
    let (train, val): (Features<'_>, Features<'_>) = (train.into(), val.into());
    let mut task =
        FeatureTask::new((head, vs), optimizer, (train, val), config.batch_size, config.seed)?;
    let fit = crate::FitConfig {
        phases: vec![crate::PhasePlan { name: "head".into(), epochs: config.epochs }],
        early_stopping: config
            .early_stopping_patience
            .map(|patience| crate::EarlyStopping { patience }),
        restore_best: config.restore_best,
        checkpoints: None,
        stop_after_steps: None,
        autocast: false,
    };
    match fit.run(&mut task, crate::TrainState::new(String::new()), None, on_epoch)? {
        crate::Outcome::Finished(fitted) => Ok(fitted),
        crate::Outcome::Stopped(_) => unreachable!("no stop_after_steps was set"),
    }
}
