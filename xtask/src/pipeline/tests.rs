//! Tests of the pipeline across its modules: plans (pinned by snapshots of the argument lists
//! the shipped configs resolve to, taken before the pipeline was split into modules and kept
//! unchanged since), and stage states against those plans.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::PipelineArgs;
use super::config::{self, Config, FineTuneMode, Profile};
use super::layers::{self, Derived, Tables};
use super::plan::{Step, plan, pretrained_base, tree_fingerprint};
use super::state::{PENDING, Pending, Status, status};
use crate::stage_args::flag;

/// What `layers::check` derives for `config` from tables `vgg16-layers --json` printed: VGG16
/// at 64, or the small convnet at 48 for a run that transfers the base it pretrains.
fn derived(config: &Config) -> Derived {
    let small = || layers::fixture_table("small-convnet-48.json");
    let own_base = config.pretrain.enabled && config.pretrain.use_as_base;
    let tables = Tables {
        base: if own_base { small() } else { layers::fixture_table("vgg16-64.json") },
        pretrain: config.pretrain.enabled.then(small),
        scratch: config.scratch.enabled.then(small),
    };
    let settings = config::Settings { config: config.clone(), file: "test.toml".into() };
    layers::check(&settings, &tables).unwrap()
}

/// The plan of `config`, its derived settings made as a run makes them.
fn planned(config: &Config, run: &Path, data: &Path, weights: &Path) -> Vec<Step> {
    plan(config, &derived(config), run, data, weights).unwrap()
}

/// A dataset folder and a weights file, enough for `plan`.
fn inputs() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(data.join("train/a")).unwrap();
    std::fs::write(data.join("train/a/x.png"), b"1").unwrap();
    let weights = dir.path().join("w.safetensors");
    std::fs::write(&weights, b"w").unwrap();
    (dir, data, weights)
}

fn names(steps: &[Step]) -> Vec<&str> {
    steps.iter().map(|s| s.name).collect()
}

fn step<'a>(steps: &'a [Step], name: &str) -> &'a Step {
    steps.iter().find(|s| s.name == name).unwrap_or_else(|| panic!("no {name} step"))
}

fn arg<'a>(step: &'a Step, flag: &str) -> Option<&'a str> {
    step.args.iter().position(|a| a == flag).map(|i| step.args[i + 1].as_str())
}

#[test]
fn default_plan_fine_tunes_from_the_head_on_the_cached_trunk() {
    let (dir, data, weights) = inputs();
    let run = dir.path().join("run");
    let steps = planned(&Config::default(), &run, &data, &weights);
    assert_eq!(
        names(&steps),
        [
            "dataset",
            "extract-trunk",
            "extract",
            "head",
            "head-augmented",
            "fine-tune",
            "scratch",
            "evaluate"
        ]
    );
    // Before any training stage ran, the evaluation names the last of them.
    let evaluate = step(&steps, "evaluate");
    assert_eq!(
        arg(evaluate, flag::MODEL).map(PathBuf::from),
        Some(run.join("scratch/model.safetensors"))
    );
    assert_eq!(evaluate.inputs["scratch/model.safetensors"], "absent");
    let trunk = step(&steps, "extract-trunk");
    assert_eq!(arg(trunk, flag::LAYER), Some("block4_pool"));
    assert_eq!(arg(trunk, flag::AUGMENT_PASSES), Some("5"));
    // The trunk's passes are the head's passes at a lower layer (same seed, at least as many),
    // so extract derives all of its entries from them.
    let extract = step(&steps, "extract");
    assert_eq!(arg(trunk, flag::AUGMENT_SEED), arg(extract, flag::AUGMENT_SEED));
    assert!(
        arg(trunk, flag::AUGMENT_PASSES).unwrap().parse::<u32>().unwrap()
            >= arg(extract, flag::AUGMENT_PASSES).unwrap().parse().unwrap()
    );
    assert_eq!(arg(trunk, flag::OUT).map(PathBuf::from), Some(run.join("extract-trunk")));
    let fine_tune = step(&steps, "fine-tune");
    assert_eq!(arg(fine_tune, flag::INPUT_SIZE), arg(extract, flag::INPUT_SIZE));
    assert_eq!(
        arg(fine_tune, flag::TRUNK_CACHE).map(PathBuf::from),
        Some(run.join("extract-trunk/features.json"))
    );
    assert_eq!(
        arg(fine_tune, flag::HEAD).map(PathBuf::from),
        Some(run.join("head/head.safetensors"))
    );
    assert_eq!(fine_tune.inputs["head/head.safetensors"], "absent");
    assert!(fine_tune.resume_args.is_some() && extract.resume_args.is_none());
    let dataset = step(&steps, "dataset");
    assert_eq!(dataset.args[..2], ["check".to_owned(), data.display().to_string()]);
    assert_eq!(
        dataset.args.iter().filter(|a| *a == flag::SPLIT).count(),
        3,
        "train, validation and test are required"
    );
    assert_eq!(dataset.inputs["dataset"], extract.inputs["dataset"], "one identity of the data");

    // A trained head changes the fine-tune invocation (it becomes stale), not the extraction's.
    std::fs::create_dir_all(run.join("head")).unwrap();
    std::fs::write(run.join("head/head.safetensors"), b"h").unwrap();
    let again = planned(&Config::default(), &run, &data, &weights);
    assert_ne!(step(&again, "fine-tune").invocation(), fine_tune.invocation());
    assert_eq!(step(&again, "extract").invocation(), extract.invocation());
}

