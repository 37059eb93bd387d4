//! The convolutional base as a tch module, for any [`ConvArch`]: a forward pass that stops at
//! any named layer, Keras' global pooling on top, and freezing from a layer up.
//!
//! Keras fuses the ReLU into each convolution layer, torchvision lists it separately; a layer here
//! is a Keras layer (conv + ReLU, or a 2x2 max pool), and the torchvision index of the ReLU
//! (`features.1`) names the same layer as that of its convolution (`features.0`).

use tch::{Tensor, nn};

use crate::{ConvArch, Layer, LayerKind, ModelError, Padding, Pooling, ToLayer};

/// The convolutions of an architecture, variables named `features.N.weight` / `features.N.bias`.
#[derive(Debug)]
pub struct ConvBase {
    arch: ConvArch,
    convs: Vec<nn::Conv2D>,
}

impl ConvBase {
    /// The base of `arch` (VGG16: `ConvBase::with_arch(path, ConvArch::vgg16())`), variables
    /// created under `path` as `features.N.weight` `[out, in, k, k]` and `features.N.bias`
    /// `[out]`, with libtorch's default (Kaiming uniform) initialisation, which is what training
    /// from scratch starts from and what weights are loaded over.
    pub fn with_arch(path: &nn::Path, arch: ConvArch) -> Self {
        let features = path / "features";
        let convs = arch
            .layers()
            .filter_map(|layer| {
                let spec = arch.spec(layer);
                match spec.kind {
                    LayerKind::Conv { in_channels, out_channels, kernel, padding } => {
                        let config = nn::ConvConfig {
                            padding: padding_of(kernel, padding),
                            ..Default::default()
                        };
                        Some(nn::conv2d(
                            &features / spec.torch_index,
                            in_channels,
                            out_channels,
                            kernel,
                            config,
                        ))
                    }
                    LayerKind::Pool => None,
                }
            })
            .collect();
        Self { arch, convs }
    }

    pub fn arch(&self) -> &ConvArch {
        &self.arch
    }

    /// xs: `[N, 3, H, W]` float, preprocessed -> `[N, C, H', W']` at the output of `until`.
    ///
    /// Checks the input before running anything, so a wrong rank, an empty batch, an image too
    /// small for the requested depth or a layer this architecture lacks is an `Err` rather than
    /// a libtorch abort.
    pub fn forward_to(&self, xs: &Tensor, until: impl ToLayer) -> Result<Tensor, ModelError> {
        let until = until.to_layer(&self.arch)?;
        Ok(self.forward_layers(xs, None, &[until])?.pop().expect("one output per kept layer"))
    }

    /// One pass through the layers after `after` up to the highest of `keep`, returning the
    /// output of every layer in `keep` (in the order given), each `[N, C, H', W']`.
    ///
    /// xs is the preprocessed image batch `[N, 3, H, W]` when `after` is `None`, or the output of
    /// layer `after` (`[N, C_after, H_after, W_after]`) to continue from it: how
    /// `extract-features` stores several layers from one pass, and derives a higher layer from a
    /// cached lower one. The arithmetic is the same either way, so a layer derived from its
    /// lower layer's float32 output equals the direct pass bit for bit on the same device and
    /// batch layout. Errors, before running anything: a wrong rank or channel count, an empty
    /// batch, an empty `keep`, a kept layer not above `after`, an input too small for the
    /// highest kept layer.
    pub fn forward_layers(
        &self,
        xs: &Tensor,
        after: Option<Layer>,
        keep: &[Layer],
    ) -> Result<Vec<Tensor>, ModelError> {
        let shape = xs.size();
        let channels = match after {
            None => 3,
            Some(layer) => self.arch.output_shape(
                self.arch.min_input(layer),
                self.arch.min_input(layer),
                layer,
            )?[0],
        };
        let [n, c, h, w] = shape[..] else {
            return Err(ModelError::BadInputShape {
                shape,
                expected: format!("[N, {channels}, H, W]"),
            });
        };
        if c != channels {
            return Err(ModelError::BadInputShape {
                shape,
                expected: format!("[N, {channels}, H, W]"),
            });
        }
        if n == 0 {
            return Err(ModelError::EmptyBatch);
        }
        let Some(&until) = keep.iter().max_by_key(|l| l.position()) else {
            return Err(ModelError::NothingToKeep);
        };
        let start = after.map_or(0, |l| l.position() + 1);
        if let Some(&low) = keep.iter().find(|l| l.position() < start) {
            return Err(ModelError::LayerNotAbove {
                layer: self.arch.name_of(low).to_owned(),
                after: after
                    .map_or_else(|| "the input".to_owned(), |l| self.arch.name_of(l).to_owned()),
            });
        }
        if after.is_none() {
            self.arch.output_shape(h, w, until)?;
        }
        let mut convs = self.convs.iter();
        let mut kept: Vec<Option<Tensor>> = keep.iter().map(|_| None).collect();
        let mut ys = xs.shallow_clone();
        for layer in self.arch.layers().take(until.position() + 1) {
            let conv = matches!(self.arch.spec(layer).kind, LayerKind::Conv { .. })
                .then(|| convs.next().expect("one Conv2D per conv layer of the architecture"));
            if layer.position() < start {
                continue;
            }
            ys = match (self.arch.spec(layer).kind, conv) {
                (LayerKind::Conv { kernel, padding, .. }, Some(conv)) => {
                    run_conv(&ys, &conv.ws, conv.bs.as_ref(), kernel, padding)?
                }
                _ => run_pool(&ys)?,
            };
            // The next layer makes a new tensor (the in-place ReLU only touches its own conv's
            // output), so a kept output is never overwritten.
            for (slot, _) in kept.iter_mut().zip(keep).filter(|(_, k)| **k == layer) {
                *slot = Some(ys.shallow_clone());
            }
        }
        Ok(kept.into_iter().map(|t| t.expect("every kept layer is at most `until`")).collect())
    }

