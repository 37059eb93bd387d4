//! The fine-tune binary end to end on a tiny generated dataset (32x32, 12 training images,
//! random VGG16 weights): outputs and stage record, frozen layers bit-identical, exact resume
//! after a crash mid-epoch, cached-trunk mode against plain training, a head from train-head,
//! non-finite losses, and refused inputs. Every run is a child process on one libtorch thread.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use feature_cache::{
    AugmentationKey, Cache, DatasetKey, EntryRef, ExtractionRecord, FORMAT_VERSION, FeatureKey,
    FileKey, SplitPlan, write_index,
};
use tch::{Device, Kind, Tensor, nn};
use training::checkpoint::CheckpointDir;
use training::tensors_io;

/// The fixture draws random weights from libtorch's global generator; tests in this binary
/// run in parallel threads, so that draw (and anything else touching the generator) holds this.
static TORCH_RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());

const SIZE: u32 = 32;
const CLASSES: [&str; 2] = ["cat", "dog"];

struct Fixture {
    _dir: tempfile::TempDir,
    root: PathBuf,
    data: PathBuf,
    weights: PathBuf,
}

/// A dataset of 36x40 PNGs (resized to 32x32 by the stage): "cat" bright on the left, "dog" on
/// the right, with seeded noise; train 6 + 6, validation 3 + 3, test 3 + 3.
fn write_dataset(root: &Path) {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut noise = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % 64) as u8
    };
    for (split, per_class) in [("train", 6), ("validation", 3), ("test", 3)] {
        for (label, class) in CLASSES.iter().enumerate() {
            let dir = root.join(split).join(class);
            std::fs::create_dir_all(&dir).unwrap();
            for i in 0..per_class {
                let img = image::RgbImage::from_fn(40, 36, |x, _| {
                    let bright = (x < 20) == (label == 0);
                    let base = if bright { 170 } else { 30 };
                    image::Rgb([base + noise(), base + noise(), base + noise()])
                });
                img.save(dir.join(format!("{i:02}.png"))).unwrap();
            }
        }
    }
}

/// Random VGG16 weights (He-normal, so activations neither vanish nor explode) in our format.
fn write_weights(path: &Path) {
    let _guard = TORCH_RNG.lock().unwrap_or_else(|p| p.into_inner());
    tch::manual_seed(17);
    let vs = nn::VarStore::new(Device::Cpu);
    let base = models::ConvBase::with_arch(&vs.root(), models::ConvArch::vgg16());
    let mut tensors = tensors_io::named_variables(&vs);
    for (name, t) in &mut tensors {
        *t = if name.ends_with("weight") {
            let fan_in = (t.size()[1] * 9) as f64;
            Tensor::randn(t.size(), (Kind::Float, Device::Cpu)) * (2.0 / fan_in).sqrt()
        } else {
            Tensor::full(t.size(), 0.01, (Kind::Float, Device::Cpu))
        };
    }
    let provenance = models::weights::Provenance {
        preprocessing: models::Preprocessing::Rescale,
        source: "fine-tune tests: He-normal, seed 17".into(),
        source_sha256: "0".repeat(64),
        source_format: "tch".into(),
    };
    models::weights::save_conv_base(path, base.arch(), &tensors, &provenance).unwrap();
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_owned();
        let data = root.join("data");
        write_dataset(&data);
        let weights = root.join("vgg16.safetensors");
        write_weights(&weights);
        Fixture { _dir: dir, root, data, weights }
    })
}

