//! The plan: resolved settings -> the list of stage invocations (binary, arguments, named input
//! digests), in the order they run. Arguments come from the typed builders of
//! [`crate::stage_args`]. A later stage's inputs are the digests of earlier stages' outputs, so
//! the plan is made again after each stage ran.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::config::{Config, FineTuneMode, absolute};
use super::layers::Derived;
use crate::stage_args::{
    DatasetCheck, Evaluate, Explain, ExtractFeatures, FineTune, Pretrain, StageArgs, TrainHead,
};

/// One stage invocation: which binary, where, with what, on what.
#[derive(Debug, Clone)]
pub(super) struct Step {
    /// Folder name under the run folder, also the label.
    pub name: &'static str,
    pub binary: &'static str,
    pub args: Vec<String>,
    /// Named input digests; a change makes the stage stale, naming the input.
    pub inputs: BTreeMap<String, String>,
    /// The arguments that continue an interrupted run of the same invocation, for a binary
    /// that can (`fine-tune --resume`).
    pub resume_args: Option<Vec<String>>,
    /// Why the arguments are not known (`--status` before the first build: a setting derived
    /// from the layer table); such a step is never run.
    pub undetermined: Option<String>,
}

impl Step {
    fn new<A: StageArgs>(name: &'static str, args: &A, inputs: BTreeMap<String, String>) -> Self {
        Self {
            name,
            binary: A::BINARY,
            args: args.to_strings(),
            inputs,
            resume_args: None,
            undetermined: None,
        }
    }
}

/// The stage invocations for `config`; inputs of later stages are the current outputs of
/// earlier ones (absent until those ran).
pub(super) fn plan(
    config: &Config,
    derived: &Derived,
    run_dir: &Path,
    data: &Path,
    weights: &Path,
) -> Result<Vec<Step>> {
    // Hashed once per plan: the dataset record, extraction, fine-tuning and the scratch baseline
    // all name it.
    let dataset = tree_fingerprint(data)?;
    // First, so a dataset with errors (bad files, leakage, classes that differ between splits)
    // stops the run before any compute, and the report has a record of what the run trained on.
    let check = DatasetCheck {
        data: data.to_owned(),
        // The splits every stage reads: a missing one is an error here, not a stage later.
        splits: ["train", "validation", "test"].map(String::from).to_vec(),
        out: Some(run_dir.join("dataset")),
    };
    let mut steps = vec![Step::new("dataset", &check, named("dataset", &dataset))];
    let p = &config.pretrain;
    if p.enabled {
        let source = absolute(&crate::workspace_root(), &p.data);
        let args = Pretrain {
            data: source.clone(),
            out: run_dir.join("pretrain"),
            input_size: Some(config.extract.input_size),
            arch: Some(p.arch.clone()),
            width: Some(p.width),
            epochs: Some(p.epochs),
            batch_size: Some(p.batch_size),
            lr: Some(p.lr),
            seed: Some(p.seed),
            device: Some(config.run.device.clone()),
            augment: p.augment,
        };
        steps.push(Step::new(
            "pretrain",
            &args,
            named("pretrain dataset", &tree_fingerprint(&source)?),
        ));
    }
    steps.extend(transfer_steps(config, derived, run_dir, data, &dataset, weights)?);
    let c = &config.scratch;
    if c.enabled {
        let args = Pretrain {
            data: data.to_owned(),
            out: run_dir.join("scratch"),
            input_size: Some(config.extract.input_size),
            arch: Some(c.arch.clone()),
            width: Some(c.width),
            epochs: Some(c.epochs),
            batch_size: Some(c.batch_size),
            lr: Some(c.lr),
            seed: Some(c.seed),
            device: Some(config.run.device.clone()),
            augment: c.augment,
        };
        steps.push(Step::new("scratch", &args, named("dataset", &dataset)));
    }
    let trained: Vec<&'static str> =
        steps.iter().map(|s| s.name).filter(|n| MODEL_STAGES.contains(n)).collect();
    if let Some(best) = best_model_stage(run_dir, &trained) {
        let model = run_dir.join(best).join(MODEL_FILE);
        let args = Evaluate {
            model: model.clone(),
            data: data.to_owned(),
            out: run_dir.join("evaluate"),
            split: Some("test".into()),
            top_losses: Some(16),
            device: Some(config.run.device.clone()),
        };
        let mut inputs = named("dataset", &dataset);
        inputs.insert(format!("{best}/{MODEL_FILE}"), digest_or_absent(&model));
        steps.push(Step::new("evaluate", &args, inputs.clone()));
        // Without test images (a dataset the `dataset` stage will refuse) there is nothing to
        // explain.
        let images = explained_images(&data.join("test"), EXPLAINED_PER_CLASS);
        if !images.is_empty() {
            let explain = Explain {
                model,
                images,
                out: run_dir.join("explain"),
                device: Some(config.run.device.clone()),
            };
            steps.push(Step::new("explain", &explain, inputs));
        }
    }
    Ok(steps)
}

