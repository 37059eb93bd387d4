//! Applying a trained model file to images: the decode settings its header records, the inputs
//! (files, folders, list files) walked as the dataset crate walks a class folder, and batched
//! classification through the dataset crate's loader and bad-image policy.
//!
//! The `predict` binary is a thin layer over [`classify_files`]; `evaluate` and `explain` use the
//! same functions, so every consumer of a model file decodes an image exactly as training did
//! (`dataset::decode`: EXIF orientation, one colour rule for grey/RGBA/palette/CMYK/16-bit, the
//! header's input size and resize mode, Pillow-exact resampling).

use std::fs;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use dataset::{
    BadImagePolicy, BatchOptions, ClassMode, DecodeOptions, FileEntry, Interpolation, Size,
    Skipped, SplitIndex,
};
use indicatif::{ProgressBar, ProgressStyle};
use models::{Classifier, ModelHeader};
use tch::{Kind, Tensor};

/// The class probabilities of one image.
#[derive(Debug, Clone, PartialEq)]
pub struct Prediction {
    /// Position of the image in the classified index's `files`.
    pub index: usize,
    pub path: PathBuf,
    /// The head's outputs before the sigmoid/softmax (`[1]` for a two-class sigmoid head,
    /// `[classes]` otherwise), for losses computed as training computes them.
    pub logits: Vec<f32>,
    /// `[classes]`, class-index order, summing to 1 (`Classifier::predict_proba`).
    pub probabilities: Vec<f32>,
}

impl Prediction {
    /// The predicted class index (the most probable; the lowest index on ties).
    pub fn predicted(&self) -> usize {
        argmax(&self.probabilities)
    }
}

/// How [`classify`] batches and what it does with undecodable images.
#[derive(Debug, Clone)]
pub struct ClassifyOptions {
    /// Images decoded and classified together.
    pub batch_size: usize,
    /// Fail-fast (the default) or skip bad images up to a fraction, as extraction does.
    pub on_bad_image: BadImagePolicy,
    /// Label of the progress bar (drawn only when stderr is a terminal).
    pub progress_label: &'static str,
}

impl Default for ClassifyOptions {
    fn default() -> Self {
        ClassifyOptions {
            batch_size: 32,
            on_bad_image: BadImagePolicy::FailFast,
            progress_label: "predict",
        }
    }
}

/// The decoder settings a model was trained with: the header's `input_size` and `resize`
/// (what extract-features records for `--resize`/`--crop`; fine-tune and pretrain record
/// `nearest`).
///
/// Errors: an input size that is not positive, or an unknown resize mode (named).
pub fn decode_options(header: &ModelHeader) -> Result<DecodeOptions> {
    let (interpolation, crop) = match header.resize.as_str() {
        "nearest" => (Interpolation::Nearest, false),
        "bilinear" => (Interpolation::Bilinear, false),
        "nearest+center-crop" => (Interpolation::Nearest, true),
        "bilinear+center-crop" => (Interpolation::Bilinear, true),
        other => bail!(
            "header field resize: unknown resize mode {other:?} (expected nearest, bilinear, \
             nearest+center-crop or bilinear+center-crop)"
        ),
    };
    let [h, w] = header.input_size;
    let size = Size::new(
        u32::try_from(h).context("header field input_size: height")?,
        u32::try_from(w).context("header field input_size: width")?,
    );
    Ok(DecodeOptions {
        target_size: Some(size),
        interpolation,
        crop_to_aspect_ratio: crop,
        ..Default::default()
    })
}

/// The paths a list file names, one per line; blank lines and lines starting with `#` are
/// ignored; relative paths are kept as written (relative to the working directory).
pub fn read_list(list: &Path) -> Result<Vec<PathBuf>> {
    let text = fs::read_to_string(list)
        .with_context(|| format!("reading the list file {}", list.display()))?;
    Ok(text
        .lines()
        .map(|line| line.trim_end_matches('\r'))
        .filter(|line| !line.trim().is_empty() && !line.starts_with('#'))
        .map(PathBuf::from)
        .collect())
}

/// Every image file of `inputs`, in input order. A file named directly is kept whatever its
/// extension (decoding says if it is no image); a folder is walked by the dataset crate's walk
/// of a class folder (`dataset::list_images`: Keras' order, a folder's files before its
/// subfolders'; dot-entries, files without an image extension, dangling links and, unless
/// `follow_links`, symlinked folders left out; symlinked files read), so a folder is read in the
/// order training reads one.
pub fn collect_files(inputs: &[PathBuf], follow_links: bool) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for input in inputs {
        let meta = fs::metadata(input).with_context(|| format!("{}", input.display()))?;
        if !meta.is_dir() {
            files.push(input.clone());
            continue;
        }
        let (found, omitted) = dataset::list_images(input, follow_links)
            .with_context(|| format!("walking {}", input.display()))?;
        for o in &omitted {
            if o.why == dataset::Omission::Symlink {
                tracing::warn!(path = %o.path.display(), why = o.why.describe(), "left out");
            } else {
                tracing::debug!(path = %o.path.display(), why = o.why.describe(), "left out");
            }
        }
        if found.is_empty() {
            tracing::warn!(dir = %input.display(), "no image files in this folder");
        }
        files.extend(found.into_iter().map(|f| f.path));
    }
    Ok(files)
}

