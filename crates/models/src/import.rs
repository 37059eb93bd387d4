//! Importing VGG16 conv-base weights from other files into our tensor names
//! (`features.N.weight` OIHW, `features.N.bias`), with every shape and value checked.
//!
//! ONNX exports of Keras models (tf2onnx) name initializers after the Keras layers, e.g.
//! `functional_1/block1_conv1_1/convolution/ReadVariableOp:0` (kernel) and
//! `functional_1/block1_conv1_1/Squeeze:0` (bias): a layer's tensors are found by a path segment
//! that is the Keras name, optionally with a `_<n>` suffix. Kernels in Keras' HWIO layout are
//! transposed to OIHW.

use std::path::Path;

use tch::Tensor;

use crate::onnx::{Initializer, read_initializers};
use crate::{LayerKind, ModelError, VGG16_LAYERS};

/// The 26 conv-base tensors under our names, read from the ONNX file at `path`.
pub fn vgg16_from_onnx(path: &Path) -> Result<Vec<(String, Tensor)>, ModelError> {
    let initializers = read_initializers(path)?;
    let err = |reason: String| ModelError::Weights { path: path.to_owned(), reason };
    let mut out = Vec::new();
    let mut used = 0;
    for spec in &VGG16_LAYERS {
        let LayerKind::Conv { in_channels, out_channels } = spec.kind else { continue };
        let mine: Vec<&Initializer> = initializers.iter().filter(|i| names_layer(&i.name, spec.keras_name)).collect();
        let pick = |rank: usize, what: &str| -> Result<&Initializer, ModelError> {
            let found: Vec<&&Initializer> = mine.iter().filter(|i| i.shape.len() == rank).collect();
            match found[..] {
                [one] => Ok(one),
                [] => Err(err(format!("no {what} for {} (looked for a {rank}-D initializer named after the layer)", spec.keras_name))),
                _ => Err(err(format!(
                    "several {what} candidates for {}: {:?}",
                    spec.keras_name,
                    found.iter().map(|i| i.name.as_str()).collect::<Vec<_>>()
                ))),
            }
        };
        let kernel = pick(4, "kernel")?;
        let bias = pick(1, "bias")?;
        used += 2;
        let oihw = [out_channels, in_channels, 3, 3];
        let hwio = [3, 3, in_channels, out_channels];
        let weight = Tensor::from_slice(&kernel.values);
        let weight = if kernel.shape == oihw {
            weight.reshape(oihw)
        } else if kernel.shape == hwio {
            weight.reshape(hwio).permute([3, 2, 0, 1]).contiguous()
        } else {
            return Err(err(format!(
                "kernel {} of {} has shape {:?}, expected {oihw:?} (OIHW) or {hwio:?} (HWIO)",
                kernel.name, spec.keras_name, kernel.shape
            )));
        };
        if bias.shape != [out_channels] {
            return Err(err(format!("bias {} of {} has shape {:?}, expected [{out_channels}]", bias.name, spec.keras_name, bias.shape)));
        }
        for init in [kernel, bias] {
            if let Some(v) = init.values.iter().find(|v| !v.is_finite()) {
                return Err(err(format!("tensor {} holds a non-finite value ({v})", init.name)));
            }
        }
        out.push((format!("features.{}.weight", spec.torch_index), weight));
        out.push((format!("features.{}.bias", spec.torch_index), Tensor::from_slice(&bias.values)));
    }
    for extra in initializers.iter().filter(|i| !VGG16_LAYERS.iter().any(|s| names_layer(&i.name, s.keras_name))) {
        tracing::debug!(name = %extra.name, shape = ?extra.shape, "ignoring an initializer outside the conv base");
    }
    tracing::info!(tensors = used, "imported the VGG16 conv base from ONNX");
    Ok(out)
}

/// True when a `/`-separated segment of `name` is `layer` or `layer_<digits>`.
fn names_layer(name: &str, layer: &str) -> bool {
    name.split(['/', ':']).any(|segment| match segment.strip_prefix(layer) {
        Some("") => true,
        Some(rest) => rest.strip_prefix('_').is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())),
        None => false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_segments() {
        assert!(names_layer("functional_1/block1_conv1_1/convolution/ReadVariableOp:0", "block1_conv1"));
        assert!(names_layer("functional_1/block1_conv1_1/Squeeze:0", "block1_conv1"));
        assert!(names_layer("vgg16/block5_conv3/kernel:0", "block5_conv3"));
        assert!(!names_layer("functional_1/block1_conv10/Squeeze:0", "block1_conv1"));
        assert!(!names_layer("functional_1/block1_conv1_x/Squeeze:0", "block1_conv1"));
        assert!(!names_layer("dense/kernel:0", "block1_conv1"));
    }
}
