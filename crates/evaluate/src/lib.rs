//! `evaluate`: a model file on a labelled split (Keras `model.evaluate` on a
//! `flow_from_directory` generator, plus fastai's `ClassificationInterpretation`).
//!
//! The split is indexed with the model's own class list (`class_indices` come from the model
//! file, never from the folder names' order), its images are decoded and classified exactly as
//! `predict` does ([`predict::classify`]), and the figures are written as a training stage writes
//! them: `metrics.json` ([`EvaluationReport`]), the confusion matrix
//! (`confusion_<split>.csv`, `.png`, `_normalised.png`, by `training::outputs::write_split`),
//! `predictions.csv` (one row per image) and `top_losses.png`: the images the model got most
//! confidently wrong, each captioned with its true class, the predicted class and its
//! probability (fastai's `plot_top_losses`).
//!
//! The output folder follows the run-folder contract of the training stages (`config.json`
//! first, `stage.json` with the digests of the model file, the split and every output last), so
//! `cargo xtask pipeline` runs `evaluate` as a stage and skips it while it is up to date.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use dataset::{Omission, ScanOptions, Skipped};
use models::Classifier;
use plots::Tile;
use predict::{ClassifyOptions, Prediction};
use run_folder::SplitMetrics;
use serde::{Deserialize, Serialize};
use training::outputs::{SplitEvaluation, write_split};

/// The report `evaluate` writes.
pub const METRICS_FILE: &str = "metrics.json";
/// One row per classified image.
pub const PREDICTIONS_FILE: &str = "predictions.csv";
/// The top-losses grid.
pub const TOP_LOSSES_FILE: &str = "top_losses.png";

/// `config.json` of an evaluation: what decides its outputs.
#[derive(Debug, Serialize)]
struct EvaluateConfig<'a> {
    model: &'a Path,
    /// The split folder.
    data: &'a Path,
    top_losses: usize,
    batch_size: usize,
    on_bad_image: dataset::BadImagePolicy,
    follow_links: bool,
}

/// What to evaluate and how.
#[derive(Debug, Clone)]
pub struct EvaluateOptions {
    /// The split folder under the data root (`test`, `validation`, ...).
    pub split: String,
    /// How many of the most confidently wrong images the grid shows (0: no grid).
    pub top_losses: usize,
    /// Follow symlinked folders (and a symlinked split folder), as the training stages'
    /// `--follow-links`.
    pub follow_links: bool,
    /// Batching and the bad-image policy, as `predict` takes them.
    pub classify: ClassifyOptions,
}

/// One image of the top-losses grid.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TopLoss {
    pub path: PathBuf,
    /// The true class.
    #[serde(rename = "true")]
    pub truth: String,
    pub predicted: String,
    /// The probability the model gave the predicted class, 0..=1.
    pub probability: f32,
    /// The image's cross-entropy, as training computes it from the logits.
    pub loss: f32,
}

/// `metrics.json` of an evaluation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvaluationReport {
    /// The model file evaluated, as given.
    pub model: PathBuf,
    /// sha256 of the model file's bytes.
    pub model_sha256: String,
    /// The split folder evaluated.
    pub data: PathBuf,
    pub split: String,
    /// Class names in class-index order (the model's).
    pub classes: Vec<String>,
    /// Mean cross-entropy, accuracy, images, per-class precision/recall/F1, as the training
    /// stages record a split.
    pub metrics: SplitMetrics,
    /// Images left out under `--skip-bad-images`, with the reason.
    pub skipped: Vec<Skipped>,
    /// The images of `top_losses.png`, most confidently wrong first.
    pub top_losses: Vec<TopLoss>,
    /// The files written, relative to the output folder.
    pub files: Vec<String>,
}

/// Whether `name` is a file `evaluate` writes (what [`run_folder::claim_stage_dir`] may clear).
fn is_output(name: &str) -> bool {
    [METRICS_FILE, PREDICTIONS_FILE, TOP_LOSSES_FILE].contains(&name)
        || (name.starts_with("confusion_") && (name.ends_with(".csv") || name.ends_with(".png")))
}