/// The settings every run shares: 1 head epoch + 1 fine-tuning epoch of 4 steps of 4 images
/// (16 draws from 12 images: the epoch wraps round), dropout and augmentation on. `extra`
/// replaces a shared setting of the same name (the value `default` drops it) or adds to them.
fn fine_tune(out: &Path, extra: &[&str]) -> Output {
    let fx = fixture();
    let size = SIZE.to_string();
    let mut args: Vec<(&str, Option<&str>)> = [
        ("--input-size", size.as_str()),
        ("--head-epochs", "1"),
        ("--epochs", "1"),
        ("--steps-per-epoch", "4"),
        ("--batch-size", "4"),
        ("--dropout", "0.5"),
        ("--device", "cpu"),
        ("--threads", "1"),
        ("--seed", "11"),
        ("--head-phase-lr", "1e-3"),
        ("--lr", "1e-4"),
    ]
    .into_iter()
    .map(|(k, v)| (k, Some(v)))
    .collect();
    let mut rest = extra.iter().peekable();
    while let Some(flag) = rest.next() {
        let value = rest.next_if(|v| !v.starts_with("--")).copied();
        match args.iter().position(|(k, _)| k == flag) {
            Some(i) if value == Some("default") => drop(args.remove(i)),
            Some(i) => args[i].1 = value,
            None => args.push((flag, value)),
        }
    }
    Command::new(env!("CARGO_BIN_EXE_fine-tune"))
        .arg("--data")
        .arg(&fx.data)
        .arg("--weights")
        .arg(&fx.weights)
        .arg("--out")
        .arg(out)
        .args(args.iter().flat_map(|(k, v)| std::iter::once(*k).chain(*v)))
        .env("RUST_LOG", "warn")
        .output()
        .unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn check_ok(out: &Output) {
    assert!(out.status.success(), "fine-tune failed ({:?}):\n{}", out.status, stderr(out));
}

/// Runs fine-tune and expects it to fail with a message containing every one of `expect`.
fn check_fails(out_dir: &Path, extra: &[&str], expect: &[&str]) {
    let out = fine_tune(out_dir, extra);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    for e in expect {
        assert!(err.contains(e), "expected {e:?} in:\n{err}");
    }
}

/// The uninterrupted reference run, shared by the tests that only read its outputs.
fn reference() -> &'static Path {
    static RUN: OnceLock<PathBuf> = OnceLock::new();
    RUN.get_or_init(|| {
        let out = fixture().root.join("reference");
        check_ok(&fine_tune(&out, &[]));
        out
    })
}

fn tensors(path: &Path) -> HashMap<String, Tensor> {
    tensors_io::load(path).unwrap().tensors.into_iter().collect()
}

fn history_without_seconds(dir: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(dir.join("history.csv")).unwrap();
    text.lines().map(|l| l.rsplit_once(',').unwrap().0.to_owned()).collect()
}

/// Both runs' model and best weights are bit-identical, and so is the history.
fn check_same_run(a: &Path, b: &Path) {
    for file in ["model.safetensors", "best.safetensors"] {
        let (ta, tb) = (tensors(&a.join(file)), tensors(&b.join(file)));
        assert_eq!(ta.len(), tb.len());
        for (name, t) in &ta {
            assert!(t.equal(&tb[name]), "{file}: {name} differs");
        }
    }
    assert_eq!(history_without_seconds(a), history_without_seconds(b));
}

