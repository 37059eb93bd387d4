//! The frozen feature extractor: VGG16 weights loaded once, preprocessing, the layer cuts (one
//! pass gives every requested layer), optional global pooling, the CPU fast paths (channels-last
//! layout, bfloat16) and the CUDA data path. It also continues from a cached lower layer's
//! features ([`FeatureModel::stage_features`], [`FeatureModel::submit_from`]), running only the
//! layers between.
//!
//! Weights are our safetensors (`features.N.weight|bias`, metadata `preprocessing`,
//! `architecture`), read with `models::load_weights` (through `models::tensor_file`).
//!
//! A batch goes through three calls so that a GPU never waits on the CPU: [`FeatureModel::stage`]
//! (host work: the uint8 batch into pinned memory), [`FeatureModel::submit`] (queues the
//! non-blocking upload, normalisation on the device, the forward pass and a non-blocking download
//! into pinned memory, and returns at once on CUDA) and [`Pending::rows`] after
//! [`FeatureModel::wait`]. The caller stages batch k+1 and writes batch k-1 while batch k runs.
//! On the CPU `submit` computes synchronously and `wait` does nothing, so the same code runs.

use std::path::Path;

use anyhow::{Context, Result, bail};
use clap::ValueEnum;
use models::{Layer, LayerName, LoadedWeights, Pooling, Preprocessing, load_weights, preprocess};
use serde::Serialize;
use tch::{Device, Kind, Tensor};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    F32,
    Bf16,
    /// CUDA only: float32 weights, convolutions in float16 under libtorch's autocast (what
    /// `torch.autocast("cuda")` does); features come back as float32.
    Autocast,
}

impl Precision {
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
            Precision::Autocast => "autocast",
        }
    }

    /// The kind the network input is cast to (autocast casts per operation itself).
    fn kind(self) -> Kind {
        match self {
            Precision::F32 | Precision::Autocast => Kind::Float,
            Precision::Bf16 => Kind::BFloat16,
        }
    }
}

/// Gives every 4-D weight channels-last strides (same values), the layout oneDNN's fastest CPU
/// convolutions and cuDNN's tensor-core kernels use; `preprocess` makes the input channels-last by
/// permuting NHWC (no copy). With the input channels-last and the weights not, every convolution
/// would convert its weight on each call.
fn to_channels_last(vs: &tch::nn::VarStore) -> Result<()> {
    for (_, mut var) in vs.variables() {
        if var.dim() == 4 {
            let nhwc = var.f_permute([0, 2, 3, 1])?.f_contiguous()?.f_permute([0, 3, 1, 2])?;
            tch::no_grad(|| var.set_data(&nhwc));
        }
    }
    Ok(())
}

/// The conv base (VGG16 or any base of our weights format) cut at one or more layers, ready to
/// turn u8 image batches (or a lower layer's cached features) into feature rows.
pub struct FeatureModel {
    weights: LoadedWeights,
    layers: Vec<Layer>,
    preprocessing: Preprocessing,
    pooling: Pooling,
    precision: Precision,
    device: Device,
}

impl FeatureModel {
    /// Loads the weights at `path` onto `device`, cut at `layers` (at least one, no repeats).
    pub fn load(
        path: &Path,
        device: Device,
        layers: &[LayerName],
        preprocessing: Option<Preprocessing>,
        pooling: Pooling,
        precision: Precision,
    ) -> Result<Self> {
        let mut weights = load_weights(path, device)
            .with_context(|| format!("loading weights {}", path.display()))?;
        let layers = layers
            .iter()
            .map(|l| weights.base.layer(l))
            .collect::<Result<Vec<_>, _>>()
            .context("--layer")?;
        if layers.is_empty() {
            bail!("--layer names no layer");
        }
        if let Some((_, l)) = layers.iter().enumerate().find(|(i, l)| layers[..*i].contains(l)) {
            bail!(
                "--layer names {} twice (Keras and torchvision names of one layer count as the same)",
                weights.base.arch().name_of(*l)
            );
        }
        weights.vs.freeze();
        let preprocessing = preprocessing.unwrap_or(weights.meta.preprocessing);
        if precision == Precision::Autocast && !device.is_cuda() {
            // libtorch's autocast switch (what tch exposes) covers CUDA only: on the CPU it would
            // silently compute float32 under a key that says otherwise.
            bail!(
                "--precision autocast needs a CUDA device (libtorch's autocast switch covers CUDA only); on the CPU use --precision bf16"
            );
        }
        if precision == Precision::Bf16 {
            weights.vs.bfloat16();
        }
        to_channels_last(&weights.vs)?;
        Ok(Self { weights, layers, preprocessing, pooling, precision, device })
    }

