//! `predict`: classifies images with a trained model file (`model.safetensors` of train-head,
//! fine-tune or pretrain; the file alone rebuilds the network).
//!
//! Inputs are image files, folders (walked recursively as the dataset crate walks a class folder:
//! Keras' order, dot-entries and symlinked folders left out, linked files read, only the image
//! extension allow-list)
//! and list files (`--list FILE`: one path per line, each an image or a folder like a PATH
//! argument; blank lines and lines starting with `#` are ignored; relative paths are taken from
//! the working directory, as written). Every image is decoded exactly as training decoded it
//! (`dataset::decode`: EXIF orientation, one colour rule for grey/RGBA/palette/CMYK/16-bit, the
//! header's input size and resize mode, Pillow-exact resampling), in batches through
//! `dataset::batches`, so bad images follow extraction's policy: the first one stops the run
//! naming it, or with `--skip-bad-images` each is skipped and named (up to
//! `--max-bad-fraction`).
//!
//! Output (stdout, or `--out FILE` written once at the end): CSV with a header row, one row per
//! image in input order: `path,predicted,<one probability column per class, class-index
//! order>`; with `--top-k K` the class columns become `class_1,probability_1,...`. `--format
//! json` writes `{"classes": [...], "predictions": [{"path", "predicted", "probabilities" |
//! "top_k"}]}`, plus `"skipped": [{"path", "reason"}]`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Parser, ValueEnum};
use dataset::BadImagePolicy;
use models::{Classifier, DeviceChoice};
use predict::{ClassifyOptions, Prediction, argmax, csv_field, top_k};

/// Classifies images with a trained model file; writes one row of class probabilities per image.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// The model file (`model.safetensors` or `best.safetensors` of train-head, fine-tune or
    /// pretrain).
    #[arg(long)]
    model: PathBuf,
    /// Image files and folders (folders recursively: image extensions only, Keras' order,
    /// dot-entries and symlinked folders left out, linked files read). A file named here is used
    /// whatever its extension.
    paths: Vec<PathBuf>,
    /// A file listing inputs, one path (image or folder) per line; blank lines and `#` lines are
    /// ignored, relative paths are relative to the working directory. Repeatable.
    #[arg(long = "list", value_name = "FILE")]
    lists: Vec<PathBuf>,
    /// Write the predictions to this file instead of stdout.
    #[arg(long)]
    out: Option<PathBuf>,
    /// csv: path, predicted, one probability column per class (class-index order); json: the
    /// same as one document, with the skipped images.
    #[arg(long, value_enum, default_value_t = Format::Csv)]
    format: Format,
    /// Report only the K most probable classes of each image (class and probability, most
    /// probable first) instead of one column per class.
    #[arg(long, value_name = "K")]
    top_k: Option<usize>,
    /// Images decoded and classified together.
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    device: DeviceChoice,
    /// Follow symlinked folders inside the folders given (linked files are always read), as
    /// `dataset check --follow-links` and the training stages do.
    #[arg(long)]
    follow_links: bool,
    /// Skip images that cannot be decoded (each named on stderr and, in JSON, under `skipped`),
    /// instead of stopping at the first.
    #[arg(long)]
    skip_bad_images: bool,
    /// With --skip-bad-images, fail when more than this fraction of the images is bad.
    #[arg(long, default_value_t = 0.01)]
    max_bad_fraction: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    Csv,
    Json,
}

fn main() -> ExitCode {
    // Activations reuse warm heap pages instead of fresh zeroed ones (as extraction does).
    // Not `cpu_runtime::init`: flushing denormals could change probabilities from training's.
    cpu_runtime::keep_freed_memory();
    cli_support::main(|| run(Args::parse()))
}

