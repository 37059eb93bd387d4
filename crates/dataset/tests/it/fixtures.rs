//! Test fixtures generated in memory from fixed seeds and written into temp folders: encoded
//! images of every colour type, and each kind of bad file the loader must refuse.

use std::io::Cursor;
use std::path::{Path, PathBuf};

use image::{DynamicImage, ImageBuffer, ImageFormat, Luma, LumaA, Rgb, Rgba};
use tempfile::TempDir;

/// Deterministic pseudo-random bytes (xorshift), so fixtures compress badly like photos.
pub fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

pub fn encode(image: &DynamicImage, format: ImageFormat) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    image.write_to(&mut out, format).expect("encode fixture");
    out.into_inner()
}

/// A `w` x `h` RGB image whose pixel (x, y) is `(x, y, seed)`, easy to check after resizing.
pub fn coords(w: u32, h: u32, seed: u8) -> DynamicImage {
    DynamicImage::ImageRgb8(ImageBuffer::from_fn(w, h, |x, y| Rgb([x as u8, y as u8, seed])))
}

pub fn png_rgb(w: u32, h: u32, seed: u8) -> Vec<u8> {
    encode(&coords(w, h, seed), ImageFormat::Png)
}

pub fn png_noise(w: u32, h: u32, seed: u64) -> Vec<u8> {
    let img = ImageBuffer::<Rgb<u8>, _>::from_raw(w, h, noise((w * h * 3) as usize, seed)).unwrap();
    encode(&DynamicImage::ImageRgb8(img), ImageFormat::Png)
}

pub fn jpeg_noise(w: u32, h: u32, seed: u64) -> Vec<u8> {
    let img = ImageBuffer::<Rgb<u8>, _>::from_raw(w, h, noise((w * h * 3) as usize, seed)).unwrap();
    encode(&DynamicImage::ImageRgb8(img), ImageFormat::Jpeg)
}

pub fn gray(value: u8) -> DynamicImage {
    DynamicImage::ImageLuma8(ImageBuffer::from_pixel(4, 4, Luma([value])))
}

pub fn gray_alpha(value: u8, alpha: u8) -> DynamicImage {
    DynamicImage::ImageLumaA8(ImageBuffer::from_pixel(4, 4, LumaA([value, alpha])))
}

pub fn rgba(px: [u8; 4]) -> DynamicImage {
    DynamicImage::ImageRgba8(ImageBuffer::from_pixel(4, 4, Rgba(px)))
}

pub fn rgb16(px: [u16; 3]) -> DynamicImage {
    DynamicImage::ImageRgb16(ImageBuffer::from_pixel(4, 4, Rgb(px)))
}

pub fn gray16(value: u16) -> DynamicImage {
    DynamicImage::ImageLuma16(ImageBuffer::from_pixel(4, 4, Luma([value])))
}

/// A 2x2 palette PNG: index 0 -> `a`, index 1 -> `b`, pixels `[0, 1; 1, 0]`.
pub fn png_palette(a: [u8; 3], b: [u8; 3]) -> Vec<u8> {
    let mut out = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut out, 2, 2);
        enc.set_color(png::ColorType::Indexed);
        enc.set_depth(png::BitDepth::Eight);
        enc.set_palette([a, b].concat());
        let mut w = enc.write_header().unwrap();
        w.write_image_data(&[0, 1, 1, 0]).unwrap();
    }
    out
}

/// An 8x8 Adobe CMYK JPEG of one colour (0 = no ink).
pub fn jpeg_cmyk(cmyk: [u8; 4]) -> Vec<u8> {
    let mut out = Vec::new();
    let data: Vec<u8> = std::iter::repeat_n(cmyk, 64).flatten().collect();
    jpeg_encoder::Encoder::new(&mut out, 95)
        .encode(&data, 8, 8, jpeg_encoder::ColorType::Cmyk)
        .unwrap();
    out
}

/// `jpeg` with an EXIF APP1 segment holding only `Orientation = orientation` spliced after SOI.
pub fn with_exif_orientation(jpeg: &[u8], orientation: u16) -> Vec<u8> {
    let mut tiff = Vec::new();
    tiff.extend_from_slice(b"II*\0");
    tiff.extend_from_slice(&8u32.to_le_bytes()); // first IFD offset
    tiff.extend_from_slice(&1u16.to_le_bytes()); // one entry
    tiff.extend_from_slice(&0x0112u16.to_le_bytes()); // Orientation
    tiff.extend_from_slice(&3u16.to_le_bytes()); // SHORT
    tiff.extend_from_slice(&1u32.to_le_bytes()); // count
    tiff.extend_from_slice(&orientation.to_le_bytes());
    tiff.extend_from_slice(&[0, 0]);
    tiff.extend_from_slice(&0u32.to_le_bytes()); // no next IFD
    let mut app1 = b"Exif\0\0".to_vec();
    app1.extend_from_slice(&tiff);
    let mut out = jpeg[..2].to_vec();
    out.extend_from_slice(&[0xFF, 0xE1]);
    out.extend_from_slice(&((app1.len() + 2) as u16).to_be_bytes());
    out.extend_from_slice(&app1);
    out.extend_from_slice(&jpeg[2..]);
    out
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

fn chunk(kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
    let mut c = (data.len() as u32).to_be_bytes().to_vec();
    c.extend_from_slice(kind);
    c.extend_from_slice(data);
    let crc = crc32(&c[4..]);
    c.extend_from_slice(&crc.to_be_bytes());
    c
}

/// A valid-looking 100 kB PNG whose header claims `w` x `h` RGBA pixels: a decompression bomb.
pub fn png_bomb(w: u32, h: u32) -> Vec<u8> {
    let mut ihdr = w.to_be_bytes().to_vec();
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 6, 0, 0, 0]);
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    out.extend(chunk(b"IHDR", &ihdr));
    out.extend(chunk(b"IDAT", &[0x78, 0x9C, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01]));
    out.extend(chunk(b"IEND", &[]));
    out
}

/// A PNG whose IDAT chunk has a wrong CRC (data intact, checksum flipped).
pub fn png_bad_crc() -> Vec<u8> {
    let mut png = png_noise(16, 16, 7);
    let idat = png.windows(4).position(|w| w == b"IDAT").unwrap();
    let len = u32::from_be_bytes(png[idat - 4..idat].try_into().unwrap()) as usize;
    png[idat + 4 + len + 3] ^= 0xFF;
    png
}

/// A PNG with one byte inside its IDAT data flipped: the zlib stream is damaged too.
pub fn png_bad_idat() -> Vec<u8> {
    let mut png = png_noise(16, 16, 7);
    let idat = png.windows(4).position(|w| w == b"IDAT").unwrap();
    png[idat + 10] ^= 0xFF;
    png
}

/// A folder tree built from `(relative path, content)`; content `None` makes a folder.
pub fn tree(entries: &[(&str, Option<Vec<u8>>)]) -> TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (rel, content) in entries {
        let path = dir.path().join(rel);
        match content {
            Some(bytes) => {
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                std::fs::write(&path, bytes).unwrap();
            }
            None => std::fs::create_dir_all(&path).unwrap(),
        }
    }
    dir
}

/// Writes one file into a fresh temp folder and returns both.
pub fn one_file(name: &str, bytes: &[u8]) -> (TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    std::fs::write(&path, bytes).unwrap();
    (dir, path)
}

/// Paths relative to `root`, with `/`, for readable assertions.
pub fn rel(root: &Path, path: &Path) -> String {
    path.strip_prefix(root).unwrap_or(path).to_string_lossy().replace('\\', "/")
}
