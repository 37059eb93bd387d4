//! extract-features with a base that is not VGG16: Chollet's small convnet as `pretrain` writes
//! it (random weights), cut at its Keras and torchvision layer names; the rows have the shapes
//! its layer table gives, and a VGG16 layer name is refused naming the architecture.

use std::path::Path;
use std::process::Command;

use feature_cache::ExtractionRecord;
use models::{ConvArch, ConvBase};
use tch::{Device, nn};

fn write_dataset(root: &Path) {
    for split in ["train", "validation"] {
        for class in ["a", "b"] {
            let dir = root.join(split).join(class);
            std::fs::create_dir_all(&dir).unwrap();
            for i in 0..2u8 {
                image::RgbImage::from_fn(8, 8, |x, _| image::Rgb([x as u8 * 20 + i, 50, 90]))
                    .save(dir.join(format!("{i}.png")))
                    .unwrap();
            }
        }
    }
}

fn extract(dir: &Path, weights: &Path, layer: &str) -> (Option<ExtractionRecord>, String) {
    let out = dir.join(format!("out-{layer}"));
    let run = Command::new(env!("CARGO_BIN_EXE_extract-features"))
        .arg("--data")
        .arg(dir.join("data"))
        .arg("--weights")
        .arg(weights)
        .arg("--cache-dir")
        .arg(dir.join("cache"))
        .arg("--out")
        .arg(&out)
        .args([
            "--splits",
            "train,validation",
            "--input-size",
            "64",
            "--layer",
            layer,
            "--device",
            "cpu",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr).into_owned();
    let record = run
        .status
        .success()
        .then(|| run_folder::read_json(&out.join(feature_cache::EXTRACTION_FILE)).unwrap());
    (record, stderr)
}

#[test]
fn cuts_a_small_convnet_at_its_layer_names() {
    let dir = tempfile::tempdir().unwrap();
    write_dataset(&dir.path().join("data"));
    tch::manual_seed(3);
    let vs = nn::VarStore::new(Device::Cpu);
    let base = ConvBase::with_arch(&vs.root(), ConvArch::small_convnet());
    let weights = dir.path().join("base.safetensors");
    let provenance = models::weights::Provenance {
        preprocessing: models::Preprocessing::Rescale,
        source: "extract-features tests: small convnet, seed 3".into(),
        source_sha256: "0".repeat(64),
        source_format: "pretrain".into(),
    };
    let tensors: Vec<(String, tch::Tensor)> = vs.variables().into_iter().collect();
    models::weights::save_conv_base(&weights, base.arch(), &tensors, &provenance).unwrap();

    for (layer, name, shape) in [
        ("max_pooling2d_4", "max_pooling2d_4", [2, 2, 128]),
        ("features.6", "conv2d_3", [12, 12, 128]),
    ] {
        let (record, stderr) = extract(dir.path(), &weights, layer);
        let record = record.unwrap_or_else(|| panic!("{layer}: {stderr}"));
        assert_eq!(record.layer, name);
        assert_eq!(record.feature_shape, shape, "{layer}");
        assert_eq!(record.entries.len(), 2);
    }
    let (record, stderr) = extract(dir.path(), &weights, "block5_pool");
    assert!(record.is_none());
    assert!(
        stderr.contains("--layer")
            && stderr.contains("unknown layer \"block5_pool\" in small_convnet"),
        "{stderr}"
    );
}
