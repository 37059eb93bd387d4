//! Never running the same layers twice: several layers from one pass, and a layer computed from
//! the cached entry of a lower layer (only the layers between run). On the CPU both give features
//! bit-identical to a direct extraction of that layer alone, under the same keys, for VGG16 and
//! for Chollet's small convnet; derived entries verify, export and import like any other; a kill
//! while deriving leaves nothing that verifies as a finished entry.

use std::path::{Path, PathBuf};
use std::process::Command;

use feature_cache::{Cache, ExtractionRecord, Origin};
use models::{ConvArch, ConvBase};

/// `root/<split>/<class>/<i>.png`, small colour images whose content differs per image.
fn make_dataset(root: &Path) {
    for (split, n) in [("train", 3), ("validation", 2), ("test", 2)] {
        for (c, class) in ["a", "b"].iter().enumerate() {
            let dir = root.join(split).join(class);
            std::fs::create_dir_all(&dir).unwrap();
            for i in 0..n {
                let img = image::RgbImage::from_fn(20, 18, |x, y| {
                    image::Rgb([
                        (x * 11 + c as u32 * 90) as u8,
                        (y * 13 + i * 40) as u8,
                        ((x + y) * 7) as u8,
                    ])
                });
                img.save(dir.join(format!("{i}.png"))).unwrap();
            }
        }
    }
}

/// Random weights of `arch` from a fixed seed, in our weights format.
fn make_weights(path: &Path, arch: ConvArch) {
    tch::manual_seed(11);
    let vs = tch::nn::VarStore::new(tch::Device::Cpu);
    let base = ConvBase::with_arch(&vs.root(), arch);
    let provenance = models::weights::Provenance {
        preprocessing: models::Preprocessing::Caffe,
        source: "random, tch::manual_seed(11)".into(),
        source_sha256: "0".repeat(64),
        source_format: "test".into(),
    };
    let mut vars: Vec<(String, tch::Tensor)> = vs.variables().into_iter().collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    models::weights::save_conv_base(path, base.arch(), &vars, &provenance).unwrap();
}

struct Fixture {
    _dir: tempfile::TempDir,
    root: PathBuf,
    data: PathBuf,
    weights: PathBuf,
    input_size: &'static str,
}

fn fixture(arch: ConvArch, input_size: &'static str) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_owned();
    let data = root.join("data");
    make_dataset(&data);
    let weights = root.join("base.safetensors");
    make_weights(&weights, arch);
    Fixture { _dir: dir, root, data, weights, input_size }
}

fn command(f: &Fixture, out: &str, cache: &str, extra: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_extract-features"));
    cmd.arg("--data").arg(&f.data).arg("--weights").arg(&f.weights);
    cmd.arg("--out").arg(f.root.join(out)).arg("--cache-dir").arg(f.root.join(cache));
    cmd.args([
        "--input-size",
        f.input_size,
        "--device",
        "cpu",
        "--batch-size",
        "4",
        "--augment-passes",
        "2",
    ]);
    cmd.args(extra);
    cmd
}

/// Runs extract-features; returns its `features.json` and stderr.
fn extract(f: &Fixture, out: &str, cache: &str, extra: &[&str]) -> (ExtractionRecord, String) {
    let result = command(f, out, cache, extra).output().unwrap();
    let stderr = String::from_utf8_lossy(&result.stderr).into_owned();
    assert!(result.status.success(), "{stderr}");
    (run_folder::read_json(&f.root.join(out).join(feature_cache::EXTRACTION_FILE)).unwrap(), stderr)
}

/// The chunk entry keys of every split of `record`, in order (each split's index verified).
fn chunk_keys(record: &ExtractionRecord) -> Vec<String> {
    record
        .entries
        .iter()
        .flat_map(|e| {
            let index = feature_cache::verify_split(&record.cache_dir, &e.key).unwrap();
            index.chunks.into_iter().map(|c| c.key)
        })
        .collect()
}

/// The bytes of every chunk entry's `features.npy` and `labels.npy`, by key.
fn entry_bytes(record: &ExtractionRecord) -> Vec<(String, Vec<u8>, Vec<u8>)> {
    chunk_keys(record)
        .into_iter()
        .map(|key| {
            let dir = record.cache_dir.join(&key);
            (
                key,
                std::fs::read(dir.join("features.npy")).unwrap(),
                std::fs::read(dir.join("labels.npy")).unwrap(),
            )
        })
        .collect()
}

