//! The pretrain stage on tiny synthetic datasets (a temp folder of 8x8 grey PNGs, two classes
//! that differ in which half is bright): training lowers the loss, the saved base loads through
//! `models::load_weights` with the same output, cuts at named layers of the small convnet have
//! the expected shapes, freezing from a layer touches the right variables, and the binary writes
//! a complete stage folder. CPU only, a few seconds.

use std::path::Path;

use models::weights::Provenance;
use models::{ConvArch, Pooling, Preprocessing, load_weights};
use pretrain::data;
use pretrain::net::{new_model, save_base};
use pretrain::train::PretrainTask;
use tch::{Device, Kind, Tensor};
use training::OptimizerSpec;
use training::fit_loop::{FitConfig, Outcome, PhasePlan, TrainState};

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
    let net = model(&ConvArch::small_convnet(), 48, 2, (16, 0.0));
    let mut task = PretrainTask {
        net: &net,
        train: &train,
        val: &val,
        optimizer: OptimizerSpec::adam(1e-3),
        batch_size: 4,
        seed: 0,
        augment: None,
        order: Vec::new(),
    };
    let fit = FitConfig {
        phases: vec![PhasePlan { name: "scratch".into(), epochs: 6 }],
        early_stopping: None,
        restore_best: false,
        checkpoints: None,
        stop_after_steps: None,
        autocast: false,
    };
    let mut seen = 0;
    let Outcome::Finished(trained) = fit
        .run(&mut task, TrainState::new(String::new()), None, |_| {
            seen += 1;
            Ok(())
        })
        .unwrap()
    else {
        panic!("no stop was asked")
    };
    let h = &trained.state.history;
    assert_eq!((seen, h.len(), trained.kept_epoch), (6, 6, 6));
    assert!(h[5].loss < 0.5 * h[0].loss, "loss {} -> {}", h[0].loss, h[5].loss);
    assert_eq!(h[5].val_acc, 1.0, "{h:?}");
}

#[test]
fn saved_base_loads_with_the_same_output() {
    let dir = tempfile::tempdir().unwrap();
    tch::manual_seed(1);
    let mut net = model(&ConvArch::vgg16_width(0.0625).unwrap(), 32, 3, (8, 0.5));
    let path = dir.path().join("base.safetensors");
    let meta = save_base(&mut net, &path, &provenance()).unwrap();
    assert_eq!(net.header().base_weights_sha256, meta.digest);
    assert_eq!(meta.architecture, "vgg16_w0.0625");

    let loaded = load_weights(&path, Device::Cpu).unwrap();
    assert_eq!(loaded.meta.digest, meta.digest);
    assert_eq!(loaded.meta.preprocessing, Preprocessing::Rescale);
    assert_eq!(*loaded.base.arch(), net.header().arch().unwrap());
    assert_eq!(loaded.vs.variables().len(), 26, "the head is not part of the base");
    let images =
        Tensor::randint(256, [2, 32, 32, 3], (Kind::Int64, Device::Cpu)).to_kind(Kind::Uint8);
    // The file holds the model's own conv variables, bit for bit.
    let vars = net.variables();
    for (name, t) in models::tensor_file::named_variables(&loaded.vs) {
        let (_, mine) = vars.iter().find(|(n, _)| *n == name).unwrap();
        assert!(t.equal(mine), "{name}: the loaded base holds something else");
    }
    let got = tch::no_grad(|| loaded.features(&images, "block5_pool", Pooling::None)).unwrap();
    assert_eq!(got.size(), [2, 32, 1, 1]);
}

/// A fresh model of `arch` for `classes` classes at `size`.
fn model(arch: &ConvArch, size: i64, classes: usize, head: (i64, f64)) -> models::Classifier {
    let names: Vec<String> = (0..classes).map(|c| format!("c{c}")).collect();
    new_model(arch, size, &names, head, Default::default(), Device::Cpu).unwrap()
}

