//! Convolutional bases described by a layer list: VGG16, Chollet's small convnet, a VGG16 of
//! reduced width, or any stack of convolutions (+ ReLU) and 2x2 max pools. The list is what a
//! weights file stores in its `layers` metadata, so a base trained here loads by the same API as
//! VGG16 (layer names, cut, output shapes, freezing).
//!
//! Every layer has a Keras name (`conv2d_1`, `max_pooling2d_1`, `block1_conv1`) and a
//! torchvision index (`features.N`, its position in an `nn.Sequential` of conv, ReLU, pool);
//! variables are named `features.N.weight|bias` whatever the architecture, so the VGG16 names
//! are a special case of the rule, not an exception.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::{ModelError, Pooling};

/// `architecture` metadata value of the VGG16 conv base (files without a `layers` list).
pub const VGG16_ARCHITECTURE: &str = "vgg16_conv_base";
/// `architecture` of Chollet's small convnet (*Deep Learning with Python* 5.2) without its top.
pub const SMALL_CONVNET: &str = "small_convnet";

/// The 18 layers of the VGG16 conv base (Simonyan & Zisserman 2014, configuration D, no
/// classifier), input to output: Keras name and, for a 3x3 "same" convolution (+ ReLU), its
/// filters; `None` for a 2x2 max pool. [`ConvArch::vgg16`] is built from it; the torchvision
/// indices (`block1_conv1` = `features.0`, `block5_pool` = `features.30`) follow from the order.
const VGG16_LAYERS: [(&str, Option<i64>); 18] = [
    ("block1_conv1", Some(64)),
    ("block1_conv2", Some(64)),
    ("block1_pool", None),
    ("block2_conv1", Some(128)),
    ("block2_conv2", Some(128)),
    ("block2_pool", None),
    ("block3_conv1", Some(256)),
    ("block3_conv2", Some(256)),
    ("block3_conv3", Some(256)),
    ("block3_pool", None),
    ("block4_conv1", Some(512)),
    ("block4_conv2", Some(512)),
    ("block4_conv3", Some(512)),
    ("block4_pool", None),
    ("block5_conv1", Some(512)),
    ("block5_conv2", Some(512)),
    ("block5_conv3", Some(512)),
    ("block5_pool", None),
];

/// Keras `padding=` of a convolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Padding {
    /// Output as large as the input (odd kernels: `kernel / 2` zeros on each side).
    Same,
    /// No padding: each side loses `kernel / 2` pixels.
    Valid,
}

/// What a resolved layer computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerKind {
    /// `kernel` x `kernel` convolution, stride 1, followed by ReLU (VGG16: 3x3, "same").
    Conv { in_channels: i64, out_channels: i64, kernel: i64, padding: Padding },
    /// 2x2 max pool, stride 2, no padding (floor), as Keras `MaxPooling2D` "valid".
    Pool,
}

/// One layer as a weights file's `layers` metadata lists it (input to output; the input has
/// 3 channels, RGB, and each convolution's input channels are the previous output channels).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum LayerDef {
    /// `Conv2D(filters, kernel, padding=..., activation='relu')`, stride 1.
    Conv { name: String, filters: i64, kernel: i64, padding: Padding },
    /// `MaxPooling2D((2, 2))`: 2x2, stride 2, floor.
    MaxPool { name: String },
}

impl LayerDef {
    pub fn name(&self) -> &str {
        match self {
            Self::Conv { name, .. } | Self::MaxPool { name } => name,
        }
    }
}

/// A resolved layer of an architecture: its name, torchvision index and what it computes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConvLayer {
    pub name: String,
    /// Index in the equivalent torchvision `nn.Sequential` (the convolution's index for conv
    /// layers; its ReLU is the next index).
    pub torch_index: usize,
    pub kind: LayerKind,
}

impl ConvLayer {
    /// Weights and biases of this layer (0 for a pool).
    pub fn parameter_count(&self) -> i64 {
        match self.kind {
            LayerKind::Conv { in_channels, out_channels, kernel, .. } => {
                out_channels * in_channels * kernel * kernel + out_channels
            }
            LayerKind::Pool => 0,
        }
    }

