//! The splits the training loop eats: every image of a split decoded once, resized (nearest, as
//! Keras `flow_from_directory`) to the input size, held as RGB8 `[N, H, W, 3]` in file order.

use std::path::Path;

use anyhow::{Context, Result, bail};
use dataset::{BatchOptions, ClassMode, DecodeOptions, ScanOptions, Size, SplitIndex};

/// A split decoded to RGB8 at the input size, in file order.
pub struct Images {
    pub index: SplitIndex,
    /// `[N, H, W, 3]`, image after image.
    pub pixels: Vec<u8>,
    /// Class index per image (sorted class folder names, as Keras).
    pub labels: Vec<i64>,
    pub size: usize,
}

impl Images {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    pub fn classes(&self) -> &[String] {
        &self.index.classes
    }

    /// Bytes of one image.
    pub fn image_len(&self) -> usize {
        self.size * self.size * 3
    }

    pub fn image(&self, i: usize) -> &[u8] {
        let len = self.image_len();
        &self.pixels[i * len..(i + 1) * len]
    }
}

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
    let decode = DecodeOptions { target_size: Some(Size::square(size as u32)), ..Default::default() };
    let options = BatchOptions { batch_size: 64, shuffle: None, ..Default::default() };
    let image_len = size * size * 3;
    let mut pixels = vec![0u8; index.len() * image_len];
    let mut labels = vec![0i64; index.len()];
    for batch in dataset::batches(&index, &decode, &options, 0)? {
        let batch = batch.with_context(|| format!("decoding split {split} of {}", root.display()))?;
        for (row, &i) in batch.indices.iter().enumerate() {
            pixels[i * image_len..(i + 1) * image_len].copy_from_slice(batch.image(row));
            labels[i] = batch.classes[row] as i64;
        }
    }
    Ok(Images { index, pixels, labels, size })
}
