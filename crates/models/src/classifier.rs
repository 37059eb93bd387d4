//! The image classifier every training stage produces and every consumer reads: a conv base cut
//! at a named layer (VGG16, the small convnet, a narrow VGG16: any [`ConvArch`]), optional global
//! pooling, and the seed's [`DenseHead`]; plus its **model file**.
//!
//! Freezing is structural, not a flag on shared variables (the rule fine-tuning was built on):
//! - the *trunk* (every base layer below `trainable_from`) lives in its own `VarStore`, frozen
//!   (`requires_grad` off) and always run under `no_grad`, so no graph is built through it and no
//!   optimizer ever sees its tensors; its output for an image never changes, which is what lets
//!   fine-tuning read it from the feature cache instead;
//! - the *top* (`trainable_from` up to the cut) runs on its own copies of the conv variables,
//!   named as in the base (`features.24.weight`), held with the head (`head.fc1.*`, `head.fc2.*`)
//!   in a second `VarStore`: the only tensors an optimizer is given ([`Classifier::trainable`]).
//!
//! Keras flattens channels-last, so the top's `[N, C, h, w]` output is flattened as
//! `[N, h, w, C]`: a head trained on cached (channels-last) features fits as it is.
//!
//! **Model file** (`model.safetensors`): safetensors holding every variable up to the cut and the
//! head (float32, sorted, byte-stable: [`crate::tensor_file`]) and one metadata entry,
//! [`HEADER_KEY`], whose value is the [`ModelHeader`] as JSON: architecture layer list, cut layer,
//! pooling, head spec, class names in index order, preprocessing, input size and resize mode,
//! the digests of the base weights and of the data it was trained on, and the format version.
//! Nothing else is needed to classify an image: [`Classifier::load`] rebuilds the network from it.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use tch::{Device, Tensor, nn};

use crate::head::{DenseHead, HeadSpec, probabilities};
use crate::{
    ConvArch, ConvBase, Layer, LayerDef, LayerKind, LoadedWeights, ModelError, Padding, Pooling,
    Preprocessing, ToLayer, preprocess, run_conv, run_pool, tensor_file,
};

/// The metadata key of a model file that holds the [`ModelHeader`] JSON.
pub const HEADER_KEY: &str = "transfer_kit_model";
/// The model file format this build writes and reads.
pub const MODEL_FORMAT_VERSION: u32 = 1;

/// What a model file says about the network it holds (everything but the tensors).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelHeader {
    /// [`MODEL_FORMAT_VERSION`] of the writer; a reader refuses any other.
    pub format_version: u32,
    /// Name of the base architecture (`vgg16_conv_base`, `small_convnet`, ...).
    pub architecture: String,
    /// The base's whole layer list (see [`ConvArch`]); the file holds the variables up to `cut`.
    pub layers: Vec<LayerDef>,
    /// Keras name of the last base layer the classifier runs (`block5_pool`).
    pub cut: String,
    /// Global pooling after the cut (`none`: the map is flattened channels-last).
    pub pooling: Pooling,
    pub head: HeadSpec,
    /// Class names in class-index order (`class_indices` sorted by index).
    pub class_names: Vec<String>,
    /// What pixels go through before the base (`caffe`, `torch`, `rescale`).
    pub preprocessing: Preprocessing,
    /// `[height, width]` images are resized to.
    pub input_size: [i64; 2],
    /// The resize filter the training data was decoded with (`nearest`, `bilinear`, ...).
    pub resize: String,
    /// sha256 of the base weights file the conv variables came from (pretrain: the base it
    /// wrote).
    pub base_weights_sha256: String,
    /// Digests of what the model was trained on, by name (`data`: the dataset's file digests;
    /// `features`: cache keys; `config`: the stage's config.json).
    pub trained_on: BTreeMap<String, String>,
    /// The stage that wrote the file (`train-head`, `fine-tune`, `pretrain`).
    pub stage: String,
}

impl ModelHeader {
    /// The base architecture the header describes.
    pub fn arch(&self) -> Result<ConvArch, ModelError> {
        ConvArch::new(&self.architecture, self.layers.clone())
    }

    /// The cut layer resolved against [`ModelHeader::arch`].
    pub fn cut_layer(&self) -> Result<Layer, ModelError> {
        self.arch()?.layer(&self.cut)
    }

