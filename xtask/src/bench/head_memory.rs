//! `cargo xtask bench head-memory`: the peak RSS of the release `train-head` (its logged
//! `peak_rss_mb`, the process's `VmHWM`) on the demo's cached features, then on a training split
//! ten times larger, which must stay within 20% of it: train-head reads its batches from the
//! cache's chunk files and never holds a split whole.
//!
//! The demo's features come from the release `extract-features` run with the pipeline's
//! extraction settings (64x64, block5_pool, 5 augmented passes; into the shared cache, so a rerun
//! or a pipeline run finds them) unless `--features` names an extraction already made. The
//! larger split is written from them, not extracted again: every augmented training pass becomes
//! a split of `--copies` copies of the demo's training files under distinct paths
//! (`copy<k>/<path>`, same content digests and labels), its rows the demo's real feature rows,
//! stored as extract-features stores a split (content-defined chunks through
//! `feature_cache::SplitPlan`, `EntryWriter`, a split index) in a scratch cache. Validation and
//! test stay the demo's. Both runs train the same head with the same settings.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use clap::Parser;
use feature_cache::{Cache, EntryRef, ExtractionRecord, FileKey, SplitPlan, write_index};

use super::extract::timed;
use crate::stage_args::{ExtractFeatures, StageArgs, TrainHead};

/// Options after `cargo xtask bench head-memory --`.
#[derive(Parser)]
#[command(name = "cargo xtask bench head-memory")]
struct Args {
    /// Dataset to extract when no `--features` is given (the demo by default).
    #[arg(long, default_value = "data/cats-vs-dogs-small")]
    data: PathBuf,
    /// An extraction's features.json to start from instead of extracting `--data` here (it
    /// needs augmented passes of the training split, as the pipeline's `extract` stage makes).
    #[arg(long)]
    features: Option<PathBuf>,
    /// How many times the training split is repeated in the larger run.
    #[arg(long, default_value_t = 10)]
    copies: u64,
    /// Training epochs of each train-head run (the peak is reached in the first epoch and the
    /// evaluation after it; more epochs only take longer).
    #[arg(long, default_value_t = 5)]
    epochs: u32,
}

const TOOL: &str = "xtask bench head-memory";

pub fn run(args: &[String]) -> Result<()> {
    let args = Args::try_parse_from(
        std::iter::once("head-memory".to_owned()).chain(args.iter().cloned()),
    )?;
    if args.copies < 2 {
        bail!("--copies must be at least 2");
    }
    let root = crate::workspace_root();
    let absolute = |p: &Path| if p.is_absolute() { p.to_owned() } else { root.join(p) };
    let torch = crate::libtorch::ensure()?;
    let release = crate::build_release(&torch, &root)?;
    let scratch = tempfile::tempdir()?;

    let features = match &args.features {
        Some(path) => absolute(path),
        None => {
            let weights = crate::weights::ensure_demo(&torch, crate::weights::Build::Release)?;
            let out = scratch.path().join("extract");
            // The pipeline's `[extract]` settings (pipeline.toml).
            let stage = ExtractFeatures {
                layer: Some("block5_pool".into()),
                input_size: Some(64),
                pooling: Some("none".into()),
                precision: Some("f32".into()),
                batch_size: Some(20),
                augment_passes: Some(5),
                augment_seed: Some(0),
                device: Some("cpu".into()),
                ..ExtractFeatures::new(absolute(&args.data), &weights, &out)
            };
            let mut cmd = Command::new(release.join(ExtractFeatures::BINARY));
            cmd.args(stage.to_args());
            torch.configure(&mut cmd);
            eprintln!("extracting {} (found entries are reused)", args.data.display());
            let (seconds, _) = timed(&mut cmd, "extract-features")?;
            eprintln!("extract-features: {seconds:.0} s");
            out.join(feature_cache::EXTRACTION_FILE)
        }
    };
    let record: ExtractionRecord = run_folder::read_json(&features)
        .with_context(|| format!("{} (an extraction's features.json)", features.display()))?;
    let large = scratch.path().join("features-large.json");
    let (rows, row_bytes) = repeat_training_split(
        &record,
        &features,
        &scratch.path().join("cache-large"),
        args.copies,
        &large,
    )?;

    let mut peaks = Vec::new();
    for (name, path) in [("1x", &features), ("large", &large)] {
        let stage = TrainHead {
            epochs: Some(args.epochs),
            device: Some("cpu".into()),
            ..TrainHead::new(path, scratch.path().join(format!("head-{name}")))
        };
        let mut cmd = Command::new(release.join(TrainHead::BINARY));
        cmd.args(stage.to_args()).env("NO_COLOR", "1");
        torch.configure(&mut cmd);
        eprintln!("train-head on {}", path.display());
        let (seconds, log) = timed(&mut cmd, "train-head")?;
        let rss = log
            .lines()
            .rev()
            .find_map(|l| l.split("peak_rss_mb=").nth(1))
            .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
            .context("train-head printed no peak_rss_mb")?;
        peaks.push((rss, seconds));
    }

    let passes = record.passes("train").len() as u64;
    println!(
        "| training split | train rows ({passes} passes) | their features | train-head peak RSS | vs 1x | wall ({} epochs) |",
        args.epochs
    );
    println!("|---|---|---|---|---|---|");
    for (copies, (rss, seconds)) in [1, args.copies].into_iter().zip(&peaks) {
        let n = rows * copies;
        println!(
            "| {copies}x ({} images) | {} | {:.0} MB | {rss:.0} MB | {:.2} | {seconds:.0} s |",
            n / passes.max(1),
            n,
            (n * row_bytes) as f64 / 1e6,
            rss / peaks[0].0
        );
    }
    let ratio = peaks[1].0 / peaks[0].0;
    if ratio > 1.2 {
        eprintln!(
            "warning: {}x the training rows took {ratio:.2}x the peak RSS (target: within 1.20x)",
            args.copies
        );
    }
    Ok(())
}

