//! The splits the training loop eats: every image of a split decoded once, resized (nearest, as
//! Keras `flow_from_directory`) to the input size, held as RGB8 `[N, H, W, 3]` in file order.

use std::path::Path;

use anyhow::{Context, Result, bail};
use dataset::{ClassMode, DecodedSplit, ScanOptions, SplitIndex};

/// A split decoded to RGB8 at the input size, in file order.
pub type Images = DecodedSplit;

/// Scans `<root>/<split>` like Keras `flow_from_directory` (sparse labels).
pub fn scan(root: &Path, split: &str) -> Result<SplitIndex> {
    dataset::scan(root, split, &ScanOptions { class_mode: ClassMode::Sparse, ..Default::default() })
        .with_context(|| format!("scanning split {split} of {}", root.display()))
}

/// Decodes every image of `<root>/<split>` at `size` x `size`. An empty split is an error.
pub fn load(root: &Path, split: &str, size: usize) -> Result<Images> {
    let index = scan(root, split)?;
    if index.is_empty() {
        bail!("split {split} of {} has no images", root.display());
    }
    DecodedSplit::decode(index, size)
        .with_context(|| format!("decoding split {split} of {}", root.display()))
}
