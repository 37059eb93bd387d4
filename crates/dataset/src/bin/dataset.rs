//! `dataset`: command-line tools over an image-folder dataset. `dataset check <root>` prints a
//! health report (counts, sizes, formats, leakage between splits, bad files) and exits non-zero
//! when the dataset has errors. With `--out DIR` it is also the pipeline's `dataset` stage: a
//! healthy dataset's record goes to `DIR/dataset.json` and `DIR/stage.json` (run-folder contract).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use dataset::check::{CheckOptions, CheckProgress, check};
use indicatif::{ProgressBar, ProgressStyle};

/// Tools for image-folder datasets laid out as <root>/<split>/<class>/<image>.
#[derive(Parser)]
#[command(name = "dataset", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Report counts, sizes and formats per split and class, files shared between splits
    /// (leakage), duplicates and bad files. Exits 1 if there are errors.
    Check {
        /// Dataset root holding the split folders (train/, validation/, test/).
        root: PathBuf,
        /// Check only these splits (repeatable); default: every non-hidden subfolder.
        #[arg(long = "split")]
        splits: Vec<String>,
        /// Follow symlinks (a loop is then an error).
        #[arg(long)]
        follow_links: bool,
        /// An empty class folder is not an error.
        #[arg(long)]
        allow_empty_classes: bool,
        /// Print the report as JSON on stdout instead of text.
        #[arg(long)]
        json: bool,
        /// Stage folder: when the dataset is healthy, write its record (`dataset.json`: name,
        /// README description, digest, classes, counts, sizes and formats per split) and
        /// `stage.json` there, as the pipeline's `dataset` stage.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .without_time()
        .init();
    match run(Cli::parse()) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Returns whether the command found the dataset healthy.
fn run(cli: Cli) -> Result<bool> {
    match cli.command {
        Cmd::Check { root, splits, follow_links, allow_empty_classes, json, out } => {
            let started = std::time::Instant::now();
            let opts = CheckOptions {
                splits: (!splits.is_empty()).then_some(splits),
                follow_links,
                allow_empty_classes,
                ..Default::default()
            };
            let bar = ProgressBar::hidden();
            let progress = |event| match event {
                CheckProgress::Files(n) => {
                    bar.set_length(n);
                    bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
                    bar.set_style(
                        ProgressStyle::with_template("{bar:40} {pos}/{len} files {per_sec}")
                            .expect("valid template"),
                    );
                }
                CheckProgress::Tick => bar.inc(1),
            };
            let report = check(&root, &opts, &progress)
                .with_context(|| format!("checking {}", root.display()))?;
            bar.finish_and_clear();
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", report.render());
            }
            if let Some(out) = out.as_ref().filter(|_| !report.is_ok()) {
                // A record of an earlier, healthy check must not pass for this one.
                for stale in [run_folder::STAGE_FILE, run_folder::DATASET_FILE] {
                    let _ = std::fs::remove_file(out.join(stale));
                }
            }
            if let (Some(out), true) = (out, report.is_ok()) {
                let scan = dataset::ScanOptions {
                    follow_links,
                    allow_empty_classes,
                    ..Default::default()
                };
                let digest = dataset::tree_digest(&root, &scan)
                    .with_context(|| format!("hashing {}", root.display()))?;
                let record = report.record(digest, dataset::check::readme_description(&root));
                run_folder::write_json(
                    &out.join(run_folder::CONFIG_FILE),
                    &serde_json::json!({ "root": root, "follow_links": follow_links, "allow_empty_classes": allow_empty_classes }),
                )?;
                run_folder::write_json(&out.join(run_folder::DATASET_FILE), &record)?;
                let inputs = [("dataset".to_owned(), record.digest.clone())].into();
                let config = run_folder::json_sha256(&(&root, follow_links, allow_empty_classes));
                let summary = serde_json::json!({ "classes": record.classes.len(), "images": record.splits.iter().map(|s| s.images()).sum::<usize>() });
                run_folder::StageRecord::write(
                    &out,
                    "dataset",
                    config,
                    inputs,
                    &[run_folder::CONFIG_FILE, run_folder::DATASET_FILE],
                    started.elapsed().as_secs_f64(),
                    summary,
                )?;
            }
            Ok(report.is_ok())
        }
    }
}
