//! Decode one image file into RGB8 under strict limits, apply its EXIF orientation, then
//! optionally centre-crop to the target aspect ratio and resize (Keras `load_img` order).
//!
//! The colour rule, one for every input: the decoder's pixels become RGB8 by
//! [`image::DynamicImage::into_rgb8`], that is
//! - gray is replicated into R, G and B;
//! - alpha is dropped, not composited over a background (what PIL's `convert("RGB")`, used by
//!   Keras, does too), so a fully transparent pixel keeps its stored colour;
//! - palette images are expanded through their palette (and its alpha dropped);
//! - 16-bit samples are scaled to 8 bits as `round(v * 255 / 65535)` (PIL instead clips 16-bit
//!   gray at 255, which turns most real 16-bit images white);
//! - CMYK and YCCK JPEGs are converted to RGB as Pillow does (samples taken as Adobe-inverted,
//!   then Pillow's `cmyk2rgb`);
//! - GIF gives its first frame.
//!
//! JPEGs are decoded by libjpeg-turbo's decoder (see `jpeg.rs`), so their pixels equal Pillow's;
//! every other format by the `image` crate.
//!
//! Strictness beyond the decoders: a JPEG must have an end-of-image marker after its last scan
//! and a PNG must have its `IEND` chunk, because the decoders fill a truncated image with grey
//! instead of failing; width, height and the decoder's allocation are checked from the header,
//! before any pixel is decoded, so a decompression bomb costs nothing.

use std::fs;
use std::io::Cursor;
use std::path::Path;

use image::{
    DynamicImage, ImageDecoder, ImageError, ImageFormat, ImageReader, RgbImage,
    metadata::Orientation,
};
use serde::{Deserialize, Serialize};

use crate::error::{BadImage, Error, Result};

/// Resampling used for `target_size` (Keras `interpolation`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Interpolation {
    /// Pillow `NEAREST`: output `x` samples input `(x + 0.5) * in / out` (Keras default).
    #[default]
    Nearest,
    /// Pillow `BILINEAR`: triangle filter, widened when shrinking so it antialiases.
    Bilinear,
}

/// Output size, `(height, width)` order as in Keras `target_size`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Size {
    pub height: u32,
    pub width: u32,
}

impl Size {
    pub const fn new(height: u32, width: u32) -> Size {
        Size { height, width }
    }

    pub const fn square(side: u32) -> Size {
        Size { height: side, width: side }
    }
}

/// Refuse images beyond these, from the header, before decoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DecodeLimits {
    pub max_width: u32,
    pub max_height: u32,
    /// Bytes the decoder may allocate for the decoded image.
    pub max_alloc: u64,
}