    /// Checks that the fields agree with each other before any tensor is read: the layer list
    /// and cut resolve, the input survives the base up to the cut, the head's input width is the
    /// cut's output at the input size, one distinct class name per class (at least 2; each a
    /// single folder name: not empty, `.`, `..`, nor holding `/`, `\` or NUL), a
    /// dropout rate in [0, 1), a sha256 digest. The reason names the field.
    pub fn check(&self) -> Result<(), String> {
        let arch = self.arch().map_err(|e| format!("layers: {e}"))?;
        let cut = arch.layer(&self.cut).map_err(|e| format!("cut: {e}"))?;
        let [h, w] = self.input_size;
        let [c, oh, ow] = arch.output_shape(h, w, cut).map_err(|e| format!("input_size: {e}"))?;
        let width = if self.pooling == Pooling::None { c * oh * ow } else { c };
        if self.head.input_width != width {
            return Err(format!(
                "head.input_width is {} but {} of {} at {h}x{w} with pooling {} gives {width}",
                self.head.input_width, self.cut, self.architecture, self.pooling
            ));
        }
        if self.head.classes < 2 || self.class_names.len() != self.head.classes {
            return Err(format!(
                "class_names has {} names for a head of {} classes (at least 2)",
                self.class_names.len(),
                self.head.classes
            ));
        }
        // Class names are folder names (`<split>/<class>/`): a name that is no single folder
        // name could never be the label of a scanned image.
        if let Some(bad) = self
            .class_names
            .iter()
            .find(|n| n.is_empty() || *n == "." || *n == ".." || n.contains(['/', '\\', '\0']))
        {
            return Err(format!("class_names holds {bad:?}, which is not a folder name"));
        }
        let distinct: std::collections::BTreeSet<&String> = self.class_names.iter().collect();
        if distinct.len() != self.class_names.len() {
            return Err(format!("class_names repeats a name: {:?}", self.class_names));
        }
        if !(0.0..1.0).contains(&self.head.dropout) || self.head.hidden < 1 {
            return Err(format!(
                "head has hidden {} and dropout {} (need at least 1 unit and a rate in [0, 1))",
                self.head.hidden, self.head.dropout
            ));
        }
        let digest = &self.base_weights_sha256;
        if digest.len() != 64 || !digest.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!("base_weights_sha256 {digest:?} is not a sha256 digest"));
        }
        Ok(())
    }
}

enum TopLayer {
    Conv { weight: Tensor, bias: Tensor, kernel: i64, padding: Padding },
    Pool,
}

/// Conv base cut at a layer + global pooling + dense head; see the module docs for the trunk /
/// top split.
pub struct Classifier {
    header: ModelHeader,
    /// The frozen part: its variables, the module over them, and its last layer (`None`: no
    /// trunk, every base layer trains).
    frozen: nn::VarStore,
    trunk: Option<ConvBase>,
    trunk_until: Option<Layer>,
    top: Vec<TopLayer>,
    /// The trainable variables: the top's convs and the head.
    vs: nn::VarStore,
    head: DenseHead,
    device: Device,
}

impl std::fmt::Debug for Classifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Classifier").field("header", &self.header).finish_non_exhaustive()
    }
}

/// Gives every 4-D tensor channels-last strides (same values): oneDNN's fastest CPU layout.
fn to_channels_last(vars: impl IntoIterator<Item = Tensor>) -> Result<(), ModelError> {
    for mut var in vars {
        if var.dim() == 4 {
            let nhwc = var.f_permute([0, 2, 3, 1])?.f_contiguous()?.f_permute([0, 3, 1, 2])?;
            tch::no_grad(|| var.set_data(&nhwc));
        }
    }
    Ok(())
}

/// The last frozen layer when training from `trainable_from` (`None`: nothing is frozen).
pub fn trunk_layer(arch: &ConvArch, trainable_from: Layer) -> Option<Layer> {
    arch.layers().take_while(|l| *l < trainable_from).last()
}

/// Flattened width of `arch`'s output at `cut` with `pooling`, for square inputs of `size`: the
/// head's `input_width`. Errors when the input does not survive the base's pools.
pub fn head_input_width(
    arch: &ConvArch,
    cut: Layer,
    pooling: Pooling,
    size: i64,
) -> Result<i64, ModelError> {
    let [c, h, w] = arch.output_shape(size, size, cut)?;
    Ok(if pooling == Pooling::None { c * h * w } else { c })
}

