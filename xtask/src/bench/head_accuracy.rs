//! `cargo xtask bench head-accuracy`: validation and test accuracy of the dense head on a dataset
//! (the demo's cats vs dogs by default) for each combination of input size, preprocessing
//! (`caffe`, what the Keras weights expect, vs the seed's `rescale` = divide by 255), feature
//! layer (`block5_pool` vs `block4_pool`) and training data (plain features vs K cached augmented
//! passes), plus bf16 features beside f32 at the first size. Runs the real stage binaries
//! (`extract-features`, then `train-head` twice per extraction) into
//! `runs/bench-head-accuracy/<dataset>/`, sharing the feature cache, so variants the pipeline
//! already extracted are cache hits. Prints a Markdown table.
//!
//! Flags (after `--`): `--data DIR` (data/cats-vs-dogs-small), `--sizes N,M` (64,150),
//! `--epochs N` (30), `--passes K` (2), `--seed N` (0).

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result};

use crate::stage_args::{ExtractFeatures, StageArgs, TrainHead};

struct Settings {
    data: std::path::PathBuf,
    sizes: Vec<u32>,
    epochs: u32,
    passes: u32,
    seed: u64,
}

fn flag<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> Result<T> {
    match args.iter().position(|a| a == name) {
        None => Ok(default),
        Some(i) => args
            .get(i + 1)
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("{name} needs a value")),
    }
}

pub fn run(args: &[String]) -> Result<()> {
    let sizes: String = flag(args, "--sizes", "64,150".to_owned())?;
    let s = Settings {
        data: flag(args, "--data", "data/cats-vs-dogs-small".into())?,
        sizes: sizes
            .split(',')
            .map(|v| v.trim().parse().with_context(|| format!("--sizes: {v:?} is not a size")))
            .collect::<Result<_>>()?,
        epochs: flag(args, "--epochs", 30)?,
        passes: flag(args, "--passes", 2)?,
        seed: flag(args, "--seed", 0)?,
    };
    let torch = crate::libtorch::ensure()?;
    let root = crate::workspace_root();
    let weights = crate::weights::ensure_demo(&torch, crate::weights::Build::Release)?;
    let release = crate::build_release(&torch, &root)?;
    let bin = |name: &str| release.join(name);
    let data = root.join(&s.data);
    let name = data.file_name().map_or_else(|| "data".into(), |n| n.to_string_lossy().into_owned());
    let out = root.join("runs/bench-head-accuracy").join(&name);

    // (size, preprocessing, layer, precision): the 2 x 2 grid at every size, plus bf16 features
    // beside f32 at the first size.
    let mut variants = Vec::new();
    for (i, &size) in s.sizes.iter().enumerate() {
        // block4_pool first: extract-features then derives block5_pool from its cached entries,
        // running only block 5.
        for (preprocessing, layer) in [
            ("caffe", "block4_pool"),
            ("caffe", "block5_pool"),
            ("rescale", "block4_pool"),
            ("rescale", "block5_pool"),
        ] {
            variants.push((size, preprocessing, layer, "f32"));
        }
        if i == 0 {
            variants.push((size, "caffe", "block5_pool", "bf16"));
        }
    }
    let mut rows = Vec::new();
    for (size, preprocessing, layer, precision) in variants {
        let extract_dir = out.join(format!("{size}-{preprocessing}-{layer}-{precision}"));
        let extract = ExtractFeatures {
            layer: Some(layer.into()),
            preprocessing: Some(preprocessing.into()),
            precision: Some(precision.into()),
            device: Some("cpu".into()),
            input_size: Some(size),
            augment_passes: Some(s.passes),
            augment_seed: Some(s.seed),
            ..ExtractFeatures::new(&data, &weights, &extract_dir)
        };
        let mut cmd = Command::new(bin(ExtractFeatures::BINARY));
        cmd.args(extract.to_args());
        torch.configure(&mut cmd);
        crate::run_checked(
            &mut cmd,
            &format!("extract-features ({preprocessing}, {layer}, {precision})"),
        )?;
        for augmented in [false, true] {
            let head_dir = extract_dir.join(if augmented { "head-augmented" } else { "head" });
            let head = TrainHead {
                epochs: Some(s.epochs),
                seed: Some(s.seed),
                device: Some("cpu".into()),
                no_augmented_passes: !augmented,
                ..TrainHead::new(extract_dir.join(feature_cache::EXTRACTION_FILE), &head_dir)
            };
            let mut cmd = Command::new(bin(TrainHead::BINARY));
            cmd.args(head.to_args());
            torch.configure(&mut cmd);
            crate::run_checked(
                &mut cmd,
                &format!(
                    "train-head ({size}, {preprocessing}, {layer}, {precision}, augmented {augmented})"
                ),
            )?;
            rows.push((size, preprocessing, layer, precision, augmented, accuracies(&head_dir)?));
        }
    }

    println!(
        "\nDense head on {name} (demo weights), {} epochs, RMSprop lr 2e-5, batch 20, seed {}:\n",
        s.epochs, s.seed
    );
    println!(
        "| input | preprocessing | layer | precision | training features | validation acc | test acc |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    for (size, preprocessing, layer, precision, augmented, (val, test)) in rows {
        let features =
            if augmented { format!("{} augmented passes", s.passes) } else { "plain".to_owned() };
        println!(
            "| {size}x{size} | {preprocessing} | {layer} | {precision} | {features} | {:.2}% | {:.2}% |",
            100.0 * val,
            100.0 * test
        );
    }
    Ok(())
}

/// Validation and test accuracy from a train-head stage folder's `metrics.json`.
fn accuracies(dir: &Path) -> Result<(f64, f64)> {
    let metrics = run_folder::StageMetrics::read(dir)?;
    let test = metrics.test.with_context(|| {
        format!("{}: no test accuracy", dir.join(run_folder::METRICS_FILE).display())
    })?;
    Ok((metrics.validation.acc, test.acc))
}