#[test]
fn the_best_model_by_validation_accuracy_is_evaluated() {
    let (dir, data, weights) = inputs();
    let run = dir.path().join("run");
    let metrics = |stage: &str, val_acc: f64| {
        let m = run_folder::StageMetrics {
            validation: run_folder::SplitMetrics {
                loss: 0.5,
                acc: val_acc,
                images: 10,
                source: None,
                per_class: Vec::new(),
            },
            test: None,
            kept: run_folder::KeptEpoch { epoch: 1, of: 1, val_loss: 0.5, val_acc },
            median_epoch_seconds: 1.0,
        };
        m.write(&run.join(stage)).unwrap();
        std::fs::write(run.join(stage).join("model.safetensors"), stage).unwrap();
    };
    metrics("head", 0.8);
    metrics("fine-tune", 0.9);
    metrics("scratch", 0.9);
    let steps = planned(&Config::default(), &run, &data, &weights);
    let evaluate = step(&steps, "evaluate");
    // The highest; of equals, the first in plan order.
    let model = run.join("fine-tune/model.safetensors");
    assert_eq!(arg(evaluate, flag::MODEL).map(PathBuf::from), Some(model.clone()));
    assert_eq!(
        evaluate.inputs["fine-tune/model.safetensors"],
        run_folder::file_sha256(&model).unwrap().sha256
    );
    assert_eq!(arg(evaluate, flag::SPLIT), Some("test"));
    assert!(steps.iter().all(|s| s.name != "explain"), "no test split, nothing to explain");

    // Grad-CAM of the same model on the first two test images of each class, in dataset order.
    for file in ["a/y.png", "a/x.png", "a/z.png", "b/w.png", "b/.hidden.png", "b/notes.txt"] {
        let path = data.join("test").join(file);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, b"1").unwrap();
    }
    let steps = planned(&Config::default(), &run, &data, &weights);
    let explain = step(&steps, "explain");
    assert_eq!(arg(explain, flag::MODEL).map(PathBuf::from), Some(model));
    let images: Vec<&String> = explain.args.iter().filter(|a| a.ends_with(".png")).collect();
    let test = data.join("test");
    let expected: Vec<String> = ["a/x.png", "a/y.png", "b/w.png"]
        .iter()
        .map(|f| test.join(f).display().to_string())
        .collect();
    assert_eq!(images, expected.iter().collect::<Vec<_>>());
    assert_eq!(explain.inputs, step(&steps, "evaluate").inputs);
}

#[test]
fn every_planned_binary_is_built_by_the_release_build() {
    let (dir, data, weights) = inputs();
    std::fs::create_dir_all(data.join("test/a")).unwrap();
    std::fs::write(data.join("test/a/x.png"), b"1").unwrap();
    let run = dir.path().join("run");
    let mut homework = config::read(&crate::workspace_root().join("homework.toml")).unwrap();
    homework.pretrain.data = data.clone();
    for config in [Config::default(), homework] {
        for step in planned(&config, &run, &data, &weights) {
            // Each stage binary is its package's (the dataset crate's is `dataset`).
            assert!(
                crate::RELEASE_PACKAGES.contains(&step.binary),
                "{} runs {}, which `cargo xtask pipeline` does not build",
                step.name,
                step.binary
            );
        }
    }
}