/// Extracts `lower` into a cache, then `upper` into the same cache (derived) and into a fresh
/// one with --derive false (direct): same keys, same bytes; the derived entries say where they
/// came from.
fn check_derived_equals_direct(f: &Fixture, lower: &str, upper: &str, extra: &[&str]) {
    let (low, _) = extract(f, "low", "shared", &[&["--layer", lower], extra].concat());
    let (derived, stderr) = extract(f, "derived", "shared", &[&["--layer", upper], extra].concat());
    assert!(stderr.contains("0 computed from images, 5 from a lower layer"), "{stderr}");
    let (direct, stderr) =
        extract(f, "direct", "fresh", &[&["--layer", upper, "--derive", "false"], extra].concat());
    assert!(stderr.contains("5 computed from images, 0 from a lower layer"), "{stderr}");
    assert_eq!(
        entry_bytes(&derived),
        entry_bytes(&direct),
        "{lower} -> {upper}: derived and direct features differ"
    );
    let cache = Cache::open(&derived.cache_dir).unwrap();
    for (entry, source) in derived.entries.iter().zip(&low.entries) {
        assert_eq!(
            entry.origin,
            Some(Origin::Derived { from_key: source.key.clone(), from_layer: low.layer.clone() })
        );
    }
    for (chunk, source) in chunk_keys(&derived).iter().zip(chunk_keys(&low)) {
        let manifest = feature_cache::verify(&cache.entry_dir(chunk)).unwrap();
        assert_eq!(manifest.derived_from.as_deref(), Some(source.as_str()));
    }
    assert!(direct.entries.iter().all(|e| e.origin == Some(Origin::Images)));
}

#[test]
fn vgg16_block5_pool_derived_from_block4_pool_is_bit_identical() {
    let f = fixture(ConvArch::vgg16(), "32");
    check_derived_equals_direct(&f, "block4_pool", "block5_pool", &[]);
}

#[test]
fn pooled_features_derive_from_unpooled_lower_ones() {
    let f = fixture(ConvArch::vgg16(), "32");
    check_derived_equals_direct(&f, "block3_pool", "block5_conv2", &["--pooling", "none"]);
    // A pooled lower entry is no source: only an unpooled one is.
    let (_, stderr) = extract(&f, "avg", "shared", &["--layer", "block5_pool", "--pooling", "avg"]);
    assert!(stderr.contains("0 computed from images, 5 from a lower layer"), "{stderr}");
    let (_, stderr) = extract(
        &f,
        "avg-direct",
        "fresh-avg",
        &["--layer", "block5_pool", "--pooling", "avg", "--derive", "false"],
    );
    assert!(stderr.contains("5 computed from images"), "{stderr}");
    let read = |out: &str| -> ExtractionRecord {
        run_folder::read_json(&f.root.join(out).join("features.json")).unwrap()
    };
    assert_eq!(entry_bytes(&read("avg")), entry_bytes(&read("avg-direct")));
}

#[test]
fn small_convnet_derives_like_vgg16() {
    let f = fixture(ConvArch::small_convnet(), "48");
    check_derived_equals_direct(&f, "max_pooling2d_2", "max_pooling2d_4", &[]);
}

#[test]
fn several_layers_come_from_one_pass_each_bit_identical_to_alone() {
    let f = fixture(ConvArch::vgg16(), "32");
    let (first, stderr) = extract(&f, "both", "both", &["--layer", "block4_pool,block5_pool"]);
    assert!(stderr.contains("10 chunk entries (0 from cache, 10 computed from images"), "{stderr}");
    assert_eq!(first.layer, "block4_pool", "features.json holds the first layer named");
    let per_layer = |layer: &str| -> ExtractionRecord {
        run_folder::read_json(&f.root.join("both").join(format!("features-{layer}.json"))).unwrap()
    };
    assert_eq!(per_layer("block4_pool"), first);
    let block5 = per_layer("block5_pool");
    assert_eq!(block5.feature_shape, [1, 1, 512]);
    let stage = run_folder::StageRecord::read(&f.root.join("both")).unwrap();
    assert!(stage.damaged_output(&f.root.join("both")).is_none());
    assert!(stage.outputs.contains_key("features-block5_pool.json"));
    // Each layer equals its extraction alone, in a fresh cache.
    for (layer, record) in [("block4_pool", &first), ("block5_pool", &block5)] {
        let (alone, _) = extract(
            &f,
            &format!("alone-{layer}"),
            &format!("alone-{layer}"),
            &["--layer", layer, "--derive", "false"],
        );
        assert_eq!(entry_bytes(record), entry_bytes(&alone), "{layer}");
    }
    // Rerun: all found, nothing run.
    let (_, stderr) = extract(&f, "again", "both", &["--layer", "block5_pool,block4_pool"]);
    assert!(
        stderr.contains(
            "10 chunk entries (10 from cache, 0 computed from images, 0 from a lower layer"
        ),
        "{stderr}"
    );
    let result =
        command(&f, "twice", "both", &["--layer", "block5_pool,features.30"]).output().unwrap();
    assert!(!result.status.success());
    assert!(String::from_utf8_lossy(&result.stderr).contains("--layer names block5_pool twice"));
}