    /// The layers cut, in the order `--layer` named them.
    pub fn layers(&self) -> &[Layer] {
        &self.layers
    }

    /// The layers of the architecture below `layer`, highest first: where features of `layer`
    /// may be derived from.
    pub fn layers_below(&self, layer: Layer) -> Vec<Layer> {
        let mut below: Vec<Layer> =
            self.weights.base.arch().layers().take(layer.position()).collect();
        below.reverse();
        below
    }

    pub fn device(&self) -> Device {
        self.device
    }

    pub fn weights_sha256(&self) -> &str {
        &self.weights.meta.digest
    }

    pub fn architecture(&self) -> &str {
        &self.weights.meta.architecture
    }

    /// The Keras name of a layer (`block5_pool` for `features.30`).
    pub fn layer_name(&self, layer: Layer) -> &str {
        self.weights.base.arch().name_of(layer)
    }

    pub fn preprocessing_name(&self) -> String {
        self.preprocessing.to_string()
    }

    /// Shape of one feature row of `layer` for square inputs of `size`: `[H, W, C]` (channels
    /// last, as Keras stores them) or `[C]` with `pooling`.
    pub fn row_shape(&self, size: i64, layer: Layer, pooling: Pooling) -> Result<Vec<u64>> {
        let chw = self.weights.base.arch().feature_shape(size, size, layer, pooling)?;
        // Stored channels last, as Keras does: [C, H, W] -> [H, W, C].
        let mut shape: Vec<u64> = chw.iter().map(|&d| d as u64).collect();
        shape.rotate_left(1);
        Ok(shape)
    }

    /// Host side of a batch: `n` RGB8 images of `h` x `w`, HWC, back to back, as a uint8
    /// `[n, h, w, 3]` tensor, in pinned memory when the model is on CUDA (so the upload can be
    /// asynchronous; libtorch's caching host allocator keeps a block until its copy is done).
    pub fn stage(&self, images: &[u8], n: usize, h: usize, w: usize) -> Result<Staged> {
        let expected = n.checked_mul(h * w * 3).context("batch size overflows")?;
        if images.len() != expected {
            bail!(
                "a batch of {n} images of {h}x{w} RGB needs {expected} bytes, got {}",
                images.len()
            );
        }
        let batch = Tensor::from_slice(images).f_view([n as i64, h as i64, w as i64, 3])?;
        let batch = if self.device.is_cuda() { batch.f_pin_memory(self.device)? } else { batch };
        Ok(Staged { batch, rows: n })
    }

    /// Like [`Self::stage`], for augmented images: `n` RGB images of `h` x `w`, HWC, on the
    /// 0-255 scale as floats (what Keras' `ImageDataGenerator` hands the network; rounding them
    /// to u8 would move a pixel by up to 0.5), as a float32 `[n, h, w, 3]` tensor.
    pub fn stage_f32(&self, images: &[f32], n: usize, h: usize, w: usize) -> Result<Staged> {
        let expected = n.checked_mul(h * w * 3).context("batch size overflows")?;
        if images.len() != expected {
            bail!(
                "a batch of {n} images of {h}x{w} RGB needs {expected} values, got {}",
                images.len()
            );
        }
        let batch = Tensor::from_slice(images).f_view([n as i64, h as i64, w as i64, 3])?;
        let batch = if self.device.is_cuda() { batch.f_pin_memory(self.device)? } else { batch };
        Ok(Staged { batch, rows: n })
    }

    /// Host side of a batch of a lower layer's cached features: `n` rows of `row_shape`
    /// (`[H, W, C]`, as the cache stores them) back to back, as a float32 `[n, H, W, C]` tensor,
    /// pinned on CUDA like [`Self::stage`].
    pub fn stage_features(&self, rows: &[f32], n: usize, row_shape: &[u64]) -> Result<Staged> {
        let [h, w, c] = row_shape[..] else {
            bail!("features to continue from must be unpooled [H, W, C] rows, got {row_shape:?}");
        };
        let expected = n * (h * w * c) as usize;
        if rows.len() != expected {
            bail!("{n} feature rows of {row_shape:?} need {expected} values, got {}", rows.len());
        }
        let batch = Tensor::from_slice(rows).f_view([n as i64, h as i64, w as i64, c as i64])?;
        let batch = if self.device.is_cuda() { batch.f_pin_memory(self.device)? } else { batch };
        Ok(Staged { batch, rows: n })
    }