/// Evaluates `model` (read from `model_path`) on `data/<split>` and writes the report files into
/// `out` (created if missing): `config.json` first, then the figures, `metrics.json`, and
/// `stage.json` last (inputs `model` and `data` digested); returns what `metrics.json` holds.
///
/// Errors: the split folder is missing, lacks a folder for one of the model's classes, or holds
/// a class folder the model does not know (named, with the model's classes: its images could not
/// be scored); a bad image under fail-fast, or every image skipped; `out` holding anything but
/// an earlier evaluation; a file that cannot be written.
pub fn evaluate(
    model: &Classifier,
    model_path: &Path,
    data: &Path,
    options: &EvaluateOptions,
    out: &Path,
) -> Result<EvaluationReport> {
    let started = std::time::Instant::now();
    let classes = model.header().class_names.clone();
    let split_dir = data.join(&options.split);
    let config = EvaluateConfig {
        model: model_path,
        data: &split_dir,
        top_losses: options.top_losses,
        batch_size: options.classify.batch_size,
        on_bad_image: options.classify.on_bad_image,
        follow_links: options.follow_links,
    };
    let scan = ScanOptions {
        classes: Some(classes.clone()),
        allow_empty_classes: true,
        follow_links: options.follow_links,
        ..Default::default()
    };
    let index = dataset::scan_dir(&split_dir, &scan)?;
    let unknown: Vec<String> = index
        .omitted
        .iter()
        .filter(|o| o.why == Omission::UnlistedClass)
        .map(|o| o.path.display().to_string())
        .collect();
    if !unknown.is_empty() {
        bail!(
            "{}: class folder(s) {} are not classes of the model {} (its classes: {})",
            split_dir.display(),
            unknown.join(", "),
            model_path.display(),
            classes.join(", ")
        );
    }
    if index.files.is_empty() {
        bail!("{}: no images to evaluate", split_dir.display());
    }
    // An empty folder, or one an earlier evaluation wrote (cleared, record first); anything
    // else (a training stage's folder, a dataset) is refused, naming what it holds.
    run_folder::claim_stage_dir(out, "evaluate", is_output)?;
    run_folder::write_json(&out.join(run_folder::CONFIG_FILE), &config)?;
    tracing::info!(images = index.files.len(), split = %split_dir.display(), "evaluating");
    let (predictions, skipped) = predict::classify(model, &index, &options.classify)?;
    if predictions.is_empty() {
        bail!(
            "{}: all {} images were skipped as bad; nothing to evaluate",
            split_dir.display(),
            skipped.len()
        );
    }

    let truth: Vec<usize> = predictions.iter().map(|p| index.files[p.index].class).collect();
    let (mean_loss, losses) = cross_entropy(&predictions, &truth)?;
    let truth_i: Vec<i64> = truth.iter().map(|&t| t as i64).collect();
    let predicted: Vec<i64> = predictions.iter().map(|p| p.predicted() as i64).collect();

    let eval = SplitEvaluation {
        truth: &truth_i,
        predicted: &predicted,
        loss: mean_loss,
        source: Some("images".into()),
    };
    let (metrics, mut files) = write_split(out, &options.split, &classes, &eval)?;

    run_folder::write_atomic(
        &out.join(PREDICTIONS_FILE),
        predictions_csv(&classes, &predictions, &truth, &losses).as_bytes(),
    )?;
    files.push(PREDICTIONS_FILE.to_owned());

    let top = top_losses(&classes, &predictions, &truth, &losses, options.top_losses);
    if options.top_losses > 0 {
        draw_top_losses(model, &out.join(TOP_LOSSES_FILE), &options.split, &top)?;
        files.push(TOP_LOSSES_FILE.to_owned());
    }
    files.push(METRICS_FILE.to_owned());
    let report = EvaluationReport {
        model: model_path.to_owned(),
        model_sha256: run_folder::file_sha256(model_path)?.sha256,
        data: split_dir.clone(),
        split: options.split.clone(),
        classes,
        metrics,
        skipped,
        top_losses: top,
        files,
    };
    run_folder::write_json(&out.join(METRICS_FILE), &report)?;

    let data_digest = dataset::split_digest(&index)
        .with_context(|| format!("digesting {}", split_dir.display()))?;
    let inputs = BTreeMap::from([
        ("model".to_owned(), report.model_sha256.clone()),
        ("data".to_owned(), data_digest),
    ]);
    let names: Vec<&str> = report.files.iter().map(String::as_str).collect();
    let summary = serde_json::json!({
        "test_acc": report.metrics.acc,
        "test_loss": report.metrics.loss,
        "images": report.metrics.images,
        "skipped": report.skipped.len(),
        "model_stage": model.header().stage,
    });
    run_folder::StageRecord::write(
        out,
        "evaluate",
        run_folder::json_sha256(&config),
        inputs,
        &names,
        started.elapsed().as_secs_f64(),
        summary,
    )?;
    Ok(report)
}