    /// `features.N`, the torchvision spelling.
    pub fn torch_name(&self) -> String {
        format!("features.{}", self.torch_index)
    }
}

/// A layer of a given architecture, by position (input to output). Obtained from
/// [`ConvArch::layer`] or [`ToLayer`]; meaningful only for the architecture it came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Layer(usize);

impl Layer {
    /// Position in the architecture's layer list.
    pub fn position(self) -> usize {
        self.0
    }
}

/// A layer name as given on a command line, resolved once the architecture is known (after the
/// weights are loaded): a Keras name (any case) or a torchvision index `features.N`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LayerName(String);

impl LayerName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for LayerName {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s.is_empty() {
            return Err("empty layer name".to_owned());
        }
        Ok(Self(s.to_owned()))
    }
}

impl fmt::Display for LayerName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Anything that names a layer of an architecture: a [`Layer`], a [`LayerName`] or a `&str`
/// (Keras name or `features.N`, resolved by [`ConvArch::layer`]).
pub trait ToLayer {
    fn to_layer(&self, arch: &ConvArch) -> Result<Layer, ModelError>;
}

impl ToLayer for Layer {
    fn to_layer(&self, arch: &ConvArch) -> Result<Layer, ModelError> {
        if self.0 < arch.layers.len() {
            Ok(*self)
        } else {
            Err(arch.unknown(&format!("#{}", self.0)))
        }
    }
}

impl ToLayer for LayerName {
    fn to_layer(&self, arch: &ConvArch) -> Result<Layer, ModelError> {
        arch.layer(&self.0)
    }
}

impl ToLayer for &LayerName {
    fn to_layer(&self, arch: &ConvArch) -> Result<Layer, ModelError> {
        arch.layer(&self.0)
    }
}

impl ToLayer for &str {
    fn to_layer(&self, arch: &ConvArch) -> Result<Layer, ModelError> {
        arch.layer(self)
    }
}

/// A convolutional base: a name and its layers, input to output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConvArch {
    name: String,
    defs: Vec<LayerDef>,
    layers: Vec<ConvLayer>,
}

impl ConvArch {
    /// Checks and resolves a layer list: names unique, non-empty, not of the `features.N` form;
    /// filters and kernel positive; "same" padding only with odd kernels (Keras pads an even one
    /// asymmetrically, which a symmetric libtorch padding cannot reproduce).
    pub fn new(name: &str, defs: Vec<LayerDef>) -> Result<Self, ModelError> {
        let bad = |reason: String| ModelError::BadArchitecture { name: name.to_owned(), reason };
        if name.trim().is_empty() {
            return Err(bad("empty architecture name".to_owned()));
        }
        if defs.is_empty() {
            return Err(bad("no layers".to_owned()));
        }
        let mut layers: Vec<ConvLayer> = Vec::with_capacity(defs.len());
        let (mut channels, mut index) = (3, 0);
        for def in &defs {
            let layer_name = def.name();
            if layer_name.is_empty()
                || layer_name.starts_with("features.")
                || layer_name.chars().any(|c| c.is_whitespace())
            {
                return Err(bad(format!(
                    "layer name {layer_name:?} must be a non-empty Keras-style name without spaces, not features.N"
                )));
            }
            if layers.iter().any(|l| l.name.eq_ignore_ascii_case(layer_name)) {
                return Err(bad(format!("layer name {layer_name:?} appears twice")));
            }
            let (kind, width) = match *def {
                LayerDef::Conv { filters, kernel, padding, .. } => {
                    if filters < 1 || kernel < 1 {
                        return Err(bad(format!(
                            "{layer_name}: filters {filters} and kernel {kernel} must be at least 1"
                        )));
                    }
                    if padding == Padding::Same && kernel % 2 == 0 {
                        return Err(bad(format!(
                            "{layer_name}: \"same\" padding needs an odd kernel, got {kernel}"
                        )));
                    }
                    let kind = LayerKind::Conv {
                        in_channels: channels,
                        out_channels: filters,
                        kernel,
                        padding,
                    };
                    channels = filters;
                    (kind, 2)
                }
                LayerDef::MaxPool { .. } => (LayerKind::Pool, 1),
            };
            layers.push(ConvLayer { name: layer_name.to_owned(), torch_index: index, kind });
            index += width;
        }
        Ok(Self { name: name.to_owned(), defs, layers })
    }

