//! The extract-features binary on a tiny generated dataset with random seeded VGG16 weights:
//! entries for every split and augmented pass, reuse on the second run, recompute of only what a
//! changed image touches, bf16 close to f32, pooling, the private-cache fallback, numpy interop,
//! the overlapped batch loop (rows and labels independent of the batch size, timings accounted
//! per entry) and the refusal of CUDA-only autocast on the CPU.

use std::path::{Path, PathBuf};
use std::process::Command;

use feature_cache::{Cache, ExtractionRecord};

/// `root/<split>/<class>/<i>.png`: class a is dark with a bright square, class b the reverse.
fn make_dataset(root: &Path) {
    for (split, n) in [("train", 4), ("validation", 2), ("test", 2)] {
        for (c, class) in ["a", "b"].iter().enumerate() {
            let dir = root.join(split).join(class);
            std::fs::create_dir_all(&dir).unwrap();
            for i in 0..n {
                let img = image::RgbImage::from_fn(40, 36, |x, y| {
                    let inside = (8..24).contains(&x) && (10..20).contains(&y);
                    let v = if inside == (c == 0) { 220 } else { 30 };
                    image::Rgb([v, (v as u32 * (i + 1) as u32 % 255) as u8, 255 - v])
                });
                img.save(dir.join(format!("{i}.png"))).unwrap();
            }
        }
    }
}

/// Random VGG16 weights from a fixed seed, saved as our safetensors with caffe preprocessing.
fn make_weights(path: &Path) {
    tch::manual_seed(7);
    let vs = tch::nn::VarStore::new(tch::Device::Cpu);
    let base = models::ConvBase::with_arch(&vs.root(), models::ConvArch::vgg16());
    let provenance = models::weights::Provenance {
        preprocessing: models::Preprocessing::Caffe,
        source: "random, tch::manual_seed(7)".into(),
        source_sha256: String::new(),
        source_format: "test".into(),
    };
    let mut vars: Vec<(String, tch::Tensor)> = vs.variables().into_iter().collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    models::weights::save_conv_base(path, base.arch(), &vars, &provenance).unwrap();
}

struct Fixture {
    _dir: tempfile::TempDir,
    data: PathBuf,
    weights: PathBuf,
    root: PathBuf,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_owned();
    let data = root.join("data");
    make_dataset(&data);
    let weights = root.join("vgg16.safetensors");
    make_weights(&weights);
    Fixture { _dir: dir, data, weights, root }
}

fn extract(f: &Fixture, out: &str, extra: &[&str]) -> (ExtractionRecord, String) {
    let out = f.root.join(out);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_extract-features"));
    cmd.args(["--data", f.data.to_str().unwrap(), "--weights", f.weights.to_str().unwrap()])
        .args(["--out", out.to_str().unwrap(), "--input-size", "32", "--device", "cpu"]);
    // Defaults unless the test sets them (clap refuses an option given twice).
    if !extra.contains(&"--batch-size") {
        cmd.args(["--batch-size", "3"]);
    }
    if !extra.contains(&"--cache-dir") {
        cmd.args(["--cache-dir", f.root.join("cache").to_str().unwrap()]);
    }
    let result = cmd.args(extra).output().unwrap();
    let stderr = String::from_utf8_lossy(&result.stderr).into_owned();
    assert!(result.status.success(), "{stderr}");
    (run_folder::read_json(&out.join(feature_cache::EXTRACTION_FILE)).unwrap(), stderr)
}

fn load(record: &ExtractionRecord, split: &str) -> feature_cache::LoadedSplit {
    let cache = Cache::open(&record.cache_dir).unwrap();
    ExtractionRecord::load(&cache, record.plain(split).unwrap(), Path::new("features.json"))
        .unwrap()
}