/// Writes `out`: `record` with every augmented training pass replaced by a split of `copies`
/// copies of its files (`copy<k>/<path>`), the rows copied from the pass's own, stored as chunk
/// entries and a split index under `cache_root`. Returns the rows of the original passes (all
/// passes together) and the bytes of one row.
fn repeat_training_split(
    record: &ExtractionRecord,
    record_path: &Path,
    cache_root: &Path,
    copies: u64,
    out: &Path,
) -> Result<(u64, u64)> {
    let cache = Cache::open(&record.cache_dir)
        .with_context(|| format!("opening the feature cache {}", record.cache_dir.display()))?;
    let large = Cache::open(cache_root)?;
    let mut entries: Vec<EntryRef> = Vec::new();
    let (mut rows, mut row_bytes) = (0, 0);
    for entry in &record.entries {
        if entry.split != "train" {
            entries.push(entry.clone());
            continue;
        }
        if entry.pass.is_none() {
            // train-head trains on the augmented passes when there are some.
            continue;
        }
        let reader = ExtractionRecord::open(&cache, entry, record_path)?;
        if !reader.skipped().is_empty() {
            bail!("{}: images were skipped at extraction, rows do not match files", entry.key);
        }
        let files = reader.files()?;
        let n = reader.rows();
        let mut key = reader.settings().clone();
        key.dataset.files = (0..copies)
            .flat_map(|k| {
                files
                    .iter()
                    .map(move |f| FileKey { path: format!("copy{k}/{}", f.path), ..f.clone() })
            })
            .collect();
        let plan = SplitPlan::new(&key);
        let mut counts = Vec::with_capacity(plan.chunks.len());
        let mut features = Vec::new();
        for chunk in &plan.chunks {
            let rows: Vec<u64> = chunk.range.clone().map(|j| j as u64 % n).collect();
            features.resize(rows.len() * reader.row_len(), 0f32);
            reader.read_rows(&rows, &mut features)?;
            let labels: Vec<i32> = rows.iter().map(|&r| reader.labels()[r as usize]).collect();
            let mut writer =
                large.writer(chunk.key.clone(), TOOL, rows.len() as u64, reader.row_shape())?;
            writer.append(&features, &labels)?;
            writer.finish()?;
            counts.push(rows.len() as u64);
        }
        write_index(large.root(), &plan.index(&counts, TOOL))?;
        rows += n;
        row_bytes = reader.row_len() as u64 * 4;
        entries.push(EntryRef {
            key: plan.index_key.clone(),
            rows: n * copies,
            cache_dir: Some(cache_root.to_owned()),
            ..entry.clone()
        });
    }
    if rows == 0 {
        bail!(
            "{} has no augmented passes of the training split (extract with --augment-passes)",
            record_path.display()
        );
    }
    let mut record = record.clone();
    record.entries = entries;
    run_folder::write_json(out, &record)?;
    Ok((rows, row_bytes))
}
