//! Named tensors in safetensors files with string metadata (head weights, checkpoints): the
//! models crate's one byte-stable reader and writer (`models::tensor_file`), with this crate's
//! error and a `HashMap` of metadata.

use std::collections::HashMap;
use std::path::Path;

use tch::Tensor;

pub use models::tensor_file::{copy_into, named_variables};

use crate::TrainError;

/// Writes `tensors` (any float kind, saved as float32 on the CPU) and `metadata` to `path`
/// atomically; returns the file's sha256. Non-finite values are refused.
pub fn save(
    path: &Path,
    tensors: &[(String, Tensor)],
    metadata: &HashMap<String, String>,
) -> Result<String, TrainError> {
    let metadata = metadata.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    Ok(models::tensor_file::save(path, tensors, &metadata)?)
}

/// Tensors (float32, CPU, sorted by name) and metadata read back from a file written by
/// [`save`], plus the file's sha256.
#[derive(Debug)]
pub struct Loaded {
    pub tensors: Vec<(String, Tensor)>,
    pub metadata: HashMap<String, String>,
    pub sha256: String,
}

pub fn load(path: &Path) -> Result<Loaded, TrainError> {
    let loaded = models::tensor_file::load(path)?;
    Ok(Loaded {
        tensors: loaded.tensors,
        metadata: loaded.metadata.into_iter().collect(),
        sha256: loaded.sha256,
    })
}
