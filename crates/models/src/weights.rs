//! Our weights file, the one format every stage reads: safetensors holding the conv-base tensors
//! (`features.N.weight` OIHW, `features.N.bias`, float32; 26 for VGG16) and string metadata
//! saying what they are (`architecture`, `preprocessing`, `source`, `source_sha256`,
//! `source_format`, `format_version`, and for any base other than VGG16 `layers`, the layer list
//! as JSON, see [`ConvArch`]). A VGG16 file has no `layers` entry, so VGG16 files keep the bytes
//! (and digests) they had before other architectures existed. Loading checks every name, shape
//! and value and exposes the file's sha256, which the feature cache keys on.
//! Bytes are written by [`crate::tensor_file`], so the same weights always give the same file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;
use tch::{Device, Kind, Tensor, nn};

use crate::{
    ConvArch, ConvBase, ModelError, Pooling, Preprocessing, ToLayer, VGG16_ARCHITECTURE, preprocess,
};

/// `format_version` metadata value this crate writes and reads.
pub const FORMAT_VERSION: &str = "1";

/// What a weights file says about itself, plus its digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WeightsMeta {
    pub path: PathBuf,
    /// sha256 (hex) of the whole file: the identity of these weights in feature-cache keys.
    pub digest: String,
    pub architecture: String,
    /// How input images must be preprocessed for these weights (overridable by the caller).
    pub preprocessing: Preprocessing,
    /// Free text: where the weights came from.
    pub source: String,
    /// sha256 of the file they were converted from, when known.
    pub source_sha256: Option<String>,
    /// `onnx`, `torch`, `tch` or `safetensors`, when known.
    pub source_format: Option<String>,
    pub format_version: String,
    /// The layers (VGG16 for files without a `layers` entry).
    #[serde(skip)]
    pub arch: ConvArch,
}

/// What an import records about its origin (the rest of the metadata is fixed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Provenance {
    pub preprocessing: Preprocessing,
    pub source: String,
    pub source_sha256: String,
    pub source_format: String,
}

/// Weights ready to run: the variables, the module over them, and the file's metadata.
#[derive(Debug)]
pub struct LoadedWeights {
    pub vs: nn::VarStore,
    pub base: ConvBase,
    pub meta: WeightsMeta,
}

impl LoadedWeights {
    /// RGB batch (uint8 `[N, H, W, 3]` or float `[N, 3, H, W]` on 0-255) -> features at `layer`
    /// with `pooling`, preprocessed as the file says. To override the preprocessing, call
    /// [`preprocess`] and [`ConvBase::features`] yourself.
    pub fn features(
        &self,
        batch: &Tensor,
        layer: impl ToLayer,
        pooling: Pooling,
    ) -> Result<Tensor, ModelError> {
        let xs = preprocess(batch, self.meta.preprocessing)?;
        self.base.features(&xs, layer, pooling)
    }
}

/// Picks the tensors of `arch` out of `tensors` (read from `path`) and checks them: every one
/// present (exactly `features.N.weight`, or unambiguously ending in `.features.N.weight`, as
/// with a `module.` prefix), with its shape, all values finite. Returns them in layer order as
/// contiguous float32 on the CPU. Tensors that are not part of the conv base (a classifier, a
/// dense head) are listed at debug level and dropped.
pub fn check_tensors(
    path: &Path,
    arch: &ConvArch,
    tensors: Vec<(String, Tensor)>,
) -> Result<Vec<(String, Tensor)>, ModelError> {
    let mut out = Vec::new();
    let mut used = vec![false; tensors.len()];
    for (name, expected) in arch.expected_tensors() {
        let suffix = format!(".{name}");
        let exact = tensors.iter().position(|(n, _)| *n == name);
        let candidates: Vec<usize> = match exact {
            Some(i) => vec![i],
            None => (0..tensors.len()).filter(|&i| tensors[i].0.ends_with(&suffix)).collect(),
        };
        let index = match candidates[..] {
            [i] => i,
            [] => return Err(ModelError::MissingTensor { path: path.to_owned(), name, expected }),
            _ => {
                let mut candidates: Vec<String> =
                    candidates.iter().map(|&i| tensors[i].0.clone()).collect();
                candidates.sort();
                return Err(ModelError::AmbiguousTensor {
                    path: path.to_owned(),
                    name,
                    candidates,
                });
            }
        };
        used[index] = true;
        let (found_as, tensor) = &tensors[index];
        if tensor.size() != expected {
            return Err(ModelError::TensorShape {
                path: path.to_owned(),
                name: found_as.clone(),
                expected,
                actual: tensor.size(),
            });
        }
        let t = tensor.f_to_device(Device::Cpu)?.f_to_kind(Kind::Float)?.f_contiguous()?;
        check_finite(path, found_as, &t)?;
        out.push((name, t));
    }
    let extras: Vec<&str> =
        tensors.iter().zip(&used).filter(|(_, u)| !**u).map(|((n, _), _)| n.as_str()).collect();
    if !extras.is_empty() {
        tracing::debug!(path = %path.display(), architecture = arch.name(), count = extras.len(), ?extras, "tensors outside the conv base, ignored");
    }
    Ok(out)
}

fn check_finite(path: &Path, name: &str, t: &Tensor) -> Result<(), ModelError> {
    let finite = t.f_isfinite()?;
    if bool::try_from(finite.f_all()?)? {
        return Ok(());
    }
    let bad = t.f_masked_select(&finite.f_logical_not()?)?;
    let value = f32::try_from(bad.f_get(0)?)?;
    Err(ModelError::NonFinite { path: path.to_owned(), name: name.to_owned(), value })
}

