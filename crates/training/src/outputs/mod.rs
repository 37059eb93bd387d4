//! What a training stage leaves in its folder about how its model did, written by one function
//! for train-head, fine-tune and pretrain alike: the history (`history.csv`, `accuracy.png`,
//! `loss.png`, and with smoothing `accuracy_smoothed.png`, `loss_smoothed.png`), for the
//! validation and (when there is one) test split a confusion matrix (`confusion_<split>.csv`,
//! `confusion_<split>.png`, and row-normalised `confusion_<split>_normalised.png`), and
//! `metrics.json` in the typed schema of [`run_folder::StageMetrics`], the one the pipeline's
//! report reads. [`stage_summary`] gives the facts every stage puts in its `stage.json` summary.
//!
//! A stage computes its predictions and losses itself and hands them over as
//! [`StageEvaluation`]; [`StageEvaluation::write`] derives every figure from them and returns
//! the metrics and the names of the files it wrote, for `stage.json`.

use std::path::Path;

pub use plots::ConfusionMatrix;
use plots::{Cells, Metric, plot_confusion, plot_history};
use run_folder::{KeptEpoch, SplitMetrics, StageMetrics};

use crate::{EpochRecord, TrainError};

/// The per-epoch history, rewritten by [`StageEvaluation::write`] (stages also write it after
/// every epoch).
pub const HISTORY_FILE: &str = "history.csv";

/// One split's evaluation of the kept model, as the stage computed it.
#[derive(Debug, Clone)]
pub struct SplitEvaluation<'a> {
    /// True class index of every image, in evaluation order (`[N]`, each in `0..classes`).
    pub truth: &'a [i64],
    /// Predicted (arg-max) class index of every image, same order and length as `truth`.
    pub predicted: &'a [i64],
    /// Mean loss over the split (binary or categorical cross-entropy, as the stage computes it).
    pub loss: f64,
    /// Where the inputs came from (`"images"`, `"cache <key>"`), recorded in `metrics.json`.
    pub source: Option<String>,
}

/// Everything [`StageEvaluation::write`] needs about a finished training run.
#[derive(Debug, Clone)]
pub struct StageEvaluation<'a> {
    /// Class names in class-index order.
    pub classes: &'a [String],
    /// Every epoch trained (1-based `epoch`), in order; may be empty (a run of 0 epochs).
    pub history: &'a [EpochRecord],
    /// The epoch whose weights were evaluated and saved (1-based, see [`best_epoch`]), or 0
    /// when `history` is empty.
    pub kept_epoch: usize,
    /// Also draw Chollet's exponentially smoothed curves with this factor (e.g. 0.8).
    pub smoothing: Option<f64>,
    /// The validation split (every training stage has one).
    pub validation: SplitEvaluation<'a>,
    /// The test split, when the dataset has one.
    pub test: Option<SplitEvaluation<'a>>,
}

/// What [`StageEvaluation::write`] wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct WrittenOutputs {
    /// The contents of `metrics.json`.
    pub metrics: StageMetrics,
    /// The files written, relative to the stage folder, for `stage.json`'s outputs.
    pub files: Vec<String>,
}