/// The mean cross-entropy of the predictions and each image's, computed from the logits by the
/// training stages' own loss (`training::head::loss`: binary cross-entropy for a one-logit head,
/// softmax cross-entropy otherwise), so `evaluate` on a stage's test split gives its loss.
fn cross_entropy(predictions: &[Prediction], truth: &[usize]) -> Result<(f64, Vec<f32>)> {
    if predictions.is_empty() {
        return Ok((0.0, Vec::new()));
    }
    let width = predictions[0].logits.len() as i64;
    let flat: Vec<f32> = predictions.iter().flat_map(|p| p.logits.iter().copied()).collect();
    let logits = tch::Tensor::from_slice(&flat).view([-1, width]);
    let labels = tch::Tensor::from_slice(&truth.iter().map(|&t| t as i64).collect::<Vec<_>>());
    let mean = training::head::loss(&logits, &labels)?.double_value(&[]);
    let each = (0..predictions.len() as i64)
        .map(|i| {
            let one = training::head::loss(&logits.narrow(0, i, 1), &labels.narrow(0, i, 1))?;
            Ok(one.double_value(&[]) as f32)
        })
        .collect::<Result<Vec<f32>>>()?;
    Ok((mean, each))
}

/// The `k` wrongly classified images with the highest loss (the most confidently wrong), most
/// confident first; ties keep index order.
pub fn top_losses(
    classes: &[String],
    predictions: &[Prediction],
    truth: &[usize],
    losses: &[f32],
    k: usize,
) -> Vec<TopLoss> {
    let mut wrong: Vec<usize> =
        (0..predictions.len()).filter(|&i| predictions[i].predicted() != truth[i]).collect();
    wrong.sort_by(|&a, &b| losses[b].total_cmp(&losses[a]));
    wrong
        .into_iter()
        .take(k)
        .map(|i| {
            let p = &predictions[i];
            let predicted = p.predicted();
            TopLoss {
                path: p.path.clone(),
                truth: classes[truth[i]].clone(),
                predicted: classes[predicted].clone(),
                probability: p.probabilities[predicted],
                loss: losses[i],
            }
        })
        .collect()
}

/// The grid of `top`: each image decoded as the model saw it (its input size and resize), four
/// to a row, captioned with the file name, true / predicted class and the probability.
fn draw_top_losses(model: &Classifier, path: &Path, split: &str, top: &[TopLoss]) -> Result<()> {
    let decode = predict::decode_options(model.header())?;
    let tiles = top
        .iter()
        .map(|t| {
            let image = dataset::decode(&t.path, &decode)?;
            let name = t.path.file_name().map(|n| n.to_string_lossy().into_owned());
            Ok(Tile {
                image,
                caption: vec![
                    name.unwrap_or_default(),
                    format!("true: {}", t.truth),
                    format!("predicted: {} ({:.3})", t.predicted, t.probability),
                ],
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let title = if top.is_empty() {
        format!("Top losses ({split}): no image was misclassified")
    } else {
        format!("Top losses ({split}): the {} most confidently wrong", top.len())
    };
    plots::plot_image_grid(path, &title, &tiles, 4)?;
    Ok(())
}

/// `path,true,predicted,loss,<one probability column per class>`, one row per image.
fn predictions_csv(
    classes: &[String],
    predictions: &[Prediction],
    truth: &[usize],
    losses: &[f32],
) -> String {
    let mut out = ["path", "true", "predicted", "loss"].join(",");
    for c in classes {
        out.push(',');
        out.push_str(&predict::csv_field(c));
    }
    out.push('\n');
    for ((p, &t), loss) in predictions.iter().zip(truth).zip(losses) {
        let mut fields = vec![
            predict::csv_field(&p.path.to_string_lossy()),
            predict::csv_field(&classes[t]),
            predict::csv_field(&classes[p.predicted()]),
            loss.to_string(),
        ];
        fields.extend(p.probabilities.iter().map(f32::to_string));
        out.push_str(&fields.join(","));
        out.push('\n');
    }
    out
}
