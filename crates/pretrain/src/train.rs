//! The epoch loop of training from scratch, Keras `model.fit` style: each epoch visits every
//! training image once in the order `training::fit::epoch_permutation(seed, epoch)`, each image
//! augmented (when asked) by `AugmentConfig::sample(seed, epoch, index)`, libtorch reseeded from
//! `(seed, epoch, step)` before each step (dropout), then one validation pass. A non-finite loss
//! stops training with the epoch and step named. With `restore_best`, the weights of the epoch
//! with the lowest validation loss are put back at the end.

use anyhow::{Result, bail};
use augment::AugmentConfig;
use rayon::prelude::*;
use tch::{Device, Kind, Tensor};
use training::head::{loss, predict};
use training::{EpochRecord, Optimizer};

use crate::data::Images;
use crate::net::ConvNet;

/// How to train.
#[derive(Debug, Clone)]
pub struct TrainConfig {
    pub epochs: usize,
    pub batch_size: usize,
    pub seed: u64,
    pub augment: Option<AugmentConfig>,
    /// Put back the weights of the epoch with the lowest validation loss when training ends.
    pub restore_best: bool,
}

/// Loss, accuracy and predictions of the network on a split.
#[derive(Debug, Clone)]
pub struct Evaluation {
    pub loss: f64,
    pub acc: f64,
    pub predictions: Vec<i64>,
}

/// What training did: the history, and the epoch whose weights the network holds now.
#[derive(Debug, Clone)]
pub struct Trained {
    pub history: Vec<EpochRecord>,
    pub kept_epoch: usize,
}

/// The libtorch seed of step `step` of `epoch` (dropout masks): a pure function, so no RNG state
/// ever needs saving.
pub fn step_seed(seed: u64, epoch: usize, step: usize) -> i64 {
    // SplitMix64 over the words: cheap, well mixed, the same on every platform.
    let mut h = 0x243f_6a88_85a3_08d3u64;
    for w in [seed, 0x7072_6574_7261_696e, epoch as u64, step as u64] {
        h ^= w;
        h = h.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = h;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        h = z ^ (z >> 31);
    }
    (h >> 1) as i64
}

/// Images `indices` of `images` as an RGB8 `[N, H, W, 3]` tensor on `device`, augmented with
/// the transform of `(seed, epoch, index)` when `augment` is set.
pub fn batch_tensor(
    images: &Images,
    indices: &[usize],
    augment: Option<(&AugmentConfig, u64, u64)>,
    device: Device,
) -> Result<Tensor> {
    let (len, s) = (images.image_len(), images.size);
    let mut buf = vec![0u8; indices.len() * len];
    buf.par_chunks_mut(len).zip(indices.par_iter()).try_for_each(|(dst, &i)| -> Result<()> {
        match augment {
            Some((config, seed, epoch)) => {
                config.sample(seed, epoch, i as u64).apply_u8(images.image(i), s, s, 3, dst)?
            }
            None => dst.copy_from_slice(images.image(i)),
        }
        Ok(())
    })?;
    let t = Tensor::from_slice(&buf).f_view([indices.len() as i64, s as i64, s as i64, 3])?;
    Ok(t.f_to_device(device)?)
}

/// Runs the network over `images` in batches (dropout off, no gradients).
pub fn evaluate(net: &ConvNet, images: &Images, batch_size: usize) -> Result<Evaluation> {
    let device = net.vs.device();
    let n = images.len();
    let (mut total, mut predictions) = (0.0, Vec::with_capacity(n));
    tch::no_grad(|| -> Result<()> {
        for start in (0..n).step_by(batch_size.max(1)) {
            let indices: Vec<usize> = (start..(start + batch_size).min(n)).collect();
            let xs = batch_tensor(images, &indices, None, device)?;
            let ys = Tensor::from_slice(&images.labels[start..start + indices.len()])
                .f_to_device(device)?;
            let logits = net.forward_t(&xs, false)?;
            total += loss(&logits, &ys)?.f_double_value(&[])? * indices.len() as f64;
            predictions.extend(Vec::<i64>::try_from(predict(&logits)?.f_to_device(Device::Cpu)?)?);
        }
        Ok(())
    })?;
    let correct = images.labels.iter().zip(&predictions).filter(|(a, b)| a == b).count();
    Ok(Evaluation {
        loss: total / n.max(1) as f64,
        acc: correct as f64 / n.max(1) as f64,
        predictions,
    })
}

/// Trains `net` on `train`, validating on `val` after every epoch; `on_epoch` sees each finished
/// epoch (to write the history as training goes).
pub fn fit(
    net: &ConvNet,
    optimizer: &mut Optimizer,
    train: &Images,
    val: &Images,
    config: &TrainConfig,
    mut on_epoch: impl FnMut(&EpochRecord) -> Result<()>,
) -> Result<Trained> {
    if train.is_empty() || val.is_empty() {
        bail!("training and validation splits must not be empty");
    }
    if config.batch_size == 0 || config.epochs == 0 {
        bail!("--batch-size and --epochs must be at least 1");
    }
    let device = net.vs.device();
    let n = train.len();
    let mut history = Vec::with_capacity(config.epochs);
    let mut best: Option<(f64, usize, Vec<Tensor>)> = None;
    for epoch in 0..config.epochs {
        let started = std::time::Instant::now();
        let order = training::fit::epoch_permutation(n, config.seed, epoch as u64);
        let (mut loss_sum, mut correct) = (0.0, 0i64);
        for (step, indices) in order.chunks(config.batch_size).enumerate() {
            let augment = config.augment.as_ref().map(|a| (a, config.seed, epoch as u64));
            let xs = batch_tensor(train, indices, augment, device)?;
            let labels: Vec<i64> = indices.iter().map(|&i| train.labels[i]).collect();
            let ys = Tensor::from_slice(&labels).f_to_device(device)?;
            tch::manual_seed(step_seed(config.seed, epoch, step));
            optimizer.zero_grad();
            let logits = net.forward_t(&xs, true)?;
            let batch_loss = loss(&logits, &ys)?;
            let value = batch_loss.f_double_value(&[])?;
            if !value.is_finite() {
                bail!(
                    "the training loss is {value} at epoch {}, step {}: lower --lr",
                    epoch + 1,
                    step + 1
                );
            }
            batch_loss.f_backward()?;
            optimizer.step();
            loss_sum += value * indices.len() as f64;
            correct += predict(&logits)?.f_eq_tensor(&ys)?.f_sum(Kind::Int64)?.f_int64_value(&[])?;
        }
        let val_eval = evaluate(net, val, config.batch_size)?;
        if !val_eval.loss.is_finite() {
            bail!("the validation loss is {} after epoch {}: lower --lr", val_eval.loss, epoch + 1);
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
            seconds = record.seconds,
            "epoch done"
        );
        on_epoch(&record)?;
        history.push(record);
        if config.restore_best && best.as_ref().is_none_or(|(b, _, _)| val_eval.loss < *b) {
            best = Some((
                val_eval.loss,
                epoch + 1,
                net.variables().into_iter().map(|(_, t)| t.copy()).collect(),
            ));
        }
    }
    let mut kept_epoch = history.len();
    if let Some((_, epoch, snapshot)) = best {
        for ((_, var), saved) in net.variables().iter().zip(&snapshot) {
            tch::no_grad(|| var.shallow_clone().f_copy_(saved))?;
        }
        kept_epoch = epoch;
        tracing::info!(epoch, "kept the weights of the epoch with the lowest validation loss");
    }
    Ok(Trained { history, kept_epoch })
}