impl StageEvaluation<'_> {
    /// Writes the history CSV and plots (the plots only when there is history), the confusion
    /// matrices of each split (CSV, PNG of counts, PNG row-normalised) and `metrics.json`, each
    /// atomically, into `dir` (created if missing). Accuracy is the fraction of `truth` equal
    /// to `predicted`; precision, recall and F1 come from the confusion matrix.
    ///
    /// Errors: [`TrainError::Config`] when a split's `truth` and `predicted` differ in length,
    /// hold an index outside `0..classes.len()`, or `kept_epoch` is not an epoch of `history`
    /// (nor 0 with an empty history); [`TrainError::Io`] / [`TrainError::Plot`] when a file
    /// cannot be written or drawn.
    pub fn write(&self, dir: &Path) -> Result<WrittenOutputs, TrainError> {
        let splits: Vec<(&str, &SplitEvaluation)> =
            std::iter::once(("validation", &self.validation))
                .chain(self.test.as_ref().map(|t| ("test", t)))
                .collect();
        for (split, eval) in &splits {
            self.check(split, eval)?;
        }
        let kept = self.kept()?;
        std::fs::create_dir_all(dir)
            .map_err(|source| TrainError::Io { path: dir.to_owned(), source })?;

        let mut files = vec![HISTORY_FILE.to_owned()];
        crate::write_history(&dir.join(HISTORY_FILE), self.history)?;
        if !self.history.is_empty() {
            let mut plots =
                vec![("accuracy.png", Metric::Accuracy, None), ("loss.png", Metric::Loss, None)];
            if let Some(factor) = self.smoothing {
                plots.push(("accuracy_smoothed.png", Metric::Accuracy, Some(factor)));
                plots.push(("loss_smoothed.png", Metric::Loss, Some(factor)));
            }
            for (name, metric, smoothing) in plots {
                plot_history(&dir.join(name), self.history, metric, smoothing)?;
                files.push(name.to_owned());
            }
        }

        let mut figures = Vec::with_capacity(splits.len());
        for (split, eval) in &splits {
            let (metrics, written) = write_split(dir, split, self.classes, eval)?;
            figures.push(metrics);
            files.extend(written);
        }
        let mut figures = figures.into_iter();
        let validation = figures.next().expect("the validation split is always evaluated");
        let metrics = StageMetrics {
            kept: kept.unwrap_or(KeptEpoch {
                epoch: 0,
                of: 0,
                val_loss: validation.loss,
                val_acc: validation.acc,
            }),
            validation,
            test: figures.next(),
            median_epoch_seconds: median_epoch_seconds(self.history).unwrap_or(0.0),
        };
        metrics.write(dir).map_err(|e| run_error(e, &dir.join(run_folder::METRICS_FILE)))?;
        files.push(run_folder::METRICS_FILE.to_owned());
        Ok(WrittenOutputs { metrics, files })
    }

    fn check(&self, split: &str, eval: &SplitEvaluation) -> Result<(), TrainError> {
        if eval.truth.len() != eval.predicted.len() {
            return Err(TrainError::Config(format!(
                "{split}: {} true labels but {} predictions",
                eval.truth.len(),
                eval.predicted.len()
            )));
        }
        let n = self.classes.len() as i64;
        if let Some(bad) = eval.truth.iter().chain(eval.predicted).find(|&&c| !(0..n).contains(&c))
        {
            return Err(TrainError::Config(format!(
                "{split}: class index {bad} outside 0..{n} ({n} classes)"
            )));
        }
        Ok(())
    }

    /// The kept epoch's record, `None` for a run of no epochs.
    fn kept(&self) -> Result<Option<KeptEpoch>, TrainError> {
        if self.history.is_empty() && self.kept_epoch == 0 {
            return Ok(None);
        }
        let record = self.history.iter().find(|r| r.epoch == self.kept_epoch).ok_or_else(|| {
            TrainError::Config(format!(
                "kept epoch {} is not in the history ({} epochs)",
                self.kept_epoch,
                self.history.len()
            ))
        })?;
        Ok(Some(KeptEpoch {
            epoch: record.epoch,
            of: self.history.len(),
            val_loss: record.val_loss,
            val_acc: record.val_acc,
        }))
    }
}