impl Classifier {
    /// A classifier on pretrained conv weights: the base of `weights` cut at `header.cut`, layers
    /// from `trainable_from` up (`None`: none) copied into the trainable store, the rest frozen;
    /// a fresh Glorot head drawn from the current libtorch seed. `header.layers` must be the
    /// weights' architecture.
    pub fn on_base(
        mut weights: LoadedWeights,
        header: ModelHeader,
        trainable_from: Option<impl ToLayer>,
    ) -> Result<Self, ModelError> {
        let arch = weights.base.arch().clone();
        if header.arch()? != arch {
            return Err(ModelError::BadArchitecture {
                name: header.architecture.clone(),
                reason: format!(
                    "the header's layers are not those of {}",
                    weights.meta.path.display()
                ),
            });
        }
        let cut = arch.layer(&header.cut)?;
        let from = trainable_from.map(|l| l.to_layer(&arch)).transpose()?;
        weights.vs.freeze();
        let device = weights.vs.device();
        let vs = nn::VarStore::new(device);
        let base_vars = weights.vs.variables();
        let features = vs.root().sub("features");
        let top = top_layers(&arch, from, cut, |index, what| {
            let src = base_vars.get(&format!("features.{index}.{what}"))?;
            Some(features.sub(index).var_copy(what, src))
        })?;
        let head = DenseHead::new(&vs.root(), header.head.clone());
        // The trunk never runs past the cut (a `trainable_from` above it trains nothing).
        let trunk_until = match from {
            Some(from) => trunk_layer(&arch, from).map(|l| if l > cut { cut } else { l }),
            None => Some(cut),
        };
        // The trunk's large feature maps run fastest channels-last on oneDNN; the top's small
        // ones (4x4 at 64x64 input, 9x9 at 150x150) as plain NCHW: measured 50 vs 63 ms per
        // training step of block5 at 4x4, batch 20, and no worse at 9x9.
        if device == Device::Cpu && trunk_until.is_some() {
            to_channels_last(weights.vs.variables().into_values())?;
        }
        Ok(Self {
            header,
            frozen: weights.vs,
            trunk: Some(weights.base),
            trunk_until,
            top,
            vs,
            head,
            device,
        })
    }

    /// A classifier to train from scratch: every base layer trainable, conv kernels
    /// Glorot-uniform over `fan_in = in * k * k`, `fan_out = out * k * k` and zero biases (Keras'
    /// `Conv2D` defaults), then the Glorot head, all drawn from the current libtorch seed in
    /// that order.
    pub fn from_scratch(header: ModelHeader, device: Device) -> Result<Self, ModelError> {
        let arch = header.arch()?;
        let cut = arch.layer(&header.cut)?;
        let vs = nn::VarStore::new(device);
        // Created through ConvBase so the variables (and the draws of their default init) are
        // those of the base module, then re-drawn the Keras way.
        let _ = ConvBase::with_arch(&vs.root(), arch.clone());
        keras_conv_init(&vs, &arch)?;
        let vars = vs.variables();
        let top = top_layers(&arch, arch.layers().next(), cut, |index, what| {
            vars.get(&format!("features.{index}.{what}")).map(Tensor::shallow_clone)
        })?;
        let head = DenseHead::new(&vs.root(), header.head.clone());
        let frozen = nn::VarStore::new(device);
        Ok(Self { header, frozen, trunk: None, trunk_until: None, top, vs, head, device })
    }

    /// Reads a model file onto `device`, layers from `trainable_from` up trainable (`None`: all
    /// frozen, for inference). Errors name the file: not a model file, another format version,
    /// a missing or unknown header field, a missing tensor or a shape that does not fit.
    pub fn load(
        path: &Path,
        device: Device,
        trainable_from: Option<impl ToLayer>,
    ) -> Result<Self, ModelError> {
        let loaded = tensor_file::load(path)?;
        let header = read_header(path, &loaded.metadata)?;
        for (name, t) in &loaded.tensors {
            if !bool::try_from(t.f_isfinite()?.f_all()?)? {
                return Err(ModelError::Weights {
                    path: path.to_owned(),
                    reason: format!("tensor {name} holds a non-finite value"),
                });
            }
            if !(name.starts_with("features.") || name.starts_with("head.fc")) {
                return Err(ModelError::Weights {
                    path: path.to_owned(),
                    reason: format!("tensor {name} is not part of a classifier"),
                });
            }
        }
        let err =
            |e: ModelError| ModelError::Weights { path: path.to_owned(), reason: e.to_string() };
        let arch = header.arch().map_err(err)?;
        let cut = arch.layer(&header.cut).map_err(err)?;
        let frozen = nn::VarStore::new(device);
        let trunk = ConvBase::with_arch(&frozen.root(), arch.clone());
        let base_tensors: Vec<(String, Tensor)> = loaded
            .tensors
            .iter()
            .filter(|(n, _)| n.starts_with("features."))
            .map(|(n, t)| (n.clone(), t.shallow_clone()))
            .collect();
        // Variables above the cut are not in the file: fill only those up to it, and refuse a
        // tensor that is no variable of the architecture.
        let last = arch.spec(cut).torch_index;
        let vars = tensor_file::named_variables(&frozen);
        if let Some((name, _)) =
            base_tensors.iter().find(|(n, _)| !vars.iter().any(|(v, _)| v == n))
        {
            return Err(ModelError::Weights {
                path: path.to_owned(),
                reason: format!("tensor {name} is not a variable of {}", header.architecture),
            });
        }
        let needed: Vec<(String, Tensor)> =
            vars.into_iter().filter(|(n, _)| torch_index(n).is_some_and(|i| i <= last)).collect();
        tensor_file::copy_into_named(&needed, &base_tensors, path)?;
        let weights = LoadedWeights {
            vs: frozen,
            base: trunk,
            meta: crate::WeightsMeta {
                path: path.to_owned(),
                digest: header.base_weights_sha256.clone(),
                architecture: header.architecture.clone(),
                preprocessing: header.preprocessing,
                source: format!("model file {}", path.display()),
                source_sha256: Some(loaded.sha256.clone()),
                source_format: Some("model".to_owned()),
                format_version: crate::weights::FORMAT_VERSION.to_owned(),
                arch,
            },
        };
        let model = Self::on_base(weights, header, trainable_from)?;
        model.load_trainable(&loaded.tensors, None, path)?;
        let known: Vec<String> = model.variables().into_iter().map(|(n, _)| n).collect();
        if let Some((name, _)) = loaded.tensors.iter().find(|(n, _)| !known.contains(n)) {
            return Err(ModelError::Weights {
                path: path.to_owned(),
                reason: format!("tensor {name} is not a variable of this classifier"),
            });
        }
        Ok(model)
    }