#[test]
fn plain_mode_and_head_phase_need_no_trunk_extraction() {
    let (dir, data, weights) = inputs();
    let mut config = Config::default();
    config.fine_tune.mode = FineTuneMode::Plain;
    config.fine_tune.from_head = false;
    let steps = planned(&config, &dir.path().join("run"), &data, &weights);
    assert_eq!(
        names(&steps),
        ["dataset", "extract", "head", "head-augmented", "fine-tune", "scratch", "evaluate"]
    );
    assert_eq!(arg(step(&steps, "fine-tune"), flag::TRUNK_CACHE), None);
    assert_eq!(arg(step(&steps, "fine-tune"), flag::HEAD_EPOCHS), Some("30"));
    config.fine_tune.enabled = false;
    assert_eq!(
        names(&planned(&config, &dir.path().join("run"), &data, &weights)),
        ["dataset", "extract", "head", "head-augmented", "scratch", "evaluate"]
    );
}

#[test]
fn homework_pretrains_first_and_transfers_that_base() {
    let (dir, data, _) = inputs();
    let run = dir.path().join("run");
    let mut config =
        config::read(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../homework.toml")).unwrap();
    assert!(config.pretrain.enabled && config.pretrain.use_as_base);
    assert!(config.pretrain.data.ends_with("mnist-small"));
    // ImageNet VGG16 on the same pair, run first, is what the report sets beside it.
    let compare = config.compare.as_ref().expect("homework.toml has [compare]");
    assert_eq!(
        (compare.config.as_path(), compare.name.as_str()),
        (Path::new("pipeline.toml"), "homework-vgg16")
    );
    let digits = dir.path().join("digits");
    std::fs::create_dir_all(digits.join("train/0")).unwrap();
    config.pretrain.data = digits.clone();
    let base = pretrained_base(&run);
    let steps = planned(&config, &run, &data, &base);
    assert_eq!(names(&steps)[..3], ["dataset", "pretrain", "extract"]);
    assert_eq!(steps.last().map(|s| s.name), Some("evaluate"));
    let pretrain = step(&steps, "pretrain");
    let extract = step(&steps, "extract");
    assert_eq!(arg(pretrain, flag::DATA).map(PathBuf::from), Some(digits));
    assert_eq!(
        arg(pretrain, flag::INPUT_SIZE),
        arg(extract, flag::INPUT_SIZE),
        "one input size for the whole run"
    );
    assert_eq!(arg(extract, flag::WEIGHTS).map(PathBuf::from), Some(base.clone()));
    assert_eq!(extract.inputs["weights"], "absent", "digest of the base once pretrain wrote it");
    let scratch = steps.last().unwrap();
    assert_eq!(arg(scratch, flag::DATA).map(PathBuf::from), Some(data.clone()));

    // The base appearing (pretrain ran) makes extraction's invocation change.
    std::fs::create_dir_all(base.parent().unwrap()).unwrap();
    std::fs::write(&base, b"base").unwrap();
    let again = planned(&config, &run, &data, &base);
    let extract_again = step(&again, "extract");
    assert_ne!(extract_again.invocation(), extract.invocation());
}

#[test]
fn interrupted_stage_resumes_only_with_the_same_invocation() {
    let (dir, data, weights) = inputs();
    let run = dir.path().join("run");
    let steps = planned(&Config::default(), &run, &data, &weights);
    let (extract, fine_tune) = (step(&steps, "extract"), step(&steps, "fine-tune"));
    let stage = run.join("fine-tune");
    assert_eq!(status(fine_tune, &stage), Status::Missing);
    std::fs::create_dir_all(&stage).unwrap();
    let pending =
        |step: &Step| Pending { invocation: step.invocation(), binary_sha256: "b".into() };
    run_folder::write_json(&stage.join(PENDING), &pending(fine_tune)).unwrap();
    assert_eq!(status(fine_tune, &stage), Status::Interrupted { resumes: true });
    // Other settings since the interruption: its checkpoint must not be continued.
    let mut config = Config::default();
    config.fine_tune.lr = 1e-4;
    let changed = planned(&config, &run, &data, &weights);
    assert_eq!(status(step(&changed, "fine-tune"), &stage), Status::Missing);
    std::fs::create_dir_all(run.join("extract")).unwrap();
    run_folder::write_json(&run.join("extract").join(PENDING), &pending(extract)).unwrap();
    assert_eq!(status(extract, &run.join("extract")), Status::Interrupted { resumes: false });
}

/// A split of `files` files (`[2]` features a row) written as an extraction writes it: every
/// chunk of its plan by the cache's own writer, then its split index; returns the record's
/// entry and the chunk keys in order.
fn cache_split(root: &Path, split: &str, files: usize) -> (feature_cache::EntryRef, Vec<String>) {
    let key = feature_cache::FeatureKey {
        format_version: feature_cache::FORMAT_VERSION,
        weights_sha256: "w".repeat(64),
        architecture: "vgg16_conv_base".into(),
        layer: "block5_pool".into(),
        input_size: [64, 64],
        resize: "nearest".into(),
        preprocessing: "caffe".into(),
        pooling: "none".into(),
        precision: "f32".into(),
        augmentation: None,
        dataset: feature_cache::DatasetKey {
            split: split.into(),
            classes: vec!["a".into()],
            files: (0..files)
                .map(|i| feature_cache::FileKey {
                    path: format!("a/{i:04}.png"),
                    label: 0,
                    sha256: format!("{i:064x}"),
                })
                .collect(),
        },
    };
    let cache = feature_cache::Cache::open(root).unwrap();
    let plan = feature_cache::SplitPlan::new(&key);
    let mut rows = Vec::new();
    for chunk in &plan.chunks {
        let n = chunk.range.len() as u64;
        let mut writer = cache.writer(chunk.key.clone(), "test", n, &[2]).unwrap();
        for i in chunk.range.clone() {
            writer.append(&[i as f32, 2.0], &[0]).unwrap();
        }
        writer.finish().unwrap();
        rows.push(n);
    }
    feature_cache::write_index(root, &plan.index(&rows, "test")).unwrap();
    let entry = feature_cache::EntryRef {
        split: split.into(),
        pass: None,
        key: plan.index_key.clone(),
        rows: files as u64,
        cache_dir: None,
        origin: None,
    };
    (entry, plan.chunks.iter().map(|c| c.key.digest()).collect())
}

/// A finished extraction stage in `stage` (its record, stage record and invocation) whose
/// `features.json` lists `entries` of the cache `cache`.
fn finished_extraction(
    stage: &Path,
    extract: &Step,
    cache: &Path,
    entries: Vec<feature_cache::EntryRef>,
) {
    let record = feature_cache::ExtractionRecord {
        cache_dir: cache.to_owned(),
        classes: vec!["a".into()],
        feature_shape: vec![2],
        layer: "block5_pool".into(),
        weights_sha256: "w".repeat(64),
        entries,
    };
    run_folder::write_json(&stage.join(feature_cache::EXTRACTION_FILE), &record).unwrap();
    run_folder::StageRecord::write(
        stage,
        "extract-features",
        "c".into(),
        BTreeMap::new(),
        &[feature_cache::EXTRACTION_FILE],
        1.0,
        serde_json::json!({}),
    )
    .unwrap();
    run_folder::write_json(&stage.join("pipeline.json"), &extract.invocation()).unwrap();
}

/// An extraction is done only while every split it recorded verifies: its index and every
/// chunk the index lists.
#[test]
fn extraction_is_done_while_its_splits_verify() {
    let (dir, data, weights) = inputs();
    let run = dir.path().join("run");
    let steps = planned(&Config::default(), &run, &data, &weights);
    let extract = step(&steps, "extract");
    let (stage, cache) = (run.join("extract"), dir.path().join("cache"));
    let (entry, chunks) = cache_split(&cache, "train", 300);
    assert!(chunks.len() >= 2, "{chunks:?}");
    finished_extraction(&stage, extract, &cache, vec![entry.clone()]);
    assert_eq!(status(extract, &stage), Status::Done);

    let labels = cache.join(&chunks[1]).join(feature_cache::LABELS);
    let good = std::fs::read(&labels).unwrap();
    let mut bytes = good.clone();
    *bytes.last_mut().unwrap() ^= 1;
    std::fs::write(&labels, &bytes).unwrap();
    let Status::Stale(why) = status(extract, &stage) else { panic!("a damaged chunk is stale") };
    assert!(why.starts_with(&format!("split index {} (train) is damaged", entry.key)), "{why}");
    assert!(why.contains(&chunks[1]), "{why}");
    std::fs::write(&labels, &good).unwrap();
    assert_eq!(status(extract, &stage), Status::Done);

    // A tampered index (another row count) is damage too.
    let index = feature_cache::index_path(&cache, &entry.key);
    let original = std::fs::read(&index).unwrap();
    let mut json: serde_json::Value = serde_json::from_slice(&original).unwrap();
    json["chunks"][0]["rows"] = 1.into();
    std::fs::write(&index, serde_json::to_vec(&json).unwrap()).unwrap();
    let Status::Stale(why) = status(extract, &stage) else { panic!("a tampered index is stale") };
    assert!(why.starts_with(&format!("split index {} (train) is damaged", entry.key)), "{why}");
    std::fs::write(&index, &original).unwrap();

    std::fs::remove_dir_all(cache.join(&chunks[0])).unwrap();
    assert_eq!(
        status(extract, &stage),
        Status::Stale(format!(
            "split index {} (train) is gone: its chunk {} is missing",
            entry.key,
            cache.join(&chunks[0]).display()
        ))
    );
    std::fs::remove_file(&index).unwrap();
    assert_eq!(
        status(extract, &stage),
        Status::Stale(format!("split index {} (train) is gone", entry.key))
    );
}

/// A split the run kept in its private cache, with a chunk it found in the shared one, is done
/// while both hold what the index lists.
#[test]
fn a_private_split_is_verified_through_both_caches() {
    let (dir, data, weights) = inputs();
    let run = dir.path().join("run");
    let steps = planned(&Config::default(), &run, &data, &weights);
    let extract = step(&steps, "extract");
    let (stage, shared) = (run.join("extract"), dir.path().join("cache"));
    let private = stage.join("cache");
    let (mut entry, chunks) = cache_split(&private, "train", 300);
    assert!(chunks.len() >= 2, "{chunks:?}");
    std::fs::create_dir_all(&shared).unwrap();
    std::fs::rename(private.join(&chunks[0]), shared.join(&chunks[0])).unwrap();
    entry.cache_dir = Some(private.clone());
    finished_extraction(&stage, extract, &shared, vec![entry.clone()]);
    assert_eq!(status(extract, &stage), Status::Done);
    std::fs::remove_dir_all(shared.join(&chunks[0])).unwrap();
    let Status::Stale(why) = status(extract, &stage) else { panic!("a missing chunk is stale") };
    assert!(why.contains("is gone") && why.contains(&chunks[0]), "{why}");
}

#[test]
fn finished_stage_is_done_until_an_output_or_input_changes() {
    let (dir, data, weights) = inputs();
    let run = dir.path().join("run");
    let steps = planned(&Config::default(), &run, &data, &weights);
    let head = step(&steps, "head");
    let stage = run.join("head");
    std::fs::create_dir_all(&stage).unwrap();
    std::fs::write(stage.join("head.safetensors"), b"h").unwrap();
    run_folder::StageRecord::write(
        &stage,
        "train-head",
        "c".into(),
        BTreeMap::new(),
        &["head.safetensors"],
        1.0,
        serde_json::json!({}),
    )
    .unwrap();
    assert_eq!(status(head, &stage), Status::Stale("no record of how it was run".into()));
    run_folder::write_json(&stage.join("pipeline.json"), &head.invocation()).unwrap();
    assert_eq!(status(head, &stage), Status::Done);
    std::fs::write(stage.join("head.safetensors"), b"H").unwrap();
    assert!(matches!(status(head, &stage), Status::Corrupt(_)));
    std::fs::write(stage.join("head.safetensors"), b"h").unwrap();
    std::fs::create_dir_all(run.join("extract")).unwrap();
    std::fs::write(run.join("extract/features.json"), b"{}").unwrap();
    let replanned = planned(&Config::default(), &run, &data, &weights);
    assert_eq!(
        status(step(&replanned, "head"), &stage),
        Status::Stale("input extract/features.json changed".into())
    );
}

#[test]
fn fingerprint_sees_changes() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("a")).unwrap();
    std::fs::write(dir.path().join("a/x.png"), b"1").unwrap();
    let before = tree_fingerprint(dir.path()).unwrap();
    assert_eq!(before, tree_fingerprint(dir.path()).unwrap());
    std::fs::write(dir.path().join("a/x.png"), b"2").unwrap();
    assert_ne!(before, tree_fingerprint(dir.path()).unwrap(), "same size, other content");
    std::fs::write(dir.path().join("a/x.png"), b"1").unwrap();
    assert_eq!(before, tree_fingerprint(dir.path()).unwrap(), "rewritten with the same content");
    std::fs::rename(dir.path().join("a/x.png"), dir.path().join("a/y.png")).unwrap();
    assert_ne!(before, tree_fingerprint(dir.path()).unwrap(), "renamed");
}

