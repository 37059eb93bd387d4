//! The splits the training loop eats: every image of a split decoded once, resized (nearest, as
//! Keras `flow_from_directory`) to the input size, held as RGB8 `[N, H, W, 3]` in file order.

use std::path::Path;

use anyhow::{Context, Result, bail};
use dataset::{ClassMode, DecodedSplit, ScanOptions, SplitIndex};

/// A split decoded to RGB8 at the input size, in file order.
pub type Images = DecodedSplit;

/// Scans `<root>/<split>` like Keras `flow_from_directory` (sparse labels), symlinked folders
/// left out; see [`scan_following`].
pub fn scan(root: &Path, split: &str) -> Result<SplitIndex> {
    scan_following(root, split, false)
}

/// [`scan`], following symlinked folders when `follow_links` (`--follow-links`).
pub fn scan_following(root: &Path, split: &str, follow_links: bool) -> Result<SplitIndex> {
    dataset::scan(root, split, &options(follow_links))
        .with_context(|| format!("scanning split {split} of {}", root.display()))
}

/// Scans `train` and every other split of `root` that exists, applying the class rule every
/// training stage applies (`dataset::scan_training_splits`: at least 2 classes, the same in
/// every split); returns the train split.
pub fn scan_train(root: &Path, follow_links: bool) -> Result<SplitIndex> {
    let splits: Vec<&str> = ["train", "validation", "test"]
        .into_iter()
        .filter(|s| *s == "train" || root.join(s).is_dir())
        .collect();
    let mut indexes = dataset::scan_training_splits(root, &splits, &options(follow_links))
        .with_context(|| format!("scanning {}", root.display()))?;
    Ok(indexes.swap_remove(0))
}

fn options(follow_links: bool) -> ScanOptions {
    ScanOptions { class_mode: ClassMode::Sparse, follow_links, ..Default::default() }
}

/// Decodes every image of `<root>/<split>` at `size` x `size`. An empty split is an error.
pub fn load(root: &Path, split: &str, size: usize) -> Result<Images> {
    load_following(root, split, size, false)
}

/// [`load`], following symlinked folders when `follow_links` (`--follow-links`).
pub fn load_following(root: &Path, split: &str, size: usize, follow_links: bool) -> Result<Images> {
    let index = scan_following(root, split, follow_links)?;
    if index.is_empty() {
        bail!("split {split} of {} has no images", root.display());
    }
    DecodedSplit::decode(index, size)
        .with_context(|| format!("decoding split {split} of {}", root.display()))
}