    pub fn header(&self) -> &ModelHeader {
        &self.header
    }

    pub fn header_mut(&mut self) -> &mut ModelHeader {
        &mut self.header
    }

    pub fn device(&self) -> Device {
        self.device
    }

    pub fn head(&self) -> &DenseHead {
        &self.head
    }

    /// The last frozen layer (`None`: nothing is frozen).
    pub fn trunk_until(&self) -> Option<Layer> {
        self.trunk_until
    }

    /// pixels: RGB uint8 `[N, H, W, 3]` or float `[N, 3, H, W]` on 0-255, on the device -> the
    /// trunk's output `[N, C, H', W']` (the preprocessed input when nothing is frozen). No
    /// gradients.
    pub fn trunk(&self, pixels: &Tensor) -> Result<Tensor, ModelError> {
        let xs = self.preprocessed(pixels)?;
        tch::no_grad(|| match (&self.trunk, self.trunk_until) {
            (Some(trunk), Some(layer)) => trunk.forward_to(&xs, layer),
            _ => Ok(xs),
        })
    }

    /// pixels (see [`Classifier::trunk`]), checked against the header's input size ->
    /// preprocessed `[N, 3, H, W]` float, no gradients.
    fn preprocessed(&self, pixels: &Tensor) -> Result<Tensor, ModelError> {
        let shape = pixels.size();
        let [h, w] = self.header.input_size;
        let size = match (pixels.kind(), shape.as_slice()) {
            (tch::Kind::Uint8, [_, ph, pw, 3]) => Some([*ph, *pw]),
            (_, [_, 3, ph, pw]) => Some([*ph, *pw]),
            _ => None,
        };
        if size.is_some_and(|s| s != [h, w]) {
            return Err(ModelError::BadInputShape {
                shape,
                expected: format!("images of the model's input size {h}x{w} (resize them first)"),
            });
        }
        tch::no_grad(|| preprocess(pixels, self.header.preprocessing))
    }

    /// xs: the trunk's output `[N, C, H, W]` -> logits `[N, 1 | classes]`. `train` turns dropout
    /// on; `train_top` builds a graph through the top (off: the top runs under `no_grad`, as
    /// when only the head trains).
    pub fn forward_from_trunk(
        &self,
        xs: &Tensor,
        train: bool,
        train_top: bool,
    ) -> Result<Tensor, ModelError> {
        let run_top = || -> Result<Tensor, ModelError> {
            // After a trunk the top runs NCHW-contiguous (faster on small maps, see `on_base`);
            // with no trunk the preprocessed input goes in as it is.
            let xs =
                if self.trunk_until.is_some() { xs.f_contiguous()? } else { xs.shallow_clone() };
            self.run_top(&xs, 0..self.top.len())
        };
        let ys = if train_top { run_top()? } else { tch::no_grad(run_top)? };
        self.pool_and_head(&ys, train)
    }

