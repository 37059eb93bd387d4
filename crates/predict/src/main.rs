//! `predict`: classifies images with a trained model file (`model.safetensors` of train-head,
//! fine-tune or pretrain; the file alone rebuilds the network).
//!
//! Inputs are image files, folders (walked recursively as the dataset crate walks a class folder:
//! sorted by file name, dot-entries and symlinks left out, only the image extension allow-list)
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

use std::fs;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Parser, ValueEnum};
use dataset::{
    BadImagePolicy, BatchOptions, ClassMode, DecodeOptions, FileEntry, Interpolation, Size,
    SplitIndex,
};
use indicatif::{ProgressBar, ProgressStyle};
use models::{Classifier, DeviceChoice};
use tch::{Kind, Tensor};

/// Classifies images with a trained model file; writes one row of class probabilities per image.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// The model file (`model.safetensors` or `best.safetensors` of train-head, fine-tune or
    /// pretrain).
    #[arg(long)]
    model: PathBuf,
    /// Image files and folders (folders recursively: image extensions only, sorted, dot-entries
    /// and symlinks left out). A file named here is used whatever its extension.
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

/// One classified image.
#[derive(Debug)]
struct Row {
    path: PathBuf,
    probabilities: Vec<f32>,
}

fn main() -> ExitCode {
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
    let (interpolation, crop) = resize_mode(&header.resize)
        .with_context(|| format!("{}: header field resize", args.model.display()))?;
    let [h, w] = header.input_size;
    let size = Size::new(
        u32::try_from(h).context("input height")?,
        u32::try_from(w).context("input width")?,
    );
    if let Some(k) = args.top_k
        && k > header.class_names.len()
    {
        bail!("--top-k {k} exceeds the model's {} classes", header.class_names.len());
    }

    let mut inputs = args.paths.clone();
    for list in &args.lists {
        inputs.extend(read_list(list)?);
    }
    if inputs.is_empty() {
        bail!("no input: name image files, folders or --list FILE");
    }
    let files = collect_files(&inputs)?;
    if files.is_empty() {
        bail!("no image files found under the given paths");
    }
    tracing::info!(images = files.len(), model = %args.model.display(), "classifying");

    let (rows, skipped) = classify(&model, &files, size, interpolation, crop, &args)?;
    for s in &skipped {
        eprintln!("skipped bad image {}: {}", s.path.display(), s.reason);
    }

    let text = match args.format {
        Format::Csv => render_csv(&header.class_names, &rows, args.top_k),
        Format::Json => render_json(&header.class_names, &rows, &skipped, args.top_k)?,
    };
    match &args.out {
        Some(out) => fs::write(out, text).with_context(|| format!("writing {}", out.display()))?,
        None => {
            let mut stdout = std::io::stdout().lock();
            stdout.write_all(text.as_bytes()).context("writing to stdout")?;
            stdout.flush().context("writing to stdout")?;
        }
    }
    Ok(())
}

/// The header's `resize` string (what extract-features records for `--resize`/`--crop`;
/// fine-tune and pretrain record `nearest`) back to the decoder's settings.
fn resize_mode(resize: &str) -> Result<(Interpolation, bool)> {
    Ok(match resize {
        "nearest" => (Interpolation::Nearest, false),
        "bilinear" => (Interpolation::Bilinear, false),
        "nearest+center-crop" => (Interpolation::Nearest, true),
        "bilinear+center-crop" => (Interpolation::Bilinear, true),
        other => bail!(
            "unknown resize mode {other:?} (expected nearest, bilinear, nearest+center-crop or \
             bilinear+center-crop)"
        ),
    })
}

/// The paths a list file names, one per line.
fn read_list(list: &Path) -> Result<Vec<PathBuf>> {
    let text = fs::read_to_string(list)
        .with_context(|| format!("reading the list file {}", list.display()))?;
    Ok(text
        .lines()
        .map(|line| line.trim_end_matches('\r'))
        .filter(|line| !line.trim().is_empty() && !line.starts_with('#'))
        .map(PathBuf::from)
        .collect())
}

