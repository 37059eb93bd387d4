//! A whole split decoded once into memory: what the training stages (fine-tune's plain mode,
//! pretrain) draw their batches from, every epoch, without decoding again.

use crate::{BatchOptions, DecodeOptions, Result, Size, SplitIndex};

/// A split decoded to RGB8 at `size` x `size` (nearest resize, Keras' `flow_from_directory`
/// default), in file order.
#[derive(Debug)]
pub struct DecodedSplit {
    pub index: SplitIndex,
    /// `[N, H, W, 3]`, image after image.
    pub pixels: Vec<u8>,
    /// Class index per image (sorted class folder names, as Keras).
    pub labels: Vec<i64>,
    pub size: usize,
}

impl DecodedSplit {
    /// Decodes every image of `index`.
    pub fn decode(index: SplitIndex, size: usize) -> Result<Self> {
        let decode =
            DecodeOptions { target_size: Some(Size::square(size as u32)), ..Default::default() };
        let options = BatchOptions { batch_size: 64, shuffle: None, ..Default::default() };
        let image_len = size * size * 3;
        let mut pixels = vec![0u8; index.len() * image_len];
        let mut labels = vec![0i64; index.len()];
        for batch in crate::batches(&index, &decode, &options, 0)? {
            let batch = batch?;
            for (row, &i) in batch.indices.iter().enumerate() {
                pixels[i * image_len..(i + 1) * image_len].copy_from_slice(batch.image(row));
                labels[i] = batch.classes[row] as i64;
            }
        }
        Ok(Self { index, pixels, labels, size })
    }

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