/// Test images per class the `explain` stage draws Grad-CAM heatmaps for.
const EXPLAINED_PER_CLASS: usize = 2;

/// The first `per_class` images of every class of `split`, in the dataset crate's order (the
/// order the stages read them in); none when the split cannot be listed.
fn explained_images(split: &Path, per_class: usize) -> Vec<PathBuf> {
    let Ok(index) = dataset::scan_dir(split, &dataset::ScanOptions::default()) else {
        return Vec::new();
    };
    let mut taken = vec![0; index.classes.len()];
    let mut images = Vec::new();
    for file in &index.files {
        if taken[file.class] < per_class {
            taken[file.class] += 1;
            images.push(file.path.clone());
        }
    }
    images
}

/// The stages that write a whole classifier, in plan order.
pub(super) const MODEL_STAGES: [&str; 4] = ["head", "head-augmented", "fine-tune", "scratch"];
/// The classifier file those stages write.
pub(super) const MODEL_FILE: &str = "model.safetensors";

/// The run's best model among `trained` stages: the highest validation accuracy of the kept
/// epoch in its `metrics.json` (the first of equals, in plan order); before any has run (or
/// when none has a readable `metrics.json`), the last of them, so the plan names a stage.
pub(super) fn best_model_stage(run_dir: &Path, trained: &[&'static str]) -> Option<&'static str> {
    let scored = trained.iter().filter_map(|&name| {
        let m = run_folder::StageMetrics::read(&run_dir.join(name)).ok()?;
        run_dir.join(name).join(MODEL_FILE).is_file().then_some((name, m.kept.val_acc))
    });
    let best = scored.fold(None, |best: Option<(&'static str, f64)>, (name, acc)| match best {
        Some((_, b)) if b >= acc => best,
        _ => Some((name, acc)),
    });
    best.map(|(name, _)| name).or_else(|| trained.last().copied())
}

fn named(name: &str, digest: &str) -> BTreeMap<String, String> {
    BTreeMap::from([(name.to_owned(), digest.to_owned())])
}

/// Extraction, heads and fine-tuning of the base in `weights`.
fn transfer_steps(
    config: &Config,
    derived: &Derived,
    run_dir: &Path,
    data: &Path,
    dataset: &str,
    weights: &Path,
) -> Result<Vec<Step>> {
    let e = &config.extract;
    let device = Some(config.run.device.clone());
    let extract = ExtractFeatures {
        layer: Some(e.layer.clone()),
        input_size: Some(e.input_size),
        pooling: Some(e.pooling.clone()),
        precision: Some(e.precision.clone()),
        batch_size: Some(e.batch_size),
        augment_passes: Some(e.augment_passes),
        augment_seed: Some(e.augment_seed),
        device: device.clone(),
        cache_dir: config.run.cache_dir.clone(),
        ..ExtractFeatures::new(data, weights, run_dir.join("extract"))
    };
    let extract_inputs = BTreeMap::from([
        ("dataset".to_owned(), dataset.to_owned()),
        ("weights".to_owned(), digest_or_absent(weights)),
    ]);
    let features = run_dir.join("extract").join("features.json");
    let h = &config.head;
    let head = |out: &str, augmented: bool| TrainHead {
        epochs: Some(h.epochs),
        batch_size: Some(h.batch_size),
        lr: Some(h.lr),
        optimizer: Some(h.optimizer.clone()),
        seed: Some(h.seed),
        device: device.clone(),
        no_augmented_passes: !augmented,
        weights: Some(weights.to_owned()),
        ..TrainHead::new(&features, run_dir.join(out))
    };
    let head_inputs = named("extract/features.json", &digest_or_absent(&features));
    let mut steps = vec![
        Step::new("extract", &extract, extract_inputs.clone()),
        Step::new("head", &head("head", false), head_inputs.clone()),
    ];
    if e.augment_passes > 0 {
        steps.push(Step::new("head-augmented", &head("head-augmented", true), head_inputs));
    }
    let f = &config.fine_tune;
    if !f.enabled {
        return Ok(steps);
    }
    let mut fine_tune = FineTune {
        input_size: Some(e.input_size),
        unfreeze_from: Some(f.unfreeze_from.clone()),
        epochs: Some(f.epochs),
        steps_per_epoch: Some(f.steps_per_epoch),
        batch_size: Some(f.batch_size),
        lr: Some(f.lr),
        seed: Some(f.seed),
        device,
        ..FineTune::new(data, weights, run_dir.join("fine-tune"))
    };
    let mut fine_tune_inputs = extract_inputs;
    if f.from_head {
        // The head must have been trained on the base's last layer at this input size;
        // fine-tune checks its input shape against the cut base and names both.
        let head = run_dir.join("head").join("head.safetensors");
        fine_tune_inputs.insert("head/head.safetensors".into(), digest_or_absent(&head));
        fine_tune.head = Some(head);
    } else {
        fine_tune.head_epochs = Some(f.head_epochs);
    }
    if f.mode == FineTuneMode::CachedTrunk {
        // The frozen trunk's output for K augmented passes: extraction at the last frozen layer.
        // `augment_seed` stays the extract stage's: its passes are then the trunk's first
        // passes one layer block higher, derived from these.
        let trunk = ExtractFeatures {
            out: run_dir.join("extract-trunk"),
            layer: derived.trunk_layer.clone(),
            pooling: Some("none".into()),
            precision: Some("f32".into()),
            augment_passes: Some(f.trunk_passes),
            ..extract
        };
        let trunk_features = run_dir.join("extract-trunk").join("features.json");
        fine_tune_inputs
            .insert("extract-trunk/features.json".into(), digest_or_absent(&trunk_features));
        fine_tune.trunk_cache = Some(trunk_features);
        let mut step = Step::new("extract-trunk", &trunk, steps[0].inputs.clone());
        if derived.trunk_layer.is_none() {
            step.undetermined = Some(
                derived
                    .unknown
                    .clone()
                    .context("cached-trunk fine-tuning planned without a trunk layer")?,
            );
        }
        // First: the trunk's passes run blocks 1-4 of every image once, and `extract` then finds
        // them in the cache and runs only block 5 for its own layer (extract-features derives a
        // higher layer from a cached lower one), so no image goes through blocks 1-4 twice.
        steps.insert(0, step);
    }
    let mut step = Step::new("fine-tune", &fine_tune, fine_tune_inputs);
    step.resume_args = Some(FineTune { resume: true, ..fine_tune }.to_strings());
    steps.push(step);
    Ok(steps)
}

/// The conv base the run transfers: its own pretrained base, the configured weights, or the demo
/// weights (`demo` says where, `--status` without making them).
pub(super) fn base_weights(
    config: &Config,
    workspace: &Path,
    run_dir: &Path,
    demo: impl FnOnce() -> Result<PathBuf>,
) -> Result<PathBuf> {
    match &config.run.weights {
        _ if config.pretrain.enabled && config.pretrain.use_as_base => Ok(pretrained_base(run_dir)),
        Some(w) => Ok(absolute(workspace, w)),
        None => demo(),
    }
}

/// The conv base the `pretrain` stage writes.
pub(super) fn pretrained_base(run_dir: &Path) -> PathBuf {
    run_dir.join("pretrain").join("base.safetensors")
}

fn digest_or_absent(path: &Path) -> String {
    run_folder::file_sha256(path).map(|d| d.sha256).unwrap_or_else(|_| "absent".into())
}

/// The identity of a dataset tree: every file's relative path and content sha256. Content, not
/// modification time, so touching or copying the data reruns nothing; hashing the demo's 4,000
/// files takes a few milliseconds, and extraction hashes every file anyway for its cache keys.
pub(super) fn tree_fingerprint(root: &Path) -> Result<String> {
    let mut entries = Vec::new();
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in
            std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))?
        {
            let path = entry.with_context(|| format!("reading {}", dir.display()))?.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let rel = path.strip_prefix(root).unwrap_or(&path).display().to_string();
                entries.push(format!("{rel}\t{}\n", run_folder::file_sha256(&path)?.sha256));
            }
        }
    }
    entries.sort();
    Ok(format!("{} files, {}", entries.len(), run_folder::sha256_hex(entries.concat().as_bytes())))
}