#[test]
fn derived_entries_verify_export_and_import_like_any_other() {
    let f = fixture(ConvArch::small_convnet(), "48");
    extract(&f, "low", "shared", &["--layer", "max_pooling2d_3"]);
    let (derived, _) = extract(&f, "up", "shared", &["--layer", "max_pooling2d_4"]);
    let cache = Cache::open(&derived.cache_dir).unwrap();
    let statuses = cache.verify_all().unwrap();
    assert_eq!(statuses.len(), 10);
    assert!(statuses.iter().all(|s| s.result.is_ok()), "{statuses:?}");
    let keys = chunk_keys(&derived);
    let bundle = f.root.join("bundle.tar");
    feature_cache::export(&cache, &keys, &bundle).unwrap();
    let other = Cache::open(f.root.join("other")).unwrap();
    let mut imported = feature_cache::import(&other, &bundle).unwrap();
    imported.sort();
    let mut expected = keys.clone();
    expected.sort();
    assert_eq!(imported, expected);
    for key in &keys {
        assert_eq!(
            std::fs::read(other.entry_dir(key).join("features.npy")).unwrap(),
            std::fs::read(cache.entry_dir(key).join("features.npy")).unwrap()
        );
    }
}

/// kill -9 at staggered moments of a derivation: whatever is left under a key verifies, and a
/// rerun completes every entry with the bytes of an uninterrupted run.
#[test]
fn a_kill_while_deriving_leaves_no_entry_that_passes_for_finished() {
    let f = fixture(ConvArch::vgg16(), "32");
    extract(&f, "low", "shared", &["--layer", "block3_pool"]);
    let (reference, _) =
        extract(&f, "reference", "reference", &["--layer", "block5_pool", "--derive", "false"]);
    let mut interrupted = 0;
    for delay_ms in [0u64, 40, 80, 120, 160, 200, 260, 320] {
        let mut child = command(&f, "killed", "shared", &["--layer", "block5_pool"])
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(delay_ms));
        let _ = child.kill();
        let _ = child.wait();
        let cache = Cache::open(f.root.join("shared")).unwrap();
        for status in cache.verify_all().unwrap() {
            assert!(
                status.result.is_ok(),
                "after a kill at {delay_ms} ms: {} does not verify: {:?}",
                status.key,
                status.result
            );
        }
        let chunks = chunk_keys(&reference);
        interrupted += usize::from(chunks.iter().any(|k| !cache.entry_dir(k).exists()));
        for key in &chunks {
            let features = cache.entry_dir(key).join("features.npy");
            if features.exists() {
                assert_eq!(
                    std::fs::read(&features).unwrap(),
                    std::fs::read(reference.cache_dir.join(key).join("features.npy")).unwrap()
                );
            }
        }
    }
    assert!(
        interrupted > 0,
        "no kill landed before the derivation finished: the test proves nothing"
    );
    let (finished, _) = extract(&f, "finished", "shared", &["--layer", "block5_pool"]);
    assert_eq!(entry_bytes(&finished), entry_bytes(&reference));
}

/// A bad image skipped with --skip-bad-images: the derived entry batches its rows as the direct
/// pass batches its files (a batch loses the skipped image, the next ones do not shift), so the
/// bytes still match; and a run that does not skip bad images neither derives from such an
/// entry nor succeeds, exactly as a direct run stops at the bad file.
#[test]
fn skipped_images_keep_derived_entries_identical_and_the_policy_holds() {
    let f = fixture(ConvArch::vgg16(), "32");
    std::fs::write(f.data.join("validation/a/0b.png"), b"not a png").unwrap();
    let skip = ["--splits", "validation", "--skip-bad-images", "--max-bad-fraction", "0.5"];
    extract(&f, "low", "shared", &[&["--layer", "block4_pool"], &skip[..]].concat());
    let (derived, stderr) =
        extract(&f, "up", "shared", &[&["--layer", "block5_pool"], &skip[..]].concat());
    assert!(stderr.contains("0 computed from images, 1 from a lower layer"), "{stderr}");
    let (direct, _) = extract(
        &f,
        "direct",
        "fresh",
        &[&["--layer", "block5_pool", "--derive", "false"], &skip[..]].concat(),
    );
    assert_eq!(entry_bytes(&derived), entry_bytes(&direct));
    let stage = run_folder::StageRecord::read(&f.root.join("up")).unwrap();
    assert_eq!(
        stage.summary["skipped"].as_array().map(Vec::len),
        Some(1),
        "the skipped image is reported: {:?}",
        stage.summary
    );

    let result =
        command(&f, "strict", "shared", &["--layer", "block5_pool", "--splits", "validation"])
            .output()
            .unwrap();
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(!result.status.success(), "{stderr}");
    assert!(stderr.contains("0b.png"), "names the bad file: {stderr}");
}
