//! The `predict` binary end to end on a tiny seeded model file (the small convnet at 48x48,
//! random weights, `bilinear+center-crop`) and synthetic images written into temp folders: its
//! probabilities equal `predict_proba` on the same files decoded through the dataset crate,
//! colour types and EXIF orientation decode as in training, bad files are named (fail-fast, or
//! skipped with `--skip-bad-images`), `--top-k` and `--format json`. CPU only.

use std::collections::BTreeMap;
use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use dataset::{DecodeOptions, Interpolation, Size};
use image::{DynamicImage, ImageBuffer, ImageFormat, Luma, Rgb, RgbImage};
use models::classifier::head_input_width;
use models::{Classifier, ConvArch, HeadSpec, ModelHeader, Pooling, Preprocessing};
use tch::{Device, Kind, Tensor};
use tempfile::TempDir;

const SIZE: i64 = 48;
const CLASSES: [&str; 3] = ["cat", "dog, big", "fish"];

/// libtorch's generator is global: building a seeded model holds this lock.
static TORCH_RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Saves a seeded small-convnet classifier into `dir`; returns it and the file's path.
fn model(dir: &Path) -> (Classifier, PathBuf) {
    let arch = ConvArch::small_convnet();
    let cut = "max_pooling2d_4";
    let width = head_input_width(&arch, arch.layer(cut).unwrap(), Pooling::None, SIZE).unwrap();
    let header = ModelHeader {
        format_version: models::MODEL_FORMAT_VERSION,
        architecture: arch.name().to_owned(),
        layers: arch.defs().to_vec(),
        cut: cut.to_owned(),
        pooling: Pooling::None,
        head: HeadSpec::seed(width, CLASSES.len()),
        class_names: CLASSES.iter().map(|c| c.to_string()).collect(),
        preprocessing: Preprocessing::Rescale,
        input_size: [SIZE, SIZE],
        resize: "bilinear+center-crop".into(),
        base_weights_sha256: "0".repeat(64),
        trained_on: BTreeMap::new(),
        stage: "test".into(),
    };
    let model = {
        let _rng = TORCH_RNG.lock().unwrap_or_else(|e| e.into_inner());
        tch::manual_seed(7);
        Classifier::from_scratch(header, Device::Cpu).unwrap()
    };
    let path = dir.join("model.safetensors");
    model.save(&path).unwrap();
    (model, path)
}

/// Deterministic pseudo-random bytes (xorshift).
fn noise(n: usize, seed: u64) -> Vec<u8> {
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

fn rgb(w: u32, h: u32, seed: u64) -> DynamicImage {
    DynamicImage::ImageRgb8(RgbImage::from_raw(w, h, noise((w * h * 3) as usize, seed)).unwrap())
}

fn encode(image: &DynamicImage, format: ImageFormat) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    image.write_to(&mut out, format).unwrap();
    out.into_inner()
}

fn write(path: &Path, bytes: &[u8]) -> PathBuf {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
    path.to_owned()
}

/// `jpeg` with an EXIF APP1 segment holding only `Orientation = orientation` spliced after SOI
/// (as the dataset crate's fixtures build it).
fn with_exif_orientation(jpeg: &[u8], orientation: u16) -> Vec<u8> {
    let mut tiff = Vec::new();
    tiff.extend_from_slice(b"II*\0");
    tiff.extend_from_slice(&8u32.to_le_bytes());
    tiff.extend_from_slice(&1u16.to_le_bytes());
    tiff.extend_from_slice(&0x0112u16.to_le_bytes());
    tiff.extend_from_slice(&3u16.to_le_bytes());
    tiff.extend_from_slice(&1u32.to_le_bytes());
    tiff.extend_from_slice(&orientation.to_le_bytes());
    tiff.extend_from_slice(&[0, 0]);
    tiff.extend_from_slice(&0u32.to_le_bytes());
    let mut app1 = b"Exif\0\0".to_vec();
    app1.extend_from_slice(&tiff);
    let mut out = jpeg[..2].to_vec();
    out.extend_from_slice(&[0xFF, 0xE1]);
    out.extend_from_slice(&((app1.len() + 2) as u16).to_be_bytes());
    out.extend_from_slice(&app1);
    out.extend_from_slice(&jpeg[2..]);
    out
}

fn predict(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_predict"))
        .args(["--device", "cpu"])
        .args(args)
        .env("OMP_NUM_THREADS", "1")
        .output()
        .unwrap()
}

