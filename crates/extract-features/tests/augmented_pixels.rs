//! The kind: augmented pixels reach the network as Keras hands them over, floats on the 0-255
//! scale (`apply_u8_to_f32`), not rounded to whole values. A small convnet whose first conv
//! copies R, G and B through its centre tap, with `rescale` preprocessing, makes the augmented
//! image itself readable from the `conv2d_1` rows, so they are compared with the augment
//! crate's float output for the same (seed, pass, index) draw.

use std::path::Path;
use std::process::Command;

use augment::{AugmentConfig, AugmentSpec};
use dataset::{DecodeOptions, Size};
use feature_cache::{Cache, ExtractionRecord};
use models::{ConvArch, ConvBase};
use tch::{Device, Kind, Tensor, nn};

const SIZE: u32 = 64;
const SEED: u64 = 5;

fn write_dataset(root: &Path) {
    for class in ["a", "b"] {
        let dir = root.join("train").join(class);
        std::fs::create_dir_all(&dir).unwrap();
        for i in 0..2u32 {
            image::RgbImage::from_fn(SIZE, SIZE, |x, y| {
                image::Rgb([(x * 4) as u8, (y * 3 + i * 7) as u8, ((x * y) % 251) as u8])
            })
            .save(dir.join(format!("{i}.png")))
            .unwrap();
        }
    }
}

/// Small convnet weights whose `conv2d_1` outputs channel `c < 3` = input channel `c` at the
/// kernel's centre (zero bias, every other output 0).
fn write_pass_through_weights(path: &Path) {
    let vs = nn::VarStore::new(Device::Cpu);
    let base = ConvBase::with_arch(&vs.root(), ConvArch::small_convnet());
    let mut tensors: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    for (name, t) in &mut tensors {
        if name == "features.0.weight" {
            let w = Tensor::zeros(t.size(), (Kind::Float, Device::Cpu));
            for c in 0..3 {
                let _ = w.get(c).get(c).get(1).get(1).fill_(1.0);
            }
            *t = w;
        } else if name == "features.0.bias" {
            *t = Tensor::zeros(t.size(), (Kind::Float, Device::Cpu));
        }
    }
    let provenance = models::weights::Provenance {
        preprocessing: models::Preprocessing::Rescale,
        source: "extract-features tests: pass-through conv2d_1".into(),
        source_sha256: "0".repeat(64),
        source_format: "pretrain".into(),
    };
    models::weights::save_conv_base(path, base.arch(), &tensors, &provenance).unwrap();
}

#[test]
fn augmented_pixels_reach_the_network_unrounded() {
    let dir = tempfile::tempdir().unwrap();
    let (data, weights) = (dir.path().join("data"), dir.path().join("base.safetensors"));
    write_dataset(&data);
    write_pass_through_weights(&weights);
    // Bilinear sub-pixel shifts and a fractional fill value: almost no pixel is a whole number.
    let spec = r#"{"width_shift_range": 0.3, "height_shift_range": 0.3, "interpolation_order": 1,
                   "fill_mode": "constant", "cval": 76.5}"#;
    let spec_path = dir.path().join("augment.json");
    std::fs::write(&spec_path, spec).unwrap();
    let out = dir.path().join("out");
    let run = Command::new(env!("CARGO_BIN_EXE_extract-features"))
        .arg("--data")
        .arg(&data)
        .arg("--weights")
        .arg(&weights)
        .arg("--cache-dir")
        .arg(dir.path().join("cache"))
        .arg("--out")
        .arg(&out)
        .arg("--augment-spec")
        .arg(&spec_path)
        .args(["--splits", "train", "--input-size", "64", "--layer", "conv2d_1"])
        .args(["--augment-passes", "1", "--augment-seed", &SEED.to_string()])
        .args(["--device", "cpu"])
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let record: ExtractionRecord =
        run_folder::read_json(&out.join(feature_cache::EXTRACTION_FILE)).unwrap();
    let entry = record.entries.iter().find(|e| e.pass.is_some()).expect("an augmented entry");
    let pass = entry.pass.unwrap() as u64;
    let cache = Cache::open(&record.cache_dir).unwrap();
    let reader = ExtractionRecord::open(&cache, entry, Path::new("features.json")).unwrap();
    let loaded = reader.load().unwrap();
    // Draws are keyed by each image's identity (path and content digest), not its position.
    let file_keys = reader.files().unwrap();
    let (h, w, c) = (62usize, 62usize, 32usize);
    assert_eq!(loaded.features.len(), 4 * h * w * c);

    let config = AugmentConfig::new(serde_json::from_str::<AugmentSpec>(spec).unwrap()).unwrap();
    let s = SIZE as usize;
    let (mut max_diff, mut fractional) = (0f32, 0usize);
    let files = dataset::scan(&data, "train", &Default::default()).unwrap().files;
    for (i, file) in files.iter().enumerate() {
        let opts = DecodeOptions { target_size: Some(Size::square(SIZE)), ..Default::default() };
        let img = dataset::decode(&file.path, &opts).unwrap();
        let mut expected = vec![0f32; s * s * 3];
        assert!(file.path.ends_with(&file_keys[i].path), "row {i} is not {}", file.path.display());
        config
            .sample(SEED, pass, file_keys[i].identity())
            .apply_u8_to_f32(img.as_raw(), s, s, 3, &mut expected)
            .unwrap();
        let rows = &loaded.features[i * h * w * c..(i + 1) * h * w * c];
        for y in 0..h {
            for x in 0..w {
                for ch in 0..3 {
                    let want = expected[((y + 1) * s + x + 1) * 3 + ch];
                    let got = rows[(y * w + x) * c + ch] * 255.0;
                    max_diff = max_diff.max((got - want).abs());
                    fractional += usize::from(want.fract().abs() > 0.01);
                }
            }
        }
    }
    println!(
        "stage vs augment float pixels: max {max_diff:.3e} over {fractional} fractional values"
    );
    assert!(fractional > 1000, "the draws gave whole pixels only ({fractional} fractional)");
    assert!(max_diff < 1e-3, "augmented pixels differ from Keras' floats by up to {max_diff}");
}