#[test]
fn outputs_follow_the_stage_contract() {
    let dir = reference();
    let record = run_folder::StageRecord::read(dir).unwrap();
    assert_eq!(record.stage, "fine-tune");
    assert_eq!(record.damaged_output(dir), None);
    for name in [
        "model.safetensors",
        "best.safetensors",
        "history.csv",
        "accuracy.png",
        "loss.png",
        "metrics.json",
        "confusion_test.csv",
        "confusion_validation.png",
    ] {
        assert!(record.outputs.contains_key(name), "{name} missing from stage.json");
    }
    assert!(record.inputs.contains_key("weights") && record.inputs.contains_key("data"));
    assert_eq!(record.summary["mode"], "plain");
    let config: serde_json::Value = run_folder::read_json(&dir.join("config.json")).unwrap();
    assert_eq!(config["trunk_until"], "block4_pool");
    assert_eq!(config["augmentation"]["rotation_range"], 40.0);

    let history = history_without_seconds(dir);
    assert_eq!(history.len(), 3, "{history:?}");
    assert!(
        history[1].ends_with(",1e-3") && history[2].ends_with(",1e-4"),
        "learning rate per phase: {history:?}"
    );
    let metrics = run_folder::StageMetrics::read(dir).unwrap();
    for (split, m) in
        [("validation", &metrics.validation), ("test", metrics.test.as_ref().unwrap())]
    {
        assert!((0.0..=1.0).contains(&m.acc), "{split} acc {}", m.acc);
        assert_eq!(m.source.as_deref(), Some("images"));
        assert_eq!(m.images, 6, "{split}");
    }
    // model.safetensors holds the last epoch, so that is the one evaluated; the best is in
    // best.safetensors and the summary.
    assert_eq!((metrics.kept.epoch, metrics.kept.of), (2, 2));
    assert!(
        record.summary["best_epoch"].as_u64().is_some_and(|e| (1..=2).contains(&e)),
        "{}",
        record.summary["best_epoch"]
    );
    let csv = std::fs::read_to_string(dir.join("confusion_test.csv")).unwrap();
    assert!(csv.starts_with("true\\predicted,cat,dog\ncat,"), "{csv}");
    let counts: u64 = csv
        .lines()
        .skip(1)
        .flat_map(|l| l.split(',').skip(1))
        .map(|c| c.parse::<u64>().unwrap())
        .sum();
    assert_eq!(counts, 6);
    assert_eq!(image::open(dir.join("accuracy.png")).unwrap().width(), 800);

    // The model file rebuilds the classifier on its own, described by its typed header.
    let model = models::Classifier::load(&dir.join("model.safetensors"), Device::Cpu, None::<&str>)
        .unwrap();
    let header = model.header();
    assert_eq!(header.stage, "fine-tune");
    assert_eq!(header.architecture, "vgg16_conv_base");
    assert_eq!(header.cut, "block5_pool");
    assert_eq!(header.preprocessing, models::Preprocessing::Rescale);
    assert_eq!(header.class_names, ["cat", "dog"]);
    assert_eq!(header.trained_on["config"], record.config_sha256);

    // `evaluate` on the model file alone reproduces the stage's own test figures: the same
    // confusion matrix (so the same class for every image but equal-count swaps), accuracy,
    // per-class figures, and the loss.
    let eval_out = fixture().root.join("evaluate-reference");
    let model_path = dir.join("model.safetensors");
    let model = models::Classifier::load(&model_path, Device::Cpu, None::<&str>).unwrap();
    let options = evaluate::EvaluateOptions {
        split: "test".into(),
        top_losses: 0,
        follow_links: false,
        classify: Default::default(),
    };
    let report =
        evaluate::evaluate(&model, &model_path, &fixture().data, &options, &eval_out).unwrap();
    let stage_test = metrics.test.as_ref().unwrap();
    assert_eq!(
        std::fs::read_to_string(eval_out.join("confusion_test.csv")).unwrap(),
        std::fs::read_to_string(dir.join("confusion_test.csv")).unwrap()
    );
    assert_eq!(report.metrics.acc, stage_test.acc);
    assert_eq!(report.metrics.per_class, stage_test.per_class);
    assert!(
        (report.metrics.loss - stage_test.loss).abs() <= 1e-5 * stage_test.loss.max(1.0),
        "evaluate's loss {} vs the stage's {}",
        report.metrics.loss,
        stage_test.loss
    );

    // One time breakdown per epoch, every part present.
    let breakdown = record.summary["epoch_breakdown"].as_array().unwrap();
    assert_eq!(breakdown.len(), 2);
    for (i, epoch) in breakdown.iter().enumerate() {
        assert_eq!(epoch["epoch"], i + 1);
        for part in ["batch", "forward", "backward", "optimizer", "other", "validation"] {
            assert!(epoch[part].as_f64().is_some_and(|s| s >= 0.0), "{part} in {epoch}");
        }
    }
    assert_eq!(record.summary["autocast"], false);
}

#[test]
fn autocast_on_the_cpu_warns_and_trains_in_float32() {
    let out = fixture().root.join("autocast");
    let run = fine_tune(&out, &["--autocast"]);
    check_ok(&run);
    assert!(stderr(&run).contains("--autocast applies to CUDA only"), "{}", stderr(&run));
    check_same_run(reference(), &out);
    let record = run_folder::StageRecord::read(&out).unwrap();
    assert_eq!(record.summary["autocast"], false);
}

