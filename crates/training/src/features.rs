//! A dense head trained on in-memory features (Keras `model.fit` on cached features): the
//! [`Task`] train-head gives the one training loop. Each epoch visits every sample once in the
//! order `epoch_permutation(seed, epoch)`; with several augmented passes each sample's pass is
//! drawn from the stream `epoch_rng(seed, epoch, 1)`, in visiting order. Dropout draws from the
//! global libtorch generator as it runs (no per-step reseed), so the run is reproducible from
//! its start, not resumable in the middle.

use rand_core::RngCore;
use tch::{Tensor, nn};

use crate::fit_loop::{Batch, BoxError, Evaluation, Task};
use crate::head::{DenseHead, loss, predict};
use crate::order::{epoch_permutation, epoch_rng};
use crate::{OptimizerSpec, TrainError};

/// Features of one split: one `[N, ...]` tensor per augmented pass (just one when plain) and
/// the labels `[N]` (int64).
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

/// A head, its variables and its optimizer, on training and validation features.
pub struct FeatureTask<'a> {
    head: &'a DenseHead,
    vs: &'a nn::VarStore,
    optimizer: OptimizerSpec,
    train: &'a FeatureSet,
    val: &'a FeatureSet,
    /// All passes stacked: row `p * N + i` is sample `i` of pass `p`.
    stacked: Tensor,
    batch_size: i64,
    seed: u64,
    /// This epoch's rows of `stacked` and sample indices, in visiting order.
    rows: Tensor,
    samples: Tensor,
}

impl<'a> FeatureTask<'a> {
    /// Checks the sets (not empty, widths fit the head) before any training.
    pub fn new(
        (head, vs): (&'a DenseHead, &'a nn::VarStore),
        optimizer: OptimizerSpec,
        (train, val): (&'a FeatureSet, &'a FeatureSet),
        batch_size: i64,
        seed: u64,
    ) -> Result<Self, TrainError> {
        if train.is_empty() || val.is_empty() {
            return Err(TrainError::Config(
                "training and validation sets must not be empty".into(),
            ));
        }
        if batch_size < 1 {
            return Err(TrainError::Config("the batch size must be at least 1".into()));
        }
        for pass in train.passes.iter().chain(&val.passes[..1]) {
            head.check_input(&pass.size())?;
        }
        let stacked = if train.passes.len() == 1 {
            train.passes[0].shallow_clone()
        } else {
            Tensor::f_cat(&train.passes, 0)?
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
            rows: empty.shallow_clone(),
            samples: empty,
        })
    }
}

impl Task for FeatureTask<'_> {
    fn steps_per_epoch(&self) -> usize {
        (self.train.len() as usize).div_ceil(self.batch_size as usize)
    }

    fn begin_epoch(&mut self, epoch: usize) -> Result<(), BoxError> {
        let n = self.train.len();
        let k = self.train.passes.len() as u64;
        let order = epoch_permutation(n as usize, self.seed, epoch as u64);
        let mut pass_rng = epoch_rng(self.seed, epoch as u64, 1);
        let rows: Vec<i64> =
            order
                .iter()
                .map(|&i| {
                    if k == 1 { i as i64 } else { (pass_rng.next_u64() % k) as i64 * n + i as i64 }
                })
                .collect();
        let device = self.stacked.device();
        self.rows = Tensor::from_slice(&rows).f_to_device(device)?;
        let samples: Vec<i64> = order.iter().map(|&i| i as i64).collect();
        self.samples = Tensor::from_slice(&samples).f_to_device(device)?;
        Ok(())
    }

    fn batch(&mut self, _epoch: usize, step: usize) -> Result<Batch, BoxError> {
        let start = step as i64 * self.batch_size;
        let len = self.batch_size.min(self.train.len() - start);
        let xs = self.stacked.f_index_select(0, &self.rows.f_narrow(0, start, len)?)?;
        let ys = self.train.labels.f_index_select(0, &self.samples.f_narrow(0, start, len)?)?;
        Ok(Batch { xs, ys })
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
        Ok(evaluate(self.head, &self.val.passes[0], &self.val.labels, self.batch_size)?)
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
    let n = labels.size()[0];
    let mut total_loss = 0.0;
    let mut predictions = Vec::with_capacity(n as usize);
    tch::no_grad(|| -> Result<(), TrainError> {
        let mut start = 0;
        while start < n {
            let len = batch_size.min(n - start);
            let x = xs.f_narrow(0, start, len)?;
            let y = labels.f_narrow(0, start, len)?;
            let logits = head.forward_t(&x, false)?;
            total_loss += loss(&logits, &y)?.f_double_value(&[])? * len as f64;
            predictions
                .extend(Vec::<i64>::try_from(predict(&logits)?.f_to_device(tch::Device::Cpu)?)?);
            start += len;
        }
        Ok(())
    })?;
    let truth = Vec::<i64>::try_from(labels.f_to_device(tch::Device::Cpu)?)?;
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

/// Trains `head` (variables in `vs`) with `optimizer` on `train`, validating on `val`: the one
/// loop ([`crate::fit_loop`]) with a [`FeatureTask`], one phase, no checkpoints. `on_epoch` sees
/// the history after every epoch.
pub fn fit_head(
    (head, vs): (&DenseHead, &nn::VarStore),
    optimizer: OptimizerSpec,
    (train, val): (&FeatureSet, &FeatureSet),
    config: &HeadFit,
    on_epoch: impl FnMut(&[crate::EpochRecord]) -> Result<(), BoxError>,
) -> Result<crate::fit_loop::Fitted, TrainError> {
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