// Snapshots of the stage invocations.

/// The stage invocations `config` resolves to, one argument per line, the fixture's temp
/// folder written as `$TMP`.
fn render(steps: &[Step], tmp: &Path) -> String {
    let tmp = tmp.display().to_string();
    let mut out = String::new();
    for s in steps {
        if let Some(resume) = &s.resume_args {
            assert_eq!(
                resume[..s.args.len()],
                s.args,
                "{} resumes with the same arguments",
                s.name
            );
            assert_eq!(resume[s.args.len()..], [flag::RESUME]);
        }
        out.push_str(&format!(
            "{} = {}{}\n",
            s.name,
            s.binary,
            if s.resume_args.is_some() { " (resumable)" } else { "" }
        ));
        for a in &s.args {
            out.push_str(&format!("    {}\n", a.replace(&tmp, "$TMP")));
        }
        for (k, v) in &s.inputs {
            out.push_str(&format!("  input {k}: {v}\n"));
        }
    }
    out
}

fn fixture() -> (tempfile::TempDir, PathBuf, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(data.join("train/a")).unwrap();
    std::fs::write(data.join("train/a/x.png"), b"1").unwrap();
    let digits = dir.path().join("digits");
    std::fs::create_dir_all(digits.join("train/0")).unwrap();
    std::fs::write(digits.join("train/0/y.png"), b"2").unwrap();
    let weights = dir.path().join("w.safetensors");
    std::fs::write(&weights, b"w").unwrap();
    (dir, data, digits, weights)
}

