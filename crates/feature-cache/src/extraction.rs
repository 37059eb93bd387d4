//! `features.json`: the record the extraction stage leaves in its run folder, telling later
//! stages which cache entries hold which split (and which augmented pass).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::{Cache, CacheError, LoadedEntry};

/// File name of the [`ExtractionRecord`] in the extraction stage's run folder.
pub const EXTRACTION_FILE: &str = "features.json";

/// What an extraction run produced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExtractionRecord {
    /// The cache root the entries were written to (or found in).
    pub cache_dir: PathBuf,
    /// Class names; label `i` is `classes[i]`.
    pub classes: Vec<String>,
    /// Per-sample feature shape, e.g. `[4, 4, 512]` (channels last, as Keras).
    pub feature_shape: Vec<u64>,
    /// Keras layer name the features were taken at, e.g. `block5_pool`.
    pub layer: String,
    /// sha256 of the weights file the features were computed with.
    pub weights_sha256: String,
    /// One entry per (split, augmented pass).
    pub entries: Vec<EntryRef>,
}

/// One cache entry of the run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryRef {
    /// `train`, `validation`, `test`, ...
    pub split: String,
    /// `None` for plain features, `Some(p)` for augmented pass `p`.
    pub pass: Option<u32>,
    /// The entry's name in the cache (64 hex digits).
    pub key: String,
    /// Feature rows in the entry (`N`).
    pub rows: u64,
    /// Set when the entry lives in a private cache (the run folder's) because the shared one
    /// could not be written; `None` means the record's `cache_dir`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_dir: Option<PathBuf>,
    /// How this run got the entry; absent in records written before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<Origin>,
}

/// How an extraction run got a cache entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Origin {
    /// Already in the cache (verified).
    Found,
    /// Computed from the images.
    Images,
    /// Computed from the cached entry of a lower layer (this key), running only the layers
    /// between.
    Derived {
        /// Key of the lower-layer entry.
        from_key: String,
        /// Its layer, e.g. `block4_pool`.
        from_layer: String,
    },
}

impl ExtractionRecord {
    /// The plain entry of `split`, if extracted.
    pub fn plain(&self, split: &str) -> Option<&EntryRef> {
        self.entries.iter().find(|e| e.split == split && e.pass.is_none())
    }

    /// The augmented passes of `split`, in pass order.
    pub fn passes(&self, split: &str) -> Vec<&EntryRef> {
        let mut v: Vec<&EntryRef> =
            self.entries.iter().filter(|e| e.split == split && e.pass.is_some()).collect();
        v.sort_by_key(|e| e.pass);
        v
    }

    /// Loads and verifies an entry from `cache` (any error, including a missing or corrupt
    /// entry, names the key and tells how to recompute).
    /// An entry with its own `cache_dir` is read from there instead of `cache`.
    pub fn load(
        cache: &Cache,
        entry: &EntryRef,
        record_path: &Path,
    ) -> Result<LoadedEntry, CacheError> {
        let dir = match &entry.cache_dir {
            Some(private) => private.join(&entry.key),
            None => cache.entry_dir(&entry.key),
        };
        let reason = match crate::entry::load(&dir) {
            Ok(loaded) => return Ok(loaded),
            Err(err) => err.to_string(),
        };
        Err(CacheError::Corrupt {
            path: dir,
            reason: format!(
                "cache entry {} ({} of {}) cannot be used: {reason}; rerun extract-features to recompute it",
                entry.key,
                entry.split,
                record_path.display()
            ),
        })
    }
}
