//! The convolutional base as a tch module, for any [`ConvArch`]: a forward pass that stops at
//! any named layer, Keras' global pooling on top, and freezing from a layer up.
//!
//! Keras fuses the ReLU into each convolution layer, torchvision lists it separately; a layer here
//! is a Keras layer (conv + ReLU, or a 2x2 max pool), and the torchvision index of the ReLU
//! (`features.1`) names the same layer as that of its convolution (`features.0`).

use tch::{Tensor, nn};

use crate::{ConvArch, Layer, LayerKind, ModelError, Padding, Pooling, ToLayer};

/// The VGG16 conv base: a [`ConvBase`] built from [`ConvArch::vgg16`] (by [`ConvBase::new`]).
pub type Vgg16Base = ConvBase;

/// The convolutions of an architecture, variables named `features.N.weight` / `features.N.bias`.
#[derive(Debug)]
pub struct ConvBase {
    arch: ConvArch,
    convs: Vec<nn::Conv2D>,
}

impl ConvBase {
    /// The VGG16 conv base, variables created under `path` (initialised like torchvision before
    /// any weights load).
    pub fn new(path: &nn::Path) -> Self {
        Self::with_arch(path, ConvArch::vgg16())
    }

    /// The base of `arch`, variables created under `path` with libtorch's default (Kaiming
    /// uniform) initialisation, which is what training from scratch starts from.
    pub fn with_arch(path: &nn::Path, arch: ConvArch) -> Self {
        let features = path / "features";
        let convs = arch
            .layers()
            .filter_map(|layer| {
                let spec = arch.spec(layer);
                match spec.kind {
                    LayerKind::Conv { in_channels, out_channels, kernel, padding } => {
                        let config = nn::ConvConfig { padding: padding_of(kernel, padding), ..Default::default() };
                        Some(nn::conv2d(&features / spec.torch_index, in_channels, out_channels, kernel, config))
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
        let shape = xs.size();
        let [n, 3, h, w] = shape[..] else {
            return Err(ModelError::BadInputShape { shape });
        };
        if n == 0 {
            return Err(ModelError::EmptyBatch);
        }
        self.arch.output_shape(h, w, until)?;
        let mut convs = self.convs.iter();
        let mut ys = xs.shallow_clone();
        for layer in self.arch.layers().take(until.position() + 1) {
            ys = match self.arch.spec(layer).kind {
                LayerKind::Conv { kernel, padding, .. } => {
                    let conv = convs.next().expect("one Conv2D per conv layer of the architecture");
                    run_conv(&ys, &conv.ws, conv.bs.as_ref(), kernel, padding)?
                }
                LayerKind::Pool => run_pool(&ys)?,
            };
        }
        Ok(ys)
    }

    /// The whole base: xs `[N, 3, H, W]` -> the last layer's output (VGG16:
    /// `[N, 512, H/32, W/32]`, `block5_pool`).
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor, ModelError> {
        self.forward_to(xs, self.arch.last())
    }

    /// Keras `VGG16(include_top=False, pooling=...)` cut at `layer`: xs `[N, 3, H, W]`
    /// (preprocessed) -> `[N, C, H', W']` (pooling none) or `[N, C]` (avg, max).
    pub fn features(&self, xs: &Tensor, layer: impl ToLayer, pooling: Pooling) -> Result<Tensor, ModelError> {
        pooling.apply(&self.forward_to(xs, layer)?)
    }

    /// Makes the conv layers from `unfreeze_from` up trainable (`requires_grad`) and those below
    /// frozen; `None` freezes all. Returns the number of trainable parameters. The same rule as
    /// [`ConvArch::is_trainable`], so `vgg16-layers --unfreeze-from` shows what this does.
    pub fn set_unfreeze_from(&self, unfreeze_from: Option<impl ToLayer>) -> Result<i64, ModelError> {
        let from = unfreeze_from.map(|l| l.to_layer(&self.arch)).transpose()?;
        let conv_layers = self.arch.layers().filter(|&l| matches!(self.arch.spec(l).kind, LayerKind::Conv { .. }));
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
pub fn run_conv(xs: &Tensor, weight: &Tensor, bias: Option<&Tensor>, kernel: i64, padding: Padding) -> Result<Tensor, ModelError> {
    let p = padding_of(kernel, padding);
    Ok(xs.f_conv2d(weight, bias, [1, 1], [p, p], [1, 1], 1)?.f_relu_()?)
}

/// One pool layer: 2x2 max pool, stride 2, floor (Keras `MaxPooling2D` "valid").
pub fn run_pool(xs: &Tensor) -> Result<Tensor, ModelError> {
    Ok(xs.f_max_pool2d([2, 2], [2, 2], [0, 0], [1, 1], false)?)
}