#[test]
fn frozen_layers_stay_bit_identical_and_the_top_moves() {
    let dir = reference();
    let before = tensors(&fixture().weights);
    let after = tensors(&dir.join("model.safetensors"));
    assert_eq!(after.len(), 26 + 4);
    for (name, t) in &before {
        let index: usize = name.split('.').nth(1).unwrap().parse().unwrap();
        if index < 24 {
            assert!(t.equal(&after[name]), "frozen {name} changed");
        } else {
            assert!(!t.equal(&after[name]), "trainable {name} did not change");
        }
    }
}

#[test]
fn resume_after_a_crash_mid_epoch_is_bit_identical() {
    let fx = fixture();
    for stop_after in ["6", "2"] {
        // Step 6 is step 2 of the fine-tuning epoch; step 2 is inside the head phase.
        let dir = fx.root.join(format!("resumed-{stop_after}"));
        let out = fine_tune(&dir, &["--stop-after-steps", stop_after]);
        assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
        assert!(!dir.join("stage.json").exists(), "a stopped run must not look finished");
        let ckpt = CheckpointDir::new(dir.join("checkpoints"))
            .load::<serde_json::Value>("latest")
            .unwrap()
            .expect("a checkpoint");
        let (epoch, step) = if stop_after == "6" { (1, 2) } else { (0, 2) };
        assert_eq!(
            (ckpt.state["epoch"].as_u64(), ckpt.state["step"].as_u64()),
            (Some(epoch), Some(step)),
            "{}",
            ckpt.state
        );

        if stop_after == "6" {
            // Other settings: refused, and the run's config.json is left alone.
            let config = std::fs::read(dir.join("config.json")).unwrap();
            check_fails(&dir, &["--resume", "--lr", "2e-4"], &["other settings", "latest.json"]);
            assert_eq!(std::fs::read(dir.join("config.json")).unwrap(), config);
        }
        check_ok(&fine_tune(&dir, &["--resume"]));
        check_same_run(reference(), &dir);
    }
    // The comparison can fail: another seed (other batches, augmentations, dropout masks and
    // initial head) gives other weights.
    let other = fx.root.join("other-seed");
    check_ok(&fine_tune(&other, &["--seed", "12"]));
    let (a, b) = (
        tensors(&reference().join("model.safetensors")),
        tensors(&other.join("model.safetensors")),
    );
    assert!(!a["features.28.weight"].equal(&b["features.28.weight"]));
}

