//! Named float32 tensors with string metadata in safetensors files: the one reader and writer
//! behind weights files, model files, head files and checkpoints.
//!
//! The writer is ours rather than the `safetensors` crate's because that one takes metadata as a
//! `HashMap` and so writes it in a different order each run; ours sorts tensor names and
//! metadata keys, so the same tensors always give the same bytes (and the same digest, which the
//! feature cache keys on). Layout: 8-byte little-endian header length, the JSON header padded with
//! spaces to a multiple of 8 (aligned data), then the tensors in name order. Non-finite values are
//! refused: a file we write is always usable. Files are written atomically
//! (`run_folder::write_atomic`).

use std::collections::BTreeMap;
use std::path::Path;

use tch::{Kind, Tensor, nn};

use crate::ModelError;

/// safetensors bytes of `tensors` (any float kind, stored as float32) and `metadata`.
pub fn serialize(
    path: &Path,
    tensors: &[(String, Tensor)],
    metadata: &BTreeMap<String, String>,
) -> Result<Vec<u8>, ModelError> {
    let mut sorted: Vec<&(String, Tensor)> = tensors.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    let mut header = serde_json::Map::new();
    header
        .insert("__metadata__".into(), serde_json::to_value(metadata).expect("strings serialise"));
    let mut data = Vec::new();
    for (name, t) in sorted {
        let t = t.f_to_kind(Kind::Float)?.f_to_device(tch::Device::Cpu)?.f_contiguous()?;
        let values = Vec::<f32>::try_from(t.f_flatten(0, -1)?)?;
        if let Some(&value) = values.iter().find(|v| !v.is_finite()) {
            return Err(ModelError::NonFinite { path: path.to_owned(), name: name.clone(), value });
        }
        let start = data.len();
        data.extend(values.iter().flat_map(|v| v.to_le_bytes()));
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": "F32", "shape": t.size(), "data_offsets": [start, data.len()]}),
        );
    }
    // serde_json's Map is a BTreeMap (no preserve_order feature): keys come out sorted.
    let mut json = serde_json::to_vec(&header).expect("header serialises");
    json.resize(json.len().next_multiple_of(8), b' ');
    let mut out = Vec::with_capacity(8 + json.len() + data.len());
    out.extend_from_slice(&(json.len() as u64).to_le_bytes());
    out.extend_from_slice(&json);
    out.extend_from_slice(&data);
    Ok(out)
}

/// Writes `tensors` and `metadata` to `path` atomically; returns the file's sha256 (hex).
pub fn save(
    path: &Path,
    tensors: &[(String, Tensor)],
    metadata: &BTreeMap<String, String>,
) -> Result<String, ModelError> {
    let bytes = serialize(path, tensors, metadata)?;
    write_atomic(path, &bytes)?;
    Ok(run_folder::sha256_hex(&bytes))
}

/// [`run_folder::write_atomic`] with this crate's error.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ModelError> {
    run_folder::write_atomic(path, bytes).map_err(|e| match e {
        run_folder::RunError::Io { path, source } => ModelError::Io { path, source },
        other => ModelError::Weights { path: path.to_owned(), reason: other.to_string() },
    })
}

/// Tensors (float32, CPU, sorted by name) and metadata read back from a safetensors file, plus
/// the file's sha256.
#[derive(Debug)]
pub struct Loaded {
    pub tensors: Vec<(String, Tensor)>,
    pub metadata: BTreeMap<String, String>,
    pub sha256: String,
}

/// Reads a float32 safetensors file. Errors name the file: unreadable, not safetensors, or a
/// tensor of another dtype.
pub fn load(path: &Path) -> Result<Loaded, ModelError> {
    let err = |reason: String| ModelError::Weights { path: path.to_owned(), reason };
    let bytes =
        std::fs::read(path).map_err(|source| ModelError::Io { path: path.to_owned(), source })?;
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| {
        err(match e {
            // The header parsed but promises more tensor bytes than the file holds.
            safetensors::SafeTensorError::MetadataIncompleteBuffer => format!(
                "its size ({} bytes) does not match the tensor data its header describes: the \
                 file is truncated (an interrupted copy or download?) or has bytes appended",
                bytes.len()
            ),
            e => format!("not a safetensors file: {e}"),
        })
    })?;
    let metadata = header.metadata().clone().unwrap_or_default().into_iter().collect();
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| err(format!("not a safetensors file: {e}")))?;
    let mut tensors = Vec::new();
    for (name, view) in st.tensors() {
        if view.dtype() != safetensors::Dtype::F32 {
            return Err(err(format!("tensor {name} is {:?}, expected F32", view.dtype())));
        }
        let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
        tensors.push((name, Tensor::f_from_data_size(view.data(), &shape, Kind::Float)?));
    }
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(Loaded { tensors, metadata, sha256: run_folder::sha256_hex(&bytes) })
}

/// Copies `tensors` into the variables of `vs` with the same names; every variable must be
/// there with its shape (`path` names the file they came from). Extra tensors are ignored.
pub fn copy_into(
    vs: &nn::VarStore,
    tensors: &[(String, Tensor)],
    path: &Path,
) -> Result<(), ModelError> {
    copy_into_named(&named_variables(vs), tensors, path)
}

/// Copies `tensors` into `variables` by name (no gradient recorded); every variable must be in
/// `tensors` with its shape (`path` names where they came from). Extra tensors are ignored.
pub fn copy_into_named(
    variables: &[(String, Tensor)],
    tensors: &[(String, Tensor)],
    path: &Path,
) -> Result<(), ModelError> {
    for (name, var) in variables {
        let (_, src) =
            tensors.iter().find(|(n, _)| n == name).ok_or_else(|| ModelError::MissingTensor {
                path: path.to_owned(),
                name: name.clone(),
                expected: var.size(),
            })?;
        if src.size() != var.size() {
            return Err(ModelError::TensorShape {
                path: path.to_owned(),
                name: name.clone(),
                expected: var.size(),
                actual: src.size(),
            });
        }
        tch::no_grad(|| var.shallow_clone().f_copy_(src))?;
    }
    Ok(())
}

/// The variables of `vs`, sorted by name.
pub fn named_variables(vs: &nn::VarStore) -> Vec<(String, Tensor)> {
    let mut vars: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    vars
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_tensors_same_bytes_and_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.safetensors");
        let a = Tensor::from_slice(&[1.0f32, 2.0, 3.0, 4.0]).reshape([2, 2]);
        let b = Tensor::from_slice(&[5.0f32]);
        let meta = BTreeMap::from([("z".to_owned(), "1".to_owned()), ("a".into(), "2".into())]);
        let one = serialize(&path, &[("b".into(), b.copy()), ("a".into(), a.copy())], &meta);
        let two = serialize(&path, &[("a".into(), a.copy()), ("b".into(), b.copy())], &meta);
        assert_eq!(one.unwrap(), two.unwrap());
        let digest = save(&path, &[("a".into(), a.copy()), ("b".into(), b)], &meta).unwrap();
        let loaded = load(&path).unwrap();
        assert_eq!(loaded.sha256, digest);
        assert_eq!(loaded.metadata, meta);
        assert_eq!(loaded.tensors[0].0, "a");
        assert!(loaded.tensors[0].1.equal(&a));
        let nan = Tensor::from_slice(&[f32::NAN]);
        let err = save(&path, &[("n".into(), nan)], &meta).unwrap_err().to_string();
        assert!(err.contains("t.safetensors") && err.contains("non-finite"), "{err}");
    }
}