impl Default for DecodeLimits {
    /// 16384 x 16384 pixels and 512 MiB: far above any photo a transfer-learning set holds.
    fn default() -> Self {
        DecodeLimits { max_width: 16384, max_height: 16384, max_alloc: 512 << 20 }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct DecodeOptions {
    /// Resize to this size; `None` keeps the stored size.
    pub target_size: Option<Size>,
    pub interpolation: Interpolation,
    /// Before resizing, crop the largest centred box with the target's aspect ratio
    /// (Keras `keep_aspect_ratio=True`), so nothing is stretched.
    pub crop_to_aspect_ratio: bool,
    pub limits: DecodeLimits,
}

/// What decoding learnt about a file, for `check` and logs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageInfo {
    /// Format sniffed from the content, lower case (`png`, `jpeg`, ...).
    pub format: String,
    /// Stored size, before orientation and resizing.
    pub width: u32,
    pub height: u32,
    /// The decoder's colour type, e.g. `L8`, `Rgba16`.
    pub color: String,
    /// The extension names another format than the content (e.g. a PNG named `.jpg`).
    pub extension_mismatch: bool,
}

/// Decodes `path` into RGB8 with `opts`; a format that contradicts the extension is logged.
pub fn decode(path: &Path, opts: &DecodeOptions) -> Result<RgbImage> {
    let (image, info) = decode_with_info(path, opts)?;
    if info.extension_mismatch {
        tracing::warn!(path = %path.display(), format = info.format, "content does not match the extension");
    }
    Ok(image)
}

/// Like [`decode`], and returns what was learnt about the file.
pub fn decode_with_info(path: &Path, opts: &DecodeOptions) -> Result<(RgbImage, ImageInfo)> {
    let bytes = read_image_file(path)?;
    decode_bytes(path, &bytes, opts)
}

/// Reads a candidate image file, refusing folders and special files before opening them
/// (a FIFO would block).
pub fn read_image_file(path: &Path) -> Result<Vec<u8>> {
    let meta = fs::metadata(path).map_err(|e| Error::io(path, e))?;
    let bad = |reason| Error::BadImage { path: path.to_owned(), reason };
    if meta.is_dir() {
        return Err(bad(BadImage::IsADirectory));
    }
    if !meta.is_file() {
        return Err(bad(BadImage::NotARegularFile));
    }
    fs::read(path).map_err(|e| Error::io(path, e))
}

/// Decodes image bytes; `path` is used for the extension check and error messages.
pub fn decode_bytes(
    path: &Path,
    bytes: &[u8],
    opts: &DecodeOptions,
) -> Result<(RgbImage, ImageInfo)> {
    let bad = |reason| Error::BadImage { path: path.to_owned(), reason };
    let format = sniff(bytes).map_err(bad)?;
    let name = format_name(format);
    check_complete(format, bytes).map_err(bad)?;

    let (mut image, width, height, color, orientation) = if format == ImageFormat::Jpeg {
        let jpeg = crate::jpeg::decode(bytes, &opts.limits).map_err(bad)?;
        (jpeg.image, jpeg.width, jpeg.height, jpeg.color.to_owned(), jpeg.orientation)
    } else {
        decode_other(path, bytes, format, &opts.limits).map_err(bad)?
    };
    image.apply_orientation(orientation);

    let extension_mismatch = path
        .extension()
        .and_then(|e| e.to_str())
        .and_then(ImageFormat::from_extension)
        .is_some_and(|ext| ext != format);
    let info = ImageInfo { format: name, width, height, color, extension_mismatch };
    let (interpolation, crop) = (opts.interpolation, opts.crop_to_aspect_ratio);
    let out = match (image, opts.target_size) {
        // Same result as converting first (channels are independent), a third of the work.
        (DynamicImage::ImageLuma8(gray), Some(size)) => {
            let (w, h) = gray.dimensions();
            gray_to_rgb(&resize_raw(gray.as_raw(), w, h, 1, size, interpolation, crop), size)
        }
        (image, Some(size)) => resize(&image.into_rgb8(), size, interpolation, crop),
        (image, None) => image.into_rgb8(),
    };
    Ok((out, info))
}

/// Every format but JPEG, through the `image` crate's decoders.
fn decode_other(
    path: &Path,
    bytes: &[u8],
    format: ImageFormat,
    limits: &DecodeLimits,
) -> Result<(DynamicImage, u32, u32, String, Orientation), BadImage> {
    // Width and height are checked below from the header, for a message with the numbers;
    // the allocation limit also binds the decoder's own buffers.
    let mut image_limits = image::Limits::default();
    image_limits.max_alloc = Some(limits.max_alloc);
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    reader.limits(image_limits.clone());
    let mut decoder = reader.into_decoder().map_err(|e| classify(format, e))?;

    let (width, height) = decoder.dimensions();
    if width > limits.max_width || height > limits.max_height {
        return Err(BadImage::TooLarge(format!(
            "{width}x{height} pixels, over the {}x{} limit",
            limits.max_width, limits.max_height
        )));
    }
    let total = decoder.total_bytes();
    if total > limits.max_alloc {
        return Err(BadImage::TooLarge(format!(
            "{width}x{height} pixels need {total} bytes, over the {} byte limit",
            limits.max_alloc
        )));
    }
    image_limits.max_image_width = Some(limits.max_width);
    image_limits.max_image_height = Some(limits.max_height);
    decoder.set_limits(image_limits).map_err(|e| classify(format, e))?;
    let color = format!("{:?}", decoder.color_type());
    let orientation = decoder.orientation().unwrap_or_else(|e| {
        tracing::debug!(path = %path.display(), error = %e, "unreadable EXIF, orientation ignored");
        Orientation::NoTransforms
    });
    let image = DynamicImage::from_decoder(decoder).map_err(|e| classify(format, e))?;
    Ok((image, width, height, color, orientation))
}

/// The supported formats; everything `image` can only recognise is reported as unsupported.
const SUPPORTED: &[ImageFormat] =
    &[ImageFormat::Png, ImageFormat::Jpeg, ImageFormat::Bmp, ImageFormat::Gif, ImageFormat::WebP];

/// The format from the first bytes of the content.
pub fn sniff(bytes: &[u8]) -> Result<ImageFormat, BadImage> {
    if bytes.is_empty() {
        return Err(BadImage::Empty);
    }
    let format = image::guess_format(bytes).map_err(|_| BadImage::NotAnImage)?;
    if !SUPPORTED.contains(&format) {
        return Err(BadImage::Unsupported(format_name(format)));
    }
    Ok(format)
}

/// Lower-case format name: `png`, `jpeg`, `bmp`, `gif`, `webp`, `tiff`, ...
pub fn format_name(format: ImageFormat) -> String {
    format!("{format:?}").to_ascii_lowercase()
}

fn check_complete(format: ImageFormat, bytes: &[u8]) -> Result<(), BadImage> {
    match format {
        ImageFormat::Jpeg => {
            // Entropy-coded data stuffs every 0xFF with 0x00, so the last SOS marker is real.
            let last_scan = rfind(bytes, &[0xFF, 0xDA]);
            let eoi = rfind(bytes, &[0xFF, 0xD9]);
            match (last_scan, eoi) {
                (Some(s), Some(e)) if e > s => Ok(()),
                _ => Err(BadImage::Truncated(
                    "jpeg (no end-of-image marker after the last scan)".into(),
                )),
            }
        }
        ImageFormat::Png => match rfind(bytes, b"\0\0\0\0IEND") {
            Some(_) => Ok(()),
            None => Err(BadImage::Truncated("png (no IEND chunk)".into())),
        },
        _ => Ok(()),
    }
}

fn rfind(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).rposition(|w| w == needle)
}