#[test]
fn extracts_reuses_and_recomputes_only_what_changed() {
    let f = fixture();
    let (first, stderr) = extract(&f, "x1", &["--augment-passes", "2"]);
    assert!(stderr.contains("5 splits in 5 chunk entries (0 from cache, 5 computed"), "{stderr}");
    assert_eq!(first.feature_shape, vec![1, 1, 512]);
    assert_eq!(first.classes, vec!["a", "b"]);
    assert_eq!(first.passes("train").len(), 2);
    let train = load(&first, "train");
    assert_eq!(train.shape(), &[8, 1, 1, 512]);
    assert_eq!(train.labels, vec![0, 0, 0, 0, 1, 1, 1, 1]);
    assert!(
        train.features.iter().all(|v| v.is_finite() && *v >= 0.0),
        "block5_pool follows a ReLU"
    );
    for stage_file in ["config.json", "stage.json", "classes.json", "features.json"] {
        assert!(f.root.join("x1").join(stage_file).is_file(), "missing {stage_file}");
    }
    let cache = Cache::open(f.root.join("cache")).unwrap();
    for e in &first.entries {
        let index = feature_cache::verify_split(cache.root(), &e.key).unwrap();
        assert_eq!(index.rows(), e.rows);
    }
    // Augmented passes differ from each other and from the plain features.
    let pass = |p: usize| {
        ExtractionRecord::load(&cache, first.passes("train")[p], Path::new("f")).unwrap().features
    };
    assert_ne!(pass(0), pass(1));
    assert_ne!(pass(0), train.features);

    let (second, stderr) = extract(&f, "x2", &["--augment-passes", "2"]);
    assert!(stderr.contains("5 splits in 5 chunk entries (5 from cache, 0 computed"), "{stderr}");
    let keys = |r: &ExtractionRecord| {
        r.entries
            .iter()
            .map(|e| (e.split.clone(), e.pass, e.key.clone(), e.rows))
            .collect::<Vec<_>>()
    };
    assert_eq!(keys(&second), keys(&first));
    assert!(second.entries.iter().all(|e| e.origin == Some(feature_cache::Origin::Found)));

    // One training image changes: the plain train entry and both passes are recomputed.
    let img = f.data.join("train/a/0.png");
    image::RgbImage::from_pixel(40, 36, image::Rgb([1, 2, 3])).save(&img).unwrap();
    let (third, stderr) = extract(&f, "x3", &["--augment-passes", "2"]);
    assert!(stderr.contains("5 splits in 5 chunk entries (2 from cache, 3 computed"), "{stderr}");
    let key = |r: &ExtractionRecord, split: &str| r.plain(split).map(|e| e.key.clone());
    assert_ne!(key(&third, "train"), key(&first, "train"));
    assert_eq!(key(&third, "test"), key(&first, "test"));
}

