//! The two-phase training loop with exact resume.
//!
//! Epochs are numbered globally: `0..head_epochs` train the head with the whole base frozen,
//! the next `epochs` train the top of the base with the head (a fresh optimizer, as Keras'
//! recompile). Every step reseeds libtorch from `(seed, epoch, step)` and draws its batch from the
//! epoch plan, so the state needed to continue is the trainable weights, the optimizer slots and
//! `(epoch, step)`: that is what a checkpoint holds, with the running sums of the epoch and the
//! history so far. `latest` is written after every epoch (and every `checkpoint_every` steps),
//! `best` whenever the validation loss improves.

use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};
use training::checkpoint::{CheckpointDir, exact_f64};
use training::head::{loss, predict};
use training::{EpochRecord, Evaluation, Optimizer, OptimizerSpec, TrainError};

use crate::data::{EpochPlan, TrainSource, TrunkSet, step_seed};
use crate::net::{Net, Phase};

pub const LATEST: &str = "latest";
pub const BEST: &str = "best";
/// Version of [`TrainState`] and the checkpoint tensors; a checkpoint of another version is not
/// resumed. 2: RMSprop's slot is `optim.v_eps.*` (Keras' v plus epsilon).
pub const STATE_VERSION: u32 = 2;

/// Sums over the steps of the epoch in progress.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Running {
    #[serde(with = "exact_f64")]
    pub loss_sum: f64,
    pub correct: i64,
    pub seen: i64,
    #[serde(with = "exact_f64")]
    pub seconds: f64,
}

/// The best epoch by validation loss (Keras `ModelCheckpoint(save_best_only=True)`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Best {
    /// 1-based.
    pub epoch: usize,
    #[serde(with = "exact_f64")]
    pub val_loss: f64,
    #[serde(with = "exact_f64")]
    pub val_acc: f64,
}

/// The JSON half of a checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    pub version: u32,
    /// config.json's digest: a checkpoint only resumes the run it belongs to.
    pub config_sha256: String,
    pub seed: u64,
    /// 0-based global epoch in progress and the steps of it already done; the RNG of step `s`
    /// of epoch `e` is `tch::manual_seed(step_seed(seed, e, s))`, batch order and augmentation
    /// are functions of `(seed, e, s)` too, so these two numbers are the whole RNG state.
    pub epoch: usize,
    pub step: usize,
    pub phase: Phase,
    pub optimizer_steps: i64,
    pub running: Running,
    pub history: Vec<EpochRecord>,
    pub best: Option<Best>,
}

impl TrainState {
    pub fn new(config_sha256: String, seed: u64) -> Self {
        Self {
            version: STATE_VERSION,
            config_sha256,
            seed,
            epoch: 0,
            step: 0,
            phase: Phase::Head,
            optimizer_steps: 0,
            running: Running::default(),
            history: Vec::new(),
            best: None,
        }
    }
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

/// Where the wall time of one epoch went, in seconds (only the steps this process ran). On the
/// CPU every operation is synchronous, so the parts are exact; on CUDA the loss read-back is the
/// only synchronisation, so queued work shows up under `forward`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Breakdown {
    /// 1-based epoch.
    pub epoch: usize,
    /// Building the batch: augmentation and the frozen trunk, or the gather from the trunk cache.
    pub batch: f64,
    /// The top and the head forward, the loss and its read-back.
    pub forward: f64,
    pub backward: f64,
    pub optimizer: f64,
    /// Accuracy bookkeeping and checkpoints inside the epoch.
    pub other: f64,
    /// The validation pass at the end of the epoch.
    pub validation: f64,
}

/// A stopwatch that charges the time since the last lap to one part.
struct Laps(Instant);

impl Laps {
    fn lap(&mut self, part: &mut f64) {
        let now = Instant::now();
        *part += (now - self.0).as_secs_f64();
        self.0 = now;
    }
}

/// One optimizer per parameter group; checkpoint names (`optim.<slot>.<param>`) stay unique.
struct Groups(Vec<Optimizer>);

impl Groups {
    fn new(net: &Net, phase: Phase, specs: &Optimizers) -> Self {
        net.set_phase(phase);
        Self(match phase {
            Phase::Head => vec![Optimizer::new(specs.head_phase, net.head_params())],
            Phase::FineTune => vec![
                Optimizer::new(specs.base, net.top_params()),
                Optimizer::new(specs.head, net.head_params()),
            ],
        })
    }

    fn zero_grad(&mut self) {
        self.0.iter_mut().for_each(Optimizer::zero_grad);
    }