/// Writes one split's confusion matrix into `dir` (`confusion_<split>.csv`, `.png` of counts,
/// `_normalised.png` row-normalised; each atomically) and returns its figures (loss, accuracy,
/// per-class precision/recall/F1, as `metrics.json` records them) and the names of the files.
/// The stages call it through [`StageEvaluation::write`]; `evaluate` calls it for the split it
/// evaluates. Indices in `eval` must lie in `0..classes.len()` (those outside are not counted).
///
/// Errors: [`TrainError::Io`] / [`TrainError::Plot`] when a file cannot be written or drawn.
pub fn write_split(
    dir: &Path,
    split: &str,
    classes: &[String],
    eval: &SplitEvaluation,
) -> Result<(SplitMetrics, Vec<String>), TrainError> {
    let matrix = ConfusionMatrix::new(classes, eval.truth, eval.predicted);
    let csv = format!("confusion_{split}.csv");
    crate::write_atomic_ctx(&dir.join(&csv), matrix.to_csv().as_bytes())?;
    let counts = format!("confusion_{split}.png");
    plot_confusion(
        &dir.join(&counts),
        &matrix,
        &format!("Confusion matrix ({split})"),
        Cells::Counts,
    )?;
    let normalised = format!("confusion_{split}_normalised.png");
    plot_confusion(
        &dir.join(&normalised),
        &matrix,
        &format!("Confusion matrix ({split}, fraction of each true class)"),
        Cells::RowNormalised,
    )?;
    let metrics = SplitMetrics {
        loss: eval.loss,
        acc: accuracy(eval.truth, eval.predicted),
        images: eval.truth.len() as u64,
        source: eval.source.clone(),
        per_class: matrix.per_class(),
    };
    Ok((metrics, vec![csv, counts, normalised]))
}

/// Fraction of `truth` equal to `predicted` pairwise, 0..=1 (0 for no images): the stages'
/// own accuracy formula, `correct / max(N, 1)`.
fn accuracy(truth: &[i64], predicted: &[i64]) -> f64 {
    let correct = truth.iter().zip(predicted).filter(|(a, b)| a == b).count();
    correct as f64 / truth.len().max(1) as f64
}

fn run_error(e: run_folder::RunError, path: &Path) -> TrainError {
    match e {
        run_folder::RunError::Io { path, source } => TrainError::Io { path, source },
        other => TrainError::Weights { path: path.to_owned(), reason: other.to_string() },
    }
}

/// The 1-based epoch with the lowest validation loss (the first of equals, as early stopping
/// and best-checkpoint rules keep it), `None` for an empty history.
pub fn best_epoch(history: &[EpochRecord]) -> Option<usize> {
    history
        .iter()
        .fold(None, |best: Option<&EpochRecord>, r| match best {
            Some(b) if r.val_loss >= b.val_loss => Some(b),
            _ => Some(r),
        })
        .map(|r| r.epoch)
}

/// Median wall time of an epoch in seconds (the upper of the middle two for an even count),
/// `None` for an empty history.
pub fn median_epoch_seconds(history: &[EpochRecord]) -> Option<f64> {
    let mut v: Vec<f64> = history.iter().map(|r| r.seconds).collect();
    v.sort_by(f64::total_cmp);
    (!v.is_empty()).then(|| v[v.len() / 2])
}

/// The `stage.json` summary facts every training stage records: `device` (its `Debug` form, as
/// the stages always wrote it), `epochs_run`, `kept_epoch`, `validation_acc`, `test_acc` (null
/// without a test split), merged with the stage's own `extra` object (whose keys win).
/// `extra` that is not a JSON object is ignored.
pub fn stage_summary(
    metrics: &StageMetrics,
    device: tch::Device,
    extra: serde_json::Value,
) -> serde_json::Value {
    let mut summary = serde_json::json!({
        "device": format!("{device:?}"),
        "epochs_run": metrics.kept.of,
        "kept_epoch": metrics.kept.epoch,
        "validation_acc": metrics.validation.acc,
        "test_acc": metrics.test.as_ref().map(|t| t.acc),
    });
    if let (Some(all), serde_json::Value::Object(own)) = (summary.as_object_mut(), extra) {
        all.extend(own);
    }
    summary
}

