//! `features.json`: the record the extraction stage leaves in its run folder, telling later
//! stages which split index (and so which chunk entries) holds each split and augmented pass.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::{Cache, CacheError, LoadedSplit, SplitReader};

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
    /// The split index's name in the cache (64 hex digits; `<cache>/index/<key>.json`), which
    /// lists the chunk entries holding the rows.
    pub key: String,
    /// Feature rows of the split (`N`), over all its chunks.
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

    /// Opens and verifies the split of `entry` through its split index (every chunk checked
    /// byte by byte; see [`SplitReader::open`]); rows are then read on demand. The index and its
    /// chunks are looked for in the entry's own `cache_dir` (a private cache), then in `cache`.
    /// Any error, including a missing or corrupt index or chunk, names the key, the split and
    /// the record, and tells how to recompute.
    pub fn open(
        cache: &Cache,
        entry: &EntryRef,
        record_path: &Path,
    ) -> Result<SplitReader, CacheError> {
        let roots: Vec<&Path> =
            entry.cache_dir.as_deref().into_iter().chain([cache.root()]).collect();
        SplitReader::open(&roots, &entry.key).map_err(|err| CacheError::Corrupt {
            path: crate::index_path(roots[0], &entry.key),
            reason: format!(
                "the {} features of {} (split index {}) cannot be used: {err}; rerun extract-features to recompute them",
                entry.split,
                record_path.display(),
                entry.key
            ),
        })
    }

    /// [`ExtractionRecord::open`], then the whole split read into memory (small splits,
    /// tests, tools; training stages stream through [`SplitReader`] instead).
    pub fn load(
        cache: &Cache,
        entry: &EntryRef,
        record_path: &Path,
    ) -> Result<LoadedSplit, CacheError> {
        Self::open(cache, entry, record_path)?.load()
    }
}
