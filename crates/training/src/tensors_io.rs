//! Named tensors to and from safetensors files with string metadata (head weights, checkpoints),
//! written atomically. tch's own safetensors writer has no metadata, so this goes through the
//! `safetensors` crate with float32 data.

use std::collections::HashMap;
use std::path::Path;

use safetensors::tensor::Dtype;
use sha2::{Digest, Sha256};
use tch::{Kind, Tensor};

use crate::TrainError;

/// Writes `tensors` (any float kind, saved as float32 on the CPU) and `metadata` to `path`
/// atomically; returns the file's sha256. Non-finite values are refused: a file we write is
/// always usable.
pub fn save(
    path: &Path,
    tensors: &[(String, Tensor)],
    metadata: &HashMap<String, String>,
) -> Result<String, TrainError> {
    let err = |reason: String| TrainError::Weights { path: path.to_owned(), reason };
    let mut owned: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        let t = t.f_to_kind(Kind::Float)?.f_to_device(tch::Device::Cpu)?.f_contiguous()?;
        let values =
            Vec::<f32>::try_from(t.f_flatten(0, -1)?).map_err(|e| err(format!("{name}: {e}")))?;
        if let Some(bad) = values.iter().find(|v| !v.is_finite()) {
            return Err(err(format!(
                "tensor {name} holds a non-finite value ({bad}); refusing to write it"
            )));
        }
        let shape = t.size().iter().map(|&d| d as usize).collect();
        let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        owned.push((name.clone(), shape, bytes));
    }
    let bytes = serialize(&owned, metadata);
    crate::write_atomic_ctx(path, &bytes)?;
    Ok(hex::encode(Sha256::digest(&bytes)))
}

/// The safetensors layout (8-byte little-endian header length, JSON header, data), written here
/// rather than by the `safetensors` crate because its header comes from a `HashMap` and so
/// changes order from run to run; ours is sorted, so the same weights give the same bytes.
fn serialize(
    tensors: &[(String, Vec<usize>, Vec<u8>)],
    metadata: &HashMap<String, String>,
) -> Vec<u8> {
    let mut sorted: Vec<&(String, Vec<usize>, Vec<u8>)> = tensors.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    let mut header = serde_json::Map::new();
    let meta: std::collections::BTreeMap<&String, &String> = metadata.iter().collect();
    header.insert("__metadata__".into(), serde_json::to_value(meta).expect("strings serialise"));
    let mut offset = 0;
    for (name, shape, bytes) in &sorted {
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + bytes.len()]}),
        );
        offset += bytes.len();
    }
    // serde_json's Map is a BTreeMap here (no preserve_order feature): keys come out sorted.
    let mut json = serde_json::to_vec(&header).expect("header serialises");
    json.resize(json.len().next_multiple_of(8), b' ');
    let mut out = Vec::with_capacity(8 + json.len() + offset);
    out.extend_from_slice(&(json.len() as u64).to_le_bytes());
    out.extend_from_slice(&json);
    for (_, _, bytes) in sorted {
        out.extend_from_slice(bytes);
    }
    out
}

/// Tensors (float32, CPU) and metadata read back from a file written by [`save`], plus the
/// file's sha256.
#[derive(Debug)]
pub struct Loaded {
    pub tensors: Vec<(String, Tensor)>,
    pub metadata: HashMap<String, String>,
    pub sha256: String,
}

pub fn load(path: &Path) -> Result<Loaded, TrainError> {
    let err = |reason: String| TrainError::Weights { path: path.to_owned(), reason };
    let bytes =
        std::fs::read(path).map_err(|source| TrainError::Io { path: path.to_owned(), source })?;
    let (_, header) =
        safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| err(e.to_string()))?;
    let metadata = header.metadata().clone().unwrap_or_default();
    let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| err(e.to_string()))?;
    let mut tensors = Vec::new();
    for (name, view) in st.tensors() {
        if view.dtype() != Dtype::F32 {
            return Err(err(format!("tensor {name} is {:?}, expected F32", view.dtype())));
        }
        let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
        let values: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        tensors.push((name, Tensor::from_slice(&values).reshape(&shape)));
    }
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(Loaded { tensors, metadata, sha256: hex::encode(Sha256::digest(&bytes)) })
}

/// Copies `tensors` into the variables of `vs` with the same names; every variable must be
/// present with its shape.
pub fn copy_into(
    vs: &tch::nn::VarStore,
    tensors: &[(String, Tensor)],
    path: &Path,
) -> Result<(), TrainError> {
    let by_name: HashMap<&str, &Tensor> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let mut vars: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, var) in vars {
        let src = by_name.get(name.as_str()).ok_or_else(|| TrainError::Weights {
            path: path.to_owned(),
            reason: format!("missing tensor {name}"),
        })?;
        if src.size() != var.size() {
            return Err(TrainError::Weights {
                path: path.to_owned(),
                reason: format!(
                    "tensor {name}: expected shape {:?}, found {:?}",
                    var.size(),
                    src.size()
                ),
            });
        }
        tch::no_grad(|| var.shallow_clone().f_copy_(src))?;
    }
    Ok(())
}

/// The variables of `vs`, sorted by name.
pub fn named_variables(vs: &tch::nn::VarStore) -> Vec<(String, Tensor)> {
    let mut vars: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    vars
}
