//! Training from scratch as a task of the one training loop (`training::fit_loop`): each epoch
//! visits every training image once in the order `training::order::epoch_permutation(seed,
//! epoch)`, each image augmented (when asked) by `AugmentConfig::sample(seed, epoch, index)`,
//! libtorch reseeded from `(seed, epoch, step)` before each step (dropout), so the loop's
//! checkpoints resume exactly. The loop validates after every epoch, stops on a non-finite loss
//! naming the epoch and step, and (unless `--keep-last`) puts back the weights of the epoch with
//! the lowest validation loss.

use anyhow::Result;
use augment::AugmentConfig;
use rayon::prelude::*;
use tch::{Device, Tensor};
use training::OptimizerSpec;
use training::fit_loop::{Batch, BoxError, Evaluation, Task};
use training::head::{loss, predict};

use crate::data::Images;
use models::Classifier;

/// The network, its data and its optimizer: what the loop trains.
pub struct PretrainTask<'a> {
    pub net: &'a Classifier,
    pub train: &'a Images,
    pub val: &'a Images,
    pub optimizer: OptimizerSpec,
    pub batch_size: usize,
    pub seed: u64,
    pub augment: Option<&'a AugmentConfig>,
    /// The epoch in progress's visiting order (set by `begin_epoch`).
    pub order: Vec<usize>,
}

impl Task for PretrainTask<'_> {
    fn steps_per_epoch(&self) -> usize {
        self.train.len().div_ceil(self.batch_size.max(1))
    }

    fn begin_epoch(&mut self, epoch: usize) -> Result<(), BoxError> {
        self.order = training::order::epoch_permutation(self.train.len(), self.seed, epoch as u64);
        Ok(())
    }

    fn batch(&mut self, epoch: usize, step: usize) -> Result<Batch, BoxError> {
        let indices = self.order.chunks(self.batch_size).nth(step).ok_or("step past the epoch")?;
        let augment = self.augment.map(|a| (a, self.seed, epoch as u64));
        let xs = batch_tensor(self.train, indices, augment, self.net.device())?;
        let labels: Vec<i64> = indices.iter().map(|&i| self.train.labels[i]).collect();
        let ys = Tensor::from_slice(&labels).f_to_device(self.net.device())?;
        Ok(Batch { xs, ys })
    }

    fn step_seed(&self, epoch: usize, step: usize) -> Option<i64> {
        Some(step_seed(self.seed, epoch, step))
    }

    fn enter_phase(&self, _phase: usize) -> Vec<(OptimizerSpec, Vec<(String, Tensor)>)> {
        vec![(self.optimizer, self.net.trainable())]
    }

    fn forward(&self, xs: &Tensor, _phase: usize) -> Result<Tensor, BoxError> {
        Ok(self.net.forward_t(xs, true)?)
    }

    fn validate(&self) -> Result<Evaluation, BoxError> {
        Ok(evaluate(self.net, self.val, self.batch_size)?)
    }

    fn trainable(&self) -> Vec<(String, Tensor)> {
        self.net.trainable()
    }
}

/// The libtorch seed of step `step` of `epoch` (dropout masks): a pure function, so no RNG state
/// ever needs saving.
pub fn step_seed(seed: u64, epoch: usize, step: usize) -> i64 {
    training::order::step_seed(seed, 0x7072_6574_7261_696e, epoch, step)
}

/// Images `indices` of `images` on `device`: an RGB8 `[N, H, W, 3]` tensor, or, augmented with
/// the transform of `(seed, epoch, index)` when `augment` is set, float RGB on the 0-255 scale
/// as an `[N, 3, H, W]` view of NHWC (Keras hands augmented pixels to the network unrounded).
pub fn batch_tensor(
    images: &Images,
    indices: &[usize],
    augment: Option<(&AugmentConfig, u64, u64)>,
    device: Device,
) -> Result<Tensor> {
    let (len, s) = (images.image_len(), images.size);
    let shape = [indices.len() as i64, s as i64, s as i64, 3];
    let t = match augment {
        Some((config, seed, epoch)) => {
            let mut buf = vec![0f32; indices.len() * len];
            buf.par_chunks_mut(len).zip(indices.par_iter()).try_for_each(|(dst, &i)| {
                config.sample(seed, epoch, i as u64).apply_u8_to_f32(images.image(i), s, s, 3, dst)
            })?;
            Tensor::from_slice(&buf).f_view(shape)?.f_permute([0, 3, 1, 2])?
        }
        None => {
            let mut buf = vec![0u8; indices.len() * len];
            buf.par_chunks_mut(len)
                .zip(indices.par_iter())
                .for_each(|(dst, &i)| dst.copy_from_slice(images.image(i)));
            Tensor::from_slice(&buf).f_view(shape)?
        }
    };
    Ok(t.f_to_device(device)?)
}

/// Runs the network over `images` in batches (dropout off, no gradients).
pub fn evaluate(net: &Classifier, images: &Images, batch_size: usize) -> Result<Evaluation> {
    let device = net.device();
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
