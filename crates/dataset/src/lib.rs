//! Image-folder datasets, Keras `flow_from_directory` style: scan `<root>/<split>/<class>/**`,
//! decode and resize images to RGB8 under strict limits, and batch one epoch at a time.
//! Never links libtorch, so it builds and tests in seconds.
//!
//! # API
//!
//! ```no_run
//! use std::path::Path;
//! use dataset::{BatchOptions, ClassMode, DecodeOptions, ScanOptions, ShuffleSeed, Size};
//!
//! # fn main() -> dataset::Result<()> {
//! let root = Path::new("data/fashion-mnist-small");
//! // 1. Scan: classes = sorted subfolders, files sorted by path, dot-entries left out.
//! let index = dataset::scan(root, "train", &ScanOptions {
//!     class_mode: ClassMode::Binary, ..Default::default() })?;
//! index.class_map().write(Path::new("runs/demo"))?;       // classes.json beside derived data
//! let digests = dataset::digests(&index)?;                 // sha256 per file, for cache keys
//! // 2. Decode options: target size (height, width), nearest (Keras default) or bilinear.
//! let decode = DecodeOptions { target_size: Some(Size::square(150)), ..Default::default() };
//! // 3. One epoch of batches: every image exactly once, seeded shuffle, bounded prefetch.
//! let opts = BatchOptions { batch_size: 20, shuffle: Some(ShuffleSeed(42)), ..Default::default() };
//! for batch in dataset::batches(&index, &decode, &opts, /* epoch */ 0)? {
//!     let batch = batch?;
//!     let [_n, _h, _w, _c] = batch.shape();                // batch.images: [N, H, W, 3] u8
//!     let _ = (&batch.targets, &batch.indices, &batch.paths);
//! }
//! # Ok(()) }
//! ```
//!
//! - [`scan`] / [`scan_dir`] -> [`SplitIndex`] (classes, [`FileEntry`] with class and byte
//!   size, [`Omitted`] entries with the reason); [`ClassMode`] binary / categorical / sparse;
//!   [`ClassMap`] reads and writes `classes.json`; [`list_images`] walks one folder the same
//!   way (predict's folders).
//! - [`classes`](mod@classes): the one rule for a training class set
//!   ([`scan_training_splits`], [`require_training_classes`]: at least 2 classes).
//! - [`decode`] / [`decode_with_info`] / [`decode_bytes`] -> `image::RgbImage`, by one colour
//!   rule for every input (see [`decode`](mod@decode)); [`DecodeLimits`] refuse decompression
//!   bombs from the header.
//! - [`batches`] -> [`Batches`], an iterator of `Result<`[`Batch`]`>`; [`BadImagePolicy`]
//!   fail-fast (default) or skip with a maximum fraction, the skipped list from
//!   [`Batches::skipped`]; [`epoch_order`] is the shuffle, independent of the thread count.
//! - [`file_digest`] / [`digests`]: content sha256, the file identity for feature-cache keys.
//! - [`check()`](check::check): the report behind `dataset check <root>`.
//!
//! Errors: one enum, [`Error`]; every variant names the path and the reason, and
//! [`BadImage`] classifies unusable image files.
//!
//! Dependencies: `image` (decoders, limits, EXIF orientation, bilinear resize), `rayon`
//! (parallel decode and hashing), `walkdir` (sorted recursive walk with symlink-loop
//! detection), `rand_chacha` (platform-independent shuffles), `sha2`/`hex` (digests),
//! `serde_json` (classes.json, check report); the binary adds clap, tracing-subscriber and
//! indicatif.

pub mod batch;
pub mod check;
pub mod classes;
pub mod decode;
pub mod decoded;
pub mod digest;
pub mod error;
mod jpeg;
pub mod resize;
pub mod scan;

pub use batch::{
    BadImagePolicy, Batch, BatchOptions, Batches, ShuffleSeed, Skipped, Targets, batches,
    epoch_order,
};
pub use classes::{
    MIN_TRAINING_CLASSES, require_same_classes, require_training_classes, scan_training_splits,
};
pub use decode::{
    DecodeLimits, DecodeOptions, ImageInfo, Interpolation, Size, decode, decode_bytes,
    decode_with_info,
};
pub use decoded::DecodedSplit;
pub use digest::{digests, file_digest, split_digest, tree_digest};
pub use error::{BadImage, Error, Result};
pub use scan::{
    CLASS_MAP_FILE, ClassMap, ClassMode, FileEntry, IMAGE_EXTENSIONS, Omission, Omitted,
    ScanOptions, SplitIndex, keras_file_order, list_images, scan, scan_dir,
};