fn run(args: Args) -> Result<()> {
    if args.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    if args.top_k == Some(0) {
        bail!("--top-k must be at least 1");
    }
    if !(0.0..=1.0).contains(&args.max_bad_fraction) {
        bail!("--max-bad-fraction must lie in [0, 1]");
    }
    let device = args.device.resolve()?;
    // Its errors name the file and say why (not a model file, another version, ...).
    let model = Classifier::load(&args.model, device, None::<&str>)?;
    let header = model.header().clone();
    predict::decode_options(&header).with_context(|| args.model.display().to_string())?;
    if let Some(k) = args.top_k
        && k > header.class_names.len()
    {
        bail!("--top-k {k} exceeds the model's {} classes", header.class_names.len());
    }

    let mut inputs = args.paths.clone();
    for list in &args.lists {
        inputs.extend(predict::read_list(list)?);
    }
    if inputs.is_empty() {
        bail!("no input: name image files, folders or --list FILE");
    }
    let files = predict::collect_files(&inputs, args.follow_links)?;
    if files.is_empty() {
        bail!("no image files found under the given paths");
    }
    if let Some(out) = &args.out {
        refuse_overwriting_inputs(out, &args.model, &files)?;
    }
    tracing::info!(images = files.len(), model = %args.model.display(), "classifying");

    let options = ClassifyOptions {
        batch_size: args.batch_size,
        on_bad_image: if args.skip_bad_images {
            BadImagePolicy::Skip { max_fraction: args.max_bad_fraction }
        } else {
            BadImagePolicy::FailFast
        },
        progress_label: "predict",
    };
    let started = std::time::Instant::now();
    let (rows, skipped) = predict::classify_files(&model, &files, &options)?;
    let seconds = started.elapsed().as_secs_f64();
    // The summary `cargo xtask bench predict` reads (throughput and peak memory).
    tracing::info!(
        images = rows.len(),
        seconds,
        images_per_second = rows.len() as f64 / seconds,
        peak_rss_mb = cli_support::peak_rss_mb().unwrap_or(f64::NAN),
        "classified"
    );
    for s in &skipped {
        eprintln!("skipped bad image {}: {}", s.path.display(), s.reason);
    }
    if rows.is_empty() {
        bail!("all {} images were skipped as bad; nothing was classified", skipped.len());
    }

    let text = match args.format {
        Format::Csv => render_csv(&header.class_names, &rows, args.top_k),
        Format::Json => render_json(&header.class_names, &rows, &skipped, args.top_k)?,
    };
    match &args.out {
        Some(out) => run_folder::write_atomic(out, text.as_bytes())?,
        None => {
            let mut stdout = std::io::stdout().lock();
            stdout.write_all(text.as_bytes()).context("writing to stdout")?;
            stdout.flush().context("writing to stdout")?;
        }
    }
    Ok(())
}

/// `--out` must not name the model file or one of the images: writing it would destroy them.
fn refuse_overwriting_inputs(out: &Path, model: &Path, files: &[PathBuf]) -> Result<()> {
    let Ok(out_real) = out.canonicalize() else {
        return Ok(()); // does not exist yet, so it is none of the inputs
    };
    let same = |p: &Path| p.canonicalize().is_ok_and(|p| p == out_real);
    if same(model) {
        bail!("--out {} is the model file itself; choose another --out", out.display());
    }
    if let Some(image) = files.iter().find(|f| same(f)) {
        bail!(
            "--out {} is one of the images to classify ({}); choose another --out",
            out.display(),
            image.display()
        );
    }
    Ok(())
}

fn render_csv(classes: &[String], rows: &[Prediction], k: Option<usize>) -> String {
    let mut header = vec!["path".to_owned(), "predicted".to_owned()];
    match k {
        Some(k) => {
            for i in 1..=k {
                header.push(format!("class_{i}"));
                header.push(format!("probability_{i}"));
            }
        }
        None => header.extend(classes.iter().cloned()),
    }
    let mut out = String::new();
    out.push_str(&header.iter().map(|f| csv_field(f)).collect::<Vec<_>>().join(","));
    out.push('\n');
    for row in rows {
        let p = &row.probabilities;
        let mut fields =
            vec![csv_field(&row.path.to_string_lossy()), csv_field(&classes[argmax(p)])];
        match k {
            Some(k) => {
                for c in top_k(p, k) {
                    fields.push(csv_field(&classes[c]));
                    fields.push(p[c].to_string());
                }
            }
            None => fields.extend(p.iter().map(f32::to_string)),
        }
        out.push_str(&fields.join(","));
        out.push('\n');
    }
    out
}

fn render_json(
    classes: &[String],
    rows: &[Prediction],
    skipped: &[dataset::Skipped],
    k: Option<usize>,
) -> Result<String> {
    use serde_json::json;
    let predictions: Vec<serde_json::Value> = rows
        .iter()
        .map(|row| {
            let p = &row.probabilities;
            let mut v = json!({
                "path": row.path.to_string_lossy(),
                "predicted": classes[argmax(p)],
            });
            match k {
                Some(k) => {
                    v["top_k"] = top_k(p, k)
                        .into_iter()
                        .map(|c| json!({"class": classes[c], "probability": p[c]}))
                        .collect();
                }
                None => v["probabilities"] = json!(p),
            }
            v
        })
        .collect();
    let skipped: Vec<serde_json::Value> = skipped
        .iter()
        .map(|s| json!({"path": s.path.to_string_lossy(), "reason": s.reason}))
        .collect();
    let doc = json!({"classes": classes, "predictions": predictions, "skipped": skipped});
    let mut text = serde_json::to_string_pretty(&doc)?;
    text.push('\n');
    Ok(text)
}