    fn step(&mut self) {
        self.0.iter_mut().for_each(Optimizer::step);
    }

    fn steps(&self) -> i64 {
        self.0[0].steps()
    }

    fn state_tensors(&self) -> Vec<(String, Tensor)> {
        self.0.iter().flat_map(Optimizer::state_tensors).collect()
    }

    fn load_state(&mut self, tensors: &[(String, Tensor)], steps: i64) -> Result<(), TrainError> {
        self.0.iter_mut().try_for_each(|o| o.load_state(tensors, steps))
    }

    fn lr(&self) -> f64 {
        self.0[0].spec().lr()
    }
}

/// Everything the loop needs besides the network and the state.
pub struct Loop<'a> {
    pub source: &'a TrainSource,
    pub validation: &'a TrunkSet,
    pub head_epochs: usize,
    pub epochs: usize,
    pub steps_per_epoch: usize,
    pub batch_size: usize,
    pub optimizers: Optimizers,
    pub checkpoints: &'a CheckpointDir,
    pub metadata: &'a HashMap<String, String>,
    /// Also save `latest` every this many steps inside an epoch (0: at epoch ends only).
    pub checkpoint_every: usize,
    /// Test hook: after this many steps in this process, save `latest` and stop.
    pub stop_after_steps: Option<usize>,
    /// Called after every epoch with the history so far (history.csv).
    pub on_epoch: &'a dyn Fn(&[EpochRecord]) -> Result<()>,
    /// Run the forward passes under libtorch's autocast (CUDA mixed precision; a no-op elsewhere).
    pub autocast: bool,
}

/// How the loop ended.
pub enum Outcome {
    /// With the time breakdown of each epoch this process ran.
    Finished(TrainState, Vec<Breakdown>),
    /// `stop_after_steps` reached; `latest` holds the state.
    Stopped(TrainState),
}

