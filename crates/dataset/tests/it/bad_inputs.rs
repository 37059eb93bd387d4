//! One test per kind of bad input: each must fail fast with an error naming the file and the
//! reason. Fixtures are generated into temp folders.

use dataset::{BadImage, DecodeLimits, DecodeOptions, Error, ScanOptions, decode, scan_dir};
use expect_test::{Expect, expect};

use crate::fixtures::*;

/// Decodes `bytes` saved as `name` and compares the error message, temp folder elided.
fn check(name: &str, bytes: &[u8], expect: Expect) {
    let (dir, path) = one_file(name, bytes);
    let err = decode(&path, &DecodeOptions::default()).expect_err("bad input must fail");
    expect.assert_eq(&err.to_string().replace(&*dir.path().to_string_lossy(), "<tmp>"));
}

#[test]
fn zero_byte_file() {
    check("a.png", b"", expect!["<tmp>/a.png: empty file (0 bytes)"]);
}

#[test]
fn non_image_with_an_image_extension() {
    check(
        "notes.jpg",
        b"these are my notes, not a photo\n",
        expect!["<tmp>/notes.jpg: not an image (content matches no known image format)"],
    );
}

#[test]
fn truncated_jpeg() {
    let jpeg = jpeg_noise(64, 64, 1);
    check(
        "cut.jpg",
        &jpeg[..jpeg.len() / 2],
        expect!["<tmp>/cut.jpg: truncated jpeg (no end-of-image marker after the last scan)"],
    );
}

#[test]
fn truncated_png_missing_data() {
    let png = png_noise(64, 64, 2);
    check(
        "cut.png",
        &png[..png.len() * 6 / 10],
        expect!["<tmp>/cut.png: truncated png (no IEND chunk)"],
    );
}

#[test]
fn truncated_png_idat_with_iend_kept() {
    // Cut the middle of the image data but keep the trailer: the decoder itself must notice.
    let png = png_noise(64, 64, 3);
    let mut cut = png[..png.len() / 2].to_vec();
    cut.extend_from_slice(&png[png.len() - 12..]);
    let (dir, path) = one_file("cut2.png", &cut);
    let err = decode(&path, &DecodeOptions::default()).unwrap_err();
    assert!(
        matches!(err.bad_image(), Some(BadImage::Corrupt { .. } | BadImage::Truncated(_))),
        "{err}"
    );
    assert!(err.to_string().starts_with(&format!("{}", dir.path().join("cut2.png").display())));
}

#[test]
fn corrupt_png_chunk() {
    check(
        "crc.png",
        &png_bad_crc(),
        expect![
            "<tmp>/crc.png: corrupt png: Format error decoding Png: CRC error: expected 0x67891c1b have 0x67891ce4 while decoding ChunkType { type: IDAT, critical: true, private: false, reserved: false, safecopy: false } chunk."
        ],
    );
}

#[test]
fn corrupt_png_data() {
    check(
        "zlib.png",
        &png_bad_idat(),
        expect![
            "<tmp>/zlib.png: corrupt png: Format error decoding Png: Corrupt deflate stream. InvalidUncompressedBlockLength"
        ],
    );
}

/// `jpeg` with the frame header's (SOF) sample precision, or height and width, overwritten.
fn patch_sof(jpeg: &[u8], precision: Option<u8>, size: Option<(u16, u16)>) -> Vec<u8> {
    let mut out = jpeg.to_vec();
    let sof = out
        .windows(2)
        .position(|w| w[0] == 0xFF && matches!(w[1], 0xC0 | 0xC2))
        .expect("baseline or progressive frame header");
    if let Some(p) = precision {
        out[sof + 4] = p;
    }
    if let Some((w, h)) = size {
        out[sof + 5..sof + 7].copy_from_slice(&h.to_be_bytes());
        out[sof + 7..sof + 9].copy_from_slice(&w.to_be_bytes());
    }
    out
}

#[test]
fn corrupt_jpeg_header() {
    // libjpeg's fatal errors come back as a named error, never a panic or an abort.
    check(
        "bits.jpg",
        &patch_sof(&jpeg_noise(16, 16, 2), Some(9), None),
        expect!["<tmp>/bits.jpg: corrupt jpeg: Unsupported JPEG data precision 9"],
    );
}