    /// Runs the top's layers `range` (indices into the top, input to output) on `xs`, building a
    /// graph unless called under `no_grad`.
    fn run_top(&self, xs: &Tensor, range: std::ops::Range<usize>) -> Result<Tensor, ModelError> {
        let mut ys = xs.shallow_clone();
        for layer in &self.top[range] {
            ys = match layer {
                TopLayer::Conv { weight, bias, kernel, padding } => {
                    run_conv(&ys, weight, Some(bias), *kernel, *padding)?
                }
                TopLayer::Pool => run_pool(&ys)?,
            };
        }
        Ok(ys)
    }

    /// The cut's output `[N, C, h, w]` -> global pooling or the channels-last flatten -> head
    /// logits `[N, 1 | classes]`.
    fn pool_and_head(&self, ys: &Tensor, train: bool) -> Result<Tensor, ModelError> {
        let features = match self.header.pooling {
            Pooling::None => ys.f_permute([0, 2, 3, 1])?,
            pooling => pooling.apply(ys)?,
        };
        self.head.forward_t(&features, train)
    }

    /// The last convolution layer at or before the cut (VGG16 cut at `block5_pool`:
    /// `block5_conv3`): where Grad-CAM looks. Errors when the base has no convolution up to the
    /// cut.
    pub fn last_conv_layer(&self) -> Result<Layer, ModelError> {
        let arch = self.header.arch()?;
        let cut = arch.layer(&self.header.cut)?;
        arch.layers()
            .filter(|l| *l <= cut && matches!(arch.spec(*l).kind, LayerKind::Conv { .. }))
            .last()
            .ok_or_else(|| ModelError::BadArchitecture {
                name: arch.name().to_owned(),
                reason: format!("no convolution layer at or before the cut {}", self.header.cut),
            })
    }

    /// Runs the network on `pixels` (see [`Classifier::trunk`]; dropout off) keeping the output
    /// of `layer` (any base layer at or before the cut, frozen trunk included) as a gradient
    /// leaf: returns `(activation, logits)`, activation `[N, C, h, w]` (the layer's output,
    /// after its ReLU; `requires_grad`, no graph behind it), logits `[N, 1 | classes]` computed
    /// from it with a graph, so `Tensor::run_backward(&[score], &[&activation], ..)` gives
    /// d score / d activation (Grad-CAM). The parameters' own `requires_grad` is left as it is,
    /// and no parameter needs a gradient for this.
    ///
    /// The same forward pass as [`Classifier::forward_t`], split at `layer`: the part up to it
    /// runs under `no_grad` (the trunk's [`ConvBase::forward_to`], or the trunk then the top's
    /// first layers), its output is detached and marked `requires_grad`, and the rest (the
    /// trunk's remaining layers through [`ConvBase::forward_layers`], the top, pooling, head)
    /// runs with gradient tracking.
    ///
    /// Errors: a layer the architecture lacks or above the cut (named), and the input errors of
    /// [`Classifier::trunk`].
    pub fn forward_keeping(
        &self,
        pixels: &Tensor,
        layer: impl ToLayer,
    ) -> Result<(Tensor, Tensor), ModelError> {
        let arch = self.header.arch()?;
        let layer = layer.to_layer(&arch)?;
        let cut = arch.layer(&self.header.cut)?;
        if layer > cut {
            return Err(ModelError::BadArchitecture {
                name: arch.name().to_owned(),
                reason: format!(
                    "layer {} lies above the cut {}: the classifier never runs it",
                    arch.name_of(layer),
                    self.header.cut
                ),
            });
        }
        let leaf = |t: Tensor| t.f_detach()?.f_set_requires_grad(true);
        let xs = self.preprocessed(pixels)?;
        // The top's index of base layer `layer` (its first layer follows the trunk's last).
        let top_start = self.trunk_until.map_or(0, |l| l.position() + 1);
        match (&self.trunk, self.trunk_until) {
            (Some(trunk), Some(until)) if layer <= until => {
                let activation = leaf(tch::no_grad(|| trunk.forward_to(&xs, layer))?)?;
                let trunk_out = if layer == until {
                    activation.shallow_clone()
                } else {
                    trunk.forward_layers(&activation, Some(layer), &[until])?.remove(0)
                };
                let ys = self.run_top(&trunk_out.f_contiguous()?, 0..self.top.len())?;
                Ok((activation, self.pool_and_head(&ys, false)?))
            }
            _ => {
                let split = layer.position() + 1 - top_start;
                let below = tch::no_grad(|| -> Result<Tensor, ModelError> {
                    let xs = match (&self.trunk, self.trunk_until) {
                        (Some(trunk), Some(until)) => {
                            trunk.forward_to(&xs, until)?.f_contiguous()?
                        }
                        _ => xs,
                    };
                    self.run_top(&xs, 0..split)
                })?;
                let activation = leaf(below)?;
                let ys = self.run_top(&activation, split..self.top.len())?;
                Ok((activation, self.pool_and_head(&ys, false)?))
            }
        }
    }

