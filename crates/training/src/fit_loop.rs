//! The one training loop (Keras `model.fit`) behind train-head, fine-tune and pretrain: phases,
//! epochs of steps, validation after every epoch, the best epoch kept (by validation loss, as
//! Keras' `ModelCheckpoint(save_best_only=True)`), early stopping (`EarlyStopping(patience,
//! restore_best_weights)`), checkpoints with exact resume, a non-finite loss guard, the history,
//! and where each epoch's time went.
//!
//! What differs between the stages is a [`Task`]: the model, how step `s` of epoch `e` gets its
//! batch, what trains in each phase. Epochs are numbered globally across phases; a phase change
//! builds fresh optimizers (Keras recompiles between the seed's two phases). When the task reseeds
//! libtorch before every step from `(seed, epoch, step)` and draws its batches from the same
//! numbers, the state needed to continue is the trainable weights, the optimizer slots and
//! `(epoch, step)`: that is what a checkpoint holds, with the running sums of the epoch and the
//! history so far, so a resumed run on the CPU with the same thread count ends bit-identical to
//! an uninterrupted one.

use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use crate::checkpoint::{CheckpointDir, exact_f64};
use crate::head::{loss, predict};
use crate::{EpochRecord, Optimizer, OptimizerSpec, TrainError};

/// Checkpoint slot written after every epoch (and every `every_steps` steps).
pub const LATEST: &str = "latest";
/// Checkpoint slot written whenever the validation loss improves.
pub const BEST: &str = "best";
/// Version of [`TrainState`] and the checkpoint tensors; a checkpoint of another version is not
/// resumed. 3: one loop for every stage (phase by index, early-stopping counter).
pub const STATE_VERSION: u32 = 3;

/// What a task's methods may fail with (any error; the loop wraps it in [`TrainError::Task`]).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Loss, accuracy and predicted classes of a model on a split (dropout off, no gradients).
#[derive(Debug, Clone)]
pub struct Evaluation {
    /// Mean loss per sample.
    pub loss: f64,
    /// Fraction of samples predicted right, 0..=1.
    pub acc: f64,
    /// Predicted class index per sample, in the split's order.
    pub predictions: Vec<i64>,
}

/// One training batch on the device: inputs and class indices `[N]` (int64).
#[derive(Debug)]
pub struct Batch {
    pub xs: Tensor,
    pub ys: Tensor,
}

/// What the loop trains: the model, its batches and what trains in each phase.
pub trait Task {
    /// Optimizer steps in one epoch.
    fn steps_per_epoch(&self) -> usize;
    /// Called before the first step this process runs of `epoch` (0-based, global), also when
    /// resuming in the middle of it.
    fn begin_epoch(&mut self, _epoch: usize) -> Result<(), BoxError> {
        Ok(())
    }
    /// The batch of step `step` of `epoch`.
    fn batch(&mut self, epoch: usize, step: usize) -> Result<Batch, BoxError>;
    /// The libtorch seed to set before step `step` of `epoch` (dropout masks), or `None` to let
    /// the global generator run on (then a run is not exactly resumable).
    fn step_seed(&self, epoch: usize, step: usize) -> Option<i64>;
    /// Sets what trains in `phase` (`requires_grad`) and returns the optimizer groups: a spec
    /// and its parameters, sorted by name.
    fn enter_phase(&self, phase: usize) -> Vec<(OptimizerSpec, Vec<(String, Tensor)>)>;
    /// Training forward pass of `phase`: inputs -> logits `[N, 1 | classes]`, dropout on.
    fn forward(&self, xs: &Tensor, phase: usize) -> Result<Tensor, BoxError>;
    /// The validation split's evaluation with the current weights.
    fn validate(&self) -> Result<Evaluation, BoxError>;
    /// Every tensor that trains in some phase, sorted by name: what checkpoints and the kept
    /// best epoch hold.
    fn trainable(&self) -> Vec<(String, Tensor)>;
}

/// One phase: a name for logs and `epochs` epochs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PhasePlan {
    pub name: String,
    pub epochs: usize,
}

/// Early stopping on validation loss (Keras `EarlyStopping(monitor='val_loss')`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EarlyStopping {
    /// Epochs without improvement before stopping.
    pub patience: usize,
}

