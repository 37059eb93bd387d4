//! fine-tune with a base that is not VGG16: Chollet's small convnet (as `pretrain` writes it,
//! random Keras-style weights here) on a tiny generated dataset at 48x48. The unfreeze layer is
//! one of its names, the top runs its "valid" convolutions, and only the layers from there up
//! change. One child process on one libtorch thread.

use std::path::Path;
use std::process::Command;

use models::{ConvArch, ConvBase};
use tch::{Device, Tensor, nn};
use training::tensors_io;

/// "a" bright on the left half, "b" on the right, 8x8 grey-ish PNGs; 6 + 6 train, 3 + 3 others.
fn write_dataset(root: &Path) {
    for (split, per_class) in [("train", 6), ("validation", 3), ("test", 3)] {
        for (label, class) in ["a", "b"].iter().enumerate() {
            let dir = root.join(split).join(class);
            std::fs::create_dir_all(&dir).unwrap();
            for i in 0..per_class {
                let img = image::RgbImage::from_fn(8, 8, |x, y| {
                    let v = if (x < 4) == (label == 0) { 180 } else { 40 }
                        + ((x * 7 + y * 3 + i as u32 * 11) % 30) as u8;
                    image::Rgb([v, v, v])
                });
                img.save(dir.join(format!("{i:02}.png"))).unwrap();
            }
        }
    }
}

#[test]
fn fine_tunes_a_small_convnet_from_a_named_layer() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    write_dataset(&data);
    tch::manual_seed(5);
    let vs = nn::VarStore::new(Device::Cpu);
    let base = ConvBase::with_arch(&vs.root(), ConvArch::small_convnet());
    let weights = dir.path().join("base.safetensors");
    let provenance = models::weights::Provenance {
        preprocessing: models::Preprocessing::Rescale,
        source: "fine-tune tests: small convnet, seed 5".into(),
        source_sha256: "0".repeat(64),
        source_format: "pretrain".into(),
    };
    models::weights::save_conv_base(
        &weights,
        base.arch(),
        &tensors_io::named_variables(&vs),
        &provenance,
    )
    .unwrap();

    let out = dir.path().join("out");
    let run = Command::new(env!("CARGO_BIN_EXE_fine-tune"))
        .arg("--data")
        .arg(&data)
        .arg("--weights")
        .arg(&weights)
        .arg("--out")
        .arg(&out)
        .args([
            "--input-size",
            "48",
            "--unfreeze-from",
            "conv2d_4",
            "--head-epochs",
            "1",
            "--epochs",
            "1",
            "--steps-per-epoch",
            "3",
        ])
        .args([
            "--batch-size",
            "4",
            "--device",
            "cpu",
            "--threads",
            "1",
            "--lr",
            "1e-3",
            "--head-phase-lr",
            "1e-3",
            "--no-augment",
        ])
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["unfreeze_from"], "conv2d_4", "{config}");

    let model = tensors_io::load(&out.join("model.safetensors")).unwrap();
    let get = |name: &str| -> &Tensor {
        &model.tensors.iter().find(|(n, _)| n == name).unwrap_or_else(|| panic!("no {name}")).1
    };
    let original = vs.variables();
    for frozen in ["features.0.weight", "features.3.weight", "features.6.bias"] {
        assert!(get(frozen).equal(&original[frozen]), "{frozen} changed although below conv2d_4");
    }
    assert!(
        !get("features.9.weight").equal(&original["features.9.weight"]),
        "conv2d_4 did not train"
    );
    assert_eq!(
        get("head.fc1.weight").size(),
        [256, 128],
        "flattened max_pooling2d_4 at 48x48 is 1x1x128"
    );

    let bad = Command::new(env!("CARGO_BIN_EXE_fine-tune"))
        .arg("--data")
        .arg(&data)
        .arg("--weights")
        .arg(&weights)
        .arg("--out")
        .arg(dir.path().join("bad"))
        .args(["--input-size", "48", "--unfreeze-from", "block5_conv1", "--device", "cpu"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(
        stderr.contains("--unfreeze-from")
            && stderr.contains("unknown layer \"block5_conv1\" in small_convnet"),
        "{stderr}"
    );
}
