//! JPEG decoding with libjpeg-turbo's own decoder (the `mozjpeg` crate: the mozjpeg fork of
//! libjpeg-turbo, C compiled by the `cc` crate, no SIMD, so no cmake or nasm), set up as Pillow
//! sets it up: ISLOW IDCT and fancy upsampling (libjpeg's defaults), so the pixels equal
//! `Image.open(path).convert("RGB")` exactly, which the pure-Rust decoders do not for
//! chroma-subsampled files (`tests/it/jpeg_pixels.rs`).
//!
//! - YCbCr and RGB files give RGB8, grey files L8.
//! - CMYK and YCCK files are read as CMYK and converted like Pillow: the samples are taken as
//!   Adobe-inverted (Pillow's `CMYK;I`, whatever the markers say), then `cmyk2rgb`.
//! - libjpeg's fatal errors come back as `Err` (the crate unwinds out of the C error handler,
//!   caught here); its warnings (corrupt data it can decode around) are silent, as in Pillow.
//!   Truncation is refused before, from the end-of-image marker.

use std::panic::{AssertUnwindSafe, catch_unwind};

use image::{DynamicImage, GrayImage, RgbImage, metadata::Orientation};
use mozjpeg::{ColorSpace, Decompress, Marker};

use crate::decode::DecodeLimits;
use crate::error::BadImage;

/// A decoded JPEG and what was learnt on the way.
pub(crate) struct Jpeg {
    pub image: DynamicImage,
    pub width: u32,
    pub height: u32,
    /// `L8`, `Rgb8` or `Cmyk8` (converted to RGB8 here).
    pub color: &'static str,
    pub orientation: Orientation,
}

/// Decodes `bytes` after checking the header against `limits`.
pub(crate) fn decode(bytes: &[u8], limits: &DecodeLimits) -> Result<Jpeg, BadImage> {
    match catch_unwind(AssertUnwindSafe(|| decode_inner(bytes, limits))) {
        Ok(result) => result,
        Err(payload) => {
            let reason = payload
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| payload.downcast_ref::<&str>().copied())
                .unwrap_or("libjpeg error");
            let reason = reason.strip_prefix("libjpeg fatal error: ").unwrap_or(reason);
            Err(BadImage::Corrupt { format: "jpeg".into(), reason: reason.to_owned() })
        }
    }
}

fn decode_inner(bytes: &[u8], limits: &DecodeLimits) -> Result<Jpeg, BadImage> {
    let io = |e: std::io::Error| BadImage::Corrupt { format: "jpeg".into(), reason: e.to_string() };
    let dec = Decompress::builder().with_markers(&[Marker::APP(1)]).from_mem(bytes).map_err(io)?;
    let (w, h) = dec.size();
    let (width, height) = (w as u32, h as u32);
    if width > limits.max_width || height > limits.max_height {
        return Err(BadImage::TooLarge(format!(
            "{width}x{height} pixels, over the {}x{} limit",
            limits.max_width, limits.max_height
        )));
    }
    let source = dec.color_space();
    let (color, out_space, channels) = match source {
        ColorSpace::JCS_GRAYSCALE => ("L8", ColorSpace::JCS_GRAYSCALE, 1),
        ColorSpace::JCS_CMYK | ColorSpace::JCS_YCCK => ("Cmyk8", ColorSpace::JCS_CMYK, 4),
        _ => ("Rgb8", ColorSpace::JCS_RGB, 3),
    };
    // The output, plus the whole-image coefficient buffer libjpeg keeps for a progressive or
    // multi-scan file (2 bytes per coefficient, 64 per block).
    let mut total = (w as u64) * (h as u64) * channels;
    if is_multi_scan(bytes) {
        total += dec
            .components()
            .iter()
            .map(|c| u64::from(c.width_in_blocks) * u64::from(c.height_in_blocks) * 128)
            .sum::<u64>();
    }
    if total > limits.max_alloc {
        return Err(BadImage::TooLarge(format!(
            "{width}x{height} pixels need {total} bytes, over the {} byte limit",
            limits.max_alloc
        )));
    }
    let orientation = dec
        .markers()
        .filter(|m| m.marker == Marker::APP(1))
        .find_map(|m| m.data.strip_prefix(b"Exif\0\0").and_then(Orientation::from_exif_chunk))
        .unwrap_or(Orientation::NoTransforms);

    let mut started = dec.to_colorspace(out_space).map_err(io)?;
    let pixels: Vec<u8> = started.read_scanlines().map_err(io)?;
    started.finish().map_err(io)?;
    let short = || BadImage::Truncated("jpeg (fewer rows than the header says)".into());
    let image = match channels {
        1 => {
            DynamicImage::ImageLuma8(GrayImage::from_raw(width, height, pixels).ok_or_else(short)?)
        }
        3 => DynamicImage::ImageRgb8(RgbImage::from_raw(width, height, pixels).ok_or_else(short)?),
        _ => DynamicImage::ImageRgb8(
            RgbImage::from_raw(width, height, cmyk_to_rgb(&pixels)).ok_or_else(short)?,
        ),
    };
    Ok(Jpeg { image, width, height, color, orientation })
}

/// Pillow's CMYK JPEG path: raw mode `CMYK;I` (every sample inverted, Adobe's convention),
/// then `cmyk2rgb`: `255 - k - c * (255 - k) / 255` per channel, in Pillow's integer rounding.
fn cmyk_to_rgb(cmyk: &[u8]) -> Vec<u8> {
    fn muldiv255(a: u32, b: u32) -> u32 {
        let t = a * b + 128;
        ((t >> 8) + t) >> 8
    }
    let mut out = Vec::with_capacity(cmyk.len() / 4 * 3);
    for px in cmyk.chunks_exact(4) {
        let nk = u32::from(px[3]); // 255 - inverted k
        for &c in &px[..3] {
            out.push((nk - muldiv255(255 - u32::from(c), nk)) as u8);
        }
    }
    out
}

/// Whether libjpeg will buffer every coefficient of the image (`has_multiple_scans` in its
/// `jdinput.c`): a progressive frame, or a first scan without every component. Walks the
/// length-prefixed segments up to the first SOS; anything unreadable counts as multi-scan, so
/// the estimate only ever errs on the large side (libjpeg then rejects such a header anyway).
fn is_multi_scan(bytes: &[u8]) -> bool {
    let mut pos = 2; // after SOI
    let mut frame: Option<(bool, u8)> = None; // (progressive, components)
    while pos + 4 <= bytes.len() {
        if bytes[pos] != 0xFF {
            return true;
        }
        let marker = bytes[pos + 1];
        if marker == 0xFF {
            pos += 1; // fill byte
            continue;
        }
        let len = usize::from(u16::from_be_bytes([bytes[pos + 2], bytes[pos + 3]]));
        let segment = bytes.get(pos + 4..pos + 2 + len);
        match (marker, segment) {
            (0xC0..=0xCF, Some(s)) if !matches!(marker, 0xC4 | 0xC8 | 0xCC) && s.len() >= 6 => {
                frame = Some((matches!(marker, 0xC2 | 0xC6 | 0xCA | 0xCE), s[5]));
            }
            (0xDA, Some(s)) if !s.is_empty() => {
                return frame.is_none_or(|(progressive, n)| progressive || s[0] < n);
            }
            (_, None) => return true,
            _ => {}
        }
        pos += 2 + len;
    }
    true
}