/// `validation acc 0.9000` and, with a test split, `, test acc 0.8500`: the figures of a
/// stage's closing line.
pub fn accuracy_line(metrics: &StageMetrics) -> String {
    let test = metrics.test.as_ref().map(|t| format!(", test acc {:.4}", t.acc));
    format!("validation acc {:.4}{}", metrics.validation.acc, test.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(epoch: usize, val_loss: f64, seconds: f64) -> EpochRecord {
        EpochRecord {
            epoch,
            loss: 1.0 / epoch as f64,
            acc: 0.5,
            val_loss,
            val_acc: 0.25 * epoch as f64,
            lr: 1e-3,
            seconds,
        }
    }

    fn classes() -> Vec<String> {
        ["cat", "dog", "fox"].map(String::from).to_vec()
    }

    #[test]
    fn writes_every_file_and_the_typed_metrics() {
        let dir = tempfile::tempdir().unwrap();
        let classes = classes();
        let history = vec![record(1, 0.9, 3.0), record(2, 0.5, 1.0), record(3, 0.7, 2.0)];
        // Validation: cat 2/3 right; dog 1/1; fox has no images but one prediction.
        let (vt, vp) = ([0, 0, 0, 1], [0, 0, 2, 1]);
        // Test: nothing predicted as dog; no fox.
        let (tt, tp) = ([0, 1], [0, 0]);
        let eval = StageEvaluation {
            classes: &classes,
            history: &history,
            kept_epoch: 2,
            smoothing: Some(0.8),
            validation: SplitEvaluation {
                truth: &vt,
                predicted: &vp,
                loss: 0.4,
                source: Some("images".into()),
            },
            test: Some(SplitEvaluation { truth: &tt, predicted: &tp, loss: 0.6, source: None }),
        };
        let written = eval.write(dir.path()).unwrap();
        let expected_files = [
            "history.csv",
            "accuracy.png",
            "loss.png",
            "accuracy_smoothed.png",
            "loss_smoothed.png",
            "confusion_validation.csv",
            "confusion_validation.png",
            "confusion_validation_normalised.png",
            "confusion_test.csv",
            "confusion_test.png",
            "confusion_test_normalised.png",
            "metrics.json",
        ];
        assert_eq!(written.files, expected_files);
        for f in expected_files {
            assert!(dir.path().join(f).is_file(), "{f}");
        }
        for (f, size) in [
            ("accuracy.png", plots::HISTORY_SIZE),
            ("loss_smoothed.png", plots::HISTORY_SIZE),
            ("confusion_test.png", plots::CONFUSION_SIZE),
            ("confusion_validation_normalised.png", plots::CONFUSION_SIZE),
        ] {
            let img = image::open(dir.path().join(f)).unwrap();
            assert_eq!((img.width(), img.height()), size, "{f}");
        }
        assert_eq!(
            std::fs::read_to_string(dir.path().join("confusion_validation.csv")).unwrap(),
            "true\\predicted,cat,dog,fox\ncat,2,0,1\ndog,0,1,0\nfox,0,0,0\n"
        );
        assert_eq!(
            std::fs::read_to_string(dir.path().join("history.csv")).unwrap(),
            crate::history_csv(&history)
        );

        // What metrics.json holds is what was returned, read back through the shared schema.
        let m = StageMetrics::read(dir.path()).unwrap();
        assert_eq!(m, written.metrics);
        assert_eq!(m.kept, KeptEpoch { epoch: 2, of: 3, val_loss: 0.5, val_acc: 0.5 });
        assert_eq!(m.median_epoch_seconds, 2.0);
        let v = &m.validation;
        assert_eq!((v.loss, v.acc, v.images, v.source.as_deref()), (0.4, 0.75, 4, Some("images")));
        let [cat, dog, fox] = &v.per_class[..] else { panic!("{:?}", v.per_class) };
        assert_eq!((cat.precision, cat.support), (Some(1.0), 3));
        assert!((cat.recall.unwrap() - 2.0 / 3.0).abs() < 1e-12);
        assert!((cat.f1.unwrap() - 0.8).abs() < 1e-12);
        assert_eq!((dog.precision, dog.recall, dog.f1), (Some(1.0), Some(1.0), Some(1.0)));
        // fox: predicted once, never true: precision 0, recall and F1 undefined.
        assert_eq!((fox.precision, fox.recall, fox.f1, fox.support), (Some(0.0), None, None, 0));
        let t = m.test.as_ref().unwrap();
        assert_eq!((t.loss, t.acc, t.images, t.source.as_deref()), (0.6, 0.5, 2, None));
        // dog: never predicted: precision and F1 undefined, recall 0.
        assert_eq!((t.per_class[1].precision, t.per_class[1].recall), (None, Some(0.0)));
        assert_eq!(t.per_class[1].f1, None);

        let summary = stage_summary(
            &m,
            tch::Device::Cpu,
            serde_json::json!({"mode": "plain", "test_acc": 0.0}),
        );
        assert_eq!(summary["device"], "Cpu");
        assert_eq!(
            (summary["epochs_run"].as_u64(), summary["kept_epoch"].as_u64()),
            (Some(3), Some(2))
        );
        assert_eq!(summary["validation_acc"], 0.75);
        assert_eq!(
            (summary["mode"].as_str(), summary["test_acc"].as_f64()),
            (Some("plain"), Some(0.0))
        );
        assert_eq!(accuracy_line(&m), "validation acc 0.7500, test acc 0.5000");
    }

    #[test]
    fn no_test_split_no_smoothing_no_epochs() {
        let dir = tempfile::tempdir().unwrap();
        let classes = classes();
        let eval = StageEvaluation {
            classes: &classes,
            history: &[],
            kept_epoch: 0,
            smoothing: None,
            validation: SplitEvaluation {
                truth: &[2, 1],
                predicted: &[2, 2],
                loss: 1.5,
                source: None,
            },
            test: None,
        };
        let written = eval.write(dir.path()).unwrap();
        assert_eq!(
            written.files,
            [
                "history.csv",
                "confusion_validation.csv",
                "confusion_validation.png",
                "confusion_validation_normalised.png",
                "metrics.json"
            ]
        );
        let m = StageMetrics::read(dir.path()).unwrap();
        assert_eq!(m.test, None);
        assert_eq!(m.kept, KeptEpoch { epoch: 0, of: 0, val_loss: 1.5, val_acc: 0.5 });
        assert_eq!(m.median_epoch_seconds, 0.0);
        assert_eq!(accuracy_line(&m), "validation acc 0.5000");
        assert_eq!(
            stage_summary(&m, tch::Device::Cpu, serde_json::json!({}))["test_acc"],
            serde_json::Value::Null
        );
    }

    #[test]
    fn refuses_inconsistent_input() {
        let dir = tempfile::tempdir().unwrap();
        let classes = classes();
        let history = [record(1, 0.5, 1.0)];
        let good = SplitEvaluation { truth: &[0, 1], predicted: &[0, 1], loss: 0.1, source: None };
        let base = StageEvaluation {
            classes: &classes,
            history: &history,
            kept_epoch: 1,
            smoothing: None,
            validation: good.clone(),
            test: None,
        };
        let err = |e: StageEvaluation| e.write(dir.path()).unwrap_err().to_string();
        let short = SplitEvaluation { predicted: &[0], ..good.clone() };
        assert!(
            err(StageEvaluation { validation: short, ..base.clone() })
                .contains("2 true labels but 1")
        );
        let out_of_range = SplitEvaluation { predicted: &[0, 3], ..good.clone() };
        assert!(
            err(StageEvaluation { test: Some(out_of_range), ..base.clone() })
                .contains("test: class index 3")
        );
        assert!(err(StageEvaluation { kept_epoch: 2, ..base.clone() }).contains("kept epoch 2"));
        assert!(err(StageEvaluation { kept_epoch: 0, ..base }).contains("kept epoch 0"));
        assert!(!dir.path().join("metrics.json").exists(), "nothing written on bad input");
    }

    #[test]
    fn best_epoch_and_median() {
        assert_eq!(best_epoch(&[]), None);
        let h =
            [record(1, 0.9, 4.0), record(2, 0.4, 1.0), record(3, 0.4, 3.0), record(4, 0.6, 2.0)];
        assert_eq!(best_epoch(&h), Some(2), "the first of equal losses");
        assert_eq!(median_epoch_seconds(&h), Some(3.0));
        assert_eq!(median_epoch_seconds(&h[..3]), Some(3.0));
        assert_eq!(median_epoch_seconds(&[]), None);
    }
}