fn classify(format: ImageFormat, e: ImageError) -> BadImage {
    let name = format_name(format);
    match e {
        ImageError::Limits(l) => BadImage::TooLarge(l.to_string()),
        ImageError::Unsupported(u) => BadImage::Unsupported(format!("{name}: {u}")),
        ImageError::IoError(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => {
            BadImage::Truncated(name)
        }
        other => {
            let reason = other.to_string();
            if reason.to_ascii_lowercase().contains("eof") {
                BadImage::Truncated(format!("{name} ({reason})"))
            } else {
                BadImage::Corrupt { format: name, reason }
            }
        }
    }
}

/// Keras' `keep_aspect_ratio` crop box `(x, y, width, height)`: the largest centred box with
/// the target's aspect ratio, in integer arithmetic exactly as `keras.utils.load_img`.
pub fn aspect_crop_box(width: u32, height: u32, target: Size) -> (u32, u32, u32, u32) {
    let (w, h) = (u64::from(width), u64::from(height));
    let (tw, th) = (u64::from(target.width), u64::from(target.height));
    let crop_h = (w * th / tw).min(h);
    let crop_w = (h * tw / th).min(w);
    (((w - crop_w) / 2) as u32, ((h - crop_h) / 2) as u32, crop_w as u32, crop_h as u32)
}

/// Resizes (after an optional centred aspect crop) to `size`, exactly as Pillow does; see
/// [`crate::resize`].
pub fn resize(image: &RgbImage, size: Size, interpolation: Interpolation, crop: bool) -> RgbImage {
    let raw =
        resize_raw(image.as_raw(), image.width(), image.height(), 3, size, interpolation, crop);
    RgbImage::from_raw(size.width, size.height, raw).expect("buffer has the output size")
}

fn resize_raw(
    src: &[u8],
    width: u32,
    height: u32,
    channels: usize,
    size: Size,
    interpolation: Interpolation,
    crop: bool,
) -> Vec<u8> {
    let region = if crop { aspect_crop_box(width, height, size) } else { (0, 0, width, height) };
    match interpolation {
        Interpolation::Nearest => {
            crate::resize::nearest(src, width, channels, region, size.width, size.height)
        }
        Interpolation::Bilinear => {
            crate::resize::bilinear(src, width, channels, region, size.width, size.height)
        }
    }
}

/// Gray to RGB by replication.
fn gray_to_rgb(gray: &[u8], size: Size) -> RgbImage {
    let rgb: Vec<u8> = gray.iter().flat_map(|&g| [g, g, g]).collect();
    RgbImage::from_raw(size.width, size.height, rgb).expect("buffer has the output size")
}
