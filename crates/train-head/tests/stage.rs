//! The train-head binary on a synthetic feature cache: it writes every promised output, learns
//! separable features, repeats itself to the byte, and refuses mismatched or corrupt inputs
//! before training.

use std::path::{Path, PathBuf};
use std::process::Command;

use feature_cache::{
    Cache, ChunkIndex, DatasetKey, EntryRef, ExtractionRecord, FORMAT_VERSION, FeatureKey, FileKey,
    SplitPlan, index_path, write_index,
};

const CLASSES: [&str; 2] = ["shirt", "t-shirt_top"];

/// Writes one split of separable 2x2x2 features (class 1 shifted by +1.5) into the cache.
fn write_split(cache: &Cache, split: &str, rows: u32, pass: Option<u32>, width: u64) -> EntryRef {
    let key = FeatureKey {
        format_version: FORMAT_VERSION,
        weights_sha256: "ab".repeat(32),
        architecture: "vgg16_conv_base".into(),
        layer: "block5_pool".into(),
        input_size: [32, 32],
        resize: "nearest".into(),
        preprocessing: "caffe".into(),
        pooling: "none".into(),
        precision: "f32".into(),
        augmentation: pass.map(|p| feature_cache::AugmentationKey {
            spec: serde_json::json!({}),
            seed: 0,
            pass: p,
        }),
        dataset: DatasetKey {
            split: split.into(),
            classes: CLASSES.iter().map(|c| (*c).to_owned()).collect(),
            files: (0..rows)
                .map(|i| FileKey {
                    path: format!("{i}.png"),
                    label: i % 2,
                    sha256: "00".repeat(32),
                })
                .collect(),
        },
    };
    // The split as extract-features stores it: chunk entries and the split index listing them.
    let plan = SplitPlan::new(&key);
    let mut counts = Vec::new();
    for chunk in &plan.chunks {
        let n = chunk.range.len() as u64;
        let mut w = cache.writer(chunk.key.clone(), "test", n, &[width]).unwrap();
        for i in chunk.range.clone() {
            let i = i as u32;
            let label = (i % 2) as i32;
            let row: Vec<f32> = (0..width)
                .map(|j| {
                    ((i * 7 + j as u32 * 13) % 10) as f32 / 10.0
                        + 1.5 * label as f32
                        + pass.unwrap_or(0) as f32 * 0.01
                })
                .collect();
            w.append(&row, &[label]).unwrap();
        }
        w.finish().unwrap();
        counts.push(n);
    }
    write_index(cache.root(), &plan.index(&counts, "test")).unwrap();
    EntryRef {
        split: split.into(),
        pass,
        key: plan.index_key.clone(),
        rows: rows as u64,
        cache_dir: None,
        origin: None,
    }
}

fn setup(dir: &Path, width: u64, record_width: u64) -> PathBuf {
    let cache = Cache::open(dir.join("cache")).unwrap();
    let entries = vec![
        write_split(&cache, "train", 60, None, width),
        write_split(&cache, "train", 60, Some(0), width),
        write_split(&cache, "train", 60, Some(1), width),
        write_split(&cache, "validation", 20, None, width),
        write_split(&cache, "test", 20, None, width),
    ];
    let record = ExtractionRecord {
        cache_dir: dir.join("cache"),
        classes: CLASSES.iter().map(|c| (*c).to_owned()).collect(),
        feature_shape: vec![record_width],
        layer: "block5_pool".into(),
        weights_sha256: "ab".repeat(32),
        entries,
    };
    let path = dir.join("features.json");
    run_folder::write_json(&path, &record).unwrap();
    path
}

fn train_head(features: &Path, out: &Path, extra: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_train-head"))
        .args(["--features", features.to_str().unwrap(), "--out", out.to_str().unwrap()])
        .args(["--epochs", "10", "--lr", "1e-2", "--hidden", "16", "--device", "cpu"])
        .args(extra)
        .output()
        .unwrap()
}

