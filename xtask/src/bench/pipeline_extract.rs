//! `cargo xtask bench pipeline-extract`: the default pipeline's two extraction stages, run today's
//! former way and the new way, side by side in one invocation, each with a fresh feature cache:
//!
//! - **separate**: `extract` (block5_pool, plain + K augmented passes of train, validation, test)
//!   then `extract-trunk` (block4_pool, plain + T passes), both from the images (`--derive
//!   false`): blocks 1-4 run twice for every image and pass they share;
//! - **derived**: `extract-trunk` first, then `extract`, which finds the block4_pool entries and
//!   runs only block 5 on them.
//!
//! Runs alternate between the two ways; medians of each stage's wall time are printed with the
//! ratios the issue asks for (derived total / trunk stage alone, derived total / separate total),
//! the GFLOP each way computes, and a check that both ways' block5_pool entries have the same keys
//! and the same bytes.
//!
//! Flags (after `--`): `--data DIR` (data/cats-vs-dogs-small), `--input-size N` (64), `--passes K`
//! (5, extract's), `--trunk-passes T` (5), `--runs N` (3): the default pipeline's settings.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Parser;

use super::extract::vgg16_gflop;
use crate::stage_args::{ExtractFeatures, StageArgs};

/// Options after `cargo xtask bench pipeline-extract --`.
#[derive(Parser)]
#[command(name = "cargo xtask bench pipeline-extract")]
struct Args {
    #[arg(long, default_value = "data/cats-vs-dogs-small")]
    data: PathBuf,
    #[arg(long, default_value_t = 64)]
    input_size: u32,
    /// Augmented passes of the `extract` stage (block5_pool).
    #[arg(long, default_value_t = 5)]
    passes: u32,
    /// Augmented passes of the `extract-trunk` stage (block4_pool).
    #[arg(long, default_value_t = 5)]
    trunk_passes: u32,
    /// Runs of each way (medians are reported).
    #[arg(long, default_value_t = 3)]
    runs: usize,
}