    /// pixels (see [`Classifier::trunk`]) -> logits `[N, 1 | classes]`, graph through the top.
    pub fn forward_t(&self, pixels: &Tensor, train: bool) -> Result<Tensor, ModelError> {
        self.forward_from_trunk(&self.trunk(pixels)?, train, true)
    }

    /// pixels (see [`Classifier::trunk`]) -> class probabilities `[N, classes]` (rows sum to 1),
    /// dropout off, no gradients: Keras' `model.predict` with the two-class sigmoid spelled out
    /// as two columns.
    pub fn predict_proba(&self, pixels: &Tensor) -> Result<Tensor, ModelError> {
        tch::no_grad(|| probabilities(&self.forward_t(pixels, false)?))
    }

    /// Makes the top trainable (`requires_grad`) or frozen; the trunk is always frozen.
    pub fn set_top_trainable(&self, on: bool) {
        for (_, var) in self.top_params() {
            let _ = var.set_requires_grad(on);
        }
    }

    /// The top's conv variables, sorted by name.
    pub fn top_params(&self) -> Vec<(String, Tensor)> {
        tensor_file::named_variables(&self.vs)
            .into_iter()
            .filter(|(n, _)| n.starts_with("features."))
            .collect()
    }

    /// The head's variables, sorted by name.
    pub fn head_params(&self) -> Vec<(String, Tensor)> {
        tensor_file::named_variables(&self.vs)
            .into_iter()
            .filter(|(n, _)| n.starts_with("head."))
            .collect()
    }

    /// Everything that trains (top and head), sorted by name.
    pub fn trainable(&self) -> Vec<(String, Tensor)> {
        tensor_file::named_variables(&self.vs)
    }

    /// The frozen trunk's variables up to the cut, sorted by name.
    pub fn frozen(&self) -> Vec<(String, Tensor)> {
        let last =
            self.trunk.as_ref().zip(self.trunk_until).map(|(t, l)| t.arch().spec(l).torch_index);
        tensor_file::named_variables(&self.frozen)
            .into_iter()
            .filter(|(n, _)| torch_index(n).zip(last).is_some_and(|(i, last)| i <= last))
            .collect()
    }

    /// Copies named tensors into the trainable variables; with `only` set, just those whose
    /// names start with it. Every selected variable must be in `tensors` with its shape; `path`
    /// names the file they came from.
    pub fn load_trainable(
        &self,
        tensors: &[(String, Tensor)],
        only: Option<&str>,
        path: &Path,
    ) -> Result<(), ModelError> {
        let selected: Vec<(String, Tensor)> = self
            .trainable()
            .into_iter()
            .filter(|(name, _)| only.is_none_or(|prefix| name.starts_with(prefix)))
            .collect();
        tensor_file::copy_into_named(&selected, tensors, path)
    }