/// [`classify`] on loose files (one pseudo-class: the loader only needs labels for targets).
pub fn classify_files(
    model: &Classifier,
    files: &[PathBuf],
    options: &ClassifyOptions,
) -> Result<(Vec<Prediction>, Vec<Skipped>)> {
    let index = SplitIndex {
        dir: PathBuf::from("the inputs"),
        classes: vec!["input".to_owned()],
        class_mode: ClassMode::Sparse,
        files: files.iter().map(|p| FileEntry { path: p.clone(), class: 0, bytes: 0 }).collect(),
        omitted: Vec::new(),
    };
    classify(model, &index, options)
}

/// Decodes the files of `index` in batches (the dataset crate's loader, in index order, with the
/// model header's [`decode_options`]) and runs the classifier on each batch (`Classifier::forward_t` in inference mode, then
/// `models::head::probabilities`: what `Classifier::predict_proba` gives).
///
/// Returns the predictions of the images kept, in index order, and the images skipped under
/// `BadImagePolicy::Skip`. Errors: a bad image under fail-fast (named), too many bad images, a
/// model error (naming the first file of the batch).
pub fn classify(
    model: &Classifier,
    index: &SplitIndex,
    options: &ClassifyOptions,
) -> Result<(Vec<Prediction>, Vec<Skipped>)> {
    if options.batch_size == 0 {
        bail!("the batch size must be at least 1");
    }
    let decode = decode_options(model.header())?;
    let batch_options = BatchOptions {
        batch_size: options.batch_size,
        shuffle: None,
        on_bad_image: options.on_bad_image,
        ..Default::default()
    };
    let bar = if std::io::stderr().is_terminal() {
        ProgressBar::new(index.files.len() as u64)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} {per_sec} eta {eta}")
            .expect("static template")
            .progress_chars("=> "),
    );
    bar.set_message(options.progress_label);
    let mut batches = dataset::batches(index, &decode, &batch_options, 0)?;
    let mut predictions = Vec::with_capacity(index.files.len());
    for batch in batches.by_ref() {
        let batch = batch?;
        let [n, bh, bw, c] = batch.shape();
        let pixels = Tensor::from_slice(&batch.images)
            .view([n as i64, bh as i64, bw as i64, c as i64])
            .to_device(model.device());
        let context = || format!("classifying the batch starting at {}", batch.paths[0].display());
        let logits = tch::no_grad(|| model.forward_t(&pixels, false)).with_context(context)?;
        let probs = models::head::probabilities(&logits).with_context(context)?;
        let logits = rows(&logits).context("reading logits")?;
        let probs = rows(&probs).context("reading probabilities")?;
        for (((path, &i), l), p) in batch.paths.iter().zip(&batch.indices).zip(logits).zip(probs) {
            predictions.push(Prediction {
                index: i,
                path: path.clone(),
                logits: l,
                probabilities: p,
            });
        }
        if let Some(&last) = batch.indices.last() {
            bar.set_position(last as u64 + 1);
        }
    }
    bar.finish_and_clear();
    Ok((predictions, batches.skipped()))
}

/// The rows of a `[N, K]` float tensor, on the CPU as f32.
fn rows(t: &Tensor) -> Result<Vec<Vec<f32>>> {
    let t = t.to_device(tch::Device::Cpu).to_kind(Kind::Float).contiguous();
    let k = t.size()[1] as usize;
    let flat = Vec::<f32>::try_from(t.view([-1]))?;
    Ok(flat.chunks(k).map(<[f32]>::to_vec).collect())
}

/// Index of the largest probability (the first on ties).
pub fn argmax(p: &[f32]) -> usize {
    p.iter().enumerate().fold(0, |best, (i, &v)| if v > p[best] { i } else { best })
}

/// Class indices by decreasing probability (stable: lower index first on ties), first `k`.
pub fn top_k(p: &[f32], k: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..p.len()).collect();
    order.sort_by(|&a, &b| p[b].total_cmp(&p[a]));
    order.truncate(k);
    order
}

/// One CSV field, quoted when it holds a comma, quote, CR, LF or leading/trailing space.
pub fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) || s.starts_with(' ') || s.ends_with(' ') {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}