/// Builds what `extract-features --layer block4_pool --augment-passes 2` leaves (each split as
/// chunk entries and a split index), with the identity as "augmentation", computing the
/// features with the models crate.
fn write_trunk_cache(dir: &Path, passes: u32, with_validation: bool) -> PathBuf {
    let fx = fixture();
    let weights = models::load_weights(&fx.weights, Device::Cpu).unwrap();
    let layer = weights.base.layer("block4_pool").unwrap();
    let cache = Cache::open(dir.join("cache")).unwrap();
    let mut jobs: Vec<(&str, Option<u32>)> = (0..passes).map(|p| ("train", Some(p))).collect();
    if with_validation {
        jobs.push(("validation", None));
    }
    let mut entries = Vec::new();
    for (split, pass) in jobs {
        let index = dataset::scan(
            &fx.data,
            split,
            &dataset::ScanOptions { class_mode: dataset::ClassMode::Sparse, ..Default::default() },
        )
        .unwrap();
        let digests = dataset::digests(&index).unwrap();
        let files = index
            .files
            .iter()
            .zip(digests)
            .map(|(f, sha256)| FileKey {
                path: f.path.strip_prefix(&index.dir).unwrap().to_string_lossy().into_owned(),
                label: f.class as u32,
                sha256,
            })
            .collect();
        let key = FeatureKey {
            format_version: FORMAT_VERSION,
            weights_sha256: weights.meta.digest.clone(),
            architecture: "vgg16_conv_base".into(),
            layer: "block4_pool".into(),
            input_size: [SIZE; 2],
            resize: "nearest".into(),
            preprocessing: "rescale".into(),
            pooling: "none".into(),
            precision: "f32".into(),
            augmentation: pass.map(|pass| AugmentationKey {
                spec: serde_json::json!({}),
                seed: 0,
                pass,
            }),
            dataset: DatasetKey { split: split.into(), classes: index.classes.clone(), files },
        };
        let (mut rows, mut labels) = (Vec::<f32>::new(), Vec::<i32>::new());
        let decode = dataset::DecodeOptions {
            target_size: Some(dataset::Size::square(SIZE)),
            ..Default::default()
        };
        let options = dataset::BatchOptions { batch_size: 5, ..Default::default() };
        for batch in dataset::batches(&index, &decode, &options, 0).unwrap() {
            let batch = batch.unwrap();
            let xs = Tensor::from_slice(&batch.images).view([
                batch.len() as i64,
                SIZE as i64,
                SIZE as i64,
                3,
            ]);
            let ys = tch::no_grad(|| weights.features(&xs, layer, models::Pooling::None)).unwrap();
            rows.extend(
                Vec::<f32>::try_from(ys.permute([0, 2, 3, 1]).contiguous().flatten(0, -1)).unwrap(),
            );
            labels.extend(batch.classes.iter().map(|&c| c as i32));
        }
        let plan = SplitPlan::new(&key);
        let row = 2 * 2 * 512;
        let mut counts = Vec::new();
        for chunk in &plan.chunks {
            let (n, r) = (chunk.range.len(), chunk.range.clone());
            let mut writer =
                cache.writer(chunk.key.clone(), "fine-tune tests", n as u64, &[2, 2, 512]).unwrap();
            writer.append(&rows[r.start * row..r.end * row], &labels[r]).unwrap();
            writer.finish().unwrap();
            counts.push(n as u64);
        }
        write_index(cache.root(), &plan.index(&counts, "fine-tune tests")).unwrap();
        entries.push(EntryRef {
            split: split.into(),
            pass,
            key: plan.index_key.clone(),
            rows: index.len() as u64,
            cache_dir: None,
            origin: None,
        });
    }
    let record = ExtractionRecord {
        cache_dir: cache.root().to_owned(),
        classes: CLASSES.iter().map(|c| (*c).to_owned()).collect(),
        feature_shape: vec![2, 2, 512],
        layer: "block4_pool".into(),
        weights_sha256: weights.meta.digest.clone(),
        entries,
    };
    let path = dir.join("features.json");
    run_folder::write_json(&path, &record).unwrap();
    path
}

