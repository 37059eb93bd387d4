//! The epoch loop for a head on in-memory features (Keras `model.fit` on cached features), with
//! seeded shuffling, augmented passes drawn per sample, validation every epoch, a non-finite loss
//! guard, and early stopping with best-epoch restore.

use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};
use tch::{Kind, Tensor};

use crate::head::{DenseHead, loss, predict};
use crate::optim::Optimizer;
use crate::{EpochRecord, TrainError};

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

/// Early stopping on validation loss.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EarlyStopping {
    /// Epochs without improvement before stopping.
    pub patience: usize,
    /// Put back the weights of the best epoch when training ends.
    pub restore_best: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct FitConfig {
    pub epochs: usize,
    pub batch_size: i64,
    pub seed: u64,
    pub early_stopping: Option<EarlyStopping>,
}

/// Loss, accuracy and predictions of a model on a split.
#[derive(Debug, Clone)]
pub struct Evaluation {
    pub loss: f64,
    pub acc: f64,
    pub predictions: Vec<i64>,
}

/// A permutation of `0..n` from the seeded stream of `(seed, epoch)`: the same on every
/// machine and thread count.
pub fn epoch_permutation(n: usize, seed: u64, epoch: u64) -> Vec<usize> {
    let mut rng = epoch_rng(seed, epoch, 0);
    let mut order: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        order.swap(i, j);
    }
    order
}

/// The seeded random stream for `(seed, epoch)`; `purpose` separates independent uses.
pub fn epoch_rng(seed: u64, epoch: u64, purpose: u64) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(epoch.wrapping_mul(16).wrapping_add(purpose));
    rng
}

/// Runs `head` over `xs` in batches without dropout or gradients.
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

/// Trains `head` with `optimizer`; `on_epoch` sees each finished epoch (to write history and
/// plots as training goes). Returns the history.
pub fn fit(
    head: &DenseHead,
    vs: &tch::nn::VarStore,
    optimizer: &mut Optimizer,
    train: &FeatureSet,
    val: &FeatureSet,
    config: &FitConfig,
    mut on_epoch: impl FnMut(&EpochRecord) -> Result<(), TrainError>,
) -> Result<Vec<EpochRecord>, TrainError> {
    let n = train.len();
    if n == 0 || val.is_empty() {
        return Err(TrainError::Config("training and validation sets must not be empty".into()));
    }
    for pass in &train.passes {
        head.check_input(&pass.size())?;
    }
    head.check_input(&val.passes[0].size())?;
    let k = train.passes.len() as i64;
    // All passes stacked: row p * N + i is sample i of pass p.
    let stacked =
        if k == 1 { train.passes[0].shallow_clone() } else { Tensor::f_cat(&train.passes, 0)? };
    let device = stacked.device();

    let mut history = Vec::with_capacity(config.epochs);
    let mut best: Option<(f64, Vec<Tensor>)> = None;
    let mut since_best = 0;
    for epoch in 0..config.epochs {
        let started = std::time::Instant::now();
        let order = epoch_permutation(n as usize, config.seed, epoch as u64);
        let mut pass_rng = epoch_rng(config.seed, epoch as u64, 1);
        let rows: Vec<i64> = order
            .iter()
            .map(|&i| {
                if k == 1 {
                    i as i64
                } else {
                    (pass_rng.next_u64() % k as u64) as i64 * n + i as i64
                }
            })
            .collect();
        let rows = Tensor::from_slice(&rows).to_device(device);
        let sample_index = Tensor::from_slice(&order.iter().map(|&i| i as i64).collect::<Vec<_>>())
            .to_device(device);

        let (mut loss_sum, mut correct) = (0.0, 0i64);
        let mut start = 0;
        let mut step = 0;
        while start < n {
            let len = config.batch_size.min(n - start);
            let x = stacked.f_index_select(0, &rows.f_narrow(0, start, len)?)?;
            let y = train.labels.f_index_select(0, &sample_index.f_narrow(0, start, len)?)?;
            optimizer.zero_grad();
            let logits = head.forward_t(&x, true)?;
            let batch_loss = loss(&logits, &y)?;
            let value = batch_loss.f_double_value(&[])?;
            if !value.is_finite() {
                return Err(TrainError::NonFinite {
                    epoch: epoch + 1,
                    step: step + 1,
                    loss: value,
                });
            }
            batch_loss.f_backward()?;
            optimizer.step();
            loss_sum += value * len as f64;
            correct += predict(&logits)?.f_eq_tensor(&y)?.f_sum(Kind::Int64)?.f_int64_value(&[])?;
            start += len;
            step += 1;
        }
        let val_eval = evaluate(head, &val.passes[0], &val.labels, config.batch_size)?;
        if !val_eval.loss.is_finite() {
            return Err(TrainError::NonFinite { epoch: epoch + 1, step, loss: val_eval.loss });
        }
        let record = EpochRecord {
            epoch: epoch + 1,
            loss: loss_sum / n as f64,
            acc: correct as f64 / n as f64,
            val_loss: val_eval.loss,
            val_acc: val_eval.acc,
            lr: optimizer.spec().lr(),
            seconds: started.elapsed().as_secs_f64(),
        };
        tracing::info!(
            epoch = record.epoch,
            loss = record.loss,
            acc = record.acc,
            val_loss = record.val_loss,
            val_acc = record.val_acc,
            "epoch done"
        );
        on_epoch(&record)?;
        history.push(record);

        if let Some(es) = config.early_stopping {
            let improved = best.as_ref().is_none_or(|(b, _)| val_eval.loss < *b);
            if improved {
                let snapshot = crate::tensors_io::named_variables(vs)
                    .into_iter()
                    .map(|(_, t)| t.copy())
                    .collect();
                best = Some((val_eval.loss, snapshot));
                since_best = 0;
            } else {
                since_best += 1;
                if since_best >= es.patience {
                    tracing::info!(
                        epoch = epoch + 1,
                        patience = es.patience,
                        "early stopping: validation loss stopped improving"
                    );
                    break;
                }
            }
        }
    }
    if let (Some(es), Some((_, snapshot))) = (config.early_stopping, best)
        && es.restore_best
    {
        for ((_, var), saved) in crate::tensors_io::named_variables(vs).iter().zip(&snapshot) {
            tch::no_grad(|| var.shallow_clone().copy_(saved));
        }
    }
    Ok(history)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permutation_is_seeded_and_complete() {
        let a = epoch_permutation(100, 7, 3);
        assert_eq!(a, epoch_permutation(100, 7, 3));
        assert_ne!(a, epoch_permutation(100, 7, 4));
        assert_ne!(a, epoch_permutation(100, 8, 3));
        let mut sorted = a.clone();
        sorted.sort();
        assert_eq!(sorted, (0..100).collect::<Vec<_>>());
    }
}