/// Where checkpoints go.
#[derive(Debug, Clone, Copy)]
pub struct Checkpointing<'a> {
    pub dir: &'a CheckpointDir,
    /// Metadata of every checkpoint's tensor file.
    pub metadata: &'a HashMap<String, String>,
    /// Also save `latest` every this many steps inside an epoch (0: at epoch ends only).
    pub every_steps: usize,
}

/// How to train.
pub struct FitConfig<'a> {
    pub phases: Vec<PhasePlan>,
    pub early_stopping: Option<EarlyStopping>,
    /// Put the weights of the best epoch (lowest validation loss) back at the end.
    pub restore_best: bool,
    pub checkpoints: Option<Checkpointing<'a>>,
    /// Test hook: after this many steps in this process, save `latest` and stop.
    pub stop_after_steps: Option<usize>,
    /// Run batch building, forward passes and validation under libtorch's autocast (CUDA mixed
    /// precision; a no-op elsewhere).
    pub autocast: bool,
}

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

/// The best epoch by validation loss.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Best {
    /// 1-based.
    pub epoch: usize,
    #[serde(with = "exact_f64")]
    pub val_loss: f64,
    #[serde(with = "exact_f64")]
    pub val_acc: f64,
}

/// Where a run stands: the JSON half of a checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    pub version: u32,
    /// config.json's digest: a checkpoint only resumes the run it belongs to.
    pub config_sha256: String,
    /// 0-based global epoch in progress and the steps of it already done.
    pub epoch: usize,
    pub step: usize,
    /// Index of the phase the optimizer state belongs to.
    pub phase: usize,
    pub optimizer_steps: i64,
    pub running: Running,
    pub history: Vec<EpochRecord>,
    pub best: Option<Best>,
    /// Epochs since the best one (early stopping).
    pub since_best: usize,
}

impl TrainState {
    pub fn new(config_sha256: String) -> Self {
        Self {
            version: STATE_VERSION,
            config_sha256,
            epoch: 0,
            step: 0,
            phase: 0,
            optimizer_steps: 0,
            running: Running::default(),
            history: Vec::new(),
            best: None,
            since_best: 0,
        }
    }
}

/// Where the wall time of one epoch went, in seconds (only the steps this process ran). On the
/// CPU every operation is synchronous, so the parts are exact; on CUDA the loss read-back is the
/// only synchronisation, so queued work shows up under `forward`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Breakdown {
    /// 1-based epoch.
    pub epoch: usize,
    /// Building the batch (augmentation and a frozen trunk, or a gather from cached features).
    pub batch: f64,
    /// The trainable part's forward pass, the loss and its read-back.
    pub forward: f64,
    pub backward: f64,
    pub optimizer: f64,
    /// Accuracy bookkeeping and checkpoints inside the epoch.
    pub other: f64,
    /// The validation pass at the end of the epoch.
    pub validation: f64,
}

/// How the loop ended.
#[derive(Debug)]
pub enum Outcome {
    /// Every epoch ran, or early stopping ended the run.
    Finished(Fitted),
    /// `stop_after_steps` reached; `latest` holds the state.
    Stopped(TrainState),
}

/// A finished run.
#[derive(Debug)]
pub struct Fitted {
    pub state: TrainState,
    /// The time breakdown of each epoch this process ran.
    pub breakdowns: Vec<Breakdown>,
    /// The epoch whose weights the task holds now (1-based): the best with `restore_best`,
    /// else the last.
    pub kept_epoch: usize,
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
    fn new(task: &impl Task, phase: usize) -> Self {
        Self(task.enter_phase(phase).into_iter().map(|(spec, p)| Optimizer::new(spec, p)).collect())
    }

    fn zero_grad(&mut self) {
        self.0.iter_mut().for_each(Optimizer::zero_grad);
    }

    fn step(&mut self) {
        self.0.iter_mut().for_each(Optimizer::step);
    }

    fn steps(&self) -> i64 {
        self.0.first().map_or(0, Optimizer::steps)
    }

    fn state_tensors(&self) -> Vec<(String, Tensor)> {
        self.0.iter().flat_map(Optimizer::state_tensors).collect()
    }

    fn load_state(&mut self, tensors: &[(String, Tensor)], steps: i64) -> Result<(), TrainError> {
        self.0.iter_mut().try_for_each(|o| o.load_state(tensors, steps))
    }

    fn lr(&self) -> f64 {
        self.0.first().map_or(0.0, |o| o.spec().lr())
    }
}

fn task_err(e: BoxError) -> TrainError {
    TrainError::Task(e)
}