    /// The whole base: xs `[N, 3, H, W]` -> the last layer's output (VGG16:
    /// `[N, 512, H/32, W/32]`, `block5_pool`).
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor, ModelError> {
        self.forward_to(xs, self.arch.last())
    }

    /// Keras `VGG16(include_top=False, pooling=...)` cut at `layer`: xs `[N, 3, H, W]`
    /// (preprocessed) -> `[N, C, H', W']` (pooling none) or `[N, C]` (avg, max).
    pub fn features(
        &self,
        xs: &Tensor,
        layer: impl ToLayer,
        pooling: Pooling,
    ) -> Result<Tensor, ModelError> {
        pooling.apply(&self.forward_to(xs, layer)?)
    }

    /// Makes the conv layers from `unfreeze_from` up trainable (`requires_grad`) and those below
    /// frozen; `None` freezes all. Returns the number of trainable parameters. The same rule as
    /// [`ConvArch::is_trainable`], so `vgg16-layers --unfreeze-from` shows what this does.
    pub fn set_unfreeze_from(
        &self,
        unfreeze_from: Option<impl ToLayer>,
    ) -> Result<i64, ModelError> {
        let from = unfreeze_from.map(|l| l.to_layer(&self.arch)).transpose()?;
        let conv_layers = self
            .arch
            .layers()
            .filter(|&l| matches!(self.arch.spec(l).kind, LayerKind::Conv { .. }));
        let mut trainable = 0;
        for (conv, layer) in self.convs.iter().zip(conv_layers) {
            let on = self.arch.is_trainable(layer, from);
            let _ = conv.ws.set_requires_grad(on);
            if let Some(bs) = &conv.bs {
                let _ = bs.set_requires_grad(on);
            }
            if on {
                trainable += self.arch.spec(layer).parameter_count();
            }
        }
        Ok(trainable)
    }

    /// Resolves a layer name of this base's architecture.
    pub fn layer(&self, name: impl ToLayer) -> Result<Layer, ModelError> {
        name.to_layer(&self.arch)
    }
}

/// libtorch's symmetric padding for a Keras `padding=` (odd kernels, checked by [`ConvArch`]).
pub fn padding_of(kernel: i64, padding: Padding) -> i64 {
    match padding {
        Padding::Same => kernel / 2,
        Padding::Valid => 0,
    }
}

/// One conv layer: convolution (stride 1) then ReLU, in place on the convolution's output (as
/// torchvision's `ReLU(inplace=True)`: autograd keeps what it needs, and no second activation-sized
/// block is allocated). xs `[N, C, H, W]`, weight OIHW.
pub fn run_conv(
    xs: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    kernel: i64,
    padding: Padding,
) -> Result<Tensor, ModelError> {
    let p = padding_of(kernel, padding);
    Ok(xs.f_conv2d(weight, bias, [1, 1], [p, p], [1, 1], 1)?.f_relu_()?)
}

/// One pool layer: 2x2 max pool, stride 2, floor (Keras `MaxPooling2D` "valid").
pub fn run_pool(xs: &Tensor) -> Result<Tensor, ModelError> {
    Ok(xs.f_max_pool2d([2, 2], [2, 2], [0, 0], [1, 1], false)?)
}