pub fn run(args: &[String]) -> Result<()> {
    let args = Args::try_parse_from(
        std::iter::once("pipeline-extract".to_owned()).chain(args.iter().cloned()),
    )?;
    let root = crate::workspace_root();
    let torch = crate::libtorch::ensure()?;
    let weights = crate::weights::ensure_demo(&torch, crate::weights::Build::Release)?;
    let bin = crate::build_release(&torch, &root)?.join(ExtractFeatures::BINARY);
    let data = if args.data.is_absolute() { args.data.clone() } else { root.join(&args.data) };
    let count = |split: &str| count_images(&data.join(split));
    let (train, others) = (count("train")?, count("validation")? + count("test")?);

    // One stage: extract-features at `layer` with `passes` into `cache`; returns its wall time.
    let stage = |cache: &Path, out: &Path, layer: &str, passes: u32, derive: bool| -> Result<f64> {
        let stage = ExtractFeatures {
            cache_dir: Some(cache.to_owned()),
            layer: Some(layer.into()),
            input_size: Some(args.input_size),
            augment_passes: Some(passes),
            augment_seed: Some(0),
            device: Some("cpu".into()),
            derive: Some(derive),
            ..ExtractFeatures::new(&data, &weights, out)
        };
        let mut cmd = Command::new(&bin);
        cmd.args(stage.to_args()).stderr(std::process::Stdio::null());
        torch.configure(&mut cmd);
        let started = Instant::now();
        crate::run_checked(&mut cmd, &format!("extract-features --layer {layer}"))?;
        Ok(started.elapsed().as_secs_f64())
    };
    let mut separate = Vec::new();
    let mut derived = Vec::new();
    for run in 0..args.runs {
        for way in ["separate", "derived"] {
            let scratch = tempfile::tempdir()?;
            let (cache, dir) = (scratch.path().join("cache"), scratch.path());
            let times = if way == "separate" {
                let e = stage(&cache, &dir.join("extract"), "block5_pool", args.passes, false)?;
                let t = stage(&cache, &dir.join("trunk"), "block4_pool", args.trunk_passes, false)?;
                (e, t)
            } else {
                let t = stage(&cache, &dir.join("trunk"), "block4_pool", args.trunk_passes, true)?;
                let e = stage(&cache, &dir.join("extract"), "block5_pool", args.passes, true)?;
                (e, t)
            };
            eprintln!("run {run} {way}: extract {:.1} s, extract-trunk {:.1} s", times.0, times.1);
            let entries = block5_entries(&dir.join("extract"))?;
            if way == "separate" {
                separate.push((times, entries));
            } else {
                let reference = &separate.last().expect("separate ran first").1;
                if &entries != reference {
                    bail!(
                        "run {run}: the derived block5_pool entries differ from the separate extraction's (keys or bytes)"
                    );
                }
                derived.push((times, entries));
            }
        }
    }
    let median = |v: Vec<f64>| {
        let mut v = v;
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let stats = |runs: &[Run]| {
        (
            median(runs.iter().map(|r| r.0.0).collect()),
            median(runs.iter().map(|r| r.0.1).collect()),
            median(runs.iter().map(|r| r.0.0 + r.0.1).collect()),
        )
    };
    let (s_extract, s_trunk, s_total) = stats(&separate);
    let (d_extract, d_trunk, d_total) = stats(&derived);

    // Images through the network: extract's plain + passes of train, and validation + test; the
    // trunk's likewise with its passes.
    let extract_images = train * (1 + args.passes as usize) + others;
    let trunk_images = train * (1 + args.trunk_passes as usize) + others;
    let (blocks_1_4, block_5) =
        (vgg16_gflop(args.input_size, 0..10), vgg16_gflop(args.input_size, 10..13));
    let separate_gflop =
        extract_images as f64 * (blocks_1_4 + block_5) + trunk_images as f64 * blocks_1_4;
    let derived_gflop = trunk_images as f64 * blocks_1_4 + extract_images as f64 * block_5;
    let name = data.file_name().map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    println!(
        "\nExtraction stages of the default pipeline on {name} at {0}x{0} (extract: block5_pool, {1} passes, {2} images; extract-trunk: block4_pool, {3} passes, {4} images), fresh cache per run, medians of {5}:\n",
        args.input_size, args.passes, extract_images, args.trunk_passes, trunk_images, args.runs
    );
    println!("| way | extract s | extract-trunk s | total s | GFLOP |");
    println!("| --- | --- | --- | --- | --- |");
    println!(
        "| separate (both from images) | {s_extract:.1} | {s_trunk:.1} | {s_total:.1} | {separate_gflop:.0} |"
    );
    println!(
        "| derived (trunk first, block5_pool from block4_pool) | {d_extract:.1} | {d_trunk:.1} | {d_total:.1} | {derived_gflop:.0} |"
    );
    println!(
        "\nderived total / separate extract-trunk alone: {:.3} (target <= 1.1); derived / separate total: {:.3}; GFLOP ratio {:.3}; block5_pool entries identical (keys and bytes) in every run",
        d_total / s_trunk,
        d_total / s_total,
        derived_gflop / separate_gflop
    );
    Ok(())
}

/// One run of one way: (extract seconds, extract-trunk seconds) and its block5_pool entries.
type Run = ((f64, f64), Vec<(String, Vec<u8>)>);

/// Images under a split folder (every file in its class folders).
fn count_images(split: &Path) -> Result<usize> {
    let mut n = 0;
    for class in std::fs::read_dir(split).with_context(|| format!("reading {}", split.display()))? {
        let class = class?.path();
        if class.is_dir() {
            n += std::fs::read_dir(&class)?
                .filter(|e| e.as_ref().is_ok_and(|e| e.path().is_file()))
                .count();
        }
    }
    Ok(n)
}

/// `(split index key, bytes)` of every split an extraction stage recorded, read through its
/// split index (every chunk verified): the features' `f32` bit patterns, then the labels, little
/// endian, so equal bytes are bit-identical features.
fn block5_entries(stage: &Path) -> Result<Vec<(String, Vec<u8>)>> {
    let record_path = stage.join(feature_cache::EXTRACTION_FILE);
    let record: feature_cache::ExtractionRecord = run_folder::read_json(&record_path)?;
    let cache = feature_cache::Cache::open(&record.cache_dir)?;
    record
        .entries
        .iter()
        .map(|e| {
            let split = feature_cache::ExtractionRecord::load(&cache, e, &record_path)?;
            let mut bytes = Vec::with_capacity(4 * (split.features.len() + split.labels.len()));
            bytes.extend(split.features.iter().flat_map(|v| v.to_le_bytes()));
            bytes.extend(split.labels.iter().flat_map(|l| l.to_le_bytes()));
            Ok((e.key.clone(), bytes))
        })
        .collect()
}