fn copy_all(vars: &[(String, Tensor)]) -> Vec<(String, Tensor)> {
    vars.iter().map(|(n, t)| (n.clone(), t.copy())).collect()
}

impl FitConfig<'_> {
    fn total_epochs(&self) -> usize {
        self.phases.iter().map(|p| p.epochs).sum()
    }

    fn phase_of(&self, epoch: usize) -> usize {
        let mut end = 0;
        for (i, p) in self.phases.iter().enumerate() {
            end += p.epochs;
            if epoch < end {
                return i;
            }
        }
        self.phases.len().saturating_sub(1)
    }

    fn save(
        &self,
        slot: &str,
        task: &impl Task,
        groups: &Groups,
        state: &TrainState,
    ) -> Result<(), TrainError> {
        let Some(c) = self.checkpoints else { return Ok(()) };
        let mut tensors = task.trainable();
        tensors.extend(groups.state_tensors());
        let pointer = c.dir.save(slot, &tensors, c.metadata, state)?;
        tracing::debug!(
            slot,
            seq = pointer.seq,
            epoch = state.epoch,
            step = state.step,
            "checkpoint saved"
        );
        Ok(())
    }

    /// Trains `task` from `state` to the end. `resume`: the checkpoint's tensors (trainable
    /// weights and optimizer slots) to put back first, and the file they came from. `on_epoch`
    /// sees the history after every epoch (to write history.csv as training goes).
    pub fn run(
        &self,
        task: &mut impl Task,
        mut state: TrainState,
        resume: Option<(&[(String, Tensor)], &Path)>,
        mut on_epoch: impl FnMut(&[EpochRecord]) -> Result<(), BoxError>,
    ) -> Result<Outcome, TrainError> {
        if task.steps_per_epoch() == 0 {
            return Err(TrainError::Config("an epoch must have at least one step".into()));
        }

        let mut groups = Groups::new(task, state.phase);
        let mut best_weights: Option<Vec<(String, Tensor)>> = None;
        if let Some((tensors, path)) = resume {
            models::tensor_file::copy_into_named(&task.trainable(), tensors, path)?;
            groups.load_state(tensors, state.optimizer_steps)?;
            if self.restore_best
                && state.best.is_some()
                && let Some(c) = self.checkpoints
            {
                // The weights to put back at the end live only in the `best` checkpoint.
                let best = c.dir.load::<TrainState>(BEST)?.ok_or_else(|| {
                    TrainError::Config(format!(
                        "{}: missing, but {} records a best epoch whose weights the run must keep: resume is impossible, start afresh without --resume",
                        c.dir.pointer_path(BEST).display(),
                        path.display()
                    ))
                })?;
                best_weights = Some(best.tensors);
            }
        }
        let total = self.total_epochs();
        let steps_per_epoch = task.steps_per_epoch();
        let mut steps_here = 0usize;
        let mut breakdowns = Vec::new();
        while state.epoch < total {
            let epoch = state.epoch;
            let phase = self.phase_of(epoch);
            if phase != state.phase {
                groups = Groups::new(task, phase);
                state.phase = phase;
                state.optimizer_steps = 0;
            }
            let _span =
                tracing::info_span!("epoch", epoch = epoch + 1, phase = %self.phases[phase].name)
                    .entered();
            task.begin_epoch(epoch).map_err(task_err)?;
            let bar = progress(steps_per_epoch, epoch + 1, total);
            bar.set_position(state.step as u64);
            let mut started = Instant::now();
            let mut times = Breakdown { epoch: epoch + 1, ..Breakdown::default() };
            let mut laps = Laps(Instant::now());
            for step in state.step..steps_per_epoch {
                let Batch { xs, ys } =
                    tch::autocast(self.autocast, || task.batch(epoch, step)).map_err(task_err)?;
                laps.lap(&mut times.batch);
                if let Some(seed) = task.step_seed(epoch, step) {
                    tch::manual_seed(seed);
                }
                groups.zero_grad();
                // The loss inside too: autocast computes it in float32 from half-precision logits.
                let (logits, batch_loss) =
                    tch::autocast(self.autocast, || -> Result<(Tensor, Tensor), TrainError> {
                        let logits = task.forward(&xs, phase).map_err(task_err)?;
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
                    });
                }
                batch_loss.f_backward()?;
                laps.lap(&mut times.backward);
                groups.step();
                laps.lap(&mut times.optimizer);
                let len = ys.size()[0];
                state.running.loss_sum += value * len as f64;
                state.running.correct +=
                    predict(&logits)?.f_eq_tensor(&ys)?.f_sum(Kind::Int64)?.f_int64_value(&[])?;
                state.running.seen += len;
                state.step = step + 1;
                state.optimizer_steps = groups.steps();
                bar.inc(1);
                steps_here += 1;
                let stop = self.stop_after_steps == Some(steps_here);
                let periodic = self.checkpoints.is_some_and(|c| {
                    c.every_steps > 0
                        && state.step.is_multiple_of(c.every_steps)
                        && state.step < steps_per_epoch
                });
                if stop || periodic {
                    state.running.seconds += started.elapsed().as_secs_f64();
                    started = Instant::now();
                    self.save(LATEST, task, &groups, &state)?;
                }
                if stop {
                    bar.abandon();
                    return Ok(Outcome::Stopped(state));
                }
                laps.lap(&mut times.other);
            }
            bar.finish_and_clear();
            let val = tch::autocast(self.autocast, || task.validate()).map_err(task_err)?;
            laps.lap(&mut times.validation);
            if !val.loss.is_finite() {
                return Err(TrainError::NonFiniteValidation { epoch: epoch + 1, loss: val.loss });
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
                phase = %self.phases[phase].name,
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
            on_epoch(&state.history).map_err(task_err)?;
            if state.best.as_ref().is_none_or(|b| val.loss < b.val_loss) {
                state.best = Some(Best { epoch: epoch + 1, val_loss: val.loss, val_acc: val.acc });
                state.since_best = 0;
                if self.restore_best {
                    best_weights = Some(copy_all(&task.trainable()));
                }
                self.save(BEST, task, &groups, &state)?;
            } else {
                state.since_best += 1;
            }
            self.save(LATEST, task, &groups, &state)?;
            if let Some(es) = self.early_stopping
                && state.since_best >= es.patience
            {
                tracing::info!(
                    epoch = epoch + 1,
                    patience = es.patience,
                    "early stopping: validation loss stopped improving"
                );
                break;
            }
        }
        let mut kept_epoch = state.history.len();
        if let (true, Some(best), Some(weights)) = (self.restore_best, &state.best, &best_weights) {
            models::tensor_file::copy_into_named(
                &task.trainable(),
                weights,
                Path::new("best epoch"),
            )?;
            kept_epoch = best.epoch;
            tracing::info!(
                epoch = kept_epoch,
                "kept the weights of the epoch with the lowest validation loss"
            );
        }
        Ok(Outcome::Finished(Fitted { state, breakdowns, kept_epoch }))
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

/// The `latest` checkpoint to continue from when `resume` is asked (`None` when not asked, or
/// when there is none yet: a warning says training starts afresh). A checkpoint of another
/// [`STATE_VERSION`] or of a run with other settings (`config_sha256`, config.json's digest) is
/// refused, naming it.
pub fn resume_point(
    dir: &CheckpointDir,
    config_sha256: &str,
    resume: bool,
) -> Result<Option<crate::checkpoint::Checkpoint<TrainState>>, TrainError> {
    if !resume {
        return Ok(None);
    }
    let path = dir.pointer_path(LATEST);
    // The version first, from the raw state, so an older checkpoint is named, not misread.
    let Some(raw) = dir.load::<serde_json::Value>(LATEST)? else {
        tracing::warn!(dir = %dir.dir().display(), "--resume: no checkpoint, starting afresh");
        return Ok(None);
    };
    let version = raw.state.get("version").and_then(serde_json::Value::as_u64);
    let recorded = raw.state.get("config_sha256").and_then(serde_json::Value::as_str);
    if version != Some(u64::from(STATE_VERSION)) || recorded != Some(config_sha256) {
        return Err(TrainError::Config(format!(
            "{}: the checkpoint belongs to a run with other settings (state version {}, config sha256 {}; now {STATE_VERSION}, {config_sha256}): run with the same flags, or without --resume to start afresh",
            path.display(),
            version.map_or_else(|| "?".to_owned(), |v| v.to_string()),
            recorded.unwrap_or("?"),
        )));
    }
    let checkpoint = dir.load::<TrainState>(LATEST)?.ok_or_else(|| {
        TrainError::Config(format!("{}: the checkpoint vanished while reading it", path.display()))
    })?;
    tracing::info!(epoch = checkpoint.state.epoch + 1, step = checkpoint.state.step, "resuming");
    Ok(Some(checkpoint))
}