fn small_convnet_weights(dir: &Path) -> std::path::PathBuf {
    tch::manual_seed(2);
    let mut net = model(&ConvArch::small_convnet(), 64, 10, (8, 0.5));
    let path = dir.join("base.safetensors");
    save_base(&mut net, &path, &provenance()).unwrap();
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

/// Runs the pretrain binary on `data` into `out`: 48x48, 2 epochs of batch 4, one thread, plus
/// `extra` flags.
fn pretrain_bin(data: &Path, out: &Path, extra: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_pretrain"))
        .args(["--input-size", "48", "--epochs", "2", "--batch-size", "4", "--hidden", "8"])
        .args(["--device", "cpu", "--threads", "1", "--data"])
        .arg(data)
        .arg("--out")
        .arg(out)
        .args(extra)
        .output()
        .unwrap()
}

#[test]
fn a_killed_run_resumes_to_the_same_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    make_dataset(&data, 4);
    let whole = dir.path().join("whole");
    let run = pretrain_bin(&data, &whole, &[]);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    // Stopped in the middle of epoch 2 (2 steps an epoch: step 3 of 4), then resumed.
    let parts = dir.path().join("parts");
    let stopped = pretrain_bin(&data, &parts, &["--stop-after-steps", "3"]);
    assert_eq!(stopped.status.code(), Some(3), "{}", String::from_utf8_lossy(&stopped.stderr));
    assert!(!parts.join("stage.json").exists(), "a stopped run is not a finished stage");
    let resumed = pretrain_bin(&data, &parts, &["--resume"]);
    assert!(resumed.status.success(), "{}", String::from_utf8_lossy(&resumed.stderr));
    for file in ["model.safetensors", "base.safetensors"] {
        assert_eq!(
            std::fs::read(whole.join(file)).unwrap(),
            std::fs::read(parts.join(file)).unwrap(),
            "{file} differs after resume"
        );
    }
    // The best epoch's weights live only in the `best` checkpoint: without it a resume would
    // keep the wrong epoch, so it is refused.
    let lost = dir.path().join("lost");
    let stopped = pretrain_bin(&data, &lost, &["--stop-after-steps", "3"]);
    assert_eq!(stopped.status.code(), Some(3));
    std::fs::remove_file(lost.join("checkpoints/best.json")).unwrap();
    let refused = pretrain_bin(&data, &lost, &["--resume"]);
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success() && err.contains("best.json: missing"), "{err}");
    // Bad numbers are errors, not panics.
    let zero = std::process::Command::new(env!("CARGO_BIN_EXE_pretrain"))
        .args(["--input-size", "48", "--batch-size", "0", "--device", "cpu", "--data"])
        .arg(&data)
        .arg("--out")
        .arg(dir.path().join("zero"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&zero.stderr);
    assert_eq!(zero.status.code(), Some(1), "{err}");
    assert!(err.contains("--batch-size"), "{err}");
    // Other settings refuse the checkpoint, naming it.
    let stopped = pretrain_bin(&data, &parts, &["--stop-after-steps", "1"]);
    assert_eq!(stopped.status.code(), Some(3));
    let other = pretrain_bin(&data, &parts, &["--resume", "--lr", "0.5"]);
    let err = String::from_utf8_lossy(&other.stderr);
    assert!(!other.status.success() && err.contains("checkpoints/latest"), "{err}");
}

#[test]
fn binary_writes_a_complete_stage() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    make_dataset(&data, 4);
    let out = dir.path().join("out");
    let run = pretrain_bin(&data, &out, &[]);
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

    // `evaluate` on the model file alone reproduces the stage's own test figures: the same
    // confusion matrix (so the same class for every image but equal-count swaps), accuracy,
    // per-class figures, and the loss.
    let eval_out = dir.path().join("evaluate");
    let model_path = out.join("model.safetensors");
    let model = models::Classifier::load(&model_path, Device::Cpu, None::<&str>).unwrap();
    let options = evaluate::EvaluateOptions {
        split: "test".into(),
        top_losses: 0,
        follow_links: false,
        classify: Default::default(),
    };
    let report = evaluate::evaluate(&model, &model_path, &data, &options, &eval_out).unwrap();
    let stage_test = test;
    assert_eq!(
        std::fs::read_to_string(eval_out.join("confusion_test.csv")).unwrap(),
        std::fs::read_to_string(out.join("confusion_test.csv")).unwrap()
    );
    assert_eq!(report.metrics.acc, stage_test.acc);
    assert_eq!(report.metrics.per_class, stage_test.per_class);
    assert!(
        (report.metrics.loss - stage_test.loss).abs() <= 1e-5 * stage_test.loss.max(1.0),
        "evaluate's loss {} vs the stage's {}",
        report.metrics.loss,
        stage_test.loss
    );

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

/// The kind: augmented pixels reach the network as Keras hands them over, floats on the 0-255
/// scale, not rounded to whole values: a batch is exactly `apply_u8_to_f32` of each image.
#[test]
fn augmented_pixels_reach_the_network_unrounded() {
    let dir = tempfile::tempdir().unwrap();
    make_dataset(dir.path(), 2);
    let images = data::load(dir.path(), "train", 8).unwrap();
    // Bilinear sub-pixel shifts and a fractional fill value.
    let spec: augment::AugmentSpec = serde_json::from_str(
        r#"{"width_shift_range": 0.3, "height_shift_range": 0.3, "interpolation_order": 1,
            "fill_mode": "constant", "cval": 76.5}"#,
    )
    .unwrap();
    let config = augment::AugmentConfig::new(spec).unwrap();
    let indices = [0usize, 3];
    let batch =
        pretrain::train::batch_tensor(&images, &indices, Some((&config, 7, 2)), Device::Cpu)
            .unwrap();
    assert_eq!(batch.size(), [2, 3, 8, 8]);
    // Back to NHWC, image after image, as apply_u8_to_f32 writes them.
    let got: Vec<f32> =
        Vec::try_from(batch.permute([0, 2, 3, 1]).contiguous().to_kind(Kind::Float).view([-1]))
            .unwrap();
    let mut want = vec![0f32; indices.len() * 8 * 8 * 3];
    for (k, &i) in indices.iter().enumerate() {
        config
            .sample(7, 2, i as u64)
            .apply_u8_to_f32(images.image(i), 8, 8, 3, &mut want[k * 192..(k + 1) * 192])
            .unwrap();
    }
    assert!(want.iter().any(|v| v.fract() != 0.0), "the draws gave whole pixels only");
    assert_eq!(got, want);
}