fn ok(out: &Output) -> String {
    assert!(out.status.success(), "predict failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout.clone()).unwrap()
}

/// `predict_proba` on files decoded as training decodes them for this model.
fn expected(model: &Classifier, files: &[&Path]) -> Vec<Vec<f32>> {
    let opts = DecodeOptions {
        target_size: Some(Size::square(SIZE as u32)),
        interpolation: Interpolation::Bilinear,
        crop_to_aspect_ratio: true,
        ..Default::default()
    };
    let mut pixels = Vec::new();
    for f in files {
        pixels.extend_from_slice(dataset::decode(f, &opts).unwrap().as_raw());
    }
    let t = Tensor::from_slice(&pixels).view([files.len() as i64, SIZE, SIZE, 3]);
    let p = model.predict_proba(&t).unwrap().to_kind(Kind::Float).contiguous();
    let flat = Vec::<f32>::try_from(p.view([-1])).unwrap();
    flat.chunks(CLASSES.len()).map(<[f32]>::to_vec).collect()
}

/// CSV rows split into fields (handles the quoted fields `predict` writes).
fn parse_csv(text: &str) -> Vec<Vec<String>> {
    text.lines()
        .map(|line| {
            let mut fields = Vec::new();
            let mut field = String::new();
            let mut quoted = false;
            let mut chars = line.chars().peekable();
            while let Some(c) = chars.next() {
                match (c, quoted) {
                    ('"', true) if chars.peek() == Some(&'"') => {
                        field.push('"');
                        chars.next();
                    }
                    ('"', _) => quoted = !quoted,
                    (',', false) => fields.push(std::mem::take(&mut field)),
                    _ => field.push(c),
                }
            }
            fields.push(field);
            fields
        })
        .collect()
}

fn probabilities(row: &[String]) -> Vec<f32> {
    row[2..].iter().map(|v| v.parse().unwrap()).collect()
}

fn assert_close(got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(want) {
        assert!((g - w).abs() <= 1e-6, "{got:?} != {want:?}");
    }
}

#[test]
fn csv_rows_equal_predict_proba_on_the_dataset_decode() {
    let dir = TempDir::new().unwrap();
    let (model, path) = model(dir.path());
    let images = dir.path().join("images");
    let a = write(&images.join("a.png"), &encode(&rgb(64, 40, 1), ImageFormat::Png));
    let b = write(&images.join("b.jpg"), &encode(&rgb(30, 70, 2), ImageFormat::Jpeg));
    let c = write(&images.join("sub/c.bmp"), &encode(&rgb(48, 48, 3), ImageFormat::Bmp));
    // Left out as the dataset crate leaves them out: a dot-entry and a non-image extension.
    write(&images.join(".hidden.png"), &encode(&rgb(8, 8, 4), ImageFormat::Png));
    write(&images.join("notes.txt"), b"not an image");

    let csv = ok(&predict(&[
        "--model",
        path.to_str().unwrap(),
        "--batch-size",
        "2",
        images.to_str().unwrap(),
    ]));
    let rows = parse_csv(&csv);
    let mut head = vec!["path".to_owned(), "predicted".to_owned()];
    head.extend(CLASSES.iter().map(|c| c.to_string()));
    assert_eq!(rows[0], head);
    assert_eq!(rows.len(), 4, "{csv}");
    let want = expected(&model, &[&a, &b, &c]);
    for (row, (file, want)) in rows[1..].iter().zip([&a, &b, &c].iter().zip(&want)) {
        assert_eq!(Path::new(&row[0]), file.as_path());
        assert_close(&probabilities(row), want);
        let best = (0..want.len()).max_by(|&i, &j| want[i].total_cmp(&want[j])).unwrap();
        assert_eq!(row[1], CLASSES[best]);
    }
}

#[test]
fn grey_png_and_its_rgb_copy_give_the_same_row() {
    let dir = TempDir::new().unwrap();
    let (_, path) = model(dir.path());
    let grey = ImageBuffer::<Luma<u8>, _>::from_raw(50, 45, noise(50 * 45, 9)).unwrap();
    let copy: RgbImage = ImageBuffer::from_fn(50, 45, |x, y| {
        let g = grey.get_pixel(x, y).0[0];
        Rgb([g, g, g])
    });
    let g = write(
        &dir.path().join("grey.png"),
        &encode(&DynamicImage::ImageLuma8(grey), ImageFormat::Png),
    );
    let c = write(
        &dir.path().join("rgb.png"),
        &encode(&DynamicImage::ImageRgb8(copy), ImageFormat::Png),
    );
    let rows = parse_csv(&ok(&predict(&[
        "--model",
        path.to_str().unwrap(),
        g.to_str().unwrap(),
        c.to_str().unwrap(),
    ])));
    assert_eq!(rows.len(), 3);
    assert_eq!(rows[1][1..], rows[2][1..]);
}

#[test]
fn exif_rotated_jpeg_gives_the_row_of_the_upright_image() {
    let dir = TempDir::new().unwrap();
    let (_, path) = model(dir.path());
    let jpeg = encode(&rgb(64, 40, 5), ImageFormat::Jpeg);
    let plain = write(&dir.path().join("plain.jpg"), &jpeg);
    // Orientation 6: the viewer rotates 90 degrees clockwise. Store those pixels upright
    // (losslessly) to compare.
    let stored = dataset::decode(&plain, &DecodeOptions::default()).unwrap();
    let upright = DynamicImage::ImageRgb8(image::imageops::rotate90(&stored));
    let up = write(&dir.path().join("upright.png"), &encode(&upright, ImageFormat::Png));
    let rotated = write(&dir.path().join("rotated.jpg"), &with_exif_orientation(&jpeg, 6));
    let rows = parse_csv(&ok(&predict(&[
        "--model",
        path.to_str().unwrap(),
        up.to_str().unwrap(),
        rotated.to_str().unwrap(),
        plain.to_str().unwrap(),
    ])));
    assert_eq!(rows.len(), 4);
    assert_eq!(rows[1][1..], rows[2][1..]);
    assert_ne!(rows[2][2..], rows[3][2..], "the orientation changed nothing");
}

#[test]
fn a_corrupt_file_fails_naming_it_or_is_skipped_and_named() {
    let dir = TempDir::new().unwrap();
    let (model, path) = model(dir.path());
    let images = dir.path().join("images");
    let a = write(&images.join("a.png"), &encode(&rgb(48, 48, 1), ImageFormat::Png));
    let png = encode(&rgb(48, 48, 2), ImageFormat::Png);
    let bad = write(&images.join("b.png"), &png[..png.len() / 2]);
    let c = write(&images.join("c.png"), &encode(&rgb(48, 48, 3), ImageFormat::Png));
    let model_arg = path.to_str().unwrap();

    let out = predict(&["--model", model_arg, images.to_str().unwrap()]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(bad.to_str().unwrap()), "{stderr}");
    assert!(out.stdout.is_empty());

    let out = predict(&[
        "--model",
        model_arg,
        "--skip-bad-images",
        "--max-bad-fraction",
        "0.5",
        images.to_str().unwrap(),
    ]);
    let rows = parse_csv(&ok(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&format!("skipped bad image {}", bad.display())), "{stderr}");
    assert_eq!(rows.len(), 3);
    assert_eq!(Path::new(&rows[1][0]), a);
    assert_eq!(Path::new(&rows[2][0]), c);
    let want = expected(&model, &[&a, &c]);
    assert_close(&probabilities(&rows[1]), &want[0]);
    assert_close(&probabilities(&rows[2]), &want[1]);

    // Past the allowed fraction (default 1%) the run fails.
    let out = predict(&["--model", model_arg, "--skip-bad-images", images.to_str().unwrap()]);
    assert!(!out.status.success());
}

#[test]
fn top_k_one_gives_the_predicted_class_and_its_probability() {
    let dir = TempDir::new().unwrap();
    let (model, path) = model(dir.path());
    let a = write(&dir.path().join("a.png"), &encode(&rgb(60, 50, 11), ImageFormat::Png));
    let rows = parse_csv(&ok(&predict(&[
        "--model",
        path.to_str().unwrap(),
        "--top-k",
        "1",
        a.to_str().unwrap(),
    ])));
    assert_eq!(rows[0], ["path", "predicted", "class_1", "probability_1"]);
    assert_eq!(rows.len(), 2);
    let want = &expected(&model, &[&a])[0];
    let best = (0..want.len()).max_by(|&i, &j| want[i].total_cmp(&want[j])).unwrap();
    assert_eq!(rows[1][1], CLASSES[best]);
    assert_eq!(rows[1][2], CLASSES[best]);
    assert_close(&[rows[1][3].parse().unwrap()], &[want[best]]);
}

#[test]
fn json_output_from_a_list_file_parses() {
    let dir = TempDir::new().unwrap();
    let (model, path) = model(dir.path());
    let a = write(&dir.path().join("x/a.png"), &encode(&rgb(48, 60, 21), ImageFormat::Png));
    let b = write(&dir.path().join("y/b.png"), &encode(&rgb(48, 60, 22), ImageFormat::Png));
    let list = dir.path().join("list.txt");
    std::fs::write(
        &list,
        format!("# inputs\n{}\n\n{}\n", a.display(), dir.path().join("y").display()),
    )
    .unwrap();
    let out_file = dir.path().join("out.json");
    let stdout = ok(&predict(&[
        "--model",
        path.to_str().unwrap(),
        "--format",
        "json",
        "--list",
        list.to_str().unwrap(),
        "--out",
        out_file.to_str().unwrap(),
    ]));
    assert!(stdout.is_empty());
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out_file).unwrap()).unwrap();
    assert_eq!(doc["classes"], serde_json::json!(CLASSES));
    let predictions = doc["predictions"].as_array().unwrap();
    assert_eq!(predictions.len(), 2);
    let want = expected(&model, &[&a, &b]);
    for (p, (file, want)) in predictions.iter().zip([&a, &b].iter().zip(&want)) {
        assert_eq!(Path::new(p["path"].as_str().unwrap()), file.as_path());
        let got: Vec<f32> = p["probabilities"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        assert_close(&got, want);
    }
    assert_eq!(doc["skipped"], serde_json::json!([]));
}