#[test]
fn jpeg_decompression_bombs_refused_from_header() {
    let jpeg = jpeg_noise(16, 16, 3);
    check(
        "wide.jpg",
        &patch_sof(&jpeg, None, Some((60_000, 8))),
        expect!["<tmp>/wide.jpg: too large: 60000x8 pixels, over the 16384x16384 limit"],
    );
    check(
        "big.jpg",
        &patch_sof(&jpeg, None, Some((16_000, 16_000))),
        expect![
            "<tmp>/big.jpg: too large: 16000x16000 pixels need 768000000 bytes, over the 536870912 byte limit"
        ],
    );
    // A progressive file also needs its whole coefficient buffer (2 bytes a coefficient):
    // 12000x12000 4:2:0 is 432 MB of RGB8 plus 432 MB of coefficients.
    let progressive = std::fs::read(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/jpeg/noisy_progressive_420_q85.jpg"),
    )
    .unwrap();
    check(
        "prog.jpg",
        &patch_sof(&progressive, None, Some((12_000, 12_000))),
        expect![
            "<tmp>/prog.jpg: too large: 12000x12000 pixels need 864000000 bytes, over the 536870912 byte limit"
        ],
    );
}

#[test]
fn unsupported_format() {
    let tiff = [b"II*\0".as_slice(), &[8, 0, 0, 0], &[0; 32]].concat();
    check("scan.png", &tiff, expect!["<tmp>/scan.png: unsupported image format tiff"]);
}

#[test]
fn decompression_bomb_dimensions_refused_from_header() {
    check(
        "bomb.png",
        &png_bomb(60_000, 60_000),
        expect!["<tmp>/bomb.png: too large: 60000x60000 pixels, over the 16384x16384 limit"],
    );
}

#[test]
fn decompression_bomb_allocation_refused_from_header() {
    // Within the width/height limits, but 16000 * 16000 * 4 bytes is about 1 GB.
    check(
        "bomb.png",
        &png_bomb(16_000, 16_000),
        expect![
            "<tmp>/bomb.png: too large: 16000x16000 pixels need 1024000000 bytes, over the 536870912 byte limit"
        ],
    );
}

#[test]
fn limits_are_configurable() {
    let (_dir, path) = one_file("big.png", &png_rgb(40, 30, 0));
    let tight = DecodeOptions {
        limits: DecodeLimits { max_width: 32, ..Default::default() },
        ..Default::default()
    };
    let err = decode(&path, &tight).unwrap_err();
    assert!(matches!(err.bad_image(), Some(BadImage::TooLarge(_))), "{err}");
    decode(&path, &DecodeOptions::default()).unwrap();
}

#[test]
fn directory_where_a_file_is_expected() {
    let dir = tree(&[("x.png", None)]);
    let err = decode(&dir.path().join("x.png"), &DecodeOptions::default()).unwrap_err();
    assert_eq!(err.bad_image(), Some(&BadImage::IsADirectory));
    assert!(err.to_string().ends_with("x.png: is a directory, expected an image file"), "{err}");
}

#[test]
fn split_path_is_a_file() {
    let dir = tree(&[("train", Some(png_rgb(2, 2, 0)))]);
    let err = scan_dir(&dir.path().join("train"), &ScanOptions::default()).unwrap_err();
    assert!(matches!(err, Error::NotADirectory { .. }), "{err}");
    assert!(err.to_string().ends_with("train: not a directory"));
}

#[test]
fn missing_split_folder() {
    let dir = tree(&[]);
    let err = scan_dir(&dir.path().join("validation"), &ScanOptions::default()).unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err}");
    assert!(err.to_string().contains("validation: "), "{err}");
}

#[test]
fn empty_class_folder_is_an_error() {
    let dir = tree(&[("cats/a.png", Some(png_rgb(2, 2, 0))), ("dogs", None)]);
    let err = scan_dir(dir.path(), &ScanOptions::default()).unwrap_err();
    assert!(matches!(err, Error::EmptyClass { .. }), "{err}");
    assert!(err.to_string().contains("dogs: empty class folder"), "{err}");
}

#[test]
fn empty_class_folder_when_allowed() {
    let dir =
        tree(&[("cats/a.png", Some(png_rgb(2, 2, 0))), ("dogs/readme.txt", Some(b"x".to_vec()))]);
    let opts = ScanOptions { allow_empty_classes: true, ..Default::default() };
    let index = scan_dir(dir.path(), &opts).unwrap();
    assert_eq!(index.classes, ["cats", "dogs"]);
    assert_eq!(index.class_counts(), [1, 0]);
}

#[test]
fn no_class_folders_at_all() {
    let dir = tree(&[("a.png", Some(png_rgb(2, 2, 0))), (".hidden", None)]);
    let err = scan_dir(dir.path(), &ScanOptions::default()).unwrap_err();
    assert!(matches!(err, Error::NoClasses { .. }), "{err}");
    assert!(err.to_string().ends_with("no class folders (expected <split>/<class>/<image>)"));
}