/// sha256 (hex) of the file at `path` (streamed; `run_folder::file_sha256` with this crate's
/// error).
pub fn file_sha256(path: &Path) -> Result<String, ModelError> {
    run_folder::file_sha256(path).map(|d| d.sha256).map_err(|e| match e {
        run_folder::RunError::Io { path, source } => ModelError::Io { path, source },
        other => ModelError::Weights { path: path.to_owned(), reason: other.to_string() },
    })
}

/// Writes the tensors of `arch` (checked by [`check_tensors`]; others are dropped) and their
/// provenance to `path` atomically (temp file in the same folder, fsync, rename). Returns the
/// new file's metadata. A VGG16 file (`arch` equal to [`ConvArch::vgg16`]) gets no `layers`
/// entry, so its bytes and digest are what they always were. Errors: a missing tensor, a wrong
/// shape or a non-finite value ([`check_tensors`]), or the write.
pub fn save_conv_base(
    path: &Path,
    arch: &ConvArch,
    tensors: &[(String, Tensor)],
    provenance: &Provenance,
) -> Result<WeightsMeta, ModelError> {
    let checked = check_tensors(
        path,
        arch,
        tensors.iter().map(|(n, t)| (n.clone(), t.shallow_clone())).collect(),
    )?;
    let mut metadata: BTreeMap<String, String> = [
        ("architecture", arch.name().to_owned()),
        ("format_version", FORMAT_VERSION.to_owned()),
        ("preprocessing", provenance.preprocessing.name().to_owned()),
        ("source", provenance.source.clone()),
        ("source_format", provenance.source_format.clone()),
        ("source_sha256", provenance.source_sha256.clone()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    if !arch.is_vgg16() {
        metadata.insert("layers".to_owned(), arch.to_json());
    }
    let digest = crate::tensor_file::save(path, &checked, &metadata)?;
    Ok(WeightsMeta {
        path: path.to_owned(),
        digest,
        architecture: arch.name().to_owned(),
        preprocessing: provenance.preprocessing,
        source: provenance.source.clone(),
        source_sha256: Some(provenance.source_sha256.clone()),
        source_format: Some(provenance.source_format.clone()),
        format_version: FORMAT_VERSION.to_owned(),
        arch: arch.clone(),
    })
}

/// Reads and checks our weights file: metadata (architecture, preprocessing, format version),
/// then every tensor. Returns the checked tensors (CPU float32, layer order) and the metadata.
pub fn read_weights(path: &Path) -> Result<(Vec<(String, Tensor)>, WeightsMeta), ModelError> {
    let err = |reason: String| ModelError::Weights { path: path.to_owned(), reason };
    let loaded = crate::tensor_file::load(path)?;
    let get = |key: &str| loaded.metadata.get(key).cloned();
    let hint = "import it with `vgg16-weights import` to record what it is";
    if loaded.metadata.contains_key(crate::HEADER_KEY) {
        return Err(err(
            "this is a model file (a whole classifier, written by train-head, fine-tune or pretrain), not a weights file: pass a conv base's weights (pretrain's base.safetensors, or an imported VGG16)".to_owned(),
        ));
    }
    let architecture = get("architecture").ok_or_else(|| {
        err(format!("no architecture in the metadata: not one of our weights files ({hint})"))
    })?;
    let arch = match get("layers") {
        Some(layers) => {
            ConvArch::from_json(&architecture, &layers).map_err(|e| err(e.to_string()))?
        }
        None if architecture == VGG16_ARCHITECTURE => ConvArch::vgg16(),
        None => {
            return Err(err(format!(
                "architecture is {architecture:?} but the metadata has no layers list (only {VGG16_ARCHITECTURE:?} may omit it)"
            )));
        }
    };
    let format_version = get("format_version").unwrap_or_default();
    if format_version != FORMAT_VERSION {
        return Err(err(format!(
            "format_version is {format_version:?}, this build reads {FORMAT_VERSION:?}"
        )));
    }
    let preprocessing = get("preprocessing")
        .ok_or_else(|| err(format!("no preprocessing in the metadata ({hint})")))?;
    let preprocessing = preprocessing.parse().map_err(|e: ModelError| err(e.to_string()))?;
    let tensors = check_tensors(path, &arch, loaded.tensors)?;
    let meta = WeightsMeta {
        path: path.to_owned(),
        digest: loaded.sha256,
        architecture,
        preprocessing,
        source: get("source").unwrap_or_default(),
        source_sha256: get("source_sha256"),
        source_format: get("source_format"),
        format_version,
        arch,
    };
    Ok((tensors, meta))
}

/// Loads our weights file onto `device`: the conv base with its variables filled, and the
/// metadata (including the digest).
pub fn load_weights(path: &Path, device: Device) -> Result<LoadedWeights, ModelError> {
    let (tensors, meta) = read_weights(path)?;
    let vs = nn::VarStore::new(device);
    let base = ConvBase::with_arch(&vs.root(), meta.arch.clone());
    crate::tensor_file::copy_into(&vs, &tensors, path)?;
    tracing::info!(path = %path.display(), architecture = %meta.architecture, digest = %meta.digest, preprocessing = %meta.preprocessing, source = %meta.source, ?device, "loaded weights");
    Ok(LoadedWeights { vs, base, meta })
}
