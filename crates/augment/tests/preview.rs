//! `augment-preview` end to end: its image is decoded the way the stages decode theirs
//! (`dataset::decode`: EXIF orientation, Pillow's nearest resize), and its flags parse as
//! `--help` describes them.

use std::path::Path;
use std::process::Command;

use dataset::{DecodeOptions, Size};
use image::{ImageEncoder, RgbImage};

/// `jpeg` with an EXIF APP1 segment holding only `Orientation = orientation`, spliced after SOI.
fn with_exif_orientation(jpeg: &[u8], orientation: u16) -> Vec<u8> {
    let mut tiff = b"II*\0".to_vec();
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

/// A 24x12 JPEG (left half dark, right half bright) stored with EXIF orientation 6 (rotate 90
/// degrees clockwise to view), so the viewed picture is 12x24 with a dark top half.
fn rotated_jpeg(path: &Path) {
    let img = RgbImage::from_fn(
        24,
        12,
        |x, _| if x < 12 { [20, 20, 20].into() } else { [230; 3].into() },
    );
    let mut jpeg = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 95)
        .write_image(img.as_raw(), 24, 12, image::ExtendedColorType::Rgb8)
        .unwrap();
    std::fs::write(path, with_exif_orientation(&jpeg, 6)).unwrap();
}

fn preview(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_augment-preview")).args(args).output().unwrap()
}

/// The kind: every program that reads an image goes through `dataset::decode`, so what the
/// preview shows is what the stages train on.
#[test]
fn preview_decodes_images_as_the_stages_do() {
    let dir = tempfile::tempdir().unwrap();
    let (input, out) = (dir.path().join("photo.jpg"), dir.path().join("grid.png"));
    rotated_jpeg(&input);
    for size in [0u32, 10] {
        let result = preview(&[
            input.to_str().unwrap(),
            "--n",
            "0",
            "--with-original",
            "--size",
            &size.to_string(),
            "--out",
            out.to_str().unwrap(),
        ]);
        assert!(result.status.success(), "{}", String::from_utf8_lossy(&result.stderr));
        let opts = DecodeOptions {
            target_size: (size > 0).then(|| Size::square(size)),
            ..Default::default()
        };
        let expected = dataset::decode(&input, &opts).unwrap();
        let grid = dataset::decode(&out, &DecodeOptions::default()).unwrap();
        // One tile with a 4-pixel white gap around it.
        let (w, h) = expected.dimensions();
        assert_eq!(grid.dimensions(), (w + 8, h + 8), "size {size}");
        let tile = image::imageops::crop_imm(&grid, 4, 4, w, h).to_image();
        assert_eq!(tile, expected, "size {size}: the preview shows another picture");
    }
}

/// `--brightness` takes `LO,HI` as its help says.
#[test]
fn preview_takes_ranges_as_documented() {
    let dir = tempfile::tempdir().unwrap();
    let (input, out) = (dir.path().join("photo.jpg"), dir.path().join("grid.png"));
    rotated_jpeg(&input);
    let path = input.to_str().unwrap();
    let out = out.to_str().unwrap();
    let ok = preview(&[path, "--n", "2", "--size", "8", "--brightness", "0.5,1.5", "--out", out]);
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    let bad = preview(&[path, "--n", "2", "--brightness", "0.5", "--out", out]);
    assert!(!bad.status.success());
    let help = String::from_utf8_lossy(&preview(&["--help"]).stdout).into_owned();
    assert!(help.contains("--brightness <LO,HI>"), "{help}");
}
