//! Content digests (sha256 of the file bytes, lower-case hex): the identity of an image for
//! feature-cache keys and for the train/test leakage check, independent of its path.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use rayon::prelude::*;
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::scan::SplitIndex;

/// sha256 of `bytes`, lower-case hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// sha256 of a file's content, lower-case hex, read in 64 KiB pieces.
pub fn file_digest(path: &Path) -> Result<String> {
    let mut file = File::open(path).map_err(|e| Error::io(path, e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = file.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// The digest of every file of `index`, in index order, computed in parallel.
pub fn digests(index: &SplitIndex) -> Result<Vec<String>> {
    index.files.par_iter().map(|f| file_digest(&f.path)).collect()
}