pub(super) fn resolved(file: &str) -> Config {
    resolved_with(file, Profile::Demo)
}

fn resolved_with(file: &str, profile: Profile) -> Config {
    let args = PipelineArgs {
        config: Some(Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(file)),
        name: None,
        data: None,
        weights: None,
        device: None,
        cache_dir: None,
        profile: Some(profile),
        status: false,
        without_scratch: false,
        emit: Default::default(),
        remote: None,
    };
    config::resolve(&args, Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap()).unwrap().config
}

#[test]
fn default_config_snapshot() {
    let (dir, data, _, weights) = fixture();
    let steps = planned(&resolved("pipeline.toml"), &dir.path().join("run"), &data, &weights);
    expect_test::expect![[r#"
        dataset = dataset
            check
            $TMP/data
            --split
            train
            --split
            validation
            --split
            test
            --out
            $TMP/run/dataset
          input dataset: 1 files, b3380228304910a042172ebe86fd640895ef267c130cfd8c00b87be17ea9ef7f
        extract-trunk = extract-features
            --data
            $TMP/data
            --weights
            $TMP/w.safetensors
            --out
            $TMP/run/extract-trunk
            --layer
            block4_pool
            --input-size
            64
            --pooling
            none
            --precision
            f32
            --batch-size
            20
            --augment-passes
            5
            --augment-seed
            0
            --device
            auto
          input dataset: 1 files, b3380228304910a042172ebe86fd640895ef267c130cfd8c00b87be17ea9ef7f
          input weights: 50e721e49c013f00c62cf59f2163542a9d8df02464efeb615d31051b0fddc326
        extract = extract-features
            --data
            $TMP/data
            --weights
            $TMP/w.safetensors
            --out
            $TMP/run/extract
            --layer
            block5_pool
            --input-size
            64
            --pooling
            none
            --precision
            f32
            --batch-size
            20
            --augment-passes
            5
            --augment-seed
            0
            --device
            auto
          input dataset: 1 files, b3380228304910a042172ebe86fd640895ef267c130cfd8c00b87be17ea9ef7f
          input weights: 50e721e49c013f00c62cf59f2163542a9d8df02464efeb615d31051b0fddc326
        head = train-head
            --features
            $TMP/run/extract/features.json
            --out
            $TMP/run/head
            --epochs
            30
            --batch-size
            20
            --lr
            0.00002
            --optimizer
            rmsprop
            --seed
            0
            --device
            auto
            --no-augmented-passes
            --weights
            $TMP/w.safetensors
          input extract/features.json: absent
        head-augmented = train-head
            --features
            $TMP/run/extract/features.json
            --out
            $TMP/run/head-augmented
            --epochs
            30
            --batch-size
            20
            --lr
            0.00002
            --optimizer
            rmsprop
            --seed
            0
            --device
            auto
            --weights
            $TMP/w.safetensors
          input extract/features.json: absent
        fine-tune = fine-tune (resumable)
            --data
            $TMP/data
            --weights
            $TMP/w.safetensors
            --out
            $TMP/run/fine-tune
            --input-size
            64
            --unfreeze-from
            block5_conv1
            --epochs
            15
            --steps-per-epoch
            100
            --batch-size
            20
            --lr
            0.00001
            --seed
            0
            --device
            auto
            --head
            $TMP/run/head/head.safetensors
            --trunk-cache
            $TMP/run/extract-trunk/features.json
          input dataset: 1 files, b3380228304910a042172ebe86fd640895ef267c130cfd8c00b87be17ea9ef7f
          input extract-trunk/features.json: absent
          input head/head.safetensors: absent
          input weights: 50e721e49c013f00c62cf59f2163542a9d8df02464efeb615d31051b0fddc326
        scratch = pretrain
            --data
            $TMP/data
            --out
            $TMP/run/scratch
            --input-size
            64
            --arch
            small-convnet
            --width
            1
            --epochs
            150
            --batch-size
            20
            --lr
            0.0001
            --seed
            0
            --device
            auto
            --augment
          input dataset: 1 files, b3380228304910a042172ebe86fd640895ef267c130cfd8c00b87be17ea9ef7f
        evaluate = evaluate
            --model
            $TMP/run/scratch/model.safetensors
            --data
            $TMP/data
            --out
            $TMP/run/evaluate
            --split
            test
            --top-losses
            16
            --device
            auto
          input dataset: 1 files, b3380228304910a042172ebe86fd640895ef267c130cfd8c00b87be17ea9ef7f
          input scratch/model.safetensors: absent
    "#]]
    .assert_eq(&render(&steps, dir.path()));
}

#[test]
fn homework_config_snapshot() {
    let (dir, data, digits, _) = fixture();
    let mut config = resolved("homework.toml");
    config.pretrain.data = digits;
    let run = dir.path().join("run");
    let steps = planned(&config, &run, &data, &pretrained_base(&run));
    expect_test::expect![[r#"
        dataset = dataset
            check
            $TMP/data
            --split
            train
            --split
            validation
            --split
            test
            --out
            $TMP/run/dataset
          input dataset: 1 files, b3380228304910a042172ebe86fd640895ef267c130cfd8c00b87be17ea9ef7f
        pretrain = pretrain
            --data
            $TMP/digits
            --out
            $TMP/run/pretrain
            --input-size
            48
            --arch
            small-convnet
            --width
            1
            --epochs
            8
            --batch-size
            20
            --lr
            0.0001
            --seed
            0
            --device
            auto
          input pretrain dataset: 1 files, 2c0c6fb1d5e888f599069c35a55f843401f2f60c33de20f60060badef7329a39
        extract = extract-features
            --data
            $TMP/data
            --weights
            $TMP/run/pretrain/base.safetensors
            --out
            $TMP/run/extract
            --layer
            max_pooling2d_4
            --input-size
            48
            --pooling
            none
            --precision
            f32
            --batch-size
            20
            --augment-passes
            0
            --augment-seed
            0
            --device
            auto
          input dataset: 1 files, b3380228304910a042172ebe86fd640895ef267c130cfd8c00b87be17ea9ef7f
          input weights: absent
        head = train-head
            --features
            $TMP/run/extract/features.json
            --out
            $TMP/run/head
            --epochs
            30
            --batch-size
            20
            --lr
            0.0001
            --optimizer
            rmsprop
            --seed
            0
            --device
            auto
            --no-augmented-passes
            --weights
            $TMP/run/pretrain/base.safetensors
          input extract/features.json: absent
        fine-tune = fine-tune (resumable)
            --data
            $TMP/data
            --weights
            $TMP/run/pretrain/base.safetensors
            --out
            $TMP/run/fine-tune
            --input-size
            48
            --unfreeze-from
            conv2d_3
            --epochs
            5
            --steps-per-epoch
            100
            --batch-size
            20
            --lr
            0.0001
            --seed
            0
            --device
            auto
            --head
            $TMP/run/head/head.safetensors
          input dataset: 1 files, b3380228304910a042172ebe86fd640895ef267c130cfd8c00b87be17ea9ef7f
          input head/head.safetensors: absent
          input weights: absent
        scratch = pretrain
            --data
            $TMP/data
            --out
            $TMP/run/scratch
            --input-size
            48
            --arch
            small-convnet
            --width
            1
            --epochs
            8
            --batch-size
            20
            --lr
            0.0001
            --seed
            0
            --device
            auto
          input dataset: 1 files, b3380228304910a042172ebe86fd640895ef267c130cfd8c00b87be17ea9ef7f
        evaluate = evaluate
            --model
            $TMP/run/scratch/model.safetensors
            --data
            $TMP/data
            --out
            $TMP/run/evaluate
            --split
            test
            --top-losses
            16
            --device
            auto
          input dataset: 1 files, b3380228304910a042172ebe86fd640895ef267c130cfd8c00b87be17ea9ef7f
          input scratch/model.safetensors: absent
    "#]].assert_eq(&render(&steps, dir.path()));
}

#[test]
fn seed_profile_snapshot() {
    let (dir, data, _, weights) = fixture();
    let config = resolved_with("pipeline.toml", Profile::Seed);
    let steps = planned(&config, &dir.path().join("run"), &data, &weights);
    expect_test::expect![[r#"
        dataset = dataset
            check
            $TMP/data
            --split
            train
            --split
            validation
            --split
            test
            --out
            $TMP/run/dataset
          input dataset: 1 files, b3380228304910a042172ebe86fd640895ef267c130cfd8c00b87be17ea9ef7f
        extract = extract-features
            --data
            $TMP/data
            --weights
            $TMP/w.safetensors
            --out
            $TMP/run/extract
            --layer
            block5_pool
            --input-size
            150
            --pooling
            none
            --precision
            f32
            --batch-size
            20
            --augment-passes
            5
            --augment-seed
            0
            --device
            auto
          input dataset: 1 files, b3380228304910a042172ebe86fd640895ef267c130cfd8c00b87be17ea9ef7f
          input weights: 50e721e49c013f00c62cf59f2163542a9d8df02464efeb615d31051b0fddc326
        head = train-head
            --features
            $TMP/run/extract/features.json
            --out
            $TMP/run/head
            --epochs
            30
            --batch-size
            20
            --lr
            0.00002
            --optimizer
            rmsprop
            --seed
            0
            --device
            auto
            --no-augmented-passes
            --weights
            $TMP/w.safetensors
          input extract/features.json: absent
        head-augmented = train-head
            --features
            $TMP/run/extract/features.json
            --out
            $TMP/run/head-augmented
            --epochs
            30
            --batch-size
            20
            --lr
            0.00002
            --optimizer
            rmsprop
            --seed
            0
            --device
            auto
            --weights
            $TMP/w.safetensors
          input extract/features.json: absent
        fine-tune = fine-tune (resumable)
            --data
            $TMP/data
            --weights
            $TMP/w.safetensors
            --out
            $TMP/run/fine-tune
            --input-size
            150
            --unfreeze-from
            block5_conv1
            --epochs
            100
            --steps-per-epoch
            100
            --batch-size
            20
            --lr
            0.00001
            --seed
            0
            --device
            auto
            --head-epochs
            30
          input dataset: 1 files, b3380228304910a042172ebe86fd640895ef267c130cfd8c00b87be17ea9ef7f
          input weights: 50e721e49c013f00c62cf59f2163542a9d8df02464efeb615d31051b0fddc326
        scratch = pretrain
            --data
            $TMP/data
            --out
            $TMP/run/scratch
            --input-size
            150
            --arch
            small-convnet
            --width
            1
            --epochs
            100
            --batch-size
            20
            --lr
            0.0001
            --seed
            0
            --device
            auto
            --augment
          input dataset: 1 files, b3380228304910a042172ebe86fd640895ef267c130cfd8c00b87be17ea9ef7f
        evaluate = evaluate
            --model
            $TMP/run/scratch/model.safetensors
            --data
            $TMP/data
            --out
            $TMP/run/evaluate
            --split
            test
            --top-losses
            16
            --device
            auto
          input dataset: 1 files, b3380228304910a042172ebe86fd640895ef267c130cfd8c00b87be17ea9ef7f
          input scratch/model.safetensors: absent
    "#]]
    .assert_eq(&render(&steps, dir.path()));
}