    /// Every variable of the classifier, sorted by name: the frozen base layers up to the cut,
    /// the top and the head (what the model file holds).
    pub fn variables(&self) -> Vec<(String, Tensor)> {
        let trained = self.trainable();
        let mut all: Vec<(String, Tensor)> = self
            .frozen()
            .into_iter()
            .filter(|(n, _)| !trained.iter().any(|(t, _)| t == n))
            .chain(trained.iter().map(|(n, t)| (n.clone(), t.shallow_clone())))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// Writes the model file (see the module docs) atomically; returns its sha256.
    pub fn save(&self, path: &Path) -> Result<String, ModelError> {
        self.save_variables(path, &self.variables())
    }

    /// Writes a model file of this classifier's header with `variables` in place of its own
    /// (e.g. the best epoch's, from a checkpoint: every name of [`Classifier::variables`]).
    pub fn save_variables(
        &self,
        path: &Path,
        variables: &[(String, Tensor)],
    ) -> Result<String, ModelError> {
        let header = serde_json::to_string(&self.header).expect("headers serialise");
        tensor_file::save(path, variables, &BTreeMap::from([(HEADER_KEY.to_owned(), header)]))
    }
}

/// The header of a model file's metadata, checked: present, this format version, every field
/// there and none unknown.
fn read_header(
    path: &Path,
    metadata: &BTreeMap<String, String>,
) -> Result<ModelHeader, ModelError> {
    let err = |reason: String| ModelError::Weights { path: path.to_owned(), reason };
    let json = metadata.get(HEADER_KEY).ok_or_else(|| {
        err(format!("no {HEADER_KEY} metadata: not a model file (a weights file holds a conv base only; train-head, fine-tune and pretrain write model files)"))
    })?;
    let value: serde_json::Value =
        serde_json::from_str(json).map_err(|e| err(format!("{HEADER_KEY} metadata: {e}")))?;
    let version = value.get("format_version");
    if version.and_then(serde_json::Value::as_u64) != Some(u64::from(MODEL_FORMAT_VERSION)) {
        return Err(err(format!(
            "model format_version is {}, this build reads {MODEL_FORMAT_VERSION}",
            version.map_or_else(|| "missing".to_owned(), |v| v.to_string())
        )));
    }
    let header: ModelHeader =
        serde_json::from_value(value).map_err(|e| err(format!("{HEADER_KEY} metadata: {e}")))?;
    header.check().map_err(|reason| err(format!("{HEADER_KEY} metadata: {reason}")))?;
    Ok(header)
}

/// `N` of a variable named `features.N.weight|bias`.
fn torch_index(name: &str) -> Option<usize> {
    name.strip_prefix("features.")?.split('.').next()?.parse().ok()
}

/// The top's layers (`from` up to `cut`); `variable(N, "weight" | "bias")` gives the trainable
/// tensor of conv `features.N`.
fn top_layers(
    arch: &ConvArch,
    from: Option<Layer>,
    cut: Layer,
    variable: impl Fn(usize, &str) -> Option<Tensor>,
) -> Result<Vec<TopLayer>, ModelError> {
    let Some(from) = from else { return Ok(Vec::new()) };
    let mut top = Vec::new();
    for layer in arch.layers().filter(|l| *l >= from && *l <= cut) {
        let spec = arch.spec(layer);
        top.push(match spec.kind {
            LayerKind::Conv { kernel, padding, .. } => {
                let var = |what: &str| {
                    variable(spec.torch_index, what).ok_or_else(|| ModelError::BadArchitecture {
                        name: arch.name().to_owned(),
                        reason: format!(
                            "the base has no variable features.{}.{what}",
                            spec.torch_index
                        ),
                    })
                };
                TopLayer::Conv { weight: var("weight")?, bias: var("bias")?, kernel, padding }
            }
            LayerKind::Pool => TopLayer::Pool,
        });
    }
    Ok(top)
}

/// Keras' `Conv2D` defaults: kernel Glorot-uniform over fan_in = in * k * k and
/// fan_out = out * k * k, bias zero (libtorch's own default is Kaiming-uniform with a random bias).
fn keras_conv_init(vs: &nn::VarStore, arch: &ConvArch) -> Result<(), ModelError> {
    let vars = vs.variables();
    for layer in arch.layers() {
        let spec = arch.spec(layer);
        let LayerKind::Conv { in_channels, out_channels, kernel, .. } = spec.kind else { continue };
        let limit = (6.0 / ((in_channels + out_channels) * kernel * kernel) as f64).sqrt();
        let get = |what: &str| {
            let name = format!("features.{}.{what}", spec.torch_index);
            vars.get(&name).map(Tensor::shallow_clone).ok_or_else(|| ModelError::BadArchitecture {
                name: arch.name().to_owned(),
                reason: format!("no variable {name}"),
            })
        };
        let (weight, bias) = (get("weight")?, get("bias")?);
        tch::no_grad(|| -> Result<(), ModelError> {
            let _ = weight.shallow_clone().f_uniform_(-limit, limit)?;
            let _ = bias.shallow_clone().f_zero_()?;
            Ok(())
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::HeadSpec;
    use crate::classifier::head_input_width;
    use tch::Kind;

    /// A random small convnet at 48x48 (2x2 at `conv2d_4`), saved and loaded back with the
    /// layers from `trainable_from` up in the top and the rest in the frozen trunk.
    fn model(dir: &Path, trainable_from: Option<&str>) -> Classifier {
        let arch = ConvArch::small_convnet();
        let cut = "max_pooling2d_4";
        let width = head_input_width(&arch, arch.layer(cut).unwrap(), Pooling::None, 48).unwrap();
        let header = ModelHeader {
            format_version: MODEL_FORMAT_VERSION,
            architecture: arch.name().to_owned(),
            layers: arch.defs().to_vec(),
            cut: cut.to_owned(),
            pooling: Pooling::None,
            head: HeadSpec::seed(width, 3),
            class_names: vec!["a".into(), "b".into(), "c".into()],
            preprocessing: Preprocessing::Rescale,
            input_size: [48, 48],
            resize: "nearest".into(),
            base_weights_sha256: "0".repeat(64),
            trained_on: BTreeMap::new(),
            stage: "test".into(),
        };
        let path = dir.join("model.safetensors");
        // Random weights, unseeded: nothing is compared across models.
        Classifier::from_scratch(header, Device::Cpu).unwrap().save(&path).unwrap();
        Classifier::load(&path, Device::Cpu, trainable_from).unwrap()
    }

    #[test]
    fn forward_keeping_gives_forward_t_logits_and_a_gradient_at_any_layer() {
        let dir = tempfile::tempdir().unwrap();
        let pixels =
            (Tensor::rand([2, 48, 48, 3], (Kind::Float, Device::Cpu)) * 255.0).to_kind(Kind::Uint8);
        // Frozen only, trunk + top, top only (nothing frozen).
        for from in [None, Some("conv2d_3"), Some("conv2d_1")] {
            let model = model(dir.path(), from);
            let want = tch::no_grad(|| model.forward_t(&pixels, false)).unwrap();
            for (layer, shape) in [
                ("conv2d_1", [2, 32, 46, 46]),
                ("max_pooling2d_2", [2, 64, 10, 10]),
                ("conv2d_3", [2, 128, 8, 8]),
                ("conv2d_4", [2, 128, 2, 2]),
                ("max_pooling2d_4", [2, 128, 1, 1]),
            ] {
                let (activation, logits) = model.forward_keeping(&pixels, layer).unwrap();
                assert_eq!(activation.size(), shape, "{from:?} {layer}");
                assert!(activation.requires_grad() && activation.is_leaf(), "{from:?} {layer}");
                let diff = f64::try_from((&logits - &want).abs().max()).unwrap();
                assert!(diff < 1e-5, "{from:?} {layer}: logits differ by {diff}");
                let score = logits.select(1, 1).sum(Kind::Float);
                let grad = Tensor::run_backward(&[&score], &[&activation], false, false);
                assert_eq!(grad[0].size(), shape);
                assert!(f64::try_from(grad[0].abs().sum(Kind::Float)).unwrap() > 0.0);
            }
            assert_eq!(
                model.last_conv_layer().unwrap(),
                model.header.arch().unwrap().layer("conv2d_4").unwrap()
            );
            // The frozen trunk's variables never get a gradient.
            assert!(model.frozen().iter().all(|(_, v)| !v.grad().defined()));
        }
    }

    #[test]
    fn a_frozen_layer_gives_the_gradient_it_gives_when_trainable() {
        // One file, loaded all frozen (the layer in the trunk) and all trainable (in the top):
        // the same activation and the same gradient of a logit with respect to it.
        let dir = tempfile::tempdir().unwrap();
        let frozen = model(dir.path(), None);
        let path = dir.path().join("model.safetensors");
        let trainable = Classifier::load(&path, Device::Cpu, Some("conv2d_1")).unwrap();
        let pixels =
            (Tensor::rand([2, 48, 48, 3], (Kind::Float, Device::Cpu)) * 255.0).to_kind(Kind::Uint8);
        for layer in ["conv2d_2", "conv2d_4"] {
            let grads: Vec<(Tensor, Tensor)> = [&frozen, &trainable]
                .iter()
                .map(|m| {
                    let (activation, logits) = m.forward_keeping(&pixels, layer).unwrap();
                    let score = logits.select(1, 2).sum(Kind::Float);
                    let grad = Tensor::run_backward(&[&score], &[&activation], false, false);
                    (activation.detach(), grad[0].shallow_clone())
                })
                .collect();
            let close = |a: &Tensor, b: &Tensor| {
                let scale = f64::try_from(b.abs().max()).unwrap().max(1e-12);
                f64::try_from((a - b).abs().max()).unwrap() / scale < 1e-4
            };
            assert!(close(&grads[0].0, &grads[1].0), "{layer}: activations differ");
            assert!(close(&grads[0].1, &grads[1].1), "{layer}: gradients differ");
        }
    }

    #[test]
    fn forward_keeping_refuses_a_layer_above_the_cut_or_unknown() {
        let dir = tempfile::tempdir().unwrap();
        let mut model = model(dir.path(), None);
        model.header_mut().cut = "conv2d_4".into();
        let pixels = Tensor::zeros([1, 48, 48, 3], (Kind::Uint8, Device::Cpu));
        let err = model.forward_keeping(&pixels, "max_pooling2d_4").unwrap_err().to_string();
        assert!(err.contains("above the cut conv2d_4"), "{err}");
        let err = model.forward_keeping(&pixels, "block5_conv3").unwrap_err().to_string();
        assert!(err.contains("block5_conv3"), "{err}");
    }
}