/// Every image file of the inputs, in input order; folders expanded in the dataset crate's order.
fn collect_files(inputs: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for input in inputs {
        let meta = fs::metadata(input).with_context(|| format!("{}", input.display()))?;
        if !meta.is_dir() {
            // Named explicitly: used whatever its extension; decoding says if it is no image.
            files.push(input.clone());
            continue;
        }
        let before = files.len();
        let mut it = walkdir::WalkDir::new(input).min_depth(1).sort_by_file_name().into_iter();
        while let Some(entry) = it.next() {
            let entry = entry.with_context(|| format!("walking {}", input.display()))?;
            let ft = entry.file_type();
            if entry.file_name().as_encoded_bytes().first() == Some(&b'.') {
                if ft.is_dir() {
                    it.skip_current_dir();
                }
                continue;
            }
            if ft.is_file() && dataset::scan::has_image_extension(entry.path()) {
                files.push(entry.path().to_owned());
            }
        }
        if files.len() == before {
            tracing::warn!(dir = %input.display(), "no image files in this folder");
        }
    }
    Ok(files)
}

/// Decodes `files` in batches (the dataset crate's loader and bad-image policy) and runs the
/// model on each batch; returns the rows of the images kept, in input order, and those skipped.
fn classify(
    model: &Classifier,
    files: &[PathBuf],
    size: Size,
    interpolation: Interpolation,
    crop: bool,
    args: &Args,
) -> Result<(Vec<Row>, Vec<dataset::Skipped>)> {
    // One pseudo-class: the loader only needs labels for its targets.
    let index = SplitIndex {
        dir: PathBuf::from("the inputs"),
        classes: vec!["input".to_owned()],
        class_mode: ClassMode::Sparse,
        files: files.iter().map(|p| FileEntry { path: p.clone(), class: 0, bytes: 0 }).collect(),
        omitted: Vec::new(),
    };
    let decode = DecodeOptions {
        target_size: Some(size),
        interpolation,
        crop_to_aspect_ratio: crop,
        ..Default::default()
    };
    let options = BatchOptions {
        batch_size: args.batch_size,
        shuffle: None,
        on_bad_image: if args.skip_bad_images {
            BadImagePolicy::Skip { max_fraction: args.max_bad_fraction }
        } else {
            BadImagePolicy::FailFast
        },
        ..Default::default()
    };
    let bar = if std::io::stderr().is_terminal() {
        ProgressBar::new(files.len() as u64)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} {per_sec} eta {eta}")
            .expect("static template")
            .progress_chars("=> "),
    );
    bar.set_message("predict");
    let mut batches = dataset::batches(&index, &decode, &options, 0)?;
    let mut rows = Vec::with_capacity(files.len());
    let mut visited = 0;
    for batch in batches.by_ref() {
        let batch = batch?;
        let [n, bh, bw, c] = batch.shape();
        let pixels = Tensor::from_slice(&batch.images)
            .view([n as i64, bh as i64, bw as i64, c as i64])
            .to_device(model.device());
        let probs = model
            .predict_proba(&pixels)
            .with_context(|| {
                format!("classifying the batch starting at {}", batch.paths[0].display())
            })?
            .to_device(tch::Device::Cpu)
            .to_kind(Kind::Float)
            .contiguous();
        let classes = probs.size()[1] as usize;
        let flat = Vec::<f32>::try_from(probs.view([-1])).context("reading probabilities")?;
        for (path, p) in batch.paths.iter().zip(flat.chunks(classes)) {
            rows.push(Row { path: path.clone(), probabilities: p.to_vec() });
        }
        let last = batch.indices.last().copied().unwrap_or(visited);
        visited = last + 1;
        bar.set_position(visited as u64);
    }
    bar.finish_and_clear();
    Ok((rows, batches.skipped()))
}

/// Index of the largest probability (the first on ties).
fn argmax(p: &[f32]) -> usize {
    p.iter().enumerate().fold(0, |best, (i, &v)| if v > p[best] { i } else { best })
}

/// Class indices by decreasing probability (stable: lower index first on ties), first `k`.
fn top_k(p: &[f32], k: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..p.len()).collect();
    order.sort_by(|&a, &b| p[b].total_cmp(&p[a]));
    order.truncate(k);
    order
}

/// One CSV field, quoted when it holds a comma, quote, CR, LF or leading/trailing space.
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) || s.starts_with(' ') || s.ends_with(' ') {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

fn render_csv(classes: &[String], rows: &[Row], k: Option<usize>) -> String {
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
    rows: &[Row],
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