#[test]
fn writes_every_output_and_learns() {
    let dir = tempfile::tempdir().unwrap();
    let features = setup(dir.path(), 8, 8);
    let out = dir.path().join("head");
    let result = train_head(&features, &out, &[]);
    assert!(result.status.success(), "{}", String::from_utf8_lossy(&result.stderr));
    for f in [
        "config.json",
        "history.csv",
        "accuracy.png",
        "loss.png",
        "accuracy_smoothed.png",
        "loss_smoothed.png",
        "head.safetensors",
        "metrics.json",
        "confusion_validation.csv",
        "confusion_test.png",
        "confusion_test_normalised.png",
        "stage.json",
    ] {
        assert!(out.join(f).is_file(), "missing {f}");
    }
    let metrics = run_folder::StageMetrics::read(&out).unwrap();
    let test = metrics.test.as_ref().expect("a test split");
    assert!(test.acc > 0.8, "test acc {}", test.acc);
    assert_eq!(test.per_class.len(), 2);
    assert_eq!(test.images, test.per_class.iter().map(|c| c.support).sum::<u64>());
    // No early stopping: the last epoch's weights are the ones evaluated and saved.
    assert_eq!((metrics.kept.epoch, metrics.kept.of), (10, 10));
    let history = training::read_history(&out.join("history.csv")).unwrap();
    assert_eq!(history.len(), 10);
    let stage = run_folder::StageRecord::read(&out).unwrap();
    assert_eq!(stage.summary["augmented_passes"], 2);
    assert_eq!(stage.summary["test_acc"], test.acc);
    for f in ["confusion_validation_normalised.png", "loss_smoothed.png", "head.safetensors"] {
        assert!(stage.outputs.contains_key(f), "{f} missing from stage.json");
    }
    assert_eq!(stage.damaged_output(&out), None);
    let weights = training::tensors_io::load(&out.join("head.safetensors")).unwrap();
    assert_eq!(weights.metadata["class_names"], r#"["shirt","t-shirt_top"]"#);
}

#[test]
fn same_seed_same_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let features = setup(dir.path(), 8, 8);
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    for out in [&a, &b] {
        assert!(train_head(&features, out, &["--no-augmented-passes"]).status.success());
    }
    let read = |p: &Path| std::fs::read(p).unwrap();
    assert_eq!(read(&a.join("head.safetensors")), read(&b.join("head.safetensors")));
    let strip_seconds = |p: &Path| {
        let mut h = training::read_history(p).unwrap();
        h.iter_mut().for_each(|r| r.seconds = 0.0);
        training::history_csv(&h)
    };
    assert_eq!(strip_seconds(&a.join("history.csv")), strip_seconds(&b.join("history.csv")));
}

#[test]
fn restored_best_epoch_is_the_kept_one() {
    let dir = tempfile::tempdir().unwrap();
    let features = setup(dir.path(), 8, 8);
    let out = dir.path().join("head");
    let args = ["--early-stopping-patience", "3", "--restore-best"];
    let result = train_head(&features, &out, &args);
    assert!(result.status.success(), "{}", String::from_utf8_lossy(&result.stderr));
    let metrics = run_folder::StageMetrics::read(&out).unwrap();
    let history = training::read_history(&out.join("history.csv")).unwrap();
    assert_eq!(metrics.kept.of, history.len());
    // The kept epoch is the first with the lowest validation loss (history.csv rounds to 1e-6).
    let best = history.iter().map(|r| r.val_loss).fold(f64::INFINITY, f64::min);
    let first = history.iter().find(|r| r.val_loss == best).unwrap();
    assert_eq!(metrics.kept.epoch, first.epoch, "{history:?}");
    assert!((metrics.kept.val_loss - best).abs() < 1e-6);
}

#[test]
fn width_mismatch_fails_before_training() {
    let dir = tempfile::tempdir().unwrap();
    let features = setup(dir.path(), 8, 12);
    let out = dir.path().join("head");
    let result = train_head(&features, &out, &[]);
    assert!(!result.status.success());
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(stderr.contains("width 12") && stderr.contains("width 8"), "{stderr}");
    assert!(!out.join("history.csv").exists() && !out.join("head.safetensors").exists());
}

#[test]
fn corrupt_cache_entry_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let features = setup(dir.path(), 8, 8);
    let record: ExtractionRecord = run_folder::read_json(&features).unwrap();
    let val = record.plain("validation").unwrap();
    let cache = dir.path().join("cache");
    let chunk = &ChunkIndex::read(&index_path(&cache, &val.key)).unwrap().chunks[0];
    let npy = cache.join(&chunk.key).join("features.npy");
    let mut bytes = std::fs::read(&npy).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&npy, bytes).unwrap();
    let result = train_head(&features, &dir.path().join("head"), &[]);
    assert!(!result.status.success());
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(stderr.contains(&val.key) && stderr.contains("extract-features"), "{stderr}");
}
