//! The pretrain stage on tiny synthetic datasets (a temp folder of 8x8 grey PNGs, two classes
//! that differ in which half is bright): training lowers the loss, the saved base loads through
//! `models::load_weights` with the same output, cuts at named layers of the small convnet have
//! the expected shapes, freezing from a layer touches the right variables, and the binary writes
//! a complete stage folder. CPU only, a few seconds.

use std::path::Path;

use models::weights::Provenance;
use models::{ConvArch, Pooling, Preprocessing, load_weights};
use pretrain::data;
use pretrain::net::ConvNet;
use pretrain::train::{TrainConfig, fit};
use tch::{Device, Kind, Tensor};
use training::{Optimizer, OptimizerSpec};

/// Writes an 8x8 grey PNG: `top` bright rows 0-3, else rows 4-7, with seeded noise.
fn write_png(path: &Path, top: bool, noise: u64) {
    let mut pixels = [0u8; 64];
    for (i, p) in pixels.iter_mut().enumerate() {
        let bright = (i / 8 < 4) == top;
        let jitter = ((noise
            .wrapping_mul(6364136223846793005)
            .wrapping_add((i as u64).wrapping_mul(1442695040888963407)))
            >> 59) as u8;
        *p = if bright { 200 + jitter } else { 30 + jitter };
    }
    let file = std::fs::File::create(path).unwrap();
    let mut encoder = png::Encoder::new(file, 8, 8);
    encoder.set_color(png::ColorType::Grayscale);
    encoder.set_depth(png::BitDepth::Eight);
    encoder.write_header().unwrap().write_image_data(&pixels).unwrap();
}

/// `<root>/<split>/{bottom,top}/*.png` with `per_class` images per class and split.
fn make_dataset(root: &Path, per_class: usize) {
    for (s, split) in ["train", "validation", "test"].into_iter().enumerate() {
        for (class, top) in [("bottom", false), ("top", true)] {
            let dir = root.join(split).join(class);
            std::fs::create_dir_all(&dir).unwrap();
            for i in 0..per_class {
                write_png(
                    &dir.join(format!("{class}.{i}.png")),
                    top,
                    (s * 1000 + i) as u64 + top as u64 * 500,
                );
            }
        }
    }
}

fn provenance() -> Provenance {
    Provenance {
        preprocessing: Preprocessing::Rescale,
        source: "test".into(),
        source_sha256: "0".repeat(64),
        source_format: "pretrain".into(),
    }
}

#[test]
fn training_lowers_the_loss_on_a_separable_set() {
    let dir = tempfile::tempdir().unwrap();
    make_dataset(dir.path(), 8);
    let train = data::load(dir.path(), "train", 48).unwrap();
    let val = data::load(dir.path(), "validation", 48).unwrap();
    assert_eq!(train.len(), 16);
    assert_eq!(train.classes(), ["bottom", "top"]);
    tch::manual_seed(0);
    let net = ConvNet::new(ConvArch::small_convnet(), 48, 2, 16, 0.0, Device::Cpu).unwrap();
    let mut optimizer = Optimizer::new(OptimizerSpec::adam(1e-3), net.variables());
    let config =
        TrainConfig { epochs: 6, batch_size: 4, seed: 0, augment: None, restore_best: false };
    let mut seen = 0;
    let trained = fit(&net, &mut optimizer, &train, &val, &config, |_| {
        seen += 1;
        Ok(())
    })
    .unwrap();
    let h = &trained.history;
    assert_eq!((seen, h.len(), trained.kept_epoch), (6, 6, 6));
    assert!(h[5].loss < 0.5 * h[0].loss, "loss {} -> {}", h[0].loss, h[5].loss);
    assert_eq!(h[5].val_acc, 1.0, "{h:?}");
}

#[test]
fn saved_base_loads_with_the_same_output() {
    let dir = tempfile::tempdir().unwrap();
    tch::manual_seed(1);
    let net =
        ConvNet::new(ConvArch::vgg16_width(0.0625).unwrap(), 32, 3, 8, 0.5, Device::Cpu).unwrap();
    let path = dir.path().join("base.safetensors");
    let meta = net.save_base(&path, &provenance()).unwrap();
    assert_eq!(meta.architecture, "vgg16_w0.0625");

    let loaded = load_weights(&path, Device::Cpu).unwrap();
    assert_eq!(loaded.meta.digest, meta.digest);
    assert_eq!(loaded.meta.preprocessing, Preprocessing::Rescale);
    assert_eq!(loaded.base.arch(), net.base.arch());
    assert_eq!(loaded.vs.variables().len(), 26, "the head is not part of the base");
    let images =
        Tensor::randint(256, [2, 32, 32, 3], (Kind::Int64, Device::Cpu)).to_kind(Kind::Uint8);
    let xs = models::preprocess(&images, Preprocessing::Rescale).unwrap();
    let expect = tch::no_grad(|| net.base.forward(&xs)).unwrap();
    let got = tch::no_grad(|| loaded.features(&images, "block5_pool", Pooling::None)).unwrap();
    assert_eq!(got.size(), [2, 32, 1, 1]);
    assert!(got.equal(&expect), "the loaded base computes something else");
}

fn small_convnet_weights(dir: &Path) -> std::path::PathBuf {
    tch::manual_seed(2);
    let net = ConvNet::new(ConvArch::small_convnet(), 64, 10, 8, 0.5, Device::Cpu).unwrap();
    let path = dir.join("base.safetensors");
    net.save_base(&path, &provenance()).unwrap();
    path
}