impl Loop<'_> {
    fn total_epochs(&self) -> usize {
        self.head_epochs + self.epochs
    }

    fn phase_of(&self, epoch: usize) -> Phase {
        if epoch < self.head_epochs { Phase::Head } else { Phase::FineTune }
    }

    fn save(&self, slot: &str, net: &Net, groups: &Groups, state: &TrainState) -> Result<()> {
        let mut tensors = net.trainable();
        tensors.extend(groups.state_tensors());
        let pointer = self.checkpoints.save(slot, &tensors, self.metadata, state)?;
        tracing::debug!(
            slot,
            seq = pointer.seq,
            epoch = state.epoch,
            step = state.step,
            "checkpoint saved"
        );
        Ok(())
    }

    /// Runs from `state` to the end. `resume`: the checkpoint's tensors (trainable weights and
    /// optimizer slots) to put back first.
    pub fn run(
        &self,
        net: &Net,
        mut state: TrainState,
        resume: Option<&[(String, Tensor)]>,
        checkpoint_path: &Path,
    ) -> Result<Outcome> {
        let mut groups = Groups::new(net, state.phase, &self.optimizers);
        if let Some(tensors) = resume {
            net.load_trainable(tensors, None, checkpoint_path)?;
            groups.load_state(tensors, state.optimizer_steps).with_context(|| {
                format!("restoring the optimizer from {}", checkpoint_path.display())
            })?;
        }
        let n = self.source.len();
        let mut steps_here = 0usize;
        let mut breakdowns = Vec::new();
        while state.epoch < self.total_epochs() {
            let epoch = state.epoch;
            let phase = self.phase_of(epoch);
            if phase != state.phase {
                // Keras recompiles between the phases: fresh optimizer state.
                groups = Groups::new(net, phase, &self.optimizers);
                state.phase = phase;
                state.optimizer_steps = 0;
            }
            let _span = tracing::info_span!("epoch", epoch = epoch + 1, ?phase).entered();
            let mut plan =
                EpochPlan::new(n, self.batch_size, state.seed, epoch, self.source.passes());
            let bar = progress(self.steps_per_epoch, epoch + 1, self.total_epochs());
            bar.set_position(state.step as u64);
            let mut started = Instant::now();
            let mut times = Breakdown { epoch: epoch + 1, ..Breakdown::default() };
            let mut laps = Laps(Instant::now());
            for step in state.step..self.steps_per_epoch {
                let samples = plan.batch(step);
                let (xs, ys) = tch::autocast(self.autocast, || {
                    self.source.batch(net, &samples, state.seed, epoch)
                })?;
                laps.lap(&mut times.batch);
                tch::manual_seed(step_seed(state.seed, epoch, step));
                groups.zero_grad();
                // The loss inside too: autocast computes it in float32 from half-precision logits.
                let (logits, batch_loss) =
                    tch::autocast(self.autocast, || -> Result<(Tensor, Tensor)> {
                        let logits = net.forward(&xs, phase, true)?;
                        let batch_loss = loss(&logits, &ys)?;
                        Ok((logits, batch_loss))
                    })?;
                let value = batch_loss.f_double_value(&[])?;
                laps.lap(&mut times.forward);
                if !value.is_finite() {
                    bar.abandon();
                    return Err(TrainError::NonFinite {
                        epoch: epoch + 1,
                        step: step + 1,
                        loss: value,
                    })
                    .with_context(|| {
                        format!(
                            "the last good checkpoint is kept in {}",
                            self.checkpoints.dir().display()
                        )
                    });
                }
                batch_loss.f_backward()?;
                laps.lap(&mut times.backward);
                groups.step();
                laps.lap(&mut times.optimizer);
                state.running.loss_sum += value * samples.len() as f64;
                state.running.correct +=
                    predict(&logits)?.f_eq_tensor(&ys)?.f_sum(Kind::Int64)?.f_int64_value(&[])?;
                state.running.seen += samples.len() as i64;
                state.step = step + 1;
                state.optimizer_steps = groups.steps();
                bar.inc(1);
                steps_here += 1;
                let stop = self.stop_after_steps == Some(steps_here);
                let periodic = self.checkpoint_every > 0
                    && state.step.is_multiple_of(self.checkpoint_every)
                    && state.step < self.steps_per_epoch;
                if stop || periodic {
                    state.running.seconds += started.elapsed().as_secs_f64();
                    started = Instant::now();
                    self.save(LATEST, net, &groups, &state)?;
                }
                if stop {
                    bar.abandon();
                    return Ok(Outcome::Stopped(state));
                }
                laps.lap(&mut times.other);
            }
            bar.finish_and_clear();
            let val =
                tch::autocast(self.autocast, || evaluate(net, self.validation, self.batch_size))?;
            laps.lap(&mut times.validation);
            if !val.loss.is_finite() {
                return Err(TrainError::NonFinite {
                    epoch: epoch + 1,
                    step: self.steps_per_epoch,
                    loss: val.loss,
                })
                .context("validation loss; the last good checkpoint is kept");
            }
            let seen = state.running.seen.max(1) as f64;
            let record = EpochRecord {
                epoch: epoch + 1,
                loss: state.running.loss_sum / seen,
                acc: state.running.correct as f64 / seen,
                val_loss: val.loss,
                val_acc: val.acc,
                lr: groups.lr(),
                seconds: state.running.seconds + started.elapsed().as_secs_f64(),
            };
            tracing::info!(
                epoch = record.epoch,
                ?phase,
                loss = record.loss,
                acc = record.acc,
                val_loss = record.val_loss,
                val_acc = record.val_acc,
                seconds = record.seconds,
                "epoch done"
            );
            tracing::debug!(?times, "epoch breakdown");
            breakdowns.push(times);
            state.history.push(record);
            state.epoch += 1;
            state.step = 0;
            state.running = Running::default();
            (self.on_epoch)(&state.history)?;
            if state.best.as_ref().is_none_or(|b| val.loss < b.val_loss) {
                state.best = Some(Best { epoch: epoch + 1, val_loss: val.loss, val_acc: val.acc });
                self.save(BEST, net, &groups, &state)?;
            }
            self.save(LATEST, net, &groups, &state)?;
        }
        Ok(Outcome::Finished(state, breakdowns))
    }
}

fn progress(steps: usize, epoch: usize, total: usize) -> ProgressBar {
    let bar = ProgressBar::new(steps as u64).with_message(format!("epoch {epoch}/{total}"));
    bar.set_style(
        ProgressStyle::with_template("{msg:>14} [{bar:30}] {pos}/{len} steps {per_sec} eta {eta}")
            .expect("static template")
            .progress_chars("=> "),
    );
    bar
}

/// Loss, accuracy and predictions of the network on a split's trunk output; no dropout, no
/// gradients.
pub fn evaluate(net: &Net, set: &TrunkSet, batch_size: usize) -> Result<Evaluation> {
    let n = set.truth.len() as i64;
    let mut total = 0.0;
    let mut predictions = Vec::with_capacity(n as usize);
    tch::no_grad(|| -> Result<()> {
        for start in (0..n).step_by(batch_size) {
            let len = (batch_size as i64).min(n - start);
            let logits = net.forward(&set.xs.f_narrow(0, start, len)?, Phase::Head, false)?;
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