    /// The VGG16 conv base (Keras `VGG16(include_top=False)`), built from the private
    /// `VGG16_LAYERS` table: 18 layers, `block1_conv1` (`features.0`) .. `block5_pool`
    /// (`features.30`), 13 3x3 "same" convolutions and 5 pools, 14,714,688 parameters; an input
    /// `[N, 3, H, W]` gives `[N, 512, H/32, W/32]` (floor), so it needs at least 32x32.
    pub fn vgg16() -> Self {
        Self::vgg16_width(1.0).expect("VGG16 is a valid architecture")
    }

    /// VGG16 with every convolution's filters scaled by `width` (rounded, at least 1), same
    /// layer names; `width` 1 is VGG16 itself, named `vgg16_conv_base`, otherwise
    /// `vgg16_w<width>` (e.g. `vgg16_w0.25`: 16, 32, 64, 128, 128 filters).
    pub fn vgg16_width(width: f64) -> Result<Self, ModelError> {
        if !(width > 0.0 && width <= 1.0) {
            return Err(ModelError::BadArchitecture {
                name: format!("vgg16_w{width}"),
                reason: "width must be in (0, 1]".to_owned(),
            });
        }
        let defs = VGG16_LAYERS
            .iter()
            .map(|&(name, filters)| match filters {
                Some(filters) => LayerDef::Conv {
                    name: name.to_owned(),
                    filters: ((filters as f64 * width).round() as i64).max(1),
                    kernel: 3,
                    padding: Padding::Same,
                },
                None => LayerDef::MaxPool { name: name.to_owned() },
            })
            .collect();
        let name =
            if width == 1.0 { VGG16_ARCHITECTURE.to_owned() } else { format!("vgg16_w{width}") };
        Self::new(&name, defs)
    }

    /// Chollet's small convnet (*Deep Learning with Python* 5.2, cats vs dogs from scratch)
    /// without its top: Conv2D 32, 64, 128, 128 (3x3, "valid", ReLU), each followed by a 2x2
    /// max pool, with the names Keras gives a fresh `Sequential` (`conv2d_1`, `max_pooling2d_1`).
    /// At 150x150 it outputs `[128, 7, 7]`; it needs at least 46x46 input.
    pub fn small_convnet() -> Self {
        let mut defs = Vec::new();
        for (i, filters) in [32, 64, 128, 128].into_iter().enumerate() {
            defs.push(LayerDef::Conv {
                name: format!("conv2d_{}", i + 1),
                filters,
                kernel: 3,
                padding: Padding::Valid,
            });
            defs.push(LayerDef::MaxPool { name: format!("max_pooling2d_{}", i + 1) });
        }
        Self::new(SMALL_CONVNET, defs).expect("the small convnet is a valid architecture")
    }

    /// Reads the `layers` metadata (JSON list of [`LayerDef`]) of a weights file.
    pub fn from_json(name: &str, json: &str) -> Result<Self, ModelError> {
        let defs: Vec<LayerDef> =
            serde_json::from_str(json).map_err(|e| ModelError::BadArchitecture {
                name: name.to_owned(),
                reason: format!("layers metadata: {e}"),
            })?;
        Self::new(name, defs)
    }

    /// The layer list as the `layers` metadata stores it (compact JSON).
    pub fn to_json(&self) -> String {
        serde_json::to_string(&self.defs).expect("layer definitions serialise")
    }

