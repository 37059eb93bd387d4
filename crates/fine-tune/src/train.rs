//! Fine-tuning as a task of the one training loop (`training::fit_loop`): two phases, the head
//! alone with the whole base frozen (the seed's first 30 epochs), then the top of the base with
//! the head (fresh optimizers, as Keras' recompile). Every step reseeds libtorch from
//! `(seed, epoch, step)` and draws its batch from the epoch plan of the same numbers, so the
//! loop's checkpoints resume exactly.

use anyhow::Result;
use serde::Serialize;
use tch::Tensor;
use training::fit_loop::{Batch, BoxError, Evaluation, Task};
use training::head::{loss, predict};
use training::{OptimizerSpec, PhasePlan};

use crate::data::{EpochPlan, TrainSource, TrunkSet, step_seed};
use models::Classifier as Net;

/// Index in [`phases`] of the phase that trains the top of the base with the head (the head-only
/// phase is 0).
pub const FINE_TUNE_PHASE: usize = 1;

/// The two phases: `head_epochs` with the base frozen, then `epochs` with the top trainable.
pub fn phases(head_epochs: usize, epochs: usize) -> Vec<PhasePlan> {
    vec![
        PhasePlan { name: "head".into(), epochs: head_epochs },
        PhasePlan { name: "fine-tune".into(), epochs },
    ]
}

/// Optimizer settings of both phases.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Optimizers {
    /// Head phase: the head only.
    pub head_phase: OptimizerSpec,
    /// Fine-tuning phase: the top of the base, and the head.
    pub base: OptimizerSpec,
    pub head: OptimizerSpec,
}

/// The classifier, its data and its optimizers: what the loop trains.
pub struct FineTuneTask<'a> {
    pub net: &'a Net,
    pub source: &'a TrainSource,
    pub validation: &'a TrunkSet,
    pub steps_per_epoch: usize,
    pub batch_size: usize,
    pub seed: u64,
    pub optimizers: Optimizers,
    /// The epoch in progress's plan (set by `begin_epoch`).
    pub plan: Option<EpochPlan>,
}

impl Task for FineTuneTask<'_> {
    fn steps_per_epoch(&self) -> usize {
        self.steps_per_epoch
    }

    fn begin_epoch(&mut self, epoch: usize) -> Result<(), BoxError> {
        self.plan = Some(EpochPlan::new(
            self.source.len(),
            self.batch_size,
            self.seed,
            epoch,
            self.source.passes(),
        ));
        Ok(())
    }

    fn batch(&mut self, epoch: usize, step: usize) -> Result<Batch, BoxError> {
        let plan = self.plan.as_mut().ok_or("the epoch plan is made by begin_epoch")?;
        let samples = plan.batch(step);
        let (xs, ys) = self.source.batch(self.net, &samples, self.seed, epoch)?;
        Ok(Batch { xs, ys })
    }

    fn step_seed(&self, epoch: usize, step: usize) -> Option<i64> {
        Some(step_seed(self.seed, epoch, step))
    }

    fn enter_phase(&self, phase: usize) -> Vec<(OptimizerSpec, Vec<(String, Tensor)>)> {
        let fine_tune = phase == FINE_TUNE_PHASE;
        self.net.set_top_trainable(fine_tune);
        if fine_tune {
            vec![
                (self.optimizers.base, self.net.top_params()),
                (self.optimizers.head, self.net.head_params()),
            ]
        } else {
            vec![(self.optimizers.head_phase, self.net.head_params())]
        }
    }

    fn forward(&self, xs: &Tensor, phase: usize) -> Result<Tensor, BoxError> {
        Ok(self.net.forward_from_trunk(xs, true, phase == FINE_TUNE_PHASE)?)
    }

    fn validate(&self) -> Result<Evaluation, BoxError> {
        Ok(evaluate(self.net, self.validation, self.batch_size)?)
    }

    fn trainable(&self) -> Vec<(String, Tensor)> {
        self.net.trainable()
    }
}

/// Loss, accuracy and predictions of the network on a split's trunk output, taken batch by batch
/// (cached rows are read from the cache per batch); no dropout, no gradients.
pub fn evaluate(net: &Net, set: &TrunkSet, batch_size: usize) -> Result<Evaluation> {
    let n = set.len() as i64;
    let mut total = 0.0;
    let mut predictions = Vec::with_capacity(n as usize);
    tch::no_grad(|| -> Result<()> {
        for start in (0..n).step_by(batch_size) {
            let len = (batch_size as i64).min(n - start);
            let logits = net.forward_from_trunk(&set.rows(start, len)?, false, false)?;
            total += loss(&logits, &set.labels.f_narrow(0, start, len)?)?.f_double_value(&[])?
                * len as f64;
            predictions
                .extend(Vec::<i64>::try_from(predict(&logits)?.f_to_device(tch::Device::Cpu)?)?);
        }
        Ok(())
    })?;
    let correct = set.truth.iter().zip(&predictions).filter(|(a, b)| a == b).count();
    Ok(Evaluation {
        loss: total / n.max(1) as f64,
        acc: correct as f64 / n.max(1) as f64,
        predictions,
    })
}