    /// Queues a staged image batch ([`Self::stage`] or [`Self::stage_f32`]): upload
    /// (non-blocking), preprocessing on the device, one forward pass giving every layer of
    /// `keep`, the casts to float32 rows, and non-blocking downloads into pinned memory. On CUDA
    /// it returns as soon as the work is queued; call [`Self::wait`] before [`Pending::rows`].
    pub fn submit(&self, staged: Staged, keep: &[Layer]) -> Result<Pending> {
        tch::no_grad(|| {
            let kind = staged.batch.kind();
            let batch = self.upload(staged.batch, kind)?;
            // NHWC u8 -> float NCHW view with channels-last strides (no copy); float NHWC
            // pixels are given as that view.
            let batch = if kind == Kind::Uint8 { batch } else { batch.f_permute([0, 3, 1, 2])? };
            let xs = preprocess(&batch, self.preprocessing)?.f_to_kind(self.precision.kind())?;
            self.run(&xs, None, keep, staged.rows)
        })
    }

    /// Like [`Self::submit`], from a staged batch of layer `after`'s features
    /// ([`Self::stage_features`]): only the layers above `after` up to the highest of `keep`
    /// run. The `[n, H, W, C]` rows are viewed as NCHW with channels-last strides, the layout
    /// the direct pass has at that layer, so the results are the direct pass's bit for bit.
    pub fn submit_from(&self, staged: Staged, after: Layer, keep: &[Layer]) -> Result<Pending> {
        tch::no_grad(|| {
            let batch = self.upload(staged.batch, Kind::Float)?;
            let xs = batch.f_permute([0, 3, 1, 2])?.f_to_kind(self.precision.kind())?;
            self.run(&xs, Some(after), keep, staged.rows)
        })
    }

    fn upload(&self, batch: Tensor, kind: Kind) -> Result<Tensor> {
        Ok(if self.device.is_cuda() {
            batch.f_to_device_(self.device, kind, true, false)?
        } else {
            batch
        })
    }

    /// The forward pass from `after` (None: the input), pooling, NHWC float32 rows on the host.
    fn run(
        &self,
        xs: &Tensor,
        after: Option<Layer>,
        keep: &[Layer],
        rows: usize,
    ) -> Result<Pending> {
        let forward =
            || -> Result<Vec<Tensor>> { Ok(self.weights.base.forward_layers(xs, after, keep)?) };
        let outputs = if self.precision == Precision::Autocast {
            tch::autocast(true, forward)?
        } else {
            forward()?
        };
        let hosts = outputs
            .into_iter()
            .map(|ys| -> Result<Tensor> {
                let ys = self.pooling.apply(&ys)?;
                let ys = if ys.dim() == 4 { ys.f_permute([0, 2, 3, 1])? } else { ys };
                // Contiguous on the device, so the download is one copy; non-blocking to the CPU
                // makes libtorch allocate the destination in pinned memory.
                let ys = ys.f_to_kind(Kind::Float)?.f_contiguous()?;
                Ok(if self.device.is_cuda() {
                    ys.f_to_device_(Device::Cpu, Kind::Float, true, false)?
                } else {
                    ys
                })
            })
            .collect::<Result<_>>()?;
        Ok(Pending { hosts, rows })
    }

    /// Blocks until every queued batch is done (no-op on the CPU). tch exposes no CUDA events,
    /// so this is a device-wide synchronisation: the caller submits one batch at a time.
    pub fn wait(&self) {
        if let Device::Cuda(index) = self.device {
            tch::Cuda::synchronize(index as i64);
        }
    }
}

/// A batch on the host, ready to submit.
#[derive(Debug)]
pub struct Staged {
    batch: Tensor,
    rows: usize,
}

/// A submitted batch: its feature rows, one tensor per kept layer, land in `hosts` once the
/// device is done.
#[derive(Debug)]
pub struct Pending {
    hosts: Vec<Tensor>,
    rows: usize,
}

impl Pending {
    pub fn len(&self) -> usize {
        self.rows
    }

    /// The feature rows of the `i`-th kept layer, flattened. Only after [`FeatureModel::wait`]
    /// on CUDA: before, the download may not have landed.
    pub fn rows(&self, i: usize) -> Result<Vec<f32>> {
        Ok(Vec::<f32>::try_from(self.hosts[i].f_flatten(0, -1)?)?)
    }
}
