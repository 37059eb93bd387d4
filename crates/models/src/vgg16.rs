//! The VGG16 layer table (Simonyan & Zisserman 2014, configuration D, no classifier) and its
//! layer names; the module that runs it is the generic [`crate::ConvBase`].
//!
//! Keras fuses the ReLU into each convolution layer, torchvision lists it separately; a layer here
//! is a Keras layer (conv + ReLU, or a 2x2 max pool), and the torchvision index of the ReLU
//! (`features.1`) names the same layer as that of its convolution (`features.0`).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::ModelError;

/// Keras `padding=` of a convolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Padding {
    /// Output as large as the input (odd kernels: `kernel / 2` zeros on each side).
    Same,
    /// No padding: each side loses `kernel / 2` pixels.
    Valid,
}

/// What a layer computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerKind {
    /// `kernel` x `kernel` convolution, stride 1, followed by ReLU (VGG16: 3x3, "same").
    Conv { in_channels: i64, out_channels: i64, kernel: i64, padding: Padding },
    /// 2x2 max pool, stride 2, no padding (floor), as Keras `MaxPooling2D` "valid".
    Pool,
}

/// One row of the VGG16 layer table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayerSpec {
    pub keras_name: &'static str,
    /// Index in torchvision's `vgg16().features` (the convolution's index for conv layers).
    pub torch_index: usize,
    pub kind: LayerKind,
}

const fn conv(
    keras_name: &'static str,
    torch_index: usize,
    in_channels: i64,
    out_channels: i64,
) -> LayerSpec {
    LayerSpec {
        keras_name,
        torch_index,
        kind: LayerKind::Conv { in_channels, out_channels, kernel: 3, padding: Padding::Same },
    }
}

const fn pool(keras_name: &'static str, torch_index: usize) -> LayerSpec {
    LayerSpec { keras_name, torch_index, kind: LayerKind::Pool }
}

/// The 18 layers of the VGG16 conv base, input to output.
pub const VGG16_LAYERS: [LayerSpec; 18] = [
    conv("block1_conv1", 0, 3, 64),
    conv("block1_conv2", 2, 64, 64),
    pool("block1_pool", 4),
    conv("block2_conv1", 5, 64, 128),
    conv("block2_conv2", 7, 128, 128),
    pool("block2_pool", 9),
    conv("block3_conv1", 10, 128, 256),
    conv("block3_conv2", 12, 256, 256),
    conv("block3_conv3", 14, 256, 256),
    pool("block3_pool", 16),
    conv("block4_conv1", 17, 256, 512),
    conv("block4_conv2", 19, 512, 512),
    conv("block4_conv3", 21, 512, 512),
    pool("block4_pool", 23),
    conv("block5_conv1", 24, 512, 512),
    conv("block5_conv2", 26, 512, 512),
    conv("block5_conv3", 28, 512, 512),
    pool("block5_pool", 30),
];

/// A layer of the VGG16 conv base, named the Keras way or the torchvision way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Vgg16Layer(usize);

impl Vgg16Layer {
    /// The last layer, `block5_pool`: what `VGG16(include_top=False)` outputs.
    pub const LAST: Self = Self(VGG16_LAYERS.len() - 1);

    pub fn spec(self) -> &'static LayerSpec {
        &VGG16_LAYERS[self.0]
    }

    pub fn keras_name(self) -> &'static str {
        self.spec().keras_name
    }

    /// `features.N`, the torchvision spelling.
    pub fn torch_name(self) -> String {
        format!("features.{}", self.spec().torch_index)
    }

    /// Position in [`VGG16_LAYERS`].
    pub fn position(self) -> usize {
        self.0
    }

    /// All layers, input to output.
    pub fn all() -> impl Iterator<Item = Self> {
        (0..VGG16_LAYERS.len()).map(Self)
    }

    /// Weights and biases of this layer (0 for a pool).
    pub fn parameter_count(self) -> i64 {
        match self.spec().kind {
            LayerKind::Conv { in_channels, out_channels, kernel, .. } => {
                out_channels * in_channels * kernel * kernel + out_channels
            }
            LayerKind::Pool => 0,
        }
    }
}

impl FromStr for Vgg16Layer {
    type Err = ModelError;