#[test]
fn cached_trunk_trains_like_the_plain_mode() {
    let fx = fixture();
    let features = write_trunk_cache(&fx.root.join("extract"), 2, true);
    let features_arg = features.to_str().unwrap();
    let plain = fx.root.join("plain-no-augment");
    let cached = fx.root.join("cached");
    check_ok(&fine_tune(&plain, &["--no-augment"]));
    check_ok(&fine_tune(&cached, &["--trunk-cache", features_arg]));

    let record = run_folder::StageRecord::read(&cached).unwrap();
    assert_eq!(record.summary["mode"], "cached-trunk");
    assert!(record.inputs.contains_key("trunk_cache"));
    let metrics = run_folder::StageMetrics::read(&cached).unwrap();
    let source = metrics.validation.source.as_deref().unwrap();
    assert!(source.starts_with("cache "), "{source}");
    let test = metrics.test.as_ref().unwrap();
    assert_eq!(test.source.as_deref(), Some("images"), "the record has no test entry");

    // Same batches, same dropout masks, trunk features computed elsewhere: the same training up
    // to float rounding (bit-identical on this machine). Compared against how far training moved
    // the weights.
    let init = tensors(&fx.weights);
    let (a, b) =
        (tensors(&plain.join("model.safetensors")), tensors(&cached.join("model.safetensors")));
    for name in [
        "features.24.weight",
        "features.28.weight",
        "features.28.bias",
        "head.fc1.weight",
        "head.fc2.weight",
    ] {
        let diff = f64::try_from((&a[name] - &b[name]).abs().max()).unwrap();
        let moved = match init.get(name) {
            Some(t) => f64::try_from((&a[name] - t).abs().max()).unwrap(),
            None => f64::try_from(a[name].abs().max()).unwrap(),
        };
        assert!(
            diff <= 0.02 * moved,
            "{name}: plain and cached-trunk differ by {diff:e}, training moved it by {moved:e}"
        );
    }
    let history = |d: &Path| -> Vec<f64> {
        history_without_seconds(d)
            .iter()
            .skip(1)
            .flat_map(|l| {
                l.split(',').skip(1).take(4).map(|v| v.parse::<f64>().unwrap()).collect::<Vec<_>>()
            })
            .collect()
    };
    for (x, y) in history(&plain).iter().zip(history(&cached)) {
        assert!((x - y).abs() <= 1e-3 * x.abs().max(1.0), "history differs: {x} vs {y}");
    }

    // Batches read from the cache by row resume exactly too: a crash in the fine-tuning epoch,
    // then --resume, ends bit-identical to the uninterrupted cached-trunk run.
    let resumed = fx.root.join("cached-resumed");
    let out = fine_tune(&resumed, &["--trunk-cache", features_arg, "--stop-after-steps", "6"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    check_ok(&fine_tune(&resumed, &["--trunk-cache", features_arg, "--resume"]));
    check_same_run(&cached, &resumed);
}

#[test]
fn trunk_caches_that_do_not_fit_are_refused() {
    let fx = fixture();
    let dir = fx.root.join("extract-refused");
    let features = write_trunk_cache(&dir, 1, false);
    let features_arg = features.to_str().unwrap();
    let out = fx.root.join("refused");
    check_fails(
        &out,
        &["--trunk-cache", features_arg, "--unfreeze-from", "block5_conv2"],
        &["features.json", "holds block4_pool features", "--layer block5_conv1"],
    );
    check_fails(
        &out,
        &["--trunk-cache", features_arg, "--input-size", "48"],
        &["features.json", "input size"],
    );
    check_fails(
        &out,
        &["--trunk-cache", features_arg, "--preprocessing", "caffe"],
        &["preprocessing is rescale, fine-tune needs caffe"],
    );
    // A record without augmented passes of the training split.
    let mut record: ExtractionRecord = run_folder::read_json(&features).unwrap();
    record.entries.retain(|e| e.pass.is_none());
    let plain_only = dir.join("plain-only.json");
    run_folder::write_json(&plain_only, &record).unwrap();
    check_fails(
        &out,
        &["--trunk-cache", plain_only.to_str().unwrap()],
        &["plain-only.json", "--augment-passes"],
    );
}

#[test]
fn a_train_head_output_starts_the_fine_tuning() {
    let fx = fixture();
    let dir = fx.root.join("with-head");
    std::fs::create_dir_all(&dir).unwrap();
    let spec = training::HeadSpec { input_width: 512, hidden: 16, dropout: 0.25, classes: 2 };
    let head: Vec<(String, Tensor)> = vec![
        (
            "head.fc1.weight".into(),
            Tensor::arange(16 * 512, (Kind::Float, Device::Cpu)).reshape([16, 512]) / 1e5,
        ),
        ("head.fc1.bias".into(), Tensor::full([16], 0.5, (Kind::Float, Device::Cpu))),
        ("head.fc2.weight".into(), Tensor::full([1, 16], -0.25, (Kind::Float, Device::Cpu))),
        ("head.fc2.bias".into(), Tensor::full([1], 0.125, (Kind::Float, Device::Cpu))),
    ];
    let meta = |spec: &training::HeadSpec| {
        HashMap::from([
            ("head".to_owned(), serde_json::to_string(spec).unwrap()),
            ("layer".to_owned(), "block5_pool".to_owned()),
        ])
    };
    let path = dir.join("head.safetensors");
    tensors_io::save(&path, &head, &meta(&spec)).unwrap();
    // With --head no head epochs run by default; no fine-tuning epochs either: the model is the
    // base plus exactly the given head.
    let out = dir.join("zero-epochs");
    check_ok(&fine_tune(
        &out,
        &["--head", path.to_str().unwrap(), "--head-epochs", "default", "--epochs", "0"],
    ));
    let model = tensors(&out.join("model.safetensors"));
    for (name, t) in &head {
        assert!(t.equal(&model[name]), "{name} not taken from --head");
    }
    let config: serde_json::Value = run_folder::read_json(&out.join("config.json")).unwrap();
    assert_eq!(
        (config["head_epochs"].as_u64(), config["head_spec"]["hidden"].as_u64()),
        (Some(0), Some(16))
    );
    assert_eq!(config["head_spec"]["dropout"], 0.5, "--dropout overrides the head's");
    // A head for another input width is refused, naming the file.
    let wide = training::HeadSpec { input_width: 2048, ..spec };
    let bad = dir.join("wide.safetensors");
    let wide_head: Vec<(String, Tensor)> = head
        .iter()
        .map(|(n, t)| {
            (
                n.clone(),
                if n == "head.fc1.weight" {
                    Tensor::zeros([16, 2048], (Kind::Float, Device::Cpu))
                } else {
                    t.shallow_clone()
                },
            )
        })
        .collect();
    tensors_io::save(&bad, &wide_head, &meta(&wide)).unwrap();
    check_fails(
        &dir.join("refused"),
        &["--head", bad.to_str().unwrap()],
        &["wide.safetensors", "2048", "512"],
    );
}

#[test]
fn a_non_finite_loss_names_epoch_and_step_and_keeps_the_last_checkpoint() {
    let fx = fixture();
    let dir = fx.root.join("diverged");
    let out = fine_tune(&dir, &["--head-phase-lr", "1e30", "--checkpoint-every", "1"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let at = err.find("non-finite loss").unwrap_or_else(|| panic!("{err}"));
    let tail = &err[at..];
    let step: u64 = tail
        .split("at epoch 1, step ")
        .nth(1)
        .and_then(|s| s.split(':').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{err}"));
    assert!(step >= 2, "the first step cannot diverge yet: {err}");
    // The checkpoint of the step before loads, digests and all.
    let ckpt = CheckpointDir::new(dir.join("checkpoints"))
        .load::<serde_json::Value>("latest")
        .unwrap()
        .expect("a checkpoint");
    assert_eq!(ckpt.state["step"].as_u64(), Some(step - 1));
    assert!(!dir.join("stage.json").exists());
}

/// The kind: a failure message names only paths that exist. A loss that turns non-finite in
/// the first epoch, before any checkpoint was saved, must not send the user to a checkpoint
/// folder that was never written; with a checkpoint, the path named is there.
#[test]
fn failure_messages_name_only_paths_that_exist() {
    let fx = fixture();
    for (name, extra) in
        [("diverged-early", &[][..]), ("diverged-late", &["--checkpoint-every", "1"][..])]
    {
        let dir = fx.root.join(name);
        let mut args = vec!["--head-phase-lr", "1e30"];
        args.extend_from_slice(extra);
        let out = fine_tune(&dir, &args);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(err.contains("non-finite loss"), "{err}");
        let prefix = dir.display().to_string();
        let named: Vec<&str> = err
            .split_whitespace()
            .filter(|w| w.starts_with(&prefix))
            .map(|w| w.trim_end_matches([':', ',', ';', ')', '.']))
            .collect();
        for path in &named {
            assert!(Path::new(path).exists(), "{name}: names {path}, which does not exist:\n{err}");
        }
        if extra.is_empty() {
            assert!(err.contains("no checkpoint was written"), "{err}");
        } else {
            assert!(!named.is_empty(), "{name}: names no checkpoint:\n{err}");
        }
    }
}

#[test]
fn bad_settings_are_refused_before_training() {
    let out = fixture().root.join("bad");
    check_fails(&out, &["--input-size", "16"], &["--input-size 16", "block5_pool"]);
    check_fails(&out, &["--dropout", "1.5"], &["--dropout"]);
    let missing = fixture().root.join("missing.safetensors");
    check_fails(&out, &["--head", missing.to_str().unwrap()], &["missing.safetensors"]);
}