fn check_cut(weights: &models::LoadedWeights, layer: &str, pooling: Pooling, expect: &[i64]) {
    let images = Tensor::zeros([3, 64, 64, 3], (Kind::Uint8, Device::Cpu));
    let ys = tch::no_grad(|| weights.features(&images, layer, pooling)).unwrap();
    assert_eq!(ys.size(), expect, "{layer} {pooling}");
    let l = weights.base.layer(layer).unwrap();
    let shape = weights.base.arch().feature_shape(64, 64, l, pooling).unwrap();
    assert_eq!(shape, expect[1..], "{layer}: table and forward pass disagree");
}

#[test]
fn small_convnet_cuts_at_named_layers() {
    let dir = tempfile::tempdir().unwrap();
    let w = load_weights(&small_convnet_weights(dir.path()), Device::Cpu).unwrap();
    assert_eq!(w.meta.architecture, "small_convnet");
    check_cut(&w, "max_pooling2d_4", Pooling::None, &[3, 128, 2, 2]);
    check_cut(&w, "max_pooling2d_2", Pooling::None, &[3, 64, 14, 14]);
    check_cut(&w, "features.6", Pooling::None, &[3, 128, 12, 12]);
    check_cut(&w, "conv2d_1", Pooling::Avg, &[3, 32]);
    let images = Tensor::zeros([1, 64, 64, 3], (Kind::Uint8, Device::Cpu));
    let err = w.features(&images, "block5_pool", Pooling::None).unwrap_err().to_string();
    assert!(err.contains("unknown layer \"block5_pool\" in small_convnet"), "{err}");
    let small = Tensor::zeros([1, 40, 40, 3], (Kind::Uint8, Device::Cpu));
    let err = w.features(&small, "max_pooling2d_4", Pooling::None).unwrap_err().to_string();
    assert!(err.contains("40x40") && err.contains("46x46"), "{err}");
}

#[test]
fn unfreeze_from_on_the_small_convnet() {
    let dir = tempfile::tempdir().unwrap();
    let w = load_weights(&small_convnet_weights(dir.path()), Device::Cpu).unwrap();
    let check = |from: Option<&str>, expect_params: i64, expect: &[&str]| {
        assert_eq!(w.base.set_unfreeze_from(from).unwrap(), expect_params, "{from:?}");
        let mut on: Vec<String> =
            w.vs.variables()
                .into_iter()
                .filter(|(_, t)| t.requires_grad())
                .map(|(n, _)| n)
                .collect();
        on.sort();
        assert_eq!(on, expect, "{from:?}");
    };
    check(
        Some("conv2d_3"),
        73_856 + 147_584,
        &["features.6.bias", "features.6.weight", "features.9.bias", "features.9.weight"],
    );
    check(Some("features.10"), 147_584, &["features.9.bias", "features.9.weight"]);
    check(Some("max_pooling2d_4"), 0, &[]);
    check(None, 0, &[]);
    assert!(w.base.set_unfreeze_from(Some("block5_conv1")).is_err());
}

#[test]
fn binary_writes_a_complete_stage() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    make_dataset(&data, 4);
    let out = dir.path().join("out");
    let run = std::process::Command::new(env!("CARGO_BIN_EXE_pretrain"))
        .args([
            "--input-size",
            "48",
            "--epochs",
            "2",
            "--batch-size",
            "4",
            "--hidden",
            "8",
            "--device",
            "cpu",
            "--threads",
            "1",
            "--data",
        ])
        .arg(&data)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let record = run_folder::StageRecord::read(&out).unwrap();
    assert_eq!(record.stage, "pretrain");
    assert_eq!(record.damaged_output(&out), None);
    for name in [
        "base.safetensors",
        "model.safetensors",
        "history.csv",
        "metrics.json",
        "confusion_test.csv",
        "accuracy.png",
    ] {
        assert!(
            record.outputs.contains_key(name),
            "{name} missing from {:?}",
            record.outputs.keys()
        );
    }
    let w = load_weights(&out.join("base.safetensors"), Device::Cpu).unwrap();
    assert_eq!(w.meta.preprocessing, Preprocessing::Rescale);
    assert!(w.meta.source.contains("small_convnet trained from scratch"), "{}", w.meta.source);
    let history = training::read_history(&out.join("history.csv")).unwrap();
    assert_eq!(history.len(), 2);
    let metrics = run_folder::StageMetrics::read(&out).unwrap();
    assert_eq!(metrics.kept.of, 2);
    assert!((1..=2).contains(&metrics.kept.epoch), "{:?}", metrics.kept);
    assert_eq!(record.summary["kept_epoch"], metrics.kept.epoch);
    let test = metrics.test.as_ref().expect("the fixture has a test split");
    assert_eq!(record.summary["test_acc"], test.acc);
    assert_eq!(test.images, test.per_class.iter().map(|c| c.support).sum::<u64>());
    assert!(record.outputs.contains_key("confusion_validation_normalised.png"));

    let bad = std::process::Command::new(env!("CARGO_BIN_EXE_pretrain"))
        .args(["--input-size", "40", "--device", "cpu", "--data"])
        .arg(&data)
        .arg("--out")
        .arg(dir.path().join("bad"))
        .output()
        .unwrap();
    assert!(!bad.status.success());
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(stderr.contains("--input-size 40") && stderr.contains("46x46"), "{stderr}");
}