    /// Accepts `block5_conv1` (any case), `features.24`, and `features.25` (its ReLU).
    fn from_str(name: &str) -> Result<Self, ModelError> {
        let unknown = || ModelError::UnknownLayer { name: name.to_owned() };
        let trimmed = name.trim();
        if let Some(index) = trimmed.strip_prefix("features.") {
            let index: usize = index.parse().map_err(|_| unknown())?;
            return VGG16_LAYERS
                .iter()
                .position(|l| match l.kind {
                    LayerKind::Conv { .. } => index == l.torch_index || index == l.torch_index + 1,
                    LayerKind::Pool => index == l.torch_index,
                })
                .map(Self)
                .ok_or_else(unknown);
        }
        VGG16_LAYERS
            .iter()
            .position(|l| l.keras_name.eq_ignore_ascii_case(trimmed))
            .map(Self)
            .ok_or_else(unknown)
    }
}

impl fmt::Display for Vgg16Layer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.keras_name())
    }
}

/// Output shape `[C, H, W]` of `layer` for an input of `height` x `width`, or the error a forward
/// pass would meet (the first pool whose output would be empty).
pub fn output_shape(height: i64, width: i64, layer: Vgg16Layer) -> Result<[i64; 3], ModelError> {
    let (mut c, mut h, mut w) = (3, height, width);
    for spec in &VGG16_LAYERS[..=layer.0] {
        match spec.kind {
            LayerKind::Conv { out_channels, .. } => c = out_channels,
            LayerKind::Pool => {
                (h, w) = (h / 2, w / 2);
            }
        }
        if h < 1 || w < 1 {
            return Err(ModelError::InputTooSmall {
                height,
                width,
                architecture: "VGG16".to_owned(),
                layer: layer.keras_name().to_owned(),
                vanishes_at: spec.keras_name.to_owned(),
                min: min_input(layer),
            });
        }
    }
    Ok([c, h, w])
}

/// The smallest square input that survives up to `layer` (2 to the number of pools).
pub fn min_input(layer: Vgg16Layer) -> i64 {
    1 << VGG16_LAYERS[..=layer.0].iter().filter(|l| l.kind == LayerKind::Pool).count()
}

/// Whether `layer` trains when fine-tuning from `unfreeze_from` (that layer and every later one;
/// nothing when `None`). Pools have no parameters and so are never trainable.
pub fn is_trainable(layer: Vgg16Layer, unfreeze_from: Option<Vgg16Layer>) -> bool {
    layer.parameter_count() > 0 && unfreeze_from.is_some_and(|from| layer >= from)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_name(name: &str, expect: Option<&str>) {
        let got = name.parse::<Vgg16Layer>().ok().map(|l| l.keras_name());
        assert_eq!(got, expect, "{name}");
    }

    #[test]
    fn keras_and_torchvision_names() {
        check_name("block1_conv1", Some("block1_conv1"));
        check_name("BLOCK5_CONV1", Some("block5_conv1"));
        check_name("features.0", Some("block1_conv1"));
        check_name("features.1", Some("block1_conv1"));
        check_name("features.24", Some("block5_conv1"));
        check_name("features.30", Some("block5_pool"));
        check_name("features.23", Some("block4_pool"));
        check_name("features.31", None);
        check_name("features.4x", None);
        check_name("block6_conv1", None);
        check_name("", None);
    }

    #[test]
    fn names_round_trip() {
        for layer in Vgg16Layer::all() {
            assert_eq!(layer.keras_name().parse::<Vgg16Layer>().unwrap(), layer);
            assert_eq!(layer.torch_name().parse::<Vgg16Layer>().unwrap(), layer);
        }
    }

    fn check_shape(h: i64, w: i64, layer: &str, expect: Option<[i64; 3]>) {
        let got = output_shape(h, w, layer.parse().unwrap()).ok();
        assert_eq!(got, expect, "{h}x{w} {layer}");
    }

    #[test]
    fn output_shapes_follow_keras() {
        check_shape(150, 150, "block5_pool", Some([512, 4, 4]));
        check_shape(150, 150, "block4_pool", Some([512, 9, 9]));
        check_shape(150, 150, "block3_pool", Some([256, 18, 18]));
        check_shape(150, 150, "block5_conv3", Some([512, 9, 9]));
        check_shape(224, 224, "block5_pool", Some([512, 7, 7]));
        check_shape(64, 48, "block5_pool", Some([512, 2, 1]));
        check_shape(32, 32, "block5_pool", Some([512, 1, 1]));
        check_shape(31, 32, "block5_pool", None);
        check_shape(31, 32, "block4_pool", Some([512, 1, 2]));
        check_shape(1, 1, "block1_conv2", Some([64, 1, 1]));
    }

    #[test]
    fn too_small_names_where_it_vanishes() {
        let err = output_shape(20, 150, Vgg16Layer::LAST).unwrap_err().to_string();
        assert!(
            err.contains("20x150") && err.contains("block5_pool") && err.contains("32x32"),
            "{err}"
        );
    }
}
