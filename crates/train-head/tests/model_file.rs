//! A head trained on cached features makes a model file that classifies images on its own: real
//! features of a seeded random small convnet are cached, train-head runs with `--weights`, the
//! weights file is deleted, and the model file's probabilities on the images equal the head's on
//! the cached features. CPU, one libtorch thread, a few seconds.

use std::path::Path;
use std::process::Command;

use feature_cache::{
    Cache, DatasetKey, EntryRef, ExtractionRecord, FORMAT_VERSION, FeatureKey, FileKey, SplitPlan,
    write_index,
};
use models::weights::{Provenance, save_conv_base};
use models::{Classifier, ConvArch, DenseHead, Pooling, Preprocessing, tensor_file};
use tch::{Device, Kind, Tensor, nn};

const LAYER: &str = "max_pooling2d_2";
const SIZE: i64 = 48;
const CLASSES: [&str; 2] = ["cat", "dog"];

/// Seeded random images `[n, SIZE, SIZE, 3]` (uint8).
fn images(n: i64, seed: i64) -> Tensor {
    tch::manual_seed(seed);
    Tensor::randint(256, [n, SIZE, SIZE, 3], (Kind::Int64, Device::Cpu)).to_kind(Kind::Uint8)
}

/// Caches the features of `pixels` at [`LAYER`] (channels-last rows, as extract-features stores
/// them) under the key of `weights`; returns the entry and the rows as a tensor.
fn cache_split(
    cache: &Cache,
    weights: &models::LoadedWeights,
    split: &str,
    pixels: &Tensor,
) -> (EntryRef, Tensor) {
    let n = pixels.size()[0];
    let features = tch::no_grad(|| weights.features(pixels, LAYER, Pooling::None))
        .unwrap()
        .permute([0, 2, 3, 1])
        .contiguous();
    let shape: Vec<u64> = features.size()[1..].iter().map(|&d| d as u64).collect();
    let key = FeatureKey {
        format_version: FORMAT_VERSION,
        weights_sha256: weights.meta.digest.clone(),
        architecture: weights.meta.architecture.clone(),
        layer: LAYER.into(),
        input_size: [SIZE as u32, SIZE as u32],
        resize: "nearest".into(),
        preprocessing: "rescale".into(),
        pooling: "none".into(),
        precision: "f32".into(),
        augmentation: None,
        dataset: DatasetKey {
            split: split.into(),
            classes: CLASSES.iter().map(|c| (*c).to_owned()).collect(),
            files: (0..n)
                .map(|i| FileKey {
                    path: format!("{split}/{i}.png"),
                    label: (i % 2) as u32,
                    sha256: "00".repeat(32),
                })
                .collect(),
        },
    };
    // Chunk entries and the split index listing them, as extract-features stores a split.
    let plan = SplitPlan::new(&key);
    let rows = features.view([n, -1]);
    let mut counts = Vec::new();
    for chunk in &plan.chunks {
        let len = chunk.range.len() as u64;
        let mut writer = cache.writer(chunk.key.clone(), "test", len, &shape).unwrap();
        for i in chunk.range.clone() {
            let row = Vec::<f32>::try_from(rows.get(i as i64)).unwrap();
            writer.append(&row, &[(i % 2) as i32]).unwrap();
        }
        writer.finish().unwrap();
        counts.push(len);
    }
    write_index(cache.root(), &plan.index(&counts, "test")).unwrap();
    let entry = EntryRef {
        split: split.into(),
        pass: None,
        key: plan.index_key.clone(),
        rows: n as u64,
        cache_dir: None,
        origin: None,
    };
    (entry, features)
}