#[test]
fn bf16_is_close_to_f32_and_keyed_apart() {
    let f = fixture();
    let (f32_run, _) = extract(&f, "f32", &["--splits", "test", "--layer", "block3_pool"]);
    let (bf16_run, _) =
        extract(&f, "bf16", &["--splits", "test", "--layer", "block3_pool", "--precision", "bf16"]);
    assert_ne!(f32_run.entries[0].key, bf16_run.entries[0].key);
    let (a, b) = (load(&f32_run, "test").features, load(&bf16_run, "test").features);
    let num: f64 = a.iter().zip(&b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
    let den: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum();
    let rel = (num / den).sqrt();
    assert!(rel < 0.02, "bf16 relative error {rel}");
    assert!(rel > 0.0, "bf16 must actually run in bf16");
}

/// The loop keeps one batch in flight while it prepares the next and writes the previous: a row
/// written with another batch's labels, or a batch lost at the end, changes what a split holds
/// with the batch size.
#[test]
fn rows_and_labels_do_not_depend_on_the_batch_size() {
    let f = fixture();
    let layer = ["--splits", "train", "--layer", "block2_pool"];
    let (whole, _) = extract(&f, "b8", &[&layer[..], &["--batch-size", "8"]].concat());
    let reference = load(&whole, "train");
    for batch in ["1", "3"] {
        let (run, _) = extract(
            &f,
            &format!("b{batch}"),
            &[
                &layer[..],
                &[
                    "--batch-size",
                    batch,
                    "--cache-dir",
                    f.root.join(format!("cache{batch}")).to_str().unwrap(),
                ],
            ]
            .concat(),
        );
        let got = load(&run, "train");
        assert_eq!(got.labels, reference.labels, "batch size {batch}");
        assert_eq!(got.features.len(), reference.features.len(), "batch size {batch}");
        let row = reference.features.len() / 8;
        for (i, (a, b)) in got.features.chunks(row).zip(reference.features.chunks(row)).enumerate()
        {
            let err = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
            let scale = b.iter().map(|y| y.abs()).fold(0.0f32, f32::max).max(1e-6);
            assert!(
                err <= 1e-4 * scale,
                "batch size {batch}: row {i} differs by {err} (scale {scale})"
            );
        }
    }
}

#[test]
fn stage_summary_accounts_every_entry_and_batch() {
    let f = fixture();
    let (_, _) = extract(&f, "t", &["--splits", "train,test", "--layer", "block1_pool"]);
    let stage: serde_json::Value =
        run_folder::read_json(&f.root.join("t").join("stage.json")).unwrap();
    let entries = stage["summary"]["entries"].as_array().unwrap();
    let got: Vec<(&str, u64, u64)> = entries
        .iter()
        .map(|e| {
            (
                e["split"].as_str().unwrap(),
                e["images"].as_u64().unwrap(),
                e["batches"].as_u64().unwrap(),
            )
        })
        .collect();
    // 8 train images in batches of 3 (3, 3, 2), 4 test images (3, 1).
    assert_eq!(got, [("train", 8, 3), ("test", 4, 2)]);
    assert_eq!(stage["summary"]["cudnn_benchmark"], serde_json::Value::Null, "CPU run");
    assert_eq!(stage["summary"]["precision"], "f32");
}

#[test]
fn autocast_is_refused_on_the_cpu() {
    let f = fixture();
    let result = Command::new(env!("CARGO_BIN_EXE_extract-features"))
        .args([
            "--data",
            f.data.to_str().unwrap(),
            "--weights",
            f.weights.to_str().unwrap(),
            "--splits",
            "test",
        ])
        .args([
            "--out",
            f.root.join("ac").to_str().unwrap(),
            "--device",
            "cpu",
            "--precision",
            "autocast",
        ])
        .args(["--cache-dir", f.root.join("cache").to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(!result.status.success(), "{stderr}");
    assert!(stderr.contains("--precision autocast needs a CUDA device"), "{stderr}");
}

#[test]
fn pooling_and_layer_cut_shape_the_rows() {
    let f = fixture();
    let (avg, _) = extract(
        &f,
        "avg",
        &["--splits", "validation", "--layer", "block4_pool", "--pooling", "avg"],
    );
    assert_eq!(avg.feature_shape, vec![512]);
    let (cut, _) = extract(&f, "cut", &["--splits", "validation", "--layer", "features.16"]);
    assert_eq!(cut.feature_shape, vec![4, 4, 256]);
    assert_eq!(cut.layer, "block3_pool");
}

#[test]
fn unwritable_cache_falls_back_to_a_private_cache() {
    let f = fixture();
    let blocked = f.root.join("blocked");
    std::fs::write(&blocked, b"not a folder").unwrap();
    let out = f.root.join("fb");
    let result = Command::new(env!("CARGO_BIN_EXE_extract-features"))
        .args([
            "--data",
            f.data.to_str().unwrap(),
            "--weights",
            f.weights.to_str().unwrap(),
            "--splits",
            "test",
        ])
        .args([
            "--out",
            out.to_str().unwrap(),
            "--input-size",
            "32",
            "--device",
            "cpu",
            "--cache-dir",
            blocked.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(result.status.success(), "{stderr}");
    assert!(stderr.contains("private cache"), "{stderr}");
    let record: ExtractionRecord = run_folder::read_json(&out.join("features.json")).unwrap();
    let cache = Cache::open(&record.cache_dir).unwrap();
    assert!(record.cache_dir.starts_with(&out));
    let entry = ExtractionRecord::load(&cache, &record.entries[0], Path::new("f")).unwrap();
    assert_eq!(entry.shape()[0], 4);
}

#[test]
fn features_load_in_numpy() {
    let Some(python) = std::env::var_os("TRANSFER_KIT_PYTHON") else {
        eprintln!(
            "skipped: TRANSFER_KIT_PYTHON is not set (cargo xtask test sets it to the torch venv's python)"
        );
        return;
    };
    let f = fixture();
    let (record, _) = extract(&f, "np", &["--splits", "validation"]);
    let index = feature_cache::verify_split(&record.cache_dir, &record.entries[0].key).unwrap();
    let entry_dir = record.cache_dir.join(&index.chunks[0].key);
    let script = "import numpy, sys; a = numpy.load(sys.argv[1]); l = numpy.load(sys.argv[2]); print(a.dtype, a.shape, l.dtype, l.tolist())";
    let out = Command::new(python)
        .args(["-c", script])
        .arg(entry_dir.join("features.npy"))
        .arg(entry_dir.join("labels.npy"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "float32 (4, 1, 1, 512) int32 [0, 0, 1, 1]"
    );
}
