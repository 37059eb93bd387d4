//! Content-addressed cache of extracted features, shareable between teammates.
//!
//! An entry holds the features and labels of one *chunk* of a dataset split under one set of
//! extraction settings, named by the sha256 of those settings and the chunk's files
//! ([`FeatureKey`]). A split is a *split index* (`split.rs`) listing its chunks in order; chunk
//! boundaries come from the data, so a changed image changes one chunk's key and workers on
//! many machines (`extract-features --shard i/n`) each fill a share of one cache. Entries are
//! written to a temp folder and renamed into place, every byte is covered by a digest and
//! checked when read, and a corrupt entry is removed and recomputed, never used. See `entry.rs`
//! for the on-disk layout of an entry.
//!
//! Use: `Cache::open(root)`, then `cache.lookup(&key)` -> `Hit(LoadedEntry)` / `Miss` /
//! `Corrupt`; on a miss `cache.writer(key, tool, rows, row_shape)`, `append` (flat slices) or
//! `append_array` (ndarray) batches, `finish`. [`verify_entry`] checks one entry by root and key,
//! [`verify_split`] a split index and its chunks. A split is read through its index by
//! [`SplitReader`] (rows on demand, memory flat in the split's size) or whole as a
//! [`LoadedSplit`].
//!
//! No libtorch here: a plain Rust program reads a team's cache as `ndarray` arrays, features in
//! the stored layout (`[N, H, W, C]`, channels last, or `[N, C]` when pooled) and labels `[N]`:
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use feature_cache::{Cache, ExtractionRecord};
//! let path = std::path::Path::new("runs/demo/extract/features.json");
//! let record: ExtractionRecord = serde_json::from_slice(&std::fs::read(path)?)?;
//! let cache = Cache::open(&record.cache_dir)?;
//! let train = ExtractionRecord::load(&cache, record.plain("train").unwrap(), path)?;
//! let (x, y) = train.into_arrays(); // ArrayD<f32> [N, 4, 4, 512], Array1<i32> [N]
//! assert_eq!(x.shape()[0], y.len());
//! # Ok(()) }
//! ```

mod bundle;
mod cache;
mod entry;
mod error;
mod extraction;
mod folders;
mod key;
pub mod npy;
mod split;

pub use bundle::{export, import};
pub use cache::{Cache, EntryStatus, IndexStatus, Lookup, verify_split};
pub use entry::{
    CHECKSUMS, EntryWriter, FEATURES, FileDigest, LABELS, LoadedEntry, MANIFEST, Manifest, load,
    verify, verify_entry,
};
pub use error::CacheError;
pub use extraction::{EXTRACTION_FILE, EntryRef, ExtractionRecord, Origin};
pub use key::{AugmentationKey, DatasetKey, FORMAT_VERSION, FeatureKey, FileKey, is_key};
pub use split::{
    CHUNK_BOUNDARY_MODULUS, CHUNK_MAX_FILES, ChunkIndex, ChunkRef, INDEX_DIR, LoadedSplit,
    PlannedChunk, SplitPlan, SplitReader, chunk_ranges, index_path, write_index,
};

/// The cache root when none is given: `$TRANSFER_KIT_CACHE_DIR`, else
/// `$XDG_CACHE_HOME/transfer-kit/features`, else `~/.cache/transfer-kit/features`, else
/// `.cache/features` in the current folder.
pub fn default_cache_dir() -> std::path::PathBuf {
    let var = |name| std::env::var_os(name).filter(|v| !v.is_empty()).map(std::path::PathBuf::from);
    if let Some(dir) = var("TRANSFER_KIT_CACHE_DIR") {
        return dir;
    }
    let base = var("XDG_CACHE_HOME").or_else(|| var("HOME").map(|h| h.join(".cache")));
    match base {
        Some(base) => base.join("transfer-kit").join("features"),
        None => std::path::PathBuf::from(".cache/features"),
    }
}