    /// Whether this is exactly the VGG16 conv base (its weights files carry no `layers` list).
    pub fn is_vgg16(&self) -> bool {
        *self == Self::vgg16()
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn defs(&self) -> &[LayerDef] {
        &self.defs
    }

    /// All layers, input to output.
    pub fn layers(&self) -> impl Iterator<Item = Layer> + use<> {
        (0..self.layers.len()).map(Layer)
    }

    /// The last layer: what the base outputs.
    pub fn last(&self) -> Layer {
        Layer(self.layers.len() - 1)
    }

    pub fn spec(&self, layer: Layer) -> &ConvLayer {
        &self.layers[layer.0]
    }

    /// The Keras name of `layer`.
    pub fn name_of(&self, layer: Layer) -> &str {
        &self.layers[layer.0].name
    }

    /// Finds a layer by Keras name (any case) or torchvision index (`features.N`; a conv's ReLU,
    /// `features.N+1`, names the conv layer, since Keras fuses them).
    pub fn layer(&self, name: &str) -> Result<Layer, ModelError> {
        let trimmed = name.trim();
        let found = match trimmed.strip_prefix("features.") {
            Some(index) => index.parse::<usize>().ok().and_then(|index| {
                self.layers.iter().position(|l| match l.kind {
                    LayerKind::Conv { .. } => index == l.torch_index || index == l.torch_index + 1,
                    LayerKind::Pool => index == l.torch_index,
                })
            }),
            None => self.layers.iter().position(|l| l.name.eq_ignore_ascii_case(trimmed)),
        };
        found.map(Layer).ok_or_else(|| self.unknown(name))
    }

    fn unknown(&self, name: &str) -> ModelError {
        if self.is_vgg16() {
            return ModelError::UnknownLayer { name: name.to_owned() };
        }
        let first = &self.layers[0];
        let last = &self.layers[self.layers.len() - 1];
        ModelError::UnknownLayerIn {
            name: name.to_owned(),
            architecture: self.name.clone(),
            expected: format!(
                "{} .. {} or {} .. {}",
                first.name,
                last.name,
                first.torch_name(),
                last.torch_name()
            ),
        }
    }

    /// Output shape `[C, H, W]` of `layer` for an input of `height` x `width`, or the error a
    /// forward pass would meet (the first layer whose output would be empty).
    pub fn output_shape(
        &self,
        height: i64,
        width: i64,
        layer: Layer,
    ) -> Result<[i64; 3], ModelError> {
        let (mut c, mut h, mut w) = (3, height, width);
        for spec in &self.layers[..=layer.0] {
            match spec.kind {
                LayerKind::Conv { out_channels, kernel, padding, .. } => {
                    c = out_channels;
                    if padding == Padding::Valid {
                        (h, w) = (h - kernel + 1, w - kernel + 1);
                    }
                }
                LayerKind::Pool => (h, w) = (h / 2, w / 2),
            }
            if h < 1 || w < 1 {
                return Err(ModelError::InputTooSmall {
                    height,
                    width,
                    architecture: self.name.clone(),
                    layer: self.name_of(layer).to_owned(),
                    vanishes_at: spec.name.clone(),
                    min: self.min_input(layer),
                });
            }
        }
        Ok([c, h, w])
    }

    /// The smallest square input that survives up to `layer`.
    pub fn min_input(&self, layer: Layer) -> i64 {
        let mut size = 1;
        for spec in self.layers[..=layer.0].iter().rev() {
            match spec.kind {
                LayerKind::Conv { kernel, padding: Padding::Valid, .. } => size += kernel - 1,
                LayerKind::Conv { .. } => {}
                LayerKind::Pool => size *= 2,
            }
        }
        size
    }

    /// Shape of one image's features at `layer` with `pooling`: `[C, H, W]` or `[C]`.
    pub fn feature_shape(
        &self,
        height: i64,
        width: i64,
        layer: Layer,
        pooling: Pooling,
    ) -> Result<Vec<i64>, ModelError> {
        let [c, h, w] = self.output_shape(height, width, layer)?;
        Ok(match pooling {
            Pooling::None => vec![c, h, w],
            Pooling::Avg | Pooling::Max => vec![c],
        })
    }

    /// The tensors of the base, in layer order: `features.N.weight` (OIHW) and `.bias`.
    pub fn expected_tensors(&self) -> Vec<(String, Vec<i64>)> {
        self.layers
            .iter()
            .filter_map(|l| match l.kind {
                LayerKind::Conv { in_channels, out_channels, kernel, .. } => Some([
                    (
                        format!("features.{}.weight", l.torch_index),
                        vec![out_channels, in_channels, kernel, kernel],
                    ),
                    (format!("features.{}.bias", l.torch_index), vec![out_channels]),
                ]),
                LayerKind::Pool => None,
            })
            .flatten()
            .collect()
    }

    /// Whether `layer` trains when fine-tuning from `unfreeze_from` (that layer and every later
    /// one; nothing when `None`). Pools have no parameters and so are never trainable.
    pub fn is_trainable(&self, layer: Layer, unfreeze_from: Option<Layer>) -> bool {
        self.spec(layer).parameter_count() > 0 && unfreeze_from.is_some_and(|from| layer >= from)
    }

    /// Total parameters.
    pub fn parameter_count(&self) -> i64 {
        self.layers.iter().map(ConvLayer::parameter_count).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_shape(arch: &ConvArch, size: i64, layer: &str, expect: Option<[i64; 3]>) {
        let got = arch.output_shape(size, size, arch.layer(layer).unwrap()).ok();
        assert_eq!(got, expect, "{} {size} {layer}", arch.name());
    }

    #[test]
    fn small_convnet_shapes_follow_keras() {
        let arch = ConvArch::small_convnet();
        // Chollet 5.2's model.summary() at 150x150
        check_shape(&arch, 150, "conv2d_1", Some([32, 148, 148]));
        check_shape(&arch, 150, "max_pooling2d_2", Some([64, 36, 36]));
        check_shape(&arch, 150, "max_pooling2d_4", Some([128, 7, 7]));
        check_shape(&arch, 64, "max_pooling2d_4", Some([128, 2, 2]));
        check_shape(&arch, 64, "features.9", Some([128, 4, 4]));
        check_shape(&arch, 46, "max_pooling2d_4", Some([128, 1, 1]));
        check_shape(&arch, 45, "max_pooling2d_4", None);
        assert_eq!(arch.min_input(arch.last()), 46);
        assert_eq!(arch.parameter_count(), 896 + 18_496 + 73_856 + 147_584);
    }

    #[test]
    fn vgg16_is_the_table() {
        let arch = ConvArch::vgg16();
        assert!(arch.is_vgg16());
        assert_eq!(arch.name(), VGG16_ARCHITECTURE);
        let table: Vec<(&str, usize)> =
            arch.layers().map(|l| (arch.name_of(l), arch.spec(l).torch_index)).collect();
        assert_eq!(
            table,
            [
                ("block1_conv1", 0),
                ("block1_conv2", 2),
                ("block1_pool", 4),
                ("block2_conv1", 5),
                ("block2_conv2", 7),
                ("block2_pool", 9),
                ("block3_conv1", 10),
                ("block3_conv2", 12),
                ("block3_conv3", 14),
                ("block3_pool", 16),
                ("block4_conv1", 17),
                ("block4_conv2", 19),
                ("block4_conv3", 21),
                ("block4_pool", 23),
                ("block5_conv1", 24),
                ("block5_conv2", 26),
                ("block5_conv3", 28),
                ("block5_pool", 30),
            ]
        );
        assert_eq!(arch.name_of(arch.last()), "block5_pool");
        assert_eq!(arch.parameter_count(), 14_714_688);
        let tensors = arch.expected_tensors();
        assert_eq!(tensors.len(), 26);
        assert_eq!(tensors[0], ("features.0.weight".to_owned(), vec![64, 3, 3, 3]));
        assert_eq!(tensors[25], ("features.28.bias".to_owned(), vec![512]));
        let params: i64 = tensors.iter().map(|(_, s)| s.iter().product::<i64>()).sum();
        assert_eq!(params, 14_714_688);
        for l in arch.layers() {
            let pool = arch.spec(l).kind == LayerKind::Pool;
            assert_eq!(arch.spec(l).parameter_count() == 0, pool, "{}", arch.name_of(l));
        }
    }

    #[test]
    fn vgg16_names_in_both_spellings() {
        let arch = ConvArch::vgg16();
        check_name(&arch, "block1_conv1", Ok("block1_conv1"));
        check_name(&arch, "BLOCK5_CONV1", Ok("block5_conv1"));
        check_name(&arch, " block4_pool ", Ok("block4_pool"));
        check_name(&arch, "features.0", Ok("block1_conv1"));
        check_name(&arch, "features.1", Ok("block1_conv1"));
        check_name(&arch, "features.24", Ok("block5_conv1"));
        check_name(&arch, "features.30", Ok("block5_pool"));
        check_name(&arch, "features.23", Ok("block4_pool"));
        let valid =
            "block1_conv1 .. block5_pool) or a torchvision index (features.0 .. features.30)";
        for bad in ["features.31", "features.4x", "block6_conv1", ""] {
            check_name(&arch, bad, Err(valid));
            check_name(&arch, bad, Err(&format!("unknown VGG16 layer {bad:?}")));
        }
        let name: LayerName = "features.24".parse().unwrap();
        assert_eq!(arch.name_of(name.to_layer(&arch).unwrap()), "block5_conv1");
        assert_eq!(arch.name_of("block5_conv1".to_layer(&arch).unwrap()), "block5_conv1");
        assert!(Layer(18).to_layer(&arch).is_err());
    }

    #[test]
    fn names_round_trip() {
        for arch in
            [ConvArch::vgg16(), ConvArch::vgg16_width(0.25).unwrap(), ConvArch::small_convnet()]
        {
            for layer in arch.layers() {
                assert_eq!(arch.layer(arch.name_of(layer)).unwrap(), layer);
                assert_eq!(arch.layer(&arch.spec(layer).torch_name()).unwrap(), layer);
                assert_eq!(layer.to_layer(&arch).unwrap(), layer);
            }
        }
    }

    #[test]
    fn vgg16_output_shapes_follow_keras() {
        let arch = ConvArch::vgg16();
        let check = |h: i64, w: i64, layer: &str, expect: Option<[i64; 3]>| {
            let got = arch.output_shape(h, w, arch.layer(layer).unwrap()).ok();
            assert_eq!(got, expect, "{h}x{w} {layer}");
        };
        check(150, 150, "block5_pool", Some([512, 4, 4]));
        check(150, 150, "block4_pool", Some([512, 9, 9]));
        check(150, 150, "block3_pool", Some([256, 18, 18]));
        check(150, 150, "block5_conv3", Some([512, 9, 9]));
        check(224, 224, "block5_pool", Some([512, 7, 7]));
        check(64, 48, "block5_pool", Some([512, 2, 1]));
        check(32, 32, "block5_pool", Some([512, 1, 1]));
        check(31, 32, "block5_pool", None);
        check(31, 32, "block4_pool", Some([512, 1, 2]));
        check(1, 1, "block1_conv2", Some([64, 1, 1]));
        let min: Vec<i64> = ["block1_conv2", "block1_pool", "block4_conv1", "block5_pool"]
            .iter()
            .map(|l| arch.min_input(arch.layer(l).unwrap()))
            .collect();
        assert_eq!(min, [1, 2, 8, 32]);
    }

    #[test]
    fn too_small_names_where_it_vanishes() {
        let arch = ConvArch::vgg16();
        let err = arch.output_shape(20, 150, arch.last()).unwrap_err().to_string();
        assert_eq!(
            err,
            "input of 20x150 is too small for vgg16_conv_base up to block5_pool: the feature map vanishes at block5_pool (needs at least 32x32)"
        );
    }

    #[test]
    fn feature_shapes_with_pooling() {
        let arch = ConvArch::vgg16();
        let shape = |h: i64, layer: &str, pooling: Pooling| {
            arch.feature_shape(h, h, arch.layer(layer).unwrap(), pooling)
        };
        assert_eq!(shape(150, "block5_pool", Pooling::None).unwrap(), [512, 4, 4]);
        assert_eq!(shape(150, "block3_pool", Pooling::Avg).unwrap(), [256]);
        assert_eq!(shape(48, "features.23", Pooling::Max).unwrap(), [512]);
        assert!(shape(16, "block5_pool", Pooling::Avg).is_err());
    }

    #[test]
    fn trainable_from_a_layer_up() {
        let arch = ConvArch::vgg16();
        let l = |name: &str| arch.layer(name).unwrap();
        let trainable = |from: Option<Layer>| {
            arch.layers()
                .filter(|&x| arch.is_trainable(x, from))
                .map(|x| arch.name_of(x))
                .collect::<Vec<_>>()
        };
        assert!(trainable(None).is_empty());
        assert_eq!(
            trainable(Some(l("block5_conv1"))),
            ["block5_conv1", "block5_conv2", "block5_conv3"]
        );
        assert_eq!(trainable(Some(l("features.23"))), trainable(Some(l("block5_conv1"))));
        assert_eq!(trainable(Some(arch.last())), Vec::<&str>::new());
        assert_eq!(trainable(Some(l("block1_conv1"))).len(), 13);
    }

    #[test]
    fn reduced_vgg16_keeps_names() {
        let arch = ConvArch::vgg16_width(0.25).unwrap();
        assert!(!arch.is_vgg16());
        assert_eq!(arch.name(), "vgg16_w0.25");
        check_shape(&arch, 64, "block5_pool", Some([128, 2, 2]));
        check_shape(&arch, 64, "block1_conv2", Some([16, 64, 64]));
        assert!(ConvArch::vgg16_width(0.0).is_err());
    }

    fn check_name(arch: &ConvArch, name: &str, expect: Result<&str, &str>) {
        let got = arch.layer(name).map(|l| arch.name_of(l).to_owned()).map_err(|e| e.to_string());
        match expect {
            Ok(n) => assert_eq!(got.as_deref(), Ok(n), "{name}"),
            Err(part) => assert!(got.as_ref().is_err_and(|e| e.contains(part)), "{name}: {got:?}"),
        }
    }

    #[test]
    fn names_in_both_spellings() {
        let arch = ConvArch::small_convnet();
        check_name(&arch, "conv2d_1", Ok("conv2d_1"));
        check_name(&arch, "CONV2D_3", Ok("conv2d_3"));
        check_name(&arch, "features.0", Ok("conv2d_1"));
        check_name(&arch, "features.1", Ok("conv2d_1"));
        check_name(&arch, "features.2", Ok("max_pooling2d_1"));
        check_name(&arch, "features.3", Ok("conv2d_2"));
        check_name(&arch, "features.11", Ok("max_pooling2d_4"));
        check_name(
            &arch,
            "features.12",
            Err("conv2d_1 .. max_pooling2d_4 or features.0 .. features.11"),
        );
        check_name(&arch, "block5_conv1", Err("unknown layer \"block5_conv1\" in small_convnet"));
        check_name(&ConvArch::vgg16(), "conv2d_1", Err("unknown VGG16 layer"));
    }

    #[test]
    fn layer_list_round_trips_and_is_checked() {
        let arch = ConvArch::small_convnet();
        let json = arch.to_json();
        assert!(json.starts_with(r#"[{"type":"conv","name":"conv2d_1","filters":32,"kernel":3,"padding":"valid"},{"type":"max_pool","name":"max_pooling2d_1"}"#), "{json}");
        assert_eq!(ConvArch::from_json(SMALL_CONVNET, &json).unwrap(), arch);
        let err = |json: &str| ConvArch::from_json("x", json).unwrap_err().to_string();
        assert!(err("[]").contains("no layers"));
        assert!(
            err(r#"[{"type":"conv","name":"a","filters":0,"kernel":3,"padding":"same"}]"#)
                .contains("at least 1")
        );
        assert!(
            err(r#"[{"type":"conv","name":"a","filters":2,"kernel":2,"padding":"same"}]"#)
                .contains("odd kernel")
        );
        assert!(
            err(r#"[{"type":"max_pool","name":"a"},{"type":"max_pool","name":"A"}]"#)
                .contains("twice")
        );
        assert!(err(r#"[{"type":"max_pool","name":"features.0"}]"#).contains("not features.N"));
        assert!(err(r#"[{"type":"dense","name":"a"}]"#).contains("layers metadata"));
    }
}