#[test]
fn a_head_on_cached_features_makes_a_self_contained_model_file() {
    let dir = tempfile::tempdir().unwrap();
    let arch = ConvArch::small_convnet();
    tch::manual_seed(7);
    let vs = nn::VarStore::new(Device::Cpu);
    let _ = models::ConvBase::with_arch(&vs.root(), arch.clone());
    let weights_path = dir.path().join("base.safetensors");
    let provenance = Provenance {
        preprocessing: Preprocessing::Rescale,
        source: "test".into(),
        source_sha256: "0".repeat(64),
        source_format: "tch".into(),
    };
    save_conv_base(&weights_path, &arch, &tensor_file::named_variables(&vs), &provenance).unwrap();
    let weights = models::load_weights(&weights_path, Device::Cpu).unwrap();

    let cache = Cache::open(dir.path().join("cache")).unwrap();
    let test_pixels = images(6, 3);
    let (train, _) = cache_split(&cache, &weights, "train", &images(12, 1));
    let (validation, _) = cache_split(&cache, &weights, "validation", &images(6, 2));
    let (test, test_features) = cache_split(&cache, &weights, "test", &test_pixels);
    let record = ExtractionRecord {
        cache_dir: dir.path().join("cache"),
        classes: CLASSES.iter().map(|c| (*c).to_owned()).collect(),
        feature_shape: test_features.size()[1..].iter().map(|&d| d as u64).collect(),
        layer: LAYER.into(),
        weights_sha256: weights.meta.digest.clone(),
        entries: vec![train, validation, test],
    };
    let features_json = dir.path().join("features.json");
    run_folder::write_json(&features_json, &record).unwrap();

    let out = dir.path().join("head");
    let run = |extra: &[&Path]| {
        Command::new(env!("CARGO_BIN_EXE_train-head"))
            .args(["--epochs", "2", "--hidden", "8", "--device", "cpu", "--features"])
            .arg(&features_json)
            .arg("--out")
            .arg(&out)
            .args(extra.iter().flat_map(|p| [Path::new("--weights"), p]))
            .env("OMP_NUM_THREADS", "1")
            .output()
            .unwrap()
    };
    // Weights other than those the features came from are refused, naming both digests.
    let other = dir.path().join("other.safetensors");
    tch::manual_seed(8);
    let vs2 = nn::VarStore::new(Device::Cpu);
    let _ = models::ConvBase::with_arch(&vs2.root(), arch.clone());
    let other_meta =
        save_conv_base(&other, &arch, &tensor_file::named_variables(&vs2), &provenance).unwrap();
    let refused = run(&[&other]);
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{err}");
    assert!(err.contains(&other_meta.digest) && err.contains(&weights.meta.digest), "{err}");
    assert!(!out.join("history.csv").exists(), "refused before any training");

    let result = run(&[&weights_path]);
    assert!(result.status.success(), "{}", String::from_utf8_lossy(&result.stderr));
    let record = run_folder::StageRecord::read(&out).unwrap();
    assert!(record.outputs.contains_key("model.safetensors"), "{:?}", record.outputs.keys());

    // Nothing but the model file from here on.
    std::fs::remove_file(&weights_path).unwrap();
    let model =
        Classifier::load(&out.join("model.safetensors"), Device::Cpu, None::<&str>).unwrap();
    let header = model.header();
    assert_eq!(header.stage, "train-head");
    assert_eq!(header.cut, LAYER);
    assert_eq!(header.class_names, CLASSES);
    assert_eq!(header.base_weights_sha256, weights.meta.digest);
    assert_eq!(header.input_size, [SIZE, SIZE]);
    let from_images = model.predict_proba(&test_pixels).unwrap();

    // The trained head on the cached features, the way train-head evaluated it.
    let head_file = tensor_file::load(&out.join("head.safetensors")).unwrap();
    let head_vs = nn::VarStore::new(Device::Cpu);
    let head = DenseHead::new(&head_vs.root(), header.head.clone());
    tensor_file::copy_into(&head_vs, &head_file.tensors, &out.join("head.safetensors")).unwrap();
    let logits = tch::no_grad(|| head.forward_t(&test_features, false)).unwrap();
    let from_features = models::head::probabilities(&logits).unwrap();
    let diff = (&from_images - &from_features).abs().max().double_value(&[]);
    assert!(diff < 1e-5, "the model file's probabilities differ by {diff}");
}
